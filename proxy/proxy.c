/* proxy.c — the recording WebSocket reverse proxy; see proxy.h.
 *
 * A connection goes through these states:
 *
 *   REQUEST     reading the client's request head (nothing forwarded yet)
 *   CONNECTING  head complete, connecting to the upstream
 *   RESPONSE    head sent upstream; client bytes relayed as they come;
 *               reading the upstream's response head
 *   RELAY       both directions relayed unchanged (evbuffer chains moved)
 *   CLOSING     the proxy answered the client itself (400/426/502/504) and
 *               closes once that answer is written
 *
 * Every byte a peer sends is fed to the connection's tap exactly once, in
 * the order it arrived, so the capture holds what each side sent.
 */
#include "proxy.h"
#include "internal.h"

#include "wsrr/capture.h"
#include "wsrr/handshake.h"
#include "wsrr/log.h"
#include "wsrr/redact.h"
#include "wsrr/rules.h"
#include "wsrr/tap.h"
#include "wsrr/tls.h"
#include "wsrr-config.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_BUFFER   ((size_t)1 << 20)
#define DEFAULT_FLUSH_MS     100
#define DEFAULT_GRACE_MS     5000
#define DEFAULT_HANDSHAKE_MS 10000
#define LINGER_MS            2000 /* after answering a client ourselves */

static void relay(struct conn *c, enum wsrr_dir dir);
static void conn_close(struct conn *c, bool reset, const char *why);

/* ---- small helpers ---- */

static enum wsrr_dir other(enum wsrr_dir d)
{
    return d == WSRR_DIR_C2S ? WSRR_DIR_S2C : WSRR_DIR_C2S;
}

static const char *leg_name(enum wsrr_dir src)
{
    return src == WSRR_DIR_C2S ? "client" : "upstream";
}

static void record_tcp(struct conn *c, enum wsrr_dir src, enum wsrr_tcp_event ev, int err,
                       const char *detail)
{
    if (c->tap)
        wsrr_tap_tcp(c->tap, src == WSRR_DIR_C2S ? WSRR_LEG_CLIENT : WSRR_LEG_UPSTREAM, ev, err,
                     detail, WSRR_TS_NOW);
}

static void feed_tap(struct conn *c, enum wsrr_dir dir, const uint8_t *p, size_t n)
{
    if (c->tap && n)
        wsrr_tap_feed(c->tap, dir, p, n, WSRR_TS_NOW);
}

/* Feed the first n bytes of an evbuffer to the tap without copying them. */
static void feed_tap_buffer(struct conn *c, enum wsrr_dir dir, struct evbuffer *b, size_t n)
{
    if (!c->tap || !n)
        return;
    struct evbuffer_iovec vec[16];
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(b, &pos, 0, EVBUFFER_PTR_SET);
    while (n) {
        int k = evbuffer_peek(b, (ev_ssize_t)n, &pos, vec, 16);
        if (k <= 0)
            break;
        int use = k < 16 ? k : 16;
        size_t done = 0;
        for (int i = 0; i < use && done < n; i++) {
            size_t len = vec[i].iov_len < n - done ? vec[i].iov_len : n - done;
            wsrr_tap_feed(c->tap, dir, vec[i].iov_base, len, WSRR_TS_NOW);
            done += len;
        }
        n -= done;
        if (n && evbuffer_ptr_set(b, &pos, done, EVBUFFER_PTR_ADD) < 0)
            break;
    }
}

/* ---- capture ---- */

static char *metadata(const struct wsrr_proxy *p)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "tool", "wsrr " WSRR_VERSION);
    if (p->cfg.argv0_line)
        cJSON_AddStringToObject(m, "command", p->cfg.argv0_line);
    cJSON_AddStringToObject(m, "listen", p->listen_addr);
    cJSON_AddStringToObject(m, "upstream", p->up.url);
    cJSON_AddStringToObject(m, "redaction", p->red ? "default" : "none");
    cJSON_AddNumberToObject(m, "flush_interval_ms", (double)p->cfg.flush_interval_ms);
    cJSON_AddBoolToObject(m, "preserve_host", p->cfg.preserve_host);
    if (p->rules) {
        char seed[24];
        snprintf(seed, sizeof(seed), "%llu", (unsigned long long)p->rules->seed);
        cJSON_AddStringToObject(m, "seed", seed);
        char *txt = wsrr_rules_to_json(p->rules);
        cJSON *doc = txt ? cJSON_Parse(txt) : NULL;
        cJSON_free(txt);
        if (doc)
            cJSON_AddItemToObject(m, "rules", doc);
    }
    cJSON_AddBoolToObject(m, "listen_tls", p->cfg.listen_tls);
    if (p->up.tls)
        cJSON_AddBoolToObject(m, "insecure_upstream", p->cfg.insecure_upstream);
    char *t = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return t;
}

/* The next free capture path: the file given, or a timestamped name in the
 * directory given; "-2", "-3"... when taken (a writer never overwrites). */
static void next_capture_path(struct wsrr_proxy *p, char *out, size_t cap)
{
    char base[4096];
    if (p->record_dir) {
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char stamp[32];
        strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
        snprintf(base, sizeof(base), "%.4000s/wsrr-%.20s", p->record_arg, stamp);
    } else {
        snprintf(base, sizeof(base), "%s", p->record_arg);
        size_t n = strlen(base);
        if (n > 5 && strcmp(base + n - 5, ".wsrr") == 0)
            base[n - 5] = '\0';
    }
    snprintf(out, cap, "%.4080s.wsrr", base);
    struct stat st;
    bool first_file = !p->record_dir && !p->w && !p->capture_path[0];
    if (first_file && p->cfg.overwrite)
        return;
    for (int i = 2; stat(out, &st) == 0 && i < 10000; i++)
        snprintf(out, cap, "%.4070s-%d.wsrr", base, i);
}

static int open_capture(struct wsrr_proxy *p, char *err, size_t errlen)
{
    char path[4096];
    bool first = !p->capture_path[0];
    next_capture_path(p, path, sizeof(path));
    if (first && !p->record_dir && !p->cfg.overwrite && strcmp(path, p->record_arg) != 0 &&
        access(p->record_arg, F_OK) == 0)
        return wsrr_seterr(err, errlen, EEXIST,
                           "--record %s: the file exists (captures are never appended to; "
                           "choose a new name or --force)",
                           p->record_arg);
    char *meta = metadata(p);
    struct wsrr_capture_opts o = {
        .metadata = meta,
        .flush_interval_ns = p->cfg.flush_interval_ms * 1000000ull,
        .overwrite = first && p->cfg.overwrite,
        .mode = p->red ? 0 : 0600, /* an unredacted capture holds secrets */
    };
    p->w = wsrr_capture_writer_open(path, &o, err, errlen);
    free(meta);
    if (!p->w)
        return -EIO;
    snprintf(p->capture_path, sizeof(p->capture_path), "%s", path);
    return 0;
}

static void check_writer(struct wsrr_proxy *p, int rc)
{
    if (rc < 0 && !p->capture_failed) {
        p->capture_failed = true;
        wsrr_log(WSRR_LOG_ERROR, 0, "capture %s: %s; recording stops, proxying goes on",
                 p->capture_path, wsrr_capture_writer_error(p->w));
    }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wsrr_proxy *p = arg;
    if (p->w)
        check_writer(p, wsrr_capture_writer_tick(p->w));
}

static void finish_capture(struct wsrr_proxy *p)
{
    if (!p->w)
        return;
    char err[256];
    struct wsrr_capture_stats st;
    wsrr_capture_writer_stats(p->w, &st);
    if (wsrr_capture_writer_close(p->w, err, sizeof(err)) < 0)
        wsrr_log(WSRR_LOG_ERROR, 0, "%s", err);
    else
        wsrr_log(WSRR_LOG_INFO, 0, "capture %s: %llu records, %llu bytes", p->capture_path,
                 (unsigned long long)st.records, (unsigned long long)st.bytes_out);
    p->w = NULL;
}

int wsrr_proxy_reopen(struct wsrr_proxy *p)
{
    if (!p->w && !p->capture_path[0])
        return 0; /* not recording */
    char old[4096], err[256];
    snprintf(old, sizeof(old), "%s", p->capture_path);
    finish_capture(p);
    p->capture_failed = false;
    if (open_capture(p, err, sizeof(err)) < 0) {
        wsrr_log(WSRR_LOG_ERROR, 0, "reopening the capture: %s; recording stops", err);
        for (struct conn *c = p->conns; c; c = c->next) {
            wsrr_tap_free(c->tap);
            c->tap = NULL;
        }
        return -EIO;
    }
    wsrr_log(WSRR_LOG_INFO, 0, "capture continues in %s", p->capture_path);
    for (struct conn *c = p->conns; c; c = c->next)
        if (c->tap) {
            wsrr_tap_set_writer(c->tap, p->rec_paused ? NULL : p->w);
            wsrr_tap_note(c->tap, WSRR_TS_NOW,
                          "connection continued from %s (its open and handshake are there)", old);
        }
    return 0;
}

const char *wsrr_proxy_capture_path(const struct wsrr_proxy *p)
{
    return p->w ? p->capture_path : NULL;
}

/* The OPEN record: at accept for a plain client leg, once the client's TLS
 * handshake is done for a TLS one (so that it can say what was agreed). */
