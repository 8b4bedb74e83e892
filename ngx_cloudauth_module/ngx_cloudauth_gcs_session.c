
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: the GCS JSON API resumable upload protocol.  One
 * request at a time per upload: the session start, chunks, the final chunk
 * with X-Goog-Hash, status queries after failures (with back-off), and the
 * session's cancellation.  Answers are checked against what was sent.
 */


#include "ngx_cloudauth_gcs_upload.h"


static ssize_t ngx_http_cloudauth_upload_send(ngx_cloudauth_fetch_t *f,
    u_char *buf, size_t size);
static void ngx_http_cloudauth_upload_header(ngx_cloudauth_fetch_t *f,
    u_char *line, size_t len);
static void ngx_http_cloudauth_upload_done(ngx_cloudauth_fetch_t *f);
static ngx_int_t ngx_http_cloudauth_upload_answer(
    ngx_http_cloudauth_upload_t *u, ngx_cloudauth_fetch_t *f,
    ngx_http_cloudauth_op_e op);
static ngx_int_t ngx_http_cloudauth_upload_session_ok(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_ack(
    ngx_http_cloudauth_upload_t *u, ngx_http_cloudauth_op_e op);
static ngx_int_t ngx_http_cloudauth_upload_stored(
    ngx_http_cloudauth_upload_t *u, ngx_cloudauth_fetch_t *f);
static ngx_int_t ngx_http_cloudauth_upload_backoff(
    ngx_http_cloudauth_upload_t *u, ngx_http_cloudauth_op_e op,
    ngx_cloudauth_fetch_t *f);
static void ngx_http_cloudauth_upload_gcs_error(
    ngx_http_cloudauth_upload_t *u, ngx_cloudauth_fetch_t *f,
    ngx_uint_t status, const char *what);
static size_t ngx_http_cloudauth_upload_printable(u_char *dst, size_t size,
    u_char *src, size_t len);
static void ngx_http_cloudauth_upload_cancelled(ngx_cloudauth_fetch_t *f);
static u_char *ngx_http_cloudauth_upload_escape(u_char *dst, u_char *src,
    size_t len, ngx_uint_t path);
static ngx_int_t ngx_http_cloudauth_upload_header_add(ngx_pool_t *pool,
    ngx_array_t *headers, const char *fmt, ...);


/* GCS requests: a scratch pool each, curl keeps copies */

ngx_int_t
ngx_http_cloudauth_upload_start(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_op_e op)
{
    u_char                            *p, *last;
    off_t                              length, end;
    size_t                             len;
    char                              *s;
    json_t                            *body, *meta;
    ngx_uint_t                         i;
    ngx_str_t                          hash, crc, md5;
    ngx_pool_t                        *pool;
    ngx_keyval_t                      *kv;
    ngx_http_request_t                *r;
    ngx_cloudauth_request_t            req;
    ngx_http_cloudauth_object_t       *obj;
    ngx_http_cloudauth_upload_conf_t  *conf;
    u_char                             crcbuf[4], hashbuf[128];

    r = u->request;
    obj = &u->obj;
    conf = u->conf;

    pool = ngx_create_pool(2048, r->connection->log);
    if (pool == NULL) {
        goto failed;
    }

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.headers = ngx_array_create(pool, 6, sizeof(ngx_str_t));
    if (req.headers == NULL) {
        goto failed;
    }

    if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                             "Authorization: Bearer %V",
                                             &u->ask.token)
        != NGX_OK)
    {
        goto failed;
    }

    length = -1;

    switch (op) {

    case NGX_HTTP_CLOUDAUTH_OP_INIT:

        len = conf->endpoint.len + sizeof("/upload/storage/v1/b//o"
                                          "?uploadType=resumable&name="
                                          "&ifGenerationMatch=0")
              + 3 * conf->bucket.len + 3 * obj->name.len;

        req.url.data = ngx_pnalloc(pool, len);
        if (req.url.data == NULL) {
            goto failed;
        }

        p = ngx_cpymem(req.url.data, conf->endpoint.data, conf->endpoint.len);
        p = ngx_cpymem(p, "/upload/storage/v1/b/",
                       sizeof("/upload/storage/v1/b/") - 1);
        p = ngx_http_cloudauth_upload_escape(p, conf->bucket.data,
                                             conf->bucket.len, 0);
        p = ngx_cpymem(p, "/o?uploadType=resumable&name=",
                       sizeof("/o?uploadType=resumable&name=") - 1);
        p = ngx_http_cloudauth_upload_escape(p, obj->name.data,
                                             obj->name.len, 0);

        if (!conf->overwrite) {
            p = ngx_cpymem(p, "&ifGenerationMatch=0",
                           sizeof("&ifGenerationMatch=0") - 1);
        }

        *p = '\0';
        req.url.len = p - req.url.data;

        ngx_str_set(&req.method, "POST");

        body = json_object();
        if (body == NULL) {
            goto failed;
        }

        json_object_set_new(body, "name",
                            json_stringn((char *) obj->name.data,
                                         obj->name.len));
        json_object_set_new(body, "contentType",
                            json_stringn((char *) obj->content_type.data,
                                         obj->content_type.len));

        if (obj->nfields) {
            meta = json_object();
            kv = u->fields->elts;

            for (i = 0; meta && i < obj->nfields; i++) {
                s = ngx_cloudauth_copy_cstr(pool, &kv[i].key);
                if (s == NULL) {
                    json_decref(meta);
                    json_decref(body);
                    goto failed;
                }

                /* json_stringn() is NULL for bytes that are not UTF-8 */
                json_object_set_new(meta, s,
                                    json_stringn((char *) kv[i].value.data,
                                                 kv[i].value.len));
            }

            json_object_set_new(body, "metadata", meta);
        }

        s = json_dumps(body, JSON_COMPACT);
        json_decref(body);

        if (s == NULL) {
            goto failed;
        }

        req.body.len = ngx_strlen(s);
        req.body.data = ngx_pnalloc(pool, req.body.len);
        if (req.body.data == NULL) {
            free(s);
            goto failed;
        }

        ngx_memcpy(req.body.data, s, req.body.len);
        free(s);

        if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                             "Content-Type: application/json; charset=UTF-8")
            != NGX_OK
            || ngx_http_cloudauth_upload_header_add(pool, req.headers,
                             "X-Upload-Content-Type: %V", &obj->content_type)
               != NGX_OK)
        {
            goto failed;
        }

        if (obj->total >= 0
            && ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                 "X-Upload-Content-Length: %O", obj->total)
               != NGX_OK)
        {
            goto failed;
        }

        break;

    case NGX_HTTP_CLOUDAUTH_OP_QUERY:

        req.url = obj->session;
        ngx_str_set(&req.method, "PUT");
        length = 0;
        u->put_len = 0;

        if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                         "Content-Range: bytes */*")
            != NGX_OK)
        {
            goto failed;
        }

        break;

    default: /* NGX_HTTP_CLOUDAUTH_OP_CHUNK, NGX_HTTP_CLOUDAUTH_OP_FINAL */

        req.url = obj->session;
        ngx_str_set(&req.method, "PUT");

        u->put_len = u->len;
        length = (off_t) u->len;
        end = obj->offset + (off_t) u->len;

        if (op == NGX_HTTP_CLOUDAUTH_OP_CHUNK) {
            if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                 "Content-Range: bytes %O-%O/*",
                                 obj->offset, end - 1)
                != NGX_OK)
            {
                goto failed;
            }

            break;
        }

        if (u->len) {
            if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                     "Content-Range: bytes %O-%O/%O",
                                     obj->offset, end - 1, end)
                != NGX_OK)
            {
                goto failed;
            }

        } else if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                     "Content-Range: bytes */%O", end)
                   != NGX_OK)
        {
            goto failed;
        }

        crcbuf[0] = (u_char) (obj->crc32c >> 24);
        crcbuf[1] = (u_char) (obj->crc32c >> 16);
        crcbuf[2] = (u_char) (obj->crc32c >> 8);
        crcbuf[3] = (u_char) obj->crc32c;

        crc.data = crcbuf;
        crc.len = 4;
        md5.data = obj->md5_sum;
        md5.len = 16;

        hash.data = hashbuf;
        p = ngx_cpymem(hashbuf, "X-Goog-Hash: crc32c=",
                       sizeof("X-Goog-Hash: crc32c=") - 1);
        hash.len = 0;
        hash.data = p;
        ngx_encode_base64(&hash, &crc);
        p += hash.len;

        if (obj->md5) {
            p = ngx_cpymem(p, ",md5=", 5);
            hash.data = p;
            ngx_encode_base64(&hash, &md5);
            p += hash.len;
        }

        last = p;

        hash.data = hashbuf;
        hash.len = last - hashbuf;

        if (ngx_http_cloudauth_upload_header_add(pool, req.headers, "%V",
                                                 &hash)
            != NGX_OK)
        {
            goto failed;
        }

        break;
    }

    u->put_sent = 0;
    u->range = -1;
    ngx_str_null(&u->location);
    u->op = op;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: op %d offset %O len %O \"%V\"",
                   op, obj->offset, length, &obj->name);

    u->fetch = ngx_cloudauth_fetch_stream(&req, length,
                                          ngx_http_cloudauth_upload_send,
                                          NULL,
                                          ngx_http_cloudauth_upload_header,
                                          ngx_http_cloudauth_upload_done, u,
                                          r->connection->log);

    ngx_destroy_pool(pool);
    pool = NULL;

    if (u->fetch == NULL) {
        u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
        goto failed;
    }

    /* no byte moved for cloudauth_timeout: given up (and resumed) */
    u->moved = 0;
    u->moved_at = ngx_current_msec;
    ngx_add_timer(&u->stall, u->ask.cred->conf->timeout / 4 + 1);

    return NGX_AGAIN;

