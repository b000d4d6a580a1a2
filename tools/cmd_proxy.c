/* cmd_proxy.c — `wsrr proxy`: the recording reverse proxy on the command line. */
#include "control.h"
#include "proxy.h"
#include "tool.h"
#include "wsrr/log.h"
#include "wsrr/rules.h"

#include <event2/event.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr proxy --listen HOST:PORT --upstream URL [--record FILE|DIR] [options]\n"
    "\n"
    "A reverse proxy for WebSocket (and plain HTTP) traffic: point the test client\n"
    "at --listen instead of the backend. Traffic is forwarded unchanged, and with\n"
    "--record every handshake, frame, close and TCP event of every connection is\n"
    "written to a capture.\n"
    "\n"
    "  --listen HOST:PORT      where clients connect (port 0: any free port)\n"
    "  --upstream URL          the backend: ws://HOST[:PORT][/PATH] (http:// is the\n"
    "                          same); a PATH is put in front of every request's path\n"
    "  --record FILE|DIR       write the capture to FILE, or to a new timestamped file\n"
    "                          in DIR; never over an existing file (see --force)\n"
    "  --force                 replace an existing capture FILE\n"
    "  --no-redact             record credentials as they are (the capture is then\n"
    "                          written with mode 0600); by default they are replaced\n"
    "                          by placeholders (docs/redaction.md)\n"
    "  --listen-tls            clients talk TLS to the proxy: with --tls-cert/--tls-key\n"
    "                          that certificate, otherwise one minted per server name by\n"
    "                          the local CA (see 'wsrr ca'; clients must trust it)\n"
    "  --tls-cert FILE, --tls-key FILE   the certificate (chain) and key for --listen-tls\n"
    "  --ca-dir DIR            the local CA's directory (default: wsrr ca show)\n"
    "  --upstream-ca FILE      trust this CA for a wss:// upstream instead of the\n"
    "                          system store (staging hosts with private certificates)\n"
    "  --insecure-upstream     do not verify the upstream's certificate (logged, and\n"
    "                          written into the capture)\n"
    "  --upstream-cert FILE, --upstream-key FILE   a client certificate for backends\n"
    "                          that demand one (mutual TLS)\n"
    "  --keylog FILE           append TLS secrets of both legs in the NSS key log format\n"
    "                          (Wireshark decrypts a parallel packet capture with it)\n"
    "  --preserve-host         forward Host and Origin as the client sent them\n"
    "                          (default: rewritten for the upstream)\n"
    "  --flush-interval MS     write a capture batch at least this often (100)\n"
    "  --grace SEC             on SIGINT/SIGTERM, time left to open connections (5)\n"
    "  --handshake-timeout MS  for the request head, the upstream connect and its\n"
    "                          response head (10000)\n"
    "  --idle-timeout SEC      close a connection silent this long (0: never)\n"
    "  --max-buffer BYTES      buffered per direction before reading pauses (1048576)\n"
    "  --rules FILE            inject faults as the rules in FILE say (docs/rules.md);\n"
    "                          every fault applied is recorded in the capture\n"
    "  --control HOST:PORT     serve the live control API there (docs/control.md):\n"
    "                          change rules, list, close and inject into connections,\n"
    "                          pause recording, Prometheus metrics; a loopback address\n"
    "                          (port 0: any free port); turns the fault engine on\n"
    "  --control-token TOKEN   the bearer token API requests must carry (default: 32\n"
    "                          random hex digits, printed at start)\n"
    "  --control-token-file FILE   write the token to FILE (mode 0600), for scripts\n"
    "  --control-allow-remote  let --control be a non-loopback address and accept\n"
    "                          peers that are not loopback (still token-protected)\n"
    "  -v, --verbose           log every connection's start too\n"
    "  -q, --quiet             log only errors\n"
    "  -h, --help              this text\n"
    "\n"
    "Signals: SIGINT/SIGTERM stop accepting and let connections finish (a second one\n"
    "closes them at once); SIGHUP finishes the capture file and starts a new one (for\n"
    "log rotation). A kill -9 loses at most the last flush interval of records.\n"
    "One log line per connection at its end; a summary at exit.\n";

