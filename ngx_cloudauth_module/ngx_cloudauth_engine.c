
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The token engine: hit, wait, fetch, refresh ahead, back off.
 *
 * The state lives in the shared cache entry, which only the cache touches:
 * a worker that finds no usable token gets the entry's claim from
 * ngx_cloudauth_cache_take() and fetches; everyone else waits in a
 * per-worker wait group that is woken by the fetch when it ends in this
 * worker, or polls the entry when the fetch runs elsewhere.  A claim whose
 * worker died expires at its deadline and the next poll claims again;
 * claims are timed on the monotonic clock, and only the claim's owner (pid
 * and sequence number) releases it.  A fetch that ends wakes its waiters
 * through a posted event, never from inside the call that ended it, so no
 * caller is left holding a group that was freed under it.  The engine
 * knows nothing of providers: it asks the credential's kind to build the
 * request and to read the answer.  What it needs of the configuration
 * comes with the credential (cred->conf), not through ngx_cycle.
 *
 * A claim for a token request also needs one of the credential's request
 * slots (concurrency=, shared by all workers).  A group whose entry finds
 * none free joins its credential's slot queue in this worker: the first
 * group there polls its entry, the others only wait for their turn
 * or for cloudauth_timeout to pass, when they fail; a group that leaves the
 * queue, and a fetch of the credential that ends here, let the next one
 * try at once.  So a cold start of thousands of subjects costs one poll
 * per credential and worker, not one per subject.  A refresh ahead that
 * finds no slot free leaves the token held to serve.
 */


#include "ngx_cloudauth_fetch.h"


#define NGX_CLOUDAUTH_POLL            10
#define NGX_CLOUDAUTH_CLAIM_SLACK     2000
#define NGX_CLOUDAUTH_REFRESH_AHEAD   300000
#define NGX_CLOUDAUTH_USABLE_MARGIN   10000
#define NGX_CLOUDAUTH_INVALIDATE_GAP  30000
#define NGX_CLOUDAUTH_SAME_TOKEN_GAP  30000


typedef struct {
    ngx_queue_t              queue;
    ngx_cloudauth_cred_t    *cred;
    ngx_str_t                subject;
    ngx_queue_t              waiters;
    ngx_event_t              poll;
    uint64_t                 deadline;      /* monotonic */
    uint64_t                 queued_until;  /* monotonic: for a slot */
    ngx_queue_t              slot_queue;    /* while queued */
    unsigned                 queued:1;      /* waits for a request slot */
} ngx_cloudauth_group_t;


typedef struct {
    ngx_queue_t              queue;
    ngx_cloudauth_cred_t    *cred;
    ngx_str_t                subject;
    ngx_pool_t              *pool;
    ngx_cloudauth_fetch_t   *fetch;
    ngx_uint_t               claim;      /* the entry's claim it runs under */
    ngx_cloudauth_ask_t      source;     /* the source credential's token */
} ngx_cloudauth_job_t;


typedef struct {
    ngx_uint_t               terminal;
    time_t                   retry_after;
} ngx_cloudauth_failure_t;


static ngx_int_t ngx_cloudauth_engine_job_start(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t claim, ngx_log_t *log);
static void ngx_cloudauth_engine_job_source(ngx_cloudauth_ask_t *ask);
static void ngx_cloudauth_engine_job_fetch(ngx_cloudauth_job_t *job);
static void ngx_cloudauth_engine_job_fail(ngx_cloudauth_job_t *job,
    char *error);
