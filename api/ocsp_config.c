/*
 * GET and PUT /v1/ocsp: the cluster's OCSP configuration.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "oa_api.h"
#include "oa_cluster.h"
#include "oa_log.h"

int oa_api_ocsp_config_refresh(oa_agent_t *agent)
{
    json_t *obj = oa_conf_to_json(&agent->conf, agent->responder_url);
    char *text;
    int rc;

    if (obj == NULL)
        return UV_ENOMEM;
    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text == NULL)
        return UV_ENOMEM;
    oa_buf_reset(&agent->conf_body);
    rc = oa_buf_append_str(&agent->conf_body, text);
    free(text);
    return rc;
}

void oa_api_ocsp_config_get(const oa_api_call_t *call)
{
    oa_agent_t *agent = call->agent;

    /* The body is cached: GET is the hot path, and it changes only when the configuration does. */
    if (agent->conf_body.len == 0 && oa_api_ocsp_config_refresh(agent) != 0) {
        oa_http_respond_error(call->req, 0, OA_E_NOMEM, "Out of memory.", NULL);
        return;
    }
    oa_http_respond(call->req, 200, NULL, agent->conf_body.data, agent->conf_body.len);
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

/* In cluster mode the answer waits for the store: an acknowledged change is one the store holds. */
static void on_cluster_put_done(void *data, const oa_error_t *err)
{
    oa_http_request_t *req = data;
    oa_agent_t *agent = req->data;

    if (err != NULL) {
        reject(req, NULL, err, err->code == OA_E_STORE_UNAVAILABLE ? OA_LOG_WARN : OA_LOG_INFO);
        return;
    }
    if (agent->conf_body.len == 0 && oa_api_ocsp_config_refresh(agent) != 0) {
        oa_http_respond_error(req, 0, OA_E_NOMEM, "Out of memory.", NULL);
        return;
    }
    oa_http_respond(req, 200, NULL, agent->conf_body.data, agent->conf_body.len);
}

static void put_to_cluster(const oa_api_call_t *call)
{
    oa_agent_t *agent = call->agent;
    oa_http_request_t *req = call->req;
    oa_error_t err;
    int rc;

    req->data = agent;
    rc = oa_cluster_conf_put(agent->cluster, req->body, req->body_len, agent->responder_url, call->user->name,
                             on_cluster_put_done, req, &err);
    if (rc == 1) {
        oa_api_ocsp_config_get(call);
    } else if (rc < 0) {
        reject(req, call->user->name, &err, err.code == OA_E_STORE_UNAVAILABLE ? OA_LOG_DEBUG : OA_LOG_INFO);
    }
}

void oa_api_ocsp_config_put(const oa_api_call_t *call)
{
    oa_agent_t *agent = call->agent;
    oa_http_request_t *req = call->req;
    oa_conf_t next;
    unsigned changed = 0;
    oa_error_t err;

    if (!content_type_is_json(req->content_type)) {
        oa_http_respond_error(req, 0, OA_E_UNSUPPORTED_MEDIA_TYPE, "The body must be application/json.", NULL);
        return;
    }
    if (oa_conf_patch(&agent->conf, agent->responder_url, req->body ? req->body : "", req->body_len, &next,
                      &changed, &err) != 0) {
        reject(req, call->user->name, &err, OA_LOG_INFO);
        return;
    }
    if (agent->cluster != NULL && changed != 0) {
        put_to_cluster(call);
        return;
    }
    if (oa_agent_conf_update(agent, &next, changed, call->user->name, &err) != 0) {
        oa_http_respond_error(req, 0, err.code, err.text, NULL);
        return;
    }
    oa_api_ocsp_config_get(call);
}
