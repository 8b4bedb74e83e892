
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * What the credential kinds call at configuration time: their parameters,
 * secrets and files, their URLs checked, the fingerprint that keys their
 * cache entries, other credentials by name, the quota project.
 */


#include "ngx_cloudauth.h"

#include <openssl/evp.h>


ngx_uint_t
ngx_cloudauth_isalnum(u_char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
           || (ch >= '0' && ch <= '9');
}


ngx_str_t *
ngx_cloudauth_param(ngx_cloudauth_cred_t *cred, char *name)
{
    size_t         len;
    ngx_uint_t     i;
    ngx_keyval_t  *kv;

    kv = cred->params->elts;
    len = ngx_strlen(name);

    for (i = 0; i < cred->params->nelts; i++) {
        if (kv[i].key.len == len
            && ngx_strncmp(kv[i].key.data, name, len) == 0)
        {
            cred->used[i] = 1;
            return &kv[i].value;
        }
    }

    return NULL;
}


ngx_cloudauth_cred_t *
ngx_cloudauth_find_cred(ngx_cloudauth_main_conf_t *cmcf, ngx_str_t *name)
{
    ngx_uint_t              i;
    ngx_cloudauth_cred_t  **cp;

    cp = cmcf->creds.elts;

    for (i = 0; i < cmcf->creds.nelts; i++) {
        if (cp[i]->name.len == name->len
            && ngx_strncmp(cp[i]->name.data, name->data, name->len) == 0)
        {
            return cp[i];
        }
    }

    return NULL;
}


/*
 * A URL a credential's requests go to, checked with libcurl's own parser
 * (ngx_cloudauth_url_check()): https://, or plain http:// to a loopback
 * address (with allow_metadata also to the metadata server); never a user
 * name or password.  The URL is shown with what could be one masked.
 */

char *
ngx_cloudauth_check_url(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    char *param, ngx_str_t *url, ngx_uint_t allow_metadata)
{
    u_char     *p, *q, *at, *host, *last;
    char       *why;
    ngx_str_t   shown;

    why = ngx_cloudauth_url_check(url, allow_metadata, NULL, NULL, cf->log);

    if (why == NULL) {
        return NGX_CONF_OK;
    }

    /* "scheme://user:password@host..." is shown as "scheme://...@host..." */

    shown = *url;
    last = url->data + url->len;

    host = ngx_strlcasestrn(url->data, last, (u_char *) "://", 3 - 1);
    host = host ? host + 3 : url->data;

    at = NULL;

    for (p = host; p < last && *p != '/' && *p != '?' && *p != '#'; p++) {
        if (*p == '@') {
            at = p;
        }
    }

    if (at) {
        shown.len = (host - url->data) + 3 + (last - at);
        shown.data = ngx_pnalloc(cf->pool, shown.len);
        if (shown.data == NULL) {
            return NGX_CONF_ERROR;
        }

        q = ngx_cpymem(shown.data, url->data, host - url->data);
        q = ngx_cpymem(q, "...", 3);
        ngx_memcpy(q, at, last - at);
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "cloudauth_credential \"%V\": %s \"%V\" %s",
                       &cred->name, param, &shown, why);

    return NGX_CONF_ERROR;
}


/* the identity of a credential: its cache entries are keyed by it */

char *
ngx_cloudauth_fingerprint(ngx_cloudauth_cred_t *cred, ngx_str_t *parts,
    ngx_uint_t n)
{
    ngx_int_t    ok;
    ngx_uint_t   i;
    EVP_MD_CTX  *md;

    md = EVP_MD_CTX_new();
    if (md == NULL) {
        return NGX_CONF_ERROR;
    }

    ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL)
         && EVP_DigestUpdate(md, cred->name.data, cred->name.len + 1)
         && EVP_DigestUpdate(md, cred->kind->name.data,
                             cred->kind->name.len + 1);

    for (i = 0; ok && i < n; i++) {
        ok = EVP_DigestUpdate(md, parts[i].data, parts[i].len)
             && EVP_DigestUpdate(md, "", 1);
    }

    ok = ok && EVP_DigestFinal_ex(md, cred->fp, NULL);

    EVP_MD_CTX_free(md);

    return ok ? NGX_CONF_OK : NGX_CONF_ERROR;
}


