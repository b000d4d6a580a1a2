/* log.c — the single logging path; see wsrr/log.h. */
#include "wsrr/log.h"

#include <event2/event.h>
#include <stdio.h>

static wsrr_log_sink log_sink;
static void *log_sink_arg;
static enum wsrr_log_level log_level = WSRR_LOG_INFO;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

void wsrr_log_set_sink(wsrr_log_sink sink, void *arg)
{
    log_sink = sink;
    log_sink_arg = arg;
}

void wsrr_log_set_level(enum wsrr_log_level lvl)
{
    log_level = lvl;
}

enum wsrr_log_level wsrr_log_get_level(void)
{
    return log_level;
}

void wsrr_vlog(enum wsrr_log_level lvl, uint64_t conn, const char *fmt, va_list ap)
{
    char line[1024];

    if (lvl > log_level)
        return;
    vsnprintf(line, sizeof(line), fmt, ap);
    if (log_sink) {
        log_sink(lvl, conn, line, log_sink_arg);
        return;
    }
    if (conn)
        fprintf(stderr, "wsrr: %s: conn %llu: %s\n", level_names[lvl], (unsigned long long)conn,
                line);
    else
        fprintf(stderr, "wsrr: %s: %s\n", level_names[lvl], line);
}

void wsrr_log(enum wsrr_log_level lvl, uint64_t conn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    wsrr_vlog(lvl, conn, fmt, ap);
    va_end(ap);
}

static void libevent_log(int severity, const char *msg)
{
    enum wsrr_log_level lvl = severity >= EVENT_LOG_ERR    ? WSRR_LOG_ERROR
                              : severity == EVENT_LOG_WARN ? WSRR_LOG_WARN
                                                           : WSRR_LOG_DEBUG;
    wsrr_log(lvl, 0, "libevent: %s", msg);
}

void wsrr_log_route_libs(void)
{
    event_set_log_callback(libevent_log);
}
