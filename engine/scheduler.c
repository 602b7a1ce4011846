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
#include "oa_sched.h"

#define STAPLE_MAX_BYTES (1024 * 1024)
#define TEST_SAFETY_MARGIN_MS 5000
#define MIDPOINT_FLOOR_MS 1000
#define UNKNOWN_OUTCOME OA_SCHED_OUTCOME_UNKNOWN

typedef enum trigger_e { TRIGGER_SCHEDULE, TRIGGER_RECOVERY, TRIGGER_TEST } trigger_t;

static const char *const trigger_names[] = {"schedule", "recovery", "test"};

/* One caller of oa_sched_test, waiting for a query's answer. */
typedef struct waiter_s {
    oa_sched_t *sched;
    uv_timer_t safety;
    oa_sched_test_cb cb;
    void *data;
    bool attached; /* waits for the query in flight; otherwise for the next one to start */
    struct waiter_s *prev;
    struct waiter_s *next;
} waiter_t;

struct oa_sched_s {
    uv_loop_t *loop;
    const oa_ocsp_target_t *target;
    char *staple_path; /* NULL when there is no data directory */
    double time_scale;
    const oa_sched_querier_t *querier;
    const oa_sched_clock_t *clock;
    oa_conf_t conf;
    bool enabled;

    oa_sched_state_t state;
    bool recovering;   /* retrying every recovery_frequency */
    bool exhausted;    /* the retries ran out: invalidated until the next valid answer */
    int recovery_tries; /* failed retries in the current recovery */
    int consecutive_failures;

    oa_ocsp_result_t cache;
    bool have_cache;

    /* The query in flight, or the last one started. */
    bool in_flight;
    oa_ocsp_query_t *query;
    bool query_cancelled;
    bool query_regular; /* its answer counts for the schedule */
    trigger_t query_trigger;
    int query_attempt;  /* the retry number during recovery, else 0 */
    uint64_t query_start_mono;
    time_t query_start_wall;

    /* The schedule. */
    bool have_anchor;
    uint64_t anchor_mono; /* start of the last attempt that counted */
    bool due_now;         /* enabling asks for a query at once */
    uint64_t mid_due;     /* the midpoint query time for the cached response, 0 for none */
    bool timer_armed;
    uint64_t next_due;

    /* Operator fields. */
    time_t last_attempt;
    int64_t last_attempt_ms; /* the same, wall-clock ms, as shared with the cluster */
    time_t last_success;
    bool have_error;
    char last_error_code[64];
    char last_error[OA_ERROR_TEXT_MAX];

    /* Metrics: attempts by outcome. */
    uint64_t count_ok;
    uint64_t count_unknown;
    uint64_t count_err[OA_ERRCODE_COUNT];

    /* Cluster mode. */
    bool follower;
    oa_sched_result_hook result_hook;
    void *result_hook_data;
    oa_sched_state_hook state_hook;
    void *state_hook_data;
    oa_sched_staple_hook staple_hook;
    void *staple_hook_data;

    uv_timer_t timer;  /* the next query */
    uv_timer_t expiry; /* the cached response's nextUpdate */
    waiter_t *waiters;

    bool closing;
    int pending_closes;
    void (*done)(void *arg);
    void *done_arg;
};

static const oa_sched_querier_t real_querier = {oa_ocsp_query_start, oa_ocsp_query_cancel};

static void on_timer(uv_timer_t *t);
static void on_expiry(uv_timer_t *t);
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

static const char *responder_of(const oa_sched_t *s)
{
    if (s->target == NULL || s->target->responder_url == NULL)
        return "";
    return s->target->responder_url;
}

/* Tells the cluster (when it listens) what the schedule looks like now. */
static void notify_state(oa_sched_t *s)
{
    oa_sched_view_t v;

    if (s->state_hook == NULL || s->closing)
        return;
    oa_sched_view(s, &v);
    s->state_hook(s->state_hook_data, &v);
}

