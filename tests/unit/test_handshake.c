/* test_handshake.c — HTTP head parser, Upgrade checks, builders (lib/handshake.c).
 *
 * Every head is also fed split at every byte (heads up to 4 KB), one byte at
 * a time and in random chunks, and must give the same result each time.
 */
#include "check.h"

#include "wsrr/handshake.h"

#include <event2/buffer.h>
#include <stdbool.h>

#define RFC_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static const char rfc_request[] = "GET /chat HTTP/1.1\r\n"
                                  "Host: server.example.com\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Origin: http://example.com\r\n"
                                  "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "\r\n";

static const char rfc_response[] = "HTTP/1.1 101 Switching Protocols\r\n"
                                   "Upgrade: websocket\r\n"
                                   "Connection: Upgrade\r\n"
                                   "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                                   "Sec-WebSocket-Protocol: chat\r\n"
                                   "\r\n";

/* ---- helpers ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* A digest of everything a head exposes, to compare runs. */
static uint64_t head_hash(const struct wsrr_http_head *h)
{
    uint64_t x = 0xcbf29ce484222325ull;
    int ints[4] = {h->response, h->status, h->version_minor, (int)h->flags};
    x = fnv(x, ints, sizeof(ints));
    x = fnv(x, h->method ? h->method : "", h->method_len);
    x = fnv(x, "|", 1);
    x = fnv(x, h->target ? h->target : "", h->target_len);
    x = fnv(x, "|", 1);
    x = fnv(x, h->reason ? h->reason : "", h->reason_len);
    x = fnv(x, &h->nfields, sizeof(h->nfields));
    for (size_t i = 0; i < h->nfields; i++) {
        x = fnv(x, h->fields[i].name, h->fields[i].name_len);
        x = fnv(x, ":", 1);
        x = fnv(x, h->fields[i].value, h->fields[i].value_len);
        x = fnv(x, "\n", 1);
    }
    x = fnv(x, h->raw, h->raw_len);
    return x;
}

struct outcome {
    ssize_t rc; /* bytes of the input that were the head, or an error */
    uint64_t hash;
    char err[160];
};

/* Feed s[0..n) cut at cuts[0..ncuts) (increasing) and report the outcome. */
static struct outcome feed(bool response, const uint8_t *s, size_t n, const size_t *cuts,
                           size_t ncuts, size_t max_head, size_t max_fields)
{
    struct wsrr_http_parser p;
    struct outcome o = {.rc = WSRR_AGAIN};
    size_t start = 0, total = 0;

    wsrr_http_parser_init(&p, response, max_head, max_fields);
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        ssize_t r = wsrr_http_parse(&p, s + start, end - start);
        if (r == WSRR_AGAIN) {
            if (end > start)
                total += end - start;
            start = end;
            continue;
        }
        o.rc = r > 0 ? (ssize_t)(total + (size_t)r) : r;
        break;
    }
    if (o.rc > 0)
        o.hash = head_hash(wsrr_http_parser_head(&p));
    snprintf(o.err, sizeof(o.err), "%s", wsrr_http_parser_error(&p));
    wsrr_http_parser_finish(&p);
    return o;
}

static bool same(const struct outcome *a, const struct outcome *b)
{
    return a->rc == b->rc && a->hash == b->hash && strcmp(a->err, b->err) == 0;
}

/* Whole, every 2-way split (heads up to 4 KB), 1 byte at a time and random
 * chunks: all must agree. Returns the whole-input outcome. */