static void open_record(struct conn *c)
{
    struct wsrr_proxy *p = c->p;
    if (c->opened || !c->tap)
        return;
    c->opened = true;
    char tls[160] = "";
    const char *sni = NULL;
    if (c->tls[WSRR_DIR_C2S]) {
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev[WSRR_DIR_C2S]);
        if (ssl && SSL_is_init_finished(ssl)) {
            wsrr_tls_describe(ssl, tls, sizeof(tls));
            sni = wsrr_tls_sni(ssl);
        }
    }
    struct wsrr_rec_open open = {0};
    open.client = (struct wsrr_span){(const uint8_t *)c->client, strlen(c->client)};
    open.listen = (struct wsrr_span){(const uint8_t *)p->listen_addr, strlen(p->listen_addr)};
    open.upstream = (struct wsrr_span){(const uint8_t *)p->up.url, strlen(p->up.url)};
    open.client_tls = (struct wsrr_span){(const uint8_t *)tls, strlen(tls)};
    if (sni)
        open.sni = (struct wsrr_span){(const uint8_t *)sni, strlen(sni)};
    if (c->tls[WSRR_DIR_C2S])
        open.flags |= WSRR_OF_CLIENT_TLS;
    if (p->up.tls)
        open.flags |= WSRR_OF_UPSTREAM_TLS;
    if (p->up.tls && p->cfg.insecure_upstream)
        open.flags |= WSRR_OF_UPSTREAM_INSECURE;
    check_writer(p, wsrr_tap_open(c->tap, &open, WSRR_TS_NOW));
}

/* Why a bufferevent failed, in one line: the TLS reason on a TLS leg, the
 * socket error otherwise. Returns true when it was TLS. */
static bool failure_reason(struct conn *c, enum wsrr_dir leg, char *out, size_t cap, int *err)
{
    struct bufferevent *b = c->bev[leg];
    unsigned long e = c->tls[leg] ? bufferevent_get_openssl_error(b) : 0;
    /* a reset our own send met (sent()) is reported once; the bufferevent's
     * next write then only sees EPIPE */
    *err = c->io_err[leg] ? c->io_err[leg] : EVUTIL_SOCKET_ERROR();
    if (e || (c->tls[leg] && !*err)) {
        wsrr_tls_error(bufferevent_openssl_get_ssl(b), e, out, cap);
        return true;
    }
    snprintf(out, cap, "%s", *err ? evutil_socket_error_to_string(*err) : "connection closed");
    return false;
}

/* ---- connection teardown ---- */

static void count_close(struct wsrr_proxy *p, uint16_t code)
{
    for (size_t i = 0; i < p->st.ncloses; i++)
        if (p->st.closes[i].code == code) {
            p->st.closes[i].n++;
            return;
        }
    size_t cap = sizeof(p->st.closes) / sizeof(p->st.closes[0]);
    if (p->st.ncloses < cap) {
        p->st.closes[p->st.ncloses].code = code;
        p->st.closes[p->st.ncloses++].n = 1;
    } else {
        p->st.other_closes++;
    }
}

static void maybe_finished(struct wsrr_proxy *p)
{
    if (!p->stopping || p->conns)
        return;
    if (p->grace_ev) {
        event_free(p->grace_ev);
        p->grace_ev = NULL;
    }
    if (p->flush_ev) {
        event_free(p->flush_ev);
        p->flush_ev = NULL;
    }
    finish_capture(p);
    if (p->dns) {
        evdns_base_free(p->dns, 0);
        p->dns = NULL;
    }
    event_base_loopexit(p->base, NULL); /* nothing of ours is left to run */
}

static void log_conn_end(struct conn *c, const char *why)
{
    const struct wsrr_tap_state *ts = c->tap ? wsrr_tap_state(c->tap) : NULL;
    char close_desc[96] = "no close frame";
    if (ts && ts->first_closer >= 0)
        snprintf(close_desc, sizeof(close_desc), "close %u by %s", ts->close_code[ts->first_closer],
                 wsrr_dir_name((enum wsrr_dir)ts->first_closer));
    double secs = (double)(wsrr_now_ns() - c->t_start) / 1e9;
    wsrr_log(WSRR_LOG_INFO, c->id,
             "%s -> %s: %.3f s, client sent %llu bytes/%llu frames, server %llu bytes/%llu "
             "frames, %s%s%s",
             c->client, c->p->up.url, secs, (unsigned long long)c->bytes[WSRR_DIR_C2S],
             (unsigned long long)(ts ? ts->frames[WSRR_DIR_C2S] : 0),
             (unsigned long long)c->bytes[WSRR_DIR_S2C],
             (unsigned long long)(ts ? ts->frames[WSRR_DIR_S2C] : 0), close_desc, why ? "; " : "",
             why ? why : "");
}

/* Close both legs. Legs whose bit is in reset_legs (1 << the direction of
 * the bytes that leg sends: WSRR_DIR_C2S is the client's) end with a TCP
 * RST instead of a FIN, so that an abrupt end on one side looks abrupt on
 * the other. */
static void conn_end(struct conn *c, unsigned reset_legs, const char *why)
{
    struct wsrr_proxy *p = c->p;
    open_record(c);
    if (c->tap) {
        const struct wsrr_tap_state *ts = wsrr_tap_state(c->tap);
        p->st.frames[0] += ts->frames[0];
        p->st.frames[1] += ts->frames[1];
        for (int d = 0; d < 2; d++)
            if (ts->close_seen[d])
                count_close(p, ts->close_code[d]);
        wsrr_tap_end(c->tap, WSRR_TS_NOW);
    }
    log_conn_end(c, why);
    faults_free(c);
    wsrr_rules_conn_free(c->rc);
    if (c->hs_timer)
        event_free(c->hs_timer);
    free(c->path);
    for (int i = 0; i < 2; i++) {
        wsrr_http_parser_finish(&c->head[i]);
        if (c->rd[i])
            event_free(c->rd[i]);
        if (!c->bev[i])
            continue;
        if (reset_legs & (1u << i)) {
            struct linger lg = {1, 0};
            evutil_socket_t fd = bufferevent_getfd(c->bev[i]);
            if (fd >= 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        bufferevent_free(c->bev[i]);
    }
    wsrr_tap_free(c->tap);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    p->st.active--;
    p->st.closed++;
    free(c);
    maybe_finished(p);
}

static void conn_close(struct conn *c, bool reset, const char *why)
{
    conn_end(c, reset ? 3u : 0u, why);
}

void px_reset(struct conn *c, unsigned legs, const char *why)
{
    conn_end(c, legs, why);
}

static void relay_write(struct bufferevent *bev, void *arg);
static void relay_event(struct bufferevent *bev, short what, void *arg);

static void set_timeouts(struct bufferevent *bev, uint64_t ms)
{
    if (!ms) {
        bufferevent_set_timeouts(bev, NULL, NULL);
        return;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000)};
    bufferevent_set_timeouts(bev, &tv, &tv);
}

static void discard_read(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* Answer the client ourselves and close once the answer is written. */
static void respond(struct conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer(struct conn *c, struct evbuffer *b, int status, const char *body);

static void respond(struct conn *c, int status, const char *fmt, ...)
{
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    struct evbuffer *b = evbuffer_new();
    wsrr_http_build_error(b, status, body);
    answer(c, b, status, body);
    evbuffer_free(b);
}

/* Send the answer in b to the client (recorded as the response unless the
 * upstream's was) and close once it is out. */
static void answer(struct conn *c, struct evbuffer *b, int status, const char *body)
{
    size_t n = evbuffer_get_length(b);
    if (c->tap) {
        wsrr_tap_note(c->tap, WSRR_TS_NOW, "wsrr answered %d itself: %s", status, body);
        /* what the client got is recorded as the response, unless the
         * upstream's own response head was recorded already */
        if (wsrr_tap_state(c->tap)->status == 0)
            feed_tap(c, WSRR_DIR_S2C, evbuffer_pullup(b, -1), n);
    }
    wsrr_log(WSRR_LOG_INFO, c->id, "answered %d: %s", status, body);
    c->p->st.rejected++;
    if (c->bev[WSRR_DIR_S2C]) {
        bufferevent_free(c->bev[WSRR_DIR_S2C]);
        c->bev[WSRR_DIR_S2C] = NULL;
    }
    c->state = CS_CLOSING;
    struct bufferevent *cl = c->bev[WSRR_DIR_C2S];
    /* A lingering close: keep reading (and discarding) what the client still
     * sends, because closing with unread input makes the kernel answer with
     * an RST, which can destroy the answer before the client reads it. */
    evbuffer_drain(bufferevent_get_input(cl), evbuffer_get_length(bufferevent_get_input(cl)));
    bufferevent_setcb(cl, discard_read, relay_write, relay_event, c);
    bufferevent_enable(cl, EV_READ);
    set_timeouts(cl, LINGER_MS);
    bufferevent_write_buffer(cl, b);
    bufferevent_setwatermark(cl, EV_WRITE, 0, 0); /* write callback when all is out */
}

/* ---- handshake faults ---- */

/* The handshake rule that fired for c, while the rules it came from are
 * still in force. */
static const struct wsrr_rule *hs_rule(const struct conn *c)
{
    const struct wsrr_rules *rs = c->p->rules;
    if (c->hs_rule < 0 || !rs || c->rules_gen != c->p->rules_gen || (size_t)c->hs_rule >= rs->count)
        return NULL;
    return &rs->rules[c->hs_rule];
}

static void hs_timer_cb(evutil_socket_t fd, short what, void *arg);

static void hs_later(struct conn *c, uint64_t ms)
{
    if (!c->hs_timer && !(c->hs_timer = evtimer_new(c->p->base, hs_timer_cb, c))) {
        hs_timer_cb(-1, 0, c);
        return;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000)};
    evtimer_add(c->hs_timer, &tv);
}

/* An HTTP answer of the rule's own: status, headers, body. */
static void reject(struct conn *c, const struct wsrr_action *a)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        respond(c, 500, "out of memory");
        return;
    }
    evbuffer_add_printf(b, "HTTP/1.1 %d %s\r\n", a->code, wsrr_http_reason(a->code));
    for (const cJSON *x = a->json ? a->json->child : NULL; x; x = x->next)
        evbuffer_add_printf(b, "%s: %s\r\n", x->string, x->valuestring);
    evbuffer_add_printf(b,
                        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                        "Connection: close\r\n\r\n",
                        a->text_len);
    evbuffer_add(b, a->text ? a->text : "", a->text_len);
    answer(c, b, a->code, "a rule rejected the upgrade");
    evbuffer_free(b);
}

