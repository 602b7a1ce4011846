/*
 * The scheduler against a scripted querier, on a manual clock (testclock.h): nothing waits, time moves only when a
 * test advances it, and timers fire at their exact due times. Frequencies run at their real values (time scale 1,
 * except in the test of the time scale itself), so the numbers below are the production ones: an attempt at t0 with
 * query_frequency 60 s is followed by the next one at exactly t0 + 60000 ms. The scripted answers arrive 10 ms after
 * their query starts unless a test says otherwise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cmocka.h>

#include "oa_api.h"
#include "oa_log.h"
#include "oa_sched.h"
#include "oa_util.h"
#include "testclock.h"
#include "testpki.h"

#define MAX_STARTS 64
#define NEVER      0xffffffffu
#define HOUR_MS    (3600 * 1000)

/* ---- a scripted querier ---- */

typedef struct answer_script_s {
    int err;                 /* 0 for an answer, else the OA_E_* the query fails with */
    oa_cert_status_t status; /* GOOD, REVOKED or UNKNOWN */
    bool no_next_update;
    long next_offset;        /* nextUpdate, seconds from the wall clock at answer time */
    unsigned delay_ms;       /* NEVER: no answer until cancelled */
} answer_script_t;

typedef struct fake_s {
    oa_testclock_t *clk;
    answer_script_t script[16];
    int n_script;
    answer_script_t dflt; /* once the script is used up */
    unsigned cancel_delay_ms; /* how long a cancelled query takes to come back, 0 by default */
    int starts;
    int cancels;
    int answers;
    uint64_t start_at[MAX_STARTS]; /* the monotonic time of each start, index 1.. */
    unsigned last_timeout_ms;
    oa_ocsp_result_t last; /* times and status of the last answer (der not kept) */
} fake_t;

typedef struct fake_query_s {
    fake_t *fake;
    uv_timer_t timer;
    answer_script_t ans;
    int index;
    oa_ocsp_query_cb cb;
    void *data;
    bool cancelled;
    uint64_t started;
} fake_query_t;

static fake_t *g_fake;

static answer_script_t good(void)
{
    return (answer_script_t){.status = OA_CERT_GOOD, .next_offset = 86400, .delay_ms = 10};
}

static answer_script_t with_status(oa_cert_status_t st)
{
    answer_script_t a = good();

    a.status = st;
    return a;
}

static answer_script_t good_until(long next_offset)
{
    answer_script_t a = good();

    a.next_offset = next_offset;
    return a;
}

static answer_script_t failing(int err)
{
    answer_script_t a = good();

    a.err = err;
    return a;
}

static void fake_der_text(int index, char *buf, size_t size)
{
    snprintf(buf, size, "fake-der-%d", index);
}

static void on_fake_closed(uv_handle_t *h)
{
    free(oa_container_of(h, fake_query_t, timer));
}

static void on_fake_fire(uv_timer_t *t)
{
    fake_query_t *fq = oa_container_of(t, fake_query_t, timer);
    fake_t *f = fq->fake;
    unsigned dur = (unsigned)(oa_testclock_now(f->clk) - fq->started);
    oa_ocsp_result_t res;
    char der[32];
    time_t now = oa_testclock_wall(f->clk);

    f->answers++;
    if (fq->cancelled) {
        fq->cb((oa_ocsp_query_t *)fq, OA_E_OCSP_CANCELLED, "the query was cancelled", NULL, dur, fq->data);
    } else if (fq->ans.err != 0) {
        fq->cb((oa_ocsp_query_t *)fq, fq->ans.err, "a scripted failure", NULL, dur, fq->data);
    } else {
        memset(&res, 0, sizeof(res));
        res.cert_status = fq->ans.status;
        res.this_update = now - 60;
        res.produced_at = now - 30;
        res.next_update = fq->ans.no_next_update ? 0 : now + fq->ans.next_offset;
        res.revocation_reason = -1;
        if (res.cert_status == OA_CERT_REVOKED) {
            res.revocation_time = now - 86400;
            res.revocation_reason = OCSP_REVOKED_STATUS_KEYCOMPROMISE;
        }
        fake_der_text(fq->index, der, sizeof(der));
        f->last = res;
        res.der = (unsigned char *)der;
        res.der_len = strlen(der);
        fq->cb((oa_ocsp_query_t *)fq, 0, NULL, &res, dur, fq->data);
    }
    uv_close((uv_handle_t *)&fq->timer, on_fake_closed);
}

static int fake_start(uv_loop_t *loop, const oa_ocsp_target_t *t, const oa_ocsp_query_opts_t *opts,
                      oa_ocsp_query_cb cb, void *data, oa_ocsp_query_t **out, oa_error_t *err)
{
    fake_t *f = g_fake;
    fake_query_t *fq = calloc(1, sizeof(*fq));

    (void)t;
    (void)err;
    assert_non_null(fq);
    f->starts++;
    assert_true(f->starts < MAX_STARTS);
    f->start_at[f->starts] = oa_testclock_now(f->clk);
    f->last_timeout_ms = opts->timeout_ms;
    fq->fake = f;
    fq->index = f->starts;
    fq->ans = f->starts <= f->n_script ? f->script[f->starts - 1] : f->dflt;
    fq->cb = cb;
    fq->data = data;
    fq->started = oa_testclock_now(f->clk);
    uv_timer_init(loop, &fq->timer);
    if (fq->ans.delay_ms != NEVER)
        oa_testclock_timer_start(f->clk, &fq->timer, on_fake_fire, fq->ans.delay_ms);
    *out = (oa_ocsp_query_t *)fq;
    return 0;
}

static void fake_cancel(oa_ocsp_query_t *q)
{
    fake_query_t *fq = (fake_query_t *)q;

    fq->fake->cancels++;
    fq->cancelled = true;
    oa_testclock_timer_start(fq->fake->clk, &fq->timer, on_fake_fire, fq->fake->cancel_delay_ms);
}

static const oa_sched_querier_t fake_querier = {fake_start, fake_cancel};

/* ---- the test context ---- */

typedef struct ctx_s {
    uv_loop_t loop;
    oa_testclock_t clk;
    uint64_t t0; /* the monotonic time when the context was made */
    time_t w0;   /* the wall clock then, a whole second */
    double scale;
    fake_t fake;
    char dir[OA_TESTPKI_DIR_MAX];
    char staple[OA_TESTPKI_DIR_MAX + 16];
    oa_ocsp_target_t target;
    oa_sched_t *s;
    int closed;
} ctx_t;

static void ctx_init_loop(ctx_t *c)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    oa_testclock_init(&c->clk, &c->loop);
    c->t0 = oa_testclock_now(&c->clk);
    c->w0 = oa_testclock_wall(&c->clk);
    assert_int_equal(oa_testclock_wall_ms(&c->clk), (int64_t)c->w0 * 1000);
    c->scale = 1.0;
    assert_int_equal(oa_testpki_tmpdir(c->dir), 0);
    oa_testpki_path(c->staple, sizeof(c->staple), c->dir, "ocsp.der");
    c->fake.clk = &c->clk;
    c->fake.dflt = good();
    g_fake = &c->fake;
}

static void ctx_new_sched(ctx_t *c, const oa_ocsp_target_t *target)
{
    oa_sched_options_t o = {.target = target,
                            .data_dir = c->dir,
                            .time_scale = c->scale,
                            .querier = &fake_querier,
                            .clock = &c->clk.clock};

    assert_int_equal(oa_sched_new(&c->loop, &o, &c->s), 0);
}

/* A context whose target is only a responder URL: the fake querier never looks at certificates. */
static void ctx_setup_scaled(ctx_t *c, double scale)
{
    ctx_init_loop(c);
    c->scale = scale;
    c->target.responder_url = "http://127.0.0.1:9/ocsp";
    c->target.serial_hex = "1A2B";
    c->target.subject = "CN=proxy.test";
    ctx_new_sched(c, &c->target);
}

static void ctx_setup(ctx_t *c)
{
    ctx_setup_scaled(c, 1.0);
}

static void on_sched_closed(void *arg)
{
    ((ctx_t *)arg)->closed++;
}

/* Closes the scheduler: a cancelled query answers at once (the fake's cancel_delay_ms is 0 unless a test changed
 * it), so one instant of the clock settles everything, and nothing stays armed. */
