/* test_capture_damage.c — every capture-file item of BAD-INPUTS.md section 10:
 * truncation anywhere, a flipped bit anywhere, a duplicated batch, a foreign
 * file id, lengths past the end, a declared size that differs from the real
 * one, a skippable frame running past the end, a newer format version, and
 * files that are not captures at all.
 *
 * Expectations are computed from an independent walk of the file layout
 * (docs/capture-format.md), not from the reader: which batch each byte
 * belongs to, and how many records each batch holds. */
#include "check.h"
#include "wsrr/capture.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define NREC 120

struct layout {
    uint8_t *file;
    size_t size;
    size_t header_end;
    int nbatch;
    size_t bstart[64], bend[64]; /* byte range of each batch (header + frame) */
    uint32_t bcount[64];
    size_t trailer_start;
};

static char dir[] = "/tmp/wsrr-test-damage-XXXXXX";

static void make_file(struct layout *L, const char *name, uint32_t seed)
{
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    struct wsrr_capture_opts o = {.metadata = "{\"test\":\"damage\"}",
                                  .batch_bytes = 600,
                                  .flush_interval_ns = 3600ull * 1000000000};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    REQUIRE(w);
    uint64_t rnd = seed;
    for (int i = 0; i < NREC; i++) {
        char text[80];
        int n =
            snprintf(text, sizeof(text), "record %d %llx", i, (unsigned long long)check_rand(&rnd));
        struct wsrr_record r = {
            .kind = WSRR_REC_NOTE, .conn = (uint32_t)(i % 3), .ts = (uint64_t)i};
        r.u.note.text = (struct wsrr_span){(const uint8_t *)text, (size_t)n};
        REQUIRE(wsrr_capture_append(w, &r) == 0);
    }
    REQUIRE(wsrr_capture_writer_close(w, err, sizeof(err)) == 0);

    int fd = open(path, O_RDONLY);
    struct stat sb;
    fstat(fd, &sb);
    L->size = (size_t)sb.st_size;
    L->file = malloc(L->size);
    REQUIRE(read(fd, L->file, L->size) == (ssize_t)L->size);
    close(fd);

    /* independent walk: header frame, batch header frames each followed by
     * the zstd frame whose size the batch header gives, trailer, seek table */
    size_t off = 8 + wsrr_le32(L->file + 4);
    L->header_end = off;
    L->nbatch = 0;
    while (off < L->size && memcmp(L->file + off + 8, "WSRB", 4) == 0) {
        REQUIRE(L->nbatch < 64);
        L->bstart[L->nbatch] = off;
        L->bcount[L->nbatch] = wsrr_le32(L->file + off + 8 + 36);
        off += 8 + 80 + wsrr_le32(L->file + off + 8 + 56);
        L->bend[L->nbatch] = off;
        L->nbatch++;
    }
    L->trailer_start = off;
    REQUIRE(memcmp(L->file + off + 8, "WSRT", 4) == 0);
    REQUIRE(L->nbatch >= 8);
}

struct result {
    bool opened;
    int records;
    bool ids_ok; /* every record seen once, in order, content intact */
    size_t ndamage;
    bool trailer, consistent;
    size_t first_offset;
    char first_damage[200];
    char open_err[256];
};

/* Read `len` bytes from an exact-size heap copy (ASan catches over-reads). */
static struct result read_mem(const uint8_t *data, size_t len)
{
    struct result res = {0};
    uint8_t *copy = malloc(len ? len : 1);
    if (len)
        memcpy(copy, data, len);
    struct wsrr_capture_reader *r =
        wsrr_capture_reader_mem(copy, len, res.open_err, sizeof(res.open_err));
    if (!r) {
        free(copy);
        return res;
    }
    res.opened = true;
    res.ids_ok = true;
    struct wsrr_record rec;
    uint64_t last = 0;
    while (wsrr_capture_reader_next(r, &rec) == 1) {
        char want[16];
        int n = snprintf(want, sizeof(want), "record %llu ", (unsigned long long)rec.seq - 1);
        if (rec.seq <= last || rec.kind != WSRR_REC_NOTE || rec.u.note.text.n < (size_t)n ||
            memcmp(rec.u.note.text.p, want, (size_t)n) != 0)
            res.ids_ok = false;
        last = rec.seq;
        res.records++;
    }
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(r, &s);
    res.ndamage = s.ndamage;
    res.trailer = s.trailer;
    res.consistent = s.consistent;
    size_t nd;
    const struct wsrr_capture_damage *d = wsrr_capture_reader_damage(r, &nd);
    if (nd) {
        snprintf(res.first_damage, sizeof(res.first_damage), "offset %llu: %s",
                 (unsigned long long)d[0].offset, d[0].what);
        res.first_offset = (size_t)d[0].offset;
    }
    wsrr_capture_reader_close(r);
    free(copy);
    return res;
}

