/* faults.c — the proxy's fault engine: rules applied to live traffic.
 *
 * With the engine on, each direction of a WebSocket connection is cut into
 * units as it arrives: a data message (all its frames, with any control
 * frames interleaved in it) or a control frame on its own. A unit is held
 * until it is complete, then the rules decide (lib/rules_match.c). What no
 * rule catches goes on exactly as it came, and as long as nothing is
 * queued in that direction it goes in one piece with what came before it:
 * no copy, one send, the same path as without rules.
 *
 * The capture keeps what the peers sent: the tap is fed the original bytes
 * of every unit. What wsrr does instead is written next to it: a FAULT
 * record naming the rule, the action and the first frame record of the
 * unit, and a FRAME record flagged "injected" for every frame wsrr sent that
 * the peer did not.
 *
 * Output of a direction passes through a queue when anything shapes it
 * (delay, latency, bandwidth, slicer, stall, a message held for reorder):
 * each entry has a release time, never earlier than the one before it, so
 * the order of a direction is kept unless a rule changes it on purpose.
 *
 * A unit larger than the proxy's buffer limit is not held: it passes as it
 * comes and no rule sees it (counted, and noted once in the capture).
 */
#include "internal.h"

#include "wsrr/deflate.h"
#include "wsrr/frame.h"
#include "wsrr/log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CLOSE_LINGER_MS 1000
#define MAX_UNIT_FRAMES                                                                            \
    4096 /* frames held in one unit before it passes as it comes */ /* after a rule's close frame: \
                                                                       time for the close replies  \
                                                                     */

struct unit_frame {
    size_t off; /* of its header, from the start of the unit */
    struct wsrr_frame f;
};

struct qitem {
    struct qitem *next;
    uint64_t at; /* release time, wsrr_now_ns(); UINT64_MAX: held until further notice */
    uint64_t nth;
    struct evbuffer *b;
};

struct fdir {
    struct wsrr_frame_parser fp;
    bool broken;       /* a parser cap was crossed: bytes pass as they are from now on */
    size_t parsed;     /* bytes at the front of `in` the parser has seen */
    size_t unit_start; /* where the unit being assembled starts in `in` */
    bool in_msg;       /* a data message has started and not finished */
    bool streaming;    /* ... and was too large to hold: it passes as it comes */
    bool big_noted;
    struct unit_frame *fr; /* frames of the unit (only headers) */
    size_t nfr, capfr;
    struct wsrr_pmd_stream *inflater; /* the sender's context, every compressed message */
    struct evbuffer *msg;             /* the inflated message */
    bool ctx_lost;                    /* a message could not be inflated: context unknown */
    /* Once a fault changed what the receiver's inflater saw (a message
     * dropped, edited, added, moved) under context takeover, the sender's
     * compressed bytes no longer decode there: from then on every
     * compressed message of this direction is compressed again by us. */
    bool recompress;
    struct wsrr_pmd_stream *deflater;
    uint64_t nth; /* units seen in this direction */
    /* a message that comes over several reads, held for rules that search
     * payloads: searched part by part while in the cache (scan_progress) */
    struct wsrr_scan *scan;
    size_t scanned; /* payload bytes of the unit searched so far */

    /* output */
    struct qitem *qhead, **qtail;
    size_t qbytes;
    uint64_t last_at;
    struct event *qtimer;
    struct evbuffer *pending; /* wsrr's own frames waiting for a streamed message's end */
    struct evbuffer *held;    /* reorder: a unit waiting for `held_left` more to pass */
    uint64_t held_left, held_nth;
    bool held_plain; /* held is the message's content, compressed when it goes */
    uint8_t held_opcode;

    /* shaping, set by connection actions */
    uint64_t latency_ns, jitter_ns;
    char latency_rule[72]; /* for the jitter draw */
    uint64_t bps;
    uint64_t slice, slice_ns;
    uint64_t stall_until; /* 0 none, UINT64_MAX forever */
    bool discard;         /* the connection is being closed by a rule */
};

struct faults {
    struct conn *c;
    struct fdir d[2];
    bool need_payload; /* some rule reads payloads (contains, regex, json) */
    bool flat_payload; /* ... and needs them in one piece (regex, json) */
    bool need_time;    /* some rule looks at the time since the connection opened */
    /* connection-wide limits (both directions) */
    uint64_t dead_at;   /* timeout: nothing more goes after it; 0 none */
    uint64_t kill_left; /* kill_after: bytes left; UINT64_MAX none */
    bool deflate;
    struct wsrr_pmd_params pmd;
    struct event *close_timer; /* end_later() */
    uint64_t end_at;
    unsigned end_reset;
    unsigned close_wait; /* bit per sender whose close reply we wait for */
    const char *end_why;
    /* ping storm */
    struct event *storm_timer;
    uint64_t storm_left, storm_ns, storm_sent;
    int storm_to;
};

static const char *sender_name(enum wsrr_dir d)
{
    return d == WSRR_DIR_C2S ? "client" : "server";
}

static uint64_t ms_ns(uint64_t ms)
{
    return ms * 1000000ull;
}

static void arm(struct event *ev, uint64_t at)
{
    uint64_t now = wsrr_now_ns();
    uint64_t dt = at > now ? at - now : 0;
    struct timeval tv = {(time_t)(dt / 1000000000ull), (suseconds_t)(dt % 1000000000ull / 1000)};
    evtimer_add(ev, &tv);
}

/* ---- rules for this connection ---- */

static bool reads_time(const struct wsrr_rules *rs)
{
    for (size_t i = 0; rs && i < rs->count; i++)
        if (rs->rules[i].enabled && rs->rules[i].match.after_ms)
            return true;
    return false;
}

static bool reads_payload(const struct wsrr_rules *rs)
{
    for (size_t i = 0; rs && i < rs->count; i++) {
        const struct wsrr_match *m = &rs->rules[i].match;
        if (rs->rules[i].enabled && (m->contains || m->regex_src || m->json))
            return true;
    }
    return false;
}

/* The connection's rule state follows the rules in force. */
static struct wsrr_rules_conn *conn_rules(struct conn *c)
{
    struct wsrr_proxy *p = c->p;
    if (!p->rules)
        return NULL;
    if (c->rc && c->rules_gen == p->rules_gen)
        return c->rc;
    wsrr_rules_conn_free(c->rc);
    const struct wsrr_http_head *req = wsrr_http_parser_head(&c->head[WSRR_DIR_C2S]);
    struct wsrr_conn_info ci = {
        .ordinal = c->id, .path = c->path ? c->path : "", .client = c->client, .request = req};
    c->rc = wsrr_rules_conn_new(p->rules, &ci);
    c->rules_gen = p->rules_gen;
    if (c->f) {
        for (int i = 0; i < 2; i++) { /* a scan so far was for the old rules */
            c->f->d[i].scanned = 0;
            if (c->f->d[i].scan)
                wsrr_scan_reset(c->f->d[i].scan);
        }
        c->f->need_payload = reads_payload(p->rules);
        c->f->flat_payload = wsrr_rules_flat_payload(p->rules);
        c->f->need_time = reads_time(p->rules);
    }
    return c->rc;
}

/* The detail of a FAULT record: who sent the unit, its ordinal, and the
 * action's parameters as the rule gave them. */
static cJSON *detail_new(const struct wsrr_rule *r, enum wsrr_dir dir, uint64_t nth)
{
    cJSON *d = cJSON_CreateObject();
    if (!d)
        return NULL;
    cJSON_AddStringToObject(d, "dir", sender_name(dir));
    cJSON_AddNumberToObject(d, "nth", (double)nth);
    const cJSON *act = r->src ? cJSON_GetObjectItemCaseSensitive(r->src, "action") : NULL;
    const cJSON *params = act ? act->child : NULL;
    for (const cJSON *x = params ? params->child : NULL; x; x = x->next)
        if (!cJSON_GetObjectItemCaseSensitive(d, x->string))
            cJSON_AddItemToObject(d, x->string, cJSON_Duplicate(x, true));
    return d;
}

void faults_record(struct conn *c, const struct wsrr_rule *r, uint64_t target, const char *detail)
{
    c->faults++;
    c->p->st.faults++;
    wsrr_log(WSRR_LOG_DEBUG, c->id, "rule '%s': %s %s", r->name, wsrr_action_name(r->action.kind),
             detail ? detail : "");
    if (c->tap)
        wsrr_tap_fault(c->tap, target, r->name, wsrr_action_name(r->action.kind), detail,
                       WSRR_TS_NOW);
}

static void record_detail(struct conn *c, const struct wsrr_rule *r, uint64_t target, cJSON *d)
{
    char *s = d ? cJSON_PrintUnformatted(d) : NULL;
    faults_record(c, r, target, s);
    cJSON_free(s);
    cJSON_Delete(d);
}

void faults_fired(struct conn *c, const struct wsrr_rule *r, uint64_t target, enum wsrr_dir dir,
                  uint64_t nth)
{
    record_detail(c, r, target, detail_new(r, dir, nth));
}

