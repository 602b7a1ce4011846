/*
 * The querying engine's schedule (API.md section 4): when to query, what a result does to the cached status, the
 * staple file, recovery and invalidation, explicit tests, and the snapshot of its status that the API renders as
 * the status object and the metrics (the engine formats neither).
 *
 * Timers run on the monotonic clock (uv_now); timestamps shown to operators are wall-clock. --time-scale multiplies
 * query_frequency and recovery_frequency (never response_timeout). Never more than one query in flight. Both clocks
 * are read, and every timer armed, only through an oa_sched_clock_t (oa_sched_clock.h), so a test can drive time.
 */
#ifndef OA_SCHED_H
#define OA_SCHED_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "oa_conf.h"
#include "oa_error.h"
#include "oa_ocsp.h"
#include "oa_sched_clock.h"
#include "oa_util.h"

typedef enum oa_sched_state_e {
    OA_STATE_DISABLED,    /* OCSP off; a still-valid cached response keeps being served until its nextUpdate */
    OA_STATE_PENDING,     /* enabled, first answer not in yet */
    OA_STATE_VALID,       /* a verified GOOD/REVOKED response is cached and current */
    OA_STATE_RECOVERING,  /* the last query failed (or said UNKNOWN); retrying every recovery_frequency */
    OA_STATE_INVALIDATED, /* recovery_max_tries retries failed, or the cached response expired while recovering */
} oa_sched_state_t;

const char *oa_sched_state_name(oa_sched_state_t s); /* "disabled", ... */

/* How the scheduler starts and cancels a query: oa_ocsp_query_start/oa_ocsp_query_cancel, or a test's fake. */
typedef struct oa_sched_querier_s {
    int (*start)(uv_loop_t *loop, const oa_ocsp_target_t *t, const oa_ocsp_query_opts_t *opts, oa_ocsp_query_cb cb,
                 void *data, oa_ocsp_query_t **out, oa_error_t *err);
    void (*cancel)(oa_ocsp_query_t *q);
} oa_sched_querier_t;

typedef struct oa_sched_options_s {
    const oa_ocsp_target_t *target;   /* borrowed, outlives the scheduler (or oa_sched_set_target's next call);
                                       * NULL when the agent has no --cert */
    const char *data_dir;             /* where ocsp.der lives; copied */
    double time_scale;                /* 1 in production */
    const oa_sched_querier_t *querier; /* NULL: the real engine */
    const oa_sched_clock_t *clock;     /* borrowed, outlives the scheduler; NULL: oa_sched_clock_real() */
} oa_sched_options_t;

typedef struct oa_sched_s oa_sched_t;

/*
 * Creates the scheduler in the DISABLED state and loads <data_dir>/ocsp.der if present: re-verified against the
 * target (signature, CertID, times), it becomes the cached status (VALID); otherwise it is removed with a log line.
 * Nothing is queried until oa_sched_apply_conf. Returns 0 with *out set, or a negative UV_E*.
 */
int oa_sched_new(uv_loop_t *loop, const oa_sched_options_t *opts, oa_sched_t **out);

/* Applies a configuration (at start-up and after every accepted PUT): enabling queries at once, disabling cancels a
 * query in flight and stops the schedule, a changed frequency reschedules the next query from the last attempt.
 * Without a responder URL nothing is scheduled, and enabling sets last_error_code "no_responder_url". */
void oa_sched_apply_conf(oa_sched_t *s, const oa_conf_t *conf);

/* The outcome that counts a verified UNKNOWN answer, apart from the error codes: in the log line, the metrics'
 * result label and last_error_code. */
#define OA_SCHED_OUTCOME_UNKNOWN "cert_status_unknown"

/*
 * A plain copy of what GET /v1/ocsp/status, a test's answer and the metrics show; the API renders it. It is not
 * oa_sched_view_t, the part of the schedule a poller shares: the status adds the response, the counters and the
 * times an operator reads, and it owns copies of its strings so that every waiter of a test gets the same answer
 * whatever the callbacks before it did. Only responder_url is borrowed (from the target, which outlives s).
 */
