/*
 * Test-side PKI and OCSP response builder. See testpki.h for the contract; here only the why.
 */
#include <dirent.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "oa_ocsp.h"
#include "testpki.h"

/* CA and responder certificates get serials from this counter so that no two certificates of a run share an
 * issuer and serial, which would make CertID tests ambiguous. */
static long next_serial = 0x7e570000;

void oa_testpki_ident_free(oa_testpki_ident_t *id)
{
    if (id == NULL)
        return;
    EVP_PKEY_free(id->key);
    X509_free(id->cert);
    id->key = NULL;
    id->cert = NULL;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return -1;
    ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/*
 * Creates a certificate for a fresh key named CN=<cn>, signed by issuer (or by itself when issuer is NULL), with
 * the extensions given as (nid, value) pairs ending with nid 0.
 */
static int make_cert(const oa_testpki_ident_t *issuer, const char *cn, long serial, const int *nids,
                     const char *const *values, oa_testpki_ident_t *out)
{
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    X509_NAME *name = NULL;
    X509 *issuer_cert;
    EVP_PKEY *issuer_key;
    int rc = -1;

    key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    cert = X509_new();
    name = X509_NAME_new();
    if (key == NULL || cert == NULL || name == NULL)
        goto out;
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"ocsp-agent tests", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0))
        goto out;
    issuer_cert = issuer != NULL ? issuer->cert : cert;
    issuer_key = issuer != NULL ? issuer->key : key;
    if (!X509_set_version(cert, X509_VERSION_3) || !ASN1_INTEGER_set(X509_get_serialNumber(cert), serial) ||
        !X509_set_subject_name(cert, name) ||
        !X509_set_issuer_name(cert, issuer != NULL ? X509_get_subject_name(issuer->cert) : name) ||
        X509_gmtime_adj(X509_getm_notBefore(cert), -3600) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(cert), 3650, 0, NULL) == NULL || !X509_set_pubkey(cert, key))
        goto out;
    /* The subject key identifier must exist before the authority key identifier of a self-signed certificate can
     * refer to it, so it always comes first. */
    if (add_ext(cert, issuer_cert, NID_subject_key_identifier, "hash") != 0)
        goto out;
    if (issuer != NULL && add_ext(cert, issuer_cert, NID_authority_key_identifier, "keyid:always") != 0)
        goto out;
    for (; *nids != 0; nids++, values++)
        if (add_ext(cert, issuer_cert, *nids, *values) != 0)
            goto out;
    if (X509_sign(cert, issuer_key, EVP_sha256()) <= 0)
        goto out;
    out->key = key;
    out->cert = cert;
    key = NULL;
    cert = NULL;
    rc = 0;
out:
    X509_NAME_free(name);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int oa_testpki_ca_new(const char *cn, oa_testpki_ident_t *out)
{
    static const int nids[] = {NID_basic_constraints, NID_key_usage, 0};
    static const char *const values[] = {"critical,CA:TRUE", "critical,keyCertSign,cRLSign"};

    return make_cert(NULL, cn, next_serial++, nids, values, out);
}

int oa_testpki_subca_new(const oa_testpki_ident_t *parent, const char *cn, oa_testpki_ident_t *out)
{
    static const int nids[] = {NID_basic_constraints, NID_key_usage, 0};
    static const char *const values[] = {"critical,CA:TRUE", "critical,keyCertSign,cRLSign"};

    return make_cert(parent, cn, next_serial++, nids, values, out);
}

int oa_testpki_leaf_new(const oa_testpki_ident_t *ca, const char *cn, long serial, const char *ocsp_uri,
                        oa_testpki_ident_t *out)
{
    int nids[5] = {NID_basic_constraints, NID_key_usage, NID_ext_key_usage, 0, 0};
    const char *values[4] = {"critical,CA:FALSE", "critical,digitalSignature", "serverAuth", NULL};
    char aia[512];

    if (ocsp_uri != NULL) {
        if ((size_t)snprintf(aia, sizeof(aia), "OCSP;URI:%s", ocsp_uri) >= sizeof(aia))
            return -1;
        nids[3] = NID_info_access;
        values[3] = aia;
    }
    return make_cert(ca, cn, serial, nids, values, out);
}

