
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_status: what the gateway holds and does, as JSON or in the
 * Prometheus text format.  The entries are copied out of the zone under
 * its mutex, then formatted; no token ever leaves the zone here.  With
 * thousands of subjects a credential lists only its most recently used
 * entries (?limit=N, 100 by default) besides its sums over all of them;
 * ?credential=NAME shows one credential.
 *
 * It always answers: subjects come from requests and need not be UTF-8,
 * so every string is validated and its bad bytes shown as \xNN before
 * jansson sees it, and an entry that still cannot be shown is left out
 * (and logged) rather than failing the whole answer.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


/* entries listed per credential: by default, and at most (?limit=N) */
#define NGX_CLOUDAUTH_STATUS_LIMIT      100
#define NGX_CLOUDAUTH_STATUS_MAX_LIMIT  1000


/* what a page shows: the credentials asked for, and the zone's use */

typedef struct {
    ngx_cloudauth_census_t    *census;
    ngx_uint_t                 n;
    ngx_cloudauth_usage_t      usage;
} ngx_cloudauth_status_t;


static char *ngx_cloudauth_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_cloudauth_status_handler(ngx_http_request_t *r);
static ngx_int_t ngx_cloudauth_status_args(ngx_http_request_t *r,
    ngx_cloudauth_cred_t **only, ngx_uint_t *limit, ngx_str_t *reason);
static ngx_int_t ngx_cloudauth_status_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_uint_t text, ngx_str_t *out);
static ngx_int_t ngx_cloudauth_status_snapshot(ngx_http_request_t *r,
    ngx_cloudauth_cred_t *only, ngx_uint_t limit, ngx_cloudauth_status_t *st);
static ngx_int_t ngx_cloudauth_status_json(ngx_http_request_t *r,
    ngx_cloudauth_status_t *st, ngx_str_t *out);
static json_t *ngx_cloudauth_status_entry(ngx_http_request_t *r,
    ngx_cloudauth_entry_t *s);
static json_t *ngx_cloudauth_status_counts(json_t *o,
    ngx_cloudauth_counters_t *n);
static json_t *ngx_cloudauth_status_string(ngx_http_request_t *r,
    u_char *data, size_t len);
static size_t ngx_cloudauth_status_utf8(u_char *p, u_char *last);
static ngx_int_t ngx_cloudauth_status_prometheus(ngx_http_request_t *r,
    ngx_cloudauth_status_t *st, ngx_str_t *out);


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
    ngx_int_t                rc;
    ngx_str_t                out;
    ngx_uint_t               text, limit;
    ngx_cloudauth_cred_t    *only;
    ngx_cloudauth_status_t   st;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_cloudauth_status_args(r, &only, &limit, &out);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_cloudauth_status_send(r, rc, 1, &out);
    }

    if (ngx_cloudauth_status_snapshot(r, only, limit, &st) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    text = ngx_cloudauth_status_wants_text(r);

    rc = text ? ngx_cloudauth_status_prometheus(r, &st, &out)
              : ngx_cloudauth_status_json(r, &st, &out);

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_cloudauth_status_send(r, NGX_HTTP_OK, text, &out);
}


/*
 * ?limit=N (a number from 0 to NGX_CLOUDAUTH_STATUS_MAX_LIMIT) and
 * ?credential=NAME (URL-encoded); NGX_OK, or the status to answer with and
 * its reason, a line of text
 */

