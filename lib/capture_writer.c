/* capture_writer.c — the append-only .wsrr writer.
 *
 * Records are encoded straight into the open batch buffer, which is reused
 * from batch to batch (it only grows), so appending does not allocate. A
 * batch is sealed when it holds batch_bytes of records or is older than the
 * flush interval: it is compressed as one zstd frame (content checksum on)
 * into an output buffer that has room for the batch header in front, and
 * both go to the file in one write(). A crash therefore loses at most the
 * open batch, and a half-written batch is detected by its CRC.
 */
#include "capture-int.h"
#include "wsrr/log.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdarg.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define DEFAULT_FLUSH_NS (100ull * 1000 * 1000)
#define DEFAULT_BATCH    ((size_t)1 << 20)

struct wsrr_capture_writer {
    int fd;
    bool own_fd;
    char path[256]; /* for messages */
    uint8_t file_id[WSRR_FILE_ID_LEN];
    uint64_t start_mono;
    uint64_t flush_ns;
    size_t batch_bytes;
    bool sync;

    ZSTD_CCtx *cctx;

    /* the open batch */
    uint8_t *batch;
    size_t batch_len, batch_cap;
    uint32_t batch_records;
    uint64_t batch_first_seq, batch_first_ts, batch_last_ts;
    uint64_t batch_opened; /* monotonic ns when its first record came */

    /* compressed output: batch header frame + zstd frame */
    uint8_t *out;
    size_t out_cap;

    uint64_t next_seq;
    uint64_t last_seq, last_ts;
    uint64_t batch_no;
    uint64_t offset; /* bytes written */
    uint8_t *seek;   /* seek-table entries, ST_ENTRY bytes per frame written */
    size_t seek_len, seek_cap;
    bool seek_failed; /* out of memory once: no seek table will be written */

    struct wsrr_capture_stats st;
    int error;
    char errmsg[256];
};

static int fail(struct wsrr_capture_writer *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct wsrr_capture_writer *w, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->errmsg, sizeof(w->errmsg), fmt, ap);
    va_end(ap);
    w->error = -code;
    return -code;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int emit(struct wsrr_capture_writer *w, const uint8_t *p, size_t n)
{
    int rc = write_all(w->fd, p, n);
    if (rc < 0)
        return fail(w, -rc, "writing %s at offset %llu: %s", w->path, (unsigned long long)w->offset,
                    strerror(-rc));
    w->offset += n;
    w->st.bytes_out += n;
    return 0;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    uint8_t *b = realloc(*buf, n);
    if (!b)
        return -ENOMEM;
    *buf = b;
    *cap = n;
    return 0;
}

/* One seek-table entry per frame written (zstd seekable format). */
static void seek_add(struct wsrr_capture_writer *w, size_t csize, size_t dsize, uint32_t checksum)
{
    if (w->seek_failed)
        return;
    if (grow(&w->seek, &w->seek_cap, w->seek_len + ST_ENTRY) < 0) {
        w->seek_failed = true;
        return;
    }
    uint8_t *e = w->seek + w->seek_len;
    wsrr_put32(e, (uint32_t)csize);
    wsrr_put32(e + 4, (uint32_t)dsize);
    wsrr_put32(e + 8, checksum);
    w->seek_len += ST_ENTRY;
}

static void put_skip_hdr(uint8_t *o, uint32_t magic, uint32_t size)
{
    wsrr_put32(o, magic);
    wsrr_put32(o + 4, size);
}

/* Checked before anything is created, so a refused open leaves no file. */
static int check_metadata(const char *meta, char *err, size_t errlen)
{
    size_t mlen = strlen(meta);
    if (mlen > FH_MAX_META)
        return wsrr_seterr(err, errlen, EMSGSIZE,
                           "capture metadata of %zu bytes exceeds the %u-byte limit", mlen,
                           FH_MAX_META);
    cJSON *j = cJSON_ParseWithLength(meta, mlen);
    bool is_object = cJSON_IsObject(j);
    cJSON_Delete(j);
    if (!is_object)
        return wsrr_seterr(err, errlen, EINVAL, "capture metadata must be a JSON object");
    return 0;
}

