
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * What the files of cloudauth_gcs_upload share: its configuration, the
 * state of one upload, and the functions they call in each other.
 */


#ifndef _NGX_CLOUDAUTH_GCS_UPLOAD_H_INCLUDED_
#define _NGX_CLOUDAUTH_GCS_UPLOAD_H_INCLUDED_


#include "ngx_cloudauth.h"
#include <jansson.h>


#define NGX_HTTP_CLOUDAUTH_QUANTUM        (256 * 1024)
#define NGX_HTTP_CLOUDAUTH_CHUNK          (8 * 1024 * 1024)
#define NGX_HTTP_CLOUDAUTH_RETRY_FIRST    1000
#define NGX_HTTP_CLOUDAUTH_RETRY_MAX      16000
#define NGX_HTTP_CLOUDAUTH_RETRY_WINDOW   60000
#define NGX_HTTP_CLOUDAUTH_FIELDS_MAX     (64 * 1024)
#define NGX_HTTP_CLOUDAUTH_NAME_MAX       1024
#define NGX_HTTP_CLOUDAUTH_FILENAME_MAX   255
#define NGX_HTTP_CLOUDAUTH_GUARD          3600000
#define NGX_HTTP_CLOUDAUTH_TOKEN_LEFT     120
#define NGX_HTTP_CLOUDAUTH_FILES_MAX      1000
#define NGX_HTTP_CLOUDAUTH_NAMES_MAX      4096
#define NGX_HTTP_CLOUDAUTH_SAID_MAX       256

#define NGX_HTTP_CLOUDAUTH_GCS_URL        "https://storage.googleapis.com"


typedef enum {
    NGX_HTTP_CLOUDAUTH_OP_NONE = 0,
    NGX_HTTP_CLOUDAUTH_OP_INIT,
    NGX_HTTP_CLOUDAUTH_OP_CHUNK,
    NGX_HTTP_CLOUDAUTH_OP_FINAL,
    NGX_HTTP_CLOUDAUTH_OP_QUERY
} ngx_http_cloudauth_op_e;


typedef enum {
    NGX_HTTP_CLOUDAUTH_PART_NONE = 0,
    NGX_HTTP_CLOUDAUTH_PART_FIELD,
    NGX_HTTP_CLOUDAUTH_PART_FILE,
    NGX_HTTP_CLOUDAUTH_PART_SKIP
} ngx_http_cloudauth_part_e;


/* a URL's origin as libcurl, which connects to it, reads it */

typedef struct {
    ngx_str_t                  scheme;
    ngx_str_t                  host;
    ngx_str_t                  port;        /* spelled out, "443" */
} ngx_http_cloudauth_origin_t;


typedef struct {
    ngx_cloudauth_cred_t         *cred;
    ngx_str_t                     bucket;
    ngx_http_complex_value_t     *object;   /* NULL: URI below location */
    ngx_str_t                     endpoint; /* without the trailing "/" */
    ngx_http_cloudauth_origin_t   origin;   /* session URIs stay there */
    ngx_flag_t                    overwrite;
    ngx_flag_t                    md5;      /* off: only for Content-MD5 */
    size_t                        chunk_size;
    off_t                         max_size; /* -1: client_max_body_size */
    ngx_array_t                  *cors;     /* ngx_str_t origins */
} ngx_http_cloudauth_upload_conf_t;


typedef struct {
    ngx_str_t                  name;
    ngx_str_t                  content_type;
    ngx_str_t                  session;     /* the session URI */
    u_char                     content_md5[16];

    off_t                      offset;      /* GCS holds [0, offset) */
    off_t                      received;    /* bytes taken from the body */
    off_t                      total;       /* declared, or -1 */
    ngx_uint_t                 nfields;     /* the form fields before it */
    ngx_msec_t                 start;       /* for the log line */
    ngx_uint_t                 retries;

    uint32_t                   crc32c;
    EVP_MD_CTX                *md5;        /* NULL: no MD5 computed */
    u_char                     md5_sum[16];

    unsigned                   open:1;
    unsigned                   eof:1;       /* every byte is in */
    unsigned                   has_md5:1;
    unsigned                   summed:1;
    unsigned                   token:1;
} ngx_http_cloudauth_object_t;


