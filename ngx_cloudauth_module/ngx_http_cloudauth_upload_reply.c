
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: what clients see.  CORS (the preflight, the
 * allowed origins), the refusal of cross-site uploads, and the answers,
 * JSON, with the CORS headers an allowed origin needs and the headers of
 * the location's front ends (its reply, made with the configuration).
 * It calls nothing of the upload above it.
 */


#include "ngx_http_cloudauth_upload.h"


static ngx_uint_t ngx_http_cloudauth_upload_listed(
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin);
static ngx_uint_t ngx_http_cloudauth_upload_same_origin(ngx_http_request_t *r,
    ngx_str_t *origin);
static ngx_uint_t ngx_http_cloudauth_upload_allowed(
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *method);
static ngx_int_t ngx_http_cloudauth_upload_drain(ngx_http_request_t *r,
    ngx_int_t rc);
#ifdef NGX_HTTP_VERSION_30
static void ngx_http_cloudauth_upload_drain_handler(ngx_http_request_t *r);
#endif


static ngx_str_t  ngx_http_cloudauth_upload_json =
    ngx_string("application/json");


/* a request header, the last of its name; NULL: none */

ngx_table_elt_t *
ngx_http_cloudauth_upload_header_in(ngx_http_request_t *r, const char *name,
    size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    found = NULL;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (h[i].key.len == len
                && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
            {
                found = &h[i];
            }
        }
    }

    return found;
}


/* an OPTIONS from an allowed origin asking for PUT or POST: 204 */

