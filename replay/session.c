/* session.c — a capture read into connections and one ordered list of steps
 * (session.h). */
#include "session.h"

#include "wsrr/capture.h"
#include "wsrr/common.h"
#include "wsrr/frame.h"
#include "wsrr/handshake.h"
#include "wsrr/rules.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What is being put together per connection while reading. */
struct building {
    bool seen_request, websocket, server_closed;
    uint8_t first_end; /* which side's transport ended first: 1 client, 2 server */
    uint8_t *msg[2];   /* a data message in progress, per sender */
    size_t msg_len[2], msg_cap[2];
    uint8_t msg_op[2];
    bool in_msg[2], compressed[2];
    bool deflate; /* the server's answer accepted permessage-deflate */
};

struct loader {
    struct rp_session *s;
    uint32_t *index;    /* capture id -> conns index + 1, slot_of() */
    size_t index_cap;   /* slots */
    struct building *b; /* parallel to s->conns */
    size_t conns_cap, steps_cap;
    char *err;
    size_t errlen;
};

static int fail(struct loader *l, const struct wsrr_record *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct loader *l, const struct wsrr_record *r, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (r)
        snprintf(l->err, l->errlen, "%s: record %llu (connection %u): %s", l->s->path,
                 (unsigned long long)r->seq, r->conn, what);
    else
        snprintf(l->err, l->errlen, "%s: %s", l->s->path, what);
    return -1;
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * size);
    if (q) {
        memset((char *)q + *cap * size, 0, (n - *cap) * size);
        *cap = n;
    }
    return q;
}

/* The session's connection for a capture id, made on first sight; -1 when
 * out of memory or the id is out of range. */
/* The id -> index map: open addressing over a power-of-two table kept at
 * most half full; slots hold id and index + 1 (0: empty). Ids are anything
 * a capture holds, dense or not. */
static uint32_t *slot_of(uint32_t *tab, size_t cap, uint32_t id)
{
    size_t i = (id * 2654435761u) & (cap - 1);
    while (tab[2 * i] && tab[2 * i] != id)
        i = (i + 1) & (cap - 1);
    return &tab[2 * i];
}

static bool index_grow(struct loader *l)
{
    size_t cap = l->index_cap ? 2 * l->index_cap : 64;
    uint32_t *tab = calloc(2 * cap, sizeof(*tab));
    if (!tab)
        return false;
    for (size_t i = 0; i < l->index_cap; i++)
        if (l->index[2 * i]) {
            uint32_t *sl = slot_of(tab, cap, l->index[2 * i]);
            sl[0] = l->index[2 * i];
            sl[1] = l->index[2 * i + 1];
        }
    free(l->index);
    l->index = tab;
    l->index_cap = cap;
    return true;
}

/* The session's connection for a capture id, made on first sight; -1 when
 * out of memory. */
static int conn_of(struct loader *l, uint32_t id)
{
    struct rp_session *s = l->s;
    if (2 * (s->nconns + 1) > l->index_cap && !index_grow(l))
        return -1;
    uint32_t *sl = slot_of(l->index, l->index_cap, id);
    if (sl[0])
        return (int)sl[1] - 1;
    size_t cap = l->conns_cap;
    struct rp_conn *c = grow(s->conns, &cap, s->nconns + 1, sizeof(*c));
    if (!c)
        return -1;
    s->conns = c;
    size_t bcap = l->conns_cap;
    struct building *b = grow(l->b, &bcap, s->nconns + 1, sizeof(*b));
    if (!b)
        return -1;
    l->b = b;
    l->conns_cap = cap;
    c[s->nconns].id = id;
    c[s->nconns].rec.end = RP_END_OPEN;
    sl[0] = id;
    sl[1] = (uint32_t)++s->nconns;
    return (int)s->nconns - 1;
}