int faults_handshake(struct conn *c, const struct wsrr_http_head *req)
{
    (void)req; /* conn_rules() reads it from the parser */
    struct wsrr_rules_conn *rc = conn_rules(c);
    c->hs_rule = rc ? wsrr_rules_on_handshake(c->p->rules, rc) : -1;
    return c->hs_rule;
}

/* ---- sending ---- */

/* A frame of wsrr's own towards `dir`'s destination (as if dir's sender
 * sent it): encoded, masked when it goes to the server, recorded. */
static void own_frame_rec(struct conn *c, enum wsrr_dir dir, const struct wsrr_frame *f,
                          const uint8_t *payload, size_t n, struct evbuffer *out, bool record)
{
    uint8_t hdr[WSRR_FRAME_MAX_HEADER];
    size_t h = wsrr_frame_encode_header(hdr, f);
    evbuffer_add(out, hdr, h);
    if (f->masked && n) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)n, &v, 1) == 1) {
            wsrr_frame_mask(v.iov_base, payload, n, f->mask, 0);
            v.iov_len = n;
            evbuffer_commit_space(out, &v, 1);
        }
    } else if (n) {
        evbuffer_add(out, payload, n);
    }
    if (c->tap && record)
        wsrr_tap_injected(c->tap, dir, f, payload, n, WSRR_TS_NOW);
}

static void own_frame(struct conn *c, enum wsrr_dir dir, const struct wsrr_frame *f,
                      const uint8_t *payload, size_t n, struct evbuffer *out)
{
    own_frame_rec(c, dir, f, payload, n, out, true);
}

static void simple_frame(struct conn *c, enum wsrr_dir dir, uint8_t opcode, const uint8_t *payload,
                         size_t n, struct evbuffer *out)
{
    struct wsrr_frame f;
    wsrr_frame_init(&f, dir, opcode, n);
    own_frame(c, dir, &f, payload, n, out);
}

static void qtimer_cb(evutil_socket_t fd, short what, void *arg);
static void end_later(struct conn *c, uint64_t ms, unsigned reset, const char *why);

/* Bytes leave for dir's destination now, as far as kill_after and timeout
 * allow. */
static void release(struct conn *c, enum wsrr_dir dir, struct evbuffer *b)
{
    struct faults *f = c->f;
    if (f->dead_at && wsrr_now_ns() >= f->dead_at) {
        evbuffer_drain(b, evbuffer_get_length(b));
        return;
    }
    size_t n = evbuffer_get_length(b);
    if (f->kill_left != UINT64_MAX && n >= f->kill_left) {
        struct evbuffer *part = evbuffer_new();
        if (part) {
            evbuffer_remove_buffer(b, part, (size_t)f->kill_left);
            px_send(c, dir, part);
            evbuffer_free(part);
        }
        evbuffer_drain(b, evbuffer_get_length(b));
        f->kill_left = 0;
        c->f->d[0].discard = c->f->d[1].discard = true;
        end_later(c, 0, 3u, "kill_after: the byte budget is spent");
        return;
    }
    if (f->kill_left != UINT64_MAX)
        f->kill_left -= n;
    px_send(c, dir, b);
}

static bool shaped(const struct faults *f, const struct fdir *d)
{
    return d->qhead || d->held || d->latency_ns || d->bps || d->slice || d->stall_until ||
           d->discard || d->recompress || f->dead_at || f->kill_left != UINT64_MAX;
}

/* A unit (or frames of wsrr's own) to go towards dir's destination, not
 * before `at` (0: as soon as the queue allows). Takes b's bytes. */
static void out_at(struct conn *c, enum wsrr_dir dir, struct evbuffer *b, uint64_t at, uint64_t nth)
{
    struct fdir *d = &c->f->d[dir];
    uint64_t now = wsrr_now_ns();
    if (!evbuffer_get_length(b))
        return;
    if (d->discard) {
        evbuffer_drain(b, evbuffer_get_length(b));
        return;
    }
    if (d->latency_ns) {
        uint64_t lat =
            wsrr_rules_jitter(d->latency_ns, d->jitter_ns, c->p->rules ? c->p->rules->seed : 0,
                              d->latency_rule, c->id, (int)dir, nth);
        if (now + lat > at)
            at = now + lat;
    }
    if (d->stall_until && d->stall_until != UINT64_MAX && d->stall_until <= now)
        d->stall_until = 0; /* over */
    if (d->stall_until && d->stall_until > at)
        at = d->stall_until;
    if (at < d->last_at)
        at = d->last_at; /* order within a direction is kept */
    if (!d->qhead && at <= now && !d->bps && !d->slice) {
        release(c, dir, b);
        return;
    }
    struct qitem *q = calloc(1, sizeof(*q));
    if (q)
        q->b = evbuffer_new();
    if (!q || !q->b) {
        free(q);
        release(c, dir, b); /* out of memory: on time is better than never */
        return;
    }
    evbuffer_add_buffer(q->b, b);
    q->at = at;
    q->nth = nth;
    d->last_at = at;
    d->qbytes += evbuffer_get_length(q->b);
    *d->qtail = q;
    d->qtail = &q->next;
    if (d->qhead == q && at != UINT64_MAX)
        arm(d->qtimer, at);
    /* a queue that grows past the buffer limit stops reading the source */
    if (d->qbytes >= c->p->cfg.max_buffer && !c->paused[dir]) {
        c->paused[dir] = true;
        px_set_reading(c, dir, false);
    }
}

static void out(struct conn *c, enum wsrr_dir dir, struct evbuffer *b, uint64_t nth)
{
    out_at(c, dir, b, 0, nth);
}

/* The queue's head is due: release it, or the next slice of it. */
static void qtimer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    for (int dir = 0; dir < 2 && c->f; dir++) {
        struct fdir *d = &c->f->d[dir];
        uint64_t now = wsrr_now_ns();
        while (d->qhead && d->qhead->at <= now) {
            struct qitem *q = d->qhead;
            size_t n = evbuffer_get_length(q->b);
            size_t take = n;
            uint64_t gap = 0;
            if (d->slice && take > d->slice) {
                take = (size_t)d->slice;
                gap = d->slice_ns;
            }
            if (d->bps) {
                size_t chunk = (size_t)(d->bps / 20 ? d->bps / 20 : 1); /* 50 ms worth */
                if (take > chunk)
                    take = chunk;
                uint64_t t = (uint64_t)take * 1000000000ull / d->bps;
                if (t > gap)
                    gap = t;
            }
            struct evbuffer *part = take < n ? evbuffer_new() : q->b;
            if (part != q->b && part)
                evbuffer_remove_buffer(q->b, part, take);
            d->qbytes -= take;
            if (take == n) {
                d->qhead = q->next;
                if (!d->qhead)
                    d->qtail = &d->qhead;
            }
            if (part) {
                release(c, (enum wsrr_dir)dir, part);
            }
            if (part && part != q->b)
                evbuffer_free(part);
            if (take == n) {
                evbuffer_free(q->b);
                free(q);
            }
            if (gap) {
                /* the next piece (of this entry or the next) waits its turn */
                if (d->qhead && d->qhead->at < now + gap)
                    d->qhead->at = now + gap;
                if (d->last_at < now + gap)
                    d->last_at = now + gap;
                break;
            }
        }
        if (d->qhead && d->qhead->at != UINT64_MAX)
            arm(d->qtimer, d->qhead->at);
        if (c->paused[dir] && d->qbytes < c->p->cfg.max_buffer / 2 && !c->eof[dir]) {
            c->paused[dir] = false;
            px_set_reading(c, (enum wsrr_dir)dir, true);
        }
        /* the source ended and everything it sent is out: pass its FIN on */
        if (c->eof[dir] && faults_idle(c, (enum wsrr_dir)dir) &&
            px_half_close(c, (enum wsrr_dir)dir))
            end_later(c, 0, 0, NULL);
    }
}

/* ---- the unit, re-read for an action ---- */

struct piece {
    struct wsrr_frame f;
    uint8_t *wire; /* the payload as sent (masked or not), in the unit's buffer */
    size_t len;
};

struct unit {
    enum wsrr_dir dir;
    uint64_t nth;
    struct evbuffer *raw; /* the unit's bytes as the peer sent them */
    uint8_t *bytes;       /* raw, contiguous */
    size_t n;
    struct piece *pc;
    size_t npc;
    int data_first; /* index of the first data frame, -1 for a control frame */
    uint8_t opcode; /* the message's (or control frame's) */
    bool compressed;
    struct evbuffer *app; /* the payload as the application sees it (inflated) */
    bool streamed;        /* too large to hold: most of it went on already */
};

static void unit_free(struct unit *u)
{
    free(u->pc);
    if (u->app)
        evbuffer_free(u->app);
}

/* Split the unit's bytes into frames again and gather the application
 * payload (unmasked, inflated with a fresh stream when it is compressed). */
