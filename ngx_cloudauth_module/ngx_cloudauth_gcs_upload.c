
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload: a content handler that streams a request body (raw,
 * or each file of a multipart/form-data form) into GCS objects through the
 * JSON API's resumable uploads, authorised by a cloudauth credential.
 *
 * The body is read unbuffered, into one buffer of chunk_size bytes per
 * upload.  A full buffer becomes one PUT on the session; while it is on its
 * way no more of the body is read (back-pressure), and it stays until GCS
 * says which of its bytes it kept, so it is also the retry buffer.  CRC32C
 * and MD5 run over the bytes once, as they enter the buffer.  A failure
 * cancels the session (DELETE), so no object is left half-written.
 *
 * It is a module of its own (ngx_http_cloudauth_upload_module) so that its
 * directive and variables stay in this file.
 */


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


typedef struct {
    ngx_cloudauth_cred_t      *cred;
    ngx_str_t                  bucket;
    ngx_http_complex_value_t  *object;      /* NULL: URI below location */
    ngx_str_t                  endpoint;    /* without the trailing "/" */
    ngx_str_t                  origin;      /* scheme://host[:port]/ */
    ngx_flag_t                 overwrite;
    size_t                     chunk_size;
    off_t                      max_size;    /* -1: client_max_body_size */
    ngx_array_t               *cors;        /* ngx_str_t origins */
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

    uint32_t                   crc32c;
    EVP_MD_CTX                *md5;
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
    off_t                              bytes;       /* object bytes taken */
    ngx_str_t                          names;       /* stored, for the log */
    ngx_str_t                          status;      /* for the log */
    ngx_str_t                          reason;      /* of a 4xx */

    unsigned                           multipart:1;
    unsigned                           pending:1;   /* a file part waits */
    unsigned                           input_done:1;
    unsigned                           finished:1;
    unsigned                           active:1;
} ngx_http_cloudauth_upload_t;


static ngx_int_t ngx_http_cloudauth_upload_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin);
static void ngx_http_cloudauth_upload_body(ngx_http_request_t *r);
static void ngx_http_cloudauth_upload_read(ngx_http_request_t *r);
static void ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_pull(
    ngx_http_cloudauth_upload_t *u);