static struct rp_step *add_step(struct loader *l, const struct wsrr_record *r, enum rp_kind k,
                                int ci, const uint8_t *data, size_t len)
{
    struct rp_session *s = l->s;
    struct rp_step *st = grow(s->steps, &l->steps_cap, s->nsteps + 1, sizeof(*st));
    if (!st)
        return NULL;
    s->steps = st;
    st = &st[s->nsteps];
    *st = (struct rp_step){.kind = k, .conn = (uint32_t)ci, .seq = r->seq, .ts = r->ts};
    if (len) {
        if (!(st->data = malloc(len)))
            return NULL;
        memcpy(st->data, data, len);
        st->len = len;
    }
    s->nsteps++;
    return st;
}

static int on_request(struct loader *l, const struct wsrr_record *r, int ci)
{
    struct rp_conn *c = &l->s->conns[ci];
    struct wsrr_http_parser hp;
    wsrr_http_parser_init(&hp, false, 0, 0);
    ssize_t n = wsrr_http_parse(&hp, r->u.http.head.p, r->u.http.head.n);
    const struct wsrr_http_head *h = n > 0 ? wsrr_http_parser_head(&hp) : NULL;
    l->b[ci].websocket = h && wsrr_http_has_token(h, "Upgrade", "websocket");
    wsrr_http_parser_finish(&hp);
    if (!l->b[ci].websocket)
        return 0; /* plain HTTP through the proxy: not replayed */
    if (!(c->head = malloc(r->u.http.head.n + 1)))
        return fail(l, r, "out of memory");
    memcpy(c->head, r->u.http.head.p, r->u.http.head.n);
    c->head[r->u.http.head.n] = '\0';
    c->head_len = r->u.http.head.n;
    return add_step(l, r, RP_OPEN, ci, NULL, 0) ? 0 : fail(l, r, "out of memory");
}

static int on_response(struct loader *l, const struct wsrr_record *r, int ci)
{
    struct rp_conn *c = &l->s->conns[ci];
    if (!c->response && (c->response = malloc(r->u.http.head.n + 1))) {
        memcpy(c->response, r->u.http.head.p, r->u.http.head.n);
        c->response[r->u.http.head.n] = '\0';
    }
    struct wsrr_http_parser hp;
    wsrr_http_parser_init(&hp, true, 0, 0);
    ssize_t n = wsrr_http_parse(&hp, r->u.http.head.p, r->u.http.head.n);
    int status = n > 0 ? wsrr_http_parser_head(&hp)->status : 0;
    wsrr_http_parser_finish(&hp);
    if (!status)
        return fail(l, r, "the response head does not parse");
    struct rp_step *st = add_step(l, r, RP_UPGRADED, ci, NULL, 0);
    if (!st)
        return fail(l, r, "out of memory");
    st->code = (uint16_t)status;
    l->b[ci].deflate = strcasestr(c->response ? c->response : "", "permessage-deflate") != NULL;
    if (status != 101) {
        l->s->conns[ci].rec.end = RP_END_REJECTED;
        l->s->conns[ci].rec.status = status;
        l->s->conns[ci].rec.by_server = true;
    }
    return 0;
}

static int append_msg(struct building *b, int dir, const uint8_t *p, size_t n)
{
    uint8_t *m = grow(b->msg[dir], &b->msg_cap[dir], b->msg_len[dir] + n, 1);
    if (!m)
        return -1;
    b->msg[dir] = m;
    memcpy(m + b->msg_len[dir], p, n);
    b->msg_len[dir] += n;
    return 0;
}

/* A client frame sent as is: what about its form was not the plain one. */
static void keep_wire(struct rp_step *st, const struct wsrr_rec_frame *f)
{
    uint8_t minimal = f->len <= 125 ? 7 : f->len <= 65535 ? 16 : 64;
    st->rsv = f->rsv;
    st->len_width = f->len_width != minimal ? f->len_width : 0;
    st->unmasked = !(f->fflags & WSRR_FF_MASKED);
}

