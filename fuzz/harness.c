
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
