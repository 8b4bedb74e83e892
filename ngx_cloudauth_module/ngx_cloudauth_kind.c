
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * What credential kinds share: parameter lookup, URL checks, the
 * fingerprint that keys a credential's cache entries, lookup by name,
 * reading key and secret files at configuration time, building token
 * requests, and reading OAuth2-shaped answers.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


#define NGX_CLOUDAUTH_MAX_FILE  65536


static void ngx_cloudauth_error_text(ngx_pool_t *pool,
    ngx_cloudauth_fetch_t *f, json_t *json, ngx_cloudauth_result_t *res);
static ngx_int_t ngx_cloudauth_token_copy(ngx_pool_t *pool, u_char *s,
    size_t len, ngx_cloudauth_result_t *res);


/* what the kinds call while they read their parameters */

/*
 * Whether subjects= allows a subject: the whole subject must match, which
 * the pattern's own alternatives cannot escape ("a)|(.*" wrapped in
 * "^(?:...)$" would match anything): the match must span it all.
 */

ngx_uint_t
ngx_cloudauth_subject_allowed(ngx_cloudauth_cred_t *cred, ngx_str_t *subject)
{
    int  captures[3];

    if (cred->subjects == NULL) {
        return 1;
    }

    if (ngx_regex_exec(cred->subjects, subject, captures, 3) < 0) {
        return 0;
    }

    return captures[0] == 0 && (size_t) captures[1] == subject->len;
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

    why = ngx_cloudauth_url_check(url, allow_metadata, cf->log);

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
 * A small local file, read without stalling the process (a worker at
 * request time, the master at a reload): opened with O_NONBLOCK (a FIFO
 * put in its place does not block the open), checked to be a regular
 * file of at most 64 KiB, read with a single read().  On tmpfs (a
 * Kubernetes projected token) that is a copy from memory.  The text is
 * NUL-terminated; sb gets the file's stat().
 */

ngx_int_t
ngx_cloudauth_read_small(u_char *path, ngx_pool_t *pool, ngx_str_t *out,
    struct stat *sb, char **err, ngx_err_t *errn, ngx_log_t *log)
{
    int        fd;
    ssize_t    n;
    ngx_int_t  rc;

    rc = NGX_ERROR;
    *errn = 0;

    fd = open((char *) path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

    if (fd == -1) {
        *errn = ngx_errno;
        *err = (*errn == NGX_ENOENT) ? "no such file"
               : (*errn == NGX_EACCES) ? "cannot open it (the workers' "
                                         "user must be able to read it)"
               : "cannot open it";
        return NGX_ERROR;
    }

    if (fstat(fd, sb) == -1) {
        *errn = ngx_errno;
        *err = "fstat() failed";
        goto done;
    }

    if (!S_ISREG(sb->st_mode)) {
        *err = "not a regular file";
        goto done;
    }

    if (sb->st_size > NGX_CLOUDAUTH_MAX_FILE) {
        *err = "larger than 64 KiB";
        goto done;
    }

    out->data = ngx_pnalloc(pool, (size_t) sb->st_size + 1);
    if (out->data == NULL) {
        *err = "out of memory";
        goto done;
    }

    /* one byte more than fstat() said: a file that grew is noticed */

    n = read(fd, out->data, (size_t) sb->st_size + 1);

    if (n == -1) {
        *errn = ngx_errno;
        *err = "cannot read it";
        goto done;
    }

    if (n > sb->st_size) {
        ngx_explicit_memzero(out->data, (size_t) n);
        *err = "it changed while it was read";
        goto done;
    }

    out->len = (size_t) n;
    out->data[n] = '\0';
    rc = NGX_OK;

done:

    if (close(fd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "close() \"%s\" failed", path);
    }

    return rc;
}


/*
 * The token request's body and its "Content-Type: ..." header line: the
 * engine wipes a body once it is sent (it holds secrets), so each request
 * gets its own copy of the kind's text.
 */

ngx_int_t
ngx_cloudauth_set_body(ngx_pool_t *pool, ngx_cloudauth_request_t *req,
    u_char *data, size_t len, const char *content_type)
{
    req->body.data = ngx_pnalloc(pool, len);
    if (req->body.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(req->body.data, data, len);
    req->body.len = len;

    return ngx_cloudauth_header_printf(pool, req, "%s", content_type);
}


/* form values: all but RFC 3986's unreserved characters escaped */

size_t
ngx_cloudauth_form_escape_len(ngx_str_t *src)
{
    return src->len + 2 * ngx_escape_uri(NULL, src->data, src->len,
                                         NGX_ESCAPE_URI_COMPONENT);
}


u_char *
ngx_cloudauth_form_escape(u_char *dst, ngx_str_t *src)
{
    return (u_char *) ngx_escape_uri(dst, src->data, src->len,
                                     NGX_ESCAPE_URI_COMPONENT);
}


char *
ngx_cloudauth_copy_cstr(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_cpystrn(p, s->data, s->len + 1);

    return (char *) p;
}


/*
 * Reads {"<field>": "...", "expires_in": N} from a 200 answer, or the
 * provider's error text from any other.
 */

ngx_int_t
ngx_cloudauth_oauth_parse(ngx_cloudauth_fetch_t *f, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res, const char *field)
{
    size_t         len;
    json_t        *json, *v;
    const char    *s;
    json_error_t   jerr;

    if (f->status == 0) {
        res->error.data = ngx_pnalloc(pool, CURL_ERROR_SIZE + 64);
        if (res->error.data == NULL) {
            return NGX_ERROR;
        }

        res->error.len = ngx_snprintf(res->error.data, CURL_ERROR_SIZE + 64,
                                      "%s", f->truncated
                                      ? "answer larger than 64 KiB"
                                      : f->errbuf)
                         - res->error.data;
        res->terminal = f->truncated;
        return NGX_ERROR;
    }

    json = NULL;

    if (f->body_len) {
        json = json_loadb((char *) f->body, f->body_len,
                          JSON_REJECT_DUPLICATES, &jerr);
    }

    if (f->status != 200) {
        ngx_cloudauth_error_text(pool, f, json, res);
        res->terminal = (f->status >= 400 && f->status < 500
                         && f->status != 408 && f->status != 429);
        goto failed;
    }

    if (!json_is_object(json)) {
        ngx_str_set(&res->error, "malformed answer: not a JSON object");
        goto failed;
    }

    v = json_object_get(json, field);
    s = json_string_value(v);
    len = s ? json_string_length(v) : 0;

    if (len == 0) {
        res->error.len = ngx_strlen(field) + sizeof("malformed answer: no ")
                         - 1;
        res->error.data = ngx_pnalloc(pool, res->error.len);
        if (res->error.data == NULL) {
            goto failed;
        }

        ngx_sprintf(res->error.data, "malformed answer: no %s", field);
        goto failed;
    }

    if (ngx_cloudauth_token_copy(pool, (u_char *) s, len, res) != NGX_OK) {
        goto failed;
    }

    v = json_object_get(json, "expires_in");

    if (v == NULL) {
        res->expires_in = 3600;

    } else if (json_is_integer(v)) {
        res->expires_in = (time_t) json_integer_value(v);

    } else if (json_is_string(v)) {
        res->expires_in = ngx_atotm((u_char *) json_string_value(v),
                                    json_string_length(v));

    } else {
        res->expires_in = -1;
    }

    if (res->expires_in <= 0 || res->expires_in > 365 * 86400) {
        ngx_str_set(&res->error, "malformed answer: bad expires_in");
        goto failed;
    }

    json_decref(json);

    return NGX_OK;

failed:

    if (json) {
        json_decref(json);
    }

    return NGX_ERROR;
}


static ngx_int_t
ngx_cloudauth_token_copy(ngx_pool_t *pool, u_char *s, size_t len,
    ngx_cloudauth_result_t *res)
{
    size_t  i;

    if (len > NGX_CLOUDAUTH_MAX_TOKEN) {
        ngx_str_set(&res->error, "token larger than 8 KiB");
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        if (s[i] <= 0x20 || s[i] >= 0x7f) {
            ngx_str_set(&res->error, "token with invalid characters");
            return NGX_ERROR;
        }
    }

    res->token.data = ngx_pnalloc(pool, len);
    if (res->token.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(res->token.data, s, len);
    res->token.len = len;

    return NGX_OK;
}


/*
 * A 200 answer whose body is the token itself, a JWT (the metadata
 * server's identity tokens); its lifetime is its "exp" claim.  Other
 * answers are errors, read as ngx_cloudauth_oauth_parse() reads them.
 */

ngx_int_t
ngx_cloudauth_plain_parse(ngx_cloudauth_fetch_t *f, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res)
{
    u_char  *p, *last;

    if (f->status != 200) {
        return ngx_cloudauth_oauth_parse(f, pool, res, "token");
    }

    if (f->body_len == 0) {
        /* and no buffer either: f->body is NULL */
        ngx_str_set(&res->error, "malformed answer: empty");
        return NGX_ERROR;
    }

    p = f->body;
    last = f->body + f->body_len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == CR || *p == LF)) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t'
                        || last[-1] == CR || last[-1] == LF))
    {
        last--;
    }

    if (p == last) {
        ngx_str_set(&res->error, "malformed answer: empty");
        return NGX_ERROR;
    }

    if (ngx_cloudauth_token_copy(pool, p, last - p, res) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_cloudauth_jwt_expires_in(&res->token, &res->expires_in)
        != NGX_OK)
    {
        ngx_str_set(&res->error, "malformed answer: not a JWT with \"exp\"");
        return NGX_ERROR;
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


static const char *
ngx_cloudauth_json_str(json_t *json, const char *key)
{
    return json_string_value(json_object_get(json, key));
}


/*
 * "HTTP 400: invalid_grant: Invalid JWT Signature." from the shapes
 * providers use: OAuth2 error/error_description, Zoom's reason, Google
 * APIs' {"error": {"status", "message"}}.
 */

static void
ngx_cloudauth_error_text(ngx_pool_t *pool, ngx_cloudauth_fetch_t *f,
    json_t *json, ngx_cloudauth_result_t *res)
{
    long         status;
    u_char      *p, *last, *text, *end;
    json_t      *e;
    ngx_uint_t   i;
    const char  *a, *b;

    status = f->status;
    a = NULL;
    b = NULL;
    text = NULL;
    end = NULL;

    if (json_is_object(json)) {
        e = json_object_get(json, "error");

        if (json_is_object(e)) {
            a = ngx_cloudauth_json_str(e, "status");
            b = ngx_cloudauth_json_str(e, "message");

        } else {
            a = json_string_value(e);
            b = ngx_cloudauth_json_str(json, "error_description");

            if (b == NULL) {
                b = ngx_cloudauth_json_str(json, "reason");
            }

            if (b == NULL) {
                b = ngx_cloudauth_json_str(json, "message");
            }
        }

    } else if (json == NULL && status == 200) {
        a = "malformed answer: not JSON";

    } else if (json == NULL && f->body_len && f->body[0] != '<') {

        /* plain text, as the metadata server's: its first line */

        text = f->body;
        end = ngx_strlchr(text, text + f->body_len, LF);
        end = end ? end : text + f->body_len;

        if (end > text && end[-1] == CR) {
            end--;
        }

        if (end - text > 160) {
            end = text + 160;
        }
    }

    p = ngx_pnalloc(pool, NGX_CLOUDAUTH_MAX_ERROR);
    if (p == NULL) {
        ngx_str_set(&res->error, "error");
        return;
    }

    last = p + NGX_CLOUDAUTH_MAX_ERROR;
    res->error.data = p;

    p = ngx_slprintf(p, last, "HTTP %l", status);

    if (a) {
        p = ngx_slprintf(p, last, ": %s", a);
    }

    if (b) {
        p = ngx_slprintf(p, last, ": %s", b);
    }

    if (text) {
        p = ngx_slprintf(p, last, ": %*s", (size_t) (end - text), text);
    }

    res->error.len = p - res->error.data;

    /* the provider's words go to the log: printable ASCII only */

    for (i = 0; i < res->error.len; i++) {
        if (res->error.data[i] < 0x20 || res->error.data[i] >= 0x7f) {
            res->error.data[i] = '?';
        }
    }
}


/*
 * Seconds until the "exp" claim of a JWT someone else signed (an ID token
 * we hand on, not one we trust): its lifetime in the cache.
 */

ngx_int_t
ngx_cloudauth_jwt_expires_in(ngx_str_t *jwt, time_t *expires_in)
{
    u_char        *p, *last, buf[4096];
    json_t        *json, *exp;
    ngx_str_t      src, dst;
    json_int_t     n;
    json_error_t   jerr;

    p = ngx_strlchr(jwt->data, jwt->data + jwt->len, '.');
    if (p == NULL) {
        return NGX_ERROR;
    }

    src.data = ++p;
    last = ngx_strlchr(p, jwt->data + jwt->len, '.');
    if (last == NULL) {
        return NGX_ERROR;
    }

    src.len = last - p;

    if (ngx_base64_decoded_length(src.len) > sizeof(buf)) {
        return NGX_ERROR;
    }

    dst.data = buf;

    if (ngx_decode_base64url(&dst, &src) != NGX_OK) {
        return NGX_ERROR;
    }

    json = json_loadb((char *) dst.data, dst.len, 0, &jerr);
    if (json == NULL) {
        return NGX_ERROR;
    }

    exp = json_object_get(json, "exp");
    n = json_is_integer(exp) ? json_integer_value(exp) : 0;

    json_decref(json);

    n -= ngx_time();

    if (n <= 0 || n > 365 * 86400) {
        return NGX_ERROR;
    }

    *expires_in = (time_t) n;

    return NGX_OK;
}