ngx_int_t
ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin)
{
    u_char           *p;
    ngx_str_t         method, hdrs, v;
    ngx_table_elt_t  *h;

    ngx_str_null(&method);
    ngx_str_null(&hdrs);

    h = ngx_http_cloudauth_upload_header_in(r,
                    "Access-Control-Request-Method",
                    sizeof("Access-Control-Request-Method") - 1);
    if (h) {
        method = h->value;
    }

    h = ngx_http_cloudauth_upload_header_in(r,
                    "Access-Control-Request-Headers",
                    sizeof("Access-Control-Request-Headers") - 1);
    if (h) {
        hdrs = h->value;
    }

    if (origin == NULL || !ngx_http_cloudauth_upload_allowed(conf, &method)) {
        return ngx_http_cloudauth_upload_reject(r, &conf->reply, NULL,
                                 NGX_HTTP_FORBIDDEN,
                                 "CORS preflight refused",
                                 sizeof("CORS preflight refused") - 1);
    }

    for (p = hdrs.data; p < hdrs.data + hdrs.len; p++) {
        if (!(ngx_http_cloudauth_upload_token_char(*p) || *p == ','
              || *p == ' '))
        {
            ngx_str_set(&hdrs, "Content-Type, Content-MD5");
            break;
        }
    }

    if (hdrs.len == 0) {
        ngx_str_set(&hdrs, "Content-Type, Content-MD5");
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    method = conf->reply.allow;

    ngx_str_set(&v, "600");

    if (ngx_http_cloudauth_upload_header_out(r, "Access-Control-Allow-Origin",
                                             origin)
           != NGX_OK
        || ngx_http_cloudauth_upload_header_out(r,
                               "Access-Control-Allow-Methods", &method)
           != NGX_OK
        || ngx_http_cloudauth_upload_header_out(r,
                               "Access-Control-Allow-Headers", &hdrs)
           != NGX_OK
        || ngx_http_cloudauth_upload_header_out(r, "Access-Control-Max-Age",
                                                &v)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&v, "Origin");

    if (ngx_http_cloudauth_upload_header_out(r, "Vary", &v) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


ngx_int_t
ngx_http_cloudauth_upload_header_out(ngx_http_request_t *r, char *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;

    return NGX_OK;
}


ngx_int_t
ngx_http_cloudauth_upload_header_text(ngx_http_request_t *r, char *key,
    const char *value)
{
    ngx_str_t  v;

    v.data = (u_char *) value;
    v.len = ngx_strlen(value);

    return ngx_http_cloudauth_upload_header_out(r, key, &v);
}


ngx_int_t
ngx_http_cloudauth_upload_header_off(ngx_http_request_t *r, char *key,
    off_t n)
{
    u_char     *p;
    ngx_str_t   v;

    p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v.data = p;
    v.len = ngx_sprintf(p, "%O", n) - p;

    return ngx_http_cloudauth_upload_header_out(r, key, &v);
}


/*
 * answers: JSON (or none, body NULL), the CORS headers for an allowed
 * origin, and the headers of the location's front ends
 */

ngx_int_t
ngx_http_cloudauth_upload_respond(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_reply_t *reply, ngx_str_t *origin,
    ngx_uint_t status, json_t *body)
{
    char         *s;
    size_t        len;
    ngx_int_t     rc;
    ngx_str_t     vary;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = NULL;

    if (body) {
        s = json_dumps(body, JSON_COMPACT|JSON_ENSURE_ASCII);
        if (s == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        len = ngx_strlen(s);

        b = ngx_create_temp_buf(r->pool, len + 1);
        if (b == NULL) {
            free(s);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        b->last = ngx_cpymem(b->pos, s, len);
        *b->last++ = LF;
        b->last_buf = 1;
        b->last_in_chain = 1;
        free(s);
    }

    if (reply->headers && reply->headers(r, origin, status) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (origin && origin->len) {
        ngx_str_set(&vary, "Origin");

        if (ngx_http_cloudauth_upload_header_out(r,
                                     "Access-Control-Allow-Origin", origin)
               != NGX_OK
            || ngx_http_cloudauth_upload_header_out(r, "Vary", &vary)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (status == NGX_HTTP_NOT_ALLOWED
        && ngx_http_cloudauth_upload_header_out(r, "Allow", &reply->allow)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    if (b == NULL) {
        r->headers_out.content_length_n = (status == NGX_HTTP_NO_CONTENT)
                                          ? -1 : 0;
        r->header_only = 1;

        rc = ngx_http_send_header(r);

        return ngx_http_cloudauth_upload_drain(r, rc);
    }

    /* JSON, or the type of JSON its front end set (problem details) */

    if (r->headers_out.content_type.len == 0) {
        r->headers_out.content_type = ngx_http_cloudauth_upload_json;
        r->headers_out.content_type_len = ngx_http_cloudauth_upload_json.len;
        r->headers_out.content_type_lowcase = NULL;
    }
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    rc = ngx_http_output_filter(r, &out);

    return ngx_http_cloudauth_upload_drain(r, rc);
}


/*
 * An answer before the whole body, over HTTP/3 (a refusal, a failure on
 * the way): nginx's discard of a body there does nothing, and the end of
 * the request stream asks the client to stop sending (STOP_SENDING).
 * Chromium, still sending, then resets its side of the stream and never
 * shows the answer: the fetch() waits until it is aborted.  So the rest
 * of the body is read and dropped, as nginx discards one over HTTP/1.1
 * (client_body_timeout bounds each read, lingering_time all of it, as
 * there: an upload location's body limit is the module's own, so nginx's
 * is none), and the request ends with the body.  rc: the answer's;
 * NGX_DONE: the body is drained.
 */

static ngx_int_t
ngx_http_cloudauth_upload_drain(ngx_http_request_t *r, ngx_int_t rc)
{
#ifdef NGX_HTTP_VERSION_30

    ngx_http_core_loc_conf_t  *clcf;

    if (rc != NGX_OK
        || r != r->main
        || r->http_version != NGX_HTTP_VERSION_30
        || r->buffered
        || r->connection->buffered
        || r->connection->error
        || r->discard_body)
    {
        return rc;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    r->lingering_time = ngx_time() + (time_t) (clcf->lingering_time / 1000);

    if (r->request_body == NULL) {

        if (r->headers_in.content_length_n <= 0 && !r->headers_in.chunked) {
            return NGX_OK;
        }

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "cloudauth: upload: draining the body");

        r->request_body_no_buffering = 1;

        rc = ngx_http_read_client_request_body(r,
                                      ngx_http_cloudauth_upload_drain_handler);

        /* a body nginx refuses itself: the answer is out, the stream ends */
        return (rc >= NGX_HTTP_SPECIAL_RESPONSE) ? NGX_OK : NGX_DONE;
    }

    if (!r->reading_body) {
        return NGX_OK;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: draining the rest of the body");

    /* the drain's reference: the caller finalizes with NGX_DONE */
    r->main->count++;

    ngx_http_cloudauth_upload_drain_handler(r);

    return NGX_DONE;

#else

    return rc;

#endif
}


#ifdef NGX_HTTP_VERSION_30

static void
ngx_http_cloudauth_upload_drain_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_chain_t              *cl;
    ngx_http_request_body_t  *rb;

    r->read_event_handler = ngx_http_cloudauth_upload_drain_handler;

    rb = r->request_body;

    for ( ;; ) {

        /* what was read is dropped, with what the upload still held */

        for (cl = rb->bufs; cl; cl = cl->next) {
            cl->buf->pos = cl->buf->last;
        }

        for (cl = rb->busy; cl; cl = cl->next) {
            cl->buf->pos = cl->buf->last;
        }

        rb->bufs = NULL;

        if (!r->reading_body) {
            ngx_http_finalize_request(r, NGX_OK);
            return;
        }

        if (ngx_time() >= r->lingering_time) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "cloudauth: upload: the body of an answered "
                          "request still comes after lingering_time");
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }

        rc = ngx_http_read_unbuffered_request_body(r);

        if (rc == NGX_AGAIN && rb->bufs == NULL) {
            return;
        }

        if (rc != NGX_OK && rc != NGX_AGAIN) {
            /* the answer is out: no other one */
            ngx_http_finalize_request(r, (rc == NGX_HTTP_REQUEST_TIME_OUT)
                                         ? rc : NGX_ERROR);
            return;
        }
    }
}

#endif


ngx_int_t
ngx_http_cloudauth_upload_reject(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_reply_t *reply, ngx_str_t *origin,
    ngx_uint_t status, const char *reason, size_t len)
{
    json_t     *body;
    ngx_int_t   rc;

    if (r->request_body == NULL) {
        /* refused: no "100 Continue" invites a body to discard */
        r->expect_tested = 1;

        if (ngx_http_discard_request_body(r) != NGX_OK) {
            r->keepalive = 0;
        }
    }

    body = json_pack("{s:{s:i, s:s%}}", "error", "code", (int) status,
                     "message", reason, len);
    if (body == NULL) {
        /* the reason is not UTF-8 */
        body = json_pack("{s:{s:i, s:s}}", "error", "code", (int) status,
                         "message", "bad request");
        if (body == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_cloudauth_upload_respond(r, reply, origin, status, body);

    json_decref(body);

    return rc;
}


/* a method the location takes: one of the list in its Allow */

static ngx_uint_t
ngx_http_cloudauth_upload_allowed(ngx_http_cloudauth_upload_conf_t *conf,
    ngx_str_t *method)
{
    u_char  *p, *last, *q;

    p = conf->reply.allow.data;
    last = p + conf->reply.allow.len;

    while (p < last) {
        q = ngx_strlchr(p, last, ',');
        if (q == NULL) {
            q = last;
        }

        if ((size_t) (q - p) == method->len
            && ngx_strncmp(p, method->data, method->len) == 0
            && !(method->len == 7
                 && ngx_strncmp(method->data, "OPTIONS", 7) == 0))
        {
            return 1;
        }

        p = q + 1;

        while (p < last && *p == ' ') {
            p++;
        }
    }

    return 0;
}


/* the request's Origin when cors= allows it, for the answer's headers */

ngx_str_t *
ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf)
{
    ngx_table_elt_t  *h;

    if (conf->cors == NULL) {
        return NULL;
    }

    h = ngx_http_cloudauth_upload_header_in(r, "Origin",
                                            sizeof("Origin") - 1);

    if (h == NULL || !ngx_http_cloudauth_upload_listed(conf, &h->value)) {
        return NULL;
    }

    return &h->value;
}


/* an origin cors= allows; "null" only with "*" */

static ngx_uint_t
ngx_http_cloudauth_upload_listed(ngx_http_cloudauth_upload_conf_t *conf,
    ngx_str_t *origin)
{
    ngx_str_t   *o;
    ngx_uint_t   i, null;

    if (conf->cors == NULL) {
        return 0;
    }

    null = (origin->len == 4 && ngx_strncmp(origin->data, "null", 4) == 0);

    o = conf->cors->elts;

    for (i = 0; i < conf->cors->nelts; i++) {
        if (o[i].len == 1 && o[i].data[0] == '*') {
            return 1;
        }

        if (!null && o[i].len == origin->len
            && ngx_strncasecmp(o[i].data, origin->data, o[i].len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * Cross-site request forgery: a form or a text/plain POST is a "simple
 * request" a browser sends from any page, without a preflight; CORS only
 * keeps the answer from the page.  An upload a browser sends is taken from
 * the request's own origin and those of cors= only: every Origin must be
 * one of them, and "Sec-Fetch-Site: cross-site" needs a listed Origin.
 * Clients that send neither (curl, scripts) are not browsers' victims.
 */

ngx_int_t
ngx_http_cloudauth_upload_csrf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf)
{
    ngx_str_t        *origin, shown;
    ngx_uint_t        i, cross, listed;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    cross = 0;
    listed = 0;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {

            if (h[i].key.len == 14
                && ngx_strncasecmp(h[i].key.data, (u_char *) "Sec-Fetch-Site",
                                   14) == 0)
            {
                if (h[i].value.len == 10
                    && ngx_strncasecmp(h[i].value.data,
                                       (u_char *) "cross-site", 10) == 0)
                {
                    cross = 1;
                }

                continue;
            }

            if (h[i].key.len != 6
                || ngx_strncasecmp(h[i].key.data, (u_char *) "Origin", 6) != 0)
            {
                continue;
            }

            origin = &h[i].value;

            if (ngx_http_cloudauth_upload_listed(conf, origin)) {
                listed = 1;
                continue;
            }

            if (!ngx_http_cloudauth_upload_same_origin(r, origin)) {
                if (ngx_cloudauth_gcs_shown(r->pool, origin, &shown)
                    == NGX_OK)
                {
                    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                                  "cloudauth: upload: refused, Origin "
                                  "\"%V\" is neither the request's own "
                                  "nor in cors=", &shown);
                }

                return NGX_DECLINED;
            }
        }
    }

    if (cross && !listed) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: refused, \"Sec-Fetch-Site: "
                      "cross-site\" without an Origin in cors=");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * The request's own origin: the scheme of the connection and the Host (or
 * HTTP/3's ":authority"), a default port (":80", ":443") spelled out or
 * not.  The module is the same whichever optional modules the tree it was
 * built against has (a --with-compat tree may have no TLS): what a
 * connection is is asked of the connection.
 */

static ngx_uint_t
ngx_http_cloudauth_upload_same_origin(ngx_http_request_t *r,
    ngx_str_t *origin)
{
    ngx_str_t  scheme, port, host, o;

    ngx_str_set(&scheme, "http://");
    ngx_str_set(&port, ":80");

#if (NGX_SSL || NGX_COMPAT)
    if (r->connection->ssl) {
        ngx_str_set(&scheme, "https://");
        ngx_str_set(&port, ":443");
    }
#endif

#ifdef NGX_HTTP_VERSION_30
    if (r->http_version == NGX_HTTP_VERSION_30) {
        /* QUIC is TLS */
        ngx_str_set(&scheme, "https://");
        ngx_str_set(&port, ":443");
    }
#endif

    if (r->headers_in.host) {
        host = r->headers_in.host->value;

#ifdef NGX_HTTP_VERSION_30
    } else if (r->http_version == NGX_HTTP_VERSION_30
               && r->host_start && r->host_end > r->host_start)
    {
        /* HTTP/3's :authority, as the client sent it, port and all */
        host.data = r->host_start;
        host.len = r->host_end - r->host_start;
#endif

    } else {
        return 0;
    }

    if (origin->len <= scheme.len
        || ngx_strncasecmp(origin->data, scheme.data, scheme.len) != 0)
    {
        return 0;
    }

    o.data = origin->data + scheme.len;
    o.len = origin->len - scheme.len;

    if (o.len > port.len
        && ngx_strncmp(o.data + o.len - port.len, port.data, port.len) == 0)
    {
        o.len -= port.len;
    }

    if (host.len > port.len
        && ngx_strncmp(host.data + host.len - port.len, port.data, port.len)
           == 0)
    {
        host.len -= port.len;
    }

    return o.len == host.len
           && ngx_strncasecmp(o.data, host.data, o.len) == 0;
}
