/* test_tap.c — the connection recorder: sessions built with the encoder and
 * the deflater are fed in random splits, and the capture must hold exactly
 * the heads, the frames with unmasked payloads, the inflated messages and
 * the close summary. */
#include "check.h"
#include "wsrr/handshake.h"
#include "wsrr/tap.h"

#include <event2/buffer.h>
#include <unistd.h>

static char dir[] = "/tmp/wsrr-test-tap-XXXXXX";
static uint64_t rnd = 12345;

/* ---- what a session sends, and what the capture must then hold ---- */

struct expect {
    uint8_t kind;
    uint8_t dir, opcode;
    bool fin, masked, has_message, inflate_error, truncated;
    uint8_t rsv;
    uint32_t violations;
    uint64_t len;
    uint8_t *payload; /* unmasked */
    size_t payload_len;
    uint8_t *message;
    size_t message_len;
    /* close summary */
    uint8_t side, cflags;
    uint16_t code;
};

struct session {
    struct wsrr_tap *tap;
    struct wsrr_capture_writer *w;
    struct expect exp[256];
    int nexp;
    uint64_t ts;
    struct wsrr_pmd_stream *defl[2];
    struct wsrr_pmd_params pmd;
    bool deflate;
    bool whole; /* feed each send in one piece */
    int feed_rc;
};

static void feed_split(struct session *s, enum wsrr_dir d, const uint8_t *p, size_t n)
{
    /* random chunking, sometimes 1 byte at a time */
    bool bytewise = !s->whole && check_rand(&rnd) % 8 == 0;
    while (n) {
        size_t k = s->whole ? n : bytewise ? 1 : 1 + (size_t)(check_rand(&rnd) % (n < 64 ? n : 64));
        if (k > n)
            k = n;
        int rc = wsrr_tap_feed(s->tap, d, p, k, s->ts++);
        if (rc < 0)
            s->feed_rc = rc;
        p += k;
        n -= k;
    }
}

static uint8_t *dup_bytes(const void *p, size_t n)
{
    uint8_t *b = malloc(n ? n : 1);
    if (n)
        memcpy(b, p, n);
    return b;
}

/* Send one frame from `d` and expect it in the capture. */
static void send_frame(struct session *s, enum wsrr_dir d, uint8_t opcode, bool fin, uint8_t rsv,
                       const uint8_t *payload, size_t n, const uint8_t *msg, size_t msg_len)
{
    struct wsrr_frame f;
    wsrr_frame_init(&f, d, opcode, n);
    f.fin = fin;
    f.rsv = rsv;
    uint8_t *wire = malloc(n + WSRR_FRAME_MAX_HEADER);
    size_t len = wsrr_frame_encode(wire, n + WSRR_FRAME_MAX_HEADER, &f, payload, n);
    feed_split(s, d, wire, len);
    free(wire);
    struct expect *e = &s->exp[s->nexp++];
    *e = (struct expect){.kind = WSRR_REC_FRAME,
                         .dir = (uint8_t)d,
                         .opcode = opcode,
                         .fin = fin,
                         .masked = d == WSRR_DIR_C2S,
                         .rsv = rsv,
                         .len = n};
    e->payload = dup_bytes(payload, n);
    e->payload_len = n;
    if (msg) {
        e->has_message = true;
        e->message = dup_bytes(msg, msg_len);
        e->message_len = msg_len;
    }
}

/* A whole message, compressed when deflate was negotiated, split in
 * `frags` frames. */
