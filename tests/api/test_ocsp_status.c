/*
 * The status object rendered from snapshots (api/ocsp_status.c): every key, its order and its absence, compared
 * byte for byte with the compact JSON GET /v1/ocsp/status and POST /v1/ocsp/test send.
 */
#include <jansson.h>
#include <openssl/ocsp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "oa_api.h"
#include "snapshots.h"

#define T0 SNAP_T0

static void assert_json(json_t *o, const char *want)
{
    char *text;

    assert_non_null(o);
    text = json_dumps(o, JSON_COMPACT);
    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
    json_decref(o);
}

/* Nothing cached, nothing attempted: cert_status UNKNOWN and only the keys that are always there. */
static void test_nothing_cached(void **state)
{
    oa_delivery_status_t none = {NULL, 0};
    oa_sched_status_t st;

    (void)state;
    snapshot_empty(&st);
    assert_json(oa_api_status_json(&st, NULL), "{\"cert_status\":\"UNKNOWN\",\"responder_url\":\"\",\"state\":"
                                               "\"disabled\",\"consecutive_failures\":0,\"recovery_tries\":0,"
                                               "\"recovery_max_tries\":5}");
    /* A node that delivers nowhere shows an empty list. */
    assert_json(oa_api_status_json(&st, &none),
                "{\"cert_status\":\"UNKNOWN\",\"responder_url\":\"\",\"state\":\"disabled\","
                "\"consecutive_failures\":0,\"recovery_tries\":0,\"recovery_max_tries\":5,\"delivery\":[]}");
}

/* Everything present: a revoked response with its reason, the operator fields, the next query and two targets. */
static void test_every_key(void **state)
{
    oa_delivery_target_status_t targets[2];
    oa_delivery_status_t delivery = {targets, 2};
    oa_sched_status_t st;

    (void)state;
    snapshot_cached(&st, OA_CERT_REVOKED);
    st.state = OA_STATE_RECOVERING;
    st.response.this_update = T0 - 1000;
    st.response.next_update = T0 + 3600;
    st.response.revocation_time = T0 - 10000;
    st.response.revocation_reason = OCSP_REVOKED_STATUS_KEYCOMPROMISE;
    st.last_attempt = T0 + 60;
    st.have_error = true;
    strcpy(st.last_error_code, "ocsp_responder_timeout");
    strcpy(st.last_error, "no answer within 1 s");
    st.consecutive_failures = 1;
    st.recovery_tries = 0;
    st.next_query = T0 + 120;
    memset(targets, 0, sizeof(targets));
    targets[0].target = "haproxy:/run/h.sock";
    targets[0].state = OA_DTARGET_DELIVERED;
    targets[0].last_delivery = T0 + 30;
    targets[1].target = "hook:/x \"y\"";
    targets[1].state = OA_DTARGET_FAILED;
    targets[1].last_error = "exit 1";
    assert_json(oa_api_status_json(&st, &delivery),
                "{\"cert_status\":\"REVOKED\",\"responder_url\":\"http://ocsp.example/\","
                "\"produced_at\":\"Tue, 14 Nov 2023 22:13:20 GMT\",\"this_update\":\"Tue, 14 Nov 2023 21:56:40 GMT\","
                "\"next_update\":\"Tue, 14 Nov 2023 23:13:20 GMT\","
                "\"revocation_time\":\"Tue, 14 Nov 2023 19:26:40 GMT\",\"revocation_reason\":\"keyCompromise\","
                "\"state\":\"recovering\",\"last_attempt\":\"Tue, 14 Nov 2023 22:14:20 GMT\","
                "\"last_success\":\"Tue, 14 Nov 2023 22:13:20 GMT\",\"last_error_code\":\"ocsp_responder_timeout\","
                "\"last_error\":\"no answer within 1 s\",\"consecutive_failures\":1,\"recovery_tries\":0,"
                "\"recovery_max_tries\":5,\"next_query\":\"Tue, 14 Nov 2023 22:15:20 GMT\","
                "\"delivery\":[{\"target\":\"haproxy:/run/h.sock\",\"state\":\"delivered\","
                "\"last_delivery\":\"Tue, 14 Nov 2023 22:13:50 GMT\"},"
                "{\"target\":\"hook:/x \\\"y\\\"\",\"state\":\"failed\",\"last_error\":\"exit 1\"}]}");
    /* Without a reason the revocation says only when. */
    st.response.revocation_reason = -1;
    st.have_error = false;
    st.next_query = 0;
    assert_json(oa_api_status_json(&st, NULL),
                "{\"cert_status\":\"REVOKED\",\"responder_url\":\"http://ocsp.example/\","
                "\"produced_at\":\"Tue, 14 Nov 2023 22:13:20 GMT\",\"this_update\":\"Tue, 14 Nov 2023 21:56:40 GMT\","
                "\"next_update\":\"Tue, 14 Nov 2023 23:13:20 GMT\","
                "\"revocation_time\":\"Tue, 14 Nov 2023 19:26:40 GMT\",\"state\":\"recovering\","
                "\"last_attempt\":\"Tue, 14 Nov 2023 22:14:20 GMT\","
                "\"last_success\":\"Tue, 14 Nov 2023 22:13:20 GMT\","
                "\"consecutive_failures\":1,\"recovery_tries\":0,\"recovery_max_tries\":5}");
}

/* A GOOD response shows no revocation, whatever the fields hold, and no next_update when it has none. */
static void test_good_without_next_update(void **state)
{
    oa_sched_status_t st;

    (void)state;
    snapshot_cached(&st, OA_CERT_GOOD);
    st.response.revocation_time = T0;
    st.response.revocation_reason = OCSP_REVOKED_STATUS_KEYCOMPROMISE;
    assert_json(oa_api_status_json(&st, NULL),
                "{\"cert_status\":\"GOOD\",\"responder_url\":\"http://ocsp.example/\","
                "\"produced_at\":\"Tue, 14 Nov 2023 22:13:20 GMT\",\"this_update\":\"Tue, 14 Nov 2023 22:13:20 GMT\","
                "\"state\":\"valid\",\"last_attempt\":\"Tue, 14 Nov 2023 22:13:20 GMT\","
                "\"last_success\":\"Tue, 14 Nov 2023 22:13:20 GMT\",\"consecutive_failures\":0,\"recovery_tries\":0,"
                "\"recovery_max_tries\":5}");
}

/* The delivery list alone: a target before its first delivery has only its name and state. */
static void test_delivery_list(void **state)
{
    oa_delivery_target_status_t t;
    oa_delivery_status_t delivery = {&t, 1};

    (void)state;
    memset(&t, 0, sizeof(t));
    t.target = "api";
    t.state = OA_DTARGET_PENDING;
    assert_json(oa_api_delivery_json(&delivery), "[{\"target\":\"api\",\"state\":\"pending\"}]");
    t.state = OA_DTARGET_FAILED;
    t.last_error = "line one\nline two";
    assert_json(oa_api_delivery_json(&delivery),
                "[{\"target\":\"api\",\"state\":\"failed\",\"last_error\":\"line one\\nline two\"}]");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_cached),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_good_without_next_update),
        cmocka_unit_test(test_delivery_list),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
