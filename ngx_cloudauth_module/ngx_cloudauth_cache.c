
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The token cache: one shared memory zone, a red-black tree of entries
 * keyed by (credential fingerprint, subject), and an LRU queue that lets
 * old entries go when the zone is full.  Every function here but the
 * zone initialisation is called with the zone's mutex held.
 *
 * The zone is reached through the current cycle (its main configuration's
 * shm_zone), never through a static: a reload that fails after it made a
 * new zone frees that zone, and the workers the master starts later run
 * the old cycle with the old zone.
 */


#include "ngx_cloudauth.h"


typedef struct {
    ngx_rbtree_t           rbtree;
    ngx_rbtree_node_t      sentinel;
    ngx_queue_t            lru;
    ngx_cloudauth_stats_t  stats;
} ngx_cloudauth_shctx_t;


static void ngx_cloudauth_cache_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void *ngx_cloudauth_cache_alloc(ngx_shm_zone_t *zone, size_t size);
static void ngx_cloudauth_cache_free_node(ngx_shm_zone_t *zone,
    ngx_cloudauth_node_t *node);


#define ngx_cloudauth_cache_sh(zone)                                         \
    ((ngx_cloudauth_shctx_t *) (zone)->data)
#define ngx_cloudauth_cache_shpool(zone)                                     \
    ((ngx_slab_pool_t *) (zone)->shm.addr)


/* the zone of the cycle this process runs, or NULL: no credentials */

static ngx_shm_zone_t *
ngx_cloudauth_cache_zone(void)
{
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_cloudauth_main_conf();

    if (cmcf == NULL || cmcf->shm_zone == NULL
        || cmcf->shm_zone->data == NULL)
    {
        return NULL;
    }

    return cmcf->shm_zone;
}


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


void
ngx_cloudauth_cache_lock(void)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_cloudauth_cache_zone();

    ngx_shmtx_lock(&ngx_cloudauth_cache_shpool(zone)->mutex);
}


void
ngx_cloudauth_cache_unlock(void)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_cloudauth_cache_zone();

    ngx_shmtx_unlock(&ngx_cloudauth_cache_shpool(zone)->mutex);
}


uint64_t
ngx_cloudauth_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/*
 * Milliseconds on the clock no step moves, the same in every process of
 * the machine: claims and the 401 gap are timed on it.
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


ngx_cloudauth_node_t *
ngx_cloudauth_cache_lookup(u_char *fp, ngx_str_t *name, ngx_str_t *subject,
    ngx_uint_t create)
{
    uint32_t                hash;
    ngx_int_t               rc;
    ngx_shm_zone_t         *zone;
    ngx_rbtree_node_t      *node, *sentinel;
    ngx_cloudauth_node_t   *cn;
    ngx_cloudauth_shctx_t  *sh;

    zone = ngx_cloudauth_cache_zone();
    sh = ngx_cloudauth_cache_sh(zone);

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
            ngx_queue_remove(&cn->lru);
            ngx_queue_insert_head(&sh->lru, &cn->lru);
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

    return cn;
}


ngx_int_t
ngx_cloudauth_cache_set_token(ngx_cloudauth_node_t *node, ngx_str_t *token)
{
    u_char          *p;
    ngx_shm_zone_t  *zone;

    if (token->len > node->token_cap) {
        zone = ngx_cloudauth_cache_zone();

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


void
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


void
ngx_cloudauth_cache_set_error(ngx_cloudauth_node_t *node, ngx_str_t *error)
{
    node->error_len = ngx_min(error->len, NGX_CLOUDAUTH_MAX_ERROR);
    ngx_memcpy(node->error, error->data, node->error_len);
}


ngx_queue_t *
ngx_cloudauth_cache_entries(void)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_cloudauth_cache_zone();

    return &ngx_cloudauth_cache_sh(zone)->lru;
}


ngx_cloudauth_stats_t *
ngx_cloudauth_cache_stats(void)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_cloudauth_cache_zone();

    return zone ? &ngx_cloudauth_cache_sh(zone)->stats : NULL;
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

    ngx_queue_remove(&cn->lru);
    ngx_rbtree_delete(&ngx_cloudauth_cache_sh(zone)->rbtree, &cn->node);

    if (cn->token) {
        ngx_explicit_memzero(cn->token, cn->token_cap);
        ngx_slab_free_locked(shpool, cn->token);
    }

    ngx_slab_free_locked(shpool, cn);
}
