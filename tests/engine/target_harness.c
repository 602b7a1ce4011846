/*
 * What the delivery's tests share (tests/engine/test_delivery.c, test_hook.c, test_haproxy_crt.c): a test PKI and its
 * responses, the log captured in memory, a temporary directory per test, and a loop with one delivery.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "target_harness.h"

oa_testpki_t pki;
char dir[OA_TESTPKI_DIR_MAX];
time_t now;

static char path_buf[4][512];

/* Logs go to a memory stream the tests read. */
static FILE *log_stream;
static char *log_text;
static size_t log_len;

int group_setup(void **state)
{
    (void)state;
    now = time(NULL);
    log_stream = open_memstream(&log_text, &log_len);
    if (log_stream == NULL)
        return -1;
    oa_log_setup(OA_LOG_TEXT, OA_LOG_INFO, log_stream);
    return oa_testpki_init(&pki, 0x1001, "http://127.0.0.1:1/ocsp");
}

int test_setup(void **state)
{
    (void)state;
    return oa_testpki_tmpdir(dir);
}

int test_teardown(void **state)
{
    (void)state;
    oa_testpki_rmdir(dir);
    return 0;
}

int group_teardown(void **state)
{
    (void)state;
    oa_log_setup(OA_LOG_TEXT, OA_LOG_INFO, NULL);
    fclose(log_stream);
    free(log_text);
    oa_testpki_free(&pki);
    return 0;
}

const char *in_dir(int slot, const char *name)
{
    return oa_testpki_path(path_buf[slot], sizeof(path_buf[slot]), dir, name);
}

/* A verified-looking result for a real response: status, thisUpdate this_off s from now, nextUpdate next_off s from
 * now (none when !has_next). Different this_off give different DER. Free with oa_ocsp_result_clear. */
void make_result(oa_ocsp_result_t *res, int cert_status, long this_off, bool has_next, long next_off)
{
    oa_testpki_resp_opts_t o;
    unsigned char *der;
    size_t len;

    oa_testpki_resp_opts_init(&o, &pki);
    o.now = now;
    o.cert_status = cert_status;
    o.this_update_offset = this_off;
    o.produced_at_offset = this_off;
    o.has_next_update = has_next;
    o.next_update_offset = next_off;
    assert_int_equal(oa_testpki_response(&o, &der, &len), 0);
    memset(res, 0, sizeof(*res));
    res->cert_status = cert_status == V_OCSP_CERTSTATUS_GOOD ? OA_CERT_GOOD : OA_CERT_REVOKED;
    res->produced_at = now + this_off;
    res->this_update = now + this_off;
    res->next_update = has_next ? now + next_off : 0;
    res->revocation_reason = -1;
    if (cert_status == V_OCSP_CERTSTATUS_REVOKED)
        res->revocation_time = o.revocation_time;
    res->der = der;
    res->der_len = len;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* A loop with a 5 ms tick (so that conditions on files are checked), and a delivery with node id "node-7" and
 * staple path <dir>/ocsp.der; the test adds its target. */
void ctx_start(ctx_t *c)
{
    oa_delivery_options_t o = {.node_id = "node-7", .staple_path = in_dir(3, "ocsp.der")};

    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    assert_int_equal(uv_timer_init(&c->loop, &c->tick), 0);
    assert_int_equal(uv_timer_start(&c->tick, on_tick, 5, 5), 0);
    assert_int_equal(oa_delivery_new(&c->loop, &o, &c->d), 0);
}

/* Runs the loop until cond(c, arg) holds; fails the test after timeout_ms. */
void run_until(ctx_t *c, bool (*cond)(ctx_t *c, const void *arg), const void *arg, uint64_t timeout_ms,
                      const char *what)
{
    uint64_t deadline;

    uv_update_time(&c->loop);
    deadline = uv_now(&c->loop) + timeout_ms;
    while (!cond(c, arg)) {
        if (uv_now(&c->loop) >= deadline)
            fail_msg("timed out after %llu ms waiting for %s", (unsigned long long)timeout_ms, what);
        uv_run(&c->loop, UV_RUN_ONCE);
    }
}

/* Runs the loop for ms milliseconds (to show that nothing more happens). */
void run_for(ctx_t *c, uint64_t ms)
{
    uint64_t end;

    uv_update_time(&c->loop);
    end = uv_now(&c->loop) + ms;
    while (uv_now(&c->loop) < end)
        uv_run(&c->loop, UV_RUN_ONCE);
}

static void on_delivery_closed(void *arg)
{
    ((ctx_t *)arg)->closed = true;
}

static bool is_closed(ctx_t *c, const void *arg)
{
    (void)arg;
    return c->closed;
}

void ctx_close(ctx_t *c)
{
    oa_delivery_close(c->d, on_delivery_closed, c);
    run_until(c, is_closed, NULL, 5000, "the delivery to close");
    uv_close((uv_handle_t *)&c->tick, NULL);
    assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&c->loop), 0);
}

/* The hook target's deliveries_total for result "ok" or "error". */
uint64_t count(const ctx_t *c, const char *result)
{
    oa_delivery_status_t st;
    uint64_t n = 0;

    assert_int_equal(oa_delivery_snapshot(c->d, &st), 0);
    assert_int_equal(st.count, 1);
    if (strcmp(result, "ok") == 0)
        n = st.targets[0].deliveries_ok;
    else if (strcmp(result, "error") == 0)
        n = st.targets[0].deliveries_failed;
    else
        fail_msg("no result \"%s\"", result);
    oa_delivery_status_free(&st);
    return n;
}

static bool tries_reach(ctx_t *c, const void *arg)
{
    return count(c, "ok") + count(c, "error") >= *(const uint64_t *)arg;
}

void wait_tries(ctx_t *c, uint64_t n, uint64_t timeout_ms)
{
    char what[64];

    snprintf(what, sizeof(what), "%llu finished runs", (unsigned long long)n);
    run_until(c, tries_reach, &n, timeout_ms, what);
}

/* The state and last_error (or "") of the one target, copied into the caller's buffers. */
void target_status(const ctx_t *c, char *state, char *last_error, char *name)
{
    oa_delivery_status_t st;

    assert_int_equal(oa_delivery_snapshot(c->d, &st), 0);
    assert_int_equal(st.count, 1);
    snprintf(state, 32, "%s", oa_dtarget_state_name(st.targets[0].state));
    snprintf(last_error, OA_DTARGET_ERROR_MAX, "%s",
             st.targets[0].last_error != NULL ? st.targets[0].last_error : "");
    if (name != NULL)
        snprintf(name, 512, "%s", st.targets[0].target);
    oa_delivery_status_free(&st);
}

/* The log lines written since mark (a length of log_text), and the length now. */
size_t log_mark(void)
{
    fflush(log_stream);
    return log_len;
}

const char *log_since(size_t mark)
{
    fflush(log_stream);
    return log_text + mark;
}

int log_count(size_t mark, const char *needle)
{
    const char *p;
    int n = 0;

    for (p = log_since(mark); (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}
