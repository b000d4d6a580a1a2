/* wsrr/log.h — one logging entry point with a replaceable sink.
 *
 * Every line names the connection it is about (conn 0 = not about one).
 * Payloads are never logged by default. libevent's and OpenSSL's own
 * messages are routed here by wsrr_log_route_libs().
 */
#ifndef WSRR_LOG_H
#define WSRR_LOG_H

#include <stdarg.h>
#include <stdint.h>

enum wsrr_log_level {
    WSRR_LOG_ERROR = 0,
    WSRR_LOG_WARN = 1,
    WSRR_LOG_INFO = 2,
    WSRR_LOG_DEBUG = 3,
};

/* A sink receives one formatted line without the trailing newline. */
typedef void (*wsrr_log_sink)(enum wsrr_log_level lvl, uint64_t conn, const char *line, void *arg);

/* Replace the sink (NULL restores the default: stderr, "wsrr: " prefix). */
void wsrr_log_set_sink(wsrr_log_sink sink, void *arg);

/* Lines above this level are discarded before formatting. Default INFO. */
void wsrr_log_set_level(enum wsrr_log_level lvl);
enum wsrr_log_level wsrr_log_get_level(void);

void wsrr_log(enum wsrr_log_level lvl, uint64_t conn, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void wsrr_vlog(enum wsrr_log_level lvl, uint64_t conn, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Route libevent's internal warnings into wsrr_log. */
void wsrr_log_route_libs(void);

#endif
