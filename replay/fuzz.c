/* fuzz.c — mutated replays with oracles, a behaviour map and a corpus
 * (fuzz.h). */
#include "fuzz.h"

#include "mutate.h"
#include "rules_apply.h"
#include "server.h"

#include "wsrr-config.h"
#include "wsrr/capture.h"
#include "wsrr/common.h"
#include "wsrr/frame.h"
#include "wsrr/redact.h"
#include "wsrr/rules.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- oracles ---- */

static bool conn_invalid(const struct rp_session *s, uint32_t conn)
{
    for (size_t i = 0; i < s->nsteps; i++)
        if (s->steps[i].conn == conn && s->steps[i].invalid)
            return true;
    return false;
}

static void make_sig(struct fz_failure *f)
{
    snprintf(f->sig, sizeof(f->sig), "%s%s%s%s%s", f->kind, f->detail[0] ? " " : "", f->detail,
             f->type[0] ? " at " : "", f->type);
}

void fz_server_failure(struct fz_failure *f, const char *kind, const char *what)
{
    memset(f, 0, sizeof(*f));
    f->conn = UINT32_MAX;
    snprintf(f->kind, sizeof(f->kind), "%s%.16s", strcmp(kind, "sanitizer") ? "server-" : "", kind);
    snprintf(f->detail, sizeof(f->detail), "%s", what);
    make_sig(f);
}

size_t fz_failures(const struct rp_session *s, const struct rp_result *res, bool content_changed,
                   bool strict, bool divergence, struct fz_failure *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < res->nconns && n < cap; i++) {
        const struct rp_conn_result *cr = &res->conns[i];
        const struct rp_outcome *o = &cr->out;
        struct fz_failure f = {.conn = (uint32_t)i};
        switch (o->end) {
        case RP_END_CLOSED:
            if (o->by_server && o->code >= 1011 && o->code <= 1014) {
                snprintf(f.kind, sizeof(f.kind), "close");
                snprintf(f.detail, sizeof(f.detail), "%u \"%.100s\"", o->code, o->reason);
            }
            break;
        case RP_END_ABNORMAL:
        case RP_END_RESET:
            if (o->by_server && (strict || !conn_invalid(s, (uint32_t)i)))
                snprintf(f.kind, sizeof(f.kind), "%s",
                         o->end == RP_END_RESET ? "reset" : "abnormal");
            break;
        case RP_END_TIMEOUT:
            snprintf(f.kind, sizeof(f.kind), "timeout");
            /* what it waited for, without the figures */
            snprintf(f.detail, sizeof(f.detail), "%s",
                     strstr(o->reason, "upgrade")       ? "no answer to the upgrade"
                     : strstr(o->reason, "close frame") ? "no close frame"
                     : strstr(o->reason, "message")     ? "no message"
                                                        : "no end");
            break;
        case RP_END_REJECTED:
            if (o->status >= 500) {
                snprintf(f.kind, sizeof(f.kind), "rejected");
                snprintf(f.detail, sizeof(f.detail), "%d", o->status);
            }
            break;
        case RP_END_FAILED:
            if (strncmp(o->reason, "cannot ", 7) && strncmp(o->reason, "TLS", 3) &&
                strcmp(o->reason, "out of memory")) {
                snprintf(f.kind, sizeof(f.kind), "protocol");
                snprintf(f.detail, sizeof(f.detail), "%.100s", o->reason);
            }
            break;
        case RP_END_OPEN: break;
        }
        if (!f.kind[0] && cr->diverged && divergence && !content_changed) {
            snprintf(f.kind, sizeof(f.kind), "divergence");
            snprintf(f.detail, sizeof(f.detail), "at server message %u", cr->div_nth);
        }
        if (!f.kind[0])
            continue;
        if (cr->last_send) {
            const struct rp_step *st = &s->steps[cr->last_send - 1];
            fz_message_type(st->opcode, st->data, st->len, f.type, sizeof(f.type));
        } else {
            snprintf(f.type, sizeof(f.type), "upgrade");
        }
        make_sig(&f);
        out[n++] = f;
    }
    return n;
}

/* ---- behaviour: what a run saw, as hashed features ---- */

#define MAP_BITS 16
#define MAP_SIZE (1u << MAP_BITS)

static uint32_t fnv(uint32_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

static uint32_t mix(uint32_t a, uint32_t b)
{
    return fnv(fnv(2166136261u, &a, sizeof(a)), &b, sizeof(b));
}

struct seen {
    uint32_t *h;
    size_t n, cap;
    struct {
        uint32_t prev, count;
        uint64_t last_ns;
    } * c;
    size_t nc;
    uint64_t t0;
};

static void feature(struct seen *v, uint32_t h)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        uint32_t *a = realloc(v->h, cap * sizeof(*a));
        if (!a)
            return;
        v->h = a;
        v->cap = cap;
    }
    v->h[v->n++] = h;
}

