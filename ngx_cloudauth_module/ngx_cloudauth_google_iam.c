
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * IAM Credentials generateAccessToken, as google_impersonate and the
 * external account's impersonation call it: the body {"scope": [...],
 * "lifetime": "Ns"} made at configuration time, the request with the
 * source credential's token, the answer {"accessToken", "expireTime"}.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


static time_t ngx_cloudauth_parse_rfc3339(const char *s);


/* scopes=a,b and a lifetime in seconds: the body's text, in cf->pool */

char *
ngx_cloudauth_google_iam_body(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_str_t *scopes, time_t lifetime, ngx_str_t *body)
{
    u_char  *p, *last, *start, life[NGX_TIME_T_LEN + 2];
    char    *text;
    json_t  *json, *list;

    (void) ngx_sprintf(life, "%Ts%Z", lifetime);

    list = json_array();
    json = list ? json_pack("{s:o, s:s}", "scope", list, "lifetime",
                            (char *) life)
                : NULL;

    if (json == NULL) {
        return NGX_CONF_ERROR;
    }

    last = scopes->data + scopes->len;

    for (start = scopes->data; start < last; start = p + 1) {
        p = ngx_strlchr(start, last, ',');
        if (p == NULL) {
            p = last;
        }

        if (p > start
            && json_array_append_new(list,
                                     json_stringn((char *) start, p - start))
               != 0)
        {
            json_decref(json);
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": scopes= must "
                               "be UTF-8", &cred->name);
            return NGX_CONF_ERROR;
        }
    }

    text = json_dumps(json, JSON_COMPACT);

    json_decref(json);

    if (text == NULL) {
        return NGX_CONF_ERROR;
    }

    body->len = ngx_strlen(text);
    body->data = ngx_pnalloc(cf->pool, body->len);

    if (body->data) {
        ngx_memcpy(body->data, text, body->len);
    }

    free(text);

    return body->data ? NGX_CONF_OK : NGX_CONF_ERROR;
}


/* POST the body to the URL, authorised by the source credential's token */

ngx_int_t
ngx_cloudauth_google_iam_build(ngx_str_t *url, ngx_str_t *body,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req)
{
    req->url = *url;

    if (ngx_cloudauth_set_body(pool, req, body->data, body->len,
                               NGX_CLOUDAUTH_JSON)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_cloudauth_header_printf(pool, req, "Authorization: Bearer %V",
                                       &req->source_token);
}


ngx_int_t
ngx_cloudauth_google_iam_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    time_t         expires;
    json_t        *json;
    const char    *s;
    json_error_t   jerr;

    if (ngx_cloudauth_oauth_parse(a, pool, res, "accessToken") != NGX_OK) {
        return NGX_ERROR;
    }

    /* 200 and a token: its lifetime is in "expireTime" */

    json = json_loadb((char *) a->body.data, a->body.len, 0, &jerr);
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
