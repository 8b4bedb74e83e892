
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Directives, configuration, the phase handler that puts a token into the
 * request, the variables, and the header filter that drops a token the
 * upstream refused with 401.
 */


#include "ngx_cloudauth_fetch.h"


typedef struct {
    ngx_str_t                  name;        /* as written; "off" */
    ngx_cloudauth_cred_t      *cred;
    ngx_http_complex_value_t  *pick;        /* "cloudauth $var": its name */
    ngx_http_complex_value_t  *subject;
    ngx_str_t                  header;
    ngx_str_t                  lowcase;
    ngx_uint_t                 hash;
    ngx_str_t                  prefix;
    ngx_str_t                  suffix;
    ngx_int_t                  variable;    /* index of $http_<header> */
    ngx_uint_t                 authorization; /* the header is that */
    u_char                    *file;
    ngx_uint_t                 line;
} ngx_http_cloudauth_loc_conf_t;


typedef struct ngx_http_cloudauth_req_s  ngx_http_cloudauth_req_t;


typedef struct {
    ngx_cloudauth_ask_t        ask;
    ngx_http_cloudauth_req_t  *rq;
    ngx_str_t                  unknown;     /* a name no credential has */
    unsigned                   asked:1;
    unsigned                   invalidated:1;
} ngx_http_cloudauth_ctx_t;


/* "cloudauth $var" resolved: once per request, kept across redirects */

typedef struct {
    ngx_http_request_t        *request;     /* the main one or a sub */
    ngx_str_t                  source;      /* "$var" as written */
    ngx_cloudauth_cred_t      *cred;        /* NULL: none, refused */
    ngx_str_t                  reason;
    ngx_str_t                  unknown;
} ngx_http_cloudauth_pick_t;


/*
 * What outlives a location: the module's ctx is cleared by an internal
 * redirect, and a subrequest has its own, but this record hangs off the
 * request's pool, which the main request, its redirects and its
 * subrequests share.  It keeps the headers as the client sent them, so
 * that a location without "cloudauth" never forwards a token another
 * location injected, and the reason of a refusal, for error_page.
 */

struct ngx_http_cloudauth_req_s {
    ngx_list_t                 headers;     /* as the client sent them */
    ngx_table_elt_t           *authorization;
    ngx_array_t                injected;    /* elts of the lists we made */
    ngx_array_t                variables;   /* $http_<header> indexes */
    ngx_str_t                  error;       /* $cloudauth_error */
    ngx_array_t                picks;       /* ngx_http_cloudauth_pick_t */

    /* the main request's, for the access log: $cloudauth_credential... */
    ngx_cloudauth_cred_t      *cred;
    ngx_str_t                  subject;     /* ...and $cloudauth_subject */
};


static ngx_int_t ngx_http_cloudauth_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_restore_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_ask(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx);
static ngx_int_t ngx_http_cloudauth_pick(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx,
    ngx_cloudauth_cred_t **cred);
static ngx_cloudauth_cred_t *ngx_http_cloudauth_lookup(ngx_http_request_t *r,
    ngx_str_t *name);
static ngx_int_t ngx_http_cloudauth_name_cmp(ngx_str_t *a, ngx_str_t *b);
static int ngx_libc_cdecl ngx_http_cloudauth_named_cmp(const void *one,
    const void *two);
static ngx_int_t ngx_http_cloudauth_escape(ngx_pool_t *pool, ngx_str_t *src,
    ngx_str_t *dst);
static void ngx_http_cloudauth_wake(ngx_cloudauth_ask_t *ask);
static void ngx_http_cloudauth_cleanup(void *data);
static ngx_uint_t ngx_http_cloudauth_named(ngx_table_elt_t *h,
    ngx_str_t *name);
static ngx_table_elt_t *ngx_http_cloudauth_push(ngx_list_t *list,
    ngx_str_t *key, u_char *lowcase, ngx_uint_t hash, ngx_str_t *value);
static ngx_int_t ngx_http_cloudauth_inject(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx);
static ngx_int_t ngx_http_cloudauth_refuse(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx,
    ngx_int_t status);
static ngx_http_cloudauth_req_t *ngx_http_cloudauth_req(ngx_http_request_t *r,
    ngx_uint_t create);
static void ngx_http_cloudauth_req_cleanup(void *data);
static void ngx_http_cloudauth_restore(ngx_http_request_t *r,
    ngx_http_cloudauth_req_t *rq);
static void ngx_http_cloudauth_forget(ngx_http_request_t *r,
    ngx_http_cloudauth_req_t *rq);
static ngx_int_t ngx_http_cloudauth_header_filter(ngx_http_request_t *r);

static ngx_int_t ngx_http_cloudauth_token_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_ttl_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_error_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_credential_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_subject_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_age_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

