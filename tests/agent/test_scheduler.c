/*
 * The scheduler against a scripted querier on a real libuv loop. Frequencies run with a time scale of 0.005, so
 * 60 s become 300 ms. Timing checks count queries and compare loop times of query starts: lower bounds are exact
 * (a libuv timer never fires early), upper bounds are generous.
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
#include "testpki.h"

#define SCALE 0.005
#define MAX_STARTS 64
#define NEVER 0xffffffffu

/* ---- a scripted querier ---- */

typedef struct answer_script_s {
    int err;                 /* 0 for an answer, else the OA_E_* the query fails with */
    oa_cert_status_t status; /* GOOD, REVOKED or UNKNOWN */
    bool no_next_update;
    long next_offset;        /* nextUpdate, seconds from the wall clock at answer time */
    unsigned delay_ms;       /* NEVER: no answer until cancelled */
} answer_script_t;

typedef struct fake_s {
    uv_loop_t *loop;
    answer_script_t script[16];
    int n_script;
    answer_script_t dflt; /* once the script is used up */
    int starts;
    int cancels;
    int answers;
    uint64_t start_at[MAX_STARTS]; /* uv_now of each start, index 1.. */
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
    unsigned dur = (unsigned)(uv_now(f->loop) - fq->started);
    oa_ocsp_result_t res;
    char der[32];
    time_t now = time(NULL);

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
    f->start_at[f->starts] = uv_now(loop);
    f->last_timeout_ms = opts->timeout_ms;
    fq->fake = f;
    fq->index = f->starts;
    fq->ans = f->starts <= f->n_script ? f->script[f->starts - 1] : f->dflt;
    fq->cb = cb;
    fq->data = data;
    fq->started = uv_now(loop);
    uv_timer_init(loop, &fq->timer);
    if (fq->ans.delay_ms != NEVER)
        uv_timer_start(&fq->timer, on_fake_fire, fq->ans.delay_ms, 0);
    *out = (oa_ocsp_query_t *)fq;
    return 0;
}

static void fake_cancel(oa_ocsp_query_t *q)
{
    fake_query_t *fq = (fake_query_t *)q;

    fq->fake->cancels++;
    fq->cancelled = true;
    uv_timer_start(&fq->timer, on_fake_fire, 0, 0);
}

static const oa_sched_querier_t fake_querier = {fake_start, fake_cancel};

/* ---- the test context ---- */

typedef struct ctx_s {
    uv_loop_t loop;
    uv_timer_t tick;
    fake_t fake;
    char dir[OA_TESTPKI_DIR_MAX];
    char staple[OA_TESTPKI_DIR_MAX + 16];
    oa_ocsp_target_t target;
    oa_sched_t *s;
    int closed;
} ctx_t;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void ctx_init_loop(ctx_t *c)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->tick);
    assert_int_equal(oa_testpki_tmpdir(c->dir), 0);
    oa_testpki_path(c->staple, sizeof(c->staple), c->dir, "ocsp.der");
    c->fake.loop = &c->loop;
    c->fake.dflt = good();
    g_fake = &c->fake;
}

static void ctx_new_sched(ctx_t *c, const oa_ocsp_target_t *target)
{
    oa_sched_options_t o = {.target = target, .data_dir = c->dir, .time_scale = SCALE, .querier = &fake_querier};

    assert_int_equal(oa_sched_new(&c->loop, &o, &c->s), 0);
}

/* A context whose target is only a responder URL: the fake querier never looks at certificates. */
static void ctx_setup(ctx_t *c)
{
    ctx_init_loop(c);
    c->target.responder_url = "http://127.0.0.1:9/ocsp";
    c->target.serial_hex = "1A2B";
    c->target.subject = "CN=proxy.test";
    ctx_new_sched(c, &c->target);
}

static void on_sched_closed(void *arg)
{
    ((ctx_t *)arg)->closed++;
}

