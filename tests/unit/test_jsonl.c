/* test_jsonl.c — records to JSON lines and back: every kind, every
 * text/base64 decision, large integers, and the errors a hand-edited line
 * can contain. */
#include "check.h"
#include "wsrr/frame.h"
#include "wsrr/jsonl.h"

#define SPAN(s) ((struct wsrr_span){(const uint8_t *)(s), sizeof(s) - 1})

/* render -> parse -> render must give the same line, and the parsed record
 * must encode to the same bytes as the original. */
static void round_trip(const struct wsrr_record *r, const char *expect_substr)
{
    char *line = wsrr_jsonl_record(r);
    REQUIRE(line);
    if (expect_substr)
        CHECK_MSG(strstr(line, expect_substr) != NULL, "%s not in %s", expect_substr, line);
    struct wsrr_record back;
    uint8_t *arena;
    char err[256];
    int rc = wsrr_jsonl_parse_record(line, strlen(line), 0, &back, &arena, err, sizeof(err));
    CHECK_MSG(rc == 0, "%s: %s", line, err);
    if (rc == 0) {
        char *again = wsrr_jsonl_record(&back);
        CHECK_STR(again, line);
        size_t a = wsrr_record_size(r), b = wsrr_record_size(&back);
        uint8_t *ea = malloc(a), *eb = malloc(b);
        wsrr_record_encode(ea, r);
        wsrr_record_encode(eb, &back);
        CHECK_MEM(ea, a, eb, b);
        free(ea);
        free(eb);
        free(again);
        free(arena);
    }
    free(line);
}

static struct wsrr_record frame(uint8_t dir, uint8_t op, struct wsrr_span payload)
{
    struct wsrr_record r = {.kind = WSRR_REC_FRAME, .seq = 7, .ts = 1000, .conn = 3};
    r.u.frame.dir = dir;
    r.u.frame.fin = true;
    r.u.frame.opcode = op;
    r.u.frame.payload = payload;
    r.u.frame.len = payload.n;
    r.u.frame.len_width = payload.n <= 125 ? 7 : payload.n <= 0xffff ? 16 : 64;
    return r;
}

