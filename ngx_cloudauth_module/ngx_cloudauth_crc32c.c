
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * CRC32C (Castagnoli), as GCS reports it in "crc32c": the SSE4.2 crc32
 * instruction when the CPU has it, a slicing-by-8 table otherwise.  The
 * value is kept finished (as GCS shows it) between calls, so
 * crc = ngx_cloudauth_crc32c(0, ...) starts a new one and later calls go on.
 */


#include "ngx_cloudauth.h"


#define NGX_CLOUDAUTH_CRC32C_POLY  0x82f63b78


static uint32_t ngx_cloudauth_crc32c_sw(uint32_t crc, u_char *p, size_t len);
static void ngx_cloudauth_crc32c_init(void);

#if ((__GNUC__ >= 5 || defined __clang__)                                     \
     && (defined __x86_64__ || defined __i386__))
#define NGX_CLOUDAUTH_CRC32C_HW  1
static uint32_t ngx_cloudauth_crc32c_hw(uint32_t crc, u_char *p, size_t len);
#endif


static uint32_t    ngx_cloudauth_crc32c_table[8][256];
static ngx_uint_t  ngx_cloudauth_crc32c_ready;
static ngx_uint_t  ngx_cloudauth_crc32c_has_hw;


uint32_t
ngx_cloudauth_crc32c(uint32_t crc, u_char *p, size_t len)
{
    if (!ngx_cloudauth_crc32c_ready) {
        ngx_cloudauth_crc32c_init();
    }

#if (NGX_CLOUDAUTH_CRC32C_HW)
    if (ngx_cloudauth_crc32c_has_hw) {
        return ~ngx_cloudauth_crc32c_hw(~crc, p, len);
    }
#endif

    return ~ngx_cloudauth_crc32c_sw(~crc, p, len);
}


ngx_uint_t
ngx_cloudauth_crc32c_hardware(void)
{
    if (!ngx_cloudauth_crc32c_ready) {
        ngx_cloudauth_crc32c_init();
    }

    return ngx_cloudauth_crc32c_has_hw;
}


void
ngx_cloudauth_crc32c_force_software(void)
{
    if (!ngx_cloudauth_crc32c_ready) {
        ngx_cloudauth_crc32c_init();
    }

    ngx_cloudauth_crc32c_has_hw = 0;
}


static void
ngx_cloudauth_crc32c_init(void)
{
    uint32_t    c;
    ngx_uint_t  i, k;

    for (i = 0; i < 256; i++) {
        c = (uint32_t) i;

        for (k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ NGX_CLOUDAUTH_CRC32C_POLY : c >> 1;
        }

        ngx_cloudauth_crc32c_table[0][i] = c;
    }

    for (i = 0; i < 256; i++) {
        c = ngx_cloudauth_crc32c_table[0][i];

        for (k = 1; k < 8; k++) {
            c = ngx_cloudauth_crc32c_table[0][c & 0xff] ^ (c >> 8);
            ngx_cloudauth_crc32c_table[k][i] = c;
        }
    }

#if (NGX_CLOUDAUTH_CRC32C_HW)
    __builtin_cpu_init();
    ngx_cloudauth_crc32c_has_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif

    ngx_cloudauth_crc32c_ready = 1;
}


static uint32_t
ngx_cloudauth_crc32c_sw(uint32_t crc, u_char *p, size_t len)
{
    uint32_t  lo, hi;

    while (len && ((uintptr_t) p & 7)) {
        crc = ngx_cloudauth_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }

    while (len >= 8) {
        lo = crc ^ ((uint32_t) p[0] | (uint32_t) p[1] << 8
                    | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24);
        hi = (uint32_t) p[4] | (uint32_t) p[5] << 8
             | (uint32_t) p[6] << 16 | (uint32_t) p[7] << 24;

        crc = ngx_cloudauth_crc32c_table[7][lo & 0xff]
              ^ ngx_cloudauth_crc32c_table[6][(lo >> 8) & 0xff]
              ^ ngx_cloudauth_crc32c_table[5][(lo >> 16) & 0xff]
              ^ ngx_cloudauth_crc32c_table[4][lo >> 24]
              ^ ngx_cloudauth_crc32c_table[3][hi & 0xff]
              ^ ngx_cloudauth_crc32c_table[2][(hi >> 8) & 0xff]
              ^ ngx_cloudauth_crc32c_table[1][(hi >> 16) & 0xff]
              ^ ngx_cloudauth_crc32c_table[0][hi >> 24];

        p += 8;
        len -= 8;
    }

    while (len--) {
        crc = ngx_cloudauth_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }

    return crc;
}


#if (NGX_CLOUDAUTH_CRC32C_HW)

__attribute__((target("sse4.2")))
static uint32_t
ngx_cloudauth_crc32c_hw(uint32_t crc, u_char *p, size_t len)
{
#if defined __x86_64__
    uint64_t  c, v;
#endif

    while (len && ((uintptr_t) p & 7)) {
        crc = __builtin_ia32_crc32qi(crc, *p++);
        len--;
    }

#if defined __x86_64__
    c = crc;

    while (len >= 8) {
        ngx_memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }

    crc = (uint32_t) c;
#else
    while (len >= 4) {
        uint32_t  v32;

        ngx_memcpy(&v32, p, 4);
        crc = __builtin_ia32_crc32si(crc, v32);
        p += 4;
        len -= 4;
    }
#endif

    while (len--) {
        crc = __builtin_ia32_crc32qi(crc, *p++);
    }

    return crc;
}

#endif
