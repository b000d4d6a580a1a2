/* wsload.c — the WebSocket load generator of the benchmarks.
 *
 * One process, one libevent loop, raw non-blocking sockets. Connections are
 * opened with a bounded number of handshakes in flight, upgraded with our
 * handshake code (the 101 is checked as a client must), and then driven in
 * one of three modes:
 *
 *   echo  closed loop: each connection sends a message, waits for its echo,
 *         sends the next; latency is send to echo.
 *   rate  open loop: R messages per second in total, message j due at
 *         t0 + j/R on connection j mod N. Latency is measured from the time
 *         a message was *due*, not from when it could be sent, so a stalled
 *         connection accumulates latency instead of hiding it (coordinated
 *         omission); a message still unanswered when the drain time is over
 *         counts with the latency it had by then, and is reported.
 *   idle  open N connections, say so on stderr ("established K of N") once
 *         every attempt has finished, hold them for --hold seconds, close.
 *
 * Echoes are checked: same opcode, length and payload (a sequence number in
 * the payload catches reordering). Nothing is allocated per message: each
 * connection has one frame-sized output buffer, reads go into one shared
 * buffer (the frame parser is incremental and keeps no bytes), and the
 * latency histogram is log-linear with fixed buckets.
 *
 * Masking keys come from a xorshift generator, not a CSPRNG: the load is
 * ours, and what a proxy does with a frame does not depend on the key.
 */
#include "wsrr/deflate.h"
#include "wsrr/frame.h"
#include "wsrr/handshake.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A send or recv that would block or was interrupted: try again later. */
#define retriable(e) ((e) == EAGAIN || (e) == EWOULDBLOCK || (e) == EINTR)

#define RBUF_SIZE   (256 * 1024)
#define MAX_PIDS    4
#define SEQ_OFF     7 /* {"seq":NNNNNNNNNN,... */
#define SEQ_LEN     10
#define CLOSE_WAIT  2.0 /* seconds for the closing handshakes at the end */
#define MAX_REPORTS 5   /* connection errors written to stderr */

/* ---- latency histogram: log-linear, 1 us .. 68 s, < 0.8% bucket width ---- */

#define H_SUB_BITS 7
#define H_SUB      (1u << H_SUB_BITS) /* linear steps per power of two */
#define H_MIN_EXP  10                 /* below 2^10 ns: 8 ns steps */
#define H_MAX_EXP  36                 /* 2^36 ns = 68.7 s; above is clamped */
#define H_BUCKETS  ((H_MAX_EXP - H_MIN_EXP + 1) * H_SUB)

struct hist {
    uint64_t n, min, max;
    double sum;
    uint64_t b[H_BUCKETS];
};

static size_t hist_index(uint64_t v)
{
    if (v >= (1ull << H_MAX_EXP))
        v = (1ull << H_MAX_EXP) - 1;
    if (v < (1ull << H_MIN_EXP))
        return (size_t)(v >> (H_MIN_EXP - H_SUB_BITS));
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    return (size_t)(e - H_MIN_EXP + 1) * H_SUB + (size_t)((v >> (e - H_SUB_BITS)) & (H_SUB - 1));
}

/* The middle of bucket i, in ns. */
static double hist_value(size_t i)
{
    if (i < H_SUB)
        return (double)(i << (H_MIN_EXP - H_SUB_BITS)) + 4.0;
    unsigned e = (unsigned)(i / H_SUB) - 1 + H_MIN_EXP;
    uint64_t width = 1ull << (e - H_SUB_BITS);
    uint64_t lo = (1ull << e) + (uint64_t)(i % H_SUB) * width;
    return (double)lo + (double)width / 2;
}

static void hist_add(struct hist *h, uint64_t v)
{
    if (!h->n || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
    h->b[hist_index(v)]++;
}

/* The value at quantile q (0..1) in ns, within the bucket's precision and
 * never above the largest value seen. */
static double hist_quantile(const struct hist *h, double q)
{
    if (!h->n)
        return 0;
    uint64_t want = (uint64_t)ceil(q * (double)h->n);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            double v = hist_value(i);
            return v > (double)h->max ? (double)h->max : v < (double)h->min ? (double)h->min : v;
        }
    }
    return (double)h->max;
}

/* ---- state ---- */

enum mode { M_ECHO, M_RATE, M_IDLE };
enum phase { P_CONNECT, P_HOLD, P_RUN, P_DRAIN, P_CLOSE };
enum cstate { C_NEW, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSING, C_DEAD };

struct handshake {
    struct wsrr_http_parser req, resp; /* our own request is parsed to check the 101 against */
};

struct load;

struct lconn {
    struct load *L;
    evutil_socket_t fd;
    enum cstate state;
    struct event *rev, *wev;
    bool writing;         /* wev is added */
    struct handshake *hs; /* during the handshake only */
    struct wsrr_frame_parser fp;
    uint8_t *out; /* one frame (or the request) plus a close frame */
    size_t out_len, out_off;
    uint32_t ridx;   /* index among the connections that opened (rate mode) */
    uint64_t sent;   /* messages put into out */
    uint64_t owed;   /* due but not yet put into out */
    uint64_t recvd;  /* echoes completed; echo k answers message k */
    uint64_t t_sent; /* echo mode: when the outstanding message was sent */
    bool rx_bad;     /* the echo being received differs from what was sent */
    bool close_sent; /* our close frame is in out */
    char rx_seq[SEQ_LEN + 1];
};