static ngx_uint_t ngx_http_cloudauth_upload_room(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_take(
    ngx_http_cloudauth_upload_t *u, u_char *p, u_char *last, size_t *taken);
static ngx_int_t ngx_http_cloudauth_upload_form(
    ngx_http_cloudauth_upload_t *u, u_char *p, u_char *last, size_t *taken);
static ngx_int_t ngx_http_cloudauth_upload_part(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_field(
    ngx_http_cloudauth_upload_t *u, u_char *data, size_t len);
static void ngx_http_cloudauth_upload_feed(ngx_http_cloudauth_upload_t *u,
    u_char *data, size_t len);
static ngx_int_t ngx_http_cloudauth_upload_input_end(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_open(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *filename,
    ngx_str_t *content_type, ngx_str_t *content_md5, off_t total);
static void ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_step(
    ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_token(ngx_cloudauth_ask_t *ask);
static ngx_int_t ngx_http_cloudauth_upload_start(
    ngx_http_cloudauth_upload_t *u, ngx_http_cloudauth_op_e op);
static ssize_t ngx_http_cloudauth_upload_send(ngx_cloudauth_fetch_t *f,
    u_char *buf, size_t size);
static void ngx_http_cloudauth_upload_stall(ngx_event_t *ev);
static void ngx_http_cloudauth_upload_header(ngx_cloudauth_fetch_t *f,
    u_char *line, size_t len);
static void ngx_http_cloudauth_upload_done(ngx_cloudauth_fetch_t *f);
static ngx_int_t ngx_http_cloudauth_upload_answer(
    ngx_http_cloudauth_upload_t *u, ngx_cloudauth_fetch_t *f,
    ngx_http_cloudauth_op_e op);
static ngx_int_t ngx_http_cloudauth_upload_ack(
    ngx_http_cloudauth_upload_t *u);
static ngx_int_t ngx_http_cloudauth_upload_stored(
    ngx_http_cloudauth_upload_t *u, ngx_cloudauth_fetch_t *f);
static ngx_int_t ngx_http_cloudauth_upload_backoff(
    ngx_http_cloudauth_upload_t *u, ngx_http_cloudauth_op_e op,
    ngx_cloudauth_fetch_t *f);
static void ngx_http_cloudauth_upload_retry(ngx_event_t *ev);
static void ngx_http_cloudauth_upload_guard(ngx_event_t *ev);
static void ngx_http_cloudauth_upload_gcs_error(
    ngx_http_cloudauth_upload_t *u, ngx_cloudauth_fetch_t *f,
    ngx_uint_t status, const char *what);
static void ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len);
static void ngx_http_cloudauth_upload_abort(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_cancel(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_cancelled(ngx_cloudauth_fetch_t *f);
static void ngx_http_cloudauth_upload_finish(ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_cleanup(void *data);
static ngx_int_t ngx_http_cloudauth_upload_respond(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, json_t *body);
static ngx_int_t ngx_http_cloudauth_upload_reject(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *reason, size_t len);

static const char *ngx_http_cloudauth_upload_check_name(ngx_str_t *name);
static void ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool,
    ngx_str_t *in, ngx_str_t *out);
static ngx_int_t ngx_http_cloudauth_upload_utf8(u_char *p, size_t len);
static u_char *ngx_http_cloudauth_upload_escape(u_char *dst, u_char *src,
    size_t len, ngx_uint_t path);
static ngx_int_t ngx_http_cloudauth_upload_header_add(ngx_pool_t *pool,
    ngx_array_t *headers, const char *fmt, ...);
static ngx_str_t *ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf);
static u_char *ngx_http_cloudauth_upload_buf_alloc(size_t size,
    ngx_log_t *log);
static void ngx_http_cloudauth_upload_buf_free(u_char *buf, size_t size,
    ngx_log_t *log);

static ngx_int_t ngx_http_cloudauth_upload_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_upload_add_variables(ngx_conf_t *cf);
static void *ngx_http_cloudauth_upload_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_cloudauth_upload(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_cloudauth_upload_commands[] = {

    { ngx_string("cloudauth_gcs_upload"),
      NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_cloudauth_upload,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cloudauth_upload_module_ctx = {
    ngx_http_cloudauth_upload_add_variables, /* preconfiguration */
    NULL,                                    /* postconfiguration */

    NULL,                                    /* create main configuration */
    NULL,                                    /* init main configuration */

    NULL,                                    /* create server configuration */
    NULL,                                    /* merge server configuration */

    ngx_http_cloudauth_upload_create_loc_conf, /* create location conf */
    NULL                                     /* merge location configuration */
};


ngx_module_t  ngx_http_cloudauth_upload_module = {
    NGX_MODULE_V1,
    &ngx_http_cloudauth_upload_module_ctx, /* module context */
    ngx_http_cloudauth_upload_commands,    /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


enum {
    NGX_HTTP_CLOUDAUTH_VAR_FILENAME = 0,
    NGX_HTTP_CLOUDAUTH_VAR_BYTES,
    NGX_HTTP_CLOUDAUTH_VAR_OBJECT,
    NGX_HTTP_CLOUDAUTH_VAR_STATUS
};


static ngx_http_variable_t  ngx_http_cloudauth_upload_vars[] = {

    { ngx_string("cloudauth_filename"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_FILENAME,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_bytes"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_BYTES,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_object"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_OBJECT,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_status"), NULL,
      ngx_http_cloudauth_upload_variable, NGX_HTTP_CLOUDAUTH_VAR_STATUS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_cloudauth_upload_json =
    ngx_string("application/json");


/* the request */

static ngx_int_t
ngx_http_cloudauth_upload_handler(ngx_http_request_t *r)
{
    u_char                            *p;
    off_t                              max;
    ngx_int_t                          rc;
    ngx_str_t                         *origin, ct, md5, seg;
    ngx_uint_t                         i;
    ngx_list_part_t                   *part;
    ngx_table_elt_t                   *h;
    ngx_pool_cleanup_t                *cln;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_cloudauth_upload_t       *u;
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_upload_module);
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r != r->main) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    origin = ngx_http_cloudauth_upload_cors(r, conf);

    if (r->method == NGX_HTTP_OPTIONS && conf->cors) {
        return ngx_http_cloudauth_upload_preflight(r, conf, origin);
    }

    if (!(r->method & (NGX_HTTP_PUT|NGX_HTTP_POST))) {
        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_NOT_ALLOWED, "use PUT or POST",
                                 sizeof("use PUT or POST") - 1);
    }

    max = conf->max_size >= 0 ? conf->max_size : clcf->client_max_body_size;

    if (max && r->headers_in.content_length_n > max) {
        r->expect_tested = 1;
        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                 "the body is larger than max_size",
                                 sizeof("the body is larger than max_size")
                                 - 1);
    }

    u = ngx_pcalloc(r->pool, sizeof(ngx_http_cloudauth_upload_t));
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_cloudauth_upload_cleanup;
    cln->data = u;

    u->request = r;
    u->conf = conf;
    u->range = -1;
    u->max_size = max;
    u->retry.handler = ngx_http_cloudauth_upload_retry;
    u->retry.data = r->connection;
    u->retry.log = r->connection->log;
    u->guard.handler = ngx_http_cloudauth_upload_guard;
    u->guard.data = r->connection;
    u->guard.log = r->connection->log;
    u->stall.handler = ngx_http_cloudauth_upload_stall;
    u->stall.data = r->connection;
    u->stall.log = r->connection->log;
    ngx_str_set(&u->status, "rejected");

    if (origin) {
        u->cors_origin = *origin;
    }

    ngx_http_set_ctx(r, u, ngx_http_cloudauth_upload_module);

    u->ask.cred = conf->cred;
    u->ask.subject = conf->cred->subject;
    u->ask.pool = r->pool;
    u->ask.log = r->connection->log;
    u->ask.handler = ngx_http_cloudauth_upload_token;
    u->ask.data = u;

    ngx_str_null(&ct);
    ngx_str_null(&md5);

    if (r->headers_in.content_type) {
        ct = r->headers_in.content_type->value;
    }

    if (r->method == NGX_HTTP_POST && ct.len >= 19
        && ngx_strncasecmp(ct.data, (u_char *) "multipart/form-data", 19) == 0)
    {
        u->multipart = 1;

        u->mp = ngx_palloc(r->pool, sizeof(ngx_cloudauth_mp_t));
        u->fields = ngx_array_create(r->pool, 4, sizeof(ngx_keyval_t));
        if (u->mp == NULL || u->fields == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_cloudauth_mp_init(u->mp, &ct) != NGX_OK) {
            return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_BAD_REQUEST, u->mp->error,
                                 ngx_strlen(u->mp->error));
        }

    } else {
        /* $cloudauth_filename: the last segment of the URI */

        p = r->uri.data + r->uri.len;

        while (p > r->uri.data && p[-1] != '/') {
            p--;
        }

        seg.data = p;
        seg.len = r->uri.data + r->uri.len - p;

        if (r->headers_in.content_type == NULL || ct.len == 0) {
            ngx_str_set(&ct, "application/octet-stream");
        }

        for (part = &r->headers_in.headers.part; part; part = part->next) {
            h = part->elts;

            for (i = 0; i < part->nelts; i++) {
                if (h[i].key.len == 11
                    && ngx_strncasecmp(h[i].key.data,
                                       (u_char *) "Content-MD5", 11) == 0)
                {
                    md5 = h[i].value;
                }
            }
        }

        u->buf = ngx_http_cloudauth_upload_buf_alloc(conf->chunk_size,
                                                     r->connection->log);
        if (u->buf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rc = ngx_http_cloudauth_upload_open(u, &seg, &ct, &md5,
                                            r->headers_in.content_length_n);
        if (rc != NGX_OK) {
            if (rc == NGX_ERROR) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            return ngx_http_cloudauth_upload_reject(r, origin, rc,
                                                    (char *) u->reason.data,
                                                    u->reason.len);
        }
    }

    r->request_body_no_buffering = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_cloudauth_upload_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_uint_t
ngx_http_cloudauth_upload_token_char(u_char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '_';
}


static ngx_int_t
ngx_http_cloudauth_upload_preflight(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin)
{
    u_char           *p;
    ngx_uint_t        i, ok;
    ngx_str_t         method, hdrs;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *out;

    ngx_str_null(&method);
    ngx_str_null(&hdrs);

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (h[i].key.len == 29
                && ngx_strncasecmp(h[i].key.data,
                          (u_char *) "Access-Control-Request-Method", 29) == 0)
            {
                method = h[i].value;

            } else if (h[i].key.len == 30
                       && ngx_strncasecmp(h[i].key.data,
                          (u_char *) "Access-Control-Request-Headers", 30)
                          == 0)
            {
                hdrs = h[i].value;
            }
        }
    }

    ok = (method.len == 3 && ngx_strncmp(method.data, "PUT", 3) == 0)
         || (method.len == 4 && ngx_strncmp(method.data, "POST", 4) == 0);

    if (origin == NULL || !ok) {
        return ngx_http_cloudauth_upload_reject(r, NULL, NGX_HTTP_FORBIDDEN,
                                 "CORS preflight refused",
                                 sizeof("CORS preflight refused") - 1);
    }

    for (p = hdrs.data; p < hdrs.data + hdrs.len; p++) {
        if (!(ngx_http_cloudauth_upload_token_char(*p) || *p == ','
              || *p == ' '))
        {
            ngx_str_set(&hdrs, "Content-Type, Content-MD5");
            break;
        }
    }

    if (hdrs.len == 0) {
        ngx_str_set(&hdrs, "Content-Type, Content-MD5");
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#define ngx_http_cloudauth_out(k, v)                                         \
    out = ngx_list_push(&r->headers_out.headers);                            \
    if (out == NULL) {                                                       \
        return NGX_HTTP_INTERNAL_SERVER_ERROR;                               \
    }                                                                        \
    out->hash = 1;                                                           \
    ngx_str_set(&out->key, k);                                               \
    out->value = v;

    ngx_http_cloudauth_out("Access-Control-Allow-Origin", *origin);

    ngx_str_set(&method, "PUT, POST, OPTIONS");
    ngx_http_cloudauth_out("Access-Control-Allow-Methods", method);
    ngx_http_cloudauth_out("Access-Control-Allow-Headers", hdrs);

    ngx_str_set(&method, "600");
    ngx_http_cloudauth_out("Access-Control-Max-Age", method);

    ngx_str_set(&method, "Origin");
    ngx_http_cloudauth_out("Vary", method);

#undef ngx_http_cloudauth_out

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


static void
ngx_http_cloudauth_upload_body(ngx_http_request_t *r)
{
    ngx_cloudauth_stats_t        *st;
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    r->read_event_handler = ngx_http_cloudauth_upload_read;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_str_set(&u->status, "uploading");

    st = ngx_cloudauth_cache_stats();
    if (st) {
        (void) ngx_atomic_fetch_add(&st->uploads_active, 1);
    }

    u->active = 1;

    /* a graceful shutdown waits for the upload */
    ngx_add_timer(&u->guard, NGX_HTTP_CLOUDAUTH_GUARD);

    ngx_http_cloudauth_upload_run(u);
}


static void
ngx_http_cloudauth_upload_read(ngx_http_request_t *r)
{
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    ngx_http_cloudauth_upload_run(u);
}


/*
 * Takes what the body offers while there is room, then starts whatever
 * GCS request is due; returns when waiting for the client, GCS, the token
 * or a retry timer.
 */

static void
ngx_http_cloudauth_upload_run(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = u->request;

    for ( ;; ) {

        if (u->finished) {
            return;
        }

        rc = ngx_http_cloudauth_upload_pull(u);

        if (rc != NGX_OK) {
            if (r->connection->error || rc == NGX_HTTP_REQUEST_TIME_OUT) {
                ngx_str_set(&u->status, "aborted");
                ngx_http_cloudauth_upload_fail(u, rc, NULL, 0);

            } else if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
                ngx_http_cloudauth_upload_fail(u, rc,
                                  "the body is larger than max_size",
                                  sizeof("the body is larger than max_size")
                                  - 1);

            } else if (rc == NGX_ERROR) {
                ngx_http_cloudauth_upload_fail(u,
                                  NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);

            } else {
                /* u->reason holds the reason */
                ngx_http_cloudauth_upload_fail(u, rc, (char *) u->reason.data,
                                               u->reason.len);
            }

            return;
        }

        if (u->fetch || u->retry.timer_set || u->ask.waiting) {
            return;
        }

        rc = ngx_http_cloudauth_upload_step(u);

        if (rc != NGX_OK) {
            return;
        }
    }
}


static ngx_int_t
ngx_http_cloudauth_upload_pull(ngx_http_cloudauth_upload_t *u)
{
    size_t                    taken;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_http_request_t       *r;
    ngx_http_request_body_t  *rb;

    r = u->request;
    rb = r->request_body;

    for ( ;; ) {

        if (u->in == NULL) {

            if (rb->bufs) {
                u->in = rb->bufs;
                rb->bufs = NULL;
                continue;
            }

            if (u->input_done) {
                return NGX_OK;
            }

            if (!r->reading_body) {
                u->input_done = 1;
                return ngx_http_cloudauth_upload_input_end(u);
            }

            if (!ngx_http_cloudauth_upload_room(u)) {
                /* back-pressure: we are slow, not the client */
                if (r->connection->read->timer_set) {
                    ngx_del_timer(r->connection->read);
                }

                return NGX_OK;
            }

            rc = ngx_http_read_unbuffered_request_body(r);

            if (rc >= NGX_HTTP_SPECIAL_RESPONSE || rc == NGX_ERROR) {
                return rc;
            }

            if (rb->bufs == NULL && rc == NGX_AGAIN) {
                return NGX_OK;
            }

            continue;
        }

        b = u->in->buf;

        if (b->in_file) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "cloudauth: request body in a file");
            return NGX_ERROR;
        }

        if (b->pos == b->last) {
            u->in = u->in->next;
            continue;
        }

        taken = 0;

        rc = ngx_http_cloudauth_upload_take(u, b->pos, b->last, &taken);

        b->pos += taken;
        u->body_bytes += taken;

        if (rc != NGX_OK) {
            return rc;
        }

        if (u->max_size && u->body_bytes > u->max_size) {
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        if (b->pos < b->last) {
            /* no room until GCS has taken a chunk */
            return NGX_OK;
        }
    }
}


static ngx_uint_t
ngx_http_cloudauth_upload_room(ngx_http_cloudauth_upload_t *u)
{
    if (u->multipart) {
        if (u->pending) {
            return 0;
        }

        if (u->part == NGX_HTTP_CLOUDAUTH_PART_FILE) {
            return u->obj.open && !u->obj.eof
                   && u->len < u->conf->chunk_size;
        }

        return 1;
    }

    return u->obj.open && !u->obj.eof && u->len < u->conf->chunk_size;
}


static ngx_int_t
ngx_http_cloudauth_upload_take(ngx_http_cloudauth_upload_t *u, u_char *p,
    u_char *last, size_t *taken)
{
    size_t  n;

    if (u->multipart) {
        return ngx_http_cloudauth_upload_form(u, p, last, taken);
    }

    if (!u->obj.open || u->obj.eof) {
        *taken = 0;
        return NGX_OK;
    }

    n = ngx_min((size_t) (last - p), u->conf->chunk_size - u->len);

    if (u->obj.total >= 0 && u->obj.received + (off_t) n > u->obj.total) {
        ngx_str_set(&u->reason, "the body is longer than Content-Length");
        return NGX_HTTP_BAD_REQUEST;
    }

    ngx_http_cloudauth_upload_feed(u, p, n);
    *taken = n;

    return NGX_OK;
}


static void
ngx_http_cloudauth_upload_feed(ngx_http_cloudauth_upload_t *u, u_char *data,
    size_t len)
{
    ngx_memcpy(u->buf + u->len, data, len);
    u->len += len;

    u->obj.received += len;
    u->bytes += len;
    u->obj.crc32c = ngx_cloudauth_crc32c(u->obj.crc32c, data, len);
    EVP_DigestUpdate(u->obj.md5, data, len);
}


static ngx_int_t
ngx_http_cloudauth_upload_form(ngx_http_cloudauth_upload_t *u, u_char *p,
    u_char *last, size_t *taken)
{
    u_char                    *start;
    size_t                     room;
    ngx_int_t                  rc;
    ngx_cloudauth_mp_t        *mp;
    ngx_cloudauth_mp_event_e   ev;

    mp = u->mp;
    start = p;

    for ( ;; ) {

        if (u->pending) {
            break;
        }

        switch (u->part) {

        case NGX_HTTP_CLOUDAUTH_PART_FILE:
            room = u->conf->chunk_size - u->len;
            break;

        case NGX_HTTP_CLOUDAUTH_PART_FIELD:
            room = NGX_HTTP_CLOUDAUTH_FIELDS_MAX - u->arena_len;

            if (room == 0) {
                ngx_str_set(&u->reason, "form fields are too large");
                *taken = p - start;
                return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            }

            break;

        default:
            room = (size_t) (last - p) + 1;
        }

        if (room == 0) {
            break;
        }

        ev = ngx_cloudauth_mp_parse(mp, &p, last, room);

        switch (ev) {

        case NGX_CLOUDAUTH_MP_NEED_MORE:
            *taken = p - start;
            return NGX_OK;

        case NGX_CLOUDAUTH_MP_ERROR:
            u->reason.data = (u_char *) mp->error;
            u->reason.len = ngx_strlen(mp->error);
            *taken = p - start;
            return NGX_HTTP_BAD_REQUEST;

        case NGX_CLOUDAUTH_MP_PART:
            rc = ngx_http_cloudauth_upload_part(u);
            if (rc != NGX_OK) {
                *taken = p - start;
                return rc;
            }

            break;

        case NGX_CLOUDAUTH_MP_DATA:

            if (u->part == NGX_HTTP_CLOUDAUTH_PART_FILE) {
                ngx_http_cloudauth_upload_feed(u, mp->data, mp->len);

            } else if (u->part == NGX_HTTP_CLOUDAUTH_PART_FIELD) {
                rc = ngx_http_cloudauth_upload_field(u, mp->data, mp->len);
                if (rc != NGX_OK) {
                    *taken = p - start;
                    return rc;
                }
            }

            break;

        case NGX_CLOUDAUTH_MP_PART_END:

            if (u->part == NGX_HTTP_CLOUDAUTH_PART_FILE) {
                u->obj.eof = 1;
            }

            u->part = NGX_HTTP_CLOUDAUTH_PART_NONE;
            break;

        case NGX_CLOUDAUTH_MP_END:
            break;
        }
    }

    *taken = p - start;

    return NGX_OK;
}


/* a part's headers: a field to keep, or a file to store */

static ngx_int_t
ngx_http_cloudauth_upload_part(ngx_http_cloudauth_upload_t *u)
{
    u_char                   *p;
    ngx_int_t                 rc;
    ngx_keyval_t             *kv;
    ngx_http_request_t       *r;
    ngx_cloudauth_mp_part_t  *part;

    r = u->request;
    part = &u->mp->part;

    if (!part->file) {
        if (part->name.len + u->arena_len > NGX_HTTP_CLOUDAUTH_FIELDS_MAX
            || u->fields->nelts >= 64)
        {
            ngx_str_set(&u->reason, "form fields are too large");
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }

        if (u->arena == NULL) {
            u->arena = ngx_pnalloc(r->pool, NGX_HTTP_CLOUDAUTH_FIELDS_MAX);
            if (u->arena == NULL) {
                return NGX_ERROR;
            }
        }

        kv = ngx_array_push(u->fields);
        if (kv == NULL) {
            return NGX_ERROR;
        }

        kv->key.data = u->arena + u->arena_len;
        kv->key.len = part->name.len;
        ngx_memcpy(kv->key.data, part->name.data, part->name.len);
        u->arena_len += part->name.len;

        kv->value.data = u->arena + u->arena_len;
        kv->value.len = 0;

        u->part = NGX_HTTP_CLOUDAUTH_PART_FIELD;

        return NGX_OK;
    }

    if (part->filename.len == 0) {
        /* an empty file input */
        u->part = NGX_HTTP_CLOUDAUTH_PART_SKIP;
        return NGX_OK;
    }

    u->part = NGX_HTTP_CLOUDAUTH_PART_FILE;

    /* keep the headers: the parser's buffer is reused by the next part */

    p = ngx_pnalloc(r->pool, part->filename.len + part->content_type.len
                             + part->content_md5.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    u->pending_name.data = p;
    u->pending_name.len = part->filename.len;
    p = ngx_cpymem(p, part->filename.data, part->filename.len);

    u->pending_type.data = p;
    u->pending_type.len = part->content_type.len;
    p = ngx_cpymem(p, part->content_type.data, part->content_type.len);

    u->pending_md5.data = p;
    u->pending_md5.len = part->content_md5.len;
    ngx_memcpy(p, part->content_md5.data, part->content_md5.len);

    if (u->pending_type.len == 0) {
        ngx_str_set(&u->pending_type, "application/octet-stream");
    }

    if (u->obj.open) {
        /* the previous file is still on its way */
        u->pending = 1;
        return NGX_OK;
    }

    rc = ngx_http_cloudauth_upload_open(u, &u->pending_name, &u->pending_type,
                                        &u->pending_md5, -1);

    return rc;
}


static ngx_int_t
ngx_http_cloudauth_upload_field(ngx_http_cloudauth_upload_t *u, u_char *data,
    size_t len)
{
    ngx_keyval_t  *kv;

    if (u->arena_len + len > NGX_HTTP_CLOUDAUTH_FIELDS_MAX) {
        ngx_str_set(&u->reason, "form fields are too large");
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }

    kv = u->fields->elts;
    kv = &kv[u->fields->nelts - 1];

    ngx_memcpy(u->arena + u->arena_len, data, len);
    u->arena_len += len;
    kv->value.len += len;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_input_end(ngx_http_cloudauth_upload_t *u)
{
    if (!u->multipart) {
        if (u->obj.total >= 0 && u->obj.received != u->obj.total) {
            ngx_str_set(&u->reason, "the body is shorter than Content-Length");
            return NGX_HTTP_BAD_REQUEST;
        }

        u->obj.eof = 1;

        return NGX_OK;
    }

    if (ngx_cloudauth_mp_finish(u->mp) != NGX_OK) {
        u->reason.data = (u_char *) u->mp->error;
        u->reason.len = ngx_strlen(u->mp->error);
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* objects */

static ngx_int_t
ngx_http_cloudauth_upload_open(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *filename, ngx_str_t *content_type, ngx_str_t *content_md5,
    off_t total)
{
    u_char                       *p;
    size_t                        below;
    const char                   *err;
    ngx_str_t                     name, md5;
    ngx_http_request_t           *r;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_cloudauth_object_t  *obj;

    r = u->request;
    obj = &u->obj;

    ngx_memzero(obj, sizeof(ngx_http_cloudauth_object_t));
    obj->total = total;
    obj->nfields = u->fields ? u->fields->nelts : 0;

    ngx_http_cloudauth_upload_sanitize(r->pool, filename, &u->filename);

    if (u->conf->object) {
        if (ngx_http_complex_value(r, u->conf->object, &name) != NGX_OK) {
            return NGX_ERROR;
        }

    } else {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        below = 0;

        if (r->uri.len >= clcf->name.len
            && ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) == 0
            && !clcf->regex)
        {
            below = clcf->name.len;

        } else if (r->uri.len && r->uri.data[0] == '/') {
            below = 1;
        }

        name.data = r->uri.data + below;
        name.len = r->uri.len - below;

        if (u->multipart) {
            /* the form's URI is a "directory" for its files */

            p = ngx_pnalloc(r->pool, name.len + 1 + u->filename.len);
            if (p == NULL) {
                return NGX_ERROR;
            }

            ngx_memcpy(p, name.data, name.len);
            below = name.len;

            if (below && p[below - 1] != '/') {
                p[below++] = '/';
            }

            ngx_memcpy(p + below, u->filename.data, u->filename.len);

            name.data = p;
            name.len = below + u->filename.len;
        }
    }

    err = ngx_http_cloudauth_upload_check_name(&name);

    if (err == NULL && !ngx_http_cloudauth_upload_utf8(content_type->data,
                                                       content_type->len))
    {
        err = "the content type is not UTF-8";
    }

    if (err) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: bad object name \"%V\": %s",
                      &name, err);
        u->reason.data = (u_char *) err;
        u->reason.len = ngx_strlen(err);
        return NGX_HTTP_BAD_REQUEST;
    }

    if (content_md5->len) {
        md5.data = obj->content_md5;

        if (content_md5->len != 24
            || ngx_decode_base64(&md5, content_md5) != NGX_OK
            || md5.len != 16)
        {
            ngx_str_set(&u->reason, "Content-MD5 is not a base64 MD5");
            return NGX_HTTP_BAD_REQUEST;
        }

        obj->has_md5 = 1;
    }

    obj->name = name;
    obj->content_type = *content_type;

    obj->md5 = EVP_MD_CTX_new();
    if (obj->md5 == NULL
        || EVP_DigestInit_ex(obj->md5, EVP_md5(), NULL) != 1)
    {
        return NGX_ERROR;
    }

    if (u->buf == NULL) {
        u->buf = ngx_http_cloudauth_upload_buf_alloc(u->conf->chunk_size,
                                                     r->connection->log);
        if (u->buf == NULL) {
            return NGX_ERROR;
        }
    }

    u->len = 0;
    obj->open = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: object \"%V\" size %O", &name, total);

    return NGX_OK;
}


static void
ngx_http_cloudauth_upload_close(ngx_http_cloudauth_upload_t *u)
{
    if (u->obj.md5) {
        EVP_MD_CTX_free(u->obj.md5);
        u->obj.md5 = NULL;
    }

    u->obj.open = 0;
    u->obj.session.len = 0;
    u->len = 0;
}


/* what GCS request is due */

static ngx_int_t
ngx_http_cloudauth_upload_step(ngx_http_cloudauth_upload_t *u)
{
    ngx_int_t                     rc;
    ngx_http_cloudauth_object_t  *obj;

    obj = &u->obj;

    if (!obj->open) {

        if (u->pending) {
            u->pending = 0;

            rc = ngx_http_cloudauth_upload_open(u, &u->pending_name,
                                                &u->pending_type,
                                                &u->pending_md5, -1);
            if (rc != NGX_OK) {
                ngx_http_cloudauth_upload_fail(u,
                                       rc == NGX_ERROR
                                       ? NGX_HTTP_INTERNAL_SERVER_ERROR : rc,
                                       (char *) u->reason.data,
                                       u->reason.len);
                return NGX_ERROR;
            }

            return NGX_OK;
        }

        if (u->input_done) {
            ngx_http_cloudauth_upload_finish(u);
            return NGX_DONE;
        }

        return NGX_DECLINED;
    }

    if (!obj->token) {
        u->ask.token.len = 0;

        rc = ngx_cloudauth_get(&u->ask);

        if (rc == NGX_AGAIN) {
            return NGX_AGAIN;
        }

        if (rc != NGX_OK || u->ask.token.len == 0) {
            if (u->ask.reason.len == 0) {
                ngx_str_set(&u->ask.reason, "no token");
            }

            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                           (char *) u->ask.reason.data,
                                           u->ask.reason.len);
            return NGX_ERROR;
        }

        obj->token = 1;
    }

    if (obj->session.len == 0) {
        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_INIT);
    }

    if (obj->eof) {
        if (!obj->summed) {
            EVP_DigestFinal_ex(obj->md5, obj->md5_sum, NULL);
            obj->summed = 1;

            if (obj->has_md5
                && ngx_memcmp(obj->md5_sum, obj->content_md5, 16) != 0)
            {
                ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_REQUEST,
                                   "Content-MD5 does not match the body",
                                   sizeof("Content-MD5 does not match the "
                                          "body") - 1);
                return NGX_ERROR;
            }
        }

        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_FINAL);
    }

    if (u->len == u->conf->chunk_size) {
        return ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_CHUNK);
    }

    return NGX_DECLINED;
}


static void
ngx_http_cloudauth_upload_token(ngx_cloudauth_ask_t *ask)
{
    ngx_connection_t             *c;
    ngx_http_cloudauth_upload_t  *u;

    u = ask->data;
    c = u->request->connection;

    if (ask->token.len == 0) {
        if (ask->reason.len == 0) {
            ngx_str_set(&ask->reason, "no token");
        }

        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                       (char *) ask->reason.data,
                                       ask->reason.len);

    } else {
        u->obj.token = 1;
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


/* GCS requests: a scratch pool each, curl keeps copies */

static ngx_int_t
ngx_http_cloudauth_upload_start(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_op_e op)
{
    u_char                            *p, *last;
    off_t                              length, end;
    size_t                             len;
    char                              *s;
    json_t                            *body, *meta;
    ngx_uint_t                         i;
    ngx_str_t                          hash, crc, md5;
    ngx_pool_t                        *pool;
    ngx_keyval_t                      *kv;
    ngx_http_request_t                *r;
    ngx_cloudauth_request_t            req;
    ngx_http_cloudauth_object_t       *obj;
    ngx_http_cloudauth_upload_conf_t  *conf;
    u_char                             crcbuf[4], hashbuf[128];

    r = u->request;
    obj = &u->obj;
    conf = u->conf;

    pool = ngx_create_pool(2048, r->connection->log);
    if (pool == NULL) {
        goto failed;
    }

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.headers = ngx_array_create(pool, 6, sizeof(ngx_str_t));
    if (req.headers == NULL) {
        goto failed;
    }

    if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                             "Authorization: Bearer %V",
                                             &u->ask.token)
        != NGX_OK)
    {
        goto failed;
    }

    length = -1;

    switch (op) {

    case NGX_HTTP_CLOUDAUTH_OP_INIT:

        len = conf->endpoint.len + sizeof("/upload/storage/v1/b//o"
                                          "?uploadType=resumable&name="
                                          "&ifGenerationMatch=0")
              + 3 * conf->bucket.len + 3 * obj->name.len;

        req.url.data = ngx_pnalloc(pool, len);
        if (req.url.data == NULL) {
            goto failed;
        }

        p = ngx_cpymem(req.url.data, conf->endpoint.data, conf->endpoint.len);
        p = ngx_cpymem(p, "/upload/storage/v1/b/",
                       sizeof("/upload/storage/v1/b/") - 1);
        p = ngx_http_cloudauth_upload_escape(p, conf->bucket.data,
                                             conf->bucket.len, 0);
        p = ngx_cpymem(p, "/o?uploadType=resumable&name=",
                       sizeof("/o?uploadType=resumable&name=") - 1);
        p = ngx_http_cloudauth_upload_escape(p, obj->name.data,
                                             obj->name.len, 0);

        if (!conf->overwrite) {
            p = ngx_cpymem(p, "&ifGenerationMatch=0",
                           sizeof("&ifGenerationMatch=0") - 1);
        }

        *p = '\0';
        req.url.len = p - req.url.data;

        ngx_str_set(&req.method, "POST");

        body = json_object();
        if (body == NULL) {
            goto failed;
        }

        json_object_set_new(body, "name",
                            json_stringn((char *) obj->name.data,
                                         obj->name.len));
        json_object_set_new(body, "contentType",
                            json_stringn((char *) obj->content_type.data,
                                         obj->content_type.len));

        if (obj->nfields) {
            meta = json_object();
            kv = u->fields->elts;

            for (i = 0; meta && i < obj->nfields; i++) {
                s = ngx_cloudauth_copy_cstr(pool, &kv[i].key);
                if (s == NULL) {
                    json_decref(meta);
                    json_decref(body);
                    goto failed;
                }

                /* json_stringn() is NULL for bytes that are not UTF-8 */
                json_object_set_new(meta, s,
                                    json_stringn((char *) kv[i].value.data,
                                                 kv[i].value.len));
            }

            json_object_set_new(body, "metadata", meta);
        }

        s = json_dumps(body, JSON_COMPACT);
        json_decref(body);

        if (s == NULL) {
            goto failed;
        }

        req.body.len = ngx_strlen(s);
        req.body.data = ngx_pnalloc(pool, req.body.len);
        if (req.body.data == NULL) {
            free(s);
            goto failed;
        }

        ngx_memcpy(req.body.data, s, req.body.len);
        free(s);

        if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                             "Content-Type: application/json; charset=UTF-8")
            != NGX_OK
            || ngx_http_cloudauth_upload_header_add(pool, req.headers,
                             "X-Upload-Content-Type: %V", &obj->content_type)
               != NGX_OK)
        {
            goto failed;
        }

        if (obj->total >= 0
            && ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                 "X-Upload-Content-Length: %O", obj->total)
               != NGX_OK)
        {
            goto failed;
        }

        break;

    case NGX_HTTP_CLOUDAUTH_OP_QUERY:

        req.url = obj->session;
        ngx_str_set(&req.method, "PUT");
        length = 0;
        u->put_len = 0;

        if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                         "Content-Range: bytes */*")
            != NGX_OK)
        {
            goto failed;
        }

        break;

    default: /* NGX_HTTP_CLOUDAUTH_OP_CHUNK, NGX_HTTP_CLOUDAUTH_OP_FINAL */

        req.url = obj->session;
        ngx_str_set(&req.method, "PUT");

        u->put_len = u->len;
        length = (off_t) u->len;
        end = obj->offset + (off_t) u->len;

        if (op == NGX_HTTP_CLOUDAUTH_OP_CHUNK) {
            if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                 "Content-Range: bytes %O-%O/*",
                                 obj->offset, end - 1)
                != NGX_OK)
            {
                goto failed;
            }

            break;
        }

        if (u->len) {
            if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                     "Content-Range: bytes %O-%O/%O",
                                     obj->offset, end - 1, end)
                != NGX_OK)
            {
                goto failed;
            }

        } else if (ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                     "Content-Range: bytes */%O", end)
                   != NGX_OK)
        {
            goto failed;
        }

        crcbuf[0] = (u_char) (obj->crc32c >> 24);
        crcbuf[1] = (u_char) (obj->crc32c >> 16);
        crcbuf[2] = (u_char) (obj->crc32c >> 8);
        crcbuf[3] = (u_char) obj->crc32c;

        crc.data = crcbuf;
        crc.len = 4;
        md5.data = obj->md5_sum;
        md5.len = 16;

        hash.data = hashbuf;
        p = ngx_cpymem(hashbuf, "X-Goog-Hash: crc32c=",
                       sizeof("X-Goog-Hash: crc32c=") - 1);
        hash.len = 0;
        hash.data = p;
        ngx_encode_base64(&hash, &crc);
        p += hash.len;
        p = ngx_cpymem(p, ",md5=", 5);
        hash.data = p;
        ngx_encode_base64(&hash, &md5);
        last = p + hash.len;

        hash.data = hashbuf;
        hash.len = last - hashbuf;

        if (ngx_http_cloudauth_upload_header_add(pool, req.headers, "%V",
                                                 &hash)
            != NGX_OK)
        {
            goto failed;
        }

        break;
    }

    u->put_sent = 0;
    u->range = -1;
    ngx_str_null(&u->location);
    u->op = op;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: op %d offset %O len %O \"%V\"",
                   op, obj->offset, length, &obj->name);

    u->fetch = ngx_cloudauth_fetch_stream(&req, length,
                                          ngx_http_cloudauth_upload_send,
                                          NULL,
                                          ngx_http_cloudauth_upload_header,
                                          ngx_http_cloudauth_upload_done, u,
                                          r->connection->log);

    ngx_destroy_pool(pool);
    pool = NULL;

    if (u->fetch == NULL) {
        u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
        goto failed;
    }

    /* no byte moved for cloudauth_timeout: given up (and resumed) */
    u->moved = 0;
    ngx_add_timer(&u->stall, ngx_cloudauth_main_conf()->timeout);

    return NGX_AGAIN;

