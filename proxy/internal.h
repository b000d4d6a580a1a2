/* internal.h — what the proxy's modules share: the proxy, its connections,
 * and the few relay operations the fault engine (faults.c) drives. Not an
 * API: only the proxy's own .c files include it. */
#ifndef WSRR_PROXY_INTERNAL_H
#define WSRR_PROXY_INTERNAL_H

#include "proxy.h"
#include "wsrr/capture.h"
#include "wsrr/handshake.h"
#include "wsrr/rules.h"
#include "wsrr/tap.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <stdio.h>

struct faults;

/* The read buffer (readbuf.c): fast_read() reads into rb_data(), RB_SIZE
 * bytes. rb_keep() appends n of its bytes at p to an evbuffer (the input
 * end unfrozen): a large stretch as a reference to the block, which the
 * evbuffer gives back when done with it, while reads go on in another
 * block (rb_data() changes); anything else is copied. 0, or -1 when out of
 * memory. rb_free(): blocks still in evbuffers outlive it safely. */
#define RB_SIZE (64 * 1024)
struct readbuf;
struct readbuf *rb_new(void);
void rb_free(struct readbuf *rb);
uint8_t *rb_data(struct readbuf *rb);
int rb_keep(struct readbuf *rb, struct evbuffer *buf, const uint8_t *p, size_t n);

enum conn_state { CS_REQUEST, CS_CONNECTING, CS_RESPONSE, CS_RELAY, CS_CLOSING };

struct upstream {
    bool tls;
    char host[256];
    int port;
    char prefix[1024];  /* path of the upstream URL without a trailing '/' */
    char hostport[300]; /* for Host */
    char origin[320];   /* for Origin */
    char url[1400];
};

struct conn;

struct wsrr_proxy {
    struct event_base *base;
    struct wsrr_proxy_config cfg;
    struct upstream up;
    struct evconnlistener *lis;
    struct evdns_base *dns;
    char listen_addr[128];

    /* TLS */
    SSL_CTX *srv_ctx; /* towards clients, when listen_tls */
    SSL_CTX *cli_ctx; /* towards the upstream, when it is wss */
    struct wsrr_ca *ca;
    FILE *keylog;

    /* recording */
    char record_arg[4096];
    bool record_dir;
    char capture_path[4096];
    struct wsrr_capture_writer *w;
    struct wsrr_redactor *red;
    struct event *flush_ev;
    bool capture_failed;
    bool rec_paused; /* the control API paused recording */

    /* fault injection (faults.c) */
    struct wsrr_rules *rules; /* in force; NULL: none */
    uint64_t rules_gen;       /* bumped by every replacement */

    struct conn *conns;
    uint32_t next_id;
    bool stopping;
    struct event *grace_ev;
    struct wsrr_proxy_stats st;
    struct readbuf *rb; /* fast_read(): one loop, one connection at a time */
    uint8_t *pay;       /* faults.c: a unit's payload, unmasked, for the rules */
    size_t pay_cap;
    struct wsrr_piece *pcs; /* faults.c: the same, as pieces where it lies */
    size_t npcs, pcs_cap;
};

/* the most one read or write moves on a plain socket (topup_read) */
#define TOPUP_MAX (256 * 1024)

struct conn {
    struct wsrr_proxy *p;
    uint32_t id;
    enum conn_state state;
    struct bufferevent *bev[2]; /* [WSRR_DIR_C2S] the client, [WSRR_DIR_S2C] the upstream:
                                   the source of bytes travelling in that direction */
    struct event *rd[2];        /* relaying a plain leg: our read event (fast_read) */
    struct wsrr_http_parser head[2];
    size_t head_seen[2]; /* bytes of the input already given to the head parser */
    struct wsrr_tap *tap;
    bool websocket;             /* the request asks for an upgrade */
    bool tls[2];                /* that leg is TLS */
    bool http;                  /* plain HTTP requests: client bytes follow request framing */
    bool flush_close;           /* CLOSING: one leg failed; close once the other is flushed */
    bool reset_after_flush;     /* ... with an RST (the failed leg was reset) */
    bool in_body;               /* ... inside a request body */
    struct wsrr_http_body body; /* the framing of that body */
    bool opened;                /* the OPEN record is written */
    bool eof[2];                /* the source of that direction sent FIN */
    bool paused[2];             /* reading that direction's source is paused (backpressure) */
    bool shut[2];               /* we shut down writing towards that direction's destination */
    bool fin_pending[2];        /* ... or will, once its output is out (px_half_close) */
    int io_err[2];              /* errno of our own send to that leg's socket (sent()) */
    uint64_t bytes[2];
    uint64_t t_start;
    int status;      /* the response status */
    size_t resp_len; /* its head's length */
    char client[64];
    char *path; /* the request target, once the head is in */

