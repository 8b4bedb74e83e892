
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * cloudauth_gcs_upload ... resumable=on: "Resumable Uploads for HTTP"
 * (draft-ietf-httpbis-resumable-upload), beside tus on the same location,
 * for the interop versions real clients send: 3 (draft -01, URLSession on
 * iOS 17 / macOS 14), 5 (draft -03) and 6 (drafts -04 and -05; both of
 * tus-js-client 4.x) and 8 (drafts -09 to -15, the current one).
 *
 * A front end of the upload driver (ngx_http_cloudauth_upload_driver.c),
 * with the IDs of ngx_http_cloudauth_upload_resume.c: GCS keeps the
 * upload, the client its URL.  A creation (any request with content that
 * says whether it is complete) is a new session; on HTTP/1.1 the session
 * is started before the body is read and its URL sent at once in a
 * "104 Upload Resumption Supported".  HEAD asks the offset, PATCH
 * appends, DELETE cancels.  The offset is what GCS holds durably: an
 * append is acknowledged up to its last 256 KiB mark (min-append-size),
 * the client sends the rest again.  Errors the draft names are problem
 * details (RFC 9457).
 */


#include "ngx_http_cloudauth_upload.h"


/* what the interop versions served differ in */

typedef struct {
    ngx_uint_t                     version;
    unsigned                       complete:1; /* Upload-Complete, else
                                                  Upload-Incomplete */
    unsigned                       partial:1;  /* PATCH needs the type */
    unsigned                       limit:2;    /* 0: no Upload-Limit,
                                                  1: "expires=",
                                                  2: "max-age=" */
    unsigned                       created:1;  /* a part's append answers
                                                  201 (up to draft -05) */
} ngx_http_cloudauth_upload_ietf_version_t;


static ngx_http_cloudauth_upload_ietf_version_t
    ngx_http_cloudauth_upload_ietf_versions[] =
{
    { 3, 0, 0, 0, 1 },
    { 5, 1, 0, 0, 1 },
    { 6, 1, 1, 1, 1 },
    { 8, 1, 1, 2, 0 },
    { 0, 0, 0, 0, 0 }
};

#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_SERVED  "3, 5, 6 and 8"


typedef ngx_http_cloudauth_upload_ietf_version_t  ngx_http_ietf_v_t;


static ngx_uint_t ngx_http_cloudauth_upload_ietf_repeated(
    ngx_http_request_t *r);
static ngx_http_ietf_v_t *ngx_http_cloudauth_upload_ietf_version(
    ngx_http_request_t *r, ngx_int_t *n);
static ngx_int_t ngx_http_cloudauth_upload_ietf_complete(
    ngx_http_request_t *r, ngx_http_ietf_v_t *v);
static ngx_int_t ngx_http_cloudauth_upload_ietf_options(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin,
    ngx_http_ietf_v_t *v);
static ngx_int_t ngx_http_cloudauth_upload_ietf_create(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max,
    ngx_http_ietf_v_t *v);
static void ngx_http_cloudauth_upload_ietf_disposition(ngx_http_request_t *r,
    ngx_str_t *filename);
static ngx_int_t ngx_http_cloudauth_upload_ietf_resume(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin,
    ngx_uint_t method, off_t max, ngx_http_ietf_v_t *v);
static ngx_int_t ngx_http_cloudauth_upload_ietf_started(
    ngx_http_cloudauth_upload_t *u);
static void ngx_http_cloudauth_upload_ietf_answer(
    ngx_http_cloudauth_upload_t *u, json_t *object);
static ngx_int_t ngx_http_cloudauth_upload_ietf_check(
    ngx_http_cloudauth_upload_t *u, off_t held, json_t *object);
static ngx_int_t ngx_http_cloudauth_upload_ietf_refuse(
    ngx_http_cloudauth_upload_t *u, ngx_uint_t status, ngx_str_t *reason);
static ngx_int_t ngx_http_cloudauth_upload_ietf_completeness(
    ngx_http_request_t *r, ngx_http_ietf_v_t *v, ngx_uint_t complete);
static ngx_int_t ngx_http_cloudauth_upload_ietf_state(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, off_t offset, ngx_uint_t complete, off_t length);
static ngx_int_t ngx_http_cloudauth_upload_ietf_limits(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, off_t max, time_t left, ngx_str_t *value);
static ngx_int_t ngx_http_cloudauth_upload_ietf_limit(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, off_t max, time_t left);
static ngx_int_t ngx_http_cloudauth_upload_ietf_problem(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *type,
    const char *detail, size_t len, off_t expected, off_t provided);
static ngx_int_t ngx_http_cloudauth_upload_ietf_say(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *type,
    const char *detail);


#define ngx_http_cloudauth_upload_ietf_header(r, name)                       \
    ngx_http_cloudauth_upload_header_in(r, name, sizeof(name) - 1)