failed:

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_http_cloudauth_upload_fail(u, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);

    return NGX_ERROR;
}


static ssize_t
ngx_http_cloudauth_upload_send(ngx_cloudauth_fetch_t *f, u_char *buf,
    size_t size)
{
    ngx_http_cloudauth_upload_t *u = f->data;

    size_t  n;

    n = ngx_min(size, u->put_len - u->put_sent);

    ngx_memcpy(buf, u->buf + u->put_sent, n);
    u->put_sent += n;

    return n;
}


static void
ngx_http_cloudauth_upload_header(ngx_cloudauth_fetch_t *f, u_char *line,
    size_t len)
{
    ngx_http_cloudauth_upload_t *u = f->data;

    u_char  *p, *last;
    off_t    v;

    last = line + len;

    if (len > 5 && ngx_strncmp(line, "HTTP/", 5) == 0) {
        /* a new answer (after a 100 Continue, say) */
        u->range = -1;
        ngx_str_null(&u->location);
        return;
    }

    if (len > 9 && ngx_strncasecmp(line, (u_char *) "location:", 9) == 0
        && u->op == NGX_HTTP_CLOUDAUTH_OP_INIT)
    {
        for (p = line + 9; p < last && *p == ' '; p++) { /* void */ }

        u->location.len = last - p;
        u->location.data = ngx_pnalloc(u->request->pool, u->location.len + 1);
        if (u->location.data == NULL) {
            u->location.len = 0;
            return;
        }

        ngx_memcpy(u->location.data, p, u->location.len);
        u->location.data[u->location.len] = '\0';

        return;
    }

    if (len > 6 && ngx_strncasecmp(line, (u_char *) "range:", 6) == 0) {
        for (p = line + 6; p < last && *p == ' '; p++) { /* void */ }

        /* "bytes=0-N" */

        if (last - p > 8 && ngx_strncmp(p, "bytes=0-", 8) == 0) {
            v = ngx_atoof(p + 8, last - (p + 8));

            /* the largest off_t is no last byte: range + 1 would overflow */
            u->range = (v == NGX_ERROR || v == NGX_MAX_OFF_T_VALUE) ? -2 : v;

        } else {
            u->range = -2;
        }
    }
}


