
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The fetch client: one libcurl multi handle per worker, driven by nginx's
 * event loop.  Each socket curl wants watched gets an nginx connection
 * wrapper whose read and write events are registered level-triggered; curl's
 * single timeout becomes one nginx timer.  The sockets are curl's: they are
 * opened and closed through our callbacks, so a wrapper never outlives its
 * descriptor and nginx never closes one.
 */


#include "ngx_cloudauth.h"


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
static void ngx_cloudauth_fetch_conn_free(ngx_connection_t *c,
    ngx_uint_t closing);
static size_t ngx_cloudauth_fetch_body_cb(char *ptr, size_t size,
    size_t nmemb, void *userdata);
static size_t ngx_cloudauth_fetch_header_cb(char *ptr, size_t size,
    size_t nmemb, void *userdata);
static ngx_cloudauth_fetch_t *ngx_cloudauth_fetch_create(
    ngx_cloudauth_request_t *req, ngx_cloudauth_fetch_handler_pt handler,
    void *data, ngx_log_t *log);
static ngx_int_t ngx_cloudauth_fetch_add(ngx_cloudauth_fetch_t *f);
static size_t ngx_cloudauth_fetch_read_cb(char *buf, size_t size,
    size_t nitems, void *userdata);
static int ngx_cloudauth_fetch_seek_cb(void *userdata, curl_off_t offset,
    int origin);


static CURLM             *ngx_cloudauth_multi;
static ngx_event_t        ngx_cloudauth_timer;
static ngx_connection_t   ngx_cloudauth_timer_conn;
static ngx_queue_t        ngx_cloudauth_conns;     /* socket wrappers */
static ngx_queue_t        ngx_cloudauth_fetches;   /* in flight */


ngx_int_t
ngx_cloudauth_fetch_init(ngx_cycle_t *cycle)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "cloudauth: curl_global_init() failed");
        return NGX_ERROR;
    }

    ngx_cloudauth_multi = curl_multi_init();
    if (ngx_cloudauth_multi == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "cloudauth: curl_multi_init() failed");
        return NGX_ERROR;
    }

    curl_multi_setopt(ngx_cloudauth_multi, CURLMOPT_SOCKETFUNCTION,
                      ngx_cloudauth_fetch_socket_cb);
    curl_multi_setopt(ngx_cloudauth_multi, CURLMOPT_TIMERFUNCTION,
                      ngx_cloudauth_fetch_timer_cb);
    curl_multi_setopt(ngx_cloudauth_multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      8L);

    ngx_queue_init(&ngx_cloudauth_conns);
    ngx_queue_init(&ngx_cloudauth_fetches);

    /* timer events log the fd of ev->data in debug builds */
    ngx_cloudauth_timer_conn.fd = (ngx_socket_t) -1;
    ngx_cloudauth_timer.data = &ngx_cloudauth_timer_conn;
    ngx_cloudauth_timer.handler = ngx_cloudauth_fetch_timer_handler;
    ngx_cloudauth_timer.log = cycle->log;
    ngx_cloudauth_timer.cancelable = 1;

    return NGX_OK;
}


void
ngx_cloudauth_fetch_exit(ngx_cycle_t *cycle)
{
    ngx_queue_t            *q;
    ngx_cloudauth_fetch_t  *f;

    if (ngx_cloudauth_multi == NULL) {
        return;
    }

    while (!ngx_queue_empty(&ngx_cloudauth_fetches)) {
        q = ngx_queue_head(&ngx_cloudauth_fetches);
        f = ngx_queue_data(q, ngx_cloudauth_fetch_t, queue);
        ngx_cloudauth_fetch_free(f);
    }

    curl_multi_cleanup(ngx_cloudauth_multi);
    ngx_cloudauth_multi = NULL;

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

    curl_global_cleanup();
}


