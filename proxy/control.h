/* control.h — the live control API of `wsrr proxy` (docs/control.md).
 *
 * A small HTTP/1.1 server (libevent's evhttp) on its own address, beside the
 * proxy on the same event loop: list and change the fault rules, list and
 * close connections, inject frames, pause and resume recording, and
 * Prometheus metrics. Every request must carry the bearer token; peers that
 * are not loopback are refused unless allow_remote. It only uses what
 * proxy.h and rules.h offer, never the proxy's internals.
 */
#ifndef WSRR_PROXY_CONTROL_H
#define WSRR_PROXY_CONTROL_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct wsrr_proxy;
struct wsrr_control;

#define WSRR_CONTROL_MAX_BODY ((size_t)1 << 20) /* larger request bodies get 413 */

struct wsrr_control_config {
    const char *listen; /* "HOST:PORT" ("[::1]:PORT"); port 0: any free port */
    const char *token;  /* NULL: 32 random hex digits */
    /* Accept peers that are not loopback, and a non-loopback listen
     * address. Without it both are refused. */
    bool allow_remote;
};

/* Bind the API on base. Returns NULL with err: one line naming the option
 * and what was wrong. Done before the proxy is created, so a refused
 * address leaves no capture file behind; requests are served only once the
 * loop runs, by then wsrr_control_attach must have been called. */
struct wsrr_control *wsrr_control_new(struct event_base *base, const struct wsrr_control_config *c,
                                      char *err, size_t errlen);

/* The proxy the API drives (it must outlive the API). */
void wsrr_control_attach(struct wsrr_control *ctl, struct wsrr_proxy *p);

/* The address actually bound ("127.0.0.1:PORT", "[::1]:PORT"). */
const char *wsrr_control_address(const struct wsrr_control *ctl);

/* The token requests must present (the given one or the generated one). */
const char *wsrr_control_token(const struct wsrr_control *ctl);

/* Write the token (and a newline) to path, readable by the owner only.
 * Returns 0, or -1 with err. */
int wsrr_control_write_token(const struct wsrr_control *ctl, const char *path, char *err,
                             size_t errlen);

/* Close the listener and every API connection. NULL is a no-op. */
void wsrr_control_free(struct wsrr_control *ctl);

#endif
