/* cmd_serve.c — `wsrr serve`: play the backend's side of a capture
 * (replay/serve.h). */
#include "serve.h"
#include "tool.h"

#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr serve CAPTURE --listen HOST:PORT [options]\n"
    "\n"
    "Play the server's side of a capture: a client test that failed against the\n"
    "real backend fails the same way here, with no backend at all (the same\n"
    "close code and reason, at the same point).\n"
    "\n"
    "Each incoming connection is matched to a recorded one with the same request\n"
    "path (the first not yet played; when the recorded client spoke first and\n"
    "several fit, the one whose first client message this is). The upgrade is\n"
    "answered as recorded (101 with the recorded subprotocol, no compression, or\n"
    "the recorded rejection status); each recorded server message, close, end of\n"
    "the transport or reset is played once the client messages that came before\n"
    "it on that connection have arrived. Client messages are compared with the\n"
    "recorded ones (JSON-aware) and differences are reported.\n"
    "\n"
    "  -l, --listen HOST:PORT  where to listen (port 0: any free port); the\n"
    "                          address is printed as 'listening on HOST:PORT'\n"
    "  --listen-tls            wss: certificates minted by the local CA (see\n"
    "                          'wsrr ca'), or --tls-cert/--tls-key\n"
    "  --tls-cert FILE, --tls-key FILE  the certificate to present\n"
    "  --ca-dir DIR            the local CA's directory\n"
    "  --ignore PATH           leave this JSON path out when comparing client\n"
    "                          messages; repeatable\n"
    "  --strict                close a connection (1008) whose client sends\n"
    "                          something else than recorded\n"
    "  --timeout MS            report a wait for the client longer than this\n"
    "                          (default 5000; the wait goes on)\n"
    "  --exit-after N          stop after N connections have ended (default: on\n"
    "                          SIGINT or SIGTERM)\n"
    "  -q, --quiet             no line per connection\n"
    "  -h, --help              this text\n"
    "\n"
    "Exit status: 0; 1 when a client sent something else than recorded; 2 bad\n"
    "usage, a capture that cannot be read, or an address that cannot be used.\n";

static int run_serve(int argc, char **argv);

const struct verb verb_serve = {"serve", "play the backend's side of a capture to a live client",
                                usage, run_serve};

#define MAX_LIST 64

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static int run_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"listen-tls", no_argument, NULL, 'S'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"ca-dir", required_argument, NULL, 'D'},
        {"ignore", required_argument, NULL, 'i'},
        {"strict", no_argument, NULL, 's'},
        {"timeout", required_argument, NULL, 'o'},
        {"exit-after", required_argument, NULL, 'x'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *ignore[MAX_LIST];
    struct sv_opts o = {.ignore = ignore, .timeout_ms = 5000, .log = stderr};
    uint64_t v;
    int opt;
    while ((opt = tool_getopt(&verb_serve, argc, argv, "l:qh", longopts)) != -1) {
        switch (opt) {
        case 'l': o.listen = optarg; break;
        case 'S': o.tls = true; break;
        case 'C': o.tls_cert = optarg; break;
        case 'K': o.tls_key = optarg; break;
        case 'D': o.ca_dir = optarg; break;
        case 'i':
            if (o.nignore == MAX_LIST)
                return tool_usage_error("serve", "more than %d --ignore", MAX_LIST);
            ignore[o.nignore++] = optarg;
            break;
        case 's': o.strict = true; break;
        case 'o':
            if (!tool_parse_u64(optarg, 3600000, &o.timeout_ms) || !o.timeout_ms)
                return tool_usage_error("serve", "--timeout %s: expected 1..3600000 ms", optarg);
            break;
        case 'x':
            if (!tool_parse_u64(optarg, 1000000, &v) || !v)
                return tool_usage_error("serve", "--exit-after %s: expected 1..1000000", optarg);
            o.exit_after = (unsigned)v;
            break;
        case 'q': o.log = NULL; break;
        case 'h': return EXIT_OK;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc - 1)
        return tool_usage_error("serve",
                                optind >= argc ? "no capture given" : "one capture at a time");
    if (!o.listen)
        return tool_usage_error("serve", "--listen HOST:PORT is required");
    if (!o.tls_cert != !o.tls_key)
        return tool_usage_error("serve", "--tls-cert and --tls-key go together");
    if (o.tls_cert && !o.tls)
        return tool_usage_error("serve", "--tls-cert needs --listen-tls");

    char err[512];
    struct rp_session *s = rp_session_load(argv[optind], err, sizeof(err));
    if (!s)
        return tool_fail("serve", EXIT_BAD_INPUT, "%s", err);
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct event *sig[2] = {NULL, NULL};
    struct sv_server *sv = base ? sv_server_new(base, s, &o, err, sizeof(err)) : NULL;
    if (!sv) {
        if (base)
            event_base_free(base);
        rp_session_free(s);
        return tool_fail("serve", EXIT_BAD_INPUT, "%s", base ? err : "no event base");
    }
    int signos[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        sig[i] = evsignal_new(base, signos[i], on_signal, base);
        if (sig[i])
            event_add(sig[i], NULL);
    }
    fprintf(stderr, "wsrr serve: %s: listening on %s%s\n", argv[optind], sv_server_address(sv),
            o.tls ? " (TLS)" : "");
    fflush(stderr);
    event_base_dispatch(base);
    unsigned unexpected = sv_server_unexpected(sv);
    sv_server_free(sv);
    for (int i = 0; i < 2; i++)
        if (sig[i])
            event_free(sig[i]);
    event_base_free(base);
    rp_session_free(s);
    return unexpected ? EXIT_FAILURE_FOUND : EXIT_OK;
}
