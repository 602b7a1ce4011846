/*
 * A manual clock for the suites: an oa_sched_clock_t whose time moves only when the test says so.
 *
 * oa_testclock_advance moves the monotonic and the wall clock forward together and fires the timers that fall due
 * on the way, in the order libuv would (by due time, then by the order they were armed), each with the clock set to
 * its due time. Nothing sleeps, so a test of an hour-long schedule runs in microseconds and can assert times to the
 * millisecond. Timers are the caller's uv_timer_t handles: they stay initialised and closed on the real loop (so
 * close callbacks and uv_loop_close work as usual), but this clock arms them instead of libuv; stop one before
 * closing it. A misuse (too many armed timers, time going backwards, advancing from inside a callback, a timer
 * closed or armed while closing) aborts.
 */
#ifndef OA_TESTCLOCK_H
#define OA_TESTCLOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "oa_sched_clock.h"

#define OA_TESTCLOCK_MAX_TIMERS 64
#define OA_TESTCLOCK_MONO_START 1000000 /* the monotonic time after oa_testclock_init, ms (uv_now is never 0) */

typedef struct oa_testclock_timer_s {
    uv_timer_t *handle;
    uv_timer_cb cb;
    uint64_t due;
    uint64_t seq; /* arming order: of two timers due at once, the first armed fires first */
} oa_testclock_timer_t;

typedef struct oa_testclock_s {
    oa_sched_clock_t clock; /* give &clk.clock to the code under test (oa_sched_options_t.clock) */
    uv_loop_t *loop;
    uint64_t mono;
    int64_t wall_ms;
    uint64_t seq;
    bool advancing;
    int n_armed;
    oa_testclock_timer_t armed[OA_TESTCLOCK_MAX_TIMERS];
} oa_testclock_t;

/* Sets c up on loop (which runs the close callbacks): monotonic time OA_TESTCLOCK_MONO_START, wall clock the real
 * time rounded down to a whole second (so that responses signed now by testpki.h verify), no timer armed. */
void oa_testclock_init(oa_testclock_t *c, uv_loop_t *loop);

/* The clock's readings: monotonic ms, wall-clock ms, wall-clock seconds (rounded down, as time() is). */
uint64_t oa_testclock_now(const oa_testclock_t *c);
int64_t oa_testclock_wall_ms(const oa_testclock_t *c);
time_t oa_testclock_wall(const oa_testclock_t *c);

/*
 * Moves time forward by ms (to the monotonic time mono) and fires every timer due by then, including those that
 * callbacks arm on the way and that fall due in time. The timers of one instant fire together, then the loop runs
 * once without blocking (close callbacks, finished requests), as between two libuv loop iterations; it runs once
 * more at the end. 0 fires what is due now.
 */
void oa_testclock_advance(oa_testclock_t *c, uint64_t ms);
void oa_testclock_advance_to(oa_testclock_t *c, uint64_t mono);

/* Steps the wall clock alone by delta_ms (an NTP step): monotonic time and armed timers are unaffected. */
void oa_testclock_step_wall(oa_testclock_t *c, int64_t delta_ms);

/* Arms t to fire cb timeout_ms from now (re-arming it if armed), or disarms it (nothing when it is not armed): what
 * the code under test does through c->clock, for the test's own fakes. Both return 0. */
int oa_testclock_timer_start(oa_testclock_t *c, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms);
int oa_testclock_timer_stop(oa_testclock_t *c, uv_timer_t *t);

/* How many timers are armed. */
int oa_testclock_armed(const oa_testclock_t *c);

#endif
