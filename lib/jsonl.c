/* jsonl.c — records to JSON lines and back (cJSON), losslessly.
 *
 * Rendering is deterministic: keys in a fixed order, optional keys only when
 * they carry information, integers written raw (never in exponent form),
 * byte strings as text when they are valid UTF-8 without NUL and as base64
 * otherwise. Parsing is strict (unknown keys are errors) so that a typo in a
 * hand-edited session is caught, not silently dropped.
 */
#include "wsrr/jsonl.h"
#include "wsrr/frame.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Integers below 2^53 are exact in a double (what cJSON and most JSON tools
 * parse numbers into); larger ones are written as decimal strings. */
#define MAX_EXACT ((UINT64_C(1) << 53) - 1)

/* ---- rendering ---- */

static bool text_ok(struct wsrr_span s)
{
    return (s.n == 0 || !memchr(s.p, 0, s.n)) && wsrr_utf8_valid(s.p, s.n);
}

static bool add_u64(cJSON *o, const char *key, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    if (v <= MAX_EXACT)
        return cJSON_AddRawToObject(o, key, buf) != NULL;
    return cJSON_AddStringToObject(o, key, buf) != NULL;
}

static bool add_str(cJSON *o, const char *key, const char *s)
{
    return cJSON_AddStringToObject(o, key, s) != NULL;
}

/* key: text, or key_b64: base64. force_b64 skips the text form. */
static bool add_bytes(cJSON *o, const char *key, struct wsrr_span s, bool force_b64)
{
    char k[40];
    if (!force_b64 && text_ok(s)) {
        char *t = malloc(s.n + 1);
        if (!t)
            return false;
        if (s.n)
            memcpy(t, s.p, s.n);
        t[s.n] = '\0';
        bool ok = add_str(o, key, t);
        free(t);
        return ok;
    }
    snprintf(k, sizeof(k), "%s_b64", key);
    char *b = malloc(4 * ((s.n + 2) / 3) + 1);
    if (!b)
        return false;
    wsrr_base64_encode(b, s.p, s.n);
    bool ok = add_str(o, k, b);
    free(b);
    return ok;
}

/* Optional byte field: only when non-empty. */
static bool add_opt_bytes(cJSON *o, const char *key, struct wsrr_span s)
{
    return s.n == 0 || add_bytes(o, key, s, false);
}

static const char *const rec_flag_names[8] = {"redacted", "truncated", "injected"};
static const char *const open_flag_names[8] = {"client_tls", "upstream_tls", "upstream_insecure"};

static bool add_flags(cJSON *o, const char *key, uint32_t v, const char *const names[8])
{
    if (!v)
        return true;
    cJSON *a = cJSON_AddArrayToObject(o, key);
    if (!a)
        return false;
    for (int i = 0; i < 32; i++) {
        if (!(v & (1u << i)))
            continue;
        char buf[16];
        const char *n = i < 8 ? names[i] : NULL;
        if (!n) {
            snprintf(buf, sizeof(buf), "bit%d", i);
            n = buf;
        }
        cJSON_AddItemToArray(a, cJSON_CreateString(n));
    }
    return true;
}

static bool add_violations(cJSON *o, uint32_t v)
{
    if (!v)
        return true;
    cJSON *a = cJSON_AddArrayToObject(o, "violations");
    if (!a)
        return false;
    for (int i = 0; i < 32; i++) {
        if (!(v & (1u << i)))
            continue;
        const char *n = wsrr_frame_violation_name(1u << i);
        char buf[16];
        if (!n) {
            snprintf(buf, sizeof(buf), "bit%d", i);
            n = buf;
        }
        cJSON_AddItemToArray(a, cJSON_CreateString(n));
    }
    return true;
}

static uint8_t minimal_width(uint64_t len)
{
    return len <= 125 ? 7 : len <= 0xffff ? 16 : 64;
}

static void format_time(char *out, size_t cap, uint64_t ns)
{
    time_t sec = (time_t)(ns / 1000000000u);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%09uZ", (unsigned)(ns % 1000000000u));
}

static bool parse_time(const char *s, uint64_t *ns)
{
    struct tm tm = {0};
    unsigned frac;
    int used = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%9uZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &frac, &used) != 7 ||
        used != 30 || s[used] != '\0')
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    if (t < 0)
        return false;
    *ns = (uint64_t)t * 1000000000u + frac;
    return true;
}

char *wsrr_jsonl_header(const struct wsrr_capture_info *info)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    char ver[16], when[48];
    snprintf(ver, sizeof(ver), "%u.%u", info->major, info->minor);
    format_time(when, sizeof(when), info->start_wall_ns);
    add_str(o, "wsrr", "capture");
    add_str(o, "version", ver);
    add_str(o, "start", when);
    add_u64(o, "start_mono_ns", info->start_mono_ns);
    if (info->compat_flags)
        add_u64(o, "compat_flags", info->compat_flags);
    /* The metadata goes in as its own text (whitespace removed), not as
     * cJSON would print it again: numbers keep every digit. It is the last
     * key, which lets import find that text again. */
    cJSON *meta = cJSON_ParseWithLength(info->metadata, info->metadata_len);
    bool object = cJSON_IsObject(meta);
    cJSON_Delete(meta);
    char *text = object ? strndup(info->metadata, info->metadata_len) : NULL;
    if (text) {
        cJSON_Minify(text);
        cJSON_AddRawToObject(o, "meta", text);
        free(text);
    } else {
        add_str(o, "meta_text", info->metadata);
    }
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return line;
}

