/* wsrr/tap.h — one connection's recorder: two byte streams in, capture
 * records out.
 *
 * A tap is fed exactly the bytes that travelled in each direction (the
 * proxy feeds what it forwards; tests and importers feed raw streams). It
 * parses the Upgrade request and the response, switches both directions to
 * frame parsing after a 101, inflates permessage-deflate messages when the
 * handshake negotiated it, and appends request, response, frame and close
 * records to a capture writer. It never changes or holds back the traffic:
 * it only watches. Invalid traffic is recorded with its violation flags.
 *
 * Client bytes that arrive before the response are parsed when the response
 * is complete and their records carry that time, so timestamps never
 * decrease in record order.
 *
 * Pure: no sockets, no event loop. The only allocation per frame is for
 * payloads that arrive split over several feeds (they are gathered before
 * the record is written); a frame that arrives whole is recorded straight
 * from the caller's buffer.
 */
#ifndef WSRR_TAP_H
#define WSRR_TAP_H

#include "wsrr/capture.h"
#include "wsrr/deflate.h"
#include "wsrr/frame.h"
#include "wsrr/redact.h"

struct wsrr_tap_opts {
    struct wsrr_frame_limits limits; /* frame parser caps (0 fields: defaults) */
    uint64_t max_recorded_payload;   /* record at most this much of a frame's payload
                                        (the record is flagged truncated); default 64 MiB */
    uint64_t max_inflated;           /* inflate at most this much per message; default 64 MiB */
    size_t max_early_bytes; /* client bytes held while the 101 is awaited; default 64 KiB */
    /* NULL: record secrets as they are. Otherwise heads, text payloads and
     * inflated text messages are redacted (records flagged redacted), and
     * compressed bytes that would carry a secret are not kept: those of a
     * one-frame text message that held one, and those of every fragment of a
     * compressed text message of several frames (recorded before the message
     * is known); such frames have an empty payload, flagged truncated and
     * redacted. */
    const struct wsrr_redactor *redact;
};

enum wsrr_tap_phase {
    WSRR_TAP_HANDSHAKE = 0, /* waiting for request and response heads */
    WSRR_TAP_WEBSOCKET,     /* 101 seen: frames in both directions */
    WSRR_TAP_HTTP,          /* not upgraded (rejected, or plain HTTP): no frames */
};

/* What the tap has learned, for the caller's decisions and logs. */
struct wsrr_tap_state {
    enum wsrr_tap_phase phase;
    bool deflate; /* permessage-deflate negotiated */
    struct wsrr_pmd_params pmd;
    int status;         /* the response status, 0 before it */
    uint64_t frames[2]; /* per sender (enum wsrr_dir) */
    uint64_t bytes[2];  /* fed per direction */
    bool close_seen[2]; /* a close frame from this sender */
    uint16_t close_code[2];
    int first_closer; /* enum wsrr_dir of the first close frame, -1 none */
    bool broken[2];   /* the direction could not be followed any more */
};

struct wsrr_tap;

/* A tap recording connection `conn` into w. opts may be NULL (defaults).
 * Returns NULL on allocation failure. */
struct wsrr_tap *wsrr_tap_new(struct wsrr_capture_writer *w, uint32_t conn,
                              const struct wsrr_tap_opts *opts);

/* Free a tap (without writing anything). NULL is a no-op. */
void wsrr_tap_free(struct wsrr_tap *t);

/* Write the connection's OPEN record. */
int wsrr_tap_open(struct wsrr_tap *t, const struct wsrr_rec_open *info, uint64_t ts);

/* Bytes that travelled from `dir`'s sender at time ts (nanoseconds since
 * the capture's start, or WSRR_TS_NOW). Records are written as heads and
 * frames complete. Returns 0; -EMSGSIZE when a frame or message crossed a
 * parser cap (the direction is no longer followed; a proxy closes with
 * 1009); or a writer error. Malformed traffic is not an error. */
int wsrr_tap_feed(struct wsrr_tap *t, enum wsrr_dir dir, const uint8_t *data, size_t len,
                  uint64_t ts);

/* Write a TCP record for this connection. detail may be NULL. */
int wsrr_tap_tcp(struct wsrr_tap *t, enum wsrr_leg leg, enum wsrr_tcp_event ev, int err,
                 const char *detail, uint64_t ts);

/* Write a NOTE record for this connection (what the recorder or the proxy
 * did: answered a request itself, rewrote a header...). */
int wsrr_tap_note(struct wsrr_tap *t, uint64_t ts, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A FAULT record: rule and action names, the seq of the record the fault
 * changed (0: none) and detail (JSON text, may be NULL). */
int wsrr_tap_fault(struct wsrr_tap *t, uint64_t target, const char *rule, const char *action,
                   const char *detail, uint64_t ts);

/* A frame wsrr itself sent as if from dir's sender (fault injection, the
 * control API): a FRAME record flagged injected, payload unmasked (text is
 * redacted like a peer's). The parsers do not see it. f's len_width 0 means
 * the minimal encoding. */
int wsrr_tap_injected(struct wsrr_tap *t, enum wsrr_dir dir, const struct wsrr_frame *f,
                      const uint8_t *payload, size_t n, uint64_t ts);

/* The seq the next record written will get (0 when not recording). */
uint64_t wsrr_tap_next_seq(const struct wsrr_tap *t);

/* Records go to w from now on (the proxy started a new capture file); NULL
 * pauses recording: traffic is still followed, nothing is written. */
void wsrr_tap_set_writer(struct wsrr_tap *t, struct wsrr_capture_writer *w);

/* The connection is over: write its CLOSE summary (who closed first, the
 * code and reason, clean or not). Call once. */
int wsrr_tap_end(struct wsrr_tap *t, uint64_t ts);

const struct wsrr_tap_state *wsrr_tap_state(const struct wsrr_tap *t);

#endif
