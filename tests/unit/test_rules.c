/* test_rules.c — rules files: what parses into what, and what is refused
 * with which message (rule, JSON path, what was expected). */
#include "check.h"
#include "wsrr/frame.h"
#include "wsrr/handshake.h"
#include "wsrr/rules.h"

static char err[512];

static struct wsrr_rules *parse(const char *json)
{
    err[0] = '\0';
    return wsrr_rules_parse(json, strlen(json), err, sizeof(err));
}

/* The document must be refused with a message containing every fragment. */
#define REFUSED(json, ...)                                                                         \
    do {                                                                                           \
        struct wsrr_rules *rs_ = parse(json);                                                      \
        CHECK_MSG(rs_ == NULL, "accepted: %s", json);                                              \
        wsrr_rules_free(rs_);                                                                      \
        const char *frags_[] = {__VA_ARGS__, NULL};                                                \
        for (const char **f_ = frags_; *f_; f_++)                                                  \
            CHECK_MSG(strstr(err, *f_), "%s\n    message: %s\n    lacks: %s", json, err, *f_);     \
    } while (0)

/* The doc's worked example: the backend appears to crash with 1011 after
 * the second tool_executing event. */
static const char *const crash_after_second =
    "{\"seed\": 7, \"rules\": [{\n"
    "  \"name\": \"crash-after-second-tool\",\n"
    "  \"match\": {\"direction\": \"server\", \"opcode\": \"text\",\n"
    "            \"json\": {\"type\": \"tool_executing\"}, \"skip\": 1},\n"
    "  \"limit_per_conn\": 1,\n"
    "  \"action\": {\"close\": {\"code\": 1011, \"reason\": \"Internal error\", \"to\": "
    "\"client\"}}\n"
    "}]}";

static void test_example(void)
{
    struct wsrr_rules *rs = parse(crash_after_second);
    REQUIRE(rs);
    CHECK(rs->seed_given && rs->seed == 7);
    CHECK_INT(rs->count, 1);
    const struct wsrr_rule *r = &rs->rules[0];
    CHECK(strcmp(r->name, "crash-after-second-tool") == 0);
    CHECK(r->enabled);
    CHECK_INT(r->match.direction, WSRR_DIR_S2C);
    CHECK_INT(r->match.opcodes, 1u << 1);
    CHECK_INT(r->match.skip, 1);
    CHECK_INT(r->limit_per_conn, 1);
    CHECK(r->match.json && cJSON_IsString(cJSON_GetObjectItem(r->match.json, "type")));
    CHECK_INT(r->action.kind, WSRR_ACT_CLOSE);
    CHECK_INT(r->action.code, 1011);
    CHECK(r->action.text && strcmp(r->action.text, "Internal error") == 0);
    CHECK_INT(r->action.to, WSRR_TO_CLIENT);
    CHECK_INT(wsrr_action_scope(r->action.kind), WSRR_SCOPE_MESSAGE);
    wsrr_rules_free(rs);
}

