
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_external_account: workload identity federation, keyless.
 * A subject token (a file, or a URL) is exchanged at Google's STS for a
 * federated access token (RFC 8693), which may in turn authorise IAM
 * Credentials generateAccessToken for a service account.
 *
 * Each outbound step is a credential of its own, so that the engine gives
 * each its cache entry, single flight, refresh ahead and back-off:
 *
 *   NAME.subject  (credential_source.url only) GET the URL: the subject
 *                 token, cached for 2 s, so that every exchange fetches it
 *                 afresh
 *   NAME.sts      (with service_account_impersonation_url) the exchange,
 *                 its source NAME.subject, if any
 *   NAME          the impersonation, its source NAME.sts; without an
 *                 impersonation URL, NAME is the exchange itself
 *
 * The internal credentials are made here, at configuration time, and
 * registered like the others (the status page shows them); their names
 * have a ".", which no cloudauth_credential name can have.  A subject
 * token from a file is read in the worker for each exchange and never
 * stored.
 *
 * This file holds the run-time steps; the configuration file is read by
 * ngx_cloudauth_kind_google_external_account_conf.c.
 */


#include "ngx_cloudauth_google_ea.h"

#include <jansson.h>


static ngx_int_t ngx_cloudauth_ea_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_ea_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);
static ngx_int_t ngx_cloudauth_ea_sts_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_ea_sts_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);
static ngx_int_t ngx_cloudauth_ea_exchange(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_ea_sts_t *st, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, ngx_log_t *log);
static ngx_int_t ngx_cloudauth_ea_url_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_ea_url_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_external_account = {
    ngx_string("google_external_account"),
    0,
    ngx_cloudauth_ea_init,
    NULL,
    ngx_cloudauth_ea_build,
    ngx_cloudauth_ea_parse,
    1
};


/* the internal kinds: made here only, never named by type= */

ngx_cloudauth_kind_t  ngx_cloudauth_ea_sts_kind = {
    ngx_string("google_sts"),
    0,
    NULL,
    NULL,
    ngx_cloudauth_ea_sts_build,
    ngx_cloudauth_ea_sts_parse,
    0
};


ngx_cloudauth_kind_t  ngx_cloudauth_ea_url_kind = {
    ngx_string("subject_token_url"),
    0,
    NULL,
    NULL,
    ngx_cloudauth_ea_url_build,
    ngx_cloudauth_ea_url_parse,
    0
};


/* the outer credential: the exchange, or the impersonation */

static ngx_int_t
ngx_cloudauth_ea_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    ngx_cloudauth_ea_t  *ea;

    ea = cred->data;

    if (ea->sts) {
        return ngx_cloudauth_ea_exchange(cred, ea->sts, pool, req, log);
    }

    /* the call google_impersonate makes, with the exchange's token */

    return ngx_cloudauth_google_iam_build(&ea->url, &ea->body, pool, req);
}


static ngx_int_t
ngx_cloudauth_ea_parse(ngx_cloudauth_cred_t *cred, ngx_cloudauth_answer_t *a,
    ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    ngx_cloudauth_ea_t  *ea;

    ea = cred->data;

    if (ea->sts) {
        return ngx_cloudauth_oauth_parse(a, pool, res, "access_token");
    }

    /* {"accessToken", "expireTime"}, read as google_impersonate reads it */

    return ngx_cloudauth_google_iam_parse(cred, a, pool, res);
}


/* NAME.sts */

static ngx_int_t
ngx_cloudauth_ea_sts_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    return ngx_cloudauth_ea_exchange(cred, cred->data, pool, req, log);
}


static ngx_int_t
ngx_cloudauth_ea_sts_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    return ngx_cloudauth_oauth_parse(a, pool, res, "access_token");
}


/*
 * The exchange: the subject token, read from its file now (or fetched by
 * the source credential just before), appended to the form.  The body is
 * wiped by the engine once curl has its copy; what was read is wiped here.
 */

