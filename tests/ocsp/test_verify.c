/*
 * Whether to believe an answer: oa_ocsp_verify against responses built at test time by testpki, one case per
 * outcome. Every case pins `now`, so the times put into a response can be compared exactly with the result's.
 */
#include <openssl/ocsp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "oa_ocsp.h"
#include "testpki.h"

#define LEAF_SERIAL 0x51a7
#define LEEWAY OA_OCSP_LEEWAY_SECONDS

static oa_testpki_t pki;
static oa_ocsp_target_t *target;
static time_t now;
static char dir[OA_TESTPKI_DIR_MAX];

static int group_setup(void **state)
{
    (void)state;
    /* A round `now` an hour back keeps the arithmetic readable and proves the wall clock is not what is used. */
    now = time(NULL) / 60 * 60 - 3600 + 600;
    if (oa_testpki_init(&pki, LEAF_SERIAL, "http://127.0.0.1:1/ocsp") != 0 || oa_testpki_tmpdir(dir) != 0 ||
        oa_testpki_write_dir(&pki, dir) != 0)
        return -1;
    return oa_testpki_target_new(&pki, NULL, &target);
}

static int group_teardown(void **state)
{
    (void)state;
    oa_ocsp_target_free(target);
    oa_testpki_rmdir(dir);
    oa_testpki_free(&pki);
    return 0;
}

/* The default response of these tests: GOOD from the CA, thisUpdate/producedAt a minute before now, nextUpdate in
 * an hour. */
static void opts_init(oa_testpki_resp_opts_t *o)
{
    oa_testpki_resp_opts_init(o, &pki);
    o->now = now;
}

static void build(const oa_testpki_resp_opts_t *o, unsigned char **der, size_t *len)
{
    *der = NULL;
    *len = 0;
    assert_int_equal(oa_testpki_response(o, der, len), 0);
    assert_non_null(*der);
    assert_true(*len > 0);
}

static void verify_der_fails(const oa_ocsp_target_t *t, const unsigned char *der, size_t len, OCSP_REQUEST *req,
                             oa_errcode_t code, const char *part)
{
    oa_ocsp_result_t res;
    oa_error_t err;

    memset(&res, 0, sizeof(res));
    oa_error_clear(&err);
    if (oa_ocsp_verify(t, der, len, req, now, &res, &err) != -1)
        fail_msg("verification succeeded; expected %s", oa_errcode_name(code));
    if (err.code != code)
        fail_msg("error %s (%s); expected %s", oa_errcode_name(err.code), err.text, oa_errcode_name(code));
    if (part != NULL && strstr(err.text, part) == NULL)
        fail_msg("error text \"%s\" does not contain \"%s\"", err.text, part);
    /* A failed verification leaves the result alone. */
    assert_null(res.der);
    assert_int_equal(res.this_update, 0);
}

static void verify_fails(const oa_testpki_resp_opts_t *o, OCSP_REQUEST *req, oa_errcode_t code, const char *part)
{
    unsigned char *der;
    size_t len;

    build(o, &der, &len);
    verify_der_fails(target, der, len, req, code, part);
    free(der);
}

/* Verifies what o describes, asserts success, that the result carries o's status and times exactly and a copy of
 * the DER. The caller clears res. */
static void verify_ok_t(const oa_ocsp_target_t *t, const oa_testpki_resp_opts_t *o, OCSP_REQUEST *req,
                        oa_ocsp_result_t *res)
{
    unsigned char *der;
    size_t len;
    oa_error_t err;

    build(o, &der, &len);
    memset(res, 0, sizeof(*res));
    oa_error_clear(&err);
    if (oa_ocsp_verify(t, der, len, req, now, res, &err) != 0)
        fail_msg("verification failed: %s (%s)", oa_errcode_name(err.code), err.text);
    assert_int_equal(res->cert_status, o->cert_status == V_OCSP_CERTSTATUS_GOOD      ? OA_CERT_GOOD
                                       : o->cert_status == V_OCSP_CERTSTATUS_REVOKED ? OA_CERT_REVOKED
                                                                                     : OA_CERT_UNKNOWN);
    assert_int_equal(res->this_update, now + o->this_update_offset);
    assert_int_equal(res->produced_at, now + o->produced_at_offset);
    assert_int_equal(res->next_update, o->has_next_update ? now + o->next_update_offset : 0);
    if (o->cert_status == V_OCSP_CERTSTATUS_REVOKED) {
        assert_int_equal(res->revocation_time, o->revocation_time);
        assert_int_equal(res->revocation_reason, o->revocation_reason);
    } else {
        assert_int_equal(res->revocation_time, 0);
        assert_int_equal(res->revocation_reason, -1);
    }
    assert_int_equal(res->der_len, len);
    assert_ptr_not_equal(res->der, der);
    assert_memory_equal(res->der, der, len);
    free(der);
}

