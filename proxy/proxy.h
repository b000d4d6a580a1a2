/* proxy.h — the recording WebSocket reverse proxy.
 *
 * One event loop (libevent). Each accepted client gets an upstream
 * connection; the Upgrade request is parsed (Host and Origin rewritten for
 * the upstream unless preserve_host), the response is checked (a 101 a
 * client must refuse becomes a 502), and from then on bytes are relayed
 * unchanged in both directions by moving evbuffer chains, while the tap
 * (lib/tap.c) records every frame. A destination that does not drain stops
 * reading from its source (watermarks), so a slow peer costs bounded memory
 * and never stalls other connections.
 */
#ifndef WSRR_PROXY_H
#define WSRR_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct wsrr_proxy;
struct wsrr_rules;

struct wsrr_proxy_config {
    const char *listen;            /* "host:port" ("[::1]:port" for IPv6) */
    const char *upstream;          /* ws://, wss://, http:// or https:// URL */
    const char *record;            /* capture file, or an existing directory (a new
                                      timestamped file per run); NULL: do not record */
    bool overwrite;                /* replace an existing capture file */
    bool preserve_host;            /* forward Host and Origin as the client sent them */
    bool redact;                   /* redact credentials in recorded heads (default on) */
    uint64_t flush_interval_ms;    /* capture batches; default 100 */
    uint64_t grace_ms;             /* on SIGINT/SIGTERM: let connections finish; default 5000 */
    uint64_t handshake_timeout_ms; /* request head, upstream connect, response head; 10000 */
    uint64_t idle_timeout_ms;      /* no byte either way: close; 0 = never (default) */
    size_t max_buffer;             /* per direction before reading pauses; default 1 MiB */
    const char *argv0_line;        /* the command line, for the capture metadata */

    /* TLS towards clients: a fixed certificate, or leaves minted per SNI name
     * by the local CA in ca_dir (created on first use) */
    bool listen_tls;
    const char *tls_cert, *tls_key;
    const char *ca_dir; /* NULL: wsrr_ca_default_dir() */
    /* TLS towards the upstream (wss:// or https:// upstream URL) */
    const char *upstream_ca; /* trust this CA file instead of the system store */
    bool insecure_upstream;  /* do not verify the upstream's certificate (logged) */
    const char *upstream_cert, *upstream_key; /* client certificate (mutual TLS) */
    const char *keylog;                       /* append TLS secrets here (NSS key log format) */

    /* Fault injection (docs/rules.md). With fault_engine off the relay only
     * forwards and records; on, every WebSocket connection's messages go
     * through the rules (rules may be NULL or empty and be set later with
     * wsrr_proxy_set_rules, e.g. by the control API). */
    bool fault_engine;
    bool live_rules;          /* rules may change while it runs (the control API): every
                                 WebSocket connection is inspected, even one no rule in
                                 force applies to */
    struct wsrr_rules *rules; /* taken over by the proxy (freed by it, even on error) */
};

struct wsrr_proxy_stats {
    uint64_t accepted, active, closed;
    uint64_t bytes[2];  /* relayed per direction (enum wsrr_dir) */
    uint64_t frames[2]; /* recorded per sender */
    uint64_t upstream_failures;
    uint64_t rejected;      /* answered by the proxy itself (400, 426, 502, 504) */
    uint64_t messages[2];   /* seen by the fault engine per sender */
    uint64_t faults;        /* fault actions applied */
    uint64_t errors;        /* connections that ended with a transport error or reset */
    uint64_t capture_bytes; /* written to capture files so far (compressed) */
    /* close codes seen in close frames (either sender), most frequent first
     * is not promised; ncloses distinct codes, the rest counted in other_closes */
    struct {
        uint16_t code;
        uint64_t n;
    } closes[32];
    size_t ncloses;
    uint64_t other_closes;
};

/* ---- live control (the control API, proxy/control.c, drives these) ---- */

/* Replace the rule set: every connection's next message is decided by rs
 * (per-connection counters start again for the new rules; global "fired"
 * counts of rules with the same name carry over). Takes rs over. Returns 0,
 * or -1 when the proxy runs without the fault engine (rs is freed). */
