
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * JSON Web Tokens: base64url(header) "." base64url(claims) "." signature,
 * signed with RS256 (a private key) or HS256 (a shared secret).
 */


#include "ngx_cloudauth.h"

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
