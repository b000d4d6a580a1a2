/* fuzz_frame.c — libFuzzer target for the frame codec (lib/frame.c, utf8.c).
 *
 * Input: three bytes of setup, then the stream.
 *   byte 0: bit 0 direction (server sends), bits 1-2 rsv_allowed (none,
 *           RSV1, RSV1|RSV2, all), bit 3 UTF-8 validation off
 *   byte 1: limits: bits 0-1 max_frame, 2-3 max_message, 4-5 max_fragments,
 *           bits 6-7 == 0 keeps the defaults
 *   byte 2: the split schedule: bits 0-2 the largest piece (2 to 256
 *           bytes), all of it the seed
 *
 * The stream is parsed whole, in the split schedule and (when short) one
 * byte at a time; the three records must be identical, or the target
 * aborts (a differential check). Each header of the whole parse is encoded
 * again and must give back the bytes it was parsed from, and parse back to
 * the same wire fields. The UTF-8 validator is checked the same way: whole
 * versus split.
 */
#include "wsrr/frame.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct rframe {
    struct wsrr_frame h;
    bool ended;
    uint32_t v_end;
    uint16_t close_code;
    uint64_t plen;
    uint64_t phash;
    uint8_t ctl[WSRR_FRAME_MAX_CONTROL];
    size_t ctl_len;
};

struct rec {
    struct rframe *f;
    size_t n, cap;
    ssize_t err;
    char errmsg[160];
    struct wsrr_frame errframe;
    bool idle;
    const uint8_t *base; /* whole parse: the input, for the encoder check */
};

struct cfg {
    enum wsrr_dir dir;
    uint8_t rsv_allowed;
    bool no_utf8;
    struct wsrr_frame_limits lim;
};

static void die(const char *what, size_t frame)
{
    fprintf(stderr, "fuzz_frame: %s (frame %zu)\n", what, frame);
    abort();
}

static bool wire_eq(const struct wsrr_frame *a, const struct wsrr_frame *b)
{
    return a->fin == b->fin && a->rsv == b->rsv && a->opcode == b->opcode &&
           a->masked == b->masked && memcmp(a->mask, b->mask, 4) == 0 &&
           a->len_width == b->len_width && a->len == b->len;
}

static bool frame_eq(const struct wsrr_frame *a, const struct wsrr_frame *b)
{
    return wire_eq(a, b) && a->hdr_len == b->hdr_len && a->violations == b->violations &&
           a->msg_opcode == b->msg_opcode && a->msg_compressed == b->msg_compressed &&
           a->msg_first == b->msg_first && a->msg_final == b->msg_final &&
           a->msg_index == b->msg_index && a->close_code == b->close_code;
}

static void setup(struct wsrr_frame_parser *p, const struct cfg *c)
{
    wsrr_frame_parser_init(p, c->dir, &c->lim);
    p->rsv_allowed = c->rsv_allowed;
    p->validate_utf8 = !c->no_utf8;
}

/* The header just parsed, encoded again, must be the bytes it came from
 * and must parse back to the same wire fields. */
static void check_roundtrip(const struct cfg *c, const struct wsrr_frame *f, const uint8_t *wire)
{
    uint8_t out[WSRR_FRAME_MAX_HEADER];
    size_t n = wsrr_frame_encode_header(out, f);
    if (n != f->hdr_len || memcmp(out, wire, n) != 0)
        die("re-encoded header differs from the input", 0);

    struct wsrr_frame_parser p;
    struct wsrr_frame_event ev;
    setup(&p, c);
    /* (It passed the caps in the stream, so it passes them alone.) */
    ssize_t rc = wsrr_frame_parse(&p, out, n, &ev);
    if (rc != (ssize_t)n || ev.type != WSRR_FRAME_HEADER || !wire_eq(ev.frame, f))
        die("encoded header does not parse back", 0);
}

