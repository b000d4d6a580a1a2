/* control.c — the live control API of `wsrr proxy`; see control.h and
 * docs/control.md.
 *
 * One evhttp server on the proxy's event loop. Every request goes through
 * the same gate, in this order: the peer must be loopback (unless
 * allow_remote), then it must present the bearer token, then it is routed
 * by an endpoint table (which also gives 404/405 and the index). Handlers
 * only use what proxy.h and rules.h declare, so the API cannot reach into
 * a connection behind the proxy's back.
 */
#include "control.h"
#include "proxy.h"

#include "wsrr/log.h"
#include "wsrr/rules.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TOKEN     256
#define MAX_REASON    123 /* a close frame's payload is at most 125 bytes */
#define IDLE_TIMEOUT  60  /* seconds an idle API connection is kept */
#define MAX_HEAD_SIZE 16384

struct wsrr_control {
    struct wsrr_proxy *p;
    struct evhttp *http;
    bool allow_remote;
    char token[MAX_TOKEN + 1];
    char address[INET6_ADDRSTRLEN + 16];
};

/* One request while it is handled: what the reply and the log line need. */
struct call {
    struct wsrr_control *ctl;
    struct evhttp_request *req;
    const char *method;
    const char *path;
    char peer[INET6_ADDRSTRLEN + 16];
};

/* ---- addresses ---- */

static void format_addr(const struct sockaddr *sa, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        evutil_inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(out, cap, "%s:%d", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        evutil_inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(out, cap, "[%s]:%d", host, ntohs(in6->sin6_port));
    } else {
        snprintf(out, cap, "?");
    }
}

/* 127.0.0.0/8, ::1, and ::ffff:127.x.y.z (an IPv4 peer on a dual-stack
 * socket). The wildcard addresses are not loopback: they listen everywhere. */
static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* "HOST:PORT" with a numeric host (or "localhost"), port 0 allowed. */
static bool parse_listen(const char *s, struct sockaddr_storage *ss, int *len)
{
    char addr[300];
    if (strncmp(s, "localhost:", 10) == 0)
        snprintf(addr, sizeof(addr), "127.0.0.1:%s", s + 10);
    else
        snprintf(addr, sizeof(addr), "%s", s);
    /* evutil_parse_sockaddr_port refuses port 0: parse with 1, put 0 back */
    size_t n = strlen(addr);
    bool any_port = n > 2 && strcmp(addr + n - 2, ":0") == 0;
    if (any_port)
        addr[n - 1] = '1';
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)ss, len) < 0)
        return false;
    if (any_port && ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = 0;
    else if (any_port)
        ((struct sockaddr_in *)ss)->sin_port = 0;
    return true;
}

/* The peer of the request's connection, from the socket itself (not from
 * anything the peer says, like X-Forwarded-For). */
static bool peer_of(struct evhttp_request *req, struct sockaddr_storage *ss)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    socklen_t len = sizeof(*ss);
    return fd >= 0 && getpeername(fd, (struct sockaddr *)ss, &len) == 0;
}

/* ---- replies ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 500: return "Internal Server Error";
    default: return "Unknown";
    }
}

/* Send the reply with body b (may be NULL) and log it: changes at info,
 * refusals at warn, reads at debug (a metrics scraper every few seconds
 * must not flood the log). */
static void send_buffer(struct call *c, int status, const char *ctype, struct evbuffer *b)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(c->req, status, reason_phrase(status), b);
    enum wsrr_log_level lvl = status == 401 || status == 403 ? WSRR_LOG_WARN
                              : strcmp(c->method, "GET")     ? WSRR_LOG_INFO
                                                             : WSRR_LOG_DEBUG;
    wsrr_log(lvl, 0, "control: %s %s from %s: %d", c->method, c->path, c->peer, status);
}

/* JSON text as the body, with a newline (for terminals and line tools). */
static void send_json_text(struct call *c, int status, const char *json)
{
    struct evbuffer *b = evbuffer_new();
    if (b)
        evbuffer_add_printf(b, "%s\n", json);
    send_buffer(c, status, "application/json", b);
    if (b)
        evbuffer_free(b);
}

/* Reply with doc, pretty-printed, and free it. */
static void send_json(struct call *c, int status, cJSON *doc)
{
    char *s = doc ? cJSON_Print(doc) : NULL;
    cJSON_Delete(doc);
    send_json_text(c, s ? status : 500, s ? s : "{\"error\": \"out of memory\"}");
    cJSON_free(s);
}

static void send_error(struct call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void send_error(struct call *c, int status, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "error", msg);
    char *s = cJSON_PrintUnformatted(doc); /* one line */
    cJSON_Delete(doc);
    send_json_text(c, status, s ? s : "{\"error\": \"out of memory\"}");
    cJSON_free(s);
}

