/* cmd_fuzz.c — `wsrr fuzz`: replay captures with mutations until the
 * server fails in a new way (replay/fuzz.h). */
#include "fuzz.h"
#include "mutate.h"
#include "replay_cli.h"
#include "tool.h"

#include "wsrr/rules.h"

#include <cjson/cJSON.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: wsrr fuzz CAPTURE... --target URL --out DIR (--runs N | --time T) [options]\n"
    "\n"
    "Replay the captures again and again with mutations chosen by a seed, and\n"
    "save every new way the server fails as a capture that `wsrr replay\n"
    "--reproduce` runs again. Runs that make the server behave in a new way (a\n"
    "new message type or order, close code, reply time, divergence) join a\n"
    "corpus and are mutated further.\n"
    "\n"
    "A failure is: a close 1011-1014 from the server; its transport ending\n"
    "without a close (1006) or with a reset (not after an invalid frame of\n"
    "ours, unless --strict); a timeout; a 5xx answer to the upgrade; frames\n"
    "that cannot be read; with --divergence, an answer that differs from the\n"
    "recorded one when the client sent what was recorded (only schedule\n"
    "mutations); with --server-cmd, the server's exit, a\n"
    "crash signal or a sanitizer report in its output. Failures count once per\n"
    "signature: kind, close code and reason, and the type of the message the\n"
    "client sent last on that connection.\n"
    "\n"
    "  -t, --target URL     the server (ws://HOST:PORT or wss://...; required)\n"
    "  --out DIR            where failures go: failure-NNN.wsrr (a recorded run\n"
    "                       that shows it), failure-NNN.json (signature, seed,\n"
    "                       mutations, the command that reproduces it), and\n"
    "                       server.log with --server-cmd (required)\n"
    "  --runs N             stop after N runs\n"
    "  --time T             stop after T seconds (T may end in s, m or h)\n"
    "  --until TEXT         stop early once a failure whose signature contains\n"
    "                       TEXT is saved as a case that fails again alone\n"
    "                       (repeatable: once each has been found); a CI check\n"
    "                       that fuzzing still finds a known bug within --runs\n"
    "  --seed S             the generator's seed (default: a random one, printed);\n"
    "                       the same seed gives the same mutations run by run\n"
    "                       (with --jobs 1 and a server that behaves the same)\n"
    "  --jobs N             N runs at once (default 1)\n"
    "  --server-cmd CMD     start the server with `sh -c CMD`, wait until the\n"
    "                       target accepts connections, start it again when it\n"
    "                       dies; its exit, crash or sanitizer report is a failure\n"
    "  --server-wait MS     how long the server may take to listen (default 10000)\n"
    "  --mutate LIST        the families to use: json, frame, schedule, all\n"
    "                       (default all), comma-separated\n"
    "  --max-mutations N    at most N mutations per run (default 3)\n"
    "  --no-feedback        no corpus: every run mutates a capture\n"
    "  --strict             an abnormal end or reset after an invalid frame of\n"
    "                       ours is a failure too\n"
    "  --divergence         a differing answer is a failure too (see above; use\n"
    "                       --ignore for fields that change every run)\n"
    "  --rules FILE         apply a rules file (docs/rules.md) to every run's\n"
    "                       client traffic after its mutations, as `wsrr replay\n"
    "                       --rules` does; the faults are listed per run in the\n"
    "                       trace and in a case's JSON. The file needs a seed\n"
    "  --quiet-wait MS      how long to wait for a server message that a changed\n"
    "                       request may never get before going on: MS (default\n"
    "                       100) plus twice what the server took for it when\n"
    "                       recorded (or this run's slowest answer there); once a\n"
    "                       ping sent after the request is answered, only twice\n"
    "                       that time plus 1 ms from the start of the wait\n"
    "  --trace FILE         a JSON line per run: its parent, mutations, failures\n"
    "  --no-redact          saved cases keep secrets as they were sent\n"
    "  --json               the summary as one JSON object on standard output\n"
    "  -v, --verbose        every step of every run on standard error\n"
    "  --timing, --timeout, --gap, --ignore, --extra, --header, --set, --secret,\n"
    "  --ca, --insecure     as for `wsrr replay` (--timeout default 2000)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 no failure found; 1 failures found; 2 bad usage, a capture\n"
    "that cannot be read, or a server that cannot be started.\n";

