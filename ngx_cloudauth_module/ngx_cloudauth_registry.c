
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The credential registry: the kinds there are, and the
 * cloudauth_credential directive that defines a credential of one.  What
 * the kinds call while they read their parameters (parameter lookup, URL
 * checks, the fingerprint, lookup by name) is in ngx_cloudauth_conf.c,
 * which the kinds and this file use: no file here is used back.
 */


#include "ngx_cloudauth.h"


/* a new provider is one file and one line here */

ngx_cloudauth_kind_t  *ngx_cloudauth_kinds[] = {
    &ngx_cloudauth_kind_google_sa,
    &ngx_cloudauth_kind_google_impersonate,
    &ngx_cloudauth_kind_google_id_token,
    &ngx_cloudauth_kind_google_metadata,
    &ngx_cloudauth_kind_zoom_s2s,
    &ngx_cloudauth_kind_zoom_jwt,
    &ngx_cloudauth_kind_oauth2,
    &ngx_cloudauth_kind_google_external_account,
    NULL
};


static char *ngx_cloudauth_registry_subjects(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);
static char *ngx_cloudauth_registry_concurrency(ngx_conf_t *cf,
    ngx_cloudauth_cred_t *cred);


static ngx_regex_t *
ngx_cloudauth_registry_regex(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_str_t *pattern)
{
    u_char               errstr[NGX_MAX_CONF_ERRSTR];
    ngx_regex_compile_t  rc;

    ngx_memzero(&rc, sizeof(ngx_regex_compile_t));
    rc.pattern = *pattern;
    rc.pool = cf->pool;
    rc.err.len = NGX_MAX_CONF_ERRSTR;
    rc.err.data = errstr;

    if (ngx_regex_compile(&rc) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": subjects=: %V",
                           &cred->name, &rc.err);
        return NULL;
    }

    return rc.regex;
}


/*
 * cloudauth_credential NAME type=KIND PARAMETER=VALUE...: parses the
 * parameters, hands them to the kind's init, and refuses any the kind did
 * not read.
 */