static void test_every_action(void)
{
    /* one rule per action with typical parameters: all parse */
    const char *doc =
        "{\"rules\": ["
        "{\"name\": \"a1\", \"action\": {\"drop\": {}}},"
        "{\"name\": \"a2\", \"action\": {\"delay\": {\"ms\": 250, \"jitter_ms\": 50}}},"
        "{\"name\": \"a3\", \"action\": {\"duplicate\": {\"times\": 2}}},"
        "{\"name\": \"a4\", \"action\": {\"reorder\": {\"after\": 3}}},"
        "{\"name\": \"a5\", \"action\": {\"corrupt\": {\"bytes\": 4, \"keep_valid\": false}}},"
        "{\"name\": \"a6\", \"action\": {\"truncate\": {\"bytes\": 10}}},"
        "{\"name\": \"a7\", \"action\": {\"fragment\": {\"frames\": 3}}},"
        "{\"name\": \"a8\", \"action\": {\"replace\": {\"json\": {\"set\": {\"data.ok\": false}, "
        "\"remove\": [\"trace\"]}}}},"
        "{\"name\": \"a9\", \"action\": {\"inject\": {\"when\": \"after\", \"opcode\": \"binary\", "
        "\"payload_b64\": \"AAEC\", \"to\": \"server\"}}},"
        "{\"name\": \"a10\", \"action\": {\"close\": {\"code\": 4000}}},"
        "{\"name\": \"a11\", \"action\": {\"ping_storm\": {\"count\": 100, \"interval_ms\": 1}}},"
        "{\"name\": \"c1\", \"action\": {\"reset\": {\"to\": \"both\"}}},"
        "{\"name\": \"c2\", \"action\": {\"half_close\": {\"to\": \"server\"}}},"
        "{\"name\": \"c3\", \"action\": {\"stall\": {}}},"
        "{\"name\": \"c4\", \"action\": {\"bandwidth\": {\"bytes_per_s\": 1000}}},"
        "{\"name\": \"c5\", \"action\": {\"latency\": {\"ms\": 100}}},"
        "{\"name\": \"c6\", \"action\": {\"slicer\": {\"bytes\": 1, \"delay_ms\": 2}}},"
        "{\"name\": \"c7\", \"action\": {\"timeout\": {\"ms\": 5000}}},"
        "{\"name\": \"c8\", \"action\": {\"kill_after\": {\"bytes\": 1024}}},"
        "{\"name\": \"h1\", \"match\": {\"path\": \"/v1/*\", \"header\": {\"Authorization\": "
        "\"Bearer *\"}}, \"action\": {\"reject\": {\"status\": 429, \"body\": \"slow down\", "
        "\"headers\": {\"Retry-After\": \"1\"}}}},"
        "{\"name\": \"h2\", \"action\": {\"delay_upgrade\": {\"ms\": 300}}},"
        "{\"name\": \"h3\", \"action\": {\"headers\": {\"request\": {\"remove\": "
        "[\"Sec-WebSocket-Extensions\"]}, \"response\": {\"set\": {\"X-Fault\": \"1\"}}}}},"
        "{\"name\": \"h4\", \"action\": {\"refuse_connect\": {}}},"
        "{\"name\": \"h5\", \"action\": {\"delay_connect\": {\"ms\": 2000}}}"
        "]}";
    struct wsrr_rules *rs = parse(doc);
    CHECK_MSG(rs, "%s", err);
    if (!rs)
        return;
    CHECK_INT(rs->count, WSRR_ACT_COUNT);
    CHECK(!rs->seed_given);
    for (size_t i = 0; i < rs->count; i++)
        CHECK_INT(rs->rules[i].action.kind, (enum wsrr_action_kind)i); /* the order above */
    const struct wsrr_action *inj = &rs->rules[WSRR_ACT_INJECT].action;
    CHECK(inj->binary && inj->text_len == 3 && memcmp(inj->text, "\0\1\2", 3) == 0);
    CHECK(inj->flag && inj->opcode == 2 && inj->to == WSRR_TO_SERVER);
    CHECK(rs->rules[WSRR_ACT_CORRUPT].action.flag == false);
    CHECK_INT(rs->rules[WSRR_ACT_STALL].action.ms, 0); /* forever */
    CHECK_INT(rs->rules[WSRR_ACT_REJECT].action.code, 429);
    CHECK_INT(wsrr_action_scope(WSRR_ACT_RESET), WSRR_SCOPE_CONNECTION);
    CHECK_INT(wsrr_action_scope(WSRR_ACT_REJECT), WSRR_SCOPE_HANDSHAKE);
    CHECK(strcmp(wsrr_action_name(WSRR_ACT_PING_STORM), "ping_storm") == 0);
    wsrr_rules_free(rs);
}

static void test_match(void)
{
    struct wsrr_rules *rs = parse(
        "{\"seed\": \"18446744073709551615\", \"rules\": [{\"name\": \"m\", \"match\": {"
        "\"conn\": [1, 3], \"nth\": 2, \"opcode\": [\"data\", \"ping\"], \"client\": "
        "\"127.0.0.*\", \"contains\": \"agent\", \"regex\": \"^\\\\{.*step\\\": [0-9]+\", "
        "\"json\": {\"data.step\": 2, \"error\": {\"exists\": false}}, \"after_ms\": 100, "
        "\"after_rule\": \"first\", \"probability\": 0.25}, \"limit\": 5, \"enabled\": false, "
        "\"action\": {\"drop\": {}}},"
        "{\"name\": \"first\", \"action\": {\"delay\": {\"ms\": 1}}}]}");
    CHECK_MSG(rs, "%s", err);
    if (!rs)
        return;
    CHECK(rs->seed == UINT64_MAX);
    const struct wsrr_match *m = &rs->rules[0].match;
    CHECK_INT(m->nconns, 2);
    CHECK(m->conns[0] == 1 && m->conns[1] == 3);
    CHECK_INT(m->nth, 2);
    CHECK_INT(m->opcodes, 1u << 0 | 1u << 1 | 1u << 2 | 1u << 9);
    CHECK_INT(m->after_rule, 1);
    CHECK(m->probability == 0.25);
    CHECK(m->regex_src && regexec(&m->regex, "{\"type\":\"x\",\"step\": 12}", 0, NULL, 0) == 0);
    CHECK(regexec(&m->regex, "step 12", 0, NULL, 0) != 0);
    CHECK(!rs->rules[0].enabled && rs->rules[0].limit == 5);
    CHECK_INT(m->direction, -1);
    CHECK_INT(wsrr_rules_find(rs, "first"), 1);
    CHECK_INT(wsrr_rules_find(rs, "nope"), -1);
    wsrr_rules_free(rs);

    rs = parse("{\"rules\": []}");
    CHECK(rs && rs->count == 0);
    wsrr_rules_free(rs);
}

