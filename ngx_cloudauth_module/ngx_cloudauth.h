
/*
 * Copyright (C) ngx_cloudauth authors
 */


#ifndef _NGX_CLOUDAUTH_H_INCLUDED_
#define _NGX_CLOUDAUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/evp.h>


#define NGX_CLOUDAUTH_MAX_TOKEN       8192
#define NGX_CLOUDAUTH_MAX_SUBJECT     256
#define NGX_CLOUDAUTH_MAX_ERROR       256
#define NGX_CLOUDAUTH_MAX_RESPONSE    65536
#define NGX_CLOUDAUTH_FP_LEN          32
#define NGX_CLOUDAUTH_ZONE_SECRET_LEN 32

/* token requests one credential has in flight, across all workers */
#define NGX_CLOUDAUTH_CONCURRENCY     8
#define NGX_CLOUDAUTH_MAX_CONCURRENCY 1024


typedef struct ngx_cloudauth_cred_s   ngx_cloudauth_cred_t;
typedef struct ngx_cloudauth_kind_s   ngx_cloudauth_kind_t;
typedef struct ngx_cloudauth_ask_s    ngx_cloudauth_ask_t;
typedef struct ngx_cloudauth_main_conf_s  ngx_cloudauth_main_conf_t;


/* an outbound HTTP request, as a kind describes it */

typedef struct {
    ngx_str_t                  url;
    ngx_str_t                  method;      /* empty: GET, or POST if body */
    ngx_str_t                  body;
    ngx_array_t               *headers;     /* of ngx_str_t "Name: value" */
    ngx_str_t                  userpwd;     /* HTTP Basic "user:password" */
    ngx_str_t                  source_token; /* the source credential's */
    ngx_str_t                  name;        /* whose, for the debug log */
} ngx_cloudauth_request_t;


/* a token endpoint's answer, as the kinds read it */

typedef struct {
    long                       status;      /* 0: none (see truncated) */
    ngx_str_t                  body;
    time_t                     date;        /* its Date header, or 0 */
    unsigned                   truncated:1; /* larger than 64 KiB: cut */
} ngx_cloudauth_answer_t;


/* what a kind makes of a token endpoint's answer */

typedef struct {
    ngx_str_t                  token;
    time_t                     expires_in;
    ngx_str_t                  error;       /* provider's words, for logs */
    unsigned                   terminal:1;  /* retrying soon will not help */
} ngx_cloudauth_result_t;


struct ngx_cloudauth_kind_s {
    ngx_str_t                  name;
    unsigned                   subject:1;   /* supports subjects */

    /* parse parameters (ngx_cloudauth_param()), load files */
    char                    *(*init)(ngx_conf_t *cf,
                                     ngx_cloudauth_cred_t *cred);

    /* sign a token locally, or NULL */
    ngx_int_t                (*sign)(ngx_cloudauth_cred_t *cred,
                                     ngx_str_t *subject, ngx_pool_t *pool,
                                     ngx_cloudauth_result_t *res,
                                     ngx_log_t *log);

    /* describe the token request */
    ngx_int_t                (*build)(ngx_cloudauth_cred_t *cred,
                                      ngx_str_t *subject, ngx_pool_t *pool,
                                      ngx_cloudauth_request_t *req,
                                      ngx_log_t *log);

    /* read the answer */
    ngx_int_t                (*parse)(ngx_cloudauth_cred_t *cred,
                                      ngx_cloudauth_answer_t *a,
                                      ngx_pool_t *pool,
                                      ngx_cloudauth_result_t *res);

    /* a Google kind: takes quota_project= (x-goog-user-project) */
    ngx_uint_t                 quota;
};


struct ngx_cloudauth_cred_s {
    ngx_str_t                  name;
    ngx_uint_t                 index;
    ngx_cloudauth_main_conf_t *conf;        /* its zone, its timeout */
    ngx_cloudauth_kind_t      *kind;
    void                      *data;        /* the kind's own */

    ngx_str_t                  subject;     /* default subject */
    ngx_str_t                  quota_project; /* x-goog-user-project */
    ngx_regex_t               *subjects;    /* allowed request subjects */

    /* a credential whose token authorises this one's token request */
    ngx_cloudauth_cred_t      *source;