/* Every reading of the time and every timer goes through the clock. */
static uint64_t now_mono(const oa_sched_t *s)
{
    return s->clock->now_mono(s->clock, s->loop);
}

static int64_t now_wall_ms(const oa_sched_t *s)
{
    return s->clock->now_wall_ms(s->clock);
}

static time_t now_wall(const oa_sched_t *s)
{
    return s->clock->now_wall(s->clock);
}

static void timer_start(const oa_sched_t *s, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms)
{
    s->clock->timer_start(s->clock, t, cb, timeout_ms);
}

static void timer_stop(const oa_sched_t *s, uv_timer_t *t)
{
    s->clock->timer_stop(s->clock, t);
}

/* Without a responder URL there is nothing to schedule: every query would fail before it is sent. */
static bool has_responder(const oa_sched_t *s)
{
    return s->target != NULL && s->target->responder_url != NULL && s->target->responder_url[0] != '\0';
}

static uint64_t scaled_ms(const oa_sched_t *s, int seconds)
{
    double ms = (double)seconds * 1000.0 * s->time_scale;

    return ms < 1.0 ? 1 : (uint64_t)(ms + 0.5);
}

/* ---- the closing bookkeeping ---- */

static void maybe_finish(oa_sched_t *s)
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
    maybe_finish(s);
}

/* ---- waiters ---- */

