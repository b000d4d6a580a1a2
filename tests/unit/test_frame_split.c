/* test_frame_split.c — property test: any split of the input gives the same
 * events.
 *
 * For each seed a random parser configuration and a random stream of frames
 * are generated: valid and invalid ones (any opcode, RSV bits, right and
 * wrong masking, minimal and non-minimal length encodings, fragmented
 * messages with control frames between the fragments, UTF-8 text cut inside
 * code points, corrupted text, close frames with any code, lengths over the
 * caps, a truncated tail, garbage). The stream is parsed whole, in at least
 * 50 random splits and one byte at a time; the records (each frame's header
 * and message fields, unmasked payload, END violations, close code and
 * control payload, and the error) must be identical. When the stream is
 * well framed the record must also match what was generated: the same wire
 * headers and payloads in order, and the header-local violations (masking,
 * reserved opcode, RSV2/3, non-minimal length) exactly.
 *
 * Usage: test_frame_split [base-seed [iterations]]; the base seed is
 * printed, and a failure names the seed that produced it.
 */
#include "check.h"
#include "wsrr/frame.h"

#include <stdbool.h>

#define DEFAULT_ITERATIONS 300
#define SPLITS             50

/* ---- records (as in test_frame.c) -------------------------------------- */

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
    bool broken;
};

struct cfg {
    enum wsrr_dir dir;
    uint8_t rsv_allowed;
    bool no_utf8;
    struct wsrr_frame_limits lim;
};

#define FNV_INIT 1469598103934665603ULL

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void invariant(struct rec *r, bool ok, const char *what)
{
    if (!ok && !r->broken) {
        fprintf(stderr, "event invariant failed: %s (frame %zu)\n", what, r->n);
        r->broken = true;
    }
}

static void feed(struct wsrr_frame_parser *p, struct rec *r, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    for (;;) {
        struct wsrr_frame_event ev;
        ssize_t rc = wsrr_frame_parse(p, buf + off, len - off, &ev);
        if (rc < 0) {
            invariant(r, !r->err || r->err == rc, "error changes");
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
                r->cap = r->cap ? r->cap * 2 : 64;
                r->f = realloc(r->f, r->cap * sizeof(*r->f));
                REQUIRE(r->f);
            }
            f = &r->f[r->n++];
            memset(f, 0, sizeof(*f));
            f->h = *ev.frame;
            f->phash = FNV_INIT;
            break;
        case WSRR_FRAME_PAYLOAD: {
            invariant(r, f && !f->ended, "PAYLOAD outside a frame");
            if (!f || f->ended)
                return;
            invariant(r, ev.data == buf + off && ev.len == (size_t)rc && ev.len > 0,
                      "PAYLOAD slice");
            invariant(r, ev.offset == f->plen && ev.offset + ev.len <= f->h.len, "PAYLOAD offset");
            for (size_t i = 0; i < ev.len; i += 512) {
                uint8_t tmp[512];
                size_t k = ev.len - i < sizeof(tmp) ? ev.len - i : sizeof(tmp);
                if (f->h.masked)
                    wsrr_frame_mask(tmp, ev.data + i, k, f->h.mask, ev.offset + i);
                else
                    memcpy(tmp, ev.data + i, k);
                f->phash = fnv(f->phash, tmp, k);
            }
            f->plen += ev.len;
            break;
        }
        case WSRR_FRAME_END:
            invariant(r, f && !f->ended && rc == 0, "END");
            if (!f || f->ended)
                return;
            invariant(r, f->plen == f->h.len, "END before the payload");
            f->ended = true;
            f->v_end = ev.frame->violations;
            f->close_code = ev.frame->close_code;
            if (f->h.opcode & 8) {
                f->ctl_len = ev.len;
                if (ev.len)
                    memcpy(f->ctl, ev.data, ev.len);
            }
            break;
        }
        off += (size_t)rc;
    }
}

