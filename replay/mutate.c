/* mutate.c — fuzz's mutations of a session (mutate.h). */
#include "mutate.h"

#include "wsrr/frame.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

uint64_t fz_next(struct fz_rng *g)
{
    uint64_t z = (g->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint32_t fz_below(struct fz_rng *g, uint32_t n)
{
    return n ? (uint32_t)(fz_next(g) % n) : 0;
}

unsigned fz_families_parse(const char *list)
{
    unsigned f = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 4 && !strncmp(p, "json", 4))
            f |= FZ_JSON;
        else if (n == 5 && !strncmp(p, "frame", 5))
            f |= FZ_FRAME;
        else if (n == 8 && !strncmp(p, "schedule", 8))
            f |= FZ_SCHEDULE;
        else if (n == 3 && !strncmp(p, "all", 3))
            f |= FZ_ALL;
        else
            return 0;
        p += n + (p[n] == ',');
    }
    return f;
}

void fz_message_type(uint8_t opcode, const uint8_t *p, size_t n, char *out, size_t cap)
{
    static const char *const keys[] = {"type", "event", "kind", "op", "action", "method"};
    snprintf(out, cap, "%s", opcode == WSRR_OP_BINARY ? "binary" : "text");
    if (opcode != WSRR_OP_TEXT || !n || (p[0] != '{' && p[0] != '['))
        return;
    cJSON *j = cJSON_ParseWithLength((const char *)p, n);
    if (!j)
        return;
    snprintf(out, cap, "%s", cJSON_IsArray(j) ? "[json]" : "{json}");
    for (size_t i = 0; cJSON_IsObject(j) && i < sizeof(keys) / sizeof(keys[0]); i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (cJSON_IsString(t)) {
            snprintf(out, cap, "%s", t->valuestring);
            break;
        }
    }
    cJSON_Delete(j);
}

/* ---- session surgery ---- */

static bool is_data_send(const struct rp_step *st)
{
    return st->kind == RP_SEND && st->opcode != WSRR_OP_CLOSE && st->opcode != WSRR_OP_PING &&
           st->opcode != WSRR_OP_PONG;
}

static bool is_client(const struct rp_step *st)
{
    return st->kind == RP_OPEN || st->kind == RP_SEND || st->kind == RP_HANGUP;
}

/* a new connection like conns[from] (head and response copied), with a
 * fresh id; its index, or -1 */
static long add_conn(struct rp_session *s, size_t from)
{
    struct rp_conn *c = realloc(s->conns, (s->nconns + 1) * sizeof(*c));
    if (!c)
        return -1;
    s->conns = c;
    uint32_t id = 0;
    for (size_t i = 0; i < s->nconns; i++)
        id = c[i].id > id ? c[i].id : id;
    struct rp_conn *n = &c[s->nconns];
    if (rp_conn_copy(n, &c[from]) < 0)
        return -1;
    n->id = id + 1;
    n->rec = (struct rp_outcome){.end = RP_END_OPEN};
    return (long)s->nconns++;
}

/* indices of steps that satisfy pred; the count in *n (array NULL when 0) */
static size_t *collect(const struct rp_session *s, bool (*pred)(const struct rp_step *), size_t *n)
{
    size_t *v = malloc((s->nsteps ? s->nsteps : 1) * sizeof(*v));
    *n = 0;
    for (size_t i = 0; v && i < s->nsteps; i++)
        if (pred(&s->steps[i]))
            v[(*n)++] = i;
    return v;
}

static bool is_json_send(const struct rp_step *st)
{
    return is_data_send(st) && st->opcode == WSRR_OP_TEXT && st->fin && st->len &&
           (st->data[0] == '{' || st->data[0] == '[');
}

static bool is_whole_send(const struct rp_step *st)
{
    return is_data_send(st) && st->opcode != WSRR_OP_CONT && st->fin;
}

static bool is_text_send(const struct rp_step *st)
{
    return is_whole_send(st) && st->opcode == WSRR_OP_TEXT;
}

/* a random step satisfying pred, or -1 */
static long pick(const struct rp_session *s, struct fz_rng *g, bool (*pred)(const struct rp_step *))
{
    size_t n;
    size_t *v = collect(s, pred, &n);
    long r = v && n ? (long)v[fz_below(g, (uint32_t)n)] : -1;
    free(v);
    return r;
}

static cJSON *describe(cJSON *log, const struct rp_session *s, const char *op, long step)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "op", op);
    if (step >= 0) {
        cJSON_AddNumberToObject(d, "conn", s->conns[s->steps[step].conn].id);
        cJSON_AddNumberToObject(d, "seq", (double)s->steps[step].seq);
    }
    cJSON_AddItemToArray(log, d);
    return d;
}

/* ---- json ---- */

/* every node of j (the root first) with its parent */
struct nodes {
    cJSON **node, **parent;
    size_t n, cap;
};

static void walk(struct nodes *v, cJSON *j, cJSON *parent, int depth)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 32;
        cJSON **a = realloc(v->node, cap * sizeof(*a)), **b;
        if (!a)
            return;
        v->node = a;
        if (!(b = realloc(v->parent, cap * sizeof(*b))))
            return;
        v->parent = b;
        v->cap = cap;
    }
    v->node[v->n] = j;
    v->parent[v->n++] = parent;
    if (depth < 64)
        for (cJSON *c = j->child; c; c = c->next)
            walk(v, c, j, depth + 1);
}