static void test_frames(void)
{
    struct wsrr_record r = frame(WSRR_DIR_C2S, WSRR_OP_TEXT, SPAN("Hello"));
    r.u.frame.fflags = WSRR_FF_MASKED;
    memcpy(r.u.frame.mask, "\x37\xfa\x21\x3d", 4);
    round_trip(&r, "\"mask\":\"37fa213d\",\"payload\":\"Hello\"");

    /* text with quotes, control characters, non-ASCII: stays text */
    r = frame(WSRR_DIR_S2C, WSRR_OP_TEXT,
              SPAN("{\"type\":\"agent\\n\"}\t\xc3\xa9\xf0\x9f\x98\x80"));
    round_trip(&r, "\"payload\":\"");
    /* NUL and invalid UTF-8 fall back to base64 */
    r = frame(WSRR_DIR_S2C, WSRR_OP_TEXT, SPAN("a\0b"));
    round_trip(&r, "\"payload_b64\":\"YQBi\"");
    r = frame(WSRR_DIR_S2C, WSRR_OP_TEXT, SPAN("\xc0\xaf"));
    r.u.frame.violations = WSRR_V_BAD_UTF8;
    round_trip(&r, "\"violations\":[\"");
    /* binary is always base64, even when it happens to be text */
    r = frame(WSRR_DIR_S2C, WSRR_OP_BINARY, SPAN("abc"));
    round_trip(&r, "\"payload_b64\":\"YWJj\"");
    /* close frames: code and reason, or base64 when not expressible */
    r = frame(WSRR_DIR_S2C, WSRR_OP_CLOSE, SPAN("\x03\xf3Internal error"));
    round_trip(&r, "\"code\":1011,\"reason\":\"Internal error\"");
    r = frame(WSRR_DIR_S2C, WSRR_OP_CLOSE, SPAN("\x03\xe8"));
    round_trip(&r, "\"code\":1000}");
    r = frame(WSRR_DIR_S2C, WSRR_OP_CLOSE, SPAN("\x03"));
    r.u.frame.violations = WSRR_V_CLOSE_1_BYTE;
    round_trip(&r, "\"payload_b64\":\"Aw==\"");
    r = frame(WSRR_DIR_S2C, WSRR_OP_CLOSE, SPAN("\x03\xe8\xff"));
    round_trip(&r, "\"payload_b64\"");
    r = frame(WSRR_DIR_S2C, WSRR_OP_CLOSE, SPAN(""));
    round_trip(&r, "\"opcode\":\"close\",\"fin\":true}");
    /* reserved opcodes, RSV bits, fin false, non-minimal and huge lengths */
    r = frame(WSRR_DIR_C2S, 0xB, SPAN("x"));
    r.u.frame.fin = false;
    r.u.frame.rsv = WSRR_RSV2 | WSRR_RSV3;
    r.u.frame.len_width = 64;
    r.u.frame.violations = WSRR_V_RESERVED_OPCODE | WSRR_V_LEN_NOT_MINIMAL | WSRR_V_MASK_MISSING;
    round_trip(&r, "\"opcode\":\"op11\",\"fin\":false,\"rsv\":3");
    r = frame(WSRR_DIR_S2C, WSRR_OP_BINARY, SPAN(""));
    r.u.frame.len = UINT64_C(0x8000000000000000);
    r.u.frame.len_width = 64;
    r.u.frame.violations = WSRR_V_LEN_TOP_BIT | WSRR_V_FRAME_TOO_BIG;
    r.flags = WSRR_RF_TRUNCATED;
    round_trip(&r, "\"len\":\"9223372036854775808\"");
    r.u.frame.len = UINT64_C(1) << 53; /* not exact in every JSON reader: a string */
    round_trip(&r, "\"len\":\"9007199254740992\"");
    r.u.frame.len = (UINT64_C(1) << 53) - 1;
    round_trip(&r, "\"len\":9007199254740991");
    /* compressed frame with its inflated message */
    r = frame(WSRR_DIR_S2C, WSRR_OP_TEXT, SPAN("\xf2\x48\xcd\xc9\xc9\x07\x00"));
    r.u.frame.rsv = WSRR_RSV1;
    r.u.frame.fflags = WSRR_FF_MESSAGE;
    r.u.frame.message = SPAN("Hello");
    round_trip(&r, "\"payload_b64\":\"8kjNyckHAA==\",\"message\":\"Hello\"");
    r.u.frame.fflags = WSRR_FF_INFLATE_ERROR;
    round_trip(&r, "\"inflate_error\":true");
    /* every opcode value survives */
    for (int op = 0; op < 16; op++) {
        r = frame(WSRR_DIR_S2C, (uint8_t)op, SPAN("p"));
        round_trip(&r, NULL);
    }
    /* a large payload (base64 path over several MB) */
    size_t n = 5 << 20;
    uint8_t *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    r = frame(WSRR_DIR_S2C, WSRR_OP_BINARY, (struct wsrr_span){big, n});
    round_trip(&r, NULL);
    free(big);
}

