/* test_utf8.c — the incremental UTF-8 validator (lib/utf8.c).
 *
 * 1. A table of valid and invalid sequences after Markus Kuhn's UTF-8
 *    decoder stress test, each checked whole, split at every point (two and
 *    three pieces), one byte at a time and embedded in ASCII at every
 *    alignment of the 8-byte fast path.
 * 2. A brute-force cross-check of every 1-, 2- and 3-byte sequence, and of
 *    a large set of 4-byte ones, against a reference decoder written here
 *    from the definition in RFC 3629 (code point ranges, not byte tables),
 *    including "fail fast": the validator must reject at the first byte that
 *    no continuation could make valid.
 */
#include "check.h"
#include "wsrr/frame.h"

enum ref_result { REF_INVALID = 0, REF_VALID = 1, REF_PREFIX = 2 };

/* Reference: decode code points; a sequence cut short at the end is a valid
 * prefix when some completion encodes a code point in the range of its
 * length that is not a surrogate. */
static enum ref_result ref_check(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint8_t b = s[i];
        unsigned len;
        uint32_t cp, lo, hi;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xe0) == 0xc0) {
            len = 2, cp = b & 0x1f, lo = 0x80, hi = 0x7ff;
        } else if ((b & 0xf0) == 0xe0) {
            len = 3, cp = b & 0x0f, lo = 0x800, hi = 0xffff;
        } else if ((b & 0xf8) == 0xf0) {
            len = 4, cp = b & 0x07, lo = 0x10000, hi = 0x10ffff;
        } else {
            return REF_INVALID;
        }
        unsigned k = 1;
        for (; k < len && i + k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return REF_INVALID;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        unsigned rem = len - k;
        uint32_t min_cp = cp << (6 * rem);
        uint32_t max_cp = min_cp | ((1u << (6 * rem)) - 1);
        uint32_t a = min_cp > lo ? min_cp : lo;
        uint32_t z = max_cp < hi ? max_cp : hi;
        if (a > z)
            return REF_INVALID;
        if (a >= 0xd800 && z <= 0xdfff)
            return REF_INVALID;
        if (rem)
            return REF_PREFIX;
        i += len;
    }
    return REF_VALID;
}

static enum ref_result classify(uint32_t state)
{
    return state == WSRR_UTF8_ACCEPT   ? REF_VALID
           : state == WSRR_UTF8_REJECT ? REF_INVALID
                                       : REF_PREFIX;
}

struct seq {
    const char *name;
    const char *s;
    size_t n;
    enum ref_result want;
};

#define SEQ(name, str, want)                                                                       \
    {                                                                                              \
        name, str, sizeof(str) - 1, want                                                           \
    }

