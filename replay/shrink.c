/* shrink.c — the smallest session that still fails the same way (fuzz.h).
 *
 * Delta debugging (ddmin's halving, then one at a time) over connections,
 * then over client messages (each with the server messages that answered
 * it), then over the JSON inside each remaining message (fields and array
 * elements removed, strings halved); again from the top until a whole pass
 * removes nothing. A candidate keeps the failure when any of `tries` runs
 * shows the same signature. */
#include "fuzz.h"

#include "mutate.h"
#include "server.h"

#include "wsrr-config.h"
#include "wsrr/capture.h"
#include "wsrr/frame.h"
#include "wsrr/redact.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shrink {
    const struct fz_shrink_opts *o;
    struct fz_server *sv;
    char sig[256];
    unsigned tests, runs;
    bool over; /* max_tests reached */
    char err[512];
};

static void say(const struct shrink *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const struct shrink *k, const char *fmt, ...)
{
    if (!k->o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(k->o->log, fmt, ap);
    va_end(ap);
    fflush(k->o->log);
}

/* One run: the signatures it shows (the server's first). -1 on error. */
static int run_once(struct shrink *k, const struct rp_session *s, struct fz_failure *f, size_t cap,
                    size_t *nf)
{
    struct rp_result res;
    k->runs++;
    if (rp_run(s, &k->o->ro, &res, k->err, sizeof(k->err)) < 0)
        return -1;
    *nf = 0;
    char kind[16], what[128];
    if (k->sv && fz_server_failed(k->sv, &res, kind, sizeof(kind), what, sizeof(what))) {
        struct fz_failure sf;
        fz_server_failure(&sf, kind, what);
        f[(*nf)++] = sf;
        if (fz_server_restart(k->sv, k->err, sizeof(k->err)) < 0) {
            rp_result_free(&res);
            return -1;
        }
    }
    *nf += fz_failures(s, &res, false, k->o->strict, true, f + *nf, cap - *nf);
    rp_result_free(&res);
    return 0;
}

/* Does s still fail with the signature? */
static bool fails(struct shrink *k, const struct rp_session *s)
{
    if (k->o->stop && *k->o->stop)
        k->over = true;
    if (k->over || k->err[0])
        return false;
    if (++k->tests > k->o->max_tests) {
        k->over = true;
        return false;
    }
    for (unsigned t = 0; t < k->o->tries; t++) {
        struct fz_failure f[32];
        size_t n;
        if (run_once(k, s, f, 32, &n) < 0)
            return false;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(f[i].sig, k->sig))
                return true;
    }
    return false;
}

/* ---- building smaller sessions ---- */

/* s without the steps where drop[i] (steps) and without connections where
 * dropc[c]; NULL when out of memory */
static struct rp_session *without(const struct rp_session *s, const bool *drop, const bool *dropc)
{
    struct rp_session *d = rp_session_clone(s);
    if (!d)
        return NULL;
    uint32_t *map = calloc(s->nconns ? s->nconns : 1, sizeof(*map));
    if (!map) {
        rp_session_free(d);
        return NULL;
    }
    size_t w = 0;
    for (size_t i = 0; i < d->nconns; i++) {
        if (dropc && dropc[i]) {
            free(d->conns[i].head);
            free(d->conns[i].response);
            map[i] = UINT32_MAX;
            continue;
        }
        map[i] = (uint32_t)w;
        d->conns[w++] = d->conns[i];
    }
    d->nconns = w;
    w = 0;
    for (size_t i = 0; i < d->nsteps; i++) {
        struct rp_step *st = &d->steps[i];
        if ((drop && drop[i]) || map[st->conn] == UINT32_MAX) {
            free(st->data);
            continue;
        }
        st->conn = map[st->conn];
        d->steps[w++] = *st;
    }
    d->nsteps = w;
    free(map);
    rp_session_renumber(d);
    return d;
}

static bool client_message(const struct rp_step *st)
{
    return st->kind == RP_SEND && st->opcode != WSRR_OP_CLOSE;
}

/* the steps that go with client message i: it, and the server messages on
 * its connection up to the connection's next client step */
static void mark_unit(const struct rp_session *s, size_t i, bool *drop)
{
    drop[i] = true;
    for (size_t j = i + 1; j < s->nsteps; j++) {
        const struct rp_step *st = &s->steps[j];
        if (st->conn != s->steps[i].conn)
            continue;
        if (st->kind != RP_MESSAGE)
            break;
        drop[j] = true;
    }
}

