
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The token cache: one shared memory zone, a red-black tree of entries
 * keyed by (credential fingerprint, subject), and an LRU queue that lets
 * old entries go when the zone is full.  This file alone knows an entry's
 * layout and takes the zone's mutex: each operation the engine and the
 * status page call takes and drops it itself, as limit_req's lookup and
 * account do.  The zone comes with each call (the credential's main
 * configuration holds it), never from a static: a reload that fails after
 * it made a new zone frees that zone, and the workers the master starts
 * later run the old cycle with the old zone.
 *
 * Request slots bound the token requests of one credential (by
 * fingerprint) in flight across all workers.  A slot belongs to a claim:
 * it records the claim's owner (pid and sequence number) and deadline, so
 * it lapses with the claim when the worker holding it dies, and it is
 * freed wherever the claim ends (store, fail, release, a worker's exit, a
 * lapsed claim taken over).  A hit on a usable token never looks at them.
 */


#include "ngx_cloudauth.h"

#include <openssl/rand.h>


/* an entry; wall clock times are milliseconds since the epoch */

typedef struct {
    ngx_rbtree_node_t          node;
    ngx_queue_t                lru;
    u_char                     fp[NGX_CLOUDAUTH_FP_LEN];

    uint64_t                   expires_at;
    uint64_t                   usable_until;
    uint64_t                   refresh_at;
    uint64_t                   refreshed_at;

    uint64_t                   claim_deadline;  /* monotonic */
    ngx_pid_t                  claim_pid;
    ngx_uint_t                 claim_seq;       /* which claim of pid's */
    ngx_uint_t                 claim_slot;      /* its slot + 1, or 0 */

    uint64_t                   invalidated_at;  /* monotonic */
    uint64_t                   lru_at;          /* monotonic, last moved */

    uint64_t                   backoff_until;   /* monotonic */
    ngx_uint_t                 failures;        /* consecutive */

    ngx_cloudauth_counters_t   counts;

    u_char                    *token;
    uint32_t                   token_len;
    uint32_t                   token_cap;

    u_char                     error[NGX_CLOUDAUTH_MAX_ERROR];
    uint32_t                   error_len;

    u_char                     name_len;
    u_short                    subject_len;
    u_char                     data[1];         /* name, then subject */
} ngx_cloudauth_node_t;


/* a token request in flight: the claim it runs under */

typedef struct {
    ngx_cloudauth_node_t      *node;
    uint64_t                   deadline;        /* monotonic, the claim's */
    ngx_pid_t                  pid;             /* 0: free */
    ngx_uint_t                 seq;
} ngx_cloudauth_slot_t;


/* the slots of one credential; they grow, never shrink, with concurrency= */

typedef struct {
    ngx_queue_t                queue;
    u_char                     fp[NGX_CLOUDAUTH_FP_LEN];
    ngx_uint_t                 nslots;
    ngx_cloudauth_slot_t       slots[1];
} ngx_cloudauth_limit_t;


typedef struct {
    ngx_rbtree_t           rbtree;
    ngx_rbtree_node_t      sentinel;
    ngx_queue_t            lru;
    ngx_queue_t            limits;          /* ngx_cloudauth_limit_t */
    ngx_cloudauth_stats_t  stats;
    u_char                 secret[NGX_CLOUDAUTH_ZONE_SECRET_LEN];
} ngx_cloudauth_shctx_t;


static void ngx_cloudauth_cache_count(ngx_cloudauth_counters_t *sum,
    ngx_cloudauth_counters_t *n);
static void ngx_cloudauth_cache_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void ngx_cloudauth_cache_touch(ngx_cloudauth_shctx_t *sh,
    ngx_cloudauth_node_t *cn);
static void *ngx_cloudauth_cache_alloc(ngx_shm_zone_t *zone, size_t size);
static void ngx_cloudauth_cache_free_node(ngx_shm_zone_t *zone,
    ngx_cloudauth_node_t *node);
static ngx_cloudauth_limit_t *ngx_cloudauth_cache_limit(ngx_shm_zone_t *zone,
    u_char *fp, ngx_uint_t n);
static ngx_int_t ngx_cloudauth_cache_claim(ngx_shm_zone_t *zone,
    ngx_cloudauth_node_t *node, ngx_cloudauth_take_t *t, uint64_t mono);
static void ngx_cloudauth_cache_unclaim(ngx_shm_zone_t *zone,
    ngx_cloudauth_node_t *node);
static void ngx_cloudauth_cache_unslot(ngx_shm_zone_t *zone,
    ngx_cloudauth_node_t *node);


#define ngx_cloudauth_cache_sh(zone)                                         \
    ((ngx_cloudauth_shctx_t *) (zone)->data)
#define ngx_cloudauth_cache_shpool(zone)                                     \
    ((ngx_slab_pool_t *) (zone)->shm.addr)