/* Apply the handshake rule that fired at the request. Returns true when
 * the connection goes on to the upstream now. */
static bool handshake_fault(struct conn *c, uint64_t req_seq)
{
    const struct wsrr_rule *r = hs_rule(c);
    if (!r)
        return true;
    const struct wsrr_action *a = &r->action;
    switch (a->kind) {
    case WSRR_ACT_REJECT:
        faults_fired(c, r, req_seq, WSRR_DIR_C2S, 0);
        reject(c, a);
        return false;
    case WSRR_ACT_REFUSE_CONNECT: {
        faults_fired(c, r, req_seq, WSRR_DIR_C2S, 0);
        char detail[400];
        snprintf(detail, sizeof(detail), "connect to %s:%d: %s (refused by rule '%s')",
                 c->p->up.host, c->p->up.port, strerror(ECONNREFUSED), r->name);
        record_tcp(c, WSRR_DIR_S2C, WSRR_TCP_CONNECT_FAILED, ECONNREFUSED, detail);
        c->p->st.upstream_failures++;
        /* what the client would get with the backend down */
        respond(c, 502, "connect to %s:%d: %s", c->p->up.host, c->p->up.port,
                strerror(ECONNREFUSED));
        return false;
    }
    case WSRR_ACT_DELAY_CONNECT:
        faults_fired(c, r, req_seq, WSRR_DIR_C2S, 0);
        hs_later(c, a->ms);
        return false;
    case WSRR_ACT_HEADERS:
        faults_fired(c, r, req_seq, WSRR_DIR_C2S,
                     0); /* applied in upstream_request() and upstream_read() */
        return true;
    default: /* delay_upgrade: when the response is in */ return true;
    }
}

/* The handshake edits of a headers rule for one side, or NULL. */
static const cJSON *head_edits(const struct conn *c, const char *side)
{
    const struct wsrr_rule *r = hs_rule(c);
    if (!r || r->action.kind != WSRR_ACT_HEADERS)
        return NULL;
    return cJSON_GetObjectItemCaseSensitive(r->action.json, side);
}

/* Does an edit set or remove the field name? (Both replace it.) */
static bool edited_field(const cJSON *edit, const char *name, size_t len)
{
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(edit, "remove");
    for (const cJSON *x = rm ? rm->child : NULL; x; x = x->next)
        if (strlen(x->valuestring) == len && strncasecmp(x->valuestring, name, len) == 0)
            return true;
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(edit, "set");
    for (const cJSON *x = set ? set->child : NULL; x; x = x->next)
        if (strlen(x->string) == len && strncasecmp(x->string, name, len) == 0)
            return true;
    return false;
}

static void add_set_fields(struct evbuffer *out, const cJSON *edit)
{
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(edit, "set");
    for (const cJSON *x = set ? set->child : NULL; x; x = x->next)
        evbuffer_add_printf(out, "%s: %s\r\n", x->string, x->valuestring);
}

/* ---- handshake ---- */

/* The request as the upstream gets it: Host and Origin rewritten for the
 * upstream, the target under the upstream URL's path. */
static void upstream_request(struct conn *c, struct evbuffer *out)
{
    const struct wsrr_http_head *h = wsrr_http_parser_head(&c->head[WSRR_DIR_C2S]);
    const struct upstream *u = &c->p->up;
    const cJSON *edit = head_edits(c, "request");
    if (c->p->cfg.preserve_host && !edit) {
        evbuffer_add(out, h->raw, h->raw_len);
        return;
    }
    evbuffer_add(out, h->method, h->method_len);
    evbuffer_add_printf(out, " %s%.*s HTTP/1.%d\r\n", c->p->cfg.preserve_host ? "" : u->prefix,
                        (int)h->target_len, h->target, h->version_minor);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        if (edit && edited_field(edit, f->name, f->name_len))
            continue;
        if (c->p->cfg.preserve_host)
            evbuffer_add_printf(out, "%.*s: %.*s\r\n", (int)f->name_len, f->name, (int)f->value_len,
                                f->value);
        else if (f->name_len == 4 && strncasecmp(f->name, "Host", 4) == 0)
            evbuffer_add_printf(out, "Host: %s\r\n", u->hostport);
        else if (f->name_len == 6 && strncasecmp(f->name, "Origin", 6) == 0)
            evbuffer_add_printf(out, "Origin: %s\r\n", u->origin);
        else
            evbuffer_add_printf(out, "%.*s: %.*s\r\n", (int)f->name_len, f->name, (int)f->value_len,
                                f->value);
    }
    add_set_fields(out, edit);
    evbuffer_add(out, "\r\n", 2);
}

/* Give the input's new bytes to dir's head parser. Returns the head's
 * length in the input once complete, 0 while incomplete, -1 on a bad head
 * (the reason is wsrr_http_parser_error()). */
static ssize_t parse_head(struct conn *c, enum wsrr_dir dir)
{
    struct evbuffer *in = bufferevent_get_input(c->bev[dir]);
    size_t len = evbuffer_get_length(in);
    if (len <= c->head_seen[dir])
        return 0;
    const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)len);
    ssize_t n = wsrr_http_parse(&c->head[dir], p + c->head_seen[dir], len - c->head_seen[dir]);
    if (n == WSRR_AGAIN) {
        c->head_seen[dir] = len;
        return 0;
    }
    if (n < 0)
        return -1;
    return (ssize_t)c->head_seen[dir] + n;
}

static void upstream_event(struct bufferevent *bev, short what, void *arg);
static void upstream_read(struct bufferevent *bev, void *arg);
static void relay_read(struct bufferevent *bev, void *arg);
static void set_reading(struct conn *c, enum wsrr_dir d, bool on);
static void fast_read(evutil_socket_t fd, short what, void *arg);
static void check_backpressure(struct conn *c, enum wsrr_dir dir);
static void connect_upstream(struct conn *c);
static void response_head(struct conn *c);

static void request_complete(struct conn *c, size_t head_len)
{
    struct wsrr_proxy *p = c->p;
    struct evbuffer *in = bufferevent_get_input(c->bev[WSRR_DIR_C2S]);
    const struct wsrr_http_head *h = wsrr_http_parser_head(&c->head[WSRR_DIR_C2S]);
    /* the REQUEST record's seq: handshake faults name it */
    uint64_t req_seq = c->req_seq = c->tap ? wsrr_tap_next_seq(c->tap) : 0;
    /* the head goes to the tap now, as the client sent it; what follows it
     * is fed when it is forwarded */
    feed_tap_buffer(c, WSRR_DIR_C2S, in, head_len);
    c->bytes[WSRR_DIR_C2S] += head_len;
    p->st.bytes[WSRR_DIR_C2S] += head_len;

    c->websocket = wsrr_http_has_token(h, "Upgrade", "websocket");
    if (c->websocket) {
        struct wsrr_ws_info info;
        char why[200];
        int status = wsrr_handshake_check_request(h, &info, why, sizeof(why));
        if (status) {
            evbuffer_drain(in, evbuffer_get_length(in));
            respond(c, status, "%s", why);
            return;
        }
    }
    if (!c->websocket) {
        /* plain HTTP: every request of the connection gets its head
         * rewritten, so bodies must be followed to find the next head */
        char why[200];
        if (wsrr_http_body_request(&c->body, h, why, sizeof(why)) < 0) {
            evbuffer_drain(in, evbuffer_get_length(in));
            respond(c, 400, "%s", why);
            return;
        }
        c->http = true;
        c->in_body = !c->body.done;
    }
    evbuffer_drain(in, head_len);
    bufferevent_disable(c->bev[WSRR_DIR_C2S], EV_READ); /* until the upstream is there */
    set_timeouts(c->bev[WSRR_DIR_C2S], 0); /* the upstream's handshake timeout rules now */
    if (c->websocket && p->cfg.fault_engine) {
        c->path = strndup(h->target, h->target_len);
        faults_attach(c);
        if (faults_handshake(c, h) >= 0 && !handshake_fault(c, req_seq))
            return; /* answered, or the connect comes later */
    }
    connect_upstream(c);
}