#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PARTIAL  "application/partial-upload"

#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PROBLEM                               \
    "https://iana.org/assignments/http-problem-types#"

#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_MISMATCH  "mismatching-upload-offset"
#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_COMPLETED "completed-upload"
#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_LENGTH    "inconsistent-upload-length"

#define NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_EXPOSE                                \
    "Location, Upload-Offset, Upload-Complete, Upload-Incomplete, "         \
    "Upload-Length, Upload-Limit, Upload-Draft-Interop-Version"


/* the reasons the check hook gives, and their problem types */

static ngx_str_t  ngx_http_cloudauth_upload_ietf_moved =
    ngx_string("Upload-Offset is not the upload's offset");
static ngx_str_t  ngx_http_cloudauth_upload_ietf_done =
    ngx_string("the upload is complete");


static const ngx_http_cloudauth_upload_hooks_t
    ngx_http_cloudauth_upload_ietf_hooks =
{
    "ietf",
    ngx_http_cloudauth_upload_ietf_answer,
    ngx_http_cloudauth_upload_ietf_check,
    ngx_http_cloudauth_upload_ietf_refuse,
    ngx_http_cloudauth_upload_ietf_started
};


/* a request of the draft: it names its interop version */

ngx_uint_t
ngx_http_cloudauth_upload_ietf_request(ngx_http_request_t *r)
{
    return ngx_http_cloudauth_upload_ietf_header(r,
                                       "Upload-Draft-Interop-Version")
           != NULL;
}


/* the content handler's code */

ngx_int_t
ngx_http_cloudauth_upload_ietf(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max)
{
    u_char              buf[128];   /* the refusal of a version */
    u_char             *p;
    ngx_int_t           n;
    ngx_uint_t          method;
    ngx_http_ietf_v_t  *v;

    v = ngx_http_cloudauth_upload_ietf_version(r, &n);

    if (v == NULL) {
        if (n == -2) {
            p = ngx_cpymem(buf, "Upload-Draft-Interop-Version is not a "
                                "number: ",
                           sizeof("Upload-Draft-Interop-Version is not a "
                                  "number: ") - 1);
            p = ngx_cpymem(p, NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_SERVED,
                           sizeof(NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_SERVED)
                           - 1);
            p = ngx_cpymem(p, " are served", sizeof(" are served") - 1);

        } else if (n < 0) {
            p = ngx_cpymem(buf, "a part of an upload needs "
                                "Upload-Draft-Interop-Version: ",
                           sizeof("a part of an upload needs "
                                  "Upload-Draft-Interop-Version: ") - 1);
            p = ngx_cpymem(p, NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_SERVED,
                           sizeof(NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_SERVED)
                           - 1);
            p = ngx_cpymem(p, " are served", sizeof(" are served") - 1);

        } else {
            p = ngx_snprintf(buf, sizeof(buf),
                             "Upload-Draft-Interop-Version %i is not served "
                             "here: " NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_SERVED
                             " are", n);
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: refused, %*s", p - buf, buf);

        return ngx_http_cloudauth_upload_ietf_problem(r, origin,
                                 NGX_HTTP_BAD_REQUEST, NULL, (char *) buf,
                                 p - buf, -1, -1);
    }

    if (ngx_http_cloudauth_upload_resume_method(r, &method) != NGX_OK) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           "X-HTTP-Method-Override names no method of an "
                           "upload");
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: an IETF draft request, interop %ui, "
                   "method %ui", v->version, method);

    if (method == NGX_HTTP_OPTIONS) {
        return ngx_http_cloudauth_upload_ietf_options(r, conf, origin, v);
    }

    if (!(method & (NGX_HTTP_POST|NGX_HTTP_PUT|NGX_HTTP_PATCH|NGX_HTTP_HEAD
                    |NGX_HTTP_DELETE)))
    {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_NOT_ALLOWED, NULL,
                           "an upload is created with POST, PUT or PATCH; "
                           "its URL takes HEAD, PATCH and DELETE");
    }

    if (ngx_http_cloudauth_upload_csrf(r, conf) != NGX_OK) {
        return ngx_http_cloudauth_upload_ietf_say(r, NULL,
                           NGX_HTTP_FORBIDDEN, NULL,
                           "cross-site upload refused");
    }

    if (ngx_http_cloudauth_upload_ietf_repeated(r)) {
        /* "?0, ?1" is no boolean: a proxy reading the first would differ */
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           "a header of the upload is given more than once");
    }

    /* the procedure by the request, as the draft's interop 3 says */

    if (method == NGX_HTTP_HEAD || method == NGX_HTTP_DELETE
        || (method == NGX_HTTP_PATCH
            && ngx_http_cloudauth_upload_ietf_header(r, "Upload-Offset")))
    {
        return ngx_http_cloudauth_upload_ietf_resume(r, conf, origin, method,
                                                     max, v);
    }

    return ngx_http_cloudauth_upload_ietf_create(r, conf, origin, max, v);
}


