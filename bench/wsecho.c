/* wsecho.c — a WebSocket echo backend for the benchmarks.
 *
 * One thread, one libevent loop, raw non-blocking sockets. Every connection
 * is read into one shared buffer (the frame parser is incremental and keeps
 * no bytes, so nothing has to stay behind between reads), the Upgrade is
 * answered with our handshake code, and every frame is echoed as it
 * arrives: data frames with the same opcode, FIN and RSV bits, unmasked;
 * a ping becomes a pong; a close is echoed and the connection ends once it
 * is written; pongs are dropped. Output waits in an evbuffer per
 * connection, and reading pauses while more than OUT_CAP bytes wait.
 *
 * permessage-deflate: accepted only when the offer is symmetric (the same
 * no_context_takeover and window bits both ways), because the compressed
 * payloads are echoed as they came: the client's inflater then sees exactly
 * the byte stream the client's deflater produced, which it can always
 * inflate. No zlib runs here.
 *
 * usage: wsecho [--listen HOST:PORT] [--max-time SEC]
 * Prints "wsecho listening on HOST:PORT" on stdout once it accepts, and a
 * summary on stderr when it ends (SIGINT/SIGTERM or --max-time).
 */
#include "wsrr/deflate.h"
#include "wsrr/frame.h"
#include "wsrr/handshake.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* A send or recv that would block or was interrupted: try again later. */
#define retriable(e) ((e) == EAGAIN || (e) == EWOULDBLOCK || (e) == EINTR)

#define RBUF_SIZE (256 * 1024)
#define OUT_CAP   ((size_t)4 << 20) /* echo output waiting before reading pauses */

struct server {
    struct event_base *base;
    struct evconnlistener *lis;
    uint8_t *rbuf; /* shared by all connections: see the top comment */
    uint64_t accepted, active, frames, bytes_in;
};

struct conn {
    struct server *s;
    evutil_socket_t fd;
    struct event *rev, *wev;
    struct evbuffer *out;
    struct wsrr_http_parser *hp; /* the request head; freed after the upgrade */
    struct wsrr_frame_parser fp;
    bool websocket;
    bool closing;     /* close once out is empty */
    bool read_paused; /* out over OUT_CAP */
    bool echo_frame;  /* the current frame's payload is echoed (not a pong) */
};

static void conn_free(struct conn *c)
{
    c->s->active--;
    event_free(c->rev);
    event_free(c->wev);
    evutil_closesocket(c->fd);
    evbuffer_free(c->out);
    if (c->hp) {
        wsrr_http_parser_finish(c->hp);
        free(c->hp);
    }
    free(c);
}

/* Write what is waiting. Returns false when the connection was freed. */
static bool flush(struct conn *c)
{
    size_t left = evbuffer_get_length(c->out);
    if (left) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0 && !retriable(errno)) {
            conn_free(c);
            return false;
        }
        left = evbuffer_get_length(c->out);
    }
    if (!left && c->closing) {
        conn_free(c);
        return false;
    }
    if (left) {
        event_add(c->wev, NULL);
        if (left > OUT_CAP && !c->read_paused) {
            event_del(c->rev);
            c->read_paused = true;
        }
    } else {
        event_del(c->wev);
        if (c->read_paused && !c->closing) {
            event_add(c->rev, NULL);
            c->read_paused = false;
        }
    }
    return true;
}

/* Accept permessage-deflate when the first valid offer is symmetric;
 * writes the answer into ext and returns true. */
static bool negotiate_deflate(const struct wsrr_ws_info *info, char *ext, size_t cap)
{
    if (!info->extensions)
        return false;
    struct wsrr_ext exts[8];
    struct wsrr_ext_param params[32];
    struct wsrr_pmd_params a;
    char err[160];
    int n = wsrr_ext_parse(info->extensions, info->extensions_len, exts, 8, params, 32, err,
                           sizeof(err));
    if (n <= 0 || wsrr_pmd_negotiate(exts, (size_t)n, &a) != 1)
        return false;
    if (a.client_no_context_takeover != a.server_no_context_takeover ||
        a.client_max_window_bits != a.server_max_window_bits)
        return false;
    wsrr_pmd_params_format(&a, true, ext, cap);
    return true;
}

