/* cmd_ctl.c — `wsrr ctl`: a command-line client of the proxy's control API
 * (docs/control.md). One HTTP request per run, made with libevent's evhttp
 * client; the answer's body goes to stdout, an error to stderr. */
#include "tool.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr ctl [--control HOST:PORT] [--token T | --token-file F] COMMAND [ARGS]\n"
    "\n"
    "Talk to the control API of a running 'wsrr proxy --control HOST:PORT'.\n"
    "\n"
    "Commands:\n"
    "  rules                     print the rules document in force\n"
    "  rules set FILE            replace the whole rules document (FILE '-': stdin)\n"
    "  rules add FILE            append one rule (a JSON object with a new name)\n"
    "  rules replace NAME FILE   replace rule NAME in place\n"
    "  rules delete NAME         delete rule NAME\n"
    "  conns                     list the live connections\n"
    "  close ID [--code N] [--reason R] [--to client|server|both]\n"
    "                            send a close frame (default 1000, to both) and end it;\n"
    "                            --code 0: a TCP close without a close frame\n"
    "  inject ID [--to client|server|both] [--opcode OP] (PAYLOAD | --b64 B64)\n"
    "                            send one frame (default: text, to the client); OP is\n"
    "                            text, binary, continuation, close, ping, pong or 0-15\n"
    "  pause, resume             stop or resume writing records to the capture\n"
    "  recording                 whether records are being written, and where\n"
    "  metrics                   the Prometheus metrics\n"
    "\n"
    "  --control HOST:PORT       the API's address (default: $WSRR_CONTROL)\n"
    "  --token TOKEN             the bearer token (default: $WSRR_CONTROL_TOKEN)\n"
    "  --token-file FILE         read the token from FILE (see the proxy's\n"
    "                            --control-token-file)\n"
    "  -h, --help                this text\n"
    "\n"
    "The answer (JSON, or the metrics text) is printed on stdout. Exit status: 0\n"
    "done; 2 bad usage, an error answered by the API (its message on stderr), or\n"
    "the API could not be reached. A PAYLOAD starting with '-' goes after '--'.\n";

static int run(int argc, char **argv);

const struct verb verb_ctl = {"ctl", "drive a running proxy through its control API", usage, run};

/* What the command line asked for. */
struct opts {
    const char *control, *token, *token_file;
    const char *code, *reason, *to, *opcode, *b64;
};

/* One API call. */
struct call {
    enum evhttp_cmd_type method;
    char path[600];
    char *body; /* malloc'd, or NULL */
    size_t body_len;
};

/* What came back. */
struct answer {
    struct event_base *base;
    int status; /* 0: no answer */
    enum evhttp_request_error error;
    bool failed, error_known; /* error_known: libevent said which error */
    struct evbuffer *body;
    char reason[64];
};

/* ---- the request ---- */

static void on_error(enum evhttp_request_error err, void *arg)
{
    struct answer *a = arg;
    a->failed = true;
    a->error = err;
    a->error_known = true;
}

static void on_done(struct evhttp_request *req, void *arg)
{
    struct answer *a = arg;
    if (req && evhttp_request_get_response_code(req) > 0) {
        a->status = evhttp_request_get_response_code(req);
        const char *r = evhttp_request_get_response_code_line(req);
        snprintf(a->reason, sizeof(a->reason), "%s", r ? r : "");
        evbuffer_add_buffer(a->body, evhttp_request_get_input_buffer(req));
    } else {
        /* libevent 2.1 reports a failed connect by calling back with no
         * answer and no error code (and errno is gone by then) */
        a->failed = true;
    }
    event_base_loopexit(a->base, NULL);
}

static const char *error_text(const struct answer *a)
{
    if (!a->error_known)
        return "cannot connect (nothing listens there, or it is unreachable)";
    switch (a->error) {
    case EVREQ_HTTP_TIMEOUT: return "timed out";
    case EVREQ_HTTP_EOF: return "connection refused or closed before an answer";
    case EVREQ_HTTP_INVALID_HEADER: return "the answer is not HTTP (is it the control port?)";
    case EVREQ_HTTP_BUFFER_ERROR: return "connection refused or broken";
    case EVREQ_HTTP_REQUEST_CANCEL: return "cancelled";
    case EVREQ_HTTP_DATA_TOO_LONG: return "the answer is too long";
    }
    return "no answer";
}