struct opts {
    const char *url;
    enum mode mode;
    unsigned conns;
    size_t size;
    double duration, warmup, rate, hold, drain, connect_timeout;
    unsigned concurrency;
    bool json, deflate, binary;
    pid_t pids[MAX_PIDS];
    int npids;
};

struct load {
    struct opts o;
    struct event_base *base;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char hostport[300], target[1024];

    struct lconn *conns;
    struct lconn **run; /* the connections that opened, for rate mode */
    uint32_t nrun;
    uint8_t *rbuf;

    /* what goes on the wire in a message (compressed with --deflate) */
    uint8_t *payload;
    size_t plen;
    uint8_t opcode, rsv;
    bool has_seq;
    size_t out_cap;

    enum phase phase;
    unsigned next_connect, pending, established, failed;
    unsigned closing, closed; /* close phase: connections asked to close, and done */
    bool connecting;          /* inside connect_next() */
    uint64_t t_connect0, t_connected;
    uint64_t t0, t_warm, t_end;
    struct event *phase_ev, *tick_ev, *sig_ev;

    struct hist hist;
    struct hist lag;      /* rate mode: from a message's due time to its send */
    uint64_t window_msgs; /* echo: completed in the window; rate: answered, due in it */
    uint64_t total_msgs;  /* echoes completed, warmup and drain included */
    uint64_t window_due;  /* rate: messages due in the window */
    uint64_t next_due;    /* rate: index of the next message to schedule */
    uint64_t unanswered, bad_echo, conn_errors;
    double cpu0[MAX_PIDS], cpu1[MAX_PIDS], self0, self1, host0, host1;
    uint64_t rng;
    int exit_code;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t rand32(struct load *L)
{
    /* xorshift64* */
    L->rng ^= L->rng >> 12;
    L->rng ^= L->rng << 25;
    L->rng ^= L->rng >> 27;
    return (uint32_t)((L->rng * 0x2545F4914F6CDD1Dull) >> 32);
}

static struct timeval tv_of_ns(int64_t ns)
{
    if (ns < 0)
        ns = 0;
    struct timeval tv = {(time_t)(ns / 1000000000), (suseconds_t)(ns % 1000000000 / 1000)};
    return tv;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of a process (all its threads) from /proc/PID/stat, in
 * seconds; -1 when it cannot be read. */
static double pid_cpu(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime stime */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds the whole machine spent busy (all cores, every process and
 * the kernel), from the first line of /proc/stat; -1 when unreadable. Put
 * beside ours and the --pid processes' it shows how much else ran. */
static double host_busy(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    /* user nice system [idle iowait] irq softirq steal */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static void snapshot_cpu(struct load *L, double *pids, double *self, double *host)
{
    for (int i = 0; i < L->o.npids; i++)
        pids[i] = pid_cpu(L->o.pids[i]);
    *self = self_cpu();
    *host = host_busy();
}

/* ---- connections ---- */

static void connect_next(struct load *L);
static void all_connected(struct load *L);
static void close_done(struct load *L);
static void drain_check(struct load *L);

static void want_write(struct lconn *c, bool on)
{
    if (on != c->writing) {
        if (on)
            event_add(c->wev, NULL);
        else
            event_del(c->wev);
        c->writing = on;
    }
}

static void free_handshake(struct lconn *c)
{
    if (c->hs) {
        wsrr_http_parser_finish(&c->hs->req);
        wsrr_http_parser_finish(&c->hs->resp);
        free(c->hs);
        c->hs = NULL;
    }
}

/* Close the socket; the connection is over (failed, or done at the end). */
static void conn_end(struct lconn *c, const char *why)
{
    struct load *L = c->L;
    enum cstate was = c->state;
    if (was == C_DEAD)
        return;
    c->state = C_DEAD;
    if (c->rev)
        event_del(c->rev);
    want_write(c, false);
    if (c->fd >= 0)
        evutil_closesocket(c->fd);
    c->fd = -1;
    free_handshake(c);
    if (was == C_CONNECTING || was == C_HANDSHAKE) {
        L->failed++;
        L->pending--;
        if (L->failed <= MAX_REPORTS)
            fprintf(stderr, "wsload: connection %u: %s\n", (unsigned)(c - L->conns),
                    why ? why : "not established in time");
        connect_next(L);
        return;
    }
    if (L->phase == P_CLOSE) {
        L->closed++;
        close_done(L);
        return;
    }
    if (why) { /* a connection lost during the run */
        L->conn_errors++;
        if (L->conn_errors <= MAX_REPORTS)
            fprintf(stderr, "wsload: connection %u: %s\n", (unsigned)(c - L->conns), why);
        if (L->phase == P_DRAIN)
            drain_check(L);
    }
}

/* Write the message frame k of this connection into out (empty before). */
static void build_message(struct lconn *c)
{
    struct load *L = c->L;
    uint32_t key = rand32(L);
    struct wsrr_frame f = {
        .fin = true, .rsv = L->rsv, .opcode = L->opcode, .masked = true, .len = L->plen};
    memcpy(f.mask, &key, 4);
    size_t h = wsrr_frame_encode_header(c->out, &f);
    wsrr_frame_mask(c->out + h, L->payload, L->plen, f.mask, 0);
    if (L->has_seq) {
        char seq[SEQ_LEN + 1];
        snprintf(seq, sizeof(seq), "%010llu", (unsigned long long)(c->sent % 10000000000ull));
        wsrr_frame_mask(c->out + h + SEQ_OFF, (const uint8_t *)seq, SEQ_LEN, f.mask, SEQ_OFF);
    }
    c->out_len = h + L->plen;
    c->out_off = 0;
    c->sent++;
}

static void queue_close(struct lconn *c)
{
    if (c->close_sent)
        return;
    uint8_t pl[WSRR_FRAME_MAX_CONTROL];
    size_t n = wsrr_close_payload(pl, 1000, "done", 4);
    uint32_t key = rand32(c->L);
    struct wsrr_frame f = {.fin = true, .opcode = WSRR_OP_CLOSE, .masked = true, .len = n};
    memcpy(f.mask, &key, 4);
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    c->out_len += wsrr_frame_encode(c->out + c->out_len, c->L->out_cap - c->out_len, &f, pl, n);
    c->close_sent = true;
}

/* When message j (over all connections) is due in rate mode. */
static uint64_t due_time(const struct load *L, uint64_t j)
{
    return L->t0 + (uint64_t)((double)j * 1e9 / L->o.rate);
}

/* Write what out holds, then the messages owed, until the socket is full.
 * Returns false when the connection ended. */
static bool pump(struct lconn *c)
{
    for (;;) {
        if (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0) {
                if (retriable(errno)) {
                    want_write(c, true);
                    return true;
                }
                conn_end(c, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
                return false;
            }
            c->out_off += (size_t)n;
            continue;
        }
        if (!c->owed || c->state != C_OPEN)
            break;
        c->owed--;
        if (c->L->o.mode == M_ECHO) {
            c->t_sent = now_ns();
        } else {
            struct load *L = c->L;
            uint64_t due = due_time(L, c->sent * L->nrun + c->ridx), now = now_ns();
            if (due >= L->t_warm && due < L->t_end)
                hist_add(&L->lag, now > due ? now - due : 0);
        }
        build_message(c);
    }
    want_write(c, false);
    return true;
}

/* An echo is complete. */
static void message_done(struct lconn *c, uint64_t now)
{
    struct load *L = c->L;
    uint64_t k = c->recvd++;
    L->total_msgs++;
    if (c->rx_bad)
        L->bad_echo++;
    if (L->phase == P_CLOSE)
        return; /* late: already counted as unanswered in rate mode */
    if (L->o.mode == M_ECHO) {
        if (L->phase != P_RUN)
            return;
        if (now >= L->t_warm) {
            hist_add(&L->hist, now - c->t_sent);
            L->window_msgs++;
        }
        c->owed = 1;
        pump(c);
        return;
    }
    uint64_t due = due_time(L, k * L->nrun + c->ridx);
    if (due >= L->t_warm && due < L->t_end) {
        hist_add(&L->hist, now > due ? now - due : 0);
        L->window_msgs++;
    }
    if (L->phase == P_DRAIN)
        drain_check(L);
}

/* Compare a chunk of an echoed payload (at payload offset off) with what
 * was sent. */
static bool chunk_ok(const struct lconn *c, const uint8_t *d, size_t n, uint64_t off)
{
    const struct load *L = c->L;
    if (off + n > L->plen)
        return false;
    for (size_t i = 0; i < n;) {
        uint64_t o = off + i;
        if (L->has_seq && o >= SEQ_OFF && o < SEQ_OFF + SEQ_LEN) {
            if (d[i] != (uint8_t)c->rx_seq[o - SEQ_OFF])
                return false;
            i++;
            continue;
        }
        size_t run = n - i;
        if (L->has_seq && o < SEQ_OFF && o + run > SEQ_OFF)
            run = (size_t)(SEQ_OFF - o);
        if (memcmp(d + i, L->payload + o, run) != 0)
            return false;
        i += run;
    }
    return true;
}

/* Frames from the server. Returns false when the connection ended. */
static bool on_frames(struct lconn *c, const uint8_t *d, size_t n, uint64_t now)
{
    struct load *L = c->L;
    for (;;) {
        struct wsrr_frame_event ev;
        ssize_t k = wsrr_frame_parse(&c->fp, d, n, &ev);
        if (k < 0) {
            conn_end(c, wsrr_frame_parser_error(&c->fp));
            return false;
        }
        d += k;
        n -= (size_t)k;
        if (ev.type == WSRR_FRAME_NEED_MORE)
            return true;
        const struct wsrr_frame *f = ev.frame;
        bool data = f->opcode < 8;
        if (ev.type == WSRR_FRAME_HEADER) {
            if (data) {
                c->rx_bad = f->opcode != L->opcode || !f->fin || f->rsv != L->rsv || f->masked ||
                            f->len != L->plen;
                snprintf(c->rx_seq, sizeof(c->rx_seq), "%010llu",
                         (unsigned long long)(c->recvd % 10000000000ull));
            }
        } else if (ev.type == WSRR_FRAME_PAYLOAD) {
            if (data && !c->rx_bad && !chunk_ok(c, ev.data, ev.len, ev.offset))
                c->rx_bad = true;
        } else if (data) {
            message_done(c, now);
            if (c->state == C_DEAD)
                return false;
        } else if (f->opcode == WSRR_OP_CLOSE) {
            bool ours = c->close_sent;
            conn_end(c, ours ? NULL : "the server sent a close frame");
            return false;
        }
        /* pings and pongs: none expected from an echo server; ignored */
    }
}

static bool on_response(struct lconn *c, const uint8_t *d, size_t n, uint64_t now)
{
    struct load *L = c->L;
    ssize_t k = wsrr_http_parse(&c->hs->resp, d, n);
    if (k == WSRR_AGAIN)
        return true;
    char err[256], why[320];
    if (k < 0) {
        snprintf(why, sizeof(why), "bad response head: %s", wsrr_http_parser_error(&c->hs->resp));
        conn_end(c, why);
        return false;
    }
    const struct wsrr_http_head *resp = wsrr_http_parser_head(&c->hs->resp);
    struct wsrr_ws_info info;
    int rc = wsrr_handshake_check_response(wsrr_http_parser_head(&c->hs->req), resp, &info, err,
                                           sizeof(err));
    if (rc == 1) {
        snprintf(why, sizeof(why), "the upgrade was answered %d", resp->status);
        conn_end(c, why);
        return false;
    }
    if (rc < 0) {
        snprintf(why, sizeof(why), "invalid 101: %s", err);
        conn_end(c, why);
        return false;
    }
    if (L->o.deflate) {
        struct wsrr_pmd_params pp;
        if (!info.extensions || wsrr_pmd_from_response(info.extensions, info.extensions_len, &pp,
                                                       err, sizeof(err)) != 1) {
            conn_end(c, "the server did not accept permessage-deflate");
            return false;
        }
    }
    free_handshake(c);
    wsrr_frame_parser_init(&c->fp, WSRR_DIR_S2C, NULL);
    c->fp.validate_utf8 = false; /* echoes are compared byte for byte instead */
    if (L->o.deflate)
        c->fp.rsv_allowed = WSRR_RSV1;
    c->state = C_OPEN;
    L->established++;
    L->pending--;
    connect_next(L);
    return on_frames(c, d + k, n - (size_t)k, now);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lconn *c = arg;
    struct load *L = c->L;
    ssize_t n = recv(fd, L->rbuf, RBUF_SIZE, 0);
    if (n <= 0) {
        if (n < 0 && retriable(errno))
            return;
        if (c->state == C_CLOSING || (L->phase == P_CLOSE && c->close_sent))
            conn_end(c, NULL);
        else
            conn_end(c, n == 0 ? "closed by the peer"
                               : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return;
    }
    uint64_t now = now_ns();
    if (c->state == C_HANDSHAKE)
        on_response(c, L->rbuf, (size_t)n, now);
    else
        on_frames(c, L->rbuf, (size_t)n, now);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lconn *c = arg;
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_end(c, evutil_socket_error_to_string(err));
            return;
        }
        c->state = C_HANDSHAKE;
        event_add(c->rev, NULL);
    }
    pump(c);
}

/* Start connection c: socket, connect, the request queued in out. */
static void start_connect(struct lconn *c)
{
    struct load *L = c->L;
    char why[128];
    L->pending++;
    c->state = C_CONNECTING;
    c->fd = socket(L->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(why, sizeof(why), "socket: %s", strerror(errno));
        conn_end(c, why);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->rev = event_new(L->base, c->fd, EV_READ | EV_PERSIST, read_cb, c);
    c->wev = event_new(L->base, c->fd, EV_WRITE | EV_PERSIST, write_cb, c);
    c->out = malloc(L->out_cap);
    c->hs = calloc(1, sizeof(*c->hs));
    struct evbuffer *req = evbuffer_new();
    struct wsrr_ws_request_spec spec = {
        .target = L->target,
        .host = L->hostport,
        .extensions =
            L->o.deflate
                ? "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
                : NULL,
    };
    if (!c->rev || !c->wev || !c->out || !c->hs || !req ||
        wsrr_handshake_build_request(req, &spec) < 0 || evbuffer_get_length(req) > L->out_cap) {
        if (req)
            evbuffer_free(req);
        conn_end(c, "out of memory");
        return;
    }
    c->out_len = evbuffer_get_length(req);
    c->out_off = 0;
    evbuffer_remove(req, c->out, c->out_len);
    evbuffer_free(req);
    wsrr_http_parser_init(&c->hs->req, false, 0, 0);
    wsrr_http_parser_init(&c->hs->resp, true, 0, 0);
    if (wsrr_http_parse(&c->hs->req, c->out, c->out_len) <= 0) {
        conn_end(c, "our own request does not parse");
        return;
    }
    if (connect(c->fd, (struct sockaddr *)&L->addr, L->addrlen) < 0 && errno != EINPROGRESS) {
        snprintf(why, sizeof(why), "connect: %s", strerror(errno));
        conn_end(c, why);
        return;
    }
    want_write(c, true); /* connected once writable */
}

static void connect_next(struct load *L)
{
    if (L->connecting)
        return; /* a failure inside start_connect(): the loop below goes on */
    L->connecting = true;
    while (L->phase == P_CONNECT && L->pending < L->o.concurrency && L->next_connect < L->o.conns)
        start_connect(&L->conns[L->next_connect++]);
    L->connecting = false;
    if (L->phase == P_CONNECT && L->next_connect == L->o.conns && L->pending == 0)
        all_connected(L);
}

/* ---- phases ---- */

static void start_close(struct load *L);

static void close_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    for (unsigned i = 0; i < L->o.conns; i++)
        conn_end(&L->conns[i], NULL);
    event_base_loopexit(L->base, NULL);
}

static void close_done(struct load *L)
{
    if (L->closed == L->closing)
        event_base_loopexit(L->base, NULL);
}

/* Send every open connection a close frame and wait for the answers. */
static void start_close(struct load *L)
{
    L->phase = P_CLOSE;
    if (L->tick_ev)
        event_del(L->tick_ev);
    event_free(L->phase_ev);
    L->phase_ev = evtimer_new(L->base, close_timeout_cb, L);
    struct timeval tv = tv_of_ns((int64_t)(CLOSE_WAIT * 1e9));
    evtimer_add(L->phase_ev, &tv);
    L->closing = L->closed = 0;
    for (unsigned i = 0; i < L->o.conns; i++) {
        struct lconn *c = &L->conns[i];
        if (c->state == C_CONNECTING || c->state == C_HANDSHAKE) {
            conn_end(c, NULL); /* the connect phase timed out on it */
        } else if (c->state == C_OPEN) {
            c->owed = 0;
            queue_close(c);
            c->state = C_CLOSING;
            L->closing++;
        }
    }
    for (unsigned i = 0; i < L->o.conns; i++)
        if (L->conns[i].state == C_CLOSING)
            pump(&L->conns[i]);
    close_done(L);
}

/* Rate mode, after the run: count what was due in the window and never
 * answered, with the latency it had at the end of the drain. */
static void finish_rate(struct load *L)
{
    uint64_t now = now_ns();
    for (uint32_t r = 0; r < L->nrun; r++) {
        struct lconn *c = L->run[r];
        uint64_t last = c->sent + c->owed;
        for (uint64_t k = c->recvd; k < last; k++) {
            uint64_t due = due_time(L, k * L->nrun + c->ridx);
            if (due >= L->t_warm && due < L->t_end) {
                hist_add(&L->hist, now - due);
                L->unanswered++;
            }
        }
    }
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    finish_rate(L);
    start_close(L);
}

/* Rate mode: every message scheduled has been answered (or its connection
 * is gone): the drain is over. */
static void drain_check(struct load *L)
{
    if (L->phase != P_DRAIN)
        return;
    for (uint32_t r = 0; r < L->nrun; r++) {
        struct lconn *c = L->run[r];
        if (c->state != C_DEAD && c->recvd < c->sent + c->owed)
            return;
    }
    finish_rate(L);
    start_close(L);
}

static void end_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    snapshot_cpu(L, L->cpu1, &L->self1, &L->host1);
    if (L->o.mode == M_RATE) {
        L->phase = P_DRAIN;
        if (L->tick_ev)
            event_del(L->tick_ev);
        event_free(L->phase_ev);
        L->phase_ev = evtimer_new(L->base, drain_timeout_cb, L);
        struct timeval tv = tv_of_ns((int64_t)(L->o.drain * 1e9));
        evtimer_add(L->phase_ev, &tv);
        drain_check(L);
        return;
    }
    start_close(L);
}

static void warm_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    snapshot_cpu(L, L->cpu0, &L->self0, &L->host0);
    event_free(L->phase_ev);
    L->phase_ev = evtimer_new(L->base, end_cb, L);
    struct timeval tv = tv_of_ns((int64_t)(L->t_end - now_ns()));
    evtimer_add(L->phase_ev, &tv);
}

/* Rate mode: hand the messages that are due to their connections, then
 * sleep until the next one is. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    uint64_t now = now_ns();
    for (;;) {
        uint64_t due = due_time(L, L->next_due);
        if (due >= L->t_end)
            return;
        if (due > now) {
            struct timeval tv = tv_of_ns((int64_t)(due - now));
            evtimer_add(L->tick_ev, &tv);
            return;
        }
        struct lconn *c = L->run[L->next_due % L->nrun];
        if (due >= L->t_warm)
            L->window_due++;
        L->next_due++;
        c->owed++;
        if (c->state == C_OPEN)
            pump(c);
    }
}

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
    start_close(arg);
}

static void all_connected(struct load *L)
{
    L->t_connected = now_ns();
    event_free(L->phase_ev);
    L->phase_ev = NULL;
    if (L->o.mode == M_IDLE) {
        fprintf(stderr, "established %u of %u connections in %.2f s\n", L->established, L->o.conns,
                (double)(L->t_connected - L->t_connect0) / 1e9);
        fflush(stderr);
        L->phase = P_HOLD;
        L->phase_ev = evtimer_new(L->base, hold_cb, L);
        struct timeval tv = tv_of_ns((int64_t)(L->o.hold * 1e9));
        evtimer_add(L->phase_ev, &tv);
        return;
    }
    if (!L->established) {
        fprintf(stderr, "wsload: no connection could be established\n");
        L->exit_code = 1;
        event_base_loopexit(L->base, NULL);
        return;
    }
    L->run = calloc(L->established, sizeof(*L->run));
    for (unsigned i = 0; i < L->o.conns; i++)
        if (L->conns[i].state == C_OPEN) {
            L->conns[i].ridx = L->nrun;
            L->run[L->nrun++] = &L->conns[i];
        }
    L->phase = P_RUN;
    L->t0 = now_ns();
    L->t_warm = L->t0 + (uint64_t)(L->o.warmup * 1e9);
    L->t_end = L->t_warm + (uint64_t)(L->o.duration * 1e9);
    L->phase_ev = evtimer_new(L->base, warm_cb, L);
    struct timeval tv = tv_of_ns((int64_t)(L->t_warm - L->t0));
    evtimer_add(L->phase_ev, &tv);
    if (L->o.mode == M_ECHO) {
        for (uint32_t r = 0; r < L->nrun; r++) {
            L->run[r]->owed = 1;
            pump(L->run[r]);
        }
    } else {
        L->tick_ev = evtimer_new(L->base, tick_cb, L);
        tick_cb(-1, 0, L);
    }
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    L->next_connect = L->o.conns; /* no more attempts */
    for (unsigned i = 0; i < L->o.conns; i++) {
        struct lconn *c = &L->conns[i];
        if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
            conn_end(c, "no upgrade within the connect timeout");
    }
    if (L->phase == P_CONNECT)
        all_connected(L);
}

