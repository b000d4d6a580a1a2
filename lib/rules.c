/* rules.c — the rules file: parsed with cJSON, checked field by field.
 *
 * Every error names the rule and the JSON path of the offending value and
 * says what was expected; unknown keys are errors (a typo must not turn a
 * fault off silently). Action parameters are described by a table: each
 * action lists its keys, the slot of struct wsrr_action each fills, and the
 * range it accepts.
 */
#include "wsrr/rules.h"

#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RULES_FILE (4u << 20)
#define MAX_MS         (24ull * 3600 * 1000) /* a day */

/* ---- errors ---- */

struct ctx {
    char *err;
    size_t errlen;
    char where[160]; /* "rule 'x' (rules[2])" */
};

static bool fail(struct ctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fail(struct ctx *c, const char *path, const char *fmt, ...)
{
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s%s%s%s%s", c->where, c->where[0] && path[0] ? ": " : "", path,
             c->where[0] || path[0] ? ": " : "", what);
    return false;
}

/* "a.b": the JSON path of a member (cut short if absurdly deep). */
__attribute__((noinline)) static void join(char *out, size_t cap, const char *a, const char *b)
{
    snprintf(out, cap, "%s.%s", a, b);
}

/* A short rendering of a JSON value for "got ..." in messages. */
static void shown(const cJSON *v, char *out, size_t cap)
{
    char *s = cJSON_PrintUnformatted(v);
    if (!s) {
        snprintf(out, cap, "?");
        return;
    }
    if (strlen(s) > 40)
        snprintf(out, cap, "%.37s...", s);
    else
        snprintf(out, cap, "%s", s);
    cJSON_free(s);
}

static bool expected(struct ctx *c, const char *path, const char *what, const cJSON *got)
{
    char g[48];
    shown(got, g, sizeof(g));
    return fail(c, path, "expected %s, got %s", what, g);
}

/* Only these keys in an object. */
static bool known_keys(struct ctx *c, const char *path, const cJSON *o, const char *const *keys)
{
    for (const cJSON *k = o->child; k; k = k->next) {
        for (const cJSON *e = o->child; e != k; e = e->next)
            if (strcmp(e->string, k->string) == 0)
                return fail(c, path, "'%s' given twice", k->string);
        bool ok = false;
        for (const char *const *p = keys; *p && !ok; p++)
            ok = strcmp(k->string, *p) == 0;
        if (!ok) {
            char list[300] = "";
            for (const char *const *p = keys; *p; p++) {
                size_t n = strlen(list);
                snprintf(list + n, sizeof(list) - n, "%s%s", n ? ", " : "", *p);
            }
            return fail(c, path, "unknown key '%s' (known: %s)", k->string,
                        list[0] ? list : "none");
        }
    }
    return true;
}

static bool get_uint(struct ctx *c, const char *path, const cJSON *v, uint64_t min, uint64_t max,
                     uint64_t *out)
{
    char what[96];
    snprintf(what, sizeof(what), "a whole number from %llu to %llu", (unsigned long long)min,
             (unsigned long long)max);
    if (!cJSON_IsNumber(v))
        return expected(c, path, what, v);
    double d = v->valuedouble;
    if (!(d >= (double)min && d <= (double)max) || d != floor(d) || d > 9007199254740992.0)
        return expected(c, path, what, v);
    *out = (uint64_t)d;
    return true;
}

static bool get_str(struct ctx *c, const char *path, const cJSON *v, size_t maxlen, char **out)
{
    if (!cJSON_IsString(v))
        return expected(c, path, "a string", v);
    size_t n = strlen(v->valuestring);
    if (n > maxlen)
        return fail(c, path, "too long: %zu bytes, at most %zu", n, maxlen);
    free(*out);
    *out = strdup(v->valuestring);
    return *out != NULL || fail(c, path, "out of memory");
}

/* ---- names of things ---- */

static const char *const opcode_names[16] = {
    [0] = "continuation", [1] = "text", [2] = "binary", [8] = "close", [9] = "ping", [10] = "pong",
};

static bool one_opcode(struct ctx *c, const char *path, const cJSON *v, bool groups, uint32_t *bits)
{
    if (cJSON_IsNumber(v)) {
        uint64_t n;
        if (!get_uint(c, path, v, 0, 15, &n))
            return false;
        *bits |= 1u << n;
        return true;
    }
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        for (int i = 0; i < 16; i++)
            if (opcode_names[i] && strcmp(s, opcode_names[i]) == 0) {
                *bits |= 1u << i;
                return true;
            }
        if (groups && strcmp(s, "data") == 0) {
            *bits |= 1u << 0 | 1u << 1 | 1u << 2;
            return true;
        }
        if (groups && strcmp(s, "control") == 0) {
            *bits |= 1u << 8 | 1u << 9 | 1u << 10;
            return true;
        }
    }
    return expected(c, path,
                    groups ? "text, binary, continuation, close, ping, pong, data, control or "
                             "0-15"
                           : "text, binary, continuation, close, ping, pong or 0-15",
                    v);
}

static bool get_target(struct ctx *c, const char *path, const cJSON *v, enum wsrr_target *out)
{
    if (cJSON_IsString(v)) {
        if (strcmp(v->valuestring, "client") == 0)
            *out = WSRR_TO_CLIENT;
        else if (strcmp(v->valuestring, "server") == 0)
            *out = WSRR_TO_SERVER;
        else if (strcmp(v->valuestring, "both") == 0)
            *out = WSRR_TO_BOTH;
        else
            return expected(c, path, "client, server or both", v);
        return true;
    }
    return expected(c, path, "client, server or both", v);
}

