/* wsrr.c — the wsrr command: verb dispatch, --help, --version. */
#include "tool.h"
#include "wsrr-config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct verb *const verbs[] = {&verb_proxy,  &verb_replay, &verb_serve,   &verb_fuzz,
                                           &verb_shrink, &verb_ctl,    &verb_ca,      &verb_cat,
                                           &verb_import, &verb_verify, &verb_recover, &verb_demo};
#define NVERBS (sizeof(verbs) / sizeof(verbs[0]))

int tool_usage_error(const char *verb, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "wsrr %s: ", verb);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'wsrr %s --help'.\n", verb);
    return EXIT_BAD_INPUT;
}

int tool_fail(const char *verb, int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "wsrr %s: ", verb);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

int tool_getopt(const struct verb *v, int argc, char **argv, const char *shortopts,
                const struct option *longopts)
{
    char opts[64];
    snprintf(opts, sizeof(opts), ":%sh", shortopts);
    int idx = -1;
    opterr = 0;
    int c = getopt_long(argc, argv, opts, longopts, &idx);
    if (c == 'h') {
        fputs(v->usage, stdout);
        return 'h';
    }
    if (c == '?') {
        if (optopt)
            tool_usage_error(v->name, "unknown option '-%c'", optopt);
        else
            tool_usage_error(v->name, "unknown option '%s'", argv[optind - 1]);
    } else if (c == ':') {
        tool_usage_error(v->name, "option '%s' needs a value", argv[optind - 1]);
        c = '?';
    }
    return c;
}

bool tool_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: wsrr VERB [OPTIONS] [ARGS]\n\n"
               "Record, break and replay WebSocket sessions.\n\nVerbs:\n");
    for (size_t i = 0; i < NVERBS; i++)
        fprintf(f, "  %-9s %s\n", verbs[i]->name, verbs[i]->summary);
    fprintf(f, "\n'wsrr VERB --help' describes a verb. Exit status: 0 all good, 1 a failure or\n"
               "damage was found, 2 bad usage or bad input.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_BAD_INPUT;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--version") || !strcmp(name, "-V") || !strcmp(name, "version")) {
        printf("wsrr %s (capture format %d.%d)\n", WSRR_VERSION, 1, 0);
        return EXIT_OK;
    }
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        if (argc > 2)
            for (size_t i = 0; i < NVERBS; i++)
                if (!strcmp(argv[2], verbs[i]->name)) {
                    fputs(verbs[i]->usage, stdout);
                    return EXIT_OK;
                }
        usage(stdout);
        return EXIT_OK;
    }
    for (size_t i = 0; i < NVERBS; i++)
        if (!strcmp(name, verbs[i]->name)) {
            return verbs[i]->run(argc - 1, argv + 1);
        }
    fprintf(stderr, "wsrr: unknown verb '%s'\n", name);
    usage(stderr);
    return EXIT_BAD_INPUT;
}