static uint32_t bucket(uint64_t x)
{
    uint32_t b = 0;
    while (x > 1 && b < 31)
        x >>= 1, b++;
    return b;
}

static void on_message(void *arg, uint32_t conn, uint8_t op, const uint8_t *p, size_t n)
{
    struct seen *v = arg;
    if (conn >= v->nc)
        return;
    char type[64];
    fz_message_type(op, p, n, type, sizeof(type));
    uint32_t t = fnv(2166136261u, type, strlen(type));
    uint64_t now = wsrr_now_ns(), last = v->c[conn].last_ns ? v->c[conn].last_ns : v->t0;
    feature(v, mix(1, t));
    feature(v, mix(mix(2, v->c[conn].prev), t)); /* which type follows which */
    uint64_t ms = (now - last) / 1000000;
    if (ms >= 16) /* a reply that took long: its order of magnitude */
        feature(v, mix(mix(3, t), bucket(ms)));
    v->c[conn].prev = t;
    v->c[conn].last_ns = now;
    v->c[conn].count++;
}

static void end_features(struct seen *v, const struct rp_result *res)
{
    for (size_t i = 0; i < res->nconns; i++) {
        const struct rp_conn_result *cr = &res->conns[i];
        uint32_t e = mix(mix(4, cr->out.end),
                         mix(cr->out.code | (uint32_t)cr->out.status << 16, cr->out.by_server));
        feature(v, e);
        feature(v, mix(mix(5, e), bucket(i < v->nc ? v->c[i].count : 0)));
        if (cr->diverged)
            feature(v, mix(6, bucket(cr->div_nth)));
        if (cr->quiet)
            feature(v, mix(7, bucket(cr->quiet)));
    }
}

/* ---- recording a run: the saved case ---- */

int fz_record_run(const struct rp_session *s, const struct rp_opts *base, const char *path,
                  const char *meta, const struct wsrr_redactor *red, struct rp_result *res,
                  char *err, size_t errlen)
{
    struct wsrr_capture_opts co = {.metadata = meta, .overwrite = true, .mode = red ? 0644 : 0600};
    struct wsrr_capture_writer *w = wsrr_capture_writer_open(path, &co, err, errlen);
    if (!w)
        return -1;
    struct rp_opts ro = *base;
    ro.record = w;
    ro.redact = red;
    ro.on_message = NULL;
    ro.log = NULL;
    int rc = rp_run(s, &ro, res, err, errlen);
    char cerr[256];
    if (wsrr_capture_writer_close(w, cerr, sizeof(cerr)) < 0 && rc == 0) {
        snprintf(err, errlen, "%.200s: %.250s", path, cerr);
        rp_result_free(res);
        rc = -1;
    }
    return rc;
}

void fz_print_json(cJSON *j)
{
    char *text = cJSON_PrintUnformatted(j);
    if (text)
        printf("%s\n", text);
    cJSON_free(text);
    cJSON_Delete(j);
}

/* ---- the fuzzer ---- */

/* A string that is not UTF-8 (a server's binary output, a key from a
 * mutated message) made valid: each byte that does not fit becomes '?', so
 * that the JSON written is JSON. */
static void clean_utf8(cJSON *j)
{
    for (cJSON *c = j ? j->child : NULL; c; c = c->next) {
        char *strs[2] = {c->string, cJSON_IsString(c) ? c->valuestring : NULL};
        for (int k = 0; k < 2; k++) {
            char *p = strs[k];
            size_t n = p ? strlen(p) : 0;
            for (size_t i = 0; p && i < n;) {
                size_t len = 1;
                while (len <= 4 && i + len <= n && !wsrr_utf8_valid((const uint8_t *)p + i, len))
                    len++;
                if (len > 4 || i + len > n) {
                    p[i++] = '?';
                    continue;
                }
                i += len;
            }
        }
        clean_utf8(c);
    }
}

struct entry {
    struct rp_session *s;
    cJSON *chain; /* [{"run":N,"mutations":[...]}, ...] from the capture on */
    size_t capture;
    uint64_t ns; /* how long its run took */
};

struct uniq {
    struct fz_failure f;
    uint64_t run;
    unsigned id;
    char path[512];
    int reproduced;    /* re-runs until it came back (1-3), 0: it did not */
    unsigned attempts; /* saves tried (a flaky one is tried again, up to 5) */
};

struct fuzz {
    const struct fz_opts *o;
    struct rp_session **caps;
    pthread_mutex_t mu;
    uint64_t next_run, done_runs, lost, t0, last_new;
    struct entry *corpus;
    size_t ncorpus;
    uint8_t *map;
    size_t features;
    struct uniq *uniq;
    size_t nuniq;
    struct fz_server *sv;
    pthread_cond_t cv; /* `running` or `saving` went down */
    unsigned running;  /* runs in flight */
    unsigned saving;   /* save_case at work: no run starts meanwhile */
    unsigned gen;      /* server starts */
    unsigned connect_streak;
    FILE *trace;
    struct wsrr_redactor *red;
    bool stop;
    char err[512];
    uint64_t last_status;
};

