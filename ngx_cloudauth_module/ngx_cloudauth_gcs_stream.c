
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: the body of a request, read unbuffered into the
 * chunk buffer (raw, or file by file through the multipart parser), the
 * objects it becomes, and the state machine deciding which GCS request is
 * due; the end of an upload (stored, failed, aborted).
 */


#include "ngx_cloudauth_gcs_upload.h"


static void ngx_http_cloudauth_upload_read(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_pull(
    ngx_http_cloudauth_upload_t *u);
static ngx_uint_t ngx_http_cloudauth_upload_room(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_take(
    ngx_http_cloudauth_upload_t *u, u_char *p, u_char *last, size_t *taken);
static ngx_int_t ngx_http_cloudauth_upload_form(
    ngx_http_cloudauth_upload_t *u, u_char *p, u_char *last, size_t *taken);
static ngx_int_t ngx_http_cloudauth_upload_part(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_field(
    ngx_http_cloudauth_upload_t *u, u_char *data, size_t len);
static void ngx_http_cloudauth_upload_feed(ngx_http_cloudauth_upload_t *u,
    u_char *data, size_t len);
static ngx_int_t ngx_http_cloudauth_upload_input_end(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_step(
    ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_abort(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_finish(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_buf_free(u_char *buf, size_t size,
    ngx_log_t *log);


void
ngx_http_cloudauth_upload_body(ngx_http_request_t *r)
{
    ngx_cloudauth_stats_t        *st;
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    r->read_event_handler = ngx_http_cloudauth_upload_read;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_str_set(&u->status, "uploading");

    st = ngx_cloudauth_cache_stats(u->ask.cred->conf->shm_zone);
    if (st) {
        (void) ngx_atomic_fetch_add(&st->uploads_active, 1);
    }

    u->active = 1;

    /* a graceful shutdown waits for the upload */
    ngx_add_timer(&u->guard, NGX_HTTP_CLOUDAUTH_GUARD);

    ngx_http_cloudauth_upload_run(u);
}


static void
ngx_http_cloudauth_upload_read(ngx_http_request_t *r)
{
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    ngx_http_cloudauth_upload_run(u);
}


/*
 * Takes what the body offers while there is room, then starts whatever
 * GCS request is due; returns when waiting for the client, GCS, the token
 * or a retry timer.
 */

void
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

        if (rc != NGX_OK) {
            if (r->connection->error || rc == NGX_HTTP_REQUEST_TIME_OUT) {
                ngx_str_set(&u->status, "aborted");

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

        if (u->fetch || u->retry.timer_set || u->ask.waiting) {
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

        if (u->max_size && u->body_bytes > u->max_size) {
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

        if (u->part == NGX_HTTP_CLOUDAUTH_PART_FILE) {
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
        return ngx_http_cloudauth_upload_form(u, p, last, taken);
    }

    if (!u->obj.open || u->obj.eof) {
        *taken = 0;
        return NGX_OK;
    }

    n = ngx_min((size_t) (last - p), u->conf->chunk_size - u->len);

    if (u->obj.total >= 0 && u->obj.received + (off_t) n > u->obj.total) {
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
ngx_http_cloudauth_upload_form(ngx_http_cloudauth_upload_t *u, u_char *p,
    u_char *last, size_t *taken)
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

        case NGX_HTTP_CLOUDAUTH_PART_FILE:
            room = u->conf->chunk_size - u->len;
            break;

        case NGX_HTTP_CLOUDAUTH_PART_FIELD:
            room = NGX_HTTP_CLOUDAUTH_FIELDS_MAX - u->arena_len;

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

            if (u->part == NGX_HTTP_CLOUDAUTH_PART_FILE) {
                ngx_http_cloudauth_upload_feed(u, mp->data, mp->len);

            } else if (u->part == NGX_HTTP_CLOUDAUTH_PART_FIELD) {
                rc = ngx_http_cloudauth_upload_field(u, mp->data, mp->len);
                if (rc != NGX_OK) {
                    *taken = p - start;
                    return rc;
                }
            }

            break;

        case NGX_CLOUDAUTH_MP_PART_END:

            if (u->part == NGX_HTTP_CLOUDAUTH_PART_FILE) {
                u->obj.eof = 1;
            }

            u->part = NGX_HTTP_CLOUDAUTH_PART_NONE;
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
        if (part->name.len + u->arena_len > NGX_HTTP_CLOUDAUTH_FIELDS_MAX
            || u->fields->nelts >= 64)
        {
            ngx_str_set(&u->reason, "form fields are too large");
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        if (u->arena == NULL) {
            u->arena = ngx_pnalloc(r->pool, NGX_HTTP_CLOUDAUTH_FIELDS_MAX);
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

        u->part = NGX_HTTP_CLOUDAUTH_PART_FIELD;

        return NGX_OK;
    }

    if (part->filename.len == 0) {
        /* an empty file input */
        u->part = NGX_HTTP_CLOUDAUTH_PART_SKIP;
        return NGX_OK;
    }

    if (u->files++ == NGX_HTTP_CLOUDAUTH_FILES_MAX) {
        ngx_str_set(&u->reason, "more than 1000 files in a form");
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    u->part = NGX_HTTP_CLOUDAUTH_PART_FILE;

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

    if (u->arena_len + len > NGX_HTTP_CLOUDAUTH_FIELDS_MAX) {
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
    u_char                       *p;
    size_t                        below;
    const char                   *err;
    ngx_str_t                     name, md5;
    ngx_http_request_t           *r;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_cloudauth_object_t  *obj;
    u_char                        raw[ngx_base64_decoded_length(24)];

    r = u->request;
    obj = &u->obj;

    ngx_memzero(obj, sizeof(ngx_http_cloudauth_object_t));
    obj->start = ngx_current_msec;
    obj->total = total;
    obj->nfields = u->fields ? u->fields->nelts : 0;

    ngx_http_cloudauth_upload_sanitize(r->pool, filename, &u->filename);

    if (u->conf->object) {
        if (ngx_http_complex_value(r, u->conf->object, &name) != NGX_OK) {
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

        name.data = r->uri.data + below;
        name.len = r->uri.len - below;

        if (u->multipart) {
            /* the form's URI is a "directory" for its files */

            p = ngx_pnalloc(r->pool, name.len + 1 + u->filename.len);
            if (p == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(p, name.data, name.len);
            below = name.len;

            if (below && p[below - 1] != '/') {
                p[below++] = '/';
            }

            ngx_memcpy(p + below, u->filename.data, u->filename.len);

            name.data = p;
            name.len = below + u->filename.len;
        }
    }

    err = ngx_http_cloudauth_upload_check_name(&name);

    if (err == NULL && !ngx_http_cloudauth_upload_utf8(content_type->data,
                                                       content_type->len))
    {
        err = "the content type is not UTF-8";
    }

    if (err) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: bad object name \"%V\": %s",
                      &name, err);
        u->reason.data = (u_char *) err;
        u->reason.len = ngx_strlen(err);
        return NGX_HTTP_BAD_REQUEST;
    }

    if (content_md5->len) {

        /*
         * 16 bytes are 22 base64 characters and "==": checked before
         * decoding, as 24 characters without padding decode to 18 bytes;
         * and decoded into a buffer with room for what 24 could become
         */

        if (content_md5->len != 24
            || content_md5->data[22] != '='
            || content_md5->data[23] != '=')
        {
            ngx_str_set(&u->reason, "Content-MD5 is not a base64 MD5");
            return NGX_HTTP_BAD_REQUEST;
        }

        md5.data = raw;

        if (ngx_decode_base64(&md5, content_md5) != NGX_OK || md5.len != 16) {
            ngx_str_set(&u->reason, "Content-MD5 is not a base64 MD5");
            return NGX_HTTP_BAD_REQUEST;
        }

        ngx_memcpy(obj->content_md5, raw, 16);
        obj->has_md5 = 1;
    }

    obj->name = name;
    obj->content_type = *content_type;

    /* MD5 costs more CPU than the rest of the upload together */

    if (u->conf->md5 || obj->has_md5) {
        obj->md5 = EVP_MD_CTX_new();
        if (obj->md5 == NULL
            || EVP_DigestInit_ex(obj->md5, EVP_md5(), NULL) != 1)
        {
            return NGX_ERROR;
        }
    }

    if (u->buf == NULL) {
        u->buf = ngx_http_cloudauth_upload_buf_alloc(u->conf->chunk_size,
                                                     r->connection->log);
        if (u->buf == NULL) {
            return NGX_ERROR;
        }
    }

    u->len = 0;
    obj->open = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: object \"%V\" size %O", &name, total);

    return NGX_OK;
}


void
ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u)
{
    if (u->obj.md5) {
        EVP_MD_CTX_free(u->obj.md5);
        u->obj.md5 = NULL;
    }

    u->obj.open = 0;
    u->obj.session.len = 0;
    u->len = 0;
}


/* what GCS request is due */

static ngx_int_t
ngx_http_cloudauth_upload_step(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t                     rc;
    ngx_http_cloudauth_object_t  *obj;

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

    if (obj->token && u->ask.expires_at
        && u->ask.expires_at - ngx_time() < NGX_HTTP_CLOUDAUTH_TOKEN_LEFT)
    {
        /* a long upload outlives its token: the cache has a newer one */
        obj->token = 0;
    }

    if (!obj->token) {
        u->ask.token.len = 0;

        rc = ngx_cloudauth_engine_get(&u->ask);

        if (rc == NGX_AGAIN) {
            return NGX_AGAIN;
        }

        if (rc != NGX_OK || u->ask.token.len == 0) {
            if (u->ask.reason.len == 0) {
                ngx_str_set(&u->ask.reason, "no token");
            }

            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                           (char *) u->ask.reason.data,
                                           u->ask.reason.len);
            return NGX_ERROR;
        }

        obj->token = 1;
    }

    if (obj->session.len == 0) {
        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_INIT);
    }

    if (u->requery) {
        u->requery = 0;
        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_QUERY);
    }

    if (obj->eof) {
        if (!obj->summed && obj->md5) {
            EVP_DigestFinal_ex(obj->md5, obj->md5_sum, NULL);
            obj->summed = 1;

            if (obj->has_md5
                && ngx_memcmp(obj->md5_sum, obj->content_md5, 16) != 0)
            {
                ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_REQUEST,
                                   "Content-MD5 does not match the body",
                                   sizeof("Content-MD5 does not match the "
                                          "body") - 1);
                return NGX_ERROR;
            }
        }

        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_FINAL);
    }

    if (u->len == u->conf->chunk_size) {
        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_CHUNK);
    }

    return NGX_DECLINED;
}


void
ngx_http_cloudauth_upload_token(ngx_cloudauth_ask_t *ask)
{
    ngx_connection_t             *c;
    ngx_http_cloudauth_upload_t  *u;

    u = ask->data;
    c = u->request->connection;

    if (ask->token.len == 0) {
        if (ask->reason.len == 0) {
            ngx_str_set(&ask->reason, "no token");
        }

        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                       (char *) ask->reason.data,
                                       ask->reason.len);

    } else {
        u->obj.token = 1;
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


void
ngx_http_cloudauth_upload_guard(ngx_event_t *ev)
{
    ngx_add_timer(ev, NGX_HTTP_CLOUDAUTH_GUARD);
}


/* the end: failure, cancellation, success */

void
ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len)
{
    ngx_int_t               rc;
    ngx_uint_t              level;
    ngx_http_request_t     *r;

    r = u->request;

    if (u->finished) {
        return;
    }

    u->finished = 1;

    if (reason == NULL) {
        reason = "internal error";
        len = sizeof("internal error") - 1;
    }

    if (u->status.len == 0 || ngx_strcmp(u->status.data, "aborted") != 0) {
        ngx_str_set(&u->status, "failed");
    }

    level = r->connection->error ? NGX_LOG_INFO : NGX_LOG_ERR;

    /* GCS's own words to the log, never to the client */

    ngx_log_error(level, r->connection->log, 0,
                  "cloudauth: upload of \"%V\" failed (%ui): %*s%s%V",
                  &u->obj.name, status, len, reason,
                  u->said.len ? "; GCS said: " : "", &u->said);

    ngx_http_cloudauth_upload_abort(u);

    if (r->connection->error || status == NGX_HTTP_REQUEST_TIME_OUT) {
        ngx_http_finalize_request(r, status);
        return;
    }

    rc = ngx_http_cloudauth_upload_reject(r, &u->cors_origin, status, reason,
                                          len);

    ngx_http_finalize_request(r, rc);
}


/* stops everything under way, cancels the session, counts a failure */

static void
ngx_http_cloudauth_upload_abort(ngx_http_cloudauth_upload_t *u)
{
    ngx_cloudauth_stats_t  *st;

    ngx_cloudauth_engine_cancel(&u->ask);

    if (u->fetch) {
        ngx_cloudauth_fetch_free(u->fetch);
        u->fetch = NULL;
        u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
    }

    if (u->retry.timer_set) {
        ngx_del_timer(&u->retry);
    }

    if (u->stall.timer_set) {
        ngx_del_timer(&u->stall);
    }

    if (u->guard.timer_set) {
        ngx_del_timer(&u->guard);
    }

    if (u->obj.open && u->obj.session.len) {
        ngx_http_cloudauth_upload_cancel(u);
    }

    ngx_http_cloudauth_upload_close(u);

    if (u->active) {
        u->active = 0;

        st = ngx_cloudauth_cache_stats(u->ask.cred->conf->shm_zone);
        if (st) {
            (void) ngx_atomic_fetch_add(&st->uploads_active, -1);
            (void) ngx_atomic_fetch_add(&st->uploads_failed, 1);
        }
    }
}


static void
ngx_http_cloudauth_upload_finish(ngx_http_cloudauth_upload_t *u)
{
    json_t                 *body;
    ngx_int_t               rc;
    ngx_http_request_t     *r;
    ngx_cloudauth_stats_t  *st;

    r = u->request;

    if (u->objects == 0) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_REQUEST,
                                       "the form has no file",
                                       sizeof("the form has no file") - 1);
        return;
    }

    u->finished = 1;
    ngx_str_set(&u->status, "stored");

    if (u->guard.timer_set) {
        ngx_del_timer(&u->guard);
    }

    if (u->active) {
        u->active = 0;

        st = ngx_cloudauth_cache_stats(u->ask.cred->conf->shm_zone);
        if (st) {
            (void) ngx_atomic_fetch_add(&st->uploads_active, -1);
            (void) ngx_atomic_fetch_add(&st->uploads_completed, 1);
        }
    }

    body = u->multipart ? u->results : json_array_get(u->results, 0);

    rc = ngx_http_cloudauth_upload_respond(r, &u->cors_origin,
                                           NGX_HTTP_CREATED, body);

    ngx_http_finalize_request(r, rc);
}


void
ngx_http_cloudauth_upload_cleanup(void *data)
{
    ngx_http_cloudauth_upload_t  *u = data;

    if (!u->finished) {
        /* the client went away: nothing half-written stays */
        ngx_str_set(&u->status, "aborted");
    }

    ngx_http_cloudauth_upload_abort(u);

    if (u->buf) {
        ngx_http_cloudauth_upload_buf_free(u->buf, u->conf->chunk_size,
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
 */

u_char *
ngx_http_cloudauth_upload_buf_alloc(size_t size, ngx_log_t *log)
{
    u_char  *p;

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
ngx_http_cloudauth_upload_buf_free(u_char *buf, size_t size, ngx_log_t *log)
{
    if (munmap(buf, size) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "cloudauth: munmap() of an upload buffer failed");
    }
}