static int records_before(const struct layout *L, size_t cut)
{
    int n = 0;
    for (int b = 0; b < L->nbatch; b++)
        if (L->bend[b] <= cut)
            n += (int)L->bcount[b];
    return n;
}

static void test_clean(const struct layout *L)
{
    struct result r = read_mem(L->file, L->size);
    CHECK(r.opened);
    CHECK_INT(r.records, NREC);
    CHECK(r.ids_ok);
    CHECK_INT(r.ndamage, 0);
    CHECK(r.trailer && r.consistent);
}

/* Cut the file at every length: the records of every batch that ends
 * before the cut come back, nothing else, and the cut is reported. */
static void test_truncation(const struct layout *L)
{
    for (size_t cut = 0; cut < L->size; cut++) {
        struct result r = read_mem(L->file, cut);
        if (cut < 12) {
            CHECK_MSG(!r.opened, "cut %zu: too short to be recognised", cut);
            CHECK_MSG(strstr(r.open_err, "offset 0") != NULL, "cut %zu: %s", cut, r.open_err);
            continue;
        }
        CHECK_MSG(r.opened, "cut %zu: %s", cut, r.open_err);
        CHECK_MSG(r.records == records_before(L, cut), "cut %zu: %d records, want %d", cut,
                  r.records, records_before(L, cut));
        CHECK(r.ids_ok);
        CHECK_MSG(!r.consistent, "cut %zu must not look complete", cut);
        /* a cut exactly between frames leaves no partial bytes: the missing
         * trailer says "not closed"; any other cut is a damage entry */
        bool on_boundary =
            cut == L->header_end || cut == L->trailer_start || cut == L->trailer_start + 8 + 68;
        for (int b = 0; b < L->nbatch; b++)
            on_boundary |= cut == L->bend[b];
        if (!on_boundary)
            CHECK_MSG(r.ndamage > 0, "cut %zu inside a frame is reported", cut);
    }
}

/* Flip one bit at every byte: at most the batch holding that byte is lost,
 * and the damage is always noticed. */
static void test_bit_flips(const struct layout *L)
{
    uint8_t *f = malloc(L->size);
    uint64_t rnd = 42;
    for (size_t i = 0; i < L->size; i++) {
        memcpy(f, L->file, L->size);
        f[i] ^= (uint8_t)(1u << (check_rand(&rnd) % 8));
        struct result r = read_mem(f, L->size);
        CHECK_MSG(r.opened, "flip at %zu: %s", i, r.open_err);
        int lost_max = 0;
        for (int b = 0; b < L->nbatch; b++)
            if (i >= L->bstart[b] && i < L->bend[b])
                lost_max = (int)L->bcount[b];
        CHECK_MSG(r.records >= NREC - lost_max && r.records <= NREC,
                  "flip at %zu: %d records, at most %d may be lost", i, r.records, lost_max);
        CHECK_MSG(r.ids_ok, "flip at %zu: records intact", i);
        CHECK_MSG(r.ndamage > 0 || !r.consistent, "flip at %zu went unnoticed", i);
        /* and the damage is reported where it is: the start of the frame
         * holding the flipped byte */
        size_t want = 0;
        for (int b = 0; b < L->nbatch; b++)
            if (i >= L->bstart[b] && i < L->bend[b])
                want = L->bstart[b];
        if (i >= L->trailer_start)
            want = i < L->trailer_start + 8 + 68 ? L->trailer_start : L->trailer_start + 8 + 68;
        CHECK_MSG(r.first_offset == want, "flip at %zu: damage reported at %zu, expected %zu (%s)",
                  i, r.first_offset, want, r.first_damage);
    }
    free(f);
}

