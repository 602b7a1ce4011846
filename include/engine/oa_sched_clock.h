/*
 * Where the scheduler reads the time and how it arms its timers (oa_sched_options_t.clock): the real clock, or a
 * manual one that a test moves by hand (tests/support/testclock.h), so that an hour-long schedule can be checked to
 * the millisecond without waiting for it.
 *
 * The timers are uv_timer_t handles the scheduler owns: it initialises them on its loop and closes them itself
 * (uv_close), always after timer_stop. The clock only arms and disarms them: timer_start on an armed timer re-arms
 * it, timer_stop on an idle one does nothing, and cb fires once (no repeat), on the loop, with the handle.
 */
#ifndef OA_SCHED_CLOCK_H
#define OA_SCHED_CLOCK_H

#include <stdint.h>
#include <time.h>
#include <uv.h>

typedef struct oa_sched_clock_s oa_sched_clock_t;
struct oa_sched_clock_s {
    uint64_t (*now_mono)(const oa_sched_clock_t *c, uv_loop_t *loop); /* monotonic ms: uv_now(loop) */
    int64_t (*now_wall_ms)(const oa_sched_clock_t *c);                /* wall-clock ms: oa_time_now_ms() */
    time_t (*now_wall)(const oa_sched_clock_t *c);                    /* wall-clock seconds: time(NULL) */
    /* Fires cb timeout_ms after now_mono: uv_timer_start(t, cb, timeout_ms, 0). Returns 0 or a negative UV_E*. */
    int (*timer_start)(const oa_sched_clock_t *c, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms);
    int (*timer_stop)(const oa_sched_clock_t *c, uv_timer_t *t); /* uv_timer_stop(t) */
    void *data; /* the implementation's own state; NULL for the real clock */
};

/* The real clock: the loop's time (uv_now), the wall clock (oa_time_now_ms, time) and libuv's timers. Static: it is
 * never freed and can be shared by any number of schedulers. */
const oa_sched_clock_t *oa_sched_clock_real(void);

#endif
