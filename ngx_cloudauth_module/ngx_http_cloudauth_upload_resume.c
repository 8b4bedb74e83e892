
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload ... resumable=on: what every resumable front end
 * shares, with no state in the gateway.  GCS keeps the upload; the client
 * keeps its handle, the session sealed for it
 * (ngx_http_cloudauth_upload_id.c), the last segment of the upload's URL.
 * This file makes that URL, opens it again, finds the key of the IDs,
 * and reads the metadata an upload is created with.  It calls the IDs and
 * the reply file, nothing above them.
 */


#include "ngx_http_cloudauth_upload.h"

/*
 * The metadata a resumable upload is created with (Upload-Metadata):
 * "key base64,key base64,key": filename and filetype name the object and
 * its type, the others become its metadata
 */

ngx_int_t
ngx_http_cloudauth_upload_resume_metadata(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *raw, ngx_str_t *filename, ngx_str_t *filetype)
{
    u_char        *p, *last, *q, *sp, *c;
    ngx_str_t      key, value, enc, *dst;
    ngx_uint_t     i;
    ngx_keyval_t  *kv;

    if (raw->len > NGX_HTTP_CLOUDAUTH_UPLOAD_METADATA_MAX) {
        ngx_str_set(&u->reason, "Upload-Metadata is longer than 1024 bytes");
        return NGX_HTTP_BAD_REQUEST;
    }

    u->fields = ngx_array_create(u->request->pool, 4, sizeof(ngx_keyval_t));
    if (u->fields == NULL) {
        return NGX_ERROR;
    }

    p = raw->data;
    last = raw->data + raw->len;

    while (p < last) {
        q = ngx_strlchr(p, last, ',');
        if (q == NULL) {
            q = last;
        }

        while (p < q && *p == ' ') {
            p++;
        }

        sp = ngx_strlchr(p, q, ' ');

        key.data = p;
        key.len = (sp ? sp : q) - p;

        ngx_str_null(&value);

        if (sp) {
            enc.data = sp + 1;
            enc.len = q - sp - 1;

            value.data = ngx_pnalloc(u->request->pool,
                                     ngx_base64_decoded_length(enc.len));
            if (value.data == NULL) {
                return NGX_ERROR;
            }

            if (ngx_decode_base64(&value, &enc) != NGX_OK) {
                ngx_str_set(&u->reason,
                            "Upload-Metadata has a value that is not base64");
                return NGX_HTTP_BAD_REQUEST;
            }
        }

        if (key.len == 0 || key.len > 128) {
            ngx_str_set(&u->reason, "Upload-Metadata has a bad key");
            return NGX_HTTP_BAD_REQUEST;
        }

        for (c = key.data; c < key.data + key.len; c++) {
            if (!ngx_http_cloudauth_upload_token_char(*c)) {
                ngx_str_set(&u->reason, "Upload-Metadata has a bad key");
                return NGX_HTTP_BAD_REQUEST;
            }
        }

        if (ngx_cloudauth_utf8_valid(value.data, value.len) != NGX_OK) {
            ngx_str_set(&u->reason, "Upload-Metadata has a value that is "
                                    "not UTF-8");
            return NGX_HTTP_BAD_REQUEST;
        }

        kv = u->fields->elts;

        for (i = 0; i < u->fields->nelts; i++) {
            if (kv[i].key.len == key.len
                && ngx_strncmp(kv[i].key.data, key.data, key.len) == 0)
            {
                ngx_str_set(&u->reason, "Upload-Metadata repeats a key");
                return NGX_HTTP_BAD_REQUEST;
            }
        }

        dst = NULL;

        if (key.len == 8 && ngx_strncmp(key.data, "filename", 8) == 0) {
            dst = filename;

        } else if (key.len == 8 && ngx_strncmp(key.data, "filetype", 8) == 0)
        {
            dst = filetype;
        }

        if (dst && dst->data != NULL) {
            ngx_str_set(&u->reason, "Upload-Metadata repeats a key");
            return NGX_HTTP_BAD_REQUEST;
        }

        if (dst) {
            *dst = value;

        } else {
            kv = ngx_array_push(u->fields);
            if (kv == NULL) {
                return NGX_ERROR;
            }

            kv->key = key;
            kv->value = value;
        }

        p = q + 1;
    }

    for (c = filetype->data; c < filetype->data + filetype->len; c++) {
        if (*c < 0x20 || *c == 0x7f) {
            ngx_str_set(&u->reason, "filetype is not a content type");
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    if (filetype->len > 255) {
        ngx_str_set(&u->reason, "filetype is not a content type");
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}

/*
 * The ID is the last segment of the URI; it opens with the key, for this
 * location, in this bucket, before it expires.  NGX_DECLINED: 404.
 */

ngx_int_t
ngx_http_cloudauth_upload_resume_id(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_http_cloudauth_upload_id_t *id)
{
    u_char     *p;
    time_t      now;
    ngx_int_t   rc;
    ngx_str_t   sealed, shown;
    u_char      key[NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN];

    p = r->uri.data + r->uri.len;

    while (p > r->uri.data && p[-1] != '/') {
        p--;
    }

    sealed.data = p;
    sealed.len = r->uri.data + r->uri.len - p;

    if (sealed.len == 0 || r->args.len) {
        return NGX_DECLINED;
    }

    if (ngx_http_cloudauth_upload_resume_key(r, conf, key) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = ngx_http_cloudauth_upload_id_open(r->pool, key, &conf->aad, &sealed,
                                           id);

    ngx_explicit_memzero(key, sizeof(key));

    if (rc != NGX_OK) {
        if (rc == NGX_DECLINED) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "cloudauth: upload: an upload ID that does not "
                          "open with the upload key for this location");
        }

        return rc;
    }

    now = ngx_time();

    if (id->created + conf->expires <= now) {
        if (ngx_cloudauth_gcs_shown(r->pool, &id->name, &shown)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: the upload of \"%V\" expired",
                      &shown);
        return NGX_DECLINED;
    }

    if (id->bucket.len != conf->gcs.bucket.len
        || ngx_strncmp(id->bucket.data, conf->gcs.bucket.data,
                       id->bucket.len) != 0
        || ngx_http_cloudauth_upload_check_name(&id->name) != NULL)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: an upload ID of another bucket");
        return NGX_DECLINED;
    }

    return NGX_OK;
}

/* cloudauth_upload_key, or the zone's secret: the AES key of the IDs */

ngx_int_t
ngx_http_cloudauth_upload_resume_key(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, u_char *key)
{
    u_char                                 *secret;
    ngx_http_cloudauth_upload_main_conf_t  *umcf;

    umcf = ngx_http_get_module_main_conf(r, ngx_http_cloudauth_upload_module);

    if (umcf->key_file.len) {
        ngx_memcpy(key, umcf->key, NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN);
        return NGX_OK;
    }

    secret = ngx_cloudauth_cache_secret(conf->gcs.cred->conf->shm_zone);
    if (secret == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cloudauth: upload: no zone for the upload key");
        return NGX_ERROR;
    }

    return ngx_http_cloudauth_upload_id_key(secret,
                                            NGX_CLOUDAUTH_ZONE_SECRET_LEN,
                                            key);
}


/*
 * A new upload's URL: the creation's URI, a "directory", and the ID
 * sealed (u->id, named u->obj.name).  NGX_OK, NGX_DECLINED (the name is
 * too long for a URL), NGX_ERROR.
 */

ngx_int_t
ngx_http_cloudauth_upload_resume_url(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *url)
{
    u_char              *p, *start;
    size_t               len;
    uintptr_t            escape;
    ngx_int_t            rc;
    ngx_str_t            sealed;
    ngx_http_request_t  *r;
    u_char               key[NGX_HTTP_CLOUDAUTH_UPLOAD_KEY_LEN];

    r = u->request;

    if (ngx_http_cloudauth_upload_resume_key(r, u->conf, key) != NGX_OK) {
        return NGX_ERROR;
    }

    u->id.name = u->obj.name;

    rc = ngx_http_cloudauth_upload_id_seal(r->pool, key, &u->conf->aad,
                                           &u->id, &sealed);

    ngx_explicit_memzero(key, sizeof(key));

    if (rc != NGX_OK) {
        return rc;
    }

    start = r->uri.data;
    len = r->uri.len;

    escape = 2 * ngx_escape_uri(NULL, start, len, NGX_ESCAPE_URI);

    p = ngx_pnalloc(r->pool, len + escape + 1 + sealed.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    url->data = p;
    p = (u_char *) ngx_escape_uri(p, start, len, NGX_ESCAPE_URI);

    if (p == url->data || p[-1] != '/') {
        *p++ = '/';
    }

    p = ngx_cpymem(p, sealed.data, sealed.len);
    url->len = p - url->data;

    return NGX_OK;
}


/* the method, or the one X-HTTP-Method-Override names on a POST */

ngx_int_t
ngx_http_cloudauth_upload_resume_method(ngx_http_request_t *r,
    ngx_uint_t *method)
{
    ngx_str_t        *v;
    ngx_table_elt_t  *h;

    *method = r->method;

    h = ngx_http_cloudauth_upload_header_in(r, "X-HTTP-Method-Override",
                                  sizeof("X-HTTP-Method-Override") - 1);

    if (h == NULL || r->method != NGX_HTTP_POST) {
        return NGX_OK;
    }

    v = &h->value;

    if (v->len == 5 && ngx_strncasecmp(v->data, (u_char *) "PATCH", 5) == 0) {
        *method = NGX_HTTP_PATCH;

    } else if (v->len == 6
               && ngx_strncasecmp(v->data, (u_char *) "DELETE", 6) == 0)
    {
        *method = NGX_HTTP_DELETE;

    } else if (v->len == 4
               && ngx_strncasecmp(v->data, (u_char *) "HEAD", 4) == 0)
    {
        *method = NGX_HTTP_HEAD;

    } else if (v->len == 4
               && ngx_strncasecmp(v->data, (u_char *) "POST", 4) == 0)
    {
        *method = NGX_HTTP_POST;

    } else {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* the number in a header: NGX_OK, NGX_DECLINED (none), NGX_ERROR (bad) */

ngx_int_t
ngx_http_cloudauth_upload_resume_number(ngx_http_request_t *r,
    const char *name, size_t len, off_t *n)
{
    ngx_table_elt_t  *h;

    h = ngx_http_cloudauth_upload_header_in(r, name, len);

    if (h == NULL) {
        return NGX_DECLINED;
    }

    if (h->value.len == 0 || h->value.len > NGX_OFF_T_LEN) {
        return NGX_ERROR;
    }

    *n = ngx_atoof(h->value.data, h->value.len);

    return (*n == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}