/* The rules document in force, as wsrr_rules_to_json writes it. */
static void send_rules(struct call *c)
{
    char *s = wsrr_rules_to_json(wsrr_proxy_rules(c->ctl->p));
    send_json_text(c, s ? 200 : 500, s ? s : "{\"error\": \"out of memory\"}");
    cJSON_free(s);
}

/* ---- request bodies ---- */

/* The body as a NUL-terminated copy (NULL when out of memory). */
static char *body_text(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    char *s = malloc(*len + 1);
    if (s) {
        evbuffer_copyout(in, s, *len);
        s[*len] = '\0';
    }
    return s;
}

/* The body as a JSON object; an empty body is {} when empty_ok. On error
 * sends the 400 (or 413/500) itself and returns NULL. */
static cJSON *body_object(struct call *c, bool empty_ok)
{
    size_t len;
    char *s = body_text(c->req, &len);
    if (!s) {
        send_error(c, 500, "out of memory");
        return NULL;
    }
    cJSON *doc = NULL;
    if (len > WSRR_CONTROL_MAX_BODY)
        send_error(c, 413, "the body is over %zu bytes", WSRR_CONTROL_MAX_BODY);
    else if (len == 0 && empty_ok)
        doc = cJSON_CreateObject();
    else if (len == 0)
        send_error(c, 400, "the body is empty: expected a JSON object");
    else if (memchr(s, '\0', len))
        send_error(c, 400, "the body contains a NUL byte");
    else {
        const char *end = NULL;
        /* length len + 1: cJSON then checks that nothing follows the value */
        doc = cJSON_ParseWithLengthOpts(s, len + 1, &end, true);
        if (!doc) {
            const char *at = cJSON_GetErrorPtr();
            send_error(c, 400, "the body is not JSON (at byte %zu)",
                       at && at >= s && at <= s + len ? (size_t)(at - s) : len);
        } else if (!cJSON_IsObject(doc)) {
            cJSON_Delete(doc);
            doc = NULL;
            send_error(c, 400, "the body must be a JSON object");
        }
    }
    free(s);
    return doc;
}

/* The first key of obj not in allowed (NULL-terminated), or NULL: like the
 * rules file, a misspelt key is an error rather than silently ignored. */
static const char *unknown_key(const cJSON *obj, const char *const *allowed)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, obj)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = it->string && strcmp(it->string, allowed[i]) == 0;
        if (!ok)
            return it->string ? it->string : "?";
    }
    return NULL;
}

/* "to": "client" | "server" | "both"; absent gives def. */
static bool parse_to(const cJSON *obj, int def, int *to)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "to");
    *to = def;
    if (!v)
        return true;
    const char *s = cJSON_GetStringValue(v);
    if (s && strcmp(s, "client") == 0)
        *to = WSRR_TO_CLIENT;
    else if (s && strcmp(s, "server") == 0)
        *to = WSRR_TO_SERVER;
    else if (s && strcmp(s, "both") == 0)
        *to = WSRR_TO_BOTH;
    else
        return false;
    return true;
}

/* A whole number in [lo, hi] (cJSON keeps numbers as doubles). */
static bool whole_number(const cJSON *v, double lo, double hi, long long *out)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi ||
        v->valuedouble != (double)(long long)v->valuedouble)
        return false;
    *out = (long long)v->valuedouble;
    return true;
}

/* ---- rules ---- */

/* Parse text as the complete new document and put it in force; nothing
 * changes unless every rule in it is valid. */
static void install_rules(struct call *c, const char *text, size_t len)
{
    char err[600];
    struct wsrr_rules *rs = wsrr_rules_parse(text, len, err, sizeof(err));
    if (!rs) {
        send_error(c, 400, "%s", err);
        return;
    }
    /* a document without a seed keeps the one in force, so the faults a
     * given traffic gets stay the same across the change */
    const struct wsrr_rules *cur = wsrr_proxy_rules(c->ctl->p);
    if (!rs->seed_given && cur) {
        rs->seed = cur->seed;
        rs->seed_given = true;
    }
    size_t n = rs->count;
    if (wsrr_proxy_set_rules(c->ctl->p, rs) < 0) {
        send_error(c, 500, "the proxy did not take the rules (it runs without the fault engine)");
        return;
    }
    wsrr_log(WSRR_LOG_INFO, 0, "control: %zu rule%s in force", n, n == 1 ? "" : "s");
    send_rules(c);
}

static void install_doc(struct call *c, const cJSON *doc)
{
    char *s = cJSON_PrintUnformatted(doc);
    if (!s) {
        send_error(c, 500, "out of memory");
        return;
    }
    install_rules(c, s, strlen(s));
    cJSON_free(s);
}