int oa_testpki_responder_new(const oa_testpki_ident_t *ca, const char *cn, bool with_ocsp_eku,
                             oa_testpki_ident_t *out)
{
    static const int nids[] = {NID_basic_constraints, NID_key_usage, NID_ext_key_usage, NID_id_pkix_OCSP_noCheck, 0};
    const char *values[] = {"critical,CA:FALSE", "critical,digitalSignature", with_ocsp_eku ? "OCSPSigning" : "serverAuth",
                            "ignored"};

    return make_cert(ca, cn, next_serial++, nids, values, out);
}

void oa_testpki_free(oa_testpki_t *p)
{
    if (p == NULL)
        return;
    oa_testpki_ident_free(&p->ca);
    oa_testpki_ident_free(&p->leaf);
    oa_testpki_ident_free(&p->responder);
    oa_testpki_ident_free(&p->responder_noeku);
    oa_testpki_ident_free(&p->other_ca);
    oa_testpki_ident_free(&p->other_responder);
}

int oa_testpki_init(oa_testpki_t *p, long leaf_serial, const char *ocsp_uri)
{
    memset(p, 0, sizeof(*p));
    if (oa_testpki_ca_new("Test CA", &p->ca) != 0 ||
        oa_testpki_leaf_new(&p->ca, "proxy.test", leaf_serial, ocsp_uri, &p->leaf) != 0 ||
        oa_testpki_responder_new(&p->ca, "Test OCSP Responder", true, &p->responder) != 0 ||
        oa_testpki_responder_new(&p->ca, "Test Responder Without EKU", false, &p->responder_noeku) != 0 ||
        oa_testpki_ca_new("Other CA", &p->other_ca) != 0 ||
        oa_testpki_responder_new(&p->other_ca, "Other OCSP Responder", true, &p->other_responder) != 0) {
        oa_testpki_free(p);
        return -1;
    }
    return 0;
}

int oa_testpki_tmpdir(char *dir)
{
    snprintf(dir, OA_TESTPKI_DIR_MAX, "/tmp/oa-test-XXXXXX");
    return mkdtemp(dir) != NULL ? 0 : -1;
}

int oa_testpki_rmdir(const char *dir)
{
    DIR *d;
    struct dirent *e;
    char path[4096];
    int rc = 0;

    d = opendir(dir);
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path) || unlink(path) != 0)
            rc = -1;
    }
    closedir(d);
    if (rmdir(dir) != 0)
        rc = -1;
    return rc;
}

char *oa_testpki_path(char *buf, size_t size, const char *dir, const char *name)
{
    if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size)
        abort();
    return buf;
}

int oa_testpki_write_certs(const char *path, X509 *first, ...)
{
    BIO *bio;
    va_list ap;
    X509 *x;
    int rc = 0;

    bio = BIO_new_file(path, "w");
    if (bio == NULL)
        return -1;
    va_start(ap, first);
    for (x = first; x != NULL; x = va_arg(ap, X509 *))
        if (!PEM_write_bio_X509(bio, x))
            rc = -1;
    va_end(ap);
    if (BIO_free(bio) != 1)
        rc = -1;
    return rc;
}

int oa_testpki_write_key(const char *path, EVP_PKEY *key)
{
    BIO *bio;
    int rc = 0;

    bio = BIO_new_file(path, "w");
    if (bio == NULL)
        return -1;
    if (chmod(path, 0600) != 0 || !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL))
        rc = -1;
    if (BIO_free(bio) != 1)
        rc = -1;
    return rc;
}

int oa_testpki_write_file(const char *path, const void *data, size_t len)
{
    FILE *fp;
    int rc = 0;

    fp = fopen(path, "wb");
    if (fp == NULL)
        return -1;
    if (len > 0 && fwrite(data, 1, len, fp) != len)
        rc = -1;
    if (fclose(fp) != 0)
        rc = -1;
    return rc;
}

static int write_ident(const char *dir, const char *stem, const oa_testpki_ident_t *id)
{
    char name[64], path[4096];

    snprintf(name, sizeof(name), "%s.pem", stem);
    if (oa_testpki_write_certs(oa_testpki_path(path, sizeof(path), dir, name), id->cert, (X509 *)NULL) != 0)
        return -1;
    snprintf(name, sizeof(name), "%s.key", stem);
    return oa_testpki_write_key(oa_testpki_path(path, sizeof(path), dir, name), id->key);
}