/* ---- actions ---- */

enum slot {
    S_END,
    S_MS,
    S_JITTER,
    S_COUNT,
    S_CODE,
    S_TEXT,  /* a string */
    S_B64,   /* the same slot, base64 */
    S_VALID, /* corrupt: keep the frame valid */
    S_WHEN,  /* inject: before/after */
    S_OPCODE,
    S_TO,
    S_JSON_EDIT, /* replace: {"set": {...}, "remove": [...]} */
    S_HEADERS,   /* reject: {"Name": "value"} */
};

struct param {
    const char *key;
    enum slot slot;
    bool required;
    uint64_t min, max;
};

struct spec {
    const char *name;
    enum wsrr_action_kind kind;
    enum wsrr_action_scope scope;
    struct param p[6];
};

#define MSG  WSRR_SCOPE_MESSAGE
#define CONN WSRR_SCOPE_CONNECTION
#define HS   WSRR_SCOPE_HANDSHAKE

static const struct spec specs[WSRR_ACT_COUNT] = {
    {"drop", WSRR_ACT_DROP, MSG, {{0}}},
    {"delay",
     WSRR_ACT_DELAY,
     MSG,
     {{"ms", S_MS, true, 0, MAX_MS}, {"jitter_ms", S_JITTER, false, 0, MAX_MS}}},
    {"duplicate", WSRR_ACT_DUPLICATE, MSG, {{"times", S_COUNT, false, 1, 1000}}},
    {"reorder", WSRR_ACT_REORDER, MSG, {{"after", S_COUNT, false, 1, 1000}}},
    {"corrupt",
     WSRR_ACT_CORRUPT,
     MSG,
     {{"bytes", S_COUNT, false, 1, 1u << 20}, {"keep_valid", S_VALID, false, 0, 0}}},
    {"truncate", WSRR_ACT_TRUNCATE, MSG, {{"bytes", S_COUNT, true, 0, UINT32_MAX}}},
    {"fragment", WSRR_ACT_FRAGMENT, MSG, {{"frames", S_COUNT, true, 2, 1u << 16}}},
    {"replace",
     WSRR_ACT_REPLACE,
     MSG,
     {{"payload", S_TEXT, false, 0, 0},
      {"payload_b64", S_B64, false, 0, 0},
      {"json", S_JSON_EDIT, false, 0, 0}}},
    {"inject",
     WSRR_ACT_INJECT,
     MSG,
     {{"when", S_WHEN, false, 0, 0},
      {"opcode", S_OPCODE, false, 0, 0},
      {"payload", S_TEXT, false, 0, 0},
      {"payload_b64", S_B64, false, 0, 0},
      {"to", S_TO, false, 0, 0}}},
    {"close",
     WSRR_ACT_CLOSE,
     MSG,
     {{"code", S_CODE, true, 0, 65535},
      {"reason", S_TEXT, false, 0, 0},
      {"to", S_TO, false, 0, 0}}},
    {"ping_storm",
     WSRR_ACT_PING_STORM,
     MSG,
     {{"count", S_COUNT, true, 1, 100000},
      {"interval_ms", S_MS, false, 0, 60000},
      {"to", S_TO, false, 0, 0}}},
    {"reset", WSRR_ACT_RESET, CONN, {{"to", S_TO, false, 0, 0}}},
    {"half_close", WSRR_ACT_HALF_CLOSE, CONN, {{"to", S_TO, false, 0, 0}}},
    {"stall", WSRR_ACT_STALL, CONN, {{"ms", S_MS, false, 0, MAX_MS}}},
    {"bandwidth", WSRR_ACT_BANDWIDTH, CONN, {{"bytes_per_s", S_COUNT, true, 1, UINT32_MAX}}},
    {"latency",
     WSRR_ACT_LATENCY,
     CONN,
     {{"ms", S_MS, true, 0, MAX_MS}, {"jitter_ms", S_JITTER, false, 0, MAX_MS}}},
    {"slicer",
     WSRR_ACT_SLICER,
     CONN,
     {{"bytes", S_COUNT, true, 1, 1u << 16}, {"delay_ms", S_MS, false, 0, 60000}}},
    {"timeout", WSRR_ACT_TIMEOUT, CONN, {{"ms", S_MS, true, 0, MAX_MS}}},
    {"kill_after", WSRR_ACT_KILL_AFTER, CONN, {{"bytes", S_COUNT, true, 0, UINT64_MAX >> 12}}},
    {"reject",
     WSRR_ACT_REJECT,
     HS,
     {{"status", S_CODE, true, 100, 599},
      {"body", S_TEXT, false, 0, 0},
      {"headers", S_HEADERS, false, 0, 0}}},
    {"delay_upgrade", WSRR_ACT_DELAY_UPGRADE, HS, {{"ms", S_MS, true, 0, MAX_MS}}},
    {"headers", WSRR_ACT_HEADERS, HS, {{0}}}, /* checked by headers_edit() */
    {"refuse_connect", WSRR_ACT_REFUSE_CONNECT, HS, {{0}}},
    {"delay_connect", WSRR_ACT_DELAY_CONNECT, HS, {{"ms", S_MS, true, 0, MAX_MS}}},
};