static void echo_frames(struct conn *c, const uint8_t *data, size_t n);

/* The request head. Returns false when the connection was freed. */
static bool handshake(struct conn *c, const uint8_t *data, size_t n)
{
    ssize_t k = wsrr_http_parse(c->hp, data, n);
    if (k == WSRR_AGAIN)
        return true;
    if (k < 0) {
        wsrr_http_build_error(c->out, 400, wsrr_http_parser_error(c->hp));
        c->closing = true;
        return flush(c);
    }
    const struct wsrr_http_head *h = wsrr_http_parser_head(c->hp);
    struct wsrr_ws_info info;
    char why[200];
    int status = wsrr_handshake_check_request(h, &info, why, sizeof(why));
    if (status) {
        wsrr_http_build_error(c->out, status, why);
        c->closing = true;
        return flush(c);
    }
    char ext[128];
    bool deflate = negotiate_deflate(&info, ext, sizeof(ext));
    wsrr_handshake_build_response(c->out, info.key, info.key_len, NULL, deflate ? ext : NULL, NULL);
    wsrr_http_parser_finish(c->hp);
    free(c->hp);
    c->hp = NULL;
    c->websocket = true;
    wsrr_frame_parser_init(&c->fp, WSRR_DIR_C2S, NULL);
    c->fp.validate_utf8 = false; /* an echo has no use for it */
    if (deflate)
        c->fp.rsv_allowed = WSRR_RSV1;
    echo_frames(c, data + k, n - (size_t)k); /* frames sent along with the request */
    return flush(c);
}

/* Echo the frames in data[0..n): headers re-encoded unmasked, payloads
 * unmasked straight into the output buffer. */
static void echo_frames(struct conn *c, const uint8_t *data, size_t n)
{
    while (!c->closing) {
        struct wsrr_frame_event ev;
        ssize_t k = wsrr_frame_parse(&c->fp, data, n, &ev);
        if (k < 0) {
            c->closing = true; /* over a size cap: give up on this peer */
            return;
        }
        data += k;
        n -= (size_t)k;
        if (ev.type == WSRR_FRAME_NEED_MORE)
            return;
        const struct wsrr_frame *f = ev.frame;
        if (ev.type == WSRR_FRAME_HEADER) {
            c->echo_frame = f->opcode != WSRR_OP_PONG;
            if (!c->echo_frame)
                continue;
            struct wsrr_frame o = {
                .fin = f->fin,
                .rsv = f->rsv,
                .opcode = f->opcode == WSRR_OP_PING ? WSRR_OP_PONG : f->opcode,
                .len = f->len,
            };
            uint8_t hdr[WSRR_FRAME_MAX_HEADER];
            evbuffer_add(c->out, hdr, wsrr_frame_encode_header(hdr, &o));
        } else if (ev.type == WSRR_FRAME_PAYLOAD) {
            if (!c->echo_frame)
                continue;
            struct evbuffer_iovec v;
            if (evbuffer_reserve_space(c->out, (ev_ssize_t)ev.len, &v, 1) < 1) {
                c->closing = true;
                return;
            }
            if (f->masked)
                wsrr_frame_mask(v.iov_base, ev.data, ev.len, f->mask, ev.offset);
            else
                memcpy(v.iov_base, ev.data, ev.len);
            v.iov_len = ev.len;
            evbuffer_commit_space(c->out, &v, 1);
        } else { /* END */
            c->s->frames++;
            if (f->opcode == WSRR_OP_CLOSE)
                c->closing = true; /* echoed; the connection ends once it is out */
        }
    }
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    ssize_t n = recv(fd, c->s->rbuf, RBUF_SIZE, 0);
    if (n <= 0) {
        if (n < 0 && retriable(errno))
            return;
        conn_free(c); /* EOF or error: whatever was not written is moot */
        return;
    }
    c->s->bytes_in += (uint64_t)n;
    if (c->closing)
        return; /* an answer is on its way out: what follows is moot */
    if (!c->websocket) {
        handshake(c, c->s->rbuf, (size_t)n);
        return;
    }
    echo_frames(c, c->s->rbuf, (size_t)n);
    if (c->closing)
        event_del(c->rev);
    flush(c);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    flush(arg);
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct server *s = arg;
    struct conn *c = calloc(1, sizeof(*c));
    if (c) {
        c->hp = malloc(sizeof(*c->hp));
        c->out = evbuffer_new();
        c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, read_cb, c);
        c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, write_cb, c);
    }
    if (!c || !c->hp || !c->out || !c->rev || !c->wev) {
        if (c) {
            free(c->hp);
            if (c->out)
                evbuffer_free(c->out);
            if (c->rev)
                event_free(c->rev);
            if (c->wev)
                event_free(c->wev);
            free(c);
        }
        evutil_closesocket(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->s = s;
    c->fd = fd;
    wsrr_http_parser_init(c->hp, false, 0, 0);
    s->accepted++;
    s->active++;
    event_add(c->rev, NULL);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: wsecho [--listen HOST:PORT] [--max-time SEC]\n"
               "A WebSocket echo backend for the benchmarks (default 127.0.0.1:0, any free\n"
               "port; it ends by itself after --max-time seconds, default 1200).\n");
}