static void connect_upstream(struct conn *c)
{
    struct wsrr_proxy *p = c->p;
    struct bufferevent *up = NULL;
    if (p->cli_ctx) {
        SSL *ssl = SSL_new(p->cli_ctx);
        if (ssl && wsrr_tls_client_prepare(ssl, p->up.host) == 0)
            up = bufferevent_openssl_socket_new(p->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        else
            SSL_free(ssl);
        if (up)
            bufferevent_openssl_set_allow_dirty_shutdown(up, 1);
        c->tls[WSRR_DIR_S2C] = true;
    } else {
        up = bufferevent_socket_new(p->base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (up)
            bufferevent_set_max_single_write(up, TOPUP_MAX);
    }
    if (!up) {
        respond(c, 502, "cannot create a socket for the upstream");
        return;
    }
    c->bev[WSRR_DIR_S2C] = up;
    c->state = CS_CONNECTING;
    bufferevent_setcb(up, upstream_read, NULL, upstream_event, c);
    set_timeouts(up, p->cfg.handshake_timeout_ms);
    if (bufferevent_socket_connect_hostname(up, p->dns, AF_UNSPEC, p->up.host, p->up.port) < 0) {
        record_tcp(c, WSRR_DIR_S2C, WSRR_TCP_CONNECT_FAILED, 0, "connect could not start");
        p->st.upstream_failures++;
        respond(c, 502, "cannot connect to %s", p->up.url);
    }
}

static void client_read_head(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    ssize_t n = parse_head(c, WSRR_DIR_C2S);
    if (n == 0)
        return;
    if (n < 0) {
        struct evbuffer *in = bufferevent_get_input(bev);
        size_t len = evbuffer_get_length(in);
        feed_tap_buffer(c, WSRR_DIR_C2S, in, len);
        evbuffer_drain(in, len);
        const char *why = wsrr_http_parser_error(&c->head[WSRR_DIR_C2S]);
        respond(c, strstr(why, "exceeds") ? 431 : 400, "malformed request head: %s", why);
        return;
    }
    request_complete(c, (size_t)n);
}

/* Reading a leg on or off: our own event for a relayed plain leg, the
 * bufferevent's otherwise. */
static void set_reading(struct conn *c, enum wsrr_dir d, bool on)
{
    if (c->rd[d]) {
        if (!on) {
            event_del(c->rd[d]);
            return;
        }
        uint64_t ms = c->p->cfg.idle_timeout_ms;
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000 * 1000)};
        event_add(c->rd[d], ms ? &tv : NULL);
        return;
    }
    if (c->bev[d]) {
        if (on)
            bufferevent_enable(c->bev[d], EV_READ);
        else
            bufferevent_disable(c->bev[d], EV_READ);
    }
}

/* The socket to send dir's bytes to at once, or -1 when they must queue:
 * a TLS destination, one we shut down or saw fail, or output already
 * waiting there (order). */
static evutil_socket_t send_fd(struct conn *c, enum wsrr_dir dir)
{
    enum wsrr_dir leg = other(dir);
    struct bufferevent *dst = c->bev[leg];
    if (!dst || c->tls[leg] || c->shut[dir] || c->io_err[leg] ||
        evbuffer_get_length(bufferevent_get_output(dst)))
        return -1;
    return bufferevent_getfd(dst);
}

/* What a send towards dir's destination returned, as bytes taken (0 when it
 * would block). A failure is kept for the record: the bufferevent's next
 * write fails too and reports it, and a reset must not become EPIPE. */
static size_t sent(struct conn *c, enum wsrr_dir dir, ssize_t r)
{
    if (r >= 0)
        return (size_t)r;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        c->io_err[other(dir)] = errno;
    return 0;
}

/* Bytes just read, with nothing of that direction waiting on either side:
 * record them and send them on from the read buffer; only what the
 * destination does not take goes into its output buffer. Returns false when
 * the bytes must take the buffered way (relay()). */
static bool pass_through(struct conn *c, enum wsrr_dir d, struct evbuffer *in, const uint8_t *p,
                         size_t n)
{
    if (c->state != CS_RELAY || evbuffer_get_length(in))
        return false;
    if (c->f) /* the fault engine looks first */
        return faults_fast(c, d, in, p, n);
    if (send_fd(c, d) < 0)
        return false;
    px_send_bytes(c, d, p, n);
    return true;
}

void px_send_bytes(struct conn *c, enum wsrr_dir dir, const uint8_t *p, size_t n)
{
    struct bufferevent *dst = c->bev[other(dir)];
    if (!n)
        return;
    feed_tap(c, dir, p, n);
    c->bytes[dir] += n;
    c->p->st.bytes[dir] += n;
    if (!dst || c->shut[dir])
        return;
    evutil_socket_t fd = send_fd(c, dir);
    size_t w = fd >= 0 ? sent(c, dir, send(fd, p, n, MSG_NOSIGNAL)) : 0;
    if (w < n) {
        rb_keep(c->p->rb, bufferevent_get_output(dst), p + w, n - w);
        check_backpressure(c, dir);
    }
}

/* A relayed plain leg is readable. The bufferevent would ask FIONREAD before
 * every read and read at most 4 KiB (libevent 2.1): on small messages that
 * ioctl is a third of the proxy's system calls. Read into the proxy's read
 * buffer instead and send from it; what must wait joins the input buffer
 * (rb_keep(): large stretches lent, not copied). The bufferevent still does
 * all the buffered writing. End of stream, errors and the idle timeout go to
 * relay_event() as the bufferevent would report them. */
static void fast_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    enum wsrr_dir d = c->rd[WSRR_DIR_C2S] && fd == event_get_fd(c->rd[WSRR_DIR_C2S]) ? WSRR_DIR_C2S
                                                                                     : WSRR_DIR_S2C;
    struct bufferevent *bev = c->bev[d];
    if (what & EV_TIMEOUT) {
        relay_event(bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, c);
        return;
    }
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t cap = RB_SIZE, total = 0;
    ssize_t got;
    for (;;) {
        uint8_t *buf = rb_data(c->p->rb); /* a new block after a handover */
        got = read(fd, buf, cap);
        if (got <= 0)
            break;
        if (total == 0 && (size_t)got < cap && pass_through(c, d, in, buf, (size_t)got))
            return; /* the common case: one read, one write, no buffer */
        evbuffer_unfreeze(in, 0);
        int rc = rb_keep(c->p->rb, in, buf, (size_t)got);
        evbuffer_freeze(in, 0);
        if (rc < 0) {
            errno = ENOMEM;
            got = -1;
            break;
        }
        total += (size_t)got;
        /* a full buffer: more may be waiting, up to what one turn should move */
        if ((size_t)got < cap || total >= TOPUP_MAX ||
            evbuffer_get_length(in) >= c->p->cfg.max_buffer)
            break;
    }
    int err = got < 0 ? errno : 0;
    if (got < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR))
        got = 1; /* nothing more for now */
    if (total) {
        relay(c, d); /* never closes the connection in the WebSocket relay */
        if (got > 0)
            return;
    }
    if (got == 0) {
        relay_event(bev, BEV_EVENT_READING | BEV_EVENT_EOF, c);
    } else if (got < 0) {
        c->io_err[d] = err;
        relay_event(bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
    }
}

static void start_relay(struct conn *c)
{
    c->state = CS_RELAY;
    if (c->websocket) { /* no more heads: give their memory back (the fault
                           engine keeps the request for rules on headers) */
        for (int i = c->f ? 1 : 0; i < 2; i++) {
            wsrr_http_parser_finish(&c->head[i]);
            wsrr_http_parser_init(&c->head[i], i == WSRR_DIR_S2C, 0, 0);
        }
    }
    for (int d = 0; d < 2; d++) {
        struct bufferevent *b = c->bev[d];
        bufferevent_setcb(b, relay_read, relay_write, relay_event, c);
        set_timeouts(b, c->p->cfg.idle_timeout_ms);
        if (!c->tls[d] && c->websocket) {
            /* from here on we read a plain leg ourselves (fast_read) */
            c->rd[d] =
                event_new(c->p->base, bufferevent_getfd(b), EV_READ | EV_PERSIST, fast_read, c);
            if (c->rd[d])
                bufferevent_disable(b, EV_READ);
        }
        set_reading(c, (enum wsrr_dir)d, true);
    }
    relay(c, WSRR_DIR_C2S);
    relay(c, WSRR_DIR_S2C);
}

/* Does the connection need the fault engine from its response on? Not when
 * no frames will flow, nor when no rule in force can apply to it and none
 * can be added (its messages then cost what they cost without rules). */
static bool engine_needed(const struct conn *c, const struct wsrr_http_head *resp)
{
    const struct wsrr_proxy *p = c->p;
    if (!c->websocket || resp->status != 101)
        return false;
    if (p->cfg.live_rules || hs_rule(c))
        return true;
    return p->rules && c->rc && c->rules_gen == p->rules_gen &&
           wsrr_rules_conn_any(p->rules, c->rc);
}

static void upstream_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    ssize_t n = parse_head(c, WSRR_DIR_S2C);
    if (n == 0)
        return;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (n < 0) {
        const char *why = wsrr_http_parser_error(&c->head[WSRR_DIR_S2C]);
        feed_tap_buffer(c, WSRR_DIR_S2C, in, evbuffer_get_length(in));
        respond(c, 502, "the upstream's response is not HTTP: %s", why);
        return;
    }
    const struct wsrr_http_head *resp = wsrr_http_parser_head(&c->head[WSRR_DIR_S2C]);
    c->status = resp->status;
    if (c->websocket && resp->status == 101) {
        struct wsrr_ws_info info;
        char why[200];
        if (wsrr_handshake_check_response(wsrr_http_parser_head(&c->head[WSRR_DIR_C2S]), resp,
                                          &info, why, sizeof(why)) < 0) {
            /* a client must refuse this 101: say so, with a 502 */
            feed_tap_buffer(c, WSRR_DIR_S2C, in, (size_t)n);
            respond(c, 502, "the upstream's 101 is invalid: %s", why);
            return;
        }
    }
    if (c->f && !engine_needed(c, resp))
        faults_free(c); /* the relay goes the plain way */
    c->resp_len = (size_t)n;
    const struct wsrr_rule *r = c->f ? hs_rule(c) : NULL;
    if (r && r->action.kind == WSRR_ACT_DELAY_UPGRADE) {
        faults_fired(c, r, c->req_seq, WSRR_DIR_C2S, 0);
        c->hs_rule = -1; /* once */
        bufferevent_disable(bev, EV_READ);
        hs_later(c, r->action.ms);
        return;
    }
    if (c->f) {
        response_head(c);
        return;
    }
    /* the head goes to the client exactly as the upstream sent it */
    start_relay(c);
}

