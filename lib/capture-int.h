/* capture-int.h — byte offsets of the capture container, shared by the
 * writer and the reader (docs/capture-format.md is the specification). */
#ifndef WSRR_CAPTURE_INT_H
#define WSRR_CAPTURE_INT_H

#include "wsrr/capture.h"

/* Every skippable frame: u32 magic, u32 payload size. */
#define SKIP_HDR 8

/* Our skippable payloads start with a 4-byte tag. */
#define TAG_HEADER  "WSRR"
#define TAG_BATCH   "WSRB"
#define TAG_TRAILER "WSRT"

/* File header payload. */
#define FH_TAG        0
#define FH_MAJOR      4
#define FH_MINOR      6
#define FH_INCOMPAT   8
#define FH_COMPAT     12
#define FH_FILE_ID    16
#define FH_START_WALL 32
#define FH_START_MONO 40
#define FH_META_LEN   48
#define FH_META       52 /* metadata, then a u32 CRC-32 of everything before it */
#define FH_MIN        (FH_META + 4)
#define FH_MAX_META   (1u << 20)

/* Batch header payload (fixed size). */
#define BH_TAG          0
#define BH_FILE_ID      4
#define BH_BATCH        20
#define BH_FIRST_SEQ    28
#define BH_COUNT        36
#define BH_FIRST_TS     40
#define BH_LAST_TS      48
#define BH_CSIZE        56
#define BH_DSIZE        60
#define BH_FRAME_CRC    64
#define BH_FLAGS        68
#define BH_RESERVED     72
#define BH_CRC          76
#define BH_SIZE         80
#define BATCH_HDR_TOTAL (SKIP_HDR + BH_SIZE)

/* Trailer payload (fixed size). */
#define TR_TAG      0
#define TR_FILE_ID  4
#define TR_BATCHES  20
#define TR_RECORDS  28
#define TR_LAST_SEQ 36
#define TR_LAST_TS  44
#define TR_END_WALL 52
#define TR_FLAGS    60
#define TR_CRC      64
#define TR_SIZE     68
#define TR_F_CLOSED 1u

/* Seek table (zstd seekable format): one entry per frame of the file before
 * it (skippable frames included, with decompressed size 0): u32 compressed
 * size, u32 decompressed size, u32 checksum (low 32 bits of XXH64 of the
 * frame's content); then the 9-byte footer. */
#define ST_ENTRY          12
#define ST_FOOTER         9
#define ST_F_CHECKSUM     0x80
#define ST_RESERVED_BITS  0x7C
#define XXH64_EMPTY_LOW32 0x51D8E999u /* XXH64 of no bytes (seed 0) is 0xEF46DB3751D8E999 */
#define TRAILER_TOTAL     (SKIP_HDR + TR_SIZE)

#endif
