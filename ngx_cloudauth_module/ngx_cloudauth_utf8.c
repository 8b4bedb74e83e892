
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Subjects: well-formed UTF-8 of 1 to NGX_CLOUDAUTH_MAX_SUBJECT bytes,
 * without control characters.
 */


#include "ngx_cloudauth.h"


ngx_int_t
ngx_cloudauth_subject_valid(u_char *p, size_t len)
{
    u_char    *last;
    uint32_t   c, min;
    ngx_uint_t n;

    if (len == 0 || len > NGX_CLOUDAUTH_MAX_SUBJECT) {
        return NGX_DECLINED;
    }

    for (last = p + len; p < last; /* void */) {
        c = *p++;

        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) {
                return NGX_DECLINED;
            }

            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            c &= 0x1f;
            min = 0x80;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            c &= 0x0f;
            min = 0x800;

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            c &= 0x07;
            min = 0x10000;

        } else {
            return NGX_DECLINED;
        }

        if ((size_t) (last - p) < n) {
            return NGX_DECLINED;
        }

        while (n--) {
            if ((*p & 0xc0) != 0x80) {
                return NGX_DECLINED;
            }

            c = (c << 6) | (*p++ & 0x3f);
        }

        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)
            || c <= 0x9f)
        {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}