/* With the fault engine, the response head goes to the client on its own
 * (edited if a rule says so), so that only frames reach the engine. */
static void response_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev[WSRR_DIR_S2C]);
    const struct wsrr_http_head *resp = wsrr_http_parser_head(&c->head[WSRR_DIR_S2C]);
    const cJSON *edit = head_edits(c, "response");
    struct evbuffer *h = evbuffer_new();
    px_feed_tap(c, WSRR_DIR_S2C, in, c->resp_len);
    if (h && edit) {
        const uint8_t *eol = memchr(resp->raw, '\n', resp->raw_len);
        size_t first = eol ? (size_t)(eol - (const uint8_t *)resp->raw) + 1 : resp->raw_len;
        evbuffer_add(h, resp->raw, first);
        for (size_t i = 0; i < resp->nfields; i++) {
            const struct wsrr_http_field *f = &resp->fields[i];
            if (!edited_field(edit, f->name, f->name_len))
                evbuffer_add_printf(h, "%.*s: %.*s\r\n", (int)f->name_len, f->name,
                                    (int)f->value_len, f->value);
        }
        add_set_fields(h, edit);
        evbuffer_add(h, "\r\n", 2);
        evbuffer_drain(in, c->resp_len);
    } else if (h) {
        evbuffer_remove_buffer(in, h, c->resp_len);
    } else {
        evbuffer_drain(in, c->resp_len);
    }
    if (h) {
        px_send(c, WSRR_DIR_S2C, h);
        evbuffer_free(h);
    }
    faults_start(c, resp);
    start_relay(c);
}

static void hs_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    if (c->state == CS_RESPONSE) { /* delay_upgrade is over */
        bufferevent_enable(c->bev[WSRR_DIR_S2C], EV_READ);
        response_head(c);
    } else if (c->state == CS_REQUEST) { /* delay_connect is over */
        connect_upstream(c);
    }
}

static void upstream_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    struct wsrr_proxy *p = c->p;
    if (what & BEV_EVENT_CONNECTED) {
        char tls[200] = "";
        if (c->tls[WSRR_DIR_S2C]) {
            SSL *ssl = bufferevent_openssl_get_ssl(bev);
            wsrr_tls_describe(ssl, tls, sizeof(tls));
            if (p->cfg.insecure_upstream) {
                size_t n = strlen(tls);
                snprintf(tls + n, sizeof(tls) - n, " (certificate not verified)");
            }
        }
        record_tcp(c, WSRR_DIR_S2C, WSRR_TCP_CONNECTED, 0, tls[0] ? tls : NULL);
        evutil_socket_t fd = bufferevent_getfd(bev);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct evbuffer *out = bufferevent_get_output(bev);
        upstream_request(c, out);
        if (c->http) { /* the parser follows the next requests now */
            wsrr_http_parser_reset(&c->head[WSRR_DIR_C2S]);
            c->head_seen[WSRR_DIR_C2S] = 0;
        }
        c->state = CS_RESPONSE;
        /* client bytes that followed the head travel now; later ones as they come */
        struct bufferevent *cl = c->bev[WSRR_DIR_C2S];
        bufferevent_setcb(cl, relay_read, relay_write, relay_event, c);
        bufferevent_enable(cl, EV_READ);
        relay(c, WSRR_DIR_C2S);
        bufferevent_enable(bev, EV_READ);
        return;
    }
    char detail[640];
    int err = EVUTIL_SOCKET_ERROR();
    if (c->state == CS_CONNECTING) {
        int dns = bufferevent_socket_get_dns_error(bev);
        p->st.upstream_failures++;
        if (what & BEV_EVENT_TIMEOUT) {
            snprintf(detail, sizeof(detail), "connect to %s:%d timed out after %llu ms", p->up.host,
                     p->up.port, (unsigned long long)p->cfg.handshake_timeout_ms);
            record_tcp(c, WSRR_DIR_S2C, WSRR_TCP_TIMEOUT, ETIMEDOUT, detail);
            respond(c, 504, "%s", detail);
        } else {
            char why[200];
            bool tls = !dns && failure_reason(c, WSRR_DIR_S2C, why, sizeof(why), &err);
            if (dns)
                snprintf(detail, sizeof(detail), "cannot resolve %s: %s", p->up.host,
                         evutil_gai_strerror(dns));
            else if (tls)
                snprintf(detail, sizeof(detail), "TLS with %s:%d failed: %s", p->up.host,
                         p->up.port, why);
            else
                snprintf(detail, sizeof(detail), "connect to %s:%d: %s", p->up.host, p->up.port,
                         why);
            record_tcp(c, WSRR_DIR_S2C, tls ? WSRR_TCP_TLS_ERROR : WSRR_TCP_CONNECT_FAILED,
                       dns || tls ? 0 : err, detail);
            respond(c, 502, "%s", detail);
        }
        return;
    }
    /* RESPONSE: the upstream went away or timed out before its head */
    if (what & BEV_EVENT_TIMEOUT) {
        record_tcp(c, WSRR_DIR_S2C, WSRR_TCP_TIMEOUT, ETIMEDOUT, "no response head in time");
        respond(c, 504, "the upstream sent no response within %llu ms",
                (unsigned long long)p->cfg.handshake_timeout_ms);
        return;
    }
    struct evbuffer *in = bufferevent_get_input(bev);
    feed_tap_buffer(c, WSRR_DIR_S2C, in, evbuffer_get_length(in));
    record_tcp(c, WSRR_DIR_S2C, (what & BEV_EVENT_EOF) ? WSRR_TCP_FIN : WSRR_TCP_ERROR,
               (what & BEV_EVENT_EOF) ? 0 : err, NULL);
    respond(c, 502, "the upstream closed the connection before a complete response");
}

/* ---- relay ---- */

/* Client bytes of a plain HTTP connection: bodies go as they are, each
 * further request head is rewritten like the first. A request that asks for
 * an upgrade ends this: what follows it is relayed as it is. Returns false
 * when the connection was answered and is closing. */
static bool relay_http_requests(struct conn *c, struct evbuffer *in, struct evbuffer *out)
{
    while (c->http && evbuffer_get_length(in)) {
        if (c->in_body) {
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            struct wsrr_span piece;
            ssize_t n = wsrr_http_body_feed(&c->body, v.iov_base, v.iov_len, &piece);
            if (n < 0) { /* broken chunk framing: from here on, bytes as they are */
                c->http = false;
                break;
            }
            feed_tap_buffer(c, WSRR_DIR_C2S, in, (size_t)n);
            c->bytes[WSRR_DIR_C2S] += (size_t)n;
            c->p->st.bytes[WSRR_DIR_C2S] += (size_t)n;
            evbuffer_remove_buffer(in, out, (size_t)n);
            c->in_body = !c->body.done;
            continue;
        }
        ssize_t head_len = parse_head(c, WSRR_DIR_C2S);
        if (head_len == 0)
            return true; /* the head is not complete yet */
        if (head_len < 0) {
            const char *why = wsrr_http_parser_error(&c->head[WSRR_DIR_C2S]);
            feed_tap_buffer(c, WSRR_DIR_C2S, in, evbuffer_get_length(in));
            evbuffer_drain(in, evbuffer_get_length(in));
            respond(c, 400, "malformed request head: %s", why);
            return false;
        }
        const struct wsrr_http_head *h = wsrr_http_parser_head(&c->head[WSRR_DIR_C2S]);
        feed_tap_buffer(c, WSRR_DIR_C2S, in, (size_t)head_len);
        c->bytes[WSRR_DIR_C2S] += (size_t)head_len;
        c->p->st.bytes[WSRR_DIR_C2S] += (size_t)head_len;
        upstream_request(c, out);
        evbuffer_drain(in, (size_t)head_len);
        char why[200];
        if (wsrr_http_has_token(h, "Upgrade", "websocket")) {
            c->http = false; /* frames may follow: bytes as they are */
        } else if (wsrr_http_body_request(&c->body, h, why, sizeof(why)) < 0) {
            wsrr_log(WSRR_LOG_INFO, c->id, "request body framing not followed: %s", why);
            c->http = false;
        } else {
            c->in_body = !c->body.done;
        }
        wsrr_http_parser_reset(&c->head[WSRR_DIR_C2S]);
        c->head_seen[WSRR_DIR_C2S] = 0;
    }
    return true;
}

/* Reads of more than 4 KiB per readiness event (wsrr_read_pending()): a
 * 64 KiB frame would otherwise cost 16 trips through epoll, each with its
 * readv, FIONREAD, and epoll_ctl for the destination's write event. */
static void topup_read(struct conn *c, enum wsrr_dir dir, struct evbuffer *in, size_t queued)
{
    if (c->tls[dir] || queued >= c->p->cfg.max_buffer)
        return;
    size_t room = c->p->cfg.max_buffer - queued;
    wsrr_read_pending(in, bufferevent_getfd(c->bev[dir]), room < TOPUP_MAX ? room : TOPUP_MAX);
}

/* Send the bytes in `in` straight to the destination socket when nothing is
 * queued for it. Through the bufferevent every message costs two epoll_ctl
 * calls (arm the write event, write on the next loop turn, disarm) and a
 * loop turn of latency; haproxy and nginx also try the send first. Whatever
 * the socket does not take stays in `in` and goes through the bufferevent. */
