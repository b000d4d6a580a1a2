/* frame.c — RFC 6455 frame codec: parser, encoder, masking, close helpers.
 *
 * The parser is a four-state machine over (const uint8_t *, size_t):
 *
 *   HEAD     collect 2..14 header bytes into p->hdr (a header may arrive one
 *            byte at a time), then decode it, judge it and emit HEADER
 *   PAYLOAD  hand out zero-copy slices of the caller's input as PAYLOAD
 *   END      emit END (consumes nothing) with the final violations
 *   FAILED   a size cap was crossed; every call returns p->error
 *
 * Each call returns at most one event, and an event never depends on where
 * the input was split: the header is judged only once complete, and the
 * payload checks (UTF-8, close payload) are incremental. The payload path is
 * pointer arithmetic for binary frames; text frames of uncompressed messages
 * are validated chunk by chunk (unmasked into a stack buffer, as the input is
 * const), control payloads are unmasked into p->ctl.
 */
#include "wsrr/frame.h"

#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

enum { ST_HEAD = 0, ST_PAYLOAD, ST_END, ST_FAILED };

/* What the payload path does with the current frame. */
enum {
    PAY_PLAIN = 0, /* nothing: binary, compressed, orphan, validation off */
    PAY_TEXT,      /* incremental UTF-8 check of an uncompressed text message */
    PAY_CONTROL,   /* keep (unmasked) the first 125 bytes; close: check the reason */
};

/* Bytes unmasked per step when text or a close reason must be read. */
#define UNMASK_CHUNK 512

static bool is_control(uint8_t opcode)
{
    return (opcode & 0x8) != 0;
}

static bool is_reserved_opcode(uint8_t opcode)
{
    return (opcode >= 0x3 && opcode <= 0x7) || opcode >= 0xB;
}

void wsrr_frame_parser_init(struct wsrr_frame_parser *p, enum wsrr_dir dir,
                            const struct wsrr_frame_limits *lim)
{
    memset(p, 0, sizeof(*p));
    p->dir = dir;
    p->validate_utf8 = true;
    if (lim)
        p->lim = *lim;
    if (!p->lim.max_frame)
        p->lim.max_frame = WSRR_FRAME_DEFAULT_MAX_FRAME;
    if (!p->lim.max_message)
        p->lim.max_message = WSRR_FRAME_DEFAULT_MAX_MESSAGE;
    if (!p->lim.max_fragments)
        p->lim.max_fragments = WSRR_FRAME_DEFAULT_MAX_FRAGMENTS;
    p->state = ST_HEAD;
}

const char *wsrr_frame_parser_error(const struct wsrr_frame_parser *p)
{
    return p->error ? p->errmsg : "";
}

bool wsrr_frame_parser_idle(const struct wsrr_frame_parser *p)
{
    return p->state == ST_HEAD && p->hdr_have == 0;
}

