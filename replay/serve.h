/* serve.h — play the server's side of a session (session.h): a client
 * that failed against the real backend fails the same way against this,
 * with no backend at all.
 *
 * Each incoming connection is matched to a recorded one with the same
 * request path: the first not yet used, or, when the client speaks first,
 * the first whose first client message is the one that arrived. The upgrade
 * is answered as recorded (a 101 with the client's own accept key and the
 * recorded subprotocol, or the recorded rejection status); then every
 * recorded server step of that connection (a message, the close with its
 * code and reason, the end of the transport, a reset) is played once the
 * client steps before it on that connection have arrived. */
#ifndef WSRR_REPLAY_SERVE_H
#define WSRR_REPLAY_SERVE_H

#include "session.h"

#include <stdio.h>

struct event_base;

struct sv_opts {
    const char *listen; /* HOST:PORT, port 0 picks one */
    bool tls;           /* wss: certificates from the local CA, or cert/key */
    const char *tls_cert, *tls_key, *ca_dir;
    const char **ignore; /* JSON paths left out when comparing client messages */
    size_t nignore;
    bool strict;         /* close (1008) a connection whose client says something else */
    uint64_t timeout_ms; /* how long a wait for the client lasts before it is reported */
    unsigned exit_after; /* stop after this many connections ended (0: on a signal) */
    FILE *log;           /* one line per connection and per unexpected message */
};

struct sv_server;

/* Listen. Returns NULL with a one-line error. */
struct sv_server *sv_server_new(struct event_base *base, const struct rp_session *s,
                                const struct sv_opts *o, char *err, size_t errlen);
const char *sv_server_address(const struct sv_server *sv); /* "127.0.0.1:PORT" */
/* How many client messages were not what the capture holds, so far. */
unsigned sv_server_unexpected(const struct sv_server *sv);
void sv_server_free(struct sv_server *sv);

#endif
