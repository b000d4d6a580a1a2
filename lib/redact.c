/* redact.c — credentials out of captures; see wsrr/redact.h.
 *
 * Heads are rebuilt field by field when something is replaced. Text
 * messages are edited in place by a small lexer over JSON string literals
 * (a key literal followed by ':' and a string literal), not by parsing and
 * printing with cJSON: printing again would change numbers and spacing in
 * the rest of the message, and replay sends what the capture holds.
 */
#include "wsrr/redact.h"

#include <event2/buffer.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 32

struct wsrr_redactor {
    uint8_t key[KEY_LEN];
    size_t keylen;
};

struct wsrr_redactor *wsrr_redactor_new(void)
{
    struct wsrr_redactor *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    if (RAND_bytes(r->key, KEY_LEN) != 1) {
        free(r);
        return NULL;
    }
    r->keylen = KEY_LEN;
    return r;
}

struct wsrr_redactor *wsrr_redactor_new_with_key(const uint8_t *key, size_t len)
{
    struct wsrr_redactor *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->keylen = len < KEY_LEN ? len : KEY_LEN;
    memcpy(r->key, key, r->keylen);
    return r;
}

void wsrr_redactor_free(struct wsrr_redactor *r)
{
    if (r)
        OPENSSL_cleanse(r->key, sizeof(r->key));
    free(r);
}

/* ---- names ---- */

/* Lower-case the name and drop '-' and '_' (so API-Key, api_key and apiKey
 * compare equal). Returns the normalised length. */
static size_t normalise(const char *name, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        char c = name[i];
        if (c == '-' || c == '_')
            continue;
        out[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    out[n] = '\0';
    return n;
}

/* Names with their lengths: the check runs on every JSON key of every
 * recorded text message, so no strlen or strcmp. */
struct word {
    const char *s;
    size_t n;
};
#define W(lit)                                                                                     \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

static bool ends_with(const char *s, size_t n, const struct word *w)
{
    return n >= w->n && memcmp(s + n - w->n, w->s, w->n) == 0;
}

static bool any_suffix(const char *s, size_t n, const struct word *list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (ends_with(s, n, &list[i]))
            return true;
    return false;
}

static bool in_list(const char *s, size_t n, const struct word *list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (list[i].n == n && memcmp(s, list[i].s, n) == 0)
            return true;
    return false;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

bool wsrr_redact_name(const char *name, size_t len, char kind)
{
    char n[64];
    size_t k;
    if (len >= sizeof(n)) {
        /* too long to be one of the exact names: what counts is how it ends
         * (and, for headers, the words in it, looked for at both ends) */
        k = normalise(name + len - (sizeof(n) - 1), sizeof(n) - 1, n, sizeof(n));
        if (kind == 'h' && wsrr_redact_name(name, sizeof(n) - 1, kind))
            return true;
    } else {
        k = normalise(name, len, n, sizeof(n));
    }
    if (k < 3) /* the shortest name below is three letters */
        return false;
    static const struct word suffixes[] = {W("token"),  W("secret"), W("password"),
                                           W("passwd"), W("apikey"), W("signature")};
    if (any_suffix(n, k, suffixes, COUNT(suffixes)))
        return true;
    switch (kind) {
    case 'h': {
        if (strncmp(n, "secwebsocket", 12) == 0)
            return false;
        static const char *const words[] = {"token",   "secret", "passw",  "apikey",
                                            "session", "auth",   "cookie", NULL};
        for (const char *const *w = words; *w; w++)
            if (strstr(n, *w))
                return true;
        return false;
    }
    case 'q': {
        static const struct word exact[] = {W("key"),     W("sig"),       W("signature"),
                                            W("auth"),    W("jwt"),       W("code"),
                                            W("session"), W("sessionid"), W("accesskey")};
        return in_list(n, k, exact, COUNT(exact));
    }
    default: {
        static const struct word exact[] = {
            W("jwt"),    W("auth"),       W("authorization"), W("session"),    W("sessionid"),
            W("cookie"), W("credential"), W("credentials"),   W("privatekey"), W("pwd")};
        return in_list(n, k, exact, COUNT(exact));
    }
    }
}

/* ---- placeholders ---- */

#define PLACEHOLDER_PREFIX "<redacted:"

/* Already a placeholder: redacting twice changes nothing. */
static bool is_placeholder(const uint8_t *s, size_t n)
{
    size_t k = sizeof(PLACEHOLDER_PREFIX) - 1;
    return n > k && memcmp(s, PLACEHOLDER_PREFIX, k) == 0 && s[n - 1] == '>';
}

/* Write the placeholder for a secret (returns 1), or the secret itself when
 * it already is one (returns 0); a negative errno on failure. */
static int placeholder(const struct wsrr_redactor *r, const char *name, size_t nlen,
                       const uint8_t *secret, size_t slen, struct evbuffer *out)
{
    if (is_placeholder(secret, slen))
        return evbuffer_add(out, secret, slen) < 0 ? -ENOMEM : 0;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), r->key, (int)r->keylen, secret, slen, mac, &maclen) || maclen < 4)
        return -EIO;
    char clean[48];
    size_t k = 0;
    for (size_t i = 0; i < nlen && k + 1 < sizeof(clean); i++) {
        char c = name[i];
        c = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
        clean[k++] = ok ? c : '_';
    }
    clean[k] = '\0';
    return evbuffer_add_printf(out, "<redacted:%s:%02x%02x%02x%02x>", clean, mac[0], mac[1], mac[2],
                               mac[3]) < 0
               ? -ENOMEM
               : 1;
}