/* one of the draft's headers more than once */

static ngx_str_t  ngx_http_cloudauth_upload_ietf_once[] = {
    ngx_string("Upload-Complete"),
    ngx_string("Upload-Incomplete"),
    ngx_string("Upload-Offset"),
    ngx_string("Upload-Length"),
    ngx_string("Upload-Draft-Interop-Version")
};


static ngx_uint_t
ngx_http_cloudauth_upload_ietf_repeated(ngx_http_request_t *r)
{
    ngx_str_t        *names;
    ngx_uint_t        i, k, n[5];
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    names = ngx_http_cloudauth_upload_ietf_once;

    ngx_memzero(n, sizeof(n));

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            for (k = 0; k < 5; k++) {
                if (h[i].key.len == names[k].len
                    && ngx_strncasecmp(h[i].key.data, names[k].data,
                                       names[k].len) == 0
                    && ++n[k] > 1)
                {
                    return 1;
                }
            }
        }
    }

    return 0;
}


/*
 * Upload-Draft-Interop-Version: a version served, or NULL (*n: the
 * version asked, -1 when none, -2 when not a number)
 */

static ngx_http_ietf_v_t *
ngx_http_cloudauth_upload_ietf_version(ngx_http_request_t *r, ngx_int_t *n)
{
    ngx_table_elt_t    *h;
    ngx_http_ietf_v_t  *v;

    *n = -1;

    h = ngx_http_cloudauth_upload_ietf_header(r,
                                              "Upload-Draft-Interop-Version");

    if (h == NULL) {
        return NULL;
    }

    *n = (h->value.len && h->value.len <= 4)
         ? ngx_atoi(h->value.data, h->value.len) : NGX_ERROR;

    if (*n < 0) {
        *n = -2;
        return NULL;
    }

    for (v = ngx_http_cloudauth_upload_ietf_versions; v->version; v++) {
        if (*n >= 0 && (ngx_uint_t) *n == v->version) {
            return v;
        }
    }

    return NULL;
}

/*
 * Is the request's content the last of the upload?  1, 0, or -1 when it
 * does not say (a structured-field boolean, anything else is ignored):
 * Upload-Complete, or in interop 3 Upload-Incomplete, whose absence on an
 * append means the last part.
 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_complete(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v)
{
    u_char           *p, *last;
    ngx_table_elt_t  *h;

    if (v->complete) {
        h = ngx_http_cloudauth_upload_ietf_header(r, "Upload-Complete");

    } else {
        h = ngx_http_cloudauth_upload_ietf_header(r, "Upload-Incomplete");
    }

    if (h == NULL) {
        return -1;
    }

    p = h->value.data;
    last = p + h->value.len;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (last - p != 2 || p[0] != '?' || (p[1] != '0' && p[1] != '1')) {
        return -1;
    }

    return v->complete ? (p[1] == '1') : (p[1] == '0');
}

/* what the location offers (a CORS preflight was taken before) */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_options(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin,
    ngx_http_ietf_v_t *v)
{
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cloudauth_upload_ietf_limit(r, v, conf->max, conf->expires)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cloudauth_upload_respond(r, &conf->reply, origin,
                                             NGX_HTTP_NO_CONTENT, NULL);
}


/* on every answer of a resumable location to a request of the draft */

ngx_int_t
ngx_http_cloudauth_upload_ietf_headers(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status)
{
    if (origin && origin->len) {
        return ngx_http_cloudauth_upload_header_text(r,
                                    "Access-Control-Expose-Headers",
                                    NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_EXPOSE);
    }

    return NGX_OK;
}