static int on_frame(struct loader *l, const struct wsrr_record *r, int ci)
{
    const struct wsrr_rec_frame *f = &r->u.frame;
    struct building *b = &l->b[ci];
    struct rp_conn *c = &l->s->conns[ci];
    int dir = f->dir == WSRR_DIR_C2S ? 0 : 1;
    struct rp_step *st;
    if (dir && (r->flags & WSRR_RF_INJECTED))
        return 0; /* wsrr sent it (a fault), not the server: nothing to expect */
    /* a payload kept shorter than it was cannot be sent or compared as it
     * was (redaction's empty compressed frames are fine: the message is
     * read from the inflated text) */
    /* RSV1 is compression only where permessage-deflate was agreed;
     * elsewhere it is a client's (or fuzz's) invalid frame, sent as is */
    bool rsv1 = (f->rsv & WSRR_RSV1) && b->deflate;
    bool whole_from_message = rsv1 || (b->in_msg[dir] && b->compressed[dir]);
    if ((r->flags & WSRR_RF_TRUNCATED) && f->opcode < 8 && !whole_from_message)
        return fail(l, r,
                    "the payload was recorded cut short (%zu of %llu bytes): it cannot be "
                    "replayed as it was",
                    f->payload.n, (unsigned long long)f->len);
    if (f->opcode >= 8) { /* control frames */
        uint16_t code = f->opcode == WSRR_OP_CLOSE && f->payload.n >= 2
                            ? (uint16_t)(f->payload.p[0] << 8 | f->payload.p[1])
                            : 0;
        const uint8_t *reason = f->payload.n > 2 ? f->payload.p + 2 : NULL;
        size_t rlen = f->payload.n > 2 ? f->payload.n - 2 : 0;
        if (f->opcode == WSRR_OP_CLOSE) {
            if (!dir && b->server_closed)
                return 0; /* the client's answer to the server's close: replay answers itself */
            if (dir)
                b->server_closed = true;
            st = add_step(l, r, dir ? RP_CLOSE : RP_SEND, ci, reason, rlen);
            if (st) {
                st->opcode = WSRR_OP_CLOSE;
                st->fin = true;
                st->code = code;
            }
        } else if (f->opcode == WSRR_OP_PING && !dir) {
            st = add_step(l, r, RP_SEND, ci, f->payload.p, f->payload.n);
            if (st) {
                st->opcode = WSRR_OP_PING;
                st->fin = true;
            }
        } else if (!dir && f->opcode != WSRR_OP_PONG) { /* a reserved control opcode */
            st = add_step(l, r, RP_SEND, ci, f->payload.p, f->payload.n);
            if (st) {
                st->opcode = f->opcode;
                st->fin = f->fin;
                keep_wire(st, f);
            }
        } else {
            return 0; /* pongs are answered by the replay itself; server pings too */
        }
        return st ? 0 : fail(l, r, "out of memory");
    }
    if (f->opcode != WSRR_OP_CONT) {
        b->in_msg[dir] = true;
        b->msg_op[dir] = f->opcode;
        b->compressed[dir] = rsv1;
        b->msg_len[dir] = 0;
    }
    bool last = f->fin;
    if (!dir && !b->compressed[dir]) { /* client, plain: frame by frame, as sent */
        st = add_step(l, r, RP_SEND, ci, f->payload.p, f->payload.n);
        if (!st)
            return fail(l, r, "out of memory");
        st->opcode = f->opcode;
        st->fin = f->fin;
        keep_wire(st, f);
        if (last)
            b->in_msg[dir] = false;
        return 0;
    }
    /* a server message, or a compressed client one: whole, inflated */
    if (!b->compressed[dir] && append_msg(b, dir, f->payload.p, f->payload.n) < 0)
        return fail(l, r, "out of memory");
    if (!last)
        return 0;
    const uint8_t *m = b->msg[dir];
    size_t mlen = b->msg_len[dir];
    if (b->compressed[dir]) {
        if (!(f->fflags & WSRR_FF_MESSAGE))
            return fail(l, r, "a compressed message whose inflated text was not recorded%s",
                        f->fflags & WSRR_FF_INFLATE_ERROR ? " (it did not inflate)" : "");
        m = f->message.p;
        mlen = f->message.n;
    }
    st = add_step(l, r, dir ? RP_MESSAGE : RP_SEND, ci, m, mlen);
    if (!st)
        return fail(l, r, "out of memory");
    st->opcode = b->msg_op[dir] ? b->msg_op[dir] : WSRR_OP_BINARY;
    st->fin = true;
    if (dir)
        st->nth = ++c->nmessages;
    b->in_msg[dir] = false;
    return 0;
}