static bool unit_read(struct faults *f, struct unit *u)
{
    u->n = evbuffer_get_length(u->raw);
    u->bytes = evbuffer_pullup(u->raw, -1);
    if ((!u->bytes && u->n) || !u->app)
        return false;
    struct wsrr_frame_parser fp;
    wsrr_frame_parser_init(&fp, u->dir, NULL);
    fp.rsv_allowed = f->deflate ? WSRR_RSV1 : 0;
    fp.validate_utf8 = false;
    size_t at = 0, cap = 0;
    u->data_first = -1;
    struct wsrr_frame_event ev;
    for (;;) {
        ssize_t k = wsrr_frame_parse(&fp, u->bytes + at, u->n - at, &ev);
        if (k < 0)
            return false;
        at += (size_t)k;
        if (ev.type == WSRR_FRAME_NEED_MORE)
            break;
        if (ev.type != WSRR_FRAME_HEADER)
            continue;
        if (u->npc == cap) {
            cap = cap ? cap * 2 : 4;
            struct piece *np = realloc(u->pc, cap * sizeof(*np));
            if (!np)
                return false;
            u->pc = np;
        }
        struct piece *p = &u->pc[u->npc];
        p->f = *ev.frame;
        p->wire = u->bytes + at;
        p->len = (size_t)ev.frame->len;
        if (ev.frame->opcode < 8 && u->data_first < 0) {
            u->data_first = (int)u->npc;
            u->compressed = ev.frame->msg_compressed;
        }
        u->npc++;
    }
    u->opcode = u->data_first >= 0 ? u->pc[u->data_first].f.opcode : u->npc ? u->pc[0].f.opcode : 0;
    /* the application payload; a compressed message's was inflated by the
     * engine as it came (unit_apply() put it in u->app) */
    if (u->compressed)
        return true;
    struct evbuffer *wire = u->app;
    if (!wire)
        return false;
    for (size_t i = 0; i < u->npc; i++) {
        const struct piece *p = &u->pc[i];
        if ((u->data_first >= 0) != (p->f.opcode < 8))
            continue; /* a control frame inside a message is not its payload */
        struct evbuffer_iovec v;
        if (p->len && evbuffer_reserve_space(wire, (ev_ssize_t)p->len, &v, 1) == 1) {
            if (p->f.masked)
                wsrr_frame_mask(v.iov_base, p->wire, p->len, p->f.mask, 0);
            else
                memcpy(v.iov_base, p->wire, p->len);
            v.iov_len = p->len;
            evbuffer_commit_space(wire, &v, 1);
        }
    }
    return true;
}

/* The unit's message sent again with new content: one frame (or `frames`
 * frames), the opcode of the original, compressed again when the original
 * was. */
static void send_message(struct conn *c, const struct unit *u, uint8_t opcode, const uint8_t *p,
                         size_t n, size_t frames, struct evbuffer *to, bool record)
{
    struct evbuffer *comp = NULL;
    struct fdir *d = &c->f->d[u->dir];
    if (u->compressed) {
        /* our own context when we recompress this direction; otherwise a
         * fresh one, which any receiver decodes */
        struct wsrr_pmd_params pm = c->f->pmd;
        pm.server_no_context_takeover = pm.client_no_context_takeover = true;
        struct wsrr_pmd_stream *s =
            d->recompress ? d->deflater : wsrr_pmd_deflater_new(&pm, u->dir, -1);
        comp = evbuffer_new();
        if (s && comp && wsrr_pmd_deflate(s, p, n, true, comp) == 0) {
            n = evbuffer_get_length(comp);
            p = evbuffer_pullup(comp, -1);
        } else if (comp) {
            evbuffer_free(comp);
            comp = NULL;
        }
        if (s != d->deflater)
            wsrr_pmd_free(s);
    }
    if (frames < 1)
        frames = 1;
    size_t each = (n + frames - 1) / frames, at = 0;
    for (size_t i = 0; i < frames; i++) {
        size_t k = n - at < each ? n - at : each;
        struct wsrr_frame f;
        wsrr_frame_init(&f, u->dir, i == 0 ? opcode : WSRR_OP_CONT, k);
        f.fin = i + 1 == frames;
        if (i == 0 && comp)
            f.rsv = WSRR_RSV1;
        own_frame_rec(c, u->dir, &f, p + at, k, to, record);
        at += k;
    }
    if (comp)
        evbuffer_free(comp);
}

/* ---- actions ---- */

/* The directions (bit 1 << enum wsrr_dir, the way the bytes travel) a
 * `to` selects: towards the client is server-to-client; WSRR_TO_DEFAULT
 * gives dflt. */
static unsigned to_dirs(int to, unsigned dflt)
{
    switch (to) {
    case WSRR_TO_CLIENT: return 1u << WSRR_DIR_S2C;
    case WSRR_TO_SERVER: return 1u << WSRR_DIR_C2S;
    case WSRR_TO_BOTH: return 3u;
    default: return dflt;
    }
}

/* A frame of wsrr's own to go dir's way: not into the middle of a message
 * that is passing as it comes (it waits for that message's end), and not
 * at all into a direction whose frames are no longer followed. */
static void own_out(struct conn *c, enum wsrr_dir dir, struct evbuffer *b)
{
    struct fdir *d = &c->f->d[dir];
    if (d->broken) {
        evbuffer_drain(b, evbuffer_get_length(b));
        return;
    }
    if (d->in_msg && d->streaming) {
        if (!d->pending && !(d->pending = evbuffer_new())) {
            evbuffer_drain(b, evbuffer_get_length(b));
            return;
        }
        evbuffer_add_buffer(d->pending, b);
        return;
    }
    out(c, dir, b, d->nth);
}

static void close_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    px_reset(c, c->f->end_reset, c->f->end_why);
}

/* End the connection after ms (never from inside the engine's own call
 * stack: the caller still holds it). reset: legs (bit per enum wsrr_dir of
 * the leg's bytes, 1 = client leg) that end with an RST. An earlier end
 * wins. */
static void end_later(struct conn *c, uint64_t ms, unsigned reset, const char *why)
{
    struct faults *f = c->f;
    uint64_t at = wsrr_now_ns() + ms_ns(ms);
    if (f->close_timer && f->end_at <= at)
        return;
    if (!f->close_timer && !(f->close_timer = evtimer_new(c->p->base, close_timer_cb, c)))
        return;
    f->end_at = at;
    f->end_reset = reset;
    f->end_why = why;
    arm(f->close_timer, at);
}

/* Close frames towards `to`; nothing else is forwarded; the connection
 * ends once the peers answered or after CLOSE_LINGER_MS. */
static void fault_close(struct conn *c, int code, const char *reason, size_t rlen, int to)
{
    struct faults *f = c->f;
    struct evbuffer *b = evbuffer_new();
    uint8_t pl[WSRR_FRAME_MAX_CONTROL];
    size_t n = code > 0 ? wsrr_close_payload(pl, (uint16_t)code, reason, rlen) : 0;
    unsigned dirs = to_dirs(to, 3u);
    for (int d = 0; d < 2 && b && code > 0; d++) {
        struct fdir *fd = &f->d[d];
        if (!(dirs & (1u << d)) || fd->discard || fd->broken)
            continue;
        /* a close travelling d is answered by the peer that sends the other way */
        f->close_wait |= 1u << (d == WSRR_DIR_C2S ? WSRR_DIR_S2C : WSRR_DIR_C2S);
        simple_frame(c, (enum wsrr_dir)d, WSRR_OP_CLOSE, pl, n, b);
        /* after what is already queued (which still goes), ahead of nothing else */
        fd->stall_until = 0;
        fd->latency_ns = 0;
        own_out(c, (enum wsrr_dir)d, b);
    }
    if (b)
        evbuffer_free(b);
    f->d[0].discard = f->d[1].discard = true;
    end_later(c, CLOSE_LINGER_MS, 0, "closed by a rule");
}

#define STORM_TICK 256 /* pings per turn of the loop at interval 0 */

static void storm_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct faults *f = c->f;
    (void)fd, (void)what;
    unsigned dirs = to_dirs(f->storm_to, 1u << WSRR_DIR_S2C);
    for (int d = 0; d < 2; d++)
        if ((dirs & (1u << d)) && px_out_len(c, (enum wsrr_dir)d) >= c->p->cfg.max_buffer) {
            /* that peer does not read: the storm waits, it does not pile up */
            arm(f->storm_timer, wsrr_now_ns() + ms_ns(10));
            return;
        }
    struct evbuffer *b = evbuffer_new();
    for (int k = 0; b && f->storm_left && k < STORM_TICK; k++) {
        char pl[32];
        int n = snprintf(pl, sizeof(pl), "wsrr-ping-%llu", (unsigned long long)++f->storm_sent);
        for (int d = 0; d < 2; d++) {
            if (!(dirs & (1u << d)))
                continue;
            simple_frame(c, (enum wsrr_dir)d, WSRR_OP_PING, (const uint8_t *)pl, (size_t)n, b);
            own_out(c, (enum wsrr_dir)d, b);
        }
        f->storm_left--;
        if (f->storm_ns)
            break;
    }
    if (b)
        evbuffer_free(b);
    if (f->storm_left)
        arm(f->storm_timer, wsrr_now_ns() + f->storm_ns);
}

static void passed(struct conn *c, enum wsrr_dir dir);

static bool ctx_takeover(const struct faults *f, enum wsrr_dir sender)
{
    return f->deflate && !(sender == WSRR_DIR_C2S ? f->pmd.client_no_context_takeover
                                                  : f->pmd.server_no_context_takeover);
}

