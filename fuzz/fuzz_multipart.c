
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The streaming multipart/form-data parser (ngx_cloudauth_multipart.c).
 *
 * Input: two bytes that seed the slicing and the room per data event, the
 * Content-Type header value up to the first LF, then the body.  The body is
 * parsed twice, whole with ample room and in small slices (each a copy of
 * its own, freed after, so no pointer may outlive it) with little room;
 * both transcripts must be the same.
 */


#include "harness.h"
#include "ngx_cloudauth_multipart.h"


#define FUZZ_MP_OUT  (1 << 17)


typedef struct {
    u_char   out[FUZZ_MP_OUT];
    size_t   len;
    int      error;
    int      finished;
} transcript_t;


static void
emit(transcript_t *t, const void *s, size_t len)
{
    if (len && t->len + len <= FUZZ_MP_OUT) {
        memcpy(t->out + t->len, s, len);
    }

    t->len += len;
}


static void
emit_str(transcript_t *t, ngx_str_t *s)
{
    u_char  n[sizeof(size_t)];

    memcpy(n, &s->len, sizeof(size_t));
    emit(t, n, sizeof(size_t));
    emit(t, s->data, s->len);
}


static uint32_t
next(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;

    return *x;
}


/* slice 0: all at once, room 1 MiB; else slices of 1..slice bytes */

static void
run(ngx_str_t *ct, const u_char *body, size_t len, uint32_t seed,
    size_t slice, size_t room_max, transcript_t *t)
{
    u_char                   *p, *last, *copy;
    size_t                    off, n, room;
    ngx_cloudauth_mp_t       *mp;
    ngx_cloudauth_mp_event_e  ev;

    t->len = 0;
    t->error = 0;
    t->finished = 0;

    mp = malloc(sizeof(ngx_cloudauth_mp_t));
    if (mp == NULL) {
        abort();
    }

    if (ngx_cloudauth_mp_init(mp, ct) != NGX_OK) {
        fuzz_assert(mp->error != NULL);
        t->error = 1;
        free(mp);
        return;
    }

    off = 0;

    while (off < len) {
        n = slice ? next(&seed) % slice + 1 : len;
        if (n > len - off) {
            n = len - off;
        }

        copy = malloc(n);
        if (copy == NULL) {
            abort();
        }

        memcpy(copy, body + off, n);
        p = copy;
        last = copy + n;

        for ( ;; ) {
            room = slice ? next(&seed) % room_max + 1 : 1 << 20;

            ev = ngx_cloudauth_mp_parse(mp, &p, last, room);

            fuzz_assert(p >= copy && p <= last);

            if (ev == NGX_CLOUDAUTH_MP_NEED_MORE) {
                fuzz_assert(p == last);
                break;
            }

            if (ev == NGX_CLOUDAUTH_MP_ERROR) {
                fuzz_assert(mp->error != NULL);
                t->error = 1;
                free(copy);
                free(mp);
                return;
            }

            switch (ev) {

            case NGX_CLOUDAUTH_MP_PART:
                emit(t, "P", 1);
                emit_str(t, &mp->part.name);
                emit(t, mp->part.file ? "F" : "-", 1);
                emit_str(t, &mp->part.filename);
                emit_str(t, &mp->part.content_type);
                emit_str(t, &mp->part.content_md5);
                break;

            case NGX_CLOUDAUTH_MP_DATA:
                fuzz_assert(mp->len > 0 && mp->len <= room);
                /* data runs may be cut anywhere: no marker between them */
                emit(t, mp->data, mp->len);
                break;

            case NGX_CLOUDAUTH_MP_PART_END:
                emit(t, "E", 1);
                break;

            case NGX_CLOUDAUTH_MP_END:
                emit(t, "$", 1);
                break;

            default:
                fuzz_assert(0);
            }
        }

        free(copy);
        off += n;
    }

    t->finished = (ngx_cloudauth_mp_finish(mp) == NGX_OK);
    free(mp);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const u_char         *nl;
    u_char               *ctype;
    size_t                slice, room;
    uint32_t              seed;
    ngx_str_t             ct;
    static transcript_t   whole, sliced;

    if (size < 2) {
        return 0;
    }

    seed = (data[0] << 8 | data[1]) + 1;
    slice = (data[0] & 0x3f) + 1;
    room = (data[1] & 0x3f) + 1;
    data += 2;
    size -= 2;

    nl = memchr(data, '\n', size);
    if (nl == NULL) {
        return 0;
    }

    /* the header value in a buffer of its own size */

    ct.len = nl - data;
    ctype = malloc(ct.len ? ct.len : 1);
    if (ctype == NULL) {
        abort();
    }

    memcpy(ctype, data, ct.len);
    ct.data = ctype;

    size -= ct.len + 1;
    data = nl + 1;

    run(&ct, data, size, seed, 0, 0, &whole);
    run(&ct, data, size, seed, slice, room, &sliced);

    /* up to an error, held-back bytes may or may not have been given */

    fuzz_assert(whole.error == sliced.error);

    if (!whole.error) {
        fuzz_assert(whole.finished == sliced.finished);
        fuzz_assert(whole.len == sliced.len);
        fuzz_assert(memcmp(whole.out, sliced.out,
                           ngx_min(whole.len, FUZZ_MP_OUT)) == 0);
    }

    free(ctype);

    return 0;
}
