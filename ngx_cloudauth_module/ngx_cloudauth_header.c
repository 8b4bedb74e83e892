
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * One header line of an outbound request, "Name: value", formatted with
 * nginx's printf; the stack copy is wiped (it may hold a token).
 */


#include "ngx_cloudauth.h"


ngx_int_t
ngx_cloudauth_header_printf(ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    const char *fmt, ...)
{
    u_char     *p;
    va_list     args;
    ngx_str_t  *h;
    u_char      buf[NGX_CLOUDAUTH_MAX_TOKEN + 256];

    if (req->headers == NULL) {
        req->headers = ngx_array_create(pool, 4, sizeof(ngx_str_t));
        if (req->headers == NULL) {
            return NGX_ERROR;
        }
    }

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    if (p == buf + sizeof(buf)) {
        /* cut short: no header rather than a wrong one */
        ngx_explicit_memzero(buf, sizeof(buf));
        return NGX_ERROR;
    }

    h = ngx_array_push(req->headers);
    if (h == NULL) {
        ngx_explicit_memzero(buf, p - buf);
        return NGX_ERROR;
    }

    h->len = p - buf;
    h->data = ngx_pnalloc(pool, h->len);
    if (h->data == NULL) {
        ngx_explicit_memzero(buf, h->len);
        return NGX_ERROR;
    }

    ngx_memcpy(h->data, buf, h->len);
    ngx_explicit_memzero(buf, h->len);

    return NGX_OK;
}