int oa_testpki_write_dir(const oa_testpki_t *p, const char *dir)
{
    char path[4096];

    if (write_ident(dir, "ca", &p->ca) != 0 || write_ident(dir, "leaf", &p->leaf) != 0 ||
        write_ident(dir, "responder", &p->responder) != 0 ||
        write_ident(dir, "responder-noeku", &p->responder_noeku) != 0 ||
        write_ident(dir, "other-ca", &p->other_ca) != 0 ||
        write_ident(dir, "other-responder", &p->other_responder) != 0)
        return -1;
    return oa_testpki_write_certs(oa_testpki_path(path, sizeof(path), dir, "leaf-chain.pem"), p->leaf.cert,
                                  p->ca.cert, (X509 *)NULL);
}

int oa_testpki_target_new(const oa_testpki_t *p, const char *responder_override, struct oa_ocsp_target_s **out)
{
    char dir[OA_TESTPKI_DIR_MAX], path[4096];
    oa_error_t err;
    int rc;

    if (oa_testpki_tmpdir(dir) != 0)
        return -1;
    oa_testpki_path(path, sizeof(path), dir, "leaf-chain.pem");
    rc = oa_testpki_write_certs(path, p->leaf.cert, p->ca.cert, (X509 *)NULL);
    if (rc == 0 && oa_ocsp_target_load(path, NULL, responder_override, out, &err) != 0) {
        fprintf(stderr, "testpki: %s\n", err.text);
        rc = -1;
    }
    oa_testpki_rmdir(dir);
    return rc;
}

void oa_testpki_resp_opts_init(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    memset(o, 0, sizeof(*o));
    o->response_status = OCSP_RESPONSE_STATUS_SUCCESSFUL;
    o->cert_status = V_OCSP_CERTSTATUS_GOOD;
    o->revocation_time = time(NULL) - 86400;
    o->revocation_reason = -1;
    o->cert = p->leaf.cert;
    o->issuer = p->ca.cert;
    o->this_update_offset = -60;
    o->has_next_update = true;
    o->next_update_offset = 3600;
    o->produced_at_offset = -60;
    o->nonce = OA_TESTPKI_NONCE_NONE;
    o->signer_key = p->ca.key;
    o->signer_cert = p->ca.cert;
    o->include_signer_cert = true;
}

/* Copies an OpenSSL-allocated DER buffer into malloc'ed memory, so that callers free it with plain free(). */
static int take_der(unsigned char *ossl, int n, unsigned char **der, size_t *len)
{
    unsigned char *copy;

    if (n <= 0 || ossl == NULL)
        return -1;
    copy = malloc((size_t)n);
    if (copy == NULL) {
        OPENSSL_free(ossl);
        return -1;
    }
    memcpy(copy, ossl, (size_t)n);
    OPENSSL_free(ossl);
    *der = copy;
    *len = (size_t)n;
    return 0;
}

static OCSP_CERTID *make_certid(const oa_testpki_resp_opts_t *o)
{
    const EVP_MD *md = o->certid_md != NULL ? o->certid_md : EVP_sha1();
    ASN1_INTEGER *serial;
    OCSP_CERTID *id;

    if (o->other_serial == 0)
        return OCSP_cert_to_id(md, o->cert, o->issuer);
    serial = ASN1_INTEGER_new();
    if (serial == NULL || !ASN1_INTEGER_set(serial, o->other_serial)) {
        ASN1_INTEGER_free(serial);
        return NULL;
    }
    id = OCSP_cert_id_new(md, X509_get_subject_name(o->issuer), X509_get0_pubkey_bitstr(o->issuer), serial);
    ASN1_INTEGER_free(serial);
    return id;
}

