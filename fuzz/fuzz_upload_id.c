
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The sealed IDs of resumable uploads (ngx_http_cloudauth_upload_id.c).
 * The input is opened as an ID as it is (it must be refused without a
 * crash: no one without the key makes one that opens), and split into the
 * fields of an ID that is sealed, opened again (every field must come back
 * as it went in), then altered at one byte the input chooses, or opened
 * for another location or under another key: each must be refused.
 */


#include "harness.h"
#include "ngx_http_cloudauth_upload.h"


static ngx_str_t
fuzz_field(const uint8_t **p, const uint8_t *last)
{
    size_t     n;
    ngx_str_t  s;

    n = (*p < last) ? (size_t) (**p) * 8 : 0;

    if (*p < last) {
        (*p)++;
    }

    if (n > (size_t) (last - *p)) {
        n = last - *p;
    }

    s.data = (u_char *) *p;
    s.len = n;
    *p += n;

    return s;
}


static int
fuzz_same(ngx_str_t *a, ngx_str_t *b)
{
    return a->len == b->len
           && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t                           at;
    ngx_int_t                        rc;
    ngx_str_t                        in, sealed, aad, other;
    ngx_pool_t                      *pool;
    const uint8_t                   *p, *last;
    ngx_http_cloudauth_upload_id_t   id, back;
    u_char                           key[32], key2[32];

    fuzz_ngx_init();

    memset(key, 0x5a, sizeof(key));
    memset(key2, 0x5b, sizeof(key2));
    ngx_str_set(&aad, "/files/");
    ngx_str_set(&other, "/other/");

    pool = fuzz_pool();

    /* anything as an ID */

    in.data = ngx_pnalloc(pool, size + 1);
    fuzz_assert(in.data != NULL);
    memcpy(in.data, data, size);
    in.len = size;

    rc = ngx_http_cloudauth_upload_id_open(pool, key, &aad, &in, &back);
    fuzz_assert(rc == NGX_DECLINED);

    /* fields from the input: sealed, opened, compared */

    p = data;
    last = data + size;

    id.uri = fuzz_field(&p, last);
    id.bucket = fuzz_field(&p, last);
    id.name = fuzz_field(&p, last);
    id.metadata = fuzz_field(&p, last);
    id.length = (size > 0) ? (off_t) data[0] * 1000 - 1 : -1;
    id.created = (time_t) size * 100000;

    rc = ngx_http_cloudauth_upload_id_seal(pool, key, &aad, &id, &sealed);
    fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_OK) {
        fuzz_assert(sealed.len <= NGX_HTTP_CLOUDAUTH_UPLOAD_ID_MAX);

        for (at = 0; at < sealed.len; at++) {
            fuzz_assert(isalnum(sealed.data[at]) || sealed.data[at] == '-'
                        || sealed.data[at] == '_');
        }

        rc = ngx_http_cloudauth_upload_id_open(pool, key, &aad, &sealed,
                                               &back);
        fuzz_assert(rc == NGX_OK);
        fuzz_assert(fuzz_same(&id.uri, &back.uri));
        fuzz_assert(fuzz_same(&id.bucket, &back.bucket));
        fuzz_assert(fuzz_same(&id.name, &back.name));
        fuzz_assert(fuzz_same(&id.metadata, &back.metadata));
        fuzz_assert(id.length == back.length);
        fuzz_assert(id.created == back.created);

        fuzz_assert(ngx_http_cloudauth_upload_id_open(pool, key, &other,
                                                      &sealed, &back)
                    == NGX_DECLINED);
        fuzz_assert(ngx_http_cloudauth_upload_id_open(pool, key2, &aad,
                                                      &sealed, &back)
                    == NGX_DECLINED);

        /* one character changed (the last may only carry padding bits) */

        at = (size > 1 ? (size_t) data[1] * 131 : 0) % (sealed.len - 1);
        sealed.data[at] = (sealed.data[at] == 'A') ? 'B' : 'A';

        fuzz_assert(ngx_http_cloudauth_upload_id_open(pool, key, &aad,
                                                      &sealed, &back)
                    == NGX_DECLINED);
    }

    ngx_destroy_pool(pool);

    return 0;
}