static void ngx_cloudauth_engine_job_done(ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_engine_job_wake(ngx_cloudauth_job_t *job);
static void ngx_cloudauth_engine_job_free(ngx_cloudauth_job_t *job);
static void ngx_cloudauth_engine_store(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t claim, ngx_int_t rc,
    ngx_cloudauth_result_t *res, ngx_cloudauth_fetch_t *f);
static ngx_msec_t ngx_cloudauth_engine_backoff(ngx_uint_t failures,
    void *data);
static ngx_cloudauth_group_t *ngx_cloudauth_engine_group(
    ngx_cloudauth_cred_t *cred, ngx_str_t *subject, ngx_uint_t create);
static void ngx_cloudauth_engine_group_poll(ngx_event_t *ev);
static void ngx_cloudauth_engine_group_check(ngx_cloudauth_group_t *g);
static void ngx_cloudauth_engine_group_free(ngx_cloudauth_group_t *g);
static void ngx_cloudauth_engine_queue(ngx_cloudauth_group_t *g,
    uint64_t now);
static void ngx_cloudauth_engine_unqueue(ngx_cloudauth_group_t *g);
static ngx_cloudauth_group_t *ngx_cloudauth_engine_queue_first(
    ngx_cloudauth_cred_t *cred);
static void ngx_cloudauth_engine_group_post(ngx_cloudauth_group_t *g);
static char *ngx_cloudauth_engine_subject_hash(ngx_str_t *subject,
    u_char *buf);


/* per worker: the requests waiting, the fetches running */

static ngx_queue_t       ngx_cloudauth_groups =
    { &ngx_cloudauth_groups, &ngx_cloudauth_groups };
static ngx_queue_t       ngx_cloudauth_jobs =
    { &ngx_cloudauth_jobs, &ngx_cloudauth_jobs };
static ngx_connection_t  ngx_cloudauth_poll_conn;


#define ngx_cloudauth_engine_key(key, c, s)                                  \
    (key)->fp = (c)->fp; (key)->name = &(c)->name; (key)->subject = (s)

#define ngx_cloudauth_engine_claim_for(cred)                                 \
    ((cred)->conf->timeout + NGX_CLOUDAUTH_CLAIM_SLACK)


ngx_int_t
ngx_cloudauth_engine_get(ngx_cloudauth_ask_t *ask)
{
    ngx_uint_t               signed_once;
    ngx_cloudauth_key_t      key;
    ngx_cloudauth_cred_t    *cred;
    ngx_cloudauth_take_t     t;
    ngx_cloudauth_take_e     rc;
    ngx_cloudauth_group_t   *g;

    cred = ask->cred;
    signed_once = 0;

    ngx_cloudauth_engine_key(&key, cred, &ask->subject);

    t.claim_for = ngx_cloudauth_engine_claim_for(cred);
    t.pool = ask->pool;
    t.count = cred->kind->sign ? NGX_CLOUDAUTH_COUNT_SIGN
                               : NGX_CLOUDAUTH_COUNT_REQUEST;
    t.concurrency = cred->concurrency;
    t.refresh = 1;

again:

    rc = ngx_cloudauth_cache_take(cred->conf->shm_zone, &key, &t);

    switch (rc) {

    case NGX_CLOUDAUTH_TAKE_TOKEN:
        ask->token = t.token;
        ask->expires_at = t.expires_at;
        ask->obtained_at = t.obtained_at;

        if (ask->cache_status != NGX_CLOUDAUTH_MISS) {
            ask->cache_status = t.stale ? NGX_CLOUDAUTH_STALE
                                        : NGX_CLOUDAUTH_HIT;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ask->log, 0,
                       "cloudauth: \"%V\": %s", &cred->name,
                       t.stale ? "hit, due for refresh" : "hit");

        if (t.claim) {
            /* refresh ahead, in the background */

            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ask->log, 0,
                           "cloudauth: \"%V\": refresh ahead", &cred->name);

            if (ngx_cloudauth_engine_job_start(cred, &ask->subject, t.claim,
                                               ask->log)
                != NGX_OK)
            {
                ngx_cloudauth_cache_release(cred->conf->shm_zone, &key,
                                            t.claim);
            }
        }

        return NGX_OK;

    case NGX_CLOUDAUTH_TAKE_FULL:
        ngx_log_error(NGX_LOG_ERR, ask->log, 0,
                      "cloudauth: credential \"%V\": cloudauth_zone is full",
                      &cred->name);
        ngx_str_set(&ask->reason, "token cache full");
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
        return NGX_DECLINED;

    case NGX_CLOUDAUTH_TAKE_NOMEM:
        return NGX_ERROR;

    case NGX_CLOUDAUTH_TAKE_BACKOFF:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ask->log, 0,
                       "cloudauth: \"%V\": miss, backing off", &cred->name);
        ngx_str_set(&ask->reason, "token endpoint failing, backing off");
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
        return NGX_DECLINED;

    case NGX_CLOUDAUTH_TAKE_FETCH:

        if (cred->kind->sign) {

            /* signed here and now; the next round finds the token */

            if (signed_once) {
                ngx_str_set(&ask->reason, "token signing failed");
                ask->cache_status = NGX_CLOUDAUTH_ERROR;
                return NGX_DECLINED;
            }

            signed_once = 1;
            ask->cache_status = NGX_CLOUDAUTH_MISS;
            t.count = NGX_CLOUDAUTH_COUNT_NONE;

            if (ngx_cloudauth_engine_job_start(cred, &ask->subject, t.claim,
                                               ask->log)
                != NGX_OK)
            {
                ngx_cloudauth_cache_release(cred->conf->shm_zone, &key,
                                            t.claim);
            }

            goto again;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ask->log, 0,
                       "cloudauth: \"%V\": miss, claimed: fetching",
                       &cred->name);

        ask->cache_status = NGX_CLOUDAUTH_MISS;

        if (ngx_cloudauth_engine_job_start(cred, &ask->subject, t.claim,
                                           ask->log)
            != NGX_OK)
        {
            ngx_cloudauth_cache_release(cred->conf->shm_zone, &key, t.claim);
            ngx_str_set(&ask->reason, "cannot start a token request");
            ask->cache_status = NGX_CLOUDAUTH_ERROR;
            return NGX_DECLINED;
        }

        break;

    case NGX_CLOUDAUTH_TAKE_QUEUE:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ask->log, 0,
                       "cloudauth: \"%V\": miss, no request slot free: "
                       "queued", &cred->name);
        ask->cache_status = NGX_CLOUDAUTH_MISS;
        break;

    default: /* NGX_CLOUDAUTH_TAKE_WAIT */
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ask->log, 0,
                       "cloudauth: \"%V\": miss, waiting for a fetch",
                       &cred->name);
        ask->cache_status = NGX_CLOUDAUTH_WAIT;
    }

    g = ngx_cloudauth_engine_group(cred, &ask->subject, 1);
    if (g == NULL) {
        return NGX_ERROR;
    }

    if (rc == NGX_CLOUDAUTH_TAKE_QUEUE) {
        ngx_cloudauth_engine_queue(g, ngx_cloudauth_monotonic());
    }

    ngx_queue_insert_tail(&g->waiters, &ask->queue);
    ask->group = g;
    ask->waiting = 1;

    return NGX_AGAIN;
}


