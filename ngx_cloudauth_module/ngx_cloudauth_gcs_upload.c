
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: a content handler that streams a request body (raw,
 * or each file of a multipart/form-data form) into GCS objects through the
 * JSON API's resumable uploads, authorised by a cloudauth credential.
 *
 * The body is read unbuffered, into one buffer of chunk_size bytes per
 * upload.  A full buffer becomes one PUT on the session; while it is on its
 * way no more of the body is read (back-pressure), and it stays until GCS
 * says which of its bytes it kept, so it is also the retry buffer.  CRC32C
 * and MD5 run over the bytes once, as they enter the buffer.  A failure
 * cancels the session (DELETE), so no object is left half-written.
 *
 * It is a module of its own (ngx_http_cloudauth_upload_module).  This file:
 * the directive, the variables, the request's start, CORS, answers and
 * object names; ngx_cloudauth_gcs_stream.c reads the body into objects,
 * ngx_cloudauth_gcs_session.c speaks GCS's resumable upload protocol.
 */


#include "ngx_cloudauth_gcs_upload.h"


static ngx_int_t ngx_http_cloudauth_upload_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin);
static ngx_str_t *ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
static ngx_uint_t ngx_http_cloudauth_upload_listed(
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin);
static ngx_int_t ngx_http_cloudauth_upload_csrf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
static ngx_uint_t ngx_http_cloudauth_upload_same_origin(ngx_http_request_t *r,
    ngx_str_t *origin);
