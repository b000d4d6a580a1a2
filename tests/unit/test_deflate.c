/* test_deflate.c — permessage-deflate parameters and streams (lib/deflate.c).
 *
 * The RFC 7692 7.2.3 examples byte for byte, round trips in both roles with
 * and without context takeover at every window size (checked against a
 * plain zlib inflater with that window), the bomb, the cap, corrupt data,
 * tails, and any split of the input giving the same output.
 */
#include "check.h"

#include "wsrr/deflate.h"

#include <event2/buffer.h>
#include <stdbool.h>
#include <zlib.h>

#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
#include <malloc.h>
static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}
#else
static size_t heap_in_use(void)
{
    return 0;
}
#endif

static const uint8_t hello1[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
static const uint8_t hello2_takeover[] = {0xf2, 0x00, 0x11, 0x00, 0x00};
static const uint8_t hello_stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                       0x65, 0x6c, 0x6c, 0x6f, 0x00};
static const uint8_t hello_bfinal[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00};
static const uint8_t hello_two_blocks[] = {0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff,
                                           0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00};

/* ---- helpers ---- */

static struct wsrr_pmd_params defaults(void)
{
    struct wsrr_pmd_params p = {.server_max_window_bits = 15, .client_max_window_bits = 15};
    return p;
}

/* Drain b into a malloc'd buffer (NUL-terminated for convenience). */
static uint8_t *drain(struct evbuffer *b, size_t *n)
{
    *n = evbuffer_get_length(b);
    uint8_t *p = malloc(*n + 1);
    REQUIRE(p);
    evbuffer_remove(b, p, *n);
    p[*n] = 0;
    return p;
}

/* Inflate one message given in pieces of `step` bytes (0: whole); checks
 * the result against want (NULL: don't care) and returns the rc. */
static int inflate_msg(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, size_t step,
                       const void *want, size_t wantn)
{
    struct evbuffer *out = evbuffer_new();
    REQUIRE(out);
    int r = 0;
    if (step == 0 || n == 0) {
        r = wsrr_pmd_inflate(s, in, n, true, out);
    } else {
        for (size_t off = 0; off < n; off += step) {
            size_t k = n - off < step ? n - off : step;
            r = wsrr_pmd_inflate(s, in + off, k, off + k == n, out);
            if (r < 0 && off + k < n) {
                /* the rest of the message is skipped with the same error */
                int r2 = wsrr_pmd_inflate(s, in + off + k, n - off - k, true, out);
                CHECK_INT(r2, r);
                break;
            }
        }
    }
    if (want) {
        size_t got;
        uint8_t *g = drain(out, &got);
        CHECK_MEM(g, got, want, wantn);
        free(g);
    }
    evbuffer_free(out);
    return r;
}

/* Compress one message (pieces of `step`, 0 whole) into a malloc'd buffer. */
static uint8_t *deflate_msg(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, size_t step,
                            size_t *outn)
{
    struct evbuffer *out = evbuffer_new();
    REQUIRE(out);
    if (step == 0 || n == 0) {
        CHECK_INT(wsrr_pmd_deflate(s, in, n, true, out), 0);
    } else {
        for (size_t off = 0; off < n; off += step) {
            size_t k = n - off < step ? n - off : step;
            CHECK_INT(wsrr_pmd_deflate(s, in + off, k, off + k == n, out), 0);
        }
    }
    uint8_t *p = drain(out, outn);
    evbuffer_free(out);
    return p;
}

/* Parse "permessage-deflate; ..." and its params. */
static int parse_params(const char *v, bool response, struct wsrr_pmd_params *p, char *err,
                        size_t errlen)
{
    struct wsrr_ext e[4];
    struct wsrr_ext_param prm[16];
    int n = wsrr_ext_parse(v, strlen(v), e, 4, prm, 16, err, errlen);
    REQUIRE(n >= 1);
    return wsrr_pmd_params_parse(&e[0], response, p, err, errlen);
}

/* ---- RFC 7692 7.2.3 ---- */