#define CORPUS_MAX   256
/* Sessions carrying more than this stay out of the corpus: a 16 MiB
 * message (frame.oversize) makes every run of what is derived from it move
 * those bytes, ten to a hundred times the cost of a short session, and what
 * it makes the server do (a 1009, a reset) one mutation finds again from
 * any session. A 1 MiB one stays. */
#define CORPUS_BYTES (2u << 20)

static bool chain_changes_content(const cJSON *chain)
{
    const cJSON *gen, *m;
    cJSON_ArrayForEach(gen, chain)
    {
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(gen, "mutations"))
        {
            const cJSON *op = cJSON_GetObjectItemCaseSensitive(m, "op");
            if (cJSON_IsString(op) && strncmp(op->valuestring, "sched.", 6))
                return true;
        }
        if (cJSON_GetObjectItemCaseSensitive(gen, "rules_changed_content"))
            return true; /* --rules */
    }
    return false;
}

/* The bytes a session sends and expects. */
static size_t payload_bytes(const struct rp_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nsteps; i++)
        n += s->steps[i].len;
    return n;
}

/* A corpus entry to mutate: the quicker of two drawn at random. Sessions
 * that grew large or slow (copies of copies, storms, long waits) are still
 * taken, but less often: runs per second are what finds bugs (AFL gives
 * slow entries fewer turns for the same reason). */
static size_t pick_entry(const struct fuzz *F, struct fz_rng *g)
{
    size_t a = fz_below(g, (uint32_t)F->ncorpus), b = fz_below(g, (uint32_t)F->ncorpus);
    return F->corpus[b].ns < F->corpus[a].ns ? b : a;
}

/* mutations since the capture */
static int chain_length(const cJSON *chain)
{
    int n = 0;
    const cJSON *gen;
    cJSON_ArrayForEach(gen, chain)
    {
        n += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(gen, "mutations"));
    }
    return n;
}

/* Did the server under test fail during this run? Endings that a dying
 * server causes (dropped, reset, refused) give it time to be seen dying. */
bool fz_server_failed(struct fz_server *sv, const struct rp_result *res, char *kind, size_t kcap,
                      char *what, size_t wcap)
{
    bool abrupt = false;
    for (size_t i = 0; i < res->nconns && !abrupt; i++) {
        const struct rp_outcome *o = &res->conns[i].out;
        abrupt = ((o->end == RP_END_ABNORMAL || o->end == RP_END_RESET) && o->by_server) ||
                 (o->end == RP_END_FAILED && !strncmp(o->reason, "cannot connect", 14));
    }
    return abrupt ? fz_server_settle(sv, kind, kcap, what, wcap) != 0
                  : fz_server_check(sv, kind, kcap, what, wcap) != 0;
}

int fz_replay_case(const char *path, const struct rp_opts *ro, const char *const *secrets,
                   size_t nsecrets, struct fz_server *sv, unsigned times, char *err, size_t errlen)
{
    struct rp_session *v = rp_session_load(path, err, errlen);
    if (!v || rp_session_fill_secrets(v, secrets, nsecrets, err, errlen) < 0) {
        rp_session_free(v);
        return -1;
    }
    struct rp_opts plain = *ro;
    plain.quiet_ms = 0;
    plain.barrier = false;
    plain.on_message = NULL;
    plain.record = NULL;
    plain.log = NULL;
    int ok = 0;
    for (unsigned t = 0; t < times && ok >= 0; t++) {
        struct rp_result res;
        char why[400];
        if (rp_run(v, &plain, &res, err, errlen) < 0) {
            ok = -1;
            break;
        }
        ok += rp_result_reproduced(v, &res, why, sizeof(why));
        char kind[16], what[128];
        if (sv && fz_server_failed(sv, &res, kind, sizeof(kind), what, sizeof(what)) &&
            fz_server_restart(sv, err, errlen) < 0)
            ok = -1;
        rp_result_free(&res);
    }
    rp_session_free(v);
    return ok;
}

static double elapsed(const struct fuzz *F)
{
    return (double)(wsrr_now_ns() - F->t0) / 1e9;
}

static void status_line(struct fuzz *F, bool final)
{
    double t = elapsed(F);
    char line[300];
    snprintf(line, sizeof(line),
             "runs %llu (%.0f/s), unique failures %zu, corpus %zu, behaviours %zu, last new %.0f s "
             "ago",
             (unsigned long long)F->done_runs, t > 0 ? (double)F->done_runs / t : 0.0, F->nuniq,
             F->ncorpus, F->features, (double)(wsrr_now_ns() - F->last_new) / 1e9);
    if (F->o->tty)
        fprintf(stderr, "\r\033[Kwsrr fuzz: %s%s", line, final ? "\n" : "");
    else
        fprintf(stderr, "wsrr fuzz: %s\n", line);
    fflush(stderr);
}