static void
ngx_http_cloudauth_upload_done(ngx_cloudauth_fetch_t *f)
{
    ngx_http_cloudauth_upload_t *u = f->data;

    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_cloudauth_op_e   op;

    c = u->request->connection;

    op = u->op;
    u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
    u->fetch = NULL;

    if (u->stall.timer_set) {
        ngx_del_timer(&u->stall);
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: op %d answered %l in %M ms: %s",
                   op, f->status, f->duration, f->errbuf);

    rc = ngx_http_cloudauth_upload_answer(u, f, op);

    ngx_cloudauth_fetch_free(f);

    if (rc == NGX_OK) {
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


static ngx_uint_t
ngx_http_cloudauth_upload_retryable(long status)
{
    return status == 0 || status == 408 || status == 429 || status >= 500;
}


/* NGX_OK: go on; NGX_AGAIN: waiting for a retry; NGX_ERROR: failed */

static ngx_int_t
ngx_http_cloudauth_upload_answer(ngx_http_cloudauth_upload_t *u,
    ngx_cloudauth_fetch_t *f, ngx_http_cloudauth_op_e op)
{
    ngx_int_t  rc;

    if (f->status == 401 && !u->reauth) {

        /*
         * the token lapsed or was revoked: drop it, get another, and do
         * the request again (once); GCS took nothing of a refused chunk
         */

        ngx_log_error(NGX_LOG_WARN, u->request->connection->log, 0,
                      "cloudauth: upload: GCS answered 401, "
                      "retrying with a new token");

        ngx_cloudauth_engine_invalidate(u->ask.cred, &u->ask.subject,
                                 &u->ask.token, u->request->connection->log);

        u->reauth = 1;
        u->requery = (op == NGX_HTTP_CLOUDAUTH_OP_QUERY);
        u->obj.token = 0;

        return NGX_OK;
    }

    if (ngx_http_cloudauth_upload_retryable(f->status)) {
        return ngx_http_cloudauth_upload_backoff(u,
                                 op == NGX_HTTP_CLOUDAUTH_OP_INIT
                                 ? NGX_HTTP_CLOUDAUTH_OP_INIT
                                 : NGX_HTTP_CLOUDAUTH_OP_QUERY, f);
    }

    if (op == NGX_HTTP_CLOUDAUTH_OP_INIT) {

        if (f->status == 200 || f->status == 201) {
            rc = ngx_http_cloudauth_upload_session_ok(u);

            if (rc == NGX_ERROR) {
                ngx_http_cloudauth_upload_fail(u,
                                       NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);
                return NGX_ERROR;
            }

            if (rc != NGX_OK) {
                ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                   "GCS gave no session URI at the endpoint");
                return NGX_ERROR;
            }

            u->obj.session = u->location;
            u->fail_start = 0;
            u->reauth = 0;
            u->attempts = 0;

            return NGX_OK;
        }

        if (f->status == 412) {
            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_CONFLICT,
                                   "the object exists (overwrite=off)",
                                   sizeof("the object exists "
                                          "(overwrite=off)") - 1);
            return NGX_ERROR;
        }

        if (f->status == 401) {
            ngx_cloudauth_engine_invalidate(u->ask.cred, &u->ask.subject,
                                     &u->ask.token,
                                     u->request->connection->log);
        }

        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                            "GCS refused the upload");
        return NGX_ERROR;
    }

    if (f->status == 308) {
        rc = ngx_http_cloudauth_upload_ack(u, op);

        if (rc == NGX_DECLINED) {
            return ngx_http_cloudauth_upload_backoff(u,
                                             NGX_HTTP_CLOUDAUTH_OP_QUERY, f);
        }

        return rc;
    }

    if (f->status == 200 || f->status == 201) {
        if (op == NGX_HTTP_CLOUDAUTH_OP_CHUNK || !u->obj.eof) {
            ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                   "GCS finished the object early");
            return NGX_ERROR;
        }

        return ngx_http_cloudauth_upload_stored(u, f);
    }

    if (f->status == 412) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_CONFLICT,
                                       "the object exists (overwrite=off)",
                                       sizeof("the object exists "
                                              "(overwrite=off)") - 1);
        return NGX_ERROR;
    }

    if (f->status == 404 || f->status == 410) {
        u->obj.session.len = 0;   /* gone: nothing to cancel */
        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                            "the upload session is gone");
        return NGX_ERROR;
    }

    ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                        "GCS refused a chunk");
    return NGX_ERROR;
}


