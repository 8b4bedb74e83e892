
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: the single-request front end.  A PUT or POST
 * whose body is the object (raw), or a multipart/form-data POST whose
 * files are objects; answered 201 with what GCS stored, once every byte
 * is in.  The body itself is the driver's.
 */


#include "ngx_http_cloudauth_upload.h"


static void ngx_http_cloudauth_upload_plain_answer(
    ngx_http_cloudauth_upload_t *u, json_t *object);
static ngx_int_t ngx_http_cloudauth_upload_plain_start(
    ngx_http_cloudauth_upload_t *u);


static const ngx_http_cloudauth_upload_hooks_t
    ngx_http_cloudauth_upload_plain_hooks =
{
    "single-request",
    ngx_http_cloudauth_upload_plain_answer,
    NULL,
    NULL,
    NULL
};


ngx_int_t
ngx_http_cloudauth_upload_plain(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max)
{
    ngx_int_t                     rc;
    ngx_http_cloudauth_upload_t  *u;

    if (!(r->method & (NGX_HTTP_PUT|NGX_HTTP_POST))) {
        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin,
                                 NGX_HTTP_NOT_ALLOWED, "use PUT or POST",
                                 sizeof("use PUT or POST") - 1);
    }

    if (ngx_http_cloudauth_upload_csrf(r, conf) != NGX_OK) {
        return ngx_http_cloudauth_upload_reject(r, &conf->reply, NULL,
                                 NGX_HTTP_FORBIDDEN,
                                 "cross-site upload refused",
                                 sizeof("cross-site upload refused") - 1);
    }

    if (ngx_http_cloudauth_upload_consumed(r)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cloudauth: upload: the request body was read or "
                      "discarded before it reached the upload location "
                      "(an error_page after client_max_body_size, "
                      "another module?)");

        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin,
                                 NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 "the request body is no longer there",
                                 sizeof("the request body is no longer "
                                        "there") - 1);
    }

    if (max && r->headers_in.content_length_n > max) {
        r->expect_tested = 1;
        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin,
                                 NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                 "the body is larger than max_size",
                                 sizeof("the body is larger than max_size")
                                 - 1);
    }

    u = ngx_http_cloudauth_upload_create(r, conf, origin, max,
                                     &ngx_http_cloudauth_upload_plain_hooks);
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cloudauth_upload_plain_start(u);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin, rc,
                                                (char *) u->reason.data,
                                                u->reason.len);
    }

    return ngx_http_cloudauth_upload_read(u);
}


/*
 * Before the body: a form gets its parser, a raw body its one object,
 * named by the URI's last segment.  NGX_OK, NGX_ERROR, or an HTTP status
 * with u->reason.
 */

static ngx_int_t
ngx_http_cloudauth_upload_plain_start(ngx_http_cloudauth_upload_t *u)
{
    u_char              *p;
    ngx_str_t            ct, md5, seg;
    ngx_table_elt_t     *h;
    ngx_http_request_t  *r;

    r = u->request;

    ngx_str_null(&ct);
    ngx_str_null(&md5);

    if (r->headers_in.content_type) {
        ct = r->headers_in.content_type->value;
    }

    if (r->method == NGX_HTTP_POST
        && ct.len >= sizeof("multipart/form-data") - 1
        && ngx_strncasecmp(ct.data, (u_char *) "multipart/form-data",
                           sizeof("multipart/form-data") - 1) == 0)
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "cloudauth: upload: a form");

        return ngx_http_cloudauth_upload_form(u, &ct);
    }

    /* $cloudauth_filename: the last segment of the URI */

    p = r->uri.data + r->uri.len;

    while (p > r->uri.data && p[-1] != '/') {
        p--;
    }

    seg.data = p;
    seg.len = r->uri.data + r->uri.len - p;

    if (ct.len == 0) {
        ngx_str_set(&ct, "application/octet-stream");
    }

    h = ngx_http_cloudauth_upload_header_in(r, "Content-MD5",
                                            sizeof("Content-MD5") - 1);
    if (h) {
        md5 = h->value;
    }

    return ngx_http_cloudauth_upload_open(u, &seg, &ct, &md5,
                                          r->headers_in.content_length_n);
}


/* every object is stored: 201 with GCS's summary (a form's: the list) */

static void
ngx_http_cloudauth_upload_plain_answer(ngx_http_cloudauth_upload_t *u,
    json_t *object)
{
    ngx_int_t  rc;

    rc = ngx_http_cloudauth_upload_respond(u->request, &u->conf->reply,
                                           &u->cors_origin, NGX_HTTP_CREATED,
                                           object);

    ngx_http_finalize_request(u->request, rc);
}
