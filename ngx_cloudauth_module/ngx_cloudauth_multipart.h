
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * ngx_cloudauth_multipart.c: a streaming multipart/form-data parser, the
 * upload endpoint's (and its fuzz target's) only.
 */


#ifndef _NGX_CLOUDAUTH_MULTIPART_H_INCLUDED_
#define _NGX_CLOUDAUTH_MULTIPART_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define NGX_CLOUDAUTH_MP_MAX_BOUNDARY  70
#define NGX_CLOUDAUTH_MP_MAX_HEADERS   8192

typedef enum {
    NGX_CLOUDAUTH_MP_NEED_MORE = 0,  /* the input is all taken */
    NGX_CLOUDAUTH_MP_PART,           /* a part begins: mp->part */
    NGX_CLOUDAUTH_MP_DATA,           /* mp->data, mp->len: the part's bytes */
    NGX_CLOUDAUTH_MP_PART_END,
    NGX_CLOUDAUTH_MP_END,            /* the closing delimiter */
    NGX_CLOUDAUTH_MP_ERROR           /* mp->error says why */
} ngx_cloudauth_mp_event_e;

typedef struct {
    ngx_str_t                  name;
    ngx_str_t                  filename;
    ngx_str_t                  content_type;
    ngx_str_t                  content_md5;
    unsigned                   file:1;      /* has a filename parameter */
} ngx_cloudauth_mp_part_t;

typedef struct {
    ngx_uint_t                 state;
    size_t                     match;       /* delimiter bytes matched */
    size_t                     held;        /* refuted ones still to give */
    size_t                     held_pos;
    size_t                     delim_len;
    u_char                     delim[4 + NGX_CLOUDAUTH_MP_MAX_BOUNDARY];

    ngx_cloudauth_mp_part_t    part;        /* points into hdr */
    u_char                    *data;
    size_t                     len;
    const char                *error;

    size_t                     hdr_len;
    u_char                     hdr[NGX_CLOUDAUTH_MP_MAX_HEADERS];
} ngx_cloudauth_mp_t;

ngx_int_t ngx_cloudauth_mp_init(ngx_cloudauth_mp_t *mp,
    ngx_str_t *content_type);
ngx_cloudauth_mp_event_e ngx_cloudauth_mp_parse(ngx_cloudauth_mp_t *mp,
    u_char **pos, u_char *last, size_t room);
ngx_int_t ngx_cloudauth_mp_finish(ngx_cloudauth_mp_t *mp);


#endif /* _NGX_CLOUDAUTH_MULTIPART_H_INCLUDED_ */
