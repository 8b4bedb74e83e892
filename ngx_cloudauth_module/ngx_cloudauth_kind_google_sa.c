
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_service_account: an RS256 JWT assertion signed with the
 * service account's key, exchanged at Google's token endpoint for an
 * access token (RFC 7523, "jwt-bearer"), with domain-wide delegation
 * through the "sub" claim.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>
#include <openssl/pem.h>


typedef struct {
    EVP_PKEY      *key;
    ngx_str_t      email;
    ngx_str_t      key_id;
    ngx_str_t      scope;       /* space-separated */
    ngx_str_t      token_url;
} ngx_cloudauth_google_sa_t;


static char *ngx_cloudauth_google_sa_init(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static ngx_int_t ngx_cloudauth_google_sa_build(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);
static ngx_int_t ngx_cloudauth_google_sa_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_fetch_t *f, ngx_pool_t *pool, ngx_cloudauth_result_t *res);
static void ngx_cloudauth_google_sa_cleanup(void *data);


ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_sa = {
    ngx_string("google_service_account"),
    1,
    ngx_cloudauth_google_sa_init,
    NULL,
    ngx_cloudauth_google_sa_build,
    ngx_cloudauth_google_sa_parse
};


static char *
ngx_cloudauth_google_sa_dup(ngx_conf_t *cf, json_t *json, const char *key,
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


static char *
ngx_cloudauth_google_sa_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    u_char                     *p;
    char                       *err;
    BIO                        *bio;
    json_t                     *json;
    ngx_str_t                  *v, path, text, pem, parts[4];
    const char                 *type, *why;
    json_error_t                jerr;
    ngx_pool_cleanup_t         *cln;
    ngx_cloudauth_google_sa_t  *sa;

    sa = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_google_sa_t));
    if (sa == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = sa;

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

    } else if (ngx_cloudauth_google_sa_dup(cf, json, "client_email",
                                           &sa->email)
               != NGX_CONF_OK)
    {
        why = "no \"client_email\"";

    } else if (ngx_cloudauth_google_sa_dup(cf, json, "private_key", &pem)
               != NGX_CONF_OK)
    {
        why = "no \"private_key\"";
    }

    if (why == NULL) {
        (void) ngx_cloudauth_google_sa_dup(cf, json, "private_key_id",
                                           &sa->key_id);
        (void) ngx_cloudauth_google_sa_dup(cf, json, "token_uri",
                                           &sa->token_url);

        bio = BIO_new_mem_buf(pem.data, (int) pem.len);
        if (bio) {
            sa->key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
            BIO_free(bio);
        }

        ngx_explicit_memzero(pem.data, pem.len);

        if (sa->key == NULL) {
            why = "\"private_key\" is not a PEM private key OpenSSL can load";

        } else if (EVP_PKEY_base_id(sa->key) != EVP_PKEY_RSA) {
            why = "\"private_key\" is not an RSA key";
        }
    }

    json_decref(json);

    if (sa->key) {
        cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == NULL) {
            EVP_PKEY_free(sa->key);
            return NGX_CONF_ERROR;
        }

        cln->handler = ngx_cloudauth_google_sa_cleanup;
        cln->data = sa->key;
    }

    if (why) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": key_file \"%V\": %s",
                           &cred->name, &path, why);
        return NGX_CONF_ERROR;
    }

    v = ngx_cloudauth_param(cred, "token_url");
    if (v) {
        sa->token_url = *v;
    }

    if (sa->token_url.len == 0) {
        ngx_str_set(&sa->token_url, "https://oauth2.googleapis.com/token");
    }

    if (ngx_cloudauth_check_url(cf, cred, "token_url", &sa->token_url, 0)
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

    parts[0] = sa->email;
    parts[1] = sa->key_id;
    parts[2] = sa->scope;
    parts[3] = sa->token_url;

    ngx_cloudauth_fingerprint(cred, parts, 4);

    return NGX_CONF_OK;
}


static void
ngx_cloudauth_google_sa_cleanup(void *data)
{
    EVP_PKEY_free(data);
}


static ngx_int_t
ngx_cloudauth_google_sa_build(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req, ngx_log_t *log)
{
    char                       *header, *claims;
    u_char                     *p;
    json_t                     *h, *c;
    time_t                      now;
    ngx_int_t                   rc;
    ngx_str_t                   jwt;
    ngx_cloudauth_google_sa_t  *sa;

    static u_char  grant[] = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3A"
                             "grant-type%3Ajwt-bearer&assertion=";

    sa = cred->data;
    now = ngx_time();

    h = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
    c = json_pack("{s:s%, s:s%, s:s%, s:I, s:I}",
                  "iss", sa->email.data, sa->email.len,
                  "scope", sa->scope.data, sa->scope.len,
                  "aud", sa->token_url.data, sa->token_url.len,
                  "iat", (json_int_t) now,
                  "exp", (json_int_t) now + 3600);

    if (h == NULL || c == NULL) {
        goto failed;
    }

    if (sa->key_id.len) {
        json_object_set_new(h, "kid", json_stringn((char *) sa->key_id.data,
                                                   sa->key_id.len));
    }

    if (subject->len) {
        json_object_set_new(c, "sub", json_stringn((char *) subject->data,
                                                   subject->len));
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

    rc = ngx_cloudauth_jwt_rs256(pool, sa->key, header, claims, &jwt);

    free(header);
    free(claims);

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: credential \"%V\": RS256 signing failed",
                      &cred->name);
        return NGX_ERROR;
    }

    req->url = sa->token_url;

    req->body.len = sizeof(grant) - 1 + jwt.len;
    req->body.data = ngx_pnalloc(pool, req->body.len);
    if (req->body.data == NULL) {
        return NGX_ERROR;
    }

    /* base64url needs no escaping in a form */
    p = ngx_cpymem(req->body.data, grant, sizeof(grant) - 1);
    ngx_memcpy(p, jwt.data, jwt.len);

    return ngx_cloudauth_add_header(pool, req, "Content-Type: "
                                    "application/x-www-form-urlencoded");

failed:

    if (h) {
        json_decref(h);
    }

    if (c) {
        json_decref(c);
    }

    return NGX_ERROR;
}


static ngx_int_t
ngx_cloudauth_google_sa_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_fetch_t *f, ngx_pool_t *pool, ngx_cloudauth_result_t *res)
{
    return ngx_cloudauth_oauth_parse(f, pool, res, "access_token");
}
