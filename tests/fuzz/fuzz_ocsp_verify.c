/*
 * Fuzz target: oa_ocsp_verify on arbitrary bytes, for the certificate in tests/fuzz/pki/.
 *
 * The PKI is fixed and committed (pki/leaf-chain.pem: the watched certificate then its issuing CA; pki/request.der:
 * a request with a nonce) because the seed responses in corpus/fuzz_ocsp_verify/ are signed with its keys and are
 * only interesting when their signatures hold. Both are loaded once, at the first input. Verification runs at the
 * fixed time FUZZ_NOW, the time the seeds were made for, so that they stay current.
 *
 * Each input is verified twice, without and with the request, and the answers are checked:
 *   - on success: der is a copy of the input, the status is one of the three, the times agree with the status and
 *     with FUZZ_NOW within the leeway, and the reason is a CRLReason (or -1);
 *   - on failure: the code is one of those oa_ocsp_verify documents, with a sentence, and *out is untouched;
 *   - both ways: OpenSSL's error queue is empty afterwards, and the request can only add a nonce mismatch.
 *
 * Run as `fuzz_ocsp_verify --make-seeds PKI_DIR CORPUS_DIR` it builds a new PKI with tests/support/testpki.h and
 * writes the PKI files and a set of seed responses (GOOD, REVOKED, UNKNOWN, delegated, tryLater, ...) instead.
 */
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_error.h"
#include "oa_ocsp.h"
#include "oa_util.h"
#include "testpki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#ifndef OA_FUZZ_PKI_DIR
#define OA_FUZZ_PKI_DIR "tests/fuzz/pki"
#endif

/* 2027-01-15T08:00:00Z: after the committed PKI was made, well inside its ten years of validity. */
#define FUZZ_NOW ((time_t)1800000000)

#define CHECK(cond, ...)                                                                                             \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_ocsp_verify: check failed: %s: ", #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                                                            \
            fprintf(stderr, "\n");                                                                                   \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

static oa_ocsp_target_t *target;
static OCSP_REQUEST *request;
static int verbose;

/* ---- loading the committed PKI ---- */

static const char *pki_dir(void)
{
    const char *d = getenv("OA_FUZZ_PKI_DIR");

    return d != NULL && d[0] != '\0' ? d : OA_FUZZ_PKI_DIR;
}

static void load_once(void)
{
    char path[4096];
    oa_buf_t der;
    const unsigned char *p;
    oa_error_t err;

    if (target != NULL)
        return;
    verbose = getenv("OA_FUZZ_VERBOSE") != NULL;
    oa_testpki_path(path, sizeof(path), pki_dir(), "leaf-chain.pem");
    if (oa_ocsp_target_load(path, NULL, NULL, &target, &err) != 0) {
        fprintf(stderr, "fuzz_ocsp_verify: %s (set OA_FUZZ_PKI_DIR to tests/fuzz/pki)\n", err.text);
        abort();
    }
    oa_buf_init(&der);
    oa_testpki_path(path, sizeof(path), pki_dir(), "request.der");
    CHECK(oa_file_read(path, 65536, &der) == 0, "cannot read %s", path);
    p = (const unsigned char *)der.data;
    request = d2i_OCSP_REQUEST(NULL, &p, (long)der.len);
    CHECK(request != NULL, "%s is not a DER OCSPRequest", path);
    oa_buf_free(&der);
}

/* ---- checking one answer ---- */

static void check_success(const uint8_t *data, size_t size, const oa_ocsp_result_t *r)
{
    CHECK(r->der != NULL && r->der_len == size && memcmp(r->der, data, size) == 0, "der is not the input");
    CHECK(r->cert_status == OA_CERT_GOOD || r->cert_status == OA_CERT_REVOKED || r->cert_status == OA_CERT_UNKNOWN,
          "cert_status %d", (int)r->cert_status);
    CHECK(r->this_update <= FUZZ_NOW + OA_OCSP_LEEWAY_SECONDS, "thisUpdate %lld in the future",
          (long long)r->this_update);
    CHECK(r->next_update == 0 || r->next_update >= FUZZ_NOW - OA_OCSP_LEEWAY_SECONDS, "nextUpdate %lld passed",
          (long long)r->next_update);
    if (r->cert_status == OA_CERT_REVOKED) {
        CHECK(r->revocation_reason >= -1 && r->revocation_reason <= OCSP_REVOKED_STATUS_AACOMPROMISE &&
                  r->revocation_reason != 7,
              "revocation_reason %d", r->revocation_reason);
    } else {
        CHECK(r->revocation_time == 0 && r->revocation_reason == -1, "revocation data on a %s answer",
              oa_cert_status_name(r->cert_status));
    }
}

