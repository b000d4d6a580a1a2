/* cmd_replay.c — `wsrr replay`: drive a captured session against a server
 * and say whether the recorded failure came back (replay/replay.h). */
#include "replay.h"
#include "replay_cli.h"
#include "rules_apply.h"
#include "tool.h"

#include "wsrr-config.h"
#include "wsrr/capture.h"
#include "wsrr/common.h"
#include "wsrr/redact.h"
#include "wsrr/rules.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/rand.h>
#include <event2/buffer.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
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
    "  --extra PATH=VALUE   a server message that is not the one expected but has\n"
    "                       VALUE at PATH (a heartbeat: --extra type=heartbeat)\n"
    "                       is let pass: not counted, not compared; '*' lets any\n"
    "                       such message pass; repeatable\n"
    "  -H, --header 'N: V'  add this header, replacing a recorded one; repeatable\n"
    "  --ca FILE            wss: verify the server's certificate against this CA\n"
    "                       (PEM; default: the system's trust store)\n"
    "  --insecure           wss: do not verify the server's certificate\n"
    "  --set PATH=VALUE     in client JSON messages that have PATH (dotted), put\n"
    "                       VALUE there (JSON, else a string; @uuid: a fresh\n"
    "                       UUID per run, the same in every message of the run)\n"
    "  --rules FILE         apply a rules file (docs/rules.md) to what the client\n"
    "                       sends, as the proxy would: messages dropped, delayed,\n"
    "                       duplicated, reordered, corrupted, truncated,\n"
    "                       fragmented, replaced, frames injected, a close or a\n"
    "                       reset instead; each fault applied is listed. A server\n"
    "                       message the changed traffic does not get is waited\n"
    "                       for 100 ms plus twice its recorded time; a differing\n"
    "                       answer is then not a failure. No seed in the file: a\n"
    "                       random one, printed\n"
    "  --record OUT         write the runs' own traffic to the capture OUT (every\n"
    "                       run's connections, numbered on; secrets redacted\n"
    "                       unless --no-redact); --force replaces OUT\n"
    "  --jobs N             replay N captures at once (reports in list order)\n"
    "  --shard K/N          replay only the captures of shard K of N (the Kth,\n"
    "                       K+Nth, ... of the list): one CI machine each\n"
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
    "  --json               one JSON object per capture on standard output: the\n"
    "                       mode, the rate, and every run's connections (how each\n"
    "                       ended, after how many messages, any divergence)\n"
    "  --junit FILE         a JUnit XML report: a test case per capture, failing\n"
    "                       as the exit status would, with the report as text\n"
    "  -v, --verbose        every connection's steps and ending, per run\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 as above; 1 a failure (--check) or no reproduction\n"
    "(--reproduce) in any run; 2 bad usage or a capture that cannot be read.\n";

static int run_replay(int argc, char **argv);

const struct verb verb_replay = {"replay", "replay a capture against a server; did it fail again?",
                                 usage, run_replay};

/* Where a capture's report goes: standard output (unless --json) and the
 * capture's text for --junit. */
struct sink {
    bool quiet;
    struct evbuffer *text; /* the report, for --junit */
    struct evbuffer *all;  /* quiet (several jobs): what goes to standard output later */
    bool json;             /* --json: the text report is not printed */
};

