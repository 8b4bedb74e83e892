
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The token engine: hit, wait, fetch, refresh ahead, back off.
 *
 * The state lives in the shared cache entry: a worker that finds no usable
 * token claims the entry (claim_pid, claim_deadline) and fetches; everyone
 * else waits in a per-worker wait group that is woken by the fetch when it
 * ends in this worker, or polls the entry when the fetch runs elsewhere.
 * A claim whose worker died expires at its deadline and the next poll
 * claims again; claims are timed on the monotonic clock, which all
 * processes share and no clock step moves, and only the claim's owner (pid
 * and sequence number) releases it.  A fetch that ends wakes its waiters
 * through a posted event, never from inside the call that ended it, so no
 * caller is left holding a group that was freed under it.  The engine
 * knows nothing of providers: it asks the credential's kind to build the
 * request and to read the answer.
 */


#include "ngx_cloudauth.h"


#define NGX_CLOUDAUTH_POLL            10
#define NGX_CLOUDAUTH_CLAIM_SLACK     2000
#define NGX_CLOUDAUTH_REFRESH_AHEAD   300000
#define NGX_CLOUDAUTH_USABLE_MARGIN   10000
#define NGX_CLOUDAUTH_INVALIDATE_GAP  30000


typedef struct {
    ngx_queue_t              queue;
    ngx_cloudauth_cred_t    *cred;
    ngx_str_t                subject;
    ngx_queue_t              waiters;
    ngx_event_t              poll;
    uint64_t                 deadline;
} ngx_cloudauth_group_t;


typedef struct {
    ngx_queue_t              queue;
    ngx_cloudauth_cred_t    *cred;
    ngx_str_t                subject;
    ngx_pool_t              *pool;
    ngx_cloudauth_fetch_t   *fetch;
    ngx_uint_t               claim;      /* claim_seq of the entry's claim */
    ngx_cloudauth_ask_t      source;     /* the source credential's token */
} ngx_cloudauth_job_t;


typedef enum {
    NGX_CLOUDAUTH_WAITING = 0,
    NGX_CLOUDAUTH_READY,
    NGX_CLOUDAUTH_FAILED
} ngx_cloudauth_outcome_e;