static void send_message(struct session *s, enum wsrr_dir d, uint8_t opcode, const char *text,
                         int frags)
{
    size_t n = strlen(text);
    const uint8_t *body = (const uint8_t *)text;
    struct evbuffer *z = NULL;
    if (s->deflate) {
        z = evbuffer_new();
        REQUIRE(wsrr_pmd_deflate(s->defl[d], body, n, true, z) == 0);
        n = evbuffer_get_length(z);
        body = evbuffer_pullup(z, -1);
    }
    size_t off = 0;
    for (int i = 0; i < frags; i++) {
        size_t k = i == frags - 1 ? n - off : n / (size_t)frags;
        bool last = i == frags - 1;
        send_frame(s, d, i == 0 ? opcode : WSRR_OP_CONT, last,
                   (s->deflate && i == 0) ? WSRR_RSV1 : 0, body + off, k,
                   (s->deflate && last) ? (const uint8_t *)text : NULL, strlen(text));
        if (i == 0 && frags > 2) /* a ping between fragments keeps its place */
            send_frame(s, d, WSRR_OP_PING, true, 0, (const uint8_t *)"ka", 2, NULL, 0);
        off += k;
    }
    if (z)
        evbuffer_free(z);
}

static void send_close(struct session *s, enum wsrr_dir d, uint16_t code, const char *reason)
{
    uint8_t p[WSRR_FRAME_MAX_CONTROL];
    size_t n = wsrr_close_payload(p, code, reason, strlen(reason));
    send_frame(s, d, WSRR_OP_CLOSE, true, 0, p, n, NULL, 0);
}

static void handshake(struct session *s, const char *extensions_offer,
                      const char *extensions_answer, int status, const uint8_t *early,
                      size_t early_len)
{
    char key[25];
    wsrr_handshake_make_key(key);
    struct evbuffer *b = evbuffer_new();
    struct wsrr_ws_request_spec spec = {.target = "/agent?run=7",
                                        .host = "127.0.0.1:9000",
                                        .key = key,
                                        .extensions = extensions_offer};
    REQUIRE(wsrr_handshake_build_request(b, &spec) == 0);
    if (early)
        evbuffer_add(b, early, early_len); /* frames sent right behind the request */
    size_t n = evbuffer_get_length(b);
    feed_split(s, WSRR_DIR_C2S, evbuffer_pullup(b, -1), n);
    evbuffer_free(b);
    s->exp[s->nexp++] = (struct expect){.kind = WSRR_REC_REQUEST};

    b = evbuffer_new();
    if (status == 101)
        REQUIRE(wsrr_handshake_build_response(b, key, strlen(key), NULL, extensions_answer, NULL) ==
                0);
    else
        REQUIRE(wsrr_http_build_error(b, status, "go away") == 0);
    n = evbuffer_get_length(b);
    feed_split(s, WSRR_DIR_S2C, evbuffer_pullup(b, -1), n);
    evbuffer_free(b);
    s->exp[s->nexp++] = (struct expect){.kind = WSRR_REC_RESPONSE};
}

static void session_start(struct session *s, const char *name, const struct wsrr_tap_opts *o)
{
    memset(s, 0, sizeof(*s));
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/%s.wsrr", dir, name);
    unlink(path);
    s->w = wsrr_capture_writer_open(path, NULL, err, sizeof(err));
    REQUIRE(s->w);
    s->tap = wsrr_tap_new(s->w, 1, o);
    REQUIRE(s->tap);
}

static void enable_deflate(struct session *s, const char *answer)
{
    REQUIRE(wsrr_pmd_from_response(answer, strlen(answer), &s->pmd, NULL, 0) == 1);
    s->deflate = true;
    s->defl[WSRR_DIR_C2S] = wsrr_pmd_deflater_new(&s->pmd, WSRR_DIR_C2S, -1);
    s->defl[WSRR_DIR_S2C] = wsrr_pmd_deflater_new(&s->pmd, WSRR_DIR_S2C, -1);
    REQUIRE(s->defl[0] && s->defl[1]);
}

static void expect_close(struct session *s, uint8_t side, uint8_t cflags, uint16_t code)
{
    s->exp[s->nexp++] =
        (struct expect){.kind = WSRR_REC_CLOSE, .side = side, .cflags = cflags, .code = code};
}

