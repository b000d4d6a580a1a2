/* wsrr/handshake.h — HTTP/1.1 heads and the WebSocket Upgrade handshake.
 *
 * The HTTP parser is incremental with a restart point, so feeding a head one
 * byte at a time costs linear time overall; it copies the head (bounded by
 * max_head) into its own buffer and hands back how many bytes of the input
 * belonged to the head, so bytes that follow in the same read (frames sent
 * with the request or with the 101) are left to the caller, never lost.
 *
 * Validation is separate from parsing: wsrr_handshake_check_request() says
 * which HTTP status a server would answer (400, 426, ...) and why;
 * wsrr_handshake_check_response() says whether a 101 is acceptable for a
 * given request (a proxy answers 502 when it is not).
 */
#ifndef WSRR_HANDSHAKE_H
#define WSRR_HANDSHAKE_H

#include "wsrr/common.h"

#include <stdbool.h>

struct evbuffer;

#define WSRR_HTTP_DEFAULT_MAX_HEAD   (64 * 1024)
#define WSRR_HTTP_DEFAULT_MAX_FIELDS 256

/* Flags describing oddities of a head (informative; parsing went on).
 * WSRR_HTTP_F_WS_NAME is never set by this parser: RFC 7230 3.2.4 says a
 * server MUST reject whitespace between a field name and its colon, so such
 * a head fails with -EBADMSG; the flag is kept for code reporting on raw
 * heads. DUP covers Host, Sec-WebSocket-Key/-Version/-Accept and Upgrade. */
#define WSRR_HTTP_F_FOLDED  (1u << 0) /* obs-fold continuation lines, unfolded with one SP */
#define WSRR_HTTP_F_BARE_LF (1u << 1) /* lines ended by LF without CR */
#define WSRR_HTTP_F_DUP     (1u << 2) /* a single-valued WebSocket/Host field appears twice */
#define WSRR_HTTP_F_WS_NAME (1u << 3) /* whitespace between field name and colon */

struct wsrr_http_field {
    const char *name; /* points into head.buf, not NUL-terminated */
    size_t name_len;
    const char *value; /* leading/trailing whitespace trimmed; folds joined */
    size_t value_len;
};

/* A parsed request or response head. Strings point into `buf`. */
struct wsrr_http_head {
    bool response;
    /* request line */
    const char *method, *target;
    size_t method_len, target_len;
    /* status line */
    int status;
    const char *reason;
    size_t reason_len;
    int version_minor; /* HTTP/1.<minor> */

    struct wsrr_http_field *fields;
    size_t nfields;
    unsigned flags; /* WSRR_HTTP_F_* */

    /* The head exactly as received, through the blank line (raw_len bytes).
     * Unfolded values are stored after it in the same allocation. */
    const uint8_t *raw;
    size_t raw_len;
};

struct wsrr_http_parser {
    bool response; /* parse a status line instead of a request line */
    size_t max_head;
    size_t max_fields;

    /* private */
    uint8_t *buf;
    size_t len, cap;
    size_t scan; /* where the search for the blank line resumes */
    int error;
    char errmsg[160];
    struct wsrr_http_head head;
    struct wsrr_http_field *fields; /* head.fields, grown up to max_fields */
    size_t fields_cap;
    bool done; /* head complete: parse() refuses more input until reset() */
};

/* Initialise for a request (response=false) or a response. max_head and
 * max_fields of 0 take the defaults. */
void wsrr_http_parser_init(struct wsrr_http_parser *p, bool response, size_t max_head,
                           size_t max_fields);

/* Release everything the parser holds (the head it produced included). */
void wsrr_http_parser_finish(struct wsrr_http_parser *p);

/* Forget a finished head and get ready for the next one (keep-alive). */
void wsrr_http_parser_reset(struct wsrr_http_parser *p);

/* Feed bytes. Returns:
 *   > 0        the head is complete; the value is how many bytes of this
 *              input belonged to it (the rest is body/frames for the caller);
 *              the head is at wsrr_http_parser_head();
 *   WSRR_AGAIN all len bytes were taken, the head is not complete yet;
 *   < 0        a malformed or oversized head (-EBADMSG, -EMSGSIZE); the
 *              reason is wsrr_http_parser_error(), naming the line and what
 *              was expected. The parser stays failed.
 * Lines may end in CRLF or a bare LF (flagged). A head must start with its
 * start line (a leading empty line is an error). Field names are tokens and
 * must be followed directly by ':' (whitespace there is rejected, see
 * WSRR_HTTP_F_WS_NAME); values may hold HTAB, SP, VCHAR and obs-text, no
 * other control character; obs-fold lines are joined with one SP. After a
 * complete head, feeding more returns -EINVAL until wsrr_http_parser_reset().
 */