/* a random non-root node that passes the filter (NULL filter: any); -1 */
static long pick_node(const struct nodes *v, struct fz_rng *g, int type_mask)
{
    size_t cand = 0;
    for (size_t i = 1; i < v->n; i++)
        if (!type_mask || (v->node[i]->type & type_mask))
            cand++;
    if (!cand)
        return -1;
    size_t k = fz_below(g, (uint32_t)cand);
    for (size_t i = 1; i < v->n; i++)
        if (!type_mask || (v->node[i]->type & type_mask)) {
            if (!k--)
                return (long)i;
        }
    return -1;
}

/* the dotted path of node i, for the log */
static void node_path(const struct nodes *v, size_t i, char *out, size_t cap)
{
    char tmp[256];
    out[0] = '\0';
    for (size_t at = i; at > 0;) {
        cJSON *n = v->node[at], *p = v->parent[at];
        char seg[64];
        if (cJSON_IsArray(p)) {
            int k = 0;
            for (cJSON *c = p->child; c && c != n; c = c->next)
                k++;
            snprintf(seg, sizeof(seg), "%d", k);
        } else {
            snprintf(seg, sizeof(seg), "%.60s", n->string ? n->string : "?");
        }
        snprintf(tmp, sizeof(tmp), "%s%s%s", seg, out[0] ? "." : "", out);
        snprintf(out, cap, "%s", tmp);
        size_t j = 0;
        while (j < v->n && v->node[j] != p)
            j++;
        at = j < v->n ? j : 0;
    }
}

static const char *const boundary_numbers[] = {
    "0",
    "-1",
    "1",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9007199254740993",
    "-9223372036854775809",
    "18446744073709551616",
    "1e308",
    "1e999",
    "-0",
    "0.1",
    "-1.5e-324",
};

/* a replacement value of another type than n's */
static cJSON *other_type(cJSON *n, struct fz_rng *g)
{
    switch (fz_below(g, 6)) {
    case 0: return cJSON_IsString(n) ? cJSON_CreateNumber(1) : cJSON_CreateString("1");
    case 1: return cJSON_IsNumber(n) ? cJSON_CreateTrue() : cJSON_CreateNumber(0);
    case 2: return cJSON_IsNull(n) ? cJSON_CreateFalse() : cJSON_CreateNull();
    case 3: return cJSON_IsArray(n) ? cJSON_CreateObject() : cJSON_CreateArray();
    case 4: return cJSON_IsObject(n) ? cJSON_CreateArray() : cJSON_CreateObject();
    default: return cJSON_IsBool(n) ? cJSON_CreateString("true") : cJSON_CreateFalse();
    }
}

/* a string of a kind servers trip on; its label in *what */
static cJSON *odd_string(struct fz_rng *g, const char **what)
{
    switch (fz_below(g, 7)) {
    case 0: *what = "empty"; return cJSON_CreateString("");
    case 1: {
        *what = "huge";
        size_t n = fz_below(g, 2) ? 65536 : 1 << 20;
        char *b = malloc(n + 1);
        if (!b)
            return NULL;
        memset(b, 'A', n);
        b[n] = '\0';
        cJSON *j = cJSON_CreateString(b);
        free(b);
        return j;
    }
    case 2:
        *what = "unicode";
        return cJSON_CreateString("\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\xe2\x80\xae");
    case 3: *what = "nul"; return cJSON_CreateRaw("\"a\\u0000b\"");
    case 4: *what = "lone-surrogate"; return cJSON_CreateRaw("\"\\ud800\"");
    case 5: *what = "format"; return cJSON_CreateString("%s%s%n%x' OR '1'='1");
    default: *what = "path"; return cJSON_CreateString("../../../../../etc/passwd");
    }
}

static cJSON *deep_nest(struct fz_rng *g, int *depth)
{
    static const int depths[] = {100, 1000, 10000};
    *depth = depths[fz_below(g, 3)];
    char *b = malloc((size_t)*depth * 2 + 2);
    if (!b)
        return NULL;
    memset(b, '[', (size_t)*depth);
    b[*depth] = '1';
    memset(b + *depth + 1, ']', (size_t)*depth);
    b[2 * *depth + 1] = '\0';
    cJSON *j = cJSON_CreateRaw(b);
    free(b);
    return j;
}

/* Replace node i (non-root) by v in its parent. */
static void replace_node(struct nodes *v, size_t i, cJSON *nv)
{
    if (!nv)
        return;
    /* the member keeps its key (cJSON does not move it across) */
    nv->string = v->node[i]->string;
    v->node[i]->string = NULL;
    cJSON_ReplaceItemViaPointer(v->parent[i], v->node[i], nv);
    v->node[i] = nv;
}

/* the top-level "type"-like value of a JSON message, for swaps */
static bool same_type(const struct rp_step *a, const struct rp_step *b)
{
    char ta[64], tb[64];
    fz_message_type(a->opcode, a->data, a->len, ta, sizeof(ta));
    fz_message_type(b->opcode, b->data, b->len, tb, sizeof(tb));
    return !strcmp(ta, tb);
}

/* json.swap: a top-level field's values exchanged between two client
 * messages of the same type. 1: not applicable. */