static struct outcome feed_all_ways(bool response, const void *data, size_t n, size_t max_head,
                                    size_t max_fields)
{
    const uint8_t *s = data;
    struct outcome whole = feed(response, s, n, NULL, 0, max_head, max_fields);
    bool ok = true;

    if (n <= 4096) {
        for (size_t k = 0; k <= n && ok; k++) {
            struct outcome o = feed(response, s, n, &k, 1, max_head, max_fields);
            ok = same(&whole, &o);
            CHECK_MSG(ok, "split at %zu of %zu: rc %zd vs %zd, err '%s' vs '%s'", k, n, o.rc,
                      whole.rc, o.err, whole.err);
        }
    }
    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    REQUIRE(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    struct outcome o = feed(response, s, n, cuts, n ? n - 1 : 0, max_head, max_fields);
    CHECK_MSG(same(&whole, &o), "1-byte feed: rc %zd vs %zd, err '%s' vs '%s'", o.rc, whole.rc,
              o.err, whole.err);

    uint64_t seed = 0x9e3779b97f4a7c15ull ^ n;
    for (int round = 0; round < 4; round++) {
        size_t nc = 0, at = 0;
        while (n && at < n - 1) {
            at += 1 + check_rand(&seed) % (round == 0 ? 3 : round == 1 ? 17 : 300);
            if (at >= n)
                break;
            cuts[nc++] = at;
        }
        o = feed(response, s, n, cuts, nc, max_head, max_fields);
        CHECK_MSG(same(&whole, &o), "random chunks (round %d): rc %zd vs %zd", round, o.rc,
                  whole.rc);
    }
    free(cuts);
    return whole;
}

/* Parse a complete head into p (caller finishes p). Returns the rc. */
static ssize_t parse_into(struct wsrr_http_parser *p, bool response, const char *s, size_t n)
{
    wsrr_http_parser_init(p, response, 0, 0);
    return wsrr_http_parse(p, (const uint8_t *)s, n);
}

static bool field_is(const struct wsrr_http_head *h, const char *name, const char *value)
{
    const struct wsrr_http_field *f = wsrr_http_find(h, name, NULL);
    return f && f->value_len == strlen(value) && memcmp(f->value, value, f->value_len) == 0;
}

static bool mem_is(const char *p, size_t n, const char *s)
{
    return p && n == strlen(s) && memcmp(p, s, n) == 0;
}

/* A request from the RFC example with `from` replaced by `to` (one
 * occurrence); returns a malloc'd string. */
static char *edit(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    REQUIRE(at);
    size_t n = strlen(base) - strlen(from) + strlen(to);
    char *s = malloc(n + 1);
    REQUIRE(s);
    size_t pre = (size_t)(at - base);
    memcpy(s, base, pre);
    strcpy(s + pre, to);
    strcat(s, at + strlen(from));
    return s;
}

/* Parse req (all ways) and run check_request; returns the status. */
static int check_req_str(const char *req, char *err, size_t errlen)
{
    struct wsrr_http_parser p;
    struct wsrr_ws_info info;
    struct outcome o = feed_all_ways(false, req, strlen(req), 0, 0);

    CHECK_MSG(o.rc == (ssize_t)strlen(req), "request did not parse: %s", o.err);
    if (parse_into(&p, false, req, strlen(req)) <= 0) {
        wsrr_http_parser_finish(&p);
        return -1;
    }
    int st = wsrr_handshake_check_request(wsrr_http_parser_head(&p), &info, err, errlen);
    wsrr_http_parser_finish(&p);
    return st;
}

/* check_response of resp against req (both strings). */
static int check_resp_str(const char *req, const char *resp, char *err, size_t errlen)
{
    struct wsrr_http_parser pq, pr;
    struct wsrr_ws_info info;
    struct outcome o = feed_all_ways(true, resp, strlen(resp), 0, 0);

    CHECK_MSG(o.rc == (ssize_t)strlen(resp), "response did not parse: %s", o.err);
    REQUIRE(parse_into(&pq, false, req, strlen(req)) > 0);
    REQUIRE(parse_into(&pr, true, resp, strlen(resp)) > 0);
    int r = wsrr_handshake_check_response(wsrr_http_parser_head(&pq), wsrr_http_parser_head(&pr),
                                          &info, err, errlen);
    wsrr_http_parser_finish(&pq);
    wsrr_http_parser_finish(&pr);
    return r;
}

/* ---- tests ---- */

static void test_accept(void)
{
    char out[29];
    wsrr_handshake_accept(RFC_KEY, strlen(RFC_KEY), out);
    CHECK_STR(out, RFC_ACCEPT);

    char k1[25], k2[25];
    wsrr_handshake_make_key(k1);
    wsrr_handshake_make_key(k2);
    CHECK_INT(strlen(k1), 24);
    CHECK(strcmp(k1, k2) != 0);
    CHECK(k1[22] == '=' && k1[23] == '=');
}

static void test_rfc_example(void)
{
    struct wsrr_http_parser pq, pr;
    struct wsrr_ws_info info;
    char err[160];

    struct outcome o = feed_all_ways(false, rfc_request, strlen(rfc_request), 0, 0);
    CHECK_INT(o.rc, strlen(rfc_request));
    o = feed_all_ways(true, rfc_response, strlen(rfc_response), 0, 0);
    CHECK_INT(o.rc, strlen(rfc_response));

    REQUIRE(parse_into(&pq, false, rfc_request, strlen(rfc_request)) ==
            (ssize_t)strlen(rfc_request));
    const struct wsrr_http_head *rq = wsrr_http_parser_head(&pq);
    REQUIRE(rq);
    CHECK(!rq->response);
    CHECK(mem_is(rq->method, rq->method_len, "GET"));
    CHECK(mem_is(rq->target, rq->target_len, "/chat"));
    CHECK_INT(rq->version_minor, 1);
    CHECK_INT(rq->nfields, 7);
    CHECK_INT(rq->flags, 0);
    CHECK_INT(rq->raw_len, strlen(rfc_request));
    CHECK(memcmp(rq->raw, rfc_request, rq->raw_len) == 0);
    CHECK(field_is(rq, "host", "server.example.com"));
    CHECK(field_is(rq, "SEC-WEBSOCKET-KEY", RFC_KEY));
    CHECK(wsrr_http_has_token(rq, "Sec-WebSocket-Protocol", "superchat"));
    CHECK(wsrr_http_has_token(rq, "Sec-WebSocket-Protocol", "chat"));
    CHECK(!wsrr_http_has_token(rq, "Sec-WebSocket-Protocol", "super"));
    CHECK(wsrr_http_has_token(rq, "connection", "upgrade"));
    CHECK_INT(wsrr_handshake_check_request(rq, &info, err, sizeof(err)), 0);
    CHECK(mem_is(info.key, info.key_len, RFC_KEY));
    CHECK_INT(info.version, 13);
    CHECK(mem_is(info.host, info.host_len, "server.example.com"));
    CHECK(mem_is(info.origin, info.origin_len, "http://example.com"));
    CHECK(mem_is(info.protocols, info.protocols_len, "chat, superchat"));
    CHECK_INT(info.nprotocol_fields, 1);
    CHECK_INT(info.nextension_fields, 0);

    REQUIRE(parse_into(&pr, true, rfc_response, strlen(rfc_response)) ==
            (ssize_t)strlen(rfc_response));
    const struct wsrr_http_head *rs = wsrr_http_parser_head(&pr);
    REQUIRE(rs);
    CHECK(rs->response);
    CHECK_INT(rs->status, 101);
    CHECK(mem_is(rs->reason, rs->reason_len, "Switching Protocols"));
    CHECK_INT(wsrr_handshake_check_response(rq, rs, &info, err, sizeof(err)), 0);
    CHECK(mem_is(info.accept, info.accept_len, RFC_ACCEPT));
    CHECK(mem_is(info.protocols, info.protocols_len, "chat"));

    /* keep-alive style reuse */
    wsrr_http_parser_reset(&pq);
    CHECK(wsrr_http_parser_head(&pq) == NULL);
    CHECK_INT(wsrr_http_parse(&pq, (const uint8_t *)rfc_request, strlen(rfc_request)),
              strlen(rfc_request));
    CHECK_INT(wsrr_http_parse(&pq, (const uint8_t *)"x", 1), -EINVAL);
    CHECK(wsrr_http_parser_head(&pq) != NULL);
    wsrr_http_parser_finish(&pq);
    wsrr_http_parser_finish(&pr);
}

static void test_bad_key(void)
{
    char err[160];
    static const char *const bad[] = {
        "",                             /* empty */
        "dGhlIHNhbXBsZSBub25jZQ",       /* no padding */
        "dGhlIHNhbXBsZSBub25jZQ=",      /* half the padding */
        "dGhlIHNhbXBsZSBub25jZQ===",    /* too much */
        "dGhlIHNhbXBsZSBub25j",         /* 15 bytes */
        "dGhlIHNhbXBsZSBub25jZQAA",     /* 18 bytes */
        "dGhlIHNhbXBsZSBub25jZ*==",     /* not base64 */
        "dGhlIHNhbXBsZSBub2=jZQ==",     /* '=' inside */
        "dGhlIHNhbXBsZSBub25jZQ==dGhl", /* trailing data */
        "dGhlIHNhbXBsZSBub25jZQ== x",   /* two tokens */
        "dGhlIHNhbXBs ZSBub25jZQ==",    /* space inside */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "Sec-WebSocket-Key: %s\r\n", bad[i]);
        char *req = edit(rfc_request, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", line);
        int st = check_req_str(req, err, sizeof(err));
        CHECK_MSG(st == 400, "key '%s' gave %d", bad[i], st);
        CHECK(strstr(err, "Sec-WebSocket-Key") != NULL);
        free(req);
    }
    /* a different valid key still passes, and so does one with OWS around */
    char *req = edit(rfc_request, RFC_KEY, "AAAAAAAAAAAAAAAAAAAAAA==");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 0);
    free(req);
    req = edit(rfc_request, "Key: " RFC_KEY, "Key: \t " RFC_KEY " \t");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 0);
    free(req);

    req = edit(rfc_request, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 400);
    CHECK_STR(err, "no Sec-WebSocket-Key");
    free(req);

    req = edit(rfc_request, "Origin:", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nOrigin:");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 400);
    CHECK_STR(err, "more than one Sec-WebSocket-Key field");
    struct wsrr_http_parser p;
    REQUIRE(parse_into(&p, false, req, strlen(req)) > 0);
    CHECK(wsrr_http_parser_head(&p)->flags & WSRR_HTTP_F_DUP);
    wsrr_http_parser_finish(&p);
    free(req);
}

