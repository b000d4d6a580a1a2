/* test_mutate.c — fuzz's mutations (replay/mutate.c): a seed gives the same
 * mutations again; a mutated session (and a chain of them) is still one
 * replay can walk; each mutation does what its log entry says; and the
 * small helpers (family names, message types, the generator). */
#include "check.h"
#include "mutate.h"
#include "session.h"
#include "wsrr/frame.h"

#include <cjson/cJSON.h>
#include <stdbool.h>

/* ---- a session built in memory ---- */

static const char head[] = "GET /v1/agent HTTP/1.1\r\n"
                           "Host: x\r\n"
                           "Upgrade: websocket\r\n"
                           "Connection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n"
                           "\r\n";

static const char response[] = "HTTP/1.1 101 Switching Protocols\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                               "\r\n";

static char *xstrdup(const char *p)
{
    char *d = strdup(p);
    REQUIRE(d);
    return d;
}

static void add_conn(struct rp_session *s, uint32_t id, bool with_response)
{
    struct rp_conn *c = realloc(s->conns, (s->nconns + 1) * sizeof(*c));
    REQUIRE(c);
    s->conns = c;
    c[s->nconns] = (struct rp_conn){
        .id = id,
        .head = xstrdup(head),
        .head_len = strlen(head),
        .response = with_response ? xstrdup(response) : NULL,
    };
    s->nconns++;
}

/* an empty session of n connections (ids 1..n, with responses) */
static struct rp_session *new_session(uint32_t n)
{
    struct rp_session *s = calloc(1, sizeof(*s));
    REQUIRE(s);
    s->path = xstrdup("memory.wsrr");
    for (uint32_t i = 1; i <= n; i++)
        add_conn(s, i, true);
    return s;
}

/* a step with a unique seq (its position + 1), the data copied */
static struct rp_step *add_step(struct rp_session *s, enum rp_kind kind, uint32_t conn,
                                uint8_t opcode, const void *p, size_t n)
{
    struct rp_step *st = realloc(s->steps, (s->nsteps + 1) * sizeof(*st));
    REQUIRE(st);
    s->steps = st;
    st = &st[s->nsteps++];
    *st = (struct rp_step){.kind = kind,
                           .conn = conn,
                           .seq = s->nsteps,
                           .ts = 1000 * (uint64_t)s->nsteps,
                           .opcode = opcode,
                           .fin = kind == RP_SEND};
    if (n) {
        REQUIRE((st->data = malloc(n)));
        memcpy(st->data, p, n);
        st->len = n;
    }
    return st;
}

static void step_open(struct rp_session *s, uint32_t c)
{
    add_step(s, RP_OPEN, c, 0, NULL, 0);
    add_step(s, RP_UPGRADED, c, 0, NULL, 0)->code = 101;
}

static void send_text(struct rp_session *s, uint32_t c, const char *t)
{
    add_step(s, RP_SEND, c, WSRR_OP_TEXT, t, strlen(t));
}

static void message_text(struct rp_session *s, uint32_t c, const char *t)
{
    add_step(s, RP_MESSAGE, c, WSRR_OP_TEXT, t, strlen(t));
}

#define RUN_ALICE                                                                                  \
    "{\"type\":\"run\",\"user\":\"alice\",\"run\":\"r1\",\"n\":5,\"tags\":[\"a\",\"b\"],"          \
    "\"meta\":{\"x\":true}}"

/* Three connections (ids 1, 2, 3) of an agent protocol: runs, a tool
 * result, a binary exchange, a ping, a close handshake, a hang-up, a
 * connection left open. */
static struct rp_session *base_session(void)
{
    struct rp_session *s = new_session(2);
    add_conn(s, 3, false);
    s->conns[0].rec = (struct rp_outcome){.end = RP_END_CLOSED, .by_server = true, .code = 1000};
    s->conns[1].rec = (struct rp_outcome){.end = RP_END_RESET};

    static const uint8_t bin[] = {0x00, 0x01, 0x02, 0xfe, 0xff, 0x80, 0x7f};
    static const uint8_t bin_reply[] = {0xff, 0x00};

    step_open(s, 0);
    send_text(s, 0, RUN_ALICE);
    message_text(s, 0, "{\"type\":\"agent_started\",\"run\":\"r1\"}");
    step_open(s, 1);
    send_text(s, 1,
              "{\"type\":\"run\",\"user\":\"bob\",\"run\":\"r2\",\"n\":1,\"tags\":[],"
              "\"meta\":{\"x\":false}}");
    message_text(s, 1, "{\"type\":\"agent_started\",\"run\":\"r2\"}");
    send_text(s, 0, "{\"type\":\"tool_result\",\"run\":\"r1\",\"step\":1,\"output\":\"ok\"}");
    message_text(s, 0, "{\"type\":\"tool_executing\",\"step\":2}");
    message_text(s, 0, "{\"type\":\"done\",\"run\":\"r1\"}");
    step_open(s, 2);
    add_step(s, RP_SEND, 2, WSRR_OP_BINARY, bin, sizeof(bin));
    add_step(s, RP_MESSAGE, 2, WSRR_OP_BINARY, bin_reply, sizeof(bin_reply));
    send_text(s, 1, "hello");
    add_step(s, RP_SEND, 0, WSRR_OP_PING, "hb", 2);
    add_step(s, RP_SEND, 0, WSRR_OP_CLOSE, "done", 4)->code = 1000;
    add_step(s, RP_CLOSE, 0, 0, NULL, 0)->code = 1000;
    add_step(s, RP_END, 0, 0, NULL, 0);
    send_text(s, 1, "[1,2,{\"type\":\"x\"}]");
    message_text(s, 1, "{\"type\":\"error\",\"code\":500}");
    add_step(s, RP_HANGUP, 1, 0, NULL, 0);
    struct rp_step *end = add_step(s, RP_END, 1, 0, NULL, 0);
    end->rst = true;
    end->failure = true;
    rp_session_renumber(s);
    return s;
}

