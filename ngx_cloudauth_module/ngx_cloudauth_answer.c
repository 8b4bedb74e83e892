
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Reading token endpoints' answers: OAuth2-shaped JSON, a bare token, the
 * providers' error texts, a subject token in a file's or a URL's text.
 * Pure: an answer (status, body, Date, whether it was cut) in, a token and
 * its lifetime or an error out; the fuzz target fuzz/fuzz_token_answer.c
 * drives it without a fetch.
 */


#include "ngx_cloudauth.h"

#include <jansson.h>


static void ngx_cloudauth_error_text(ngx_pool_t *pool,
    ngx_cloudauth_answer_t *ans, json_t *json, ngx_cloudauth_result_t *res);
static ngx_int_t ngx_cloudauth_token_copy(ngx_pool_t *pool, u_char *s,
    size_t len, ngx_cloudauth_result_t *res);


/*
 * Reads {"<field>": "...", "expires_in": N} from a 200 answer, or the
 * provider's error text from any other.
 */

ngx_int_t
ngx_cloudauth_oauth_parse(ngx_cloudauth_answer_t *a, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res, const char *field)
{
    size_t         len;
    json_t        *json, *v;
    const char    *s;
    json_error_t   jerr;

    if (a->status == 0) {
        /* the engine says what a transport error was; here only the size */
        if (a->truncated) {
            ngx_str_set(&res->error, "answer larger than 64 KiB");
            res->terminal = 1;

        } else {
            ngx_str_set(&res->error, "no answer");
        }

        return NGX_ERROR;
    }

    json = NULL;

    if (a->body.len) {
        json = json_loadb((char *) a->body.data, a->body.len,
                          JSON_REJECT_DUPLICATES, &jerr);
    }

    if (a->status != 200) {
        ngx_cloudauth_error_text(pool, a, json, res);
        res->terminal = (a->status >= 400 && a->status < 500
                         && a->status != 408 && a->status != 429);
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
ngx_cloudauth_plain_parse(ngx_cloudauth_answer_t *a, ngx_pool_t *pool,
    ngx_cloudauth_result_t *res)
{
    ngx_str_t  text;

    if (a->status != 200) {
        return ngx_cloudauth_oauth_parse(a, pool, res, "token");
    }

    text = a->body;

    if (ngx_cloudauth_answer_trim(&text) != NGX_OK) {
        ngx_str_set(&res->error, "malformed answer: empty");
        return NGX_ERROR;
    }

    if (ngx_cloudauth_token_copy(pool, text.data, text.len, res) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_cloudauth_answer_lifetime(pool, res,
                                         "malformed answer: not a JWT with "
                                         "\"exp\"");
}


/*
 * A text without the white space around it (a bare token, a subject token
 * file): NGX_DECLINED when nothing else is left.
 */

ngx_int_t
ngx_cloudauth_answer_trim(ngx_str_t *text)
{
    u_char  *p, *last;

    if (text->len == 0) {
        /* perhaps no buffer at all */
        return NGX_DECLINED;
    }

    p = text->data;
    last = text->data + text->len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == CR || *p == LF)) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t'
                        || last[-1] == CR || last[-1] == LF))
    {
        last--;
    }

    text->data = p;
    text->len = last - p;

    return text->len ? NGX_OK : NGX_DECLINED;
}


/*
 * The token is a JWT someone else signed (an ID token we hand on, not one
 * we trust): its lifetime in the cache is until its "exp" claim.
 */

ngx_int_t
ngx_cloudauth_answer_lifetime(ngx_pool_t *pool, ngx_cloudauth_result_t *res,
    const char *what)
{
    time_t  exp;

    if (ngx_cloudauth_jwt_exp(&res->token, pool, &exp) != NGX_OK
        || exp <= ngx_time() || exp - ngx_time() > 365 * 86400)
    {
        res->error.data = (u_char *) what;
        res->error.len = ngx_strlen(what);
        return NGX_ERROR;
    }

    res->expires_in = exp - ngx_time();

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
ngx_cloudauth_error_text(ngx_pool_t *pool, ngx_cloudauth_answer_t *ans,
    json_t *json, ngx_cloudauth_result_t *res)
{
    long         status;
    u_char      *p, *last, *text, *end;
    json_t      *e;
    ngx_uint_t   i;
    const char  *a, *b;

    status = ans->status;
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

    } else if (json == NULL && ans->body.len && ans->body.data[0] != '<') {

        /* plain text, as the metadata server's: its first line */

        text = ans->body.data;
        end = ngx_strlchr(text, text + ans->body.len, LF);
        end = end ? end : text + ans->body.len;

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
 * The subject token in what a file or a URL gave: the text without the
 * white space around it, or a JSON object's string field.  NULL, or why
 * not.  The token may point into raw.
 */

char *
ngx_cloudauth_answer_field(ngx_str_t *raw, ngx_str_t *field,
    ngx_pool_t *pool, ngx_str_t *token)
{
    json_t        *json, *v;
    const char    *s;
    json_error_t   jerr;

    if (field->len == 0) {
        *token = *raw;
        return ngx_cloudauth_answer_trim(token) == NGX_OK ? NULL : "empty";
    }

    json = json_loadb((char *) raw->data, raw->len, 0, &jerr);

    if (!json_is_object(json)) {
        if (json) {
            json_decref(json);
        }

        return "not a JSON object (\"format\" is \"json\")";
    }

    v = json_object_get(json, (char *) field->data);
    s = json_string_value(v);

    if (s == NULL || json_string_length(v) == 0) {
        json_decref(json);
        return "its \"subject_token_field_name\" field is not there or "
               "not a string";
    }

    token->len = json_string_length(v);
    token->data = ngx_pnalloc(pool, token->len);

    if (token->data) {
        ngx_memcpy(token->data, s, token->len);
    }

    /* jansson's own copy, before it is freed */
    ngx_explicit_memzero((void *) s, token->len);

    json_decref(json);

    return token->data ? NULL : "out of memory";
}
