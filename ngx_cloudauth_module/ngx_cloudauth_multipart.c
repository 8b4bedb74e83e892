
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * A streaming multipart/form-data parser (RFC 7578, RFC 2046): bytes in,
 * events out, nothing about nginx requests.  The caller hands it whatever
 * part of the body it has and gets one event per call: a part's headers,
 * a run of the part's bytes (at most "room" of them, pointing into the
 * input or into the parser), the end of a part, the end of the form.
 * Memory is fixed: the delimiter and one part's headers.
 *
 * Bytes that may begin a delimiter are held back until the delimiter is
 * confirmed or refuted.  They are always a prefix of "\r\n--boundary", and
 * as a boundary cannot contain CR, a refuted prefix is plain data and
 * matching restarts at the byte that refuted it.
 */


#include "ngx_cloudauth_multipart.h"


enum {
    NGX_CLOUDAUTH_MP_PREAMBLE = 0,
    NGX_CLOUDAUTH_MP_DELIM_CHECK,
    NGX_CLOUDAUTH_MP_DELIM_TAIL,
    NGX_CLOUDAUTH_MP_DELIM_DASH,
    NGX_CLOUDAUTH_MP_DELIM_LWSP,
    NGX_CLOUDAUTH_MP_DELIM_CR,
    NGX_CLOUDAUTH_MP_HEADERS,
    NGX_CLOUDAUTH_MP_BODY,
    NGX_CLOUDAUTH_MP_EPILOGUE
};


static ngx_int_t ngx_cloudauth_mp_headers(ngx_cloudauth_mp_t *mp);
static ngx_int_t ngx_cloudauth_mp_disposition(ngx_cloudauth_mp_t *mp,
    u_char *p, u_char *last);
static u_char *ngx_cloudauth_mp_param(u_char *p, u_char *last,
    ngx_str_t *name, ngx_str_t *value);
static ngx_int_t ngx_cloudauth_mp_caseeq(u_char *a, size_t len,
    const char *b);


static ngx_int_t
ngx_cloudauth_mp_boundary_char(u_char c)
{
    /* RFC 2046 bchars, plus a few seen in the wild; never CR or LF */

    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
        || (c >= 'A' && c <= 'Z'))
    {
        return 1;
    }

    switch (c) {
    case '\'': case '(': case ')': case '+': case '_': case ',': case '-':
    case '.': case '/': case ':': case '=': case '?': case ' ':
        return 1;
    }

    return 0;
}


ngx_int_t
ngx_cloudauth_mp_init(ngx_cloudauth_mp_t *mp, ngx_str_t *content_type)
{
    u_char     *p, *last;
    size_t      i;
    ngx_str_t   name, value;

    ngx_memzero(mp, sizeof(ngx_cloudauth_mp_t));

    if (content_type->len > NGX_CLOUDAUTH_MP_MAX_HEADERS) {
        mp->error = "Content-Type too long";
        return NGX_ERROR;
    }

    /* parameters are unescaped in place: in a copy */

    ngx_memcpy(mp->hdr, content_type->data, content_type->len);

    p = mp->hdr;
    last = p + content_type->len;

    while (p < last && *p != ';') {
        p++;
    }

    i = p - mp->hdr;

    while (i && (mp->hdr[i - 1] == ' ' || mp->hdr[i - 1] == '\t')) {
        i--;
    }

    if (!ngx_cloudauth_mp_caseeq(mp->hdr, i, "multipart/form-data")) {
        mp->error = "not multipart/form-data";
        return NGX_ERROR;
    }

    value.len = 0;
    value.data = NULL;

    while (p < last) {
        p = ngx_cloudauth_mp_param(p, last, &name, &value);
        if (p == NULL) {
            mp->error = "malformed Content-Type parameters";
            return NGX_ERROR;
        }

        if (ngx_cloudauth_mp_caseeq(name.data, name.len, "boundary")) {
            break;
        }

        value.len = 0;
    }

    if (value.len == 0 || value.len > NGX_CLOUDAUTH_MP_MAX_BOUNDARY
        || value.data[value.len - 1] == ' ')
    {
        mp->error = "no valid boundary in Content-Type";
        return NGX_ERROR;
    }

    for (i = 0; i < value.len; i++) {
        if (!ngx_cloudauth_mp_boundary_char(value.data[i])) {
            mp->error = "no valid boundary in Content-Type";
            return NGX_ERROR;
        }
    }

    ngx_memcpy(mp->delim, "\r\n--", 4);
    ngx_memcpy(mp->delim + 4, value.data, value.len);
    mp->delim_len = 4 + value.len;

    /* the first delimiter may come without the CRLF before it */
    mp->match = 2;
    mp->state = NGX_CLOUDAUTH_MP_PREAMBLE;

    return NGX_OK;
}