static void say(struct sink *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct sink *k, const char *fmt, ...)
{
    va_list ap;
    if (!k->quiet) {
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
    if (k->text) {
        va_start(ap, fmt);
        evbuffer_add_vprintf(k->text, fmt, ap);
        va_end(ap);
    }
    if (k->quiet && k->all && !k->json) {
        va_start(ap, fmt);
        evbuffer_add_vprintf(k->all, fmt, ap);
        va_end(ap);
    }
}

static const char *const end_names[] = {"open",  "rejected", "closed", "abnormal",
                                        "reset", "timeout",  "failed"};

static cJSON *conn_json(const struct rp_session *s, const struct rp_result *res, size_t i)
{
    const struct rp_conn_result *cr = &res->conns[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "conn", s->conns[i].id);
    cJSON_AddStringToObject(j, "end", end_names[cr->out.end]);
    if (cr->out.end == RP_END_CLOSED) {
        cJSON_AddNumberToObject(j, "code", cr->out.code);
        cJSON_AddStringToObject(j, "reason", cr->out.reason);
        cJSON_AddStringToObject(j, "by", cr->out.by_server ? "server" : "client");
    } else if (cr->out.end == RP_END_REJECTED) {
        cJSON_AddNumberToObject(j, "status", cr->out.status);
    } else if (cr->out.end == RP_END_TIMEOUT || cr->out.end == RP_END_FAILED) {
        cJSON_AddStringToObject(j, "detail", cr->out.reason);
    }
    cJSON_AddNumberToObject(j, "messages", cr->out.messages);
    if (cr->extras)
        cJSON_AddNumberToObject(j, "extra", cr->extras);
    cJSON_AddBoolToObject(j, "failed", rp_outcome_failed(&cr->out));
    if (cr->diverged) {
        cJSON *d = cJSON_AddObjectToObject(j, "diverged");
        cJSON_AddNumberToObject(d, "message", cr->div_nth);
        cJSON_AddStringToObject(d, "recorded", cr->expected);
        cJSON_AddStringToObject(d, "received", cr->received);
    }
    return j;
}

/* One run's report: a line per connection that failed or diverged (every
 * connection with --verbose), and for --json an entry in runs. Returns
 * whether the run failed (--check) or reproduced (--reproduce). */
static bool report(struct sink *k, const char *path, const struct rp_session *s,
                   const struct rp_result *res, bool reproduce, bool verbose, unsigned run,
                   unsigned runs, bool changed, cJSON *jruns)
{
    char tag[64] = "";
    if (runs > 1)
        snprintf(tag, sizeof(tag), " run %u/%u", run, runs);
    cJSON *jr = jruns ? cJSON_CreateObject() : NULL, *jc = NULL;
    if (jr) {
        cJSON_AddItemToArray(jruns, jr);
        cJSON_AddNumberToObject(jr, "run", run);
        jc = cJSON_AddArrayToObject(jr, "connections");
    }
    bool failed = false; /* --check: a failure, or a divergence unless --rules changed content */
    for (size_t i = 0; i < res->nconns; i++) {
        const struct rp_conn_result *cr = &res->conns[i];
        bool bad = rp_outcome_failed(&cr->out) || (cr->diverged && !changed);
        failed = failed || bad;
        if (jc)
            cJSON_AddItemToArray(jc, conn_json(s, res, i));
        if (!verbose && (!bad || runs > 1))
            continue;
        char d[200];
        rp_outcome_describe(&cr->out, d, sizeof(d));
        say(k, "%s%s: connection %u: %s\n", path, tag, s->conns[i].id, d);
        if (cr->diverged)
            say(k,
                "%s%s: connection %u: server message %u differs\n    recorded: %s\n"
                "    received: %s\n",
                path, tag, s->conns[i].id, cr->div_nth, cr->expected, cr->received);
    }
    if (reproduce) {
        char why[400];
        bool ok = rp_result_reproduced(s, res, why, sizeof(why));
        if (runs == 1 || verbose || !ok)
            say(k, "%s%s: %s: %s\n", path, tag, ok ? "reproduced" : "not reproduced", why);
        if (jr) {
            cJSON_AddBoolToObject(jr, "reproduced", ok);
            cJSON_AddStringToObject(jr, "why", why);
        }
        return ok;
    }
    if (verbose || runs == 1)
        say(k, "%s%s: %s\n", path, tag, failed ? "FAILED" : "ok");
    if (jr)
        cJSON_AddBoolToObject(jr, "failed", failed);
    return failed;
}

/* XML text: &, <, >, " escaped, control characters dropped. */
static void xml_text(FILE *f, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '&')
            fputs("&amp;", f);
        else if (ch == '<')
            fputs("&lt;", f);
        else if (ch == '>')
            fputs("&gt;", f);
        else if (ch == '"')
            fputs("&quot;", f);
        else if (ch >= 0x20 || ch == '\n' || ch == '\t')
            fputc(ch, f);
    }
}