static void test_rfc_examples(void)
{
    struct wsrr_pmd_params p = defaults();
    struct wsrr_pmd_stream *s;

    /* 7.2.3.1: one compressed block, whole and as two fragments */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
    REQUIRE(s);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    struct evbuffer *out = evbuffer_new();
    CHECK_INT(wsrr_pmd_inflate(s, hello1, 3, false, out), 0);
    CHECK_INT(wsrr_pmd_inflate(s, hello1 + 3, 4, true, out), 0);
    size_t n;
    uint8_t *g = drain(out, &n);
    CHECK_MEM(g, n, "Hello", 5);
    free(g);
    wsrr_pmd_free(s);

    /* 7.2.3.2: sharing the window; and not sharing it */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello2_takeover, sizeof(hello2_takeover), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    wsrr_pmd_free(s);

    struct wsrr_pmd_params nct = defaults();
    nct.server_no_context_takeover = true;
    s = wsrr_pmd_inflater_new(&nct, WSRR_DIR_S2C, 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* the window really is gone: a back-reference now fails */
    CHECK_INT(inflate_msg(s, hello2_takeover, sizeof(hello2_takeover), 0, NULL, 0), -EBADMSG);
    CHECK(strstr(wsrr_pmd_error(s), "server") != NULL);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    wsrr_pmd_free(s);

    /* the deflater produces the RFC's bytes */
    s = wsrr_pmd_deflater_new(&p, WSRR_DIR_S2C, -1);
    REQUIRE(s);
    g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
    CHECK_MEM(g, n, hello1, sizeof(hello1));
    free(g);
    g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
    CHECK_MEM(g, n, hello2_takeover, sizeof(hello2_takeover));
    free(g);
    wsrr_pmd_free(s);
    s = wsrr_pmd_deflater_new(&nct, WSRR_DIR_S2C, -1);
    for (int i = 0; i < 3; i++) {
        g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
        CHECK_MEM(g, n, hello1, sizeof(hello1));
        free(g);
    }
    wsrr_pmd_free(s);
    /* the client's no_context_takeover does not apply to the server */
    struct wsrr_pmd_params cnct = defaults();
    cnct.client_no_context_takeover = true;
    s = wsrr_pmd_deflater_new(&cnct, WSRR_DIR_S2C, -1);
    free(deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n));
    g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
    CHECK_MEM(g, n, hello2_takeover, sizeof(hello2_takeover));
    free(g);
    wsrr_pmd_free(s);
    s = wsrr_pmd_deflater_new(&cnct, WSRR_DIR_C2S, -1);
    free(deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n));
    g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
    CHECK_MEM(g, n, hello1, sizeof(hello1));
    free(g);
    wsrr_pmd_free(s);

    /* 7.2.3.3: a stored (uncompressed) block, decoded and produced */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, 0);
    CHECK_INT(inflate_msg(s, hello_stored, sizeof(hello_stored), 0, "Hello", 5), 0);
    wsrr_pmd_free(s);
    s = wsrr_pmd_deflater_new(&p, WSRR_DIR_C2S, 0);
    g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
    CHECK_MEM(g, n, hello_stored, sizeof(hello_stored));
    free(g);
    wsrr_pmd_free(s);

    /* 7.2.3.4: BFINAL set; the stream restarts and the next message works */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
    CHECK_INT(inflate_msg(s, hello_bfinal, sizeof(hello_bfinal), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello2_takeover, sizeof(hello2_takeover), 0, "Hello", 5), 0);
    /* BFINAL without the trailing 00 byte the RFC recommends */
    CHECK_INT(inflate_msg(s, hello_bfinal, sizeof(hello_bfinal) - 1, 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* a final block whose end-of-block code the zeros of the appended tail
     * complete: the rest of the tail is not a new stream */
    CHECK_INT(inflate_msg(s, hello_bfinal, 6, 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* two final blocks in one message */
    uint8_t two_final[16];
    memcpy(two_final, hello_bfinal, 7);
    memcpy(two_final + 7, hello_bfinal, 8);
    CHECK_INT(inflate_msg(s, two_final, 15, 0, "HelloHello", 10), 0);
    wsrr_pmd_free(s);

    /* 7.2.3.5: two blocks in one message */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
    CHECK_INT(inflate_msg(s, hello_two_blocks, sizeof(hello_two_blocks), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello_two_blocks, sizeof(hello_two_blocks), 1, "Hello", 5), 0);
    wsrr_pmd_free(s);

    /* every example, every split, in 1-byte pieces: same output */
    struct {
        const uint8_t *b;
        size_t n;
    } ex[] = {{hello1, sizeof(hello1)},
              {hello_stored, sizeof(hello_stored)},
              {hello_bfinal, sizeof(hello_bfinal)},
              {hello_bfinal, sizeof(hello_bfinal) - 1},
              {hello_two_blocks, sizeof(hello_two_blocks)}};
    for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
        for (size_t k = 0; k <= ex[i].n; k++) {
            s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
            CHECK_INT(wsrr_pmd_inflate(s, ex[i].b, k, false, out), 0);
            CHECK_INT(wsrr_pmd_inflate(s, ex[i].b + k, ex[i].n - k, true, out), 0);
            g = drain(out, &n);
            CHECK_MEM(g, n, "Hello", 5);
            free(g);
            wsrr_pmd_free(s);
        }
        s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
        CHECK_INT(inflate_msg(s, ex[i].b, ex[i].n, 1, "Hello", 5), 0);
        wsrr_pmd_free(s);
    }
    evbuffer_free(out);
}

/* ---- tails ---- */

static void test_tails(void)
{
    struct wsrr_pmd_params p = defaults();
    struct wsrr_pmd_stream *s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, 0);
    uint8_t m[16];

    /* extra tail: the sender left 00 00 FF FF in; context stays usable */
    memcpy(m, hello1, 7);
    memcpy(m + 7, "\x00\x00\xff\xff", 4);
    CHECK_INT(inflate_msg(s, m, 11, 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello2_takeover, sizeof(hello2_takeover), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, m, 11, 1, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, hello2_takeover, sizeof(hello2_takeover), 1, "Hello", 5), 0);
    /* ... and the tail split over two frames */
    struct evbuffer *out = evbuffer_new();
    CHECK_INT(wsrr_pmd_inflate(s, m, 9, false, out), 0);
    CHECK_INT(wsrr_pmd_inflate(s, m + 9, 2, true, out), 0);
    size_t n;
    uint8_t *g = drain(out, &n);
    CHECK_MEM(g, n, "Hello", 5);
    free(g);

    /* missing flush: the message stops inside a block (truncated) */
    CHECK_INT(inflate_msg(s, hello1, 5, 0, NULL, 0), -EBADMSG);
    CHECK(strstr(wsrr_pmd_error(s), "client") != NULL);
    /* the context was reset by the error; a fresh message is fine */
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* half a tail from the sender: ours makes bad stored lengths */
    memcpy(m, hello1, 7);
    memcpy(m + 7, "\x00\x00", 2);
    CHECK_INT(inflate_msg(s, m, 9, 0, NULL, 0), -EBADMSG);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* an empty compressed message */
    CHECK_INT(inflate_msg(s, (const uint8_t *)"", 0, 0, "", 0), 0);
    CHECK_INT(inflate_msg(s, (const uint8_t *)"\x00", 1, 0, "", 0), 0);
    CHECK_INT(inflate_msg(s, hello2_takeover, sizeof(hello2_takeover), 0, "Hello", 5), 0);
    evbuffer_free(out);
    wsrr_pmd_free(s);

    /* the deflater never sends the tail, and an empty message is 00 */
    s = wsrr_pmd_deflater_new(&p, WSRR_DIR_C2S, -1);
    for (int i = 0; i < 3; i++) {
        g = deflate_msg(s, NULL, 0, 0, &n);
        CHECK_MEM(g, n, "\x00", 1);
        free(g);
    }
    g = deflate_msg(s, (const uint8_t *)"Hello", 5, 0, &n);
    CHECK(n >= 4 && memcmp(g + n - 4, "\x00\x00\xff\xff", 4) != 0);
    free(g);
    wsrr_pmd_free(s);
}

/* ---- corrupt data ---- */

static void test_corrupt(void)
{
    struct wsrr_pmd_params p = defaults();
    struct wsrr_pmd_stream *s = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x12, 0x34};
    static const uint8_t bad_stored[] = {0x00, 0x05, 0x00, 0x00, 0x00, 'H', 'e', 'l', 'l', 'o'};

    CHECK_INT(inflate_msg(s, junk, sizeof(junk), 0, NULL, 0), -EBADMSG);
    CHECK(strstr(wsrr_pmd_error(s), "corrupt deflate data from server: invalid") != NULL);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    CHECK_INT(inflate_msg(s, bad_stored, sizeof(bad_stored), 0, NULL, 0), -EBADMSG);
    CHECK(strstr(wsrr_pmd_error(s), "invalid stored block lengths") != NULL);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* corrupt first fragment: the rest of the message is skipped */
    struct evbuffer *out = evbuffer_new();
    CHECK_INT(wsrr_pmd_inflate(s, junk, sizeof(junk), false, out), -EBADMSG);
    CHECK_INT(wsrr_pmd_inflate(s, hello1, sizeof(hello1), false, out), -EBADMSG);
    CHECK_INT(wsrr_pmd_inflate(s, hello1, sizeof(hello1), true, out), -EBADMSG);
    CHECK_INT(evbuffer_get_length(out), 0);
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* random garbage never crashes, and a good message always works after */
    uint64_t seed = 42;
    uint8_t buf[300];
    for (int i = 0; i < 2000; i++) {
        size_t len = check_rand(&seed) % sizeof(buf);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)check_rand(&seed);
        int r = inflate_msg(s, buf, len, 1 + check_rand(&seed) % 8, NULL, 0);
        CHECK(r == 0 || r == -EBADMSG);
        struct wsrr_pmd_stream *f = wsrr_pmd_inflater_new(&p, WSRR_DIR_S2C, 0);
        CHECK_INT(inflate_msg(f, hello1, sizeof(hello1), 0, "Hello", 5), 0);
        wsrr_pmd_free(f);
    }
    /* a stream used the wrong way round */
    CHECK_INT(wsrr_pmd_deflate(s, hello1, 1, true, out), -EINVAL);
    struct wsrr_pmd_stream *d = wsrr_pmd_deflater_new(&p, WSRR_DIR_S2C, -1);
    CHECK_INT(wsrr_pmd_inflate(d, hello1, 1, true, out), -EINVAL);
    CHECK(wsrr_pmd_deflater_new(&p, WSRR_DIR_S2C, 10) == NULL);
    CHECK(wsrr_pmd_deflater_new(&p, WSRR_DIR_S2C, -2) == NULL);
    wsrr_pmd_free(d);
    wsrr_pmd_free(NULL);
    evbuffer_free(out);
    wsrr_pmd_free(s);
}