static int json_swap(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    size_t n;
    size_t *v = collect(s, is_json_send, &n);
    if (!v || n < 2) {
        free(v);
        return v ? 1 : -1;
    }
    size_t a = v[fz_below(g, (uint32_t)n)], b = SIZE_MAX;
    for (uint32_t tries = 0; tries < 8 && b == SIZE_MAX; tries++) {
        size_t k = v[fz_below(g, (uint32_t)n)];
        if (k != a && same_type(&s->steps[a], &s->steps[k]))
            b = k;
    }
    free(v);
    if (b == SIZE_MAX)
        return 1;
    cJSON *ja = cJSON_ParseWithLength((const char *)s->steps[a].data, s->steps[a].len);
    cJSON *jb = cJSON_ParseWithLength((const char *)s->steps[b].data, s->steps[b].len);
    int rc = 1;
    if (cJSON_IsObject(ja) && cJSON_IsObject(jb)) {
        size_t nk = (size_t)cJSON_GetArraySize(ja);
        for (size_t t = 0; t < 4 && rc == 1 && nk; t++) {
            cJSON *fa = cJSON_GetArrayItem(ja, (int)fz_below(g, (uint32_t)nk));
            cJSON *fb = fa ? cJSON_GetObjectItemCaseSensitive(jb, fa->string) : NULL;
            if (!fb || cJSON_Compare(fa, fb, true))
                continue;
            /* the copies keep the key; replaced in place by pointer (no
             * lookup by a name that may be long) */
            cJSON *ca = cJSON_Duplicate(fa, true), *cb = cJSON_Duplicate(fb, true);
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "path", fa->string);
            if (!ca || !cb || !d || !cJSON_ReplaceItemViaPointer(ja, fa, cb)) {
                cJSON_Delete(ca);
                cJSON_Delete(cb);
                cJSON_Delete(d);
                rc = -1;
                break;
            }
            cJSON_ReplaceItemViaPointer(jb, fb, ca);
            char *pa = cJSON_PrintUnformatted(ja), *pb = cJSON_PrintUnformatted(jb);
            rc = pa && pb && !rp_step_set_data(&s->steps[a], pa, strlen(pa)) &&
                         !rp_step_set_data(&s->steps[b], pb, strlen(pb))
                     ? 0
                     : -1;
            cJSON_free(pa);
            cJSON_free(pb);
            if (!rc) {
                cJSON *e = describe(log, s, "json.swap", (long)a);
                cJSON_AddNumberToObject(e, "with_seq", (double)s->steps[b].seq);
                cJSON_AddItemToObject(e, "path", cJSON_DetachItemFromObject(d, "path"));
            }
            cJSON_Delete(d);
        }
    }
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    return rc;
}

/* One JSON mutation on one client message. 0, 1 (not applicable), -1. */
static int mutate_json(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    uint32_t op = fz_below(g, 8);
    if (op == 7)
        return json_swap(s, g, log);
    long at = pick(s, g, is_json_send);
    if (at < 0)
        return 1;
    struct rp_step *st = &s->steps[at];
    cJSON *j = cJSON_ParseWithLength((const char *)st->data, st->len);
    if (!j)
        return 1;
    struct nodes v = {0};
    walk(&v, j, NULL, 0);
    int rc = 1;
    char path[256] = "";
    const char *name = NULL, *what = NULL;
    long i;
    cJSON *nv = NULL;
    int depth = 0;
    switch (op) {
    case 0: /* drop a field or element */
        if ((i = pick_node(&v, g, 0)) < 0)
            break;
        node_path(&v, (size_t)i, path, sizeof(path));
        cJSON_Delete(cJSON_DetachItemViaPointer(v.parent[i], v.node[i]));
        name = "json.drop";
        rc = 0;
        break;
    case 1: { /* add a field to an object (the root when it is one) */
        cJSON *obj = NULL;
        if ((i = pick_node(&v, g, cJSON_Object)) >= 0 && fz_below(g, 2))
            obj = v.node[i], node_path(&v, (size_t)i, path, sizeof(path));
        else if (cJSON_IsObject(j))
            obj = j;
        if (!obj)
            break;
        cJSON *src = v.n > 1 ? v.node[1 + fz_below(g, (uint32_t)(v.n - 1))] : NULL;
        cJSON_AddItemToObject(obj, "wsrr_fuzz", src ? other_type(src, g) : cJSON_CreateNull());
        name = "json.add";
        rc = 0;
        break;
    }
    case 2: /* change a value's type */
        if ((i = pick_node(&v, g, 0)) < 0)
            break;
        node_path(&v, (size_t)i, path, sizeof(path));
        replace_node(&v, (size_t)i, other_type(v.node[i], g));
        name = "json.retype";
        rc = 0;
        break;
    case 3: /* a boundary number */
        if ((i = pick_node(&v, g, cJSON_Number)) < 0 && (i = pick_node(&v, g, 0)) < 0)
            break;
        node_path(&v, (size_t)i, path, sizeof(path));
        what =
            boundary_numbers[fz_below(g, sizeof(boundary_numbers) / sizeof(boundary_numbers[0]))];
        replace_node(&v, (size_t)i, cJSON_CreateRaw(what));
        name = "json.number";
        rc = 0;
        break;
    case 4: /* an odd string */
        if ((i = pick_node(&v, g, cJSON_String)) < 0 && (i = pick_node(&v, g, 0)) < 0)
            break;
        if (!(nv = odd_string(g, &what)))
            break;
        node_path(&v, (size_t)i, path, sizeof(path));
        replace_node(&v, (size_t)i, nv);
        name = "json.string";
        rc = 0;
        break;
    case 5: /* deep nesting */
        if ((i = pick_node(&v, g, 0)) < 0 || !(nv = deep_nest(g, &depth)))
            break;
        node_path(&v, (size_t)i, path, sizeof(path));
        replace_node(&v, (size_t)i, nv);
        name = "json.nest";
        rc = 0;
        break;
    default: /* a duplicate key */
        if ((i = pick_node(&v, g, 0)) < 0 || !cJSON_IsObject(v.parent[i]))
            break;
        node_path(&v, (size_t)i, path, sizeof(path));
        cJSON_AddItemToObject(v.parent[i], v.node[i]->string, other_type(v.node[i], g));
        name = "json.duplicate";
        rc = 0;
        break;
    }
    if (!rc) {
        char *out = cJSON_PrintUnformatted(j);
        rc = out && !rp_step_set_data(st, out, strlen(out)) ? 0 : -1;
        cJSON_free(out);
        if (!rc) {
            cJSON *d = describe(log, s, name, at);
            if (path[0])
                cJSON_AddStringToObject(d, "path", path);
            if (what)
                cJSON_AddStringToObject(d, "value", what);
            if (depth)
                cJSON_AddNumberToObject(d, "depth", depth);
        }
    }
    free(v.node);
    free(v.parent);
    cJSON_Delete(j);
    return rc;
}

