/*
 * GET /v1/ocsp/status (the cached status) and POST /v1/ocsp/test (a fresh query, answered when it completes), and
 * the status object both answer with, rendered from the scheduler's and the delivery's snapshots.
 */
#include <openssl/ocsp.h>

#include "oa_api.h"
#include "oa_log.h"

static void set_time(json_t *o, const char *key, time_t t)
{
    char buf[OA_RFC1123_LEN];

    json_object_set_new(o, key, json_string(oa_time_rfc1123(t, buf)));
}

/* One object per target, an empty list on a node that delivers nowhere. */
json_t *oa_api_delivery_json(const oa_delivery_status_t *d)
{
    char when[OA_RFC1123_LEN];
    const oa_delivery_target_status_t *t;
    json_t *list, *o;
    size_t i;

    list = json_array();
    if (list == NULL)
        return NULL;
    for (i = 0; i < d->count; i++) {
        t = &d->targets[i];
        o = json_object();
        if (o == NULL || json_array_append_new(list, o) != 0)
            goto nomem;
        if (json_object_set_new(o, "target", json_string(t->target)) != 0 ||
            json_object_set_new(o, "state", json_string(oa_dtarget_state_name(t->state))) != 0)
            goto nomem;
        if (t->last_delivery != 0 &&
            json_object_set_new(o, "last_delivery", json_string(oa_time_rfc1123(t->last_delivery, when))) != 0)
            goto nomem;
        if (t->last_error != NULL && json_object_set_new(o, "last_error", json_string(t->last_error)) != 0)
            goto nomem;
    }
    return list;
nomem:
    json_decref(list);
    return NULL;
}

json_t *oa_api_status_json(const oa_sched_status_t *st, const oa_delivery_status_t *delivery)
{
    const oa_ocsp_result_t *r = st->have_response ? &st->response : NULL;
    json_t *o = json_object();

    if (o == NULL)
        return NULL;
    json_object_set_new(o, "cert_status",
                        json_string(oa_cert_status_name(r != NULL ? r->cert_status : OA_CERT_UNKNOWN)));
    json_object_set_new(o, "responder_url", json_string(st->responder_url));
    if (r != NULL) {
        set_time(o, "produced_at", r->produced_at);
        set_time(o, "this_update", r->this_update);
        if (r->next_update != 0)
            set_time(o, "next_update", r->next_update);
        if (r->cert_status == OA_CERT_REVOKED) {
            set_time(o, "revocation_time", r->revocation_time);
            if (r->revocation_reason >= 0)
                json_object_set_new(o, "revocation_reason", json_string(OCSP_crl_reason_str(r->revocation_reason)));
        }
    }
    json_object_set_new(o, "state", json_string(oa_sched_state_name(st->state)));
    if (st->last_attempt != 0)
        set_time(o, "last_attempt", st->last_attempt);
    if (st->last_success != 0)
        set_time(o, "last_success", st->last_success);
    if (st->have_error) {
        json_object_set_new(o, "last_error_code", json_string(st->last_error_code));
        json_object_set_new(o, "last_error", json_string(st->last_error));
    }
    json_object_set_new(o, "consecutive_failures", json_integer(st->consecutive_failures));
    json_object_set_new(o, "recovery_tries", json_integer(st->recovery_tries));
    json_object_set_new(o, "recovery_max_tries", json_integer(st->recovery_max_tries));
    if (st->next_query != 0)
        set_time(o, "next_query", st->next_query);
    /* Where the staple went comes last, and only with the cached status: a test's answer is about the responder. */
    if (delivery != NULL && json_object_set_new(o, "delivery", oa_api_delivery_json(delivery)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

void oa_api_ocsp_status_get(const oa_api_call_t *call)
{
    const oa_api_backend_t *b = oa_api_backend(call->api);
    oa_api_status_t st;
    json_t *status = NULL;

    if (b->status(b->data, &st) == 0) {
        status = oa_api_status_json(&st.sched, &st.delivery);
        oa_delivery_status_free(&st.delivery);
    }
    if (status == NULL) {
        oa_http_respond_error(call->req, 0, OA_E_NOMEM, "Out of memory.", NULL);
        return;
    }
    oa_api_respond_json(call->req, 200, status);
    json_decref(status);
}

static void on_test_done(void *arg, int err, const char *text, const oa_sched_status_t *st)
{
    oa_http_request_t *req = arg;
    json_t *status;

    if (err != 0) {
        oa_http_respond_error(req, 0, (oa_errcode_t)err, text, NULL);
        return;
    }
    status = oa_api_status_json(st, NULL);
    if (status == NULL) {
        oa_http_respond_error(req, 0, OA_E_NOMEM, "out of memory while building the status", NULL);
        return;
    }
    oa_api_respond_json(req, 200, status);
    json_decref(status);
}

void oa_api_ocsp_test_post(const oa_api_call_t *call)
{
    const oa_api_backend_t *b = oa_api_backend(call->api);
    oa_error_t err;

    OA_LOG(OA_LOG_INFO, "ocsp_test_requested", OA_KV_STR("user", call->user->name));
    if (b->test(b->data, on_test_done, call->req, &err) != 0) {
        /* A test that cannot even start is the server's problem to report, not the request's: 500. */
        oa_http_respond_error(call->req, err.code == OA_E_NO_RESPONDER_URL ? 500 : 0, err.code, err.text, NULL);
    }
}
