/*
 * A replaced certificate in the engine: oa_sched_set_target and oa_delivery_set_target, with real signed responses
 * for two certificates of one CA. The scheduler runs on a real loop with a querier that answers on demand, so a
 * test decides when (and with which certificate's response) the query in flight comes back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../engine/target.h"
#include "oa_delivery.h"
#include "oa_log.h"
#include "oa_sched.h"
#include "oa_util.h"
#include "testpki.h"

#define URL_A "http://127.0.0.1:9/a"
#define URL_B "http://127.0.0.1:9/b"

/* ---- the PKI: leaf A (the testpki leaf), leaf B and leaf C (no AIA) under the same CA ---- */

typedef struct world_s {
    oa_testpki_t pki;
    oa_testpki_ident_t b, c;
    char dir[OA_TESTPKI_DIR_MAX];
    oa_ocsp_target_t *ta, *tb, *tc;
} world_t;

static oa_ocsp_target_t *load(world_t *w, const char *name, X509 *cert)
{
    char leaf[OA_TESTPKI_DIR_MAX + 32], ca[OA_TESTPKI_DIR_MAX + 32];
    oa_ocsp_target_t *t = NULL;
    oa_error_t err;

    oa_testpki_path(leaf, sizeof(leaf), w->dir, name);
    assert_int_equal(oa_testpki_write_certs(leaf, cert, NULL), 0);
    if (oa_ocsp_target_load(leaf, oa_testpki_path(ca, sizeof(ca), w->dir, "ca.pem"), NULL, &t, &err) != 0)
        fail_msg("target %s: %s", name, err.text);
    return t;
}

static void world_init(world_t *w)
{
    memset(w, 0, sizeof(*w));
    assert_int_equal(oa_testpki_init(&w->pki, 0x1001, URL_A), 0);
    assert_int_equal(oa_testpki_leaf_new(&w->pki.ca, "b.test", 0x1002, URL_B, &w->b), 0);
    assert_int_equal(oa_testpki_leaf_new(&w->pki.ca, "c.test", 0x1003, NULL, &w->c), 0);
    assert_int_equal(oa_testpki_tmpdir(w->dir), 0);
    assert_int_equal(oa_testpki_write_dir(&w->pki, w->dir), 0);
    w->ta = load(w, "a.pem", w->pki.leaf.cert);
    w->tb = load(w, "b.pem", w->b.cert);
    w->tc = load(w, "c.pem", w->c.cert);
}

static void world_free(world_t *w)
{
    oa_ocsp_target_free(w->ta);
    oa_ocsp_target_free(w->tb);
    oa_ocsp_target_free(w->tc);
    oa_testpki_ident_free(&w->b);
    oa_testpki_ident_free(&w->c);
    assert_int_equal(oa_testpki_rmdir(w->dir), 0);
    oa_testpki_free(&w->pki);
}

/* A verified GOOD response for t, as the engine would hand it over. Free with oa_ocsp_result_clear. */
static void good_for(const world_t *w, const oa_ocsp_target_t *t, oa_ocsp_result_t *res)
{
    oa_testpki_resp_opts_t o;
    unsigned char *der;
    size_t len;
    oa_error_t err;

    oa_testpki_resp_opts_init(&o, &w->pki);
    o.cert = t->cert;
    o.issuer = t->issuer;
    assert_int_equal(oa_testpki_response(&o, &der, &len), 0);
    memset(res, 0, sizeof(*res));
    if (oa_ocsp_verify(t, der, len, NULL, time(NULL), res, &err) != 0)
        fail_msg("response: %s", err.text);
    free(der);
}

/* ---- a querier answered by the test ---- */

typedef struct held_s {
    uv_timer_t timer;
    const oa_ocsp_target_t *target;     /* what the scheduler asked about */
    const oa_ocsp_target_t *answer_for; /* the response the answer carries; NULL: OA_E_OCSP_CANCELLED */
    oa_ocsp_query_cb cb;
    void *data;
} held_t;

static struct {
    const world_t *w;
    int starts;
    int cancels;
    held_t *open; /* the query not answered yet */
    const oa_ocsp_target_t *asked[16];
    bool answer_old_on_cancel; /* a cancelled query still comes back with its certificate's GOOD answer */
} g;

static void on_held_closed(uv_handle_t *h)
{
    free(oa_container_of(h, held_t, timer));
}

