/*
 * Whole queries against a real responder: tests/support/make-pki.sh builds a PKI in a temporary directory and
 * `openssl ocsp` serves its index on a free loopback port. The responder is started and stopped by the tests; it
 * dies with the test process (PR_SET_PDEATHSIG) and the group teardown kills and reaps it in every other path.
 * Readiness is read from /proc (see listening()), never probed with a bare connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "oa_error.h"
#include "oa_ocsp.h"
#include "oa_util.h"
#include "testnet.h"

typedef struct fixture_s {
    char dir[64];
    char script[512];
    int port;
    pid_t responder;
    oa_ocsp_target_t *target;
} fixture_t;

static fixture_t fx;

/* Runs argv to completion; returns its exit status (or -1). */
static int run(char *const argv[])
{
    pid_t pid = fork();
    int status;

    if (pid < 0)
        return -1;
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * True when something listens on port, read from /proc/net/tcp{,6} rather than by connecting: `openssl ocsp`
 * serves one connection at a time and stalls on a connection that closes without sending a request.
 */
static int listening(int port)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    char line[512], local[128], remote[128], st[8];
    size_t i;
    int found = 0;

    for (i = 0; i < OA_ARRAY_SIZE(files) && !found; i++) {
        FILE *fp = fopen(files[i], "r");

        if (fp == NULL)
            continue;
        while (!found && fgets(line, sizeof(line), fp) != NULL) {
            const char *colon;

            if (sscanf(line, " %*s %127s %127s %7s", local, remote, st) != 3)
                continue;
            colon = strrchr(local, ':');
            found = colon != NULL && strtol(colon + 1, NULL, 16) == port && strcmp(st, "0A") == 0;
        }
        fclose(fp);
    }
    return found;
}

static void responder_stop(void)
{
    int status;

    if (fx.responder <= 0)
        return;
    kill(fx.responder, SIGTERM);
    while (waitpid(fx.responder, &status, 0) < 0 && errno == EINTR)
        ;
    fx.responder = 0;
}

/* Starts `openssl ocsp` on fx.port and waits (at most 5 s) until it accepts connections. */
static void responder_start(void)
{
    char path[5][128], port[16], log[128];
    int i, status;
    pid_t pid;

    snprintf(path[0], sizeof(path[0]), "%s/index.txt", fx.dir);
    snprintf(path[1], sizeof(path[1]), "%s/ocsp.pem", fx.dir);
    snprintf(path[2], sizeof(path[2]), "%s/ocsp.key", fx.dir);
    snprintf(path[3], sizeof(path[3]), "%s/ca.pem", fx.dir);
    snprintf(port, sizeof(port), "%d", fx.port);
    snprintf(log, sizeof(log), "%s/responder.log", fx.dir);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* -ignore_err keeps it serving after a request it cannot parse. */
        char *argv[] = {"openssl", "ocsp",  "-index", path[0], "-port", port, "-rsigner",    path[1],
                        "-rkey",   path[2], "-CA",    path[3], "-nmin", "5",  "-ignore_err", NULL};
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    fx.responder = pid;
    for (i = 0; i < 100; i++) {
        if (listening(fx.port))
            return;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fx.responder = 0;
            fail_msg("openssl ocsp exited before accepting connections (see %s)", log);
        }
        usleep(50 * 1000);
    }
    fail_msg("openssl ocsp did not accept connections on port %d within 5 s", fx.port);
}

static void make_pki(const char *verb)
{
    char url[64];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fx.port);
    if (verb == NULL) {
        char *argv[] = {"bash", fx.script, fx.dir, url, NULL};
        assert_int_equal(run(argv), 0);
    } else {
        char *argv[] = {"bash", fx.script, (char *)verb, fx.dir, NULL};
        assert_int_equal(run(argv), 0);
    }
}