const char *wsrr_action_name(enum wsrr_action_kind k)
{
    return k < WSRR_ACT_COUNT ? specs[k].name : "?";
}

enum wsrr_action_scope wsrr_action_scope(enum wsrr_action_kind k)
{
    return k < WSRR_ACT_COUNT ? specs[k].scope : WSRR_SCOPE_MESSAGE;
}

static bool string_list(struct ctx *c, const char *path, const cJSON *v)
{
    if (!cJSON_IsArray(v))
        return expected(c, path, "an array of strings", v);
    for (const cJSON *e = v->child; e; e = e->next)
        if (!cJSON_IsString(e))
            return expected(c, path, "an array of strings", v);
    return true;
}

static bool string_map(struct ctx *c, const char *path, const cJSON *v)
{
    if (!cJSON_IsObject(v))
        return expected(c, path, "an object of strings", v);
    for (const cJSON *e = v->child; e; e = e->next)
        if (!cJSON_IsString(e)) {
            char p[320];
            join(p, sizeof(p), path, e->string);
            return expected(c, p, "a string", e);
        }
    return true;
}

static bool tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* HTTP fields wsrr will write: names are tokens (RFC 9110 5.1), values hold
 * no CR or LF (no request or response splitting). */
static bool field_map(struct ctx *c, const char *path, const cJSON *v)
{
    if (!string_map(c, path, v))
        return false;
    for (const cJSON *e = v->child; e; e = e->next) {
        char p[320];
        join(p, sizeof(p), path, e->string);
        bool token = e->string[0] != '\0';
        for (const char *q = e->string; *q && token; q++)
            token = tchar(*q);
        if (!token)
            return fail(c, p, "a header name is a token (letters, digits, !#$%%&'*+-.^_`|~)");
        if (strpbrk(e->valuestring, "\r\n"))
            return fail(c, p, "a header value cannot hold CR or LF");
    }
    return true;
}

/* {"set": {path: value}, "remove": [path]}: a JSON edit of the payload. */
static bool json_edit(struct ctx *c, const char *path, const cJSON *v)
{
    static const char *const keys[] = {"set", "remove", NULL};
    if (!cJSON_IsObject(v))
        return expected(c, path, "an object with set and/or remove", v);
    if (!known_keys(c, path, v, keys))
        return false;
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(v, "set");
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(v, "remove");
    char p[320];
    if (set) {
        join(p, sizeof(p), path, "set");
        if (!cJSON_IsObject(set))
            return expected(c, p, "an object of dotted path: value", set);
    }
    if (rm) {
        join(p, sizeof(p), path, "remove");
        if (!string_list(c, p, rm))
            return false;
    }
    if (!set && !rm)
        return fail(c, path, "expected set and/or remove");
    return true;
}

/* headers action: {"request"|"response": {"set": {...}, "remove": [...]}} */
static bool headers_edit(struct ctx *c, const char *path, const cJSON *v)
{
    static const char *const sides[] = {"request", "response", NULL};
    static const char *const keys[] = {"set", "remove", NULL};
    if (!cJSON_IsObject(v) || !v->child)
        return expected(c, path, "an object with request and/or response", v);
    if (!known_keys(c, path, v, sides))
        return false;
    for (const cJSON *side = v->child; side; side = side->next) {
        char p[320];
        join(p, sizeof(p), path, side->string);
        if (!cJSON_IsObject(side) || !side->child)
            return expected(c, p, "an object with set and/or remove", side);
        if (!known_keys(c, p, side, keys))
            return false;
        const cJSON *set = cJSON_GetObjectItemCaseSensitive(side, "set");
        const cJSON *rm = cJSON_GetObjectItemCaseSensitive(side, "remove");
        char q[320];
        join(q, sizeof(q), p, "set");
        if (set && !field_map(c, q, set))
            return false;
        join(q, sizeof(q), p, "remove");
        if (rm && !string_list(c, q, rm))
            return false;
    }
    return true;
}

static bool decode_b64(struct ctx *c, const char *path, const char *s, struct wsrr_action *a)
{
    size_t n = strlen(s);
    if (n % 4)
        return fail(c, path, "expected base64 (a multiple of 4 characters), got %zu characters", n);
    unsigned char *out = malloc(n / 4 * 3 + 1);
    if (!out)
        return fail(c, path, "out of memory");
    int k = n ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)n) : 0;
    if (k < 0) {
        free(out);
        return fail(c, path, "expected base64, got characters outside its alphabet");
    }
    size_t len = (size_t)k;
    if (n >= 1 && s[n - 1] == '=')
        len--;
    if (n >= 2 && s[n - 2] == '=')
        len--;
    out[len] = 0;
    free(a->text);
    a->text = (char *)out;
    a->text_len = len;
    a->binary = true;
    return true;
}