/* A fault is about to change what dir's receiver inflates. */
static void start_recompress(struct conn *c, enum wsrr_dir dir)
{
    struct fdir *d = &c->f->d[dir];
    if (d->recompress || !ctx_takeover(c->f, dir))
        return;
    if (d->ctx_lost || !(d->deflater = wsrr_pmd_deflater_new(&c->f->pmd, dir, -1))) {
        if (c->tap)
            wsrr_tap_note(c->tap, WSRR_TS_NOW,
                          "the %s's compression context is unknown: after this fault its "
                          "messages may not decode",
                          sender_name(dir));
        return;
    }
    d->recompress = true;
    if (c->tap)
        wsrr_tap_note(c->tap, WSRR_TS_NOW,
                      "permessage-deflate with context takeover: from %s message %llu on, wsrr "
                      "compresses the %s's messages again itself",
                      sender_name(dir), (unsigned long long)d->nth, sender_name(dir));
}

/* The unit goes on as it is (not before `at`): its own bytes, or its
 * content compressed again when this direction is recompressed. */
static void pass_unit(struct conn *c, struct unit *u, uint64_t at)
{
    struct fdir *d = &c->f->d[u->dir];
    if (d->recompress && u->compressed && u->data_first >= 0 && !u->streamed) {
        struct evbuffer *b = evbuffer_new();
        if (b) {
            size_t n = evbuffer_get_length(u->app);
            /* the same message, recorded already: not an injected one */
            send_message(c, u, u->opcode, n ? evbuffer_pullup(u->app, -1) : (const uint8_t *)"", n,
                         1, b, false);
            out_at(c, u->dir, b, at, u->nth);
            evbuffer_free(b);
        }
        evbuffer_drain(u->raw, evbuffer_get_length(u->raw));
        return;
    }
    out_at(c, u->dir, u->raw, at, u->nth);
}

/* One rule firing on one unit: what the action functions share. */
struct firing {
    struct conn *c;
    const struct wsrr_rule *r;
    const struct wsrr_action *a;
    struct unit *u;
    uint64_t target, now, seed;
    cJSON *det;         /* the FAULT record's detail, until it is written */
    struct evbuffer *b; /* frames of wsrr's own, on their way out */
    bool readable;      /* u's frames and payload could be read again */
};

/* Write the FAULT record (once; whatever was drawn is in det by then). */
static void recorded(struct firing *x)
{
    if (x->det)
        record_detail(x->c, x->r, x->target, x->det);
    x->det = NULL;
}

/* A frame's payload, unmasked, in a buffer of its own (malloc'd). */
static uint8_t *piece_plain(const struct piece *p)
{
    uint8_t *pl = malloc(p->len ? p->len : 1);
    if (pl && p->f.masked)
        wsrr_frame_mask(pl, p->wire, p->len, p->f.mask, 0);
    else if (pl)
        memcpy(pl, p->wire, p->len);
    return pl;
}

static bool payload_piece(const struct unit *u, size_t k)
{
    /* a data message's frames, or the control frame that is the unit */
    return (u->data_first >= 0) == (u->pc[k].f.opcode < 8);
}

static void act_delay(struct firing *x)
{
    const struct wsrr_action *a = x->a;
    struct unit *u = x->u;
    uint64_t ms =
        wsrr_rules_jitter(a->ms, a->jitter_ms, x->seed, x->r->name, x->c->id, u->dir, u->nth);
    cJSON_AddNumberToObject(x->det, "delayed_ms", (double)ms);
    recorded(x);
    pass_unit(x->c, u, x->now + ms_ns(ms));
}

static void act_duplicate(struct firing *x)
{
    struct conn *c = x->c;
    struct unit *u = x->u;
    struct fdir *d = &c->f->d[u->dir];
    /* copies of a large message are bounded: four buffers' worth */
    uint64_t times = x->a->count, cap = 4 * (uint64_t)c->p->cfg.max_buffer;
    if (times * (u->n + 1) > cap) {
        times = cap / (u->n + 1) ? cap / (u->n + 1) : 1;
        cJSON_AddNumberToObject(x->det, "times_sent", (double)times);
    }
    recorded(x);
    if (!x->readable) {
        pass_unit(c, u, 0);
        return;
    }
    if (d->recompress && u->compressed) {
        /* the original, then the copies, all through our compression
         * context, in the order the receiver inflates them */
        pass_unit(c, u, 0);
        size_t n = evbuffer_get_length(u->app);
        for (uint64_t i = 0; i < times; i++) {
            send_message(c, u, u->opcode, n ? evbuffer_pullup(u->app, -1) : (const uint8_t *)"", n,
                         1, x->b, true);
            out(c, u->dir, x->b, u->nth);
        }
        return;
    }
    /* the same frames, the same bytes (masks included), built before the
     * original goes (its bytes are their source) */
    for (uint64_t i = 0; i < times; i++)
        for (size_t k = 0; k < u->npc; k++) {
            uint8_t *pl = piece_plain(&u->pc[k]);
            if (!pl)
                break;
            own_frame(c, u->dir, &u->pc[k].f, pl, u->pc[k].len, x->b);
            free(pl);
        }
    pass_unit(c, u, 0);
    out(c, u->dir, x->b, u->nth);
}

/* Held until `after` more units of this direction went. */
static void act_reorder(struct firing *x)
{
    struct conn *c = x->c;
    struct unit *u = x->u;
    struct fdir *d = &c->f->d[u->dir];
    recorded(x);
    if (d->held) { /* one held at a time: the earlier one goes now */
        d->held_left = 1;
        passed(c, u->dir);
    }
    if (!(d->held = evbuffer_new())) {
        pass_unit(c, u, 0);
        return;
    }
    /* compressed again only when it goes, so that our compression context
     * sees the messages in the order the receiver does */
    d->held_plain = d->recompress && u->compressed && u->data_first >= 0;
    d->held_opcode = u->opcode;
    evbuffer_add_buffer(d->held, d->held_plain ? u->app : u->raw);
    evbuffer_drain(u->raw, evbuffer_get_length(u->raw));
    d->held_left = x->a->count;
    d->held_nth = u->nth;
}

/* corrupt without keep_valid: the payload bytes change as they travel,
 * headers untouched (compressed data, masks and all). */
static void act_corrupt_raw(struct firing *x)
{
    struct conn *c = x->c;
    struct unit *u = x->u;
    cJSON *pos = cJSON_AddArrayToObject(x->det, "positions");
    size_t total = 0;
    for (size_t k = 0; k < u->npc; k++)
        if (payload_piece(u, k))
            total += u->pc[k].len;
    uint8_t *flat = malloc(total ? total : 1);
    if (flat) {
        size_t o = 0;
        for (size_t k = 0; k < u->npc; k++)
            if (payload_piece(u, k)) {
                memcpy(flat + o, u->pc[k].wire, u->pc[k].len);
                o += u->pc[k].len;
            }
        wsrr_corrupt(flat, total, x->a->count, false, false, x->seed, x->r->name, c->id, u->dir,
                     u->nth, pos);
        o = 0;
        for (size_t k = 0; k < u->npc; k++)
            if (payload_piece(u, k)) {
                memcpy(u->pc[k].wire, flat + o, u->pc[k].len);
                o += u->pc[k].len;
            }
        free(flat);
    }
    recorded(x);
    for (size_t k = 0; k < u->npc && c->tap; k++) { /* what went instead */
        uint8_t *pl = piece_plain(&u->pc[k]);
        if (!pl)
            break;
        wsrr_tap_injected(c->tap, u->dir, &u->pc[k].f, pl, u->pc[k].len, WSRR_TS_NOW);
        free(pl);
    }
    pass_unit(c, u, 0);
}

/* corrupt (keep_valid), truncate, fragment, replace: the message's content
 * edited and sent as new frames. */
static void act_rewrite(struct firing *x)
{
    struct conn *c = x->c;
    struct unit *u = x->u;
    const struct wsrr_action *a = x->a;
    size_t n = evbuffer_get_length(u->app);
    uint8_t *p = n ? evbuffer_pullup(u->app, -1) : (uint8_t *)"";
    uint8_t opcode = u->opcode;
    bool text = u->opcode == WSRR_OP_TEXT;
    char *edited = NULL;
    size_t frames = 1;
    switch (a->kind) {
    case WSRR_ACT_CORRUPT:
        wsrr_corrupt(p, n, a->count, text, true, x->seed, x->r->name, c->id, u->dir, u->nth,
                     cJSON_AddArrayToObject(x->det, "positions"));
        break;
    case WSRR_ACT_TRUNCATE:
        if (n > a->count) {
            n = (size_t)a->count;
            /* a text message stays valid UTF-8: do not cut a character */
            while (text && n && (p[n] & 0xC0) == 0x80)
                n--;
        }
        break;
    case WSRR_ACT_FRAGMENT: frames = (size_t)a->count; break;
    default: /* replace */
        if (a->json) {
            if ((edited = wsrr_json_edit(p, n, a->json))) {
                p = (uint8_t *)edited;
                n = strlen(edited);
            } else {
                cJSON_AddStringToObject(x->det, "skipped", "the payload is not JSON");
            }
        } else {
            p = (uint8_t *)a->text;
            n = a->text_len;
            if (a->binary)
                opcode = WSRR_OP_BINARY;
        }
        break;
    }
    recorded(x);
    if (u->data_first < 0 && a->kind != WSRR_ACT_FRAGMENT)
        simple_frame(c, u->dir, u->opcode, p, n, x->b); /* a control frame */
    else
        send_message(c, u, opcode, p, n, frames, x->b, true);
    out(c, u->dir, x->b, u->nth);
    cJSON_free(edited);
}