static void ctx_close_sched(ctx_t *c)
{
    oa_sched_close(c->s, on_sched_closed, c);
    c->s = NULL;
    oa_testclock_advance(&c->clk, 0);
    assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(c->closed, 1);
    assert_int_equal(oa_testclock_armed(&c->clk), 0);
}

/* After ctx_close_sched: every handle is closed, so the loop closes, and the data dir goes. */
static void ctx_free(ctx_t *c)
{
    assert_int_equal(uv_loop_close(&c->loop), 0);
    assert_int_equal(oa_testpki_rmdir(c->dir), 0);
    g_fake = NULL;
}

static void ctx_teardown(ctx_t *c)
{
    ctx_close_sched(c);
    ctx_free(c);
}

/* ---- time ---- */

static uint64_t now(const ctx_t *c)
{
    return oa_testclock_now(&c->clk);
}

static void advance(ctx_t *c, uint64_t ms)
{
    oa_testclock_advance(&c->clk, ms);
}

static void advance_to(ctx_t *c, uint64_t at)
{
    oa_testclock_advance_to(&c->clk, at);
}

/* Query number n starts at exactly at: not one millisecond sooner, and at that very time. */
static void expect_start_at(ctx_t *c, int n, uint64_t at)
{
    assert_int_equal(c->fake.starts, n - 1);
    assert_true(now(c) < at);
    advance_to(c, at - 1);
    assert_int_equal(c->fake.starts, n - 1);
    advance_to(c, at);
    assert_int_equal(c->fake.starts, n);
    assert_int_equal(c->fake.start_at[n], at);
}

static oa_conf_t conf_of(bool enabled, int qf, int rf, int max_tries)
{
    oa_conf_t conf = {.ocsp_functionality = enabled,
                      .query_frequency = qf,
                      .response_timeout = 1,
                      .recovery_frequency = rf,
                      .recovery_max_tries = max_tries};

    return conf;
}

static void script(ctx_t *c, int n, ...)
{
    va_list ap;
    int i;

    va_start(ap, n);
    for (i = 0; i < n; i++)
        c->fake.script[c->fake.n_script++] = va_arg(ap, answer_script_t);
    va_end(ap);
}

static uint64_t gap(const ctx_t *c, int from, int to)
{
    return c->fake.start_at[to] - c->fake.start_at[from];
}

/* Enables c's scheduler with conf and lets the first query (at once, at t0) be answered. */
static void enable_and_answer(ctx_t *c, const oa_conf_t *conf)
{
    oa_sched_apply_conf(c->s, conf);
    advance(c, 0);
    assert_int_equal(c->fake.starts, 1);
    assert_int_equal(c->fake.start_at[1], c->t0);
    advance(c, c->fake.n_script > 0 ? c->fake.script[0].delay_ms : c->fake.dflt.delay_ms);
    assert_int_equal(c->fake.answers, 1);
}

/* ---- the staple hook ---- */

typedef struct staple_log_s {
    int calls;
    int nulls;
    bool last_null;
    time_t last_next_update;
} staple_log_t;

static void on_staple_hook(void *data, const oa_ocsp_result_t *res)
{
    staple_log_t *l = data;

    l->calls++;
    l->last_null = res == NULL;
    l->nulls += res == NULL;
    l->last_next_update = res != NULL ? res->next_update : 0;
}

/* ---- status, staple and metrics helpers ---- */

/* The status object as GET /v1/ocsp/status renders it from the scheduler's snapshot (without the delivery). */
static json_t *status(ctx_t *c)
{
    oa_sched_status_t snap;
    json_t *st;

    oa_sched_snapshot(c->s, &snap);
    st = oa_api_status_json(&snap, NULL);
    assert_non_null(st);
    return st;
}

/* The scheduler's metrics as /metrics renders them from its snapshot. */
static void metrics(ctx_t *c, oa_buf_t *b)
{
    oa_sched_status_t snap;

    oa_sched_snapshot(c->s, &snap);
    assert_int_equal(oa_api_sched_metrics(&snap, b), 0);
}

static void assert_key_str(json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);

    if (want == NULL) {
        assert_null(v);
        return;
    }
    assert_true(json_is_string(v));
    assert_string_equal(json_string_value(v), want);
}

static void assert_key_int(json_t *o, const char *key, json_int_t want)
{
    json_t *v = json_object_get(o, key);

    assert_true(json_is_integer(v));
    assert_int_equal(json_integer_value(v), want);
}

static void assert_key_time(json_t *o, const char *key, time_t want)
{
    char buf[OA_RFC1123_LEN];

    assert_key_str(o, key, oa_time_rfc1123(want, buf));
}

static void assert_status(ctx_t *c, const char *cert_status, const char *state)
{
    json_t *st = status(c);

    assert_key_str(st, "cert_status", cert_status);
    assert_key_str(st, "state", state);
    json_decref(st);
}

static bool staple_exists(const ctx_t *c)
{
    struct stat sb;

    return stat(c->staple, &sb) == 0;
}

static void assert_staple(const ctx_t *c, int index)
{
    oa_buf_t b;
    char want[32];
    struct stat sb;

    fake_der_text(index, want, sizeof(want));
    oa_buf_init(&b);
    assert_int_equal(oa_file_read(c->staple, 4096, &b), 0);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    oa_buf_free(&b);
    assert_int_equal(stat(c->staple, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
}

static void assert_metrics_line(ctx_t *c, const char *line)
{
    oa_buf_t b;
    char *want;

    oa_buf_init(&b);
    metrics(c, &b);
    want = malloc(strlen(line) + 3);
    assert_non_null(want);
    sprintf(want, "\n%s\n", line);
    if (strstr(b.data, want) == NULL)
        fail_msg("metrics lack \"%s\":\n%s", line, b.data);
    free(want);
    oa_buf_free(&b);
}

static void assert_no_metrics_text(ctx_t *c, const char *text)
{
    oa_buf_t b;

    oa_buf_init(&b);
    metrics(c, &b);
    assert_null(strstr(b.data, text));
    oa_buf_free(&b);
}

/* ---- test answers ---- */

typedef struct test_answer_s {
    int fired;
    int err;
    char text[OA_ERROR_TEXT_MAX];
    char cert_status[16];
    char state[16];
    bool has_status;
    bool has_this_update;
    bool has_revocation_time;
} test_answer_t;

static void on_test_answer(void *data, int err, const char *text, const oa_sched_status_t *snap)
{
    test_answer_t *a = data;
    json_t *st = snap != NULL ? oa_api_status_json(snap, NULL) : NULL;

    a->fired++;
    a->err = err;
    snprintf(a->text, sizeof(a->text), "%s", text != NULL ? text : "");
    a->has_status = st != NULL;
    if (st != NULL) {
        snprintf(a->cert_status, sizeof(a->cert_status), "%s",
                 json_string_value(json_object_get(st, "cert_status")));
        snprintf(a->state, sizeof(a->state), "%s", json_string_value(json_object_get(st, "state")));
        a->has_this_update = json_object_get(st, "this_update") != NULL;
        a->has_revocation_time = json_object_get(st, "revocation_time") != NULL;
    }
    json_decref(st);
}

static void start_test(ctx_t *c, test_answer_t *a)
{
    oa_error_t err;

    memset(a, 0, sizeof(*a));
    assert_int_equal(oa_sched_test(c->s, on_test_answer, a, &err), 0);
}

/* ---- the tests ---- */

static void test_enable_queries_at_once(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);
    json_t *st;

    (void)state;
    ctx_setup(&c);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    assert_status(&c, "UNKNOWN", "disabled");
    oa_sched_apply_conf(c.s, &conf);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    /* "At once" is the next loop iteration: the caller finishes before the query starts, at the same instant. */
    assert_int_equal(c.fake.starts, 0);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    assert_int_equal(c.fake.start_at[1], c.t0);
    assert_int_equal(c.fake.last_timeout_ms, 1000);
    advance(&c, 9);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    advance(&c, 1);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_int_equal(c.fake.starts, 1);
    assert_staple(&c, 1);

    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "responder_url", "http://127.0.0.1:9/ocsp");
    assert_key_time(st, "produced_at", c.fake.last.produced_at);
    assert_key_time(st, "this_update", c.fake.last.this_update);
    assert_key_time(st, "next_update", c.fake.last.next_update);
    assert_int_equal(c.fake.last.next_update, c.w0 + 86400);
    assert_key_str(st, "revocation_time", NULL);
    assert_key_str(st, "state", "valid");
    assert_key_time(st, "last_attempt", c.w0);
    assert_key_time(st, "last_success", c.w0);
    assert_non_null(json_object_get(st, "next_query"));
    assert_key_str(st, "last_error_code", NULL);
    assert_key_str(st, "last_error", NULL);
    assert_key_int(st, "consecutive_failures", 0);
    assert_key_int(st, "recovery_tries", 0);
    assert_key_int(st, "recovery_max_tries", 5);
    json_decref(st);

    /* A second on, the status shows the next query an hour after the attempt, the response 86399 s from expiry. */
    advance_to(&c, c.t0 + 1000);
    assert_int_equal(c.fake.starts, 1);
    st = status(&c);
    assert_key_time(st, "next_query", c.w0 + 3600);
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ok\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"GOOD\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"UNKNOWN\"} 0");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"valid\"} 1");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"pending\"} 0");
    assert_metrics_line(&c, "ocsp_agent_consecutive_failures 0");
    assert_metrics_line(&c, "ocsp_agent_staple_expiry_seconds 86399");
    assert_metrics_line(&c, "# TYPE ocsp_agent_queries_total counter");
    assert_metrics_line(&c, "# TYPE ocsp_agent_staple_expiry_seconds gauge");
    assert_no_metrics_text(&c, "result=\"ocsp_");
    /* The next query is due exactly query_frequency after the start of the first. */
    expect_start_at(&c, 2, c.t0 + HOUR_MS);
    ctx_teardown(&c);
}

