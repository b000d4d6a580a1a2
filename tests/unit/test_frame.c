/* test_frame.c — the RFC 6455 frame codec (lib/frame.c).
 *
 * The RFC 6455 section 5.7 examples byte for byte, the encoder, masking and
 * the name helpers, then every item of BAD-INPUTS.md sections 1-7 as its own
 * case. Each case builds a byte stream (with a small encoder written here, so
 * the parser is not only checked against its own encoder), runs it in both
 * directions where direction matters, and parses it whole, split in two at
 * every byte position, one byte at a time and in random chunks; every parse
 * must give the same record (headers, unmasked payload, END violations,
 * close code, error) and the whole parse must match the expectations. Each
 * piece handed to the parser is an exact-size heap copy, so ASan sees any
 * read past it.
 */
#include "check.h"
#include "wsrr/frame.h"

#include <stdarg.h>
#include <stdbool.h>

#define LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- building streams ------------------------------------------------- */

struct buf {
    uint8_t *d;
    size_t n, cap;
};

static void b_put(struct buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->d = realloc(b->d, cap);
        REQUIRE(b->d);
        b->cap = cap;
    }
    if (n)
        memcpy(b->d + b->n, p, n);
    b->n += n;
}

static void b_free(struct buf *b)
{
    free(b->d);
    b->d = NULL;
    b->n = b->cap = 0;
}

static enum wsrr_dir g_dir; /* direction of the case being run */
static uint8_t g_key;       /* varies the mask keys */

/* Append a frame exactly as described: `width` 7/16/64 (0: minimal), the
 * declared length `len`, then n payload bytes (masked when `masked`). */
static void frame_raw(struct buf *b, bool fin, uint8_t rsv, uint8_t op, bool masked, unsigned width,
                      uint64_t len, const void *payload, size_t n)
{
    uint8_t h[14];
    size_t hl = 2;
    if (!width)
        width = len < 126 ? 7 : len < 65536 ? 16 : 64;
    h[0] = (uint8_t)((fin ? 0x80 : 0) | rsv << 4 | op);
    h[1] = masked ? 0x80 : 0;
    if (width == 7) {
        h[1] |= (uint8_t)len;
    } else if (width == 16) {
        h[1] |= 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        hl = 4;
    } else {
        h[1] |= 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        hl = 10;
    }
    uint8_t key[4] = {(uint8_t)(0x37 + g_key), 0xfa, (uint8_t)(0x21 ^ g_key), 0x3d};
    g_key++;
    if (masked) {
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    b_put(b, h, hl);
    const uint8_t *p = payload;
    for (size_t i = 0; i < n; i += 4096) {
        uint8_t tmp[4096];
        size_t k = n - i < sizeof(tmp) ? n - i : sizeof(tmp);
        for (size_t j = 0; j < k; j++)
            tmp[j] = (uint8_t)(p[i + j] ^ (masked ? key[(i + j) & 3] : 0));
        b_put(b, tmp, k);
    }
}

/* A frame masked as the current direction requires, minimal length. */
static void frame_rsv(struct buf *b, bool fin, uint8_t rsv, uint8_t op, const void *p, size_t n)
{
    frame_raw(b, fin, rsv, op, g_dir == WSRR_DIR_C2S, 0, n, p, n);
}

static void frame(struct buf *b, bool fin, uint8_t op, const void *p, size_t n)
{
    frame_rsv(b, fin, 0, op, p, n);
}

#define FR(b, fin, op, str) frame(b, fin, op, str, sizeof(str) - 1)

static void close_frame(struct buf *b, uint16_t code, const char *reason, size_t n)
{
    uint8_t p[300];
    REQUIRE(n + 2 <= sizeof(p));
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    memcpy(p + 2, reason, n);
    frame(b, true, WSRR_OP_CLOSE, p, n + 2);
}

/* The valid frames appended after a bad one: a ping and a text message. */
static void trailer(struct buf *b)
{
    FR(b, true, WSRR_OP_PING, "tail");
    FR(b, true, WSRR_OP_TEXT, "ok\xc3\xa9");
}

/* ---- recording parses ------------------------------------------------- */

#define KEEP 128 /* unmasked payload bytes kept per frame */

struct rframe {
    struct wsrr_frame h; /* as at HEADER */
    bool ended;
    uint32_t v_end;
    uint16_t close_code;
    uint64_t plen;  /* payload bytes seen */
    uint64_t phash; /* FNV-1a of the unmasked payload */
    uint8_t head[KEEP];
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
    bool broken; /* an event-level invariant failed */
};

struct cfg {
    enum wsrr_dir dir;
    uint8_t rsv_allowed;
    bool no_utf8;
    struct wsrr_frame_limits lim;
};

static void rec_free(struct rec *r)
{
    free(r->f);
    memset(r, 0, sizeof(*r));
}

static void invariant(struct rec *r, bool ok, const char *what)
{
    check_count++;
    if (!ok) {
        check_failures++;
        if (!r->broken)
            fprintf(stderr, "event invariant failed: %s (frame %zu)\n", what, r->n);
        r->broken = true;
    }
}

/* Parse one piece, appending to the record. */
static void feed(struct wsrr_frame_parser *p, struct rec *r, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    for (;;) {
        struct wsrr_frame_event ev;
        ssize_t rc = wsrr_frame_parse(p, buf + off, len - off, &ev);
        if (rc < 0) {
            invariant(r, !r->err || r->err == rc, "error changes");
            invariant(r, ev.frame != NULL, "error without frame");
            if (!r->err) {
                r->err = rc;
                snprintf(r->errmsg, sizeof(r->errmsg), "%s", wsrr_frame_parser_error(p));
                if (ev.frame)
                    r->errframe = *ev.frame;
            }
            return;
        }
        invariant(r, (size_t)rc <= len - off, "consumed more than given");
        struct rframe *f = r->n ? &r->f[r->n - 1] : NULL;
        switch (ev.type) {
        case WSRR_FRAME_NEED_MORE:
            invariant(r, off + (size_t)rc == len, "NEED_MORE before the end of input");
            return;
        case WSRR_FRAME_HEADER:
            invariant(r, !f || f->ended, "HEADER inside a frame");
            if (r->n == r->cap) {
                r->cap = r->cap ? r->cap * 2 : 16;
                r->f = realloc(r->f, r->cap * sizeof(*r->f));
                REQUIRE(r->f);
            }
            f = &r->f[r->n++];
            memset(f, 0, sizeof(*f));
            f->h = *ev.frame;
            f->phash = 1469598103934665603ULL;
            invariant(r, (size_t)rc <= ev.frame->hdr_len, "HEADER consumed too much");
            break;
        case WSRR_FRAME_PAYLOAD: {
            invariant(r, f && !f->ended, "PAYLOAD outside a frame");
            if (!f || f->ended)
                return;
            invariant(r, ev.data == buf + off, "PAYLOAD not pointing into the input");
            invariant(r, ev.len == (size_t)rc && ev.len > 0, "PAYLOAD length");
            invariant(r, ev.offset == f->plen, "PAYLOAD offset");
            invariant(r, ev.offset + ev.len <= f->h.len, "PAYLOAD past the frame");
            for (size_t i = 0; i < ev.len; i += 256) {
                uint8_t tmp[256];
                size_t k = ev.len - i < 256 ? ev.len - i : 256;
                if (f->h.masked)
                    wsrr_frame_mask(tmp, ev.data + i, k, f->h.mask, ev.offset + i);
                else
                    memcpy(tmp, ev.data + i, k);
                for (size_t j = 0; j < k; j++) {
                    uint64_t pos = ev.offset + i + j;
                    if (pos < KEEP)
                        f->head[pos] = tmp[j];
                    f->phash = (f->phash ^ tmp[j]) * 1099511628211ULL;
                }
            }
            f->plen += ev.len;
            break;
        }
        case WSRR_FRAME_END:
            invariant(r, f && !f->ended, "END outside a frame");
            if (!f || f->ended)
                return;
            invariant(r, rc == 0, "END consumed bytes");
            invariant(r, f->plen == f->h.len, "END before the payload");
            f->ended = true;
            f->v_end = ev.frame->violations;
            f->close_code = ev.frame->close_code;
            invariant(r, (f->v_end & f->h.violations) == f->h.violations, "violations lost");
            if (f->h.opcode & 8) {
                invariant(r, ev.len <= WSRR_FRAME_MAX_CONTROL && ev.data, "control END data");
                f->ctl_len = ev.len;
                if (ev.len)
                    memcpy(f->ctl, ev.data, ev.len);
            }
            break;
        }
        off += (size_t)rc;
    }
}

static void parser_setup(struct wsrr_frame_parser *p, const struct cfg *c)
{
    wsrr_frame_parser_init(p, c->dir, &c->lim);
    p->rsv_allowed = c->rsv_allowed;
    p->validate_utf8 = !c->no_utf8;
}

/* Parse s cut into pieces at cuts[0..ncuts) (increasing). */
static void parse_cuts(const struct cfg *c, const uint8_t *s, size_t n, const size_t *cuts,
                       size_t ncuts, struct rec *r)
{
    struct wsrr_frame_parser p;
    parser_setup(&p, c);
    memset(r, 0, sizeof(*r));
    size_t from = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        uint8_t *piece = malloc(to - from ? to - from : 1);
        REQUIRE(piece);
        memcpy(piece, s + from, to - from);
        feed(&p, r, piece, to - from);
        free(piece);
        from = to;
    }
    feed(&p, r, (const uint8_t *)"", 0); /* a final empty call delivers nothing new */
    r->idle = wsrr_frame_parser_idle(&p);
}

/* Parse with pieces of random size (1..max). */
static void parse_random(const struct cfg *c, const uint8_t *s, size_t n, uint64_t *seed,
                         size_t max, struct rec *r)
{
    size_t ncuts = 0, cap = 64;
    size_t *cuts = malloc(cap * sizeof(*cuts));
    for (size_t pos = 0;;) {
        pos += 1 + (size_t)(check_rand(seed) % max);
        if (pos >= n)
            break;
        if (ncuts == cap)
            cuts = realloc(cuts, (cap *= 2) * sizeof(*cuts));
        cuts[ncuts++] = pos;
    }
    parse_cuts(c, s, n, cuts, ncuts, r);
    free(cuts);
}

