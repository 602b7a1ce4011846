/*
 * The HAProxy <crt>.ocsp file target (engine/haproxy_crt.c) on a real libuv loop, with real OCSP responses built by
 * testpki: the file holds the DER of a staple HAProxy takes, and is empty after a removal or for a response HAProxy
 * would refuse. Every wait is bounded.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "target_harness.h"

/* A loop, a delivery, and the file target for crt. */
static void ctx_init(ctx_t *c, const char *crt)
{
    oa_error_t err;

    ctx_start(c);
    if (oa_delivery_add_haproxy_crt(c->d, crt, &err) != 0)
        fail_msg("oa_delivery_add_haproxy_crt: %s", err.text);
}

/* ---- what the delivery and the hooks tell ---- */

/* The whole file at path into out; asserts it exists. */
static void read_file(const char *path, oa_buf_t *out)
{
    oa_buf_init(out);
    assert_int_equal(oa_file_read(path, 1 << 20, out), 0);
}

static void assert_file_is(const char *path, const void *data, size_t len)
{
    struct stat st;
    oa_buf_t b;

    read_file(path, &b);
    assert_int_equal(b.len, len);
    if (len > 0)
        assert_memory_equal(b.data, data, len);
    oa_buf_free(&b);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
}

static void assert_state(const ctx_t *c, const char *state, const char *error_part)
{
    char st[32], le[OA_DTARGET_ERROR_MAX];

    target_status(c, st, le, NULL);
    assert_string_equal(st, state);
    if (error_part == NULL)
        assert_string_equal(le, "");
    else if (strstr(le, error_part) == NULL)
        fail_msg("last_error \"%s\" lacks \"%s\"", le, error_part);
}

static void test_constructor_checks(void **state)
{
    oa_delivery_options_t o = {.node_id = "n", .staple_path = "/x/ocsp.der"};
    char crt[700], name[700], st[32], le[OA_DTARGET_ERROR_MAX], sub[512];
    oa_delivery_t *d;
    uv_loop_t loop;
    oa_error_t err;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_delivery_new(&loop, &o, &d), 0);
    assert_int_equal(oa_delivery_add_haproxy_crt(d, "/nonexistent/dir/proxy.pem", &err), -1);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    assert_string_equal(err.text,
                        "--haproxy-crt: /nonexistent/dir/proxy.pem: directory /nonexistent/dir: No such file or directory");
    snprintf(crt, sizeof(crt), "%s/proxy.pem/x.pem", dir);
    assert_int_equal(oa_testpki_write_file(in_dir(0, "proxy.pem"), "x", 1), 0);
    assert_int_equal(oa_delivery_add_haproxy_crt(d, crt, &err), -1);
    assert_non_null(strstr(err.text, "--haproxy-crt: "));
    assert_non_null(strstr(err.text, "is not a directory"));
    if (geteuid() != 0) { /* root writes anywhere: the mode bits prove nothing then */
        snprintf(sub, sizeof(sub), "%s/ro", dir);
        assert_int_equal(mkdir(sub, 0555), 0);
        snprintf(crt, sizeof(crt), "%s/proxy.pem", sub);
        assert_int_equal(oa_delivery_add_haproxy_crt(d, crt, &err), -1);
        assert_non_null(strstr(err.text, "is not writable"));
        assert_int_equal(rmdir(sub), 0);
    }
    assert_int_equal(oa_delivery_target_count(d), 0);

    snprintf(crt, sizeof(crt), "%s/proxy.pem", dir);
    assert_int_equal(oa_delivery_add_haproxy_crt(d, crt, &err), 0);
    assert_int_equal(oa_delivery_target_count(d), 1);
    {
        ctx_t fake = {.d = d};

        target_status(&fake, st, le, name);
    }
    snprintf(crt, sizeof(crt), "file:%s/proxy.pem.ocsp", dir);
    assert_string_equal(name, crt);
    assert_string_equal(st, "pending");
    oa_delivery_close(d, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Leftover temporary files of the .ocsp file are removed at start-up: ours, and those of dead processes; a live
 * process's write in progress and unrelated files are kept. */
static void test_stale_temp_files(void **state)
{
    char ours[64], dead[64], live[64], crt[512];
    ctx_t c;

    (void)state;
    snprintf(ours, sizeof(ours), "proxy.pem.ocsp.tmp.%ld", (long)getpid());
    snprintf(dead, sizeof(dead), "proxy.pem.ocsp.tmp.%d", 2147483);
    snprintf(live, sizeof(live), "proxy.pem.ocsp.tmp.%ld", (long)getppid());
    assert_int_equal(oa_testpki_write_file(in_dir(0, ours), "x", 1), 0);
    assert_int_equal(oa_testpki_write_file(in_dir(0, dead), "x", 1), 0);
    assert_int_equal(oa_testpki_write_file(in_dir(0, live), "x", 1), 0);
    assert_int_equal(oa_testpki_write_file(in_dir(0, "proxy.pem.ocsp.tmp.x1"), "x", 1), 0);
    assert_int_equal(oa_testpki_write_file(in_dir(0, "other.pem.ocsp.tmp.1"), "x", 1), 0);
    assert_int_equal(oa_testpki_write_file(in_dir(0, "ocsp.der.tmp.1"), "x", 1), 0);
    snprintf(crt, sizeof(crt), "%s/proxy.pem", dir);
    ctx_init(&c, crt);
    assert_int_equal(access(in_dir(0, ours), F_OK), -1);
    assert_int_equal(access(in_dir(0, dead), F_OK), -1);
    assert_int_equal(access(in_dir(0, live), F_OK), 0);
    assert_int_equal(access(in_dir(0, "proxy.pem.ocsp.tmp.x1"), F_OK), 0);
    assert_int_equal(access(in_dir(0, "other.pem.ocsp.tmp.1"), F_OK), 0);
    assert_int_equal(access(in_dir(0, "ocsp.der.tmp.1"), F_OK), 0);
    ctx_close(&c);
}

/* The file follows the staple: the DER for one HAProxy takes, empty after removal and for one it would refuse. */
static void test_file_follows_staple(void **state)
{
    char crt[512], ocsp[512];
    oa_ocsp_result_t r;
    ctx_t c;
    size_t mark;

    (void)state;
    umask(077); /* the file is 0644 whatever the umask */
    snprintf(crt, sizeof(crt), "%s/proxy.pem", dir);
    snprintf(ocsp, sizeof(ocsp), "%s/proxy.pem.ocsp", dir);
    ctx_init(&c, crt);

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, r.der, r.der_len);
    assert_state(&c, "delivered", NULL);
    assert_true(oa_delivery_all_delivered(c.d));
    oa_ocsp_result_clear(&r);

    make_result(&r, V_OCSP_CERTSTATUS_REVOKED, -30, true, 3600);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, r.der, r.der_len);
    assert_state(&c, "delivered", NULL);
    oa_ocsp_result_clear(&r);

    assert_int_equal(oa_delivery_set_staple(c.d, NULL), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, "", 0);
    assert_state(&c, "delivered", NULL);
    assert_true(oa_delivery_all_delivered(c.d));

    /* 200 s left: HAProxy stops stapling 300 s before nextUpdate, and refuses such a file at load. */
    mark = log_mark();
    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, true, 200);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, "", 0);
    assert_state(&c, "failed", "HAProxy will not staple this response: ");
    assert_state(&c, "failed", "is left empty");
    assert_false(oa_delivery_all_delivered(c.d));
    assert_non_null(strstr(log_since(mark), "event=staple_delivery_failed"));
    oa_ocsp_result_clear(&r);

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -50, false, 0);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, "", 0);
    assert_state(&c, "failed", "it has no nextUpdate");
    oa_ocsp_result_clear(&r);

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -40, true, 3600);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, r.der, r.der_len);
    assert_state(&c, "delivered", NULL);
    oa_ocsp_result_clear(&r);
    assert_int_equal(count(&c, "ok"), 4);
    assert_int_equal(count(&c, "error"), 2);
    umask(022);
    ctx_close(&c);
}

