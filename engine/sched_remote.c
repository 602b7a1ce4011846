/*
 * Cluster mode: the view of the schedule a poller shares, and the follower's side that takes a response or a view
 * obtained by another node as its own.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "sched_internal.h"

/* Tells the cluster (when it listens) what the schedule looks like now. */
void sched_notify_state(oa_sched_t *s)
{
    oa_sched_view_t v;

    if (s->state_hook == NULL || s->closing)
        return;
    oa_sched_view(s, &v);
    s->state_hook(s->state_hook_data, &v);
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
    sched_rearm(s);
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

oa_sched_remote_t oa_sched_apply_remote(oa_sched_t *s, const unsigned char *der, size_t len, int64_t at_ms,
                                        oa_error_t *err)
{
    oa_ocsp_result_t res;
    time_t now = now_wall(s);

    if (s->closing) {
        oa_error_set(err, OA_E_OCSP_CANCELLED, "the agent is shutting down");
        return OA_SCHED_REMOTE_REFUSED;
    }
    if (s->target == NULL) {
        oa_error_set(err, OA_E_NO_RESPONDER_URL, "this node watches no certificate");
        return OA_SCHED_REMOTE_REFUSED;
    }
    if (s->have_cache && s->cache.der_len == len && memcmp(s->cache.der, der, len) == 0)
        return OA_SCHED_REMOTE_IGNORED;
    memset(&res, 0, sizeof(res));
    if (oa_ocsp_verify(s->target, der, len, NULL, now, &res, err) != 0)
        return OA_SCHED_REMOTE_REFUSED;
    if (res.cert_status == OA_CERT_UNKNOWN || (res.next_update != 0 && res.next_update <= now)) {
        oa_ocsp_result_clear(&res);
        oa_error_set(err, OA_E_OCSP_EXPIRED, "the shared response says UNKNOWN or is past its nextUpdate");
        return OA_SCHED_REMOTE_REFUSED;
    }
    oa_ocsp_result_clear(&s->cache);
    s->cache = res;
    s->have_cache = true;
    sched_write_staple(s);
    /* The schedule runs from when the poller asked, so a takeover keeps the cluster's cadence. */
    anchor_remote(s, at_ms);
    s->last_success = s->last_attempt;
    sched_settle_valid(s);
    sched_rearm(s);
    sched_alert_revoked(s, "cluster");
    return OA_SCHED_REMOTE_APPLIED;
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
        sched_drop_cache(s, "the cluster's poller invalidated the status");
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
        sched_set_last_error(s, v->last_error_code, v->last_error);
    /* Anchored like a remote response: a follower that takes over retries on the poller's cadence. */
    if (v->last_attempt_ms > 0)
        anchor_remote(s, v->last_attempt_ms);
    sched_rearm(s);
    return 0;
}
