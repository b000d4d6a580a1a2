/* capture_reader.c — the streaming, damage-tolerant .wsrr reader.
 *
 * The reader walks the file front to back through an input window (or over
 * memory directly). A batch is committed (its records handed out) only when
 * the batch header CRC, the CRC of the compressed bytes, the zstd content
 * checksum, the declared sizes and every record's framing all agree. Any
 * byte range that is not part of a good batch, the header, the trailer or
 * the seek table becomes a damage entry, and reading resumes at the next
 * batch header carrying the file's id (a 12-byte pattern: skippable magic,
 * size 80, tag "WSRB"). The window grows only as file data actually arrives,
 * so a forged size costs at most the file's own length in memory.
 */
#include "capture-int.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define MAX_DAMAGE_KEPT 64
#define EXTENT_BACKOFF  64
#define READ_CHUNK      (64 * 1024)

struct wsrr_capture_reader {
    int fd;
    bool own_fd;
    uint8_t *ibuf; /* window over the file (NULL for memory input) */
    size_t icap;
    const uint8_t *base; /* ibuf or the caller's memory */
    size_t pos, end;     /* unread bytes are base[pos, end) */
    uint64_t base_off;   /* file offset of base[0] */
    bool eof;
    int ioerr;
    size_t max_batch;

    struct wsrr_capture_info info;
    char *meta;
    bool have_id;

    ZSTD_DCtx *dctx;
    uint8_t *content; /* the committed batch's records */
    size_t content_cap, content_len, content_pos;
    uint32_t batch_left;
    bool any_batch;
    uint64_t last_batch_no;
    bool done;

    /* the seek table this file should end with, rebuilt while reading */
    uint8_t *seek;
    size_t seek_len, seek_cap;
    bool seek_lost;          /* the expected seek table could not be rebuilt */
    bool seek_seen;          /* a seek table followed the trailer */
    bool seek_ok;            /* ... and matched */
    size_t damage_at_commit; /* damage count when the last batch was committed */

    struct wsrr_capture_damage damage[MAX_DAMAGE_KEPT];
    struct wsrr_capture_summary sum;
};

static const uint8_t batch_pattern[12] = {0x50, 0x2a, 0x4d, 0x18, BH_SIZE, 0,
                                          0,    0,    'W',  'S',  'R',     'B'};
static const uint8_t trailer_pattern[12] = {0x50, 0x2a, 0x4d, 0x18, TR_SIZE, 0,
                                            0,    0,    'W',  'S',  'R',     'T'};

static uint64_t off_at(const struct wsrr_capture_reader *r, size_t pos)
{
    return r->base_off + pos;
}

static size_t avail(const struct wsrr_capture_reader *r)
{
    return r->end - r->pos;
}

static void add_damage(struct wsrr_capture_reader *r, uint64_t offset, uint64_t length,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void add_damage(struct wsrr_capture_reader *r, uint64_t offset, uint64_t length,
                       const char *fmt, ...)
{
    if (r->sum.ndamage < MAX_DAMAGE_KEPT) {
        struct wsrr_capture_damage *d = &r->damage[r->sum.ndamage];
        d->offset = offset;
        d->length = length;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->what, sizeof(d->what), fmt, ap);
        va_end(ap);
    }
    r->sum.ndamage++;
}

/* The last damage entry covers more bytes than first thought (resync). */
static void extend_damage(struct wsrr_capture_reader *r, uint64_t length)
{
    if (r->sum.ndamage && r->sum.ndamage <= MAX_DAMAGE_KEPT)
        r->damage[r->sum.ndamage - 1].length = length;
}

/* Make at least `need` unread bytes available if the file has them. Grows
 * the window only as data arrives. Returns what is available. */
