/*
 * The API as a whole, in process: a real agent (server, router, auth, handlers, scheduler) on a loopback port,
 * driven by a blocking client from the test thread.
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "oa_agent.h"
#include "oa_auth.h"
#include "oa_log.h"
#include "oa_util.h"
#include "testnet.h"

typedef struct fixture_s {
    char dir[64];
    char users[96];
    char data[96];
    oa_options_t opts;
    uv_loop_t loop;
    oa_agent_t agent;
    uv_async_t stop;
    pthread_t thread;
    int port;
} fixture_t;

/* Basic credentials of the users the fixture creates. */
#define ADMIN_AUTH "YWRtaW5AZXhhbXBsZS5jb206c2VjcmV0"  /* admin@example.com:secret */
#define VIEWER_AUTH "dmlld2VyQGV4YW1wbGUuY29tOnNlY3JldA==" /* viewer@example.com:secret */
#define WRONG_AUTH "YWRtaW5AZXhhbXBsZS5jb206d3Jvbmc=" /* admin@example.com:wrong */

static void on_stop(uv_async_t *h)
{
    fixture_t *f = h->data;

    oa_agent_stop(&f->agent);
    uv_close((uv_handle_t *)h, NULL);
}

static void *loop_thread(void *arg)
{
    fixture_t *f = arg;

    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void write_users(const char *path)
{
    char admin[OA_PASSWD_ENCODED_MAX], viewer[OA_PASSWD_ENCODED_MAX];
    FILE *fp;

    assert_int_equal(oa_passwd_hash("secret", 6, 1000, admin, sizeof(admin)), 0);
    assert_int_equal(oa_passwd_hash("secret", 6, 1000, viewer, sizeof(viewer)), 0);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp,
            "{\"users\": [{\"name\": \"admin@example.com\", \"role\": \"admin\", \"password\": \"%s\"},"
            " {\"name\": \"viewer@example.com\", \"role\": \"cluster_viewer\", \"password\": \"%s\"}]}",
            admin, viewer);
    fclose(fp);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    oa_error_t err;
    char *argv[16];
    int argc = 0;

    assert_non_null(f);
    strcpy(f->dir, "/tmp/oa-router-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->users, sizeof(f->users), "%s/users.json", f->dir);
    snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
    write_users(f->users);

    argv[argc++] = "ocsp-agent";
    argv[argc++] = "--listen";
    argv[argc++] = "127.0.0.1:0";
    argv[argc++] = "--users";
    argv[argc++] = f->users;
    argv[argc++] = "--data-dir";
    argv[argc++] = f->data;
    argv[argc++] = "--log-level";
    argv[argc++] = "error";
    argv[argc] = NULL;
    assert_int_equal(oa_options_parse(argc, argv, &f->opts, &err), 0);
    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);

    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(oa_agent_start(&f->agent, &f->loop, &f->opts, &err), 0);
    f->port = oa_http_server_port(f->agent.server);
    assert_true(f->port > 0);
    f->stop.data = f;
    assert_int_equal(uv_async_init(&f->loop, &f->stop, on_stop), 0);
    assert_int_equal(pthread_create(&f->thread, NULL, loop_thread, f), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    char cmd[160];

    uv_async_send(&f->stop);
    pthread_join(f->thread, NULL);
    oa_agent_free(&f->agent);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    oa_options_free(&f->opts);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

typedef struct reply_s {
    int status;
    char headers[2048];
    json_t *json;
} reply_t;

/* Sends one request with Connection: close and reads the whole reply. */
static void request(fixture_t *f, const char *method, const char *path, const char *auth, const char *extra,
                    const char *body, reply_t *r)
{
    oa_testnet_reply_t raw;

    memset(r, 0, sizeof(*r));
    assert_int_equal(oa_testnet_http(f->port, method, path, auth, extra, body, &raw), 0);
    r->status = raw.status;
    snprintf(r->headers, sizeof(r->headers), "%s", raw.headers);
    r->json = json_loads(raw.body, 0, NULL);
}

static void assert_error(reply_t *r, int status, const char *code)
{
    assert_int_equal(r->status, status);
    assert_non_null(r->json);
    assert_string_equal(json_string_value(json_object_get(r->json, "error_code")), code);
    assert_non_null(json_string_value(json_object_get(r->json, "description")));
    assert_string_equal(json_string_value(json_object_get(r->json, "description")),
                        json_string_value(json_object_get(r->json, "message")));
    json_decref(r->json);
}

static void test_get_defaults(void **state)
{
    reply_t r;

    request(*state, "GET", "/v1/ocsp", ADMIN_AUTH, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "Content-Type: application/json"));
    assert_non_null(r.json);
    assert_int_equal(json_object_size(r.json), 6);
    assert_true(json_is_false(json_object_get(r.json, "ocsp_functionality")));
    assert_string_equal(json_string_value(json_object_get(r.json, "responder_url")), "");
    assert_int_equal(json_integer_value(json_object_get(r.json, "query_frequency")), 3600);
    assert_int_equal(json_integer_value(json_object_get(r.json, "response_timeout")), 1);
    assert_int_equal(json_integer_value(json_object_get(r.json, "recovery_frequency")), 60);
    assert_int_equal(json_integer_value(json_object_get(r.json, "recovery_max_tries")), 5);
    json_decref(r.json);
}

static void test_head_and_absolute_form(void **state)
{
    reply_t r;

    request(*state, "HEAD", "/v1/ocsp", ADMIN_AUTH, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.headers, "Content-Length: "));
    assert_null(r.json); /* no body */
    request(*state, "GET", "http://localhost/v1/ocsp", ADMIN_AUTH, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "query_frequency")), 3600);
    json_decref(r.json);
    request(*state, "GET", "http://localhost/v1/nothing", ADMIN_AUTH, NULL, NULL, &r);
    assert_error(&r, 404, "not_found");
}

