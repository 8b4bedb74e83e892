
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The fetch client: one libcurl multi handle per worker, driven by nginx's
 * event loop.  Each socket curl wants watched gets an nginx connection
 * wrapper whose read and write events are registered level-triggered; curl's
 * single timeout becomes one nginx timer.  The sockets are curl's: they are
 * opened and closed through our callbacks, so a wrapper never outlives its
 * descriptor and nginx never closes one.
 *
 * A socket that cannot be watched (no free connection: worker_connections
 * are not enough; epoll_ctl() failing) fails its own transfer only: the
 * socket callback never returns -1, which would kill the multi handle and
 * every transfer in it.  The transfer is put on the failed queue and its
 * handler is called from a posted event, outside curl.  A multi handle that
 * dies all the same (a curl_multi_* call answers CURLM_ABORTED_BY_CALLBACK,
 * CURLM_INTERNAL_ERROR...) is replaced: its transfers fail the same way and
 * the next fetch runs on a fresh one.
 */


#include "ngx_cloudauth_fetch.h"


static CURLM *ngx_cloudauth_fetch_multi(ngx_log_t *log);
static CURLM *ngx_cloudauth_fetch_multi_create(ngx_log_t *log);
static ngx_uint_t ngx_cloudauth_fetch_multi_broken(CURLMcode mc);
static void ngx_cloudauth_fetch_restart(const char *call, CURLMcode mc,
    ngx_log_t *log);
static void ngx_cloudauth_fetch_check(const char *call, CURLMcode mc,
    ngx_log_t *log);
static void ngx_cloudauth_fetch_fail(ngx_cloudauth_fetch_t *f,
    const char *why);
static CURLMcode ngx_cloudauth_fetch_detach(CURLM *multi,
    ngx_cloudauth_fetch_t *f);
static void ngx_cloudauth_fetch_fail_easy(CURL *easy, const char *why);
static void ngx_cloudauth_fetch_fail_handler(ngx_event_t *ev);
static int ngx_cloudauth_fetch_socket_cb(CURL *easy, curl_socket_t s,
    int what, void *userp, void *socketp);
static int ngx_cloudauth_fetch_timer_cb(CURLM *multi, long timeout_ms,
    void *userp);
static curl_socket_t ngx_cloudauth_fetch_open_cb(void *clientp,
    curlsocktype purpose, struct curl_sockaddr *address);
static int ngx_cloudauth_fetch_close_cb(void *clientp, curl_socket_t item);
static void ngx_cloudauth_fetch_event_handler(ngx_event_t *ev);
static void ngx_cloudauth_fetch_timer_handler(ngx_event_t *ev);
static void ngx_cloudauth_fetch_done(void);
static void ngx_cloudauth_fetch_ended(ngx_cloudauth_fetch_t *f, CURL *easy);
static void ngx_cloudauth_fetch_conns_free(void);
static void ngx_cloudauth_fetch_conn_free(ngx_connection_t *c,
    ngx_uint_t closing);
static size_t ngx_cloudauth_fetch_body_cb(char *ptr, size_t size,
    size_t nmemb, void *userdata);
static size_t ngx_cloudauth_fetch_header_cb(char *ptr, size_t size,
    size_t nmemb, void *userdata);
static ngx_cloudauth_fetch_t *ngx_cloudauth_fetch_create(
    ngx_cloudauth_request_t *req, ngx_cloudauth_fetch_handler_pt handler,
    void *data, ngx_log_t *log);
static ngx_int_t ngx_cloudauth_fetch_set_url(ngx_cloudauth_fetch_t *f,
    ngx_str_t *url);
static ngx_int_t ngx_cloudauth_fetch_add(ngx_cloudauth_fetch_t *f);
static size_t ngx_cloudauth_fetch_read_cb(char *buf, size_t size,
    size_t nitems, void *userdata);
static int ngx_cloudauth_fetch_seek_cb(void *userdata, curl_off_t offset,
    int origin);


/* whose request a fetch is, in the debug log: a credential's name, or "-" */

#define ngx_cloudauth_fetch_name(f)                                           \
    ((f)->name.len ? &(f)->name : &ngx_cloudauth_fetch_noname)


static ngx_str_t  ngx_cloudauth_fetch_noname = ngx_string("-");


/* a failed curl_easy_setopt() fails the fetch: nothing built wrongly goes */