static void test_refused(void)
{
    REFUSED("{\"rules\": [", "not JSON", "line 1");
    /* no response or request splitting through header rules */
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"reject\": {\"status\": 403, "
            "\"headers\": {\"X-A\": \"1\\r\\nSet-Cookie: y\"}}}}]}",
            "action.reject.headers.X-A", "CR or LF");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"headers\": {\"request\": {\"set\": "
            "{\"Bad Name\": \"v\"}}}}}]}",
            "action.headers.request.set.Bad Name", "token");
    REFUSED("{\"rules\": []} x", "more text after");
    REFUSED("[]", "expected an object");
    REFUSED("{}", "rules: missing");
    REFUSED("{\"rule\": []}", "unknown key 'rule'", "known: seed, rules");
    REFUSED("{\"seed\": -1, \"rules\": []}", "seed", "whole number");
    REFUSED("{\"seed\": \"12x\", \"rules\": []}", "seed", "whole number");
    REFUSED("{\"rules\": [{\"action\": {\"drop\": {}}}]}", "rules[0]", "name: missing");
    REFUSED("{\"rules\": [{\"name\": \"a b\", \"action\": {\"drop\": {}}}]}", "rules[0]",
            "name: expected 1-64 letters");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"drop\": {}}}, {\"name\": \"x\", "
            "\"action\": {\"drop\": {}}}]}",
            "rule 'x' (rules[1])", "names must be unique");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"mtach\": {}, \"action\": {\"drop\": {}}}]}",
            "rule 'x' (rules[0])", "unknown key 'mtach'");
    REFUSED("{\"rules\": [{\"name\": \"x\"}]}", "rule 'x'", "action: missing");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"json\": {\"a\": 1}, \"json\": {\"b\": "
            "2}}, \"action\": {\"drop\": {}}}]}",
            "match: 'json' given twice");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"explode\": {}}}]}",
            "action: unknown action 'explode'");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"drop\": {}, \"delay\": {\"ms\": 1}}}]}",
            "action: expected an object with exactly one action");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"delay\": {}}}]}",
            "action.delay: missing 'ms'");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"delay\": {\"ms\": -5}}}]}",
            "action.delay.ms: expected a whole number from 0 to 86400000, got -5");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"delay\": {\"ms\": 1.5}}}]}",
            "action.delay.ms", "got 1.5");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"delay\": {\"ms\": 1, \"jiter\": 2}}}]}",
            "action.delay: unknown key 'jiter'", "known: ms, jitter_ms");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"close\": {\"code\": 70000}}}]}",
            "action.close.code", "0 to 65535");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"close\": {\"code\": 1000, \"to\": "
            "\"upstream\"}}}]}",
            "action.close.to: expected client, server or both");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"fragment\": {\"frames\": 1}}}]}",
            "action.fragment.frames", "from 2");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"replace\": {}}}]}",
            "action.replace: expected payload, payload_b64 or json");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"replace\": {\"payload\": \"a\", "
            "\"payload_b64\": \"YQ==\"}}}]}",
            "payload and payload_b64 together");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"inject\": {\"payload_b64\": \"A\"}}}]}",
            "action.inject.payload_b64", "base64");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"inject\": {\"opcode\": \"data\"}}}]}",
            "action.inject.opcode", "expected text, binary");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"reject\": {\"status\": 99}}}]}",
            "action.reject.status", "from 100 to 599");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"headers\": {\"request\": {\"set\": "
            "{\"X\": 1}}}}}]}",
            "action.headers.request.set.X: expected a string");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"direction\": \"up\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "match.direction: expected client (sent by the client) or server");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"opcode\": \"txt\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "match.opcode: expected text, binary, continuation, close, ping, pong, data, control");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"regex\": \"(a\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "match.regex: not a POSIX extended regular expression");
    /* regular expressions glibc would compile into gigabytes */
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"regex\": \"^x[0-9]++++\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "match.regex: refused: two repetition operators in a row");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"regex\": \"((a{99}){99}){99}\"}, "
            "\"action\": {\"drop\": {}}}]}",
            "match.regex: refused: too much repetition");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"regex\": \"a{1000}\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "repeat count over 255");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"json\": {\"a..b\": 1}}, \"action\": "
            "{\"drop\": {}}}]}",
            "match.json.a..b: expected a dotted path");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"json\": {\"a\": {\"exist\": true}}}, "
            "\"action\": {\"drop\": {}}}]}",
            "match.json.a");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"probability\": 1.5}, \"action\": "
            "{\"drop\": {}}}]}",
            "match.probability: expected a number from 0 to 1");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"after_rule\": \"y\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "rule 'x' (rules[0]): match.after_rule: no rule is named 'y'");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"after_rule\": \"x\"}, \"action\": "
            "{\"drop\": {}}}]}",
            "cannot wait for itself");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"conn\": []}, \"action\": {\"drop\": "
            "{}}}]}",
            "match.conn");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"match\": {\"opcode\": \"text\"}, \"action\": "
            "{\"reject\": {\"status\": 401}}}]}",
            "reject acts on the handshake");
    REFUSED("{\"rules\": [{\"name\": \"x\", \"action\": {\"close\": {\"code\": 1000, \"reason\": "
            "\"0123456789012345678901234567890123456789012345678901234567890123456789012345678901"
            "234567890123456789012345678901234567890123\"}}}]}",
            "at most 123");
}

static void test_load(void)
{
    char err2[512];
    struct wsrr_rules *rs = wsrr_rules_load("/nonexistent/rules.json", err2, sizeof(err2));
    CHECK(!rs);
    CHECK_MSG(strstr(err2, "/nonexistent/rules.json: No such file"), "%s", err2);
}

/* ---- deciding ---- */

static struct wsrr_msg_info msg(int dir, uint8_t opcode, uint64_t nth, const char *payload)
{
    return (struct wsrr_msg_info){.dir = dir,
                                  .opcode = opcode,
                                  .nth = nth,
                                  .payload = (const uint8_t *)payload,
                                  .len = strlen(payload)};
}

