/* cmd_replay.c — `wsrr replay`: drive a captured session against a server
 * and say whether the recorded failure came back (replay/replay.h). */
#include "replay.h"
#include "tool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr replay CAPTURE... --target URL [options]\n"
    "\n"
    "Replay every WebSocket connection of each capture as its client, against\n"
    "the server at URL (ws://HOST:PORT or wss://...; a path in URL replaces the\n"
    "recorded one). Requests go out as recorded, with Host and Origin rewritten\n"
    "for the target, a fresh key and no compression offered; frames go out as\n"
    "recorded (a compressed message as its inflated text), freshly masked.\n"
    "\n"
    "  -t, --target URL     the server to replay against (required)\n"
    "  --timing MODE        causal (default): each client step waits for every\n"
    "                       server step before it in the capture, on any\n"
    "                       connection; recorded: the recorded gaps, divided by\n"
    "                       --speed; asap: no waiting\n"
    "  --speed X            recorded timing: X times as fast (default 1)\n"
    "  --timeout MS         causal: how long a wait for the server may last\n"
    "                       before the connection counts as timed out; also how\n"
    "                       long connections get to end after the last step\n"
    "                       (default 5000)\n"
    "  --gap MS             causal: two client steps on different connections\n"
    "                       with no server step between them in the capture are\n"
    "                       sent at least MS apart, so that the server sees them\n"
    "                       in the recorded order (default 2; 0: back to back)\n"
    "  --ignore PATH        leave this JSON path out when comparing server\n"
    "                       messages (\"ts\", \"data.run_id\"); repeatable\n"
    "  -H, --header 'N: V'  add this header, replacing a recorded one; repeatable\n"
    "  --insecure           wss: do not verify the server's certificate\n"
    "  --secret NAME=VALUE  the value of the redacted secret NAME (a placeholder\n"
    "                       <redacted:NAME:...> in the capture); else taken from\n"
    "                       the environment variable WSRR_SECRET_NAME; repeatable\n"
    "  --check              (default) exit 1 on any 1011-1014 or 1006 close,\n"
    "                       abnormal end, reset, timeout, 5xx answer or\n"
    "                       divergence from the recorded server messages\n"
    "  --reproduce          exit 0 when every failure the capture records comes\n"
    "                       back on the same connection, the same way, at the\n"
    "                       same message; 1 otherwise\n"
    "  --repeat N           run N times; print how many reproduced (or failed)\n"
    "  -v, --verbose        every connection's steps and ending, per run\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 as above; 1 a failure (--check) or no reproduction\n"
    "(--reproduce) in any run; 2 bad usage or a capture that cannot be read.\n";

static int run_replay(int argc, char **argv);

const struct verb verb_replay = {"replay", "replay a capture against a server; did it fail again?",
                                 usage, run_replay};

#define MAX_LIST 64

/* One run's report: a line per connection that failed or diverged (every
 * connection with --verbose). Returns whether the run failed (--check) or
 * reproduced (--reproduce). */
static bool report(const char *path, const struct rp_session *s, const struct rp_result *res,
                   bool reproduce, bool verbose, unsigned run, unsigned runs)
{
    char tag[64] = "";
    if (runs > 1)
        snprintf(tag, sizeof(tag), " run %u/%u", run, runs);
    for (size_t i = 0; i < res->nconns; i++) {
        const struct rp_conn_result *cr = &res->conns[i];
        bool bad = rp_outcome_failed(&cr->out) || cr->diverged;
        if (!verbose && (!bad || runs > 1))
            continue;
        char d[200];
        rp_outcome_describe(&cr->out, d, sizeof(d));
        printf("%s%s: connection %u: %s\n", path, tag, s->conns[i].id, d);
        if (cr->diverged)
            printf("%s%s: connection %u: server message %u differs\n    recorded: %s\n"
                   "    received: %s\n",
                   path, tag, s->conns[i].id, cr->div_nth, cr->expected, cr->received);
    }
    if (reproduce) {
        char why[400];
        bool ok = rp_result_reproduced(s, res, why, sizeof(why));
        if (runs == 1 || verbose || !ok)
            printf("%s%s: %s: %s\n", path, tag, ok ? "reproduced" : "not reproduced", why);
        return ok;
    }
    bool failed = rp_result_failed(res);
    if (verbose || runs == 1)
        printf("%s%s: %s\n", path, tag, failed ? "FAILED" : "ok");
    return failed;
}