ngx_int_t
ngx_cloudauth_read_file(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    ngx_str_t *path, ngx_str_t *out, char **err)
{
    ngx_err_t    errn;
    struct stat  sb;

    if (ngx_conf_full_name(cf->cycle, path, 1) != NGX_OK) {
        *err = "cannot resolve the path";
        return NGX_ERROR;
    }

    if (ngx_cloudauth_read_small(path->data, cf->pool, out, &sb, err, &errn,
                                 cf->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if ((sb.st_mode & (S_IRGRP | S_IROTH)) && cred) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "cloudauth: credential \"%V\": \"%V\" is readable "
                           "by group or others; \"chmod 600\" it",
                           &cred->name, path);

    } else if (sb.st_mode & (S_IRGRP | S_IROTH)) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "cloudauth: \"%V\" is readable by group or "
                           "others; \"chmod 600\" it", path);
    }

    return NGX_OK;
}


/*
 * The secret NAME: read from the file NAME_file= at configuration time
 * (one trailing newline dropped), or given inline as NAME= with a warning.
 */

ngx_int_t
ngx_cloudauth_secret(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred, char *name,
    ngx_str_t *secret)
{
    char       *err;
    u_char      file[64];
    ngx_str_t  *v, *inl, path;

    ngx_sprintf(file, "%s_file%Z", name);

    v = ngx_cloudauth_param(cred, (char *) file);
    inl = ngx_cloudauth_param(cred, name);

    if (v && inl) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"%s=\" and "
                           "\"%s=\" both given; keep \"%s=\" only",
                           &cred->name, file, name, file);
        return NGX_ERROR;
    }

    if (inl) {
        if (inl->len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cloudauth_credential \"%V\": \"%s=\" is "
                               "empty", &cred->name, name);
            return NGX_ERROR;
        }

        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "cloudauth_credential \"%V\": inline \"%s=\" "
                           "puts the secret into the configuration, where "
                           "\"nginx -T\" shows it; use \"%s=\" with a file "
                           "of mode 600 instead", &cred->name, name, file);
        *secret = *inl;
        return NGX_OK;
    }

    if (v == NULL || v->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": \"%s=\" is "
                           "required: the path of a file (mode 600) holding "
                           "the %s", &cred->name, file, name);
        return NGX_ERROR;
    }

    path = *v;

    if (ngx_cloudauth_read_file(cf, cred, &path, secret, &err) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": %s \"%V\": %s",
                           &cred->name, file, &path, err);
        return NGX_ERROR;
    }

    if (secret->len && secret->data[secret->len - 1] == LF) {
        secret->len--;

        if (secret->len && secret->data[secret->len - 1] == CR) {
            secret->len--;
        }
    }

    if (secret->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": %s \"%V\": the "
                           "file is empty; put the %s into it",
                           &cred->name, file, &path, name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The quota project of a Google credential, from its file or from
 * quota_project= (from, for the message): a project ID or number, sent as
 * x-goog-user-project with the requests its token goes with.  A later
 * call replaces what an earlier one set.
 */

char *
ngx_cloudauth_quota_project(ngx_conf_t *cf, ngx_cloudauth_cred_t *cred,
    const char *value, const char *from)
{
    size_t   len, i;
    u_char   ch;

    if (value == NULL) {
        return NGX_CONF_ERROR;
    }

    len = ngx_strlen(value);

    for (i = 0; i < len; i++) {
        ch = value[i];

        if (!ngx_cloudauth_isalnum(ch) && ch != '-' && ch != '.'
            && ch != ':' && ch != '_')
        {
            break;
        }
    }

    if (len == 0 || len > 100 || i < len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cloudauth_credential \"%V\": %s \"%s\" is not "
                           "a Google Cloud project ID or number",
                           &cred->name, from, value);
        return NGX_CONF_ERROR;
    }

    cred->quota_project.len = len;
    cred->quota_project.data = ngx_pnalloc(cf->pool, len);
    if (cred->quota_project.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(cred->quota_project.data, value, len);

    return NGX_CONF_OK;
}