/* ---- frame ---- */

/* Split the message at step `at` into k frames (k >= 2, its length >= k),
 * with a ping after the first when ping. */
static int fragment(struct rp_session *s, size_t at, uint32_t k, bool ping)
{
    struct rp_step orig = s->steps[at];
    size_t extra = k - 1 + (ping ? 1 : 0);
    struct rp_step *st = rp_steps_insert(s, at + 1, extra);
    if (!st)
        return -1;
    st = &s->steps[at];
    size_t piece = orig.len / k, off = 0;
    uint8_t *data = orig.data;
    st->data = NULL;
    size_t w = at;
    int rc = 0;
    for (uint32_t i = 0; i < k; i++) {
        size_t n = i == k - 1 ? orig.len - off : piece;
        struct rp_step *f = &s->steps[w++];
        *f = orig;
        f->data = NULL;
        f->len = 0;
        f->opcode = i ? WSRR_OP_CONT : orig.opcode;
        f->fin = i == k - 1;
        f->invalid = orig.invalid;
        if (rp_step_set_data(f, data + off, n) < 0)
            rc = -1;
        off += n;
        if (ping && i == 0) {
            struct rp_step *pg = &s->steps[w++];
            *pg = orig;
            pg->data = NULL;
            pg->len = 0;
            pg->opcode = WSRR_OP_PING;
            pg->fin = true;
            pg->rsv = 0;
            pg->len_width = 0;
            pg->unmasked = false;
            if (rp_step_set_data(pg, "wsrr", 4) < 0)
                rc = -1;
        }
    }
    free(data);
    return rc;
}

static bool is_fragmentable(const struct rp_step *st)
{
    return is_whole_send(st) && st->len >= 2;
}