static void direct_write(struct conn *c, enum wsrr_dir dir, struct evbuffer *in)
{
    evutil_socket_t fd = send_fd(c, dir);
    if (fd >= 0)
        sent(c, dir, evbuffer_write_atmost(in, fd, TOPUP_MAX));
}

/* The destination of dir does not keep up: stop reading the source until
 * its output drains to half. */
static void check_backpressure(struct conn *c, enum wsrr_dir dir)
{
    struct bufferevent *dst = c->bev[other(dir)];
    if (dst && evbuffer_get_length(bufferevent_get_output(dst)) >= c->p->cfg.max_buffer) {
        set_reading(c, dir, false);
        c->paused[dir] = true;
        bufferevent_setwatermark(dst, EV_WRITE, c->p->cfg.max_buffer / 2, 0);
    }
}

static void relay(struct conn *c, enum wsrr_dir dir)
{
    struct bufferevent *src = c->bev[dir], *dst = c->bev[other(dir)];
    if (!src || !dst)
        return;
    struct evbuffer *in = bufferevent_get_input(src);
    size_t n = evbuffer_get_length(in);
    if (dir == WSRR_DIR_S2C && c->state == CS_RESPONSE) {
        /* the response head is parsed before anything goes to the client */
        upstream_read(src, c);
        return;
    }
    if (!n)
        return;
    struct evbuffer *out = bufferevent_get_output(dst);
    if (!c->paused[dir] && !c->rd[dir] && n >= 4096) {
        /* a full 4 KiB read: more is probably waiting */
        topup_read(c, dir, in, n + evbuffer_get_length(out));
        n = evbuffer_get_length(in);
    }
    if (dir == WSRR_DIR_C2S && c->http) {
        if (!relay_http_requests(c, in, out))
            return;
        /* still following requests: what is left is an incomplete head */
        n = c->http ? 0 : evbuffer_get_length(in);
    }
    if (n && c->f && !c->http) {
        faults_relay(c, dir, in); /* messages go through the rules */
    } else if (n) {
        px_feed_tap(c, dir, in, n);
        direct_write(c, dir, in);
        if (evbuffer_get_length(in))
            evbuffer_add_buffer(out, in);
    }
    check_backpressure(c, dir);
}

void px_feed_tap(struct conn *c, enum wsrr_dir dir, struct evbuffer *b, size_t n)
{
    feed_tap_buffer(c, dir, b, n);
    c->bytes[dir] += n;
    c->p->st.bytes[dir] += n;
}

void px_send(struct conn *c, enum wsrr_dir dir, struct evbuffer *b)
{
    struct bufferevent *dst = c->bev[other(dir)];
    if (!dst || c->shut[dir]) {
        evbuffer_drain(b, evbuffer_get_length(b));
        return;
    }
    direct_write(c, dir, b);
    if (evbuffer_get_length(b)) {
        evbuffer_add_buffer(bufferevent_get_output(dst), b);
        check_backpressure(c, dir);
    }
}

void px_set_reading(struct conn *c, enum wsrr_dir dir, bool on)
{
    set_reading(c, dir, on);
}

/* A FIN towards dir's destination as soon as what is queued for it is out
 * (relay_write() finishes it). */
bool px_half_close(struct conn *c, enum wsrr_dir dir)
{
    struct bufferevent *dst = c->bev[other(dir)];
    if (!dst || c->shut[dir])
        return false;
    if (evbuffer_get_length(bufferevent_get_output(dst)) == 0 && !c->tls[other(dir)]) {
        shutdown(bufferevent_getfd(dst), SHUT_WR);
        c->shut[dir] = true;
        return c->shut[other(dir)];
    }
    c->fin_pending[dir] = true;
    bufferevent_setwatermark(dst, EV_WRITE, 0, 0);
    return false;
}

size_t px_out_len(const struct conn *c, enum wsrr_dir dir)
{
    struct bufferevent *dst = c->bev[other(dir)];
    return dst ? evbuffer_get_length(bufferevent_get_output(dst)) : 0;
}

static void relay_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    enum wsrr_dir dir = bev == c->bev[WSRR_DIR_C2S] ? WSRR_DIR_C2S : WSRR_DIR_S2C;
    relay(c, dir);
}

/* dst drained (to its write watermark): resume its source, or finish a
 * half-close once everything is out. */
static void relay_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state == CS_CLOSING && c->flush_close) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            conn_close(c, c->reset_after_flush, NULL);
        return;
    }
    if (c->state == CS_CLOSING) {
        /* the answer is out: end our side, and keep discarding until the
         * client closes or the linger time is over (relay_event) */
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 && !c->shut[WSRR_DIR_S2C]) {
            c->shut[WSRR_DIR_S2C] = true;
            if (c->tls[WSRR_DIR_C2S])
                conn_close(c, false, NULL);
            else
                shutdown(bufferevent_getfd(bev), SHUT_WR);
        }
        return;
    }
    enum wsrr_dir to = bev == c->bev[WSRR_DIR_C2S] ? WSRR_DIR_S2C : WSRR_DIR_C2S;
    /* `to` is the direction whose destination is bev */
    if (c->paused[to] && !c->eof[to]) {
        c->paused[to] = false;
        set_reading(c, to, true);
        relay(c, to);
    }
    if ((c->eof[to] || c->fin_pending[to]) && !c->shut[to] &&
        evbuffer_get_length(bufferevent_get_output(bev)) == 0 && (!c->f || faults_idle(c, to))) {
        if (c->tls[other(to)]) {
            conn_close(c, false, NULL);
            return;
        }
        shutdown(bufferevent_getfd(bev), SHUT_WR);
        c->shut[to] = true;
        if (c->shut[other(to)])
            conn_close(c, false, NULL);
    }
}

static void relay_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    enum wsrr_dir dir = bev == c->bev[WSRR_DIR_C2S] ? WSRR_DIR_C2S : WSRR_DIR_S2C;
    if (c->state == CS_CLOSING) {
        conn_close(c, false, NULL);
        return;
    }
    if (what & BEV_EVENT_CONNECTED) { /* the client's TLS handshake is done */
        open_record(c);
        return;
    }
    if (c->state == CS_REQUEST || c->state == CS_CONNECTING) {
        /* the client, before anything was forwarded */
        if ((what & BEV_EVENT_TIMEOUT) && c->state == CS_REQUEST) {
            record_tcp(c, dir, WSRR_TCP_TIMEOUT, ETIMEDOUT, "no complete request head in time");
            respond(c, 408, "no complete request head within %llu ms",
                    (unsigned long long)c->p->cfg.handshake_timeout_ms);
            return;
        }
        char why[200];
        int err = 0;
        bool tls = !(what & BEV_EVENT_EOF) && failure_reason(c, dir, why, sizeof(why), &err);
        if (what & BEV_EVENT_EOF)
            record_tcp(c, dir, WSRR_TCP_FIN, 0, NULL);
        else
            record_tcp(c, dir, tls ? WSRR_TCP_TLS_ERROR : WSRR_TCP_ERROR, tls ? 0 : err, why);
        conn_close(c, false,
                   tls ? "the client's TLS handshake failed"
                       : "the client left before the upgrade");
        return;
    }
    if (what & BEV_EVENT_EOF) {
        relay(c, dir); /* whatever came with the FIN */
        if (c->state == CS_CLOSING)
            return;
        record_tcp(c, dir, WSRR_TCP_FIN, 0, NULL);
        c->eof[dir] = true;
        set_reading(c, dir, false);
        if (c->state == CS_RESPONSE && dir == WSRR_DIR_S2C) {
            upstream_event(bev, what, c);
            return;
        }
        if (c->f) {
            faults_eof(c, dir, bufferevent_get_input(bev));
            if (!faults_idle(c, dir))
                return; /* the engine sends the FIN after what it still holds */
        }
        struct bufferevent *dst = c->bev[other(dir)];
        if (c->tls[other(dir)] && evbuffer_get_length(bufferevent_get_output(dst)) == 0) {
            /* TLS has no half-close a peer would understand: end it all once
             * everything the other side sent is out */
            conn_close(c, false, NULL);
            return;
        }
        if (evbuffer_get_length(bufferevent_get_output(dst)) == 0) {
            shutdown(bufferevent_getfd(dst), SHUT_WR);
            c->shut[dir] = true;
            if (c->shut[other(dir)] || c->eof[other(dir)]) {
                conn_close(c, false, NULL);
                return;
            }
        } else {
            bufferevent_setwatermark(dst, EV_WRITE, 0, 0); /* tell me when it is all out */
        }
        return;
    }
    char detail[260];
    if (what & BEV_EVENT_TIMEOUT) {
        snprintf(detail, sizeof(detail), "no traffic for %llu ms",
                 (unsigned long long)c->p->cfg.idle_timeout_ms);
        record_tcp(c, dir, WSRR_TCP_TIMEOUT, ETIMEDOUT, detail);
        conn_close(c, false, detail);
        return;
    }
    int err = 0;
    char why[200];
    bool tls = failure_reason(c, dir, why, sizeof(why), &err);
    /* EPIPE: our write found the peer gone (it closed after answering);
     * ECONNRESET: the peer reset */
    bool rst = !tls && err == ECONNRESET;
    c->p->st.errors++;
    snprintf(detail, sizeof(detail), "%s leg: %s", leg_name(dir), why);
    record_tcp(c, dir,
               rst   ? WSRR_TCP_RST
               : tls ? WSRR_TCP_TLS_ERROR
                     : WSRR_TCP_ERROR,
               tls ? 0 : err, detail);
    /* What that leg sent before it failed still goes to the other side
     * (a 400 the upstream answered before closing, say); then an abrupt end
     * is passed on abruptly. */
    struct bufferevent *to = c->bev[other(dir)];
    if (to && evbuffer_get_length(bufferevent_get_output(to))) {
        if (c->rd[dir]) {
            event_free(c->rd[dir]);
            c->rd[dir] = NULL;
        }
        bufferevent_free(c->bev[dir]);
        c->bev[dir] = NULL;
        c->state = CS_CLOSING;
        c->flush_close = true;
        c->reset_after_flush = rst;
        set_reading(c, other(dir), false);
        bufferevent_setwatermark(to, EV_WRITE, 0, 0);
        set_timeouts(to, LINGER_MS);
        return;
    }
    conn_close(c, rst, detail);
}

