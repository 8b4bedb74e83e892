
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The status page (ngx_cloudauth_status.c, included here for its static
 * functions) for arbitrary entries: the JSON and the Prometheus text of
 * snapshots built from the input, as ngx_cloudauth_cache_snapshot() copies
 * them out of the zone (up to a limit per credential, sums over all).  The
 * zone itself is stubbed.
 *
 * Input: a byte with the number of credentials (1-4) and flags, a byte with
 * the limit, the upload counters, then per entry: the credential, counters,
 * the subject and the last error (a length byte and the bytes each).
 */


#include "harness.h"

#include "ngx_cloudauth_status.c"
#include "ngx_cloudauth_utf8.c"


/* stubs of the zone and of the module */

ngx_module_t  ngx_http_cloudauth_module;

static ngx_cloudauth_stats_t  stats;
static ngx_uint_t             with_stats;


ngx_int_t
ngx_cloudauth_cache_snapshot(ngx_shm_zone_t *zone, ngx_pool_t *pool,
    ngx_cloudauth_census_t **census, ngx_uint_t n,
    ngx_cloudauth_usage_t *usage)
{
    return NGX_OK;
}


ngx_cloudauth_cred_t *
ngx_cloudauth_find_cred(ngx_cloudauth_main_conf_t *cmcf, ngx_str_t *name)
{
    return NULL;
}


ngx_cloudauth_stats_t *
ngx_cloudauth_cache_stats(ngx_shm_zone_t *zone)
{
    return with_stats ? &stats : NULL;
}


ngx_uint_t
ngx_cloudauth_cache_in_flight(ngx_shm_zone_t *zone, u_char *fp)
{
    return 0;
}


/* the harness */

typedef struct {
    const uint8_t  *p;
    const uint8_t  *last;
} fuzz_in_t;


static uint64_t
take(fuzz_in_t *in, size_t n)
{
    uint64_t  v;

    v = 0;

    while (n-- && in->p < in->last) {
        v = (v << 8) | *in->p++;
    }

    return v;
}


static size_t
take_bytes(fuzz_in_t *in, u_char *dst, size_t max)
{
    size_t  n;

    n = (size_t) take(in, 1);
    n = ngx_min(n, max);
    n = ngx_min(n, (size_t) (in->last - in->p));

    ngx_memcpy(dst, in->p, n);
    in->p += n;

    return n;
}


static ngx_cloudauth_kind_t  kinds[] = {
    { ngx_string("google_service_account"), 1, NULL, NULL, NULL, NULL, 1 },
    { ngx_string("zoom_s2s"), 0, NULL, NULL, NULL, NULL, 0 }
};