    ngx_uint_t                 concurrency; /* token requests in flight at
                                               most; 0: signs, makes none */

    /* the engine's: this worker's groups waiting for a request slot */
    ngx_queue_t                slot_queue;

    /* identity of the credential: name, kind, key, scopes, endpoint */
    u_char                     fp[NGX_CLOUDAUTH_FP_LEN];

    ngx_array_t               *params;      /* ngx_keyval_t, while parsing */
    ngx_uint_t                *used;        /* which params were read */
    u_char                    *file;        /* where it was defined */
    ngx_uint_t                 line;
};


struct ngx_cloudauth_main_conf_s {
    ngx_array_t                creds;       /* ngx_cloudauth_cred_t * */
    ngx_array_t                named;       /* those "cloudauth $var" can
                                               name (no "."), by name */
    size_t                     zone_size;
    ngx_shm_zone_t            *shm_zone;
    ngx_str_t                  trusted_certificate;
    ngx_msec_t                 timeout;
    ngx_array_t               *masked;      /* ngx_str_t "name:" of header= */
};


/* cache status of one request, for $cloudauth_cache_status */

typedef enum {
    NGX_CLOUDAUTH_NONE = 0,
    NGX_CLOUDAUTH_HIT,
    NGX_CLOUDAUTH_STALE,
    NGX_CLOUDAUTH_MISS,
    NGX_CLOUDAUTH_WAIT,
    NGX_CLOUDAUTH_ERROR
} ngx_cloudauth_cache_status_e;


typedef void (*ngx_cloudauth_ask_handler_pt)(ngx_cloudauth_ask_t *ask);

/* one request's question to the engine: the token for (cred, subject) */

struct ngx_cloudauth_ask_s {
    ngx_cloudauth_cred_t          *cred;
    ngx_str_t                      subject;
    ngx_pool_t                    *pool;        /* token is copied here */
    ngx_log_t                     *log;

    ngx_cloudauth_ask_handler_pt   handler;     /* after NGX_AGAIN */
    void                          *data;

    ngx_str_t                      token;       /* on NGX_OK */
    time_t                         expires_at;
    time_t                         obtained_at; /* when it was fetched */
    ngx_str_t                      reason;      /* on NGX_DECLINED */
    ngx_cloudauth_cache_status_e   cache_status;

    ngx_queue_t                    queue;       /* in a wait group */
    void                          *group;
    unsigned                       waiting:1;
};


/* counters of the whole zone, shared by the workers (atomic updates) */

typedef struct {
    ngx_atomic_t               uploads_active;
    ngx_atomic_t               uploads_completed;
    ngx_atomic_t               uploads_failed;
    ngx_atomic_t               upload_bytes;
    /* the active ones again, by process slot: a killed worker's are known */
    ngx_atomic_t               uploads_slot[NGX_MAX_PROCESSES];
} ngx_cloudauth_stats_t;


/* the key of a cache entry: a credential's identity and a subject */

typedef struct {
    u_char                    *fp;
    ngx_str_t                 *name;
    ngx_str_t                 *subject;
} ngx_cloudauth_key_t;


/* what ngx_cloudauth_cache_take() found, and did for its caller */

typedef enum {
    NGX_CLOUDAUTH_TAKE_TOKEN = 0,   /* a usable token, copied out */
    NGX_CLOUDAUTH_TAKE_FETCH,       /* none; claimed: the caller fetches */
    NGX_CLOUDAUTH_TAKE_WAIT,        /* none; another claim is running */
    NGX_CLOUDAUTH_TAKE_QUEUE,       /* none; no request slot free: poll */
    NGX_CLOUDAUTH_TAKE_BACKOFF,     /* none; fetches fail, do not wait */
    NGX_CLOUDAUTH_TAKE_FULL,        /* no room for the entry */
    NGX_CLOUDAUTH_TAKE_NOMEM        /* no memory for the token's copy */
} ngx_cloudauth_take_e;


#define NGX_CLOUDAUTH_COUNT_NONE     0  /* a poll: counts nothing */
#define NGX_CLOUDAUTH_COUNT_REQUEST  1  /* a hit, or a miss that waits */
#define NGX_CLOUDAUTH_COUNT_SIGN     2  /* a hit, or a miss signed at once */