typedef struct {
    ngx_http_request_t                *request;
    ngx_http_cloudauth_upload_conf_t  *conf;

    ngx_cloudauth_ask_t                ask;
    ngx_cloudauth_fetch_t             *fetch;
    ngx_http_cloudauth_op_e            op;
    ngx_http_cloudauth_op_e            retry_op;
    ngx_event_t                        retry;
    ngx_event_t                        guard;
    ngx_event_t                        stall;
    off_t                              moved;       /* by the fetch */
    ngx_msec_t                         moved_at;
    ngx_msec_t                         fail_start;
    ngx_uint_t                         attempts;

    /* the answer's headers */
    ngx_str_t                          location;
    off_t                              range;       /* last byte, or -1 */

    /* the chunk buffer: object bytes [offset, offset + len) */
    u_char                            *buf;
    size_t                             len;
    size_t                             put_len;
    size_t                             put_sent;

    ngx_chain_t                       *in;          /* body not yet taken */
    off_t                              body_bytes;
    off_t                              max_size;

    /* multipart */
    ngx_cloudauth_mp_t                *mp;
    ngx_http_cloudauth_part_e          part;
    ngx_array_t                       *fields;      /* ngx_keyval_t */
    u_char                            *arena;       /* names and values */
    size_t                             arena_len;
    ngx_str_t                          pending_name;
    ngx_str_t                          pending_type;
    ngx_str_t                          pending_md5;

    ngx_http_cloudauth_object_t        obj;
    ngx_str_t                          filename;    /* $cloudauth_filename */
    ngx_str_t                          cors_origin;

    json_t                            *results;
    ngx_uint_t                         objects;
    ngx_uint_t                         files;       /* file parts seen */
    off_t                              bytes;       /* object bytes taken */
    ngx_str_t                          names;       /* stored, for the log */
    ngx_str_t                          status;      /* for the log */
    ngx_str_t                          reason;      /* of a 4xx */
    ngx_str_t                          said;        /* GCS's, for the log */

    unsigned                           multipart:1;
    unsigned                           pending:1;   /* a file part waits */
    unsigned                           input_done:1;
    unsigned                           finished:1;
    unsigned                           active:1;
    unsigned                           reauth:1;    /* a 401 was retried */
    unsigned                           requery:1;   /* query after a 401 */
} ngx_http_cloudauth_upload_t;


extern ngx_module_t  ngx_http_cloudauth_upload_module;

void ngx_http_cloudauth_upload_body(ngx_http_request_t *r);
void ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u);
ngx_int_t ngx_http_cloudauth_upload_open(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *filename,
    ngx_str_t *content_type, ngx_str_t *content_md5, off_t total);
void ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u);
void ngx_http_cloudauth_upload_token(ngx_cloudauth_ask_t *ask);
ngx_int_t ngx_http_cloudauth_upload_start(
    ngx_http_cloudauth_upload_t *u, ngx_http_cloudauth_op_e op);
void ngx_http_cloudauth_upload_stall(ngx_event_t *ev);
void ngx_http_cloudauth_upload_retry(ngx_event_t *ev);
void ngx_http_cloudauth_upload_guard(ngx_event_t *ev);
void ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len);
void ngx_http_cloudauth_upload_cancel(ngx_http_cloudauth_upload_t *u);
ngx_int_t ngx_http_cloudauth_upload_origin(ngx_pool_t *pool, u_char *url,
    ngx_http_cloudauth_origin_t *origin);
void ngx_http_cloudauth_upload_cleanup(void *data);
ngx_int_t ngx_http_cloudauth_upload_respond(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, json_t *body);
ngx_int_t ngx_http_cloudauth_upload_reject(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *reason, size_t len);
const char *ngx_http_cloudauth_upload_check_name(ngx_str_t *name);
void ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool,
    ngx_str_t *in, ngx_str_t *out);
ngx_int_t ngx_http_cloudauth_upload_utf8(u_char *p, size_t len);
u_char *ngx_http_cloudauth_upload_buf_alloc(size_t size,
    ngx_log_t *log);


#endif /* _NGX_CLOUDAUTH_GCS_UPLOAD_H_INCLUDED_ */
