
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The GCS resumable-session client.  One request at a time per session:
 * the start (POST, the metadata), chunks and the final request (PUT with
 * Content-Range, the last one with X-Goog-Hash), status queries after a
 * failure (with back-off) and the cancellation (DELETE).  Answers are
 * checked against what was sent.  The caller's bytes are read in place
 * and kept by the caller until the progress handler says GCS holds them.
 */


#include "ngx_cloudauth_gcs.h"
#include "ngx_cloudauth.h"


static ngx_int_t ngx_cloudauth_gcs_session_op(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_gcs_req_e op);
static ngx_int_t ngx_cloudauth_gcs_run(ngx_cloudauth_gcs_t *s);
static void ngx_cloudauth_gcs_token(ngx_cloudauth_ask_t *ask);
static ngx_int_t ngx_cloudauth_gcs_request(ngx_cloudauth_gcs_t *s);
static ngx_int_t ngx_cloudauth_gcs_start_body(ngx_cloudauth_gcs_t *s,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req);
static ngx_int_t ngx_cloudauth_gcs_final_headers(ngx_cloudauth_gcs_t *s,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req);
static ssize_t ngx_cloudauth_gcs_read(ngx_cloudauth_fetch_t *f, u_char *buf,
    size_t size);
static void ngx_cloudauth_gcs_header(ngx_cloudauth_fetch_t *f, u_char *line,
    size_t len);
