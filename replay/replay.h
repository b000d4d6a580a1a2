/* replay.h — drive a session (session.h) against a server as its client.
 *
 * Every connection of the capture is opened again, its upgrade request as
 * recorded (Host and Origin rewritten for the target, a fresh key, no
 * compression offered), its frames sent again, freshly masked. When each
 * client step runs is the timing mode's business:
 *   causal    (default) a client step waits until every server step before
 *             it in the capture's global order, on any connection, has
 *             happened again: the observed cross-connection order;
 *   recorded  at the recorded offsets from the start, divided by speed;
 *   asap      at once (a connection's frames still follow its upgrade).
 * Server messages are matched to the recorded ones by position on their
 * connection and compared JSON-aware (ignoring the given paths). */
#ifndef WSRR_REPLAY_H
#define WSRR_REPLAY_H

#include "session.h"

#include "wsrr/capture.h"
#include "wsrr/redact.h"

#include <stdio.h>

enum rp_timing { RP_CAUSAL, RP_RECORDED, RP_ASAP };

struct rp_opts {
    const char *target; /* ws://HOST:PORT[/PATH] or wss://...; a path overrides the recorded one */
    enum rp_timing timing;
    double speed;        /* recorded: 2 = twice as fast */
    uint64_t timeout_ms; /* per wait for the server (causal), and for the end */
    uint64_t gap_us;     /* causal: between client steps on two connections with no server step
                            between them (so that the server sees them in that order) */
    const char **ignore; /* JSON paths left out of comparisons ("ts", "data.id") */
    size_t nignore;
    const char **headers; /* "Name: value", added or replacing the recorded one */
    const char **extras;  /* server messages let pass uncounted when they differ from the
                             expected one: "PATH=VALUE" (JSON) or "*" (any) */
    size_t nextras;
    const char **sets; /* "PATH=VALUE": in client JSON messages that have PATH, its value
                          becomes VALUE (JSON, or else a string; "@uuid" a fresh one per run) */
    size_t nsets;
    size_t nheaders;
    bool insecure;       /* wss: do not verify the server's certificate */
    const char *ca_file; /* wss: verify the server against this CA (default: the system's) */
    struct wsrr_capture_writer *record; /* --record: the run's own traffic, NULL: none */
    const struct wsrr_redactor *redact; /* ... with secrets redacted (NULL: as they are) */
    uint32_t conn_base;                 /* ... connection ids from conn_base + 1 */
    FILE *log;                          /* --verbose: every step as it runs; NULL: quiet */
    /* fuzz: a wait for a server message is let go after quiet_ms plus
     * twice what the server took for that message when recorded (or for
     * any message of the run on that connection, if longer), at most
     * timeout_ms (the server answered a changed message with fewer
     * messages): the run goes on, and the connection counts it in `quiet`;
     * a recorded failure is waited for as long. 0: a message's wait times
     * out after timeout_ms, a failure. */
    uint64_t quiet_ms;
    /* ... and such a wait (causal timing) sends a ping: once its pong is
     * back (the server has read what came before), the wait ends at twice
     * the recorded time plus 1 ms. Fast, for fuzz; a server that answers
     * later than that is not waited for (shrink leaves it off). */
    bool barrier;
    /* fuzz: every server data message as it arrives (conn: session index) */
    void (*on_message)(void *arg, uint32_t conn, uint8_t opcode, const uint8_t *p, size_t n);
    void *arg;
};

/* What one run saw, per connection of the session. */
struct rp_conn_result {
    struct rp_outcome out;
    uint32_t extras;    /* server messages let pass by --extra */
    bool diverged;      /* a server message differed from the recorded one */
    uint32_t div_nth;   /* the first such message, 1-based */
    char expected[160]; /* its recorded and received payloads, shortened */
    char received[160];
    uint32_t quiet;   /* waits for a server message let go (opts.quiet_ms) */
    size_t last_send; /* the last data frame sent: its step index + 1 (0: none) */
};

struct rp_result {
    struct rp_conn_result *conns; /* session.nconns of them */
    size_t nconns;
};

/* Is url a target rp_run() takes? 0, or -1 with a one-line error. */
int rp_check_target(const char *url, char *err, size_t errlen);

/* One run. Returns 0 with res filled (free with rp_result_free), or -1 with
 * a one-line error when it could not start (bad target, no event base). */
int rp_run(const struct rp_session *s, const struct rp_opts *o, struct rp_result *res, char *err,
           size_t errlen);
void rp_result_free(struct rp_result *res);

/* --reproduce: every failure the capture records came back, on the same
 * connection, the same way (end, close code, sender) at the same point
 * (messages received before it). why says what did not, or that the
 * capture records no failure. */
bool rp_result_reproduced(const struct rp_session *s, const struct rp_result *res, char *why,
                          size_t cap);

#endif
