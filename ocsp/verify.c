/*
 * Deciding whether to believe an OCSP response: parse, status, signature, CertID, times, nonce — in that order, so
 * that the error reported is the first thing that is wrong.
 */
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509_vfy.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "oa_ocsp.h"

/* Converts an ASN.1 time to seconds since the epoch. Returns 0 or -1 when the time cannot be read. */
static int asn1_to_time_t(const ASN1_GENERALIZEDTIME *a, time_t *out)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (a == NULL || ASN1_TIME_to_tm(a, &tm) != 1)
        return -1;
    *out = timegm(&tm);
    return 0;
}

/*
 * Appends OpenSSL's reasons to err. The certificate-verification reason ("unable to get local issuer certificate")
 * travels as the error's data string, which the generic drain does not show, so it is added first.
 */
static void add_ssl_detail(oa_error_t *err)
{
    const char *data = NULL;
    int flags = 0;
    size_t used;

    if (ERR_peek_last_error_data(&data, &flags) != 0 && data != NULL && (flags & ERR_TXT_STRING) && data[0] != '\0' &&
        err != NULL) {
        used = strlen(err->text);
        if (used + 4 < sizeof(err->text))
            snprintf(err->text + used, sizeof(err->text) - used, " (%s)", data);
    }
    oa_error_add_ssl(err);
}

/*
 * Verifies the response's signature and that its signer may speak for the target's issuer. The trust anchor is the
 * issuer itself, not a root: the issuer may be an intermediate, and nothing above it matters for OCSP, hence
 * X509_V_FLAG_PARTIAL_CHAIN. OCSP_basic_verify then accepts either the issuer as signer, or a certificate the issuer
 * signed that carries the OCSP-signing EKU (its ocsp_check_issuer/ocsp_check_delegated); anything else falls through
 * to an explicit-trust check that fails because the store's certificate carries no OCSP trust setting.
 */
static int verify_signature(const oa_ocsp_target_t *t, OCSP_BASICRESP *bs, time_t now, oa_error_t *err)
{
    X509_STORE *store = NULL;
    X509_VERIFY_PARAM *param;
    int rc = -1;

    store = X509_STORE_new();
    if (store == NULL || !X509_STORE_add_cert(store, t->issuer)) {
        oa_error_set(err, OA_E_NOMEM, "cannot set up the OCSP signature check: out of memory");
        goto out;
    }
    param = X509_STORE_get0_param(store);
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
    /* The responder certificate's validity is judged at the same `now` as the response, so that callers (and
     * tests) see one consistent clock. */
    X509_VERIFY_PARAM_set_time(param, now);
    ERR_clear_error();
    if (OCSP_basic_verify(bs, t->chain, store, 0) != 1) {
        oa_error_set(err, OA_E_OCSP_SIGNATURE,
                     "the OCSP response is not signed by the issuer or by a responder it certified for OCSP signing");
        add_ssl_detail(err);
        goto out;
    }
    rc = 0;
out:
    ERR_clear_error();
    X509_STORE_free(store);
    return rc;
}

/*
 * Finds the SingleResponse for the target. Responders answer with the CertID hash they were asked with (we ask with
 * SHA-1), but some answer SHA-256 regardless, which is equally unambiguous, so both are looked for.
 */
static int find_single(const oa_ocsp_target_t *t, OCSP_BASICRESP *bs, int *status, int *reason,
                       ASN1_GENERALIZEDTIME **rev, ASN1_GENERALIZEDTIME **this_upd, ASN1_GENERALIZEDTIME **next_upd,
                       oa_error_t *err)
{
    const EVP_MD *mds[2];
    OCSP_CERTID *id;
    size_t i;
    int found;

    mds[0] = EVP_sha1();
    mds[1] = EVP_sha256();
    for (i = 0; i < 2; i++) {
        id = OCSP_cert_to_id(mds[i], t->cert, t->issuer);
        if (id == NULL) {
            oa_error_set(err, OA_E_INTERNAL, "cannot build the CertID of the certificate");
            oa_error_add_ssl(err);
            return -1;
        }
        found = OCSP_resp_find_status(bs, id, status, reason, rev, this_upd, next_upd);
        OCSP_CERTID_free(id);
        if (found == 1)
            return 0;
    }
    ERR_clear_error();
    return oa_error_set(err, OA_E_OCSP_CERTID, "the OCSP response has no answer for serial %s of %s",
                        t->serial_hex, t->subject);
}

