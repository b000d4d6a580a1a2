/* cmd_import.c — `wsrr import --jsonl`: JSON lines back into a capture. */
#include "tool.h"
#include "wsrr/capture.h"
#include "wsrr/jsonl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: wsrr import --jsonl IN -o OUT.wsrr [--force]\n"
    "\n"
    "Turn the JSON lines of 'wsrr cat --jsonl' (possibly edited) back into a\n"
    "capture. IN may be '-' for standard input, OUT '-' for standard output.\n"
    "'wsrr cat --jsonl A | wsrr import --jsonl - -o B; wsrr cat --jsonl B' prints\n"
    "exactly what the first cat printed.\n"
    "\n"
    "The first line must be the header object. In record lines, \"seq\" may be\n"
    "left out (the next number is used), \"ts\" too (the previous record's time),\n"
    "and a frame's \"len\" follows its payload unless given. Unknown keys are\n"
    "errors, reported with the line and column.\n"
    "\n"
    "  --jsonl IN       the JSON lines to read\n"
    "  -o, --output OUT the capture to write (never an existing file, unless --force)\n"
    "  --force          replace OUT if it exists\n"
    "  -h, --help       this text\n";

static int run(int argc, char **argv);

const struct verb verb_import = {"import", "turn JSON lines back into a capture", usage, run};

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static int run(int argc, char **argv)
{
    static const struct option longopts[] = {{"jsonl", required_argument, NULL, 'j'},
                                             {"output", required_argument, NULL, 'o'},
                                             {"force", no_argument, NULL, 'f'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *in = NULL, *out = NULL;
    bool force = false;
    int c;
    while ((c = tool_getopt(&verb_import, argc, argv, "o:", longopts)) != -1) {
        switch (c) {
        case 'h': return EXIT_OK;
        case 'j': in = optarg; break;
        case 'o': out = optarg; break;
        case 'f': force = true; break;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc)
        return tool_usage_error("import", "unexpected argument '%s'", argv[optind]);
    if (!in)
        return tool_usage_error("import", "missing --jsonl IN");
    if (!out)
        return tool_usage_error("import", "missing -o OUT");

    FILE *f = strcmp(in, "-") ? fopen(in, "r") : stdin;
    if (!f)
        return tool_fail("import", EXIT_BAD_INPUT, "cannot open %s: %s", in, strerror(errno));
    const char *inname = strcmp(in, "-") ? in : "standard input";

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long lineno = 0;
    char err[512];
    int status = EXIT_OK;
    struct wsrr_capture_writer *w = NULL;
    struct tool_output output;
    struct wsrr_jsonl_header h = {0};
    uint64_t last_ts = 0, records = 0;

    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (blank(line, (size_t)len))
            continue;
        if (!w) {
            if (wsrr_jsonl_parse_header(line, (size_t)len, &h, err, sizeof(err)) < 0) {
                status = tool_fail("import", EXIT_BAD_INPUT, "%s:%lu: %s", inname, lineno, err);
                break;
            }
            struct wsrr_capture_opts o = {
                .metadata = h.metadata,
                .flush_interval_ns = UINT64_MAX, /* batches by size only: deterministic */
                .compat_flags = h.compat_flags,
                .start_wall_ns = h.start_wall_ns,
                .start_mono_ns = h.start_mono_ns,
                .keep_start = true,
                .keep_minor = true,
                .minor = h.minor,
            };
            if ((status = tool_output_open("import", &output, out, force, in, &o)) != EXIT_OK)
                break;
            w = output.w;
            continue;
        }
        struct wsrr_record r;
        uint8_t *arena;
        if (wsrr_jsonl_parse_record(line, (size_t)len, last_ts, &r, &arena, err, sizeof(err)) < 0) {
            status = tool_fail("import", EXIT_BAD_INPUT, "%s:%lu: %s", inname, lineno, err);
            break;
        }
        int rc = wsrr_capture_append(w, &r);
        free(arena);
        if (rc < 0) {
            status = tool_fail(
                "import", EXIT_BAD_INPUT, "%s:%lu: cannot write the record: %s", inname, lineno,
                rc == -E2BIG ? "too large for the format" : wsrr_capture_writer_error(w));
            break;
        }
        last_ts = r.ts;
        records++;
    }
    if (status == EXIT_OK && ferror(f))
        status = tool_fail("import", EXIT_BAD_INPUT, "error reading %s", inname);
    if (status == EXIT_OK && !w)
        status = tool_fail("import", EXIT_BAD_INPUT, "%s: no header line (is it empty?)", inname);
    free(line);
    free(h.metadata);
    if (f != stdin)
        fclose(f);

    if (!w)
        return status;
    /* a half-imported capture is worse than none */
    int rc = tool_output_close("import", &output, status == EXIT_OK);
    return status != EXIT_OK ? status : rc;
}