/* Parse s in pieces cut at cuts[0..ncuts). */
static void parse_cuts(const struct cfg *c, const uint8_t *s, size_t n, const size_t *cuts,
                       size_t ncuts, struct rec *r)
{
    struct wsrr_frame_parser p;
    wsrr_frame_parser_init(&p, c->dir, &c->lim);
    p.rsv_allowed = c->rsv_allowed;
    p.validate_utf8 = !c->no_utf8;
    memset(r, 0, sizeof(*r));
    size_t from = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        feed(&p, r, s + from, to - from);
        from = to;
    }
    feed(&p, r, s + n, 0);
    r->idle = wsrr_frame_parser_idle(&p);
}

static void rec_free(struct rec *r)
{
    free(r->f);
    memset(r, 0, sizeof(*r));
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

static const char *rec_diff(const struct rec *a, const struct rec *b, size_t *at)
{
    if (a->broken || b->broken)
        return "event invariant";
    for (size_t i = 0; i < a->n && i < b->n; i++) {
        const struct rframe *x = &a->f[i], *y = &b->f[i];
        *at = i;
        if (!frame_eq(&x->h, &y->h))
            return "header";
        if (x->ended != y->ended || x->v_end != y->v_end || x->close_code != y->close_code)
            return "end";
        if (x->plen != y->plen || x->phash != y->phash)
            return "payload";
        if (x->ctl_len != y->ctl_len || memcmp(x->ctl, y->ctl, x->ctl_len) != 0)
            return "control payload";
    }
    *at = a->n < b->n ? a->n : b->n;
    if (a->n != b->n)
        return "frame count";
    if (a->err != b->err || strcmp(a->errmsg, b->errmsg) != 0)
        return "error";
    if (a->err && !frame_eq(&a->errframe, &b->errframe))
        return "error frame";
    if (a->idle != b->idle)
        return "idle";
    return NULL;
}

/* ---- generating streams ------------------------------------------------- */

struct gframe {
    struct wsrr_frame w; /* wire fields as encoded */
    uint64_t phash;      /* of the unmasked payload */
    size_t end;          /* stream offset just past the frame */
};

struct gen {
    uint64_t rng;
    struct cfg cfg;
    uint8_t *d;
    size_t n, cap;
    struct gframe *f;
    size_t nf, fcap;
    size_t nmodel; /* frames before anything that breaks the framing */
    bool stop;     /* a header that breaks the framing was written */
};

static uint64_t rnd(struct gen *g, uint64_t n)
{
    return n ? check_rand(&g->rng) % n : 0;
}

static bool chance(struct gen *g, unsigned percent)
{
    return rnd(g, 100) < percent;
}

static void put(struct gen *g, const void *p, size_t n)
{
    if (g->n + n > g->cap) {
        while (g->n + n > g->cap)
            g->cap = g->cap ? g->cap * 2 : 4096;
        g->d = realloc(g->d, g->cap);
        REQUIRE(g->d);
    }
    memcpy(g->d + g->n, p, n);
    g->n += n;
}

/* Random text: mostly valid UTF-8 of every length, sometimes corrupted. */
static size_t gen_text(struct gen *g, uint8_t *out, size_t max)
{
    size_t n = 0;
    while (n + 4 <= max && !chance(g, 3)) {
        uint32_t cp;
        switch (rnd(g, 6)) {
        case 0: cp = 0x80 + (uint32_t)rnd(g, 0x780); break;
        case 1: cp = 0x800 + (uint32_t)rnd(g, 0xf800); break;
        case 2: cp = 0x10000 + (uint32_t)rnd(g, 0x100000); break;
        default: cp = (uint32_t)rnd(g, 0x80); break;
        }
        if (cp >= 0xd800 && cp <= 0xdfff)
            cp = 'x';
        if (cp < 0x80) {
            out[n++] = (uint8_t)cp;
        } else if (cp < 0x800) {
            out[n++] = (uint8_t)(0xc0 | cp >> 6);
            out[n++] = (uint8_t)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out[n++] = (uint8_t)(0xe0 | cp >> 12);
            out[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
            out[n++] = (uint8_t)(0x80 | (cp & 0x3f));
        } else {
            out[n++] = (uint8_t)(0xf0 | cp >> 18);
            out[n++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
            out[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
            out[n++] = (uint8_t)(0x80 | (cp & 0x3f));
        }
    }
    if (n && chance(g, 10)) {
        static const uint8_t bad[] = {0x80, 0xbf, 0xc0, 0xc1, 0xed, 0xf4, 0xf5, 0xff, 0xe0};
        size_t at = rnd(g, n);
        out[at] = bad[rnd(g, sizeof(bad))];
    }
    return n;
}

static size_t gen_len(struct gen *g)
{
    switch (rnd(g, 10)) {
    case 0: return 0;
    case 1: return 126 + rnd(g, 300);
    case 2: return rnd(g, 3000);
    default: return rnd(g, 40);
    }
}

/* Encode one frame with random wire details (masking, length width). */
static void emit(struct gen *g, bool fin, uint8_t rsv, uint8_t op, const uint8_t *payload, size_t n)
{
    struct wsrr_frame w;
    memset(&w, 0, sizeof(w));
    w.fin = fin;
    w.rsv = rsv;
    w.opcode = op;
    w.len = n;
    w.masked = (g->cfg.dir == WSRR_DIR_C2S) != chance(g, 5);
    if (w.masked) {
        uint64_t k = check_rand(&g->rng);
        memcpy(w.mask, &k, 4);
    }
    if (chance(g, 10))
        w.len_width = chance(g, 50) ? 16 : 64;
    uint8_t *out = malloc(n + WSRR_FRAME_MAX_HEADER);
    size_t total = wsrr_frame_encode(out, n + WSRR_FRAME_MAX_HEADER, &w, payload, n);
    REQUIRE(total <= n + WSRR_FRAME_MAX_HEADER);
    /* the wire fields as the parser will report them */
    w.len_width = w.len_width == 0 ? (n <= 125 ? 7 : n <= 0xffff ? 16 : 64) : w.len_width;
    if (w.len_width == 16 && n > 0xffff)
        w.len_width = 64;
    put(g, out, total);
    free(out);
    if (g->nf == g->fcap) {
        g->fcap = g->fcap ? g->fcap * 2 : 64;
        g->f = realloc(g->f, g->fcap * sizeof(*g->f));
        REQUIRE(g->f);
    }
    g->f[g->nf].w = w;
    g->f[g->nf].phash = fnv(FNV_INIT, payload, n);
    g->f[g->nf].end = g->n;
    g->nf++;
    if (!g->stop)
        g->nmodel = g->nf;
}

static uint8_t rand_rsv(struct gen *g, bool first_data)
{
    if (first_data && (g->cfg.rsv_allowed & WSRR_RSV1) && chance(g, 40))
        return WSRR_RSV1;
    return chance(g, 8) ? (uint8_t)rnd(g, 8) : 0;
}

static void gen_control(struct gen *g)
{
    uint8_t p[200];
    static const uint8_t ops[] = {WSRR_OP_PING, WSRR_OP_PONG, WSRR_OP_PING, WSRR_OP_CLOSE, 11, 15};
    uint8_t op = ops[rnd(g, chance(g, 10) ? sizeof(ops) : 3)];
    size_t n = chance(g, 5) ? 126 + rnd(g, 60) : rnd(g, 30);
    if (chance(g, 2))
        op = WSRR_OP_CLOSE;
    if (op == WSRR_OP_CLOSE) {
        static const uint16_t codes[] = {1000, 1001, 1005, 1006, 1011, 1015, 3000, 4999, 0, 5000};
        uint16_t code = chance(g, 50) ? codes[rnd(g, sizeof(codes) / 2)] : (uint16_t)rnd(g, 65536);
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = chance(g, 10) ? rnd(g, 2) : 2 + gen_text(g, p + 2, n);
    } else {
        for (size_t i = 0; i < n; i++)
            p[i] = (uint8_t)check_rand(&g->rng);
    }
    bool fin = !chance(g, 5);
    uint8_t rsv = rand_rsv(g, false);
    emit(g, fin, rsv, op, p, n);
}

static void gen_message(struct gen *g)
{
    static const uint8_t ops[] = {WSRR_OP_TEXT, WSRR_OP_BINARY, WSRR_OP_TEXT, 3, 7};
    uint8_t op = ops[rnd(g, chance(g, 5) ? sizeof(ops) : 3)];
    size_t frags = 1 + (chance(g, 40) ? rnd(g, 6) : 0);
    size_t total = 0;
    for (size_t i = 0; i < frags; i++)
        total += gen_len(g);
    uint8_t *msg = malloc(total + 4);
    if (op == WSRR_OP_TEXT)
        total = gen_text(g, msg, total);
    else
        for (size_t i = 0; i < total; i++)
            msg[i] = (uint8_t)check_rand(&g->rng);
    /* cut anywhere, inside code points too */
    size_t pos = 0;
    for (size_t i = 0; i < frags; i++) {
        size_t n = i + 1 == frags ? total - pos : rnd(g, total - pos + 1);
        bool last = i + 1 == frags && !chance(g, 5); /* sometimes left unfinished */
        uint8_t rsv = rand_rsv(g, i == 0);
        emit(g, last, rsv, i ? WSRR_OP_CONT : op, msg + pos, n);
        pos += n;
        while (!last && chance(g, 30))
            gen_control(g);
    }
    free(msg);
}

static void gen_raw(struct gen *g)
{
    uint8_t p[64];
    size_t n = rnd(g, sizeof(p));
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)check_rand(&g->rng);
    bool fin = chance(g, 70);
    uint8_t rsv = (uint8_t)rnd(g, 8);
    uint8_t op = (uint8_t)rnd(g, 16);
    emit(g, fin, rsv, op, p, n);
}

/* A header whose length is over a cap, or one that lies about the payload
 * size; both end the part of the stream that can be checked against the
 * generated frames. */
static void gen_trouble(struct gen *g)
{
    uint8_t h[WSRR_FRAME_MAX_HEADER];
    struct wsrr_frame w;
    memset(&w, 0, sizeof(w));
    w.fin = true;
    w.opcode = (uint8_t)(chance(g, 50) ? WSRR_OP_BINARY : rnd(g, 16));
    w.masked = g->cfg.dir == WSRR_DIR_C2S;
    switch (rnd(g, 4)) {
    case 0: w.len = (uint64_t)1 << 63 | check_rand(&g->rng); break;
    case 1: w.len = g->cfg.lim.max_frame ? g->cfg.lim.max_frame + rnd(g, 3) : 1; break;
    case 2: w.len = check_rand(&g->rng) >> rnd(g, 64); break;
    default: w.len = rnd(g, 100); break;
    }
    put(g, h, wsrr_frame_encode_header(h, &w));
    size_t junk = rnd(g, 200);
    for (size_t i = 0; i < junk; i++) {
        uint8_t b = (uint8_t)check_rand(&g->rng);
        put(g, &b, 1);
    }
    g->stop = true;
}

static void generate(struct gen *g, uint64_t seed)
{
    memset(g, 0, sizeof(*g));
    g->rng = seed * 0x9e3779b97f4a7c15ULL + 1;
    g->cfg.dir = chance(g, 50) ? WSRR_DIR_C2S : WSRR_DIR_S2C;
    g->cfg.rsv_allowed = chance(g, 50) ? WSRR_RSV1 : chance(g, 20) ? (uint8_t)rnd(g, 8) : 0;
    g->cfg.no_utf8 = chance(g, 10);
    if (chance(g, 20)) {
        g->cfg.lim.max_frame = 50 + rnd(g, 3000);
        g->cfg.lim.max_message = 100 + rnd(g, 10000);
        g->cfg.lim.max_fragments = 1 + (uint32_t)rnd(g, 8);
    }
    size_t items = 5 + rnd(g, 120);
    size_t trouble_at = chance(g, 30) ? rnd(g, items) : SIZE_MAX;
    for (size_t i = 0; i < items && !g->stop; i++) {
        uint64_t k = rnd(g, 100);
        if (i == trouble_at)
            gen_trouble(g);
        else if (k < 60)
            gen_message(g);
        else if (k < 82)
            gen_control(g);
        else
            gen_raw(g);
    }
    if (chance(g, 15) && g->n) {
        g->n -= rnd(g, g->n < 20 ? g->n : 20); /* a cut tail */
        while (g->nmodel && g->f[g->nmodel - 1].end > g->n)
            g->nmodel--;
    }
}

static void gen_free(struct gen *g)
{
    free(g->d);
    free(g->f);
}

/* Header-local violations, computable from the frame alone. */
#define LOCAL_V                                                                                    \
    (WSRR_V_RESERVED_OPCODE | WSRR_V_RSV2 | WSRR_V_RSV3 | WSRR_V_MASK_MISSING |                    \
     WSRR_V_MASK_UNEXPECTED | WSRR_V_LEN_NOT_MINIMAL | WSRR_V_CONTROL_TOO_LONG |                   \
     WSRR_V_CONTROL_FRAGMENTED)

static uint32_t local_violations(const struct cfg *c, const struct wsrr_frame *w)
{
    uint32_t v = 0;
    if ((w->opcode >= 3 && w->opcode <= 7) || w->opcode >= 11)
        v |= WSRR_V_RESERVED_OPCODE;
    if ((w->rsv & WSRR_RSV2) && !(c->rsv_allowed & WSRR_RSV2))
        v |= WSRR_V_RSV2;
    if ((w->rsv & WSRR_RSV3) && !(c->rsv_allowed & WSRR_RSV3))
        v |= WSRR_V_RSV3;
    if (c->dir == WSRR_DIR_C2S && !w->masked)
        v |= WSRR_V_MASK_MISSING;
    if (c->dir == WSRR_DIR_S2C && w->masked)
        v |= WSRR_V_MASK_UNEXPECTED;
    if ((w->len_width == 16 && w->len < 126) || (w->len_width == 64 && w->len < 65536))
        v |= WSRR_V_LEN_NOT_MINIMAL;
    if ((w->opcode & 8) && w->len > 125)
        v |= WSRR_V_CONTROL_TOO_LONG;
    if ((w->opcode & 8) && !w->fin)
        v |= WSRR_V_CONTROL_FRAGMENTED;
    return v;
}

/* The whole parse matches the generated frames, as far as the stream is
 * well framed (up to a lying header or a cut tail). */
static const char *check_model(const struct gen *g, const struct rec *r, size_t *at)
{
    size_t n = r->n < g->nmodel ? r->n : g->nmodel;
    *at = n;
    if (r->err && r->n < g->nmodel) {
        if (!wire_eq(&r->errframe, &g->f[r->n].w))
            return "fatal frame is not the generated one";
    } else if (r->n < g->nmodel) {
        return "fewer frames than generated";
    } else if (g->nf && g->nmodel == g->nf && g->f[g->nf - 1].end == g->n && r->n != g->nf) {
        return "more frames than generated";
    }
    for (size_t i = 0; i < n; i++) {
        const struct rframe *f = &r->f[i];
        *at = i;
        if (!wire_eq(&f->h, &g->f[i].w))
            return "wire header differs from the generated one";
        if (!f->ended || f->phash != g->f[i].phash)
            return "payload differs from the generated one";
        if ((f->v_end & LOCAL_V) != local_violations(&g->cfg, &g->f[i].w))
            return "header-local violations";
        if (f->h.hdr_len != 2 +
                                (f->h.len_width == 16   ? 2
                                 : f->h.len_width == 64 ? 8
                                                        : 0) +
                                (f->h.masked ? 4 : 0))
            return "header length";
    }
    return NULL;
}

static size_t *cuts_buf;
static size_t cuts_cap;

static void random_cuts(uint64_t *rng, size_t n, size_t max, size_t *ncuts)
{
    *ncuts = 0;
    for (size_t pos = 0;;) {
        pos += 1 + (size_t)(check_rand(rng) % max);
        if (pos >= n)
            break;
        if (*ncuts == cuts_cap) {
            cuts_cap = cuts_cap ? cuts_cap * 2 : 1024;
            cuts_buf = realloc(cuts_buf, cuts_cap * sizeof(*cuts_buf));
            REQUIRE(cuts_buf);
        }
        cuts_buf[(*ncuts)++] = pos;
    }
}

/* What the seeds covered, so a generator change that stops producing some
 * violation shows up. */
static unsigned long long seen_v[WSRR_V_COUNT], seen_fatal, seen_aligned;

static void one_seed(uint64_t seed, unsigned long long *bytes, unsigned long long *frames)
{
    struct gen g;
    struct rec whole, r;
    generate(&g, seed);
    /* an exact-size copy so ASan sees reads past the end */
    uint8_t *s = malloc(g.n ? g.n : 1);
    memcpy(s, g.d, g.n);
    parse_cuts(&g.cfg, s, g.n, NULL, 0, &whole);
    *bytes += g.n;
    *frames += whole.n;
    for (size_t i = 0; i < whole.n; i++)
        for (unsigned b = 0; b < WSRR_V_COUNT; b++)
            seen_v[b] += (whole.f[i].v_end >> b) & 1;
    for (unsigned b = 0; b < WSRR_V_COUNT; b++)
        seen_v[b] += (whole.errframe.violations >> b) & 1;
    seen_fatal += whole.err != 0;
    seen_aligned += g.nmodel == g.nf;

    const char *why = whole.broken ? "event invariant" : NULL;
    size_t at = 0;
    const char *how = "whole";
    if (!why) {
        why = check_model(&g, &whole, &at);
        how = "model";
    }
    static const size_t maxes[] = {2, 4, 16, 64, 300, 5000};
    for (int k = 0; !why && k <= SPLITS; k++) {
        size_t ncuts;
        if (k == SPLITS) {
            random_cuts(&g.rng, g.n, 1, &ncuts); /* one byte at a time */
            how = "byte by byte";
        } else {
            random_cuts(&g.rng, g.n, maxes[k % 6], &ncuts);
            how = "random split";
        }
        parse_cuts(&g.cfg, s, g.n, cuts_buf, ncuts, &r);
        why = rec_diff(&whole, &r, &at);
        rec_free(&r);
    }
    check_count++;
    if (why) {
        check_failures++;
        fprintf(stderr, "seed %llu: %s: %s at frame %zu (%zu bytes, %zu frames generated)\n",
                (unsigned long long)seed, how, why, at, g.n, g.nf);
    }
    rec_free(&whole);
    free(s);
    gen_free(&g);
}

int main(int argc, char **argv)
{
    uint64_t base = argc > 1 ? strtoull(argv[1], NULL, 0) : 20240601;
    unsigned long iterations = argc > 2 ? strtoul(argv[2], NULL, 0) : DEFAULT_ITERATIONS;
    unsigned long long bytes = 0, frames = 0;

    printf("test_frame_split: base seed %llu, %lu seeds (rerun one: %s <seed> 1)\n",
           (unsigned long long)base, iterations, argv[0]);
    for (unsigned long i = 0; i < iterations; i++)
        one_seed(base + i, &bytes, &frames);
    printf("test_frame_split: %llu bytes, %llu frames, %d splits each; %llu streams fully "
           "checked against the model, %llu ended in a fatal error\n",
           bytes, frames, SPLITS + 1, seen_aligned, seen_fatal);
    printf("violations seen:");
    for (unsigned b = 0; b < WSRR_V_COUNT; b++)
        printf(" %s=%llu", wsrr_frame_violation_name(1u << b), seen_v[b]);
    printf("\n");
    /* every violation must be produced by some seed of the default run */
    if (iterations >= DEFAULT_ITERATIONS)
        for (unsigned b = 0; b < WSRR_V_COUNT; b++)
            CHECK_MSG(seen_v[b] > 0, "no frame with %s", wsrr_frame_violation_name(1u << b));
    free(cuts_buf);
    return check_finish("test_frame_split");
}