static void waiter_unlink(waiter_t *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        w->sched->waiters = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

static void waiter_link(oa_sched_t *s, waiter_t *w)
{
    w->prev = NULL;
    w->next = s->waiters;
    if (s->waiters != NULL)
        s->waiters->prev = w;
    s->waiters = w;
}

static void on_waiter_closed(uv_handle_t *h)
{
    waiter_t *w = oa_container_of(h, waiter_t, safety);
    oa_sched_t *s = w->sched;

    free(w);
    s->pending_closes--;
    maybe_finish(s);
}

/* Answers an unlinked waiter and releases it. The callback may call back into the scheduler (even close it): the
 * scheduler stays allocated because the waiter's own close is still pending. */
static void waiter_answer(waiter_t *w, int err, const char *text, const oa_sched_status_t *status)
{
    oa_sched_t *s = w->sched;

    timer_stop(s, &w->safety);
    w->cb(w->data, err, text, status);
    s->pending_closes++;
    uv_close((uv_handle_t *)&w->safety, on_waiter_closed);
}

static void on_waiter_timeout(uv_timer_t *t)
{
    waiter_t *w = oa_container_of(t, waiter_t, safety);

    waiter_unlink(w);
    waiter_answer(w, OA_E_TASK_QUEUED_TOO_LONG, "no OCSP answer arrived within response_timeout + 5 seconds",
                  NULL);
}

/* ---- the cache and the staple file ---- */

static void arm_expiry(oa_sched_t *s)
{
    int64_t delay;

    timer_stop(s, &s->expiry);
    if (!s->have_cache || s->cache.next_update == 0 || s->closing)
        return;
    delay = (int64_t)s->cache.next_update * 1000 - now_wall_ms(s);
    timer_start(s, &s->expiry, on_expiry, delay > 0 ? (uint64_t)delay : 1);
}

/* Tells the staple's listener (the delivery) what is cached now. */
static void staple_changed(oa_sched_t *s)
{
    if (s->staple_hook != NULL && !s->closing)
        s->staple_hook(s->staple_hook_data, s->have_cache ? &s->cache : NULL);
}

static void remove_staple(oa_sched_t *s, const char *why)
{
    int rc;

    if (s->staple_path == NULL)
        return;
    rc = oa_file_remove(s->staple_path);
    if (rc != 0)
        OA_LOG(OA_LOG_ERROR, "staple_remove_failed", OA_KV_STR("path", s->staple_path),
               OA_KV_STR("reason", why), OA_KV_STR("error", uv_strerror(rc)));
}

static void drop_cache(oa_sched_t *s, const char *why)
{
    oa_ocsp_result_clear(&s->cache);
    s->have_cache = false;
    s->mid_due = 0;
    timer_stop(s, &s->expiry);
    /* The file goes even when nothing was cached in memory: it must never outlive the status it stands for. */
    remove_staple(s, why);
    staple_changed(s);
}

/* Drops the cached response once its nextUpdate has come (never serve it after). */
static void expire_if_due(oa_sched_t *s)
{
    char nu[OA_RFC1123_LEN];

    if (!s->have_cache || s->cache.next_update == 0 || now_wall(s) < s->cache.next_update)
        return;
    oa_time_rfc1123(s->cache.next_update, nu);
    drop_cache(s, "the cached response reached its nextUpdate");
    OA_LOG(OA_LOG_ERROR, "staple_expired", OA_KV_STR("responder", responder_of(s)), OA_KV_STR("next_update", nu),
           OA_KV_STR("state", oa_sched_state_name(s->state)));
    if (s->state == OA_STATE_VALID || s->state == OA_STATE_RECOVERING) {
        s->state = OA_STATE_INVALIDATED;
        notify_state(s);
    }
}

static void on_expiry(uv_timer_t *t)
{
    oa_sched_t *s = oa_container_of(t, oa_sched_t, expiry);

    expire_if_due(s);
    /* The wall clock may lag the loop's clock by a few milliseconds: if it is not time yet, look again shortly. */
    if (s->have_cache)
        arm_expiry(s);
}

/* The file first, then the delivery: a hook run for the change finds the new file in place. */
static void write_staple(oa_sched_t *s)
{
    int rc;

    if (s->staple_path != NULL && s->cache.der != NULL) {
        rc = oa_file_write_atomic(s->staple_path, s->cache.der, s->cache.der_len, 0644);
        if (rc != 0)
            OA_LOG(OA_LOG_ERROR, "staple_write_failed", OA_KV_STR("path", s->staple_path),
                   OA_KV_STR("error", uv_strerror(rc)));
    }
    staple_changed(s);
}

/* Re-verifies a staple left by an earlier run; one that no longer verifies or has expired is removed. */
static void load_staple(oa_sched_t *s)
{
    oa_buf_t buf;
    oa_ocsp_result_t res;
    oa_error_t err;
    time_t now = now_wall(s);
    int rc;

    oa_buf_init(&buf);
    memset(&res, 0, sizeof(res));
    oa_error_clear(&err);
    if (s->target == NULL || s->staple_path == NULL)
        goto out;
    rc = oa_file_read(s->staple_path, STAPLE_MAX_BYTES, &buf);
    if (rc == UV_ENOENT)
        goto out;
    if (rc != 0) {
        OA_LOG(OA_LOG_WARN, "staple_discarded", OA_KV_STR("path", s->staple_path),
               OA_KV_STR("reason", uv_strerror(rc)));
        remove_staple(s, "unreadable");
        goto out;
    }
    if (oa_ocsp_verify(s->target, (const unsigned char *)buf.data, buf.len, NULL, now, &res, &err) != 0) {
        OA_LOG(OA_LOG_WARN, "staple_discarded", OA_KV_STR("path", s->staple_path),
               OA_KV_STR("error_code", oa_errcode_name(err.code)), OA_KV_STR("reason", err.text));
        remove_staple(s, "did not verify");
        goto out;
    }
    /* Verification tolerates some clock skew; serving does not: a response past its nextUpdate is never served. */
    if (res.cert_status == OA_CERT_UNKNOWN || (res.next_update != 0 && res.next_update <= now)) {
        OA_LOG(OA_LOG_WARN, "staple_discarded", OA_KV_STR("path", s->staple_path),
               OA_KV_STR("reason", res.cert_status == OA_CERT_UNKNOWN ? "the response says UNKNOWN"
                                                                      : "the response is past its nextUpdate"));
        remove_staple(s, "expired");
        goto out;
    }
    s->cache = res;
    memset(&res, 0, sizeof(res));
    s->have_cache = true;
    s->state = OA_STATE_VALID;
    arm_expiry(s);
    OA_LOG(OA_LOG_INFO, "staple_loaded", OA_KV_STR("path", s->staple_path),
           OA_KV_STR("cert_status", oa_cert_status_name(s->cache.cert_status)));
out:
    oa_ocsp_result_clear(&res);
    oa_buf_free(&buf);
}

/* ---- the schedule ---- */

static void rearm(oa_sched_t *s)
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
static int start_query(oa_sched_t *s, bool regular, oa_error_t *err)
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

/* ---- results ---- */

static void set_last_error(oa_sched_t *s, const char *code, const char *text)
{
    s->have_error = true;
    snprintf(s->last_error_code, sizeof(s->last_error_code), "%s", code);
    snprintf(s->last_error, sizeof(s->last_error), "%s", text != NULL ? text : "");
}

/* Enabled without a responder URL: the status says why nothing is queried. */
static void note_no_responder(oa_sched_t *s)
{
    if (!has_responder(s))
        set_last_error(s, oa_errcode_name(OA_E_NO_RESPONDER_URL),
                       "the certificate has no OCSP URI in its AIA and no responder URL was configured");
}

static void anchor_attempt(oa_sched_t *s)
{
    s->have_anchor = true;
    s->anchor_mono = s->query_start_mono;
    s->last_attempt = s->query_start_wall;
    s->last_attempt_ms = now_wall_ms(s) - (int64_t)(now_mono(s) - s->query_start_mono);
}

static void invalidate(oa_sched_t *s)
{
    drop_cache(s, "the recovery retries ran out");
    s->state = OA_STATE_INVALIDATED;
    s->recovering = false;
    s->exhausted = true;
    OA_LOG(OA_LOG_ERROR, "ocsp_query_failed", OA_KV_STR("responder", responder_of(s)),
           OA_KV_STR("serial", s->target != NULL ? s->target->serial_hex : ""),
           OA_KV_INT("recovery_tries", s->recovery_tries), OA_KV_STR("error_code", s->last_error_code),
           OA_KV_STR("error", s->last_error));
}

static void apply_failure(oa_sched_t *s, const char *code, const char *text)
{
    anchor_attempt(s);
    s->consecutive_failures++;
    set_last_error(s, code, text);
    if (s->recovering) {
        s->recovery_tries++;
        if (s->recovery_tries >= s->conf.recovery_max_tries)
            invalidate(s);
    } else if (!s->exhausted) {
        /* The failure that starts recovery is not a retry: recovery_max_tries retries follow it. */
        s->recovering = true;
        s->recovery_tries = 0;
        if (s->have_cache || s->state != OA_STATE_INVALIDATED)
            s->state = OA_STATE_RECOVERING;
    }
}

/* The schedule once a valid response is in the cache, its staple written and its attempt anchored, whether this node
 * asked for it or the poller did: the state is valid again, recovery is over, the next query falls due at the
 * regular interval or at the midpoint to the response's nextUpdate (never sooner than 1 s after the anchor), and the
 * response expires at its nextUpdate. */
static void settle_valid(oa_sched_t *s)
{
    int64_t remaining_ms;
    uint64_t mid, floor_due;

    s->state = s->enabled ? OA_STATE_VALID : OA_STATE_DISABLED;
    s->recovering = false;
    s->exhausted = false;
    s->recovery_tries = 0;
    s->consecutive_failures = 0;
    s->mid_due = 0;
    if (s->cache.next_update != 0) {
        remaining_ms = (int64_t)s->cache.next_update * 1000 - now_wall_ms(s);
        mid = now_mono(s) + (remaining_ms > 0 ? (uint64_t)(remaining_ms / 2) : 0);
        floor_due = s->anchor_mono + MIDPOINT_FLOOR_MS;
        s->mid_due = mid > floor_due ? mid : floor_due;
    }
    arm_expiry(s);
}

/* The alert for a REVOKED response just cached; source, when not NULL, says where it came from. */
static void alert_revoked(oa_sched_t *s, const char *source)
{
    char rt[OA_RFC1123_LEN];
    const oa_ocsp_result_t *r = &s->cache;
    const oa_log_kv_t kv[] = {
        OA_KV_STR("serial", s->target != NULL ? s->target->serial_hex : ""),
        OA_KV_STR("subject", s->target != NULL ? s->target->subject : ""),
        OA_KV_STR("revocation_time", oa_time_rfc1123(r->revocation_time, rt)),
        OA_KV_STR("reason", r->revocation_reason >= 0 ? OCSP_crl_reason_str(r->revocation_reason) : ""),
        OA_KV_STR("responder", responder_of(s)),
        OA_KV_STR("source", source),
    };

    if (r->cert_status == OA_CERT_REVOKED && oa_log_enabled(OA_LOG_ERROR))
        oa_log_write(OA_LOG_ERROR, "ocsp_status_revoked", kv, OA_ARRAY_SIZE(kv) - (source == NULL));
}

static void apply_success(oa_sched_t *s, const oa_ocsp_result_t *res)
{
    oa_ocsp_result_t copy;

    if (oa_ocsp_result_copy(&copy, res) != 0) {
        apply_failure(s, oa_errcode_name(OA_E_NOMEM), "out of memory while caching the response");
        return;
    }
    oa_ocsp_result_clear(&s->cache);
    s->cache = copy;
    s->have_cache = true;
    write_staple(s);
    anchor_attempt(s);
    s->last_success = now_wall(s);
    settle_valid(s);

    if (s->result_hook != NULL)
        s->result_hook(s->result_hook_data, res);
    alert_revoked(s, NULL);
}

/* One line per attempt; n_kv grows with what is known. */
static void log_attempt(oa_sched_t *s, const char *result, const oa_ocsp_result_t *res, const char *errtext,
                        unsigned duration_ms, bool failed)
{
    oa_log_kv_t kv[10];
    size_t n = 0;
    char tu[OA_RFC1123_LEN], nu[OA_RFC1123_LEN];
    oa_log_level_t level = failed ? OA_LOG_WARN : OA_LOG_INFO;

    if (!oa_log_enabled(level))
        return;
    kv[n++] = OA_KV_STR("responder", responder_of(s));
    kv[n++] = OA_KV_STR("result", result);
    if (res != NULL) {
        kv[n++] = OA_KV_STR("cert_status", oa_cert_status_name(res->cert_status));
        kv[n++] = OA_KV_STR("this_update", oa_time_rfc1123(res->this_update, tu));
        if (res->next_update != 0)
            kv[n++] = OA_KV_STR("next_update", oa_time_rfc1123(res->next_update, nu));
    } else if (errtext != NULL) {
        kv[n++] = OA_KV_STR("error", errtext);
    }
    kv[n++] = OA_KV_INT("duration_ms", duration_ms);
    kv[n++] = OA_KV_STR("trigger", trigger_names[s->query_trigger]);
    if (s->query_trigger == TRIGGER_RECOVERY) {
        kv[n++] = OA_KV_INT("attempt", s->query_attempt);
        kv[n++] = OA_KV_INT("max", s->conf.recovery_max_tries);
    }
    oa_log_write(level, "ocsp_query", kv, n);
}

/* The snapshot for r (the cache, or a fresh answer), with the operator fields. */
static void snapshot_of(oa_sched_t *s, const oa_ocsp_result_t *r, oa_sched_status_t *st)
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

/* Answers every waiter attached to the query that just ended. They are moved to a list of their own first, so a
 * callback that asks for another test (and starts a new query) is not answered with this result. */
static void answer_attached(oa_sched_t *s, int err, const char *text, const oa_ocsp_result_t *res)
{
    waiter_t *list = NULL, *w, *next;
    oa_sched_status_t status;

    for (w = s->waiters; w != NULL; w = next) {
        next = w->next;
        if (!w->attached)
            continue;
        waiter_unlink(w);
        w->next = list;
        list = w;
    }
    if (list == NULL)
        return;
    if (err == 0)
        snapshot_of(s, res, &status);
    for (w = list; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        waiter_answer(w, err, text, err == 0 ? &status : NULL);
    }
}

/* Starts a query for tests that arrived while a cancelled query was still winding down. */
static void kick(oa_sched_t *s)
{
    oa_error_t err;
    waiter_t *w;

    if (s->closing || s->in_flight)
        return;
    for (w = s->waiters; w != NULL && w->attached; w = w->next)
        ;
    if (w == NULL)
        return;
    if (start_query(s, false, &err) != 0)
        answer_attached(s, err.code, err.text, NULL);
}

static void count_outcome(oa_sched_t *s, int err, bool unknown)
{
    if (err != 0)
        s->count_err[(unsigned)err < OA_ERRCODE_COUNT ? err : OA_E_INTERNAL]++;
    else if (unknown)
        s->count_unknown++;
    else
        s->count_ok++;
}

/* Everything that follows the end of an attempt, whether its callback fired or it could not start. */
static void finish_attempt(oa_sched_t *s, int err, const char *errtext, const oa_ocsp_result_t *res,
                           unsigned duration_ms)
{
    bool cancelled = s->query_cancelled, ok, unknown;
    const char *code;

    s->query_cancelled = false;
    if (s->closing) {
        maybe_finish(s);
        return;
    }
    if (err == 0 && res == NULL) {
        err = OA_E_INTERNAL;
        errtext = "the OCSP engine reported success without a result";
    }
    if (cancelled || err == OA_E_OCSP_CANCELLED) {
        /* OCSP was disabled while this query was in flight: its outcome must not touch the state. */
        count_outcome(s, OA_E_OCSP_CANCELLED, false);
        log_attempt(s, oa_errcode_name(OA_E_OCSP_CANCELLED), NULL, errtext, duration_ms, false);
        answer_attached(s, OA_E_OCSP_CANCELLED, "the OCSP query was cancelled because OCSP was disabled", NULL);
    } else {
        unknown = err == 0 && res->cert_status == OA_CERT_UNKNOWN;
        ok = err == 0 && !unknown;
        code = err != 0 ? oa_errcode_name((oa_errcode_t)err) : unknown ? UNKNOWN_OUTCOME : "ok";
        count_outcome(s, err, unknown);
        log_attempt(s, code, err == 0 ? res : NULL, errtext, duration_ms, !ok);
        if (ok && (s->query_regular || s->enabled)) {
            apply_success(s, res);
            notify_state(s);
        } else if (!ok && s->query_regular) {
            apply_failure(s, code, unknown ? "responder answered UNKNOWN" : errtext);
            notify_state(s);
        }
        answer_attached(s, err, errtext, err == 0 ? res : NULL);
    }
    if (s->closing)
        return; /* a waiter's callback closed the scheduler */
    kick(s);
    rearm(s);
}

static void on_query_done(oa_ocsp_query_t *q, int err, const char *errtext, const oa_ocsp_result_t *res,
                          unsigned duration_ms, void *data)
{
    oa_sched_t *s = data;

    (void)q;
    s->in_flight = false;
    s->query = NULL;
    finish_attempt(s, err, errtext, res, duration_ms);
}

static void start_regular(oa_sched_t *s)
{
    oa_error_t err;

    s->due_now = false;
    if (start_query(s, true, &err) != 0)
        finish_attempt(s, err.code, err.text, NULL, 0);
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
    load_staple(s);
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
        note_no_responder(s);
        rearm(s);
    } else if (!conf->ocsp_functionality) {
        bool was_enabled = s->enabled;

        s->enabled = false;
        s->recovering = false;
        s->exhausted = false;
        s->recovery_tries = 0;
        s->due_now = false;
        s->state = OA_STATE_DISABLED;
        rearm(s); /* stops the timer */
        /* Only the switch from enabled cancels: a change of frequencies while disabled leaves a test running. */
        if (was_enabled && s->in_flight && !s->query_cancelled) {
            /* The state is already final: the callback may come back at once or later, either way it is ignored. */
            s->query_cancelled = true;
            s->querier->cancel(s->query);
        }
    } else if (old.query_frequency != conf->query_frequency || old.recovery_frequency != conf->recovery_frequency) {
        rearm(s);
    }
}