static int mutate_frame(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    uint32_t op = fz_below(g, 9);
    long at = pick(s, g, op <= 1 ? is_fragmentable : op == 2 ? is_text_send : is_whole_send);
    if (at < 0)
        return 1;
    struct rp_step *st = &s->steps[at];
    cJSON *d;
    switch (op) {
    case 0:
    case 1: { /* fragments, with a ping between the first two */
        uint32_t k = 2 + fz_below(g, (uint32_t)(st->len < 8 ? st->len - 1 : 7));
        d = describe(log, s, op ? "frame.ping-between" : "frame.fragment", at);
        cJSON_AddNumberToObject(d, "frames", k);
        return fragment(s, (size_t)at, k, op == 1);
    }
    case 2: { /* invalid UTF-8 */
        static const char *const bad[] = {"\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                          "\xe2\x82"};
        const char *b = bad[fz_below(g, 5)];
        size_t bl = strlen(b), pos = fz_below(g, (uint32_t)st->len + 1);
        uint8_t *n = malloc(st->len + bl);
        if (!n)
            return -1;
        if (st->len) {
            memcpy(n, st->data, pos);
            memcpy(n + pos + bl, st->data + pos, st->len - pos);
        }
        memcpy(n + pos, b, bl);
        free(st->data);
        st->data = n;
        st->len += bl;
        st->invalid = true;
        d = describe(log, s, "frame.bad-utf8", at);
        cJSON_AddNumberToObject(d, "offset", (double)pos);
        return 0;
    }
    case 3: /* RSV bits; RSV1 alone: compressed without the extension */
        st->rsv = (uint8_t)(1 + fz_below(g, 7));
        st->invalid = true;
        d = describe(log, s, st->rsv == WSRR_RSV1 ? "frame.compressed-flag" : "frame.rsv", at);
        cJSON_AddNumberToObject(d, "rsv", st->rsv);
        return 0;
    case 4: /* a non-minimal length (over 65535 bytes, 64 bits is the minimal one) */
        if (st->len > 65535)
            return 1;
        st->len_width = st->len <= 125 && fz_below(g, 2) ? 16 : 64;
        st->invalid = true;
        d = describe(log, s, "frame.long-length", at);
        cJSON_AddNumberToObject(d, "width", st->len_width);
        return 0;
    case 5: /* no mask */
        st->unmasked = true;
        st->invalid = true;
        describe(log, s, "frame.unmasked", at);
        return 0;
    case 6: /* a reserved opcode */
        st->opcode = fz_below(g, 2) ? 3 : 11;
        st->invalid = true;
        d = describe(log, s, "frame.reserved-opcode", at);
        cJSON_AddNumberToObject(d, "opcode", st->opcode);
        return 0;
    case 7: { /* an oversize message: the payload repeated past 1 MiB or 16 MiB */
        size_t want = (fz_below(g, 4) ? (size_t)1 << 20 : (size_t)16 << 20) + 1;
        uint8_t *n = malloc(want);
        if (!n)
            return -1;
        for (size_t off = 0; off < want;) {
            size_t k = st->len ? (st->len < want - off ? st->len : want - off) : want - off;
            if (st->len)
                memcpy(n + off, st->data, k);
            else
                memset(n + off, 'A', k);
            off += k;
        }
        free(st->data);
        st->data = n;
        st->len = want;
        d = describe(log, s, "frame.oversize", at);
        cJSON_AddNumberToObject(d, "bytes", (double)want);
        return 0;
    }
    default: /* a control frame: an unsolicited pong, or a ping, before it */
    {
        struct rp_step *c = rp_steps_insert(s, (size_t)at, 1);
        if (!c)
            return -1;
        *c = s->steps[at + 1];
        c->data = NULL;
        c->len = 0;
        c->opcode = fz_below(g, 2) ? WSRR_OP_PING : WSRR_OP_PONG;
        c->rsv = c->len_width = 0;
        c->unmasked = false;
        c->pause_us = 0;
        if (rp_step_set_data(c, "wsrr-fuzz", 9) < 0)
            return -1;
        describe(log, s, c->opcode == WSRR_OP_PING ? "frame.ping" : "frame.pong", at + 1);
        return 0;
    }
    }
}

/* ---- schedule ---- */

/* keys whose string values name a user, changed per copy for "different
 * users" */
/* keys whose values are credentials: never changed (a changed token is
 * only refused) */
static bool secret_key(const char *k)
{
    static const char *const names[] = {"token", "secret", "password", "auth",
                                        "key",   "sig",    "cookie",   "credential"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasestr(k, names[i]))
            return true;
    return false;
}

static bool user_key(const char *k)
{
    static const char *const names[] = {"user", "account", "session", "tenant", "login"};
    if (!k || secret_key(k))
        return false;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasestr(k, names[i]))
            return true;
    return false;
}

/* names of one run of something: a conversation, a job, a thread... */
static bool run_name(const char *k)
{
    static const char *const names[] = {"run",  "request", "call",   "conversation", "job",
                                        "task", "chat",    "thread", "stream"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasestr(k, names[i]))
            return true;
    return false;
}

/* keys whose string values identify one run of something (its id): given
 * their own value per copy for "same user, other runs" */
static bool id_key(const char *k)
{
    if (!k || user_key(k) || secret_key(k))
        return false;
    /* "id", "run_id", "run-id", "runId", "RunID"; not "valid" or "paid" */
    size_t n = strlen(k);
    if (!strcasecmp(k, "id") || (n > 2 && !strcasecmp(k + n - 2, "id") &&
                                 (k[n - 3] == '_' || k[n - 3] == '-' || k[n - 2] == 'I')))
        return true;
    return run_name(k);
}

/* The same in an upgrade request's query, narrower: there a "session" is
 * often the credential and a bare "x_id" often names the app or the
 * project the server routes by (client_id, project_id), not the user's
 * run: a changed value would be a refused upgrade, not a separate user. */
static bool query_user_key(const char *k)
{
    return user_key(k) && !strcasestr(k, "session");
}

static bool query_id_key(const char *k)
{
    return id_key(k) && run_name(k);
}

/* The string values at keys that pass pred get "-copy" appended. */
static bool suffix_values(cJSON *j, bool (*pred)(const char *), const char *suffix, int depth)
{
    bool changed = false;
    for (cJSON *c = j->child; c && depth < 32; c = c->next) {
        if (cJSON_IsString(c) && pred(c->string)) {
            size_t n = strlen(c->valuestring) + strlen(suffix) + 1;
            char *v = malloc(n);
            if (v) {
                snprintf(v, n, "%s%s", c->valuestring, suffix);
                cJSON_SetValuestring(c, v);
                free(v);
                changed = true;
            }
        } else if (c->child) {
            changed = suffix_values(c, pred, suffix, depth + 1) || changed;
        }
    }
    return changed;
}

/* A client JSON message with the values that pred picks suffixed; 0, or
 * -1 when out of memory. */
static int suffix_step(struct rp_step *st, bool (*pred)(const char *), const char *suffix)
{
    if (st->kind != RP_SEND || !is_json_send(st))
        return 0;
    cJSON *j = cJSON_ParseWithLength((const char *)st->data, st->len);
    int rc = 0;
    if (j && suffix_values(j, pred, suffix, 0)) {
        char *p = cJSON_PrintUnformatted(j);
        rc = p && rp_step_set_data(st, p, strlen(p)) == 0 ? 0 : -1;
        cJSON_free(p);
    }
    cJSON_Delete(j);
    return rc;
}

/* Every client JSON message of s so; 0, or -1 when out of memory. */
static int suffix_session(struct rp_session *s, bool (*pred)(const char *), const char *suffix)
{
    for (size_t i = 0; i < s->nsteps; i++)
        if (suffix_step(&s->steps[i], pred, suffix) < 0)
            return -1;
    return 0;
}