static uint8_t *splice_bytes(const uint8_t *a, size_t alen, size_t at, const uint8_t *ins,
                             size_t ilen, size_t *outlen)
{
    uint8_t *o = malloc(alen + ilen);
    memcpy(o, a, at);
    memcpy(o + at, ins, ilen);
    memcpy(o + at + ilen, a + at, alen - at);
    *outlen = alen + ilen;
    return o;
}

static void test_duplicate_batch(const struct layout *L)
{
    size_t n;
    int b = 3;
    uint8_t *f = splice_bytes(L->file, L->size, L->bend[b], L->file + L->bstart[b],
                              L->bend[b] - L->bstart[b], &n);
    struct result r = read_mem(f, n);
    CHECK_INT(r.records, NREC);
    CHECK(r.ids_ok);
    CHECK_INT(r.ndamage, 1);
    CHECK_MSG(strstr(r.first_damage, "repeats") != NULL, "%s", r.first_damage);
    free(f);
}

static void test_foreign_batch(const struct layout *L, const struct layout *other)
{
    size_t n;
    uint8_t *f = splice_bytes(L->file, L->size, L->bend[2], other->file + other->bstart[5],
                              other->bend[5] - other->bstart[5], &n);
    struct result r = read_mem(f, n);
    CHECK_INT(r.records, NREC);
    CHECK(r.ids_ok);
    CHECK(r.ndamage >= 1);
    CHECK_MSG(strstr(r.first_damage, "another capture") != NULL, "%s", r.first_damage);
    free(f);
}

/* Rewrite a batch header field and fix its CRC, as a forger would. */
static void set_batch_field(uint8_t *f, size_t bstart, int field, uint32_t v)
{
    uint8_t *h = f + bstart + 8;
    wsrr_put32(h + field, v);
    wsrr_put32(h + 76, (uint32_t)crc32(0, h, 76));
}

static void test_forged_sizes(const struct layout *L)
{
    uint8_t *f = malloc(L->size);

    /* declared compressed size one byte short / long of the real one */
    for (int delta = -1; delta <= 1; delta += 2) {
        memcpy(f, L->file, L->size);
        int b = 4;
        uint32_t cs = wsrr_le32(f + L->bstart[b] + 8 + 56);
        set_batch_field(f, L->bstart[b], 56, cs + (uint32_t)delta);
        struct result r = read_mem(f, L->size);
        CHECK_MSG(r.records == NREC - (int)L->bcount[b], "size %+d: %d records", delta, r.records);
        CHECK(r.ids_ok);
        CHECK(r.ndamage >= 1);
    }

    /* a compressed size that runs past the end of the file (last batch) */
    memcpy(f, L->file, L->size);
    int last = L->nbatch - 1;
    set_batch_field(f, L->bstart[last], 56, 0x7fffffff);
    struct result r = read_mem(f, L->size);
    CHECK_INT(r.records, NREC - (int)L->bcount[last]);
    CHECK(r.ndamage >= 1);

    /* a content size that differs from the frame's */
    memcpy(f, L->file, L->size);
    uint32_t ds = wsrr_le32(f + L->bstart[1] + 8 + 60);
    set_batch_field(f, L->bstart[1], 60, ds + 1);
    r = read_mem(f, L->size);
    CHECK_INT(r.records, NREC - (int)L->bcount[1]);
    CHECK_MSG(strstr(r.first_damage, "content size") != NULL, "%s", r.first_damage);

    /* a record count that differs from the records present */
    memcpy(f, L->file, L->size);
    set_batch_field(f, L->bstart[2], 36, L->bcount[2] + 1);
    r = read_mem(f, L->size);
    CHECK_INT(r.records, NREC - (int)L->bcount[2]);
    CHECK(r.ndamage >= 1);

    /* a huge content size is refused without allocating it */
    memcpy(f, L->file, L->size);
    set_batch_field(f, L->bstart[0], 60, 0xfffffff0u);
    r = read_mem(f, L->size);
    CHECK_INT(r.records, NREC - (int)L->bcount[0]);
    CHECK_MSG(strstr(r.first_damage, "impossible") != NULL ||
                  strstr(r.first_damage, "content size") != NULL,
              "%s", r.first_damage);
    free(f);
}