int wsrr_proxy_set_rules(struct wsrr_proxy *p, struct wsrr_rules *rs);

/* The rules in force (NULL: none). Valid until the next set_rules. */
const struct wsrr_rules *wsrr_proxy_rules(const struct wsrr_proxy *p);

/* One live connection, for listings. */
struct wsrr_proxy_conn_info {
    uint32_t id;        /* as in the capture and the log */
    uint64_t ordinal;   /* as rules count connections (1 = first accepted) */
    const char *client; /* "IP:port" */
    const char *path;   /* request target ("" before the request head) */
    const char *state;  /* "handshake", "open" (relaying), "closing" */
    bool websocket;     /* upgraded */
    uint64_t age_ms;
    uint64_t bytes[2];    /* per sender (enum wsrr_dir) */
    uint64_t frames[2];   /* recorded per sender (0 when not recording) */
    uint64_t messages[2]; /* seen by the fault engine per sender */
    uint64_t faults;      /* applied on this connection */
};

typedef void (*wsrr_proxy_conn_cb)(const struct wsrr_proxy_conn_info *ci, void *arg);
void wsrr_proxy_foreach_conn(const struct wsrr_proxy *p, wsrr_proxy_conn_cb cb, void *arg);

/* Close connection id: a close frame with code and reason (reason_len <=
 * 123) towards `to` (enum wsrr_target: WSRR_TO_CLIENT, WSRR_TO_SERVER or
 * WSRR_TO_BOTH), then the connection ends. code 0: no close frame, a TCP
 * close only. Returns 0, or -1 with err ("no connection 12", "connection
 * 12 is not a WebSocket"). */
int wsrr_proxy_close_conn(struct wsrr_proxy *p, uint32_t id, int code, const char *reason,
                          size_t reason_len, int to, char *err, size_t errlen);

/* Send one frame (FIN, opcode, payload; masked when it goes to the server)
 * on connection id, towards `to` (WSRR_TO_CLIENT or WSRR_TO_SERVER or
 * WSRR_TO_BOTH), between messages of that direction. Recorded as an
 * injected frame. Returns 0 or -1 with err. Needs the fault engine. */
int wsrr_proxy_inject(struct wsrr_proxy *p, uint32_t id, int to, uint8_t opcode,
                      const uint8_t *payload, size_t len, char *err, size_t errlen);

/* Stop or resume writing records (connections keep flowing; a NOTE record
 * marks each switch). Returns the previous state. */
bool wsrr_proxy_set_recording(struct wsrr_proxy *p, bool on);
bool wsrr_proxy_recording(const struct wsrr_proxy *p);

struct wsrr_proxy;

/* Create the proxy on base: parse the configuration, bind the listening
 * socket and open the capture. Returns NULL with err (one line naming the
 * option or address and what was wrong). */
struct wsrr_proxy *wsrr_proxy_new(struct event_base *base, const struct wsrr_proxy_config *c,
                                  char *err, size_t errlen);

/* The address actually bound (useful with port 0). */
const char *wsrr_proxy_listen_address(const struct wsrr_proxy *p);

/* Stop accepting; connections have grace_ms to finish, then are closed; the
 * capture is finalised when the last one is gone, and then the proxy calls
 * event_base_loopexit() on its base. */
void wsrr_proxy_shutdown(struct wsrr_proxy *p);

/* Finish the current capture file and start a new one (SIGHUP, for log
 * rotation). Returns 0 or a negative errno (logged). */
int wsrr_proxy_reopen(struct wsrr_proxy *p);

void wsrr_proxy_stats(const struct wsrr_proxy *p, struct wsrr_proxy_stats *st);

/* Path of the capture being written, or NULL. */
const char *wsrr_proxy_capture_path(const struct wsrr_proxy *p);

/* Close every connection at once and free everything; the capture is
 * finalised. NULL is a no-op. */
void wsrr_proxy_free(struct wsrr_proxy *p);

#endif