static const struct seq table[] = {
    /* 1-2: correct text and first/last sequences of each length */
    SEQ("empty", "", REF_VALID),
    SEQ("kosme", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", REF_VALID),
    SEQ("first 1-byte U+0000", "\x00", REF_VALID),
    SEQ("first 2-byte U+0080", "\xc2\x80", REF_VALID),
    SEQ("first 3-byte U+0800", "\xe0\xa0\x80", REF_VALID),
    SEQ("first 4-byte U+10000", "\xf0\x90\x80\x80", REF_VALID),
    SEQ("last 1-byte U+007F", "\x7f", REF_VALID),
    SEQ("last 2-byte U+07FF", "\xdf\xbf", REF_VALID),
    SEQ("last 3-byte U+FFFF", "\xef\xbf\xbf", REF_VALID),
    SEQ("last 4-byte U+10FFFF", "\xf4\x8f\xbf\xbf", REF_VALID),
    SEQ("5-byte first", "\xf8\x88\x80\x80\x80", REF_INVALID),
    SEQ("6-byte first", "\xfc\x84\x80\x80\x80\x80", REF_INVALID),
    SEQ("5-byte last", "\xfb\xbf\xbf\xbf\xbf", REF_INVALID),
    SEQ("6-byte last", "\xfd\xbf\xbf\xbf\xbf\xbf", REF_INVALID),
    /* 2.3: other boundaries */
    SEQ("U+D7FF", "\xed\x9f\xbf", REF_VALID),
    SEQ("U+E000", "\xee\x80\x80", REF_VALID),
    SEQ("U+FFFD", "\xef\xbf\xbd", REF_VALID),
    SEQ("U+10FFFF", "\xf4\x8f\xbf\xbf", REF_VALID),
    SEQ("U+110000", "\xf4\x90\x80\x80", REF_INVALID),
    SEQ("U+13FFFF via F4", "\xf4\xbf\xbf\xbf", REF_INVALID),
    SEQ("F5 lead", "\xf5\x80\x80\x80", REF_INVALID),
    SEQ("F7 lead (U+1FFFFF)", "\xf7\xbf\xbf\xbf", REF_INVALID),
    /* 3: malformed sequences */
    SEQ("lone 80", "\x80", REF_INVALID),
    SEQ("lone BF", "\xbf", REF_INVALID),
    SEQ("80 BF", "\x80\xbf", REF_INVALID),
    SEQ("80 BF 80 BF", "\x80\xbf\x80\xbf", REF_INVALID),
    SEQ("ascii then continuation", "abc\x80", REF_INVALID),
    SEQ("2-byte then extra continuation", "\xc2\x80\x80", REF_INVALID),
    SEQ("lonely C0 + space", "\xc0\x20", REF_INVALID),
    SEQ("lonely DF + space", "\xdf\x20", REF_INVALID),
    SEQ("lonely E0 + space", "\xe0\x20", REF_INVALID),
    SEQ("lonely EF + space", "\xef\x20", REF_INVALID),
    SEQ("lonely F0 + space", "\xf0\x20", REF_INVALID),
    SEQ("lonely F7 + space", "\xf7\x20", REF_INVALID),
    SEQ("lonely F8 + space", "\xf8\x20", REF_INVALID),
    SEQ("lonely FC + space", "\xfc\x20", REF_INVALID),
    SEQ("2-byte missing last", "\xdf", REF_PREFIX),
    SEQ("3-byte missing last", "\xef\xbf", REF_PREFIX),
    SEQ("3-byte missing two", "\xe1", REF_PREFIX),
    SEQ("4-byte missing last", "\xf4\x8f\xbf", REF_PREFIX),
    SEQ("4-byte missing two", "\xf0\x90", REF_PREFIX),
    SEQ("text then truncated", "abc\xe2\x82", REF_PREFIX),
    SEQ("overlong 2-byte C0 80 (missing last form)", "\xc0", REF_INVALID),
    SEQ("E0 80 (overlong start)", "\xe0\x80", REF_INVALID),
    SEQ("F0 80 80 (overlong start)", "\xf0\x80\x80", REF_INVALID),
    SEQ("concatenated truncated", "\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80", REF_INVALID),
    SEQ("truncated then ascii",
        "\xe2\x82"
        "a",
        REF_INVALID),
    SEQ("FE", "\xfe", REF_INVALID),
    SEQ("FF", "\xff", REF_INVALID),
    SEQ("FE FE FF FF", "\xfe\xfe\xff\xff", REF_INVALID),
    /* 4: overlong forms */
    SEQ("overlong / C0 AF", "\xc0\xaf", REF_INVALID),
    SEQ("overlong / E0 80 AF", "\xe0\x80\xaf", REF_INVALID),
    SEQ("overlong / F0 80 80 AF", "\xf0\x80\x80\xaf", REF_INVALID),
    SEQ("overlong / F8 80 80 80 AF", "\xf8\x80\x80\x80\xaf", REF_INVALID),
    SEQ("overlong / FC 80 80 80 80 AF", "\xfc\x80\x80\x80\x80\xaf", REF_INVALID),
    SEQ("max overlong C1 BF", "\xc1\xbf", REF_INVALID),
    SEQ("max overlong E0 9F BF", "\xe0\x9f\xbf", REF_INVALID),
    SEQ("max overlong F0 8F BF BF", "\xf0\x8f\xbf\xbf", REF_INVALID),
    SEQ("overlong NUL C0 80", "\xc0\x80", REF_INVALID),
    SEQ("overlong NUL E0 80 80", "\xe0\x80\x80", REF_INVALID),
    SEQ("overlong NUL F0 80 80 80", "\xf0\x80\x80\x80", REF_INVALID),
    /* 5: surrogates */
    SEQ("U+D800", "\xed\xa0\x80", REF_INVALID),
    SEQ("U+DB7F", "\xed\xad\xbf", REF_INVALID),
    SEQ("U+DB80", "\xed\xae\x80", REF_INVALID),
    SEQ("U+DBFF", "\xed\xaf\xbf", REF_INVALID),
    SEQ("U+DC00", "\xed\xb0\x80", REF_INVALID),
    SEQ("U+DF80", "\xed\xbe\x80", REF_INVALID),
    SEQ("U+DFFF", "\xed\xbf\xbf", REF_INVALID),
    SEQ("pair D800 DC00", "\xed\xa0\x80\xed\xb0\x80", REF_INVALID),
    SEQ("pair DBFF DFFF", "\xed\xaf\xbf\xed\xbf\xbf", REF_INVALID),
    SEQ("CESU-8 style U+10000", "\xed\xa0\x80\xed\xb0\x80", REF_INVALID),
    /* 5.3: non-characters are valid UTF-8 */
    SEQ("U+FFFE", "\xef\xbf\xbe", REF_VALID),
    SEQ("U+FDD0", "\xef\xb7\x90", REF_VALID),
    SEQ("U+10FFFE", "\xf4\x8f\xbf\xbe", REF_VALID),
    /* mixed */
    SEQ("mixed valid", "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z", REF_VALID),
    SEQ("euro", "\xe2\x82\xac", REF_VALID),
    SEQ("valid then invalid", "\xe2\x82\xac\xed\xa0\x80", REF_INVALID),
};

/* Feed s in pieces cut at the given points (sorted, ncuts of them). */
static uint32_t feed_cut(const uint8_t *s, size_t n, const size_t *cuts, size_t ncuts)
{
    uint32_t st = WSRR_UTF8_ACCEPT;
    size_t from = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        /* an exact-size copy so ASan sees reads past the piece */
        uint8_t *piece = malloc(to - from ? to - from : 1);
        memcpy(piece, s + from, to - from);
        st = wsrr_utf8_feed(st, piece, to - from);
        free(piece);
        from = to;
    }
    return st;
}

