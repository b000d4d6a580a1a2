/* wire.h — frames to and from a socket's evbuffers, for the replay client
 * and the mock server (replay.c, serve.c): one writer, one message reader. */
#ifndef WSRR_REPLAY_WIRE_H
#define WSRR_REPLAY_WIRE_H

#include "wsrr/frame.h"
#include "wsrr/tap.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* Append a frame sent by `from` (a client's is masked with a fresh key) to
 * out, and feed the same bytes to tap when given (--record). 0, or -1 when
 * out of memory. */
int rp_frame_append(struct evbuffer *out, enum wsrr_dir from, uint8_t opcode, bool fin,
                    const uint8_t *p, size_t n, struct wsrr_tap *tap);

/* The same with the frame's form chosen: RSV bits, a length encoding
 * (0 minimal, 16 or 64 wider), and for a client whether it is masked. */
int rp_frame_append_wire(struct evbuffer *out, enum wsrr_dir from, uint8_t opcode, bool fin,
                         uint8_t rsv, uint8_t len_width, bool unmasked, const uint8_t *p, size_t n,
                         struct wsrr_tap *tap);

/* The same for a close frame with a code (0: none) and a reason. */
int rp_close_append(struct evbuffer *out, enum wsrr_dir from, uint16_t code, const char *reason,
                    size_t rlen, struct wsrr_tap *tap);

/* Reads the peer's frames and puts data messages together (unmasked). */
struct rp_reader {
    struct wsrr_frame_parser fp;
    struct evbuffer *msg; /* the data message so far */
    uint8_t msg_op;       /* its opcode */
};

/* Called at the end of each frame: for a data frame ending a message, the
 * whole message is in rd->msg (the callee drains it); ev->data holds a
 * control frame's payload. Returns false to stop reading (the connection
 * ended). */
typedef bool (*rp_frame_end_fn)(void *arg, struct rp_reader *rd, const struct wsrr_frame_event *ev);

/* frames sent by `from`; false when out of memory */
bool rp_reader_init(struct rp_reader *rd, enum wsrr_dir from);
void rp_reader_free(struct rp_reader *rd);

/* Consume what `in` holds. Returns 0 (all read, or the callback stopped:
 * then `in` is not touched again, it may have been freed with its
 * connection),
 * or -1 when the frames cannot be followed (wsrr_frame_parser_error(&rd->fp)
 * says why). */
int rp_reader_feed(struct rp_reader *rd, struct evbuffer *in, rp_frame_end_fn fn, void *arg);

#endif