/* ---- accepting ---- */

static void format_addr(const struct sockaddr *sa, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        evutil_inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, cap, "%s:%d", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        evutil_inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, cap, "[%s]:%d", host, port);
    } else {
        snprintf(out, cap, "?");
    }
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct wsrr_proxy *p = arg;
    struct conn *c = calloc(1, sizeof(*c));
    struct bufferevent *cl = NULL;
    if (c && p->srv_ctx) {
        SSL *ssl = SSL_new(p->srv_ctx);
        cl = ssl ? bufferevent_openssl_socket_new(p->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                  BEV_OPT_CLOSE_ON_FREE)
                 : NULL;
        if (cl) {
            bufferevent_openssl_set_allow_dirty_shutdown(cl, 1);
            c->tls[WSRR_DIR_C2S] = true;
        } else {
            SSL_free(ssl);
        }
    } else if (c) {
        cl = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (cl)
            bufferevent_set_max_single_write(cl, TOPUP_MAX);
    }
    if (!cl) {
        free(c);
        evutil_closesocket(fd);
        wsrr_log(WSRR_LOG_ERROR, 0, "out of memory accepting a connection");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->p = p;
    c->id = ++p->next_id;
    c->hs_rule = -1;
    c->t_start = wsrr_now_ns();
    c->bev[WSRR_DIR_C2S] = cl;
    format_addr(sa, c->client, sizeof(c->client));
    wsrr_http_parser_init(&c->head[WSRR_DIR_C2S], false, 0, 0);
    wsrr_http_parser_init(&c->head[WSRR_DIR_S2C], true, 0, 0);
    if (p->w && !p->capture_failed) {
        struct wsrr_tap_opts o = {.redact = p->red};
        c->tap = wsrr_tap_new(p->rec_paused ? NULL : p->w, c->id, &o);
        if (!c->tls[WSRR_DIR_C2S])
            open_record(c);
    }
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->st.accepted++;
    p->st.active++;
    wsrr_log(WSRR_LOG_DEBUG, c->id, "accepted %s", c->client);
    bufferevent_setcb(cl, client_read_head, relay_write, relay_event, c);
    set_timeouts(cl, p->cfg.handshake_timeout_ms);
    bufferevent_enable(cl, EV_READ);
}

static void accept_error(struct evconnlistener *lis, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    wsrr_log(WSRR_LOG_WARN, 0, "accept: %s", evutil_socket_error_to_string(err));
    /* EMFILE and friends: the listener retries on the next readiness */
}

/* ---- setup ---- */

static int parse_upstream(struct upstream *u, const char *url, char *err, size_t errlen)
{
    struct evhttp_uri *uri = evhttp_uri_parse_with_flags(url, 0);
    if (!uri)
        return wsrr_seterr(err, errlen, EINVAL,
                           "--upstream %s: not a URL (expected ws://HOST[:PORT][/PATH])", url);
    const char *scheme = evhttp_uri_get_scheme(uri);
    const char *host = evhttp_uri_get_host(uri);
    int rc = 0;
    if (!scheme || (strcmp(scheme, "ws") && strcmp(scheme, "wss") && strcmp(scheme, "http") &&
                    strcmp(scheme, "https")))
        rc = wsrr_seterr(err, errlen, EINVAL,
                         "--upstream %s: scheme must be ws, wss, http or https", url);
    else if (!host || !*host)
        rc = wsrr_seterr(err, errlen, EINVAL, "--upstream %s: no host", url);
    if (rc == 0) {
        u->tls = !strcmp(scheme, "wss") || !strcmp(scheme, "https");
        snprintf(u->host, sizeof(u->host), "%s", host);
        int port = evhttp_uri_get_port(uri);
        u->port = port > 0 ? port : u->tls ? 443 : 80;
        const char *path = evhttp_uri_get_path(uri);
        snprintf(u->prefix, sizeof(u->prefix), "%s", path ? path : "");
        size_t pl = strlen(u->prefix);
        while (pl && u->prefix[pl - 1] == '/')
            u->prefix[--pl] = '\0';
        bool v6 = strchr(u->host, ':') != NULL;
        bool default_port = u->port == (u->tls ? 443 : 80);
        char hp[280];
        snprintf(hp, sizeof(hp), "%s%.260s%s", v6 ? "[" : "", u->host, v6 ? "]" : "");
        if (default_port)
            snprintf(u->hostport, sizeof(u->hostport), "%s", hp);
        else
            snprintf(u->hostport, sizeof(u->hostport), "%s:%d", hp, u->port);
        snprintf(u->origin, sizeof(u->origin), "%s://%s", u->tls ? "https" : "http", u->hostport);
        snprintf(u->url, sizeof(u->url), "%s://%s%s", u->tls ? "wss" : "ws", u->hostport,
                 u->prefix);
    }
    evhttp_uri_free(uri);
    return rc;
}

struct wsrr_proxy *wsrr_proxy_new(struct event_base *base, const struct wsrr_proxy_config *c,
                                  char *err, size_t errlen)
{
    struct wsrr_proxy *p = calloc(1, sizeof(*p));
    if (!p) {
        wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        return NULL;
    }
    p->base = base;
    p->cfg = *c;
    p->cfg.rules = NULL;
    if (c->rules) {
        p->cfg.fault_engine = true;
        wsrr_proxy_set_rules(p, c->rules);
    }
    if (!p->cfg.flush_interval_ms)
        p->cfg.flush_interval_ms = DEFAULT_FLUSH_MS;
    if (!p->cfg.grace_ms)
        p->cfg.grace_ms = DEFAULT_GRACE_MS;
    if (!p->cfg.handshake_timeout_ms)
        p->cfg.handshake_timeout_ms = DEFAULT_HANDSHAKE_MS;
    if (!p->cfg.max_buffer)
        p->cfg.max_buffer = DEFAULT_MAX_BUFFER;

    if (!(p->rb = rb_new())) {
        wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        goto err_free;
    }
    if (!c->upstream) {
        wsrr_seterr(err, errlen, EINVAL, "--upstream is required");
        goto err_free;
    }
    if (parse_upstream(&p->up, c->upstream, err, errlen) < 0)
        goto err_free;

    /* evutil_parse_sockaddr_port refuses port 0 ("any free port"), which
     * tests and scripts want: parse with port 1 and put the 0 back */
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char addr[300];
    snprintf(addr, sizeof(addr), "%s", c->listen ? c->listen : "");
    size_t al = strlen(addr);
    bool any_port = al > 2 && strcmp(addr + al - 2, ":0") == 0;
    if (any_port)
        addr[al - 1] = '1';
    if (!c->listen || evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) < 0) {
        wsrr_seterr(err, errlen, EINVAL,
                    "--listen %s: expected HOST:PORT with a port of 1-65535 or 0 (e.g. "
                    "127.0.0.1:8080 or [::1]:8080)",
                    c->listen ? c->listen : "(missing)");
        goto err_free;
    }
    if (any_port) {
        if (ss.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
        else
            ((struct sockaddr_in *)&ss)->sin_port = 0;
    }

    p->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!p->dns)
        p->dns = evdns_base_new(base, 0); /* no resolv.conf: numeric hosts still work */

    if (c->redact)
        p->red = wsrr_redactor_new();

    if (c->keylog) {
        int fd = open(c->keylog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        p->keylog = fd >= 0 ? fdopen(fd, "a") : NULL;
        if (!p->keylog) {
            wsrr_seterr(err, errlen, errno, "--keylog %s: %s", c->keylog, strerror(errno));
            goto err_tls;
        }
    }
    if (c->listen_tls) {
        if (!c->tls_cert) {
            char dir[4096];
            const char *d = c->ca_dir ? c->ca_dir : wsrr_ca_default_dir(dir, sizeof(dir));
            if (!(p->ca = wsrr_ca_open(d, true, err, errlen)))
                goto err_tls;
        }
        p->srv_ctx = wsrr_tls_server_ctx(c->tls_cert, c->tls_key, p->ca, "localhost", err, errlen);
        if (!p->srv_ctx)
            goto err_tls;
        if (p->keylog)
            wsrr_tls_set_keylog(p->srv_ctx, p->keylog);
    }
    if (p->up.tls) {
        p->cli_ctx = wsrr_tls_client_ctx(c->upstream_ca, c->insecure_upstream, c->upstream_cert,
                                         c->upstream_key, err, errlen);
        if (!p->cli_ctx)
            goto err_tls;
        if (p->keylog)
            wsrr_tls_set_keylog(p->cli_ctx, p->keylog);
        if (c->insecure_upstream)
            wsrr_log(WSRR_LOG_WARN, 0,
                     "--insecure-upstream: the upstream's certificate is NOT verified (this is "
                     "written into the capture)");
    }
    if (c->record) {
        struct stat st;
        snprintf(p->record_arg, sizeof(p->record_arg), "%s", c->record);
        p->record_dir = stat(c->record, &st) == 0 && S_ISDIR(st.st_mode);
    }

    p->lis = evconnlistener_new_bind(
        base, accept_cb, p, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
        -1 /* backlog: the system maximum */, (struct sockaddr *)&ss, sslen);
    if (!p->lis) {
        int e = EVUTIL_SOCKET_ERROR();
        wsrr_seterr(err, errlen, e, "--listen %s: %s", c->listen, evutil_socket_error_to_string(e));
        goto err_tls;
    }
    evconnlistener_set_error_cb(p->lis, accept_error);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    getsockname(evconnlistener_get_fd(p->lis), (struct sockaddr *)&bound, &blen);
    format_addr((struct sockaddr *)&bound, p->listen_addr, sizeof(p->listen_addr));

    if (c->record && open_capture(p, err, errlen) < 0)
        goto err_lis;
    if (p->w) {
        struct timeval tv = {(time_t)(p->cfg.flush_interval_ms / 1000),
                             (suseconds_t)(p->cfg.flush_interval_ms % 1000 * 1000)};
        p->flush_ev = event_new(base, -1, EV_PERSIST, flush_cb, p);
        event_add(p->flush_ev, &tv);
    }
    return p;

err_lis:
    evconnlistener_free(p->lis);
err_tls:
    SSL_CTX_free(p->srv_ctx);
    SSL_CTX_free(p->cli_ctx);
    wsrr_ca_free(p->ca);
    if (p->keylog)
        fclose(p->keylog);
    if (p->dns)
        evdns_base_free(p->dns, 0);
    wsrr_redactor_free(p->red);
err_free:
    wsrr_rules_free(p->rules);
    rb_free(p->rb);
    free(p);
    return NULL;
}