static ngx_int_t
ngx_cloudauth_status_args(ngx_http_request_t *r, ngx_cloudauth_cred_t **only,
    ngx_uint_t *limit, ngx_str_t *reason)
{
    u_char                     *dst, *src;
    ngx_int_t                   n;
    ngx_str_t                   v, name;
    ngx_cloudauth_main_conf_t  *cmcf;

    *only = NULL;
    *limit = NGX_CLOUDAUTH_STATUS_LIMIT;

    if (ngx_http_arg(r, (u_char *) "limit", 5, &v) == NGX_OK) {
        n = ngx_atoi(v.data, v.len);

        if (n == NGX_ERROR || n > NGX_CLOUDAUTH_STATUS_MAX_LIMIT) {
            reason->data = ngx_pnalloc(r->pool, 128);
            if (reason->data == NULL) {
                return NGX_ERROR;
            }

            reason->len = ngx_sprintf(reason->data,
                                      "cloudauth_status: \"limit\" must be "
                                      "a whole number from 0 to %d\n",
                                      NGX_CLOUDAUTH_STATUS_MAX_LIMIT)
                          - reason->data;

            return NGX_HTTP_BAD_REQUEST;
        }

        *limit = n;
    }

    if (ngx_http_arg(r, (u_char *) "credential", 10, &v) != NGX_OK) {
        return NGX_OK;
    }

    name.data = ngx_pnalloc(r->pool, v.len);
    if (name.data == NULL) {
        return NGX_ERROR;
    }

    dst = name.data;
    src = v.data;
    ngx_unescape_uri(&dst, &src, v.len, NGX_UNESCAPE_URI);
    name.len = dst - name.data;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);

    *only = ngx_cloudauth_find_cred(cmcf, &name);

    if (*only == NULL) {
        ngx_str_set(reason, "cloudauth_status: \"credential\" names no "
                            "cloudauth_credential\n");
        return NGX_HTTP_NOT_FOUND;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_cloudauth_status_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t text, ngx_str_t *out)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   cl;

    r->headers_out.status = status;
    r->headers_out.content_length_n = out->len;

    if (status != NGX_HTTP_OK) {
        ngx_str_set(&r->headers_out.content_type, "text/plain");

    } else if (text) {
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

    b->pos = out->data;
    b->last = out->data + out->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    cl.buf = b;
    cl.next = NULL;

    return ngx_http_output_filter(r, &cl);
}


/*
 * The credentials asked for (only, or all of them), each with up to limit
 * of its entries and its sums, copied out of the zone in one go
 */

static ngx_int_t
ngx_cloudauth_status_snapshot(ngx_http_request_t *r,
    ngx_cloudauth_cred_t *only, ngx_uint_t limit, ngx_cloudauth_status_t *st)
{
    ngx_uint_t                  i, n;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_census_t     *c, **sorted;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);

    ngx_memzero(st, sizeof(ngx_cloudauth_status_t));

    cp = only ? &only : cmcf->creds.elts;
    n = only ? 1 : cmcf->creds.nelts;

    if (n == 0) {
        return NGX_OK;
    }

    c = ngx_pcalloc(r->pool, n * sizeof(ngx_cloudauth_census_t));
    sorted = ngx_palloc(r->pool, n * sizeof(ngx_cloudauth_census_t *));

    if (c == NULL || sorted == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        c[i].cred = cp[i];
        c[i].limit = limit;
        sorted[i] = &c[i];
    }

    st->census = c;
    st->n = n;

    return ngx_cloudauth_cache_snapshot(cmcf->shm_zone, r->pool, sorted, n,
                                        &st->usage);
}