static int run(int argc, char **argv);

const struct verb verb_proxy = {"proxy", "the recording reverse proxy", usage, run};

struct signals {
    struct wsrr_proxy *p;
    struct event_base *base;
    int stops;
};

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct signals *s = arg;
    if (sig == SIGHUP) {
        wsrr_log(WSRR_LOG_INFO, 0, "SIGHUP: starting a new capture file");
        wsrr_proxy_reopen(s->p);
        return;
    }
    if (++s->stops == 1) {
        wsrr_log(WSRR_LOG_INFO, 0, "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
        wsrr_proxy_shutdown(s->p);
    } else {
        wsrr_log(WSRR_LOG_INFO, 0, "second signal: closing every connection now");
        event_base_loopbreak(s->base);
    }
}

static bool parse_ms(const char *opt, const char *v, uint64_t scale, uint64_t *out)
{
    uint64_t n;
    if (!tool_parse_u64(v, UINT64_MAX / 1000000, &n)) {
        tool_usage_error("proxy", "%s: expected a whole number, got '%s'", opt, v);
        return false;
    }
    *out = n * scale;
    return true;
}

/* Bind the control API and write the token file; NULL with err. */
static struct wsrr_control *start_control(struct event_base *base,
                                          const struct wsrr_control_config *ccfg,
                                          const char *token_file, char *err, size_t errlen)
{
    struct wsrr_control *ctl = wsrr_control_new(base, ccfg, err, errlen);
    if (ctl && token_file && wsrr_control_write_token(ctl, token_file, err, errlen) < 0) {
        wsrr_control_free(ctl);
        return NULL;
    }
    return ctl;
}

/* The token goes to the terminal that started the proxy (and to
 * --control-token-file), never into the capture or a URL. A generated
 * token written nowhere else is printed even with --quiet: without it the
 * API could not be used. */
static void announce_control(const struct wsrr_control *ctl, bool only_here)
{
    if (wsrr_log_get_level() >= WSRR_LOG_INFO)
        wsrr_log(WSRR_LOG_INFO, 0, "control API on %s, token %s", wsrr_control_address(ctl),
                 wsrr_control_token(ctl));
    else if (only_here)
        fprintf(stderr, "wsrr: control API on %s, token %s\n", wsrr_control_address(ctl),
                wsrr_control_token(ctl));
}