void oa_sched_snapshot(oa_sched_t *s, oa_sched_status_t *st)
{
    expire_if_due(s);
    snapshot_of(s, s->have_cache ? &s->cache : NULL, st);
}

int oa_sched_test(oa_sched_t *s, oa_sched_test_cb cb, void *data, oa_error_t *err)
{
    waiter_t *w;

    if (s->closing)
        return oa_error_set(err, OA_E_OCSP_CANCELLED, "the agent is shutting down");
    if (s->target == NULL || s->target->responder_url == NULL || s->target->responder_url[0] == '\0')
        return oa_error_set(err, OA_E_NO_RESPONDER_URL,
                            "there is no OCSP responder URL: the certificate has none and none was configured");
    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    w->sched = s;
    w->cb = cb;
    w->data = data;
    if (s->in_flight) {
        /* A cancelled query's answer is of no use: wait for the query started once it is back. */
        w->attached = !s->query_cancelled;
    } else {
        if (start_query(s, false, err) != 0) {
            free(w);
            return -1;
        }
        w->attached = true;
    }
    uv_timer_init(s->loop, &w->safety);
    timer_start(s, &w->safety, on_waiter_timeout, (uint64_t)s->conf.response_timeout * 1000 + TEST_SAFETY_MARGIN_MS);
    waiter_link(s, w);
    return 0;
}