ssize_t wsrr_http_parse(struct wsrr_http_parser *p, const uint8_t *data, size_t len);

/* The completed head (valid until reset/finish), NULL before completion. */
const struct wsrr_http_head *wsrr_http_parser_head(const struct wsrr_http_parser *p);
/* The last error as one line ("" when there is none). */
const char *wsrr_http_parser_error(const struct wsrr_http_parser *p);

/* Field lookup, case-insensitive. Returns the first field named `name` and,
 * if count is not NULL, how many there are. */
const struct wsrr_http_field *wsrr_http_find(const struct wsrr_http_head *h, const char *name,
                                             size_t *count);

/* True when any field named `name` holds `token` in its comma-separated
 * list (case-insensitive, as for Connection: keep-alive, Upgrade). */
bool wsrr_http_has_token(const struct wsrr_http_head *h, const char *name, const char *token);

/* Sec-WebSocket-Extensions: `ext-list = 1#( token *( ";" param ) )`,
 * `param = token [ "=" ( token | quoted-string ) ]`, with optional
 * whitespace around the separators and empty list elements ignored. One call
 * parses one field value; a head with several such fields needs one call per
 * field. Output goes into caller arrays (no allocation) and points into the
 * value. A quoted value points inside the quotes, escapes left as they are. */
struct wsrr_ext_param {
    const char *name, *value; /* value NULL when the parameter has none */
    size_t name_len, value_len;
    bool quoted;
};

struct wsrr_ext {
    const char *name;
    size_t name_len;
    struct wsrr_ext_param *params; /* into the caller's params array */
    size_t nparams;
};

/* Parse one header value. Returns the number of extensions (0 for an empty
 * or all-commas value), or a negative errno (-EBADMSG syntax, naming the
 * offset and what was expected; -E2BIG more than max_exts extensions or
 * max_params parameters in total) with err. params may be NULL (with
 * max_params 0): parameters are then checked but not stored. Linear time. */
int wsrr_ext_parse(const char *s, size_t len, struct wsrr_ext *exts, size_t max_exts,
                   struct wsrr_ext_param *params, size_t max_params, char *err, size_t errlen);

/* What a WebSocket handshake negotiated or offered, pointing into the head. */
struct wsrr_ws_info {
    const char *key; /* Sec-WebSocket-Key (request) */
    size_t key_len;
    const char *accept; /* Sec-WebSocket-Accept (response) */
    size_t accept_len;
    int version;           /* Sec-WebSocket-Version, -1 when absent or not a number */
    const char *protocols; /* Sec-WebSocket-Protocol (all fields joined by the parser's view: first
                              field) */
    size_t protocols_len;
    size_t nprotocol_fields;
    const char *extensions; /* first Sec-WebSocket-Extensions field */
    size_t extensions_len;
    size_t nextension_fields;
    const char *host, *origin;
    size_t host_len, origin_len;
};

/* Check an Upgrade request as a server would (RFC 6455 4.2.1). Fills info
 * (also on failure, as far as it got). Returns 0 for a valid request, or the
 * HTTP status to answer: 400 (missing/bad key, not GET, not HTTP/1.1 or
 * later, missing Host/Upgrade/Connection, duplicate key, Host or version
 * field, Transfer-Encoding or a non-zero Content-Length on the upgrade),
 * 426 (version missing or other than 13; answer with
 * Sec-WebSocket-Version: 13). A valid key is 24 base64 characters ending in
 * "==" that decode to 16 bytes. Upgrade and Connection are token lists read
 * across duplicate fields, so a duplicate Upgrade is accepted when one of
 * them says websocket (the head carries WSRR_HTTP_F_DUP). err says why in
 * one line. */
int wsrr_handshake_check_request(const struct wsrr_http_head *req, struct wsrr_ws_info *info,
                                 char *err, size_t errlen);

/* Check a response against the request it answers (RFC 6455 4.1). Returns 0
 * for an acceptable 101; 1 when the status is not 101 (a rejection, which a
 * proxy passes through); -EPROTO when it is a 101 that a client must refuse
 * (wrong, missing or duplicate accept, missing Upgrade/Connection, a
 * subprotocol that was not offered or more than one, an extension that was
 * not offered or selected twice, more than 16 extensions, a malformed
 * extensions value) or when resp is not a response, with err. Extension
 * parameters are not judged here (see wsrr_pmd_from_response). */