struct junit_case {
    const char *name; /* NULL: not in this shard */
    bool failed;
    double secs;
    char *text; /* the report */
    char *out;  /* what goes to standard output (several jobs) */
    char *err;  /* the capture could not be replayed */
};

/* One <testsuite>, a <testcase> per capture; a failing one carries its
 * report. */
static int write_junit(const char *path, const struct junit_case *c, size_t n, bool reproduce)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return tool_fail("replay", EXIT_BAD_INPUT, "--junit %s: %s", path, strerror(errno));
    size_t bad = 0, tests = 0;
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        bad += c[i].failed;
        total += c[i].secs;
        tests += c[i].name != NULL; /* not in this shard */
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f,
            "<testsuites>\n<testsuite name=\"wsrr replay %s\" tests=\"%zu\" failures=\"%zu\" "
            "errors=\"0\" time=\"%.3f\">\n",
            reproduce ? "--reproduce" : "--check", tests, bad, total);
    for (size_t i = 0; i < n; i++) {
        if (!c[i].name)
            continue;
        fprintf(f, "  <testcase classname=\"wsrr.replay\" name=\"");
        xml_text(f, c[i].name, strlen(c[i].name));
        fprintf(f, "\" time=\"%.3f\">\n", c[i].secs);
        if (c[i].failed) {
            const char *last = c[i].text, *q;
            for (q = c[i].text; (q = strchr(q, '\n')) && q[1]; q++)
                last = q + 1; /* the summary is the last line */
            fprintf(f, "    <failure message=\"");
            xml_text(f, last, strcspn(last, "\n"));
            fprintf(f, "\">");
            xml_text(f, c[i].text, strlen(c[i].text));
            fprintf(f, "</failure>\n");
        }
        fprintf(f, "    <system-out>");
        xml_text(f, c[i].text, strlen(c[i].text));
        fprintf(f, "</system-out>\n  </testcase>\n");
    }
    fprintf(f, "</testsuite>\n</testsuites>\n");
    if (fclose(f) != 0)
        return tool_fail("replay", EXIT_BAD_INPUT, "--junit %s: %s", path, strerror(errno));
    return EXIT_OK;
}

/* Captures to replay, shared by the workers of --jobs. */
struct job {
    char **paths;
    size_t n;
    const struct rp_opts *o;
    const char *const *secrets;
    size_t nsecrets;
    bool reproduce, verbose, json, stream;
    const char *rules;   /* --rules FILE: applied to each capture (fresh counters) */
    uint64_t rules_seed; /* ... its seed when the file gives none */
    uint32_t conn_base;  /* --record: ids used by the runs so far */
    unsigned repeat;
    uint64_t shard_k, shard_n;
    struct junit_case *cases;
    size_t next;
    pthread_mutex_t mu;
};

static char *take_text(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *t = malloc(n + 1);
    if (t) {
        evbuffer_remove(b, t, n);
        t[n] = '\0';
    }
    return t;
}

/* --rules: the faults the rules make in the client's traffic of s, listed
 * (and in the JSON report). How many changed what the client sends (not
 * only when), or -1 (the error listed). */
static int apply_rules(struct job *j, struct sink *k, const char *path, struct rp_session *s,
                       cJSON *jcap)
{
    char err[512];
    struct wsrr_rules *rs = wsrr_rules_load(j->rules, err, sizeof(err));
    if (rs && !rs->seed_given)
        rs->seed = j->rules_seed;
    cJSON *log = cJSON_CreateArray();
    int changed = 0;
    int n = rs && log ? rp_rules_apply(s, rs, log, &changed) : -1;
    if (!rs)
        say(k, "%s: %s\n", path, err);
    for (const cJSON *e = log ? log->child : NULL; e; e = e->next) {
        const cJSON *skip = cJSON_GetObjectItemCaseSensitive(e, "skipped");
        say(k, "%s: rule %s: %s on connection %d at #%.0f (%s message)%s%s\n", path,
            cJSON_GetObjectItemCaseSensitive(e, "rule")->valuestring,
            cJSON_GetObjectItemCaseSensitive(e, "action")->valuestring,
            cJSON_GetObjectItemCaseSensitive(e, "conn")->valueint,
            cJSON_GetObjectItemCaseSensitive(e, "seq")->valuedouble,
            cJSON_GetObjectItemCaseSensitive(e, "dir")->valuestring, skip ? ": not applied: " : "",
            skip ? skip->valuestring : "");
    }
    if (jcap && log)
        cJSON_AddItemToObject(jcap, "faults", log);
    else
        cJSON_Delete(log);
    wsrr_rules_free(rs);
    return n < 0 ? -1 : changed;
}