static bool render_frame(cJSON *o, const struct wsrr_record *r)
{
    const struct wsrr_rec_frame *f = &r->u.frame;
    bool ok = add_str(o, "dir", wsrr_dir_name((enum wsrr_dir)f->dir));
    ok = ok && add_str(o, "opcode", wsrr_opcode_name(f->opcode));
    ok = ok && cJSON_AddBoolToObject(o, "fin", f->fin);
    if (f->rsv)
        ok = ok && add_u64(o, "rsv", f->rsv);
    if (f->fflags & WSRR_FF_MASKED)
        ok = ok && cJSON_AddTrueToObject(o, "masked");
    static const uint8_t zero[4];
    if ((f->fflags & WSRR_FF_MASKED) || memcmp(f->mask, zero, 4) != 0) {
        char hex[9];
        snprintf(hex, sizeof(hex), "%02x%02x%02x%02x", f->mask[0], f->mask[1], f->mask[2],
                 f->mask[3]);
        ok = ok && add_str(o, "mask", hex);
    }
    if (f->len != f->payload.n)
        ok = ok && add_u64(o, "len", f->len);
    if (f->len_width != minimal_width(f->len))
        ok = ok && add_u64(o, "len_width", f->len_width);
    ok = ok && add_violations(o, f->violations);

    struct wsrr_span reason = {NULL, 0};
    if (f->payload.n >= 2)
        reason = (struct wsrr_span){f->payload.p + 2, f->payload.n - 2};
    if (f->opcode == WSRR_OP_CLOSE && f->payload.n >= 2 && text_ok(reason)) {
        ok = ok && add_u64(o, "code", wsrr_be16(f->payload.p));
        ok = ok && add_opt_bytes(o, "reason", reason);
    } else if (f->payload.n) {
        bool binary = f->opcode == WSRR_OP_BINARY || f->opcode == WSRR_OP_CLOSE ||
                      (f->rsv & WSRR_RSV1) || (f->fflags & WSRR_FF_MESSAGE);
        ok = ok && add_bytes(o, "payload", f->payload, binary);
    }
    if (f->fflags & WSRR_FF_INFLATE_ERROR)
        ok = ok && cJSON_AddTrueToObject(o, "inflate_error");
    if (f->fflags & WSRR_FF_MESSAGE)
        ok = ok && add_bytes(o, "message", f->message, false);
    if (f->fflags & ~(WSRR_FF_MASKED | WSRR_FF_MESSAGE | WSRR_FF_INFLATE_ERROR))
        ok = ok && add_u64(o, "frame_flags", f->fflags);
    return ok;
}

static bool render_body(cJSON *o, const struct wsrr_rec_body *b)
{
    bool ok = add_str(o, "dir", wsrr_dir_name((enum wsrr_dir)b->dir));
    if (b->bflags & WSRR_BF_COMPLETE)
        ok = ok && cJSON_AddTrueToObject(o, "complete");
    if (b->bflags & WSRR_BF_CHUNKED)
        ok = ok && cJSON_AddTrueToObject(o, "chunked");
    if (b->bflags & ~(WSRR_BF_COMPLETE | WSRR_BF_CHUNKED))
        ok = ok && add_u64(o, "body_flags", b->bflags);
    if (b->len != b->data.n)
        ok = ok && add_u64(o, "len", b->len);
    return ok && add_bytes(o, "data", b->data, false);
}