static ngx_uint_t ngx_http_cloudauth_upload_consumed(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_upload_add_variables(ngx_conf_t *cf);
static void *ngx_http_cloudauth_upload_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_cloudauth_upload(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_cloudauth_upload_commands[] = {

    { ngx_string("cloudauth_gcs_upload"),
      NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_cloudauth_upload,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cloudauth_upload_module_ctx = {
    ngx_http_cloudauth_upload_add_variables, /* preconfiguration */
    NULL,                                    /* postconfiguration */

    NULL,                                    /* create main configuration */
    NULL,                                    /* init main configuration */

    NULL,                                    /* create server configuration */
    NULL,                                    /* merge server configuration */

    ngx_http_cloudauth_upload_create_loc_conf, /* create location conf */
    NULL                                     /* merge location configuration */
};


ngx_module_t  ngx_http_cloudauth_upload_module = {
    NGX_MODULE_V1,
    &ngx_http_cloudauth_upload_module_ctx, /* module context */
    ngx_http_cloudauth_upload_commands,    /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


enum {
    NGX_HTTP_CLOUDAUTH_VAR_FILENAME = 0,
    NGX_HTTP_CLOUDAUTH_VAR_BYTES,
    NGX_HTTP_CLOUDAUTH_VAR_OBJECT,
    NGX_HTTP_CLOUDAUTH_VAR_STATUS
};


static ngx_http_variable_t  ngx_http_cloudauth_upload_vars[] = {

    { ngx_string("cloudauth_filename"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_FILENAME,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_bytes"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_BYTES,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_object"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_OBJECT,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_status"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_STATUS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_cloudauth_upload_json =
    ngx_string("application/json");


/* the request */

static ngx_int_t
ngx_http_cloudauth_upload_handler(ngx_http_request_t *r)
{
    u_char                            *p;
    off_t                              max;
    ngx_int_t                          rc;
    ngx_str_t                         *origin, ct, md5, seg;
    ngx_uint_t                         i;
    ngx_list_part_t                   *part;
    ngx_table_elt_t                   *h;
    ngx_pool_cleanup_t                *cln;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_cloudauth_upload_t       *u;
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_upload_module);
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r != r->main) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    origin = ngx_http_cloudauth_upload_cors(r, conf);

    if (r->method == NGX_HTTP_OPTIONS && conf->cors) {
        return ngx_http_cloudauth_upload_preflight(r, conf, origin);
    }

    if (!(r->method & (NGX_HTTP_PUT|NGX_HTTP_POST))) {
        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_NOT_ALLOWED, "use PUT or POST",
                                 sizeof("use PUT or POST") - 1);
    }

    if (ngx_http_cloudauth_upload_csrf(r, conf) != NGX_OK) {
        return ngx_http_cloudauth_upload_reject(r, NULL, NGX_HTTP_FORBIDDEN,
                                 "cross-site upload refused",
                                 sizeof("cross-site upload refused") - 1);
    }

    if (ngx_http_cloudauth_upload_consumed(r)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cloudauth: upload: the request body was read or "
                      "discarded before it reached the upload location "
                      "(an error_page after client_max_body_size, "
                      "another module?)");

        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 "the request body is no longer there",
                                 sizeof("the request body is no longer "
                                        "there") - 1);
    }

    max = conf->max_size >= 0 ? conf->max_size : clcf->client_max_body_size;

    if (max && r->headers_in.content_length_n > max) {
        r->expect_tested = 1;
        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                 "the body is larger than max_size",
                                 sizeof("the body is larger than max_size")
                                 - 1);
    }

    u = ngx_pcalloc(r->pool, sizeof(ngx_http_cloudauth_upload_t));
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_cloudauth_upload_cleanup;
    cln->data = u;

    u->request = r;
    u->conf = conf;
    u->range = -1;
    u->max_size = max;
    u->retry.handler = ngx_http_cloudauth_upload_retry;
    u->retry.data = r->connection;
    u->retry.log = r->connection->log;
    u->guard.handler = ngx_http_cloudauth_upload_guard;
    u->guard.data = r->connection;
    u->guard.log = r->connection->log;
    u->stall.handler = ngx_http_cloudauth_upload_stall;
    u->stall.data = r->connection;
    u->stall.log = r->connection->log;
    ngx_str_set(&u->status, "rejected");

    if (origin) {
        u->cors_origin = *origin;
    }

    ngx_http_set_ctx(r, u, ngx_http_cloudauth_upload_module);

    u->ask.cred = conf->cred;
    u->ask.subject = conf->cred->subject;
    u->ask.pool = r->pool;
    u->ask.log = r->connection->log;
    u->ask.handler = ngx_http_cloudauth_upload_token;
    u->ask.data = u;

    ngx_str_null(&ct);
    ngx_str_null(&md5);

    if (r->headers_in.content_type) {
        ct = r->headers_in.content_type->value;
    }

    if (r->method == NGX_HTTP_POST && ct.len >= 19
        && ngx_strncasecmp(ct.data, (u_char *) "multipart/form-data", 19) == 0)
    {
        u->multipart = 1;

        u->mp = ngx_palloc(r->pool, sizeof(ngx_cloudauth_mp_t));
        u->fields = ngx_array_create(r->pool, 4, sizeof(ngx_keyval_t));
        if (u->mp == NULL || u->fields == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_cloudauth_mp_init(u->mp, &ct) != NGX_OK) {
            return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_BAD_REQUEST, u->mp->error,
                                 ngx_strlen(u->mp->error));
        }

    } else {
        /* $cloudauth_filename: the last segment of the URI */

        p = r->uri.data + r->uri.len;

        while (p > r->uri.data && p[-1] != '/') {
            p--;
        }

        seg.data = p;
        seg.len = r->uri.data + r->uri.len - p;

        if (r->headers_in.content_type == NULL || ct.len == 0) {
            ngx_str_set(&ct, "application/octet-stream");
        }

        for (part = &r->headers_in.headers.part; part; part = part->next) {
            h = part->elts;

            for (i = 0; i < part->nelts; i++) {
                if (h[i].key.len == 11
                    && ngx_strncasecmp(h[i].key.data,
                                       (u_char *) "Content-MD5", 11) == 0)
                {
                    md5 = h[i].value;
                }
            }
        }

        u->buf = ngx_http_cloudauth_upload_buf_alloc(conf->chunk_size,
                                                     r->connection->log);
        if (u->buf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_cloudauth_upload_open(u, &seg, &ct, &md5,
                                            r->headers_in.content_length_n);
        if (rc != NGX_OK) {
            if (rc == NGX_ERROR) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            return ngx_http_cloudauth_upload_reject(r, origin, rc,
                                                    (char *) u->reason.data,
                                                    u->reason.len);
        }
    }

    r->request_body_no_buffering = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_cloudauth_upload_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_uint_t
ngx_http_cloudauth_upload_token_char(u_char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '_';
}


static ngx_int_t
ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin)
{
    u_char           *p;
    ngx_uint_t        i, ok;
    ngx_str_t         method, hdrs;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *out;

    ngx_str_null(&method);
    ngx_str_null(&hdrs);

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (h[i].key.len == 29
                && ngx_strncasecmp(h[i].key.data,
                          (u_char *) "Access-Control-Request-Method", 29) == 0)
            {
                method = h[i].value;

            } else if (h[i].key.len == 30
                       && ngx_strncasecmp(h[i].key.data,
                          (u_char *) "Access-Control-Request-Headers", 30)
                          == 0)
            {
                hdrs = h[i].value;
            }
        }
    }

    ok = (method.len == 3 && ngx_strncmp(method.data, "PUT", 3) == 0)
         || (method.len == 4 && ngx_strncmp(method.data, "POST", 4) == 0);

    if (origin == NULL || !ok) {
        return ngx_http_cloudauth_upload_reject(r, NULL, NGX_HTTP_FORBIDDEN,
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

#define ngx_http_cloudauth_out(k, v)                                         \
    out = ngx_list_push(&r->headers_out.headers);                            \
    if (out == NULL) {                                                       \
        return NGX_HTTP_INTERNAL_SERVER_ERROR;                               \
    }                                                                        \
    out->hash = 1;                                                           \
    ngx_str_set(&out->key, k);                                               \
    out->value = v;

    ngx_http_cloudauth_out("Access-Control-Allow-Origin", *origin);

    ngx_str_set(&method, "PUT, POST, OPTIONS");
    ngx_http_cloudauth_out("Access-Control-Allow-Methods", method);
    ngx_http_cloudauth_out("Access-Control-Allow-Headers", hdrs);

    ngx_str_set(&method, "600");
    ngx_http_cloudauth_out("Access-Control-Max-Age", method);

    ngx_str_set(&method, "Origin");
    ngx_http_cloudauth_out("Vary", method);

#undef ngx_http_cloudauth_out

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* responses */

ngx_int_t
ngx_http_cloudauth_upload_respond(ngx_http_request_t *r, ngx_str_t *origin,
    ngx_uint_t status, json_t *body)
{
    char             *s;
    size_t            len;
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

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

    if (origin && origin->len) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Access-Control-Allow-Origin");
        h->value = *origin;

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Vary");
        ngx_str_set(&h->value, "Origin");
    }

    if (status == NGX_HTTP_NOT_ALLOWED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        ngx_str_set(&h->value, "PUT, POST, OPTIONS");
    }

    r->headers_out.status = status;
    r->headers_out.content_type = ngx_http_cloudauth_upload_json;
    r->headers_out.content_type_len = ngx_http_cloudauth_upload_json.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_cloudauth_upload_reject(ngx_http_request_t *r, ngx_str_t *origin,
    ngx_uint_t status, const char *reason, size_t len)
{
    json_t     *body;
    ngx_int_t   rc;

    if (r->request_body == NULL
        && ngx_http_discard_request_body(r) != NGX_OK)
    {
        r->keepalive = 0;
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

    rc = ngx_http_cloudauth_upload_respond(r, origin, status, body);

    json_decref(body);

    return rc;
}


static ngx_str_t *
ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf)
{
    ngx_str_t        *origin;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (conf->cors == NULL) {
        return NULL;
    }

    origin = NULL;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (h[i].key.len == 6
                && ngx_strncasecmp(h[i].key.data, (u_char *) "Origin", 6)
                   == 0)
            {
                origin = &h[i].value;
            }
        }
    }

    if (origin == NULL || !ngx_http_cloudauth_upload_listed(conf, origin)) {
        return NULL;
    }

    return origin;
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

static ngx_int_t
ngx_http_cloudauth_upload_csrf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf)
{
    ngx_str_t        *origin;
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
                ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                              "cloudauth: upload: refused, Origin \"%V\" "
                              "is neither the request's own nor in cors=",
                              origin);
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
 * The request's own origin: the scheme of the connection and the Host,
 * a default port (":80", ":443") spelled out or not
 */

static ngx_uint_t
ngx_http_cloudauth_upload_same_origin(ngx_http_request_t *r,
    ngx_str_t *origin)
{
    ngx_str_t  scheme, port, host, o;

    ngx_str_set(&scheme, "http://");
    ngx_str_set(&port, ":80");

#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        ngx_str_set(&scheme, "https://");
        ngx_str_set(&port, ":443");
    }
#endif

    if (r->headers_in.host == NULL
        || origin->len <= scheme.len
        || ngx_strncasecmp(origin->data, scheme.data, scheme.len) != 0)
    {
        return 0;
    }

    o.data = origin->data + scheme.len;
    o.len = origin->len - scheme.len;
    host = r->headers_in.host->value;

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


/*
 * The body is gone when the request comes here after another location
 * read or discarded it (client_max_body_size, then "error_page 413 =
 * @upload;"): a discarded body of a known length leaves less of the
 * declared length than the header says
 */

static ngx_uint_t
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


/* names */

const char *
ngx_http_cloudauth_upload_check_name(ngx_str_t *name)
{
    size_t  i;

    if (name->len == 0) {
        return "the object name is empty";
    }

    if (name->len > NGX_HTTP_CLOUDAUTH_NAME_MAX) {
        return "the object name is longer than 1024 bytes";
    }

    for (i = 0; i < name->len; i++) {
        if (name->data[i] == CR || name->data[i] == LF) {
            return "the object name contains CR or LF";
        }
    }

    if (!ngx_http_cloudauth_upload_utf8(name->data, name->len)) {
        return "the object name is not UTF-8";
    }

    if ((name->len == 1 && name->data[0] == '.')
        || (name->len == 2 && name->data[0] == '.' && name->data[1] == '.'))
    {
        return "the object name is \".\" or \"..\"";
    }

    if (name->len >= sizeof(".well-known/acme-challenge/") - 1
        && ngx_strncmp(name->data, ".well-known/acme-challenge/",
                       sizeof(".well-known/acme-challenge/") - 1) == 0)
    {
        return "the object name starts with .well-known/acme-challenge/";
    }

    return NULL;
}


ngx_int_t
ngx_http_cloudauth_upload_utf8(u_char *p, size_t len)
{
    /* not ngx_utf8_decode(): it takes "\xc3\xc3" and surrogates */

    return ngx_cloudauth_utf8_valid(p, len) == NGX_OK;
}


/*
 * $cloudauth_filename: the last path segment, without control characters
 * and characters that trouble shells and URLs; "file" when nothing is left.
 */

void
ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool, ngx_str_t *in,
    ngx_str_t *out)
{
    u_char  *p, *last, *start, *d, *s, *cp;
    size_t   n;

    p = in->data;
    last = in->data + in->len;

    for (start = p; p < last; p++) {
        if (*p == '/' || *p == '\\') {
            start = p + 1;
        }
    }

    out->data = ngx_pnalloc(pool, ngx_max(last - start, 4));
    if (out->data == NULL) {
        ngx_str_set(out, "file");
        return;
    }

    d = out->data;
    p = start;

    /*
     * no leading dots or blanks: no ".", "..", hidden files; nor control
     * characters, dropped below, which would put a dot first again
     */
    while (p < last && (*p == '.' || *p == ' ' || *p < 0x20 || *p == 0x7f)) {
        p++;
    }

    while (p < last) {

        if ((size_t) (d - out->data) >= NGX_HTTP_CLOUDAUTH_FILENAME_MAX) {
            break;
        }

        if (*p >= 0x80) {
            s = p;

            /* ngx_utf8_decode() alone takes "\xc3\xc3" and surrogates */

            if (ngx_utf8_decode(&p, last - p) > 0x10ffff
                || ngx_cloudauth_utf8_valid(s, p - s) != NGX_OK)
            {
                *d++ = '_';
                p = s + 1;
                continue;
            }

            n = p - s;

            if ((size_t) (d - out->data) + n > NGX_HTTP_CLOUDAUTH_FILENAME_MAX)
            {
                break;
            }

            d = ngx_cpymem(d, s, n);
            continue;
        }

        if (*p < 0x20 || *p == 0x7f) {
            p++;
            continue;
        }

        switch (*p) {
        case '"': case '#': case '%': case '*': case ':': case '<':
        case '>': case '?': case '[': case ']': case '|': case '`':
        case '\'': case '$': case '&': case ';': case '^': case '{':
        case '}': case '~': case '=': case '+': case ',': case '@':
        case '!':
            *d++ = '_';
            break;
        default:
            *d++ = *p;
        }

        p++;
    }

    cp = d;

    while (cp > out->data && cp[-1] == ' ') {
        cp--;
    }

    out->len = cp - out->data;

    if (out->len == 0) {
        ngx_str_set(out, "file");
    }
}