static bool parse_action(struct ctx *c, const char *path, const cJSON *v, struct wsrr_action *a)
{
    if (!cJSON_IsObject(v) || !v->child || v->child->next) {
        char list[400] = "";
        for (int i = 0; i < WSRR_ACT_COUNT; i++) {
            size_t n = strlen(list);
            snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "", specs[i].name);
        }
        char what[460];
        snprintf(what, sizeof(what), "an object with exactly one action (%s)", list);
        return expected(c, path, what, v);
    }
    const cJSON *body = v->child;
    const struct spec *sp = NULL;
    for (int i = 0; i < WSRR_ACT_COUNT && !sp; i++)
        if (strcmp(body->string, specs[i].name) == 0)
            sp = &specs[i];
    if (!sp)
        return fail(c, path, "unknown action '%s'", body->string);
    char p[320];
    join(p, sizeof(p), path, sp->name);
    if (!cJSON_IsObject(body))
        return expected(c, p, "an object of parameters ({} for none)", body);

    memset(a, 0, sizeof(*a));
    a->kind = sp->kind;
    a->count = 1;
    a->flag = sp->kind == WSRR_ACT_CORRUPT; /* corrupt keeps frames valid unless told */
    a->opcode = 1;
    if (sp->kind == WSRR_ACT_HEADERS) {
        if (!headers_edit(c, p, body))
            return false;
        a->json = cJSON_Duplicate(body, true);
        return a->json != NULL || fail(c, p, "out of memory");
    }
    const char *keys[8] = {0};
    int nk = 0;
    for (const struct param *q = sp->p; q->key; q++)
        keys[nk++] = q->key;
    if (!known_keys(c, p, body, keys))
        return false;
    bool have_text = false;
    for (const struct param *q = sp->p; q->key; q++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(body, q->key);
        char pp[320];
        join(pp, sizeof(pp), p, q->key);
        if (!x) {
            if (q->required)
                return fail(c, p, "missing '%s'", q->key);
            continue;
        }
        switch (q->slot) {
        case S_MS:
            if (!get_uint(c, pp, x, q->min, q->max, &a->ms))
                return false;
            break;
        case S_JITTER:
            if (!get_uint(c, pp, x, q->min, q->max, &a->jitter_ms))
                return false;
            break;
        case S_COUNT:
            if (!get_uint(c, pp, x, q->min, q->max, &a->count))
                return false;
            break;
        case S_CODE: {
            uint64_t n;
            if (!get_uint(c, pp, x, q->min, q->max, &n))
                return false;
            a->code = (int)n;
            break;
        }
        case S_TEXT:
        case S_B64:
            if (have_text)
                return fail(c, p, "payload and payload_b64 together: give one");
            have_text = true;
            if (!cJSON_IsString(x))
                return expected(c, pp, q->slot == S_B64 ? "a base64 string" : "a string", x);
            if (q->slot == S_B64) {
                if (!decode_b64(c, pp, x->valuestring, a))
                    return false;
            } else {
                if (!get_str(c, pp, x, 1u << 24, &a->text))
                    return false;
                a->text_len = strlen(a->text);
            }
            break;
        case S_VALID:
        case S_WHEN:
            if (q->slot == S_VALID) {
                if (!cJSON_IsBool(x))
                    return expected(c, pp, "true or false", x);
                a->flag = cJSON_IsTrue(x);
            } else {
                if (!cJSON_IsString(x) ||
                    (strcmp(x->valuestring, "before") && strcmp(x->valuestring, "after")))
                    return expected(c, pp, "before or after", x);
                a->flag = strcmp(x->valuestring, "after") == 0;
            }
            break;
        case S_OPCODE: {
            uint32_t bits = 0;
            if (!one_opcode(c, pp, x, false, &bits))
                return false;
            a->opcode = __builtin_ctz(bits);
            break;
        }
        case S_TO:
            if (!get_target(c, pp, x, &a->to))
                return false;
            break;
        case S_JSON_EDIT:
        case S_HEADERS:
            if (q->slot == S_JSON_EDIT ? !json_edit(c, pp, x) : !field_map(c, pp, x))
                return false;
            a->json = cJSON_Duplicate(x, true);
            if (!a->json)
                return fail(c, pp, "out of memory");
            break;
        case S_END: break;
        }
    }
    if (sp->kind == WSRR_ACT_REPLACE && !have_text && !a->json)
        return fail(c, p, "expected payload, payload_b64 or json");
    if (sp->kind == WSRR_ACT_REPLACE && have_text && a->json)
        return fail(c, p, "a payload and a json edit together: give one");
    if (sp->kind == WSRR_ACT_CLOSE && a->text_len > 123)
        return fail(c, p, "reason: %zu bytes; a close frame holds at most 123", a->text_len);
    return true;
}

/* ---- match ---- */

/* glibc's regcomp builds a tree per repetition: stacked quantifiers ("a++",
 * undefined in POSIX EREs anyway) or nested bounds ("((a{99}){99}){99}")
 * make it allocate without end. Refuse both before compiling: estimate the
 * compiled size as the atoms times their enclosing repeat counts. Returns
 * NULL when fine, or what is wrong. */
