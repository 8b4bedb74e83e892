/*
 * gcs_sink: a stand-in for Google Cloud Storage's upload endpoint, fast
 * enough not to be the bottleneck of the upload benchmark.  Plain HTTP/1.1
 * on loopback, one process, epoll, keep-alive.  It keeps no bytes: it
 * counts them and computes CRC32C (SSE4.2 crc32 instruction, a table
 * otherwise) and, unless -M, MD5 (OpenSSL EVP) as they arrive, so that the
 * object it describes carries the hashes of what was sent.
 *
 *   POST /upload/storage/v1/b/B/o?uploadType=resumable&name=N  -> 200 + Location
 *   PUT  SESSION  Content-Range: bytes X-Y/STAR     -> 308 + Range
 *   PUT  SESSION  Content-Range: bytes X-Y/TOTAL    -> 200 + object JSON
 *   PUT  SESSION  Content-Range: bytes STAR/TOTAL   (empty final chunk)
 *   PUT  SESSION  Content-Range: bytes STAR/STAR    (status query)
 *   DELETE SESSION                                  -> 499
 *   PUT|POST /upload/storage/v1/b/B/o?uploadType=media&name=N  -> 200 + object
 *   GET  /stats                                     -> counters (JSON)
 *
 * (STAR: "*".)  Non-final chunks must be 256 KiB multiples starting at the
 * stored bytes; the final chunk's X-Goog-Hash (crc32c=, md5=) must match the
 * data.  Bodies of known length or chunked; "Expect: 100-continue" is
 * answered.  Sessions live in memory; a chunk whose connection breaks is
 * not kept at all.
 *
 *   gcs_sink [-M] [-v] [-d MS] [-c CERT -k KEY] PORT
 *
 * -M: no MD5; -v: log each request; -d MS: each answer (but "100
 * Continue") is sent MS milliseconds after the request is in, as a network
 * round trip to GCS would delay it; -c/-k: HTTPS (OpenSSL, the certificate
 * chain and key in PEM) instead of plain HTTP, as GCS speaks.
 *
 * Build: cc -O2 -o build/gcs_sink bench/gcs_sink.c -lssl -lcrypto
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/err.h>

#if defined __x86_64__ && (defined __GNUC__ || defined __clang__)
#include <nmmintrin.h>
#define SINK_HW 1
#endif

#define QUANTUM     (256 * 1024)
#define HEAD_MAX    (64 * 1024)
#define READ_BUF    (1024 * 1024)
#define NAME_MAX_   1024

static int use_md5 = 1;
static int verbose;
static long delay_ms;
static SSL_CTX *ssl_ctx;

/* CRC32C ------------------------------------------------------------------ */

static uint32_t crc_table[256];
static int crc_hw;