static void ngx_cloudauth_gcs_answered(ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_gcs_answer(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_fetch_t *f, ngx_cloudauth_gcs_req_e req);
static ngx_int_t ngx_cloudauth_gcs_session(ngx_cloudauth_gcs_t *s);
static void ngx_cloudauth_gcs_ack(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_fetch_t *f, ngx_cloudauth_gcs_req_e req);
static void ngx_cloudauth_gcs_stored(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_gcs_backoff(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_fetch_t *f, ngx_cloudauth_gcs_req_e next);
static void ngx_cloudauth_gcs_retry(ngx_event_t *ev);
static void ngx_cloudauth_gcs_stall(ngx_event_t *ev);
static void ngx_cloudauth_gcs_refused(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_fetch_t *f, ngx_uint_t status, const char *what);
static void ngx_cloudauth_gcs_note(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_gcs_fail(ngx_cloudauth_gcs_t *s,
    ngx_uint_t status, const char *reason, size_t len);
static void ngx_cloudauth_gcs_cancelled(ngx_cloudauth_fetch_t *f);


/* ev->data of the timers: shaped like a connection for the debug log */
static ngx_connection_t  ngx_cloudauth_gcs_conn;


/* the session's life: what the caller asks */

ngx_cloudauth_gcs_t *
ngx_cloudauth_gcs_create(ngx_pool_t *pool, ngx_log_t *log,
    ngx_cloudauth_gcs_conf_t *conf, ngx_cloudauth_gcs_object_t *object,
    ngx_cloudauth_gcs_handlers_t *h)
{
    ngx_cloudauth_gcs_t  *s;

    s = ngx_pcalloc(pool, sizeof(ngx_cloudauth_gcs_t));
    if (s == NULL) {
        return NULL;
    }

    ngx_cloudauth_gcs_conn.fd = (ngx_socket_t) -1;

    s->conf = conf;
    s->object = *object;
    s->handlers = *h;

    if (s->object.shown.data == NULL
        && ngx_cloudauth_gcs_shown(pool, &object->name, &s->object.shown)
           != NGX_OK)
    {
        return NULL;
    }
    s->pool = pool;
    s->log = log;
    s->range = -1;
    s->start = ngx_current_msec;

    s->retry.handler = ngx_cloudauth_gcs_retry;
    s->retry.data = &ngx_cloudauth_gcs_conn;
    s->retry.log = log;
    s->stall.handler = ngx_cloudauth_gcs_stall;
    s->stall.data = &ngx_cloudauth_gcs_conn;
    s->stall.log = log;

    s->ask.cred = conf->cred;
    s->ask.subject = conf->subject;
    s->ask.pool = pool;
    s->ask.log = log;
    s->ask.handler = ngx_cloudauth_gcs_token;
    s->ask.data = s;

    return s;
}


/*
 * Each of these starts an operation and returns NGX_OK: one of the
 * handlers follows.  NGX_ERROR: the failed handler has run already.
 */

ngx_int_t
ngx_cloudauth_gcs_start(ngx_cloudauth_gcs_t *s)
{
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "cloudauth: gcs: starting a session for \"%V\" size %O",
                   &s->object.shown, s->object.size);

    s->op = NGX_CLOUDAUTH_GCS_START;
    s->req = NGX_CLOUDAUTH_GCS_START;

    return ngx_cloudauth_gcs_run(s);
}


/*
 * A session from before (a resumable upload's): its URI is checked like
 * the one GCS gives at the start.  NGX_OK; NGX_DECLINED: not on the
 * endpoint's origin (logged); NGX_ERROR.  No handler runs: query() or
 * terminate() follows.
 */

ngx_int_t
ngx_cloudauth_gcs_attach(ngx_cloudauth_gcs_t *s, ngx_str_t *uri)
{
    ngx_int_t  rc;

    s->location.data = ngx_pnalloc(s->pool, uri->len + 1);
    if (s->location.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s->location.data, uri->data, uri->len);
    s->location.data[uri->len] = '\0';
    s->location.len = uri->len;

    rc = ngx_cloudauth_gcs_session(s);
    if (rc != NGX_OK) {
        return rc;
    }

    s->uri = s->location;
    s->offset = 0;

    return NGX_OK;
}


/*
 * What GCS holds: progress, or done if the object is stored.  Or the
 * session is cancelled (DELETE): done with NULL.  Either may fail.
 */

ngx_int_t
ngx_cloudauth_gcs_query(ngx_cloudauth_gcs_t *s)
{
    return ngx_cloudauth_gcs_session_op(s, NGX_CLOUDAUTH_GCS_QUERY);
}


ngx_int_t
ngx_cloudauth_gcs_terminate(ngx_cloudauth_gcs_t *s)
{
    return ngx_cloudauth_gcs_session_op(s, NGX_CLOUDAUTH_GCS_DELETE);
}


static ngx_int_t
ngx_cloudauth_gcs_session_op(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_gcs_req_e op)
{
    if (s->uri.len == 0) {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
        return NGX_ERROR;
    }

    s->op = op;
    s->req = op;

    return ngx_cloudauth_gcs_run(s);
}


/* a PUT of bytes from offset, which must be where GCS holds up to */

static ngx_int_t
ngx_cloudauth_gcs_put(ngx_cloudauth_gcs_t *s, ngx_uint_t op, off_t offset,
    u_char *data, size_t len)
{
    if (offset != s->offset || s->uri.len == 0) {
        ngx_log_error(NGX_LOG_ALERT, s->log, 0,
                      "cloudauth: gcs: bytes from %O sent, GCS holds %O",
                      offset, s->offset);
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
        return NGX_ERROR;
    }

    s->op = op;
    s->req = op;
    s->data = data;
    s->len = len;

    return ngx_cloudauth_gcs_run(s);
}


/* bytes [offset, offset + len), a multiple of 256 KiB, not the last */

ngx_int_t
ngx_cloudauth_gcs_send(ngx_cloudauth_gcs_t *s, off_t offset, u_char *data,
    size_t len)
{
    return ngx_cloudauth_gcs_put(s, NGX_CLOUDAUTH_GCS_CHUNK, offset, data,
                                 len);
}


/* the last bytes (maybe none), the total, and the hashes */

ngx_int_t
ngx_cloudauth_gcs_finish(ngx_cloudauth_gcs_t *s, off_t offset, u_char *data,
    size_t len, ngx_cloudauth_gcs_hash_t *hash)
{
    s->hash = *hash;

    return ngx_cloudauth_gcs_put(s, NGX_CLOUDAUTH_GCS_FINAL, offset, data,
                                 len);
}


/* an operation is under way: its handler has not run yet */

ngx_uint_t
ngx_cloudauth_gcs_busy(ngx_cloudauth_gcs_t *s)
{
    return s->op != NGX_CLOUDAUTH_GCS_NONE;
}


/* stops whatever is under way; the session stays */

void
ngx_cloudauth_gcs_abort(ngx_cloudauth_gcs_t *s)
{
    ngx_cloudauth_engine_cancel(&s->ask);

    if (s->fetch) {
        ngx_cloudauth_fetch_free(s->fetch);
        s->fetch = NULL;
    }

    if (s->retry.timer_set) {
        ngx_del_timer(&s->retry);
    }

    if (s->stall.timer_set) {
        ngx_del_timer(&s->stall);
    }

    s->op = NGX_CLOUDAUTH_GCS_NONE;
    s->req = NGX_CLOUDAUTH_GCS_NONE;
}


/* DELETE on the session URI: GCS drops what it has; nobody waits for it */

void
ngx_cloudauth_gcs_cancel(ngx_cloudauth_gcs_t *s)
{
    ngx_pool_t               *pool;
    ngx_cloudauth_fetch_t    *f;
    ngx_cloudauth_request_t   req;

    ngx_cloudauth_gcs_abort(s);

    if (s->uri.len == 0) {
        return;
    }

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return;
    }

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.url = s->uri;
    ngx_str_set(&req.method, "DELETE");

    if (ngx_cloudauth_header_printf(pool, &req, "Authorization: Bearer %V",
                                    &s->ask.token)
        == NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, s->log, 0,
                      "cloudauth: upload: cancelling the session of \"%V\"",
                      &s->object.shown);

        f = ngx_cloudauth_fetch_stream(&req, -1, NULL, NULL, NULL,
                                       ngx_cloudauth_gcs_cancelled,
                                       NULL, ngx_cycle->log);
        if (f == NULL) {
            ngx_log_error(NGX_LOG_ERR, s->log, 0,
                          "cloudauth: upload: cannot cancel the session");
        }
    }

    s->uri.len = 0;

    ngx_destroy_pool(pool);
}


static void
ngx_cloudauth_gcs_cancelled(ngx_cloudauth_fetch_t *f)
{
    ngx_uint_t  level;

    /* GCS answers 499 to a cancellation */

    level = (f->status == 499 || f->status == 204 || f->status == 200)
            ? NGX_LOG_INFO : NGX_LOG_WARN;

    ngx_log_error(level, f->log, 0,
                  "cloudauth: upload: session cancelled: %l %s", f->status,
                  f->status ? "" : f->errbuf);

    ngx_cloudauth_fetch_free(f);
}


/* the token first: a long upload outlives one, the cache has a newer */

