
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Object names and file names of uploads (ngx_cloudauth_gcs_upload.c):
 * ngx_http_cloudauth_upload_check_name() on a name from the URI or a form
 * field, ngx_http_cloudauth_upload_sanitize() on a multipart filename.
 *
 * A name the check takes must be what GCS takes: 1 to 1024 bytes of
 * well-formed UTF-8 (checked against a reference decoder), no CR or LF,
 * not "." or "..".  A sanitized filename is 1 to 255 bytes of UTF-8, no
 * path, no control characters, no leading dot.
 */


#include "harness.h"
#include "ngx_http_cloudauth_upload.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t       i;
    u_char      *copy;
    ngx_str_t    name, out;
    ngx_pool_t  *pool;
    const char  *err;

    fuzz_ngx_init();

    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        abort();
    }

    memcpy(copy, data, size);

    name.data = copy;
    name.len = size;

    err = ngx_http_cloudauth_upload_check_name(&name);

    if (err == NULL) {
        fuzz_assert(size >= 1 && size <= NGX_HTTP_CLOUDAUTH_UPLOAD_NAME_MAX);
        fuzz_assert(memchr(copy, '\r', size) == NULL);
        fuzz_assert(memchr(copy, '\n', size) == NULL);
        fuzz_assert(!(size == 1 && copy[0] == '.'));
        fuzz_assert(!(size == 2 && copy[0] == '.' && copy[1] == '.'));

        if (getenv("FUZZ_NAMES_LAX") == NULL) {
            fuzz_assert(fuzz_ref_utf8(copy, size, NULL));
        }
    }

    pool = fuzz_pool();

    ngx_http_cloudauth_upload_sanitize(pool, &name, &out);

    fuzz_assert(out.len >= 1 && out.len <= NGX_HTTP_CLOUDAUTH_UPLOAD_FILENAME_MAX);

    for (i = 0; i < out.len; i++) {
        fuzz_assert(out.data[i] >= 0x20 && out.data[i] != 0x7f
                    && out.data[i] != '/' && out.data[i] != '\\');
    }

    fuzz_assert(out.data[0] != '.');
    fuzz_assert(fuzz_ref_utf8(out.data, out.len, NULL));

    ngx_destroy_pool(pool);
    free(copy);

    return 0;
}
