
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * ngx_cloudauth_fetch.c: the fetch client, libcurl's multi interface on
 * nginx's event loop.  For the engine (token requests), the module (a
 * worker's start and exit) and the upload's GCS client (streaming
 * requests); the credential kinds never see a fetch, only its answer
 * (ngx_cloudauth_answer_t).
 */


#ifndef _NGX_CLOUDAUTH_FETCH_H_INCLUDED_
#define _NGX_CLOUDAUTH_FETCH_H_INCLUDED_


#include "ngx_cloudauth.h"
#include <curl/curl.h>


typedef struct ngx_cloudauth_fetch_s  ngx_cloudauth_fetch_t;

typedef void (*ngx_cloudauth_fetch_handler_pt)(ngx_cloudauth_fetch_t *f);

/* streaming fetches: the request body, and each response header line */
typedef ssize_t (*ngx_cloudauth_fetch_read_pt)(ngx_cloudauth_fetch_t *f,
    u_char *buf, size_t size);     /* bytes, or NGX_ERROR */
typedef ngx_int_t (*ngx_cloudauth_fetch_rewind_pt)(ngx_cloudauth_fetch_t *f);
typedef void (*ngx_cloudauth_fetch_header_pt)(ngx_cloudauth_fetch_t *f,
    u_char *line, size_t len);     /* without CRLF; status lines too */

struct ngx_cloudauth_fetch_s {
    CURL                          *easy;
    struct curl_slist             *headers;
    ngx_log_t                     *log;
    ngx_str_t                      name;        /* the request's, for logs */
    ngx_queue_t                    queue;

    ngx_cloudauth_fetch_handler_pt handler;
    void                          *data;

    long                           status;      /* 0: transport error */
    CURLcode                       code;
    char                           errbuf[CURL_ERROR_SIZE];

    u_char                        *body;
    size_t                         body_len;
    size_t                         body_max;

    time_t                         date;        /* Date header, or 0 */
    time_t                         retry_after; /* seconds, or 0 */
    ngx_msec_t                     start;
    ngx_msec_t                     duration;

    ngx_cloudauth_fetch_read_pt    read;        /* streaming only */
    ngx_cloudauth_fetch_rewind_pt  rewind;
    ngx_cloudauth_fetch_header_pt  header;

    unsigned                       truncated:1;
    unsigned                       active:1;
};


ngx_int_t ngx_cloudauth_fetch_init(ngx_cycle_t *cycle, ngx_msec_t timeout,
    ngx_str_t *cainfo);
void ngx_cloudauth_fetch_exit(ngx_cycle_t *cycle);
ngx_cloudauth_fetch_t *ngx_cloudauth_fetch_start(ngx_cloudauth_request_t *req,
    ngx_cloudauth_fetch_handler_pt handler, void *data, ngx_log_t *log);
void ngx_cloudauth_fetch_free(ngx_cloudauth_fetch_t *f);
ngx_cloudauth_fetch_t *ngx_cloudauth_fetch_stream(
    ngx_cloudauth_request_t *req, off_t length,
    ngx_cloudauth_fetch_read_pt read, ngx_cloudauth_fetch_rewind_pt rewind,
    ngx_cloudauth_fetch_header_pt header,
    ngx_cloudauth_fetch_handler_pt handler, void *data, ngx_log_t *log);


#endif /* _NGX_CLOUDAUTH_FETCH_H_INCLUDED_ */