static int on_close(struct loader *l, const struct wsrr_record *r, int ci)
{
    struct rp_outcome *o = &l->s->conns[ci].rec;
    const struct wsrr_rec_close *cl = &r->u.close;
    /* the summary comes last: a reset after a clean close handshake is
     * how that server leaves, not a failure */
    if (o->end == RP_END_REJECTED || (o->end == RP_END_RESET && !(cl->cflags & WSRR_CF_CLEAN)))
        return 0;
    o->messages = l->s->conns[ci].nmessages;
    if (cl->side == WSRR_SIDE_NONE) {
        o->end = RP_END_ABNORMAL;
        o->by_server = l->b[ci].first_end == 2; /* whose transport ended first */
        return 0;
    }
    o->end = RP_END_CLOSED;
    o->by_server = cl->side == WSRR_SIDE_SERVER;
    o->code = cl->cflags & WSRR_CF_HAS_CODE ? cl->code : 0;
    size_t n = cl->reason.n < sizeof(o->reason) - 1 ? cl->reason.n : sizeof(o->reason) - 1;
    memcpy(o->reason, cl->reason.p, n);
    o->reason[n] = '\0';
    return 0;
}

static int on_tcp(struct loader *l, const struct wsrr_record *r, int ci)
{
    const struct wsrr_rec_tcp *t = &r->u.tcp;
    bool fin = t->event == WSRR_TCP_FIN, rst = t->event == WSRR_TCP_RST;
    struct rp_conn *c = &l->s->conns[ci];
    if (!fin && !rst)
        return 0;
    if (!l->b[ci].first_end)
        l->b[ci].first_end = t->leg == WSRR_LEG_UPSTREAM ? 2 : 1;
    struct rp_step *st =
        add_step(l, r, t->leg == WSRR_LEG_UPSTREAM ? RP_END : RP_HANGUP, ci, NULL, 0);
    if (!st)
        return fail(l, r, "out of memory");
    st->rst = rst;
    if (rst && t->leg == WSRR_LEG_UPSTREAM && c->rec.end != RP_END_CLOSED) {
        c->rec.end = RP_END_RESET;
        c->rec.by_server = true;
        c->rec.messages = c->nmessages;
    }
    return 0;
}