ngx_int_t
ngx_cloudauth_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t        *shpool;
    ngx_cloudauth_shctx_t  *sh;

    if (data) {
        /* reload: the tokens stay */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_cloudauth_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&sh->rbtree, &sh->sentinel, ngx_cloudauth_cache_insert);
    ngx_queue_init(&sh->lru);
    ngx_queue_init(&sh->limits);

    /* the zone's own secret: what upload IDs are sealed with by default */

    if (RAND_bytes(sh->secret, NGX_CLOUDAUTH_ZONE_SECRET_LEN) != 1) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "cloudauth: RAND_bytes() failed");
        return NGX_ERROR;
    }

    shpool->data = sh;
    shpool->log_nomem = 0;
    shm_zone->data = sh;

    shpool->log_ctx = ngx_slab_alloc(shpool, sizeof(" in cloudauth zone"));
    if (shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in cloudauth zone%Z");

    return NGX_OK;
}


#define ngx_cloudauth_cache_lock(zone)                                       \
    ngx_shmtx_lock(&ngx_cloudauth_cache_shpool(zone)->mutex)
#define ngx_cloudauth_cache_unlock(zone)                                     \
    ngx_shmtx_unlock(&ngx_cloudauth_cache_shpool(zone)->mutex)


uint64_t
ngx_cloudauth_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/*
 * Milliseconds on the clock no step moves, the same in every process of
 * the machine: claims, back-offs and the 401 gap are timed on it.
 */

