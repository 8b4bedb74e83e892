
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Well-formed UTF-8 (RFC 3629): no overlong forms, surrogates
 * (U+D800-U+DFFF), code points above U+10FFFF, truncated sequences or
 * stray continuation bytes.  nginx's ngx_utf8_decode() is lenient (any
 * byte from 0x80 up passes as a continuation byte, surrogates pass), so
 * names and subjects are checked here.
 *
 * Subjects (the "sub" of a token request, an e-mail address as a rule)
 * come from configuration and from clients, and go into JWT claims, logs
 * and the status page: no control characters either.
 */


#include "ngx_cloudauth.h"


static ngx_int_t ngx_cloudauth_utf8_check(u_char *p, size_t len,
    ngx_uint_t controls);


/* NGX_OK: well-formed UTF-8, of any length, control characters allowed */

ngx_int_t
ngx_cloudauth_utf8_valid(u_char *p, size_t len)
{
    return ngx_cloudauth_utf8_check(p, len, 1);
}


/*
 * NGX_OK: 1 to NGX_CLOUDAUTH_MAX_SUBJECT bytes of well-formed UTF-8
 * without C0 controls, DEL or C1 controls (U+0080-U+009F).
 */

ngx_int_t
ngx_cloudauth_subject_valid(u_char *p, size_t len)
{
    if (len == 0 || len > NGX_CLOUDAUTH_MAX_SUBJECT) {
        return NGX_DECLINED;
    }

    return ngx_cloudauth_utf8_check(p, len, 0);
}


static ngx_int_t
ngx_cloudauth_utf8_check(u_char *p, size_t len, ngx_uint_t controls)
{
    u_char    *last;
    size_t     n, i;
    uint32_t   c, min;

    last = p + len;

    while (p < last) {
        c = *p++;

        if (c < 0x80) {
            if (!controls && (c < 0x20 || c == 0x7f)) {
                return NGX_DECLINED;
            }

            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            c &= 0x1f;
            n = 1;
            min = 0x80;

        } else if (c >= 0xe0 && c <= 0xef) {
            c &= 0x0f;
            n = 2;
            min = 0x800;

        } else if (c >= 0xf0 && c <= 0xf4) {
            c &= 0x07;
            n = 3;
            min = 0x10000;

        } else {
            /* a stray continuation byte, 0xc0, 0xc1 (overlong), 0xf5-0xff */
            return NGX_DECLINED;
        }

        if ((size_t) (last - p) < n) {
            return NGX_DECLINED;
        }

        for (i = 0; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return NGX_DECLINED;
            }

            c = (c << 6) | (p[i] & 0x3f);
        }

        p += n;

        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
            return NGX_DECLINED;
        }

        if (!controls && c <= 0x9f) {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/*
 * Whether subjects= allows a subject: the whole subject must match, which
 * the pattern's own alternatives cannot escape ("a)|(.*" wrapped in
 * "^(?:...)$" would match anything): the match must span it all.
 */

ngx_uint_t
ngx_cloudauth_subject_allowed(ngx_cloudauth_cred_t *cred, ngx_str_t *subject)
{
    int  captures[3];

    if (cred->subjects == NULL) {
        return 1;
    }

    if (ngx_regex_exec(cred->subjects, subject, captures, 3) < 0) {
        return 0;
    }

    return captures[0] == 0 && (size_t) captures[1] == subject->len;
}