static ngx_int_t ngx_cloudauth_job_start(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t claim, ngx_log_t *log);
static void ngx_cloudauth_job_source(ngx_cloudauth_ask_t *ask);
static void ngx_cloudauth_job_fetch(ngx_cloudauth_job_t *job);
static void ngx_cloudauth_job_fail(ngx_cloudauth_job_t *job, char *error);
static void ngx_cloudauth_job_done(ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_job_free(ngx_cloudauth_job_t *job);
static void ngx_cloudauth_store(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t claim, ngx_int_t rc,
    ngx_cloudauth_result_t *res, ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_release(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t claim);
static void ngx_cloudauth_job_wake(ngx_cloudauth_job_t *job);
static ngx_cloudauth_group_t *ngx_cloudauth_group(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t create);
static void ngx_cloudauth_group_poll(ngx_event_t *ev);
static void ngx_cloudauth_group_check(ngx_cloudauth_group_t *g);
static void ngx_cloudauth_group_free(ngx_cloudauth_group_t *g);
static ngx_int_t ngx_cloudauth_copy_token(ngx_cloudauth_ask_t *ask,
    u_char *token, size_t len, time_t expires_at);


static ngx_queue_t       ngx_cloudauth_groups =
    { &ngx_cloudauth_groups, &ngx_cloudauth_groups };
static ngx_queue_t       ngx_cloudauth_jobs =
    { &ngx_cloudauth_jobs, &ngx_cloudauth_jobs };
static ngx_connection_t  ngx_cloudauth_poll_conn;
static u_char            ngx_cloudauth_buf[NGX_CLOUDAUTH_MAX_TOKEN];


static ngx_uint_t
ngx_cloudauth_claimed(ngx_cloudauth_node_t *node)
{
    return node->claim_pid != 0
           && node->claim_deadline > ngx_cloudauth_monotonic();
}


/* a new claim of this worker's on the entry; returns its sequence number */

static ngx_uint_t
ngx_cloudauth_claim(ngx_cloudauth_node_t *node)
{
    node->claim_pid = ngx_pid;
    node->claim_seq++;
    node->claim_deadline = ngx_cloudauth_monotonic()
                           + ngx_cloudauth_main_conf()->timeout
                           + NGX_CLOUDAUTH_CLAIM_SLACK;

    return node->claim_seq;
}


static ngx_uint_t
ngx_cloudauth_owns(ngx_cloudauth_node_t *node, ngx_uint_t claim)
{
    return node->claim_pid == ngx_pid && node->claim_seq == claim;
}


ngx_int_t
ngx_cloudauth_get(ngx_cloudauth_ask_t *ask)
{
    size_t                  len;
    time_t                  expires_at;
    uint64_t                now;
    ngx_int_t               rc;
    ngx_uint_t              claim, claimed, signed_once;
    ngx_cloudauth_cred_t   *cred;
    ngx_cloudauth_node_t   *node;
    ngx_cloudauth_group_t  *g;

    cred = ask->cred;
    signed_once = 0;

again:

    ngx_cloudauth_cache_lock();

    node = ngx_cloudauth_cache_lookup(cred->fp, &cred->name, &ask->subject,
                                      1);
    if (node == NULL) {
        ngx_cloudauth_cache_unlock();
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "cloudauth: credential \"%V\": cloudauth_zone is full",
                      &cred->name);
        ngx_str_set(&ask->reason, "token cache full");
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
        return NGX_DECLINED;
    }

    now = ngx_cloudauth_now();

    if (node->token_len && now < node->usable_until) {

        claim = 0;

        if (now >= node->refresh_at) {
            ask->cache_status = NGX_CLOUDAUTH_STALE;

            if (!ngx_cloudauth_claimed(node)
                && now >= node->backoff_until)
            {
                claim = ngx_cloudauth_claim(node);
            }

        } else {
            ask->cache_status = NGX_CLOUDAUTH_HIT;
        }

        node->hits++;

        len = node->token_len;
        ngx_memcpy(ngx_cloudauth_buf, node->token, len);
        expires_at = (time_t) (node->expires_at / 1000);

        ngx_cloudauth_cache_unlock();

        /*
         * the token is taken out of ngx_cloudauth_buf first: starting the
         * refresh may ask for a source credential's token, which goes
         * through ngx_cloudauth_buf too
         */

        rc = ngx_cloudauth_copy_token(ask, ngx_cloudauth_buf, len,
                                      expires_at);

        if (claim) {
            /* refresh ahead, in the background */
            if (ngx_cloudauth_job_start(cred, &ask->subject, claim, ask->log)
                != NGX_OK)
            {
                ngx_cloudauth_release(cred, &ask->subject, claim);
            }
        }

        return rc;
    }

    if (now < node->backoff_until) {
        node->misses++;
        ngx_cloudauth_cache_unlock();

        ngx_str_set(&ask->reason, "token endpoint failing, backing off");
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
        return NGX_DECLINED;
    }

    claimed = ngx_cloudauth_claimed(node);
    claim = claimed ? 0 : ngx_cloudauth_claim(node);

    /*
     * signed here and now, unless another worker is signing at this very
     * moment: then wait for its token like for a fetch
     */

    if (cred->kind->sign && !claimed) {
        ngx_cloudauth_cache_unlock();

        if (signed_once) {
            ngx_str_set(&ask->reason, "token signing failed");
            ask->cache_status = NGX_CLOUDAUTH_ERROR;
            return NGX_DECLINED;
        }

        signed_once = 1;

        if (ngx_cloudauth_job_start(cred, &ask->subject, claim, ask->log)
            != NGX_OK)
        {
            ngx_cloudauth_release(cred, &ask->subject, claim);
        }

        goto again;
    }

    node->misses++;
    node->waiters++;

    ngx_cloudauth_cache_unlock();

    ask->cache_status = claimed ? NGX_CLOUDAUTH_WAIT : NGX_CLOUDAUTH_MISS;

    if (!claimed
        && ngx_cloudauth_job_start(cred, &ask->subject, claim, ask->log)
           != NGX_OK)
    {
        ngx_cloudauth_release(cred, &ask->subject, claim);
        ngx_str_set(&ask->reason, "cannot start a token request");
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
        return NGX_DECLINED;
    }

    g = ngx_cloudauth_group(cred, &ask->subject, 1);
    if (g == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&g->waiters, &ask->queue);
    ask->group = g;
    ask->waiting = 1;

    return NGX_AGAIN;
}


void
ngx_cloudauth_cancel(ngx_cloudauth_ask_t *ask)
{
    if (ask->waiting) {
        ngx_queue_remove(&ask->queue);
        ask->waiting = 0;
    }
}


void
ngx_cloudauth_invalidate(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_str_t *token, ngx_log_t *log)
{
    uint64_t               now;
    ngx_uint_t             dropped;
    ngx_cloudauth_node_t  *node;

    dropped = 0;
    now = ngx_cloudauth_monotonic();

    ngx_cloudauth_cache_lock();

    node = ngx_cloudauth_cache_lookup(cred->fp, &cred->name, subject, 0);

    /*
     * only the token that was refused: a newer one stays; and at most one
     * drop per entry in NGX_CLOUDAUTH_INVALIDATE_GAP, so that an upstream
     * that answers 401 to everything (a missing IAM role, a 401 a client
     * can provoke) costs one token request per 30 s, not one per request
     */

    if (node && node->token_len == token->len
        && ngx_memcmp(node->token, token->data, token->len) == 0)
    {
        if (node->invalidated_at
            && now - node->invalidated_at < NGX_CLOUDAUTH_INVALIDATE_GAP)
        {
            node->unauthorized_kept++;

        } else {
            ngx_cloudauth_cache_drop_token(node);
            node->invalidations++;
            node->invalidated_at = now;
            dropped = 1;
        }
    }

    ngx_cloudauth_cache_unlock();

    if (dropped) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "cloudauth: credential \"%V\": upstream answered 401, "
                      "cached token dropped", &cred->name);
    }
}