static ngx_int_t
ngx_cloudauth_gcs_run(ngx_cloudauth_gcs_t *s)
{
    ngx_int_t  rc;

    if (s->token && s->ask.expires_at
        && s->ask.expires_at - ngx_time() < NGX_CLOUDAUTH_GCS_TOKEN_LEFT)
    {
        s->token = 0;
    }

    if (!s->token) {
        s->ask.token.len = 0;

        rc = ngx_cloudauth_engine_get(&s->ask);

        if (rc == NGX_AGAIN) {
            return NGX_OK;
        }

        if (rc != NGX_OK || s->ask.token.len == 0) {
            if (s->ask.reason.len == 0) {
                ngx_str_set(&s->ask.reason, "no token");
            }

            ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                                   (char *) s->ask.reason.data,
                                   s->ask.reason.len);
            return NGX_ERROR;
        }

        s->token = 1;
    }

    return ngx_cloudauth_gcs_request(s);
}


static void
ngx_cloudauth_gcs_token(ngx_cloudauth_ask_t *ask)
{
    ngx_cloudauth_gcs_t  *s = ask->data;

    if (ask->token.len == 0) {
        if (ask->reason.len == 0) {
            ngx_str_set(&ask->reason, "no token");
        }

        ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                               (char *) ask->reason.data, ask->reason.len);
        return;
    }

    s->token = 1;

    (void) ngx_cloudauth_gcs_request(s);
}


/* the request s->req: a scratch pool each, curl keeps copies */

static ngx_int_t
ngx_cloudauth_gcs_request(ngx_cloudauth_gcs_t *s)
{
    off_t                     length, end;
    ngx_int_t                 rc;
    ngx_pool_t               *pool;
    ngx_cloudauth_request_t   req;

    pool = ngx_create_pool(2048, s->log);
    if (pool == NULL) {
        goto failed;
    }

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    if (ngx_cloudauth_header_printf(pool, &req, "Authorization: Bearer %V",
                                    &s->ask.token)
        != NGX_OK)
    {
        goto failed;
    }

    length = -1;
    end = s->offset + (off_t) s->len;
    req.url = s->uri;
    ngx_str_set(&req.method, "PUT");

    switch (s->req) {

    case NGX_CLOUDAUTH_GCS_START:
        rc = ngx_cloudauth_gcs_start_body(s, pool, &req);
        break;

    case NGX_CLOUDAUTH_GCS_DELETE:
        ngx_str_set(&req.method, "DELETE");
        rc = NGX_OK;

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->log, 0,
                       "cloudauth: gcs: terminate \"%V\"", &s->object.shown);
        break;

    case NGX_CLOUDAUTH_GCS_QUERY:
        length = 0;
        rc = ngx_cloudauth_header_printf(pool, &req,
                                         "Content-Range: bytes */*");

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->log, 0,
                       "cloudauth: gcs: query \"%V\"", &s->object.shown);
        break;

    case NGX_CLOUDAUTH_GCS_CHUNK:
        length = (off_t) s->len;
        rc = ngx_cloudauth_header_printf(pool, &req,
                                         "Content-Range: bytes %O-%O/*",
                                         s->offset, end - 1);

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, s->log, 0,
                       "cloudauth: gcs: chunk %O-%O of \"%V\"",
                       s->offset, end - 1, &s->object.shown);
        break;

    default: /* NGX_CLOUDAUTH_GCS_FINAL */
        length = (off_t) s->len;
        rc = ngx_cloudauth_gcs_final_headers(s, pool, &req);

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, s->log, 0,
                       "cloudauth: gcs: finish at %O from %O of \"%V\"",
                       end, s->offset, &s->object.shown);
        break;
    }

    if (rc != NGX_OK) {
        goto failed;
    }

    s->sent = 0;
    s->range = -1;
    ngx_str_null(&s->location);

    s->fetch = ngx_cloudauth_fetch_stream(&req, length, ngx_cloudauth_gcs_read,
                                          NULL, ngx_cloudauth_gcs_header,
                                          ngx_cloudauth_gcs_answered, s,
                                          s->log);

    ngx_destroy_pool(pool);
    pool = NULL;

    if (s->fetch == NULL) {
        goto failed;
    }

    /* no byte moved for cloudauth_timeout: given up (and resumed) */
    s->moved = 0;
    s->moved_at = ngx_current_msec;
    s->asked_at = ngx_current_msec;
    ngx_add_timer(&s->stall, s->ask.cred->conf->timeout / 4 + 1);

    return NGX_OK;

failed:

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);

    return NGX_ERROR;
}


/* POST .../b/BUCKET/o?uploadType=resumable&name=NAME with the metadata */