static void test_revoked_is_cached(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);
    json_t *st;

    (void)state;
    ctx_setup(&c);
    script(&c, 1, with_status(OA_CERT_REVOKED));
    enable_and_answer(&c, &conf);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple(&c, 1);
    st = status(&c);
    assert_key_str(st, "cert_status", "REVOKED");
    assert_key_time(st, "revocation_time", c.fake.last.revocation_time);
    assert_key_str(st, "revocation_reason", "keyCompromise");
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"REVOKED\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"GOOD\"} 0");
    ctx_teardown(&c);
}

static void test_regular_interval(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 5);
    answer_script_t slow = good();
    int i;

    (void)state;
    ctx_setup(&c);
    slow.delay_ms = 500;
    script(&c, 2, good(), slow);
    enable_and_answer(&c, &conf);
    /* Every interval runs from the start of the last attempt, however long its answer took (the second 500 ms). */
    expect_start_at(&c, 2, c.t0 + 60000);
    expect_start_at(&c, 3, c.t0 + 120000);
    expect_start_at(&c, 4, c.t0 + 180000);
    assert_int_equal(c.fake.starts, 4);
    for (i = 1; i < 4; i++)
        assert_int_equal(gap(&c, i, i + 1), 60000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    ctx_teardown(&c);
}

/* --time-scale multiplies query_frequency and recovery_frequency, never response_timeout. */
static void test_time_scale(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 20, 5);
    test_answer_t a;

    (void)state;
    ctx_setup_scaled(&c, 0.005);
    script(&c, 2, good(), failing(OA_E_OCSP_CONNECT));
    enable_and_answer(&c, &conf);
    expect_start_at(&c, 2, c.t0 + 300); /* 60 s * 0.005 */
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    expect_start_at(&c, 3, c.t0 + 400); /* 20 s * 0.005 after the failed attempt */
    assert_int_equal(c.fake.last_timeout_ms, 1000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    /* A test's safety timeout stays response_timeout + 5 s. */
    c.fake.dflt.delay_ms = NEVER;
    oa_sched_apply_conf(c.s, &(oa_conf_t){false, 60, 1, 20, 5});
    start_test(&c, &a);
    advance(&c, 5999);
    assert_int_equal(a.fired, 0);
    advance(&c, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_TASK_QUEUED_TOO_LONG);
    ctx_teardown(&c);
}

static void test_next_update_midpoint_and_floor(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);

    (void)state;
    ctx_setup(&c);
    script(&c, 3, good_until(4), good_until(1), good());
    enable_and_answer(&c, &conf);
    /* Answered at t0+10 with nextUpdate w0+4 s: 3990 ms remain, the midpoint is 1995 ms after the answer, long
     * before the regular hour. */
    expect_start_at(&c, 2, c.t0 + 2005);
    /* Answered at t0+2015 with nextUpdate w0+3 s: 985 ms remain, so the midpoint (t0+2507) would be 502 ms after
     * the attempt; the floor holds the next query to exactly 1 s after it. */
    advance_to(&c, c.t0 + 2999);
    assert_int_equal(c.fake.last.next_update, c.w0 + 3);
    assert_status(&c, "GOOD", "valid");
    /* Meanwhile the response expires at its nextUpdate, to the millisecond. */
    advance_to(&c, c.t0 + 3000);
    assert_false(staple_exists(&c));
    assert_status(&c, "UNKNOWN", "invalidated");
    expect_start_at(&c, 3, c.t0 + 3005);
    assert_int_equal(gap(&c, 1, 2), 2005);
    assert_int_equal(gap(&c, 2, 3), 1000);
    advance(&c, 10);
    assert_int_equal(c.fake.answers, 3);
    assert_status(&c, "GOOD", "valid");
    assert_staple(&c, 3);
    ctx_teardown(&c);
}

static void test_recovery_invalidation_and_restore(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 240, 60, 2); /* 240 s regular, 60 s recovery, 2 retries */
    staple_log_t hook;
    json_t *st;

    (void)state;
    memset(&hook, 0, sizeof(hook));
    ctx_setup(&c);
    oa_sched_set_staple_hook(c.s, on_staple_hook, &hook);
    assert_int_equal(hook.calls, 1); /* at once, with nothing cached */
    assert_true(hook.last_null);
    script(&c, 5, good(), failing(OA_E_OCSP_TIMEOUT), failing(OA_E_OCSP_CONNECT), failing(OA_E_OCSP_HTTP_STATUS),
           good());
    enable_and_answer(&c, &conf);
    assert_int_equal(hook.calls, 2);
    assert_false(hook.last_null);

    expect_start_at(&c, 2, c.t0 + 240000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    assert_int_equal(c.fake.starts, 2);
    /* The valid response keeps being served while recovering. */
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "recovering");
    assert_key_int(st, "consecutive_failures", 1);
    assert_key_int(st, "recovery_tries", 0);
    assert_key_str(st, "last_error_code", "ocsp_responder_timeout");
    assert_key_str(st, "last_error", "a scripted failure");
    assert_key_time(st, "last_attempt", c.w0 + 240);
    json_decref(st);
    assert_staple(&c, 1);
    assert_int_equal(hook.calls, 2);

    /* Retries every recovery_frequency from the last attempt; one failure started recovery, then exactly
     * recovery_max_tries retries failed. */
    expect_start_at(&c, 3, c.t0 + 300000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    expect_start_at(&c, 4, c.t0 + 360000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    assert_int_equal(c.fake.starts, 4);
    assert_int_equal(gap(&c, 2, 3), 60000);
    assert_int_equal(gap(&c, 3, 4), 60000);
    assert_false(staple_exists(&c));
    assert_int_equal(hook.calls, 3);
    assert_true(hook.last_null);
    st = status(&c);
    assert_key_str(st, "cert_status", "UNKNOWN");
    assert_key_str(st, "state", "invalidated");
    assert_key_str(st, "produced_at", NULL);
    assert_key_str(st, "this_update", NULL);
    assert_key_str(st, "next_update", NULL);
    assert_key_int(st, "consecutive_failures", 3);
    assert_key_int(st, "recovery_tries", 2);
    assert_key_str(st, "last_error_code", "ocsp_responder_http_status");
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_state{state=\"invalidated\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"UNKNOWN\"} 1");
    assert_metrics_line(&c, "ocsp_agent_staple_expiry_seconds NaN");
    assert_metrics_line(&c, "ocsp_agent_consecutive_failures 3");

    /* Back to query_frequency from the last retry; the next valid answer restores the status. */
    expect_start_at(&c, 5, c.t0 + 600000);
    advance(&c, 10);
    assert_int_equal(c.fake.starts, 5);
    assert_int_equal(gap(&c, 4, 5), 240000);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple(&c, 5);
    assert_int_equal(hook.calls, 4);
    assert_false(hook.last_null);
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_int(st, "consecutive_failures", 0);
    assert_key_int(st, "recovery_tries", 0);
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ok\"} 2");
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ocsp_responder_timeout\"} 1");
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ocsp_responder_connection_failed\"} 1");
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ocsp_responder_http_status\"} 1");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"valid\"} 1");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"invalidated\"} 0");
    ctx_teardown(&c);
}