void
ngx_cloudauth_engine_exit(void)
{
    ngx_queue_t            *q, *entries;
    ngx_cloudauth_ask_t    *ask;
    ngx_cloudauth_node_t   *node;
    ngx_cloudauth_group_t  *g;

    /* a worker that leaves (a reload) lets the next one fetch at once */

    entries = ngx_cloudauth_cache_stats() ? ngx_cloudauth_cache_entries()
                                          : NULL;

    if (entries) {
        ngx_cloudauth_cache_lock();

        for (q = ngx_queue_head(entries);
             q != ngx_queue_sentinel(entries);
             q = ngx_queue_next(q))
        {
            node = ngx_queue_data(q, ngx_cloudauth_node_t, lru);

            if (node->claim_pid == ngx_pid) {
                node->claim_pid = 0;
                node->claim_deadline = 0;
            }
        }

        ngx_cloudauth_cache_unlock();
    }

    while (!ngx_queue_empty(&ngx_cloudauth_jobs)) {
        q = ngx_queue_head(&ngx_cloudauth_jobs);
        ngx_cloudauth_job_free(ngx_queue_data(q, ngx_cloudauth_job_t, queue));
    }

    while (!ngx_queue_empty(&ngx_cloudauth_groups)) {
        q = ngx_queue_head(&ngx_cloudauth_groups);
        g = ngx_queue_data(q, ngx_cloudauth_group_t, queue);

        while (!ngx_queue_empty(&g->waiters)) {
            ask = ngx_queue_data(ngx_queue_head(&g->waiters),
                                 ngx_cloudauth_ask_t, queue);
            ngx_cloudauth_cancel(ask);
        }

        ngx_cloudauth_group_free(g);
    }
}


