/* streams2capture.c — turn a relay's stream log into a capture, through the
 * tap (the proxy's recorder), for tests against independent peers and for
 * the sample captures.
 *
 * Log format (written by wsrelay.py): "WSRRSTREAMS1\n", u64 start wall
 * clock (ns since the epoch), then events: u8 type, u32 conn, u64 ts (ns
 * since start), u32 len, len bytes. Types: 0 client bytes, 1 server bytes,
 * 2 open (bytes: "client-addr upstream-url"), 3 end, 4 client leg RST,
 * 5 upstream leg RST, 6 client FIN, 7 upstream FIN. Little-endian.
 *
 * usage: streams2capture LOG OUT.wsrr [METADATA-JSON [BATCH-BYTES]]
 */
#include "wsrr/capture.h"
#include "wsrr/tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONNS 4096

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: streams2capture LOG OUT.wsrr [METADATA-JSON]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    char magic[13];
    uint8_t b8[8];
    if (fread(magic, 1, 13, f) != 13 || memcmp(magic, "WSRRSTREAMS1\n", 13) != 0 ||
        fread(b8, 1, 8, f) != 8) {
        fprintf(stderr, "%s: offset 0: not a stream log (expected WSRRSTREAMS1)\n", argv[1]);
        return 2;
    }
    char err[256];
    struct wsrr_capture_opts o = {.metadata = argc > 3 ? argv[3] : NULL,
                                  .start_wall_ns = wsrr_le64(b8),
                                  .start_mono_ns = 1,
                                  .flush_interval_ns = UINT64_MAX,
                                  .batch_bytes = argc > 4 ? strtoul(argv[4], NULL, 10) : 0,
                                  .overwrite = true};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(argv[2], &o, err, sizeof(err));
    if (!w) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    static struct wsrr_tap *taps[MAX_CONNS];
    uint8_t hdr[17];
    uint8_t *buf = NULL;
    size_t cap = 0;
    long off = 21;
    int rc = 0;
    uint64_t last_ts = 0;
    while (fread(hdr, 1, sizeof(hdr), f) == sizeof(hdr)) {
        uint8_t type = hdr[0];
        uint32_t conn = wsrr_le32(hdr + 1);
        uint64_t ts = wsrr_le64(hdr + 5);
        uint32_t len = wsrr_le32(hdr + 13);
        last_ts = ts;
        if (len > cap) {
            cap = len;
            buf = realloc(buf, cap);
        }
        if (len && fread(buf, 1, len, f) != len) {
            fprintf(stderr, "%s: offset %ld: event truncated\n", argv[1], off);
            rc = 2;
            break;
        }
        off += (long)sizeof(hdr) + len;
        if (conn == 0 || conn >= MAX_CONNS) {
            fprintf(stderr, "%s: offset %ld: connection id %u out of range\n", argv[1], off, conn);
            rc = 2;
            break;
        }
        struct wsrr_tap *t = taps[conn];
        if (type == 2) {
            t = taps[conn] = wsrr_tap_new(w, conn, NULL);
            const uint8_t *sp = memchr(buf, ' ', len);
            struct wsrr_rec_open open = {0};
            open.client = (struct wsrr_span){buf, sp ? (size_t)(sp - buf) : len};
            if (sp)
                open.upstream = (struct wsrr_span){sp + 1, len - (size_t)(sp + 1 - buf)};
            wsrr_tap_open(t, &open, ts);
            continue;
        }
        if (!t) {
            fprintf(stderr, "%s: offset %ld: event for connection %u before its open\n", argv[1],
                    off, conn);
            rc = 2;
            break;
        }
        switch (type) {
        case 0:
        case 1: wsrr_tap_feed(t, type == 0 ? WSRR_DIR_C2S : WSRR_DIR_S2C, buf, len, ts); break;
        case 3:
            wsrr_tap_end(t, ts);
            wsrr_tap_free(t);
            taps[conn] = NULL;
            break;
        case 4:
        case 5:
            wsrr_tap_tcp(t, type == 4 ? WSRR_LEG_CLIENT : WSRR_LEG_UPSTREAM, WSRR_TCP_RST,
                         ECONNRESET, NULL, ts);
            break;
        case 6:
        case 7:
            wsrr_tap_tcp(t, type == 6 ? WSRR_LEG_CLIENT : WSRR_LEG_UPSTREAM, WSRR_TCP_FIN, 0, NULL,
                         ts);
            break;
        default:
            fprintf(stderr, "%s: offset %ld: unknown event type %u\n", argv[1], off, type);
            rc = 2;
        }
        if (rc)
            break;
    }
    for (int i = 0; i < MAX_CONNS; i++)
        if (taps[i]) {
            wsrr_tap_end(taps[i], last_ts);
            wsrr_tap_free(taps[i]);
        }
    free(buf);
    fclose(f);
    if (wsrr_capture_writer_close(w, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    return rc;
}
