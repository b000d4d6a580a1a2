/* tap.c — one connection's recorder; see wsrr/tap.h.
 *
 * Each direction has an HTTP head parser (request from the client, response
 * from the server) and, after a 101, a frame parser. Client bytes that
 * follow the request before the response is known are held (with their
 * arrival times) until the response says whether they are frames and which
 * extensions apply. A frame's payload is taken straight from the caller's
 * buffer when it arrives whole; otherwise it is gathered, unmasked, up to
 * the recording cap.
 */
#include "wsrr/tap.h"
#include "wsrr/handshake.h"

#include <event2/buffer.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define DEFAULT_MAX_RECORDED ((uint64_t)64 << 20)
#define DEFAULT_MAX_INFLATED ((uint64_t)64 << 20)
#define DEFAULT_MAX_EARLY    ((size_t)64 << 10)

#define METHOD_QUEUE 32

struct tap_dir {
    struct wsrr_http_parser http;
    /* the body of the HTTP message being received */
    struct wsrr_http_body body;
    bool in_body;
    struct evbuffer *acc_body; /* its content, up to the recording cap */
    uint64_t body_len;
    struct wsrr_frame_parser fp;

    /* the frame being received */
    const uint8_t *direct; /* whole payload in the caller's buffer (wire bytes) */
    uint8_t *acc;          /* or gathered here, unmasked */
    size_t acc_len, acc_cap;
    uint64_t dropped; /* payload bytes past the recording cap */

    /* the compressed message being received */
    struct wsrr_pmd_stream *inflater;
    struct evbuffer *msg;
    bool msg_error;
    bool desync; /* a message could not be inflated under context takeover: the
                    sender's window is unknown, so no later message can be */
};

struct wsrr_tap {
    struct wsrr_capture_writer *w;
    uint32_t conn;
    struct wsrr_tap_opts o;
    struct wsrr_tap_state st;
    struct tap_dir d[2];

    struct evbuffer *early; /* client bytes awaiting the response to an upgrade */
    bool hold;              /* an upgrade request was sent: hold client bytes */

    /* methods of requests not answered yet, for the responses' framing */
    char methods[METHOD_QUEUE][16];
    int mhead, mcount;

    struct evbuffer *scratch; /* redacted heads, payloads and messages */

    uint8_t close_reason[WSRR_FRAME_MAX_CONTROL];
    size_t close_reason_len;
    bool close_has_code;
    bool proxy_closed;   /* wsrr sent the first close frame (wsrr_tap_injected) */
    uint16_t proxy_code; /* ... with this code */
    bool ended;
};

struct wsrr_tap *wsrr_tap_new(struct wsrr_capture_writer *w, uint32_t conn,
                              const struct wsrr_tap_opts *opts)
{
    struct wsrr_tap *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->w = w;
    t->conn = conn;
    if (opts)
        t->o = *opts;
    if (!t->o.max_recorded_payload)
        t->o.max_recorded_payload = DEFAULT_MAX_RECORDED;
    if (!t->o.max_inflated)
        t->o.max_inflated = DEFAULT_MAX_INFLATED;
    if (!t->o.max_early_bytes)
        t->o.max_early_bytes = DEFAULT_MAX_EARLY;
    t->st.first_closer = -1;
    wsrr_http_parser_init(&t->d[WSRR_DIR_C2S].http, false, 0, 0);
    wsrr_http_parser_init(&t->d[WSRR_DIR_S2C].http, true, 0, 0);
    for (int i = 0; i < 2; i++)
        wsrr_frame_parser_init(&t->d[i].fp, (enum wsrr_dir)i, &t->o.limits);
    return t;
}

void wsrr_tap_free(struct wsrr_tap *t)
{
    if (!t)
        return;
    for (int i = 0; i < 2; i++) {
        wsrr_http_parser_finish(&t->d[i].http);
        if (t->d[i].acc_body)
            evbuffer_free(t->d[i].acc_body);
        free(t->d[i].acc);
        wsrr_pmd_free(t->d[i].inflater);
        if (t->d[i].msg)
            evbuffer_free(t->d[i].msg);
    }
    if (t->early)
        evbuffer_free(t->early);
    if (t->scratch)
        evbuffer_free(t->scratch);
    free(t);
}

