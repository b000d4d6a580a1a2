/* cmd_verify.c — `wsrr verify` and `wsrr recover`: check a capture, and
 * rescue what is intact in a damaged one. */
#include "tool.h"
#include "wsrr/capture.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char verify_usage[] =
    "usage: wsrr verify FILE... [--json] [--quiet]\n"
    "\n"
    "Check captures: every batch's checksums, the record framing, the trailer and\n"
    "the seek table. For a damaged file (a crash cut it short, a flipped byte),\n"
    "say how many records are intact and where each damaged range starts.\n"
    "\n"
    "  --json           one JSON object per file on standard output\n"
    "  -q, --quiet      print only problems\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit status: 0 every file is clean; 1 a file is damaged or was not closed\n"
    "cleanly ('wsrr recover' rescues what is intact); 2 a file is not a capture\n"
    "this wsrr can read (or another usage error).\n";

static const char recover_usage[] =
    "usage: wsrr recover FILE -o OUT [--force]\n"
    "\n"
    "Write every intact record of FILE (a capture cut short by a crash, or with\n"
    "damaged batches) to OUT as a clean capture. The records keep their sequence\n"
    "numbers and times, so gaps show what was lost; the metadata gains a\n"
    "\"recovered\" object describing the damage.\n"
    "\n"
    "  -o, --output OUT the capture to write\n"
    "  --force          replace OUT if it exists\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit status: 0 OUT was written; 2 FILE is not a capture, or OUT cannot be\n"
    "written.\n";

static int run_verify(int argc, char **argv);
static int run_recover(int argc, char **argv);

const struct verb verb_verify = {"verify", "check a capture; report damage and its offset",
                                 verify_usage, run_verify};
const struct verb verb_recover = {"recover", "rescue the intact records of a damaged capture",
                                  recover_usage, run_recover};

struct scan {
    uint64_t records, conns;
    struct wsrr_capture_summary sum;
};

/* Read every record; count distinct connections with a small bitmap that
 * grows as ids grow (ids are dense in practice). */
static int scan_file(struct wsrr_capture_reader *r, struct scan *s)
{
    uint8_t *seen = NULL;
    size_t seen_cap = 0;
    struct wsrr_record rec;
    int rc;
    memset(s, 0, sizeof(*s));
    while ((rc = wsrr_capture_reader_next(r, &rec)) == 1) {
        s->records++;
        size_t byte = rec.conn / 8;
        if (byte >= seen_cap && rec.conn < (1u << 24)) {
            size_t ncap = (byte + 1) * 2;
            uint8_t *n = realloc(seen, ncap);
            if (n) {
                memset(n + seen_cap, 0, ncap - seen_cap);
                seen = n;
                seen_cap = ncap;
            }
        }
        if (rec.conn && byte < seen_cap && !(seen[byte] & (1u << (rec.conn % 8)))) {
            seen[byte] |= (uint8_t)(1u << (rec.conn % 8));
            s->conns++;
        }
    }
    free(seen);
    wsrr_capture_reader_summary(r, &s->sum);
    return rc;
}

/* "damage_total" and the "damage" entries kept by the reader, into o. */
static void add_damage_json(cJSON *o, const struct wsrr_capture_reader *r)
{
    struct wsrr_capture_summary s;
    size_t nd;
    const struct wsrr_capture_damage *d = wsrr_capture_reader_damage(r, &nd);
    wsrr_capture_reader_summary(r, &s);
    cJSON_AddNumberToObject(o, "damage_total", (double)s.ndamage);
    cJSON *da = cJSON_AddArrayToObject(o, "damage");
    for (size_t i = 0; i < nd; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "offset", (double)d[i].offset);
        cJSON_AddNumberToObject(e, "length", (double)d[i].length);
        cJSON_AddStringToObject(e, "what", d[i].what);
        cJSON_AddItemToArray(da, e);
    }
}