static void verify_ok(const oa_testpki_resp_opts_t *o, OCSP_REQUEST *req)
{
    oa_ocsp_result_t res;

    verify_ok_t(target, o, req, &res);
    oa_ocsp_result_clear(&res);
}

static OCSP_REQUEST *new_request(bool with_nonce)
{
    OCSP_REQUEST *req = NULL;
    oa_error_t err;

    assert_int_equal(oa_ocsp_request_new(target, with_nonce, &req, &err), 0);
    return req;
}

/* --- accepted answers --- */

static void test_good_ca_signer(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    verify_ok(&o, NULL);
    /* The CA's certificate need not travel with the response: the target's chain holds it. */
    o.include_signer_cert = false;
    verify_ok(&o, NULL);
    o.respid_by_key = true;
    verify_ok(&o, NULL);
}

static void test_good_delegated_signer(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.signer_key = pki.responder.key;
    o.signer_cert = pki.responder.cert;
    o.this_update_offset = -7200;
    o.produced_at_offset = -30;
    o.next_update_offset = 86400;
    verify_ok(&o, NULL);
    o.respid_by_key = true;
    verify_ok(&o, NULL);
}

static void test_revoked(void **state)
{
    oa_testpki_resp_opts_t o;
    oa_ocsp_result_t res;

    (void)state;
    opts_init(&o);
    o.cert_status = V_OCSP_CERTSTATUS_REVOKED;
    o.revocation_time = now - 3 * 86400 - 17;
    o.revocation_reason = OCSP_REVOKED_STATUS_KEYCOMPROMISE;
    verify_ok_t(target, &o, NULL, &res);
    assert_int_equal(res.cert_status, OA_CERT_REVOKED);
    assert_int_equal(res.revocation_time, now - 3 * 86400 - 17);
    assert_int_equal(res.revocation_reason, OCSP_REVOKED_STATUS_KEYCOMPROMISE);
    oa_ocsp_result_clear(&res);

    /* Revoked without a reason: the reason is -1, not 0 (unspecified). */
    o.revocation_reason = -1;
    o.signer_key = pki.responder.key;
    o.signer_cert = pki.responder.cert;
    verify_ok_t(target, &o, NULL, &res);
    assert_int_equal(res.revocation_reason, -1);
    oa_ocsp_result_clear(&res);
}

static void test_unknown(void **state)
{
    oa_testpki_resp_opts_t o;
    oa_ocsp_result_t res;

    (void)state;
    opts_init(&o);
    o.cert_status = V_OCSP_CERTSTATUS_UNKNOWN;
    verify_ok_t(target, &o, NULL, &res);
    assert_int_equal(res.cert_status, OA_CERT_UNKNOWN);
    oa_ocsp_result_clear(&res);
}

static void test_sha256_certid_accepted(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.certid_md = EVP_sha256();
    verify_ok(&o, NULL);
}