/* Replay capture i repeat times; its report goes to standard output at once
 * (one job) or into cases[i] (several). */
static void replay_one(struct job *j, size_t i)
{
    struct junit_case *c = &j->cases[i];
    const char *path = j->paths[i];
    char err[512];
    c->name = path;
    struct rp_session *s = rp_session_load(path, err, sizeof(err));
    if (!s || rp_session_fill_secrets(s, j->secrets, j->nsecrets, err, sizeof(err)) < 0) {
        rp_session_free(s);
        c->err = strdup(err);
        return;
    }
    struct sink k = {.quiet = j->json || !j->stream,
                     .text = evbuffer_new(),
                     .all = evbuffer_new(),
                     .json = j->json};
    cJSON *jcap = j->json ? cJSON_CreateObject() : NULL;
    cJSON *jruns = jcap ? cJSON_AddArrayToObject(jcap, "runs") : NULL;
    int faults = j->rules ? apply_rules(j, &k, path, s, jcap) : 0;
    if (faults < 0) {
        char e2[600];
        snprintf(e2, sizeof(e2), "%s: --rules %s: could not be applied", path, j->rules);
        c->err = strdup(e2);
        cJSON_Delete(jcap);
        if (k.text)
            evbuffer_free(k.text);
        if (k.all)
            evbuffer_free(k.all);
        rp_session_free(s);
        return;
    }
    uint64_t t0 = wsrr_now_ns();
    unsigned hits = 0; /* runs that reproduced, or that failed (--check) */
    for (unsigned run = 1; run <= j->repeat; run++) {
        struct rp_result res;
        struct rp_opts o = *j->o;
        if (faults > 0)
            o.quiet_ms = 100; /* answers the changed traffic may not get */
        o.conn_base = j->conn_base;
        j->conn_base += (uint32_t)s->nconns;
        if (rp_run(s, &o, &res, err, sizeof(err)) < 0) {
            char e2[700];
            snprintf(e2, sizeof(e2), "%s: %s", path, err);
            c->err = strdup(e2);
            break;
        }
        hits +=
            report(&k, path, s, &res, j->reproduce, j->verbose, run, j->repeat, faults > 0, jruns);
        rp_result_free(&res);
        if (j->stream)
            fflush(stdout);
    }
    if (j->repeat > 1)
        say(&k, "%s: %s %u/%u runs (%.0f%%)\n", path, j->reproduce ? "reproduced" : "failed", hits,
            j->repeat, 100.0 * hits / (double)j->repeat);
    c->failed = j->reproduce ? hits < j->repeat : hits > 0;
    c->secs = (double)(wsrr_now_ns() - t0) / 1e9;
    if (jcap) {
        cJSON_AddStringToObject(jcap, "capture", path);
        cJSON_AddStringToObject(jcap, "mode", j->reproduce ? "reproduce" : "check");
        cJSON_AddNumberToObject(jcap, "repeat", j->repeat);
        cJSON_AddNumberToObject(jcap, j->reproduce ? "reproduced" : "failed", hits);
        cJSON_AddBoolToObject(jcap, "ok", !c->failed);
        char *txt = cJSON_PrintUnformatted(jcap);
        if (txt && j->stream)
            puts(txt);
        else if (txt && k.all)
            evbuffer_add_printf(k.all, "%s\n", txt);
        cJSON_free(txt);
        cJSON_Delete(jcap);
    }
    c->text = k.text ? take_text(k.text) : NULL;
    c->out = k.all ? take_text(k.all) : NULL;
    if (k.text)
        evbuffer_free(k.text);
    if (k.all)
        evbuffer_free(k.all);
    rp_session_free(s);
}