char *wsrr_jsonl_record(const struct wsrr_record *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    bool ok = add_u64(o, "seq", r->seq) && add_u64(o, "ts", r->ts) && add_u64(o, "conn", r->conn);
    const char *kind = wsrr_rec_kind_name(r->kind);
    ok = ok && (kind ? add_str(o, "kind", kind) : add_u64(o, "kind", r->kind));
    ok = ok && add_flags(o, "flags", r->flags, rec_flag_names);

    switch (kind ? r->kind : 0) {
    case WSRR_REC_OPEN:
        ok = ok && add_flags(o, "transport", r->u.open.flags, open_flag_names);
        ok = ok && add_opt_bytes(o, "client", r->u.open.client);
        ok = ok && add_opt_bytes(o, "listen", r->u.open.listen);
        ok = ok && add_opt_bytes(o, "upstream", r->u.open.upstream);
        ok = ok && add_opt_bytes(o, "client_tls", r->u.open.client_tls);
        ok = ok && add_opt_bytes(o, "upstream_tls", r->u.open.upstream_tls);
        ok = ok && add_opt_bytes(o, "sni", r->u.open.sni);
        break;
    case WSRR_REC_REQUEST:
    case WSRR_REC_RESPONSE: ok = ok && add_bytes(o, "head", r->u.http.head, false); break;
    case WSRR_REC_FRAME: ok = ok && render_frame(o, r); break;
    case WSRR_REC_CLOSE: {
        const char *side = wsrr_close_side_name(r->u.close.side);
        ok = ok && (side ? add_str(o, "side", side) : add_u64(o, "side", r->u.close.side));
        if (r->u.close.cflags & WSRR_CF_CLEAN)
            ok = ok && cJSON_AddTrueToObject(o, "clean");
        if (r->u.close.cflags & WSRR_CF_HAS_CODE)
            ok = ok && add_u64(o, "code", r->u.close.code);
        else if (r->u.close.code)
            ok = ok && add_u64(o, "code_raw", r->u.close.code);
        if (r->u.close.cflags & ~(WSRR_CF_CLEAN | WSRR_CF_HAS_CODE))
            ok = ok && add_u64(o, "close_flags", r->u.close.cflags);
        ok = ok && add_opt_bytes(o, "reason", r->u.close.reason);
        break;
    }
    case WSRR_REC_TCP: {
        const char *ev = wsrr_tcp_event_name(r->u.tcp.event);
        ok = ok && add_str(o, "leg",
                           r->u.tcp.leg == WSRR_LEG_CLIENT     ? "client"
                           : r->u.tcp.leg == WSRR_LEG_UPSTREAM ? "upstream"
                                                               : "other");
        if (r->u.tcp.leg > WSRR_LEG_UPSTREAM)
            ok = ok && add_u64(o, "leg_raw", r->u.tcp.leg);
        ok = ok && (ev ? add_str(o, "event", ev) : add_u64(o, "event", r->u.tcp.event));
        if (r->u.tcp.err) {
            char buf[16];
            snprintf(buf, sizeof(buf), "%d", r->u.tcp.err);
            ok = ok && cJSON_AddRawToObject(o, "err", buf);
        }
        ok = ok && add_opt_bytes(o, "detail", r->u.tcp.detail);
        break;
    }
    case WSRR_REC_FAULT:
        if (r->u.fault.target)
            ok = ok && add_u64(o, "target", r->u.fault.target);
        ok = ok && add_bytes(o, "rule", r->u.fault.rule, false);
        ok = ok && add_bytes(o, "action", r->u.fault.action, false);
        ok = ok && add_opt_bytes(o, "detail", r->u.fault.detail);
        break;
    case WSRR_REC_NOTE: ok = ok && add_bytes(o, "text", r->u.note.text, false); break;
    case WSRR_REC_BODY: ok = ok && render_body(o, &r->u.body); break;
    default: ok = ok && add_bytes(o, "body", r->u.raw.body, true); break;
    }
    if (r->extra.n)
        ok = ok && add_bytes(o, "extra", r->extra, true);

    char *line = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return line;
}

/* ---- parsing ---- */

struct pctx {
    uint8_t *arena;
    size_t used, cap;
    char *err;
    size_t errlen;
};

static int perr(struct pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int perr(struct pctx *c, const char *fmt, ...)
{
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* cJSON keeps strings NUL-terminated, so a \u0000 escape would silently cut
 * a value short: refuse it (bytes with NUL travel in a _b64 field). */
static const char *find_nul_escape(const char *line, size_t len)
{
    for (const char *p = line; (p = memmem(p, (size_t)(line + len - p), "\\u0000", 6)); p++) {
        size_t slashes = 0;
        for (const char *q = p; q > line && q[-1] == '\\'; q--)
            slashes++;
        if (slashes % 2 == 0) /* this backslash is not itself escaped */
            return p;
    }
    return NULL;
}

static cJSON *parse_line(const char *line, size_t len, struct pctx *c)
{
    const char *nul = find_nul_escape(line, len);
    if (nul) {
        perr(c, "column %zu: \\u0000 in a string (bytes with NUL go in a _b64 field)",
             (size_t)(nul - line) + 1);
        return NULL;
    }
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!o) {
        size_t col = end && end >= line ? (size_t)(end - line) + 1 : 1;
        perr(c, "column %zu: invalid JSON", col);
        return NULL;
    }
    /* nothing but whitespace may follow the object */
    for (const char *p = end; p < line + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            perr(c, "column %zu: unexpected text after the JSON object", (size_t)(p - line) + 1);
            cJSON_Delete(o);
            return NULL;
        }
    if (!cJSON_IsObject(o)) {
        perr(c, "column 1: expected a JSON object");
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static int get_u64(struct pctx *c, const cJSON *o, const char *key, uint64_t max, uint64_t *v,
                   bool required)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it) {
        if (required)
            return perr(c, "missing key \"%s\"", key);
        return 0;
    }
    if (cJSON_IsNumber(it)) {
        double d = it->valuedouble;
        if (!(d >= 0) || d > (double)MAX_EXACT || floor(d) != d || (uint64_t)d > max)
            return perr(c, "key \"%s\": expected an integer from 0 to %" PRIu64 "%s", key,
                        max < MAX_EXACT ? max : MAX_EXACT,
                        max > MAX_EXACT ? " (larger ones as a decimal string)" : "");
        *v = (uint64_t)d;
        return 1;
    }
    if (cJSON_IsString(it) && it->valuestring[0] >= '0' && it->valuestring[0] <= '9') {
        char *e;
        errno = 0;
        unsigned long long u = strtoull(it->valuestring, &e, 10);
        if (errno == 0 && *e == '\0' && u <= max) {
            *v = u;
            return 1;
        }
    }
    return perr(c, "key \"%s\": expected an integer from 0 to %" PRIu64, key, max);
}

static int get_str(struct pctx *c, const cJSON *o, const char *key, const char **s)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it)
        return 0;
    if (!cJSON_IsString(it))
        return perr(c, "key \"%s\": expected a string", key);
    *s = it->valuestring;
    return 1;
}

