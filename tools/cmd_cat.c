/* cmd_cat.c — `wsrr cat`: a capture as readable lines or lossless JSONL. */
#include "tool.h"
#include "wsrr/capture.h"
#include "wsrr/frame.h"
#include "wsrr/jsonl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: wsrr cat FILE [--jsonl] [--conn ID] [--dir client|server] [--kind KIND]\n"
    "\n"
    "Print the records of a capture in their global order, one line each.\n"
    "FILE may be '-' for standard input.\n"
    "\n"
    "  --jsonl          lossless JSON lines: a header object, then one object per\n"
    "                   record (text payloads as text, binary as base64); 'wsrr\n"
    "                   import --jsonl' turns them back into a capture\n"
    "  --conn ID        only records of connection ID\n"
    "  --dir SIDE       only frames sent by SIDE (client or server); other records\n"
    "                   of the connection are kept\n"
    "  --kind KIND      only records of KIND (open, request, response, frame,\n"
    "                   close, tcp, fault, note)\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit status: 0 when the whole file was read, 1 when damage was skipped (the\n"
    "damage is reported on standard error), 2 when FILE is not a capture.\n";

static int run(int argc, char **argv);

const struct verb verb_cat = {"cat", "print a capture (readable, or lossless JSONL)", usage, run};

/* Printable preview of a payload: at most `max` characters of text, with
 * control bytes escaped; binary shown as hex. */
static void preview(FILE *out, struct wsrr_span s, bool text, size_t max)
{
    if (!text) {
        size_t n = s.n < max / 2 ? s.n : max / 2;
        fputc('<', out);
        for (size_t i = 0; i < n; i++)
            fprintf(out, "%02x", s.p[i]);
        if (n < s.n)
            fprintf(out, "...+%zu", s.n - n);
        fputc('>', out);
        return;
    }
    /* bytes of invalid UTF-8 are escaped too (0x9b is CSI on some terminals) */
    bool utf8 = wsrr_utf8_valid(s.p, s.n);
    size_t shown = 0, i = 0;
    for (; i < s.n && shown < max; i++, shown++) {
        uint8_t c = s.p[i];
        if (c == '\\')
            fputs("\\\\", out);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '\r')
            fputs("\\r", out);
        else if (c == '\t')
            fputs("\\t", out);
        else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
            fprintf(out, "\\x%02x", c);
        else
            fputc(c, out);
    }
    if (i < s.n)
        fprintf(out, "...+%zu", s.n - i);
}

/* Captured strings go through the escaping preview: bytes from the network
 * never reach the terminal raw. */
static void text(FILE *out, struct wsrr_span s)
{
    preview(out, s, true, 200);
}

static bool is_text(struct wsrr_span s)
{
    return wsrr_utf8_valid(s.p, s.n);
}

/* The first line of an HTTP head. */
static void first_line(FILE *out, struct wsrr_span h)
{
    size_t n = 0;
    while (n < h.n && h.p[n] != '\r' && h.p[n] != '\n')
        n++;
    preview(out, (struct wsrr_span){h.p, n}, true, 120);
}

