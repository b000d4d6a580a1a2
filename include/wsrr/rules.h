/* rules.h — fault rules: a rules file parsed and checked (docs/rules.md).
 *
 * A rules file is JSON: {"seed": N, "rules": [RULE, ...]}, each rule a name,
 * a match and one action. Parsing checks everything a rule could get wrong
 * (unknown keys, wrong types, out-of-range values, a regex that does not
 * compile, a reference to a rule that does not exist) and names the rule,
 * the JSON path and what was expected. The engine that applies the rules to
 * traffic builds on this (issue 4); nothing here touches a connection.
 */
#ifndef WSRR_RULES_H
#define WSRR_RULES_H

#include "wsrr/common.h"

#include <cjson/cJSON.h>
#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What an action applies to: one message, the whole connection, or the
 * opening handshake (before any frame). */
enum wsrr_action_scope { WSRR_SCOPE_MESSAGE, WSRR_SCOPE_CONNECTION, WSRR_SCOPE_HANDSHAKE };

enum wsrr_action_kind {
    /* message */
    WSRR_ACT_DROP,
    WSRR_ACT_DELAY,
    WSRR_ACT_DUPLICATE,
    WSRR_ACT_REORDER,
    WSRR_ACT_CORRUPT,
    WSRR_ACT_TRUNCATE,
    WSRR_ACT_FRAGMENT,
    WSRR_ACT_REPLACE,
    WSRR_ACT_INJECT,
    WSRR_ACT_CLOSE,
    WSRR_ACT_PING_STORM,
    /* connection */
    WSRR_ACT_RESET,
    WSRR_ACT_HALF_CLOSE,
    WSRR_ACT_STALL,
    WSRR_ACT_BANDWIDTH,
    WSRR_ACT_LATENCY,
    WSRR_ACT_SLICER,
    WSRR_ACT_TIMEOUT,
    WSRR_ACT_KILL_AFTER,
    /* handshake */
    WSRR_ACT_REJECT,
    WSRR_ACT_DELAY_UPGRADE,
    WSRR_ACT_HEADERS,
    WSRR_ACT_REFUSE_CONNECT,
    WSRR_ACT_DELAY_CONNECT,
    WSRR_ACT_COUNT
};

/* Whom an action is aimed at (close, reset, half_close, inject). */
enum wsrr_target { WSRR_TO_DEFAULT, WSRR_TO_CLIENT, WSRR_TO_SERVER, WSRR_TO_BOTH };

struct wsrr_action {
    enum wsrr_action_kind kind;
    uint64_t ms;        /* delay, stall (0: forever), latency, timeout, delay_*, storm interval */
    uint64_t jitter_ms; /* delay, latency */
    uint64_t count;     /* duplicate, reorder, corrupt, truncate, fragment, ping_storm, slicer,
                           kill_after (bytes), bandwidth (bytes per second) */
    int code;           /* close: the close code; reject: the HTTP status */
    char *text;         /* close reason, reject body, replace/inject payload (bytes, text_len) */
    size_t text_len;
    bool binary; /* replace/inject: the payload came as base64 */
    bool flag;   /* corrupt: keep the frame valid; inject: after (not before) */
    int opcode;  /* inject: 0-15 */
    enum wsrr_target to;
    cJSON *json; /* replace: {"set": {...}, "remove": [...]}; headers: the edits;
                    reject: extra response headers */
};

/* A message or connection property a rule requires; absent ones match all. */
struct wsrr_match {
    int direction;    /* -1 either, else WSRR_DIR_C2S (sent by the client) / WSRR_DIR_S2C */
    uint32_t opcodes; /* bit per opcode 0-15 that matches; 0 = any */
    uint64_t *conns;  /* connection ordinals (1-based), nconns of them; none = any */
    size_t nconns;
    uint64_t nth;   /* the message's ordinal in its direction on its connection; 0 = any */
    uint64_t skip;  /* let this many matching messages of a connection pass first */
    char *path;     /* glob (fnmatch) over the request path */
    char *client;   /* glob over the client address "IP:port" */
    cJSON *headers; /* {"Name": "glob", ...} over the request head */
    char *contains; /* payload substring */
    size_t contains_len;
    size_t contains_rare; /* index of its rarest byte in typical payloads (the search key) */
    char *regex_src;
    regex_t regex;      /* valid when regex_src */
    cJSON *json;        /* {"dotted.path": value | {"exists": bool}, ...} */
    uint64_t after_ms;  /* time since the connection opened */
    int after_rule;     /* index of a rule that must have fired on the connection; -1 none */
    double probability; /* 1 = always */
};

