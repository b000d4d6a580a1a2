/* handshake.c — HTTP/1.1 heads and the WebSocket Upgrade handshake; see
 * wsrr/handshake.h.
 *
 * Every pass here is linear in the size of the head: the search for the end
 * of the head resumes where it stopped, each line is visited once, folded
 * values are appended in place, and the checks walk the field list a fixed
 * number of times.
 */
#include "wsrr/handshake.h"

#include <event2/buffer.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* At most this many extensions in a 101 (more is nonsense, and it keeps the
 * offered-versus-selected comparison linear). */
#define MAX_RESP_EXTS 16

/* ---- character classes (RFC 7230 3.2.6) ---- */

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* CTL other than HTAB: never allowed in a start line or field value. */
static bool is_bad_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static bool ieq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

/* A character for an error message: 'x' when printable, 0xNN otherwise. */
static const char *chr_desc(unsigned char c, char buf[8])
{
    if (c > 0x20 && c < 0x7f)
        snprintf(buf, 8, "'%c'", c);
    else
        snprintf(buf, 8, "0x%02x", c);
    return buf;
}

/* ---- the incremental head parser ---- */

static int fail(struct wsrr_http_parser *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct wsrr_http_parser *p, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
    va_end(ap);
    p->error = -code;
    return -code;
}

void wsrr_http_parser_init(struct wsrr_http_parser *p, bool response, size_t max_head,
                           size_t max_fields)
{
    memset(p, 0, sizeof(*p));
    p->response = response;
    p->max_head = max_head ? max_head : WSRR_HTTP_DEFAULT_MAX_HEAD;
    p->max_fields = max_fields ? max_fields : WSRR_HTTP_DEFAULT_MAX_FIELDS;
}

void wsrr_http_parser_finish(struct wsrr_http_parser *p)
{
    free(p->buf);
    p->buf = NULL;
    free(p->fields);
    p->fields = NULL;
    p->len = p->cap = p->fields_cap = 0;
    p->scan = 0;
    p->done = false;
    memset(&p->head, 0, sizeof(p->head));
}

void wsrr_http_parser_reset(struct wsrr_http_parser *p)
{
    /* Keep the allocations: the next head on a connection is likely alike. */
    p->len = 0;
    p->scan = 0;
    p->error = 0;
    p->errmsg[0] = '\0';
    p->done = false;
    memset(&p->head, 0, sizeof(p->head));
}

/* Make room for `need` bytes in buf, doubling (so 1-byte feeds copy each
 * byte O(1) times on average). */
static int grow_buf(struct wsrr_http_parser *p, size_t need)
{
    if (need <= p->cap)
        return 0;
    size_t cap = p->cap ? p->cap : 512;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > p->max_head)
        cap = need > p->max_head ? need : p->max_head;
    uint8_t *nb = realloc(p->buf, cap);
    if (!nb)
        return fail(p, ENOMEM, "out of memory for a %zu-byte HTTP head", need);
    p->buf = nb;
    p->cap = cap;
    return 0;
}

/* Look for the blank line that ends the head: LF followed by LF or CR LF.
 * Returns the length of the head through that line, or 0 when it is not in
 * buf yet; then p->scan is left on the last LF that might start the end (at
 * most two bytes before the end of buf), so every byte is examined O(1)
 * times however the input is split. */
static size_t find_end(struct wsrr_http_parser *p)
{
    const uint8_t *b = p->buf;
    size_t i = p->scan;

    while (i < p->len) {
        const uint8_t *nl = memchr(b + i, '\n', p->len - i);
        if (!nl) {
            p->scan = p->len;
            return 0;
        }
        i = (size_t)(nl - b);
        if (i + 1 >= p->len)
            break;
        if (b[i + 1] == '\n')
            return i + 2;
        if (b[i + 1] == '\r') {
            if (i + 2 >= p->len)
                break;
            if (b[i + 2] == '\n')
                return i + 3;
        }
        i++;
    }
    p->scan = i;
    return 0;
}

/* Does the head hold an obs-fold line (LF followed by SP or HTAB)? */
static bool has_folds(const uint8_t *b, size_t n)
{
    const uint8_t *end = b + n;
    for (const uint8_t *q = b; q < end; q++) {
        q = memchr(q, '\n', (size_t)(end - q));
        if (!q || q + 1 >= end)
            return false;
        if (is_ows(q[1]))
            return true;
    }
    return false;
}