/*
 * Creation: a request with content (POST, PUT, PATCH without
 * Upload-Offset) that says whether it is all.  The object is named as a
 * tus upload's: Upload-Metadata's filename (tus-js-client sends it here
 * too), else Content-Disposition's, below the URI; without either, the
 * URI names it as it does a single PUT.
 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_create(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin, off_t max,
    ngx_http_ietf_v_t *v)
{
    u_char                       *p;
    off_t                         length, declared;
    ngx_int_t                     rc, complete;
    ngx_str_t                     raw, filename, filetype, md5;
    ngx_table_elt_t              *h;
    ngx_http_cloudauth_upload_t  *u;

    complete = ngx_http_cloudauth_upload_ietf_complete(r, v);

    if (complete < 0) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           v->complete
                           ? "a creation says Upload-Complete: ?0 or ?1"
                           : "a creation says Upload-Incomplete: ?0 or ?1");
    }

    rc = ngx_http_cloudauth_upload_resume_number(r, "Upload-Length",
                                               sizeof("Upload-Length") - 1,
                                               &length);
    if (rc == NGX_ERROR) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           "Upload-Length is not a number");
    }

    if (rc == NGX_DECLINED) {
        length = -1;
    }

    declared = r->headers_in.content_length_n;

    if (complete && declared >= 0) {
        if (length >= 0 && length != declared) {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_LENGTH,
                           "Upload-Length is not the length of a complete "
                           "body");
        }

        length = declared;
    }

    if (complete && length < 0) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_LENGTH_REQUIRED, NULL,
                           "a complete upload gives Content-Length or "
                           "Upload-Length");
    }

    if (length >= 0 && declared > length) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_LENGTH,
                           "the body is longer than Upload-Length");
    }

    if (max && (length > max || declared > max)) {
        if (ngx_http_cloudauth_upload_ietf_limit(r, v, max, conf->expires)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->expect_tested = 1;

        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL,
                           "the upload is larger than max-size");
    }

    if (ngx_http_cloudauth_upload_consumed(r)) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_INTERNAL_SERVER_ERROR, NULL,
                           "the request body is no longer there");
    }

    u = ngx_http_cloudauth_upload_create(r, conf, origin, max,
                                     &ngx_http_cloudauth_upload_ietf_hooks);
    if (u == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    u->method = NGX_HTTP_POST;
    u->resumable = 1;
    u->id.bucket = conf->gcs.bucket;
    u->id.length = length;
    u->id.created = ngx_time();

    ngx_str_null(&raw);
    ngx_str_null(&filename);
    ngx_str_null(&md5);
    ngx_str_null(&filetype);

    h = ngx_http_cloudauth_upload_ietf_header(r, "Upload-Metadata");
    if (h) {
        raw = h->value;
    }

    rc = ngx_http_cloudauth_upload_resume_metadata(u, &raw, &filename,
                                                   &filetype);
    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_ietf_problem(r, origin, rc, NULL,
                                 (char *) u->reason.data, u->reason.len,
                                 -1, -1);
    }

    u->id.metadata = raw;

    if (filename.len == 0) {
        ngx_http_cloudauth_upload_ietf_disposition(r, &filename);
    }

    /*
     * a file name goes below the URI; without one the URI is the name,
     * and its last segment $cloudauth_filename, as for a single PUT
     */

    u->directory = (filename.len != 0);

    if (filename.len == 0) {
        p = r->uri.data + r->uri.len;

        while (p > r->uri.data && p[-1] != '/') {
            p--;
        }

        filename.data = p;
        filename.len = r->uri.data + r->uri.len - p;
    }

    if (filetype.len == 0 && r->headers_in.content_type) {
        filetype = r->headers_in.content_type->value;

        if (filetype.len >= sizeof(NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PARTIAL) - 1
            && ngx_strncasecmp(filetype.data,
                          (u_char *) NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PARTIAL,
                          sizeof(NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PARTIAL) - 1)
               == 0)
        {
            ngx_str_null(&filetype);
        }
    }

    if (filetype.len == 0) {
        ngx_str_set(&filetype, "application/octet-stream");
    }

    rc = ngx_http_cloudauth_upload_open(u, &filename, &filetype, &md5,
                                        length);
    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_ietf_problem(r, origin, rc, NULL,
                                 (char *) u->reason.data, u->reason.len,
                                 -1, -1);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "cloudauth: upload: IETF creation, complete %i, "
                   "length %O, HTTP version %ui", complete, length,
                   r->http_version);

    /*
     * HTTP/1.1: the session first, its URL in a 104 before the body;
     * HTTP/2 and 3 get no interim response from a module of this nginx
     */

    if (r->http_version == NGX_HTTP_VERSION_11
#if (NGX_HTTP_V2)
        && r->stream == NULL
#endif
       )
    {
        return ngx_http_cloudauth_upload_start(u);
    }

    return ngx_http_cloudauth_upload_read(u);
}


/*
 * Content-Disposition's file name: filename*=UTF-8''percent-encoded, else
 * filename= a token or a quoted string.  Nothing when there is none.
 */