static void *worker(void *arg)
{
    struct job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t i = j->next++;
        pthread_mutex_unlock(&j->mu);
        if (i >= j->n)
            return NULL;
        if (i % j->shard_n == j->shard_k - 1)
            replay_one(j, i);
    }
}

static int run_replay(int argc, char **argv)
{
    static const struct option longopts[] = {
        REPLAY_CLI_LONGOPTS,
        {"shard", required_argument, NULL, 'P'},
        {"jobs", required_argument, NULL, 'N'},
        {"record", required_argument, NULL, 'R'},
        {"force", no_argument, NULL, 'F'},
        {"no-redact", no_argument, NULL, 'U'},
        {"check", no_argument, NULL, 'c'},
        {"reproduce", no_argument, NULL, 'r'},
        {"repeat", required_argument, NULL, 'n'},
        {"verbose", no_argument, NULL, 'v'},
        {"json", no_argument, NULL, 'j'},
        {"junit", required_argument, NULL, 'J'},
        {"rules", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct replay_cli cli;
    replay_cli_init(&cli, 5000);
    struct rp_opts *o = &cli.o;
    uint64_t shard_k = 1, shard_n = 1, jobs = 1;
    const char *record = NULL;
    bool force = false, redact = true;
    bool reproduce = false, verbose = false, json = false;
    const char *junit = NULL, *rules = NULL;
    uint64_t rules_seed = 0; /* for a rules file without one */
    uint64_t repeat = 1, v;
    int opt;
    while ((opt = tool_getopt(&verb_replay, argc, argv, "t:H:vh", longopts)) != -1) {
        switch (opt) {
        case 'R': record = optarg; break;
        case 'F': force = true; break;
        case 'U': redact = false; break;
        case 'N':
            if (!tool_parse_u64(optarg, 64, &jobs) || !jobs)
                return tool_usage_error("replay", "--jobs %s: expected 1..64", optarg);
            break;
        case 'P': {
            char *slash = strchr(optarg, '/');
            if (!slash || (*slash = '\0', false) || !tool_parse_u64(optarg, 100000, &shard_k) ||
                !tool_parse_u64(slash + 1, 100000, &shard_n) || !shard_k || shard_k > shard_n)
                return tool_usage_error("replay", "--shard: expected K/N with 1 <= K <= N");
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
        case 'j': json = true; break;
        case 'J': junit = optarg; break;
        case 'L': {
            char err[512];
            struct wsrr_rules *rs = wsrr_rules_load(optarg, err, sizeof(err));
            if (!rs)
                return tool_fail("replay", EXIT_BAD_INPUT, "--rules %s", err);
            if (!rs->seed_given) { /* as the proxy: a random one, said so it can be repeated */
                if (RAND_bytes((unsigned char *)&rules_seed, sizeof(rules_seed)) != 1)
                    rules_seed = wsrr_now_ns();
                rules_seed &= (1ull << 53) - 1; /* exact in JSON */
                fprintf(stderr,
                        "wsrr replay: --rules %s has no seed: %llu (give \"seed\": %llu in the "
                        "file for the same faults again)\n",
                        optarg, (unsigned long long)rules_seed, (unsigned long long)rules_seed);
            }
            wsrr_rules_free(rs);
            rules = optarg;
            break;
        }
        case 'h': return EXIT_OK;
        default: {
            int r = replay_cli_option(&cli, "replay", opt, optarg);
            if (r <= 0)
                return EXIT_BAD_INPUT;
        }
        }
    }
    if (optind >= argc)
        return tool_usage_error("replay", "no capture given");
    int bad = replay_cli_check(&cli, "replay");
    if (bad)
        return bad;
    if (verbose)
        o->log = stderr;
    signal(SIGPIPE, SIG_IGN); /* a peer's reset is a verdict, not our end */

    struct tool_output output = {0};
    struct wsrr_redactor *red = NULL;
    if (record) {
        if (jobs > 1)
            return tool_usage_error("replay", "--record takes one job at a time (no --jobs)");
        /* the command, rebuilt from what was parsed and without the
         * options that may carry secrets (--secret, --header, --set): the
         * spelling on the command line cannot be trusted to find them
         * (getopt takes abbreviations) */
        static const char *const timing_names[] = {"causal", "recorded", "asap"};
        char line[2048];
        snprintf(line, sizeof(line), "wsrr replay --target %s --timing %s%s", o->target,
                 timing_names[o->timing], reproduce ? " --reproduce" : "");
        for (int i = optind; i < argc; i++) {
            size_t n = strlen(line);
            snprintf(line + n, sizeof(line) - n, " %s", argv[i]);
        }
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "tool", "wsrr " WSRR_VERSION);
        cJSON_AddStringToObject(m, "command", line);
        cJSON_AddStringToObject(m, "replay_target", o->target);
        cJSON_AddStringToObject(m, "redaction", redact ? "default" : "none");
        char *meta = cJSON_PrintUnformatted(m);
        cJSON_Delete(m);
        struct wsrr_capture_opts co = {.metadata = meta, .mode = redact ? 0644 : 0600};
        int rc = tool_output_open("replay", &output, record, force, NULL, &co);
        cJSON_free(meta);
        if (rc != EXIT_OK)
            return rc;
        red = redact ? wsrr_redactor_new() : NULL;
        o->record = output.w;
        o->redact = red;
    }
    struct job j = {.paths = argv + optind,
                    .n = (size_t)(argc - optind),
                    .o = o,
                    .secrets = cli.secrets,
                    .nsecrets = cli.nsecrets,
                    .reproduce = reproduce,
                    .verbose = verbose,
                    .json = json,
                    .rules = rules,
                    .rules_seed = rules_seed,
                    .repeat = (unsigned)repeat,
                    .shard_k = shard_k,
                    .shard_n = shard_n,
                    .stream = jobs == 1};
    if (!(j.cases = calloc(j.n, sizeof(*j.cases))))
        return tool_fail("replay", EXIT_BAD_INPUT, "out of memory");
    pthread_mutex_init(&j.mu, NULL);
    if (jobs == 1) {
        worker(&j);
    } else {
        pthread_t t[64];
        size_t nt = jobs < j.n ? jobs : j.n, started = 0;
        for (size_t i = 0; i < nt; i++)
            started += pthread_create(&t[started], NULL, worker, &j) == 0;
        if (!started)
            worker(&j);
        for (size_t i = 0; i < started; i++)
            pthread_join(t[i], NULL);
    }
    pthread_mutex_destroy(&j.mu);
    int status = EXIT_OK;
    for (size_t i = 0; i < j.n; i++) {
        struct junit_case *c = &j.cases[i];
        if (!j.stream && c->out)
            fputs(c->out, stdout);
        if (c->err) {
            tool_fail("replay", EXIT_BAD_INPUT, "%s", c->err);
            status = EXIT_BAD_INPUT;
        } else if (c->failed && status == EXIT_OK) {
            status = EXIT_FAILURE_FOUND;
        }
    }
    fflush(stdout);
    if (junit && status != EXIT_BAD_INPUT) {
        for (size_t i = 0; i < j.n; i++)
            if (!j.cases[i].text)
                j.cases[i].text = strdup("");
        int rc = write_junit(junit, j.cases, j.n, reproduce);
        if (rc != EXIT_OK)
            status = rc;
    }
    for (size_t i = 0; i < j.n; i++) {
        free(j.cases[i].text);
        free(j.cases[i].out);
        free(j.cases[i].err);
    }
    free(j.cases);
    if (record) {
        int rc = tool_output_close("replay", &output, true);
        if (rc != EXIT_OK)
            status = rc;
        else
            fprintf(stderr, "wsrr replay: the runs' traffic is in %s\n", record);
        wsrr_redactor_free(red);
    }
    return status;
}