failed:

    if (pool) {
        ngx_destroy_pool(pool);
    }

    ngx_http_cloudauth_upload_fail(u, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL, 0);

    return NGX_ERROR;
}


static ssize_t
ngx_http_cloudauth_upload_send(ngx_cloudauth_fetch_t *f, u_char *buf,
    size_t size)
{
    ngx_http_cloudauth_upload_t *u = f->data;

    size_t  n;

    n = ngx_min(size, u->put_len - u->put_sent);

    ngx_memcpy(buf, u->buf + u->put_sent, n);
    u->put_sent += n;

    return n;
}


static void
ngx_http_cloudauth_upload_header(ngx_cloudauth_fetch_t *f, u_char *line,
    size_t len)
{
    ngx_http_cloudauth_upload_t *u = f->data;

    u_char  *p, *last;
    off_t    v;

    last = line + len;

    if (len > 5 && ngx_strncmp(line, "HTTP/", 5) == 0) {
        /* a new answer (after a 100 Continue, say) */
        u->range = -1;
        ngx_str_null(&u->location);
        return;
    }

    if (len > 9 && ngx_strncasecmp(line, (u_char *) "location:", 9) == 0
        && u->op == NGX_HTTP_CLOUDAUTH_OP_INIT)
    {
        for (p = line + 9; p < last && *p == ' '; p++) { /* void */ }

        u->location.len = last - p;
        u->location.data = ngx_pnalloc(u->request->pool, u->location.len + 1);
        if (u->location.data == NULL) {
            u->location.len = 0;
            return;
        }

        ngx_memcpy(u->location.data, p, u->location.len);
        u->location.data[u->location.len] = '\0';

        return;
    }

    if (len > 6 && ngx_strncasecmp(line, (u_char *) "range:", 6) == 0) {
        for (p = line + 6; p < last && *p == ' '; p++) { /* void */ }

        /* "bytes=0-N" */

        if (last - p > 8 && ngx_strncmp(p, "bytes=0-", 8) == 0) {
            v = ngx_atoof(p + 8, last - (p + 8));
            u->range = (v == NGX_ERROR) ? -2 : v;

        } else {
            u->range = -2;
        }
    }
}


