
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
ref_allowed(uint32_t c)
{
    return c >= 0x20 && c != 0x7f && !(c >= 0x80 && c <= 0x9f)
           && !(c >= 0xd800 && c <= 0xdfff) && c <= 0x10ffff;
}


/* a reference of the harness's: decode, re-encode, the same bytes? */

static int
ref_valid(const u_char *p, size_t len)
{
    if (len == 0 || len > NGX_CLOUDAUTH_MAX_SUBJECT) {
        return 0;
    }

    return fuzz_ref_utf8(p, len, ref_allowed);
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