static size_t fill(struct wsrr_capture_reader *r, size_t need)
{
    if (!r->ibuf && r->fd < 0) /* memory input */
        return avail(r);
    while (avail(r) < need && !r->eof) {
        if (r->pos > 0 && (r->pos >= r->icap / 2 || r->end == r->icap)) {
            memmove(r->ibuf, r->ibuf + r->pos, avail(r));
            r->base_off += r->pos;
            r->end -= r->pos;
            r->pos = 0;
        }
        if (r->end == r->icap) {
            size_t ncap = r->icap ? r->icap * 2 : READ_CHUNK;
            uint8_t *nb = realloc(r->ibuf, ncap);
            if (!nb) {
                r->ioerr = -ENOMEM;
                r->eof = true;
                break;
            }
            r->ibuf = nb;
            r->base = nb;
            r->icap = ncap;
        }
        ssize_t k = read(r->fd, r->ibuf + r->end, r->icap - r->end);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            r->ioerr = -errno;
            r->eof = true;
        } else if (k == 0) {
            r->eof = true;
        } else {
            r->end += (size_t)k;
        }
    }
    return avail(r);
}

static void skip(struct wsrr_capture_reader *r, size_t n)
{
    r->pos += n;
}

/* Scan forward from the current position for the next batch header or
 * trailer pattern; the bytes passed over belong to the last damage entry,
 * which started at damage_off. */
static void resync(struct wsrr_capture_reader *r, uint64_t damage_off)
{
    for (;;) {
        size_t n = avail(r);
        const uint8_t *p = r->base + r->pos;
        const uint8_t *hit = NULL;
        for (const uint8_t *q = p; n >= sizeof(batch_pattern);) {
            q = memchr(q, 0x50, (size_t)(p + n - q) - (sizeof(batch_pattern) - 1));
            if (!q)
                break;
            if (memcmp(q, batch_pattern, sizeof(batch_pattern)) == 0 ||
                memcmp(q, trailer_pattern, sizeof(trailer_pattern)) == 0) {
                hit = q;
                break;
            }
            q++;
            if ((size_t)(p + n - q) < sizeof(batch_pattern))
                break;
        }
        if (hit) {
            skip(r, (size_t)(hit - p));
            extend_damage(r, off_at(r, r->pos) - damage_off);
            return;
        }
        if (r->eof) {
            skip(r, n);
            extend_damage(r, off_at(r, r->pos) - damage_off);
            return;
        }
        /* keep a possible partial pattern at the end of the window */
        if (n >= sizeof(batch_pattern))
            skip(r, n - (sizeof(batch_pattern) - 1));
        fill(r, avail(r) + READ_CHUNK);
    }
}

static void damage_and_resync(struct wsrr_capture_reader *r, uint64_t at, const char *what)
{
    add_damage(r, at, 0, "%s", what);
    resync(r, at);
}

static void seek_expect(struct wsrr_capture_reader *r, uint64_t csize, uint32_t dsize,
                        uint32_t checksum);

/* ---- header ---- */

/* The header could not be used: fall back to what the batches say. */
static void header_lost(struct wsrr_capture_reader *r)
{
    r->seek_lost = true;
    r->info.major = WSRR_CAPTURE_MAJOR;
    r->info.metadata = "{}";
    r->info.metadata_len = 2;
    r->have_id = false;
}

/* Is there a batch header within the first few MiB? Leaves the position at
 * it when there is; restores nothing when not (the file is refused then). */
static bool find_batch_near_start(struct wsrr_capture_reader *r)
{
    const size_t limit = (size_t)8 << 20;
    size_t have = fill(r, limit);
    const uint8_t *p = r->base + r->pos;
    const uint8_t *hit = have >= sizeof(batch_pattern)
                             ? memmem(p, have, batch_pattern, sizeof(batch_pattern))
                             : NULL;
    if (!hit)
        return false;
    skip(r, (size_t)(hit - p));
    return true;
}