static int get_bool(struct pctx *c, const cJSON *o, const char *key, bool *b)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it)
        return 0;
    if (!cJSON_IsBool(it))
        return perr(c, "key \"%s\": expected true or false", key);
    *b = cJSON_IsTrue(it);
    return 1;
}

static uint8_t *arena_take(struct pctx *c, size_t n)
{
    if (c->cap - c->used < n)
        return NULL;
    uint8_t *p = c->arena + c->used;
    c->used += n;
    return p;
}

/* key (text) or key_b64 (base64) into *s; absent leaves *s empty. */
static int get_bytes(struct pctx *c, const cJSON *o, const char *key, struct wsrr_span *s,
                     bool required)
{
    char k64[40];
    snprintf(k64, sizeof(k64), "%s_b64", key);
    const char *t = NULL, *b = NULL;
    int rt = get_str(c, o, key, &t), rb = get_str(c, o, k64, &b);
    if (rt < 0 || rb < 0)
        return -EINVAL;
    if (t && b)
        return perr(c, "keys \"%s\" and \"%s\" both given; use one", key, k64);
    if (!t && !b) {
        *s = (struct wsrr_span){NULL, 0};
        return required ? perr(c, "missing key \"%s\" (or \"%s\")", key, k64) : 0;
    }
    if (t) {
        size_t n = strlen(t);
        uint8_t *p = arena_take(c, n);
        if (!p && n)
            return perr(c, "key \"%s\": out of memory", key);
        if (n)
            memcpy(p, t, n);
        *s = (struct wsrr_span){p, n};
        return 1;
    }
    size_t n = strlen(b);
    uint8_t *p = arena_take(c, 3 * (n / 4) + 3);
    if (!p)
        return perr(c, "key \"%s\": out of memory", k64);
    ssize_t m = wsrr_base64_decode(p, b, n);
    if (m < 0)
        return perr(c, "key \"%s\": expected padded base64", k64);
    c->used -= 3 * (n / 4) + 3 - (size_t)m;
    *s = (struct wsrr_span){p, (size_t)m};
    return 1;
}

/* "bitN" with N in 0..31 written plainly, or -1. */
static int bit_name(const char *n)
{
    if (strncmp(n, "bit", 3) != 0 || n[3] < '0' || n[3] > '9')
        return -1;
    if (n[4] == '\0')
        return n[3] - '0';
    if (n[3] == '0' || n[4] < '0' || n[4] > '9' || n[5] != '\0')
        return -1;
    int v = (n[3] - '0') * 10 + (n[4] - '0');
    return v < 32 ? v : -1;
}

static int get_flags(struct pctx *c, const cJSON *o, const char *key, const char *const names[8],
                     uint32_t max_bits, uint32_t *v)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    *v = 0;
    if (!a)
        return 0;
    if (!cJSON_IsArray(a))
        return perr(c, "key \"%s\": expected an array of names", key);
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsString(it))
            return perr(c, "key \"%s\": expected an array of names", key);
        const char *n = it->valuestring;
        int bit = -1;
        for (int i = 0; i < 8; i++)
            if (names[i] && strcmp(names[i], n) == 0)
                bit = i;
        if (bit < 0)
            bit = bit_name(n);
        if (bit < 0 || (uint32_t)bit >= max_bits)
            return perr(c, "key \"%s\": unknown flag \"%s\"", key, n);
        *v |= 1u << bit;
    }
    return 1;
}

/* Every key of o must be in `allowed` (a NULL-terminated list). */
static int check_keys(struct pctx *c, const cJSON *o, const char *const *allowed, const char *what)
{
    const cJSON *it;
    if (cJSON_GetArraySize(o) > 64)
        return perr(c, "too many keys in a %s record", what);
    cJSON_ArrayForEach(it, o)
    {
        for (const cJSON *prev = o->child; prev != it; prev = prev->next)
            if (strcmp(prev->string, it->string) == 0)
                return perr(c, "key \"%s\" appears twice", it->string);
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, it->string) == 0;
        if (!known)
            return perr(c, "unknown key \"%s\" in a %s record", it->string, what);
    }
    return 0;
}

/* The metadata's own text: in a line written by cat, "meta" is the last key,
 * so its value runs from after the first "meta": to the line's last '}'. If
 * that text is not the same object (the line was edited), print the object
 * again instead. */
static char *meta_text(const char *line, size_t len, const cJSON *m)
{
    const char *k = memmem(line, len, "\"meta\":", 7);
    const char *end = line + len;
    while (end > line && end[-1] != '}')
        end--;
    if (k && end > k + 8) {
        const char *v = k + 7;
        size_t n = (size_t)(end - 1 - v);
        const char *stop = NULL;
        cJSON *c = cJSON_ParseWithLengthOpts(v, n, &stop, false);
        while (stop && stop < v + n && (*stop == ' ' || *stop == '\t' || *stop == '\r'))
            stop++;
        bool same = stop == v + n && cJSON_IsObject(c) && cJSON_Compare(c, m, true);
        cJSON_Delete(c);
        if (same) {
            char *t = strndup(v, n);
            if (t)
                cJSON_Minify(t);
            return t;
        }
    }
    return cJSON_PrintUnformatted(m);
}