struct wsrr_rule {
    char *name;
    bool enabled;
    uint64_t fired; /* times it fired in all (kept by wsrr_rules_on_*) */
    uint64_t limit; /* at most this many times in all; 0 = no limit */
    uint64_t limit_per_conn;
    struct wsrr_match match;
    struct wsrr_action action;
    cJSON *src; /* the rule as it was written (for listings) */
};

struct wsrr_rules {
    uint64_t seed;
    bool seed_given; /* otherwise a random one, to be recorded so a run can be repeated */
    struct wsrr_rule *rules;
    size_t count;
};

/* Parse and check a rules document. On error returns NULL with a one-line
 * message in err: the rule (by name, or by index before its name is known),
 * the JSON path and what was expected. */
struct wsrr_rules *wsrr_rules_parse(const char *json, size_t len, char *err, size_t errlen);

/* The same, from a file (the message starts with the file name). */
struct wsrr_rules *wsrr_rules_load(const char *path, char *err, size_t errlen);

void wsrr_rules_free(struct wsrr_rules *r);

/* The rules as a document wsrr_rules_parse() accepts, with the seed in force
 * (as a string); rs NULL gives {"rules": []}. malloc'd (cJSON's allocator),
 * NULL when out of memory. */
char *wsrr_rules_to_json(const struct wsrr_rules *rs);

/* Index of the byte of s[0..n) least likely in a typical payload (used to
 * search for s; see lib/rules.c). */
size_t wsrr_rare_byte(const char *s, size_t n);

/* Is needle (n bytes, rarest byte at index rare) in hay? */
bool wsrr_contains(const uint8_t *hay, size_t len, const char *needle, size_t n, size_t rare);

/* A payload as it lies in a buffer: pieces in order, each masked or not. A
 * message held in the chains of an evbuffer, one frame or many, is searched
 * where it lies: no copy, no unmasking pass. */
struct wsrr_piece {
    const uint8_t *p;
    size_t len;
    bool masked;
    uint8_t mask[4];
    uint8_t phase; /* payload offset of p[0] within its frame, mod 4 */
};

/* For tests: search masked pieces with the portable code even where the
 * CPU has AVX2 (call before any thread matches rules). */
void wsrr_rules_portable_scan(void);

/* The longest needle wsrr_contains_pieces() takes. */
#define WSRR_PIECES_NEEDLE_MAX 256

/* wsrr_contains() over the payload the pieces make up, unmasked; n at most
 * WSRR_PIECES_NEEDLE_MAX. */
bool wsrr_contains_pieces(const struct wsrr_piece *pc, size_t npc, const char *needle, size_t n,
                          size_t rare);

/* The node at a dotted path of j ("data.items.0.type": digits index
 * arrays), or NULL. */
struct cJSON;
const struct cJSON *wsrr_json_at(const struct cJSON *j, const char *path);

/* Index of the rule with that name, or -1. */
int wsrr_rules_find(const struct wsrr_rules *r, const char *name);

const char *wsrr_action_name(enum wsrr_action_kind k);
enum wsrr_action_scope wsrr_action_scope(enum wsrr_action_kind k);

/* ---- deciding ---- */

struct wsrr_http_head;

/* Do the enabled rules need a message's payload in one piece (regex, JSON,
 * a long `contains`)? When not, wsrr_msg_info may give it as pieces. */
bool wsrr_rules_flat_payload(const struct wsrr_rules *rs);

/* A connection as the rules see it when it opens. */
struct wsrr_conn_info {
    uint64_t ordinal;                     /* 1 = the first connection accepted */
    const char *path;                     /* the request target */
    const char *client;                   /* "IP:port" */
    const struct wsrr_http_head *request; /* the upgrade request (only read here) */
};

/* A message as the rules see it. */
struct wsrr_msg_info {
    int dir;                /* WSRR_DIR_C2S: sent by the client */
    uint8_t opcode;         /* of its first frame */
    uint64_t nth;           /* 1-based, per direction on the connection */
    const uint8_t *payload; /* what the application sees (inflated) */
    size_t len;
    /* with payload NULL: the payload as pieces, for rules whose only
     * payload conditions are `contains` of at most WSRR_PIECES_NEEDLE_MAX
     * bytes (wsrr_rules_flat_payload() false); len is still the total */
    const struct wsrr_piece *pieces;
    size_t npieces;
    /* with pieces: the message's first part was already looked at as it
     * came (wsrr_rules_scan_part()); pieces hold only the rest */
    const struct wsrr_scan *scan;
    uint64_t since_open_ms;
};