static const char *regex_too_costly(const char *re)
{
    enum { MAX_DEPTH = 32 };
    double mult[MAX_DEPTH + 1] = {1}; /* the product of repeats around each open group */
    double group_size[MAX_DEPTH + 1] = {0};
    int depth = 0;
    double total = 0, last = 0; /* size of the last atom (for a quantifier after it) */
    bool after_quant = false, have_atom = false;
    for (const char *p = re; *p; p++) {
        char ch = *p;
        bool quant = ch == '*' || ch == '+' || ch == '?' || ch == '{';
        if (quant && have_atom) {
            if (after_quant)
                return "two repetition operators in a row";
            double times = 2; /* *, + and ? cost about one more copy */
            if (ch == '{') {
                char *end = NULL;
                long lo = strtol(p + 1, &end, 10), hi = lo;
                if (end && *end == ',') {
                    char *e2 = NULL;
                    hi = strtol(end + 1, &e2, 10);
                    if (e2 == end + 1)
                        hi = lo;
                    end = e2;
                }
                if (!end || *end != '}')
                    return "a malformed {m,n}";
                if (lo > 255 || hi > 255)
                    return "a repeat count over 255";
                times = (double)(hi > lo ? hi : lo) + 1;
                p = end;
            }
            total += last * (times - 1);
            if (total > 20000)
                return "too much repetition (its compiled form would be huge)";
            after_quant = true;
            continue;
        }
        after_quant = false;
        have_atom = true;
        switch (ch) {
        case '\\':
            if (p[1])
                p++;
            last = mult[depth];
            total += last;
            break;
        case '[': {
            const char *q = p + 1;
            if (*q == '^')
                q++;
            if (*q == ']')
                q++;
            while (*q && *q != ']')
                q++;
            p = *q ? q : q - 1;
            last = mult[depth];
            total += last;
            break;
        }
        case '(':
            if (depth == MAX_DEPTH)
                return "groups nested over 32 deep";
            depth++;
            mult[depth] = mult[depth - 1];
            group_size[depth] = total;
            have_atom = false;
            break;
        case ')':
            if (depth > 0) {
                last = total - group_size[depth];
                depth--;
            }
            break;
        case '|': have_atom = false; break;
        default:
            last = mult[depth];
            total += last;
            break;
        }
        if (total > 20000)
            return "too long once compiled";
    }
    return NULL;
}

static bool parse_match(struct ctx *c, const char *path, const cJSON *v, struct wsrr_match *m,
                        char ***after_names, size_t idx)
{
    static const char *const keys[] = {
        "direction", "opcode", "conn", "nth",      "skip",       "path",        "client", "header",
        "contains",  "regex",  "json", "after_ms", "after_rule", "probability", NULL};
    m->direction = -1;
    m->after_rule = -1;
    m->probability = 1;
    if (!v)
        return true;
    if (!cJSON_IsObject(v))
        return expected(c, path, "an object", v);
    if (!known_keys(c, path, v, keys))
        return false;
    for (const cJSON *x = v->child; x; x = x->next) {
        char p[320];
        join(p, sizeof(p), path, x->string);
        const char *k = x->string;
        if (strcmp(k, "direction") == 0) {
            if (!cJSON_IsString(x) ||
                (strcmp(x->valuestring, "client") && strcmp(x->valuestring, "server")))
                return expected(c, p, "client (sent by the client) or server", x);
            m->direction = strcmp(x->valuestring, "client") == 0 ? WSRR_DIR_C2S : WSRR_DIR_S2C;
        } else if (strcmp(k, "opcode") == 0) {
            if (cJSON_IsArray(x)) {
                if (!x->child)
                    return expected(c, p, "a non-empty list of opcodes", x);
                for (const cJSON *e = x->child; e; e = e->next)
                    if (!one_opcode(c, p, e, true, &m->opcodes))
                        return false;
            } else if (!one_opcode(c, p, x, true, &m->opcodes)) {
                return false;
            }
        } else if (strcmp(k, "conn") == 0) {
            size_t n = cJSON_IsArray(x) ? (size_t)cJSON_GetArraySize(x) : 1;
            if (n == 0 || n > 10000)
                return expected(c, p, "a connection number or a list of 1 to 10000", x);
            m->conns = calloc(n, sizeof(*m->conns));
            if (!m->conns)
                return fail(c, p, "out of memory");
            const cJSON *e = cJSON_IsArray(x) ? x->child : x;
            for (size_t i = 0; i < n; i++, e = e->next)
                if (!get_uint(c, p, e, 1, UINT32_MAX, &m->conns[i]))
                    return false;
            m->nconns = n;
        } else if (strcmp(k, "nth") == 0) {
            if (!get_uint(c, p, x, 1, UINT32_MAX, &m->nth))
                return false;
        } else if (strcmp(k, "skip") == 0) {
            if (!get_uint(c, p, x, 0, UINT32_MAX, &m->skip))
                return false;
        } else if (strcmp(k, "path") == 0) {
            if (!get_str(c, p, x, 4096, &m->path))
                return false;
        } else if (strcmp(k, "client") == 0) {
            if (!get_str(c, p, x, 256, &m->client))
                return false;
        } else if (strcmp(k, "header") == 0) {
            if (!string_map(c, p, x))
                return false;
            m->headers = cJSON_Duplicate(x, true);
            if (!m->headers)
                return fail(c, p, "out of memory");
        } else if (strcmp(k, "contains") == 0) {
            if (!get_str(c, p, x, 1u << 16, &m->contains))
                return false;
            if (!m->contains[0])
                return expected(c, p, "a non-empty string", x);
            m->contains_len = strlen(m->contains);
            m->contains_rare = wsrr_rare_byte(m->contains, m->contains_len);
        } else if (strcmp(k, "regex") == 0) {
            if (!get_str(c, p, x, 4096, &m->regex_src))
                return false;
            const char *costly = regex_too_costly(m->regex_src);
            if (costly) {
                free(m->regex_src);
                m->regex_src = NULL;
                return fail(c, p, "refused: %s", costly);
            }
            int rc = regcomp(&m->regex, m->regex_src, REG_EXTENDED | REG_NOSUB);
            if (rc) {
                char why[160];
                regerror(rc, &m->regex, why, sizeof(why));
                free(m->regex_src);
                m->regex_src = NULL;
                return fail(c, p, "not a POSIX extended regular expression: %s", why);
            }
        } else if (strcmp(k, "json") == 0) {
            if (!cJSON_IsObject(x) || !x->child)
                return expected(c, p, "an object of dotted path: value", x);
            for (const cJSON *e = x->child; e; e = e->next) {
                char q[320];
                join(q, sizeof(q), p, e->string);
                if (!e->string[0] || e->string[0] == '.' ||
                    e->string[strlen(e->string) - 1] == '.' || strstr(e->string, ".."))
                    return fail(c, q, "expected a dotted path like data.type");
                if (cJSON_IsObject(e)) {
                    static const char *const ek[] = {"exists", NULL};
                    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(e, "exists");
                    if (!known_keys(c, q, e, ek) || !cJSON_IsBool(ex))
                        return expected(c, q, "a value, or {\"exists\": true|false}", e);
                } else if (cJSON_IsArray(e)) {
                    return expected(c, q, "a string, number, true, false or null", e);
                }
            }
            m->json = cJSON_Duplicate(x, true);
            if (!m->json)
                return fail(c, p, "out of memory");
        } else if (strcmp(k, "after_ms") == 0) {
            if (!get_uint(c, p, x, 0, MAX_MS, &m->after_ms))
                return false;
        } else if (strcmp(k, "after_rule") == 0) {
            if (!cJSON_IsString(x) || !x->valuestring[0])
                return expected(c, p, "the name of another rule", x);
            /* resolved once every rule is known */
            char *dup = strdup(x->valuestring);
            if (!dup)
                return fail(c, p, "out of memory");
            free((*after_names)[idx]);
            (*after_names)[idx] = dup;
        } else if (strcmp(k, "probability") == 0) {
            if (!cJSON_IsNumber(x) || !(x->valuedouble >= 0 && x->valuedouble <= 1))
                return expected(c, p, "a number from 0 to 1", x);
            m->probability = x->valuedouble;
        }
    }
    return true;
}