static int verify_one(const char *path, bool json, bool quiet)
{
    char err[512];
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    if (!r) {
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "file", path);
            cJSON_AddStringToObject(o, "status", "not_a_capture");
            cJSON_AddStringToObject(o, "error", err);
            char *t = cJSON_PrintUnformatted(o);
            puts(t);
            free(t);
            cJSON_Delete(o);
        }
        fprintf(stderr, "wsrr verify: %s\n", err);
        return EXIT_BAD_INPUT;
    }
    struct scan s;
    int rc = scan_file(r, &s);
    const struct wsrr_capture_info *info = wsrr_capture_reader_info(r);
    size_t nd;
    const struct wsrr_capture_damage *d = wsrr_capture_reader_damage(r, &nd);
    bool clean = rc == 0 && s.sum.consistent;
    double secs = s.records ? (double)(s.sum.last_ts - s.sum.first_ts) / 1e9 : 0;

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "file", path);
        cJSON_AddStringToObject(o, "status", clean ? "ok" : "damaged");
        char ver[16];
        snprintf(ver, sizeof(ver), "%u.%u", info->major, info->minor);
        cJSON_AddStringToObject(o, "version", ver);
        cJSON_AddNumberToObject(o, "records", (double)s.records);
        cJSON_AddNumberToObject(o, "batches", (double)s.sum.batches);
        cJSON_AddNumberToObject(o, "connections", (double)s.conns);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "bytes", (double)s.sum.bytes);
        cJSON_AddBoolToObject(o, "closed_cleanly", s.sum.trailer);
        cJSON_AddBoolToObject(o, "header_ok", info->header_ok);
        add_damage_json(o, r);
        char *t = cJSON_PrintUnformatted(o);
        puts(t);
        free(t);
        cJSON_Delete(o);
    } else {
        for (size_t i = 0; i < nd; i++)
            printf("%s: offset %" PRIu64 ": %s\n", path, d[i].offset, d[i].what);
        if (s.sum.ndamage > nd)
            printf("%s: ... and %zu more damaged ranges\n", path, s.sum.ndamage - nd);
        if (rc < 0)
            printf("%s: read error after %" PRIu64 " bytes: %s\n", path, s.sum.bytes,
                   strerror(-rc));
        if (clean) {
            if (!quiet)
                printf("%s: ok: capture %u.%u, %" PRIu64 " records in %" PRIu64 " batch%s, %" PRIu64
                       " connection%s, %.3f s, closed cleanly\n",
                       path, info->major, info->minor, s.records, s.sum.batches,
                       s.sum.batches == 1 ? "" : "es", s.conns, s.conns == 1 ? "" : "s", secs);
        } else {
            printf("%s: damaged: %" PRIu64 " records recovered from %" PRIu64 " intact batches",
                   path, s.records, s.sum.batches);
            if (nd)
                printf("; damage starts at offset %" PRIu64, d[0].offset);
            if (!s.sum.trailer)
                printf("; no end-of-file trailer (the writer did not close it: crash or kill)");
            else if (!s.sum.consistent && s.sum.trailer_records != s.records)
                printf("; the trailer lists %" PRIu64 " records", s.sum.trailer_records);
            printf("\n");
        }
    }
    wsrr_capture_reader_close(r);
    return clean ? EXIT_OK : EXIT_FAILURE_FOUND;
}