/* Close the capture and compare it with the expectations. */
static void session_check(struct session *s, const char *name)
{
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/%s.wsrr", dir, name);
    wsrr_tap_free(s->tap);
    REQUIRE(wsrr_capture_writer_close(s->w, err, sizeof(err)) == 0);
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(r);
    struct wsrr_record rec;
    int i = 0;
    while (wsrr_capture_reader_next(r, &rec) == 1) {
        if (rec.kind == WSRR_REC_NOTE) {
            printf("%s: note: %.*s\n", name, (int)rec.u.note.text.n, rec.u.note.text.p);
            continue;
        }
        if (i >= s->nexp) {
            CHECK_MSG(false, "%s: unexpected extra record seq %llu kind %d", name,
                      (unsigned long long)rec.seq, rec.kind);
            break;
        }
        struct expect *e = &s->exp[i++];
        CHECK_MSG(rec.kind == e->kind, "%s: record %d kind %d, expected %d", name, i, rec.kind,
                  e->kind);
        if (rec.kind != e->kind)
            break;
        if (rec.kind == WSRR_REC_FRAME) {
            const struct wsrr_rec_frame *f = &rec.u.frame;
            CHECK_INT(f->dir, e->dir);
            CHECK_INT(f->opcode, e->opcode);
            CHECK_INT(f->fin, e->fin);
            CHECK_INT(f->rsv, e->rsv);
            CHECK_INT(!!(f->fflags & WSRR_FF_MASKED), e->masked);
            CHECK_U64(f->len, e->len);
            CHECK_MSG(f->violations == e->violations, "%s: record %d violations 0x%x, want 0x%x",
                      name, i, f->violations, e->violations);
            CHECK_INT(!!(rec.flags & WSRR_RF_TRUNCATED), e->truncated);
            CHECK_MEM(f->payload.p, f->payload.n, e->payload, e->payload_len);
            CHECK_INT(!!(f->fflags & WSRR_FF_MESSAGE), e->has_message);
            CHECK_INT(!!(f->fflags & WSRR_FF_INFLATE_ERROR), e->inflate_error);
            if (e->has_message)
                CHECK_MEM(f->message.p, f->message.n, e->message, e->message_len);
        } else if (rec.kind == WSRR_REC_CLOSE) {
            CHECK_INT(rec.u.close.side, e->side);
            CHECK_INT(rec.u.close.cflags, e->cflags);
            CHECK_INT(rec.u.close.code, e->code);
        }
        CHECK_INT(rec.conn, 1);
    }
    CHECK_MSG(i == s->nexp, "%s: %d of %d expected records seen", name, i, s->nexp);
    wsrr_capture_reader_close(r);
    for (int k = 0; k < s->nexp; k++) {
        free(s->exp[k].payload);
        free(s->exp[k].message);
    }
    wsrr_pmd_free(s->defl[0]);
    wsrr_pmd_free(s->defl[1]);
}

static void test_plain(void)
{
    struct session s;
    session_start(&s, "plain", NULL);
    handshake(&s, NULL, NULL, 101, NULL, 0);
    send_message(&s, WSRR_DIR_C2S, WSRR_OP_TEXT, "{\"type\":\"start\",\"task\":\"sum\"}", 1);
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "{\"type\":\"agent_started\"}", 1);
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "{\"type\":\"tool_executing\",\"tool\":\"calc\"}",
                 3);
    send_message(&s, WSRR_DIR_C2S, WSRR_OP_BINARY, "\x01\x02\x03 binary", 2);
    send_close(&s, WSRR_DIR_C2S, 1000, "done");
    send_close(&s, WSRR_DIR_S2C, 1000, "done");
    CHECK_INT(wsrr_tap_end(s.tap, s.ts), 0);
    expect_close(&s, WSRR_SIDE_CLIENT, WSRR_CF_CLEAN | WSRR_CF_HAS_CODE, 1000);
    const struct wsrr_tap_state *st = wsrr_tap_state(s.tap);
    CHECK_INT(st->phase, WSRR_TAP_WEBSOCKET);
    CHECK(!st->deflate);
    CHECK_U64(st->frames[WSRR_DIR_S2C], 6); /* 1 + 3 + ping + close */
    CHECK_INT(s.feed_rc, 0);
    session_check(&s, "plain");
}

