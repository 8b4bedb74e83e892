
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_impersonate: IAM Credentials generateAccessToken for a target
 * service account, authorised by the token of another credential ("source"):
 * one held key, many service accounts.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


typedef struct {
    ngx_str_t      url;
    json_t        *body;       /* {"scope": [...], "lifetime": "3600s"} */
    char          *text;
} ngx_cloudauth_impersonate_t;


static char *ngx_cloudauth_google_impersonate_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_google_impersonate_build(
    ngx_cloudauth_cred_t *cred, ngx_str_t *subject, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, ngx_log_t *log);
static ngx_int_t ngx_cloudauth_google_impersonate_parse(
    ngx_cloudauth_cred_t *cred, ngx_cloudauth_fetch_t *f, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res);
static void ngx_cloudauth_google_impersonate_cleanup(void *data);
static time_t ngx_cloudauth_parse_rfc3339(const char *s);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_impersonate = {
    ngx_string("google_impersonate"),       /* type= */
    0,                                      /* no subjects */
    ngx_cloudauth_google_impersonate_init,  /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_google_impersonate_build, /* build: the token request */
    ngx_cloudauth_google_impersonate_parse  /* parse: the answer */
};


static char *
ngx_cloudauth_google_impersonate_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred)
{
    u_char                       *p, *last, *start;
    json_t                       *scopes;
    ngx_str_t                    *source, *target, *scope, endpoint, parts[3];
    ngx_pool_cleanup_t           *cln;
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

    scopes = json_array();
    im->body = json_pack("{s:o, s:s}", "scope", scopes, "lifetime", "3600s");

    if (im->body == NULL) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        json_decref(im->body);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_cloudauth_google_impersonate_cleanup;
    cln->data = im;

    last = scope->data + scope->len;

    for (start = scope->data; start < last; start = p + 1) {
        p = ngx_strlchr(start, last, ',');
        if (p == NULL) {
            p = last;
        }

        if (p > start
            && json_array_append_new(scopes,
                                     json_stringn((char *) start, p - start))
               != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": scopes= must "
                               "be UTF-8", &cred->name);
            return NGX_CONF_ERROR;
        }
    }

    im->text = json_dumps(im->body, JSON_COMPACT);
    if (im->text == NULL) {
        return NGX_CONF_ERROR;
    }

    parts[0] = cred->source->name;
    parts[1] = im->url;
    parts[2].data = (u_char *) im->text;
    parts[2].len = ngx_strlen(im->text);

    return ngx_cloudauth_fingerprint(cred, parts, 3);
}


static void
ngx_cloudauth_google_impersonate_cleanup(void *data)
{
    ngx_cloudauth_impersonate_t  *im = data;

    json_decref(im->body);
    free(im->text);
}


static ngx_int_t
ngx_cloudauth_google_impersonate_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log)
{
    ngx_cloudauth_impersonate_t  *im;

    im = cred->data;

    req->url = im->url;

    if (ngx_cloudauth_set_body(pool, req, (u_char *) im->text,
                               ngx_strlen(im->text), NGX_CLOUDAUTH_JSON)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_cloudauth_header_printf(pool, req, "Authorization: Bearer %V",
                                       &req->source_token);
}


static ngx_int_t
ngx_cloudauth_google_impersonate_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_fetch_t *f, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    time_t         expires;
    json_t        *json;
    const char    *s;
    json_error_t   jerr;

    if (ngx_cloudauth_oauth_parse(f, pool, res, "accessToken") != NGX_OK) {
        return NGX_ERROR;
    }

    /* 200 and a token: its lifetime is in "expireTime" */

    json = json_loadb((char *) f->body, f->body_len, 0, &jerr);
    s = json_string_value(json_object_get(json, "expireTime"));

    expires = s ? ngx_cloudauth_parse_rfc3339(s) : NGX_ERROR;

    if (json) {
        json_decref(json);
    }

    if (expires == NGX_ERROR || expires <= ngx_time()
        || expires - ngx_time() > 365 * 86400)
    {
        ngx_str_set(&res->error, "malformed answer: bad expireTime");
        return NGX_ERROR;
    }

    res->expires_in = expires - ngx_time();

    return NGX_OK;
}


/* "2026-11-22T16:00:00Z", "2026-11-22T16:00:00.123456Z" */

static time_t
ngx_cloudauth_parse_rfc3339(const char *s)
{
    int         n, y, mo, d, h, mi, sec;
    time_t      days;
    const char *p;

    n = 0;

    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec,
               &n)
        != 6 || n == 0)
    {
        return NGX_ERROR;
    }

    p = s + n;

    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++) { /* void */ }
    }

    if (*p != 'Z' || p[1] != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31
        || h > 23 || mi > 59 || sec > 60 || y < 1970)
    {
        return NGX_ERROR;
    }

    /* days from the civil date, as ngx_parse_http_time() does */

    mo -= 1;

    if (--mo <= 0) {
        mo += 12;
        y -= 1;
    }

    days = (time_t) 365 * y + y / 4 - y / 100 + y / 400 + 367 * mo / 12 - 30
           + d - 1 - 719527 + 31 + 28;

    return days * 86400 + h * 3600 + mi * 60 + sec;
}
