
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: names.  An object name is checked as GCS checks
 * it; a file name from a form or a URI is made harmless for
 * $cloudauth_filename.  Pure functions of their input.
 */


#include "ngx_http_cloudauth_upload.h"


/* letters, digits, "-" and "_": of a header name or a bucket's */

ngx_uint_t
ngx_http_cloudauth_upload_token_char(u_char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '_';
}


/* GCS's rules: 1-1024 bytes of UTF-8, no CR or LF, not "." or ".." */

const char *
ngx_http_cloudauth_upload_check_name(ngx_str_t *name)
{
    size_t  i;

    if (name->len == 0) {
        return "the object name is empty";
    }

    if (name->len > NGX_HTTP_CLOUDAUTH_UPLOAD_NAME_MAX) {
        return "the object name is longer than 1024 bytes";
    }

    for (i = 0; i < name->len; i++) {
        if (name->data[i] == CR || name->data[i] == LF) {
            return "the object name contains CR or LF";
        }
    }

    if (ngx_cloudauth_utf8_valid(name->data, name->len) != NGX_OK) {
        return "the object name is not UTF-8";
    }

    if ((name->len == 1 && name->data[0] == '.')
        || (name->len == 2 && name->data[0] == '.' && name->data[1] == '.'))
    {
        return "the object name is \".\" or \"..\"";
    }

    if (name->len >= sizeof(".well-known/acme-challenge/") - 1
        && ngx_strncmp(name->data, ".well-known/acme-challenge/",
                       sizeof(".well-known/acme-challenge/") - 1) == 0)
    {
        return "the object name starts with .well-known/acme-challenge/";
    }

    return NULL;
}


/*
 * $cloudauth_filename: the last path segment, without control characters
 * and characters that trouble shells and URLs; "file" when nothing is left.
 */

void
ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool, ngx_str_t *in,
    ngx_str_t *out)
{
    u_char  *p, *last, *start, *d, *s, *cp;
    size_t   n;

    p = in->data;
    last = in->data + in->len;

    for (start = p; p < last; p++) {
        if (*p == '/' || *p == '\\') {
            start = p + 1;
        }
    }

    out->data = ngx_pnalloc(pool, ngx_max(last - start, 4));
    if (out->data == NULL) {
        ngx_str_set(out, "file");
        return;
    }

    d = out->data;
    p = start;

    /*
     * no leading dots or blanks: no ".", "..", hidden files; nor control
     * characters, dropped below, which would put a dot first again
     */
    while (p < last && (*p == '.' || *p == ' ' || *p < 0x20 || *p == 0x7f)) {
        p++;
    }

    while (p < last) {

        if ((size_t) (d - out->data)
            >= NGX_HTTP_CLOUDAUTH_UPLOAD_FILENAME_MAX)
        {
            break;
        }

        if (*p >= 0x80) {
            s = p;

            /* ngx_utf8_decode() alone takes "\xc3\xc3" and surrogates */

            if (ngx_utf8_decode(&p, last - p) > 0x10ffff
                || ngx_cloudauth_utf8_valid(s, p - s) != NGX_OK)
            {
                *d++ = '_';
                p = s + 1;
                continue;
            }

            n = p - s;

            if ((size_t) (d - out->data) + n
                > NGX_HTTP_CLOUDAUTH_UPLOAD_FILENAME_MAX)
            {
                break;
            }

            d = ngx_cpymem(d, s, n);
            continue;
        }

        if (*p < 0x20 || *p == 0x7f) {
            p++;
            continue;
        }

        switch (*p) {
        case '"': case '#': case '%': case '*': case ':': case '<':
        case '>': case '?': case '[': case ']': case '|': case '`':
        case '\'': case '$': case '&': case ';': case '^': case '{':
        case '}': case '~': case '=': case '+': case ',': case '@':
        case '!':
            *d++ = '_';
            break;
        default:
            *d++ = *p;
        }

        p++;
    }

    cp = d;

    while (cp > out->data && cp[-1] == ' ') {
        cp--;
    }

    out->len = cp - out->data;

    if (out->len == 0) {
        ngx_str_set(out, "file");
    }
}
