
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Keeps tokens out of the error logs.  The module itself never logs a
 * token, but nginx does at debug level: the proxy module dumps the request
 * it sends upstream, the core every request header.  Each error log that
 * requests of a cloudauth configuration can write to gets a writer that
 * masks the value of every header the module injects ("Authorization" and
 * those named by "header=") and anything after "Bearer ".  Tokens read
 * through $cloudauth_token can end up anywhere (nginx logs variable values
 * and the headers it proxies), so the worker also remembers the last few
 * of them and masks them wherever they appear.
 *
 * The names of "header=" belong to the configuration that has them: they
 * live in its main configuration, allocated from its pool, and each writer
 * reaches them through the configuration it was installed for.  Only the
 * recent tokens are the worker's own, kept as copies.
 */


#include "ngx_cloudauth.h"


#define NGX_CLOUDAUTH_MAX_MASKED  16
#define NGX_CLOUDAUTH_RECENT      16
#define NGX_CLOUDAUTH_PREFIX      24


typedef struct {
    ngx_log_t                  *log;
    ngx_log_writer_pt           writer;
    void                       *wdata;
    ngx_cloudauth_main_conf_t  *cmcf;       /* its "header=" names */
} ngx_cloudauth_log_ctx_t;


static void ngx_cloudauth_log_writer(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static void ngx_cloudauth_log_unwrap(void *data);
static ngx_str_t *ngx_cloudauth_log_match(ngx_cloudauth_log_ctx_t *ctx,
    u_char *s, u_char *end);
static size_t ngx_cloudauth_log_scrub(ngx_cloudauth_log_ctx_t *ctx,
    u_char *dst, u_char *src, size_t len);


/* masked in every configuration; "header=" names add to these */

static ngx_str_t  ngx_cloudauth_masked[] = {
    ngx_string("authorization:"),
    ngx_string("bearer ")
};

#define NGX_CLOUDAUTH_NDEFAULT                                               \
    (sizeof(ngx_cloudauth_masked) / sizeof(ngx_cloudauth_masked[0]))


/* tokens handed out through $cloudauth_token: a prefix and the length */

typedef struct {
    size_t             len;
    u_char             prefix[NGX_CLOUDAUTH_PREFIX];
} ngx_cloudauth_recent_t;

static ngx_cloudauth_recent_t  ngx_cloudauth_recent[NGX_CLOUDAUTH_RECENT];
static ngx_uint_t              ngx_cloudauth_nrecent;
static ngx_uint_t              ngx_cloudauth_recent_next;


void
ngx_cloudauth_log_mask_token(ngx_str_t *token)
{
    ngx_uint_t               i;
    ngx_cloudauth_recent_t  *t;

    /* shorter values are not worth hiding, nor safe to look for */

    if (token->len < NGX_CLOUDAUTH_PREFIX) {
        return;
    }

    for (i = 0; i < ngx_cloudauth_nrecent; i++) {
        t = &ngx_cloudauth_recent[i];

        if (t->len == token->len
            && ngx_memcmp(t->prefix, token->data, NGX_CLOUDAUTH_PREFIX) == 0)
        {
            return;
        }
    }

    t = &ngx_cloudauth_recent[ngx_cloudauth_recent_next];
    t->len = token->len;
    ngx_memcpy(t->prefix, token->data, NGX_CLOUDAUTH_PREFIX);

    ngx_cloudauth_recent_next = (ngx_cloudauth_recent_next + 1)
                                % NGX_CLOUDAUTH_RECENT;

    if (ngx_cloudauth_nrecent < NGX_CLOUDAUTH_RECENT) {
        ngx_cloudauth_nrecent++;
    }
}


ngx_int_t
ngx_cloudauth_log_mask_header(ngx_conf_t *cf, ngx_cloudauth_main_conf_t *cmcf,
    ngx_str_t *lowcase)
{
    u_char      *p;
    ngx_str_t   *m;
    ngx_uint_t   i, n;

    for (i = 0; i < NGX_CLOUDAUTH_NDEFAULT; i++) {
        m = &ngx_cloudauth_masked[i];

        if (m->len == lowcase->len + 1 && m->data[lowcase->len] == ':'
            && ngx_strncmp(m->data, lowcase->data, lowcase->len) == 0)
        {
            return NGX_OK;
        }
    }

    if (cmcf->masked == NULL) {
        cmcf->masked = ngx_array_create(cf->pool, 4, sizeof(ngx_str_t));
        if (cmcf->masked == NULL) {
            return NGX_ERROR;
        }
    }

    m = cmcf->masked->elts;
    n = cmcf->masked->nelts;

    for (i = 0; i < n; i++) {
        if (m[i].len == lowcase->len + 1
            && ngx_strncmp(m[i].data, lowcase->data, lowcase->len) == 0)
        {
            return NGX_OK;
        }
    }

    if (NGX_CLOUDAUTH_NDEFAULT + n == NGX_CLOUDAUTH_MAX_MASKED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth: too many different \"header=\" names");
        return NGX_ERROR;
    }

    p = ngx_pnalloc(cf->pool, lowcase->len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, lowcase->data, lowcase->len);
    p[lowcase->len] = ':';

    m = ngx_array_push(cmcf->masked);
    if (m == NULL) {
        return NGX_ERROR;
    }

    m->data = p;
    m->len = lowcase->len + 1;

    return NGX_OK;
}