static struct uniq *find_uniq(struct fuzz *F, const char *sig)
{
    for (size_t i = 0; i < F->nuniq; i++)
        if (!strcmp(F->uniq[i].f.sig, sig))
            return &F->uniq[i];
    return NULL;
}

/* Is this failure worth saving: new, or saved so far only as a run that did
 * not fail again (a later one may)? */
static bool wanted(struct fuzz *F, const char *sig)
{
    const struct uniq *u = find_uniq(F, sig);
    return !u || (!u->reproduced && u->attempts < 5);
}

/* A failure not seen before (or seen only flaky): record a run of the
 * session that shows it again, and whose recording shows it again with
 * plain replay (up to 3 tries), alone against the server
 * (no other run in flight: with --jobs, runs overlap, and a failure one
 * run caused in another must not be saved as that one's), as
 * OUT/failure-NNN.wsrr, with what led to it in OUT/failure-NNN.json.
 * Called with the lock held. */
static void save_case(struct fuzz *F, const struct rp_session *s, const cJSON *chain,
                      size_t capture, uint64_t run, const struct fz_failure *f)
{
    const struct fz_opts *o = F->o;
    struct uniq *u = find_uniq(F, f->sig);
    bool again_flaky = u != NULL;
    if (!u) {
        u = realloc(F->uniq, (F->nuniq + 1) * sizeof(*u));
        if (!u)
            return;
        F->uniq = u;
        u = &u[F->nuniq++];
        memset(u, 0, sizeof(*u));
        u->f = *f;
        u->run = run;
        u->id = (unsigned)F->nuniq;
        snprintf(u->path, sizeof(u->path), "%s/failure-%03u.wsrr", o->out_dir, u->id);
    }
    u->attempts++;
    unsigned id = u->id;
    char path[512], tmp[530];
    snprintf(path, sizeof(path), "%s", u->path);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    /* u is not used again until found anew: while the lock is let go,
     * another save may move the array */
    F->saving++;
    while (F->running > 0)
        pthread_cond_wait(&F->cv, &F->mu);
    if (find_uniq(F, f->sig)->reproduced) { /* another worker saved it meanwhile */
        F->saving--;
        pthread_cond_broadcast(&F->cv);
        return;
    }
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "wsrr replay %s --target %s --reproduce%s", path, o->ro.target,
             o->repro_opts ? o->repro_opts : "");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "tool", "wsrr " WSRR_VERSION);
    cJSON_AddStringToObject(m, "command", cmd);
    cJSON_AddStringToObject(m, "replay_target", o->ro.target);
    cJSON_AddStringToObject(m, "redaction", o->redact ? "default" : "none");
    cJSON *fz = cJSON_AddObjectToObject(m, "fuzz");
    cJSON_AddStringToObject(fz, "signature", f->sig);
    cJSON_AddStringToObject(fz, "capture", o->captures[capture]);
    cJSON_AddNumberToObject(fz, "seed", (double)o->seed);
    cJSON_AddNumberToObject(fz, "run", (double)run);
    cJSON_AddItemToObject(fz, "mutations", cJSON_Duplicate(chain, true));
    clean_utf8(m);
    char *meta = cJSON_PrintUnformatted(m);
    char err[512] = "";
    int reproduced = 0;
    char unchecked[512] = ""; /* why plain replay could not check it */
    for (int attempt = 1; attempt <= 3 && !reproduced && meta; attempt++) {
        struct rp_result res;
        if (fz_record_run(s, &o->ro, tmp, meta, F->red, &res, err, sizeof(err)) < 0)
            break;
        bool again = false;
        if (f->conn == UINT32_MAX) {
            char kind[16], what[128];
            if (F->sv && fz_server_failed(F->sv, &res, kind, sizeof(kind), what, sizeof(what))) {
                again = true;
                if (fz_server_restart(F->sv, err, sizeof(err)) < 0) {
                    snprintf(F->err, sizeof(F->err), "%s", err);
                    F->stop = true;
                }
                F->gen++;
            }
        } else {
            struct fz_failure got[16];
            size_t n = fz_failures(s, &res, chain_changes_content(chain), o->strict, o->divergence,
                                   got, 16);
            for (size_t i = 0; i < n; i++)
                again = again || !strcmp(got[i].sig, f->sig);
        }
        rp_result_free(&res);
        /* and as the user will run it: the recording, with plain replay */
        if (again && f->conn != UINT32_MAX) {
            int n = fz_replay_case(tmp, &o->ro, o->secrets, o->nsecrets, F->sv, 1, unchecked,
                                   sizeof(unchecked));
            if (n >= 0) { /* else (a secret not given, say) it is said in the JSON */
                again = n == 1;
                unchecked[0] = '\0';
            }
        }
        if (again)
            reproduced = attempt;
    }
    cJSON_free(meta);
    F->saving--;
    pthread_cond_broadcast(&F->cv);
    u = find_uniq(F, f->sig);         /* the array may have moved while the lock was let go */
    if (again_flaky && !reproduced) { /* the earlier case stays */
        unlink(tmp);
        cJSON_Delete(m);
        return;
    }
    if (rename(tmp, path) < 0 && !err[0])
        snprintf(err, sizeof(err), "%.400s: %.100s", path, strerror(errno));
    u->reproduced = reproduced;
    u->run = run;
    /* the description next to it */
    cJSON_AddStringToObject(m, "case", path);
    cJSON_AddStringToObject(m, "kind", f->kind);
    cJSON_AddStringToObject(m, "detail", f->detail);
    cJSON_AddStringToObject(m, "message_type", f->type);
    if (f->conn != UINT32_MAX)
        cJSON_AddNumberToObject(m, "connection", s->conns[f->conn].id);
    cJSON_AddStringToObject(m, "recorded",
                            reproduced ? "a run that failed the same way, alone, and does again "
                                         "with wsrr replay --reproduce"
                                       : "a run that did not fail again in 3 tries alone (flaky)");
    if (err[0])
        cJSON_AddStringToObject(m, "error", err);
    if (unchecked[0])
        cJSON_AddStringToObject(m, "not_checked_with_replay", unchecked);
    if (F->sv) {
        char tail[2048];
        fz_server_log_tail(F->sv, tail, sizeof(tail));
        cJSON_AddStringToObject(m, "server_log_tail", tail);
    }
    clean_utf8(m);
    char jpath[520];
    snprintf(jpath, sizeof(jpath), "%s/failure-%03u.json", o->out_dir, id);
    char *text = cJSON_Print(m);
    FILE *fp = text ? fopen(jpath, "w") : NULL;
    if (fp) {
        fputs(text, fp);
        fputc('\n', fp);
        fclose(fp);
    }
    cJSON_free(text);
    cJSON_Delete(m);
    if (o->tty)
        fprintf(stderr, "\r\033[K");
    fprintf(stderr, "wsrr fuzz: %s failure %u at run %llu: %s\n  saved %s%s\n  reproduce: %s\n",
            again_flaky ? "again" : "new", id, (unsigned long long)run, f->sig, path,
            err[0]       ? " (could not record it)"
            : reproduced ? ""
                         : " (it did not fail again in 3 tries alone: flaky)",
            cmd);
}

