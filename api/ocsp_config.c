/*
 * GET and PUT /v1/ocsp: the cluster's OCSP configuration.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_internal.h"
#include "oa_log.h"

void oa_api_ocsp_config_get(const oa_api_call_t *call)
{
    oa_api_respond_conf(call->api, call->req);
}

/* A body is JSON when it says so, or says nothing (curl -d without -H); any other declared type is refused. */
static int content_type_is_json(const char *ct)
{
    size_t n;

    if (ct == NULL)
        return 1;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

/* A refused change is the caller's answer, and also a log line at a level that says how much an operator needs it:
 * info for a body the validator refused (the audit trail), debug for a PUT refused before anything was sent because
 * the store is out of reach (the outage itself is logged once at error, and store_reconnected counts the refused
 * PUTs, so a stream of them does not flood the log), warn for one the store did not confirm in time, whose outcome
 * is unknown. */
static void reject(oa_http_request_t *req, const char *user, const oa_error_t *err, oa_log_level_t level)
{
    OA_LOG(level, "config_rejected", OA_KV_STR("user", user != NULL ? user : ""),
           OA_KV_STR("error_code", oa_errcode_name(err->code)), OA_KV_STR("reason", err->text));
    oa_http_respond_error(req, 0, err->code, err->text, NULL);
}

/* A change that waited for the cluster's store: an acknowledged change is one the store holds. */
static void on_put_done(void *arg, const oa_error_t *err)
{
    oa_http_request_t *req = arg;
    oa_api_t *api = req->data;

    if (err != NULL) {
        reject(req, NULL, err, err->code == OA_E_STORE_UNAVAILABLE ? OA_LOG_WARN : OA_LOG_INFO);
        return;
    }
    oa_api_respond_conf(api, req);
}

void oa_api_ocsp_config_put(const oa_api_call_t *call)
{
    const oa_api_backend_t *b = oa_api_backend(call->api);
    oa_http_request_t *req = call->req;
    oa_error_t err;
    oa_api_put_t put;

    if (!content_type_is_json(req->content_type)) {
        oa_http_respond_error(req, 0, OA_E_UNSUPPORTED_MEDIA_TYPE, "The body must be application/json.", NULL);
        return;
    }
    req->data = call->api;
    oa_error_clear(&err);
    put = b->conf_put(b->data, req->body ? req->body : "", req->body_len, call->user->name, on_put_done, req, &err);
    if (put == OA_API_PUT_PENDING)
        return;
    if (put == OA_API_PUT_DONE) {
        oa_api_respond_conf(call->api, req);
        return;
    }
    /* A refusal by the validator is the audit trail's business; one before anything reached an unreachable store is
     * not (see reject); a failure to persist was logged where it happened. */
    if (err.code == OA_E_PERSIST)
        oa_http_respond_error(req, 0, err.code, err.text, NULL);
    else
        reject(req, call->user->name, &err, err.code == OA_E_STORE_UNAVAILABLE ? OA_LOG_DEBUG : OA_LOG_INFO);
}