static void
ngx_http_cloudauth_upload_ietf_disposition(ngx_http_request_t *r,
    ngx_str_t *filename)
{
    u_char           *p, *last, *q, *d, *s;
    size_t            len;
    ngx_uint_t        star;
    ngx_table_elt_t  *h;

    h = ngx_http_cloudauth_upload_ietf_header(r, "Content-Disposition");
    if (h == NULL) {
        return;
    }

    last = h->value.data + h->value.len;
    star = 0;

    /* filename* first: it is the one meant when both are given */

    p = ngx_strlcasestrn(h->value.data, last, (u_char *) "filename*=",
                         sizeof("filename*=") - 2);
    if (p) {
        star = 1;
        p += sizeof("filename*=") - 1;

        q = ngx_strlcasestrn(p, last, (u_char *) "''", 1);
        if (q == NULL || q - p != 5
            || ngx_strncasecmp(p, (u_char *) "UTF-8", 5) != 0)
        {
            return;
        }

        p = q + 2;

    } else {
        for (p = h->value.data; p < last; p++) {
            p = ngx_strlcasestrn(p, last, (u_char *) "filename=",
                                 sizeof("filename=") - 2);
            if (p == NULL) {
                return;
            }

            if (p == h->value.data || p[-1] == ';' || p[-1] == ' '
                || p[-1] == '\t')
            {
                break;
            }
        }

        if (p == NULL || p >= last) {
            return;
        }

        p += sizeof("filename=") - 1;
    }

    d = ngx_pnalloc(r->pool, last - p);
    if (d == NULL) {
        return;
    }

    s = d;

    if (!star && p < last && *p == '"') {
        for (p++; p < last && *p != '"'; p++) {
            if (*p == '\\' && p + 1 < last) {
                p++;
            }

            *d++ = *p;
        }

        if (p == last) {
            return;
        }

    } else {
        q = p;

        while (q < last && *q != ';' && *q != ' ' && *q != '\t') {
            q++;
        }

        len = q - p;

        if (star) {
            ngx_unescape_uri(&d, &p, len, 0);

        } else {
            d = ngx_cpymem(d, p, len);
        }
    }

    filename->data = s;
    filename->len = d - s;
}


/* HEAD, PATCH, DELETE on an upload's URL */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_resume(ngx_http_request_t *r,
    ngx_http_cloudauth_upload_conf_t *conf, ngx_str_t *origin,
    ngx_uint_t method, off_t max, ngx_http_ietf_v_t *v)
{
    off_t                            offset, length, declared;
    ngx_int_t                        rc, complete;
    ngx_str_t                        type, md5, filename;
    ngx_table_elt_t                 *h;
    ngx_http_cloudauth_upload_t     *u;
    ngx_http_cloudauth_upload_id_t   id;

    offset = 0;
    complete = 0;

    if (method == NGX_HTTP_PATCH) {
        if (ngx_http_cloudauth_upload_resume_number(r, "Upload-Offset",
                                                  sizeof("Upload-Offset") - 1,
                                                  &offset)
            != NGX_OK)
        {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           "Upload-Offset is not a number");
        }

        if (offset > NGX_MAX_OFF_T_VALUE / 2
            || (max && offset > max))
        {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           "Upload-Offset is past any upload's length");
        }

        complete = ngx_http_cloudauth_upload_ietf_complete(r, v);

        if (complete < 0) {
            if (v->complete) {
                return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST, NULL,
                           "an append says Upload-Complete: ?0 or ?1");
            }

            /* interop 3: the last part has no Upload-Incomplete */
            complete = 1;
        }

        h = r->headers_in.content_type;

        if (v->partial
            && (h == NULL
                || h->value.len
                   != sizeof(NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PARTIAL) - 1
                || ngx_strncasecmp(h->value.data,
                           (u_char *) NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PARTIAL,
                           h->value.len) != 0))
        {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, NULL,
                           "an append is application/partial-upload");
        }
    }

    rc = ngx_http_cloudauth_upload_resume_id(r, conf, &id);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_NOT_FOUND, NULL, "no such upload");
    }

    length = id.length;

    if (method == NGX_HTTP_PATCH) {
        rc = ngx_http_cloudauth_upload_resume_number(r, "Upload-Length",
                                                   sizeof("Upload-Length") - 1,
                                                   &length);
        if (rc == NGX_ERROR
            || (rc == NGX_OK && id.length >= 0 && length != id.length))
        {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_LENGTH,
                           "Upload-Length is not the upload's");
        }

        if (rc == NGX_DECLINED) {
            length = id.length;
        }

        declared = r->headers_in.content_length_n;

        if (declared > NGX_MAX_OFF_T_VALUE / 2) {
            /* offset + declared stays a number */
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL,
                           "the body is larger than any upload");
        }

        if (complete && declared >= 0) {
            if (length >= 0 && offset + declared != length) {
                return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_LENGTH,
                           "the last part does not end at the upload's "
                           "length");
            }

            length = offset + declared;
        }

        if (complete && length < 0) {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_LENGTH_REQUIRED, NULL,
                           "the last part gives Content-Length or "
                           "Upload-Length");
        }

        if (length >= 0
            && (offset > length || declared > length - offset))
        {
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_BAD_REQUEST,
                           NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_LENGTH,
                           "the append goes past the upload's length");
        }

        if (max && (length > max || declared > max - offset)) {
            if (ngx_http_cloudauth_upload_ietf_limit(r, v, max,
                                 id.created + conf->expires - ngx_time())
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            r->expect_tested = 1;

            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL,
                           "the upload goes past max-size");
        }
    }

    u = ngx_http_cloudauth_upload_create(r, conf, origin, max,
                                     &ngx_http_cloudauth_upload_ietf_hooks);
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
            return ngx_http_cloudauth_upload_ietf_say(r, origin,
                           NGX_HTTP_NOT_FOUND, NULL, "no such upload");
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_DONE;
    }

    ngx_str_null(&md5);
    ngx_str_null(&filename);
    ngx_str_set(&type, "application/octet-stream");

    rc = ngx_http_cloudauth_upload_open(u, &filename, &type, &md5, length);
    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_ietf_problem(r, origin, rc, NULL,
                                 (char *) u->reason.data, u->reason.len,
                                 -1, -1);
    }

    return ngx_http_cloudauth_upload_read(u);
}