static ngx_int_t
ngx_cloudauth_gcs_start_body(ngx_cloudauth_gcs_t *s, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req)
{
    u_char                      *p;
    size_t                       len;
    char                        *str;
    json_t                      *body, *meta;
    ngx_uint_t                   i;
    ngx_keyval_t                *kv;
    ngx_cloudauth_gcs_conf_t    *conf;
    ngx_cloudauth_gcs_object_t  *obj;

    conf = s->conf;
    obj = &s->object;

    len = conf->endpoint.len + sizeof("/upload/storage/v1/b//o"
                                      "?uploadType=resumable&name="
                                      "&ifGenerationMatch=0")
          + ngx_cloudauth_form_escape_len(&conf->bucket)
          + ngx_cloudauth_form_escape_len(&obj->name);

    req->url.data = ngx_pnalloc(pool, len);
    if (req->url.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(req->url.data, conf->endpoint.data, conf->endpoint.len);
    p = ngx_cpymem(p, "/upload/storage/v1/b/",
                   sizeof("/upload/storage/v1/b/") - 1);
    p = ngx_cloudauth_form_escape(p, &conf->bucket);
    p = ngx_cpymem(p, "/o?uploadType=resumable&name=",
                   sizeof("/o?uploadType=resumable&name=") - 1);
    p = ngx_cloudauth_form_escape(p, &obj->name);

    if (!conf->overwrite) {
        p = ngx_cpymem(p, "&ifGenerationMatch=0",
                       sizeof("&ifGenerationMatch=0") - 1);
    }

    *p = '\0';
    req->url.len = p - req->url.data;

    ngx_str_set(&req->method, "POST");

    body = json_object();
    if (body == NULL) {
        return NGX_ERROR;
    }

    json_object_set_new(body, "name",
                        json_stringn((char *) obj->name.data, obj->name.len));
    json_object_set_new(body, "contentType",
                        json_stringn((char *) obj->content_type.data,
                                     obj->content_type.len));

    if (obj->nmetadata) {
        meta = json_object();
        kv = obj->metadata->elts;

        for (i = 0; meta && i < obj->nmetadata; i++) {
            str = ngx_cloudauth_copy_cstr(pool, &kv[i].key);
            if (str == NULL) {
                json_decref(meta);
                json_decref(body);
                return NGX_ERROR;
            }

            /* json_stringn() is NULL for bytes that are not UTF-8 */
            json_object_set_new(meta, str,
                                json_stringn((char *) kv[i].value.data,
                                             kv[i].value.len));
        }

        json_object_set_new(body, "metadata", meta);
    }

    str = json_dumps(body, JSON_COMPACT);
    json_decref(body);

    if (str == NULL) {
        return NGX_ERROR;
    }

    req->body.len = ngx_strlen(str);
    req->body.data = ngx_pnalloc(pool, req->body.len);
    if (req->body.data == NULL) {
        free(str);
        return NGX_ERROR;
    }

    ngx_memcpy(req->body.data, str, req->body.len);
    free(str);

    if (ngx_cloudauth_header_printf(pool, req,
                             "Content-Type: application/json; charset=UTF-8")
        != NGX_OK
        || ngx_cloudauth_header_printf(pool, req,
                             "X-Upload-Content-Type: %V", &obj->content_type)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (obj->size >= 0
        && ngx_cloudauth_header_printf(pool, req,
                                       "X-Upload-Content-Length: %O",
                                       obj->size)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* Content-Range with the total, and X-Goog-Hash */

static ngx_int_t
ngx_cloudauth_gcs_final_headers(ngx_cloudauth_gcs_t *s, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req)
{
    off_t      end;
    ngx_int_t  rc;
    ngx_str_t  crc, md5, raw;
    u_char     crcbuf[8], md5buf[32];

    end = s->offset + (off_t) s->len;

    if (s->len) {
        rc = ngx_cloudauth_header_printf(pool, req,
                                         "Content-Range: bytes %O-%O/%O",
                                         s->offset, end - 1, end);

    } else {
        rc = ngx_cloudauth_header_printf(pool, req,
                                         "Content-Range: bytes */%O", end);
    }

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    if (s->hash.no_crc32c) {
        /* bytes sent by other requests: GCS's own sums stand */
        return NGX_OK;
    }

    crc.data = crcbuf;
    ngx_cloudauth_gcs_crc32c_base64(s->hash.crc32c, &crc);

    if (!s->hash.has_md5) {
        return ngx_cloudauth_header_printf(pool, req,
                                           "X-Goog-Hash: crc32c=%V", &crc);
    }

    raw.data = s->hash.md5;
    raw.len = 16;
    md5.data = md5buf;
    ngx_encode_base64(&md5, &raw);

    return ngx_cloudauth_header_printf(pool, req,
                                       "X-Goog-Hash: crc32c=%V,md5=%V",
                                       &crc, &md5);
}


static ssize_t
ngx_cloudauth_gcs_read(ngx_cloudauth_fetch_t *f, u_char *buf, size_t size)
{
    ngx_cloudauth_gcs_t  *s = f->data;

    size_t  n;

    n = ngx_min(size, s->len - s->sent);

    ngx_memcpy(buf, s->data + s->sent, n);
    s->sent += n;

    return n;
}


static void
ngx_cloudauth_gcs_header(ngx_cloudauth_fetch_t *f, u_char *line, size_t len)
{
    ngx_cloudauth_gcs_t  *s = f->data;

    u_char  *p, *last;

    last = line + len;

    if (len > 5 && ngx_strncmp(line, "HTTP/", 5) == 0) {
        /* a new answer (after a 100 Continue, say) */
        s->range = -1;
        ngx_str_null(&s->location);
        return;
    }

    if (len > 9 && ngx_strncasecmp(line, (u_char *) "location:", 9) == 0
        && s->req == NGX_CLOUDAUTH_GCS_START)
    {
        for (p = line + 9; p < last && *p == ' '; p++) { /* void */ }

        s->location.len = last - p;
        s->location.data = ngx_pnalloc(s->pool, s->location.len + 1);
        if (s->location.data == NULL) {
            s->location.len = 0;
            return;
        }

        ngx_memcpy(s->location.data, p, s->location.len);
        s->location.data[s->location.len] = '\0';

        return;
    }

    if (len > 6 && ngx_strncasecmp(line, (u_char *) "range:", 6) == 0) {
        for (p = line + 6; p < last && *p == ' '; p++) { /* void */ }

        if (ngx_cloudauth_gcs_parse_range(p, last - p, &s->range) != NGX_OK) {
            s->range = -2;
        }
    }
}


static void
ngx_cloudauth_gcs_answered(ngx_cloudauth_fetch_t *f)
{
    ngx_cloudauth_gcs_t  *s = f->data;

    ngx_cloudauth_gcs_req_e  req;

    req = s->req;
    s->req = NGX_CLOUDAUTH_GCS_NONE;
    s->fetch = NULL;

    if (s->stall.timer_set) {
        ngx_del_timer(&s->stall);
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "cloudauth: gcs: request %d answered %l in %M ms: %s",
                   req, f->status, f->duration, f->errbuf);

    /* the handlers may end the session: f is ours, s is not */

    ngx_cloudauth_gcs_answer(s, f, req);

    ngx_cloudauth_fetch_free(f);
}


static ngx_uint_t
ngx_cloudauth_gcs_retryable(long status)
{
    return status == 0 || status == 408 || status == 429 || status >= 500;
}


static void
ngx_cloudauth_gcs_answer(ngx_cloudauth_gcs_t *s, ngx_cloudauth_fetch_t *f,
    ngx_cloudauth_gcs_req_e req)
{
    ngx_int_t  rc;

    if (f->status == 401 && !s->reauth) {

        /*
         * the token lapsed or was revoked: drop it, get another, and do
         * the request again (once); GCS took nothing of a refused chunk
         */

        ngx_log_error(NGX_LOG_WARN, s->log, 0,
                      "cloudauth: upload: GCS answered 401, "
                      "retrying with a new token");

        ngx_cloudauth_engine_invalidate(s->ask.cred, &s->ask.subject,
                                 &s->ask.token, s->log);

        s->reauth = 1;
        s->token = 0;
        s->req = req;

        (void) ngx_cloudauth_gcs_run(s);
        return;
    }

    if (ngx_cloudauth_gcs_retryable(f->status)) {
        ngx_cloudauth_gcs_backoff(s, f, (req == NGX_CLOUDAUTH_GCS_START
                                         || req == NGX_CLOUDAUTH_GCS_DELETE)
                                        ? req : NGX_CLOUDAUTH_GCS_QUERY);
        return;
    }

    /* GCS answers a cancellation 499, and everything after it too */

    if (req == NGX_CLOUDAUTH_GCS_DELETE
        && (f->status == 499 || f->status == 200 || f->status == 204))
    {
        s->uri.len = 0;
        s->op = NGX_CLOUDAUTH_GCS_NONE;
        s->handlers.done(s, NULL);
        return;
    }

    if (req != NGX_CLOUDAUTH_GCS_START
        && (f->status == 404 || f->status == 410 || f->status == 499))
    {
        s->uri.len = 0;   /* gone: nothing to cancel */
        s->why = NGX_CLOUDAUTH_GCS_GONE;
        ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                  "the upload session is gone");
        return;
    }

    if (req == NGX_CLOUDAUTH_GCS_DELETE) {
        ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                  "GCS refused to cancel the session");
        return;
    }

    if (req == NGX_CLOUDAUTH_GCS_START) {

        if (f->status == 200 || f->status == 201) {
            rc = ngx_cloudauth_gcs_session(s);

            if (rc == NGX_ERROR) {
                ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       NULL, 0);
                return;
            }

            if (rc != NGX_OK) {
                ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                   "GCS gave no session URI at the endpoint");
                return;
            }

            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->log, 0,
                           "cloudauth: gcs: session started for \"%V\"",
                           &s->object.shown);

            s->uri = s->location;
            s->offset = 0;
            s->fail_start = 0;
            s->reauth = 0;
            s->attempts = 0;
            s->op = NGX_CLOUDAUTH_GCS_NONE;

            s->handlers.progress(s, 0);
            return;
        }

        if (f->status == 412) {
            ngx_cloudauth_gcs_fail(s, NGX_HTTP_CONFLICT,
                                   "the object exists (overwrite=off)",
                                   sizeof("the object exists "
                                          "(overwrite=off)") - 1);
            return;
        }

        if (f->status == 401) {
            ngx_cloudauth_engine_invalidate(s->ask.cred, &s->ask.subject,
                                     &s->ask.token, s->log);
        }

        ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                  "GCS refused the upload");
        return;
    }

    if (f->status == 308) {
        ngx_cloudauth_gcs_ack(s, f, req);
        return;
    }

    if (f->status == 200 || f->status == 201) {
        if (s->probing) {
            /* another request finished the object */
            s->probing = 0;
            s->why = NGX_CLOUDAUTH_GCS_COMPLETE;
            ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                                   "GCS holds the object already",
                                   sizeof("GCS holds the object already")
                                   - 1);
            return;
        }

        if (req == NGX_CLOUDAUTH_GCS_CHUNK
            || s->op == NGX_CLOUDAUTH_GCS_CHUNK)
        {
            /* a session of many requests: one of the others finished it */
            s->why = NGX_CLOUDAUTH_GCS_COMPLETE;
            ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                      "GCS finished the object early");
            return;
        }

        ngx_cloudauth_gcs_stored(s, f);
        return;
    }

    if (f->status == 412) {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_CONFLICT,
                               "the object exists (overwrite=off)",
                               sizeof("the object exists (overwrite=off)")
                               - 1);
        return;
    }

    if (f->status == 400 && !s->probing) {

        /*
         * another request's bytes first (a resumable upload)?  What GCS
         * holds says: the same as before, the 400 stands; more, the upload
         * moved on
         */

        ngx_cloudauth_gcs_note(s, f);
        s->probing = 1;
        s->req = NGX_CLOUDAUTH_GCS_QUERY;

        (void) ngx_cloudauth_gcs_run(s);
        return;
    }

    ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                              "GCS refused a chunk");
}