static bool is_version(const uint8_t *s, size_t n, int *minor)
{
    if (n != 8 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9')
        return false;
    *minor = s[7] - '0';
    return true;
}

static int parse_request_line(struct wsrr_http_parser *p, const uint8_t *s, size_t n)
{
    struct wsrr_http_head *h = &p->head;
    char cb[8];
    size_t i = 0;

    while (i < n && is_tchar(s[i]))
        i++;
    if (i == 0)
        return fail(p, EBADMSG, "line 1: expected a method token, found %s", chr_desc(s[0], cb));
    if (i == n || s[i] != ' ')
        return fail(p, EBADMSG, "line 1: expected ' ' after the method, found %s",
                    i == n ? "the end of the line" : chr_desc(s[i], cb));
    h->method = (const char *)s;
    h->method_len = i;

    size_t t = ++i;
    while (i < n && s[i] > 0x20 && s[i] != 0x7f)
        i++;
    if (i == t)
        return fail(p, EBADMSG, "line 1: expected a request target after the method");
    if (i == n || s[i] != ' ')
        return fail(p, EBADMSG, "line 1: expected ' ' after the request target, found %s",
                    i == n ? "the end of the line" : chr_desc(s[i], cb));
    h->target = (const char *)s + t;
    h->target_len = i - t;

    i++;
    if (!is_version(s + i, n - i, &h->version_minor))
        return fail(p, EBADMSG, "line 1: expected HTTP/1.x after the request target");
    return 0;
}

static int parse_status_line(struct wsrr_http_parser *p, const uint8_t *s, size_t n)
{
    struct wsrr_http_head *h = &p->head;
    char cb[8];

    if (n < 8 || !is_version(s, 8, &h->version_minor))
        return fail(p, EBADMSG, "line 1: expected HTTP/1.x at the start of the status line");
    if (n < 12 || s[8] != ' ' || s[9] < '1' || s[9] > '9' || s[10] < '0' || s[10] > '9' ||
        s[11] < '0' || s[11] > '9')
        return fail(p, EBADMSG, "line 1: expected ' ' and a 3-digit status code after HTTP/1.%d",
                    h->version_minor);
    h->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    /* "HTTP/1.1 101" without the SP before an empty reason is common enough
     * to accept. */
    if (n > 12 && s[12] != ' ')
        return fail(p, EBADMSG, "line 1: expected ' ' after the status code, found %s",
                    chr_desc(s[12], cb));
    for (size_t i = 13; i < n; i++)
        if (is_bad_ctl(s[i]))
            return fail(p, EBADMSG, "line 1: control character 0x%02x in the reason phrase", s[i]);
    h->reason = n > 13 ? (const char *)s + 13 : (const char *)s + n;
    h->reason_len = n > 13 ? n - 13 : 0;
    return 0;
}

/* Single-valued fields whose repetition sets WSRR_HTTP_F_DUP. */
static const char *const single_fields[] = {
    "Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Accept", "Upgrade",
};

/* Trim OWS at both ends of s[0..n) and check the characters of a value. */
static int field_value(struct wsrr_http_parser *p, unsigned line, const uint8_t *s, size_t n,
                       const uint8_t **vp, size_t *vn)
{
    while (n && is_ows(s[0])) {
        s++;
        n--;
    }
    while (n && is_ows(s[n - 1]))
        n--;
    for (size_t i = 0; i < n; i++)
        if (is_bad_ctl(s[i]))
            return fail(p, EBADMSG, "line %u: control character 0x%02x in a field value", line,
                        s[i]);
    *vp = s;
    *vn = n;
    return 0;
}

static int add_field(struct wsrr_http_parser *p, unsigned line, const uint8_t *s, size_t n,
                     unsigned *seen)
{
    char cb[8];
    size_t i = 0;

    while (i < n && is_tchar(s[i]))
        i++;
    if (i == 0)
        return fail(p, EBADMSG, "line %u: expected a field name, found %s", line,
                    chr_desc(s[0], cb));
    if (i < n && is_ows(s[i]))
        return fail(p, EBADMSG, "line %u: whitespace between field name and ':' (RFC 7230 3.2.4)",
                    line);
    if (i == n || s[i] != ':')
        return fail(p, EBADMSG, "line %u: expected ':' after field name, found %s", line,
                    i == n ? "the end of the line" : chr_desc(s[i], cb));

    const uint8_t *v;
    size_t vn;
    int r = field_value(p, line, s + i + 1, n - i - 1, &v, &vn);
    if (r < 0)
        return r;

    if (p->head.nfields == p->max_fields)
        return fail(p, EMSGSIZE, "line %u: more than %zu header fields", line, p->max_fields);
    if (p->head.nfields == p->fields_cap) {
        size_t cap = p->fields_cap ? p->fields_cap * 2 : 16;
        if (cap > p->max_fields)
            cap = p->max_fields;
        struct wsrr_http_field *nf = realloc(p->fields, cap * sizeof(*nf));
        if (!nf)
            return fail(p, ENOMEM, "out of memory for %zu header fields", cap);
        p->fields = nf;
        p->fields_cap = cap;
    }
    struct wsrr_http_field *f = &p->fields[p->head.nfields++];
    f->name = (const char *)s;
    f->name_len = i;
    f->value = (const char *)v;
    f->value_len = vn;

    for (unsigned k = 0; k < sizeof(single_fields) / sizeof(single_fields[0]); k++) {
        if (ieq(f->name, f->name_len, single_fields[k], strlen(single_fields[k]))) {
            if (*seen & (1u << k))
                p->head.flags |= WSRR_HTTP_F_DUP;
            *seen |= 1u << k;
            break;
        }
    }
    return 0;
}

/* Parse the complete head in buf[0..len). */
static int parse_head(struct wsrr_http_parser *p)
{
    struct wsrr_http_head *h = &p->head;
    size_t n = p->len;

    /* Unfolded values go after the raw head; they never take more room than
     * the lines they come from. */
    if (has_folds(p->buf, n)) {
        if (n > SIZE_MAX / 2)
            return fail(p, ENOMEM, "HTTP head too large to unfold");
        if (n * 2 > p->cap) {
            uint8_t *nb = realloc(p->buf, n * 2);
            if (!nb)
                return fail(p, ENOMEM, "out of memory unfolding an HTTP head");
            p->buf = nb;
            p->cap = n * 2;
        }
    }

    const uint8_t *b = p->buf;
    size_t fold_end = n;          /* end of the unfolded values */
    size_t fold_field = SIZE_MAX; /* field whose value sits at the end of them */
    unsigned seen = 0, line = 0;
    size_t pos = 0;

    memset(h, 0, sizeof(*h));
    h->response = p->response;
    h->raw = b;
    h->raw_len = n;
    h->fields = p->fields;

    while (pos < n) {
        const uint8_t *nl = memchr(b + pos, '\n', n - pos);
        size_t eol = (size_t)(nl - b), end = eol;
        line++;
        if (end > pos && b[end - 1] == '\r')
            end--;
        else
            h->flags |= WSRR_HTTP_F_BARE_LF;
        const uint8_t *s = b + pos;
        size_t sn = end - pos;
        pos = eol + 1;

        int r;
        if (sn == 0) {
            if (line == 1)
                return fail(p, EBADMSG, "line 1: expected a %s line, found an empty line",
                            p->response ? "status" : "request");
            break; /* the blank line: find_end made it the last one */
        }
        if (line == 1) {
            r = p->response ? parse_status_line(p, s, sn) : parse_request_line(p, s, sn);
        } else if (is_ows(s[0])) {
            /* obs-fold: append to the previous field's value with one SP. */
            if (h->nfields == 0)
                return fail(p, EBADMSG, "line %u: continuation line before any header field", line);
            const uint8_t *v;
            size_t vn;
            r = field_value(p, line, s, sn, &v, &vn);
            if (r < 0)
                return r;
            h->flags |= WSRR_HTTP_F_FOLDED;
            if (vn == 0)
                continue;
            struct wsrr_http_field *f = &p->fields[h->nfields - 1];
            if (fold_field != h->nfields - 1) {
                memcpy(p->buf + fold_end, f->value, f->value_len);
                f->value = (const char *)p->buf + fold_end;
                fold_end += f->value_len;
                fold_field = h->nfields - 1;
            }
            if (f->value_len) {
                p->buf[fold_end++] = ' ';
                f->value_len++;
            }
            memcpy(p->buf + fold_end, v, vn);
            fold_end += vn;
            f->value_len += vn;
            continue;
        } else {
            r = add_field(p, line, s, sn, &seen);
        }
        if (r < 0)
            return r;
    }
    h->fields = p->fields;
    return 0;
}

ssize_t wsrr_http_parse(struct wsrr_http_parser *p, const uint8_t *data, size_t len)
{
    if (p->error)
        return p->error;
    if (p->done)
        return -EINVAL;
    if (len == 0)
        return WSRR_AGAIN;

    size_t room = p->max_head - p->len;
    size_t take = len < room ? len : room;
    size_t old = p->len;
    if (take) {
        int r = grow_buf(p, old + take);
        if (r < 0)
            return r;
        memcpy(p->buf + old, data, take);
        p->len += take;
    }

    size_t end = find_end(p);
    if (!end) {
        if (p->len >= p->max_head)
            return fail(p, EMSGSIZE, "HTTP head exceeds %zu bytes", p->max_head);
        return WSRR_AGAIN;
    }
    /* Bytes after the head that were copied stay the caller's. */
    p->len = end;
    int r = parse_head(p);
    if (r < 0)
        return r;
    p->done = true;
    return (ssize_t)(end - old);
}

const struct wsrr_http_head *wsrr_http_parser_head(const struct wsrr_http_parser *p)
{
    return p->done ? &p->head : NULL;
}

const char *wsrr_http_parser_error(const struct wsrr_http_parser *p)
{
    return p->errmsg;
}

/* ---- field lookup ---- */

const struct wsrr_http_field *wsrr_http_find(const struct wsrr_http_head *h, const char *name,
                                             size_t *count)
{
    const struct wsrr_http_field *first = NULL;
    size_t nlen = strlen(name), c = 0;

    for (size_t i = 0; i < h->nfields; i++) {
        if (ieq(h->fields[i].name, h->fields[i].name_len, name, nlen)) {
            if (!first)
                first = &h->fields[i];
            c++;
        }
    }
    if (count)
        *count = c;
    return first;
}

static bool list_has(const char *v, size_t n, const char *tok, size_t tlen)
{
    size_t i = 0;
    while (i <= n) {
        const char *comma = memchr(v + i, ',', n - i);
        size_t e = comma ? (size_t)(comma - v) : n, a = i, z = e;
        while (a < z && is_ows((unsigned char)v[a]))
            a++;
        while (z > a && is_ows((unsigned char)v[z - 1]))
            z--;
        if (ieq(v + a, z - a, tok, tlen))
            return true;
        i = e + 1;
    }
    return false;
}

static bool has_token_n(const struct wsrr_http_head *h, const char *name, const char *tok,
                        size_t tlen)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct wsrr_http_field *f = &h->fields[i];
        if (ieq(f->name, f->name_len, name, nlen) && list_has(f->value, f->value_len, tok, tlen))
            return true;
    }
    return false;
}

