/* rules_apply.h — a rules file (docs/rules.md, the proxy's engine in
 * lib/rules.c) applied to a session before it is replayed. */
#ifndef WSRR_REPLAY_RULES_APPLY_H
#define WSRR_REPLAY_RULES_APPLY_H

#include "session.h"

#include <stddef.h>

struct cJSON;
struct wsrr_rules;

/* Decide, message by message in the session's order, what rs does to the
 * client's traffic, exactly as the proxy's engine decides (the same
 * matches, seed, draws, limits and after_rule), and change s to match:
 * client messages dropped, delayed, duplicated, held back, corrupted,
 * truncated, fragmented, replaced, frames injected, a close or a reset
 * instead of a message, a ping storm. A rule firing on a server message can
 * close or reset the connection after it. Actions that shape bytes or
 * affect the server's side (bandwidth, slicer, half_close, reject...) are
 * logged as not applicable. Each firing is appended to log (a cJSON array,
 * or NULL): {"rule", "action", "conn", "seq", "dir"} and "skipped": why.
 * Returns the faults applied, or -1 (out of memory: s unusable); *changed:
 * how many of them changed what the client sends (not only when).
 *
 * Counting as the proxy does, with what a session holds: every client frame
 * that starts a message or is a control frame on its own, and every server
 * data message and close (a session keeps no server ping or pong, nor the
 * client's automatic pongs and close replies). A message in fragments is
 * counted at its first frame, seen by the rules as that frame's payload,
 * and only delayed. */
int rp_rules_apply(struct rp_session *s, struct wsrr_rules *rs, struct cJSON *log, int *changed);

#endif
