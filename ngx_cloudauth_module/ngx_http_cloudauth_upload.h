
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
#include "ngx_cloudauth_multipart.h"
#include "ngx_cloudauth_gcs.h"


#define NGX_HTTP_CLOUDAUTH_UPLOAD_CHUNK         (8 * 1024 * 1024)
#define NGX_HTTP_CLOUDAUTH_UPLOAD_KEEP          (2 * 1024 * 1024)
#define NGX_HTTP_CLOUDAUTH_UPLOAD_FIELDS_MAX    (64 * 1024)
#define NGX_HTTP_CLOUDAUTH_UPLOAD_NFIELDS_MAX   64
#define NGX_HTTP_CLOUDAUTH_UPLOAD_NAME_MAX      1024
#define NGX_HTTP_CLOUDAUTH_UPLOAD_FILENAME_MAX  255
#define NGX_HTTP_CLOUDAUTH_UPLOAD_GUARD         3600000
#define NGX_HTTP_CLOUDAUTH_UPLOAD_FILES_MAX     1000
#define NGX_HTTP_CLOUDAUTH_UPLOAD_NAMES_MAX     4096

/* resumable uploads */
#define NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN       32
#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_PLAIN_MAX  4096
#define NGX_HTTP_CLOUDAUTH_UPLOAD_ID_MAX        5600
#define NGX_HTTP_CLOUDAUTH_UPLOAD_METADATA_MAX  1024
#define NGX_HTTP_CLOUDAUTH_UPLOAD_EXPIRES       (7 * 24 * 60 * 60)


/* $cloudauth_upload_status */

typedef enum {
    NGX_HTTP_CLOUDAUTH_UPLOAD_REJECTED = 0,  /* refused before it began */
    NGX_HTTP_CLOUDAUTH_UPLOAD_UPLOADING,
    NGX_HTTP_CLOUDAUTH_UPLOAD_STORED,
    NGX_HTTP_CLOUDAUTH_UPLOAD_FAILED,
    NGX_HTTP_CLOUDAUTH_UPLOAD_ABORTED,       /* the client went away */
    NGX_HTTP_CLOUDAUTH_UPLOAD_PARTIAL        /* a resumable upload's part */
} ngx_http_cloudauth_upload_status_e;


typedef enum {
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_NONE = 0,
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FIELD,
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_FILE,
    NGX_HTTP_CLOUDAUTH_UPLOAD_PART_SKIP
} ngx_http_cloudauth_upload_part_e;


/* an upload's ID, sealed for the client (ngx_http_cloudauth_upload_id.c) */

typedef struct {
    ngx_str_t                     uri;      /* the GCS session */
    ngx_str_t                     bucket;
    ngx_str_t                     name;     /* the object */
    ngx_str_t                     metadata; /* Upload-Metadata as given */
    off_t                         length;   /* -1: deferred */
    time_t                        created;
} ngx_http_cloudauth_upload_id_t;


typedef struct {
    u_char                        key[NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN];
    ngx_str_t                     key_file; /* empty: the zone's secret */

    /* the buffer an upload at the defaults left, for the next (a worker's) */
    u_char                       *spare;
    size_t                        spare_size;
} ngx_http_cloudauth_upload_main_conf_t;


/*
 * What every answer of a location carries besides its own, made when the
 * configuration is read from the front ends the location has: the methods
 * it takes (Allow, the preflight) and the front ends' own headers.  The
 * reply file calls nothing above it: this is how it learns of them.
 */

typedef ngx_int_t (*ngx_http_cloudauth_upload_headers_pt)(
    ngx_http_request_t *r, ngx_str_t *origin, ngx_uint_t status);

typedef struct {
    ngx_str_t                              allow;
    ngx_http_cloudauth_upload_headers_pt   headers;   /* NULL: none */
} ngx_http_cloudauth_upload_reply_t;


typedef struct {
    ngx_cloudauth_gcs_conf_t      gcs;      /* credential, bucket, endpoint */
    ngx_http_complex_value_t     *object;   /* NULL: URI below location */
    ngx_flag_t                    md5;      /* off: only for Content-MD5 */
    size_t                        chunk_size;
    ngx_flag_t                    chunks;   /* chunk_size= given: chunks */
    off_t                         max_size; /* -1: client_max_body_size */
    off_t                         max;      /* the limit of it all; 0: none */
    ngx_array_t                  *cors;     /* ngx_str_t origins */
    ngx_flag_t                    resumable;
    time_t                        expires;  /* of a resumable upload */
    ngx_str_t                     aad;      /* the IDs' additional data */
    ngx_http_cloudauth_upload_reply_t  reply;
} ngx_http_cloudauth_upload_conf_t;