static void parse_bytewise(const struct cfg *c, const uint8_t *s, size_t n, struct rec *r)
{
    size_t *cuts = malloc((n ? n : 1) * sizeof(*cuts));
    for (size_t i = 0; i + 1 < n; i++)
        cuts[i] = i + 1;
    parse_cuts(c, s, n, cuts, n ? n - 1 : 0, r);
    free(cuts);
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

/* Same record? Prints the first difference. */
static bool rec_eq(const struct rec *a, const struct rec *b, const char *how)
{
    const char *why = NULL;
    size_t i = 0;
    if (a->n != b->n)
        why = "frame count";
    for (; !why && i < a->n; i++) {
        const struct rframe *x = &a->f[i], *y = &b->f[i];
        if (!frame_eq(&x->h, &y->h))
            why = "header";
        else if (x->ended != y->ended || x->v_end != y->v_end || x->close_code != y->close_code)
            why = "end";
        else if (x->plen != y->plen || x->phash != y->phash)
            why = "payload";
        else if (x->ctl_len != y->ctl_len || memcmp(x->ctl, y->ctl, x->ctl_len) != 0)
            why = "control payload";
    }
    if (!why && (a->err != b->err || strcmp(a->errmsg, b->errmsg) != 0))
        why = "error";
    if (!why && a->err && !frame_eq(&a->errframe, &b->errframe))
        why = "error frame";
    if (!why && a->idle != b->idle)
        why = "idle";
    if (why)
        fprintf(stderr, "parse %s differs from the whole parse: %s (frame %zu)\n", how, why,
                i ? i - 1 : 0);
    return !why;
}

static uint64_t g_seed = 0x1234abcd;

/* Parse whole into *whole, then every other way, and check all agree. */
static void run(const struct cfg *c, const struct buf *b, struct rec *whole)
{
    struct rec r;
    parse_cuts(c, b->d, b->n, NULL, 0, whole);
    invariant(whole, !whole->broken, "whole parse");

    bool big = b->n > 4096;
    if (!big) {
        for (size_t i = 0; i <= b->n; i++) {
            size_t cut[1] = {i};
            parse_cuts(c, b->d, b->n, cut, 1, &r);
            char how[48];
            snprintf(how, sizeof(how), "split at %zu", i);
            CHECK(rec_eq(whole, &r, how));
            rec_free(&r);
        }
    }
    if (b->n <= ((size_t)1 << 20)) {
        parse_bytewise(c, b->d, b->n, &r);
        CHECK(rec_eq(whole, &r, "byte by byte"));
        rec_free(&r);
    }
    bool huge = b->n > ((size_t)2 << 20);
    for (int k = huge ? 2 : 0; k < (big ? 4 : 16); k++) {
        size_t max = big ? (size_t)1 << (8 + 2 * k) : (size_t)(k + 2);
        parse_random(c, b->d, b->n, &g_seed, max, &r);
        CHECK(rec_eq(whole, &r, "in random chunks"));
        rec_free(&r);
    }
}

static struct cfg cfg0(void)
{
    struct cfg c = {.dir = g_dir};
    return c;
}

/* ---- expectations ------------------------------------------------------ */

static void fail_at(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_at(int line, const char *fmt, ...)
{
    va_list ap;
    check_failures++;
    fprintf(stderr, "%s:%d: ", __FILE__, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Frame i ended with opcode `op` and exactly the violations v. */
static void expect_frame(int line, const struct rec *r, size_t i, uint8_t op, uint32_t v)
{
    check_count++;
    if (i >= r->n) {
        fail_at(line, "frame %zu missing (%zu parsed)", i, r->n);
        return;
    }
    const struct rframe *f = &r->f[i];
    char want[256], got[256];
    wsrr_frame_violations_format(v, want, sizeof(want));
    wsrr_frame_violations_format(f->v_end, got, sizeof(got));
    if (f->h.opcode != op || !f->ended || f->v_end != v)
        fail_at(line, "frame %zu: opcode %u%s violations {%s}, want opcode %u violations {%s}", i,
                f->h.opcode, f->ended ? "" : " (not ended)", got, op, want);
}
#define EXPECT(r, i, op, v) expect_frame(__LINE__, r, i, op, v)

static void expect_payload(int line, const struct rec *r, size_t i, const void *p, size_t n)
{
    check_count++;
    if (i >= r->n) {
        fail_at(line, "frame %zu missing", i);
        return;
    }
    const struct rframe *f = &r->f[i];
    size_t k = n < KEEP ? n : KEEP;
    if (f->plen != n || memcmp(f->head, p, k) != 0)
        fail_at(line, "frame %zu: payload of %llu bytes differs from the expected %zu", i,
                (unsigned long long)f->plen, n);
}
#define EXPECT_PAYLOAD(r, i, str) expect_payload(__LINE__, r, i, str, sizeof(str) - 1)

/* The frames of trailer() at index i, with `v` (AFTER_CLOSE or 0), and
 * nothing after them. */
static void expect_trailer(int line, const struct rec *r, size_t i, uint32_t v)
{
    expect_frame(line, r, i, WSRR_OP_PING, v);
    expect_frame(line, r, i + 1, WSRR_OP_TEXT, v);
    expect_payload(line, r, i, "tail", 4);
    expect_payload(line, r, i + 1, "ok\xc3\xa9", 4);
    check_count++;
    if (r->n != i + 2 || r->err || !r->idle)
        fail_at(line, "trailer: %zu frames (want %zu), error %zd, idle %d", r->n, i + 2, r->err,
                r->idle);
    if (i + 1 < r->n && (!r->f[i + 1].h.msg_first || !r->f[i + 1].h.msg_final))
        fail_at(line, "trailer text is not a whole message");
}
#define EXPECT_TRAILER(r, i, v) expect_trailer(__LINE__, r, i, v)

/* The parse failed with -EMSGSIZE after exactly n frame headers; the
 * failing frame carries v. */
static void expect_fatal(int line, const struct rec *r, size_t n, uint32_t v, const char *msg)
{
    check_count++;
    char got[256];
    wsrr_frame_violations_format(r->errframe.violations, got, sizeof(got));
    if (r->err != -EMSGSIZE || r->n != n || r->errframe.violations != v)
        fail_at(line, "want -EMSGSIZE after %zu frames; got %zd after %zu, violations {%s}", n,
                r->err, r->n, got);
    if (msg && strcmp(r->errmsg, msg) != 0)
        fail_at(line, "error \"%s\", want \"%s\"", r->errmsg, msg);
}
#define EXPECT_FATAL(r, n, v, msg) expect_fatal(__LINE__, r, n, v, msg)

/* Masking flag the current direction adds to a frame built with the wrong
 * masking. */
static uint32_t wrong_mask(void)
{
    return g_dir == WSRR_DIR_C2S ? WSRR_V_MASK_MISSING : WSRR_V_MASK_UNEXPECTED;
}

/* Run a case function in both directions, naming it on failure. */
#define BOTH(fn)                                                                                   \
    do {                                                                                           \
        for (int d_ = 0; d_ < 2; d_++) {                                                           \
            int before_ = check_failures;                                                          \
            g_dir = d_ ? WSRR_DIR_S2C : WSRR_DIR_C2S;                                              \
            fn();                                                                                  \
            if (check_failures != before_)                                                         \
                fprintf(stderr, "  in %s, frames sent by the %s\n", #fn, wsrr_dir_name(g_dir));    \
        }                                                                                          \
    } while (0)

/* ---- RFC 6455 section 5.7 examples -------------------------------------- */

static const uint8_t rfc_hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
static const uint8_t rfc_hello_masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
static const uint8_t rfc_hel[] = {0x01, 0x03, 0x48, 0x65, 0x6c};
static const uint8_t rfc_lo[] = {0x80, 0x02, 0x6c, 0x6f};
static const uint8_t rfc_ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
static const uint8_t rfc_pong_masked[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                          0x7f, 0x9f, 0x4d, 0x51, 0x58};
static const uint8_t rfc_key[4] = {0x37, 0xfa, 0x21, 0x3d};

static void rfc_encode(int line, uint8_t op, bool fin, bool masked, const char *payload, size_t n,
                       const uint8_t *want, size_t want_len)
{
    struct wsrr_frame f;
    memset(&f, 0, sizeof(f));
    f.fin = fin;
    f.opcode = op;
    f.masked = masked;
    if (masked)
        memcpy(f.mask, rfc_key, 4);
    f.len = n;
    uint8_t out[64];
    size_t got = wsrr_frame_encode(out, sizeof(out), &f, (const uint8_t *)payload, n);
    check_count++;
    if (got != want_len || memcmp(out, want, want_len) != 0)
        fail_at(line, "encoding differs from the RFC example");
    uint8_t hdr[WSRR_FRAME_MAX_HEADER];
    check_count++;
    if (wsrr_frame_encode_header(hdr, &f) != want_len - n || memcmp(hdr, want, want_len - n))
        fail_at(line, "header encoding differs from the RFC example");
}

static void test_rfc_examples(void)
{
    struct rec r;
    struct buf b = {0};
    struct cfg s2c = {.dir = WSRR_DIR_S2C}, c2s = {.dir = WSRR_DIR_C2S};

    /* A single-frame unmasked text message. */
    b_put(&b, rfc_hello, sizeof(rfc_hello));
    run(&s2c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, 0);
    EXPECT_PAYLOAD(&r, 0, "Hello");
    REQUIRE(r.n == 1);
    CHECK(r.f[0].h.fin && !r.f[0].h.masked && r.f[0].h.len == 5 && r.f[0].h.len_width == 7);
    CHECK(r.f[0].h.hdr_len == 2 && r.f[0].h.rsv == 0);
    CHECK(r.f[0].h.msg_opcode == WSRR_OP_TEXT && r.f[0].h.msg_first && r.f[0].h.msg_final);
    CHECK(r.f[0].h.msg_index == 0 && !r.f[0].h.msg_compressed && r.idle);
    rec_free(&r);
    /* The same sent by a client lacks the mask. */
    run(&c2s, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, WSRR_V_MASK_MISSING);
    rec_free(&r);
    b_free(&b);

    /* A single-frame masked text message. */
    b_put(&b, rfc_hello_masked, sizeof(rfc_hello_masked));
    run(&c2s, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, 0);
    EXPECT_PAYLOAD(&r, 0, "Hello");
    REQUIRE(r.n == 1);
    CHECK(r.f[0].h.masked && memcmp(r.f[0].h.mask, rfc_key, 4) == 0 && r.f[0].h.hdr_len == 6);
    rec_free(&r);
    run(&s2c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, WSRR_V_MASK_UNEXPECTED);
    EXPECT_PAYLOAD(&r, 0, "Hello");
    rec_free(&r);
    b_free(&b);

    /* A fragmented unmasked text message. */
    b_put(&b, rfc_hel, sizeof(rfc_hel));
    b_put(&b, rfc_lo, sizeof(rfc_lo));
    run(&s2c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, 0);
    EXPECT(&r, 1, WSRR_OP_CONT, 0);
    EXPECT_PAYLOAD(&r, 0, "Hel");
    EXPECT_PAYLOAD(&r, 1, "lo");
    REQUIRE(r.n == 2);
    CHECK(!r.f[0].h.fin && r.f[0].h.msg_first && !r.f[0].h.msg_final && r.f[0].h.msg_index == 0);
    CHECK(r.f[1].h.fin && !r.f[1].h.msg_first && r.f[1].h.msg_final && r.f[1].h.msg_index == 1);
    CHECK(r.f[1].h.msg_opcode == WSRR_OP_TEXT);
    rec_free(&r);
    b_free(&b);

    /* Unmasked ping, masked pong. */
    b_put(&b, rfc_ping, sizeof(rfc_ping));
    run(&s2c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_PING, 0);
    REQUIRE(r.n == 1);
    CHECK_MEM(r.f[0].ctl, r.f[0].ctl_len, "Hello", 5);
    CHECK(r.f[0].h.msg_opcode == WSRR_OP_PING && !r.f[0].h.msg_first && !r.f[0].h.msg_final);
    rec_free(&r);
    b_free(&b);
    b_put(&b, rfc_pong_masked, sizeof(rfc_pong_masked));
    run(&c2s, &b, &r);
    EXPECT(&r, 0, WSRR_OP_PONG, 0);
    REQUIRE(r.n == 1);
    CHECK_MEM(r.f[0].ctl, r.f[0].ctl_len, "Hello", 5);
    rec_free(&r);
    b_free(&b);

    /* 256 bytes and 64 KiB of binary in a single unmasked frame. */
    static const uint8_t h256[] = {0x82, 0x7e, 0x01, 0x00};
    static const uint8_t h64k[] = {0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00};
    uint8_t *data = malloc(65536);
    for (size_t i = 0; i < 65536; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    b_put(&b, h256, sizeof(h256));
    b_put(&b, data, 256);
    run(&s2c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_BINARY, 0);
    expect_payload(__LINE__, &r, 0, data, 256);
    REQUIRE(r.n == 1);
    CHECK(r.f[0].h.len_width == 16 && r.f[0].h.hdr_len == 4 && r.f[0].h.len == 256);
    rec_free(&r);
    b_free(&b);
    b_put(&b, h64k, sizeof(h64k));
    b_put(&b, data, 65536);
    run(&s2c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_BINARY, 0);
    expect_payload(__LINE__, &r, 0, data, 65536);
    REQUIRE(r.n == 1);
    CHECK(r.f[0].h.len_width == 64 && r.f[0].h.hdr_len == 10 && r.f[0].h.len == 65536);
    rec_free(&r);
    b_free(&b);

    /* And the encoder produces the same bytes. */
    rfc_encode(__LINE__, WSRR_OP_TEXT, true, false, "Hello", 5, rfc_hello, sizeof(rfc_hello));
    rfc_encode(__LINE__, WSRR_OP_TEXT, true, true, "Hello", 5, rfc_hello_masked,
               sizeof(rfc_hello_masked));
    rfc_encode(__LINE__, WSRR_OP_TEXT, false, false, "Hel", 3, rfc_hel, sizeof(rfc_hel));
    rfc_encode(__LINE__, WSRR_OP_CONT, true, false, "lo", 2, rfc_lo, sizeof(rfc_lo));
    rfc_encode(__LINE__, WSRR_OP_PING, true, false, "Hello", 5, rfc_ping, sizeof(rfc_ping));
    rfc_encode(__LINE__, WSRR_OP_PONG, true, true, "Hello", 5, rfc_pong_masked,
               sizeof(rfc_pong_masked));
    struct wsrr_frame f;
    uint8_t hdr[WSRR_FRAME_MAX_HEADER];
    wsrr_frame_init(&f, WSRR_DIR_S2C, WSRR_OP_BINARY, 256);
    CHECK_MEM(hdr, wsrr_frame_encode_header(hdr, &f), h256, sizeof(h256));
    wsrr_frame_init(&f, WSRR_DIR_S2C, WSRR_OP_BINARY, 65536);
    CHECK_MEM(hdr, wsrr_frame_encode_header(hdr, &f), h64k, sizeof(h64k));
    free(data);
}

/* ---- encoder, masking, names ------------------------------------------- */

static void test_encoder(void)
{
    struct wsrr_frame f;
    uint8_t out[WSRR_FRAME_MAX_HEADER + 300];
    struct rec r;
    struct buf b = {0};
    struct cfg s2c = {.dir = WSRR_DIR_S2C};

    /* Non-minimal lengths round-trip with LEN_NOT_MINIMAL and the width. */
    static const struct {
        unsigned width;
        uint64_t len;
        size_t hdr_len;
        bool minimal;
    } nm[] = {
        {16, 5, 4, false},      {64, 200, 10, false},  {16, 125, 4, false}, {16, 126, 4, true},
        {64, 65535, 10, false}, {64, 65536, 10, true}, {7, 125, 2, true},
    };
    for (size_t i = 0; i < LEN(nm); i++) {
        memset(&f, 0, sizeof(f));
        f.fin = true;
        f.opcode = WSRR_OP_BINARY;
        f.len_width = (uint8_t)nm[i].width;
        f.len = nm[i].len;
        uint8_t *payload = calloc(1, (size_t)nm[i].len + 1);
        size_t cap = (size_t)nm[i].len + WSRR_FRAME_MAX_HEADER;
        uint8_t *big = malloc(cap);
        size_t n = wsrr_frame_encode(big, cap, &f, payload, (size_t)nm[i].len);
        CHECK_INT(n, nm[i].hdr_len + nm[i].len);
        b_put(&b, big, n);
        run(&s2c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_BINARY, nm[i].minimal ? 0 : WSRR_V_LEN_NOT_MINIMAL);
        if (r.n) {
            CHECK_INT(r.f[0].h.len_width, nm[i].width);
            CHECK_U64(r.f[0].h.len, nm[i].len);
            CHECK_INT(r.f[0].h.hdr_len, nm[i].hdr_len);
            /* re-encoding the parsed header reproduces the bytes */
            uint8_t hdr[WSRR_FRAME_MAX_HEADER];
            CHECK_MEM(hdr, wsrr_frame_encode_header(hdr, &r.f[0].h), big, nm[i].hdr_len);
        }
        rec_free(&r);
        b_free(&b);
        free(big);
        free(payload);
    }

    /* Widths that cannot hold the length fall back. */
    memset(&f, 0, sizeof(f));
    f.len_width = 7;
    f.len = 300;
    CHECK_INT(wsrr_frame_encode_header(out, &f), 4);
    CHECK_INT(out[1], 126);
    f.len_width = 16;
    f.len = 70000;
    CHECK_INT(wsrr_frame_encode_header(out, &f), 10);
    CHECK_INT(out[1], 127);
    f.len_width = 0;
    f.len = UINT64_MAX; /* any length can be declared */
    f.masked = true;
    memcpy(f.mask, "\x01\x02\x03\x04", 4);
    CHECK_INT(wsrr_frame_encode_header(out, &f), 14);
    CHECK_MEM(out + 1, 13, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04", 13);

    /* Every opcode and RSV combination encodes and parses back. */
    for (unsigned op = 0; op < 16; op++) {
        for (unsigned rsv = 0; rsv < 8; rsv++) {
            memset(&f, 0, sizeof(f));
            f.fin = true;
            f.opcode = (uint8_t)op;
            f.rsv = (uint8_t)rsv;
            f.masked = rsv & 1;
            f.len = 3;
            if (f.masked)
                memcpy(f.mask, "\x10\x20\x30\x40", 4);
            f.len_width = 7;
            size_t n = wsrr_frame_encode(out, sizeof(out), &f, (const uint8_t *)"abc", 3);
            struct wsrr_frame_parser p;
            struct wsrr_frame_event ev;
            wsrr_frame_parser_init(&p, WSRR_DIR_C2S, NULL);
            ssize_t rc = wsrr_frame_parse(&p, out, n, &ev);
            CHECK_INT(rc, n - 3);
            CHECK_INT(ev.type, WSRR_FRAME_HEADER);
            if (ev.type != WSRR_FRAME_HEADER)
                continue;
            CHECK(wire_eq(ev.frame, &f) && ev.frame->len_width == 7);
            uint32_t v = ev.frame->violations;
            bool reserved = (op >= 3 && op <= 7) || op >= 11;
            CHECK_INT(!!(v & WSRR_V_RESERVED_OPCODE), reserved);
            CHECK_INT(!!(v & WSRR_V_RSV1), !!(rsv & 4));
            CHECK_INT(!!(v & WSRR_V_RSV2), !!(rsv & 2));
            CHECK_INT(!!(v & WSRR_V_RSV3), !!(rsv & 1));
            CHECK_INT(!!(v & WSRR_V_MASK_MISSING), !(rsv & 1));
            CHECK_INT(!!(v & WSRR_V_ORPHAN_CONT), op == 0);
            rc = wsrr_frame_parse(&p, out + rc, 3, &ev);
            CHECK_INT(rc, 3);
            CHECK_INT(ev.type, WSRR_FRAME_PAYLOAD);
            uint8_t plain[3];
            wsrr_frame_mask(plain, ev.data, 3, f.mask, 0);
            if (f.masked)
                CHECK_MEM(plain, 3, "abc", 3);
            else
                CHECK_MEM(ev.data, 3, "abc", 3);
        }
    }

    /* A frame that does not fit writes nothing and says how much it needs. */
    memset(&f, 0, sizeof(f));
    f.opcode = WSRR_OP_TEXT;
    f.len = 5;
    memset(out, 0xee, sizeof(out));
    CHECK_INT(wsrr_frame_encode(out, 6, &f, (const uint8_t *)"Hello", 5), 7);
    CHECK_INT(out[0], 0xee);
    CHECK_INT(wsrr_frame_encode(out, 7, &f, (const uint8_t *)"Hello", 5), 7);
    CHECK_INT(out[0], 0x01);
    /* The declared length may disagree with the payload. */
    f.len = 100;
    CHECK_INT(wsrr_frame_encode(out, sizeof(out), &f, (const uint8_t *)"Hi", 2), 4);
    CHECK_INT(out[1], 100);

    /* wsrr_frame_init: well-formed, masked with a random key for clients. */
    wsrr_frame_init(&f, WSRR_DIR_C2S, WSRR_OP_TEXT, 10);
    CHECK(f.fin && f.masked && f.opcode == WSRR_OP_TEXT && f.len == 10 && f.rsv == 0);
    CHECK(f.len_width == 0);
    uint8_t keys[4][4];
    for (int i = 0; i < 4; i++) {
        wsrr_frame_init(&f, WSRR_DIR_C2S, WSRR_OP_BINARY, 0);
        memcpy(keys[i], f.mask, 4);
    }
    CHECK(memcmp(keys[0], keys[1], 4) || memcmp(keys[1], keys[2], 4) ||
          memcmp(keys[2], keys[3], 4));
    wsrr_frame_init(&f, WSRR_DIR_S2C, WSRR_OP_PING, 3);
    CHECK(f.fin && !f.masked && f.opcode == WSRR_OP_PING && f.len == 3);
    CHECK_MEM(f.mask, 4, "\0\0\0\0", 4);
}

static void test_mask(void)
{
    uint8_t src[300], dst[310], ref[300];
    const uint8_t key[4] = {0xa1, 0xb2, 0xc3, 0xd4};
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 31 + 7);
    int bad = 0;
    for (uint64_t off = 0; off < 9; off++) {
        for (size_t n = 0; n < 140; n++) {
            for (size_t align = 0; align < 8; align += 3) {
                for (size_t i = 0; i < n; i++)
                    ref[i] = src[align + i] ^ key[(off + i) & 3];
                wsrr_frame_mask(dst + (7 - align), src + align, n, key, off);
                bad += memcmp(dst + (7 - align), ref, n) != 0;
                /* in place */
                uint8_t tmp[300];
                memcpy(tmp, src + align, n);
                wsrr_frame_mask(tmp, tmp, n, key, off);
                bad += memcmp(tmp, ref, n) != 0;
            }
        }
    }
    CHECK_INT(bad, 0);
    /* a large offset keeps only its phase */
    wsrr_frame_mask(dst, src, 5, key, (uint64_t)1 << 62 | 2);
    for (size_t i = 0; i < 5; i++)
        ref[i] = src[i] ^ key[(2 + i) & 3];
    CHECK_MEM(dst, 5, ref, 5);
    /* chunked unmasking equals whole */
    uint8_t whole[300], chunks[300];
    wsrr_frame_mask(whole, src, 300, key, 0);
    for (size_t i = 0; i < 300; i += 13)
        wsrr_frame_mask(chunks + i, src + i, i + 13 <= 300 ? 13 : 300 - i, key, i);
    CHECK_MEM(whole, 300, chunks, 300);
}

static void test_names(void)
{
    char out[512];

    for (unsigned i = 0; i < WSRR_V_COUNT; i++) {
        const char *n = wsrr_frame_violation_name(1u << i);
        CHECK(n != NULL);
        if (n)
            CHECK_INT(wsrr_frame_violation_by_name(n, strlen(n)), 1u << i);
    }
    CHECK_STR(wsrr_frame_violation_name(WSRR_V_RESERVED_OPCODE), "reserved_opcode");
    CHECK_STR(wsrr_frame_violation_name(WSRR_V_RSV1), "rsv1");
    CHECK_STR(wsrr_frame_violation_name(WSRR_V_BAD_UTF8), "bad_utf8");
    CHECK_STR(wsrr_frame_violation_name(WSRR_V_TOO_MANY_FRAGMENTS), "too_many_fragments");
    /* the names of docs/capture-format.md, bit by bit */
    static const char *const doc_names[WSRR_V_COUNT] = {
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
    for (unsigned i = 0; i < WSRR_V_COUNT; i++)
        CHECK_STR(wsrr_frame_violation_name(1u << i), doc_names[i]);
    CHECK(wsrr_frame_violation_name(0) == NULL);
    CHECK(wsrr_frame_violation_name(3) == NULL);
    CHECK(wsrr_frame_violation_name(1u << WSRR_V_COUNT) == NULL);
    CHECK_INT(wsrr_frame_violation_by_name("rsv", 3), 0);
    CHECK_INT(wsrr_frame_violation_by_name("rsv1x", 5), 0);
    CHECK_INT(wsrr_frame_violation_by_name("rsv1x", 4), WSRR_V_RSV1);
    CHECK_INT(wsrr_frame_violation_by_name("", 0), 0);

    CHECK_INT(wsrr_frame_violations_format(0, out, sizeof(out)), 0);
    CHECK_STR(out, "");
    CHECK_INT(wsrr_frame_violations_format(WSRR_V_RSV1 | WSRR_V_BAD_UTF8, out, sizeof(out)), 13);
    CHECK_STR(out, "rsv1,bad_utf8");
    CHECK_INT(wsrr_frame_violations_format(WSRR_V_RSV1 | 1u << 25, out, sizeof(out)), 10);
    CHECK_STR(out, "rsv1,bit25");
    CHECK_INT(wsrr_frame_violations_format(WSRR_V_RSV1 | WSRR_V_BAD_UTF8, out, 7), 13);
    CHECK_STR(out, "rsv1,b");
    CHECK_INT(wsrr_frame_violations_format(WSRR_V_RSV1, NULL, 0), 4);
    int all = wsrr_frame_violations_format((1u << WSRR_V_COUNT) - 1, out, sizeof(out));
    CHECK_INT(all, (int)strlen(out));
    /* every prefix length truncates like snprintf */
    for (size_t cap = 1; cap < (size_t)all + 2; cap++) {
        char small[512];
        memset(small, 'z', sizeof(small));
        CHECK_INT(wsrr_frame_violations_format((1u << WSRR_V_COUNT) - 1, small, cap), all);
        CHECK(strlen(small) == (cap - 1 < (size_t)all ? cap - 1 : (size_t)all));
        CHECK(strncmp(small, out, strlen(small)) == 0);
    }

    CHECK_STR(wsrr_opcode_name(0), "cont");
    CHECK_STR(wsrr_opcode_name(1), "text");
    CHECK_STR(wsrr_opcode_name(2), "binary");
    CHECK_STR(wsrr_opcode_name(3), "op3");
    CHECK_STR(wsrr_opcode_name(8), "close");
    CHECK_STR(wsrr_opcode_name(9), "ping");
    CHECK_STR(wsrr_opcode_name(10), "pong");
    CHECK_STR(wsrr_opcode_name(15), "op15");
    CHECK_STR(wsrr_opcode_name(16), "invalid");

    CHECK_STR(wsrr_close_code_name(1000), "normal closure");
    CHECK_STR(wsrr_close_code_name(1011), "internal error");
    CHECK_STR(wsrr_close_code_name(1006), "abnormal closure");
    CHECK_STR(wsrr_close_code_name(999), "invalid");
    CHECK_STR(wsrr_close_code_name(0), "invalid");
    CHECK_STR(wsrr_close_code_name(1016), "reserved");
    CHECK_STR(wsrr_close_code_name(2999), "reserved");
    CHECK_STR(wsrr_close_code_name(3000), "application");
    CHECK_STR(wsrr_close_code_name(4000), "private use");
    CHECK_STR(wsrr_close_code_name(4999), "private use");
    CHECK_STR(wsrr_close_code_name(5000), "invalid");
    CHECK_STR(wsrr_close_code_name(65535), "invalid");

    /* wsrr_close_payload cuts the reason at 123 bytes on a character edge. */
    uint8_t pl[WSRR_FRAME_MAX_CONTROL];
    CHECK_INT(wsrr_close_payload(pl, 1000, NULL, 0), 2);
    CHECK_MEM(pl, 2, "\x03\xe8", 2);
    CHECK_INT(wsrr_close_payload(pl, 4001, "bye", 3), 5);
    CHECK_MEM(pl, 5,
              "\x0f\xa1"
              "bye",
              5);
    char reason[200];
    memset(reason, 'r', sizeof(reason));
    CHECK_INT(wsrr_close_payload(pl, 1001, reason, 123), 125);
    CHECK_INT(wsrr_close_payload(pl, 1001, reason, 200), 125);
    memcpy(reason + 121, "\xe2\x82\xac", 3); /* a euro sign over the cut */
    CHECK_INT(wsrr_close_payload(pl, 1001, reason, 200), 123);
    CHECK(wsrr_utf8_valid(pl + 2, 121));
    memset(reason, 'r', sizeof(reason));
    memcpy(reason + 120, "\xe2\x82\xac", 3); /* ends exactly at the cut */
    CHECK_INT(wsrr_close_payload(pl, 1001, reason, 200), 125);
    CHECK(wsrr_utf8_valid(pl + 2, 123));
}

/* ---- BAD-INPUTS 1: lengths ---------------------------------------------- */

static void case_len_not_minimal(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    bool m = g_dir == WSRR_DIR_C2S;
    uint8_t data[70000];
    memset(data, 'x', sizeof(data));

    frame_raw(&b, true, 0, WSRR_OP_TEXT, m, 16, 5, "Hello", 5);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, m, 16, 125, data, 125);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, m, 16, 126, data, 126);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, m, 64, 200, data, 200);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, m, 64, 65535, data, 65535);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, m, 64, 65536, data, 65536);
    frame_raw(&b, true, 0, WSRR_OP_PING, m, 64, 0, NULL, 0);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, m, 64, 0, NULL, 0);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, WSRR_V_LEN_NOT_MINIMAL);
    EXPECT_PAYLOAD(&r, 0, "Hello");
    EXPECT(&r, 1, WSRR_OP_BINARY, WSRR_V_LEN_NOT_MINIMAL);
    EXPECT(&r, 2, WSRR_OP_BINARY, 0);
    EXPECT(&r, 3, WSRR_OP_BINARY, WSRR_V_LEN_NOT_MINIMAL);
    EXPECT(&r, 4, WSRR_OP_BINARY, WSRR_V_LEN_NOT_MINIMAL);
    EXPECT(&r, 5, WSRR_OP_BINARY, 0);
    EXPECT(&r, 6, WSRR_OP_PING, WSRR_V_LEN_NOT_MINIMAL);
    EXPECT(&r, 7, WSRR_OP_BINARY, WSRR_V_LEN_NOT_MINIMAL);
    EXPECT_TRAILER(&r, 8, 0);
    static const uint8_t widths[] = {16, 16, 16, 64, 64, 64, 64, 64};
    for (size_t i = 0; i < 8 && i < r.n; i++)
        CHECK_INT(r.f[i].h.len_width, widths[i]);
    rec_free(&r);
    b_free(&b);
}