static void test_cache_served_until_next_update(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 100);
    staple_log_t hook;

    (void)state;
    memset(&hook, 0, sizeof(hook));
    ctx_setup(&c);
    script(&c, 1, good_until(2));
    c.fake.dflt = failing(OA_E_OCSP_CONNECT);
    enable_and_answer(&c, &conf);
    oa_sched_set_staple_hook(c.s, on_staple_hook, &hook);
    assert_int_equal(hook.calls, 1);
    assert_int_equal(hook.last_next_update, c.w0 + 2);
    /* The midpoint to nextUpdate, 995 ms after the answer, brings the next query; it fails and recovery starts. */
    expect_start_at(&c, 2, c.t0 + 1005);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    /* Served up to the last millisecond before nextUpdate, never at it. */
    advance_to(&c, c.t0 + 1999);
    assert_status(&c, "GOOD", "recovering");
    assert_true(staple_exists(&c));
    advance_to(&c, c.t0 + 2000);
    /* The expiry timer did it, not a read of the status: the file and the hook are checked first. */
    assert_false(staple_exists(&c));
    assert_int_equal(hook.calls, 2);
    assert_true(hook.last_null);
    assert_status(&c, "UNKNOWN", "invalidated");
    assert_metrics_line(&c, "ocsp_agent_staple_expiry_seconds NaN");
    /* Recovery goes on at recovery_frequency from the failed attempt. */
    expect_start_at(&c, 3, c.t0 + 61005);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    assert_int_equal(hook.calls, 2);
    ctx_teardown(&c);
}

/* The expiry timer runs on the monotonic clock but nextUpdate is wall-clock: when the wall clock is stepped back,
 * the timer comes early, finds the response still current and looks again. */
static void test_expiry_follows_the_wall_clock(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);

    (void)state;
    ctx_setup(&c);
    script(&c, 1, good_until(2));
    c.fake.dflt.delay_ms = NEVER; /* the midpoint query (t0+1005) hangs, so the cache stays as it is */
    enable_and_answer(&c, &conf);
    oa_testclock_step_wall(&c.clk, -500);
    advance_to(&c, c.t0 + 2000);
    assert_int_equal(c.fake.starts, 2);
    assert_true(staple_exists(&c));
    advance_to(&c, c.t0 + 2499);
    assert_true(staple_exists(&c));
    assert_status(&c, "GOOD", "valid");
    advance_to(&c, c.t0 + 2500);
    assert_false(staple_exists(&c));
    assert_status(&c, "UNKNOWN", "invalidated");
    ctx_teardown(&c);
}

/* A response without nextUpdate has no midpoint and never expires: the regular interval alone brings the next
 * query. */
static void test_no_next_update_keeps_regular_interval(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 120, 60, 5);
    answer_script_t open_ended = good();
    json_t *st;

    (void)state;
    ctx_setup(&c);
    open_ended.no_next_update = true;
    script(&c, 1, open_ended);
    enable_and_answer(&c, &conf);
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "next_update", NULL);
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_staple_expiry_seconds NaN");
    /* Only the next query is armed: there is no expiry to watch. */
    assert_int_equal(oa_testclock_armed(&c.clk), 1);
    expect_start_at(&c, 2, c.t0 + 120000);
    assert_true(staple_exists(&c));
    assert_status(&c, "GOOD", "valid");
    ctx_teardown(&c);
}

static void test_unknown_starts_recovery(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 30, 5);
    json_t *st;

    (void)state;
    ctx_setup(&c);
    script(&c, 3, good(), with_status(OA_CERT_UNKNOWN), good());
    enable_and_answer(&c, &conf);
    expect_start_at(&c, 2, c.t0 + 60000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    assert_int_equal(c.fake.starts, 2);
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "recovering");
    assert_key_str(st, "last_error_code", "cert_status_unknown");
    assert_key_str(st, "last_error", "responder answered UNKNOWN");
    assert_key_int(st, "consecutive_failures", 1);
    json_decref(st);
    assert_staple(&c, 1);
    /* The retry is recovery_frequency (30 s) after the attempt that said UNKNOWN, not query_frequency. */
    expect_start_at(&c, 3, c.t0 + 90000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_int_equal(c.fake.starts, 3);
    assert_int_equal(gap(&c, 2, 3), 30000);
    assert_staple(&c, 3);
    assert_status(&c, "GOOD", "valid");
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"cert_status_unknown\"} 1");
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ok\"} 2");
    ctx_teardown(&c);
}

static void test_first_failure_recovers_without_cache(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 1);

    (void)state;
    ctx_setup(&c);
    c.fake.dflt = failing(OA_E_OCSP_DNS);
    enable_and_answer(&c, &conf);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    assert_status(&c, "UNKNOWN", "recovering");
    expect_start_at(&c, 2, c.t0 + 60000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    assert_int_equal(c.fake.starts, 2);
    /* Invalidated: further failures stay on query_frequency, no new round of retries. */
    expect_start_at(&c, 3, c.t0 + 60000 + HOUR_MS);
    advance(&c, 10);
    assert_status(&c, "UNKNOWN", "invalidated");
    expect_start_at(&c, 4, c.t0 + 60000 + 2 * HOUR_MS);
    advance(&c, 10);
    assert_status(&c, "UNKNOWN", "invalidated");
    ctx_teardown(&c);
}

static void test_disable_cancels_in_flight(void **state)
{
    ctx_t c;
    oa_conf_t on = conf_of(true, 60, 60, 5), off = conf_of(false, 60, 60, 5);
    json_t *st;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = 2000;
    oa_sched_apply_conf(c.s, &on);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    assert_status(&c, "UNKNOWN", "pending");
    oa_sched_apply_conf(c.s, &off);
    assert_int_equal(c.fake.cancels, 1);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    advance(&c, 0);
    assert_int_equal(c.fake.answers, 1);
    /* Nothing is armed any more: a day passes without a query. */
    assert_int_equal(oa_testclock_armed(&c.clk), 0);
    advance(&c, 24 * HOUR_MS);
    assert_int_equal(c.fake.starts, 1);
    assert_int_equal(c.fake.answers, 1);
    st = status(&c);
    assert_key_str(st, "state", "disabled");
    assert_key_str(st, "cert_status", "UNKNOWN");
    assert_key_str(st, "next_query", NULL);
    assert_key_str(st, "last_error_code", NULL);
    assert_key_int(st, "consecutive_failures", 0);
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ocsp_query_cancelled\"} 1");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"disabled\"} 1");
    ctx_teardown(&c);
}

static void test_disable_keeps_valid_cache(void **state)
{
    ctx_t c;
    oa_conf_t on = conf_of(true, 3600, 60, 5), off = conf_of(false, 3600, 60, 5);

    (void)state;
    ctx_setup(&c);
    enable_and_answer(&c, &on);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    oa_sched_apply_conf(c.s, &off);
    assert_status(&c, "GOOD", "disabled");
    assert_staple(&c, 1);
    /* Enabling again keeps the response valid and still queries at once. */
    oa_sched_apply_conf(c.s, &on);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(c.fake.start_at[2], c.t0 + 10);
    advance(&c, 10);
    assert_int_equal(c.fake.answers, 2);
    assert_staple(&c, 2);
    ctx_teardown(&c);
}

/* Enabling again before the cancelled query is back: the query due at once waits for it and goes out the moment it
 * is back, never two at once. */
static void test_reenable_waits_for_cancelled_query(void **state)
{
    ctx_t c;
    oa_conf_t on = conf_of(true, 3600, 60, 5), off = conf_of(false, 3600, 60, 5);

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = NEVER;
    c.fake.cancel_delay_ms = 50;
    oa_sched_apply_conf(c.s, &on);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    advance_to(&c, c.t0 + 100);
    oa_sched_apply_conf(c.s, &off);
    assert_int_equal(c.fake.cancels, 1);
    c.fake.dflt.delay_ms = 10;
    oa_sched_apply_conf(c.s, &on);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    advance_to(&c, c.t0 + 149);
    assert_int_equal(c.fake.answers, 0);
    assert_int_equal(c.fake.starts, 1);
    advance_to(&c, c.t0 + 150);
    assert_int_equal(c.fake.answers, 1);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(c.fake.start_at[2], c.t0 + 150);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple(&c, 2);
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ocsp_query_cancelled\"} 1");
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ok\"} 1");
    ctx_teardown(&c);
}

