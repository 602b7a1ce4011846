/*
 * The querying engine's schedule (API.md section 4).
 *
 * Decisions the contract leaves open, written down here so the code and the README agree:
 *
 * - State while OCSP is disabled. Disabling keeps a still-valid cached response: GET /v1/ocsp/status goes on serving
 *   it (cert_status GOOD or REVOKED) and the staple file stays, but the state reads "disabled", because querying is
 *   off and an operator should see that first. The response still expires at its own nextUpdate: it is then dropped
 *   and the staple file removed, whatever the state. Between oa_sched_new and the first oa_sched_apply_conf a
 *   staple reloaded from disk shows as "valid"; enabling keeps it "valid" (and queries at once).
 *
 * - Expiry of the cached response. The response is served until its nextUpdate and never after: a timer on the
 *   wall-clock nextUpdate (and a check whenever the status or metrics are read) drops it and removes the staple.
 *   If the state was "valid" or "recovering" it becomes "invalidated". Recovery itself carries on at
 *   recovery_frequency while the state reads "invalidated": an expired staple is a reason to retry sooner, not
 *   later. When the retries run out, the alert `ocsp_query_failed` is raised as usual and the schedule returns to
 *   query_frequency.
 *
 * - After invalidation (recovery_max_tries failed retries) further failures keep the state "invalidated" and the
 *   schedule at query_frequency; they do not start a new round of recovery or raise the alert again. The first
 *   valid answer restores "valid".
 *
 * - A verified UNKNOWN answer counts as a failed attempt. Its outcome is named "cert_status_unknown" in the log
 *   line, the metrics' result label and last_error_code, so it is told apart from transport or verification errors.
 *
 * - Explicit tests. A test query's answer changes the cache and the schedule only when it is a valid GOOD/REVOKED
 *   answer while OCSP is enabled (it then counts as a regular success). A test that joins the scheduled query in
 *   flight just waits for it; a scheduled query that falls due while a test query is in flight adopts that query,
 *   which then counts as a regular attempt (never two queries at once). Operator fields (last_attempt, last_error,
 *   consecutive_failures) describe the schedule, so a test answer that is not applied leaves them alone; every
 *   attempt is still logged and counted in the metrics. last_error_code and last_error keep the most recent
 *   failure even after a later success (consecutive_failures 0 says it is over), so a flapping responder can be
 *   diagnosed.
 *
 * - Anchors. Every interval runs from the start of the last attempt that counted, on uv_now (monotonic). The
 *   midpoint rule applies only to the nextUpdate of the cached response and is never sooner than 1 s after that
 *   attempt; the regular interval itself is not floored, so a small --time-scale still gives short intervals.
 *
 * - Cluster mode. The poller reports its view (state, recovery flags, operator fields) after every attempt that
 *   counted and when its cached response expires; a follower takes that view as its own, so every node shows
 *   what the poller knows. An invalidation reported by the poller drops a follower's cache and staple even when
 *   the follower's copy has not expired yet: it must never serve a status the poller gave up on. "valid" is shown
 *   only with a response in the cache, which arrives separately (oa_sched_apply_remote).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "oa_datadir.h"
#include "oa_log.h"
#include "sched_internal.h"

static const oa_sched_querier_t real_querier = {oa_ocsp_query_start, oa_ocsp_query_cancel};

static void on_timer(uv_timer_t *t);
static void on_query_done(oa_ocsp_query_t *q, int err, const char *errtext, const oa_ocsp_result_t *res,
                          unsigned duration_ms, void *data);

const char *oa_sched_state_name(oa_sched_state_t s)
{
    switch (s) {
    case OA_STATE_DISABLED:
        return "disabled";
    case OA_STATE_PENDING:
        return "pending";
    case OA_STATE_VALID:
        return "valid";
    case OA_STATE_RECOVERING:
        return "recovering";
    case OA_STATE_INVALIDATED:
        return "invalidated";
    }
    return "unknown";
}

oa_sched_state_t oa_sched_state(const oa_sched_t *s)
{
    return s->state;
}

static uint64_t scaled_ms(const oa_sched_t *s, int seconds)
{
    double ms = (double)seconds * 1000.0 * s->time_scale;

    return ms < 1.0 ? 1 : (uint64_t)(ms + 0.5);
}

/* ---- the closing bookkeeping ---- */