static void test_request_checks(void)
{
    char err[160];
    struct {
        const char *from, *to;
        int status;
        const char *why;
    } cases[] = {
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426, "is 8, expected 13"},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 14", 426, "expected 13"},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 013", 426, "expected 13"},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13, 8", 426, "expected 13"},
        {"Sec-WebSocket-Version: 13\r\n", "", 426, "no Sec-WebSocket-Version"},
        {"Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13", 400,
         "more than one Sec-WebSocket-Version"},
        {"GET /chat", "POST /chat", 400, "expected GET"},
        {"GET /chat", "get /chat", 400, "expected GET"},
        {"HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost", 400, "HTTP/1.1 or later"},
        {"Host: server.example.com\r\n", "", 400, "no Host"},
        {"Host: server.example.com", "Host: a\r\nHost: b", 400, "more than one Host"},
        {"Host: server.example.com", "Host:", 400, "empty Host"},
        {"Upgrade: websocket\r\n", "", 400, "Upgrade"},
        {"Upgrade: websocket", "Upgrade: h2c", 400, "Upgrade"},
        {"Upgrade: websocket", "Upgrade: websockets", 400, "Upgrade"},
        {"Connection: Upgrade", "Connection: keep-alive", 400, "Connection"},
        {"Connection: Upgrade", "Connection: Upgraded", 400, "Connection"},
        {"Origin:", "Transfer-Encoding: chunked\r\nOrigin:", 400, "Transfer-Encoding"},
        {"Origin:", "Content-Length: 5\r\nOrigin:", 400, "Content-Length"},
        {"Origin:", "Content-Length: x\r\nOrigin:", 400, "Content-Length"},
        {"Origin:", "Content-Length: 0\r\nOrigin:", 0, ""},
        {"Upgrade: websocket", "Upgrade: WebSocket", 0, ""},
        {"Connection: Upgrade", "Connection: keep-alive,  upgrade ", 0, ""},
        {"Connection: Upgrade", "Connection: keep-alive\r\nConnection: Upgrade", 0, ""},
        {"HTTP/1.1\r\nHost", "HTTP/1.9\r\nHost", 0, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *req = edit(rfc_request, cases[i].from, cases[i].to);
        err[0] = '\0';
        int st = check_req_str(req, err, sizeof(err));
        CHECK_MSG(st == cases[i].status, "case %zu (%s): status %d, expected %d (%s)", i,
                  cases[i].to, st, cases[i].status, err);
        CHECK_MSG(strstr(err, cases[i].why) != NULL, "case %zu: err '%s' lacks '%s'", i, err,
                  cases[i].why);
        free(req);
    }
}

static void test_duplicate_upgrade(void)
{
    char err[160];
    struct wsrr_http_parser p;

    /* Upgrade is a token list: duplicates read as one list, flagged. */
    char *req = edit(rfc_request, "Upgrade: websocket", "Upgrade: websocket\r\nUpgrade: websocket");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 0);
    REQUIRE(parse_into(&p, false, req, strlen(req)) > 0);
    CHECK(wsrr_http_parser_head(&p)->flags & WSRR_HTTP_F_DUP);
    wsrr_http_parser_finish(&p);
    free(req);

    req = edit(rfc_request, "Upgrade: websocket", "Upgrade: h2c\r\nUpgrade: websocket");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 0);
    free(req);

    req = edit(rfc_request, "Upgrade: websocket", "Upgrade: h2c\r\nUpgrade: foo");
    CHECK_INT(check_req_str(req, err, sizeof(err)), 400);
    free(req);

    /* The plain RFC request has no DUP flag. */
    REQUIRE(parse_into(&p, false, rfc_request, strlen(rfc_request)) > 0);
    CHECK(!(wsrr_http_parser_head(&p)->flags & WSRR_HTTP_F_DUP));
    wsrr_http_parser_finish(&p);
}