static int read_header(struct wsrr_capture_reader *r, char *err, size_t errlen)
{
    size_t n = fill(r, SKIP_HDR + 4);
    const uint8_t *p = r->base + r->pos;

    if (r->ioerr)
        return wsrr_seterr(err, errlen, -r->ioerr, "read error: %s", strerror(-r->ioerr));
    if (n >= 4 && wsrr_le32(p) == 0xFD2FB528u)
        return wsrr_seterr(err, errlen, EINVAL,
                           "offset 0: a plain zstd stream, not a wsrr capture (expected a "
                           "skippable frame with tag \"WSRR\" first)");
    if (n < SKIP_HDR + 4 || wsrr_le32(p) != WSRR_SKIPPABLE_MAGIC ||
        memcmp(p + SKIP_HDR, TAG_HEADER, 4) != 0) {
        char found[3 * 12 + 1] = "";
        for (size_t i = 0; i < n && i < 12; i++)
            snprintf(found + 3 * i, 4, "%02x ", p[i]);
        if (n == 0)
            snprintf(found, sizeof(found), "an empty file ");
        found[strlen(found) ? strlen(found) - 1 : 0] = '\0';
        /* A capture whose first bytes were damaged still has its batches:
         * look for one near the start before calling it a foreign file. */
        if (n >= SKIP_HDR + 4 && find_batch_near_start(r)) {
            add_damage(r, 0, off_at(r, r->pos),
                       "file header unrecognisable (found %s); metadata and start time lost",
                       found);
            header_lost(r);
            return 0;
        }
        return wsrr_seterr(err, errlen, EINVAL,
                           "offset 0: not a wsrr capture (expected 50 2a 4d 18 <size> 57 53 52 "
                           "52, found %s)",
                           found);
    }

    uint32_t psize = wsrr_le32(p + 4);
    bool size_ok = psize >= FH_MIN && psize <= FH_MIN + FH_MAX_META;
    size_t have = fill(r, SKIP_HDR + (size_ok ? psize : FH_META));
    p = r->base + r->pos;
    const uint8_t *h = p + SKIP_HDR;

    if (size_ok && have >= SKIP_HDR + psize) {
        uint32_t mlen = wsrr_le32(h + FH_META_LEN);
        bool crc_ok = mlen == psize - FH_MIN &&
                      wsrr_le32(h + FH_META + mlen) == (uint32_t)crc32(0, h, FH_META + mlen);
        if (crc_ok) {
            r->info.major = wsrr_le16(h + FH_MAJOR);
            r->info.minor = wsrr_le16(h + FH_MINOR);
            r->info.incompat_flags = wsrr_le32(h + FH_INCOMPAT);
            r->info.compat_flags = wsrr_le32(h + FH_COMPAT);
            if (r->info.major != WSRR_CAPTURE_MAJOR)
                return wsrr_seterr(err, errlen, ENOTSUP,
                                   "offset %d: capture format version %u.%u; this wsrr reads "
                                   "%d.x",
                                   SKIP_HDR + FH_MAJOR, r->info.major, r->info.minor,
                                   WSRR_CAPTURE_MAJOR);
            if (r->info.incompat_flags)
                return wsrr_seterr(err, errlen, ENOTSUP,
                                   "offset %d: unknown incompatible feature flags 0x%08x (written "
                                   "by a newer wsrr)",
                                   SKIP_HDR + FH_INCOMPAT, r->info.incompat_flags);
            memcpy(r->info.file_id, h + FH_FILE_ID, WSRR_FILE_ID_LEN);
            r->info.start_wall_ns = wsrr_le64(h + FH_START_WALL);
            r->info.start_mono_ns = wsrr_le64(h + FH_START_MONO);
            r->meta = malloc(mlen + 1);
            if (!r->meta)
                return wsrr_seterr(err, errlen, ENOMEM, "out of memory");
            memcpy(r->meta, h + FH_META, mlen);
            r->meta[mlen] = '\0';
            r->info.metadata = r->meta;
            r->info.metadata_len = mlen;
            r->info.header_ok = true;
            r->have_id = true;
            seek_expect(r, SKIP_HDR + psize, 0, XXH64_EMPTY_LOW32);
            skip(r, SKIP_HDR + psize);
            return 0;
        }
    }

    /* Right magic, damaged or truncated header: the declared size cannot be
     * trusted either, so look for the first batch header after the tag. The
     * file id is taken from the first intact batch header. */
    uint64_t at = off_at(r, r->pos);
    if (size_ok && have < SKIP_HDR + psize)
        add_damage(r, at, 0, "file header truncated (file ends %zu bytes into a %u-byte header)",
                   have, SKIP_HDR + psize);
    else if (size_ok)
        add_damage(r, at, 0, "file header checksum mismatch (metadata and start time lost)");
    else
        add_damage(r, at, 0, "file header declares an impossible size of %u bytes", psize);
    skip(r, SKIP_HDR + 4);
    resync(r, at);
    header_lost(r);
    return 0;
}

