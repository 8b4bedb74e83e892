
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * What is read from files at configuration time: a Google service
 * account's JSON key (ngx_cloudauth_google_key_load(), with the key's
 * token_uri checked by ngx_cloudauth_check_url()) and a secret file
 * (ngx_cloudauth_secret()), both through ngx_cloudauth_read_file().
 *
 * Input: a byte choosing which (bit 0) and whether token_url= is given
 * (bit 1), then the file's bytes, written to a file of mode 600.
 */


#include "harness.h"
#include "ngx_cloudauth.h"


static char   fuzz_path[256];
static int    fuzz_fd = -1;


static void
fuzz_file_init(void)
{
    const char  *tmp;

    if (fuzz_fd != -1) {
        return;
    }

    tmp = getenv("TMPDIR");
    snprintf(fuzz_path, sizeof(fuzz_path), "%s/cloudauth-fuzz-key-XXXXXX",
             tmp ? tmp : "/tmp");

    fuzz_fd = mkstemp(fuzz_path);
    if (fuzz_fd == -1 || fchmod(fuzz_fd, 0600) == -1) {
        perror("fuzz: mkstemp");
        abort();
    }
}


static void
fuzz_file_cleanup(void)
{
    if (fuzz_fd != -1) {
        (void) unlink(fuzz_path);
    }
}


static void
fuzz_param(ngx_pool_t *pool, ngx_array_t *params, char *key, char *value)
{
    ngx_keyval_t  *kv;

    kv = ngx_array_push(params);
    if (kv == NULL) {
        abort();
    }

    kv->key.len = ngx_strlen(key);
    kv->key.data = (u_char *) key;

    /* a copy, NUL-terminated as configuration values are */
    kv->value.len = ngx_strlen(value);
    kv->value.data = ngx_pnalloc(pool, kv->value.len + 1);
    if (kv->value.data == NULL) {
        abort();
    }

    ngx_memcpy(kv->value.data, value, kv->value.len + 1);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_conf_t                   cf;
    ngx_cycle_t                  cycle;
    ngx_pool_t                  *pool;
    ngx_str_t                    secret;
    ngx_array_t                  params;
    ngx_cloudauth_cred_t         cred;
    ngx_cloudauth_google_key_t   gk;
    char                        *rv;
    ngx_int_t                    rc;
    ssize_t                      n;

    fuzz_ngx_init();
    fuzz_file_init();

    if (size < 1) {
        return 0;
    }

    if (ftruncate(fuzz_fd, 0) == -1) {
        abort();
    }

    n = pwrite(fuzz_fd, data + 1, size - 1, 0);
    if (n == -1 || (size_t) n != size - 1) {
        abort();
    }

    pool = fuzz_pool();

    ngx_memzero(&cycle, sizeof(ngx_cycle_t));
    cycle.pool = pool;
    cycle.log = fuzz_log;
    ngx_str_set(&cycle.prefix, "/");
    ngx_str_set(&cycle.conf_prefix, "/");

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.pool = pool;
    cf.temp_pool = pool;
    cf.cycle = &cycle;
    cf.log = fuzz_log;

    if (ngx_array_init(&params, pool, 4, sizeof(ngx_keyval_t)) != NGX_OK) {
        abort();
    }

    ngx_memzero(&cred, sizeof(ngx_cloudauth_cred_t));
    ngx_str_set(&cred.name, "fuzz");
    cred.params = &params;
    cred.used = ngx_pcalloc(pool, 4 * sizeof(ngx_uint_t));
    if (cred.used == NULL) {
        abort();
    }

    if (data[0] & 1) {
        fuzz_param(pool, &params, "client_secret_file", fuzz_path);

        ngx_str_null(&secret);
        rc = ngx_cloudauth_secret(&cf, &cred, "client_secret", &secret);

        fuzz_assert(rc == NGX_OK || rc == NGX_ERROR);

        if (rc == NGX_OK) {
            fuzz_assert(secret.len > 0 && secret.len <= size - 1);
            fuzz_assert(ngx_memcmp(secret.data, data + 1, secret.len) == 0);
        }

    } else {
        fuzz_param(pool, &params, "key_file", fuzz_path);

        if (data[0] & 2) {
            fuzz_param(pool, &params, "token_url",
                       "https://oauth2.googleapis.com/token");
        }

        ngx_memzero(&gk, sizeof(ngx_cloudauth_google_key_t));
        rv = ngx_cloudauth_google_key_load(&cf, &cred, &gk);

        fuzz_assert(rv == NGX_CONF_OK || rv == NGX_CONF_ERROR);

        if (rv == NGX_CONF_OK) {
            fuzz_assert(gk.key != NULL);
            fuzz_assert(gk.email.len > 0 && gk.token_url.len > 0);
        }
    }

    ngx_destroy_pool(pool);

    return 0;
}


int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_ngx_init();
    fuzz_file_init();

    if (atexit(fuzz_file_cleanup) != 0) {
        abort();
    }

    return 0;
}
