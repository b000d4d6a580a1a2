/* test_capture.c — capture writer/reader round trips: every record kind,
 * batching by size and by time, the trailer and seek table, file creation
 * rules. Damage handling is in test_capture_damage.c. */
#include "check.h"
#include "wsrr/capture.h"
#include "wsrr/frame.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

static char dir[] = "/tmp/wsrr-test-capture-XXXXXX";

static const char *tmp_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

#define SPAN(s) ((struct wsrr_span){(const uint8_t *)(s), sizeof(s) - 1})

static bool span_eq(struct wsrr_span a, struct wsrr_span b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* One record of every kind, plus an unknown kind and trailing extra bytes. */
static int make_records(struct wsrr_record *rs)
{
    static uint8_t big[70000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    int n = 0;
    struct wsrr_record *r;

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_OPEN;
    r->conn = 1;
    r->ts = 10;
    r->u.open.flags = WSRR_OF_CLIENT_TLS;
    r->u.open.client = SPAN("127.0.0.1:40000");
    r->u.open.listen = SPAN("127.0.0.1:8080");
    r->u.open.upstream = SPAN("ws://127.0.0.1:9000/agent");
    r->u.open.client_tls = SPAN("TLSv1.3 TLS_AES_128_GCM_SHA256");
    r->u.open.sni = SPAN("localhost");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_REQUEST;
    r->conn = 1;
    r->ts = 20;
    r->u.http.head = SPAN("GET /agent HTTP/1.1\r\nHost: x\r\n\r\n");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_RESPONSE;
    r->conn = 1;
    r->ts = 30;
    r->flags = WSRR_RF_REDACTED;
    r->u.http.head = SPAN("HTTP/1.1 101 Switching Protocols\r\n\r\n");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_FRAME;
    r->conn = 1;
    r->ts = 40;
    r->u.frame.dir = WSRR_DIR_C2S;
    r->u.frame.fin = true;
    r->u.frame.opcode = WSRR_OP_TEXT;
    r->u.frame.len_width = 7;
    r->u.frame.fflags = WSRR_FF_MASKED;
    memcpy(r->u.frame.mask, "\x37\xfa\x21\x3d", 4);
    r->u.frame.len = 5;
    r->u.frame.payload = SPAN("Hello");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_FRAME;
    r->conn = 1;
    r->ts = 50;
    r->u.frame.dir = WSRR_DIR_S2C;
    r->u.frame.fin = true;
    r->u.frame.rsv = WSRR_RSV1;
    r->u.frame.opcode = WSRR_OP_BINARY;
    r->u.frame.len_width = 64;
    r->u.frame.fflags = WSRR_FF_MESSAGE;
    r->u.frame.violations = WSRR_V_LEN_NOT_MINIMAL | WSRR_V_BAD_UTF8;
    r->u.frame.len = sizeof(big);
    r->u.frame.payload = (struct wsrr_span){big, sizeof(big)};
    r->u.frame.message = SPAN("inflated message");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_CLOSE;
    r->conn = 1;
    r->ts = 60;
    r->u.close.side = WSRR_SIDE_SERVER;
    r->u.close.cflags = WSRR_CF_HAS_CODE;
    r->u.close.code = 1011;
    r->u.close.reason = SPAN("Internal error");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_TCP;
    r->conn = 2;
    r->ts = 70;
    r->u.tcp.leg = WSRR_LEG_UPSTREAM;
    r->u.tcp.event = WSRR_TCP_CONNECT_FAILED;
    r->u.tcp.err = ECONNREFUSED;
    r->u.tcp.detail = SPAN("connect 127.0.0.1:9: Connection refused");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_FAULT;
    r->conn = 1;
    r->ts = 80;
    r->flags = WSRR_RF_INJECTED;
    r->u.fault.target = 4;
    r->u.fault.rule = SPAN("crash-after-tool");
    r->u.fault.action = SPAN("close");
    r->u.fault.detail = SPAN("{\"code\":1011}");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_NOTE;
    r->ts = 90;
    r->u.note.text = SPAN("a note with \xc3\xa9 and \"quotes\"");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_BODY;
    r->conn = 5;
    r->ts = 95;
    r->u.body.dir = WSRR_DIR_C2S;
    r->u.body.bflags = WSRR_BF_COMPLETE;
    r->u.body.len = 13;
    r->u.body.data = SPAN("{\"query\":\"x\"}");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = 200; /* unknown kind: body kept as is */
    r->conn = 3;
    r->ts = 100;
    r->u.raw.body = SPAN("\x01\x02\x03 opaque");

    r = &rs[n++];
    memset(r, 0, sizeof(*r));
    r->kind = WSRR_REC_NOTE;
    r->ts = 110;
    r->u.note.text = SPAN("with extra");
    r->extra = SPAN("\xaa\xbb future field");
    return n;
}

static void check_same(const struct wsrr_record *a, const struct wsrr_record *b)
{
    CHECK_INT(a->kind, b->kind);
    CHECK_INT(a->flags, b->flags);
    CHECK_INT(a->conn, b->conn);
    CHECK_U64(a->seq, b->seq);
    CHECK_U64(a->ts, b->ts);
    CHECK(span_eq(a->extra, b->extra));
    switch (a->kind) {
    case WSRR_REC_OPEN:
        CHECK_INT(a->u.open.flags, b->u.open.flags);
        CHECK(span_eq(a->u.open.client, b->u.open.client));
        CHECK(span_eq(a->u.open.listen, b->u.open.listen));
        CHECK(span_eq(a->u.open.upstream, b->u.open.upstream));
        CHECK(span_eq(a->u.open.client_tls, b->u.open.client_tls));
        CHECK(span_eq(a->u.open.upstream_tls, b->u.open.upstream_tls));
        CHECK(span_eq(a->u.open.sni, b->u.open.sni));
        break;
    case WSRR_REC_REQUEST:
    case WSRR_REC_RESPONSE: CHECK(span_eq(a->u.http.head, b->u.http.head)); break;
    case WSRR_REC_FRAME:
        CHECK_INT(a->u.frame.dir, b->u.frame.dir);
        CHECK_INT(a->u.frame.fin, b->u.frame.fin);
        CHECK_INT(a->u.frame.rsv, b->u.frame.rsv);
        CHECK_INT(a->u.frame.opcode, b->u.frame.opcode);
        CHECK_INT(a->u.frame.len_width, b->u.frame.len_width);
        CHECK_INT(a->u.frame.fflags, b->u.frame.fflags);
        CHECK_MEM(a->u.frame.mask, 4, b->u.frame.mask, 4);
        CHECK_INT(a->u.frame.violations, b->u.frame.violations);
        CHECK_U64(a->u.frame.len, b->u.frame.len);
        CHECK(span_eq(a->u.frame.payload, b->u.frame.payload));
        CHECK(span_eq(a->u.frame.message, b->u.frame.message));
        break;
    case WSRR_REC_CLOSE:
        CHECK_INT(a->u.close.side, b->u.close.side);
        CHECK_INT(a->u.close.cflags, b->u.close.cflags);
        CHECK_INT(a->u.close.code, b->u.close.code);
        CHECK(span_eq(a->u.close.reason, b->u.close.reason));
        break;
    case WSRR_REC_TCP:
        CHECK_INT(a->u.tcp.leg, b->u.tcp.leg);
        CHECK_INT(a->u.tcp.event, b->u.tcp.event);
        CHECK_INT(a->u.tcp.err, b->u.tcp.err);
        CHECK(span_eq(a->u.tcp.detail, b->u.tcp.detail));
        break;
    case WSRR_REC_FAULT:
        CHECK_U64(a->u.fault.target, b->u.fault.target);
        CHECK(span_eq(a->u.fault.rule, b->u.fault.rule));
        CHECK(span_eq(a->u.fault.action, b->u.fault.action));
        CHECK(span_eq(a->u.fault.detail, b->u.fault.detail));
        break;
    case WSRR_REC_NOTE: CHECK(span_eq(a->u.note.text, b->u.note.text)); break;
    case WSRR_REC_BODY:
        CHECK_INT(a->u.body.dir, b->u.body.dir);
        CHECK_INT(a->u.body.bflags, b->u.body.bflags);
        CHECK_U64(a->u.body.len, b->u.body.len);
        CHECK(span_eq(a->u.body.data, b->u.body.data));
        break;
    default: CHECK(span_eq(a->u.raw.body, b->u.raw.body));
    }
}

static void test_record_codec(void)
{
    struct wsrr_record rs[16], back;
    int n = make_records(rs);
    for (int i = 0; i < n; i++) {
        rs[i].seq = 100 + (uint64_t)i;
        size_t size = wsrr_record_size(&rs[i]);
        REQUIRE(size >= WSRR_REC_HEADER_LEN);
        uint8_t *buf = malloc(size);
        CHECK_INT(wsrr_record_encode(buf, &rs[i]), size);
        char err[160];
        CHECK_INT(wsrr_record_decode(buf, size, &back, err, sizeof(err)), size);
        check_same(&rs[i], &back);
        /* every shorter buffer is rejected, never over-read (ASan watches) */
        for (size_t cut = 0; cut < size && cut < 200; cut++) {
            uint8_t *p = malloc(cut ? cut : 1);
            memcpy(p, buf, cut);
            CHECK(wsrr_record_decode(p, cut, &back, err, sizeof(err)) == -EBADMSG);
            free(p);
        }
        /* a length field that claims less than the body needs is caught */
        if (rs[i].kind == WSRR_REC_FRAME && size > 40) {
            wsrr_put32(buf, 40);
            CHECK(wsrr_record_decode(buf, size, &back, err, sizeof(err)) == -EBADMSG);
            CHECK_MSG(strstr(err, "frame.") != NULL, "error names the field: %s", err);
        }
        free(buf);
    }
    /* masked wire payload gathered from iovecs is unmasked on the way in */
    struct wsrr_record r = rs[3];
    uint8_t wire[5] = {0x7f, 0x9f, 0x4d, 0x51, 0x58}; /* RFC 6455 5.7 masked "Hello" */
    struct iovec iov[2] = {{wire, 2}, {wire + 2, 3}};
    r.u.frame.payload = (struct wsrr_span){NULL, 0};
    r.u.frame.payload_iov = iov;
    r.u.frame.payload_iovcnt = 2;
    r.u.frame.payload_wire = true;
    uint8_t buf[128];
    size_t size = wsrr_record_size(&r);
    REQUIRE(size <= sizeof(buf));
    wsrr_record_encode(buf, &r);
    CHECK_INT(wsrr_record_decode(buf, size, &back, NULL, 0), size);
    CHECK_MEM(back.u.frame.payload.p, back.u.frame.payload.n, "Hello", 5);
}

static void test_round_trip(size_t batch_bytes)
{
    struct wsrr_record rs[16];
    int n = make_records(rs);
    const char *path = tmp_path("rt.wsrr");
    unlink(path);
    char err[256];
    struct wsrr_capture_opts o = {.metadata = "{\"tool\":\"test\"}",
                                  .batch_bytes = batch_bytes,
                                  .flush_interval_ns = 3600ull * 1000000000};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    REQUIRE(w);
    int total = 0;
    for (int rep = 0; rep < 50; rep++)
        for (int i = 0; i < n; i++) {
            struct wsrr_record r = rs[i];
            r.seq = 0;
            CHECK_INT(wsrr_capture_append(w, &r), 0);
            CHECK_U64(r.seq, (uint64_t)total + 1);
            total++;
        }
    struct wsrr_capture_stats st;
    wsrr_capture_writer_stats(w, &st);
    CHECK_U64(st.records, total);
    uint64_t batches_before_close = st.batches;
    CHECK_INT(wsrr_capture_writer_close(w, err, sizeof(err)), 0);

    struct wsrr_capture_reader *rd = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(rd);
    const struct wsrr_capture_info *info = wsrr_capture_reader_info(rd);
    CHECK(info->header_ok);
    CHECK_INT(info->major, 1);
    CHECK_STR(info->metadata, "{\"tool\":\"test\"}");
    struct wsrr_record got;
    int k = 0, rc;
    while ((rc = wsrr_capture_reader_next(rd, &got)) == 1) {
        struct wsrr_record want = rs[k % n];
        want.seq = (uint64_t)k + 1;
        check_same(&want, &got);
        k++;
    }
    CHECK_INT(rc, 0);
    CHECK_INT(k, total);
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(rd, &s);
    CHECK(s.trailer);
    CHECK(s.consistent);
    CHECK_INT(s.ndamage, 0);
    CHECK_U64(s.records, total);
    CHECK(s.batches >= batches_before_close);
    if (batch_bytes < 4096)
        CHECK_MSG(s.batches > 10, "small batch_bytes gives many batches (%llu)",
                  (unsigned long long)s.batches);
    wsrr_capture_reader_close(rd);

    /* The file is a plain multi-frame zstd stream: libzstd decodes it whole
     * (the skippable frames produce no output) to the concatenated records. */
    int fd = open(path, O_RDONLY);
    struct stat sb;
    fstat(fd, &sb);
    uint8_t *file = malloc((size_t)sb.st_size);
    CHECK_INT(read(fd, file, (size_t)sb.st_size), sb.st_size);
    close(fd);
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer in = {file, (size_t)sb.st_size, 0};
    uint8_t outbuf[1 << 16];
    size_t produced = 0, ret = 0;
    while (in.pos < in.size) {
        ZSTD_outBuffer out = {outbuf, sizeof(outbuf), 0};
        ret = ZSTD_decompressStream(d, &out, &in);
        if (ZSTD_isError(ret))
            break;
        produced += out.pos;
    }
    CHECK_MSG(!ZSTD_isError(ret), "zstd decodes the capture: %s", ZSTD_getErrorName(ret));
    CHECK_INT(ret, 0);
    CHECK_U64(produced, st.bytes_in);
    ZSTD_freeDCtx(d);

    /* The zstd seekable format: the footer is the last 9 bytes; one entry
     * per frame before the seek table (header, batch header + frame per
     * batch, trailer); walking the entries' compressed sizes lands on every
     * frame start, and each entry describes the frame it lands on. */
    const uint8_t *f = file + sb.st_size - 9;
    CHECK_INT(wsrr_le32(f + 5), 0x8F92EAB1u);
    CHECK_INT(f[4], 0x80);
    uint64_t entries = wsrr_le32(f);
    CHECK_U64(entries, 2 * s.batches + 2);
    const uint8_t *e = file + sb.st_size - 9 - entries * 12;
    uint64_t off = 0, content = 0;
    for (uint64_t i = 0; i < entries && off < (uint64_t)sb.st_size; i++) {
        uint32_t csize = wsrr_le32(e + i * 12), dsize = wsrr_le32(e + i * 12 + 4);
        uint32_t sum = wsrr_le32(e + i * 12 + 8);
        const uint8_t *fr = file + off;
        if ((wsrr_le32(fr) & 0xFFFFFFF0u) == 0x184D2A50u) {
            CHECK_U64(csize, 8 + wsrr_le32(fr + 4)); /* a skippable frame, whole */
            CHECK_INT(dsize, 0);
            CHECK_INT(sum, 0x51D8E999u); /* XXH64 of nothing */
        } else {
            CHECK_INT(wsrr_le32(fr), 0xFD2FB528u);
            CHECK_U64(ZSTD_findFrameCompressedSize(fr, csize), csize);
            CHECK_U64(ZSTD_getFrameContentSize(fr, csize), dsize);
            CHECK_INT(sum, wsrr_le32(fr + csize - 4)); /* the frame's content checksum */
            content += dsize;
        }
        off += csize;
    }
    CHECK_U64(content, st.bytes_in);
    CHECK_U64(off, (uint64_t)sb.st_size - 8 - (entries * 12 + 9)); /* = the seek table's offset */
    CHECK_INT(wsrr_le32(file + off), 0x184D2A5Eu);
    free(file);
}

static void test_file_rules(void)
{
    char err[256];
    const char *path = tmp_path("exists.wsrr");
    unlink(path);
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, NULL, err, sizeof(err));
    REQUIRE(w);
    CHECK_INT(wsrr_capture_writer_close(w, err, sizeof(err)), 0);
    /* never appended to, never silently replaced */
    w = wsrr_capture_writer_open(path, NULL, err, sizeof(err));
    CHECK(w == NULL);
    CHECK_MSG(strstr(err, "exists") != NULL, "%s", err);
    struct wsrr_capture_opts o = {.overwrite = true, .mode = 0600};
    w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    REQUIRE(w);
    CHECK_INT(wsrr_capture_writer_close(w, err, sizeof(err)), 0);
    struct stat sb;
    CHECK_INT(stat(path, &sb), 0);
    CHECK_INT(sb.st_mode & 0777, 0600);

    /* metadata must be a JSON object, and a refused open leaves an existing
     * file alone, even with overwrite */
    CHECK_INT(stat(path, &sb), 0);
    off_t size_before = sb.st_size;
    o.metadata = "[1,2";
    w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    CHECK(w == NULL);
    CHECK_MSG(strstr(err, "JSON object") != NULL, "%s", err);
    CHECK_INT(stat(path, &sb), 0);
    CHECK_INT(sb.st_size, size_before);
    const char *fresh = tmp_path("never-created.wsrr");
    unlink(fresh);
    CHECK(wsrr_capture_writer_open(fresh, &o, err, sizeof(err)) == NULL);
    CHECK(access(fresh, F_OK) != 0);

    /* a record a reader would refuse is refused, and poisons nothing */
    o.metadata = NULL;
    w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    REQUIRE(w);
    struct wsrr_record good = {.kind = WSRR_REC_NOTE, .ts = 1};
    good.u.note.text = SPAN("kept");
    CHECK_INT(wsrr_capture_append(w, &good), 0);
    struct wsrr_record bad = {.kind = WSRR_REC_FRAME, .ts = 2};
    bad.u.frame.len_width = 0;
    CHECK_INT(wsrr_capture_append(w, &bad), -EINVAL);
    bad.u.frame.len_width = 7;
    bad.u.frame.dir = 2;
    CHECK_INT(wsrr_capture_append(w, &bad), -EINVAL);
    CHECK_INT(wsrr_capture_writer_close(w, err, sizeof(err)), 0);
    struct wsrr_capture_reader *rd0 = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(rd0);
    struct wsrr_record back;
    CHECK_INT(wsrr_capture_reader_next(rd0, &back), 1);
    CHECK_INT(wsrr_capture_reader_next(rd0, &back), 0);
    wsrr_capture_reader_close(rd0);

    /* an empty capture (no records) reads back clean */
    o.metadata = NULL;
    o.overwrite = true;
    w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    REQUIRE(w);
    CHECK_INT(wsrr_capture_writer_close(w, err, sizeof(err)), 0);
    struct wsrr_capture_reader *rd = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(rd);
    struct wsrr_record rec;
    CHECK_INT(wsrr_capture_reader_next(rd, &rec), 0);
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(rd, &s);
    CHECK(s.trailer && s.consistent && s.ndamage == 0);
    wsrr_capture_reader_close(rd);

    /* unwritable place: clear error */
    w = wsrr_capture_writer_open("/nonexistent-dir/x.wsrr", NULL, err, sizeof(err));
    CHECK(w == NULL);
    CHECK_MSG(strstr(err, "/nonexistent-dir/x.wsrr") != NULL, "%s", err);
}

/* The flush interval closes a batch even when it is small: after the
 * interval, records are on disk (visible to a reader) without close. */
static void test_flush_interval(void)
{
    char err[256];
    const char *path = tmp_path("interval.wsrr");
    unlink(path);
    struct wsrr_capture_opts o = {.flush_interval_ns = 20ull * 1000 * 1000};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    REQUIRE(w);
    struct wsrr_record r = {.kind = WSRR_REC_NOTE, .ts = WSRR_TS_NOW};
    r.u.note.text = SPAN("first");
    CHECK_INT(wsrr_capture_append(w, &r), 0);
    struct wsrr_capture_stats st;
    wsrr_capture_writer_stats(w, &st);
    CHECK_U64(st.batches, 0);
    usleep(30 * 1000);
    CHECK_INT(wsrr_capture_writer_tick(w), 0);
    wsrr_capture_writer_stats(w, &st);
    CHECK_U64(st.batches, 1);
    CHECK_U64(st.last_durable_seq, 1);

    struct wsrr_capture_reader *rd = wsrr_capture_reader_open(path, err, sizeof(err));
    REQUIRE(rd);
    struct wsrr_record got;
    CHECK_INT(wsrr_capture_reader_next(rd, &got), 1);
    CHECK_MEM(got.u.note.text.p, got.u.note.text.n, "first", 5);
    CHECK_INT(wsrr_capture_reader_next(rd, &got), 0);
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(rd, &s);
    CHECK(!s.trailer); /* still open: no trailer yet, and that is not damage */
    CHECK_INT(s.ndamage, 0);
    wsrr_capture_reader_close(rd);
    wsrr_capture_writer_abort(w);
}

/* Standard input works as a source (cat FILE | wsrr cat -). */
static void test_stdin_reader(void)
{
    char err[256];
    const char *path = tmp_path("rt.wsrr");
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        int fd = open(path, O_RDONLY);
        char buf[777]; /* odd size: the reader must cope with short reads */
        ssize_t k;
        while ((k = read(fd, buf, sizeof(buf))) > 0)
            if (write(pfd[1], buf, (size_t)k) != k)
                _exit(1);
        _exit(0);
    }
    close(pfd[1]);
    int saved = dup(0);
    dup2(pfd[0], 0);
    close(pfd[0]);
    struct wsrr_capture_reader *rd = wsrr_capture_reader_open("-", err, sizeof(err));
    REQUIRE(rd);
    struct wsrr_record got;
    int k = 0;
    while (wsrr_capture_reader_next(rd, &got) == 1)
        k++;
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(rd, &s);
    CHECK(k > 0);
    CHECK(s.trailer && s.consistent);
    CHECK_INT(s.ndamage, 0);
    wsrr_capture_reader_close(rd);
    dup2(saved, 0);
    close(saved);
    waitpid(pid, NULL, 0);
}

int main(void)
{
    REQUIRE(mkdtemp(dir));
    test_record_codec();
    test_round_trip(1 << 20);
    test_round_trip(1000); /* many batches; the 70 KB frame gets a batch of its own */
    test_file_rules();
    test_flush_interval();
    test_stdin_reader();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_finish("test_capture");
}