int wsrr_jsonl_parse_header(const char *line, size_t len, struct wsrr_jsonl_header *h, char *err,
                            size_t errlen)
{
    struct pctx c = {.err = err, .errlen = errlen};
    memset(h, 0, sizeof(*h));
    cJSON *o = parse_line(line, len, &c);
    if (!o)
        return -EINVAL;
    static const char *const keys[] = {"wsrr",         "version", "start",     "start_mono_ns",
                                       "compat_flags", "meta",    "meta_text", NULL};
    int rc = check_keys(&c, o, keys, "header");
    const char *tag = NULL, *ver = NULL, *start = NULL;
    if (rc == 0 && (get_str(&c, o, "wsrr", &tag) <= 0 || strcmp(tag, "capture") != 0))
        rc = perr(&c, "expected the header object {\"wsrr\":\"capture\",...} first");
    unsigned major = 0, minor = 0;
    int used = 0;
    if (rc == 0 && (get_str(&c, o, "version", &ver) <= 0 ||
                    sscanf(ver, "%u.%u%n", &major, &minor, &used) != 2 || ver[used] != '\0' ||
                    ver[0] < '0' || ver[0] > '9' || strchr(ver, '-') || strchr(ver, '+') ||
                    major != WSRR_CAPTURE_MAJOR || minor > 0xffff))
        rc = perr(&c, "key \"version\": expected \"%d.<minor>\"", WSRR_CAPTURE_MAJOR);
    h->minor = (uint16_t)minor;
    if (rc == 0 && get_str(&c, o, "start", &start) > 0 && !parse_time(start, &h->start_wall_ns))
        rc = perr(&c, "key \"start\": expected a time like 2026-01-02T03:04:05.123456789Z");
    uint64_t v = 0;
    if (rc == 0 && get_u64(&c, o, "start_mono_ns", UINT64_MAX, &h->start_mono_ns, false) < 0)
        rc = -EINVAL;
    if (rc == 0 && get_u64(&c, o, "compat_flags", UINT32_MAX, &v, false) < 0)
        rc = -EINVAL;
    h->compat_flags = (uint32_t)v;
    if (rc == 0) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "meta");
        const char *mt = NULL;
        if (m && !cJSON_IsObject(m))
            rc = perr(&c, "key \"meta\": expected an object");
        else if (m)
            h->metadata = meta_text(line, len, m);
        else if (get_str(&c, o, "meta_text", &mt) > 0)
            h->metadata = strdup(mt);
        else
            h->metadata = strdup("{}");
        if (rc == 0 && !h->metadata)
            rc = perr(&c, "out of memory");
    }
    cJSON_Delete(o);
    return rc;
}

static int parse_opcode(struct pctx *c, const cJSON *o, uint8_t *op)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, "opcode");
    if (cJSON_IsString(it)) {
        for (int i = 0; i < 16; i++)
            if (strcmp(wsrr_opcode_name((uint8_t)i), it->valuestring) == 0) {
                *op = (uint8_t)i;
                return 0;
            }
    } else if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble <= 15 &&
               floor(it->valuedouble) == it->valuedouble) {
        *op = (uint8_t)it->valuedouble;
        return 0;
    }
    return perr(c, "key \"opcode\": expected text, binary, close, ping, pong, cont, op3..op15 "
                   "or 0-15");
}