/* A header with a 64-bit length and nothing after it but a trailer. */
static void len64(struct buf *b, uint64_t len)
{
    frame_raw(b, true, 0, WSRR_OP_BINARY, g_dir == WSRR_DIR_C2S, 64, len, NULL, 0);
}

static void case_len_top_bit(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();

    /* Eleven good frames, then 2^63: the error names frame 12. */
    for (int i = 0; i < 11; i++)
        FR(&b, true, WSRR_OP_BINARY, "x");
    len64(&b, (uint64_t)1 << 63);
    trailer(&b);
    run(&c, &b, &r);
    for (size_t i = 0; i < 11; i++)
        EXPECT(&r, i, WSRR_OP_BINARY, 0);
    EXPECT_FATAL(&r, 11, WSRR_V_LEN_TOP_BIT | WSRR_V_FRAME_TOO_BIG,
                 "frame 12: declared payload length 9223372036854775808 exceeds the "
                 "67108864-byte frame limit");
    CHECK_U64(r.errframe.len, (uint64_t)1 << 63);
    CHECK_INT(r.errframe.len_width, 64);
    rec_free(&r);
    b_free(&b);

    /* SIZE_MAX / UINT64_MAX: over any limit, even an unlimited one. */
    len64(&b, UINT64_MAX);
    trailer(&b);
    c.lim.max_frame = UINT64_MAX;
    c.lim.max_message = UINT64_MAX;
    run(&c, &b, &r);
    EXPECT_FATAL(&r, 0, WSRR_V_LEN_TOP_BIT | WSRR_V_FRAME_TOO_BIG,
                 "frame 1: declared payload length 18446744073709551615 exceeds the "
                 "18446744073709551615-byte frame limit");
    rec_free(&r);
    b_free(&b);

    /* SIZE_MAX as a declared length on this host (it is 2^64-1 on 64-bit
     * hosts, covered above; 2^32-1 on 32-bit ones). */
    len64(&b, (uint64_t)SIZE_MAX);
    run(&c, &b, &r);
    if ((uint64_t)SIZE_MAX >> 63)
        EXPECT_FATAL(&r, 0, WSRR_V_LEN_TOP_BIT | WSRR_V_FRAME_TOO_BIG, NULL);
    else
        CHECK(r.n == 1 && !r.err);
    rec_free(&r);
    b_free(&b);
}

