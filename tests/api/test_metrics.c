/*
 * The engine's metrics rendered from snapshots (api/metrics.c), compared byte for byte with what /metrics sends:
 * the names, labels, order and HELP/TYPE lines dashboards and alerts rely on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "oa_api.h"
#include "snapshots.h"

#define T0 SNAP_T0

static void test_nothing_cached(void **state)
{
    oa_sched_status_t st;
    oa_buf_t b;

    (void)state;
    snapshot_empty(&st);
    oa_buf_init(&b);
    assert_int_equal(oa_api_sched_metrics(&st, &b), 0);
    assert_string_equal(b.data,
                        "# HELP ocsp_agent_queries_total OCSP query attempts by result.\n"
                        "# TYPE ocsp_agent_queries_total counter\n"
                        "ocsp_agent_queries_total{result=\"ok\"} 0\n"
                        "# HELP ocsp_agent_last_success_timestamp_seconds Wall-clock time of the last valid answer, "
                        "0 when none.\n"
                        "# TYPE ocsp_agent_last_success_timestamp_seconds gauge\n"
                        "ocsp_agent_last_success_timestamp_seconds 0\n"
                        "# HELP ocsp_agent_staple_expiry_seconds Seconds until the cached response's nextUpdate, NaN "
                        "when there is none.\n"
                        "# TYPE ocsp_agent_staple_expiry_seconds gauge\n"
                        "ocsp_agent_staple_expiry_seconds NaN\n"
                        "# HELP ocsp_agent_cert_status 1 for the certificate status being served.\n"
                        "# TYPE ocsp_agent_cert_status gauge\n"
                        "ocsp_agent_cert_status{status=\"GOOD\"} 0\n"
                        "ocsp_agent_cert_status{status=\"REVOKED\"} 0\n"
                        "ocsp_agent_cert_status{status=\"UNKNOWN\"} 1\n"
                        "# HELP ocsp_agent_state 1 for the querying engine's current state.\n"
                        "# TYPE ocsp_agent_state gauge\n"
                        "ocsp_agent_state{state=\"disabled\"} 1\n"
                        "ocsp_agent_state{state=\"pending\"} 0\n"
                        "ocsp_agent_state{state=\"valid\"} 0\n"
                        "ocsp_agent_state{state=\"recovering\"} 0\n"
                        "ocsp_agent_state{state=\"invalidated\"} 0\n"
                        "# HELP ocsp_agent_consecutive_failures Scheduled attempts that failed since the last valid "
                        "answer.\n"
                        "# TYPE ocsp_agent_consecutive_failures gauge\n"
                        "ocsp_agent_consecutive_failures 0\n");
    oa_buf_free(&b);
}

/* Outcomes appear once counted, in the order of the error table; the expiry counts from when the snapshot was
 * taken. */