/* ---- the bomb and the cap ---- */

/* One segment of zeros compressed from an empty window and ended with a
 * full flush (byte-aligned, dictionary reset): segments concatenate into a
 * valid stream of as many MiB of zeros as there are copies. */
static uint8_t *zero_segment(size_t *n)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
    uint8_t *zeros = calloc(1, 1 << 20);
    size_t cap = 1 << 16;
    uint8_t *seg = malloc(cap);
    REQUIRE(zeros && seg);
    z.next_in = zeros;
    z.avail_in = 1 << 20;
    z.next_out = seg;
    z.avail_out = (uInt)cap;
    REQUIRE(deflate(&z, Z_FULL_FLUSH) == Z_OK && z.avail_in == 0 && z.avail_out > 0);
    *n = cap - z.avail_out;
    deflateEnd(&z);
    free(zeros);
    return seg;
}

static void test_bomb(void)
{
    size_t segn;
    uint8_t *seg = zero_segment(&segn);
    CHECK(segn < 1200);
    CHECK(memcmp(seg + segn - 4, "\x00\x00\xff\xff", 4) == 0);

    /* 4096 segments: 4 GiB of zeros in about 4 MB, tail stripped */
    size_t copies = 4096, mn = segn * copies - 4;
    uint8_t *msg = malloc(segn * copies);
    REQUIRE(msg);
    for (size_t i = 0; i < copies; i++)
        memcpy(msg + i * segn, seg, segn);

    struct wsrr_pmd_params p = defaults();
    struct wsrr_pmd_stream *s;
    int r = 0;
    /* exactly at the cap is fine, one byte over is not; 8 MiB of zeros */
    size_t eight = segn * 8 - 4;
    for (int step = 0; step < 2; step++) {
        size_t st = step ? 1 : 0;
        s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, 8u << 20);
        CHECK_INT(inflate_msg(s, msg, eight, st, NULL, 0), 0);
        wsrr_pmd_free(s);
        s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, (8u << 20) - 1);
        CHECK_INT(inflate_msg(s, msg, eight, st, NULL, 0), -EMSGSIZE);
        wsrr_pmd_free(s);
    }
    uint64_t cap = 16u << 20;
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, cap);
    struct evbuffer *out = evbuffer_new();
    uint64_t t0 = wsrr_now_ns();
    /* fed as 64 KB frames: fails at the frame that crosses the cap (and a
     * broken cap stops the test here, before gigabytes pile up) */
    size_t frames = 0;
    for (size_t off = 0; off < mn; off += 65536) {
        size_t k = mn - off < 65536 ? mn - off : 65536;
        frames++;
        r = wsrr_pmd_inflate(s, msg + off, k, off + k == mn, out);
        if (r < 0)
            break;
        REQUIRE(evbuffer_get_length(out) <= cap);
    }
    CHECK_INT(r, -EMSGSIZE);
    CHECK(strstr(wsrr_pmd_error(s), "inflates beyond 16777216 bytes") != NULL);
    CHECK(frames <= (cap >> 20) * segn / 65536 + 2);
    CHECK(evbuffer_get_length(out) <= cap);
    /* the rest of the bomb is skipped, then the next message works */
    CHECK_INT(wsrr_pmd_inflate(s, msg, 65536, false, out), -EMSGSIZE);
    CHECK_INT(wsrr_pmd_inflate(s, msg, 65536, true, out), -EMSGSIZE);
    evbuffer_drain(out, evbuffer_get_length(out));
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    /* the whole bomb in one call */
    CHECK_INT(wsrr_pmd_inflate(s, msg, mn, true, out), -EMSGSIZE);
    CHECK(evbuffer_get_length(out) <= cap);
    evbuffer_drain(out, evbuffer_get_length(out));
    CHECK_INT(inflate_msg(s, hello1, sizeof(hello1), 0, "Hello", 5), 0);
    uint64_t ms = (wsrr_now_ns() - t0) / 1000000;
    printf("bomb: %" PRIu64 " ms\n", ms);
    CHECK_MSG(ms < 30000, "bomb took %" PRIu64 " ms", ms);
    wsrr_pmd_free(s);

    /* default cap (64 MiB) applies too */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, 0);
    CHECK_INT(wsrr_pmd_inflate(s, msg, mn, true, out), -EMSGSIZE);
    CHECK(evbuffer_get_length(out) <= 64u << 20 && evbuffer_get_length(out) > 63u << 20);
    evbuffer_drain(out, evbuffer_get_length(out));
    wsrr_pmd_free(s);

    /* the cap is per message: many messages may add up past it */
    s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, 1u << 20);
    for (int i = 0; i < 20; i++) {
        r = wsrr_pmd_inflate(s, seg, segn - 4, true, out);
        CHECK_INT(r, 0);
    }
    CHECK_INT(evbuffer_get_length(out), 20u << 20);
    wsrr_pmd_free(s);

    /* small caps around a small message */
    const char *text = "Hello, Hello, Hello!";
    struct wsrr_pmd_stream *d = wsrr_pmd_deflater_new(&p, WSRR_DIR_C2S, -1);
    size_t cn;
    uint8_t *c = deflate_msg(d, (const uint8_t *)text, 20, 0, &cn);
    for (uint64_t capv = 15; capv <= 25; capv++) {
        s = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, capv);
        for (size_t st = 0; st <= 1; st++)
            CHECK_INT(inflate_msg(s, c, cn, st, capv >= 20 ? text : NULL, 20),
                      capv >= 20 ? 0 : -EMSGSIZE);
        wsrr_pmd_free(s);
    }
    free(c);
    wsrr_pmd_free(d);
    evbuffer_free(out);
    free(msg);
    free(seg);
}