/* The document in force as cJSON, to edit ({"rules": []} when none). */
static cJSON *current_doc(struct call *c)
{
    char *s = wsrr_rules_to_json(wsrr_proxy_rules(c->ctl->p));
    cJSON *doc = s ? cJSON_Parse(s) : NULL;
    cJSON_free(s);
    if (!doc)
        send_error(c, 500, "out of memory");
    return doc;
}

static int find_rule(struct call *c, const char *name)
{
    const struct wsrr_rules *rs = wsrr_proxy_rules(c->ctl->p);
    return rs ? wsrr_rules_find(rs, name) : -1;
}

static void get_rules(struct call *c, const char *arg)
{
    (void)arg;
    send_rules(c);
}

static void put_rules(struct call *c, const char *arg)
{
    (void)arg;
    size_t len;
    char *s = body_text(c->req, &len);
    if (!s) {
        send_error(c, 500, "out of memory");
        return;
    }
    if (len > WSRR_CONTROL_MAX_BODY)
        send_error(c, 413, "the body is over %zu bytes", WSRR_CONTROL_MAX_BODY);
    else
        install_rules(c, s, len);
    free(s);
}

static void post_rule(struct call *c, const char *arg)
{
    (void)arg;
    cJSON *rule = body_object(c, false);
    if (!rule)
        return;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rule, "name"));
    if (name && find_rule(c, name) >= 0) {
        send_error(c, 409, "a rule named '%s' exists (PUT /rules/%s replaces it)", name, name);
        cJSON_Delete(rule);
        return;
    }
    cJSON *doc = current_doc(c);
    if (!doc) {
        cJSON_Delete(rule);
        return;
    }
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(doc, "rules"), rule);
    install_doc(c, doc);
    cJSON_Delete(doc);
}

static void get_rule(struct call *c, const char *name)
{
    int i = find_rule(c, name);
    if (i < 0) {
        send_error(c, 404, "no rule is named '%s'", name);
        return;
    }
    send_json(c, 200, cJSON_Duplicate(wsrr_proxy_rules(c->ctl->p)->rules[i].src, true));
}

/* rule with "name" added in front, as people write it (listings read
 * better); rule is consumed. NULL when out of memory. */
static cJSON *named(cJSON *rule, const char *name)
{
    cJSON *out = cJSON_CreateObject();
    if (!out || !cJSON_AddStringToObject(out, "name", name)) {
        cJSON_Delete(out);
        cJSON_Delete(rule);
        return NULL;
    }
    while (rule->child) {
        cJSON *it = cJSON_DetachItemViaPointer(rule, rule->child);
        if (!cJSON_AddItemToObject(out, it->string, it)) /* copies the key first */
            cJSON_Delete(it);
    }
    cJSON_Delete(rule);
    return out;
}

static void put_rule(struct call *c, const char *name)
{
    int i = find_rule(c, name);
    if (i < 0) {
        send_error(c, 404, "no rule is named '%s' (POST /rules adds one)", name);
        return;
    }
    cJSON *rule = body_object(c, false);
    if (!rule)
        return;
    const cJSON *given = cJSON_GetObjectItemCaseSensitive(rule, "name");
    if (given && (!cJSON_IsString(given) || strcmp(given->valuestring, name) != 0)) {
        /* the path names the rule: another name in the body is a mistake, not a rename */
        send_error(c, 400, "name: must be '%s' as in the path, or be left out", name);
        cJSON_Delete(rule);
        return;
    }
    if (!given && !(rule = named(rule, name))) {
        send_error(c, 500, "out of memory");
        return;
    }
    cJSON *doc = current_doc(c);
    if (!doc) {
        cJSON_Delete(rule);
        return;
    }
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(doc, "rules"), i, rule);
    install_doc(c, doc);
    cJSON_Delete(doc);
}

static void delete_rule(struct call *c, const char *name)
{
    int i = find_rule(c, name);
    if (i < 0) {
        send_error(c, 404, "no rule is named '%s'", name);
        return;
    }
    cJSON *doc = current_doc(c);
    if (!doc)
        return;
    cJSON_DeleteItemFromArray(cJSON_GetObjectItemCaseSensitive(doc, "rules"), i);
    install_doc(c, doc);
    cJSON_Delete(doc);
}

/* ---- connections ---- */

static cJSON *pair(uint64_t client, uint64_t server)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "client", (double)client);
    cJSON_AddNumberToObject(o, "server", (double)server);
    return o;
}