static void add_trace(struct fuzz *F, uint64_t run, const char *parent, const cJSON *step,
                      const struct rp_result *res, const struct fz_failure *f, size_t nf,
                      bool fresh, uint64_t ns)
{
    const cJSON *muts = cJSON_GetObjectItemCaseSensitive(step, "mutations");
    if (!F->trace)
        return;
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "run", (double)run);
    cJSON_AddStringToObject(t, "parent", parent);
    cJSON_AddItemToObject(t, "mutations", cJSON_Duplicate(muts, true));
    const cJSON *rules = cJSON_GetObjectItemCaseSensitive(step, "rules");
    if (rules)
        cJSON_AddItemToObject(t, "rules", cJSON_Duplicate(rules, true));
    cJSON *ends = cJSON_AddArrayToObject(t, "ends");
    for (size_t i = 0; res && i < res->nconns; i++) {
        char d[200];
        rp_outcome_describe(&res->conns[i].out, d, sizeof(d));
        cJSON_AddItemToArray(ends, cJSON_CreateString(d));
    }
    cJSON *fa = cJSON_AddArrayToObject(t, "failures");
    for (size_t i = 0; i < nf; i++)
        cJSON_AddItemToArray(fa, cJSON_CreateString(f[i].sig));
    cJSON_AddBoolToObject(t, "new_behaviour", fresh);
    cJSON_AddNumberToObject(t, "ms", (double)(ns / 1000) / 1000);
    clean_utf8(t);
    char *line = cJSON_PrintUnformatted(t);
    if (line)
        fprintf(F->trace, "%s\n", line);
    cJSON_free(line);
    cJSON_Delete(t);
}

/* --until: every pattern found in the signature of some failure saved as a
 * case that fails again alone (a flaky one may yet be replaced by one) */
static bool found_all(const struct fuzz *F)
{
    const struct fz_opts *o = F->o;
    for (size_t i = 0; i < o->nuntil; i++) {
        bool hit = false;
        for (size_t k = 0; k < F->nuniq && !hit; k++)
            hit = F->uniq[k].reproduced && strstr(F->uniq[k].f.sig, o->until[i]) != NULL;
        if (!hit)
            return false;
    }
    return o->nuntil > 0;
}

