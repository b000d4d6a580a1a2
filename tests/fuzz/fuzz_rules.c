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
    wsrr_rules_free(rs);
    return 0;
}