static cJSON *conn_json(const struct wsrr_proxy_conn_info *ci)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", ci->id);
    cJSON_AddNumberToObject(o, "ordinal", (double)ci->ordinal);
    cJSON_AddStringToObject(o, "client", ci->client ? ci->client : "");
    cJSON_AddStringToObject(o, "path", ci->path ? ci->path : "");
    cJSON_AddStringToObject(o, "state", ci->state ? ci->state : "");
    cJSON_AddBoolToObject(o, "websocket", ci->websocket);
    cJSON_AddNumberToObject(o, "age_ms", (double)ci->age_ms);
    /* per sender: "client" is what the client sent */
    cJSON_AddItemToObject(o, "bytes", pair(ci->bytes[WSRR_DIR_C2S], ci->bytes[WSRR_DIR_S2C]));
    cJSON_AddItemToObject(o, "frames", pair(ci->frames[WSRR_DIR_C2S], ci->frames[WSRR_DIR_S2C]));
    cJSON_AddItemToObject(o, "messages",
                          pair(ci->messages[WSRR_DIR_C2S], ci->messages[WSRR_DIR_S2C]));
    cJSON_AddNumberToObject(o, "faults", (double)ci->faults);
    return o;
}

static void add_conn(const struct wsrr_proxy_conn_info *ci, void *arg)
{
    cJSON_AddItemToArray(arg, conn_json(ci));
}

struct find_conn {
    uint32_t id;
    cJSON *found;
};

static void match_conn(const struct wsrr_proxy_conn_info *ci, void *arg)
{
    struct find_conn *f = arg;
    if (ci->id == f->id && !f->found)
        f->found = conn_json(ci);
}

/* The connection named in the path, as JSON; sends the 404 itself. */
static cJSON *lookup_conn(struct call *c, const char *arg, uint32_t *id)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = arg[0] >= '0' && arg[0] <= '9' ? strtoul(arg, &end, 10) : 0;
    struct find_conn f = {(uint32_t)v, NULL};
    if (v == 0 || errno || !end || *end || v > UINT32_MAX) {
        send_error(c, 404, "no connection '%s' (ids are whole numbers, see GET /connections)", arg);
        return NULL;
    }
    wsrr_proxy_foreach_conn(c->ctl->p, match_conn, &f);
    if (!f.found)
        send_error(c, 404, "no connection %lu (it may have ended)", v);
    *id = f.id;
    return f.found;
}

static void get_conns(struct call *c, const char *arg)
{
    (void)arg;
    cJSON *doc = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(doc, "connections");
    wsrr_proxy_foreach_conn(c->ctl->p, add_conn, list);
    send_json(c, 200, doc);
}

static void get_conn(struct call *c, const char *arg)
{
    uint32_t id;
    cJSON *o = lookup_conn(c, arg, &id);
    if (o)
        send_json(c, 200, o);
}

/* POST /connections/ID/...: the connection must exist (404 otherwise),
 * then the body is a JSON object. NULL when answered already. */
static cJSON *conn_body(struct call *c, const char *arg, uint32_t *id)
{
    cJSON *conn = lookup_conn(c, arg, id);
    if (!conn)
        return NULL;
    cJSON_Delete(conn);
    return body_object(c, true);
}

static void post_close(struct call *c, const char *arg)
{
    static const char *const keys[] = {"code", "reason", "to", NULL};
    uint32_t id;
    cJSON *b = conn_body(c, arg, &id);
    if (!b)
        return;
    const char *bad = unknown_key(b, keys);
    const cJSON *code_v = cJSON_GetObjectItemCaseSensitive(b, "code");
    const cJSON *reason_v = cJSON_GetObjectItemCaseSensitive(b, "reason");
    const char *reason = reason_v ? cJSON_GetStringValue(reason_v) : "";
    long long code = 1000;
    int to;
    char err[300] = "";
    if (bad)
        send_error(c, 400, "%s: unknown key (expected code, reason, to)", bad);
    else if (code_v && !whole_number(code_v, 0, 65535, &code))
        send_error(c, 400, "code: expected a whole number from 0 to 65535");
    else if (!reason || strlen(reason) > MAX_REASON)
        send_error(c, 400, "reason: expected a string of at most %d bytes", MAX_REASON);
    else if (!parse_to(b, WSRR_TO_BOTH, &to))
        send_error(c, 400, "to: expected \"client\", \"server\" or \"both\"");
    else if (wsrr_proxy_close_conn(c->ctl->p, id, (int)code, reason, strlen(reason), to, err,
                                   sizeof(err)) < 0)
        send_error(c, 409, "%s", err);
    else {
        cJSON *ok = cJSON_CreateObject();
        cJSON_AddNumberToObject(ok, "closed", id);
        send_json(c, 200, ok);
    }
    cJSON_Delete(b);
}