static void test_other_kinds(void)
{
    struct wsrr_record r = {.kind = WSRR_REC_OPEN, .seq = 1, .conn = 1};
    r.u.open.flags = WSRR_OF_CLIENT_TLS | WSRR_OF_UPSTREAM_INSECURE;
    r.u.open.client = SPAN("[::1]:5000");
    r.u.open.upstream = SPAN("wss://staging.example:443/ws");
    r.u.open.sni = SPAN("\xff\xfe"); /* not text: base64 */
    round_trip(&r, "\"transport\":[\"client_tls\",\"upstream_insecure\"]");

    r = (struct wsrr_record){.kind = WSRR_REC_REQUEST, .seq = 2, .ts = 5, .conn = 1};
    r.u.http.head = SPAN("GET /ws HTTP/1.1\r\nHost: a\r\nAuthorization: <redacted:1a2b>\r\n\r\n");
    r.flags = WSRR_RF_REDACTED;
    round_trip(&r, "\"flags\":[\"redacted\"],\"head\":\"GET /ws HTTP/1.1\\r\\n");

    r = (struct wsrr_record){.kind = WSRR_REC_CLOSE, .seq = 3, .conn = 1};
    r.u.close.side = WSRR_SIDE_SERVER;
    r.u.close.cflags = WSRR_CF_HAS_CODE;
    r.u.close.code = 1011;
    r.u.close.reason = SPAN("Internal error");
    round_trip(&r, "\"side\":\"server\",\"code\":1011");
    r.u.close.cflags = WSRR_CF_CLEAN;
    r.u.close.code = 0;
    r.u.close.side = WSRR_SIDE_NONE;
    round_trip(&r, "\"clean\":true");
    r.u.close.code = 77; /* a code without the has-code flag is still kept */
    round_trip(&r, "\"code_raw\":77");

    r = (struct wsrr_record){.kind = WSRR_REC_TCP, .seq = 4, .conn = 2};
    r.u.tcp.leg = WSRR_LEG_UPSTREAM;
    r.u.tcp.event = WSRR_TCP_RST;
    r.u.tcp.err = -104;
    round_trip(&r, "\"event\":\"rst\",\"err\":-104");

    r = (struct wsrr_record){.kind = WSRR_REC_FAULT, .seq = 5, .conn = 2};
    r.flags = WSRR_RF_INJECTED | 0x80;
    r.u.fault.target = 4;
    r.u.fault.rule = SPAN("r1");
    r.u.fault.action = SPAN("close");
    round_trip(&r, "\"flags\":[\"injected\",\"bit7\"]");

    r = (struct wsrr_record){.kind = WSRR_REC_NOTE, .seq = 6};
    r.u.note.text = SPAN("");
    round_trip(&r, "\"text\":\"\"");

    r = (struct wsrr_record){.kind = WSRR_REC_BODY, .seq = 8, .conn = 4};
    r.u.body.dir = WSRR_DIR_S2C;
    r.u.body.bflags = WSRR_BF_COMPLETE | WSRR_BF_CHUNKED;
    r.u.body.data = SPAN("{\"ok\":true}");
    r.u.body.len = 11;
    round_trip(&r, "\"kind\":\"body\",\"dir\":\"server\",\"complete\":true,\"chunked\":true,"
                   "\"data\":\"{\\\"ok\\\":true}\"");
    r.u.body.bflags = 0;
    r.u.body.len = 1000;
    r.flags = WSRR_RF_TRUNCATED;
    round_trip(&r, "\"len\":1000");

    r = (struct wsrr_record){.kind = 99, .seq = 7};
    r.u.raw.body = SPAN("\x01\x02");
    r.extra = SPAN("zz");
    round_trip(&r, "\"kind\":99,\"body_b64\":\"AQI=\",\"extra_b64\":\"eno=\"");
}

static void expect_error(const char *line, const char *needle)
{
    struct wsrr_record r;
    uint8_t *arena = (uint8_t *)1;
    char err[256] = "";
    int rc = wsrr_jsonl_parse_record(line, strlen(line), 0, &r, &arena, err, sizeof(err));
    CHECK_MSG(rc == -EINVAL, "accepted: %s", line);
    CHECK(arena == NULL);
    CHECK_MSG(strstr(err, needle) != NULL, "error for %s is \"%s\", expected \"%s\"", line, err,
              needle);
}