static void on_held_fire(uv_timer_t *t)
{
    held_t *q = oa_container_of(t, held_t, timer);
    oa_ocsp_result_t res;

    if (g.open == q)
        g.open = NULL;
    if (q->answer_for == NULL) {
        q->cb((oa_ocsp_query_t *)q, OA_E_OCSP_CANCELLED, "cancelled", NULL, 1, q->data);
    } else {
        good_for(g.w, q->answer_for, &res);
        q->cb((oa_ocsp_query_t *)q, 0, NULL, &res, 1, q->data);
        oa_ocsp_result_clear(&res);
    }
    uv_close((uv_handle_t *)&q->timer, on_held_closed);
}

static int held_start(uv_loop_t *loop, const oa_ocsp_target_t *t, const oa_ocsp_query_opts_t *opts,
                      oa_ocsp_query_cb cb, void *data, oa_ocsp_query_t **out, oa_error_t *err)
{
    held_t *q = calloc(1, sizeof(*q));

    (void)opts;
    (void)err;
    assert_non_null(q);
    assert_true(g.starts < 16);
    g.asked[g.starts++] = t;
    q->target = t;
    q->cb = cb;
    q->data = data;
    uv_timer_init(loop, &q->timer);
    g.open = q;
    *out = (oa_ocsp_query_t *)q;
    return 0;
}

static void held_cancel(oa_ocsp_query_t *oq)
{
    held_t *q = (held_t *)oq;

    g.cancels++;
    q->answer_for = g.answer_old_on_cancel ? q->target : NULL;
    uv_timer_start(&q->timer, on_held_fire, 0, 0);
}

static const oa_sched_querier_t held_querier = {held_start, held_cancel};

/* Answers the query in flight with a GOOD response about the certificate it asked for. */
static void answer_open(void)
{
    assert_non_null(g.open);
    g.open->answer_for = g.open->target;
    uv_timer_start(&g.open->timer, on_held_fire, 1, 0);
}

/* ---- the loop ---- */

typedef struct ctx_s {
    uv_loop_t loop;
    uv_timer_t tick;
    world_t w;
    char staple[OA_TESTPKI_DIR_MAX + 16];
    oa_sched_t *s;
    int staple_calls;
    bool staple_null; /* what the last staple hook call carried */
    int closed;
} ctx_t;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* One turn of the loop, woken within 5 ms at the latest. */
static void step(ctx_t *c)
{
    uv_timer_start(&c->tick, on_tick, 5, 0);
    uv_run(&c->loop, UV_RUN_ONCE);
    uv_timer_stop(&c->tick);
}

/* Turns the loop until cond holds, for max_ms of loop time at most; the caller asserts what it waited for. */
#define RUN_UNTIL(c, cond, max_ms)                                                                                   \
    for (uint64_t until_ = uv_now(&(c)->loop) + (max_ms); !(cond) && uv_now(&(c)->loop) < until_;)                   \
    step(c)

static void on_staple(void *data, const oa_ocsp_result_t *res)
{
    ctx_t *c = data;

    c->staple_calls++;
    c->staple_null = res == NULL;
}

static void ctx_start(ctx_t *c, bool enabled)
{
    oa_sched_options_t o;
    oa_conf_t conf = {.ocsp_functionality = enabled,
                      .query_frequency = 3600,
                      .response_timeout = 1,
                      .recovery_frequency = 60,
                      .recovery_max_tries = 5};

    memset(c, 0, sizeof(*c));
    memset(&g, 0, sizeof(g));
    world_init(&c->w);
    g.w = &c->w;
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->tick);
    oa_testpki_path(c->staple, sizeof(c->staple), c->w.dir, "ocsp.der");
    o = (oa_sched_options_t){.target = c->w.ta, .data_dir = c->w.dir, .time_scale = 1, .querier = &held_querier};
    assert_int_equal(oa_sched_new(&c->loop, &o, &c->s), 0);
    oa_sched_set_staple_hook(c->s, on_staple, c);
    oa_sched_apply_conf(c->s, &conf);
}

static void on_sched_closed(void *arg)
{
    ((ctx_t *)arg)->closed++;
}

static void ctx_finish(ctx_t *c)
{
    oa_sched_close(c->s, on_sched_closed, c);
    uv_close((uv_handle_t *)&c->tick, NULL);
    assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(c->closed, 1);
    assert_int_equal(uv_loop_close(&c->loop), 0);
    world_free(&c->w);
}

static bool staple_exists(const ctx_t *c)
{
    return access(c->staple, F_OK) == 0;
}