static int run(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"upstream", required_argument, NULL, 'u'},
        {"record", required_argument, NULL, 'r'},
        {"force", no_argument, NULL, 'f'},
        {"no-redact", no_argument, NULL, 'R'},
        {"preserve-host", no_argument, NULL, 'H'},
        {"listen-tls", no_argument, NULL, 'S'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'k'},
        {"ca-dir", required_argument, NULL, 'D'},
        {"upstream-ca", required_argument, NULL, 'A'},
        {"insecure-upstream", no_argument, NULL, 'K'},
        {"upstream-cert", required_argument, NULL, 'C'},
        {"upstream-key", required_argument, NULL, 'Y'},
        {"keylog", required_argument, NULL, 'L'},
        {"flush-interval", required_argument, NULL, 'F'},
        {"grace", required_argument, NULL, 'g'},
        {"handshake-timeout", required_argument, NULL, 'T'},
        {"idle-timeout", required_argument, NULL, 'I'},
        {"max-buffer", required_argument, NULL, 'B'},
        {"rules", required_argument, NULL, 'j'},
        {"control", required_argument, NULL, 'X'},
        {"control-token", required_argument, NULL, 'O'},
        {"control-token-file", required_argument, NULL, 'W'},
        {"control-allow-remote", no_argument, NULL, 'Z'},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct wsrr_proxy_config cfg = {.redact = true, .grace_ms = 5000};
    const char *rules_file = NULL;
    struct wsrr_control_config ccfg = {0};
    const char *token_file = NULL;
    int c;
    while ((c = tool_getopt(&verb_proxy, argc, argv, "vq", longopts)) != -1) {
        uint64_t v;
        switch (c) {
        case 'h': return EXIT_OK;
        case 'l': cfg.listen = optarg; break;
        case 'u': cfg.upstream = optarg; break;
        case 'r': cfg.record = optarg; break;
        case 'f': cfg.overwrite = true; break;
        case 'R': cfg.redact = false; break;
        case 'H': cfg.preserve_host = true; break;
        case 'S': cfg.listen_tls = true; break;
        case 'c': cfg.tls_cert = optarg; break;
        case 'k': cfg.tls_key = optarg; break;
        case 'D': cfg.ca_dir = optarg; break;
        case 'A': cfg.upstream_ca = optarg; break;
        case 'K': cfg.insecure_upstream = true; break;
        case 'C': cfg.upstream_cert = optarg; break;
        case 'Y': cfg.upstream_key = optarg; break;
        case 'L': cfg.keylog = optarg; break;
        case 'F':
            if (!parse_ms("--flush-interval", optarg, 1, &v) || v == 0)
                return v == 0 ? tool_usage_error("proxy", "--flush-interval must be positive")
                              : EXIT_BAD_INPUT;
            cfg.flush_interval_ms = v;
            break;
        case 'g':
            if (!parse_ms("--grace", optarg, 1000, &cfg.grace_ms))
                return EXIT_BAD_INPUT;
            if (!cfg.grace_ms)
                cfg.grace_ms = 1; /* 0 means "close at once" */
            break;
        case 'T':
            if (!parse_ms("--handshake-timeout", optarg, 1, &cfg.handshake_timeout_ms))
                return EXIT_BAD_INPUT;
            break;
        case 'I':
            if (!parse_ms("--idle-timeout", optarg, 1000, &cfg.idle_timeout_ms))
                return EXIT_BAD_INPUT;
            break;
        case 'B':
            if (!tool_parse_u64(optarg, (uint64_t)1 << 40, &v) || v < 4096)
                return tool_usage_error("proxy", "--max-buffer: expected bytes >= 4096, got '%s'",
                                        optarg);
            cfg.max_buffer = (size_t)v;
            break;
        case 'j': rules_file = optarg; break;
        case 'X': ccfg.listen = optarg; break;
        case 'O': ccfg.token = optarg; break;
        case 'W': token_file = optarg; break;
        case 'Z': ccfg.allow_remote = true; break;
        case 'v': wsrr_log_set_level(WSRR_LOG_DEBUG); break;
        case 'q': wsrr_log_set_level(WSRR_LOG_ERROR); break;
        case '?': return EXIT_BAD_INPUT; /* tool_getopt said why */
        default: return tool_usage_error("proxy", "option -%c is not handled (a bug)", c);
        }
    }
    if (optind != argc)
        return tool_usage_error("proxy", "unexpected argument '%s'", argv[optind]);
    if (!cfg.listen)
        return tool_usage_error("proxy", "missing --listen HOST:PORT");
    if (!cfg.upstream)
        return tool_usage_error("proxy", "missing --upstream URL");
    if ((cfg.tls_cert || cfg.tls_key) && !cfg.listen_tls)
        return tool_usage_error("proxy", "--tls-cert/--tls-key need --listen-tls");
    if (cfg.tls_key && !cfg.tls_cert)
        return tool_usage_error("proxy", "--tls-key needs --tls-cert");
    if (cfg.upstream_key && !cfg.upstream_cert)
        return tool_usage_error("proxy", "--upstream-key needs --upstream-cert");
    if ((ccfg.token || token_file || ccfg.allow_remote) && !ccfg.listen)
        return tool_usage_error("proxy", "--control-token, --control-token-file and "
                                         "--control-allow-remote need --control HOST:PORT");

    if (rules_file) {
        char rerr[600];
        cfg.rules = wsrr_rules_load(rules_file, rerr, sizeof(rerr));
        if (!cfg.rules)
            return tool_fail("proxy", EXIT_BAD_INPUT, "--rules %s", rerr);
        cfg.fault_engine = true;
    }
    /* rules added through the API must apply to connections already open */
    if (ccfg.listen)
        cfg.fault_engine = cfg.live_rules = true;

    /* the command line, for the capture's metadata */
    char line[2048] = "wsrr";
    for (int i = 0; i < argc; i++) {
        /* the control token never goes into the capture */
        bool secret = i > 0 && strcmp(argv[i - 1], "--control-token") == 0;
        bool inline_secret = strncmp(argv[i], "--control-token=", 16) == 0;
        size_t n = strlen(line);
        snprintf(line + n, sizeof(line) - n, " %s",
                 secret          ? "***"
                 : inline_secret ? "--control-token=***"
                                 : argv[i]);
    }
    cfg.argv0_line = line;

    signal(SIGPIPE, SIG_IGN);
    wsrr_log_route_libs();