/*
 * The session URI GCS gave stays on the endpoint's origin: scheme, host and
 * port as libcurl, which will connect to it, reads them, and no user
 * information ("https://storage.googleapis.com:443@evil/").  NGX_DECLINED:
 * it does not; the URI itself is never logged.
 */

static ngx_int_t
ngx_http_cloudauth_upload_session_ok(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t                     rc;
    ngx_log_t                    *log;
    ngx_http_cloudauth_origin_t   got, *want;

    log = u->request->connection->log;
    want = &u->conf->origin;

    if (u->location.len == 0) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: upload: GCS answered the session start "
                      "without a Location");
        return NGX_DECLINED;
    }

    if (ngx_strlen(u->location.data) != u->location.len) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: upload: GCS gave a session URI with a NUL");
        return NGX_DECLINED;
    }

    rc = ngx_http_cloudauth_upload_origin(u->request->pool, u->location.data,
                                          &got);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: upload: GCS gave a session URI that is not "
                      "an absolute URL without user information");
        return NGX_DECLINED;
    }

    if (got.scheme.len != want->scheme.len
        || ngx_strncasecmp(got.scheme.data, want->scheme.data,
                           got.scheme.len) != 0
        || got.host.len != want->host.len
        || ngx_strncasecmp(got.host.data, want->host.data, got.host.len) != 0
        || got.port.len != want->port.len
        || ngx_strncmp(got.port.data, want->port.data, got.port.len) != 0)
    {
        /* the origin only: the rest of the URI is the session's secret */

        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: upload: GCS gave a session URI on "
                      "%V://%V:%V, not on the endpoint's %V://%V:%V",
                      &got.scheme, &got.host, &got.port, &want->scheme,
                      &want->host, &want->port);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * Scheme, host and port (spelled out) of an absolute URL, parsed by
 * libcurl.  NGX_DECLINED: not an absolute URL of a scheme libcurl knows, or
 * one with user information; NGX_ERROR: no memory.
 */