ngx_cloudauth_mp_event_e
ngx_cloudauth_mp_parse(ngx_cloudauth_mp_t *mp, u_char **pos, u_char *last,
    size_t room)
{
    u_char  *p, *start, c;
    size_t   n;

    p = *pos;

    if (mp->state == NGX_CLOUDAUTH_MP_BODY && mp->held) {

        /* a refuted delimiter prefix: it was data */

        n = mp->held < room ? mp->held : room;

        if (n == 0) {
            return NGX_CLOUDAUTH_MP_NEED_MORE;
        }

        mp->data = mp->delim + mp->held_pos;
        mp->len = n;
        mp->held -= n;
        mp->held_pos += n;

        return NGX_CLOUDAUTH_MP_DATA;
    }

    while (p < last) {

        switch (mp->state) {

        case NGX_CLOUDAUTH_MP_PREAMBLE:

            c = *p++;

            if (c == mp->delim[mp->match]) {
                if (++mp->match == mp->delim_len) {
                    mp->match = 0;
                    mp->state = NGX_CLOUDAUTH_MP_DELIM_TAIL;
                }

            } else {
                mp->match = (c == '\r') ? 1 : 0;
            }

            break;

        case NGX_CLOUDAUTH_MP_DELIM_CHECK:

            /*
             * "CRLF--boundary" in a body is a delimiter only if "--", CR
             * or blanks follow; otherwise (a boundary that is a prefix of
             * a longer word) all of it was data
             */

            c = *p;

            if (c == '-' || c == '\r' || c == ' ' || c == '\t') {
                mp->state = NGX_CLOUDAUTH_MP_DELIM_TAIL;
                *pos = p;
                return NGX_CLOUDAUTH_MP_PART_END;
            }

            mp->state = NGX_CLOUDAUTH_MP_BODY;

            if (room == 0) {
                mp->held = mp->delim_len;
                mp->held_pos = 0;
                *pos = p;
                return NGX_CLOUDAUTH_MP_NEED_MORE;
            }

            n = mp->delim_len < room ? mp->delim_len : room;

            mp->data = mp->delim;
            mp->len = n;
            mp->held = mp->delim_len - n;
            mp->held_pos = n;
            *pos = p;

            return NGX_CLOUDAUTH_MP_DATA;

        case NGX_CLOUDAUTH_MP_DELIM_TAIL:

            c = *p++;

            if (c == '-') {
                mp->state = NGX_CLOUDAUTH_MP_DELIM_DASH;

            } else if (c == '\r') {
                mp->state = NGX_CLOUDAUTH_MP_DELIM_CR;

            } else if (c == ' ' || c == '\t') {
                mp->state = NGX_CLOUDAUTH_MP_DELIM_LWSP;

            } else {
                mp->error = "garbage after a boundary";
                *pos = p;
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            break;

        case NGX_CLOUDAUTH_MP_DELIM_DASH:

            c = *p++;

            if (c != '-') {
                mp->error = "garbage after a boundary";
                *pos = p;
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            mp->state = NGX_CLOUDAUTH_MP_EPILOGUE;
            *pos = p;
            return NGX_CLOUDAUTH_MP_END;

        case NGX_CLOUDAUTH_MP_DELIM_LWSP:

            c = *p++;

            if (c == '\r') {
                mp->state = NGX_CLOUDAUTH_MP_DELIM_CR;

            } else if (c != ' ' && c != '\t') {
                mp->error = "garbage after a boundary";
                *pos = p;
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            break;

        case NGX_CLOUDAUTH_MP_DELIM_CR:

            c = *p++;

            if (c != '\n') {
                mp->error = "boundary line does not end with CRLF";
                *pos = p;
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            mp->hdr_len = 0;
            mp->state = NGX_CLOUDAUTH_MP_HEADERS;
            break;

        case NGX_CLOUDAUTH_MP_HEADERS:

            if (mp->hdr_len == NGX_CLOUDAUTH_MP_MAX_HEADERS) {
                mp->error = "part headers too large";
                *pos = p;
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            c = *p++;
            mp->hdr[mp->hdr_len++] = c;

            if (c != '\n') {
                break;
            }

            if (mp->hdr_len < 2 || mp->hdr[mp->hdr_len - 2] != '\r') {
                mp->error = "part header line does not end with CRLF";
                *pos = p;
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            if (mp->hdr_len != 2
                && (mp->hdr_len < 4 || mp->hdr[mp->hdr_len - 3] != '\n'))
            {
                break;
            }

            *pos = p;

            if (ngx_cloudauth_mp_headers(mp) != NGX_OK) {
                return NGX_CLOUDAUTH_MP_ERROR;
            }

            mp->match = 0;
            mp->held = 0;
            mp->state = NGX_CLOUDAUTH_MP_BODY;

            return NGX_CLOUDAUTH_MP_PART;

        case NGX_CLOUDAUTH_MP_BODY:

            if (room == 0) {
                *pos = p;
                return NGX_CLOUDAUTH_MP_NEED_MORE;
            }

            if (mp->match == 0) {
                start = p;

                while (p < last && *p != '\r' && (size_t) (p - start) < room)
                {
                    p++;
                }

                if (p > start) {
                    mp->data = start;
                    mp->len = p - start;
                    *pos = p;
                    return NGX_CLOUDAUTH_MP_DATA;
                }

                if (p == last) {
                    break;
                }

                /* *p == '\r' */
                mp->match = 1;
                p++;
                break;
            }

            if (*p == mp->delim[mp->match]) {
                p++;

                if (++mp->match == mp->delim_len) {
                    mp->match = 0;
                    mp->state = NGX_CLOUDAUTH_MP_DELIM_CHECK;
                }

                break;
            }

            /* refuted: the held bytes are data; *p is looked at again */

            mp->held = mp->match;
            mp->held_pos = 0;
            mp->match = 0;

            n = mp->held < room ? mp->held : room;

            mp->data = mp->delim;
            mp->len = n;
            mp->held -= n;
            mp->held_pos = n;
            *pos = p;

            return NGX_CLOUDAUTH_MP_DATA;

        default: /* NGX_CLOUDAUTH_MP_EPILOGUE */
            p = last;
            break;
        }
    }

    *pos = p;

    return NGX_CLOUDAUTH_MP_NEED_MORE;
}


ngx_int_t
ngx_cloudauth_mp_finish(ngx_cloudauth_mp_t *mp)
{
    if (mp->state != NGX_CLOUDAUTH_MP_EPILOGUE) {
        mp->error = (mp->state == NGX_CLOUDAUTH_MP_PREAMBLE)
                    ? "no boundary in the body"
                    : "the body ends before the closing boundary";
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_cloudauth_mp_headers(ngx_cloudauth_mp_t *mp)
{
    u_char                   *p, *last, *line, *colon, *v, *vlast;
    ngx_uint_t                disposition;
    ngx_cloudauth_mp_part_t  *part;

    part = &mp->part;
    ngx_memzero(part, sizeof(ngx_cloudauth_mp_part_t));

    disposition = 0;
    p = mp->hdr;
    last = mp->hdr + mp->hdr_len;

    while (p < last) {
        line = p;

        while (p < last && *p != '\r') {
            p++;
        }

        /* p points at the CR of the line's CRLF */

        if (p == line) {
            break;
        }

        if (*line == ' ' || *line == '\t') {
            mp->error = "folded part header";
            return NGX_ERROR;
        }

        for (colon = line; colon < p && *colon != ':'; colon++) {
            /* void */
        }

        if (colon == p || colon == line) {
            mp->error = "malformed part header";
            return NGX_ERROR;
        }

        v = colon + 1;
        vlast = p;

        while (v < vlast && (*v == ' ' || *v == '\t')) {
            v++;
        }

        while (vlast > v && (vlast[-1] == ' ' || vlast[-1] == '\t')) {
            vlast--;
        }

        if (ngx_cloudauth_mp_caseeq(line, colon - line,
                                    "content-disposition"))
        {
            if (disposition) {
                mp->error = "two Content-Disposition headers in a part";
                return NGX_ERROR;
            }

            disposition = 1;

            if (ngx_cloudauth_mp_disposition(mp, v, vlast) != NGX_OK) {
                return NGX_ERROR;
            }

        } else if (ngx_cloudauth_mp_caseeq(line, colon - line,
                                           "content-type"))
        {
            part->content_type.data = v;
            part->content_type.len = vlast - v;

        } else if (ngx_cloudauth_mp_caseeq(line, colon - line,
                                           "content-md5"))
        {
            part->content_md5.data = v;
            part->content_md5.len = vlast - v;
        }

        p += 2;
    }

    if (!disposition) {
        mp->error = "part without Content-Disposition";
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_cloudauth_mp_disposition(ngx_cloudauth_mp_t *mp, u_char *p, u_char *last)
{
    u_char                   *type;
    ngx_str_t                 name, value;
    ngx_uint_t                has_name;
    ngx_cloudauth_mp_part_t  *part;

    part = &mp->part;
    type = p;

    while (p < last && *p != ';' && *p != ' ' && *p != '\t') {
        p++;
    }

    if (!ngx_cloudauth_mp_caseeq(type, p - type, "form-data")) {
        mp->error = "part disposition is not form-data";
        return NGX_ERROR;
    }

    has_name = 0;

    while (p < last) {
        p = ngx_cloudauth_mp_param(p, last, &name, &value);
        if (p == NULL) {
            mp->error = "malformed Content-Disposition";
            return NGX_ERROR;
        }

        if (name.len == 0) {
            continue;
        }

        if (ngx_cloudauth_mp_caseeq(name.data, name.len, "name")) {
            part->name = value;
            has_name = 1;

        } else if (ngx_cloudauth_mp_caseeq(name.data, name.len, "filename")) {
            part->filename = value;
            part->file = 1;
        }
    }

    if (!has_name) {
        mp->error = "part without a name";
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * One ";name=value" parameter from p; value a token or a quoted string,
 * unescaped in place.  Returns where the next one starts, or NULL.
 */

static u_char *
ngx_cloudauth_mp_param(u_char *p, u_char *last, ngx_str_t *name,
    ngx_str_t *value)
{
    u_char  *d;

    name->len = 0;
    name->data = NULL;
    value->len = 0;
    value->data = NULL;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p == last) {
        return p;
    }

    if (*p != ';') {
        return NULL;
    }

    p++;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p == last) {
        return p;
    }

    name->data = p;

    while (p < last && *p != '=' && *p != ';' && *p != ' ' && *p != '\t') {
        p++;
    }

    name->len = p - name->data;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p == last || *p == ';') {
        return p;
    }

    if (*p != '=' || name->len == 0) {
        return NULL;
    }

    p++;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    if (p < last && *p == '"') {
        p++;
        d = p;
        value->data = p;

        for ( ;; ) {
            if (p == last) {
                return NULL;
            }

            if (*p == '"') {
                p++;
                break;
            }

            /*
             * browsers do not escape "\" in file names (C:\dir\f.txt):
             * only \" and \\ are escapes
             */

            if (*p == '\\' && p + 1 < last
                && (p[1] == '"' || p[1] == '\\'))
            {
                p++;
            }

            *d++ = *p++;
        }

        value->len = d - value->data;

        return p;
    }

    value->data = p;

    while (p < last && *p != ';' && *p != ' ' && *p != '\t') {
        p++;
    }

    value->len = p - value->data;

    return p;
}


static ngx_int_t
ngx_cloudauth_mp_caseeq(u_char *a, size_t len, const char *b)
{
    size_t  i;
    u_char  c;

    for (i = 0; i < len; i++) {
        if (b[i] == '\0') {
            return 0;
        }

        c = a[i];

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }

        if (c != (u_char) b[i]) {
            return 0;
        }
    }

    return b[len] == '\0';
}