#define ngx_cloudauth_setopt(f, opt, val)                                     \
    if (curl_easy_setopt((f)->easy, opt, val) != CURLE_OK) {                 \
        ngx_log_error(NGX_LOG_ERR, (f)->log, 0,                               \
                      "cloudauth: curl_easy_setopt(" #opt ") failed");        \
        goto failed;                                                          \
    }


static CURLM             *ngx_cloudauth_multi;
/* what the worker's configuration says, set by ngx_cloudauth_fetch_init() */
static ngx_msec_t         ngx_cloudauth_fetch_timeout;
static ngx_str_t          ngx_cloudauth_fetch_cainfo;

static ngx_event_t        ngx_cloudauth_timer;
static ngx_event_t        ngx_cloudauth_fail_event;
static ngx_connection_t   ngx_cloudauth_timer_conn;
static ngx_queue_t        ngx_cloudauth_conns;     /* socket wrappers */
static ngx_queue_t        ngx_cloudauth_fetches;   /* in flight */
static ngx_queue_t        ngx_cloudauth_failed;    /* handlers due */


ngx_int_t
ngx_cloudauth_fetch_init(ngx_cycle_t *cycle, ngx_msec_t timeout,
    ngx_str_t *cainfo)
{
    ngx_cloudauth_fetch_timeout = timeout;
    ngx_cloudauth_fetch_cainfo = *cainfo;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "cloudauth: curl_global_init() failed");
        return NGX_ERROR;
    }

    ngx_queue_init(&ngx_cloudauth_conns);
    ngx_queue_init(&ngx_cloudauth_fetches);
    ngx_queue_init(&ngx_cloudauth_failed);

    /* timer events log the fd of ev->data in debug builds */
    ngx_cloudauth_timer_conn.fd = (ngx_socket_t) -1;
    ngx_cloudauth_timer.data = &ngx_cloudauth_timer_conn;
    ngx_cloudauth_timer.handler = ngx_cloudauth_fetch_timer_handler;
    ngx_cloudauth_timer.log = cycle->log;
    ngx_cloudauth_timer.cancelable = 1;

    ngx_cloudauth_fail_event.data = &ngx_cloudauth_timer_conn;
    ngx_cloudauth_fail_event.handler = ngx_cloudauth_fetch_fail_handler;
    ngx_cloudauth_fail_event.log = cycle->log;

    ngx_cloudauth_multi = ngx_cloudauth_fetch_multi_create(cycle->log);
    if (ngx_cloudauth_multi == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_cloudauth_fetch_exit(ngx_cycle_t *cycle)
{
    CURLMcode               mc;
    ngx_queue_t            *q;
    ngx_cloudauth_fetch_t  *f;

    if (ngx_cloudauth_timer.handler == NULL) {
        /* ngx_cloudauth_fetch_init() never ran */
        return;
    }

    while (!ngx_queue_empty(&ngx_cloudauth_fetches)) {
        q = ngx_queue_head(&ngx_cloudauth_fetches);
        f = ngx_queue_data(q, ngx_cloudauth_fetch_t, queue);
        ngx_cloudauth_fetch_free(f);
    }

    while (!ngx_queue_empty(&ngx_cloudauth_failed)) {
        q = ngx_queue_head(&ngx_cloudauth_failed);
        f = ngx_queue_data(q, ngx_cloudauth_fetch_t, queue);
        ngx_cloudauth_fetch_free(f);
    }

    if (ngx_cloudauth_multi) {
        mc = curl_multi_cleanup(ngx_cloudauth_multi);
        ngx_cloudauth_multi = NULL;

        if (mc != CURLM_OK) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                          "cloudauth: curl_multi_cleanup() failed: %s",
                          curl_multi_strerror(mc));
        }
    }

    ngx_cloudauth_fetch_conns_free();

    if (ngx_cloudauth_fail_event.posted) {
        ngx_delete_posted_event(&ngx_cloudauth_fail_event);
    }

    curl_global_cleanup();
}


/* the worker's multi handle; a fresh one if the last one was dropped */

static CURLM *
ngx_cloudauth_fetch_multi(ngx_log_t *log)
{
    if (ngx_cloudauth_multi == NULL) {
        ngx_cloudauth_multi = ngx_cloudauth_fetch_multi_create(log);
    }

    return ngx_cloudauth_multi;
}


static CURLM *
ngx_cloudauth_fetch_multi_create(ngx_log_t *log)
{
    CURLM      *multi;
    CURLMcode   mc;

    multi = curl_multi_init();
    if (multi == NULL) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: curl_multi_init() failed");
        return NULL;
    }

    /* the callbacks get the multi handle they serve */

    mc = curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION,
                           ngx_cloudauth_fetch_socket_cb);

    if (mc == CURLM_OK) {
        mc = curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, multi);
    }

    if (mc == CURLM_OK) {
        mc = curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION,
                               ngx_cloudauth_fetch_timer_cb);
    }

    /*
     * no limit per host: uploads to GCS share one HTTP/2 connection where
     * the server speaks it, and need one each where it does not (a queue
     * behind a per-host limit would stall them); half of the worker's
     * connections at most, the rest are the clients'
     */

    if (mc == CURLM_OK) {
        mc = curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                               (long) ngx_max(ngx_cycle->connection_n / 2,
                                              8));
    }

    if (mc == CURLM_OK) {
        mc = curl_multi_setopt(multi, CURLMOPT_PIPELINING,
                               (long) CURLPIPE_MULTIPLEX);
    }

    if (mc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: curl_multi_setopt() failed: %s",
                      curl_multi_strerror(mc));

        mc = curl_multi_cleanup(multi);

        if (mc != CURLM_OK) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "cloudauth: curl_multi_cleanup() failed: %s",
                          curl_multi_strerror(mc));
        }

        return NULL;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, log, 0,
                   "cloudauth fetch: multi handle %p created", multi);

    return multi;
}


/* codes after which the multi handle is no use any more */

static ngx_uint_t
ngx_cloudauth_fetch_multi_broken(CURLMcode mc)
{
    switch (mc) {

    case CURLM_BAD_HANDLE:
    case CURLM_OUT_OF_MEMORY:
    case CURLM_INTERNAL_ERROR:
    case CURLM_ABORTED_BY_CALLBACK:
#if (LIBCURL_VERSION_NUM >= 0x075400)
    case CURLM_UNRECOVERABLE_POLL:
#endif
        return 1;

    default:
        return 0;
    }
}


/* what a curl_multi_* call answered: a dead multi handle is replaced */

static void
ngx_cloudauth_fetch_check(const char *call, CURLMcode mc, ngx_log_t *log)
{
    if (mc == CURLM_OK) {
        return;
    }

    if (ngx_cloudauth_fetch_multi_broken(mc)) {
        ngx_cloudauth_fetch_restart(call, mc, log);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, log, 0, "cloudauth: %s() failed: %s", call,
                  curl_multi_strerror(mc));
}


