/* fuzz_capture.c — the capture reader over arbitrary bytes.
 *
 * The input is read as a capture from memory with a small batch limit (so
 * forged sizes cannot ask for more than a few MiB), and also decoded as raw
 * batch content. Every record is re-encoded and decoded again and must come
 * back identical, and must render as a JSON line that parses back to the
 * same bytes. */
#include "wsrr/capture.h"
#include "wsrr/jsonl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A record must survive re-encoding and the JSONL round trip unchanged. */
static void check_record(const struct wsrr_record *rec)
{
    char err[256];
    size_t n = wsrr_record_size(rec);
    if (!n)
        abort();
    uint8_t *buf = malloc(n);
    if (wsrr_record_encode(buf, rec) != n)
        abort();
    struct wsrr_record back;
    if (wsrr_record_decode(buf, n, &back, err, sizeof(err)) != (ssize_t)n)
        abort();
    char *line = wsrr_jsonl_record(rec);
    if (line) {
        uint8_t *arena;
        struct wsrr_record parsed;
        if (wsrr_jsonl_parse_record(line, strlen(line), 0, &parsed, &arena, err, sizeof(err)) !=
            0) {
            fprintf(stderr, "import refuses what cat printed: %s\n%s\n", err, line);
            abort();
        }
        size_t m = wsrr_record_size(&parsed);
        uint8_t *buf2 = malloc(m);
        wsrr_record_encode(buf2, &parsed);
        if (m != n || memcmp(buf, buf2, n) != 0)
            abort(); /* lossless */
        free(buf2);
        free(arena);
        free(line);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];

    /* The checksums keep random bytes out of committed batches, so the
     * record decoder is also fed the input directly, as batch content. */
    size_t off = 0;
    struct wsrr_record rec;
    while (off < size) {
        ssize_t n = wsrr_record_decode(data + off, size - off, &rec, err, sizeof(err));
        if (n <= 0)
            break;
        check_record(&rec);
        off += (size_t)n;
    }

    struct wsrr_capture_reader *r = wsrr_capture_reader_mem(data, size, err, sizeof(err));
    if (!r)
        return 0;
    wsrr_capture_reader_set_max_batch(r, 4 << 20);
    while (wsrr_capture_reader_next(r, &rec) == 1)
        check_record(&rec);
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(r, &s);
    size_t nd;
    wsrr_capture_reader_damage(r, &nd);
    char *h = wsrr_jsonl_header(wsrr_capture_reader_info(r));
    free(h);
    wsrr_capture_reader_close(r);
    return 0;
}