/* ---- round trips ---- */

/* Test messages: text, repetitive, random, empty, large. */
static uint8_t *make_msg(int i, uint64_t *seed, size_t *n)
{
    static const char *const words[] = {"alpha ", "beta ", "gamma ", "{\"op\":\"tick\"} ",
                                        "0123456789 "};
    size_t len;
    switch (i % 6) {
    case 0: len = 0; break;
    case 1: len = 1 + check_rand(seed) % 100; break;
    case 2: len = 1000 + check_rand(seed) % 3000; break;
    case 3: len = 70000 + check_rand(seed) % 70000; break;
    case 4: len = 10 + check_rand(seed) % 600; break;
    default: len = 300000; break;
    }
    uint8_t *m = malloc(len + 1);
    REQUIRE(m);
    if (i % 6 == 4) {
        for (size_t k = 0; k < len; k++)
            m[k] = (uint8_t)check_rand(seed);
    } else {
        size_t k = 0;
        while (k < len) {
            const char *w = words[check_rand(seed) % 5];
            for (size_t j = 0; w[j] && k < len; j++)
                m[k++] = (uint8_t)w[j];
        }
    }
    *n = len;
    return m;
}

/* A plain zlib inflater with exactly `wbits` of window, as a strict peer
 * would use: proves the deflater honours the negotiated window. */