static ngx_uint_t
ngx_cloudauth_is_plain_http_allowed(ngx_str_t *url)
{
    /* checked at configuration time; here only http vs https */
    return (url->len > 7 && ngx_strncasecmp(url->data, (u_char *) "http://", 7)
                            == 0);
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
 * whose response header lines go to header().  A read() that returns
 * NGX_AGAIN pauses the transfer until ngx_cloudauth_fetch_unpause().
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
    ngx_cloudauth_fetch_t      *f;
    ngx_cloudauth_main_conf_t  *cmcf;

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
        curl_easy_setopt(f->easy, CURLOPT_CUSTOMREQUEST, s);
        ngx_free(s);
    }

    if (length >= 0) {
        /* CURLOPT_UPLOAD makes it a PUT unless a custom method is set */
        curl_easy_setopt(f->easy, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(f->easy, CURLOPT_INFILESIZE_LARGE,
                         (curl_off_t) length);
        curl_easy_setopt(f->easy, CURLOPT_READFUNCTION,
                         ngx_cloudauth_fetch_read_cb);
        curl_easy_setopt(f->easy, CURLOPT_READDATA, f);
        curl_easy_setopt(f->easy, CURLOPT_SEEKFUNCTION,
                         ngx_cloudauth_fetch_seek_cb);
        curl_easy_setopt(f->easy, CURLOPT_SEEKDATA, f);

        cmcf = ngx_cloudauth_main_conf();
        stall = (long) (cmcf->timeout + 999) / 1000;

        curl_easy_setopt(f->easy, CURLOPT_TIMEOUT_MS, 0L);
        curl_easy_setopt(f->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(f->easy, CURLOPT_LOW_SPEED_TIME, stall);
    }

    if (ngx_cloudauth_fetch_add(f) != NGX_OK) {
        goto failed;
    }

    return f;

failed:

    ngx_cloudauth_fetch_free(f);

    return NULL;
}


void
ngx_cloudauth_fetch_unpause(ngx_cloudauth_fetch_t *f)
{
    if (f->active) {
        curl_easy_pause(f->easy, CURLPAUSE_CONT);
    }
}


static size_t
ngx_cloudauth_fetch_read_cb(char *buf, size_t size, size_t nitems,
    void *userdata)
{
    ngx_cloudauth_fetch_t *f = userdata;

    ssize_t  n;

    n = f->read(f, (u_char *) buf, size * nitems);

    if (n == NGX_AGAIN) {
        return CURL_READFUNC_PAUSE;
    }

    if (n < 0) {
        return CURL_READFUNC_ABORT;
    }

    return (size_t) n;
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
    ngx_str_t                  *h;
    ngx_uint_t                  i;
    struct curl_slist          *l;
    ngx_cloudauth_fetch_t      *f;
    ngx_cloudauth_main_conf_t  *cmcf;

    if (ngx_cloudauth_multi == NULL) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "cloudauth: no fetch client");
        return NULL;
    }

    cmcf = ngx_cloudauth_main_conf();

    f = ngx_calloc(sizeof(ngx_cloudauth_fetch_t), log);
    if (f == NULL) {
        return NULL;
    }

    f->log = log;
    f->handler = handler;
    f->data = data;
    f->body_max = NGX_CLOUDAUTH_MAX_RESPONSE;

    f->easy = curl_easy_init();
    if (f->easy == NULL) {
        goto failed;
    }

    /* the strings are copied by curl (CURLOPT_COPYPOSTFIELDS too) */

    s = ngx_alloc(req->url.len + 1, log);
    if (s == NULL) {
        goto failed;
    }

    ngx_cpystrn((u_char *) s, req->url.data, req->url.len + 1);
    curl_easy_setopt(f->easy, CURLOPT_URL, s);
    ngx_free(s);

#if (LIBCURL_VERSION_NUM >= 0x075500)
    curl_easy_setopt(f->easy, CURLOPT_PROTOCOLS_STR,
                     ngx_cloudauth_is_plain_http_allowed(&req->url)
                     ? "http" : "https");
#else
    curl_easy_setopt(f->easy, CURLOPT_PROTOCOLS,
                     ngx_cloudauth_is_plain_http_allowed(&req->url)
                     ? CURLPROTO_HTTP : CURLPROTO_HTTPS);