/* `contains` conditions over a message that comes in parts: each part is
 * searched as it arrives, while it is in the cache, instead of the whole
 * message once it is complete. Which rules' needles were found so far, and
 * the end of what was seen (a needle may start there). */
struct wsrr_scan {
    uint64_t *found; /* bit per rule */
    size_t words;
    uint8_t tail[WSRR_PIECES_NEEDLE_MAX - 1];
    size_t ntail;
};

/* Per connection: which rules its open-time conditions let through, and
 * per rule the matches seen and the times fired. */
struct wsrr_rules_conn;

struct wsrr_rules_conn *wsrr_rules_conn_new(const struct wsrr_rules *rs,
                                            const struct wsrr_conn_info *ci);
void wsrr_rules_conn_free(struct wsrr_rules_conn *rc);

/* Search the next part of a message of direction dir whose first frame has
 * opcode for every `contains` that could apply to it (enabled, its
 * connection conditions hold, its direction and opcode match). 0, or -1
 * when out of memory (the caller then searches the whole message at its
 * end: reset the scan). */
int wsrr_rules_scan_part(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc,
                         struct wsrr_scan *st, int dir, uint8_t opcode, const struct wsrr_piece *pc,
                         size_t npc);
/* Would wsrr_rules_scan_part() search anything for such a message? */
bool wsrr_rules_scan_wanted(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc, int dir,
                            uint8_t opcode);
void wsrr_scan_reset(struct wsrr_scan *st);
void wsrr_scan_free(struct wsrr_scan *st);

/* Could any enabled message or connection rule fire on this connection (its
 * open-time conditions hold)? When not, its messages need no looking at. */
bool wsrr_rules_conn_any(const struct wsrr_rules *rs, const struct wsrr_rules_conn *rc);

/* The first rule, in file order, with a handshake action that fires for
 * this connection; -1 for none. Counts the firing. */
int wsrr_rules_on_handshake(struct wsrr_rules *rs, struct wsrr_rules_conn *rc);

/* The first rule, in file order, with a message or connection action that
 * fires for this message; -1 for none. Rules after it do not see the
 * message. Counts matches (for skip) and firings (for the limits and
 * after_rule). */
int wsrr_rules_on_message(struct wsrr_rules *rs, struct wsrr_rules_conn *rc,
                          const struct wsrr_msg_info *m);

/* A number in [0, 1) that depends only on the seed, the rule's name, the
 * connection's ordinal, the direction and the message's ordinal: the same
 * traffic with the same seed draws the same numbers, whatever else flows. */
double wsrr_rules_draw(uint64_t seed, const char *rule, uint64_t conn, int dir, uint64_t nth);

/* ---- actions shared by the proxy and replay ---- */

/* ms +- jitter_ms (not below 0), the jitter drawn as wsrr_rules_draw()
 * draws (delay, latency). */
uint64_t wsrr_rules_jitter(uint64_t ms, uint64_t jitter_ms, uint64_t seed, const char *rule,
                           uint64_t conn, int dir, uint64_t nth);

/* Every rule's count of firings back to 0 (a new run of the same rules). */
void wsrr_rules_reset_counts(struct wsrr_rules *rs);

/* replace with {"set": {PATH: value}, "remove": [PATH]}: p[0..n) as JSON with
 * the edits made (dotted paths, digits index arrays; set creates missing
 * objects on the way), printed compactly; malloc'd (cJSON's allocator), NULL
 * when p is not JSON. */
char *wsrr_json_edit(const uint8_t *p, size_t n, const struct cJSON *edit);

/* corrupt: change `count` bytes of p[0..n): with keep_valid, ASCII letters of
 * a text message become other letters (the UTF-8 stays valid), any byte of a
 * binary one changes; the positions come from wsrr_rules_draw() (seed, rule,
 * conn, dir, nth) and are appended to positions (a cJSON array, or NULL). */
void wsrr_corrupt(uint8_t *p, size_t n, uint64_t count, bool text, bool keep_valid, uint64_t seed,
                  const char *rule, uint64_t conn, int dir, uint64_t nth, struct cJSON *positions);

#endif