/* variables */

static ngx_int_t
ngx_http_cloudauth_upload_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                            *p;
    ngx_str_t                         *s;
    ngx_http_cloudauth_upload_t       *u;
    ngx_http_cloudauth_upload_conf_t  *conf;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    if (u == NULL) {
        conf = ngx_http_get_module_loc_conf(r,
                                            ngx_http_cloudauth_upload_module);

        if (conf->cred == NULL || r->method == NGX_HTTP_OPTIONS
            || (data != NGX_HTTP_CLOUDAUTH_VAR_STATUS
                && data != NGX_HTTP_CLOUDAUTH_VAR_BYTES))
        {
            v->not_found = 1;
            return NGX_OK;
        }

        /* refused before the upload began (a method, a size) */

        if (data == NGX_HTTP_CLOUDAUTH_VAR_STATUS) {
            v->len = sizeof("rejected") - 1;
            v->data = (u_char *) "rejected";

        } else {
            v->len = 1;
            v->data = (u_char *) "0";
        }

        goto found;
    }

    switch (data) {

    case NGX_HTTP_CLOUDAUTH_VAR_BYTES:
        p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->len = ngx_sprintf(p, "%O", u->bytes) - p;
        v->data = p;
        goto found;

    case NGX_HTTP_CLOUDAUTH_VAR_FILENAME:
        s = &u->filename;
        break;

    case NGX_HTTP_CLOUDAUTH_VAR_OBJECT:
        s = &u->names;
        break;

    default: /* NGX_HTTP_CLOUDAUTH_VAR_STATUS */
        s = &u->status;
        break;
    }

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;

