/*
 * The OCSP target: the certificate we watch, its issuer and the responder to ask; plus the small value helpers of
 * verified results.
 */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "oa_ocsp.h"
#include "oa_util.h"

/* Certificate files are small; anything larger is not what the operator meant to pass. */
#define PEM_FILE_MAX (1024 * 1024)

/*
 * Reads every PEM certificate of path into a new stack. Returns 0 with *out set (possibly empty), or -1 with err
 * naming the file.
 */
static int read_certs(const char *path, STACK_OF(X509) **out, oa_error_t *err)
{
    oa_buf_t content = {0};
    STACK_OF(X509) *certs = NULL;
    BIO *bio = NULL;
    X509 *x;
    unsigned long e;
    int rc = -1, r;

    r = oa_file_read(path, PEM_FILE_MAX, &content);
    if (r != 0) {
        oa_error_set(err, OA_E_BAD_FILE, "%s: cannot read the file: %s", path, uv_strerror(r));
        goto out;
    }
    certs = sk_X509_new_null();
    bio = BIO_new_mem_buf(content.data != NULL ? content.data : "", (int)content.len);
    if (certs == NULL || bio == NULL) {
        oa_error_set(err, OA_E_NOMEM, "%s: out of memory", path);
        goto out;
    }
    ERR_clear_error();
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(certs, x)) {
            X509_free(x);
            oa_error_set(err, OA_E_NOMEM, "%s: out of memory", path);
            goto out;
        }
    }
    /* The loop always ends with an error: "no start line" means the file simply has no more certificates; any
     * other reason is a damaged certificate, which must not be silently skipped. */
    e = ERR_peek_last_error();
    if (e != 0 && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        oa_error_set(err, OA_E_BAD_FILE, "%s: a certificate in the file cannot be read", path);
        oa_error_add_ssl(err);
        goto out;
    }
    ERR_clear_error();
    if (sk_X509_num(certs) == 0) {
        oa_error_set(err, OA_E_BAD_FILE, "%s: no certificate in the file (PEM expected)", path);
        goto out;
    }
    *out = certs;
    certs = NULL;
    rc = 0;
out:
    BIO_free(bio);
    sk_X509_pop_free(certs, X509_free);
    oa_buf_free(&content);
    return rc;
}

static char *subject_line(X509 *cert)
{
    BIO *bio;
    char *text = NULL, *p;
    long n;

    bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return NULL;
    if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
        n = BIO_get_mem_data(bio, &p);
        text = n >= 0 ? strndup(p, (size_t)n) : NULL;
    }
    BIO_free(bio);
    return text;
}

static char *serial_hex(X509 *cert)
{
    BIGNUM *bn;
    char *hex, *copy = NULL;

    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    if (bn == NULL)
        return NULL;
    hex = BN_bn2hex(bn);
    if (hex != NULL)
        copy = strdup(hex);
    OPENSSL_free(hex);
    BN_free(bn);
    return copy;
}

/* The first OCSP URI of the AIA extension. Returns 0 with *out set (NULL when there is none), or UV_ENOMEM. */
static int aia_ocsp_url(X509 *cert, char **out)
{
    STACK_OF(OPENSSL_STRING) *uris;
    int rc = 0;

    *out = NULL;
    uris = X509_get1_ocsp(cert);
    if (uris != NULL && sk_OPENSSL_STRING_num(uris) > 0) {
        *out = strdup(sk_OPENSSL_STRING_value(uris, 0));
        if (*out == NULL)
            rc = UV_ENOMEM;
    }
    X509_email_free(uris);
    return rc;
}