static ngx_int_t
ngx_cloudauth_copy_token(ngx_cloudauth_ask_t *ask, u_char *token, size_t len,
    time_t expires_at)
{
    ask->token.data = ngx_pnalloc(ask->pool, len);
    if (ask->token.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(ask->token.data, token, len);
    ask->token.len = len;
    ask->expires_at = expires_at;

    return NGX_OK;
}


/* jobs: one token request (or local signing) for one entry */

static ngx_int_t
ngx_cloudauth_job_start(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_uint_t claim, ngx_log_t *log)
{
    ngx_int_t                 rc;
    ngx_cloudauth_job_t      *job;
    ngx_cloudauth_result_t    res;

    job = ngx_calloc(sizeof(ngx_cloudauth_job_t) + subject->len, log);
    if (job == NULL) {
        return NGX_ERROR;
    }

    job->cred = cred;
    job->claim = claim;
    job->subject.len = subject->len;
    job->subject.data = (u_char *) (job + 1);
    ngx_memcpy(job->subject.data, subject->data, subject->len);

    ngx_queue_insert_tail(&ngx_cloudauth_jobs, &job->queue);

    job->pool = ngx_create_pool(4096, ngx_cycle->log);
    if (job->pool == NULL) {
        goto failed;
    }

    if (cred->kind->sign) {
        ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));

        rc = cred->kind->sign(cred, &job->subject, job->pool, &res, log);

        ngx_cloudauth_store(cred, &job->subject, claim, rc, &res, NULL);
        ngx_cloudauth_job_free(job);

        return NGX_OK;
    }

    if (cred->source == NULL) {
        ngx_cloudauth_job_fetch(job);
        return NGX_OK;
    }

    /* first the token of the source credential, through the engine too */

    job->source.cred = cred->source;
    job->source.subject = cred->source->subject;
    job->source.pool = job->pool;
    job->source.log = ngx_cycle->log;
    job->source.handler = ngx_cloudauth_job_source;
    job->source.data = job;

    switch (ngx_cloudauth_get(&job->source)) {

    case NGX_OK:
        ngx_cloudauth_job_fetch(job);
        break;

    case NGX_AGAIN:
        break;

    default:
        ngx_cloudauth_job_source(&job->source);
    }

    return NGX_OK;

failed:

    ngx_cloudauth_job_free(job);

    return NGX_ERROR;
}


static void
ngx_cloudauth_job_source(ngx_cloudauth_ask_t *ask)
{
    ngx_cloudauth_job_t *job = ask->data;

    if (ask->token.len == 0) {
        ngx_cloudauth_job_fail(job, "the source credential has no token");
        return;
    }

    ngx_cloudauth_job_fetch(job);
}


static void
ngx_cloudauth_job_fetch(ngx_cloudauth_job_t *job)
{
    ngx_cloudauth_request_t  req;

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.source_token = job->source.token;

    if (job->cred->kind->build(job->cred, &job->subject, job->pool, &req,
                               ngx_cycle->log)
        != NGX_OK)
    {
        ngx_cloudauth_job_fail(job, "cannot build the token request");
        return;
    }

    job->fetch = ngx_cloudauth_fetch_start(&req, ngx_cloudauth_job_done, job,
                                           ngx_cycle->log);

    if (req.body.len) {
        /* it held the assertion; curl has its own copy */
        ngx_explicit_memzero(req.body.data, req.body.len);
    }

    if (job->fetch == NULL) {
        ngx_cloudauth_job_fail(job, "cannot start the token request");
    }
}


static void
ngx_cloudauth_job_fail(ngx_cloudauth_job_t *job, char *error)
{
    ngx_cloudauth_result_t   res;

    ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));
    res.error.data = (u_char *) error;
    res.error.len = ngx_strlen(error);

    ngx_cloudauth_store(job->cred, &job->subject, job->claim, NGX_ERROR, &res,
                        NULL);

    ngx_cloudauth_job_wake(job);
    ngx_cloudauth_job_free(job);
}


/*
 * The waiters of this worker learn the outcome from a posted event: the
 * job may end inside a call that holds the group (a take-over whose start
 * fails at once), which must not see the group freed under it.
 */