static int parse_frame(struct pctx *c, const cJSON *o, struct wsrr_record *r)
{
    static const char *const keys[] = {
        "seq",     "ts",          "conn",        "kind",        "flags",
        "dir",     "opcode",      "fin",         "rsv",         "masked",
        "mask",    "len",         "len_width",   "violations",  "code",
        "reason",  "reason_b64",  "payload",     "payload_b64", "inflate_error",
        "message", "message_b64", "frame_flags", "extra_b64",   NULL};
    struct wsrr_rec_frame *f = &r->u.frame;
    if (check_keys(c, o, keys, "frame") < 0)
        return -EINVAL;
    const char *dir = NULL;
    if (get_str(c, o, "dir", &dir) <= 0 || (strcmp(dir, "client") && strcmp(dir, "server")))
        return perr(c, "key \"dir\": expected \"client\" or \"server\" (the sender)");
    f->dir = strcmp(dir, "client") == 0 ? WSRR_DIR_C2S : WSRR_DIR_S2C;
    if (parse_opcode(c, o, &f->opcode) < 0)
        return -EINVAL;
    bool fin = true, masked = false, flag = false;
    if (get_bool(c, o, "fin", &fin) < 0 || get_bool(c, o, "masked", &masked) < 0)
        return -EINVAL;
    f->fin = fin;
    uint64_t v = 0;
    if (get_u64(c, o, "rsv", 7, &v, false) < 0)
        return -EINVAL;
    f->rsv = (uint8_t)v;
    const char *mask = NULL;
    if (get_str(c, o, "mask", &mask) < 0)
        return -EINVAL;
    if (mask) {
        unsigned m[4];
        int used = 0;
        if (strlen(mask) != 8 ||
            sscanf(mask, "%2x%2x%2x%2x%n", &m[0], &m[1], &m[2], &m[3], &used) != 4 || used != 8)
            return perr(c, "key \"mask\": expected 8 hex digits");
        for (int i = 0; i < 4; i++)
            f->mask[i] = (uint8_t)m[i];
    }
    if (masked)
        f->fflags |= WSRR_FF_MASKED;

    const cJSON *va = cJSON_GetObjectItemCaseSensitive(o, "violations");
    if (va) {
        const cJSON *it;
        if (!cJSON_IsArray(va))
            return perr(c, "key \"violations\": expected an array of names");
        cJSON_ArrayForEach(it, va)
        {
            uint32_t bit =
                cJSON_IsString(it)
                    ? wsrr_frame_violation_by_name(it->valuestring, strlen(it->valuestring))
                    : 0;
            if (!bit && cJSON_IsString(it) && bit_name(it->valuestring) >= 0)
                bit = 1u << bit_name(it->valuestring);
            if (!bit)
                return perr(c, "key \"violations\": unknown violation %s",
                            cJSON_IsString(it) ? it->valuestring : "(not a string)");
            f->violations |= bit;
        }
    }

    /* payload: code+reason for a close frame, or payload / payload_b64 */
    uint64_t code = 0;
    int has_code = get_u64(c, o, "code", 0xffff, &code, false);
    if (has_code < 0)
        return -EINVAL;
    if (has_code) {
        struct wsrr_span reason;
        if (cJSON_GetObjectItemCaseSensitive(o, "payload") ||
            cJSON_GetObjectItemCaseSensitive(o, "payload_b64"))
            return perr(c, "key \"code\": give either code/reason or payload, not both");
        if (get_bytes(c, o, "reason", &reason, false) < 0)
            return -EINVAL;
        uint8_t *p = arena_take(c, 2 + reason.n);
        if (!p)
            return perr(c, "out of memory");
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        if (reason.n)
            memmove(p + 2, reason.p, reason.n);
        f->payload = (struct wsrr_span){p, 2 + reason.n};
    } else {
        if (cJSON_GetObjectItemCaseSensitive(o, "reason") ||
            cJSON_GetObjectItemCaseSensitive(o, "reason_b64"))
            return perr(c, "key \"reason\": needs \"code\"");
        if (get_bytes(c, o, "payload", &f->payload, false) < 0)
            return -EINVAL;
    }

    f->len = f->payload.n;
    if (get_u64(c, o, "len", UINT64_MAX, &f->len, false) < 0)
        return -EINVAL;
    v = minimal_width(f->len);
    if (get_u64(c, o, "len_width", 64, &v, false) < 0)
        return -EINVAL;
    if (v != 7 && v != 16 && v != 64)
        return perr(c, "key \"len_width\": expected 7, 16 or 64");
    f->len_width = (uint8_t)v;

    if (get_bool(c, o, "inflate_error", &flag) < 0)
        return -EINVAL;
    if (flag)
        f->fflags |= WSRR_FF_INFLATE_ERROR;
    int has_msg = get_bytes(c, o, "message", &f->message, false);
    if (has_msg < 0)
        return -EINVAL;
    if (has_msg)
        f->fflags |= WSRR_FF_MESSAGE;
    v = 0;
    if (get_u64(c, o, "frame_flags", 0xff, &v, false) < 0)
        return -EINVAL;
    f->fflags |= (uint8_t)v;
    return 0;
}

static int parse_body(struct pctx *c, const cJSON *o, const char *kind_name,
                      struct wsrr_rec_body *b)
{
    static const char *const keys[] = {"seq",  "ts",       "conn",      "kind",       "flags",
                                       "dir",  "complete", "chunked",   "body_flags", "len",
                                       "data", "data_b64", "extra_b64", NULL};
    const char *dir = NULL;
    bool complete = false, chunked = false;
    uint64_t bf = 0;
    if (check_keys(c, o, keys, kind_name) < 0)
        return -EINVAL;
    if (get_str(c, o, "dir", &dir) <= 0 || (strcmp(dir, "client") && strcmp(dir, "server")))
        return perr(c, "key \"dir\": expected \"client\" or \"server\" (the sender)");
    if (get_bool(c, o, "complete", &complete) < 0 || get_bool(c, o, "chunked", &chunked) < 0 ||
        get_u64(c, o, "body_flags", 0xff, &bf, false) < 0 ||
        get_bytes(c, o, "data", &b->data, false) < 0)
        return -EINVAL;
    b->dir = strcmp(dir, "client") == 0 ? WSRR_DIR_C2S : WSRR_DIR_S2C;
    b->bflags = (uint8_t)(bf | (complete ? WSRR_BF_COMPLETE : 0) | (chunked ? WSRR_BF_CHUNKED : 0));
    b->len = b->data.n;
    return get_u64(c, o, "len", UINT64_MAX, &b->len, false) < 0 ? -EINVAL : 0;
}

int wsrr_jsonl_parse_record(const char *line, size_t len, uint64_t default_ts,
                            struct wsrr_record *r, uint8_t **arena, char *err, size_t errlen)
{
    struct pctx c = {.err = err, .errlen = errlen};
    memset(r, 0, sizeof(*r));
    *arena = NULL;
    cJSON *o = parse_line(line, len, &c);
    if (!o)
        return -EINVAL;
    /* Decoded bytes never exceed the text they come from; a close frame's
     * reason is copied once more behind its code. So twice the line is
     * always enough, and the arena is sized once. */
    c.cap = 2 * len + 64;
    c.arena = malloc(c.cap);
    if (!c.arena) {
        cJSON_Delete(o);
        return perr(&c, "out of memory");
    }
    *arena = c.arena;