static int documented_failure(oa_errcode_t code)
{
    switch (code) {
    case OA_E_OCSP_MALFORMED:
    case OA_E_OCSP_UNSUCCESSFUL:
    case OA_E_OCSP_SIGNATURE:
    case OA_E_OCSP_CERTID:
    case OA_E_OCSP_EXPIRED:
    case OA_E_OCSP_NOT_YET_VALID:
    case OA_E_OCSP_NONCE:
    case OA_E_NOMEM:
    case OA_E_INTERNAL:
        return 1;
    default:
        return 0;
    }
}

/* Runs one verification and checks what it says on its own. Returns its return code. */
static int verify_once(const uint8_t *data, size_t size, OCSP_REQUEST *req, oa_ocsp_result_t *r, oa_error_t *err)
{
    oa_ocsp_result_t untouched;
    int rc;

    memset(r, 0x5a, sizeof(*r));
    memset(&untouched, 0x5a, sizeof(untouched));
    oa_error_clear(err);
    rc = oa_ocsp_verify(target, data, size, req, FUZZ_NOW, r, err);
    CHECK(ERR_peek_error() == 0, "OpenSSL's error queue is not empty after rc %d (%s): %s", rc,
          oa_errcode_name(err->code), ERR_reason_error_string(ERR_peek_error()));
    CHECK(rc == 0 || rc == -1, "rc %d", rc);
    if (rc == 0) {
        check_success(data, size, r);
        return 0;
    }
    CHECK(documented_failure(err->code), "undocumented code %s: %s", oa_errcode_name(err->code), err->text);
    CHECK(err->text[0] != '\0' && strnlen(err->text, sizeof(err->text)) < sizeof(err->text), "no error sentence");
    CHECK(memcmp(r, &untouched, sizeof(*r)) == 0, "*out written on failure (%s)", oa_errcode_name(err->code));
    CHECK(req != NULL || err->code != OA_E_OCSP_NONCE, "nonce mismatch without a request");
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    oa_ocsp_result_t plain, with_req;
    oa_error_t err_plain, err_req;
    int rc_plain, rc_req;

    load_once();
    rc_plain = verify_once(data, size, NULL, &plain, &err_plain);
    rc_req = verify_once(data, size, request, &with_req, &err_req);
    /* OA_FUZZ_VERBOSE=1 shows each verdict, to see what the seeds reach (`-runs=0 corpus/fuzz_ocsp_verify`). */
    if (verbose)
        printf("verdict: %s / with the request: %s: %s\n",
               rc_plain == 0 ? oa_cert_status_name(plain.cert_status) : oa_errcode_name(err_plain.code),
               rc_req == 0 ? oa_cert_status_name(with_req.cert_status) : oa_errcode_name(err_req.code),
               rc_req == 0 ? "" : err_req.text);
    /* The nonce is checked last, so the request can only turn a success into a nonce mismatch. */
    if (rc_plain != 0) {
        CHECK(rc_req != 0 && err_req.code == err_plain.code, "with the request: rc %d %s, without: %s", rc_req,
              oa_errcode_name(err_req.code), oa_errcode_name(err_plain.code));
    } else if (rc_req != 0) {
        CHECK(err_req.code == OA_E_OCSP_NONCE, "the request added %s", oa_errcode_name(err_req.code));
    } else {
        CHECK(plain.cert_status == with_req.cert_status && plain.this_update == with_req.this_update &&
                  plain.next_update == with_req.next_update && plain.produced_at == with_req.produced_at &&
                  plain.revocation_time == with_req.revocation_time &&
                  plain.revocation_reason == with_req.revocation_reason,
              "the request changed the result");
    }
    if (rc_plain == 0)
        oa_ocsp_result_clear(&plain);
    if (rc_req == 0)
        oa_ocsp_result_clear(&with_req);
    return 0;
}

/* ---- --make-seeds ---- */

typedef struct seed_s {
    const char *name;
    void (*adjust)(oa_testpki_resp_opts_t *o, const oa_testpki_t *p);
} seed_t;

static OCSP_REQUEST *seed_request;

static void s_good(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)o;
    (void)p;
}

static void s_revoked(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->cert_status = V_OCSP_CERTSTATUS_REVOKED;
    o->revocation_reason = OCSP_REVOKED_STATUS_KEYCOMPROMISE;
}