static void
ngx_cloudauth_job_wake(ngx_cloudauth_job_t *job)
{
    ngx_cloudauth_group_t  *g;

    g = ngx_cloudauth_group(job->cred, &job->subject, 0);

    if (g == NULL) {
        return;
    }

    if (g->poll.timer_set) {
        ngx_del_timer(&g->poll);
    }

    if (!g->poll.posted) {
        ngx_post_event(&g->poll, &ngx_posted_events);
    }
}


static void
ngx_cloudauth_job_done(ngx_cloudauth_fetch_t *f)
{
    ngx_cloudauth_job_t *job = f->data;

    ngx_int_t               rc;
    ngx_cloudauth_result_t  res;

    ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));

    rc = job->cred->kind->parse(job->cred, f, job->pool, &res);

    ngx_cloudauth_store(job->cred, &job->subject, job->claim, rc, &res, f);

    ngx_cloudauth_job_wake(job);
    ngx_cloudauth_job_free(job);
}


static void
ngx_cloudauth_job_free(ngx_cloudauth_job_t *job)
{
    ngx_queue_remove(&job->queue);

    ngx_cloudauth_cancel(&job->source);

    if (job->fetch) {
        ngx_cloudauth_fetch_free(job->fetch);
    }

    if (job->pool) {
        ngx_destroy_pool(job->pool);
    }

    ngx_free(job);
}


/* subjects are e-mail addresses: logs get a hash */

static char *
ngx_cloudauth_subject_hash(ngx_str_t *subject)
{
    static u_char  buf[sizeof("#ffffffff")];

    if (subject->len == 0) {
        return "-";
    }

    ngx_sprintf(buf, "#%08xD%Z", ngx_crc32_short(subject->data, subject->len));

    return (char *) buf;
}


static ngx_msec_t
ngx_cloudauth_backoff(ngx_uint_t failures, ngx_uint_t terminal,
    time_t retry_after)
{
    ngx_msec_t  delay, cap;

    delay = terminal ? 30000 : 1000;
    cap = terminal ? 300000 : 60000;

    while (--failures && delay < cap) {
        delay *= 2;
    }

    delay = ngx_min(delay, cap);

    /* equal jitter: half fixed, half random */
    delay = delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);

    if ((ngx_msec_t) retry_after * 1000 > delay) {
        delay = (ngx_msec_t) retry_after * 1000;
    }

    return delay;
}


static void
ngx_cloudauth_store(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_uint_t claim, ngx_int_t rc, ngx_cloudauth_result_t *res,
    ngx_cloudauth_fetch_t *f)
{
    time_t                 skew;
    uint64_t               now, life;
    ngx_msec_t             delay;
    ngx_cloudauth_node_t  *node;

    now = ngx_cloudauth_now();
    delay = 0;

    ngx_cloudauth_cache_lock();

    node = ngx_cloudauth_cache_lookup(cred->fp, &cred->name, subject, 1);

    if (node == NULL) {
        ngx_cloudauth_cache_unlock();
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "cloudauth: credential \"%V\": cloudauth_zone is full, "
                      "token not stored", &cred->name);
        return;
    }

    if (rc == NGX_OK && ngx_cloudauth_cache_set_token(node, &res->token)
                        != NGX_OK)
    {
        rc = NGX_ERROR;
        ngx_str_set(&res->error, "cloudauth_zone is full");
    }

    if (rc == NGX_OK) {
        life = (uint64_t) res->expires_in * 1000;

        node->expires_at = now + life;
        node->refresh_at = node->expires_at
                           - ngx_min(NGX_CLOUDAUTH_REFRESH_AHEAD, life / 2);
        node->usable_until = node->expires_at
                             - ngx_min(NGX_CLOUDAUTH_USABLE_MARGIN, life / 10);
        node->refreshed_at = now;
        node->failures = 0;
        node->backoff_until = 0;
        node->fetches++;

    } else if (!ngx_cloudauth_owns(node, claim)) {
        /*
         * another worker took the entry over (ours outlived its claim):
         * its fetch decides, this failure does not put it into back-off
         */

        if (res->error.len == 0) {
            ngx_str_set(&res->error, "internal error");
        }

    } else {
        if (res->error.len == 0) {
            ngx_str_set(&res->error, "internal error");
        }

        node->failures++;
        node->fetch_failures++;

        delay = ngx_cloudauth_backoff(node->failures, res->terminal,
                                      f ? f->retry_after : 0);
        node->backoff_until = now + delay;

        ngx_cloudauth_cache_set_error(node, &res->error);
    }

    if (ngx_cloudauth_owns(node, claim)) {
        node->claim_pid = 0;
        node->claim_deadline = 0;
    }

    ngx_cloudauth_cache_unlock();

    if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "cloudauth: credential \"%V\": token %s in %M ms, "
                      "expires in %T s, subject %s",
                      &cred->name, f ? "fetched" : "signed",
                      f ? f->duration : 0, res->expires_in,
                      ngx_cloudauth_subject_hash(subject));
    } else {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "cloudauth: credential \"%V\": token request failed: "
                      "%V; next attempt in %M ms",
                      &cred->name, &res->error, delay);
    }

    if (f && f->date) {
        skew = f->date - ngx_time();

        if (skew > 30 || skew < -30) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "cloudauth: credential \"%V\": the token "
                          "endpoint's clock is %T s %s ours: clock skew "
                          "makes assertions fail (invalid_grant); "
                          "check NTP", &cred->name,
                          skew > 0 ? skew : -skew,
                          skew > 0 ? "ahead of" : "behind");
        }
    }
}