/* "opcode": a name or 0-15; absent is text. -1 when neither. */
static int parse_opcode(const cJSON *v)
{
    static const struct {
        const char *name;
        int op;
    } names[] = {{"continuation", 0}, {"text", 1}, {"binary", 2},
                 {"close", 8},        {"ping", 9}, {"pong", 10}};
    long long n;
    if (!v)
        return 1;
    if (whole_number(v, 0, 15, &n))
        return (int)n;
    for (size_t i = 0; cJSON_IsString(v) && i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(v->valuestring, names[i].name) == 0)
            return names[i].op;
    return -1;
}

/* Standard base64 (newlines allowed) into a malloc'd buffer; NULL when it
 * is not base64. */
static uint8_t *decode_b64(const char *s, size_t *len)
{
    size_t n = strlen(s);
    uint8_t *out = malloc(n / 4 * 3 + 4);
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    int a = 0, b = 0;
    bool ok = out && ctx && n <= INT32_MAX;
    if (ok) {
        EVP_DecodeInit(ctx);
        ok = EVP_DecodeUpdate(ctx, out, &a, (const unsigned char *)s, (int)n) >= 0 &&
             EVP_DecodeFinal(ctx, out + a, &b) >= 0;
    }
    EVP_ENCODE_CTX_free(ctx);
    if (!ok) {
        free(out);
        return NULL;
    }
    *len = (size_t)a + (size_t)b;
    return out;
}

static void post_inject(struct call *c, const char *arg)
{
    static const char *const keys[] = {"to", "opcode", "payload", "payload_b64", NULL};
    uint32_t id;
    cJSON *b = conn_body(c, arg, &id);
    if (!b)
        return;
    const char *bad = unknown_key(b, keys);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(b, "payload");
    const cJSON *b64 = cJSON_GetObjectItemCaseSensitive(b, "payload_b64");
    int op = parse_opcode(cJSON_GetObjectItemCaseSensitive(b, "opcode"));
    int to;
    uint8_t *data = NULL;
    size_t len = 0;
    char err[300] = "";
    if (bad)
        send_error(c, 400, "%s: unknown key (expected to, opcode, payload, payload_b64)", bad);
    else if (op < 0)
        send_error(c, 400,
                   "opcode: expected text, binary, continuation, close, ping, pong or "
                   "a number from 0 to 15");
    else if (!parse_to(b, WSRR_TO_CLIENT, &to))
        send_error(c, 400, "to: expected \"client\", \"server\" or \"both\"");
    else if (text && b64)
        send_error(c, 400, "payload, payload_b64: give one of them, not both");
    else if ((text && !cJSON_IsString(text)) || (b64 && !cJSON_IsString(b64)))
        send_error(c, 400, "%s: expected a string", text ? "payload" : "payload_b64");
    else if (b64 && !(data = decode_b64(b64->valuestring, &len)))
        send_error(c, 400, "payload_b64: not valid base64");
    else {
        const uint8_t *p = data ? data : text ? (const uint8_t *)text->valuestring : NULL;
        len = data ? len : text ? strlen(text->valuestring) : 0;
        if (wsrr_proxy_inject(c->ctl->p, id, to, (uint8_t)op, p, len, err, sizeof(err)) < 0)
            send_error(c, 409, "%s", err);
        else {
            cJSON *ok = cJSON_CreateObject();
            cJSON_AddNumberToObject(ok, "injected", (double)len);
            send_json(c, 200, ok);
        }
    }
    free(data);
    cJSON_Delete(b);
}

/* ---- recording ---- */

static void send_recording(struct call *c)
{
    const char *path = wsrr_proxy_capture_path(c->ctl->p);
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddBoolToObject(doc, "recording", wsrr_proxy_recording(c->ctl->p));
    if (path)
        cJSON_AddStringToObject(doc, "capture", path);
    else
        cJSON_AddNullToObject(doc, "capture");
    send_json(c, 200, doc);
}

static void get_recording(struct call *c, const char *arg)
{
    (void)arg;
    send_recording(c);
}

static void post_pause(struct call *c, const char *arg)
{
    (void)arg;
    wsrr_proxy_set_recording(c->ctl->p, false);
    send_recording(c);
}

static void post_resume(struct call *c, const char *arg)
{
    (void)arg;
    if (!wsrr_proxy_capture_path(c->ctl->p)) {
        send_error(c, 409, "not recording to a capture (the proxy was started without --record)");
        return;
    }
    wsrr_proxy_set_recording(c->ctl->p, true);
    send_recording(c);
}

/* ---- metrics (Prometheus text format 0.0.4) ---- */