/*
 * The session URI GCS gave stays on the endpoint's origin: scheme, host and
 * port as libcurl, which will connect to it, reads them, and no user
 * information.  NGX_DECLINED: it does not; the URI itself is never logged.
 */

static ngx_int_t
ngx_cloudauth_gcs_session(ngx_cloudauth_gcs_t *s)
{
    ngx_int_t                    rc;
    ngx_cloudauth_gcs_origin_t   got, *want;

    want = &s->conf->origin;

    if (s->location.len == 0) {
        ngx_log_error(NGX_LOG_ERR, s->log, 0,
                      "cloudauth: upload: GCS answered the session start "
                      "without a Location");
        return NGX_DECLINED;
    }

    if (ngx_strlen(s->location.data) != s->location.len) {
        ngx_log_error(NGX_LOG_ERR, s->log, 0,
                      "cloudauth: upload: GCS gave a session URI with a NUL");
        return NGX_DECLINED;
    }

    rc = ngx_cloudauth_gcs_parse_origin(s->pool, s->location.data, &got);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, s->log, 0,
                      "cloudauth: upload: GCS gave a session URI that is not "
                      "an absolute URL without user information");
        return NGX_DECLINED;
    }

    if (!ngx_cloudauth_gcs_same_origin(&got, want)) {

        /* the origin only: the rest of the URI is the session's secret */

        ngx_log_error(NGX_LOG_ERR, s->log, 0,
                      "cloudauth: upload: GCS gave a session URI on "
                      "%V://%V:%V, not on the endpoint's %V://%V:%V",
                      &got.scheme, &got.host, &got.port, &want->scheme,
                      &want->host, &want->port);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * A 308: GCS holds bytes [0, range].  A chunk or the final request that
 * made no progress is retried after a back-off, not at once and forever.
 */

static void
ngx_cloudauth_gcs_ack(ngx_cloudauth_gcs_t *s, ngx_cloudauth_fetch_t *f,
    ngx_cloudauth_gcs_req_e req)
{
    off_t  committed, last;

    if (s->range == -2) {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                               "GCS sent a malformed Range",
                               sizeof("GCS sent a malformed Range") - 1);
        return;
    }

    committed = s->range + 1;

    if (s->probing) {
        s->probing = 0;

        if (committed == s->offset) {
            ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                                   "GCS refused a chunk (HTTP 400)",
                                   sizeof("GCS refused a chunk (HTTP 400)")
                                   - 1);
            return;
        }

        s->why = NGX_CLOUDAUTH_GCS_CONFLICT;
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                               "GCS holds other bytes than ours",
                               sizeof("GCS holds other bytes than ours")
                               - 1);
        return;
    }

    /* after a query GCS may hold anything we sent; else at most this */
    last = (s->op == NGX_CLOUDAUTH_GCS_QUERY) ? committed
                                               : s->offset + (off_t) s->len;

    if (committed < s->offset || committed > last) {
        s->why = NGX_CLOUDAUTH_GCS_CONFLICT;

        ngx_log_error(NGX_LOG_ERR, s->log, 0,
                      "cloudauth: upload: GCS reports %O bytes, we have "
                      "%O to %O", committed, s->offset, last);

        ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                               "GCS reports a range we cannot resume",
                               sizeof("GCS reports a range we cannot "
                                      "resume") - 1);
        return;
    }

    if (committed > s->offset) {
        s->offset = committed;
        s->fail_start = 0;
        s->reauth = 0;
        s->attempts = 0;

    } else if (req != NGX_CLOUDAUTH_GCS_QUERY
               && (s->len || req == NGX_CLOUDAUTH_GCS_FINAL))
    {
        ngx_cloudauth_gcs_backoff(s, f, NGX_CLOUDAUTH_GCS_QUERY);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "cloudauth: gcs: GCS holds %O bytes of \"%V\"",
                   s->offset, &s->object.shown);

    s->op = NGX_CLOUDAUTH_GCS_NONE;

    s->handlers.progress(s, s->offset);
}


