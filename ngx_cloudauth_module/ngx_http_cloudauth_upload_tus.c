
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload ... resumable=on: tus 1.0.0 (core, creation,
 * creation-with-upload, creation-defer-length, termination, expiration)
 * over GCS's resumable sessions, with no state in the gateway.  GCS keeps
 * the upload; the client keeps its ID, the session sealed for it
 * (ngx_http_cloudauth_upload_id.c).  The offset is always what GCS holds
 * durably: a PATCH whose bytes end between two 256 KiB marks stores up to
 * the last mark and says so, and the client sends the rest again.
 *
 * A front end of the upload driver (ngx_http_cloudauth_upload_driver.c):
 * this file reads what a tus request asks, opens its ID, and answers
 * through the hooks it gives the driver; the bytes of a PATCH (and of a
 * creation with upload) go through the driver as a single upload's do.
 */


#include "ngx_http_cloudauth_upload.h"


static ngx_int_t ngx_http_cloudauth_upload_tus_options(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max);
static ngx_int_t ngx_http_cloudauth_upload_tus_create(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max);
static ngx_int_t ngx_http_cloudauth_upload_tus_created(
    ngx_http_cloudauth_upload_t *u, ngx_str_t *origin);
static ngx_int_t ngx_http_cloudauth_upload_tus_resume(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin,
    ngx_uint_t method, off_t max);
static void ngx_http_cloudauth_upload_tus_answer(
    ngx_http_cloudauth_upload_t *u, json_t *object);
static ngx_int_t ngx_http_cloudauth_upload_tus_check(
    ngx_http_cloudauth_upload_t *u, off_t held, json_t *object);
static ngx_int_t ngx_http_cloudauth_upload_tus_head(
    ngx_http_cloudauth_upload_t *u, json_t *object);
static ngx_int_t ngx_http_cloudauth_upload_tus_state(
    ngx_http_cloudauth_upload_t *u, off_t offset, off_t length);
static ngx_int_t ngx_http_cloudauth_upload_tus_object(ngx_http_request_t *r,
    json_t *object);
static ngx_uint_t ngx_http_cloudauth_upload_tus_octets(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_cloudauth_upload_tus_refuse(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *reason);


#define ngx_http_cloudauth_upload_tus_header(r, name)                        \
    ngx_http_cloudauth_upload_header_in(r, name, sizeof(name) - 1)

#define NGX_HTTP_CLOUDAUTH_UPLOAD_TUS_EXTENSIONS                             \
    "creation,creation-with-upload,creation-defer-length,termination,"      \
    "expiration"

#define NGX_HTTP_CLOUDAUTH_UPLOAD_TUS_EXPOSE                                 \
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, "             \
    "Upload-Defer-Length, Upload-Expires, Tus-Resumable, Tus-Version, "     \
    "Tus-Extension, Tus-Max-Size, Cloudauth-Object-Name, "                  \
    "Cloudauth-Object-Size, Cloudauth-Object-Generation, "                  \
    "Cloudauth-Object-Crc32c, Cloudauth-Object-Url"

#define NGX_HTTP_CLOUDAUTH_UPLOAD_OCTETS  "application/offset+octet-stream"


static const ngx_http_cloudauth_upload_hooks_t
    ngx_http_cloudauth_upload_tus_hooks =
{
    "tus",
    ngx_http_cloudauth_upload_tus_answer,
    ngx_http_cloudauth_upload_tus_check,
    NULL,
    NULL
};


/*
 * NGX_DECLINED: not a tus request (a plain PUT or POST, the single-request
 * upload); else the content handler's return code
 */

ngx_int_t
ngx_http_cloudauth_upload_tus(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max)
{
    ngx_int_t         rc;
    ngx_uint_t        method;
    ngx_table_elt_t  *h;

    rc = ngx_http_cloudauth_upload_resume_method(r, &method);
    if (rc != NGX_OK) {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           "X-HTTP-Method-Override names no tus method");
    }

    switch (method) {

    case NGX_HTTP_OPTIONS:
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "cloudauth: upload: tus OPTIONS");

        return ngx_http_cloudauth_upload_tus_options(r, conf, origin, max);

    case NGX_HTTP_POST:
        if (ngx_http_cloudauth_upload_tus_header(r, "Upload-Length") == NULL
            && ngx_http_cloudauth_upload_tus_header(r, "Upload-Defer-Length")
               == NULL)
        {
            return NGX_DECLINED;
        }

        break;

    case NGX_HTTP_HEAD:
    case NGX_HTTP_PATCH:
    case NGX_HTTP_DELETE:
        break;

    default:
        return NGX_DECLINED;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: a tus request, method %ui", method);

    h = ngx_http_cloudauth_upload_tus_header(r, "Tus-Resumable");

    if (h == NULL || h->value.len != 5
        || ngx_strncmp(h->value.data, "1.0.0", 5) != 0)
    {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_PRECONDITION_FAILED,
                           "Tus-Resumable: 1.0.0 is required");
    }

    if (ngx_http_cloudauth_upload_csrf(r, conf) != NGX_OK) {
        return ngx_http_cloudauth_upload_tus_refuse(r, NULL,
                           NGX_HTTP_FORBIDDEN, "cross-site upload refused");
    }

    if (method == NGX_HTTP_POST) {
        return ngx_http_cloudauth_upload_tus_create(r, conf, origin, max);
    }

    return ngx_http_cloudauth_upload_tus_resume(r, conf, origin, method, max);
}