static struct wsrr_capture_reader *reader_new(void)
{
    struct wsrr_capture_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = -1;
    r->max_batch = WSRR_CAPTURE_DEFAULT_MAX_BATCH;
    r->dctx = ZSTD_createDCtx();
    if (!r->dctx) {
        free(r);
        return NULL;
    }
    return r;
}

static struct wsrr_capture_reader *finish_open(struct wsrr_capture_reader *r, const char *name,
                                               char *err, size_t errlen)
{
    char why[256];
    if (read_header(r, why, sizeof(why)) < 0) {
        wsrr_seterr(err, errlen, EINVAL, "%s: %s", name, why);
        wsrr_capture_reader_close(r);
        return NULL;
    }
    return r;
}

struct wsrr_capture_reader *wsrr_capture_reader_open(const char *path, char *err, size_t errlen)
{
    struct wsrr_capture_reader *r = reader_new();
    if (!r) {
        wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        return NULL;
    }
    if (strcmp(path, "-") == 0) {
        r->fd = STDIN_FILENO;
    } else {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0) {
            wsrr_seterr(err, errlen, errno, "cannot open %s: %s", path, strerror(errno));
            wsrr_capture_reader_close(r);
            return NULL;
        }
        r->own_fd = true;
    }
    return finish_open(r, strcmp(path, "-") ? path : "standard input", err, errlen);
}

struct wsrr_capture_reader *wsrr_capture_reader_mem(const uint8_t *data, size_t len, char *err,
                                                    size_t errlen)
{
    struct wsrr_capture_reader *r = reader_new();
    if (!r) {
        wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        return NULL;
    }
    r->base = data;
    r->end = len;
    r->eof = true;
    return finish_open(r, "capture", err, errlen);
}

void wsrr_capture_reader_set_max_batch(struct wsrr_capture_reader *r, size_t max)
{
    r->max_batch = max < ((size_t)1 << 30) ? max : ((size_t)1 << 30);
}

const struct wsrr_capture_info *wsrr_capture_reader_info(const struct wsrr_capture_reader *r)
{
    return &r->info;
}

/* ---- batches ---- */

static int grow_content(struct wsrr_capture_reader *r, size_t need)
{
    if (need <= r->content_cap)
        return 0;
    size_t n = r->content_cap ? r->content_cap : 64 * 1024;
    while (n < need)
        n *= 2;
    uint8_t *b = realloc(r->content, n);
    if (!b)
        return -ENOMEM;
    r->content = b;
    r->content_cap = n;
    return 0;
}

/* Append one entry to the seek table this file should end with. */
static void seek_expect(struct wsrr_capture_reader *r, uint64_t csize, uint32_t dsize,
                        uint32_t checksum)
{
    if (r->seek_len + ST_ENTRY > r->seek_cap) {
        size_t ncap = r->seek_cap ? r->seek_cap * 2 : 64 * ST_ENTRY;
        uint8_t *ns = realloc(r->seek, ncap);
        if (!ns) {
            r->seek_lost = true;
            return;
        }
        r->seek = ns;
        r->seek_cap = ncap;
    }
    uint8_t *e = r->seek + r->seek_len;
    wsrr_put32(e, (uint32_t)csize);
    wsrr_put32(e + 4, dsize);
    wsrr_put32(e + 8, checksum);
    r->seek_len += ST_ENTRY;
}

/* Skip a batch whose header passed its CRC (so its extent can be trusted)
 * but whose content cannot be used; the whole extent is the damage. Each
 * byte is looked at a bounded number of times, so forged headers cannot
 * make reading quadratic. */