static bool ok_reaches(ctx_t *c, const void *arg)
{
    return count(c, "ok") >= *(const uint64_t *)arg;
}

/* A write that fails is reported with the reason and retried every retry_ms until it succeeds. The write is made
 * to fail by a directory where the temporary file goes (the directory's mode bits would not stop root). */
static void test_write_failure_retried(void **state)
{
    char crt[512], ocsp[512], tmp[600], st[32], le[OA_DTARGET_ERROR_MAX];
    oa_ocsp_result_t r;
    uint64_t t1, one = 1;
    ctx_t c;

    (void)state;
    snprintf(crt, sizeof(crt), "%s/proxy.pem", dir);
    snprintf(ocsp, sizeof(ocsp), "%s/proxy.pem.ocsp", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", ocsp, (long)getpid());
    ctx_init(&c, crt);
    oa_delivery_set_retry_ms(c.d, 200);
    assert_int_equal(mkdir(tmp, 0755), 0);

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    uv_update_time(&c.loop); /* the retry timer counts from the loop's time at the failed try */
    t1 = uv_now(&c.loop);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "cannot write "));
    assert_non_null(strstr(le, "proxy.pem.ocsp: "));
    assert_int_equal(access(ocsp, F_OK), -1);
    wait_tries(&c, 2, 5000);
    assert_true(uv_now(&c.loop) - t1 >= 200);
    assert_int_equal(count(&c, "error"), 2);

    assert_int_equal(rmdir(tmp), 0);
    run_until(&c, ok_reaches, &one, 5000, "a successful retry");
    assert_file_is(ocsp, r.der, r.der_len);
    assert_state(&c, "delivered", NULL);
    oa_ocsp_result_clear(&r);
    ctx_close(&c);
}

/* A response HAProxy takes now stops being one 300 s before its nextUpdate: the file is emptied then. */
static void test_margin_reached_empties_file(void **state)
{
    char crt[512], ocsp[512];
    oa_ocsp_result_t r;
    uint64_t t1;
    ctx_t c;

    (void)state;
    now = time(NULL);
    snprintf(crt, sizeof(crt), "%s/proxy.pem", dir);
    snprintf(ocsp, sizeof(ocsp), "%s/proxy.pem.ocsp", dir);
    ctx_init(&c, crt);
    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, true, OA_HAPROXY_STAPLE_MARGIN_SECONDS + 2);
    uv_update_time(&c.loop);
    t1 = uv_now(&c.loop);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    assert_file_is(ocsp, r.der, r.der_len);
    assert_state(&c, "delivered", NULL);
    wait_tries(&c, 2, 6000);
    assert_true(uv_now(&c.loop) - t1 >= 1000);
    assert_int_equal(count(&c, "error"), 1);
    assert_file_is(ocsp, "", 0);
    assert_state(&c, "failed", "s left before its nextUpdate");
    oa_ocsp_result_clear(&r);
    ctx_close(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_constructor_checks, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_stale_temp_files, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_file_follows_staple, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_write_failure_retried, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_margin_reached_empties_file, test_setup, test_teardown),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