static void sig_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *L = arg;
    L->exit_code = 1;
    event_base_loopbreak(L->base);
}

/* ---- setup and report ---- */

/* The payload: JSON-like text, a sequence number near the start. */
static int make_payload(struct load *L)
{
    static const char filler[] = "{\"type\":\"tool_executing\",\"step\":1,\"tool\":\"search\"} ";
    size_t n = L->o.size;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return -ENOMEM;
    static const char head[] = "{\"seq\":0000000000,";
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)filler[i % (sizeof(filler) - 1)];
    L->has_seq = n >= sizeof(head) - 1 && !L->o.deflate;
    if (L->has_seq)
        memcpy(p, head, sizeof(head) - 1);
    L->opcode = L->o.binary ? WSRR_OP_BINARY : WSRR_OP_TEXT;
    L->payload = p;
    L->plen = n;
    if (!L->o.deflate)
        return 0;
    /* no context takeover either way: every message compresses to the same
     * bytes, so they are compressed once here */
    struct wsrr_pmd_params pp = {.server_no_context_takeover = true,
                                 .client_no_context_takeover = true,
                                 .server_max_window_bits = 15,
                                 .client_max_window_bits = 15};
    struct wsrr_pmd_stream *d = wsrr_pmd_deflater_new(&pp, WSRR_DIR_C2S, -1);
    struct evbuffer *b = evbuffer_new();
    if (!d || !b || wsrr_pmd_deflate(d, p, n, true, b) < 0) {
        wsrr_pmd_free(d);
        if (b)
            evbuffer_free(b);
        return -ENOMEM;
    }
    L->plen = evbuffer_get_length(b);
    L->payload = malloc(L->plen ? L->plen : 1);
    evbuffer_remove(b, L->payload, L->plen);
    evbuffer_free(b);
    wsrr_pmd_free(d);
    free(p);
    L->rsv = WSRR_RSV1;
    return L->payload ? 0 : -ENOMEM;
}