static void skip_extent(struct wsrr_capture_reader *r, uint64_t at, size_t extent, const char *what)
{
    /* the bytes after the extent come into the window first, so that
     * nothing is compacted away once positions are computed */
    size_t have = fill(r, extent + sizeof(batch_pattern));
    size_t n = have < extent ? have : extent;
    add_damage(r, at, n, "%s", what);
    if (n < extent) {
        skip(r, n);
        return;
    }
    const uint8_t *next = r->base + r->pos + extent;
    size_t after = have - extent;
    uint32_t magic = after >= 4 ? wsrr_le32(next) : 0;
    bool known = after == 0 ||
                 (after >= sizeof(batch_pattern) &&
                  (memcmp(next, batch_pattern, sizeof(batch_pattern)) == 0 ||
                   memcmp(next, trailer_pattern, sizeof(trailer_pattern)) == 0)) ||
                 ((magic & 0xFFFFFFF0u) == 0x184D2A50u && magic != WSRR_SKIPPABLE_MAGIC &&
                  !(after >= SKIP_HDR + 3 && memcmp(next + SKIP_HDR, "WSR", 3) == 0));
    if (known) {
        skip(r, extent);
        return;
    }
    /* The declared size was a little off (bytes inserted into or removed
     * from the frame): look for the next header from slightly before the
     * claimed end. The back-off is a constant, so reading stays linear. */
    size_t back = extent - 1 < EXTENT_BACKOFF ? extent - 1 : EXTENT_BACKOFF;
    skip(r, extent - back);
    resync(r, at);
}

/* Decompress the frame into r->content, growing the buffer only as output
 * is produced, never beyond dsize. Returns NULL or what went wrong. */
static const char *decompress(struct wsrr_capture_reader *r, const uint8_t *frame, size_t csize,
                              size_t dsize)
{
    if (wsrr_le32(frame) != 0xFD2FB528u)
        return "not a zstd frame";
    if (ZSTD_findFrameCompressedSize(frame, csize) != csize)
        return "zstd frame size differs from the batch header";
    if (ZSTD_getFrameContentSize(frame, csize) != dsize)
        return "zstd content size differs from the batch header";
    if (!(frame[4] & 0x04)) /* Frame_Header_Descriptor: Content_Checksum_flag (RFC 8878) */
        return "zstd frame without a content checksum";

    ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
    ZSTD_inBuffer in = {frame, csize, 0};
    size_t cap = dsize < ((size_t)1 << 20) ? dsize : ((size_t)1 << 20);
    if (grow_content(r, cap ? cap : 1) < 0)
        return "out of memory";
    ZSTD_outBuffer out = {r->content, cap, 0};
    size_t left;
    do {
        if (out.pos == out.size && out.size < dsize) {
            size_t ncap = out.size * 2 < dsize ? out.size * 2 : dsize;
            if (grow_content(r, ncap) < 0)
                return "out of memory";
            out.dst = r->content;
            out.size = ncap;
        }
        size_t in0 = in.pos, out0 = out.pos;
        left = ZSTD_decompressStream(r->dctx, &out, &in);
        if (ZSTD_isError(left))
            return ZSTD_getErrorName(left);
        if (left && in.pos == in0 && out.pos == out0 && out.pos < out.size)
            return "zstd frame does not end where declared";
    } while (left);
    r->content_len = out.pos;
    return out.pos == dsize ? NULL : "content smaller than declared";
}

/* Decompress and check the batch whose header is at the current position.
 * Returns 1 when committed, 0 when it was skipped as damage. */
