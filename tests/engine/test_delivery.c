/*
 * The delivery itself (engine/delivery.c) with fake targets defined here: generations, reports and states, the
 * status and metrics (as the API renders them from the snapshot), teardown with a target that closes
 * asynchronously, and HAProxy's staple rules.
 */
#include <openssl/ocsp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "oa_api.h"
#include "target_harness.h"

/* ---- a fake target ---- */

typedef struct fake_s {
    oa_dtarget_t base;
    int updates;
    uint64_t last_gen;
    bool async_close;
    uv_timer_t timer; /* only for async_close */
    int *freed;       /* counts frees, owned by the test */
} fake_t;

static void fake_update(oa_dtarget_t *t)
{
    fake_t *f = (fake_t *)t;

    f->updates++;
    f->last_gen = oa_delivery_generation(t->delivery);
}

static void on_fake_timer_closed(uv_handle_t *h)
{
    fake_t *f = h->data;

    oa_dtarget_closed(&f->base);
}

static void on_fake_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, on_fake_timer_closed);
}

static void fake_close(oa_dtarget_t *t)
{
    fake_t *f = (fake_t *)t;

    if (!f->async_close) {
        oa_dtarget_closed(t);
        return;
    }
    uv_timer_init(oa_delivery_loop(t->delivery), &f->timer);
    f->timer.data = f;
    uv_timer_start(&f->timer, on_fake_timer, 20, 0);
}

static void fake_free(oa_dtarget_t *t)
{
    fake_t *f = (fake_t *)t;

    if (f->freed != NULL)
        (*f->freed)++;
    free(f);
}

static const oa_dtarget_ops_t fake_ops = {fake_update, fake_close, fake_free};

static fake_t *fake_add(oa_delivery_t *d, const char *name, bool async_close, int *freed)
{
    fake_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->async_close = async_close;
    f->freed = freed;
    assert_int_equal(oa_dtarget_attach(d, &f->base, &fake_ops, name), 0);
    return f;
}

typedef struct env_s {
    uv_loop_t loop;
    oa_delivery_t *d;
    bool done;
} env_t;

static void env_init(env_t *e)
{
    oa_delivery_options_t o = {.node_id = "node-1", .staple_path = "/data/ocsp.der"};

    memset(e, 0, sizeof(*e));
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(oa_delivery_new(&e->loop, &o, &e->d), 0);
}

static void on_done(void *arg)
{
    env_t *e = arg;

    assert_false(e->done);
    e->done = true;
}

