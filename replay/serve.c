/* serve.c — the server's side of a session, played to a live client
 * (serve.h). */
#include "serve.h"

#include "wsrr/common.h"
#include "wsrr/frame.h"
#include "wsrr/handshake.h"
#include "wsrr/tls.h"
#include "wire.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A recorded client message, whole, and where it ends in the steps. */
struct cmsg {
    uint8_t opcode;
    uint8_t *data;
    size_t len;
};

/* A recorded connection as serve plays it. */
struct rec {
    bool used;
    char *path;    /* the request target as recorded */
    size_t *steps; /* indexes into session.steps */
    size_t nsteps;
    uint32_t *need;    /* per step: client messages that came before it */
    bool *need_close;  /* per step: the client's close came before it */
    struct cmsg *msgs; /* the client's messages, whole */
    uint32_t nmsgs;
    bool client_first; /* the client spoke before the server's first message */
};

enum sc_state { SC_HEAD, SC_OPEN, SC_DONE };
enum sc_ending { END_NONE, END_FIN, END_RST };

struct sconn {
    struct sv_server *sv;
    uint32_t id;
    enum sc_state st;
    struct bufferevent *bev;
    struct wsrr_http_parser hp;
    struct rp_reader rd; /* the client's frames and messages */
    int rec;             /* index of the recorded connection, -1 until bound */
    bool bind_later;     /* bound at the client's first message */
    char *target;
    size_t cur;   /* next step of the recorded connection */
    uint32_t got; /* client messages received */
    bool close_sent, close_rcvd, unexpected;
    enum sc_ending ending; /* once the output is written */
    struct event *timer;
    bool warned;
    struct sconn *next;
};

struct sv_server {
    const struct rp_session *s;
    const struct sv_opts *o;
    struct event_base *base;
    struct evconnlistener *lis;
    SSL_CTX *ctx;
    struct wsrr_ca *ca;
    struct rec *recs;
    struct sconn *conns;
    uint32_t next_id;
    unsigned ended, unexpected;
    char addr[80];
};