int wsrr_handshake_check_response(const struct wsrr_http_head *req,
                                  const struct wsrr_http_head *resp, struct wsrr_ws_info *info,
                                  char *err, size_t errlen);

/* Sec-WebSocket-Accept for a key: base64(SHA-1(key ++ GUID)), 28 chars
 * plus NUL in out[29]. The key is used as given (any length); out is ""
 * only if OpenSSL cannot allocate a digest context. */
void wsrr_handshake_accept(const char *key, size_t key_len, char *out);

/* A fresh random key: base64 of 16 random bytes, 24 chars plus NUL. */
void wsrr_handshake_make_key(char *out);

/* Build an Upgrade request. `extra` is a block of complete header lines
 * ("Name: value\r\n"...) appended as is, may be NULL. protocols and
 * extensions may be NULL (not sent). target NULL means "/"; host is
 * required. Pass a key from wsrr_handshake_make_key() when the answer is to
 * be checked. Returns 0, -EINVAL (host missing, CR/LF inside a value, extra
 * not made of CRLF-terminated lines) with nothing written, or -ENOMEM. */
struct wsrr_ws_request_spec {
    const char *target; /* "/path?query" */
    const char *host;   /* "host:port" */
    const char *origin;
    const char *key; /* NULL: generate one */
    const char *protocols;
    const char *extensions;
    const char *extra;
};
int wsrr_handshake_build_request(struct evbuffer *out, const struct wsrr_ws_request_spec *s);

/* Build a 101 response answering key. protocol, extensions and extra (as
 * for requests) may be NULL. Returns 0, -EINVAL or -ENOMEM. */
int wsrr_handshake_build_response(struct evbuffer *out, const char *key, size_t key_len,
                                  const char *protocol, const char *extensions, const char *extra);

/* Build a plain error response (status line, Content-Type text/plain,
 * Content-Length, Connection: close, the body). For 426 it adds
 * Sec-WebSocket-Version: 13. body NULL sends the reason phrase and a
 * newline. Returns 0, -EINVAL (status not 100..999) or -ENOMEM. */
int wsrr_http_build_error(struct evbuffer *out, int status, const char *body);

/* ---- message bodies (RFC 9112 section 6) ---- */

enum wsrr_body_kind {
    WSRR_BODY_NONE = 0,    /* no body */
    WSRR_BODY_LENGTH,      /* Content-Length bytes */
    WSRR_BODY_CHUNKED,     /* Transfer-Encoding: chunked */
    WSRR_BODY_UNTIL_CLOSE, /* a response without length: until the connection closes */
};

/* Where a message's body ends, fed incrementally. For chunked bodies the
 * chunk framing is followed and the data pieces are handed out (pointing
 * into the input), so a recorder gets the body without the framing. */
struct wsrr_http_body {
    enum wsrr_body_kind kind;
    uint64_t remaining; /* LENGTH: bytes left; CHUNKED: of the current chunk */
    int state;          /* private: chunked decoder state */
    uint64_t size;      /* private: chunk size being read */
    int digits;         /* private */
    bool done;
};

/* The body framing of a request. Returns 0, or -EBADMSG for a head a proxy
 * must refuse (Content-Length not a number, two different lengths, both
 * Transfer-Encoding and Content-Length, a transfer coding other than
 * chunked last), with err. */
int wsrr_http_body_request(struct wsrr_http_body *b, const struct wsrr_http_head *req, char *err,
                           size_t errlen);

/* The body framing of a response to a request with method `method` (HEAD
 * responses and 1xx/204/304 have none). Returns 0 or -EBADMSG with err. */
int wsrr_http_body_response(struct wsrr_http_body *b, const struct wsrr_http_head *resp,
                            const char *method, size_t method_len, char *err, size_t errlen);

/* Feed bytes of the body. Returns how many of them belong to the body
 * (less than len when the body ends inside the input), or -EBADMSG for
 * broken chunk framing. *data is set to the body content among the
 * consumed bytes, if any (one piece per call: call again with the rest).
 * b->done turns true when the body is complete. */
ssize_t wsrr_http_body_feed(struct wsrr_http_body *b, const uint8_t *p, size_t len,
                            struct wsrr_span *data);

/* Reason phrase for a status code ("Bad Request"), "Unknown" otherwise. */
const char *wsrr_http_reason(int status);

#endif