/* the object being stored: its bytes [offset, offset + len) are in buf */

typedef struct {
    ngx_cloudauth_gcs_t          *gcs;      /* its session */
    ngx_str_t                     name;
    ngx_str_t                     shown;    /* the name, for the log */
    off_t                         offset;   /* GCS holds [0, offset) */
    off_t                         base;     /* where the body's bytes go */
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


typedef struct ngx_http_cloudauth_upload_s  ngx_http_cloudauth_upload_t;


/*
 * How an upload ends, set by its front end (as nginx's proxy sets an
 * upstream's create_request, process_header, finalize_request).
 *
 * answer: the upload's bytes are in.  object: what GCS stored (a form's:
 * the list of objects), or NULL when a part of a resumable upload is in
 * GCS (u->obj.offset: what GCS holds), or after ask(TERMINATE), the
 * session is gone.  It answers the client and finalizes the request.
 *
 * check: GCS's first word on a session the client came back to: it holds
 * [0, held), or the object is complete (object, held its size; the hook
 * does not own it).  NGX_OK: go on; else the HTTP status to fail with,
 * the reason in u->reason.  NULL: no check.
 *
 * refuse: the answer to a failure (NULL: the JSON one of the reply file).
 *
 * started: a new session of a resumable upload is there, u->id.uri its
 * handle; the front end may tell the client the upload's URL now, before
 * the final answer (an interim response).  NGX_OK, or NGX_ERROR: the
 * upload fails.  NULL: nothing to tell.
 */

typedef struct {
    const char                   *name;     /* for debug lines */
    void                        (*answer)(ngx_http_cloudauth_upload_t *u,
                                          json_t *object);
    ngx_int_t                   (*check)(ngx_http_cloudauth_upload_t *u,
                                         off_t held, json_t *object);
    ngx_int_t                   (*refuse)(ngx_http_cloudauth_upload_t *u,
                                          ngx_uint_t status,
                                          ngx_str_t *reason);
    ngx_int_t                   (*started)(ngx_http_cloudauth_upload_t *u);
} ngx_http_cloudauth_upload_hooks_t;


/* what ngx_http_cloudauth_upload_ask() asks of a session */

typedef enum {
    NGX_HTTP_CLOUDAUTH_UPLOAD_QUERY = 0,
    NGX_HTTP_CLOUDAUTH_UPLOAD_TERMINATE
} ngx_http_cloudauth_upload_ask_e;


struct ngx_http_cloudauth_upload_s {
    ngx_http_request_t                  *request;
    ngx_http_cloudauth_upload_conf_t    *conf;
    const ngx_http_cloudauth_upload_hooks_t  *hooks;
    ngx_event_t                          guard;

    /*
     * the chunk buffer: bytes [obj.offset + direct, + len); a streamed
     * chunk's bytes go to GCS from nginx's buffers (direct), those from
     * keep_from on are kept here too, for a retry
     */
    u_char                              *buf;
    size_t                               len;
    off_t                                direct;
    off_t                                stream_end; /* the aligned end */
    off_t                                keep_from;
    ngx_int_t                            read_rc;   /* of a read in a send */
    ngx_event_t                          wake;

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

    /*
     * a resumable upload: its handle (the session's URI: an empty one is
     * started and set here), where this request's bytes begin
     */
    ngx_http_cloudauth_upload_id_t       id;
    off_t                                offset;
    ngx_uint_t                           method;    /* as the client meant */
    ngx_http_cloudauth_upload_ask_e      ask;

    unsigned                             multipart:1;
    unsigned                             resumable:1; /* a part may come */
    unsigned                             directory:1; /* URI + file name */
    unsigned                             parked:1;  /* a part's body is over */
    unsigned                             cut:1;     /* its client went */
    unsigned                             checked:1; /* GCS said its offset */
    unsigned                             moved:1;   /* by another request */
    unsigned                             given:1;   /* the ID is out */
    unsigned                             pending:1; /* a file part waits */
    unsigned                             input_done:1;
    unsigned                             finished:1;
    unsigned                             active:1;
    unsigned                             direct_ok:1; /* may stream */
    unsigned                             streaming:1;
    unsigned                             early:1;   /* session, then body */
};


extern ngx_module_t  ngx_http_cloudauth_upload_module;


/*
 * Who calls whom: module -> front ends (plain, tus, ietf) -> driver ->
 * reply; the resumable front ends -> resume -> IDs, reply;
 * and driver -> the GCS client -> the engine.  IDs and names are pure.
 * tools/circles.pl (make test) fails on a call circle between files.
 */

/* ngx_http_cloudauth_upload_plain.c: a single PUT or POST (form or raw) */
ngx_int_t ngx_http_cloudauth_upload_plain(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max);

/* ngx_http_cloudauth_upload_tus.c: tus 1.0.0 on a resumable location */
ngx_int_t ngx_http_cloudauth_upload_tus(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max);
ngx_int_t ngx_http_cloudauth_upload_tus_headers(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status);

/* ngx_http_cloudauth_upload_ietf.c: the IETF draft on a resumable location */
ngx_uint_t ngx_http_cloudauth_upload_ietf_request(ngx_http_request_t *r);
ngx_int_t ngx_http_cloudauth_upload_ietf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max);
ngx_int_t ngx_http_cloudauth_upload_ietf_headers(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status);