static void act_inject(struct firing *x)
{
    const struct wsrr_action *a = x->a;
    struct unit *u = x->u;
    /* by default the frame travels the way the message does */
    unsigned dirs = to_dirs(a->to, 1u << u->dir);
    recorded(x);
    if (a->flag) /* after */
        pass_unit(x->c, u, 0);
    for (int k = 0; k < 2; k++) {
        if (!(dirs & (1u << k)))
            continue;
        simple_frame(x->c, (enum wsrr_dir)k, (uint8_t)a->opcode, (const uint8_t *)a->text,
                     a->text_len, x->b);
        out(x->c, (enum wsrr_dir)k, x->b, u->nth);
    }
    if (!a->flag)
        pass_unit(x->c, u, 0);
}

static void act_storm(struct firing *x)
{
    struct conn *c = x->c;
    struct faults *f = c->f;
    const struct wsrr_action *a = x->a;
    recorded(x);
    pass_unit(c, x->u, 0);
    /* storms of several firings add up, to the largest one a rule may ask */
    f->storm_left = f->storm_left + a->count > 100000 ? 100000 : f->storm_left + a->count;
    f->storm_ns = ms_ns(a->ms);
    f->storm_to = a->to != WSRR_TO_DEFAULT    ? a->to
                  : x->u->dir == WSRR_DIR_C2S ? WSRR_TO_SERVER
                                              : WSRR_TO_CLIENT;
    if (!f->storm_timer)
        f->storm_timer = evtimer_new(c->p->base, storm_cb, c);
    if (f->storm_timer)
        arm(f->storm_timer, x->now);
}

static void act_half_close(struct firing *x)
{
    struct conn *c = x->c;
    recorded(x);
    pass_unit(c, x->u, 0);
    unsigned dirs = to_dirs(x->a->to, 3u);
    for (int k = 0; k < 2; k++)
        if (dirs & (1u << k)) {
            c->f->d[k].discard = true; /* nothing more that way */
            if (px_half_close(c, (enum wsrr_dir)k))
                end_later(c, 0, 0, "both sides half-closed by a rule");
        }
}

/* timeout and kill_after act on the whole connection; stall, bandwidth,
 * latency and slicer on the direction the rule names (both without one). */
static void act_connection(struct firing *x)
{
    struct faults *f = x->c->f;
    const struct wsrr_action *a = x->a;
    recorded(x);
    if (a->kind == WSRR_ACT_TIMEOUT)
        f->dead_at = x->now + ms_ns(a->ms);
    else if (a->kind == WSRR_ACT_KILL_AFTER) /* both directions, this message included */
        f->kill_left = a->count;
    for (int k = 0; k < 2 && a->kind != WSRR_ACT_TIMEOUT && a->kind != WSRR_ACT_KILL_AFTER; k++) {
        if (x->r->match.direction >= 0 && x->r->match.direction != k)
            continue;
        struct fdir *d = &f->d[k];
        switch (a->kind) {
        case WSRR_ACT_STALL: d->stall_until = a->ms ? x->now + ms_ns(a->ms) : UINT64_MAX; break;
        case WSRR_ACT_BANDWIDTH: d->bps = a->count; break;
        case WSRR_ACT_LATENCY:
            d->latency_ns = ms_ns(a->ms);
            d->jitter_ns = ms_ns(a->jitter_ms);
            snprintf(d->latency_rule, sizeof(d->latency_rule), "%s", x->r->name);
            break;
        default: /* slicer */
            d->slice = a->count;
            d->slice_ns = ms_ns(a->ms);
            break;
        }
    }
    pass_unit(x->c, x->u, 0);
}

/* Apply rule r to unit u (its bytes are in u->raw; the tap has them). */
static void act(struct conn *c, const struct wsrr_rule *r, struct unit *u, uint64_t target)
{
    const struct wsrr_action *a = &r->action;
    struct firing x = {.c = c,
                       .r = r,
                       .a = a,
                       .u = u,
                       .target = target,
                       .now = wsrr_now_ns(),
                       .seed = c->p->rules ? c->p->rules->seed : 0,
                       .det = detail_new(r, u->dir, u->nth),
                       .b = evbuffer_new(),
                       .readable = unit_read(c->f, u)};
    switch (a->kind) {
    case WSRR_ACT_DROP:
    case WSRR_ACT_DUPLICATE:
    case WSRR_ACT_REORDER:
    case WSRR_ACT_CORRUPT:
    case WSRR_ACT_TRUNCATE:
    case WSRR_ACT_FRAGMENT:
    case WSRR_ACT_REPLACE:
        /* what the receiver inflates changes */
        if (u->compressed)
            start_recompress(c, u->dir);
        break;
    default: break;
    }
    if (!x.b || !x.det) {
        pass_unit(c, u, 0);
    } else {
        switch (a->kind) {
        case WSRR_ACT_DROP: break;
        case WSRR_ACT_DELAY: act_delay(&x); break;
        case WSRR_ACT_DUPLICATE: act_duplicate(&x); break;
        case WSRR_ACT_REORDER: act_reorder(&x); break;
        case WSRR_ACT_CORRUPT:
        case WSRR_ACT_TRUNCATE:
        case WSRR_ACT_FRAGMENT:
        case WSRR_ACT_REPLACE:
            if (!x.readable)
                pass_unit(c, u, 0);
            else if (a->kind == WSRR_ACT_CORRUPT && !a->flag)
                act_corrupt_raw(&x);
            else
                act_rewrite(&x);
            break;
        case WSRR_ACT_INJECT: act_inject(&x); break;
        case WSRR_ACT_CLOSE:
            recorded(&x);
            fault_close(c, a->code, a->text, a->text_len, a->to);
            break;
        case WSRR_ACT_PING_STORM: act_storm(&x); break;
        case WSRR_ACT_RESET: /* the unit is lost with the connection */
            recorded(&x);
            c->f->d[0].discard = c->f->d[1].discard = true;
            /* legs, by the bytes they send: the client's leg is C2S */
            end_later(c, 0,
                      a->to == WSRR_TO_CLIENT   ? 1u << WSRR_DIR_C2S
                      : a->to == WSRR_TO_SERVER ? 1u << WSRR_DIR_S2C
                                                : 3u,
                      "reset by a rule");
            break;
        case WSRR_ACT_HALF_CLOSE: act_half_close(&x); break;
        case WSRR_ACT_TIMEOUT:
        case WSRR_ACT_KILL_AFTER:
        case WSRR_ACT_STALL:
        case WSRR_ACT_BANDWIDTH:
        case WSRR_ACT_LATENCY:
        case WSRR_ACT_SLICER: act_connection(&x); break;
        default: pass_unit(c, u, 0); break; /* handshake actions never fire on a message */
        }
    }
    evbuffer_drain(u->raw, evbuffer_get_length(u->raw));
    recorded(&x);
    if (x.b)
        evbuffer_free(x.b);
}

/* ---- cutting the stream into units ---- */

/* A unit of dir went on (not the held one): count it for a held reorder. */
static void passed(struct conn *c, enum wsrr_dir dir)
{
    struct fdir *d = &c->f->d[dir];
    if (d->held && d->held_left && --d->held_left == 0) {
        struct evbuffer *h = d->held;
        d->held = NULL;
        if (d->held_plain) {
            struct unit u = {.dir = dir, .nth = d->held_nth, .compressed = true};
            struct evbuffer *b = evbuffer_new();
            size_t n = evbuffer_get_length(h);
            if (b)
                send_message(c, &u, d->held_opcode,
                             n ? evbuffer_pullup(h, -1) : (const uint8_t *)"", n, 1, b, false);
            if (b) {
                out(c, dir, b, d->held_nth);
                evbuffer_free(b);
            }
        } else {
            out(c, dir, h, d->held_nth);
        }
        evbuffer_free(h);
    }
}

/* The first n bytes of `in` go on unchanged: to the tap, then out. */
static void forward(struct conn *c, enum wsrr_dir dir, struct evbuffer *in, size_t n)
{
    struct fdir *d = &c->f->d[dir];
    if (!n)
        return;
    px_feed_tap(c, dir, in, n);
    if (!shaped(c->f, d) && n == evbuffer_get_length(in)) {
        px_send(c, dir, in); /* the common case: everything, in one go */
    } else {
        struct evbuffer *b = evbuffer_new();
        if (!b)
            return;
        evbuffer_remove_buffer(in, b, n);
        out(c, dir, b, d->nth);
        evbuffer_free(b);
    }
    d->parsed -= n;
    d->unit_start -= n < d->unit_start ? n : d->unit_start;
}

