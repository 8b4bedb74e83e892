
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=zoom_s2s: Zoom Server-to-Server OAuth.  POST to the token URL with
 * grant_type=account_credentials and the account ID, HTTP Basic auth with
 * the app's client ID and secret; the answer is an OAuth2 access token.
 */


#include "ngx_cloudauth.h"


typedef struct {
    ngx_str_t      token_url;
    ngx_str_t      userpwd;     /* "client_id:client_secret" */
    ngx_str_t      body;
} ngx_cloudauth_zoom_s2s_t;


static char *ngx_cloudauth_zoom_s2s_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_zoom_s2s_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_zoom_s2s_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_zoom_s2s = {
    ngx_string("zoom_s2s"),                 /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_zoom_s2s_init,            /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_zoom_s2s_build,           /* build: the token request */
    ngx_cloudauth_zoom_s2s_parse,           /* parse: the answer */
    0                                       /* quota: none */
};


static char *
ngx_cloudauth_zoom_s2s_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                    *p;
    ngx_str_t                 *account, *client, secret, parts[4];
    ngx_cloudauth_zoom_s2s_t  *zs;

    static u_char  grant[] = "grant_type=account_credentials&account_id=";

    account = ngx_cloudauth_param(cred, "account_id");
    client = ngx_cloudauth_param(cred, "client_id");

    if (account == NULL || account->len == 0
        || client == NULL || client->len == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": type=zoom_s2s needs "
                           "\"account_id=\" and \"client_id=\" (the app's "
                           "Account ID and Client ID in the Zoom App "
                           "Marketplace) and \"client_secret_file=\"",
                           &cred->name);
        return NGX_CONF_ERROR;
    }

    for (p = client->data; p < client->data + client->len; p++) {
        if (*p == ':' || *p <= ' ' || *p >= 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": client_id=\"%V\" "
                               "is not a Zoom Client ID (no \":\", spaces or "
                               "control characters)", &cred->name, client);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_cloudauth_secret(cf, cred, "client_secret", &secret) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    zs = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_zoom_s2s_t));
    if (zs == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = zs;

    ngx_str_set(&zs->token_url, "https://zoom.us/oauth/token");

    if (ngx_cloudauth_param(cred, "token_url")) {
        zs->token_url = *ngx_cloudauth_param(cred, "token_url");
    }

    if (ngx_cloudauth_check_url(cf, cred, "token_url", &zs->token_url, 0)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    zs->userpwd.len = client->len + 1 + secret.len;
    zs->userpwd.data = ngx_pnalloc(cf->pool, zs->userpwd.len);
    if (zs->userpwd.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(zs->userpwd.data, client->data, client->len);
    *p++ = ':';
    ngx_memcpy(p, secret.data, secret.len);

    zs->body.len = sizeof(grant) - 1 + ngx_cloudauth_form_escape_len(account);
    zs->body.data = ngx_pnalloc(cf->pool, zs->body.len);
    if (zs->body.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(zs->body.data, grant, sizeof(grant) - 1);
    (void) ngx_cloudauth_form_escape(p, account);

    parts[0] = zs->token_url;
    parts[1] = *account;
    parts[2] = *client;
    parts[3] = secret;

    return ngx_cloudauth_fingerprint(cred, parts, 4);
}


static ngx_int_t
ngx_cloudauth_zoom_s2s_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    ngx_cloudauth_zoom_s2s_t  *zs;

    zs = cred->data;

    req->url = zs->token_url;
    req->userpwd = zs->userpwd;

    return ngx_cloudauth_set_body(pool, req, zs->body.data, zs->body.len,
                                  NGX_CLOUDAUTH_FORM);
}


static ngx_int_t
ngx_cloudauth_zoom_s2s_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    /* Zoom's errors: {"reason": "...", "error": "invalid_client"} */

    return ngx_cloudauth_oauth_parse(a, pool, res, "access_token");
}