/* ddmin over n units: try removing chunks, halving their size; make(units
 * removed) builds the candidate. Returns the smallest failing session
 * (s itself when nothing could go). */
typedef struct rp_session *(*make_fn)(const struct rp_session *s, const bool *gone, size_t n);

static struct rp_session *ddmin(struct shrink *k, struct rp_session *s,
                                size_t (*count)(const struct rp_session *), make_fn make,
                                const char *what)
{
    size_t n = count(s);
    for (size_t chunk = n / 2 ? n / 2 : 1; n && chunk >= 1 && !k->over && !k->err[0];) {
        bool progress = false;
        for (size_t at = 0; at < n && !k->over;) {
            bool *gone = calloc(n, sizeof(*gone));
            if (!gone)
                return s;
            for (size_t i = at; i < at + chunk && i < n; i++)
                gone[i] = true;
            struct rp_session *c = make(s, gone, n);
            free(gone);
            if (c && fails(k, c)) {
                say(k, "wsrr shrink: %zu %s removed: %zu left\n", chunk, what, count(c));
                rp_session_free(s);
                s = c;
                n = count(s);
                progress = true;
            } else {
                rp_session_free(c);
                at += chunk;
            }
        }
        if (!progress) {
            if (chunk == 1)
                break;
            chunk /= 2;
        } else if (chunk > n / 2 && n / 2) {
            chunk = n / 2;
        }
    }
    return s;
}

static size_t count_conns(const struct rp_session *s)
{
    return s->nconns;
}

static struct rp_session *make_conns(const struct rp_session *s, const bool *gone, size_t n)
{
    (void)n;
    size_t left = 0;
    for (size_t i = 0; i < s->nconns; i++)
        left += !gone[i];
    return left ? without(s, NULL, gone) : NULL;
}

static size_t count_messages(const struct rp_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        n += client_message(&s->steps[i]);
    return n;
}

static struct rp_session *make_messages(const struct rp_session *s, const bool *gone, size_t n)
{
    (void)n;
    bool *drop = calloc(s->nsteps ? s->nsteps : 1, sizeof(*drop));
    if (!drop)
        return NULL;
    for (size_t i = 0, u = 0; i < s->nsteps; i++)
        if (client_message(&s->steps[i]) && gone[u++])
            mark_unit(s, i, drop);
    struct rp_session *c = without(s, drop, NULL);
    free(drop);
    return c;
}

/* ---- JSON inside one message ---- */

/* The candidates for one JSON message: each node removed (DFS order), each
 * string halved. Returns a smaller text for candidate number `nth`, or NULL
 * when there are no more. */
static char *json_candidate(const uint8_t *p, size_t n, size_t nth)
{
    cJSON *j = cJSON_ParseWithLength((const char *)p, n);
    if (!j)
        return NULL;
    /* walk: nodes in DFS order, the root excluded */
    cJSON *stack[256];
    size_t sp = 0, idx = 0;
    char *out = NULL;
    for (cJSON *c = j->child; c;) {
        if (idx == nth) { /* remove it */
            cJSON_Delete(cJSON_DetachItemViaPointer(sp ? stack[sp - 1] : j, c));
            out = cJSON_PrintUnformatted(j);
            break;
        }
        idx++;
        if (cJSON_IsString(c) && strlen(c->valuestring) > 1) {
            if (idx == nth) {
                size_t l = strlen(c->valuestring) / 2;
                c->valuestring[l] = '\0'; /* cJSON frees it whole */
                out = cJSON_PrintUnformatted(j);
                break;
            }
            idx++;
        }
        if (c->child && sp < 256) {
            stack[sp++] = c;
            c = c->child;
            continue;
        }
        while (c && !c->next && sp)
            c = stack[--sp];
        c = c ? c->next : NULL;
    }
    cJSON_Delete(j);
    return out;
}

static struct rp_session *shrink_json(struct shrink *k, struct rp_session *s)
{
    for (size_t i = 0; i < s->nsteps && !k->over && !k->err[0]; i++) {
        struct rp_step *st = &s->steps[i];
        if (!client_message(st) || st->opcode != WSRR_OP_TEXT || !st->fin || !st->len ||
            (st->data[0] != '{' && st->data[0] != '['))
            continue;
        for (size_t nth = 0; !k->over;) {
            char *t = json_candidate(s->steps[i].data, s->steps[i].len, nth);
            if (!t)
                break;
            struct rp_session *c = rp_session_clone(s);
            if (!c) {
                cJSON_free(t);
                break;
            }
            size_t tl = strlen(t);
            uint8_t *d = malloc(tl ? tl : 1);
            if (d)
                memcpy(d, t, tl);
            cJSON_free(t);
            free(c->steps[i].data);
            c->steps[i].data = d;
            c->steps[i].len = d ? tl : 0;
            if (d && fails(k, c)) {
                say(k, "wsrr shrink: connection %u message #%llu: %zu bytes\n",
                    c->conns[c->steps[i].conn].id, (unsigned long long)c->steps[i].seq, tl);
                rp_session_free(s);
                s = c; /* the same nth again: the next candidate moved up */
            } else {
                rp_session_free(c);
                nth++;
            }
        }
    }
    return s;
}