const struct wsrr_tap_state *wsrr_tap_state(const struct wsrr_tap *t)
{
    return &t->st;
}

/* Redact `in` with fn's kind of redaction; on a change, point *in at the
 * redacted bytes (valid until the next call) and flag the record. */
static int redacted(struct wsrr_tap *t, struct wsrr_record *r, struct wsrr_span *in,
                    const struct wsrr_http_head *head)
{
    if (!t->o.redact)
        return 0;
    if (!t->scratch && !(t->scratch = evbuffer_new()))
        return -ENOMEM;
    evbuffer_drain(t->scratch, evbuffer_get_length(t->scratch));
    int rc = head ? wsrr_redact_head(t->o.redact, head, t->scratch)
                  : wsrr_redact_text(t->o.redact, in->p, in->n, t->scratch);
    if (rc <= 0)
        return rc;
    size_t n = evbuffer_get_length(t->scratch);
    const uint8_t *p = evbuffer_pullup(t->scratch, -1);
    if (!p)
        return -ENOMEM;
    *in = (struct wsrr_span){p, n};
    r->flags |= WSRR_RF_REDACTED;
    return 1;
}

static int append(struct wsrr_tap *t, struct wsrr_record *r, uint64_t ts)
{
    if (!t->w) /* recording paused */
        return 0;
    r->conn = t->conn;
    r->ts = ts;
    r->seq = 0;
    return wsrr_capture_append(t->w, r);
}

