/* wsrr/frame.h — RFC 6455 frame codec.
 *
 * The parser is a tap, not a policeman: it reports every protocol violation
 * as a flag on the frame and keeps going, so a proxy can forward invalid
 * traffic byte-exactly and record what was wrong. It only stops (returns a
 * negative error) when a configured size cap is crossed, because following a
 * hostile 2^63-byte length would mean waiting forever or allocating.
 *
 * It is incremental and zero-copy: fed any split of a byte stream (one byte
 * at a time or all at once) it produces the same sequence of events, with
 * payload events pointing into the caller's input. It never allocates.
 *
 * The encoder builds any frame, invalid ones included (reserved opcodes, RSV
 * bits, non-minimal length encodings, lengths that disagree with the payload),
 * because fuzzing and fault injection need them.
 */
#ifndef WSRR_FRAME_H
#define WSRR_FRAME_H

#include "wsrr/common.h"

#include <stdbool.h>

enum wsrr_opcode {
    WSRR_OP_CONT = 0x0,
    WSRR_OP_TEXT = 0x1,
    WSRR_OP_BINARY = 0x2,
    WSRR_OP_CLOSE = 0x8,
    WSRR_OP_PING = 0x9,
    WSRR_OP_PONG = 0xA,
};

#define WSRR_FRAME_MAX_HEADER  14 /* 2 + 8 (64-bit length) + 4 (mask key) */
#define WSRR_FRAME_MAX_CONTROL 125

/* RSV bits as they sit in the first header byte, shifted down: RSV1 = 4. */
#define WSRR_RSV1 4u
#define WSRR_RSV2 2u
#define WSRR_RSV3 1u

/* Protocol violations, one bit each. A frame carries the violations found in
 * it; see wsrr_frame_violation_name() for the names used in captures. */
#define WSRR_V_RESERVED_OPCODE    (1u << 0) /* opcode 3-7 or 11-15 */
#define WSRR_V_RSV1               (1u << 1) /* RSV1 not negotiated, or on a control/continuation frame */
#define WSRR_V_RSV2               (1u << 2)  /* RSV2 without an extension that defines it */
#define WSRR_V_RSV3               (1u << 3)  /* RSV3 likewise */
#define WSRR_V_CONTROL_TOO_LONG   (1u << 4)  /* control frame payload over 125 bytes */
#define WSRR_V_CONTROL_FRAGMENTED (1u << 5)  /* control frame with FIN=0 */
#define WSRR_V_LEN_TOP_BIT        (1u << 6)  /* 64-bit length with the most significant bit set */
#define WSRR_V_LEN_NOT_MINIMAL    (1u << 7)  /* 16/64-bit length used where a shorter form fits */
#define WSRR_V_MASK_MISSING       (1u << 8)  /* client-to-server frame not masked */
#define WSRR_V_MASK_UNEXPECTED    (1u << 9)  /* server-to-client frame masked */
#define WSRR_V_ORPHAN_CONT        (1u << 10) /* continuation frame with no message in progress */
#define WSRR_V_EXPECTED_CONT      (1u << 11) /* new text/binary frame while a message is unfinished */
#define WSRR_V_BAD_UTF8           (1u << 12) /* invalid UTF-8 in a text message or a close reason */
#define WSRR_V_CLOSE_BAD_CODE     (1u << 13) /* close code not allowed on the wire (RFC 6455 7.4) */
#define WSRR_V_CLOSE_1_BYTE       (1u << 14) /* close payload of exactly one byte */
#define WSRR_V_AFTER_CLOSE        (1u << 15) /* frame after a close frame in the same direction */
#define WSRR_V_FRAME_TOO_BIG      (1u << 16) /* frame length over limits.max_frame (fatal) */
#define WSRR_V_MESSAGE_TOO_BIG    (1u << 17) /* message over limits.max_message (fatal) */
#define WSRR_V_TOO_MANY_FRAGMENTS (1u << 18) /* message over limits.max_fragments (fatal) */
#define WSRR_V_COUNT              19

/* Caps that turn hostile input into an error rather than a wait or an
 * allocation. Zero in a field means "the default". */
struct wsrr_frame_limits {
    uint64_t max_frame;     /* largest declared payload length; default 64 MiB */
    uint64_t max_message;   /* largest message (sum of fragments); default 64 MiB */
    uint32_t max_fragments; /* most frames in one message; default 65536 */
};

#define WSRR_FRAME_DEFAULT_MAX_FRAME     ((uint64_t)64 << 20)
#define WSRR_FRAME_DEFAULT_MAX_MESSAGE   ((uint64_t)64 << 20)
#define WSRR_FRAME_DEFAULT_MAX_FRAGMENTS 65536u

/* One frame's header, and the message context the parser derived for it.
 * Also the encoder's input (only the fields marked "wire" are used there). */