static void
crc_init(void)
{
    uint32_t c;
    int i, k;

    for (i = 0; i < 256; i++) {
        c = i;
        for (k = 0; k < 8; k++) {
            c = c & 1 ? (c >> 1) ^ 0x82f63b78 : c >> 1;
        }
        crc_table[i] = c;
    }

#ifdef SINK_HW
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t
crc_sw(uint32_t c, const unsigned char *p, size_t n)
{
    while (n--) {
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    }
    return c;
}

#ifdef SINK_HW
__attribute__((target("sse4.2")))
static uint32_t
crc_hw_run(uint32_t c, const unsigned char *p, size_t n)
{
    uint64_t v, c64;

    while (n && ((uintptr_t) p & 7)) {
        c = _mm_crc32_u8(c, *p++);
        n--;
    }

    c64 = c;
    while (n >= 32) {
        memcpy(&v, p, 8);      c64 = _mm_crc32_u64(c64, v);
        memcpy(&v, p + 8, 8);  c64 = _mm_crc32_u64(c64, v);
        memcpy(&v, p + 16, 8); c64 = _mm_crc32_u64(c64, v);
        memcpy(&v, p + 24, 8); c64 = _mm_crc32_u64(c64, v);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        memcpy(&v, p, 8);
        c64 = _mm_crc32_u64(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t) c64;
    while (n--) {
        c = _mm_crc32_u8(c, *p++);
    }
    return c;
}
#endif

/* crc: the finished value (0 to start) */
static uint32_t
crc32c(uint32_t crc, const unsigned char *p, size_t n)
{
#ifdef SINK_HW
    if (crc_hw) {
        return ~crc_hw_run(~crc, p, n);
    }
#endif
    return ~crc_sw(~crc, p, n);
}

/* helpers ------------------------------------------------------------------ */

static size_t
b64(char *out, const unsigned char *in, size_t n)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < n; i += 3) {
        out[o++] = t[in[i] >> 2];
        out[o++] = t[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
        out[o++] = t[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
        out[o++] = t[in[i + 2] & 63];
    }
    if (i < n) {
        out[o++] = t[in[i] >> 2];
        if (i + 1 < n) {
            out[o++] = t[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
            out[o++] = t[(in[i + 1] & 15) << 2];
        } else {
            out[o++] = t[(in[i] & 3) << 4];
            out[o++] = '=';
        }
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int
unhex(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* percent-decode [s, s + n) into out (n + 1 bytes); returns the length */
static size_t
pct_decode(char *out, const char *s, size_t n)
{
    size_t i, o = 0;

    for (i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n
            && unhex(s[i + 1]) >= 0 && unhex(s[i + 2]) >= 0)
        {
            out[o++] = (char) (unhex(s[i + 1]) * 16 + unhex(s[i + 2]));
            i += 2;
        } else if (s[i] == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return o;
}

/* the decoded value of query parameter key, or NULL (malloc'd) */
static char *
query_get(const char *q, const char *key)
{
    size_t kl = strlen(key);
    const char *p = q, *e;
    char *v;

    while (p && *p) {
        e = strchr(p, '&');
        if (!e) e = p + strlen(p);
        if ((size_t) (e - p) > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            v = malloc(e - p - kl);
            pct_decode(v, p + kl + 1, e - p - kl - 1);
            return v;
        }
        p = *e ? e + 1 : NULL;
    }
    return NULL;
}

/* JSON string body of s (escaped), into out (6 * n + 1) */
static void
json_esc(char *out, const char *s)
{
    unsigned char c;

    for (; (c = (unsigned char) *s); s++) {
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char) c;
        } else if (c < 0x20) {
            out += sprintf(out, "\\u%04x", c);
        } else {
            *out++ = (char) c;
        }
    }
    *out = '\0';
}

/* sessions and objects ------------------------------------------------------ */

typedef struct {
    uint32_t     crc;
    EVP_MD_CTX  *md5;
    int64_t      bytes;
} sum_t;

typedef enum { S_OPEN, S_DONE, S_CANCELLED } sstate_e;

typedef struct session_s {
    struct session_s  *next;
    char               id[40];
    char              *bucket, *name, *ctype;
    int64_t            declared;        /* X-Upload-Content-Length or -1 */
    int64_t            persisted;
    sstate_e           state;
    sum_t              sum;
    char              *object;          /* the JSON, once done */
} session_t;

static session_t *sessions;
static uint64_t   session_seq;

static struct {
    uint64_t  requests, bytes, objects, chunks, errors, sessions, cancelled;
} stats;

static void
sum_init(sum_t *s)
{
    s->crc = 0;
    s->bytes = 0;
    s->md5 = NULL;
    if (use_md5) {
        s->md5 = EVP_MD_CTX_new();
        EVP_DigestInit_ex(s->md5, EVP_md5(), NULL);
    }
}

static void
sum_copy(sum_t *to, const sum_t *from)
{
    to->crc = from->crc;
    to->bytes = from->bytes;
    if (use_md5) {
        if (!to->md5) to->md5 = EVP_MD_CTX_new();
        EVP_MD_CTX_copy_ex(to->md5, from->md5);
    }
}

static void
sum_free(sum_t *s)
{
    if (s->md5) EVP_MD_CTX_free(s->md5);
    s->md5 = NULL;
}

static void
sum_add(sum_t *s, const unsigned char *p, size_t n)
{
    s->crc = crc32c(s->crc, p, n);
    if (s->md5) EVP_DigestUpdate(s->md5, p, n);
    s->bytes += (int64_t) n;
}

/* base64 crc32c and md5 of s (s stays usable) */
static void
sum_final(const sum_t *s, char *crc, char *md5)
{
    unsigned char raw[16];
    unsigned int  len;
    EVP_MD_CTX   *tmp;

    raw[0] = (unsigned char) (s->crc >> 24);
    raw[1] = (unsigned char) (s->crc >> 16);
    raw[2] = (unsigned char) (s->crc >> 8);
    raw[3] = (unsigned char) s->crc;
    b64(crc, raw, 4);

    md5[0] = '\0';
    if (s->md5) {
        tmp = EVP_MD_CTX_new();
        EVP_MD_CTX_copy_ex(tmp, s->md5);
        EVP_DigestFinal_ex(tmp, raw, &len);
        EVP_MD_CTX_free(tmp);
        b64(md5, raw, 16);
    }
}

static char *
object_json(const char *bucket, const char *name, const char *ctype,
    const sum_t *s)
{
    char crc[16], md5[32], *eb, *en, *ec, *out;
    struct timespec ts;
    unsigned long long gen;

    sum_final(s, crc, md5);
    clock_gettime(CLOCK_REALTIME, &ts);
    gen = (unsigned long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;

    eb = malloc(6 * strlen(bucket) + 1); json_esc(eb, bucket);
    en = malloc(6 * strlen(name) + 1);   json_esc(en, name);
    ec = malloc(6 * strlen(ctype) + 1);  json_esc(ec, ctype);

    if (asprintf(&out,
             "{\"kind\":\"storage#object\",\"id\":\"%s/%s/%llu\","
             "\"name\":\"%s\",\"bucket\":\"%s\",\"generation\":\"%llu\","
             "\"metageneration\":\"1\",\"contentType\":\"%s\","
             "\"size\":\"%lld\",\"crc32c\":\"%s\"%s%s%s,\"etag\":\"CAE=\"}",
             eb, en, gen, en, eb, gen, ec, (long long) s->bytes, crc,
             md5[0] ? ",\"md5Hash\":\"" : "", md5, md5[0] ? "\"" : "") < 0)
    {
        out = NULL;
    }

    free(eb); free(en); free(ec);
    stats.objects++;
    return out;
}

static session_t *
session_find(const char *id)
{
    session_t *s;

    for (s = sessions; s; s = s->next) {
        if (strcmp(s->id, id) == 0) return s;
    }
    return NULL;
}

/* connections --------------------------------------------------------------- */

typedef enum {
    ST_HEAD, ST_BODY, ST_CHUNK_SIZE, ST_CHUNK_DATA, ST_CHUNK_CRLF,
    ST_TRAILER, ST_CLOSING
} cstate_e;

typedef enum {
    K_NONE, K_ERROR, K_INIT, K_CHUNK, K_QUERY, K_DELETE, K_MEDIA, K_STATS,
    K_HEALTH
} kind_e;

typedef struct {
    int          fd;
    SSL         *ssl;           /* NULL: plain HTTP */
    int          hs_done;
    int64_t      due;           /* the answer's time (ms), 0: now */
    int          delayed;       /* in the list of delayed answers */
    cstate_e     st;
    char        *head;          /* HEAD_MAX */
    size_t       head_len;
    char         line[128];     /* a chunk-size or trailer line */
    size_t       line_len;
    int64_t      left;          /* body bytes (or chunk bytes) to come */
    int          keepalive;

    /* the request */
    kind_e       kind;
    int          err_status;
    char         err_msg[256];
    int64_t      body_len;      /* received */
    session_t   *sess;
    int64_t      first, last, total;   /* Content-Range; -1: '*' */
    int          final;
    char        *hash;          /* X-Goog-Hash */
    char        *bucket, *name, *ctype, *host;
    char        *btype;         /* the body's Content-Type */
    int64_t      declared;
    sum_t        sum;           /* of this request's bytes (media), or the
                                 * session's state plus this chunk */
    int          summing;

    /* the answer */
    char        *out;
    size_t       out_len, out_sent;
} conn_t;

static int ep;
static unsigned char *rbuf;

#define DELAYED_MAX 4096
static void *delayed[DELAYED_MAX];
static int ndelayed;

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
delayed_del(conn_t *c)
{
    int i;

    for (i = 0; i < ndelayed; i++) {
        if (delayed[i] == c) {
            delayed[i] = delayed[--ndelayed];
            break;
        }
    }
    c->delayed = 0;
}

static void
conn_close(conn_t *c)
{
    if (c->delayed) {
        delayed_del(c);
    }
    if (c->ssl) {
        SSL_free(c->ssl);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->head);
    free(c->out);
    free(c->hash); free(c->bucket); free(c->name); free(c->ctype);
    free(c->host); free(c->btype);
    sum_free(&c->sum);
    free(c);
}

static void
req_reset(conn_t *c)
{
    free(c->hash); free(c->bucket); free(c->name); free(c->ctype);
    free(c->host); free(c->btype);
    c->hash = c->bucket = c->name = c->ctype = c->host = c->btype = NULL;
    c->kind = K_NONE;
    c->err_status = 0;
    c->body_len = 0;
    c->sess = NULL;
    c->first = c->last = c->total = -1;
    c->final = 0;
    c->declared = -1;
    c->summing = 0;
    c->head_len = 0;
    c->line_len = 0;
    c->st = ST_HEAD;
}

static void
out_add(conn_t *c, const char *p, size_t n)
{
    c->out = realloc(c->out, c->out_len + n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static int
conn_flush(conn_t *c)
{
    ssize_t n;
    int e;
    struct epoll_event ev;

    if (c->due && now_ms() < c->due) {
        /* a round trip's latency: sent from the main loop when due */
        if (!c->delayed && ndelayed < DELAYED_MAX) {
            delayed[ndelayed++] = c;
            c->delayed = 1;
        }
        return 0;
    }

    c->due = 0;

    while (c->out_sent < c->out_len) {
        if (c->ssl) {
            ERR_clear_error();
            n = SSL_write(c->ssl, c->out + c->out_sent,
                          (int) (c->out_len - c->out_sent));
            if (n <= 0) {
                e = SSL_get_error(c->ssl, (int) n);
                errno = (e == SSL_ERROR_WANT_WRITE
                         || e == SSL_ERROR_WANT_READ) ? EAGAIN : EPIPE;
                n = -1;
            }
        } else {
            n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent,
                     MSG_NOSIGNAL);
        }
        if (n < 0) {
            if (errno == EAGAIN) {
                ev.events = EPOLLIN | EPOLLOUT;
                ev.data.ptr = c;
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                return 0;
            }
            return -1;
        }
        c->out_sent += (size_t) n;
    }

    free(c->out);
    c->out = NULL;
    c->out_len = c->out_sent = 0;

    ev.events = EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);

    if (c->st == ST_CLOSING) {
        return -1;
    }
    return 0;
}

static const char *
reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 308: return "Resume Incomplete";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    default:  return "Unknown";
    }
}

static void
respond(conn_t *c, int status, const char *extra, const char *body)
{
    char h[2048];
    size_t bl = body ? strlen(body) : 0;
    int n;

    n = snprintf(h, sizeof(h),
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Length: %zu\r\n"
                 "%s%s"
                 "%s"
                 "\r\n",
                 status, reason(status), bl,
                 body ? "Content-Type: application/json; charset=UTF-8\r\n"
                      : "",
                 c->keepalive ? "" : "Connection: close\r\n",
                 extra ? extra : "");
    if (delay_ms && c->due == 0) {
        c->due = now_ms() + delay_ms;
    }

    out_add(c, h, (size_t) n);
    if (bl) out_add(c, body, bl);

    if (verbose) {
        fprintf(stderr, "gcs_sink: -> %d %s\n", status,
                status >= 400 && body ? body : "");
    }
}

static void
respond_error(conn_t *c, int status, const char *msg)
{
    char body[4000], esc[6 * 300 + 1];

    json_esc(esc, msg);
    snprintf(body, sizeof(body),
             "{\"error\":{\"code\":%d,\"message\":\"%s\","
             "\"errors\":[{\"message\":\"%s\"}]}}", status, esc, esc);
    stats.errors++;
    respond(c, status, NULL, body);
}

static void
set_error(conn_t *c, int status, const char *fmt, ...)
{
    va_list ap;

    if (c->kind == K_ERROR) return;
    c->kind = K_ERROR;
    c->err_status = status;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof(c->err_msg), fmt, ap);
    va_end(ap);
}

static void
range_hdr(char *buf, size_t size, int64_t persisted)
{
    if (persisted > 0) {
        snprintf(buf, size, "Range: bytes=0-%lld\r\n",
                 (long long) persisted - 1);
    } else {
        buf[0] = '\0';
    }
}

/* the request, all of its body in: answer */
static void
finish(conn_t *c)
{
    session_t *s;
    char hdr[256], crc[16], md5[32], *obj, *p, *e, *v;
    size_t n;

    stats.requests++;

    switch (c->kind) {

    case K_ERROR:
        respond_error(c, c->err_status, c->err_msg);
        break;

    case K_HEALTH:
        respond(c, 200, NULL, "{}");
        break;

    case K_STATS: {
        char body[512];
        snprintf(body, sizeof(body),
                 "{\"requests\":%llu,\"bytes\":%llu,\"objects\":%llu,"
                 "\"chunks\":%llu,\"errors\":%llu,\"sessions\":%llu,"
                 "\"cancelled\":%llu,\"md5\":%s}",
                 (unsigned long long) stats.requests,
                 (unsigned long long) stats.bytes,
                 (unsigned long long) stats.objects,
                 (unsigned long long) stats.chunks,
                 (unsigned long long) stats.errors,
                 (unsigned long long) stats.sessions,
                 (unsigned long long) stats.cancelled,
                 use_md5 ? "true" : "false");
        respond(c, 200, NULL, body);
        break;
    }

    case K_INIT:
        s = calloc(1, sizeof(*s));
        snprintf(s->id, sizeof(s->id), "%llx%08lx",
                 (unsigned long long) ++session_seq, random());
        s->bucket = c->bucket; c->bucket = NULL;
        s->name = c->name;     c->name = NULL;
        s->ctype = c->ctype ? c->ctype : strdup("application/octet-stream");
        c->ctype = NULL;
        s->declared = c->declared;
        s->state = S_OPEN;
        sum_init(&s->sum);
        s->next = sessions;
        sessions = s;
        stats.sessions++;
        snprintf(hdr, sizeof(hdr),
                 "Location: %s://%s/upload/storage/v1/b/%s/o"
                 "?uploadType=resumable&upload_id=%s\r\n"
                 "X-GUploader-UploadID: %s\r\n", ssl_ctx ? "https" : "http",
                 c->host ? c->host : "127.0.0.1", s->bucket, s->id, s->id);
        respond(c, 200, hdr, NULL);
        break;

    case K_QUERY:
        s = c->sess;
        if (s->state == S_DONE) {
            respond(c, 200, NULL, s->object);
            break;
        }
        range_hdr(hdr, sizeof(hdr), s->persisted);
        respond(c, 308, hdr, NULL);
        break;

    case K_DELETE:
        s = c->sess;
        s->state = S_CANCELLED;
        s->persisted = 0;
        stats.cancelled++;
        respond(c, 499, NULL, NULL);
        break;

    case K_MEDIA:
        obj = object_json(c->bucket, c->name,
                          c->btype ? c->btype : "application/octet-stream",
                          &c->sum);
        respond(c, 200, NULL, obj);
        free(obj);
        break;

    case K_CHUNK:
        s = c->sess;
        stats.chunks++;

        if (s->state != S_OPEN || s->persisted != c->first) {
            respond_error(c, 400, "the session moved during the chunk");
            break;
        }

        if (!c->final) {
            sum_copy(&s->sum, &c->sum);
            s->persisted = s->sum.bytes;
            range_hdr(hdr, sizeof(hdr), s->persisted);
            respond(c, 308, hdr, NULL);
            break;
        }

        /* the final chunk: the hashes, before anything is kept */
        sum_final(&c->sum, crc, md5);

        if (c->hash) {
            for (p = c->hash; p && *p; p = e) {
                while (*p == ' ' || *p == ',') p++;
                e = strchr(p, ',');
                n = e ? (size_t) (e - p) : strlen(p);
                v = memchr(p, '=', n);
                if (v) {
                    v++;
                    if (strncmp(p, "crc32c=", 7) == 0
                        && (strlen(crc) != n - 7 || strncmp(v, crc, n - 7)))
                    {
                        snprintf(hdr, sizeof(hdr),
                                 "Provided CRC32C \"%.*s\" doesn't match "
                                 "calculated CRC32C \"%s\".", (int) (n - 7),
                                 v, crc);
                        respond_error(c, 400, hdr);
                        goto done;
                    }
                    if (strncmp(p, "md5=", 4) == 0 && md5[0]
                        && (strlen(md5) != n - 4 || strncmp(v, md5, n - 4)))
                    {
                        snprintf(hdr, sizeof(hdr),
                                 "Provided MD5 hash \"%.*s\" doesn't match "
                                 "calculated MD5 hash \"%s\".", (int) (n - 4),
                                 v, md5);
                        respond_error(c, 400, hdr);
                        goto done;
                    }
                }
            }
        }

        sum_copy(&s->sum, &c->sum);
        s->persisted = s->sum.bytes;
        s->state = S_DONE;
        s->object = object_json(s->bucket, s->name, s->ctype, &s->sum);
        sum_free(&s->sum);
        respond(c, 200, NULL, s->object);
        break;

    default:
        respond_error(c, 400, "no request");
        break;
    }

done:

    if (verbose && c->kind != K_ERROR) {
        fprintf(stderr, "gcs_sink:    kind %d, %lld body bytes\n", c->kind,
                (long long) c->body_len);
    }

    req_reset(c);

    if (!c->keepalive) {
        c->st = ST_CLOSING;
    }
}

/* Content-Range: "bytes X-Y/T", "bytes X-Y/STAR", "bytes STAR/T" or
 * "bytes STAR/STAR" (STAR: "*") */
static int
parse_range(conn_t *c, const char *v)
{
    char *end;

    if (strncmp(v, "bytes ", 6) != 0) return -1;
    v += 6;

    if (*v == '*') {
        v++;
    } else {
        c->first = strtoll(v, &end, 10);
        if (end == v || *end != '-') return -1;
        v = end + 1;
        c->last = strtoll(v, &end, 10);
        if (end == v) return -1;
        v = end;
        if (c->last < c->first) return -1;
    }

    if (*v++ != '/') return -1;

    if (*v == '*' && v[1] == '\0') {
        c->total = -1;
    } else {
        c->total = strtoll(v, &end, 10);
        if (end == v || *end) return -1;
    }

    return 0;
}

/* the request line and the headers are in c->head */
static void
parse_head(conn_t *c)
{
    char *p, *eol, *method, *target, *version, *path, *query, *v, *colon;
    char *range = NULL, *upload_type = NULL, *id = NULL;
    int64_t clen = -1;
    int chunked = 0, expect = 0, http10;
    size_t n;
    session_t *s;

    c->head[c->head_len] = '\0';
    p = c->head;

    /* the request line */
    eol = strstr(p, "\r\n");
    *eol = '\0';
    method = p;
    target = strchr(method, ' ');
    if (!target) { set_error(c, 400, "bad request line"); goto body; }
    *target++ = '\0';
    version = strchr(target, ' ');
    if (!version) { set_error(c, 400, "bad request line"); goto body; }
    *version++ = '\0';
    http10 = strcmp(version, "HTTP/1.0") == 0;
    c->keepalive = !http10;
    p = eol + 2;

    if (verbose) {
        fprintf(stderr, "gcs_sink: %s %s\n", method, target);
    }

    /* the headers */
    while (*p) {
        eol = strstr(p, "\r\n");
        if (!eol) break;
        *eol = '\0';
        colon = strchr(p, ':');
        if (colon) {
            *colon = '\0';
            for (v = colon + 1; *v == ' ' || *v == '\t'; v++) { }
            n = strlen(v);
            while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) v[--n] = '\0';

            if (strcasecmp(p, "content-length") == 0) {
                clen = strtoll(v, NULL, 10);
            } else if (strcasecmp(p, "transfer-encoding") == 0) {
                chunked = strcasestr(v, "chunked") != NULL;
            } else if (strcasecmp(p, "expect") == 0) {
                expect = strcasecmp(v, "100-continue") == 0;
            } else if (strcasecmp(p, "connection") == 0) {
                if (strcasestr(v, "close")) c->keepalive = 0;
                if (strcasestr(v, "keep-alive")) c->keepalive = 1;
            } else if (strcasecmp(p, "content-range") == 0) {
                range = v;
            } else if (strcasecmp(p, "x-goog-hash") == 0) {
                free(c->hash); c->hash = strdup(v);
            } else if (strcasecmp(p, "host") == 0) {
                free(c->host); c->host = strdup(v);
            } else if (strcasecmp(p, "x-upload-content-type") == 0) {
                free(c->ctype); c->ctype = strdup(v);
            } else if (strcasecmp(p, "content-type") == 0) {
                free(c->btype); c->btype = strdup(v);
            } else if (strcasecmp(p, "x-upload-content-length") == 0) {
                c->declared = strtoll(v, NULL, 10);
            }
        }
        p = eol + 2;
    }

    path = target;
    query = strchr(target, '?');
    if (query) *query++ = '\0';
    else query = "";

    if (strcmp(method, "GET") == 0) {
        if (strcmp(path, "/stats") == 0) c->kind = K_STATS;
        else if (strcmp(path, "/") == 0) c->kind = K_HEALTH;
        else set_error(c, 404, "Not Found");
        goto body;
    }

    /* /upload/storage/v1/b/BUCKET/o */
    if (strncmp(path, "/upload/storage/v1/b/", 21) != 0
        || (n = strlen(path)) < 24 || strcmp(path + n - 2, "/o") != 0)
    {
        set_error(c, 404, "Not Found: %s %s", method, path);
        goto body;
    }

    id = query_get(query, "upload_id");
    upload_type = query_get(query, "uploadType");

    if (id) {
        s = session_find(id);
        if (!s) {
            set_error(c, 404, "No such upload session");
            goto body;
        }
        c->sess = s;

        if (strcmp(method, "DELETE") == 0) {
            if (s->state == S_CANCELLED) {
                set_error(c, 404, "No such upload session");
            } else {
                c->kind = K_DELETE;
            }
            goto body;
        }

        if (strcmp(method, "PUT") != 0) {
            set_error(c, 405, "method not allowed");
            goto body;
        }

        if (!range || parse_range(c, range) != 0) {
            set_error(c, 400, "bad Content-Range \"%s\"", range ? range : "");
            goto body;
        }

        if (s->state == S_CANCELLED) {
            set_error(c, 410, "upload session was cancelled");
            goto body;
        }

        if (s->state == S_DONE) {
            if (c->first == -1 && clen <= 0 && !chunked) {
                /* a status query or the empty final again: the object */
                c->kind = K_QUERY;
            } else {
                set_error(c, 400, "upload is already complete");
            }
            goto body;
        }

        if (c->first == -1 && c->total == -1) {
            if (clen > 0 || chunked) {
                set_error(c, 400, "a status query has a body");
            } else {
                c->kind = K_QUERY;
            }
            goto body;
        }

        if (c->first == -1) {
            /* bytes * /TOTAL: the empty final chunk */
            if (clen > 0 || chunked) {
                set_error(c, 400, "a chunk without a range has a body");
                goto body;
            }
            c->first = s->persisted;
            c->last = s->persisted - 1;
        }

        if (chunked || clen != c->last - c->first + 1) {
            set_error(c, 400, "Content-Range %s: %lld bytes, body %lld",
                      range, (long long) (c->last - c->first + 1),
                      (long long) clen);
            goto body;
        }
        if (c->first != s->persisted) {
            set_error(c, 400, "Content-Range %s does not start at %lld, the "
                      "stored bytes", range, (long long) s->persisted);
            goto body;
        }
        if (c->total >= 0 && c->last >= c->total) {
            set_error(c, 400, "Content-Range %s: beyond the total", range);
            goto body;
        }
        if (c->total >= 0 && s->declared >= 0 && c->total != s->declared) {
            set_error(c, 400, "the total %lld differs from the declared %lld",
                      (long long) c->total, (long long) s->declared);
            goto body;
        }

        c->final = c->total >= 0 && c->last + 1 == c->total;

        if (c->total >= 0 && !c->final) {
            set_error(c, 400, "the total %lld is not the chunk's end",
                      (long long) c->total);
            goto body;
        }
        if (!c->final && (c->last - c->first + 1) % QUANTUM) {
            set_error(c, 400, "non-final chunk of %lld bytes is not a "
                      "multiple of 256 KiB",
                      (long long) (c->last - c->first + 1));
            goto body;
        }

        c->kind = K_CHUNK;
        sum_copy(&c->sum, &s->sum);
        c->summing = 1;
        goto body;
    }

    c->name = query_get(query, "name");
    {
        char *b = strndup(path + 21, n - 21 - 2);
        c->bucket = malloc(strlen(b) + 1);
        pct_decode(c->bucket, b, strlen(b));
        free(b);
    }

    if (!c->name || !c->name[0] || strlen(c->name) > NAME_MAX_) {
        set_error(c, 400, "Invalid object name");
        goto body;
    }

    if (upload_type && strcmp(upload_type, "resumable") == 0
        && strcmp(method, "POST") == 0)
    {
        c->kind = K_INIT;
        goto body;
    }

    if (upload_type && strcmp(upload_type, "media") == 0
        && (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0))
    {
        c->kind = K_MEDIA;
        if (use_md5) {
            sum_free(&c->sum);
        }
        sum_init(&c->sum);
        c->summing = 1;
        goto body;
    }

    set_error(c, 400, "unsupported upload (method %s, uploadType %s)",
              method, upload_type ? upload_type : "");

body:

    free(id);
    free(upload_type);

    if (expect && c->kind != K_ERROR && (clen > 0 || chunked)) {
        out_add(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }

    if (expect && c->kind == K_ERROR) {
        /* not reading the body that was not sent: answer and close */
        c->keepalive = 0;
        finish(c);
        return;
    }

    if (chunked) {
        c->st = ST_CHUNK_SIZE;
        c->line_len = 0;
    } else if (clen > 0) {
        c->st = ST_BODY;
        c->left = clen;
    } else {
        finish(c);
    }
}

static void
body_data(conn_t *c, const unsigned char *p, size_t n)
{
    c->body_len += (int64_t) n;
    stats.bytes += n;
    if (c->summing) {
        sum_add(&c->sum, p, n);
    }
}

/* bytes from the socket; returns -1 to close */
static int
consume(conn_t *c, unsigned char *p, size_t n)
{
    size_t k, from;
    char *e;

    while (n) {
        switch (c->st) {

        case ST_HEAD:
            k = HEAD_MAX - 1 - c->head_len;
            if (k == 0) {
                c->keepalive = 0;
                c->kind = K_ERROR;
                c->err_status = 431;
                snprintf(c->err_msg, sizeof(c->err_msg), "header too large");
                finish(c);
                return 0;
            }
            if (k > n) k = n;
            from = c->head_len > 3 ? c->head_len - 3 : 0;
            memcpy(c->head + c->head_len, p, k);
            c->head_len += k;
            c->head[c->head_len] = '\0';
            e = memmem(c->head + from, c->head_len - from, "\r\n\r\n", 4);
            if (!e) {
                p += k; n -= k;
                break;
            }
            /* what follows the head goes back to the input */
            k -= c->head_len - (size_t) (e + 4 - c->head);
            c->head_len = (size_t) (e + 4 - c->head);
            p += k; n -= k;
            if (c->head_len == 4 && c->head[0] == '\r') {
                c->head_len = 0;           /* stray CRLF */
                break;
            }
            parse_head(c);
            break;

        case ST_BODY:
            k = (size_t) c->left < n ? (size_t) c->left : n;
            body_data(c, p, k);
            p += k; n -= k;
            c->left -= (int64_t) k;
            if (c->left == 0) finish(c);
            break;

        case ST_CHUNK_SIZE:
        case ST_CHUNK_CRLF:
        case ST_TRAILER:
            while (n && *p != '\n') {
                if (c->line_len < sizeof(c->line) - 1) {
                    c->line[c->line_len++] = (char) *p;
                }
                p++; n--;
            }
            if (!n) break;
            p++; n--;
            c->line[c->line_len] = '\0';
            if (c->line_len && c->line[c->line_len - 1] == '\r') {
                c->line[--c->line_len] = '\0';
            }

            if (c->st == ST_CHUNK_CRLF) {
                c->st = ST_CHUNK_SIZE;
            } else if (c->st == ST_CHUNK_SIZE) {
                c->left = strtoll(c->line, NULL, 16);
                c->st = c->left ? ST_CHUNK_DATA : ST_TRAILER;
            } else if (c->line_len == 0) {
                finish(c);
            }
            c->line_len = 0;
            break;

        case ST_CHUNK_DATA:
            k = (size_t) c->left < n ? (size_t) c->left : n;
            body_data(c, p, k);
            p += k; n -= k;
            c->left -= (int64_t) k;
            if (c->left == 0) c->st = ST_CHUNK_CRLF;
            break;

        case ST_CLOSING:
            return 0;
        }
    }

    return 0;
}

int
main(int argc, char **argv)
{
    int ls, fd, one = 1, i, nev, port, timeout, e;
    int64_t now, next;
    char *cert = NULL, *key = NULL;
    struct sockaddr_in sa;
    struct epoll_event ev, evs[64];
    conn_t *c;
    ssize_t n;

    while (argc > 1 && argv[1][0] == '-') {
        if (strcmp(argv[1], "-M") == 0) use_md5 = 0;
        else if (strcmp(argv[1], "-v") == 0) verbose = 1;
        else if (strcmp(argv[1], "-d") == 0 && argc > 2) {
            delay_ms = atol(argv[2]);
            argc--; argv++;
        } else if (strcmp(argv[1], "-c") == 0 && argc > 2) {
            cert = argv[2];
            argc--; argv++;
        } else if (strcmp(argv[1], "-k") == 0 && argc > 2) {
            key = argv[2];
            argc--; argv++;
        } else break;
        argc--; argv++;
    }

    if (argc != 2 || (cert == NULL) != (key == NULL)) {
        fprintf(stderr, "usage: gcs_sink [-M] [-v] [-d MS] "
                        "[-c CERT -k KEY] PORT\n");
        return 2;
    }

    if (cert) {
        ssl_ctx = SSL_CTX_new(TLS_server_method());
        if (ssl_ctx == NULL
            || SSL_CTX_use_certificate_chain_file(ssl_ctx, cert) != 1
            || SSL_CTX_use_PrivateKey_file(ssl_ctx, key, SSL_FILETYPE_PEM)
               != 1)
        {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                                  | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_TICKET);
    }

    port = atoi(argv[1]);
    crc_init();
    srandom((unsigned) time(NULL) ^ (unsigned) getpid());
    signal(SIGPIPE, SIG_IGN);
    rbuf = malloc(READ_BUF);

    ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *) &sa, sizeof(sa)) < 0
        || listen(ls, 1024) < 0)
    {
        perror("gcs_sink: listen");
        return 1;
    }

    ep = epoll_create1(0);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);

    fprintf(stderr, "gcs_sink: listening on 127.0.0.1:%d, crc32c %s, md5 %s, "
            "%s, answers after %ld ms\n", port, crc_hw ? "sse4.2" : "table",
            use_md5 ? "on" : "off", ssl_ctx ? "https" : "http", delay_ms);

    for ( ;; ) {
        /* the delayed answers that are due */
        timeout = -1;
        now = now_ms();
        next = 0;

        for (i = 0; i < ndelayed; ) {
            c = delayed[i];
            if (c->due <= now) {
                delayed_del(c);
                if (conn_flush(c) < 0
                    || (!c->out_len && c->st == ST_CLOSING))
                {
                    conn_close(c);
                }
                i = 0;
                continue;
            }
            if (next == 0 || c->due < next) next = c->due;
            i++;
        }

        if (next) {
            timeout = (int) (next - now);
        }

        nev = epoll_wait(ep, evs, 64, timeout);
        if (nev < 0) {
            if (errno == EINTR) continue;
            perror("gcs_sink: epoll_wait");
            return 1;
        }

        for (i = 0; i < nev; i++) {
            c = evs[i].data.ptr;

            if (c == NULL) {
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
                               sizeof(one));
                    c = calloc(1, sizeof(*c));
                    c->fd = fd;
                    if (ssl_ctx) {
                        c->ssl = SSL_new(ssl_ctx);
                        SSL_set_fd(c->ssl, fd);
                        SSL_set_accept_state(c->ssl);
                    }
                    c->head = malloc(HEAD_MAX);
                    c->keepalive = 1;
                    req_reset(c);
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }

            if (c->ssl && !c->hs_done) {
                ERR_clear_error();
                n = SSL_do_handshake(c->ssl);
                if (n != 1) {
                    e = SSL_get_error(c->ssl, (int) n);
                    if (e != SSL_ERROR_WANT_READ
                        && e != SSL_ERROR_WANT_WRITE)
                    {
                        conn_close(c);
                    }
                    continue;
                }
                c->hs_done = 1;
            }

            if ((evs[i].events & EPOLLOUT) && !c->delayed) {
                if (conn_flush(c) < 0) {
                    conn_close(c);
                    continue;
                }
                if (c->out_len) continue;
            }

            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                continue;
            }

            if (c->ssl) {
                /* whole records: what OpenSSL holds, epoll does not see */
                ERR_clear_error();
                n = SSL_read(c->ssl, rbuf, READ_BUF);
                if (n <= 0) {
                    e = SSL_get_error(c->ssl, (int) n);
                    if (e == SSL_ERROR_WANT_READ
                        || e == SSL_ERROR_WANT_WRITE)
                    {
                        errno = EAGAIN;
                        n = -1;
                    } else {
                        n = 0;
                    }
                } else {
                    while (n < READ_BUF && SSL_pending(c->ssl) > 0) {
                        int k = SSL_read(c->ssl, rbuf + n,
                                         READ_BUF - (int) n);
                        if (k <= 0) break;
                        n += k;
                    }
                }
            } else {
                n = recv(c->fd, rbuf, READ_BUF, 0);
            }

            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                /* an unfinished request is dropped: nothing of it kept */
                conn_close(c);
                continue;
            }
            if (n < 0) continue;

            consume(c, rbuf, (size_t) n);

            if (c->out_len && conn_flush(c) < 0) {
                conn_close(c);
                continue;
            }
            if (!c->out_len && c->st == ST_CLOSING) {
                conn_close(c);
            }
        }
    }

    return 0;
}