ngx_int_t
ngx_http_cloudauth_upload_origin(ngx_pool_t *pool, u_char *url,
    ngx_http_cloudauth_origin_t *origin)
{
    static CURLUPart  parts[] = {
        CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT
    };

    char        *part;
    CURLU       *h;
    CURLUcode    uc;
    ngx_int_t    rc;
    ngx_str_t   *dst[3];
    ngx_uint_t   i;

    dst[0] = &origin->scheme;
    dst[1] = &origin->host;
    dst[2] = &origin->port;

    h = curl_url();
    if (h == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_DECLINED;

    uc = curl_url_set(h, CURLUPART_URL, (char *) url, 0);
    if (uc != CURLUE_OK) {
        goto done;
    }

    part = NULL;
    uc = curl_url_get(h, CURLUPART_USER, &part, 0);
    curl_free(part);

    if (uc != CURLUE_NO_USER) {
        goto done;
    }

    part = NULL;
    uc = curl_url_get(h, CURLUPART_PASSWORD, &part, 0);
    curl_free(part);

    if (uc != CURLUE_NO_PASSWORD) {
        goto done;
    }

    for (i = 0; i < 3; i++) {
        part = NULL;
        uc = curl_url_get(h, parts[i], &part,
                          parts[i] == CURLUPART_PORT ? CURLU_DEFAULT_PORT : 0);

        if (uc != CURLUE_OK || part == NULL || *part == '\0') {
            curl_free(part);
            goto done;
        }

        dst[i]->len = ngx_strlen(part);
        dst[i]->data = ngx_pnalloc(pool, dst[i]->len);

        if (dst[i]->data == NULL) {
            curl_free(part);
            rc = NGX_ERROR;
            goto done;
        }

        ngx_memcpy(dst[i]->data, part, dst[i]->len);
        curl_free(part);
    }

    rc = NGX_OK;

done:

    curl_url_cleanup(h);

    return rc;
}


/*
 * GCS has bytes [0, range]: drop them from the buffer.  NGX_DECLINED: a
 * chunk or the final request made no progress (to be retried after a
 * back-off, not at once and forever).
 */

static ngx_int_t
ngx_http_cloudauth_upload_ack(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_op_e op)
{
    off_t                         committed, drop;
    ngx_http_cloudauth_object_t  *obj;

    obj = &u->obj;

    if (u->range == -2) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                       "GCS sent a malformed Range",
                                       sizeof("GCS sent a malformed Range")
                                       - 1);
        return NGX_ERROR;
    }

    committed = u->range + 1;

    if (committed < obj->offset
        || committed > obj->offset + (off_t) u->len)
    {
        ngx_log_error(NGX_LOG_ERR, u->request->connection->log, 0,
                      "cloudauth: upload: GCS reports %O bytes, we have "
                      "%O to %O", committed, obj->offset,
                      obj->offset + (off_t) u->len);

        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                       "GCS reports a range we cannot resume",
                                       sizeof("GCS reports a range we cannot "
                                              "resume") - 1);
        return NGX_ERROR;
    }

    drop = committed - obj->offset;

    if (drop) {
        ngx_memmove(u->buf, u->buf + drop, u->len - (size_t) drop);
        u->len -= (size_t) drop;
        obj->offset = committed;

        u->fail_start = 0;
        u->reauth = 0;
        u->attempts = 0;

    } else if (op != NGX_HTTP_CLOUDAUTH_OP_QUERY
               && (u->len || op == NGX_HTTP_CLOUDAUTH_OP_FINAL))
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_stored(ngx_http_cloudauth_upload_t *u,
    ngx_cloudauth_fetch_t *f)
{
    u_char                       *p;
    size_t                        len;
    json_t                       *root, *res;
    const char                   *name, *crc, *md5, *gen, *size, *bucket,
                                 *ctype;
    ngx_str_t                     s, enc;
    ngx_http_request_t           *r;
    ngx_cloudauth_stats_t        *st;
    ngx_http_cloudauth_object_t  *obj;
    u_char                        buf[64], raw[16];

    r = u->request;
    obj = &u->obj;

    root = f->body ? json_loadb((char *) f->body, f->body_len, 0, NULL) : NULL;

    name = crc = md5 = gen = size = bucket = ctype = NULL;

    if (root == NULL
        || json_unpack(root, "{s:s, s:s, s:s, s:s, s?s, s?s, s?s}",
                       "name", &name, "crc32c", &crc, "generation", &gen,
                       "size", &size, "md5Hash", &md5, "bucket", &bucket,
                       "contentType", &ctype)
           != 0)
    {
        json_decref(root);
        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                "GCS answered without the object's metadata");
        return NGX_ERROR;
    }

    /* what GCS stored is what we sent */

    raw[0] = (u_char) (obj->crc32c >> 24);
    raw[1] = (u_char) (obj->crc32c >> 16);
    raw[2] = (u_char) (obj->crc32c >> 8);
    raw[3] = (u_char) obj->crc32c;

    s.data = raw;
    s.len = 4;
    enc.data = buf;
    ngx_encode_base64(&enc, &s);

    if (ngx_strlen(crc) != enc.len
        || ngx_strncmp(crc, enc.data, enc.len) != 0
        || ngx_atoof((u_char *) size, ngx_strlen(size)) != obj->received
        || ngx_strlen(name) != obj->name.len
        || ngx_strncmp(name, obj->name.data, obj->name.len) != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cloudauth: upload: GCS stored \"%s\", %s bytes, "
                      "crc32c %s; we sent \"%V\", %O bytes, crc32c %V",
                      name, size, crc, &obj->name, obj->received, &enc);
        json_decref(root);
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                               "GCS stored other bytes than were sent",
                               sizeof("GCS stored other bytes than were "
                                      "sent") - 1);
        return NGX_ERROR;
    }

    if (obj->md5) {
        s.data = obj->md5_sum;
        s.len = 16;
        enc.data = buf;
        ngx_encode_base64(&enc, &s);

    } else {
        /* md5=off: GCS's own, as it is (checked by CRC32C above) */
        enc.data = buf;
        enc.len = 0;

        if (md5 && ngx_strlen(md5) < sizeof(buf)) {
            enc.len = ngx_strlen(md5);
            ngx_memcpy(buf, md5, enc.len);
        }
    }

    if (obj->md5 && md5 && (ngx_strlen(md5) != enc.len
                            || ngx_strncmp(md5, enc.data, enc.len) != 0))
    {
        json_decref(root);
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                               "GCS stored other bytes than were sent (MD5)",
                               sizeof("GCS stored other bytes than were "
                                      "sent (MD5)") - 1);
        return NGX_ERROR;
    }

    /* https://storage.googleapis.com/BUCKET/NAME */

    len = sizeof(NGX_HTTP_CLOUDAUTH_GCS_URL "//") - 1
          + 3 * u->conf->bucket.len + 3 * obj->name.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        json_decref(root);
        return NGX_ERROR;
    }

    s.data = p;
    p = ngx_cpymem(p, NGX_HTTP_CLOUDAUTH_GCS_URL "/",
                   sizeof(NGX_HTTP_CLOUDAUTH_GCS_URL "/") - 1);
    p = ngx_http_cloudauth_upload_escape(p, u->conf->bucket.data,
                                         u->conf->bucket.len, 0);
    *p++ = '/';
    p = ngx_http_cloudauth_upload_escape(p, obj->name.data, obj->name.len, 1);
    s.len = p - s.data;

    res = json_pack("{s:s%, s:s%, s:I, s:s%, s:s, s:s%, s:s, s:s%}",
                    "bucket", u->conf->bucket.data, u->conf->bucket.len,
                    "name", obj->name.data, obj->name.len,
                    "size", (json_int_t) obj->received,
                    "contentType", obj->content_type.data,
                    obj->content_type.len,
                    "crc32c", crc,
                    "md5Hash", buf, enc.len,
                    "generation", gen,
                    "url", s.data, s.len);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "cloudauth: upload: stored \"%V\" in bucket \"%V\", "
                  "%O bytes in %M ms, %ui retries, generation %s",
                  &obj->name, &u->conf->bucket, obj->received,
                  (ngx_msec_t) (ngx_current_msec - obj->start), obj->retries,
                  gen);

    /* gen and crc point into root */
    json_decref(root);

    if (res == NULL) {
        return NGX_ERROR;
    }

    if (u->results == NULL) {
        u->results = json_array();
        if (u->results == NULL) {
            json_decref(res);
            return NGX_ERROR;
        }
    }

    json_array_append_new(u->results, res);

    /*
     * $cloudauth_upload_object: the names, comma-separated, up to
     * NGX_HTTP_CLOUDAUTH_NAMES_MAX bytes (a form may have many files)
     */

    if (u->names.len + 1 + obj->name.len <= NGX_HTTP_CLOUDAUTH_NAMES_MAX) {
        p = ngx_pnalloc(r->pool, u->names.len + 1 + obj->name.len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        s.data = p;
        p = ngx_cpymem(p, u->names.data, u->names.len);

        if (u->names.len) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, obj->name.data, obj->name.len);
        u->names.data = s.data;
        u->names.len = p - s.data;
    }

    u->objects++;

    st = ngx_cloudauth_cache_stats(u->ask.cred->conf->shm_zone);
    if (st) {
        (void) ngx_atomic_fetch_add(&st->upload_bytes, obj->received);
    }

    ngx_http_cloudauth_upload_close(u);

    return NGX_OK;
}