typedef struct oa_sched_status_s {
    oa_sched_state_t state;
    const char *responder_url; /* "" when there is none */
    bool have_response;        /* the cached response (or a test's fresh answer) is in response */
    oa_ocsp_result_t response; /* its parsed fields; der is always NULL: the snapshot holds no bytes */
    time_t last_attempt;       /* wall clock of the last attempt that counted, 0 for none */
    time_t last_success;       /* wall clock of the last valid answer, 0 for none */
    time_t next_query;         /* wall clock of the next scheduled query, 0 when none is scheduled */
    time_t taken_at;           /* wall clock when the snapshot was taken, for the response's remaining life */
    bool have_error;           /* the most recent failure, kept after a success (consecutive_failures says so) */
    char last_error_code[64];
    char last_error[OA_ERROR_TEXT_MAX];
    int consecutive_failures;
    int recovery_tries;
    int recovery_max_tries;
    /* Every attempt by outcome, tests included: valid GOOD/REVOKED, verified UNKNOWN, and failures by error code
     * (index OA_OK stays 0). */
    uint64_t queries_ok;
    uint64_t queries_unknown;
    uint64_t queries_failed[OA_ERRCODE_COUNT];
} oa_sched_status_t;

/* Fills st with the status as it is now: the cached response, if any, and the operator fields. A cached response
 * past its nextUpdate is dropped first (its staple removed), so a snapshot never shows an expired one. */
void oa_sched_snapshot(oa_sched_t *s, oa_sched_status_t *st);

/* Fires once per oa_sched_test that returned 0: err 0 with status (borrowed for the call: the snapshot with the
 * fresh answer as its response), or an OA_E_* code (the query's failure, OA_E_TASK_QUEUED_TOO_LONG) with text. */
typedef void (*oa_sched_test_cb)(void *data, int err, const char *text, const oa_sched_status_t *status);

/*
 * POST /v1/ocsp/test: queries now, even while disabled; joins the query in flight if there is one. A GOOD/REVOKED
 * answer updates the cache only while OCSP is enabled; a failure or UNKNOWN changes neither cache nor schedule.
 * Gives up with OA_E_TASK_QUEUED_TOO_LONG after response_timeout + 5 s. Returns 0 (cb will fire), or -1 with err
 * filled when it cannot start (OA_E_NO_RESPONDER_URL).
 */
int oa_sched_test(oa_sched_t *s, oa_sched_test_cb cb, void *data, oa_error_t *err);

/* Fires whenever the cached response changes: res (borrowed for the call) is the response now cached and written
 * to the staple file, or NULL when the cache was dropped and the file removed (invalidation, expiry). Setting the
 * hook fires it once at once with what is cached (a staple reloaded at start-up, or NULL). */
typedef void (*oa_sched_staple_hook)(void *data, const oa_ocsp_result_t *res);
void oa_sched_set_staple_hook(oa_sched_t *s, oa_sched_staple_hook hook, void *data);

/*
 * Makes target (borrowed, like opts->target: it must outlive the scheduler or the next call) the certificate asked
 * about, when it has another CertID than the one before (the daemon compares). The old certificate's query in
 * flight is cancelled and its answer ignored; tests waiting for it wait for a query about the new certificate
 * instead. The cached response is dropped and the staple file removed (the staple hook fires with NULL); recovery,
 * the last attempt, success and error are forgotten. The state becomes "pending" while OCSP is enabled (queried at
 * the next loop iteration) or "disabled". A target without a responder URL is never queried: last_error_code reads
 * "no_responder_url" and nothing is scheduled until another target arrives. The old target may be freed once this
 * returns: a cancelled query never touches its target again.
 */
void oa_sched_set_target(oa_sched_t *s, const oa_ocsp_target_t *target);

/* Current state, for tests and logs. */
oa_sched_state_t oa_sched_state(const oa_sched_t *s);

/* ---- Cluster mode (oa_cluster.h): one node queries, the others follow. ---- */