struct wsrr_frame {
    /* wire */
    bool fin;
    uint8_t rsv;    /* WSRR_RSV1|2|3 bits */
    uint8_t opcode; /* 0-15 */
    bool masked;
    uint8_t mask[4];
    uint8_t len_width; /* 7, 16 or 64: the length encoding; 0 in encoder input = minimal */
    uint64_t len;      /* payload length as declared in the header */

    /* parser output */
    uint8_t hdr_len;     /* 2..14 header bytes on the wire */
    uint32_t violations; /* WSRR_V_* found so far in this frame (final at END) */
    uint8_t msg_opcode;  /* TEXT/BINARY of the message a data frame belongs to
                            (0 for an orphan continuation); == opcode for control frames.
                            Opcodes 3-7 open a message like TEXT/BINARY; 11-15 are
                            control frames (RFC 6455: the opcode's top bit) */
    bool msg_compressed; /* the message had RSV1 on its first frame and RSV1 is allowed */
    bool msg_first;      /* first frame of a data message (false for control frames
                            and orphan continuations) */
    bool msg_final;      /* last frame of a data message (FIN on a data frame, orphan
                            continuations included; false for control frames) */
    uint32_t msg_index;  /* 0-based index of this frame within its message (0 for control
                            frames and orphan continuations) */
    /* For close frames, at END: the code (0 when the payload is shorter than
     * two bytes) and the reason, which is ctl[2 .. ctl_len). */
    uint16_t close_code;
};

enum wsrr_frame_event_type {
    WSRR_FRAME_NEED_MORE = 0, /* all input consumed, no event (ev.frame is NULL) */
    WSRR_FRAME_HEADER,        /* frame header complete: ev.frame is valid */
    WSRR_FRAME_PAYLOAD,       /* ev.data/ev.len: payload bytes as on the wire (still masked);
                                 never empty. ev.frame->violations may gain BAD_UTF8 here
                                 (fail fast) */
    WSRR_FRAME_END,           /* frame complete: ev.frame->violations final; for control
                                 frames ev.data/ev.len is the unmasked payload (at most 125
                                 bytes kept) */
};

struct wsrr_frame_event {
    enum wsrr_frame_event_type type;
    const struct wsrr_frame *frame; /* points into the parser; valid until the next call */
    const uint8_t *data;
    size_t len;
    uint64_t offset; /* PAYLOAD: offset of data[0] within the frame's payload (for unmasking) */
};

/* Parser state. Fields below "private" are not part of the API. */
struct wsrr_frame_parser {
    enum wsrr_dir dir;   /* who sends the frames this parser sees */
    uint8_t rsv_allowed; /* RSV bits negotiated by extensions: WSRR_RSV1 with permessage-deflate */
    bool validate_utf8;  /* check UTF-8 of uncompressed text messages (default true); close
                            reasons are always checked */
    struct wsrr_frame_limits lim;

    /* private */
    int state;
    int error; /* negative errno once a fatal error happened */
    uint8_t hdr[WSRR_FRAME_MAX_HEADER];
    uint8_t hdr_have;
    uint8_t hdr_need; /* header size, known once the first two bytes are in */
    uint8_t pay_mode; /* what the payload path does for the current frame */
    uint64_t payload_done;
    struct wsrr_frame cur;
    bool in_message;
    uint8_t msg_opcode;
    bool msg_compressed;
    uint32_t msg_frames;
    uint64_t msg_size;
    uint32_t utf8_state; /* data message text validation */
    bool msg_utf8_bad;
    uint32_t ctl_utf8_state;
    bool closed; /* a close frame was seen */
    uint8_t ctl[WSRR_FRAME_MAX_CONTROL];
    uint8_t ctl_len;
    uint64_t frames;
    char errmsg[160];
};

/* Initialise a parser for frames sent by `dir`. `lim` may be NULL for the
 * defaults. RSV bits are reported as violations until rsv_allowed is set
 * (set it after the handshake negotiated permessage-deflate). */
void wsrr_frame_parser_init(struct wsrr_frame_parser *p, enum wsrr_dir dir,
                            const struct wsrr_frame_limits *lim);

/* Consume bytes from buf[0..len) up to the next event and describe it in *ev.
 *
 * Returns the number of bytes consumed (0..len) and sets ev->type; when
 * ev->type is WSRR_FRAME_NEED_MORE every byte was consumed. Call again with
 * the rest of the input until NEED_MORE. An END event may consume zero bytes
 * (empty payload), so call with len 0 until NEED_MORE as well (buf may be
 * NULL when len is 0). One event per call; the events do not depend on how
 * the input was split.
 *
 * Returns a negative errno (-EMSGSIZE) when a size cap is crossed; the
 * parser then stays failed (every later call returns the same error) and
 * wsrr_frame_parser_error() says what happened. The frame that crossed the
 * cap is in ev->frame with its violations (exactly one of FRAME_TOO_BIG,
 * TOO_MANY_FRAGMENTS, MESSAGE_TOO_BIG, checked in that order, at the header,
 * so nothing is waited for); no HEADER event is given for it. Control frames
 * count towards no message cap.
 */