static int try_batch(struct wsrr_capture_reader *r)
{
    uint64_t at = off_at(r, r->pos);
    size_t have = fill(r, BATCH_HDR_TOTAL);
    const uint8_t *h = r->base + r->pos + SKIP_HDR;
    char why[200];

    if (have < BATCH_HDR_TOTAL) {
        add_damage(r, at, have, "batch header truncated (file ends %zu bytes into it)", have);
        skip(r, have);
        return 0;
    }
    if (wsrr_le32(h + BH_CRC) != (uint32_t)crc32(0, h, BH_CRC)) {
        skip(r, 1);
        damage_and_resync(r, at, "batch header checksum mismatch");
        return 0;
    }
    uint64_t batch_no = wsrr_le64(h + BH_BATCH);
    uint64_t first_seq = wsrr_le64(h + BH_FIRST_SEQ);
    uint32_t count = wsrr_le32(h + BH_COUNT);
    uint32_t csize = wsrr_le32(h + BH_CSIZE);
    uint32_t dsize = wsrr_le32(h + BH_DSIZE);
    uint32_t fcrc = wsrr_le32(h + BH_FRAME_CRC);

    if (count == 0 || csize < 4 || csize > r->max_batch || dsize > r->max_batch ||
        dsize < (uint64_t)count * WSRR_REC_HEADER_LEN) {
        snprintf(why, sizeof(why),
                 "batch %llu header declares impossible sizes (%u records, %u compressed, "
                 "%u content bytes)",
                 (unsigned long long)batch_no, count, csize, dsize);
        skip(r, 1);
        damage_and_resync(r, at, why);
        return 0;
    }
    /* From here the header is intact, so its extent can be trusted. */
    size_t extent = BATCH_HDR_TOTAL + (size_t)csize;
    have = fill(r, extent);
    h = r->base + r->pos + SKIP_HDR; /* fill() may have moved the window */
    if (!r->have_id) { /* the file header was lost: adopt the first intact batch's id */
        memcpy(r->info.file_id, h + BH_FILE_ID, WSRR_FILE_ID_LEN);
        r->have_id = true;
    }
    if (memcmp(r->info.file_id, h + BH_FILE_ID, WSRR_FILE_ID_LEN) != 0) {
        snprintf(why, sizeof(why), "batch %llu from another capture (foreign file id) skipped",
                 (unsigned long long)batch_no);
        skip_extent(r, at, extent, why);
        return 0;
    }
    if (r->any_batch && batch_no <= r->last_batch_no) {
        snprintf(why, sizeof(why), "batch %llu repeats an earlier batch (duplicate skipped)",
                 (unsigned long long)batch_no);
        skip_extent(r, at, extent, why);
        return 0;
    }
    if (have < extent) {
        add_damage(r, at, have,
                   "batch %llu truncated: the file ends %zu bytes into its %u-byte frame "
                   "(%u records lost)",
                   (unsigned long long)batch_no, have - BATCH_HDR_TOTAL, csize, count);
        skip(r, have);
        return 0;
    }
    const uint8_t *frame = r->base + r->pos + BATCH_HDR_TOTAL;
    const char *bad = NULL;
    if ((uint32_t)crc32(0, frame, csize) != fcrc)
        bad = "compressed data checksum mismatch";
    else
        bad = decompress(r, frame, csize, dsize);
    if (bad) {
        snprintf(why, sizeof(why), "batch %llu: %s (%u records lost)", (unsigned long long)batch_no,
                 bad, count);
        skip_extent(r, at, extent, why);
        return 0;
    }

    /* Every record must frame exactly; the count and first seq must agree. */
    size_t off = 0;
    uint32_t k = 0;
    struct wsrr_record rec;
    char rerr[160];
    while (off < r->content_len) {
        ssize_t n =
            wsrr_record_decode(r->content + off, r->content_len - off, &rec, rerr, sizeof(rerr));
        if (n < 0) {
            snprintf(why, sizeof(why), "batch %llu: record %u: %s", (unsigned long long)batch_no, k,
                     rerr);
            bad = why;
            break;
        }
        if (k == 0 && rec.seq != first_seq) {
            snprintf(why, sizeof(why), "batch %llu: first record seq %llu, header says %llu",
                     (unsigned long long)batch_no, (unsigned long long)rec.seq,
                     (unsigned long long)first_seq);
            bad = why;
            break;
        }
        off += (size_t)n;
        k++;
    }
    if (!bad && k != count) {
        snprintf(why, sizeof(why), "batch %llu: %u records, header says %u",
                 (unsigned long long)batch_no, k, count);
        bad = why;
    }
    if (bad) {
        skip_extent(r, at, extent, bad);
        return 0;
    }

    /* Batches are numbered 0, 1, 2...: a gap nobody reported is a batch that
     * was cut out cleanly. */
    uint64_t expect = r->any_batch ? r->last_batch_no + 1 : 0;
    if (batch_no != expect && r->sum.ndamage == r->damage_at_commit) {
        if (batch_no - expect == 1)
            add_damage(r, at, 0, "batch %llu is missing (cut out before this offset)",
                       (unsigned long long)expect);
        else
            add_damage(r, at, 0, "batches %llu-%llu are missing (cut out before this offset)",
                       (unsigned long long)expect, (unsigned long long)batch_no - 1);
    }
    if (batch_no != expect)
        r->seek_lost = true; /* the index of this file can no longer be rebuilt */

    seek_expect(r, BATCH_HDR_TOTAL, 0, XXH64_EMPTY_LOW32);
    seek_expect(r, csize, dsize, wsrr_le32(frame + csize - 4));
    skip(r, extent);
    r->content_pos = 0;
    r->batch_left = count;
    r->any_batch = true;
    r->last_batch_no = batch_no;
    r->damage_at_commit = r->sum.ndamage;
    r->sum.batches++;
    return 1;
}