static char  *names[] = { "google", "zoom-app", "oauth2_x", "g" };


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void                       *main_conf[1];
    size_t                      i, k, lines, listed;
    ngx_int_t                   rc;
    ngx_str_t                   out;
    fuzz_in_t                   in;
    ngx_uint_t                  ncreds, valid, with_usage;
    ngx_pool_t                 *pool;
    ngx_http_request_t          r;
    ngx_cloudauth_entry_t      *s, e;
    ngx_cloudauth_cred_t        creds[4], **cp;
    ngx_cloudauth_census_t      census[4], *c;
    ngx_cloudauth_status_t      st;
    ngx_cloudauth_main_conf_t   cmcf;
    json_t                     *json, *jc;

    fuzz_ngx_init();

    if (size < 2) {
        return 0;
    }

    in.p = data;
    in.last = data + size;

    pool = fuzz_pool();

    ncreds = take(&in, 1);
    with_stats = ncreds & 0x80;
    with_usage = ncreds & 0x40;
    ncreds = (ncreds & 3) + 1;

    ngx_memzero(&st, sizeof(ngx_cloudauth_status_t));
    st.census = census;
    st.n = ncreds;

    if (with_usage) {
        st.usage.size = 1048576;
        st.usage.used = take(&in, 3);
    }

    k = take(&in, 1);

    ngx_memzero(&cmcf, sizeof(ngx_cloudauth_main_conf_t));

    if (ngx_array_init(&cmcf.creds, pool, 4, sizeof(ngx_cloudauth_cred_t *))
        != NGX_OK)
    {
        abort();
    }

    for (i = 0; i < ncreds; i++) {
        ngx_memzero(&creds[i], sizeof(ngx_cloudauth_cred_t));
        creds[i].name.data = (u_char *) names[i];
        creds[i].name.len = ngx_strlen(names[i]);
        creds[i].kind = &kinds[i & 1];

        cp = ngx_array_push(&cmcf.creds);
        if (cp == NULL) {
            abort();
        }

        *cp = &creds[i];

        ngx_memzero(&census[i], sizeof(ngx_cloudauth_census_t));
        census[i].cred = &creds[i];
        census[i].limit = k % 8;
        census[i].entries = ngx_array_create(pool, 1,
                                             sizeof(ngx_cloudauth_entry_t));
        if (census[i].entries == NULL) {
            abort();
        }
    }

    ngx_memzero(&r, sizeof(ngx_http_request_t));
    r.pool = pool;
    main_conf[0] = &cmcf;
    r.main_conf = main_conf;

    stats.uploads_active = take(&in, 2);
    stats.uploads_completed = take(&in, 8);
    stats.uploads_failed = take(&in, 4);
    stats.upload_bytes = take(&in, 8);

    /* valid: what ngx_cloudauth_subject_valid() lets into the zone */

    valid = 1;
    listed = 0;

    while (in.p < in.last && listed < 64) {
        s = &e;
        ngx_memzero(s, sizeof(ngx_cloudauth_entry_t));

        k = take(&in, 1);
        c = &census[k % ncreds];
        s->state = (k & 0x80) ? "valid" : "failing";
        s->expires_in = (time_t) take(&in, 4);
        s->last_refresh = (time_t) take(&in, 4);
        s->counts.hits = take(&in, 8);
        s->counts.misses = take(&in, 1);
        s->counts.fetches = take(&in, 2);
        s->counts.fetch_failures = take(&in, 1);
        s->counts.waiters = take(&in, 1);
        s->counts.invalidations = take(&in, 1);
        s->counts.unauthorized_kept = take(&in, 1);
        s->subject_len = take_bytes(&in, s->subject,
                                    NGX_CLOUDAUTH_MAX_SUBJECT);
        s->error_len = take_bytes(&in, s->error, NGX_CLOUDAUTH_MAX_ERROR);

        /* as the cache's snapshot: every entry summed, some listed */

        c->total++;
        c->counts.hits += s->counts.hits;
        c->counts.misses += s->counts.misses;
        c->counts.fetches += s->counts.fetches;
        c->counts.fetch_failures += s->counts.fetch_failures;
        c->counts.waiters += s->counts.waiters;
        c->counts.invalidations += s->counts.invalidations;
        c->counts.unauthorized_kept += s->counts.unauthorized_kept;

        if (s->expires_in && (c->soonest == 0 || s->expires_in < c->soonest))
        {
            c->soonest = s->expires_in;
        }

        if (c->entries->nelts >= c->limit) {
            continue;
        }

        s = ngx_array_push(c->entries);
        if (s == NULL) {
            abort();
        }

        *s = e;
        listed++;

        if (s->subject_len
            && ngx_cloudauth_subject_valid(s->subject, s->subject_len)
               != NGX_OK)
        {
            valid = 0;
        }

        for (i = 0; i < s->error_len; i++) {
            if (s->error[i] < 0x20 || s->error[i] >= 0x7f) {
                valid = 0;
            }
        }
    }

    rc = ngx_cloudauth_status_json(&r, &st, &out);

    fuzz_assert(rc == NGX_OK || rc == NGX_ERROR);

    if (valid) {
        /* entries that could be in the zone always make a page */
        fuzz_assert(rc == NGX_OK);
    }

    if (rc == NGX_OK) {
        fuzz_assert(out.len > 0 && out.data[out.len - 1] == '\n');

        json = json_loadb((char *) out.data, out.len, JSON_ALLOW_NUL, NULL);
        fuzz_assert(json != NULL);
        fuzz_assert(json_object_size(json_object_get(json, "credentials"))
                    == ncreds);

        for (i = 0; i < ncreds; i++) {
            jc = json_object_get(json_object_get(json, "credentials"),
                                 names[i]);
            fuzz_assert(jc != NULL);
            fuzz_assert(json_integer_value(json_object_get(jc,
                                                           "entries_total"))
                        == (json_int_t) census[i].total);
            fuzz_assert(json_array_size(json_object_get(jc, "entries"))
                        <= census[i].limit);
        }

        json_decref(json);
    }

    rc = ngx_cloudauth_status_prometheus(&r, &st, &out);

    fuzz_assert(rc == NGX_OK);

    /* not cut short: every line is there, whole */

    lines = 0;

    for (i = 0; i < out.len; i++) {
        if (out.data[i] == '\n') {
            lines++;
        }
    }

    fuzz_assert(out.len > 0 && out.data[out.len - 1] == '\n');
    fuzz_assert(lines == 8 + 9 * ncreds + (with_usage ? 4 : 0)
                         + (with_stats ? 7 : 0));

    ngx_destroy_pool(pool);

    return 0;
}
