
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_status: what the gateway holds and does, as JSON or in the
 * Prometheus text format.  The entries are copied out of the zone under
 * its mutex, then formatted; no token ever leaves the zone here.
 *
 * It always answers: subjects come from requests and need not be UTF-8,
 * so every string is validated and its bad bytes shown as \xNN before
 * jansson sees it, and an entry that still cannot be shown is left out
 * (and logged) rather than failing the whole answer.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


/* an entry of the cache's snapshot, its cred filled in here */
typedef ngx_cloudauth_entry_t  ngx_cloudauth_snap_t;


static char *ngx_cloudauth_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_cloudauth_status_handler(ngx_http_request_t *r);
static ngx_array_t *ngx_cloudauth_status_snapshot(ngx_http_request_t *r);
static ngx_int_t ngx_cloudauth_status_json(ngx_http_request_t *r,
    ngx_array_t *snaps, ngx_str_t *out);
static json_t *ngx_cloudauth_status_entry(ngx_http_request_t *r,
    ngx_cloudauth_snap_t *s);
static json_t *ngx_cloudauth_status_string(ngx_http_request_t *r,
    u_char *data, size_t len);
static size_t ngx_cloudauth_status_utf8(u_char *p, u_char *last);
static ngx_int_t ngx_cloudauth_status_prometheus(ngx_http_request_t *r,
    ngx_array_t *snaps, ngx_str_t *out);