static void family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(struct evbuffer *b, const char *name, uint64_t v)
{
    evbuffer_add_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void per_sender(struct evbuffer *b, const char *name, const char *help, const uint64_t v[2])
{
    family(b, name, "counter", help);
    evbuffer_add_printf(b, "%s{sender=\"client\"} %llu\n", name,
                        (unsigned long long)v[WSRR_DIR_C2S]);
    evbuffer_add_printf(b, "%s{sender=\"server\"} %llu\n", name,
                        (unsigned long long)v[WSRR_DIR_S2C]);
}

/* A label value as the format wants it: \\, \" and \n escaped. */
static void add_label_value(struct evbuffer *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            evbuffer_add_printf(b, "\\%c", *s);
        else if (*s == '\n')
            evbuffer_add(b, "\\n", 2);
        else
            evbuffer_add(b, s, 1);
    }
}

static void close_codes(struct evbuffer *b, const struct wsrr_proxy_stats *st)
{
    family(b, "wsrr_close_codes_total", "counter",
           "Close frames seen (either sender) by close code; \"other\" beyond the codes tracked.");
    for (size_t i = 0; i < st->ncloses && i < sizeof(st->closes) / sizeof(st->closes[0]); i++)
        evbuffer_add_printf(b, "wsrr_close_codes_total{code=\"%u\"} %llu\n", st->closes[i].code,
                            (unsigned long long)st->closes[i].n);
    if (st->other_closes)
        evbuffer_add_printf(b, "wsrr_close_codes_total{code=\"other\"} %llu\n",
                            (unsigned long long)st->other_closes);
}

static void rule_faults(struct evbuffer *b, const struct wsrr_rules *rs)
{
    family(b, "wsrr_faults_total", "counter", "Times each rule in force fired.");
    for (size_t i = 0; rs && i < rs->count; i++) {
        evbuffer_add_printf(b, "wsrr_faults_total{rule=\"");
        add_label_value(b, rs->rules[i].name);
        evbuffer_add_printf(b, "\"} %llu\n", (unsigned long long)rs->rules[i].fired);
    }
}

static void get_metrics(struct call *c, const char *arg)
{
    (void)arg;
    struct wsrr_proxy_stats st;
    memset(&st, 0, sizeof(st));
    wsrr_proxy_stats(c->ctl->p, &st);
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        send_error(c, 500, "out of memory");
        return;
    }
    family(b, "wsrr_connections_active", "gauge", "Connections open now.");
    sample(b, "wsrr_connections_active", st.active);
    family(b, "wsrr_connections_total", "counter", "Connections accepted.");
    sample(b, "wsrr_connections_total", st.accepted);
    family(b, "wsrr_connections_closed_total", "counter", "Connections that ended.");
    sample(b, "wsrr_connections_closed_total", st.closed);
    per_sender(b, "wsrr_frames_total", "WebSocket frames recorded, by sender.", st.frames);
    per_sender(b, "wsrr_bytes_total", "Bytes relayed, by sender.", st.bytes);
    per_sender(b, "wsrr_messages_total", "Messages seen by the fault engine, by sender.",
               st.messages);
    close_codes(b, &st);
    rule_faults(b, wsrr_proxy_rules(c->ctl->p));
    family(b, "wsrr_faults_applied_total", "counter", "Fault actions applied.");
    sample(b, "wsrr_faults_applied_total", st.faults);
    family(b, "wsrr_capture_bytes_total", "counter", "Bytes written to capture files.");
    sample(b, "wsrr_capture_bytes_total", st.capture_bytes);
    family(b, "wsrr_errors_total", "counter", "Connections ended by a transport error or reset.");
    sample(b, "wsrr_errors_total", st.errors);
    family(b, "wsrr_upstream_failures_total", "counter", "Upstream connects or handshakes failed.");
    sample(b, "wsrr_upstream_failures_total", st.upstream_failures);
    family(b, "wsrr_rejected_total", "counter", "Requests answered by wsrr itself (400-504).");
    sample(b, "wsrr_rejected_total", st.rejected);
    family(b, "wsrr_recording", "gauge", "1 while records are written to a capture.");
    sample(b, "wsrr_recording", wsrr_proxy_recording(c->ctl->p));
    send_buffer(c, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

/* ---- routing ---- */

typedef void (*handler)(struct call *c, const char *arg);

struct endpoint {
    const char *method;
    const char *pattern; /* '*' stands for one path segment, passed as arg */
    handler fn;
    const char *does;
};

static void get_index(struct call *c, const char *arg);

static const struct endpoint endpoints[] = {
    {"GET", "/", get_index, "this list"},
    {"GET", "/rules", get_rules, "the rules document in force"},
    {"PUT", "/rules", put_rules, "replace the whole rules document"},
    {"POST", "/rules", post_rule, "append one rule (409 if its name exists)"},
    {"GET", "/rules/*", get_rule, "one rule as written"},
    {"PUT", "/rules/*", put_rule, "replace that rule in place"},
    {"DELETE", "/rules/*", delete_rule, "delete that rule"},
    {"GET", "/connections", get_conns, "the live connections"},
    {"GET", "/connections/*", get_conn, "one live connection"},
    {"POST", "/connections/*/close", post_close, "close it: {code, reason, to}"},
    {"POST", "/connections/*/inject", post_inject,
     "send a frame: {to, opcode, payload | payload_b64}"},
    {"GET", "/recording", get_recording, "whether records are being written"},
    {"POST", "/recording/pause", post_pause, "stop writing records"},
    {"POST", "/recording/resume", post_resume, "write records again"},
    {"GET", "/metrics", get_metrics, "Prometheus metrics (text format 0.0.4)"},
};
#define NENDPOINTS (sizeof(endpoints) / sizeof(endpoints[0]))

static void get_index(struct call *c, const char *arg)
{
    (void)arg;
    cJSON *doc = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(doc, "endpoints");
    for (size_t i = 0; i < NENDPOINTS; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "method", endpoints[i].method);
        cJSON_AddStringToObject(e, "path", endpoints[i].pattern);
        cJSON_AddStringToObject(e, "does", endpoints[i].does);
        cJSON_AddItemToArray(list, e);
    }
    cJSON_AddStringToObject(doc, "docs", "docs/control.md");
    send_json(c, 200, doc);
}

