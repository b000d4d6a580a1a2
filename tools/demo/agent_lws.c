/* agent_lws.c — the demo's agent backend and scripted client, written with
 * libwebsockets so that the demo does not test wsrr against itself.
 *
 *   wsrr-demo-agent backend PORT [--fixed]   ws://127.0.0.1:PORT/v1/agent
 *   wsrr-demo-agent client URL [N]           N concurrent runs (default 3)
 *
 * The backend streams agent_started, tool_executing (x2), agent_completed for
 * every {"type":"run"} it receives, 20 ms apart. Its bug: runs of the same
 * user share state, so when a second run of that user starts while the first
 * is between its tool calls, the first run's handler fails and the server
 * closes that connection with 1011 "Internal error". Run one at a time,
 * every run completes. --fixed keeps the state per run. (The same backend as
 * tools/demo/agent.py, which the Python tests use.)
 *
 * The client starts ada's run-1, bob's run-3 5 ms later and ada's run-2
 * 10 ms later, and prints how each ended: "ada run-1: received 1011
 * (internal error) Internal error" or "ada run-2: completed". */
#include <cjson/cJSON.h>
#include <libwebsockets.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXQ 8

static bool fixed, stop_now;
static struct lws_context *ctx;

/* ---- the backend ---- */

struct owner {
    char user[32], run[32];
};
static struct owner state[16]; /* user -> the run that owns it (the bug) */

static struct owner *state_of(const char *user, bool make)
{
    for (size_t i = 0; i < 16; i++)
        if (!strcmp(state[i].user, user))
            return &state[i];
    for (size_t i = 0; make && i < 16; i++)
        if (!state[i].user[0]) {
            snprintf(state[i].user, sizeof(state[i].user), "%s", user);
            return &state[i];
        }
    return NULL;
}

struct session {
    struct lws *wsi;
    lws_sorted_usec_list_t sul;
    char user[32], run[32], task[96];
    int step;
    char *q[MAXQ]; /* messages waiting for a writable socket */
    int nq;
    bool crash, done_close;
};

static void queue(struct session *s, cJSON *msg)
{
    char *txt = cJSON_PrintUnformatted(msg);
    cJSON_Delete(msg);
    if (txt && s->nq < MAXQ)
        s->q[s->nq++] = txt;
    else
        free(txt);
    lws_callback_on_writable(s->wsi);
}

static cJSON *event(const char *type, const struct session *s)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", type);
    cJSON_AddStringToObject(j, "run", s->run);
    return j;
}

/* A step of the run, 20 ms after the previous one. */
static void step(lws_sorted_usec_list_t *sul)
{
    struct session *s = lws_container_of(sul, struct session, sul);
    static const char *const tools[] = {"search", "calculator"};
    if (s->step < 2) {
        cJSON *e = event("tool_executing", s);
        cJSON_AddNumberToObject(e, "step", s->step + 1);
        cJSON_AddStringToObject(e, "tool", tools[s->step]);
        queue(s, e);
        char key[64];
        snprintf(key, sizeof(key), "%s%s%s", s->user, fixed ? "/" : "", fixed ? s->run : "");
        struct owner *o = state_of(key, true);
        if (s->step == 1 && o && o->run[0] && strcmp(o->run, s->run)) {
            /* the race: another run of this user replaced our state */
            o->run[0] = '\0';
            o->user[0] = '\0';
            s->crash = true;
            lws_callback_on_writable(s->wsi);
            return;
        }
        if (o)
            snprintf(o->run, sizeof(o->run), "%s", s->run);
        s->step++;
        lws_sul_schedule(ctx, 0, &s->sul, step, 20 * LWS_US_PER_MS);
        return;
    }
    char key[64];
    snprintf(key, sizeof(key), "%s%s%s", s->user, fixed ? "/" : "", fixed ? s->run : "");
    struct owner *o = state_of(key, false);
    if (o)
        o->user[0] = o->run[0] = '\0';
    cJSON *e = event("agent_completed", s);
    cJSON_AddStringToObject(e, "result", "42");
    cJSON_AddNumberToObject(e, "tokens", 187);
    queue(s, e);
}