const char *wsrr_proxy_listen_address(const struct wsrr_proxy *p)
{
    return p->listen_addr;
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wsrr_proxy *p = arg;
    size_t n = 0;
    for (struct conn *c = p->conns; c; c = c->next)
        n++;
    if (n)
        wsrr_log(WSRR_LOG_INFO, 0, "grace period over: closing %zu connection%s", n,
                 n == 1 ? "" : "s");
    while (p->conns)
        conn_close(p->conns, false, "the proxy is shutting down");
    maybe_finished(p);
}

void wsrr_proxy_shutdown(struct wsrr_proxy *p)
{
    if (p->stopping)
        return;
    p->stopping = true;
    if (p->lis) {
        evconnlistener_free(p->lis);
        p->lis = NULL;
    }
    if (!p->conns) {
        maybe_finished(p);
        return;
    }
    wsrr_log(WSRR_LOG_INFO, 0, "stopped accepting; %llu connection(s) have %llu ms to finish",
             (unsigned long long)p->st.active, (unsigned long long)p->cfg.grace_ms);
    struct timeval tv = {(time_t)(p->cfg.grace_ms / 1000),
                         (suseconds_t)(p->cfg.grace_ms % 1000 * 1000)};
    p->grace_ev = evtimer_new(p->base, grace_cb, p);
    evtimer_add(p->grace_ev, &tv);
}

void wsrr_proxy_stats(const struct wsrr_proxy *p, struct wsrr_proxy_stats *st)
{
    *st = p->st;
}

void wsrr_proxy_free(struct wsrr_proxy *p)
{
    if (!p)
        return;
    p->stopping = true;
    while (p->conns)
        conn_close(p->conns, false, "the proxy is shutting down");
    if (p->lis)
        evconnlistener_free(p->lis);
    maybe_finished(p);
    wsrr_redactor_free(p->red);
    SSL_CTX_free(p->srv_ctx);
    SSL_CTX_free(p->cli_ctx);
    wsrr_ca_free(p->ca);
    if (p->keylog)
        fclose(p->keylog);
    wsrr_rules_free(p->rules);
    free(p->pay);
    free(p->pcs);
    rb_free(p->rb);
    free(p);
}

/* ---- live control ---- */

int wsrr_proxy_set_rules(struct wsrr_proxy *p, struct wsrr_rules *rs)
{
    if (!p->cfg.fault_engine) {
        wsrr_rules_free(rs);
        return -1;
    }
    if (rs && !rs->seed_given) {
        /* a seed of our own, written into the capture: the run can be repeated */
        if (p->rules)
            rs->seed = p->rules->seed;
        else if (RAND_bytes((unsigned char *)&rs->seed, sizeof(rs->seed)) != 1)
            rs->seed = wsrr_now_ns();
        rs->seed_given = true;
    }
    /* global counts carry over to rules of the same name */
    for (size_t i = 0; rs && p->rules && i < rs->count; i++) {
        int k = wsrr_rules_find(p->rules, rs->rules[i].name);
        if (k >= 0)
            rs->rules[i].fired = p->rules->rules[k].fired;
    }
    wsrr_rules_free(p->rules);
    p->rules = rs;
    if (p->rules_gen++ && p->w && !p->rec_paused) {
        /* a replacement while running: the capture says what is in force
         * from here on, so that the run can be understood and repeated */
        char *doc = wsrr_rules_to_json(rs);
        char *text = NULL;
        if (doc && asprintf(&text, "fault rules replaced: %s", doc) > 0) {
            struct wsrr_record r = {.kind = WSRR_REC_NOTE, .ts = WSRR_TS_NOW};
            r.u.note.text = (struct wsrr_span){(const uint8_t *)text, strlen(text)};
            check_writer(p, wsrr_capture_append(p->w, &r));
        }
        free(text);
        cJSON_free(doc);
    }
    if (p->w)
        wsrr_log(WSRR_LOG_INFO, 0, "fault rules: %zu in force (seed %llu)", rs ? rs->count : 0,
                 (unsigned long long)(rs ? rs->seed : 0));
    return 0;
}

const struct wsrr_rules *wsrr_proxy_rules(const struct wsrr_proxy *p)
{
    return p->rules;
}

static struct conn *find_conn(struct wsrr_proxy *p, uint32_t id, char *err, size_t errlen)
{
    for (struct conn *c = p->conns; c; c = c->next)
        if (c->id == id)
            return c;
    snprintf(err, errlen, "no connection %u", id);
    return NULL;
}

void wsrr_proxy_foreach_conn(const struct wsrr_proxy *p, wsrr_proxy_conn_cb cb, void *arg)
{
    uint64_t now = wsrr_now_ns();
    for (const struct conn *c = p->conns; c; c = c->next) {
        const struct wsrr_tap_state *ts = c->tap ? wsrr_tap_state(c->tap) : NULL;
        struct wsrr_proxy_conn_info ci = {
            .id = c->id,
            .ordinal = c->id,
            .client = c->client,
            .path = c->path ? c->path : "",
            .state = c->state == CS_RELAY     ? "open"
                     : c->state == CS_CLOSING ? "closing"
                                              : "handshake",
            .websocket = c->websocket && c->state == CS_RELAY,
            .age_ms = (now - c->t_start) / 1000000,
            .bytes = {c->bytes[0], c->bytes[1]},
            .frames = {ts ? ts->frames[0] : 0, ts ? ts->frames[1] : 0},
            .messages = {c->messages[0], c->messages[1]},
            .faults = c->faults,
        };
        cb(&ci, arg);
    }
}

int wsrr_proxy_close_conn(struct wsrr_proxy *p, uint32_t id, int code, const char *reason,
                          size_t reason_len, int to, char *err, size_t errlen)
{
    struct conn *c = find_conn(p, id, err, errlen);
    if (!c)
        return -1;
    if (code == 0 || !c->f || c->state != CS_RELAY) {
        if (code) {
            snprintf(err, errlen,
                     "connection %u is not a relayed WebSocket: it can only be cut (code 0)", id);
            return -1;
        }
        if (c->tap)
            wsrr_tap_note(c->tap, WSRR_TS_NOW, "control API: connection cut");
        conn_close(c, false, "cut through the control API");
        return 0;
    }
    return faults_close_conn(c, code, reason, reason_len, to);
}

int wsrr_proxy_inject(struct wsrr_proxy *p, uint32_t id, int to, uint8_t opcode,
                      const uint8_t *payload, size_t len, char *err, size_t errlen)
{
    struct conn *c = find_conn(p, id, err, errlen);
    if (!c)
        return -1;
    if (!c->f || c->state != CS_RELAY) {
        snprintf(err, errlen, "connection %u is not a relayed WebSocket", id);
        return -1;
    }
    if (faults_inject(c, to, opcode, payload, len) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

bool wsrr_proxy_set_recording(struct wsrr_proxy *p, bool on)
{
    bool was = !p->rec_paused;
    if (was == on || !p->w)
        return was;
    struct wsrr_record r = {.kind = WSRR_REC_NOTE, .ts = WSRR_TS_NOW};
    const char *txt = on ? "recording resumed (control API)" : "recording paused (control API)";
    r.u.note.text = (struct wsrr_span){(const uint8_t *)txt, strlen(txt)};
    if (!on)
        check_writer(p, wsrr_capture_append(p->w, &r));
    p->rec_paused = !on;
    for (struct conn *c = p->conns; c; c = c->next)
        if (c->tap)
            wsrr_tap_set_writer(c->tap, on ? p->w : NULL);
    if (on)
        check_writer(p, wsrr_capture_append(p->w, &r));
    return was;
}

bool wsrr_proxy_recording(const struct wsrr_proxy *p)
{
    return p->w != NULL && !p->rec_paused;
}
