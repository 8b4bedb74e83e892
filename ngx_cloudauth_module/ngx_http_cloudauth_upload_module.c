
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
 * It is a module of its own (ngx_http_cloudauth_upload_module), like
 * nginx's proxy over upstream: this file has the directive, the variables
 * and the request's start, and is the only one that finds an upload from
 * its request; ngx_http_cloudauth_upload_body.c reads the body into
 * objects, ngx_http_cloudauth_upload_cors.c answers browsers,
 * ngx_http_cloudauth_upload_name.c checks names, and the GCS client
 * (ngx_cloudauth_gcs.c) speaks GCS's resumable upload protocol.
 */


#include "ngx_http_cloudauth_upload.h"


static ngx_int_t ngx_http_cloudauth_upload_handler(ngx_http_request_t *r);
static void ngx_http_cloudauth_upload_body_handler(ngx_http_request_t *r);
static void ngx_http_cloudauth_upload_read(ngx_http_request_t *r);
static ngx_uint_t ngx_http_cloudauth_upload_consumed(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cloudauth_upload_add_variables(ngx_conf_t *cf);
static void *ngx_http_cloudauth_upload_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_cloudauth_upload_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_cloudauth_upload_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_cloudauth_upload_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_cloudauth_upload(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_cloudauth_upload_param(ngx_conf_t *cf,
    ngx_http_cloudauth_upload_conf_t *ucf, ngx_str_t *value);


static ngx_command_t  ngx_http_cloudauth_upload_commands[] = {

    { ngx_string("cloudauth_gcs_upload"),
      NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_cloudauth_upload,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cloudauth_upload_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_cloudauth_upload_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cloudauth_upload_module_ctx = {
    ngx_http_cloudauth_upload_add_variables, /* preconfiguration */
    NULL,                                    /* postconfiguration */

    ngx_http_cloudauth_upload_create_main_conf, /* create main conf */
    NULL,                                    /* init main configuration */

    NULL,                                    /* create server configuration */
    NULL,                                    /* merge server configuration */

    ngx_http_cloudauth_upload_create_loc_conf, /* create location conf */
    ngx_http_cloudauth_upload_merge_loc_conf /* merge location configuration */
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
    NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_FILENAME = 0,
    NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_BYTES,
    NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_OBJECT,
    NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_STATUS
};


static ngx_http_variable_t  ngx_http_cloudauth_upload_vars[] = {

    { ngx_string("cloudauth_filename"), NULL,
      ngx_http_cloudauth_upload_variable,
      NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_FILENAME,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_bytes"), NULL,
      ngx_http_cloudauth_upload_variable,
      NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_BYTES,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_object"), NULL,
      ngx_http_cloudauth_upload_variable,
      NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_OBJECT,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cloudauth_upload_status"), NULL,
      ngx_http_cloudauth_upload_variable,
      NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_STATUS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* $cloudauth_upload_status, by ngx_http_cloudauth_upload_status_e */

static ngx_str_t  ngx_http_cloudauth_upload_statuses[] = {
    ngx_string("rejected"),
    ngx_string("uploading"),
    ngx_string("stored"),
    ngx_string("failed"),
    ngx_string("aborted"),
    ngx_string("partial")
};

/* the request */

static ngx_int_t
ngx_http_cloudauth_upload_handler(ngx_http_request_t *r)
{
    off_t                              max;
    ngx_int_t                          rc;
    ngx_str_t                         *origin;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_cloudauth_upload_t       *u;
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_upload_module);
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r != r->main) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    origin = ngx_http_cloudauth_upload_cors(r, conf);

    if (r->method == NGX_HTTP_OPTIONS && conf->cors
        && (!conf->resumable
            || ngx_http_cloudauth_upload_header_in(r,
                               "Access-Control-Request-Method",
                               sizeof("Access-Control-Request-Method") - 1)))
    {
        return ngx_http_cloudauth_upload_preflight(r, conf, origin);
    }

    if (conf->resumable) {
        rc = ngx_http_cloudauth_upload_tus(r, conf, origin);

        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    if (!(r->method & (NGX_HTTP_PUT|NGX_HTTP_POST))) {
        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_NOT_ALLOWED, "use PUT or POST",
                                 sizeof("use PUT or POST") - 1);
    }

    if (ngx_http_cloudauth_upload_csrf(r, conf) != NGX_OK) {
        return ngx_http_cloudauth_upload_reject(r, NULL, NGX_HTTP_FORBIDDEN,
                                 "cross-site upload refused",
                                 sizeof("cross-site upload refused") - 1);
    }

    if (ngx_http_cloudauth_upload_consumed(r)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cloudauth: upload: the request body was read or "
                      "discarded before it reached the upload location "
                      "(an error_page after client_max_body_size, "
                      "another module?)");

        return ngx_http_cloudauth_upload_reject(r, origin,
                                 NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 "the request body is no longer there",
                                 sizeof("the request body is no longer "
                                        "there") - 1);
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

    u = ngx_http_cloudauth_upload_create(r, conf, origin, max);
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cloudauth_upload_init(u);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_cloudauth_upload_reject(r, origin, rc,
                                                (char *) u->reason.data,
                                                u->reason.len);
    }

    return ngx_http_cloudauth_upload_read_body(r);
}


/* the body, unbuffered, into the upload found by the request */

ngx_int_t
ngx_http_cloudauth_upload_read_body(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    r->request_body_no_buffering = 1;

    rc = ngx_http_read_client_request_body(r,
                                       ngx_http_cloudauth_upload_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* the upload's state, found by the request */

ngx_http_cloudauth_upload_t *
ngx_http_cloudauth_upload_create(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_pcalloc(r->pool, sizeof(ngx_http_cloudauth_upload_t));
    if (u == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_cloudauth_upload_cleanup;
    cln->data = u;

    u->request = r;
    u->conf = conf;
    u->max_size = max;
    u->status = NGX_HTTP_CLOUDAUTH_UPLOAD_REJECTED;

    if (origin) {
        u->cors_origin = *origin;
    }

    ngx_http_set_ctx(r, u, ngx_http_cloudauth_upload_module);

    return u;
}


static void
ngx_http_cloudauth_upload_body_handler(ngx_http_request_t *r)
{
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    r->read_event_handler = ngx_http_cloudauth_upload_read;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_http_cloudauth_upload_begin(u);
}


static void
ngx_http_cloudauth_upload_read(ngx_http_request_t *r)
{
    ngx_http_cloudauth_upload_t  *u;

    u = ngx_http_get_module_ctx(r, ngx_http_cloudauth_upload_module);

    ngx_http_cloudauth_upload_run(u);
}


/*
 * The body is gone when the request comes here after another location
 * read or discarded it (client_max_body_size, then "error_page 413 =
 * @upload;"): a discarded body of a known length leaves less of the
 * declared length than the header says
 */

static ngx_uint_t
ngx_http_cloudauth_upload_consumed(ngx_http_request_t *r)
{
    off_t             declared;
    ngx_table_elt_t  *h;

    if (r->request_body || r->discard_body) {
        return 1;
    }

#if (NGX_HTTP_V2)
    if (r->stream && r->stream->skip_data) {
        return 1;
    }
#endif

    h = r->headers_in.content_length;

    if (h) {
        declared = ngx_atoof(h->value.data, h->value.len);

        if (declared != r->headers_in.content_length_n) {
            return 1;
        }
    }

    return 0;
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

        if (conf->gcs.cred == NULL || r->method == NGX_HTTP_OPTIONS
            || (data != NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_STATUS
                && data != NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_BYTES))
        {
            v->not_found = 1;
            return NGX_OK;
        }

        /* refused before the upload began (a method, a size) */

        if (data == NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_STATUS) {
            s = &ngx_http_cloudauth_upload_statuses[
                                          NGX_HTTP_CLOUDAUTH_UPLOAD_REJECTED];
            v->len = s->len;
            v->data = s->data;

        } else {
            v->len = 1;
            v->data = (u_char *) "0";
        }

        goto found;
    }

    switch (data) {

    case NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_BYTES:
        p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->len = ngx_sprintf(p, "%O", u->bytes) - p;
        v->data = p;
        goto found;

    case NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_FILENAME:
        s = &u->filename;
        break;

    case NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_OBJECT:
        s = &u->names;
        break;

    default: /* NGX_HTTP_CLOUDAUTH_UPLOAD_VAR_STATUS */
        s = &ngx_http_cloudauth_upload_statuses[u->status];
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
ngx_http_cloudauth_upload_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_cloudauth_upload_main_conf_t  *umcf;

    umcf = ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_cloudauth_upload_main_conf_t));
    if (umcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     umcf->key_file = { 0, NULL };
     */

    return umcf;
}


/*
 * cloudauth_upload_key FILE: 32 or more random bytes, read by the master
 * like the other secrets; every nginx with the same file can continue
 * every resumable upload.  The cipher's key is derived from them.
 */

static char *
ngx_http_cloudauth_upload_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cloudauth_upload_main_conf_t *umcf = conf;

    char       *err;
    ngx_str_t  *value, path, secret;

    if (umcf->key_file.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    path = value[1];

    if (ngx_cloudauth_read_file(cf, NULL, &path, &secret, &err) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_upload_key \"%V\": %s", &path, err);
        return NGX_CONF_ERROR;
    }

    if (secret.len < NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_upload_key \"%V\": %uz bytes, needs "
                           "32 or more random bytes (make one with "
                           "\"openssl rand -out upload.key 32\")",
                           &path, secret.len);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_cloudauth_upload_id_key(secret.data, secret.len, umcf->key)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    ngx_explicit_memzero(secret.data, secret.len);

    umcf->key_file = path;

    return NGX_CONF_OK;
}


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
     *     conf->gcs.cred = NULL;
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

    char                      *rv;
    u_char                    *p;
    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_cloudauth_cred_t      *cred;
    ngx_http_core_loc_conf_t  *clcf;

    if (ucf->gcs.cred) {
        return "is duplicate";
    }

    value = cf->args->elts;

    cred = ngx_cloudauth_find_cred(
               ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_http_cloudauth_module),
               &value[1]);
    if (cred == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: no cloudauth_credential "
                           "\"%V\" (define it at http level, before)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_strlchr(value[1].data, value[1].data + value[1].len, '.')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: \"%V\" is a step of "
                           "another credential; name the credential itself",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (cred->subjects && cred->subject.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_gcs_upload: credential \"%V\" has "
                           "\"subjects=\" but no \"subject=\": an upload "
                           "acts as the credential's subject=; give it one, "
                           "or use a credential without \"subjects=\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    ucf->gcs.cred = cred;
    ucf->gcs.subject = cred->subject;
    ucf->gcs.overwrite = 0;
    ngx_str_set(&ucf->gcs.endpoint, NGX_CLOUDAUTH_GCS_URL);
    ucf->md5 = 0;
    ucf->chunk_size = NGX_HTTP_CLOUDAUTH_UPLOAD_CHUNK;
    ucf->expires = NGX_HTTP_CLOUDAUTH_UPLOAD_EXPIRES;

    for (i = 2; i < cf->args->nelts; i++) {
        rv = ngx_http_cloudauth_upload_param(cf, ucf, &value[i]);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    if (ucf->gcs.bucket.len == 0) {
        return "needs \"bucket=\"";
    }

    /* the origin of the endpoint: session URIs must stay there */

    p = ngx_pnalloc(cf->pool, ucf->gcs.endpoint.len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(p, ucf->gcs.endpoint.data, ucf->gcs.endpoint.len);
    p[ucf->gcs.endpoint.len] = '\0';

    switch (ngx_cloudauth_gcs_parse_origin(cf->pool, p, &ucf->gcs.origin)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        return "has an invalid \"endpoint=\": not an absolute URL without "
               "user information";

    default:
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_cloudauth_upload_handler;

    return NGX_CONF_OK;
}


/*
 * Nothing is inherited, but by the location limit_except makes for the
 * other methods: the upload is its content too.  What an upload ID is made
 * for, its additional
 * data: the server's name, the location's and the credential's (the bucket
 * is inside); the same in every nginx of a fleet with the same
 * configuration.  Here, not in the directive: "server_name" may come after
 * the location, and its default is set when the server is merged.
 */

static char *
ngx_http_cloudauth_upload_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_cloudauth_upload_conf_t *prev = parent;
    ngx_http_cloudauth_upload_conf_t *conf = child;

    u_char                    *p;
    ngx_str_t                 *cred;
    ngx_http_core_srv_conf_t  *cscf;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->lmt_excpt && prev->gcs.cred) {
        *conf = *prev;
        clcf->handler = ngx_http_cloudauth_upload_handler;
        return NGX_CONF_OK;
    }

    if (conf->gcs.cred == NULL) {
        return NGX_CONF_OK;
    }

    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
    cred = &conf->gcs.cred->name;

    conf->aad.len = cscf->server_name.len + 1 + clcf->name.len + 1
                    + cred->len;

    p = ngx_pnalloc(cf->pool, conf->aad.len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->aad.data = p;

    p = ngx_cpymem(p, cscf->server_name.data, cscf->server_name.len);
    *p++ = '\0';
    p = ngx_cpymem(p, clcf->name.data, clcf->name.len);
    *p++ = '\0';
    ngx_memcpy(p, cred->data, cred->len);

    return NGX_CONF_OK;
}


/* one "name=value" of the directive */

static char *
ngx_http_cloudauth_upload_param(ngx_conf_t *cf,
    ngx_http_cloudauth_upload_conf_t *ucf, ngx_str_t *value)
{
    u_char                            *p, *q, *last;
    ssize_t                            size;
    ngx_str_t                          v, *o;
    ngx_http_compile_complex_value_t   ccv;

    if (ngx_strncmp(value->data, "bucket=", 7) == 0) {
        ucf->gcs.bucket.data = value->data + 7;
        ucf->gcs.bucket.len = value->len - 7;

        for (p = ucf->gcs.bucket.data;
             p < ucf->gcs.bucket.data + ucf->gcs.bucket.len;
             p++)
        {
            if (!(ngx_http_cloudauth_upload_token_char(*p) || *p == '.')
                || (*p >= 'A' && *p <= 'Z'))
            {
                return "has an invalid \"bucket=\": lowercase letters, "
                       "digits, \"-\", \"_\" and \".\"";
            }
        }

        if (ucf->gcs.bucket.len < 3 || ucf->gcs.bucket.len > 222) {
            return "has an invalid \"bucket=\" length";
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "object=", 7) == 0) {
        v.data = value->data + 7;
        v.len = value->len - 7;

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
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "endpoint=", 9) == 0) {
        v.data = value->data + 9;
        v.len = value->len - 9;

        while (v.len && v.data[v.len - 1] == '/') {
            v.len--;
        }

        if (ngx_cloudauth_check_url(cf, ucf->gcs.cred, "endpoint=", &v, 0)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

        ucf->gcs.endpoint = v;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "overwrite=on") == 0
        || ngx_strcmp(value->data, "overwrite=off") == 0)
    {
        ucf->gcs.overwrite = (value->data[sizeof("overwrite=o") - 1] == 'n');
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "resumable=on") == 0
        || ngx_strcmp(value->data, "resumable=off") == 0)
    {
        ucf->resumable = (value->data[sizeof("resumable=o") - 1] == 'n');
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "expires=", 8) == 0) {
        v.data = value->data + 8;
        v.len = value->len - 8;

        ucf->expires = ngx_parse_time(&v, 1);

        if (ucf->expires == (time_t) NGX_ERROR || ucf->expires <= 0
            || ucf->expires > NGX_HTTP_CLOUDAUTH_UPLOAD_EXPIRES)
        {
            return "has an invalid \"expires=\": a time up to 7d (GCS keeps "
                   "a resumable session a week)";
        }

        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value->data, "md5=on") == 0
        || ngx_strcmp(value->data, "md5=off") == 0)
    {
        ucf->md5 = (value->data[sizeof("md5=o") - 1] == 'n');
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "chunk_size=", 11) == 0) {
        v.data = value->data + 11;
        v.len = value->len - 11;

        size = ngx_parse_size(&v);

        if (size == NGX_ERROR || size < NGX_CLOUDAUTH_GCS_QUANTUM
            || size % NGX_CLOUDAUTH_GCS_QUANTUM)
        {
            return "has an invalid \"chunk_size=\": a multiple of 256k";
        }

        ucf->chunk_size = (size_t) size;
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "max_size=", 9) == 0) {
        v.data = value->data + 9;
        v.len = value->len - 9;

        ucf->max_size = ngx_parse_offset(&v);

        if (ucf->max_size == NGX_ERROR) {
            return "has an invalid \"max_size=\"";
        }

        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value->data, "cors=", 5) == 0) {
        if (ucf->cors == NULL) {
            ucf->cors = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
            if (ucf->cors == NULL) {
                return NGX_CONF_ERROR;
            }
        }

        p = value->data + 5;
        last = value->data + value->len;

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

        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "cloudauth_gcs_upload: unknown parameter \"%V\"",
                       value);

    return NGX_CONF_ERROR;
}
