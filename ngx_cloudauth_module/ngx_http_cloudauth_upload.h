
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload, the HTTP side: its configuration, the state of one
 * upload request, and what its files call in each other.  It drives the
 * GCS resumable-session client (ngx_cloudauth_gcs.h), one session per
 * object, from the request body.
 */


#ifndef _NGX_HTTP_CLOUDAUTH_UPLOAD_H_INCLUDED_
#define _NGX_HTTP_CLOUDAUTH_UPLOAD_H_INCLUDED_


#include "ngx_cloudauth.h"
#include "ngx_cloudauth_gcs.h"


#define NGX_HTTP_CLOUDAUTH_UPLOAD_CHUNK         (8 * 1024 * 1024)
#define NGX_HTTP_CLOUDAUTH_UPLOAD_FIELDS_MAX    (64 * 1024)
#define NGX_HTTP_CLOUDAUTH_UPLOAD_NFIELDS_MAX   64
#define NGX_HTTP_CLOUDAUTH_UPLOAD_NAME_MAX      1024
#define NGX_HTTP_CLOUDAUTH_UPLOAD_FILENAME_MAX  255
#define NGX_HTTP_CLOUDAUTH_UPLOAD_GUARD         3600000
#define NGX_HTTP_CLOUDAUTH_UPLOAD_FILES_MAX     1000
#define NGX_HTTP_CLOUDAUTH_UPLOAD_NAMES_MAX     4096


/* $cloudauth_upload_status */

typedef enum {
    NGX_HTTP_CLOUDAUTH_UPLOAD_REJECTED = 0,  /* refused before it began */
    NGX_HTTP_CLOUDAUTH_UPLOAD_UPLOADING,
    NGX_HTTP_CLOUDAUTH_UPLOAD_STORED,
    NGX_HTTP_CLOUDAUTH_UPLOAD_FAILED,
    NGX_HTTP_CLOUDAUTH_UPLOAD_ABORTED        /* the client went away */
} ngx_http_cloudauth_upload_status_e;


typedef enum {
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_NONE = 0,
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FIELD,
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE,
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_SKIP
} ngx_http_cloudauth_upload_part_e;


typedef struct {
    ngx_cloudauth_gcs_conf_t      gcs;      /* credential, bucket, endpoint */
    ngx_http_complex_value_t     *object;   /* NULL: URI below location */
    ngx_flag_t                    md5;      /* off: only for Content-MD5 */
    size_t                        chunk_size;
    off_t                         max_size; /* -1: client_max_body_size */
    ngx_array_t                  *cors;     /* ngx_str_t origins */
} ngx_http_cloudauth_upload_conf_t;


/* the object being stored: its bytes [offset, offset + len) are in buf */

typedef struct {
    ngx_cloudauth_gcs_t          *gcs;      /* its session */
    ngx_str_t                     name;
    off_t                         offset;   /* GCS holds [0, offset) */
    off_t                         received; /* bytes taken from the body */
    off_t                         total;    /* declared, or -1 */

    uint32_t                      crc32c;
    EVP_MD_CTX                   *md5;      /* NULL: no MD5 computed */
    u_char                        content_md5[16]; /* then the body's */

    unsigned                      open:1;
    unsigned                      started:1;
    unsigned                      eof:1;    /* every byte is in */
    unsigned                      has_md5:1;
} ngx_http_cloudauth_upload_object_t;


typedef struct {
    ngx_http_request_t                  *request;
    ngx_http_cloudauth_upload_conf_t    *conf;
    ngx_event_t                          guard;

    /* the chunk buffer */
    u_char                              *buf;
    size_t                               len;

    ngx_chain_t                         *in;        /* body not yet taken */
    off_t                                body_bytes;
    off_t                                max_size;

    /* multipart */
    ngx_cloudauth_mp_t                  *mp;
    ngx_http_cloudauth_upload_part_e     part;
    ngx_array_t                         *fields;    /* ngx_keyval_t */
    u_char                              *arena;     /* names and values */
    size_t                               arena_len;
    ngx_str_t                            pending_name;
    ngx_str_t                            pending_type;
    ngx_str_t                            pending_md5;

    ngx_http_cloudauth_upload_object_t   obj;
    ngx_str_t                            filename;  /* $cloudauth_filename */
    ngx_str_t                            cors_origin;

    json_t                              *results;
    ngx_uint_t                           objects;
    ngx_uint_t                           files;     /* file parts seen */
    off_t                                bytes;     /* object bytes taken */
    ngx_str_t                            names;     /* stored, for the log */
    ngx_http_cloudauth_upload_status_e   status;
    ngx_str_t                            reason;    /* of a 4xx */
    ngx_str_t                            said;      /* GCS's, for the log */

    unsigned                             multipart:1;
    unsigned                             pending:1; /* a file part waits */
    unsigned                             input_done:1;
    unsigned                             finished:1;
    unsigned                             active:1;
} ngx_http_cloudauth_upload_t;


/* ngx_http_cloudauth_upload_body.c: the body into objects */
ngx_int_t ngx_http_cloudauth_upload_init(ngx_http_cloudauth_upload_t *u);
void ngx_http_cloudauth_upload_begin(ngx_http_cloudauth_upload_t *u);
void ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u);
ngx_int_t ngx_http_cloudauth_upload_open(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *filename, ngx_str_t *content_type, ngx_str_t *content_md5,
    off_t total);
void ngx_http_cloudauth_upload_cleanup(void *data);

/* ngx_http_cloudauth_upload_cors.c: CORS, cross-site requests, answers */
ngx_table_elt_t *ngx_http_cloudauth_upload_header_in(ngx_http_request_t *r,
    const char *name, size_t len);
ngx_str_t *ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
ngx_int_t ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin);
ngx_int_t ngx_http_cloudauth_upload_csrf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
ngx_int_t ngx_http_cloudauth_upload_respond(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, json_t *body);
ngx_int_t ngx_http_cloudauth_upload_reject(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *reason, size_t len);

/* ngx_http_cloudauth_upload_name.c: object names and file names, pure */
const char *ngx_http_cloudauth_upload_check_name(ngx_str_t *name);
void ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool, ngx_str_t *in,
    ngx_str_t *out);
ngx_uint_t ngx_http_cloudauth_upload_token_char(u_char c);


#endif /* _NGX_HTTP_CLOUDAUTH_UPLOAD_H_INCLUDED_ */