/* The status's field named key as the API would show it, "" when absent (times only say whether they are set). */
static const char *status_str(ctx_t *c, const char *key, char *buf, size_t size)
{
    oa_sched_status_t st;
    const char *v = "";

    oa_sched_snapshot(c->s, &st);
    if (strcmp(key, "cert_status") == 0)
        v = oa_cert_status_name(st.have_response ? st.response.cert_status : OA_CERT_UNKNOWN);
    else if (strcmp(key, "responder_url") == 0)
        v = st.responder_url;
    else if (strcmp(key, "state") == 0)
        v = oa_sched_state_name(st.state);
    else if (strcmp(key, "last_error_code") == 0)
        v = st.have_error ? st.last_error_code : "";
    else if (strcmp(key, "last_success") == 0)
        v = st.last_success != 0 ? "set" : "";
    else if (strcmp(key, "next_query") == 0)
        v = st.next_query != 0 ? "set" : "";
    else
        fail_msg("no such status field: %s", key);
    snprintf(buf, size, "%s", v);
    return buf;
}

/* Enabled on A, A's answer cached and written. */
static void reach_valid_on_a(ctx_t *c)
{
    RUN_UNTIL(c, g.open != NULL, 1000);
    assert_ptr_equal(g.asked[0], c->w.ta);
    answer_open();
    RUN_UNTIL(c, oa_sched_state(c->s) == OA_STATE_VALID, 1000);
    assert_int_equal(oa_sched_state(c->s), OA_STATE_VALID);
    assert_true(staple_exists(c));
}

/* ---- the scheduler ---- */

static void test_swap_drops_staple_and_asks_the_new_certificate(void **state)
{
    ctx_t c;
    char buf[128];
    int calls;

    (void)state;
    ctx_start(&c, true);
    reach_valid_on_a(&c);
    calls = c.staple_calls;

    oa_sched_set_target(c.s, c.w.tb);
    /* At once: the old staple is gone from the file and from the hook, and the state is pending. */
    assert_false(staple_exists(&c));
    assert_int_equal(c.staple_calls, calls + 1);
    assert_true(c.staple_null);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    assert_string_equal(status_str(&c, "cert_status", buf, sizeof(buf)), "UNKNOWN");
    assert_string_equal(status_str(&c, "responder_url", buf, sizeof(buf)), URL_B);
    assert_string_equal(status_str(&c, "last_success", buf, sizeof(buf)), "");

    /* The new certificate is asked at once, and its answer is served. */
    RUN_UNTIL(&c, g.starts == 2, 1000);
    assert_int_equal(g.starts, 2);
    assert_ptr_equal(g.asked[1], c.w.tb);
    answer_open();
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_VALID, 1000);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_VALID);
    assert_true(staple_exists(&c));
    assert_false(c.staple_null);
    ctx_finish(&c);
}

/* The old certificate's query is cancelled; even when its GOOD answer comes back regardless, it never lands. */
static void test_query_in_flight_never_lands(void **state)
{
    ctx_t c;
    oa_ocsp_result_t res;
    oa_error_t err;
    oa_buf_t b;

    (void)state;
    ctx_start(&c, true);
    RUN_UNTIL(&c, g.open != NULL, 1000);
    assert_ptr_equal(g.asked[0], c.w.ta);
    g.answer_old_on_cancel = true;

    oa_sched_set_target(c.s, c.w.tb);
    assert_int_equal(g.cancels, 1);
    RUN_UNTIL(&c, g.starts == 2, 1000);
    assert_int_equal(g.starts, 2);
    assert_ptr_equal(g.asked[1], c.w.tb);
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    assert_false(staple_exists(&c));

    answer_open();
    RUN_UNTIL(&c, oa_sched_state(c.s) == OA_STATE_VALID, 1000);
    /* What is on disk is B's response: it verifies against B, and not against A. */
    oa_buf_init(&b);
    assert_int_equal(oa_file_read(c.staple, 1 << 16, &b), 0);
    assert_int_equal(oa_ocsp_verify(c.w.tb, (unsigned char *)b.data, b.len, NULL, time(NULL), &res, &err), 0);
    oa_ocsp_result_clear(&res);
    assert_int_equal(oa_ocsp_verify(c.w.ta, (unsigned char *)b.data, b.len, NULL, time(NULL), &res, &err), -1);
    assert_int_equal(err.code, OA_E_OCSP_CERTID);
    oa_buf_free(&b);
    ctx_finish(&c);
}

typedef struct test_answer_s {
    int fired;
    int err;
    char cert_status[16];
} test_answer_t;

