/* wsrr/tls.h — OpenSSL contexts and the local certificate authority.
 *
 * The local CA lets the proxy terminate TLS for any name a client asks for:
 * an ECDSA P-256 key and a self-signed certificate (valid one year) kept in
 * a directory of mode 0700 with the key at 0600 (a key readable by others
 * is refused), created on first use. Leaf certificates (ECDSA P-256, their
 * own key, valid 7 days) are minted per server name on demand and kept in
 * memory.
 *
 * Contexts are TLS 1.2 or newer with ALPN http/1.1. Upstream certificates
 * and host names are verified by default; skipping that is an explicit
 * option that the proxy logs and writes into the capture.
 */
#ifndef WSRR_TLS_H
#define WSRR_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

struct wsrr_ca;

/* Where the CA lives unless told: $WSRR_CA_DIR, else $XDG_DATA_HOME/wsrr/ca,
 * else ~/.local/share/wsrr/ca. Writes into out; returns out. */
char *wsrr_ca_default_dir(char *out, size_t cap);

/* Open the CA in dir, creating the directory and the CA when create is true
 * and they do not exist. Returns NULL with err (one line: the path and what
 * is wrong, e.g. a key readable by others, an expired certificate). */
struct wsrr_ca *wsrr_ca_open(const char *dir, bool create, char *err, size_t errlen);

void wsrr_ca_free(struct wsrr_ca *ca);

/* Paths of the CA certificate (what clients must trust) and key. */
const char *wsrr_ca_cert_path(const struct wsrr_ca *ca);

/* SHA-256 fingerprint "AB:CD:..." and the end of validity (text). */
void wsrr_ca_describe(const struct wsrr_ca *ca, char *fingerprint, size_t fcap, char *not_after,
                      size_t ncap);

/* The leaf certificate and key for a server name (DNS name or IP literal),
 * minted on first use and cached. The references stay owned by the CA.
 * Returns 0 or a negative errno with err. */
int wsrr_ca_leaf(struct wsrr_ca *ca, const char *name, X509 **cert, EVP_PKEY **key, char *err,
                 size_t errlen);

/* A server context. With cert_file/key_file, that certificate for every
 * name; otherwise leaves minted by ca for the SNI name (default_name when
 * the client sends none). ALPN: http/1.1 when offered. Returns NULL with
 * err. */
SSL_CTX *wsrr_tls_server_ctx(const char *cert_file, const char *key_file, struct wsrr_ca *ca,
                             const char *default_name, char *err, size_t errlen);

/* A client context: peers verified against ca_file, or the system store
 * when ca_file is NULL, unless insecure; cert_file/key_file present a client
 * certificate (mutual TLS). ALPN http/1.1. Returns NULL with err. */
SSL_CTX *wsrr_tls_client_ctx(const char *ca_file, bool insecure, const char *cert_file,
                             const char *key_file, char *err, size_t errlen);

/* Write TLS secrets of every connection of ctx to f in the NSS key log
 * format (what Wireshark reads). f stays owned by the caller; lines are
 * flushed as they are written. */
void wsrr_tls_set_keylog(SSL_CTX *ctx, FILE *f);

/* Prepare an SSL for connecting to host: SNI (for names) and host name or
 * IP verification. Returns 0 or -EINVAL. */
int wsrr_tls_client_prepare(SSL *ssl, const char *host);

/* "TLSv1.3 TLS_AES_128_GCM_SHA256 alpn=http/1.1" for an established SSL. */
void wsrr_tls_describe(SSL *ssl, char *out, size_t cap);

/* The SNI name a client sent, or NULL. */
const char *wsrr_tls_sni(SSL *ssl);

/* Why a handshake failed, in one line: the verification result when it was
 * the peer's certificate, else the OpenSSL error queue (which is cleared). */
void wsrr_tls_error(SSL *ssl, unsigned long err, char *out, size_t cap);

#endif