static struct rp_session *clone_of(const struct rp_session *s)
{
    struct rp_session *c = rp_session_clone(s);
    REQUIRE(c);
    return c;
}

/* ---- comparisons and invariants ---- */

static bool steps_equal(const struct rp_step *a, const struct rp_step *b)
{
    return a->kind == b->kind && a->conn == b->conn && a->seq == b->seq && a->opcode == b->opcode &&
           a->fin == b->fin && a->code == b->code && a->rst == b->rst && a->nth == b->nth &&
           a->rsv == b->rsv && a->len_width == b->len_width && a->unmasked == b->unmasked &&
           a->pause_us == b->pause_us && a->invalid == b->invalid && a->burst == b->burst &&
           a->len == b->len && (!a->len || memcmp(a->data, b->data, a->len) == 0);
}

static bool streq_null(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* "" when a and b are the same session, else what differs first */
static void session_diff(const struct rp_session *a, const struct rp_session *b, char *why,
                         size_t cap)
{
    why[0] = '\0';
    if (a->nconns != b->nconns || a->nsteps != b->nsteps) {
        snprintf(why, cap, "%zu/%zu connections, %zu/%zu steps", a->nconns, b->nconns, a->nsteps,
                 b->nsteps);
        return;
    }
    for (size_t i = 0; i < a->nconns; i++) {
        const struct rp_conn *x = &a->conns[i], *y = &b->conns[i];
        if (x->id != y->id || x->nmessages != y->nmessages || !streq_null(x->head, y->head) ||
            !streq_null(x->response, y->response) || x->rec.end != y->rec.end) {
            snprintf(why, cap, "connection %zu", i);
            return;
        }
    }
    for (size_t i = 0; i < a->nsteps; i++)
        if (!steps_equal(&a->steps[i], &b->steps[i])) {
            snprintf(why, cap, "step %zu", i);
            return;
        }
}

static bool is_client_kind(enum rp_kind k)
{
    return k == RP_OPEN || k == RP_SEND || k == RP_HANGUP;
}

/* What replay relies on in a session: unique connection ids, steps on
 * existing connections, data behind every length, one open per connection
 * used and no client step of it before that open, server messages numbered
 * 1.. per connection. False with the first thing broken in why. */
static bool session_ok(const struct rp_session *s, char *why, size_t cap)
{
#define BROKEN(...)                                                                                \
    do {                                                                                           \
        snprintf(why, cap, __VA_ARGS__);                                                           \
        ok = false;                                                                                \
        goto out;                                                                                  \
    } while (0)
    bool ok = true;
    size_t nc = s->nconns;
    size_t *opens = calloc(nc ? nc : 1, sizeof(*opens));
    uint32_t *msgs = calloc(nc ? nc : 1, sizeof(*msgs));
    REQUIRE(opens && msgs);
    why[0] = '\0';
    for (size_t i = 0; i < nc; i++)
        for (size_t j = i + 1; j < nc; j++)
            if (s->conns[i].id == s->conns[j].id)
                BROKEN("connections %zu and %zu have the same id %u", i, j, s->conns[i].id);
    for (size_t i = 0; i < s->nsteps; i++) {
        const struct rp_step *st = &s->steps[i];
        if (st->kind > RP_END)
            BROKEN("step %zu: kind %d", i, (int)st->kind);
        if (st->conn >= nc)
            BROKEN("step %zu: connection %u of %zu", i, st->conn, nc);
        if (st->len && !st->data)
            BROKEN("step %zu: %zu bytes of no data", i, st->len);
        if (st->kind == RP_OPEN)
            opens[st->conn]++;
        else if (is_client_kind(st->kind) && !opens[st->conn])
            BROKEN("step %zu (kind %d, seq %llu): connection %u (id %u) before its open", i,
                   (int)st->kind, (unsigned long long)st->seq, st->conn, s->conns[st->conn].id);
        if (st->kind == RP_MESSAGE && st->nth != ++msgs[st->conn])
            BROKEN("step %zu: message %u of connection %u numbered %u", i, msgs[st->conn], st->conn,
                   st->nth);
    }
    for (size_t c = 0; c < nc; c++) {
        bool has_steps = false;
        for (size_t i = 0; i < s->nsteps && !has_steps; i++)
            has_steps = s->steps[i].conn == c;
        if (has_steps && opens[c] != 1)
            BROKEN("connection %zu (id %u): %zu opens", c, s->conns[c].id, opens[c]);
        if (s->conns[c].nmessages != msgs[c])
            BROKEN("connection %zu: nmessages %u, %u messages", c, s->conns[c].nmessages, msgs[c]);
        if (!s->conns[c].head)
            BROKEN("connection %zu: no head", c);
    }
out:
    free(opens);
    free(msgs);
    return ok;
#undef BROKEN
}

static unsigned family_of_op(const char *op)
{
    if (!strncmp(op, "json.", 5))
        return FZ_JSON;
    if (!strncmp(op, "frame.", 6))
        return FZ_FRAME;
    if (!strncmp(op, "sched.", 6))
        return FZ_SCHEDULE;
    return 0;
}

/* The log entries from `from` on describe the mutations fz_mutate said it
 * applied (rc), within max, from the families asked for. */
static bool log_ok(const cJSON *log, int from, int rc, unsigned families, unsigned max,
                   const struct rp_session *s, char *why, size_t cap)
{
    int n = cJSON_GetArraySize(log) - from;
    unsigned seen = 0;
    why[0] = '\0';
    if (rc == 0 && n != 0) {
        snprintf(why, cap, "nothing applied but %d log entries", n);
        return false;
    }
    if (rc > 0 && (n < 1 || (unsigned)n > max)) {
        snprintf(why, cap, "%d log entries for at most %u mutations", n, max);
        return false;
    }
    for (int i = from; i < from + n; i++) {
        const cJSON *e = cJSON_GetArrayItem(log, i);
        const cJSON *op = cJSON_GetObjectItemCaseSensitive(e, "op");
        if (!cJSON_IsString(op) || !family_of_op(op->valuestring)) {
            snprintf(why, cap, "log entry %d has no op of a family", i);
            return false;
        }
        unsigned f = family_of_op(op->valuestring);
        if (!(f & families)) {
            snprintf(why, cap, "%s, asked for families %u", op->valuestring, families);
            return false;
        }
        seen |= f;
        const cJSON *conn = cJSON_GetObjectItemCaseSensitive(e, "conn");
        if (conn) {
            bool known = false;
            for (size_t c = 0; cJSON_IsNumber(conn) && c < s->nconns && !known; c++)
                known = s->conns[c].id == (uint32_t)conn->valuedouble;
            if (!known) {
                snprintf(why, cap, "%s names no connection", op->valuestring);
                return false;
            }
        }
    }
    if (seen != (unsigned)rc) {
        snprintf(why, cap, "returned families %d, logged %u", rc, seen);
        return false;
    }
    return true;
}

/* ---- the generator and the helpers ---- */

static void test_rng(void)
{
    /* splitmix64 seeded 0: its well-known first outputs, so seeds saved by
     * one build replay the same in the next */
    struct fz_rng g = {0};
    CHECK_U64(fz_next(&g), 0xe220a8397b1dcdafULL);
    CHECK_U64(fz_next(&g), 0x6e789e6aa1b965f4ULL);
    struct fz_rng a = {42}, b = {42};
    for (int i = 0; i < 100; i++)
        CHECK_U64(fz_next(&a), fz_next(&b));
    CHECK_INT(fz_below(&g, 0), 0);
    CHECK_INT(fz_below(&g, 1), 0);
    bool hit[7] = {false};
    bool in_range = true;
    for (int i = 0; i < 1000; i++) {
        uint32_t v = fz_below(&g, 7);
        in_range = in_range && v < 7;
        if (v < 7)
            hit[v] = true;
    }
    CHECK(in_range);
    for (int i = 0; i < 7; i++)
        CHECK_MSG(hit[i], "fz_below(7) never gave %d", i);
}

static void test_families_parse(void)
{
    CHECK_INT(fz_families_parse("json"), FZ_JSON);
    CHECK_INT(fz_families_parse("frame"), FZ_FRAME);
    CHECK_INT(fz_families_parse("schedule"), FZ_SCHEDULE);
    CHECK_INT(fz_families_parse("json,frame"), FZ_JSON | FZ_FRAME);
    CHECK_INT(fz_families_parse("frame,schedule"), FZ_FRAME | FZ_SCHEDULE);
    CHECK_INT(fz_families_parse("all"), FZ_ALL);
    CHECK_INT(fz_families_parse("json,frame,schedule"), FZ_ALL);
    CHECK_INT(fz_families_parse("bogus"), 0);
    CHECK_INT(fz_families_parse("json,bogus"), 0);
    CHECK_INT(fz_families_parse("jsonx"), 0);
    CHECK_INT(fz_families_parse("jso"), 0);
    CHECK_INT(fz_families_parse("sched"), 0);
}

static void type_is(uint8_t opcode, const char *p, const char *want)
{
    char out[64];
    memset(out, '#', sizeof(out));
    fz_message_type(opcode, (const uint8_t *)p, strlen(p), out, sizeof(out));
    CHECK_MSG(!strcmp(out, want), "type of %s: \"%s\", want \"%s\"", p, out, want);
}

static void test_message_type(void)
{
    type_is(WSRR_OP_TEXT, "{\"type\":\"run\"}", "run");
    type_is(WSRR_OP_TEXT, "{\"event\":\"x\"}", "x");
    type_is(WSRR_OP_TEXT, "{\"method\":\"tools/call\",\"id\":1}", "tools/call");
    type_is(WSRR_OP_TEXT, "{\"type\":5,\"op\":\"y\"}", "y");       /* a string value only */
    type_is(WSRR_OP_TEXT, "{\"kind\":\"k\",\"type\":\"t\"}", "t"); /* "type" first */
    type_is(WSRR_OP_TEXT, "[1,2]", "[json]");
    type_is(WSRR_OP_TEXT, "{\"a\":1}", "{json}");
    type_is(WSRR_OP_TEXT, "{\"a\":{\"type\":\"nested\"}}", "{json}");
    type_is(WSRR_OP_TEXT, "hello", "text");
    type_is(WSRR_OP_TEXT, "{oops", "text");
    type_is(WSRR_OP_TEXT, "", "text");
    type_is(WSRR_OP_BINARY, "{\"type\":\"run\"}", "binary");
    type_is(WSRR_OP_BINARY, "\x01\x02", "binary");

    /* the length is the message's: no reading past it */
    char out[64];
    static const char two[] = "{\"type\":\"a\"}{\"type\":\"b\"}";
    fz_message_type(WSRR_OP_TEXT, (const uint8_t *)two, 12, out, sizeof(out));
    CHECK_STR(out, "a");
    /* a small buffer: cut, terminated */
    fz_message_type(WSRR_OP_TEXT, (const uint8_t *)"{\"type\":\"agent_started\"}", 24, out, 6);
    CHECK_STR(out, "agent");
}

/* ---- determinism ---- */

static void test_determinism(const struct rp_session *base)
{
    char first[4096] = "", why[128];
    bool differ = false;
    for (uint64_t seed = 0; seed < 500; seed++) {
        struct rp_session *a = clone_of(base), *b = clone_of(base);
        cJSON *la = cJSON_CreateArray(), *lb = cJSON_CreateArray();
        REQUIRE(la && lb);
        struct fz_rng ga = {seed}, gb = {seed};
        int ra = fz_mutate(a, &ga, FZ_ALL, 3, la);
        int rb = fz_mutate(b, &gb, FZ_ALL, 3, lb);
        CHECK_MSG(ra == rb, "seed %llu: %d then %d", (unsigned long long)seed, ra, rb);
        CHECK_MSG(ra >= 0, "seed %llu: %d", (unsigned long long)seed, ra);
        CHECK_U64(ga.s, gb.s);
        char *pa = cJSON_PrintUnformatted(la), *pb = cJSON_PrintUnformatted(lb);
        REQUIRE(pa && pb);
        CHECK_MSG(!strcmp(pa, pb), "seed %llu:\n    %s\n    %s", (unsigned long long)seed, pa, pb);
        session_diff(a, b, why, sizeof(why));
        CHECK_MSG(!why[0], "seed %llu: the two sessions differ: %s", (unsigned long long)seed, why);
        if (!first[0])
            snprintf(first, sizeof(first), "%s", pa);
        else if (strcmp(first, pa))
            differ = true;
        cJSON_free(pa);
        cJSON_free(pb);
        cJSON_Delete(la);
        cJSON_Delete(lb);
        rp_session_free(a);
        rp_session_free(b);
    }
    CHECK_MSG(differ, "500 seeds, one log: the seed does not matter");
}

/* ---- invariants, over chains of mutations ---- */

static int reported;

/* For each family alone and all of them, seeds 0 .. nseeds-1: 1 to 4
 * rounds of fz_mutate (up to 3 mutations each) on one copy of base, the
 * way fuzz's corpus chains pile mutations up; after each round the session
 * and the log are checked. */
static void chains(const struct rp_session *base, const char *name, uint64_t nseeds)
{
    static const unsigned fams[] = {FZ_JSON, FZ_FRAME, FZ_SCHEDULE, FZ_ALL};
    unsigned applied_families[4] = {0};
    for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
        for (uint64_t seed = 0; seed < nseeds; seed++) {
            struct rp_session *s = clone_of(base);
            cJSON *log = cJSON_CreateArray();
            REQUIRE(log);
            struct fz_rng g = {seed};
            uint32_t rounds = 1 + fz_below(&g, 4);
            char why[256];
            for (uint32_t r = 0; r < rounds; r++) {
                int before = cJSON_GetArraySize(log);
                int rc = fz_mutate(s, &g, fams[f], 3, log);
                CHECK_MSG(rc >= 0, "%s: families %u seed %llu round %u: %d", name, fams[f],
                          (unsigned long long)seed, r, rc);
                if (rc < 0)
                    break;
                applied_families[f] |= (unsigned)rc;
                bool ok = session_ok(s, why, sizeof(why)) &&
                          log_ok(log, before, rc, fams[f], 3, s, why, sizeof(why));
                /* a CHECK, reported for the first 20 sessions only */
                check_count++;
                if (!ok) {
                    check_failures++;
                    if (reported++ < 20) {
                        char *p = cJSON_PrintUnformatted(log);
                        fprintf(stderr,
                                "%s:%d: %s: families %u seed %llu round %u: %s\n    log: %s\n",
                                __FILE__, __LINE__, name, fams[f], (unsigned long long)seed, r, why,
                                p ? p : "?");
                        cJSON_free(p);
                    }
                    break;
                }
            }
            cJSON_Delete(log);
            rp_session_free(s);
        }
        /* every family asked for did apply */
        CHECK_MSG(applied_families[f] == fams[f], "%s: families %u, applied %u", name, fams[f],
                  applied_families[f]);
    }
}