static void feed(const struct cfg *c, struct wsrr_frame_parser *p, struct rec *r,
                 const uint8_t *buf, size_t len)
{
    size_t off = 0;
    for (;;) {
        struct wsrr_frame_event ev;
        ssize_t rc = wsrr_frame_parse(p, buf + off, len - off, &ev);
        if (rc < 0) {
            if (r->err && r->err != rc)
                die("error changed", r->n);
            if (!ev.frame)
                die("error without a frame", r->n);
            if (!r->err) {
                r->err = rc;
                snprintf(r->errmsg, sizeof(r->errmsg), "%s", wsrr_frame_parser_error(p));
                r->errframe = *ev.frame;
                if (!r->errmsg[0])
                    die("error without a message", r->n);
            }
            return;
        }
        if ((size_t)rc > len - off)
            die("consumed more than given", r->n);
        struct rframe *f = r->n ? &r->f[r->n - 1] : NULL;
        switch (ev.type) {
        case WSRR_FRAME_NEED_MORE:
            if (off + (size_t)rc != len)
                die("NEED_MORE before the end of the input", r->n);
            return;
        case WSRR_FRAME_HEADER:
            if (f && !f->ended)
                die("HEADER inside a frame", r->n);
            if (r->n == r->cap) {
                r->cap = r->cap ? r->cap * 2 : 16;
                r->f = realloc(r->f, r->cap * sizeof(*r->f));
                if (!r->f)
                    abort();
            }
            f = &r->f[r->n++];
            memset(f, 0, sizeof(*f));
            f->h = *ev.frame;
            f->phash = 1469598103934665603ULL;
            if (r->base) {
                if ((size_t)rc != ev.frame->hdr_len)
                    die("whole parse: header not consumed in one call", r->n);
                check_roundtrip(c, ev.frame, buf + off);
            }
            break;
        case WSRR_FRAME_PAYLOAD:
            if (!f || f->ended)
                die("PAYLOAD outside a frame", r->n);
            if (ev.data != buf + off || ev.len != (size_t)rc || !ev.len)
                die("PAYLOAD slice", r->n);
            if (ev.offset != f->plen || ev.offset + ev.len > f->h.len)
                die("PAYLOAD offset", r->n);
            for (size_t i = 0; i < ev.len; i += 256) {
                uint8_t tmp[256];
                size_t k = ev.len - i < sizeof(tmp) ? ev.len - i : sizeof(tmp);
                if (f->h.masked)
                    wsrr_frame_mask(tmp, ev.data + i, k, f->h.mask, ev.offset + i);
                else
                    memcpy(tmp, ev.data + i, k);
                for (size_t j = 0; j < k; j++)
                    f->phash = (f->phash ^ tmp[j]) * 1099511628211ULL;
            }
            f->plen += ev.len;
            break;
        case WSRR_FRAME_END:
            if (!f || f->ended || rc != 0 || f->plen != f->h.len)
                die("END", r->n);
            f->ended = true;
            f->v_end = ev.frame->violations;
            f->close_code = ev.frame->close_code;
            if ((f->v_end & f->h.violations) != f->h.violations)
                die("violations lost between HEADER and END", r->n);
            if (f->h.opcode & 8) {
                if (ev.len > WSRR_FRAME_MAX_CONTROL || (ev.len && !ev.data))
                    die("control END data", r->n);
                f->ctl_len = ev.len;
                if (ev.len)
                    memcpy(f->ctl, ev.data, ev.len);
            }
            break;
        default: die("unknown event", r->n);
        }
        off += (size_t)rc;
    }
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Parse s whole (chunk == 0), in random pieces of 1..chunk bytes drawn
 * from seed, or one byte at a time (chunk == 1). Random pieces are
 * exact-size copies so ASan sees reads past them. */
static void parse(const struct cfg *c, const uint8_t *s, size_t n, size_t chunk, uint64_t seed,
                  struct rec *r)
{
    struct wsrr_frame_parser p;
    setup(&p, c);
    memset(r, 0, sizeof(*r));
    if (!chunk) {
        r->base = s;
        feed(c, &p, r, s, n);
    } else {
        for (size_t pos = 0; pos < n;) {
            size_t k = 1 + (size_t)(xorshift(&seed) % chunk);
            if (k > n - pos)
                k = n - pos;
            if (chunk == 1) {
                feed(c, &p, r, s + pos, k); /* the input itself ends where it must */
            } else {
                uint8_t *piece = malloc(k);
                if (!piece)
                    abort();
                memcpy(piece, s + pos, k);
                feed(c, &p, r, piece, k);
                free(piece);
            }
            pos += k;
        }
    }
    feed(c, &p, r, (const uint8_t *)"", 0);
    r->idle = wsrr_frame_parser_idle(&p);
    if (r->err && r->idle)
        die("idle after a fatal error", r->n);
}

static void compare(const struct rec *a, const struct rec *b, const char *how)
{
    if (a->n != b->n)
        die(how, a->n < b->n ? a->n : b->n);
    for (size_t i = 0; i < a->n; i++) {
        const struct rframe *x = &a->f[i], *y = &b->f[i];
        if (!frame_eq(&x->h, &y->h) || x->ended != y->ended || x->v_end != y->v_end ||
            x->close_code != y->close_code || x->plen != y->plen || x->phash != y->phash ||
            x->ctl_len != y->ctl_len || memcmp(x->ctl, y->ctl, x->ctl_len) != 0)
            die(how, i);
    }
    if (a->err != b->err || strcmp(a->errmsg, b->errmsg) != 0 || a->idle != b->idle ||
        (a->err && !frame_eq(&a->errframe, &b->errframe)))
        die(how, a->n);
}

static const uint64_t frame_caps[4] = {16, 130, 1000, 70000};
static const uint64_t message_caps[4] = {20, 300, 5000, 100000};
static const uint32_t fragment_caps[4] = {1, 2, 5, 100};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    struct cfg c;
    memset(&c, 0, sizeof(c));
    c.dir = data[0] & 1 ? WSRR_DIR_S2C : WSRR_DIR_C2S;
    static const uint8_t rsv[4] = {0, WSRR_RSV1, WSRR_RSV1 | WSRR_RSV2, 7};
    c.rsv_allowed = rsv[(data[0] >> 1) & 3];
    c.no_utf8 = (data[0] >> 3) & 1;
    if (data[1] >> 6) {
        c.lim.max_frame = frame_caps[data[1] & 3];
        c.lim.max_message = message_caps[(data[1] >> 2) & 3];
        c.lim.max_fragments = fragment_caps[(data[1] >> 4) & 3];
    }
    uint64_t seed = 0x9e3779b97f4a7c15ULL * (data[2] + 1u);
    size_t chunk = (size_t)2 << (data[2] & 7); /* pieces of 1..2-256 bytes */
    const uint8_t *s = data + 3;
    size_t n = size - 3;

    struct rec whole, other;
    parse(&c, s, n, 0, 0, &whole);
    parse(&c, s, n, chunk, seed, &other);
    compare(&whole, &other, "split parse differs from the whole parse");
    free(other.f);
    if (n <= 4096) {
        parse(&c, s, n, 1, 0, &other);
        compare(&whole, &other, "byte-by-byte parse differs from the whole parse");
        free(other.f);
    }
    free(whole.f);

    /* The UTF-8 validator: whole versus the same split schedule. */
    uint32_t st = WSRR_UTF8_ACCEPT;
    for (size_t pos = 0; pos < n;) {
        size_t k = 1 + (size_t)(xorshift(&seed) % chunk);
        if (k > n - pos)
            k = n - pos;
        st = wsrr_utf8_feed(st, s + pos, k);
        pos += k;
    }
    if (st != wsrr_utf8_feed(WSRR_UTF8_ACCEPT, s, n) ||
        wsrr_utf8_valid(s, n) != (st == WSRR_UTF8_ACCEPT))
        die("UTF-8 validator depends on the split", 0);
    return 0;
}