static void ctx_close_sched(ctx_t *c)
{
    oa_sched_close(c->s, on_sched_closed, c);
    c->s = NULL;
    uv_close((uv_handle_t *)&c->tick, NULL);
    assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(c->closed, 1);
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

/* Runs the loop until cond holds or max_ms of loop time pass; the tick timer keeps each round short. */
#define RUN_UNTIL(c, cond, max_ms)                                                                                \
    do {                                                                                                          \
        uint64_t deadline_ = uv_now(&(c)->loop) + (max_ms);                                                       \
        uv_timer_start(&(c)->tick, on_tick, 5, 5);                                                                \
        while (!(cond) && uv_now(&(c)->loop) < deadline_)                                                         \
            uv_run(&(c)->loop, UV_RUN_ONCE);                                                                      \
        uv_timer_stop(&(c)->tick);                                                                                \
    } while (0)

#define RUN_FOR(c, ms) RUN_UNTIL(c, false, ms)

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

static const char *status_cert(ctx_t *c, char *buf, size_t size)
{
    json_t *st = status(c);

    snprintf(buf, size, "%s", json_string_value(json_object_get(st, "cert_status")));
    json_decref(st);
    return buf;
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
    uint64_t t0;

    (void)state;
    ctx_setup(&c);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    assert_status(&c, "UNKNOWN", "disabled");
    t0 = uv_now(&c.loop);
    oa_sched_apply_conf(c.s, &conf);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_VALID, 2000);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_int_equal(c.fake.starts, 1);
    assert_true(c.fake.start_at[1] - t0 < 500);
    assert_int_equal(c.fake.last_timeout_ms, 1000);
    assert_staple(&c, 1);

    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "responder_url", "http://127.0.0.1:9/ocsp");
    assert_key_time(st, "produced_at", c.fake.last.produced_at);
    assert_key_time(st, "this_update", c.fake.last.this_update);
    assert_key_time(st, "next_update", c.fake.last.next_update);
    assert_key_str(st, "revocation_time", NULL);
    assert_key_str(st, "state", "valid");
    assert_non_null(json_object_get(st, "last_attempt"));
    assert_non_null(json_object_get(st, "last_success"));
    assert_non_null(json_object_get(st, "next_query"));
    assert_key_str(st, "last_error_code", NULL);
    assert_key_str(st, "last_error", NULL);
    assert_key_int(st, "consecutive_failures", 0);
    assert_key_int(st, "recovery_tries", 0);
    assert_key_int(st, "recovery_max_tries", 5);
    json_decref(st);

    /* query_frequency 3600 s scales to 18 s: nothing more happens in the next 300 ms. */
    RUN_FOR(&c, 300);
    assert_int_equal(c.fake.starts, 1);
    assert_metrics_line(&c, "ocsp_agent_queries_total{result=\"ok\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"GOOD\"} 1");
    assert_metrics_line(&c, "ocsp_agent_cert_status{status=\"UNKNOWN\"} 0");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"valid\"} 1");
    assert_metrics_line(&c, "ocsp_agent_state{state=\"pending\"} 0");
    assert_metrics_line(&c, "ocsp_agent_consecutive_failures 0");
    assert_metrics_line(&c, "# TYPE ocsp_agent_queries_total counter");
    assert_metrics_line(&c, "# TYPE ocsp_agent_staple_expiry_seconds gauge");
    assert_no_metrics_text(&c, "result=\"ocsp_");
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
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_VALID, 2000);
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
    int i;

    (void)state;
    ctx_setup(&c);
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, c.fake.starts >= 4, 4000);
    assert_int_equal(c.fake.starts, 4);
    for (i = 1; i < 4; i++) {
        assert_true(gap(&c, i, i + 1) >= 300);
        assert_true(gap(&c, i, i + 1) < 1000);
    }
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    ctx_teardown(&c);
}

static void test_next_update_midpoint_and_floor(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 3600, 60, 5);

    (void)state;
    ctx_setup(&c);
    /* nextUpdate 4 s away: the midpoint is 1.5 to 2 s away, much sooner than the 18 s regular interval. Then 1 s
     * away: the midpoint would be under 0.5 s, but the floor holds the next query to 1 s after the attempt. */
    script(&c, 3, good_until(4), good_until(1), good());
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, c.fake.starts >= 3, 7000);
    assert_int_equal(c.fake.starts, 3);
    assert_true(gap(&c, 1, 2) >= 1450);
    assert_true(gap(&c, 1, 2) <= 3000);
    assert_true(gap(&c, 2, 3) >= 1000);
    assert_true(gap(&c, 2, 3) <= 1900);
    RUN_UNTIL(&c, c.fake.answers >= 3, 1000);
    assert_status(&c, "GOOD", "valid");
    assert_staple(&c, 3);
    ctx_teardown(&c);
}

