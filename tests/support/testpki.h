/*
 * Test-side PKI and OCSP response builder, on the OpenSSL 3 API. Every key is EC P-256, so a whole PKI takes a few
 * milliseconds to build.
 *
 * Conventions: every function that can fail returns 0 on success or -1 on failure (OpenSSL's error queue then says
 * why); out-parameters are only written on success. Everything a function returns through an out-parameter belongs to
 * the caller: an oa_testpki_ident_t is freed with oa_testpki_ident_free, a oa_testpki_t with oa_testpki_free, DER
 * buffers with free(). Arguments are borrowed: the functions take their own references where they keep anything.
 */
#ifndef OA_TESTPKI_H
#define OA_TESTPKI_H

#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* A key and the certificate for it; both owned by whoever holds the struct. */
typedef struct oa_testpki_ident_s {
    EVP_PKEY *key;
    X509 *cert;
} oa_testpki_ident_t;

/* Frees id's key and certificate (NULL-safe) and zeroes it. */
void oa_testpki_ident_free(oa_testpki_ident_t *id);

/*
 * A self-signed CA named CN=<cn>: basicConstraints CA:TRUE (critical), keyUsage keyCertSign|cRLSign, subject key
 * identifier. Valid from an hour ago for ten years. Returns 0 with *out filled, or -1.
 */
int oa_testpki_ca_new(const char *cn, oa_testpki_ident_t *out);

/* An intermediate CA named CN=<cn>, issued by parent, with the same extensions as a root. Returns 0 or -1. */
int oa_testpki_subca_new(const oa_testpki_ident_t *parent, const char *cn, oa_testpki_ident_t *out);

/*
 * A leaf (server) certificate named CN=<cn> with the given serial, issued by ca: basicConstraints CA:FALSE,
 * keyUsage digitalSignature, EKU serverAuth, and an Authority Information Access extension with the OCSP URI
 * ocsp_uri (no AIA at all when ocsp_uri is NULL). Returns 0 or -1.
 */
int oa_testpki_leaf_new(const oa_testpki_ident_t *ca, const char *cn, long serial, const char *ocsp_uri,
                        oa_testpki_ident_t *out);

/*
 * A delegated OCSP responder certificate named CN=<cn>, issued by ca: keyUsage digitalSignature, the OCSP-signing
 * EKU (id-kp-OCSPSigning) when with_ocsp_eku (else the serverAuth EKU only) and id-pkix-ocsp-nocheck. Returns 0 or -1.
 */
int oa_testpki_responder_new(const oa_testpki_ident_t *ca, const char *cn, bool with_ocsp_eku,
                             oa_testpki_ident_t *out);

/*
 * A complete PKI for OCSP tests, all owned by the struct:
 *   ca               "Test CA"
 *   leaf             "proxy.test", serial leaf_serial, issued by ca, AIA OCSP URI ocsp_uri (none when NULL)
 *   responder        "Test OCSP Responder", issued by ca, with the OCSP-signing EKU
 *   responder_noeku  "Test Responder Without EKU", issued by ca, without the OCSP-signing EKU
 *   other_ca         "Other CA", an unrelated self-signed CA
 *   other_responder  "Other OCSP Responder", issued by other_ca, with the OCSP-signing EKU
 */
typedef struct oa_testpki_s {
    oa_testpki_ident_t ca;
    oa_testpki_ident_t leaf;
    oa_testpki_ident_t responder;
    oa_testpki_ident_t responder_noeku;
    oa_testpki_ident_t other_ca;
    oa_testpki_ident_t other_responder;
} oa_testpki_t;

/* Builds p (fully overwritten). Returns 0, or -1 with nothing left allocated. */
int oa_testpki_init(oa_testpki_t *p, long leaf_serial, const char *ocsp_uri);
/* Frees everything p holds (NULL-safe members) and zeroes it. */
void oa_testpki_free(oa_testpki_t *p);

/* Files. */

/* Creates a fresh private directory "/tmp/oa-test-XXXXXX" and writes its path into dir (at least
 * OA_TESTPKI_DIR_MAX bytes). Returns 0 or -1. */
#define OA_TESTPKI_DIR_MAX 64
int oa_testpki_tmpdir(char *dir);
/* Removes every plain file in dir, then dir itself (not recursive). Returns 0 or -1. */
int oa_testpki_rmdir(const char *dir);

/* Writes the certificates (a NULL-terminated list, first..., NULL) as PEM, in that order, to path (replaced).
 * Returns 0 or -1. */
int oa_testpki_write_certs(const char *path, X509 *first, ...) __attribute__((sentinel));
/* Writes key as an unencrypted PKCS#8 PEM private key to path (replaced, mode 0600). Returns 0 or -1. */
int oa_testpki_write_key(const char *path, EVP_PKEY *key);
/* Writes len bytes of data to path (replaced). Returns 0 or -1. */
int oa_testpki_write_file(const char *path, const void *data, size_t len);
/* Joins dir and name into buf (size bytes). Returns buf, so calls can be nested in arguments; aborts on overflow. */
char *oa_testpki_path(char *buf, size_t size, const char *dir, const char *name);

