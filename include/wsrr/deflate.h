/* wsrr/deflate.h — permessage-deflate (RFC 7692) with zlib.
 *
 * Parameters are parsed from a Sec-WebSocket-Extensions element (see
 * wsrr_ext_parse) and checked strictly: duplicate or unknown parameters,
 * window bits outside 8..15 or not a plain decimal are errors.
 *
 * A stream is one direction of one connection: an inflater for what a peer
 * sent, or a deflater for what we send. Inflated output is capped per
 * message, so a small frame that would inflate to gigabytes is an error
 * (-EMSGSIZE) after at most `max_message` bytes of output, not an OOM.
 */
#ifndef WSRR_DEFLATE_H
#define WSRR_DEFLATE_H

#include "wsrr/common.h"
#include "wsrr/handshake.h"

#include <stdbool.h>

struct evbuffer;

struct wsrr_pmd_params {
    bool server_no_context_takeover;
    bool client_no_context_takeover;
    uint8_t server_max_window_bits;      /* 8..15; 15 when absent */
    uint8_t client_max_window_bits;      /* 8..15; 15 when absent */
    bool client_max_window_bits_novalue; /* offer carried the parameter without a value */
    bool server_max_window_bits_set, client_max_window_bits_set; /* carried a value */
};

#define WSRR_PMD_NAME "permessage-deflate"

/* Parse the parameters of one "permessage-deflate" element. `response` says
 * whether it comes from a server's answer (where client_max_window_bits must
 * carry a value) or a client's offer. Names are compared exactly (RFC 7692
 * spells them in lower case). Returns 0 or -EINVAL with err naming the
 * parameter and what was expected (duplicate, unknown, a value where none is
 * allowed, a missing value, window bits not one of 8..15 written plainly:
 * "08", "0", "7", "16", "abc" are refused; a quoted value is unescaped
 * first). *out is written only on success. */
int wsrr_pmd_params_parse(const struct wsrr_ext *e, bool response, struct wsrr_pmd_params *out,
                          char *err, size_t errlen);

/* Format params as an extension element ("permessage-deflate; ...") with
 * only the parameters that differ from the defaults. Returns the length as
 * snprintf does. */
int wsrr_pmd_params_format(const struct wsrr_pmd_params *p, bool response, char *out, size_t cap);

/* Server side: pick the first acceptable permessage-deflate offer among
 * exts. Returns 1 and fills *accepted (what the response will say) when one
 * was accepted, 0 when none was offered or acceptable. Offers with invalid
 * parameters are skipped. The answer echoes the offer: both
 * no_context_takeover flags, server_max_window_bits when given, and
 * client_max_window_bits when given with a value (without a value it is
 * left out, so the client keeps 15). Every valid offer is acceptable,
 * server_max_window_bits=8 included (see wsrr_pmd_deflater_new). */
int wsrr_pmd_negotiate(const struct wsrr_ext *exts, size_t n, struct wsrr_pmd_params *accepted);

/* Find the negotiated permessage-deflate in a 101's Sec-WebSocket-Extensions
 * value. Returns 1 with *out filled, 0 when not negotiated, -EINVAL when
 * malformed, when permessage-deflate appears twice, or past 16 extensions or
 * 64 parameters (err says why). Whether the answer fits the offer is the
 * caller's judgement. */
int wsrr_pmd_from_response(const char *value, size_t len, struct wsrr_pmd_params *out, char *err,
                           size_t errlen);

struct wsrr_pmd_stream;

/* An inflater for messages sent by `sender` under params p (NULL: the
 * defaults). The sender's no_context_takeover applies; its window bits are
 * not enforced, the inflater always keeps a 32 KB window. max_message 0
 * means 64 MiB. zlib state is allocated on the first message (an idle
 * stream is a few hundred bytes). Returns NULL on allocation failure. */
struct wsrr_pmd_stream *wsrr_pmd_inflater_new(const struct wsrr_pmd_params *p, enum wsrr_dir sender,
                                              uint64_t max_message);

/* A deflater for messages we send as `sender` (p NULL: the defaults), zlib
 * state allocated on the first message. level is zlib's (-1 default,
 * 0..9); another level returns NULL. Window bits 8 are compressed with zlib's
 * 9-bit window, which zlib needs for raw deflate and which never emits a
 * distance over 250 bytes, so the output fits a peer's 256-byte window. */
struct wsrr_pmd_stream *wsrr_pmd_deflater_new(const struct wsrr_pmd_params *p, enum wsrr_dir sender,
                                              int level);

/* Free a stream; NULL is a no-op. */
void wsrr_pmd_free(struct wsrr_pmd_stream *s);

/* Inflate the next n compressed bytes of a message (a frame's unmasked
 * payload, or part of it) into out, written in place with
 * evbuffer_reserve_space (no intermediate copy). fin marks the last bytes
 * of the message: the 00 00 FF FF tail is appended, and context is reset
 * when no context takeover applies. A message that already ends with the
 * tail, or with a final (BFINAL) block, is accepted as it is; a final block
 * in the middle restarts the stream. Any split of a message gives the same
 * output. Returns 0, -EMSGSIZE when the message inflates beyond the cap
 * (checked before output is committed: out holds at most max_message bytes
 * of the message), -EBADMSG for a corrupt stream or a message that ends
 * inside a deflate block, -ENOMEM (see wsrr_pmd_error()). After an error the
 * stream is reset and the rest of that message is skipped: later calls up
 * to and including the one with fin return the same error without
 * inflating; the message after it starts afresh. */
int wsrr_pmd_inflate(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, bool fin,
                     struct evbuffer *out);

/* Compress the next n bytes of a message into out. With fin the message is
 * flushed (Z_SYNC_FLUSH) and the 00 00 FF FF tail removed, ready to be sent
 * as the payload of frames with RSV1 on the first; our context is reset
 * after it when no context takeover applies to us. Output of calls without
 * fin may lag (zlib buffers). Returns 0 or a negative errno (-ENOMEM, -EIO);
 * after an error the message is lost and the deflater starts afresh. */
int wsrr_pmd_deflate(struct wsrr_pmd_stream *s, const uint8_t *in, size_t n, bool fin,
                     struct evbuffer *out);

/* Last error as one line ("" when there was none). */
const char *wsrr_pmd_error(const struct wsrr_pmd_stream *s);

#endif
