
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * type=google_external_account: its configuration file, the JSON "gcloud
 * iam workload-identity-pools create-cred-config" writes, read into the
 * credential and its internal ones (NAME.subject, NAME.sts), each made of
 * the shared pieces: the configuration helpers, the URL policy, the IAM
 * generateAccessToken body.  The run-time steps are the kind's own file.
 */


#include "ngx_cloudauth_google_ea.h"

#include <jansson.h>


#define NGX_CLOUDAUTH_EA_TOKEN_URL     "https://sts.googleapis.com/v1/token"
#define NGX_CLOUDAUTH_EA_CLOUD         \
    "https://www.googleapis.com/auth/cloud-platform"


/* the configuration file's top-level fields, as jansson holds them */

typedef struct {
    const char                *audience;
    const char                *token_type;
    const char                *token_url;
    const char                *imp_url;
    const char                *project;     /* workforce_pool_user_project */
    const char                *quota;       /* quota_project_id */
    json_t                    *options;     /* service_account_impersonation */
    json_t                    *source;      /* credential_source */
} ngx_cloudauth_ea_file_t;


static char *ngx_cloudauth_ea_config(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, json_t *root, ngx_str_t *scopes);
static char *ngx_cloudauth_ea_fields(json_t *root,
    ngx_cloudauth_ea_file_t *fl);
static char *ngx_cloudauth_ea_source(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, json_t *src, ngx_cloudauth_cred_t *sts,
    ngx_cloudauth_ea_sts_t *st);
static char *ngx_cloudauth_ea_file_source(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, json_t *src, json_t *file,
    ngx_cloudauth_ea_sts_t *st);
static char *ngx_cloudauth_ea_url_source(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, json_t *src, json_t *url,
    ngx_cloudauth_cred_t *sts);
static char *ngx_cloudauth_ea_format(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, json_t *src, ngx_str_t *field);
static char *ngx_cloudauth_ea_headers(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, json_t *headers, ngx_cloudauth_ea_url_t *eu,
    ngx_str_t *all);
static char *ngx_cloudauth_ea_form(ngx_conf_t *cf,
    ngx_cloudauth_ea_sts_t *st, const char *audience, const char *type,
    ngx_str_t *scope, const char *project);
static char *ngx_cloudauth_ea_impersonation(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, ngx_cloudauth_ea_t *ea, const char *url,
    json_t *options, ngx_str_t *scopes);
static ngx_cloudauth_cred_t *ngx_cloudauth_ea_internal(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, char *suffix, ngx_cloudauth_kind_t *kind);
static char *ngx_cloudauth_ea_register(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred, ngx_cloudauth_cred_t *internal);
static ngx_int_t ngx_cloudauth_ea_strdup(ngx_pool_t *pool, const char *s,
    ngx_str_t *out);


char *
ngx_cloudauth_ea_init(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    char          *err, *rv;
    json_t        *root;
    ngx_err_t      errn;
    ngx_str_t     *v, path, text, scopes;
    struct stat    sb;
    json_error_t   jerr;

    v = ngx_cloudauth_param(cred, "config_file");

    if (v == NULL || v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": "
                           "type=google_external_account needs "
                           "\"config_file=\": the JSON file \"gcloud iam "
                           "workload-identity-pools create-cred-config\" "
                           "writes", &cred->name);
        return NGX_CONF_ERROR;
    }

    path = *v;

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_read_small(path.data, cf->pool, &text, &sb, &err,
                                 &errn, cf->log)
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, errn,
                           "cloudauth_credential \"%V\": config_file "
                           "\"%V\": %s", &cred->name, &path, err);
        return NGX_CONF_ERROR;
    }

    root = json_loadb((char *) text.data, text.len, JSON_REJECT_DUPLICATES,
                      &jerr);

    if (root == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": config_file "
                           "\"%V\" is not JSON: %s (line %d)",
                           &cred->name, &path, jerr.text, jerr.line);
        return NGX_CONF_ERROR;
    }

    if (!json_is_object(root)) {
        json_decref(root);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": config_file "
                           "\"%V\" is not a JSON object", &cred->name,
                           &path);
        return NGX_CONF_ERROR;
    }

    v = ngx_cloudauth_param(cred, "scopes");

    if (v && v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": empty \"scopes=\"; "
                           "leave it out for %s", &cred->name,
                           NGX_CLOUDAUTH_EA_CLOUD);
        json_decref(root);
        return NGX_CONF_ERROR;
    }

    if (v) {
        scopes = *v;

    } else {
        ngx_str_set(&scopes, NGX_CLOUDAUTH_EA_CLOUD);
    }

    rv = ngx_cloudauth_ea_config(cf, cred, root, &scopes);

    json_decref(root);

    if (rv == NGX_CONF_ERROR) {
        return NGX_CONF_ERROR;
    }

    if (rv != NGX_CONF_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": config_file "
                           "\"%V\": %s", &cred->name, &path, rv);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static const char *