struct rp_session *rp_session_load(const char *path, char *err, size_t errlen)
{
    struct loader l = {.err = err, .errlen = errlen};
    struct rp_session *s = l.s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    char rerr[256];
    struct wsrr_capture_reader *rd = wsrr_capture_reader_open(path, rerr, sizeof(rerr));
    if (!rd) {
        snprintf(err, errlen, "%s", rerr);
        rp_session_free(s);
        return NULL;
    }
    struct wsrr_record r;
    int rc, bad = 0;
    while (!bad && (rc = wsrr_capture_reader_next(rd, &r)) > 0) {
        if (!r.conn)
            continue;
        int ci = conn_of(&l, r.conn);
        if (ci < 0) {
            bad = fail(&l, &r, "out of memory");
            break;
        }
        switch (r.kind) {
        case WSRR_REC_OPEN: s->conns[ci].tls = r.u.open.flags & WSRR_OF_CLIENT_TLS; break;
        case WSRR_REC_REQUEST:
            /* the first request decides: an upgrade, or plain HTTP (left out) */
            bad = l.b[ci].seen_request
                      ? (l.b[ci].websocket
                             ? fail(&l, &r, "a second request on a WebSocket connection")
                             : 0)
                      : on_request(&l, &r, ci);
            l.b[ci].seen_request = true;
            break;
        case WSRR_REC_RESPONSE: bad = l.b[ci].websocket ? on_response(&l, &r, ci) : 0; break;
        case WSRR_REC_FRAME: bad = l.b[ci].websocket ? on_frame(&l, &r, ci) : 0; break;
        case WSRR_REC_CLOSE: bad = l.b[ci].websocket ? on_close(&l, &r, ci) : 0; break;
        case WSRR_REC_TCP: bad = l.b[ci].websocket ? on_tcp(&l, &r, ci) : 0; break;
        default: break;
        }
    }
    if (!bad && rc < 0)
        bad = fail(&l, NULL, "%s", rerr[0] ? rerr : "the capture cannot be read to its end");
    wsrr_capture_reader_close(rd);
    for (size_t i = 0; i < s->nconns; i++) {
        free(l.b[i].msg[0]);
        free(l.b[i].msg[1]);
    }
    free(l.b);
    free(l.index);
    /* a connection that ended in a failure: its ending's server steps */
    for (size_t i = s->nsteps; !bad && i-- > 0;) {
        struct rp_step *st = &s->steps[i];
        struct rp_conn *c = &s->conns[st->conn];
        if ((st->kind == RP_CLOSE || st->kind == RP_END) && rp_outcome_failed(&c->rec) &&
            (st->kind == RP_END || c->rec.end == RP_END_CLOSED))
            st->failure = true;
    }
    if (!bad && !s->nsteps)
        bad = fail(&l, NULL, "no WebSocket connection in the capture");
    if (bad) {
        rp_session_free(s);
        return NULL;
    }
    return s;
}

void rp_session_free(struct rp_session *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nsteps; i++)
        free(s->steps[i].data);
    for (size_t i = 0; i < s->nconns; i++) {
        free(s->conns[i].head);
        free(s->conns[i].response);
    }
    free(s->steps);
    free(s->conns);
    free(s->path);
    free(s);
}

int rp_conn_copy(struct rp_conn *d, const struct rp_conn *s)
{
    *d = *s;
    d->head = malloc(s->head_len + 1);
    d->response = s->response ? strdup(s->response) : NULL;
    if (!d->head || (s->response && !d->response)) {
        free(d->head);
        free(d->response);
        d->head = d->response = NULL;
        return -1;
    }
    if (s->head_len)
        memcpy(d->head, s->head, s->head_len);
    d->head[s->head_len] = '\0';
    return 0;
}

struct rp_session *rp_session_clone(const struct rp_session *s)
{
    struct rp_session *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->path = strdup(s->path);
    d->conns = calloc(s->nconns ? s->nconns : 1, sizeof(*d->conns));
    d->steps = calloc(s->nsteps ? s->nsteps : 1, sizeof(*d->steps));
    if (!d->path || !d->conns || !d->steps)
        goto oom;
    for (size_t i = 0; i < s->nconns; i++) {
        if (rp_conn_copy(&d->conns[d->nconns], &s->conns[i]) < 0)
            goto oom;
        d->nconns++;
    }
    for (size_t i = 0; i < s->nsteps; i++) {
        struct rp_step *st = &d->steps[d->nsteps++];
        *st = s->steps[i];
        st->data = st->len ? malloc(st->len) : NULL;
        if (st->len && !st->data)
            goto oom;
        if (st->len)
            memcpy(st->data, s->steps[i].data, st->len);
    }
    return d;
oom:
    rp_session_free(d);
    return NULL;
}

void rp_session_renumber(struct rp_session *s)
{
    for (size_t i = 0; i < s->nconns; i++)
        s->conns[i].nmessages = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        if (s->steps[i].kind == RP_MESSAGE)
            s->steps[i].nth = ++s->conns[s->steps[i].conn].nmessages;
}

/* ---- secrets ---- */

#define PLACEHOLDER "<redacted:"

/* WSRR_SECRET_<NAME>: upper case, other characters than letters and
 * digits as '_'. */
static void secret_env(const char *name, size_t n, char *env, size_t cap)
{
    size_t k = (size_t)snprintf(env, cap, "WSRR_SECRET_");
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        unsigned char ch = (unsigned char)name[i];
        env[k++] = isalnum(ch) ? (char)toupper(ch) : '_';
    }
    env[k] = '\0';
}