static void case_len_huge_default(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    static const uint64_t lens[] = {INT64_MAX, (uint64_t)UINT32_MAX + 1, (uint64_t)UINT32_MAX,
                                    (uint64_t)INT64_MAX - 13, WSRR_FRAME_DEFAULT_MAX_FRAME + 1};
    for (size_t i = 0; i < LEN(lens); i++) {
        FR(&b, true, WSRR_OP_PING, "before");
        len64(&b, lens[i]);
        trailer(&b);
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_PING, 0);
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "frame 2: declared payload length %llu exceeds the 67108864-byte frame limit",
                 (unsigned long long)lens[i]);
        EXPECT_FATAL(&r, 1, WSRR_V_FRAME_TOO_BIG, msg);
        rec_free(&r);
        b_free(&b);
    }
}

/* With the caps lifted, a huge declared length streams: the parser holds
 * nothing, hands out what arrives and never takes later bytes for a header
 * (no truncation of the length to 32 bits or to int). */
static void case_len_huge_unlimited(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    c.lim.max_frame = UINT64_MAX;
    c.lim.max_message = UINT64_MAX;
    static const uint64_t lens[] = {INT64_MAX, (uint64_t)INT64_MAX - 13, (uint64_t)UINT32_MAX + 1,
                                    (uint64_t)UINT32_MAX + 6, (uint64_t)1 << 32 | 3};
    for (size_t i = 0; i < LEN(lens); i++) {
        len64(&b, lens[i]);
        uint8_t junk[40];
        memset(junk, 0x81, sizeof(junk)); /* would be headers if misread */
        b_put(&b, junk, sizeof(junk));
        trailer(&b);
        size_t pay = b.n - (g_dir == WSRR_DIR_C2S ? 14 : 10);
        run(&c, &b, &r);
        CHECK_INT(r.n, 1);
        CHECK(!r.err && !r.idle);
        if (r.n) {
            CHECK(!r.f[0].ended && r.f[0].h.violations == 0 && r.f[0].h.len == lens[i]);
            CHECK_U64(r.f[0].plen, pay);
        }
        rec_free(&r);
        b_free(&b);
    }
}