static void read_trailer(struct wsrr_capture_reader *r)
{
    uint64_t at = off_at(r, r->pos);
    size_t have = fill(r, SKIP_HDR + TR_SIZE);
    if (have < SKIP_HDR + TR_SIZE) {
        add_damage(r, at, have, "trailer truncated");
        skip(r, have);
        return;
    }
    const uint8_t *t = r->base + r->pos + SKIP_HDR;
    if (wsrr_le32(t + TR_CRC) != (uint32_t)crc32(0, t, TR_CRC) ||
        (r->have_id && memcmp(t + TR_FILE_ID, r->info.file_id, WSRR_FILE_ID_LEN) != 0)) {
        skip(r, 1);
        damage_and_resync(r, at, "trailer checksum or file id mismatch");
        return;
    }
    r->sum.trailer = true;
    r->sum.trailer_batches = wsrr_le64(t + TR_BATCHES);
    r->sum.trailer_records = wsrr_le64(t + TR_RECORDS);
    seek_expect(r, TRAILER_TOTAL, 0, XXH64_EMPTY_LOW32);
    skip(r, SKIP_HDR + TR_SIZE);
}

/* Skip a skippable frame we do not interpret (the seek table, or a user
 * frame); one that runs past the end of the file is damage. */
static void skip_frame(struct wsrr_capture_reader *r, uint32_t magic, uint32_t size)
{
    uint64_t at = off_at(r, r->pos);
    uint64_t total = SKIP_HDR + (uint64_t)size;
    /* Advance through the frame window by window, not all at once. */
    uint64_t left = total;
    while (left) {
        size_t have = fill(r, 1);
        if (!have) {
            add_damage(r, at, total - left,
                       "skippable frame 0x%08x declares %u bytes, runs past the end of the file",
                       magic, size);
            return;
        }
        size_t n = have < left ? have : (size_t)left;
        skip(r, n);
        left -= n;
    }
    /* zstd's seekable format lists every frame, so a frame wsrr did not
     * write makes the file's own seek table disagree */
    seek_expect(r, total, 0, XXH64_EMPTY_LOW32);
}

/* The seek table after the trailer: one entry per frame before it (header,
 * two per batch, trailer), each equal to what was read. */
static void read_seek_table(struct wsrr_capture_reader *r, uint32_t size)
{
    uint64_t at = off_at(r, r->pos);
    r->seek_seen = true;
    if (size < ST_FOOTER || size > r->max_batch) {
        add_damage(r, at, 0, "seek table declares an impossible size of %u bytes", size);
        skip(r, 1);
        resync(r, at);
        return;
    }
    size_t have = fill(r, SKIP_HDR + (size_t)size);
    if (have < SKIP_HDR + (size_t)size) {
        add_damage(r, at, have, "seek table truncated (file ends %zu bytes into it)", have);
        skip(r, have);
        return;
    }
    const uint8_t *f = r->base + r->pos + SKIP_HDR + size - ST_FOOTER;
    const uint8_t *e = r->base + r->pos + SKIP_HDR;
    uint32_t entries = wsrr_le32(f);
    uint64_t want = 2 * r->sum.trailer_batches + 2;
    if (wsrr_le32(f + 5) != WSRR_SEEKABLE_FOOTER || !(f[4] & ST_F_CHECKSUM) ||
        (f[4] & ST_RESERVED_BITS) || (uint64_t)entries * ST_ENTRY + ST_FOOTER != size ||
        entries != want)
        add_damage(r, at, SKIP_HDR + (uint64_t)size,
                   "seek table malformed (%u entries, descriptor 0x%02x; expected %llu entries "
                   "with checksums)",
                   entries, f[4], (unsigned long long)want);
    else if (r->sum.ndamage == 0 && !r->seek_lost &&
             (r->seek_len != size - ST_FOOTER || memcmp(e, r->seek, r->seek_len) != 0))
        add_damage(r, at, SKIP_HDR + (uint64_t)size, "seek table disagrees with the frames read");
    else if (!r->seek_lost)
        r->seek_ok = true;
    skip(r, SKIP_HDR + (size_t)size);
}

