
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * What the fuzz targets share: nginx set up as far as a parser needs it
 * (time, page size, a silent log, a pool per input).
 */


#ifndef _FUZZ_HARNESS_H_INCLUDED_
#define _FUZZ_HARNESS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <stdlib.h>


/* a failed invariant: a crash libFuzzer reports, with the input saved */
#define fuzz_assert(cond)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz: %s:%d: assertion failed: %s\n",           \
                    __FILE__, __LINE__, #cond);                              \
            abort();                                                         \
        }                                                                    \
    } while (0)


extern ngx_log_t  *fuzz_log;

void fuzz_ngx_init(void);
ngx_pool_t *fuzz_pool(void);
int fuzz_ref_utf8(const u_char *p, size_t len, int (*allowed)(uint32_t c));


#endif /* _FUZZ_HARNESS_H_INCLUDED_ */