static void
ngx_http_cloudauth_upload_done(ngx_cloudauth_fetch_t *f)
{
    ngx_http_cloudauth_upload_t *u = f->data;

    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_cloudauth_op_e   op;

    c = u->request->connection;

    op = u->op;
    u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
    u->fetch = NULL;

    if (u->stall.timer_set) {
        ngx_del_timer(&u->stall);
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: op %d answered %l in %M ms: %s",
                   op, f->status, f->duration, f->errbuf);

    rc = ngx_http_cloudauth_upload_answer(u, f, op);

    ngx_cloudauth_fetch_free(f);

    if (rc == NGX_OK) {
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


static ngx_uint_t
ngx_http_cloudauth_upload_retryable(long status)
{
    return status == 0 || status == 408 || status == 429 || status >= 500;
}


/* NGX_OK: go on; NGX_AGAIN: waiting for a retry; NGX_ERROR: failed */

static ngx_int_t
ngx_http_cloudauth_upload_answer(ngx_http_cloudauth_upload_t *u,
    ngx_cloudauth_fetch_t *f, ngx_http_cloudauth_op_e op)
{
    size_t                             n;
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = u->conf;

    if (ngx_http_cloudauth_upload_retryable(f->status)) {
        return ngx_http_cloudauth_upload_backoff(u,
                                 op == NGX_HTTP_CLOUDAUTH_OP_INIT
                                 ? NGX_HTTP_CLOUDAUTH_OP_INIT
                                 : NGX_HTTP_CLOUDAUTH_OP_QUERY, f);
    }

    if (op == NGX_HTTP_CLOUDAUTH_OP_INIT) {

        if (f->status == 200 || f->status == 201) {
            n = conf->origin.len;

            if (u->location.len <= n
                || ngx_strncasecmp(u->location.data, conf->origin.data, n)
                   != 0)
            {
                ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                   "GCS gave no session URI at the endpoint");
                return NGX_ERROR;
            }

            u->obj.session = u->location;
            u->fail_start = 0;
            u->attempts = 0;

            return NGX_OK;
        }

        if (f->status == 412) {
            ngx_http_cloudauth_upload_fail(u, NGX_HTTP_CONFLICT,
                                   "the object exists (overwrite=off)",
                                   sizeof("the object exists "
                                          "(overwrite=off)") - 1);
            return NGX_ERROR;
        }

        if (f->status == 401) {
            ngx_cloudauth_invalidate(u->ask.cred, &u->ask.subject,
                                     &u->ask.token,
                                     u->request->connection->log);
        }

        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                            "GCS refused the upload");
        return NGX_ERROR;
    }

    if (f->status == 308) {
        return ngx_http_cloudauth_upload_ack(u);
    }

    if (f->status == 200 || f->status == 201) {
        if (op == NGX_HTTP_CLOUDAUTH_OP_CHUNK || !u->obj.eof) {
            ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                   "GCS finished the object early");
            return NGX_ERROR;
        }

        return ngx_http_cloudauth_upload_stored(u, f);
    }

    if (f->status == 412) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_CONFLICT,
                                       "the object exists (overwrite=off)",
                                       sizeof("the object exists "
                                              "(overwrite=off)") - 1);
        return NGX_ERROR;
    }

    if (f->status == 404 || f->status == 410) {
        u->obj.session.len = 0;   /* gone: nothing to cancel */
        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                            "the upload session is gone");
        return NGX_ERROR;
    }

    ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                        "GCS refused a chunk");
    return NGX_ERROR;
}


