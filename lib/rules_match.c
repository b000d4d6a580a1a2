/* rules_match.c — deciding which rule fires for a connection or a message.
 *
 * Conditions are tried cheapest first; the payload is parsed as JSON only
 * when every other condition of the rule holds. Randomness is a hash of the
 * seed, the rule's name and the message's coordinates (connection ordinal,
 * direction, ordinal), never a generator advanced by traffic, so a decision
 * does not depend on anything else that flows.
 */
#include "wsrr/frame.h"
#include "wsrr/handshake.h"
#include "wsrr/rules.h"

#include <fnmatch.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct per_rule {
    bool conn_ok;     /* the open-time conditions (conn, path, client, header) hold */
    uint64_t matched; /* messages that met the conditions (for skip) */
    uint64_t fired;
};

struct wsrr_rules_conn {
    uint64_t ordinal;
    size_t count;
    struct per_rule r[];
};

/* ---- randomness ---- */

static uint64_t mix(uint64_t z)
{
    /* splitmix64's finaliser */
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double wsrr_rules_draw(uint64_t seed, const char *rule, uint64_t conn, int dir, uint64_t nth)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the name */
    for (const char *p = rule; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    uint64_t z = mix(seed ^ mix(h));
    z = mix(z ^ conn);
    z = mix(z ^ (uint64_t)(dir + 1));
    z = mix(z ^ nth);
    return (double)(z >> 11) * 0x1.0p-53;
}

/* ---- the connection ---- */

static bool header_ok(const cJSON *want, const struct wsrr_http_head *h)
{
    for (const cJSON *e = want ? want->child : NULL; e; e = e->next) {
        if (!h)
            return false;
        bool any = false;
        /* every field of that name is a candidate */
        for (size_t i = 0; i < h->nfields && !any; i++) {
            const struct wsrr_http_field *g = &h->fields[i];
            if (g->name_len != strlen(e->string) || strncasecmp(g->name, e->string, g->name_len))
                continue;
            char v[1024];
            size_t k = g->value_len < sizeof(v) - 1 ? g->value_len : sizeof(v) - 1;
            memcpy(v, g->value, k);
            v[k] = '\0';
            any = fnmatch(e->valuestring, v, 0) == 0;
        }
        if (!any)
            return false;
    }
    return true;
}

struct wsrr_rules_conn *wsrr_rules_conn_new(const struct wsrr_rules *rs,
                                            const struct wsrr_conn_info *ci)
{
    struct wsrr_rules_conn *rc = calloc(1, sizeof(*rc) + rs->count * sizeof(rc->r[0]));
    if (!rc)
        return NULL;
    rc->ordinal = ci->ordinal;
    rc->count = rs->count;
    for (size_t i = 0; i < rs->count; i++) {
        const struct wsrr_match *m = &rs->rules[i].match;
        bool ok = true;
        if (m->nconns) {
            ok = false;
            for (size_t k = 0; k < m->nconns && !ok; k++)
                ok = m->conns[k] == ci->ordinal;
        }
        if (ok && m->path)
            ok = ci->path && fnmatch(m->path, ci->path, 0) == 0;
        if (ok && m->client)
            ok = ci->client && fnmatch(m->client, ci->client, 0) == 0;
        if (ok && m->headers)
            ok = header_ok(m->headers, ci->request);
        rc->r[i].conn_ok = ok;
    }
    return rc;
}

void wsrr_rules_conn_free(struct wsrr_rules_conn *rc)
{
    free(rc);
}

bool wsrr_rules_flat_payload(const struct wsrr_rules *rs)
{
    for (size_t i = 0; rs && i < rs->count; i++) {
        const struct wsrr_match *m = &rs->rules[i].match;
        if (rs->rules[i].enabled &&
            (m->regex_src || m->json || m->contains_len > WSRR_PIECES_NEEDLE_MAX))
            return true;
    }
    return false;
}

bool wsrr_rules_conn_any(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc)
{
    for (size_t i = 0; i < rs->count && i < rc->count; i++)
        if (rs->rules[i].enabled && rc->r[i].conn_ok &&
            wsrr_action_scope(rs->rules[i].action.kind) != WSRR_SCOPE_HANDSHAKE)
            return true;
    return false;
}

/* ---- messages ---- */

bool wsrr_contains(const uint8_t *hay, size_t len, const char *needle, size_t n, size_t rare)
{
    if (n > len)
        return false;
    uint8_t key = (uint8_t)needle[rare];
    /* the key can only sit where a whole needle fits around it */
    const uint8_t *p = hay + rare, *end = hay + len - (n - rare - 1);
    for (int misses = 0; p < end; misses++) {
        if (misses == 256) /* the key is not rare here: memmem stays linear */
            return memmem(p - rare, (size_t)(hay + len - (p - rare)), needle, n) != NULL;
        const uint8_t *hit = memchr(p, key, (size_t)(end - p));
        if (!hit)
            return false;
        if (memcmp(hit - rare, needle, n) == 0)
            return true;
        p = hit + 1;
    }
    return false;
}

/* ---- searching a payload where it lies ---- */

/* 16 bytes compared at once: GCC and clang lower this to SSE2 / NEON */
typedef uint8_t v16 __attribute__((vector_size(16)));

/* Does any of the 64 bytes at p equal its byte of pat (repeated)? */
static inline bool any_eq64(const uint8_t *p, v16 pat)
{
    v16 a, b, c, d;
    memcpy(&a, p, 16);
    memcpy(&b, p + 16, 16);
    memcpy(&c, p + 32, 16);
    memcpy(&d, p + 48, 16);
    v16 eq = (v16)((a == pat) | (b == pat) | (c == pat) | (d == pat));
#ifdef __SSE2__
    return _mm_movemask_epi8((__m128i)eq) != 0;
#else
    uint64_t w[2];
    memcpy(w, &eq, 16);
    return (w[0] | w[1]) != 0;
#endif
}

/* The pattern a block at j is compared with: the key of position k is
 * pat[k & 3] (the masked key takes four values by position). */
static v16 phased16(const uint8_t pat[4], size_t j)
{
    v16 p;
    for (unsigned i = 0; i < 16; i++)
        p[i] = pat[(j + i) & 3];
    return p;
}

/* The first block of 64 bytes at j, j + 64, ... that holds a byte equal to
 * its key, or the first j with j + 64 > len when none does. */
static size_t scan_blocks(const uint8_t *hay, size_t j, size_t len, const uint8_t pat[4])
{
    v16 p = phased16(pat, j);
    while (j + 64 <= len && !any_eq64(hay + j, p))
        j += 64;
    return j;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same, 128 bytes per turn with AVX2 where the CPU has it, from the
 * first 64-byte boundary on (a payload starts anywhere; loads across cache
 * lines cost twice): a masked payload is searched at about the speed of
 * glibc's memchr on an unmasked one. The block returned may start before a
 * boundary; what lies before it holds no key. */
typedef uint8_t v32 __attribute__((vector_size(32)));

__attribute__((target("avx2"))) static size_t scan_blocks_avx2(const uint8_t *hay, size_t j,
                                                               size_t len, const uint8_t pat[4])
{
    size_t mis = (uintptr_t)(hay + j) & 63;
    if (mis && j + 64 <= len) {
        if (any_eq64(hay + j, phased16(pat, j)))
            return j;
        j += 64 - mis;
    }
    v32 p;
    for (unsigned i = 0; i < 32; i++)
        p[i] = pat[(j + i) & 3];
    while (j + 128 <= len) {
        v32 a, b, c, d;
        memcpy(&a, hay + j, 32);
        memcpy(&b, hay + j + 32, 32);
        memcpy(&c, hay + j + 64, 32);
        memcpy(&d, hay + j + 96, 32);
        v32 lo = (v32)((a == p) | (b == p)), hi = (v32)((c == p) | (d == p));
        if (!_mm256_testz_si256((__m256i)(lo | hi), (__m256i)(lo | hi)))
            return _mm256_testz_si256((__m256i)lo, (__m256i)lo) ? j + 64 : j;
        j += 128;
    }
    _mm256_zeroupper(); /* the tail runs SSE code: no penalty for dirty upper halves */
    return scan_blocks(hay, j, len, pat);
}
#endif

typedef size_t (*scan_fn)(const uint8_t *hay, size_t j, size_t len, const uint8_t pat[4]);
static scan_fn scan = scan_blocks;

#if defined(__x86_64__) && defined(__GNUC__)
/* Picked once, before main() and any thread (fuzz workers match rules). */
__attribute__((constructor)) static void scan_pick(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        scan = scan_blocks_avx2;
}
#endif

void wsrr_rules_portable_scan(void)
{
    scan = scan_blocks;
}

static void unmask_piece(uint8_t *dst, const struct wsrr_piece *pc, size_t from, size_t n)
{
    if (pc->masked)
        wsrr_frame_mask(dst, pc->p + from, n, pc->mask, pc->phase + from);
    else
        memcpy(dst, pc->p + from, n);
}

/* needle inside one masked piece: the key byte, masked, takes one of four
 * values by position mod 4, so the raw bytes are compared with that
 * periodic pattern a block at a time (scan); each hit is unmasked and
 * checked. A key
 * that is not rare here (256 misses) sends the rest through unmasked
 * chunks and wsrr_contains(). */
static bool masked_contains(const struct wsrr_piece *pc, const char *needle, size_t n, size_t rare)
{
    if (pc->len <= 512) { /* small: unmasking it is cheaper than comparing byte by byte */
        uint8_t plain[512];
        unmask_piece(plain, pc, 0, pc->len);
        return wsrr_contains(plain, pc->len, needle, n, rare);
    }
    const uint8_t *hay = pc->p;
    size_t len = pc->len, first = rare, last = len - (n - rare); /* key positions */
    uint8_t pat[4];
    for (unsigned i = 0; i < 4; i++)
        pat[i] = (uint8_t)needle[rare] ^ pc->mask[(pc->phase + i) & 3];
    uint8_t tmp[WSRR_PIECES_NEEDLE_MAX];
    unsigned misses = 0;
    size_t next = 0, j = first;
    while (j <= last) {
        if (j + 64 <= len)
            j = scan(hay, j, len, pat);
        if (j > last)
            break;
        size_t blk = j + 64 <= len ? 64 : 16;
        for (size_t k = j; k < j + blk && k <= last; k++) {
            if (k < first || hay[k] != pat[k & 3])
                continue;
            unmask_piece(tmp, pc, k - rare, n);
            if (memcmp(tmp, needle, n) == 0)
                return true;
            if (++misses == 256) {
                next = k + 1;
                goto chunks;
            }
        }
        j += blk;
    }
    return false;
chunks:;
    /* key positions from `next` on: needles starting at next - rare */
    uint8_t buf[4096 + WSRR_PIECES_NEEDLE_MAX];
    size_t from = next - rare;
    while (from + n <= len) {
        size_t k = len - from < sizeof(buf) ? len - from : sizeof(buf);
        unmask_piece(buf, pc, from, k);
        if (wsrr_contains(buf, k, needle, n, rare))
            return true;
        from += k - (n - 1);
    }
    return false;
}

/* wsrr_contains_pieces() with npre bytes (unmasked) before the pieces: a
 * needle may start in them. */
static bool contains_after(const uint8_t *pre, size_t npre, const struct wsrr_piece *pc, size_t npc,
                           const char *needle, size_t n, size_t rare)
{
    /* the last n - 1 bytes before the piece, unmasked, and the first n - 1
     * of it: a needle across a boundary is found there */
    uint8_t edge[2 * WSRR_PIECES_NEEDLE_MAX];
    if (!n || n > WSRR_PIECES_NEEDLE_MAX)
        return false;
    size_t keep = n - 1, carry = npre < keep ? npre : keep;
    if (carry)
        memcpy(edge, pre + npre - carry, carry);
    for (size_t i = 0; i < npc; i++) {
        const struct wsrr_piece *c = &pc[i];
        size_t head = c->len < keep ? c->len : keep;
        if (carry || c->len < keep) /* else nothing before it, and its head is not kept */
            unmask_piece(edge + carry, c, 0, head);
        if (carry && head && wsrr_contains(edge, carry + head, needle, n, rare))
            return true;
        if (c->len >= n && (c->masked ? masked_contains(c, needle, n, rare)
                                      : wsrr_contains(c->p, c->len, needle, n, rare)))
            return true;
        if (i + 1 == npc) /* the last: no edge after it */
            break;
        if (c->len >= keep) {
            unmask_piece(edge, c, c->len - keep, keep);
            carry = keep;
        } else { /* a short piece: the edge grows by it, its tail is kept */
            size_t all = carry + head, drop = all > keep ? all - keep : 0;
            memmove(edge, edge + drop, all - drop);
            carry = all - drop;
        }
    }
    return false;
}

bool wsrr_contains_pieces(const struct wsrr_piece *pc, size_t npc, const char *needle, size_t n,
                          size_t rare)
{
    return contains_after(NULL, 0, pc, npc, needle, n, rare);
}

/* The scan's tail becomes the last bytes of what it held and the pieces. */
static void tail_push(struct wsrr_scan *st, const struct wsrr_piece *pc, size_t npc)
{
    const size_t cap = sizeof(st->tail);
    size_t total = 0;
    for (size_t i = 0; i < npc; i++)
        total += pc[i].len;
    size_t old = total >= cap ? 0 : st->ntail < cap - total ? st->ntail : cap - total;
    memmove(st->tail, st->tail + st->ntail - old, old);
    size_t w = old, skip = total > cap - old ? total - (cap - old) : 0;
    for (size_t i = 0; i < npc; i++) {
        if (skip >= pc[i].len) {
            skip -= pc[i].len;
            continue;
        }
        unmask_piece(st->tail + w, &pc[i], skip, pc[i].len - skip);
        w += pc[i].len - skip;
        skip = 0;
    }
    st->ntail = w;
}

/* Could rule i's `contains` decide for a message of dir whose first frame
 * has opcode (the conditions wsrr_rules_on_message() tries first that a
 * message's start already settles)? */
static bool scan_rule(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc, size_t i,
                      int dir, uint8_t opcode)
{
    const struct wsrr_rule *r = &rs->rules[i];
    const struct wsrr_match *c = &r->match;
    return c->contains && c->contains_len <= WSRR_PIECES_NEEDLE_MAX && r->enabled &&
           i < rc->count && rc->r[i].conn_ok && (c->direction < 0 || c->direction == dir) &&
           (!c->opcodes || (c->opcodes & (1u << (opcode & 15))));
}

bool wsrr_rules_scan_wanted(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc, int dir,
                            uint8_t opcode)
{
    for (size_t i = 0; i < rs->count; i++)
        if (scan_rule(rs, rc, i, dir, opcode))
            return true;
    return false;
}

int wsrr_rules_scan_part(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc,
                         struct wsrr_scan *st, int dir, uint8_t opcode, const struct wsrr_piece *pc,
                         size_t npc)
{
    size_t words = (rs->count + 63) / 64;
    if (st->words < words) {
        uint64_t *f = realloc(st->found, words * sizeof(*f));
        if (!f)
            return -1;
        memset(f + st->words, 0, (words - st->words) * sizeof(*f));
        st->found = f;
        st->words = words;
    }
    for (size_t i = 0; i < rs->count; i++) {
        const struct wsrr_match *c = &rs->rules[i].match;
        if ((st->found[i / 64] >> (i % 64) & 1) || !scan_rule(rs, rc, i, dir, opcode))
            continue;
        if (contains_after(st->tail, st->ntail, pc, npc, c->contains, c->contains_len,
                           c->contains_rare))
            st->found[i / 64] |= 1ull << (i % 64);
    }
    tail_push(st, pc, npc);
    return 0;
}

void wsrr_scan_reset(struct wsrr_scan *st)
{
    if (st->found)
        memset(st->found, 0, st->words * sizeof(*st->found));
    st->ntail = 0;
}

void wsrr_scan_free(struct wsrr_scan *st)
{
    free(st->found);
    st->found = NULL;
    st->words = 0;
    st->ntail = 0;
}

/* The node at a dotted path ("data.items.0.type"); digits index arrays. */
const cJSON *wsrr_json_at(const cJSON *j, const char *path)
{
    char seg[256];
    const char *p = path;
    while (j && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof(seg))
            return NULL;
        memcpy(seg, p, n);
        seg[n] = '\0';
        if (cJSON_IsObject(j)) {
            j = cJSON_GetObjectItemCaseSensitive(j, seg);
        } else if (cJSON_IsArray(j) && n > 0 && strspn(seg, "0123456789") == n && n < 10) {
            j = cJSON_GetArrayItem(j, atoi(seg));
        } else {
            return NULL;
        }
        p = dot ? dot + 1 : p + n;
    }
    return j;
}

static bool same_value(const cJSON *want, const cJSON *got)
{
    if (!got)
        return false;
    if (cJSON_IsString(want))
        return cJSON_IsString(got) && strcmp(want->valuestring, got->valuestring) == 0;
    if (cJSON_IsNumber(want))
        return cJSON_IsNumber(got) && want->valuedouble == got->valuedouble;
    if (cJSON_IsBool(want))
        return cJSON_IsBool(got) && cJSON_IsTrue(want) == cJSON_IsTrue(got);
    if (cJSON_IsNull(want))
        return cJSON_IsNull(got);
    return false;
}

static bool json_ok(const cJSON *want, const struct wsrr_msg_info *m)
{
    cJSON *doc = cJSON_ParseWithLength((const char *)m->payload, m->len);
    if (!doc)
        return false;
    bool ok = true;
    for (const cJSON *e = want->child; e && ok; e = e->next) {
        const cJSON *got = wsrr_json_at(doc, e->string);
        if (cJSON_IsObject(e))
            ok = (got != NULL) == cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "exists"));
        else
            ok = same_value(e, got);
    }
    cJSON_Delete(doc);
    return ok;
}

