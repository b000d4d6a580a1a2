/* tool.h — shared plumbing of the wsrr command's verbs. */
#ifndef WSRR_TOOL_H
#define WSRR_TOOL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

/* Exit statuses, the same for every verb. */
#define EXIT_OK            0 /* all good */
#define EXIT_FAILURE_FOUND 1 /* a failure, a divergence or damage was found */
#define EXIT_BAD_INPUT     2 /* bad usage or bad input */

struct verb {
    const char *name;
    const char *summary;
    const char *usage; /* full --help text */
    int (*run)(int argc, char **argv);
};

/* Print "wsrr VERB: message" and a pointer to --help; returns 2. */
int tool_usage_error(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Print "wsrr VERB: message"; returns code. */
int tool_fail(const char *verb, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* getopt_long with our error messages. Returns the option, -1 at the end,
 * or '?' after printing an error (the caller returns 2). Handles --help
 * (prints usage and returns 'h'). */
int tool_getopt(const struct verb *v, int argc, char **argv, const char *shortopts,
                const struct option *longopts);

/* Parse an unsigned decimal; false when it is not one or exceeds max. */
bool tool_parse_u64(const char *s, uint64_t max, uint64_t *out);

/* A capture being written by a verb. Without force, OUT is created
 * exclusively and removed again if the verb fails. With force, the capture
 * is written to a temporary file beside OUT and renamed over it only when
 * complete, so a failure never destroys what OUT held. "-" is standard
 * output. */
struct wsrr_capture_opts;
struct wsrr_capture_writer;
struct tool_output {
    const char *path;
    char tmp[4096];
    struct wsrr_capture_writer *w;
};

/* Returns 0 with out->w open, or prints "wsrr VERB: ..." and returns 2.
 * Refuses an OUT that is the same file as `input` (may be NULL). */
int tool_output_open(const char *verb, struct tool_output *out, const char *path, bool force,
                     const char *input, struct wsrr_capture_opts *opts);

/* Finish: close the writer and put the file in place (ok), or discard it.
 * Returns 0, or prints the error and returns 2. */
int tool_output_close(const char *verb, struct tool_output *out, bool ok);

extern const struct verb verb_cat, verb_import, verb_verify, verb_recover, verb_proxy, verb_ca,
    verb_ctl, verb_replay, verb_serve, verb_demo, verb_fuzz, verb_shrink;

#endif