static void
ngx_cloudauth_release(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_uint_t claim)
{
    ngx_cloudauth_node_t  *node;

    ngx_cloudauth_cache_lock();

    node = ngx_cloudauth_cache_lookup(cred->fp, &cred->name, subject, 0);

    if (node && ngx_cloudauth_owns(node, claim)) {
        node->claim_pid = 0;
        node->claim_deadline = 0;
    }

    ngx_cloudauth_cache_unlock();
}


/* wait groups: the requests of this worker waiting for one entry */

static ngx_cloudauth_group_t *
ngx_cloudauth_group(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_uint_t create)
{
    ngx_queue_t            *q;
    ngx_cloudauth_group_t  *g;

    for (q = ngx_queue_head(&ngx_cloudauth_groups);
         q != ngx_queue_sentinel(&ngx_cloudauth_groups);
         q = ngx_queue_next(q))
    {
        g = ngx_queue_data(q, ngx_cloudauth_group_t, queue);

        if (g->cred == cred && g->subject.len == subject->len
            && ngx_memcmp(g->subject.data, subject->data, subject->len) == 0)
        {
            return g;
        }
    }

    if (!create) {
        return NULL;
    }

    g = ngx_calloc(sizeof(ngx_cloudauth_group_t) + subject->len,
                   ngx_cycle->log);
    if (g == NULL) {
        return NULL;
    }

    g->cred = cred;
    g->subject.len = subject->len;
    g->subject.data = (u_char *) (g + 1);
    ngx_memcpy(g->subject.data, subject->data, subject->len);

    ngx_queue_init(&g->waiters);

    ngx_cloudauth_poll_conn.fd = (ngx_socket_t) -1;
    g->poll.data = &ngx_cloudauth_poll_conn;
    g->poll.handler = ngx_cloudauth_group_poll;
    g->poll.log = ngx_cycle->log;

    g->deadline = ngx_cloudauth_monotonic()
                  + ngx_cloudauth_main_conf()->timeout
                  + NGX_CLOUDAUTH_CLAIM_SLACK;

    ngx_queue_insert_tail(&ngx_cloudauth_groups, &g->queue);

    ngx_add_timer(&g->poll, NGX_CLOUDAUTH_POLL);

    return g;
}


static void
ngx_cloudauth_group_poll(ngx_event_t *ev)
{
    ngx_cloudauth_group_check((ngx_cloudauth_group_t *)
                     ((u_char *) ev - offsetof(ngx_cloudauth_group_t, poll)));
}


