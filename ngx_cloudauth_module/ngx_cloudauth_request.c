
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Building outbound requests: a body of its own, form escaping, C strings
 * for libraries that want them.
 */


#include "ngx_cloudauth.h"


/*
 * The token request's body and its "Content-Type: ..." header line: the
 * engine wipes a body once it is sent (it holds secrets), so each request
 * gets its own copy of the kind's text.
 */

ngx_int_t
ngx_cloudauth_set_body(ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    u_char *data, size_t len, const char *content_type)
{
    req->body.data = ngx_pnalloc(pool, len);
    if (req->body.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(req->body.data, data, len);
    req->body.len = len;

    return ngx_cloudauth_header_printf(pool, req, "%s", content_type);
}


/* form values: all but RFC 3986's unreserved characters escaped */

size_t
ngx_cloudauth_form_escape_len(ngx_str_t *src)
{
    return src->len + 2 * ngx_escape_uri(NULL, src->data, src->len,
                                         NGX_ESCAPE_URI_COMPONENT);
}


u_char *
ngx_cloudauth_form_escape(u_char *dst, ngx_str_t *src)
{
    return (u_char *) ngx_escape_uri(dst, src->data, src->len,
                                     NGX_ESCAPE_URI_COMPONENT);
}


char *
ngx_cloudauth_copy_cstr(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_cpystrn(p, s->data, s->len + 1);

    return (char *) p;
}