/* The value for a placeholder's NAME, or NULL. */
static const char *secret_for(const char *name, size_t n, const char *const *secrets, size_t ns)
{
    for (size_t i = 0; i < ns; i++) {
        const char *eq = strchr(secrets[i], '=');
        if (eq && (size_t)(eq - secrets[i]) == n && !strncasecmp(secrets[i], name, n))
            return eq + 1;
    }
    char env[160];
    secret_env(name, n, env, sizeof(env));
    return getenv(env);
}

/* Replace every placeholder in *p (*n bytes). Returns 0, 1 with *missing
 * set to the first placeholder that has no value, or -1 (memory). */
static int fill(uint8_t **p, size_t *n, const char *const *secrets, size_t ns,
                struct wsrr_span *missing)
{
    const size_t pl = strlen(PLACEHOLDER);
    uint8_t *in = *p;
    size_t len = *n;
    if (!len || !memmem(in, len, PLACEHOLDER, pl))
        return 0;
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return -1;
    size_t at = 0;
    for (;;) {
        uint8_t *hit = memmem(in + at, len - at, PLACEHOLDER, pl);
        uint8_t *name = hit ? hit + pl : NULL;
        uint8_t *colon = name ? memchr(name, ':', len - (size_t)(name - in)) : NULL;
        uint8_t *end = colon ? memchr(colon, '>', len - (size_t)(colon - in)) : NULL;
        if (!end) {
            evbuffer_add(out, in + at, len - at);
            break;
        }
        const char *v = secret_for((const char *)name, (size_t)(colon - name), secrets, ns);
        if (!v) {
            missing->p = hit;
            missing->n = (size_t)(end - hit) + 1;
            evbuffer_free(out);
            return 1;
        }
        evbuffer_add(out, in + at, (size_t)(hit - (in + at)));
        evbuffer_add(out, v, strlen(v));
        at = (size_t)(end - in) + 1;
    }
    size_t m = evbuffer_get_length(out);
    uint8_t *np = malloc(m + 1);
    if (!np) {
        evbuffer_free(out);
        return -1;
    }
    evbuffer_remove(out, np, m);
    np[m] = '\0';
    evbuffer_free(out);
    free(*p);
    *p = np;
    *n = m;
    return 0;
}

int rp_session_fill_secrets(struct rp_session *s, const char *const *secrets, size_t nsecrets,
                            char *err, size_t errlen)
{
    struct wsrr_span miss = {0};
    for (size_t i = 0; i < s->nconns + s->nsteps; i++) {
        bool head = i < s->nconns;
        struct rp_conn *c = head ? &s->conns[i] : NULL;
        struct rp_step *st = head ? NULL : &s->steps[i - s->nconns];
        if (st && st->kind != RP_SEND)
            continue;
        int rc = head ? fill((uint8_t **)&c->head, &c->head_len, secrets, nsecrets, &miss)
                      : fill(&st->data, &st->len, secrets, nsecrets, &miss);
        if (rc < 0) {
            snprintf(err, errlen, "%s: out of memory", s->path);
            return -1;
        }
        if (rc > 0) {
            const char *name = (const char *)miss.p + strlen(PLACEHOLDER);
            size_t nlen = (size_t)((const char *)memchr(name, ':', miss.n) - name);
            char env[160];
            secret_env(name, nlen, env, sizeof(env));
            snprintf(err, errlen,
                     "%s: connection %u: %s holds the redacted secret %.*s; give it with "
                     "--secret %.*s=VALUE or %s",
                     s->path, s->conns[head ? i : st->conn].id,
                     head ? "the upgrade request" : "a client message", (int)miss.n,
                     (const char *)miss.p, (int)nlen, name, env);
            return -1;
        }
    }
    return 0;
}

/* The parent of the node at a dotted path, and the last segment in key[];
 * NULL when the parent is not there or is not an object or array. */