static void s_revoked_no_reason(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->cert_status = V_OCSP_CERTSTATUS_REVOKED;
}

static void s_unknown(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->cert_status = V_OCSP_CERTSTATUS_UNKNOWN;
}

static void s_delegated(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    o->signer_key = p->responder.key;
    o->signer_cert = p->responder.cert;
}

static void s_delegated_by_key(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    s_delegated(o, p);
    o->respid_by_key = true;
}

static void s_delegated_no_eku(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    o->signer_key = p->responder_noeku.key;
    o->signer_cert = p->responder_noeku.cert;
}

static void s_other_responder(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    o->signer_key = p->other_responder.key;
    o->signer_cert = p->other_responder.cert;
}

static void s_try_later(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->response_status = OCSP_RESPONSE_STATUS_TRYLATER;
}

static void s_nonce(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->nonce = OA_TESTPKI_NONCE_COPY;
    o->req = seed_request;
}

static void s_nonce_wrong(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->nonce = OA_TESTPKI_NONCE_WRONG;
}

static void s_sha256_certid(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->certid_md = EVP_sha256();
}

static void s_other_serial(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->other_serial = 4242;
}

static void s_no_next_update(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->has_next_update = false;
}

static void s_expired(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->this_update_offset = -7200;
    o->next_update_offset = -3600;
}

static void s_not_yet_valid(oa_testpki_resp_opts_t *o, const oa_testpki_t *p)
{
    (void)p;
    o->this_update_offset = 3600;
    o->next_update_offset = 7200;
}

static const seed_t seeds[] = {
    {"good", s_good},
    {"revoked", s_revoked},
    {"revoked_no_reason", s_revoked_no_reason},
    {"unknown", s_unknown},
    {"delegated", s_delegated},
    {"delegated_by_key", s_delegated_by_key},
    {"delegated_no_eku", s_delegated_no_eku},
    {"other_responder", s_other_responder},
    {"try_later", s_try_later},
    {"nonce", s_nonce},
    {"nonce_wrong", s_nonce_wrong},
    {"sha256_certid", s_sha256_certid},
    {"other_serial", s_other_serial},
    {"no_next_update", s_no_next_update},
    {"expired", s_expired},
    {"not_yet_valid", s_not_yet_valid},
};

static int make_seeds(const char *pki_out, const char *corpus_out)
{
    oa_testpki_t p;
    oa_ocsp_target_t *t = NULL;
    oa_error_t err;
    char path[4096];
    unsigned char *der = NULL;
    size_t len, i;

    CHECK(oa_testpki_init(&p, 0x2f1e, "http://ocsp.fuzz.test/") == 0, "cannot build the PKI");
    oa_testpki_path(path, sizeof(path), pki_out, "leaf-chain.pem");
    CHECK(oa_testpki_write_certs(path, p.leaf.cert, p.ca.cert, (X509 *)NULL) == 0, "cannot write %s", path);
    CHECK(oa_ocsp_target_load(path, NULL, NULL, &t, &err) == 0, "%s", err.text);
    CHECK(oa_ocsp_request_new(t, true, &seed_request, &err) == 0, "%s", err.text);
    CHECK(oa_testpki_request_der(seed_request, &der, &len) == 0, "cannot encode the request");
    oa_testpki_path(path, sizeof(path), pki_out, "request.der");
    CHECK(oa_testpki_write_file(path, der, len) == 0, "cannot write %s", path);
    free(der);

    for (i = 0; i < OA_ARRAY_SIZE(seeds); i++) {
        oa_testpki_resp_opts_t o;

        oa_testpki_resp_opts_init(&o, &p);
        o.now = FUZZ_NOW;
        o.revocation_time = FUZZ_NOW - 86400;
        seeds[i].adjust(&o, &p);
        CHECK(oa_testpki_response(&o, &der, &len) == 0, "cannot build seed %s", seeds[i].name);
        snprintf(path, sizeof(path), "%s/%s.der", corpus_out, seeds[i].name);
        CHECK(oa_testpki_write_file(path, der, len) == 0, "cannot write %s", path);
        printf("%s: %zu bytes\n", path, len);
        free(der);
    }
    OCSP_REQUEST_free(seed_request);
    oa_ocsp_target_free(t);
    oa_testpki_free(&p);
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (*argc == 4 && strcmp((*argv)[1], "--make-seeds") == 0)
        exit(make_seeds((*argv)[2], (*argv)[3]) == 0 ? 0 : 1);
    return 0;
}