static char *ngx_http_cloudauth(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_cloudauth_add_variables(ngx_conf_t *cf);
static void *ngx_http_cloudauth_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_cloudauth_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_cloudauth_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_cloudauth_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_http_cloudauth_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_cloudauth_init_process(ngx_cycle_t *cycle);
static void ngx_http_cloudauth_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_cloudauth_commands[] = {

    { ngx_string("cloudauth_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_cloudauth_main_conf_t, zone_size),
      NULL },

    { ngx_string("cloudauth_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_cloudauth_main_conf_t, trusted_certificate),
      NULL },

    { ngx_string("cloudauth_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_cloudauth_main_conf_t, timeout),
      NULL },

    { ngx_string("cloudauth_credential"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_cloudauth_registry_credential,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cloudauth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_cloudauth,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cloudauth_subject"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_cloudauth_loc_conf_t, subject),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cloudauth_module_ctx = {
    ngx_http_cloudauth_add_variables,      /* preconfiguration */
    ngx_http_cloudauth_init,               /* postconfiguration */

    ngx_http_cloudauth_create_main_conf,   /* create main configuration */
    ngx_http_cloudauth_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_cloudauth_create_loc_conf,    /* create location configuration */
    ngx_http_cloudauth_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_cloudauth_module = {
    NGX_MODULE_V1,
    &ngx_http_cloudauth_module_ctx,        /* module context */
    ngx_http_cloudauth_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_cloudauth_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_cloudauth_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_cloudauth_vars[] = {

    { ngx_string("cloudauth_token"), NULL,
      ngx_http_cloudauth_token_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_cache_status"), NULL,
      ngx_http_cloudauth_status_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_token_ttl"), NULL,
      ngx_http_cloudauth_ttl_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_error"), NULL,
      ngx_http_cloudauth_error_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_credential"), NULL,
      ngx_http_cloudauth_credential_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_subject"), NULL,
      ngx_http_cloudauth_subject_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_token_age"), NULL,
      ngx_http_cloudauth_age_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_cloudauth_cache_statuses[] = {
    ngx_string("-"),
    ngx_string("HIT"),
    ngx_string("STALE"),
    ngx_string("MISS"),
    ngx_string("WAIT"),
    ngx_string("ERROR")
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


/* the request side */

static ngx_int_t
ngx_http_cloudauth_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_http_cloudauth_ctx_t       *ctx;
    ngx_http_cloudauth_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_module);

    if (lcf->cred == NULL && lcf->pick == NULL) {

        /*
         * only a redirected request or a subrequest can carry a token
         * that another location put in: it goes no further
         */

        if (r->internal) {
            ngx_http_cloudauth_restore(r, ngx_http_cloudauth_req(r, 0));
        }

        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_cloudauth_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_cloudauth_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_set_ctx(r, ctx, ngx_http_cloudauth_module);
    }

    if (!ctx->asked) {
        ctx->asked = 1;

        rc = ngx_http_cloudauth_ask(r, lcf, ctx);

        if (rc == NGX_AGAIN) {
            r->read_event_handler = ngx_http_test_reading;
            r->write_event_handler = ngx_http_request_empty_handler;
            return NGX_AGAIN;
        }

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return ngx_http_cloudauth_refuse(r, lcf, ctx, rc);
        }
    }

    if (ctx->ask.waiting) {
        return NGX_AGAIN;
    }

    if (ctx->ask.token.len == 0) {
        return ngx_http_cloudauth_refuse(r, lcf, ctx, NGX_HTTP_BAD_GATEWAY);
    }

    if (ngx_http_cloudauth_inject(r, lcf, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_cloudauth_ask(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  subject;
    ngx_pool_cleanup_t        *cln;
    ngx_cloudauth_cred_t      *cred;
    ngx_http_cloudauth_req_t  *rq;

    rq = ngx_http_cloudauth_req(r, 1);
    if (rq == NULL) {
        return NGX_ERROR;
    }

    ctx->rq = rq;

    if (r == r->main) {
        /* a location redirected to asks again: its answers are logged */
        rq->cred = NULL;
        ngx_str_null(&rq->subject);
    }

    cred = lcf->cred;

    if (cred == NULL) {
        rc = ngx_http_cloudauth_pick(r, lcf, ctx, &cred);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    subject = cred->subject;

    ctx->ask.cred = cred;

    if (r == r->main) {
        rq->cred = cred;
    }

    if (lcf->subject) {
        if (ngx_http_complex_value(r, lcf->subject, &subject) != NGX_OK) {
            return NGX_ERROR;
        }

        if (subject.len == 0) {
            subject = cred->subject;

        } else if (!cred->kind->subject) {
            /* "cloudauth $var" chose it: nginx -t could not say so */
            ngx_str_set(&ctx->ask.reason, "the credential takes no subject");
            return NGX_HTTP_FORBIDDEN;

        } else if (ngx_cloudauth_subject_valid(subject.data, subject.len)
                   != NGX_OK)
        {
            ngx_str_set(&ctx->ask.reason, "subject is not valid UTF-8, "
                        "is too long or has control characters");
            return NGX_HTTP_FORBIDDEN;

        } else if (!ngx_cloudauth_subject_allowed(cred, &subject)) {
            if (r == r->main) {
                rq->subject = subject;
            }

            ngx_str_set(&ctx->ask.reason,
                        "subject not allowed by \"subjects=\"");
            return NGX_HTTP_FORBIDDEN;
        }
    }

    /*
     * "subjects=" says that tokens are for those subjects only: not the
     * service account's own token for a request that names nobody
     */

    if (subject.len == 0 && cred->subjects) {
        ngx_str_set(&ctx->ask.reason, "no subject, and \"subjects=\" is set");
        return NGX_HTTP_FORBIDDEN;
    }

    if (r == r->main) {
        rq->subject = subject;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    ctx->ask.subject = subject;
    ctx->ask.pool = r->pool;
    ctx->ask.log = r->connection->log;
    ctx->ask.handler = ngx_http_cloudauth_wake;
    ctx->ask.data = r;

    cln->handler = ngx_http_cloudauth_cleanup;
    cln->data = &ctx->ask;

    rc = ngx_cloudauth_engine_get(&ctx->ask);

    return rc;
}


/*
 * "cloudauth $var": the credential named by the variable, resolved once
 * per request and kept in the record that outlives locations, so that a
 * redirect to a location with the same "cloudauth $var" gets the same
 * answer.  Whatever the value, the client sees 403 and nothing that says
 * which names exist; the error log says which value it was.
 */

static ngx_int_t
ngx_http_cloudauth_pick(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx,
    ngx_cloudauth_cred_t **cred)
{
    ngx_str_t                   name;
    ngx_uint_t                  i;
    ngx_http_cloudauth_req_t   *rq;
    ngx_http_cloudauth_pick_t  *pk;

    rq = ctx->rq;
    pk = rq->picks.elts;

    for (i = 0; i < rq->picks.nelts; i++) {
        if (pk[i].request == r
            && pk[i].source.len == lcf->name.len
            && ngx_strncmp(pk[i].source.data, lcf->name.data, lcf->name.len)
               == 0)
        {
            pk = &pk[i];
            goto found;
        }
    }

    if (ngx_http_complex_value(r, lcf->pick, &name) != NGX_OK) {
        return NGX_ERROR;
    }

    if (rq->picks.elts == NULL
        && ngx_array_init(&rq->picks, r->pool, 1,
                          sizeof(ngx_http_cloudauth_pick_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    pk = ngx_array_push(&rq->picks);
    if (pk == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(pk, sizeof(ngx_http_cloudauth_pick_t));

    pk->request = r;
    pk->source = lcf->name;

    if (name.len == 0) {
        ngx_str_set(&pk->reason, "the credential's name is empty");

    } else {
        pk->cred = ngx_http_cloudauth_lookup(r, &name);

        if (pk->cred == NULL) {
            ngx_str_set(&pk->reason, "no such credential");

            if (ngx_http_cloudauth_escape(r->pool, &name, &pk->unknown)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

found:

    if (pk->cred == NULL) {
        ctx->ask.reason = pk->reason;
        ctx->unknown = pk->unknown;
        return NGX_HTTP_FORBIDDEN;
    }

    *cred = pk->cred;

    return NGX_OK;
}


/*
 * A credential by a name from the request: one a location could name,
 * never NAME.sts or NAME.subject, a step of another credential.  A binary
 * search of those sorted at config time: with a credential per team,
 * hundreds of them, the request pays for ten comparisons, not hundreds.
 */

static ngx_cloudauth_cred_t *
ngx_http_cloudauth_lookup(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_int_t                   rc;
    ngx_uint_t                  lo, hi, mid;
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_module);

    cp = cmcf->named.elts;
    lo = 0;
    hi = cmcf->named.nelts;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        rc = ngx_http_cloudauth_name_cmp(name, &cp[mid]->name);

        if (rc == 0) {
            return cp[mid];
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return NULL;
}


/* by length, then bytes: case matters, "Team" is not "team" */

static ngx_int_t
ngx_http_cloudauth_name_cmp(ngx_str_t *a, ngx_str_t *b)
{
    if (a->len != b->len) {
        return (a->len < b->len) ? -1 : 1;
    }

    return ngx_memcmp(a->data, b->data, a->len);
}


static int ngx_libc_cdecl
ngx_http_cloudauth_named_cmp(const void *one, const void *two)
{
    ngx_cloudauth_cred_t  *a, *b;

    a = *(ngx_cloudauth_cred_t **) one;
    b = *(ngx_cloudauth_cred_t **) two;

    return ngx_http_cloudauth_name_cmp(&a->name, &b->name);
}


/* a value the client chose, for the error log: bounded, printable */

#define NGX_HTTP_CLOUDAUTH_SHOWN  64

static ngx_int_t
ngx_http_cloudauth_escape(ngx_pool_t *pool, ngx_str_t *src, ngx_str_t *dst)
{
    u_char      *p, c;
    ngx_uint_t   i, n;

    n = ngx_min(src->len, NGX_HTTP_CLOUDAUTH_SHOWN);

    dst->data = ngx_pnalloc(pool, n * 4 + sizeof("...") - 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    p = dst->data;

    for (i = 0; i < n; i++) {
        c = src->data[i];

        if (c < 0x21 || c > 0x7e || c == '"' || c == '\\') {
            p = ngx_sprintf(p, "\\x%02xd", c);

        } else {
            *p++ = c;
        }
    }

    if (src->len > n) {
        p = ngx_cpymem(p, "...", sizeof("...") - 1);
    }

    dst->len = p - dst->data;

    return NGX_OK;
}


static void
ngx_http_cloudauth_wake(ngx_cloudauth_ask_t *ask)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ask->data;
    c = r->connection;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_cloudauth_cleanup(void *data)
{
    ngx_cloudauth_engine_cancel(data);
}


/*
 * Rebuilds the header list without any client-sent copy of the header and
 * with ours: the client never decides what goes upstream.  A credential
 * with a quota project adds "x-goog-user-project: <project>" the same way,
 * as Google's client libraries send it with such a credential's token.
 */

static ngx_int_t
ngx_http_cloudauth_inject(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx)
{
    u_char                    *p;
    void                     **elts;
    ngx_int_t                 *v;
    ngx_str_t                 *token, *quota, value;
    ngx_uint_t                 i, n;
    ngx_list_t                 list;
    ngx_list_part_t           *part;
    ngx_table_elt_t           *h, *header;
    ngx_http_cloudauth_req_t  *rq;

    static ngx_str_t  quota_header = ngx_string("x-goog-user-project");

    rq = ctx->rq;
    token = &ctx->ask.token;
    quota = ctx->ask.cred->quota_project.len
            ? &ctx->ask.cred->quota_project : NULL;

    if (rq->injected.elts == NULL) {
        if (ngx_array_init(&rq->injected, r->pool, 2, sizeof(void *))
            != NGX_OK
            || ngx_array_init(&rq->variables, r->pool, 2, sizeof(ngx_int_t))
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        rq->headers = r->headers_in.headers;
        rq->authorization = r->headers_in.authorization;

        if (rq->headers.last == &r->headers_in.headers.part) {
            rq->headers.last = &rq->headers.part;
        }

    } else {
        /* another location put its token in: start from the client's */
        ngx_http_cloudauth_restore(r, rq);
    }

    elts = ngx_array_push(&rq->injected);
    if (elts == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < rq->variables.nelts; i++) {
        if (((ngx_int_t *) rq->variables.elts)[i] == lcf->variable) {
            break;
        }
    }

    if (i == rq->variables.nelts) {
        v = ngx_array_push(&rq->variables);
        if (v == NULL) {
            return NGX_ERROR;
        }

        *v = lcf->variable;
    }

    n = 2;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        n += part->nelts;
    }

    if (ngx_list_init(&list, r->pool, n, sizeof(ngx_table_elt_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    part = &r->headers_in.headers.part;
    header = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            header = part->elts;
            i = 0;
        }

        if (ngx_http_cloudauth_named(&header[i], &lcf->header)
            || (quota && ngx_http_cloudauth_named(&header[i], &quota_header)))
        {
            continue;
        }

        h = ngx_list_push(&list);
        if (h == NULL) {
            return NGX_ERROR;
        }

        *h = header[i];
    }

    value.len = lcf->prefix.len + token->len + lcf->suffix.len;
    value.data = ngx_pnalloc(r->pool, value.len);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(value.data, lcf->prefix.data, lcf->prefix.len);
    p = ngx_cpymem(p, token->data, token->len);
    ngx_memcpy(p, lcf->suffix.data, lcf->suffix.len);

    h = ngx_http_cloudauth_push(&list, &lcf->header, lcf->lowcase.data,
                                lcf->hash, &value);
    if (h == NULL) {
        return NGX_ERROR;
    }

    if (quota
        && ngx_http_cloudauth_push(&list, &quota_header, quota_header.data,
                                   ngx_hash_key(quota_header.data,
                                                quota_header.len),
                                   quota)
           == NULL)
    {
        return NGX_ERROR;
    }

    /* one part holds them all: "last" must point into the request */
    r->headers_in.headers = list;
    r->headers_in.headers.last = &r->headers_in.headers.part;

    *elts = list.part.elts;

    /* $http_<header>, read before, is read again */
    ngx_http_cloudauth_forget(r, rq);

    if (lcf->authorization) {
        r->headers_in.authorization = h;
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_http_cloudauth_named(ngx_table_elt_t *h, ngx_str_t *name)
{
    return h->key.len == name->len
           && ngx_strncasecmp(h->key.data, name->data, name->len) == 0;
}


static ngx_table_elt_t *
ngx_http_cloudauth_push(ngx_list_t *list, ngx_str_t *key, u_char *lowcase,
    ngx_uint_t hash, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(list);
    if (h == NULL) {
        return NULL;
    }

    h->hash = hash;
    h->key = *key;
    h->lowcase_key = lowcase;
    h->value = *value;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return h;
}


/*
 * A refusal goes back to nginx as a status, so that error_page and the
 * access log apply; one line in the error log says why, with the request.
 */

static ngx_int_t
ngx_http_cloudauth_refuse(ngx_http_request_t *r,
    ngx_http_cloudauth_loc_conf_t *lcf, ngx_http_cloudauth_ctx_t *ctx,
    ngx_int_t status)
{
    ngx_uint_t                 level;
    ngx_http_cloudauth_req_t  *rq;

    if (ctx->ask.reason.len == 0) {
        ngx_str_set(&ctx->ask.reason, "no token");
    }

    ctx->ask.cache_status = NGX_CLOUDAUTH_ERROR;

    rq = ctx->rq;

    /* the reasons are the engine's and this file's own constant strings */
    rq->error = ctx->ask.reason;

    if (ctx->ask.cred == NULL) {

        /* "cloudauth $var" named none; the value, escaped, for the logs */

        if (ctx->unknown.len) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "cloudauth %V: \"%V\" names no credential, "
                          "answered %i", &lcf->name, &ctx->unknown, status);

        } else {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "cloudauth %V: %V, answered %i", &lcf->name,
                          &ctx->ask.reason, status);
        }

        return status;
    }

    level = (status == NGX_HTTP_BAD_GATEWAY) ? NGX_LOG_ERR : NGX_LOG_WARN;

    ngx_log_error(level, r->connection->log, 0,
                  "cloudauth: credential \"%V\": %V, answered %i",
                  &ctx->ask.cred->name, &ctx->ask.reason, status);

    return status;
}


static ngx_http_cloudauth_req_t *
ngx_http_cloudauth_req(ngx_http_request_t *r, ngx_uint_t create)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_cloudauth_req_t  *rq;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_cloudauth_req_cleanup) {
            return cln->data;
        }
    }

    if (!create) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_cloudauth_req_t));
    if (cln == NULL) {
        return NULL;
    }

    rq = cln->data;
    ngx_memzero(rq, sizeof(ngx_http_cloudauth_req_t));

    cln->handler = ngx_http_cloudauth_req_cleanup;

    return rq;
}


static void
ngx_http_cloudauth_req_cleanup(void *data)
{
    /* nothing to free: the handler marks the record in the pool */
}


/* the headers as the client sent them, if we put a token into these */

static void
ngx_http_cloudauth_restore(ngx_http_request_t *r,
    ngx_http_cloudauth_req_t *rq)
{
    void       **elts;
    ngx_uint_t   i;

    if (rq == NULL) {
        return;
    }

    elts = rq->injected.elts;

    for (i = 0; i < rq->injected.nelts; i++) {
        if (elts[i] == r->headers_in.headers.part.elts) {
            break;
        }
    }

    if (i == rq->injected.nelts) {
        return;
    }

    r->headers_in.headers = rq->headers;

    if (rq->headers.last == &rq->headers.part) {
        r->headers_in.headers.last = &r->headers_in.headers.part;
    }

    r->headers_in.authorization = rq->authorization;

    ngx_http_cloudauth_forget(r, rq);
}


/*
 * nginx keeps an indexed variable's value for the request's life, across
 * internal redirects: $http_authorization read while the token was in
 * would still give the token after it is taken out
 */

static void
ngx_http_cloudauth_forget(ngx_http_request_t *r, ngx_http_cloudauth_req_t *rq)
{
    ngx_int_t   *v;
    ngx_uint_t   i;

    v = rq->variables.elts;

    for (i = 0; i < rq->variables.nelts; i++) {
        r->variables[v[i]].valid = 0;
        r->variables[v[i]].not_found = 0;
    }
}


/*
 * In the rewrite phases, before anything there reads a header: only a
 * redirected request or a subrequest can carry a token another location
 * put in, and it gets the client's headers back.
 */

static ngx_int_t
ngx_http_cloudauth_restore_handler(ngx_http_request_t *r)
{
    if (r->internal) {
        ngx_http_cloudauth_restore(r, ngx_http_cloudauth_req(r, 0));
    }

    return NGX_DECLINED;
}


/* in the log phase, before the access log: the client's headers, logged */

static ngx_int_t
ngx_http_cloudauth_log_handler(ngx_http_request_t *r)
{
    ngx_http_cloudauth_ctx_t       *ctx;
    ngx_http_cloudauth_loc_conf_t  *lcf;

    ngx_http_cloudauth_restore(r, ngx_http_cloudauth_req(r, 0));

    /*
     * refused before it asked (auth_basic's 401): $cloudauth_credential
     * must not name the credential an unchecked $remote_user would get
     */

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_module);

    if ((lcf->cred || lcf->pick)
        && ngx_http_get_module_ctx(r, ngx_http_cloudauth_module) == NULL)
    {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_cloudauth_ctx_t));
        if (ctx) {
            ngx_http_set_ctx(r, ctx, ngx_http_cloudauth_module);
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_cloudauth_header_filter(ngx_http_request_t *r)
{
    ngx_http_cloudauth_ctx_t  *ctx;

    if (r->headers_out.status == NGX_HTTP_UNAUTHORIZED && r->upstream) {
        ctx = ngx_http_get_module_ctx(r, ngx_http_cloudauth_module);

        if (ctx && ctx->ask.token.len && !ctx->invalidated) {
            ctx->invalidated = 1;
            ngx_cloudauth_engine_invalidate(ctx->ask.cred, &ctx->ask.subject,
                                            &ctx->ask.token,
                                            r->connection->log);
        }
    }

    return ngx_http_next_header_filter(r);
}


/* variables */

static ngx_http_cloudauth_ctx_t *
ngx_http_cloudauth_get_ctx(ngx_http_request_t *r)
{
    return ngx_http_get_module_ctx(r, ngx_http_cloudauth_module);
}


/* a string that outlives the request's use of it, or none (NULL, empty) */

static ngx_int_t
ngx_http_cloudauth_value(ngx_http_variable_value_t *v, ngx_str_t *s)
{
    if (s == NULL || s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/* seconds, never fewer than none: $cloudauth_token_ttl, _token_age */

static ngx_int_t
ngx_http_cloudauth_seconds(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, time_t n)
{
    ngx_str_t  s;

    s.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (s.data == NULL) {
        return NGX_ERROR;
    }

    s.len = ngx_sprintf(s.data, "%T", n > 0 ? n : 0) - s.data;

    return ngx_http_cloudauth_value(v, &s);
}


static ngx_int_t
ngx_http_cloudauth_token_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_cloudauth_ctx_t  *ctx;

    ctx = ngx_http_cloudauth_get_ctx(r);

    if (ctx == NULL || ctx->ask.token.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    /* from here on the token may show in nginx's own debug lines */
    ngx_cloudauth_log_mask_token(&ctx->ask.token);

    return ngx_http_cloudauth_value(v, &ctx->ask.token);
}


static ngx_int_t
ngx_http_cloudauth_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *s;
    ngx_http_cloudauth_ctx_t  *ctx;

    ctx = ngx_http_cloudauth_get_ctx(r);

    if (ctx == NULL || !ctx->asked) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = &ngx_http_cloudauth_cache_statuses[ctx->ask.cache_status];

    return ngx_http_cloudauth_value(v, s);
}


static ngx_int_t
ngx_http_cloudauth_ttl_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_cloudauth_ctx_t  *ctx;

    ctx = ngx_http_cloudauth_get_ctx(r);

    if (ctx == NULL || ctx->ask.token.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_cloudauth_seconds(r, v, ctx->ask.expires_at - ngx_time());
}


static ngx_int_t
ngx_http_cloudauth_error_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_cloudauth_req_t  *rq;

    rq = ngx_http_cloudauth_req(r, 0);

    return ngx_http_cloudauth_value(v, rq ? &rq->error : NULL);
}


/*
 * $cloudauth_credential: the credential the request asked with.  Before
 * the module's handler has run (limit_req's PREACCESS phase), the one it
 * will ask with, as far as can be known then: the location's own, or the
 * one "cloudauth $var" names now, not kept.  In the log phase, none if it
 * never asked.
 */

static ngx_int_t
ngx_http_cloudauth_credential_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                       name;
    ngx_cloudauth_cred_t           *cred;
    ngx_http_cloudauth_ctx_t       *ctx;
    ngx_http_cloudauth_req_t       *rq;
    ngx_http_cloudauth_loc_conf_t  *lcf;

    cred = NULL;
    ctx = ngx_http_cloudauth_get_ctx(r);

    if (r == r->main) {
        rq = ngx_http_cloudauth_req(r, 0);

        if (rq) {
            cred = rq->cred;
        }

    } else if (ctx) {
        cred = ctx->ask.cred;
    }

    if (cred == NULL && ctx == NULL) {
        lcf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_module);

        cred = lcf->cred;

        if (lcf->pick) {
            if (ngx_http_complex_value(r, lcf->pick, &name) != NGX_OK) {
                return NGX_ERROR;
            }

            cred = ngx_http_cloudauth_lookup(r, &name);
        }
    }

    return ngx_http_cloudauth_value(v, cred ? &cred->name : NULL);
}


/* $cloudauth_subject: the subject asked for, allowed or not */

static ngx_int_t
ngx_http_cloudauth_subject_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                  *subject;
    ngx_http_cloudauth_ctx_t   *ctx;
    ngx_http_cloudauth_req_t   *rq;

    subject = NULL;

    if (r == r->main) {
        rq = ngx_http_cloudauth_req(r, 0);

        if (rq) {
            subject = &rq->subject;
        }

    } else {
        ctx = ngx_http_cloudauth_get_ctx(r);

        if (ctx) {
            subject = &ctx->ask.subject;
        }
    }

    return ngx_http_cloudauth_value(v, subject);
}


/* $cloudauth_token_age: seconds since the token was fetched or signed */

static ngx_int_t
ngx_http_cloudauth_age_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_cloudauth_ctx_t  *ctx;

    ctx = ngx_http_cloudauth_get_ctx(r);

    if (ctx == NULL || ctx->ask.token.len == 0 || ctx->ask.obtained_at == 0)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_cloudauth_seconds(r, v, ngx_time() - ctx->ask.obtained_at);
}


/* configuration */

static char *
ngx_http_cloudauth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cloudauth_loc_conf_t *lcf = conf;

    u_char                            *p;
    ngx_str_t                         *value, format, var;
    ngx_uint_t                         i;
    ngx_http_compile_complex_value_t   ccv;

    if (lcf->name.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lcf->name = value[1];
    lcf->file = cf->conf_file->file.name.data;
    lcf->line = cf->conf_file->line;

    /* "cloudauth $var": a name no fixed one costs anything for */

    if (ngx_strlchr(value[1].data, value[1].data + value[1].len, '$')) {
        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &value[1];
        ccv.complex_value = ngx_palloc(cf->pool,
                                       sizeof(ngx_http_complex_value_t));
        if (ccv.complex_value == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        lcf->pick = ccv.complex_value;
    }

    ngx_str_set(&format, "Bearer %s");

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "header=", 7) == 0) {
            lcf->header.data = value[i].data + 7;
            lcf->header.len = value[i].len - 7;

            for (p = lcf->header.data;
                 p < lcf->header.data + lcf->header.len;
                 p++)
            {
                if (!(ngx_cloudauth_isalnum(*p) || *p == '-' || *p == '_')) {
                    break;
                }
            }

            if (lcf->header.len == 0
                || p < lcf->header.data + lcf->header.len)
            {
                return "has an invalid \"header=\": use a header name such "
                       "as header=X-Api-Token";
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "format=", 7) == 0) {
            format.data = value[i].data + 7;
            format.len = value[i].len - 7;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth: unknown parameter \"%V\"; expected "
                           "header= or format=", &value[i]);
        return NGX_CONF_ERROR;
    }

    p = ngx_strnstr(format.data, "%s", format.len);
    if (p == NULL) {
        return "has a \"format=\" without \"%s\" where the token goes";
    }

    lcf->prefix.data = format.data;
    lcf->prefix.len = p - format.data;
    lcf->suffix.data = p + 2;
    lcf->suffix.len = format.data + format.len - p - 2;

    if (lcf->header.len == 0) {
        ngx_str_set(&lcf->header, "Authorization");
    }

    lcf->lowcase.len = lcf->header.len;
    lcf->lowcase.data = ngx_pnalloc(cf->pool, lcf->header.len + 1);
    if (lcf->lowcase.data == NULL) {
        return NGX_CONF_ERROR;
    }

    lcf->hash = ngx_hash_strlow(lcf->lowcase.data, lcf->header.data,
                                lcf->header.len);
    lcf->lowcase.data[lcf->lowcase.len] = '\0';

    lcf->authorization = (lcf->lowcase.len == sizeof("authorization") - 1
                          && ngx_strcmp(lcf->lowcase.data, "authorization")
                             == 0);

    /* $http_<header>: its cached value is dropped when the header changes */

    var.len = sizeof("http_") - 1 + lcf->lowcase.len;
    var.data = ngx_pnalloc(cf->pool, var.len);
    if (var.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(var.data, "http_", sizeof("http_") - 1);

    for (i = 0; i < lcf->lowcase.len; i++) {
        *p++ = (lcf->lowcase.data[i] == '-') ? '_' : lcf->lowcase.data[i];
    }

    lcf->variable = ngx_http_get_variable_index(cf, &var);
    if (lcf->variable == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_log_mask_header(cf,
            ngx_http_conf_get_module_main_conf(cf, ngx_http_cloudauth_module),
            &lcf->lowcase)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_cloudauth_create_main_conf(ngx_conf_t *cf)
{
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_main_conf_t));
    if (cmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&cmcf->creds, cf->pool, 4,
                       sizeof(ngx_cloudauth_cred_t *))
        != NGX_OK)
    {
        return NULL;
    }

    cmcf->zone_size = NGX_CONF_UNSET_SIZE;
    cmcf->timeout = NGX_CONF_UNSET_MSEC;

    return cmcf;
}


static char *
ngx_http_cloudauth_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_cloudauth_main_conf_t *cmcf = conf;

    ngx_str_t               name;
    ngx_uint_t              i;
    ngx_cloudauth_cred_t  **cp, **np;

    ngx_conf_init_size_value(cmcf->zone_size, 1024 * 1024);
    ngx_conf_init_msec_value(cmcf->timeout, 10000);

    if (cmcf->zone_size < 64 * 1024) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"cloudauth_zone\" of %uz bytes is too small; "
                      "use at least 64k", cmcf->zone_size);
        return NGX_CONF_ERROR;
    }

    if (cmcf->trusted_certificate.len) {
        if (ngx_conf_full_name(cf->cycle, &cmcf->trusted_certificate, 1)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        if (access((char *) cmcf->trusted_certificate.data, R_OK) != 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, ngx_errno,
                          "cloudauth_trusted_certificate \"%V\" cannot be "
                          "read", &cmcf->trusted_certificate);
            return NGX_CONF_ERROR;
        }
    }

    if (cmcf->creds.nelts == 0) {
        return NGX_CONF_OK;
    }

    if (ngx_array_init(&cmcf->named, cf->pool, cmcf->creds.nelts,
                       sizeof(ngx_cloudauth_cred_t *))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    cp = cmcf->creds.elts;

    for (i = 0; i < cmcf->creds.nelts; i++) {
        if (ngx_strlchr(cp[i]->name.data, cp[i]->name.data + cp[i]->name.len,
                        '.'))
        {
            continue;
        }

        np = ngx_array_push(&cmcf->named);
        if (np == NULL) {
            return NGX_CONF_ERROR;
        }

        *np = cp[i];
    }

    ngx_qsort(cmcf->named.elts, cmcf->named.nelts,
              sizeof(ngx_cloudauth_cred_t *), ngx_http_cloudauth_named_cmp);

    ngx_str_set(&name, "cloudauth");

    cmcf->shm_zone = ngx_shared_memory_add(cf, &name, cmcf->zone_size,
                                           &ngx_http_cloudauth_module);
    if (cmcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    cmcf->shm_zone->init = ngx_cloudauth_cache_init_zone;

    return NGX_CONF_OK;
}


static void *
ngx_http_cloudauth_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_cloudauth_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cloudauth_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     lcf->name = { 0, NULL };
     *     lcf->cred = NULL;
     *     lcf->pick = NULL;
     */

    lcf->subject = NGX_CONF_UNSET_PTR;

    return lcf;
}


static char *
ngx_http_cloudauth_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_cloudauth_loc_conf_t *prev = parent;
    ngx_http_cloudauth_loc_conf_t *conf = child;

    ngx_uint_t                   i;
    ngx_cloudauth_cred_t       **cp;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_complex_value_t    *subject;
    ngx_cloudauth_main_conf_t   *cmcf;

    ngx_conf_merge_ptr_value(conf->subject, prev->subject, NULL);

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_cloudauth_module);

    if (cmcf->creds.nelts) {
        /* nginx's own debug lines would show the tokens */
        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

        if (ngx_cloudauth_log_wrap(cf, cmcf, clcf->error_log) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (conf->name.data == NULL) {
        /* all but cloudauth_subject is the "cloudauth" directive's */
        subject = conf->subject;
        *conf = *prev;
        conf->subject = subject;
    }

    if (conf->name.data == NULL || conf->cred
        || (conf->name.len == 3 && ngx_strncmp(conf->name.data, "off", 3) == 0))
    {
        return NGX_CONF_OK;
    }

    if (conf->pick) {
        /* the credential's rules are checked when a request names it */

        if (cmcf->creds.nelts == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "cloudauth \"%V\": no cloudauth_credential is "
                          "defined, so the variable can name none; define "
                          "them at http level, in %s:%ui",
                          &conf->name, conf->file, conf->line);
            return NGX_CONF_ERROR;
        }

        if (conf->subject == NULL || conf->subject->lengths == NULL) {
            return NGX_CONF_OK;
        }

        cp = cmcf->creds.elts;

        for (i = 0; i < cmcf->creds.nelts; i++) {
            if (cp[i]->kind->subject && cp[i]->subjects == NULL
                && ngx_strlchr(cp[i]->name.data,
                               cp[i]->name.data + cp[i]->name.len, '.')
                   == NULL)
            {
                ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                              "cloudauth_subject with variables and "
                              "\"cloudauth %V\": credential \"%V\" has no "
                              "\"subjects=\": a client may obtain a token "
                              "for any subject, in %s:%ui", &conf->name,
                              &cp[i]->name, conf->file, conf->line);
                break;
            }
        }

        return NGX_CONF_OK;
    }

    conf->cred = ngx_cloudauth_find_cred(cmcf, &conf->name);

    if (conf->cred == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "cloudauth \"%V\": no such cloudauth_credential; "
                      "define it at http level in %s:%ui",
                      &conf->name, conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    /* NAME.sts, NAME.subject: a kind's own steps, never sent upstream */

    if (ngx_strlchr(conf->name.data, conf->name.data + conf->name.len, '.')) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "cloudauth \"%V\": a step of another credential, "
                      "not one to inject; name the credential itself, "
                      "in %s:%ui", &conf->name, conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    if (conf->subject && !conf->cred->kind->subject) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "cloudauth_subject: credential \"%V\" (type=%V) takes "
                      "no subject, in %s:%ui", &conf->name,
                      &conf->cred->kind->name, conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    if (conf->subject == NULL && conf->cred->subjects
        && conf->cred->subject.len == 0)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "cloudauth \"%V\": the credential has \"subjects=\" "
                      "but no \"subject=\", so every request needs a "
                      "subject: add cloudauth_subject, in %s:%ui",
                      &conf->name, conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    if (conf->subject && conf->subject->lengths
        && conf->cred->subjects == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "cloudauth_subject with variables and credential "
                      "\"%V\" without \"subjects=\": a client may obtain a "
                      "token for any subject, in %s:%ui", &conf->name,
                      conf->file, conf->line);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_cloudauth_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_cloudauth_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_init(ngx_conf_t *cf)
{
    ngx_uint_t                  i;
    ngx_array_t                *a;
    ngx_http_handler_pt        *h;
    ngx_cloudauth_main_conf_t  *cmcf;
    ngx_http_core_main_conf_t  *hmcf;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_cloudauth_header_filter;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_cloudauth_module);

    if (cmcf->creds.nelts == 0) {
        /* nothing is ever injected: no request pays for the handlers */
        return NGX_OK;
    }

    hmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&hmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_cloudauth_handler;

    for (i = 0; i < 2; i++) {
        h = ngx_array_push(&hmcf->phases[i ? NGX_HTTP_REWRITE_PHASE
                                           : NGX_HTTP_SERVER_REWRITE_PHASE]
                           .handlers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        *h = ngx_http_cloudauth_restore_handler;
    }

    /*
     * log phase handlers run in the order they were added, the access
     * log's first: ours goes before it
     */

    a = &hmcf->phases[NGX_HTTP_LOG_PHASE].handlers;

    h = ngx_array_push(a);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h = a->elts;
    ngx_memmove(&h[1], &h[0], (a->nelts - 1) * sizeof(ngx_http_handler_pt));
    h[0] = ngx_http_cloudauth_log_handler;

    return ngx_cloudauth_log_wrap(cf, cmcf, &cf->cycle->new_log);
}


static ngx_int_t
ngx_http_cloudauth_init_process(ngx_cycle_t *cycle)
{
    ngx_cloudauth_main_conf_t  *cmcf;

    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NGX_OK;
    }

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_cloudauth_module);

    if (cmcf == NULL || cmcf->creds.nelts == 0) {
        return NGX_OK;
    }

    return ngx_cloudauth_fetch_init(cycle, cmcf->timeout,
                                    &cmcf->trusted_certificate);
}


static void
ngx_http_cloudauth_exit_process(ngx_cycle_t *cycle)
{
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = (cycle->conf_ctx[ngx_http_module.index] == NULL) ? NULL
           : ngx_http_cycle_get_module_main_conf(cycle,
                                                 ngx_http_cloudauth_module);

    ngx_cloudauth_engine_exit(cmcf ? cmcf->shm_zone : NULL);
    ngx_cloudauth_fetch_exit(cycle);
}
