/* ca.c — the local certificate authority; see wsrr/tls.h.
 *
 * Files in the CA directory: ca.pem (the certificate, 0644) and ca.key (the
 * private key, 0600). The directory is created 0700. A key file readable by
 * group or others is refused rather than used: whoever can read it can
 * intercept every TLS connection of anyone who trusts this CA.
 */
#include "wsrr/common.h"
#include "wsrr/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CA_DAYS    365
#define LEAF_DAYS  7
#define MAX_LEAVES 4096

struct leaf {
    char *name;
    X509 *cert;
    EVP_PKEY *key;
};

struct wsrr_ca {
    char dir[4096];
    char cert_path[4200];
    char key_path[4200];
    X509 *cert;
    EVP_PKEY *key;
    struct leaf *leaves;
    size_t nleaves, cap;
};

char *wsrr_ca_default_dir(char *out, size_t cap)
{
    const char *env = getenv("WSRR_CA_DIR");
    const char *xdg = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(out, cap, "%s", env);
    else if (xdg && *xdg)
        snprintf(out, cap, "%s/wsrr/ca", xdg);
    else
        snprintf(out, cap, "%s/.local/share/wsrr/ca", home && *home ? home : ".");
    return out;
}

static const char *ssl_err(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (!e)
        return "unknown OpenSSL error";
    ERR_error_string_n(e, buf, sizeof(buf));
    return buf;
}

/* mkdir -p with the last component 0700 */
static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return wsrr_seterr(err, errlen, errno, "cannot create %s: %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return wsrr_seterr(err, errlen, errno, "cannot create %s: %s", path, strerror(errno));
    return 0;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static EVP_PKEY *new_key(void)
{
    return EVP_EC_gen("P-256");
}

/* A certificate for key, named cn, signed by (issuer, issuer_key) or by
 * itself when issuer is NULL. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *san, X509 *issuer,
                       EVP_PKEY *issuer_key, int days)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    uint8_t serial[16];
    RAND_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    ASN1_INTEGER *sn = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    bool ok = sn && X509_set_version(x, 2) && X509_set_serialNumber(x, sn) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) && X509_set_pubkey(x, key);
    ASN1_INTEGER_free(sn);
    BN_free(bn);
    X509_NAME *name = X509_get_subject_name(x);
    ok =
        ok &&
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"wsrr", -1, -1,
                                   0) &&
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    ok = ok && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509 *signer = issuer ? issuer : x;
    if (ok && !issuer) {
        ok = add_ext(x, signer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") == 0 &&
             add_ext(x, signer, NID_key_usage, "critical,keyCertSign,cRLSign") == 0 &&
             add_ext(x, signer, NID_subject_key_identifier, "hash") == 0;
    } else if (ok) {
        ok = add_ext(x, signer, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
             add_ext(x, signer, NID_key_usage, "critical,digitalSignature") == 0 &&
             add_ext(x, signer, NID_ext_key_usage, "serverAuth") == 0 &&
             add_ext(x, signer, NID_subject_alt_name, san) == 0 &&
             add_ext(x, signer, NID_authority_key_identifier, "keyid") == 0;
    }
    ok = ok && X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int write_pem(const char *path, mode_t mode, X509 *cert, EVP_PKEY *key, char *err,
                     size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return wsrr_seterr(err, errlen, errno, "cannot create %s: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return wsrr_seterr(err, errlen, errno, "cannot write %s: %s", path, strerror(errno));
    }
    bool ok =
        cert ? PEM_write_X509(f, cert) : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (fclose(f) != 0 || !ok) {
        unlink(path);
        return wsrr_seterr(err, errlen, EIO, "cannot write %s", path);
    }
    return 0;
}

static int create_ca(struct wsrr_ca *ca, char *err, size_t errlen)
{
    ca->key = new_key();
    if (!ca->key)
        return wsrr_seterr(err, errlen, EIO, "cannot make a key: %s", ssl_err());
    ca->cert = make_cert(ca->key, "wsrr local CA (recording proxy; trust it only for testing)",
                         NULL, NULL, NULL, CA_DAYS);
    if (!ca->cert)
        return wsrr_seterr(err, errlen, EIO, "cannot make the CA certificate: %s", ssl_err());
    int rc = write_pem(ca->key_path, 0600, NULL, ca->key, err, errlen);
    if (rc == 0 && (rc = write_pem(ca->cert_path, 0644, ca->cert, NULL, err, errlen)) < 0)
        unlink(ca->key_path);
    return rc;
}

static int load_ca(struct wsrr_ca *ca, char *err, size_t errlen)
{
    struct stat st;
    if (stat(ca->key_path, &st) < 0)
        return wsrr_seterr(err, errlen, errno, "%s: %s", ca->key_path, strerror(errno));
    if (st.st_mode & 077)
        return wsrr_seterr(err, errlen, EPERM,
                           "%s is readable by others (mode %03o): refusing to use a CA key "
                           "others can read; chmod 600 it or remove the CA directory",
                           ca->key_path, (unsigned)(st.st_mode & 0777));
    FILE *f = fopen(ca->key_path, "r");
    if (f) {
        ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (!ca->key)
        return wsrr_seterr(err, errlen, EINVAL, "%s: not a PEM private key", ca->key_path);
    f = fopen(ca->cert_path, "r");
    if (f) {
        ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (!ca->cert)
        return wsrr_seterr(err, errlen, EINVAL, "%s: not a PEM certificate", ca->cert_path);
    if (X509_check_private_key(ca->cert, ca->key) != 1)
        return wsrr_seterr(err, errlen, EINVAL, "%s and %s do not belong together", ca->cert_path,
                           ca->key_path);
    if (X509_cmp_current_time(X509_get0_notAfter(ca->cert)) < 0)
        return wsrr_seterr(err, errlen, EINVAL,
                           "%s has expired: remove %s to have a new CA made (clients must then "
                           "trust the new one)",
                           ca->cert_path, ca->dir);
    ERR_clear_error();
    return 0;
}

struct wsrr_ca *wsrr_ca_open(const char *dir, bool create, char *err, size_t errlen)
{
    struct wsrr_ca *ca = calloc(1, sizeof(*ca));
    if (!ca) {
        wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(ca->dir, sizeof(ca->dir), "%s", dir);
    snprintf(ca->cert_path, sizeof(ca->cert_path), "%s/ca.pem", dir);
    snprintf(ca->key_path, sizeof(ca->key_path), "%s/ca.key", dir);
    struct stat st;
    bool exists = stat(ca->key_path, &st) == 0;
    int rc;
    if (exists)
        rc = load_ca(ca, err, errlen);
    else if (!create)
        rc = wsrr_seterr(err, errlen, ENOENT, "no CA in %s (wsrr ca init creates one)", dir);
    else if ((rc = make_dirs(dir, err, errlen)) == 0)
        rc = create_ca(ca, err, errlen);
    if (rc < 0) {
        wsrr_ca_free(ca);
        return NULL;
    }
    if (stat(dir, &st) == 0 && (st.st_mode & 077))
        chmod(dir, 0700); /* tighten a directory made by hand */
    return ca;
}

