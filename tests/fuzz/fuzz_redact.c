/* fuzz_redact.c — the redactor over arbitrary text and heads.
 *
 * No crash or read outside the input on any bytes; on JSON, every string
 * value under a credential name is replaced, and redacting the output again
 * changes nothing. Heads are parsed first and redacted when
 * they parse. */
#include "wsrr/handshake.h"
#include "wsrr/redact.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct wsrr_redactor *red;

/* cJSON takes any control byte for whitespace and decodes escapes; the
 * redactor reads raw JSON (RFC 8259 whitespace only). Compare them only where
 * they read the same. */
static bool plain_json_bytes(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\\' || (p[i] < 0x20 && p[i] != '\t' && p[i] != '\r' && p[i] != '\n'))
            return false;
    return true;
}

/* Does the tree hold a member with a credential name and a non-empty string
 * value that is not a placeholder yet? Then the text must come out changed. */
static bool holds_secret(const cJSON *j)
{
    for (const cJSON *c = j ? j->child : NULL; c; c = c->next) {
        if (c->string && cJSON_IsString(c) && c->valuestring[0] &&
            strncmp(c->valuestring, "<redacted:", 10) != 0 &&
            wsrr_redact_name(c->string, strlen(c->string), 'j'))
            return true;
        if (holds_secret(c))
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!red) {
        static const uint8_t key[16] = {7};
        red = wsrr_redactor_new_with_key(key, sizeof(key));
    }
    struct evbuffer *out = evbuffer_new();
    int rc = wsrr_redact_text(red, data, size, out);
    if (rc < 0 || (rc == 0 && evbuffer_get_length(out)))
        abort();
    /* on JSON, redaction is idempotent: what it produced has nothing left to
     * hide (on arbitrary bytes a placeholder's ':' can change how later bytes
     * lex, so only JSON is held to this) */
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts((const char *)data, size, &end, false);
    bool is_json = json && end == (const char *)data + size; /* all of it */
    /* nothing under a credential name escapes */
    if (is_json && plain_json_bytes(data, size) && holds_secret(json) && rc != 1)
        abort();
    cJSON_Delete(json);
    if (rc == 1 && is_json) {
        size_t n = evbuffer_get_length(out);
        uint8_t *once = malloc(n);
        evbuffer_remove(out, once, n);
        struct evbuffer *again = evbuffer_new();
        if (wsrr_redact_text(red, once, n, again) != 0)
            abort();
        evbuffer_free(again);
        free(once);
    }
    evbuffer_drain(out, evbuffer_get_length(out));

    for (int response = 0; response < 2; response++) {
        struct wsrr_http_parser p;
        wsrr_http_parser_init(&p, response, 0, 0);
        if (wsrr_http_parse(&p, data, size) > 0 &&
            wsrr_redact_head(red, wsrr_http_parser_head(&p), out) < 0)
            abort();
        evbuffer_drain(out, evbuffer_get_length(out));
        wsrr_http_parser_finish(&p);
    }
    evbuffer_free(out);
    return 0;
}
