/*
 * What the scheduler's files share (scheduler.c the schedule and its life cycle, sched_result.c what an attempt's end
 * does, sched_staple.c the cache and the staple file, sched_test.c explicit tests, sched_remote.c cluster mode):
 * the scheduler's struct and the helpers one file calls in another. Not a public header: nothing outside engine/
 * includes it.
 */
#ifndef OA_SCHED_INTERNAL_H
#define OA_SCHED_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "oa_sched.h"

typedef enum trigger_e { TRIGGER_SCHEDULE, TRIGGER_RECOVERY, TRIGGER_TEST } trigger_t;

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

/* The responder asked, "" when there is none. */
static inline const char *responder_of(const oa_sched_t *s)
{
    if (s->target == NULL || s->target->responder_url == NULL)
        return "";
    return s->target->responder_url;
}

/* Every reading of the time and every timer goes through the clock. */
static inline uint64_t now_mono(const oa_sched_t *s)
{
    return s->clock->now_mono(s->clock, s->loop);
}

static inline int64_t now_wall_ms(const oa_sched_t *s)
{
    return s->clock->now_wall_ms(s->clock);
}

static inline time_t now_wall(const oa_sched_t *s)
{
    return s->clock->now_wall(s->clock);
}

static inline void timer_start(const oa_sched_t *s, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms)
{
    s->clock->timer_start(s->clock, t, cb, timeout_ms);
}

static inline void timer_stop(const oa_sched_t *s, uv_timer_t *t)
{
    s->clock->timer_stop(s->clock, t);
}

/* Without a responder URL there is nothing to schedule: every query would fail before it is sent. */
static inline bool has_responder(const oa_sched_t *s)
{
    return s->target != NULL && s->target->responder_url != NULL && s->target->responder_url[0] != '\0';
}

/* scheduler.c: closing, the schedule, queries, the snapshot. */
void sched_maybe_finish(oa_sched_t *s);
void sched_rearm(oa_sched_t *s);
void sched_snapshot_of(oa_sched_t *s, const oa_ocsp_result_t *r, oa_sched_status_t *st);
int sched_start_query(oa_sched_t *s, bool regular, oa_error_t *err);

/* sched_result.c: results. */
void sched_alert_revoked(oa_sched_t *s, const char *source);
void sched_finish_attempt(oa_sched_t *s, int err, const char *errtext, const oa_ocsp_result_t *res,
                          unsigned duration_ms);
void sched_note_no_responder(oa_sched_t *s);
void sched_set_last_error(oa_sched_t *s, const char *code, const char *text);
void sched_settle_valid(oa_sched_t *s);

/* sched_staple.c: the cache and the staple file. */
void sched_arm_expiry(oa_sched_t *s);
void sched_drop_cache(oa_sched_t *s, const char *why);
void sched_expire_if_due(oa_sched_t *s);
void sched_load_staple(oa_sched_t *s);
void sched_write_staple(oa_sched_t *s);

/* sched_test.c: waiters of explicit tests. */
void sched_answer_attached(oa_sched_t *s, int err, const char *text, const oa_ocsp_result_t *res);
void sched_kick(oa_sched_t *s);
void sched_waiter_answer(waiter_t *w, int err, const char *text, const oa_sched_status_t *status);
void sched_waiter_unlink(waiter_t *w);

/* sched_remote.c: cluster mode. */
void sched_notify_state(oa_sched_t *s);

#endif