/* --rules, as a document: read by every run, freed at exit */
static char *rules_text;

static void free_rules_text(void)
{
    cJSON_free(rules_text);
    rules_text = NULL;
}

static int run_fuzz(int argc, char **argv);

const struct verb verb_fuzz = {"fuzz", "replay mutated captures to find new server failures", usage,
                               run_fuzz};

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static bool parse_duration(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    double mul = !*end || !strcmp(end, "s") ? 1
                 : !strcmp(end, "m")        ? 60
                 : !strcmp(end, "h")        ? 3600
                                            : 0;
    *out = v * mul;
    return end != s && mul > 0 && *out > 0 && *out <= 86400 * 7;
}

static int run_fuzz(int argc, char **argv)
{
    static const struct option longopts[] = {
        REPLAY_CLI_LONGOPTS,
        {"out", required_argument, NULL, 'O'},
        {"runs", required_argument, NULL, 'n'},
        {"time", required_argument, NULL, 'd'},
        {"seed", required_argument, NULL, 'e'},
        {"jobs", required_argument, NULL, 'N'},
        {"server-cmd", required_argument, NULL, 'C'},
        {"server-wait", required_argument, NULL, 'W'},
        {"mutate", required_argument, NULL, 'm'},
        {"max-mutations", required_argument, NULL, 'M'},
        {"no-feedback", no_argument, NULL, 'B'},
        {"strict", no_argument, NULL, 'x'},
        {"divergence", no_argument, NULL, 'D'},
        {"quiet-wait", required_argument, NULL, 'q'},
        {"rules", required_argument, NULL, 'L'},
        {"trace", required_argument, NULL, 'r'},
        {"no-redact", no_argument, NULL, 'U'},
        {"json", no_argument, NULL, 'j'},
        {"verbose", no_argument, NULL, 'v'},
        {"until", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct replay_cli cli;
    replay_cli_init(&cli, 2000);
    cli.o.quiet_ms = 100;
    cli.o.barrier = true;
    struct fz_opts fo = {.families = FZ_ALL,
                         .max_mutations = 3,
                         .feedback = true,
                         .redact = true,
                         .jobs = 1,
                         .server_wait_ms = 10000};
    bool seeded = false;
    const char *until[16];
    size_t nuntil = 0;
    uint64_t v;
    int opt;
    while ((opt = tool_getopt(&verb_fuzz, argc, argv, "t:H:vh", longopts)) != -1) {
        switch (opt) {
        case 'O': fo.out_dir = optarg; break;
        case 'n':
            if (!tool_parse_u64(optarg, UINT64_MAX / 2, &fo.runs) || !fo.runs)
                return tool_usage_error("fuzz", "--runs %s: expected a positive count", optarg);
            break;
        case 'd':
            if (!parse_duration(optarg, &fo.seconds))
                return tool_usage_error("fuzz",
                                        "--time %s: expected seconds (or 10m, 1h; at "
                                        "most a week)",
                                        optarg);
            break;
        case 'e':
            if (!tool_parse_u64(optarg, UINT64_MAX, &fo.seed))
                return tool_usage_error("fuzz", "--seed %s: expected an unsigned number", optarg);
            seeded = true;
            break;
        case 'N':
            if (!tool_parse_u64(optarg, 64, &v) || !v)
                return tool_usage_error("fuzz", "--jobs %s: expected 1..64", optarg);
            fo.jobs = (unsigned)v;
            break;
        case 'C': fo.server_cmd = optarg; break;
        case 'W':
            if (!tool_parse_u64(optarg, 600000, &fo.server_wait_ms) || !fo.server_wait_ms)
                return tool_usage_error("fuzz", "--server-wait %s: expected 1..600000 ms", optarg);
            break;
        case 'm':
            if (!(fo.families = fz_families_parse(optarg)))
                return tool_usage_error("fuzz",
                                        "--mutate %s: expected json, frame, schedule or "
                                        "all, comma-separated",
                                        optarg);
            break;
        case 'M':
            if (!tool_parse_u64(optarg, 32, &v) || !v)
                return tool_usage_error("fuzz", "--max-mutations %s: expected 1..32", optarg);
            fo.max_mutations = (unsigned)v;
            break;
        case 'B': fo.feedback = false; break;
        case 'x': fo.strict = true; break;
        case 'D': fo.divergence = true; break;
        case 'q':
            if (!tool_parse_u64(optarg, 600000, &cli.o.quiet_ms) || !cli.o.quiet_ms)
                return tool_usage_error("fuzz", "--quiet-wait %s: expected 1..600000 ms", optarg);
            break;
        case 'r': fo.trace = optarg; break;
        case 'L': {
            char err[512];
            struct wsrr_rules *rs = wsrr_rules_load(optarg, err, sizeof(err));
            if (!rs)
                return tool_fail("fuzz", EXIT_BAD_INPUT, "--rules %s", err);
            if (!rs->seed_given) { /* the same faults in every run, and next time */
                wsrr_rules_free(rs);
                return tool_usage_error("fuzz",
                                        "--rules %s: give a \"seed\" in the file "
                                        "(the faults must be the same in every run)",
                                        optarg);
            }
            cJSON_free(rules_text);
            rules_text = wsrr_rules_to_json(rs);
            wsrr_rules_free(rs);
            if (!rules_text)
                return tool_fail("fuzz", EXIT_BAD_INPUT, "out of memory");
            atexit(free_rules_text);
            fo.rules_text = rules_text;
            break;
        }
        case 'U': fo.redact = false; break;
        case 'j': fo.json = true; break;
        case 'v': cli.o.log = stderr; break;
        case 'u':
            if (nuntil == sizeof(until) / sizeof(until[0]))
                return tool_usage_error("fuzz", "more than %zu --until", nuntil);
            until[nuntil++] = optarg;
            break;
        case 'h': return EXIT_OK;
        default:
            if (replay_cli_option(&cli, "fuzz", opt, optarg) <= 0)
                return EXIT_BAD_INPUT;
        }
    }
    if (optind >= argc)
        return tool_usage_error("fuzz", "no capture given");
    int bad = replay_cli_check(&cli, "fuzz");
    if (bad)
        return bad;
    if (!fo.out_dir)
        return tool_usage_error("fuzz", "--out DIR is required");
    if (!fo.runs && !(fo.seconds > 0))
        return tool_usage_error("fuzz", "give --runs N or --time T: a fuzz run ends by itself");
    if (!seeded && RAND_bytes((unsigned char *)&fo.seed, sizeof(fo.seed)) != 1)
        fo.seed = (uint64_t)getpid() * 2654435761u;
    if (!seeded)
        fo.seed >>= 12; /* short enough to type again */
    char repro[2048];
    replay_cli_repro(&cli, repro, sizeof(repro));
    fo.captures = (const char *const *)argv + optind;
    fo.ncaptures = (size_t)(argc - optind);
    fo.ro = cli.o;
    fo.secrets = cli.secrets;
    fo.nsecrets = cli.nsecrets;
    fo.repro_opts = repro;
    fo.tty = isatty(2);
    fo.stop = &stop_flag;
    fo.until = until;
    fo.nuntil = nuntil;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    char err[600];
    long n = fz_fuzz(&fo, err, sizeof(err));
    if (n < 0)
        return tool_fail("fuzz", EXIT_BAD_INPUT, "%s", err);
    return n ? EXIT_FAILURE_FOUND : EXIT_OK;
}
