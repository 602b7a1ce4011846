/*
 * The REST API: routing, authentication, permissions, and one handler file per resource.
 */
#ifndef OA_API_H
#define OA_API_H

#include <jansson.h>

#include "oa_agent.h"
#include "oa_auth.h"
#include "oa_http.h"

/* The server's request handler (oa_http_handler_cb); app is the oa_agent_t. Authenticates, routes, checks the
 * permission and the cluster's capability, then calls the resource's handler. Answers every request. */
void oa_api_handle(oa_http_request_t *req, void *app);

/* A routed, authenticated request as the resource handlers see it. */
typedef struct oa_api_call_s {
    oa_http_request_t *req;
    oa_agent_t *agent;
    const oa_user_t *user;
} oa_api_call_t;

/* Answers with status and the compact JSON dump of body (body is borrowed, not stolen). */
void oa_api_respond_json(oa_http_request_t *req, int status, const json_t *body);

/* Resource handlers; each answers req exactly once (perhaps later, from a callback). */
void oa_api_ocsp_config_get(const oa_api_call_t *call);
void oa_api_ocsp_config_put(const oa_api_call_t *call);
void oa_api_ocsp_status_get(const oa_api_call_t *call);
void oa_api_ocsp_test_post(const oa_api_call_t *call);
void oa_api_metrics_get(const oa_api_call_t *call);

/* Rebuilds agent->conf_body, the cached body of GET /v1/ocsp. Returns 0 or UV_ENOMEM. */
int oa_api_ocsp_config_refresh(oa_agent_t *agent);

#endif