/* GCS has bytes [0, range]: drop them from the buffer */

static ngx_int_t
ngx_http_cloudauth_upload_ack(ngx_http_cloudauth_upload_t *u)
{
    off_t                         committed, drop;
    ngx_http_cloudauth_object_t  *obj;

    obj = &u->obj;

    if (u->range == -2) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                       "GCS sent a malformed Range",
                                       sizeof("GCS sent a malformed Range")
                                       - 1);
        return NGX_ERROR;
    }

    committed = u->range + 1;

    if (committed < obj->offset
        || committed > obj->offset + (off_t) u->len)
    {
        ngx_log_error(NGX_LOG_ERR, u->request->connection->log, 0,
                      "cloudauth: upload: GCS reports %O bytes, we have "
                      "%O to %O", committed, obj->offset,
                      obj->offset + (off_t) u->len);

        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                                       "GCS reports a range we cannot resume",
                                       sizeof("GCS reports a range we cannot "
                                              "resume") - 1);
        return NGX_ERROR;
    }

    drop = committed - obj->offset;

    if (drop) {
        ngx_memmove(u->buf, u->buf + drop, u->len - (size_t) drop);
        u->len -= (size_t) drop;
        obj->offset = committed;

        u->fail_start = 0;
        u->attempts = 0;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_stored(ngx_http_cloudauth_upload_t *u,
    ngx_cloudauth_fetch_t *f)
{
    u_char                       *p;
    size_t                        len;
    json_t                       *root, *res;
    const char                   *name, *crc, *md5, *gen, *size, *bucket,
                                 *ctype;
    ngx_str_t                     s, enc;
    ngx_http_request_t           *r;
    ngx_cloudauth_stats_t        *st;
    ngx_http_cloudauth_object_t  *obj;
    u_char                        buf[64], raw[16];

    r = u->request;
    obj = &u->obj;

    root = f->body ? json_loadb((char *) f->body, f->body_len, 0, NULL) : NULL;

    name = crc = md5 = gen = size = bucket = ctype = NULL;

    if (root == NULL
        || json_unpack(root, "{s:s, s:s, s:s, s:s, s?s, s?s, s?s}",
                       "name", &name, "crc32c", &crc, "generation", &gen,
                       "size", &size, "md5Hash", &md5, "bucket", &bucket,
                       "contentType", &ctype)
           != 0)
    {
        json_decref(root);
        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                "GCS answered without the object's metadata");
        return NGX_ERROR;
    }

    /* what GCS stored is what we sent */

    raw[0] = (u_char) (obj->crc32c >> 24);
    raw[1] = (u_char) (obj->crc32c >> 16);
    raw[2] = (u_char) (obj->crc32c >> 8);
    raw[3] = (u_char) obj->crc32c;

    s.data = raw;
    s.len = 4;
    enc.data = buf;
    ngx_encode_base64(&enc, &s);

    if (ngx_strlen(crc) != enc.len
        || ngx_strncmp(crc, enc.data, enc.len) != 0
        || ngx_atoof((u_char *) size, ngx_strlen(size)) != obj->received
        || ngx_strlen(name) != obj->name.len
        || ngx_strncmp(name, obj->name.data, obj->name.len) != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cloudauth: upload: GCS stored \"%s\", %s bytes, "
                      "crc32c %s; we sent \"%V\", %O bytes, crc32c %V",
                      name, size, crc, &obj->name, obj->received, &enc);
        json_decref(root);
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                               "GCS stored other bytes than were sent",
                               sizeof("GCS stored other bytes than were "
                                      "sent") - 1);
        return NGX_ERROR;
    }

    s.data = obj->md5_sum;
    s.len = 16;
    enc.data = buf;
    ngx_encode_base64(&enc, &s);

    if (md5 && (ngx_strlen(md5) != enc.len
                || ngx_strncmp(md5, enc.data, enc.len) != 0))
    {
        json_decref(root);
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_GATEWAY,
                               "GCS stored other bytes than were sent (MD5)",
                               sizeof("GCS stored other bytes than were "
                                      "sent (MD5)") - 1);
        return NGX_ERROR;
    }

    /* https://storage.googleapis.com/BUCKET/NAME */

    len = sizeof(NGX_HTTP_CLOUDAUTH_GCS_URL "//") - 1
          + 3 * u->conf->bucket.len + 3 * obj->name.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        json_decref(root);
        return NGX_ERROR;
    }

    s.data = p;
    p = ngx_cpymem(p, NGX_HTTP_CLOUDAUTH_GCS_URL "/",
                   sizeof(NGX_HTTP_CLOUDAUTH_GCS_URL "/") - 1);
    p = ngx_http_cloudauth_upload_escape(p, u->conf->bucket.data,
                                         u->conf->bucket.len, 0);
    *p++ = '/';
    p = ngx_http_cloudauth_upload_escape(p, obj->name.data, obj->name.len, 1);
    s.len = p - s.data;

    res = json_pack("{s:s%, s:s%, s:I, s:s%, s:s, s:s%, s:s, s:s%}",
                    "bucket", u->conf->bucket.data, u->conf->bucket.len,
                    "name", obj->name.data, obj->name.len,
                    "size", (json_int_t) obj->received,
                    "contentType", obj->content_type.data,
                    obj->content_type.len,
                    "crc32c", crc,
                    "md5Hash", buf, enc.len,
                    "generation", gen,
                    "url", s.data, s.len);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "cloudauth: upload: stored \"%V\" in bucket \"%V\", "
                  "%O bytes, generation %s", &obj->name, &u->conf->bucket,
                  obj->received, gen);

    /* gen and crc point into root */
    json_decref(root);

    if (res == NULL) {
        return NGX_ERROR;
    }

    if (u->results == NULL) {
        u->results = json_array();
        if (u->results == NULL) {
            json_decref(res);
            return NGX_ERROR;
        }
    }

    json_array_append_new(u->results, res);

    /* $cloudauth_upload_object: the names, comma-separated */

    p = ngx_pnalloc(r->pool, u->names.len + 1 + obj->name.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    s.data = p;
    p = ngx_cpymem(p, u->names.data, u->names.len);

    if (u->names.len) {
        *p++ = ',';
    }

    p = ngx_cpymem(p, obj->name.data, obj->name.len);
    u->names.data = s.data;
    u->names.len = p - s.data;

    u->objects++;

    st = ngx_cloudauth_cache_stats();
    if (st) {
        (void) ngx_atomic_fetch_add(&st->upload_bytes, obj->received);
    }

    ngx_http_cloudauth_upload_close(u);

    return NGX_OK;
}