static cJSON *parent_of(cJSON *j, const char *path, char *key, size_t cap)
{
    const char *dot = strrchr(path, '.');
    snprintf(key, cap, "%s", dot ? dot + 1 : path);
    if (dot) {
        char head[256];
        snprintf(head, sizeof(head), "%.*s", (int)(dot - path), path);
        j = (cJSON *)(uintptr_t)wsrr_json_at(j, head); /* our own document */
    }
    return cJSON_IsObject(j) || cJSON_IsArray(j) ? j : NULL;
}

/* Drop the value at a dotted path ("data.items.0.ts"). */
static void drop_path(cJSON *j, const char *path)
{
    char key[256];
    cJSON *p = parent_of(j, path, key, sizeof(key));
    if (p && cJSON_IsArray(p))
        cJSON_DeleteItemFromArray(p, atoi(key));
    else if (p)
        cJSON_DeleteItemFromObjectCaseSensitive(p, key);
}

bool rp_json_set(cJSON *j, const char *path, cJSON *v)
{
    char key[256];
    cJSON *p = parent_of(j, path, key, sizeof(key));
    if (!p || !wsrr_json_at(p, key))
        return false;
    return cJSON_IsArray(p) ? cJSON_ReplaceItemInArray(p, atoi(key), v)
                            : cJSON_ReplaceItemInObjectCaseSensitive(p, key, v);
}

/* Where the placeholder starting at pat[i] ends (one past its '>'), or 0
 * when none starts there. */
static size_t placeholder_at(const char *pat, size_t plen, size_t i)
{
    const size_t ml = strlen(PLACEHOLDER);
    if (plen - i < ml || memcmp(pat + i, PLACEHOLDER, ml))
        return 0;
    const char *end = memchr(pat + i + ml, '>', plen - i - ml);
    return end ? (size_t)(end - pat) + 1 : 0;
}

/* Does text match pattern, where each redaction placeholder in pattern
 * stands for any run of characters (the recorder replaced a secret there:
 * whatever the peer sends now in its place is not a difference)? The
 * classic wildcard walk: on a mismatch only the last wildcard takes one
 * more character, so it is linear in practice and never exponential. */
static bool placeholder_match(const char *pat, size_t plen, const char *txt, size_t tlen)
{
    size_t p = 0, t = 0, star_p = 0, star_t = 0;
    bool star = false;
    while (t < tlen) {
        size_t e = p < plen ? placeholder_at(pat, plen, p) : 0;
        if (e) {
            star = true;
            star_p = p = e;
            star_t = t;
        } else if (p < plen && pat[p] == txt[t]) {
            p++;
            t++;
        } else if (star) {
            p = star_p;
            t = ++star_t;
        } else {
            return false;
        }
    }
    for (size_t e; p < plen && (e = placeholder_at(pat, plen, p));)
        p = e;
    return p == plen;
}

/* cJSON_Compare, except that a recorded string holding a placeholder
 * matches a string with anything in its place. */
static bool json_same(const cJSON *want, const cJSON *got)
{
    if (cJSON_IsString(want) && cJSON_IsString(got) && strstr(want->valuestring, PLACEHOLDER))
        return placeholder_match(want->valuestring, strlen(want->valuestring), got->valuestring,
                                 strlen(got->valuestring));
    if ((cJSON_IsObject(want) && cJSON_IsObject(got)) ||
        (cJSON_IsArray(want) && cJSON_IsArray(got))) {
        if (cJSON_GetArraySize(want) != cJSON_GetArraySize(got))
            return false;
        const cJSON *g = got->child;
        for (const cJSON *w = want->child; w; w = w->next, g = g ? g->next : NULL) {
            const cJSON *other =
                cJSON_IsObject(want) ? cJSON_GetObjectItemCaseSensitive(got, w->string) : g;
            if (!other || !json_same(w, other))
                return false;
        }
        return true;
    }
    return cJSON_Compare(want, got, true);
}

