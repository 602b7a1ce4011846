/*
 * The scheduler's real clock (oa_sched_clock.h): the readings and timers the scheduler used directly before a test
 * could replace them.
 */
#include "oa_sched_clock.h"
#include "oa_util.h"

static uint64_t real_now_mono(const oa_sched_clock_t *c, uv_loop_t *loop)
{
    (void)c;
    return uv_now(loop);
}

static int64_t real_now_wall_ms(const oa_sched_clock_t *c)
{
    (void)c;
    return oa_time_now_ms();
}

static time_t real_now_wall(const oa_sched_clock_t *c)
{
    (void)c;
    return time(NULL);
}

static int real_timer_start(const oa_sched_clock_t *c, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms)
{
    (void)c;
    return uv_timer_start(t, cb, timeout_ms, 0);
}

static int real_timer_stop(const oa_sched_clock_t *c, uv_timer_t *t)
{
    (void)c;
    return uv_timer_stop(t);
}

static const oa_sched_clock_t real_clock = {real_now_mono,    real_now_wall_ms, real_now_wall,
                                            real_timer_start, real_timer_stop,  NULL};

const oa_sched_clock_t *oa_sched_clock_real(void)
{
    return &real_clock;
}