/* the final answer: what GCS stored is what was sent */

static void
ngx_cloudauth_gcs_stored(ngx_cloudauth_gcs_t *s, ngx_cloudauth_fetch_t *f)
{
    u_char                      *p;
    off_t                        size;
    size_t                       len;
    json_t                      *res;
    ngx_int_t                    rc;
    ngx_str_t                    crc, md5, raw, url, said, said2, *ctype;
    ngx_uint_t                   i;
    ngx_cloudauth_gcs_conf_t    *conf;
    ngx_cloudauth_gcs_stored_t   st;
    u_char                       crcbuf[8], md5buf[32];

    conf = s->conf;

    rc = ngx_cloudauth_gcs_parse_object(s->pool, f->body, f->body_len, &st);

    if (rc == NGX_ERROR) {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
        return;
    }

    if (rc != NGX_OK) {
        ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                "GCS answered without the object's metadata");
        return;
    }

    size = st.size;
    md5 = st.md5;

    if (md5.data == NULL) {
        /* GCS computes none for composite objects, nor some emulators */
        ngx_str_set(&md5, "");
    }
    ctype = s->object.content_type.len ? &s->object.content_type
                                       : &st.content_type;

    if (s->op == NGX_CLOUDAUTH_GCS_FINAL) {
        size = s->offset + (off_t) s->len;

        crc.data = crcbuf;
        ngx_cloudauth_gcs_crc32c_base64(s->hash.crc32c, &crc);

        if (s->hash.no_crc32c) {
            crc = st.crc32c;
        }

        if (st.crc32c.len != crc.len
            || ngx_strncmp(st.crc32c.data, crc.data, crc.len) != 0
            || st.size != size
            || st.name.len != s->object.name.len
            || ngx_strncmp(st.name.data, s->object.name.data, st.name.len)
               != 0)
        {
            /* GCS's words go to the log printable only */

            said.data = ngx_pnalloc(s->pool,
                                    2 * (4 * NGX_CLOUDAUTH_GCS_SAID_MAX + 3));
            if (said.data == NULL) {
                ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       NULL, 0);
                return;
            }

            said.len = ngx_cloudauth_gcs_printable(said.data,
                                          4 * NGX_CLOUDAUTH_GCS_SAID_MAX,
                                          st.name.data, st.name.len);
            said2.data = said.data + 4 * NGX_CLOUDAUTH_GCS_SAID_MAX + 3;
            said2.len = ngx_cloudauth_gcs_printable(said2.data,
                                          4 * NGX_CLOUDAUTH_GCS_SAID_MAX,
                                          st.crc32c.data, st.crc32c.len);

            ngx_log_error(NGX_LOG_ERR, s->log, 0,
                          "cloudauth: upload: GCS stored \"%V\", %O bytes, "
                          "crc32c %V; we sent \"%V\", %O bytes, crc32c %V",
                          &said, st.size, &said2, &s->object.shown,
                          size, &crc);
            ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                                   "GCS stored other bytes than were sent",
                                   sizeof("GCS stored other bytes than were "
                                          "sent") - 1);
            return;
        }

        if (s->hash.has_md5) {
            raw.data = s->hash.md5;
            raw.len = 16;
            md5.data = md5buf;
            ngx_encode_base64(&md5, &raw);

            if (st.md5.len
                && (st.md5.len != md5.len
                    || ngx_strncmp(st.md5.data, md5.data, md5.len) != 0))
            {
                ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                               "GCS stored other bytes than were sent (MD5)",
                               sizeof("GCS stored other bytes than were "
                                      "sent (MD5)") - 1);
                return;
            }
        }
    }

    /* the generation goes into the log and the client's answer: digits */

    for (i = 0; i < st.generation.len; i++) {
        if (st.generation.data[i] < '0' || st.generation.data[i] > '9') {
            break;
        }
    }

    if (st.generation.len == 0 || st.generation.len > 20
        || i < st.generation.len)
    {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_BAD_GATEWAY,
                               "GCS's answer is malformed",
                               sizeof("GCS's answer is malformed") - 1);
        return;
    }

    /* https://storage.googleapis.com/BUCKET/NAME */

    len = sizeof(NGX_CLOUDAUTH_GCS_URL "//") - 1
          + ngx_cloudauth_form_escape_len(&conf->bucket)
          + ngx_cloudauth_form_escape_len(&s->object.name);

    p = ngx_pnalloc(s->pool, len);
    if (p == NULL) {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
        return;
    }

    url.data = p;
    p = ngx_cpymem(p, NGX_CLOUDAUTH_GCS_URL "/",
                   sizeof(NGX_CLOUDAUTH_GCS_URL "/") - 1);
    p = ngx_cloudauth_form_escape(p, &conf->bucket);
    *p++ = '/';
    p = ngx_cloudauth_gcs_escape_path(p, &s->object.name);
    url.len = p - url.data;

    res = json_pack("{s:s%, s:s%, s:I, s:s%, s:s%, s:s%, s:s%, s:s%}",
                    "bucket", conf->bucket.data, conf->bucket.len,
                    "name", s->object.name.data, s->object.name.len,
                    "size", (json_int_t) size,
                    "contentType", ctype->data, ctype->len,
                    "crc32c", st.crc32c.data, st.crc32c.len,
                    "md5Hash", md5.data, md5.len,
                    "generation", st.generation.data, st.generation.len,
                    "url", url.data, url.len);

    if (res == NULL) {
        ngx_cloudauth_gcs_fail(s, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, s->log, 0,
                  "cloudauth: upload: stored \"%V\" in bucket \"%V\", "
                  "%O bytes in %M ms, %ui retries, generation %V",
                  &s->object.shown, &conf->bucket, size,
                  (ngx_msec_t) (ngx_current_msec - s->start), s->retries,
                  &st.generation);

    s->uri.len = 0;     /* done: nothing to cancel */
    s->op = NGX_CLOUDAUTH_GCS_NONE;

    s->handlers.done(s, res);
}


