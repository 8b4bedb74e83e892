
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * nginx's core without nginx.c (which has main()): the module list and
 * the core module it defines, and the set-up main() would do.
 */


#include "harness.h"


ngx_module_t  *ngx_modules[] = { NULL };
char          *ngx_module_names[] = { NULL };
ngx_module_t   ngx_core_module;

ngx_log_t     *fuzz_log;

static ngx_log_t        fuzz_log_silent;
static ngx_open_file_t  fuzz_log_file;


void
fuzz_ngx_init(void)
{
    static ngx_uint_t  done;

    if (done) {
        return;
    }

    done = 1;

    ngx_pagesize = getpagesize();
    ngx_cacheline_size = NGX_CPU_CACHE_LINE;

    for (ngx_pagesize_shift = 0;
         (ngx_uint_t) (1 << ngx_pagesize_shift) < ngx_pagesize;
         ngx_pagesize_shift++)
    {
        /* void */
    }

    ngx_time_init();

    /* errors are what the parsers are for: not written anywhere */

    fuzz_log_file.fd = ngx_stderr;
    fuzz_log_silent.file = &fuzz_log_file;
    fuzz_log_silent.log_level = getenv("FUZZ_LOG") ? NGX_LOG_DEBUG : 0;
    fuzz_log = &fuzz_log_silent;
}


ngx_pool_t *
fuzz_pool(void)
{
    ngx_pool_t  *pool;

    pool = ngx_create_pool(1024, fuzz_log);
    if (pool == NULL) {
        abort();
    }

    return pool;
}


/* what nginx.c has for the master and worker processes: never called */

char **
ngx_set_environment(ngx_cycle_t *cycle, ngx_uint_t *last)
{
    abort();
}


ngx_pid_t
ngx_exec_new_binary(ngx_cycle_t *cycle, char *const *argv)
{
    abort();
}


ngx_cpuset_t *
ngx_get_cpu_affinity(ngx_uint_t n)
{
    abort();
}


/*
 * Well-formed UTF-8 (RFC 3629), the reference the targets check the
 * module's validators against: decode any bit pattern naively, encode the
 * code point back, and require the same bytes (no overlong form), no
 * surrogate, nothing past U+10FFFF, and what allowed() says of each.
 */

static int
fuzz_ref_encode(uint32_t c, u_char *out)
{
    if (c < 0x80) {
        out[0] = (u_char) c;
        return 1;
    }

    if (c < 0x800) {
        out[0] = (u_char) (0xc0 | (c >> 6));
        out[1] = (u_char) (0x80 | (c & 0x3f));
        return 2;
    }

    if (c < 0x10000) {
        out[0] = (u_char) (0xe0 | (c >> 12));
        out[1] = (u_char) (0x80 | ((c >> 6) & 0x3f));
        out[2] = (u_char) (0x80 | (c & 0x3f));
        return 3;
    }

    out[0] = (u_char) (0xf0 | (c >> 18));
    out[1] = (u_char) (0x80 | ((c >> 12) & 0x3f));
    out[2] = (u_char) (0x80 | ((c >> 6) & 0x3f));
    out[3] = (u_char) (0x80 | (c & 0x3f));
    return 4;
}


int
fuzz_ref_utf8(const u_char *p, size_t len, int (*allowed)(uint32_t c))
{
    size_t    i, n, k;
    uint32_t  c;
    u_char    enc[4];

    for (i = 0; i < len; i += n) {
        if (p[i] < 0x80) {
            n = 1;
        } else if ((p[i] & 0xe0) == 0xc0) {
            n = 2;
        } else if ((p[i] & 0xf0) == 0xe0) {
            n = 3;
        } else if ((p[i] & 0xf8) == 0xf0) {
            n = 4;
        } else {
            return 0;
        }

        if (len - i < n) {
            return 0;
        }

        c = (n == 1) ? p[i] : (uint32_t) (p[i] & (0x7f >> n));

        for (k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            c = (c << 6) | (p[i + k] & 0x3f);
        }

        if (c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)
            || fuzz_ref_encode(c, enc) != (int) n
            || memcmp(enc, p + i, n) != 0
            || (allowed && !allowed(c)))
        {
            return 0;
        }
    }

    return 1;
}
