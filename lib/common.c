/* common.c — small helpers shared by all modules. */
#include "wsrr/common.h"

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
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