static void test_deflate(bool takeover)
{
    const char *answer = takeover ? "permessage-deflate"
                                  : "permessage-deflate; server_no_context_takeover; "
                                    "client_no_context_takeover";
    struct session s;
    session_start(&s, takeover ? "deflate" : "deflate-nct", NULL);
    handshake(&s, "permessage-deflate; client_max_window_bits", answer, 101, NULL, 0);
    enable_deflate(&s, answer);
    for (int i = 0; i < 6; i++) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "{\"type\":\"tool_executing\",\"step\":%d,\"detail\":\"the same words again "
                 "and again and again\"}",
                 i);
        send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, msg, 1 + i % 3);
        send_message(&s, WSRR_DIR_C2S, WSRR_OP_TEXT, msg, 1 + (i + 1) % 2);
    }
    send_close(&s, WSRR_DIR_S2C, 1011, "Internal error");
    send_close(&s, WSRR_DIR_C2S, 1011, "Internal error");
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_SERVER, WSRR_CF_CLEAN | WSRR_CF_HAS_CODE, 1011);
    CHECK(wsrr_tap_state(s.tap)->deflate);
    CHECK_INT(s.feed_rc, 0);
    session_check(&s, takeover ? "deflate" : "deflate-nct");
}

/* The client's first frame travels in the same segment as its request,
 * before the 101 is known: it is held, then parsed under the negotiated
 * extension. */
static void test_early_frame(void)
{
    struct session s;
    session_start(&s, "early", NULL);
    struct wsrr_frame f;
    wsrr_frame_init(&f, WSRR_DIR_C2S, WSRR_OP_TEXT, 5);
    uint8_t wire[32];
    size_t n = wsrr_frame_encode(wire, sizeof(wire), &f, (const uint8_t *)"early", 5);
    handshake(&s, NULL, NULL, 101, wire, n);
    /* the frame record comes after the response: it could only be parsed then */
    s.exp[s.nexp++] = (struct expect){.kind = WSRR_REC_FRAME,
                                      .dir = WSRR_DIR_C2S,
                                      .opcode = WSRR_OP_TEXT,
                                      .fin = true,
                                      .masked = true,
                                      .len = 5,
                                      .payload = dup_bytes("early", 5),
                                      .payload_len = 5};
    /* no close frames at all: the transport just ended */
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    session_check(&s, "early");
}

static void test_rejected(void)
{
    struct session s;
    session_start(&s, "rejected", NULL);
    handshake(&s, NULL, NULL, 403, NULL, 0);
    s.exp[s.nexp++] = (struct expect){.kind = WSRR_REC_BODY}; /* the 403's body */
    /* bytes after a rejection are not frames */
    feed_split(&s, WSRR_DIR_S2C, (const uint8_t *)"\x81\x02hi", 4);
    CHECK_INT(wsrr_tap_state(s.tap)->phase, WSRR_TAP_HTTP);
    CHECK_INT(wsrr_tap_state(s.tap)->status, 403);
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    session_check(&s, "rejected");
}

/* Invalid traffic is recorded with its flags, not refused. */
static void test_violations(void)
{
    struct session s;
    session_start(&s, "violations", NULL);
    handshake(&s, NULL, NULL, 101, NULL, 0);
    /* an unmasked client frame, a masked server frame, a reserved opcode */
    struct wsrr_frame f;
    uint8_t wire[64];
    wsrr_frame_init(&f, WSRR_DIR_S2C, WSRR_OP_TEXT, 2);
    size_t n = wsrr_frame_encode(wire, sizeof(wire), &f, (const uint8_t *)"hi", 2);
    feed_split(&s, WSRR_DIR_C2S, wire, n);
    s.exp[s.nexp++] = (struct expect){.kind = WSRR_REC_FRAME,
                                      .dir = WSRR_DIR_C2S,
                                      .opcode = WSRR_OP_TEXT,
                                      .fin = true,
                                      .len = 2,
                                      .violations = WSRR_V_MASK_MISSING,
                                      .payload = dup_bytes("hi", 2),
                                      .payload_len = 2};
    wsrr_frame_init(&f, WSRR_DIR_C2S, 0x3, 2);
    n = wsrr_frame_encode(wire, sizeof(wire), &f, (const uint8_t *)"hi", 2);
    feed_split(&s, WSRR_DIR_S2C, wire, n);
    s.exp[s.nexp++] = (struct expect){.kind = WSRR_REC_FRAME,
                                      .dir = WSRR_DIR_S2C,
                                      .opcode = 0x3,
                                      .fin = true,
                                      .masked = true,
                                      .len = 2,
                                      .violations = WSRR_V_MASK_UNEXPECTED | WSRR_V_RESERVED_OPCODE,
                                      .payload = dup_bytes("hi", 2),
                                      .payload_len = 2};
    /* invalid UTF-8 in a text message */
    send_frame(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, true, 0, (const uint8_t *)"\xc0\xaf", 2, NULL, 0);
    s.exp[s.nexp - 1].violations = WSRR_V_BAD_UTF8;
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    CHECK_INT(s.feed_rc, 0);
    session_check(&s, "violations");
}

