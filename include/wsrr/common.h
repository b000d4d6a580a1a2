/* wsrr/common.h — types and conventions shared by every module of libwsrr.
 *
 * Return values: functions return 0 (or a byte count) on success and a
 * negative errno value on failure. Incremental parsers return WSRR_AGAIN when
 * they need more input. A human-readable detail, when there is one, is
 * written once, by the function that knows the context, into a caller buffer
 * (`char *err, size_t errlen`) or the log.
 */
#ifndef WSRR_COMMON_H
#define WSRR_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define WSRR_AGAIN (-EAGAIN)

/* Which way bytes travel on a proxied connection. */
enum wsrr_dir {
    WSRR_DIR_C2S = 0, /* client to server (frames must be masked) */
    WSRR_DIR_S2C = 1, /* server to client (frames must not be masked) */
};

/* A byte string pointing elsewhere (a parser's input, a reader's batch,
 * the caller's memory). Not NUL-terminated. */
struct wsrr_span {
    const uint8_t *p;
    size_t n;
};

/* Short names for diagnostics: "client" / "server" (the sender). */
const char *wsrr_dir_name(enum wsrr_dir d);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t wsrr_now_ns(void);

/* CLOCK_REALTIME in nanoseconds since the Unix epoch. */
uint64_t wsrr_wall_ns(void);

/* Little-endian loads and stores. The capture format is little-endian on
 * every host; these compile to single moves on x86 and arm64. */
static inline uint16_t wsrr_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}
static inline uint32_t wsrr_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t wsrr_le64(const uint8_t *p)
{
    return (uint64_t)wsrr_le32(p) | (uint64_t)wsrr_le32(p + 4) << 32;
}
static inline void wsrr_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void wsrr_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void wsrr_put64(uint8_t *p, uint64_t v)
{
    wsrr_put32(p, (uint32_t)v);
    wsrr_put32(p + 4, (uint32_t)(v >> 32));
}

/* Big-endian (network order), for the WebSocket wire format. */
static inline uint16_t wsrr_be16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}
static inline uint64_t wsrr_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Base64 (RFC 4648, with padding) through OpenSSL's EVP_EncodeBlock and
 * EVP_DecodeBlock. encode writes 4*ceil(n/3) characters and a NUL into out
 * and returns the length. decode returns the decoded length, or -EINVAL for
 * input that is not canonical padded base64; out needs 3*(n/4) bytes. */
size_t wsrr_base64_encode(char *out, const uint8_t *in, size_t n);
ssize_t wsrr_base64_decode(uint8_t *out, const char *in, size_t n);

struct evbuffer;

/* Read what the kernel already holds for socket fd (FIONREAD), at most max
 * bytes, in one readv into the end of `in`, a bufferevent's input: libevent
 * 2.1 reads at most 4096 bytes per readiness event (evbuffer_set_max_read()
 * arrived in 2.2), so a 16 MiB message would take 4096 trips through epoll.
 * Never more than FIONREAD reports, so an end of stream or a reset stays
 * for the bufferevent to report. Returns the bytes read (0: none, or an
 * error the bufferevent will see on its next read). Harmless with 2.2,
 * whose reads are larger: FIONREAD then reports less. */
size_t wsrr_read_pending(struct evbuffer *in, int fd, size_t max);

/* snprintf into err if err is not NULL; always returns -code so a caller can
 * write `return wsrr_seterr(err, errlen, EPROTO, "...")`. */
int wsrr_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