/* regexec wants a C string: the payload is copied with a NUL after it
 * (sanitizers' regexec reads up to a NUL even with REG_STARTEND), and
 * REG_STARTEND, where the C library has it, lets the expression see bytes
 * after an embedded NUL too. */
static bool regex_ok(const regex_t *re, const struct wsrr_msg_info *m)
{
    char small[512];
    char *s = m->len < sizeof(small) ? small : malloc(m->len + 1);
    if (!s)
        return false;
    memcpy(s, m->payload, m->len);
    s[m->len] = '\0';
#ifdef REG_STARTEND
    regmatch_t span = {0, (regoff_t)m->len};
    bool ok = regexec(re, s, 1, &span, REG_STARTEND) == 0;
#else
    bool ok = regexec(re, s, 0, NULL, 0) == 0;
#endif
    if (s != small)
        free(s);
    return ok;
}

/* Every condition of the rule on this message, cheapest first. */
/* `contains` of rule i over the message */
static bool contains_ok(const struct wsrr_match *c, size_t i, const struct wsrr_msg_info *m)
{
    if (m->payload)
        return wsrr_contains(m->payload, m->len, c->contains, c->contains_len, c->contains_rare);
    const struct wsrr_scan *st = m->scan;
    if (st && i / 64 < st->words && (st->found[i / 64] >> (i % 64) & 1))
        return true; /* found in a part already looked at */
    return contains_after(st ? st->tail : NULL, st ? st->ntail : 0, m->pieces, m->npieces,
                          c->contains, c->contains_len, c->contains_rare);
}

