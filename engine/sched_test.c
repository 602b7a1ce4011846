/*
 * Explicit tests (POST /v1/ocsp/test): the callers waiting for a query's answer, each with its safety timer.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "sched_internal.h"

#define TEST_SAFETY_MARGIN_MS 5000

/* ---- waiters ---- */

void sched_waiter_unlink(waiter_t *w)
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
    sched_maybe_finish(s);
}

/* Answers an unlinked waiter and releases it. The callback may call back into the scheduler (even close it): the
 * scheduler stays allocated because the waiter's own close is still pending. */
void sched_waiter_answer(waiter_t *w, int err, const char *text, const oa_sched_status_t *status)
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

    sched_waiter_unlink(w);
    sched_waiter_answer(w, OA_E_TASK_QUEUED_TOO_LONG, "no OCSP answer arrived within response_timeout + 5 seconds",
                        NULL);
}

/* Answers every waiter attached to the query that just ended. They are moved to a list of their own first, so a
 * callback that asks for another test (and starts a new query) is not answered with this result. */
void sched_answer_attached(oa_sched_t *s, int err, const char *text, const oa_ocsp_result_t *res)
{
    waiter_t *list = NULL, *w, *next;
    oa_sched_status_t status;

    for (w = s->waiters; w != NULL; w = next) {
        next = w->next;
        if (!w->attached)
            continue;
        sched_waiter_unlink(w);
        w->next = list;
        list = w;
    }
    if (list == NULL)
        return;
    if (err == 0)
        sched_snapshot_of(s, res, &status);
    for (w = list; w != NULL; w = next) {
        next = w->next;
        w->next = NULL;
        sched_waiter_answer(w, err, text, err == 0 ? &status : NULL);
    }
}

/* Starts a query for tests that arrived while a cancelled query was still winding down. */
void sched_kick(oa_sched_t *s)
{
    oa_error_t err;
    waiter_t *w;

    if (s->closing || s->in_flight)
        return;
    for (w = s->waiters; w != NULL && w->attached; w = w->next)
        ;
    if (w == NULL)
        return;
    if (sched_start_query(s, false, &err) != 0)
        sched_answer_attached(s, err.code, err.text, NULL);
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
        if (sched_start_query(s, false, err) != 0) {
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