char *
ngx_cloudauth_registry_credential(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_cloudauth_main_conf_t *cmcf = conf;

    u_char                 *p, errstr[NGX_MAX_CONF_ERRSTR];
    ngx_str_t              *value, *v;
    ngx_uint_t              i;
    ngx_keyval_t           *kv;
    ngx_cloudauth_cred_t   *cred, **cp;
    ngx_cloudauth_kind_t  **kind;

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > 64) {
        return "needs a name of 1 to 64 characters";
    }

    for (i = 0; i < value[1].len; i++) {
        if (!(ngx_cloudauth_isalnum(value[1].data[i]) || value[1].data[i] == '_'
              || value[1].data[i] == '-'))
        {
            return "needs a name of letters, digits, \"_\" and \"-\"";
        }
    }

    if (ngx_cloudauth_find_cred(cmcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\" is defined twice",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    cred = ngx_pcalloc(cf->pool, sizeof(ngx_cloudauth_cred_t));
    if (cred == NULL) {
        return NGX_CONF_ERROR;
    }

    cred->name = value[1];
    cred->index = cmcf->creds.nelts;
    cred->conf = cmcf;
    cred->file = cf->conf_file->file.name.data;
    cred->line = cf->conf_file->line;

    cred->params = ngx_array_create(cf->pool, cf->args->nelts,
                                    sizeof(ngx_keyval_t));
    cred->used = ngx_pcalloc(cf->pool, cf->args->nelts * sizeof(ngx_uint_t));
    if (cred->params == NULL || cred->used == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        p = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');

        if (p == NULL || p == value[i].data) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": \"%V\" is not "
                               "a name=value parameter", &cred->name,
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        kv = ngx_array_push(cred->params);
        if (kv == NULL) {
            return NGX_CONF_ERROR;
        }

        kv->key.data = value[i].data;
        kv->key.len = p - value[i].data;
        kv->value.data = p + 1;
        kv->value.len = value[i].data + value[i].len - p - 1;
    }

    v = ngx_cloudauth_param(cred, "type");
    if (v == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"type=\" is "
                           "required, e.g. type=google_service_account",
                           &cred->name);
        return NGX_CONF_ERROR;
    }

    for (kind = ngx_cloudauth_kinds; *kind; kind++) {
        if ((*kind)->name.len == v->len
            && ngx_strncmp((*kind)->name.data, v->data, v->len) == 0)
        {
            cred->kind = *kind;
            break;
        }
    }

    if (cred->kind == NULL) {
        p = errstr;

        for (kind = ngx_cloudauth_kinds; *kind; kind++) {
            p = ngx_slprintf(p, errstr + NGX_MAX_CONF_ERRSTR, "%s%V",
                             p == errstr ? "" : ", ", &(*kind)->name);
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": unknown type "
                           "\"%V\"; known types: %*s", &cred->name, v,
                           p - errstr, errstr);
        return NGX_CONF_ERROR;
    }

    if (ngx_cloudauth_registry_subjects(cf, cred) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    /* before the kind's init: the credentials it makes inherit it */

    if (ngx_cloudauth_registry_concurrency(cf, cred) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (cred->kind->init(cf, cred) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    /* after init: quota_project= overrides what the kind's file says */

    v = cred->kind->quota ? ngx_cloudauth_param(cred, "quota_project") : NULL;

    if (v
        && ngx_cloudauth_quota_project(cf, cred,
                                       ngx_cloudauth_copy_cstr(cf->pool, v),
                                       "quota_project=")
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    kv = cred->params->elts;

    for (i = 0; i < cred->params->nelts; i++) {
        if (!cred->used[i]) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": unknown "
                               "parameter \"%V\" for type=%V", &cred->name,
                               &kv[i].key, &cred->kind->name);
            return NGX_CONF_ERROR;
        }
    }

    cp = ngx_array_push(&cmcf->creds);
    if (cp == NULL) {
        return NGX_CONF_ERROR;
    }

    *cp = cred;

    return NGX_CONF_OK;
}


/* subject= and subjects=, for the kinds that take subjects */

static char *
ngx_cloudauth_registry_subjects(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    ngx_str_t  *v, re;

    v = ngx_cloudauth_param(cred, "subject");
    if (v) {
        cred->subject = *v;
    }

    v = ngx_cloudauth_param(cred, "subjects");
    if (v) {

        /*
         * the pattern must stand on its own: "a)|(.*" would close the
         * group it is wrapped in and match anything
         */

        if (ngx_cloudauth_registry_regex(cf, cred, v) == NULL) {
            return NGX_CONF_ERROR;
        }

        re.len = v->len + sizeof("^(?:)$") - 1;
        re.data = ngx_pnalloc(cf->pool, re.len);
        if (re.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_sprintf(re.data, "^(?:%V)$", v);

        cred->subjects = ngx_cloudauth_registry_regex(cf, cred, &re);
        if (cred->subjects == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if ((cred->subject.len || cred->subjects) && !cred->kind->subject) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": type=%V takes no "
                           "subject", &cred->name, &cred->kind->name);
        return NGX_CONF_ERROR;
    }

    /* the default subject obeys what a request's subject obeys */

    if (cred->subject.len
        && (ngx_cloudauth_subject_valid(cred->subject.data, cred->subject.len)
            != NGX_OK
            || !ngx_cloudauth_subject_allowed(cred, &cred->subject)))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": subject= must be "
                           "UTF-8 of at most %d bytes without control "
                           "characters, allowed by subjects=",
                           &cred->name, NGX_CLOUDAUTH_MAX_SUBJECT);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* concurrency=: token requests in flight at most, across all workers */

static char *
ngx_cloudauth_registry_concurrency(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred)
{
    ngx_int_t   n;
    ngx_str_t  *v;

    /* 0: a kind that signs makes no token request, it needs no slot */

    cred->concurrency = cred->kind->sign ? 0 : NGX_CLOUDAUTH_CONCURRENCY;

    v = ngx_cloudauth_param(cred, "concurrency");
    if (v) {
        n = ngx_atoi(v->data, v->len);

        if (n < 1 || n > NGX_CLOUDAUTH_MAX_CONCURRENCY) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": concurrency= "
                               "must be a number of token requests in "
                               "flight from 1 to %d, not \"%V\" (default "
                               "%d)", &cred->name,
                               NGX_CLOUDAUTH_MAX_CONCURRENCY, v,
                               NGX_CLOUDAUTH_CONCURRENCY);
            return NGX_CONF_ERROR;
        }

        if (cred->kind->sign) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": type=%V "
                               "signs its tokens here and makes no token "
                               "requests; remove concurrency=",
                               &cred->name, &cred->kind->name);
            return NGX_CONF_ERROR;
        }

        cred->concurrency = n;
    }

    return NGX_CONF_OK;
}