static int note(struct wsrr_tap *t, uint64_t ts, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int note(struct wsrr_tap *t, uint64_t ts, const char *fmt, ...)
{
    char text[320];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    struct wsrr_record r = {.kind = WSRR_REC_NOTE};
    r.u.note.text = (struct wsrr_span){(const uint8_t *)text,
                                       n < (int)sizeof(text) ? (size_t)n : sizeof(text) - 1};
    return append(t, &r, ts);
}

int wsrr_tap_note(struct wsrr_tap *t, uint64_t ts, const char *fmt, ...)
{
    char text[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (!t->w)
        return 0;
    if (ts == WSRR_TS_NOW)
        ts = wsrr_capture_writer_now(t->w);
    return note(t, ts, "%s", text);
}

uint64_t wsrr_tap_next_seq(const struct wsrr_tap *t)
{
    return t->w ? wsrr_capture_writer_next_seq(t->w) : 0;
}

int wsrr_tap_fault(struct wsrr_tap *t, uint64_t target, const char *rule, const char *action,
                   const char *detail, uint64_t ts)
{
    struct wsrr_record r = {.kind = WSRR_REC_FAULT};
    r.u.fault.target = target;
    r.u.fault.rule = (struct wsrr_span){(const uint8_t *)rule, strlen(rule)};
    r.u.fault.action = (struct wsrr_span){(const uint8_t *)action, strlen(action)};
    if (detail)
        r.u.fault.detail = (struct wsrr_span){(const uint8_t *)detail, strlen(detail)};
    return append(t, &r, ts);
}

int wsrr_tap_injected(struct wsrr_tap *t, enum wsrr_dir dir, const struct wsrr_frame *f,
                      const uint8_t *payload, size_t n, uint64_t ts)
{
    struct wsrr_record r = {.kind = WSRR_REC_FRAME, .flags = WSRR_RF_INJECTED};
    struct wsrr_rec_frame *rf = &r.u.frame;
    rf->dir = (uint8_t)dir;
    rf->fin = f->fin;
    rf->rsv = f->rsv;
    rf->opcode = f->opcode;
    rf->len_width = f->len_width ? f->len_width : (n <= 125 ? 7 : n <= 0xffff ? 16 : 64);
    rf->fflags = f->masked ? WSRR_FF_MASKED : 0;
    memcpy(rf->mask, f->mask, 4);
    rf->len = f->len;
    rf->payload = (struct wsrr_span){payload, n};
    if (f->opcode == WSRR_OP_CLOSE && t->st.first_closer < 0 && !t->proxy_closed) {
        /* wsrr started the closing handshake: the CLOSE summary says so */
        t->proxy_closed = true;
        t->close_has_code = n >= 2;
        t->proxy_code = n >= 2 ? (uint16_t)(payload[0] << 8 | payload[1]) : 0;
        t->close_reason_len = n > 2 ? n - 2 : 0;
        if (t->close_reason_len > sizeof(t->close_reason))
            t->close_reason_len = sizeof(t->close_reason);
        if (t->close_reason_len)
            memcpy(t->close_reason, payload + 2, t->close_reason_len);
    }
    /* what wsrr sends may be an edit of a peer's message: redact it alike */
    if (f->opcode == WSRR_OP_TEXT && !(f->rsv & WSRR_RSV1) &&
        redacted(t, &r, &rf->payload, NULL) < 0)
        return -ENOMEM;
    return append(t, &r, ts);
}

void wsrr_tap_set_writer(struct wsrr_tap *t, struct wsrr_capture_writer *w)
{
    t->w = w;
}

int wsrr_tap_open(struct wsrr_tap *t, const struct wsrr_rec_open *info, uint64_t ts)
{
    struct wsrr_record r = {.kind = WSRR_REC_OPEN};
    r.u.open = *info;
    return append(t, &r, ts);
}

int wsrr_tap_tcp(struct wsrr_tap *t, enum wsrr_leg leg, enum wsrr_tcp_event ev, int err,
                 const char *detail, uint64_t ts)
{
    struct wsrr_record r = {.kind = WSRR_REC_TCP};
    r.u.tcp.leg = (uint8_t)leg;
    r.u.tcp.event = (uint8_t)ev;
    r.u.tcp.err = err;
    if (detail)
        r.u.tcp.detail = (struct wsrr_span){(const uint8_t *)detail, strlen(detail)};
    return append(t, &r, ts);
}

/* ---- frames ---- */

static int gather(struct tap_dir *d, const struct wsrr_frame_event *ev, uint64_t cap)
{
    size_t room = d->acc_len < cap ? (size_t)(cap - d->acc_len) : 0;
    size_t n = ev->len < room ? ev->len : room;
    d->dropped += ev->len - n;
    if (!n)
        return 0;
    if (d->acc_len + n > d->acc_cap) {
        size_t ncap = d->acc_cap ? d->acc_cap : 4096;
        while (ncap < d->acc_len + n)
            ncap *= 2;
        uint8_t *b = realloc(d->acc, ncap);
        if (!b)
            return -ENOMEM;
        d->acc = b;
        d->acc_cap = ncap;
    }
    const struct wsrr_frame *f = ev->frame;
    if (f->masked)
        wsrr_frame_mask(d->acc + d->acc_len, ev->data, n, f->mask, ev->offset);
    else
        memcpy(d->acc + d->acc_len, ev->data, n);
    d->acc_len += n;
    return 0;
}

/* Inflate this frame's share of a compressed message; on the message's last
 * frame, attach the whole message to the record. A message that cannot be
 * inflated (corrupt, over the cap, or not all recorded) is flagged; with no
 * context takeover the next message starts from a fresh inflater, with
 * context takeover every later message of that sender is flagged too (its
 * back-references point into data we never had). */
static int inflate_frame(struct wsrr_tap *t, struct tap_dir *d, enum wsrr_dir dir,
                         const struct wsrr_frame *f, struct wsrr_span payload, bool truncated,
                         struct wsrr_record *r, uint64_t ts)
{
    if (d->desync) {
        if (f->msg_final)
            r->u.frame.fflags |= WSRR_FF_INFLATE_ERROR;
        return 0;
    }
    if (!d->msg && !(d->msg = evbuffer_new()))
        d->msg_error = true;
    if (!d->msg_error && !d->inflater &&
        !(d->inflater = wsrr_pmd_inflater_new(&t->st.pmd, dir, t->o.max_inflated)))
        d->msg_error = true;
    if (truncated)
        d->msg_error = true; /* part of the message was not kept: it cannot be inflated */
    if (!d->msg_error &&
        wsrr_pmd_inflate(d->inflater, payload.p, payload.n, f->msg_final, d->msg) < 0)
        d->msg_error = true;
    if (!f->msg_final)
        return 0;

    const uint8_t *m = NULL;
    size_t n = d->msg ? evbuffer_get_length(d->msg) : 0;
    if (!d->msg_error && !(m = n ? evbuffer_pullup(d->msg, -1) : (const uint8_t *)""))
        d->msg_error = true;
    if (!d->msg_error) {
        r->u.frame.fflags |= WSRR_FF_MESSAGE;
        r->u.frame.message = (struct wsrr_span){m, n};
        if (f->msg_opcode == WSRR_OP_TEXT && !wsrr_utf8_valid(m, n))
            r->u.frame.violations |= WSRR_V_BAD_UTF8;
        if (f->msg_opcode == WSRR_OP_TEXT)
            return redacted(t, r, &r->u.frame.message, NULL) < 0 ? -ENOMEM : 0;
        return 0;
    }
    r->u.frame.fflags |= WSRR_FF_INFLATE_ERROR;
    bool takeover = dir == WSRR_DIR_C2S ? !t->st.pmd.client_no_context_takeover
                                        : !t->st.pmd.server_no_context_takeover;
    wsrr_pmd_free(d->inflater); /* whatever state it holds is of no use */
    d->inflater = NULL;
    if (!takeover)
        return 0;
    d->desync = true;
    return note(t, ts,
                "%s messages are no longer inflated: one could not be, and with context takeover "
                "the next ones depend on it",
                wsrr_dir_name(dir));
}

static int emit_frame(struct wsrr_tap *t, enum wsrr_dir dir, const struct wsrr_frame_event *ev,
                      uint64_t ts)
{
    struct tap_dir *d = &t->d[dir];
    const struct wsrr_frame *f = ev->frame;
    struct wsrr_record r = {.kind = WSRR_REC_FRAME};
    struct wsrr_rec_frame *rf = &r.u.frame;
    struct iovec iov;
    int rc = 0;

    rf->dir = (uint8_t)dir;
    rf->fin = f->fin;
    rf->rsv = f->rsv;
    rf->opcode = f->opcode;
    rf->len_width = f->len_width;
    rf->fflags = f->masked ? WSRR_FF_MASKED : 0;
    memcpy(rf->mask, f->mask, 4);
    rf->violations = f->violations;
    rf->len = f->len;

    struct wsrr_span payload;
    bool is_control = f->opcode >= 8;
    /* opcodes 3-7 open messages like text and binary do */
    bool compressed = f->msg_compressed && f->opcode < 8 && t->st.deflate;
    if (is_control && f->len <= WSRR_FRAME_MAX_CONTROL) {
        payload = (struct wsrr_span){ev->data, ev->len}; /* the parser kept it, unmasked */
    } else if (d->direct && (!f->masked || !compressed)) {
        payload = (struct wsrr_span){d->direct, (size_t)f->len};
        if (f->masked) { /* the writer unmasks while copying */
            iov = (struct iovec){(void *)(uintptr_t)d->direct, (size_t)f->len};
            rf->payload_iov = &iov;
            rf->payload_iovcnt = 1;
            rf->payload_wire = true;
        }
    } else {
        if (d->direct) { /* masked and compressed: the inflater needs it unmasked */
            struct wsrr_frame_event whole = {.frame = f, .data = d->direct, .len = (size_t)f->len};
            d->acc_len = 0;
            if (gather(d, &whole, t->o.max_recorded_payload) < 0)
                return -ENOMEM;
        }
        payload = (struct wsrr_span){d->acc, d->acc_len};
    }
    bool truncated = payload.n < f->len;
    if (truncated)
        r.flags |= WSRR_RF_TRUNCATED;
    if (!rf->payload_iov)
        rf->payload = payload;

    if (compressed && (rc = inflate_frame(t, d, dir, f, payload, truncated, &r, ts)) < 0)
        return rc;

    bool text =
        f->msg_opcode == WSRR_OP_TEXT && (f->opcode == WSRR_OP_TEXT || f->opcode == WSRR_OP_CONT);
    if (t->o.redact && text && compressed &&
        (!(f->msg_first && f->msg_final) || (r.flags & WSRR_RF_REDACTED))) {
        /* The compressed bytes would carry what the message's redaction
         * hides. A one-frame message is known whole here, and its bytes are
         * dropped only if it held a secret; a fragment of a longer message
         * is recorded before the message is known, so its bytes are dropped. */
        rf->payload_iov = NULL;
        rf->payload = (struct wsrr_span){NULL, 0};
        r.flags |= WSRR_RF_TRUNCATED | WSRR_RF_REDACTED;
    } else if (t->o.redact && text && !(rf->fflags & WSRR_FF_MESSAGE)) {
        if (rf->payload_iov) { /* masked, straight from the wire: unmask to look at it */
            struct wsrr_frame_event whole = {.frame = f, .data = d->direct, .len = (size_t)f->len};
            d->acc_len = 0;
            if (gather(d, &whole, t->o.max_recorded_payload) < 0)
                return -ENOMEM;
            rf->payload_iov = NULL;
            rf->payload = (struct wsrr_span){d->acc, d->acc_len};
        }
        if (redacted(t, &r, &rf->payload, NULL) < 0)
            return -ENOMEM;
    }

    if (f->opcode == WSRR_OP_CLOSE && !t->st.close_seen[dir]) {
        t->st.close_seen[dir] = true;
        t->st.close_code[dir] = f->close_code;
        if (t->st.first_closer < 0 && !t->proxy_closed) {
            t->st.first_closer = (int)dir;
            t->close_has_code = ev->len >= 2;
            t->close_reason_len = ev->len >= 2 ? ev->len - 2 : 0;
            if (t->close_reason_len > sizeof(t->close_reason))
                t->close_reason_len = sizeof(t->close_reason);
            memcpy(t->close_reason, ev->data + 2, t->close_reason_len);
        }
    }
    t->st.frames[dir]++;
    rc = append(t, &r, ts);

    if (compressed && f->msg_final) {
        if (d->msg)
            evbuffer_drain(d->msg, evbuffer_get_length(d->msg));
        d->msg_error = false;
    }
    d->direct = NULL;
    d->acc_len = 0;
    d->dropped = 0;
    return rc;
}

/* A frame crossed a parser cap: record its header and stop following. */
static int frame_fatal(struct wsrr_tap *t, enum wsrr_dir dir, const struct wsrr_frame_event *ev,
                       uint64_t ts)
{
    struct tap_dir *d = &t->d[dir];
    t->st.broken[dir] = true;
    if (ev->frame) {
        const struct wsrr_frame *f = ev->frame;
        struct wsrr_record r = {.kind = WSRR_REC_FRAME, .flags = WSRR_RF_TRUNCATED};
        r.u.frame.dir = (uint8_t)dir;
        r.u.frame.fin = f->fin;
        r.u.frame.rsv = f->rsv;
        r.u.frame.opcode = f->opcode;
        r.u.frame.len_width = f->len_width;
        r.u.frame.fflags = f->masked ? WSRR_FF_MASKED : 0;
        memcpy(r.u.frame.mask, f->mask, 4);
        r.u.frame.violations = f->violations;
        r.u.frame.len = f->len;
        int rc = append(t, &r, ts);
        if (rc < 0)
            return rc;
    }
    int rc = note(t, ts, "%s frames no longer followed: %s", wsrr_dir_name(dir),
                  wsrr_frame_parser_error(&d->fp));
    return rc < 0 ? rc : -EMSGSIZE;
}

static int feed_frames(struct wsrr_tap *t, enum wsrr_dir dir, const uint8_t *data, size_t len,
                       uint64_t ts)
{
    struct tap_dir *d = &t->d[dir];
    for (;;) {
        struct wsrr_frame_event ev;
        ssize_t n = wsrr_frame_parse(&d->fp, data, len, &ev);
        if (n < 0)
            return frame_fatal(t, dir, &ev, ts);
        data += n;
        len -= (size_t)n;
        int rc = 0;
        switch (ev.type) {
        case WSRR_FRAME_NEED_MORE: return 0;
        case WSRR_FRAME_HEADER:
            d->direct = NULL;
            d->acc_len = 0;
            d->dropped = 0;
            break;
        case WSRR_FRAME_PAYLOAD:
            if (ev.offset == 0 && ev.len == ev.frame->len &&
                ev.frame->len <= t->o.max_recorded_payload)
                d->direct = ev.data;
            else
                rc = gather(d, &ev, t->o.max_recorded_payload);
            break;
        case WSRR_FRAME_END: rc = emit_frame(t, dir, &ev, ts); break;
        }
        if (rc < 0)
            return rc;
    }
}

/* ---- handshake ---- */

static int write_head(struct wsrr_tap *t, enum wsrr_dir dir, uint64_t ts)
{
    const struct wsrr_http_head *h = wsrr_http_parser_head(&t->d[dir].http);
    struct wsrr_record r = {.kind = dir == WSRR_DIR_C2S ? WSRR_REC_REQUEST : WSRR_REC_RESPONSE};
    r.u.http.head = (struct wsrr_span){h->raw, h->raw_len};
    if (redacted(t, &r, &r.u.http.head, h) < 0)
        return -ENOMEM;
    return append(t, &r, ts);
}

/* A 101: frames follow. The response is checked against the upgrade
 * request (still in the client parser) and permessage-deflate is set up as
 * the server accepted it. */
static int upgrade(struct wsrr_tap *t, const struct wsrr_http_head *resp, uint64_t ts)
{
    char err[200];
    int rc = 0;
    t->st.phase = WSRR_TAP_WEBSOCKET;
    if (t->hold) {
        const struct wsrr_http_head *req = wsrr_http_parser_head(&t->d[WSRR_DIR_C2S].http);
        struct wsrr_ws_info info;
        if (wsrr_handshake_check_response(req, resp, &info, err, sizeof(err)) < 0)
            rc = note(t, ts, "the 101 breaks RFC 6455 4.1 (a client must fail the connection): %s",
                      err);
    } else {
        rc = note(t, ts, "a 101 without an upgrade request before it");
    }
    const struct wsrr_http_field *ext = wsrr_http_find(resp, "Sec-WebSocket-Extensions", NULL);
    if (ext && rc == 0) {
        int k = wsrr_pmd_from_response(ext->value, ext->value_len, &t->st.pmd, err, sizeof(err));
        if (k < 0)
            rc = note(t, ts, "Sec-WebSocket-Extensions of the 101 not understood: %s", err);
        else if (k > 0) {
            t->st.deflate = true;
            t->d[0].fp.rsv_allowed = WSRR_RSV1;
            t->d[1].fp.rsv_allowed = WSRR_RSV1;
        }
    }
    return rc;
}

/* Client bytes that arrived after an upgrade request, before its response:
 * held until the response says whether they are frames. */
static int hold_early(struct wsrr_tap *t, const uint8_t *data, size_t len, uint64_t ts)
{
    if (!len)
        return 0;
    if (!t->early && !(t->early = evbuffer_new()))
        return -ENOMEM;
    if (evbuffer_get_length(t->early) + len > t->o.max_early_bytes) {
        t->st.broken[WSRR_DIR_C2S] = true;
        evbuffer_drain(t->early, evbuffer_get_length(t->early));
        return note(t, ts, "client sent over %zu bytes before the response; not followed",
                    t->o.max_early_bytes);
    }
    return evbuffer_add(t->early, data, len) < 0 ? -ENOMEM : 0;
}

static int feed_http(struct wsrr_tap *t, enum wsrr_dir dir, const uint8_t *data, size_t len,
                     uint64_t ts);

/* The response came: the held bytes are parsed now, as frames or as HTTP,
 * and their records carry this moment's time, so that timestamps never go
 * back in record order. */
static int release_early(struct wsrr_tap *t, uint64_t ts)
{
    size_t n = t->early ? evbuffer_get_length(t->early) : 0;
    if (!n || t->st.broken[WSRR_DIR_C2S])
        return 0;
    /* take the bytes out first: parsing them may hold new ones */
    uint8_t *copy = malloc(n);
    if (!copy)
        return -ENOMEM;
    evbuffer_remove(t->early, copy, n);
    int rc = t->st.phase == WSRR_TAP_WEBSOCKET ? feed_frames(t, WSRR_DIR_C2S, copy, n, ts)
                                               : feed_http(t, WSRR_DIR_C2S, copy, n, ts);
    free(copy);
    return rc;
}

/* ---- HTTP exchanges ---- */

static int write_body(struct wsrr_tap *t, enum wsrr_dir dir, bool complete, uint64_t ts)
{
    struct tap_dir *d = &t->d[dir];
    size_t n = d->acc_body ? evbuffer_get_length(d->acc_body) : 0;
    struct wsrr_record r = {.kind = WSRR_REC_BODY};
    r.u.body.dir = (uint8_t)dir;
    r.u.body.bflags = (uint8_t)((complete ? WSRR_BF_COMPLETE : 0) |
                                (d->body.kind == WSRR_BODY_CHUNKED ? WSRR_BF_CHUNKED : 0));
    r.u.body.len = d->body_len;
    r.u.body.data = (struct wsrr_span){n ? evbuffer_pullup(d->acc_body, -1) : NULL, n};
    if (n < d->body_len)
        r.flags |= WSRR_RF_TRUNCATED;
    int rc = 0;
    if (wsrr_utf8_valid(r.u.body.data.p, n) && redacted(t, &r, &r.u.body.data, NULL) < 0)
        rc = -ENOMEM;
    if (rc == 0)
        rc = append(t, &r, ts);
    if (d->acc_body)
        evbuffer_drain(d->acc_body, n);
    d->in_body = false;
    d->body_len = 0;
    return rc;
}

static bool is_upgrade_request(const struct wsrr_http_head *h)
{
    return wsrr_http_has_token(h, "Upgrade", "websocket");
}

/* A request or response head is complete in dir's parser. */
static int http_head(struct wsrr_tap *t, enum wsrr_dir dir, uint64_t ts)
{
    struct tap_dir *d = &t->d[dir];
    const struct wsrr_http_head *h = wsrr_http_parser_head(&d->http);
    char err[200];
    int rc = write_head(t, dir, ts);
    if (rc < 0)
        return rc;
    if (dir == WSRR_DIR_C2S) {
        if (t->mcount < METHOD_QUEUE) {
            int k = (t->mhead + t->mcount++) % METHOD_QUEUE;
            snprintf(t->methods[k], sizeof(t->methods[k]), "%.*s",
                     (int)(h->method_len < 15 ? h->method_len : 15), h->method);
        }
        if (is_upgrade_request(h)) {
            struct wsrr_ws_info info;
            if (wsrr_handshake_check_request(h, &info, err, sizeof(err)) != 0 &&
                (rc = note(t, ts, "not a valid WebSocket upgrade request: %s", err)) < 0)
                return rc;
            t->hold = true; /* what follows depends on the response */
            return 0;       /* the parser keeps the head for checking the 101 */
        }
        if (wsrr_http_body_request(&d->body, h, err, sizeof(err)) < 0) {
            t->st.broken[dir] = true;
            return note(t, ts, "request body framing not followed: %s", err);
        }
    } else {
        t->st.status = h->status;
        if (h->status == 101) {
            rc = upgrade(t, h, ts);
            t->hold = false;
            /* no more heads on this connection: give their memory back (an
             * idle connection should cost little) */
            for (int i = 0; i < 2; i++) {
                wsrr_http_parser_finish(&t->d[i].http);
                wsrr_http_parser_init(&t->d[i].http, i == WSRR_DIR_S2C, 0, 0);
            }
            return rc < 0 ? rc : release_early(t, ts);
        }
        t->st.phase = WSRR_TAP_HTTP;
        char method[16] = "GET";
        if (h->status >= 200 && t->mcount) { /* 1xx are interim: the request waits on */
            snprintf(method, sizeof(method), "%s", t->methods[t->mhead]);
            t->mhead = (t->mhead + 1) % METHOD_QUEUE;
            t->mcount--;
        }
        if (wsrr_http_body_response(&d->body, h, method, strlen(method), err, sizeof(err)) < 0) {
            t->st.broken[dir] = true;
            return note(t, ts, "response body framing not followed: %s", err);
        }
        if (t->hold && h->status >= 200) { /* the upgrade was refused: HTTP goes on */
            t->hold = false;
            wsrr_http_parser_reset(&t->d[WSRR_DIR_C2S].http);
            wsrr_http_parser_reset(&d->http);
            d->in_body = !d->body.done;
            if ((rc = release_early(t, ts)) < 0)
                return rc;
            return 0;
        }
    }
    wsrr_http_parser_reset(&d->http);
    d->in_body = !d->body.done;
    return 0;
}

static int feed_http(struct wsrr_tap *t, enum wsrr_dir dir, const uint8_t *data, size_t len,
                     uint64_t ts)
{
    struct tap_dir *d = &t->d[dir];
    int rc;
    while (len && !t->st.broken[dir]) {
        if (t->st.phase == WSRR_TAP_WEBSOCKET)
            return feed_frames(t, dir, data, len, ts);
        if (dir == WSRR_DIR_C2S && t->hold)
            return hold_early(t, data, len, ts);
        if (d->in_body) {
            struct wsrr_span piece;
            ssize_t n = wsrr_http_body_feed(&d->body, data, len, &piece);
            if (n < 0) {
                t->st.broken[dir] = true;
                if ((rc = write_body(t, dir, false, ts)) < 0)
                    return rc;
                return note(t, ts, "%s body: broken chunked framing; not followed",
                            wsrr_dir_name(dir));
            }
            if (piece.n) {
                if (!d->acc_body && !(d->acc_body = evbuffer_new()))
                    return -ENOMEM;
                size_t have = evbuffer_get_length(d->acc_body);
                size_t room = have < t->o.max_recorded_payload
                                  ? (size_t)(t->o.max_recorded_payload - have)
                                  : 0;
                evbuffer_add(d->acc_body, piece.p, piece.n < room ? piece.n : room);
                d->body_len += piece.n;
            }
            data += n;
            len -= (size_t)n;
            if (d->body.done && (rc = write_body(t, dir, true, ts)) < 0)
                return rc;
            continue;
        }
        ssize_t n = wsrr_http_parse(&d->http, data, len);
        if (n == WSRR_AGAIN)
            return 0;
        if (n < 0) {
            t->st.broken[dir] = true;
            return note(t, ts, "%s head not parsed: %s",
                        dir == WSRR_DIR_C2S ? "request" : "response",
                        wsrr_http_parser_error(&d->http));
        }
        data += n;
        len -= (size_t)n;
        if ((rc = http_head(t, dir, ts)) < 0)
            return rc;
    }
    return 0;
}

int wsrr_tap_feed(struct wsrr_tap *t, enum wsrr_dir dir, const uint8_t *data, size_t len,
                  uint64_t ts)
{
    if (ts == WSRR_TS_NOW)
        ts = t->w ? wsrr_capture_writer_now(t->w) : 0;
    t->st.bytes[dir] += len;
    if (t->st.broken[dir] || !len)
        return 0;
    if (t->st.phase == WSRR_TAP_WEBSOCKET)
        return feed_frames(t, dir, data, len, ts);
    return feed_http(t, dir, data, len, ts);
}

int wsrr_tap_end(struct wsrr_tap *t, uint64_t ts)
{
    if (t->ended)
        return 0;
    t->ended = true;
    if (ts == WSRR_TS_NOW)
        ts = t->w ? wsrr_capture_writer_now(t->w) : 0;
    for (int dir = 0; dir < 2; dir++) {
        struct tap_dir *d = &t->d[dir];
        if (d->in_body) { /* the connection's end ends a body without length */
            int rc = write_body(t, (enum wsrr_dir)dir, d->body.kind == WSRR_BODY_UNTIL_CLOSE, ts);
            if (rc < 0)
                return rc;
        }
    }
    struct wsrr_record r = {.kind = WSRR_REC_CLOSE};
    struct wsrr_rec_close *c = &r.u.close;
    if (t->proxy_closed) {
        c->side = WSRR_SIDE_PROXY;
        if (t->close_has_code) {
            c->cflags |= WSRR_CF_HAS_CODE;
            c->code = t->proxy_code;
        }
        c->reason = (struct wsrr_span){t->close_reason, t->close_reason_len};
    } else if (t->st.first_closer < 0) {
        c->side = WSRR_SIDE_NONE;
    } else {
        c->side = t->st.first_closer == WSRR_DIR_C2S ? WSRR_SIDE_CLIENT : WSRR_SIDE_SERVER;
        if (t->close_has_code) {
            c->cflags |= WSRR_CF_HAS_CODE;
            c->code = t->st.close_code[t->st.first_closer];
        }
        c->reason = (struct wsrr_span){t->close_reason, t->close_reason_len};
    }
    if (t->st.close_seen[0] && t->st.close_seen[1])
        c->cflags |= WSRR_CF_CLEAN;
    return append(t, &r, ts);
}