static void case_len_cap(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    static uint8_t data[1001];
    memset(data, 'd', sizeof(data));
    c.lim.max_frame = 1000;

    for (size_t len = 999; len <= 1000; len++) {
        frame(&b, true, WSRR_OP_BINARY, data, len);
        trailer(&b);
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_BINARY, 0);
        expect_payload(__LINE__, &r, 0, data, len);
        EXPECT_TRAILER(&r, 1, 0);
        rec_free(&r);
        b_free(&b);
    }
    frame(&b, true, WSRR_OP_BINARY, data, 1001);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT_FATAL(&r, 0, WSRR_V_FRAME_TOO_BIG,
                 "frame 1: declared payload length 1001 exceeds the 1000-byte frame limit");
    rec_free(&r);
    b_free(&b);

    /* Control frames are capped too (and are too long besides). */
    frame(&b, true, WSRR_OP_PING, data, 1001);
    run(&c, &b, &r);
    EXPECT_FATAL(&r, 0, WSRR_V_FRAME_TOO_BIG | WSRR_V_CONTROL_TOO_LONG, NULL);
    rec_free(&r);
    b_free(&b);
}

/* The default 64 MiB cap: exactly 64 MiB passes, one more byte fails. */
static void case_len_cap_default(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    size_t cap = (size_t)WSRR_FRAME_DEFAULT_MAX_FRAME;
    uint8_t *data = calloc(1, cap + 1);
    REQUIRE(data);

    frame_raw(&b, true, 0, WSRR_OP_BINARY, g_dir == WSRR_DIR_C2S, 0, cap, data, cap);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_BINARY, 0);
    expect_payload(__LINE__, &r, 0, data, cap);
    EXPECT_TRAILER(&r, 1, 0);
    rec_free(&r);
    b_free(&b);

    len64(&b, cap + 1);
    b_put(&b, data, 1000);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT_FATAL(&r, 0, WSRR_V_FRAME_TOO_BIG,
                 "frame 1: declared payload length 67108865 exceeds the 67108864-byte frame "
                 "limit");
    rec_free(&r);
    b_free(&b);
    free(data);
}

/* A length that never arrives: the parser keeps nothing and is not idle. */
static void case_slowloris(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    uint8_t data[100];
    memset(data, 's', sizeof(data));
    frame(&b, true, WSRR_OP_BINARY, data, sizeof(data));
    b.n -= 90;
    run(&c, &b, &r);
    CHECK_INT(r.n, 1);
    if (r.n)
        CHECK(!r.f[0].ended && r.f[0].plen == 10 && r.f[0].h.len == 100);
    CHECK(!r.idle && !r.err);
    rec_free(&r);
    /* Half a header. */
    b.n = 1;
    run(&c, &b, &r);
    CHECK(r.n == 0 && !r.idle && !r.err);
    rec_free(&r);
    b_free(&b);
}

/* ---- BAD-INPUTS 2: masking --------------------------------------------- */

static void case_mask_wrong(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    bool m = g_dir == WSRR_DIR_C2S;

    frame_raw(&b, true, 0, WSRR_OP_TEXT, !m, 0, 5, "Hello", 5);
    frame_raw(&b, true, 0, WSRR_OP_PING, !m, 0, 2, "hi", 2);
    frame_raw(&b, true, 0, WSRR_OP_BINARY, !m, 0, 0, NULL, 0);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, wrong_mask());
    EXPECT_PAYLOAD(&r, 0, "Hello");
    EXPECT(&r, 1, WSRR_OP_PING, wrong_mask());
    if (r.n > 1)
        CHECK_MEM(r.f[1].ctl, r.f[1].ctl_len, "hi", 2);
    EXPECT(&r, 2, WSRR_OP_BINARY, wrong_mask());
    EXPECT_TRAILER(&r, 3, 0);
    rec_free(&r);
    b_free(&b);
}

/* The mask key split across reads: nothing is reported until the last key
 * byte, then the header comes out whole. */
static void test_mask_key_split(void)
{
    struct wsrr_frame_parser p;
    struct wsrr_frame_event ev;
    wsrr_frame_parser_init(&p, WSRR_DIR_C2S, NULL);
    for (size_t i = 0; i < 5; i++) {
        CHECK_INT(wsrr_frame_parse(&p, rfc_hello_masked + i, 1, &ev), 1);
        CHECK_INT(ev.type, WSRR_FRAME_NEED_MORE);
        CHECK(!wsrr_frame_parser_idle(&p));
    }
    CHECK_INT(wsrr_frame_parse(&p, rfc_hello_masked + 5, 6, &ev), 1);
    CHECK_INT(ev.type, WSRR_FRAME_HEADER);
    CHECK_MEM(ev.frame->mask, 4, rfc_key, 4);
    CHECK_INT(wsrr_frame_parse(&p, rfc_hello_masked + 6, 2, &ev), 2);
    CHECK_INT(ev.type, WSRR_FRAME_PAYLOAD);
    CHECK_INT(wsrr_frame_parse(&p, rfc_hello_masked + 8, 3, &ev), 3);
    CHECK_INT(ev.type, WSRR_FRAME_PAYLOAD);
    CHECK_INT(ev.offset, 2);
    uint8_t lo[3];
    wsrr_frame_mask(lo, ev.data, 3, ev.frame->mask, ev.offset);
    CHECK_MEM(lo, 3, "llo", 3);
    CHECK(!wsrr_frame_parser_idle(&p));
    CHECK_INT(wsrr_frame_parse(&p, NULL, 0, &ev), 0);
    CHECK_INT(ev.type, WSRR_FRAME_END);
    CHECK(wsrr_frame_parser_idle(&p));
    CHECK_INT(wsrr_frame_parse(&p, NULL, 0, &ev), 0);
    CHECK_INT(ev.type, WSRR_FRAME_NEED_MORE);
}

/* ---- BAD-INPUTS 3: control frames -------------------------------------- */

static void case_control_too_long(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    uint8_t data[1000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;

    frame(&b, true, WSRR_OP_PING, data, 125);
    frame(&b, true, WSRR_OP_PING, data, 126);
    frame(&b, true, WSRR_OP_PONG, data, 1000);
    frame_raw(&b, true, 0, WSRR_OP_PING, g_dir == WSRR_DIR_C2S, 64, 200, data, 200);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_PING, 0);
    EXPECT(&r, 1, WSRR_OP_PING, WSRR_V_CONTROL_TOO_LONG);
    EXPECT(&r, 2, WSRR_OP_PONG, WSRR_V_CONTROL_TOO_LONG);
    EXPECT(&r, 3, WSRR_OP_PING, WSRR_V_CONTROL_TOO_LONG | WSRR_V_LEN_NOT_MINIMAL);
    for (size_t i = 0; i < 4 && i < r.n; i++)
        CHECK_MEM(r.f[i].ctl, r.f[i].ctl_len, data, 125); /* the first 125 bytes kept */
    if (r.n > 2)
        expect_payload(__LINE__, &r, 2, data, 1000);
    EXPECT_TRAILER(&r, 4, 0);
    rec_free(&r);
    b_free(&b);
}

static void case_control_fragmented(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();

    FR(&b, false, WSRR_OP_PING, "a");
    FR(&b, true, WSRR_OP_PING, "b");
    FR(&b, false, WSRR_OP_PONG, "");
    FR(&b, false, WSRR_OP_CLOSE, "\x03\xe8");
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_PING, WSRR_V_CONTROL_FRAGMENTED);
    EXPECT(&r, 1, WSRR_OP_PING, 0);
    EXPECT(&r, 2, WSRR_OP_PONG, WSRR_V_CONTROL_FRAGMENTED);
    EXPECT(&r, 3, WSRR_OP_CLOSE, WSRR_V_CONTROL_FRAGMENTED);
    rec_free(&r);
    b_free(&b);

    /* A fragmented control frame does not open a message. */
    FR(&b, false, WSRR_OP_PING, "a");
    FR(&b, true, WSRR_OP_CONT, "b");
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_PING, WSRR_V_CONTROL_FRAGMENTED);
    EXPECT(&r, 1, WSRR_OP_CONT, WSRR_V_ORPHAN_CONT);
    EXPECT_TRAILER(&r, 2, 0);
    rec_free(&r);
    b_free(&b);
}

