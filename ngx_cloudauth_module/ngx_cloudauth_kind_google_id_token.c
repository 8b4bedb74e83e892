
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_id_token: an OpenID Connect ID token of a service account,
 * for Cloud Run, Cloud Functions and IAP: a jwt-bearer assertion with a
 * "target_audience" claim instead of "scope"; the answer's "id_token" is
 * cached until its own "exp".
 */


#include "ngx_cloudauth.h"


typedef struct {
    ngx_cloudauth_google_key_t   key;
    ngx_str_t                    audience;
} ngx_cloudauth_google_id_token_t;


static char *ngx_cloudauth_google_id_token_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_google_id_token_build(
    ngx_cloudauth_cred_t *cred, ngx_str_t *subject, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, ngx_log_t *log);
static ngx_int_t ngx_cloudauth_google_id_token_parse(
    ngx_cloudauth_cred_t *cred, ngx_cloudauth_answer_t *a, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_id_token = {
    ngx_string("google_id_token"),          /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_google_id_token_init,     /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_google_id_token_build,    /* build: the token request */
    ngx_cloudauth_google_id_token_parse,    /* parse: the answer */
    0                                       /* quota: none */
};


static char *
ngx_cloudauth_google_id_token_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                           *p;
    ngx_str_t                        *v, parts[4];
    ngx_cloudauth_google_id_token_t  *it;

    it = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_google_id_token_t));
    if (it == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = it;

    if (ngx_cloudauth_google_key_load(cf, cred, &it->key) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    v = ngx_cloudauth_param(cred, "audience");

    if (v == NULL || v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"audience=\" is "
                           "required: the URL of the Cloud Run service or "
                           "Cloud Function (or the IAP client ID), e.g. "
                           "audience=https://my-service-abc123-uc.a.run.app",
                           &cred->name);
        return NGX_CONF_ERROR;
    }

    for (p = v->data; p < v->data + v->len; p++) {
        if (*p <= ' ' || *p >= 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": audience= has "
                               "spaces, control or non-ASCII characters",
                               &cred->name);
            return NGX_CONF_ERROR;
        }
    }

    it->audience = *v;

    parts[0] = it->key.email;
    parts[1] = it->key.key_id;
    parts[2] = it->audience;
    parts[3] = it->key.token_url;

    return ngx_cloudauth_fingerprint(cred, parts, 4);
}


static ngx_int_t
ngx_cloudauth_google_id_token_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log)
{
    ngx_str_t                         none;
    ngx_cloudauth_google_id_token_t  *it;

    it = cred->data;
    ngx_str_null(&none);

    return ngx_cloudauth_google_assertion(cred, &it->key, "target_audience",
                                          &it->audience, &none, pool, req,
                                          log);
}


static ngx_int_t
ngx_cloudauth_google_id_token_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    if (ngx_cloudauth_oauth_parse(a, pool, res, "id_token") != NGX_OK) {
        return NGX_ERROR;
    }

    /* {"id_token": "..."} has no expires_in: the token's own exp */

    return ngx_cloudauth_answer_lifetime(pool, res,
                                         "malformed answer: id_token is not "
                                         "a JWT with \"exp\"");
}