/* exponential back-off with jitter, then a status query (or a new start) */

static void
ngx_cloudauth_gcs_backoff(ngx_cloudauth_gcs_t *s, ngx_cloudauth_fetch_t *f,
    ngx_cloudauth_gcs_req_e next)
{
    ngx_msec_t  delay, elapsed;

    if (s->fail_start == 0) {
        s->fail_start = ngx_current_msec;
        s->attempts = 0;
    }

    elapsed = ngx_current_msec - s->fail_start;

    if (elapsed >= NGX_CLOUDAUTH_GCS_RETRY_WINDOW) {
        ngx_cloudauth_gcs_refused(s, f, NGX_HTTP_BAD_GATEWAY,
                                  "GCS kept failing for 60 s");
        return;
    }

    delay = ngx_cloudauth_backoff(NGX_CLOUDAUTH_GCS_RETRY_FIRST,
                                  NGX_CLOUDAUTH_GCS_RETRY_MAX,
                                  s->attempts + 1, 0);
    delay = ngx_min(delay, NGX_CLOUDAUTH_GCS_RETRY_WINDOW - elapsed);

    s->attempts++;
    s->retries++;

    ngx_log_error(NGX_LOG_WARN, s->log, 0,
                  "cloudauth: upload: GCS answered %l%s%s, retrying in "
                  "%M ms (attempt %ui)", f->status, f->status ? "" : ": ",
                  f->status ? "" : f->errbuf, delay, s->attempts);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "cloudauth: gcs: retry of \"%V\" as request %d",
                   &s->object.shown, next);

    s->req = next;
    ngx_add_timer(&s->retry, delay);
}


