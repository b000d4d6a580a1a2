/* rules_apply.c — a rules file applied to a session before it is replayed.
 *
 * The proxy applies rules to live streams (proxy/faults.c); replay is the
 * client itself, so the same decisions, taken by the same engine over the
 * session's messages in their recorded order, become edits of the steps it
 * will send: what the proxy would have done to the client's traffic on its
 * way to the server. Decisions depend on what the engine sees in the proxy
 * too: the connection's ordinal (its place in the session), the message's
 * ordinal per direction, its payload, the time since the connection opened
 * (recorded), the seed; so a rules file gives the same faults in a replay
 * as through the proxy over the same traffic. */
#include "rules_apply.h"

#include "wsrr/frame.h"
#include "wsrr/handshake.h"
#include "wsrr/rules.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rconn_state {
    struct wsrr_rules_conn *rc;
    uint64_t ordinal, nth[2], open_ts, latency_us;
};

static cJSON *note(cJSON *log, const struct wsrr_rule *r, const struct rp_session *s,
                   const struct rp_step *st, int dir, const char *skipped)
{
    cJSON *e = cJSON_CreateObject();
    if (!e)
        return NULL;
    cJSON_AddStringToObject(e, "rule", r->name);
    cJSON_AddStringToObject(e, "action", wsrr_action_name(r->action.kind));
    cJSON_AddNumberToObject(e, "conn", s->conns[st->conn].id);
    cJSON_AddNumberToObject(e, "seq", (double)st->seq);
    cJSON_AddStringToObject(e, "dir", dir == WSRR_DIR_C2S ? "client" : "server");
    if (skipped)
        cJSON_AddStringToObject(e, "skipped", skipped);
    if (log)
        cJSON_AddItemToArray(log, e);
    else
        cJSON_Delete(e);
    return e;
}

static void add_pause(struct rp_step *st, uint64_t us)
{
    uint64_t t = (uint64_t)st->pause_us + us;
    st->pause_us = (uint32_t)(t < UINT32_MAX ? t : UINT32_MAX);
}

/* The connection's rule state, from its recorded upgrade request (the
 * path as the proxy gives it: the whole request target). */
static void conn_open(struct wsrr_rules *rs, const struct rp_conn *c, struct rconn_state *cs)
{
    struct wsrr_http_parser hp;
    wsrr_http_parser_init(&hp, false, 0, 0);
    const struct wsrr_http_head *req = NULL;
    if (c->head && wsrr_http_parse(&hp, (const uint8_t *)c->head, c->head_len) > 0)
        req = wsrr_http_parser_head(&hp);
    char *path = req && req->target ? strndup(req->target, req->target_len) : NULL;
    struct wsrr_conn_info ci = {
        .ordinal = cs->ordinal, .path = path ? path : "", .client = "replay", .request = req};
    cs->rc = wsrr_rules_conn_new(rs, &ci);
    free(path);
    wsrr_http_parser_finish(&hp);
}

/* A new client step at `at` on conn, like `like` but with this payload. */
static struct rp_step *add_send(struct rp_session *s, size_t at, const struct rp_step *like,
                                uint8_t opcode, bool fin, const void *p, size_t n)
{
    struct rp_step v = {.kind = RP_SEND,
                        .conn = like->conn,
                        .seq = like->seq,
                        .ts = like->ts,
                        .opcode = opcode,
                        .fin = fin}; /* like may be in the array that moves */
    struct rp_step *st = rp_steps_insert(s, at, 1);
    if (!st)
        return NULL;
    *st = v;
    if (rp_step_set_data(st, p, n) < 0)
        return NULL;
    return st;
}

/* The connection of step i ends there (a close or a reset of ours): its
 * later steps are gone, and it no longer ends the way it was recorded. */
static void end_here(struct rp_session *s, size_t i)
{
    uint32_t conn = s->steps[i].conn;
    for (size_t j = s->nsteps; j-- > i + 1;)
        if (s->steps[j].conn == conn)
            rp_step_remove(s, j);
    s->conns[conn].rec = (struct rp_outcome){.end = RP_END_OPEN};
}

/* An action on the client message at *i. Returns 1 applied, 0 skipped
 * (logged why), -1 out of memory; *i is left on the last step it made. */