static void test_skippable_past_end(const struct layout *L)
{
    /* a user skippable frame between batches is read past (zstd allows
     * them), but it shifts every later batch, so the seek table no longer
     * matches, and that is reported */
    uint8_t user[8 + 5] = {0x53, 0x2a, 0x4d, 0x18, 5, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'};
    size_t n;
    uint8_t *f = splice_bytes(L->file, L->size, L->bend[1], user, sizeof(user), &n);
    struct result r = read_mem(f, n);
    CHECK_INT(r.records, NREC);
    CHECK_INT(r.ndamage, 1);
    CHECK_MSG(strstr(r.first_damage, "seek table") != NULL, "%s", r.first_damage);
    free(f);

    /* one at the end whose size runs past the end of the file */
    uint8_t bad[8 + 3] = {0x53, 0x2a, 0x4d, 0x18, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3};
    f = splice_bytes(L->file, L->size, L->size, bad, sizeof(bad), &n);
    r = read_mem(f, n);
    CHECK_INT(r.records, NREC);
    CHECK_INT(r.ndamage, 1);
    CHECK_MSG(strstr(r.first_damage, "past the end") != NULL, "%s", r.first_damage);
    free(f);
}

static void set_header_u16(uint8_t *f, int field, uint16_t v)
{
    uint32_t psize = wsrr_le32(f + 4);
    wsrr_put16(f + 8 + field, v);
    wsrr_put32(f + 8 + psize - 4, (uint32_t)crc32(0, f + 8, psize - 4));
}

static void test_versions(const struct layout *L)
{
    uint8_t *f = malloc(L->size);

    memcpy(f, L->file, L->size);
    set_header_u16(f, 4, 2); /* major 2 */
    struct result r = read_mem(f, L->size);
    CHECK(!r.opened);
    CHECK_MSG(strstr(r.open_err, "version 2.") != NULL && strstr(r.open_err, "offset 12"), "%s",
              r.open_err);

    memcpy(f, L->file, L->size);
    set_header_u16(f, 6, 9); /* minor 9: compatible */
    r = read_mem(f, L->size);
    CHECK(r.opened);
    CHECK_INT(r.records, NREC);

    memcpy(f, L->file, L->size);
    set_header_u16(f, 8, 4); /* an unknown incompatible flag */
    r = read_mem(f, L->size);
    CHECK(!r.opened);
    CHECK_MSG(strstr(r.open_err, "incompatible") != NULL, "%s", r.open_err);

    memcpy(f, L->file, L->size);
    set_header_u16(f, 12, 4); /* an unknown compatible flag: ignored */
    r = read_mem(f, L->size);
    CHECK(r.opened);
    CHECK_INT(r.records, NREC);
    CHECK_INT(r.ndamage, 0);
    free(f);
}

static void test_not_captures(void)
{
    static const uint8_t zstd_empty[] = {0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00};
    const char *text = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    uint8_t noise[4096];
    uint64_t rnd = 7;
    for (size_t i = 0; i < sizeof(noise); i++)
        noise[i] = (uint8_t)check_rand(&rnd);

    struct result r = read_mem(NULL, 0);
    CHECK(!r.opened);
    CHECK_MSG(strstr(r.open_err, "empty") != NULL, "%s", r.open_err);
    r = read_mem(zstd_empty, sizeof(zstd_empty));
    CHECK(!r.opened);
    CHECK_MSG(strstr(r.open_err, "plain zstd") != NULL, "%s", r.open_err);
    r = read_mem((const uint8_t *)text, strlen(text));
    CHECK(!r.opened);
    CHECK_MSG(strstr(r.open_err, "offset 0: not a wsrr capture") != NULL, "%s", r.open_err);
    r = read_mem(noise, sizeof(noise));
    CHECK(!r.opened);

    /* right magic, then noise: opened, nothing recovered, damage reported */
    memcpy(noise, "\x50\x2a\x4d\x18\x10\x00\x00\x00WSRR", 12);
    r = read_mem(noise, sizeof(noise));
    CHECK(r.opened);
    CHECK_INT(r.records, 0);
    CHECK(r.ndamage >= 1);
}

/* A damaged header does not lose the batches: the file id comes from the
 * first intact batch header. */
static void test_header_damage(const struct layout *L)
{
    uint8_t *f = malloc(L->size);
    memcpy(f, L->file, L->size);
    f[8 + 52] ^= 0x20; /* inside the metadata */
    struct result r = read_mem(f, L->size);
    CHECK(r.opened);
    CHECK_INT(r.records, NREC);
    CHECK_MSG(strstr(r.first_damage, "header checksum") != NULL, "%s", r.first_damage);
    free(f);
}

/* A batch cut out cleanly (no trailer to compare with) is still noticed:
 * batch numbers have a gap. */
static void test_removed_batch(const struct layout *L)
{
    int b = 4;
    size_t n = L->trailer_start - (L->bend[b] - L->bstart[b]);
    uint8_t *f = malloc(n);
    memcpy(f, L->file, L->bstart[b]);
    memcpy(f + L->bstart[b], L->file + L->bend[b], L->trailer_start - L->bend[b]);
    struct result r = read_mem(f, n);
    CHECK_INT(r.records, NREC - (int)L->bcount[b]);
    CHECK_INT(r.ndamage, 1);
    CHECK_MSG(strstr(r.first_damage, "batch 4 is missing") != NULL, "%s", r.first_damage);
    CHECK_INT(r.first_offset, L->bstart[b]);
    free(f);
}

/* Cut right after the trailer: the seek table is missing, and that is said. */
static void test_missing_seek_table(const struct layout *L)
{
    struct result r = read_mem(L->file, L->trailer_start + 8 + 68);
    CHECK_INT(r.records, NREC);
    CHECK(r.trailer && !r.consistent);
    CHECK_INT(r.ndamage, 1);
    CHECK_MSG(strstr(r.first_damage, "seek table is missing") != NULL, "%s", r.first_damage);
}

/* Forged headers, each with a valid CRC and claiming the rest of the file,
 * one every 88 bytes: every one must cost its extent once at most, or this
 * 4 MB file takes minutes instead of milliseconds (and the test times out). */
static void test_nested_forged_headers(const struct layout *L)
{
    size_t n = 4u << 20;
    uint8_t *f = calloc(1, n);
    memcpy(f, L->file, L->header_end);
    for (size_t off = L->header_end; off + 88 <= n; off += 88) {
        uint8_t *h = f + off;
        memcpy(h, "\x50\x2a\x4d\x18\x50\x00\x00\x00WSRB", 12);
        memcpy(h + 8 + 4, L->file + 8 + 16, 16); /* the file id */
        wsrr_put64(h + 8 + 20, 0);
        wsrr_put64(h + 8 + 28, 1);
        wsrr_put32(h + 8 + 36, 1);
        wsrr_put32(h + 8 + 56, (uint32_t)(n - off - 88));
        wsrr_put32(h + 8 + 60, 100);
        wsrr_put32(h + 8 + 76, (uint32_t)crc32(0, h + 8, 76));
    }
    struct result r = read_mem(f, n);
    CHECK(r.opened);
    CHECK_INT(r.records, 0);
    CHECK(r.ndamage >= 1);
    free(f);
}

int main(void)
{
    REQUIRE(mkdtemp(dir));
    struct layout L, other;
    make_file(&L, "a.wsrr", 1);
    make_file(&other, "b.wsrr", 2);
    test_clean(&L);
    test_truncation(&L);
    test_bit_flips(&L);
    test_duplicate_batch(&L);
    test_foreign_batch(&L, &other);
    test_forged_sizes(&L);
    test_skippable_past_end(&L);
    test_versions(&L);
    test_not_captures();
    test_header_damage(&L);
    test_removed_batch(&L);
    test_missing_seek_table(&L);
    test_nested_forged_headers(&L);
    free(L.file);
    free(other.file);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_finish("test_capture_damage");
}