static void print_text(FILE *out, const struct wsrr_record *r)
{
    fprintf(out, "#%-5" PRIu64 " %4" PRIu64 ".%06" PRIu64 " c%-3u ", r->seq, r->ts / 1000000000u,
            r->ts / 1000 % 1000000, r->conn);
    const char *kind = wsrr_rec_kind_name(r->kind);
    if (kind)
        fprintf(out, "%-8s ", kind);
    else
        fprintf(out, "kind%-4u ", r->kind);

    switch (kind ? r->kind : 0) {
    case WSRR_REC_OPEN: {
        const struct wsrr_rec_open *o = &r->u.open;
        text(out, o->client);
        fputs(" -> ", out);
        text(out, o->upstream);
        if (o->listen.n) {
            fputs(" via ", out);
            text(out, o->listen);
        }
        if (o->client_tls.n) {
            fputs(" client-tls=[", out);
            text(out, o->client_tls);
            fputc(']', out);
        }
        if (o->sni.n) {
            fputs(" sni=", out);
            text(out, o->sni);
        }
        if (o->upstream_tls.n) {
            fputs(" upstream-tls=[", out);
            text(out, o->upstream_tls);
            fputc(']', out);
        }
        if (o->flags & WSRR_OF_UPSTREAM_INSECURE)
            fputs(" (upstream certificate NOT verified)", out);
        break;
    }
    case WSRR_REC_REQUEST:
    case WSRR_REC_RESPONSE:
        first_line(out, r->u.http.head);
        fprintf(out, " (%zu-byte head)", r->u.http.head.n);
        break;
    case WSRR_REC_FRAME: {
        const struct wsrr_rec_frame *f = &r->u.frame;
        fprintf(out, "%s %s%s", f->dir == WSRR_DIR_C2S ? "C>S" : "S>C", wsrr_opcode_name(f->opcode),
                f->fin ? "" : " (more)");
        for (int b = 0; b < 3; b++)
            if (f->rsv & (4 >> b))
                fprintf(out, " rsv%d", b + 1);
        fprintf(out, " %" PRIu64 "B", f->len);
        if (f->violations) {
            char v[512];
            wsrr_frame_violations_format(f->violations, v, sizeof(v));
            fprintf(out, " !%s", v);
        }
        if (f->opcode == WSRR_OP_CLOSE) {
            if (f->payload.n >= 2) {
                uint16_t code = wsrr_be16(f->payload.p);
                fprintf(out, " %u (%s)", code, wsrr_close_code_name(code));
                if (f->payload.n > 2) {
                    fputs(": ", out);
                    preview(out, (struct wsrr_span){f->payload.p + 2, f->payload.n - 2}, true, 123);
                }
            }
        } else if (f->fflags & WSRR_FF_MESSAGE) {
            fprintf(out, " -> %zuB inflated ", f->message.n);
            preview(out, f->message, is_text(f->message), 100);
        } else if (f->payload.n) {
            fputc(' ', out);
            bool text = f->opcode != WSRR_OP_BINARY && !(f->rsv & WSRR_RSV1) && is_text(f->payload);
            preview(out, f->payload, text, 100);
        }
        if (f->fflags & WSRR_FF_INFLATE_ERROR)
            fputs(" (inflate failed)", out);
        if (r->flags & WSRR_RF_TRUNCATED)
            fprintf(out, " (recorded %zu of %" PRIu64 " bytes)", f->payload.n, f->len);
        break;
    }
    case WSRR_REC_CLOSE: {
        const struct wsrr_rec_close *c = &r->u.close;
        const char *side = wsrr_close_side_name(c->side);
        if (c->side == WSRR_SIDE_NONE)
            fputs("no close frame: the transport ended (abnormal, 1006 to a client)", out);
        else
            fprintf(out, "started by %s", side ? side : "?");
        if (c->cflags & WSRR_CF_HAS_CODE)
            fprintf(out, " %u (%s)", c->code, wsrr_close_code_name(c->code));
        if (c->reason.n) {
            fputs(": ", out);
            preview(out, c->reason, true, 123);
        }
        if (c->side != WSRR_SIDE_NONE)
            fputs(c->cflags & WSRR_CF_CLEAN ? ", answered (clean)" : ", never answered", out);
        break;
    }
    case WSRR_REC_TCP: {
        const struct wsrr_rec_tcp *t = &r->u.tcp;
        const char *ev = wsrr_tcp_event_name(t->event);
        fprintf(out, "%s %s", t->leg == WSRR_LEG_CLIENT ? "client-leg" : "upstream-leg",
                ev ? ev : "?");
        if (t->err)
            fprintf(out, " (%s)", strerror(t->err));
        if (t->detail.n) {
            fputs(": ", out);
            text(out, t->detail);
        }
        break;
    }
    case WSRR_REC_FAULT: {
        const struct wsrr_rec_fault *f = &r->u.fault;
        fprintf(out, "rule %.*s: %.*s", (int)f->rule.n, f->rule.p, (int)f->action.n, f->action.p);
        if (f->target)
            fprintf(out, " on #%" PRIu64, f->target);
        if (f->detail.n)
            fprintf(out, " %.*s", (int)f->detail.n, f->detail.p);
        break;
    }
    case WSRR_REC_NOTE: preview(out, r->u.note.text, true, 200); break;
    case WSRR_REC_BODY: {
        const struct wsrr_rec_body *b = &r->u.body;
        fprintf(out, "%s %" PRIu64 "B%s%s ", b->dir == WSRR_DIR_C2S ? "C>S" : "S>C", b->len,
                (b->bflags & WSRR_BF_CHUNKED) ? " chunked" : "",
                (b->bflags & WSRR_BF_COMPLETE) ? "" : " (cut short)");
        preview(out, b->data, is_text(b->data), 100);
        if (r->flags & WSRR_RF_TRUNCATED)
            fprintf(out, " (recorded %zu of %" PRIu64 " bytes)", b->data.n, b->len);
        break;
    }
    default: fprintf(out, "(%zu-byte body of an unknown kind)", r->u.raw.body.n); break;
    }
    if (r->flags & WSRR_RF_REDACTED)
        fputs(" [redacted]", out);
    if (r->flags & WSRR_RF_INJECTED)
        fputs(" [injected]", out);
    fputc('\n', out);
}