/* ngx_http_cloudauth_upload_resume.c: what resumable front ends share */
ngx_int_t ngx_http_cloudauth_upload_resume_method(ngx_http_request_t *r,
    ngx_uint_t *method);
ngx_int_t ngx_http_cloudauth_upload_resume_number(ngx_http_request_t *r,
    const char *name, size_t len, off_t *n);
ngx_int_t ngx_http_cloudauth_upload_resume_key(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, u_char *key);
ngx_int_t ngx_http_cloudauth_upload_resume_id(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf,
    ngx_http_cloudauth_upload_id_t *id);
ngx_int_t ngx_http_cloudauth_upload_resume_url(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *url);
ngx_int_t ngx_http_cloudauth_upload_resume_metadata(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *raw, ngx_str_t *filename,
    ngx_str_t *filetype);

/* ngx_http_cloudauth_upload_driver.c: one upload's life */
ngx_http_cloudauth_upload_t *ngx_http_cloudauth_upload_create(
    ngx_http_request_t *r, ngx_http_cloudauth_upload_conf_t *conf,
    ngx_str_t *origin, off_t max,
    const ngx_http_cloudauth_upload_hooks_t *hooks);
ngx_int_t ngx_http_cloudauth_upload_form(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *content_type);
ngx_int_t ngx_http_cloudauth_upload_open(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *filename, ngx_str_t *content_type, ngx_str_t *content_md5,
    off_t total);
ngx_int_t ngx_http_cloudauth_upload_read(ngx_http_cloudauth_upload_t *u);
ngx_int_t ngx_http_cloudauth_upload_start(ngx_http_cloudauth_upload_t *u);
ngx_int_t ngx_http_cloudauth_upload_ask(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_upload_ask_e what);
ngx_uint_t ngx_http_cloudauth_upload_consumed(ngx_http_request_t *r);
void ngx_http_cloudauth_upload_spare_free(void *data);

/* ngx_http_cloudauth_upload_reply.c: answers, CORS, cross-site requests */
ngx_table_elt_t *ngx_http_cloudauth_upload_header_in(ngx_http_request_t *r,
    const char *name, size_t len);
ngx_str_t *ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
ngx_int_t ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin);
ngx_int_t ngx_http_cloudauth_upload_csrf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
ngx_int_t ngx_http_cloudauth_upload_header_out(ngx_http_request_t *r,
    char *key, ngx_str_t *value);
ngx_int_t ngx_http_cloudauth_upload_header_text(ngx_http_request_t *r,
    char *key, const char *value);
ngx_int_t ngx_http_cloudauth_upload_header_off(ngx_http_request_t *r,
    char *key, off_t n);
ngx_int_t ngx_http_cloudauth_upload_respond(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_reply_t *reply, ngx_str_t *origin,
    ngx_uint_t status, json_t *body);
ngx_int_t ngx_http_cloudauth_upload_reject(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_reply_t *reply, ngx_str_t *origin,
    ngx_uint_t status, const char *reason, size_t len);

/* ngx_http_cloudauth_upload_id.c: the sealed IDs, pure */
ngx_int_t ngx_http_cloudauth_upload_id_key(u_char *secret, size_t len,
    u_char *key);
ngx_int_t ngx_http_cloudauth_upload_id_seal(ngx_pool_t *pool, u_char *key,
    ngx_str_t *aad, ngx_http_cloudauth_upload_id_t *id, ngx_str_t *out);
ngx_int_t ngx_http_cloudauth_upload_id_open(ngx_pool_t *pool, u_char *key,
    ngx_str_t *aad, ngx_str_t *in, ngx_http_cloudauth_upload_id_t *id);

/* ngx_http_cloudauth_upload_name.c: object names and file names, pure */
const char *ngx_http_cloudauth_upload_check_name(ngx_str_t *name);
void ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool, ngx_str_t *in,
    ngx_str_t *out);
ngx_uint_t ngx_http_cloudauth_upload_token_char(u_char c);


#endif /* _NGX_HTTP_CLOUDAUTH_UPLOAD_H_INCLUDED_ */