void
ngx_cloudauth_engine_cancel(ngx_cloudauth_ask_t *ask)
{
    if (ask->waiting) {
        ngx_queue_remove(&ask->queue);
        ask->waiting = 0;
    }
}


/*
 * An upstream answered 401 to this token.  The cache drops it, at most
 * once per entry in NGX_CLOUDAUTH_INVALIDATE_GAP, so that an upstream that
 * answers 401 to everything (a missing IAM role, a 401 a client can
 * provoke) costs one token request per 30 s, not one per request.
 */

void
ngx_cloudauth_engine_invalidate(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_str_t *token, ngx_log_t *log)
{
    ngx_cloudauth_key_t         key;
    ngx_cloudauth_invalidate_e  rc;

    ngx_cloudauth_engine_key(&key, cred, subject);

    rc = ngx_cloudauth_cache_invalidate(cred->conf->shm_zone, &key, token,
                                        NGX_CLOUDAUTH_INVALIDATE_GAP);

    if (rc == NGX_CLOUDAUTH_INVALIDATE_DROPPED) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "cloudauth: credential \"%V\": upstream answered 401, "
                      "cached token dropped", &cred->name);

    } else if (rc == NGX_CLOUDAUTH_INVALIDATE_KEPT) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "cloudauth: \"%V\": upstream answered 401, token "
                       "kept: dropped one less than 30 s ago", &cred->name);
    }
}