static void test_recovery_invalidation_and_restore(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 240, 60, 2); /* 1.2 s regular, 0.3 s recovery, 2 retries */
    json_t *st;

    (void)state;
    ctx_setup(&c);
    script(&c, 5, good(), failing(OA_E_OCSP_TIMEOUT), failing(OA_E_OCSP_CONNECT), failing(OA_E_OCSP_HTTP_STATUS),
           good());
    oa_sched_apply_conf(c.s, &conf);

    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_RECOVERING, 4000);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    assert_int_equal(c.fake.starts, 2);
    assert_true(gap(&c, 1, 2) >= 1200);
    /* The valid response keeps being served while recovering. */
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "recovering");
    assert_key_int(st, "consecutive_failures", 1);
    assert_key_int(st, "recovery_tries", 0);
    assert_key_str(st, "last_error_code", "ocsp_responder_timeout");
    assert_key_str(st, "last_error", "a scripted failure");
    json_decref(st);
    assert_staple(&c, 1);

    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_INVALIDATED, 4000);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    /* One failure started recovery, then exactly recovery_max_tries retries failed. */
    assert_int_equal(c.fake.starts, 4);
    assert_true(gap(&c, 2, 3) >= 300 && gap(&c, 2, 3) < 1000);
    assert_true(gap(&c, 3, 4) >= 300 && gap(&c, 3, 4) < 1000);
    assert_false(staple_exists(&c));
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

    /* Back to query_frequency; the next valid answer restores the status. */
    RUN_UNTIL(&c, c.fake.starts >= 5 && oa_sched_state(c.s) == OA_STATE_VALID, 4000);
    assert_int_equal(c.fake.starts, 5);
    assert_true(gap(&c, 4, 5) >= 1200);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple(&c, 5);
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

typedef struct expiry_watch_s {
    int good_after_expiry;   /* GOOD served at or after nextUpdate */
    int staple_after_expiry; /* the staple file still there a second after nextUpdate */
    int unknown;             /* UNKNOWN seen */
} expiry_watch_t;

static bool watch_expiry(ctx_t *c, time_t nu, expiry_watch_t *w)
{
    char cs[16];
    time_t now = time(NULL);

    status_cert(c, cs, sizeof(cs));
    if (strcmp(cs, "GOOD") == 0 && now >= nu)
        w->good_after_expiry++;
    if (now > nu && staple_exists(c))
        w->staple_after_expiry++;
    if (strcmp(cs, "UNKNOWN") == 0)
        w->unknown = 1;
    return w->unknown;
}

static void test_cache_served_until_next_update(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 100);
    expiry_watch_t w = {0, 0, 0};
    time_t nu;
    int starts;

    (void)state;
    ctx_setup(&c);
    script(&c, 1, good_until(2));
    c.fake.dflt = failing(OA_E_OCSP_CONNECT);
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_RECOVERING, 2000);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_RECOVERING);
    nu = c.fake.last.next_update;
    if (time(NULL) < nu) {
        assert_status(&c, "GOOD", "recovering");
        assert_true(staple_exists(&c));
    }
    /* Watch every few milliseconds: once nextUpdate has passed, GOOD must never be served again. */
    RUN_UNTIL(&c, watch_expiry(&c, nu, &w), 4000);
    assert_int_equal(w.unknown, 1);
    assert_true(time(NULL) >= nu);
    assert_true(time(NULL) <= nu + 1);
    assert_int_equal(w.good_after_expiry, 0);
    assert_int_equal(w.staple_after_expiry, 0);
    assert_false(staple_exists(&c));
    assert_status(&c, "UNKNOWN", "invalidated");
    /* Recovery goes on at recovery_frequency. */
    starts = c.fake.starts;
    RUN_FOR(&c, 450);
    assert_true(c.fake.starts >= starts + 1);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_INVALIDATED);
    ctx_teardown(&c);
}