void oa_sched_set_result_hook(oa_sched_t *s, oa_sched_result_hook hook, void *data)
{
    s->result_hook = hook;
    s->result_hook_data = data;
}

void oa_sched_set_follower(oa_sched_t *s, bool follower)
{
    if (s->follower == follower || s->closing)
        return;
    s->follower = follower;
    rearm(s);
}

void oa_sched_set_target(oa_sched_t *s, const oa_ocsp_target_t *target)
{
    waiter_t *w;

    if (s->closing)
        return;
    s->target = target;
    /* The query in flight asks about the old certificate: its answer must never land. Tests waiting for it are
     * detached, so that they are answered by the query started for the new certificate once it is back (kick). */
    for (w = s->waiters; w != NULL; w = w->next)
        w->attached = false;
    if (s->in_flight && !s->query_cancelled) {
        s->query_cancelled = true;
        s->querier->cancel(s->query);
    }
    /* Everything the schedule knew was about the old certificate: its response, its recovery, its errors. */
    drop_cache(s, "the certificate was replaced");
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
        note_no_responder(s);
    rearm(s);
}

/* Anchors the schedule on an attempt another node started at at_ms (wall clock, ms), as if it had been this node's:
 * that many milliseconds before now on the monotonic clock. */
static void anchor_remote(oa_sched_t *s, int64_t at_ms)
{
    int64_t age_ms = now_wall_ms(s) - at_ms;
    uint64_t mono = now_mono(s);

    if (age_ms < 0)
        age_ms = 0;
    s->have_anchor = true;
    s->anchor_mono = (uint64_t)age_ms < mono ? mono - (uint64_t)age_ms : 0;
    s->last_attempt = (time_t)(at_ms / 1000);
    s->last_attempt_ms = at_ms;
    s->due_now = false;
}