static bool out_of_budget(const struct fuzz *F)
{
    const struct fz_opts *o = F->o;
    return F->stop || found_all(F) || (o->stop && *o->stop) ||
           (o->runs && F->next_run >= o->runs) || (o->seconds > 0 && elapsed(F) >= o->seconds);
}

/* --rules: the rules applied to a run's session; the faults are listed in
 * the run's entry of its chain. How many changed what the client sends (not only when),
 * or -1 (out of memory). */
static int apply_rules(struct wsrr_rules *rs, struct rp_session *s, cJSON *step)
{
    wsrr_rules_reset_counts(rs); /* limits and after_rule count per run */
    cJSON *log = cJSON_AddArrayToObject(step, "rules");
    int changed = 0;
    int n = log ? rp_rules_apply(s, rs, log, &changed) : -1;
    if (changed > 0)
        cJSON_AddTrueToObject(step, "rules_changed_content");
    return n < 0 ? -1 : changed;
}

struct worker_arg {
    struct fuzz *F;
    unsigned idx;
};

static void *worker(void *arg)
{
    struct fuzz *F = ((struct worker_arg *)arg)->F;
    unsigned idx = ((struct worker_arg *)arg)->idx;
    const struct fz_opts *o = F->o;
    char rerr[256]; /* --rules: parsed once per worker (it parsed when it was loaded) */
    struct wsrr_rules *rules =
        o->rules_text ? wsrr_rules_parse(o->rules_text, strlen(o->rules_text), rerr, sizeof(rerr))
                      : NULL;
    for (;;) {
        pthread_mutex_lock(&F->mu);
        while (F->saving)
            pthread_cond_wait(&F->cv, &F->mu);
        if (out_of_budget(F)) {
            pthread_mutex_unlock(&F->mu);
            break;
        }
        uint64_t run = F->next_run++;
        struct fz_rng g = {o->seed ^ (run + 1) * 0xd1342543de82ef95ull};
        fz_next(&g);
        char parent[64];
        const struct rp_session *from;
        const cJSON *from_chain = NULL;
        size_t capture, k0 = 0;
        if (o->feedback && F->ncorpus && fz_below(&g, 10) < 7 &&
            chain_length(F->corpus[k0 = pick_entry(F, &g)].chain) < 8) {
            size_t k = k0;
            from = F->corpus[k].s;
            from_chain = F->corpus[k].chain;
            capture = F->corpus[k].capture;
            snprintf(parent, sizeof(parent), "corpus %zu", k);
        } else {
            capture = fz_below(&g, (uint32_t)o->ncaptures);
            from = F->caps[capture];
            snprintf(parent, sizeof(parent), "capture %zu", capture);
        }
        struct rp_session *s = rp_session_clone(from);
        cJSON *chain = from_chain ? cJSON_Duplicate(from_chain, true) : cJSON_CreateArray();
        unsigned gen = F->gen;
        F->running++;
        pthread_mutex_unlock(&F->mu);
        if (!s || !chain) {
            rp_session_free(s);
            cJSON_Delete(chain);
            pthread_mutex_lock(&F->mu);
            F->running--;
            F->lost++; /* counted: the status loop waits for every run to end */
            pthread_cond_broadcast(&F->cv);
            snprintf(F->err, sizeof(F->err), "out of memory");
            F->stop = true;
            pthread_mutex_unlock(&F->mu);
            break;
        }
        cJSON *step = cJSON_CreateObject();
        cJSON_AddNumberToObject(step, "run", (double)run);
        cJSON *muts = cJSON_AddArrayToObject(step, "mutations");
        cJSON_AddItemToArray(chain, step);
        int applied = fz_mutate(s, &g, o->families, o->max_mutations, muts);
        /* what runs: s, or a copy of it with --rules' faults and, with
         * --jobs, this worker's users and ids (the corpus keeps s) */
        struct rp_session *iso = NULL;
        int faults = 0;
        if (applied >= 0 && (idx > 0 || o->rules_text)) {
            if (!(iso = rp_session_clone(s)) || (idx > 0 && fz_isolate(iso, idx) < 0))
                applied = -1;
            else if (o->rules_text && (!rules || (faults = apply_rules(rules, iso, step)) < 0))
                applied = -1;
        }
        const struct rp_session *rs = iso ? iso : s;
        struct seen v = {.nc = s->nconns, .t0 = wsrr_now_ns()};
        v.c = calloc(s->nconns ? s->nconns : 1, sizeof(*v.c));
        struct rp_opts ro = o->ro;
        ro.on_message = on_message;
        ro.arg = &v;
        struct rp_result res = {0};
        char err[512];
        int rc = applied < 0 || !v.c ? -1 : rp_run(rs, &ro, &res, err, sizeof(err));
        uint64_t run_ns = wsrr_now_ns() - v.t0;
        if (applied < 0 || !v.c)
            snprintf(err, sizeof(err), "out of memory");
        struct fz_failure fl[32];
        size_t nf = 0;
        bool content = idx > 0 || faults > 0 || chain_changes_content(chain); /* idx: names */
        if (rc == 0) {
            nf = fz_failures(rs, &res, content, o->strict, o->divergence, fl, 32);
            end_features(&v, &res);
        }
        pthread_mutex_lock(&F->mu);
        F->running--;
        pthread_cond_broadcast(&F->cv);
        bool keep = false, fresh = false;
        if (rc < 0) {
            snprintf(F->err, sizeof(F->err), "%s", err);
            F->stop = true;
            F->lost++;
        } else {
            char kind[16], what[128];
            if (F->sv && fz_server_failed(F->sv, &res, kind, sizeof(kind), what, sizeof(what))) {
                /* the server died (or reported) during this run: that is the
                 * failure, not what its connections saw */
                struct fz_failure sf;
                fz_server_failure(&sf, kind, what);
                if (fz_server_restart(F->sv, F->err, sizeof(F->err)) < 0)
                    F->stop = true;
                F->gen++;
                fl[0] = sf;
                nf = 1;
                if (!F->stop && wanted(F, sf.sig)) {
                    F->last_new = wsrr_now_ns();
                    save_case(F, rs, chain, capture, run, &sf);
                }
            } else if (F->gen != gen) {
                F->lost++; /* it overlapped a restart: its endings say nothing */
                nf = 0;
            } else {
                bool all_refused = res.nconns > 0;
                for (size_t i = 0; i < res.nconns; i++)
                    all_refused = all_refused && res.conns[i].out.end == RP_END_FAILED &&
                                  !strncmp(res.conns[i].out.reason, "cannot connect", 14);
                F->connect_streak = all_refused ? F->connect_streak + 1 : 0;
                if (F->connect_streak >= 20) {
                    snprintf(F->err, sizeof(F->err),
                             "%s does not accept connections any more (%u runs in a row: %s)",
                             o->ro.target, F->connect_streak, res.conns[0].out.reason);
                    F->stop = true;
                }
                for (size_t i = 0; i < nf; i++)
                    if (wanted(F, fl[i].sig)) {
                        F->last_new = wsrr_now_ns();
                        save_case(F, rs, chain, capture, run, &fl[i]);
                    }
                for (size_t i = 0; i < v.n; i++) {
                    uint32_t h = v.h[i] & (MAP_SIZE * 8 - 1);
                    if (!(F->map[h >> 3] & (1u << (h & 7)))) {
                        F->map[h >> 3] |= (uint8_t)(1u << (h & 7));
                        F->features++;
                        fresh = true;
                    }
                }
                if (fresh)
                    F->last_new = wsrr_now_ns();
                keep = fresh && o->feedback && applied > 0 && payload_bytes(s) <= CORPUS_BYTES;
            }
            F->done_runs++;
            add_trace(F, run, parent, step, &res, fl, nf, fresh, run_ns);
            if (keep) {
                size_t at = F->ncorpus;
                if (at < CORPUS_MAX) {
                    F->ncorpus++;
                } else { /* full: one at random makes room */
                    at = fz_below(&g, CORPUS_MAX);
                    rp_session_free(F->corpus[at].s);
                    cJSON_Delete(F->corpus[at].chain);
                }
                F->corpus[at] =
                    (struct entry){.s = s, .chain = chain, .capture = capture, .ns = run_ns};
            }
        }
        pthread_mutex_unlock(&F->mu);
        if (rc == 0)
            rp_result_free(&res);
        free(v.h);
        free(v.c);
        rp_session_free(iso);
        if (!keep) {
            rp_session_free(s);
            cJSON_Delete(chain);
        }
    }
    wsrr_rules_free(rules);
    return NULL;
}