static void unit_reset(struct fdir *d)
{
    d->nfr = 0;
    if (d->capfr > 64) { /* a message of many frames: its list is not kept */
        free(d->fr);
        d->fr = NULL;
        d->capfr = 0;
    }
    d->in_msg = false;
    d->streaming = false;
    if (d->msg)
        evbuffer_drain(d->msg, evbuffer_get_length(d->msg));
    d->scanned = 0;
    if (d->scan)
        wsrr_scan_reset(d->scan);
}

/* n payload bytes of frame f starting at payload offset `offset`, unmasked
 * while copied. */
static void copy_payload(uint8_t *dst, const void *src, size_t n, const struct wsrr_frame *f,
                         uint64_t offset)
{
    if (f->masked)
        wsrr_frame_mask(dst, src, n, f->mask, offset);
    else
        memcpy(dst, src, n);
}

/* Calls fn for each stretch of the payload of the unit [unit_start, ...)
 * of dir, in order, from payload offset lo to hi (or the end of what is
 * in): its data frames' when it has any, else its control frame's; a
 * stretch lies in `flat` when given (a complete unit), else in a chain of
 * `in`. `at` is the stretch's offset in its frame's payload. Returns false
 * when fn does or the buffer is not as the frames say. */
typedef bool (*stretch_fn)(void *arg, const struct wsrr_frame *f, const uint8_t *src, size_t n,
                           uint64_t at);
static bool unit_walk_range(struct fdir *d, struct evbuffer *in, const uint8_t *flat, size_t lo,
                            size_t hi, stretch_fn fn, void *arg)
{
    bool data = false;
    size_t inlen = flat ? SIZE_MAX : evbuffer_get_length(in), cum = 0;
    for (size_t i = 0; i < d->nfr; i++)
        data = data || d->fr[i].f.opcode < 8;
    for (size_t i = 0; i < d->nfr && cum < hi; i++) {
        const struct unit_frame *u = &d->fr[i];
        size_t start = d->unit_start + u->off + u->f.hdr_len, len = (size_t)u->f.len;
        if ((u->f.opcode < 8) != data || !len)
            continue;
        size_t here = inlen > start ? (inlen - start < len ? inlen - start : len) : 0;
        size_t s = lo > cum ? lo - cum : 0, e = hi - cum < here ? hi - cum : here;
        cum += len;
        if (s >= e)
            continue;
        size_t from = start + s, n = e - s;
        if (flat) {
            if (!fn(arg, &u->f, flat + from, n, s))
                return false;
            continue;
        }
        struct evbuffer_ptr ptr;
        struct evbuffer_iovec v[8];
        size_t done = 0;
        if (evbuffer_ptr_set(in, &ptr, from, EVBUFFER_PTR_SET) < 0)
            return false;
        while (done < n) {
            int k = evbuffer_peek(in, (ev_ssize_t)(n - done), &ptr, v, 8);
            if (k <= 0)
                return false;
            size_t got = 0;
            for (int j = 0; j < k && j < 8 && done + got < n; j++) {
                size_t m = v[j].iov_len < n - done - got ? v[j].iov_len : n - done - got;
                if (!fn(arg, &u->f, v[j].iov_base, m, s + done + got))
                    return false;
                got += m;
            }
            done += got;
            if (done < n && evbuffer_ptr_set(in, &ptr, got, EVBUFFER_PTR_ADD) < 0)
                return false;
        }
    }
    return true;
}

static bool unit_walk(struct fdir *d, struct evbuffer *in, const uint8_t *flat, stretch_fn fn,
                      void *arg)
{
    return unit_walk_range(d, in, flat, 0, SIZE_MAX, fn, arg);
}

static size_t unit_payload_len(const struct fdir *d)
{
    bool data = false;
    size_t total = 0;
    for (size_t i = 0; i < d->nfr; i++)
        data = data || d->fr[i].f.opcode < 8;
    for (size_t i = 0; i < d->nfr; i++)
        if ((d->fr[i].f.opcode < 8) == data)
            total += (size_t)d->fr[i].f.len;
    return total;
}

struct gather {
    uint8_t *dst;
    size_t at;
};

static bool gather_stretch(void *arg, const struct wsrr_frame *f, const uint8_t *src, size_t n,
                           uint64_t at)
{
    struct gather *g = arg;
    copy_payload(g->dst + g->at, src, n, f, at);
    g->at += n;
    return true;
}

/* The payload of the complete unit of dir in one piece, unmasked: where it
 * lies when it is one unmasked frame in `flat`, otherwise gathered into the
 * proxy's scratch (one per loop: units are looked at one at a time). NULL
 * when out of memory. */
static const uint8_t *unit_payload(struct conn *c, struct fdir *d, struct evbuffer *in,
                                   const uint8_t *flat, size_t *len)
{
    struct wsrr_proxy *p = c->p;
    size_t total = *len = unit_payload_len(d);
    if (!total)
        return (const uint8_t *)"";
    if (flat && d->nfr == 1 && !d->fr[0].f.masked)
        return flat + d->unit_start + d->fr[0].off + d->fr[0].f.hdr_len;
    if (total > p->pay_cap) {
        uint8_t *np = realloc(p->pay, total);
        if (!np)
            return NULL;
        p->pay = np;
        p->pay_cap = total;
    }
    struct gather g = {p->pay, 0};
    return unit_walk(d, in, flat, gather_stretch, &g) ? p->pay : NULL;
}

static bool piece_stretch(void *arg, const struct wsrr_frame *f, const uint8_t *src, size_t n,
                          uint64_t at)
{
    struct wsrr_proxy *p = arg;
    if (p->npcs == p->pcs_cap) {
        size_t cap = p->pcs_cap ? 2 * p->pcs_cap : 16;
        struct wsrr_piece *np = realloc(p->pcs, cap * sizeof(*np));
        if (!np)
            return false;
        p->pcs = np;
        p->pcs_cap = cap;
    }
    struct wsrr_piece *pc = &p->pcs[p->npcs++];
    *pc = (struct wsrr_piece){.p = src, .len = n, .masked = f->masked, .phase = at & 3};
    memcpy(pc->mask, f->mask, 4);
    return true;
}

/* The same payload from offset lo on as pieces where it lies, masked or
 * not: for rules that only search it, no copy and no unmasking pass
 * (p->pcs, *npc of them). */
static const struct wsrr_piece *unit_pieces(struct conn *c, struct fdir *d, struct evbuffer *in,
                                            const uint8_t *flat, size_t lo, size_t *npc)
{
    struct wsrr_proxy *p = c->p;
    p->npcs = 0;
    if (!unit_walk_range(d, in, flat, lo, SIZE_MAX, piece_stretch, p))
        return NULL;
    *npc = p->npcs;
    return p->pcs;
}

/* A unit of dir is complete (its frames in d->fr, its bytes in `flat` when
 * given, else in `in`): count it, inflate it when compressed (the sender's
 * context must be known if a fault ever makes us compress for it) and ask
 * the rules. Returns the rule that fires, or -1. */
static int decide(struct conn *c, enum wsrr_dir dir, struct evbuffer *in, const uint8_t *flat)
{
    struct faults *f = c->f;
    struct fdir *d = &f->d[dir];
    if (d->discard && f->close_wait) {
        /* after a rule's close: a close from a peer we wait for is its
         * answer; when all answered, the connection is done */
        for (size_t i = 0; i < d->nfr; i++)
            if (d->fr[i].f.opcode == WSRR_OP_CLOSE && (f->close_wait & (1u << dir))) {
                f->close_wait &= ~(1u << dir);
                if (!f->close_wait)
                    end_later(c, 0, 0, "closed by a rule");
            }
    }
    d->nth++;
    c->messages[dir]++;
    c->p->st.messages[dir]++;
    const struct wsrr_frame *first = d->nfr ? &d->fr[0].f : NULL;
    for (size_t i = 0; i < d->nfr; i++)
        if (d->fr[i].f.opcode < 8) {
            first = &d->fr[i].f;
            break;
        }
    if (d->streaming)
        return -1;
    bool compressed = first && first->opcode < 8 && first->msg_compressed && f->deflate;
    /* first: new rules reset what scan_progress found (d->scanned) */
    struct wsrr_rules_conn *rc = conn_rules(c);
    const uint8_t *pl = NULL;
    const struct wsrr_piece *pcs = NULL;
    size_t plen = 0, npcs = 0;
    if (f->need_payload && !f->flat_payload && !compressed) {
        plen = unit_payload_len(d);
        pcs = unit_pieces(c, d, in, flat, d->scanned, &npcs); /* what scan_progress did not */
    } else if (f->need_payload || compressed) {
        pl = unit_payload(c, d, in, flat, &plen);
    }
    if (compressed && d->inflater) {
        if (!d->msg)
            d->msg = evbuffer_new();
        if (!pl || !d->msg || wsrr_pmd_inflate(d->inflater, pl, plen, true, d->msg) < 0) {
            if (d->msg)
                evbuffer_drain(d->msg, evbuffer_get_length(d->msg));
            d->ctx_lost = true;
        }
        plen = d->msg ? evbuffer_get_length(d->msg) : 0;
        pl = plen ? evbuffer_pullup(d->msg, -1) : NULL;
    }
    if (!rc)
        return -1;
    if (!f->need_payload || (!pl && !pcs))
        plen = npcs = 0, pcs = NULL;
    struct wsrr_msg_info mi = {
        .dir = dir,
        .opcode = first ? first->opcode : 0,
        .nth = d->nth,
        .payload = pcs    ? NULL
                   : plen ? pl
                          : (const uint8_t *)"",
        .len = plen,
        .pieces = pcs,
        .npieces = npcs,
        .scan = pcs && d->scanned ? d->scan : NULL,
        .since_open_ms = f->need_time ? (wsrr_now_ns() - c->t_start) / 1000000 : 0,
    };
    return wsrr_rules_on_message(c->p->rules, rc, &mi);
}

