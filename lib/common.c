/* common.c — small helpers shared by all modules. */
#include "wsrr/common.h"

#include <event2/buffer.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>

const char *wsrr_dir_name(enum wsrr_dir d)
{
    return d == WSRR_DIR_C2S ? "client" : "server";
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wsrr_now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t wsrr_wall_ns(void)
{
    return clock_ns(CLOCK_REALTIME);
}

int wsrr_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -code;
}

size_t wsrr_base64_encode(char *out, const uint8_t *in, size_t n)
{
    size_t len = 0;
    /* EVP_EncodeBlock takes an int; go in chunks of a multiple of 3 bytes */
    const size_t chunk = (size_t)3 << 20;
    while (n) {
        size_t k = n < chunk ? n : chunk;
        len += (size_t)EVP_EncodeBlock((unsigned char *)out + len, in, (int)k);
        in += k;
        n -= k;
    }
    out[len] = '\0';
    return len;
}

ssize_t wsrr_base64_decode(uint8_t *out, const char *in, size_t n)
{
    if (n % 4)
        return -EINVAL;
    /* only the alphabet: EVP_DecodeBlock would also skip whitespace */
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '+' || ch == '/' || ch == '='))
            return -EINVAL;
    }
    size_t pad = 0;
    if (n && in[n - 1] == '=')
        pad++;
    if (n > 1 && in[n - 2] == '=')
        pad++;
    size_t len = 0;
    const size_t chunk = (size_t)4 << 20;
    while (n) {
        size_t k = n < chunk ? n : chunk;
        /* '=' may only appear at the very end */
        if (memchr(in, '=', k - (k == n ? pad : 0)))
            return -EINVAL;
        int m = EVP_DecodeBlock(out + len, (const unsigned char *)in, (int)k);
        if (m < 0)
            return -EINVAL;
        len += (size_t)m;
        in += k;
        n -= k;
    }
    /* EVP_DecodeBlock also skips whitespace, which canonical input has none of */
    return (ssize_t)(len - pad);
}

size_t wsrr_read_pending(struct evbuffer *in, int fd, size_t max)
{
    int avail = 0;
    if (fd < 0 || ioctl(fd, FIONREAD, &avail) < 0 || avail <= 0)
        return 0;
    size_t want = (size_t)avail < max ? (size_t)avail : max;
    if (!want)
        return 0;
    /* the bufferevent keeps the end of its input frozen between its own
     * reads (so that only it adds there); thaw it for this one */
    evbuffer_unfreeze(in, 0);
    struct evbuffer_iovec vec[2];
    int nv = evbuffer_reserve_space(in, (ev_ssize_t)want, vec, 2);
    if (nv <= 0) {
        evbuffer_freeze(in, 0);
        return 0;
    }
    size_t left = want; /* no more than the kernel holds (see above) */
    for (int i = 0; i < nv; i++) {
        if (vec[i].iov_len > left)
            vec[i].iov_len = left;
        left -= vec[i].iov_len;
    }
    ssize_t got = readv(fd, (struct iovec *)vec, nv);
    if (got <= 0) {
        evbuffer_commit_space(in, vec, 0);
        evbuffer_freeze(in, 0);
        return 0;
    }
    left = (size_t)got;
    for (int i = 0; i < nv; i++) {
        if (vec[i].iov_len > left)
            vec[i].iov_len = left;
        left -= vec[i].iov_len;
    }
    evbuffer_commit_space(in, vec, nv);
    evbuffer_freeze(in, 0);
    return (size_t)got;
}