typedef struct {
    /* in */
    ngx_msec_t                 claim_for;   /* how long a new claim holds */
    ngx_pool_t                *pool;        /* the token is copied here */
    ngx_uint_t                 count;       /* NGX_CLOUDAUTH_COUNT_* */
    ngx_uint_t                 concurrency; /* a claim needs a slot of
                                               so many; 0: no slot */
    unsigned                   refresh:1;   /* claim a token due for it */

    /* out */
    ngx_str_t                  token;
    time_t                     expires_at;  /* seconds, wall clock */
    time_t                     obtained_at; /* seconds, wall clock */
    ngx_uint_t                 claim;       /* the caller's claim, or 0 */
    unsigned                   stale:1;     /* in its refresh window */
} ngx_cloudauth_take_t;


/* a fresh token and its times, milliseconds on the wall clock */

typedef struct {
    ngx_str_t                  token;
    uint64_t                   expires_at;
    uint64_t                   refresh_at;
    uint64_t                   usable_until;
    uint64_t                   refresh_again; /* if it is the token held */
} ngx_cloudauth_fresh_t;


typedef enum {
    NGX_CLOUDAUTH_INVALIDATE_NONE = 0,  /* not the cached token */
    NGX_CLOUDAUTH_INVALIDATE_DROPPED,
    NGX_CLOUDAUTH_INVALIDATE_KEPT       /* dropped one too recently */
} ngx_cloudauth_invalidate_e;


typedef ngx_msec_t (*ngx_cloudauth_backoff_pt)(ngx_uint_t failures,
    void *data);


/* what the cache counts of an entry, and the status page sums */

typedef struct {
    ngx_uint_t                 hits;
    ngx_uint_t                 misses;
    ngx_uint_t                 fetches;
    ngx_uint_t                 fetch_failures;
    ngx_uint_t                 waiters;
    ngx_uint_t                 invalidations;
    ngx_uint_t                 unauthorized_kept; /* 401s not acted on */
} ngx_cloudauth_counters_t;


/* an entry as the status page sees it: a copy, never a token */

typedef struct {
    u_char                     subject[NGX_CLOUDAUTH_MAX_SUBJECT];
    size_t                     subject_len;
    u_char                     error[NGX_CLOUDAUTH_MAX_ERROR];
    size_t                     error_len;
    const char                *state;
    time_t                     expires_in;
    time_t                     last_refresh;
    ngx_cloudauth_counters_t   counts;
} ngx_cloudauth_entry_t;


/*
 * What the status page asks of the cache about one credential, and gets:
 * copies of up to limit of its entries, most recently used first, and
 * sums over all of them.
 */

typedef struct {
    ngx_cloudauth_cred_t      *cred;        /* in: the caller's */
    ngx_uint_t                 limit;       /* in: entries copied at most */
    ngx_array_t               *entries;     /* ngx_cloudauth_entry_t, made
                                               by the snapshot */

    ngx_uint_t                 total;       /* entries, also those left out */
    ngx_cloudauth_counters_t   counts;      /* summed */
    time_t                     soonest;     /* the soonest expires_in, or 0 */
} ngx_cloudauth_census_t;


/* how much of the zone is taken, in bytes (whole pages) */

typedef struct {
    size_t                     size;
    size_t                     used;
} ngx_cloudauth_usage_t;


/* ngx_cloudauth_module.c */
extern ngx_module_t  ngx_http_cloudauth_module;

