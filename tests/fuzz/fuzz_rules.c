/* fuzz_rules.c — the rules file parser over arbitrary bytes.
 *
 * No crash, leak or read outside the input; a document that parses holds
 * only what the parser promises (unique names, resolved after_rule
 * references, known actions, in-range values), and one that does not
 * parse says why. The bytes are also a needle and a payload in pieces for
 * the search the rules use. */
#include "wsrr/rules.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The search over a payload lying in pieces, some masked, says what the
 * flat search says: byte 0 gives the needle's length, the needle follows,
 * the rest is the payload, cut where its own bytes say. */
static void pieces_check(const uint8_t *data, size_t size)
{
    static uint8_t raw[1 << 16];
    static const uint8_t mask[4] = {0x5a, 0x0f, 0xf0, 0xa5};
    if (size < 2)
        return;
    size_t n = 1 + (size_t)data[0] % 8;
    n = n < size - 1 ? n : size - 1;
    const char *needle = (const char *)data + 1;
    const uint8_t *hay = data + 1 + n;
    size_t len = size - 1 - n < sizeof(raw) ? size - 1 - n : sizeof(raw), at = 0, npc = 0;
    struct wsrr_piece pc[32];
    while (at < len && npc < 32) {
        size_t k = npc == 31 ? len - at : 1 + (size_t)hay[at] % 64;
        struct wsrr_piece *c = &pc[npc++];
        k = k < len - at ? k : len - at;
        *c = (struct wsrr_piece){.p = raw + at, .len = k, .masked = npc & 1, .phase = at & 3};
        memcpy(c->mask, mask, 4);
        for (size_t i = 0; i < k; i++)
            raw[at + i] = hay[at + i] ^ (c->masked ? mask[(c->phase + i) & 3] : 0);
        at += k;
    }
    size_t rare = wsrr_rare_byte(needle, n);
    if (wsrr_contains_pieces(pc, npc, needle, n, rare) != wsrr_contains(hay, len, needle, n, rare))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pieces_check(data, size);
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
            struct wsrr_msg_info m = {.dir = dir,
                                      .opcode = (uint8_t)(n == 3 ? 9 : 1),
                                      .nth = n,
                                      .payload = data,
                                      .len = size,
                                      .since_open_ms = 1000 * n};
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