#ifdef M_TRIM_THRESHOLD
    /* Relaying large frames allocates and frees 64-512 KiB buffer chains
     * all the time. glibc's defaults hand that memory back to the kernel
     * (brk shrink, a TLB flush) and fault it in again on the next read:
     * measured, a third of the proxy's time at 64 KiB frames. Keep up to
     * 32 MiB of freed memory for reuse, and serve chains below 4 MiB from
     * the heap. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
#endif
    struct event_base *base = event_base_new();
    if (!base)
        return tool_fail("proxy", EXIT_BAD_INPUT, "cannot create an event loop");
    char err[512];
    /* the control API first: a refused --control leaves no capture behind */
    struct wsrr_control *ctl = NULL;
    if (ccfg.listen && !(ctl = start_control(base, &ccfg, token_file, err, sizeof(err)))) {
        wsrr_rules_free(cfg.rules);
        event_base_free(base);
        return tool_fail("proxy", EXIT_BAD_INPUT, "%s", err);
    }
    struct wsrr_proxy *p = wsrr_proxy_new(base, &cfg, err, sizeof(err));
    if (!p) {
        wsrr_control_free(ctl);
        event_base_free(base);
        return tool_fail("proxy", EXIT_BAD_INPUT, "%s", err);
    }
    /* signals are ours before anyone learns where we listen: a script that
     * stops the proxy the moment it has started gets a clean stop */
    struct signals s = {p, base, 0};
    struct event *sig[3];
    int signos[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        sig[i] = evsignal_new(base, signos[i], on_signal, &s);
        event_add(sig[i], NULL);
    }
    const char *cap = wsrr_proxy_capture_path(p);
    wsrr_log(WSRR_LOG_INFO, 0, "listening on %s, forwarding to %s%s%s%s",
             wsrr_proxy_listen_address(p), cfg.upstream, cap ? ", recording to " : "",
             cap ? cap : "", cap && !cfg.redact ? " (not redacted)" : "");
    if (ctl) {
        wsrr_control_attach(ctl, p);
        announce_control(ctl, !ccfg.token && !token_file);
    }

    /* the proxy leaves the loop itself once it has shut down and finalised
     * its capture; a second signal breaks out at once */
    event_base_dispatch(base);
    struct wsrr_proxy_stats st;
    wsrr_proxy_stats(p, &st);
    wsrr_control_free(ctl);
    wsrr_proxy_free(p);
    for (int i = 0; i < 3; i++)
        event_free(sig[i]);
    event_base_free(base);
    wsrr_log(WSRR_LOG_INFO, 0,
             "done: %llu connections, %llu frames and %llu bytes from clients, %llu frames and "
             "%llu bytes from the upstream, %llu upstream failures, %llu answered by wsrr",
             (unsigned long long)st.accepted, (unsigned long long)st.frames[0],
             (unsigned long long)st.bytes[0], (unsigned long long)st.frames[1],
             (unsigned long long)st.bytes[1], (unsigned long long)st.upstream_failures,
             (unsigned long long)st.rejected);
    return EXIT_OK;
}