/* Header bytes implied by the first two: 2, + 2 or 8 of length, + 4 of mask. */
static uint8_t header_size(const uint8_t *hdr)
{
    uint8_t l7 = hdr[1] & 0x7f;
    return (uint8_t)(2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (hdr[1] & 0x80 ? 4 : 0));
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Decode the complete header in p->hdr into p->cur, flag what is wrong with
 * it, apply the caps and update the message state. Returns 0 or -EMSGSIZE. */
static int header_done(struct wsrr_frame_parser *p)
{
    struct wsrr_frame *f = &p->cur;
    const uint8_t *h = p->hdr;
    uint32_t v = 0;
    uint8_t pos = 2;

    memset(f, 0, sizeof(*f));
    f->fin = (h[0] & 0x80) != 0;
    f->rsv = (uint8_t)((h[0] >> 4) & 0x7);
    f->opcode = h[0] & 0xf;
    f->masked = (h[1] & 0x80) != 0;
    f->len = h[1] & 0x7f;
    f->len_width = 7;
    if (f->len == 126) {
        f->len = wsrr_be16(h + 2);
        f->len_width = 16;
        pos = 4;
        if (f->len < 126)
            v |= WSRR_V_LEN_NOT_MINIMAL;
    } else if (f->len == 127) {
        f->len = wsrr_be64(h + 2);
        f->len_width = 64;
        pos = 10;
        if (f->len >> 63)
            v |= WSRR_V_LEN_TOP_BIT;
        if (f->len <= 0xffff)
            v |= WSRR_V_LEN_NOT_MINIMAL;
    }
    if (f->masked)
        memcpy(f->mask, h + pos, 4);
    f->hdr_len = p->hdr_need;
    p->frames++;

    if (is_reserved_opcode(f->opcode))
        v |= WSRR_V_RESERVED_OPCODE;
    if ((f->rsv & WSRR_RSV1) &&
        (!(p->rsv_allowed & WSRR_RSV1) || is_control(f->opcode) || f->opcode == WSRR_OP_CONT))
        v |= WSRR_V_RSV1;
    if ((f->rsv & WSRR_RSV2) && !(p->rsv_allowed & WSRR_RSV2))
        v |= WSRR_V_RSV2;
    if ((f->rsv & WSRR_RSV3) && !(p->rsv_allowed & WSRR_RSV3))
        v |= WSRR_V_RSV3;
    if (p->dir == WSRR_DIR_C2S && !f->masked)
        v |= WSRR_V_MASK_MISSING;
    if (p->dir == WSRR_DIR_S2C && f->masked)
        v |= WSRR_V_MASK_UNEXPECTED;
    if (p->closed)
        v |= WSRR_V_AFTER_CLOSE;

    /* Caps, in the order frame, fragments, message size; only the first
     * one crossed is flagged. A length with the top bit set is over any
     * limit. */
    bool fatal = false;
    if ((v & WSRR_V_LEN_TOP_BIT) || f->len > p->lim.max_frame) {
        v |= WSRR_V_FRAME_TOO_BIG;
        snprintf(p->errmsg, sizeof(p->errmsg),
                 "frame %" PRIu64 ": declared payload length %" PRIu64 " exceeds the %" PRIu64
                 "-byte frame limit",
                 p->frames, f->len, p->lim.max_frame);
        fatal = true;
    }

    if (is_control(f->opcode)) {
        if (f->len > WSRR_FRAME_MAX_CONTROL)
            v |= WSRR_V_CONTROL_TOO_LONG;
        if (!f->fin)
            v |= WSRR_V_CONTROL_FRAGMENTED;
        f->msg_opcode = f->opcode;
        if (f->opcode == WSRR_OP_CLOSE)
            p->closed = true;
        p->ctl_len = 0;
        p->ctl_utf8_state = WSRR_UTF8_ACCEPT;
        p->pay_mode = PAY_CONTROL;
    } else if (f->opcode == WSRR_OP_CONT && !p->in_message) {
        v |= WSRR_V_ORPHAN_CONT;
        f->msg_final = f->fin;
        p->pay_mode = PAY_PLAIN;
    } else {
        bool cont = f->opcode == WSRR_OP_CONT;
        if (!cont) {
            /* A new message (abandoning an unfinished one, if any). */
            if (p->in_message)
                v |= WSRR_V_EXPECTED_CONT;
            p->msg_opcode = f->opcode;
            p->msg_compressed = (f->rsv & WSRR_RSV1) && (p->rsv_allowed & WSRR_RSV1);
            p->msg_frames = 0;
            p->msg_size = 0;
            p->utf8_state = WSRR_UTF8_ACCEPT;
            p->msg_utf8_bad = false;
        }
        f->msg_opcode = p->msg_opcode;
        f->msg_compressed = p->msg_compressed;
        f->msg_first = !cont;
        f->msg_final = f->fin;
        f->msg_index = p->msg_frames;
        if (!fatal && p->msg_frames >= p->lim.max_fragments) {
            v |= WSRR_V_TOO_MANY_FRAGMENTS;
            snprintf(p->errmsg, sizeof(p->errmsg),
                     "frame %" PRIu64 ": message exceeds the %" PRIu32 "-fragment limit", p->frames,
                     p->lim.max_fragments);
            fatal = true;
        }
        /* msg_size <= max_message holds, so this cannot wrap. */
        if (!fatal && f->len > p->lim.max_message - p->msg_size) {
            v |= WSRR_V_MESSAGE_TOO_BIG;
            snprintf(p->errmsg, sizeof(p->errmsg),
                     "frame %" PRIu64 ": message size %" PRIu64 " exceeds the %" PRIu64
                     "-byte message limit",
                     p->frames, sat_add(p->msg_size, f->len), p->lim.max_message);
            fatal = true;
        }
        if (!fatal) {
            p->msg_frames++;
            p->msg_size += f->len;
            p->in_message = !f->fin;
        }
        p->pay_mode = f->msg_opcode == WSRR_OP_TEXT && !f->msg_compressed && p->validate_utf8
                          ? PAY_TEXT
                          : PAY_PLAIN;
    }

    f->violations = v;
    if (fatal) {
        p->error = -EMSGSIZE;
        p->state = ST_FAILED;
        return p->error;
    }
    p->payload_done = 0;
    p->hdr_have = 0;
    p->state = f->len ? ST_PAYLOAD : ST_END;
    return 0;
}

/* UTF-8 check of a text chunk at payload offset p->payload_done. */
static void payload_text(struct wsrr_frame_parser *p, const uint8_t *buf, size_t n)
{
    uint32_t st = p->utf8_state;

    if (p->msg_utf8_bad)
        return;
    if (!p->cur.masked) {
        st = wsrr_utf8_feed(st, buf, n);
    } else {
        uint8_t tmp[UNMASK_CHUNK];
        for (size_t i = 0; i < n && st != WSRR_UTF8_REJECT;) {
            size_t k = n - i < sizeof(tmp) ? n - i : sizeof(tmp);
            wsrr_frame_mask(tmp, buf + i, k, p->cur.mask, p->payload_done + i);
            st = wsrr_utf8_feed(st, tmp, k);
            i += k;
        }
    }
    p->utf8_state = st;
    if (st == WSRR_UTF8_REJECT) {
        p->cur.violations |= WSRR_V_BAD_UTF8;
        p->msg_utf8_bad = true;
    }
}

/* Keep the first 125 bytes of a control payload unmasked in p->ctl and check
 * a close reason (payload offset 2 onwards, however long) as UTF-8. */
static void payload_control(struct wsrr_frame_parser *p, const uint8_t *buf, size_t n)
{
    struct wsrr_frame *f = &p->cur;
    uint64_t off = p->payload_done;
    size_t keep = 0;

    if (off < WSRR_FRAME_MAX_CONTROL) {
        keep = WSRR_FRAME_MAX_CONTROL - (size_t)off;
        if (keep > n)
            keep = n;
        if (f->masked)
            wsrr_frame_mask(p->ctl + off, buf, keep, f->mask, off);
        else
            memcpy(p->ctl + off, buf, keep);
        p->ctl_len = (uint8_t)(off + keep);
    }
    if (f->opcode != WSRR_OP_CLOSE || p->ctl_utf8_state == WSRR_UTF8_REJECT)
        return;

    uint32_t st = p->ctl_utf8_state;
    if (keep && off + keep > 2) {
        size_t from = off < 2 ? 2 : (size_t)off;
        st = wsrr_utf8_feed(st, p->ctl + from, (size_t)(off + keep) - from);
    }
    /* The part of an oversized close payload that is not kept. */
    for (size_t i = keep; i < n && st != WSRR_UTF8_REJECT;) {
        uint8_t tmp[UNMASK_CHUNK];
        size_t k = n - i < sizeof(tmp) ? n - i : sizeof(tmp);
        if (f->masked)
            wsrr_frame_mask(tmp, buf + i, k, f->mask, off + i);
        else
            memcpy(tmp, buf + i, k);
        st = wsrr_utf8_feed(st, tmp, k);
        i += k;
    }
    p->ctl_utf8_state = st;
    if (st == WSRR_UTF8_REJECT)
        f->violations |= WSRR_V_BAD_UTF8;
}

/* The END event: final checks that need the whole frame or message. */
static void frame_end(struct wsrr_frame_parser *p, struct wsrr_frame_event *ev)
{
    struct wsrr_frame *f = &p->cur;

    if (p->pay_mode == PAY_CONTROL) {
        if (f->opcode == WSRR_OP_CLOSE) {
            if (f->len == 1) {
                f->violations |= WSRR_V_CLOSE_1_BYTE;
            } else if (f->len >= 2) {
                f->close_code = wsrr_be16(p->ctl);
                if (!wsrr_close_code_valid(f->close_code))
                    f->violations |= WSRR_V_CLOSE_BAD_CODE;
                if (p->ctl_utf8_state != WSRR_UTF8_ACCEPT)
                    f->violations |= WSRR_V_BAD_UTF8;
            }
        }
        ev->data = p->ctl;
        ev->len = p->ctl_len;
    } else if (p->pay_mode == PAY_TEXT && f->fin && !p->msg_utf8_bad &&
               p->utf8_state != WSRR_UTF8_ACCEPT) {
        /* The message ends inside a sequence. */
        f->violations |= WSRR_V_BAD_UTF8;
        p->msg_utf8_bad = true;
    }
    ev->type = WSRR_FRAME_END;
    ev->frame = f;
    p->state = ST_HEAD;
}

ssize_t wsrr_frame_parse(struct wsrr_frame_parser *p, const uint8_t *buf, size_t len,
                         struct wsrr_frame_event *ev)
{
    ev->type = WSRR_FRAME_NEED_MORE;
    ev->frame = NULL;
    ev->data = NULL;
    ev->len = 0;
    ev->offset = 0;

    switch (p->state) {
    case ST_PAYLOAD: {
        uint64_t left = p->cur.len - p->payload_done;
        size_t n = left < len ? (size_t)left : len;
        if (n == 0)
            return 0;
        ev->type = WSRR_FRAME_PAYLOAD;
        ev->frame = &p->cur;
        ev->data = buf;
        ev->len = n;
        ev->offset = p->payload_done;
        if (p->pay_mode == PAY_TEXT)
            payload_text(p, buf, n);
        else if (p->pay_mode == PAY_CONTROL)
            payload_control(p, buf, n);
        p->payload_done += n;
        if (p->payload_done == p->cur.len)
            p->state = ST_END;
        return (ssize_t)n;
    }
    case ST_END: frame_end(p, ev); return 0;
    case ST_FAILED: ev->frame = &p->cur; return p->error;
    default: break;
    }

    /* ST_HEAD: the first two bytes say how many more there are. */
    size_t used = 0;
    if (!len)
        return 0;
    if (p->hdr_have < 2) {
        while (p->hdr_have < 2 && used < len)
            p->hdr[p->hdr_have++] = buf[used++];
        if (p->hdr_have < 2)
            return (ssize_t)used;
        p->hdr_need = header_size(p->hdr);
    }
    size_t take = (size_t)(p->hdr_need - p->hdr_have);
    if (take > len - used)
        take = len - used;
    memcpy(p->hdr + p->hdr_have, buf + used, take);
    p->hdr_have = (uint8_t)(p->hdr_have + take);
    used += take;
    if (p->hdr_have < p->hdr_need)
        return (ssize_t)used;

    ev->frame = &p->cur;
    int rc = header_done(p);
    if (rc < 0)
        return rc;
    ev->type = WSRR_FRAME_HEADER;
    return (ssize_t)used;
}

/* Masking. The key is rotated to the payload offset once and widened to 64
 * bits, so the loop is a load, an XOR and a store per 8 bytes (memcpy keeps
 * unaligned access legal; compilers turn it into plain moves). */
void wsrr_frame_mask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                     uint64_t offset)
{
    uint8_t k8[8];
    uint64_t k;
    size_t i = 0;

    for (unsigned j = 0; j < 8; j++)
        k8[j] = key[(offset + j) & 3];
    memcpy(&k, k8, 8);
    for (; n - i >= 32; i += 32) {
        uint64_t w[4];
        memcpy(w, src + i, 32);
        w[0] ^= k;
        w[1] ^= k;
        w[2] ^= k;
        w[3] ^= k;
        memcpy(dst + i, w, 32);
    }
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k;
        memcpy(dst + i, &w, 8);
    }
    /* i is a multiple of 8 here, so the key phase is i & 3. */
    for (; i < n; i++)
        dst[i] = src[i] ^ k8[i & 3];
}