static void env_close(env_t *e)
{
    oa_delivery_close(e->d, on_done, e);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_true(e->done);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

/* ---- cases ---- */

static void test_options_and_accessors(void **state)
{
    env_t e;

    (void)state;
    env_init(&e);
    assert_ptr_equal(oa_delivery_loop(e.d), &e.loop);
    assert_string_equal(oa_delivery_node_id(e.d), "node-1");
    assert_string_equal(oa_delivery_staple_path(e.d), "/data/ocsp.der");
    assert_int_equal(oa_delivery_retry_ms(e.d), 60000);
    oa_delivery_set_retry_ms(e.d, 250);
    assert_int_equal(oa_delivery_retry_ms(e.d), 250);
    oa_delivery_set_retry_ms(e.d, 0);
    assert_int_equal(oa_delivery_retry_ms(e.d), 1);
    assert_int_equal(oa_delivery_target_count(e.d), 0);
    assert_true(oa_delivery_all_delivered(e.d));
    env_close(&e);
}

/* Every change bumps the generation and reaches every target; the same DER, or a second removal, changes nothing. */
static void test_generations(void **state)
{
    oa_ocsp_result_t a, b;
    fake_t *f1, *f2;
    env_t e;

    (void)state;
    env_init(&e);
    f1 = fake_add(e.d, "one", false, NULL);
    f2 = fake_add(e.d, "two", false, NULL);
    assert_int_equal(oa_delivery_target_count(e.d), 2);
    assert_int_equal(oa_delivery_generation(e.d), 0);
    assert_null(oa_delivery_staple(e.d));
    make_result(&a, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    make_result(&b, V_OCSP_CERTSTATUS_GOOD, -30, true, 3600);

    assert_int_equal(oa_delivery_set_staple(e.d, &a), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(e.d), 1);
    assert_int_equal(f1->updates, 1);
    assert_int_equal(f2->updates, 1);
    assert_int_equal(f1->last_gen, 1);
    assert_non_null(oa_delivery_staple(e.d));
    assert_ptr_not_equal(oa_delivery_staple(e.d)->der, a.der); /* a copy */
    assert_int_equal(oa_delivery_staple(e.d)->der_len, a.der_len);
    assert_memory_equal(oa_delivery_staple(e.d)->der, a.der, a.der_len);

    /* The same response again (another copy of it): nothing changes. */
    {
        oa_ocsp_result_t again;

        assert_int_equal(oa_ocsp_result_copy(&again, &a), 0);
        assert_int_equal(oa_delivery_set_staple(e.d, &again), OA_DELIVERY_STAPLE_SET);
        oa_ocsp_result_clear(&again);
    }
    assert_int_equal(oa_delivery_generation(e.d), 1);
    assert_int_equal(f1->updates, 1);

    assert_int_equal(oa_delivery_set_staple(e.d, &b), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(e.d), 2);
    assert_int_equal(f2->updates, 2);
    assert_memory_equal(oa_delivery_staple(e.d)->der, b.der, b.der_len);

    assert_int_equal(oa_delivery_set_staple(e.d, NULL), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(e.d), 3);
    assert_null(oa_delivery_staple(e.d));
    assert_int_equal(f1->updates, 3);
    assert_int_equal(oa_delivery_set_staple(e.d, NULL), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(e.d), 3);
    assert_int_equal(f1->updates, 3);

    /* Back to a staple seen before is a change too. */
    assert_int_equal(oa_delivery_set_staple(e.d, &a), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(e.d), 4);
    assert_int_equal(f2->last_gen, 4);
    oa_ocsp_result_clear(&a);
    oa_ocsp_result_clear(&b);
    env_close(&e);
}

/* A first removal (nothing valid at start-up) is a change: targets learn that nothing is to be stapled. */
static void test_first_removal_counts(void **state)
{
    fake_t *f;
    env_t e;

    (void)state;
    env_init(&e);
    f = fake_add(e.d, "one", false, NULL);
    assert_int_equal(oa_delivery_set_staple(e.d, NULL), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(e.d), 1);
    assert_int_equal(f->updates, 1);
    env_close(&e);
}

/* The status's `delivery` list, rendered from the delivery's snapshot. */
static json_t *delivery_json(const env_t *e)
{
    oa_delivery_status_t st;
    json_t *list;

    assert_int_equal(oa_delivery_snapshot(e->d, &st), 0);
    list = oa_api_delivery_json(&st);
    oa_delivery_status_free(&st);
    assert_non_null(list);
    return list;
}

/* The metrics, rendered from the delivery's snapshot, appended to out. */
static void delivery_metrics(const env_t *e, oa_buf_t *out)
{
    oa_delivery_status_t st;

    assert_int_equal(oa_delivery_snapshot(e->d, &st), 0);
    assert_int_equal(oa_api_delivery_metrics(&st, out), 0);
    oa_delivery_status_free(&st);
}

static json_t *status_of(const env_t *e, size_t i)
{
    json_t *list = delivery_json(e), *o;

    o = json_incref(json_array_get(list, i));
    json_decref(list);
    assert_non_null(o);
    return o;
}

static const char *str_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return v != NULL ? json_string_value(v) : NULL;
}

/* States follow reports for the current generation; a report for an older one only counts. Logs come once per
 * change of state, or of a failure's reason. */
/* The state the status shows for the first target. */
static void assert_shown_state(env_t *e, const char *want)
{
    json_t *o = status_of(e, 0);

    assert_string_equal(str_of(o, "state"), want);
    json_decref(o);
}

static void test_states_and_reports(void **state)
{
    char when[OA_RFC1123_LEN];
    oa_ocsp_result_t a, b;
    json_t *o;
    fake_t *f;
    env_t e;
    size_t mark;
    time_t t0;

    (void)state;
    env_init(&e);
    f = fake_add(e.d, "fake:one", false, NULL);
    make_result(&a, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    make_result(&b, V_OCSP_CERTSTATUS_GOOD, -30, true, 3600);

    o = status_of(&e, 0);
    assert_string_equal(str_of(o, "target"), "fake:one");
    assert_string_equal(str_of(o, "state"), "pending");
    assert_null(json_object_get(o, "last_delivery"));
    assert_null(json_object_get(o, "last_error"));
    assert_int_equal(json_object_size(o), 2);
    json_decref(o);

    mark = log_mark();
    assert_int_equal(oa_delivery_set_staple(e.d, &a), OA_DELIVERY_STAPLE_SET);
    t0 = time(NULL);
    oa_dtarget_report(&f->base, 1, NULL);
    assert_int_equal(f->base.state, OA_DTARGET_DELIVERED);
    assert_int_equal(f->base.delivered_gen, 1);
    assert_true(oa_delivery_all_delivered(e.d));
    o = status_of(&e, 0);
    assert_string_equal(str_of(o, "state"), "delivered");
    assert_non_null(str_of(o, "last_delivery"));
    if (strcmp(str_of(o, "last_delivery"), oa_time_rfc1123(t0, when)) != 0)
        assert_string_equal(str_of(o, "last_delivery"), oa_time_rfc1123(t0 + 1, when));
    assert_null(json_object_get(o, "last_error"));
    json_decref(o);
    assert_int_equal(log_count(mark, "level=info event=staple_delivered target=fake:one staple=GOOD"), 1);
    oa_dtarget_report(&f->base, 1, NULL); /* again: no second log line */
    assert_int_equal(log_count(mark, "event=staple_delivered "), 1);

    /* A new staple: the target shows as pending until it reports for it; reports about the old one change
     * nothing. */
    assert_int_equal(oa_delivery_set_staple(e.d, &b), OA_DELIVERY_STAPLE_SET);
    assert_shown_state(&e, "pending");
    assert_false(oa_delivery_all_delivered(e.d));
    oa_dtarget_report(&f->base, 1, "stale failure");
    assert_shown_state(&e, "pending");
    assert_false(f->base.have_error);
    oa_dtarget_report(&f->base, 1, NULL);
    assert_shown_state(&e, "pending");
    assert_false(oa_delivery_all_delivered(e.d));
    assert_int_equal(f->base.count_ok, 3);
    assert_int_equal(f->base.count_failed, 1);

    mark = log_mark();
    oa_dtarget_report(&f->base, 2, "the socket refused");
    assert_int_equal(f->base.state, OA_DTARGET_FAILED);
    o = status_of(&e, 0);
    assert_string_equal(str_of(o, "state"), "failed");
    assert_string_equal(str_of(o, "last_error"), "the socket refused");
    assert_non_null(str_of(o, "last_delivery")); /* the last success is still shown */
    json_decref(o);
    oa_dtarget_report(&f->base, 2, "the socket refused");
    assert_int_equal(log_count(mark, "level=warn event=staple_delivery_failed target=fake:one"), 1);
    oa_dtarget_report(&f->base, 2, "a timeout");
    assert_int_equal(log_count(mark, "event=staple_delivery_failed "), 2);
    assert_string_equal(f->base.last_error, "a timeout");

    oa_dtarget_report(&f->base, 2, NULL);
    assert_int_equal(f->base.state, OA_DTARGET_DELIVERED);
    assert_true(oa_delivery_all_delivered(e.d));
    o = status_of(&e, 0);
    assert_null(json_object_get(o, "last_error"));
    json_decref(o);
    assert_int_equal(log_count(mark, "event=staple_delivered "), 1);

    /* A removal delivered is logged as such. */
    mark = log_mark();
    assert_int_equal(oa_delivery_set_staple(e.d, NULL), OA_DELIVERY_STAPLE_SET);
    oa_dtarget_report(&f->base, 3, NULL);
    assert_int_equal(log_count(mark, "event=staple_delivered target=fake:one staple=removed"), 1);
    oa_ocsp_result_clear(&a);
    oa_ocsp_result_clear(&b);
    env_close(&e);
}

static void test_metrics_and_all_delivered(void **state)
{
    oa_ocsp_result_t a;
    fake_t *f1, *f2;
    oa_buf_t m;
    env_t e;

    (void)state;
    env_init(&e);
    oa_buf_init(&m);
    delivery_metrics(&e, &m);
    assert_int_equal(m.len, 0); /* no target, no metric */

    f1 = fake_add(e.d, "hook:/x", false, NULL);
    f2 = fake_add(e.d, "file:/a \"b\"\\c", false, NULL);
    make_result(&a, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    assert_int_equal(oa_delivery_set_staple(e.d, &a), OA_DELIVERY_STAPLE_SET);
    oa_dtarget_report(&f1->base, 1, NULL);
    oa_dtarget_report(&f1->base, 1, NULL);
    oa_dtarget_report(&f2->base, 1, "no");
    assert_false(oa_delivery_all_delivered(e.d));
    delivery_metrics(&e, &m);
    assert_string_equal(m.data,
                        "# HELP ocsp_agent_staple_deliveries_total Tries to deliver the staple to a target, by result.\n"
                        "# TYPE ocsp_agent_staple_deliveries_total counter\n"
                        "ocsp_agent_staple_deliveries_total{target=\"hook:/x\",result=\"ok\"} 2\n"
                        "ocsp_agent_staple_deliveries_total{target=\"hook:/x\",result=\"error\"} 0\n"
                        "ocsp_agent_staple_deliveries_total{target=\"file:/a \\\"b\\\"\\\\c\",result=\"ok\"} 0\n"
                        "ocsp_agent_staple_deliveries_total{target=\"file:/a \\\"b\\\"\\\\c\",result=\"error\"} 1\n"
                        "# HELP ocsp_agent_staple_delivered 1 while the target holds the current staple.\n"
                        "# TYPE ocsp_agent_staple_delivered gauge\n"
                        "ocsp_agent_staple_delivered{target=\"hook:/x\"} 1\n"
                        "ocsp_agent_staple_delivered{target=\"file:/a \\\"b\\\"\\\\c\"} 0\n");
    oa_dtarget_report(&f2->base, 1, NULL);
    assert_true(oa_delivery_all_delivered(e.d));
    oa_buf_reset(&m);
    delivery_metrics(&e, &m);
    assert_non_null(strstr(m.data, "ocsp_agent_staple_delivered{target=\"file:/a \\\"b\\\"\\\\c\"} 1\n"));
    oa_buf_free(&m);
    oa_ocsp_result_clear(&a);
    env_close(&e);
}

/* Teardown waits for a target that closes later; every target is freed once, done fires once, and no staple change
 * reaches a target after close. */
static void test_close_async(void **state)
{
    oa_ocsp_result_t a;
    int freed = 0;
    fake_t *f1;
    env_t e;

    (void)state;
    env_init(&e);
    f1 = fake_add(e.d, "sync", false, &freed);
    fake_add(e.d, "async", true, &freed);
    fake_add(e.d, "sync2", false, &freed);
    oa_delivery_close(e.d, on_done, &e);
    assert_false(e.done);
    assert_int_equal(freed, 0);
    assert_true(f1->base.closing);
    make_result(&a, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    assert_int_equal(oa_delivery_set_staple(e.d, &a), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(f1->updates, 0);
    oa_ocsp_result_clear(&a);
    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_true(e.done);
    assert_int_equal(freed, 3);
    assert_int_equal(uv_loop_close(&e.loop), 0);
}

/* A response with two SingleResponses, signed by the CA. */
static void two_singles(unsigned char **der, size_t *len)
{
    OCSP_BASICRESP *basic = OCSP_BASICRESP_new();
    OCSP_CERTID *id1 = OCSP_cert_to_id(NULL, pki.leaf.cert, pki.ca.cert);
    OCSP_CERTID *id2 = OCSP_cert_to_id(NULL, pki.responder.cert, pki.ca.cert);
    ASN1_TIME *thisupd = ASN1_TIME_set(NULL, now - 60), *nextupd = ASN1_TIME_set(NULL, now + 3600);
    OCSP_RESPONSE *resp;
    unsigned char *p = NULL;
    int n;

    assert_non_null(basic);
    assert_non_null(OCSP_basic_add1_status(basic, id1, V_OCSP_CERTSTATUS_GOOD, 0, NULL, thisupd, nextupd));
    assert_non_null(OCSP_basic_add1_status(basic, id2, V_OCSP_CERTSTATUS_GOOD, 0, NULL, thisupd, nextupd));
    assert_int_equal(OCSP_basic_sign(basic, pki.ca.cert, pki.ca.key, EVP_sha256(), NULL, 0), 1);
    resp = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, basic);
    assert_non_null(resp);
    n = i2d_OCSP_RESPONSE(resp, &p);
    assert_true(n > 0);
    *der = malloc((size_t)n);
    memcpy(*der, p, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(p);
    OCSP_RESPONSE_free(resp);
    ASN1_TIME_free(thisupd);
    ASN1_TIME_free(nextupd);
    OCSP_CERTID_free(id1);
    OCSP_CERTID_free(id2);
    OCSP_BASICRESP_free(basic);
}

/* HAProxy's rules: one SingleResponse, a nextUpdate, more than 300 s left before it. */
static void test_haproxy_staple_check(void **state)
{
    char why[256];
    oa_ocsp_result_t r;
    unsigned char *der;
    size_t len;

    (void)state;
    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    assert_int_equal(oa_haproxy_staple_check(&r, now, why, sizeof(why)), 0);
    assert_int_equal(oa_haproxy_staple_check(&r, r.next_update - 301, why, sizeof(why)), 0);
    assert_int_equal(oa_haproxy_staple_check(&r, r.next_update - 300, why, sizeof(why)), -1);
    assert_string_equal(why, "HAProxy will not staple this response: 300 s left before its nextUpdate, HAProxy stops "
                             "stapling 300 s before it");
    assert_int_equal(oa_haproxy_staple_check(&r, r.next_update + 10, why, sizeof(why)), -1);
    oa_ocsp_result_clear(&r);

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, false, 0);
    assert_int_equal(oa_haproxy_staple_check(&r, now, why, sizeof(why)), -1);
    assert_string_equal(why, "HAProxy will not staple this response: it has no nextUpdate");
    oa_ocsp_result_clear(&r);

    two_singles(&der, &len);
    memset(&r, 0, sizeof(r));
    r.der = der;
    r.der_len = len;
    r.this_update = now - 60;
    r.next_update = now + 3600;
    assert_int_equal(oa_haproxy_staple_check(&r, now, why, sizeof(why)), -1);
    assert_string_equal(why, "HAProxy will not staple this response: it holds 2 single responses, HAProxy takes "
                             "exactly one");
    oa_ocsp_result_clear(&r);

    memset(&r, 0, sizeof(r));
    r.der = (unsigned char *)"not DER";
    r.der_len = 7;
    r.next_update = now + 3600;
    assert_int_equal(oa_haproxy_staple_check(&r, now, why, sizeof(why)), -1);
    assert_string_equal(why, "HAProxy will not staple this response: it is not a basic OCSP response");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_and_accessors),
        cmocka_unit_test(test_generations),
        cmocka_unit_test(test_first_removal_counts),
        cmocka_unit_test(test_states_and_reports),
        cmocka_unit_test(test_metrics_and_all_delivered),
        cmocka_unit_test(test_close_async),
        cmocka_unit_test(test_haproxy_staple_check),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
