
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_service_account: an RS256 JWT assertion signed with the
 * service account's key, exchanged at Google's token endpoint for an
 * access token (RFC 7523, "jwt-bearer"), with domain-wide delegation
 * through the "sub" claim.
 *
 * Loading the JSON key and making the assertion are shared with
 * type=google_id_token.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>
#include <openssl/pem.h>


typedef struct {
    ngx_cloudauth_google_key_t   key;
    ngx_str_t                    scope;       /* space-separated */
} ngx_cloudauth_google_sa_t;


static char *ngx_cloudauth_google_sa_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_google_sa_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_google_sa_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);
static void ngx_cloudauth_google_key_cleanup(void *data);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_sa = {
    ngx_string("google_service_account"),   /* type= */
    1,                                      /* takes subjects */
    ngx_cloudauth_google_sa_init,           /* init: parameters, files */
    NULL,                                   /* sign: none, fetched */
    ngx_cloudauth_google_sa_build,          /* build: the token request */
    ngx_cloudauth_google_sa_parse,          /* parse: the answer */
    1                                       /* quota: quota_project= */
};


static char *
ngx_cloudauth_google_sa_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                     *p;
    ngx_str_t                  *v, parts[4];
    ngx_cloudauth_google_sa_t  *sa;

    sa = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_google_sa_t));
    if (sa == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = sa;

    if (ngx_cloudauth_google_key_load(cf, cred, &sa->key) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    /* the key file's quota project; quota_project= may override it */

    if (sa->key.quota_project.len
        && ngx_cloudauth_quota_project(cf, cred,
                                       (char *) sa->key.quota_project.data,
                                       "key_file's \"quota_project_id\"")
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    v = ngx_cloudauth_param(cred, "scopes");
    if (v == NULL || v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"scopes=\" is "
                           "required, e.g. scopes=https://www.googleapis.com/"
                           "auth/cloud-platform", &cred->name);
        return NGX_CONF_ERROR;
    }

    sa->scope.len = v->len;
    sa->scope.data = ngx_pnalloc(cf->pool, v->len);
    if (sa->scope.data == NULL) {
        return NGX_CONF_ERROR;
    }

    for (p = v->data; p < v->data + v->len; p++) {
        sa->scope.data[p - v->data] = (*p == ',') ? ' ' : *p;
    }

    parts[0] = sa->key.email;
    parts[1] = sa->key.key_id;
    parts[2] = sa->scope;
    parts[3] = sa->key.token_url;

    return ngx_cloudauth_fingerprint(cred, parts, 4);
}


static ngx_int_t
ngx_cloudauth_google_sa_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    ngx_cloudauth_google_sa_t  *sa;

    sa = cred->data;

    return ngx_cloudauth_google_assertion(cred, &sa->key, "scope", &sa->scope,
                                          subject, pool, req, log);
}


static ngx_int_t
ngx_cloudauth_google_sa_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    return ngx_cloudauth_oauth_parse(a, pool, res, "access_token");
}