/*
 * The multi handle is dead: every transfer in it fails (their handlers are
 * called from the posted event), the handle and its connections go, and the
 * next fetch gets a fresh one.
 */

static void
ngx_cloudauth_fetch_restart(const char *call, CURLMcode mc, ngx_log_t *log)
{
    CURLM                  *old;
    CURLMcode               rc;
    ngx_uint_t              n;
    ngx_queue_t            *q;
    ngx_cloudauth_fetch_t  *f;

    old = ngx_cloudauth_multi;

    if (old == NULL) {
        return;
    }

    ngx_cloudauth_multi = NULL;

    n = 0;

    while (!ngx_queue_empty(&ngx_cloudauth_fetches)) {
        q = ngx_queue_head(&ngx_cloudauth_fetches);
        f = ngx_queue_data(q, ngx_cloudauth_fetch_t, queue);

        ngx_cloudauth_fetch_fail(f, "the worker's fetch client failed and "
                                 "was replaced");

        if (ngx_queue_head(&ngx_cloudauth_fetches) == q) {
            /* not moved by ngx_cloudauth_fetch_fail(): never loop on it */
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&ngx_cloudauth_failed, q);
        }

        n++;
    }

    for (q = ngx_queue_head(&ngx_cloudauth_failed);
         q != ngx_queue_sentinel(&ngx_cloudauth_failed);
         q = ngx_queue_next(q))
    {
        f = ngx_queue_data(q, ngx_cloudauth_fetch_t, queue);

        rc = ngx_cloudauth_fetch_detach(old, f);

        if (rc != CURLM_OK) {
            /* curl_multi_cleanup() below detaches it all the same */
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "cloudauth: curl_multi_remove_handle() failed: %s",
                          curl_multi_strerror(rc));
        }
    }

    rc = curl_multi_cleanup(old);

    if (rc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: curl_multi_cleanup() failed: %s",
                      curl_multi_strerror(rc));
    }

    ngx_cloudauth_fetch_conns_free();

    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "cloudauth: %s() failed: %s; the fetch client is replaced, "
                  "%ui transfer(s) in it failed", call,
                  curl_multi_strerror(mc), n);

    if (!ngx_queue_empty(&ngx_cloudauth_failed)
        && !ngx_cloudauth_fail_event.posted)
    {
        ngx_post_event(&ngx_cloudauth_fail_event, &ngx_posted_events);
    }

    ngx_cloudauth_multi = ngx_cloudauth_fetch_multi_create(log);
}


/* the transfer fails; its handler is called outside curl, from an event */

static void
ngx_cloudauth_fetch_fail(ngx_cloudauth_fetch_t *f, const char *why)
{
    if (!f->active || f->code != CURLE_OK) {
        /* not in flight, or failed already */
        return;
    }

    f->code = CURLE_COULDNT_CONNECT;
    ngx_cpystrn((u_char *) f->errbuf, (u_char *) why, CURL_ERROR_SIZE);

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, f->log, 0,
                   "cloudauth fetch: \"%V\" fails, its handler is posted: %s",
                   ngx_cloudauth_fetch_name(f), why);

    ngx_queue_remove(&f->queue);
    ngx_queue_insert_tail(&ngx_cloudauth_failed, &f->queue);

    if (!ngx_cloudauth_fail_event.posted) {
        ngx_post_event(&ngx_cloudauth_fail_event, &ngx_posted_events);
    }
}


static void
ngx_cloudauth_fetch_fail_easy(CURL *easy, const char *why)
{
    ngx_cloudauth_fetch_t  *f;

    f = NULL;

    if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &f) != CURLE_OK
        || f == NULL)
    {
        /*
         * a socket of curl's own, of no request (libcurl 8 shuts
         * connections down on an internal handle): no request fails; what
         * went wrong (connections exhausted, epoll) nginx has logged
         */
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "cloudauth: a socket of curl's own: %s", why);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, f->log, 0,
                  "cloudauth: request of \"%V\" failed: %s",
                  ngx_cloudauth_fetch_name(f), why);

    ngx_cloudauth_fetch_fail(f, why);
}


/* removes f's easy handle from multi, keeping the reason it failed */

static CURLMcode
ngx_cloudauth_fetch_detach(CURLM *multi, ngx_cloudauth_fetch_t *f)
{
    char       why[CURL_ERROR_SIZE];
    CURLMcode  mc;

    ngx_memcpy(why, f->errbuf, CURL_ERROR_SIZE);

    mc = curl_multi_remove_handle(multi, f->easy);

    ngx_memcpy(f->errbuf, why, CURL_ERROR_SIZE);

    return mc;
}


static void
ngx_cloudauth_fetch_fail_handler(ngx_event_t *ev)
{
    CURLMcode               mc;
    ngx_queue_t            *q;
    ngx_cloudauth_fetch_t  *f;

    while (!ngx_queue_empty(&ngx_cloudauth_failed)) {
        q = ngx_queue_head(&ngx_cloudauth_failed);
        f = ngx_queue_data(q, ngx_cloudauth_fetch_t, queue);

        ngx_queue_remove(q);
        f->active = 0;

        if (ngx_cloudauth_multi) {
            mc = ngx_cloudauth_fetch_detach(ngx_cloudauth_multi, f);
            ngx_cloudauth_fetch_check("curl_multi_remove_handle", mc, f->log);
        }

        f->status = 0;
        f->duration = ngx_current_msec - f->start;

        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, f->log, 0,
                       "cloudauth fetch: \"%V\" ended: failed after %M ms",
                       ngx_cloudauth_fetch_name(f), f->duration);

        f->handler(f);
    }
}