bool rp_same_message(const char *const *ignore, size_t nignore, uint8_t want_op,
                     const uint8_t *want, size_t wlen, uint8_t op, const uint8_t *p, size_t n)
{
    if (want_op != op)
        return false;
    if (wlen == n && (!n || !memcmp(want, p, n)))
        return true;
    if (op != WSRR_OP_TEXT)
        return false;
    cJSON *a = cJSON_ParseWithLength((const char *)want, wlen);
    cJSON *b = cJSON_ParseWithLength((const char *)p, n);
    bool same = false;
    if (a && b) {
        for (size_t i = 0; i < nignore; i++) {
            drop_path(a, ignore[i]);
            drop_path(b, ignore[i]);
        }
        same = json_same(a, b);
    } else if (!a && !b && memmem(want, wlen, PLACEHOLDER, strlen(PLACEHOLDER))) {
        same = placeholder_match((const char *)want, wlen, (const char *)p, n); /* plain text */
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    return same;
}

bool rp_outcome_failed(const struct rp_outcome *o)
{
    switch (o->end) {
    case RP_END_CLOSED: /* the server's own close, not its answer to ours */
        return o->by_server && (o->code == 1006 || (o->code >= 1011 && o->code <= 1014));
    case RP_END_REJECTED: return o->status >= 500;
    case RP_END_ABNORMAL: /* the server's transport ended first */ return o->by_server;
    case RP_END_RESET:
    case RP_END_TIMEOUT:
    case RP_END_FAILED: return true;
    case RP_END_OPEN: break;
    }
    return false;
}

void rp_outcome_describe(const struct rp_outcome *o, char *out, size_t cap)
{
    const char *who = o->by_server ? "the server" : "the client";
    switch (o->end) {
    case RP_END_OPEN: snprintf(out, cap, "still open after %u messages", o->messages); break;
    case RP_END_REJECTED: snprintf(out, cap, "upgrade answered %d", o->status); break;
    case RP_END_CLOSED:
        if (o->code)
            snprintf(out, cap, "closed %u (%s) by %s after %u messages", o->code,
                     o->reason[0] ? o->reason : wsrr_close_code_name(o->code), who, o->messages);
        else
            snprintf(out, cap, "closed with no code by %s after %u messages", who, o->messages);
        break;
    case RP_END_ABNORMAL:
        snprintf(out, cap, "abnormal end (1006, no close frame) after %u messages", o->messages);
        break;
    case RP_END_RESET:
        snprintf(out, cap, "reset (RST) by the server after %u messages", o->messages);
        break;
    case RP_END_TIMEOUT:
        snprintf(out, cap, "timed out after %u messages: %s", o->messages, o->reason);
        break;
    case RP_END_FAILED: snprintf(out, cap, "failed: %s", o->reason); break;
    }
}

/* ---- editing (fuzz, rules) ---- */

size_t rp_step_before(const struct rp_session *s, size_t i, int kind)
{
    for (size_t k = i, looked = 0; k-- > 0 && looked < 64; looked++)
        if (s->steps[k].conn == s->steps[i].conn && (kind < 0 || (int)s->steps[k].kind == kind))
            return k;
    return SIZE_MAX;
}

struct rp_step *rp_steps_insert(struct rp_session *s, size_t at, size_t n)
{
    struct rp_step *st = realloc(s->steps, (s->nsteps + n) * sizeof(*st));
    if (!st)
        return NULL;
    s->steps = st;
    memmove(&st[at + n], &st[at], (s->nsteps - at) * sizeof(*st));
    memset(&st[at], 0, n * sizeof(*st));
    s->nsteps += n;
    return &st[at];
}

void rp_step_remove(struct rp_session *s, size_t at)
{
    free(s->steps[at].data);
    memmove(&s->steps[at], &s->steps[at + 1], (s->nsteps - at - 1) * sizeof(*s->steps));
    s->nsteps--;
}

int rp_step_set_data(struct rp_step *st, const void *p, size_t n)
{
    uint8_t *d = n ? malloc(n) : NULL;
    if (n && !d)
        return -1;
    if (n)
        memcpy(d, p, n);
    free(st->data);
    st->data = d;
    st->len = n;
    return 0;
}
