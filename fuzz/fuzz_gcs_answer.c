
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * GCS's answers to a resumable upload (ngx_cloudauth_gcs_session.c, whose
 * parsers are static: the file is included here): each header line as
 * curl hands it over (the Range header, the session start's Location),
 * then the answer as a whole (ngx_http_cloudauth_upload_answer(): the
 * session URI check, the Range acknowledgement, the final object's JSON,
 * GCS's error JSON, back-off).  What that file calls in the rest of the
 * module is stubbed below.
 *
 * Input: 3 bytes (the request: op and flags; the status; the buffered
 * bytes), header lines up to an empty line, then the body.
 */


#include "harness.h"

#include "ngx_cloudauth_gcs_session.c"


typedef struct {
    ngx_uint_t   failed;
    ngx_uint_t   status;
    ngx_uint_t   closed;
    ngx_uint_t   ran;
} fuzz_calls_t;


static fuzz_calls_t           calls;
static ngx_cloudauth_stats_t  stats;


/* stubs of the module's other files */

void
ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u)
{
    calls.ran++;
}


void
ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u)
{
    calls.closed++;
    u->obj.open = 0;
}


void
ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len)
{
    fuzz_assert(status >= 400 && status < 600);
    fuzz_assert(reason == NULL || len <= 512);

    if (reason && len) {
        /* what the client is told: all of it readable (ASan checks) */
        fuzz_assert(ngx_strlchr((u_char *) reason, (u_char *) reason + len,
                                '\xff') != (u_char *) reason + len);
    }

    calls.failed++;
    calls.status = status;
}


void
ngx_cloudauth_invalidate(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_str_t *token, ngx_log_t *log)
{
}


void
ngx_cloudauth_fetch_free(ngx_cloudauth_fetch_t *f)
{
}


ngx_cloudauth_fetch_t *
ngx_cloudauth_fetch_stream(ngx_cloudauth_request_t *req, off_t length,
    ngx_cloudauth_fetch_read_pt read, ngx_cloudauth_fetch_rewind_pt rewind,
    ngx_cloudauth_fetch_header_pt header,
    ngx_cloudauth_fetch_handler_pt handler, void *data, ngx_log_t *log)
{
    return NULL;
}


ngx_cloudauth_stats_t *
ngx_cloudauth_cache_stats(void)
{
    return &stats;
}


ngx_cloudauth_main_conf_t *
ngx_cloudauth_main_conf(void)
{
    return NULL;
}


char *
ngx_cloudauth_copy_cstr(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_cpystrn(p, s->data, s->len + 1);

    return (char *) p;
}


/* the harness */

static long  statuses[] = {
    200, 201, 308, 308, 308, 400, 401, 403, 404, 410, 412, 0, 408, 429,
    500, 503
};


/*
 * "match": the object as the answer's JSON describes it, so that the
 * final answer's checks pass and the success path is taken
 */