uint64_t
ngx_cloudauth_monotonic(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static ngx_int_t
ngx_cloudauth_cache_cmp(ngx_cloudauth_node_t *n, u_char *fp,
    ngx_str_t *subject)
{
    ngx_int_t  rc;

    rc = ngx_memcmp(fp, n->fp, NGX_CLOUDAUTH_FP_LEN);
    if (rc != 0) {
        return rc;
    }

    if (subject->len != n->subject_len) {
        return (ngx_int_t) subject->len - (ngx_int_t) n->subject_len;
    }

    return ngx_memcmp(subject->data, n->data + n->name_len, subject->len);
}


static void
ngx_cloudauth_cache_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_str_t              subject;
    ngx_rbtree_node_t    **p;
    ngx_cloudauth_node_t  *cn, *cnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            cn = (ngx_cloudauth_node_t *) node;
            cnt = (ngx_cloudauth_node_t *) temp;

            subject.len = cn->subject_len;
            subject.data = cn->data + cn->name_len;

            p = (ngx_cloudauth_cache_cmp(cnt, cn->fp, &subject) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* the entry of key, made if create; with the mutex held */

static ngx_cloudauth_node_t *
ngx_cloudauth_cache_lookup(ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key,
    ngx_uint_t create)
{
    u_char                 *fp;
    uint32_t                hash;
    ngx_int_t               rc;
    ngx_str_t              *name, *subject;
    ngx_rbtree_node_t      *node, *sentinel;
    ngx_cloudauth_node_t   *cn;
    ngx_cloudauth_shctx_t  *sh;

    sh = ngx_cloudauth_cache_sh(zone);
    fp = key->fp;
    name = key->name;
    subject = key->subject;

    ngx_crc32_init(hash);
    ngx_crc32_update(&hash, fp, NGX_CLOUDAUTH_FP_LEN);
    ngx_crc32_update(&hash, subject->data, subject->len);
    ngx_crc32_final(hash);

    node = sh->rbtree.root;
    sentinel = sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        cn = (ngx_cloudauth_node_t *) node;

        rc = ngx_cloudauth_cache_cmp(cn, fp, subject);

        if (rc == 0) {
            ngx_cloudauth_cache_touch(sh, cn);
            return cn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    if (!create) {
        return NULL;
    }

    cn = ngx_cloudauth_cache_alloc(zone, offsetof(ngx_cloudauth_node_t, data)
                                         + name->len + subject->len);
    if (cn == NULL) {
        return NULL;
    }

    ngx_memzero(cn, offsetof(ngx_cloudauth_node_t, data));

    cn->node.key = hash;
    ngx_memcpy(cn->fp, fp, NGX_CLOUDAUTH_FP_LEN);
    cn->name_len = (u_char) name->len;
    cn->subject_len = (u_short) subject->len;
    ngx_memcpy(cn->data, name->data, name->len);
    ngx_memcpy(cn->data + name->len, subject->data, subject->len);

    ngx_rbtree_insert(&sh->rbtree, &cn->node);
    ngx_queue_insert_head(&sh->lru, &cn->lru);
    cn->lru_at = ngx_cloudauth_monotonic();

    return cn;
}


/*
 * Most recently used first, to the second: an entry used again within a
 * second stays where it is.  Moving it writes to its neighbours, two more
 * places in memory a hit would touch; with thousands of entries, each is a
 * cache miss.
 */

static void
ngx_cloudauth_cache_touch(ngx_cloudauth_shctx_t *sh, ngx_cloudauth_node_t *cn)
{
    uint64_t  now;

    now = ngx_cloudauth_monotonic();

    if (now - cn->lru_at < 1000 && now >= cn->lru_at) {
        return;
    }

    cn->lru_at = now;

    ngx_queue_remove(&cn->lru);
    ngx_queue_insert_head(&sh->lru, &cn->lru);
}


static ngx_int_t
ngx_cloudauth_cache_set_token(ngx_shm_zone_t *zone,
    ngx_cloudauth_node_t *node, ngx_str_t *token)
{
    u_char  *p;

    if (token->len > node->token_cap) {

        /* keep the node itself out of the eviction */
        ngx_queue_remove(&node->lru);

        p = ngx_cloudauth_cache_alloc(zone, token->len);

        ngx_queue_insert_head(&ngx_cloudauth_cache_sh(zone)->lru, &node->lru);

        if (p == NULL) {
            return NGX_ERROR;
        }

        if (node->token) {
            ngx_slab_free_locked(ngx_cloudauth_cache_shpool(zone),
                                 node->token);
        }

        node->token = p;
        node->token_cap = token->len;
    }

    ngx_memcpy(node->token, token->data, token->len);
    node->token_len = token->len;

    return NGX_OK;
}


static void
ngx_cloudauth_cache_drop_token(ngx_cloudauth_node_t *node)
{
    if (node->token) {
        ngx_explicit_memzero(node->token, node->token_cap);
    }

    node->token_len = 0;
    node->expires_at = 0;
    node->usable_until = 0;
    node->refresh_at = 0;
}


static void
ngx_cloudauth_cache_set_error(ngx_cloudauth_node_t *node, ngx_str_t *error)
{
    node->error_len = ngx_min(error->len, NGX_CLOUDAUTH_MAX_ERROR);
    ngx_memcpy(node->error, error->data, node->error_len);
}


ngx_cloudauth_stats_t *
ngx_cloudauth_cache_stats(ngx_shm_zone_t *zone)
{
    if (zone == NULL || zone->data == NULL) {
        return NULL;
    }

    return &ngx_cloudauth_cache_sh(zone)->stats;
}


/*
 * Random bytes made with the zone: they live as long as it does (reloads
 * that keep its size), not across a restart
 */

u_char *
ngx_cloudauth_cache_secret(ngx_shm_zone_t *zone)
{
    if (zone == NULL || zone->data == NULL) {
        return NULL;
    }

    return ngx_cloudauth_cache_sh(zone)->secret;
}


static ngx_uint_t
ngx_cloudauth_cache_claimed(ngx_cloudauth_node_t *node, uint64_t mono)
{
    return node->claim_pid != 0 && node->claim_deadline > mono;
}


static ngx_uint_t
ngx_cloudauth_cache_owns(ngx_cloudauth_node_t *node, ngx_uint_t claim)
{
    return claim && node->claim_pid == ngx_pid && node->claim_seq == claim;
}


/*
 * The engine's one question: a usable token (copied into t->pool), or what
 * to do without one.  A caller that finds no token and no running claim
 * gets the claim (NGX_CLOUDAUTH_TAKE_FETCH); with t->refresh, so does one
 * that finds a token due for refresh (a token and t->claim).
 */

ngx_cloudauth_take_e
ngx_cloudauth_cache_take(ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key,
    ngx_cloudauth_take_t *t)
{
    uint64_t               now, mono;
    ngx_cloudauth_node_t  *node;
    ngx_cloudauth_take_e   rc;

    t->claim = 0;
    t->stale = 0;

    ngx_cloudauth_cache_lock(zone);

    node = ngx_cloudauth_cache_lookup(zone, key, 1);
    if (node == NULL) {
        ngx_cloudauth_cache_unlock(zone);
        return NGX_CLOUDAUTH_TAKE_FULL;
    }

    now = ngx_cloudauth_now();
    mono = ngx_cloudauth_monotonic();

    if (node->token_len && now < node->usable_until) {

        t->token.data = ngx_pnalloc(t->pool, node->token_len);
        if (t->token.data == NULL) {
            ngx_cloudauth_cache_unlock(zone);
            return NGX_CLOUDAUTH_TAKE_NOMEM;
        }

        ngx_memcpy(t->token.data, node->token, node->token_len);
        t->token.len = node->token_len;
        t->expires_at = (time_t) (node->expires_at / 1000);
        t->obtained_at = (time_t) (node->refreshed_at / 1000);

        if (now >= node->refresh_at) {
            t->stale = 1;

            /* no slot free: the token held serves, a later hit refreshes */

            if (t->refresh && !ngx_cloudauth_cache_claimed(node, mono)
                && mono >= node->backoff_until)
            {
                (void) ngx_cloudauth_cache_claim(zone, node, t, mono);
            }
        }

        if (t->count) {
            node->counts.hits++;
        }

        ngx_cloudauth_cache_unlock(zone);
        return NGX_CLOUDAUTH_TAKE_TOKEN;
    }

    if (mono < node->backoff_until) {
        rc = NGX_CLOUDAUTH_TAKE_BACKOFF;

        if (t->count) {
            node->counts.misses++;
        }

    } else if (ngx_cloudauth_cache_claimed(node, mono)) {
        rc = NGX_CLOUDAUTH_TAKE_WAIT;

        if (t->count) {
            node->counts.misses++;
            node->counts.waiters++;
        }

    } else {
        switch (ngx_cloudauth_cache_claim(zone, node, t, mono)) {

        case NGX_OK:
            rc = NGX_CLOUDAUTH_TAKE_FETCH;
            break;

        case NGX_DECLINED:
            rc = NGX_CLOUDAUTH_TAKE_QUEUE;
            break;

        default:
            ngx_cloudauth_cache_unlock(zone);
            return NGX_CLOUDAUTH_TAKE_FULL;
        }

        if (t->count) {
            node->counts.misses++;
        }

        if (t->count == NGX_CLOUDAUTH_COUNT_REQUEST
            || (t->count && rc == NGX_CLOUDAUTH_TAKE_QUEUE))
        {
            node->counts.waiters++;
        }
    }

    ngx_cloudauth_cache_unlock(zone);

    return rc;
}


/*
 * A fetched token; the claim is released if it is the caller's.  NGX_ERROR
 * when the zone has no room for it: the caller fails the fetch.
 */

ngx_int_t
ngx_cloudauth_cache_store(ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key,
    ngx_uint_t claim, ngx_cloudauth_fresh_t *fresh)
{
    ngx_int_t              rc;
    ngx_uint_t             same;
    ngx_cloudauth_node_t  *node;

    ngx_cloudauth_cache_lock(zone);

    node = ngx_cloudauth_cache_lookup(zone, key, 1);

    same = node && node->token_len && node->token_len == fresh->token.len
           && ngx_memcmp(node->token, fresh->token.data, node->token_len)
              == 0;

    if (node == NULL
        || ngx_cloudauth_cache_set_token(zone, node, &fresh->token) != NGX_OK)
    {
        rc = NGX_ERROR;

    } else {
        node->expires_at = fresh->expires_at;

        /*
         * the token held, handed back again (the metadata server does so
         * until shortly before it expires): no new refresh at once
         */

        node->refresh_at = same ? ngx_max(fresh->refresh_at,
                                          fresh->refresh_again)
                                : fresh->refresh_at;
        node->usable_until = fresh->usable_until;
        node->refreshed_at = ngx_cloudauth_now();
        node->failures = 0;
        node->backoff_until = 0;
        node->counts.fetches++;
        rc = NGX_OK;

        ngx_log_debug6(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                       "cloudauth cache: \"%*s\": %s stored, refresh in "
                       "%uL ms, claim %ui%s",
                       (size_t) node->name_len, node->data,
                       same ? "the same token" : "a token",
                       node->refresh_at - node->refreshed_at, claim,
                       ngx_cloudauth_cache_owns(node, claim)
                       ? " released" : " (not held)");

        if (ngx_cloudauth_cache_owns(node, claim)) {
            ngx_cloudauth_cache_unclaim(zone, node);
        }
    }

    ngx_cloudauth_cache_unlock(zone);

    return rc;
}


/*
 * A failed fetch: the entry backs off for what backoff() says of its
 * consecutive failures.  Only the claim's owner decides: a fetch that
 * outlived its claim (another worker took the entry over) changes
 * nothing.  Returns the back-off, or 0.
 */

ngx_msec_t
ngx_cloudauth_cache_fail(ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key,
    ngx_uint_t claim, ngx_str_t *error, ngx_cloudauth_backoff_pt backoff,
    void *data)
{
    ngx_msec_t             delay;
    ngx_cloudauth_node_t  *node;

    delay = 0;

    ngx_cloudauth_cache_lock(zone);

    node = ngx_cloudauth_cache_lookup(zone, key, 0);

    if (node && ngx_cloudauth_cache_owns(node, claim)) {
        node->failures++;
        node->counts.fetch_failures++;

        delay = backoff(node->failures, data);
        node->backoff_until = ngx_cloudauth_monotonic() + delay;

        ngx_cloudauth_cache_set_error(node, error);

        ngx_cloudauth_cache_unclaim(zone, node);

        ngx_log_debug4(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                       "cloudauth cache: \"%*s\": fetch failed, %ui in a "
                       "row: back-off %M ms",
                       (size_t) node->name_len, node->data, node->failures,
                       delay);

    } else if (node) {
        ngx_log_debug3(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                       "cloudauth cache: \"%*s\": a failed fetch outlived "
                       "its claim %ui: ignored",
                       (size_t) node->name_len, node->data, claim);
    }

    ngx_cloudauth_cache_unlock(zone);

    return delay;
}


void
ngx_cloudauth_cache_release(ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key,
    ngx_uint_t claim)
{
    ngx_cloudauth_node_t  *node;

    ngx_cloudauth_cache_lock(zone);

    node = ngx_cloudauth_cache_lookup(zone, key, 0);

    if (node && ngx_cloudauth_cache_owns(node, claim)) {
        ngx_cloudauth_cache_unclaim(zone, node);
    }

    ngx_cloudauth_cache_unlock(zone);
}


/* a worker that leaves lets the next one fetch at once */

void
ngx_cloudauth_cache_release_all(ngx_shm_zone_t *zone, ngx_pid_t pid)
{
    ngx_uint_t              i;
    ngx_queue_t            *q;
    ngx_cloudauth_node_t   *node;
    ngx_cloudauth_limit_t  *limit;
    ngx_cloudauth_shctx_t  *sh;

    if (zone == NULL || zone->data == NULL) {
        return;
    }

    sh = ngx_cloudauth_cache_sh(zone);

    ngx_cloudauth_cache_lock(zone);

    for (q = ngx_queue_head(&sh->lru);
         q != ngx_queue_sentinel(&sh->lru);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_cloudauth_node_t, lru);

        if (node->claim_pid == pid) {
            ngx_log_debug3(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                           "cloudauth cache: \"%*s\": claim %ui released: "
                           "its worker leaves",
                           (size_t) node->name_len, node->data,
                           node->claim_seq);

            ngx_cloudauth_cache_unclaim(zone, node);
        }
    }

    /* and any slot of pid's left (its claim lapsed and was taken over) */

    for (q = ngx_queue_head(&sh->limits);
         q != ngx_queue_sentinel(&sh->limits);
         q = ngx_queue_next(q))
    {
        limit = ngx_queue_data(q, ngx_cloudauth_limit_t, queue);

        for (i = 0; i < limit->nslots; i++) {
            if (limit->slots[i].pid == pid) {
                limit->slots[i].pid = 0;
                limit->slots[i].node = NULL;
            }
        }
    }

    ngx_cloudauth_cache_unlock(zone);
}


/*
 * An upstream refused this token: it is dropped if it is still the cached
 * one, at most once per entry in gap (monotonic), else counted as kept.
 */

ngx_cloudauth_invalidate_e
ngx_cloudauth_cache_invalidate(ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key,
    ngx_str_t *token, ngx_msec_t gap)
{
    uint64_t                     mono;
    ngx_cloudauth_node_t        *node;
    ngx_cloudauth_invalidate_e   rc;

    rc = NGX_CLOUDAUTH_INVALIDATE_NONE;
    mono = ngx_cloudauth_monotonic();

    ngx_cloudauth_cache_lock(zone);

    node = ngx_cloudauth_cache_lookup(zone, key, 0);

    if (node && node->token_len == token->len
        && ngx_memcmp(node->token, token->data, token->len) == 0)
    {
        if (node->invalidated_at && mono - node->invalidated_at < gap) {
            node->counts.unauthorized_kept++;
            rc = NGX_CLOUDAUTH_INVALIDATE_KEPT;

        } else {
            ngx_cloudauth_cache_drop_token(node);
            node->counts.invalidations++;
            node->invalidated_at = mono;
            rc = NGX_CLOUDAUTH_INVALIDATE_DROPPED;
        }
    }

    ngx_cloudauth_cache_unlock(zone);

    return rc;
}


static const char *
ngx_cloudauth_cache_state(ngx_cloudauth_node_t *n, uint64_t now,
    uint64_t mono)
{
    ngx_uint_t  claimed, usable;

    claimed = ngx_cloudauth_cache_claimed(n, mono);
    usable = (n->token_len && now < n->usable_until);

    if (usable) {
        if (claimed) {
            return "refreshing";
        }

        return n->failures ? "failing" : "valid";
    }

    if (mono < n->backoff_until) {
        return "backoff";
    }

    if (claimed) {
        return "fetching";
    }

    return n->failures ? "failing" : "empty";
}


static int ngx_libc_cdecl
ngx_cloudauth_cache_census_cmp(const void *one, const void *two)
{
    ngx_cloudauth_census_t  *a, *b;

    a = *(ngx_cloudauth_census_t **) one;
    b = *(ngx_cloudauth_census_t **) two;

    return ngx_memcmp(a->cred->fp, b->cred->fp, NGX_CLOUDAUTH_FP_LEN);
}


/* the census of the credential of fp, in census sorted by fp, or NULL */

static ngx_cloudauth_census_t *
ngx_cloudauth_cache_census_find(ngx_cloudauth_census_t **census,
    ngx_uint_t n, u_char *fp)
{
    ngx_int_t   rc;
    ngx_uint_t  lo, hi, mid;

    lo = 0;
    hi = n;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        rc = ngx_memcmp(fp, census[mid]->cred->fp, NGX_CLOUDAUTH_FP_LEN);

        if (rc == 0) {
            return census[mid];
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return NULL;
}


static void
ngx_cloudauth_cache_count(ngx_cloudauth_counters_t *sum,
    ngx_cloudauth_counters_t *n)
{
    sum->hits += n->hits;
    sum->misses += n->misses;
    sum->fetches += n->fetches;
    sum->fetch_failures += n->fetch_failures;
    sum->waiters += n->waiters;
    sum->invalidations += n->invalidations;
    sum->unauthorized_kept += n->unauthorized_kept;
}


/*
 * Two walks of the LRU queue, most recently used first, each under the
 * mutex, for the credentials in census (sorted by fingerprint here).  The
 * first counts their entries, and room for the copies is made without the
 * lock.  The second sums each entry into its credential's census and
 * copies it while there is room, up to the limit, most recently used
 * first; lengths bounded by the copies, whatever the entry says.  Nothing
 * is allocated under the lock; an entry made between the walks may be
 * left out of the copies, never out of the sums.  Entries of no
 * credential in census (another configuration's) are passed over.
 */

ngx_int_t
ngx_cloudauth_cache_snapshot(ngx_shm_zone_t *zone, ngx_pool_t *pool,
    ngx_cloudauth_census_t **census, ngx_uint_t n,
    ngx_cloudauth_usage_t *usage)
{
    time_t                   expires_in;
    uint64_t                 now, mono;
    ngx_uint_t               i, room;
    ngx_queue_t             *q;
    ngx_slab_pool_t         *shpool;
    ngx_cloudauth_node_t    *node;
    ngx_cloudauth_entry_t   *e;
    ngx_cloudauth_shctx_t   *sh;
    ngx_cloudauth_census_t  *c;

    for (i = 0; i < n; i++) {
        census[i]->entries = ngx_pcalloc(pool, sizeof(ngx_array_t));
        if (census[i]->entries == NULL) {
            return NGX_ERROR;
        }

        census[i]->entries->size = sizeof(ngx_cloudauth_entry_t);
    }

    if (zone == NULL || zone->data == NULL) {
        return NGX_OK;
    }

    sh = ngx_cloudauth_cache_sh(zone);
    shpool = ngx_cloudauth_cache_shpool(zone);

    ngx_qsort(census, n, sizeof(ngx_cloudauth_census_t *),
              ngx_cloudauth_cache_census_cmp);

    ngx_cloudauth_cache_lock(zone);

    for (q = ngx_queue_head(&sh->lru);
         q != ngx_queue_sentinel(&sh->lru);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_cloudauth_node_t, lru);

        c = ngx_cloudauth_cache_census_find(census, n, node->fp);

        if (c) {
            c->total++;
        }
    }

    ngx_cloudauth_cache_unlock(zone);

    /* zeroed: no page of it is first touched under the lock */

    for (i = 0; i < n; i++) {
        c = census[i];
        room = ngx_min(c->limit, c->total + 16);
        c->total = 0;

        if (room == 0) {
            continue;
        }

        if (ngx_array_init(c->entries, pool, room,
                           sizeof(ngx_cloudauth_entry_t))
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_memzero(c->entries->elts, room * sizeof(ngx_cloudauth_entry_t));
    }

    ngx_cloudauth_cache_lock(zone);

    now = ngx_cloudauth_now();
    mono = ngx_cloudauth_monotonic();

    for (q = ngx_queue_head(&sh->lru);
         q != ngx_queue_sentinel(&sh->lru);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_cloudauth_node_t, lru);

        c = ngx_cloudauth_cache_census_find(census, n, node->fp);
        if (c == NULL) {
            continue;
        }

        expires_in = (node->token_len && node->expires_at > now)
                     ? (time_t) ((node->expires_at - now) / 1000) : 0;

        c->total++;
        ngx_cloudauth_cache_count(&c->counts, &node->counts);

        if (expires_in && (c->soonest == 0 || expires_in < c->soonest)) {
            c->soonest = expires_in;
        }

        /* room is at most the limit */

        if (c->entries->nelts >= c->entries->nalloc) {
            continue;
        }

        e = (ngx_cloudauth_entry_t *) c->entries->elts + c->entries->nelts++;

        e->subject_len = ngx_min(node->subject_len,
                                 NGX_CLOUDAUTH_MAX_SUBJECT);
        ngx_memcpy(e->subject, node->data + node->name_len, e->subject_len);
        e->error_len = ngx_min(node->error_len, NGX_CLOUDAUTH_MAX_ERROR);
        ngx_memcpy(e->error, node->error, e->error_len);
        e->state = ngx_cloudauth_cache_state(node, now, mono);
        e->expires_in = expires_in;
        e->last_refresh = (time_t) (node->refreshed_at / 1000);
        e->counts = node->counts;
    }

    if (usage) {
        usage->size = zone->shm.size;
        usage->used = (size_t) ((shpool->last - shpool->pages) - shpool->pfree)
                      << ngx_pagesize_shift;
    }

    ngx_cloudauth_cache_unlock(zone);

    return NGX_OK;
}


/*
 * Allocates from the zone; when it is full, lets the least recently used
 * entries go, one after another until the allocation fits, except those a
 * worker is fetching for right now.  Freed slots make a page free only
 * when all of its slots are, and a large token needs whole pages next to
 * each other, so no fixed number of evictions is enough.  NULL when even
 * an emptied zone has no room: the caller fails that one entry.
 */

static void *
ngx_cloudauth_cache_alloc(ngx_shm_zone_t *zone, size_t size)
{
    void                   *p;
    uint64_t                now;
    ngx_queue_t            *q, *prev;
    ngx_slab_pool_t        *shpool;
    ngx_cloudauth_node_t   *cn;
    ngx_cloudauth_shctx_t  *sh;

    sh = ngx_cloudauth_cache_sh(zone);
    shpool = ngx_cloudauth_cache_shpool(zone);

    p = ngx_slab_alloc_locked(shpool, size);
    if (p) {
        return p;
    }

    now = ngx_cloudauth_monotonic();

    for (q = ngx_queue_last(&sh->lru);
         q != ngx_queue_sentinel(&sh->lru);
         q = prev)
    {
        prev = ngx_queue_prev(q);
        cn = ngx_queue_data(q, ngx_cloudauth_node_t, lru);

        if (cn->claim_pid != 0 && cn->claim_deadline >= now) {
            continue;
        }

        ngx_log_debug3(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                       "cloudauth cache: zone full for %uz bytes: \"%*s\" "
                       "evicted, the least recently used", size,
                       (size_t) cn->name_len, cn->data);

        ngx_cloudauth_cache_free_node(zone, cn);

        p = ngx_slab_alloc_locked(shpool, size);
        if (p) {
            return p;
        }
    }

    return NULL;
}


static void
ngx_cloudauth_cache_free_node(ngx_shm_zone_t *zone, ngx_cloudauth_node_t *cn)
{
    ngx_slab_pool_t  *shpool;

    shpool = ngx_cloudauth_cache_shpool(zone);

    ngx_cloudauth_cache_unslot(zone, cn);

    ngx_queue_remove(&cn->lru);
    ngx_rbtree_delete(&ngx_cloudauth_cache_sh(zone)->rbtree, &cn->node);

    if (cn->token) {
        ngx_explicit_memzero(cn->token, cn->token_cap);
        ngx_slab_free_locked(shpool, cn->token);
    }

    ngx_slab_free_locked(shpool, cn);
}


/*
 * The credential's slots, made (or grown to n) if n; NULL if there are
 * none and none can be made.  A grown copy keeps every slot's index: an
 * entry knows its slot by index.
 */

static ngx_cloudauth_limit_t *
ngx_cloudauth_cache_limit(ngx_shm_zone_t *zone, u_char *fp, ngx_uint_t n)
{
    ngx_queue_t            *q;
    ngx_cloudauth_limit_t  *limit, *grown;
    ngx_cloudauth_shctx_t  *sh;

    sh = ngx_cloudauth_cache_sh(zone);
    limit = NULL;

    for (q = ngx_queue_head(&sh->limits);
         q != ngx_queue_sentinel(&sh->limits);
         q = ngx_queue_next(q))
    {
        limit = ngx_queue_data(q, ngx_cloudauth_limit_t, queue);

        if (ngx_memcmp(limit->fp, fp, NGX_CLOUDAUTH_FP_LEN) == 0) {
            break;
        }

        limit = NULL;
    }

    if (n == 0 || (limit && limit->nslots >= n)) {
        return limit;
    }

    /* may let entries go, which looks up the old slots: still in place */

    grown = ngx_cloudauth_cache_alloc(zone,
                                      offsetof(ngx_cloudauth_limit_t, slots)
                                      + n * sizeof(ngx_cloudauth_slot_t));
    if (grown == NULL) {
        /* too few slots bound no worse: a free one is found in them */
        return limit;
    }

    ngx_memzero(grown, offsetof(ngx_cloudauth_limit_t, slots)
                       + n * sizeof(ngx_cloudauth_slot_t));
    ngx_memcpy(grown->fp, fp, NGX_CLOUDAUTH_FP_LEN);
    grown->nslots = n;

    if (limit == NULL) {
        ngx_queue_insert_tail(&sh->limits, &grown->queue);
        return grown;
    }

    ngx_memcpy(grown->slots, limit->slots,
               limit->nslots * sizeof(ngx_cloudauth_slot_t));

    ngx_queue_insert_after(&limit->queue, &grown->queue);
    ngx_queue_remove(&limit->queue);
    ngx_slab_free_locked(ngx_cloudauth_cache_shpool(zone), limit);

    return grown;
}


/*
 * Claims an entry that has no running claim, with a request slot if
 * t->concurrency asks for one: NGX_DECLINED when that many are in flight,
 * NGX_ERROR when the zone has no room for the slots.
 */

static ngx_int_t
ngx_cloudauth_cache_claim(ngx_shm_zone_t *zone, ngx_cloudauth_node_t *node,
    ngx_cloudauth_take_t *t, uint64_t mono)
{
    ngx_uint_t              i, live;
    ngx_cloudauth_slot_t   *slot;
    ngx_cloudauth_limit_t  *limit;

    /* a lapsed claim frees its slot */
    ngx_cloudauth_cache_unslot(zone, node);

    limit = NULL;
    slot = NULL;

    if (t->concurrency) {

        /* the entry stays out of any eviction the slots' allocation does */

        ngx_queue_remove(&node->lru);

        limit = ngx_cloudauth_cache_limit(zone, node->fp, t->concurrency);

        ngx_queue_insert_head(&ngx_cloudauth_cache_sh(zone)->lru, &node->lru);

        if (limit == NULL) {
            return NGX_ERROR;
        }

        live = 0;

        for (i = 0; i < limit->nslots; i++) {
            if (limit->slots[i].pid != 0 && limit->slots[i].deadline > mono) {
                live++;

            } else if (slot == NULL) {
                slot = &limit->slots[i];
            }
        }

        if (live >= t->concurrency || slot == NULL) {
            return NGX_DECLINED;
        }
    }

    if (node->claim_pid != 0) {
        /* a claim that lapsed: its worker died, or its request hung */
        ngx_log_debug4(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                       "cloudauth cache: \"%*s\": take-over of the lapsed "
                       "claim %ui of pid %P",
                       (size_t) node->name_len, node->data, node->claim_seq,
                       node->claim_pid);
    }

    node->claim_pid = ngx_pid;
    node->claim_seq++;
    node->claim_deadline = mono + t->claim_for;
    t->claim = node->claim_seq;

    ngx_log_debug5(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                   "cloudauth cache: \"%*s\": claim %ui for %M ms%s",
                   (size_t) node->name_len, node->data, node->claim_seq,
                   t->claim_for, slot ? ", with a request slot" : "");

    if (slot) {
        slot->node = node;
        slot->deadline = node->claim_deadline;
        slot->pid = ngx_pid;
        slot->seq = node->claim_seq;
        node->claim_slot = slot - limit->slots + 1;
    }

    return NGX_OK;
}


/* the entry's claim ends, and its slot with it */

static void
ngx_cloudauth_cache_unclaim(ngx_shm_zone_t *zone, ngx_cloudauth_node_t *node)
{
    ngx_cloudauth_cache_unslot(zone, node);

    node->claim_pid = 0;
    node->claim_deadline = 0;
}


/* frees the entry's slot if it is still its claim's (not since reused) */

static void
ngx_cloudauth_cache_unslot(ngx_shm_zone_t *zone, ngx_cloudauth_node_t *node)
{
    ngx_cloudauth_slot_t   *slot;
    ngx_cloudauth_limit_t  *limit;

    if (node->claim_slot == 0) {
        return;
    }

    limit = ngx_cloudauth_cache_limit(zone, node->fp, 0);

    if (limit && node->claim_slot <= limit->nslots) {
        slot = &limit->slots[node->claim_slot - 1];

        if (slot->node == node && slot->pid == node->claim_pid
            && slot->seq == node->claim_seq)
        {
            slot->pid = 0;
            slot->node = NULL;
        }
    }

    node->claim_slot = 0;
}


/* the token requests the credential has in flight now, for the status */

ngx_uint_t
ngx_cloudauth_cache_in_flight(ngx_shm_zone_t *zone, u_char *fp)
{
    uint64_t                mono;
    ngx_uint_t              i, n;
    ngx_cloudauth_limit_t  *limit;

    if (zone == NULL || zone->data == NULL) {
        return 0;
    }

    n = 0;
    mono = ngx_cloudauth_monotonic();

    ngx_cloudauth_cache_lock(zone);

    limit = ngx_cloudauth_cache_limit(zone, fp, 0);

    for (i = 0; limit && i < limit->nslots; i++) {
        if (limit->slots[i].pid != 0 && limit->slots[i].deadline > mono) {
            n++;
        }
    }

    ngx_cloudauth_cache_unlock(zone);

    return n;
}