/* placeholder(), noting in *changed whether anything was replaced. */
static int put_secret(const struct wsrr_redactor *r, const char *name, size_t nlen,
                      const uint8_t *secret, size_t slen, struct evbuffer *out, bool *changed)
{
    int rc = placeholder(r, name, nlen, secret, slen, out);
    if (rc > 0)
        *changed = true;
    return rc < 0 ? rc : 0;
}

/* ---- JWTs ---- */

static bool b64url(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Length of a JWT (three base64url parts, the first two starting "eyJ" and
 * at least 10 long) starting at p, or 0. */
static size_t jwt_at(const uint8_t *p, size_t n)
{
    if (n < 3 || memcmp(p, "eyJ", 3) != 0)
        return 0;
    size_t i = 0;
    for (int part = 0; part < 3; part++) {
        size_t start = i;
        while (i < n && b64url(p[i]))
            i++;
        if (part < 2 && (i - start < 10 || i >= n || p[i] != '.'))
            return 0;
        if (part == 1 && memcmp(p + start, "eyJ", 3) != 0)
            return 0;
        if (part < 2)
            i++;
    }
    return i;
}

/* ---- heads ---- */

static bool name_is(const struct wsrr_http_field *f, const char *name)
{
    return f->name_len == strlen(name) && strncasecmp(f->name, name, f->name_len) == 0;
}

/* "k=v&k2=v2": values of credential-named parameters replaced. */
static int redact_query(const struct wsrr_redactor *r, const char *q, size_t n,
                        struct evbuffer *out, bool *changed)
{
    size_t i = 0;
    while (i <= n) {
        size_t end = i;
        while (end < n && q[end] != '&')
            end++;
        const char *eq = memchr(q + i, '=', end - i);
        if (eq && wsrr_redact_name(q + i, (size_t)(eq - q - i), 'q') && eq + 1 < q + end) {
            evbuffer_add(out, q + i, (size_t)(eq + 1 - q - i));
            int rc = put_secret(r, q + i, (size_t)(eq - q - i), (const uint8_t *)eq + 1,
                                (size_t)(q + end - eq - 1), out, changed);
            if (rc < 0)
                return rc;
        } else {
            evbuffer_add(out, q + i, end - i);
        }
        if (end < n)
            evbuffer_add(out, "&", 1);
        i = end + 1;
    }
    return 0;
}

static bool credential_like(const char *t, size_t n)
{
    if (jwt_at((const uint8_t *)t, n) == n && n)
        return true;
    if (n <= 32)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!b64url((uint8_t)c) && c != '+' && c != '/' && c != '=' && c != '.' && c != '~')
            return false;
    }
    return true;
}