static void test_frequency_change_reschedules(void **state)
{
    ctx_t c;
    oa_conf_t slow = conf_of(true, 3600, 60, 5), fast = conf_of(true, 60, 60, 5);
    uint64_t t_apply;

    (void)state;
    ctx_setup(&c);
    enable_and_answer(&c, &slow);
    advance_to(&c, c.t0 + 80000);
    assert_int_equal(c.fake.starts, 1);
    /* 60 s after the last attempt is already past: the query goes out at once. */
    t_apply = now(&c);
    oa_sched_apply_conf(c.s, &fast);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(c.fake.start_at[2], t_apply);
    advance(&c, 10);
    assert_int_equal(c.fake.answers, 2);
    /* Slowing down, then speeding up again 30 s later: the next query runs from the last attempt, not from the
     * change. */
    oa_sched_apply_conf(c.s, &slow);
    advance_to(&c, t_apply + 30000);
    assert_int_equal(c.fake.starts, 2);
    oa_sched_apply_conf(c.s, &fast);
    expect_start_at(&c, 3, t_apply + 60000);
    advance(&c, 10);
    /* Slowing down again: no query for an hour after the last attempt. */
    oa_sched_apply_conf(c.s, &slow);
    expect_start_at(&c, 4, t_apply + 60000 + HOUR_MS);
    ctx_teardown(&c);
}

static void test_test_while_disabled_leaves_cache(void **state)
{
    ctx_t c;
    test_answer_t a;
    json_t *st;

    (void)state;
    ctx_setup(&c);
    start_test(&c, &a);
    assert_int_equal(c.fake.starts, 1);
    assert_int_equal(c.fake.start_at[1], c.t0);
    advance(&c, 9);
    assert_int_equal(a.fired, 0);
    advance(&c, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, 0);
    assert_true(a.has_status);
    assert_string_equal(a.cert_status, "GOOD");
    assert_true(a.has_this_update);
    assert_string_equal(a.state, "disabled");
    st = status(&c);
    assert_key_str(st, "cert_status", "UNKNOWN");
    assert_key_str(st, "state", "disabled");
    assert_key_str(st, "last_attempt", NULL);
    json_decref(st);
    assert_false(staple_exists(&c));
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ok\"} 1");
    /* Nothing is scheduled while disabled. */
    assert_int_equal(oa_testclock_armed(&c.clk), 0);
    advance(&c, 24 * HOUR_MS);
    assert_int_equal(c.fake.starts, 1);
    ctx_teardown(&c);
}

static void test_test_while_enabled_updates_cache(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);
    test_answer_t a;

    (void)state;
    ctx_setup(&c);
    script(&c, 2, good(), with_status(OA_CERT_REVOKED));
    enable_and_answer(&c, &conf);
    start_test(&c, &a);
    assert_int_equal(c.fake.start_at[2], c.t0 + 10);
    advance(&c, 10);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.cert_status, "REVOKED");
    assert_true(a.has_revocation_time);
    assert_status(&c, "REVOKED", "valid");
    assert_staple(&c, 2);
    assert_int_equal(c.fake.starts, 2);
    /* The applied answer counts as a regular success: the schedule now runs from the test's attempt. */
    expect_start_at(&c, 3, c.t0 + 10 + HOUR_MS);
    ctx_teardown(&c);
}

static void test_test_joins_query_in_flight(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);
    test_answer_t a, b;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = 200;
    oa_sched_apply_conf(c.s, &conf);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    start_test(&c, &a);
    start_test(&c, &b);
    advance(&c, 199);
    assert_int_equal(a.fired + b.fired, 0);
    /* Both are answered when the scheduled query is, at the same instant. */
    advance(&c, 1);
    assert_int_equal(c.fake.starts, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 1);
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_string_equal(a.cert_status, "GOOD");
    assert_string_equal(b.cert_status, "GOOD");
    /* The joined query was the scheduled one: it set the state. */
    assert_string_equal(a.state, "valid");
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple(&c, 1);
    ctx_teardown(&c);
}

/* A scheduled query that falls due while a test's query is in flight adopts it rather than starting a second one;
 * its outcome then counts for the schedule, from the moment the test's query started. */
static void test_scheduled_query_adopts_test_in_flight(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 30, 5);
    test_answer_t a;
    json_t *st;

    (void)state;
    ctx_setup(&c);
    script(&c, 2, good(), failing(OA_E_OCSP_CONNECT));
    enable_and_answer(&c, &conf);
    advance_to(&c, c.t0 + 59995);
    start_test(&c, &a);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(c.fake.start_at[2], c.t0 + 59995);
    /* The regular query falls due while the test's is out: nothing new starts. */
    advance_to(&c, c.t0 + 60000);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(a.fired, 0);
    advance_to(&c, c.t0 + 60005);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_OCSP_CONNECT);
    /* A test's own failure changes nothing; this one was adopted, so recovery starts. */
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "recovering");
    assert_key_int(st, "consecutive_failures", 1);
    assert_key_str(st, "last_error_code", "ocsp_responder_connection_failed");
    assert_key_time(st, "last_attempt", c.w0 + 59);
    json_decref(st);
    /* The retry is recovery_frequency after the test's query started, not after the timer fired. */
    expect_start_at(&c, 3, c.t0 + 59995 + 30000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    ctx_teardown(&c);
}

static void test_two_tests_share_one_query(void **state)
{
    ctx_t c;
    oa_conf_t off = conf_of(false, 120, 120, 3);
    test_answer_t a, b;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = 100;
    start_test(&c, &a);
    start_test(&c, &b);
    /* A new configuration that keeps OCSP disabled does not cancel the test's query. */
    oa_sched_apply_conf(c.s, &off);
    advance(&c, 99);
    assert_int_equal(a.fired + b.fired, 0);
    advance(&c, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(b.fired, 1);
    assert_int_equal(c.fake.starts, 1);
    assert_int_equal(c.fake.cancels, 0);
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    ctx_teardown(&c);
}

static void test_test_failure_changes_nothing(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);
    test_answer_t a;
    json_t *st;

    (void)state;
    ctx_setup(&c);
    script(&c, 3, good(), failing(OA_E_OCSP_CONNECT), with_status(OA_CERT_UNKNOWN));
    enable_and_answer(&c, &conf);

    start_test(&c, &a);
    advance(&c, 10);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_OCSP_CONNECT);
    assert_string_equal(a.text, "a scripted failure");
    assert_false(a.has_status);

    /* A verified UNKNOWN is an answer for the tester (no error) but changes nothing either. */
    start_test(&c, &a);
    advance(&c, 10);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.cert_status, "UNKNOWN");
    assert_true(a.has_this_update);

    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "valid");
    assert_key_int(st, "consecutive_failures", 0);
    assert_key_str(st, "last_error_code", NULL);
    assert_key_time(st, "last_attempt", c.w0);
    json_decref(st);
    assert_staple(&c, 1);
    /* No recovery was scheduled: the next query is still an hour after the first attempt. */
    assert_int_equal(c.fake.starts, 3);
    expect_start_at(&c, 4, c.t0 + HOUR_MS);
    ctx_teardown(&c);
}

static void test_test_safety_timeout(void **state)
{
    ctx_t c;
    test_answer_t a, b;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = NEVER;
    start_test(&c, &a);
    /* response_timeout (1 s before any configuration) + 5 s, to the millisecond. */
    advance(&c, 5999);
    assert_int_equal(a.fired, 0);
    advance(&c, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_TASK_QUEUED_TOO_LONG);
    assert_int_equal(now(&c) - c.t0, 6000);
    /* The hung query is still in flight: a second test joins it, then closing answers it as cancelled. */
    start_test(&c, &b);
    assert_int_equal(c.fake.starts, 1);
    ctx_close_sched(&c);
    assert_int_equal(b.fired, 1);
    assert_int_equal(b.err, OA_E_OCSP_CANCELLED);
    assert_int_equal(c.fake.cancels, 1);
    assert_int_equal(c.fake.answers, 1);
    ctx_free(&c);
}