static int write_header(struct wsrr_capture_writer *w, const struct wsrr_capture_opts *o)
{
    const char *meta = o->metadata ? o->metadata : "{}";
    size_t mlen = strlen(meta);
    size_t psize = FH_META + mlen + 4;
    uint8_t *b = malloc(SKIP_HDR + psize);
    if (!b)
        return fail(w, ENOMEM, "out of memory");
    uint8_t *p = b + SKIP_HDR;
    put_skip_hdr(b, WSRR_SKIPPABLE_MAGIC, (uint32_t)psize);
    memcpy(p + FH_TAG, TAG_HEADER, 4);
    wsrr_put16(p + FH_MAJOR, WSRR_CAPTURE_MAJOR);
    wsrr_put16(p + FH_MINOR,
               o->keep_minor && o->minor < WSRR_CAPTURE_MINOR ? o->minor : WSRR_CAPTURE_MINOR);
    wsrr_put32(p + FH_INCOMPAT, 0);
    wsrr_put32(p + FH_COMPAT, o->compat_flags);
    memcpy(p + FH_FILE_ID, w->file_id, WSRR_FILE_ID_LEN);
    wsrr_put64(p + FH_START_WALL,
               o->start_wall_ns || o->keep_start ? o->start_wall_ns : wsrr_wall_ns());
    wsrr_put64(p + FH_START_MONO, w->start_mono);
    wsrr_put32(p + FH_META_LEN, (uint32_t)mlen);
    memcpy(p + FH_META, meta, mlen);
    wsrr_put32(p + FH_META + mlen, (uint32_t)crc32(0, p, (uInt)(FH_META + mlen)));
    int rc = emit(w, b, SKIP_HDR + psize);
    free(b);
    seek_add(w, SKIP_HDR + psize, 0, XXH64_EMPTY_LOW32);
    return rc;
}

struct wsrr_capture_writer *wsrr_capture_writer_open(const char *path,
                                                     const struct wsrr_capture_opts *opts,
                                                     char *err, size_t errlen)
{
    static const struct wsrr_capture_opts defaults;
    const struct wsrr_capture_opts *o = opts ? opts : &defaults;
    struct wsrr_capture_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(w->path, sizeof(w->path), "%s", strcmp(path, "-") ? path : "standard output");
    w->flush_ns = o->flush_interval_ns ? o->flush_interval_ns : DEFAULT_FLUSH_NS;
    w->batch_bytes = o->batch_bytes ? o->batch_bytes : DEFAULT_BATCH;
    if (w->batch_bytes > WSRR_CAPTURE_MAX_BATCH_BYTES)
        w->batch_bytes = WSRR_CAPTURE_MAX_BATCH_BYTES;
    w->sync = o->sync;
    w->next_seq = 1;
    w->start_mono = o->start_mono_ns || o->keep_start ? o->start_mono_ns : wsrr_now_ns();
    if (check_metadata(o->metadata ? o->metadata : "{}", err, errlen) < 0)
        goto err_free;

    if (o->file_id)
        memcpy(w->file_id, o->file_id, WSRR_FILE_ID_LEN);
    else if (RAND_bytes(w->file_id, WSRR_FILE_ID_LEN) != 1) {
        wsrr_seterr(err, errlen, EIO, "cannot get random bytes for the file id");
        goto err_free;
    }

    w->cctx = ZSTD_createCCtx();
    if (!w->cctx) {
        wsrr_seterr(err, errlen, ENOMEM, "cannot create a zstd context");
        goto err_free;
    }
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, o->level ? o->level : 1);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1);

    if (strcmp(path, "-") == 0) {
        w->fd = STDOUT_FILENO;
    } else {
        int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (o->overwrite ? O_TRUNC : O_EXCL);
        w->fd = open(path, flags, o->mode ? o->mode : 0644);
        if (w->fd < 0) {
            int e = errno;
            wsrr_seterr(err, errlen, e, "cannot create %s: %s%s", path, strerror(e),
                        e == EEXIST ? " (captures are never appended to; choose a new name)" : "");
            goto err_cctx;
        }
        w->own_fd = true;
        /* the umask must not narrow a requested mode silently */
        if (o->mode && fchmod(w->fd, o->mode) < 0) {
            int e = errno;
            wsrr_seterr(err, errlen, e, "cannot set the mode of %s to %o: %s", path, o->mode,
                        strerror(e));
            close(w->fd);
            unlink(path);
            goto err_cctx;
        }
    }

    if (write_header(w, o) < 0) {
        wsrr_seterr(err, errlen, -w->error, "%s", w->errmsg);
        goto err_fd;
    }
    return w;

err_fd:
    if (w->own_fd) {
        close(w->fd);
        unlink(path);
    }
err_cctx:
    ZSTD_freeCCtx(w->cctx);
err_free:
    free(w);
    return NULL;
}

uint64_t wsrr_capture_writer_now(const struct wsrr_capture_writer *w)
{
    uint64_t now = wsrr_now_ns();
    return now > w->start_mono ? now - w->start_mono : 0;
}