static ngx_command_t  ngx_http_cloudauth_status_commands[] = {

    { ngx_string("cloudauth_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_cloudauth_status,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cloudauth_status_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


/* a module of its own: the status page depends on the rest, not back */

ngx_module_t  ngx_http_cloudauth_status_module = {
    NGX_MODULE_V1,
    &ngx_http_cloudauth_status_module_ctx, /* module context */
    ngx_http_cloudauth_status_commands,    /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static char *
ngx_cloudauth_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_cloudauth_status_handler;

    return NGX_CONF_OK;
}


static ngx_uint_t
ngx_cloudauth_status_wants_text(ngx_http_request_t *r)
{
    ngx_str_t         v;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (ngx_http_arg(r, (u_char *) "format", 6, &v) == NGX_OK) {
        return v.len == 10 && ngx_strncmp(v.data, "prometheus", 10) == 0;
    }

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == 6
            && ngx_strncasecmp(h[i].key.data, (u_char *) "accept", 6) == 0
            && ngx_strlcasestrn(h[i].value.data,
                                h[i].value.data + h[i].value.len,
                                (u_char *) "text/plain", 10 - 1)
               != NULL)
        {
            return 1;
        }
    }
}


static ngx_int_t
ngx_cloudauth_status_handler(ngx_http_request_t *r)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_str_t     out;
    ngx_chain_t   cl;
    ngx_array_t  *snaps;
    ngx_uint_t    text;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    snaps = ngx_cloudauth_status_snapshot(r);
    if (snaps == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = ngx_cloudauth_status_wants_text(r);

    rc = text ? ngx_cloudauth_status_prometheus(r, snaps, &out)
              : ngx_cloudauth_status_json(r, snaps, &out);

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = out.len;

    if (text) {
        ngx_str_set(&r->headers_out.content_type,
                    "text/plain; version=0.0.4");
    } else {
        ngx_str_set(&r->headers_out.content_type, "application/json");
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = out.data;
    b->last = out.data + out.len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    cl.buf = b;
    cl.next = NULL;

    return ngx_http_output_filter(r, &cl);
}


/*
 * The cache's copy of its entries, each matched with its credential by
 * fingerprint; entries left from an earlier configuration are dropped.
 */

static ngx_array_t *
ngx_cloudauth_status_snapshot(ngx_http_request_t *r)
{
    ngx_uint_t                  i, k, n;
    ngx_array_t                *snaps;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_snap_t       *s;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);

    snaps = ngx_array_create(r->pool, 8, sizeof(ngx_cloudauth_snap_t));
    if (snaps == NULL || cmcf->creds.nelts == 0) {
        return snaps;
    }

    if (ngx_cloudauth_cache_snapshot(cmcf->shm_zone, snaps) != NGX_OK) {
        return NULL;
    }

    cp = cmcf->creds.elts;
    s = snaps->elts;
    n = 0;

    for (k = 0; k < snaps->nelts; k++) {

        for (i = 0; i < cmcf->creds.nelts; i++) {
            if (ngx_memcmp(s[k].fp, cp[i]->fp, NGX_CLOUDAUTH_FP_LEN) == 0) {
                break;
            }
        }

        if (i == cmcf->creds.nelts) {
            continue;
        }

        if (n != k) {
            s[n] = s[k];
        }

        s[n++].cred = cp[i];
    }

    snaps->nelts = n;

    return snaps;
}


static ngx_int_t
ngx_cloudauth_status_json(ngx_http_request_t *r, ngx_array_t *snaps,
    ngx_str_t *out)
{
    char                       *text;
    json_t                     *root, *creds, *c, *e, *list, *up;
    ngx_uint_t                  i, k, n, skipped;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_snap_t       *s;
    ngx_cloudauth_stats_t      *st;
    ngx_cloudauth_main_conf_t  *cmcf;

    struct {
        json_int_t              hits;
        json_int_t              misses;
        json_int_t              fetches;
        json_int_t              fetch_failures;
        json_int_t              waiters;
        json_int_t              invalidations;
        json_int_t              unauthorized_kept;
    } sum;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);
    cp = cmcf->creds.elts;
    s = snaps->elts;
    skipped = 0;

    root = json_object();
    if (root == NULL) {
        return NGX_ERROR;
    }

    /* json_object_set_new() takes the value even when it fails */

    creds = json_object();
    if (json_object_set_new(root, "credentials", creds) != 0) {
        goto failed;
    }

    for (i = 0; i < cmcf->creds.nelts; i++) {

        /* the sums count every entry, also one that cannot be shown */

        ngx_memzero(&sum, sizeof(sum));

        for (k = 0; k < snaps->nelts; k++) {
            if (s[k].cred == cp[i]) {
                sum.hits += s[k].hits;
                sum.misses += s[k].misses;
                sum.fetches += s[k].fetches;
                sum.fetch_failures += s[k].fetch_failures;
                sum.waiters += s[k].waiters;
                sum.invalidations += s[k].invalidations;
                sum.unauthorized_kept += s[k].unauthorized_kept;
            }
        }

        c = json_pack("{s:s%, s:[], s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                      "type", cp[i]->kind->name.data, cp[i]->kind->name.len,
                      "entries",
                      "hits", sum.hits, "misses", sum.misses,
                      "fetches", sum.fetches,
                      "fetch_failures", sum.fetch_failures,
                      "waiters", sum.waiters,
                      "invalidations", sum.invalidations,
                      "unauthorized_kept", sum.unauthorized_kept);

        if (json_object_setn_new(creds, (char *) cp[i]->name.data,
                                 cp[i]->name.len, c)
            != 0)
        {
            goto failed;
        }

        /* token requests in flight now, and how many may be */

        n = ngx_cloudauth_cache_in_flight(cmcf->shm_zone, cp[i]->fp);

        if (json_object_set_new(c, "in_flight", json_integer((json_int_t) n))
            != 0
            || json_object_set_new(c, "concurrency",
                                json_integer((json_int_t) cp[i]->concurrency))
               != 0)
        {
            goto failed;
        }

        list = json_object_get(c, "entries");

        for (k = 0; k < snaps->nelts; k++) {
            if (s[k].cred != cp[i]) {
                continue;
            }

            e = ngx_cloudauth_status_entry(r, &s[k]);

            if (e == NULL || json_array_append_new(list, e) != 0) {
                skipped++;
            }
        }
    }

    if (skipped) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cloudauth_status: %ui cache entries could not be "
                      "shown", skipped);
    }

    st = ngx_cloudauth_cache_stats(cmcf->shm_zone);

    if (st) {
        up = json_pack("{s:I, s:I, s:I, s:I}",
                       "active", (json_int_t) st->uploads_active,
                       "completed", (json_int_t) st->uploads_completed,
                       "failed", (json_int_t) st->uploads_failed,
                       "bytes", (json_int_t) st->upload_bytes);

        if (json_object_set_new(root, "uploads", up) != 0) {
            goto failed;
        }
    }

    text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);

    if (text == NULL) {
        return NGX_ERROR;
    }

    out->len = ngx_strlen(text) + 1;
    out->data = ngx_pnalloc(r->pool, out->len);
    if (out->data == NULL) {
        free(text);
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, text, out->len - 1);
    out->data[out->len - 1] = '\n';
    free(text);

    return NGX_OK;