void
ngx_cloudauth_engine_exit(ngx_shm_zone_t *zone)
{
    ngx_queue_t            *q;
    ngx_cloudauth_ask_t    *ask;
    ngx_cloudauth_group_t  *g;

    /* a worker that leaves (a reload) lets the next one fetch at once */

    ngx_cloudauth_cache_release_all(zone, ngx_pid);

    while (!ngx_queue_empty(&ngx_cloudauth_jobs)) {
        q = ngx_queue_head(&ngx_cloudauth_jobs);
        ngx_cloudauth_engine_job_free(ngx_queue_data(q, ngx_cloudauth_job_t,
                                                     queue));
    }

    while (!ngx_queue_empty(&ngx_cloudauth_groups)) {
        q = ngx_queue_head(&ngx_cloudauth_groups);
        g = ngx_queue_data(q, ngx_cloudauth_group_t, queue);

        while (!ngx_queue_empty(&g->waiters)) {
            ask = ngx_queue_data(ngx_queue_head(&g->waiters),
                                 ngx_cloudauth_ask_t, queue);
            ngx_cloudauth_engine_cancel(ask);
        }

        ngx_cloudauth_engine_group_free(g);
    }
}


/* jobs: one token request (or local signing) for one entry */

static ngx_int_t
ngx_cloudauth_engine_job_start(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_uint_t claim, ngx_log_t *log)
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
        ngx_cloudauth_engine_job_free(job);
        return NGX_ERROR;
    }

    if (cred->kind->sign) {
        ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));

        rc = cred->kind->sign(cred, &job->subject, job->pool, &res, log);

        ngx_cloudauth_engine_store(cred, &job->subject, claim, rc, &res,
                                   NULL);
        ngx_cloudauth_engine_job_free(job);

        return NGX_OK;
    }

    if (cred->source == NULL) {
        ngx_cloudauth_engine_job_fetch(job);
        return NGX_OK;
    }

    /* first the token of the source credential, through the engine too */

    job->source.cred = cred->source;
    job->source.subject = cred->source->subject;
    job->source.pool = job->pool;
    job->source.log = ngx_cycle->log;
    job->source.handler = ngx_cloudauth_engine_job_source;
    job->source.data = job;

    switch (ngx_cloudauth_engine_get(&job->source)) {

    case NGX_OK:
        ngx_cloudauth_engine_job_fetch(job);
        break;

    case NGX_AGAIN:
        break;

    default:
        ngx_cloudauth_engine_job_source(&job->source);
    }

    return NGX_OK;
}


static void
ngx_cloudauth_engine_job_source(ngx_cloudauth_ask_t *ask)
{
    ngx_cloudauth_job_t *job = ask->data;

    if (ask->token.len == 0) {
        ngx_cloudauth_engine_job_fail(job,
                                      "the source credential has no token");
        return;
    }

    ngx_cloudauth_engine_job_fetch(job);
}


static void
ngx_cloudauth_engine_job_fetch(ngx_cloudauth_job_t *job)
{
    ngx_cloudauth_request_t  req;

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.source_token = job->source.token;
    req.name = job->cred->name;

    if (job->cred->kind->build(job->cred, &job->subject, job->pool, &req,
                               ngx_cycle->log)
        != NGX_OK)
    {
        ngx_cloudauth_engine_job_fail(job, "cannot build the token request");
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "cloudauth: \"%V\": token request to %V",
                   &job->cred->name, &req.url);

    job->fetch = ngx_cloudauth_fetch_start(&req,
                                           ngx_cloudauth_engine_job_done, job,
                                           ngx_cycle->log);

    if (req.body.len) {
        /* it held the assertion; curl has its own copy */
        ngx_explicit_memzero(req.body.data, req.body.len);
    }

    if (job->fetch == NULL) {
        ngx_cloudauth_engine_job_fail(job, "cannot start the token request");
    }
}


static void
ngx_cloudauth_engine_job_fail(ngx_cloudauth_job_t *job, char *error)
{
    ngx_cloudauth_result_t   res;

    ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));
    res.error.data = (u_char *) error;
    res.error.len = ngx_strlen(error);

    ngx_cloudauth_engine_store(job->cred, &job->subject, job->claim,
                               NGX_ERROR, &res, NULL);

    ngx_cloudauth_engine_job_wake(job);
    ngx_cloudauth_engine_job_free(job);
}


