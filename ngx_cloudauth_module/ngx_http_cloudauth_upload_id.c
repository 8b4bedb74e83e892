
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The ID of a resumable upload, pure: what the gateway needs to
 * continue an upload (the GCS session URI, the bucket and object, the
 * declared length, the creation time, the client's Upload-Metadata), sealed
 * with AES-256-GCM under the upload key, what it is made for (the server's,
 * location's and credential's names) as additional data, and a fresh nonce
 * each, base64url.  The client holds it; the
 * gateway keeps nothing.  Anything that does not open is NGX_DECLINED, for
 * a 404: a forged, altered, truncated ID, another key, another location.
 *
 *   ID = base64url(version | nonce[12] | AES-256-GCM(fields) | tag[16])
 *   fields = created (8, big-endian) | length + 1 (8, 0: deferred)
 *            | for uri, bucket, name, metadata: len (2) | bytes
 */


#include "ngx_http_cloudauth_upload.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>


#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_VERSION  1
#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE    12
#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_TAG      16
#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_FIXED    16
#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_OVERHEAD                                \
    (1 + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_TAG)


static u_char *ngx_http_cloudauth_upload_id_put64(u_char *p, uint64_t v);
static uint64_t ngx_http_cloudauth_upload_id_get64(u_char **p);
static u_char *ngx_http_cloudauth_upload_id_put(u_char *p, ngx_str_t *s);
static ngx_int_t ngx_http_cloudauth_upload_id_get(u_char **p, u_char *last,
    ngx_str_t *s);
static ngx_int_t ngx_http_cloudauth_upload_id_aead(ngx_uint_t enc,
    u_char *key, u_char *nonce, ngx_str_t *aad, u_char *in, size_t len,
    u_char *out, u_char *tag);


/*
 * The AES key from the operator's key file (or the zone's random bytes):
 * HMAC-SHA256 of a label, so the file's bytes are never the cipher's key
 * as they are, and a future use of the same file gets another label
 */

ngx_int_t
ngx_http_cloudauth_upload_id_key(u_char *secret, size_t len, u_char *key)
{
    unsigned int  n;

    static u_char  label[] = "ngx_cloudauth upload id v1";

    n = 0;

    if (HMAC(EVP_sha256(), secret, (int) len, label, sizeof(label) - 1, key,
             &n)
        == NULL || n != NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* NGX_OK, NGX_DECLINED: a field is too long for an ID; NGX_ERROR */

ngx_int_t
ngx_http_cloudauth_upload_id_seal(ngx_pool_t *pool, u_char *key,
    ngx_str_t *aad, ngx_http_cloudauth_upload_id_t *id, ngx_str_t *out)
{
    u_char     *plain, *sealed, *p;
    size_t      len;
    ngx_str_t   src;

    if (id->uri.len > 0xffff || id->bucket.len > 0xffff
        || id->name.len > 0xffff || id->metadata.len > 0xffff)
    {
        return NGX_DECLINED;
    }

    len = NGX_HTTP_CLOUDAUTH_UPLOAD_ID_FIXED + 8 + id->uri.len
          + id->bucket.len + id->name.len + id->metadata.len;

    if (len > NGX_HTTP_CLOUDAUTH_UPLOAD_ID_PLAIN_MAX) {
        return NGX_DECLINED;
    }

    plain = ngx_pnalloc(pool, len);
    sealed = ngx_pnalloc(pool, len + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_OVERHEAD);
    if (plain == NULL || sealed == NULL) {
        return NGX_ERROR;
    }

    p = plain;
    p = ngx_http_cloudauth_upload_id_put64(p, (uint64_t) id->created);
    p = ngx_http_cloudauth_upload_id_put64(p, (uint64_t) (id->length + 1));
    p = ngx_http_cloudauth_upload_id_put(p, &id->uri);
    p = ngx_http_cloudauth_upload_id_put(p, &id->bucket);
    p = ngx_http_cloudauth_upload_id_put(p, &id->name);
    p = ngx_http_cloudauth_upload_id_put(p, &id->metadata);

    sealed[0] = NGX_HTTP_CLOUDAUTH_UPLOAD_ID_VERSION;

    if (RAND_bytes(sealed + 1, NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE) != 1) {
        return NGX_ERROR;
    }

    if (ngx_http_cloudauth_upload_id_aead(1, key, sealed + 1, aad, plain, len,
                               sealed + 1 + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE,
                               sealed + 1 + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE
                               + len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    src.data = sealed;
    src.len = len + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_OVERHEAD;

    out->data = ngx_pnalloc(pool, ngx_base64_encoded_length(src.len));
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_encode_base64url(out, &src);

    return NGX_OK;
}


static u_char *
ngx_http_cloudauth_upload_id_put64(u_char *p, uint64_t v)
{
    ngx_uint_t  i;

    for (i = 0; i < 8; i++) {
        *p++ = (u_char) (v >> (56 - 8 * i));
    }

    return p;
}


static uint64_t
ngx_http_cloudauth_upload_id_get64(u_char **p)
{
    uint64_t    v;
    ngx_uint_t  i;

    v = 0;

    for (i = 0; i < 8; i++) {
        v = (v << 8) | *(*p)++;
    }

    return v;
}


static u_char *
ngx_http_cloudauth_upload_id_put(u_char *p, ngx_str_t *s)
{
    *p++ = (u_char) (s->len >> 8);
    *p++ = (u_char) s->len;

    return ngx_cpymem(p, s->data, s->len);
}


/*
 * NGX_OK: the ID opened, its fields point into the pool; NGX_DECLINED: it
 * does not; NGX_ERROR.  The caller checks the times, the bucket, the URI.
 */

ngx_int_t
ngx_http_cloudauth_upload_id_open(ngx_pool_t *pool, u_char *key,
    ngx_str_t *aad, ngx_str_t *in, ngx_http_cloudauth_upload_id_t *id)
{
    u_char     *plain, *p, *last;
    size_t      len;
    uint64_t    v;
    ngx_str_t   raw, canon;

    if (in->len == 0 || in->len > NGX_HTTP_CLOUDAUTH_UPLOAD_ID_MAX) {
        return NGX_DECLINED;
    }

    raw.data = ngx_pnalloc(pool, ngx_base64_decoded_length(in->len));
    if (raw.data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64url(&raw, in) != NGX_OK
        || raw.len < NGX_HTTP_CLOUDAUTH_UPLOAD_ID_OVERHEAD
                     + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_FIXED + 8
        || raw.data[0] != NGX_HTTP_CLOUDAUTH_UPLOAD_ID_VERSION)
    {
        return NGX_DECLINED;
    }

    /* one spelling per ID: the unused bits of the last character are 0 */

    canon.data = ngx_pnalloc(pool, ngx_base64_encoded_length(raw.len));
    if (canon.data == NULL) {
        return NGX_ERROR;
    }

    ngx_encode_base64url(&canon, &raw);

    if (canon.len != in->len
        || ngx_memcmp(canon.data, in->data, in->len) != 0)
    {
        return NGX_DECLINED;
    }

    len = raw.len - NGX_HTTP_CLOUDAUTH_UPLOAD_ID_OVERHEAD;

    plain = ngx_pnalloc(pool, len);
    if (plain == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_cloudauth_upload_id_aead(0, key, raw.data + 1, aad,
                                raw.data + 1 + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE,
                                len, plain,
                                raw.data + 1 + NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE
                                + len)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    p = plain;
    last = plain + len;

    v = ngx_http_cloudauth_upload_id_get64(&p);

    if (v > (uint64_t) NGX_MAX_TIME_T_VALUE) {
        return NGX_DECLINED;
    }

    id->created = (time_t) v;

    v = ngx_http_cloudauth_upload_id_get64(&p);

    if (v > (uint64_t) NGX_MAX_OFF_T_VALUE) {
        return NGX_DECLINED;
    }

    id->length = (off_t) v - 1;

    if (ngx_http_cloudauth_upload_id_get(&p, last, &id->uri) != NGX_OK
        || ngx_http_cloudauth_upload_id_get(&p, last, &id->bucket) != NGX_OK
        || ngx_http_cloudauth_upload_id_get(&p, last, &id->name) != NGX_OK
        || ngx_http_cloudauth_upload_id_get(&p, last, &id->metadata)
           != NGX_OK
        || p != last)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_id_get(u_char **p, u_char *last, ngx_str_t *s)
{
    size_t  len;

    if (last - *p < 2) {
        return NGX_DECLINED;
    }

    len = ((size_t) (*p)[0] << 8) | (*p)[1];
    *p += 2;

    if ((size_t) (last - *p) < len) {
        return NGX_DECLINED;
    }

    s->data = *p;
    s->len = len;
    *p += len;

    return NGX_OK;
}


/* AES-256-GCM, one shot; opening fails on any tag mismatch */

static ngx_int_t
ngx_http_cloudauth_upload_id_aead(ngx_uint_t enc, u_char *key, u_char *nonce,
    ngx_str_t *aad, u_char *in, size_t len, u_char *out, u_char *tag)
{
    int              n, rc;
    ngx_int_t        ok;
    EVP_CIPHER_CTX  *ctx;

    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ok = NGX_ERROR;

    rc = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL,
                           (int) enc);

    if (rc == 1) {
        rc = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN,
                                 NGX_HTTP_CLOUDAUTH_UPLOAD_ID_NONCE, NULL);
    }

    if (rc == 1) {
        rc = EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, (int) enc);
    }

    if (rc == 1 && aad->len) {
        rc = EVP_CipherUpdate(ctx, NULL, &n, aad->data, (int) aad->len);
    }

    if (rc == 1) {
        rc = EVP_CipherUpdate(ctx, out, &n, in, (int) len);
    }

    if (rc == 1 && !enc) {
        rc = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG,
                                 NGX_HTTP_CLOUDAUTH_UPLOAD_ID_TAG, tag);
    }

    if (rc == 1) {
        rc = EVP_CipherFinal_ex(ctx, out + n, &n);
    }

    if (rc == 1 && enc) {
        rc = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG,
                                 NGX_HTTP_CLOUDAUTH_UPLOAD_ID_TAG, tag);
    }

    if (rc == 1) {
        ok = NGX_OK;
    }

    EVP_CIPHER_CTX_free(ctx);

    return ok;
}