/* Does path fit pattern? The segment under '*' goes to arg. */
static bool path_matches(const char *pattern, const char *path, char *arg, size_t cap)
{
    while (*pattern && *path) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n >= cap)
                return false;
            memcpy(arg, path, n);
            arg[n] = '\0';
            path += n;
            pattern++;
        } else if (*pattern++ != *path++) {
            return false;
        }
    }
    return !*pattern && !*path;
}

static void route(struct call *c)
{
    char arg[256] = "", allow[64] = "";
    for (size_t i = 0; i < NENDPOINTS; i++) {
        if (!path_matches(endpoints[i].pattern, c->path, arg, sizeof(arg)))
            continue;
        if (strcmp(endpoints[i].method, c->method) == 0) {
            /* a rule name or id may come percent-encoded */
            char *dec = evhttp_uridecode(arg, 0, NULL);
            endpoints[i].fn(c, dec ? dec : arg);
            free(dec);
            return;
        }
        size_t n = strlen(allow);
        snprintf(allow + n, sizeof(allow) - n, "%s%s", n ? ", " : "", endpoints[i].method);
    }
    if (!allow[0]) {
        send_error(c, 404, "no endpoint %s (GET / lists them)", c->path);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(c->req), "Allow", allow);
    send_error(c, 405, "%s %s: allowed methods are %s", c->method, c->path, allow);
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

/* "Authorization: Bearer TOKEN", compared in constant time. 0 when right,
 * else why not. */
static const char *token_problem(const struct wsrr_control *ctl, struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h)
        return "missing Authorization: Bearer TOKEN (the token is printed at the proxy's start)";
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return "the Authorization header must be 'Bearer TOKEN'";
    h += 7;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    size_t want = strlen(ctl->token);
    if (n != want || CRYPTO_memcmp(h, ctl->token, want) != 0)
        return "wrong token";
    return NULL;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct call c = {
        .ctl = arg, .req = req, .method = method_name(evhttp_request_get_command(req))};
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    c.path = uri && evhttp_uri_get_path(uri) ? evhttp_uri_get_path(uri) : "/";
    if (!c.path[0])
        c.path = "/";
    struct sockaddr_storage ss;
    bool known = peer_of(req, &ss);
    if (known)
        format_addr((const struct sockaddr *)&ss, c.peer, sizeof(c.peer));
    else
        snprintf(c.peer, sizeof(c.peer), "?");
    /* the address first: a remote peer learns nothing, not even whether
     * its token would have been right */
    if (!c.ctl->allow_remote && (!known || !is_loopback((const struct sockaddr *)&ss))) {
        send_error(&c, 403, "%s is not a loopback address (the proxy needs --control-allow-remote)",
                   c.peer);
        return;
    }
    const char *why = token_problem(c.ctl, req);
    if (why) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer realm=\"wsrr\"");
        send_error(&c, 401, "%s", why);
        return;
    }
    if (!c.ctl->p) {
        send_error(&c, 500, "the proxy is not running yet");
        return;
    }
    route(&c);
}

/* ---- life cycle ---- */

static bool valid_token(const char *t)
{
    size_t n = strlen(t);
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] > '~')
            return false; /* it goes into a header line */
    return n > 0 && n <= MAX_TOKEN;
}