/* exponential back-off with jitter, then a status query (or a new start) */

static ngx_int_t
ngx_http_cloudauth_upload_backoff(ngx_http_cloudauth_upload_t *u,
    ngx_http_cloudauth_op_e op, ngx_cloudauth_fetch_t *f)
{
    ngx_msec_t           delay, elapsed;
    ngx_http_request_t  *r;

    r = u->request;

    if (u->fail_start == 0) {
        u->fail_start = ngx_current_msec;
        u->attempts = 0;
    }

    elapsed = ngx_current_msec - u->fail_start;

    if (elapsed >= NGX_HTTP_CLOUDAUTH_RETRY_WINDOW) {
        ngx_http_cloudauth_upload_gcs_error(u, f, NGX_HTTP_BAD_GATEWAY,
                                  "GCS kept failing for 60 s");
        return NGX_ERROR;
    }

    delay = NGX_HTTP_CLOUDAUTH_RETRY_FIRST << ngx_min(u->attempts, 4);
    delay = ngx_min(delay, NGX_HTTP_CLOUDAUTH_RETRY_MAX);

    /* equal jitter */
    delay = delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);
    delay = ngx_min(delay, NGX_HTTP_CLOUDAUTH_RETRY_WINDOW - elapsed);

    u->attempts++;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "cloudauth: upload: GCS answered %l%s%s, retrying in "
                  "%M ms (attempt %ui)", f->status, f->status ? "" : ": ",
                  f->status ? "" : f->errbuf, delay, u->attempts);

    u->retry_op = op;
    ngx_add_timer(&u->retry, delay);

    return NGX_AGAIN;
}


