
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
 * nginx's proxy over upstream: this file has the directives, the
 * variables and the content handler, which picks the request's front end
 * (on a resumable location ngx_http_cloudauth_upload_ietf.c for the IETF
 * draft's requests, ngx_http_cloudauth_upload_tus.c for tus; else the
 * single request of ngx_http_cloudauth_upload_plain.c).  A front end
 * drives one upload (ngx_http_cloudauth_upload_driver.c), which reads the
 * body into objects through the GCS client (ngx_cloudauth_gcs.c) and ends
 * through the front end's hooks; ngx_http_cloudauth_upload_reply.c
 * answers, ngx_http_cloudauth_upload_name.c checks names.
 */


#include "ngx_http_cloudauth_upload.h"


static ngx_int_t ngx_http_cloudauth_upload_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_unfinished(ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_resumable_headers(
    ngx_http_request_t *r, ngx_str_t *origin, ngx_uint_t status);
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
static ngx_int_t ngx_http_cloudauth_upload_made(ngx_conf_t *cf,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_http_core_loc_conf_t *clcf);
static ngx_int_t ngx_http_cloudauth_upload_init_process(ngx_cycle_t *cycle);


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
    ngx_http_cloudauth_upload_init_process, /* init process */
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

/* the request: its front end */

static ngx_int_t
ngx_http_cloudauth_upload_handler(ngx_http_request_t *r)
{
    ngx_int_t                          rc;
    ngx_str_t                         *origin;
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_upload_module);

    if (r != r->main || conf->gcs.cred == NULL) {
        /* a subrequest; or no upload here (cannot be: the merge) */
        return NGX_HTTP_NOT_ALLOWED;
    }

    origin = ngx_http_cloudauth_upload_cors(r, conf);

    if (r->method == NGX_HTTP_OPTIONS && conf->cors
        && (!conf->resumable
            || ngx_http_cloudauth_upload_header_in(r,
                               "Access-Control-Request-Method",
                               sizeof("Access-Control-Request-Method") - 1)))
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "cloudauth: upload: a CORS preflight");

        return ngx_http_cloudauth_upload_preflight(r, conf, origin);
    }

    rc = ngx_http_cloudauth_upload_unfinished(r);

    /*
     * a resumable location speaks the IETF draft to a request that names
     * its interop version, or that is a part of an upload (which is
     * refused there when it names no version served)
     */

    if (conf->resumable
        && (rc != NGX_OK || ngx_http_cloudauth_upload_ietf_request(r)))
    {
        return ngx_http_cloudauth_upload_ietf(r, conf, origin, conf->max);
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: refused, the body is a part of a "
                      "resumable upload of the IETF draft (Upload-Complete: "
                      "?0 or Upload-Incomplete: ?1), which is served on "
                      "\"resumable=on\" locations only");

        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin,
                                 NGX_HTTP_NOT_IMPLEMENTED,
                                 "a part of an upload (Upload-Complete: ?0, "
                                 "Upload-Incomplete: ?1) is not taken here: "
                                 "send the whole body without those headers",
                                 sizeof("a part of an upload (Upload-Complete"
                                        ": ?0, Upload-Incomplete: ?1) is not "
                                        "taken here: send the whole body "
                                        "without those headers") - 1);
    }

    if (conf->resumable) {
        rc = ngx_http_cloudauth_upload_tus(r, conf, origin, conf->max);

        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    return ngx_http_cloudauth_upload_plain(r, conf, origin, conf->max);
}


/*
 * A client of the IETF resumable-upload draft marks a body that is only a
 * part: "Upload-Complete: ?0" (its older versions: "Upload-Incomplete:
 * ?1").  Until the draft is spoken here, such a body must not become a
 * finished object: NGX_DECLINED for a request with either header that
 * does not say, as a structured-field boolean, that the body is whole.
 */

static ngx_int_t
ngx_http_cloudauth_upload_unfinished(ngx_http_request_t *r)
{
    u_char           *p, *last;
    ngx_uint_t        i, whole;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {

            if (h[i].key.len == sizeof("Upload-Complete") - 1
                && ngx_strncasecmp(h[i].key.data, (u_char *) "Upload-Complete",
                                   h[i].key.len) == 0)
            {
                whole = '1';

            } else if (h[i].key.len == sizeof("Upload-Incomplete") - 1
                       && ngx_strncasecmp(h[i].key.data,
                                          (u_char *) "Upload-Incomplete",
                                          h[i].key.len) == 0)
            {
                whole = '0';

            } else {
                continue;
            }

            p = h[i].value.data;
            last = p + h[i].value.len;

            while (p < last && (*p == ' ' || *p == '\t')) {
                p++;
            }

            while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
                last--;
            }

            if (last - p != 2 || p[0] != '?' || p[1] != whole) {
                return NGX_DECLINED;
            }
        }
    }

    return NGX_OK;
}


/* every answer of a resumable location: its front end's headers */

