
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=zoom_jwt: Zoom's JWT app and SDK style token, signed here with the
 * API secret (HS256, claims "iss" = the API key and "exp"); no network.
 * The engine caches it and signs a new one ahead of expiry.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


#define NGX_CLOUDAUTH_ZOOM_JWT_MIN_TTL  5
#define NGX_CLOUDAUTH_ZOOM_JWT_MAX_TTL  (7 * 86400)


typedef struct {
    ngx_str_t      key;
    ngx_str_t      secret;
    time_t         ttl;
} ngx_cloudauth_zoom_jwt_t;


static char *ngx_cloudauth_zoom_jwt_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_zoom_jwt_sign(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_result_t *res,
    ngx_log_t *log);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_zoom_jwt = {
    ngx_string("zoom_jwt"),                 /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_zoom_jwt_init,            /* init: parameters, files */
    ngx_cloudauth_zoom_jwt_sign,            /* sign: a token made here */
    NULL,                                   /* build: none, signed here */
    NULL,                                   /* parse: none */
    0                                       /* quota: none */
};


static char *
ngx_cloudauth_zoom_jwt_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                    *p;
    ngx_str_t                 *key, *v, parts[3];
    ngx_cloudauth_zoom_jwt_t  *zj;

    zj = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_zoom_jwt_t));
    if (zj == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = zj;

    key = ngx_cloudauth_param(cred, "api_key");

    if (key == NULL || key->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": type=zoom_jwt needs "
                           "\"api_key=\" (the app's API Key or SDK Key) and "
                           "\"api_secret_file=\"", &cred->name);
        return NGX_CONF_ERROR;
    }

    for (p = key->data; p < key->data + key->len; p++) {
        if (*p < ' ' || *p >= 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": api_key= has "
                               "control or non-ASCII characters",
                               &cred->name);
            return NGX_CONF_ERROR;
        }
    }

    zj->key = *key;

    if (ngx_cloudauth_secret(cf, cred, "api_secret", &zj->secret) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    zj->ttl = 3600;

    v = ngx_cloudauth_param(cred, "ttl");

    if (v) {
        zj->ttl = ngx_parse_time(v, 1);

        if (zj->ttl == (time_t) NGX_ERROR
            || zj->ttl < NGX_CLOUDAUTH_ZOOM_JWT_MIN_TTL
            || zj->ttl > NGX_CLOUDAUTH_ZOOM_JWT_MAX_TTL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": ttl=\"%V\" is "
                               "not a time from %ds to 7d, e.g. ttl=3600 or "
                               "ttl=1h", &cred->name, v,
                               NGX_CLOUDAUTH_ZOOM_JWT_MIN_TTL);
            return NGX_CONF_ERROR;
        }
    }

    parts[0] = zj->key;
    parts[1] = zj->secret;
    parts[2].data = (u_char *) &zj->ttl;
    parts[2].len = sizeof(time_t);

    return ngx_cloudauth_fingerprint(cred, parts, 3);
}


static ngx_int_t
ngx_cloudauth_zoom_jwt_sign(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_result_t *res, ngx_log_t *log)
{
    char                      *claims;
    json_t                    *c;
    ngx_int_t                  rc;
    ngx_cloudauth_zoom_jwt_t  *zj;

    zj = cred->data;

    c = json_pack("{s:s%, s:I}",
                  "iss", zj->key.data, zj->key.len,
                  "exp", (json_int_t) (ngx_time() + zj->ttl));
    if (c == NULL) {
        return NGX_ERROR;
    }

    claims = json_dumps(c, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(c);

    if (claims == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_cloudauth_jwt_hs256(pool, &zj->secret,
                                 "{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                                 claims, &res->token);
    free(claims);

    if (rc != NGX_OK) {
        ngx_str_set(&res->error, "HS256 signing failed");
        return NGX_ERROR;
    }

    res->expires_in = zj->ttl;

    return NGX_OK;
}