ngx_cloudauth_fetch_t *
ngx_cloudauth_fetch_start(ngx_cloudauth_request_t *req,
    ngx_cloudauth_fetch_handler_pt handler, void *data, ngx_log_t *log)
{
    ngx_cloudauth_fetch_t  *f;

    f = ngx_cloudauth_fetch_create(req, handler, data, log);
    if (f == NULL) {
        return NULL;
    }

    if (ngx_cloudauth_fetch_add(f) != NGX_OK) {
        ngx_cloudauth_fetch_free(f);
        return NULL;
    }

    return f;
}


/*
 * A request whose body (length bytes, or none if length is -1) is pulled
 * through read() as curl sends it, with a custom method (PUT, DELETE), and
 * whose response header lines go to header().  read() returning NGX_AGAIN
 * pauses the transfer until ngx_cloudauth_fetch_unpause().
 * The transfer ends when it stalls (no byte moved) for cloudauth_timeout,
 * not after a fixed time: a chunk of many megabytes may take long.
 */

ngx_cloudauth_fetch_t *
ngx_cloudauth_fetch_stream(ngx_cloudauth_request_t *req, off_t length,
    ngx_cloudauth_fetch_read_pt read, ngx_cloudauth_fetch_rewind_pt rewind,
    ngx_cloudauth_fetch_header_pt header,
    ngx_cloudauth_fetch_handler_pt handler, void *data, ngx_log_t *log)
{
    char                       *s;
    long                        stall;
    CURLcode                    rc;
    ngx_cloudauth_fetch_t      *f;

    f = ngx_cloudauth_fetch_create(req, handler, data, log);
    if (f == NULL) {
        return NULL;
    }

    f->read = read;
    f->rewind = rewind;
    f->header = header;

    if (req->method.len
        && !(req->method.len == 4
             && ngx_strncmp(req->method.data, "POST", 4) == 0)
        && !(req->method.len == 3
             && ngx_strncmp(req->method.data, "GET", 3) == 0))
    {
        s = ngx_alloc(req->method.len + 1, log);
        if (s == NULL) {
            goto failed;
        }

        ngx_cpystrn((u_char *) s, req->method.data, req->method.len + 1);
        rc = curl_easy_setopt(f->easy, CURLOPT_CUSTOMREQUEST, s);
        ngx_free(s);

        if (rc != CURLE_OK) {
            ngx_log_error(NGX_LOG_ERR, log, 0, "cloudauth: curl_easy_setopt"
                          "(CURLOPT_CUSTOMREQUEST) failed: %s",
                          curl_easy_strerror(rc));
            goto failed;
        }
    }

    if (length >= 0) {
        stall = (long) (ngx_cloudauth_fetch_timeout + 999) / 1000;

        /* CURLOPT_UPLOAD makes it a PUT unless a custom method is set */
        ngx_cloudauth_setopt(f, CURLOPT_UPLOAD, 1L);
        ngx_cloudauth_setopt(f, CURLOPT_INFILESIZE_LARGE,
                             (curl_off_t) length);
        ngx_cloudauth_setopt(f, CURLOPT_READFUNCTION,
                             ngx_cloudauth_fetch_read_cb);
        ngx_cloudauth_setopt(f, CURLOPT_READDATA, f);
        ngx_cloudauth_setopt(f, CURLOPT_SEEKFUNCTION,
                             ngx_cloudauth_fetch_seek_cb);
        ngx_cloudauth_setopt(f, CURLOPT_SEEKDATA, f);
        ngx_cloudauth_setopt(f, CURLOPT_TIMEOUT_MS, 0L);
        ngx_cloudauth_setopt(f, CURLOPT_PIPEWAIT, 1L);
        ngx_cloudauth_setopt(f, CURLOPT_LOW_SPEED_LIMIT, 1L);
        ngx_cloudauth_setopt(f, CURLOPT_LOW_SPEED_TIME, stall);

        /*
         * a body that may pause (read() NGX_AGAIN) goes over HTTP/1.1:
         * libcurl of Debian 12 (7.88) has known bugs pausing an HTTP/2
         * upload (curl issues 10618, 10751), and a transfer that does not
         * resume would hang the upload
         */
        ngx_cloudauth_setopt(f, CURLOPT_HTTP_VERSION,
                             (long) CURL_HTTP_VERSION_1_1);
    }

    if (ngx_cloudauth_fetch_add(f) != NGX_OK) {
        goto failed;
    }

    return f;

failed:

    ngx_cloudauth_fetch_free(f);

    return NULL;
}


static size_t
ngx_cloudauth_fetch_read_cb(char *buf, size_t size, size_t nitems,
    void *userdata)
{
    ngx_cloudauth_fetch_t *f = userdata;

    ssize_t  n;

    n = f->read(f, (u_char *) buf, size * nitems);

    if (n == NGX_AGAIN) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, f->log, 0,
                       "cloudauth fetch: body paused: nothing to send yet");
        return CURL_READFUNC_PAUSE;
    }

    if (n < 0) {
        return CURL_READFUNC_ABORT;
    }

    return (size_t) n;
}


/* the body has more to send: the transfer paused by read() goes on */

void
ngx_cloudauth_fetch_unpause(ngx_cloudauth_fetch_t *f)
{
    CURLcode  rc;

    if (!f->active || f->code != CURLE_OK) {
        /* done, or failed and its handler is due */
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, f->log, 0,
                   "cloudauth fetch: body resumed");

    rc = curl_easy_pause(f->easy, CURLPAUSE_CONT);

    if (rc == CURLE_OK) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, f->log, 0,
                  "cloudauth: curl_easy_pause() failed: %s",
                  curl_easy_strerror(rc));

    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        /* curl's socket or timer callback failed: the multi handle is dead */
        ngx_cloudauth_fetch_restart("curl_easy_pause",
                                    CURLM_ABORTED_BY_CALLBACK, f->log);
        return;
    }

    ngx_cloudauth_fetch_fail(f, "cannot resume the transfer");
}