/* exponential back-off with jitter, then a status query (or a new start) */

static ngx_int_t
ngx_http_cloudauth_upload_backoff(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_op_e op, ngx_cloudauth_fetch_t *f)
{
    ngx_msec_t           delay, elapsed;
    ngx_http_request_t  *r;

    r = u->request;

    if (u->fail_start == 0) {
        u->fail_start = ngx_current_msec;
        u->attempts = 0;
    }

    elapsed = ngx_current_msec - u->fail_start;

    if (elapsed >= NGX_HTTP_CLOUDAUTH_RETRY_WINDOW) {
        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                  "GCS kept failing for 60 s");
        return NGX_ERROR;
    }

    delay = NGX_HTTP_CLOUDAUTH_RETRY_FIRST << ngx_min(u->attempts, 4);
    delay = ngx_min(delay, NGX_HTTP_CLOUDAUTH_RETRY_MAX);

    /* equal jitter */
    delay = delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);
    delay = ngx_min(delay, NGX_HTTP_CLOUDAUTH_RETRY_WINDOW - elapsed);

    u->attempts++;
    u->obj.retries++;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "cloudauth: upload: GCS answered %l%s%s, retrying in "
                  "%M ms (attempt %ui)", f->status, f->status ? "" : ": ",
                  f->status ? "" : f->errbuf, delay, u->attempts);

    u->retry_op = op;
    ngx_add_timer(&u->retry, delay);

    return NGX_AGAIN;
}


