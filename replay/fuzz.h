/* fuzz.h — fuzz (find new failures by replaying mutated captures) and
 * shrink (the smallest session that still fails the same way).
 *
 * A run replays one session (a capture, or a corpus entry made from one)
 * with mutations (mutate.h) and looks at how each connection ended. The
 * oracles: a close 1011-1014 from the server, the server's transport ending
 * without a close (1006) or with a reset, a timeout, a 5xx answer to the
 * upgrade, frames that cannot be read, a divergence from the recorded
 * answers when the client sent what was recorded; with a server command,
 * the server's exit, crash signal or sanitizer report. A failure's
 * signature (kind, close code and reason, the type of the message the
 * client sent last on that connection) decides whether it is new. */
#ifndef WSRR_REPLAY_FUZZ_H
#define WSRR_REPLAY_FUZZ_H

#include "replay.h"

#include <stdbool.h>
#include <stdint.h>

struct cJSON;

struct fz_failure {
    uint32_t conn;    /* session index; UINT32_MAX for the server process */
    char kind[24];    /* close, abnormal, reset, timeout, rejected, protocol, divergence,
                         server-exit, server-signal, sanitizer */
    char detail[128]; /* close code and reason, status, signal ... */
    char type[64];    /* the type of the client's last message on the connection */
    char sig[256];    /* all of it in one line: the dedup key */
};

/* The failures one run shows, at most cap. divergence: a server message
 * that differs from the recorded one is a failure, unless content_changed
 * (the client did not send what was recorded). strict: an abnormal end or reset after an invalid
 * frame of ours counts too (RFC 6455 lets a server drop such a connection). */
size_t fz_failures(const struct rp_session *s, const struct rp_result *res, bool content_changed,
                   bool strict, bool divergence, struct fz_failure *out, size_t cap);

/* The failure for a server process that failed (fz_server_check's kind and
 * what). */
void fz_server_failure(struct fz_failure *f, const char *kind, const char *what);

/* Did the server under test (server.h) fail during the run that gave res?
 * Endings a dying server causes (dropped, reset, refused) give it time to
 * be seen dying (fz_server_settle). kind and what as fz_server_check's. */
struct fz_server;
bool fz_server_failed(struct fz_server *sv, const struct rp_result *res, char *kind, size_t kcap,
                      char *what, size_t wcap);

/* A report: j on one line of standard output, then freed. */
void fz_print_json(struct cJSON *j);

struct fz_opts {
    const char *const *captures;
    size_t ncaptures;
    struct rp_opts ro; /* target, timing, timeouts, ignore, TLS ... (record unused) */
    const char *const *secrets;
    size_t nsecrets;
    const char *server_cmd; /* NULL: the target runs on its own */
    uint64_t server_wait_ms;
    const char *out_dir;
    uint64_t runs;  /* 0: no bound */
    double seconds; /* 0: no bound */
    uint64_t seed;
    unsigned jobs;
    unsigned families; /* FZ_* */
    unsigned max_mutations;
    bool feedback; /* keep runs with new behaviour and mutate them further */
    bool strict;
    bool divergence;          /* a divergence is a failure (when the client sent what was
                                 recorded) */
    bool redact;              /* saved cases: secrets redacted */
    bool json;                /* the summary as JSON on standard output */
    bool tty;                 /* a live status line on standard error */
    const char *trace;        /* a JSON line per run (its parent and mutations) */
    const char *repro_opts;   /* replay options a reproducing command repeats */
    volatile int *stop;       /* set (by a signal) to end early */
    const char *const *until; /* stop once each is part of a failure's signature */
    size_t nuntil;
    const char *rules_text; /* --rules: a rules document applied to every run after its
                               mutations (fresh counters each run); NULL none */
};

/* Fuzz. Returns the number of unique failures (>= 0), or -1 with a
 * one-line error (nothing could be run). */
long fz_fuzz(const struct fz_opts *o, char *err, size_t errlen);

/* One run of s recorded to the capture at path (metadata meta, secrets
 * redacted by red unless NULL): 0 with res, or -1 with err (the run could
 * not start, the capture could not be written or closed). */
struct wsrr_redactor;
int fz_record_run(const struct rp_session *s, const struct rp_opts *base, const char *path,
                  const char *meta, const struct wsrr_redactor *red, struct rp_result *res,
                  char *err, size_t errlen);

/* Run the saved case at path `times` times the way `wsrr replay --reproduce`
 * does (plain replay with opts ro: no quiet waits, no pings), the secrets
 * put back; restart sv after a run that made it fail. How many runs
 * reproduced every failure the case records, or -1 with err (the case
 * cannot be read, a run could not start, the server not restarted). */
int fz_replay_case(const char *path, const struct rp_opts *ro, const char *const *secrets,
                   size_t nsecrets, struct fz_server *sv, unsigned times, char *err, size_t errlen);

struct fz_shrink_opts {
    const char *input, *output;
    struct rp_opts ro;
    const char *const *secrets;
    size_t nsecrets;
    const char *server_cmd;
    uint64_t server_wait_ms;
    const char *server_log;
    const char *signature; /* NULL: the first failure the input's first run shows */
    unsigned tries;        /* per candidate, until it fails (default 3) */
    unsigned verify;       /* runs of the result with --reproduce (default 10) */
    unsigned max_tests;    /* candidates at most (default 2000) */
    bool strict;
    bool redact;
    bool json;
    FILE *log;          /* progress, NULL: quiet */
    volatile int *stop; /* set (by a signal) to end early with the smallest so far */
};

/* Shrink. 0: done (the result written), 1: the input does not fail,
 * -1 with a one-line error. */
int fz_shrink(const struct fz_shrink_opts *o, char *err, size_t errlen);

#endif