/* Payloads over the recording cap are kept truncated; a frame over the
 * parser's cap stops the direction and is reported. */
static void test_caps(void)
{
    struct wsrr_tap_opts o = {.max_recorded_payload = 100,
                              .limits = {.max_frame = 1000, .max_message = 1000}};
    struct session s;
    session_start(&s, "caps", &o);
    handshake(&s, NULL, NULL, 101, NULL, 0);
    uint8_t big[500];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)i;
    send_frame(&s, WSRR_DIR_S2C, WSRR_OP_BINARY, true, 0, big, sizeof(big), NULL, 0);
    struct expect *e = &s.exp[s.nexp - 1];
    e->truncated = true;
    e->payload_len = 100;
    CHECK_INT(s.feed_rc, 0);
    /* 2000 bytes declared: over max_frame */
    uint8_t hdr[4] = {0x82, 126, 0x07, 0xd0};
    feed_split(&s, WSRR_DIR_S2C, hdr, sizeof(hdr));
    CHECK_INT(s.feed_rc, -EMSGSIZE);
    CHECK(wsrr_tap_state(s.tap)->broken[WSRR_DIR_S2C]);
    s.exp[s.nexp++] = (struct expect){.kind = WSRR_REC_FRAME,
                                      .dir = WSRR_DIR_S2C,
                                      .opcode = WSRR_OP_BINARY,
                                      .fin = true,
                                      .len = 2000,
                                      .truncated = true,
                                      .violations = WSRR_V_FRAME_TOO_BIG};
    /* the other direction still works */
    s.feed_rc = 0;
    send_message(&s, WSRR_DIR_C2S, WSRR_OP_TEXT, "still here", 1);
    CHECK_INT(s.feed_rc, 0);
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    session_check(&s, "caps");
}

/* A corrupt compressed message is flagged, and the next one inflates. */
static void test_inflate_error(void)
{
    const char *answer = "permessage-deflate; server_no_context_takeover";
    struct session s;
    session_start(&s, "inflate-error", NULL);
    handshake(&s, "permessage-deflate", answer, 101, NULL, 0);
    enable_deflate(&s, answer);
    send_frame(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, true, WSRR_RSV1, (const uint8_t *)"\xff\xff\xff", 3,
               NULL, 0);
    s.exp[s.nexp - 1].inflate_error = true;
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "after the error", 1);
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    session_check(&s, "inflate-error");
}

/* A corrupt first fragment fails its message; the next message (no context
 * takeover) inflates from a fresh state. */
static void test_corrupt_fragment(void)
{
    const char *answer = "permessage-deflate; server_no_context_takeover";
    struct session s;
    session_start(&s, "corrupt-fragment", NULL);
    handshake(&s, "permessage-deflate", answer, 101, NULL, 0);
    enable_deflate(&s, answer);
    send_frame(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, false, WSRR_RSV1,
               (const uint8_t *)"\xff\xff\xff\xff", 4, NULL, 0);
    send_frame(&s, WSRR_DIR_S2C, WSRR_OP_CONT, true, 0, (const uint8_t *)"xx", 2, NULL, 0);
    s.exp[s.nexp - 1].inflate_error = true;
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "a valid message after the corrupt one", 1);
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "and another one", 2);
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    session_check(&s, "corrupt-fragment");
}