static void case_control_interleaved(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();

    FR(&b, false, WSRR_OP_TEXT, "Hel\xe2");
    FR(&b, true, WSRR_OP_PING, "p1");
    FR(&b, false, WSRR_OP_CONT, "\x82");
    FR(&b, true, WSRR_OP_PONG, "");
    FR(&b, true, WSRR_OP_PING, "p2");
    FR(&b, false, WSRR_OP_CONT, "");
    FR(&b, true, WSRR_OP_CONT, "\xaclo");
    trailer(&b);
    run(&c, &b, &r);
    static const uint8_t ops[] = {WSRR_OP_TEXT, WSRR_OP_PING, WSRR_OP_CONT, WSRR_OP_PONG,
                                  WSRR_OP_PING, WSRR_OP_CONT, WSRR_OP_CONT};
    for (size_t i = 0; i < 7; i++)
        EXPECT(&r, i, ops[i], 0);
    EXPECT_TRAILER(&r, 7, 0);
    if (r.n >= 7) {
        /* data frames: message 0..3; control frames: on their own */
        static const int idx[] = {0, -1, 1, -1, -1, 2, 3};
        for (size_t i = 0; i < 7; i++) {
            const struct wsrr_frame *h = &r.f[i].h;
            if (idx[i] < 0) {
                CHECK(h->msg_opcode == h->opcode && !h->msg_first && !h->msg_final);
                CHECK_INT(h->msg_index, 0);
            } else {
                CHECK_INT(h->msg_opcode, WSRR_OP_TEXT);
                CHECK_INT(h->msg_index, idx[i]);
                CHECK_INT(h->msg_first, idx[i] == 0);
                CHECK_INT(h->msg_final, idx[i] == 3);
            }
        }
        CHECK_MEM(r.f[1].ctl, r.f[1].ctl_len, "p1", 2);
        CHECK_MEM(r.f[4].ctl, r.f[4].ctl_len, "p2", 2);
    }
    rec_free(&r);
    b_free(&b);
}

static void case_unsolicited_pong(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    FR(&b, true, WSRR_OP_PONG, "nobody asked");
    FR(&b, true, WSRR_OP_PONG, "");
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_PONG, 0);
    EXPECT(&r, 1, WSRR_OP_PONG, 0);
    EXPECT_TRAILER(&r, 2, 0);
    rec_free(&r);
    b_free(&b);
}

/* 20000 pings inside one three-fragment message: control frames count
 * towards no message cap. */
static void case_ping_flood(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    c.lim.max_fragments = 3;
    c.lim.max_message = 4; /* "a", "b", "c"; the trailer's text has 4 bytes */

    FR(&b, false, WSRR_OP_BINARY, "a");
    for (int i = 0; i < 10000; i++)
        FR(&b, true, WSRR_OP_PING, "flood");
    FR(&b, false, WSRR_OP_CONT, "b");
    for (int i = 0; i < 10000; i++)
        FR(&b, true, WSRR_OP_PING, "");
    FR(&b, true, WSRR_OP_CONT, "c");
    trailer(&b);
    run(&c, &b, &r);
    CHECK_INT(r.n, 20005);
    size_t bad = 0;
    for (size_t i = 0; i < r.n; i++)
        bad += r.f[i].v_end != 0 || !r.f[i].ended;
    CHECK_INT(bad, 0);
    if (r.n == 20005) {
        CHECK(r.f[10001].h.opcode == WSRR_OP_CONT && r.f[10001].h.msg_index == 1);
        CHECK(r.f[20002].h.msg_final && r.f[20002].h.msg_index == 2);
    }
    EXPECT_TRAILER(&r, 20003, 0);
    rec_free(&r);
    b_free(&b);
}

/* ---- BAD-INPUTS 4: opcodes and RSV -------------------------------------- */

static void case_reserved_opcodes(void)
{
    static const uint8_t ops[] = {3, 4, 5, 6, 7, 11, 12, 13, 14, 15};
    for (size_t i = 0; i < sizeof(ops); i++) {
        struct buf b = {0};
        struct rec r;
        struct cfg c = cfg0();
        frame(&b, true, ops[i], "xyz", 3);
        trailer(&b);
        run(&c, &b, &r);
        EXPECT(&r, 0, ops[i], WSRR_V_RESERVED_OPCODE);
        EXPECT_PAYLOAD(&r, 0, "xyz");
        EXPECT_TRAILER(&r, 1, 0);
        if (r.n && ops[i] >= 8)
            CHECK_MEM(r.f[0].ctl, r.f[0].ctl_len, "xyz", 3);
        rec_free(&r);
        b_free(&b);
    }
    /* 3-7 are data opcodes (they open a message); 11-15 are control ones. */
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    frame(&b, false, 3, "a", 1);
    frame(&b, false, 11, "b", 1);
    frame(&b, true, WSRR_OP_CONT, "c", 1);
    frame(&b, true, 12, "", 0);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, 3, WSRR_V_RESERVED_OPCODE);
    EXPECT(&r, 1, 11, WSRR_V_RESERVED_OPCODE | WSRR_V_CONTROL_FRAGMENTED);
    EXPECT(&r, 2, WSRR_OP_CONT, 0);
    EXPECT(&r, 3, 12, WSRR_V_RESERVED_OPCODE);
    EXPECT_TRAILER(&r, 4, 0);
    if (r.n > 2)
        CHECK(r.f[2].h.msg_opcode == 3 && r.f[2].h.msg_index == 1);
    rec_free(&r);
    b_free(&b);
}

static void case_rsv(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();

    /* Without an extension every RSV bit is a violation; RSV1 does not make
     * the message compressed, so its text is still checked. */
    frame_rsv(&b, true, WSRR_RSV1, WSRR_OP_TEXT, "\xff", 1);
    frame_rsv(&b, true, WSRR_RSV2, WSRR_OP_BINARY, "a", 1);
    frame_rsv(&b, true, WSRR_RSV3, WSRR_OP_BINARY, "a", 1);
    frame_rsv(&b, true, 7, WSRR_OP_PING, "a", 1);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, WSRR_V_RSV1 | WSRR_V_BAD_UTF8);
    EXPECT(&r, 1, WSRR_OP_BINARY, WSRR_V_RSV2);
    EXPECT(&r, 2, WSRR_OP_BINARY, WSRR_V_RSV3);
    EXPECT(&r, 3, WSRR_OP_PING, WSRR_V_RSV1 | WSRR_V_RSV2 | WSRR_V_RSV3);
    EXPECT_TRAILER(&r, 4, 0);
    if (r.n)
        CHECK(!r.f[0].h.msg_compressed);
    rec_free(&r);
    b_free(&b);

    /* With permessage-deflate: RSV1 on the first frame of a message is fine
     * (and its payload is not UTF-8 checked); on a continuation or a
     * control frame it is not; RSV2/3 still are violations. */
    c.rsv_allowed = WSRR_RSV1;
    frame_rsv(&b, false, WSRR_RSV1, WSRR_OP_TEXT, "\xff\xfe", 2);
    frame_rsv(&b, true, WSRR_RSV1, WSRR_OP_PING, "", 0);
    frame_rsv(&b, false, WSRR_RSV1, WSRR_OP_CONT, "\xc0", 1);
    frame_rsv(&b, true, 0, WSRR_OP_CONT, "\xe2", 1);
    frame_rsv(&b, true, WSRR_RSV1 | WSRR_RSV2, WSRR_OP_BINARY, "z", 1);
    frame_rsv(&b, true, WSRR_RSV3, WSRR_OP_TEXT, "t", 1);
    frame_rsv(&b, true, WSRR_RSV1, WSRR_OP_CLOSE, "\x03\xe8", 2);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, 0);
    EXPECT(&r, 1, WSRR_OP_PING, WSRR_V_RSV1);
    EXPECT(&r, 2, WSRR_OP_CONT, WSRR_V_RSV1);
    EXPECT(&r, 3, WSRR_OP_CONT, 0);
    EXPECT(&r, 4, WSRR_OP_BINARY, WSRR_V_RSV2);
    EXPECT(&r, 5, WSRR_OP_TEXT, WSRR_V_RSV3);
    EXPECT(&r, 6, WSRR_OP_CLOSE, WSRR_V_RSV1);
    if (r.n == 7) {
        CHECK(r.f[0].h.msg_compressed && r.f[2].h.msg_compressed && r.f[3].h.msg_compressed);
        CHECK(!r.f[1].h.msg_compressed && r.f[4].h.msg_compressed && !r.f[5].h.msg_compressed);
        CHECK_INT(r.f[6].close_code, 1000);
    }
    rec_free(&r);
    b_free(&b);
}

/* ---- BAD-INPUTS 5: fragmentation --------------------------------------- */

static void case_orphan_cont(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    FR(&b, true, WSRR_OP_CONT, "orphan");
    FR(&b, false, WSRR_OP_CONT, "\xff");
    FR(&b, true, WSRR_OP_TEXT, "x");
    FR(&b, true, WSRR_OP_CONT, "late");
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_CONT, WSRR_V_ORPHAN_CONT);
    EXPECT(&r, 1, WSRR_OP_CONT, WSRR_V_ORPHAN_CONT);
    EXPECT(&r, 2, WSRR_OP_TEXT, 0);
    EXPECT(&r, 3, WSRR_OP_CONT, WSRR_V_ORPHAN_CONT);
    EXPECT_TRAILER(&r, 4, 0);
    if (r.n > 3) {
        CHECK(r.f[0].h.msg_opcode == 0 && !r.f[0].h.msg_first && r.f[0].h.msg_index == 0);
        CHECK(r.f[3].h.msg_opcode == 0);
    }
    rec_free(&r);
    b_free(&b);
}

static void case_expected_cont(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    FR(&b, false, WSRR_OP_TEXT, "a\xe2"); /* abandoned inside a sequence */
    FR(&b, false, WSRR_OP_BINARY, "b");
    FR(&b, true, WSRR_OP_TEXT, "c");
    FR(&b, true, WSRR_OP_CONT, "d");
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, 0);
    EXPECT(&r, 1, WSRR_OP_BINARY, WSRR_V_EXPECTED_CONT);
    EXPECT(&r, 2, WSRR_OP_TEXT, WSRR_V_EXPECTED_CONT);
    EXPECT(&r, 3, WSRR_OP_CONT, WSRR_V_ORPHAN_CONT);
    EXPECT_TRAILER(&r, 4, 0);
    if (r.n > 2) {
        CHECK(r.f[1].h.msg_first && r.f[1].h.msg_opcode == WSRR_OP_BINARY);
        CHECK(r.f[2].h.msg_first && r.f[2].h.msg_final && r.f[2].h.msg_index == 0);
    }
    rec_free(&r);
    b_free(&b);
}