/* what the server offers (not a CORS preflight: the caller took those) */

static ngx_int_t
ngx_http_cloudauth_upload_tus_options(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max)
{
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cloudauth_upload_header_text(r, "Tus-Version", "1.0.0")
           != NGX_OK
        || ngx_http_cloudauth_upload_header_text(r, "Tus-Extension",
                                  NGX_HTTP_CLOUDAUTH_UPLOAD_TUS_EXTENSIONS)
           != NGX_OK
        || (max && ngx_http_cloudauth_upload_header_off(r, "Tus-Max-Size", max)
                   != NGX_OK))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cloudauth_upload_respond(r, &conf->reply, origin,
                                             NGX_HTTP_NO_CONTENT, NULL);
}


/* on every answer of a resumable location (its reply's headers) */

ngx_int_t
ngx_http_cloudauth_upload_tus_headers(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status)
{
    if (ngx_http_cloudauth_upload_header_text(r, "Tus-Resumable", "1.0.0")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (status == NGX_HTTP_PRECONDITION_FAILED
        && ngx_http_cloudauth_upload_header_text(r, "Tus-Version", "1.0.0")
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (origin && origin->len) {
        return ngx_http_cloudauth_upload_header_text(r,
                                    "Access-Control-Expose-Headers",
                                    NGX_HTTP_CLOUDAUTH_UPLOAD_TUS_EXPOSE);
    }

    return NGX_OK;
}


/* creation: POST with Upload-Length or Upload-Defer-Length: 1 */

static ngx_int_t
ngx_http_cloudauth_upload_tus_create(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max)
{
    off_t                         length;
    ngx_int_t                     rc;
    ngx_str_t                     raw, filename, filetype, md5;
    ngx_table_elt_t              *h, *defer;
    ngx_http_cloudauth_upload_t  *u;

    defer = ngx_http_cloudauth_upload_tus_header(r, "Upload-Defer-Length");

    rc = ngx_http_cloudauth_upload_resume_number(r, "Upload-Length",
                                              sizeof("Upload-Length") - 1,
                                              &length);
    if (rc == NGX_ERROR) {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           "Upload-Length is not a number");
    }

    if ((rc == NGX_OK) == (defer != NULL)
        || (defer && (defer->value.len != 1 || defer->value.data[0] != '1')))
    {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           "give Upload-Length or Upload-Defer-Length: 1");
    }

    if (defer) {
        length = -1;
    }

    if (max && length > max) {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "Upload-Length is larger than max_size");
    }

    /* a body is the first bytes (creation-with-upload) */

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        if (!ngx_http_cloudauth_upload_tus_octets(r)) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                           "the bytes of an upload are "
                           "application/offset+octet-stream");
        }

        if (length >= 0 && r->headers_in.content_length_n > length) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "the body is longer than Upload-Length");
        }

        if (max && r->headers_in.content_length_n > max) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "the body is larger than max_size");
        }
    }

    u = ngx_http_cloudauth_upload_create(r, conf, origin, max,
                                     &ngx_http_cloudauth_upload_tus_hooks);
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    u->method = NGX_HTTP_POST;
    u->resumable = 1;
    u->directory = 1;
    u->id.bucket = conf->gcs.bucket;
    u->id.length = length;
    u->id.created = ngx_time();

    ngx_str_null(&raw);
    ngx_str_null(&filename);
    ngx_str_null(&md5);
    ngx_str_null(&filetype);

    h = ngx_http_cloudauth_upload_tus_header(r, "Upload-Metadata");
    if (h) {
        raw = h->value;
    }

    rc = ngx_http_cloudauth_upload_resume_metadata(u, &raw, &filename,
                                                &filetype);
    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin, rc,
                                                (char *) u->reason.data,
                                                u->reason.len);
    }

    u->id.metadata = raw;

    if (filetype.len == 0) {
        ngx_str_set(&filetype, "application/octet-stream");
    }

    rc = ngx_http_cloudauth_upload_open(u, &filename, &filetype, &md5,
                                        length);
    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin, rc,
                                                (char *) u->reason.data,
                                                u->reason.len);
    }

    return ngx_http_cloudauth_upload_read(u);
}