/* The issuer may be an intermediate: it is the trust anchor, and the root above it is neither needed nor enough. */
static void test_intermediate_issuer(void **state)
{
    oa_testpki_ident_t sub = {0}, leaf = {0}, resp = {0};
    oa_ocsp_target_t *t = NULL;
    oa_testpki_resp_opts_t o;
    oa_ocsp_result_t res;
    char path[512];
    oa_error_t err;
    unsigned char *der;
    size_t len;

    (void)state;
    assert_int_equal(oa_testpki_subca_new(&pki.ca, "Test Intermediate", &sub), 0);
    assert_int_equal(oa_testpki_leaf_new(&sub, "inner.test", 0x77, NULL, &leaf), 0);
    assert_int_equal(oa_testpki_responder_new(&sub, "Intermediate Responder", true, &resp), 0);
    oa_testpki_path(path, sizeof(path), dir, "inner-chain.pem");
    assert_int_equal(oa_testpki_write_certs(path, leaf.cert, sub.cert, (X509 *)NULL), 0);
    assert_int_equal(oa_ocsp_target_load(path, NULL, NULL, &t, &err), 0);

    opts_init(&o);
    o.cert = leaf.cert;
    o.issuer = sub.cert;
    o.signer_key = sub.key;
    o.signer_cert = sub.cert;
    verify_ok_t(t, &o, NULL, &res);
    oa_ocsp_result_clear(&res);
    o.signer_key = resp.key;
    o.signer_cert = resp.cert;
    verify_ok_t(t, &o, NULL, &res);
    oa_ocsp_result_clear(&res);

    /* The root signing for the intermediate's certificate is not the issuer and not a delegate of it. */
    o.signer_key = pki.ca.key;
    o.signer_cert = pki.ca.cert;
    build(&o, &der, &len);
    verify_der_fails(t, der, len, NULL, OA_E_OCSP_SIGNATURE, NULL);
    free(der);

    oa_ocsp_target_free(t);
    oa_testpki_ident_free(&resp);
    oa_testpki_ident_free(&leaf);
    oa_testpki_ident_free(&sub);
}

/* --- malformed --- */

static void test_garbage(void **state)
{
    static const unsigned char junk[] = "HTTP/1.1 200 OK\r\n\r\n<html>not ocsp</html>";
    static const unsigned char zeros[64] = {0};

    (void)state;
    verify_der_fails(target, junk, sizeof(junk) - 1, NULL, OA_E_OCSP_MALFORMED, "not a DER OCSPResponse");
    verify_der_fails(target, zeros, sizeof(zeros), NULL, OA_E_OCSP_MALFORMED, "not a DER OCSPResponse");
    verify_der_fails(target, junk, 0, NULL, OA_E_OCSP_MALFORMED, "empty");
}

static void test_truncated(void **state)
{
    oa_testpki_resp_opts_t o;
    unsigned char *der;
    size_t len;

    (void)state;
    opts_init(&o);
    build(&o, &der, &len);
    verify_der_fails(target, der, len - 1, NULL, OA_E_OCSP_MALFORMED, "not a DER OCSPResponse");
    verify_der_fails(target, der, len / 2, NULL, OA_E_OCSP_MALFORMED, "not a DER OCSPResponse");
    verify_der_fails(target, der, 2, NULL, OA_E_OCSP_MALFORMED, "not a DER OCSPResponse");
    free(der);
}

static void test_trailing_bytes(void **state)
{
    static const unsigned char tail[] = {0x00, 0x0d, 0x0a};
    oa_testpki_resp_opts_t o;
    unsigned char *der;
    size_t len;

    (void)state;
    opts_init(&o);
    build(&o, &der, &len);
    assert_int_equal(oa_testpki_der_append(&der, &len, tail, sizeof(tail)), 0);
    verify_der_fails(target, der, len, NULL, OA_E_OCSP_MALFORMED, "3 trailing bytes");
    free(der);
}

static void test_unsuccessful_statuses(void **state)
{
    static const struct {
        int status;
        const char *name;
    } cases[] = {
        {OCSP_RESPONSE_STATUS_MALFORMEDREQUEST, "malformedrequest"},
        {OCSP_RESPONSE_STATUS_INTERNALERROR, "internalerror"},
        {OCSP_RESPONSE_STATUS_TRYLATER, "trylater"},
        {OCSP_RESPONSE_STATUS_SIGREQUIRED, "sigrequired"},
        {OCSP_RESPONSE_STATUS_UNAUTHORIZED, "unauthorized"},
    };
    oa_testpki_resp_opts_t o;
    char expect[64];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        opts_init(&o);
        o.response_status = cases[i].status;
        snprintf(expect, sizeof(expect), "answered %s (%d)", cases[i].name, cases[i].status);
        verify_fails(&o, NULL, OA_E_OCSP_UNSUCCESSFUL, expect);
    }
}