static int group_setup(void **state)
{
    const char *data = getenv("OA_TEST_DATA");
    char chain[128];
    oa_error_t err;

    (void)state;
    memset(&fx, 0, sizeof(fx));
    snprintf(fx.script, sizeof(fx.script), "%s/../support/make-pki.sh", data != NULL ? data : "tests/data");
    snprintf(fx.dir, sizeof(fx.dir), "/tmp/oa-test-query-XXXXXX");
    if (mkdtemp(fx.dir) == NULL)
        return -1;
    fx.port = oa_testnet_free_port();
    if (fx.port <= 0)
        return -1;
    make_pki(NULL);
    snprintf(chain, sizeof(chain), "%s/proxy-chain.pem", fx.dir);
    if (oa_ocsp_target_load(chain, NULL, NULL, &fx.target, &err) != 0) {
        fprintf(stderr, "target: %s\n", err.text);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    char *argv[] = {"rm", "-rf", fx.dir, NULL};

    (void)state;
    responder_stop();
    oa_ocsp_target_free(fx.target);
    if (fx.dir[0] != '\0')
        run(argv);
    return 0;
}

/* Every test starts from a valid leaf and a running responder, and leaves the responder stopped. */
static int test_setup(void **state)
{
    (void)state;
    make_pki("unrevoke");
    responder_start();
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    responder_stop();
    return 0;
}

/* ---- Running one query ---- */

typedef struct outcome_s {
    int calls;
    int err;
    char text[OA_ERROR_TEXT_MAX];
    int has_res;
    oa_ocsp_result_t res;
    unsigned duration_ms;
} outcome_t;

static void on_query(oa_ocsp_query_t *q, int err, const char *errtext, const oa_ocsp_result_t *res,
                     unsigned duration_ms, void *data)
{
    outcome_t *o = data;

    (void)q;
    o->calls++;
    o->err = err;
    snprintf(o->text, sizeof(o->text), "%s", errtext != NULL ? errtext : "");
    o->duration_ms = duration_ms;
    if (res != NULL) {
        assert_int_equal(oa_ocsp_result_copy(&o->res, res), 0);
        o->has_res = 1;
    }
}

static void query(const oa_ocsp_query_opts_t *opts, int cancel, outcome_t *o)
{
    uv_loop_t loop;
    oa_ocsp_query_t *q = NULL;
    oa_error_t err;

    memset(o, 0, sizeof(*o));
    assert_int_equal(uv_loop_init(&loop), 0);
    if (oa_ocsp_query_start(&loop, fx.target, opts, on_query, o, &q, &err) != 0)
        fail_msg("query_start: %s", err.text);
    assert_non_null(q);
    if (cancel)
        oa_ocsp_query_cancel(q);
    assert_int_equal(o->calls, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o->calls, 1);
}

/* The responder's log holds the first line of every request it received. */
static int log_contains(const char *needle)
{
    char path[128];
    oa_buf_t b;
    int found;

    oa_buf_init(&b);
    snprintf(path, sizeof(path), "%s/responder.log", fx.dir);
    assert_int_equal(oa_file_read(path, 1 << 20, &b), 0);
    found = b.data != NULL && strstr(b.data, needle) != NULL;
    oa_buf_free(&b);
    return found;
}

static void assert_fresh_times(const oa_ocsp_result_t *r)
{
    time_t now = time(NULL);

    assert_true(r->this_update <= now);
    assert_true(r->this_update > now - 60);
    assert_true(r->produced_at <= now);
    assert_true(r->produced_at > now - 60);
    /* -nmin 5: nextUpdate five minutes after thisUpdate. */
    assert_int_equal(r->next_update - r->this_update, 300);
    assert_true(r->der_len > 100);
    assert_non_null(r->der);
}

/* ---- Tests ---- */

static void test_good_post(void **state)
{
    oa_ocsp_query_opts_t opts = {.timeout_ms = 5000, .with_nonce = true};
    outcome_t o;

    (void)state;
    query(&opts, 0, &o);
    if (o.err != 0)
        fail_msg("%s", o.text);
    assert_true(o.has_res);
    assert_int_equal(o.res.cert_status, OA_CERT_GOOD);
    assert_fresh_times(&o.res);
    assert_int_equal(o.res.revocation_time, 0);
    assert_int_equal(o.res.revocation_reason, -1);
    assert_true(o.duration_ms < 5000);
    assert_true(log_contains("POST / HTTP/1.1"));
    assert_false(log_contains("GET /"));
    oa_ocsp_result_clear(&o.res);
}

static void test_good_get(void **state)
{
    oa_ocsp_query_opts_t opts = {.timeout_ms = 5000, .use_get = true, .with_nonce = true};
    outcome_t o;

    (void)state;
    query(&opts, 0, &o);
    if (o.err != 0)
        fail_msg("%s", o.text);
    assert_int_equal(o.res.cert_status, OA_CERT_GOOD);
    assert_fresh_times(&o.res);
    /* The request went as GET /<url-encoded base64 of the DER request>, which starts with a SEQUENCE ("MG"/"ME"). */
    assert_true(log_contains("GET /M"));
    oa_ocsp_result_clear(&o.res);
}

static void test_revoked(void **state)
{
    oa_ocsp_query_opts_t opts = {.timeout_ms = 5000, .with_nonce = false};
    outcome_t o;
    time_t now;

    (void)state;
    /* The responder reads its index when it starts (later changes show up one request late), so restart it. */
    responder_stop();
    make_pki("revoke");
    responder_start();
    query(&opts, 0, &o);
    now = time(NULL);
    if (o.err != 0)
        fail_msg("%s", o.text);
    assert_int_equal(o.res.cert_status, OA_CERT_REVOKED);
    assert_true(o.res.revocation_time <= now);
    assert_true(o.res.revocation_time > now - 120);
    assert_int_equal(o.res.revocation_reason, OCSP_REVOKED_STATUS_KEYCOMPROMISE);
    assert_fresh_times(&o.res);
    oa_ocsp_result_clear(&o.res);
}

static void test_responder_down(void **state)
{
    oa_ocsp_query_opts_t opts = {.timeout_ms = 3000, .with_nonce = true};
    outcome_t o;
    char where[64];

    (void)state;
    responder_stop();
    query(&opts, 0, &o);
    assert_int_equal(o.err, OA_E_OCSP_CONNECT);
    assert_false(o.has_res);
    snprintf(where, sizeof(where), "127.0.0.1:%d", fx.port);
    assert_non_null(strstr(o.text, where));
    assert_non_null(strstr(o.text, "connection refused"));
}

static void test_cancel(void **state)
{
    oa_ocsp_query_opts_t opts = {.timeout_ms = 3000, .with_nonce = true};
    outcome_t o;

    (void)state;
    query(&opts, 1, &o);
    assert_int_equal(o.err, OA_E_OCSP_CANCELLED);
    assert_false(o.has_res);
    assert_non_null(strstr(o.text, "cancelled"));
}

static void test_cannot_start(void **state)
{
    oa_ocsp_query_opts_t opts = {.timeout_ms = 3000};
    char *saved = fx.target->responder_url;
    char https[] = "https://127.0.0.1/";
    oa_ocsp_query_t *q = (oa_ocsp_query_t *)&opts;
    uv_loop_t loop;
    outcome_t o;
    oa_error_t err;

    (void)state;
    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    fx.target->responder_url = NULL;
    assert_int_equal(oa_ocsp_query_start(&loop, fx.target, &opts, on_query, &o, &q, &err), -1);
    assert_int_equal(err.code, OA_E_NO_RESPONDER_URL);
    assert_null(q);
    fx.target->responder_url = https;
    assert_int_equal(oa_ocsp_query_start(&loop, fx.target, &opts, on_query, &o, &q, &err), -1);
    assert_int_equal(err.code, OA_E_OCSP_URL);
    fx.target->responder_url = saved;
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_good_post, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_good_get, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_revoked, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_responder_down, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, test_setup, test_teardown),
        cmocka_unit_test(test_cannot_start),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
