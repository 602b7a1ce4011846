/*
 * GET /v1/ocsp/status (the cached status) and POST /v1/ocsp/test (a fresh query, answered when it completes).
 */
#include "oa_api.h"
#include "oa_log.h"

void oa_api_ocsp_status_get(const oa_api_call_t *call)
{
    const oa_api_backend_t *b = oa_api_backend(call->api);
    json_t *status = b->status(b->data);

    if (status == NULL) {
        oa_http_respond_error(call->req, 0, OA_E_NOMEM, "Out of memory.", NULL);
        return;
    }
    oa_api_respond_json(call->req, 200, status);
    json_decref(status);
}

static void on_test_done(void *arg, int err, const char *text, json_t *status)
{
    oa_http_request_t *req = arg;

    if (err != 0) {
        oa_http_respond_error(req, 0, (oa_errcode_t)err, text, NULL);
        return;
    }
    oa_api_respond_json(req, 200, status);
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