/* "HOST:PORT" or "[V6]:PORT" into host (brackets removed) and port. */
static bool split_address(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    uint64_t p;
    if (!colon || colon == s || !tool_parse_u64(colon + 1, 65535, &p) || p == 0)
        return false;
    size_t n = (size_t)(colon - s);
    if (s[0] == '[' && n >= 2 && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= cap)
        return false;
    memcpy(host, s, n);
    host[n] = '\0';
    *port = (uint16_t)p;
    return true;
}

/* Make the call; fills a. Returns false (having said why) when the
 * address is bad or the event loop cannot be made. */
static bool perform(const char *address, const char *token, const struct call *c,
                    struct event_base *base, struct answer *a)
{
    char host[256];
    uint16_t port;
    if (!split_address(address, host, sizeof(host), &port)) {
        tool_usage_error("ctl", "--control %s: expected HOST:PORT", address);
        return false;
    }
    struct evhttp_connection *evcon = evhttp_connection_base_new(base, NULL, host, port);
    struct evhttp_request *req = evcon ? evhttp_request_new(on_done, a) : NULL;
    if (!req) {
        if (evcon)
            evhttp_connection_free(evcon);
        tool_fail("ctl", EXIT_BAD_INPUT, "cannot set up a connection to %s", address);
        return false;
    }
    evhttp_connection_set_timeout(evcon, 30);
    evhttp_connection_set_retries(evcon, 0);
    evhttp_request_set_error_cb(req, on_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", address);
    evhttp_add_header(h, "Connection", "close");
    if (token && *token) {
        char auth[600];
        snprintf(auth, sizeof(auth), "Bearer %s", token);
        evhttp_add_header(h, "Authorization", auth);
    }
    if (c->body) {
        evhttp_add_header(h, "Content-Type", "application/json");
        evbuffer_add(evhttp_request_get_output_buffer(req), c->body, c->body_len);
    }
    if (evhttp_make_request(evcon, req, c->method, c->path) == 0)
        event_base_dispatch(base);
    else
        a->failed = true; /* libevent freed req */
    evhttp_connection_free(evcon);
    return true;
}

/* The answer on stdout, or the API's one-line error on stderr. */
static int report(const char *address, const struct answer *a)
{
    if (a->failed || a->status == 0)
        return tool_fail("ctl", EXIT_BAD_INPUT, "cannot reach the control API at %s: %s", address,
                         error_text(a));
    size_t n = evbuffer_get_length(a->body);
    const char *body = (const char *)evbuffer_pullup(a->body, -1);
    if (a->status >= 200 && a->status < 300) {
        fwrite(body, 1, n, stdout);
        if (n && body[n - 1] != '\n')
            fputc('\n', stdout);
        return fflush(stdout) == 0 ? EXIT_OK : EXIT_BAD_INPUT;
    }
    cJSON *doc = n ? cJSON_ParseWithLength(body, n) : NULL;
    const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "error"));
    if (msg)
        tool_fail("ctl", EXIT_BAD_INPUT, "%s (HTTP %d)", msg, a->status);
    else
        tool_fail("ctl", EXIT_BAD_INPUT, "HTTP %d %s", a->status, a->reason);
    cJSON_Delete(doc);
    return EXIT_BAD_INPUT;
}

/* ---- building the call ---- */

/* The whole of FILE ("-": stdin) into c->body. */
static bool read_body(const char *path, struct call *c)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        tool_fail("ctl", EXIT_BAD_INPUT, "%s: %s", path, strerror(errno));
        return false;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    /* grow until a read comes back short; 64 MiB is far past what the API
     * takes (1 MiB), enough to let it say so */
    while (buf && (n += fread(buf + n, 1, cap - n, f)) == cap && cap < ((size_t)64 << 20)) {
        char *bigger = realloc(buf, cap * 2);
        if (!bigger)
            free(buf);
        buf = bigger;
        cap *= 2;
    }
    bool bad = !buf || ferror(f);
    if (f != stdin)
        fclose(f);
    if (bad) {
        free(buf);
        tool_fail("ctl", EXIT_BAD_INPUT, "%s: cannot read it (or it is over 64 MiB)", path);
        return false;
    }
    c->body = buf;
    c->body_len = n;
    return true;
}

/* c->body = doc, printed; doc freed. */
static bool json_body(cJSON *doc, struct call *c)
{
    char *s = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    c->body = s ? strdup(s) : NULL; /* c->body is free()d, s cJSON_free()d */
    cJSON_free(s);
    c->body_len = c->body ? strlen(c->body) : 0;
    if (!c->body)
        tool_fail("ctl", EXIT_BAD_INPUT, "out of memory");
    return c->body != NULL;
}