int main(int argc, char **argv)
{
    const char *listen_at = "127.0.0.1:0";
    double max_time = 1200;
    static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
                                         {"max-time", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (o) {
        case 'l': listen_at = optarg; break;
        case 't': max_time = atof(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (max_time <= 0) {
        fprintf(stderr, "wsecho: --max-time must be positive\n");
        return 2;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);

    /* evutil_parse_sockaddr_port refuses port 0: parse with 1, put 0 back */
    char addr[256];
    snprintf(addr, sizeof(addr), "%s", listen_at);
    size_t al = strlen(addr);
    bool any = al > 2 && strcmp(addr + al - 2, ":0") == 0;
    if (any)
        addr[al - 1] = '1';
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0) {
        fprintf(stderr, "wsecho: --listen %s: expected HOST:PORT\n", listen_at);
        return 2;
    }
    if (any) {
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
        else
            ((struct sockaddr_in *)&ss)->sin_port = 0;
    }

    struct server s = {0};
    s.base = event_base_new();
    s.rbuf = malloc(RBUF_SIZE);
    if (!s.base || !s.rbuf) {
        fprintf(stderr, "wsecho: out of memory\n");
        return 1;
    }
    s.lis = evconnlistener_new_bind(
        s.base, accept_cb, &s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
        -1, (struct sockaddr *)&ss, sslen);
    if (!s.lis) {
        fprintf(stderr, "wsecho: --listen %s: %s\n", listen_at,
                evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return 1;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    getsockname(evconnlistener_get_fd(s.lis), (struct sockaddr *)&bound, &blen);
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (bound.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&bound;
        evutil_inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
        printf("wsecho listening on [%s]:%d\n", host, port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&bound;
        evutil_inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
        printf("wsecho listening on %s:%d\n", host, port);
    }
    fflush(stdout);

    struct event *sigint = evsignal_new(s.base, SIGINT, stop_cb, s.base);
    struct event *sigterm = evsignal_new(s.base, SIGTERM, stop_cb, s.base);
    struct event *timer = evtimer_new(s.base, stop_cb, s.base);
    struct timeval tv = {(time_t)max_time,
                         (suseconds_t)((max_time - (double)(time_t)max_time) * 1e6)};
    evsignal_add(sigint, NULL);
    evsignal_add(sigterm, NULL);
    evtimer_add(timer, &tv);
    event_base_dispatch(s.base);

    fprintf(stderr,
            "wsecho: %llu connections (%llu open at exit), %llu frames echoed, %llu bytes in\n",
            (unsigned long long)s.accepted, (unsigned long long)s.active,
            (unsigned long long)s.frames, (unsigned long long)s.bytes_in);
    /* open connections are simply dropped with the process */
    evconnlistener_free(s.lis);
    event_free(sigint);
    event_free(sigterm);
    event_free(timer);
    free(s.rbuf);
    return 0;
}