int oa_sched_apply_remote(oa_sched_t *s, const unsigned char *der, size_t len, int64_t at_ms, oa_error_t *err)
{
    oa_ocsp_result_t res;
    time_t now = now_wall(s);

    if (s->closing)
        return oa_error_set(err, OA_E_OCSP_CANCELLED, "the agent is shutting down");
    if (s->target == NULL)
        return oa_error_set(err, OA_E_NO_RESPONDER_URL, "this node watches no certificate");
    if (s->have_cache && s->cache.der_len == len && memcmp(s->cache.der, der, len) == 0)
        return 1;
    memset(&res, 0, sizeof(res));
    if (oa_ocsp_verify(s->target, der, len, NULL, now, &res, err) != 0)
        return -1;
    if (res.cert_status == OA_CERT_UNKNOWN || (res.next_update != 0 && res.next_update <= now)) {
        oa_ocsp_result_clear(&res);
        return oa_error_set(err, OA_E_OCSP_EXPIRED, "the shared response says UNKNOWN or is past its nextUpdate");
    }
    oa_ocsp_result_clear(&s->cache);
    s->cache = res;
    s->have_cache = true;
    write_staple(s);
    /* The schedule runs from when the poller asked, so a takeover keeps the cluster's cadence. */
    anchor_remote(s, at_ms);
    s->last_success = s->last_attempt;
    settle_valid(s);
    rearm(s);
    alert_revoked(s, "cluster");
    return 0;
}

