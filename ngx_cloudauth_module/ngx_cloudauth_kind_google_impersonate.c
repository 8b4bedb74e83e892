
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_impersonate: IAM Credentials generateAccessToken for a target
 * service account, authorised by the token of another credential ("source"):
 * one held key, many service accounts.  The call itself is
 * ngx_cloudauth_google_iam.c's, shared with the external account.
 */


#include "ngx_cloudauth.h"


typedef struct {
    ngx_str_t      url;
    ngx_str_t      body;       /* {"scope": [...], "lifetime": "3600s"} */
} ngx_cloudauth_impersonate_t;


static char *ngx_cloudauth_google_impersonate_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_google_impersonate_build(
    ngx_cloudauth_cred_t *cred, ngx_str_t *subject, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, ngx_log_t *log);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_impersonate = {
    ngx_string("google_impersonate"),       /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_google_impersonate_init,  /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_google_impersonate_build, /* build: the token request */
    ngx_cloudauth_google_iam_parse,         /* parse: the answer */
    1                                       /* quota: quota_project= */
};


static char *
ngx_cloudauth_google_impersonate_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred)
{
    u_char                       *p;
    ngx_str_t                    *source, *target, *scope, endpoint, parts[3];
    ngx_cloudauth_impersonate_t  *im;

    static char  *usage = "; e.g. source=google "
                          "target=reader@project.iam.gserviceaccount.com "
                          "scopes=https://www.googleapis.com/auth/"
                          "cloud-platform";

    source = ngx_cloudauth_param(cred, "source");
    target = ngx_cloudauth_param(cred, "target");
    scope = ngx_cloudauth_param(cred, "scopes");

    if (source == NULL || target == NULL || scope == NULL
        || target->len == 0 || scope->len == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": type=%V needs "
                           "\"source=\", \"target=\" and \"scopes=\"%s",
                           &cred->name, &cred->kind->name, usage);
        return NGX_CONF_ERROR;
    }

    cred->source = ngx_cloudauth_find_cred(cred->conf, source);

    if (cred->source == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": source=\"%V\" is not "
                           "a cloudauth_credential defined above this one",
                           &cred->name, source);
        return NGX_CONF_ERROR;
    }

    for (p = target->data; p < target->data + target->len; p++) {
        if (*p == '/' || *p == '?' || *p == '#' || *p == '%' || *p <= ' ') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": target=\"%V\" "
                               "is not a service account e-mail",
                               &cred->name, target);
            return NGX_CONF_ERROR;
        }
    }

    im = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_impersonate_t));
    if (im == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = im;

    ngx_str_set(&endpoint, "https://iamcredentials.googleapis.com");

    if (ngx_cloudauth_param(cred, "endpoint")) {
        endpoint = *ngx_cloudauth_param(cred, "endpoint");

        while (endpoint.len && endpoint.data[endpoint.len - 1] == '/') {
            endpoint.len--;
        }
    }

    if (ngx_cloudauth_check_url(cf, cred, "endpoint", &endpoint, 0)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    im->url.len = endpoint.len + sizeof("/v1/projects/-/serviceAccounts/"
                                        ":generateAccessToken") - 1
                  + target->len;
    im->url.data = ngx_pnalloc(cf->pool, im->url.len);
    if (im->url.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf(im->url.data,
                "%V/v1/projects/-/serviceAccounts/%V:generateAccessToken",
                &endpoint, target);

    if (ngx_cloudauth_google_iam_body(cf, cred, scope, 3600, &im->body)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    parts[0] = cred->source->name;
    parts[1] = im->url;
    parts[2] = im->body;

    return ngx_cloudauth_fingerprint(cred, parts, 3);
}


static ngx_int_t
ngx_cloudauth_google_impersonate_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log)
{
    ngx_cloudauth_impersonate_t  *im;

    im = cred->data;

    return ngx_cloudauth_google_iam_build(&im->url, &im->body, pool, req);
}