static bool random_token(char *out)
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1)
        return false;
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
    return true;
}

static bool set_token(struct wsrr_control *ctl, const char *given, char *err, size_t errlen)
{
    if (given && !valid_token(given)) {
        snprintf(err, errlen, "--control-token: expected 1-%d printable characters without spaces",
                 MAX_TOKEN);
        return false;
    }
    if (given)
        snprintf(ctl->token, sizeof(ctl->token), "%s", given);
    else if (!random_token(ctl->token)) {
        snprintf(err, errlen, "--control: cannot draw a random token (RAND_bytes failed)");
        return false;
    }
    return true;
}

static bool bind_api(struct wsrr_control *ctl, struct event_base *base,
                     const struct wsrr_control_config *c, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (!c->listen || !parse_listen(c->listen, &ss, &sslen)) {
        snprintf(err, errlen,
                 "--control %s: expected HOST:PORT with a numeric host and a port of 0-65535 "
                 "(e.g. 127.0.0.1:8081 or [::1]:0)",
                 c->listen ? c->listen : "(missing)");
        return false;
    }
    if (!c->allow_remote && !is_loopback((struct sockaddr *)&ss)) {
        snprintf(err, errlen,
                 "--control %s: not a loopback address; the API can change live traffic, so "
                 "exposing it needs --control-allow-remote",
                 c->listen);
        return false;
    }
    struct evconnlistener *lis = evconnlistener_new_bind(
        base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, -1,
        (struct sockaddr *)&ss, sslen);
    if (!lis) {
        snprintf(err, errlen, "--control %s: %s", c->listen, strerror(errno));
        return false;
    }
    if (!evhttp_bind_listener(ctl->http, lis)) {
        evconnlistener_free(lis);
        snprintf(err, errlen, "--control %s: cannot serve HTTP on it", c->listen);
        return false;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    getsockname(evconnlistener_get_fd(lis), (struct sockaddr *)&bound, &blen);
    format_addr((struct sockaddr *)&bound, ctl->address, sizeof(ctl->address));
    return true;
}

struct wsrr_control *wsrr_control_new(struct event_base *base, const struct wsrr_control_config *c,
                                      char *err, size_t errlen)
{
    struct wsrr_control *ctl = calloc(1, sizeof(*ctl));
    if (!ctl) {
        snprintf(err, errlen, "--control: out of memory");
        return NULL;
    }
    ctl->allow_remote = c->allow_remote;
    ctl->http = evhttp_new(base);
    if (!ctl->http) {
        snprintf(err, errlen, "--control: cannot create the HTTP server");
        free(ctl);
        return NULL;
    }
    if (!set_token(ctl, c->token, err, errlen) || !bind_api(ctl, base, c, err, errlen)) {
        wsrr_control_free(ctl);
        return NULL;
    }
    evhttp_set_max_body_size(ctl->http, (ev_ssize_t)WSRR_CONTROL_MAX_BODY);
    evhttp_set_max_headers_size(ctl->http, MAX_HEAD_SIZE);
    evhttp_set_timeout(ctl->http, IDLE_TIMEOUT);
    /* read and discard an oversized body before answering 413, so the
     * client sees the answer instead of a reset */
    evhttp_set_flags(ctl->http, EVHTTP_SERVER_LINGERING_CLOSE);
    /* every method reaches on_request, which answers 405 itself (as JSON) */
    evhttp_set_allowed_methods(ctl->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(ctl->http, on_request, ctl);
    return ctl;
}

void wsrr_control_attach(struct wsrr_control *ctl, struct wsrr_proxy *p)
{
    ctl->p = p;
}

const char *wsrr_control_address(const struct wsrr_control *ctl)
{
    return ctl->address;
}

const char *wsrr_control_token(const struct wsrr_control *ctl)
{
    return ctl->token;
}

int wsrr_control_write_token(const struct wsrr_control *ctl, const char *path, char *err,
                             size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    /* an existing file keeps its mode on open: narrow it before writing */
    bool ok = fd >= 0 && fchmod(fd, 0600) == 0;
    size_t n = strlen(ctl->token);
    ok = ok && write(fd, ctl->token, n) == (ssize_t)n && write(fd, "\n", 1) == 1;
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok)
        snprintf(err, errlen, "--control-token-file %s: %s", path, strerror(e));
    return ok ? 0 : -1;
}

void wsrr_control_free(struct wsrr_control *ctl)
{
    if (!ctl)
        return;
    if (ctl->http)
        evhttp_free(ctl->http);
    OPENSSL_cleanse(ctl->token, sizeof(ctl->token));
    free(ctl);
}
