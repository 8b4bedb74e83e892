
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * Exponential back-off with equal jitter, for whoever retries: half the
 * delay fixed, half random, so that many clients failing at once do not
 * come back at once.
 */


#include "ngx_cloudauth.h"


/*
 * base doubled for each failure after the first, at most cap; then equal
 * jitter; at least floor (a Retry-After, say)
 */

ngx_msec_t
ngx_cloudauth_backoff(ngx_msec_t base, ngx_msec_t cap, ngx_uint_t failures,
    ngx_msec_t floor)
{
    ngx_msec_t  delay;

    delay = ngx_min(base, cap);

    while (failures-- > 1 && delay < cap) {
        delay *= 2;
    }

    delay = ngx_min(delay, cap);

    delay = delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);

    return ngx_max(delay, floor);
}
