/*
 * The API alone, over a fake backend: what it asks of the daemon and what it does with the answers. The API and an
 * HTTP server run on a loop thread; a blocking client on the test thread drives them over loopback. The backend
 * records its calls, so every test asserts both the HTTP answer and what reached the daemon.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "oa_api.h"
#include "oa_auth.h"
#include "oa_log.h"
#include "oa_util.h"
#include "snapshots.h"
#include "testnet.h"

/* Any credentials: the open authenticator lets every caller in as "anonymous" with the admin role. */
#define AUTH "YWRtaW5AZXhhbXBsZS5jb206c2VjcmV0"

typedef struct fake_s {
    /* What the backend answers. */
    oa_conf_t conf;
    int capability_rc;         /* -1: 406 */
    int put_mode;              /* 0: apply at once, 1: pending (answered by the async handle), 2: refuse */
    oa_errcode_t put_refusal;  /* the code for put_mode 2 and for a pending put that fails */
    bool pending_fails;
    int test_rc;               /* -1: the test cannot start */
    /* What reached it. */
    int conf_gets;
    int puts;
    char last_put_body[256];
    char last_put_user[64];
    int statuses;
    int tests;
    int metrics;
    oa_api_t *api; /* told of every change, as the daemon does */
    /* A pending put, finished on the loop by the async handle. */
    oa_api_done_cb done;
    void *done_arg;
} fake_t;

typedef struct fixture_s {
    uv_loop_t loop;
    oa_auth_t *auth;
    oa_api_t *api;
    oa_http_server_t *server;
    uv_async_t stop;
    uv_async_t finish_put;
    pthread_t thread;
    int port;
    fake_t fake;
    oa_testnet_reply_t client_reply; /* what a client thread's request got */
} fixture_t;

static void fake_conf_get(void *data, const oa_conf_t **conf, const char **responder_url)
{
    fake_t *f = data;

    f->conf_gets++;
    *conf = &f->conf;
    *responder_url = "http://ocsp.example/";
}

static oa_api_put_t fake_conf_put(void *data, const char *body, size_t len, const char *user, oa_api_done_cb done,
                                  void *arg, oa_error_t *err)
{
    fake_t *f = data;

    f->puts++;
    snprintf(f->last_put_body, sizeof(f->last_put_body), "%.*s", (int)len, body);
    snprintf(f->last_put_user, sizeof(f->last_put_user), "%s", user);
    oa_error_clear(err);
    switch (f->put_mode) {
    case 1:
        f->done_arg = arg;
        __atomic_store_n(&f->done, done, __ATOMIC_RELEASE);
        return OA_API_PUT_PENDING;
    case 2:
        oa_error_set(err, f->put_refusal, "refused by the fake");
        return OA_API_PUT_REFUSED;
    default:
        f->conf.query_frequency = 7200;
        oa_api_conf_changed(f->api);
        return OA_API_PUT_DONE;
    }
}

static int fake_status(void *data, oa_api_status_t *out)
{
    fake_t *f = data;

    f->statuses++;
    /* A valid schedule, and the staple delivered to the API's own TLS. */
    snapshot_cached(&out->sched, OA_CERT_GOOD);
    out->delivery.count = 1;
    out->delivery.targets = calloc(1, sizeof(*out->delivery.targets));
    if (out->delivery.targets == NULL)
        return UV_ENOMEM;
    out->delivery.targets[0].target = "api";
    out->delivery.targets[0].state = OA_DTARGET_DELIVERED;
    out->delivery.targets[0].delivered = true;
    return 0;
}

static int fake_test(void *data, oa_api_test_cb cb, void *arg, oa_error_t *err)
{
    fake_t *f = data;
    oa_sched_status_t status;

    f->tests++;
    if (f->test_rc != 0)
        return oa_error_set(err, OA_E_NO_RESPONDER_URL, "no responder, says the fake");
    snapshot_cached(&status, OA_CERT_REVOKED);
    cb(arg, 0, NULL, &status);
    return 0;
}

static int fake_capability_check(void *data, oa_error_t *err)
{
    fake_t *f = data;

    if (f->capability_rc != 0)
        return oa_error_set(err, OA_E_UNSUPPORTED_BY_CAPABILITY, "node n2 lacks ocsp");
    return 0;
}

static int fake_metrics(void *data, oa_buf_t *out)
{
    fake_t *f = data;

    f->metrics++;
    return oa_buf_append_str(out, "fake_metric 42\n");
}

static void on_stop(uv_async_t *h)
{
    fixture_t *f = h->data;

    oa_api_shutdown(f->api);
    oa_http_server_stop(f->server, NULL, NULL);
    uv_close((uv_handle_t *)&f->stop, NULL);
    uv_close((uv_handle_t *)&f->finish_put, NULL);
}

