
/*
 * Copyright (C) ngx_cloudauth authors
 *
 * A small local file read without blocking: key files and secrets at
 * configuration time, a subject token file in a worker at each exchange.
 */


#include "ngx_cloudauth.h"


#define NGX_CLOUDAUTH_MAX_FILE  65536


/*
 * A small local file, read without stalling the process (a worker at
 * request time, the master at a reload): opened with O_NONBLOCK (a FIFO
 * put in its place does not block the open), checked to be a regular
 * file of at most 64 KiB, read with a single read().  On tmpfs (a
 * Kubernetes projected token) that is a copy from memory.  The text is
 * NUL-terminated; sb gets the file's stat().
 */

ngx_int_t
ngx_cloudauth_read_small(u_char *path, ngx_pool_t *pool, ngx_str_t *out,
    struct stat *sb, char **err, ngx_err_t *errn, ngx_log_t *log)
{
    int        fd;
    ssize_t    n;
    ngx_int_t  rc;

    rc = NGX_ERROR;
    *errn = 0;

    fd = open((char *) path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

    if (fd == -1) {
        *errn = ngx_errno;
        *err = (*errn == NGX_ENOENT) ? "no such file"
               : (*errn == NGX_EACCES) ? "cannot open it (the workers' "
                                         "user must be able to read it)"
               : "cannot open it";
        return NGX_ERROR;
    }

    if (fstat(fd, sb) == -1) {
        *errn = ngx_errno;
        *err = "fstat() failed";
        goto done;
    }

    if (!S_ISREG(sb->st_mode)) {
        *err = "not a regular file";
        goto done;
    }

    if (sb->st_size > NGX_CLOUDAUTH_MAX_FILE) {
        *err = "larger than 64 KiB";
        goto done;
    }

    out->data = ngx_pnalloc(pool, (size_t) sb->st_size + 1);
    if (out->data == NULL) {
        *err = "out of memory";
        goto done;
    }

    /* one byte more than fstat() said: a file that grew is noticed */

    n = read(fd, out->data, (size_t) sb->st_size + 1);

    if (n == -1) {
        *errn = ngx_errno;
        *err = "cannot read it";
        goto done;
    }

    if (n > sb->st_size) {
        ngx_explicit_memzero(out->data, (size_t) n);
        *err = "it changed while it was read";
        goto done;
    }

    out->len = (size_t) n;
    out->data[n] = '\0';
    rc = NGX_OK;

done:

    if (close(fd) == -1) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "close() \"%s\" failed", path);
    }

    return rc;
}