/* Compress the open batch and write header + frame in one write. */
static int seal(struct wsrr_capture_writer *w)
{
    if (!w->batch_records)
        return 0;
    if (w->error)
        return w->error;

    size_t bound = ZSTD_compressBound(w->batch_len);
    if (grow(&w->out, &w->out_cap, BATCH_HDR_TOTAL + bound) < 0)
        return fail(w, ENOMEM, "out of memory for a %zu-byte batch", w->batch_len);

    ZSTD_CCtx_reset(w->cctx, ZSTD_reset_session_only);
    ZSTD_CCtx_setPledgedSrcSize(w->cctx, w->batch_len);
    ZSTD_inBuffer in = {w->batch, w->batch_len, 0};
    ZSTD_outBuffer zo = {w->out + BATCH_HDR_TOTAL, bound, 0};
    size_t left;
    do {
        left = ZSTD_compressStream2(w->cctx, &zo, &in, ZSTD_e_end);
        if (ZSTD_isError(left))
            return fail(w, EIO, "zstd: %s", ZSTD_getErrorName(left));
    } while (left);
    size_t csize = zo.pos;

    uint8_t *h = w->out + SKIP_HDR;
    put_skip_hdr(w->out, WSRR_SKIPPABLE_MAGIC, BH_SIZE);
    memcpy(h + BH_TAG, TAG_BATCH, 4);
    memcpy(h + BH_FILE_ID, w->file_id, WSRR_FILE_ID_LEN);
    wsrr_put64(h + BH_BATCH, w->batch_no);
    wsrr_put64(h + BH_FIRST_SEQ, w->batch_first_seq);
    wsrr_put32(h + BH_COUNT, w->batch_records);
    wsrr_put64(h + BH_FIRST_TS, w->batch_first_ts);
    wsrr_put64(h + BH_LAST_TS, w->batch_last_ts);
    wsrr_put32(h + BH_CSIZE, (uint32_t)csize);
    wsrr_put32(h + BH_DSIZE, (uint32_t)w->batch_len);
    wsrr_put32(h + BH_FRAME_CRC, (uint32_t)crc32(0, w->out + BATCH_HDR_TOTAL, (uInt)csize));
    wsrr_put32(h + BH_FLAGS, 0);
    wsrr_put32(h + BH_RESERVED, 0);
    wsrr_put32(h + BH_CRC, (uint32_t)crc32(0, h, BH_CRC));

    int rc = emit(w, w->out, BATCH_HDR_TOTAL + csize);
    if (rc < 0)
        return rc;
    if (w->sync && fdatasync(w->fd) < 0 && errno != EINVAL)
        return fail(w, errno, "fdatasync %s: %s", w->path, strerror(errno));

    seek_add(w, BATCH_HDR_TOTAL, 0, XXH64_EMPTY_LOW32);
    seek_add(w, csize, w->batch_len, wsrr_le32(w->out + BATCH_HDR_TOTAL + csize - 4));

    w->st.batches++;
    w->st.records_durable += w->batch_records;
    w->st.last_durable_seq = w->last_seq;
    w->batch_no++;
    w->batch_len = 0;
    w->batch_records = 0;
    return 0;
}

int wsrr_capture_append(struct wsrr_capture_writer *w, struct wsrr_record *r)
{
    if (w->error)
        return w->error;

    size_t size = wsrr_record_size(r);
    if (size == 0 || size > WSRR_CAPTURE_MAX_RECORD)
        return -E2BIG;
    /* what a reader would refuse must not poison a whole batch */
    if (r->kind == WSRR_REC_FRAME &&
        (r->u.frame.dir > 1 ||
         (r->u.frame.len_width != 7 && r->u.frame.len_width != 16 && r->u.frame.len_width != 64)))
        return -EINVAL;
    if (r->kind == WSRR_REC_BODY && r->u.body.dir > 1)
        return -EINVAL;

    uint64_t now = wsrr_now_ns();
    if (r->ts == WSRR_TS_NOW)
        r->ts = now > w->start_mono ? now - w->start_mono : 0;
    if (r->seq == 0)
        r->seq = w->next_seq;
    if (r->seq >= w->next_seq)
        w->next_seq = r->seq + 1;

    /* Keep batches at most batch_bytes unless one record is larger. */
    if (w->batch_len && w->batch_len + size > w->batch_bytes) {
        int rc = seal(w);
        if (rc < 0)
            return rc;
    }
    if (grow(&w->batch, &w->batch_cap, w->batch_len + size) < 0)
        return fail(w, ENOMEM, "out of memory for a %zu-byte record", size);

    wsrr_record_encode(w->batch + w->batch_len, r);
    if (!w->batch_records) {
        w->batch_first_seq = r->seq;
        w->batch_first_ts = r->ts;
        w->batch_opened = now;
    }
    w->batch_len += size;
    w->batch_records++;
    w->batch_last_ts = r->ts;
    w->last_seq = r->seq;
    w->last_ts = r->ts;
    w->st.records++;
    w->st.bytes_in += size;

    if (w->batch_len >= w->batch_bytes || now - w->batch_opened >= w->flush_ns)
        return seal(w);
    return 0;
}

