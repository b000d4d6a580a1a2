/* replay_cli.c — the options replay, fuzz and shrink share (replay_cli.h). */
#include "replay_cli.h"

#include "tool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void replay_cli_init(struct replay_cli *c, uint64_t timeout_ms)
{
    memset(c, 0, sizeof(*c));
    c->o = (struct rp_opts){.timing = RP_CAUSAL,
                            .gap_us = 2000,
                            .speed = 1,
                            .timeout_ms = timeout_ms,
                            .ignore = c->ignore,
                            .headers = c->headers,
                            .sets = c->sets,
                            .extras = c->extras};
}

/* Append val to a repeatable option's list; false (the error printed) when
 * the list is full. */
static bool add_to(const char *verb, const char **list, size_t *n, const char *opt, const char *val)
{
    if (*n == REPLAY_CLI_MAX_LIST) {
        tool_usage_error(verb, "more than %d %s", REPLAY_CLI_MAX_LIST, opt);
        return false;
    }
    list[(*n)++] = val;
    return true;
}

/* "KEY=VALUE" with a non-empty KEY */
static bool key_value(const char *s)
{
    return s[0] != '=' && strchr(s, '=') != NULL;
}

int replay_cli_option(struct replay_cli *c, const char *verb, int opt, const char *arg)
{
    struct rp_opts *o = &c->o;
    uint64_t v;
    switch (opt) {
    case 't': o->target = arg; return 1;
    case RCLI_TIMING:
        if (!strcmp(arg, "causal"))
            o->timing = RP_CAUSAL;
        else if (!strcmp(arg, "recorded"))
            o->timing = RP_RECORDED;
        else if (!strcmp(arg, "asap"))
            o->timing = RP_ASAP;
        else
            return tool_usage_error(verb, "--timing %s: expected causal, recorded or asap", arg),
                   -1;
        return 1;
    case RCLI_SPEED: {
        char *end;
        o->speed = strtod(arg, &end);
        if (*end || !(o->speed > 0 && o->speed <= 1000))
            return tool_usage_error(verb, "--speed %s: expected a number in (0, 1000]", arg), -1;
        return 1;
    }
    case RCLI_TIMEOUT:
        if (!tool_parse_u64(arg, 3600000, &o->timeout_ms) || !o->timeout_ms)
            return tool_usage_error(verb, "--timeout %s: expected 1..3600000 ms", arg), -1;
        return 1;
    case RCLI_GAP:
        if (!tool_parse_u64(arg, 10000, &v))
            return tool_usage_error(verb, "--gap %s: expected 0..10000 ms", arg), -1;
        o->gap_us = v * 1000;
        return 1;
    case RCLI_IGNORE: return add_to(verb, c->ignore, &o->nignore, "--ignore", arg) ? 1 : -1;
    case 'H': {
        const char *colon = strchr(arg, ':');
        if (!colon || colon == arg || strpbrk(arg, "\r\n"))
            return tool_usage_error(verb, "--header '%s': expected 'Name: value'", arg), -1;
        return add_to(verb, c->headers, &o->nheaders, "--header", arg) ? 1 : -1;
    }
    case RCLI_INSECURE: o->insecure = true; return 1;
    case RCLI_CA: o->ca_file = arg; return 1;
    case RCLI_EXTRA:
        if (strcmp(arg, "*") && !key_value(arg))
            return tool_usage_error(verb, "--extra %s: expected PATH=VALUE or '*'", arg), -1;
        return add_to(verb, c->extras, &o->nextras, "--extra", arg) ? 1 : -1;
    case RCLI_SET:
        if (!key_value(arg))
            return tool_usage_error(verb, "--set %s: expected PATH=VALUE", arg), -1;
        return add_to(verb, c->sets, &o->nsets, "--set", arg) ? 1 : -1;
    case RCLI_SECRET:
        if (!key_value(arg))
            return tool_usage_error(verb, "--secret %s: expected NAME=VALUE", arg), -1;
        return add_to(verb, c->secrets, &c->nsecrets, "--secret", arg) ? 1 : -1;
    default: return 0;
    }
}

int replay_cli_check(struct replay_cli *c, const char *verb)
{
    if (!c->o.target)
        return tool_usage_error(verb, "--target URL is required");
    char err[300];
    if (rp_check_target(c->o.target, err, sizeof(err)) < 0)
        return tool_usage_error(verb, "%s", err);
    return EXIT_OK;
}

/* a value for a shell line: as is when it is plain, else in single quotes */
static void quoted(char *out, size_t cap, const char *s)
{
    if (s[0] && !s[strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                             "._-/:=,@+")]) {
        snprintf(out, cap, "%s", s);
        return;
    }
    size_t k = 0;
    if (k + 1 < cap)
        out[k++] = '\'';
    for (const char *p = s; *p && k + 5 < cap; p++) {
        if (*p == '\'') {
            memcpy(out + k, "'\\''", 4);
            k += 4;
        } else {
            out[k++] = *p;
        }
    }
    if (k + 1 < cap)
        out[k++] = '\'';
    out[k] = '\0';
}

void replay_cli_repro(const struct replay_cli *c, char *out, size_t cap)
{
    static const char *const timing[] = {"causal", "recorded", "asap"};
    const struct rp_opts *o = &c->o;
    size_t n = (size_t)snprintf(
        out, cap, "%s%s --timeout %llu --gap %llu", o->timing != RP_CAUSAL ? " --timing " : "",
        o->timing != RP_CAUSAL ? timing[o->timing] : "", (unsigned long long)o->timeout_ms,
        (unsigned long long)(o->gap_us / 1000));
    char q[600];
    for (size_t i = 0; i < o->nignore && n < cap; i++) {
        quoted(q, sizeof(q), o->ignore[i]);
        n += (size_t)snprintf(out + n, cap - n, " --ignore %s", q);
    }
    for (size_t i = 0; i < o->nextras && n < cap; i++) {
        quoted(q, sizeof(q), o->extras[i]);
        n += (size_t)snprintf(out + n, cap - n, " --extra %s", q);
    }
    if (o->insecure && n < cap)
        n += (size_t)snprintf(out + n, cap - n, " --insecure");
    if (o->ca_file && n < cap) {
        quoted(q, sizeof(q), o->ca_file);
        snprintf(out + n, cap - n, " --ca %s", q);
    }
}