/* Advance to the next committed batch. Returns 1, or 0 at the end. */
static int next_batch(struct wsrr_capture_reader *r)
{
    for (;;) {
        size_t have = fill(r, SKIP_HDR + 4);
        if (have == 0)
            return 0;
        const uint8_t *p = r->base + r->pos;
        uint64_t at = off_at(r, r->pos);
        if (have < SKIP_HDR) {
            add_damage(r, at, have, "%zu stray bytes at the end of the file", have);
            skip(r, have);
            return 0;
        }
        uint32_t magic = wsrr_le32(p), size = wsrr_le32(p + 4);
        if (have >= sizeof(batch_pattern) && memcmp(p, batch_pattern, sizeof(batch_pattern)) == 0) {
            if (try_batch(r))
                return 1;
            continue;
        }
        if (have >= sizeof(trailer_pattern) &&
            memcmp(p, trailer_pattern, sizeof(trailer_pattern)) == 0) {
            read_trailer(r);
            continue;
        }
        if (magic == WSRR_SEEKTABLE_MAGIC && r->sum.trailer) {
            read_seek_table(r, size);
            continue;
        }
        if ((magic & 0xFFFFFFF0u) == 0x184D2A50u && magic != WSRR_SKIPPABLE_MAGIC &&
            !(have >= SKIP_HDR + 3 && memcmp(p + SKIP_HDR, "WSR", 3) == 0)) {
            /* A user skippable frame: allowed by zstd, not ours, skipped.
             * 0x184D2A50 is reserved for wsrr's own frames, and a frame
             * whose payload starts with "WSR" is one of ours with a damaged
             * magic: both are damage. */
            skip_frame(r, magic, size);
            continue;
        }
        skip(r, 1);
        damage_and_resync(r, at,
                          magic == 0xFD2FB528u ? "zstd frame without a batch header"
                                               : "unrecognised bytes (not a batch header)");
    }
}

int wsrr_capture_reader_next(struct wsrr_capture_reader *r, struct wsrr_record *rec)
{
    for (;;) {
        if (r->batch_left) {
            ssize_t n = wsrr_record_decode(r->content + r->content_pos,
                                           r->content_len - r->content_pos, rec, NULL, 0);
            /* cannot fail: the batch was checked before it was committed */
            r->content_pos += (size_t)n;
            r->batch_left--;
            if (!r->sum.records) {
                r->sum.first_seq = rec->seq;
                r->sum.first_ts = rec->ts;
            }
            r->sum.records++;
            r->sum.last_seq = rec->seq;
            r->sum.last_ts = rec->ts;
            return 1;
        }
        if (r->done)
            return r->ioerr;
        if (!next_batch(r)) {
            r->done = true;
            r->sum.bytes = off_at(r, r->pos);
            if (r->sum.trailer && !r->seek_seen && r->sum.ndamage == 0)
                add_damage(r, r->sum.bytes, 0,
                           "the file ends after its trailer: the seek table is missing");
            r->sum.consistent = r->sum.trailer && r->seek_ok && r->sum.ndamage == 0 &&
                                r->sum.trailer_batches == r->sum.batches &&
                                r->sum.trailer_records == r->sum.records;
            return r->ioerr;
        }
    }
}

const struct wsrr_capture_damage *wsrr_capture_reader_damage(const struct wsrr_capture_reader *r,
                                                             size_t *n)
{
    *n = r->sum.ndamage < MAX_DAMAGE_KEPT ? r->sum.ndamage : MAX_DAMAGE_KEPT;
    return r->damage;
}

void wsrr_capture_reader_summary(const struct wsrr_capture_reader *r,
                                 struct wsrr_capture_summary *s)
{
    *s = r->sum;
    if (!r->done)
        s->bytes = off_at(r, r->pos);
}

void wsrr_capture_reader_close(struct wsrr_capture_reader *r)
{
    if (!r)
        return;
    if (r->own_fd)
        close(r->fd);
    ZSTD_freeDCtx(r->dctx);
    free(r->ibuf);
    free(r->content);
    free(r->meta);
    free(r->seek);
    free(r);
}
