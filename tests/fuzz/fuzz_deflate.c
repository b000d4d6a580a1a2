/* fuzz_deflate.c — permessage-deflate parameters and streams.
 *
 * The input is used three ways: as a Sec-WebSocket-Extensions value (offer
 * and answer: parse, format, parse again, negotiate); as two compressed
 * messages (split at a point chosen by the first byte) inflated under a
 * 1 MiB cap, whole and in small pieces, which must agree; and as two plain
 * messages sent through a deflater and back, which must come back equal.
 * Any disagreement aborts.
 */
#include "wsrr/deflate.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP (1u << 20)

static void params_from_header(const uint8_t *data, size_t size)
{
    struct wsrr_ext exts[8];
    struct wsrr_ext_param prm[32];
    char err[160], f[256];

    int n = wsrr_ext_parse((const char *)data, size, exts, 8, prm, 32, err, sizeof(err));
    if (n < 0)
        return;
    for (int i = 0; i < n; i++) {
        for (int response = 0; response < 2; response++) {
            struct wsrr_pmd_params p, q;
            if (wsrr_pmd_params_parse(&exts[i], response, &p, err, sizeof(err)) != 0)
                continue;
            if (p.server_max_window_bits < 8 || p.server_max_window_bits > 15 ||
                p.client_max_window_bits < 8 || p.client_max_window_bits > 15)
                abort();
            int fl = wsrr_pmd_params_format(&p, response, f, sizeof(f));
            if (fl <= 0 || (size_t)fl >= sizeof(f))
                abort();
            struct wsrr_ext e2[2];
            struct wsrr_ext_param prm2[8];
            if (wsrr_ext_parse(f, (size_t)fl, e2, 2, prm2, 8, err, sizeof(err)) != 1 ||
                wsrr_pmd_params_parse(&e2[0], response, &q, err, sizeof(err)) != 0) {
                fprintf(stderr, "formatted params do not parse: %s (%s)\n", f, err);
                abort();
            }
            if (q.server_no_context_takeover != p.server_no_context_takeover ||
                q.client_no_context_takeover != p.client_no_context_takeover ||
                q.server_max_window_bits != p.server_max_window_bits ||
                q.client_max_window_bits != p.client_max_window_bits)
                abort();
        }
    }
    struct wsrr_pmd_params a, b;
    if (wsrr_pmd_negotiate(exts, (size_t)n, &a) == 1) {
        int fl = wsrr_pmd_params_format(&a, true, f, sizeof(f));
        if (wsrr_pmd_from_response(f, (size_t)fl, &b, err, sizeof(err)) != 1 ||
            memcmp(&a, &b, sizeof(a)) != 0) {
            fprintf(stderr, "negotiated answer does not read back: %s (%s)\n", f, err);
            abort();
        }
    }
    wsrr_pmd_from_response((const char *)data, size, &b, err, sizeof(err));
}

/* Inflate messages m[0..nm) with pieces of `step` bytes (0: whole). Returns
 * the outputs concatenated with a separator per message and rc. */
static struct evbuffer *inflate_all(const struct wsrr_pmd_params *p, enum wsrr_dir d,
                                    const uint8_t *const *m, const size_t *mn, int nm, size_t step,
                                    int *rcs)
{
    struct wsrr_pmd_stream *s = wsrr_pmd_inflater_new(p, d, CAP);
    struct evbuffer *all = evbuffer_new(), *out = evbuffer_new();
    if (!s || !all || !out)
        abort();
    for (int i = 0; i < nm; i++) {
        int r = 0;
        if (step == 0 || mn[i] == 0) {
            r = wsrr_pmd_inflate(s, m[i], mn[i], true, out);
        } else {
            for (size_t off = 0; off < mn[i]; off += step) {
                size_t k = mn[i] - off < step ? mn[i] - off : step;
                int ri = wsrr_pmd_inflate(s, m[i] + off, k, off + k == mn[i], out);
                if (ri < 0 && r == 0)
                    r = ri;
                if (r < 0 && ri != r)
                    abort(); /* the rest of a failed message reports the same */
            }
        }
        if (evbuffer_get_length(out) > CAP)
            abort();
        rcs[i] = r;
        if (r == 0)
            evbuffer_add_buffer(all, out);
        else
            evbuffer_drain(out, evbuffer_get_length(out));
        evbuffer_add(all, "|", 1);
    }
    evbuffer_free(out);
    wsrr_pmd_free(s);
    return all;
}

static bool same_buf(struct evbuffer *a, struct evbuffer *b)
{
    size_t n = evbuffer_get_length(a);
    if (n != evbuffer_get_length(b))
        return false;
    return n == 0 || memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), n) == 0;
}