static void on_test_answer(void *data, int err, const char *text, const oa_sched_status_t *status)
{
    test_answer_t *a = data;

    (void)text;
    a->fired++;
    a->err = err;
    if (status != NULL)
        snprintf(a->cert_status, sizeof(a->cert_status), "%s",
                 oa_cert_status_name(status->have_response ? status->response.cert_status : OA_CERT_UNKNOWN));
}

/* An explicit test waiting on the old certificate's query is answered by a query about the new one. */
static void test_waiting_test_follows_the_new_certificate(void **state)
{
    ctx_t c;
    test_answer_t a;
    oa_error_t err;

    (void)state;
    memset(&a, 0, sizeof(a));
    ctx_start(&c, false);
    assert_int_equal(oa_sched_test(c.s, on_test_answer, &a, &err), 0);
    assert_int_equal(g.starts, 1);
    oa_sched_set_target(c.s, c.w.tb);
    RUN_UNTIL(&c, g.starts == 2, 1000);
    assert_int_equal(g.starts, 2);
    assert_ptr_equal(g.asked[1], c.w.tb);
    assert_int_equal(a.fired, 0);
    answer_open();
    RUN_UNTIL(&c, a.fired == 1, 1000);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.cert_status, "GOOD");
    /* Disabled: the test's answer is only reported, and the state stays. */
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    ctx_finish(&c);
}

/* A certificate without a responder URL while enabled: nothing is asked, and the status says why. */
static void test_new_certificate_without_responder(void **state)
{
    ctx_t c;
    char buf[128];
    oa_conf_t conf = {
        .query_frequency = 3600, .response_timeout = 1, .recovery_frequency = 60, .recovery_max_tries = 5};

    (void)state;
    ctx_start(&c, true);
    reach_valid_on_a(&c);
    oa_sched_set_target(c.s, c.w.tc);
    RUN_UNTIL(&c, false, 100);
    assert_int_equal(g.starts, 1);
    assert_false(staple_exists(&c));
    assert_int_equal(oa_sched_state(c.s), OA_STATE_PENDING);
    assert_string_equal(status_str(&c, "last_error_code", buf, sizeof(buf)), "no_responder_url");
    assert_string_equal(status_str(&c, "next_query", buf, sizeof(buf)), "");

    /* Disabled and enabled again: still nothing to ask, and the status still says why. */
    conf.ocsp_functionality = false;
    oa_sched_apply_conf(c.s, &conf);
    assert_string_equal(status_str(&c, "state", buf, sizeof(buf)), "disabled");
    conf.ocsp_functionality = true;
    oa_sched_apply_conf(c.s, &conf);
    RUN_UNTIL(&c, false, 100);
    assert_int_equal(g.starts, 1);
    assert_string_equal(status_str(&c, "state", buf, sizeof(buf)), "pending");
    assert_string_equal(status_str(&c, "last_error_code", buf, sizeof(buf)), "no_responder_url");

    /* A certificate with one is asked again at once. */
    oa_sched_set_target(c.s, c.w.tb);
    RUN_UNTIL(&c, g.starts == 2, 1000);
    assert_int_equal(g.starts, 2);
    assert_ptr_equal(g.asked[1], c.w.tb);
    ctx_finish(&c);
}

/* Disabled: the staple of the old certificate goes all the same, and nothing is asked. */
static void test_swap_while_disabled(void **state)
{
    ctx_t c;
    oa_conf_t off = {
        .query_frequency = 3600, .response_timeout = 1, .recovery_frequency = 60, .recovery_max_tries = 5};

    (void)state;
    ctx_start(&c, true);
    reach_valid_on_a(&c);
    oa_sched_apply_conf(c.s, &off);
    assert_true(staple_exists(&c));
    oa_sched_set_target(c.s, c.w.tb);
    RUN_UNTIL(&c, false, 100);
    assert_int_equal(g.starts, 1);
    assert_false(staple_exists(&c));
    assert_int_equal(oa_sched_state(c.s), OA_STATE_DISABLED);
    ctx_finish(&c);
}