static void case_zero_length_fragments(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    FR(&b, false, WSRR_OP_TEXT, "");
    FR(&b, false, WSRR_OP_CONT, "");
    FR(&b, true, WSRR_OP_PING, "");
    FR(&b, false, WSRR_OP_CONT, "\xc3");
    FR(&b, false, WSRR_OP_CONT, "");
    FR(&b, true, WSRR_OP_CONT, "\xa9");
    FR(&b, true, WSRR_OP_TEXT, "");
    FR(&b, false, WSRR_OP_BINARY, "");
    FR(&b, true, WSRR_OP_CONT, "");
    trailer(&b);
    run(&c, &b, &r);
    static const uint8_t ops[] = {WSRR_OP_TEXT, WSRR_OP_CONT,   WSRR_OP_PING,
                                  WSRR_OP_CONT, WSRR_OP_CONT,   WSRR_OP_CONT,
                                  WSRR_OP_TEXT, WSRR_OP_BINARY, WSRR_OP_CONT};
    for (size_t i = 0; i < sizeof(ops); i++)
        EXPECT(&r, i, ops[i], 0);
    EXPECT_TRAILER(&r, 9, 0);
    if (r.n > 8) {
        CHECK(r.f[5].h.msg_index == 4 && r.f[5].h.msg_final);
        CHECK(r.f[6].h.msg_first && r.f[6].h.msg_final);
    }
    rec_free(&r);
    b_free(&b);
}

/* n one-byte fragments of one message. */
static void fragments(struct buf *b, size_t n, bool fin)
{
    for (size_t i = 0; i < n; i++)
        frame(b, fin && i == n - 1, i ? WSRR_OP_CONT : WSRR_OP_BINARY, "f", 1);
}

static void case_many_fragments(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    c.lim.max_fragments = 1000;

    /* exactly the cap, then one over */
    fragments(&b, 1000, true);
    fragments(&b, 1000, false);
    FR(&b, true, WSRR_OP_PING, "between");
    FR(&b, true, WSRR_OP_CONT, "x");
    trailer(&b);
    run(&c, &b, &r);
    CHECK_INT(r.n, 2001);
    size_t bad = 0;
    for (size_t i = 0; i < r.n; i++)
        bad += r.f[i].v_end != 0;
    CHECK_INT(bad, 0);
    if (r.n > 1999)
        CHECK(r.f[999].h.msg_final && r.f[1999].h.msg_index == 999 && !r.f[1999].h.msg_final);
    EXPECT_FATAL(&r, 2001, WSRR_V_TOO_MANY_FRAGMENTS,
                 "frame 2002: message exceeds the 1000-fragment limit");
    CHECK_INT(r.errframe.msg_index, 1000);
    rec_free(&r);
    b_free(&b);
}

/* A million one-byte fragments against the default cap of 65536. */
static void case_million_fragments(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();

    fragments(&b, WSRR_FRAME_DEFAULT_MAX_FRAGMENTS, true);
    fragments(&b, 1000000, true);
    run(&c, &b, &r);
    CHECK_INT(r.n, 2 * WSRR_FRAME_DEFAULT_MAX_FRAGMENTS);
    if (r.n == 2 * WSRR_FRAME_DEFAULT_MAX_FRAGMENTS)
        CHECK(r.f[WSRR_FRAME_DEFAULT_MAX_FRAGMENTS - 1].v_end == 0 &&
              r.f[WSRR_FRAME_DEFAULT_MAX_FRAGMENTS - 1].h.msg_final);
    EXPECT_FATAL(&r, 2 * WSRR_FRAME_DEFAULT_MAX_FRAGMENTS, WSRR_V_TOO_MANY_FRAGMENTS,
                 "frame 131073: message exceeds the 65536-fragment limit");
    rec_free(&r);
    b_free(&b);
}

/* The message cap hit exactly on a fragment boundary is fine; one more
 * byte, whether in a later fragment or a single frame, is fatal. */
static void case_message_cap(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    c.lim.max_message = 10;

    FR(&b, false, WSRR_OP_TEXT, "1234");
    FR(&b, true, WSRR_OP_PING, "ping is not counted");
    FR(&b, false, WSRR_OP_CONT, "567890");
    FR(&b, true, WSRR_OP_CONT, "");
    FR(&b, true, WSRR_OP_BINARY, "0123456789");
    FR(&b, false, WSRR_OP_TEXT, "1234");
    FR(&b, true, WSRR_OP_CONT, "5678901");
    trailer(&b);
    run(&c, &b, &r);
    for (size_t i = 0; i < 6; i++)
        EXPECT(&r, i, r.n > i ? r.f[i].h.opcode : 0, 0);
    EXPECT_FATAL(&r, 6, WSRR_V_MESSAGE_TOO_BIG,
                 "frame 7: message size 11 exceeds the 10-byte message limit");
    rec_free(&r);
    b_free(&b);

    FR(&b, true, WSRR_OP_TEXT, "01234567890");
    run(&c, &b, &r);
    EXPECT_FATAL(&r, 0, WSRR_V_MESSAGE_TOO_BIG,
                 "frame 1: message size 11 exceeds the 10-byte message limit");
    rec_free(&r);
    b_free(&b);

    /* A message cap above the frame cap: each frame fits, the sum does not. */
    c.lim.max_frame = 4;
    c.lim.max_message = 8;
    FR(&b, false, WSRR_OP_BINARY, "1234");
    FR(&b, false, WSRR_OP_CONT, "5678");
    FR(&b, true, WSRR_OP_CONT, "9");
    run(&c, &b, &r);
    EXPECT_FATAL(&r, 2, WSRR_V_MESSAGE_TOO_BIG,
                 "frame 3: message size 9 exceeds the 8-byte message limit");
    rec_free(&r);
    b_free(&b);
}

/* ---- BAD-INPUTS 6: UTF-8 ----------------------------------------------- */

static const struct {
    const char *s;
    size_t n;
} bad_utf8[] = {
#define U(x)                                                                                       \
    {                                                                                              \
        x, sizeof(x) - 1                                                                           \
    }
    U("\xc0\x80"),
    U("\xc1\xbf"),
    U("\xe0\x80\x80"),
    U("\xe0\x9f\xbf"),
    U("\xf0\x80\x80\x80"),
    U("\xf0\x8f\xbf\xbf"),
    U("\xed\xa0\x80"),
    U("\xed\xbf\xbf"),
    U("\xed\xa0\x80\xed\xb0\x80"),
    U("\xf4\x90\x80\x80"),
    U("\xf7\xbf\xbf\xbf"),
    U("\xf8\x88\x80\x80\x80"),
    U("\xfc\x84\x80\x80\x80\x80"),
    U("\x80"),
    U("\xbf"),
    U("\xc2\x80\x80"),
    U("\xfe"),
    U("\xff"),
    U("\xe2\x82"
      "a"),
#undef U
};

static void case_utf8_invalid(void)
{
    for (size_t i = 0; i < LEN(bad_utf8); i++) {
        struct buf b = {0};
        struct rec r;
        struct cfg c = cfg0();
        char text[64];
        size_t n = 0;
        memcpy(text, "ab", 2);
        memcpy(text + 2, bad_utf8[i].s, bad_utf8[i].n);
        memcpy(text + 2 + bad_utf8[i].n, "cd", 2);
        n = bad_utf8[i].n + 4;
        frame(&b, true, WSRR_OP_TEXT, text, n);
        /* the same bytes in binary, compressed or unchecked text: no flag */
        frame(&b, true, WSRR_OP_BINARY, text, n);
        trailer(&b);
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_TEXT, WSRR_V_BAD_UTF8);
        expect_payload(__LINE__, &r, 0, text, n);
        EXPECT(&r, 1, WSRR_OP_BINARY, 0);
        EXPECT_TRAILER(&r, 2, 0);
        rec_free(&r);

        c.no_utf8 = true;
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_TEXT, 0);
        rec_free(&r);
        b_free(&b);

        c.no_utf8 = false;
        c.rsv_allowed = WSRR_RSV1;
        frame_rsv(&b, true, WSRR_RSV1, WSRR_OP_TEXT, text, n);
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_TEXT, 0);
        rec_free(&r);
        b_free(&b);
    }
}

static void case_utf8_fragments(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();

    /* a code point split over three fragments and a ping: valid */
    FR(&b, false, WSRR_OP_TEXT, "\xf0");
    FR(&b, false, WSRR_OP_CONT, "\x9f");
    FR(&b, true, WSRR_OP_PING, "\xff not text");
    FR(&b, true, WSRR_OP_CONT, "\x98\x80");
    /* the invalid byte is in the second fragment: only that one is flagged */
    FR(&b, false, WSRR_OP_TEXT, "ok\xe0");
    FR(&b, false, WSRR_OP_CONT, "\x80\x80");
    FR(&b, true, WSRR_OP_CONT, "\xff more");
    /* fail fast: flagged on the first fragment, not again */
    FR(&b, false, WSRR_OP_TEXT, "\xff");
    FR(&b, true, WSRR_OP_CONT, "\xe2");
    /* the message ends inside a sequence: flagged on the final fragment */
    FR(&b, false, WSRR_OP_TEXT, "a");
    FR(&b, false, WSRR_OP_CONT, "\xe2\x82");
    FR(&b, true, WSRR_OP_CONT, "");
    /* truncated single frame */
    FR(&b, true, WSRR_OP_TEXT, "a\xf4\x8f\xbf");
    trailer(&b);
    run(&c, &b, &r);
    static const struct {
        uint8_t op;
        uint32_t v;
    } want[] = {
        {WSRR_OP_TEXT, 0},
        {WSRR_OP_CONT, 0},
        {WSRR_OP_PING, 0},
        {WSRR_OP_CONT, 0},
        {WSRR_OP_TEXT, 0},
        {WSRR_OP_CONT, WSRR_V_BAD_UTF8},
        {WSRR_OP_CONT, 0},
        {WSRR_OP_TEXT, WSRR_V_BAD_UTF8},
        {WSRR_OP_CONT, 0},
        {WSRR_OP_TEXT, 0},
        {WSRR_OP_CONT, 0},
        {WSRR_OP_CONT, WSRR_V_BAD_UTF8},
        {WSRR_OP_TEXT, WSRR_V_BAD_UTF8},
    };
    for (size_t i = 0; i < LEN(want); i++)
        EXPECT(&r, i, want[i].op, want[i].v);
    EXPECT_TRAILER(&r, 13, 0);
    /* A truncated sequence is not flagged before the final fragment: the
     * header-time flags of the final frame are empty. */
    if (r.n > 12)
        CHECK(r.f[11].h.violations == 0 && r.f[12].h.violations == 0);
    rec_free(&r);
    b_free(&b);
}

/* Long text crosses the parser's unmasking chunks: the bad byte is found
 * wherever it is. */
static void case_utf8_long(void)
{
    static const size_t bad_at[] = {0, 511, 512, 700, 1023, 1024, 1535, 2999};
    for (size_t k = 0; k < LEN(bad_at); k++) {
        struct buf b = {0};
        struct rec r;
        struct cfg c = cfg0();
        char text[3000];
        for (size_t i = 0; i < sizeof(text); i += 3)
            memcpy(text + i, i % 2 ? "abc" : "\xe2\x82\xac", 3);
        frame(&b, true, WSRR_OP_TEXT, text, sizeof(text));
        text[bad_at[k]] = (char)0xff;
        frame(&b, true, WSRR_OP_TEXT, text, sizeof(text));
        trailer(&b);
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_TEXT, 0);
        EXPECT(&r, 1, WSRR_OP_TEXT, WSRR_V_BAD_UTF8);
        EXPECT_TRAILER(&r, 2, 0);
        rec_free(&r);
        b_free(&b);
    }
}