/* Encoder. */

size_t wsrr_frame_encode_header(uint8_t *out, const struct wsrr_frame *f)
{
    uint64_t len = f->len;
    unsigned width = f->len_width;
    size_t pos;

    if (width == 16 && len > 0xffff)
        width = 64;
    if (width != 16 && width != 64 && !(width == 7 && len <= 125))
        width = len <= 125 ? 7 : len <= 0xffff ? 16 : 64;

    out[0] = (uint8_t)((f->fin ? 0x80 : 0) | (f->rsv & 0x7) << 4 | (f->opcode & 0xf));
    out[1] = f->masked ? 0x80 : 0;
    if (width == 7) {
        out[1] |= (uint8_t)len;
        pos = 2;
    } else if (width == 16) {
        out[1] |= 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        pos = 4;
    } else {
        out[1] |= 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        pos = 10;
    }
    if (f->masked) {
        memcpy(out + pos, f->mask, 4);
        pos += 4;
    }
    return pos;
}

size_t wsrr_frame_encode(uint8_t *out, size_t cap, const struct wsrr_frame *f,
                         const uint8_t *payload, size_t n)
{
    uint8_t hdr[WSRR_FRAME_MAX_HEADER];
    size_t h = wsrr_frame_encode_header(hdr, f);

    if (n > SIZE_MAX - h)
        return SIZE_MAX;
    if (h + n > cap)
        return h + n;
    memcpy(out, hdr, h);
    if (!n)
        return h;
    if (f->masked)
        wsrr_frame_mask(out + h, payload, n, f->mask, 0);
    else
        memcpy(out + h, payload, n);
    return h + n;
}

