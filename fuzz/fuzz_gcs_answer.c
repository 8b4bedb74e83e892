
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * GCS's answers to a resumable upload, through the GCS client's pure
 * parsers (ngx_cloudauth_gcs_parse.c): the Range header, the session
 * start's Location and its origin against the endpoint's, the final
 * object's JSON and GCS's error JSON; and what is made of them for logs
 * and URLs (printable, escaped).
 *
 * Input: a byte choosing the parser, then its input.
 */


#include "harness.h"
#include "ngx_cloudauth.h"
#include "ngx_cloudauth_gcs.h"


static void
fuzz_printable(ngx_pool_t *pool, u_char *p, size_t len)
{
    u_char  *buf;
    size_t   i, n;

    /* as the client calls it: room for 4 bytes each, and "..." */

    buf = ngx_pnalloc(pool, 4 * NGX_CLOUDAUTH_GCS_SAID_MAX + 3);
    if (buf == NULL) {
        abort();
    }

    n = ngx_cloudauth_gcs_printable(buf, 4 * NGX_CLOUDAUTH_GCS_SAID_MAX, p,
                                    len);
    fuzz_assert(n <= 4 * NGX_CLOUDAUTH_GCS_SAID_MAX + 3);

    /* a log line gets no control character and no line break */
    for (i = 0; i < n; i++) {
        fuzz_assert(buf[i] >= 0x20 && buf[i] != 0x7f);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    off_t                        last;
    u_char                      *in, *esc;
    size_t                       len, n;
    ngx_int_t                    rc;
    ngx_str_t                    message, s;
    ngx_uint_t                   i;
    ngx_pool_t                  *pool;
    ngx_cloudauth_gcs_origin_t   origin, endpoint;
    ngx_cloudauth_gcs_stored_t   stored;

    fuzz_ngx_init();

    if (size < 1) {
        return 0;
    }

    pool = fuzz_pool();

    /* a copy of its own size, NUL-terminated for the URL parser */

    len = size - 1;
    in = ngx_pnalloc(pool, len + 1);
    if (in == NULL) {
        abort();
    }

    ngx_memcpy(in, data + 1, len);
    in[len] = '\0';

    switch (data[0] % 5) {

    case 0:
        rc = ngx_cloudauth_gcs_parse_range(in, len, &last);
        fuzz_assert(rc == NGX_OK || rc == NGX_ERROR || rc == NGX_DECLINED);

        if (rc == NGX_OK) {
            /* a last byte whose successor is an offset */
            fuzz_assert(last >= 0 && last < NGX_MAX_OFF_T_VALUE);
        }

        break;

    case 1:
        if (ngx_strlen(in) != len) {
            break;      /* curl takes C strings */
        }

        rc = ngx_cloudauth_gcs_parse_origin(pool, in, &origin);
        fuzz_assert(rc == NGX_OK || rc == NGX_ERROR || rc == NGX_DECLINED);

        if (rc != NGX_OK) {
            break;
        }

        fuzz_assert(origin.scheme.len && origin.host.len && origin.port.len);

        if (ngx_cloudauth_gcs_parse_origin(pool,
                (u_char *) "https://storage.googleapis.com", &endpoint)
            != NGX_OK)
        {
            abort();
        }

        /* the same origin is the same scheme, host and port, exactly */

        if (ngx_cloudauth_gcs_same_origin(&origin, &endpoint)) {
            fuzz_assert(origin.host.len == sizeof("storage.googleapis.com")
                                           - 1);
            fuzz_assert(ngx_strncasecmp(origin.host.data,
                            (u_char *) "storage.googleapis.com",
                            origin.host.len) == 0);
            fuzz_assert(origin.port.len == 3
                        && ngx_strncmp(origin.port.data, "443", 3) == 0);
        }

        break;

    case 2:
        rc = ngx_cloudauth_gcs_parse_object(pool, in, len, &stored);
        fuzz_assert(rc == NGX_OK || rc == NGX_ERROR || rc == NGX_DECLINED);

        if (rc == NGX_OK) {
            fuzz_printable(pool, stored.name.data, stored.name.len);
            fuzz_printable(pool, stored.generation.data,
                           stored.generation.len);
            fuzz_assert(stored.size >= -1);
        }

        break;

    case 3:
        rc = ngx_cloudauth_gcs_parse_error(pool, in, len, &message);
        fuzz_assert(rc == NGX_OK || rc == NGX_ERROR || rc == NGX_DECLINED);

        if (rc == NGX_OK) {
            fuzz_printable(pool, message.data, message.len);
        }

        break;

    default:
        /* an object name escaped for a URL: nothing but what URLs take */

        s.data = in;
        s.len = len;

        n = ngx_cloudauth_form_escape_len(&s);

        esc = ngx_pnalloc(pool, n + 1);
        if (esc == NULL) {
            abort();
        }

        /* the length is a bound: in a path, "/" stays one byte */

        if (data[0] & 0x80) {
            n = ngx_cloudauth_gcs_escape_path(esc, &s) - esc;

        } else {
            n = ngx_cloudauth_form_escape(esc, &s) - esc;
        }

        fuzz_assert(n <= ngx_cloudauth_form_escape_len(&s));

        for (i = 0; i < n; i++) {
            fuzz_assert(esc[i] > 0x20 && esc[i] < 0x7f && esc[i] != '?'
                        && esc[i] != '#' && esc[i] != '&');
        }

        fuzz_printable(pool, in, len);
    }

    ngx_destroy_pool(pool);

    return 0;
}
