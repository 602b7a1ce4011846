/*
 * What the end of an attempt does to the schedule: a valid answer cached and its staple written, a failure counted
 * towards recovery and invalidation, the log line and the metrics of every attempt. The rules are written down at
 * the top of scheduler.c.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "oa_log.h"
#include "sched_internal.h"

#define MIDPOINT_FLOOR_MS 1000
#define UNKNOWN_OUTCOME OA_SCHED_OUTCOME_UNKNOWN

static const char *const trigger_names[] = {"schedule", "recovery", "test"};

/* ---- results ---- */

void sched_set_last_error(oa_sched_t *s, const char *code, const char *text)
{
    s->have_error = true;
    snprintf(s->last_error_code, sizeof(s->last_error_code), "%s", code);
    snprintf(s->last_error, sizeof(s->last_error), "%s", text != NULL ? text : "");
}

/* Enabled without a responder URL: the status says why nothing is queried. */
void sched_note_no_responder(oa_sched_t *s)
{
    if (!has_responder(s))
        sched_set_last_error(s, oa_errcode_name(OA_E_NO_RESPONDER_URL),
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
    sched_drop_cache(s, "the recovery retries ran out");
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
    sched_set_last_error(s, code, text);
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
void sched_settle_valid(oa_sched_t *s)
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
    sched_arm_expiry(s);
}

/* The alert for a REVOKED response just cached; source, when not NULL, says where it came from. */
void sched_alert_revoked(oa_sched_t *s, const char *source)
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
    sched_write_staple(s);
    anchor_attempt(s);
    s->last_success = now_wall(s);
    sched_settle_valid(s);

    if (s->result_hook != NULL)
        s->result_hook(s->result_hook_data, res);
    sched_alert_revoked(s, NULL);
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
void sched_finish_attempt(oa_sched_t *s, int err, const char *errtext, const oa_ocsp_result_t *res,
                          unsigned duration_ms)
{
    bool cancelled = s->query_cancelled, ok, unknown;
    const char *code;

    s->query_cancelled = false;
    if (s->closing) {
        sched_maybe_finish(s);
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
        sched_answer_attached(s, OA_E_OCSP_CANCELLED, "the OCSP query was cancelled because OCSP was disabled", NULL);
    } else {
        unknown = err == 0 && res->cert_status == OA_CERT_UNKNOWN;
        ok = err == 0 && !unknown;
        code = err != 0 ? oa_errcode_name((oa_errcode_t)err) : unknown ? UNKNOWN_OUTCOME : "ok";
        count_outcome(s, err, unknown);
        log_attempt(s, code, err == 0 ? res : NULL, errtext, duration_ms, !ok);
        if (ok && (s->query_regular || s->enabled)) {
            apply_success(s, res);
            sched_notify_state(s);
        } else if (!ok && s->query_regular) {
            apply_failure(s, code, unknown ? "responder answered UNKNOWN" : errtext);
            sched_notify_state(s);
        }
        sched_answer_attached(s, err, errtext, err == 0 ? res : NULL);
    }
    if (s->closing)
        return; /* a waiter's callback closed the scheduler */
    sched_kick(s);
    sched_rearm(s);
}
