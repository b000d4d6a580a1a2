/* fuzz_handshake.c — the HTTP head parser and the Upgrade checks.
 *
 * The input is parsed as a request and as a response, whole and in chunks
 * whose sizes come from the input; both ways must agree exactly (aborts
 * otherwise). Complete heads go through the checks and the extension parser;
 * bytes after a request head are parsed as the response to it.
 */
#include "wsrr/handshake.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t head_hash(const struct wsrr_http_head *h)
{
    uint64_t x = 0xcbf29ce484222325ull;
    int ints[4] = {h->response, h->status, h->version_minor, (int)h->flags};
    x = fnv(x, ints, sizeof(ints));
    x = fnv(x, h->method ? h->method : "", h->method_len);
    x = fnv(x, h->target ? h->target : "", h->target_len);
    x = fnv(x, h->reason ? h->reason : "", h->reason_len);
    for (size_t i = 0; i < h->nfields; i++) {
        x = fnv(x, h->fields[i].name, h->fields[i].name_len);
        x = fnv(x, ":", 1);
        x = fnv(x, h->fields[i].value, h->fields[i].value_len);
        x = fnv(x, "\n", 1);
    }
    return fnv(x, h->raw, h->raw_len);
}

/* Invariants of any parsed head. */
static void check_head(const struct wsrr_http_head *h, const uint8_t *data, size_t consumed)
{
    if (h->raw_len != consumed || memcmp(h->raw, data, consumed) != 0)
        abort();
    for (size_t i = 0; i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        if (f->name_len == 0)
            abort();
        for (size_t k = 0; k < f->value_len; k++) {
            unsigned char c = (unsigned char)f->value[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                abort();
        }
        if (f->value_len && (f->value[0] == ' ' || f->value[f->value_len - 1] == ' '))
            abort();
    }
}

static void use_head(const struct wsrr_http_head *h)
{
    struct wsrr_ws_info info;
    struct wsrr_ext exts[8];
    struct wsrr_ext_param params[16];
    char err[160];

    if (!h->response) {
        int st = wsrr_handshake_check_request(h, &info, err, sizeof(err));
        if (st != 0 && st != 400 && st != 426)
            abort();
        if (st == 0 && (info.key_len != 24 || info.version != 13))
            abort();
    }
    for (size_t i = 0; i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        int n = wsrr_ext_parse(f->value, f->value_len, exts, 8, params, 16, err, sizeof(err));
        if (n > 8)
            abort();
        for (int k = 0; k < n; k++) {
            if (exts[k].name_len == 0 ||
                (exts[k].nparams && exts[k].params + exts[k].nparams > params + 16))
                abort();
        }
    }
    wsrr_http_has_token(h, "Connection", "upgrade");
    wsrr_http_find(h, "Sec-WebSocket-Protocol", NULL);
}

struct outcome {
    ssize_t rc;
    uint64_t hash;
    char err[160];
};

/* Parse data as one head; chunk sizes come from `sched` (NULL: whole). */
static struct outcome run(bool response, const uint8_t *data, size_t size, const uint8_t *sched,
                          size_t nsched, bool use)
{
    struct wsrr_http_parser p;
    struct outcome o = {.rc = WSRR_AGAIN};
    size_t off = 0, k = 0;

    wsrr_http_parser_init(&p, response, 0, 32);
    do {
        size_t chunk = size - off;
        if (sched && nsched) {
            size_t c = 1 + sched[k++ % nsched] % 97;
            chunk = c < chunk ? c : chunk;
        }
        ssize_t r = wsrr_http_parse(&p, data + off, chunk);
        if (r == WSRR_AGAIN) {
            off += chunk;
            continue;
        }
        if (r > 0) {
            if ((size_t)r > chunk)
                abort();
            o.rc = (ssize_t)(off + (size_t)r);
            const struct wsrr_http_head *h = wsrr_http_parser_head(&p);
            if (!h)
                abort();
            check_head(h, data, off + (size_t)r);
            o.hash = head_hash(h);
            if (use)
                use_head(h);
        } else {
            o.rc = r;
            if (!wsrr_http_parser_error(&p)[0])
                abort();
        }
        break;
    } while (off < size);
    snprintf(o.err, sizeof(o.err), "%s", wsrr_http_parser_error(&p));
    wsrr_http_parser_finish(&p);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 200000)
        return 0;
    for (int response = 0; response < 2; response++) {
        struct outcome whole = run(response, data, size, NULL, 0, true);
        /* the schedule: the input read backwards, so it differs from the head */
        uint8_t sched[64];
        size_t ns = size < sizeof(sched) ? size : sizeof(sched);
        for (size_t i = 0; i < ns; i++)
            sched[i] = data[size - 1 - i];
        struct outcome split = run(response, data, size, sched, ns, false);
        if (whole.rc != split.rc || whole.hash != split.hash || strcmp(whole.err, split.err) != 0) {
            fprintf(stderr, "whole %zd '%s' vs split %zd '%s'\n", whole.rc, whole.err, split.rc,
                    split.err);
            abort();
        }
        uint8_t one = 0;
        struct outcome bytes = run(response, data, size, &one, 1, false);
        if (whole.rc != bytes.rc || whole.hash != bytes.hash)
            abort();
    }

    /* A request followed by a response: the pair goes through check_response. */
    struct wsrr_http_parser pq, pr;
    wsrr_http_parser_init(&pq, false, 0, 0);
    ssize_t r = wsrr_http_parse(&pq, data, size);
    if (r > 0) {
        wsrr_http_parser_init(&pr, true, 0, 0);
        ssize_t r2 = wsrr_http_parse(&pr, data + r, size - (size_t)r);
        if (r2 > 0) {
            struct wsrr_ws_info info;
            char err[160];
            int c = wsrr_handshake_check_response(
                wsrr_http_parser_head(&pq), wsrr_http_parser_head(&pr), &info, err, sizeof(err));
            if (c != 0 && c != 1 && c != -EPROTO)
                abort();
        }
        wsrr_http_parser_finish(&pr);
    }
    wsrr_http_parser_finish(&pq);

    /* The whole input as one Sec-WebSocket-Extensions value. */
    struct wsrr_ext exts[4];
    struct wsrr_ext_param params[8];
    char err[128];
    int n = wsrr_ext_parse((const char *)data, size, exts, 4, params, 8, err, sizeof(err));
    if (n > 4 || (n < 0 && n != -EBADMSG && n != -E2BIG))
        abort();
    wsrr_ext_parse((const char *)data, size, exts, 4, NULL, 0, err, sizeof(err));
    return 0;
}