ngx_cloudauth_ea_string(json_t *root, const char *key, ngx_uint_t *bad)
{
    json_t  *v;

    v = json_object_get(root, key);

    if (v == NULL || json_is_null(v)) {
        return NULL;
    }

    if (!json_is_string(v) || json_string_length(v) == 0
        || ngx_strlen(json_string_value(v)) != json_string_length(v))
    {
        *bad = 1;
        return NULL;
    }

    return json_string_value(v);
}


/*
 * The configuration file's top-level fields, checked; an error is a string
 * said after the file's name.
 */

static char *
ngx_cloudauth_ea_fields(json_t *root, ngx_cloudauth_ea_file_t *fl)
{
    ngx_uint_t   bad, workforce;
    const char  *type;

    static u_char  buf[NGX_MAX_CONF_ERRSTR];

    bad = 0;

    type = ngx_cloudauth_ea_string(root, "type", &bad);

    if (type == NULL || ngx_strcmp(type, "external_account") != 0) {
        (void) ngx_snprintf(buf, sizeof(buf) - 1,
                            "\"type\" is %s%s%s, not \"external_account\"%s%Z",
                            type ? "\"" : "", type ? type : "missing",
                            type ? "\"" : "",
                            (type && ngx_strcmp(type, "service_account") == 0)
                            ? ": a service-account key is "
                              "type=google_service_account" : "");
        return (char *) buf;
    }

    fl->audience = ngx_cloudauth_ea_string(root, "audience", &bad);
    fl->token_type = ngx_cloudauth_ea_string(root, "subject_token_type", &bad);
    fl->token_url = ngx_cloudauth_ea_string(root, "token_url", &bad);
    fl->imp_url = ngx_cloudauth_ea_string(root,
                                          "service_account_impersonation_url",
                                          &bad);
    fl->project = ngx_cloudauth_ea_string(root, "workforce_pool_user_project",
                                          &bad);
    fl->quota = ngx_cloudauth_ea_string(root, "quota_project_id", &bad);

    if (bad) {
        return "\"audience\", \"subject_token_type\", \"token_url\", "
               "\"service_account_impersonation_url\", "
               "\"workforce_pool_user_project\" and \"quota_project_id\" "
               "must be non-empty strings";
    }

    if (fl->audience == NULL) {
        return "no \"audience\" (//iam.googleapis.com/projects/NUMBER/"
               "locations/global/workloadIdentityPools/POOL/providers/"
               "PROVIDER)";
    }

    if (fl->token_type == NULL) {
        return "no \"subject_token_type\" (e.g. "
               "urn:ietf:params:oauth:token-type:jwt)";
    }

    if (json_object_get(root, "client_id")
        || json_object_get(root, "client_secret"))
    {
        return "\"client_id\" and \"client_secret\" (STS client "
               "authentication) are not supported";
    }

    workforce = ngx_strncmp(fl->audience, "//iam.googleapis.com/locations/",
                            sizeof("//iam.googleapis.com/locations/") - 1)
                    == 0
                && ngx_strstr(fl->audience, "/workforcePools/") != NULL;

    if (fl->project && !workforce) {
        return "\"workforce_pool_user_project\" is for workforce pools "
               "only (an \"audience\" of //iam.googleapis.com/locations/"
               "global/workforcePools/...)";
    }

    fl->options = json_object_get(root, "service_account_impersonation");

    if (fl->options && !json_is_null(fl->options) && fl->imp_url == NULL) {
        return "\"service_account_impersonation\" without "
               "\"service_account_impersonation_url\"";
    }

    fl->source = json_object_get(root, "credential_source");

    if (!json_is_object(fl->source)) {
        return "no \"credential_source\" object";
    }

    return NGX_CONF_OK;
}