static int backend_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                      size_t len)
{
    struct session *s = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        memset(s, 0, sizeof(*s));
        s->wsi = wsi;
        break;
    case LWS_CALLBACK_RECEIVE: {
        cJSON *m = cJSON_ParseWithLength(in, len);
        const cJSON *type = cJSON_GetObjectItem(m, "type");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "run")) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "type", "error");
            cJSON_AddStringToObject(e, "error", "unknown message");
            queue(s, e);
        } else {
            const char *u = cJSON_GetStringValue(cJSON_GetObjectItem(m, "user"));
            const char *r = cJSON_GetStringValue(cJSON_GetObjectItem(m, "run"));
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(m, "task"));
            snprintf(s->user, sizeof(s->user), "%s", u ? u : "");
            snprintf(s->run, sizeof(s->run), "%s", r ? r : "");
            snprintf(s->task, sizeof(s->task), "%s", t ? t : "");
            s->step = 0;
            cJSON *e = event("agent_started", s);
            cJSON_AddStringToObject(e, "task", s->task);
            queue(s, e);
            lws_sul_schedule(ctx, 0, &s->sul, step, 20 * LWS_US_PER_MS);
        }
        cJSON_Delete(m);
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (s->nq) {
            unsigned char buf[LWS_PRE + 512];
            size_t n = strlen(s->q[0]);
            n = n < 512 ? n : 512;
            memcpy(buf + LWS_PRE, s->q[0], n);
            free(s->q[0]);
            memmove(s->q, s->q + 1, (size_t)--s->nq * sizeof(s->q[0]));
            if (lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT) < (int)n)
                return -1;
            if (s->nq || s->crash)
                lws_callback_on_writable(wsi);
            break;
        }
        if (s->crash) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
                             (unsigned char *)"Internal error", 14);
            return -1;
        }
        break;
    case LWS_CALLBACK_CLOSED:
        lws_sul_cancel(&s->sul);
        for (int i = 0; i < s->nq; i++)
            free(s->q[i]);
        s->nq = 0;
        break;
    default: break;
    }
    return 0;
}

/* ---- the client ---- */

struct run {
    const char *user, *run;
    int delay_ms;
    struct lws *wsi;
    lws_sorted_usec_list_t sul;
    bool sent, closing, over;
    char result[160];
};

static struct run runs[] = {{.user = "ada", .run = "run-1", .delay_ms = 0},
                            {.user = "ada", .run = "run-2", .delay_ms = 10},
                            {.user = "bob", .run = "run-3", .delay_ms = 5}};
static int nruns = 3, left, open_conns;
static char host[128], path[256];
static int port;

static void maybe_stop(void);

static void finish(struct run *r, const char *result)
{
    if (r->over)
        return;
    r->over = true;
    snprintf(r->result, sizeof(r->result), "%s", result);
    left--;
}

/* every run over and every connection closed: the client is done */
static void maybe_stop(void)
{
    if (left == 0 && open_conns == 0)
        stop_now = true;
}

static void start(lws_sorted_usec_list_t *sul)
{
    struct run *r = lws_container_of(sul, struct run, sul);
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof(ci));
    ci.context = ctx;
    ci.address = host;
    ci.port = port;
    ci.path = path;
    ci.host = host;
    ci.origin = host;
    ci.userdata = r;
    ci.pwsi = &r->wsi;
    ci.protocol = NULL;
    if (!lws_client_connect_via_info(&ci)) {
        finish(r, "could not connect");
        maybe_stop();
    }
}

