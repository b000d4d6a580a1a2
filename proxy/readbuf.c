/* readbuf.c — the proxy's read buffer, lent instead of copied.
 *
 * fast_read() reads into one 64 KiB block and sends from it. Bytes that
 * must wait (a message the rules hold until it is complete, a destination
 * that does not take them) used to be copied into an evbuffer; a large
 * stretch of them now becomes a reference chain on the block itself, and
 * reading goes on in a fresh block. The block comes back when the evbuffer
 * lets go of the chain (sent, drained or freed), to a few spares or to
 * free(). Small stretches are still copied: a 64 KiB block held for a few
 * bytes would cost more memory than the copy costs time. */
#include "internal.h"

#include <stdlib.h>

#define RB_BY_REF                                                                                  \
    (RB_SIZE / 2)  /* shorter stretches are copied: a lent block holds at most                     \
                       twice the bytes it carries */
#define RB_SPARE 8 /* blocks kept for reuse */

struct rblock {
    struct readbuf *rb;
    struct rblock *next;
    uint8_t data[RB_SIZE];
};

struct readbuf {
    struct rblock *cur;   /* the one reads go into */
    struct rblock *spare; /* returned, for the next handover */
    unsigned nspare;
    size_t lent; /* blocks some evbuffer still refers to */
    bool closed; /* the proxy is gone: the last block back frees all */
};

static struct rblock *rb_block(struct readbuf *rb)
{
    struct rblock *b = rb->spare;
    if (b) {
        rb->spare = b->next;
        rb->nspare--;
    } else if (!(b = malloc(sizeof(*b)))) {
        return NULL;
    }
    b->rb = rb;
    b->next = NULL;
    return b;
}

static void rb_put(struct readbuf *rb, struct rblock *b)
{
    if (rb->closed || rb->nspare >= RB_SPARE) {
        free(b);
        return;
    }
    b->next = rb->spare;
    rb->spare = b;
    rb->nspare++;
}

/* evbuffer's cleanup for a lent block */
static void rb_release(const void *data, size_t len, void *arg)
{
    struct rblock *b = arg;
    struct readbuf *rb = b->rb;
    (void)data;
    (void)len;
    rb->lent--;
    rb_put(rb, b);
    if (rb->closed && !rb->lent)
        free(rb);
}

struct readbuf *rb_new(void)
{
    struct readbuf *rb = calloc(1, sizeof(*rb));
    if (rb && !(rb->cur = rb_block(rb))) {
        free(rb);
        rb = NULL;
    }
    return rb;
}

void rb_free(struct readbuf *rb)
{
    if (!rb)
        return;
    free(rb->cur);
    while (rb->spare) {
        struct rblock *b = rb->spare;
        rb->spare = b->next;
        free(b);
    }
    rb->closed = true;
    if (!rb->lent) /* else the evbuffers still holding blocks free it */
        free(rb);
}

uint8_t *rb_data(struct readbuf *rb)
{
    return rb->cur->data;
}

int rb_keep(struct readbuf *rb, struct evbuffer *buf, const uint8_t *p, size_t n)
{
    struct rblock *cur = rb->cur, *next;
    bool ours = p >= cur->data && p + n <= cur->data + RB_SIZE;
    if (ours && n >= RB_BY_REF && (next = rb_block(rb))) {
        if (evbuffer_add_reference(buf, p, n, rb_release, cur) == 0) {
            rb->lent++;
            rb->cur = next;
            return 0;
        }
        rb_put(rb, next);
    }
    return evbuffer_add(buf, p, n);
}