/*
 * The credential from the file's fields: the exchange (the credential
 * itself, or NAME.sts before an impersonation) and its subject token's
 * source.  An error is a string said after the file's name,
 * NGX_CONF_ERROR when it was logged already.
 */

static char *
ngx_cloudauth_ea_config(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    json_t *root, ngx_str_t *scopes)
{
    char                    *rv;
    ngx_str_t                part[4], cloud;
    ngx_cloudauth_ea_t      *ea;
    ngx_cloudauth_cred_t    *sts;
    ngx_cloudauth_ea_sts_t  *st;
    ngx_cloudauth_ea_file_t  fl;

    ngx_memzero(&fl, sizeof(ngx_cloudauth_ea_file_t));

    rv = ngx_cloudauth_ea_fields(root, &fl);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (fl.quota
        && ngx_cloudauth_quota_project(cf, cred, fl.quota,
                                       "config_file's \"quota_project_id\"")
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    ea = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_ea_t));
    st = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_ea_sts_t));
    if (ea == NULL || st == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->data = ea;

    if (ngx_cloudauth_ea_strdup(cf->pool,
                                fl.token_url ? fl.token_url
                                             : NGX_CLOUDAUTH_EA_TOKEN_URL,
                                &st->token_url)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_check_url(cf, cred, "token_url", &st->token_url, 0)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    st->jwt = ngx_strcmp(fl.token_type,
                         "urn:ietf:params:oauth:token-type:jwt") == 0
              || ngx_strcmp(fl.token_type,
                            "urn:ietf:params:oauth:token-type:id_token")
                 == 0;

    /*
     * Impersonating, the exchange asks for cloud-platform (what IAM
     * Credentials needs) and the service account's token for scopes=;
     * else the exchange asks for scopes= itself.
     */

    ngx_str_set(&cloud, NGX_CLOUDAUTH_EA_CLOUD);

    rv = ngx_cloudauth_ea_form(cf, st, fl.audience, fl.token_type,
                               fl.imp_url ? &cloud : scopes, fl.project);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (fl.imp_url == NULL) {
        ea->sts = st;
        sts = cred;

    } else {
        sts = ngx_cloudauth_ea_internal(cf, cred, ".sts",
                                        &ngx_cloudauth_ea_sts_kind);
        if (sts == NULL) {
            return NGX_CONF_ERROR;
        }

        sts->data = st;
    }

    rv = ngx_cloudauth_ea_source(cf, cred, fl.source, sts, st);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* the exchange's identity: where, what is asked, for which subject */

    part[0] = st->token_url;
    part[1] = st->form;

    if (sts->source) {
        part[2] = sts->source->name;
        ngx_str_null(&part[3]);

    } else {
        part[2] = st->path;
        part[3] = st->field;
    }

    if (sts == cred) {
        return ngx_cloudauth_fingerprint(cred, part, 4);
    }

    if (ngx_cloudauth_fingerprint(sts, part, 4) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_ea_register(cf, cred, sts) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    cred->source = sts;

    rv = ngx_cloudauth_ea_impersonation(cf, cred, ea, fl.imp_url, fl.options,
                                        scopes);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    part[0] = sts->name;
    part[1] = ea->url;
    part[2] = ea->body;

    return ngx_cloudauth_fingerprint(cred, part, 3);
}


/* credential_source: a file, read at each exchange, or a URL */

static char *
ngx_cloudauth_ea_source(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    json_t *src, ngx_cloudauth_cred_t *sts, ngx_cloudauth_ea_sts_t *st)
{
    json_t  *file, *url;

    if (json_object_get(src, "environment_id")
        || json_object_get(src, "region_url")
        || json_object_get(src, "regional_cred_verification_url"))
    {
        return "credential_source \"aws\" is not supported: only \"file\" "
               "and \"url\" sources are (on AWS, use a key file or a file "
               "source your own agent keeps fresh)";
    }

    if (json_object_get(src, "executable")) {
        return "credential_source \"executable\" is not supported: nginx "
               "runs no programs for tokens; only \"file\" and \"url\" "
               "sources are (let the program write a file instead)";
    }

    file = json_object_get(src, "file");
    url = json_object_get(src, "url");

    if ((file == NULL) == (url == NULL)) {
        return "credential_source needs one of \"file\" and \"url\" "
               "(\"aws\", \"executable\" and \"certificate\" sources are "
               "not supported)";
    }

    if (!json_is_string(file ? file : url)
        || json_string_length(file ? file : url) == 0
        || ngx_strlen(json_string_value(file ? file : url))
           != json_string_length(file ? file : url))
    {
        return "credential_source \"file\" or \"url\" is not a non-empty "
               "string";
    }

    if (file && json_object_get(src, "headers")) {
        return "credential_source \"headers\" is for a \"url\" source";
    }

    if (file) {
        return ngx_cloudauth_ea_file_source(cf, cred, src, file, st);
    }

    return ngx_cloudauth_ea_url_source(cf, cred, src, url, sts);
}


/* a file source: checked now, read by the workers at each exchange */

static char *
ngx_cloudauth_ea_file_source(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    json_t *src, json_t *file, ngx_cloudauth_ea_sts_t *st)
{
    char        *rv, *err;
    ngx_err_t    errn;
    ngx_str_t    raw, token;
    struct stat  sb;

    static u_char  buf[NGX_MAX_CONF_ERRSTR];

    rv = ngx_cloudauth_ea_format(cf, cred, src, &st->field);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* a relative name is made full, and NUL-terminated, by nginx */

    if (ngx_cloudauth_ea_strdup(cf->pool, json_string_value(file),
                                &st->path)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &st->path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* what the workers will read: there, readable, with a token */

    if (ngx_cloudauth_read_small(st->path.data, cf->temp_pool, &raw,
                                 &sb, &err, &errn, cf->log)
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, errn,
                           "cloudauth_credential \"%V\": "
                           "credential_source file \"%V\": %s",
                           &cred->name, &st->path, err);
        return NGX_CONF_ERROR;
    }

    err = ngx_cloudauth_answer_field(&raw, &st->field, cf->temp_pool,
                                   &token);

    ngx_explicit_memzero(raw.data, raw.len);

    if (err) {
        (void) ngx_snprintf(buf, sizeof(buf) - 1,
                            "credential_source file \"%V\": %s%Z",
                            &st->path, err);
        return (char *) buf;
    }

    ngx_explicit_memzero(token.data, token.len);

    return NGX_CONF_OK;
}


/* a URL source: the internal credential NAME.subject fetches it */

static char *
ngx_cloudauth_ea_url_source(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    json_t *src, json_t *url, ngx_cloudauth_cred_t *sts)
{
    char                    *rv;
    ngx_str_t                part[3], all;
    ngx_cloudauth_cred_t    *uc;
    ngx_cloudauth_ea_url_t  *eu;

    uc = ngx_cloudauth_ea_internal(cf, cred, ".subject",
                                   &ngx_cloudauth_ea_url_kind);
    eu = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_ea_url_t));
    if (uc == NULL || eu == NULL) {
        return NGX_CONF_ERROR;
    }

    uc->data = eu;

    rv = ngx_cloudauth_ea_format(cf, cred, src, &eu->field);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_cloudauth_ea_strdup(cf->pool, json_string_value(url), &eu->url)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_check_url(cf, cred, "credential_source url",
                                &eu->url, 1)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    rv = ngx_cloudauth_ea_headers(cf, cred, json_object_get(src, "headers"),
                                  eu, &all);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    part[0] = eu->url;
    part[1] = eu->field;
    part[2] = all;

    if (ngx_cloudauth_fingerprint(uc, part, 3) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_ea_register(cf, cred, uc) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    sts->source = uc;

    return NGX_CONF_OK;
}


/* "format": {"type": "text"} (the default) or {"type": "json", ...} */

static char *
ngx_cloudauth_ea_format(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    json_t *src, ngx_str_t *field)
{
    json_t      *format;
    ngx_uint_t   bad;
    const char  *type, *name;

    format = json_object_get(src, "format");

    if (format == NULL || json_is_null(format)) {
        ngx_str_null(field);
        return NGX_CONF_OK;
    }

    if (!json_is_object(format)) {
        return "credential_source \"format\" is not an object";
    }

    bad = 0;
    type = ngx_cloudauth_ea_string(format, "type", &bad);
    name = ngx_cloudauth_ea_string(format, "subject_token_field_name", &bad);

    if (bad) {
        return "credential_source \"format\": \"type\" and "
               "\"subject_token_field_name\" must be non-empty strings";
    }

    if (type == NULL || ngx_strcmp(type, "text") == 0) {
        ngx_str_null(field);
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(type, "json") != 0) {
        return "credential_source \"format\" \"type\" is neither \"text\" "
               "nor \"json\"";
    }

    if (name == NULL) {
        return "credential_source \"format\" of type \"json\" needs "
               "\"subject_token_field_name\"";
    }

    if (ngx_cloudauth_ea_strdup(cf->pool, name, field) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a URL source's "headers": {"Name": "value"} as "Name: value" lines */

static char *
ngx_cloudauth_ea_headers(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    json_t *headers, ngx_cloudauth_ea_url_t *eu, ngx_str_t *all)
{
    u_char      *p, ch, *a;
    char       **h;
    json_t      *v;
    size_t       len, n;
    const char  *key;

    if (ngx_array_init(&eu->headers, cf->pool, 2, sizeof(char *)) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_str_null(all);

    if (headers == NULL || json_is_null(headers)) {
        return NGX_CONF_OK;
    }

    if (!json_is_object(headers)) {
        return "credential_source \"headers\" is not an object";
    }

    len = 0;

    json_object_foreach(headers, key, v) {
        if (!json_is_string(v)) {
            return "credential_source \"headers\": a value is not a string";
        }

        n = ngx_strlen(key);

        if (n == 0) {
            return "credential_source \"headers\": an empty header name";
        }

        for (p = (u_char *) key; *p; p++) {
            ch = *p;

            if (ch <= ' ' || ch >= 0x7f || ch == ':' || ch == '(' || ch == ')'
                || ch == '<' || ch == '>' || ch == '@' || ch == ',' || ch == ';'
                || ch == '\\' || ch == '"' || ch == '/' || ch == '['
                || ch == ']' || ch == '?' || ch == '=' || ch == '{'
                || ch == '}')
            {
                return "credential_source \"headers\": a header name "
                       "that is not an HTTP token";
            }
        }

        if (ngx_strlen(json_string_value(v)) != json_string_length(v)) {
            return "credential_source \"headers\": a value with a NUL";
        }

        for (p = (u_char *) json_string_value(v); *p; p++) {
            if ((*p < ' ' && *p != '\t') || *p == 0x7f) {
                return "credential_source \"headers\": a value with a "
                       "control character";
            }
        }

        h = ngx_array_push(&eu->headers);
        if (h == NULL) {
            return NGX_CONF_ERROR;
        }

        *h = ngx_pnalloc(cf->pool, n + 2 + json_string_length(v) + 1);
        if (*h == NULL) {
            return NGX_CONF_ERROR;
        }

        (void) ngx_sprintf((u_char *) *h, "%s: %s%Z", key,
                           json_string_value(v));

        len += ngx_strlen(*h) + 1;
    }

    all->data = ngx_pnalloc(cf->pool, len);
    if (all->data == NULL) {
        return NGX_CONF_ERROR;
    }

    h = eu->headers.elts;
    a = all->data;

    for (n = 0; n < eu->headers.nelts; n++) {
        a = ngx_cpymem(a, h[n], ngx_strlen(h[n]));
        *a++ = LF;
    }

    all->len = a - all->data;

    return NGX_CONF_OK;
}


static u_char *
ngx_cloudauth_ea_field(u_char *p, char *name, ngx_str_t *value)
{
    p = ngx_cpymem(p, name, ngx_strlen(name));
    *p++ = '=';

    return ngx_cloudauth_form_escape(p, value);
}


/*
 * The RFC 8693 form, but for the subject token itself, which the exchange
 * appends: grant_type, audience, scope (space-separated),
 * requested_token_type, subject_token_type, and options for a workforce
 * pool's user project.
 */

static char *
ngx_cloudauth_ea_form(ngx_conf_t *cf, ngx_cloudauth_ea_sts_t *st,
    const char *audience, const char *type, ngx_str_t *scope,
    const char *project)
{
    u_char      *p;
    char        *text;
    json_t      *opt;
    size_t       len;
    ngx_str_t    grant, requested, aud, typ, scp, options;
    ngx_uint_t   i;

    ngx_str_set(&grant, "urn:ietf:params:oauth:grant-type:token-exchange");
    ngx_str_set(&requested, "urn:ietf:params:oauth:token-type:access_token");

    aud.data = (u_char *) audience;
    aud.len = ngx_strlen(audience);
    typ.data = (u_char *) type;
    typ.len = ngx_strlen(type);

    /* scopes=a,b: "a b" */

    scp.len = scope->len;
    scp.data = ngx_pnalloc(cf->pool, scp.len);
    if (scp.data == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < scope->len; i++) {
        scp.data[i] = (scope->data[i] == ',') ? ' ' : scope->data[i];
    }

    ngx_str_null(&options);

    if (project) {
        opt = json_pack("{s:s}", "userProject", project);
        text = opt ? json_dumps(opt, JSON_COMPACT) : NULL;

        if (opt) {
            json_decref(opt);
        }

        if (text == NULL) {
            return NGX_CONF_ERROR;
        }

        options.len = ngx_strlen(text);
        options.data = ngx_pnalloc(cf->pool, options.len);

        if (options.data) {
            ngx_memcpy(options.data, text, options.len);
        }

        free(text);

        if (options.data == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    len = sizeof("grant_type=&audience=&scope=&requested_token_type="
                 "&subject_token_type=&subject_token=") - 1
          + ngx_cloudauth_form_escape_len(&grant)
          + ngx_cloudauth_form_escape_len(&aud)
          + ngx_cloudauth_form_escape_len(&scp)
          + ngx_cloudauth_form_escape_len(&requested)
          + ngx_cloudauth_form_escape_len(&typ);

    if (options.len) {
        len += sizeof("&options=") - 1
               + ngx_cloudauth_form_escape_len(&options);
    }

    st->form.data = ngx_pnalloc(cf->pool, len);
    if (st->form.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cloudauth_ea_field(st->form.data, "grant_type", &grant);
    p = ngx_cloudauth_ea_field(p, "&audience", &aud);
    p = ngx_cloudauth_ea_field(p, "&scope", &scp);
    p = ngx_cloudauth_ea_field(p, "&requested_token_type", &requested);
    p = ngx_cloudauth_ea_field(p, "&subject_token_type", &typ);

    if (options.len) {
        p = ngx_cloudauth_ea_field(p, "&options", &options);
    }

    p = ngx_cpymem(p, "&subject_token=", sizeof("&subject_token=") - 1);

    st->form.len = p - st->form.data;

    return NGX_CONF_OK;
}


/* generateAccessToken: its URL, and {"scope": [...], "lifetime": "Ns"} */

static char *
ngx_cloudauth_ea_impersonation(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_ea_t *ea, const char *url, json_t *options,
    ngx_str_t *scopes)
{
    json_t      *v;
    json_int_t   seconds;

    static char  suffix[] = ":generateAccessToken";

    if (ngx_cloudauth_ea_strdup(cf->pool, url, &ea->url) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_check_url(cf, cred, "service_account_impersonation_url",
                                &ea->url, 0)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ea->url.len < sizeof(suffix) - 1
        || ngx_strncmp(ea->url.data + ea->url.len - (sizeof(suffix) - 1),
                       suffix, sizeof(suffix) - 1)
           != 0)
    {
        return "\"service_account_impersonation_url\" does not end in "
               "\":generateAccessToken\" (https://iamcredentials."
               "googleapis.com/v1/projects/-/serviceAccounts/EMAIL"
               ":generateAccessToken)";
    }

    seconds = 3600;

    if (options && !json_is_null(options)) {
        v = json_is_object(options)
            ? json_object_get(options, "token_lifetime_seconds") : NULL;

        if (!json_is_object(options)
            || (v && !json_is_integer(v)))
        {
            return "\"service_account_impersonation\" is not "
                   "{\"token_lifetime_seconds\": N}";
        }

        if (v) {
            seconds = json_integer_value(v);
        }
    }

    if (seconds < 600 || seconds > 43200) {
        return "\"token_lifetime_seconds\" must be 600 to 43200";
    }

    return ngx_cloudauth_google_iam_body(cf, cred, scopes, (time_t) seconds,
                                         &ea->body);
}


/* an internal credential NAME<suffix>, not yet registered */

static ngx_cloudauth_cred_t *
ngx_cloudauth_ea_internal(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    char *suffix, ngx_cloudauth_kind_t *kind)
{
    ngx_cloudauth_cred_t  *ic;

    ic = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_cred_t));
    if (ic == NULL) {
        return NULL;
    }

    ic->conf = cred->conf;
    ic->concurrency = cred->concurrency;

    /* NUL-terminated as the names nginx parsed: the fingerprint hashes it */

    ic->name.len = cred->name.len + ngx_strlen(suffix);
    ic->name.data = ngx_pnalloc(cf->pool, ic->name.len + 1);
    if (ic->name.data == NULL) {
        return NULL;
    }

    ngx_sprintf(ic->name.data, "%V%s%Z", &cred->name, suffix);

    ic->kind = kind;
    ic->file = cred->file;
    ic->line = cred->line;

    ic->params = ngx_array_create(cf->pool, 1, sizeof(ngx_keyval_t));
    if (ic->params == NULL) {
        return NULL;
    }

    return ic;
}


/* into the main configuration's credentials, before the outer one */

static char *
ngx_cloudauth_ea_register(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_cloudauth_cred_t *internal)
{
    ngx_cloudauth_cred_t      **cp;
    ngx_cloudauth_main_conf_t  *cmcf;

    cmcf = cred->conf;

    if (ngx_cloudauth_find_cred(cmcf, &internal->name)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"%V\" exists "
                           "already", &cred->name, &internal->name);
        return NGX_CONF_ERROR;
    }

    internal->index = cmcf->creds.nelts;

    cp = ngx_array_push(&cmcf->creds);
    if (cp == NULL) {
        return NGX_CONF_ERROR;
    }

    *cp = internal;

    /* the outer credential is added after its internal ones */
    cred->index = cmcf->creds.nelts;

    return NGX_CONF_OK;
}


/* a NUL-terminated copy of what jansson holds */

static ngx_int_t
ngx_cloudauth_ea_strdup(ngx_pool_t *pool, const char *s, ngx_str_t *out)
{
    out->len = ngx_strlen(s);
    out->data = ngx_pnalloc(pool, out->len + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, s, out->len + 1);

    return NGX_OK;
}