static void
ngx_cloudauth_engine_job_done(ngx_cloudauth_fetch_t *f)
{
    ngx_cloudauth_job_t *job = f->data;

    ngx_int_t               rc;
    ngx_cloudauth_answer_t  a;
    ngx_cloudauth_result_t  res;

    ngx_memzero(&res, sizeof(ngx_cloudauth_result_t));

    if (f->status == 0 && !f->truncated) {
        /* no answer: what curl said went wrong */
        res.error.data = (u_char *) f->errbuf;
        res.error.len = ngx_strlen(f->errbuf);
        rc = NGX_ERROR;

    } else {
        a.status = f->status;
        a.body.data = f->body;
        a.body.len = f->body_len;
        a.date = f->date;
        a.truncated = f->truncated;

        rc = job->cred->kind->parse(job->cred, &a, job->pool, &res);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "cloudauth: \"%V\": token request ended: HTTP %l, %s",
                   &job->cred->name, f->status,
                   rc == NGX_OK ? "a token" : "no token");

    ngx_cloudauth_engine_store(job->cred, &job->subject, job->claim, rc,
                               &res, f);

    ngx_cloudauth_engine_job_wake(job);
    ngx_cloudauth_engine_job_free(job);
}


/*
 * The waiters of this worker learn the outcome from a posted event: the
 * job may end inside a call that holds the group (a take-over whose start
 * fails at once), which must not see the group freed under it.
 */

static void
ngx_cloudauth_engine_job_wake(ngx_cloudauth_job_t *job)
{
    ngx_cloudauth_group_t  *g;

    g = ngx_cloudauth_engine_group(job->cred, &job->subject, 0);

    if (g) {
        ngx_cloudauth_engine_group_post(g);
    }

    /* and the first group here waiting for the slot the job leaves */

    g = ngx_cloudauth_engine_queue_first(job->cred);

    if (g) {
        ngx_cloudauth_engine_group_post(g);
    }
}


static void
ngx_cloudauth_engine_group_post(ngx_cloudauth_group_t *g)
{
    if (g->poll.timer_set) {
        ngx_del_timer(&g->poll);
    }

    if (!g->poll.posted) {
        ngx_post_event(&g->poll, &ngx_posted_events);
    }
}