static ngx_int_t
ngx_http_cloudauth_upload_resumable_headers(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status)
{
    if (ngx_http_cloudauth_upload_ietf_request(r)
        || ngx_http_cloudauth_upload_unfinished(r) != NGX_OK)
    {
        return ngx_http_cloudauth_upload_ietf_headers(r, origin, status);
    }

    return ngx_http_cloudauth_upload_tus_headers(r, origin, status);
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
    ngx_pool_cleanup_t                     *cln;
    ngx_http_cloudauth_upload_main_conf_t  *umcf;

    umcf = ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_cloudauth_upload_main_conf_t));
    if (umcf == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_cloudauth_upload_spare_free;
    cln->data = umcf;

    /*
     * set by ngx_pcalloc():
     *
     *     umcf->key_file = { 0, NULL };
     *     umcf->spare = NULL;
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
 * Nothing is inherited by a nested location, but by the blocks of a
 * location that have no name, "if" and "limit_except": nginx runs the
 * location's content handler in them, with their own configuration, so
 * they take the upload whole.  In an upload location the body limit is
 * max_size=, or client_max_body_size when it is not given.
 *
 * What an upload ID is made for, its additional data: the server's name,
 * the location's and the credential's (the bucket is inside); the same in
 * every nginx of a fleet with the same configuration.  Here, not in the
 * directive: "server_name" may come after the location, and its default
 * is set when the server is merged.
 */

static char *
ngx_http_cloudauth_upload_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_cloudauth_upload_conf_t *prev = parent;
    ngx_http_cloudauth_upload_conf_t *conf = child;

    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (conf->gcs.cred == NULL && prev->gcs.cred && clcf->noname) {
        *conf = *prev;
        clcf->handler = ngx_http_cloudauth_upload_handler;
    }

    if (conf->gcs.cred == NULL) {
        return NGX_CONF_OK;
    }

    if (conf->aad.len == 0) {
        /* the location's own directive, not one taken from it */

        conf->max = (conf->max_size >= 0) ? conf->max_size
                                          : clcf->client_max_body_size;

        if (ngx_http_cloudauth_upload_made(cf, conf, clcf) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    /*
     * the upload keeps its limit itself, and answers it with its reason,
     * for a declared length (nginx would answer before the handler runs)
     * and as the bytes come
     */
    clcf->client_max_body_size = 0;

    return NGX_CONF_OK;
}


/* what the configuration makes for a location's requests */

static ngx_int_t
ngx_http_cloudauth_upload_made(ngx_conf_t *cf,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_http_core_loc_conf_t *clcf)
{
    u_char                    *p;
    ngx_str_t                 *cred;
    ngx_http_core_srv_conf_t  *cscf;

    if (conf->resumable) {
        ngx_str_set(&conf->reply.allow,
                    "PUT, POST, PATCH, HEAD, DELETE, OPTIONS");
        conf->reply.headers = ngx_http_cloudauth_upload_resumable_headers;

    } else {
        ngx_str_set(&conf->reply.allow, "PUT, POST, OPTIONS");
        conf->reply.headers = NULL;
    }

    cscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);
    cred = &conf->gcs.cred->name;

    conf->aad.len = cscf->server_name.len + 1 + clcf->name.len + 1
                    + cred->len;

    p = ngx_pnalloc(cf->pool, conf->aad.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    conf->aad.data = p;

    p = ngx_cpymem(p, cscf->server_name.data, cscf->server_name.len);
    *p++ = '\0';
    p = ngx_cpymem(p, clcf->name.data, clcf->name.len);
    *p++ = '\0';
    ngx_memcpy(p, cred->data, cred->len);

    return NGX_OK;
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
        ucf->chunks = 1;
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


/*
 * A worker begins: the uploads counted active in its process slot were
 * those of a worker that is no more (killed: they never ended); they are
 * dropped from the count.
 */

static ngx_int_t
ngx_http_cloudauth_upload_init_process(ngx_cycle_t *cycle)
{
    ngx_atomic_uint_t           n;
    ngx_cloudauth_stats_t      *st;
    ngx_cloudauth_main_conf_t  *cmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_cloudauth_module);
    if (cmcf == NULL || cmcf->shm_zone == NULL) {
        return NGX_OK;
    }

    st = ngx_cloudauth_cache_stats(cmcf->shm_zone);
    if (st == NULL || ngx_process_slot < 0
        || ngx_process_slot >= NGX_MAX_PROCESSES)
    {
        return NGX_OK;
    }

    do {
        n = st->uploads_slot[ngx_process_slot];
    } while (n && !ngx_atomic_cmp_set(&st->uploads_slot[ngx_process_slot],
                                      n, 0));

    if (n) {
        (void) ngx_atomic_fetch_add(&st->uploads_active, -(ngx_atomic_int_t) n);

        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "cloudauth: upload: %uA uploads of a worker gone "
                      "before this one no longer count as active", n);
    }

    return NGX_OK;
}
