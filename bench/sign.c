
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * RS256 assertions per second with the module's own JWT code
 * (ngx_cloudauth_jwt.c), on one core.  nginx's pool and base64url are
 * replaced by the few lines below, so this links without nginx.
 *
 *   sign KEY.pem SECONDS
 */


#include "../ngx_cloudauth_module/ngx_cloudauth_jwt.c"

#include <openssl/pem.h>
#include <stdio.h>
#include <time.h>


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    static u_char  buf[16384];

    return size <= sizeof(buf) ? buf : NULL;
}


void
ngx_encode_base64url(ngx_str_t *dst, ngx_str_t *src)
{
    size_t           i, n;
    u_char          *d, *s;
    static u_char    t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                           "0123456789-_";

    s = src->data;
    d = dst->data;
    n = src->len;

    for (i = 0; i + 2 < n; i += 3) {
        *d++ = t[s[i] >> 2];
        *d++ = t[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *d++ = t[((s[i + 1] & 0x0f) << 2) | (s[i + 2] >> 6)];
        *d++ = t[s[i + 2] & 0x3f];
    }

    if (n - i == 1) {
        *d++ = t[s[i] >> 2];
        *d++ = t[(s[i] & 3) << 4];

    } else if (n - i == 2) {
        *d++ = t[s[i] >> 2];
        *d++ = t[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *d++ = t[(s[i + 1] & 0x0f) << 2];
    }

    dst->len = d - dst->data;
}


int
main(int argc, char **argv)
{
    FILE             *f;
    double            secs, elapsed;
    EVP_PKEY         *key;
    ngx_str_t         jwt;
    unsigned long     n;
    struct timespec   t0, t1;

    static const char  *header = "{\"alg\":\"RS256\",\"typ\":\"JWT\","
                                 "\"kid\":\"0123456789abcdef\"}";
    static const char  *claims = "{\"iss\":\"gateway@project.iam."
        "gserviceaccount.com\",\"scope\":\"https://www.googleapis.com/auth/"
        "devstorage.read_write https://www.googleapis.com/auth/drive\","
        "\"aud\":\"https://oauth2.googleapis.com/token\",\"iat\":1795363200,"
        "\"exp\":1795366800,\"sub\":\"someone@example.com\"}";

    if (argc != 3 || (f = fopen(argv[1], "r")) == NULL) {
        fprintf(stderr, "usage: sign KEY.pem SECONDS\n");
        return 1;
    }

    key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    secs = atof(argv[2]);

    if (key == NULL) {
        fprintf(stderr, "cannot load the key\n");
        return 1;
    }

    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (n = 0; /* void */; n++) {
        if (ngx_cloudauth_jwt_rs256(NULL, key, header, claims, &jwt)
            != NGX_OK)
        {
            fprintf(stderr, "signing failed\n");
            return 1;
        }

        if ((n & 63) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            elapsed = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;

            if (elapsed >= secs) {
                break;
            }
        }
    }

    printf("%.1f\n", n / elapsed);

    EVP_PKEY_free(key);

    return 0;
}
