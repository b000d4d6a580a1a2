/* tls.c — OpenSSL contexts for both legs of the proxy; see wsrr/tls.h. */
#include "wsrr/common.h"
#include "wsrr/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

static const unsigned char alpn_http11[] = "\x08http/1.1";

struct server_ctx_data {
    struct wsrr_ca *ca;
};

static int ctx_data_index = -1;
static FILE *keylog_file;

static void set_err(char *err, size_t errlen, const char *what)
{
    char buf[256] = "unknown OpenSSL error";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    wsrr_seterr(err, errlen, EIO, "%s: %s", what, buf);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no http/1.1 offered: go on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Present the leaf minted for the name the client asked for. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    struct server_ctx_data *d = SSL_CTX_get_ex_data(ctx, ctx_data_index);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!d || !d->ca || !name)
        return SSL_TLSEXT_ERR_OK; /* the context's default certificate */
    X509 *cert;
    EVP_PKEY *key;
    char err[200];
    if (wsrr_ca_leaf(d->ca, name, &cert, &key, err, sizeof(err)) < 0 ||
        SSL_use_certificate(ssl, cert) != 1 || SSL_use_PrivateKey(ssl, key) != 1) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

static void free_ctx_data(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    OPENSSL_free(ptr);
}

/* A certificate chain and its key from PEM files (the key may sit in the
 * certificate's file). */
static int use_cert(SSL_CTX *ctx, const char *cert_file, const char *key_file, char *err,
                    size_t errlen)
{
    const char *key = key_file ? key_file : cert_file;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        set_err(err, errlen, cert_file);
        return -EINVAL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        set_err(err, errlen, key);
        return -EINVAL;
    }
    return 0;
}

static SSL_CTX *base_ctx(const SSL_METHOD *m)
{
    SSL_CTX *ctx = SSL_CTX_new(m);
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}

SSL_CTX *wsrr_tls_server_ctx(const char *cert_file, const char *key_file, struct wsrr_ca *ca,
                             const char *default_name, char *err, size_t errlen)
{
    SSL_CTX *ctx = base_ctx(TLS_server_method());
    if (!ctx) {
        set_err(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (cert_file) {
        if (use_cert(ctx, cert_file, key_file, err, errlen) < 0)
            goto fail;
        return ctx;
    }
    if (!ca) {
        wsrr_seterr(err, errlen, EINVAL, "a certificate or a CA is needed to accept TLS");
        goto fail;
    }
    if (ctx_data_index < 0)
        ctx_data_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_ctx_data);
    struct server_ctx_data *d = OPENSSL_zalloc(sizeof(*d));
    if (!d || !SSL_CTX_set_ex_data(ctx, ctx_data_index, d)) {
        OPENSSL_free(d);
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    d->ca = ca;
    X509 *cert;
    EVP_PKEY *key;
    if (wsrr_ca_leaf(ca, default_name ? default_name : "localhost", &cert, &key, err, errlen) < 0)
        goto fail;
    if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
        set_err(err, errlen, "cannot use the minted certificate");
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *wsrr_tls_client_ctx(const char *ca_file, bool insecure, const char *cert_file,
                             const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = base_ctx(TLS_client_method());
    if (!ctx) {
        set_err(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1);
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            set_err(err, errlen, ca_file ? ca_file : "the system certificate store");
            goto fail;
        }
    }
    if (cert_file && use_cert(ctx, cert_file, key_file, err, errlen) < 0)
        goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static void keylog_cb(const SSL *ssl, const char *line)
{
    if (keylog_file) {
        fprintf(keylog_file, "%s\n", line);
        fflush(keylog_file);
    }
}

void wsrr_tls_set_keylog(SSL_CTX *ctx, FILE *f)
{
    keylog_file = f;
    SSL_CTX_set_keylog_callback(ctx, f ? keylog_cb : NULL);
}

int wsrr_tls_client_prepare(SSL *ssl, const char *host)
{
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (is_ip)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 ? 0 : -EINVAL;
    /* SSL_set_tlsext_host_name() is a macro that casts away const. */
    char sni[256];
    size_t len = strlen(host);
    if (len == 0 || len >= sizeof(sni))
        return -EINVAL;
    memcpy(sni, host, len + 1);
    if (SSL_set_tlsext_host_name(ssl, sni) != 1 || SSL_set1_host(ssl, host) != 1)
        return -EINVAL;
    return 0;
}

void wsrr_tls_describe(SSL *ssl, char *out, size_t cap)
{
    const unsigned char *alpn = NULL;
    unsigned int alen = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alen);
    int n = snprintf(out, cap, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
    if (alen && n > 0 && (size_t)n < cap)
        snprintf(out + n, cap - (size_t)n, " alpn=%.*s", (int)alen, alpn);
}

const char *wsrr_tls_sni(SSL *ssl)
{
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
}

void wsrr_tls_error(SSL *ssl, unsigned long err, char *out, size_t cap)
{
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK) {
        snprintf(out, cap, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return;
    }
    if (!err)
        err = ERR_get_error();
    if (err) {
        char buf[256];
        ERR_error_string_n(err, buf, sizeof(buf));
        /* "error:0A000086:SSL routines::certificate verify failed": the reason
         * after the last colon reads best */
        const char *r = strrchr(buf, ':');
        snprintf(out, cap, "%s", r && r[1] ? r + 1 : buf);
    } else {
        snprintf(out, cap, "the TLS handshake failed");
    }
    ERR_clear_error();
}
