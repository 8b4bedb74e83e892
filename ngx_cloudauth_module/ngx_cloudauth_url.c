
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * The URL policy: where a credential's requests, and the upload's, may go.
 * Configuration (ngx_cloudauth_check_url()) and the fetch client call it.
 */


#include "ngx_cloudauth.h"

#include <curl/curl.h>


static CURLU *ngx_cloudauth_url_parse(ngx_str_t *url, ngx_log_t *log,
    char **why);
static char *ngx_cloudauth_url_verify(CURLU *u, ngx_uint_t metadata,
    ngx_uint_t *https);


/*
 * URLs as libcurl itself parses them: http or https only, no user name or
 * password, plain http only to a loopback address or, where allowed, to the
 * metadata server.  The same check runs at configuration time
 * (ngx_cloudauth_check_url()) and on every URL a request is sent to
 * (ngx_cloudauth_fetch.c), which then gets the URL as libcurl parsed it
 * (norm, curl_free() it) and whether it is https.  NULL, or why not.
 */

char *
ngx_cloudauth_url_check(ngx_str_t *url, ngx_uint_t metadata, char **norm,
    ngx_uint_t *https, ngx_log_t *log)
{
    char       *why;
    CURLU      *u;
    CURLUcode   uc;

    u = ngx_cloudauth_url_parse(url, log, &why);
    if (u == NULL) {
        return why;
    }

    why = ngx_cloudauth_url_verify(u, metadata, https);

    if (why == NULL && norm) {
        *norm = NULL;
        uc = curl_url_get(u, CURLUPART_URL, norm, 0);

        if (uc != CURLUE_OK) {
            why = "cannot be checked: libcurl cannot write it out again";
        }
    }

    curl_url_cleanup(u);

    return why;
}


static CURLU *
ngx_cloudauth_url_parse(ngx_str_t *url, ngx_log_t *log, char **why)
{
    char       *s;
    CURLU      *u;
    CURLUcode   uc;

    static u_char  buf[128];

    u = curl_url();
    s = ngx_alloc(url->len + 1, log);

    if (u == NULL || s == NULL) {
        if (u) {
            curl_url_cleanup(u);
        }

        if (s) {
            ngx_free(s);
        }

        *why = "cannot be checked: out of memory";
        return NULL;
    }

    ngx_cpystrn((u_char *) s, url->data, url->len + 1);

    uc = (ngx_strlen(s) == url->len) ? curl_url_set(u, CURLUPART_URL, s, 0)
                                     : CURLUE_MALFORMED_INPUT;

    ngx_free(s);

    if (uc != CURLUE_OK) {
        curl_url_cleanup(u);

        (void) ngx_snprintf(buf, sizeof(buf) - 1,
                            "is not an https:// URL libcurl accepts (%s): "
                            "write it as https://host[:port]/path%Z",
#if (LIBCURL_VERSION_NUM >= 0x075000)
                            curl_url_strerror(uc)
#else
                            "malformed"
#endif
                            );

        *why = (char *) buf;
        return NULL;
    }

    return u;
}


static char *
ngx_cloudauth_url_verify(CURLU *u, ngx_uint_t metadata, ngx_uint_t *https)
{
    char       *scheme, *host, *user, *password;
    size_t      len;
    in_addr_t   addr;
    ngx_uint_t  plain, ok;
#if (NGX_HAVE_INET6)
    struct in6_addr  addr6;
#endif

    scheme = NULL;
    host = NULL;
    user = NULL;
    password = NULL;
    ok = 0;
    plain = 0;

    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK
        || curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    {
        return "is not a URL with a scheme and a host: write it as "
               "https://host[:port]/path";
    }

    if (ngx_strcasecmp((u_char *) scheme, (u_char *) "https") == 0) {
        ok = 1;

    } else if (ngx_strcasecmp((u_char *) scheme, (u_char *) "http") == 0) {
        plain = 1;
        ok = 1;
    }

    curl_free(scheme);

    if (!ok) {
        curl_free(host);
        return "is not an http:// or https:// URL: use https://";
    }

    /* CURLUE_NO_USER, CURLUE_NO_PASSWORD: none there, as it must be */

    if (curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER
        || curl_url_get(u, CURLUPART_PASSWORD, &password, 0)
           != CURLUE_NO_PASSWORD)
    {
        curl_free(user);
        curl_free(password);
        curl_free(host);

        return "has a user name or password in it (\"...@\"): remove it; "
               "the credential's secrets are never put into a URL";
    }

    if (https) {
        *https = !plain;
    }

    if (!plain) {
        curl_free(host);
        return NULL;
    }

    len = ngx_strlen(host);
    ok = 0;

    if (len == 9
        && ngx_strncasecmp((u_char *) host, (u_char *) "localhost", 9) == 0)
    {
        ok = 1;

    } else if (host[0] == '[') {
#if (NGX_HAVE_INET6)
        /* libcurl gives IPv6 addresses in brackets, without a zone id */
        ok = (len > 2 && host[len - 1] == ']'
              && ngx_inet6_addr((u_char *) host + 1, len - 2, addr6.s6_addr)
                 == NGX_OK
              && IN6_IS_ADDR_LOOPBACK(&addr6));
#endif

    } else {
        addr = ngx_inet_addr((u_char *) host, len);

        ok = (addr != INADDR_NONE
              && (ntohl(addr) & 0xff000000) == 0x7f000000);

        if (!ok && metadata) {
            ok = ((len == 15
                   && ngx_strncmp(host, "169.254.169.254", 15) == 0)
                  || (len == 24
                      && ngx_strncasecmp((u_char *) host,
                                         (u_char *) "metadata.google.internal",
                                         24) == 0));
        }
    }

    curl_free(host);

    if (ok) {
        return NULL;
    }

    return metadata
           ? "is plain http:// to a host that is neither loopback nor the "
             "metadata server: use https:// (plain http is allowed only to "
             "127.0.0.0/8, [::1], localhost, 169.254.169.254 and "
             "metadata.google.internal)"
           : "is plain http:// to a host that is not loopback: use https:// "
             "(plain http is allowed only to 127.0.0.0/8, [::1] and "
             "localhost)";
}