static void case_close_reason_utf8(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    static const struct {
        const char *s;
        size_t n;
        bool ok;
    } reasons[] = {
        {"bye \xe2\x82\xac", 7, true}, {"\xc0\x80", 2, false}, {"\xed\xa0\x80", 3, false},
        {"ab\xe2\x82", 4, false},      {"\xff", 1, false},     {"", 0, true},
    };
    for (size_t i = 0; i < LEN(reasons); i++) {
        for (int off = 0; off < 2; off++) {
            c.no_utf8 = off; /* close reasons are checked either way */
            close_frame(&b, 1000, reasons[i].s, reasons[i].n);
            trailer(&b);
            run(&c, &b, &r);
            EXPECT(&r, 0, WSRR_OP_CLOSE, reasons[i].ok ? 0 : WSRR_V_BAD_UTF8);
            if (r.n) {
                CHECK_INT(r.f[0].close_code, 1000);
                CHECK_MEM(r.f[0].ctl + 2, r.f[0].ctl_len - 2, reasons[i].s, reasons[i].n);
            }
            EXPECT_TRAILER(&r, 1, WSRR_V_AFTER_CLOSE);
            rec_free(&r);
            b_free(&b);
        }
    }
    /* An invalid byte past the 125 kept bytes of an oversized close. */
    char reason[300];
    memset(reason, 'r', sizeof(reason));
    reason[250] = (char)0xc1;
    close_frame(&b, 1000, reason, sizeof(reason) - 2);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_CLOSE, WSRR_V_BAD_UTF8 | WSRR_V_CONTROL_TOO_LONG);
    rec_free(&r);
    b_free(&b);
}

/* ---- BAD-INPUTS 7: close ------------------------------------------------ */

static void case_close_one_byte(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    FR(&b, true, WSRR_OP_CLOSE, "\x03");
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_CLOSE, WSRR_V_CLOSE_1_BYTE);
    if (r.n)
        CHECK_INT(r.f[0].close_code, 0);
    EXPECT_TRAILER(&r, 1, WSRR_V_AFTER_CLOSE);
    rec_free(&r);
    b_free(&b);

    FR(&b, true, WSRR_OP_CLOSE, "");
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_CLOSE, 0);
    if (r.n)
        CHECK(r.f[0].close_code == 0 && r.f[0].ctl_len == 0);
    rec_free(&r);
    b_free(&b);
}

static bool ref_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static void case_close_codes(void)
{
    static const uint16_t invalid[] = {0,    1,    999,  1004, 1005, 1006, 1015,
                                       1016, 1100, 2000, 2999, 5000, 65535};
    static const uint16_t valid[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                     1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    for (size_t i = 0; i < LEN(invalid) + LEN(valid); i++) {
        bool ok = i >= LEN(invalid);
        uint16_t code = ok ? valid[i - LEN(invalid)] : invalid[i];
        struct buf b = {0};
        struct rec r;
        struct cfg c = cfg0();
        close_frame(&b, code, "why", 3);
        trailer(&b);
        run(&c, &b, &r);
        EXPECT(&r, 0, WSRR_OP_CLOSE, ok ? 0 : WSRR_V_CLOSE_BAD_CODE);
        if (r.n)
            CHECK_INT(r.f[0].close_code, code);
        EXPECT_TRAILER(&r, 1, WSRR_V_AFTER_CLOSE);
        CHECK_INT(wsrr_close_code_valid(code), ok);
        rec_free(&r);
        b_free(&b);
    }
    /* every code, parsed whole */
    int bad = 0;
    for (unsigned code = 0; code <= 0xffff; code++) {
        uint8_t fr[4] = {0x88, 0x02, (uint8_t)(code >> 8), (uint8_t)code};
        struct wsrr_frame_parser p;
        struct wsrr_frame_event ev;
        wsrr_frame_parser_init(&p, WSRR_DIR_S2C, NULL);
        ssize_t rc = wsrr_frame_parse(&p, fr, 4, &ev);
        rc += wsrr_frame_parse(&p, fr + rc, 4 - (size_t)rc, &ev);
        wsrr_frame_parse(&p, NULL, 0, &ev);
        bad += rc != 4 || ev.type != WSRR_FRAME_END || ev.frame->close_code != code ||
               !!(ev.frame->violations & WSRR_V_CLOSE_BAD_CODE) == ref_code_valid(code) ||
               wsrr_close_code_valid((uint16_t)code) != ref_code_valid(code);
    }
    CHECK_INT(bad, 0);
}

static void case_close_reason_long(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    char reason[124];
    memset(reason, 'r', sizeof(reason));
    close_frame(&b, 1001, reason, 123);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_CLOSE, 0);
    if (r.n)
        CHECK_INT(r.f[0].ctl_len, 125);
    rec_free(&r);
    b_free(&b);

    close_frame(&b, 1001, reason, 124);
    trailer(&b);
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_CLOSE, WSRR_V_CONTROL_TOO_LONG);
    if (r.n) {
        CHECK_INT(r.f[0].close_code, 1001);
        CHECK_INT(r.f[0].ctl_len, 125);
        CHECK_INT(r.f[0].plen, 126);
    }
    EXPECT_TRAILER(&r, 1, WSRR_V_AFTER_CLOSE);
    rec_free(&r);
    b_free(&b);
}

static void case_after_close(void)
{
    struct buf b = {0};
    struct rec r;
    struct cfg c = cfg0();
    FR(&b, false, WSRR_OP_TEXT, "Hel");
    close_frame(&b, 1000, "", 0);
    FR(&b, true, WSRR_OP_CONT, "lo");
    FR(&b, true, WSRR_OP_BINARY, "data");
    close_frame(&b, 1001, "again", 5);
    FR(&b, true, WSRR_OP_PING, "");
    run(&c, &b, &r);
    EXPECT(&r, 0, WSRR_OP_TEXT, 0);
    EXPECT(&r, 1, WSRR_OP_CLOSE, 0);
    EXPECT(&r, 2, WSRR_OP_CONT, WSRR_V_AFTER_CLOSE);
    EXPECT(&r, 3, WSRR_OP_BINARY, WSRR_V_AFTER_CLOSE);
    EXPECT(&r, 4, WSRR_OP_CLOSE, WSRR_V_AFTER_CLOSE);
    EXPECT(&r, 5, WSRR_OP_PING, WSRR_V_AFTER_CLOSE);
    if (r.n > 4) {
        /* the message state survives the close */
        CHECK(r.f[2].h.msg_index == 1 && r.f[2].h.msg_final);
        CHECK_INT(r.f[4].close_code, 1001);
        CHECK_MEM(r.f[4].ctl + 2, r.f[4].ctl_len - 2, "again", 5);
    }
    CHECK(r.idle && !r.err);
    rec_free(&r);
    b_free(&b);
}

/* FIN or RST in the middle of a frame: the parser is not idle, so the
 * caller can tell a clean end from a cut one. */
static void test_idle(void)
{
    struct buf b = {0};
    g_dir = WSRR_DIR_C2S;
    FR(&b, true, WSRR_OP_TEXT, "Hello");
    FR(&b, true, WSRR_OP_PING, "");
    struct wsrr_frame_parser p;
    struct wsrr_frame_event ev;
    wsrr_frame_parser_init(&p, WSRR_DIR_C2S, NULL);
    CHECK(wsrr_frame_parser_idle(&p));
    /* idle exactly at frame boundaries: after 0, 11 and 17 bytes + END */
    for (size_t i = 0; i < b.n; i++) {
        ssize_t rc;
        do {
            rc = wsrr_frame_parse(&p, b.d + i, 1, &ev);
            CHECK(rc >= 0);
        } while (rc == 0 && ev.type != WSRR_FRAME_NEED_MORE);
        while (wsrr_frame_parse(&p, NULL, 0, &ev) == 0 && ev.type != WSRR_FRAME_NEED_MORE)
            ;
        CHECK_INT(wsrr_frame_parser_idle(&p), i + 1 == 11 || i + 1 == 17);
    }
    b_free(&b);

    /* After a fatal error the parser stays failed and is never idle. */
    static const uint8_t big[] = {0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x00};
    wsrr_frame_parser_init(&p, WSRR_DIR_S2C, NULL);
    CHECK_INT(wsrr_frame_parse(&p, big, sizeof(big), &ev), -EMSGSIZE);
    CHECK(ev.frame && (ev.frame->violations & WSRR_V_FRAME_TOO_BIG));
    CHECK_INT(wsrr_frame_parse(&p, big + 10, 2, &ev), -EMSGSIZE);
    CHECK_INT(wsrr_frame_parse(&p, NULL, 0, &ev), -EMSGSIZE);
    CHECK(!wsrr_frame_parser_idle(&p));
    CHECK(strstr(wsrr_frame_parser_error(&p), "frame 1:") != NULL);
    wsrr_frame_parser_init(&p, WSRR_DIR_S2C, NULL);
    CHECK_STR(wsrr_frame_parser_error(&p), "");
    /* zero limits mean the defaults */
    CHECK_U64(p.lim.max_frame, WSRR_FRAME_DEFAULT_MAX_FRAME);
    CHECK_U64(p.lim.max_message, WSRR_FRAME_DEFAULT_MAX_MESSAGE);
    CHECK_INT(p.lim.max_fragments, WSRR_FRAME_DEFAULT_MAX_FRAGMENTS);
    CHECK(p.validate_utf8 && p.rsv_allowed == 0);
}

int main(void)
{
    test_rfc_examples();
    test_encoder();
    test_mask();
    test_names();
    test_mask_key_split();
    test_idle();

    /* 1. lengths */
    BOTH(case_len_not_minimal);
    BOTH(case_len_top_bit);
    BOTH(case_len_huge_default);
    BOTH(case_len_huge_unlimited);
    BOTH(case_len_cap);
    BOTH(case_len_cap_default);
    BOTH(case_slowloris);
    /* 2. masking */
    BOTH(case_mask_wrong);
    /* 3. control frames */
    BOTH(case_control_too_long);
    BOTH(case_control_fragmented);
    BOTH(case_control_interleaved);
    BOTH(case_unsolicited_pong);
    BOTH(case_ping_flood);
    /* 4. opcodes and RSV */
    BOTH(case_reserved_opcodes);
    BOTH(case_rsv);
    /* 5. fragmentation */
    BOTH(case_orphan_cont);
    BOTH(case_expected_cont);
    BOTH(case_zero_length_fragments);
    BOTH(case_many_fragments);
    BOTH(case_million_fragments);
    BOTH(case_message_cap);
    /* 6. UTF-8 */
    BOTH(case_utf8_invalid);
    BOTH(case_utf8_fragments);
    BOTH(case_utf8_long);
    BOTH(case_close_reason_utf8);
    /* 7. close */
    BOTH(case_close_one_byte);
    BOTH(case_close_codes);
    BOTH(case_close_reason_long);
    BOTH(case_after_close);

    return check_finish("test_frame");
}