int oa_ocsp_verify(const oa_ocsp_target_t *t, const unsigned char *der, size_t len, OCSP_REQUEST *req, time_t now,
                   oa_ocsp_result_t *out, oa_error_t *err)
{
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *bs = NULL;
    const unsigned char *p = der;
    ASN1_GENERALIZEDTIME *rev = NULL, *this_upd = NULL, *next_upd = NULL;
    oa_ocsp_result_t r;
    int status, cstatus, reason = -1, rc = -1;

    memset(&r, 0, sizeof(r));
    r.revocation_reason = -1;
    ERR_clear_error();

    if (len == 0 || len > LONG_MAX) {
        oa_error_set(err, OA_E_OCSP_MALFORMED, "the OCSP response is empty");
        goto out;
    }
    resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    if (resp == NULL) {
        oa_error_set(err, OA_E_OCSP_MALFORMED, "the OCSP response is not a DER OCSPResponse");
        oa_error_add_ssl(err);
        goto out;
    }
    /* d2i stops at the end of the outer SEQUENCE; anything after it means the body is not what it claims. */
    if (p != der + len) {
        oa_error_set(err, OA_E_OCSP_MALFORMED, "the OCSP response is followed by %zu trailing bytes",
                     (size_t)(der + len - p));
        goto out;
    }
    status = OCSP_response_status(resp);
    if (status != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        oa_error_set(err, OA_E_OCSP_UNSUCCESSFUL, "the OCSP responder answered %s (%d) instead of successful",
                     OCSP_response_status_str(status), status);
        goto out;
    }
    bs = OCSP_response_get1_basic(resp);
    if (bs == NULL) {
        oa_error_set(err, OA_E_OCSP_MALFORMED, "the OCSP response does not hold a readable basic response");
        oa_error_add_ssl(err);
        goto out;
    }

    if (verify_signature(t, bs, now, err) != 0)
        goto out;

    if (find_single(t, bs, &cstatus, &reason, &rev, &this_upd, &next_upd, err) != 0)
        goto out;
    if (asn1_to_time_t(this_upd, &r.this_update) != 0 ||
        asn1_to_time_t(OCSP_resp_get0_produced_at(bs), &r.produced_at) != 0 ||
        (next_upd != NULL && asn1_to_time_t(next_upd, &r.next_update) != 0) ||
        (cstatus == V_OCSP_CERTSTATUS_REVOKED && asn1_to_time_t(rev, &r.revocation_time) != 0)) {
        oa_error_set(err, OA_E_OCSP_MALFORMED, "the OCSP response holds a time that cannot be read");
        ERR_clear_error();
        goto out;
    }
    if (r.this_update > now + OA_OCSP_LEEWAY_SECONDS) {
        oa_error_set(err, OA_E_OCSP_NOT_YET_VALID,
                     "the OCSP response is not valid yet: thisUpdate is %lld seconds in the future",
                     (long long)(r.this_update - now));
        goto out;
    }
    if (next_upd != NULL && r.next_update < now - OA_OCSP_LEEWAY_SECONDS) {
        oa_error_set(err, OA_E_OCSP_EXPIRED, "the OCSP response has expired: nextUpdate was %lld seconds ago",
                     (long long)(now - r.next_update));
        goto out;
    }

    /* 1: equal; 2: neither has one; 3: only the response has one (we did not ask); -1: the responder did not echo
     * ours, which RFC 8954 allows. Only 0, two different nonces, proves the answer is not to our request. */
    if (req != NULL && OCSP_check_nonce(req, bs) == 0) {
        oa_error_set(err, OA_E_OCSP_NONCE, "the OCSP response's nonce differs from the request's");
        ERR_clear_error();
        goto out;
    }

    switch (cstatus) {
    case V_OCSP_CERTSTATUS_GOOD:
        r.cert_status = OA_CERT_GOOD;
        break;
    case V_OCSP_CERTSTATUS_REVOKED:
        r.cert_status = OA_CERT_REVOKED;
        r.revocation_reason = reason;
        break;
    default:
        r.cert_status = OA_CERT_UNKNOWN;
        break;
    }
    r.der = malloc(len);
    if (r.der == NULL) {
        oa_error_set(err, OA_E_NOMEM, "out of memory while keeping the OCSP response");
        goto out;
    }
    memcpy(r.der, der, len);
    r.der_len = len;
    *out = r;
    rc = 0;
out:
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    return rc;
}