static bool message_ok(const struct wsrr_rules_conn *rc, const struct wsrr_rule *r, size_t i,
                       const struct wsrr_msg_info *m)
{
    const struct wsrr_match *c = &r->match;
    if (c->direction >= 0 && c->direction != m->dir)
        return false;
    if (c->opcodes && !(c->opcodes & (1u << (m->opcode & 15))))
        return false;
    if (c->nth && c->nth != m->nth)
        return false;
    if (c->after_ms && m->since_open_ms < c->after_ms)
        return false;
    if (c->after_rule >= 0 && rc->r[c->after_rule].fired == 0)
        return false;
    if (c->contains && !contains_ok(c, i, m))
        return false;
    if (c->regex_src && !regex_ok(&c->regex, m))
        return false;
    if (c->json && !json_ok(c->json, m))
        return false;
    return true;
}

static bool under_limits(const struct wsrr_rule *r, const struct per_rule *pr)
{
    return (!r->limit || r->fired < r->limit) &&
           (!r->limit_per_conn || pr->fired < r->limit_per_conn);
}

/* Rule i met its conditions on message (dir, nth): does the seeded draw let
 * it fire? If so, count the firing. */
static bool fires(struct wsrr_rules *rs, struct wsrr_rules_conn *rc, size_t i, int dir,
                  uint64_t nth)
{
    struct wsrr_rule *r = &rs->rules[i];
    if (r->match.probability < 1 &&
        wsrr_rules_draw(rs->seed, r->name, rc->ordinal, dir, nth) >= r->match.probability)
        return false;
    r->fired++;
    rc->r[i].fired++;
    return true;
}

