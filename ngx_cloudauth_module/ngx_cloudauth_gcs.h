
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * A client of GCS's resumable uploads (the JSON API): start a session,
 * resume one by its URI (checked to be on the endpoint's origin), send
 * bytes at an offset, finish with the size and the hashes, cancel or
 * terminate.  Transient failures are retried with back-off and a
 * status query; a lapsed token is replaced once per step forward.  It
 * reports through three handlers and knows nothing of the HTTP request
 * that drives it: a single PUT or POST, or the requests of a resumable
 * upload.
 */


#ifndef _NGX_CLOUDAUTH_GCS_H_INCLUDED_
#define _NGX_CLOUDAUTH_GCS_H_INCLUDED_


#include "ngx_cloudauth.h"
#include "ngx_cloudauth_fetch.h"
#include <jansson.h>


#define NGX_CLOUDAUTH_GCS_URL           "https://storage.googleapis.com"
#define NGX_CLOUDAUTH_GCS_QUANTUM       (256 * 1024)
#define NGX_CLOUDAUTH_GCS_RETRY_FIRST   1000
#define NGX_CLOUDAUTH_GCS_RETRY_MAX     16000
#define NGX_CLOUDAUTH_GCS_RETRY_WINDOW  60000
#define NGX_CLOUDAUTH_GCS_TOKEN_LEFT    120
#define NGX_CLOUDAUTH_GCS_SAID_MAX      256


typedef struct ngx_cloudauth_gcs_s  ngx_cloudauth_gcs_t;


/* a URL's origin as libcurl, which connects to it, reads it */

typedef struct {
    ngx_str_t                      scheme;
    ngx_str_t                      host;
    ngx_str_t                      port;        /* spelled out, "443" */
} ngx_cloudauth_gcs_origin_t;


/* where objects go, from the configuration; shared by sessions */

typedef struct {
    ngx_cloudauth_cred_t          *cred;
    ngx_str_t                      subject;
    ngx_str_t                      bucket;
    ngx_str_t                      endpoint;    /* without the final "/" */
    ngx_cloudauth_gcs_origin_t     origin;      /* session URIs stay there */
    ngx_flag_t                     overwrite;
} ngx_cloudauth_gcs_conf_t;


/* the object a session makes */

typedef struct {
    ngx_str_t                      name;
    ngx_str_t                      shown;       /* the name, for the log */
    ngx_str_t                      content_type;
    ngx_array_t                   *metadata;    /* ngx_keyval_t, or NULL */
    ngx_uint_t                     nmetadata;   /* the first n of them */
    off_t                          size;        /* declared, or -1 */
} ngx_cloudauth_gcs_object_t;


/* sent with the final bytes; GCS refuses the object if its own differ */

typedef struct {
    uint32_t                       crc32c;
    u_char                         md5[16];
    unsigned                       has_md5:1;   /* else GCS's own is kept */
    unsigned                       no_crc32c:1; /* not every byte seen */
} ngx_cloudauth_gcs_hash_t;


/* what GCS answered about an object, as strings (pure parsers) */

typedef struct {
    ngx_str_t                      name;
    ngx_str_t                      bucket;
    ngx_str_t                      content_type;
    ngx_str_t                      crc32c;
    ngx_str_t                      md5;         /* empty: none */
    ngx_str_t                      generation;
    off_t                          size;        /* -1: not a number */
} ngx_cloudauth_gcs_stored_t;


/*
 * The handlers.  Each is the last thing the client does in an event: the
 * session may be gone when it returns.  progress: GCS holds [0, offset)
 * (after start, resume, send, and a query after a failure; the caller
 * sends again from there).  done: the object is stored (the handler owns
 * the reference to its summary), or after terminate() the session is
 * cancelled (object NULL).  failed: why (the kind of failure a caller
 * may answer otherwise), status the HTTP status to answer with, reason
 * ours for the client, said GCS's for the log.
 */

typedef enum {
    NGX_CLOUDAUTH_GCS_FAILED = 0,   /* GCS, or the way there, failed */
    NGX_CLOUDAUTH_GCS_GONE,         /* the session is no more: 404, 410, 499 */
    NGX_CLOUDAUTH_GCS_CONFLICT,     /* GCS holds others' bytes than ours */
    NGX_CLOUDAUTH_GCS_COMPLETE      /* another request finished the object */
} ngx_cloudauth_gcs_error_e;

typedef void (*ngx_cloudauth_gcs_progress_pt)(ngx_cloudauth_gcs_t *s,
    off_t offset);
typedef void (*ngx_cloudauth_gcs_done_pt)(ngx_cloudauth_gcs_t *s,
    json_t *object);
typedef void (*ngx_cloudauth_gcs_failed_pt)(ngx_cloudauth_gcs_t *s,
    ngx_cloudauth_gcs_error_e why, ngx_uint_t status, ngx_str_t *reason,
    ngx_str_t *said);


typedef struct {
    ngx_cloudauth_gcs_progress_pt  progress;
    ngx_cloudauth_gcs_done_pt      done;
    ngx_cloudauth_gcs_failed_pt    failed;
    void                          *data;
} ngx_cloudauth_gcs_handlers_t;


typedef enum {
    NGX_CLOUDAUTH_GCS_NONE = 0,
    NGX_CLOUDAUTH_GCS_START,        /* POST: open the session */
    NGX_CLOUDAUTH_GCS_CHUNK,        /* PUT bytes X-Y, total unknown */
    NGX_CLOUDAUTH_GCS_FINAL,        /* PUT bytes X-Y/TOTAL, X-Goog-Hash */
    NGX_CLOUDAUTH_GCS_QUERY,        /* PUT, no bytes: what GCS holds */
    NGX_CLOUDAUTH_GCS_DELETE        /* the session is cancelled */
} ngx_cloudauth_gcs_req_e;


struct ngx_cloudauth_gcs_s {
    ngx_cloudauth_gcs_conf_t      *conf;
    ngx_cloudauth_gcs_object_t     object;
    ngx_cloudauth_gcs_handlers_t   handlers;
    ngx_pool_t                    *pool;        /* the URI, GCS's words */
    ngx_log_t                     *log;

    ngx_str_t                      uri;         /* the session; a secret */
    off_t                          offset;      /* GCS holds [0, offset) */

    /* what the caller asked for, done again after a failure */
    ngx_cloudauth_gcs_req_e        op;
    u_char                        *data;        /* [offset, offset + len) */
    size_t                         len;
    size_t                         sent;
    ngx_cloudauth_gcs_hash_t       hash;

    /* the request on its way, or due after the token or a back-off */
    ngx_cloudauth_gcs_req_e        req;
    ngx_cloudauth_fetch_t         *fetch;
    ngx_cloudauth_ask_t            ask;
    ngx_event_t                    retry;
    ngx_event_t                    stall;
    off_t                          moved;       /* by the fetch */
    ngx_msec_t                     moved_at;
    ngx_msec_t                     asked_at;    /* the request began */
    ngx_msec_t                     fail_start;
    ngx_uint_t                     attempts;    /* since the last step */
    ngx_uint_t                     retries;     /* in all, for the log */
    ngx_msec_t                     start;

    /* the answer's headers */
    ngx_str_t                      location;
    off_t                          range;       /* last byte, -1, -2 bad */

    ngx_str_t                      said;        /* GCS's, for the log */

    unsigned                       token:1;
    unsigned                       reauth:1;    /* a 401 was retried */
    ngx_cloudauth_gcs_error_e      why;         /* of a failure */
    unsigned                       probing:1;   /* a 400: others' bytes? */
};


/* ngx_cloudauth_gcs.c: the session */
ngx_cloudauth_gcs_t *ngx_cloudauth_gcs_create(ngx_pool_t *pool,
    ngx_log_t *log, ngx_cloudauth_gcs_conf_t *conf,
    ngx_cloudauth_gcs_object_t *object, ngx_cloudauth_gcs_handlers_t *h);
ngx_int_t ngx_cloudauth_gcs_start(ngx_cloudauth_gcs_t *s);
ngx_int_t ngx_cloudauth_gcs_attach(ngx_cloudauth_gcs_t *s, ngx_str_t *uri);
ngx_int_t ngx_cloudauth_gcs_query(ngx_cloudauth_gcs_t *s);
ngx_int_t ngx_cloudauth_gcs_terminate(ngx_cloudauth_gcs_t *s);
ngx_int_t ngx_cloudauth_gcs_send(ngx_cloudauth_gcs_t *s, off_t offset,
    u_char *data, size_t len);
ngx_int_t ngx_cloudauth_gcs_finish(ngx_cloudauth_gcs_t *s, off_t offset,
    u_char *data, size_t len, ngx_cloudauth_gcs_hash_t *hash);
ngx_uint_t ngx_cloudauth_gcs_busy(ngx_cloudauth_gcs_t *s);
void ngx_cloudauth_gcs_abort(ngx_cloudauth_gcs_t *s);
void ngx_cloudauth_gcs_cancel(ngx_cloudauth_gcs_t *s);

/* ngx_cloudauth_gcs_parse.c: GCS's answers, pure */
ngx_int_t ngx_cloudauth_gcs_parse_range(u_char *p, size_t len, off_t *last);
ngx_int_t ngx_cloudauth_gcs_parse_origin(ngx_pool_t *pool, u_char *url,
    ngx_cloudauth_gcs_origin_t *origin);
ngx_int_t ngx_cloudauth_gcs_parse_object(ngx_pool_t *pool, u_char *body,
    size_t len, ngx_cloudauth_gcs_stored_t *stored);
ngx_int_t ngx_cloudauth_gcs_parse_error(ngx_pool_t *pool, u_char *body,
    size_t len, ngx_str_t *message);
ngx_uint_t ngx_cloudauth_gcs_same_origin(ngx_cloudauth_gcs_origin_t *a,
    ngx_cloudauth_gcs_origin_t *b);
void ngx_cloudauth_gcs_crc32c_base64(uint32_t crc, ngx_str_t *dst);
u_char *ngx_cloudauth_gcs_escape_path(u_char *dst, ngx_str_t *src);
size_t ngx_cloudauth_gcs_printable(u_char *dst, size_t size, u_char *src,
    size_t len);
ngx_int_t ngx_cloudauth_gcs_shown(ngx_pool_t *pool, ngx_str_t *src,
    ngx_str_t *dst);


#endif /* _NGX_CLOUDAUTH_GCS_H_INCLUDED_ */