/* ---- one mutation at a time, checked against the session before ---- */

/* The first seed whose single mutation from families is op; its mutated
 * session in *out and log entry (a copy) in *entry; false when none within
 * 20000 seeds. */
static bool find_op(const struct rp_session *base, unsigned families, const char *op,
                    struct rp_session **out, cJSON **entry, uint64_t *seed_out)
{
    for (uint64_t seed = 0; seed < 20000; seed++) {
        struct rp_session *s = clone_of(base);
        cJSON *log = cJSON_CreateArray();
        REQUIRE(log);
        struct fz_rng g = {seed};
        int rc = fz_mutate(s, &g, families, 1, log);
        const cJSON *e = cJSON_GetArrayItem(log, 0);
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "op");
        if (rc > 0 && cJSON_GetArraySize(log) == 1 && cJSON_IsString(o) &&
            !strcmp(o->valuestring, op)) {
            *out = s;
            *entry = cJSON_Duplicate(e, true);
            *seed_out = seed;
            cJSON_Delete(log);
            return true;
        }
        cJSON_Delete(log);
        rp_session_free(s);
    }
    CHECK_MSG(false, "no seed below 20000 gives %s", op);
    return false;
}

static double num(const cJSON *e, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, k);
    CHECK_MSG(cJSON_IsNumber(v), "log entry without a number \"%s\"", k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* the index of the first step of connection id with seq, or -1 */
static long step_of(const struct rp_session *s, double id, double seq)
{
    for (size_t i = 0; i < s->nsteps; i++)
        if (s->conns[s->steps[i].conn].id == (uint32_t)id && s->steps[i].seq == (uint64_t)seq)
            return (long)i;
    return -1;
}

static void check_fragment(const struct rp_session *base, const char *op, bool ping)
{
    struct rp_session *s;
    cJSON *e;
    uint64_t seed;
    if (!find_op(base, FZ_FRAME, op, &s, &e, &seed))
        return;
    long was = step_of(base, num(e, "conn"), num(e, "seq"));
    long at = step_of(s, num(e, "conn"), num(e, "seq"));
    size_t k = (size_t)num(e, "frames");
    REQUIRE(was >= 0 && at == was);
    const struct rp_step *orig = &base->steps[was];
    CHECK_MSG(k >= 2 && k <= orig->len, "%s seed %llu: %zu frames of %zu bytes", op,
              (unsigned long long)seed, k, orig->len);
    CHECK_INT(s->nsteps, base->nsteps + k - 1 + (ping ? 1 : 0));
    REQUIRE((size_t)at + k + (ping ? 1 : 0) <= s->nsteps);
    uint8_t *joined = malloc(orig->len + 1);
    REQUIRE(joined);
    size_t n = 0, frag = 0;
    for (size_t i = (size_t)at; frag < k; i++) {
        const struct rp_step *st = &s->steps[i];
        CHECK_INT(st->kind, RP_SEND);
        CHECK_INT(st->conn, orig->conn);
        if (ping && i == (size_t)at + 1) {
            CHECK_INT(st->opcode, WSRR_OP_PING);
            CHECK(st->fin);
            CHECK_MEM(st->data, st->len, "wsrr", 4);
            continue;
        }
        CHECK_INT(st->opcode, frag ? WSRR_OP_CONT : orig->opcode);
        CHECK_INT(st->fin, frag == k - 1);
        CHECK_MSG(st->len > 0, "%s seed %llu: an empty fragment", op, (unsigned long long)seed);
        if (n + st->len <= orig->len)
            memcpy(joined + n, st->data, st->len);
        n += st->len;
        frag++;
    }
    CHECK_MEM(joined, n, orig->data, orig->len);
    /* the steps around it are untouched */
    size_t extra = k - 1 + (ping ? 1 : 0);
    for (size_t i = 0; i < base->nsteps; i++)
        if ((long)i != was)
            CHECK(steps_equal(&base->steps[i], &s->steps[(long)i < was ? i : i + extra]));
    free(joined);
    cJSON_Delete(e);
    rp_session_free(s);
}

static void check_unmasked(const struct rp_session *base)
{
    struct rp_session *s;
    cJSON *e;
    uint64_t seed;
    if (!find_op(base, FZ_FRAME, "frame.unmasked", &s, &e, &seed))
        return;
    long at = step_of(s, num(e, "conn"), num(e, "seq"));
    REQUIRE(at >= 0);
    CHECK_INT(s->steps[at].kind, RP_SEND);
    CHECK(s->steps[at].unmasked);
    CHECK(s->steps[at].invalid);
    size_t unmasked = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        unmasked += s->steps[i].kind == RP_SEND && s->steps[i].unmasked && s->steps[i].invalid;
    CHECK_INT(unmasked, 1);
    CHECK_INT(s->nsteps, base->nsteps);
    /* the payload goes out as it was */
    CHECK_MEM(s->steps[at].data, s->steps[at].len, base->steps[at].data, base->steps[at].len);
    cJSON_Delete(e);
    rp_session_free(s);
}

static int count_nodes(const cJSON *j)
{
    int n = 1;
    for (const cJSON *c = j->child; c; c = c->next)
        n += count_nodes(c);
    return n;
}

static void check_json_drop(const struct rp_session *base)
{
    struct rp_session *s;
    cJSON *e;
    uint64_t seed;
    if (!find_op(base, FZ_JSON, "json.drop", &s, &e, &seed))
        return;
    long at = step_of(s, num(e, "conn"), num(e, "seq"));
    REQUIRE(at >= 0);
    const struct rp_step *was = &base->steps[at], *now = &s->steps[at];
    cJSON *a = cJSON_ParseWithLength((const char *)was->data, was->len);
    cJSON *b = cJSON_ParseWithLength((const char *)now->data, now->len);
    CHECK_MSG(b, "json.drop seed %llu: %.*s does not parse", (unsigned long long)seed,
              (int)now->len, (const char *)now->data);
    CHECK(a);
    if (a && b) {
        CHECK_MSG(count_nodes(b) < count_nodes(a), "json.drop seed %llu: %.*s -> %.*s",
                  (unsigned long long)seed, (int)was->len, (const char *)was->data, (int)now->len,
                  (const char *)now->data);
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(e, "path");
        CHECK_MSG(cJSON_IsString(path) && path->valuestring[0], "json.drop without a path");
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    CHECK_INT(s->nsteps, base->nsteps);
    cJSON_Delete(e);
    rp_session_free(s);
}

static size_t count_sends(const struct rp_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        n += s->steps[i].kind == RP_SEND;
    return n;
}

static void check_concurrent(const struct rp_session *base)
{
    struct rp_session *s;
    cJSON *e;
    uint64_t seed;
    if (!find_op(base, FZ_SCHEDULE, "sched.concurrent", &s, &e, &seed))
        return;
    size_t k = (size_t)num(e, "copies");
    CHECK_MSG(k == 2 || k == 3, "%zu copies", k);
    CHECK_INT(s->nconns, k * base->nconns);
    CHECK_INT(s->nsteps, k * base->nsteps);
    CHECK_INT(count_sends(s), k * count_sends(base));
    bool distinct = true;
    for (size_t i = 0; i < s->nconns; i++)
        for (size_t j = i + 1; j < s->nconns; j++)
            distinct = distinct && s->conns[i].id != s->conns[j].id;
    CHECK(distinct);
    /* each copy walks the original's steps in their order */
    for (size_t c = 0; c < k; c++) {
        size_t w = 0;
        for (size_t i = 0; i < s->nsteps; i++) {
            const struct rp_step *st = &s->steps[i];
            if (st->conn / base->nconns != c)
                continue;
            REQUIRE(w < base->nsteps);
            const struct rp_step *o = &base->steps[w++];
            CHECK(st->kind == o->kind && st->conn == o->conn + c * base->nconns &&
                  st->seq == o->seq && st->opcode == o->opcode);
        }
        CHECK_INT(w, base->nsteps);
    }
    cJSON_Delete(e);
    rp_session_free(s);
}

/* sched.concurrent's copies carry their users and ids in the upgrade
 * request's query too, as the mode says: every mode is seen and checked */
static void check_concurrent_query(const struct rp_session *base)
{
    struct rp_session *b = clone_of(base);
    for (size_t i = 0; i < b->nconns; i++) {
        free(b->conns[i].head);
        b->conns[i].head = xstrdup("GET /v1/agent?user=bob&run_id=r9 HTTP/1.1\r\nHost: x\r\n\r\n");
        b->conns[i].head_len = strlen(b->conns[i].head);
    }
    static const char *const modes[] = {"same", "same user, other ids", "other users"};
    unsigned seen = 0;
    for (uint64_t seed = 0; seed < 20000 && seen != 7; seed++) {
        struct rp_session *s = clone_of(b);
        cJSON *log = cJSON_CreateArray();
        REQUIRE(log);
        struct fz_rng g = {seed};
        int rc = fz_mutate(s, &g, FZ_SCHEDULE, 1, log);
        const cJSON *e = cJSON_GetArrayItem(log, 0);
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(e, "op");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "copies_are");
        if (rc > 0 && cJSON_IsString(o) && !strcmp(o->valuestring, "sched.concurrent") &&
            cJSON_IsString(m)) {
            for (unsigned k = 0; k < 3; k++) {
                if (strcmp(m->valuestring, modes[k]))
                    continue;
                seen |= 1u << k;
                for (size_t i = 0; i < s->nconns; i++) {
                    unsigned copy = (unsigned)(i / b->nconns);
                    char us[16] = "", rs[16] = "", want[128];
                    if (copy && k == 2)
                        snprintf(us, sizeof(us), "-%u", copy);
                    if (copy && k == 1)
                        snprintf(rs, sizeof(rs), "-%u", copy);
                    snprintf(want, sizeof(want),
                             "GET /v1/agent?user=bob%s&run_id=r9%s HTTP/1.1\r\nHost: x\r\n\r\n", us,
                             rs);
                    CHECK_MSG(
                        !strcmp(s->conns[i].head, want) && s->conns[i].head_len == strlen(want),
                        "mode %s, conn %zu: %.60s, want %s", modes[k], i, s->conns[i].head, want);
                }
            }
        }
        cJSON_Delete(log);
        rp_session_free(s);
    }
    CHECK_INT(seen, 7);
    rp_session_free(b);
}

static void check_early_end(const struct rp_session *base, const char *op)
{
    struct rp_session *s;
    cJSON *e;
    uint64_t seed;
    if (!find_op(base, FZ_SCHEDULE, op, &s, &e, &seed))
        return;
    long at = step_of(s, num(e, "conn"), num(e, "seq"));
    REQUIRE(at >= 0 && (size_t)at + 1 < s->nsteps);
    uint32_t conn = s->steps[at].conn;
    const struct rp_step *c = &s->steps[at + 1];
    CHECK_INT(c->conn, conn);
    if (!strcmp(op, "sched.early-close")) {
        CHECK_INT(c->kind, RP_SEND);
        CHECK_INT(c->opcode, WSRR_OP_CLOSE);
        CHECK(c->fin);
        CHECK_INT(c->code, num(e, "code"));
    } else {
        CHECK_INT(c->kind, RP_HANGUP);
        CHECK_INT(c->rst, !strcmp(op, "sched.early-reset"));
    }
    for (size_t i = (size_t)at + 2; i < s->nsteps; i++)
        CHECK_MSG(s->steps[i].conn != conn, "%s seed %llu: step %zu after the end", op,
                  (unsigned long long)seed, i);
    for (size_t i = 0; i < s->nsteps; i++)
        CHECK(s->steps[i].conn != conn || !s->steps[i].failure);
    CHECK_INT(s->conns[conn].rec.end, RP_END_OPEN);
    /* the other connections keep all their steps */
    size_t others = 0, others_before = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        others += s->steps[i].conn != conn;
    for (size_t i = 0; i < base->nsteps; i++)
        others_before += base->steps[i].conn != conn;
    CHECK_INT(others, others_before);
    cJSON_Delete(e);
    rp_session_free(s);
}

/* json.swap on a key longer than the copy mutate.c makes of it: the values
 * must still change places (and nothing leak). */
static void check_swap_long_key(void)
{
    struct rp_session *s = new_session(1);
    char key[201];
    memset(key, 'k', 200);
    key[200] = '\0';
    char m1[300], m2[300];
    snprintf(m1, sizeof(m1), "{\"type\":\"t\",\"%s\":1}", key);
    snprintf(m2, sizeof(m2), "{\"type\":\"t\",\"%s\":2}", key);
    step_open(s, 0);
    send_text(s, 0, m1);
    send_text(s, 0, m2);
    rp_session_renumber(s);
    struct rp_session *m;
    cJSON *e;
    uint64_t seed;
    if (find_op(s, FZ_JSON, "json.swap", &m, &e, &seed)) {
        CHECK_MEM(s->steps[2].data, s->steps[2].len, m1, strlen(m1)); /* the base as it was */
        CHECK_MSG(m->steps[2].len == strlen(m2) && !memcmp(m->steps[2].data, m2, strlen(m2)) &&
                      m->steps[3].len == strlen(m1) && !memcmp(m->steps[3].data, m1, strlen(m1)),
                  "json.swap seed %llu on a 200-byte key, logged as %s, left the messages"
                  "\n    %.*s\n    %.*s",
                  (unsigned long long)seed, cJSON_GetObjectItem(e, "path")->valuestring,
                  (int)m->steps[2].len, (const char *)m->steps[2].data, (int)m->steps[3].len,
                  (const char *)m->steps[3].data);
        cJSON_Delete(e);
        rp_session_free(m);
    }
    rp_session_free(s);
}

/* An empty text message: the mutations that take any message (RSV bits,
 * no mask, invalid UTF-8, ...) must cope with a payload of no bytes (data
 * NULL). */
static void check_empty_message(void)
{
    /* the only text message is empty: frame.bad-utf8 must take it */
    struct rp_session *s = new_session(1);
    step_open(s, 0);
    add_step(s, RP_SEND, 0, WSRR_OP_TEXT, NULL, 0);
    message_text(s, 0, "{\"type\":\"error\",\"message\":\"empty\"}");
    rp_session_renumber(s);
    struct rp_session *m;
    cJSON *e;
    uint64_t seed;
    if (find_op(s, FZ_FRAME, "frame.bad-utf8", &m, &e, &seed)) {
        CHECK_INT(step_of(m, num(e, "conn"), num(e, "seq")), 2);
        CHECK(m->steps[2].invalid);
        CHECK_MSG(m->steps[2].len >= 1 && m->steps[2].len <= 4 && m->steps[2].data, "%zu bytes",
                  m->steps[2].len);
        cJSON_Delete(e);
        rp_session_free(m);
    }
    /* and among others, in chains of every family */
    send_text(s, 0, "{\"type\":\"run\",\"user\":\"carol\"}");
    message_text(s, 0, "{\"type\":\"agent_started\"}");
    add_step(s, RP_SEND, 0, WSRR_OP_BINARY, NULL, 0);
    rp_session_renumber(s);
    chains(s, "empty message", 500);
    rp_session_free(s);
}

/* --jobs isolation: worker K's user and id values get "-wK", in client
 * JSON and in the upgrade request's query (there not a "session" nor a
 * bare "x_id"); credentials, other keys, empty values, the path and the
 * rest of the request stay as they are; a request without a query stays
 * byte for byte; worker 0 changes nothing. */
static void test_isolate(void)
{
    char longkey[160];
    memset(longkey, 'x', sizeof(longkey));
    memcpy(longkey, "user", 4);
    longkey[140] = '\0';
    char qhead[512], want_head[512];
    snprintf(qhead, sizeof(qhead),
             "GET /v1/agent/alice?user=alice&run_id=r1&token=abc&&x=1&user_name=&flag&session=s1&"
             "client_id=app&conversation_id=c1&%s=v& HTTP/1.1\r\n"
             "Host: x\r\n"
             "Cookie: session=s3cr3t\r\n"
             "\r\n",
             longkey);
    snprintf(want_head, sizeof(want_head),
             "GET /v1/agent/alice?user=alice-w2&run_id=r1-w2&token=abc&&x=1&user_name=&flag&"
             "session=s1&client_id=app&conversation_id=c1-w2&%s=v& HTTP/1.1\r\n"
             "Host: x\r\n"
             "Cookie: session=s3cr3t\r\n"
             "\r\n",
             longkey);
    struct rp_session *s = new_session(2); /* the second: the plain head, no query */
    free(s->conns[0].head);
    s->conns[0].head = xstrdup(qhead);
    s->conns[0].head_len = strlen(qhead);
    add_step(s, RP_OPEN, 0, 0, NULL, 0);
    send_text(s, 0,
              "{\"user_id\":\"alice\",\"run_id\":\"r1\",\"api_token\":\"t\",\"text\":\"hi\"}");
    rp_session_renumber(s);
    REQUIRE(fz_isolate(s, 0) == 0);
    CHECK_STR(s->conns[0].head, qhead);
    REQUIRE(fz_isolate(s, 2) == 0);
    CHECK_STR(s->conns[0].head, want_head);
    CHECK_INT(s->conns[0].head_len, strlen(want_head));
    CHECK_STR(s->conns[1].head, head);
    CHECK_INT(s->conns[1].head_len, strlen(head));
    const struct rp_step *st = &s->steps[1];
    cJSON *j = cJSON_ParseWithLength((const char *)st->data, st->len);
    REQUIRE(j);
    CHECK_STR(cJSON_GetObjectItem(j, "user_id")->valuestring, "alice-w2");
    CHECK_STR(cJSON_GetObjectItem(j, "run_id")->valuestring, "r1-w2");
    CHECK_STR(cJSON_GetObjectItem(j, "api_token")->valuestring, "t");
    CHECK_STR(cJSON_GetObjectItem(j, "text")->valuestring, "hi");
    cJSON_Delete(j);
    rp_session_free(s);
}

/* A recorded request keeps all its bytes through a clone and through
 * sched.concurrent's copies, a NUL among them or not (the loader stores
 * all of them; copying up to the NUL read past the copy). */
static void test_conn_copy_bytes(void)
{
    struct rp_session *s = new_session(1);
    size_t n = strlen(head) + 5;
    char *h = malloc(n + 1);
    REQUIRE(h);
    memcpy(h, head, strlen(head));
    memcpy(h + strlen(head), "\0junk", 6);
    free(s->conns[0].head);
    s->conns[0].head = h;
    s->conns[0].head_len = n;
    struct rp_session *c = clone_of(s);
    CHECK_INT(c->conns[0].head_len, n);
    CHECK_MEM(c->conns[0].head, c->conns[0].head_len, h, n);
    rp_session_free(c);
    rp_session_free(s);
}

int main(void)
{
    test_rng();
    test_families_parse();
    test_message_type();
    test_isolate();
    test_conn_copy_bytes();

    struct rp_session *base = base_session();
    char why[256];
    REQUIRE(session_ok(base, why, sizeof(why)));

    test_determinism(base);
    chains(base, "base", 1000);
    check_fragment(base, "frame.fragment", false);
    check_fragment(base, "frame.ping-between", true);
    check_unmasked(base);
    check_json_drop(base);
    check_concurrent(base);
    check_concurrent_query(base);
    check_early_end(base, "sched.early-close");
    check_early_end(base, "sched.early-hangup");
    check_early_end(base, "sched.early-reset");
    check_swap_long_key();
    /* last: under UBSan this one stops the program (mutate.c, frame.bad-utf8) */
    check_empty_message();

    rp_session_free(base);
    return check_finish("test_mutate");
}