/* c->path = head + seg (percent-encoded) + tail. */
static void set_path(struct call *c, const char *head, const char *seg, const char *tail)
{
    char *enc = evhttp_uriencode(seg, -1, 0);
    snprintf(c->path, sizeof(c->path), "%s%s%s", head, enc ? enc : "", tail);
    free(enc);
}

static int nargs_error(const char *cmd)
{
    return tool_usage_error("ctl", "%s: wrong number of arguments", cmd);
}

static int build_rules(int n, char **a, struct call *c)
{
    c->method = EVHTTP_REQ_GET;
    snprintf(c->path, sizeof(c->path), "/rules");
    if (n == 1)
        return EXIT_OK;
    const char *sub = a[1];
    if (strcmp(sub, "set") == 0 || strcmp(sub, "add") == 0) {
        if (n != 3)
            return nargs_error(sub);
        c->method = sub[0] == 's' ? EVHTTP_REQ_PUT : EVHTTP_REQ_POST;
        return read_body(a[2], c) ? EXIT_OK : EXIT_BAD_INPUT;
    }
    if (strcmp(sub, "replace") == 0) {
        if (n != 4)
            return nargs_error(sub);
        c->method = EVHTTP_REQ_PUT;
        set_path(c, "/rules/", a[2], "");
        return read_body(a[3], c) ? EXIT_OK : EXIT_BAD_INPUT;
    }
    if (strcmp(sub, "delete") == 0) {
        if (n != 3)
            return nargs_error(sub);
        c->method = EVHTTP_REQ_DELETE;
        set_path(c, "/rules/", a[2], "");
        return EXIT_OK;
    }
    return tool_usage_error("ctl", "rules %s: expected set, add, replace or delete", sub);
}

static int build_close(int n, char **a, const struct opts *o, struct call *c)
{
    if (n != 2)
        return nargs_error("close");
    cJSON *doc = cJSON_CreateObject();
    uint64_t code;
    if (o->code && !tool_parse_u64(o->code, 65535, &code)) {
        cJSON_Delete(doc);
        return tool_usage_error("ctl", "--code: expected 0-65535, got '%s'", o->code);
    }
    if (o->code)
        cJSON_AddNumberToObject(doc, "code", (double)code);
    if (o->reason)
        cJSON_AddStringToObject(doc, "reason", o->reason);
    if (o->to)
        cJSON_AddStringToObject(doc, "to", o->to);
    c->method = EVHTTP_REQ_POST;
    set_path(c, "/connections/", a[1], "/close");
    return json_body(doc, c) ? EXIT_OK : EXIT_BAD_INPUT;
}

static int build_inject(int n, char **a, const struct opts *o, struct call *c)
{
    if (n != (o->b64 ? 2 : 3))
        return n == 3 && o->b64 ? tool_usage_error("ctl", "inject: give PAYLOAD or --b64, not both")
                                : nargs_error("inject (ID and PAYLOAD or --b64)");
    cJSON *doc = cJSON_CreateObject();
    uint64_t op;
    if (o->opcode && tool_parse_u64(o->opcode, 15, &op))
        cJSON_AddNumberToObject(doc, "opcode", (double)op);
    else if (o->opcode)
        cJSON_AddStringToObject(doc, "opcode", o->opcode);
    if (o->to)
        cJSON_AddStringToObject(doc, "to", o->to);
    if (o->b64)
        cJSON_AddStringToObject(doc, "payload_b64", o->b64);
    else
        cJSON_AddStringToObject(doc, "payload", a[2]);
    c->method = EVHTTP_REQ_POST;
    set_path(c, "/connections/", a[1], "/inject");
    return json_body(doc, c) ? EXIT_OK : EXIT_BAD_INPUT;
}