static void
fuzz_match(ngx_http_cloudauth_object_t *obj, u_char *body, size_t len,
    ngx_pool_t *pool)
{
    json_t      *root;
    u_char       raw[8];
    ngx_str_t    src, dst;
    const char  *name, *crc, *size;

    root = json_loadb((char *) body, len, 0, NULL);
    if (root == NULL) {
        return;
    }

    name = crc = size = NULL;

    if (json_unpack(root, "{s?s, s?s, s?s}", "name", &name, "crc32c", &crc,
                    "size", &size)
        != 0)
    {
        json_decref(root);
        return;
    }

    if (name && *name) {
        obj->name.len = ngx_strlen(name);
        obj->name.data = ngx_pnalloc(pool, obj->name.len);
        if (obj->name.data == NULL) {
            abort();
        }

        ngx_memcpy(obj->name.data, name, obj->name.len);
    }

    if (crc && ngx_strlen(crc) == 8) {
        src.data = (u_char *) crc;
        src.len = 8;
        dst.data = raw;

        if (ngx_decode_base64(&dst, &src) == NGX_OK && dst.len == 4) {
            obj->crc32c = (uint32_t) raw[0] << 24 | raw[1] << 16
                          | raw[2] << 8 | raw[3];
        }
    }

    if (size) {
        obj->received = ngx_atoof((u_char *) size, ngx_strlen(size));
        if (obj->received < 0) {
            obj->received = 0;
        }
    }

    json_decref(root);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                            *p, *last, *nl, *line, *body;
    size_t                             len, old_len;
    off_t                              old_offset;
    ngx_int_t                          rc;
    ngx_log_t                          log;
    ngx_pool_t                        *pool;
    ngx_connection_t                   c;
    ngx_http_request_t                 r;
    ngx_cloudauth_fetch_t              f;
    ngx_http_cloudauth_op_e            op;
    ngx_http_cloudauth_upload_t        u;
    ngx_http_cloudauth_upload_conf_t   conf;
    static EVP_MD_CTX                 *md5;

    fuzz_ngx_init();

    if (md5 == NULL) {
        ngx_event_timer_init(fuzz_log);

        md5 = EVP_MD_CTX_new();
        if (md5 == NULL) {
            abort();
        }
    }

    if (size < 3) {
        return 0;
    }

    ngx_memzero(&calls, sizeof(fuzz_calls_t));
    pool = fuzz_pool();

    log = *fuzz_log;
    ngx_memzero(&c, sizeof(ngx_connection_t));
    c.log = &log;
    ngx_memzero(&r, sizeof(ngx_http_request_t));
    r.pool = pool;
    r.connection = &c;

    ngx_memzero(&conf, sizeof(ngx_http_cloudauth_upload_conf_t));
    ngx_str_set(&conf.bucket, "fuzz-bucket");
    ngx_str_set(&conf.endpoint, "https://storage.googleapis.com");
    ngx_str_set(&conf.origin, "https://storage.googleapis.com/");
    conf.chunk_size = NGX_HTTP_CLOUDAUTH_QUANTUM;

    op = (ngx_http_cloudauth_op_e) ((data[0] & 3) + 1);

    ngx_memzero(&u, sizeof(ngx_http_cloudauth_upload_t));
    u.request = &r;
    u.conf = &conf;
    u.op = op;
    u.range = -1;
    u.reauth = (data[0] >> 4) & 1;
    u.retry.log = &log;
    u.retry.data = &u;
    u.fail_start = (data[0] & 0x80) ? ngx_current_msec - 61000 : 0;

    ngx_str_set(&u.obj.name, "dir/file.txt");
    ngx_str_set(&u.obj.content_type, "text/plain");
    u.obj.open = 1;
    u.obj.eof = (data[0] >> 2) & 1;
    u.obj.md5 = (data[0] & 8) ? md5 : NULL;
    u.obj.offset = (off_t) data[2] * 1000;
    u.obj.received = u.obj.offset;
    u.obj.total = -1;
    u.obj.start = ngx_current_msec;

    /* the chunk buffer: up to 1 KiB not yet acknowledged */

    u.len = (size_t) ((data[0] >> 5) & 3) * 300;
    u.buf = malloc(u.len ? u.len : 1);
    if (u.buf == NULL) {
        abort();
    }

    ngx_memset(u.buf, 'x', u.len);
    u.obj.received += u.len;

    ngx_memzero(&f, sizeof(ngx_cloudauth_fetch_t));
    f.log = &log;
    f.data = &u;
    f.status = statuses[data[1] % (sizeof(statuses) / sizeof(long))];
    ngx_cpystrn((u_char *) f.errbuf, (u_char *) "Operation timed out",
                CURL_ERROR_SIZE);

    if (data[1] >= 0xf0) {
        /* any status at all */
        f.status = (long) data[1] * 37 % 1000;
    }

    p = (u_char *) data + 3;
    last = (u_char *) data + size;

    /* header lines, each in a buffer of its own size, as curl gives them */

    while (p < last) {
        nl = memchr(p, '\n', last - p);
        len = (nl ? nl : last) - p;

        if (len && p[len - 1] == '\r') {
            len--;
        }

        if (len == 0) {
            p = nl ? nl + 1 : last;
            break;
        }

        line = malloc(len);
        if (line == NULL) {
            abort();
        }

        ngx_memcpy(line, p, len);
        ngx_http_cloudauth_upload_header(&f, line, len);
        free(line);

        fuzz_assert(u.range >= -2);
        fuzz_assert(u.location.len == 0 || u.location.data != NULL);

        p = nl ? nl + 1 : last;
    }

    /* the body, in a buffer of its own size */

    f.body_len = last - p;
    body = malloc(f.body_len ? f.body_len : 1);
    if (body == NULL) {
        abort();
    }

    ngx_memcpy(body, p, f.body_len);
    f.body = f.body_len ? body : NULL;
    f.body_max = f.body_len;

    if (data[0] & 0x40 && f.body_len) {
        fuzz_match(&u.obj, body, f.body_len, pool);
        u.obj.received = ngx_max(u.obj.received, u.obj.offset);
    }

    old_offset = u.obj.offset;
    old_len = u.len;

    rc = ngx_http_cloudauth_upload_answer(&u, &f, op);

    fuzz_assert(rc == NGX_OK || rc == NGX_AGAIN || rc == NGX_ERROR);

    if (calls.failed) {
        fuzz_assert(rc == NGX_ERROR);
    }

    if (rc == NGX_OK) {
        fuzz_assert(calls.failed == 0);

        /* no byte lost or made up */
        fuzz_assert(u.obj.offset >= old_offset);
        fuzz_assert(u.obj.offset + (off_t) u.len
                    == old_offset + (off_t) old_len);

        if (op == NGX_HTTP_CLOUDAUTH_OP_INIT && !u.reauth) {
            fuzz_assert(u.obj.session.len > conf.origin.len);
            fuzz_assert(ngx_strncasecmp(u.obj.session.data,
                                        conf.origin.data, conf.origin.len)
                        == 0);
        }
    }

    if (rc == NGX_AGAIN) {
        fuzz_assert(u.retry.timer_set);
    }

    if (u.retry.timer_set) {
        ngx_del_timer(&u.retry);
    }

    if (u.results) {
        json_decref(u.results);
    }

    free(body);
    free(u.buf);
    ngx_destroy_pool(pool);

    return 0;
}