struct peer {
    z_stream z;
    bool takeover;
    int wbits;
};

static void peer_init(struct peer *pr, int wbits, bool takeover)
{
    memset(pr, 0, sizeof(*pr));
    pr->wbits = wbits;
    pr->takeover = takeover;
    REQUIRE(inflateInit2(&pr->z, -wbits) == Z_OK);
}

static bool peer_inflate(struct peer *pr, const uint8_t *in, size_t n, const uint8_t *want,
                         size_t wantn)
{
    uint8_t *buf = malloc(wantn + 64);
    uint8_t *msg = malloc(n + 4);
    REQUIRE(buf && msg);
    memcpy(msg, in, n);
    memcpy(msg + n, "\x00\x00\xff\xff", 4);
    pr->z.next_in = msg;
    pr->z.avail_in = (uInt)(n + 4);
    pr->z.next_out = buf;
    pr->z.avail_out = (uInt)(wantn + 64);
    int r = inflate(&pr->z, Z_SYNC_FLUSH);
    bool ok = (r == Z_OK || r == Z_BUF_ERROR) && pr->z.avail_in == 0 &&
              (size_t)(pr->z.next_out - buf) == wantn && memcmp(buf, want, wantn) == 0;
    if (!pr->takeover)
        inflateReset(&pr->z);
    free(buf);
    free(msg);
    return ok;
}

static void test_round_trips(void)
{
    uint64_t seed = 7;
    int combos = 0;

    for (int dir = 0; dir < 2; dir++) {
        for (int nct = 0; nct < 2; nct++) {
            for (int wb = 8; wb <= 15; wb++) {
                struct wsrr_pmd_params p = defaults();
                enum wsrr_dir sender = dir ? WSRR_DIR_S2C : WSRR_DIR_C2S;
                if (sender == WSRR_DIR_C2S) {
                    p.client_no_context_takeover = nct;
                    p.client_max_window_bits = (uint8_t)wb;
                    /* the other side's settings must not matter */
                    p.server_no_context_takeover = !nct;
                    p.server_max_window_bits = 9;
                } else {
                    p.server_no_context_takeover = nct;
                    p.server_max_window_bits = (uint8_t)wb;
                    p.client_no_context_takeover = !nct;
                    p.client_max_window_bits = 9;
                }
                struct wsrr_pmd_stream *d = wsrr_pmd_deflater_new(&p, sender, wb % 3 ? -1 : 9);
                struct wsrr_pmd_stream *in = wsrr_pmd_inflater_new(&p, sender, 1 << 20);
                REQUIRE(d && in);
                struct peer pr;
                peer_init(&pr, wb, !nct);
                for (int i = 0; i < 12; i++) {
                    size_t n, cn;
                    uint8_t *m = make_msg(i, &seed, &n);
                    size_t dstep = i % 4 == 1 ? 1 + check_rand(&seed) % 1000 : 0;
                    uint8_t *c = deflate_msg(d, m, n, dstep, &cn);
                    size_t istep = i % 3 == 0 ? 1 + check_rand(&seed) % 7 : 0;
                    if (n < 5000 && i % 2)
                        istep = 1;
                    CHECK_INT(inflate_msg(in, c, cn, istep, m, n), 0);
                    CHECK_MSG(peer_inflate(&pr, c, cn, m, n),
                              "peer with %d-bit window, dir %d nct %d, message %d", wb, dir, nct,
                              i);
                    free(c);
                    free(m);
                }
                /* identical messages: with takeover the repeat is tiny */
                static const char rep[] = "The quick brown fox jumps over the lazy dog. 0123";
                size_t c1n, c2n;
                uint8_t *c1 = deflate_msg(d, (const uint8_t *)rep, sizeof(rep) - 1, 0, &c1n);
                uint8_t *c2 = deflate_msg(d, (const uint8_t *)rep, sizeof(rep) - 1, 0, &c2n);
                CHECK_INT(inflate_msg(in, c1, c1n, 0, rep, sizeof(rep) - 1), 0);
                CHECK_INT(inflate_msg(in, c2, c2n, 0, rep, sizeof(rep) - 1), 0);
                CHECK(peer_inflate(&pr, c1, c1n, (const uint8_t *)rep, sizeof(rep) - 1));
                CHECK(peer_inflate(&pr, c2, c2n, (const uint8_t *)rep, sizeof(rep) - 1));
                if (nct)
                    CHECK_MEM(c1, c1n, c2, c2n);
                else
                    CHECK_MSG(c2n < 10 && c2n < c1n, "repeat %zu bytes, first %zu", c2n, c1n);
                free(c1);
                free(c2);
                inflateEnd(&pr.z);
                wsrr_pmd_free(d);
                wsrr_pmd_free(in);
                combos++;
            }
        }
    }
    CHECK_INT(combos, 32);

    /* A deflater for window 8 would be refused by zlib as such. */
    z_stream z;
    memset(&z, 0, sizeof(z));
    int r = deflateInit2(&z, -1, Z_DEFLATED, -8, 8, Z_DEFAULT_STRATEGY);
    if (r == Z_OK)
        deflateEnd(&z);
    printf("zlib %s: raw deflate with windowBits 8 %s\n", zlibVersion(),
           r == Z_OK ? "accepted" : "refused");
}