/* How common a byte is in WebSocket payloads (mostly JSON and English
 * text): 0 rare .. 255 everywhere. A search for a substring looks for its
 * rarest byte with memchr (vectorised) and checks around each hit, which is
 * many times faster than a general memmem when that byte seldom occurs (the
 * "rare byte" prefilter of ripgrep and of Rust's memchr crate). */
static unsigned byte_rank(uint8_t b)
{
    static const char common[] = " \"etaoinsrhldcu:,mfpgwybvk{}_.01x2";
    const char *at = b ? memchr(common, b, sizeof(common) - 1) : NULL;
    if (at)
        return 255 - (unsigned)(at - common);
    if (b >= 'A' && b <= 'Z')
        return 120;
    if (b >= '0' && b <= '9')
        return 150;
    if (b >= 0x80)
        return 60;
    if (b < 0x20)
        return b == '\n' ? 140 : 10;
    return 90; /* other punctuation */
}

size_t wsrr_rare_byte(const char *s, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (byte_rank((uint8_t)s[i]) < byte_rank((uint8_t)s[best]))
            best = i;
    return best;
}

/* ---- rules ---- */

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return false;
    }
    return true;
}

static bool parse_rule(struct ctx *c, size_t i, const cJSON *v, struct wsrr_rule *r,
                       char ***after_names)
{
    static const char *const keys[] = {"name",           "match",   "action", "limit",
                                       "limit_per_conn", "enabled", NULL};
    snprintf(c->where, sizeof(c->where), "rules[%zu]", i);
    r->enabled = true;
    if (!cJSON_IsObject(v))
        return expected(c, "", "a rule object", v);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
    if (!name)
        return fail(c, "name", "missing: every rule has a name");
    if (!cJSON_IsString(name) || !valid_name(name->valuestring))
        return expected(c, "name", "1-64 letters, digits, '-', '_' or '.'", name);
    r->name = strdup(name->valuestring);
    if (!r->name)
        return fail(c, "name", "out of memory");
    snprintf(c->where, sizeof(c->where), "rule '%s' (rules[%zu])", r->name, i);
    if (!known_keys(c, "", v, keys))
        return false;
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(v, "enabled"))) {
        if (!cJSON_IsBool(x))
            return expected(c, "enabled", "true or false", x);
        r->enabled = cJSON_IsTrue(x);
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(v, "limit")) &&
        !get_uint(c, "limit", x, 1, UINT32_MAX, &r->limit))
        return false;
    if ((x = cJSON_GetObjectItemCaseSensitive(v, "limit_per_conn")) &&
        !get_uint(c, "limit_per_conn", x, 1, UINT32_MAX, &r->limit_per_conn))
        return false;
    if (!parse_match(c, "match", cJSON_GetObjectItemCaseSensitive(v, "match"), &r->match,
                     after_names, i))
        return false;
    x = cJSON_GetObjectItemCaseSensitive(v, "action");
    if (!x)
        return fail(c, "action", "missing: what should happen when the rule matches");
    if (!parse_action(c, "action", x, &r->action))
        return false;
    if (!(r->src = cJSON_Duplicate(v, true)))
        return fail(c, "", "out of memory");
    /* what a handshake or connection rule cannot look at */
    struct wsrr_match *m = &r->match;
    enum wsrr_action_scope sc = specs[r->action.kind].scope;
    if (sc == WSRR_SCOPE_HANDSHAKE && (m->direction >= 0 || m->opcodes || m->nth || m->skip ||
                                       m->contains || m->regex_src || m->json || m->after_ms))
        return fail(c, "match",
                    "%s acts on the handshake: match it by conn, path, client, header, "
                    "after_rule or probability only",
                    specs[r->action.kind].name);
    return true;
}