static int redact_value(const struct wsrr_redactor *r, const struct wsrr_http_field *f,
                        struct evbuffer *out, bool *changed)
{
    const char *v = f->value;
    size_t n = f->value_len;
    int rc = 0;
    if (name_is(f, "Authorization") || name_is(f, "Proxy-Authorization")) {
        const char *sp = memchr(v, ' ', n);
        size_t skip = sp ? (size_t)(sp - v) + 1 : 0;
        evbuffer_add(out, v, skip);
        return put_secret(r, f->name, f->name_len, (const uint8_t *)v + skip, n - skip, out,
                          changed);
    }
    if (name_is(f, "Cookie") || name_is(f, "Set-Cookie")) {
        bool set = name_is(f, "Set-Cookie");
        size_t i = 0;
        while (i < n && rc == 0) {
            size_t end = i;
            while (end < n && v[end] != ';')
                end++;
            const char *eq = memchr(v + i, '=', end - i);
            if (eq && (!set || i == 0)) {
                char name[48];
                const char *nm = v + i;
                while (nm < eq && *nm == ' ')
                    nm++;
                int k = snprintf(name, sizeof(name), "cookie.%.*s", (int)(eq - nm), nm);
                evbuffer_add(out, v + i, (size_t)(eq + 1 - v - i));
                rc = put_secret(r, name, (size_t)k < sizeof(name) ? (size_t)k : sizeof(name) - 1,
                                (const uint8_t *)eq + 1, (size_t)(v + end - eq - 1), out, changed);
            } else {
                evbuffer_add(out, v + i, end - i);
            }
            if (end < n)
                evbuffer_add(out, ";", 1);
            i = end + 1;
        }
        return rc;
    }
    if (name_is(f, "Sec-WebSocket-Protocol")) {
        size_t i = 0;
        while (i < n && rc == 0) {
            size_t end = i;
            while (end < n && v[end] != ',')
                end++;
            size_t a = i, b = end;
            while (a < b && v[a] == ' ')
                a++;
            while (b > a && v[b - 1] == ' ')
                b--;
            evbuffer_add(out, v + i, a - i);
            if (credential_like(v + a, b - a)) {
                rc = put_secret(r, "protocol", 8, (const uint8_t *)v + a, b - a, out, changed);
            } else {
                evbuffer_add(out, v + a, b - a);
            }
            evbuffer_add(out, v + b, end - b);
            if (end < n)
                evbuffer_add(out, ",", 1);
            i = end + 1;
        }
        return rc;
    }
    if (wsrr_redact_name(f->name, f->name_len, 'h'))
        return put_secret(r, f->name, f->name_len, (const uint8_t *)v, n, out, changed);
    evbuffer_add(out, v, n);
    return 0;
}

int wsrr_redact_head(const struct wsrr_redactor *r, const struct wsrr_http_head *h,
                     struct evbuffer *out)
{
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return -ENOMEM;
    bool changed = false;
    int rc = 0;
    if (h->response) {
        evbuffer_add_printf(b, "HTTP/1.%d %d %.*s\r\n", h->version_minor, h->status,
                            (int)h->reason_len, h->reason);
    } else {
        evbuffer_add(b, h->method, h->method_len);
        evbuffer_add(b, " ", 1);
        const char *q = memchr(h->target, '?', h->target_len);
        if (q) {
            evbuffer_add(b, h->target, (size_t)(q + 1 - h->target));
            rc = redact_query(r, q + 1, h->target_len - (size_t)(q + 1 - h->target), b, &changed);
        } else {
            evbuffer_add(b, h->target, h->target_len);
        }
        evbuffer_add_printf(b, " HTTP/1.%d\r\n", h->version_minor);
    }
    for (size_t i = 0; i < h->nfields && rc == 0; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        evbuffer_add(b, f->name, f->name_len);
        evbuffer_add(b, ": ", 2);
        rc = redact_value(r, f, b, &changed);
        evbuffer_add(b, "\r\n", 2);
    }
    evbuffer_add(b, "\r\n", 2);
    if (rc == 0 && changed)
        rc = evbuffer_add_buffer(out, b) < 0 ? -ENOMEM : 1;
    evbuffer_free(b);
    return rc;
}

/* ---- text ---- */

/* The first '"' in p[i, n), or n. JSON literals are short: look at a few
 * bytes before paying for a memchr call. */
static size_t find_quote(const uint8_t *p, size_t i, size_t n)
{
    for (size_t end = n - i > 16 ? i + 16 : n; i < end; i++)
        if (p[i] == '"')
            return i;
    const uint8_t *q = i < n ? memchr(p + i, '"', n - i) : NULL;
    return q ? (size_t)(q - p) : n;
}

/* End of the JSON string literal whose opening quote is at p[i] (index of
 * the closing quote), or n when it does not close. memchr finds the quotes;
 * a quote preceded by an odd run of backslashes is escaped. */
static size_t string_end(const uint8_t *p, size_t n, size_t i)
{
    for (size_t j = i + 1; j < n;) {
        size_t k = find_quote(p, j, n), b = 0;
        if (k == n)
            return n;
        while (k - b - 1 > i && p[k - b - 1] == '\\')
            b++;
        if (b % 2 == 0)
            return k;
        j = k + 1;
    }
    return n;
}

static size_t skip_ws(const uint8_t *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    return i;
}

/* The output buffer, made on the first replacement: most text has nothing
 * to redact and costs no allocation. */
struct rewrite {
    const struct wsrr_redactor *r;
    const uint8_t *p;
    struct evbuffer *b;
    size_t n;
    size_t eyj; /* where the next "eyJ" at or after eyj_from starts (n: none) */
    size_t eyj_from;
    size_t copied; /* p[0, copied) is in b */
    bool changed;  /* a placeholder went in (a secret that already is one does not count) */
};