static int run_replay(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"target", required_argument, NULL, 't'},
        {"timing", required_argument, NULL, 'T'},
        {"speed", required_argument, NULL, 'S'},
        {"timeout", required_argument, NULL, 'o'},
        {"gap", required_argument, NULL, 'g'},
        {"ignore", required_argument, NULL, 'i'},
        {"header", required_argument, NULL, 'H'},
        {"insecure", no_argument, NULL, 'k'},
        {"secret", required_argument, NULL, 's'},
        {"check", no_argument, NULL, 'c'},
        {"reproduce", no_argument, NULL, 'r'},
        {"repeat", required_argument, NULL, 'n'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *ignore[MAX_LIST], *headers[MAX_LIST], *secrets[MAX_LIST];
    size_t nsecrets = 0;
    struct rp_opts o = {.timing = RP_CAUSAL,
                        .gap_us = 2000,
                        .speed = 1,
                        .timeout_ms = 5000,
                        .ignore = ignore,
                        .headers = headers};
    bool reproduce = false, verbose = false;
    uint64_t repeat = 1, v;
    int opt;
    while ((opt = tool_getopt(&verb_replay, argc, argv, "t:H:vh", longopts)) != -1) {
        switch (opt) {
        case 't': o.target = optarg; break;
        case 'T':
            if (!strcmp(optarg, "causal"))
                o.timing = RP_CAUSAL;
            else if (!strcmp(optarg, "recorded"))
                o.timing = RP_RECORDED;
            else if (!strcmp(optarg, "asap"))
                o.timing = RP_ASAP;
            else
                return tool_usage_error("replay", "--timing %s: expected causal, recorded or asap",
                                        optarg);
            break;
        case 'S': {
            char *end;
            o.speed = strtod(optarg, &end);
            if (*end || !(o.speed > 0 && o.speed <= 1000))
                return tool_usage_error("replay", "--speed %s: expected a number in (0, 1000]",
                                        optarg);
            break;
        }
        case 'o':
            if (!tool_parse_u64(optarg, 3600000, &o.timeout_ms) || !o.timeout_ms)
                return tool_usage_error("replay", "--timeout %s: expected 1..3600000 ms", optarg);
            break;
        case 'g':
            if (!tool_parse_u64(optarg, 10000, &v))
                return tool_usage_error("replay", "--gap %s: expected 0..10000 ms", optarg);
            o.gap_us = v * 1000;
            break;
        case 'i':
            if (o.nignore == MAX_LIST)
                return tool_usage_error("replay", "more than %d --ignore", MAX_LIST);
            ignore[o.nignore++] = optarg;
            break;
        case 'H': {
            const char *colon = strchr(optarg, ':');
            if (!colon || colon == optarg || strpbrk(optarg, "\r\n"))
                return tool_usage_error("replay", "--header '%s': expected 'Name: value'", optarg);
            if (o.nheaders == MAX_LIST)
                return tool_usage_error("replay", "more than %d --header", MAX_LIST);
            headers[o.nheaders++] = optarg;
            break;
        }
        case 'k': o.insecure = true; break;
        case 's': {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg)
                return tool_usage_error("replay", "--secret %s: expected NAME=VALUE", optarg);
            if (nsecrets == MAX_LIST)
                return tool_usage_error("replay", "more than %d --secret", MAX_LIST);
            secrets[nsecrets++] = optarg;
            break;
        }
        case 'c': reproduce = false; break;
        case 'r': reproduce = true; break;
        case 'n':
            if (!tool_parse_u64(optarg, 100000, &v) || !v)
                return tool_usage_error("replay", "--repeat %s: expected 1..100000", optarg);
            repeat = v;
            break;
        case 'v': verbose = true; break;
        case 'h': return EXIT_OK;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind >= argc)
        return tool_usage_error("replay", "no capture given");
    if (!o.target)
        return tool_usage_error("replay", "--target URL is required");
    if (verbose)
        o.log = stderr;
    char terr[300];
    if (rp_check_target(o.target, terr, sizeof(terr)) < 0)
        return tool_usage_error("replay", "%s", terr);

    int status = EXIT_OK;
    for (int a = optind; a < argc; a++) {
        char err[512];
        struct rp_session *s = rp_session_load(argv[a], err, sizeof(err));
        if (!s || rp_session_fill_secrets(s, secrets, nsecrets, err, sizeof(err)) < 0) {
            rp_session_free(s);
            return tool_fail("replay", EXIT_BAD_INPUT, "%s", err);
        }
        unsigned hits = 0; /* runs that reproduced, or that failed (--check) */
        for (unsigned run = 1; run <= repeat; run++) {
            struct rp_result res;
            if (rp_run(s, &o, &res, err, sizeof(err)) < 0) {
                rp_session_free(s);
                return tool_fail("replay", EXIT_BAD_INPUT, "%s", err);
            }
            hits += report(argv[a], s, &res, reproduce, verbose, run, (unsigned)repeat);
            rp_result_free(&res);
            fflush(stdout);
        }
        if (repeat > 1)
            printf("%s: %s %u/%u runs (%.0f%%)\n", argv[a], reproduce ? "reproduced" : "failed",
                   hits, (unsigned)repeat, 100.0 * hits / (double)repeat);
        if (reproduce ? hits < repeat : hits > 0)
            status = EXIT_FAILURE_FOUND;
        rp_session_free(s);
    }
    return status;
}