/* The unit [unit_start, end) of `in` is complete and decided (ri). *fwd:
 * bytes at the front of `in` already cleared to go unchanged. */
static void unit_apply(struct conn *c, enum wsrr_dir dir, struct evbuffer *in, size_t end,
                       size_t *fwd, int ri)
{
    struct faults *f = c->f;
    struct fdir *d = &f->d[dir];
    if (ri < 0 && !shaped(c->f, d)) {
        *fwd = end; /* goes with what came before it */
        unit_reset(d);
        return;
    }
    size_t len = end - d->unit_start;
    /* what came before it (complete units, cleared): the unit is then at
     * the front */
    forward(c, dir, in, d->unit_start);
    *fwd = 0;
    struct unit u = {.dir = dir,
                     .nth = d->nth,
                     .raw = evbuffer_new(),
                     .app = evbuffer_new(),
                     .streamed = d->streaming};
    u.data_first = -1;
    for (size_t i = 0; i < d->nfr; i++)
        if (d->fr[i].f.opcode < 8) {
            u.data_first = (int)i;
            u.compressed = d->fr[i].f.msg_compressed && f->deflate;
            break;
        }
    u.opcode = u.data_first >= 0 ? d->fr[u.data_first].f.opcode : d->nfr ? d->fr[0].f.opcode : 0;
    if (u.compressed && d->msg && u.app)
        evbuffer_add_buffer(u.app, d->msg); /* what the engine inflated */
    uint64_t target = c->tap ? wsrr_tap_next_seq(c->tap) : 0;
    px_feed_tap(c, dir, in, len);
    if (u.raw)
        evbuffer_remove_buffer(in, u.raw, len);
    else
        evbuffer_drain(in, len);
    d->parsed -= len;
    d->unit_start = 0;
    unit_reset(d);
    if (!u.raw || !u.app) {
        unit_free(&u);
        if (u.raw)
            evbuffer_free(u.raw);
        return;
    }
    if (ri < 0) {
        pass_unit(c, &u, 0);
        passed(c, dir);
    } else {
        const struct wsrr_rule *r = &c->p->rules->rules[ri];
        bool reorder = r->action.kind == WSRR_ACT_REORDER;
        act(c, r, &u, target);
        if (!reorder)
            passed(c, dir);
    }
    unit_free(&u);
    evbuffer_free(u.raw);
}

/* One parser event at absolute position abs of `in` (just after the bytes
 * the event consumed). Returns true when `in` lost bytes at its front (the
 * caller must look at it again). */
static bool on_event(struct conn *c, enum wsrr_dir dir, struct evbuffer *in,
                     const struct wsrr_frame_event *ev, size_t abs, size_t *fwd)
{
    struct faults *f = c->f;
    struct fdir *d = &f->d[dir];
    const struct wsrr_frame *fr = ev->frame;
    bool hold = !d->streaming;
    switch (ev->type) {
    case WSRR_FRAME_HEADER:
        if (!d->in_msg) { /* a new unit */
            d->unit_start = abs - fr->hdr_len;
            d->nfr = 0;
        }
        if (fr->opcode < 8 && fr->msg_first)
            d->in_msg = true;
        if (hold && d->in_msg && d->nfr >= MAX_UNIT_FRAMES) {
            /* thousands of frames (pings inside an unfinished message...):
             * the message passes as it comes, like a large one */
            d->streaming = true;
            d->ctx_lost = d->ctx_lost || f->deflate;
            return false;
        }
        if (hold && d->nfr == d->capfr) {
            size_t cap = d->capfr ? d->capfr * 2 : 4;
            struct unit_frame *nf = realloc(d->fr, cap * sizeof(*nf));
            if (nf) {
                d->fr = nf;
                d->capfr = cap;
            }
        }
        if (hold && d->nfr < d->capfr)
            d->fr[d->nfr++] = (struct unit_frame){abs - fr->hdr_len - d->unit_start, *fr};
        return false;
    case WSRR_FRAME_END: {
        bool control_alone = fr->opcode >= 8 && !d->in_msg;
        if (!control_alone && !(fr->opcode < 8 && fr->msg_final))
            return false;
        size_t before = evbuffer_get_length(in);
        unit_apply(c, dir, in, abs, fwd, decide(c, dir, in, NULL));
        return evbuffer_get_length(in) != before;
    }
    default: return false;
    }
}

/* A parser cap was crossed: this direction can no longer be cut into
 * messages; all of `in` and everything after it passes as it is. */
static void go_broken(struct conn *c, enum wsrr_dir dir, struct evbuffer *in)
{
    struct fdir *d = &c->f->d[dir];
    wsrr_log(WSRR_LOG_INFO, c->id, "%s: %s; faults no longer applied to it", sender_name(dir),
             wsrr_frame_parser_error(&d->fp));
    d->broken = true;
    unit_reset(d);
    d->parsed = evbuffer_get_length(in);
    forward(c, dir, in, evbuffer_get_length(in));
    d->parsed = 0;
}

/* wsrr's own frames that waited for a streamed message's end go now. */
static void flush_pending(struct conn *c, enum wsrr_dir dir)
{
    struct fdir *d = &c->f->d[dir];
    if (d->pending && evbuffer_get_length(d->pending) && !d->in_msg)
        out(c, dir, d->pending, d->nth);
}

/* Append to a bufferevent's input, whose end the bufferevent keeps frozen
 * between its own reads. */
static void append_in(struct conn *c, struct evbuffer *in, const uint8_t *p, size_t n)
{
    evbuffer_unfreeze(in, 0);
    rb_keep(c->p->rb, in, p, n);
    evbuffer_freeze(in, 0);
}

/* Bytes just read into the proxy's read buffer, nothing of this
 * direction held or queued: cut them into units right there. Units no rule
 * catches leave straight from the buffer, as without rules; from the first
 * unit a rule catches (or an incomplete one at the end) the rest goes into
 * `in` and the buffered path. Returns false when this cannot be used. */
bool faults_fast(struct conn *c, enum wsrr_dir dir, struct evbuffer *in, const uint8_t *p, size_t n)
{
    struct faults *f = c->f;
    struct fdir *d = &f->d[dir];
    if (d->broken || d->streaming || d->in_msg || d->parsed || shaped(f, d) ||
        evbuffer_get_length(in) || !wsrr_frame_parser_idle(&d->fp))
        return false;
    if (c->p->rules && c->rules_gen != c->p->rules_gen)
        conn_rules(c);
    size_t at = 0, fwd = 0;
    for (;;) {
        struct wsrr_frame_event ev;
        ssize_t k = wsrr_frame_parse(&d->fp, p + at, n - at, &ev);
        if (k < 0) { /* a cap: what came before goes, the rest passes as it is */
            px_send_bytes(c, dir, p, fwd);
            append_in(c, in, p + fwd, n - fwd);
            go_broken(c, dir, in);
            return true;
        }
        at += (size_t)k;
        if (ev.type == WSRR_FRAME_NEED_MORE)
            break;
        const struct wsrr_frame *fr = ev.frame;
        if (ev.type != WSRR_FRAME_END) {
            on_event(c, dir, in, &ev, at, &fwd); /* positions relative to p */
            continue;
        }
        bool control_alone = fr->opcode >= 8 && !d->in_msg;
        if (!control_alone && !(fr->opcode < 8 && fr->msg_final)) {
            on_event(c, dir, in, &ev, at, &fwd);
            continue;
        }
        /* a complete unit, decided here */
        int ri = decide(c, dir, in, p);
        if (ri < 0 && !shaped(f, d)) {
            fwd = at;
            unit_reset(d);
            continue;
        }
        /* a rule caught it: what came before leaves now, the unit and the
         * rest take the buffered path */
        size_t start = d->unit_start;
        px_send_bytes(c, dir, p, start);
        append_in(c, in, p + start, n - start);
        d->parsed = at - start;
        d->unit_start = 0;
        size_t none = 0;
        unit_apply(c, dir, in, d->parsed, &none, ri);
        faults_relay(c, dir, in);
        return true;
    }
    px_send_bytes(c, dir, p, fwd);
    if (fwd < n) { /* an incomplete unit: held in `in` */
        append_in(c, in, p + fwd, n - fwd);
        d->parsed = n - fwd;
        d->unit_start = d->unit_start >= fwd ? d->unit_start - fwd : 0;
    }
    return true;
}