/* Finishes the pending put as the store would, on the loop. */
static void on_finish_put(uv_async_t *h)
{
    fixture_t *f = h->data;
    oa_error_t err;

    if (f->fake.done == NULL)
        return;
    if (f->fake.pending_fails) {
        oa_error_set(&err, f->fake.put_refusal, "the store did not confirm");
        f->fake.done(f->fake.done_arg, &err);
    } else {
        f->fake.conf.recovery_max_tries = 9;
        oa_api_conf_changed(f->api);
        f->fake.done(f->fake.done_arg, NULL);
    }
    __atomic_store_n(&f->fake.done, NULL, __ATOMIC_RELEASE);
}

static void *loop_thread(void *arg)
{
    fixture_t *f = arg;

    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    oa_http_limits_t limits;
    oa_api_backend_t b = {&f->fake, fake_conf_get, fake_conf_put, fake_status, fake_test, fake_capability_check,
                          fake_metrics};
    oa_error_t err;

    assert_non_null(f);
    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);
    oa_conf_defaults(&f->fake.conf);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(oa_auth_new_open(&f->loop, &f->auth), 0);
    assert_int_equal(oa_api_new(f->auth, &b, &f->api), 0);
    f->fake.api = f->api;
    oa_http_limits_default(&limits);
    assert_int_equal(oa_http_server_start(&f->loop, "127.0.0.1", 0, &limits, NULL, oa_api_handle, f->api, &f->server,
                                          &err),
                     0);
    oa_api_set_server(f->api, f->server);
    f->port = oa_http_server_port(f->server);
    f->stop.data = f;
    f->finish_put.data = f;
    assert_int_equal(uv_async_init(&f->loop, &f->stop, on_stop), 0);
    assert_int_equal(uv_async_init(&f->loop, &f->finish_put, on_finish_put), 0);
    *state = f;
    return 0;
}

/* The loop thread starts after the test has set up its fake's answers, so they are never read concurrently. */
static void run(fixture_t *f)
{
    assert_int_equal(pthread_create(&f->thread, NULL, loop_thread, f), 0);
}

static int teardown(void **state)
{
    fixture_t *f = *state;

    uv_async_send(&f->stop);
    pthread_join(f->thread, NULL);
    oa_api_free(f->api);
    oa_auth_free(f->auth);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static json_t *body_json(const oa_testnet_reply_t *r)
{
    json_t *j = json_loads(r->body, 0, NULL);

    assert_non_null(j);
    return j;
}

static void assert_error_code(const oa_testnet_reply_t *r, int status, const char *code)
{
    json_t *j;

    assert_int_equal(r->status, status);
    j = body_json(r);
    assert_string_equal(json_string_value(json_object_get(j, "error_code")), code);
    json_decref(j);
}

/* GET builds its body from the backend once per change of the configuration, not once per request. */
static void test_get_is_cached_until_the_conf_changes(void **state)
{
    fixture_t *f = *state;
    oa_testnet_reply_t r;
    json_t *j;
    int i;

    run(f);
    for (i = 0; i < 3; i++) {
        assert_int_equal(oa_testnet_http(f->port, "GET", "/v1/ocsp", AUTH, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
    }
    j = body_json(&r);
    assert_int_equal(json_object_size(j), 6);
    assert_string_equal(json_string_value(json_object_get(j, "responder_url")), "http://ocsp.example/");
    assert_int_equal(json_integer_value(json_object_get(j, "query_frequency")), 3600);
    json_decref(j);
    assert_int_equal(f->fake.conf_gets, 1);

    /* A PUT applied at once: the answer is the new configuration, read from the backend again. */
    assert_int_equal(oa_testnet_http(f->port, "PUT", "/v1/ocsp", AUTH, NULL, "{\"query_frequency\": 7200}", &r), 0);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "query_frequency")), 7200);
    json_decref(j);
    assert_int_equal(f->fake.puts, 1);
    assert_string_equal(f->fake.last_put_body, "{\"query_frequency\": 7200}");
    assert_string_equal(f->fake.last_put_user, "anonymous");
}

/* A PUT the backend leaves pending is answered when it finishes: with the configuration then in force, or with the
 * reason it failed. */
static void *put_client(void *arg)
{
    fixture_t *f = arg;

    if (oa_testnet_http(f->port, "PUT", "/v1/ocsp", AUTH, "Content-Type: application/json\r\n",
                        "{\"recovery_max_tries\": 9}", &f->client_reply) != 0)
        f->client_reply.status = -1;
    return NULL;
}