/* A compressed message cut by the recording cap cannot be inflated. With
 * context takeover the messages after it cannot be either (they refer to
 * it): they are flagged, never shown as wrong text; without takeover the
 * next message inflates. Frames fed whole are capped like split ones. */
static void test_truncated_compressed(bool takeover, bool whole)
{
    const char *answer = takeover ? "permessage-deflate"
                                  : "permessage-deflate; "
                                    "server_no_context_takeover";
    char name[64];
    snprintf(name, sizeof(name), "truncated-%s-%s", takeover ? "takeover" : "nct",
             whole ? "whole" : "split");
    struct wsrr_tap_opts o = {.max_recorded_payload = 64};
    struct session s;
    session_start(&s, name, &o);
    s.whole = whole;
    handshake(&s, "permessage-deflate", answer, 101, NULL, 0);
    enable_deflate(&s, answer);
    char noise[301];
    uint64_t r2 = 99;
    for (int i = 0; i < 300; i++)
        noise[i] = (char)('a' + check_rand(&r2) % 26);
    noise[300] = '\0';
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, noise, 1); /* compresses to > 64 bytes */
    struct expect *e = &s.exp[s.nexp - 1];
    REQUIRE(e->payload_len > 64);
    e->payload_len = 64;
    e->truncated = true;
    e->has_message = false;
    e->inflate_error = true;
    /* short enough to be kept whole; with takeover it may refer to the lost
     * message, so it cannot be trusted */
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "the next message", 1);
    if (takeover) {
        e = &s.exp[s.nexp - 1];
        e->has_message = false;
        e->inflate_error = true;
    }
    uint8_t big[500];
    memset(big, 'z', sizeof(big));
    send_frame(&s, WSRR_DIR_C2S, WSRR_OP_BINARY, true, 0, big, sizeof(big), NULL, 0);
    s.exp[s.nexp - 1].truncated = true;
    s.exp[s.nexp - 1].payload_len = 64;
    wsrr_tap_end(s.tap, s.ts);
    expect_close(&s, WSRR_SIDE_NONE, 0, 0);
    session_check(&s, name);
}

static bool span_has(struct wsrr_span s, const char *needle)
{
    return s.n && memmem(s.p, s.n, needle, strlen(needle)) != NULL;
}

/* With a redactor, no secret reaches the capture: not in the request head,
 * not in a masked text frame, not in a compressed message nor its
 * compressed bytes. Binary frames and innocent text stay as they were. */