void
ngx_http_cloudauth_upload_retry(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_cloudauth_upload_t  *u;

    u = (ngx_http_cloudauth_upload_t *)
            ((u_char *) ev - offsetof(ngx_http_cloudauth_upload_t, retry));
    c = u->request->connection;

    if (u->retry_op == NGX_HTTP_CLOUDAUTH_OP_QUERY) {
        if (ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_QUERY)
            == NGX_AGAIN)
        {
            ngx_http_cloudauth_upload_run(u);
        }

    } else {
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * curl's own low-speed limit averages over seconds and sees the chunk just
 * sent as progress: a GCS that takes a chunk and never answers is noticed
 * here instead, and treated like a dropped connection (query, resume)
 */

void
ngx_http_cloudauth_upload_stall(ngx_event_t *ev)
{
    off_t                         moved;
    ngx_int_t                     rc;
    curl_off_t                    up, down;
    ngx_msec_t                    timeout;
    ngx_connection_t             *c;
    ngx_cloudauth_fetch_t        *f, stalled;
    ngx_http_cloudauth_op_e       op;
    ngx_http_cloudauth_upload_t  *u;

    u = (ngx_http_cloudauth_upload_t *)
            ((u_char *) ev - offsetof(ngx_http_cloudauth_upload_t, stall));
    c = u->request->connection;
    f = u->fetch;

    if (f == NULL) {
        return;
    }

    timeout = u->ask.cred->conf->timeout;

    up = 0;
    down = 0;
    (void) curl_easy_getinfo(f->easy, CURLINFO_SIZE_UPLOAD_T, &up);
    (void) curl_easy_getinfo(f->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);

    moved = (off_t) (up + down);

    if (moved != u->moved) {
        u->moved = moved;
        u->moved_at = ngx_current_msec;
    }

    if (ngx_current_msec - u->moved_at < timeout) {
        ngx_add_timer(ev, timeout / 4 + 1);
        return;
    }

    op = u->op;
    u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
    u->fetch = NULL;
    ngx_cloudauth_fetch_free(f);

    ngx_memzero(&stalled, sizeof(ngx_cloudauth_fetch_t));
    stalled.log = c->log;
    (void) ngx_snprintf((u_char *) stalled.errbuf, CURL_ERROR_SIZE - 1,
                        "no progress for %M ms%Z", timeout);

    rc = ngx_http_cloudauth_upload_answer(u, &stalled, op);

    if (rc == NGX_OK) {
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * A failure GCS answered: the client gets our reason and the status, GCS's
 * own words (which may name the service account, the project, the bucket's
 * policy) go to the error log only, bounded and without control characters
 */

static void
ngx_http_cloudauth_upload_gcs_error(ngx_http_cloudauth_upload_t *u,
    ngx_cloudauth_fetch_t *f, ngx_uint_t status, const char *what)
{
    u_char      *p, *said;
    size_t       len;
    json_t      *root;
    const char  *msg;
    u_char       buf[128];

    msg = NULL;
    root = NULL;

    if (f->body_len) {
        root = json_loadb((char *) f->body, f->body_len, 0, NULL);

        if (root) {
            (void) json_unpack(root, "{s:{s:s}}", "error", "message", &msg);
        }
    }

    if (f->status == 0) {
        said = (u_char *) f->errbuf;
        len = ngx_strlen(f->errbuf);

    } else if (msg) {
        said = (u_char *) msg;
        len = ngx_strlen(msg);

    } else {
        said = f->body ? f->body : (u_char *) "";
        len = f->body ? f->body_len : 0;
    }

    /* escaped, a byte may take 4 */

    u->said.data = ngx_pnalloc(u->request->pool,
                               4 * NGX_HTTP_CLOUDAUTH_SAID_MAX + 3);
    if (u->said.data) {
        u->said.len = ngx_http_cloudauth_upload_printable(u->said.data,
                                              4 * NGX_HTTP_CLOUDAUTH_SAID_MAX,
                                              said, len);
    }

    json_decref(root);

    if (f->status == 0) {
        p = ngx_snprintf(buf, sizeof(buf), "%s (no answer)", what);

    } else {
        p = ngx_snprintf(buf, sizeof(buf), "%s (HTTP %l)", what, f->status);
    }

    ngx_http_cloudauth_upload_fail(u, status, (char *) buf, p - buf);
}


/*
 * At most NGX_HTTP_CLOUDAUTH_SAID_MAX bytes of src for a log line: control
 * characters as \xNN, "..." when cut; dst has room for 4 bytes each and 3
 */

static size_t
ngx_http_cloudauth_upload_printable(u_char *dst, size_t size, u_char *src,
    size_t len)
{
    static u_char  hex[] = "0123456789abcdef";

    u_char  *p, *last, c;
    size_t   n;

    p = dst;
    last = dst + size;
    n = ngx_min(len, NGX_HTTP_CLOUDAUTH_SAID_MAX);

    while (n-- && last - p >= 4) {
        c = *src++;

        if (c < 0x20 || c == 0x7f) {
            *p++ = '\\';
            *p++ = 'x';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
            continue;
        }

        *p++ = c;
    }

    if (len > NGX_HTTP_CLOUDAUTH_SAID_MAX) {
        p = ngx_cpymem(p, "...", 3);
    }

    return p - dst;
}


/* DELETE on the session URI: GCS drops what it has; nobody waits for it */

void
ngx_http_cloudauth_upload_cancel(ngx_http_cloudauth_upload_t *u)
{
    ngx_pool_t               *pool;
    ngx_cloudauth_fetch_t    *f;
    ngx_cloudauth_request_t   req;

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return;
    }

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.url = u->obj.session;
    ngx_str_set(&req.method, "DELETE");

    req.headers = ngx_array_create(pool, 1, sizeof(ngx_str_t));

    if (req.headers
        && ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                                "Authorization: Bearer %V",
                                                &u->ask.token)
           == NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, u->request->connection->log, 0,
                      "cloudauth: upload: cancelling the session of \"%V\"",
                      &u->obj.name);

        f = ngx_cloudauth_fetch_stream(&req, -1, NULL, NULL, NULL,
                                       ngx_http_cloudauth_upload_cancelled,
                                       NULL, ngx_cycle->log);
        if (f == NULL) {
            ngx_log_error(NGX_LOG_ERR, u->request->connection->log, 0,
                          "cloudauth: upload: cannot cancel the session");
        }
    }

    ngx_destroy_pool(pool);
}


static void
ngx_http_cloudauth_upload_cancelled(ngx_cloudauth_fetch_t *f)
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


/* percent-encoding: all but unreserved characters (and "/" in a path) */

static u_char *
ngx_http_cloudauth_upload_escape(u_char *dst, u_char *src, size_t len,
    ngx_uint_t path)
{
    static u_char  hex[] = "0123456789ABCDEF";

    u_char  c;

    while (len--) {
        c = *src++;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
            || c == '~' || (path && c == '/'))
        {
            *dst++ = c;
            continue;
        }

        *dst++ = '%';
        *dst++ = hex[c >> 4];
        *dst++ = hex[c & 0xf];
    }

    return dst;
}


static ngx_int_t
ngx_http_cloudauth_upload_header_add(ngx_pool_t *pool, ngx_array_t *headers,
    const char *fmt, ...)
{
    u_char     *p;
    va_list     args;
    ngx_str_t  *h;
    u_char      buf[NGX_CLOUDAUTH_MAX_TOKEN + 256];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    h = ngx_array_push(headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->len = p - buf;
    h->data = ngx_pnalloc(pool, h->len);
    if (h->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(h->data, buf, h->len);
    ngx_explicit_memzero(buf, h->len);

    return NGX_OK;
}