static size_t client_bytes(const struct rp_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        if (client_message(&s->steps[i]))
            n += s->steps[i].len;
    return n;
}

static void shorten(char *out, size_t cap, const uint8_t *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++)
        out[k++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
    if (n && k + 4 >= cap)
        snprintf(out + k, cap - k, "...");
    else
        out[k] = '\0';
}

int fz_shrink(const struct fz_shrink_opts *o, char *err, size_t errlen)
{
    struct shrink k = {.o = o};
    int rc = -1;
    struct wsrr_redactor *red = NULL;
    struct rp_session *s = rp_session_load(o->input, err, errlen);
    if (!s || rp_session_fill_secrets(s, o->secrets, o->nsecrets, err, errlen) < 0)
        goto out;
    if (o->server_cmd && !(k.sv = fz_server_start(o->server_cmd, o->ro.target, o->server_log,
                                                  o->server_wait_ms, err, errlen)))
        goto out;
    if (o->signature) {
        snprintf(k.sig, sizeof(k.sig), "%s", o->signature);
    } else { /* the first failure the input shows */
        for (unsigned t = 0; t < o->tries && !k.sig[0]; t++) {
            struct fz_failure f[32];
            size_t n;
            if (run_once(&k, s, f, 32, &n) < 0) {
                snprintf(err, errlen, "%s", k.err);
                goto out;
            }
            /* the failure the capture records, else the server's, else any
             * but a divergence (a field that changes every run is one) */
            int best = -1, rank = 0;
            for (size_t i = 0; i < n; i++) {
                int r = f[i].conn == UINT32_MAX                       ? 2
                        : !strcmp(f[i].kind, "divergence")            ? 0
                        : rp_outcome_failed(&s->conns[f[i].conn].rec) ? 3
                                                                      : 1;
                if (r > rank)
                    best = (int)i, rank = r;
            }
            if (best >= 0)
                snprintf(k.sig, sizeof(k.sig), "%s", f[best].sig);
        }
        if (!k.sig[0]) {
            snprintf(err, errlen,
                     "%s: no failure in %u run%s against %s (divergences aside: --signature "
                     "picks one): nothing to shrink",
                     o->input, o->tries, o->tries == 1 ? "" : "s", o->ro.target);
            rc = 1;
            goto out;
        }
    }
    size_t c0 = s->nconns, m0 = count_messages(s), b0 = client_bytes(s);
    say(&k, "wsrr shrink: keeping \"%s\"; %zu connections, %zu client messages, %zu bytes\n", k.sig,
        c0, m0, b0);
    if (!fails(&k, s)) {
        snprintf(err, errlen, "%s: \"%s\" did not come back in %u tries: nothing to shrink",
                 o->input, k.sig, o->tries);
        rc = k.err[0] ? -1 : 1;
        if (k.err[0])
            snprintf(err, errlen, "%s", k.err);
        goto out;
    }
    for (unsigned pass = 1; !k.over && !k.err[0]; pass++) {
        size_t before = s->nconns * 1000000 + count_messages(s) * 1000 + client_bytes(s) % 1000;
        size_t bytes = client_bytes(s);
        s = ddmin(&k, s, count_conns, make_conns, "connections");
        s = ddmin(&k, s, count_messages, make_messages, "client messages");
        s = shrink_json(&k, s);
        size_t after = s->nconns * 1000000 + count_messages(s) * 1000 + client_bytes(s) % 1000;
        if (after == before && client_bytes(s) == bytes)
            break;
    }
    if (k.err[0]) {
        snprintf(err, errlen, "%s", k.err);
        goto out;
    }
    /* the result: a recorded run that shows the failure */
    red = o->redact ? wsrr_redactor_new() : NULL;
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "tool", "wsrr " WSRR_VERSION);
    cJSON_AddStringToObject(m, "replay_target", o->ro.target);
    cJSON_AddStringToObject(m, "redaction", o->redact ? "default" : "none");
    cJSON *sh = cJSON_AddObjectToObject(m, "shrink");
    cJSON_AddStringToObject(sh, "from", o->input);
    cJSON_AddStringToObject(sh, "signature", k.sig);
    char *meta = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    bool recorded = false;
    for (unsigned t = 0; t < 3 * o->tries && !recorded && meta; t++) {
        struct rp_result res;
        int r = fz_record_run(s, &o->ro, o->output, meta, red, &res, err, errlen);
        if (r < 0)
            break;
        struct fz_failure f[32];
        size_t n = fz_failures(s, &res, false, o->strict, true, f, 32);
        char kind[16], what[128];
        if (k.sv && fz_server_failed(k.sv, &res, kind, sizeof(kind), what, sizeof(what))) {
            fz_server_failure(&f[n < 32 ? n : 31], kind, what);
            n = n < 32 ? n + 1 : 32;
            if (fz_server_restart(k.sv, err, errlen) < 0) {
                rp_result_free(&res);
                break;
            }
        }
        for (size_t i = 0; i < n; i++)
            recorded = recorded || !strcmp(f[i].sig, k.sig);
        rp_result_free(&res);
    }
    cJSON_free(meta);
    if (!recorded) {
        if (!err[0] || strstr(err, "did not"))
            snprintf(err, errlen, "%s: the smallest session did not fail again when recorded",
                     o->output);
        goto out;
    }
    /* verify: replay --reproduce --repeat over what was written */
    int got =
        fz_replay_case(o->output, &o->ro, o->secrets, o->nsecrets, k.sv, o->verify, err, errlen);
    if (got < 0)
        goto out;
    unsigned ok = (unsigned)got;
    size_t c1 = s->nconns, m1 = count_messages(s), b1 = client_bytes(s);
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "signature", k.sig);
        cJSON_AddStringToObject(j, "output", o->output);
        cJSON *b = cJSON_AddObjectToObject(j, "before");
        cJSON_AddNumberToObject(b, "connections", (double)c0);
        cJSON_AddNumberToObject(b, "client_messages", (double)m0);
        cJSON_AddNumberToObject(b, "client_bytes", (double)b0);
        cJSON *a = cJSON_AddObjectToObject(j, "after");
        cJSON_AddNumberToObject(a, "connections", (double)c1);
        cJSON_AddNumberToObject(a, "client_messages", (double)m1);
        cJSON_AddNumberToObject(a, "client_bytes", (double)b1);
        cJSON_AddNumberToObject(j, "candidates", k.tests);
        cJSON_AddNumberToObject(j, "runs", k.runs);
        cJSON_AddBoolToObject(j, "budget_reached", k.over);
        cJSON_AddNumberToObject(j, "verify_runs", o->verify);
        cJSON_AddNumberToObject(j, "reproduced", ok);
        cJSON *ms = cJSON_AddArrayToObject(j, "messages");
        for (size_t i = 0; i < s->nsteps; i++) {
            const struct rp_step *st = &s->steps[i];
            if (!client_message(st))
                continue;
            cJSON *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "conn", s->conns[st->conn].id);
            char t[64];
            fz_message_type(st->opcode, st->data, st->len, t, sizeof(t));
            cJSON_AddStringToObject(x, "type", t);
            cJSON_AddNumberToObject(x, "bytes", (double)st->len);
            cJSON_AddItemToArray(ms, x);
        }
        fz_print_json(j);
    } else {
        printf("%s: \"%s\"\n", o->output, k.sig);
        printf("  before: %zu connections, %zu client messages, %zu bytes\n", c0, m0, b0);
        printf("  after:  %zu connections, %zu client messages, %zu bytes (%u candidates, %u "
               "runs%s)\n",
               c1, m1, b1, k.tests, k.runs,
               o->stop && *o->stop ? "; interrupted"
               : k.over            ? "; the --max-tests budget ran out"
                                   : "");
        for (size_t i = 0; i < s->nsteps; i++) {
            const struct rp_step *st = &s->steps[i];
            if (!client_message(st))
                continue;
            char text[100];
            shorten(text, sizeof(text), st->data, st->len);
            printf("    connection %u: %s\n", s->conns[st->conn].id, text);
        }
        printf("  verified: reproduced in %u of %u runs (wsrr replay %s --target %s --reproduce "
               "--repeat %u)\n",
               ok, o->verify, o->output, o->ro.target, o->verify);
    }
    rc = 0;
out:
    if (k.sv)
        fz_server_stop(k.sv);
    wsrr_redactor_free(red);
    rp_session_free(s);
    return rc;
}