/* A peer inflating with 8 bits must cope with long-distance repeats: the
 * deflater's 9-bit zlib window keeps every distance within 250. */
static void test_window8_distances(void)
{
    struct wsrr_pmd_params p = defaults();
    p.server_max_window_bits = 8;
    struct wsrr_pmd_stream *d = wsrr_pmd_deflater_new(&p, WSRR_DIR_S2C, 9);
    uint8_t m[4096];
    uint64_t seed = 99;
    /* a 300-byte random block repeated: distances of 300 would be tempting */
    for (size_t i = 0; i < 300; i++)
        m[i] = (uint8_t)check_rand(&seed);
    for (size_t i = 300; i < sizeof(m); i++)
        m[i] = m[i - 300];
    struct peer pr;
    peer_init(&pr, 8, true);
    for (int k = 0; k < 3; k++) {
        size_t cn;
        uint8_t *c = deflate_msg(d, m, sizeof(m), 0, &cn);
        CHECK(peer_inflate(&pr, c, cn, m, sizeof(m)));
        free(c);
    }
    inflateEnd(&pr.z);
    wsrr_pmd_free(d);
}

/* ---- parameters ---- */

static void test_params(void)
{
    struct wsrr_pmd_params p;
    char err[160];

    CHECK_INT(parse_params("permessage-deflate", false, &p, err, sizeof(err)), 0);
    CHECK(!p.server_no_context_takeover && !p.client_no_context_takeover);
    CHECK_INT(p.server_max_window_bits, 15);
    CHECK_INT(p.client_max_window_bits, 15);
    CHECK(!p.server_max_window_bits_set && !p.client_max_window_bits_set);
    CHECK(!p.client_max_window_bits_novalue);

    CHECK_INT(parse_params("permessage-deflate; server_no_context_takeover; "
                           "client_no_context_takeover; server_max_window_bits=10; "
                           "client_max_window_bits=\"9\"",
                           true, &p, err, sizeof(err)),
              0);
    CHECK(p.server_no_context_takeover && p.client_no_context_takeover);
    CHECK_INT(p.server_max_window_bits, 10);
    CHECK_INT(p.client_max_window_bits, 9);
    CHECK(p.server_max_window_bits_set && p.client_max_window_bits_set);

    CHECK_INT(
        parse_params("permessage-deflate; client_max_window_bits", false, &p, err, sizeof(err)), 0);
    CHECK(p.client_max_window_bits_novalue && !p.client_max_window_bits_set);
    CHECK_INT(p.client_max_window_bits, 15);
    CHECK_INT(parse_params("permessage-deflate; server_max_window_bits=\"1\\5\"", false, &p, err,
                           sizeof(err)),
              0);
    CHECK_INT(p.server_max_window_bits, 15);
    for (int b = 8; b <= 15; b++) {
        char v[80];
        snprintf(v, sizeof(v), "permessage-deflate; client_max_window_bits=%d", b);
        CHECK_INT(parse_params(v, true, &p, err, sizeof(err)), 0);
        CHECK_INT(p.client_max_window_bits, b);
    }

    struct {
        const char *v;
        bool response;
        const char *err;
    } bad[] = {
        {"permessage-deflate; server_max_window_bits=0", false, "server_max_window_bits=0"},
        {"permessage-deflate; server_max_window_bits=7", false, "server_max_window_bits=7"},
        {"permessage-deflate; server_max_window_bits=16", false, "server_max_window_bits=16"},
        {"permessage-deflate; server_max_window_bits=abc", false, "server_max_window_bits=abc"},
        {"permessage-deflate; client_max_window_bits=0", false, "client_max_window_bits=0"},
        {"permessage-deflate; client_max_window_bits=7", true, "client_max_window_bits=7"},
        {"permessage-deflate; client_max_window_bits=16", false, "expected a decimal 8..15"},
        {"permessage-deflate; client_max_window_bits=abc", true, "client_max_window_bits=abc"},
        {"permessage-deflate; server_max_window_bits=08", false, "=08"},
        {"permessage-deflate; server_max_window_bits=+9", false, "=+9"},
        {"permessage-deflate; server_max_window_bits=9.0", false, "=9.0"},
        {"permessage-deflate; server_max_window_bits=\"\"", false, "server_max_window_bits="},
        {"permessage-deflate; server_max_window_bits=\" 9\"", false, "server_max_window_bits"},
        {"permessage-deflate; server_max_window_bits=100000000000", false, "server_max"},
        {"permessage-deflate; server_max_window_bits", false,
         "server_max_window_bits needs a value"},
        {"permessage-deflate; client_max_window_bits", true,
         "client_max_window_bits needs a value"},
        {"permessage-deflate; server_no_context_takeover; server_no_context_takeover", false,
         "duplicate parameter server_no_context_takeover"},
        {"permessage-deflate; client_no_context_takeover; client_no_context_takeover", true,
         "duplicate parameter client_no_context_takeover"},
        {"permessage-deflate; server_max_window_bits=9; server_max_window_bits=9", false,
         "duplicate parameter server_max_window_bits"},
        {"permessage-deflate; client_max_window_bits; client_max_window_bits=9", false,
         "duplicate parameter client_max_window_bits"},
        {"permessage-deflate; client_max_window_bits=9; client_max_window_bits", false,
         "duplicate parameter client_max_window_bits"},
        {"permessage-deflate; server_no_context_takeover=1", false,
         "server_no_context_takeover takes no value"},
        {"permessage-deflate; client_no_context_takeover=\"\"", false, "takes no value"},
        {"permessage-deflate; x_param", false, "unknown parameter x_param"},
        {"permessage-deflate; Server_No_Context_Takeover", false, "unknown parameter"},
        {"x-webkit-deflate-frame", false, "is not permessage-deflate"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        p = defaults();
        p.server_max_window_bits = 3; /* untouched on failure */
        int r = parse_params(bad[i].v, bad[i].response, &p, err, sizeof(err));
        CHECK_MSG(r == -EINVAL, "'%s': %d", bad[i].v, r);
        CHECK_MSG(strstr(err, bad[i].err) != NULL, "'%s': err '%s'", bad[i].v, err);
        CHECK_INT(p.server_max_window_bits, 3);
    }
    /* NULL err is fine */
    struct wsrr_ext e[2];
    struct wsrr_ext_param prm[4];
    REQUIRE(wsrr_ext_parse("permessage-deflate; x", 21, e, 2, prm, 4, NULL, 0) == 1);
    CHECK_INT(wsrr_pmd_params_parse(&e[0], false, &p, NULL, 0), -EINVAL);

    /* format round trip */
    char f[128];
    struct wsrr_pmd_params all = {true, true, 10, 9, false, true, true};
    CHECK_INT(wsrr_pmd_params_format(&all, true, f, sizeof(f)), strlen(f));
    CHECK_STR(f, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                 "server_max_window_bits=10; client_max_window_bits=9");
    CHECK_INT(parse_params(f, true, &p, err, sizeof(err)), 0);
    CHECK(memcmp(&p, &all, sizeof(p)) == 0);
    p = defaults();
    wsrr_pmd_params_format(&p, true, f, sizeof(f));
    CHECK_STR(f, "permessage-deflate");
    p.client_max_window_bits_novalue = true;
    wsrr_pmd_params_format(&p, false, f, sizeof(f));
    CHECK_STR(f, "permessage-deflate; client_max_window_bits");
    wsrr_pmd_params_format(&p, true, f, sizeof(f));
    CHECK_STR(f, "permessage-deflate");
    CHECK_INT(wsrr_pmd_params_format(&all, true, f, 10), 127);
    CHECK_STR(f, "permessag");
}

static int negotiate(const char *offer, struct wsrr_pmd_params *a)
{
    struct wsrr_ext e[8];
    struct wsrr_ext_param prm[32];
    char err[128];
    int n = wsrr_ext_parse(offer, strlen(offer), e, 8, prm, 32, err, sizeof(err));
    REQUIRE(n >= 0);
    return wsrr_pmd_negotiate(e, (size_t)n, a);
}

static void test_negotiate(void)
{
    struct wsrr_pmd_params a;
    char f[160], err[160];

    CHECK_INT(negotiate("permessage-deflate; client_max_window_bits", &a), 1);
    wsrr_pmd_params_format(&a, true, f, sizeof(f));
    CHECK_STR(f, "permessage-deflate");
    CHECK_INT(a.client_max_window_bits, 15);

    CHECK_INT(negotiate("permessage-deflate; client_max_window_bits=10; "
                        "server_max_window_bits=12; server_no_context_takeover",
                        &a),
              1);
    wsrr_pmd_params_format(&a, true, f, sizeof(f));
    CHECK_STR(f, "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; "
                 "client_max_window_bits=10");

    /* several offers: invalid ones are skipped, the first valid one wins */
    CHECK_INT(negotiate("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=7, "
                        "permessage-deflate; foo, "
                        "permessage-deflate; client_no_context_takeover, permessage-deflate",
                        &a),
              1);
    wsrr_pmd_params_format(&a, true, f, sizeof(f));
    CHECK_STR(f, "permessage-deflate; client_no_context_takeover");
    CHECK_INT(negotiate("permessage-deflate; server_max_window_bits=8", &a), 1);
    CHECK_INT(a.server_max_window_bits, 8);

    CHECK_INT(negotiate("x-webkit-deflate-frame", &a), 0);
    CHECK_INT(negotiate("", &a), 0);
    CHECK_INT(negotiate("permessage-deflate; server_max_window_bits=16, "
                        "permessage-deflate; client_no_context_takeover=1",
                        &a),
              0);

    /* the 101 side */
    struct wsrr_pmd_params r;
    const char *ok = "x-foo, permessage-deflate; server_no_context_takeover; "
                     "client_max_window_bits=11";
    CHECK_INT(wsrr_pmd_from_response(ok, strlen(ok), &r, err, sizeof(err)), 1);
    CHECK(r.server_no_context_takeover && !r.client_no_context_takeover);
    CHECK_INT(r.client_max_window_bits, 11);
    CHECK_INT(wsrr_pmd_from_response("x-foo", 5, &r, err, sizeof(err)), 0);
    CHECK_INT(wsrr_pmd_from_response("", 0, &r, err, sizeof(err)), 0);
    const char *twice = "permessage-deflate, permessage-deflate";
    CHECK_INT(wsrr_pmd_from_response(twice, strlen(twice), &r, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "twice") != NULL);
    const char *novalue = "permessage-deflate; client_max_window_bits";
    CHECK_INT(wsrr_pmd_from_response(novalue, strlen(novalue), &r, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "needs a value") != NULL);
    const char *syntax = "permessage-deflate;";
    CHECK_INT(wsrr_pmd_from_response(syntax, strlen(syntax), &r, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "expected a parameter name") != NULL);

    /* what negotiate accepts, from_response reads back the same */
    const char *offers[] = {
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=8; server_max_window_bits=8",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    };
    for (size_t i = 0; i < 4; i++) {
        CHECK_INT(negotiate(offers[i], &a), 1);
        int fl = wsrr_pmd_params_format(&a, true, f, sizeof(f));
        CHECK_INT(wsrr_pmd_from_response(f, (size_t)fl, &r, err, sizeof(err)), 1);
        CHECK(memcmp(&r, &a, sizeof(r)) == 0);
    }
}

/* zlib state is allocated on the first message: idle streams are small. */
static void test_lazy_state(void)
{
    enum { N = 1000 };
    struct wsrr_pmd_params p = defaults();
    struct wsrr_pmd_stream **v = malloc(2 * N * sizeof(*v));
    REQUIRE(v);

    /* Is the heap measurable here (not under ASan's allocator)? */
    size_t h0 = heap_in_use();
    void *volatile probe = malloc(100000);
    bool measurable = probe && heap_in_use() >= h0 + 100000;
    free(probe);

    size_t before = heap_in_use();
    for (int i = 0; i < N; i++) {
        v[2 * i] = wsrr_pmd_inflater_new(&p, WSRR_DIR_C2S, 0);
        v[2 * i + 1] = wsrr_pmd_deflater_new(&p, WSRR_DIR_S2C, -1);
        REQUIRE(v[2 * i] && v[2 * i + 1]);
    }
    size_t idle = heap_in_use() - before;
    struct evbuffer *out = evbuffer_new();
    CHECK_INT(wsrr_pmd_inflate(v[0], hello1, sizeof(hello1), true, out), 0);
    CHECK_INT(wsrr_pmd_deflate(v[1], (const uint8_t *)"Hello", 5, true, out), 0);
    evbuffer_free(out);
    size_t used = heap_in_use() - before - idle;
    if (measurable) {
        printf("idle stream: %zu bytes; first message on one of each: %zu bytes\n", idle / (2 * N),
               used);
        CHECK_MSG(idle / (2 * N) < 1024, "an idle stream holds %zu bytes", idle / (2 * N));
        CHECK_MSG(used > 200 * 1024, "zlib state of %zu bytes", used);
    } else {
        printf("heap not measurable here; lazy allocation not checked\n");
    }
    for (int i = 0; i < 2 * N; i++)
        wsrr_pmd_free(v[i]);
    free(v);
}

int main(void)
{
    test_rfc_examples();
    test_tails();
    test_corrupt();
    test_bomb();
    test_round_trips();
    test_window8_distances();
    test_params();
    test_negotiate();
    test_lazy_state();
    return check_finish("test_deflate");
}