static int run_verify(int argc, char **argv)
{
    static const struct option longopts[] = {{"json", no_argument, NULL, 'j'},
                                             {"quiet", no_argument, NULL, 'q'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    bool json = false, quiet = false;
    int c;
    while ((c = tool_getopt(&verb_verify, argc, argv, "q", longopts)) != -1) {
        switch (c) {
        case 'h': return EXIT_OK;
        case 'j': json = true; break;
        case 'q': quiet = true; break;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind == argc)
        return tool_usage_error("verify", "missing FILE");
    int worst = EXIT_OK;
    for (int i = optind; i < argc; i++) {
        int rc = verify_one(argv[i], json, quiet);
        if (rc > worst)
            worst = rc;
    }
    return worst;
}

/* Metadata of the recovered file: the original's, plus what recover did. */
static char *recovered_metadata(const struct wsrr_capture_info *info, const char *path,
                                const struct wsrr_capture_reader *r)
{
    cJSON *m = cJSON_ParseWithLength(info->metadata, info->metadata_len);
    if (!cJSON_IsObject(m)) {
        cJSON_Delete(m);
        m = cJSON_CreateObject();
    }
    cJSON_DeleteItemFromObjectCaseSensitive(m, "recovered");
    cJSON *rec = cJSON_AddObjectToObject(m, "recovered");
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(r, &s);
    cJSON_AddStringToObject(rec, "from", path);
    cJSON_AddNumberToObject(rec, "records", (double)s.records);
    cJSON_AddBoolToObject(rec, "header_ok", info->header_ok);
    cJSON_AddBoolToObject(rec, "had_trailer", s.trailer);
    add_damage_json(rec, r);
    char *t = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return t;
}

static int run_recover(int argc, char **argv)
{
    static const struct option longopts[] = {{"output", required_argument, NULL, 'o'},
                                             {"force", no_argument, NULL, 'f'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *out = NULL;
    bool force = false;
    int c;
    while ((c = tool_getopt(&verb_recover, argc, argv, "o:", longopts)) != -1) {
        switch (c) {
        case 'h': return EXIT_OK;
        case 'o': out = optarg; break;
        case 'f': force = true; break;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind + 1 != argc)
        return tool_usage_error("recover", optind == argc ? "missing FILE" : "one FILE at a time");
    if (!out)
        return tool_usage_error("recover", "missing -o OUT");
    const char *path = argv[optind];

    /* Two passes: the first finds the damage (for the metadata), the second
     * copies. Captures are read at hundreds of MB/s, and this keeps memory
     * flat whatever the file's size; it needs a file that can be read twice. */
    struct stat st;
    if (strcmp(path, "-") == 0 || (stat(path, &st) == 0 && !S_ISREG(st.st_mode)))
        return tool_usage_error("recover", "FILE must be a regular file (it is read twice), "
                                           "not standard input or a pipe");
    char err[512];
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    if (!r)
        return tool_fail("recover", EXIT_BAD_INPUT, "%s", err);
    struct scan s;
    int rc = scan_file(r, &s);
    if (rc < 0) {
        wsrr_capture_reader_close(r);
        return tool_fail("recover", EXIT_BAD_INPUT, "%s: read error: %s", path, strerror(-rc));
    }
    char *meta = recovered_metadata(wsrr_capture_reader_info(r), path, r);
    const struct wsrr_capture_info *info = wsrr_capture_reader_info(r);
    struct wsrr_capture_opts o = {
        .metadata = meta,
        .flush_interval_ns = UINT64_MAX,
        .compat_flags = info->compat_flags,
        .start_wall_ns = info->start_wall_ns,
        .start_mono_ns = info->start_mono_ns,
        .keep_start = true,
        .keep_minor = true,
        .minor = info->minor,
        .mode = st.st_mode & 0777, /* a raw (0600) capture stays private */
    };
    size_t nd;
    const struct wsrr_capture_damage *d = wsrr_capture_reader_damage(r, &nd);
    uint64_t first_damage = nd ? d[0].offset : 0;
    size_t ndamage = s.sum.ndamage;
    wsrr_capture_reader_close(r);

    struct tool_output output;
    int status = tool_output_open("recover", &output, out, force, path, &o);
    free(meta);
    if (status != EXIT_OK)
        return status;
    r = wsrr_capture_reader_open(path, err, sizeof(err));
    if (!r) {
        tool_output_close("recover", &output, false);
        return tool_fail("recover", EXIT_BAD_INPUT, "%s", err);
    }
    struct wsrr_record rec;
    uint64_t n = 0;
    const char *failed = NULL;
    while ((rc = wsrr_capture_reader_next(r, &rec)) == 1) {
        if (wsrr_capture_append(output.w, &rec) < 0) {
            failed = wsrr_capture_writer_error(output.w);
            break;
        }
        n++;
    }
    wsrr_capture_reader_close(r);
    if (rc < 0 || failed) {
        if (failed)
            fprintf(stderr, "wsrr recover: writing %s: %s\n", out, failed);
        else
            fprintf(stderr, "wsrr recover: reading %s: %s\n", path, strerror(-rc));
        tool_output_close("recover", &output, false);
        return EXIT_BAD_INPUT;
    }
    if ((status = tool_output_close("recover", &output, true)) != EXIT_OK)
        return status;
    printf("%s: %" PRIu64 " intact records written to %s", path, n, out);
    if (ndamage)
        printf("; %zu damaged range%s skipped, the first at offset %" PRIu64, ndamage,
               ndamage == 1 ? "" : "s", first_damage);
    if (!s.sum.trailer)
        printf("; the original had no trailer");
    printf("\n");
    return EXIT_OK;
}
