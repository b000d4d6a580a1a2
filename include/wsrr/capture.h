/* wsrr/capture.h — the .wsrr capture file: records, writer, reader.
 *
 * The byte layout is specified in docs/capture-format.md. In short: a valid
 * multi-frame zstd stream made of a header skippable frame, then batches (a
 * skippable batch header followed by one independent zstd frame of records),
 * then, on clean close, a trailer and a seek table.
 *
 * Writer: records are appended to the open batch in memory (no allocation
 * per record once the batch buffer has grown); a batch is compressed and
 * written with one write() when it reaches batch_bytes or is older than the
 * flush interval. A kill -9 loses at most the open batch. The writer always
 * creates a new file: it never appends to an existing one.
 *
 * Reader: streams the file, needs neither the trailer nor a clean end,
 * yields a batch's records only after its CRC and the zstd content checksum
 * passed, and on damage resynchronises on the next batch header that carries
 * the file's id. Every skipped byte range is reported as a damage entry.
 */
#ifndef WSRR_CAPTURE_H
#define WSRR_CAPTURE_H

#include "wsrr/common.h"

#include <stdbool.h>
#include <sys/uio.h>

#define WSRR_CAPTURE_MAJOR 1
#define WSRR_CAPTURE_MINOR 1

/* Skippable-frame magics (little-endian on disk). */
#define WSRR_SKIPPABLE_MAGIC 0x184D2A50u /* header, batch header, trailer */
#define WSRR_SEEKTABLE_MAGIC 0x184D2A5Eu /* zstd seekable format seek table */
#define WSRR_SEEKABLE_FOOTER 0x8F92EAB1u

#define WSRR_FILE_ID_LEN 16

/* Record kinds. Readers skip kinds they do not know (by length). */
enum wsrr_rec_kind {
    WSRR_REC_OPEN = 1,     /* connection accepted / opened */
    WSRR_REC_REQUEST = 2,  /* HTTP request head (the Upgrade request), raw bytes */
    WSRR_REC_RESPONSE = 3, /* HTTP response head (the 101 or a rejection), raw bytes */
    WSRR_REC_FRAME = 4,    /* one WebSocket frame */
    WSRR_REC_CLOSE = 5,    /* the connection's close summary */
    WSRR_REC_TCP = 6,      /* transport event */
    WSRR_REC_FAULT = 7,    /* a fault was applied */
    WSRR_REC_NOTE = 8,     /* free text */
    WSRR_REC_BODY = 9,     /* the body of a plain HTTP request or response (format 1.1) */
};

/* Flags common to all records. */
#define WSRR_RF_REDACTED  0x01 /* secrets in the body were replaced by placeholders */
#define WSRR_RF_TRUNCATED 0x02 /* a payload was recorded shorter than it was */
#define WSRR_RF_INJECTED  0x04 /* made by wsrr (fault, replay), not by a peer */

/* FRAME flags. */
#define WSRR_FF_MASKED        0x01 /* mask bit set on the wire; mask holds the key */
#define WSRR_FF_MESSAGE       0x02 /* the inflated message follows the payload */
#define WSRR_FF_INFLATE_ERROR 0x04 /* the message could not be inflated */

/* OPEN flags. */
#define WSRR_OF_CLIENT_TLS        0x01
#define WSRR_OF_UPSTREAM_TLS      0x02
#define WSRR_OF_UPSTREAM_INSECURE 0x04 /* upstream certificate not verified */

/* CLOSE: who started the close. */
enum wsrr_close_side {
    WSRR_SIDE_CLIENT = 0,
    WSRR_SIDE_SERVER = 1,
    WSRR_SIDE_PROXY = 2,
    WSRR_SIDE_NONE = 3, /* no close frame: the transport ended */
};
#define WSRR_CF_CLEAN    0x01 /* close frames went both ways */
#define WSRR_CF_HAS_CODE 0x02 /* the close frame carried a code */