void sched_maybe_finish(oa_sched_t *s)
{
    void (*done)(void *arg);
    void *arg;

    if (!s->closing || s->pending_closes > 0 || s->in_flight)
        return;
    done = s->done;
    arg = s->done_arg;
    oa_ocsp_result_clear(&s->cache);
    free(s->staple_path);
    free(s);
    if (done != NULL)
        done(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    oa_sched_t *s = h->data;

    s->pending_closes--;
    sched_maybe_finish(s);
}

/* ---- the schedule ---- */

void sched_rearm(oa_sched_t *s)
{
    uint64_t now, due;

    timer_stop(s, &s->timer);
    s->timer_armed = false;
    if (!s->enabled || s->closing || s->follower || !has_responder(s))
        return;
    /* A regular query in flight re-arms the timer when it completes. */
    if (s->in_flight && s->query_regular && !s->query_cancelled)
        return;
    now = now_mono(s);
    if (s->due_now || !s->have_anchor) {
        due = now;
    } else if (s->recovering) {
        due = s->anchor_mono + scaled_ms(s, s->conf.recovery_frequency);
    } else {
        due = s->anchor_mono + scaled_ms(s, s->conf.query_frequency);
        if (s->have_cache && s->mid_due != 0 && s->mid_due < due)
            due = s->mid_due;
    }
    s->next_due = due;
    s->timer_armed = true;
    timer_start(s, &s->timer, on_timer, due > now ? due - now : 0);
}

/*
 * Starts a query. Every waiter present becomes attached to it, whether it starts or not: on failure the caller
 * answers them. Returns 0, or -1 with err filled.
 */
int sched_start_query(oa_sched_t *s, bool regular, oa_error_t *err)
{
    oa_ocsp_query_opts_t opts;
    oa_ocsp_query_t *q = NULL;
    waiter_t *w;

    s->query_regular = regular;
    s->query_cancelled = false;
    if (regular) {
        s->query_trigger = s->recovering ? TRIGGER_RECOVERY : TRIGGER_SCHEDULE;
        s->query_attempt = s->recovering ? s->recovery_tries + 1 : 0;
    } else {
        s->query_trigger = TRIGGER_TEST;
        s->query_attempt = 0;
    }
    s->query_start_mono = now_mono(s);
    s->query_start_wall = now_wall(s);
    for (w = s->waiters; w != NULL; w = w->next)
        w->attached = true;

    if (s->target == NULL || s->target->responder_url == NULL || s->target->responder_url[0] == '\0')
        return oa_error_set(err, OA_E_NO_RESPONDER_URL,
                            "there is no OCSP responder URL: the certificate has none and none was configured");
    memset(&opts, 0, sizeof(opts));
    opts.timeout_ms = (unsigned)s->conf.response_timeout * 1000u;
    opts.with_nonce = true;
    opts.use_get = false;
    oa_error_clear(err);
    s->in_flight = true;
    if (s->querier->start(s->loop, s->target, &opts, on_query_done, s, &q, err) != 0) {
        s->in_flight = false;
        if (err->code == OA_OK)
            oa_error_set(err, OA_E_INTERNAL, "the OCSP query could not start");
        return -1;
    }
    if (s->in_flight)
        s->query = q;
    return 0;
}

/* The snapshot for r (the cache, or a fresh answer), with the operator fields. */
void sched_snapshot_of(oa_sched_t *s, const oa_ocsp_result_t *r, oa_sched_status_t *st)
{
    uint64_t now;

    memset(st, 0, sizeof(*st));
    st->state = s->state;
    st->responder_url = responder_of(s);
    st->response.cert_status = OA_CERT_UNKNOWN;
    st->response.revocation_reason = -1;
    if (r != NULL) {
        st->have_response = true;
        st->response = *r;
        st->response.der = NULL;
        st->response.der_len = 0;
    }
    st->taken_at = now_wall(s);
    st->last_attempt = s->last_attempt;
    st->last_success = s->last_success;
    st->have_error = s->have_error;
    if (s->have_error) {
        snprintf(st->last_error_code, sizeof(st->last_error_code), "%s", s->last_error_code);
        snprintf(st->last_error, sizeof(st->last_error), "%s", s->last_error);
    }
    st->consecutive_failures = s->consecutive_failures;
    st->recovery_tries = s->recovery_tries;
    st->recovery_max_tries = s->conf.recovery_max_tries;
    if (s->timer_armed) {
        now = now_mono(s);
        st->next_query = st->taken_at + (time_t)((s->next_due > now ? s->next_due - now : 0) / 1000);
    }
    st->queries_ok = s->count_ok;
    st->queries_unknown = s->count_unknown;
    memcpy(st->queries_failed, s->count_err, sizeof(st->queries_failed));
}

static void on_query_done(oa_ocsp_query_t *q, int err, const char *errtext, const oa_ocsp_result_t *res,
                          unsigned duration_ms, void *data)
{
    oa_sched_t *s = data;

    (void)q;
    s->in_flight = false;
    s->query = NULL;
    sched_finish_attempt(s, err, errtext, res, duration_ms);
}

static void start_regular(oa_sched_t *s)
{
    oa_error_t err;

    s->due_now = false;
    if (sched_start_query(s, true, &err) != 0)
        sched_finish_attempt(s, err.code, err.text, NULL, 0);
}

static void on_timer(uv_timer_t *t)
{
    oa_sched_t *s = oa_container_of(t, oa_sched_t, timer);

    s->timer_armed = false;
    if (s->follower)
        return;
    if (s->in_flight) {
        if (s->query_cancelled) {
            /* The cancelled query has not come back yet: query as soon as it has. */
            s->due_now = true;
            return;
        }
        /* A test query is in flight: it becomes this scheduled attempt rather than a second query. */
        s->due_now = false;
        s->query_regular = true;
        s->query_trigger = s->recovering ? TRIGGER_RECOVERY : TRIGGER_SCHEDULE;
        s->query_attempt = s->recovering ? s->recovery_tries + 1 : 0;
        return;
    }
    start_regular(s);
}

/* ---- the public functions ---- */

int oa_sched_new(uv_loop_t *loop, const oa_sched_options_t *opts, oa_sched_t **out)
{
    oa_sched_t *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return UV_ENOMEM;
    s->loop = loop;
    s->target = opts->target;
    s->time_scale = opts->time_scale > 0 ? opts->time_scale : 1.0;
    s->querier = opts->querier != NULL ? opts->querier : &real_querier;
    s->clock = opts->clock != NULL ? opts->clock : oa_sched_clock_real();
    if (opts->data_dir != NULL) {
        s->staple_path = oa_path_join(opts->data_dir, OA_STAPLE_FILE_NAME);
        if (s->staple_path == NULL) {
            free(s);
            return UV_ENOMEM;
        }
    }
    /* The defaults, so a test before any configuration has a response_timeout. */
    oa_conf_defaults(&s->conf);
    s->state = OA_STATE_DISABLED;
    uv_timer_init(loop, &s->timer);
    uv_timer_init(loop, &s->expiry);
    s->timer.data = s;
    s->expiry.data = s;
    sched_load_staple(s);
    *out = s;
    return 0;
}

void oa_sched_apply_conf(oa_sched_t *s, const oa_conf_t *conf)
{
    oa_conf_t old = s->conf;

    if (s->closing)
        return;
    s->conf = *conf;
    if (conf->ocsp_functionality && !s->enabled) {
        s->enabled = true;
        s->recovering = false;
        s->exhausted = false;
        s->recovery_tries = 0;
        s->state = s->have_cache ? OA_STATE_VALID : OA_STATE_PENDING;
        /* "At once" is the next loop iteration: the caller (an HTTP handler) finishes before the query starts. */
        s->due_now = true;
        sched_note_no_responder(s);
        sched_rearm(s);
    } else if (!conf->ocsp_functionality) {
        bool was_enabled = s->enabled;

        s->enabled = false;
        s->recovering = false;
        s->exhausted = false;
        s->recovery_tries = 0;
        s->due_now = false;
        s->state = OA_STATE_DISABLED;
        sched_rearm(s); /* stops the timer */
        /* Only the switch from enabled cancels: a change of frequencies while disabled leaves a test running. */
        if (was_enabled && s->in_flight && !s->query_cancelled) {
            /* The state is already final: the callback may come back at once or later, either way it is ignored. */
            s->query_cancelled = true;
            s->querier->cancel(s->query);
        }
    } else if (old.query_frequency != conf->query_frequency || old.recovery_frequency != conf->recovery_frequency) {
        sched_rearm(s);
    }
}

void oa_sched_snapshot(oa_sched_t *s, oa_sched_status_t *st)
{
    sched_expire_if_due(s);
    sched_snapshot_of(s, s->have_cache ? &s->cache : NULL, st);
}

void oa_sched_set_target(oa_sched_t *s, const oa_ocsp_target_t *target)
{
    waiter_t *w;

    if (s->closing)
        return;
    s->target = target;
    /* The query in flight asks about the old certificate: its answer must never land. Tests waiting for it are
     * detached, so that they are answered by the query started for the new certificate once it is
     * back (sched_kick). */
    for (w = s->waiters; w != NULL; w = w->next)
        w->attached = false;
    if (s->in_flight && !s->query_cancelled) {
        s->query_cancelled = true;
        s->querier->cancel(s->query);
    }
    /* Everything the schedule knew was about the old certificate: its response, its recovery, its errors. */
    sched_drop_cache(s, "the certificate was replaced");
    s->recovering = false;
    s->exhausted = false;
    s->recovery_tries = 0;
    s->consecutive_failures = 0;
    s->have_anchor = false;
    s->have_error = false;
    s->last_attempt = 0;
    s->last_attempt_ms = 0;
    s->last_success = 0;
    s->state = s->enabled ? OA_STATE_PENDING : OA_STATE_DISABLED;
    s->due_now = s->enabled;
    if (s->enabled)
        sched_note_no_responder(s);
    sched_rearm(s);
}

void oa_sched_close(oa_sched_t *s, void (*done)(void *arg), void *arg)
{
    waiter_t *w;

    if (s->closing)
        return;
    s->closing = true;
    s->done = done;
    s->done_arg = arg;
    /* Handles first: their pending closes keep s allocated through whatever the steps below call back. */
    timer_stop(s, &s->timer);
    timer_stop(s, &s->expiry);
    s->pending_closes += 2;
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->expiry, on_handle_closed);
    while ((w = s->waiters) != NULL) {
        sched_waiter_unlink(w);
        sched_waiter_answer(w, OA_E_OCSP_CANCELLED, "the agent is shutting down", NULL);
    }
    if (s->in_flight && !s->query_cancelled) {
        s->query_cancelled = true;
        s->querier->cancel(s->query);
    }
}