bool wsrr_http_has_token(const struct wsrr_http_head *h, const char *name, const char *token)
{
    return has_token_n(h, name, token, strlen(token));
}

/* ---- Sec-WebSocket-Extensions ---- */

static size_t skip_ows(const char *s, size_t len, size_t i)
{
    while (i < len && is_ows((unsigned char)s[i]))
        i++;
    return i;
}

static size_t span_token(const char *s, size_t len, size_t i)
{
    while (i < len && is_tchar((unsigned char)s[i]))
        i++;
    return i;
}

/* Parse the next extension of a list starting at *posp. Returns 1 with *e
 * filled, 0 at the end of the list, or a negative errno. Parameters go to
 * params[*used...] when params is not NULL. */
static int ext_next(const char *s, size_t len, size_t *posp, struct wsrr_ext *e,
                    struct wsrr_ext_param *params, size_t max_params, size_t *used, char *err,
                    size_t errlen)
{
    char cb[8];
    size_t i = *posp, t;

    for (;;) { /* empty list elements are allowed (RFC 7230 7) */
        i = skip_ows(s, len, i);
        if (i < len && s[i] == ',') {
            i++;
            continue;
        }
        break;
    }
    if (i == len) {
        *posp = i;
        return 0;
    }
    t = span_token(s, len, i);
    if (t == i)
        return wsrr_seterr(err, errlen, EBADMSG, "offset %zu: expected an extension name, found %s",
                           i, chr_desc((unsigned char)s[i], cb));
    e->name = s + i;
    e->name_len = t - i;
    e->params = params ? params + *used : NULL;
    e->nparams = 0;
    i = t;

    for (;;) {
        i = skip_ows(s, len, i);
        if (i == len || s[i] == ',')
            break;
        if (s[i] != ';')
            return wsrr_seterr(err, errlen, EBADMSG, "offset %zu: expected ';' or ',', found %s", i,
                               chr_desc((unsigned char)s[i], cb));
        i = skip_ows(s, len, i + 1);
        t = span_token(s, len, i);
        if (t == i)
            return wsrr_seterr(err, errlen, EBADMSG,
                               "offset %zu: expected a parameter name after ';', found %s", i,
                               i == len ? "the end" : chr_desc((unsigned char)s[i], cb));
        struct wsrr_ext_param prm = {.name = s + i, .name_len = t - i};
        i = skip_ows(s, len, t);
        if (i < len && s[i] == '=') {
            i = skip_ows(s, len, i + 1);
            if (i < len && s[i] == '"') {
                size_t j = i + 1;
                bool closed = false;
                while (j < len) {
                    unsigned char c = (unsigned char)s[j];
                    if (c == '"') {
                        closed = true;
                        break;
                    }
                    if (is_bad_ctl(c))
                        break;
                    if (c == '\\') {
                        if (j + 1 >= len || is_bad_ctl((unsigned char)s[j + 1]))
                            break;
                        j++;
                    }
                    j++;
                }
                if (!closed)
                    return wsrr_seterr(err, errlen, EBADMSG,
                                       "offset %zu: unterminated or invalid quoted string", i);
                prm.value = s + i + 1;
                prm.value_len = j - i - 1;
                prm.quoted = true;
                i = j + 1;
            } else {
                t = span_token(s, len, i);
                if (t == i)
                    return wsrr_seterr(
                        err, errlen, EBADMSG,
                        "offset %zu: expected a token or quoted-string after '=', found %s", i,
                        i == len ? "the end" : chr_desc((unsigned char)s[i], cb));
                prm.value = s + i;
                prm.value_len = t - i;
                i = t;
            }
        }
        if (params) {
            if (*used == max_params)
                return wsrr_seterr(err, errlen, E2BIG, "more than %zu extension parameters",
                                   max_params);
            params[(*used)++] = prm;
        }
        e->nparams++;
    }
    if (i < len)
        i++; /* the ',' */
    *posp = i;
    return 1;
}