static void test_errors(void)
{
    expect_error("{\"kind\":\"note\",\"text\":\"x\"", "column");
    expect_error("{\"kind\":\"note\",\"text\":\"x\"} trailing", "column 28");
    expect_error("[1,2]", "expected a JSON object");
    expect_error("{\"kind\":\"nope\"}", "key \"kind\"");
    expect_error("{\"kind\":\"note\",\"txt\":\"x\"}", "unknown key \"txt\"");
    expect_error("{\"kind\":\"note\"}", "missing key \"text\"");
    expect_error("{\"kind\":\"note\",\"text\":5}", "expected a string");
    expect_error("{\"kind\":\"note\",\"text\":\"a\",\"text_b64\":\"YQ==\"}", "both given");
    expect_error("{\"kind\":\"note\",\"text_b64\":\"YQ=\"}", "padded base64");
    expect_error("{\"kind\":\"note\",\"text_b64\":\"Y=Q=\"}", "padded base64");
    expect_error("{\"kind\":\"note\",\"seq\":-1,\"text\":\"a\"}", "key \"seq\"");
    expect_error("{\"kind\":\"note\",\"seq\":1.5,\"text\":\"a\"}", "key \"seq\"");
    expect_error("{\"kind\":\"note\",\"seq\":\"18446744073709551616\",\"text\":\"a\"}",
                 "key \"seq\"");
    expect_error("{\"kind\":\"note\",\"conn\":4294967296,\"text\":\"a\"}", "key \"conn\"");
    expect_error("{\"kind\":\"note\",\"flags\":[\"shiny\"],\"text\":\"a\"}", "unknown flag");
    expect_error("{\"kind\":\"frame\",\"opcode\":\"text\"}", "key \"dir\"");
    expect_error("{\"kind\":\"frame\",\"dir\":\"client\",\"opcode\":\"txt\"}", "key \"opcode\"");
    expect_error("{\"kind\":\"frame\",\"dir\":\"client\",\"opcode\":16}", "key \"opcode\"");
    expect_error("{\"kind\":\"frame\",\"dir\":\"client\",\"opcode\":\"text\",\"mask\":\"xyz\"}",
                 "8 hex digits");
    expect_error("{\"kind\":\"frame\",\"dir\":\"client\",\"opcode\":\"text\",\"len_width\":8}",
                 "7, 16 or 64");
    expect_error(
        "{\"kind\":\"frame\",\"dir\":\"client\",\"opcode\":\"text\",\"violations\":[\"x\"]}",
        "unknown violation");
    expect_error("{\"kind\":\"frame\",\"dir\":\"server\",\"opcode\":\"close\",\"code\":1000,"
                 "\"payload\":\"x\"}",
                 "not both");
    expect_error("{\"kind\":\"frame\",\"dir\":\"server\",\"opcode\":\"close\",\"reason\":\"x\"}",
                 "needs \"code\"");
    expect_error("{\"kind\":\"close\",\"side\":\"moon\"}", "key \"side\"");
    expect_error("{\"kind\":\"tcp\",\"leg\":\"x\",\"event\":\"rst\"}", "key \"leg\"");
    expect_error("{\"kind\":\"tcp\",\"leg\":\"client\",\"event\":\"boom\"}", "key \"event\"");
    expect_error("{\"kind\":\"fault\",\"rule\":\"r\"}", "missing key \"action\"");
    expect_error("{\"kind\":3}", "key \"kind\""); /* a known kind must be named */
    /* what cJSON would lose silently */
    expect_error("{\"kind\":\"note\",\"text\":\"abc\\u0000def\"}", "column 27: \\u0000");
    expect_error("{\"kind\":\"note\",\"text\":\"first\",\"text\":\"second\"}", "appears twice");
    expect_error("{\"kind\":\"note\",\"seq\":9007199254740993,\"text\":\"a\"}", "decimal string");
    expect_error("{\"kind\":\"note\",\"seq\":0,\"text\":\"a\"}", "0 is reserved");
    expect_error("{\"kind\":\"note\",\"flags\":[\"bit4294967297\"],\"text\":\"a\"}",
                 "unknown flag");
    expect_error("{\"kind\":\"note\",\"flags\":[\"bit01\"],\"text\":\"a\"}", "unknown flag");
    expect_error("{\"kind\":\"note\",\"text_b64\":\" QUF\"}", "padded base64");
    expect_error("{\"kind\":\"close\",\"side\":1.5}", "key \"side\"");
    expect_error("{\"kind\":\"close\",\"side\":\"server\",\"code\":1000,\"code_raw\":5}",
                 "both given");
    expect_error("{\"kind\":\"tcp\",\"leg\":\"other\",\"event\":\"rst\"}", "leg_raw");
    expect_error("{\"kind\":\"tcp\",\"leg\":\"client\",\"event\":2.5}", "key \"event\"");
    /* an escaped backslash before u0000 is just text */
    struct wsrr_record r;
    uint8_t *arena;
    const char *ok = "{\"kind\":\"note\",\"text\":\"a\\\\u0000\"}";
    CHECK_INT(wsrr_jsonl_parse_record(ok, strlen(ok), 0, &r, &arena, NULL, 0), 0);
    CHECK_MEM(r.u.note.text.p, r.u.note.text.n, "a\\u0000", 7);
    free(arena);
}

