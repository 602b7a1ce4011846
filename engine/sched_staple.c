/*
 * The scheduler's cache and its staple file: the response reloaded at start-up, written after every change, removed
 * when the cache is dropped, and its expiry at nextUpdate.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "oa_log.h"
#include "sched_internal.h"

#define STAPLE_MAX_BYTES (1024 * 1024)

static void on_expiry(uv_timer_t *t);

/* ---- the cache and the staple file ---- */

void sched_arm_expiry(oa_sched_t *s)
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

void sched_drop_cache(oa_sched_t *s, const char *why)
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
void sched_expire_if_due(oa_sched_t *s)
{
    char nu[OA_RFC1123_LEN];

    if (!s->have_cache || s->cache.next_update == 0 || now_wall(s) < s->cache.next_update)
        return;
    oa_time_rfc1123(s->cache.next_update, nu);
    sched_drop_cache(s, "the cached response reached its nextUpdate");
    OA_LOG(OA_LOG_ERROR, "staple_expired", OA_KV_STR("responder", responder_of(s)), OA_KV_STR("next_update", nu),
           OA_KV_STR("state", oa_sched_state_name(s->state)));
    if (s->state == OA_STATE_VALID || s->state == OA_STATE_RECOVERING) {
        s->state = OA_STATE_INVALIDATED;
        sched_notify_state(s);
    }
}

static void on_expiry(uv_timer_t *t)
{
    oa_sched_t *s = oa_container_of(t, oa_sched_t, expiry);

    sched_expire_if_due(s);
    /* The wall clock may lag the loop's clock by a few milliseconds: if it is not time yet, look again shortly. */
    if (s->have_cache)
        sched_arm_expiry(s);
}

/* The file first, then the delivery: a hook run for the change finds the new file in place. */
void sched_write_staple(oa_sched_t *s)
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
void sched_load_staple(oa_sched_t *s)
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
    sched_arm_expiry(s);
    OA_LOG(OA_LOG_INFO, "staple_loaded", OA_KV_STR("path", s->staple_path),
           OA_KV_STR("cert_status", oa_cert_status_name(s->cache.cert_status)));
out:
    oa_ocsp_result_clear(&res);
    oa_buf_free(&buf);
}

void oa_sched_set_staple_hook(oa_sched_t *s, oa_sched_staple_hook hook, void *data)
{
    s->staple_hook = hook;
    s->staple_hook_data = data;
    staple_changed(s);
}