    int rc = 0;
    uint64_t v;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "kind");
    if (cJSON_IsString(k) && wsrr_rec_kind_by_name(k->valuestring) > 0)
        r->kind = (uint8_t)wsrr_rec_kind_by_name(k->valuestring);
    else if (cJSON_IsNumber(k) && k->valuedouble >= 0 && k->valuedouble <= 255 &&
             floor(k->valuedouble) == k->valuedouble &&
             !wsrr_rec_kind_name((uint8_t)k->valuedouble))
        r->kind = (uint8_t)k->valuedouble;
    else
        rc = perr(&c, "key \"kind\": expected open, request, response, frame, close, tcp, fault, "
                      "note, body (or the number of an unknown kind)");

    int has_seq = rc == 0 ? get_u64(&c, o, "seq", UINT64_MAX, &r->seq, false) : 0;
    if (has_seq < 0)
        rc = -EINVAL;
    else if (has_seq && r->seq == 0)
        rc = perr(&c, "key \"seq\": 0 is reserved (leave seq out to number records in order)");
    r->ts = default_ts;
    if (rc == 0 && get_u64(&c, o, "ts", UINT64_MAX - 1, &r->ts, false) < 0)
        rc = -EINVAL;
    v = 0;
    if (rc == 0 && get_u64(&c, o, "conn", UINT32_MAX, &v, false) < 0)
        rc = -EINVAL;
    r->conn = (uint32_t)v;
    uint32_t fl = 0;
    if (rc == 0 && get_flags(&c, o, "flags", rec_flag_names, 8, &fl) < 0)
        rc = -EINVAL;
    r->flags = (uint8_t)fl;
    if (rc == 0 && get_bytes(&c, o, "extra", &r->extra, false) < 0)
        rc = -EINVAL;
    if (rc == 0 && cJSON_GetObjectItemCaseSensitive(o, "extra"))
        rc = perr(&c, "key \"extra\": use \"extra_b64\"");

    const char *kind_name = wsrr_rec_kind_name(r->kind);
    if (rc == 0) {
        switch (kind_name ? r->kind : 0) {
        case WSRR_REC_OPEN: {
            static const char *const keys[] = {"seq",          "ts",
                                               "conn",         "kind",
                                               "flags",        "transport",
                                               "client",       "client_b64",
                                               "listen",       "listen_b64",
                                               "upstream",     "upstream_b64",
                                               "client_tls",   "client_tls_b64",
                                               "upstream_tls", "upstream_tls_b64",
                                               "sni",          "sni_b64",
                                               "extra_b64",    NULL};
            if (check_keys(&c, o, keys, kind_name) < 0 ||
                get_flags(&c, o, "transport", open_flag_names, 32, &r->u.open.flags) < 0 ||
                get_bytes(&c, o, "client", &r->u.open.client, false) < 0 ||
                get_bytes(&c, o, "listen", &r->u.open.listen, false) < 0 ||
                get_bytes(&c, o, "upstream", &r->u.open.upstream, false) < 0 ||
                get_bytes(&c, o, "client_tls", &r->u.open.client_tls, false) < 0 ||
                get_bytes(&c, o, "upstream_tls", &r->u.open.upstream_tls, false) < 0 ||
                get_bytes(&c, o, "sni", &r->u.open.sni, false) < 0)
                rc = -EINVAL;
            break;
        }
        case WSRR_REC_REQUEST:
        case WSRR_REC_RESPONSE: {
            static const char *const keys[] = {"seq",  "ts",       "conn",      "kind", "flags",
                                               "head", "head_b64", "extra_b64", NULL};
            if (check_keys(&c, o, keys, kind_name) < 0 ||
                get_bytes(&c, o, "head", &r->u.http.head, true) < 0)
                rc = -EINVAL;
            break;
        }
        case WSRR_REC_FRAME: rc = parse_frame(&c, o, r); break;
        case WSRR_REC_CLOSE: {
            static const char *const keys[] = {
                "seq",  "ts",       "conn",        "kind",   "flags",      "side",      "clean",
                "code", "code_raw", "close_flags", "reason", "reason_b64", "extra_b64", NULL};
            const cJSON *side = cJSON_GetObjectItemCaseSensitive(o, "side");
            bool clean = false;
            uint64_t code = 0, raw = 0, cf = 0;
            int hc;
            if (check_keys(&c, o, keys, kind_name) < 0)
                rc = -EINVAL;
            else if (cJSON_IsString(side) && wsrr_close_side_by_name(side->valuestring) >= 0)
                r->u.close.side = (uint8_t)wsrr_close_side_by_name(side->valuestring);
            else if (cJSON_IsNumber(side) && side->valuedouble >= 0 && side->valuedouble <= 255 &&
                     floor(side->valuedouble) == side->valuedouble)
                r->u.close.side = (uint8_t)side->valuedouble;
            else
                rc = perr(&c, "key \"side\": expected client, server, proxy or none");
            if (rc == 0 && (get_bool(&c, o, "clean", &clean) < 0 ||
                            (hc = get_u64(&c, o, "code", 0xffff, &code, false)) < 0 ||
                            get_u64(&c, o, "code_raw", 0xffff, &raw, false) < 0 ||
                            get_u64(&c, o, "close_flags", 0xff, &cf, false) < 0 ||
                            get_bytes(&c, o, "reason", &r->u.close.reason, false) < 0))
                rc = -EINVAL;
            if (rc == 0 && hc && cJSON_GetObjectItemCaseSensitive(o, "code_raw"))
                rc = perr(&c, "keys \"code\" and \"code_raw\" both given; use one");
            if (rc == 0) {
                r->u.close.cflags =
                    (uint8_t)(cf | (clean ? WSRR_CF_CLEAN : 0) | (hc ? WSRR_CF_HAS_CODE : 0));
                r->u.close.code = (uint16_t)(hc ? code : raw);
            }
            break;
        }
        case WSRR_REC_TCP: {
            static const char *const keys[] = {"seq",        "ts",        "conn",  "kind", "flags",
                                               "leg",        "leg_raw",   "event", "err",  "detail",
                                               "detail_b64", "extra_b64", NULL};
            const char *leg = NULL;
            const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event");
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "err");
            uint64_t lr = 0;
            if (check_keys(&c, o, keys, kind_name) < 0)
                rc = -EINVAL;
            else if (get_str(&c, o, "leg", &leg) <= 0 ||
                     (strcmp(leg, "client") && strcmp(leg, "upstream") && strcmp(leg, "other")))
                rc = perr(&c, "key \"leg\": expected \"client\" or \"upstream\"");
            else if (get_u64(&c, o, "leg_raw", 255, &lr, false) < 0)
                rc = -EINVAL;
            else if (strcmp(leg, "other") == 0 &&
                     (!cJSON_GetObjectItemCaseSensitive(o, "leg_raw") || lr <= WSRR_LEG_UPSTREAM))
                rc = perr(&c, "key \"leg\": \"other\" needs \"leg_raw\" above 1");
            else
                r->u.tcp.leg = (uint8_t)(strcmp(leg, "client") == 0     ? WSRR_LEG_CLIENT
                                         : strcmp(leg, "upstream") == 0 ? WSRR_LEG_UPSTREAM
                                                                        : lr);
            if (rc == 0) {
                if (cJSON_IsString(ev) && wsrr_tcp_event_by_name(ev->valuestring) > 0)
                    r->u.tcp.event = (uint8_t)wsrr_tcp_event_by_name(ev->valuestring);
                else if (cJSON_IsNumber(ev) && ev->valuedouble >= 0 && ev->valuedouble <= 255 &&
                         floor(ev->valuedouble) == ev->valuedouble)
                    r->u.tcp.event = (uint8_t)ev->valuedouble;
                else
                    rc = perr(&c, "key \"event\": expected connected, fin, rst, error, timeout, "
                                  "connect_failed, tls_error or closed");
            }
            if (rc == 0 && e) {
                if (!cJSON_IsNumber(e) || floor(e->valuedouble) != e->valuedouble ||
                    e->valuedouble < INT32_MIN || e->valuedouble > INT32_MAX)
                    rc = perr(&c, "key \"err\": expected a 32-bit integer");
                else
                    r->u.tcp.err = (int32_t)e->valuedouble;
            }
            if (rc == 0 && get_bytes(&c, o, "detail", &r->u.tcp.detail, false) < 0)
                rc = -EINVAL;
            break;
        }
        case WSRR_REC_FAULT: {
            static const char *const keys[] = {
                "seq",      "ts",     "conn",       "kind",   "flags",      "target",    "rule",
                "rule_b64", "action", "action_b64", "detail", "detail_b64", "extra_b64", NULL};
            if (check_keys(&c, o, keys, kind_name) < 0 ||
                get_u64(&c, o, "target", UINT64_MAX, &r->u.fault.target, false) < 0 ||
                get_bytes(&c, o, "rule", &r->u.fault.rule, true) < 0 ||
                get_bytes(&c, o, "action", &r->u.fault.action, true) < 0 ||
                get_bytes(&c, o, "detail", &r->u.fault.detail, false) < 0)
                rc = -EINVAL;
            break;
        }
        case WSRR_REC_NOTE: {
            static const char *const keys[] = {"seq",  "ts",       "conn",      "kind", "flags",
                                               "text", "text_b64", "extra_b64", NULL};
            if (check_keys(&c, o, keys, kind_name) < 0 ||
                get_bytes(&c, o, "text", &r->u.note.text, true) < 0)
                rc = -EINVAL;
            break;
        }
        case WSRR_REC_BODY: rc = parse_body(&c, o, kind_name, &r->u.body); break;
        default: {
            static const char *const keys[] = {"seq",   "ts",       "conn",      "kind",
                                               "flags", "body_b64", "extra_b64", NULL};
            if (check_keys(&c, o, keys, "unknown-kind") < 0 ||
                get_bytes(&c, o, "body", &r->u.raw.body, false) < 0)
                rc = -EINVAL;
            if (rc == 0 && cJSON_GetObjectItemCaseSensitive(o, "body"))
                rc = perr(&c, "key \"body\": use \"body_b64\"");
            break;
        }
        }
    }
    cJSON_Delete(o);
    if (rc < 0) {
        free(*arena);
        *arena = NULL;
    }
    return rc;
}