static void
ngx_http_cloudauth_upload_retry(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_cloudauth_upload_t  *u;

    u = (ngx_http_cloudauth_upload_t *)
            ((u_char *) ev - offsetof(ngx_http_cloudauth_upload_t, retry));
    c = u->request->connection;

    if (u->retry_op == NGX_HTTP_CLOUDAUTH_OP_QUERY) {
        if (ngx_http_cloudauth_upload_start(u, NGX_HTTP_CLOUDAUTH_OP_QUERY)
            == NGX_AGAIN)
        {
            ngx_http_cloudauth_upload_run(u);
        }

    } else {
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * curl's own low-speed limit averages over seconds and sees the chunk just
 * sent as progress: a GCS that takes a chunk and never answers is noticed
 * here instead, and treated like a dropped connection (query, resume)
 */

static void
ngx_http_cloudauth_upload_stall(ngx_event_t *ev)
{
    off_t                         moved;
    ngx_int_t                     rc;
    curl_off_t                    up, down;
    ngx_msec_t                    timeout;
    ngx_connection_t             *c;
    ngx_cloudauth_fetch_t        *f, stalled;
    ngx_http_cloudauth_op_e       op;
    ngx_http_cloudauth_upload_t  *u;

    u = (ngx_http_cloudauth_upload_t *)
            ((u_char *) ev - offsetof(ngx_http_cloudauth_upload_t, stall));
    c = u->request->connection;
    f = u->fetch;

    if (f == NULL) {
        return;
    }

    timeout = ngx_cloudauth_main_conf()->timeout;

    up = 0;
    down = 0;
    (void) curl_easy_getinfo(f->easy, CURLINFO_SIZE_UPLOAD_T, &up);
    (void) curl_easy_getinfo(f->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);

    moved = (off_t) (up + down);

    if (moved != u->moved) {
        u->moved = moved;
        ngx_add_timer(ev, timeout);
        return;
    }

    op = u->op;
    u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
    u->fetch = NULL;
    ngx_cloudauth_fetch_free(f);

    ngx_memzero(&stalled, sizeof(ngx_cloudauth_fetch_t));
    stalled.log = c->log;
    (void) ngx_snprintf((u_char *) stalled.errbuf, CURL_ERROR_SIZE - 1,
                        "no progress for %M ms%Z", timeout);

    rc = ngx_http_cloudauth_upload_answer(u, &stalled, op);

    if (rc == NGX_OK) {
        ngx_http_cloudauth_upload_run(u);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_cloudauth_upload_guard(ngx_event_t *ev)
{
    ngx_add_timer(ev, NGX_HTTP_CLOUDAUTH_GUARD);
}


static void
ngx_http_cloudauth_upload_gcs_error(ngx_http_cloudauth_upload_t *u,
    ngx_cloudauth_fetch_t *f, ngx_uint_t status, const char *what)
{
    u_char      *p;
    json_t      *root;
    const char  *msg;
    u_char       buf[512];

    msg = NULL;
    root = NULL;

    if (f->body_len) {
        root = json_loadb((char *) f->body, f->body_len, 0, NULL);

        if (root) {
            (void) json_unpack(root, "{s:{s:s}}", "error", "message", &msg);
        }
    }

    if (f->status == 0) {
        p = ngx_snprintf(buf, sizeof(buf), "%s: %s", what, f->errbuf);

    } else if (msg) {
        p = ngx_snprintf(buf, sizeof(buf), "%s: %l %s", what, f->status, msg);

    } else {
        p = ngx_snprintf(buf, sizeof(buf), "%s: %l %*s", what, f->status,
                         ngx_min(f->body_len, 200), f->body ? f->body
                                                            : (u_char *) "");
    }

    json_decref(root);

    ngx_http_cloudauth_upload_fail(u, status, (char *) buf, p - buf);
}


/* the end: failure, cancellation, success */

static void
ngx_http_cloudauth_upload_fail(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, const char *reason, size_t len)
{
    ngx_int_t               rc;
    ngx_uint_t              level;
    ngx_http_request_t     *r;
    ngx_cloudauth_stats_t  *st;

    r = u->request;

    if (u->finished) {
        return;
    }

    u->finished = 1;

    if (reason == NULL) {
        reason = "internal error";
        len = sizeof("internal error") - 1;
    }

    if (u->status.len == 0 || ngx_strcmp(u->status.data, "aborted") != 0) {
        ngx_str_set(&u->status, "failed");
    }

    level = r->connection->error ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, r->connection->log, 0,
                  "cloudauth: upload of \"%V\" failed (%ui): %*s",
                  &u->obj.name, status, len, reason);

    ngx_http_cloudauth_upload_abort(u);

    if (u->active) {
        u->active = 0;

        st = ngx_cloudauth_cache_stats();
        if (st) {
            (void) ngx_atomic_fetch_add(&st->uploads_active, -1);
            (void) ngx_atomic_fetch_add(&st->uploads_failed, 1);
        }
    }

    if (r->connection->error || status == NGX_HTTP_REQUEST_TIME_OUT) {
        ngx_http_finalize_request(r, status);
        return;
    }

    rc = ngx_http_cloudauth_upload_reject(r, &u->cors_origin, status, reason,
                                          len);

    ngx_http_finalize_request(r, rc);
}


static void
ngx_http_cloudauth_upload_abort(ngx_http_cloudauth_upload_t *u)
{
    ngx_cloudauth_cancel(&u->ask);

    if (u->fetch) {
        ngx_cloudauth_fetch_free(u->fetch);
        u->fetch = NULL;
        u->op = NGX_HTTP_CLOUDAUTH_OP_NONE;
    }

    if (u->retry.timer_set) {
        ngx_del_timer(&u->retry);
    }

    if (u->stall.timer_set) {
        ngx_del_timer(&u->stall);
    }

    if (u->guard.timer_set) {
        ngx_del_timer(&u->guard);
    }

    if (u->obj.open && u->obj.session.len) {
        ngx_http_cloudauth_upload_cancel(u);
    }

    ngx_http_cloudauth_upload_close(u);
}


/* DELETE on the session URI: GCS drops what it has; nobody waits for it */

static void
ngx_http_cloudauth_upload_cancel(ngx_http_cloudauth_upload_t *u)
{
    ngx_pool_t               *pool;
    ngx_cloudauth_fetch_t    *f;
    ngx_cloudauth_request_t   req;

    pool = ngx_create_pool(1024, ngx_cycle->log);
    if (pool == NULL) {
        return;
    }

    ngx_memzero(&req, sizeof(ngx_cloudauth_request_t));

    req.url = u->obj.session;
    ngx_str_set(&req.method, "DELETE");

    req.headers = ngx_array_create(pool, 1, sizeof(ngx_str_t));

    if (req.headers
        && ngx_http_cloudauth_upload_header_add(pool, req.headers,
                                                "Authorization: Bearer %V",
                                                &u->ask.token)
           == NGX_OK)
    {
        ngx_log_error(NGX_LOG_INFO, u->request->connection->log, 0,
                      "cloudauth: upload: cancelling the session of \"%V\"",
                      &u->obj.name);

        f = ngx_cloudauth_fetch_stream(&req, -1, NULL, NULL, NULL,
                                       ngx_http_cloudauth_upload_cancelled,
                                       NULL, ngx_cycle->log);
        if (f == NULL) {
            ngx_log_error(NGX_LOG_ERR, u->request->connection->log, 0,
                          "cloudauth: upload: cannot cancel the session");
        }
    }

    ngx_destroy_pool(pool);
}


static void
ngx_http_cloudauth_upload_cancelled(ngx_cloudauth_fetch_t *f)
{
    ngx_uint_t  level;

    /* GCS answers 499 to a cancellation */

    level = (f->status == 499 || f->status == 204 || f->status == 200)
            ? NGX_LOG_INFO : NGX_LOG_WARN;

    ngx_log_error(level, f->log, 0,
                  "cloudauth: upload: session cancelled: %l %s", f->status,
                  f->status ? "" : f->errbuf);

    ngx_cloudauth_fetch_free(f);
}


static void
ngx_http_cloudauth_upload_finish(ngx_http_cloudauth_upload_t *u)
{
    json_t                 *body;
    ngx_int_t               rc;
    ngx_http_request_t     *r;
    ngx_cloudauth_stats_t  *st;

    r = u->request;

    if (u->objects == 0) {
        ngx_http_cloudauth_upload_fail(u, NGX_HTTP_BAD_REQUEST,
                                       "the form has no file",
                                       sizeof("the form has no file") - 1);
        return;
    }

    u->finished = 1;
    ngx_str_set(&u->status, "stored");

    if (u->guard.timer_set) {
        ngx_del_timer(&u->guard);
    }

    if (u->active) {
        u->active = 0;

        st = ngx_cloudauth_cache_stats();
        if (st) {
            (void) ngx_atomic_fetch_add(&st->uploads_active, -1);
            (void) ngx_atomic_fetch_add(&st->uploads_completed, 1);
        }
    }

    body = u->multipart ? u->results : json_array_get(u->results, 0);

    rc = ngx_http_cloudauth_upload_respond(r, &u->cors_origin,
                                           NGX_HTTP_CREATED, body);

    ngx_http_finalize_request(r, rc);
}


static void
ngx_http_cloudauth_upload_cleanup(void *data)
{
    ngx_http_cloudauth_upload_t  *u = data;

    ngx_cloudauth_stats_t  *st;

    if (!u->finished) {
        /* the client went away: nothing half-written stays */
        ngx_str_set(&u->status, "aborted");
    }

    ngx_http_cloudauth_upload_abort(u);

    if (u->active) {
        u->active = 0;

        st = ngx_cloudauth_cache_stats();
        if (st) {
            (void) ngx_atomic_fetch_add(&st->uploads_active, -1);
            (void) ngx_atomic_fetch_add(&st->uploads_failed, 1);
        }
    }

    if (u->buf) {
        ngx_http_cloudauth_upload_buf_free(u->buf, u->conf->chunk_size,
                                           ngx_cycle->log);
        u->buf = NULL;
    }

    if (u->results) {
        json_decref(u->results);
        u->results = NULL;
    }
}


/* responses */

static ngx_int_t
ngx_http_cloudauth_upload_respond(ngx_http_request_t *r, ngx_str_t *origin,
    ngx_uint_t status, json_t *body)
{
    char             *s;
    size_t            len;
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    s = json_dumps(body, JSON_COMPACT|JSON_ENSURE_ASCII);
    if (s == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(s);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL) {
        free(s);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->pos, s, len);
    *b->last++ = LF;
    b->last_buf = 1;
    b->last_in_chain = 1;
    free(s);

    if (origin && origin->len) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Access-Control-Allow-Origin");
        h->value = *origin;

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Vary");
        ngx_str_set(&h->value, "Origin");
    }

    if (status == NGX_HTTP_NOT_ALLOWED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        ngx_str_set(&h->value, "PUT, POST, OPTIONS");
    }

    r->headers_out.status = status;
    r->headers_out.content_type = ngx_http_cloudauth_upload_json;
    r->headers_out.content_type_len = ngx_http_cloudauth_upload_json.len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_cloudauth_upload_reject(ngx_http_request_t *r, ngx_str_t *origin,
    ngx_uint_t status, const char *reason, size_t len)
{
    json_t     *body;
    ngx_int_t   rc;

    if (r->request_body == NULL
        && ngx_http_discard_request_body(r) != NGX_OK)
    {
        r->keepalive = 0;
    }

    body = json_pack("{s:{s:i, s:s%}}", "error", "code", (int) status,
                     "message", reason, len);
    if (body == NULL) {
        /* the reason is not UTF-8 */
        body = json_pack("{s:{s:i, s:s}}", "error", "code", (int) status,
                         "message", "bad request");
        if (body == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    rc = ngx_http_cloudauth_upload_respond(r, origin, status, body);

    json_decref(body);

    return rc;
}


static ngx_str_t *
ngx_http_cloudauth_upload_cors(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf)
{
    ngx_str_t        *o, *origin;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (conf->cors == NULL) {
        return NULL;
    }

    origin = NULL;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            if (h[i].key.len == 6
                && ngx_strncasecmp(h[i].key.data, (u_char *) "Origin", 6)
                   == 0)
            {
                origin = &h[i].value;
            }
        }
    }

    if (origin == NULL) {
        return NULL;
    }

    o = conf->cors->elts;

    for (i = 0; i < conf->cors->nelts; i++) {
        if ((o[i].len == 1 && o[i].data[0] == '*')
            || (o[i].len == origin->len
                && ngx_strncasecmp(o[i].data, origin->data, o[i].len) == 0))
        {
            return origin;
        }
    }

    return NULL;
}


/* names */

static const char *
ngx_http_cloudauth_upload_check_name(ngx_str_t *name)
{
    size_t  i;

    if (name->len == 0) {
        return "the object name is empty";
    }

    if (name->len > NGX_HTTP_CLOUDAUTH_NAME_MAX) {
        return "the object name is longer than 1024 bytes";
    }

    for (i = 0; i < name->len; i++) {
        if (name->data[i] == CR || name->data[i] == LF) {
            return "the object name contains CR or LF";
        }
    }

    if (!ngx_http_cloudauth_upload_utf8(name->data, name->len)) {
        return "the object name is not UTF-8";
    }

    if ((name->len == 1 && name->data[0] == '.')
        || (name->len == 2 && name->data[0] == '.' && name->data[1] == '.'))
    {
        return "the object name is \".\" or \"..\"";
    }

    if (name->len >= sizeof(".well-known/acme-challenge/") - 1
        && ngx_strncmp(name->data, ".well-known/acme-challenge/",
                       sizeof(".well-known/acme-challenge/") - 1) == 0)
    {
        return "the object name starts with .well-known/acme-challenge/";
    }

    return NULL;
}


static ngx_int_t
ngx_http_cloudauth_upload_utf8(u_char *p, size_t len)
{
    u_char  *last;

    last = p + len;

    while (p < last) {
        if (*p < 0x80) {
            p++;
            continue;
        }

        if (ngx_utf8_decode(&p, last - p) > 0x10ffff) {
            return 0;
        }
    }

    return 1;
}


/*
 * $cloudauth_filename: the last path segment, without control characters
 * and characters that trouble shells and URLs; "file" when nothing is left.
 */

static void
ngx_http_cloudauth_upload_sanitize(ngx_pool_t *pool, ngx_str_t *in,
    ngx_str_t *out)
{
    u_char  *p, *last, *start, *d, *s, *cp;
    size_t   n;

    p = in->data;
    last = in->data + in->len;

    for (start = p; p < last; p++) {
        if (*p == '/' || *p == '\\') {
            start = p + 1;
        }
    }

    out->data = ngx_pnalloc(pool, ngx_max(last - start, 4));
    if (out->data == NULL) {
        ngx_str_set(out, "file");
        return;
    }

    d = out->data;
    p = start;

    /* no leading dots or blanks: no ".", "..", hidden files */
    while (p < last && (*p == '.' || *p == ' ')) {
        p++;
    }

    while (p < last) {

        if (*p >= 0x80) {
            s = p;

            if (ngx_utf8_decode(&p, last - p) > 0x10ffff) {
                *d++ = '_';
                p = s + 1;
                continue;
            }

            n = p - s;

            if ((size_t) (d - out->data) + n > NGX_HTTP_CLOUDAUTH_FILENAME_MAX)
            {
                break;
            }

            d = ngx_cpymem(d, s, n);
            continue;
        }

        if ((size_t) (d - out->data) >= NGX_HTTP_CLOUDAUTH_FILENAME_MAX) {
            break;
        }

        if (*p < 0x20 || *p == 0x7f) {
            p++;
            continue;
        }

        switch (*p) {
        case '"': case '#': case '%': case '*': case ':': case '<':
        case '>': case '?': case '[': case ']': case '|': case '`':
        case '\'': case '$': case '&': case ';': case '^': case '{':
        case '}': case '~': case '=': case '+': case ',': case '@':
        case '!':
            *d++ = '_';
            break;
        default:
            *d++ = *p;
        }

        p++;
    }

    cp = d;

    while (cp > out->data && cp[-1] == ' ') {
        cp--;
    }

    out->len = cp - out->data;

    if (out->len == 0) {
        ngx_str_set(out, "file");
    }
}


/*
 * The chunk buffer is mapped, not malloc()ed: only the pages a body
 * touches become resident, and all of it goes back to the system when the
 * upload ends (malloc() would keep a freed buffer this size in its heap).
 */

static u_char *
ngx_http_cloudauth_upload_buf_alloc(size_t size, ngx_log_t *log)
{
    u_char  *p;

    p = mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS,
             -1, 0);

    if (p == MAP_FAILED) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "cloudauth: mmap(%uz) for an upload failed", size);
        return NULL;
    }

    return p;
}


