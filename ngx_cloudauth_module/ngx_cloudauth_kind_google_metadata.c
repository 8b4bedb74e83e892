
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_metadata: the token of the instance's service account from
 * the GCE/GKE metadata server, no key file: an access token (with scopes=)
 * or, with audience=, an ID token, which the server answers as bare text.
 */


#include "ngx_cloudauth.h"


#define NGX_CLOUDAUTH_METADATA_SA  "/computeMetadata/v1/instance/" \
                                   "service-accounts/default/"


typedef struct {
    ngx_str_t      url;
    ngx_uint_t     identity;    /* an ID token, answered as text */
} ngx_cloudauth_google_metadata_t;


static char *ngx_cloudauth_google_metadata_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_google_metadata_build(
    ngx_cloudauth_cred_t *cred, ngx_str_t *subject, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, ngx_log_t *log);
static ngx_int_t ngx_cloudauth_google_metadata_parse(
    ngx_cloudauth_cred_t *cred, ngx_cloudauth_answer_t *a, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_metadata = {
    ngx_string("google_metadata"),          /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_google_metadata_init,     /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_google_metadata_build,    /* build: the token request */
    ngx_cloudauth_google_metadata_parse,    /* parse: the answer */
    1                                       /* quota: quota_project= */
};


static char *
ngx_cloudauth_google_metadata_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                           *p;
    size_t                            len;
    ngx_str_t                        *scopes, *audience, endpoint, *v;
    ngx_cloudauth_google_metadata_t  *md;

    scopes = ngx_cloudauth_param(cred, "scopes");
    audience = ngx_cloudauth_param(cred, "audience");

    if (scopes && audience) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"scopes=\" and "
                           "\"audience=\" both given; scopes= asks for an "
                           "access token, audience= for an ID token: keep "
                           "one", &cred->name);
        return NGX_CONF_ERROR;
    }

    v = scopes ? scopes : audience;

    if (v && v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": empty \"%s=\"; "
                           "leave it out instead", &cred->name,
                           scopes ? "scopes" : "audience");
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&endpoint, "http://169.254.169.254");

    if (ngx_cloudauth_param(cred, "endpoint")) {
        endpoint = *ngx_cloudauth_param(cred, "endpoint");

        while (endpoint.len && endpoint.data[endpoint.len - 1] == '/') {
            endpoint.len--;
        }
    }

    if (ngx_cloudauth_check_url(cf, cred, "endpoint", &endpoint, 1)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    md = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_google_metadata_t));
    if (md == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = md;
    md->identity = (audience != NULL);

    len = endpoint.len + sizeof(NGX_CLOUDAUTH_METADATA_SA) - 1
          + sizeof("identity?audience=") - 1;

    if (v) {
        len += ngx_cloudauth_form_escape_len(v);
    }

    md->url.data = ngx_pnalloc(cf->pool, len);
    if (md->url.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(md->url.data, endpoint.data, endpoint.len);
    p = ngx_cpymem(p, NGX_CLOUDAUTH_METADATA_SA,
                   sizeof(NGX_CLOUDAUTH_METADATA_SA) - 1);

    if (audience) {
        p = ngx_cpymem(p, "identity?audience=",
                       sizeof("identity?audience=") - 1);
        p = ngx_cloudauth_form_escape(p, audience);

    } else if (scopes) {
        p = ngx_cpymem(p, "token?scopes=", sizeof("token?scopes=") - 1);
        p = ngx_cloudauth_form_escape(p, scopes);

    } else {
        p = ngx_cpymem(p, "token", sizeof("token") - 1);
    }

    md->url.len = p - md->url.data;

    return ngx_cloudauth_fingerprint(cred, &md->url, 1);
}


static ngx_int_t
ngx_cloudauth_google_metadata_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log)
{
    ngx_cloudauth_google_metadata_t  *md;

    md = cred->data;

    req->url = md->url;
    ngx_str_set(&req->method, "GET");

    return ngx_cloudauth_header_printf(pool, req, "Metadata-Flavor: Google");
}


static ngx_int_t
ngx_cloudauth_google_metadata_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    ngx_cloudauth_google_metadata_t  *md;

    md = cred->data;

    if (md->identity) {
        return ngx_cloudauth_plain_parse(a, pool, res);
    }

    return ngx_cloudauth_oauth_parse(a, pool, res, "access_token");
}
