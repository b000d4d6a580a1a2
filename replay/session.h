/* session.h — a capture as replay sees it: its connections and one global
 * list of steps in the order the proxy observed them.
 *
 * A step is something the client did (open a connection, send a frame,
 * close, hang up) or something the server did that later client steps may
 * have waited for (answer the upgrade, send a message, close, end the
 * transport). Causal replay walks the list in order: a client step runs
 * once every server step before it, on any connection, has happened again. */
#ifndef WSRR_REPLAY_SESSION_H
#define WSRR_REPLAY_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum rp_kind {
    RP_OPEN,     /* client: connect and send the upgrade request */
    RP_UPGRADED, /* server: the response head (status recorded) */
    RP_SEND,     /* client: one frame (a compressed message: one frame, inflated) */
    RP_HANGUP,   /* client: ended its transport without a close handshake */
    RP_MESSAGE,  /* server: a whole data message */
    RP_CLOSE,    /* server: a close frame */
    RP_END,      /* server: ended its transport (FIN or RST) */
};

struct rp_step {
    enum rp_kind kind;
    uint32_t conn; /* index into session.conns */
    uint64_t seq, ts;
    uint8_t opcode; /* SEND, MESSAGE */
    bool fin;       /* SEND */
    uint16_t code;  /* SEND of a close, CLOSE: 0 when none */
    bool rst;       /* END, HANGUP: a reset rather than a FIN */
    uint32_t nth;   /* MESSAGE: 1-based per connection */
    bool failure;   /* CLOSE, END: part of a recorded failure (a 1011, a reset): a
                       replay that does not see it again is not stuck, it got
                       further */
    uint8_t *data;  /* SEND and MESSAGE payload (unmasked, inflated); close reason */
    size_t len;
    /* SEND: the frame as the client put it on the wire when that was not
     * the plain form (a buggy client, or fuzz): RSV bits, a non-minimal
     * length encoding (16 or 64; 0 minimal), no mask */
    uint8_t rsv, len_width;
    bool unmasked;
    uint32_t pause_us; /* client steps: wait this long first (fuzz's delays), in us */
    bool invalid;      /* SEND: made invalid on purpose (fuzz): the server may end the
                          transport without a close frame (RFC 6455 7.1.7) */
    bool decided;      /* --rules: held back by a reorder, already decided */
    bool burst;        /* client steps: part of what fuzz made happen at once (a
                          connection storm): no --gap before it or after it */
};

/* How a connection ended, recorded or replayed. */
enum rp_end {
    RP_END_OPEN,     /* still open when the capture (or the run) ended */
    RP_END_REJECTED, /* the upgrade was answered with another status */
    RP_END_CLOSED,   /* a close frame; `by_server` says who sent it first */
    RP_END_ABNORMAL, /* the transport ended with no close frame (1006) */
    RP_END_RESET,    /* the server's side was reset (RST) */
    RP_END_TIMEOUT,  /* replay: a wait for the server timed out */
    RP_END_FAILED,   /* replay: could not connect, or a protocol error */
};

struct rp_outcome {
    enum rp_end end;
    bool by_server;
    int status;        /* REJECTED: the status */
    uint16_t code;     /* CLOSED: 0 when the frame had none */
    char reason[124];  /* CLOSED: the reason; FAILED/TIMEOUT: what happened */
    uint32_t messages; /* server messages received before the end */
};

struct rp_conn {
    uint32_t id; /* in the capture */
    char *head;  /* the upgrade request as recorded (NUL-terminated) */
    size_t head_len;
    char *response;     /* the answer to it as recorded (NUL-terminated), NULL when none */
    bool tls;           /* the client spoke TLS to the proxy */
    uint32_t nmessages; /* server messages recorded */
    struct rp_outcome rec;
};

struct rp_session {
    char *path;
    struct rp_conn *conns;
    size_t nconns;
    struct rp_step *steps;
    size_t nsteps;
};

/* Read a capture. Returns NULL with a one-line error (naming the file and
 * the record) on bad input. Only WebSocket connections become part of the
 * session; plain HTTP exchanges are left out. */
struct rp_session *rp_session_load(const char *path, char *err, size_t errlen);
void rp_session_free(struct rp_session *s);

/* *d = *s with copies of its own of the request (all head_len bytes, a NUL
 * after) and the response; 0, or -1 when out of memory (d holds nothing). */
int rp_conn_copy(struct rp_conn *d, const struct rp_conn *s);

/* A deep copy (NULL when out of memory). */
struct rp_session *rp_session_clone(const struct rp_session *s);

/* After steps were added, removed or moved (fuzz, shrink): number each
 * connection's server messages 1.. again in step order (nth, nmessages). */
void rp_session_renumber(struct rp_session *s);

/* Put the real secrets back where the recorder left placeholders
 * (`<redacted:NAME:FINGERPRINT>`, docs/redaction.md) in the upgrade
 * requests and the client's messages. A value comes from secrets
 * ("NAME=VALUE", NAME without case) or else from the environment variable
 * WSRR_SECRET_<NAME> (upper case, other characters than letters and digits
 * as '_'). Returns 0, or -1 with a one-line error naming the first
 * placeholder without a value, where it is, and how to give it. */
int rp_session_fill_secrets(struct rp_session *s, const char *const *secrets, size_t nsecrets,
                            char *err, size_t errlen);

/* Is message (op, p, n) the recorded one (want_op, want, wlen)? Bytes equal,
 * or both text holding equal JSON once the dotted paths in ignore are
 * removed from both ("meta.ts", "items.0.id"). */
bool rp_same_message(const char *const *ignore, size_t nignore, uint8_t want_op,
                     const uint8_t *want, size_t wlen, uint8_t op, const uint8_t *p, size_t n);

/* Put v at the dotted path of j when that path exists (v is then owned by
 * j); false when it does not. */
struct cJSON;
bool rp_json_set(struct cJSON *j, const char *path, struct cJSON *v);

/* Is this ending a failure (what --check reports): a close with 1011-1014
 * or 1006, an abnormal end, a reset, a timeout, a 5xx rejection. */
bool rp_outcome_failed(const struct rp_outcome *o);

/* One line: "closed 1011 (Internal error) by the server after 2 messages". */
void rp_outcome_describe(const struct rp_outcome *o, char *out, size_t cap);

/* Editing a session (fuzz's mutations, --rules): n zeroed steps inserted at
 * `at` (NULL when out of memory: s unchanged); a step removed (its data
 * freed); a step's data replaced by a copy of p[0..n) (-1 when out of
 * memory). Call rp_session_renumber() after. */
struct rp_step *rp_steps_insert(struct rp_session *s, size_t at, size_t n);
/* The nearest step before i on i's connection, of that kind (-1: any), at
 * most 64 steps back; SIZE_MAX when none. */
size_t rp_step_before(const struct rp_session *s, size_t i, int kind);
void rp_step_remove(struct rp_session *s, size_t at);
int rp_step_set_data(struct rp_step *st, const void *p, size_t n);

#endif