static void test_counted_outcomes_and_expiry(void **state)
{
    oa_sched_status_t st;
    oa_buf_t b;

    (void)state;
    snapshot_cached(&st, OA_CERT_REVOKED);
    st.state = OA_STATE_RECOVERING;
    st.response.next_update = T0 + 3540;
    st.last_success = T0 - 60;
    st.consecutive_failures = 2;
    st.queries_ok = 2;
    st.queries_unknown = 1;
    st.queries_failed[OA_E_OCSP_SIGNATURE] = 1;
    st.queries_failed[OA_E_OCSP_TIMEOUT] = 3;
    oa_buf_init(&b);
    assert_int_equal(oa_api_sched_metrics(&st, &b), 0);
    assert_string_equal(b.data,
                        "# HELP ocsp_agent_queries_total OCSP query attempts by result.\n"
                        "# TYPE ocsp_agent_queries_total counter\n"
                        "ocsp_agent_queries_total{result=\"ok\"} 2\n"
                        "ocsp_agent_queries_total{result=\"cert_status_unknown\"} 1\n"
                        "ocsp_agent_queries_total{result=\"ocsp_responder_timeout\"} 3\n"
                        "ocsp_agent_queries_total{result=\"ocsp_response_signature_invalid\"} 1\n"
                        "# HELP ocsp_agent_last_success_timestamp_seconds Wall-clock time of the last valid answer, "
                        "0 when none.\n"
                        "# TYPE ocsp_agent_last_success_timestamp_seconds gauge\n"
                        "ocsp_agent_last_success_timestamp_seconds 1699999940\n"
                        "# HELP ocsp_agent_staple_expiry_seconds Seconds until the cached response's nextUpdate, NaN "
                        "when there is none.\n"
                        "# TYPE ocsp_agent_staple_expiry_seconds gauge\n"
                        "ocsp_agent_staple_expiry_seconds 3540\n"
                        "# HELP ocsp_agent_cert_status 1 for the certificate status being served.\n"
                        "# TYPE ocsp_agent_cert_status gauge\n"
                        "ocsp_agent_cert_status{status=\"GOOD\"} 0\n"
                        "ocsp_agent_cert_status{status=\"REVOKED\"} 1\n"
                        "ocsp_agent_cert_status{status=\"UNKNOWN\"} 0\n"
                        "# HELP ocsp_agent_state 1 for the querying engine's current state.\n"
                        "# TYPE ocsp_agent_state gauge\n"
                        "ocsp_agent_state{state=\"disabled\"} 0\n"
                        "ocsp_agent_state{state=\"pending\"} 0\n"
                        "ocsp_agent_state{state=\"valid\"} 0\n"
                        "ocsp_agent_state{state=\"recovering\"} 1\n"
                        "ocsp_agent_state{state=\"invalidated\"} 0\n"
                        "# HELP ocsp_agent_consecutive_failures Scheduled attempts that failed since the last valid "
                        "answer.\n"
                        "# TYPE ocsp_agent_consecutive_failures gauge\n"
                        "ocsp_agent_consecutive_failures 2\n");
    oa_buf_free(&b);
}

/* A response without nextUpdate has no expiry to show. */
static void test_response_without_next_update(void **state)
{
    oa_sched_status_t st;
    oa_buf_t b;

    (void)state;
    snapshot_cached(&st, OA_CERT_GOOD);
    oa_buf_init(&b);
    assert_int_equal(oa_api_sched_metrics(&st, &b), 0);
    assert_non_null(strstr(b.data, "\nocsp_agent_staple_expiry_seconds NaN\n"));
    assert_non_null(strstr(b.data, "\nocsp_agent_cert_status{status=\"GOOD\"} 1\n"));
    oa_buf_free(&b);
}

static void test_delivery(void **state)
{
    oa_delivery_target_status_t t[2];
    oa_delivery_status_t delivery = {t, 0};
    oa_buf_t b;

    (void)state;
    oa_buf_init(&b);
    assert_int_equal(oa_api_delivery_metrics(&delivery, &b), 0);
    assert_int_equal(b.len, 0); /* no target, no family */
    memset(t, 0, sizeof(t));
    t[0].target = "hook:/x";
    t[0].deliveries_ok = 2;
    t[0].delivered = true;
    t[1].target = "file:/a \"b\"\\c\nd";
    t[1].deliveries_failed = 1;
    delivery.count = 2;
    assert_int_equal(oa_api_delivery_metrics(&delivery, &b), 0);
    assert_string_equal(b.data,
                        "# HELP ocsp_agent_staple_deliveries_total "
                        "Tries to deliver the staple to a target, by result.\n"
                        "# TYPE ocsp_agent_staple_deliveries_total counter\n"
                        "ocsp_agent_staple_deliveries_total{target=\"hook:/x\",result=\"ok\"} 2\n"
                        "ocsp_agent_staple_deliveries_total{target=\"hook:/x\",result=\"error\"} 0\n"
                        "ocsp_agent_staple_deliveries_total{target=\"file:/a \\\"b\\\"\\\\c\\nd\",result=\"ok\"} 0\n"
                        "ocsp_agent_staple_deliveries_total"
                        "{target=\"file:/a \\\"b\\\"\\\\c\\nd\",result=\"error\"} 1\n"
                        "# HELP ocsp_agent_staple_delivered 1 while the target holds the current staple.\n"
                        "# TYPE ocsp_agent_staple_delivered gauge\n"
                        "ocsp_agent_staple_delivered{target=\"hook:/x\"} 1\n"
                        "ocsp_agent_staple_delivered{target=\"file:/a \\\"b\\\"\\\\c\\nd\"} 0\n");
    oa_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_cached),
        cmocka_unit_test(test_counted_outcomes_and_expiry),
        cmocka_unit_test(test_response_without_next_update),
        cmocka_unit_test(test_delivery),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