static void on_event(struct bufferevent *bev, short what, void *arg);
static int fits(struct sv_server *sv, size_t i, const char *target);
static void slog(struct sv_server *sv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void slog(struct sv_server *sv, const char *fmt, ...)
{
    if (!sv->o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(sv->o->log, "wsrr serve: ");
    vfprintf(sv->o->log, fmt, ap);
    fputc('\n', sv->o->log);
    va_end(ap);
    fflush(sv->o->log);
}

static uint32_t rec_id(struct sconn *c)
{
    return c->rec >= 0 ? c->sv->s->conns[c->rec].id : 0;
}

static void conn_end(struct sconn *c, const char *how)
{
    if (c->st == SC_DONE)
        return;
    struct sv_server *sv = c->sv;
    c->st = SC_DONE;
    if (c->rec >= 0) {
        const struct rec *r = &sv->recs[c->rec];
        slog(sv, "connection %u (recorded %u, %s): %s; %zu of %zu recorded steps played%s", c->id,
             rec_id(c), c->target ? c->target : "?", how, c->cur, r->nsteps,
             c->unexpected ? "; the client said something else than recorded" : "");
    } else {
        slog(sv, "connection %u (%s): %s", c->id, c->target ? c->target : "no request", how);
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->timer)
        evtimer_del(c->timer);
    if (sv->o->exit_after && ++sv->ended >= sv->o->exit_after)
        event_base_loopexit(sv->base, NULL);
}

/* ---- sending ---- */

static void send_frame(struct sconn *c, uint8_t opcode, const uint8_t *p, size_t n)
{
    rp_frame_append(bufferevent_get_output(c->bev), WSRR_DIR_S2C, opcode, true, p, n, NULL);
    if (opcode == WSRR_OP_CLOSE)
        c->close_sent = true;
}

static void send_close(struct sconn *c, uint16_t code, const uint8_t *reason, size_t rlen)
{
    rp_close_append(bufferevent_get_output(c->bev), WSRR_DIR_S2C, code, (const char *)reason, rlen,
                    NULL);
    c->close_sent = true;
}

/* The output is written: the ending waiting for it (a close, the end of
 * the transport, a reset) happens. */
static void on_written(struct bufferevent *bev, void *arg)
{
    struct sconn *c = arg;
    if (c->ending == END_NONE || evbuffer_get_length(bufferevent_get_output(bev)))
        return;
    if (c->ending == END_RST) { /* close() then sends an RST */
        struct linger lg = {1, 0};
        evutil_socket_t fd = bufferevent_getfd(bev);
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        conn_end(c, "reset as recorded");
    } else {
        conn_end(c, c->close_sent ? "closed as recorded" : "transport ended as recorded");
    }
}

/* End the connection once what is queued has been written; reading stops,
 * errors are still reported (on_event). */
static void end_after_output(struct sconn *c, enum sc_ending how)
{
    c->ending = how;
    bufferevent_setcb(c->bev, NULL, on_written, on_event, c);
    on_written(c->bev, c);
}

/* ---- the recorded server steps ---- */

static void on_wait_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sconn *c = arg;
    (void)fd;
    (void)what;
    const struct rec *r = &c->sv->recs[c->rec];
    if (c->st == SC_OPEN && c->cur < r->nsteps && !c->warned) {
        c->warned = true;
        slog(c->sv,
             "connection %u (recorded %u): still waiting for client message %u after %llu ms "
             "(%u came)",
             c->id, rec_id(c), r->need[c->cur], (unsigned long long)c->sv->o->timeout_ms, c->got);
    }
}

/* Play the server steps whose client steps have arrived. */
static void play(struct sconn *c)
{
    struct sv_server *sv = c->sv;
    if (c->rec < 0 || c->st != SC_OPEN)
        return;
    const struct rec *r = &sv->recs[c->rec];
    while (c->st == SC_OPEN && c->cur < r->nsteps) {
        const struct rp_step *st = &sv->s->steps[r->steps[c->cur]];
        bool server = st->kind == RP_MESSAGE || st->kind == RP_CLOSE || st->kind == RP_END;
        if (!server) {
            c->cur++;
            continue;
        }
        if (c->got < r->need[c->cur] || (r->need_close[c->cur] && !c->close_rcvd)) {
            struct timeval tv = {(time_t)(sv->o->timeout_ms / 1000),
                                 (suseconds_t)(sv->o->timeout_ms % 1000) * 1000};
            if (!c->warned)
                evtimer_add(c->timer, &tv);
            return;
        }
        c->cur++;
        c->warned = false;
        if (st->kind == RP_MESSAGE) {
            send_frame(c, st->opcode, st->data, st->len);
        } else if (st->kind == RP_CLOSE) {
            if (!c->close_sent)
                send_close(c, st->code, st->data, st->len);
        } else { /* the end of the transport or a reset, once what is queued is written */
            end_after_output(c, st->rst ? END_RST : END_FIN);
            return;
        }
    }
}

/* ---- matching a connection to a recorded one ---- */

static bool same_path(const char *a, const char *b)
{
    size_t la = strcspn(a, "?"), lb = strcspn(b, "?");
    return la == lb && !memcmp(a, b, la);
}

/* The recorded connection this request plays: the first unused with the
 * same target, else the same path; -1 when none. *several: more than one
 * fits. */
static int candidate(struct sv_server *sv, const char *target, bool *several)
{
    int best = -1, count = 0;
    for (int want = 2; want >= 1; want--)
        for (size_t i = 0; i < sv->s->nconns; i++)
            if (fits(sv, i, target) == want) {
                count++;
                if (best < 0)
                    best = (int)i;
            }
    if (several)
        *several = count > 1;
    return best;
}

static void bind_to(struct sconn *c, int ri)
{
    c->rec = ri;
    c->sv->recs[ri].used = true;
    c->bind_later = false;
    slog(c->sv, "connection %u plays recorded connection %u (%s)", c->id, rec_id(c), c->target);
}

/* Does recorded connection i fit this target: 2 the same target, 1 the
 * same path, 0 no (or already played)? */
static int fits(struct sv_server *sv, size_t i, const char *target)
{
    const struct rec *r = &sv->recs[i];
    if (r->used || !r->path)
        return 0;
    return !strcmp(r->path, target) ? 2 : same_path(r->path, target) ? 1 : 0;
}

/* The client's first message decides between recorded connections of the
 * same target (then path): the first whose first client message it is,
 * else the first that fits. */
static void bind_by_message(struct sconn *c, const uint8_t *p, size_t n)
{
    struct sv_server *sv = c->sv;
    int first = -1;
    for (int want = 2; want >= 1; want--)
        for (size_t i = 0; i < sv->s->nconns; i++) {
            const struct rec *r = &sv->recs[i];
            if (fits(sv, i, c->target) != want)
                continue;
            if (first < 0)
                first = (int)i;
            if (r->nmsgs && rp_same_message(sv->o->ignore, sv->o->nignore, r->msgs[0].opcode,
                                            r->msgs[0].data, r->msgs[0].len, c->rd.msg_op, p, n)) {
                bind_to(c, (int)i);
                return;
            }
        }
    if (first >= 0)
        bind_to(c, first);
}

/* ---- receiving ---- */

static void on_client_message(struct sconn *c, const uint8_t *p, size_t n)
{
    struct sv_server *sv = c->sv;
    if (c->bind_later)
        bind_by_message(c, p, n);
    if (c->rec < 0)
        return;
    const struct rec *r = &sv->recs[c->rec];
    uint32_t k = c->got++;
    bool ok = k < r->nmsgs && rp_same_message(sv->o->ignore, sv->o->nignore, r->msgs[k].opcode,
                                              r->msgs[k].data, r->msgs[k].len, c->rd.msg_op, p, n);
    if (!ok) {
        char got[80];
        size_t m = 0;
        for (size_t i = 0; i < n && m + 4 < sizeof(got); i++)
            got[m++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
        got[m] = '\0';
        c->unexpected = true;
        sv->unexpected++;
        slog(sv, "connection %u (recorded %u): client message %u is not the recorded one: %s%s",
             c->id, rec_id(c), k + 1, got, m < n ? "..." : "");
        if (sv->o->strict) {
            send_close(c, 1008, (const uint8_t *)"not the recorded message", 24);
            c->cur = r->nsteps; /* nothing more of the recording */
            end_after_output(c, END_FIN);
            return;
        }
    }
    play(c);
}

static void on_frame_end(struct sconn *c, const struct wsrr_frame_event *ev)
{
    const struct wsrr_frame *f = ev->frame;
    if (f->opcode == WSRR_OP_PING) {
        send_frame(c, WSRR_OP_PONG, ev->data, ev->len);
    } else if (f->opcode == WSRR_OP_CLOSE) {
        c->close_rcvd = true;
        play(c); /* a recorded close that answered the client's goes now */
        if (c->st == SC_OPEN && !c->close_sent) {
            send_close(c, f->close_code, NULL, 0);
            end_after_output(c, END_FIN);
        }
    } else if (f->opcode < 8 && f->msg_final) {
        size_t n = evbuffer_get_length(c->rd.msg);
        on_client_message(c, n ? evbuffer_pullup(c->rd.msg, -1) : NULL, n);
        evbuffer_drain(c->rd.msg, n);
    }
}

static bool frame_end(void *arg, struct rp_reader *rd, const struct wsrr_frame_event *ev)
{
    struct sconn *c = arg;
    (void)rd;
    on_frame_end(c, ev);
    return c->st == SC_OPEN;
}

static void read_frames(struct sconn *c, struct evbuffer *in)
{
    if (c->st == SC_OPEN && rp_reader_feed(&c->rd, in, frame_end, c) < 0)
        conn_end(c, wsrr_frame_parser_error(&c->rd.fp));
}

/* The request head is complete: answer it as recorded. */
static void on_request(struct sconn *c, const struct wsrr_http_head *h)
{
    struct sv_server *sv = c->sv;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    c->target = strndup(h->target, h->target_len);
    struct wsrr_ws_info info;
    char why[200];
    int bad = wsrr_handshake_check_request(h, &info, why, sizeof(why));
    bool several = false;
    int ri = c->target ? candidate(sv, c->target, &several) : -1;
    if (bad || ri < 0) {
        if (!bad)
            snprintf(why, sizeof(why), "no recorded connection (left) for %s",
                     c->target ? c->target : "?");
        wsrr_http_build_error(out, bad ? bad : 404, why);
        slog(sv, "connection %u: answered %d: %s", c->id, bad ? bad : 404, why);
        c->st = SC_OPEN; /* the answer goes, then the end */
        end_after_output(c, END_FIN);
        return;
    }
    const struct rec *r = &sv->recs[ri];
    /* the recorded answer: its status and subprotocol */
    const struct rp_conn *rc = &sv->s->conns[ri];
    int status = 101;
    char *proto = NULL;
    if (rc->response) {
        struct wsrr_http_parser hp;
        wsrr_http_parser_init(&hp, true, 0, 0);
        if (wsrr_http_parse(&hp, (const uint8_t *)rc->response, strlen(rc->response)) > 0) {
            const struct wsrr_http_head *rh = wsrr_http_parser_head(&hp);
            const struct wsrr_http_field *pf = wsrr_http_find(rh, "Sec-WebSocket-Protocol", NULL);
            status = rh->status;
            if (pf)
                proto = strndup(pf->value, pf->value_len);
        }
        wsrr_http_parser_finish(&hp);
    }
    if (status != 101) {
        bind_to(c, ri);
        wsrr_http_build_error(out, status, "rejected as recorded");
        free(proto);
        c->st = SC_OPEN;
        c->cur = r->nsteps;
        end_after_output(c, END_FIN);
        return;
    }
    wsrr_handshake_build_response(out, info.key, info.key_len, proto, NULL, NULL);
    free(proto);
    c->st = SC_OPEN;
    /* several recorded connections of this path whose client speaks
     * first: its first message says which one this is */
    if (r->client_first && several)
        c->bind_later = true;
    else
        bind_to(c, ri);
    play(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->st == SC_HEAD) {
        size_t n = evbuffer_get_length(in);
        ssize_t k = wsrr_http_parse(&c->hp, evbuffer_pullup(in, -1), n);
        if (k < 0) {
            conn_end(c, wsrr_http_parser_error(&c->hp));
            return;
        }
        if (k == WSRR_AGAIN) {
            evbuffer_drain(in, n);
            return;
        }
        evbuffer_drain(in, (size_t)k);
        on_request(c, wsrr_http_parser_head(&c->hp));
        if (c->st != SC_OPEN)
            return;
    }
    if (c->rec >= 0 || c->bind_later)
        read_frames(c, in);
    else
        evbuffer_drain(in, evbuffer_get_length(in));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct sconn *c = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (c->st == SC_OPEN && (what & BEV_EVENT_EOF))
        read_frames(c, bufferevent_get_input(c->bev));
    conn_end(c, c->close_rcvd          ? "the client closed"
                : what & BEV_EVENT_EOF ? "the client's transport ended (no close frame)"
                                       : "a transport error");
}

static void conn_free(struct sconn *c)
{
    if (c->bev)
        bufferevent_free(c->bev);
    rp_reader_free(&c->rd);
    if (c->timer)
        event_free(c->timer);
    wsrr_http_parser_finish(&c->hp);
    free(c->target);
    free(c);
}

/* Connections that ended in earlier callbacks: nothing refers to them any
 * more, their memory goes back (a long-running serve does not grow). */
static void sweep(struct sv_server *sv)
{
    for (struct sconn **pp = &sv->conns; *pp;) {
        struct sconn *c = *pp;
        if (c->st == SC_DONE) {
            *pp = c->next;
            conn_free(c);
        } else {
            pp = &c->next;
        }
    }
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct sv_server *sv = arg;
    sweep(sv);
    (void)lis;
    (void)sa;
    (void)salen;
    struct sconn *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->sv = sv;
    c->id = ++sv->next_id;
    int one = 1; /* replies go when they are written, as the backend's would */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->rec = -1;
    bool reader = rp_reader_init(&c->rd, WSRR_DIR_C2S);
    c->timer = evtimer_new(sv->base, on_wait_timer, c);
    if (sv->ctx) {
        SSL *ssl = SSL_new(sv->ctx);
        c->bev = ssl ? bufferevent_openssl_socket_new(sv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                      BEV_OPT_CLOSE_ON_FREE)
                     : NULL;
    } else {
        c->bev = bufferevent_socket_new(sv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->next = sv->conns;
    sv->conns = c;
    if (!c->bev || !reader || !c->timer) {
        if (!c->bev)
            evutil_closesocket(fd);
        conn_end(c, "out of memory");
        return;
    }
    wsrr_http_parser_init(&c->hp, false, 0, 0);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- the recordings ---- */

static int prepare(struct sv_server *sv)
{
    const struct rp_session *s = sv->s;
    if (!(sv->recs = calloc(s->nconns ? s->nconns : 1, sizeof(*sv->recs))))
        return -1;
    for (size_t i = 0; i < s->nsteps; i++)
        sv->recs[s->steps[i].conn].nsteps++;
    for (size_t i = 0; i < s->nconns; i++) {
        struct rec *r = &sv->recs[i];
        size_t n = r->nsteps ? r->nsteps : 1;
        r->steps = calloc(n, sizeof(*r->steps));
        r->need = calloc(n, sizeof(*r->need));
        r->need_close = calloc(n, sizeof(*r->need_close));
        r->msgs = calloc(n, sizeof(*r->msgs));
        if (!r->steps || !r->need || !r->need_close || !r->msgs)
            return -1;
        r->nsteps = 0;
        if (s->conns[i].head) {
            struct wsrr_http_parser hp;
            wsrr_http_parser_init(&hp, false, 0, 0);
            if (wsrr_http_parse(&hp, (const uint8_t *)s->conns[i].head, s->conns[i].head_len) > 0)
                r->path = strndup(wsrr_http_parser_head(&hp)->target,
                                  wsrr_http_parser_head(&hp)->target_len);
            wsrr_http_parser_finish(&hp);
        }
    }
    /* per connection: its steps, its client messages made whole, and for
     * each step how many of them (and whether the close) came before it */
    bool *in_msg = calloc(s->nconns ? s->nconns : 1, sizeof(bool));
    bool *closed = calloc(s->nconns ? s->nconns : 1, sizeof(bool));
    bool *server_spoke = calloc(s->nconns ? s->nconns : 1, sizeof(bool));
    int rc = in_msg && closed && server_spoke ? 0 : -1;
    for (size_t i = 0; !rc && i < s->nsteps; i++) {
        const struct rp_step *st = &s->steps[i];
        struct rec *r = &sv->recs[st->conn];
        r->need[r->nsteps] = r->nmsgs;
        r->need_close[r->nsteps] = closed[st->conn];
        r->steps[r->nsteps++] = i;
        if (st->kind == RP_MESSAGE)
            server_spoke[st->conn] = true;
        if (st->kind != RP_SEND || st->opcode == WSRR_OP_PING)
            continue;
        if (st->opcode == WSRR_OP_CLOSE) {
            closed[st->conn] = true;
            continue;
        }
        struct cmsg *m = &r->msgs[r->nmsgs];
        if (!in_msg[st->conn]) {
            m->opcode = st->opcode;
            if (!r->nmsgs && !server_spoke[st->conn])
                r->client_first = true;
        }
        uint8_t *d = realloc(m->data, m->len + st->len + 1);
        if (!d) {
            rc = -1;
            break;
        }
        m->data = d;
        if (st->len)
            memcpy(d + m->len, st->data, st->len);
        m->len += st->len;
        in_msg[st->conn] = !st->fin;
        if (st->fin)
            r->nmsgs++;
    }
    free(in_msg);
    free(closed);
    free(server_spoke);
    return rc;
}

/* ---- the server ---- */

struct sv_server *sv_server_new(struct event_base *base, const struct rp_session *s,
                                const struct sv_opts *o, char *err, size_t errlen)
{
    struct sv_server *sv = calloc(1, sizeof(*sv));
    if (!sv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sv->s = s;
    sv->o = o;
    sv->base = base;
    if (prepare(sv) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (o->tls) {
        if (!o->tls_cert) {
            char dir[4096];
            const char *d = o->ca_dir ? o->ca_dir : wsrr_ca_default_dir(dir, sizeof(dir));
            if (!(sv->ca = wsrr_ca_open(d, true, err, errlen)))
                goto fail;
        }
        if (!(sv->ctx =
                  wsrr_tls_server_ctx(o->tls_cert, o->tls_key, sv->ca, "localhost", err, errlen)))
            goto fail;
    }
    /* port 0 ("any free port") is refused by the parser: parse 1, put 0 back */
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char addr[300];
    snprintf(addr, sizeof(addr), "%s", o->listen ? o->listen : "");
    size_t al = strlen(addr);
    bool any = al > 2 && !strcmp(addr + al - 2, ":0");
    if (any)
        addr[al - 1] = '1';
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0) {
        snprintf(err, errlen, "--listen %s: expected HOST:PORT (e.g. 127.0.0.1:8080)",
                 o->listen ? o->listen : "(missing)");
        goto fail;
    }
    if (any) {
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
        else
            ((struct sockaddr_in *)&ss)->sin_port = 0;
    }
    sv->lis = evconnlistener_new_bind(
        base, on_accept, sv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, -1,
        (struct sockaddr *)&ss, sslen);
    if (!sv->lis) {
        snprintf(err, errlen, "--listen %s: %s", o->listen,
                 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof(bound);
    char host[64] = "?";
    int port = 0;
    if (getsockname(evconnlistener_get_fd(sv->lis), (struct sockaddr *)&bound, &bl) == 0) {
        if (bound.ss_family == AF_INET6) {
            evutil_inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, host,
                             sizeof(host));
            port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        } else {
            evutil_inet_ntop(AF_INET, &((struct sockaddr_in *)&bound)->sin_addr, host,
                             sizeof(host));
            port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        }
    }
    snprintf(sv->addr, sizeof(sv->addr), bound.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host,
             port);
    return sv;
fail:
    sv_server_free(sv);
    return NULL;
}

const char *sv_server_address(const struct sv_server *sv)
{
    return sv->addr;
}

unsigned sv_server_unexpected(const struct sv_server *sv)
{
    return sv->unexpected;
}

void sv_server_free(struct sv_server *sv)
{
    if (!sv)
        return;
    if (sv->lis)
        evconnlistener_free(sv->lis);
    while (sv->conns) {
        struct sconn *c = sv->conns;
        sv->conns = c->next;
        conn_free(c);
    }
    for (size_t i = 0; sv->recs && i < sv->s->nconns; i++) {
        struct rec *r = &sv->recs[i];
        for (size_t k = 0; r->msgs && k < r->nsteps; k++)
            free(r->msgs[k].data);
        free(r->msgs);
        free(r->steps);
        free(r->need);
        free(r->need_close);
        free(r->path);
    }
    free(sv->recs);
    SSL_CTX_free(sv->ctx);
    wsrr_ca_free(sv->ca);
    free(sv);
}