static void test_table(void)
{
    for (size_t t = 0; t < sizeof(table) / sizeof(table[0]); t++) {
        const struct seq *q = &table[t];
        const uint8_t *s = (const uint8_t *)q->s;
        int before = check_failures;

        CHECK_INT(ref_check(s, q->n), q->want); /* the table agrees with the reference */
        CHECK_INT(classify(feed_cut(s, q->n, NULL, 0)), q->want);
        CHECK_INT(wsrr_utf8_valid(s, q->n), q->want == REF_VALID);
        /* two and three pieces */
        for (size_t i = 0; i <= q->n; i++) {
            size_t c1[1] = {i};
            CHECK_INT(classify(feed_cut(s, q->n, c1, 1)), q->want);
            for (size_t j = i; j <= q->n; j++) {
                size_t c2[2] = {i, j};
                CHECK_INT(classify(feed_cut(s, q->n, c2, 2)), q->want);
            }
        }
        /* one byte at a time */
        uint32_t st = WSRR_UTF8_ACCEPT;
        for (size_t i = 0; i < q->n; i++)
            st = wsrr_utf8_feed(st, s + i, 1);
        CHECK_INT(classify(st), q->want);

        /* embedded in ASCII at every alignment of the 8-byte fast path */
        for (size_t pre = 0; pre < 20; pre++) {
            for (size_t post = 0; post < 12; post += 11) {
                uint8_t buf[64];
                memset(buf, 'a', sizeof(buf));
                memcpy(buf + pre, s, q->n);
                size_t n = pre + q->n + post;
                enum ref_result want = q->want;
                if (want == REF_PREFIX && post)
                    want = REF_INVALID;
                CHECK_INT(classify(wsrr_utf8_feed(WSRR_UTF8_ACCEPT, buf, n)), want);
            }
        }
        if (check_failures != before)
            fprintf(stderr, "  in table entry \"%s\"\n", q->name);
    }
}

