/*
 * A manual clock for the suites (testclock.h). The armed timers are a small unsorted array: the suites arm a handful
 * at a time, and a linear scan keeps the firing order plain to read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_util.h"
#include "testclock.h"

static void misuse(const char *what)
{
    fprintf(stderr, "testclock: %s\n", what);
    abort();
}

static oa_testclock_t *clock_of(const oa_sched_clock_t *sc)
{
    return sc->data;
}

static uint64_t clock_now_mono(const oa_sched_clock_t *sc, uv_loop_t *loop)
{
    (void)loop;
    return clock_of(sc)->mono;
}

static int64_t clock_now_wall_ms(const oa_sched_clock_t *sc)
{
    return clock_of(sc)->wall_ms;
}

static time_t clock_now_wall(const oa_sched_clock_t *sc)
{
    return oa_testclock_wall(clock_of(sc));
}

static int clock_timer_start(const oa_sched_clock_t *sc, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms)
{
    return oa_testclock_timer_start(clock_of(sc), t, cb, timeout_ms);
}

static int clock_timer_stop(const oa_sched_clock_t *sc, uv_timer_t *t)
{
    return oa_testclock_timer_stop(clock_of(sc), t);
}

void oa_testclock_init(oa_testclock_t *c, uv_loop_t *loop)
{
    memset(c, 0, sizeof(*c));
    c->clock = (oa_sched_clock_t){clock_now_mono, clock_now_wall_ms, clock_now_wall, clock_timer_start,
                                  clock_timer_stop, c};
    c->loop = loop;
    c->mono = OA_TESTCLOCK_MONO_START;
    c->wall_ms = oa_time_now_ms() / 1000 * 1000;
}

uint64_t oa_testclock_now(const oa_testclock_t *c)
{
    return c->mono;
}

int64_t oa_testclock_wall_ms(const oa_testclock_t *c)
{
    return c->wall_ms;
}

time_t oa_testclock_wall(const oa_testclock_t *c)
{
    /* Rounded down, as time() is, also before 1970 (a wall clock stepped far back). */
    return (time_t)(c->wall_ms >= 0 ? c->wall_ms / 1000 : -((-c->wall_ms + 999) / 1000));
}

static int find(const oa_testclock_t *c, const uv_timer_t *t)
{
    int i;

    for (i = 0; i < c->n_armed; i++)
        if (c->armed[i].handle == t)
            return i;
    return -1;
}

int oa_testclock_timer_stop(oa_testclock_t *c, uv_timer_t *t)
{
    int i = find(c, t);

    if (i >= 0)
        c->armed[i] = c->armed[--c->n_armed];
    return 0;
}

int oa_testclock_timer_start(oa_testclock_t *c, uv_timer_t *t, uv_timer_cb cb, uint64_t timeout_ms)
{
    oa_testclock_timer_t *e;

    if (uv_is_closing((uv_handle_t *)t))
        misuse("a timer was armed while closing");
    oa_testclock_timer_stop(c, t);
    if (c->n_armed == OA_TESTCLOCK_MAX_TIMERS)
        misuse("too many timers armed");
    e = &c->armed[c->n_armed++];
    e->handle = t;
    e->cb = cb;
    e->due = c->mono + timeout_ms;
    e->seq = c->seq++;
    return 0;
}

int oa_testclock_armed(const oa_testclock_t *c)
{
    return c->n_armed;
}

/* The index of the timer that fires first, or -1 when none is armed. */
static int earliest(const oa_testclock_t *c)
{
    int i, best = -1;

    for (i = 0; i < c->n_armed; i++)
        if (best < 0 || c->armed[i].due < c->armed[best].due ||
            (c->armed[i].due == c->armed[best].due && c->armed[i].seq < c->armed[best].seq))
            best = i;
    return best;
}

static void move_to(oa_testclock_t *c, uint64_t mono)
{
    c->wall_ms += (int64_t)(mono - c->mono);
    c->mono = mono;
}

void oa_testclock_advance_to(oa_testclock_t *c, uint64_t mono)
{
    oa_testclock_timer_t e;
    int i;

    if (c->advancing)
        misuse("advanced from inside a timer callback");
    if (mono < c->mono)
        misuse("time cannot go backwards");
    c->advancing = true;
    uv_run(c->loop, UV_RUN_NOWAIT);
    while ((i = earliest(c)) >= 0 && c->armed[i].due <= mono) {
        move_to(c, c->armed[i].due);
        /* Every timer of this instant, those that callbacks arm with timeout 0 included, then one loop iteration. */
        while ((i = earliest(c)) >= 0 && c->armed[i].due <= c->mono) {
            e = c->armed[i];
            c->armed[i] = c->armed[--c->n_armed];
            /* A handle closed while armed would be freed under this clock's feet: its owner forgot to stop it. */
            if (uv_is_closing((uv_handle_t *)e.handle))
                misuse("a timer was closed while armed");
            e.cb(e.handle);
        }
        uv_run(c->loop, UV_RUN_NOWAIT);
    }
    move_to(c, mono);
    uv_run(c->loop, UV_RUN_NOWAIT);
    c->advancing = false;
}

void oa_testclock_advance(oa_testclock_t *c, uint64_t ms)
{
    oa_testclock_advance_to(c, c->mono + ms);
}

void oa_testclock_step_wall(oa_testclock_t *c, int64_t delta_ms)
{
    c->wall_ms += delta_ms;
}