static void test_decide_example(void)
{
    struct wsrr_rules *rs = parse(crash_after_second);
    REQUIRE(rs);
    /* two connections interleaved: each gets its own second tool_executing */
    struct wsrr_conn_info ci1 = {1, "/v1/agent", "127.0.0.1:5000", NULL};
    struct wsrr_conn_info ci2 = {2, "/v1/agent", "127.0.0.1:5001", NULL};
    struct wsrr_rules_conn *a = wsrr_rules_conn_new(rs, &ci1), *b = wsrr_rules_conn_new(rs, &ci2);
    REQUIRE(a && b);
    const char *ev[] = {"{\"type\":\"agent_started\"}", "{\"type\":\"tool_executing\",\"step\":1}",
                        "{\"type\":\"tool_executing\",\"step\":2}",
                        "{\"type\":\"tool_executing\",\"step\":3}"};
    int fired_a[4], fired_b[4];
    for (int i = 0; i < 4; i++) {
        struct wsrr_msg_info m = msg(WSRR_DIR_S2C, 1, (uint64_t)i + 1, ev[i]);
        fired_a[i] = wsrr_rules_on_message(rs, a, &m);
        /* the client's messages never match (direction) */
        struct wsrr_msg_info up = msg(WSRR_DIR_C2S, 1, (uint64_t)i + 1, ev[i]);
        CHECK_INT(wsrr_rules_on_message(rs, b, &up), -1);
        fired_b[i] = wsrr_rules_on_message(rs, b, &m);
    }
    for (int i = 0; i < 4; i++) {
        CHECK_INT(fired_a[i], i == 2 ? 0 : -1); /* the second tool_executing, once */
        CHECK_INT(fired_b[i], i == 2 ? 0 : -1);
    }
    CHECK_INT(rs->rules[0].fired, 2);
    struct wsrr_msg_info bin = msg(WSRR_DIR_S2C, 2, 9, ev[1]); /* binary: not "text" */
    struct wsrr_rules_conn *c3 = wsrr_rules_conn_new(rs, &ci1);
    CHECK_INT(wsrr_rules_on_message(rs, c3, &bin), -1);
    CHECK_INT(wsrr_rules_on_message(rs, c3, &bin), -1);
    wsrr_rules_conn_free(a);
    wsrr_rules_conn_free(b);
    wsrr_rules_conn_free(c3);
    wsrr_rules_free(rs);
}

static void test_decide_conditions(void)
{
    struct wsrr_rules *rs = parse(
        "{\"seed\": 1, \"rules\": ["
        "{\"name\": \"hs\", \"match\": {\"path\": \"/admin/*\"}, \"action\": {\"reject\": "
        "{\"status\": 403}}},"
        "{\"name\": \"auth\", \"match\": {\"header\": {\"Authorization\": \"Bearer bad*\"}}, "
        "\"action\": {\"reject\": {\"status\": 401}}},"
        "{\"name\": \"nth3\", \"match\": {\"nth\": 3, \"direction\": \"client\"}, \"action\": "
        "{\"drop\": {}}},"
        "{\"name\": \"grep\", \"match\": {\"contains\": \"boom\"}, \"limit\": 1, \"action\": "
        "{\"drop\": {}}},"
        "{\"name\": \"re\", \"match\": {\"regex\": \"^step [0-9]+$\"}, \"action\": {\"drop\": "
        "{}}},"
        "{\"name\": \"js\", \"match\": {\"json\": {\"a.b.0\": true, \"err\": {\"exists\": "
        "false}}}, \"action\": {\"drop\": {}}},"
        "{\"name\": \"then\", \"match\": {\"after_rule\": \"js\", \"opcode\": \"control\"}, "
        "\"action\": {\"drop\": {}}}"
        "]}");
    CHECK_MSG(rs, "%s", err);
    if (!rs)
        return;
    /* handshake rules see the path and the request's headers */
    struct wsrr_http_parser hp;
    const char *req = "GET /v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bad-token\r\n\r\n";
    wsrr_http_parser_init(&hp, false, 0, 0);
    REQUIRE(wsrr_http_parse(&hp, (const uint8_t *)req, strlen(req)) > 0);
    struct wsrr_conn_info admin = {1, "/admin/users", "127.0.0.1:1", NULL};
    struct wsrr_conn_info bad = {2, "/v1", "127.0.0.1:2", wsrr_http_parser_head(&hp)};
    struct wsrr_conn_info good = {3, "/v1", "127.0.0.1:3", NULL};
    struct wsrr_rules_conn *ca = wsrr_rules_conn_new(rs, &admin);
    struct wsrr_rules_conn *cb = wsrr_rules_conn_new(rs, &bad);
    struct wsrr_rules_conn *cg = wsrr_rules_conn_new(rs, &good);
    wsrr_http_parser_finish(&hp); /* the rules keep nothing of the head */
    CHECK_INT(wsrr_rules_on_handshake(rs, ca), 0);
    CHECK_INT(wsrr_rules_on_handshake(rs, cb), 1);
    CHECK_INT(wsrr_rules_on_handshake(rs, cg), -1);

    struct wsrr_msg_info m = msg(WSRR_DIR_C2S, 1, 3, "hello");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), 2); /* nth 3 from the client */
    m = msg(WSRR_DIR_S2C, 1, 3, "hello");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), -1);
    m = msg(WSRR_DIR_S2C, 1, 4, "a boom here");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), 3);
    CHECK_INT(wsrr_rules_on_message(rs, cb, &m), -1); /* limit 1, in all */
    m = msg(WSRR_DIR_S2C, 1, 5, "step 12");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), 4);
    m = msg(WSRR_DIR_S2C, 1, 6, "step 12 and more");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), -1);
    m = msg(WSRR_DIR_S2C, 9, 7, "{}");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), -1); /* 'then' waits for 'js' */
    m = msg(WSRR_DIR_S2C, 1, 8, "{\"a\": {\"b\": [true]}, \"err\": 1}");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), -1); /* err exists */
    m = msg(WSRR_DIR_S2C, 1, 9, "{\"a\": {\"b\": [true, false]}}");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), 5);
    m = msg(WSRR_DIR_S2C, 9, 10, "");
    CHECK_INT(wsrr_rules_on_message(rs, cg, &m), 6);
    CHECK_INT(wsrr_rules_on_message(rs, cb, &m), -1); /* js never fired on that one */
    wsrr_rules_conn_free(ca);
    wsrr_rules_conn_free(cb);
    wsrr_rules_conn_free(cg);
    wsrr_rules_free(rs);
}