static void test_redaction(void)
{
    const char *answer = "permessage-deflate";
    struct wsrr_redactor *red = wsrr_redactor_new();
    struct wsrr_tap_opts o = {.redact = red};
    struct session s;
    session_start(&s, "redaction", &o);
    char key[25];
    wsrr_handshake_make_key(key);
    struct evbuffer *b = evbuffer_new();
    struct wsrr_ws_request_spec spec = {.target = "/ws?token=QUERYSECRET",
                                        .host = "h",
                                        .key = key,
                                        .extensions = answer,
                                        .extra = "Authorization: Bearer HEADERSECRET\r\n"};
    REQUIRE(wsrr_handshake_build_request(b, &spec) == 0);
    size_t n = evbuffer_get_length(b);
    feed_split(&s, WSRR_DIR_C2S, evbuffer_pullup(b, -1), n);
    evbuffer_drain(b, n);
    REQUIRE(wsrr_handshake_build_response(b, key, strlen(key), NULL, answer, NULL) == 0);
    n = evbuffer_get_length(b);
    feed_split(&s, WSRR_DIR_S2C, evbuffer_pullup(b, -1), n);
    evbuffer_free(b);
    enable_deflate(&s, answer);
    s.deflate = false; /* this one uncompressed, masked, fed whole */
    s.whole = true;
    send_frame(&s, WSRR_DIR_C2S, WSRR_OP_TEXT, true, 0,
               (const uint8_t *)"{\"password\":\"FRAMESECRET\"}", 26, NULL, 0);
    s.whole = false;
    s.deflate = true;
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT,
                 "{\"type\":\"login\",\"access_token\":\"DEFLATESECRET\"}", 1);
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT, "{\"type\":\"agent_started\"}", 1);
    /* a compressed message of two frames: its fragments are recorded before
     * the message is known, so their compressed bytes are not kept */
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_TEXT,
                 "{\"type\":\"refresh\",\"refresh_token\":\"DEFLATESECRET\"}", 2);
    send_message(&s, WSRR_DIR_S2C, WSRR_OP_BINARY, "binary token=not-touched", 1);
    wsrr_tap_end(s.tap, s.ts);
    wsrr_tap_free(s.tap);
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/redaction.wsrr", dir);
    REQUIRE(wsrr_capture_writer_close(s.w, err, sizeof(err)) == 0);
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(r);
    struct wsrr_record rec;
    int redacted_records = 0, plain_text = 0, binary_ok = 0, fragments_dropped = 0;
    const char *secrets[] = {"QUERYSECRET", "HEADERSECRET", "FRAMESECRET", "DEFLATESECRET"};
    while (wsrr_capture_reader_next(r, &rec) == 1) {
        struct wsrr_span parts[3] = {{0}};
        if (rec.kind == WSRR_REC_REQUEST || rec.kind == WSRR_REC_RESPONSE)
            parts[0] = rec.u.http.head;
        if (rec.kind == WSRR_REC_FRAME) {
            parts[0] = rec.u.frame.payload;
            parts[1] = rec.u.frame.message;
        }
        for (int i = 0; i < 3; i++)
            for (size_t k = 0; k < 4; k++)
                CHECK_MSG(!span_has(parts[i], secrets[k]), "%s leaked into seq %llu", secrets[k],
                          (unsigned long long)rec.seq);
        if (rec.flags & WSRR_RF_REDACTED) {
            redacted_records++;
            CHECK(span_has(parts[0], "<redacted:") || span_has(parts[1], "<redacted:") ||
                  (rec.flags & WSRR_RF_TRUNCATED));
        }
        if (rec.kind == WSRR_REC_FRAME && span_has(rec.u.frame.message, "agent_started") &&
            rec.u.frame.payload.n > 0 && !(rec.flags & WSRR_RF_REDACTED))
            plain_text++; /* nothing to hide: compressed bytes kept, no flag */
        if (rec.kind == WSRR_REC_FRAME && rec.u.frame.dir == WSRR_DIR_S2C &&
            (rec.u.frame.opcode == WSRR_OP_CONT ||
             (rec.u.frame.opcode == WSRR_OP_TEXT && !rec.u.frame.fin)) &&
            rec.u.frame.payload.n == 0 && (rec.flags & WSRR_RF_TRUNCATED))
            fragments_dropped++;
        if (rec.kind == WSRR_REC_FRAME && span_has(rec.u.frame.message, "token=not-touched") &&
            !(rec.flags & WSRR_RF_REDACTED) && rec.u.frame.payload.n > 0)
            binary_ok++;
    }
    /* the request, the masked frame, the login message, the 2 fragments */
    CHECK_INT(redacted_records, 5);
    CHECK_INT(plain_text, 1);
    CHECK_INT(fragments_dropped, 2);
    CHECK_INT(binary_ok, 1);
    wsrr_capture_reader_close(r);
    for (int k = 0; k < s.nexp; k++) {
        free(s.exp[k].payload);
        free(s.exp[k].message);
    }
    wsrr_pmd_free(s.defl[0]);
    wsrr_pmd_free(s.defl[1]);
    wsrr_redactor_free(red);
}

/* Plain HTTP on a keep-alive connection: requests with and without bodies
 * (length, chunked), pipelined, a HEAD whose response carries a length but
 * no body, a 204, then an upgrade on the same connection and frames. */
