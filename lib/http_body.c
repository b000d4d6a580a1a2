/* http_body.c — where an HTTP/1.1 message body ends (RFC 9112 section 6),
 * fed incrementally; see wsrr/handshake.h.
 *
 * A proxy that rewrites every request head of a keep-alive connection must
 * know where each body ends; a recorder wants the body without the chunk
 * framing. The chunked decoder takes any split of its input, and its chunk
 * size, extensions and trailers are bounded so hostile framing costs no
 * memory (nothing is buffered: only counters).
 */
#include "wsrr/handshake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    C_SIZE,         /* hex digits of the chunk size */
    C_EXT,          /* chunk extension, to the end of the line */
    C_SIZE_LF,      /* LF after the size line's CR */
    C_DATA,         /* chunk data */
    C_DATA_CR,      /* CR after the data */
    C_DATA_LF,      /* LF after the data */
    C_TRAILER,      /* at the start of a trailer line (or the final empty line) */
    C_TRAILER_LINE, /* inside a trailer line */
    C_TRAILER_LF,   /* LF ending a trailer line */
    C_LAST_LF,      /* LF of the final empty line */
};

#define MAX_LINE 8192 /* chunk extensions and trailer lines */

/* Content-Length over all fields: one value, or several equal ones
 * (RFC 9110 8.6). */
static int content_length(const struct wsrr_http_head *h, uint64_t *len, bool *present, char *err,
                          size_t errlen)
{
    *present = false;
    for (size_t i = 0; i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        if (f->name_len != 14 || strncasecmp(f->name, "Content-Length", 14) != 0)
            continue;
        /* a field may itself be a list of equal values: "5, 5" */
        const char *v = f->value, *end = f->value + f->value_len;
        while (v < end) {
            while (v < end && (*v == ' ' || *v == ','))
                v++;
            if (v == end)
                break;
            uint64_t n = 0;
            int digits = 0;
            while (v < end && *v >= '0' && *v <= '9') {
                if (n > (UINT64_MAX - 9) / 10)
                    return wsrr_seterr(err, errlen, EBADMSG, "Content-Length out of range");
                n = n * 10 + (uint64_t)(*v++ - '0');
                digits++;
            }
            while (v < end && *v == ' ')
                v++;
            if (!digits || (v < end && *v != ','))
                return wsrr_seterr(err, errlen, EBADMSG, "Content-Length \"%.*s\" is not a number",
                                   (int)(f->value_len < 40 ? f->value_len : 40), f->value);
            if (*present && n != *len)
                return wsrr_seterr(err, errlen, EBADMSG,
                                   "two different Content-Length values (%llu and %llu)",
                                   (unsigned long long)*len, (unsigned long long)n);
            *len = n;
            *present = true;
        }
    }
    return 0;
}

/* Transfer-Encoding: chunked must be the last coding when present. */
static int transfer_encoding(const struct wsrr_http_head *h, bool *chunked, bool *present,
                             char *err, size_t errlen)
{
    *present = false;
    *chunked = false;
    for (size_t i = 0; i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        if (f->name_len != 17 || strncasecmp(f->name, "Transfer-Encoding", 17) != 0)
            continue;
        *present = true;
        /* the last coding of the last field decides */
        const char *v = f->value + f->value_len;
        while (v > f->value && (v[-1] == ' ' || v[-1] == '\t'))
            v--;
        const char *start = v;
        while (start > f->value && start[-1] != ',')
            start--;
        while (start < v && *start == ' ')
            start++;
        *chunked = v - start == 7 && strncasecmp(start, "chunked", 7) == 0;
    }
    if (*present && !*chunked)
        return wsrr_seterr(err, errlen, EBADMSG,
                           "Transfer-Encoding without chunked last: the body's end is unknown");
    return 0;
}

int wsrr_http_body_request(struct wsrr_http_body *b, const struct wsrr_http_head *req, char *err,
                           size_t errlen)
{
    memset(b, 0, sizeof(*b));
    uint64_t len = 0;
    bool has_len, chunked, has_te;
    int rc = content_length(req, &len, &has_len, err, errlen);
    if (rc == 0)
        rc = transfer_encoding(req, &chunked, &has_te, err, errlen);
    if (rc < 0)
        return rc;
    if (has_te && has_len)
        return wsrr_seterr(err, errlen, EBADMSG,
                           "both Transfer-Encoding and Content-Length (request smuggling)");
    if (chunked)
        b->kind = WSRR_BODY_CHUNKED;
    else if (has_len && len)
        b->kind = WSRR_BODY_LENGTH, b->remaining = len;
    else
        b->done = true;
    return 0;
}