void wsrr_ca_free(struct wsrr_ca *ca)
{
    if (!ca)
        return;
    for (size_t i = 0; i < ca->nleaves; i++) {
        free(ca->leaves[i].name);
        X509_free(ca->leaves[i].cert);
        EVP_PKEY_free(ca->leaves[i].key);
    }
    free(ca->leaves);
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    free(ca);
}

const char *wsrr_ca_cert_path(const struct wsrr_ca *ca)
{
    return ca->cert_path;
}

void wsrr_ca_describe(const struct wsrr_ca *ca, char *fingerprint, size_t fcap, char *not_after,
                      size_t ncap)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    X509_digest(ca->cert, EVP_sha256(), md, &n);
    size_t k = 0;
    for (unsigned i = 0; i < n && k + 4 <= fcap; i++)
        k += (size_t)snprintf(fingerprint + k, fcap - k, i ? ":%02X" : "%02X", md[i]);
    BIO *b = BIO_new(BIO_s_mem());
    ASN1_TIME_print(b, X509_get0_notAfter(ca->cert));
    int len = BIO_read(b, not_after, (int)ncap - 1);
    not_after[len > 0 ? len : 0] = '\0';
    BIO_free(b);
}

int wsrr_ca_leaf(struct wsrr_ca *ca, const char *name, X509 **cert, EVP_PKEY **key, char *err,
                 size_t errlen)
{
    for (size_t i = 0; i < ca->nleaves; i++)
        if (strcmp(ca->leaves[i].name, name) == 0) {
            *cert = ca->leaves[i].cert;
            *key = ca->leaves[i].key;
            return 0;
        }
    if (ca->nleaves >= MAX_LEAVES)
        return wsrr_seterr(err, errlen, ENOSPC, "over %d server names seen: not minting more",
                           MAX_LEAVES);
    size_t nlen = strlen(name);
    if (!nlen || nlen > 253 || strpbrk(name, ",\r\n"))
        return wsrr_seterr(err, errlen, EINVAL, "not a server name: \"%.60s\"", name);
    char san[300];
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    snprintf(san, sizeof(san), "%s:%s", is_ip ? "IP" : "DNS", name);
    EVP_PKEY *k = new_key();
    X509 *x = k ? make_cert(k, name, san, ca->cert, ca->key, LEAF_DAYS) : NULL;
    if (!x) {
        EVP_PKEY_free(k);
        return wsrr_seterr(err, errlen, EIO, "cannot mint a certificate for %s: %s", name,
                           ssl_err());
    }
    if (ca->nleaves == ca->cap) {
        size_t ncap = ca->cap ? ca->cap * 2 : 16;
        struct leaf *nl = realloc(ca->leaves, ncap * sizeof(*nl));
        if (!nl) {
            X509_free(x);
            EVP_PKEY_free(k);
            return wsrr_seterr(err, errlen, ENOMEM, "out of memory");
        }
        ca->leaves = nl;
        ca->cap = ncap;
    }
    ca->leaves[ca->nleaves++] = (struct leaf){strdup(name), x, k};
    *cert = x;
    *key = k;
    return 0;
}
