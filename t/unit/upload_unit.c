
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Unit tests of the pure parts of the upload: CRC32C (hardware and table)
 * and the streaming multipart/form-data parser, fed whole, byte by byte,
 * in random slices and with little room.  Prints TAP; t/205-upload-unit.t
 * compiles and runs it.
 */


#include "ngx_cloudauth.h"
#include "ngx_cloudauth_multipart.h"
#include <stdio.h>
#include <stdlib.h>


static int  tests, failed;


static void
ok(int cond, const char *name)
{
    tests++;

    if (!cond) {
        failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, name);
}


static uint32_t
crc32c_bitwise(const u_char *p, size_t len)
{
    uint32_t  crc;
    int       k;

    crc = 0xffffffff;

    while (len--) {
        crc ^= *p++;

        for (k = 0; k < 8; k++) {
            crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78 : crc >> 1;
        }
    }

    return ~crc;
}


static void
test_crc32c(void)
{
    u_char    *buf;
    size_t     i, n, off;
    uint32_t   a, b, want;
    int        pass;

    ok(ngx_cloudauth_crc32c(0, (u_char *) "123456789", 9) == 0xe3069283,
       "crc32c check value");
    ok(ngx_cloudauth_crc32c(0, (u_char *) "", 0) == 0, "crc32c of nothing");

    printf("# hardware crc32c: %s\n",
           ngx_cloudauth_crc32c_hardware() ? "yes" : "no");

    n = 1 << 20;
    buf = malloc(n + 16);
    srandom(1);

    for (i = 0; i < n + 16; i++) {
        buf[i] = random() & 0xff;
    }

    pass = 1;

    for (off = 0; off < 8; off++) {
        for (i = 0; i < 300; i += 7) {
            want = crc32c_bitwise(buf + off, i);
            if (ngx_cloudauth_crc32c(0, buf + off, i) != want) {
                pass = 0;
            }
        }
    }

    ok(pass, "crc32c of short unaligned runs matches the bitwise one");

    want = crc32c_bitwise(buf, n);
    a = ngx_cloudauth_crc32c(0, buf, n);

    b = 0;
    for (off = 0; off < n; off += 4093) {
        b = ngx_cloudauth_crc32c(b, buf + off,
                                 off + 4093 > n ? n - off : 4093);
    }

    ok(a == want && b == want, "crc32c of 1 MiB, whole and in pieces");

    ngx_cloudauth_crc32c_force_software();

    a = ngx_cloudauth_crc32c(0, buf + 3, n - 3);
    ok(a == crc32c_bitwise(buf + 3, n - 3), "crc32c table fallback");

    free(buf);
}


/* the multipart parser */

typedef struct {
    char    out[1 << 16];
    size_t  len;
    int     parts;
    int     ends;
    int     error;
    const char *reason;
} result_t;


static void
emit(result_t *res, const char *s, size_t len)
{
    if (len && res->len + len < sizeof(res->out)) {
        memcpy(res->out + res->len, s, len);
        res->len += len;
    }
}


/*
 * Feeds body in slices of "slice" bytes (0: random 1..64), with at most
 * "room" bytes per data event; writes a transcript:
 *   [name|filename|type]data...|  per part, "$" at the end.
 */

static void
run(const char *ctype, const char *body, size_t len, size_t slice,
    size_t room, result_t *res)
{
    u_char                   *p, *last, *copy;
    size_t                    off, n;
    ngx_str_t                 ct;
    ngx_cloudauth_mp_t       *mp;
    ngx_cloudauth_mp_event_e  ev;

    memset(res, 0, sizeof(result_t));

    mp = malloc(sizeof(ngx_cloudauth_mp_t));
    ct.data = (u_char *) ctype;
    ct.len = strlen(ctype);

    if (ngx_cloudauth_mp_init(mp, &ct) != NGX_OK) {
        res->error = 1;
        res->reason = mp->error;
        free(mp);
        return;
    }

    off = 0;

    while (off < len) {
        n = slice ? slice : (size_t) (random() % 64) + 1;
        if (n > len - off) {
            n = len - off;
        }

        /* a copy per slice: the parser must not keep pointers into it */
        copy = malloc(n);
        memcpy(copy, body + off, n);
        p = copy;
        last = copy + n;

        for ( ;; ) {
            ev = ngx_cloudauth_mp_parse(mp, &p, last, room);

            if (ev == NGX_CLOUDAUTH_MP_NEED_MORE) {
                break;
            }

            if (ev == NGX_CLOUDAUTH_MP_ERROR) {
                res->error = 1;
                res->reason = mp->error;
                free(copy);
                free(mp);
                return;
            }

            switch (ev) {
            case NGX_CLOUDAUTH_MP_PART:
                res->parts++;
                emit(res, "[", 1);
                emit(res, (char *) mp->part.name.data, mp->part.name.len);
                emit(res, "|", 1);
                if (mp->part.file) {
                    emit(res, (char *) mp->part.filename.data,
                         mp->part.filename.len);
                }
                emit(res, "|", 1);
                emit(res, (char *) mp->part.content_type.data,
                     mp->part.content_type.len);
                emit(res, "]", 1);
                break;
            case NGX_CLOUDAUTH_MP_DATA:
                if (mp->len == 0 || mp->len > room) {
                    res->error = 1;
                    res->reason = "bad data event length";
                }
                emit(res, (char *) mp->data, mp->len);
                break;
            case NGX_CLOUDAUTH_MP_PART_END:
                emit(res, "|", 1);
                break;
            case NGX_CLOUDAUTH_MP_END:
                res->ends++;
                emit(res, "$", 1);
                break;
            default:
                break;
            }
        }

        free(copy);
        off += n;
    }

    if (ngx_cloudauth_mp_finish(mp) != NGX_OK) {
        res->error = 1;
        res->reason = mp->error;
    }

    free(mp);
}


