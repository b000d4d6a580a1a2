/* fuzz_rules.c — the rules file parser over arbitrary bytes.
 *
 * No crash, leak or read outside the input; a document that parses holds
 * only what the parser promises (unique names, resolved after_rule
 * references, known actions, in-range values), and one that does not
 * parse says why. */
#include "wsrr/rules.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "";
    struct wsrr_rules *rs = wsrr_rules_parse((const char *)data, size, err, sizeof(err));
    if (!rs) {
        if (!err[0])
            abort(); /* a refusal always has a message */
        return 0;
    }
    for (size_t i = 0; i < rs->count; i++) {
        const struct wsrr_rule *r = &rs->rules[i];
        if (!r->name || wsrr_rules_find(rs, r->name) != (int)i)
            abort();
        if (r->action.kind >= WSRR_ACT_COUNT || r->action.opcode < 0 || r->action.opcode > 15)
            abort();
        if (r->match.after_rule >= (int)rs->count || r->match.after_rule == (int)i)
            abort();
        if (!(r->match.probability >= 0 && r->match.probability <= 1))
            abort();
        if (r->action.kind == WSRR_ACT_CLOSE && r->action.text_len > 123)
            abort();
    }
    /* and decide over the input itself as a message, both ways, a few
     * ordinals: the regex, JSON and glob paths see arbitrary payloads */
    struct wsrr_conn_info ci = {1, "/fuzz", "127.0.0.1:1", NULL};
    struct wsrr_rules_conn *rc = wsrr_rules_conn_new(rs, &ci);
    for (uint64_t n = 1; rc && n <= 3; n++)
        for (int dir = 0; dir < 2; dir++) {
            struct wsrr_msg_info m = {dir, (uint8_t)(n == 3 ? 9 : 1), n, data, size, 1000 * n};
            int k = wsrr_rules_on_message(rs, rc, &m);
            if (k >= (int)rs->count ||
                (k >= 0 && wsrr_action_scope(rs->rules[k].action.kind) == WSRR_SCOPE_HANDSHAKE))
                abort();
        }
    if (rc && wsrr_rules_on_handshake(rs, rc) >= (int)rs->count)
        abort();
    wsrr_rules_conn_free(rc);
    wsrr_rules_free(rs);
    return 0;
}