static void test_auth_and_roles(void **state)
{
    reply_t r;

    request(*state, "GET", "/v1/ocsp", NULL, NULL, NULL, &r);
    assert_non_null(strstr(r.headers, "WWW-Authenticate: Basic"));
    assert_error(&r, 401, "unauthorized");
    request(*state, "GET", "/v1/ocsp", WRONG_AUTH, NULL, NULL, &r);
    assert_error(&r, 401, "unauthorized");
    request(*state, "GET", "/v1/ocsp", VIEWER_AUTH, NULL, NULL, &r);
    assert_error(&r, 403, "insufficient_permissions");
    request(*state, "PUT", "/v1/ocsp", VIEWER_AUTH, NULL, "{}", &r);
    assert_error(&r, 403, "insufficient_permissions");
    request(*state, "GET", "/v1/ocsp/status", VIEWER_AUTH, NULL, NULL, &r);
    assert_error(&r, 403, "insufficient_permissions");
    request(*state, "POST", "/v1/ocsp/test", VIEWER_AUTH, NULL, NULL, &r);
    assert_error(&r, 403, "insufficient_permissions");
}

static void test_routing_errors(void **state)
{
    reply_t r;

    request(*state, "GET", "/v1/nothing", ADMIN_AUTH, NULL, NULL, &r);
    assert_error(&r, 404, "not_found");
    request(*state, "GET", "/v1/ocsp/", ADMIN_AUTH, NULL, NULL, &r);
    assert_error(&r, 404, "not_found");
    request(*state, "DELETE", "/v1/ocsp", ADMIN_AUTH, NULL, NULL, &r);
    assert_non_null(strstr(r.headers, "Allow: GET, HEAD, PUT"));
    assert_error(&r, 405, "method_not_allowed");
    request(*state, "GET", "/v1/ocsp/test", ADMIN_AUTH, NULL, NULL, &r);
    assert_non_null(strstr(r.headers, "Allow: POST"));
    assert_error(&r, 405, "method_not_allowed");
}

static void test_put_updates_and_persists(void **state)
{
    bool found;
    fixture_t *f = *state;
    oa_conf_t saved;
    oa_error_t err;
    reply_t r;
    char path[160];

    request(f, "PUT", "/v1/ocsp", ADMIN_AUTH, "Content-Type: application/json\r\n",
            "{\"query_frequency\": 7200, \"recovery_max_tries\": 9}", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "query_frequency")), 7200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "recovery_max_tries")), 9);
    assert_int_equal(json_integer_value(json_object_get(r.json, "recovery_frequency")), 60);
    json_decref(r.json);

    snprintf(path, sizeof(path), "%s/ocsp.json", f->data);
    assert_int_equal(oa_conf_load(path, &saved, &found, &err), 0);
    assert_true(found);
    assert_int_equal(saved.query_frequency, 7200);
    assert_int_equal(saved.recovery_max_tries, 9);

    request(f, "GET", "/v1/ocsp", ADMIN_AUTH, NULL, NULL, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "query_frequency")), 7200);
    json_decref(r.json);
}

static void test_put_rejections_change_nothing(void **state)
{
    reply_t r;

    request(*state, "PUT", "/v1/ocsp", ADMIN_AUTH, NULL, "{\"query_frequency\": 59}", &r);
    assert_error(&r, 400, "invalid_schema");
    request(*state, "PUT", "/v1/ocsp", ADMIN_AUTH, NULL, "{\"ocsp_functionality\": true}", &r);
    assert_error(&r, 400, "no_responder_url");
    request(*state, "PUT", "/v1/ocsp", ADMIN_AUTH, NULL, "{\"responder_url\": \"http://evil.example\"}", &r);
    assert_error(&r, 400, "invalid_schema");
    request(*state, "PUT", "/v1/ocsp", ADMIN_AUTH, "Content-Type: text/plain\r\n", "{}", &r);
    assert_error(&r, 415, "unsupported_media_type");
    request(*state, "GET", "/v1/ocsp", ADMIN_AUTH, NULL, NULL, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "query_frequency")), 3600);
    assert_true(json_is_false(json_object_get(r.json, "ocsp_functionality")));
    json_decref(r.json);
}

static void test_status_and_test_without_cert(void **state)
{
    reply_t r;

    request(*state, "GET", "/v1/ocsp/status", ADMIN_AUTH, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "cert_status")), "UNKNOWN");
    assert_string_equal(json_string_value(json_object_get(r.json, "state")), "disabled");
    json_decref(r.json);
    request(*state, "POST", "/v1/ocsp/test", ADMIN_AUTH, NULL, NULL, &r);
    assert_error(&r, 500, "no_responder_url");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_and_absolute_form, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_and_roles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_routing_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_updates_and_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_rejections_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_and_test_without_cert, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