/* --- signature --- */

static void test_unrelated_ca_signer(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.signer_key = pki.other_ca.key;
    o.signer_cert = pki.other_ca.cert;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "not signed by the issuer");
    /* Without its certificate the signer cannot even be found. */
    o.include_signer_cert = false;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "not signed by the issuer");
}

static void test_delegated_without_eku(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.signer_key = pki.responder_noeku.key;
    o.signer_cert = pki.responder_noeku.cert;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "missing ocspsigning usage");
}

static void test_delegated_from_other_ca(void **state)
{
    oa_testpki_resp_opts_t o;
    STACK_OF(X509) *extra;

    (void)state;
    opts_init(&o);
    o.signer_key = pki.other_responder.key;
    o.signer_cert = pki.other_responder.cert;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "unable to get local issuer certificate");
    /* Shipping the other CA along does not make it trusted. */
    extra = sk_X509_new_null();
    assert_non_null(extra);
    assert_int_not_equal(sk_X509_push(extra, pki.other_ca.cert), 0);
    o.extra_certs = extra;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "not signed by the issuer");
    sk_X509_free(extra);
}

static void test_delegated_cert_missing(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.signer_key = pki.responder.key;
    o.signer_cert = pki.responder.cert;
    o.include_signer_cert = false;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "not signed by the issuer");
}

static void test_tampered_signature(void **state)
{
    oa_testpki_resp_opts_t o;
    unsigned char *der;
    size_t len;

    (void)state;
    opts_init(&o);
    /* Without certificates the signature's last byte is the last byte of the DER. */
    o.include_signer_cert = false;
    build(&o, &der, &len);
    der[len - 1] ^= 0x01;
    verify_der_fails(target, der, len, NULL, OA_E_OCSP_SIGNATURE, "not signed by the issuer");
    free(der);
}

/* The responder's certificate is judged at the caller's `now`, like the response: ten years on, it has expired. */
static void test_signer_checked_at_now(void **state)
{
    oa_testpki_resp_opts_t o;
    time_t saved = now;

    (void)state;
    now += 3651L * 86400;
    opts_init(&o);
    o.signer_key = pki.responder.key;
    o.signer_cert = pki.responder.cert;
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "certificate has expired");
    /* Before the certificates existed, none of them is valid yet. */
    now = saved - 2 * 86400;
    opts_init(&o);
    verify_fails(&o, NULL, OA_E_OCSP_SIGNATURE, "certificate is not yet valid");
    now = saved;
}

/* --- CertID --- */

static void test_other_serial(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.other_serial = LEAF_SERIAL + 1;
    verify_fails(&o, NULL, OA_E_OCSP_CERTID, "no answer for serial 51A7");
}

/* --- times --- */

static void test_expired(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.this_update_offset = -86400;
    o.produced_at_offset = -86400;
    o.next_update_offset = -LEEWAY - 1;
    verify_fails(&o, NULL, OA_E_OCSP_EXPIRED, "nextUpdate was 301 seconds ago");
    o.next_update_offset = -7200;
    verify_fails(&o, NULL, OA_E_OCSP_EXPIRED, "nextUpdate was 7200 seconds ago");
}

static void test_expired_within_leeway(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.this_update_offset = -86400;
    o.next_update_offset = -LEEWAY + 1;
    verify_ok(&o, NULL);
    o.next_update_offset = -LEEWAY;
    verify_ok(&o, NULL);
}

static void test_not_yet_valid(void **state)
{
    oa_testpki_resp_opts_t o;

    (void)state;
    opts_init(&o);
    o.this_update_offset = LEEWAY + 1;
    o.next_update_offset = 3600;
    verify_fails(&o, NULL, OA_E_OCSP_NOT_YET_VALID, "thisUpdate is 301 seconds in the future");
    /* Within the leeway a responder's fast clock is forgiven. */
    o.this_update_offset = LEEWAY - 1;
    verify_ok(&o, NULL);
    o.this_update_offset = LEEWAY;
    verify_ok(&o, NULL);
}

