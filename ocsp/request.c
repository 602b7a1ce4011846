/*
 * Building the OCSP request for a target.
 */
#include <openssl/err.h>
#include <openssl/ocsp.h>

#include "oa_ocsp.h"

/* RFC 8954 recommends 32 bytes at most; 16 random bytes are unguessable and accepted by every responder seen. */
#define NONCE_LEN 16

int oa_ocsp_request_new(const oa_ocsp_target_t *t, bool with_nonce, OCSP_REQUEST **out, oa_error_t *err)
{
    OCSP_REQUEST *req = NULL;
    OCSP_CERTID *id = NULL;
    int rc = -1;

    ERR_clear_error();
    req = OCSP_REQUEST_new();
    if (req == NULL) {
        oa_error_set(err, OA_E_NOMEM, "cannot build the OCSP request: out of memory");
        goto out;
    }
    /* SHA-1 CertIDs are what responders index by; RFC 5019 makes them the lightweight profile's only choice. */
    id = OCSP_cert_to_id(EVP_sha1(), t->cert, t->issuer);
    if (id == NULL) {
        oa_error_set(err, OA_E_INTERNAL, "cannot build the CertID of the certificate");
        oa_error_add_ssl(err);
        goto out;
    }
    /* add0 hands id over only on success; on failure it is still ours to free. */
    if (OCSP_request_add0_id(req, id) == NULL) {
        oa_error_set(err, OA_E_INTERNAL, "cannot add the CertID to the OCSP request");
        oa_error_add_ssl(err);
        goto out;
    }
    id = NULL;
    /* A NULL value makes OpenSSL draw the nonce from its random generator. */
    if (with_nonce && OCSP_request_add1_nonce(req, NULL, NONCE_LEN) != 1) {
        oa_error_set(err, OA_E_INTERNAL, "cannot add a nonce to the OCSP request");
        oa_error_add_ssl(err);
        goto out;
    }
    *out = req;
    req = NULL;
    rc = 0;
out:
    OCSP_CERTID_free(id);
    OCSP_REQUEST_free(req);
    return rc;
}