void wsrr_frame_init(struct wsrr_frame *f, enum wsrr_dir dir, uint8_t opcode, uint64_t len)
{
    memset(f, 0, sizeof(*f));
    f->fin = true;
    f->opcode = opcode & 0xf;
    f->len = len;
    if (dir == WSRR_DIR_C2S) {
        f->masked = true;
        /* RFC 6455 wants an unpredictable key; a fixed one would be a
         * silent security bug, so no weak fallback. */
        if (RAND_bytes(f->mask, 4) != 1 && getentropy(f->mask, 4) != 0)
            abort();
    }
}

/* Close frames. */

bool wsrr_close_code_valid(uint16_t code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

const char *wsrr_close_code_name(uint16_t code)
{
    static const char *const names[] = {
        "normal closure",      /* 1000 */
        "going away",          /* 1001 */
        "protocol error",      /* 1002 */
        "unsupported data",    /* 1003 */
        "reserved",            /* 1004 */
        "no status",           /* 1005 */
        "abnormal closure",    /* 1006 */
        "invalid payload",     /* 1007 */
        "policy violation",    /* 1008 */
        "message too big",     /* 1009 */
        "mandatory extension", /* 1010 */
        "internal error",      /* 1011 */
        "service restart",     /* 1012 */
        "try again later",     /* 1013 */
        "bad gateway",         /* 1014 */
        "TLS handshake",       /* 1015 */
    };

    if (code >= 1000 && code <= 1015)
        return names[code - 1000];
    if (code < 1000 || code >= 5000)
        return "invalid";
    if (code < 3000)
        return "reserved";
    return code < 4000 ? "application" : "private use";
}

size_t wsrr_close_payload(uint8_t *out, uint16_t code, const char *reason, size_t reason_len)
{
    size_t n = reason ? reason_len : 0;

    if (n > WSRR_FRAME_MAX_CONTROL - 2) {
        n = WSRR_FRAME_MAX_CONTROL - 2;
        /* Do not cut inside a sequence: back up to the lead byte of the
         * character that straddles the cut. */
        while (n > 0 && ((uint8_t)reason[n] & 0xc0) == 0x80)
            n--;
    }
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (n)
        memcpy(out + 2, reason, n);
    return n + 2;
}

/* Names. */

static const char *const violation_names[WSRR_V_COUNT] = {
    "reserved_opcode",
    "rsv1",
    "rsv2",
    "rsv3",
    "control_too_long",
    "control_fragmented",
    "len_top_bit",
    "len_not_minimal",
    "mask_missing",
    "mask_unexpected",
    "orphan_continuation",
    "expected_continuation",
    "bad_utf8",
    "close_bad_code",
    "close_1_byte",
    "after_close",
    "frame_too_big",
    "message_too_big",
    "too_many_fragments",
};

const char *wsrr_frame_violation_name(uint32_t bit)
{
    for (unsigned i = 0; i < WSRR_V_COUNT; i++)
        if (bit == 1u << i)
            return violation_names[i];
    return NULL;
}

uint32_t wsrr_frame_violation_by_name(const char *name, size_t len)
{
    for (unsigned i = 0; i < WSRR_V_COUNT; i++)
        if (strlen(violation_names[i]) == len && memcmp(violation_names[i], name, len) == 0)
            return 1u << i;
    return 0;
}

/* Append s to out[0..cap) as snprintf would: *len counts every byte, out
 * gets what fits and stays NUL-terminated. */
static void append(char *out, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);

    if (*len < cap) {
        size_t room = cap - *len - 1;
        size_t k = n < room ? n : room;
        memcpy(out + *len, s, k);
        out[*len + k] = '\0';
    }
    *len += n;
}

int wsrr_frame_violations_format(uint32_t v, char *out, size_t cap)
{
    size_t len = 0;

    if (cap)
        out[0] = '\0';
    for (unsigned i = 0; i < 32; i++) {
        if (!(v & 1u << i))
            continue;
        char unknown[8];
        const char *name = unknown;
        if (i < WSRR_V_COUNT)
            name = violation_names[i];
        else
            snprintf(unknown, sizeof(unknown), "bit%u", i);
        if (len)
            append(out, cap, &len, ",");
        append(out, cap, &len, name);
    }
    return (int)len;
}

const char *wsrr_opcode_name(uint8_t opcode)
{
    static const char *const names[16] = {
        "cont",  "text", "binary", "op3",  "op4",  "op5",  "op6",  "op7",
        "close", "ping", "pong",   "op11", "op12", "op13", "op14", "op15",
    };
    return opcode < 16 ? names[opcode] : "invalid";
}