long fz_fuzz(const struct fz_opts *o, char *err, size_t errlen)
{
    struct fuzz F = {.o = o};
    long rc = -1;
    pthread_mutex_init(&F.mu, NULL);
    pthread_cond_init(&F.cv, NULL);
    F.caps = calloc(o->ncaptures, sizeof(*F.caps));
    F.map = calloc(MAP_SIZE, 1);
    F.corpus = calloc(CORPUS_MAX, sizeof(*F.corpus));
    if (!F.caps || !F.map || !F.corpus) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < o->ncaptures; i++) {
        F.caps[i] = rp_session_load(o->captures[i], err, errlen);
        if (!F.caps[i] ||
            rp_session_fill_secrets(F.caps[i], o->secrets, o->nsecrets, err, errlen) < 0)
            goto out;
    }
    if (mkdir(o->out_dir, 0755) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "--out %s: %s", o->out_dir, strerror(errno));
        goto out;
    }
    if (o->trace && !(F.trace = fopen(o->trace, "w"))) {
        snprintf(err, errlen, "--trace %s: %s", o->trace, strerror(errno));
        goto out;
    }
    if (o->redact && !(F.red = wsrr_redactor_new())) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (o->server_cmd) {
        char log[600];
        snprintf(log, sizeof(log), "%s/server.log", o->out_dir);
        if (!(F.sv = fz_server_start(o->server_cmd, o->ro.target, log, o->server_wait_ms, err,
                                     errlen)))
            goto out;
    }
    fprintf(stderr, "wsrr fuzz: seed %llu, %zu capture%s, target %s%s%s\n",
            (unsigned long long)o->seed, o->ncaptures, o->ncaptures == 1 ? "" : "s", o->ro.target,
            o->server_cmd ? ", server: " : "", o->server_cmd ? o->server_cmd : "");
    F.t0 = F.last_new = F.last_status = wsrr_now_ns();
    unsigned jobs = o->jobs ? o->jobs : 1;
    pthread_t t[64];
    struct worker_arg wa[64];
    unsigned started = 0;
    for (; started < jobs && started < 64; started++) {
        wa[started] = (struct worker_arg){&F, started};
        if (pthread_create(&t[started], NULL, worker, &wa[started]) != 0)
            break;
    }
    if (!started) {
        snprintf(err, errlen, "cannot start a thread");
        goto out;
    }
    /* the status, while the workers run */
    for (;;) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&F.mu);
        bool over = out_of_budget(&F) && F.done_runs + F.lost >= F.next_run;
        uint64_t now = wsrr_now_ns();
        if (!over && (now - F.last_status) / 1000000 >= (o->tty ? 250u : 5000u)) {
            status_line(&F, false);
            F.last_status = now;
        }
        pthread_mutex_unlock(&F.mu);
        if (over)
            break;
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    status_line(&F, true);
    if (F.err[0] && !F.done_runs) {
        snprintf(err, errlen, "%s", F.err);
        goto out;
    }
    double secs = elapsed(&F);
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "runs", (double)F.done_runs);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cJSON_AddNumberToObject(j, "runs_per_second", secs > 0 ? (double)F.done_runs / secs : 0);
        cJSON_AddNumberToObject(j, "seed", (double)o->seed);
        cJSON_AddNumberToObject(j, "corpus", (double)F.ncorpus);
        cJSON_AddNumberToObject(j, "behaviours", (double)F.features);
        cJSON_AddNumberToObject(j, "runs_lost_to_restarts", (double)F.lost);
        if (F.sv)
            cJSON_AddNumberToObject(j, "server_starts", fz_server_starts(F.sv));
        if (F.err[0])
            cJSON_AddStringToObject(j, "stopped", F.err);
        cJSON *fa = cJSON_AddArrayToObject(j, "failures");
        for (size_t i = 0; i < F.nuniq; i++) {
            const struct uniq *u = &F.uniq[i];
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "signature", u->f.sig);
            cJSON_AddStringToObject(x, "kind", u->f.kind);
            cJSON_AddStringToObject(x, "detail", u->f.detail);
            cJSON_AddStringToObject(x, "message_type", u->f.type);
            cJSON_AddNumberToObject(x, "run", (double)u->run);
            cJSON_AddStringToObject(x, "case", u->path);
            cJSON_AddBoolToObject(x, "recorded_failing", u->reproduced > 0);
            cJSON_AddItemToArray(fa, x);
        }
        fz_print_json(j);
    } else {
        printf("%llu runs in %.1f s (%.0f/s), seed %llu: %zu unique failure%s\n",
               (unsigned long long)F.done_runs, secs, secs > 0 ? (double)F.done_runs / secs : 0.0,
               (unsigned long long)o->seed, F.nuniq, F.nuniq == 1 ? "" : "s");
        for (size_t i = 0; i < F.nuniq; i++)
            printf("  %s: %s (run %llu)%s\n", F.uniq[i].path, F.uniq[i].f.sig,
                   (unsigned long long)F.uniq[i].run, F.uniq[i].reproduced ? "" : " [flaky]");
    }
    rc = (long)F.nuniq;
    if (F.err[0]) { /* stopped: the summary above says what was found before */
        snprintf(err, errlen, "stopped after %llu runs: %s", (unsigned long long)F.done_runs,
                 F.err);
        rc = -1;
    }
out:
    if (F.sv)
        fz_server_stop(F.sv);
    for (size_t i = 0; F.corpus && i < F.ncorpus; i++) {
        rp_session_free(F.corpus[i].s);
        cJSON_Delete(F.corpus[i].chain);
    }
    for (size_t i = 0; F.caps && i < o->ncaptures; i++)
        rp_session_free(F.caps[i]);
    free(F.caps);
    free(F.corpus);
    free(F.map);
    free(F.uniq);
    if (F.trace)
        fclose(F.trace);
    wsrr_redactor_free(F.red);
    pthread_mutex_destroy(&F.mu);
    pthread_cond_destroy(&F.cv);
    return rc;
}