static void
ngx_http_cloudauth_upload_buf_free(u_char *buf, size_t size, ngx_log_t *log)
{
    if (munmap(buf, size) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "cloudauth: munmap() of an upload buffer failed");
    }
}


/* percent-encoding: all but unreserved characters (and "/" in a path) */

static u_char *
ngx_http_cloudauth_upload_escape(u_char *dst, u_char *src, size_t len,
    ngx_uint_t path)
{
    static u_char  hex[] = "0123456789ABCDEF";

    u_char  c;

    while (len--) {
        c = *src++;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
            || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
            || c == '~' || (path && c == '/'))
        {
            *dst++ = c;
            continue;
        }

        *dst++ = '%';
        *dst++ = hex[c >> 4];
        *dst++ = hex[c & 0xf];
    }

    return dst;
}


static ngx_int_t
ngx_http_cloudauth_upload_header_add(ngx_pool_t *pool, ngx_array_t *headers,
    const char *fmt, ...)
{
    u_char     *p;
    va_list     args;
    ngx_str_t  *h;
    u_char      buf[NGX_CLOUDAUTH_MAX_TOKEN + 256];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    h = ngx_array_push(headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->len = p - buf;
    h->data = ngx_pnalloc(pool, h->len);
    if (h->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(h->data, buf, h->len);
    ngx_explicit_memzero(buf, h->len);

    return NGX_OK;
}


/* variables */

static ngx_int_t
ngx_http_cloudauth_upload_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                            *p;
    ngx_str_t                         *s;
    ngx_http_cloudauth_upload_t       *u;
    ngx_http_cloudauth_upload_conf_t  *conf;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    if (u == NULL) {
        conf = ngx_http_get_module_loc_conf(r,
                                            ngx_http_cloudauth_upload_module);

        if (conf->cred == NULL || r->method == NGX_HTTP_OPTIONS
            || (data != NGX_HTTP_CLOUDAUTH_VAR_STATUS
                && data != NGX_HTTP_CLOUDAUTH_VAR_BYTES))
        {
            v->not_found = 1;
            return NGX_OK;
        }

        /* refused before the upload began (a method, a size) */

        if (data == NGX_HTTP_CLOUDAUTH_VAR_STATUS) {
            v->len = sizeof("rejected") - 1;
            v->data = (u_char *) "rejected";

        } else {
            v->len = 1;
            v->data = (u_char *) "0";
        }

        goto found;
    }

    switch (data) {

    case NGX_HTTP_CLOUDAUTH_VAR_BYTES:
        p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->len = ngx_sprintf(p, "%O", u->bytes) - p;
        v->data = p;
        goto found;

    case NGX_HTTP_CLOUDAUTH_VAR_FILENAME:
        s = &u->filename;
        break;

    case NGX_HTTP_CLOUDAUTH_VAR_OBJECT:
        s = &u->names;
        break;

    default: /* NGX_HTTP_CLOUDAUTH_VAR_STATUS */
        s = &u->status;
        break;
    }

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;

found:

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_cloudauth_upload_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* configuration */

static void *
ngx_http_cloudauth_upload_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cloudauth_upload_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->cred = NULL;
     *     conf->object = NULL;
     *     conf->cors = NULL;
     */

    conf->max_size = -1;

    return conf;
}


static char *
ngx_http_cloudauth_upload(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cloudauth_upload_conf_t *ucf = conf;

    u_char                            *p, *q, *last;
    ssize_t                            size;
    ngx_str_t                         *value, v, *o;
    ngx_uint_t                         i;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_compile_complex_value_t   ccv;

    if (ucf->cred) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ucf->cred = ngx_cloudauth_find_cred(cf, &value[1]);
    if (ucf->cred == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: no cloudauth_credential "
                           "\"%V\" (define it at http level, before)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&ucf->endpoint, NGX_HTTP_CLOUDAUTH_GCS_URL);
    ucf->overwrite = 0;
    ucf->chunk_size = NGX_HTTP_CLOUDAUTH_CHUNK;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "bucket=", 7) == 0) {
            ucf->bucket.data = value[i].data + 7;
            ucf->bucket.len = value[i].len - 7;

            for (p = ucf->bucket.data;
                 p < ucf->bucket.data + ucf->bucket.len;
                 p++)
            {
                if (!(ngx_http_cloudauth_upload_token_char(*p) || *p == '.')
                    || (*p >= 'A' && *p <= 'Z'))
                {
                    return "has an invalid \"bucket=\": lowercase letters, "
                           "digits, \"-\", \"_\" and \".\"";
                }
            }

            if (ucf->bucket.len < 3 || ucf->bucket.len > 222) {
                return "has an invalid \"bucket=\" length";
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "object=", 7) == 0) {
            v.data = value[i].data + 7;
            v.len = value[i].len - 7;

            if (v.len == 0) {
                return "has an empty \"object=\"";
            }

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &v;
            ccv.complex_value = ngx_palloc(cf->pool,
                                           sizeof(ngx_http_complex_value_t));
            if (ccv.complex_value == NULL) {
                return NGX_CONF_ERROR;
            }

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            ucf->object = ccv.complex_value;
            continue;
        }

        if (ngx_strncmp(value[i].data, "endpoint=", 9) == 0) {
            v.data = value[i].data + 9;
            v.len = value[i].len - 9;

            while (v.len && v.data[v.len - 1] == '/') {
                v.len--;
            }

            if (ngx_cloudauth_check_url(cf, ucf->cred, "endpoint=", &v, 0)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            ucf->endpoint = v;
            continue;
        }

        if (ngx_strcmp(value[i].data, "overwrite=on") == 0) {
            ucf->overwrite = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "overwrite=off") == 0) {
            ucf->overwrite = 0;
            continue;
        }

        if (ngx_strncmp(value[i].data, "chunk_size=", 11) == 0) {
            v.data = value[i].data + 11;
            v.len = value[i].len - 11;

            size = ngx_parse_size(&v);

            if (size == NGX_ERROR || size < NGX_HTTP_CLOUDAUTH_QUANTUM
                || size % NGX_HTTP_CLOUDAUTH_QUANTUM)
            {
                return "has an invalid \"chunk_size=\": a multiple of 256k";
            }

            ucf->chunk_size = (size_t) size;
            continue;
        }

        if (ngx_strncmp(value[i].data, "max_size=", 9) == 0) {
            v.data = value[i].data + 9;
            v.len = value[i].len - 9;

            ucf->max_size = ngx_parse_offset(&v);

            if (ucf->max_size == NGX_ERROR) {
                return "has an invalid \"max_size=\"";
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "cors=", 5) == 0) {
            if (ucf->cors == NULL) {
                ucf->cors = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
                if (ucf->cors == NULL) {
                    return NGX_CONF_ERROR;
                }
            }

            p = value[i].data + 5;
            last = value[i].data + value[i].len;

            while (p < last) {
                q = ngx_strlchr(p, last, ',');
                if (q == NULL) {
                    q = last;
                }

                if (q > p) {
                    o = ngx_array_push(ucf->cors);
                    if (o == NULL) {
                        return NGX_CONF_ERROR;
                    }

                    o->data = p;
                    o->len = q - p;
                }

                p = q + 1;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: unknown parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    if (ucf->bucket.len == 0) {
        return "needs \"bucket=\"";
    }

    /* the origin of the endpoint: session URIs must stay there */

    p = ngx_strnstr(ucf->endpoint.data, "://", ucf->endpoint.len);
    if (p == NULL) {
        return "has an invalid \"endpoint=\"";
    }

    p += 3;
    last = ucf->endpoint.data + ucf->endpoint.len;
    q = ngx_strlchr(p, last, '/');

    ucf->origin.len = (q ? q : last) - ucf->endpoint.data + 1;
    ucf->origin.data = ngx_pnalloc(cf->pool, ucf->origin.len);
    if (ucf->origin.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(ucf->origin.data, ucf->endpoint.data, ucf->origin.len - 1);
    ucf->origin.data[ucf->origin.len - 1] = '/';

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_cloudauth_upload_handler;

    return NGX_CONF_OK;
}
