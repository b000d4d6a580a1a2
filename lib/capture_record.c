/* capture_record.c — encoding and decoding of capture records.
 *
 * Layout (docs/capture-format.md, "Records"): a 28-byte header (u32 length,
 * u8 kind, u8 flags, u16 reserved, u64 seq, u64 ts, u32 conn), then the body
 * of the kind. Variable fields are u32-length-prefixed; bytes after the last
 * field a kind defines are carried in r->extra. All integers little-endian.
 */
#include "wsrr/capture.h"
#include "wsrr/frame.h"

#include <stdio.h>

static const char *const kind_names[] = {
    [WSRR_REC_OPEN] = "open",   [WSRR_REC_REQUEST] = "request", [WSRR_REC_RESPONSE] = "response",
    [WSRR_REC_FRAME] = "frame", [WSRR_REC_CLOSE] = "close",     [WSRR_REC_TCP] = "tcp",
    [WSRR_REC_FAULT] = "fault", [WSRR_REC_NOTE] = "note",       [WSRR_REC_BODY] = "body",
};

static const char *const tcp_event_names[] = {
    [WSRR_TCP_CONNECTED] = "connected",
    [WSRR_TCP_FIN] = "fin",
    [WSRR_TCP_RST] = "rst",
    [WSRR_TCP_ERROR] = "error",
    [WSRR_TCP_TIMEOUT] = "timeout",
    [WSRR_TCP_CONNECT_FAILED] = "connect_failed",
    [WSRR_TCP_TLS_ERROR] = "tls_error",
    [WSRR_TCP_CLOSED] = "closed",
};