/* The same seed over the same traffic fires the same messages, whatever
 * other connections do in between; another seed fires others. */
static void test_decide_seeded(void)
{
    char buf[256];
    uint64_t pattern[3] = {0};
    for (int run = 0; run < 3; run++) {
        snprintf(buf, sizeof(buf),
                 "{\"seed\": %d, \"rules\": [{\"name\": \"coin\", \"match\": "
                 "{\"probability\": 0.3}, \"action\": {\"drop\": {}}}]}",
                 run == 2 ? 8 : 7);
        struct wsrr_rules *rs = parse(buf);
        REQUIRE(rs);
        struct wsrr_conn_info ci = {5, "/", "c", NULL}, other = {6, "/", "d", NULL};
        struct wsrr_rules_conn *c = wsrr_rules_conn_new(rs, &ci);
        struct wsrr_rules_conn *o = wsrr_rules_conn_new(rs, &other);
        int hits = 0;
        for (uint64_t n = 1; n <= 64; n++) {
            /* run 1 interleaves another connection's traffic */
            if (run == 1)
                for (int k = 0; k < 3; k++) {
                    struct wsrr_msg_info om = msg(WSRR_DIR_C2S, 1, n * 3 + (uint64_t)k, "x");
                    wsrr_rules_on_message(rs, o, &om);
                }
            struct wsrr_msg_info m = msg(WSRR_DIR_S2C, 1, n, "x");
            if (wsrr_rules_on_message(rs, c, &m) == 0) {
                pattern[run] |= 1ull << (n - 1);
                hits++;
            }
        }
        CHECK_MSG(hits > 8 && hits < 32, "about 30%% of 64 fire: %d", hits);
        wsrr_rules_conn_free(c);
        wsrr_rules_conn_free(o);
        wsrr_rules_free(rs);
    }
    CHECK(pattern[0] == pattern[1]);
    CHECK(pattern[0] != pattern[2]);
    CHECK(wsrr_rules_draw(7, "coin", 5, WSRR_DIR_S2C, 1) ==
          wsrr_rules_draw(7, "coin", 5, WSRR_DIR_S2C, 1));
    CHECK(wsrr_rules_draw(7, "coin", 5, WSRR_DIR_S2C, 1) !=
          wsrr_rules_draw(7, "coin2", 5, WSRR_DIR_S2C, 1));
}

/* A connection action fires once per connection, a message action on every
 * match; the serialized rules parse back to the same decisions. */
static void test_decide_connection_once(void)
{
    struct wsrr_rules *rs = parse("{\"seed\": 3, \"rules\": ["
                                  "{\"name\": \"slow\", \"match\": {\"direction\": \"server\"},"
                                  " \"action\": {\"latency\": {\"ms\": 10}}},"
                                  "{\"name\": \"gone\", \"action\": {\"drop\": {}}}]}");
    REQUIRE(rs);
    struct wsrr_conn_info ci = {1, "/", "c", NULL}, ci2 = {2, "/", "c", NULL};
    struct wsrr_rules_conn *a = wsrr_rules_conn_new(rs, &ci), *b = wsrr_rules_conn_new(rs, &ci2);
    REQUIRE(a && b);
    for (uint64_t n = 1; n <= 3; n++) {
        struct wsrr_msg_info m = msg(WSRR_DIR_S2C, 1, n, "x");
        CHECK_INT(wsrr_rules_on_message(rs, a, &m), n == 1 ? 0 : 1);
    }
    struct wsrr_msg_info m = msg(WSRR_DIR_S2C, 1, 1, "x");
    CHECK_INT(wsrr_rules_on_message(rs, b, &m), 0); /* once per connection, not per run */
    CHECK_INT(rs->rules[0].fired, 2);
    char *txt = wsrr_rules_to_json(rs);
    REQUIRE(txt);
    struct wsrr_rules *back = parse(txt);
    REQUIRE(back);
    CHECK_INT((int)back->count, 2);
    CHECK(back->seed == 3 && back->seed_given);
    CHECK(strcmp(back->rules[1].name, "gone") == 0);
    CHECK_INT(back->rules[0].action.kind, WSRR_ACT_LATENCY);
    cJSON_free(txt);
    wsrr_rules_free(back);
    wsrr_rules_conn_free(a);
    wsrr_rules_conn_free(b);
    wsrr_rules_free(rs);
}