static int act_client(struct rp_session *s, size_t *i, struct wsrr_rules *rs,
                      const struct wsrr_rule *r, struct rconn_state *cs, cJSON *log,
                      bool *timing_only)
{
    struct rp_step *st = &s->steps[*i];
    const struct wsrr_action *a = &r->action;
    bool text = st->opcode == WSRR_OP_TEXT;
    cJSON *e = NULL;
    *timing_only =
        a->kind == WSRR_ACT_DELAY || a->kind == WSRR_ACT_STALL || a->kind == WSRR_ACT_LATENCY;
    if (!st->fin && a->kind != WSRR_ACT_DELAY) {
        note(log, r, s, st, WSRR_DIR_C2S, "a message in fragments: only whole ones are changed");
        return 0;
    }
    switch (a->kind) {
    case WSRR_ACT_DROP:
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        rp_step_remove(s, *i);
        (*i)--; /* the caller moves on to what followed */
        return e ? 1 : -1;
    case WSRR_ACT_DELAY: { /* ms +- jitter, drawn as the proxy draws it */
        uint64_t ms = wsrr_rules_jitter(a->ms, a->jitter_ms, rs->seed, r->name, cs->ordinal,
                                        WSRR_DIR_C2S, cs->nth[WSRR_DIR_C2S]);
        add_pause(st, ms * 1000);
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        if (e)
            cJSON_AddNumberToObject(e, "ms", (double)ms);
        break;
    }
    case WSRR_ACT_DUPLICATE:
        for (uint64_t k = 0; k < (a->count ? a->count : 1); k++) {
            struct rp_step *n = rp_steps_insert(s, *i + 1, 1);
            if (!n)
                return -1;
            *n = s->steps[*i]; /* every field, and a copy of the data */
            n->data = NULL;
            n->pause_us = 0; /* right after it */
            if (rp_step_set_data(n, s->steps[*i].data, s->steps[*i].len) < 0)
                return -1;
            (*i)++;
        }
        e = note(log, r, s, &s->steps[*i], WSRR_DIR_C2S, NULL);
        break;
    case WSRR_ACT_REORDER: { /* held until `count` more client messages went */
        uint64_t left = a->count ? a->count : 1;
        size_t j = *i + 1;
        for (; j < s->nsteps && left; j++)
            if (s->steps[j].conn == st->conn && s->steps[j].kind == RP_SEND &&
                s->steps[j].opcode < 8 && s->steps[j].opcode != WSRR_OP_CONT)
                left--;
        if (left) {
            note(log, r, s, st, WSRR_DIR_C2S, "fewer client messages follow than it holds for");
            return 0;
        }
        /* not between the frames of the last one */
        for (bool fin = s->steps[j - 1].fin; !fin && j < s->nsteps; j++)
            if (s->steps[j].conn == st->conn && s->steps[j].kind == RP_SEND &&
                s->steps[j].opcode == WSRR_OP_CONT)
                fin = s->steps[j].fin;
        struct rp_step held = *st;
        held.decided = true; /* not decided again where it lands */
        memmove(&s->steps[*i], &s->steps[*i + 1], (j - *i - 1) * sizeof(*st));
        s->steps[j - 1] = held;
        e = note(log, r, s, &held, WSRR_DIR_C2S, NULL);
        (*i)--; /* what moved up is looked at next (it was not yet) */
        return e ? 1 : -1;
    }
    case WSRR_ACT_CORRUPT:
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        wsrr_corrupt(st->data, st->len, a->count ? a->count : 1, text, a->flag, rs->seed, r->name,
                     cs->ordinal, WSRR_DIR_C2S, cs->nth[WSRR_DIR_C2S],
                     e ? cJSON_AddArrayToObject(e, "positions") : NULL);
        st->invalid = st->invalid || !a->flag;
        break;
    case WSRR_ACT_TRUNCATE: {
        if (st->len <= a->count) {
            note(log, r, s, st, WSRR_DIR_C2S, "no longer than that already");
            return 0;
        }
        size_t n = (size_t)a->count;
        while (text && n && (st->data[n] & 0xC0) == 0x80) /* not inside a character */
            n--;
        st->len = n;
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        break;
    }
    case WSRR_ACT_FRAGMENT: {
        size_t k = a->count > 1 ? (size_t)a->count : 2, n = st->len, per = n / k ? n / k : 1;
        if (!st->fin || st->opcode >= 8 || n < 2) {
            note(log, r, s, st, WSRR_DIR_C2S, "not a whole data message of 2 bytes or more");
            return 0;
        }
        k = n / per < k ? n / per : k;
        struct rp_step whole = *st;
        st->len = per;
        st->fin = false;
        st->data = NULL;
        if (rp_step_set_data(st, whole.data, per) < 0) {
            free(whole.data);
            return -1;
        }
        for (size_t f = 1; f < k; f++) {
            size_t off = f * per, len = f + 1 == k ? n - off : per;
            if (!add_send(s, *i + f, &whole, WSRR_OP_CONT, f + 1 == k, whole.data + off, len)) {
                free(whole.data);
                return -1;
            }
        }
        free(whole.data);
        *i += k - 1;
        e = note(log, r, s, &s->steps[*i], WSRR_DIR_C2S, NULL);
        if (e)
            cJSON_AddNumberToObject(e, "frames", (double)k);
        break;
    }
    case WSRR_ACT_REPLACE:
        if (a->json) {
            char *p = wsrr_json_edit(st->data, st->len, a->json);
            if (!p) {
                note(log, r, s, st, WSRR_DIR_C2S, "the payload is not JSON");
                return 0;
            }
            int rc = rp_step_set_data(st, p, strlen(p));
            cJSON_free(p);
            if (rc < 0)
                return -1;
        } else {
            if (rp_step_set_data(st, a->text, a->text_len) < 0)
                return -1;
            if (a->binary && st->opcode < 8) /* else the message keeps its opcode */
                st->opcode = WSRR_OP_BINARY;
        }
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        break;
    case WSRR_ACT_INJECT:
        if (a->to == WSRR_TO_CLIENT) {
            note(log, r, s, st, WSRR_DIR_C2S, "towards the client: replay is the client");
            return 0;
        }
        if (!add_send(s, a->flag ? *i + 1 : *i, st, (uint8_t)a->opcode, true, a->text, a->text_len))
            return -1;
        *i += 1;
        e = note(log, r, s, &s->steps[a->flag ? *i : *i - 1], WSRR_DIR_C2S, NULL);
        break;
    case WSRR_ACT_PING_STORM:
        if (a->to == WSRR_TO_CLIENT) {
            note(log, r, s, st, WSRR_DIR_C2S, "towards the client: replay is the client");
            return 0;
        }
        for (uint64_t k = 0; k < (a->count ? a->count : 10); k++) {
            struct rp_step *p = add_send(s, *i + 1, st, WSRR_OP_PING, true, "wsrr", 4);
            if (!p)
                return -1;
            add_pause(p, a->ms * 1000);
            st = &s->steps[*i]; /* the array may have moved */
            (*i)++;
        }
        e = note(log, r, s, &s->steps[*i], WSRR_DIR_C2S, NULL);
        break;
    case WSRR_ACT_CLOSE:
    case WSRR_ACT_RESET:
        if (a->to == WSRR_TO_CLIENT) {
            note(log, r, s, st, WSRR_DIR_C2S, "towards the client: replay is the client");
            return 0;
        }
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        if (a->kind == WSRR_ACT_CLOSE) { /* instead of the message, as the proxy does */
            if (rp_step_set_data(st, a->text, a->text_len) < 0)
                return -1;
            st->opcode = WSRR_OP_CLOSE;
            st->code = (uint16_t)a->code;
            st->fin = true;
            st->rsv = st->len_width = 0;
            st->unmasked = false;
        } else {
            free(st->data);
            *st = (struct rp_step){
                .kind = RP_HANGUP, .conn = st->conn, .seq = st->seq, .ts = st->ts, .rst = true};
        }
        end_here(s, *i);
        break;
    case WSRR_ACT_STALL:
    case WSRR_ACT_LATENCY:
        if (!a->ms) {
            note(log, r, s, st, WSRR_DIR_C2S, "a stall for ever: nothing to replay after it");
            return 0;
        }
        if (a->kind == WSRR_ACT_LATENCY) /* this message and the later ones */
            cs->latency_us += a->ms * 1000;
        add_pause(st, a->ms * 1000);
        e = note(log, r, s, st, WSRR_DIR_C2S, NULL);
        break;
    default:
        note(log, r, s, st, WSRR_DIR_C2S,
             "shapes bytes or the server's side: not applicable to a replay");
        return 0;
    }
    return e ? 1 : -1;
}

