
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_status: what the gateway holds and does, as JSON or in the
 * Prometheus text format.  The entries are copied out of the zone under
 * its mutex, then formatted; no token ever leaves the zone here.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


typedef struct {
    ngx_cloudauth_cred_t      *cred;
    u_char                     subject[NGX_CLOUDAUTH_MAX_SUBJECT];
    size_t                     subject_len;
    u_char                     error[NGX_CLOUDAUTH_MAX_ERROR];
    size_t                     error_len;
    const char                *state;
    time_t                     expires_in;
    time_t                     last_refresh;
    ngx_uint_t                 hits;
    ngx_uint_t                 misses;
    ngx_uint_t                 fetches;
    ngx_uint_t                 fetch_failures;
    ngx_uint_t                 waiters;
    ngx_uint_t                 invalidations;
} ngx_cloudauth_snap_t;


static ngx_int_t ngx_cloudauth_status_handler(ngx_http_request_t *r);
static ngx_array_t *ngx_cloudauth_status_snapshot(ngx_http_request_t *r);
static ngx_int_t ngx_cloudauth_status_json(ngx_http_request_t *r,
    ngx_array_t *snaps, ngx_str_t *out);
static ngx_int_t ngx_cloudauth_status_prometheus(ngx_http_request_t *r,
    ngx_array_t *snaps, ngx_str_t *out);


char *
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


static const char *
ngx_cloudauth_status_state(ngx_cloudauth_node_t *n, uint64_t now)
{
    ngx_uint_t  claimed, usable;

    claimed = (n->claim_pid != 0 && n->claim_deadline > now);
    usable = (n->token_len && now < n->usable_until);

    if (usable) {
        if (claimed) {
            return "refreshing";
        }

        return n->failures ? "failing" : "valid";
    }

    if (now < n->backoff_until) {
        return "backoff";
    }

    if (claimed) {
        return "fetching";
    }

    return n->failures ? "failing" : "empty";
}


static ngx_array_t *
ngx_cloudauth_status_snapshot(ngx_http_request_t *r)
{
    uint64_t                    now;
    ngx_uint_t                  i;
    ngx_queue_t                *q, *entries;
    ngx_array_t                *snaps;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_node_t       *n;
    ngx_cloudauth_snap_t       *s;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);

    snaps = ngx_array_create(r->pool, 8, sizeof(ngx_cloudauth_snap_t));
    if (snaps == NULL || cmcf->creds.nelts == 0) {
        return snaps;
    }

    cp = cmcf->creds.elts;

    ngx_cloudauth_cache_lock();

    now = ngx_cloudauth_now();
    entries = ngx_cloudauth_cache_entries();

    for (q = ngx_queue_head(entries);
         q != ngx_queue_sentinel(entries);
         q = ngx_queue_next(q))
    {
        n = ngx_queue_data(q, ngx_cloudauth_node_t, lru);

        for (i = 0; i < cmcf->creds.nelts; i++) {
            if (ngx_memcmp(n->fp, cp[i]->fp, NGX_CLOUDAUTH_FP_LEN) == 0) {
                break;
            }
        }

        if (i == cmcf->creds.nelts) {
            /* left from an earlier configuration */
            continue;
        }

        s = ngx_array_push(snaps);
        if (s == NULL) {
            break;
        }

        s->cred = cp[i];
        s->subject_len = n->subject_len;
        ngx_memcpy(s->subject, n->data + n->name_len, n->subject_len);
        s->error_len = n->error_len;
        ngx_memcpy(s->error, n->error, n->error_len);
        s->state = ngx_cloudauth_status_state(n, now);
        s->expires_in = (n->token_len && n->expires_at > now)
                        ? (time_t) ((n->expires_at - now) / 1000) : 0;
        s->last_refresh = (time_t) (n->refreshed_at / 1000);
        s->hits = n->hits;
        s->misses = n->misses;
        s->fetches = n->fetches;
        s->fetch_failures = n->fetch_failures;
        s->waiters = n->waiters;
        s->invalidations = n->invalidations;
    }

    ngx_cloudauth_cache_unlock();

    return snaps;
}


static ngx_int_t
ngx_cloudauth_status_json(ngx_http_request_t *r, ngx_array_t *snaps,
    ngx_str_t *out)
{
    char                       *text;
    json_t                     *root, *creds, *c, *e, *list;
    ngx_uint_t                  i, k;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_snap_t       *s;
    ngx_cloudauth_stats_t      *st;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);
    cp = cmcf->creds.elts;
    s = snaps->elts;

    root = json_object();
    creds = json_object();
    json_object_set_new(root, "credentials", creds);

    for (i = 0; i < cmcf->creds.nelts; i++) {
        list = json_array();
        c = json_pack("{s:s%, s:o, s:I, s:I, s:I, s:I, s:I, s:I}",
                      "type", cp[i]->kind->name.data, cp[i]->kind->name.len,
                      "entries", list,
                      "hits", (json_int_t) 0, "misses", (json_int_t) 0,
                      "fetches", (json_int_t) 0,
                      "fetch_failures", (json_int_t) 0,
                      "waiters", (json_int_t) 0,
                      "invalidations", (json_int_t) 0);
        if (c == NULL) {
            goto failed;
        }

        json_object_setn_new(creds, (char *) cp[i]->name.data,
                             cp[i]->name.len, c);

        for (k = 0; k < snaps->nelts; k++) {
            if (s[k].cred != cp[i]) {
                continue;
            }

            e = json_pack("{s:s%, s:s, s:I, s:I, s:s%, s:I, s:I, s:I, s:I, "
                          "s:I, s:I}",
                          "subject", s[k].subject, s[k].subject_len,
                          "state", s[k].state,
                          "expires_in", (json_int_t) s[k].expires_in,
                          "last_refresh", (json_int_t) s[k].last_refresh,
                          "last_error", s[k].error, s[k].error_len,
                          "hits", (json_int_t) s[k].hits,
                          "misses", (json_int_t) s[k].misses,
                          "fetches", (json_int_t) s[k].fetches,
                          "fetch_failures", (json_int_t) s[k].fetch_failures,
                          "waiters", (json_int_t) s[k].waiters,
                          "invalidations", (json_int_t) s[k].invalidations);
            if (e == NULL) {
                goto failed;
            }

            json_array_append_new(list, e);

#define ngx_cloudauth_sum(name)                                              \
            json_object_set_new(c, #name, json_integer(                      \
                json_integer_value(json_object_get(c, #name)) + s[k].name))

            ngx_cloudauth_sum(hits);
            ngx_cloudauth_sum(misses);
            ngx_cloudauth_sum(fetches);
            ngx_cloudauth_sum(fetch_failures);
            ngx_cloudauth_sum(waiters);
            ngx_cloudauth_sum(invalidations);
        }
    }

    st = ngx_cloudauth_cache_stats();

    if (st) {
        json_object_set_new(root, "uploads",
                    json_pack("{s:I, s:I, s:I, s:I}",
                              "active", (json_int_t) st->uploads_active,
                              "completed", (json_int_t) st->uploads_completed,
                              "failed", (json_int_t) st->uploads_failed,
                              "bytes", (json_int_t) st->upload_bytes));
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
            sum[6]++;

            /* the soonest expiry */
            if (s[k].expires_in
                && (sum[7] == 0 || (ngx_uint_t) s[k].expires_in < sum[7]))
            {
                sum[7] = s[k].expires_in;
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

    st = ngx_cloudauth_cache_stats();

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