/*
 * The started hook: the session of a creation on HTTP/1.1 is there, the
 * body not yet read.  Its URL goes to the client in a 104 (Upload
 * Resumption Supported), written on the connection as nginx writes a
 * 100 (Continue), and in the final answer's Location, the same.
 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_started(ngx_http_cloudauth_upload_t *u)
{
    u_char              *p, *start;
    size_t               len;
    ssize_t              n;
    ngx_int_t            ask;
    ngx_str_t            url, limit;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;
    ngx_http_ietf_v_t   *v;

    r = u->request;
    c = r->connection;

    if (!u->early) {
        /* no interim response: the URL comes with the answer */
        return NGX_OK;
    }

    v = ngx_http_cloudauth_upload_ietf_version(r, &ask);
    if (v == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_cloudauth_upload_resume_url(u, &url) != NGX_OK
        || ngx_http_cloudauth_upload_ietf_limits(r, v, u->max_size,
                                                 u->conf->expires, &limit)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    len = sizeof("HTTP/1.1 104 Upload Resumption Supported" CRLF) - 1
          + sizeof("Location: " CRLF) - 1 + url.len
          + sizeof("Upload-Draft-Interop-Version: " CRLF) - 1 + NGX_INT_T_LEN
          + sizeof("Upload-Limit: " CRLF) - 1 + limit.len
          + sizeof(CRLF) - 1;

    start = ngx_pnalloc(r->pool, len);
    if (start == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(start, "HTTP/1.1 104 Upload Resumption Supported" CRLF
                           "Location: %V" CRLF
                           "Upload-Draft-Interop-Version: %ui" CRLF,
                    &url, v->version);

    if (limit.len) {
        p = ngx_sprintf(p, "Upload-Limit: %V" CRLF, &limit);
    }

    *p++ = CR; *p++ = LF;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "cloudauth: upload: send 104 Upload Resumption Supported, "
                   "interop %ui", v->version);

    n = c->send(c, start, p - start);

    if (n != p - start) {
        /* as for a 100 (Continue): so small a packet goes, or nothing */
        c->error = 1;
        return NGX_ERROR;
    }

    /* the final answer has the same Location, and the limits */

    if (ngx_http_cloudauth_upload_header_out(r, "Location", &url) != NGX_OK
        || (limit.len
            && ngx_http_cloudauth_upload_header_out(r, "Upload-Limit", &limit)
               != NGX_OK))
    {
        return NGX_ERROR;
    }

    u->given = 1;

    return NGX_OK;
}


/*
 * The driver's answer hook.  A creation or an append: the offset GCS
 * holds and, when the last byte is in, the object, as a single upload's
 * 201 (an append: 200).  A HEAD: what GCS holds, or that the upload is
 * complete.  A DELETE: cancelled.  A client that went away gets nothing.
 */