/* The rare-byte search finds exactly what memmem finds. */
static void test_contains_search(void)
{
    static const char *const hays[] = {"{\"type\":\"tool_executing\",\"step\":1}",
                                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
                                       "",
                                       "x",
                                       "needle at the end: zq-",
                                       "zq-zq-zq-zq-",
                                       "\"\"\"\"\"\"\"\"\"\""};
    static const char *const needles[] = {"tool_executing", "ab", "x",         "zq-",     "\"\"",
                                          "aaaab",          "q",  "step\":1}", "missing", "\"type"};
    for (size_t h = 0; h < sizeof(hays) / sizeof(hays[0]); h++)
        for (size_t k = 0; k < sizeof(needles) / sizeof(needles[0]); k++) {
            const char *hay = hays[h], *nd = needles[k];
            size_t hl = strlen(hay), nl = strlen(nd);
            bool want = memmem(hay, hl, nd, nl) != NULL;
            bool got = wsrr_contains((const uint8_t *)hay, hl, nd, nl, wsrr_rare_byte(nd, nl));
            CHECK_MSG(want == got, "'%s' in '%s': %d, memmem %d", nd, hay, got, want);
        }
    /* a key that is everywhere: 300 near misses, then the needle */
    char big[4096];
    memset(big, 'q', sizeof(big));
    memcpy(big + sizeof(big) - 4, "qqz!", 4);
    CHECK(wsrr_contains((const uint8_t *)big, sizeof(big), "qz!", 3, 0));
    CHECK(!wsrr_contains((const uint8_t *)big, sizeof(big) - 1, "qz!", 3, 0));
}

/* A payload cut into pieces, each masked or not, as a message lies in an
 * evbuffer; the search over them must say what memmem says over the whole. */
static uint32_t rnd_state = 2463534242u;
static uint32_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 17;
    rnd_state ^= rnd_state << 5;
    return rnd_state;
}

static bool pieces_find(const uint8_t *plain, size_t len, const char *nd, size_t nl, size_t maxcut,
                        bool all_masked)
{
    static uint8_t raw[1 << 16];
    struct wsrr_piece pc[64];
    size_t npc = 0, at = 0;
    while (at < len || npc == 0) {
        struct wsrr_piece *c = &pc[npc++];
        size_t k = len - at;
        if (npc < 64 && maxcut && k > 0)
            k = rnd() % (k < maxcut ? k + 1 : maxcut + 1); /* pieces of 0 bytes too */
        c->p = raw + at;
        c->len = k;
        c->masked = all_masked || (rnd() & 1);
        c->phase = (uint8_t)(rnd() & 3);
        uint32_t m = rnd();
        memcpy(c->mask, &m, 4);
        for (size_t i = 0; i < k; i++)
            raw[at + i] = plain[at + i] ^ (c->masked ? c->mask[(c->phase + i) & 3] : 0);
        at += k;
    }
    return wsrr_contains_pieces(pc, npc, nd, nl, wsrr_rare_byte(nd, nl));
}

static void test_contains_pieces(void)
{
    static uint8_t hay[1 << 16];
    char nd[WSRR_PIECES_NEEDLE_MAX + 1];
    for (int round = 0; round < 3000; round++) {
        size_t len = rnd() % (round < 2500 ? 300 : sizeof(hay));
        unsigned alpha = 2 + rnd() % 6; /* few letters: needles occur, often across cuts */
        for (size_t i = 0; i < len; i++)
            hay[i] = (uint8_t)('a' + rnd() % alpha);
        size_t nl = 1 + rnd() % (round % 7 ? 12 : WSRR_PIECES_NEEDLE_MAX);
        if (len >= nl && rnd() % 2) {
            memcpy(nd, hay + rnd() % (len - nl + 1), nl);
        } else {
            for (size_t i = 0; i < nl; i++)
                nd[i] = (char)('a' + rnd() % alpha);
        }
        bool want = memmem(hay, len, nd, nl) != NULL;
        bool got = pieces_find(hay, len, nd, nl, 1 + rnd() % 40, false);
        CHECK_MSG(want == got, "round %d: len %zu needle %zu: %d, memmem %d", round, len, nl, got,
                  want);
        if (want != got)
            break;
    }
    /* a key that is everywhere in one large masked piece ("q" is rarer than
     * " "): past 256 misses the search goes on in unmasked chunks; needles
     * just after that point (key 256 of "qq " is at 256) and across a
     * chunk's end (chunks of 4352 bytes from 256 overlap at 4606) are found */
    CHECK(wsrr_rare_byte("qq ", 3) < 2);
    static const size_t at[] = {250, 255, 256, 257, 258, 4605, 4606, 4607, 8955, 19997};
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        memset(hay, 'q', 20000);
        memcpy(hay + at[i], "qq ", 3);
        CHECK_MSG(pieces_find(hay, 20000, "qq ", 3, 0, true), "needle at %zu", at[i]);
    }
    memset(hay, 'q', 20000);
    CHECK(!pieces_find(hay, 20000, "qq ", 3, 0, true));
    /* a rare key in large masked pieces (the block scan, 64 or 128 bytes a
     * turn): the needle anywhere, around block edges and at the very end,
     * among a few decoys that hold the key but not the needle */
    for (int round = 0; round < 400; round++) {
        size_t len = 200 + rnd() % 20000;
        memset(hay, 'x', len);
        for (int k = rnd() % 4; k > 0; k--)
            memcpy(hay + rnd() % (len - 2), "zq", 2);
        size_t pos = round % 4 == 3 ? len - 4 : rnd() % (len - 3);
        if (round % 8 == 1)
            pos = (rnd() % (len / 64)) * 64 + 60 + rnd() % 8; /* across a 64-byte edge */
        pos = pos > len - 4 ? len - 4 : pos;
        bool put = round % 5 != 4;
        if (put)
            memcpy(hay + pos, "wqzy", 4);
        bool want = memmem(hay, len, "wqzy", 4) != NULL;
        bool got = pieces_find(hay, len, "wqzy", 4, round % 2 ? 0 : 1 + rnd() % 20000, true);
        CHECK_MSG(want == got, "rare round %d: len %zu at %zu: %d, memmem %d", round, len, pos, got,
                  want);
        if (want != got)
            break;
    }
    /* longer than the pieces take: not searched (the proxy gathers those) */
    memset(nd, 'q', sizeof(nd));
    CHECK(!pieces_find(hay, 20000, nd, sizeof(nd), 0, true));
}