/* The safety timeout follows the configured response_timeout, which also bounds the query itself. */
static void test_test_safety_timeout_follows_conf(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(false, 3600, 60, 5);
    test_answer_t a;

    (void)state;
    ctx_setup(&c);
    conf.response_timeout = 10;
    oa_sched_apply_conf(c.s, &conf);
    c.fake.dflt.delay_ms = NEVER;
    start_test(&c, &a);
    assert_int_equal(c.fake.last_timeout_ms, 10000);
    advance(&c, 14999);
    assert_int_equal(a.fired, 0);
    advance(&c, 1);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_TASK_QUEUED_TOO_LONG);
    ctx_teardown(&c);
}

static void test_close_with_query_in_flight(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 5);
    test_answer_t a;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = 2000;
    oa_sched_apply_conf(c.s, &conf);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    start_test(&c, &a);
    ctx_close_sched(&c);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_OCSP_CANCELLED);
    assert_int_equal(c.fake.cancels, 1);
    assert_int_equal(c.fake.starts, 1);
    ctx_free(&c);
}

static void test_test_after_disable_waits_for_new_query(void **state)
{
    ctx_t c;
    oa_conf_t on = conf_of(true, 3600, 60, 5), off = conf_of(false, 3600, 60, 5);
    answer_script_t slow = good();
    test_answer_t a;

    (void)state;
    ctx_setup(&c);
    slow.delay_ms = 2000;
    script(&c, 2, slow, with_status(OA_CERT_REVOKED));
    oa_sched_apply_conf(c.s, &on);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    oa_sched_apply_conf(c.s, &off);
    /* The cancelled query has not come back yet: the test waits for a fresh one instead of its cancellation,
     * started the moment the cancelled one is back. */
    start_test(&c, &a);
    assert_int_equal(c.fake.starts, 1);
    advance(&c, 0);
    assert_int_equal(c.fake.answers, 1);
    assert_int_equal(a.fired, 0);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(c.fake.start_at[2], c.t0);
    advance(&c, 10);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.cert_status, "REVOKED");
    assert_int_equal(c.fake.starts, 2);
    assert_status(&c, "UNKNOWN", "disabled");
    assert_false(staple_exists(&c));
    ctx_teardown(&c);
}

static void test_no_responder_url(void **state)
{
    ctx_t c;
    test_answer_t a;
    oa_error_t err;

    (void)state;
    ctx_init_loop(&c);
    ctx_new_sched(&c, NULL);
    memset(&a, 0, sizeof(a));
    assert_int_equal(oa_sched_test(c.s, on_test_answer, &a, &err), -1);
    assert_int_equal(err.code, OA_E_NO_RESPONDER_URL);
    assert_int_equal(c.fake.starts, 0);
    assert_status(&c, "UNKNOWN", "disabled");
    ctx_close_sched(&c);
    assert_int_equal(a.fired, 0);

    /* A target without a URL answers the same. */
    c.closed = 0;
    c.target.responder_url = NULL;
    ctx_new_sched(&c, &c.target);
    assert_int_equal(oa_sched_test(c.s, on_test_answer, &a, &err), -1);
    assert_int_equal(err.code, OA_E_NO_RESPONDER_URL);
    assert_int_equal(c.fake.starts, 0);
    ctx_teardown(&c);
}

/* ---- the staple file at start-up, with real signed responses ---- */

typedef struct pki_ctx_s {
    oa_testpki_t pki;
    char pkidir[OA_TESTPKI_DIR_MAX];
    oa_ocsp_target_t *target;
} pki_ctx_t;

static void pki_setup(pki_ctx_t *p)
{
    char leaf[OA_TESTPKI_DIR_MAX + 32], ca[OA_TESTPKI_DIR_MAX + 32];
    oa_error_t err;

    assert_int_equal(oa_testpki_init(&p->pki, 4660, "http://127.0.0.1:9/ocsp"), 0);
    assert_int_equal(oa_testpki_tmpdir(p->pkidir), 0);
    assert_int_equal(oa_testpki_write_dir(&p->pki, p->pkidir), 0);
    if (oa_ocsp_target_load(oa_testpki_path(leaf, sizeof(leaf), p->pkidir, "leaf.pem"),
                            oa_testpki_path(ca, sizeof(ca), p->pkidir, "ca.pem"), NULL, &p->target, &err) != 0)
        fail_msg("target: %s", err.text);
}

static void pki_teardown(pki_ctx_t *p)
{
    oa_ocsp_target_free(p->target);
    assert_int_equal(oa_testpki_rmdir(p->pkidir), 0);
    oa_testpki_free(&p->pki);
}

/* Signs a response as of the manual clock's time (unless o says when) and writes it as the staple file, so that
 * whether it verifies never depends on how long the test has run on the real clock. */
static void write_response(const ctx_t *c, const oa_testpki_resp_opts_t *o, unsigned char **der, size_t *len)
{
    oa_testpki_resp_opts_t at = *o;

    if (at.now == 0)
        at.now = c->w0;
    assert_int_equal(oa_testpki_response(&at, der, len), 0);
    assert_int_equal(oa_testpki_write_file(c->staple, *der, *len), 0);
}

static void test_staple_reloaded_when_valid(void **state)
{
    ctx_t c;
    pki_ctx_t p;
    oa_testpki_resp_opts_t o;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);
    unsigned char *der;
    size_t len;
    oa_buf_t b;
    json_t *st;

    (void)state;
    pki_setup(&p);
    ctx_init_loop(&c);
    oa_testpki_resp_opts_init(&o, &p.pki);
    o.cert_status = V_OCSP_CERTSTATUS_REVOKED;
    write_response(&c, &o, &der, &len);
    ctx_new_sched(&c, p.target);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    st = status(&c);
    assert_key_str(st, "cert_status", "REVOKED");
    assert_key_str(st, "responder_url", "http://127.0.0.1:9/ocsp");
    assert_non_null(json_object_get(st, "this_update"));
    assert_non_null(json_object_get(st, "revocation_time"));
    json_decref(st);
    /* The file is left as it was, and enabling keeps the state valid while the first query is out. */
    oa_buf_init(&b);
    assert_int_equal(oa_file_read(c.staple, 1 << 16, &b), 0);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, der, len);
    oa_buf_free(&b);
    c.fake.dflt.delay_ms = NEVER;
    oa_sched_apply_conf(c.s, &conf);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    assert_int_equal(c.fake.start_at[1], c.t0);
    assert_status(&c, "REVOKED", "valid");
    free(der);
    ctx_teardown(&c);
    pki_teardown(&p);
}

/* A staple reloaded at start-up is dropped at its own nextUpdate, to the millisecond, even before any configuration
 * and without a read of the status. */
static void test_reloaded_staple_expires_at_next_update(void **state)
{
    ctx_t c;
    pki_ctx_t p;
    oa_testpki_resp_opts_t o;
    staple_log_t hook;
    unsigned char *der;
    size_t len;
    json_t *st;

    (void)state;
    memset(&hook, 0, sizeof(hook));
    pki_setup(&p);
    ctx_init_loop(&c);
    oa_testpki_resp_opts_init(&o, &p.pki);
    o.now = c.w0;
    o.next_update_offset = 120;
    write_response(&c, &o, &der, &len);
    ctx_new_sched(&c, p.target);
    oa_sched_set_staple_hook(c.s, on_staple_hook, &hook);
    assert_int_equal(hook.calls, 1);
    assert_int_equal(hook.last_next_update, c.w0 + 120);
    assert_metrics_line(&c, "ocsp_agent_staple_expiry_seconds 120");
    advance_to(&c, c.t0 + 119999);
    assert_true(staple_exists(&c));
    assert_int_equal(hook.calls, 1);
    advance_to(&c, c.t0 + 120000);
    assert_false(staple_exists(&c));
    assert_int_equal(hook.calls, 2);
    assert_true(hook.last_null);
    st = status(&c);
    assert_key_str(st, "cert_status", "UNKNOWN");
    assert_key_str(st, "next_update", NULL);
    json_decref(st);
    assert_int_equal(c.fake.starts, 0);
    free(der);
    ctx_teardown(&c);
    pki_teardown(&p);
}

/* A scheduler started over a staple file made from o (NULL: seven bytes that are not DER) discards it: the file is
 * removed, and nothing is served until a query succeeds. */