static int client_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len)
{
    struct run *r = user;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        open_conns++;
        lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
        if (r->closing) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"done", 4);
            return -1;
        }
        if (r->sent)
            break;
        unsigned char buf[LWS_PRE + 256];
        int n = snprintf((char *)buf + LWS_PRE, 256,
                         "{\"type\": \"run\", \"user\": \"%s\", \"run\": \"%s\", \"task\": "
                         "\"What is six times seven?\"}",
                         r->user, r->run);
        r->sent = true;
        if (lws_write(wsi, buf + LWS_PRE, (size_t)n, LWS_WRITE_TEXT) < n)
            return -1;
        break;
    }
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        cJSON *m = cJSON_ParseWithLength(in, len);
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(m, "type"));
        if (type && !strcmp(type, "agent_completed")) {
            finish(r, "completed");
            r->closing = true;
            lws_callback_on_writable(wsi);
        }
        cJSON_Delete(m);
        break;
    }
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: {
        const unsigned char *p = in;
        int code = len >= 2 ? p[0] << 8 | p[1] : 1005;
        char text[160];
        snprintf(text, sizeof(text), "received %d (%s) %.*s", code,
                 code == 1011 ? "internal error" : "closed", len > 2 ? (int)(len - 2) : 0,
                 len > 2 ? (const char *)p + 2 : "");
        finish(r, text);
        break;
    }
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        finish(r, "connection error");
        maybe_stop();
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        finish(r, "closed with no close frame (1006)");
        open_conns--;
        maybe_stop();
        break;
    default: break;
    }
    return 0;
}

/* the client never waits more than 10 s for its runs */
static lws_sorted_usec_list_t deadline;
static void give_up(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    for (int i = 0; i < nruns; i++)
        finish(&runs[i], "no answer within 10 s");
    stop_now = true;
}

static void on_sigint(int sig)
{
    (void)sig;
    stop_now = true;
    if (ctx)
        lws_cancel_service(ctx);
}

int main(int argc, char **argv)
{
    struct lws_protocols backend_protocols[] = {
        {"agent", backend_cb, sizeof(struct session), 4096, 0, NULL, 0},
        {NULL, NULL, 0, 0, 0, NULL, 0}};
    struct lws_protocols client_protocols[] = {{"agent", client_cb, 0, 4096, 0, NULL, 0},
                                               {NULL, NULL, 0, 0, 0, NULL, 0}};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    lws_set_log_level(LLL_ERR, NULL);
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    bool backend = argc >= 3 && !strcmp(argv[1], "backend");
    bool client = argc >= 3 && !strcmp(argv[1], "client");
    if (!backend && !client) {
        fprintf(stderr, "usage: wsrr-demo-agent backend PORT [--fixed] | client URL [N]\n");
        return 2;
    }
    if (backend) {
        fixed = argc > 3 && !strcmp(argv[3], "--fixed");
        info.port = atoi(argv[2]);
        info.iface = "127.0.0.1";
        info.protocols = backend_protocols;
    } else {
        const char *prot, *addr, *p;
        char url[512];
        snprintf(url, sizeof(url), "%s", argv[2]);
        if (lws_parse_uri(url, &prot, &addr, &port, &p)) {
            fprintf(stderr, "wsrr-demo-agent: bad URL %s\n", argv[2]);
            return 2;
        }
        snprintf(host, sizeof(host), "%s", addr);
        snprintf(path, sizeof(path), "/%s", p);
        nruns = argc > 3 ? atoi(argv[3]) : 3;
        nruns = nruns < 1 ? 1 : nruns > 3 ? 3 : nruns;
        left = nruns;
        info.port = CONTEXT_PORT_NO_LISTEN;
        info.protocols = client_protocols;
    }
    ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "wsrr-demo-agent: cannot start (port in use?)\n");
        return 2;
    }
    if (backend) {
        printf("wsrr-demo-agent listening on 127.0.0.1:%d\n", info.port);
        fflush(stdout);
    } else {
        for (int i = 0; i < nruns; i++)
            lws_sul_schedule(ctx, 0, &runs[i].sul, start,
                             (lws_usec_t)runs[i].delay_ms * LWS_US_PER_MS);
        lws_sul_schedule(ctx, 0, &deadline, give_up, 10 * LWS_US_PER_SEC);
    }
    while (!stop_now && lws_service(ctx, 0) >= 0)
        ;
    lws_context_destroy(ctx);
    for (int i = 0; client && i < nruns; i++)
        printf("%s %s: %s\n", runs[i].user, runs[i].run, runs[i].result);
    return 0;
}