/* Fires after every valid GOOD/REVOKED answer this scheduler put in its cache (a scheduled query, or a test while
 * enabled), never for one applied with oa_sched_apply_remote. res is borrowed for the call. */
typedef void (*oa_sched_result_hook)(void *data, const oa_ocsp_result_t *res);
void oa_sched_set_result_hook(oa_sched_t *s, oa_sched_result_hook hook, void *data);

/* A follower never starts a scheduled query (tests still run); a poller, the default, schedules as described
 * above. Switching to poller schedules the next query from the last answer, local or remote: at once when it is
 * already due. A regular query in flight when switching to follower completes normally. */
void oa_sched_set_follower(oa_sched_t *s, bool follower);

/* What oa_sched_apply_remote did with a response. */
typedef enum oa_sched_remote_e {
    OA_SCHED_REMOTE_APPLIED, /* verified, cached, its staple written and the schedule anchored */
    OA_SCHED_REMOTE_IGNORED, /* it is the response already cached: nothing changes */
    OA_SCHED_REMOTE_REFUSED, /* err is filled (closing, no certificate, not verified, UNKNOWN, expired); nothing
                              * changes */
} oa_sched_remote_t;

/*
 * Puts a response obtained by another node (at at_ms, wall clock) in the cache: verifies it (oa_ocsp_verify,
 * without a nonce), refuses UNKNOWN and expired ones, writes the staple file, and anchors the schedule on at_ms so
 * that a follower which becomes the poller continues the same cadence. Returns what it did (oa_sched_remote_t).
 */
oa_sched_remote_t oa_sched_apply_remote(oa_sched_t *s, const unsigned char *der, size_t len, int64_t at_ms, oa_error_t *err);

/*
 * The schedule's state as the poller shares it with the followers: what GET /v1/ocsp/status shows besides the
 * response itself. recovering says whether retries continue at recovery_frequency (it can be true while the state
 * reads "invalidated", after the cached response expired during recovery). Strings are borrowed: "" when there is
 * no error yet. last_attempt_ms is wall-clock milliseconds, 0 when nothing was attempted.
 */
typedef struct oa_sched_view_s {
    oa_sched_state_t state;
    bool recovering;
    int consecutive_failures;
    int recovery_tries;
    int64_t last_attempt_ms;
    const char *last_error_code;
    const char *last_error;
} oa_sched_view_t;

/* Fills v with s's current view; the strings point into s and stay valid until its next change. */
void oa_sched_view(const oa_sched_t *s, oa_sched_view_t *v);

/* Fires after every attempt that counted for the schedule (a scheduled query, or a test while enabled whose valid
 * answer was cached), after the result hook when there is one, and when the cached response expired and the state
 * became "invalidated". v is borrowed for the call. Never fires for oa_sched_apply_remote_state. */
typedef void (*oa_sched_state_hook)(void *data, const oa_sched_view_t *v);
void oa_sched_set_state_hook(oa_sched_t *s, oa_sched_state_hook hook, void *data);

/*
 * Takes the poller's view v (from another node) as this node's own. "invalidated" drops the cached response and
 * removes the staple file, whatever is cached here, because the poller no longer stands behind it; "valid" is
 * shown only while a response is cached (the response itself arrives with oa_sched_apply_remote); "recovering"
 * and "pending" are taken as they are. The operator fields are copied, the recovery flags too (so a follower that
 * becomes the poller carries on the same recovery), and the schedule is anchored on last_attempt_ms. While OCSP is
 * disabled here the state stays "disabled" (an invalidation still drops the cache). Returns 0 when applied, or -1
 * with err filled (a "disabled" view or a closing scheduler; nothing changes).
 */
int oa_sched_apply_remote_state(oa_sched_t *s, const oa_sched_view_t *v, oa_error_t *err);

/* Cancels everything, answers pending tests with OA_E_OCSP_CANCELLED, closes the timers; done fires once all is
 * closed and s is freed. */
void oa_sched_close(oa_sched_t *s, void (*done)(void *arg), void *arg);

#endif