int wsrr_http_body_response(struct wsrr_http_body *b, const struct wsrr_http_head *resp,
                            const char *method, size_t method_len, char *err, size_t errlen)
{
    memset(b, 0, sizeof(*b));
    if ((method_len == 4 && memcmp(method, "HEAD", 4) == 0) ||
        (resp->status >= 100 && resp->status < 200) || resp->status == 204 || resp->status == 304) {
        b->done = true;
        return 0;
    }
    uint64_t len = 0;
    bool has_len, chunked, has_te;
    int rc = content_length(resp, &len, &has_len, err, errlen);
    if (rc == 0)
        rc = transfer_encoding(resp, &chunked, &has_te, err, errlen);
    if (rc < 0 && !(has_te && rc == -EBADMSG))
        return rc;
    if (has_te && !chunked) { /* a response may end with the connection instead */
        b->kind = WSRR_BODY_UNTIL_CLOSE;
        return 0;
    }
    if (chunked)
        b->kind = WSRR_BODY_CHUNKED;
    else if (has_len && len)
        b->kind = WSRR_BODY_LENGTH, b->remaining = len;
    else if (has_len)
        b->done = true;
    else
        b->kind = WSRR_BODY_UNTIL_CLOSE;
    return 0;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

ssize_t wsrr_http_body_feed(struct wsrr_http_body *b, const uint8_t *p, size_t len,
                            struct wsrr_span *data)
{
    *data = (struct wsrr_span){NULL, 0};
    if (b->done)
        return 0;
    switch (b->kind) {
    case WSRR_BODY_NONE: b->done = true; return 0;
    case WSRR_BODY_UNTIL_CLOSE: *data = (struct wsrr_span){p, len}; return (ssize_t)len;
    case WSRR_BODY_LENGTH: {
        size_t n = len < b->remaining ? len : (size_t)b->remaining;
        *data = (struct wsrr_span){p, n};
        b->remaining -= n;
        b->done = b->remaining == 0;
        return (ssize_t)n;
    }
    case WSRR_BODY_CHUNKED: break;
    }
    size_t i = 0;
    while (i < len && !b->done) {
        uint8_t c = p[i];
        switch (b->state) {
        case C_SIZE: {
            int v = hexval(c);
            if (v >= 0) {
                if (b->digits >= 16)
                    return -EBADMSG; /* a size over 2^64 */
                b->size = b->size << 4 | (uint64_t)v;
                b->digits++;
            } else if (b->digits && (c == ';' || c == ' ' || c == '\t')) {
                b->state = C_EXT;
                b->remaining = 0;
            } else if (b->digits && c == '\r') {
                b->state = C_SIZE_LF;
            } else {
                return -EBADMSG;
            }
            i++;
            break;
        }
        case C_EXT:
            if (c == '\r')
                b->state = C_SIZE_LF;
            else if (++b->remaining > MAX_LINE || c == '\n')
                return -EBADMSG;
            i++;
            break;
        case C_SIZE_LF:
            if (c != '\n')
                return -EBADMSG;
            i++;
            b->remaining = b->size;
            b->state = b->size ? C_DATA : C_TRAILER;
            b->size = 0;
            b->digits = 0;
            break;
        case C_DATA: {
            size_t n = len - i < b->remaining ? len - i : (size_t)b->remaining;
            b->remaining -= n;
            if (!b->remaining)
                b->state = C_DATA_CR;
            *data = (struct wsrr_span){p + i, n};
            return (ssize_t)(i + n); /* one piece per call */
        }
        case C_DATA_CR:
            if (c != '\r')
                return -EBADMSG;
            b->state = C_DATA_LF;
            i++;
            break;
        case C_DATA_LF:
            if (c != '\n')
                return -EBADMSG;
            b->state = C_SIZE;
            i++;
            break;
        case C_TRAILER:
            if (c == '\r') {
                b->state = C_LAST_LF;
            } else if (c == '\n') {
                return -EBADMSG;
            } else {
                b->state = C_TRAILER_LINE;
                b->remaining = 1;
            }
            i++;
            break;
        case C_TRAILER_LINE:
            if (c == '\r')
                b->state = C_TRAILER_LF;
            else if (c == '\n' || ++b->remaining > MAX_LINE)
                return -EBADMSG;
            i++;
            break;
        case C_TRAILER_LF:
            if (c != '\n')
                return -EBADMSG;
            b->state = C_TRAILER;
            i++;
            break;
        case C_LAST_LF:
            if (c != '\n')
                return -EBADMSG;
            b->done = true;
            i++;
            break;
        }
    }
    return (ssize_t)i;
}