/* HEAD, PATCH, DELETE on an upload's URL */

static ngx_int_t
ngx_http_cloudauth_upload_tus_resume(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin,
    ngx_uint_t method, off_t max)
{
    off_t                            offset, length;
    ngx_int_t                        rc;
    ngx_str_t                        type, md5, filename;
    ngx_http_cloudauth_upload_t     *u;
    ngx_http_cloudauth_upload_id_t   id;

    offset = 0;

    if (method == NGX_HTTP_PATCH) {
        if (!ngx_http_cloudauth_upload_tus_octets(r)) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                           "a PATCH is application/offset+octet-stream");
        }

        if (ngx_http_cloudauth_upload_resume_number(r, "Upload-Offset",
                                                 sizeof("Upload-Offset") - 1,
                                                 &offset)
            != NGX_OK)
        {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           "a PATCH needs Upload-Offset");
        }
    }

    rc = ngx_http_cloudauth_upload_resume_id(r, conf, &id);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_NOT_FOUND, "no such upload");
    }

    length = id.length;

    if (method == NGX_HTTP_PATCH) {
        rc = ngx_http_cloudauth_upload_resume_number(r, "Upload-Length",
                                                  sizeof("Upload-Length") - 1,
                                                  &length);
        if (rc == NGX_ERROR
            || (rc == NGX_OK && id.length >= 0 && length != id.length))
        {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           "Upload-Length is not the upload's");
        }

        if (rc == NGX_DECLINED) {
            length = id.length;
        }

        if (length >= 0 && offset > length) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_CONFLICT,
                           "Upload-Offset is past Upload-Length");
        }

        if (max && length > max) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "Upload-Length is larger than max_size");
        }

        if (length >= 0 && r->headers_in.content_length_n > length - offset)
        {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "the body goes past Upload-Length");
        }

        if (max && r->headers_in.content_length_n > max - offset) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "the upload goes past max_size");
        }
    }

    u = ngx_http_cloudauth_upload_create(r, conf, origin, max,
                                     &ngx_http_cloudauth_upload_tus_hooks);
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    u->method = method;
    u->resumable = 1;
    u->id = id;
    u->given = 1;
    u->offset = offset;

    if (method != NGX_HTTP_PATCH) {
        rc = ngx_http_cloudauth_upload_ask(u,
                                  (method == NGX_HTTP_HEAD)
                                  ? NGX_HTTP_CLOUDAUTH_UPLOAD_QUERY
                                  : NGX_HTTP_CLOUDAUTH_UPLOAD_TERMINATE);

        if (rc == NGX_DECLINED) {
            return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_NOT_FOUND, "no such upload");
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_DONE;
    }

    /* the PATCH's bytes go on from offset, after GCS says it holds that */

    ngx_str_null(&md5);
    ngx_str_null(&filename);
    ngx_str_set(&type, "application/octet-stream");

    rc = ngx_http_cloudauth_upload_open(u, &filename, &type, &md5, length);
    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin, rc,
                                                (char *) u->reason.data,
                                                u->reason.len);
    }

    return ngx_http_cloudauth_upload_read(u);
}



/* Upload-Offset, the length, the metadata, the expiry; no caching */