static int parse_url(struct load *L, const char *url)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    if (!u)
        return -1;
    const char *scheme = evhttp_uri_get_scheme(u), *host = evhttp_uri_get_host(u);
    const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
    int port = evhttp_uri_get_port(u);
    int rc = -1;
    if (scheme && (!strcmp(scheme, "ws") || !strcmp(scheme, "http")) && host && *host) {
        if (port < 0)
            port = 80;
        bool v6 = strchr(host, ':') != NULL;
        snprintf(L->hostport, sizeof(L->hostport), "%s%.256s%s:%d", v6 ? "[" : "", host,
                 v6 ? "]" : "", port);
        snprintf(L->target, sizeof(L->target), "%.900s%s%.100s", path && *path ? path : "/",
                 query ? "?" : "", query ? query : "");
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
        char ps[16];
        snprintf(ps, sizeof(ps), "%d", port);
        if (getaddrinfo(host, ps, &hints, &ai) == 0 && ai) {
            memcpy(&L->addr, ai->ai_addr, ai->ai_addrlen);
            L->addrlen = ai->ai_addrlen;
            rc = 0;
        }
        if (ai)
            freeaddrinfo(ai);
    }
    evhttp_uri_free(u);
    return rc;
}

static const char *mode_name(enum mode m)
{
    return m == M_ECHO ? "echo" : m == M_RATE ? "rate" : "idle";
}

