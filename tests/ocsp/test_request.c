/*
 * What to ask: loading the target from PEM files (oa_ocsp_target_load) and building the OCSP request for it, plus
 * the small result helpers. Every certificate is made at test time by testpki.
 */
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "oa_ocsp.h"
#include "testpki.h"

#define LEAF_SERIAL 0x1001
#define AIA_URL "http://ocsp.test:8080/ocsp"
#define OVERRIDE_URL "http://127.0.0.1:9999/override"

typedef struct fixture_s {
    oa_testpki_t pki;        /* leaf with AIA */
    oa_testpki_t pki_noaia;  /* leaf without AIA */
    char dir[OA_TESTPKI_DIR_MAX];
    char noaia_dir[OA_TESTPKI_DIR_MAX];
} fixture_t;

static fixture_t fx;

static char path_buf[8][512];
static int path_next;

/* A path in the fixture's directory; a small ring of buffers lets several appear in one call. */
static const char *fpath(const char *dir, const char *name)
{
    char *buf = path_buf[path_next++ % 8];

    return oa_testpki_path(buf, sizeof(path_buf[0]), dir, name);
}

static int group_setup(void **state)
{
    (void)state;
    if (oa_testpki_init(&fx.pki, LEAF_SERIAL, AIA_URL) != 0 || oa_testpki_init(&fx.pki_noaia, 0x2002, NULL) != 0)
        return -1;
    if (oa_testpki_tmpdir(fx.dir) != 0 || oa_testpki_write_dir(&fx.pki, fx.dir) != 0)
        return -1;
    if (oa_testpki_tmpdir(fx.noaia_dir) != 0 || oa_testpki_write_dir(&fx.pki_noaia, fx.noaia_dir) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    oa_testpki_rmdir(fx.dir);
    oa_testpki_rmdir(fx.noaia_dir);
    oa_testpki_free(&fx.pki);
    oa_testpki_free(&fx.pki_noaia);
    return 0;
}

static void assert_text_has(const oa_error_t *err, const char *part)
{
    if (strstr(err->text, part) == NULL)
        fail_msg("error text \"%s\" does not contain \"%s\"", err->text, part);
}

static oa_ocsp_target_t *load_ok(const char *cert, const char *issuer, const char *override)
{
    oa_ocsp_target_t *t = NULL;
    oa_error_t err;

    oa_error_clear(&err);
    if (oa_ocsp_target_load(cert, issuer, override, &t, &err) != 0)
        fail_msg("target load failed: %s", err.text);
    assert_non_null(t);
    assert_int_equal(err.code, OA_OK);
    return t;
}

static void load_fails(const char *cert, const char *issuer, const char *override, oa_errcode_t code,
                       const char *part1, const char *part2)
{
    oa_ocsp_target_t *t = NULL;
    oa_error_t err;

    oa_error_clear(&err);
    assert_int_equal(oa_ocsp_target_load(cert, issuer, override, &t, &err), -1);
    assert_null(t);
    assert_int_equal(err.code, code);
    assert_text_has(&err, part1);
    if (part2 != NULL)
        assert_text_has(&err, part2);
}

/* --- target loading --- */

static void test_target_chain_in_one_file(void **state)
{
    oa_ocsp_target_t *t;

    (void)state;
    t = load_ok(fpath(fx.dir, "leaf-chain.pem"), NULL, NULL);
    assert_int_equal(X509_cmp(t->cert, fx.pki.leaf.cert), 0);
    assert_int_equal(X509_cmp(t->issuer, fx.pki.ca.cert), 0);
    assert_int_equal(sk_X509_num(t->chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(t->chain, 0), fx.pki.ca.cert), 0);
    assert_string_equal(t->aia_url, AIA_URL);
    assert_string_equal(t->responder_url, AIA_URL);
    assert_string_equal(t->subject, "CN=proxy.test,O=ocsp-agent tests");
    assert_string_equal(t->serial_hex, "1001");
    oa_ocsp_target_free(t);
}

static void test_target_cert_and_issuer_file(void **state)
{
    oa_ocsp_target_t *t;

    (void)state;
    t = load_ok(fpath(fx.dir, "leaf.pem"), fpath(fx.dir, "ca.pem"), NULL);
    assert_int_equal(X509_cmp(t->cert, fx.pki.leaf.cert), 0);
    assert_int_equal(X509_cmp(t->issuer, fx.pki.ca.cert), 0);
    assert_int_equal(sk_X509_num(t->chain), 1);
    assert_int_equal(X509_cmp(sk_X509_value(t->chain, 0), fx.pki.ca.cert), 0);
    assert_string_equal(t->responder_url, AIA_URL);
    oa_ocsp_target_free(t);
}

/* The chain file plus --issuer: the issuer file wins, and every certificate of both files is a chain candidate. */
static void test_target_issuer_file_wins(void **state)
{
    char extra[512];
    oa_ocsp_target_t *t;

    (void)state;
    oa_testpki_path(extra, sizeof(extra), fx.dir, "leaf-resp-ca.pem");
    assert_int_equal(oa_testpki_write_certs(extra, fx.pki.leaf.cert, fx.pki.responder.cert, (X509 *)NULL), 0);
    t = load_ok(extra, fpath(fx.dir, "ca.pem"), NULL);
    assert_int_equal(X509_cmp(t->issuer, fx.pki.ca.cert), 0);
    assert_int_equal(sk_X509_num(t->chain), 2);
    assert_int_equal(X509_cmp(sk_X509_value(t->chain, 0), fx.pki.responder.cert), 0);
    assert_int_equal(X509_cmp(sk_X509_value(t->chain, 1), fx.pki.ca.cert), 0);
    oa_ocsp_target_free(t);

    /* A right issuer second in the file does not rescue a wrong --issuer. */
    load_fails(fpath(fx.dir, "leaf-chain.pem"), fpath(fx.dir, "other-ca.pem"), NULL, OA_E_BAD_FILE, "other-ca.pem",
               "did not issue");
}

static void test_target_missing_issuer(void **state)
{
    (void)state;
    load_fails(fpath(fx.dir, "leaf.pem"), NULL, NULL, OA_E_BAD_FILE, "leaf.pem",
               "no issuer certificate: the file holds one certificate and --issuer was not given");
}

static void test_target_wrong_issuer(void **state)
{
    oa_testpki_ident_t twin = {0};
    char twin_path[512];

    (void)state;
    load_fails(fpath(fx.dir, "leaf.pem"), fpath(fx.dir, "other-ca.pem"), NULL, OA_E_BAD_FILE, "other-ca.pem",
               "did not issue");
    /* The second certificate of the file is the wrong one. */
    oa_testpki_path(twin_path, sizeof(twin_path), fx.dir, "leaf-other.pem");
    assert_int_equal(oa_testpki_write_certs(twin_path, fx.pki.leaf.cert, fx.pki.other_ca.cert, (X509 *)NULL), 0);
    load_fails(twin_path, NULL, NULL, OA_E_BAD_FILE, "leaf-other.pem", "did not issue");

    /* A CA with the very same name but another key is caught too. */
    assert_int_equal(oa_testpki_ca_new("Test CA", &twin), 0);
    oa_testpki_path(twin_path, sizeof(twin_path), fx.dir, "twin-ca.pem");
    assert_int_equal(oa_testpki_write_certs(twin_path, twin.cert, (X509 *)NULL), 0);
    load_fails(fpath(fx.dir, "leaf.pem"), twin_path, NULL, OA_E_BAD_FILE, "twin-ca.pem", "did not issue");
    oa_testpki_ident_free(&twin);
}

static void test_target_missing_file(void **state)
{
    (void)state;
    load_fails(fpath(fx.dir, "absent.pem"), NULL, NULL, OA_E_BAD_FILE, "absent.pem", "cannot read");
    load_fails(fpath(fx.dir, "leaf.pem"), fpath(fx.dir, "absent-issuer.pem"), NULL, OA_E_BAD_FILE,
               "absent-issuer.pem", "cannot read");
}

static void test_target_no_certificate(void **state)
{
    static const char text[] = "this is not a certificate\n";
    char p[512];

    (void)state;
    oa_testpki_path(p, sizeof(p), fx.dir, "text.pem");
    assert_int_equal(oa_testpki_write_file(p, text, strlen(text)), 0);
    load_fails(p, NULL, NULL, OA_E_BAD_FILE, "text.pem", "no certificate in the file");
    /* An empty file, and a key without a certificate. */
    oa_testpki_path(p, sizeof(p), fx.dir, "empty.pem");
    assert_int_equal(oa_testpki_write_file(p, "", 0), 0);
    load_fails(p, NULL, NULL, OA_E_BAD_FILE, "empty.pem", "no certificate in the file");
    load_fails(fpath(fx.dir, "leaf.pem"), fpath(fx.dir, "ca.key"), NULL, OA_E_BAD_FILE, "ca.key",
               "no certificate in the file");
}

static void test_target_damaged_certificate(void **state)
{
    static const char damaged[] = "-----BEGIN CERTIFICATE-----\nMIIB!!!!notbase64\n-----END CERTIFICATE-----\n";
    char p[512];

    (void)state;
    oa_testpki_path(p, sizeof(p), fx.dir, "damaged.pem");
    assert_int_equal(oa_testpki_write_file(p, damaged, strlen(damaged)), 0);
    load_fails(p, NULL, NULL, OA_E_BAD_FILE, "damaged.pem", "cannot be read");
}

static void test_target_override(void **state)
{
    oa_ocsp_target_t *t;

    (void)state;
    t = load_ok(fpath(fx.dir, "leaf-chain.pem"), NULL, OVERRIDE_URL);
    assert_string_equal(t->aia_url, AIA_URL);
    assert_string_equal(t->responder_url, OVERRIDE_URL);
    oa_ocsp_target_free(t);

    load_fails(fpath(fx.dir, "leaf-chain.pem"), NULL, "https://ocsp.test/", OA_E_BAD_OPTION, "--responder-url",
               "https://ocsp.test/");
    load_fails(fpath(fx.dir, "leaf-chain.pem"), NULL, "http://", OA_E_BAD_OPTION, "not an http:// URL", NULL);
}

static void test_target_no_aia(void **state)
{
    oa_ocsp_target_t *t;

    (void)state;
    t = load_ok(fpath(fx.noaia_dir, "leaf-chain.pem"), NULL, NULL);
    assert_null(t->aia_url);
    assert_null(t->responder_url);
    assert_string_equal(t->serial_hex, "2002");
    oa_ocsp_target_free(t);

    t = load_ok(fpath(fx.noaia_dir, "leaf-chain.pem"), NULL, OVERRIDE_URL);
    assert_null(t->aia_url);
    assert_string_equal(t->responder_url, OVERRIDE_URL);
    oa_ocsp_target_free(t);
}

/* --- the request --- */

/* The nonce extension's value: OpenSSL wraps the random bytes in an OCTET STRING inside the extension's own. */
static const ASN1_OCTET_STRING *request_nonce(OCSP_REQUEST *req)
{
    int idx = OCSP_REQUEST_get_ext_by_NID(req, NID_id_pkix_OCSP_Nonce, -1);

    if (idx < 0)
        return NULL;
    return X509_EXTENSION_get_data(OCSP_REQUEST_get_ext(req, idx));
}

static void test_request_certid(void **state)
{
    oa_ocsp_target_t *t;
    OCSP_REQUEST *req = NULL;
    OCSP_CERTID *expect;
    OCSP_CERTID *id;
    ASN1_OBJECT *md = NULL;
    ASN1_INTEGER *serial = NULL;
    ASN1_OCTET_STRING *name_hash = NULL, *key_hash = NULL;
    oa_error_t err;

    (void)state;
    t = load_ok(fpath(fx.dir, "leaf-chain.pem"), NULL, NULL);
    assert_int_equal(oa_ocsp_request_new(t, false, &req, &err), 0);
    assert_non_null(req);
    assert_int_equal(OCSP_request_onereq_count(req), 1);
    id = OCSP_onereq_get0_id(OCSP_request_onereq_get0(req, 0));
    assert_int_equal(OCSP_id_get0_info(&name_hash, &md, &key_hash, &serial, id), 1);
    assert_int_equal(OBJ_obj2nid(md), NID_sha1);
    assert_int_equal(ASN1_INTEGER_get(serial), LEAF_SERIAL);
    assert_int_equal(ASN1_STRING_length(name_hash), 20);
    assert_int_equal(ASN1_STRING_length(key_hash), 20);
    expect = OCSP_cert_to_id(EVP_sha1(), fx.pki.leaf.cert, fx.pki.ca.cert);
    assert_int_equal(OCSP_id_cmp(expect, id), 0);
    OCSP_CERTID_free(expect);
    /* A CertID under another issuer must not compare equal, or the comparison above proves nothing. */
    expect = OCSP_cert_to_id(EVP_sha1(), fx.pki.leaf.cert, fx.pki.other_ca.cert);
    assert_int_not_equal(OCSP_id_cmp(expect, id), 0);
    OCSP_CERTID_free(expect);

    assert_null(request_nonce(req));
    OCSP_REQUEST_free(req);
    oa_ocsp_target_free(t);
}

static void test_request_nonce(void **state)
{
    oa_ocsp_target_t *t;
    OCSP_REQUEST *a = NULL, *b = NULL;
    const ASN1_OCTET_STRING *na, *nb;
    oa_error_t err;

    (void)state;
    t = load_ok(fpath(fx.dir, "leaf-chain.pem"), NULL, NULL);
    assert_int_equal(oa_ocsp_request_new(t, true, &a, &err), 0);
    assert_int_equal(oa_ocsp_request_new(t, true, &b, &err), 0);
    assert_int_equal(OCSP_request_onereq_count(a), 1);
    na = request_nonce(a);
    nb = request_nonce(b);
    assert_non_null(na);
    assert_non_null(nb);
    /* 04 10 followed by 16 random bytes. */
    assert_int_equal(ASN1_STRING_length(na), 18);
    assert_int_equal(ASN1_STRING_get0_data(na)[0], 0x04);
    assert_int_equal(ASN1_STRING_get0_data(na)[1], 16);
    assert_int_equal(ASN1_STRING_length(nb), 18);
    assert_memory_not_equal(ASN1_STRING_get0_data(na), ASN1_STRING_get0_data(nb), 18);
    OCSP_REQUEST_free(a);
    OCSP_REQUEST_free(b);
    oa_ocsp_target_free(t);
}

/* --- the small helpers --- */

static void test_status_names(void **state)
{
    (void)state;
    assert_string_equal(oa_cert_status_name(OA_CERT_GOOD), "GOOD");
    assert_string_equal(oa_cert_status_name(OA_CERT_REVOKED), "REVOKED");
    assert_string_equal(oa_cert_status_name(OA_CERT_UNKNOWN), "UNKNOWN");
}

static void test_result_copy_clear(void **state)
{
    static const unsigned char bytes[] = {0x30, 0x03, 0x0a, 0x01, 0x00};
    oa_ocsp_result_t src, dst;

    (void)state;
    memset(&src, 0, sizeof(src));
    src.cert_status = OA_CERT_REVOKED;
    src.produced_at = 1000;
    src.this_update = 1001;
    src.next_update = 1002;
    src.revocation_time = 900;
    src.revocation_reason = OCSP_REVOKED_STATUS_KEYCOMPROMISE;
    src.der = malloc(sizeof(bytes));
    assert_non_null(src.der);
    memcpy(src.der, bytes, sizeof(bytes));
    src.der_len = sizeof(bytes);

    assert_int_equal(oa_ocsp_result_copy(&dst, &src), 0);
    assert_ptr_not_equal(dst.der, src.der);
    assert_int_equal(dst.der_len, sizeof(bytes));
    assert_memory_equal(dst.der, bytes, sizeof(bytes));
    assert_int_equal(dst.cert_status, OA_CERT_REVOKED);
    assert_int_equal(dst.produced_at, 1000);
    assert_int_equal(dst.this_update, 1001);
    assert_int_equal(dst.next_update, 1002);
    assert_int_equal(dst.revocation_time, 900);
    assert_int_equal(dst.revocation_reason, OCSP_REVOKED_STATUS_KEYCOMPROMISE);

    oa_ocsp_result_clear(&src);
    assert_null(src.der);
    assert_int_equal(src.der_len, 0);
    assert_int_equal(src.this_update, 0);
    assert_int_equal(src.revocation_time, 0);
    /* The copy survives the original. */
    assert_memory_equal(dst.der, bytes, sizeof(bytes));
    oa_ocsp_result_clear(&dst);
    oa_ocsp_result_clear(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_target_chain_in_one_file),
        cmocka_unit_test(test_target_cert_and_issuer_file),
        cmocka_unit_test(test_target_issuer_file_wins),
        cmocka_unit_test(test_target_missing_issuer),
        cmocka_unit_test(test_target_wrong_issuer),
        cmocka_unit_test(test_target_missing_file),
        cmocka_unit_test(test_target_no_certificate),
        cmocka_unit_test(test_target_damaged_certificate),
        cmocka_unit_test(test_target_override),
        cmocka_unit_test(test_target_no_aia),
        cmocka_unit_test(test_request_certid),
        cmocka_unit_test(test_request_nonce),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_result_copy_clear),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