/* The upgrade request's query parameters whose names pred picks, with a
 * value, get the suffix (?user=alice&run_id=7 -> ?user=alice-w1&run_id=7-w1);
 * 0, or -1 when out of memory. Path segments and cookies stay as they are:
 * which segment names a user is a guess, and a session cookie is a
 * credential. */
static int suffix_query(struct rp_conn *c, bool (*pred)(const char *), const char *suffix)
{
    const char *sp = c->head ? strchr(c->head, ' ') : NULL;
    const char *end = sp ? strpbrk(sp + 1, " \r\n") : NULL;
    const char *q = end ? memchr(sp + 1, '?', (size_t)(end - sp - 1)) : NULL;
    if (!q)
        return 0;
    size_t sl = strlen(suffix), cap = c->head_len + (size_t)(end - q) * sl + 1;
    char *out = malloc(cap), *w = out;
    if (!out)
        return -1;
    memcpy(w, c->head, (size_t)(q + 1 - c->head));
    w += q + 1 - c->head;
    bool changed = false;
    for (const char *p = q + 1; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p)), *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        char key[128];
        memcpy(w, p, (size_t)(pe - p));
        w += pe - p;
        if (eq && eq + 1 < pe && (size_t)(eq - p) < sizeof(key)) {
            memcpy(key, p, (size_t)(eq - p));
            key[eq - p] = '\0';
            if (pred(key)) {
                memcpy(w, suffix, sl);
                w += sl;
                changed = true;
            }
        }
        if (amp)
            *w++ = '&';
        p = amp ? amp + 1 : end;
    }
    size_t rest = c->head_len - (size_t)(end - c->head);
    memcpy(w, end, rest);
    w += rest;
    *w = '\0';
    if (!changed) {
        free(out);
        return 0;
    }
    free(c->head);
    c->head = out;
    c->head_len = (size_t)(w - out);
    return 0;
}

static bool party_key(const char *k)
{
    return user_key(k) || id_key(k);
}

static bool query_party_key(const char *k)
{
    return query_user_key(k) || query_id_key(k);
}

int fz_isolate(struct rp_session *s, unsigned worker)
{
    char suffix[16];
    snprintf(suffix, sizeof(suffix), "-w%u", worker);
    if (!worker)
        return 0;
    for (size_t i = 0; i < s->nconns; i++)
        if (suffix_query(&s->conns[i], query_party_key, suffix) < 0)
            return -1;
    return suffix_session(s, party_key, suffix);
}

/* sched.concurrent: every connection K times over, the copies' steps
 * interleaved at random with the original's (each copy in its own order) */
static int concurrent(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    static const char *const modes[] = {"same", "same user, other ids", "other users"};
    uint32_t k = 2 + fz_below(g, 2), mode = fz_below(g, 3);
    bool (*pred)(const char *) = mode == 1 ? id_key : user_key;
    bool (*qpred)(const char *) = mode == 1 ? query_id_key : query_user_key;
    size_t nc = s->nconns, ns = s->nsteps;
    if (nc * k > 48 || ns * k > 20000) /* copies of copies: enough */
        return 1;
    struct rp_step *all = calloc(ns * k, sizeof(*all));
    size_t *cur = calloc(k, sizeof(*cur));
    if (!all || !cur) {
        free(all);
        free(cur);
        return -1;
    }
    for (uint32_t c = 1; c < k; c++) {
        char suffix[16];
        snprintf(suffix, sizeof(suffix), "-%u", c);
        for (size_t i = 0; i < nc; i++) {
            long at = add_conn(s, i);
            if (at < 0 || (mode && suffix_query(&s->conns[at], qpred, suffix) < 0))
                goto oom;
        }
    }
    size_t w = 0;
    for (;;) {
        uint32_t left = 0;
        for (uint32_t c = 0; c < k; c++)
            left += cur[c] < ns;
        if (!left)
            break;
        uint32_t pickc = fz_below(g, left);
        uint32_t c = 0;
        for (;; c++)
            if (cur[c] < ns && !pickc--)
                break;
        /* a copy's steps move in runs: a client step and the server steps
         * that answer it, or only the first of them: the rest come after
         * another copy's next step, which then overlaps what this copy is
         * still being sent (a second run starting mid-stream) */
        do {
            struct rp_step *src = &s->steps[cur[c]++], *dst = &all[w++];
            *dst = *src;
            dst->data = NULL;
            if (src->len && !(dst->data = malloc(src->len)))
                goto oom;
            if (src->len)
                memcpy(dst->data, src->data, src->len);
            dst->conn = src->conn + (uint32_t)(c * nc);
            if (c && src->kind == RP_OPEN)
                dst->burst = true; /* copies connect at once, in any order */
            if (c && mode) {
                char suffix[16];
                snprintf(suffix, sizeof(suffix), "-%u", c);
                if (suffix_step(dst, pred, suffix) < 0)
                    goto oom;
            }
        } while (cur[c] < ns && !is_client(&s->steps[cur[c]]) && fz_below(g, 3));
    }
    for (size_t i = 0; i < ns; i++)
        free(s->steps[i].data);
    free(s->steps);
    s->steps = all;
    s->nsteps = w;
    free(cur);
    cJSON *d = describe(log, s, "sched.concurrent", -1);
    cJSON_AddNumberToObject(d, "copies", k);
    cJSON_AddStringToObject(d, "copies_are", modes[mode]);
    return 0;
oom:
    for (size_t i = 0; i < ns * k; i++)
        free(all[i].data);
    free(all);
    free(cur);
    return -1;
}