/* TCP events and legs. */
enum wsrr_leg { WSRR_LEG_CLIENT = 0, WSRR_LEG_UPSTREAM = 1 };
enum wsrr_tcp_event {
    WSRR_TCP_CONNECTED = 1,      /* upstream connection established */
    WSRR_TCP_FIN = 2,            /* peer closed its sending side */
    WSRR_TCP_RST = 3,            /* connection reset */
    WSRR_TCP_ERROR = 4,          /* other socket error (err holds errno) */
    WSRR_TCP_TIMEOUT = 5,        /* idle or handshake timeout */
    WSRR_TCP_CONNECT_FAILED = 6, /* upstream connect failed (err holds errno) */
    WSRR_TCP_TLS_ERROR = 7,      /* TLS handshake or record error */
    WSRR_TCP_CLOSED = 8,         /* wsrr closed this leg */
};

/* Record bodies, one struct per kind. */
struct wsrr_rec_open {
    uint32_t flags; /* WSRR_OF_* */
    struct wsrr_span client, listen, upstream, client_tls, upstream_tls, sni;
};

struct wsrr_rec_http {     /* REQUEST and RESPONSE */
    struct wsrr_span head; /* raw HTTP head through the blank line */
};

struct wsrr_rec_frame {
    uint8_t dir; /* enum wsrr_dir: the sender */
    bool fin;
    uint8_t rsv; /* WSRR_RSV1|2|3 */
    uint8_t opcode;
    uint8_t len_width; /* 7, 16 or 64 as on the wire */
    uint8_t fflags;    /* WSRR_FF_* */
    uint8_t mask[4];
    uint32_t violations;      /* WSRR_V_* */
    uint64_t len;             /* declared payload length */
    struct wsrr_span payload; /* unmasked payload (shorter than len if TRUNCATED) */
    struct wsrr_span message; /* inflated message when WSRR_FF_MESSAGE */
    /* Writer only: when payload_iov is set, the payload is gathered from it
     * instead of `payload`, and unmasked while being copied when
     * payload_wire is true (bytes as on the wire). */
    const struct iovec *payload_iov;
    int payload_iovcnt;
    bool payload_wire;
};

struct wsrr_rec_close {
    uint8_t side;   /* enum wsrr_close_side */
    uint8_t cflags; /* WSRR_CF_* */
    uint16_t code;
    struct wsrr_span reason;
};

struct wsrr_rec_tcp {
    uint8_t leg;   /* enum wsrr_leg */
    uint8_t event; /* enum wsrr_tcp_event */
    int32_t err;   /* errno or TLS library code, 0 if none */
    struct wsrr_span detail;
};

struct wsrr_rec_fault {
    uint64_t target; /* seq of the record the fault changed, 0 if none */
    struct wsrr_span rule, action, detail;
};

struct wsrr_rec_note {
    struct wsrr_span text;
};

#define WSRR_BF_COMPLETE 0x01 /* the whole body (the message ended); otherwise cut short */
#define WSRR_BF_CHUNKED  0x02 /* it travelled with chunked transfer coding (data is decoded) */

struct wsrr_rec_body {
    uint8_t dir;    /* enum wsrr_dir: request (client) or response (server) body */
    uint8_t bflags; /* WSRR_BF_* */
    uint64_t len;   /* body length as sent (decoded); more than data.n when truncated */
    struct wsrr_span data;
};

struct wsrr_rec_raw {
    struct wsrr_span body; /* an unknown kind's body, kept as is */
};

/* One record, decoded (reader) or to be encoded (writer). Spans point into
 * the reader's current batch and are valid until the next reader call. */
struct wsrr_record {
    uint8_t kind;  /* enum wsrr_rec_kind (or an unknown value) */
    uint8_t flags; /* WSRR_RF_* */
    uint32_t conn; /* connection id, 0 for file-level records */
    uint64_t seq;  /* global sequence number; writer: 0 assigns the next */
    uint64_t ts;   /* nanoseconds since the capture started (monotonic);
                      writer: WSRR_TS_NOW stamps it */
    union {
        struct wsrr_rec_open open;
        struct wsrr_rec_http http;
        struct wsrr_rec_frame frame;
        struct wsrr_rec_close close;
        struct wsrr_rec_tcp tcp;
        struct wsrr_rec_fault fault;
        struct wsrr_rec_note note;
        struct wsrr_rec_body body;
        struct wsrr_rec_raw raw;
    } u;
    /* Bytes after the fields this version knows (a newer minor version
     * appended fields). Kept so that re-encoding is lossless. */
    struct wsrr_span extra;
};