static void test_unknown_starts_recovery(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 5);
    json_t *st;

    (void)state;
    ctx_setup(&c);
    script(&c, 3, good(), with_status(OA_CERT_UNKNOWN), good());
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_RECOVERING, 3000);
    assert_int_equal(c.fake.starts, 2);
    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "recovering");
    assert_key_str(st, "last_error_code", "cert_status_unknown");
    assert_key_str(st, "last_error", "responder answered UNKNOWN");
    assert_key_int(st, "consecutive_failures", 1);
    json_decref(st);
    assert_staple(&c, 1);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_VALID, 3000);
    assert_int_equal(c.fake.starts, 3);
    assert_true(gap(&c, 2, 3) >= 300);
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
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_RECOVERING, 2000);
    assert_status(&c, "UNKNOWN", "recovering");
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_INVALIDATED, 2000);
    assert_int_equal(c.fake.starts, 2);
    /* Invalidated: further failures stay on query_frequency (18 s), no new round of retries. */
    RUN_FOR(&c, 650);
    assert_int_equal(c.fake.starts, 2);
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
    RUN_UNTIL(&c, c.fake.starts == 1, 1000);
    assert_int_equal(c.fake.starts, 1);
    assert_status(&c, "UNKNOWN", "pending");
    oa_sched_apply_conf(c.s, &off);
    assert_int_equal(c.fake.cancels, 1);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    RUN_FOR(&c, 800);
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
    oa_sched_apply_conf(c.s, &on);
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_VALID, 2000);
    oa_sched_apply_conf(c.s, &off);
    assert_status(&c, "GOOD", "disabled");
    assert_staple(&c, 1);
    /* Enabling again keeps the response valid and still queries at once. */
    oa_sched_apply_conf(c.s, &on);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    RUN_UNTIL(&c, c.fake.answers >= 2, 2000);
    assert_int_equal(c.fake.starts, 2);
    assert_staple(&c, 2);
    ctx_teardown(&c);
}

static void test_frequency_change_reschedules(void **state)
{
    ctx_t c;
    oa_conf_t slow = conf_of(true, 3600, 60, 5), fast = conf_of(true, 60, 60, 5);
    uint64_t t_apply;

    (void)state;
    ctx_setup(&c);
    oa_sched_apply_conf(c.s, &slow);
    RUN_UNTIL(&c, c.fake.answers >= 1, 2000);
    RUN_FOR(&c, 400);
    assert_int_equal(c.fake.starts, 1);
    /* 300 ms after the last attempt is already past: the query goes out now. */
    t_apply = uv_now(&c.loop);
    oa_sched_apply_conf(c.s, &fast);
    RUN_UNTIL(&c, c.fake.answers >= 2, 2000);
    assert_int_equal(c.fake.starts, 2);
    assert_true(c.fake.start_at[2] - t_apply < 200);
    /* Slowing down again: no query for the next 700 ms. */
    oa_sched_apply_conf(c.s, &slow);
    RUN_FOR(&c, 700);
    assert_int_equal(c.fake.starts, 2);
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
    RUN_UNTIL(&c, a.fired, 2000);
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
    RUN_FOR(&c, 300);
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
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, c.fake.answers >= 1, 2000);
    start_test(&c, &a);
    RUN_UNTIL(&c, a.fired, 2000);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.cert_status, "REVOKED");
    assert_true(a.has_revocation_time);
    assert_status(&c, "REVOKED", "valid");
    assert_staple(&c, 2);
    assert_int_equal(c.fake.starts, 2);
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
    RUN_UNTIL(&c, c.fake.starts == 1, 1000);
    start_test(&c, &a);
    start_test(&c, &b);
    RUN_UNTIL(&c, a.fired && b.fired, 2000);
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
    RUN_UNTIL(&c, a.fired && b.fired, 2000);
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
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, c.fake.answers >= 1, 2000);

    start_test(&c, &a);
    RUN_UNTIL(&c, a.fired, 2000);
    assert_int_equal(a.err, OA_E_OCSP_CONNECT);
    assert_string_equal(a.text, "a scripted failure");
    assert_false(a.has_status);

    /* A verified UNKNOWN is an answer for the tester (no error) but changes nothing either. */
    start_test(&c, &a);
    RUN_UNTIL(&c, a.fired, 2000);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.cert_status, "UNKNOWN");
    assert_true(a.has_this_update);

    st = status(&c);
    assert_key_str(st, "cert_status", "GOOD");
    assert_key_str(st, "state", "valid");
    assert_key_int(st, "consecutive_failures", 0);
    assert_key_str(st, "last_error_code", NULL);
    json_decref(st);
    assert_staple(&c, 1);
    /* No recovery was scheduled: the 18 s interval still holds. */
    RUN_FOR(&c, 500);
    assert_int_equal(c.fake.starts, 3);
    ctx_teardown(&c);
}