int wsrr_ext_parse(const char *s, size_t len, struct wsrr_ext *exts, size_t max_exts,
                   struct wsrr_ext_param *params, size_t max_params, char *err, size_t errlen)
{
    size_t pos = 0, used = 0;
    int n = 0;

    if (err && errlen)
        err[0] = '\0';
    for (;;) {
        struct wsrr_ext e;
        int r = ext_next(s, len, &pos, &e, params, max_params, &used, err, errlen);
        if (r <= 0)
            return r < 0 ? r : n;
        if ((size_t)n == max_exts || n == INT_MAX)
            return wsrr_seterr(err, errlen, E2BIG, "more than %zu extensions", max_exts);
        exts[n++] = e;
    }
}

/* ---- handshake checks ---- */

/* RFC 6455 4.1: version = DIGIT | NZDIGIT DIGIT | "1" DIGIT DIGIT | "2" DIGIT DIGIT,
 * at most 255. Returns -1 for anything else. */
static int parse_version(const char *s, size_t n)
{
    if (n == 0 || n > 3 || (n > 1 && s[0] == '0'))
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 255 ? v : -1;
}

static bool is_b64(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* A key is base64 of exactly 16 bytes: 22 characters and "==". */
static bool key_valid(const char *k, size_t n)
{
    unsigned char out[18];

    if (n != 24 || k[22] != '=' || k[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64((unsigned char)k[i]))
            return false;
    /* EVP_DecodeBlock counts the bytes the "=" padding stands for, so 24
     * characters always give 18; minus the 2 pad bytes that is 16. */
    return EVP_DecodeBlock(out, (const unsigned char *)k, 24) == 18;
}

static void fill_info(const struct wsrr_http_head *h, struct wsrr_ws_info *info)
{
    const struct wsrr_http_field *f;
    size_t c;

    memset(info, 0, sizeof(*info));
    info->version = -1;
    if ((f = wsrr_http_find(h, "Sec-WebSocket-Key", NULL))) {
        info->key = f->value;
        info->key_len = f->value_len;
    }
    if ((f = wsrr_http_find(h, "Sec-WebSocket-Accept", NULL))) {
        info->accept = f->value;
        info->accept_len = f->value_len;
    }
    if ((f = wsrr_http_find(h, "Sec-WebSocket-Version", NULL)))
        info->version = parse_version(f->value, f->value_len);
    if ((f = wsrr_http_find(h, "Sec-WebSocket-Protocol", &c))) {
        info->protocols = f->value;
        info->protocols_len = f->value_len;
    }
    info->nprotocol_fields = f ? c : 0;
    if ((f = wsrr_http_find(h, "Sec-WebSocket-Extensions", &c))) {
        info->extensions = f->value;
        info->extensions_len = f->value_len;
    }
    info->nextension_fields = f ? c : 0;
    if ((f = wsrr_http_find(h, "Host", NULL))) {
        info->host = f->value;
        info->host_len = f->value_len;
    }
    if ((f = wsrr_http_find(h, "Origin", NULL))) {
        info->origin = f->value;
        info->origin_len = f->value_len;
    }
}

/* Show at most 40 bytes of an untrusted value in an error message. */
#define SHOW(v, n) (int)((n) > 40 ? 40 : (n)), (v)

/* Write err and return an HTTP status (or any other positive result). */
static int status_err(char *err, size_t errlen, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int status_err(char *err, size_t errlen, int status, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

int wsrr_handshake_check_request(const struct wsrr_http_head *req, struct wsrr_ws_info *info,
                                 char *err, size_t errlen)
{
    const struct wsrr_http_field *f;
    size_t c;

    fill_info(req, info);
    if (err && errlen)
        err[0] = '\0';
    if (req->response)
        return status_err(err, errlen, 400, "not a request");
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0)
        return status_err(err, errlen, 400, "method is %.*s, expected GET",
                          SHOW(req->method, req->method_len));
    if (req->version_minor < 1)
        return status_err(err, errlen, 400, "HTTP/1.%d request; WebSocket needs HTTP/1.1 or later",
                          req->version_minor);
    f = wsrr_http_find(req, "Host", &c);
    if (c == 0)
        return status_err(err, errlen, 400, "no Host field");
    if (c > 1)
        return status_err(err, errlen, 400, "more than one Host field");
    if (f->value_len == 0)
        return status_err(err, errlen, 400, "empty Host field");
    if (!wsrr_http_has_token(req, "Upgrade", "websocket"))
        return status_err(err, errlen, 400, "Upgrade does not name websocket");
    if (!wsrr_http_has_token(req, "Connection", "Upgrade"))
        return status_err(err, errlen, 400, "Connection does not hold the Upgrade token");
    if (wsrr_http_find(req, "Transfer-Encoding", NULL))
        return status_err(err, errlen, 400, "Transfer-Encoding on an Upgrade request");
    for (size_t i = 0; i < req->nfields; i++) {
        f = &req->fields[i];
        if (!ieq(f->name, f->name_len, "Content-Length", 14))
            continue;
        bool zero = f->value_len > 0;
        for (size_t k = 0; k < f->value_len; k++)
            zero = zero && f->value[k] == '0';
        if (!zero)
            return status_err(err, errlen, 400, "Content-Length %.*s on an Upgrade request",
                              SHOW(f->value, f->value_len));
    }
    f = wsrr_http_find(req, "Sec-WebSocket-Key", &c);
    if (c != 1)
        return status_err(err, errlen, 400, "%s",
                          c ? "more than one Sec-WebSocket-Key field" : "no Sec-WebSocket-Key");
    if (!key_valid(f->value, f->value_len))
        return status_err(err, errlen, 400, "Sec-WebSocket-Key \"%.*s\" is not base64 of 16 bytes",
                          SHOW(f->value, f->value_len));
    f = wsrr_http_find(req, "Sec-WebSocket-Version", &c);
    if (c > 1)
        return status_err(err, errlen, 400, "more than one Sec-WebSocket-Version field");
    if (c == 0)
        return status_err(err, errlen, 426, "no Sec-WebSocket-Version (13 expected)");
    if (info->version != 13)
        return status_err(err, errlen, 426, "Sec-WebSocket-Version is %.*s, expected 13",
                          SHOW(f->value, f->value_len));
    return 0;
}

int wsrr_handshake_check_response(const struct wsrr_http_head *req,
                                  const struct wsrr_http_head *resp, struct wsrr_ws_info *info,
                                  char *err, size_t errlen)
{
    const struct wsrr_http_field *f, *key;
    size_t c;

    fill_info(resp, info);
    if (err && errlen)
        err[0] = '\0';
    if (!resp->response)
        return wsrr_seterr(err, errlen, EPROTO, "not a response");
    if (resp->status != 101)
        return status_err(err, errlen, 1, "status %d, not 101", resp->status);
    if (!wsrr_http_has_token(resp, "Upgrade", "websocket"))
        return wsrr_seterr(err, errlen, EPROTO, "101 without Upgrade: websocket");
    if (!wsrr_http_has_token(resp, "Connection", "Upgrade"))
        return wsrr_seterr(err, errlen, EPROTO, "101 without Connection: Upgrade");

    f = wsrr_http_find(resp, "Sec-WebSocket-Accept", &c);
    if (c != 1)
        return wsrr_seterr(err, errlen, EPROTO,
                           c ? "more than one Sec-WebSocket-Accept" : "no Sec-WebSocket-Accept");
    key = wsrr_http_find(req, "Sec-WebSocket-Key", NULL);
    if (!key)
        return wsrr_seterr(err, errlen, EPROTO, "the request has no Sec-WebSocket-Key");
    char want[29];
    wsrr_handshake_accept(key->value, key->value_len, want);
    if (f->value_len != 28 || memcmp(f->value, want, 28) != 0)
        return wsrr_seterr(err, errlen, EPROTO, "Sec-WebSocket-Accept is \"%.*s\", expected %s",
                           SHOW(f->value, f->value_len), want);

    f = wsrr_http_find(resp, "Sec-WebSocket-Protocol", &c);
    if (c > 1)
        return wsrr_seterr(err, errlen, EPROTO, "more than one Sec-WebSocket-Protocol");
    if (f) {
        if (f->value_len == 0 || span_token(f->value, f->value_len, 0) != f->value_len)
            return wsrr_seterr(err, errlen, EPROTO,
                               "Sec-WebSocket-Protocol \"%.*s\" is not a single token",
                               SHOW(f->value, f->value_len));
        if (!has_token_n(req, "Sec-WebSocket-Protocol", f->value, f->value_len))
            return wsrr_seterr(err, errlen, EPROTO, "subprotocol %.*s was not offered",
                               SHOW(f->value, f->value_len));
    }

    /* Extensions: names selected by the server, each offered by the client
     * and selected once. */
    struct wsrr_ext sel[MAX_RESP_EXTS];
    bool found[MAX_RESP_EXTS] = {false};
    size_t nsel = 0, nfound = 0;
    char perr[96];
    for (size_t i = 0; i < resp->nfields; i++) {
        f = &resp->fields[i];
        if (!ieq(f->name, f->name_len, "Sec-WebSocket-Extensions", 24))
            continue;
        size_t pos = 0, used = 0;
        struct wsrr_ext e;
        int r;
        while ((r = ext_next(f->value, f->value_len, &pos, &e, NULL, 0, &used, perr,
                             sizeof(perr))) > 0) {
            if (nsel == MAX_RESP_EXTS)
                return wsrr_seterr(err, errlen, EPROTO, "more than %d extensions in the 101",
                                   MAX_RESP_EXTS);
            for (size_t k = 0; k < nsel; k++)
                if (ieq(sel[k].name, sel[k].name_len, e.name, e.name_len))
                    return wsrr_seterr(err, errlen, EPROTO, "extension %.*s selected twice",
                                       SHOW(e.name, e.name_len));
            sel[nsel++] = e;
        }
        if (r < 0)
            return wsrr_seterr(err, errlen, EPROTO, "Sec-WebSocket-Extensions of the 101: %s",
                               perr);
    }
    for (size_t i = 0; i < req->nfields && nfound < nsel; i++) {
        f = &req->fields[i];
        if (!ieq(f->name, f->name_len, "Sec-WebSocket-Extensions", 24))
            continue;
        size_t pos = 0, used = 0;
        struct wsrr_ext e;
        while (ext_next(f->value, f->value_len, &pos, &e, NULL, 0, &used, perr, sizeof(perr)) > 0) {
            for (size_t k = 0; k < nsel; k++) {
                if (!found[k] && ieq(sel[k].name, sel[k].name_len, e.name, e.name_len)) {
                    found[k] = true;
                    nfound++;
                }
            }
        }
    }
    for (size_t k = 0; k < nsel; k++)
        if (!found[k])
            return wsrr_seterr(err, errlen, EPROTO, "extension %.*s was not offered",
                               SHOW(sel[k].name, sel[k].name_len));
    return 0;
}

void wsrr_handshake_accept(const char *key, size_t key_len, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    out[0] = '\0';
    if (!ctx)
        return;
    if (EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 && EVP_DigestUpdate(ctx, key, key_len) == 1 &&
        EVP_DigestUpdate(ctx, WS_GUID, sizeof(WS_GUID) - 1) == 1 &&
        EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20)
        EVP_EncodeBlock((unsigned char *)out, md, 20);
    EVP_MD_CTX_free(ctx);
}

void wsrr_handshake_make_key(char *out)
{
    unsigned char b[16];

    if (RAND_bytes(b, sizeof(b)) != 1 && getentropy(b, sizeof(b)) != 0) {
        /* Neither source works: the key must only differ between
         * connections (RFC 6455 4.1 asks for a nonce, not a secret). */
        static uint64_t counter;
        uint64_t t = wsrr_now_ns() ^ (++counter * 0x9E3779B97F4A7C15ull);
        wsrr_put64(b, t);
        wsrr_put64(b + 8, wsrr_wall_ns() ^ (t * 0xBF58476D1CE4E5B9ull));
    }
    EVP_EncodeBlock((unsigned char *)out, b, sizeof(b));
}

/* ---- builders ---- */

static bool has_crlf(const char *s)
{
    return s && strpbrk(s, "\r\n") != NULL;
}

/* extra must be complete "Name: value\r\n" lines: CR and LF only as CRLF,
 * ending with one, and no empty line (which would end the head early). */
static bool extra_valid(const char *x)
{
    if (!x || !*x)
        return true;
    size_t n = strlen(x);
    if (n < 2 || x[n - 2] != '\r' || x[n - 1] != '\n' || x[0] == '\r')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (x[i] == '\r' && x[i + 1] != '\n')
            return false;
        if (x[i] == '\n' && (i == 0 || x[i - 1] != '\r'))
            return false;
        if (x[i] == '\n' && i + 1 < n && x[i + 1] == '\r')
            return false;
    }
    return true;
}

int wsrr_handshake_build_request(struct evbuffer *out, const struct wsrr_ws_request_spec *s)
{
    char key[25];
    const char *target = s->target ? s->target : "/";

    if (!s->host || has_crlf(target) || has_crlf(s->host) || has_crlf(s->origin) ||
        has_crlf(s->key) || has_crlf(s->protocols) || has_crlf(s->extensions) ||
        !extra_valid(s->extra) || strpbrk(target, " \t"))
        return -EINVAL;
    if (!s->key)
        wsrr_handshake_make_key(key);

    int r = evbuffer_add_printf(
        out,
        "GET %s HTTP/1.1\r\n"
        "Host: %s\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "%s%s%s%s%s%s%s%s%s%s\r\n",
        target, s->host, s->key ? s->key : key, s->origin ? "Origin: " : "",
        s->origin ? s->origin : "", s->origin ? "\r\n" : "",
        s->protocols ? "Sec-WebSocket-Protocol: " : "", s->protocols ? s->protocols : "",
        s->protocols ? "\r\n" : "", s->extensions ? "Sec-WebSocket-Extensions: " : "",
        s->extensions ? s->extensions : "", s->extensions ? "\r\n" : "", s->extra ? s->extra : "");
    return r < 0 ? -ENOMEM : 0;
}

int wsrr_handshake_build_response(struct evbuffer *out, const char *key, size_t key_len,
                                  const char *protocol, const char *extensions, const char *extra)
{
    char accept[29];

    if (has_crlf(protocol) || has_crlf(extensions) || !extra_valid(extra))
        return -EINVAL;
    wsrr_handshake_accept(key, key_len, accept);
    if (!accept[0])
        return -ENOMEM;
    int r = evbuffer_add_printf(
        out,
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Accept: %s\r\n"
        "%s%s%s%s%s%s%s\r\n",
        accept, protocol ? "Sec-WebSocket-Protocol: " : "", protocol ? protocol : "",
        protocol ? "\r\n" : "", extensions ? "Sec-WebSocket-Extensions: " : "",
        extensions ? extensions : "", extensions ? "\r\n" : "", extra ? extra : "");
    return r < 0 ? -ENOMEM : 0;
}

int wsrr_http_build_error(struct evbuffer *out, int status, const char *body)
{
    char dflt[64];

    if (status < 100 || status > 999)
        return -EINVAL;
    if (!body) {
        snprintf(dflt, sizeof(dflt), "%s\n", wsrr_http_reason(status));
        body = dflt;
    }
    int r = evbuffer_add_printf(out,
                                "HTTP/1.1 %d %s\r\n"
                                "Content-Type: text/plain; charset=utf-8\r\n"
                                "Content-Length: %zu\r\n"
                                "Connection: close\r\n"
                                "%s\r\n",
                                status, wsrr_http_reason(status), strlen(body),
                                status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "");
    if (r < 0 || evbuffer_add(out, body, strlen(body)) != 0)
        return -ENOMEM;
    return 0;
}

const char *wsrr_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}
