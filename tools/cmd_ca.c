/* cmd_ca.c — `wsrr ca`: the local certificate authority the proxy uses to
 * accept TLS for any server name. */
#include "tool.h"
#include "wsrr/tls.h"

#include <errno.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr ca init|show|export [FILE] [--ca-dir DIR]\n"
    "\n"
    "The local certificate authority of 'wsrr proxy --listen-tls': an ECDSA P-256\n"
    "key and certificate made on first use, with which the proxy mints a\n"
    "certificate for whatever server name a client asks for. Clients must trust\n"
    "its certificate; nothing else should (the key stays in DIR, mode 0600).\n"
    "\n"
    "  init            create the CA if there is none, and show it\n"
    "  show            where the CA is and how to make clients trust it\n"
    "  export [FILE]   write the CA certificate (PEM) to FILE or standard output\n"
    "  --ca-dir DIR    the CA's directory (default: $WSRR_CA_DIR, else\n"
    "                  $XDG_DATA_HOME/wsrr/ca, else ~/.local/share/wsrr/ca)\n"
    "  -h, --help      this text\n";

static int run(int argc, char **argv);

const struct verb verb_ca = {"ca", "the local CA for TLS towards clients", usage, run};

static void show(const struct wsrr_ca *ca, const char *dir)
{
    char fp[128], until[64];
    wsrr_ca_describe(ca, fp, sizeof(fp), until, sizeof(until));
    const char *pem = wsrr_ca_cert_path(ca);
    printf("CA certificate: %s\n", pem);
    printf("CA directory:   %s (the key, ca.key, must stay private)\n", dir);
    printf("SHA-256:        %s\n", fp);
    printf("valid until:    %s\n", until);
    printf("\nMake clients trust it, for instance:\n");
    printf("  SSL_CERT_FILE=%s                # Python (ssl, websockets)\n", pem);
    printf("  REQUESTS_CA_BUNDLE=%s           # Python requests\n", pem);
    printf("  NODE_EXTRA_CA_CERTS=%s          # Node.js\n", pem);
    printf("  curl --cacert %s ...\n", pem);
}

static int run(int argc, char **argv)
{
    static const struct option longopts[] = {{"ca-dir", required_argument, NULL, 'D'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *dir_opt = NULL;
    int c;
    while ((c = tool_getopt(&verb_ca, argc, argv, "", longopts)) != -1) {
        switch (c) {
        case 'h': return EXIT_OK;
        case 'D': dir_opt = optarg; break;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind == argc)
        return tool_usage_error("ca", "missing what to do: init, show or export");
    const char *what = argv[optind];
    char dirbuf[4096];
    const char *dir = dir_opt ? dir_opt : wsrr_ca_default_dir(dirbuf, sizeof(dirbuf));
    bool init = strcmp(what, "init") == 0;
    if (!init && strcmp(what, "show") && strcmp(what, "export"))
        return tool_usage_error("ca", "unknown action '%s' (init, show or export)", what);
    if (optind + (strcmp(what, "export") == 0 ? 2 : 1) < argc)
        return tool_usage_error("ca", "unexpected argument '%s'", argv[argc - 1]);

    char err[512];
    struct wsrr_ca *ca = wsrr_ca_open(dir, init, err, sizeof(err));
    if (!ca)
        return tool_fail("ca", EXIT_BAD_INPUT, "%s", err);
    int rc = EXIT_OK;
    if (strcmp(what, "export") == 0) {
        const char *out = optind + 1 < argc ? argv[optind + 1] : NULL;
        FILE *in = fopen(wsrr_ca_cert_path(ca), "r");
        FILE *f = out ? fopen(out, "w") : stdout;
        if (!in || !f) {
            rc = tool_fail("ca", EXIT_BAD_INPUT, "%s: %s", !in ? wsrr_ca_cert_path(ca) : out,
                           strerror(errno));
        } else {
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
                fwrite(buf, 1, n, f);
        }
        if (in)
            fclose(in);
        if (f && f != stdout && fclose(f) != 0)
            rc = tool_fail("ca", EXIT_BAD_INPUT, "writing %s: %s", out, strerror(errno));
    } else {
        show(ca, dir);
    }
    wsrr_ca_free(ca);
    return rc;
}
