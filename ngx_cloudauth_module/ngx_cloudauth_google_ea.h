
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_external_account, between its two files: the configuration
 * reader (..._conf.c) makes what the run-time steps (the kind's file) use.
 */


#ifndef _NGX_CLOUDAUTH_GOOGLE_EA_H_INCLUDED_
#define _NGX_CLOUDAUTH_GOOGLE_EA_H_INCLUDED_


#include "ngx_cloudauth.h"


#define NGX_CLOUDAUTH_EA_SUBJECT_LIFE  2


/* the exchange: NAME, or NAME.sts */

typedef struct {
    ngx_str_t                  token_url;
    ngx_str_t                  form;        /* up to "&subject_token=" */
    ngx_str_t                  path;        /* file source; NUL-terminated */
    ngx_str_t                  field;       /* json format; NUL-terminated */
    ngx_uint_t                 jwt;         /* a JWT: its exp is checked */
} ngx_cloudauth_ea_sts_t;


/* the subject token from a URL: NAME.subject */

typedef struct {
    ngx_str_t                  url;
    ngx_str_t                  field;       /* json format; NUL-terminated */
    ngx_array_t                headers;     /* of char * "Name: value" */
} ngx_cloudauth_ea_url_t;


/* the outer credential: the exchange itself, or the impersonation */

typedef struct {
    ngx_cloudauth_ea_sts_t    *sts;         /* no impersonation */
    ngx_str_t                  url;         /* generateAccessToken */
    ngx_str_t                  body;        /* {"scope", "lifetime"} */
} ngx_cloudauth_ea_t;


/* the internal kinds: made by the configuration reader only */
extern ngx_cloudauth_kind_t  ngx_cloudauth_ea_sts_kind;
extern ngx_cloudauth_kind_t  ngx_cloudauth_ea_url_kind;

char *ngx_cloudauth_ea_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred);


#endif /* _NGX_CLOUDAUTH_GOOGLE_EA_H_INCLUDED_ */