static char *
ngx_cloudauth_google_key_dup(ngx_conf_t *cf, json_t *json, const char *key,
    ngx_str_t *out)
{
    json_t  *v;

    v = json_object_get(json, key);

    if (!json_is_string(v) || json_string_length(v) == 0) {
        return NGX_CONF_ERROR;
    }

    out->len = json_string_length(v);
    out->data = ngx_pnalloc(cf->pool, out->len + 1);
    if (out->data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(out->data, json_string_value(v), out->len + 1);

    return NGX_CONF_OK;
}


/*
 * key_file= (a service account's JSON key) and token_url= (by default the
 * key's token_uri)
 */

char *
ngx_cloudauth_google_key_load(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_google_key_t *gk)
{
    char                *err;
    BIO                 *bio;
    json_t              *json;
    ngx_str_t           *v, path, text, pem;
    const char          *type, *why;
    json_error_t         jerr;
    ngx_pool_cleanup_t  *cln;

    v = ngx_cloudauth_param(cred, "key_file");
    if (v == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"key_file=\" is "
                           "required: the path of the service account's "
                           "JSON key", &cred->name);
        return NGX_CONF_ERROR;
    }

    path = *v;

    if (ngx_cloudauth_read_file(cf, cred, &path, &text, &err) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": key_file \"%V\": %s",
                           &cred->name, &path, err);
        return NGX_CONF_ERROR;
    }

    json = json_loadb((char *) text.data, text.len, 0, &jerr);
    ngx_explicit_memzero(text.data, text.len);

    why = NULL;

    if (json == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": key_file \"%V\": "
                           "not JSON (line %d: %s); download the key again "
                           "from the Google Cloud console",
                           &cred->name, &path, jerr.line, jerr.text);
        return NGX_CONF_ERROR;
    }

    type = json_string_value(json_object_get(json, "type"));

    if (type == NULL || ngx_strcmp(type, "service_account") != 0) {
        why = "\"type\" is not \"service_account\"; this needs a service "
              "account key";

    } else if (ngx_cloudauth_google_key_dup(cf, json, "client_email",
                                            &gk->email)
               != NGX_CONF_OK)
    {
        why = "no \"client_email\"";

    } else if (ngx_cloudauth_google_key_dup(cf, json, "private_key", &pem)
               != NGX_CONF_OK)
    {
        why = "no \"private_key\"";
    }

    if (why == NULL) {
        (void) ngx_cloudauth_google_key_dup(cf, json, "private_key_id",
                                            &gk->key_id);
        (void) ngx_cloudauth_google_key_dup(cf, json, "token_uri",
                                            &gk->token_url);
        (void) ngx_cloudauth_google_key_dup(cf, json, "quota_project_id",
                                            &gk->quota_project);

        bio = BIO_new_mem_buf(pem.data, (int) pem.len);
        if (bio) {
            gk->key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
            BIO_free(bio);
        }

        ngx_explicit_memzero(pem.data, pem.len);

        if (gk->key == NULL) {
            why = "\"private_key\" is not a PEM private key OpenSSL can load";

        } else if (EVP_PKEY_base_id(gk->key) != EVP_PKEY_RSA) {
            why = "\"private_key\" is not an RSA key";
        }
    }

    json_decref(json);

    if (gk->key) {
        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            EVP_PKEY_free(gk->key);
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_cloudauth_google_key_cleanup;
        cln->data = gk->key;
    }

    if (why) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": key_file \"%V\": %s",
                           &cred->name, &path, why);
        return NGX_CONF_ERROR;
    }

    v = ngx_cloudauth_param(cred, "token_url");
    if (v) {
        gk->token_url = *v;
    }

    if (gk->token_url.len == 0) {
        ngx_str_set(&gk->token_url, "https://oauth2.googleapis.com/token");
    }

    return ngx_cloudauth_check_url(cf, cred, "token_url", &gk->token_url, 0);
}


static void
ngx_cloudauth_google_key_cleanup(void *data)
{
    EVP_PKEY_free(data);
}


/*
 * The jwt-bearer token request: an assertion with the claims iss, aud,
 * iat, exp, the kind's own claim (scope, target_audience), and sub when
 * there is a subject.
 */

ngx_int_t
ngx_cloudauth_google_assertion(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_google_key_t *gk, const char *claim, ngx_str_t *value,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log)
{
    char       *header, *claims;
    u_char     *p;
    json_t     *h, *c;
    time_t      now;
    ngx_int_t   rc;
    ngx_str_t   jwt;

    static u_char  grant[] = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3A"
                             "grant-type%3Ajwt-bearer&assertion=";

    now = ngx_time();

    h = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
    c = json_pack("{s:s%, s:s%, s:s%, s:I, s:I}",
                  "iss", gk->email.data, gk->email.len,
                  claim, value->data, value->len,
                  "aud", gk->token_url.data, gk->token_url.len,
                  "iat", (json_int_t) now,
                  "exp", (json_int_t) now + 3600);

    if (h == NULL || c == NULL) {
        goto failed;
    }

    /*
     * json_object_set_new() fails when json_stringn() did (a subject that
     * is not UTF-8): then no assertion at all, never one without its "sub"
     */

    if (gk->key_id.len
        && json_object_set_new(h, "kid",
                               json_stringn((char *) gk->key_id.data,
                                            gk->key_id.len))
           != 0)
    {
        goto failed;
    }

    if (subject->len
        && json_object_set_new(c, "sub",
                               json_stringn((char *) subject->data,
                                            subject->len))
           != 0)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: credential \"%V\": the subject cannot be "
                      "put into the assertion", &cred->name);
        goto failed;
    }

    header = json_dumps(h, JSON_COMPACT);
    claims = json_dumps(c, JSON_COMPACT);

    json_decref(h);
    json_decref(c);

    if (header == NULL || claims == NULL) {
        free(header);
        free(claims);
        return NGX_ERROR;
    }

    rc = ngx_cloudauth_jwt_rs256(pool, gk->key, header, claims, &jwt);

    free(header);
    free(claims);

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: credential \"%V\": RS256 signing failed",
                      &cred->name);
        return NGX_ERROR;
    }

    req->url = gk->token_url;

    req->body.len = sizeof(grant) - 1 + jwt.len;
    req->body.data = ngx_pnalloc(pool, req->body.len);
    if (req->body.data == NULL) {
        return NGX_ERROR;
    }

    /* base64url needs no escaping in a form */
    p = ngx_cpymem(req->body.data, grant, sizeof(grant) - 1);
    ngx_memcpy(p, jwt.data, jwt.len);

    return ngx_cloudauth_header_printf(pool, req, NGX_CLOUDAUTH_FORM);

failed:

    if (h) {
        json_decref(h);
    }

    if (c) {
        json_decref(c);
    }

    return NGX_ERROR;
}