static int
ngx_cloudauth_fetch_seek_cb(void *userdata, curl_off_t offset, int origin)
{
    ngx_cloudauth_fetch_t *f = userdata;

    /* curl rewinds to resend a body on a fresh connection */

    if (origin != SEEK_SET || offset != 0 || f->rewind == NULL) {
        return CURL_SEEKFUNC_CANTSEEK;
    }

    return f->rewind(f) == NGX_OK ? CURL_SEEKFUNC_OK : CURL_SEEKFUNC_FAIL;
}


static ngx_cloudauth_fetch_t *
ngx_cloudauth_fetch_create(ngx_cloudauth_request_t *req,
    ngx_cloudauth_fetch_handler_pt handler, void *data, ngx_log_t *log)
{
    char                       *s;
    CURLcode                    rc;
    ngx_str_t                  *h;
    ngx_uint_t                  i;
    struct curl_slist          *l;
    ngx_cloudauth_fetch_t      *f;

    f = ngx_calloc(sizeof(ngx_cloudauth_fetch_t), log);
    if (f == NULL) {
        return NULL;
    }

    f->log = log;
    f->name = req->name;
    f->handler = handler;
    f->data = data;
    f->body_max = NGX_CLOUDAUTH_MAX_RESPONSE;

    f->easy = curl_easy_init();
    if (f->easy == NULL) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "cloudauth: curl_easy_init() failed");
        goto failed;
    }

    /* the strings are copied by curl (CURLOPT_COPYPOSTFIELDS too) */

    if (ngx_cloudauth_fetch_set_url(f, &req->url) != NGX_OK) {
        goto failed;
    }

    ngx_cloudauth_setopt(f, CURLOPT_FOLLOWLOCATION, 0L);
    ngx_cloudauth_setopt(f, CURLOPT_HTTP_VERSION,
                         (long) CURL_HTTP_VERSION_2TLS);
    ngx_cloudauth_setopt(f, CURLOPT_SSL_VERIFYPEER, 1L);
    ngx_cloudauth_setopt(f, CURLOPT_SSL_VERIFYHOST, 2L);
    ngx_cloudauth_setopt(f, CURLOPT_NOSIGNAL, 1L);
    ngx_cloudauth_setopt(f, CURLOPT_TIMEOUT_MS,
                         (long) ngx_cloudauth_fetch_timeout);
    ngx_cloudauth_setopt(f, CURLOPT_CONNECTTIMEOUT_MS,
                         (long) ngx_cloudauth_fetch_timeout);
    ngx_cloudauth_setopt(f, CURLOPT_USERAGENT, "ngx_cloudauth/0.1");
    ngx_cloudauth_setopt(f, CURLOPT_ERRORBUFFER, f->errbuf);
    ngx_cloudauth_setopt(f, CURLOPT_PRIVATE, f);
    ngx_cloudauth_setopt(f, CURLOPT_WRITEFUNCTION,
                         ngx_cloudauth_fetch_body_cb);
    ngx_cloudauth_setopt(f, CURLOPT_WRITEDATA, f);
    ngx_cloudauth_setopt(f, CURLOPT_HEADERFUNCTION,
                         ngx_cloudauth_fetch_header_cb);
    ngx_cloudauth_setopt(f, CURLOPT_HEADERDATA, f);
    ngx_cloudauth_setopt(f, CURLOPT_OPENSOCKETFUNCTION,
                         ngx_cloudauth_fetch_open_cb);
    ngx_cloudauth_setopt(f, CURLOPT_OPENSOCKETDATA, f);
    ngx_cloudauth_setopt(f, CURLOPT_CLOSESOCKETFUNCTION,
                         ngx_cloudauth_fetch_close_cb);

    if (ngx_cloudauth_fetch_cainfo.len) {
        ngx_cloudauth_setopt(f, CURLOPT_CAINFO,
                             ngx_cloudauth_fetch_cainfo.data);
    }

    if (req->body.len || (req->method.len == 4
                          && ngx_strncmp(req->method.data, "POST", 4) == 0))
    {
        ngx_cloudauth_setopt(f, CURLOPT_POSTFIELDSIZE, (long) req->body.len);
        ngx_cloudauth_setopt(f, CURLOPT_COPYPOSTFIELDS,
                             req->body.len ? (char *) req->body.data : "");
    }

    if (req->userpwd.len) {
        s = ngx_alloc(req->userpwd.len + 1, log);
        if (s == NULL) {
            goto failed;
        }

        ngx_cpystrn((u_char *) s, req->userpwd.data, req->userpwd.len + 1);

        rc = curl_easy_setopt(f->easy, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);

        if (rc == CURLE_OK) {
            rc = curl_easy_setopt(f->easy, CURLOPT_USERPWD, s);
        }

        ngx_explicit_memzero(s, req->userpwd.len);
        ngx_free(s);

        if (rc != CURLE_OK) {
            ngx_log_error(NGX_LOG_ERR, log, 0, "cloudauth: curl_easy_setopt"
                          "(CURLOPT_USERPWD) failed: %s",
                          curl_easy_strerror(rc));
            goto failed;
        }
    }

    /* no "Expect: 100-continue" round trip for small bodies */
    l = curl_slist_append(NULL, "Expect:");
    if (l == NULL) {
        goto failed;
    }

    f->headers = l;

    if (req->headers) {
        h = req->headers->elts;

        for (i = 0; i < req->headers->nelts; i++) {
            s = ngx_alloc(h[i].len + 1, log);
            if (s == NULL) {
                goto failed;
            }

            ngx_cpystrn((u_char *) s, h[i].data, h[i].len + 1);
            l = curl_slist_append(f->headers, s);
            ngx_explicit_memzero(s, h[i].len);
            ngx_free(s);

            if (l == NULL) {
                goto failed;
            }

            f->headers = l;
        }
    }

    ngx_cloudauth_setopt(f, CURLOPT_HTTPHEADER, f->headers);

    return f;

