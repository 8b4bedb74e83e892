
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Small helpers any part of the module may use (their prototypes belong in
 * ngx_cloudauth.h once it is free to change): the jittered back-off
 * (ngx_cloudauth_backoff.c) and the outbound header-line builder
 * (ngx_cloudauth_header.c).
 */


#ifndef _NGX_CLOUDAUTH_SHARED_H_INCLUDED_
#define _NGX_CLOUDAUTH_SHARED_H_INCLUDED_


#include "ngx_cloudauth.h"


ngx_msec_t ngx_cloudauth_backoff(ngx_msec_t base, ngx_msec_t cap,
    ngx_uint_t failures, ngx_msec_t floor);
ngx_int_t ngx_cloudauth_header_printf(ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, const char *fmt, ...);


#endif /* _NGX_CLOUDAUTH_SHARED_H_INCLUDED_ */