static void report(struct load *L)
{
    const struct opts *o = &L->o;
    double connect_s = (double)(L->t_connected - L->t_connect0) / 1e9;
    if (o->mode == M_IDLE) {
        if (o->json)
            printf("{\"mode\":\"idle\",\"url\":\"%s\",\"conns\":%u,\"established\":%u,"
                   "\"failed\":%u,\"lost\":%llu,\"connect_s\":%.3f,\"hold_s\":%.1f}\n",
                   o->url, o->conns, L->established, L->failed, (unsigned long long)L->conn_errors,
                   connect_s, o->hold);
        else
            printf("idle: %u of %u connections established (%u failed) in %.2f s, held %.1f s, "
                   "%llu lost while held\n",
                   L->established, o->conns, L->failed, connect_s, o->hold,
                   (unsigned long long)L->conn_errors);
        if (L->failed || L->conn_errors)
            L->exit_code = 1;
        return;
    }
    double dur = o->duration;
    double rate = (double)L->window_msgs / dur;
    double mbps = rate * (double)o->size / 1e6;
    const struct hist *h = &L->hist;
    double q[6] = {hist_quantile(h, 0.5),  hist_quantile(h, 0.9),
                   hist_quantile(h, 0.99), hist_quantile(h, 0.999),
                   (double)h->max,         h->n ? h->sum / (double)h->n : 0};
    double self = L->self1 - L->self0;
    if (o->json) {
        printf("{\"mode\":\"%s\",\"url\":\"%s\",\"conns\":%u,\"established\":%u,\"failed\":%u,"
               "\"size\":%zu,\"wire_payload\":%zu,\"deflate\":%s,\"warmup_s\":%.1f,"
               "\"duration_s\":%.1f,",
               mode_name(o->mode), o->url, o->conns, L->established, L->failed, o->size, L->plen,
               o->deflate ? "true" : "false", o->warmup, dur);
        if (o->mode == M_RATE)
            printf("\"rate\":%.1f,\"due\":%llu,\"unanswered\":%llu,\"send_lag_us\":{\"p50\":%.1f,"
                   "\"p99\":%.1f,\"max\":%.1f},",
                   o->rate, (unsigned long long)L->window_due, (unsigned long long)L->unanswered,
                   hist_quantile(&L->lag, 0.5) / 1e3, hist_quantile(&L->lag, 0.99) / 1e3,
                   (double)L->lag.max / 1e3);
        printf("\"messages\":%llu,\"total_messages\":%llu,\"msgs_per_s\":%.1f,\"mb_per_s\":%.2f,"
               "\"lat_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,"
               "\"mean\":%.1f},\"bad_echo\":%llu,\"conn_errors\":%llu,\"cpu_s\":{\"self\":%.3f",
               (unsigned long long)L->window_msgs, (unsigned long long)L->total_msgs, rate, mbps,
               q[0] / 1e3, q[1] / 1e3, q[2] / 1e3, q[3] / 1e3, q[4] / 1e3, q[5] / 1e3,
               (unsigned long long)L->bad_echo, (unsigned long long)L->conn_errors, self);
        for (int i = 0; i < o->npids; i++)
            printf(",\"%d\":%.3f", (int)o->pids[i],
                   L->cpu0[i] < 0 || L->cpu1[i] < 0 ? -1.0 : L->cpu1[i] - L->cpu0[i]);
        printf(",\"host_busy\":%.3f}}\n",
               L->host0 < 0 || L->host1 < 0 ? -1.0 : L->host1 - L->host0);
    } else {
        printf("%s: %u conns, %zu B%s: %.0f msgs/s (%.2f MB/s), latency us p50 %.1f p90 %.1f "
               "p99 %.1f p99.9 %.1f max %.1f mean %.1f",
               mode_name(o->mode), L->established, o->size, o->deflate ? " (deflate)" : "", rate,
               mbps, q[0] / 1e3, q[1] / 1e3, q[2] / 1e3, q[3] / 1e3, q[4] / 1e3, q[5] / 1e3);
        if (o->mode == M_RATE)
            printf(", %llu due, %llu unanswered, sent late by p50 %.1f p99 %.1f max %.1f us",
                   (unsigned long long)L->window_due, (unsigned long long)L->unanswered,
                   hist_quantile(&L->lag, 0.5) / 1e3, hist_quantile(&L->lag, 0.99) / 1e3,
                   (double)L->lag.max / 1e3);
        printf(", %llu bad echoes, %llu connection errors; cpu s: self %.2f",
               (unsigned long long)L->bad_echo, (unsigned long long)L->conn_errors, self);
        for (int i = 0; i < o->npids; i++)
            printf(", pid %d %.2f", (int)o->pids[i], L->cpu1[i] - L->cpu0[i]);
        printf(", whole machine %.2f\n", L->host1 - L->host0);
    }
    if (L->bad_echo || L->conn_errors || L->failed || L->unanswered)
        L->exit_code = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: wsload --url ws://HOST:PORT/PATH [options]\n"
            "  --mode echo|rate|idle  closed loop (default), open loop at --rate, or idle\n"
            "  --conns N              connections (50)\n"
            "  --size BYTES           message payload size (64)\n"
            "  --duration SEC         measured time (10); --warmup SEC before it (2)\n"
            "  --rate R               rate mode: messages per second over all connections\n"
            "  --drain SEC            rate mode: wait this long for late echoes (5)\n"
            "  --hold SEC             idle mode: keep the connections this long (5)\n"
            "  --concurrency N        handshakes in flight while connecting (200)\n"
            "  --connect-timeout SEC  for all connections to be established (60)\n"
            "  --deflate              offer permessage-deflate (no context takeover); the\n"
            "                         message is compressed once and sent as it is\n"
            "  --binary               binary messages (default text)\n"
            "  --pid PID              report this process's CPU seconds over the measured\n"
            "                         time (from /proc/PID/stat; up to %d times)\n"
            "  --json                 one JSON line instead of a readable one\n"
            "Exit status: 0, 1 when an echo was wrong or a connection failed, 2 bad usage.\n",
            MAX_PIDS);
}

