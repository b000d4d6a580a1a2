/* cmd_shrink.c — `wsrr shrink`: the smallest session that still fails the
 * same way (replay/fuzz.h). */
#include "fuzz.h"
#include "replay_cli.h"
#include "tool.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr shrink CASE --target URL -o MIN [options]\n"
    "\n"
    "Find the smallest session that still fails the way CASE (a capture, such\n"
    "as a `wsrr fuzz` failure or a recorded staging run) fails: connections\n"
    "removed, then client messages (with the answers they got), then the JSON\n"
    "inside what is left (fields and array elements removed, strings halved),\n"
    "over and over until nothing more can go. The failure is its signature\n"
    "(as `wsrr fuzz` prints it); a candidate keeps it when any of --tries runs\n"
    "shows it. The result is a recorded run that shows it, checked with\n"
    "--verify runs of `wsrr replay --reproduce`.\n"
    "\n"
    "  -t, --target URL     the server (required)\n"
    "  -o, --output MIN     the smallest case, as a capture (required)\n"
    "  --force              replace MIN if it exists\n"
    "  --signature SIG      the failure to keep (default: the first one a run of\n"
    "                       CASE shows), e.g. 'close 1011 \"Internal error\" at\n"
    "                       tool_result'\n"
    "  --tries K            runs per candidate before it counts as not failing\n"
    "                       (default 3: flaky failures)\n"
    "  --verify N           runs of the result with --reproduce (default 10)\n"
    "  --max-tests N        candidates at most (default 2000)\n"
    "  --server-cmd CMD     start the server, and again after it dies (its exit,\n"
    "                       crash or sanitizer report is then the failure)\n"
    "  --server-wait MS     how long it may take to listen (default 10000)\n"
    "  --server-log FILE    its output (default MIN.server.log)\n"
    "  --strict, --quiet-wait MS, --no-redact   as for `wsrr fuzz`\n"
    "  --json               the report as one JSON object\n"
    "  -q, --quiet          no progress on standard error\n"
    "  --timing, --timeout, --gap, --ignore, --extra, --header, --set, --secret,\n"
    "  --ca, --insecure     as for `wsrr replay` (--timeout default 2000)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 shrunk (MIN written); 1 CASE does not fail; 2 bad usage or\n"
    "input.\n";

static int run_shrink(int argc, char **argv);

const struct verb verb_shrink = {"shrink", "minimise a failing capture, keeping its failure", usage,
                                 run_shrink};

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static int run_shrink(int argc, char **argv)
{
    static const struct option longopts[] = {
        REPLAY_CLI_LONGOPTS,
        {"output", required_argument, NULL, 'O'},
        {"force", no_argument, NULL, 'F'},
        {"signature", required_argument, NULL, 'G'},
        {"tries", required_argument, NULL, 'K'},
        {"verify", required_argument, NULL, 'V'},
        {"max-tests", required_argument, NULL, 'M'},
        {"server-cmd", required_argument, NULL, 'C'},
        {"server-wait", required_argument, NULL, 'W'},
        {"server-log", required_argument, NULL, 'L'},
        {"strict", no_argument, NULL, 'x'},
        {"quiet-wait", required_argument, NULL, 'Q'},
        {"no-redact", no_argument, NULL, 'U'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct replay_cli cli;
    replay_cli_init(&cli, 2000);
    cli.o.quiet_ms = 100;
    struct fz_shrink_opts so = {
        .tries = 3, .verify = 10, .max_tests = 2000, .redact = true, .server_wait_ms = 10000};
    bool force = false, quiet = false;
    uint64_t v;
    int opt;
    while ((opt = tool_getopt(&verb_shrink, argc, argv, "t:H:o:qh", longopts)) != -1) {
        switch (opt) {
        case 'o':
        case 'O': so.output = optarg; break;
        case 'F': force = true; break;
        case 'G': so.signature = optarg; break;
        case 'K':
            if (!tool_parse_u64(optarg, 1000, &v) || !v)
                return tool_usage_error("shrink", "--tries %s: expected 1..1000", optarg);
            so.tries = (unsigned)v;
            break;
        case 'V':
            if (!tool_parse_u64(optarg, 100000, &v))
                return tool_usage_error("shrink", "--verify %s: expected 0..100000", optarg);
            so.verify = (unsigned)v;
            break;
        case 'M':
            if (!tool_parse_u64(optarg, 1000000, &v) || !v)
                return tool_usage_error("shrink", "--max-tests %s: expected 1..1000000", optarg);
            so.max_tests = (unsigned)v;
            break;
        case 'C': so.server_cmd = optarg; break;
        case 'W':
            if (!tool_parse_u64(optarg, 600000, &so.server_wait_ms) || !so.server_wait_ms)
                return tool_usage_error("shrink", "--server-wait %s: expected 1..600000 ms",
                                        optarg);
            break;
        case 'L': so.server_log = optarg; break;
        case 'x': so.strict = true; break;
        case 'Q':
            if (!tool_parse_u64(optarg, 600000, &cli.o.quiet_ms) || !cli.o.quiet_ms)
                return tool_usage_error("shrink", "--quiet-wait %s: expected 1..600000 ms", optarg);
            break;
        case 'U': so.redact = false; break;
        case 'j': so.json = true; break;
        case 'q': quiet = true; break;
        case 'h': return EXIT_OK;
        default:
            if (replay_cli_option(&cli, "shrink", opt, optarg) <= 0)
                return EXIT_BAD_INPUT;
        }
    }
    if (optind >= argc)
        return tool_usage_error("shrink", "no case given");
    if (optind + 1 < argc)
        return tool_usage_error("shrink", "one case at a time (%s is one too many)",
                                argv[optind + 1]);
    int bad = replay_cli_check(&cli, "shrink");
    if (bad)
        return bad;
    if (!so.output)
        return tool_usage_error("shrink", "-o MIN is required");
    FILE *exists = fopen(so.output, "r");
    if (exists) {
        fclose(exists);
        if (!force)
            return tool_fail("shrink", EXIT_BAD_INPUT, "%s exists (--force replaces it)",
                             so.output);
    }
    char log[4200];
    if (!so.server_log) {
        snprintf(log, sizeof(log), "%s.server.log", so.output);
        so.server_log = log;
    }
    so.input = argv[optind];
    so.ro = cli.o;
    so.secrets = cli.secrets;
    so.nsecrets = cli.nsecrets;
    so.log = quiet ? NULL : stderr;
    so.stop = &stop_flag;
    signal(SIGPIPE, SIG_IGN);
    /* the server under test is stopped on the way out, whatever ends us */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    char err[600];
    int rc = fz_shrink(&so, err, sizeof(err));
    if (rc < 0)
        return tool_fail("shrink", EXIT_BAD_INPUT, "%s", err);
    if (rc > 0)
        return tool_fail("shrink", EXIT_FAILURE_FOUND, "%s", err);
    return EXIT_OK;
}
