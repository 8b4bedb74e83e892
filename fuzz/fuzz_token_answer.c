
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Each credential kind's answer parser (the "parse" member of every kind
 * in ngx_cloudauth_kinds[]), fed an answer (ngx_cloudauth_answer_t): no
 * fetch, no curl; the parsers are pure.
 *
 * Input: a byte choosing the kind (and for google_metadata whether an ID
 * token, answered as bare text, was asked for), a byte choosing the HTTP
 * status (0: no answer, or with the top bit one larger than 64 KiB), then
 * the body.
 */


#include "harness.h"
#include "ngx_cloudauth.h"


/* the layout of ngx_cloudauth_kind_google_metadata.c's cred->data */

typedef struct {
    ngx_str_t      url;
    ngx_uint_t     identity;
} fuzz_metadata_t;


static long  statuses[] = {
    200, 200, 200, 200, 0, 400, 401, 403, 404, 408, 429, 500, 503, 302
};


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t                   i, n;
    u_char                  *body;
    ngx_int_t                rc;
    ngx_pool_t              *pool;
    fuzz_metadata_t          md;
    ngx_cloudauth_kind_t    *kind;
    ngx_cloudauth_cred_t     cred;
    ngx_cloudauth_answer_t   a;
    ngx_cloudauth_result_t   res;

    fuzz_ngx_init();

    if (size < 2) {
        return 0;
    }

    for (n = 0; ngx_cloudauth_kinds[n]; n++) { /* void */ }

    kind = ngx_cloudauth_kinds[data[0] % n];

    if (kind->parse == NULL) {
        return 0;
    }

    ngx_memzero(&cred, sizeof(ngx_cloudauth_cred_t));
    ngx_str_set(&cred.name, "fuzz");
    cred.kind = kind;

    ngx_memzero(&md, sizeof(fuzz_metadata_t));
    ngx_str_set(&md.url, "http://metadata.google.internal/");
    md.identity = (data[0] >> 7) & 1;
    cred.data = &md;

    ngx_memzero(&a, sizeof(ngx_cloudauth_answer_t));
    a.status = statuses[data[1] % (sizeof(statuses) / sizeof(long))];
    a.truncated = (a.status == 0 && (data[1] & 0x80));

    /* the body, in a buffer of its own size: a read past it is caught */

    a.body.len = size - 2;
    body = malloc(a.body.len ? a.body.len : 1);
    if (body == NULL) {
        abort();
    }

    memcpy(body, data + 2, a.body.len);
    a.body.data = a.body.len ? body : NULL;

    pool = fuzz_pool();
    ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));

    rc = kind->parse(&cred, &a, pool, &res);

    fuzz_assert(rc == NGX_OK || rc == NGX_ERROR);

    if (rc == NGX_OK) {
        fuzz_assert(a.status == 200);
        fuzz_assert(res.token.len > 0
                    && res.token.len <= NGX_CLOUDAUTH_MAX_TOKEN);
        fuzz_assert(res.expires_in > 0 && res.expires_in <= 365 * 86400);

        for (i = 0; i < res.token.len; i++) {
            fuzz_assert(res.token.data[i] > 0x20 && res.token.data[i] < 0x7f);
        }

    } else {
        /* what goes to the log: something, printable ASCII */

        fuzz_assert(res.error.len > 0);

        for (i = 0; i < res.error.len; i++) {
            fuzz_assert(res.error.data[i] >= 0x20
                        && res.error.data[i] < 0x7f);
        }
    }

    ngx_destroy_pool(pool);
    free(body);

    return 0;
}