/* One masked piece starting at every misalignment from a 64-byte boundary,
 * of lengths around the block sizes, the needle at every position: the
 * scan's unaligned head, its aligned blocks and its tail must each find it.
 * Then a decoy (the key alone) at every position must not match. */
static int sweep_masked(void)
{
    static _Alignas(64) uint8_t buf[64 + 1024];
    /* up to 512 bytes a piece is unmasked and searched plainly; above, scanned */
    static const size_t lens[] = {4, 100, 300, 513, 575, 576, 577, 600, 641, 700};
    size_t rare = wsrr_rare_byte("wqzy", 4);
    int bad = 0;
    for (size_t mis = 0; mis < 64; mis++) {
        for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            size_t len = lens[li];
            for (size_t pos = 0; pos + 4 <= len; pos++) {
                for (int decoy = 0; decoy < 2; decoy++) {
                    uint8_t plain[1024];
                    memset(plain, 'x', len);
                    if (decoy) /* the key where the needle would be, alone */
                        plain[pos + rare] = (uint8_t) "wqzy"[rare];
                    else
                        memcpy(plain + pos, "wqzy", 4);
                    struct wsrr_piece pc = {.p = buf + mis, .len = len, .masked = true};
                    pc.phase = (uint8_t)((mis + pos) & 3);
                    memcpy(pc.mask, "\x5a\xc3\x01\xfe", 4);
                    for (size_t i = 0; i < len; i++)
                        buf[mis + i] = plain[i] ^ pc.mask[(pc.phase + i) & 3];
                    bool got = wsrr_contains_pieces(&pc, 1, "wqzy", 4, rare);
                    if (got == (bool)decoy && bad++ < 5)
                        CHECK_MSG(got != decoy, "misaligned %zu, len %zu, at %zu, decoy %d: %d",
                                  mis, len, pos, decoy, got);
                }
            }
        }
    }
    return bad;
}

static void test_masked_alignment(void)
{
    CHECK(sweep_masked() == 0); /* as the proxy runs (AVX2 where the CPU has it) */
    wsrr_rules_portable_scan();
    CHECK(sweep_masked() == 0); /* and the portable scan */
}

/* A message searched part by part as it comes (wsrr_rules_scan_part), then
 * decided with only the rest: the same rule fires as when the whole
 * message is searched at once, needles across every cut, masked or not,
 * and a rule for the other direction is not searched. */