found:

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_cloudauth_upload_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* configuration */

static void *
ngx_http_cloudauth_upload_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cloudauth_upload_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->cred = NULL;
     *     conf->object = NULL;
     *     conf->cors = NULL;
     */

    conf->max_size = -1;

    return conf;
}


static char *
ngx_http_cloudauth_upload(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cloudauth_upload_conf_t *ucf = conf;

    u_char                            *p, *q, *last;
    ssize_t                            size;
    ngx_str_t                         *value, v, *o;
    ngx_uint_t                         i;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_compile_complex_value_t   ccv;

    if (ucf->cred) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ucf->cred = ngx_cloudauth_find_cred(
                    ngx_http_conf_get_module_main_conf(cf,
                                                 ngx_http_cloudauth_module),
                    &value[1]);
    if (ucf->cred == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: no cloudauth_credential "
                           "\"%V\" (define it at http level, before)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ucf->cred->subjects && ucf->cred->subject.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: credential \"%V\" has "
                           "\"subjects=\" but no \"subject=\": an upload "
                           "acts as the credential's subject=; give it one, "
                           "or use a credential without \"subjects=\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&ucf->endpoint, NGX_HTTP_CLOUDAUTH_GCS_URL);
    ucf->overwrite = 0;
    ucf->md5 = 1;
    ucf->chunk_size = NGX_HTTP_CLOUDAUTH_CHUNK;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "bucket=", 7) == 0) {
            ucf->bucket.data = value[i].data + 7;
            ucf->bucket.len = value[i].len - 7;

            for (p = ucf->bucket.data;
                 p < ucf->bucket.data + ucf->bucket.len;
                 p++)
            {
                if (!(ngx_http_cloudauth_upload_token_char(*p) || *p == '.')
                    || (*p >= 'A' && *p <= 'Z'))
                {
                    return "has an invalid \"bucket=\": lowercase letters, "
                           "digits, \"-\", \"_\" and \".\"";
                }
            }

            if (ucf->bucket.len < 3 || ucf->bucket.len > 222) {
                return "has an invalid \"bucket=\" length";
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "object=", 7) == 0) {
            v.data = value[i].data + 7;
            v.len = value[i].len - 7;

            if (v.len == 0) {
                return "has an empty \"object=\"";
            }

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &v;
            ccv.complex_value = ngx_palloc(cf->pool,
                                           sizeof(ngx_http_complex_value_t));
            if (ccv.complex_value == NULL) {
                return NGX_CONF_ERROR;
            }

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            ucf->object = ccv.complex_value;
            continue;
        }

        if (ngx_strncmp(value[i].data, "endpoint=", 9) == 0) {
            v.data = value[i].data + 9;
            v.len = value[i].len - 9;

            while (v.len && v.data[v.len - 1] == '/') {
                v.len--;
            }

            if (ngx_cloudauth_check_url(cf, ucf->cred, "endpoint=", &v, 0)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            ucf->endpoint = v;
            continue;
        }

        if (ngx_strcmp(value[i].data, "overwrite=on") == 0) {
            ucf->overwrite = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "overwrite=off") == 0) {
            ucf->overwrite = 0;
            continue;
        }

        if (ngx_strcmp(value[i].data, "md5=on") == 0) {
            ucf->md5 = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "md5=off") == 0) {
            ucf->md5 = 0;
            continue;
        }

        if (ngx_strncmp(value[i].data, "chunk_size=", 11) == 0) {
            v.data = value[i].data + 11;
            v.len = value[i].len - 11;

            size = ngx_parse_size(&v);

            if (size == NGX_ERROR || size < NGX_HTTP_CLOUDAUTH_QUANTUM
                || size % NGX_HTTP_CLOUDAUTH_QUANTUM)
            {
                return "has an invalid \"chunk_size=\": a multiple of 256k";
            }

            ucf->chunk_size = (size_t) size;
            continue;
        }

        if (ngx_strncmp(value[i].data, "max_size=", 9) == 0) {
            v.data = value[i].data + 9;
            v.len = value[i].len - 9;

            ucf->max_size = ngx_parse_offset(&v);

            if (ucf->max_size == NGX_ERROR) {
                return "has an invalid \"max_size=\"";
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "cors=", 5) == 0) {
            if (ucf->cors == NULL) {
                ucf->cors = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
                if (ucf->cors == NULL) {
                    return NGX_CONF_ERROR;
                }
            }

            p = value[i].data + 5;
            last = value[i].data + value[i].len;

            while (p < last) {
                q = ngx_strlchr(p, last, ',');
                if (q == NULL) {
                    q = last;
                }

                if (q > p) {
                    o = ngx_array_push(ucf->cors);
                    if (o == NULL) {
                        return NGX_CONF_ERROR;
                    }

                    o->data = p;
                    o->len = q - p;
                }

                p = q + 1;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: unknown parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    if (ucf->bucket.len == 0) {
        return "needs \"bucket=\"";
    }

    /* the origin of the endpoint: session URIs must stay there */

    p = ngx_pnalloc(cf->pool, ucf->endpoint.len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(p, ucf->endpoint.data, ucf->endpoint.len);
    p[ucf->endpoint.len] = '\0';

    switch (ngx_http_cloudauth_upload_origin(cf->pool, p, &ucf->origin)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        return "has an invalid \"endpoint=\": not an absolute URL without "
               "user information";

    default:
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_cloudauth_upload_handler;

    return NGX_CONF_OK;
}