static void inflate_input(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    uint8_t ctl = data[0];
    const uint8_t *body = data + 1;
    size_t bn = size - 1, cut = bn * ctl / 256;
    struct wsrr_pmd_params p = {.server_max_window_bits = 15, .client_max_window_bits = 15};
    p.server_no_context_takeover = ctl & 1;
    p.client_no_context_takeover = ctl & 2;
    enum wsrr_dir d = ctl & 4 ? WSRR_DIR_S2C : WSRR_DIR_C2S;
    const uint8_t *m[2] = {body, body + cut};
    size_t mn[2] = {cut, bn - cut};
    int rc_whole[2], rc_small[2], rc_one[2];

    struct evbuffer *whole = inflate_all(&p, d, m, mn, 2, 0, rc_whole);
    struct evbuffer *small = inflate_all(&p, d, m, mn, 2, 1 + (ctl >> 5), rc_small);
    if (rc_whole[0] != rc_small[0] || rc_whole[1] != rc_small[1] || !same_buf(whole, small)) {
        fprintf(stderr, "whole (%d %d) and split (%d %d) inflate disagree\n", rc_whole[0],
                rc_whole[1], rc_small[0], rc_small[1]);
        abort();
    }
    if (bn < 4096) {
        struct evbuffer *one = inflate_all(&p, d, m, mn, 2, 1, rc_one);
        if (rc_whole[0] != rc_one[0] || rc_whole[1] != rc_one[1] || !same_buf(whole, one))
            abort();
        evbuffer_free(one);
    }
    evbuffer_free(whole);
    evbuffer_free(small);
}

static void round_trip(const uint8_t *data, size_t size)
{
    if (size < 2)
        return;
    uint8_t ctl = data[0], ctl2 = data[1];
    const uint8_t *body = data + 2;
    size_t bn = size - 2, cut = bn * ctl2 / 256;
    struct wsrr_pmd_params p = {.server_max_window_bits = (uint8_t)(8 + (ctl & 7)),
                                .client_max_window_bits = (uint8_t)(8 + ((ctl >> 3) & 7))};
    p.server_no_context_takeover = ctl & 0x40;
    p.client_no_context_takeover = ctl & 0x80;
    enum wsrr_dir d = ctl2 & 1 ? WSRR_DIR_S2C : WSRR_DIR_C2S;
    int level = (int)(ctl2 >> 4) % 11 - 1;

    struct wsrr_pmd_stream *def = wsrr_pmd_deflater_new(&p, d, level);
    struct wsrr_pmd_stream *inf = wsrr_pmd_inflater_new(&p, d, CAP);
    struct evbuffer *c = evbuffer_new(), *out = evbuffer_new();
    if (!def || !inf || !c || !out)
        abort();
    /* the two halves, then the first again (a repeat, to use the window) */
    const uint8_t *m[3] = {body, body + cut, body};
    size_t mn[3] = {cut, bn - cut, cut};
    for (int i = 0; i < 3; i++) {
        size_t step = 1 + (ctl2 & 0x0e) * 37;
        for (size_t off = 0; off < mn[i] || off == 0; off += step) {
            size_t k = mn[i] - off < step ? mn[i] - off : step;
            if (wsrr_pmd_deflate(def, m[i] + off, k, off + k >= mn[i], c) != 0)
                abort();
            if (off + k >= mn[i])
                break;
        }
        size_t cn = evbuffer_get_length(c);
        uint8_t *cb = evbuffer_pullup(c, -1);
        if (cn >= 4 && memcmp(cb + cn - 4, "\x00\x00\xff\xff", 4) == 0)
            abort(); /* the tail must have been removed */
        if (wsrr_pmd_inflate(inf, cb, cn, true, out) != 0) {
            fprintf(stderr, "round trip: %s\n", wsrr_pmd_error(inf));
            abort();
        }
        if (evbuffer_get_length(out) != mn[i] ||
            (mn[i] && memcmp(evbuffer_pullup(out, -1), m[i], mn[i]) != 0)) {
            fprintf(stderr, "round trip: message %d differs\n", i);
            abort();
        }
        evbuffer_drain(c, cn);
        evbuffer_drain(out, mn[i]);
    }
    evbuffer_free(c);
    evbuffer_free(out);
    wsrr_pmd_free(def);
    wsrr_pmd_free(inf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 18))
        return 0;
    params_from_header(data, size);
    inflate_input(data, size);
    round_trip(data, size);
    return 0;
}