    /* fault injection (faults.c); all NULL/0 without the fault engine */
    struct wsrr_rules_conn *rc; /* per-connection rule state for p->rules */
    uint64_t rules_gen;         /* the p->rules_gen rc was made for */
    int hs_rule;                /* the handshake rule that fired, -1 none */
    uint64_t req_seq;           /* seq of the REQUEST record (handshake faults name it) */
    struct event *hs_timer;     /* delay_connect / delay_upgrade */
    struct faults *f;           /* message inspection, once relaying frames */
    uint64_t faults;            /* applied on this connection */
    uint64_t messages[2];       /* units the engine saw per sender */
    struct conn *prev, *next;
};

/* ---- relay operations (proxy.c) for the fault engine ---- */

/* Send b's bytes (all of them, b is left empty) towards dir's destination
 * now: straight to the socket when nothing waits there, else queued on its
 * bufferevent. Bytes towards a destination we shut are discarded. */
void px_send(struct conn *c, enum wsrr_dir dir, struct evbuffer *b);

/* n bytes of dir's source, as read: to the tap, then towards the
 * destination (straight to the socket when nothing waits there). */
void px_send_bytes(struct conn *c, enum wsrr_dir dir, const uint8_t *p, size_t n);

/* Feed the first n bytes of b to the tap (what the peer sent). */
void px_feed_tap(struct conn *c, enum wsrr_dir dir, struct evbuffer *b, size_t n);

/* End it with an RST on the legs in `legs` (bit 1 << WSRR_DIR_C2S: the
 * client's, 1 << WSRR_DIR_S2C: the upstream's) and a FIN on the others. */
void px_reset(struct conn *c, unsigned legs, const char *why);

/* Reading dir's source on or off. */
void px_set_reading(struct conn *c, enum wsrr_dir dir, bool on);

/* Send a FIN towards dir's destination once its queued output is out.
 * Returns true when both directions are now shut (the connection is done;
 * the caller ends it outside its own call stack). */
bool px_half_close(struct conn *c, enum wsrr_dir dir);

/* Bytes waiting in dir's destination's output buffer. */
size_t px_out_len(const struct conn *c, enum wsrr_dir dir);

/* ---- the fault engine (faults.c) ---- */

/* Rules for a connection whose request head is complete: the per-connection
 * state (c->rc). Returns the index of a handshake rule that fires, or -1. */
int faults_handshake(struct conn *c, const struct wsrr_http_head *req);

/* Rule r fired on the unit nth of dir (0: the handshake): its FAULT
 * record, the detail built from the rule's parameters. */
void faults_fired(struct conn *c, const struct wsrr_rule *r, uint64_t target, enum wsrr_dir dir,
                  uint64_t nth);

/* Write a FAULT record for connection c (target: a record seq or 0) and
 * count it; detail is JSON text. */
void faults_record(struct conn *c, const struct wsrr_rule *r, uint64_t target, const char *detail);

/* An upgrade request was read: messages will go through the rules
 * (c->f). */
void faults_attach(struct conn *c);

/* The upgrade response is in (resp): permessage-deflate, if agreed. */
void faults_start(struct conn *c, const struct wsrr_http_head *resp);

/* Bytes arrived in `in` from dir's source: forward what the rules let
 * through, act on what they catch. Consumes from `in` what it handled. */
void faults_relay(struct conn *c, enum wsrr_dir dir, struct evbuffer *in);

/* The same for bytes just read into a flat buffer, nothing of dir held or
 * queued; false when that does not hold (use faults_relay). */
bool faults_fast(struct conn *c, enum wsrr_dir dir, struct evbuffer *in, const uint8_t *p,
                 size_t n);

/* dir's source ended (FIN): what it sent last goes on as it is. */
void faults_eof(struct conn *c, enum wsrr_dir dir, struct evbuffer *in);

/* Nothing of dir waits in the engine (queue, held message, own frames):
 * a FIN may follow. */
bool faults_idle(const struct conn *c, enum wsrr_dir dir);

/* The connection is going away: free the engine's state. */
void faults_free(struct conn *c);

/* Live control: a close frame or any frame, wsrr's own, into connection c. */
int faults_close_conn(struct conn *c, int code, const char *reason, size_t len, int to);
int faults_inject(struct conn *c, int to, uint8_t opcode, const uint8_t *payload, size_t len);

#endif