void oa_sched_view(const oa_sched_t *s, oa_sched_view_t *v)
{
    v->state = s->state;
    v->recovering = s->recovering;
    v->consecutive_failures = s->consecutive_failures;
    v->recovery_tries = s->recovery_tries;
    v->last_attempt_ms = s->last_attempt != 0 ? s->last_attempt_ms : 0;
    v->last_error_code = s->have_error ? s->last_error_code : "";
    v->last_error = s->have_error ? s->last_error : "";
}

void oa_sched_set_state_hook(oa_sched_t *s, oa_sched_state_hook hook, void *data)
{
    s->state_hook = hook;
    s->state_hook_data = data;
}

void oa_sched_set_staple_hook(oa_sched_t *s, oa_sched_staple_hook hook, void *data)
{
    s->staple_hook = hook;
    s->staple_hook_data = data;
    staple_changed(s);
}

int oa_sched_apply_remote_state(oa_sched_t *s, const oa_sched_view_t *v, oa_error_t *err)
{
    if (s->closing)
        return oa_error_set(err, OA_E_OCSP_CANCELLED, "the agent is shutting down");
    if (v->state != OA_STATE_PENDING && v->state != OA_STATE_VALID && v->state != OA_STATE_RECOVERING &&
        v->state != OA_STATE_INVALIDATED)
        return oa_error_set(err, OA_E_INVALID_SCHEMA, "the shared state \"%s\" is not one a poller reports",
                            oa_sched_state_name(v->state));
    /* The poller gave up on the response: serving it here, or leaving its staple for a TLS server, would show
     * a status the cluster no longer stands behind. */
    if (v->state == OA_STATE_INVALIDATED)
        drop_cache(s, "the cluster's poller invalidated the status");
    if (s->enabled) {
        if (v->state == OA_STATE_RECOVERING || v->state == OA_STATE_INVALIDATED)
            s->state = v->state;
        else if (s->have_cache)
            s->state = OA_STATE_VALID;
        else if (v->state == OA_STATE_PENDING)
            s->state = OA_STATE_PENDING;
        /* "valid" while nothing is cached here (this node refused the response): the state keeps saying what
         * this node serves. */
    }
    s->recovering = v->recovering;
    s->exhausted = v->state == OA_STATE_INVALIDATED && !v->recovering;
    s->recovery_tries = v->recovery_tries;
    s->consecutive_failures = v->consecutive_failures;
    if (v->last_error_code != NULL && v->last_error_code[0] != '\0')
        set_last_error(s, v->last_error_code, v->last_error);
    /* Anchored like a remote response: a follower that takes over retries on the poller's cadence. */
    if (v->last_attempt_ms > 0)
        anchor_remote(s, v->last_attempt_ms);
    rearm(s);
    return 0;
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
        waiter_unlink(w);
        waiter_answer(w, OA_E_OCSP_CANCELLED, "the agent is shutting down", NULL);
    }
    if (s->in_flight && !s->query_cancelled) {
        s->query_cancelled = true;
        s->querier->cancel(s->query);
    }
}