static void
ngx_http_cloudauth_upload_ietf_answer(ngx_http_cloudauth_upload_t *u,
    json_t *object)
{
    off_t                size;
    json_t              *j;
    ngx_int_t            rc, ask;
    ngx_str_t            url, shown;
    ngx_uint_t           status;
    ngx_http_request_t  *r;
    ngx_http_ietf_v_t   *v;

    r = u->request;
    u->finished = 1;

    if (u->cut) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cloudauth: upload: the client of \"%V\" went away; "
                      "GCS holds %O bytes", &u->obj.shown, u->obj.offset);
        ngx_http_finalize_request(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    v = ngx_http_cloudauth_upload_ietf_version(r, &ask);
    if (v == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = NGX_OK;

    switch (u->method) {

    case NGX_HTTP_HEAD:
        status = NGX_HTTP_NO_CONTENT;

        if (object == NULL) {
            rc = ngx_http_cloudauth_upload_ietf_state(r, v, u->obj.offset, 0,
                                                      u->id.length);

        } else {
            j = json_object_get(object, "size");
            size = json_is_integer(j) ? (off_t) json_integer_value(j) : -1;

            if (size < 0 || (u->id.length >= 0 && size != u->id.length)) {
                rc = ngx_http_cloudauth_upload_ietf_say(r, &u->cors_origin,
                           NGX_HTTP_BAD_GATEWAY, NULL,
                           "GCS stored another length than declared");
                break;
            }

            rc = ngx_http_cloudauth_upload_ietf_state(r, v, size, 1, size);
        }

        if (rc == NGX_OK) {
            rc = ngx_http_cloudauth_upload_ietf_limit(r, v, u->max_size,
                                 u->id.created + u->conf->expires
                                 - ngx_time());
        }

        if (rc == NGX_OK) {
            rc = ngx_http_cloudauth_upload_header_text(r, "Cache-Control",
                                                       "no-store");
        }

        if (rc == NGX_OK) {
            rc = ngx_http_cloudauth_upload_respond(r, &u->conf->reply,
                                                   &u->cors_origin, status,
                                                   NULL);
        }

        break;

    case NGX_HTTP_DELETE:
        if (ngx_cloudauth_gcs_shown(r->pool, &u->id.name, &shown)
            == NGX_OK)
        {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "cloudauth: upload: the upload of \"%V\" "
                          "cancelled", &shown);
        }

        rc = ngx_http_cloudauth_upload_respond(r, &u->conf->reply,
                                               &u->cors_origin,
                                               NGX_HTTP_NO_CONTENT, NULL);
        break;

    default: /* a creation or an append */

        if (u->method == NGX_HTTP_POST && !u->given) {
            /* no 104 went: the URL is the answer's */

            rc = ngx_http_cloudauth_upload_resume_url(u, &url);

            if (rc == NGX_DECLINED) {
                rc = ngx_http_cloudauth_upload_ietf_say(r, &u->cors_origin,
                           NGX_HTTP_REQUEST_URI_TOO_LARGE, NULL,
                           "the object name is too long for an upload URL");
                break;
            }

            if (rc != NGX_OK
                || ngx_http_cloudauth_upload_header_out(r, "Location", &url)
                   != NGX_OK
                || ngx_http_cloudauth_upload_ietf_limit(r, v, u->max_size,
                                                        u->conf->expires)
                   != NGX_OK)
            {
                rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
                break;
            }

            u->given = 1;
        }

        if (object) {
            status = (u->method == NGX_HTTP_POST) ? NGX_HTTP_CREATED
                                                  : NGX_HTTP_OK;

        } else {
            status = (u->method == NGX_HTTP_POST || v->created)
                     ? NGX_HTTP_CREATED : NGX_HTTP_NO_CONTENT;
        }

        rc = ngx_http_cloudauth_upload_ietf_state(r, v, u->obj.offset,
                                                  object != NULL,
                                                  u->obj.total);

        if (rc == NGX_OK && object) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "cloudauth: upload: IETF upload of \"%V\" "
                           "complete", &u->obj.shown);
        }

        if (rc == NGX_OK) {
            rc = ngx_http_cloudauth_upload_respond(r, &u->conf->reply,
                                                   &u->cors_origin, status,
                                                   object);
        }
    }

    ngx_http_finalize_request(r, rc);
}