static void
ngx_cloudauth_gcs_retry(ngx_event_t *ev)
{
    ngx_cloudauth_gcs_t  *s;

    s = (ngx_cloudauth_gcs_t *)
            ((u_char *) ev - offsetof(ngx_cloudauth_gcs_t, retry));

    (void) ngx_cloudauth_gcs_run(s);
}


/*
 * curl's own low-speed limit averages over seconds and sees the chunk just
 * sent as progress: a GCS that takes a chunk and never answers is noticed
 * here instead, and treated like a dropped connection (query, resume)
 */

static void
ngx_cloudauth_gcs_stall(ngx_event_t *ev)
{
    off_t                     moved;
    curl_off_t                up, down, begun;
    ngx_msec_t                timeout;
    ngx_cloudauth_gcs_t      *s;
    ngx_cloudauth_fetch_t    *f, stalled;
    ngx_cloudauth_gcs_req_e   req;

    s = (ngx_cloudauth_gcs_t *)
            ((u_char *) ev - offsetof(ngx_cloudauth_gcs_t, stall));
    f = s->fetch;

    if (f == NULL) {
        return;
    }

    timeout = s->ask.cred->conf->timeout;

    up = 0;
    down = 0;
    begun = 0;
    (void) curl_easy_getinfo(f->easy, CURLINFO_SIZE_UPLOAD_T, &up);
    (void) curl_easy_getinfo(f->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
    (void) curl_easy_getinfo(f->easy, CURLINFO_PRETRANSFER_TIME_T, &begun);

    moved = (off_t) (up + down);

    /*
     * waiting for a connection (all in use) is no stall: the transfer has
     * not begun; a connection that does not come is curl's connect timeout,
     * one that is not free for a minute a stall
     */

    if (moved != s->moved
        || (begun == 0
            && ngx_current_msec - s->asked_at < NGX_CLOUDAUTH_GCS_RETRY_WINDOW))
    {
        s->moved = moved;
        s->moved_at = ngx_current_msec;
    }

    if (ngx_current_msec - s->moved_at < timeout) {
        ngx_add_timer(ev, timeout / 4 + 1);
        return;
    }

    req = s->req;
    s->req = NGX_CLOUDAUTH_GCS_NONE;
    s->fetch = NULL;
    ngx_cloudauth_fetch_free(f);

    ngx_memzero(&stalled, sizeof(ngx_cloudauth_fetch_t));
    stalled.log = s->log;
    (void) ngx_snprintf((u_char *) stalled.errbuf, CURL_ERROR_SIZE - 1,
                        "no progress for %M ms%Z", timeout);

    ngx_cloudauth_gcs_answer(s, &stalled, req);
}


/*
 * A failure GCS answered: the caller gets our reason and the status, GCS's
 * own words (which may name the service account, the project, the bucket's
 * policy) are kept for the log only, bounded and without control characters
 */

static void
ngx_cloudauth_gcs_refused(ngx_cloudauth_gcs_t *s, ngx_cloudauth_fetch_t *f,
    ngx_uint_t status, const char *what)
{
    u_char  *p;
    u_char   buf[128];

    ngx_cloudauth_gcs_note(s, f);

    if (f->status == 0) {
        p = ngx_snprintf(buf, sizeof(buf), "%s (no answer)", what);

    } else {
        p = ngx_snprintf(buf, sizeof(buf), "%s (HTTP %l)", what, f->status);
    }

    ngx_cloudauth_gcs_fail(s, status, (char *) buf, p - buf);
}


/* GCS's words about a failure, kept for the log */

static void
ngx_cloudauth_gcs_note(ngx_cloudauth_gcs_t *s, ngx_cloudauth_fetch_t *f)
{
    ngx_str_t  said;

    if (f->status == 0) {
        said.data = (u_char *) f->errbuf;
        said.len = ngx_strlen(f->errbuf);

    } else if (ngx_cloudauth_gcs_parse_error(s->pool, f->body, f->body_len,
                                             &said)
               != NGX_OK)
    {
        said.data = f->body ? f->body : (u_char *) "";
        said.len = f->body ? f->body_len : 0;
    }

    /* escaped, a byte may take 4 */

    s->said.data = ngx_pnalloc(s->pool, 4 * NGX_CLOUDAUTH_GCS_SAID_MAX + 3);
    if (s->said.data) {
        s->said.len = ngx_cloudauth_gcs_printable(s->said.data,
                                              4 * NGX_CLOUDAUTH_GCS_SAID_MAX,
                                              said.data, said.len);
    }
}


/* the end of the operation, and maybe of the session: the caller decides */

static void
ngx_cloudauth_gcs_fail(ngx_cloudauth_gcs_t *s, ngx_uint_t status,
    const char *reason, size_t len)
{
    ngx_str_t  why;

    if (reason == NULL) {
        ngx_str_set(&why, "internal error");

    } else {
        why.data = (u_char *) reason;
        why.len = len;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "cloudauth: gcs: \"%V\" failed: %V",
                   &s->object.shown, &why);

    s->op = NGX_CLOUDAUTH_GCS_NONE;

    s->handlers.failed(s, s->why, status, &why, &s->said);
}