/* Cluster mode: a response another node shares about another certificate is refused, before and after a swap. */
static void test_remote_response_for_another_certificate(void **state)
{
    ctx_t c;
    oa_ocsp_result_t ra, rb;
    oa_error_t err;

    (void)state;
    ctx_start(&c, false);
    good_for(&c.w, c.w.ta, &ra);
    good_for(&c.w, c.w.tb, &rb);
    assert_int_equal(oa_sched_apply_remote(c.s, rb.der, rb.der_len, oa_time_now_ms(), &err), OA_SCHED_REMOTE_REFUSED);
    assert_int_equal(err.code, OA_E_OCSP_CERTID);
    assert_false(staple_exists(&c));
    assert_int_equal(oa_sched_apply_remote(c.s, ra.der, ra.der_len, oa_time_now_ms(), &err), OA_SCHED_REMOTE_APPLIED);
    assert_true(staple_exists(&c));

    oa_sched_set_target(c.s, c.w.tb);
    assert_false(staple_exists(&c));
    assert_int_equal(oa_sched_apply_remote(c.s, ra.der, ra.der_len, oa_time_now_ms(), &err), OA_SCHED_REMOTE_REFUSED);
    assert_int_equal(err.code, OA_E_OCSP_CERTID);
    assert_false(staple_exists(&c));
    assert_int_equal(oa_sched_apply_remote(c.s, rb.der, rb.der_len, oa_time_now_ms(), &err), OA_SCHED_REMOTE_APPLIED);
    assert_true(staple_exists(&c));
    oa_ocsp_result_clear(&ra);
    oa_ocsp_result_clear(&rb);
    ctx_finish(&c);
}

/* ---- the delivery ---- */

static void on_delivery_closed(void *arg)
{
    (*(int *)arg)++;
}

static void test_delivery_follows_the_certificate(void **state)
{
    world_t w;
    uv_loop_t loop;
    oa_delivery_t *d;
    oa_delivery_options_t o = {.node_id = "n1", .staple_path = "/nonexistent/ocsp.der"};
    oa_ocsp_result_t ra, rb;
    uint64_t gen;
    int closed = 0;

    (void)state;
    world_init(&w);
    good_for(&w, w.ta, &ra);
    good_for(&w, w.tb, &rb);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_delivery_new(&loop, &o, &d), 0);

    /* The first certificate drops nothing; a staple about another one is refused. */
    assert_int_equal(oa_delivery_set_target(d, w.ta), 0);
    assert_int_equal(oa_delivery_generation(d), 0);
    assert_int_equal(oa_delivery_set_staple(d, &rb), OA_DELIVERY_STAPLE_REFUSED);
    assert_null(oa_delivery_staple(d));
    assert_int_equal(oa_delivery_set_staple(d, &ra), OA_DELIVERY_STAPLE_SET);
    assert_non_null(oa_delivery_staple(d));
    gen = oa_delivery_generation(d);

    /* The same certificate again changes nothing. */
    assert_int_equal(oa_delivery_set_target(d, w.ta), 0);
    assert_int_equal(oa_delivery_generation(d), gen);
    assert_non_null(oa_delivery_staple(d));

    /* Another one: the staple goes at once, as a change of certificate, and A's response is refused from then on. */
    assert_int_equal(oa_delivery_set_target(d, w.tb), 0);
    assert_null(oa_delivery_staple(d));
    assert_int_equal(oa_delivery_generation(d), gen + 1);
    assert_int_equal(oa_delivery_cert_gen(d), gen + 1);
    assert_int_equal(oa_delivery_set_staple(d, &ra), OA_DELIVERY_STAPLE_REFUSED);
    assert_null(oa_delivery_staple(d));
    assert_int_equal(oa_delivery_set_staple(d, &rb), OA_DELIVERY_STAPLE_SET);
    assert_non_null(oa_delivery_staple(d));
    assert_int_equal(oa_delivery_staple(d)->der_len, rb.der_len);
    assert_memory_equal(oa_delivery_staple(d)->der, rb.der, rb.der_len);

    /* Back to A after B's staple was removed (expired): still a generation of its own, so that a target that kept
     * B's response learns that it belongs to a certificate no longer watched. */
    assert_int_equal(oa_delivery_set_staple(d, NULL), OA_DELIVERY_STAPLE_SET);
    gen = oa_delivery_generation(d);
    assert_int_equal(oa_delivery_set_target(d, w.ta), 0);
    assert_int_equal(oa_delivery_generation(d), gen + 1);
    assert_int_equal(oa_delivery_cert_gen(d), gen + 1);
    assert_null(oa_delivery_staple(d));

    oa_delivery_close(d, on_delivery_closed, &closed);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
    oa_ocsp_result_clear(&ra);
    oa_ocsp_result_clear(&rb);
    world_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swap_drops_staple_and_asks_the_new_certificate),
        cmocka_unit_test(test_query_in_flight_never_lands),
        cmocka_unit_test(test_waiting_test_follows_the_new_certificate),
        cmocka_unit_test(test_new_certificate_without_responder),
        cmocka_unit_test(test_swap_while_disabled),
        cmocka_unit_test(test_remote_response_for_another_certificate),
        cmocka_unit_test(test_delivery_follows_the_certificate),
    };

    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
