
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=oauth2_client_credentials: the OAuth 2.0 client credentials grant
 * (RFC 6749, section 4.4) against any provider: the client authenticates
 * with HTTP Basic auth (its ID and secret form-encoded first, section
 * 2.3.1) or with client_id and client_secret in the form.
 */


#include "ngx_cloudauth.h"


typedef struct {
    ngx_str_t      token_url;
    ngx_str_t      userpwd;     /* auth=basic */
    ngx_str_t      body;
} ngx_cloudauth_oauth2_cc_t;


static char *ngx_cloudauth_oauth2_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_oauth2_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_oauth2_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);
static u_char *ngx_cloudauth_oauth2_field(u_char *p, char *name,
    ngx_str_t *value);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_oauth2 = {
    ngx_string("oauth2_client_credentials"), /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_oauth2_init,              /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_oauth2_build,             /* build: the token request */
    ngx_cloudauth_oauth2_parse,             /* parse: the answer */
    0                                       /* quota: none */
};


static char *
ngx_cloudauth_oauth2_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                     *p;
    size_t                      len;
    ngx_str_t                  *url, *client, *scope, *audience, *auth;
    ngx_str_t                   secret, none, parts[6];
    ngx_uint_t                  basic;
    ngx_cloudauth_oauth2_cc_t  *oc;

    static u_char  grant[] = "grant_type=client_credentials";

    url = ngx_cloudauth_param(cred, "token_url");
    client = ngx_cloudauth_param(cred, "client_id");

    if (url == NULL || url->len == 0 || client == NULL || client->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": "
                           "type=oauth2_client_credentials needs "
                           "\"token_url=\", \"client_id=\" and "
                           "\"client_secret_file=\", e.g. token_url=https://"
                           "login.example.com/oauth2/token client_id=my-app "
                           "client_secret_file=/etc/nginx/keys/my-app.secret",
                           &cred->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_check_url(cf, cred, "token_url", url, 0)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_secret(cf, cred, "client_secret", &secret) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    scope = ngx_cloudauth_param(cred, "scope");
    audience = ngx_cloudauth_param(cred, "audience");
    auth = ngx_cloudauth_param(cred, "auth");

    if ((scope && scope->len == 0) || (audience && audience->len == 0)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": empty \"%s=\"; "
                           "leave it out instead", &cred->name,
                           (scope && scope->len == 0) ? "scope" : "audience");
        return NGX_CONF_ERROR;
    }

    if (auth == NULL
        || (auth->len == 5 && ngx_strncmp(auth->data, "basic", 5) == 0))
    {
        basic = 1;

    } else if (auth->len == 4 && ngx_strncmp(auth->data, "body", 4) == 0) {
        basic = 0;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": auth=\"%V\" is "
                           "neither \"basic\" (HTTP Basic auth, the "
                           "default) nor \"body\" (client_id and "
                           "client_secret in the form)", &cred->name, auth);
        return NGX_CONF_ERROR;
    }

    oc = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_oauth2_cc_t));
    if (oc == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = oc;
    oc->token_url = *url;

    /* the form: grant_type, scope, audience, and the client in auth=body */

    len = sizeof(grant) - 1;

    if (scope) {
        len += sizeof("&scope=") - 1 + ngx_cloudauth_form_escape_len(scope);
    }

    if (audience) {
        len += sizeof("&audience=") - 1
               + ngx_cloudauth_form_escape_len(audience);
    }

    if (!basic) {
        len += sizeof("&client_id=") - 1
               + ngx_cloudauth_form_escape_len(client)
               + sizeof("&client_secret=") - 1
               + ngx_cloudauth_form_escape_len(&secret);
    }

    oc->body.data = ngx_pnalloc(cf->pool, len);
    if (oc->body.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(oc->body.data, grant, sizeof(grant) - 1);

    if (scope) {
        p = ngx_cloudauth_oauth2_field(p, "scope", scope);
    }

    if (audience) {
        p = ngx_cloudauth_oauth2_field(p, "audience", audience);
    }

    if (!basic) {
        p = ngx_cloudauth_oauth2_field(p, "client_id", client);
        p = ngx_cloudauth_oauth2_field(p, "client_secret", &secret);
    }

    oc->body.len = p - oc->body.data;

    if (basic) {
        oc->userpwd.len = ngx_cloudauth_form_escape_len(client) + 1
                          + ngx_cloudauth_form_escape_len(&secret);
        oc->userpwd.data = ngx_pnalloc(cf->pool, oc->userpwd.len);
        if (oc->userpwd.data == NULL) {
            return NGX_CONF_ERROR;
        }

        p = ngx_cloudauth_form_escape(oc->userpwd.data, client);
        *p++ = ':';
        (void) ngx_cloudauth_form_escape(p, &secret);
    }

    ngx_str_null(&none);

    parts[0] = oc->token_url;
    parts[1] = *client;
    parts[2] = secret;
    parts[3] = scope ? *scope : none;
    parts[4] = audience ? *audience : none;
    parts[5] = basic ? oc->userpwd : none;

    return ngx_cloudauth_fingerprint(cred, parts, 6);
}


static u_char *
ngx_cloudauth_oauth2_field(u_char *p, char *name, ngx_str_t *value)
{
    *p++ = '&';
    p = ngx_cpymem(p, name, ngx_strlen(name));
    *p++ = '=';

    return ngx_cloudauth_form_escape(p, value);
}


static ngx_int_t
ngx_cloudauth_oauth2_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    ngx_cloudauth_oauth2_cc_t  *oc;

    oc = cred->data;

    req->url = oc->token_url;
    req->userpwd = oc->userpwd;

    if (ngx_cloudauth_set_body(pool, req, oc->body.data, oc->body.len,
                               NGX_CLOUDAUTH_FORM)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_cloudauth_header_printf(pool, req, "Accept: application/json");
}


static ngx_int_t
ngx_cloudauth_oauth2_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    return ngx_cloudauth_oauth_parse(a, pool, res, "access_token");
}