static int run(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"jsonl", no_argument, NULL, 'j'},     {"conn", required_argument, NULL, 'c'},
        {"dir", required_argument, NULL, 'd'}, {"kind", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0}};
    bool jsonl = false;
    int64_t conn = -1, dir = -1, kind = -1;
    int c;
    while ((c = tool_getopt(&verb_cat, argc, argv, "", longopts)) != -1) {
        uint64_t v;
        switch (c) {
        case 'h': return EXIT_OK;
        case 'j': jsonl = true; break;
        case 'c':
            if (!tool_parse_u64(optarg, UINT32_MAX, &v))
                return tool_usage_error("cat", "--conn: expected a connection id, got '%s'",
                                        optarg);
            conn = (int64_t)v;
            break;
        case 'd':
            if (!strcmp(optarg, "client"))
                dir = WSRR_DIR_C2S;
            else if (!strcmp(optarg, "server"))
                dir = WSRR_DIR_S2C;
            else
                return tool_usage_error("cat", "--dir: expected client or server, got '%s'",
                                        optarg);
            break;
        case 'k':
            kind = wsrr_rec_kind_by_name(optarg);
            if (kind < 0)
                return tool_usage_error("cat", "--kind: unknown record kind '%s'", optarg);
            break;
        default: return EXIT_BAD_INPUT;
        }
    }
    if (optind + 1 != argc)
        return tool_usage_error("cat", optind == argc ? "missing FILE" : "one FILE at a time");
    const char *path = argv[optind];

    char err[512];
    struct wsrr_capture_reader *r = wsrr_capture_reader_open(path, err, sizeof(err));
    if (!r)
        return tool_fail("cat", EXIT_BAD_INPUT, "%s", err);

    if (jsonl) {
        char *line = wsrr_jsonl_header(wsrr_capture_reader_info(r));
        if (!line) {
            wsrr_capture_reader_close(r);
            return tool_fail("cat", EXIT_BAD_INPUT, "out of memory");
        }
        puts(line);
        free(line);
    }

    struct wsrr_record rec;
    int rc;
    while ((rc = wsrr_capture_reader_next(r, &rec)) == 1) {
        if (conn >= 0 && rec.conn != (uint64_t)conn)
            continue;
        if (kind >= 0 && rec.kind != kind)
            continue;
        if (dir >= 0 && rec.kind == WSRR_REC_FRAME && rec.u.frame.dir != dir)
            continue;
        if (jsonl) {
            char *line = wsrr_jsonl_record(&rec);
            if (!line) {
                rc = -ENOMEM;
                break;
            }
            puts(line);
            free(line);
        } else {
            print_text(stdout, &rec);
        }
    }
    fflush(stdout);

    int status = EXIT_OK;
    if (rc < 0)
        status = tool_fail("cat", EXIT_BAD_INPUT, "%s: read error: %s", path, strerror(-rc));
    size_t nd;
    const struct wsrr_capture_damage *d = wsrr_capture_reader_damage(r, &nd);
    for (size_t i = 0; i < nd; i++)
        fprintf(stderr, "wsrr cat: %s: offset %" PRIu64 ": %s\n", path, d[i].offset, d[i].what);
    struct wsrr_capture_summary s;
    wsrr_capture_reader_summary(r, &s);
    if (s.ndamage && status == EXIT_OK)
        status = EXIT_FAILURE_FOUND;
    wsrr_capture_reader_close(r);
    if (ferror(stdout))
        return tool_fail("cat", EXIT_BAD_INPUT, "error writing standard output");
    return status;
}
