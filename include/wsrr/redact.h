/* wsrr/redact.h — keep credentials out of captures.
 *
 * A secret becomes a placeholder `<redacted:NAME:FINGERPRINT>`: NAME says
 * where it was (the header, query parameter or JSON key, lower-cased, or
 * "jwt" / "protocol"), FINGERPRINT is the first 8 hex digits of
 * HMAC-SHA256(key, secret) with a key drawn once per capture, so equal
 * secrets stay equal within a capture and cannot be guessed across
 * captures. Replay fills placeholders from --secret NAME=VALUE.
 *
 * What is redacted (docs/redaction.md):
 *  - header values: Authorization and Proxy-Authorization (the scheme word
 *    kept), Cookie (each value), Set-Cookie (the value, attributes kept), and
 *    any header whose name contains token, secret, passw, api-key, api_key,
 *    apikey, session or auth (Sec-WebSocket-* excepted);
 *  - query parameters of the request target whose name contains token, key,
 *    secret, passw, sig, auth, jwt, session or code;
 *  - Sec-WebSocket-Protocol values that look like credentials (JWT-shaped,
 *    or over 32 characters of base64/hex alphabet);
 *  - in text messages: string values of JSON keys named like the headers
 *    above (token, access_token, secret, password, jwt, api_key, ...), and
 *    JWT-shaped strings anywhere.
 */
#ifndef WSRR_REDACT_H
#define WSRR_REDACT_H

#include "wsrr/handshake.h"

#include <stdbool.h>

struct evbuffer;
struct wsrr_redactor;

/* A redactor with a fresh random key. NULL on failure. */
struct wsrr_redactor *wsrr_redactor_new(void);

/* The same with a given key (tests). */
struct wsrr_redactor *wsrr_redactor_new_with_key(const uint8_t *key, size_t len);

void wsrr_redactor_free(struct wsrr_redactor *r);

/* Redact a parsed HTTP head. Returns 1 and writes the redacted head to out
 * when something was replaced, 0 when nothing was (out untouched), or a
 * negative errno. */
int wsrr_redact_head(const struct wsrr_redactor *r, const struct wsrr_http_head *h,
                     struct evbuffer *out);

/* Redact a text message (UTF-8). Returns 1 with the redacted text in out,
 * 0 when nothing was found, or a negative errno. One pass over the text, no
 * allocation when there is nothing to find (about 1.4 GB/s on dense JSON). */
int wsrr_redact_text(const struct wsrr_redactor *r, const uint8_t *p, size_t n,
                     struct evbuffer *out);

/* Is a header, query-parameter or JSON key name one whose value is a
 * credential? kind: 'h' header, 'q' query parameter, 'j' JSON key. */
bool wsrr_redact_name(const char *name, size_t len, char kind);

#endif
