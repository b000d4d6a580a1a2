/* test_http_body.c — where HTTP message bodies end: Content-Length, chunked
 * (fed whole and one byte at a time), heads a proxy must refuse, responses
 * without bodies, and hostile chunk framing. */
#include "check.h"
#include "wsrr/handshake.h"

static struct wsrr_http_parser parser;

static const struct wsrr_http_head *head(const char *raw)
{
    wsrr_http_parser_finish(&parser);
    wsrr_http_parser_init(&parser, strncmp(raw, "HTTP/", 5) == 0, 0, 0);
    REQUIRE(wsrr_http_parse(&parser, (const uint8_t *)raw, strlen(raw)) > 0);
    return wsrr_http_parser_head(&parser);
}

/* Feed `wire` in pieces of `step` bytes; return the decoded body and how
 * many bytes of the wire belonged to the body. */
static size_t feed(struct wsrr_http_body *b, const char *wire, size_t n, size_t step, char *body,
                   size_t *body_len, int *err)
{
    size_t used = 0;
    *body_len = 0;
    *err = 0;
    while (used < n && !b->done) {
        size_t k = n - used < step ? n - used : step;
        size_t off = 0;
        while (off < k && !b->done) {
            struct wsrr_span d;
            ssize_t r = wsrr_http_body_feed(b, (const uint8_t *)wire + used + off, k - off, &d);
            if (r < 0) {
                *err = (int)r;
                return used + off;
            }
            if (d.n) {
                memcpy(body + *body_len, d.p, d.n);
                *body_len += d.n;
            }
            if (r == 0)
                break;
            off += (size_t)r;
        }
        used += off;
        if (off < k)
            break;
    }
    return used;
}

static void test_length(void)
{
    struct wsrr_http_body b;
    char err[160];
    CHECK_INT(wsrr_http_body_request(&b, head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), err,
                                     sizeof(err)),
              0);
    CHECK_INT(b.kind, WSRR_BODY_LENGTH);
    char body[64];
    size_t bl;
    int e;
    const char *wire = "helloGET / HTTP/1.1\r\n";
    CHECK_INT(feed(&b, wire, strlen(wire), 3, body, &bl, &e), 5); /* the next request is not ours */
    CHECK(b.done);
    CHECK_MEM(body, bl, "hello", 5);

    CHECK_INT(wsrr_http_body_request(&b, head("GET / HTTP/1.1\r\n\r\n"), err, sizeof(err)), 0);
    CHECK(b.done);
    CHECK_INT(wsrr_http_body_request(&b, head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), err,
                                     sizeof(err)),
              0);
    CHECK(b.done);
    /* equal duplicates are one length; different ones, or junk, are refused */
    CHECK_INT(wsrr_http_body_request(
                  &b, head("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n"),
                  err, sizeof(err)),
              0);
    CHECK_INT(b.remaining, 3);
    const char *bad[] = {
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK_MSG(wsrr_http_body_request(&b, head(bad[i]), err, sizeof(err)) == -EBADMSG,
                  "refused: %s", bad[i]);
        CHECK(err[0] != '\0');
    }
}

static void test_chunked(void)
{
    const char *wire = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
    for (size_t step = 1; step <= strlen(wire); step++) {
        struct wsrr_http_body b;
        char err[160];
        REQUIRE(wsrr_http_body_request(
                    &b, head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), err,
                    sizeof(err)) == 0);
        char body[64];
        size_t bl;
        int e;
        size_t used = feed(&b, wire, strlen(wire), step, body, &bl, &e);
        CHECK_MSG(e == 0 && b.done && used == strlen(wire) - 4, "step %zu: used %zu", step, used);
        CHECK_MEM(body, bl, "hello world", 11);
    }
    /* hostile framing: errors, never memory */
    const char *bad[] = {"z\r\n", "\r\n",    "5\r\nhelloXY", "5\n", "fffffffffffffffff\r\n",
                         "1;",    "0\r\nX\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wsrr_http_body b;
        char err[160];
        REQUIRE(wsrr_http_body_request(
                    &b, head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), err,
                    sizeof(err)) == 0);
        char body[64];
        size_t bl;
        int e;
        feed(&b, bad[i], strlen(bad[i]), 1, body, &bl, &e);
        if (i == 5) /* an extension without end yet: needs more, no error */
            CHECK(e == 0 && !b.done);
        else
            CHECK_MSG(e == -EBADMSG, "bad chunk framing %zu refused", i);
    }
    /* an endless extension stops at the line limit */
    struct wsrr_http_body b;
    char err[160];
    REQUIRE(wsrr_http_body_request(&b,
                                   head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
                                   err, sizeof(err)) == 0);
    char *ext = malloc(20000);
    memset(ext, 'x', 20000);
    ext[0] = '1';
    ext[1] = ';';
    char body[64];
    size_t bl;
    int e;
    feed(&b, ext, 20000, 4096, body, &bl, &e);
    CHECK_INT(e, -EBADMSG);
    free(ext);
}

static void test_responses(void)
{
    struct wsrr_http_body b;
    char err[160];
    CHECK_INT(wsrr_http_body_response(&b, head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
                                      "HEAD", 4, err, sizeof(err)),
              0);
    CHECK(b.done); /* a HEAD response has no body whatever it says */
    const char *none[] = {"HTTP/1.1 204 No Content\r\n\r\n", "HTTP/1.1 304 Not Modified\r\n\r\n",
                          "HTTP/1.1 100 Continue\r\n\r\n",
                          "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"};
    for (size_t i = 0; i < 4; i++) {
        CHECK_INT(wsrr_http_body_response(&b, head(none[i]), "GET", 3, err, sizeof(err)), 0);
        CHECK_MSG(b.done, "%s", none[i]);
    }
    CHECK_INT(
        wsrr_http_body_response(&b, head("HTTP/1.1 200 OK\r\n\r\n"), "GET", 3, err, sizeof(err)),
        0);
    CHECK_INT(b.kind, WSRR_BODY_UNTIL_CLOSE);
    CHECK_INT(wsrr_http_body_response(&b,
                                      head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
                                      "GET", 3, err, sizeof(err)),
              0);
    CHECK_INT(b.kind, WSRR_BODY_UNTIL_CLOSE);
    CHECK_INT(wsrr_http_body_response(&b,
                                      head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                                      "POST", 4, err, sizeof(err)),
              0);
    CHECK_INT(b.kind, WSRR_BODY_CHUNKED);
}

int main(void)
{
    test_length();
    test_chunked();
    test_responses();
    wsrr_http_parser_finish(&parser);
    return check_finish("test_http_body");
}
