/* fuzz_jsonl.c — JSONL import over arbitrary lines.
 *
 * Each input line is parsed as a header and as a record. A record that
 * parses must render to a line that parses to the same bytes (import and
 * cat agree), and must encode to a record the decoder accepts. */
#include "wsrr/capture.h"
#include "wsrr/jsonl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_line(const char *line, size_t len)
{
    char err[256];
    struct wsrr_jsonl_header h;
    if (wsrr_jsonl_parse_header(line, len, &h, err, sizeof(err)) == 0)
        free(h.metadata);

    struct wsrr_record r;
    uint8_t *arena;
    if (wsrr_jsonl_parse_record(line, len, 1, &r, &arena, err, sizeof(err)) != 0)
        return;
    if (r.seq == 0) /* left out: the writer would number it */
        r.seq = 1;
    size_t n = wsrr_record_size(&r);
    if (n) {
        uint8_t *buf = malloc(n);
        wsrr_record_encode(buf, &r);
        struct wsrr_record d;
        if (wsrr_record_decode(buf, n, &d, err, sizeof(err)) != (ssize_t)n) {
            fprintf(stderr, "a record import accepted does not decode: %s\n", err);
            abort();
        }
        char *out = wsrr_jsonl_record(&d);
        if (!out)
            abort();
        struct wsrr_record again;
        uint8_t *arena2;
        if (wsrr_jsonl_parse_record(out, strlen(out), 1, &again, &arena2, err, sizeof(err)) != 0)
            abort();
        size_t m = wsrr_record_size(&again);
        uint8_t *buf2 = malloc(m);
        wsrr_record_encode(buf2, &again);
        if (m != n || memcmp(buf, buf2, n) != 0)
            abort();
        free(buf2);
        free(arena2);
        free(out);
        free(buf);
    }
    free(arena);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* lines are NUL-free text in practice, but any bytes must be survived */
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    char *p = text, *end = text + size;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        one_line(p, len);
        p += len + 1;
    }
    free(text);
    return 0;
}