/* sched.no-wait: a client data message moved before the server steps that
 * came before it (on any connection), but not before its own open */
static int no_wait(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    size_t n;
    size_t *v = collect(s, is_data_send, &n);
    if (!v)
        return -1;
    size_t cand = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] > 0 && !is_client(&s->steps[v[i] - 1]))
            v[cand++] = v[i];
    if (!cand) {
        free(v);
        return 1;
    }
    size_t at = v[fz_below(g, (uint32_t)cand)], to = at;
    free(v);
    while (to > 0 && !is_client(&s->steps[to - 1]))
        to--;
    /* not before its own upgrade's answer is needed: frames before it are
     * queued, so only its OPEN bounds it */
    struct rp_step moved = s->steps[at];
    memmove(&s->steps[to + 1], &s->steps[to], (at - to) * sizeof(*s->steps));
    s->steps[to] = moved;
    cJSON *d = describe(log, s, "sched.no-wait", (long)to);
    cJSON_AddNumberToObject(d, "skipped", (double)(at - to));
    return 0;
}

/* The client step now at `hi` was at `lo`: the server steps of its
 * connection in between (its answer, the close reply) now come after it,
 * or the replay would wait for an answer to something not yet sent. */
static int after_moved(struct rp_session *s, size_t lo, size_t hi)
{
    uint32_t conn = s->steps[hi].conn;
    struct rp_step *moved = malloc((hi - lo) * sizeof(*moved));
    if (!moved)
        return -1;
    size_t w = lo + 1, nmoved = 0;
    for (size_t i = lo + 1; i < hi; i++) {
        if (s->steps[i].conn == conn)
            moved[nmoved++] = s->steps[i];
        else
            s->steps[w++] = s->steps[i];
    }
    if (nmoved) {
        s->steps[w++] = s->steps[hi];
        memcpy(&s->steps[w], moved, nmoved * sizeof(*moved));
    }
    free(moved);
    return 0;
}

/* sched.swap: two client steps with only server steps between them change
 * places (an OPEN stays before its connection's other steps) */
static int swap_sends(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    size_t n;
    size_t *v = collect(s, is_client, &n);
    if (!v)
        return -1;
    int rc = 1;
    for (uint32_t t = 0; t < 8 && rc == 1 && n >= 2; t++) {
        size_t k = fz_below(g, (uint32_t)(n - 1));
        struct rp_step *a = &s->steps[v[k]], *b = &s->steps[v[k + 1]];
        if (a->conn == b->conn && (a->kind == RP_OPEN || b->kind == RP_OPEN))
            continue;
        if (a->kind == RP_OPEN || b->kind == RP_OPEN) /* keep it simple: data only */
            continue;
        if (a->conn == b->conn) /* a continuation before its first frame, data after a
                                   close: frames in an order a server may drop us for */
            a->invalid = b->invalid = true;
        struct rp_step tmp = *a;
        *a = *b;
        *b = tmp;
        cJSON *d = describe(log, s, "sched.swap", (long)v[k]);
        cJSON_AddNumberToObject(d, "with_seq", (double)b->seq);
        rc = b->conn != a->conn && after_moved(s, v[k], v[k + 1]) < 0 ? -1 : 0;
    }
    free(v);
    return rc;
}

/* Up to 64 gaps between a `what` step and the `after` step before it on the
 * same connection, into gaps[]; how many. */
static size_t gaps_after(const struct rp_session *s, enum rp_kind what, enum rp_kind after,
                         uint64_t *gaps)
{
    size_t n = 0;
    for (size_t i = 1; i < s->nsteps && n < 64; i++) {
        size_t k = s->steps[i].kind == what ? rp_step_before(s, i, (int)after) : SIZE_MAX;
        if (k != SIZE_MAX && s->steps[k].ts && s->steps[i].ts > s->steps[k].ts)
            gaps[n++] = s->steps[i].ts - s->steps[k].ts;
    }
    return n;
}

/* The typical time the server took to answer, as recorded: the median gap
 * between a server message and the client message before it on the same
 * connection (or else an upgrade's answer and its request), in us (at
 * least 10; 5 ms when the session shows none). */
static uint64_t answer_us(const struct rp_session *s)
{
    uint64_t gaps[64];
    /* upgrades only when no message shows it: through a recording proxy
     * they include its connect to the server */
    size_t n = gaps_after(s, RP_MESSAGE, RP_SEND, gaps);
    if (!n)
        n = gaps_after(s, RP_UPGRADED, RP_OPEN, gaps);
    if (!n)
        return 5000;
    for (size_t i = 1; i < n; i++) /* insertion sort: at most 64 */
        for (size_t k = i; k > 0 && gaps[k - 1] > gaps[k]; k--) {
            uint64_t t = gaps[k];
            gaps[k] = gaps[k - 1];
            gaps[k - 1] = t;
        }
    uint64_t us = gaps[n / 2] / 1000;
    return us < 10 ? 10 : us;
}

/* sched.pause: a client step waits first, for a time on the scale of the
 * server's own answers (half of one to 16 of them, 10 us to 250 ms): long
 * enough to let the server finish something it would otherwise still be
 * doing when the step comes */