/* An action fired by a server message at *i: a close or a reset of ours
 * after it; anything else is the server's traffic, not ours to change. */
static int act_server(struct rp_session *s, size_t *i, const struct wsrr_rule *r, cJSON *log)
{
    const struct rp_step *st = &s->steps[*i];
    const struct wsrr_action *a = &r->action;
    if ((a->kind != WSRR_ACT_CLOSE && a->kind != WSRR_ACT_RESET) || a->to == WSRR_TO_CLIENT) {
        note(log, r, s, st, WSRR_DIR_S2C, "on a server message: replay sends only the client's");
        return 0;
    }
    struct rp_step like = *st;
    struct rp_step *n = rp_steps_insert(s, *i + 1, 1);
    if (!n)
        return -1;
    *n = (struct rp_step){.conn = like.conn, .seq = like.seq, .ts = like.ts};
    if (a->kind == WSRR_ACT_CLOSE) {
        n->kind = RP_SEND;
        n->opcode = WSRR_OP_CLOSE;
        n->fin = true;
        n->code = (uint16_t)a->code;
        if (rp_step_set_data(n, a->text, a->text_len) < 0)
            return -1;
    } else {
        n->kind = RP_HANGUP;
        n->rst = true;
    }
    (*i)++;
    end_here(s, *i);
    return note(log, r, s, &like, WSRR_DIR_S2C, NULL) ? 1 : -1;
}