failed:

    ngx_cloudauth_fetch_free(f);

    return NULL;
}


/*
 * The URL goes to curl as curl's own parser read it, after the same check
 * as at configuration time, and only its scheme is allowed for the transfer:
 * whatever a kind or the upload appended to a checked endpoint, or a session
 * URI a server gave, the request goes where it was checked to go.  Whether
 * plain http to the metadata server is allowed was decided per credential
 * at configuration time; here the metadata server passes.
 */

static ngx_int_t
ngx_cloudauth_fetch_set_url(ngx_cloudauth_fetch_t *f, ngx_str_t *url)
{
    char        *why, *s;
    CURLcode     rc;
    ngx_uint_t   https;

    why = ngx_cloudauth_url_check(url, 1, &s, &https, f->log);

    if (why) {
        /* the URL itself may carry what no log should: not logged */
        ngx_log_error(NGX_LOG_ERR, f->log, 0,
                      "cloudauth: refusing a request whose URL %s", why);
        return NGX_ERROR;
    }

    rc = curl_easy_setopt(f->easy, CURLOPT_URL, s);
    curl_free(s);

    if (rc == CURLE_OK) {
#if (LIBCURL_VERSION_NUM >= 0x075500)
        rc = curl_easy_setopt(f->easy, CURLOPT_PROTOCOLS_STR,
                              https ? "https" : "http");
#else
        rc = curl_easy_setopt(f->easy, CURLOPT_PROTOCOLS,
                              https ? CURLPROTO_HTTPS : CURLPROTO_HTTP);
#endif
    }

    if (rc != CURLE_OK) {
        ngx_log_error(NGX_LOG_ERR, f->log, 0,
                      "cloudauth: curl_easy_setopt(CURLOPT_URL) failed: %s",
                      curl_easy_strerror(rc));
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_cloudauth_fetch_add(ngx_cloudauth_fetch_t *f)
{
    CURLM       *multi;
    CURLMcode    mc;
    ngx_uint_t   tries;

    f->start = ngx_current_msec;

    for (tries = 0; tries < 2; tries++) {

        multi = ngx_cloudauth_fetch_multi(f->log);
        if (multi == NULL) {
            return NGX_ERROR;
        }

        mc = curl_multi_add_handle(multi, f->easy);

        if (mc == CURLM_OK) {
            f->active = 1;
            ngx_queue_insert_tail(&ngx_cloudauth_fetches, &f->queue);

            ngx_log_debug1(NGX_LOG_DEBUG_EVENT, f->log, 0,
                           "cloudauth fetch: \"%V\" started",
                           ngx_cloudauth_fetch_name(f));
            return NGX_OK;
        }

        if (!ngx_cloudauth_fetch_multi_broken(mc)) {
            ngx_log_error(NGX_LOG_ERR, f->log, 0,
                          "cloudauth: curl_multi_add_handle() failed: %s",
                          curl_multi_strerror(mc));
            return NGX_ERROR;
        }

        /* a dead multi handle: replaced, and this fetch tried on the new */
        ngx_cloudauth_fetch_restart("curl_multi_add_handle", mc, f->log);
    }

    return NGX_ERROR;
}


void
ngx_cloudauth_fetch_free(ngx_cloudauth_fetch_t *f)
{
    CURLMcode  mc;

    if (f->active) {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, f->log, 0,
                       "cloudauth fetch: \"%V\" cancelled",
                       ngx_cloudauth_fetch_name(f));

        ngx_queue_remove(&f->queue);
        f->active = 0;

        if (ngx_cloudauth_multi) {
            mc = curl_multi_remove_handle(ngx_cloudauth_multi, f->easy);
            ngx_cloudauth_fetch_check("curl_multi_remove_handle", mc, f->log);
        }
    }

    if (f->easy) {
        curl_easy_cleanup(f->easy);
    }

    if (f->headers) {
        curl_slist_free_all(f->headers);
    }

    if (f->body) {
        ngx_explicit_memzero(f->body, f->body_len);
        ngx_free(f->body);
    }

    ngx_free(f);
}


static size_t
ngx_cloudauth_fetch_body_cb(char *ptr, size_t size, size_t nmemb,
    void *userdata)
{
    ngx_cloudauth_fetch_t *f = userdata;

    size_t  n;

    n = size * nmemb;

    if (f->body == NULL) {
        f->body = ngx_alloc(f->body_max, f->log);
        if (f->body == NULL) {
            return 0;
        }
    }

    if (n > f->body_max - f->body_len) {
        /* too large an answer: stop reading it */
        f->truncated = 1;
        return 0;
    }

    ngx_memcpy(f->body + f->body_len, ptr, n);
    f->body_len += n;

    return n;
}


static size_t
ngx_cloudauth_fetch_header_cb(char *ptr, size_t size, size_t nmemb,
    void *userdata)
{
    ngx_cloudauth_fetch_t *f = userdata;

    u_char     *p, *last;
    size_t      n;
    ngx_int_t   v;

    n = size * nmemb;
    p = (u_char *) ptr;
    last = p + n;

    while (last > p && (last[-1] == CR || last[-1] == LF)) {
        last--;
    }

    if (f->header) {
        f->header(f, p, last - p);
    }

    if (last - p > 5 && ngx_strncasecmp(p, (u_char *) "date:", 5) == 0) {
        p += 5;
        while (p < last && *p == ' ') {
            p++;
        }

        f->date = ngx_parse_http_time(p, last - p);
        if (f->date == NGX_ERROR) {
            f->date = 0;
        }

    } else if (last - p > 12
               && ngx_strncasecmp(p, (u_char *) "retry-after:", 12) == 0)
    {
        p += 12;
        while (p < last && *p == ' ') {
            p++;
        }

        v = ngx_atoi(p, last - p);

        if (v == NGX_ERROR) {
            v = ngx_parse_http_time(p, last - p);
            v = (v == NGX_ERROR || v < ngx_time()) ? 0 : v - ngx_time();
        }

        f->retry_after = ngx_min(v, 3600);
    }

    return n;
}


static curl_socket_t
ngx_cloudauth_fetch_open_cb(void *clientp, curlsocktype purpose,
    struct curl_sockaddr *address)
{
    ngx_cloudauth_fetch_t *f = clientp;

    curl_socket_t  s;

    s = socket(address->family, address->socktype, address->protocol);

    if (s == CURL_SOCKET_BAD) {
        ngx_log_error(NGX_LOG_ERR, f->log, ngx_socket_errno,
                      "cloudauth: socket() for a request of \"%V\" failed",
                      ngx_cloudauth_fetch_name(f));
        return s;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, f->log, 0,
                   "cloudauth fetch: \"%V\" opens a new connection: socket %d",
                   ngx_cloudauth_fetch_name(f), s);

    return s;
}


static int
ngx_cloudauth_fetch_close_cb(void *clientp, curl_socket_t item)
{
    ngx_queue_t       *q;
    ngx_connection_t  *c;

    for (q = ngx_queue_head(&ngx_cloudauth_conns);
         q != ngx_queue_sentinel(&ngx_cloudauth_conns);
         q = ngx_queue_next(q))
    {
        c = ngx_queue_data(q, ngx_connection_t, queue);

        if (c->fd == item) {
            ngx_cloudauth_fetch_conn_free(c, 1);
            break;
        }
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "cloudauth fetch: socket %d closed", item);

    return close(item);
}


static void
ngx_cloudauth_fetch_conns_free(void)
{
    ngx_queue_t  *q;

    /* after curl_multi_cleanup(): curl has closed the sockets */

    while (!ngx_queue_empty(&ngx_cloudauth_conns)) {
        q = ngx_queue_head(&ngx_cloudauth_conns);
        ngx_cloudauth_fetch_conn_free(
                         ngx_queue_data(q, ngx_connection_t, queue), 1);
    }

    if (ngx_cloudauth_timer.timer_set) {
        ngx_del_timer(&ngx_cloudauth_timer);
    }

    if (ngx_cloudauth_timer.posted) {
        ngx_delete_posted_event(&ngx_cloudauth_timer);
    }
}


static void
ngx_cloudauth_fetch_conn_free(ngx_connection_t *c, ngx_uint_t closing)
{
    ngx_uint_t  flags;

    flags = closing ? NGX_CLOSE_EVENT : 0;

    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_queue_remove(&c->queue);

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/*
 * Never returns -1: that would make libcurl mark the whole multi handle
 * dead.  A socket that cannot be watched fails its own transfer instead.
 */

static int
ngx_cloudauth_fetch_socket_cb(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp)
{
    CURLM             *multi = userp;
    ngx_connection_t  *c = socketp;

    CURLMcode  mc;

    if (what == CURL_POLL_REMOVE) {
        if (c) {
            mc = curl_multi_assign(multi, s, NULL);

            if (mc != CURLM_OK) {
                /* the socket is leaving curl's hash all the same */
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "cloudauth: curl_multi_assign() failed: %s",
                              curl_multi_strerror(mc));
            }

            ngx_cloudauth_fetch_conn_free(c, 0);
        }

        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "cloudauth fetch: socket %d removed: not watched", s);

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, ngx_cycle->log);

        if (c == NULL) {
            /* nginx has logged "worker_connections are not enough" */
            ngx_cloudauth_fetch_fail_easy(easy, "no free connection for the "
                                          "request's socket: "
                                          "worker_connections are not "
                                          "enough");
            return 0;
        }

        c->read->handler = ngx_cloudauth_fetch_event_handler;
        c->write->handler = ngx_cloudauth_fetch_event_handler;
        c->read->log = ngx_cycle->log;
        c->write->log = ngx_cycle->log;

        ngx_queue_insert_tail(&ngx_cloudauth_conns, &c->queue);

        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "cloudauth fetch: socket %d added", s);

        mc = curl_multi_assign(multi, s, c);

        if (mc != CURLM_OK) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "cloudauth: curl_multi_assign() failed: %s",
                          curl_multi_strerror(mc));

            ngx_cloudauth_fetch_conn_free(c, 0);
            ngx_cloudauth_fetch_fail_easy(easy, "cannot watch the request's "
                                          "socket");
            return 0;
        }
    }

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "cloudauth fetch: socket %d watched for%s%s", s,
                   (what & CURL_POLL_IN) ? " reading" : "",
                   (what & CURL_POLL_OUT) ? " writing" : "");

    /* curl expects level-triggered readiness */

    if ((what & CURL_POLL_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_cloudauth_fetch_fail_easy(easy, "cannot watch the request's "
                                          "socket for reading");
            return 0;
        }

    } else if (!(what & CURL_POLL_IN) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            ngx_cloudauth_fetch_fail_easy(easy, "cannot stop watching the "
                                          "request's socket for reading");
            return 0;
        }
    }

    if ((what & CURL_POLL_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_cloudauth_fetch_fail_easy(easy, "cannot watch the request's "
                                          "socket for writing");
            return 0;
        }

    } else if (!(what & CURL_POLL_OUT) && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            ngx_cloudauth_fetch_fail_easy(easy, "cannot stop watching the "
                                          "request's socket for writing");
            return 0;
        }
    }

    return 0;
}