static void test_http_exchanges(void)
{
    struct session s;
    session_start(&s, "http", NULL);
    const char *c2s[] = {
        "GET /health HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\n\r\n{\"query\":\"x\"}"
        "HEAD /api HTTP/1.1\r\nHost: h\r\n\r\n", /* pipelined behind the POST */
        "PUT /chunks HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
        "DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n",
    };
    const char *s2c[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        /* a chunked 201, then the answer to HEAD (no body follows) */
        ("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nmade!\r\n0\r\n\r\n"
         "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nchunked",
        "HTTP/1.1 204 No Content\r\n\r\n",
    };
    for (int i = 0; i < 4; i++) {
        feed_split(&s, WSRR_DIR_C2S, (const uint8_t *)c2s[i], strlen(c2s[i]));
        feed_split(&s, WSRR_DIR_S2C, (const uint8_t *)s2c[i], strlen(s2c[i]));
    }
    CHECK_INT(wsrr_tap_state(s.tap)->phase, WSRR_TAP_HTTP);
    /* then an upgrade on the same connection, and frames */
    handshake(&s, NULL, NULL, 101, NULL, 0);
    CHECK_INT(wsrr_tap_state(s.tap)->phase, WSRR_TAP_WEBSOCKET);
    send_message(&s, WSRR_DIR_C2S, WSRR_OP_TEXT, "after the upgrade", 1);
    wsrr_tap_end(s.tap, s.ts);
    wsrr_tap_free(s.tap);
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/http.wsrr", dir);
    REQUIRE(wsrr_capture_writer_close(s.w, err, sizeof(err)) == 0);
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(r);
    struct wsrr_record rec;
    char kinds[64] = "";
    int k = 0;
    const char *bodies[] = {"ok", "{\"query\":\"x\"}", "made!",
                            ("abcd"
                             "efg"),
                            "chunked"};
    int nb = 0, frames = 0;
    while (wsrr_capture_reader_next(r, &rec) == 1 && k < 60) {
        if (rec.kind == WSRR_REC_NOTE) {
            printf("http: note: %.*s\n", (int)rec.u.note.text.n, rec.u.note.text.p);
            kinds[k++] = 'N';
            continue;
        }
        kinds[k++] = rec.kind == WSRR_REC_REQUEST    ? 'Q'
                     : rec.kind == WSRR_REC_RESPONSE ? 'R'
                     : rec.kind == WSRR_REC_BODY     ? 'B'
                     : rec.kind == WSRR_REC_FRAME    ? 'F'
                     : rec.kind == WSRR_REC_CLOSE    ? 'C'
                                                     : '?';
        if (rec.kind == WSRR_REC_BODY && nb < 5) {
            CHECK_MEM(rec.u.body.data.p, rec.u.body.data.n, bodies[nb], strlen(bodies[nb]));
            CHECK(rec.u.body.bflags & WSRR_BF_COMPLETE);
            nb++;
        }
        if (rec.kind == WSRR_REC_FRAME)
            frames++;
    }
    kinds[k] = '\0';
    /* GET/200+body, POST+body, HEAD, 201+chunked body, 200 (HEAD: no body),
     * PUT+chunked body, 200+body, DELETE, 204, upgrade, 101, a frame, close */
    CHECK_STR(kinds, "QRBQBQRBRQBRBQRQRFC");
    CHECK_INT(nb, 5);
    CHECK_INT(frames, 1);
    wsrr_capture_reader_close(r);
    for (int i = 0; i < s.nexp; i++) {
        free(s.exp[i].payload);
        free(s.exp[i].message);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1)
        rnd = strtoull(argv[1], NULL, 0);
    printf("seed %llu\n", (unsigned long long)rnd);
    REQUIRE(mkdtemp(dir));
    for (int round = 0; round < 10; round++) {
        test_plain();
        test_deflate(true);
        test_deflate(false);
        test_early_frame();
        test_rejected();
        test_violations();
        test_caps();
        test_inflate_error();
        test_corrupt_fragment();
        test_truncated_compressed(true, false);
        test_truncated_compressed(true, true);
        test_truncated_compressed(false, false);
        test_truncated_compressed(false, true);
        test_redaction();
        test_http_exchanges();
    }
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_finish("test_tap");
}