failed:

    json_decref(root);

    return NGX_ERROR;
}


/* one entry, or NULL when it cannot be shown */

static json_t *
ngx_cloudauth_status_entry(ngx_http_request_t *r, ngx_cloudauth_snap_t *s)
{
    json_t  *e, *subject, *error;

    subject = ngx_cloudauth_status_string(r, s->subject, s->subject_len);
    error = ngx_cloudauth_status_string(r, s->error, s->error_len);

    if (subject == NULL || error == NULL) {
        json_decref(subject);
        json_decref(error);
        return NULL;
    }

    /* "o" takes the strings, also when json_pack() fails */

    e = json_pack("{s:o, s:s, s:I, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, "
                  "s:I}",
                  "subject", subject,
                  "state", s->state,
                  "expires_in", (json_int_t) s->expires_in,
                  "last_refresh", (json_int_t) s->last_refresh,
                  "last_error", error,
                  "hits", (json_int_t) s->hits,
                  "misses", (json_int_t) s->misses,
                  "fetches", (json_int_t) s->fetches,
                  "fetch_failures", (json_int_t) s->fetch_failures,
                  "waiters", (json_int_t) s->waiters,
                  "invalidations", (json_int_t) s->invalidations,
                  "unauthorized_kept", (json_int_t) s->unauthorized_kept);

    return e;
}


/*
 * A JSON string of bytes that need not be UTF-8: valid sequences as they
 * are, every other byte as the four characters \xNN.
 */

static json_t *
ngx_cloudauth_status_string(ngx_http_request_t *r, u_char *data, size_t len)
{
    u_char  *p, *last, *buf, *d;
    size_t   n;

    p = data;
    last = data + len;

    while (p < last) {
        n = ngx_cloudauth_status_utf8(p, last);

        if (n == 0) {
            break;
        }

        p += n;
    }

    if (p == last) {
        return json_stringn_nocheck((char *) data, len);
    }

    buf = ngx_pnalloc(r->pool, 4 * len);
    if (buf == NULL) {
        return NULL;
    }

    d = ngx_cpymem(buf, data, p - data);

    while (p < last) {
        n = ngx_cloudauth_status_utf8(p, last);

        if (n) {
            d = ngx_cpymem(d, p, n);
            p += n;
            continue;
        }

        d = ngx_sprintf(d, "\\x%02xd", *p++);
    }

    return json_stringn_nocheck((char *) buf, d - buf);
}


/*
 * The length of the UTF-8 sequence at p, or 0 if it is not one (RFC 3629,
 * as jansson checks: no overlong forms, no surrogates, up to U+10FFFF).
 */

