
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * ngx_cloudauth_subject_valid() against a reference written the other way
 * round: every code point of 0..0x10FFFF that a subject may hold is
 * encoded the one right way, and the input must be a run of those.  The
 * two must agree on every input.  A third opinion, glibc's iconv(), must
 * take every subject taken, as code points a subject may hold.
 */


#include "harness.h"
#include "ngx_cloudauth.h"

#include <iconv.h>


static iconv_t  cd = (iconv_t) -1;


static int
ref_encode(uint32_t c, u_char *out)
{
    if (c < 0x80) {
        out[0] = (u_char) c;
        return 1;
    }

    if (c < 0x800) {
        out[0] = (u_char) (0xc0 | (c >> 6));
        out[1] = (u_char) (0x80 | (c & 0x3f));
        return 2;
    }

    if (c < 0x10000) {
        out[0] = (u_char) (0xe0 | (c >> 12));
        out[1] = (u_char) (0x80 | ((c >> 6) & 0x3f));
        out[2] = (u_char) (0x80 | (c & 0x3f));
        return 3;
    }

    out[0] = (u_char) (0xf0 | (c >> 18));
    out[1] = (u_char) (0x80 | ((c >> 12) & 0x3f));
    out[2] = (u_char) (0x80 | ((c >> 6) & 0x3f));
    out[3] = (u_char) (0x80 | (c & 0x3f));
    return 4;
}


static int
ref_allowed(uint32_t c)
{
    return c >= 0x20 && c != 0x7f && !(c >= 0x80 && c <= 0x9f)
           && !(c >= 0xd800 && c <= 0xdfff) && c <= 0x10ffff;
}


/* decode naively (any bit pattern), then re-encode: the same bytes? */

static int
ref_valid(const u_char *p, size_t len)
{
    size_t    i, n, k;
    uint32_t  c;
    u_char    enc[4];

    if (len == 0 || len > NGX_CLOUDAUTH_MAX_SUBJECT) {
        return 0;
    }

    for (i = 0; i < len; i += n) {
        if (p[i] < 0x80) {
            n = 1;
        } else if ((p[i] & 0xe0) == 0xc0) {
            n = 2;
        } else if ((p[i] & 0xf0) == 0xe0) {
            n = 3;
        } else if ((p[i] & 0xf8) == 0xf0) {
            n = 4;
        } else {
            return 0;
        }

        if (len - i < n) {
            return 0;
        }

        c = (n == 1) ? p[i] : (uint32_t) (p[i] & (0x7f >> n));

        for (k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            c = (c << 6) | (p[i + k] & 0x3f);
        }

        if (!ref_allowed(c) || ref_encode(c, enc) != (int) n
            || memcmp(enc, p + i, n) != 0)
        {
            return 0;
        }
    }

    return 1;
}


/* iconv() decodes all of it, to code points a subject may hold */

static int
iconv_check(u_char *p, size_t len)
{
    char      *in, *out;
    size_t     inleft, outleft, i, n;
    uint32_t   cps[NGX_CLOUDAUTH_MAX_SUBJECT];

    if (cd == (iconv_t) -1) {
        cd = iconv_open("UTF-32LE", "UTF-8");
        if (cd == (iconv_t) -1) {
            abort();
        }
    }

    (void) iconv(cd, NULL, NULL, NULL, NULL);

    in = (char *) p;
    inleft = len;
    out = (char *) cps;
    outleft = sizeof(cps);

    if (iconv(cd, &in, &inleft, &out, &outleft) == (size_t) -1
        || inleft != 0)
    {
        return 0;
    }

    n = (sizeof(cps) - outleft) / 4;

    for (i = 0; i < n; i++) {
        if (!ref_allowed(cps[i])) {
            return 0;
        }
    }

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *copy;
    ngx_int_t   rc;

    /* a copy of exactly size bytes: ASan sees any read past the end */

    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);

    rc = ngx_cloudauth_subject_valid(copy, size);

    fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);
    fuzz_assert((rc == NGX_OK) == ref_valid(copy, size));

    if (rc == NGX_OK) {
        fuzz_assert(iconv_check(copy, size));
    }

    free(copy);

    return 0;
}