static void test_no_next_update(void **state)
{
    oa_testpki_resp_opts_t o;
    oa_ocsp_result_t res;

    (void)state;
    opts_init(&o);
    o.has_next_update = false;
    o.this_update_offset = -30 * 86400;
    verify_ok_t(target, &o, NULL, &res);
    assert_int_equal(res.next_update, 0);
    assert_int_equal(res.this_update, now - 30 * 86400);
    oa_ocsp_result_clear(&res);
}

/* --- nonce --- */

static void test_nonce(void **state)
{
    oa_testpki_resp_opts_t o;
    OCSP_REQUEST *req, *plain;

    (void)state;
    req = new_request(true);
    plain = new_request(false);
    opts_init(&o);
    o.req = req;

    o.nonce = OA_TESTPKI_NONCE_COPY;
    verify_ok(&o, req);
    o.nonce = OA_TESTPKI_NONCE_WRONG;
    verify_fails(&o, req, OA_E_OCSP_NONCE, "nonce differs");
    /* Many responders pre-sign their answers and echo no nonce; that is allowed. */
    o.nonce = OA_TESTPKI_NONCE_NONE;
    verify_ok(&o, req);
    /* A nonce we did not ask for, or no request to compare with, proves nothing either way. */
    o.nonce = OA_TESTPKI_NONCE_WRONG;
    verify_ok(&o, plain);
    verify_ok(&o, NULL);
    /* Another request's nonce is a mismatch too. */
    o.nonce = OA_TESTPKI_NONCE_COPY;
    o.req = new_request(true);
    verify_fails(&o, req, OA_E_OCSP_NONCE, "nonce differs");
    OCSP_REQUEST_free(o.req);

    OCSP_REQUEST_free(plain);
    OCSP_REQUEST_free(req);
}

/* --- order of the checks --- */

static void test_first_failure_reported(void **state)
{
    oa_testpki_resp_opts_t o;
    OCSP_REQUEST *req;

    (void)state;
    req = new_request(true);
    opts_init(&o);
    /* Expired, wrong nonce and another serial: the CertID is checked first. */
    o.next_update_offset = -86400;
    o.this_update_offset = -2 * 86400;
    o.nonce = OA_TESTPKI_NONCE_WRONG;
    o.other_serial = 0x99;
    verify_fails(&o, req, OA_E_OCSP_CERTID, NULL);
    /* The right serial, still expired with a wrong nonce: times come before the nonce. */
    o.other_serial = 0;
    verify_fails(&o, req, OA_E_OCSP_EXPIRED, NULL);
    /* Signed by a stranger on top of it all: the signature comes before everything else. */
    o.signer_key = pki.other_ca.key;
    o.signer_cert = pki.other_ca.cert;
    verify_fails(&o, req, OA_E_OCSP_SIGNATURE, NULL);
    OCSP_REQUEST_free(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_ca_signer),
        cmocka_unit_test(test_good_delegated_signer),
        cmocka_unit_test(test_revoked),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_sha256_certid_accepted),
        cmocka_unit_test(test_intermediate_issuer),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_trailing_bytes),
        cmocka_unit_test(test_unsuccessful_statuses),
        cmocka_unit_test(test_unrelated_ca_signer),
        cmocka_unit_test(test_delegated_without_eku),
        cmocka_unit_test(test_delegated_from_other_ca),
        cmocka_unit_test(test_delegated_cert_missing),
        cmocka_unit_test(test_tampered_signature),
        cmocka_unit_test(test_signer_checked_at_now),
        cmocka_unit_test(test_other_serial),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_expired_within_leeway),
        cmocka_unit_test(test_not_yet_valid),
        cmocka_unit_test(test_no_next_update),
        cmocka_unit_test(test_nonce),
        cmocka_unit_test(test_first_failure_reported),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
