
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: one upload's life, whatever protocol brought it.
 * The body of a request, read unbuffered into the chunk buffer (raw, or
 * file by file through the multipart parser), the objects it becomes, one
 * GCS session each, and the end of an upload (stored, failed, aborted).
 * The driver of the GCS client: it sends what the buffer holds and drops
 * what the client says GCS holds.
 *
 * Like nginx's upstream for proxy, it knows no protocol: its front end
 * (ngx_http_cloudauth_upload_plain.c, _tus.c) creates the upload with the
 * hooks it ends through (u->hooks: the answer, a check of GCS's first word
 * on a session the client came back to, a refusal), sets what the request
 * is (a form, an object, a part of a resumable upload), and starts it.
 */


#include "ngx_http_cloudauth_upload.h"


static void ngx_http_cloudauth_upload_body_handler(ngx_http_request_t *r);
static void ngx_http_cloudauth_upload_read_handler(ngx_http_request_t *r);
static void ngx_http_cloudauth_upload_body_after(
    ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_begin(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_cleanup(void *data);
static ngx_int_t ngx_http_cloudauth_upload_pull(
    ngx_http_cloudauth_upload_t *u);
static ngx_uint_t ngx_http_cloudauth_upload_room(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_take(
    ngx_http_cloudauth_upload_t *u, u_char *p, u_char *last, size_t *taken);
static ngx_int_t ngx_http_cloudauth_upload_form_take(
    ngx_http_cloudauth_upload_t *u, u_char *p, u_char *last, size_t *taken);
static ngx_int_t ngx_http_cloudauth_upload_part(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_field(
    ngx_http_cloudauth_upload_t *u, u_char *data, size_t len);
static void ngx_http_cloudauth_upload_feed(ngx_http_cloudauth_upload_t *u,
    u_char *data, size_t len);
static ngx_int_t ngx_http_cloudauth_upload_input_end(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_object_name(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *name);
static ngx_int_t ngx_http_cloudauth_upload_content_md5(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *content_md5);
static void ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_step(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_session(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_stream(
    ngx_http_cloudauth_upload_t *u);
static ssize_t ngx_http_cloudauth_upload_give(void *data, u_char *buf,
    size_t size);
static void ngx_http_cloudauth_upload_wake(ngx_event_t *ev);
static ngx_int_t ngx_http_cloudauth_upload_park(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_last(
    ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_progress(ngx_cloudauth_gcs_t *s,
    off_t offset);
static void ngx_http_cloudauth_upload_done(ngx_cloudauth_gcs_t *s,
    json_t *object);
static void ngx_http_cloudauth_upload_failed(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_gcs_error_e why, ngx_uint_t status, ngx_str_t *reason,
    ngx_str_t *said);
static ngx_int_t ngx_http_cloudauth_upload_checked(
    ngx_http_cloudauth_upload_t *u, off_t held, json_t *object);
static void ngx_http_cloudauth_upload_asked(ngx_cloudauth_gcs_t *s,
    off_t offset);
static void ngx_http_cloudauth_upload_answered(ngx_cloudauth_gcs_t *s,
    json_t *object);
static void ngx_http_cloudauth_upload_guard(ngx_event_t *ev);
static void ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len);
static void ngx_http_cloudauth_upload_abort(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_settle(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_upload_status_e outcome);
static void ngx_http_cloudauth_upload_finish(ngx_http_cloudauth_upload_t *u);
static u_char *ngx_http_cloudauth_upload_buf_alloc(
    ngx_http_cloudauth_upload_main_conf_t *umcf, size_t size, ngx_log_t *log);
static void ngx_http_cloudauth_upload_buf_free(
    ngx_http_cloudauth_upload_main_conf_t *umcf, u_char *buf, size_t size,
    ngx_uint_t spare, ngx_log_t *log);


/* the upload's state, found by its request */

ngx_http_cloudauth_upload_t *
ngx_http_cloudauth_upload_create(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max,
    const ngx_http_cloudauth_upload_hooks_t *hooks)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_pcalloc(r->pool, sizeof(ngx_http_cloudauth_upload_t));
    if (u == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_cloudauth_upload_cleanup;
    cln->data = u;

    u->request = r;
    u->conf = conf;
    u->hooks = hooks;
    u->max_size = max;
    u->method = r->method;
    u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_REJECTED;

    if (origin) {
        u->cors_origin = *origin;
    }

    ngx_http_set_ctx(r, u, ngx_http_cloudauth_upload_module);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: %s request", hooks->name);

    return u;
}


/*
 * A multipart/form-data body: each file part becomes an object, the
 * fields before it its metadata.  NGX_OK, NGX_ERROR, or an HTTP status
 * with u->reason.
 */

ngx_int_t
ngx_http_cloudauth_upload_form(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *content_type)
{
    ngx_http_request_t  *r;

    r = u->request;

    u->multipart = 1;
    u->directory = 1;

    u->mp = ngx_palloc(r->pool, sizeof(ngx_cloudauth_mp_t));
    u->fields = ngx_array_create(r->pool, 4, sizeof(ngx_keyval_t));
    if (u->mp == NULL || u->fields == NULL) {
        return NGX_ERROR;
    }

    if (ngx_cloudauth_mp_init(u->mp, content_type) != NGX_OK) {
        u->reason.data = (u_char *) u->mp->error;
        u->reason.len = ngx_strlen(u->mp->error);
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* the body, unbuffered, into the upload; the content handler's code */

ngx_int_t
ngx_http_cloudauth_upload_read(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = u->request;
    r->request_body_no_buffering = 1;

    rc = ngx_http_read_client_request_body(r,
                                       ngx_http_cloudauth_upload_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * The same, but the object's session first, before a byte of the body is
 * read: its handle goes to the client (the started hook) before the body,
 * which is read once the session is there.  The object is open.
 */

ngx_int_t
ngx_http_cloudauth_upload_start(ngx_http_cloudauth_upload_t *u)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: starting a session for \"%V\" "
                   "before the body", &u->obj.shown);

    u->early = 1;
    u->obj.started = 1;

    /* nothing to write until then: not the phases again */
    u->request->write_event_handler = ngx_http_request_empty_handler;

    /*
     * the request waits for the session; a start that fails at once (the
     * token in back-off) has answered through the failed handler already,
     * which finalized the request against this reference
     */
    u->request->main->count++;

    (void) ngx_cloudauth_gcs_start(u->obj.gcs);

    return NGX_DONE;
}


static void
ngx_http_cloudauth_upload_body_after(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = u->request;
    u->early = 0;
    r->request_body_no_buffering = 1;

    rc = ngx_http_read_client_request_body(r,
                                       ngx_http_cloudauth_upload_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_http_cloudauth_upload_fail(u, rc, "the body cannot be read",
                                       sizeof("the body cannot be read") - 1);
        return;
    }

    /* the count taken by ngx_http_cloudauth_upload_start() */
    ngx_http_finalize_request(r, NGX_DONE);
}


static void
ngx_http_cloudauth_upload_body_handler(ngx_http_request_t *r)
{
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    r->read_event_handler = ngx_http_cloudauth_upload_read_handler;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_cloudauth_upload_begin(u);
}


static void
ngx_http_cloudauth_upload_read_handler(ngx_http_request_t *r)
{
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    ngx_http_cloudauth_upload_run(u);
}


/*
 * The body is gone when the request comes here after another location
 * read or discarded it (client_max_body_size, then "error_page 413 =
 * @upload;"): a discarded body of a known length leaves less of the
 * declared length than the header says
 */

ngx_uint_t
ngx_http_cloudauth_upload_consumed(ngx_http_request_t *r)
{
    off_t             declared;
    ngx_table_elt_t  *h;

    if (r->request_body || r->discard_body) {
        return 1;
    }

#if (NGX_HTTP_V2)
    if (r->stream && r->stream->skip_data) {
        return 1;
    }
#endif

    h = r->headers_in.content_length;

    if (h) {
        declared = ngx_atoof(h->value.data, h->value.len);

        if (declared != r->headers_in.content_length_n) {
            return 1;
        }
    }

    return 0;
}


static void
ngx_http_cloudauth_upload_begin(ngx_http_cloudauth_upload_t *u)
{
    ngx_cloudauth_stats_t  *st;

    u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_UPLOADING;

    u->guard.handler = ngx_http_cloudauth_upload_guard;
    u->guard.data = u->request->connection;
    u->guard.log = u->request->connection->log;

    u->wake.handler = ngx_http_cloudauth_upload_wake;
    u->wake.data = u->request->connection;
    u->wake.log = u->request->connection->log;

    st = ngx_cloudauth_cache_stats(u->conf->gcs.cred->conf->shm_zone);
    if (st) {
        (void) ngx_atomic_fetch_add(&st->uploads_active, 1);

        if (ngx_process_slot >= 0 && ngx_process_slot < NGX_MAX_PROCESSES) {
            (void) ngx_atomic_fetch_add(&st->uploads_slot[ngx_process_slot],
                                        1);
        }
    }

    u->active = 1;

    /* a graceful shutdown waits for the upload */
    ngx_add_timer(&u->guard, NGX_HTTP_CLOUDAUTH_UPLOAD_GUARD);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: %s body begins at %O",
                   u->hooks->name, u->offset);

    ngx_http_cloudauth_upload_run(u);
}


static void
ngx_http_cloudauth_upload_guard(ngx_event_t *ev)
{
    ngx_add_timer(ev, NGX_HTTP_CLOUDAUTH_UPLOAD_GUARD);
}


/* a read of the body inside curl's callback failed, or the body ended */

static void
ngx_http_cloudauth_upload_wake(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_cloudauth_upload_t  *u;

    u = (ngx_http_cloudauth_upload_t *)
            ((u_char *) ev - offsetof(ngx_http_cloudauth_upload_t, wake));
    c = u->request->connection;

    ngx_http_cloudauth_upload_run(u);

    ngx_http_run_posted_requests(c);
}


/*
 * Takes what the body offers while there is room, then starts whatever
 * GCS request is due; returns when waiting for the client, GCS, the token
 * or a retry timer.
 */

static void
ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = u->request;

    for ( ;; ) {

        if (u->finished) {
            return;
        }

        rc = ngx_http_cloudauth_upload_pull(u);

        if (rc != NGX_OK
            && (r->connection->error || rc == NGX_HTTP_REQUEST_TIME_OUT)
            && u->given && u->obj.started && !u->obj.eof && !u->streaming)
        {
            /* what GCS can keep of it is sent; the client resumes */
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "cloudauth: upload: the client went at %O, "
                           "parked", u->obj.base + u->obj.received);

            u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_ABORTED;
            u->cut = 1;
            u->parked = 1;
            u->input_done = 1;
            u->in = NULL;
            rc = NGX_OK;
        }

        if (rc != NGX_OK) {
            if (r->connection->error || rc == NGX_HTTP_REQUEST_TIME_OUT) {
                u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_ABORTED;

                if (rc == NGX_HTTP_REQUEST_TIME_OUT) {
                    ngx_http_cloudauth_upload_fail(u, rc,
                                  "the client stopped sending",
                                  sizeof("the client stopped sending") - 1);

                } else {
                    ngx_http_cloudauth_upload_fail(u, rc,
                                  "the client closed the connection",
                                  sizeof("the client closed the connection")
                                  - 1);
                }

            } else if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                       && u->reason.len == 0)
            {
                ngx_http_cloudauth_upload_fail(u, rc,
                                  "the body is larger than max_size",
                                  sizeof("the body is larger than max_size")
                                  - 1);

            } else if (rc == NGX_ERROR) {
                ngx_http_cloudauth_upload_fail(u,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);

            } else {
                /* u->reason holds the reason */
                ngx_http_cloudauth_upload_fail(u, rc, (char *) u->reason.data,
                                               u->reason.len);
            }

            return;
        }

        if (u->obj.gcs && ngx_cloudauth_gcs_busy(u->obj.gcs)) {

            if (u->streaming && u->in) {
                /*
                 * the client's next bytes, for the chunk on its way; until
                 * GCS takes them, a slow GCS is not a client that stopped
                 * sending (back-pressure, as for a full chunk buffer)
                 */
                if (r->connection->read->timer_set) {
                    ngx_del_timer(r->connection->read);
                }

                ngx_cloudauth_gcs_resume(u->obj.gcs);
            }

            return;
        }

        rc = ngx_http_cloudauth_upload_step(u);

        if (rc != NGX_OK) {
            return;
        }
    }
}


static ngx_int_t
ngx_http_cloudauth_upload_pull(ngx_http_cloudauth_upload_t *u)
{
    size_t                    taken;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_http_request_t       *r;
    ngx_http_request_body_t  *rb;

    r = u->request;
    rb = r->request_body;

    if (u->read_rc) {
        /* what a read inside the streamed chunk's callback met */
        return u->read_rc;
    }

    for ( ;; ) {

        if (u->in == NULL) {

            if (rb->bufs) {
                u->in = rb->bufs;
                rb->bufs = NULL;
                continue;
            }

            if (u->input_done) {
                return NGX_OK;
            }

            if (!r->reading_body) {
                u->input_done = 1;
                return ngx_http_cloudauth_upload_input_end(u);
            }

            if (!ngx_http_cloudauth_upload_room(u)) {
                /* back-pressure: we are slow, not the client */
                if (r->connection->read->timer_set) {
                    ngx_del_timer(r->connection->read);
                }

                return NGX_OK;
            }

            rc = ngx_http_read_unbuffered_request_body(r);

            if (rc >= NGX_HTTP_SPECIAL_RESPONSE || rc == NGX_ERROR) {
                return rc;
            }

            if (rb->bufs == NULL && rc == NGX_AGAIN) {
                return NGX_OK;
            }

            continue;
        }

        b = u->in->buf;

        if (b->in_file) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "cloudauth: request body in a file");
            return NGX_ERROR;
        }

        if (b->pos == b->last) {
            u->in = u->in->next;
            continue;
        }

        taken = 0;

        rc = ngx_http_cloudauth_upload_take(u, b->pos, b->last, &taken);

        b->pos += taken;
        u->body_bytes += taken;

        if (rc != NGX_OK) {
            return rc;
        }

        /* a resumable upload's bytes count from where its request began */

        if (u->max_size && u->obj.base + u->body_bytes > u->max_size) {
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        if (b->pos < b->last) {
            /* no room until GCS has taken a chunk */
            return NGX_OK;
        }
    }
}


static ngx_uint_t
ngx_http_cloudauth_upload_room(ngx_http_cloudauth_upload_t *u)
{
    if (u->multipart) {
        if (u->pending) {
            return 0;
        }

        if (u->part == NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE) {
            return u->obj.open && !u->obj.eof
                   && u->len < u->conf->chunk_size;
        }

        return 1;
    }

    return u->obj.open && !u->obj.eof && u->len < u->conf->chunk_size;
}


static ngx_int_t
ngx_http_cloudauth_upload_take(ngx_http_cloudauth_upload_t *u, u_char *p,
    u_char *last, size_t *taken)
{
    size_t  n;

    if (u->multipart) {
        return ngx_http_cloudauth_upload_form_take(u, p, last, taken);
    }

    if (!u->obj.open || u->obj.eof
        || (u->direct_ok
            && u->obj.base + u->obj.received < u->stream_end))
    {
        /* none yet, or a streamed chunk's: curl takes them (give) */
        *taken = 0;
        return NGX_OK;
    }

    n = ngx_min((size_t) (last - p), u->conf->chunk_size - u->len);

    if (u->obj.total >= 0
        && u->obj.base + u->obj.received + (off_t) n > u->obj.total)
    {
        if (u->resumable) {
            ngx_str_set(&u->reason, "the body goes past the upload's length");
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        ngx_str_set(&u->reason, "the body is longer than Content-Length");
        return NGX_HTTP_BAD_REQUEST;
    }

    ngx_http_cloudauth_upload_feed(u, p, n);
    *taken = n;

    return NGX_OK;
}


static void
ngx_http_cloudauth_upload_feed(ngx_http_cloudauth_upload_t *u, u_char *data,
    size_t len)
{
    ngx_memcpy(u->buf + u->len, data, len);
    u->len += len;

    u->obj.received += len;
    u->bytes += len;
    u->obj.crc32c = ngx_cloudauth_crc32c(u->obj.crc32c, data, len);

    if (u->obj.md5) {
        EVP_DigestUpdate(u->obj.md5, data, len);
    }
}


static ngx_int_t
ngx_http_cloudauth_upload_form_take(ngx_http_cloudauth_upload_t *u,
    u_char *p, u_char *last, size_t *taken)
{
    u_char                    *start;
    size_t                     room;
    ngx_int_t                  rc;
    ngx_cloudauth_mp_t        *mp;
    ngx_cloudauth_mp_event_e   ev;

    mp = u->mp;
    start = p;

    for ( ;; ) {

        if (u->pending) {
            break;
        }

        switch (u->part) {

        case NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE:
            room = u->conf->chunk_size - u->len;
            break;

        case NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FIELD:
            room = NGX_HTTP_CLOUDAUTH_UPLOAD_FIELDS_MAX - u->arena_len;

            if (room == 0) {
                ngx_str_set(&u->reason, "form fields are too large");
                *taken = p - start;
                return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            }

            break;

        default:
            room = (size_t) (last - p) + 1;
        }

        if (room == 0) {
            break;
        }

        ev = ngx_cloudauth_mp_parse(mp, &p, last, room);

        switch (ev) {

        case NGX_CLOUDAUTH_MP_NEED_MORE:
            *taken = p - start;
            return NGX_OK;

        case NGX_CLOUDAUTH_MP_ERROR:
            u->reason.data = (u_char *) mp->error;
            u->reason.len = ngx_strlen(mp->error);
            *taken = p - start;
            return NGX_HTTP_BAD_REQUEST;

        case NGX_CLOUDAUTH_MP_PART:
            rc = ngx_http_cloudauth_upload_part(u);
            if (rc != NGX_OK) {
                *taken = p - start;
                return rc;
            }

            break;

        case NGX_CLOUDAUTH_MP_DATA:

            if (u->part == NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE) {
                ngx_http_cloudauth_upload_feed(u, mp->data, mp->len);

            } else if (u->part == NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FIELD) {
                rc = ngx_http_cloudauth_upload_field(u, mp->data, mp->len);
                if (rc != NGX_OK) {
                    *taken = p - start;
                    return rc;
                }
            }

            break;

        case NGX_CLOUDAUTH_MP_PART_END:

            if (u->part == NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE) {
                u->obj.eof = 1;
            }

            u->part = NGX_HTTP_CLOUDAUTH_UPLOAD_PART_NONE;
            break;

        case NGX_CLOUDAUTH_MP_END:
            break;
        }
    }

    *taken = p - start;

    return NGX_OK;
}


/* a part's headers: a field to keep, or a file to store */

static ngx_int_t
ngx_http_cloudauth_upload_part(ngx_http_cloudauth_upload_t *u)
{
    u_char                   *p;
    ngx_int_t                 rc;
    ngx_keyval_t             *kv;
    ngx_http_request_t       *r;
    ngx_cloudauth_mp_part_t  *part;

    r = u->request;
    part = &u->mp->part;

    if (!part->file) {
        if (part->name.len + u->arena_len
            > NGX_HTTP_CLOUDAUTH_UPLOAD_FIELDS_MAX
            || u->fields->nelts >= NGX_HTTP_CLOUDAUTH_UPLOAD_NFIELDS_MAX)
        {
            ngx_str_set(&u->reason, "form fields are too large");
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        if (u->arena == NULL) {
            u->arena = ngx_pnalloc(r->pool,
                                   NGX_HTTP_CLOUDAUTH_UPLOAD_FIELDS_MAX);
            if (u->arena == NULL) {
                return NGX_ERROR;
            }
        }

        kv = ngx_array_push(u->fields);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        kv->key.data = u->arena + u->arena_len;
        kv->key.len = part->name.len;
        ngx_memcpy(kv->key.data, part->name.data, part->name.len);
        u->arena_len += part->name.len;

        kv->value.data = u->arena + u->arena_len;
        kv->value.len = 0;

        u->part = NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FIELD;

        return NGX_OK;
    }

    if (part->filename.len == 0) {
        /* an empty file input */
        u->part = NGX_HTTP_CLOUDAUTH_UPLOAD_PART_SKIP;
        return NGX_OK;
    }

    if (u->files++ == NGX_HTTP_CLOUDAUTH_UPLOAD_FILES_MAX) {
        ngx_str_set(&u->reason, "more than 1000 files in a form");
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    u->part = NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE;

    /* keep the headers: the parser's buffer is reused by the next part */

    p = ngx_pnalloc(r->pool, part->filename.len + part->content_type.len
                             + part->content_md5.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    u->pending_name.data = p;
    u->pending_name.len = part->filename.len;
    p = ngx_cpymem(p, part->filename.data, part->filename.len);

    u->pending_type.data = p;
    u->pending_type.len = part->content_type.len;
    p = ngx_cpymem(p, part->content_type.data, part->content_type.len);

    u->pending_md5.data = p;
    u->pending_md5.len = part->content_md5.len;
    ngx_memcpy(p, part->content_md5.data, part->content_md5.len);

    if (u->pending_type.len == 0) {
        ngx_str_set(&u->pending_type, "application/octet-stream");
    }

    if (u->obj.open) {
        /* the previous file is still on its way */
        u->pending = 1;
        return NGX_OK;
    }

    rc = ngx_http_cloudauth_upload_open(u, &u->pending_name, &u->pending_type,
                                        &u->pending_md5, -1);

    return rc;
}


static ngx_int_t
ngx_http_cloudauth_upload_field(ngx_http_cloudauth_upload_t *u, u_char *data,
    size_t len)
{
    ngx_keyval_t  *kv;

    if (u->arena_len + len > NGX_HTTP_CLOUDAUTH_UPLOAD_FIELDS_MAX) {
        ngx_str_set(&u->reason, "form fields are too large");
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    kv = u->fields->elts;
    kv = &kv[u->fields->nelts - 1];

    ngx_memcpy(u->arena + u->arena_len, data, len);
    u->arena_len += len;
    kv->value.len += len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_input_end(ngx_http_cloudauth_upload_t *u)
{
    if (u->resumable) {
        /* the last byte, or the end of this request's part */

        if (u->obj.total >= 0
            && u->obj.base + u->obj.received == u->obj.total)
        {
            u->obj.eof = 1;

        } else {
            u->parked = 1;
        }

        return NGX_OK;
    }

    if (!u->multipart) {
        if (u->obj.total >= 0 && u->obj.received != u->obj.total) {
            ngx_str_set(&u->reason, "the body is shorter than Content-Length");
            return NGX_HTTP_BAD_REQUEST;
        }

        u->obj.eof = 1;

        return NGX_OK;
    }

    if (ngx_cloudauth_mp_finish(u->mp) != NGX_OK) {
        u->reason.data = (u_char *) u->mp->error;
        u->reason.len = ngx_strlen(u->mp->error);
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* objects */

ngx_int_t
ngx_http_cloudauth_upload_open(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *filename, ngx_str_t *content_type, ngx_str_t *content_md5,
    off_t total)
{
    ngx_int_t                            rc;
    ngx_str_t                            name;
    ngx_http_request_t                  *r;
    ngx_cloudauth_gcs_object_t           object;
    ngx_cloudauth_gcs_handlers_t         h;
    ngx_http_cloudauth_upload_object_t  *obj;

    r = u->request;
    obj = &u->obj;

    ngx_memzero(obj, sizeof(ngx_http_cloudauth_upload_object_t));
    obj->total = total;

    /* a resumable upload's bytes go on from the client's offset */
    obj->base = u->offset;
    obj->offset = u->offset;

    ngx_http_cloudauth_upload_sanitize(r->pool, filename, &u->filename);

    if (u->id.name.len) {
        name = u->id.name;

    } else {
        rc = ngx_http_cloudauth_upload_object_name(u, &name);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (ngx_cloudauth_gcs_shown(r->pool, &name, &obj->shown)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_cloudauth_utf8_valid(content_type->data, content_type->len)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: bad object name \"%V\": %s",
                      &obj->shown, "the content type is not UTF-8");
        ngx_str_set(&u->reason, "the content type is not UTF-8");
        return NGX_HTTP_BAD_REQUEST;
    }

    rc = ngx_http_cloudauth_upload_content_md5(u, content_md5);
    if (rc != NGX_OK) {
        return rc;
    }

    obj->name = name;
    obj->offset = obj->base;

    /* MD5 costs more CPU than the rest of the upload together */

    if ((u->conf->md5 || obj->has_md5) && obj->base == 0) {
        obj->md5 = EVP_MD_CTX_new();
        if (obj->md5 == NULL
            || EVP_DigestInit_ex(obj->md5, EVP_md5(), NULL) != 1)
        {
            return NGX_ERROR;
        }
    }

    if (u->buf == NULL) {
        u->buf = ngx_http_cloudauth_upload_buf_alloc(
                     ngx_http_get_module_main_conf(r,
                                            ngx_http_cloudauth_upload_module),
                     u->conf->chunk_size, r->connection->log);
        if (u->buf == NULL) {
            return NGX_ERROR;
        }
    }

    /* its session, started when a token and GCS are free */

    object.name = name;
    object.shown = obj->shown;
    object.content_type = *content_type;
    object.metadata = u->fields;
    object.nmetadata = u->fields ? u->fields->nelts : 0;
    object.size = total;

    h.progress = ngx_http_cloudauth_upload_progress;
    h.done = ngx_http_cloudauth_upload_done;
    h.failed = ngx_http_cloudauth_upload_failed;
    h.data = u;

    obj->gcs = ngx_cloudauth_gcs_create(r->pool, r->connection->log,
                                        &u->conf->gcs, &object, &h);
    if (obj->gcs == NULL) {
        return NGX_ERROR;
    }

    u->len = 0;
    u->direct = 0;
    u->direct_ok = 0;
    u->stream_end = 0;
    obj->open = 1;

    /*
     * Without chunk_size=, a body of a known length goes to GCS as one
     * request, up to its last 256 KiB mark, straight from nginx's buffers;
     * the rest follows with the hashes in the final request (or, for a
     * part of a resumable upload, is dropped: the client sends it again)
     */

    if (!u->conf->chunks && !u->multipart
        && r->headers_in.content_length_n > 0
        && obj->base % NGX_CLOUDAUTH_GCS_QUANTUM == 0)
    {
        u->stream_end = obj->base + r->headers_in.content_length_n;
        u->stream_end -= u->stream_end % NGX_CLOUDAUTH_GCS_QUANTUM;
        u->direct_ok = (u->stream_end > obj->base);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: object \"%V\" size %O from %O",
                   &obj->shown, total, obj->base);

    return NGX_OK;
}


/* object= or the URI below the location (and a form's file name) */

static ngx_int_t
ngx_http_cloudauth_upload_object_name(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *name)
{
    u_char                    *p;
    size_t                     below;
    ngx_str_t                  shown;
    const char                *err;
    ngx_http_request_t        *r;
    ngx_http_core_loc_conf_t  *clcf;

    r = u->request;

    if (u->conf->object) {
        if (ngx_http_complex_value(r, u->conf->object, name) != NGX_OK) {
            return NGX_ERROR;
        }

    } else {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        below = 0;

        if (r->uri.len >= clcf->name.len
            && ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) == 0
            && !clcf->regex)
        {
            below = clcf->name.len;

        } else if (r->uri.len && r->uri.data[0] == '/') {
            below = 1;
        }

        name->data = r->uri.data + below;
        name->len = r->uri.len - below;

        if (u->directory) {
            /* the URI is a "directory" for a form's files, for uploads */

            p = ngx_pnalloc(r->pool, name->len + 1 + u->filename.len);
            if (p == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(p, name->data, name->len);
            below = name->len;

            if (below && p[below - 1] != '/') {
                p[below++] = '/';
            }

            ngx_memcpy(p + below, u->filename.data, u->filename.len);

            name->data = p;
            name->len = below + u->filename.len;
        }
    }

    err = ngx_http_cloudauth_upload_check_name(name);

    if (err) {
        if (ngx_cloudauth_gcs_shown(r->pool, name, &shown) != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: bad object name \"%V\": %s",
                      &shown, err);
        u->reason.data = (u_char *) err;
        u->reason.len = ngx_strlen(err);
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/*
 * A Content-MD5: 16 bytes are 22 base64 characters and "==", checked
 * before decoding, as 24 characters without padding decode to 18 bytes;
 * and decoded into a buffer with room for what 24 could become
 */

static ngx_int_t
ngx_http_cloudauth_upload_content_md5(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *content_md5)
{
    ngx_str_t  md5;
    u_char     raw[ngx_base64_decoded_length(24)];

    if (content_md5->len == 0) {
        return NGX_OK;
    }

    md5.data = raw;

    if (content_md5->len != 24
        || content_md5->data[22] != '='
        || content_md5->data[23] != '='
        || ngx_decode_base64(&md5, content_md5) != NGX_OK
        || md5.len != 16)
    {
        ngx_str_set(&u->reason, "Content-MD5 is not a base64 MD5");
        return NGX_HTTP_BAD_REQUEST;
    }

    ngx_memcpy(u->obj.content_md5, raw, 16);
    u->obj.has_md5 = 1;

    return NGX_OK;
}


static void
ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u)
{
    if (u->obj.md5) {
        EVP_MD_CTX_free(u->obj.md5);
        u->obj.md5 = NULL;
    }

    u->obj.open = 0;
    u->obj.gcs = NULL;
    u->len = 0;
    u->direct = 0;
    u->direct_ok = 0;
    u->streaming = 0;
}


/*
 * What is due: the next file's object, the end, the session's start, the
 * final bytes, or a full chunk.  NGX_OK: go on; NGX_AGAIN: the client is
 * busy; NGX_DECLINED: the body first; NGX_DONE, NGX_ERROR: the end.
 */

static ngx_int_t
ngx_http_cloudauth_upload_step(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t                            rc;
    ngx_http_cloudauth_upload_object_t  *obj;

    obj = &u->obj;

    if (!obj->open) {

        if (u->pending) {
            u->pending = 0;

            rc = ngx_http_cloudauth_upload_open(u, &u->pending_name,
                                                &u->pending_type,
                                                &u->pending_md5, -1);
            if (rc != NGX_OK) {
                ngx_http_cloudauth_upload_fail(u,
                                       rc == NGX_ERROR
                                       ? NGX_HTTP_INTERNAL_SERVER_ERROR : rc,
                                       (char *) u->reason.data,
                                       u->reason.len);
                return NGX_ERROR;
            }

            return NGX_OK;
        }

        if (u->input_done) {
            ngx_http_cloudauth_upload_finish(u);
            return NGX_DONE;
        }

        return NGX_DECLINED;
    }

    if (!obj->started) {
        return ngx_http_cloudauth_upload_session(u);
    }

    if (obj->eof) {
        return ngx_http_cloudauth_upload_last(u);
    }

    if (u->parked) {
        return ngx_http_cloudauth_upload_park(u);
    }

    if (u->direct_ok && u->len == 0 && u->direct == 0
        && obj->base + obj->received == obj->offset
        && obj->offset < u->stream_end)
    {
        return ngx_http_cloudauth_upload_stream(u);
    }

    if (u->len == u->conf->chunk_size) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                       "cloudauth: upload: chunk of %uz at %O",
                       u->len, obj->offset);

        rc = ngx_cloudauth_gcs_send(obj->gcs, obj->offset, u->buf, u->len);
        return (rc == NGX_OK) ? NGX_AGAIN : NGX_ERROR;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_cloudauth_upload_session(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t  rc;

    u->obj.started = 1;

    if (u->id.uri.len) {

        /* the session the client came back to: what does GCS hold? */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                       "cloudauth: upload: querying the session of \"%V\"",
                       &u->obj.shown);

        rc = ngx_cloudauth_gcs_attach(u->obj.gcs, &u->id.uri);

        if (rc != NGX_OK) {
            ngx_http_cloudauth_upload_fail(u,
                                 rc == NGX_ERROR
                                 ? NGX_HTTP_INTERNAL_SERVER_ERROR
                                 : NGX_HTTP_NOT_FOUND,
                                 "no such upload",
                                 sizeof("no such upload") - 1);
            return NGX_ERROR;
        }

        if (ngx_cloudauth_gcs_query(u->obj.gcs) != NGX_OK) {
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: starting a session for \"%V\"",
                   &u->obj.shown);

    if (ngx_cloudauth_gcs_start(u->obj.gcs) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/*
 * The body's bytes up to stream_end in one request: curl pulls them from
 * nginx's buffers (give), the last KEEP of them are kept in the chunk
 * buffer too, so that GCS keeping fewer than it was sent (a short 308, a
 * failure answered at the end) is resumed from memory
 */

static ngx_int_t
ngx_http_cloudauth_upload_stream(ngx_http_cloudauth_upload_t *u)
{
    off_t                                keep;
    ngx_http_cloudauth_upload_object_t  *obj;

    obj = &u->obj;

    keep = ngx_min(NGX_HTTP_CLOUDAUTH_UPLOAD_KEEP,
                   (off_t) (u->conf->chunk_size - NGX_CLOUDAUTH_GCS_QUANTUM));

    u->keep_from = ngx_max(obj->offset, u->stream_end - keep);
    u->streaming = 1;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: stream %O-%O, kept from %O",
                   obj->offset, u->stream_end, u->keep_from);

    if (ngx_cloudauth_gcs_stream(obj->gcs, obj->offset,
                                 (size_t) (u->stream_end - obj->offset),
                                 ngx_http_cloudauth_upload_give, u)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/*
 * curl's read callback of a streamed chunk: the body's bytes from nginx's
 * buffers into curl's, reading the client when they are used up.  What
 * cannot be handled inside curl (a failed read, the body's end) wakes the
 * upload from the posted events.
 */

static ssize_t
ngx_http_cloudauth_upload_give(void *data, u_char *buf, size_t size)
{
    ngx_http_cloudauth_upload_t *u = data;

    off_t                                pos, skip;
    size_t                               n, given;
    ngx_int_t                            rc;
    ngx_buf_t                           *b;
    ngx_http_request_t                  *r;
    ngx_http_request_body_t             *rb;
    ngx_http_cloudauth_upload_object_t  *obj;

    r = u->request;
    rb = r->request_body;
    obj = &u->obj;
    given = 0;

    while (given < size) {

        if (u->in == NULL) {

            if (rb->bufs) {
                u->in = rb->bufs;
                rb->bufs = NULL;
                continue;
            }

            if (u->read_rc || !r->reading_body) {
                break;
            }

            rc = ngx_http_read_unbuffered_request_body(r);

            if (rc >= NGX_HTTP_SPECIAL_RESPONSE || rc == NGX_ERROR) {
                u->read_rc = rc;
                break;
            }

            if (rb->bufs == NULL) {
                break;
            }

            continue;
        }

        b = u->in->buf;

        if (b->in_file) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "cloudauth: request body in a file");
            u->read_rc = NGX_ERROR;
            break;
        }

        if (b->pos == b->last) {
            u->in = u->in->next;
            continue;
        }

        n = ngx_min((size_t) (b->last - b->pos), size - given);

        ngx_memcpy(buf + given, b->pos, n);
        b->pos += n;

        pos = obj->base + obj->received;

        if (pos + (off_t) n > u->keep_from) {
            skip = (pos >= u->keep_from) ? 0 : u->keep_from - pos;

            ngx_memcpy(u->buf + u->len, buf + given + skip,
                       n - (size_t) skip);
            u->len += n - (size_t) skip;
            u->direct += skip;

        } else {
            u->direct += n;
        }

        obj->received += n;
        u->bytes += n;
        u->body_bytes += n;
        obj->crc32c = ngx_cloudauth_crc32c(obj->crc32c, buf + given, n);

        if (obj->md5) {
            EVP_DigestUpdate(obj->md5, buf + given, n);
        }

        given += n;
    }

    if (given) {
        return given;
    }

    if ((u->read_rc || !r->reading_body) && !u->wake.posted) {
        ngx_post_event(&u->wake, &ngx_posted_events);
    }

    return NGX_AGAIN;
}


/*
 * The end of a request's bytes before the object's last: GCS keeps
 * whole 256 KiB blocks only, so those go, the rest is dropped (the client
 * sends it again from the offset it is told), and the client is answered
 */

static ngx_int_t
ngx_http_cloudauth_upload_park(ngx_http_cloudauth_upload_t *u)
{
    off_t                                end;
    size_t                               aligned;
    ngx_http_cloudauth_upload_object_t  *obj;

    obj = &u->obj;

    end = obj->offset + (off_t) u->len;
    aligned = (size_t) (end - end % NGX_CLOUDAUTH_GCS_QUANTUM - obj->offset);

    if (end > obj->offset + NGX_CLOUDAUTH_GCS_QUANTUM - 1 && aligned) {
        if (ngx_cloudauth_gcs_send(obj->gcs, obj->offset, u->buf, aligned)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    ngx_http_cloudauth_upload_settle(u, NGX_HTTP_CLOUDAUTH_UPLOAD_PARTIAL);

    if (!u->cut) {
        u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_PARTIAL;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: part of \"%V\" in, GCS holds %O",
                   &obj->shown, obj->offset);

    ngx_http_cloudauth_upload_close(u);

    u->finished = 1;
    u->hooks->answer(u, NULL);

    return NGX_DONE;
}


/* every byte is in: the sums, then the final request */

static ngx_int_t
ngx_http_cloudauth_upload_last(ngx_http_cloudauth_upload_t *u)
{
    ngx_cloudauth_gcs_hash_t             hash;
    ngx_http_cloudauth_upload_object_t  *obj;

    obj = &u->obj;

    ngx_memzero(&hash, sizeof(ngx_cloudauth_gcs_hash_t));
    hash.crc32c = obj->crc32c;

    /* a request from an offset did not see the bytes before it */
    hash.no_crc32c = (obj->base != 0);

    if (obj->md5) {
        EVP_DigestFinal_ex(obj->md5, hash.md5, NULL);
        EVP_MD_CTX_free(obj->md5);
        obj->md5 = NULL;

        if (obj->has_md5 && ngx_memcmp(hash.md5, obj->content_md5, 16) != 0) {
            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_REQUEST,
                               "Content-MD5 does not match the body",
                               sizeof("Content-MD5 does not match the body")
                               - 1);
            return NGX_ERROR;
        }

        /* from now on (a final request done again) the body's own */
        ngx_memcpy(obj->content_md5, hash.md5, 16);
        obj->has_md5 = 1;
    }

    if (obj->has_md5) {
        ngx_memcpy(hash.md5, obj->content_md5, 16);
        hash.has_md5 = 1;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: the last %uz bytes of \"%V\" at %O",
                   u->len, &obj->shown, obj->offset);

    if (ngx_cloudauth_gcs_finish(obj->gcs, obj->offset, u->buf, u->len,
                                 &hash)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/* the GCS client's handlers */

static void
ngx_http_cloudauth_upload_progress(ngx_cloudauth_gcs_t *s, off_t offset)
{
    ngx_http_cloudauth_upload_t *u = s->handlers.data;

    off_t                                drop;
    ngx_connection_t                    *c;
    ngx_http_cloudauth_upload_object_t  *obj;

    c = u->request->connection;
    obj = &u->obj;

    if (ngx_http_cloudauth_upload_checked(u, offset, NULL) != NGX_OK) {
        goto done;
    }

    if (u->resumable && u->id.uri.len == 0) {
        /* a new session of a resumable upload: the client's handle */
        u->id.uri = s->uri;

        /* nobody came back to it: nothing to check, even once it is out */
        u->checked = 1;

        if (u->hooks->started && u->hooks->started(u) != NGX_OK) {
            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 "the upload's URL cannot be sent",
                                 sizeof("the upload's URL cannot be sent")
                                 - 1);
            goto done;
        }
    }

    if (u->early) {
        ngx_http_cloudauth_upload_body_after(u);
        goto done;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: GCS holds %O of \"%V\"",
                   offset, &obj->shown);

    u->streaming = 0;

    /*
     * GCS holds [0, offset): the buffer keeps the rest, from
     * obj->offset + u->direct (a streamed chunk's bytes before are gone)
     */

    if (offset < obj->offset + u->direct) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "cloudauth: upload: GCS holds %O bytes of \"%V\", "
                      "the bytes from there up to %O were streamed and are "
                      "no longer here", offset, &obj->shown,
                      obj->offset + u->direct);

        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                       "GCS lost bytes of a request that cannot be sent "
                       "again",
                       sizeof("GCS lost bytes of a request that cannot be "
                              "sent again") - 1);
        goto done;
    }

    drop = offset - obj->offset - u->direct;

    if (drop < 0 || drop > (off_t) u->len) {
        /* a hostile or broken GCS: more than it was sent */
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "cloudauth: upload: GCS holds %O bytes of \"%V\", "
                      "more than the %O it was sent", offset, &obj->shown,
                      obj->offset + u->direct + (off_t) u->len);

        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                       "GCS reports bytes it was not sent",
                       sizeof("GCS reports bytes it was not sent") - 1);
        goto done;
    }

    if (drop) {
        ngx_memmove(u->buf, u->buf + drop, u->len - (size_t) drop);
        u->len -= (size_t) drop;
    }

    obj->offset = offset;
    u->direct = 0;

    if (u->len && obj->base + obj->received < u->stream_end) {
        /* a streamed chunk resumed from the kept bytes: chunks from now */
        u->direct_ok = 0;
    }

    ngx_http_cloudauth_upload_run(u);

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_cloudauth_upload_done(ngx_cloudauth_gcs_t *s, json_t *object)
{
    ngx_http_cloudauth_upload_t *u = s->handlers.data;

    u_char                              *p;
    ngx_connection_t                    *c;
    ngx_cloudauth_stats_t               *st;
    ngx_http_cloudauth_upload_object_t  *obj;

    c = u->request->connection;
    obj = &u->obj;

    if (ngx_http_cloudauth_upload_checked(u, obj->total, object) != NGX_OK) {
        json_decref(object);
        goto done;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: \"%V\" stored", &obj->shown);

    if (u->results == NULL) {
        u->results = json_array();
        if (u->results == NULL) {
            json_decref(object);
            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           NULL, 0);
            goto done;
        }
    }

    json_array_append_new(u->results, object);

    /*
     * $cloudauth_upload_object: the names, comma-separated, up to
     * NGX_HTTP_CLOUDAUTH_UPLOAD_NAMES_MAX bytes (a form may have many)
     */

    if (u->names.len + 1 + obj->name.len
        <= NGX_HTTP_CLOUDAUTH_UPLOAD_NAMES_MAX)
    {
        p = ngx_pnalloc(u->request->pool, u->names.len + 1 + obj->name.len);
        if (p == NULL) {
            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           NULL, 0);
            goto done;
        }

        ngx_memcpy(p, u->names.data, u->names.len);

        if (u->names.len) {
            p[u->names.len++] = ',';
        }

        ngx_memcpy(p + u->names.len, obj->name.data, obj->name.len);
        u->names.data = p;
        u->names.len += obj->name.len;
    }

    u->objects++;

    st = ngx_cloudauth_cache_stats(u->conf->gcs.cred->conf->shm_zone);
    if (st) {
        (void) ngx_atomic_fetch_add(&st->upload_bytes, obj->received);
    }

    ngx_http_cloudauth_upload_close(u);

    ngx_http_cloudauth_upload_run(u);

done:

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_cloudauth_upload_failed(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_gcs_error_e why, ngx_uint_t status, ngx_str_t *reason,
    ngx_str_t *said)
{
    ngx_http_cloudauth_upload_t *u = s->handlers.data;

    ngx_connection_t  *c;

    c = u->request->connection;

    u->said = *said;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: GCS failed (%d) for \"%V\"",
                   (int) why, &u->obj.shown);

    if (u->resumable && why == NGX_CLOUDAUTH_GCS_GONE) {
        /* a question (HEAD, DELETE) about a session gone is no error */
        u->moved = !u->active;
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_NOT_FOUND,
                                       "no such upload",
                                       sizeof("no such upload") - 1);
        goto done;
    }

    if (u->resumable
        && (why == NGX_CLOUDAUTH_GCS_CONFLICT
            || why == NGX_CLOUDAUTH_GCS_COMPLETE))
    {
        /*
         * another request moved the upload on (or finished it): not a
         * failure of GCS's; the client asks where it stands
         */
        u->moved = 1;
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_CONFLICT,
                          "the upload's offset moved on; ask it again",
                          sizeof("the upload's offset moved on; ask it "
                                 "again") - 1);
        goto done;
    }

    ngx_http_cloudauth_upload_fail(u, status, (char *) reason->data,
                                   reason->len);

done:

    ngx_http_run_posted_requests(c);
}


/*
 * GCS's first word on a session the client came back to, for its front
 * end to check: NGX_OK, or the upload has failed
 */

static ngx_int_t
ngx_http_cloudauth_upload_checked(ngx_http_cloudauth_upload_t *u, off_t held,
    json_t *object)
{
    ngx_int_t  rc;

    if (!u->given || u->checked || u->hooks->check == NULL) {
        return NGX_OK;
    }

    u->checked = 1;

    rc = u->hooks->check(u, held, object);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: %s check at %O: %i",
                   u->hooks->name, held, rc);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    /* the client's view of the upload is not GCS's: its matter */
    u->moved = 1;

    ngx_http_cloudauth_upload_fail(u, rc == NGX_ERROR
                                      ? NGX_HTTP_INTERNAL_SERVER_ERROR : rc,
                                   (char *) u->reason.data, u->reason.len);

    return NGX_ERROR;
}


/*
 * A question to the session the client came back to, without a body:
 * QUERY (what GCS holds, or the object when it is complete), TERMINATE
 * (cancel it).  Ends through the answer hook (object NULL: GCS holds
 * u->obj.offset, or, terminated, nothing) or a failure.  NGX_OK: asked,
 * the request waits (the caller returns NGX_DONE); NGX_DECLINED: the
 * session is not on the endpoint (endpoint= changed since); NGX_ERROR.
 */

ngx_int_t
ngx_http_cloudauth_upload_ask(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_upload_ask_e what)
{
    ngx_int_t                      rc;
    ngx_http_request_t            *r;
    ngx_cloudauth_gcs_object_t     object;
    ngx_cloudauth_gcs_handlers_t   h;

    r = u->request;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memzero(&object, sizeof(ngx_cloudauth_gcs_object_t));
    object.name = u->id.name;
    object.size = u->id.length;

    if (ngx_cloudauth_gcs_shown(r->pool, &u->id.name, &object.shown)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    h.progress = ngx_http_cloudauth_upload_asked;
    h.done = ngx_http_cloudauth_upload_answered;
    h.failed = ngx_http_cloudauth_upload_failed;
    h.data = u;

    u->obj.gcs = ngx_cloudauth_gcs_create(r->pool, r->connection->log,
                                          &u->conf->gcs, &object, &h);
    if (u->obj.gcs == NULL) {
        return NGX_ERROR;
    }

    u->obj.name = u->id.name;
    u->obj.shown = object.shown;
    u->obj.total = u->id.length;
    u->ask = what;

    rc = ngx_cloudauth_gcs_attach(u->obj.gcs, &u->id.uri);
    if (rc != NGX_OK) {
        u->obj.gcs = NULL;
        return rc;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: %s the session of \"%V\"",
                   what == NGX_HTTP_CLOUDAUTH_UPLOAD_QUERY
                   ? "query" : "terminate", &object.shown);

    r->main->count++;

    if (what == NGX_HTTP_CLOUDAUTH_UPLOAD_QUERY) {
        (void) ngx_cloudauth_gcs_query(u->obj.gcs);

    } else {
        (void) ngx_cloudauth_gcs_terminate(u->obj.gcs);
    }

    return NGX_OK;
}


/* a query's answer: GCS holds [0, offset) */

static void
ngx_http_cloudauth_upload_asked(ngx_cloudauth_gcs_t *s, off_t offset)
{
    ngx_http_cloudauth_upload_t *u = s->handlers.data;

    ngx_connection_t  *c;

    c = u->request->connection;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: GCS holds %O of \"%V\"",
                   offset, &u->obj.shown);

    u->finished = 1;
    u->obj.gcs = NULL;
    u->obj.offset = offset;

    u->hooks->answer(u, NULL);

    ngx_http_run_posted_requests(c);
}


/* a query's: the object is complete (a summary); a termination's: NULL */

static void
ngx_http_cloudauth_upload_answered(ngx_cloudauth_gcs_t *s, json_t *object)
{
    ngx_http_cloudauth_upload_t *u = s->handlers.data;

    ngx_connection_t  *c;

    c = u->request->connection;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: \"%V\" %s", &u->obj.shown,
                   object ? "is complete" : "terminated");

    u->finished = 1;
    u->obj.gcs = NULL;

    u->hooks->answer(u, object);

    if (object) {
        json_decref(object);
    }

    ngx_http_run_posted_requests(c);
}


/* the end: failure, cancellation, success */

static void
ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len)
{
    ngx_int_t            rc;
    ngx_str_t            why;
    ngx_uint_t           level;
    ngx_http_request_t  *r;

    r = u->request;

    if (u->finished) {
        return;
    }

    u->finished = 1;

    if (reason == NULL) {
        reason = "internal error";
        len = sizeof("internal error") - 1;
    }

    if (u->status != NGX_HTTP_CLOUDAUTH_UPLOAD_ABORTED) {
        u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_FAILED;
    }

    /* the client's doing (gone, or racing itself) is no error of ours */

    level = (r->connection->error || u->moved) ? NGX_LOG_INFO : NGX_LOG_ERR;

    /* GCS's own words to the log, never to the client */

    ngx_log_error(level, r->connection->log, 0,
                  "cloudauth: upload of \"%V\" failed (%ui): %*s%s%V",
                  &u->obj.shown, status, len, reason,
                  u->said.len ? "; GCS said: " : "", &u->said);

    ngx_http_cloudauth_upload_abort(u);

    if (r->connection->error || status == NGX_HTTP_REQUEST_TIME_OUT) {
        ngx_http_finalize_request(r, status);
        return;
    }

    if (u->hooks->refuse) {
        why.data = (u_char *) reason;
        why.len = len;
        rc = u->hooks->refuse(u, status, &why);

    } else {
        rc = ngx_http_cloudauth_upload_reject(r, &u->conf->reply,
                                              &u->cors_origin, status,
                                              reason, len);
    }

    ngx_http_finalize_request(r, rc);
}


/* stops everything under way, cancels the session, counts a failure */

static void
ngx_http_cloudauth_upload_abort(ngx_http_cloudauth_upload_t *u)
{
    if (u->obj.gcs) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                       "cloudauth: upload: abort \"%V\"%s", &u->obj.shown,
                       u->given ? ", the session kept" : "");

        if (u->given) {
            /* the client may come back to it */
            ngx_cloudauth_gcs_abort(u->obj.gcs);

        } else {
            ngx_cloudauth_gcs_cancel(u->obj.gcs);
        }
    }

    ngx_http_cloudauth_upload_close(u);

    ngx_http_cloudauth_upload_settle(u, NGX_HTTP_CLOUDAUTH_UPLOAD_FAILED);
}


/*
 * The end of the request's upload: a graceful shutdown no longer waits for
 * it, and it is counted (a resumable upload's part is neither done nor
 * failed)
 */

static void
ngx_http_cloudauth_upload_settle(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_upload_status_e outcome)
{
    ngx_cloudauth_stats_t  *st;

    if (u->guard.timer_set) {
        ngx_del_timer(&u->guard);
    }

    if (!u->active) {
        return;
    }

    u->active = 0;

    st = ngx_cloudauth_cache_stats(u->conf->gcs.cred->conf->shm_zone);
    if (st == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->uploads_active, -1);

    if (ngx_process_slot >= 0 && ngx_process_slot < NGX_MAX_PROCESSES) {
        (void) ngx_atomic_fetch_add(&st->uploads_slot[ngx_process_slot], -1);
    }

    if (outcome == NGX_HTTP_CLOUDAUTH_UPLOAD_STORED) {
        (void) ngx_atomic_fetch_add(&st->uploads_completed, 1);

    } else if (outcome == NGX_HTTP_CLOUDAUTH_UPLOAD_FAILED) {
        (void) ngx_atomic_fetch_add(&st->uploads_failed, 1);
    }
}


static void
ngx_http_cloudauth_upload_finish(ngx_http_cloudauth_upload_t *u)
{
    json_t  *body;

    if (u->objects == 0) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_REQUEST,
                                       "the form has no file",
                                       sizeof("the form has no file") - 1);
        return;
    }

    u->finished = 1;
    u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_STORED;

    ngx_http_cloudauth_upload_settle(u, NGX_HTTP_CLOUDAUTH_UPLOAD_STORED);

    body = u->multipart ? u->results : json_array_get(u->results, 0);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, u->request->connection->log, 0,
                   "cloudauth: upload: %s upload stored, %ui objects",
                   u->hooks->name, u->objects);

    u->obj.offset = u->obj.total;
    u->hooks->answer(u, body);
}


static void
ngx_http_cloudauth_upload_cleanup(void *data)
{
    ngx_http_cloudauth_upload_t  *u = data;

    if (!u->finished) {
        /* the client went away: nothing half-written stays */
        u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_ABORTED;
    }

    ngx_http_cloudauth_upload_abort(u);

    if (u->wake.posted) {
        ngx_delete_posted_event(&u->wake);
    }

    if (u->buf) {
        ngx_http_cloudauth_upload_buf_free(
                     ngx_http_get_module_main_conf(u->request,
                                            ngx_http_cloudauth_upload_module),
                     u->buf, u->conf->chunk_size, !u->conf->chunks,
                     ngx_cycle->log);
        u->buf = NULL;
    }

    if (u->results) {
        json_decref(u->results);
        u->results = NULL;
    }
}


/*
 * The chunk buffer is mapped, not malloc()ed: only the pages a body
 * touches become resident, and all of it goes back to the system when the
 * upload ends (malloc() would keep a freed buffer this size in its heap).
 * But one: a process keeps the buffer of an upload at the defaults, its
 * first KEEP + 256 KiB resident at most (what a one-request upload
 * touches), for the next, so that a series of requests (a resumable
 * upload's parts) does not fault the same pages in again and again.  It
 * is kept in the cycle's configuration, and given back with it.
 */

static u_char *
ngx_http_cloudauth_upload_buf_alloc(
    ngx_http_cloudauth_upload_main_conf_t *umcf, size_t size, ngx_log_t *log)
{
    u_char  *p;

    if (umcf->spare && umcf->spare_size == size) {
        p = umcf->spare;
        umcf->spare = NULL;
        return p;
    }

    p = mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS,
             -1, 0);

    if (p == MAP_FAILED) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "cloudauth: mmap(%uz) for an upload failed", size);
        return NULL;
    }

    return p;
}


static void
ngx_http_cloudauth_upload_buf_free(
    ngx_http_cloudauth_upload_main_conf_t *umcf, u_char *buf, size_t size,
    ngx_uint_t spare, ngx_log_t *log)
{
    size_t  kept;

    kept = NGX_HTTP_CLOUDAUTH_UPLOAD_KEEP + NGX_CLOUDAUTH_GCS_QUANTUM;

    if (spare && umcf->spare == NULL && size >= kept
        && (size == kept
            || madvise(buf + kept, size - kept, MADV_DONTNEED) == 0))
    {
        umcf->spare = buf;
        umcf->spare_size = size;
        return;
    }

    if (munmap(buf, size) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "cloudauth: munmap() of an upload buffer failed");
    }
}


/* the cycle's configuration goes: the buffer it kept, with it */

void
ngx_http_cloudauth_upload_spare_free(void *data)
{
    ngx_http_cloudauth_upload_main_conf_t  *umcf = data;

    if (umcf->spare) {
        (void) munmap(umcf->spare, umcf->spare_size);
        umcf->spare = NULL;
    }
}