static int pause_step(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    static const uint32_t times_half[] = {1, 2, 4, 8, 32}; /* in halves of an answer */
    size_t n;
    size_t *v = collect(s, is_client, &n);
    if (!v || !n) {
        free(v);
        return v ? 1 : -1;
    }
    size_t at = v[fz_below(g, (uint32_t)n)];
    free(v);
    uint64_t us = answer_us(s) * times_half[fz_below(g, 5)] / 2;
    s->steps[at].pause_us = (uint32_t)(us < 10 ? 10 : us > 250000 ? 250000 : us);
    cJSON *d = describe(log, s, "sched.pause", (long)at);
    cJSON_AddNumberToObject(d, "ms", s->steps[at].pause_us / 1e3);
    return 0;
}

/* sched.early-close: after a client message, a close (or a hang-up); the
 * connection's later steps are gone */
static int early_close(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    static const uint16_t codes[] = {1000, 1001, 1002, 1003, 1008, 1011, 4000};
    long at = pick(s, g, is_data_send);
    if (at < 0)
        return 1;
    uint32_t conn = s->steps[at].conn;
    for (size_t i = s->nsteps; i-- > (size_t)at + 1;)
        if (s->steps[i].conn == conn)
            rp_step_remove(s, i);
    struct rp_step *c = rp_steps_insert(s, (size_t)at + 1, 1);
    if (!c)
        return -1;
    *c = (struct rp_step){.conn = conn, .seq = s->steps[at].seq, .ts = s->steps[at].ts};
    uint32_t how = fz_below(g, 3);
    cJSON *d;
    if (how == 0) {
        c->kind = RP_SEND;
        c->opcode = WSRR_OP_CLOSE;
        c->fin = true;
        c->code = codes[fz_below(g, sizeof(codes) / sizeof(codes[0]))];
        d = describe(log, s, "sched.early-close", at);
        cJSON_AddNumberToObject(d, "code", c->code);
    } else {
        c->kind = RP_HANGUP;
        c->rst = how == 2;
        d = describe(log, s, c->rst ? "sched.early-reset" : "sched.early-hangup", at);
    }
    /* it no longer ends the way it was recorded */
    s->conns[conn].rec = (struct rp_outcome){.end = RP_END_OPEN};
    for (size_t i = 0; i < s->nsteps; i++)
        if (s->steps[i].conn == conn)
            s->steps[i].failure = false;
    return 0;
}

/* sched.storm: N more connections that open, are answered and hang up,
 * all at one point of the session */
static int storm(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    long open = -1;
    for (uint32_t t = 0; t < 8 && open < 0; t++) {
        size_t i = fz_below(g, (uint32_t)s->nsteps);
        if (s->steps[i].kind == RP_OPEN)
            open = (long)i;
        else if (s->steps[i].kind == RP_UPGRADED && s->steps[i].code == 101)
            open = (long)i;
    }
    if (open < 0 || s->nconns > 64)
        return 1;
    uint32_t from = s->steps[open].conn, n = 5 + fz_below(g, 16);
    size_t at = fz_below(g, (uint32_t)s->nsteps + 1);
    bool rst = fz_below(g, 2);
    uint64_t seq = at < s->nsteps ? s->steps[at].seq : s->steps[s->nsteps - 1].seq;
    struct rp_step *st = rp_steps_insert(s, at, 3 * (size_t)n);
    if (!st)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        long ci = add_conn(s, from);
        if (ci < 0)
            return -1;
        s->steps[at + i] =
            (struct rp_step){.kind = RP_OPEN, .conn = (uint32_t)ci, .seq = seq, .burst = true};
        s->steps[at + n + i] =
            (struct rp_step){.kind = RP_UPGRADED, .conn = (uint32_t)ci, .code = 101, .seq = seq};
        s->steps[at + 2 * n + i] = (struct rp_step){
            .kind = RP_HANGUP, .conn = (uint32_t)ci, .rst = rst, .seq = seq, .burst = true};
    }
    cJSON *d = describe(log, s, "sched.storm", -1);
    cJSON_AddNumberToObject(d, "connections", n);
    cJSON_AddNumberToObject(d, "like_conn", s->conns[from].id);
    cJSON_AddBoolToObject(d, "reset", rst);
    return 0;
}

static int mutate_schedule(struct rp_session *s, struct fz_rng *g, cJSON *log)
{
    switch (fz_below(g, 7)) {
    case 0:
    case 1: return concurrent(s, g, log);
    case 2: return no_wait(s, g, log);
    case 3: return swap_sends(s, g, log);
    case 4: return pause_step(s, g, log);
    case 5: return early_close(s, g, log);
    default: return storm(s, g, log);
    }
}

int fz_mutate(struct rp_session *s, struct fz_rng *g, unsigned families, unsigned max, cJSON *log)
{
    static const unsigned order[] = {FZ_JSON, FZ_FRAME, FZ_SCHEDULE};
    unsigned want = 1 + fz_below(g, max ? max : 1), applied = 0, done = 0;
    for (unsigned tries = 0; done < want && tries < 4 * want + 8; tries++) {
        unsigned f = order[fz_below(g, 3)];
        if (!(families & f))
            continue;
        int rc = f == FZ_JSON    ? mutate_json(s, g, log)
                 : f == FZ_FRAME ? mutate_frame(s, g, log)
                                 : mutate_schedule(s, g, log);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            applied |= f;
            done++;
        }
    }
    rp_session_renumber(s);
    return (int)applied;
}