int main(int argc, char **argv)
{
    static struct load L0; /* the histogram is large: not on the stack */
    struct load *L = &L0;
    struct opts *o = &L->o;
    *o = (struct opts){.mode = M_ECHO,
                       .conns = 50,
                       .size = 64,
                       .duration = 10,
                       .warmup = 2,
                       .hold = 5,
                       .drain = 5,
                       .connect_timeout = 60,
                       .concurrency = 200};
    static const struct option lo[] = {
        {"url", required_argument, NULL, 'u'},
        {"mode", required_argument, NULL, 'm'},
        {"conns", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"rate", required_argument, NULL, 'r'},
        {"drain", required_argument, NULL, 'D'},
        {"hold", required_argument, NULL, 'H'},
        {"concurrency", required_argument, NULL, 'C'},
        {"connect-timeout", required_argument, NULL, 'T'},
        {"deflate", no_argument, NULL, 'z'},
        {"binary", no_argument, NULL, 'b'},
        {"pid", required_argument, NULL, 'p'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    for (int c; (c = getopt_long(argc, argv, "h", lo, NULL)) != -1;) {
        switch (c) {
        case 'u': o->url = optarg; break;
        case 'm':
            if (!strcmp(optarg, "echo"))
                o->mode = M_ECHO;
            else if (!strcmp(optarg, "rate"))
                o->mode = M_RATE;
            else if (!strcmp(optarg, "idle"))
                o->mode = M_IDLE;
            else {
                fprintf(stderr, "wsload: --mode %s: expected echo, rate or idle\n", optarg);
                return 2;
            }
            break;
        case 'c': o->conns = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': o->size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': o->duration = atof(optarg); break;
        case 'w': o->warmup = atof(optarg); break;
        case 'r': o->rate = atof(optarg); break;
        case 'D': o->drain = atof(optarg); break;
        case 'H': o->hold = atof(optarg); break;
        case 'C': o->concurrency = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'T': o->connect_timeout = atof(optarg); break;
        case 'z': o->deflate = true; break;
        case 'b': o->binary = true; break;
        case 'p':
            if (o->npids == MAX_PIDS) {
                fprintf(stderr, "wsload: at most %d --pid\n", MAX_PIDS);
                return 2;
            }
            o->pids[o->npids++] = (pid_t)atoi(optarg);
            break;
        case 'j': o->json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    const char *bad = !o->url                                  ? "--url is required"
                      : !o->conns                              ? "--conns must be positive"
                      : o->duration <= 0 || o->duration > 3600 ? "--duration: 0 < SEC <= 3600"
                      : o->warmup < 0 || o->warmup > 600       ? "--warmup: 0 <= SEC <= 600"
                      : o->hold < 0 || o->hold > 3600          ? "--hold: 0 <= SEC <= 3600"
                      : o->drain < 0 || o->drain > 600         ? "--drain: 0 <= SEC <= 600"
                      : o->connect_timeout <= 0 || o->connect_timeout > 3600
                          ? "--connect-timeout: 0 < SEC <= 3600"
                      : o->mode == M_RATE && !(o->rate > 0)    ? "rate mode needs --rate R > 0"
                      : !o->concurrency                        ? "--concurrency must be positive"
                      : o->size > WSRR_FRAME_DEFAULT_MAX_FRAME ? "--size: at most 64 MiB"
                                                               : NULL;
    if (bad) {
        fprintf(stderr, "wsload: %s\n", bad);
        return 2;
    }
    if (parse_url(L, o->url) < 0) {
        fprintf(stderr, "wsload: --url %s: expected ws://HOST:PORT/PATH with a resolvable host\n",
                o->url);
        return 2;
    }

    /* one file descriptor per connection: raise the soft limit as far as
     * allowed */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        o->conns + 16 > rl.rlim_cur)
        fprintf(stderr, "wsload: warning: %u connections but an open-file limit of %llu\n",
                o->conns, (unsigned long long)rl.rlim_cur);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1000UL); /* 1 us instead of 50: the rate schedule is in us */

    if (make_payload(L) < 0) {
        fprintf(stderr, "wsload: cannot prepare the payload\n");
        return 1;
    }
    L->out_cap = WSRR_FRAME_MAX_HEADER + L->plen + WSRR_FRAME_MAX_HEADER + WSRR_FRAME_MAX_CONTROL;
    if (L->out_cap < 2048)
        L->out_cap = 2048; /* the request goes there first */
    L->rng = now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
    L->rbuf = malloc(RBUF_SIZE);
    L->conns = calloc(o->conns, sizeof(*L->conns));
    struct event_config *cfg = event_config_new();
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER); /* rate mode's schedule */
    L->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!L->rbuf || !L->conns || !L->base) {
        fprintf(stderr, "wsload: out of memory\n");
        return 1;
    }
    for (unsigned i = 0; i < o->conns; i++) {
        L->conns[i].L = L;
        L->conns[i].fd = -1;
    }
    L->sig_ev = evsignal_new(L->base, SIGINT, sig_cb, L);
    evsignal_add(L->sig_ev, NULL);

    L->phase = P_CONNECT;
    L->t_connect0 = now_ns();
    L->phase_ev = evtimer_new(L->base, connect_timeout_cb, L);
    struct timeval tv = tv_of_ns((int64_t)(o->connect_timeout * 1e9));
    evtimer_add(L->phase_ev, &tv);
    connect_next(L);
    event_base_dispatch(L->base);

    report(L);
    for (unsigned i = 0; i < o->conns; i++) {
        struct lconn *c = &L->conns[i];
        if (c->fd >= 0)
            evutil_closesocket(c->fd);
        free_handshake(c);
        if (c->rev)
            event_free(c->rev);
        if (c->wev)
            event_free(c->wev);
        free(c->out);
    }
    if (L->phase_ev)
        event_free(L->phase_ev);
    if (L->tick_ev)
        event_free(L->tick_ev);
    event_free(L->sig_ev);
    event_base_free(L->base);
    free(L->conns);
    free(L->run);
    free(L->rbuf);
    free(L->payload);
    return L->exit_code;
}
