/* replay.c — one replay run of a session against a server (replay.h).
 *
 * One event loop, one bufferevent per connection (bufferevent_openssl for
 * wss), our frame codec both ways. advance() walks the session's steps in
 * order and stops at the first one that must wait; every event that can
 * satisfy a wait (a handshake answered, a message received, a transport
 * ended, a timer) calls it again. */
#include "replay.h"

#include "wsrr/common.h"
#include "wsrr/frame.h"
#include "wsrr/handshake.h"
#include "wsrr/rules.h"
#include "wsrr/tap.h"
#include "wsrr/tls.h"
#include "wire.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

enum rc_state { RC_IDLE, RC_HANDSHAKE, RC_OPEN, RC_DONE };

struct rconn {
    struct run *run;
    uint32_t idx;
    enum rc_state st;
    struct bufferevent *bev;
    char key[32];
    struct wsrr_http_parser hp;
    struct rp_reader rd;      /* the server's frames and messages */
    struct evbuffer *pending; /* asap/recorded: frames sent before the upgrade completed */
    uint32_t received;        /* server messages */
    uint32_t waived;          /* server messages no longer waited for (quiet_ms) */
    uint32_t *expect;         /* step index of each recorded server message */
    uint32_t nexpect;
    bool close_sent, close_rcvd, ended;
    bool failure_gone;       /* its recorded failure did not come back in time */
    struct wsrr_tap *tap;    /* --record */
    uint16_t sent_code;      /* the close frame we sent */
    bool hangup, hangup_rst; /* the recorded hang-up waits for the output to be written */
    char sent_reason[124];
    /* asap and recorded: its own steps, a cursor, a timer */
    size_t *steps, nsteps, cur, last_send;
    struct event *timer;
    size_t timer_step;
    size_t paused;        /* the step whose pause_us has passed, + 1 */
    uint64_t sent_ns;     /* quiet waits: our last data frame, until a message came after it */
    bool barrier_out;     /* a ping of ours is out: its pong says the server read what came
                             before it */
    uint32_t barriers;    /* pings sent so */
    size_t barrier_after; /* the step the one out follows */
    uint64_t slowest;     /* quiet waits: the longest the server took for the first message
                             after a data frame of ours */
};

struct run {
    const struct rp_session *s;
    const struct rp_opts *o;
    struct rp_result *res;
    struct event_base *base;
    SSL_CTX *ctx;
    char host[256], hostport[300], path[1024];
    int port;
    bool tls;
    struct rconn *c;
    size_t next;         /* causal: the first step not yet done */
    struct event *timer; /* causal: a wait's timeout, a pause, a gap; the end's timeout */
    size_t timer_step;   /* which step the timer is for (SIZE_MAX: the end) */
    bool draining;       /* every step done: waiting for the connections to end */
    uint64_t t0;         /* run start (recorded timing, the verbose log) */
    size_t last_conn;    /* causal: the last client step's connection, SIZE_MAX after a
                            server step */
    uint64_t last_ns;
    size_t last_step;      /* ... its index */
    bool last_noop;        /* ... it did nothing: its connection was over */
    size_t gap_clear;      /* causal: the step (+ 1) whose gap a pong ended (opts.barrier) */
    uint32_t wait_pings;   /* causal: pongs the quiet wait for `next` still waits for
                              (UINT32_MAX: no ping could go) */
    uint64_t wait_t0;      /* causal: when the wait for the server step `next` began */
    size_t paused;         /* causal: the step whose pause_us has passed, + 1 */
    bool advancing, again; /* advance() is running; it was asked again meanwhile */
    char uuid[37];         /* --set PATH=@uuid: fresh per run */
};

#define READ_MAX (1024 * 1024)   /* read at most this much more per read event */
#define BARRIER  "wsrr-barrier-" /* the payload of our pings, then their number */

static void advance(struct run *r);
static void barrier_back(struct rconn *c);
static void advance_once(struct run *r);
static void hang_up(struct rconn *c);