int rp_rules_apply(struct rp_session *s, struct wsrr_rules *rs, cJSON *log, int *changed)
{
    struct rconn_state *cs = calloc(s->nconns ? s->nconns : 1, sizeof(*cs));
    if (!cs)
        return -1;
    int applied = 0;
    *changed = 0;
    for (size_t i = 0; i < s->nsteps && applied >= 0; i++) {
        struct rp_step *st = &s->steps[i];
        struct rconn_state *c = &cs[st->conn];
        if (st->decided) /* a held message where it landed: done */
            continue;
        if (!c->ordinal) {
            c->ordinal = s->conns[st->conn].id; /* the proxy's connection number */
            c->open_ts = st->ts;
            conn_open(rs, &s->conns[st->conn], c);
        }
        if (st->kind == RP_SEND || st->kind == RP_HANGUP)
            add_pause(st, c->latency_us);
        bool client = st->kind == RP_SEND;
        if ((!client && st->kind != RP_MESSAGE && st->kind != RP_CLOSE) ||
            st->opcode == WSRR_OP_CONT || !c->rc)
            continue;
        int dir = client ? WSRR_DIR_C2S : WSRR_DIR_S2C;
        struct wsrr_msg_info m = {
            .dir = dir,
            .opcode = st->kind == RP_CLOSE ? WSRR_OP_CLOSE : st->opcode,
            .nth = ++c->nth[dir],
            .payload = st->data ? st->data : (const uint8_t *)"",
            .len = st->len,
            .since_open_ms = st->ts > c->open_ts ? (st->ts - c->open_ts) / 1000000 : 0,
        };
        int k = wsrr_rules_on_message(rs, c->rc, &m);
        if (k < 0)
            continue;
        bool timing_only = true;
        int rc = client ? act_client(s, &i, rs, &rs->rules[k], c, log, &timing_only)
                        : act_server(s, &i, &rs->rules[k], log);
        applied = rc < 0 ? -1 : applied + rc;
        if (rc > 0 && (!client || !timing_only))
            (*changed)++;
    }
    for (size_t i = 0; i < s->nsteps; i++)
        s->steps[i].decided = false;
    for (size_t i = 0; i < s->nconns; i++)
        wsrr_rules_conn_free(cs[i].rc);
    free(cs);
    if (applied >= 0)
        rp_session_renumber(s);
    return applied;
}