int wsrr_rules_on_message(struct wsrr_rules *rs, struct wsrr_rules_conn *rc,
                          const struct wsrr_msg_info *m)
{
    for (size_t i = 0; i < rs->count && i < rc->count; i++) {
        struct wsrr_rule *r = &rs->rules[i];
        struct per_rule *pr = &rc->r[i];
        enum wsrr_action_scope sc = wsrr_action_scope(r->action.kind);
        if (!r->enabled || !pr->conn_ok || sc == WSRR_SCOPE_HANDSHAKE)
            continue;
        /* a connection action changes the connection once: later messages
         * are not its business */
        if (sc == WSRR_SCOPE_CONNECTION && pr->fired)
            continue;
        if (!under_limits(r, pr) || !message_ok(rc, r, i, m))
            continue;
        if (++pr->matched <= r->match.skip)
            continue;
        if (fires(rs, rc, i, m->dir, m->nth))
            return (int)i;
    }
    return -1;
}

int wsrr_rules_on_handshake(struct wsrr_rules *rs, struct wsrr_rules_conn *rc)
{
    for (size_t i = 0; i < rs->count && i < rc->count; i++) {
        struct wsrr_rule *r = &rs->rules[i];
        struct per_rule *pr = &rc->r[i];
        if (!r->enabled || !pr->conn_ok ||
            wsrr_action_scope(r->action.kind) != WSRR_SCOPE_HANDSHAKE)
            continue;
        if (!under_limits(r, pr))
            continue;
        if (r->match.after_rule >= 0 && rc->r[r->match.after_rule].fired == 0)
            continue;
        /* the handshake is message 0 of the client's direction */
        if (fires(rs, rc, i, WSRR_DIR_C2S, 0))
            return (int)i;
    }
    return -1;
}