static ngx_int_t
ngx_http_cloudauth_upload_tus_state(ngx_http_cloudauth_upload_t *u,
    off_t offset, off_t length)
{
    u_char              *p;
    ngx_str_t            v;
    ngx_http_request_t  *r;

    r = u->request;

    if (ngx_http_cloudauth_upload_header_off(r, "Upload-Offset", offset)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (length >= 0) {
        if (ngx_http_cloudauth_upload_header_off(r, "Upload-Length", length)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else if (ngx_http_cloudauth_upload_header_text(r, "Upload-Defer-Length",
                                                  "1")
               != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (u->id.metadata.len
        && ngx_http_cloudauth_upload_header_out(r, "Upload-Metadata",
                                                &u->id.metadata)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, sizeof("Mon, 28 Sep 1970 06:00:00 GMT") - 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v.data = p;
    v.len = ngx_http_time(p, u->id.created + u->conf->expires) - p;

    if (ngx_http_cloudauth_upload_header_out(r, "Upload-Expires", &v)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cloudauth_upload_header_text(r, "Cache-Control",
                                                 "no-store");
}


/* the stored object, from the GCS client's summary, in headers */

static ngx_int_t
ngx_http_cloudauth_upload_tus_object(ngx_http_request_t *r, json_t *object)
{
    u_char      *p;
    size_t       len;
    json_t      *j;
    ngx_str_t    v, name;
    ngx_uint_t   i;
    const char  *keys[] = { "size", "generation", "crc32c", "url" };
    char        *headers[] = { "Cloudauth-Object-Size",
                               "Cloudauth-Object-Generation",
                               "Cloudauth-Object-Crc32c",
                               "Cloudauth-Object-Url" };

    name.data = (u_char *) json_string_value(json_object_get(object, "name"));
    if (name.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    name.len = json_string_length(json_object_get(object, "name"));

    len = name.len + 2 * ngx_escape_uri(NULL, name.data, name.len,
                                        NGX_ESCAPE_URI_COMPONENT);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v.data = p;
    v.len = (u_char *) ngx_escape_uri(p, name.data, name.len,
                                      NGX_ESCAPE_URI_COMPONENT) - p;

    if (ngx_http_cloudauth_upload_header_out(r, "Cloudauth-Object-Name", &v)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        j = json_object_get(object, keys[i]);

        if (json_is_integer(j)) {
            p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
            if (p == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            v.data = p;
            v.len = ngx_sprintf(p, "%O", (off_t) json_integer_value(j)) - p;

        } else if (json_is_string(j)) {
            v.len = json_string_length(j);

            /* the header outlives the object: a copy */

            v.data = ngx_pnalloc(r->pool, v.len);
            if (v.data == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_memcpy(v.data, json_string_value(j), v.len);

            /* GCS's and our own words, but a header line stays one */

            for (p = v.data; p < v.data + v.len; p++) {
                if (*p <= 0x20 || *p >= 0x7f) {
                    return NGX_HTTP_BAD_GATEWAY;
                }
            }

        } else {
            continue;
        }

        if (v.len == 0) {
            continue;
        }

        if (ngx_http_cloudauth_upload_header_out(r, headers[i], &v)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The driver's answer hook.  A creation or a PATCH: the ID and the offset
 * GCS holds, and the object when the last byte is in (object: the GCS
 * client's summary, or NULL); a client that went away gets nothing.  A
 * HEAD: what GCS holds, or the complete object.  A DELETE: terminated.
 */

static void
ngx_http_cloudauth_upload_tus_answer(ngx_http_cloudauth_upload_t *u,
    json_t *object)
{
    ngx_int_t            rc;
    ngx_str_t            shown;
    ngx_uint_t           status;
    ngx_http_request_t  *r;

    r = u->request;
    u->finished = 1;

    if (u->cut) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: the client of \"%V\" went away; "
                      "GCS holds %O bytes", &u->obj.shown, u->obj.offset);
        ngx_http_finalize_request(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    switch (u->method) {

    case NGX_HTTP_HEAD:
        rc = ngx_http_cloudauth_upload_tus_head(u, object);
        break;

    case NGX_HTTP_DELETE:
        if (ngx_cloudauth_gcs_shown(r->pool, &u->id.name, &shown)
            == NGX_OK)
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "cloudauth: upload: the upload of \"%V\" "
                          "terminated", &shown);
        }

        rc = ngx_http_cloudauth_upload_respond(r, &u->conf->reply,
                                               &u->cors_origin,
                                               NGX_HTTP_NO_CONTENT, NULL);
        break;

    default: /* a creation (POST) or a PATCH */
        status = NGX_HTTP_NO_CONTENT;
        rc = NGX_OK;

        if (u->method == NGX_HTTP_POST) {
            status = NGX_HTTP_CREATED;
            rc = ngx_http_cloudauth_upload_tus_created(u, &u->cors_origin);
        }

        if (rc == NGX_OK) {
            rc = ngx_http_cloudauth_upload_tus_state(u, u->obj.offset,
                                                     u->obj.total);
        }

        if (rc == NGX_OK && object) {
            rc = ngx_http_cloudauth_upload_tus_object(r, object);
        }

        if (rc == NGX_OK) {
            rc = ngx_http_cloudauth_upload_respond(r, &u->conf->reply,
                                                   &u->cors_origin, status,
                                                   NULL);
        }
    }

    ngx_http_finalize_request(r, rc);
}


/* a HEAD's answer: GCS holds [0, u->obj.offset), or the object */

static ngx_int_t
ngx_http_cloudauth_upload_tus_head(ngx_http_cloudauth_upload_t *u,
    json_t *object)
{
    off_t                size;
    json_t              *v;
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    r = u->request;

    if (object == NULL) {
        rc = ngx_http_cloudauth_upload_tus_state(u, u->obj.offset,
                                                 u->id.length);
        goto done;
    }

    v = json_object_get(object, "size");
    size = json_is_integer(v) ? (off_t) json_integer_value(v) : -1;

    if (size < 0 || (u->id.length >= 0 && size != u->id.length)) {
        return ngx_http_cloudauth_upload_tus_refuse(r, &u->cors_origin,
                           NGX_HTTP_BAD_GATEWAY,
                           "GCS stored another length than declared");
    }

    rc = ngx_http_cloudauth_upload_tus_state(u, size, size);

    /* the headers are copies: the object goes when the hook returns */

    if (rc == NGX_OK) {
        rc = ngx_http_cloudauth_upload_tus_object(r, object);
    }

done:

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_cloudauth_upload_respond(r, &u->conf->reply,
                                             &u->cors_origin, NGX_HTTP_OK,
                                             NULL);
}


/* the creation's answer: its ID, sealed, in Location */

static ngx_int_t
ngx_http_cloudauth_upload_tus_created(ngx_http_cloudauth_upload_t *u,
    ngx_str_t *origin)
{
    ngx_int_t            rc;
    ngx_str_t            location;
    ngx_http_request_t  *r;

    r = u->request;

    rc = ngx_http_cloudauth_upload_resume_url(u, &location);

    if (rc == NGX_DECLINED) {
        return ngx_http_cloudauth_upload_tus_refuse(r, origin,
                           NGX_HTTP_REQUEST_URI_TOO_LARGE,
                           "the object name is too long for an upload URL");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cloudauth_upload_header_out(r, "Location", &location)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    u->given = 1;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: tus upload created");

    return NGX_OK;
}


/*
 * The driver's check hook: GCS's first word on the session of a PATCH.
 * It must hold what the client says it does; a complete object takes
 * only an empty PATCH at its end.
 */

static ngx_int_t
ngx_http_cloudauth_upload_tus_check(ngx_http_cloudauth_upload_t *u,
    off_t held, json_t *object)
{
    if (object == NULL) {
        if (held == u->offset) {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_INFO, u->request->connection->log, 0,
                      "cloudauth: upload: a PATCH of \"%V\" at %O, "
                      "GCS holds %O", &u->obj.shown, u->offset, held);

        ngx_str_set(&u->reason, "Upload-Offset is not the upload's offset");
        return NGX_HTTP_CONFLICT;
    }

    if (u->offset != u->obj.total || u->obj.received || !u->input_done) {
        ngx_str_set(&u->reason, "the upload is complete");
        return NGX_HTTP_CONFLICT;
    }

    return NGX_OK;
}


/* the bytes of an upload are application/offset+octet-stream */

static ngx_uint_t
ngx_http_cloudauth_upload_tus_octets(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = r->headers_in.content_type;

    return h
           && h->value.len == sizeof(NGX_HTTP_CLOUDAUTH_UPLOAD_OCTETS) - 1
           && ngx_strncasecmp(h->value.data,
                              (u_char *) NGX_HTTP_CLOUDAUTH_UPLOAD_OCTETS,
                              h->value.len) == 0;
}

static ngx_int_t
ngx_http_cloudauth_upload_tus_refuse(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *reason)
{
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_upload_module);

    return ngx_http_cloudauth_upload_reject(r, &conf->reply, origin, status,
                                            reason, ngx_strlen(reason));
}