static size_t
ngx_cloudauth_status_utf8(u_char *p, u_char *last)
{
    u_char  c, lo, hi;
    size_t  n, i;

    c = *p;

    if (c < 0x80) {
        return 1;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;

        if (c == 0xe0) {
            lo = 0xa0;

        } else if (c == 0xed) {
            hi = 0x9f;
        }

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;

        if (c == 0xf0) {
            lo = 0x90;

        } else if (c == 0xf4) {
            hi = 0x8f;
        }

    } else {
        return 0;
    }

    if ((size_t) (last - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}


static ngx_int_t
ngx_cloudauth_status_prometheus(ngx_http_request_t *r, ngx_array_t *snaps,
    ngx_str_t *out)
{
    u_char                     *p, *last;
    size_t                      size;
    ngx_uint_t                  i, k, m, *sums, *sum;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_snap_t       *s;
    ngx_cloudauth_stats_t      *st;
    ngx_cloudauth_main_conf_t  *cmcf;

    /* one family after another, as the text format wants */

    static struct {
        char        *name;
        char        *type;
        char        *label;
    } metrics[] = {
        { "cloudauth_cache_hits_total", "counter", "" },
        { "cloudauth_cache_misses_total", "counter", "" },
        { "cloudauth_token_fetches_total", "counter", ",result=\"ok\"" },
        { "cloudauth_token_fetches_total", NULL, ",result=\"error\"" },
        { "cloudauth_waiters_total", "counter", "" },
        { "cloudauth_invalidations_total", "counter", "" },
        { "cloudauth_unauthorized_kept_total", "counter", "" },
        { "cloudauth_cache_entries", "gauge", "" },
        { "cloudauth_token_expires_in_seconds", "gauge", "" }
    };

#define NGX_CLOUDAUTH_NMETRICS  (sizeof(metrics) / sizeof(metrics[0]))

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);
    cp = cmcf->creds.elts;
    s = snaps->elts;

    sums = ngx_pcalloc(r->pool, (cmcf->creds.nelts + 1)
                                * NGX_CLOUDAUTH_NMETRICS * sizeof(ngx_uint_t));
    if (sums == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < cmcf->creds.nelts; i++) {
        sum = &sums[i * NGX_CLOUDAUTH_NMETRICS];

        for (k = 0; k < snaps->nelts; k++) {
            if (s[k].cred != cp[i]) {
                continue;
            }

            sum[0] += s[k].hits;
            sum[1] += s[k].misses;
            sum[2] += s[k].fetches;
            sum[3] += s[k].fetch_failures;
            sum[4] += s[k].waiters;
            sum[5] += s[k].invalidations;
            sum[6] += s[k].unauthorized_kept;
            sum[7]++;

            /* the soonest expiry */
            if (s[k].expires_in
                && (sum[8] == 0 || (ngx_uint_t) s[k].expires_in < sum[8]))
            {
                sum[8] = s[k].expires_in;
            }
        }
    }

    size = 2048 + NGX_CLOUDAUTH_NMETRICS
                  * (128 + cmcf->creds.nelts * (160 + NGX_ATOMIC_T_LEN));

    p = ngx_pnalloc(r->pool, size);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;
    last = p + size;

    for (m = 0; m < NGX_CLOUDAUTH_NMETRICS; m++) {

        if (metrics[m].type) {
            p = ngx_slprintf(p, last, "# TYPE %s %s\n",
                             metrics[m].name, metrics[m].type);
        }

        for (i = 0; i < cmcf->creds.nelts; i++) {
            p = ngx_slprintf(p, last, "%s{credential=\"%V\"%s} %ui\n",
                             metrics[m].name, &cp[i]->name,
                             metrics[m].label,
                             sums[i * NGX_CLOUDAUTH_NMETRICS + m]);
        }
    }

    st = ngx_cloudauth_cache_stats(cmcf->shm_zone);

    if (st) {
        p = ngx_slprintf(p, last,
                         "# TYPE cloudauth_uploads_active gauge\n"
                         "cloudauth_uploads_active %uA\n"
                         "# TYPE cloudauth_uploads_total counter\n"
                         "cloudauth_uploads_total{result=\"completed\"} %uA\n"
                         "cloudauth_uploads_total{result=\"failed\"} %uA\n"
                         "# TYPE cloudauth_upload_bytes_total counter\n"
                         "cloudauth_upload_bytes_total %uA\n",
                         st->uploads_active, st->uploads_completed,
                         st->uploads_failed, st->upload_bytes);
    }

    out->len = p - out->data;

    return NGX_OK;
}