/* Copy p[copied, at) to b, then a placeholder for the len bytes at `at`. */
static int replace(struct rewrite *w, size_t at, size_t len, const char *name, size_t nlen)
{
    if (!w->b && !(w->b = evbuffer_new()))
        return -ENOMEM;
    if (evbuffer_add(w->b, w->p + w->copied, at - w->copied) < 0)
        return -ENOMEM;
    w->copied = at + len;
    return put_secret(w->r, name, nlen, w->p + at, len, w->b, &w->changed);
}

/* The first "eyJ" at or after `from`. One search over the text, not one per
 * literal: JSON has many short literals. */
static size_t next_eyj(struct rewrite *w, size_t from)
{
    if (from < w->eyj_from || (w->eyj < w->n && w->eyj < from)) {
        /* 'J' is rare in text, and memchr is several times faster than memmem */
        const uint8_t *p = w->p;
        size_t j = from + 2;
        w->eyj = w->n;
        while (j < w->n) {
            const uint8_t *q = memchr(p + j, 'J', w->n - j);
            if (!q)
                break;
            j = (size_t)(q - p);
            if (p[j - 1] == 'y' && p[j - 2] == 'e') {
                w->eyj = j - 2;
                break;
            }
            j++;
        }
        w->eyj_from = from;
    }
    return w->eyj;
}

/* JWTs inside p[from, to): each starts "eyJ" after a non-base64url byte. */
static int scan_jwts_slow(struct rewrite *w, size_t from, size_t to)
{
    const uint8_t *p = w->p;
    for (size_t j = next_eyj(w, from); j + 3 <= to; j = next_eyj(w, j)) {
        size_t jl;
        if ((j == from || !b64url(p[j - 1])) && (jl = jwt_at(p + j, to - j))) {
            int rc = replace(w, j, jl, "jwt", 3);
            if (rc < 0)
                return rc;
            j += jl;
        } else {
            j++;
        }
    }
    return 0;
}

static inline int scan_jwts(struct rewrite *w, size_t from, size_t to)
{
    if (w->eyj_from <= from && w->eyj >= to) /* no "eyJ" there: the common case */
        return 0;
    return scan_jwts_slow(w, from, to);
}

/* A cheap first look at a JSON key before wsrr_redact_name(): the last two
 * letters of every JSON credential name, '-' and '_' skipped and case
 * folded as normalise() does. "type", "step", "tool", "id" stop here. */
static bool maybe_credential_key(const uint8_t *k, size_t n)
{
    static const char *const ends[] = {"en", "et", "rd", "wd", "ey", "re", "wt",
                                       "th", "on", "id", "ie", "al", "ls"};
    int c[2], got = 0;
    for (size_t i = n; i-- > 0 && got < 2;) {
        int ch = k[i];
        if (ch == '-' || ch == '_')
            continue;
        c[got++] = ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
    }
    if (got < 2)
        return false;
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++)
        if (ends[i][0] == c[1] && ends[i][1] == c[0])
            return true;
    return false;
}

int wsrr_redact_text(const struct wsrr_redactor *r, const uint8_t *p, size_t n,
                     struct evbuffer *out)
{
    struct rewrite w = {r, p, NULL, n, n, SIZE_MAX, 0, false}; /* eyj: not looked for yet */
    int rc = 0;
    size_t i = 0;
    while (i < n && rc == 0) {
        if (p[i] != '"') {
            /* outside string literals (or not JSON at all): JWTs only */
            size_t k = find_quote(p, i, n);
            rc = scan_jwts(&w, i, k);
            i = k;
            continue;
        }
        size_t kend = string_end(p, n, i);
        if (kend >= n) { /* an unterminated literal: scan the rest as text */
            rc = scan_jwts(&w, i + 1, n);
            break;
        }
        /* a key literal with a credential name, and a string value after ':' */
        size_t j = skip_ws(p, n, kend + 1);
        if (j < n && p[j] == ':' && maybe_credential_key(p + i + 1, kend - i - 1) &&
            wsrr_redact_name((const char *)p + i + 1, kend - i - 1, 'j')) {
            size_t v = skip_ws(p, n, j + 1);
            size_t vend = v < n && p[v] == '"' ? string_end(p, n, v) : n;
            if (vend < n && vend > v + 1 && !is_placeholder(p + v + 1, vend - v - 1)) {
                /* the key itself is scanned as any literal is (idempotence) */
                rc = scan_jwts(&w, i + 1, kend);
                if (rc == 0)
                    rc = replace(&w, v + 1, vend - v - 1, (const char *)p + i + 1, kend - i - 1);
                i = vend + 1;
                continue;
            }
        }
        rc = scan_jwts(&w, i + 1, kend);
        i = kend + 1;
    }
    if (rc == 0 && w.changed) {
        evbuffer_add(w.b, p + w.copied, n - w.copied);
        rc = evbuffer_add_buffer(out, w.b) < 0 ? -ENOMEM : 1;
    }
    if (w.b)
        evbuffer_free(w.b);
    return rc;
}