static int
ngx_cloudauth_fetch_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    if (timeout_ms < 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "cloudauth fetch: timer deleted");

        if (ngx_cloudauth_timer.timer_set) {
            ngx_del_timer(&ngx_cloudauth_timer);
        }

        return 0;
    }

    if (timeout_ms == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                       "cloudauth fetch: timer due now: posted");

        /* never call back into curl from its own callback */
        if (ngx_cloudauth_timer.timer_set) {
            ngx_del_timer(&ngx_cloudauth_timer);
        }

        if (!ngx_cloudauth_timer.posted) {
            ngx_post_event(&ngx_cloudauth_timer, &ngx_posted_events);
        }

        return 0;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "cloudauth fetch: timer set: %l ms", timeout_ms);

    ngx_add_timer(&ngx_cloudauth_timer, (ngx_msec_t) timeout_ms);

    return 0;
}


static void
ngx_cloudauth_fetch_event_handler(ngx_event_t *ev)
{
    int                running;
    CURLMcode          mc;
    ngx_connection_t  *c;

    c = ev->data;

    if (ngx_cloudauth_multi == NULL) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "cloudauth fetch: socket %d %s", c->fd,
                   ev->write ? "writable" : "readable");

    /* c may be freed inside: curl can close the socket */

    mc = curl_multi_socket_action(ngx_cloudauth_multi, c->fd,
                                  ev->write ? CURL_CSELECT_OUT
                                            : CURL_CSELECT_IN,
                                  &running);

    ngx_cloudauth_fetch_check("curl_multi_socket_action", mc, ngx_cycle->log);

    ngx_cloudauth_fetch_done();
}