/* A message still coming in, held for rules that search payloads: what
 * came of it since the last look is searched now, while it is in the
 * cache (a message of a megabyte searched once complete is read back from
 * memory); decide() then searches only the rest. */
#define SCAN_STEP (16 * 1024) /* new payload bytes worth a look */
static void scan_progress(struct conn *c, enum wsrr_dir dir, struct evbuffer *in)
{
    struct faults *f = c->f;
    struct fdir *d = &f->d[dir];
    if (!f->need_payload || f->flat_payload || !d->in_msg || d->streaming || d->broken)
        return;
    const struct wsrr_frame *first = NULL;
    size_t have = 0, inlen = evbuffer_get_length(in);
    for (size_t i = 0; i < d->nfr; i++) {
        const struct unit_frame *u = &d->fr[i];
        if (u->f.opcode >= 8)
            continue;
        first = first ? first : &u->f;
        size_t start = d->unit_start + u->off + u->f.hdr_len, len = (size_t)u->f.len;
        have += inlen > start ? (inlen - start < len ? inlen - start : len) : 0;
    }
    struct wsrr_rules_conn *rc = first ? conn_rules(c) : NULL;
    if (!rc || (first->msg_compressed && f->deflate) || have < d->scanned + SCAN_STEP ||
        !wsrr_rules_scan_wanted(c->p->rules, rc, dir, first->opcode))
        return;
    if (!d->scan && !(d->scan = calloc(1, sizeof(*d->scan))))
        return;
    struct wsrr_proxy *p = c->p;
    p->npcs = 0;
    if (!unit_walk_range(d, in, NULL, d->scanned, have, piece_stretch, p) ||
        wsrr_rules_scan_part(p->rules, rc, d->scan, dir, first->opcode, p->pcs, p->npcs) < 0) {
        d->scanned = 0; /* the whole message is searched at its end */
        wsrr_scan_reset(d->scan);
        return;
    }
    d->scanned = have;
}

void faults_relay(struct conn *c, enum wsrr_dir dir, struct evbuffer *in)
{
    struct faults *f = c->f;
    struct fdir *d = &f->d[dir];
    size_t fwd = 0; /* bytes at the front cleared to go as they are */
    if (d->broken) {
        forward(c, dir, in, evbuffer_get_length(in));
        d->parsed = 0;
        return;
    }
    if (c->p->rules && c->rules_gen != c->p->rules_gen)
        conn_rules(c);
    while (d->parsed < evbuffer_get_length(in)) {
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v;
        if (evbuffer_ptr_set(in, &pos, d->parsed, EVBUFFER_PTR_SET) < 0 ||
            evbuffer_peek(in, -1, &pos, &v, 1) < 1)
            break;
        const uint8_t *p = v.iov_base;
        size_t n = v.iov_len, at = 0, base = d->parsed;
        for (;;) {
            struct wsrr_frame_event ev;
            ssize_t k = wsrr_frame_parse(&d->fp, p + at, n - at, &ev);
            if (k < 0) {
                go_broken(c, dir, in);
                return;
            }
            at += (size_t)k;
            d->parsed = base + at;
            if (ev.type == WSRR_FRAME_NEED_MORE)
                break;
            /* when bytes left the front of `in`, unit_apply() moved parsed
             * back by as many: look at the buffer again */
            if (on_event(c, dir, in, &ev, d->parsed, &fwd))
                break;
        }
        /* a message too large to hold passes as it comes, without rules */
        if (d->in_msg && !d->streaming && d->parsed - d->unit_start >= c->p->cfg.max_buffer) {
            d->streaming = true;
            d->ctx_lost = d->ctx_lost || f->deflate;
            if (!d->big_noted && c->tap) {
                d->big_noted = true;
                wsrr_tap_note(c->tap, WSRR_TS_NOW,
                              "a %s message over %zu bytes passed without fault rules",
                              sender_name(dir), c->p->cfg.max_buffer);
            }
        }
        if (d->streaming) {
            fwd = d->parsed;
            d->unit_start = d->parsed;
        }
    }
    forward(c, dir, in, fwd);
    scan_progress(c, dir, in);
    flush_pending(c, dir);
}

/* ---- a connection's engine ---- */

void faults_attach(struct conn *c)
{
    struct faults *f = calloc(1, sizeof(*f));
    if (!f) {
        wsrr_log(WSRR_LOG_ERROR, c->id, "out of memory: no fault rules on this connection");
        return;
    }
    f->c = c;
    for (int i = 0; i < 2; i++) {
        struct fdir *d = &f->d[i];
        wsrr_frame_parser_init(&d->fp, (enum wsrr_dir)i, NULL);
        d->fp.validate_utf8 = false; /* the tap checks; boundaries are all we need */
        d->qtail = &d->qhead;
        d->qtimer = evtimer_new(c->p->base, qtimer_cb, c);
    }
    f->need_payload = reads_payload(c->p->rules);
    f->flat_payload = wsrr_rules_flat_payload(c->p->rules);
    f->need_time = reads_time(c->p->rules);
    f->kill_left = UINT64_MAX;
    c->f = f;
}

void faults_start(struct conn *c, const struct wsrr_http_head *resp)
{
    struct faults *f = c->f;
    if (!f)
        return;
    const struct wsrr_http_field *ext =
        resp ? wsrr_http_find(resp, "Sec-WebSocket-Extensions", NULL) : NULL;
    char err[200];
    if (ext && wsrr_pmd_from_response(ext->value, ext->value_len, &f->pmd, err, sizeof(err)) > 0) {
        f->deflate = true;
        for (int i = 0; i < 2; i++) {
            f->d[i].fp.rsv_allowed = WSRR_RSV1;
            f->d[i].inflater =
                wsrr_pmd_inflater_new(&f->pmd, (enum wsrr_dir)i, c->p->cfg.max_buffer);
        }
    }
}

static void queue_free(struct fdir *d)
{
    while (d->qhead) {
        struct qitem *q = d->qhead;
        d->qhead = q->next;
        evbuffer_free(q->b);
        free(q);
    }
    d->qtail = &d->qhead;
    d->qbytes = 0;
}

void faults_free(struct conn *c)
{
    struct faults *f = c->f;
    if (!f)
        return;
    for (int i = 0; i < 2; i++) {
        struct fdir *d = &f->d[i];
        queue_free(d);
        if (d->qtimer)
            event_free(d->qtimer);
        if (d->held)
            evbuffer_free(d->held);
        if (d->pending)
            evbuffer_free(d->pending);
        if (d->msg)
            evbuffer_free(d->msg);
        wsrr_pmd_free(d->inflater);
        wsrr_pmd_free(d->deflater);
        free(d->fr);
        if (d->scan)
            wsrr_scan_free(d->scan);
        free(d->scan);
    }
    if (f->close_timer)
        event_free(f->close_timer);
    if (f->storm_timer)
        event_free(f->storm_timer);
    free(f);
    c->f = NULL;
}

int faults_close_conn(struct conn *c, int code, const char *reason, size_t len, int to)
{
    if (!c->f)
        return -1;
    if (c->tap)
        wsrr_tap_note(c->tap, WSRR_TS_NOW, "control API: close %d towards %s", code,
                      to == WSRR_TO_CLIENT   ? "the client"
                      : to == WSRR_TO_SERVER ? "the server"
                                             : "both sides");
    fault_close(c, code, reason, len, to);
    return 0;
}

int faults_inject(struct conn *c, int to, uint8_t opcode, const uint8_t *payload, size_t len)
{
    if (!c->f)
        return -1;
    unsigned dirs = to_dirs(to, 1u << WSRR_DIR_S2C);
    for (int k = 0; k < 2; k++)
        if ((dirs & (1u << k)) && c->f->d[k].broken)
            return -2; /* frame boundaries lost that way: an injected frame would land anywhere */
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return -1;
    if (c->tap)
        wsrr_tap_note(c->tap, WSRR_TS_NOW, "control API: inject a %s frame of %zu bytes",
                      wsrr_opcode_name(opcode), len);
    for (int k = 0; k < 2; k++) {
        if (!(dirs & (1u << k)))
            continue;
        simple_frame(c, (enum wsrr_dir)k, opcode, payload, len, b);
        own_out(c, (enum wsrr_dir)k, b);
    }
    evbuffer_free(b);
    return 0;
}

bool faults_idle(const struct conn *c, enum wsrr_dir dir)
{
    const struct fdir *d = &c->f->d[dir];
    return !d->qhead && !d->held && !(d->pending && evbuffer_get_length(d->pending));
}

void faults_eof(struct conn *c, enum wsrr_dir dir, struct evbuffer *in)
{
    struct fdir *d = &c->f->d[dir];
    /* what the source sent last can no longer become a complete message:
     * it goes on as it is, like what no rule catches */
    if (evbuffer_get_length(in)) {
        d->parsed = evbuffer_get_length(in);
        d->unit_start = 0;
        forward(c, dir, in, evbuffer_get_length(in));
    }
    d->parsed = 0;
    unit_reset(d);
    d->in_msg = false;
    flush_pending(c, dir);
    if (d->held) { /* nothing more will pass it */
        d->held_left = 1;
        passed(c, dir);
    }
}