static void test_defaults(void)
{
    /* seq and ts may be left out; len follows the (edited) payload */
    const char *line = "{\"kind\":\"frame\",\"dir\":\"server\",\"opcode\":\"text\",\"payload\":"
                       "\"edited by hand\"}";
    struct wsrr_record r;
    uint8_t *arena;
    char err[256];
    CHECK_INT(wsrr_jsonl_parse_record(line, strlen(line), 4242, &r, &arena, err, sizeof(err)), 0);
    CHECK_U64(r.seq, 0);
    CHECK_U64(r.ts, 4242);
    CHECK_U64(r.u.frame.len, 14);
    CHECK_INT(r.u.frame.len_width, 7);
    CHECK(r.u.frame.fin);
    free(arena);
}

static void test_header(void)
{
    struct wsrr_capture_info info = {.major = 1,
                                     .minor = 0,
                                     .start_wall_ns = 1795000000123456789ull,
                                     .start_mono_ns = 99,
                                     .metadata = "{\"a\":[1,2.5,\"x\"]}",
                                     .metadata_len = 17};
    char *line = wsrr_jsonl_header(&info);
    REQUIRE(line);
    CHECK_MSG(strstr(line, "\"start\":\"2026-11-18T") != NULL, "%s", line);
    CHECK_MSG(strstr(line, ".123456789Z\"") != NULL, "%s", line);
    struct wsrr_jsonl_header h;
    char err[256];
    CHECK_INT(wsrr_jsonl_parse_header(line, strlen(line), &h, err, sizeof(err)), 0);
    CHECK_U64(h.start_wall_ns, info.start_wall_ns);
    CHECK_U64(h.start_mono_ns, 99);
    CHECK_STR(h.metadata, "{\"a\":[1,2.5,\"x\"]}");
    free(h.metadata);
    free(line);

    /* metadata keeps its own text: digits beyond a double, 1.0 stays 1.0 */
    info.metadata = "{ \"seed\": 9007199254740993, \"rate\": 1.0, \"s\": \"a b\" }";
    info.metadata_len = strlen(info.metadata);
    line = wsrr_jsonl_header(&info);
    CHECK_MSG(strstr(line, "\"meta\":{\"seed\":9007199254740993,\"rate\":1.0,\"s\":\"a b\"}}"),
              "%s", line);
    CHECK_INT(wsrr_jsonl_parse_header(line, strlen(line), &h, err, sizeof(err)), 0);
    CHECK_STR(h.metadata, "{\"seed\":9007199254740993,\"rate\":1.0,\"s\":\"a b\"}");
    free(h.metadata);
    free(line);
    /* an edited header (meta not last) still imports, printed again */
    const char *edited = "{\"meta\":{\"a\":1},\"wsrr\":\"capture\",\"version\":\"1.0\"}";
    CHECK_INT(wsrr_jsonl_parse_header(edited, strlen(edited), &h, err, sizeof(err)), 0);
    CHECK_STR(h.metadata, "{\"a\":1}");
    free(h.metadata);

    /* metadata that is not an object survives as text */
    info.metadata = "not json";
    info.metadata_len = 8;
    line = wsrr_jsonl_header(&info);
    CHECK_INT(wsrr_jsonl_parse_header(line, strlen(line), &h, err, sizeof(err)), 0);
    CHECK_STR(h.metadata, "not json");
    free(h.metadata);
    free(line);

    const char *bad[][2] = {
        {"{\"kind\":\"note\"}", "unknown key"},
        {"{\"wsrr\":\"capture\",\"version\":\"2.0\"}", "key \"version\""},
        {"{\"wsrr\":\"capture\",\"version\":\"1.0\",\"start\":\"yesterday\"}", "key \"start\""},
        {"{\"wsrr\":\"capture\",\"version\":\"1.0\",\"meta\":[]}", "key \"meta\""},
        {"{\"wsrr\":\"other\",\"version\":\"1.0\"}", "header object"},
        {"{\"wsrr\":\"capture\",\"version\":\"1.0junk\"}", "key \"version\""},
        {"{\"wsrr\":\"capture\",\"version\":\"1.-1\"}", "key \"version\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK(wsrr_jsonl_parse_header(bad[i][0], strlen(bad[i][0]), &h, err, sizeof(err)) ==
              -EINVAL);
        CHECK_MSG(strstr(err, bad[i][1]) != NULL, "%s -> %s", bad[i][0], err);
    }
}

int main(void)
{
    test_frames();
    test_other_kinds();
    test_errors();
    test_defaults();
    test_header();
    return check_finish("test_jsonl");
}