static void test_scan_parts(void)
{
    struct wsrr_rules *rs = parse(
        "{\"rules\": ["
        "{\"name\": \"srv\", \"match\": {\"direction\": \"server\", \"contains\": \"zq\"},"
        " \"action\": {\"drop\": {}}},"
        "{\"name\": \"a\", \"match\": {\"contains\": \"needle-a\"}, \"action\": {\"drop\": {}}},"
        "{\"name\": \"b\", \"match\": {\"contains\": \"bb\"}, \"action\": {\"drop\": {}}}]}");
    REQUIRE(rs);
    struct wsrr_conn_info ci = {1, "/", "127.0.0.1:1", NULL};
    static uint8_t plain[4096], raw[4096];
    for (int round = 0; round < 3000; round++) {
        size_t len = 1 + rnd() % (round < 2000 ? 64 : sizeof(plain));
        for (size_t i = 0; i < len; i++)
            plain[i] = (uint8_t)('c' + rnd() % 20);
        int which = rnd() % 4; /* none, a, b, both */
        if ((which & 1) && len >= 8)
            memcpy(plain + rnd() % (len - 7), "needle-a", 8);
        if ((which & 2) && len >= 2)
            memcpy(plain + rnd() % (len - 1), "bb", 2);
        if (rnd() % 3 == 0 && len >= 2)
            memcpy(plain + rnd() % (len - 1), "zq", 2); /* only rule srv wants it */
        bool masked = rnd() & 1;
        uint8_t mask[4] = {0x11, 0x80, 0x7f, 0x33};
        for (size_t i = 0; i < len; i++)
            raw[i] = plain[i] ^ (masked ? mask[i & 3] : 0);
        /* the whole message at once */
        struct wsrr_rules_conn *rc1 = wsrr_rules_conn_new(rs, &ci),
                               *rc2 = wsrr_rules_conn_new(rs, &ci);
        REQUIRE(rc1 && rc2);
        struct wsrr_piece whole = {.p = raw, .len = len, .masked = masked};
        memcpy(whole.mask, mask, 4);
        struct wsrr_msg_info m = {.dir = WSRR_DIR_C2S,
                                  .opcode = WSRR_OP_TEXT,
                                  .nth = 1,
                                  .len = len,
                                  .pieces = &whole,
                                  .npieces = 1};
        int want = wsrr_rules_on_message(rs, rc1, &m);
        /* in parts: cuts anywhere, each part searched, the last one left */
        struct wsrr_scan st = {0};
        struct wsrr_piece pc[16];
        size_t at = 0, npc = 0;
        while (at < len && npc < 15) {
            size_t k = 1 + rnd() % (len - at);
            pc[npc] = (struct wsrr_piece){
                .p = raw + at, .len = k, .masked = masked, .phase = (uint8_t)(at & 3)};
            memcpy(pc[npc].mask, mask, 4);
            npc++;
            at += k;
        }
        size_t rest = npc > 1 ? 1 + rnd() % (npc - 1) : 0; /* parts searched before the end */
        if (at < len) {                                    /* the last piece takes what is left */
            pc[npc - 1].len += len - at;
        }
        for (size_t i = 0; i < rest;) { /* a part is a run of pieces, as in the proxy */
            size_t k = 1 + rnd() % (rest - i);
            REQUIRE(wsrr_rules_scan_part(rs, rc2, &st, WSRR_DIR_C2S, WSRR_OP_TEXT, &pc[i], k) == 0);
            i += k;
        }
        m.pieces = pc + rest;
        m.npieces = npc - rest;
        m.scan = rest ? &st : NULL;
        int got = wsrr_rules_on_message(rs, rc2, &m);
        CHECK_MSG(got == want,
                  "round %d: len %zu, %zu parts, %zu searched first: rule %d, whole %d", round, len,
                  npc, rest, got, want);
        if (rest)
            CHECK(!(st.found[0] & 1)); /* the server's rule was not searched */
        wsrr_scan_free(&st);
        wsrr_rules_conn_free(rc1);
        wsrr_rules_conn_free(rc2);
        if (got != want)
            break;
    }
    wsrr_rules_free(rs);

    /* the longest needle a part-wise search takes, cut after each of its
     * bytes: the tail kept between parts must hold all but one of them */
    char needle[WSRR_PIECES_NEEDLE_MAX + 1], json[WSRR_PIECES_NEEDLE_MAX + 128];
    for (size_t i = 0; i < WSRR_PIECES_NEEDLE_MAX; i++)
        needle[i] = (char)('k' + i % 7);
    needle[WSRR_PIECES_NEEDLE_MAX] = '\0';
    snprintf(json, sizeof(json),
             "{\"rules\": [{\"name\": \"long\", \"match\": {\"contains\": \"%s\"},"
             " \"action\": {\"drop\": {}}}]}",
             needle);
    rs = parse(json);
    REQUIRE(rs);
    int bad = 0;
    for (size_t cut = 1; cut < WSRR_PIECES_NEEDLE_MAX; cut++) {
        size_t len = 600, pos = 300 - cut; /* the needle straddles byte 300 */
        memset(plain, 'a', len);
        memcpy(plain + pos, needle, WSRR_PIECES_NEEDLE_MAX);
        struct wsrr_rules_conn *rc = wsrr_rules_conn_new(rs, &ci);
        REQUIRE(rc);
        struct wsrr_scan st = {0};
        /* the first part in two pieces, the first shorter than what the
         * tail drops of the part */
        struct wsrr_piece a[2] = {{.p = plain, .len = 20}, {.p = plain + 20, .len = 280}},
                          b = {.p = plain + 300, .len = len - 300};
        REQUIRE(wsrr_rules_scan_part(rs, rc, &st, WSRR_DIR_S2C, WSRR_OP_TEXT, a, 2) == 0);
        struct wsrr_msg_info m = {.dir = WSRR_DIR_S2C,
                                  .opcode = WSRR_OP_TEXT,
                                  .nth = 1,
                                  .len = len,
                                  .pieces = &b,
                                  .npieces = 1,
                                  .scan = &st};
        if (wsrr_rules_on_message(rs, rc, &m) != 0 && bad++ < 3)
            CHECK_MSG(false, "a %d-byte needle cut after %zu bytes was missed",
                      WSRR_PIECES_NEEDLE_MAX, cut);
        wsrr_scan_free(&st);
        wsrr_rules_conn_free(rc);
    }
    CHECK_INT(bad, 0);
    wsrr_rules_free(rs);
}

int main(void)
{
    test_example();
    test_every_action();
    test_match();
    test_refused();
    test_load();
    test_decide_example();
    test_decide_conditions();
    test_decide_seeded();
    test_decide_connection_once();
    test_contains_search();
    test_contains_pieces();
    test_masked_alignment();
    test_scan_parts();
    return check_finish("test_rules");
}