static bool parse_seed(struct ctx *c, const cJSON *v, struct wsrr_rules *rs)
{
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(s, &end, 10);
        if (!s[0] || *end || errno || s[0] == '-' || s[0] == '+' || s[0] == ' ')
            return expected(c, "seed", "a whole number (as a number, or a string for 64 bits)", v);
        rs->seed = n;
    } else if (!get_uint(c, "seed", v, 0, 9007199254740992ull, &rs->seed)) {
        return false;
    }
    rs->seed_given = true;
    return true;
}

static void match_free(struct wsrr_match *m)
{
    free(m->conns);
    free(m->path);
    free(m->client);
    cJSON_Delete(m->headers);
    free(m->contains);
    if (m->regex_src)
        regfree(&m->regex);
    free(m->regex_src);
    cJSON_Delete(m->json);
}

void wsrr_rules_free(struct wsrr_rules *rs)
{
    if (!rs)
        return;
    for (size_t i = 0; i < rs->count; i++) {
        struct wsrr_rule *r = &rs->rules[i];
        free(r->name);
        cJSON_Delete(r->src);
        match_free(&r->match);
        free(r->action.text);
        cJSON_Delete(r->action.json);
    }
    free(rs->rules);
    free(rs);
}

int wsrr_rules_find(const struct wsrr_rules *rs, const char *name)
{
    for (size_t i = 0; i < rs->count; i++)
        if (strcmp(rs->rules[i].name, name) == 0)
            return (int)i;
    return -1;
}

struct wsrr_rules *wsrr_rules_parse(const char *json, size_t len, char *err, size_t errlen)
{
    struct ctx c = {err, errlen, ""};
    if (len > MAX_RULES_FILE) {
        fail(&c, "", "%zu bytes; a rules file is at most %u", len, MAX_RULES_FILE);
        return NULL;
    }
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!doc) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        size_t line = 1, col = 1;
        for (size_t i = 0; i < at && i < len; i++) {
            if (json[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        fail(&c, "", "not JSON: syntax error at line %zu, column %zu", line, col);
        return NULL;
    }
    for (const char *p = end; p < json + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            cJSON_Delete(doc);
            fail(&c, "", "not JSON: more text after the document");
            return NULL;
        }
    struct wsrr_rules *rs = calloc(1, sizeof(*rs));
    char **after = NULL;
    bool ok = rs != NULL;
    static const char *const top[] = {"seed", "rules", NULL};
    if (!ok)
        fail(&c, "", "out of memory");
    else if (!cJSON_IsObject(doc))
        ok = expected(&c, "", "an object {\"seed\": N, \"rules\": [...]}", doc);
    else
        ok = known_keys(&c, "", doc, top);
    const cJSON *list = ok ? cJSON_GetObjectItemCaseSensitive(doc, "rules") : NULL;
    if (ok && !cJSON_IsArray(list))
        ok = list ? expected(&c, "rules", "an array of rules", list)
                  : fail(&c, "rules", "missing: the list of rules ([] for none)");
    const cJSON *seed = ok ? cJSON_GetObjectItemCaseSensitive(doc, "seed") : NULL;
    if (ok && seed)
        ok = parse_seed(&c, seed, rs);
    size_t n = ok ? (size_t)cJSON_GetArraySize(list) : 0;
    if (ok && n > 10000)
        ok = fail(&c, "rules", "%zu rules; at most 10000", n);
    if (ok && n) {
        rs->rules = calloc(n, sizeof(*rs->rules));
        after = calloc(n, sizeof(*after));
        if (!rs->rules || !after)
            ok = fail(&c, "", "out of memory");
    }
    size_t i = 0;
    for (const cJSON *v = ok ? list->child : NULL; v && ok; v = v->next, i++) {
        rs->count = i + 1;
        ok = parse_rule(&c, i, v, &rs->rules[i], &after);
        for (size_t j = 0; ok && j < i; j++)
            if (strcmp(rs->rules[j].name, rs->rules[i].name) == 0)
                ok = fail(&c, "name", "the same name as rules[%zu]: names must be unique", j);
    }
    for (i = 0; ok && i < rs->count; i++) {
        if (!after[i])
            continue;
        snprintf(c.where, sizeof(c.where), "rule '%s' (rules[%zu])", rs->rules[i].name, i);
        int k = wsrr_rules_find(rs, after[i]);
        if (k < 0)
            ok = fail(&c, "match.after_rule", "no rule is named '%s'", after[i]);
        else if ((size_t)k == i)
            ok = fail(&c, "match.after_rule", "a rule cannot wait for itself");
        else
            rs->rules[i].match.after_rule = k;
    }
    if (after)
        for (i = 0; i < n; i++)
            free(after[i]);
    free(after);
    cJSON_Delete(doc);
    if (!ok) {
        wsrr_rules_free(rs);
        return NULL;
    }
    return rs;
}

char *wsrr_rules_to_json(const struct wsrr_rules *rs)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(doc, "rules");
    bool ok = doc && list;
    if (ok && rs) {
        char seed[24];
        snprintf(seed, sizeof(seed), "%llu", (unsigned long long)rs->seed);
        /* a string: the full 64 bits survive any JSON reader */
        ok = cJSON_AddStringToObject(doc, "seed", seed) != NULL;
        for (size_t i = 0; ok && i < rs->count; i++) {
            cJSON *r = cJSON_Duplicate(rs->rules[i].src, true);
            ok = r && cJSON_AddItemToArray(list, r);
        }
    }
    char *out = ok ? cJSON_Print(doc) : NULL;
    cJSON_Delete(doc);
    return out;
}

