
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * JSON Web Tokens: base64url(header) "." base64url(claims) "." signature,
 * signed with RS256 (a private key) or HS256 (a shared secret); and the
 * "exp" claim of one someone else signed, read (never verified).
 */


#include "ngx_cloudauth.h"

#include <openssl/hmac.h>
#include <jansson.h>


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


/*
 * The "exp" claim of a JWT, or NGX_DECLINED when it is not one with exp.
 * The claims are decoded into the pool and wiped once read: an ID token or
 * a subject token is a bearer credential.
 */

ngx_int_t
ngx_cloudauth_jwt_exp(ngx_str_t *jwt, ngx_pool_t *pool, time_t *exp)
{
    u_char        *p, *last;
    json_t        *json, *v;
    ngx_str_t      src, dst;
    ngx_int_t      rc;
    json_error_t   jerr;

    p = ngx_strlchr(jwt->data, jwt->data + jwt->len, '.');
    if (p == NULL) {
        return NGX_DECLINED;
    }

    src.data = ++p;
    last = ngx_strlchr(p, jwt->data + jwt->len, '.');
    if (last == NULL) {
        return NGX_DECLINED;
    }

    src.len = last - p;

    dst.data = ngx_pnalloc(pool, ngx_base64_decoded_length(src.len) + 1);
    if (dst.data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64url(&dst, &src) != NGX_OK) {
        return NGX_DECLINED;
    }

    json = json_loadb((char *) dst.data, dst.len, 0, &jerr);

    ngx_explicit_memzero(dst.data, dst.len);

    if (json == NULL) {
        return NGX_DECLINED;
    }

    v = json_object_get(json, "exp");
    rc = NGX_DECLINED;

    if (json_is_integer(v)) {
        *exp = (time_t) json_integer_value(v);
        rc = NGX_OK;
    }

    json_decref(json);

    return rc;
}