int oa_testpki_response(const oa_testpki_resp_opts_t *o, unsigned char **der, size_t *len)
{
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *bs = NULL;
    OCSP_CERTID *id = NULL;
    ASN1_GENERALIZEDTIME *this_upd = NULL, *next_upd = NULL, *rev_time = NULL;
    ASN1_GENERALIZEDTIME *produced;
    time_t now = o->now != 0 ? o->now : time(NULL);
    unsigned long flags;
    unsigned char *buf = NULL;
    unsigned char nonce[16];
    int n, i, rc = -1;

    if (o->response_status != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        /* RFC 6960 4.2.1: an unsuccessful response has no responseBytes at all. */
        resp = OCSP_response_create(o->response_status, NULL);
        goto encode;
    }

    bs = OCSP_BASICRESP_new();
    id = make_certid(o);
    this_upd = ASN1_GENERALIZEDTIME_adj(NULL, now, 0, o->this_update_offset);
    if (bs == NULL || id == NULL || this_upd == NULL)
        goto out;
    if (o->has_next_update && (next_upd = ASN1_GENERALIZEDTIME_adj(NULL, now, 0, o->next_update_offset)) == NULL)
        goto out;
    if (o->cert_status == V_OCSP_CERTSTATUS_REVOKED &&
        (rev_time = ASN1_GENERALIZEDTIME_adj(NULL, o->revocation_time, 0, 0)) == NULL)
        goto out;
    if (OCSP_basic_add1_status(bs, id, o->cert_status, o->revocation_reason, rev_time, this_upd, next_upd) == NULL)
        goto out;

    switch (o->nonce) {
    case OA_TESTPKI_NONCE_NONE:
        break;
    case OA_TESTPKI_NONCE_COPY:
        if (o->req == NULL || OCSP_copy_nonce(bs, o->req) <= 0)
            goto out;
        break;
    case OA_TESTPKI_NONCE_WRONG:
        if (RAND_bytes(nonce, sizeof(nonce)) != 1 || !OCSP_basic_add1_nonce(bs, nonce, sizeof(nonce)))
            goto out;
        break;
    }

    /* OCSP_basic_sign stamps producedAt with the wall clock unless told OCSP_NOTIME; the field is allocated with
     * the structure, so it is set in place beforehand. The accessor is const only to discourage this. */
    produced = (ASN1_GENERALIZEDTIME *)OCSP_resp_get0_produced_at(bs);
    if (ASN1_GENERALIZEDTIME_adj(produced, now, 0, o->produced_at_offset) == NULL)
        goto out;
    flags = OCSP_NOTIME;
    if (!o->include_signer_cert)
        flags |= OCSP_NOCERTS;
    if (o->respid_by_key)
        flags |= OCSP_RESPID_KEY;
    if (!OCSP_basic_sign(bs, o->signer_cert, o->signer_key, EVP_sha256(), NULL, flags))
        goto out;
    /* The certificates are outside the signed data, so extra ones can be added after signing. */
    for (i = 0; o->extra_certs != NULL && i < sk_X509_num(o->extra_certs); i++)
        if (!OCSP_basic_add1_cert(bs, sk_X509_value(o->extra_certs, i)))
            goto out;
    resp = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, bs);

encode:
    if (resp == NULL)
        goto out;
    n = i2d_OCSP_RESPONSE(resp, &buf);
    rc = take_der(buf, n, der, len);
out:
    OCSP_RESPONSE_free(resp);
    ASN1_GENERALIZEDTIME_free(rev_time);
    ASN1_GENERALIZEDTIME_free(next_upd);
    ASN1_GENERALIZEDTIME_free(this_upd);
    OCSP_CERTID_free(id);
    OCSP_BASICRESP_free(bs);
    return rc;
}

int oa_testpki_der_append(unsigned char **der, size_t *len, const void *bytes, size_t n)
{
    unsigned char *grown;

    grown = realloc(*der, *len + n + 1);
    if (grown == NULL)
        return -1;
    memcpy(grown + *len, bytes, n);
    *der = grown;
    *len += n;
    return 0;
}

int oa_testpki_request_der(OCSP_REQUEST *req, unsigned char **der, size_t *len)
{
    unsigned char *buf = NULL;
    int n;

    n = i2d_OCSP_REQUEST(req, &buf);
    return take_der(buf, n, der, len);
}

int oa_testpki_tls_leaf_new(const oa_testpki_ident_t *ca, const char *cn, const char *san, oa_testpki_ident_t *out)
{
    int nids[5] = {NID_basic_constraints, NID_key_usage, NID_ext_key_usage, 0, 0};
    const char *values[4] = {"critical,CA:FALSE", "critical,digitalSignature", "serverAuth,clientAuth", NULL};

    if (san != NULL) {
        nids[3] = NID_subject_alt_name;
        values[3] = san;
    }
    return make_cert(ca, cn, next_serial++, nids, values, out);
}