static void
ngx_cloudauth_engine_job_free(ngx_cloudauth_job_t *job)
{
    ngx_queue_remove(&job->queue);

    ngx_cloudauth_engine_cancel(&job->source);

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
ngx_cloudauth_engine_subject_hash(ngx_str_t *subject, u_char *buf)
{
    if (subject->len == 0) {
        return "-";
    }

    ngx_sprintf(buf, "#%08xD%Z", ngx_crc32_short(subject->data, subject->len));

    return (char *) buf;
}


/* equal jitter: half fixed, half random; a Retry-After is honoured */

static ngx_msec_t
ngx_cloudauth_engine_backoff(ngx_uint_t failures, void *data)
{
    ngx_cloudauth_failure_t *fl = data;

    return ngx_cloudauth_backoff(fl->terminal ? 30000 : 1000,
                                 fl->terminal ? 300000 : 60000, failures,
                                 (ngx_msec_t) fl->retry_after * 1000);
}


static void
ngx_cloudauth_engine_store(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
    ngx_uint_t claim, ngx_int_t rc, ngx_cloudauth_result_t *res,
    ngx_cloudauth_fetch_t *f)
{
    u_char                    hash[sizeof("#ffffffff")];
    time_t                    skew;
    uint64_t                  now, life;
    ngx_msec_t                delay;
    ngx_cloudauth_key_t       key;
    ngx_cloudauth_fresh_t     fresh;
    ngx_cloudauth_failure_t   fl;

    ngx_cloudauth_engine_key(&key, cred, subject);

    if (rc == NGX_OK) {
        now = ngx_cloudauth_now();
        life = (uint64_t) res->expires_in * 1000;

        fresh.token = res->token;
        fresh.expires_at = now + life;
        fresh.refresh_at = fresh.expires_at
                           - ngx_min(NGX_CLOUDAUTH_REFRESH_AHEAD, life / 2);
        fresh.usable_until = fresh.expires_at
                             - ngx_min(NGX_CLOUDAUTH_USABLE_MARGIN, life / 10);
        fresh.refresh_again = now + NGX_CLOUDAUTH_SAME_TOKEN_GAP;

        if (ngx_cloudauth_cache_store(cred->conf->shm_zone, &key, claim,
                                      &fresh)
            != NGX_OK)
        {
            rc = NGX_ERROR;
            ngx_str_set(&res->error, "cloudauth_zone is full");
        }
    }

    if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "cloudauth: credential \"%V\": token %s in %M ms, "
                      "expires in %T s, subject %s",
                      &cred->name, f ? "fetched" : "signed",
                      f ? f->duration : 0, res->expires_in,
                      ngx_cloudauth_engine_subject_hash(subject, hash));

    } else {
        if (res->error.len == 0) {
            ngx_str_set(&res->error, "internal error");
        }

        fl.terminal = res->terminal;
        fl.retry_after = f ? f->retry_after : 0;

        delay = ngx_cloudauth_cache_fail(cred->conf->shm_zone, &key, claim,
                                         &res->error,
                                         ngx_cloudauth_engine_backoff, &fl);

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


/* wait groups: the requests of this worker waiting for one entry */

static ngx_cloudauth_group_t *
ngx_cloudauth_engine_group(ngx_cloudauth_cred_t *cred, ngx_str_t *subject,
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
    g->poll.handler = ngx_cloudauth_engine_group_poll;
    g->poll.log = ngx_cycle->log;

    g->deadline = ngx_cloudauth_monotonic()
                  + ngx_cloudauth_engine_claim_for(cred);
    g->queued_until = g->deadline - NGX_CLOUDAUTH_CLAIM_SLACK;

    ngx_queue_insert_tail(&ngx_cloudauth_groups, &g->queue);

    ngx_add_timer(&g->poll, NGX_CLOUDAUTH_POLL);

    return g;
}


static void
ngx_cloudauth_engine_group_poll(ngx_event_t *ev)
{
    ngx_cloudauth_engine_group_check((ngx_cloudauth_group_t *)
                     ((u_char *) ev - offsetof(ngx_cloudauth_group_t, poll)));
}


static void
ngx_cloudauth_engine_group_check(ngx_cloudauth_group_t *g)
{
    char                     *reason;
    uint64_t                  now;
    ngx_int_t                 rc;
    ngx_pool_t               *pool;
    ngx_queue_t              *q;
    ngx_cloudauth_key_t       key;
    ngx_cloudauth_ask_t      *ask;
    ngx_cloudauth_take_t      t;
    ngx_cloudauth_cred_t     *cred;

    if (ngx_queue_empty(&g->waiters)) {
        ngx_cloudauth_engine_group_free(g);
        return;
    }

    cred = g->cred;
    ngx_cloudauth_engine_key(&key, cred, &g->subject);

    /* the token, if there is one, is copied once, here */

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        ngx_add_timer(&g->poll, NGX_CLOUDAUTH_POLL);
        return;
    }

    ngx_str_null(&t.token);
    t.claim_for = ngx_cloudauth_engine_claim_for(cred);
    t.pool = pool;
    t.count = NGX_CLOUDAUTH_COUNT_NONE;
    t.concurrency = cred->concurrency;
    t.refresh = 0;

    rc = ngx_cloudauth_cache_take(cred->conf->shm_zone, &key, &t);

    now = ngx_cloudauth_monotonic();

    reason = "token request failed";

    if (rc == NGX_CLOUDAUTH_TAKE_QUEUE) {

        if (now <= g->queued_until) {
            ngx_destroy_pool(pool);
            ngx_cloudauth_engine_queue(g, now);
            return;
        }

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "cloudauth: credential \"%V\": no token request "
                      "slot came free within cloudauth_timeout "
                      "(concurrency=%ui)", &cred->name, cred->concurrency);

        reason = "no token request slot free within cloudauth_timeout";
        rc = NGX_CLOUDAUTH_TAKE_BACKOFF;
    }

    if (g->queued) {

        /* a claim it waits for now was made after it queued: a full wait */

        if (rc == NGX_CLOUDAUTH_TAKE_WAIT) {
            g->deadline = now + ngx_cloudauth_engine_claim_for(cred);
        }

        /* out of the slot queue: the next group there tries at once */
        ngx_cloudauth_engine_unqueue(g);
    }

    if (rc == NGX_CLOUDAUTH_TAKE_FETCH) {

        /*
         * a request slot came free, or the fetching worker died or gave
         * up: fetch here
         */

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "cloudauth: \"%V\": claimed: fetching", &cred->name);

        g->deadline = now + ngx_cloudauth_engine_claim_for(cred);

        /* a job that fails at once wakes this group by a posted event */

        if (ngx_cloudauth_engine_job_start(cred, &g->subject, t.claim,
                                           ngx_cycle->log)
            != NGX_OK)
        {
            ngx_cloudauth_cache_release(cred->conf->shm_zone, &key, t.claim);
            rc = NGX_CLOUDAUTH_TAKE_BACKOFF;

        } else {
            rc = NGX_CLOUDAUTH_TAKE_WAIT;
        }
    }

    if (rc == NGX_CLOUDAUTH_TAKE_WAIT && now > g->deadline) {
        rc = NGX_CLOUDAUTH_TAKE_BACKOFF;
    }

    if (rc == NGX_CLOUDAUTH_TAKE_WAIT) {
        ngx_destroy_pool(pool);
        ngx_add_timer(&g->poll, NGX_CLOUDAUTH_POLL);
        return;
    }

    /*
     * Give every waiter its answer first, then wake them: a woken request
     * may ask the engine again or free its ask.
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

        if (rc == NGX_CLOUDAUTH_TAKE_TOKEN) {
            ask->token.data = ngx_pnalloc(ask->pool, t.token.len);

            if (ask->token.data) {
                ngx_memcpy(ask->token.data, t.token.data, t.token.len);
                ask->token.len = t.token.len;
                ask->expires_at = t.expires_at;
                ask->obtained_at = t.obtained_at;
                continue;
            }
        }

        ask->reason.data = (u_char *) reason;
        ask->reason.len = ngx_strlen(reason);
        ask->cache_status = NGX_CLOUDAUTH_ERROR;
    }

    if (t.token.len) {
        ngx_explicit_memzero(t.token.data, t.token.len);
    }

    ngx_destroy_pool(pool);

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
ngx_cloudauth_engine_group_free(ngx_cloudauth_group_t *g)
{
    ngx_cloudauth_engine_unqueue(g);

    if (g->poll.timer_set) {
        ngx_del_timer(&g->poll);
    }

    if (g->poll.posted) {
        ngx_delete_posted_event(&g->poll);
    }

    ngx_queue_remove(&g->queue);
    ngx_free(g);
}


/*
 * A credential's slot queue: its groups whose entry found no request slot
 * free, first come first.  The first polls; the others wake up at their
 * deadline, or when it is their turn.  The queue is made on first use (the
 * credential is zeroed at configuration time).
 */

