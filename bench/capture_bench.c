/* capture_bench.c — what recording costs: the capture writer's CPU time per
 * record and bytes per record on an echo-like load, and the reader's speed.
 * Prints figures; asserts nothing.
 *
 * usage: capture_bench [RECORDS] [PAYLOAD-BYTES] [zstd-level]
 */
#include "wsrr/capture.h"
#include "wsrr/frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    size_t plen = argc > 2 ? (size_t)atol(argv[2]) : 64;
    int level = argc > 3 ? atoi(argv[3]) : 1;
    char path[] = "/tmp/wsrr-bench-XXXXXX";
    int fd = mkstemp(path);
    close(fd);

    /* JSON-ish payloads that vary a little, like agent events */
    uint8_t *payload = malloc(plen);
    for (size_t i = 0; i < plen; i++)
        payload[i] =
            (uint8_t) "{\"type\":\"tool_executing\",\"step\":1,\"tool\":\"search\"} "[i % 52];

    char err[256];
    struct wsrr_capture_opts o = {.overwrite = true, .level = level};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, &o, err, sizeof(err));
    if (!w) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    uint8_t mask[4] = {1, 2, 3, 4};
    double c0 = cpu_seconds();
    uint64_t t0 = wsrr_now_ns();
    for (long i = 0; i < n; i++) {
        struct wsrr_record r = {
            .kind = WSRR_REC_FRAME, .conn = (uint32_t)(i % 50) + 1, .ts = WSRR_TS_NOW};
        r.u.frame.dir = (uint8_t)(i & 1);
        r.u.frame.fin = true;
        r.u.frame.opcode = WSRR_OP_TEXT;
        r.u.frame.len_width = 7;
        r.u.frame.len = plen;
        if (!(i & 1)) {
            r.u.frame.fflags = WSRR_FF_MASKED;
            memcpy(r.u.frame.mask, mask, 4);
            mask[0]++;
        }
        payload[plen / 2] = (uint8_t)('0' + i % 10);
        r.u.frame.payload = (struct wsrr_span){payload, plen};
        if (wsrr_capture_append(w, &r) < 0) {
            fprintf(stderr, "append failed: %s\n", wsrr_capture_writer_error(w));
            return 2;
        }
    }
    struct wsrr_capture_stats st;
    wsrr_capture_writer_stats(w, &st);
    wsrr_capture_writer_close(w, err, sizeof(err));
    double wall = (double)(wsrr_now_ns() - t0) / 1e9, cpu = cpu_seconds() - c0;

    printf("writer: %ld records of %zu-byte frames, zstd level %d\n", n, plen, level);
    printf("  %.0f ns CPU per record, %.2f M records per CPU-second (wall %.2f s)\n",
           cpu / (double)n * 1e9, (double)n / cpu / 1e6, wall);
    printf("  %.1f bytes per record on disk (%.1f raw), %llu batches, %.1f MB written\n",
           (double)st.bytes_out / (double)n, (double)st.bytes_in / (double)n,
           (unsigned long long)st.batches, (double)st.bytes_out / 1e6);
    printf("  = %.1f capture bytes per echo round trip (2 frames)\n",
           2.0 * (double)st.bytes_out / (double)n);

    c0 = cpu_seconds();
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    struct wsrr_record rec;
    long k = 0;
    while (wsrr_capture_reader_next(r, &rec) == 1)
        k++;
    cpu = cpu_seconds() - c0;
    wsrr_capture_reader_close(r);
    printf("reader: %ld records, %.0f ns CPU per record, %.0f MB/s of records\n", k,
           cpu / (double)k * 1e9, (double)st.bytes_in / cpu / 1e6);
    unlink(path);
    free(payload);
    return k == n ? 0 : 1;
}