#define WSRR_TS_NOW         UINT64_MAX
#define WSRR_REC_HEADER_LEN 28 /* length, kind, flags, reserved, seq, ts, conn */

/* "open", "request", ... or NULL for an unknown kind. */
const char *wsrr_rec_kind_name(uint8_t kind);
int wsrr_rec_kind_by_name(const char *name); /* kind or -1 */
const char *wsrr_tcp_event_name(uint8_t ev);
int wsrr_tcp_event_by_name(const char *name);
const char *wsrr_close_side_name(uint8_t side);
int wsrr_close_side_by_name(const char *name);

/* Encoded size of a record (header included), or 0 when a field is too
 * large for the format (a string over 4 GiB, a record over 4 GiB). */
size_t wsrr_record_size(const struct wsrr_record *r);

/* Encode r into out, which has wsrr_record_size(r) bytes. Returns that
 * size. */
size_t wsrr_record_encode(uint8_t *out, const struct wsrr_record *r);

/* Decode one record from buf (len bytes available). Returns the record's
 * length, or -EBADMSG when it is malformed (a length that runs past len, a
 * body too short for its kind); err says which field. Unknown kinds decode
 * into u.raw. Spans point into buf. */
ssize_t wsrr_record_decode(const uint8_t *buf, size_t len, struct wsrr_record *r, char *err,
                           size_t errlen);

/* ---- writer ---- */

struct wsrr_capture_opts {
    const char *metadata;       /* a JSON object (text); NULL means "{}" */
    uint64_t flush_interval_ns; /* default 100 ms */
    size_t batch_bytes;         /* close a batch at this much record data; default 1 MiB */
    int level;                  /* zstd level; default 1 */
    bool sync;                  /* fdatasync after every batch */
    bool overwrite;             /* replace an existing file (default: refuse) */
    unsigned mode;              /* file mode; default 0644 (use 0600 for raw captures) */
    uint32_t compat_flags;
    const uint8_t *file_id; /* WSRR_FILE_ID_LEN bytes; NULL: random */
    uint64_t start_wall_ns; /* 0: now (unless keep_start) */
    uint64_t start_mono_ns; /* 0: now (unless keep_start) */
    bool keep_start;        /* use start_wall_ns and start_mono_ns as given, 0 included
                               (import and recover reproduce a file's header) */
    bool keep_minor;        /* write `minor` as the format's minor version (import and recover
                               reproduce a file written by an older 1.x) */
    uint16_t minor;
};

struct wsrr_capture_stats {
    uint64_t records;         /* appended */
    uint64_t records_durable; /* in batches already written */
    uint64_t last_durable_seq;
    uint64_t batches;   /* written */
    uint64_t bytes_in;  /* record bytes before compression */
    uint64_t bytes_out; /* bytes written to the file */
};

struct wsrr_capture_writer;

/* Create path (mode 0644 unless opts->mode) and write the header. Refuses an
 * existing file unless opts->overwrite. "-" writes to standard output.
 * Returns NULL with err on failure. */
struct wsrr_capture_writer *wsrr_capture_writer_open(const char *path,
                                                     const struct wsrr_capture_opts *opts,
                                                     char *err, size_t errlen);

/* Append a record to the open batch (kind, flags, conn, seq, ts and the body
 * fields of r). Assigns r->seq when it is 0 and r->ts when it is
 * WSRR_TS_NOW. May close and write the batch. Returns 0; -E2BIG for a
 * record over WSRR_CAPTURE_MAX_RECORD; -EINVAL for a record a reader would
 * reject (a frame whose dir is not 0/1 or whose len_width is not 7, 16 or
 * 64), which is not written; or a negative errno from writing (the writer
 * is then failed; see wsrr_capture_writer_error()). */
int wsrr_capture_append(struct wsrr_capture_writer *w, struct wsrr_record *r);

/* The seq the next record appended without one will get. */
uint64_t wsrr_capture_writer_next_seq(const struct wsrr_capture_writer *w);

/* Close the open batch now if it is older than the flush interval (call it
 * from a timer). Returns 0 or a negative errno. */
int wsrr_capture_writer_tick(struct wsrr_capture_writer *w);

/* Close and write the open batch now, whatever its age. */
int wsrr_capture_writer_flush(struct wsrr_capture_writer *w);