static void
ngx_cloudauth_fetch_timer_handler(ngx_event_t *ev)
{
    int        running;
    CURLMcode  mc;

    ngx_log_debug0(NGX_LOG_DEBUG_EVENT, ngx_cycle->log, 0,
                   "cloudauth fetch: timer fired");

    if (ngx_cloudauth_multi == NULL) {
        return;
    }

    mc = curl_multi_socket_action(ngx_cloudauth_multi, CURL_SOCKET_TIMEOUT, 0,
                                  &running);

    ngx_cloudauth_fetch_check("curl_multi_socket_action", mc, ngx_cycle->log);

    ngx_cloudauth_fetch_done();
}


static void
ngx_cloudauth_fetch_done(void)
{
    int                     pending;
    CURL                   *easy;
    CURLMsg                *msg;
    CURLcode                result;
    CURLMcode               mc;
    ngx_cloudauth_fetch_t  *f;

    /* a handler may start fetches, or replace the multi handle */

    while (ngx_cloudauth_multi) {

        msg = curl_multi_info_read(ngx_cloudauth_multi, &pending);
        if (msg == NULL) {
            break;
        }

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        easy = msg->easy_handle;
        result = msg->data.result;

        f = NULL;

        if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &f)
            != CURLE_OK
            || f == NULL)
        {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "cloudauth: a finished transfer without its fetch");
            continue;
        }

        /* msg is gone once the handle is removed */

        ngx_queue_remove(&f->queue);
        f->active = 0;

        mc = curl_multi_remove_handle(ngx_cloudauth_multi, easy);

        f->code = result;

        if (f->code == CURLE_OK) {
            if (curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &f->status)
                != CURLE_OK)
            {
                f->code = CURLE_BAD_FUNCTION_ARGUMENT;
                f->status = 0;
                ngx_cpystrn((u_char *) f->errbuf,
                            (u_char *) "no response status", CURL_ERROR_SIZE);
            }

        } else {
            f->status = 0;

            if (f->errbuf[0] == '\0') {
                ngx_cpystrn((u_char *) f->errbuf,
                            (u_char *) curl_easy_strerror(f->code),
                            CURL_ERROR_SIZE);
            }
        }

        f->duration = ngx_current_msec - f->start;

        ngx_cloudauth_fetch_ended(f, easy);

        ngx_cloudauth_fetch_check("curl_multi_remove_handle", mc, f->log);

        f->handler(f);
    }
}


/*
 * The end of a transfer in the debug log: whose, how it ended, and over
 * which connection, a new one or one that curl kept from an earlier
 * transfer (reused: no connect, no TLS handshake).
 */

static void
ngx_cloudauth_fetch_ended(ngx_cloudauth_fetch_t *f, CURL *easy)
{
#if (NGX_DEBUG)
    long  connects, port;

    connects = -1;
    port = 0;

    /* the socket is curl's again by now: its local port names it */

    (void) curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects);
    (void) curl_easy_getinfo(easy, CURLINFO_LOCAL_PORT, &port);

    ngx_log_debug6(NGX_LOG_DEBUG_EVENT, f->log, 0,
                   "cloudauth fetch: \"%V\" ended: HTTP %l, %M ms, "
                   "%s connection from local port %l%s",
                   ngx_cloudauth_fetch_name(f), f->status, f->duration,
                   connects == 0 ? "a reused" : "a new", port,
                   f->code == CURLE_OK ? "" : ", curl failed");
#endif
}