static void vlog(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vlog(struct run *r, const char *fmt, ...)
{
    if (!r->o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(r->o->log, "replay: %8.3f ms  ", (double)(wsrr_now_ns() - r->t0) / 1e6);
    vfprintf(r->o->log, fmt, ap);
    fputc('\n', r->o->log);
    va_end(ap);
}

static struct rp_outcome *out_of(struct rconn *c)
{
    return &c->run->res->conns[c->idx].out;
}

/* The connection is over: what ended it is already in its outcome. */
static void conn_done(struct rconn *c)
{
    if (c->st == RC_DONE)
        return;
    c->st = RC_DONE;
    out_of(c)->messages = c->received;
    if (c->tap) {
        const struct rp_outcome *o = out_of(c);
        if (o->end == RP_END_RESET)
            wsrr_tap_tcp(c->tap, WSRR_LEG_UPSTREAM, WSRR_TCP_RST, ECONNRESET, NULL, WSRR_TS_NOW);
        else if (o->end == RP_END_TIMEOUT || o->end == RP_END_FAILED)
            wsrr_tap_note(c->tap, WSRR_TS_NOW, "replay: %s", o->reason);
        wsrr_tap_tcp(c->tap, WSRR_LEG_CLIENT, WSRR_TCP_CLOSED, 0, "replay closed it", WSRR_TS_NOW);
        wsrr_tap_end(c->tap, WSRR_TS_NOW);
        wsrr_tap_free(c->tap);
        c->tap = NULL;
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    char d[200];
    rp_outcome_describe(out_of(c), d, sizeof(d));
    vlog(c->run, "connection %u: %s", c->run->s->conns[c->idx].id, d);
}

static void conn_fail(struct rconn *c, enum rp_end end, const char *why)
{
    struct rp_outcome *o = out_of(c);
    o->end = end;
    snprintf(o->reason, sizeof(o->reason), "%.*s", (int)sizeof(o->reason) - 1, why);
    conn_done(c);
}

/* ---- sending ---- */

/* Hand what is queued to the kernel now, on a plain socket: the
 * bufferevent would write it on a later turn of the loop, in an order of
 * its own across connections, and the order in which the server sees two
 * connections' frames is what causal replay is about. (On loopback the
 * bytes are in the server's socket when send returns; an epoll server
 * then sees the sockets ready in that order.) */
/* The recorded client hang-up, now that what it sent before is written:
 * the socket is closed (with an RST when the recording had one). */
static void hang_up(struct rconn *c)
{
    if (c->hangup_rst && c->bev) {
        struct linger lg = {1, 0};
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    conn_done(c);
}

static void on_written(struct bufferevent *bev, void *arg)
{
    struct rconn *c = arg;
    (void)bev;
    if (c->hangup) {
        hang_up(c);
        advance(c->run);
    }
}

static void push(struct rconn *c)
{
    if (c->st != RC_OPEN || c->run->tls || !c->bev)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (!evbuffer_get_length(out))
        return;
    /* the bufferevent keeps the front of its output frozen between its
     * own writes */
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, bufferevent_getfd(c->bev));
    evbuffer_freeze(out, 1);
    if (c->hangup && !evbuffer_get_length(out))
        hang_up(c);
}

static void send_wire(struct rconn *c, const struct rp_step *form, uint8_t opcode, bool fin,
                      const uint8_t *p, size_t n)
{
    struct evbuffer *dst = c->st == RC_OPEN ? bufferevent_get_output(c->bev) : c->pending;
    if (rp_frame_append_wire(dst, WSRR_DIR_C2S, opcode, fin, form ? form->rsv : 0,
                             form ? form->len_width : 0, form && form->unmasked, p, n,
                             c->tap) < 0) {
        conn_fail(c, RP_END_FAILED, "out of memory");
        return;
    }
    if (opcode == WSRR_OP_CLOSE)
        c->close_sent = true;
    push(c);
}

static void send_frame(struct rconn *c, uint8_t opcode, bool fin, const uint8_t *p, size_t n)
{
    send_wire(c, NULL, opcode, fin, p, n);
}

static void send_close(struct rconn *c, uint16_t code, const uint8_t *reason, size_t rlen)
{
    rlen = code ? (rlen > 123 ? 123 : rlen) : 0;
    struct evbuffer *dst = c->st == RC_OPEN ? bufferevent_get_output(c->bev) : c->pending;
    if (rp_close_append(dst, WSRR_DIR_C2S, code, (const char *)reason, rlen, c->tap) < 0) {
        conn_fail(c, RP_END_FAILED, "out of memory");
        return;
    }
    c->close_sent = true;
    c->sent_code = code;
    snprintf(c->sent_reason, sizeof(c->sent_reason), "%.*s", (int)rlen,
             rlen ? (const char *)reason : "");
    push(c);
}

/* A whole text message that is JSON, with --set applied to the paths it
 * has (printed again, compactly, when one applied). */
static void send_with_sets(struct rconn *c, const struct rp_step *st)
{
    struct run *r = c->run;
    cJSON *j = cJSON_ParseWithLength((const char *)st->data, st->len);
    bool changed = false;
    for (size_t i = 0; j && i < r->o->nsets; i++) {
        const char *eq = strchr(r->o->sets[i], '=');
        char path[256];
        snprintf(path, sizeof(path), "%.*s", (int)(eq - r->o->sets[i]), r->o->sets[i]);
        cJSON *v = !strcmp(eq + 1, "@uuid") ? cJSON_CreateString(r->uuid) : cJSON_Parse(eq + 1);
        if (!v)
            v = cJSON_CreateString(eq + 1);
        if (rp_json_set(j, path, v))
            changed = true;
        else
            cJSON_Delete(v);
    }
    char *out = changed ? cJSON_PrintUnformatted(j) : NULL;
    if (out)
        send_frame(c, st->opcode, true, (const uint8_t *)out, strlen(out));
    else
        send_wire(c, st, st->opcode, st->fin, st->data, st->len);
    cJSON_free(out);
    cJSON_Delete(j);
}

/* ---- the upgrade ---- */

static bool skip_header(const struct wsrr_http_field *f, const struct rp_opts *o)
{
    static const char *const ours[] = {"Host",
                                       "Origin",
                                       "Upgrade",
                                       "Connection",
                                       "Sec-WebSocket-Key",
                                       "Sec-WebSocket-Version",
                                       "Sec-WebSocket-Extensions",
                                       "Sec-WebSocket-Protocol"};
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
        if (f->name_len == strlen(ours[i]) && !strncasecmp(f->name, ours[i], f->name_len))
            return true;
    for (size_t i = 0; i < o->nheaders; i++) {
        const char *colon = strchr(o->headers[i], ':');
        if (colon && (size_t)(colon - o->headers[i]) == f->name_len &&
            !strncasecmp(f->name, o->headers[i], f->name_len))
            return true;
    }
    return false;
}

/* The recorded request, made for the target. */
static int build_request(struct rconn *c, struct evbuffer *out, char *why, size_t cap)
{
    struct run *r = c->run;
    const struct rp_conn *rc = &r->s->conns[c->idx];
    struct wsrr_http_parser hp;
    wsrr_http_parser_init(&hp, false, 0, 0);
    const struct wsrr_http_head *h = NULL;
    if (wsrr_http_parse(&hp, (const uint8_t *)rc->head, rc->head_len) > 0)
        h = wsrr_http_parser_head(&hp);
    if (!h) {
        snprintf(why, cap, "the recorded request does not parse");
        wsrr_http_parser_finish(&hp);
        return -1;
    }
    struct evbuffer *extra = evbuffer_new();
    char *target = r->path[0] ? strdup(r->path) : strndup(h->target, h->target_len);
    char *proto = NULL, *origin = NULL;
    const struct wsrr_http_field *pf = wsrr_http_find(h, "Sec-WebSocket-Protocol", NULL);
    if (pf)
        proto = strndup(pf->value, pf->value_len);
    if (wsrr_http_find(h, "Origin", NULL) &&
        asprintf(&origin, "%s://%s", r->tls ? "https" : "http", r->hostport) < 0)
        origin = NULL;
    for (size_t i = 0; extra && i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        if (!skip_header(f, r->o))
            evbuffer_add_printf(extra, "%.*s: %.*s\r\n", (int)f->name_len, f->name,
                                (int)f->value_len, f->value);
    }
    for (size_t i = 0; extra && i < r->o->nheaders; i++)
        evbuffer_add_printf(extra, "%s\r\n", r->o->headers[i]);
    wsrr_http_parser_finish(&hp);
    int rc2 = -1;
    if (extra && target) {
        evbuffer_add(extra, "", 1);
        wsrr_handshake_make_key(c->key);
        struct wsrr_ws_request_spec spec = {.target = target,
                                            .host = r->hostport,
                                            .origin = origin,
                                            .key = c->key,
                                            .protocols = proto,
                                            .extra = (const char *)evbuffer_pullup(extra, -1)};
        rc2 = wsrr_handshake_build_request(out, &spec);
        if (rc2 < 0)
            snprintf(why, cap, "the recorded request cannot be rebuilt (%s)", strerror(-rc2));
    } else {
        snprintf(why, cap, "out of memory");
    }
    if (extra)
        evbuffer_free(extra);
    free(target);
    free(proto);
    free(origin);
    return rc2 < 0 ? -1 : 0;
}

/* The response head is complete: a 101 with the right accept opens the
 * connection; another status is the recorded kind of ending, a rejection. */
static int upgraded(struct rconn *c, const struct wsrr_http_head *h)
{
    if (h->status != 101) {
        struct rp_outcome *o = out_of(c);
        o->end = RP_END_REJECTED;
        o->status = h->status;
        o->by_server = true;
        conn_done(c);
        return -1;
    }
    char want[32];
    wsrr_handshake_accept(c->key, strlen(c->key), want);
    const struct wsrr_http_field *a = wsrr_http_find(h, "Sec-WebSocket-Accept", NULL);
    if (!a || a->value_len != strlen(want) || memcmp(a->value, want, a->value_len)) {
        conn_fail(c, RP_END_FAILED, "the 101 has a wrong Sec-WebSocket-Accept");
        return -1;
    }
    c->st = RC_OPEN;
    if (evbuffer_get_length(c->pending))
        evbuffer_add_buffer(bufferevent_get_output(c->bev), c->pending);
    return 0;
}

/* ---- receiving ---- */

static void shorten(char *out, size_t cap, const uint8_t *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++)
        out[k++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
    if (n && k < n && k + 4 <= cap) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/* Is this server message one --extra lets pass uncounted (a heartbeat)? */
static bool extra_ok(const struct run *r, uint8_t op, const uint8_t *p, size_t n)
{
    cJSON *j = NULL;
    bool ok = false;
    for (size_t i = 0; i < r->o->nextras && !ok; i++) {
        const char *pat = r->o->extras[i], *eq = strchr(pat, '=');
        if (!strcmp(pat, "*")) {
            ok = true;
            break;
        }
        if (!eq || op != WSRR_OP_TEXT)
            continue;
        if (!j && !(j = cJSON_ParseWithLength((const char *)p, n)))
            break;
        char path[256];
        snprintf(path, sizeof(path), "%.*s", (int)(eq - pat), pat);
        const cJSON *have = wsrr_json_at(j, path);
        cJSON *want = cJSON_Parse(eq + 1);
        if (!want)
            want = cJSON_CreateString(eq + 1);
        ok = have && want && cJSON_Compare(have, want, true);
        cJSON_Delete(want);
    }
    cJSON_Delete(j);
    return ok;
}

static void on_message(struct rconn *c, const uint8_t *p, size_t n)
{
    struct run *r = c->run;
    struct rp_conn_result *cr = &r->res->conns[c->idx];
    uint32_t nth = c->received + 1;
    if (r->o->on_message)
        r->o->on_message(r->o->arg, c->idx, c->rd.msg_op, p, n);
    const struct rp_step *want = nth <= c->nexpect ? &r->s->steps[c->expect[nth - 1]] : NULL;
    bool same = want && rp_same_message(r->o->ignore, r->o->nignore, want->opcode, want->data,
                                        want->len, c->rd.msg_op, p, n);
    if (!same && r->o->nextras && extra_ok(r, c->rd.msg_op, p, n)) {
        cr->extras++; /* not counted, not compared: it does not satisfy a wait either */
        return;
    }
    c->received = nth;
    if (r->o->quiet_ms && c->sent_ns) { /* the first message after a send of ours */
        uint64_t took = wsrr_now_ns() - c->sent_ns;
        if (took > c->slowest)
            c->slowest = took;
        c->sent_ns = 0;
    }
    if (cr->diverged || same)
        return;
    if (!want) {
        if (rp_outcome_failed(&r->s->conns[c->idx].rec))
            return; /* the recording failed here; this run got further */
        cr->diverged = true;
        cr->div_nth = nth;
        snprintf(cr->expected, sizeof(cr->expected), "(no message %u recorded)", nth);
        shorten(cr->received, sizeof(cr->received), p, n);
        return;
    }
    cr->diverged = true;
    cr->div_nth = nth;
    shorten(cr->expected, sizeof(cr->expected), want->data, want->len);
    shorten(cr->received, sizeof(cr->received), p, n);
    vlog(r, "connection %u: message %u differs", r->s->conns[c->idx].id, nth);
}

static void on_frame_end(struct rconn *c, const struct wsrr_frame_event *ev)
{
    const struct wsrr_frame *f = ev->frame;
    if (f->opcode == WSRR_OP_PING) {
        send_frame(c, WSRR_OP_PONG, true, ev->data, ev->len);
    } else if (f->opcode == WSRR_OP_PONG && c->barrier_out) {
        char want[32];
        int k = snprintf(want, sizeof(want), BARRIER "%u", c->barriers);
        if (ev->len == (size_t)k && !memcmp(ev->data, want, (size_t)k))
            barrier_back(c);
    } else if (f->opcode == WSRR_OP_CLOSE) {
        struct rp_outcome *o = out_of(c);
        c->close_rcvd = true;
        if (o->end == RP_END_OPEN) {
            o->end = RP_END_CLOSED;
            o->by_server = !c->close_sent;
            o->code = f->close_code;
            size_t rl = ev->len > 2 ? ev->len - 2 : 0;
            rl = rl < sizeof(o->reason) - 1 ? rl : sizeof(o->reason) - 1;
            memcpy(o->reason, ev->data + 2, rl);
            o->reason[rl] = '\0';
            o->messages = c->received;
        }
        if (!c->close_sent) /* answer as a client does: the same code */
            send_close(c, f->close_code, NULL, 0);
    } else if (f->opcode < 8 && f->msg_final) {
        size_t n = evbuffer_get_length(c->rd.msg);
        on_message(c, n ? evbuffer_pullup(c->rd.msg, -1) : NULL, n);
        evbuffer_drain(c->rd.msg, n);
    }
}

static bool frame_end(void *arg, struct rp_reader *rd, const struct wsrr_frame_event *ev)
{
    struct rconn *c = arg;
    (void)rd;
    on_frame_end(c, ev);
    return c->st == RC_OPEN;
}

static void read_frames(struct rconn *c, struct evbuffer *in)
{
    if (c->st == RC_OPEN && rp_reader_feed(&c->rd, in, frame_end, c) < 0)
        conn_fail(c, RP_END_FAILED, wsrr_frame_parser_error(&c->rd.fp));
}

/* --record: what the server sent, as it came (the input holds only new
 * bytes here: every read before drained what it parsed) */
static void record_input(struct rconn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[16];
    int k = evbuffer_peek(in, -1, NULL, v, 16);
    for (int i = 0; i < k && i < 16; i++)
        wsrr_tap_feed(c->tap, WSRR_DIR_S2C, v[i].iov_base, v[i].iov_len, WSRR_TS_NOW);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct rconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    /* a full read of libevent 2.1 (4 KiB): what else has come, at once */
    if (!c->run->tls && evbuffer_get_length(in) >= 4096)
        wsrr_read_pending(in, bufferevent_getfd(bev), READ_MAX);
    if (c->tap)
        record_input(c, in);
    if (c->st == RC_HANDSHAKE) {
        size_t n = evbuffer_get_length(in);
        ssize_t k = wsrr_http_parse(&c->hp, evbuffer_pullup(in, -1), n);
        if (k < 0) {
            conn_fail(c, RP_END_FAILED, wsrr_http_parser_error(&c->hp));
            advance(c->run);
            return;
        }
        if (k == WSRR_AGAIN) {
            evbuffer_drain(in, n);
            return;
        }
        evbuffer_drain(in, (size_t)k);
        if (upgraded(c, wsrr_http_parser_head(&c->hp)) < 0) {
            advance(c->run);
            return;
        }
    }
    read_frames(c, in);
    advance(c->run);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct rconn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        /* as browsers and asyncio do: a frame written in two parts (or a
         * mutation's extra frame) must not wait for the ACK of the first */
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        vlog(c->run, "connection %u: connected", c->run->s->conns[c->idx].id);
        return;
    }
    struct rp_outcome *o = out_of(c);
    int err = EVUTIL_SOCKET_ERROR();
    if (c->st == RC_OPEN && (what & BEV_EVENT_EOF))
        read_frames(c, bufferevent_get_input(c->bev)); /* what came with the FIN */
    c->ended = true;
    if (o->end == RP_END_OPEN) {
        unsigned long tls_err = c->run->tls ? bufferevent_get_openssl_error(c->bev) : 0;
        if (tls_err) {
            char why[160];
            wsrr_tls_error(bufferevent_openssl_get_ssl(c->bev), tls_err, why, sizeof(why));
            o->end = RP_END_FAILED;
            snprintf(o->reason, sizeof(o->reason), "TLS with %.30s: %.80s", c->run->hostport, why);
        } else if (c->st == RC_HANDSHAKE && bufferevent_socket_get_dns_error(c->bev)) {
            o->end = RP_END_FAILED;
            snprintf(o->reason, sizeof(o->reason), "cannot resolve %.40s: %.40s", c->run->host,
                     evutil_gai_strerror(bufferevent_socket_get_dns_error(c->bev)));
        } else if (c->st == RC_HANDSHAKE && !(what & BEV_EVENT_EOF)) {
            o->end = RP_END_FAILED;
            snprintf(o->reason, sizeof(o->reason), "cannot connect to %.50s: %.40s",
                     c->run->hostport, err ? evutil_socket_error_to_string(err) : "error");
        } else if ((what & BEV_EVENT_ERROR) && err == ECONNRESET) {
            o->end = RP_END_RESET;
            o->by_server = true;
        } else {
            o->end = RP_END_ABNORMAL;
            o->by_server = true;
        }
    }
    conn_done(c);
    advance(c->run);
}

/* ---- the schedule ---- */

static int open_conn(struct rconn *c)
{
    struct run *r = c->run;
    char why[160];
    if (r->tls) {
        SSL *ssl = SSL_new(r->ctx);
        if (!ssl || wsrr_tls_client_prepare(ssl, r->host) < 0) {
            SSL_free(ssl);
            conn_fail(c, RP_END_FAILED, "TLS setup failed");
            return -1;
        }
        c->bev = bufferevent_openssl_socket_new(r->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
    } else {
        c->bev = bufferevent_socket_new(r->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    bool reader = rp_reader_init(&c->rd, WSRR_DIR_S2C);
    c->pending = evbuffer_new();
    if (!c->bev || !reader || !c->pending) {
        conn_fail(c, RP_END_FAILED, "out of memory");
        return -1;
    }
    wsrr_http_parser_init(&c->hp, true, 0, 0);
    c->st = RC_HANDSHAKE;
    bufferevent_setcb(c->bev, on_read, on_written, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (build_request(c, bufferevent_get_output(c->bev), why, sizeof(why)) < 0) {
        conn_fail(c, RP_END_FAILED, why);
        return -1;
    }
    if (r->o->record) {
        struct wsrr_tap_opts to = {.redact = r->o->redact};
        c->tap = wsrr_tap_new(r->o->record, r->o->conn_base + c->idx + 1, &to);
    }
    if (c->tap) {
        struct wsrr_rec_open op = {0};
        op.client = (struct wsrr_span){(const uint8_t *)"wsrr replay", 11};
        op.upstream = (struct wsrr_span){(const uint8_t *)r->o->target, strlen(r->o->target)};
        if (r->tls)
            op.flags |= WSRR_OF_UPSTREAM_TLS | (r->o->insecure ? WSRR_OF_UPSTREAM_INSECURE : 0);
        wsrr_tap_open(c->tap, &op, WSRR_TS_NOW);
        wsrr_tap_note(c->tap, WSRR_TS_NOW, "replay of connection %u of %s", r->s->conns[c->idx].id,
                      r->s->path);
        struct evbuffer *out = bufferevent_get_output(c->bev);
        struct evbuffer_iovec v[4];
        int k = evbuffer_peek(out, -1, NULL, v, 4);
        for (int i = 0; i < k && i < 4; i++)
            wsrr_tap_feed(c->tap, WSRR_DIR_C2S, v[i].iov_base, v[i].iov_len, WSRR_TS_NOW);
    }
    if (bufferevent_socket_connect_hostname(c->bev, NULL, AF_UNSPEC, r->host, r->port) < 0) {
        conn_fail(c, RP_END_FAILED, "cannot start connecting");
        return -1;
    }
    vlog(r, "connection %u: opening", r->s->conns[c->idx].id);
    return 0;
}

/* Has this server step happened again (or can it no longer)? */
static bool happened(struct run *r, const struct rp_step *st)
{
    struct rconn *c = &r->c[st->conn];
    if (c->st == RC_DONE || c->ended || (st->failure && c->failure_gone))
        return true;
    switch (st->kind) {
    case RP_UPGRADED: return c->st == RC_OPEN;
    case RP_MESSAGE: return c->received >= st->nth || c->waived >= st->nth;
    case RP_CLOSE: return c->close_rcvd;
    default: /* RP_END: the transport ends (c->ended) */ return false;
    }
}

static bool server_step(enum rp_kind k)
{
    return k == RP_UPGRADED || k == RP_MESSAGE || k == RP_CLOSE || k == RP_END;
}

/* Run one client step on its connection. */
static void client_step(struct run *r, const struct rp_step *st)
{
    struct rconn *c = &r->c[st->conn];
    if (c->st == RC_DONE)
        return; /* it ended earlier than recorded: the rest of it cannot happen */
    if (r->o->log && st->kind == RP_SEND)
        vlog(r, "#%llu connection %u: sends %s%s (%zu bytes)%s", (unsigned long long)st->seq,
             r->s->conns[st->conn].id, wsrr_opcode_name(st->opcode), st->fin ? "" : " (not final)",
             st->len, c->st == RC_OPEN ? "" : ", queued until the upgrade");
    else if (r->o->log && st->kind == RP_HANGUP)
        vlog(r, "#%llu connection %u: the client hangs up", (unsigned long long)st->seq,
             r->s->conns[st->conn].id);
    switch (st->kind) {
    case RP_OPEN:
        if (c->st == RC_IDLE)
            open_conn(c);
        break;
    case RP_SEND:
        if (st->opcode == WSRR_OP_CLOSE)
            send_close(c, st->code, st->data, st->len);
        else if (r->o->nsets && st->opcode == WSRR_OP_TEXT && st->fin)
            send_with_sets(c, st);
        else
            send_wire(c, st, st->opcode, st->fin, st->data, st->len);
        if (st->opcode < 8)
            r->res->conns[st->conn].last_send = (size_t)(st - r->s->steps) + 1;
        if (r->o->quiet_ms && st->opcode < 8)
            c->sent_ns = wsrr_now_ns();
        break;
    case RP_HANGUP:
        if (c->failure_gone) { /* it left after the failure; this run had none */
            if (c->st != RC_IDLE && !c->close_sent)
                send_close(c, 1000, (const uint8_t *)"replay done", 11);
            break;
        }
        if (c->st == RC_OPEN && !c->close_rcvd && out_of(c)->end == RP_END_OPEN) {
            /* the client hung up, as recorded: after its close frame, a
             * close of its own; without one, an abnormal end */
            struct rp_outcome *o = out_of(c);
            o->by_server = false;
            o->end = c->close_sent ? RP_END_CLOSED : RP_END_ABNORMAL;
            o->code = c->close_sent ? c->sent_code : 0;
            snprintf(o->reason, sizeof(o->reason), "%s", c->close_sent ? c->sent_reason : "");
        }
        /* once what it sent before has left */
        c->hangup = true;
        c->hangup_rst = st->rst;
        if (!c->bev || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            hang_up(c);
        break;
    default: break;
    }
}

/* A wait for the server ran out: a recorded failure that did not come back
 * lets the connection go on; anything else is a timeout. */
static void wait_expired(struct run *r, const struct rp_step *st)
{
    struct rconn *c = &r->c[st->conn];
    if (st->kind == RP_MESSAGE && r->o->quiet_ms) {
        vlog(r, "connection %u: no server message %u in time: going on", r->s->conns[st->conn].id,
             st->nth);
        c->waived = st->nth;
        r->res->conns[st->conn].quiet++;
        return;
    }
    if (st->failure) {
        vlog(r, "connection %u: the recorded %s did not come", r->s->conns[st->conn].id,
             st->kind == RP_CLOSE ? "close" : "end");
        c->failure_gone = true;
        return;
    }
    char why[120];
    if (st->kind == RP_MESSAGE)
        snprintf(why, sizeof(why), "no server message %u within %llu ms", st->nth,
                 (unsigned long long)r->o->timeout_ms);
    else
        snprintf(why, sizeof(why), "the server did not %s within %llu ms",
                 st->kind == RP_UPGRADED ? "answer the upgrade"
                 : st->kind == RP_CLOSE  ? "send its close frame"
                                         : "end the connection",
                 (unsigned long long)r->o->timeout_ms);
    conn_fail(c, RP_END_TIMEOUT, why);
}

static void arm_us(struct event *ev, size_t *armed_for, size_t step, uint64_t us)
{
    if (*armed_for == step && evtimer_pending(ev, NULL))
        return;
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    *armed_for = step;
    evtimer_add(ev, &tv);
}

static void arm(struct event *ev, size_t *armed_for, size_t step, uint64_t ms)
{
    arm_us(ev, armed_for, step, ms * 1000);
}

/* How long the server may take for the message of step i: what it took
 * when recorded (since the step before it on the same connection), or the
 * longest it took for a message of this run on that connection, if longer. */
static uint64_t answer_ns(const struct run *r, size_t i)
{
    const struct rp_step *st = &r->s->steps[i];
    size_t k = rp_step_before(r->s, i, -1);
    const struct rp_step *p = k != SIZE_MAX ? &r->s->steps[k] : NULL;
    uint64_t took = p && p->ts && st->ts > p->ts ? st->ts - p->ts : 0;
    return r->c[st->conn].slowest > took ? r->c[st->conn].slowest : took;
}

static uint64_t wait_ms(const struct run *r, size_t i)
{
    const struct rp_step *st = &r->s->steps[i];
    /* fuzz: a message a changed request may never get, and a recorded
     * failure that may not come back, are waited for a short while: twice
     * what the server took for it when recorded, or for any message of
     * this run on the connection, whichever is longer, plus quiet_ms */
    if (!r->o->quiet_ms || (st->kind != RP_MESSAGE && !st->failure))
        return r->o->timeout_ms;
    uint64_t ms = r->o->quiet_ms + 2 * (answer_ns(r, i) / 1000000);
    return ms < r->o->timeout_ms ? ms : r->o->timeout_ms;
}

/* Fuzz (causal, opts.barrier): a ping after what we sent. Servers read a
 * connection in order, so its pong means the server has read all that came
 * before it on that connection (a ping between the fragments of a message
 * is allowed: RFC 6455 5.4). Two uses:
 *  - a quiet wait: a server that answers has had, once the pong is back,
 *    the time it took for that answer when recorded (twice, and a
 *    millisecond) and did not answer: the wait ends there instead of after
 *    quiet_ms;
 *  - the --gap between client steps on two connections: the second goes
 *    once the server has read the first, instead of after gap_us.
 * A server that does not answer pings gets the full wait and gap. `after`:
 * the step the ping follows. */
static bool barrier(struct rconn *c, size_t after)
{
    if (c->st != RC_OPEN || c->close_sent || c->barrier_out || !c->bev)
        return false;
    char p[32];
    int k = snprintf(p, sizeof(p), BARRIER "%u", ++c->barriers);
    c->barrier_out = true;
    c->barrier_after = after;
    send_frame(c, WSRR_OP_PING, true, (const uint8_t *)p, (size_t)k);
    return true;
}

/* A quiet wait for a message on connection w begins (step `next`): a ping
 * on w (the message may answer what w sent) and on the connection of the
 * last client step (or what it sent: a broadcast). */
static void wait_barriers(struct run *r, uint32_t w)
{
    r->wait_pings = 0;
    if (!r->o->barrier || !r->o->quiet_ms)
        return;
    r->wait_pings += barrier(&r->c[w], r->next);
    if (r->last_step != SIZE_MAX && r->s->steps[r->last_step].conn != w)
        r->wait_pings += barrier(&r->c[r->s->steps[r->last_step].conn], r->next);
    if (!r->wait_pings)
        r->wait_pings = UINT32_MAX; /* none could go: the whole quiet wait */
}

static void barrier_back(struct rconn *c)
{
    struct run *r = c->run;
    c->barrier_out = false;
    if (r->o->timing != RP_CAUSAL || r->next >= r->s->nsteps)
        return;
    const struct rp_step *st = &r->s->steps[r->next];
    if (!server_step(st->kind)) {
        /* the gap before it: the server has read the last client step
         * (advance() after this read lets it go) */
        if (c->idx == r->last_conn && c->barrier_after == r->last_step)
            r->gap_clear = r->next + 1;
        return;
    }
    if (r->timer_step != r->next || st->kind != RP_MESSAGE || happened(r, st) ||
        r->wait_pings == UINT32_MAX)
        return;
    if (c->barrier_after != r->next) { /* an older one: it says nothing of this wait */
        bool ours = c->idx == st->conn ||
                    (r->last_step != SIZE_MAX && c->idx == r->s->steps[r->last_step].conn);
        if (ours && barrier(c, r->next))
            r->wait_pings++;
        return;
    }
    if (!r->wait_pings || --r->wait_pings)
        return;
    uint64_t until = r->wait_t0 + 2 * answer_ns(r, r->next) + 1000000, now = wsrr_now_ns();
    uint64_t us = until > now ? (until - now) / 1000 : 0;
    if (us >= 1000000)
        return; /* the quiet wait's own end is as near */
    struct timeval tv = {0, (suseconds_t)us};
    evtimer_add(r->timer, &tv);
}

/* Needs the client step `next` (on another connection than the last
 * one) no --gap, because the server has seen the last one? It did nothing
 * (its connection was over); or, with fuzz's pings, the pong of one sent
 * after it came back, or the server answered our close on that
 * connection. */
static bool seen_last(const struct run *r)
{
    const struct rconn *c = &r->c[r->last_conn];
    return r->last_noop ||
           (r->o->barrier && (r->gap_clear == r->next + 1 || (c->close_sent && c->close_rcvd)));
}

/* causal: one cursor over the global order; a client step runs once every
 * server step before it has happened. Returns true when every step is done. */
static bool advance_causal(struct run *r)
{
    const struct rp_session *s = r->s;
    while (r->next < s->nsteps) {
        const struct rp_step *st = &s->steps[r->next];
        if (server_step(st->kind) && !happened(r, st)) {
            if (r->timer_step != r->next) {
                vlog(r, "#%llu waits for connection %u: %s", (unsigned long long)st->seq,
                     s->conns[st->conn].id,
                     st->kind == RP_MESSAGE    ? "a server message"
                     : st->kind == RP_UPGRADED ? "the upgrade's answer"
                     : st->kind == RP_CLOSE    ? "the server's close"
                                               : "the end of the server's transport");
                r->wait_t0 = wsrr_now_ns();
                if (st->kind == RP_MESSAGE)
                    wait_barriers(r, st->conn);
            }
            arm(r->timer, &r->timer_step, r->next, wait_ms(r, r->next));
            return false;
        }
        if (!server_step(st->kind) && st->pause_us && r->paused != r->next + 1) {
            if (r->timer_step != r->next || !evtimer_pending(r->timer, NULL))
                vlog(r, "#%llu pauses %.3f ms", (unsigned long long)st->seq, st->pause_us / 1e3);
            arm_us(r->timer, &r->timer_step, r->next, st->pause_us);
            return false;
        }
        if (!server_step(st->kind)) {
            /* two client steps on different connections with no server
             * step between them: the second waits a little, or the
             * server may see them the other way round (not needed
             * around the steps of a burst: their order is open) */
            uint64_t now = wsrr_now_ns(), gap = r->o->gap_us * 1000;
            if (r->last_conn != SIZE_MAX && r->last_conn != st->conn && !st->burst &&
                !s->steps[r->last_step].burst && now < r->last_ns + gap && !seen_last(r)) {
                if (r->timer_step != r->next)
                    vlog(r, "#%llu waits --gap after connection %u's step #%llu",
                         (unsigned long long)st->seq, s->conns[r->last_conn].id,
                         (unsigned long long)s->steps[r->last_step].seq);
                arm_us(r->timer, &r->timer_step, r->next, (r->last_ns + gap - now) / 1000);
                return false;
            }
            r->last_noop = r->c[st->conn].st == RC_DONE; /* it ended earlier than recorded */
            client_step(r, st);
            r->last_conn = st->conn;
            r->last_step = r->next;
            r->last_ns = wsrr_now_ns();
            /* the next step, on another connection, will wait for the
             * server to have read this one */
            const struct rp_step *nx = r->next + 1 < s->nsteps ? st + 1 : NULL;
            if (r->o->barrier && nx && !server_step(nx->kind) && nx->conn != st->conn &&
                !nx->burst && !st->burst && st->kind == RP_SEND)
                barrier(&r->c[st->conn], r->next);
        } else {
            r->last_conn = SIZE_MAX; /* a server step in between orders them */
        }
        r->next++;
    }
    return true;
}

/* asap and recorded: each connection on its own. Its client steps go at
 * once (or when due); it waits for the server only at its end, for the
 * server steps after its last data frame (the answers, the close), so that
 * a session does not degenerate into open-send-close. Returns true when the
 * connection's steps are done. */
static bool advance_conn(struct run *r, struct rconn *c)
{
    const struct rp_session *s = r->s;
    while (c->cur < c->nsteps) {
        size_t i = c->steps[c->cur];
        const struct rp_step *st = &s->steps[i];
        if (server_step(st->kind)) {
            if (c->cur > c->last_send && !happened(r, st)) {
                arm(c->timer, &c->timer_step, i, wait_ms(r, i));
                return false;
            }
            c->cur++;
            continue;
        }
        if (st->pause_us && c->paused != i + 1) {
            arm_us(c->timer, &c->timer_step, i, st->pause_us);
            return false;
        }
        if (r->o->timing == RP_RECORDED) {
            uint64_t due = (uint64_t)((double)(st->ts - s->steps[0].ts) / r->o->speed / 1e6);
            uint64_t now = (wsrr_now_ns() - r->t0) / 1000000;
            if (now < due) {
                arm(c->timer, &c->timer_step, i, due - now);
                return false;
            }
        }
        client_step(r, st);
        c->cur++;
    }
    return true;
}

static void finish_if_done(struct run *r)
{
    for (size_t i = 0; i < r->s->nconns; i++)
        if (r->c[i].st != RC_DONE && r->c[i].st != RC_IDLE)
            return;
    event_base_loopexit(r->base, NULL);
}

static void advance(struct run *r)
{
    /* a step can end a connection at once (a failed synchronous lookup),
     * whose callback asks for advance() again: run the loop once more
     * instead of inside itself */
    if (r->advancing) {
        r->again = true;
        return;
    }
    r->advancing = true;
    do {
        r->again = false;
        advance_once(r);
    } while (r->again);
    r->advancing = false;
}

static void advance_once(struct run *r)
{
    bool done = true;
    if (r->o->timing == RP_CAUSAL)
        done = advance_causal(r);
    else
        for (size_t i = 0; i < r->s->nconns; i++)
            done = advance_conn(r, &r->c[i]) && done;
    if (!done)
        return;
    if (!r->draining) {
        /* every step done: what is still open is closed as a client does,
         * and gets the timeout to end */
        r->draining = true;
        for (size_t i = 0; i < r->s->nconns; i++)
            if (r->c[i].st != RC_IDLE && r->c[i].st != RC_DONE && !r->c[i].close_sent &&
                !r->c[i].hangup)
                send_close(&r->c[i], 1000, (const uint8_t *)"replay done", 11);
        arm(r->timer, &r->timer_step, SIZE_MAX, r->o->timeout_ms);
    }
    finish_if_done(r);
}

/* the run's timer: causal's wait, pause or gap, or the end */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    (void)fd;
    (void)what;
    if (r->timer_step == SIZE_MAX) { /* the end: what is still open stays "open" */
        event_base_loopexit(r->base, NULL);
        return;
    }
    const struct rp_step *st = &r->s->steps[r->timer_step];
    if (r->timer_step == r->next && server_step(st->kind) && !happened(r, st))
        wait_expired(r, st);
    else if (r->timer_step == r->next && !server_step(st->kind) && st->pause_us)
        r->paused = r->next + 1;
    advance(r);
}

/* a connection's timer (asap, recorded): a step due, or a wait at its end */
static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    struct rconn *c = arg;
    (void)fd;
    (void)what;
    if (c->cur < c->nsteps && c->steps[c->cur] == c->timer_step) {
        const struct rp_step *st = &c->run->s->steps[c->timer_step];
        if (server_step(st->kind) && !happened(c->run, st))
            wait_expired(c->run, st);
        else if (!server_step(st->kind) && st->pause_us)
            c->paused = c->timer_step + 1;
    }
    advance(c->run);
}

/* An event loop whose timers keep microseconds (timerfd with epoll): a
 * --gap of 2 ms, a fuzz pause of 100 us, are not rounded up to whole
 * milliseconds of epoll_wait and its slack. */
static struct event_base *new_base(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *b = NULL;
    if (cfg && event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER) == 0)
        b = event_base_new_with_config(cfg);
    if (cfg)
        event_config_free(cfg);
    return b ? b : event_base_new();
}

static int parse_target(struct run *r, const char *url, char *err, size_t errlen)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    if (!scheme || !host || (strcasecmp(scheme, "ws") && strcasecmp(scheme, "wss"))) {
        snprintf(err, errlen, "--target %s: expected ws://HOST:PORT[/PATH] or wss://...", url);
        evhttp_uri_free(u);
        return -1;
    }
    r->tls = !strcasecmp(scheme, "wss");
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : r->tls ? 443 : 80;
    bool v6 = strchr(host, ':') != NULL;
    snprintf(r->hostport, sizeof(r->hostport), v6 ? "[%s]:%d" : "%s:%d", host, r->port);
    const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
    if (path && *path && strcmp(path, "/") != 0)
        snprintf(r->path, sizeof(r->path), "%s%s%s", path, query ? "?" : "", query ? query : "");
    evhttp_uri_free(u);
    return 0;
}

int rp_check_target(const char *url, char *err, size_t errlen)
{
    struct run r = {0};
    return parse_target(&r, url, err, errlen);
}

int rp_run(const struct rp_session *s, const struct rp_opts *o, struct rp_result *res, char *err,
           size_t errlen)
{
    struct run r = {.s = s,
                    .o = o,
                    .res = res,
                    .timer_step = SIZE_MAX,
                    .last_conn = SIZE_MAX,
                    .last_step = SIZE_MAX,
                    .t0 = wsrr_now_ns()};
    memset(res, 0, sizeof(*res));
    if (parse_target(&r, o->target, err, errlen) < 0)
        return -1;
    res->conns = calloc(s->nconns ? s->nconns : 1, sizeof(*res->conns));
    r.c = calloc(s->nconns ? s->nconns : 1, sizeof(*r.c));
    r.base = new_base();
    r.timer = r.base ? evtimer_new(r.base, on_timer, &r) : NULL;
    if (r.tls)
        r.ctx = wsrr_tls_client_ctx(o->ca_file, o->insecure, NULL, NULL, err, errlen);
    int rc = -1;
    if (!res->conns || !r.c || !r.timer || (r.tls && !r.ctx)) {
        if (!(r.tls && !r.ctx))
            snprintf(err, errlen, "out of memory");
        goto out;
    }
    res->nconns = s->nconns;
    for (size_t i = 0; i < s->nconns; i++) {
        r.c[i].run = &r;
        r.c[i].idx = (uint32_t)i;
        res->conns[i].out.end = RP_END_OPEN;
    }
    /* where each recorded server message is, per connection */
    for (size_t i = 0; i < s->nsteps; i++)
        if (s->steps[i].kind == RP_MESSAGE)
            r.c[s->steps[i].conn].nexpect++;
    for (size_t i = 0; i < s->nconns; i++)
        if (r.c[i].nexpect && !(r.c[i].expect = calloc(r.c[i].nexpect, sizeof(uint32_t)))) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    for (size_t i = 0; i < s->nsteps; i++)
        if (s->steps[i].kind == RP_MESSAGE)
            r.c[s->steps[i].conn].expect[s->steps[i].nth - 1] = (uint32_t)i;
    if (o->timing != RP_CAUSAL) {
        for (size_t i = 0; i < s->nsteps; i++)
            r.c[s->steps[i].conn].nsteps++;
        for (size_t i = 0; i < s->nconns; i++) {
            struct rconn *c = &r.c[i];
            c->timer_step = SIZE_MAX;
            c->steps = calloc(c->nsteps ? c->nsteps : 1, sizeof(size_t));
            c->timer = evtimer_new(r.base, on_conn_timer, c);
            if (!c->steps || !c->timer) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
            c->nsteps = 0;
        }
        for (size_t i = 0; i < s->nsteps; i++) {
            struct rconn *c = &r.c[s->steps[i].conn];
            const struct rp_step *st = &s->steps[i];
            if (st->kind == RP_SEND && st->opcode != WSRR_OP_CLOSE)
                c->last_send = c->nsteps;
            c->steps[c->nsteps++] = i;
        }
    }
    uint8_t u[16];
    if (RAND_bytes(u, sizeof(u)) != 1)
        memset(u, 0x5a, sizeof(u));
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    snprintf(r.uuid, sizeof(r.uuid),
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
    advance(&r);
    event_base_dispatch(r.base);
    rc = 0;
out:
    for (size_t i = 0; r.c && i < s->nconns; i++) {
        struct rconn *c = &r.c[i];
        if (c->st != RC_IDLE && c->st != RC_DONE)
            res->conns[i].out.messages = c->received;
        if (c->st != RC_IDLE && c->st != RC_DONE)
            conn_done(c); /* still open at the end: its records are finished */
        if (c->bev)
            bufferevent_free(c->bev);
        rp_reader_free(&c->rd);
        if (c->pending)
            evbuffer_free(c->pending);
        if (c->st != RC_IDLE)
            wsrr_http_parser_finish(&c->hp);
        free(c->expect);
        free(c->steps);
        if (c->timer)
            event_free(c->timer);
    }
    free(r.c);
    if (r.timer)
        event_free(r.timer);
    SSL_CTX_free(r.ctx);
    if (r.base)
        event_base_free(r.base);
    if (rc < 0)
        rp_result_free(res);
    return rc;
}

void rp_result_free(struct rp_result *res)
{
    free(res->conns);
    res->conns = NULL;
    res->nconns = 0;
}

bool rp_result_reproduced(const struct rp_session *s, const struct rp_result *res, char *why,
                          size_t cap)
{
    size_t failures = 0;
    for (size_t i = 0; i < s->nconns && i < res->nconns; i++) {
        const struct rp_outcome *want = &s->conns[i].rec, *got = &res->conns[i].out;
        if (!rp_outcome_failed(want))
            continue;
        failures++;
        bool same = want->end == got->end && want->messages == got->messages &&
                    (want->end != RP_END_CLOSED ||
                     (want->code == got->code && want->by_server == got->by_server)) &&
                    (want->end != RP_END_REJECTED || want->status == got->status);
        if (!same) {
            char a[200], b[200];
            rp_outcome_describe(want, a, sizeof(a));
            rp_outcome_describe(got, b, sizeof(b));
            snprintf(why, cap, "connection %u: recorded %s; this run %s", s->conns[i].id, a, b);
            return false;
        }
    }
    if (!failures) {
        snprintf(why, cap, "the capture records no failure to reproduce");
        return false;
    }
    snprintf(why, cap, "%zu recorded failure%s came back", failures, failures == 1 ? "" : "s");
    return true;
}