static ngx_int_t
ngx_cloudauth_status_json(ngx_http_request_t *r, ngx_cloudauth_status_t *st,
    ngx_str_t *out)
{
    char                       *text;
    json_t                     *root, *creds, *c, *e, *list, *up, *zone;
    ngx_uint_t                  i, k, n, skipped;
    ngx_cloudauth_entry_t      *s;
    ngx_cloudauth_stats_t      *stats;
    ngx_cloudauth_census_t     *cs;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);
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

    for (i = 0; i < st->n; i++) {
        cs = &st->census[i];

        /* the sums count every entry, also one that is not listed */

        c = ngx_cloudauth_status_counts(
                json_pack("{s:s%, s:I, s:[]}",
                          "type", cs->cred->kind->name.data,
                          cs->cred->kind->name.len,
                          "entries_total", (json_int_t) cs->total,
                          "entries"),
                &cs->counts);

        if (json_object_setn_new(creds, (char *) cs->cred->name.data,
                                 cs->cred->name.len, c)
            != 0)
        {
            goto failed;
        }

        /* token requests in flight now, and how many may be */

        n = ngx_cloudauth_cache_in_flight(cmcf->shm_zone, cs->cred->fp);

        if (json_object_set_new(c, "in_flight", json_integer((json_int_t) n))
            != 0
            || json_object_set_new(c, "concurrency",
                           json_integer((json_int_t) cs->cred->concurrency))
               != 0)
        {
            goto failed;
        }

        list = json_object_get(c, "entries");
        s = cs->entries->elts;

        for (k = 0; k < cs->entries->nelts; k++) {
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

    if (st->usage.size) {
        zone = json_pack("{s:I, s:I}",
                         "size", (json_int_t) st->usage.size,
                         "used", (json_int_t) st->usage.used);

        if (json_object_set_new(root, "zone", zone) != 0) {
            goto failed;
        }
    }

    stats = ngx_cloudauth_cache_stats(cmcf->shm_zone);

    if (stats) {
        up = json_pack("{s:I, s:I, s:I, s:I}",
                       "active", (json_int_t) stats->uploads_active,
                       "completed", (json_int_t) stats->uploads_completed,
                       "failed", (json_int_t) stats->uploads_failed,
                       "bytes", (json_int_t) stats->upload_bytes);

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
ngx_cloudauth_status_entry(ngx_http_request_t *r, ngx_cloudauth_entry_t *s)
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

    e = json_pack("{s:o, s:s, s:I, s:I, s:o}",
                  "subject", subject,
                  "state", s->state,
                  "expires_in", (json_int_t) s->expires_in,
                  "last_refresh", (json_int_t) s->last_refresh,
                  "last_error", error);

    return ngx_cloudauth_status_counts(e, &s->counts);
}


/* an entry's counters, or a credential's sums, added to its object */

static json_t *
ngx_cloudauth_status_counts(json_t *o, ngx_cloudauth_counters_t *n)
{
    json_t  *c;

    if (o == NULL) {
        return NULL;
    }

    c = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                  "hits", (json_int_t) n->hits,
                  "misses", (json_int_t) n->misses,
                  "fetches", (json_int_t) n->fetches,
                  "fetch_failures", (json_int_t) n->fetch_failures,
                  "waiters", (json_int_t) n->waiters,
                  "invalidations", (json_int_t) n->invalidations,
                  "unauthorized_kept", (json_int_t) n->unauthorized_kept);

    if (c == NULL || json_object_update(o, c) != 0) {
        json_decref(c);
        json_decref(o);
        return NULL;
    }

    json_decref(c);

    return o;
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
ngx_cloudauth_status_prometheus(ngx_http_request_t *r,
    ngx_cloudauth_status_t *st, ngx_str_t *out)
{
    u_char                     *p, *last;
    size_t                      size;
    ngx_uint_t                  i, m, *sums, *sum;
    ngx_cloudauth_stats_t      *stats;
    ngx_cloudauth_census_t     *cs;
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

    sums = ngx_palloc(r->pool,
                      st->n * NGX_CLOUDAUTH_NMETRICS * sizeof(ngx_uint_t));
    if (sums == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < st->n; i++) {
        cs = &st->census[i];
        sum = &sums[i * NGX_CLOUDAUTH_NMETRICS];

        sum[0] = cs->counts.hits;
        sum[1] = cs->counts.misses;
        sum[2] = cs->counts.fetches;
        sum[3] = cs->counts.fetch_failures;
        sum[4] = cs->counts.waiters;
        sum[5] = cs->counts.invalidations;
        sum[6] = cs->counts.unauthorized_kept;
        sum[7] = cs->total;
        sum[8] = (ngx_uint_t) cs->soonest;
    }

    size = 2048 + NGX_CLOUDAUTH_NMETRICS
                  * (128 + st->n * (160 + NGX_ATOMIC_T_LEN));

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

        for (i = 0; i < st->n; i++) {
            p = ngx_slprintf(p, last, "%s{credential=\"%V\"%s} %ui\n",
                             metrics[m].name, &st->census[i].cred->name,
                             metrics[m].label,
                             sums[i * NGX_CLOUDAUTH_NMETRICS + m]);
        }
    }

    if (st->usage.size) {
        p = ngx_slprintf(p, last,
                         "# TYPE cloudauth_zone_size_bytes gauge\n"
                         "cloudauth_zone_size_bytes %uz\n"
                         "# TYPE cloudauth_zone_used_bytes gauge\n"
                         "cloudauth_zone_used_bytes %uz\n",
                         st->usage.size, st->usage.used);
    }

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);
    stats = ngx_cloudauth_cache_stats(cmcf->shm_zone);

    if (stats) {
        p = ngx_slprintf(p, last,
                         "# TYPE cloudauth_uploads_active gauge\n"
                         "cloudauth_uploads_active %uA\n"
                         "# TYPE cloudauth_uploads_total counter\n"
                         "cloudauth_uploads_total{result=\"completed\"} %uA\n"
                         "cloudauth_uploads_total{result=\"failed\"} %uA\n"
                         "# TYPE cloudauth_upload_bytes_total counter\n"
                         "cloudauth_upload_bytes_total %uA\n",
                         stats->uploads_active, stats->uploads_completed,
                         stats->uploads_failed, stats->upload_bytes);
    }

    out->len = p - out->data;

    return NGX_OK;
}