#endif

    curl_easy_setopt(f->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(f->easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(f->easy, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(f->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(f->easy, CURLOPT_TIMEOUT_MS, (long) cmcf->timeout);
    curl_easy_setopt(f->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long) cmcf->timeout);
    curl_easy_setopt(f->easy, CURLOPT_USERAGENT, "ngx_cloudauth/0.1");
    curl_easy_setopt(f->easy, CURLOPT_ERRORBUFFER, f->errbuf);
    curl_easy_setopt(f->easy, CURLOPT_PRIVATE, f);
    curl_easy_setopt(f->easy, CURLOPT_WRITEFUNCTION,
                     ngx_cloudauth_fetch_body_cb);
    curl_easy_setopt(f->easy, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(f->easy, CURLOPT_HEADERFUNCTION,
                     ngx_cloudauth_fetch_header_cb);
    curl_easy_setopt(f->easy, CURLOPT_HEADERDATA, f);
    curl_easy_setopt(f->easy, CURLOPT_OPENSOCKETFUNCTION,
                     ngx_cloudauth_fetch_open_cb);
    curl_easy_setopt(f->easy, CURLOPT_CLOSESOCKETFUNCTION,
                     ngx_cloudauth_fetch_close_cb);

    if (cmcf->trusted_certificate.len) {
        curl_easy_setopt(f->easy, CURLOPT_CAINFO,
                         cmcf->trusted_certificate.data);
    }

    if (req->body.len || (req->method.len == 4
                          && ngx_strncmp(req->method.data, "POST", 4) == 0))
    {
        curl_easy_setopt(f->easy, CURLOPT_POSTFIELDSIZE,
                         (long) req->body.len);
        curl_easy_setopt(f->easy, CURLOPT_COPYPOSTFIELDS,
                         req->body.len ? (char *) req->body.data : "");
    }

    if (req->userpwd.len) {
        s = ngx_alloc(req->userpwd.len + 1, log);
        if (s == NULL) {
            goto failed;
        }

        ngx_cpystrn((u_char *) s, req->userpwd.data, req->userpwd.len + 1);
        curl_easy_setopt(f->easy, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(f->easy, CURLOPT_USERPWD, s);
        ngx_explicit_memzero(s, req->userpwd.len);
        ngx_free(s);
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

    curl_easy_setopt(f->easy, CURLOPT_HTTPHEADER, f->headers);

    return f;

failed:

    ngx_cloudauth_fetch_free(f);

    return NULL;
}


static ngx_int_t
ngx_cloudauth_fetch_add(ngx_cloudauth_fetch_t *f)
{
    CURLMcode  mc;

    f->start = ngx_current_msec;

    mc = curl_multi_add_handle(ngx_cloudauth_multi, f->easy);
    if (mc != CURLM_OK) {
        ngx_log_error(NGX_LOG_ERR, f->log, 0,
                      "cloudauth: curl_multi_add_handle() failed: %s",
                      curl_multi_strerror(mc));
        return NGX_ERROR;
    }

    f->active = 1;
    ngx_queue_insert_tail(&ngx_cloudauth_fetches, &f->queue);

    return NGX_OK;
}


void
ngx_cloudauth_fetch_free(ngx_cloudauth_fetch_t *f)
{
    if (f->active) {
        curl_multi_remove_handle(ngx_cloudauth_multi, f->easy);
        ngx_queue_remove(&f->queue);
        f->active = 0;
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
    return socket(address->family, address->socktype, address->protocol);
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

    return close(item);
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


static int
ngx_cloudauth_fetch_socket_cb(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp)
{
    ngx_connection_t  *c = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (c) {
            curl_multi_assign(ngx_cloudauth_multi, s, NULL);
            ngx_cloudauth_fetch_conn_free(c, 0);
        }

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, ngx_cycle->log);
        if (c == NULL) {
            return -1;
        }

        c->read->handler = ngx_cloudauth_fetch_event_handler;
        c->write->handler = ngx_cloudauth_fetch_event_handler;
        c->read->log = ngx_cycle->log;
        c->write->log = ngx_cycle->log;

        ngx_queue_insert_tail(&ngx_cloudauth_conns, &c->queue);
        curl_multi_assign(ngx_cloudauth_multi, s, c);
    }

    /* curl expects level-triggered readiness */

    if ((what & CURL_POLL_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(what & CURL_POLL_IN) && c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if ((what & CURL_POLL_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return -1;
        }

    } else if (!(what & CURL_POLL_OUT) && c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    return 0;
}


static int
ngx_cloudauth_fetch_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    if (timeout_ms < 0) {
        if (ngx_cloudauth_timer.timer_set) {
            ngx_del_timer(&ngx_cloudauth_timer);
        }

        return 0;
    }

    if (timeout_ms == 0) {
        /* never call back into curl from its own callback */
        if (ngx_cloudauth_timer.timer_set) {
            ngx_del_timer(&ngx_cloudauth_timer);
        }

        if (!ngx_cloudauth_timer.posted) {
            ngx_post_event(&ngx_cloudauth_timer, &ngx_posted_events);
        }

        return 0;
    }

    ngx_add_timer(&ngx_cloudauth_timer, (ngx_msec_t) timeout_ms);

    return 0;
}


static void
ngx_cloudauth_fetch_event_handler(ngx_event_t *ev)
{
    int                running;
    ngx_connection_t  *c;

    c = ev->data;

    /* c may be freed inside: curl can close the socket */

    curl_multi_socket_action(ngx_cloudauth_multi, c->fd,
                             ev->write ? CURL_CSELECT_OUT : CURL_CSELECT_IN,
                             &running);

    ngx_cloudauth_fetch_done();
}


static void
ngx_cloudauth_fetch_timer_handler(ngx_event_t *ev)
{
    int  running;

    if (ngx_cloudauth_multi == NULL) {
        return;
    }

    curl_multi_socket_action(ngx_cloudauth_multi, CURL_SOCKET_TIMEOUT, 0,
                             &running);

    ngx_cloudauth_fetch_done();
}


static void
ngx_cloudauth_fetch_done(void)
{
    int                     pending;
    CURLMsg                *msg;
    ngx_cloudauth_fetch_t  *f;

    for ( ;; ) {
        msg = curl_multi_info_read(ngx_cloudauth_multi, &pending);
        if (msg == NULL) {
            break;
        }

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        f = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &f);

        if (f == NULL) {
            continue;
        }

        f->code = msg->data.result;

        curl_multi_remove_handle(ngx_cloudauth_multi, f->easy);
        ngx_queue_remove(&f->queue);
        f->active = 0;

        if (f->code == CURLE_OK) {
            curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &f->status);

        } else {
            f->status = 0;

            if (f->errbuf[0] == '\0') {
                ngx_cpystrn((u_char *) f->errbuf,
                            (u_char *) curl_easy_strerror(f->code),
                            CURL_ERROR_SIZE);
            }
        }

        f->duration = ngx_current_msec - f->start;

        f->handler(f);
    }
}