#define CT  "multipart/form-data; boundary=----WebKitFormBoundaryX7"
#define B   "------WebKitFormBoundaryX7"


static void
test_multipart(void)
{
    static const char  form[] =
        "preamble to ignore\r\n"
        B "\r\n"
        "Content-Disposition: form-data; name=\"title\"\r\n"
        "\r\n"
        "hello\r\nworld\r\n"
        B "\r\n"
        "Content-Disposition: form-data; name=\"file\"; "
        "filename=\"a \\\"q\\\".txt\"\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "line1\r\n--not-a-boundary\r\n" "\r\r\n-" B "x" "\r\n"
        "\r\n" B "y, a longer boundary"
        "\r\n"
        B "\r\n"
        "content-disposition: form-data; name=file2; filename=\"\"\r\n"
        "\r\n"
        "\r\n"
        B "--\r\n"
        "epilogue\r\n";

    static const char  want[] =
        "[title||]hello\r\nworld|"
        "[file|a \"q\".txt|text/plain]"
        "line1\r\n--not-a-boundary\r\n" "\r\r\n-" B "x" "\r\n"
        "\r\n" B "y, a longer boundary" "|"
        "[file2||]|$";

    result_t    res;
    size_t      slice, room;
    int         pass;
    char        name[128];

    run(CT, form, sizeof(form) - 1, sizeof(form), 1 << 20, &res);
    ok(!res.error && res.parts == 3 && res.ends == 1
       && res.len == sizeof(want) - 1
       && memcmp(res.out, want, res.len) == 0, "form parsed whole");

    if (res.error) {
        printf("# %s\n", res.reason);
    } else {
        printf("# got: %.*s\n", (int) res.len, res.out);
    }

    pass = 1;

    for (slice = 1; slice <= 40; slice++) {
        for (room = 1; room <= 9; room += 4) {
            run(CT, form, sizeof(form) - 1, slice, room, &res);

            if (res.error || res.len != sizeof(want) - 1
                || memcmp(res.out, want, res.len) != 0)
            {
                pass = 0;
                snprintf(name, sizeof(name), "slice %zu room %zu", slice,
                         room);
                printf("# failed: %s: %s\n", name,
                       res.error ? res.reason : "transcript differs");
            }
        }
    }

    ok(pass, "form parsed in every slicing, with little room");

    pass = 1;

    for (slice = 0; slice < 200; slice++) {
        run(CT, form, sizeof(form) - 1, 0, (random() % 100) + 1, &res);

        if (res.error || res.len != sizeof(want) - 1
            || memcmp(res.out, want, res.len) != 0)
        {
            pass = 0;
        }
    }

    ok(pass, "form parsed in random slices");

    /* errors */

    run("multipart/form-data", form, sizeof(form) - 1, 10, 10, &res);
    ok(res.error, "no boundary parameter");

    run("multipart/form-data; boundary=\"abc\r\"", "x", 1, 1, 1, &res);
    ok(res.error, "boundary with CR");

    run("text/plain; boundary=x", "x", 1, 1, 1, &res);
    ok(res.error, "not multipart");

    run(CT, form, sizeof(form) - 40, 7, 100, &res);
    ok(res.error, "truncated body");

    run(CT, "nothing here", 12, 5, 100, &res);
    ok(res.error, "no boundary in the body");

    {
        static const char  nodisp[] = B "\r\nContent-Type: x\r\n\r\nabc\r\n"
                                      B "--";
        run(CT, nodisp, sizeof(nodisp) - 1, 3, 100, &res);
        ok(res.error, "part without Content-Disposition");
    }

    {
        static const char  bad[] = B "X\r\n";
        run(CT, bad, sizeof(bad) - 1, 3, 100, &res);
        ok(res.error, "garbage after a boundary");
    }

    {
        static const char  quoted[] =
            B "\r\nContent-Disposition: form-data; name=\"f\"; "
            "filename=\"C:\\\\x\\\\y.bin\"\r\n\r\n" "\r\n" B "--";
        run("multipart/form-data; boundary=\"----WebKitFormBoundaryX7\"",
            quoted, sizeof(quoted) - 1, 4, 100, &res);
        ok(!res.error && res.len > 0
           && strstr(res.out, "[f|C:\\x\\y.bin|]|$") != NULL,
           "quoted boundary, escaped filename, empty part");
    }

    {
        static const char  path[] =
            B "\r\nContent-Disposition: form-data; name=\"f\"; "
            "filename=\"C:\\dir\\f.txt\"\r\n\r\n" "x\r\n" B "--";
        run(CT, path, sizeof(path) - 1, 5, 100, &res);
        ok(!res.error && res.len > 0
           && strstr(res.out, "[f|C:\\dir\\f.txt|]x|$") != NULL,
           "a browser's unescaped backslashes stay");
    }

    {
        char    *big;
        size_t   i, n;

        n = NGX_CLOUDAUTH_MP_MAX_HEADERS + 100;
        big = malloc(n + 200);
        i = sprintf(big, "%s\r\nX-Pad: ", B);
        memset(big + i, 'a', n);
        i += n;
        i += sprintf(big + i, "\r\n\r\n");
        run(CT, big, i, 1000, 100, &res);
        ok(res.error, "part headers too large");
        free(big);
    }
}


int
main(void)
{
    test_crc32c();
    test_multipart();

    printf("1..%d\n", tests);

    return failed ? 1 : 0;
}