static void test_response_checks(void)
{
    char err[160];
    struct {
        const char *from, *to;
        int result;
        const char *why;
    } cases[] = {
        {RFC_ACCEPT, "s3pPLMBiTxaQ9kYGzzhZRbK+xOO=", -EPROTO, "expected " RFC_ACCEPT},
        {RFC_ACCEPT, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo", -EPROTO, "expected"},
        {RFC_ACCEPT, "", -EPROTO, "expected"},
        {"Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n", "", -EPROTO, "no Sec-WebSocket-Accept"},
        {"Sec-WebSocket-Accept: " RFC_ACCEPT,
         "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\nSec-WebSocket-Accept: " RFC_ACCEPT, -EPROTO,
         "more than one"},
        {"101 Switching Protocols", "403 Forbidden", 1, "status 403"},
        {"101 Switching Protocols", "200 OK", 1, "status 200"},
        {"Upgrade: websocket\r\n", "", -EPROTO, "Upgrade"},
        {"Connection: Upgrade\r\n", "", -EPROTO, "Connection"},
        {"Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: mqtt", -EPROTO,
         "mqtt was not offered"},
        {"Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: chat, superchat", -EPROTO,
         "single token"},
        {"Sec-WebSocket-Protocol: chat",
         "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat", -EPROTO, "more than one"},
        {"Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: superchat", 0, ""},
        {"Sec-WebSocket-Protocol: chat\r\n", "", 0, ""},
        {"Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Extensions: permessage-deflate", -EPROTO,
         "permessage-deflate was not offered"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *resp = edit(rfc_response, cases[i].from, cases[i].to);
        err[0] = '\0';
        int r = check_resp_str(rfc_request, resp, err, sizeof(err));
        CHECK_MSG(r == cases[i].result, "case %zu: result %d, expected %d (%s)", i, r,
                  cases[i].result, err);
        CHECK_MSG(strstr(err, cases[i].why) != NULL, "case %zu: err '%s' lacks '%s'", i, err,
                  cases[i].why);
        free(resp);
    }

    /* Extensions: offered ones may be selected, once each. */
    char *req = edit(rfc_request, "Origin:",
                     "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, "
                     "x-foo\r\nSec-WebSocket-Extensions: x-bar; a=\"b,c\"\r\nOrigin:");
    struct {
        const char *ext;
        int result;
    } ext_cases[] = {
        {"permessage-deflate", 0},
        {"permessage-deflate; server_no_context_takeover", 0},
        {"x-bar, permessage-deflate", 0},
        {"x-foo\r\nSec-WebSocket-Extensions: x-bar", 0},
        {"x-baz", -EPROTO},
        {"permessage-deflate, permessage-deflate", -EPROTO},
        {"permessage-deflate\r\nSec-WebSocket-Extensions: permessage-deflate", -EPROTO},
        {"permessage-deflate;", -EPROTO},
        {"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", -EPROTO},
    };
    for (size_t i = 0; i < sizeof(ext_cases) / sizeof(ext_cases[0]); i++) {
        char line[200];
        snprintf(line, sizeof(line), "Protocol: chat\r\nSec-WebSocket-Extensions: %s\r\n",
                 ext_cases[i].ext);
        char *resp2 = edit(rfc_response, "Protocol: chat\r\n", line);
        int r = check_resp_str(req, resp2, err, sizeof(err));
        CHECK_MSG(r == ext_cases[i].result, "ext case %zu (%s): %d (%s)", i, ext_cases[i].ext, r,
                  err);
        free(resp2);
    }
    free(req);

    /* not a response at all */
    struct wsrr_http_parser pq;
    struct wsrr_ws_info info;
    REQUIRE(parse_into(&pq, false, rfc_request, strlen(rfc_request)) > 0);
    CHECK_INT(wsrr_handshake_check_response(wsrr_http_parser_head(&pq), wsrr_http_parser_head(&pq),
                                            &info, err, sizeof(err)),
              -EPROTO);
    CHECK_INT(wsrr_handshake_check_request(wsrr_http_parser_head(&pq), &info, NULL, 0), 0);
    wsrr_http_parser_finish(&pq);
}

static void test_parse_errors(void)
{
    struct {
        bool response;
        const char *head;
        int rc;
        const char *err;
    } cases[] = {
        {false, "GET / HTTP/1.1\r\nHost: a\r\nX-Bad=header\r\n\r\n", -EBADMSG,
         "line 3: expected ':' after field name"},
        {false, "GET / HTTP/1.1\r\nHost : a\r\n\r\n", -EBADMSG,
         "line 2: whitespace between field name and ':'"},
        {false, "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", -EBADMSG, "line 2: whitespace"},
        {false, "GET / HTTP/1.1\r\n: a\r\n\r\n", -EBADMSG, "line 2: expected a field name"},
        {false, "GET / HTTP/1.1\r\nX(: a\r\n\r\n", -EBADMSG, "line 2: expected ':'"},
        {false, "GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n", -EBADMSG, "line 2: control character 0x01"},
        {false, "GET / HTTP/1.1\r\nX: a\rz\r\n\r\n", -EBADMSG, "control character 0x0d"},
        {false, "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", -EBADMSG, "control character 0x7f"},
        {false, "GET / HTTP/1.1\r\n  folded\r\nHost: a\r\n\r\n", -EBADMSG,
         "line 2: continuation line before any header field"},
        {false, "\r\nGET / HTTP/1.1\r\n\r\n", -EBADMSG, "line 1: expected a request line"},
        {false, "GET  / HTTP/1.1\r\n\r\n", -EBADMSG, "line 1: expected a request target"},
        {false, "GET / HTTP/1.1 \r\n\r\n", -EBADMSG, "line 1: expected HTTP/1.x"},
        {false, "GET / HTTP/2.0\r\n\r\n", -EBADMSG, "line 1: expected HTTP/1.x"},
        {false, "GET /\r\n\r\n", -EBADMSG, "line 1: expected ' ' after the request target"},
        {false, "GET\r\n\r\n", -EBADMSG, "line 1: expected ' ' after the method"},
        {false, "G(T / HTTP/1.1\r\n\r\n", -EBADMSG, "line 1: expected ' ' after the method"},
        {false, "/ HTTP/1.1\r\n\r\n", -EBADMSG, "line 1: expected a method"},
        {true, "HTTP/1.1 1O1 x\r\n\r\n", -EBADMSG, "3-digit status"},
        {true, "HTTP/1.1 101x\r\n\r\n", -EBADMSG, "after the status code"},
        {true, "HTTP/1.1 099 x\r\n\r\n", -EBADMSG, "3-digit status"},
        {true, "HTTP/1.1  101 x\r\n\r\n", -EBADMSG, "3-digit status"},
        {true, "GET / HTTP/1.1\r\n\r\n", -EBADMSG, "expected HTTP/1.x at the start"},
        {true, "HTTP/1.1 101 a\x01\r\n\r\n", -EBADMSG, "reason phrase"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct outcome o =
            feed_all_ways(cases[i].response, cases[i].head, strlen(cases[i].head), 0, 0);
        CHECK_MSG(o.rc == cases[i].rc, "case %zu: rc %zd, expected %d (%s)", i, o.rc, cases[i].rc,
                  o.err);
        CHECK_MSG(strstr(o.err, cases[i].err) != NULL, "case %zu: err '%s' lacks '%s'", i, o.err,
                  cases[i].err);
    }

    /* A failed parser stays failed. */
    struct wsrr_http_parser p;
    wsrr_http_parser_init(&p, false, 0, 0);
    CHECK_INT(wsrr_http_parse(&p, (const uint8_t *)"GET / HTTP/1.1\r\nA : b\r\n\r\n", 25),
              -EBADMSG);
    CHECK_INT(wsrr_http_parse(&p, (const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18), -EBADMSG);
    CHECK(wsrr_http_parser_head(&p) == NULL);
    wsrr_http_parser_reset(&p);
    CHECK_INT(wsrr_http_parse(&p, (const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18), 18);
    CHECK_STR(wsrr_http_parser_error(&p), "");
    wsrr_http_parser_finish(&p);

    /* Status line forms that are accepted. */
    struct wsrr_http_parser pr;
    CHECK_INT(parse_into(&pr, true, "HTTP/1.1 101\r\n\r\n", 16), 16);
    CHECK_INT(wsrr_http_parser_head(&pr)->status, 101);
    CHECK_INT(wsrr_http_parser_head(&pr)->reason_len, 0);
    wsrr_http_parser_finish(&pr);
    CHECK_INT(parse_into(&pr, true, "HTTP/1.0 404 \r\n\r\n", 17), 17);
    CHECK_INT(wsrr_http_parser_head(&pr)->status, 404);
    CHECK_INT(wsrr_http_parser_head(&pr)->version_minor, 0);
    wsrr_http_parser_finish(&pr);
}

static void test_trailing_bytes(void)
{
    /* A client frame sent in the same packet as the request, and a server
     * frame with the 101: the parser takes only the head. */
    static const uint8_t frame[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                    0x7f, 0x9f, 0x4d, 0x51, 0x58}; /* "Hello" masked */
    size_t hn = strlen(rfc_request);
    uint8_t *buf = malloc(hn + sizeof(frame));
    REQUIRE(buf);
    memcpy(buf, rfc_request, hn);
    memcpy(buf + hn, frame, sizeof(frame));
    struct outcome o = feed_all_ways(false, buf, hn + sizeof(frame), 0, 0);
    CHECK_INT(o.rc, hn);

    struct wsrr_http_parser p;
    wsrr_http_parser_init(&p, false, 0, 0);
    ssize_t r = wsrr_http_parse(&p, buf, hn + sizeof(frame));
    CHECK_INT(r, hn);
    CHECK_INT(wsrr_http_parser_head(&p)->raw_len, hn);
    wsrr_http_parser_finish(&p);
    free(buf);

    size_t rn = strlen(rfc_response);
    buf = malloc(rn + 7);
    REQUIRE(buf);
    memcpy(buf, rfc_response, rn);
    memcpy(buf + rn, "\x81\x05Hello", 7);
    o = feed_all_ways(true, buf, rn + 7, 0, 0);
    CHECK_INT(o.rc, rn);
    /* Even when the frame bytes look like more head ("\r\n"): the head ended. */
    memcpy(buf + rn, "\r\nX: y\r\n", 7);
    o = feed_all_ways(true, buf, rn + 7, 0, 0);
    CHECK_INT(o.rc, rn);
    free(buf);
}

static void test_folds_and_bare_lf(void)
{
    const char *req = "GET / HTTP/1.1\r\n"
                      "Host: a\r\n"
                      "X-Folded: one\r\n"
                      "   two  \r\n"
                      "\tthree\r\n"
                      " \r\n"
                      "Upgrade:\r\n"
                      " websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: " RFC_KEY "\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "X-After: after\r\n"
                      "\r\n";
    struct wsrr_http_parser p;
    char err[160];

    struct outcome o = feed_all_ways(false, req, strlen(req), 0, 0);
    CHECK_INT(o.rc, strlen(req));
    REQUIRE(parse_into(&p, false, req, strlen(req)) > 0);
    const struct wsrr_http_head *h = wsrr_http_parser_head(&p);
    CHECK(h->flags & WSRR_HTTP_F_FOLDED);
    CHECK(!(h->flags & WSRR_HTTP_F_BARE_LF));
    CHECK(field_is(h, "X-Folded", "one two three"));
    CHECK(field_is(h, "Upgrade", "websocket"));
    CHECK(field_is(h, "X-After", "after"));
    CHECK_INT(h->nfields, 7);
    CHECK(memcmp(h->raw, req, h->raw_len) == 0); /* raw kept as received */
    struct wsrr_ws_info info;
    CHECK_INT(wsrr_handshake_check_request(h, &info, err, sizeof(err)), 0);
    wsrr_http_parser_finish(&p);

    /* bare LF, also mixed with CRLF */
    const char *lf = "GET /x HTTP/1.1\n"
                     "Host: a\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\n"
                     "Sec-WebSocket-Key: " RFC_KEY "\n"
                     "Sec-WebSocket-Version: 13\n"
                     "\n";
    o = feed_all_ways(false, lf, strlen(lf), 0, 0);
    CHECK_INT(o.rc, strlen(lf));
    REQUIRE(parse_into(&p, false, lf, strlen(lf)) > 0);
    h = wsrr_http_parser_head(&p);
    CHECK(h->flags & WSRR_HTTP_F_BARE_LF);
    CHECK(field_is(h, "Host", "a"));
    CHECK_INT(wsrr_handshake_check_request(h, &info, err, sizeof(err)), 0);
    wsrr_http_parser_finish(&p);

    /* blank line as LF after CRLF lines, and CRLF after LF lines */
    o = feed_all_ways(false, "GET / HTTP/1.1\r\nA: b\r\n\nrest", 24, 0, 0);
    CHECK_INT(o.rc, 23);
    o = feed_all_ways(false, "GET / HTTP/1.1\nA: b\n\r\nrest", 24, 0, 0);
    CHECK_INT(o.rc, 22);
}

static void test_limits(void)
{
    char err[160];

    /* thousands of headers: an error under the default limits, fast */
    size_t cap = 1 << 20, n = 0;
    char *big = malloc(cap);
    REQUIRE(big);
    n += (size_t)sprintf(big, "%s", "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 5000; i++)
        n += (size_t)sprintf(big + n, "X-%d: v\r\n", i);
    n += (size_t)sprintf(big + n, "\r\n");
    uint64_t t0 = wsrr_now_ns();
    struct outcome o = feed_all_ways(false, big, n, 0, 0);
    CHECK_INT(o.rc, -EMSGSIZE);
    CHECK(strstr(o.err, "more than 256 header fields") != NULL);

    /* ... and parsed in linear time when the limits allow them */
    n = (size_t)sprintf(big, "%s", rfc_request);
    n -= 2;
    for (int i = 0; n < 900000; i++)
        n += (size_t)sprintf(big + n, "X-%d: v\r\n", i);
    n += (size_t)sprintf(big + n, "\r\n");
    o = feed_all_ways(false, big, n, 1 << 20, 1 << 20);
    CHECK_INT(o.rc, n);
    struct wsrr_http_parser p;
    wsrr_http_parser_init(&p, false, 1 << 20, 1 << 20);
    CHECK_INT(wsrr_http_parse(&p, (const uint8_t *)big, n), n);
    const struct wsrr_http_head *h = wsrr_http_parser_head(&p);
    CHECK(h->nfields > 70000);
    CHECK_INT(wsrr_handshake_check_request(h, &(struct wsrr_ws_info){0}, err, sizeof(err)), 0);
    CHECK(!wsrr_http_has_token(h, "X-1", "nothing"));
    wsrr_http_parser_finish(&p);

    /* a huge header line */
    n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nX-Long: ");
    memset(big + n, 'a', 70000);
    n += 70000;
    n += (size_t)sprintf(big + n, "\r\n\r\n");
    o = feed_all_ways(false, big, n, 0, 0);
    CHECK_INT(o.rc, -EMSGSIZE);
    CHECK_STR(o.err, "HTTP head exceeds 65536 bytes");

    /* never any end: fails once the limit is reached, not later */
    memset(big, '\n', 1);
    memset(big + 1, 'a', 100000);
    wsrr_http_parser_init(&p, false, 0, 0);
    ssize_t r = WSRR_AGAIN;
    size_t fed = 0;
    while (r == WSRR_AGAIN && fed < 100000) {
        r = wsrr_http_parse(&p, (const uint8_t *)big + 1 + fed, 1000);
        fed += 1000;
    }
    CHECK_INT(r, -EMSGSIZE);
    CHECK_INT(fed, 66000);
    wsrr_http_parser_finish(&p);

    /* exactly max_head is fine, one more byte is not */
    n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nX: ");
    memset(big + n, 'b', 1000);
    n += 1000;
    n += (size_t)sprintf(big + n, "\r\n\r\n");
    o = feed_all_ways(false, big, n, n, 0);
    CHECK_INT(o.rc, n);
    o = feed_all_ways(false, big, n, n - 1, 0);
    CHECK_INT(o.rc, -EMSGSIZE);
    /* a head within the limit followed by more bytes than the limit */
    memset(big + n, 'z', 5000);
    o = feed_all_ways(false, big, n + 5000, n, 0);
    CHECK_INT(o.rc, n);

    /* 60 KB of folds in one field, unfolded in linear time */
    n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nX: a\r\n");
    while (n < 60000)
        n += (size_t)sprintf(big + n, " b\r\n");
    n += (size_t)sprintf(big + n, "\r\n");
    o = feed_all_ways(false, big, n, 0, 0);
    CHECK_INT(o.rc, n);
    wsrr_http_parser_init(&p, false, 0, 0);
    CHECK_INT(wsrr_http_parse(&p, (const uint8_t *)big, n), n);
    h = wsrr_http_parser_head(&p);
    CHECK_INT(h->nfields, 1);
    CHECK_INT(h->fields[0].value_len, 1 + 2 * ((n - 24) / 4));
    wsrr_http_parser_finish(&p);

    uint64_t ms = (wsrr_now_ns() - t0) / 1000000;
    printf("limits: %" PRIu64 " ms\n", ms);
    CHECK_MSG(ms < 60000, "limits took %" PRIu64 " ms", ms); /* quadratic would take far longer */
    free(big);
}

static void test_ext_parse(void)
{
    struct wsrr_ext e[8];
    struct wsrr_ext_param prm[16];
    char err[128];
    const char *v = " permessage-deflate ; client_max_window_bits ,, permessage-deflate;"
                    "server_max_window_bits=\"10\" ; x = \"a\\\"b\",x-foo ,";
    int n = wsrr_ext_parse(v, strlen(v), e, 8, prm, 16, err, sizeof(err));
    REQUIRE(n == 3);
    CHECK(mem_is(e[0].name, e[0].name_len, "permessage-deflate"));
    CHECK_INT(e[0].nparams, 1);
    CHECK(mem_is(e[0].params[0].name, e[0].params[0].name_len, "client_max_window_bits"));
    CHECK(e[0].params[0].value == NULL);
    CHECK_INT(e[1].nparams, 2);
    CHECK(mem_is(e[1].params[0].value, e[1].params[0].value_len, "10"));
    CHECK(e[1].params[0].quoted);
    CHECK(mem_is(e[1].params[1].name, e[1].params[1].name_len, "x"));
    CHECK(mem_is(e[1].params[1].value, e[1].params[1].value_len, "a\\\"b"));
    CHECK(mem_is(e[2].name, e[2].name_len, "x-foo"));
    CHECK_INT(e[2].nparams, 0);

    CHECK_INT(wsrr_ext_parse("", 0, e, 8, prm, 16, err, sizeof(err)), 0);
    CHECK_INT(wsrr_ext_parse(" , ,", 4, e, 8, prm, 16, err, sizeof(err)), 0);

    struct {
        const char *v;
        int rc;
        const char *err;
    } bad[] = {
        {"a;", -EBADMSG, "offset 2: expected a parameter name"},
        {"a;;b", -EBADMSG, "offset 2: expected a parameter name"},
        {"a=b", -EBADMSG, "offset 1: expected ';' or ','"},
        {"a b", -EBADMSG, "offset 2: expected ';' or ','"},
        {"a;b=", -EBADMSG, "expected a token or quoted-string after '='"},
        {"a;b=,", -EBADMSG, "expected a token or quoted-string"},
        {"a;b=\"x", -EBADMSG, "unterminated"},
        {"a;b=\"x\\\"", -EBADMSG, "unterminated"},
        {"a;b=\"x\x01\"", -EBADMSG, "unterminated or invalid"},
        {"a;b=\"x\"y", -EBADMSG, "expected ';' or ','"},
        {";a", -EBADMSG, "offset 0: expected an extension name"},
        {"\"a\"", -EBADMSG, "expected an extension name"},
        {"a,b,c,d,e,f,g,h,i", -E2BIG, "more than 8 extensions"},
        {"a;a;a;a;a;a;a;a;a;a;a;a;a;a;a;a;a;a", -E2BIG, "more than 16 extension parameters"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        int r = wsrr_ext_parse(bad[i].v, strlen(bad[i].v), e, 8, prm, 16, err, sizeof(err));
        CHECK_MSG(r == bad[i].rc, "'%s': %d", bad[i].v, r);
        CHECK_MSG(strstr(err, bad[i].err) != NULL, "'%s': err '%s'", bad[i].v, err);
    }
    /* params NULL: checked, not stored */
    CHECK_INT(wsrr_ext_parse("a;b;c=1, d", 10, e, 8, NULL, 0, err, sizeof(err)), 2);
    CHECK_INT(e[0].nparams, 2);
    CHECK_INT(wsrr_ext_parse("a;b;c=, d", 9, e, 8, NULL, 0, err, sizeof(err)), -EBADMSG);
}

/* Pathological Extensions/Protocol values, in the head and through the
 * parsers: all bounded time. */
static void test_pathological_values(void)
{
    size_t vn = 60000;
    char *v = malloc(vn + 1);
    REQUIRE(v);
    struct wsrr_ext *e = malloc(40000 * sizeof(*e));
    struct wsrr_ext_param *prm = malloc(40000 * sizeof(*prm));
    REQUIRE(e && prm);
    char err[128];
    uint64_t t0 = wsrr_now_ns();

    const char *pats[] = {";", "a=,", ",", "a;", "a,", "a;b=c;", "\"", "a;b=\"\\", " "};
    for (size_t k = 0; k < sizeof(pats) / sizeof(pats[0]); k++) {
        size_t pl = strlen(pats[k]);
        for (size_t i = 0; i < vn; i++)
            v[i] = pats[k][i % pl];
        v[vn] = '\0';
        /* as a bare value, with small and large arrays and none */
        int r1 = wsrr_ext_parse(v, vn, e, 8, prm, 16, err, sizeof(err));
        int r2 = wsrr_ext_parse(v, vn, e, 40000, prm, 40000, err, sizeof(err));
        int r3 = wsrr_ext_parse(v, vn, e, 40000, NULL, 0, err, sizeof(err));
        CHECK(r1 <= 8 && r2 <= 40000 && r3 <= 40000);

        /* in a request and a response, through every check */
        size_t hn = strlen(rfc_request) + 2 * vn + 200;
        char *req = malloc(hn), *resp = malloc(hn);
        REQUIRE(req && resp);
        int rl = snprintf(req, hn,
                          "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                          "Upgrade\r\nSec-WebSocket-Key: " RFC_KEY
                          "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: %s\r\n"
                          "Sec-WebSocket-Protocol: %s\r\n\r\n",
                          v, v);
        int sl = snprintf(resp, hn,
                          "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
                          "Sec-WebSocket-Extensions: %s\r\nSec-WebSocket-Protocol: a\r\n\r\n",
                          v);
        struct wsrr_http_parser pq, pr;
        struct wsrr_ws_info info;
        wsrr_http_parser_init(&pq, false, 1 << 20, 0);
        wsrr_http_parser_init(&pr, true, 1 << 20, 0);
        ssize_t a = wsrr_http_parse(&pq, (const uint8_t *)req, (size_t)rl);
        ssize_t b = wsrr_http_parse(&pr, (const uint8_t *)resp, (size_t)sl);
        /* the value of pattern " " is trimmed to empty; all others parse */
        CHECK_INT(a, rl);
        CHECK_INT(b, sl);
        if (a > 0 && b > 0) {
            const struct wsrr_http_head *hq = wsrr_http_parser_head(&pq);
            const struct wsrr_http_head *hr = wsrr_http_parser_head(&pr);
            CHECK_INT(wsrr_handshake_check_request(hq, &info, err, sizeof(err)), 0);
            int r = wsrr_handshake_check_response(hq, hr, &info, err, sizeof(err));
            CHECK(r == 0 || r == -EPROTO);
            wsrr_http_has_token(hq, "Sec-WebSocket-Protocol", "zzz");
        }
        /* 1-byte feeding of the big request stays linear too */
        struct outcome o = feed_all_ways(false, req, (size_t)rl, 1 << 20, 0);
        CHECK_INT(o.rc, rl);
        wsrr_http_parser_finish(&pq);
        wsrr_http_parser_finish(&pr);
        free(req);
        free(resp);
    }
    /* a protocol list of 30000 names, the selected one last */
    size_t n = 0;
    while (n < vn - 10)
        n += (size_t)sprintf(v + n, "p,");
    n += (size_t)sprintf(v + n, "last");
    char *req = edit(rfc_request, "chat, superchat", v);
    char *resp = edit(rfc_response, "Protocol: chat", "Protocol: last");
    struct wsrr_http_parser pq, pr;
    struct wsrr_ws_info info;
    wsrr_http_parser_init(&pq, false, 1 << 20, 0);
    wsrr_http_parser_init(&pr, true, 0, 0);
    REQUIRE(wsrr_http_parse(&pq, (const uint8_t *)req, strlen(req)) > 0);
    REQUIRE(wsrr_http_parse(&pr, (const uint8_t *)resp, strlen(resp)) > 0);
    CHECK_INT(wsrr_handshake_check_response(wsrr_http_parser_head(&pq), wsrr_http_parser_head(&pr),
                                            &info, err, sizeof(err)),
              0);
    wsrr_http_parser_finish(&pq);
    wsrr_http_parser_finish(&pr);
    free(req);
    free(resp);

    uint64_t ms = (wsrr_now_ns() - t0) / 1000000;
    printf("pathological values: %" PRIu64 " ms\n", ms);
    CHECK_MSG(ms < 60000, "took %" PRIu64 " ms", ms);
    free(v);
    free(e);
    free(prm);
}

static void test_builders(void)
{
    struct evbuffer *b = evbuffer_new();
    REQUIRE(b);
    char key[25], err[160];
    wsrr_handshake_make_key(key);

    struct wsrr_ws_request_spec spec = {
        .target = "/ws?x=1",
        .host = "example.org:8443",
        .origin = "https://example.org",
        .key = key,
        .protocols = "v2.json, v1.json",
        .extensions = "permessage-deflate; client_max_window_bits",
        .extra = "Authorization: Bearer t\r\nX-Trace: 1\r\n",
    };
    CHECK_INT(wsrr_handshake_build_request(b, &spec), 0);
    size_t qn = evbuffer_get_length(b);
    char *req = malloc(qn + 1);
    REQUIRE(req);
    evbuffer_remove(b, req, qn);
    req[qn] = '\0';
    CHECK_INT(check_req_str(req, err, sizeof(err)), 0);
    struct wsrr_http_parser pq;
    struct wsrr_ws_info info;
    REQUIRE(parse_into(&pq, false, req, qn) == (ssize_t)qn);
    const struct wsrr_http_head *hq = wsrr_http_parser_head(&pq);
    CHECK_INT(wsrr_handshake_check_request(hq, &info, err, sizeof(err)), 0);
    CHECK(mem_is(info.key, info.key_len, key));
    CHECK(mem_is(info.host, info.host_len, "example.org:8443"));
    CHECK(mem_is(info.origin, info.origin_len, "https://example.org"));
    CHECK(mem_is(hq->target, hq->target_len, "/ws?x=1"));
    CHECK(field_is(hq, "X-Trace", "1"));
    CHECK(
        mem_is(info.extensions, info.extensions_len, "permessage-deflate; client_max_window_bits"));

    CHECK_INT(wsrr_handshake_build_response(b, info.key, info.key_len, "v1.json",
                                            "permessage-deflate", NULL),
              0);
    size_t rn = evbuffer_get_length(b);
    char *resp = malloc(rn + 1);
    REQUIRE(resp);
    evbuffer_remove(b, resp, rn);
    resp[rn] = '\0';
    CHECK_INT(check_resp_str(req, resp, err, sizeof(err)), 0);
    free(resp);

    /* a response for another key is refused */
    CHECK_INT(wsrr_handshake_build_response(b, RFC_KEY, strlen(RFC_KEY), NULL, NULL, NULL), 0);
    rn = evbuffer_get_length(b);
    resp = malloc(rn + 1);
    evbuffer_remove(b, resp, rn);
    resp[rn] = '\0';
    CHECK_INT(check_resp_str(req, resp, err, sizeof(err)), -EPROTO);
    free(resp);
    wsrr_http_parser_finish(&pq);
    free(req);

    /* key generated when NULL; minimal spec */
    struct wsrr_ws_request_spec min = {.host = "h"};
    CHECK_INT(wsrr_handshake_build_request(b, &min), 0);
    qn = evbuffer_get_length(b);
    req = malloc(qn + 1);
    evbuffer_remove(b, req, qn);
    req[qn] = '\0';
    CHECK_INT(check_req_str(req, err, sizeof(err)), 0);
    CHECK(strncmp(req, "GET / HTTP/1.1\r\n", 16) == 0);
    free(req);

    /* invalid input writes nothing */
    struct wsrr_ws_request_spec bad[] = {
        {.target = "/"},
        {.host = "h\r\nX: y"},
        {.host = "h", .target = "/a b"},
        {.host = "h", .protocols = "a\nb"},
        {.host = "h", .extra = "X: y"},
        {.host = "h", .extra = "X: y\n"},
        {.host = "h", .extra = "X: y\r\n\r\n"},
        {.host = "h", .extra = "\r\n"},
        {.host = "h", .extra = "X: y\rZ\r\n"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_MSG(wsrr_handshake_build_request(b, &bad[i]) == -EINVAL, "bad spec %zu", i);
    CHECK_INT(wsrr_handshake_build_response(b, "k", 1, "a\r\n", NULL, NULL), -EINVAL);
    CHECK_INT(evbuffer_get_length(b), 0);

    /* error responses */
    int statuses[] = {400, 426, 502, 599};
    for (size_t i = 0; i < 4; i++) {
        CHECK_INT(wsrr_http_build_error(b, statuses[i], i == 0 ? "bad key\n" : NULL), 0);
        rn = evbuffer_get_length(b);
        resp = malloc(rn + 1);
        evbuffer_remove(b, resp, rn);
        resp[rn] = '\0';
        struct wsrr_http_parser pr;
        ssize_t hn = parse_into(&pr, true, resp, rn);
        REQUIRE(hn > 0);
        const struct wsrr_http_head *h = wsrr_http_parser_head(&pr);
        CHECK_INT(h->status, statuses[i]);
        CHECK(mem_is(h->reason, h->reason_len, wsrr_http_reason(statuses[i])));
        char cl[32];
        snprintf(cl, sizeof(cl), "%zu", rn - (size_t)hn);
        CHECK(field_is(h, "Content-Length", cl));
        CHECK(field_is(h, "Connection", "close"));
        CHECK_INT(wsrr_http_find(h, "Sec-WebSocket-Version", NULL) != NULL, statuses[i] == 426);
        if (statuses[i] == 426)
            CHECK(field_is(h, "Sec-WebSocket-Version", "13"));
        if (i == 0)
            CHECK(strcmp(resp + hn, "bad key\n") == 0);
        CHECK_INT(wsrr_handshake_check_response(h, h, &info, NULL, 0), 1);
        wsrr_http_parser_finish(&pr);
        free(resp);
    }
    CHECK_INT(wsrr_http_build_error(b, 99, NULL), -EINVAL);
    CHECK_INT(wsrr_http_build_error(b, 1000, NULL), -EINVAL);
    CHECK_STR(wsrr_http_reason(426), "Upgrade Required");
    CHECK_STR(wsrr_http_reason(400), "Bad Request");
    CHECK_STR(wsrr_http_reason(502), "Bad Gateway");
    CHECK_STR(wsrr_http_reason(599), "Unknown");
    evbuffer_free(b);
}

int main(void)
{
    test_accept();
    test_rfc_example();
    test_bad_key();
    test_request_checks();
    test_duplicate_upgrade();
    test_response_checks();
    test_parse_errors();
    test_trailing_bytes();
    test_folds_and_bare_lf();
    test_limits();
    test_ext_parse();
    test_pathological_values();
    test_builders();
    return check_finish("test_handshake");
}