/*
 * The driver's check hook: GCS's first word on the session of an append.
 * It holds what the client says it does, or the append is refused
 * (GCS's offset kept for the answer); a complete object takes only an
 * empty append at its end, whose answer is the final one again.
 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_check(ngx_http_cloudauth_upload_t *u,
    off_t held, json_t *object)
{
    if (object == NULL) {
        if (held == u->offset) {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_INFO, u->request->connection->log, 0,
                      "cloudauth: upload: an append to \"%V\" at %O, "
                      "GCS holds %O", &u->obj.shown, u->offset, held);

        u->obj.offset = held;
        u->reason = ngx_http_cloudauth_upload_ietf_moved;
        return NGX_HTTP_CONFLICT;
    }

    if (u->offset != u->obj.total || u->obj.received || !u->input_done) {
        u->reason = ngx_http_cloudauth_upload_ietf_done;
        return NGX_HTTP_BAD_REQUEST;
    }

    return NGX_OK;
}


/* the refuse hook: a failure, as problem details */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_refuse(ngx_http_cloudauth_upload_t *u,
    ngx_uint_t status, ngx_str_t *reason)
{
    ngx_int_t            n;
    ngx_http_request_t  *r;
    ngx_http_ietf_v_t   *v;

    r = u->request;

    v = ngx_http_cloudauth_upload_ietf_version(r, &n);
    if (v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (reason->data == ngx_http_cloudauth_upload_ietf_moved.data) {
        if (ngx_http_cloudauth_upload_ietf_completeness(r, v, 0) != NGX_OK
            || ngx_http_cloudauth_upload_header_off(r, "Upload-Offset",
                                                    u->obj.offset)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_ietf_problem(r, &u->cors_origin,
                                 status,
                                 NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_MISMATCH,
                                 (char *) reason->data, reason->len,
                                 u->obj.offset, u->offset);
    }

    if (reason->data == ngx_http_cloudauth_upload_ietf_done.data) {

        /*
         * up to interop 6 Upload-Complete says the upload is; since, it
         * says whose semantics the answer has: this one is the protocol's
         */

        if (ngx_http_cloudauth_upload_ietf_completeness(r, v, v->limit != 2)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cloudauth_upload_ietf_problem(r, &u->cors_origin,
                                 status,
                                 NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_COMPLETED,
                                 (char *) reason->data, reason->len, -1, -1);
    }

    return ngx_http_cloudauth_upload_ietf_problem(r, &u->cors_origin, status,
                                                  NULL, (char *) reason->data,
                                                  reason->len, -1, -1);
}


/* Upload-Complete: ?1/?0, or in interop 3 Upload-Incomplete: ?0/?1 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_completeness(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, ngx_uint_t complete)
{
    if (v->complete) {
        return ngx_http_cloudauth_upload_header_text(r, "Upload-Complete",
                                                     complete ? "?1" : "?0");
    }

    return ngx_http_cloudauth_upload_header_text(r, "Upload-Incomplete",
                                                 complete ? "?0" : "?1");
}


/* Upload-Offset, the completeness, the length when known; no caching */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_state(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, off_t offset, ngx_uint_t complete, off_t length)
{
    if (ngx_http_cloudauth_upload_header_off(r, "Upload-Offset", offset)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cloudauth_upload_ietf_completeness(r, v, complete)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (length >= 0
        && ngx_http_cloudauth_upload_header_off(r, "Upload-Length", length)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/*
 * Upload-Limit (interop 6 and later): max-size from max_size=, appends
 * kept up to their last 256 KiB mark (min-append-size), and the time
 * left ("expires" in interop 6, "max-age" since).  An empty value: the
 * version has no such header.
 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_limits(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, off_t max, time_t left, ngx_str_t *value)
{
    u_char  *p;

    ngx_str_null(value);

    if (v->limit == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, sizeof("max-size=, min-append-size=262144, "
                                    "max-age=") - 1
                             + NGX_OFF_T_LEN + NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    value->data = p;

    if (max) {
        p = ngx_sprintf(p, "max-size=%O, ", max);
    }

    p = ngx_sprintf(p, "min-append-size=%uz, %s=%T",
                    (size_t) NGX_CLOUDAUTH_GCS_QUANTUM,
                    v->limit == 1 ? "expires" : "max-age",
                    left > 0 ? left : 0);

    value->len = p - value->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cloudauth_upload_ietf_limit(ngx_http_request_t *r,
    ngx_http_ietf_v_t *v, off_t max, time_t left)
{
    ngx_str_t  value;

    if (ngx_http_cloudauth_upload_ietf_limits(r, v, max, left, &value)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (value.len == 0) {
        return NGX_OK;
    }

    return ngx_http_cloudauth_upload_header_out(r, "Upload-Limit", &value);
}


/*
 * A problem details answer (RFC 9457): the draft's problem type where it
 * names one (type: its fragment), else "about:blank" with the reason
 */

static ngx_int_t
ngx_http_cloudauth_upload_ietf_problem(ngx_http_request_t *r,
    ngx_str_t *origin, ngx_uint_t status, const char *type,
    const char *detail, size_t len, off_t expected, off_t provided)
{
    json_t                            *body;
    ngx_int_t                          rc;
    ngx_http_cloudauth_upload_conf_t  *conf;

    conf = ngx_http_get_module_loc_conf(r, ngx_http_cloudauth_upload_module);

    if (r->request_body == NULL) {
        /* refused: no "100 Continue" invites a body to discard */
        r->expect_tested = 1;

        if (ngx_http_discard_request_body(r) != NGX_OK) {
            r->keepalive = 0;
        }
    }

    if (type) {
        body = json_pack("{s:s+, s:s, s:i, s:s%}",
                         "type", NGX_HTTP_CLOUDAUTH_UPLOAD_IETF_PROBLEM, type,
                         "title", type, "status", (int) status,
                         "detail", detail, len);

    } else {
        body = json_pack("{s:s, s:i, s:s%}", "type", "about:blank",
                         "status", (int) status, "detail", detail, len);
    }

    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (expected >= 0
        && (json_object_set_new(body, "expected-offset",
                                json_integer((json_int_t) expected)) != 0
            || json_object_set_new(body, "provided-offset",
                                   json_integer((json_int_t) provided))
               != 0))
    {
        json_decref(body);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&r->headers_out.content_type, "application/problem+json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_cloudauth_upload_respond(r, &conf->reply, origin, status,
                                           body);

    json_decref(body);

    return rc;
}


static ngx_int_t
ngx_http_cloudauth_upload_ietf_say(ngx_http_request_t *r, ngx_str_t *origin,
    ngx_uint_t status, const char *type, const char *detail)
{
    return ngx_http_cloudauth_upload_ietf_problem(r, origin, status, type,
                                                  detail, ngx_strlen(detail),
                                                  -1, -1);
}