/* A command without arguments: method and path. */
static bool simple(const char *cmd, struct call *c)
{
    static const struct {
        const char *cmd;
        enum evhttp_cmd_type method;
        const char *path;
    } t[] = {
        {"conns", EVHTTP_REQ_GET, "/connections"},
        {"pause", EVHTTP_REQ_POST, "/recording/pause"},
        {"resume", EVHTTP_REQ_POST, "/recording/resume"},
        {"recording", EVHTTP_REQ_GET, "/recording"},
        {"metrics", EVHTTP_REQ_GET, "/metrics"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(cmd, t[i].cmd) == 0) {
            c->method = t[i].method;
            snprintf(c->path, sizeof(c->path), "%s", t[i].path);
            return true;
        }
    return false;
}

/* Options that belong to one command only must not be given to others. */
static int check_options(const char *cmd, const struct opts *o)
{
    bool is_close = strcmp(cmd, "close") == 0, is_inject = strcmp(cmd, "inject") == 0;
    if ((o->code || o->reason) && !is_close)
        return tool_usage_error("ctl", "--code and --reason are for 'close'");
    if ((o->opcode || o->b64) && !is_inject)
        return tool_usage_error("ctl", "--opcode and --b64 are for 'inject'");
    if (o->to && !is_close && !is_inject)
        return tool_usage_error("ctl", "--to is for 'close' and 'inject'");
    return EXIT_OK;
}

static int build(int n, char **a, const struct opts *o, struct call *c)
{
    int rc = check_options(a[0], o);
    if (rc != EXIT_OK)
        return rc;
    if (strcmp(a[0], "rules") == 0)
        return build_rules(n, a, c);
    if (strcmp(a[0], "close") == 0)
        return build_close(n, a, o, c);
    if (strcmp(a[0], "inject") == 0)
        return build_inject(n, a, o, c);
    if (!simple(a[0], c))
        return tool_usage_error("ctl", "unknown command '%s'", a[0]);
    return n == 1 ? EXIT_OK : nargs_error(a[0]);
}

/* ---- the token ---- */

/* The first line of FILE, without surrounding whitespace. */
static bool read_token(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        tool_fail("ctl", EXIT_BAD_INPUT, "--token-file %s: %s", path, strerror(errno));
        return false;
    }
    bool ok = fgets(out, (int)cap, f) != NULL;
    fclose(f);
    char *s = out;
    while (ok && (*s == ' ' || *s == '\t'))
        s++;
    size_t n = ok ? strlen(s) : 0;
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    memmove(out, s, n);
    out[n] = '\0';
    if (!n)
        tool_fail("ctl", EXIT_BAD_INPUT, "--token-file %s: no token in it", path);
    return n > 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"control", required_argument, NULL, 'a'},
        {"token", required_argument, NULL, 't'},
        {"token-file", required_argument, NULL, 'T'},
        {"code", required_argument, NULL, 'c'},
        {"reason", required_argument, NULL, 'r'},
        {"to", required_argument, NULL, 'o'},
        {"opcode", required_argument, NULL, 'p'},
        {"b64", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = tool_getopt(&verb_ctl, argc, argv, "", longopts)) != -1) {
        switch (c) {
        case 'h': return -1;
        case 'a': o->control = optarg; break;
        case 't': o->token = optarg; break;
        case 'T': o->token_file = optarg; break;
        case 'c': o->code = optarg; break;
        case 'r': o->reason = optarg; break;
        case 'o': o->to = optarg; break;
        case 'p': o->opcode = optarg; break;
        case 'b': o->b64 = optarg; break;
        case '?': return EXIT_BAD_INPUT; /* tool_getopt said why */
        default: return tool_usage_error("ctl", "option -%c is not handled (a bug)", c);
        }
    }
    if (!o->control)
        o->control = getenv("WSRR_CONTROL");
    if (!o->control || !*o->control)
        return tool_usage_error("ctl", "no address: give --control HOST:PORT or set WSRR_CONTROL");
    if (o->token && o->token_file)
        return tool_usage_error("ctl", "give --token or --token-file, not both");
    if (optind >= argc)
        return tool_usage_error("ctl", "missing COMMAND");
    return EXIT_OK;
}

static int run(int argc, char **argv)
{
    struct opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc != EXIT_OK)
        return rc < 0 ? EXIT_OK : rc;
    char token[600] = "";
    if (o.token_file && !read_token(o.token_file, token, sizeof(token)))
        return EXIT_BAD_INPUT;
    const char *tok = o.token_file ? token : o.token ? o.token : getenv("WSRR_CONTROL_TOKEN");

    struct call c = {0};
    rc = build(argc - optind, argv + optind, &o, &c);
    struct event_base *base = rc == EXIT_OK ? event_base_new() : NULL;
    struct answer a = {.base = base, .body = evbuffer_new()};
    if (rc == EXIT_OK && (!base || !a.body))
        rc = tool_fail("ctl", EXIT_BAD_INPUT, "cannot create an event loop");
    if (rc == EXIT_OK)
        rc = perform(o.control, tok, &c, base, &a) ? report(o.control, &a) : EXIT_BAD_INPUT;
    if (a.body)
        evbuffer_free(a.body);
    if (base)
        event_base_free(base);
    free(c.body);
    return rc;
}