ssize_t wsrr_frame_parse(struct wsrr_frame_parser *p, const uint8_t *buf, size_t len,
                         struct wsrr_frame_event *ev);

/* The last fatal error as one line, or "" when there is none. Frames are
 * numbered from 1 in the direction: "frame 12: declared payload length
 * 9223372036854775808 exceeds the 67108864-byte frame limit". */
const char *wsrr_frame_parser_error(const struct wsrr_frame_parser *p);

/* True when the parser is between frames (not inside a header or payload). */
bool wsrr_frame_parser_idle(const struct wsrr_frame_parser *p);

/* XOR `n` bytes of src with the mask key, starting at payload offset `offset`
 * (so chunks of one payload can be unmasked independently). dst may equal
 * src. */
void wsrr_frame_mask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                     uint64_t offset);

/* Encode a frame header for f (fin, rsv, opcode, masked, mask, len_width,
 * len) into out, which must have WSRR_FRAME_MAX_HEADER bytes. A len_width of
 * 0 picks the minimal encoding; 16 or 64 force a (possibly non-minimal) wider
 * one; 7 with a length over 125 falls back to minimal, 16 with a length over
 * 65535 to 64. Returns the header size. Nothing is validated: any opcode, RSV
 * bits or length can be built. A parsed frame re-encodes to its own bytes. */
size_t wsrr_frame_encode_header(uint8_t *out, const struct wsrr_frame *f);

/* Encode a whole frame: the header for f followed by the n payload bytes,
 * masked with f->mask when f->masked. f->len is written as declared, so it
 * may disagree with n on purpose. Writes at most cap bytes to out and returns
 * the size the full frame needs (header + n); nothing is written when that
 * exceeds cap. */
size_t wsrr_frame_encode(uint8_t *out, size_t cap, const struct wsrr_frame *f,
                         const uint8_t *payload, size_t n);

/* Fill f for a well-formed frame: FIN set, minimal length, masked with a
 * random key (OpenSSL RAND_bytes) when dir is WSRR_DIR_C2S. Aborts if no
 * random bytes can be had at all (RAND_bytes and getentropy both fail)
 * rather than send a predictable key. */
void wsrr_frame_init(struct wsrr_frame *f, enum wsrr_dir dir, uint8_t opcode, uint64_t len);

/* Close frames. */

/* True for codes a peer may send in a close frame: 1000-1003, 1007-1014,
 * 3000-4999 (1004-1006, 1015 and the rest are not allowed on the wire). */
bool wsrr_close_code_valid(uint16_t code);

/* A short name for a close code ("normal closure", "internal error", ...),
 * or "application" / "private use" / "reserved" / "invalid" by range. */
const char *wsrr_close_code_name(uint16_t code);

/* Build a close payload (code, then reason) into out (125 bytes). The reason
 * is cut to 123 bytes without splitting a UTF-8 sequence; reason may be NULL
 * when reason_len is 0. The code is written as given (0 or 1005 make an
 * invalid frame, on purpose). Returns its size. */
size_t wsrr_close_payload(uint8_t *out, uint16_t code, const char *reason, size_t reason_len);

/* Name of one violation bit ("reserved_opcode", "rsv1", ...), NULL if the bit
 * is unknown. */
const char *wsrr_frame_violation_name(uint32_t bit);

/* Look a name up; returns the bit or 0. */
uint32_t wsrr_frame_violation_by_name(const char *name, size_t len);

/* Write the names of all bits set in v, separated by ',', into out (unknown
 * bits as "bitN"). Returns the length (as snprintf; out may be NULL when cap
 * is 0). */
int wsrr_frame_violations_format(uint32_t v, char *out, size_t cap);

/* "cont", "text", "binary", "close", "ping", "pong", "op3" ... "op15";
 * "invalid" above 15. */
const char *wsrr_opcode_name(uint8_t opcode);

/* Incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF). A sequence may be split across calls. */
#define WSRR_UTF8_ACCEPT 0u
#define WSRR_UTF8_REJECT 1u

/* Feed bytes; returns the new state: WSRR_UTF8_REJECT once the input is
 * known to be invalid (sticky), WSRR_UTF8_ACCEPT at a character boundary,
 * anything else inside a multi-byte sequence. */
uint32_t wsrr_utf8_feed(uint32_t state, const uint8_t *s, size_t n);

/* Whole-buffer check. */
bool wsrr_utf8_valid(const uint8_t *s, size_t n);

#endif
