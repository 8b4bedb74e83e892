
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * JSON Web Tokens: base64url(header) "." base64url(claims) "." signature,
 * signed with RS256 (a private key) or HS256 (a shared secret).
 */


#include "ngx_cloudauth.h"

#include <jansson.h>
#include <openssl/hmac.h>


static u_char *ngx_cloudauth_jwt_input(ngx_pool_t *pool, const char *header,
    const char *claims, size_t sig_len, ngx_str_t *jwt);
static void ngx_cloudauth_jwt_finish(ngx_str_t *jwt, u_char *sig,
    size_t sig_len);


ngx_int_t
ngx_cloudauth_jwt_rs256(ngx_pool_t *pool, EVP_PKEY *key, const char *header,
    const char *claims, ngx_str_t *jwt)
{
    u_char      *sig;
    size_t       sig_len;
    ngx_int_t    rc;
    EVP_MD_CTX  *md;

    sig_len = EVP_PKEY_size(key);

    sig = ngx_cloudauth_jwt_input(pool, header, claims, sig_len, jwt);
    if (sig == NULL) {
        return NGX_ERROR;
    }

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1
        && EVP_DigestSign(md, sig, &sig_len, jwt->data, jwt->len) == 1)
    {
        ngx_cloudauth_jwt_finish(jwt, sig, sig_len);
        rc = NGX_OK;
    }

    EVP_MD_CTX_free(md);

    return rc;
}


ngx_int_t
ngx_cloudauth_jwt_hs256(ngx_pool_t *pool, ngx_str_t *secret,
    const char *header, const char *claims, ngx_str_t *jwt)
{
    u_char        *sig;
    unsigned int   sig_len;

    sig = ngx_cloudauth_jwt_input(pool, header, claims, EVP_MAX_MD_SIZE, jwt);
    if (sig == NULL) {
        return NGX_ERROR;
    }

    if (HMAC(EVP_sha256(), secret->data, (int) secret->len, jwt->data,
             jwt->len, sig, &sig_len)
        == NULL)
    {
        return NGX_ERROR;
    }

    ngx_cloudauth_jwt_finish(jwt, sig, sig_len);

    return NGX_OK;
}


/*
 * Seconds until the "exp" claim of a JWT someone else signed (an ID token
 * we hand on, not one we trust): its lifetime in the cache.
 */

ngx_int_t
ngx_cloudauth_jwt_expires_in(ngx_str_t *jwt, time_t *expires_in)
{
    u_char        *p, *last, buf[4096];
    json_t        *json, *exp;
    ngx_str_t      src, dst;
    json_int_t     n;
    json_error_t   jerr;

    p = ngx_strlchr(jwt->data, jwt->data + jwt->len, '.');
    if (p == NULL) {
        return NGX_ERROR;
    }

    src.data = ++p;
    last = ngx_strlchr(p, jwt->data + jwt->len, '.');
    if (last == NULL) {
        return NGX_ERROR;
    }

    src.len = last - p;

    if (ngx_base64_decoded_length(src.len) > sizeof(buf)) {
        return NGX_ERROR;
    }

    dst.data = buf;

    if (ngx_decode_base64url(&dst, &src) != NGX_OK) {
        return NGX_ERROR;
    }

    json = json_loadb((char *) dst.data, dst.len, 0, &jerr);
    if (json == NULL) {
        return NGX_ERROR;
    }

    exp = json_object_get(json, "exp");
    n = json_is_integer(exp) ? json_integer_value(exp) : 0;

    json_decref(json);

    n -= ngx_time();

    if (n <= 0 || n > 365 * 86400) {
        return NGX_ERROR;
    }

    *expires_in = (time_t) n;

    return NGX_OK;
}


/*
 * Lays out "header.claims" in one buffer with room for ".signature" after
 * it; returns where the raw signature may be written (past the room).
 */

static u_char *
ngx_cloudauth_jwt_input(ngx_pool_t *pool, const char *header,
    const char *claims, size_t sig_len, ngx_str_t *jwt)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   src, dst;

    len = ngx_base64_encoded_length(ngx_strlen(header)) + 1
          + ngx_base64_encoded_length(ngx_strlen(claims)) + 1
          + ngx_base64_encoded_length(sig_len);

    p = ngx_pnalloc(pool, len + sig_len);
    if (p == NULL) {
        return NULL;
    }

    jwt->data = p;

    src.data = (u_char *) header;
    src.len = ngx_strlen(header);
    dst.data = p;
    ngx_encode_base64url(&dst, &src);
    p += dst.len;

    *p++ = '.';

    src.data = (u_char *) claims;
    src.len = ngx_strlen(claims);
    dst.data = p;
    ngx_encode_base64url(&dst, &src);
    p += dst.len;

    jwt->len = p - jwt->data;

    return jwt->data + len;
}


static void
ngx_cloudauth_jwt_finish(ngx_str_t *jwt, u_char *sig, size_t sig_len)
{
    ngx_str_t  src, dst;

    jwt->data[jwt->len++] = '.';

    src.data = sig;
    src.len = sig_len;
    dst.data = jwt->data + jwt->len;
    ngx_encode_base64url(&dst, &src);

    jwt->len += dst.len;
}