static ngx_int_t
ngx_cloudauth_ea_exchange(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_ea_sts_t *st, ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    u_char       *p;
    char         *err;
    time_t        exp;
    ngx_err_t     errn;
    ngx_str_t     raw, token;
    ngx_int_t     rc;
    struct stat   sb;

    ngx_str_null(&raw);

    if (st->path.len) {
        if (ngx_cloudauth_read_small(st->path.data, pool, &raw, &sb, &err,
                                     &errn, log)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, log, errn,
                          "cloudauth: credential \"%V\": subject token "
                          "file \"%V\": %s", &cred->name, &st->path, err);
            return NGX_ERROR;
        }

        err = ngx_cloudauth_answer_field(&raw, &st->field, pool, &token);

        if (err) {
            ngx_explicit_memzero(raw.data, raw.len);
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "cloudauth: credential \"%V\": subject token "
                          "file \"%V\": %s", &cred->name, &st->path, err);
            return NGX_ERROR;
        }

    } else {
        token = req->source_token;

        if (token.len == 0) {
            return NGX_ERROR;
        }
    }

    rc = NGX_ERROR;

    if (st->jwt && ngx_cloudauth_jwt_exp(&token, pool, &exp) == NGX_OK
        && exp <= ngx_time())
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: credential \"%V\": the subject token%s%V%s "
                      "expired %T s ago; not sent to the token endpoint",
                      &cred->name, st->path.len ? " in \"" : "",
                      &st->path, st->path.len ? "\"" : "",
                      ngx_time() - exp);
        goto done;
    }

    req->url = st->token_url;

    req->body.len = st->form.len + ngx_cloudauth_form_escape_len(&token);
    req->body.data = ngx_pnalloc(pool, req->body.len);
    if (req->body.data == NULL) {
        goto done;
    }

    p = ngx_cpymem(req->body.data, st->form.data, st->form.len);
    (void) ngx_cloudauth_form_escape(p, &token);

    if (ngx_cloudauth_header_printf(pool, req, NGX_CLOUDAUTH_FORM) != NGX_OK
        || ngx_cloudauth_header_printf(pool, req, "Accept: application/json")
           != NGX_OK)
    {
        goto done;
    }

    rc = NGX_OK;

done:

    if (raw.len) {
        ngx_explicit_memzero(raw.data, raw.len);

        if (token.data < raw.data || token.data >= raw.data + raw.len) {
            ngx_explicit_memzero(token.data, token.len);
        }
    }

    return rc;
}


/* NAME.subject: GET the URL with its headers */

static ngx_int_t
ngx_cloudauth_ea_url_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    char                   **h;
    ngx_uint_t               i;
    ngx_cloudauth_ea_url_t  *eu;

    eu = cred->data;

    req->url = eu->url;
    ngx_str_set(&req->method, "GET");

    h = eu->headers.elts;

    for (i = 0; i < eu->headers.nelts; i++) {
        if (ngx_cloudauth_header_printf(pool, req, "%s", h[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The subject token as the engine's "token" of NAME.subject: at most 8 KiB
 * of printable ASCII, kept for NGX_CLOUDAUTH_EA_SUBJECT_LIFE seconds, long
 * enough for the exchange that asked for it to take it.
 */

static ngx_int_t
ngx_cloudauth_ea_url_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    char                    *err;
    size_t                   i;
    ngx_str_t                raw;
    ngx_cloudauth_ea_url_t  *eu;

    eu = cred->data;

    if (a->status != 200) {
        /* a transport error, or the server's words */
        return ngx_cloudauth_oauth_parse(a, pool, res, "token");
    }

    raw = a->body;

    err = ngx_cloudauth_answer_field(&raw, &eu->field, pool, &res->token);

    if (err) {
        res->error.len = ngx_strlen(err) + sizeof("malformed answer: ") - 1;
        res->error.data = ngx_pnalloc(pool, res->error.len);
        if (res->error.data == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(res->error.data, "malformed answer: %s", err);
        return NGX_ERROR;
    }

    if (res->token.len > NGX_CLOUDAUTH_MAX_TOKEN) {
        ngx_str_set(&res->error, "subject token larger than 8 KiB");
        res->terminal = 1;
        goto failed;
    }

    for (i = 0; i < res->token.len; i++) {
        if (res->token.data[i] <= 0x20 || res->token.data[i] >= 0x7f) {
            ngx_str_set(&res->error, "subject token with invalid "
                                     "characters");
            goto failed;
        }
    }

    res->expires_in = NGX_CLOUDAUTH_EA_SUBJECT_LIFE;

    return NGX_OK;

failed:

    ngx_explicit_memzero(res->token.data, res->token.len);
    ngx_str_null(&res->token);

    return NGX_ERROR;
}