/* Nanoseconds since the capture's start, for record timestamps. */
uint64_t wsrr_capture_writer_now(const struct wsrr_capture_writer *w);

void wsrr_capture_writer_stats(const struct wsrr_capture_writer *w, struct wsrr_capture_stats *st);
const char *wsrr_capture_writer_error(const struct wsrr_capture_writer *w);

/* Flush, write the trailer and seek table, close the file and free w.
 * Returns 0 or a negative errno (err says what failed; the file then lacks
 * its trailer, which readers tolerate). NULL is a no-op. */
int wsrr_capture_writer_close(struct wsrr_capture_writer *w, char *err, size_t errlen);

/* Free w without flushing or writing a trailer (tests simulate crashes with
 * it). NULL is a no-op. */
void wsrr_capture_writer_abort(struct wsrr_capture_writer *w);

/* ---- reader ---- */

struct wsrr_capture_info {
    uint16_t major, minor;
    uint32_t incompat_flags, compat_flags;
    uint8_t file_id[WSRR_FILE_ID_LEN];
    uint64_t start_wall_ns, start_mono_ns;
    const char *metadata; /* NUL-terminated JSON text ("{}" when the header was damaged) */
    size_t metadata_len;
    bool header_ok; /* header CRC passed */
};

struct wsrr_capture_damage {
    uint64_t offset; /* where the damage starts in the file */
    uint64_t length; /* bytes skipped */
    char what[160];  /* one line */
};

struct wsrr_capture_summary {
    uint64_t records, batches; /* committed */
    uint64_t bytes;            /* file size read */
    uint64_t first_seq, last_seq;
    uint64_t first_ts, last_ts;
    bool trailer;    /* a valid trailer was found at the end */
    bool consistent; /* the trailer's counts match what was read */
    uint64_t trailer_records, trailer_batches;
    size_t ndamage; /* damage entries (also those not kept) */
};

struct wsrr_capture_reader;

/* The largest record a writer accepts, and the batch-size limit a reader
 * applies by default. Batches hold at most max(batch_bytes, one record),
 * and batch_bytes is clamped to WSRR_CAPTURE_MAX_BATCH_BYTES, so every batch
 * a writer produces is readable with the default limit. */
#define WSRR_CAPTURE_MAX_RECORD        ((size_t)192 << 20)
#define WSRR_CAPTURE_MAX_BATCH_BYTES   ((size_t)64 << 20)
#define WSRR_CAPTURE_DEFAULT_MAX_BATCH ((size_t)256 << 20)

/* Open a capture for reading ("-" is standard input). Returns NULL when it
 * is not a capture this wsrr can read: unreadable, wrong magic, a newer
 * major version, unknown incompatible flags; err names the offset and what
 * was expected. A damaged header with the right magic is not fatal: reading
 * continues from the batches (see info.header_ok). */
struct wsrr_capture_reader *wsrr_capture_reader_open(const char *path, char *err, size_t errlen);

/* The same over memory (not copied; must outlive the reader). */
struct wsrr_capture_reader *wsrr_capture_reader_mem(const uint8_t *data, size_t len, char *err,
                                                    size_t errlen);

/* Cap on one batch's compressed and decompressed size (default 256 MiB,
 * at most 1 GiB): larger declared sizes are damage, not allocations. The
 * reader's memory is bounded by about twice this cap plus its input window,
 * whatever the file says. */
void wsrr_capture_reader_set_max_batch(struct wsrr_capture_reader *r, size_t max);

const struct wsrr_capture_info *wsrr_capture_reader_info(const struct wsrr_capture_reader *r);

/* Next record: 1 with *rec filled, 0 at the end of the file, a negative
 * errno on an I/O error (damage is not an error: it is skipped and
 * reported). */
int wsrr_capture_reader_next(struct wsrr_capture_reader *r, struct wsrr_record *rec);

/* Damage found so far (at most the first 64 entries are kept; the summary
 * counts all). */
const struct wsrr_capture_damage *wsrr_capture_reader_damage(const struct wsrr_capture_reader *r,
                                                             size_t *n);

void wsrr_capture_reader_summary(const struct wsrr_capture_reader *r,
                                 struct wsrr_capture_summary *s);

void wsrr_capture_reader_close(struct wsrr_capture_reader *r);

#endif