static void test_pending_put(void **state)
{
    fixture_t *f = *state;
    oa_testnet_reply_t r;
    pthread_t client;
    json_t *j;

    f->fake.put_mode = 1;
    run(f);
    assert_int_equal(pthread_create(&client, NULL, put_client, f), 0);
    /* The store confirms once the request is waiting for it. */
    while (__atomic_load_n(&f->fake.done, __ATOMIC_ACQUIRE) == NULL)
        usleep(1000);
    uv_async_send(&f->finish_put);
    assert_int_equal(pthread_join(client, NULL), 0);
    assert_int_equal(f->client_reply.status, 200);
    j = body_json(&f->client_reply);
    assert_int_equal(json_integer_value(json_object_get(j, "recovery_max_tries")), 9);
    json_decref(j);

    /* The same, failing: the store's reason is the answer. */
    f->fake.pending_fails = true;
    f->fake.put_refusal = OA_E_STORE_UNAVAILABLE;
    assert_int_equal(pthread_create(&client, NULL, put_client, f), 0);
    while (__atomic_load_n(&f->fake.done, __ATOMIC_ACQUIRE) == NULL)
        usleep(1000);
    uv_async_send(&f->finish_put);
    assert_int_equal(pthread_join(client, NULL), 0);
    assert_error_code(&f->client_reply, 503, "cluster_store_unavailable");
    assert_int_equal(f->fake.puts, 2);

    assert_int_equal(oa_testnet_http(f->port, "GET", "/v1/ocsp", AUTH, NULL, NULL, &r), 0);
    j = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(j, "recovery_max_tries")), 9);
    json_decref(j);
}

static void test_put_refusals(void **state)
{
    fixture_t *f = *state;
    oa_testnet_reply_t r;

    f->fake.put_mode = 2;
    f->fake.put_refusal = OA_E_STORE_UNAVAILABLE;
    run(f);
    assert_int_equal(oa_testnet_http(f->port, "PUT", "/v1/ocsp", AUTH, NULL, "{}", &r), 0);
    assert_error_code(&r, 503, "cluster_store_unavailable");
    f->fake.put_refusal = OA_E_INVALID_SCHEMA;
    assert_int_equal(oa_testnet_http(f->port, "PUT", "/v1/ocsp", AUTH, NULL, "{\"x\": 1}", &r), 0);
    assert_error_code(&r, 400, "invalid_schema");
    f->fake.put_refusal = OA_E_PERSIST;
    assert_int_equal(oa_testnet_http(f->port, "PUT", "/v1/ocsp", AUTH, NULL, "{}", &r), 0);
    assert_error_code(&r, 500, "config_persist_failed");
    /* A declared type other than JSON never reaches the backend. */
    assert_int_equal(oa_testnet_http(f->port, "PUT", "/v1/ocsp", AUTH, "Content-Type: text/plain\r\n", "{}", &r), 0);
    assert_error_code(&r, 415, "unsupported_media_type");
    assert_int_equal(f->fake.puts, 3);
}

/* The capability check guards the OCSP resources, not /metrics. */
static void test_capability(void **state)
{
    fixture_t *f = *state;
    static const char *const paths[][2] = {
        {"GET", "/v1/ocsp"}, {"PUT", "/v1/ocsp"}, {"GET", "/v1/ocsp/status"}, {"POST", "/v1/ocsp/test"}};
    oa_testnet_reply_t r;
    size_t i;

    f->fake.capability_rc = -1;
    run(f);
    for (i = 0; i < OA_ARRAY_SIZE(paths); i++) {
        assert_int_equal(oa_testnet_http(f->port, paths[i][0], paths[i][1], AUTH, NULL, "{}", &r), 0);
        assert_error_code(&r, 406, "ocsp_unsupported_by_capability");
        assert_non_null(strstr(r.body, "node n2 lacks ocsp"));
    }
    assert_int_equal(f->fake.puts + f->fake.statuses + f->fake.tests + f->fake.conf_gets, 0);
    assert_int_equal(oa_testnet_http(f->port, "GET", "/metrics", AUTH, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
}

static void test_status_test_and_metrics(void **state)
{
    fixture_t *f = *state;
    oa_testnet_reply_t r;
    const char *p;
    json_t *j;

    run(f);
    assert_int_equal(oa_testnet_http(f->port, "GET", "/v1/ocsp/status", AUTH, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "valid");
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(j, "delivery"), 0),
                                                          "target")),
                        "api");
    json_decref(j);

    assert_int_equal(oa_testnet_http(f->port, "POST", "/v1/ocsp/test", AUTH, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"cert_status\":\"REVOKED\""));
    assert_null(strstr(r.body, "\"delivery\"")); /* a test's answer is about the responder alone */
    f->fake.test_rc = -1;
    assert_int_equal(oa_testnet_http(f->port, "POST", "/v1/ocsp/test", AUTH, NULL, NULL, &r), 0);
    assert_error_code(&r, 500, "no_responder_url");
    assert_int_equal(f->fake.tests, 2);

    assert_int_equal(oa_testnet_http(f->port, "GET", "/metrics", AUTH, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    /* The engine's families from the status snapshot first, then the daemon's own, then the API's: the connection
     * this request came on is open. */
    p = strstr(r.body, "\nocsp_agent_state{state=\"valid\"} 1\n");
    assert_non_null(p);
    assert_non_null(strstr(r.body, "\nocsp_agent_staple_delivered{target=\"api\"} 1\n"));
    assert_true(strstr(r.body, "fake_metric 42\n") > p);
    assert_true(strstr(r.body, "\nocsp_agent_http_connections 1\n") > strstr(r.body, "fake_metric 42\n"));
    assert_int_equal(f->fake.metrics, 1);
    assert_int_equal(f->fake.statuses, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_is_cached_until_the_conf_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_put, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capability, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_test_and_metrics, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