static void test_edges(void)
{
    /* REJECT is sticky; an out-of-range state is treated as rejected. */
    CHECK_INT(wsrr_utf8_feed(WSRR_UTF8_REJECT, (const uint8_t *)"abc", 3), WSRR_UTF8_REJECT);
    CHECK_INT(wsrr_utf8_feed(WSRR_UTF8_REJECT, NULL, 0), WSRR_UTF8_REJECT);
    CHECK_INT(wsrr_utf8_feed(1000, (const uint8_t *)"a", 1), WSRR_UTF8_REJECT);
    CHECK_INT(wsrr_utf8_feed(WSRR_UTF8_ACCEPT, NULL, 0), WSRR_UTF8_ACCEPT);
    CHECK(wsrr_utf8_valid(NULL, 0));

    /* A long ASCII run with one bad byte at every position. */
    uint8_t buf[300];
    memset(buf, 'x', sizeof(buf));
    CHECK(wsrr_utf8_valid(buf, sizeof(buf)));
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = 0x80;
        CHECK(!wsrr_utf8_valid(buf, sizeof(buf)));
        CHECK(!wsrr_utf8_valid(buf + (i & 7), sizeof(buf) - (i & 7)));
        buf[i] = 0x7f;
        CHECK(wsrr_utf8_valid(buf, sizeof(buf)));
        buf[i] = 'x';
    }
    /* Fail fast: the state is REJECT right after the byte that proves it. */
    const uint8_t ed_a0[] = {0xed, 0xa0};
    CHECK_INT(wsrr_utf8_feed(WSRR_UTF8_ACCEPT, ed_a0, 1) != WSRR_UTF8_REJECT, 1);
    CHECK_INT(wsrr_utf8_feed(WSRR_UTF8_ACCEPT, ed_a0, 2), WSRR_UTF8_REJECT);
}

/* Compare the validator, whole and byte by byte, with the reference. */
static long long mismatches;

static void cross(const uint8_t *s, size_t n, bool bytewise)
{
    enum ref_result want = ref_check(s, n);
    uint32_t st = wsrr_utf8_feed(WSRR_UTF8_ACCEPT, s, n);
    bool bad = classify(st) != want;
    if (bytewise && !bad) {
        uint32_t b = WSRR_UTF8_ACCEPT;
        for (size_t i = 0; i < n; i++)
            b = wsrr_utf8_feed(b, s + i, 1);
        bad = b != st;
    }
    if (bad && mismatches++ < 10) {
        fprintf(stderr, "mismatch on");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %02x", s[i]);
        fprintf(stderr, ": reference %d, validator state %u\n", want, st);
    }
}

static void test_brute_force(void)
{
    uint8_t s[4];

    mismatches = 0;
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        cross(s, 1, true);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            cross(s, 2, true);
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                cross(s, 3, false);
            }
        }
    }
    /* 4 bytes: every lead with the continuation bytes drawn from the
     * values where classes change, plus all F0-F4 xx xx xx with
     * continuation bytes (every valid 4-byte sequence and its neighbours). */
    static const uint8_t edge[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0,
                                   0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef,
                                   0xf0, 0xf4, 0xf5, 0xf8, 0xfc, 0xff};
    const size_t ne = sizeof(edge);
    for (unsigned a = 0; a < 256; a++)
        for (size_t b = 0; b < ne; b++)
            for (size_t c = 0; c < ne; c++)
                for (size_t d = 0; d < ne; d++) {
                    uint8_t q[4] = {(uint8_t)a, edge[b], edge[c], edge[d]};
                    cross(q, 4, true);
                }
    for (unsigned a = 0xf0; a <= 0xf4; a++)
        for (unsigned b = 0x7f; b <= 0xc0; b++)
            for (unsigned c = 0x7f; c <= 0xc0; c++)
                for (unsigned d = 0x7f; d <= 0xc0; d++) {
                    uint8_t q[4] = {(uint8_t)a, (uint8_t)b, (uint8_t)c, (uint8_t)d};
                    cross(q, 4, false);
                }
    /* random 4- to 12-byte strings biased towards high bytes */
    uint64_t seed = 0x5eed;
    for (int i = 0; i < 400000; i++) {
        uint8_t q[12];
        uint64_t r = check_rand(&seed);
        size_t n = 4 + (size_t)(r % 9);
        for (size_t j = 0; j < n; j++) {
            uint64_t x = check_rand(&seed);
            q[j] = (uint8_t)(x & 3 ? 0x80 | (x >> 8) : x >> 8);
        }
        cross(q, n, (i & 15) == 0);
    }
    check_count++;
    if (mismatches) {
        check_failures++;
        fprintf(stderr, "%s:%d: %lld validator/reference mismatches\n", __FILE__, __LINE__,
                mismatches);
    }
}

int main(void)
{
    test_table();
    test_edges();
    test_brute_force();
    return check_finish("test_utf8");
}