/*
 * Writes p into dir as PEM files, for tests of target loading and for integration:
 *   ca.pem, ca.key, leaf.pem (the leaf alone), leaf.key, leaf-chain.pem (leaf then ca), responder.pem,
 *   responder.key, responder-noeku.pem, responder-noeku.key, other-ca.pem, other-ca.key, other-responder.pem,
 *   other-responder.key.
 * Returns 0 or -1.
 */
int oa_testpki_write_dir(const oa_testpki_t *p, const char *dir);

/*
 * The engine's target for p->leaf (issuer p->ca), loaded with oa_ocsp_target_load from files written to a temporary
 * directory that is removed again. responder_override as for oa_ocsp_target_load (NULL: the leaf's AIA URI).
 * Returns 0 with *out set (free with oa_ocsp_target_free), or -1.
 */
struct oa_ocsp_target_s;
int oa_testpki_target_new(const oa_testpki_t *p, const char *responder_override, struct oa_ocsp_target_s **out);

/* OCSP responses. */

typedef enum oa_testpki_nonce_e {
    OA_TESTPKI_NONCE_NONE,  /* the response carries no nonce */
    OA_TESTPKI_NONCE_COPY,  /* the nonce of o->req is copied (none when the request has none) */
    OA_TESTPKI_NONCE_WRONG, /* a fresh random 16-byte nonce, which matches no request */
} oa_testpki_nonce_t;

/*
 * Everything about a response. Fill it with oa_testpki_resp_opts_init, then change what the test is about.
 * All pointers are borrowed.
 */
typedef struct oa_testpki_resp_opts_s {
    int response_status;   /* OCSP_RESPONSE_STATUS_SUCCESSFUL (default), _MALFORMEDREQUEST, _INTERNALERROR,
                              _TRYLATER, _SIGREQUIRED, _UNAUTHORIZED. Anything but successful carries no
                              responseBytes: every other field is then ignored. */
    int cert_status;       /* V_OCSP_CERTSTATUS_GOOD (default), _REVOKED or _UNKNOWN */
    time_t revocation_time;/* REVOKED only: absolute time (default: the wall clock at init minus a day) */
    int revocation_reason; /* REVOKED only: OCSP_REVOKED_STATUS_* or -1 for no reason (default -1) */

    X509 *cert;            /* the CertID is for cert (serial) under issuer (name and key hashes) */
    X509 *issuer;
    long other_serial;     /* when not 0, the CertID carries this serial instead of cert's */
    const EVP_MD *certid_md; /* hash of the CertID; NULL means SHA-1 */

    time_t now;            /* the base of the offsets below; 0 means the wall clock */
    long this_update_offset;  /* seconds from now (default -60) */
    bool has_next_update;     /* default true */
    long next_update_offset;  /* seconds from now (default +3600) */
    long produced_at_offset;  /* seconds from now (default -60) */

    oa_testpki_nonce_t nonce; /* default NONE */
    OCSP_REQUEST *req;        /* the request whose nonce COPY copies */

    EVP_PKEY *signer_key;     /* signs the response; with signer_cert names the responder (default: the CA) */
    X509 *signer_cert;
    bool include_signer_cert; /* put signer_cert in the response's certs (default true) */
    bool respid_by_key;       /* ResponderID byKey instead of byName (default false) */
    STACK_OF(X509) *extra_certs; /* more certificates appended to the response's certs, or NULL */
} oa_testpki_resp_opts_t;

/*
 * Defaults: successful, GOOD, the CertID of p->leaf under p->ca, thisUpdate/producedAt a minute ago, nextUpdate in
 * an hour, no nonce, signed by p->ca with its certificate included.
 */
void oa_testpki_resp_opts_init(oa_testpki_resp_opts_t *o, const oa_testpki_t *p);

/* Builds the DER OCSPResponse that o describes. Returns 0 with *der (malloc'ed, free()) and *len set, or -1. */
int oa_testpki_response(const oa_testpki_resp_opts_t *o, unsigned char **der, size_t *len);

/* Appends n bytes to the malloc'ed buffer *der of *len bytes (realloc'ed). Returns 0 or -1 (buffer unchanged).
 * Truncation needs no helper: pass a smaller length. */
int oa_testpki_der_append(unsigned char **der, size_t *len, const void *bytes, size_t n);

/* The DER encoding of req, malloc'ed (free()). Returns 0 or -1. */
int oa_testpki_request_der(OCSP_REQUEST *req, unsigned char **der, size_t *len);

/* TLS peers. */

/*
 * A certificate for either end of a TLS connection, named CN=<cn>, issued by ca: basicConstraints CA:FALSE, keyUsage
 * digitalSignature, EKU serverAuth and clientAuth, and the subjectAltName san in OpenSSL's configuration syntax
 * ("DNS:localhost,IP:127.0.0.1"; none when NULL). Returns 0 or -1.
 */
int oa_testpki_tls_leaf_new(const oa_testpki_ident_t *ca, const char *cn, const char *san, oa_testpki_ident_t *out);

#endif
