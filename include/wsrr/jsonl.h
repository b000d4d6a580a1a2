/* wsrr/jsonl.h — the lossless JSON-lines form of a capture.
 *
 * `wsrr cat --jsonl` prints one header object, then one object per record;
 * `wsrr import --jsonl` turns such lines back into a capture, so that
 * cat | import | cat is byte-identical and a session can be edited with jq.
 * The mapping is specified in docs/capture-format.md ("JSON lines").
 *
 * Byte strings are written as JSON strings when they are valid UTF-8
 * without NUL, and as "<field>_b64" otherwise. Integers that do not fit a
 * double exactly (above 2^53) are written as decimal strings.
 */
#ifndef WSRR_JSONL_H
#define WSRR_JSONL_H

#include "wsrr/capture.h"

/* The header line for a capture. Returns a malloc'd NUL-terminated line
 * without newline, or NULL on allocation failure. */
char *wsrr_jsonl_header(const struct wsrr_capture_info *info);

/* One record as a line (malloc'd, no newline), or NULL on allocation
 * failure. */
char *wsrr_jsonl_record(const struct wsrr_record *r);

/* What a header line holds. metadata is malloc'd JSON text. */
struct wsrr_jsonl_header {
    uint16_t minor;
    uint32_t compat_flags;
    uint64_t start_wall_ns, start_mono_ns;
    char *metadata;
};

/* Parse a header line. Returns 0, or -EINVAL with err as "column C: what
 * was expected". Free h->metadata with free(). */
int wsrr_jsonl_parse_header(const char *line, size_t len, struct wsrr_jsonl_header *h, char *err,
                            size_t errlen);

/* Parse a record line into r. Byte fields are decoded into `arena`, which
 * the parser allocates (free it with free() once r is no longer needed).
 * seq absent means 0 (the writer assigns the next); ts absent means
 * `default_ts`. Returns 0, or -EINVAL with err naming the column or key and
 * what was expected. Unknown keys are errors. */
int wsrr_jsonl_parse_record(const char *line, size_t len, uint64_t default_ts,
                            struct wsrr_record *r, uint8_t **arena, char *err, size_t errlen);

#endif