struct wsrr_rules *wsrr_rules_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(MAX_RULES_FILE + 1);
    size_t n = buf ? fread(buf, 1, MAX_RULES_FILE + 1, f) : 0;
    bool bad = !buf || ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        snprintf(err, errlen, "%s: cannot read", path);
        return NULL;
    }
    char inner[400];
    struct wsrr_rules *rs = wsrr_rules_parse(buf, n, inner, sizeof(inner));
    free(buf);
    if (!rs)
        snprintf(err, errlen, "%s: %s", path, inner);
    return rs;
}

/* ---- actions shared by the proxy and replay ---- */

uint64_t wsrr_rules_jitter(uint64_t ms, uint64_t jitter_ms, uint64_t seed, const char *rule,
                           uint64_t conn, int dir, uint64_t nth)
{
    if (!jitter_ms)
        return ms;
    uint64_t j = (uint64_t)(wsrr_rules_draw(seed, rule, conn, dir, nth) * (double)(2 * jitter_ms));
    return ms + j > jitter_ms ? ms + j - jitter_ms : 0;
}

void wsrr_rules_reset_counts(struct wsrr_rules *rs)
{
    for (size_t i = 0; rs && i < rs->count; i++)
        rs->rules[i].fired = 0;
}

char *wsrr_json_edit(const uint8_t *p, size_t n, const cJSON *edit)
{
    cJSON *doc = cJSON_ParseWithLength((const char *)p, n);
    if (!doc)
        return NULL;
    const cJSON *set = cJSON_GetObjectItemCaseSensitive(edit, "set");
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(edit, "remove");
    for (int pass = 0; pass < 2; pass++) {
        const cJSON *list = pass == 0 ? rm : set;
        for (const cJSON *e = list ? list->child : NULL; e; e = e->next) {
            const char *path = pass == 0 ? e->valuestring : e->string;
            if (!path)
                continue;
            cJSON *node = doc;
            const char *s = path;
            for (;;) {
                const char *dot = strchr(s, '.');
                size_t k = dot ? (size_t)(dot - s) : strlen(s);
                char key[256];
                if (k >= sizeof(key))
                    break;
                memcpy(key, s, k);
                key[k] = '\0';
                bool last = !dot;
                if (cJSON_IsArray(node) && k && strspn(key, "0123456789") == k && k < 10) {
                    int idx = atoi(key);
                    if (last) {
                        if (pass == 0)
                            cJSON_DeleteItemFromArray(node, idx);
                        else if (idx < cJSON_GetArraySize(node))
                            cJSON_ReplaceItemInArray(node, idx, cJSON_Duplicate(e, true));
                        break;
                    }
                    node = cJSON_GetArrayItem(node, idx);
                } else if (cJSON_IsObject(node)) {
                    if (last) {
                        cJSON_DeleteItemFromObjectCaseSensitive(node, key);
                        if (pass == 1)
                            cJSON_AddItemToObject(node, key, cJSON_Duplicate(e, true));
                        break;
                    }
                    cJSON *next = cJSON_GetObjectItemCaseSensitive(node, key);
                    if (!next && pass == 1)
                        next = cJSON_AddObjectToObject(node, key);
                    node = next;
                } else {
                    node = NULL;
                }
                if (!node)
                    break;
                s = dot + 1;
            }
        }
    }
    char *txt = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return txt;
}

/* Change `count` bytes of the payload: with keep_valid, ASCII letters of a
 * text message become other letters (the UTF-8 stays valid), any byte of a
 * binary one changes; the positions come from the seeded draw. */
void wsrr_corrupt(uint8_t *p, size_t n, uint64_t count, bool text, bool keep_valid, uint64_t seed,
                  const char *rule, uint64_t conn, int dir, uint64_t nth, cJSON *positions)
{
    uint8_t *used = calloc(n ? n : 1, 1); /* each position changes once */
    for (uint64_t i = 0; i < count && n && used; i++) {
        size_t at =
            (size_t)(wsrr_rules_draw(seed ^ (i * 0x9e3779b97f4a7c15ull), rule, conn, dir, nth) *
                     (double)n);
        size_t probe = 0;
        while ((used[at] || (keep_valid && text && p[at] >= 0x80)) && probe++ < n)
            at = (at + 1) % n;
        if (probe > n || used[at] || (keep_valid && text && p[at] >= 0x80))
            break; /* no byte left to change */
        used[at] = 1;
        if (keep_valid && text)
            p[at] = p[at] == 'x' ? 'y' : 'x'; /* ASCII stays ASCII */
        else
            p[at] ^= (uint8_t)(1u + (i % 255));
        cJSON_AddItemToArray(positions, cJSON_CreateNumber((double)at));
    }
    free(used);
}