static void
ngx_cloudauth_engine_queue(ngx_cloudauth_group_t *g, uint64_t now)
{
    if (!g->queued) {
        if (g->cred->slot_queue.next == NULL) {
            ngx_queue_init(&g->cred->slot_queue);
        }

        ngx_queue_insert_tail(&g->cred->slot_queue, &g->slot_queue);
        g->queued = 1;
    }

    if (g->poll.posted) {
        return;
    }

    if (ngx_cloudauth_engine_queue_first(g->cred) == g) {
        ngx_add_timer(&g->poll, NGX_CLOUDAUTH_POLL);

    } else {
        ngx_add_timer(&g->poll, (ngx_msec_t) (g->queued_until - now) + 1);
    }
}


static void
ngx_cloudauth_engine_unqueue(ngx_cloudauth_group_t *g)
{
    ngx_cloudauth_group_t  *next;

    if (!g->queued) {
        return;
    }

    ngx_queue_remove(&g->slot_queue);
    g->queued = 0;

    next = ngx_cloudauth_engine_queue_first(g->cred);

    if (next) {
        ngx_cloudauth_engine_group_post(next);
    }
}


static ngx_cloudauth_group_t *
ngx_cloudauth_engine_queue_first(ngx_cloudauth_cred_t *cred)
{
    if (cred->slot_queue.next == NULL || ngx_queue_empty(&cred->slot_queue)) {
        return NULL;
    }

    return ngx_queue_data(ngx_queue_head(&cred->slot_queue),
                          ngx_cloudauth_group_t, slot_queue);
}