static const char *const side_names[] = {
    [WSRR_SIDE_CLIENT] = "client",
    [WSRR_SIDE_SERVER] = "server",
    [WSRR_SIDE_PROXY] = "proxy",
    [WSRR_SIDE_NONE] = "none",
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int name_lookup(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (names[i] && strcmp(names[i], name) == 0)
            return (int)i;
    return -1;
}

const char *wsrr_rec_kind_name(uint8_t kind)
{
    return kind < NELEM(kind_names) ? kind_names[kind] : NULL;
}

int wsrr_rec_kind_by_name(const char *name)
{
    return name_lookup(kind_names, NELEM(kind_names), name);
}

const char *wsrr_tcp_event_name(uint8_t ev)
{
    return ev < NELEM(tcp_event_names) ? tcp_event_names[ev] : NULL;
}

int wsrr_tcp_event_by_name(const char *name)
{
    return name_lookup(tcp_event_names, NELEM(tcp_event_names), name);
}

const char *wsrr_close_side_name(uint8_t side)
{
    return side < NELEM(side_names) ? side_names[side] : NULL;
}

int wsrr_close_side_by_name(const char *name)
{
    return name_lookup(side_names, NELEM(side_names), name);
}

/* ---- sizes ---- */

#define STR(s) (4 + (uint64_t)(s).n)

static uint64_t frame_payload_len(const struct wsrr_record *r)
{
    if (!r->u.frame.payload_iov)
        return r->u.frame.payload.n;
    uint64_t n = 0;
    for (int i = 0; i < r->u.frame.payload_iovcnt; i++)
        n += r->u.frame.payload_iov[i].iov_len;
    return n;
}

static uint64_t body_size(const struct wsrr_record *r)
{
    switch (r->kind) {
    case WSRR_REC_OPEN:
        return 4 + STR(r->u.open.client) + STR(r->u.open.listen) + STR(r->u.open.upstream) +
               STR(r->u.open.client_tls) + STR(r->u.open.upstream_tls) + STR(r->u.open.sni);
    case WSRR_REC_REQUEST:
    case WSRR_REC_RESPONSE: return STR(r->u.http.head);
    case WSRR_REC_FRAME:
        return 24 + frame_payload_len(r) +
               ((r->u.frame.fflags & WSRR_FF_MESSAGE) ? STR(r->u.frame.message) : 0);
    case WSRR_REC_CLOSE: return 4 + STR(r->u.close.reason);
    case WSRR_REC_TCP: return 8 + STR(r->u.tcp.detail);
    case WSRR_REC_FAULT:
        return 8 + STR(r->u.fault.rule) + STR(r->u.fault.action) + STR(r->u.fault.detail);
    case WSRR_REC_NOTE: return STR(r->u.note.text);
    case WSRR_REC_BODY: return 12 + STR(r->u.body.data);
    default: return r->u.raw.body.n;
    }
}

size_t wsrr_record_size(const struct wsrr_record *r)
{
    uint64_t n = WSRR_REC_HEADER_LEN + body_size(r) + r->extra.n;
    /* Every field is at most 4 GiB by construction of STR(); the record
     * length field is 32 bits. */
    if (n > UINT32_MAX)
        return 0;
    return (size_t)n;
}

/* ---- encode ---- */

static uint8_t *put_bytes(uint8_t *o, const void *p, size_t n)
{
    if (n)
        memcpy(o, p, n);
    return o + n;
}

static uint8_t *put_str(uint8_t *o, struct wsrr_span s)
{
    wsrr_put32(o, (uint32_t)s.n);
    return put_bytes(o + 4, s.p, s.n);
}

static uint8_t *put_frame_payload(uint8_t *o, const struct wsrr_record *r)
{
    if (!r->u.frame.payload_iov)
        return put_bytes(o, r->u.frame.payload.p, r->u.frame.payload.n);

    uint64_t off = 0;
    for (int i = 0; i < r->u.frame.payload_iovcnt; i++) {
        const struct iovec *v = &r->u.frame.payload_iov[i];
        if (r->u.frame.payload_wire && (r->u.frame.fflags & WSRR_FF_MASKED))
            wsrr_frame_mask(o, v->iov_base, v->iov_len, r->u.frame.mask, off);
        else if (v->iov_len)
            memcpy(o, v->iov_base, v->iov_len);
        o += v->iov_len;
        off += v->iov_len;
    }
    return o;
}

size_t wsrr_record_encode(uint8_t *out, const struct wsrr_record *r)
{
    size_t size = wsrr_record_size(r);
    uint8_t *o = out;

    wsrr_put32(o, (uint32_t)size);
    o[4] = r->kind;
    o[5] = r->flags;
    wsrr_put16(o + 6, 0);
    wsrr_put64(o + 8, r->seq);
    wsrr_put64(o + 16, r->ts);
    wsrr_put32(o + 24, r->conn);
    o += WSRR_REC_HEADER_LEN;

    switch (r->kind) {
    case WSRR_REC_OPEN:
        wsrr_put32(o, r->u.open.flags);
        o = put_str(o + 4, r->u.open.client);
        o = put_str(o, r->u.open.listen);
        o = put_str(o, r->u.open.upstream);
        o = put_str(o, r->u.open.client_tls);
        o = put_str(o, r->u.open.upstream_tls);
        o = put_str(o, r->u.open.sni);
        break;
    case WSRR_REC_REQUEST:
    case WSRR_REC_RESPONSE: o = put_str(o, r->u.http.head); break;
    case WSRR_REC_FRAME:
        o[0] = r->u.frame.dir;
        o[1] = (uint8_t)((r->u.frame.fin ? 0x80 : 0) | (r->u.frame.rsv & 7) << 4 |
                         (r->u.frame.opcode & 0x0f));
        o[2] = r->u.frame.len_width;
        o[3] = r->u.frame.fflags;
        wsrr_put32(o + 4, r->u.frame.violations);
        memcpy(o + 8, r->u.frame.mask, 4);
        wsrr_put64(o + 12, r->u.frame.len);
        wsrr_put32(o + 20, (uint32_t)frame_payload_len(r));
        o = put_frame_payload(o + 24, r);
        if (r->u.frame.fflags & WSRR_FF_MESSAGE)
            o = put_str(o, r->u.frame.message);
        break;
    case WSRR_REC_CLOSE:
        o[0] = r->u.close.side;
        o[1] = r->u.close.cflags;
        wsrr_put16(o + 2, r->u.close.code);
        o = put_str(o + 4, r->u.close.reason);
        break;
    case WSRR_REC_TCP:
        o[0] = r->u.tcp.leg;
        o[1] = r->u.tcp.event;
        wsrr_put16(o + 2, 0);
        wsrr_put32(o + 4, (uint32_t)r->u.tcp.err);
        o = put_str(o + 8, r->u.tcp.detail);
        break;
    case WSRR_REC_FAULT:
        wsrr_put64(o, r->u.fault.target);
        o = put_str(o + 8, r->u.fault.rule);
        o = put_str(o, r->u.fault.action);
        o = put_str(o, r->u.fault.detail);
        break;
    case WSRR_REC_NOTE: o = put_str(o, r->u.note.text); break;
    case WSRR_REC_BODY:
        o[0] = r->u.body.dir;
        o[1] = r->u.body.bflags;
        wsrr_put16(o + 2, 0);
        wsrr_put64(o + 4, r->u.body.len);
        o = put_str(o + 12, r->u.body.data);
        break;
    default: o = put_bytes(o, r->u.raw.body.p, r->u.raw.body.n); break;
    }
    o = put_bytes(o, r->extra.p, r->extra.n);
    return (size_t)(o - out);
}

/* ---- decode ---- */

struct cursor {
    const uint8_t *p, *end;
    const char *field; /* the field being read, for the error */
    bool bad;
};

static const uint8_t *take(struct cursor *c, size_t n, const char *field)
{
    if (c->bad || (size_t)(c->end - c->p) < n) {
        if (!c->bad)
            c->field = field;
        c->bad = true;
        return NULL;
    }
    const uint8_t *q = c->p;
    c->p += n;
    return q;
}

static uint8_t get8(struct cursor *c, const char *field)
{
    const uint8_t *q = take(c, 1, field);
    return q ? q[0] : 0;
}

static uint16_t get16(struct cursor *c, const char *field)
{
    const uint8_t *q = take(c, 2, field);
    return q ? wsrr_le16(q) : 0;
}

static uint32_t get32(struct cursor *c, const char *field)
{
    const uint8_t *q = take(c, 4, field);
    return q ? wsrr_le32(q) : 0;
}

static uint64_t get64(struct cursor *c, const char *field)
{
    const uint8_t *q = take(c, 8, field);
    return q ? wsrr_le64(q) : 0;
}

static struct wsrr_span get_bytes(struct cursor *c, size_t n, const char *field)
{
    struct wsrr_span s = {take(c, n, field), n};
    if (!s.p)
        s.n = 0;
    return s;
}

static struct wsrr_span get_str(struct cursor *c, const char *field)
{
    uint32_t n = get32(c, field);
    return get_bytes(c, n, field);
}

ssize_t wsrr_record_decode(const uint8_t *buf, size_t len, struct wsrr_record *r, char *err,
                           size_t errlen)
{
    memset(r, 0, sizeof(*r));
    if (len < WSRR_REC_HEADER_LEN)
        return wsrr_seterr(err, errlen, EBADMSG, "record header needs %d bytes, %zu left",
                           WSRR_REC_HEADER_LEN, len);
    uint32_t size = wsrr_le32(buf);
    if (size < WSRR_REC_HEADER_LEN || size > len)
        return wsrr_seterr(err, errlen, EBADMSG,
                           "record length %u out of range (28..%zu bytes left in batch)", size,
                           len);
    r->kind = buf[4];
    r->flags = buf[5];
    r->seq = wsrr_le64(buf + 8);
    r->ts = wsrr_le64(buf + 16);
    r->conn = wsrr_le32(buf + 24);
    if (r->seq == 0)
        return wsrr_seterr(err, errlen, EBADMSG, "record with sequence number 0 (reserved)");
    if (r->ts == WSRR_TS_NOW)
        return wsrr_seterr(err, errlen, EBADMSG, "record seq %llu: timestamp 2^64-1 is reserved",
                           (unsigned long long)r->seq);

    struct cursor c = {buf + WSRR_REC_HEADER_LEN, buf + size, NULL, false};
    switch (r->kind) {
    case WSRR_REC_OPEN:
        r->u.open.flags = get32(&c, "open.flags");
        r->u.open.client = get_str(&c, "open.client");
        r->u.open.listen = get_str(&c, "open.listen");
        r->u.open.upstream = get_str(&c, "open.upstream");
        r->u.open.client_tls = get_str(&c, "open.client_tls");
        r->u.open.upstream_tls = get_str(&c, "open.upstream_tls");
        r->u.open.sni = get_str(&c, "open.sni");
        break;
    case WSRR_REC_REQUEST:
    case WSRR_REC_RESPONSE: r->u.http.head = get_str(&c, "http.head"); break;
    case WSRR_REC_FRAME: {
        r->u.frame.dir = get8(&c, "frame.dir");
        uint8_t b0 = get8(&c, "frame.b0");
        r->u.frame.fin = b0 & 0x80;
        r->u.frame.rsv = (b0 >> 4) & 7;
        r->u.frame.opcode = b0 & 0x0f;
        r->u.frame.len_width = get8(&c, "frame.len_width");
        r->u.frame.fflags = get8(&c, "frame.flags");
        r->u.frame.violations = get32(&c, "frame.violations");
        const uint8_t *m = take(&c, 4, "frame.mask");
        if (m)
            memcpy(r->u.frame.mask, m, 4);
        r->u.frame.len = get64(&c, "frame.len");
        r->u.frame.payload = get_str(&c, "frame.payload");
        if (r->u.frame.fflags & WSRR_FF_MESSAGE)
            r->u.frame.message = get_str(&c, "frame.message");
        if (!c.bad && r->u.frame.dir > 1) {
            c.bad = true;
            c.field = "frame.dir (0 or 1)";
        }
        if (!c.bad && r->u.frame.len_width != 7 && r->u.frame.len_width != 16 &&
            r->u.frame.len_width != 64) {
            c.bad = true;
            c.field = "frame.len_width (7, 16 or 64)";
        }
        break;
    }
    case WSRR_REC_CLOSE:
        r->u.close.side = get8(&c, "close.side");
        r->u.close.cflags = get8(&c, "close.flags");
        r->u.close.code = get16(&c, "close.code");
        r->u.close.reason = get_str(&c, "close.reason");
        break;
    case WSRR_REC_TCP:
        r->u.tcp.leg = get8(&c, "tcp.leg");
        r->u.tcp.event = get8(&c, "tcp.event");
        (void)get16(&c, "tcp.reserved");
        r->u.tcp.err = (int32_t)get32(&c, "tcp.err");
        r->u.tcp.detail = get_str(&c, "tcp.detail");
        break;
    case WSRR_REC_FAULT:
        r->u.fault.target = get64(&c, "fault.target");
        r->u.fault.rule = get_str(&c, "fault.rule");
        r->u.fault.action = get_str(&c, "fault.action");
        r->u.fault.detail = get_str(&c, "fault.detail");
        break;
    case WSRR_REC_NOTE: r->u.note.text = get_str(&c, "note.text"); break;
    case WSRR_REC_BODY:
        r->u.body.dir = get8(&c, "body.dir");
        r->u.body.bflags = get8(&c, "body.flags");
        (void)get16(&c, "body.reserved");
        r->u.body.len = get64(&c, "body.len");
        r->u.body.data = get_str(&c, "body.data");
        if (!c.bad && r->u.body.dir > 1) {
            c.bad = true;
            c.field = "body.dir (0 or 1)";
        }
        break;
    default: r->u.raw.body = get_bytes(&c, (size_t)(c.end - c.p), "body"); break;
    }
    if (c.bad)
        return wsrr_seterr(
            err, errlen, EBADMSG,
            "record seq %llu (%s): field %s is invalid or runs past the %u-byte record",
            (unsigned long long)r->seq,
            wsrr_rec_kind_name(r->kind) ? wsrr_rec_kind_name(r->kind) : "?", c.field, size);
    r->extra.p = c.p;
    r->extra.n = (size_t)(c.end - c.p);
    if (!r->extra.n)
        r->extra.p = NULL;
    return size;
}
