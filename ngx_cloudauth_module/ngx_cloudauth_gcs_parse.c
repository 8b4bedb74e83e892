
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * What GCS's resumable upload answers carry, read without side effects:
 * the Range of a 308, the origin of a session URI, the object of the final
 * answer, the message of an error; and the encodings the requests need.
 * No I/O, no logging: each is a function of its input (a fuzz target's).
 */


#include "ngx_cloudauth_gcs.h"


/*
 * A Range header's value, "bytes=0-N": N, the last byte GCS holds.
 * NGX_ERROR: anything else.
 */

ngx_int_t
ngx_cloudauth_gcs_parse_range(u_char *p, size_t len, off_t *last)
{
    off_t  v;

    if (len <= sizeof("bytes=0-") - 1
        || ngx_strncmp(p, "bytes=0-", sizeof("bytes=0-") - 1) != 0)
    {
        return NGX_ERROR;
    }

    v = ngx_atoof(p + sizeof("bytes=0-") - 1, len - (sizeof("bytes=0-") - 1));

    /* the largest off_t is no last byte: its successor would overflow */

    if (v == NGX_ERROR || v == NGX_MAX_OFF_T_VALUE) {
        return NGX_ERROR;
    }

    *last = v;

    return NGX_OK;
}


/*
 * Scheme, host and port (spelled out) of an absolute URL, NUL-terminated,
 * parsed by libcurl, which will connect to it.  NGX_DECLINED: not an
 * absolute URL of a scheme libcurl knows, or one with user information
 * ("https://storage.googleapis.com:443@evil/"); NGX_ERROR: no memory.
 */

ngx_int_t
ngx_cloudauth_gcs_parse_origin(ngx_pool_t *pool, u_char *url,
    ngx_cloudauth_gcs_origin_t *origin)
{
    static CURLUPart  parts[] = {
        CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT
    };

    char        *part;
    CURLU       *h;
    CURLUcode    uc;
    ngx_int_t    rc;
    ngx_str_t   *dst[3];
    ngx_uint_t   i;

    dst[0] = &origin->scheme;
    dst[1] = &origin->host;
    dst[2] = &origin->port;

    h = curl_url();
    if (h == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_DECLINED;

    uc = curl_url_set(h, CURLUPART_URL, (char *) url, 0);
    if (uc != CURLUE_OK) {
        goto done;
    }

    part = NULL;
    uc = curl_url_get(h, CURLUPART_USER, &part, 0);
    curl_free(part);

    if (uc != CURLUE_NO_USER) {
        goto done;
    }

    part = NULL;
    uc = curl_url_get(h, CURLUPART_PASSWORD, &part, 0);
    curl_free(part);

    if (uc != CURLUE_NO_PASSWORD) {
        goto done;
    }

    for (i = 0; i < 3; i++) {
        part = NULL;
        uc = curl_url_get(h, parts[i], &part,
                          parts[i] == CURLUPART_PORT ? CURLU_DEFAULT_PORT : 0);

        if (uc != CURLUE_OK || part == NULL || *part == '\0') {
            curl_free(part);
            goto done;
        }

        dst[i]->len = ngx_strlen(part);
        dst[i]->data = ngx_pnalloc(pool, dst[i]->len);

        if (dst[i]->data == NULL) {
            curl_free(part);
            rc = NGX_ERROR;
            goto done;
        }

        ngx_memcpy(dst[i]->data, part, dst[i]->len);
        curl_free(part);
    }

    rc = NGX_OK;

done:

    curl_url_cleanup(h);

    return rc;
}


ngx_uint_t
ngx_cloudauth_gcs_same_origin(ngx_cloudauth_gcs_origin_t *a,
    ngx_cloudauth_gcs_origin_t *b)
{
    return a->scheme.len == b->scheme.len
           && ngx_strncasecmp(a->scheme.data, b->scheme.data, a->scheme.len)
              == 0
           && a->host.len == b->host.len
           && ngx_strncasecmp(a->host.data, b->host.data, a->host.len) == 0
           && a->port.len == b->port.len
           && ngx_strncmp(a->port.data, b->port.data, a->port.len) == 0;
}


static ngx_int_t
ngx_cloudauth_gcs_copy(ngx_pool_t *pool, const char *s, ngx_str_t *dst)
{
    if (s == NULL) {
        ngx_str_null(dst);
        return NGX_OK;
    }

    dst->len = ngx_strlen(s);
    dst->data = ngx_pnalloc(pool, dst->len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, s, dst->len + 1);

    return NGX_OK;
}


/*
 * The object resource GCS answers the final request with: name, crc32c,
 * generation and size are required (NGX_DECLINED without them), md5Hash,
 * bucket and contentType optional.  NGX_ERROR: no memory.
 */

ngx_int_t
ngx_cloudauth_gcs_parse_object(ngx_pool_t *pool, u_char *body, size_t len,
    ngx_cloudauth_gcs_stored_t *stored)
{
    json_t      *root;
    ngx_int_t    rc;
    const char  *name, *crc, *md5, *gen, *size, *bucket, *ctype;

    ngx_memzero(stored, sizeof(ngx_cloudauth_gcs_stored_t));
    stored->size = -1;

    root = body ? json_loadb((char *) body, len, 0, NULL) : NULL;

    name = crc = md5 = gen = size = bucket = ctype = NULL;

    if (root == NULL
        || json_unpack(root, "{s:s, s:s, s:s, s:s, s?s, s?s, s?s}",
                       "name", &name, "crc32c", &crc, "generation", &gen,
                       "size", &size, "md5Hash", &md5, "bucket", &bucket,
                       "contentType", &ctype)
           != 0)
    {
        json_decref(root);
        return NGX_DECLINED;
    }

    rc = NGX_ERROR;

    if (ngx_cloudauth_gcs_copy(pool, name, &stored->name) != NGX_OK
        || ngx_cloudauth_gcs_copy(pool, crc, &stored->crc32c) != NGX_OK
        || ngx_cloudauth_gcs_copy(pool, gen, &stored->generation) != NGX_OK
        || ngx_cloudauth_gcs_copy(pool, md5, &stored->md5) != NGX_OK
        || ngx_cloudauth_gcs_copy(pool, bucket, &stored->bucket) != NGX_OK
        || ngx_cloudauth_gcs_copy(pool, ctype, &stored->content_type)
           != NGX_OK)
    {
        goto done;
    }

    stored->size = ngx_atoof((u_char *) size, ngx_strlen(size));
    rc = NGX_OK;

done:

    json_decref(root);

    return rc;
}


/*
 * {"error": {"message": "..."}}: the message; NGX_DECLINED when the body
 * is not that.  NGX_ERROR: no memory.
 */

ngx_int_t
ngx_cloudauth_gcs_parse_error(ngx_pool_t *pool, u_char *body, size_t len,
    ngx_str_t *message)
{
    json_t      *root;
    ngx_int_t    rc;
    const char  *msg;

    ngx_str_null(message);

    root = body ? json_loadb((char *) body, len, 0, NULL) : NULL;
    if (root == NULL) {
        return NGX_DECLINED;
    }

    msg = NULL;
    (void) json_unpack(root, "{s:{s:s}}", "error", "message", &msg);

    if (msg == NULL) {
        json_decref(root);
        return NGX_DECLINED;
    }

    rc = ngx_cloudauth_gcs_copy(pool, msg, message);

    json_decref(root);

    return rc;
}


/* X-Goog-Hash's and the object's form: 4 bytes, big-endian, in base64 */

void
ngx_cloudauth_gcs_crc32c_base64(uint32_t crc, ngx_str_t *dst)
{
    ngx_str_t  raw;
    u_char     buf[4];

    buf[0] = (u_char) (crc >> 24);
    buf[1] = (u_char) (crc >> 16);
    buf[2] = (u_char) (crc >> 8);
    buf[3] = (u_char) crc;

    raw.data = buf;
    raw.len = 4;

    ngx_encode_base64(dst, &raw);
}


/*
 * An object name in a URL path: each "/"-separated segment escaped as a
 * form value, the "/" kept; ngx_cloudauth_form_escape_len() is a bound
 */

u_char *
ngx_cloudauth_gcs_escape_path(u_char *dst, ngx_str_t *src)
{
    u_char     *last, *slash;
    ngx_str_t   seg;

    seg.data = src->data;
    last = src->data + src->len;

    for ( ;; ) {
        slash = ngx_strlchr(seg.data, last, '/');
        seg.len = (slash ? slash : last) - seg.data;

        dst = ngx_cloudauth_form_escape(dst, &seg);
        if (slash == NULL) {
            return dst;
        }

        *dst++ = '/';
        seg.data = slash + 1;
    }
}


/*
 * At most NGX_CLOUDAUTH_GCS_SAID_MAX bytes of src for a log line: control
 * characters as \xNN, "..." when cut; dst has room for 4 bytes each and 3
 */

size_t
ngx_cloudauth_gcs_printable(u_char *dst, size_t size, u_char *src,
    size_t len)
{
    u_char  *p, *last, c;
    size_t   n;

    p = dst;
    last = dst + size;
    n = ngx_min(len, NGX_CLOUDAUTH_GCS_SAID_MAX);

    while (n-- && last - p >= 4) {
        c = *src++;

        if (c < 0x20 || c == 0x7f) {
            p = ngx_sprintf(p, "\\x%02xd", c);
            continue;
        }

        *p++ = c;
    }

    if (len > NGX_CLOUDAUTH_GCS_SAID_MAX) {
        p = ngx_cpymem(p, "...", 3);
    }

    return p - dst;
}


/*
 * A name from outside for the log lines, in the pool: at most
 * NGX_CLOUDAUTH_GCS_SAID_MAX of its bytes, "..." when cut; controls (C0,
 * DEL, and C1 as UTF-8), the quote and the backslash as \xNN, so that a
 * name cannot end its quotes or fake an escape; other UTF-8 as it is
 */

ngx_int_t
ngx_cloudauth_gcs_shown(ngx_pool_t *pool, ngx_str_t *src, ngx_str_t *dst)
{
    u_char  *p, *s, *last, c;

    dst->data = ngx_pnalloc(pool, 4 * NGX_CLOUDAUTH_GCS_SAID_MAX + 3);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    p = dst->data;
    s = src->data;
    last = s + ngx_min(src->len, NGX_CLOUDAUTH_GCS_SAID_MAX);

    while (s < last) {
        c = *s++;

        if (c == 0xc2 && s < last && *s >= 0x80 && *s <= 0x9f) {
            p = ngx_sprintf(p, "\\x%02xd\\x%02xd", c, *s++);
            continue;
        }

        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
            p = ngx_sprintf(p, "\\x%02xd", c);
            continue;
        }

        *p++ = c;
    }

    if (src->len > NGX_CLOUDAUTH_GCS_SAID_MAX) {
        p = ngx_cpymem(p, "...", 3);
    }

    dst->len = p - dst->data;

    return NGX_OK;
}