static void
ngx_cloudauth_group_check(ngx_cloudauth_group_t *g)
{
    size_t                    len;
    time_t                    expires_at;
    uint64_t                  now;
    ngx_uint_t                claim;
    ngx_queue_t              *q;
    ngx_cloudauth_ask_t      *ask;
    ngx_cloudauth_node_t     *node;
    ngx_cloudauth_outcome_e   outcome;

    if (ngx_queue_empty(&g->waiters)) {
        ngx_cloudauth_group_free(g);
        return;
    }

    outcome = NGX_CLOUDAUTH_WAITING;
    claim = 0;
    len = 0;
    expires_at = 0;

    ngx_cloudauth_cache_lock();

    node = ngx_cloudauth_cache_lookup(g->cred->fp, &g->cred->name,
                                      &g->subject, 1);
    now = ngx_cloudauth_now();

    if (node == NULL) {
        outcome = NGX_CLOUDAUTH_FAILED;

    } else if (node->token_len && now < node->usable_until) {
        outcome = NGX_CLOUDAUTH_READY;
        len = node->token_len;
        expires_at = (time_t) (node->expires_at / 1000);
        ngx_memcpy(ngx_cloudauth_buf, node->token, len);

    } else if (now < node->backoff_until) {
        outcome = NGX_CLOUDAUTH_FAILED;

    } else if (!ngx_cloudauth_claimed(node)) {
        /* the fetching worker died or gave up: take over */
        claim = ngx_cloudauth_claim(node);
    }

    ngx_cloudauth_cache_unlock();

    now = ngx_cloudauth_monotonic();

    if (claim) {
        g->deadline = now + ngx_cloudauth_main_conf()->timeout
                      + NGX_CLOUDAUTH_CLAIM_SLACK;

        /* a job that fails at once wakes this group by a posted event */

        if (ngx_cloudauth_job_start(g->cred, &g->subject, claim,
                                    ngx_cycle->log)
            != NGX_OK)
        {
            ngx_cloudauth_release(g->cred, &g->subject, claim);
            outcome = NGX_CLOUDAUTH_FAILED;
        }
    }

    if (outcome == NGX_CLOUDAUTH_WAITING && now > g->deadline) {
        outcome = NGX_CLOUDAUTH_FAILED;
    }

    if (outcome == NGX_CLOUDAUTH_WAITING) {
        ngx_add_timer(&g->poll, NGX_CLOUDAUTH_POLL);
        return;
    }

    /*
     * Give every waiter its answer first, then wake them: a woken request
     * may ask the engine again (reusing the buffer) or free its ask.
     */

    if (g->poll.timer_set) {
        ngx_del_timer(&g->poll);
    }

    if (g->poll.posted) {
        ngx_delete_posted_event(&g->poll);
    }

    /* a request woken below that asks again starts a new group */
    ngx_queue_remove(&g->queue);

    for (q = ngx_queue_head(&g->waiters);
         q != ngx_queue_sentinel(&g->waiters);
         q = ngx_queue_next(q))
    {
        ask = ngx_queue_data(q, ngx_cloudauth_ask_t, queue);

        if (outcome == NGX_CLOUDAUTH_READY
            && ngx_cloudauth_copy_token(ask, ngx_cloudauth_buf, len,
                                        expires_at)
               == NGX_OK)
        {
            continue;
        }

        ngx_str_set(&ask->reason, "token request failed");
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
    }

    while (!ngx_queue_empty(&g->waiters)) {
        q = ngx_queue_head(&g->waiters);
        ask = ngx_queue_data(q, ngx_cloudauth_ask_t, queue);

        ngx_queue_remove(q);
        ask->waiting = 0;
        ask->group = NULL;

        ask->handler(ask);
    }

    ngx_free(g);
}


static void
ngx_cloudauth_group_free(ngx_cloudauth_group_t *g)
{
    if (g->poll.timer_set) {
        ngx_del_timer(&g->poll);
    }

    if (g->poll.posted) {
        ngx_delete_posted_event(&g->poll);
    }

    ngx_queue_remove(&g->queue);
    ngx_free(g);
}
