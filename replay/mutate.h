/* mutate.h — fuzz's mutations of a session (session.h), chosen by a seeded
 * generator so that a seed gives the same mutations again.
 *
 * Three families:
 *   json      the client's JSON messages: a field dropped or added, a
 *             value's type changed, boundary numbers, empty, huge, unicode
 *             or NUL-bearing strings, deep nesting, a duplicate key, values
 *             swapped between two messages of the same type;
 *   frame     how a client message goes on the wire: fragmented, a ping
 *             between its fragments, invalid UTF-8, RSV bits (RSV1: the
 *             compression flag without the extension), a non-minimal
 *             length, no mask, a reserved opcode, an oversize message;
 *   schedule  the session run K times at once (the same user, or each copy
 *             its own), a client message sent without waiting for the reply
 *             it waited for, two client steps swapped, a pause, an early
 *             close or hang-up, a storm of connections that open and leave.
 *
 * Every mutation applied is described in a JSON object appended to a log
 * ({"op":"json.drop","conn":3,"seq":17,"path":"data.id"}), so that a saved
 * failure says what was done to the traffic. */
#ifndef WSRR_REPLAY_MUTATE_H
#define WSRR_REPLAY_MUTATE_H

#include "session.h"

#include <stdint.h>

struct cJSON;

enum fz_family { FZ_JSON = 1, FZ_FRAME = 2, FZ_SCHEDULE = 4, FZ_ALL = 7 };

/* The generator: splitmix64. Not OpenSSL's: a fuzz run must be repeatable
 * from its seed, and nothing here is a secret. */
struct fz_rng {
    uint64_t s;
};

uint64_t fz_next(struct fz_rng *g);
uint32_t fz_below(struct fz_rng *g, uint32_t n); /* 0 .. n-1; 0 when n is 0 */

/* "json,frame" -> FZ_JSON|FZ_FRAME; 0 for an unknown name. */
unsigned fz_families_parse(const char *list);

/* Apply up to max (at least one when any applies) mutations from the given
 * families to s in place, appending one description each to log (a cJSON
 * array). Returns the families of the mutations applied (0: none applied:
 * the session has nothing they can change), or -1 when out of memory (s is
 * then unusable). */
int fz_mutate(struct rp_session *s, struct fz_rng *g, unsigned families, unsigned max,
              struct cJSON *log);

/* --jobs: the runs of worker k (k > 0) send the values that name a user or
 * an id (the keys sched.concurrent changes) with "-wK" appended, so that
 * runs in flight at once against one server do not share what the server
 * keeps per user, run or conversation (a failure one run caused in another
 * would not come back alone). 0, or -1 when out of memory. */
int fz_isolate(struct rp_session *s, unsigned worker);

/* The "type" of a message for signatures and behaviour: the string value of
 * its top-level "type" (or "event", "kind", "op", "action", "method") when it
 * is a JSON object; "{json}" or "[json]" for other JSON; "text" or "binary"
 * otherwise. */
void fz_message_type(uint8_t opcode, const uint8_t *p, size_t n, char *out, size_t cap);

#endif