static void assert_staple_discarded(const pki_ctx_t *p, const oa_testpki_resp_opts_t *o)
{
    ctx_t c;
    unsigned char *der;
    size_t len;

    ctx_init_loop(&c);
    if (o != NULL) {
        write_response(&c, o, &der, &len);
        free(der);
    } else {
        assert_int_equal(oa_testpki_write_file(c.staple, "garbage", 7), 0);
    }
    ctx_new_sched(&c, p->target);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    assert_false(staple_exists(&c));
    assert_status(&c, "UNKNOWN", "disabled");
    ctx_teardown(&c);
}

static void test_staple_discarded_when_expired_or_bad(void **state)
{
    static const struct {
        long this_update, next_update; /* offsets from now, in seconds; producedAt is thisUpdate */
    } expired[] = {
        {-7200, -60},    /* a minute ago: within verification's clock-skew leeway, but past nextUpdate */
        {-86400, -3600}, /* long ago */
    };
    pki_ctx_t p;
    oa_testpki_resp_opts_t o;
    size_t i;

    (void)state;
    pki_setup(&p);
    for (i = 0; i < OA_ARRAY_SIZE(expired); i++) {
        oa_testpki_resp_opts_init(&o, &p.pki);
        o.this_update_offset = expired[i].this_update;
        o.produced_at_offset = expired[i].this_update;
        o.next_update_offset = expired[i].next_update;
        assert_staple_discarded(&p, &o);
    }
    /* Signed by an unrelated CA. */
    oa_testpki_resp_opts_init(&o, &p.pki);
    o.signer_key = p.pki.other_ca.key;
    o.signer_cert = p.pki.other_ca.cert;
    assert_staple_discarded(&p, &o);
    /* Not DER at all. */
    assert_staple_discarded(&p, NULL);
    pki_teardown(&p);
}

/* ---- cluster mode: the poller's view ---- */

typedef struct state_log_s {
    int calls;
    int results;          /* result hook calls */
    int results_at_state; /* result hook calls seen by the last state hook call */
    oa_sched_view_t last;
    char code[64];
    char text[OA_ERROR_TEXT_MAX];
    oa_sched_state_t states[8];
} state_log_t;

static void on_state_hook(void *data, const oa_sched_view_t *v)
{
    state_log_t *l = data;

    if (l->calls < (int)OA_ARRAY_SIZE(l->states))
        l->states[l->calls] = v->state;
    l->calls++;
    l->results_at_state = l->results;
    l->last = *v;
    snprintf(l->code, sizeof(l->code), "%s", v->last_error_code);
    snprintf(l->text, sizeof(l->text), "%s", v->last_error);
    l->last.last_error_code = l->code;
    l->last.last_error = l->text;
}

static void on_result_hook(void *data, const oa_ocsp_result_t *res)
{
    (void)res;
    ((state_log_t *)data)->results++;
}

/* The poller reports its view after every attempt that counted: a success after its result, each failure, the
 * invalidation; a failed test reports nothing. */
static void test_state_hook_reports_attempts(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 1); /* 60 s regular and recovery, one retry */
    state_log_t log;
    test_answer_t a;

    (void)state;
    memset(&log, 0, sizeof(log));
    ctx_setup(&c);
    oa_sched_set_state_hook(c.s, on_state_hook, &log);
    oa_sched_set_result_hook(c.s, on_result_hook, &log);
    script(&c, 3, good(), failing(OA_E_OCSP_HTTP_STATUS), failing(OA_E_OCSP_CONNECT));
    c.fake.dflt = failing(OA_E_OCSP_CONNECT);
    enable_and_answer(&c, &conf);
    assert_int_equal(log.calls, 1);
    assert_int_equal(log.results_at_state, 1); /* the response went out first */
    assert_int_equal(log.last.state, OA_STATE_VALID);
    assert_false(log.last.recovering);
    assert_int_equal(log.last.consecutive_failures, 0);
    assert_string_equal(log.code, "");
    /* The wall-clock time the attempt started, not when it was answered. */
    assert_int_equal(log.last.last_attempt_ms, (int64_t)c.w0 * 1000);

    expect_start_at(&c, 2, c.t0 + 60000);
    assert_int_equal(log.calls, 1);
    advance(&c, 10);
    assert_int_equal(log.calls, 2);
    assert_int_equal(log.last.last_attempt_ms, (int64_t)c.w0 * 1000 + 60000);
    assert_int_equal(log.last.state, OA_STATE_RECOVERING);
    assert_true(log.last.recovering);
    assert_int_equal(log.last.consecutive_failures, 1);
    assert_int_equal(log.last.recovery_tries, 0);
    assert_string_equal(log.code, "ocsp_responder_http_status");
    assert_string_equal(log.text, "a scripted failure");

    expect_start_at(&c, 3, c.t0 + 120000);
    advance(&c, 10);
    assert_int_equal(log.calls, 3);
    assert_int_equal(log.last.last_attempt_ms, (int64_t)c.w0 * 1000 + 120000);
    assert_int_equal(log.last.state, OA_STATE_INVALIDATED);
    assert_false(log.last.recovering);
    assert_int_equal(log.last.consecutive_failures, 2);
    assert_int_equal(log.last.recovery_tries, 1);
    assert_string_equal(log.code, "ocsp_responder_connection_failed");
    assert_int_equal(log.results, 1);

    /* A test that fails changes nothing and reports nothing. */
    start_test(&c, &a);
    advance(&c, 10);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_OCSP_CONNECT);
    /* The next scheduled attempt is query_frequency after the last retry, far beyond the test's 10 ms, so nothing
     * adopted its query; it comes at exactly that time and reports as usual. */
    assert_int_equal(log.calls, 3);
    expect_start_at(&c, 5, c.t0 + 180000);
    advance(&c, 10);
    assert_int_equal(log.calls, 4);
    assert_int_equal(log.last.state, OA_STATE_INVALIDATED);
    assert_false(log.last.recovering);
    assert_int_equal(log.states[0], OA_STATE_VALID);
    assert_int_equal(log.states[1], OA_STATE_RECOVERING);
    assert_int_equal(log.states[2], OA_STATE_INVALIDATED);
    ctx_teardown(&c);
}

static oa_sched_view_t view_of(oa_sched_state_t st, bool recovering, int failures, int tries, int64_t at_ms,
                               const char *code, const char *text)
{
    oa_sched_view_t v = {.state = st,
                         .recovering = recovering,
                         .consecutive_failures = failures,
                         .recovery_tries = tries,
                         .last_attempt_ms = at_ms,
                         .last_error_code = code,
                         .last_error = text};

    return v;
}

static void assert_staple_bytes(const ctx_t *c, const unsigned char *der, size_t len)
{
    oa_buf_t b;

    oa_buf_init(&b);
    assert_int_equal(oa_file_read(c->staple, 1 << 16, &b), 0);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, der, len);
    oa_buf_free(&b);
}

/* A follower takes the poller's view: recovering keeps the response, invalidated drops it and its staple, and the
 * next response from the poller makes it valid again. */