/* ngx_cloudauth_registry.c */
extern ngx_cloudauth_kind_t  *ngx_cloudauth_kinds[];
char *ngx_cloudauth_registry_credential(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* ngx_cloudauth_conf.c: what the kinds call while they read parameters */
ngx_uint_t ngx_cloudauth_isalnum(u_char ch);
ngx_str_t *ngx_cloudauth_param(ngx_cloudauth_cred_t *cred, char *name);
ngx_cloudauth_cred_t *ngx_cloudauth_find_cred(ngx_cloudauth_main_conf_t *cmcf,
    ngx_str_t *name);
char *ngx_cloudauth_check_url(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    char *param, ngx_str_t *url, ngx_uint_t allow_metadata);
char *ngx_cloudauth_fingerprint(ngx_cloudauth_cred_t *cred, ngx_str_t *parts,
    ngx_uint_t n);
ngx_int_t ngx_cloudauth_read_file(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_str_t *path, ngx_str_t *out, char **err);
ngx_int_t ngx_cloudauth_secret(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    char *name, ngx_str_t *secret);
char *ngx_cloudauth_quota_project(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    const char *value, const char *from);

/* ngx_cloudauth_url.c: where requests may go (configuration and fetch) */
char *ngx_cloudauth_url_check(ngx_str_t *url, ngx_uint_t metadata,
    char **norm, ngx_uint_t *https, ngx_log_t *log);

/* ngx_cloudauth_file.c: a small file, read without blocking */
ngx_int_t ngx_cloudauth_read_small(u_char *path, ngx_pool_t *pool,
    ngx_str_t *out, struct stat *sb, char **err, ngx_err_t *errn,
    ngx_log_t *log);

/* ngx_cloudauth_request.c: building outbound requests */
#define NGX_CLOUDAUTH_FORM  "Content-Type: application/x-www-form-urlencoded"
#define NGX_CLOUDAUTH_JSON  "Content-Type: application/json"
ngx_int_t ngx_cloudauth_set_body(ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, u_char *data, size_t len,
    const char *content_type);
u_char *ngx_cloudauth_form_escape(u_char *dst, ngx_str_t *src);
size_t ngx_cloudauth_form_escape_len(ngx_str_t *src);
char *ngx_cloudauth_copy_cstr(ngx_pool_t *pool, ngx_str_t *s);

/* ngx_cloudauth_header.c: the one builder of outbound header lines */
ngx_int_t ngx_cloudauth_header_printf(ngx_pool_t *pool,
    ngx_cloudauth_request_t *req, const char *fmt, ...);

/* ngx_cloudauth_answer.c: reading token endpoints' answers (pure) */
ngx_int_t ngx_cloudauth_oauth_parse(ngx_cloudauth_answer_t *a,
    ngx_pool_t *pool, ngx_cloudauth_result_t *res, const char *field);
ngx_int_t ngx_cloudauth_plain_parse(ngx_cloudauth_answer_t *a,
    ngx_pool_t *pool, ngx_cloudauth_result_t *res);
ngx_int_t ngx_cloudauth_answer_lifetime(ngx_pool_t *pool,
    ngx_cloudauth_result_t *res, const char *what);
ngx_int_t ngx_cloudauth_answer_trim(ngx_str_t *text);
char *ngx_cloudauth_answer_field(ngx_str_t *raw, ngx_str_t *field,
    ngx_pool_t *pool, ngx_str_t *token);

/* ngx_cloudauth_jwt.c */
ngx_int_t ngx_cloudauth_jwt_rs256(ngx_pool_t *pool, EVP_PKEY *key,
    const char *header, const char *claims, ngx_str_t *jwt);
ngx_int_t ngx_cloudauth_jwt_hs256(ngx_pool_t *pool, ngx_str_t *secret,
    const char *header, const char *claims, ngx_str_t *jwt);
ngx_int_t ngx_cloudauth_jwt_exp(ngx_str_t *jwt, ngx_pool_t *pool,
    time_t *exp);

/* ngx_cloudauth_cache.c: each function takes and drops the zone's lock */
ngx_int_t ngx_cloudauth_cache_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
ngx_cloudauth_take_e ngx_cloudauth_cache_take(ngx_shm_zone_t *zone,
    ngx_cloudauth_key_t *key, ngx_cloudauth_take_t *t);
ngx_int_t ngx_cloudauth_cache_store(ngx_shm_zone_t *zone,
    ngx_cloudauth_key_t *key, ngx_uint_t claim, ngx_cloudauth_fresh_t *fresh);
ngx_msec_t ngx_cloudauth_cache_fail(ngx_shm_zone_t *zone,
    ngx_cloudauth_key_t *key, ngx_uint_t claim, ngx_str_t *error,
    ngx_cloudauth_backoff_pt backoff, void *data);
void ngx_cloudauth_cache_release(ngx_shm_zone_t *zone,
    ngx_cloudauth_key_t *key, ngx_uint_t claim);
void ngx_cloudauth_cache_release_all(ngx_shm_zone_t *zone, ngx_pid_t pid);
ngx_cloudauth_invalidate_e ngx_cloudauth_cache_invalidate(
    ngx_shm_zone_t *zone, ngx_cloudauth_key_t *key, ngx_str_t *token,
    ngx_msec_t gap);
ngx_int_t ngx_cloudauth_cache_snapshot(ngx_shm_zone_t *zone,
    ngx_pool_t *pool, ngx_cloudauth_census_t **census, ngx_uint_t n,
    ngx_cloudauth_usage_t *usage);
ngx_cloudauth_stats_t *ngx_cloudauth_cache_stats(ngx_shm_zone_t *zone);
u_char *ngx_cloudauth_cache_secret(ngx_shm_zone_t *zone);
ngx_uint_t ngx_cloudauth_cache_in_flight(ngx_shm_zone_t *zone, u_char *fp);
uint64_t ngx_cloudauth_now(void);
uint64_t ngx_cloudauth_monotonic(void);

/* ngx_cloudauth_engine.c */
ngx_int_t ngx_cloudauth_engine_get(ngx_cloudauth_ask_t *ask);
void ngx_cloudauth_engine_cancel(ngx_cloudauth_ask_t *ask);
void ngx_cloudauth_engine_invalidate(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject, ngx_str_t *token, ngx_log_t *log);
void ngx_cloudauth_engine_exit(ngx_shm_zone_t *zone);

/* ngx_cloudauth_utf8.c: UTF-8, and subjects */
ngx_uint_t ngx_cloudauth_subject_allowed(ngx_cloudauth_cred_t *cred,
    ngx_str_t *subject);
ngx_int_t ngx_cloudauth_utf8_valid(u_char *p, size_t len);
ngx_int_t ngx_cloudauth_subject_valid(u_char *p, size_t len);

/* ngx_cloudauth_crc32c.c */
uint32_t ngx_cloudauth_crc32c(uint32_t crc, u_char *p, size_t len);
ngx_uint_t ngx_cloudauth_crc32c_hardware(void);
void ngx_cloudauth_crc32c_force_software(void);

/* ngx_cloudauth_log.c */
ngx_int_t ngx_cloudauth_log_mask_header(ngx_conf_t *cf,
    ngx_cloudauth_main_conf_t *cmcf, ngx_str_t *lowcase);
ngx_int_t ngx_cloudauth_log_wrap(ngx_conf_t *cf,
    ngx_cloudauth_main_conf_t *cmcf, ngx_log_t *log);
void ngx_cloudauth_log_mask_token(ngx_str_t *token);

/* ngx_cloudauth_backoff.c: jittered exponential back-off */
ngx_msec_t ngx_cloudauth_backoff(ngx_msec_t base, ngx_msec_t cap,
    ngx_uint_t failures, ngx_msec_t floor);

/* ngx_cloudauth_kind_google_sa.c: what Google's key-file kinds share */

typedef struct {
    EVP_PKEY                  *key;
    ngx_str_t                  email;
    ngx_str_t                  key_id;
    ngx_str_t                  token_url;
    ngx_str_t                  quota_project; /* NUL-terminated, or empty */
} ngx_cloudauth_google_key_t;

char *ngx_cloudauth_google_key_load(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, ngx_cloudauth_google_key_t *gk);
ngx_int_t ngx_cloudauth_google_assertion(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_google_key_t *gk, const char *claim, ngx_str_t *value,
    ngx_str_t *subject, ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    ngx_log_t *log);

/* ngx_cloudauth_google_iam.c: IAM Credentials generateAccessToken */
char *ngx_cloudauth_google_iam_body(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_str_t *scopes, time_t lifetime, ngx_str_t *body);
ngx_int_t ngx_cloudauth_google_iam_build(ngx_str_t *url, ngx_str_t *body,
    ngx_pool_t *pool, ngx_cloudauth_request_t *req);
ngx_int_t ngx_cloudauth_google_iam_parse(ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_answer_t *a, ngx_pool_t *pool, ngx_cloudauth_result_t *res);

/* credential kinds */
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_sa;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_impersonate;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_id_token;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_metadata;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_zoom_s2s;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_zoom_jwt;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_oauth2;
extern ngx_cloudauth_kind_t  ngx_cloudauth_kind_google_external_account;


#endif /* _NGX_CLOUDAUTH_H_INCLUDED_ */