int oa_ocsp_target_load(const char *cert_pem, const char *issuer_pem, const char *responder_override,
                        oa_ocsp_target_t **out, oa_error_t *err)
{
    STACK_OF(X509) *certs = NULL, *issuers = NULL;
    oa_ocsp_target_t *t = NULL;
    const char *issuer_file;
    X509 *x;
    int rc = -1, i;

    if (responder_override != NULL &&
        (strncasecmp(responder_override, "http://", 7) != 0 || responder_override[7] == '\0'))
        return oa_error_set(err, OA_E_BAD_OPTION, "--responder-url: \"%s\" is not an http:// URL", responder_override);
    if (read_certs(cert_pem, &certs, err) != 0)
        goto out;
    if (issuer_pem != NULL && read_certs(issuer_pem, &issuers, err) != 0)
        goto out;

    t = calloc(1, sizeof(*t));
    if (t == NULL || (t->chain = sk_X509_new_null()) == NULL)
        goto nomem;
    /* The stacks hand their references over one by one, so that every certificate has exactly one owner. */
    t->cert = sk_X509_shift(certs);
    while ((x = sk_X509_shift(certs)) != NULL) {
        if (!sk_X509_push(t->chain, x)) {
            X509_free(x);
            goto nomem;
        }
    }
    for (i = 0; issuers != NULL && i < sk_X509_num(issuers); i++) {
        x = sk_X509_value(issuers, i);
        if (!sk_X509_push(t->chain, x))
            goto nomem;
        X509_up_ref(x);
    }
    if (issuers != NULL) {
        t->issuer = sk_X509_value(issuers, 0);
        issuer_file = issuer_pem;
    } else if (sk_X509_num(t->chain) > 0) {
        t->issuer = sk_X509_value(t->chain, 0);
        issuer_file = cert_pem;
    } else {
        oa_error_set(err, OA_E_BAD_FILE,
                     "%s: no issuer certificate: the file holds one certificate and --issuer was not given", cert_pem);
        goto out;
    }
    X509_up_ref(t->issuer);

    /* Names (and key identifiers) first, then the signature: a wrong file is the common mistake and its message
     * should say so rather than report a bad signature. */
    if (X509_check_issued(t->issuer, t->cert) != X509_V_OK) {
        oa_error_set(err, OA_E_BAD_FILE, "%s: the issuer certificate did not issue %s (names or key identifiers differ)",
                     issuer_file, cert_pem);
        goto out;
    }
    if (X509_verify(t->cert, X509_get0_pubkey(t->issuer)) != 1) {
        oa_error_set(err, OA_E_BAD_FILE, "%s: the issuer certificate did not sign %s", issuer_file, cert_pem);
        oa_error_add_ssl(err);
        goto out;
    }
    ERR_clear_error();

    if (aia_ocsp_url(t->cert, &t->aia_url) != 0)
        goto nomem;
    if (responder_override != NULL)
        t->responder_url = strdup(responder_override);
    else if (t->aia_url != NULL)
        t->responder_url = strdup(t->aia_url);
    t->subject = subject_line(t->cert);
    t->serial_hex = serial_hex(t->cert);
    if ((t->responder_url == NULL && (responder_override != NULL || t->aia_url != NULL)) || t->subject == NULL ||
        t->serial_hex == NULL)
        goto nomem;
    *out = t;
    t = NULL;
    rc = 0;
    goto out;
nomem:
    oa_error_set(err, OA_E_NOMEM, "%s: out of memory while loading the certificate", cert_pem);
out:
    oa_ocsp_target_free(t);
    sk_X509_pop_free(issuers, X509_free);
    sk_X509_pop_free(certs, X509_free);
    return rc;
}

int oa_ocsp_target_certid_hex(const oa_ocsp_target_t *t, char out[OA_OCSP_CERTID_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    OCSP_CERTID *id = OCSP_cert_to_id(EVP_sha1(), t->cert, t->issuer);
    unsigned char *der = NULL, md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0, i;
    int len = id != NULL ? i2d_OCSP_CERTID(id, &der) : -1;
    int rc = -1;

    out[0] = '\0';
    if (len <= 0 || EVP_Digest(der, (size_t)len, md, &md_len, EVP_sha1(), NULL) != 1 ||
        md_len * 2 != OA_OCSP_CERTID_HEX_LEN)
        goto out;
    for (i = 0; i < md_len; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 0x0f];
    }
    out[OA_OCSP_CERTID_HEX_LEN] = '\0';
    rc = 0;
out:
    OPENSSL_free(der);
    OCSP_CERTID_free(id);
    ERR_clear_error();
    return rc;
}

void oa_ocsp_target_free(oa_ocsp_target_t *t)
{
    if (t == NULL)
        return;
    X509_free(t->cert);
    X509_free(t->issuer);
    sk_X509_pop_free(t->chain, X509_free);
    free(t->aia_url);
    free(t->responder_url);
    free(t->subject);
    free(t->serial_hex);
    free(t);
}

const char *oa_cert_status_name(oa_cert_status_t s)
{
    switch (s) {
    case OA_CERT_GOOD:
        return "GOOD";
    case OA_CERT_REVOKED:
        return "REVOKED";
    case OA_CERT_UNKNOWN:
        return "UNKNOWN";
    }
    return "UNKNOWN";
}

void oa_ocsp_result_clear(oa_ocsp_result_t *r)
{
    if (r == NULL)
        return;
    free(r->der);
    memset(r, 0, sizeof(*r));
}

int oa_ocsp_result_copy(oa_ocsp_result_t *dst, const oa_ocsp_result_t *src)
{
    unsigned char *der = NULL;

    if (src->der_len > 0) {
        der = malloc(src->der_len);
        if (der == NULL)
            return UV_ENOMEM;
        memcpy(der, src->der, src->der_len);
    }
    *dst = *src;
    dst->der = der;
    return 0;
}
