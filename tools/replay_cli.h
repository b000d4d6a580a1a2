/* replay_cli.h — the options replay, fuzz and shrink share: the target,
 * timing, comparisons, headers, TLS and secrets (into struct rp_opts). */
#ifndef WSRR_TOOL_REPLAY_CLI_H
#define WSRR_TOOL_REPLAY_CLI_H

#include "replay.h"

#include <getopt.h>

#define REPLAY_CLI_MAX_LIST 64

/* Lives where it was initialised: o points into the lists. */
struct replay_cli {
    struct rp_opts o;
    const char *ignore[REPLAY_CLI_MAX_LIST], *headers[REPLAY_CLI_MAX_LIST];
    const char *sets[REPLAY_CLI_MAX_LIST], *extras[REPLAY_CLI_MAX_LIST];
    const char *secrets[REPLAY_CLI_MAX_LIST];
    size_t nsecrets;
};

/* Codes of the shared options that have no short form (above any char). */
enum {
    RCLI_TIMING = 0x200,
    RCLI_SPEED,
    RCLI_TIMEOUT,
    RCLI_GAP,
    RCLI_IGNORE,
    RCLI_INSECURE,
    RCLI_CA,
    RCLI_EXTRA,
    RCLI_SET,
    RCLI_SECRET,
};

/* The shared long options, for a verb's own table (-t and -H are theirs). */
#define REPLAY_CLI_LONGOPTS                                                                        \
    {"target", required_argument, NULL, 't'}, {"timing", required_argument, NULL, RCLI_TIMING},    \
        {"speed", required_argument, NULL, RCLI_SPEED},                                            \
        {"timeout", required_argument, NULL, RCLI_TIMEOUT},                                        \
        {"gap", required_argument, NULL, RCLI_GAP},                                                \
        {"ignore", required_argument, NULL, RCLI_IGNORE},                                          \
        {"header", required_argument, NULL, 'H'}, {"insecure", no_argument, NULL, RCLI_INSECURE},  \
        {"ca", required_argument, NULL, RCLI_CA}, {"extra", required_argument, NULL, RCLI_EXTRA},  \
        {"set", required_argument, NULL, RCLI_SET},                                                \
    {                                                                                              \
        "secret", required_argument, NULL, RCLI_SECRET                                             \
    }

/* Defaults: causal timing, a 2 ms gap, speed 1, timeout_ms as given. */
void replay_cli_init(struct replay_cli *c, uint64_t timeout_ms);

/* One parsed option: 1 when it is a shared one (taken), 0 when it is not,
 * -1 when its value is bad (the error printed: exit 2). */
int replay_cli_option(struct replay_cli *c, const char *verb, int opt, const char *arg);

/* After parsing: a target given and valid? 0, or the error printed and 2. */
int replay_cli_check(struct replay_cli *c, const char *verb);

/* The shared options a reproducing `wsrr replay` needs to see the same
 * thing (timing, timeout, gap, ignore, extra, TLS), as " --opt value"...;
 * headers, sets and secrets are left out (they may hold secrets). */
void replay_cli_repro(const struct replay_cli *c, char *out, size_t cap);

#endif
