/* wire.c — frames to and from evbuffers for replay and serve (wire.h). */
#include "wire.h"

#include <event2/buffer.h>
#include <string.h>

int rp_frame_append(struct evbuffer *out, enum wsrr_dir from, uint8_t opcode, bool fin,
                    const uint8_t *p, size_t n, struct wsrr_tap *tap)
{
    return rp_frame_append_wire(out, from, opcode, fin, 0, 0, false, p, n, tap);
}

int rp_frame_append_wire(struct evbuffer *out, enum wsrr_dir from, uint8_t opcode, bool fin,
                         uint8_t rsv, uint8_t len_width, bool unmasked, const uint8_t *p, size_t n,
                         struct wsrr_tap *tap)
{
    struct wsrr_frame f;
    wsrr_frame_init(&f, from, opcode, n);
    f.fin = fin;
    f.rsv = rsv;
    f.len_width = len_width;
    if (unmasked)
        f.masked = false;
    /* the whole frame in one contiguous reservation: masked on the way in,
     * and handed to the tap as it will be sent */
    struct evbuffer_iovec v;
    size_t need = WSRR_FRAME_MAX_HEADER + n;
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) < 1 || v.iov_len < need)
        return -1;
    uint8_t *dst = v.iov_base;
    size_t hl = wsrr_frame_encode_header(dst, &f);
    if (n && f.masked)
        wsrr_frame_mask(dst + hl, p, n, f.mask, 0);
    else if (n)
        memcpy(dst + hl, p, n);
    v.iov_len = hl + n;
    if (tap)
        wsrr_tap_feed(tap, from, dst, hl + n, WSRR_TS_NOW);
    return evbuffer_commit_space(out, &v, 1);
}

int rp_close_append(struct evbuffer *out, enum wsrr_dir from, uint16_t code, const char *reason,
                    size_t rlen, struct wsrr_tap *tap)
{
    uint8_t pl[WSRR_FRAME_MAX_CONTROL] = {0};
    size_t n = code ? wsrr_close_payload(pl, code, reason, rlen > 123 ? 123 : rlen) : 0;
    return rp_frame_append(out, from, WSRR_OP_CLOSE, true, pl, n, tap);
}

bool rp_reader_init(struct rp_reader *rd, enum wsrr_dir from)
{
    memset(rd, 0, sizeof(*rd));
    wsrr_frame_parser_init(&rd->fp, from, NULL);
    return (rd->msg = evbuffer_new()) != NULL;
}

void rp_reader_free(struct rp_reader *rd)
{
    if (rd->msg)
        evbuffer_free(rd->msg);
    rd->msg = NULL;
}

int rp_reader_feed(struct rp_reader *rd, struct evbuffer *in, rp_frame_end_fn fn, void *arg)
{
    while (evbuffer_get_length(in)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        const uint8_t *p = v.iov_base;
        size_t at = 0;
        for (;;) {
            struct wsrr_frame_event ev;
            ssize_t k = wsrr_frame_parse(&rd->fp, p + at, v.iov_len - at, &ev);
            if (k < 0)
                return -1;
            at += (size_t)k;
            if (ev.type == WSRR_FRAME_NEED_MORE)
                break;
            const struct wsrr_frame *f = ev.frame;
            if (ev.type == WSRR_FRAME_HEADER && f->opcode < 8 && f->msg_first)
                rd->msg_op = f->opcode;
            if (ev.type == WSRR_FRAME_PAYLOAD && f->opcode < 8) {
                if (f->masked) { /* unmasked into the message itself */
                    struct evbuffer_iovec w;
                    if (evbuffer_reserve_space(rd->msg, (ev_ssize_t)ev.len, &w, 1) < 1 ||
                        w.iov_len < ev.len)
                        return -1;
                    wsrr_frame_mask(w.iov_base, ev.data, ev.len, f->mask, ev.offset);
                    w.iov_len = ev.len;
                    evbuffer_commit_space(rd->msg, &w, 1);
                } else {
                    evbuffer_add(rd->msg, ev.data, ev.len);
                }
            }
            if (ev.type == WSRR_FRAME_END && !fn(arg, rd, &ev))
                return 0; /* the connection is over: `in` may be gone with it */
        }
        evbuffer_drain(in, at);
    }
    return 0;
}