static void test_remote_state_invalidation_and_restore(void **state)
{
    ctx_t c;
    pki_ctx_t p;
    oa_testpki_resp_opts_t o;
    oa_conf_t conf = conf_of(true, 3600, 60, 3);
    oa_sched_view_t v;
    unsigned char *der1, *der2;
    size_t len1, len2;
    oa_error_t err;
    int64_t at_ms;
    json_t *st;

    (void)state;
    pki_setup(&p);
    ctx_init_loop(&c);
    at_ms = oa_testclock_wall_ms(&c.clk) - 5000;
    ctx_new_sched(&c, p.target);
    oa_sched_set_follower(c.s, true);
    oa_sched_apply_conf(c.s, &conf);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);

    oa_testpki_resp_opts_init(&o, &p.pki);
    o.now = c.w0;
    assert_int_equal(oa_testpki_response(&o, &der1, &len1), 0);
    o.this_update_offset = -30;
    o.produced_at_offset = -30;
    o.next_update_offset = 7200;
    assert_int_equal(oa_testpki_response(&o, &der2, &len2), 0);

    assert_int_equal(oa_sched_apply_remote(c.s, der1, len1, oa_testclock_wall_ms(&c.clk), &err),
                     OA_SCHED_REMOTE_APPLIED);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple_bytes(&c, der1, len1);
    /* The same response again changes nothing. */
    assert_int_equal(oa_sched_apply_remote(c.s, der1, len1, oa_testclock_wall_ms(&c.clk), &err),
                     OA_SCHED_REMOTE_IGNORED);

    /* Recovering: the response is still served, the counters and the error are the poller's. */
    v = view_of(OA_STATE_RECOVERING, true, 1, 0, at_ms, "ocsp_responder_http_status", "HTTP 500 from the responder");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "recovering");
    assert_key_int(st, "consecutive_failures", 1);
    assert_key_int(st, "recovery_tries", 0);
    assert_key_str(st, "last_error_code", "ocsp_responder_http_status");
    assert_key_str(st, "last_error", "HTTP 500 from the responder");
    assert_key_time(st, "last_attempt", (time_t)(at_ms / 1000));
    json_decref(st);
    assert_staple_bytes(&c, der1, len1);

    /* Invalidated: the cache and the staple go at once, though the response is hours from its nextUpdate. */
    v = view_of(OA_STATE_INVALIDATED, false, 4, 3, at_ms + 3000, "ocsp_responder_connection_failed",
                "connection refused");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    assert_false(staple_exists(&c));
    st = status(&c);
    assert_key_str(st, "cert_status", "UNKNOWN");
    assert_key_str(st, "state", "invalidated");
    assert_key_str(st, "produced_at", NULL);
    assert_key_str(st, "next_update", NULL);
    assert_key_int(st, "consecutive_failures", 4);
    assert_key_int(st, "recovery_tries", 3);
    assert_key_str(st, "last_error_code", "ocsp_responder_connection_failed");
    assert_key_str(st, "last_error", "connection refused");
    assert_key_time(st, "last_attempt", (time_t)(at_ms / 1000 + 3));
    json_decref(st);
    assert_metrics_line(&c, "ocsp_agent_state{state=\"invalidated\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"UNKNOWN\"} 1");

    /* "valid" without a response here cannot be shown; a "disabled" view is refused. */
    v = view_of(OA_STATE_VALID, false, 0, 0, at_ms + 4000, "", "");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    v = view_of(OA_STATE_DISABLED, false, 0, 0, 0, "", "");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), -1);
    assert_int_equal(err.code, OA_E_INVALID_SCHEMA);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);

    /* The poller's next response restores everything; the last error stays for the operator. */
    assert_int_equal(oa_sched_apply_remote(c.s, der2, len2, oa_testclock_wall_ms(&c.clk), &err),
                     OA_SCHED_REMOTE_APPLIED);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple_bytes(&c, der2, len2);
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "valid");
    assert_key_int(st, "consecutive_failures", 0);
    assert_key_int(st, "recovery_tries", 0);
    assert_key_str(st, "last_error_code", "ocsp_responder_connection_failed");
    json_decref(st);
    /* The poller's own "valid" report that follows keeps it valid. */
    v = view_of(OA_STATE_VALID, false, 0, 0, oa_testclock_wall_ms(&c.clk), "ocsp_responder_connection_failed",
                "connection refused");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple_bytes(&c, der2, len2);
    /* A follower never queries, not even once query_frequency has passed. */
    advance(&c, HOUR_MS);
    assert_int_equal(c.fake.starts, 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    free(der1);
    free(der2);
    ctx_teardown(&c);
    pki_teardown(&p);
}

/* While OCSP is off here, an invalidation still removes the response, and the state stays "disabled". */
static void test_remote_invalidation_while_disabled(void **state)
{
    ctx_t c;
    pki_ctx_t p;
    oa_testpki_resp_opts_t o;
    oa_sched_view_t v;
    unsigned char *der;
    size_t len;
    oa_error_t err;

    (void)state;
    pki_setup(&p);
    ctx_init_loop(&c);
    v = view_of(OA_STATE_INVALIDATED, false, 2, 1, oa_testclock_wall_ms(&c.clk), "ocsp_responder_timeout",
                "no answer");
    oa_testpki_resp_opts_init(&o, &p.pki);
    write_response(&c, &o, &der, &len);
    ctx_new_sched(&c, p.target);
    oa_sched_set_follower(c.s, true);
    oa_sched_apply_conf(c.s, &(oa_conf_t){false, 3600, 1, 60, 5});
    assert_status(&c, "GOOD", "disabled");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    assert_status(&c, "UNKNOWN", "disabled");
    assert_false(staple_exists(&c));
    free(der);
    ctx_teardown(&c);
    pki_teardown(&p);
}

/* A follower that becomes the poller keeps the cluster's cadence: its schedule is anchored on the poller's last
 * attempt (wall clock), whether it came with a response or with a view. */
static void test_takeover_keeps_cadence(void **state)
{
    ctx_t c;
    pki_ctx_t p;
    oa_testpki_resp_opts_t o;
    oa_conf_t conf = conf_of(true, 60, 60, 5);
    oa_sched_view_t v;
    unsigned char *der;
    size_t len;
    oa_error_t err;
    uint64_t t;

    (void)state;
    pki_setup(&p);
    ctx_init_loop(&c);
    ctx_new_sched(&c, p.target);
    oa_sched_set_follower(c.s, true);
    oa_sched_apply_conf(c.s, &conf);
    oa_testpki_resp_opts_init(&o, &p.pki);
    o.now = c.w0; /* nextUpdate an hour away: its midpoint is later than the regular interval */
    assert_int_equal(oa_testpki_response(&o, &der, &len), 0);

    /* The poller asked 20 s ago: after switching, the next query is 60 s after that, 40 s from now. */
    assert_int_equal(oa_sched_apply_remote(c.s, der, len, oa_testclock_wall_ms(&c.clk) - 20000, &err),
                     OA_SCHED_REMOTE_APPLIED);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 0);
    oa_sched_set_follower(c.s, false);
    expect_start_at(&c, 1, c.t0 + 40000);
    advance(&c, 10);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);

    /* Following again; the poller's view says its last attempt was 90 s ago: the takeover queries at once. */
    oa_sched_set_follower(c.s, true);
    advance(&c, 30000);
    t = now(&c);
    v = view_of(OA_STATE_VALID, false, 0, 0, oa_testclock_wall_ms(&c.clk) - 90000, "", "");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 1);
    oa_sched_set_follower(c.s, false);
    assert_int_equal(c.fake.starts, 1);
    advance(&c, 0);
    assert_int_equal(c.fake.starts, 2);
    assert_int_equal(c.fake.start_at[2], t);
    free(der);
    ctx_teardown(&c);
    pki_teardown(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enable_queries_at_once),
        cmocka_unit_test(test_revoked_is_cached),
        cmocka_unit_test(test_regular_interval),
        cmocka_unit_test(test_time_scale),
        cmocka_unit_test(test_next_update_midpoint_and_floor),
        cmocka_unit_test(test_recovery_invalidation_and_restore),
        cmocka_unit_test(test_cache_served_until_next_update),
        cmocka_unit_test(test_expiry_follows_the_wall_clock),
        cmocka_unit_test(test_no_next_update_keeps_regular_interval),
        cmocka_unit_test(test_unknown_starts_recovery),
        cmocka_unit_test(test_first_failure_recovers_without_cache),
        cmocka_unit_test(test_disable_cancels_in_flight),
        cmocka_unit_test(test_disable_keeps_valid_cache),
        cmocka_unit_test(test_reenable_waits_for_cancelled_query),
        cmocka_unit_test(test_frequency_change_reschedules),
        cmocka_unit_test(test_test_while_disabled_leaves_cache),
        cmocka_unit_test(test_test_while_enabled_updates_cache),
        cmocka_unit_test(test_test_joins_query_in_flight),
        cmocka_unit_test(test_scheduled_query_adopts_test_in_flight),
        cmocka_unit_test(test_two_tests_share_one_query),
        cmocka_unit_test(test_test_failure_changes_nothing),
        cmocka_unit_test(test_test_safety_timeout),
        cmocka_unit_test(test_test_safety_timeout_follows_conf),
        cmocka_unit_test(test_close_with_query_in_flight),
        cmocka_unit_test(test_test_after_disable_waits_for_new_query),
        cmocka_unit_test(test_no_responder_url),
        cmocka_unit_test(test_staple_reloaded_when_valid),
        cmocka_unit_test(test_reloaded_staple_expires_at_next_update),
        cmocka_unit_test(test_staple_discarded_when_expired_or_bad),
        cmocka_unit_test(test_state_hook_reports_attempts),
        cmocka_unit_test(test_remote_state_invalidation_and_restore),
        cmocka_unit_test(test_remote_invalidation_while_disabled),
        cmocka_unit_test(test_takeover_keeps_cadence),
    };

    oa_log_setup(OA_LOG_TEXT, OA_LOG_DEBUG, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