static void test_test_safety_timeout(void **state)
{
    ctx_t c;
    test_answer_t a, b;
    uint64_t t0;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = NEVER;
    t0 = uv_now(&c.loop);
    start_test(&c, &a);
    RUN_UNTIL(&c, a.fired, 8000);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_TASK_QUEUED_TOO_LONG);
    assert_true(uv_now(&c.loop) - t0 >= 6000);
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

static void test_close_with_query_in_flight(void **state)
{
    ctx_t c;
    oa_conf_t conf = conf_of(true, 60, 60, 5);
    test_answer_t a;

    (void)state;
    ctx_setup(&c);
    c.fake.dflt.delay_ms = 2000;
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, c.fake.starts == 1, 1000);
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
    RUN_UNTIL(&c, c.fake.starts == 1, 1000);
    oa_sched_apply_conf(c.s, &off);
    /* The cancelled query has not come back yet: the test waits for a fresh one instead of its cancellation. */
    start_test(&c, &a);
    RUN_UNTIL(&c, a.fired, 2000);
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
    uv_timer_init(&c.loop, &c.tick);
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

static void write_response(const ctx_t *c, const oa_testpki_resp_opts_t *o, unsigned char **der, size_t *len)
{
    assert_int_equal(oa_testpki_response(o, der, len), 0);
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
    RUN_UNTIL(&c, c.fake.starts == 1, 1000);
    assert_int_equal(c.fake.starts, 1);
    assert_status(&c, "REVOKED", "valid");
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
    oa_conf_t conf = conf_of(true, 60, 60, 1); /* 0.3 s regular and recovery, one retry */
    state_log_t log;
    test_answer_t a;
    int64_t before;

    (void)state;
    memset(&log, 0, sizeof(log));
    ctx_setup(&c);
    oa_sched_set_state_hook(c.s, on_state_hook, &log);
    oa_sched_set_result_hook(c.s, on_result_hook, &log);
    script(&c, 3, good(), failing(OA_E_OCSP_HTTP_STATUS), failing(OA_E_OCSP_CONNECT));
    c.fake.dflt = failing(OA_E_OCSP_CONNECT);
    before = oa_time_now_ms();
    oa_sched_apply_conf(c.s, &conf);

    RUN_UNTIL(&c, log.calls >= 1, 1000);
    assert_int_equal(log.calls, 1);
    assert_int_equal(log.results_at_state, 1); /* the response went out first */
    assert_int_equal(log.last.state, OA_STATE_VALID);
    assert_false(log.last.recovering);
    assert_int_equal(log.last.consecutive_failures, 0);
    assert_string_equal(log.code, "");
    assert_true(log.last.last_attempt_ms >= before - 1000 && log.last.last_attempt_ms <= oa_time_now_ms());

    RUN_UNTIL(&c, log.calls >= 2, 1000);
    assert_int_equal(log.calls, 2);
    assert_int_equal(log.last.state, OA_STATE_RECOVERING);
    assert_true(log.last.recovering);
    assert_int_equal(log.last.consecutive_failures, 1);
    assert_int_equal(log.last.recovery_tries, 0);
    assert_string_equal(log.code, "ocsp_responder_http_status");
    assert_string_equal(log.text, "a scripted failure");

    RUN_UNTIL(&c, log.calls >= 3, 1000);
    assert_int_equal(log.calls, 3);
    assert_int_equal(log.last.state, OA_STATE_INVALIDATED);
    assert_false(log.last.recovering);
    assert_int_equal(log.last.consecutive_failures, 2);
    assert_int_equal(log.last.recovery_tries, 1);
    assert_string_equal(log.code, "ocsp_responder_connection_failed");
    assert_int_equal(log.results, 1);

    /* A test that fails changes nothing and reports nothing. */
    c.fake.dflt.delay_ms = 10;
    start_test(&c, &a);
    RUN_UNTIL(&c, a.fired == 1, 1000);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_E_OCSP_CONNECT);
    /* The next scheduled attempt is 300 ms away, far beyond the test's 10 ms, so nothing adopted its query. */
    assert_int_equal(log.calls, 3);
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
    int64_t at_ms = (oa_time_now_ms() / 1000 - 5) * 1000;
    json_t *st;

    (void)state;
    pki_setup(&p);
    ctx_init_loop(&c);
    ctx_new_sched(&c, p.target);
    oa_sched_set_follower(c.s, true);
    oa_sched_apply_conf(c.s, &conf);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);

    oa_testpki_resp_opts_init(&o, &p.pki);
    assert_int_equal(oa_testpki_response(&o, &der1, &len1), 0);
    o.this_update_offset = -30;
    o.produced_at_offset = -30;
    o.next_update_offset = 7200;
    assert_int_equal(oa_testpki_response(&o, &der2, &len2), 0);

    assert_int_equal(oa_sched_apply_remote(c.s, der1, len1, oa_time_now_ms(), &err), 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple_bytes(&c, der1, len1);

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
    assert_int_equal(oa_sched_apply_remote(c.s, der2, len2, oa_time_now_ms(), &err), 0);
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
    v = view_of(OA_STATE_VALID, false, 0, 0, oa_time_now_ms(), "ocsp_responder_connection_failed",
                "connection refused");
    assert_int_equal(oa_sched_apply_remote_state(c.s, &v, &err), 0);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_staple_bytes(&c, der2, len2);
    /* A follower never queried. */
    RUN_FOR(&c, 50);
    assert_int_equal(c.fake.starts, 0);
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
    oa_sched_view_t v = view_of(OA_STATE_INVALIDATED, false, 2, 1, oa_time_now_ms(), "ocsp_responder_timeout",
                                "no answer");
    unsigned char *der;
    size_t len;
    oa_error_t err;

    (void)state;
    pki_setup(&p);
    ctx_init_loop(&c);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enable_queries_at_once),
        cmocka_unit_test(test_revoked_is_cached),
        cmocka_unit_test(test_regular_interval),
        cmocka_unit_test(test_next_update_midpoint_and_floor),
        cmocka_unit_test(test_recovery_invalidation_and_restore),
        cmocka_unit_test(test_cache_served_until_next_update),
        cmocka_unit_test(test_unknown_starts_recovery),
        cmocka_unit_test(test_first_failure_recovers_without_cache),
        cmocka_unit_test(test_disable_cancels_in_flight),
        cmocka_unit_test(test_disable_keeps_valid_cache),
        cmocka_unit_test(test_frequency_change_reschedules),
        cmocka_unit_test(test_test_while_disabled_leaves_cache),
        cmocka_unit_test(test_test_while_enabled_updates_cache),
        cmocka_unit_test(test_test_joins_query_in_flight),
        cmocka_unit_test(test_two_tests_share_one_query),
        cmocka_unit_test(test_test_failure_changes_nothing),
        cmocka_unit_test(test_test_safety_timeout),
        cmocka_unit_test(test_close_with_query_in_flight),
        cmocka_unit_test(test_test_after_disable_waits_for_new_query),
        cmocka_unit_test(test_no_responder_url),
        cmocka_unit_test(test_staple_reloaded_when_valid),
        cmocka_unit_test(test_staple_discarded_when_expired_or_bad),
        cmocka_unit_test(test_state_hook_reports_attempts),
        cmocka_unit_test(test_remote_state_invalidation_and_restore),
        cmocka_unit_test(test_remote_invalidation_while_disabled),
    };

    oa_log_setup(OA_LOG_TEXT, OA_LOG_DEBUG, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