ngx_int_t
ngx_cloudauth_log_wrap(ngx_conf_t *cf, ngx_cloudauth_main_conf_t *cmcf,
    ngx_log_t *log)
{
    ngx_pool_cleanup_t       *cln;
    ngx_cloudauth_log_ctx_t  *ctx;

    for ( /* void */ ; log; log = log->next) {

        if (log->writer == ngx_cloudauth_log_writer) {
            continue;
        }

        /*
         * the writer is undone with the cycle's pool, before the module
         * is unloaded (its cleanup was registered earlier, so runs later)
         */

        cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_cloudauth_log_ctx_t));
        if (cln == NULL) {
            return NGX_ERROR;
        }

        ctx = cln->data;
        ctx->log = log;
        ctx->writer = log->writer;
        ctx->wdata = log->wdata;
        ctx->cmcf = cmcf;

        cln->handler = ngx_cloudauth_log_unwrap;

        log->writer = ngx_cloudauth_log_writer;
        log->wdata = ctx;
    }

    return NGX_OK;
}


static void
ngx_cloudauth_log_unwrap(void *data)
{
    ngx_cloudauth_log_ctx_t  *ctx = data;

    ctx->log->writer = ctx->writer;
    ctx->log->wdata = ctx->wdata;
}


static void
ngx_cloudauth_log_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    size_t                    n;
    ngx_log_t                 orig;
    ngx_cloudauth_log_ctx_t  *ctx;
    u_char                    out[4 * NGX_MAX_ERROR_STR];

    ctx = log->wdata;

    n = ngx_cloudauth_log_scrub(ctx, out, buf,
                                ngx_min(len, NGX_MAX_ERROR_STR));

    if (ctx->writer) {
        orig = *log;
        orig.writer = ctx->writer;
        orig.wdata = ctx->wdata;
        ctx->writer(&orig, level, out, n);
        return;
    }

    if (log->file == NULL || log->file->fd == NGX_INVALID_FILE) {
        return;
    }

    /* while nginx starts it copies warnings to stderr itself */

    if (log->file->fd == ngx_stderr && ngx_use_stderr
        && level <= NGX_LOG_WARN)
    {
        return;
    }

    (void) ngx_write_fd(log->file->fd, out, n);
}


static ngx_str_t *
ngx_cloudauth_log_match(ngx_cloudauth_log_ctx_t *ctx, u_char *s, u_char *end)
{
    ngx_str_t   *m;
    ngx_uint_t   i;

    for (i = 0; i < NGX_CLOUDAUTH_NDEFAULT; i++) {
        m = &ngx_cloudauth_masked[i];

        if ((size_t) (end - s) >= m->len
            && ngx_strncasecmp(s, m->data, m->len) == 0)
        {
            return m;
        }
    }

    if (ctx->cmcf == NULL || ctx->cmcf->masked == NULL) {
        return NULL;
    }

    m = ctx->cmcf->masked->elts;

    for (i = 0; i < ctx->cmcf->masked->nelts; i++) {
        if ((size_t) (end - s) >= m[i].len
            && ngx_strncasecmp(s, m[i].data, m[i].len) == 0)
        {
            return &m[i];
        }
    }

    return NULL;
}


static size_t
ngx_cloudauth_log_scrub(ngx_cloudauth_log_ctx_t *ctx, u_char *dst,
    u_char *src, size_t len)
{
    u_char                  *s, *d, *end, ch;
    ngx_str_t               *m;
    ngx_uint_t               i, header;
    ngx_cloudauth_recent_t  *t;

    /*
     * dst has room for 4 * len: "[hidden]" replaces at least one byte
     * after a match of at least 2 bytes ("x:")
     */

    s = src;
    d = dst;
    end = src + len;

    while (s < end) {

        for (i = 0; i < ngx_cloudauth_nrecent; i++) {
            t = &ngx_cloudauth_recent[i];

            if ((size_t) (end - s) >= NGX_CLOUDAUTH_PREFIX
                && *s == t->prefix[0]
                && ngx_memcmp(s, t->prefix, NGX_CLOUDAUTH_PREFIX) == 0)
            {
                break;
            }
        }

        if (i < ngx_cloudauth_nrecent) {
            d = ngx_cpymem(d, "[hidden]", 8);
            s += ngx_min(t->len, (size_t) (end - s));
            continue;
        }

        m = ngx_cloudauth_log_match(ctx, s, end);

        if (m == NULL) {
            *d++ = *s++;
            continue;
        }

        header = (m->data[m->len - 1] == ':');

        d = ngx_cpymem(d, s, m->len);
        s += m->len;

        while (s < end && *s == ' ') {
            *d++ = *s++;
        }

        if (s < end && (*s == 'B' || *s == 'b')
            && (size_t) (end - s) >= 7
            && ngx_strncasecmp(s, (u_char *) "bearer ", 7) == 0)
        {
            d = ngx_cpymem(d, s, 7);
            s += 7;
        }

        if (s < end && *s != CR && *s != LF && *s != '"') {
            d = ngx_cpymem(d, "[hidden]", 8);
        }

        /* a header's whole value; a bearer token up to a space */

        while (s < end) {
            ch = *s;

            if (ch == CR || ch == LF || ch == '"'
                || (!header && (ch == ' ' || ch == ',')))
            {
                break;
            }

            s++;
        }
    }

    return d - dst;
}