int wsrr_capture_writer_tick(struct wsrr_capture_writer *w)
{
    if (w->batch_records && wsrr_now_ns() - w->batch_opened >= w->flush_ns)
        return seal(w);
    return w->error;
}

int wsrr_capture_writer_flush(struct wsrr_capture_writer *w)
{
    return seal(w);
}

void wsrr_capture_writer_stats(const struct wsrr_capture_writer *w, struct wsrr_capture_stats *st)
{
    *st = w->st;
}

const char *wsrr_capture_writer_error(const struct wsrr_capture_writer *w)
{
    return w->error ? w->errmsg : "";
}

static int write_trailer(struct wsrr_capture_writer *w)
{
    seek_add(w, TRAILER_TOTAL, 0, XXH64_EMPTY_LOW32);
    bool with_seek = !w->seek_failed;
    size_t st_payload = with_seek ? w->seek_len + ST_FOOTER : 0;
    size_t total = SKIP_HDR + TR_SIZE + (with_seek ? SKIP_HDR + st_payload : 0);
    uint8_t *b = malloc(total);
    if (!b)
        return fail(w, ENOMEM, "out of memory for the trailer");

    uint8_t *t = b + SKIP_HDR;
    put_skip_hdr(b, WSRR_SKIPPABLE_MAGIC, TR_SIZE);
    memcpy(t + TR_TAG, TAG_TRAILER, 4);
    memcpy(t + TR_FILE_ID, w->file_id, WSRR_FILE_ID_LEN);
    wsrr_put64(t + TR_BATCHES, w->st.batches);
    wsrr_put64(t + TR_RECORDS, w->st.records_durable);
    wsrr_put64(t + TR_LAST_SEQ, w->last_seq);
    wsrr_put64(t + TR_LAST_TS, w->last_ts);
    wsrr_put64(t + TR_END_WALL, wsrr_wall_ns());
    wsrr_put32(t + TR_FLAGS, TR_F_CLOSED);
    wsrr_put32(t + TR_CRC, (uint32_t)crc32(0, t, TR_CRC));

    if (with_seek) {
        uint8_t *s = t + TR_SIZE;
        put_skip_hdr(s, WSRR_SEEKTABLE_MAGIC, (uint32_t)st_payload);
        if (w->seek_len)
            memcpy(s + SKIP_HDR, w->seek, w->seek_len);
        uint8_t *f = s + SKIP_HDR + w->seek_len;
        wsrr_put32(f, (uint32_t)(w->seek_len / ST_ENTRY));
        f[4] = ST_F_CHECKSUM;
        wsrr_put32(f + 5, WSRR_SEEKABLE_FOOTER);
    }
    int rc = emit(w, b, total);
    free(b);
    return rc;
}

static void writer_free(struct wsrr_capture_writer *w)
{
    ZSTD_freeCCtx(w->cctx);
    free(w->batch);
    free(w->out);
    free(w->seek);
    free(w);
}

int wsrr_capture_writer_close(struct wsrr_capture_writer *w, char *err, size_t errlen)
{
    if (!w)
        return 0;
    int rc = seal(w);
    if (rc == 0)
        rc = write_trailer(w);
    if (rc == 0 && w->sync && fdatasync(w->fd) < 0 && errno != EINVAL)
        rc = fail(w, errno, "fdatasync %s: %s", w->path, strerror(errno));
    if (w->own_fd && close(w->fd) < 0 && rc == 0)
        rc = fail(w, errno, "closing %s: %s", w->path, strerror(errno));
    if (rc < 0)
        wsrr_seterr(err, errlen, -rc, "%s", w->errmsg);
    writer_free(w);
    return rc;
}

void wsrr_capture_writer_abort(struct wsrr_capture_writer *w)
{
    if (!w)
        return;
    if (w->own_fd)
        close(w->fd);
    writer_free(w);
}

uint64_t wsrr_capture_writer_next_seq(const struct wsrr_capture_writer *w)
{
    return w->next_seq;
}
