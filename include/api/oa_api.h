/*
 * The REST API: routing, authentication, permissions, and one handler file per resource.
 *
 * The API owns what only it needs (the cached body of GET /v1/ocsp, a spare credential check) and sees the daemon
 * through oa_api_backend_t alone: read and update the configuration, the status, a test query, the capability
 * check and the metrics. It never reaches into the daemon's state.
 */
#ifndef OA_API_H
#define OA_API_H

#include <jansson.h>
#include <stdbool.h>

#include "oa_auth.h"
#include "oa_conf.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_util.h"

/* Fires once for a configuration update that oa_api_backend_t.conf_put left pending: err NULL when the change is in
 * force, else why it was refused (the code says which answer). */
typedef void (*oa_api_done_cb)(void *arg, const oa_error_t *err);

/* Fires once per test that oa_api_backend_t.test started: err 0 with status (borrowed for the call), or an OA_E_*
 * code with text. */
typedef void (*oa_api_test_cb)(void *arg, int err, const char *text, json_t *status);

/* What the API asks of the daemon. Every call happens on the loop; data is handed back to each. */
typedef struct oa_api_backend_s {
    void *data;
    /* The configuration in force and the responder URL ("" when none); the pointers stay valid until the next
     * change of the configuration. */
    void (*conf_get)(void *data, const oa_conf_t **conf, const char **responder_url);
    /* Validates body (a partial update) against the configuration in force and applies it for user. Returns 0 when
     * it was answered at once (err->code is 0 when the change, or no change, is in force; else why not), or 1 when
     * done will fire later (the cluster's store decides). */
    int (*conf_put)(void *data, const char *body, size_t len, const char *user, oa_api_done_cb done, void *arg,
                    oa_error_t *err);
    /* The status object of GET /v1/ocsp/status, delivery included (new reference), or NULL on out of memory. */
    json_t *(*status)(void *data);
    /* POST /v1/ocsp/test. Returns 0 (cb will fire), or -1 with err filled when the test cannot start. */
    int (*test)(void *data, oa_api_test_cb cb, void *arg, oa_error_t *err);
    /* 0 when every node supports OCSP, else -1 with OA_E_UNSUPPORTED_BY_CAPABILITY. */
    int (*capability_check)(void *data, oa_error_t *err);
    /* Appends the daemon's metrics in Prometheus' text format. Returns 0 or UV_ENOMEM. */
    int (*metrics)(void *data, oa_buf_t *out);
} oa_api_backend_t;

typedef struct oa_api_s oa_api_t;

/* Creates the API over auth (borrowed) and backend (copied). Returns 0 with *out set, or UV_ENOMEM. */
int oa_api_new(oa_auth_t *auth, const oa_api_backend_t *backend, oa_api_t **out);

/* Tells the API the configuration changed: its cached GET body is rebuilt on the next read. */
void oa_api_conf_changed(oa_api_t *api);

/* From now on every request is answered 503: the daemon is shutting down. */
void oa_api_shutdown(oa_api_t *api);

/* The server whose connections the metrics count (borrowed; may be NULL). */
void oa_api_set_server(oa_api_t *api, oa_http_server_t *server);

void oa_api_free(oa_api_t *api);

/* The server's request handler (oa_http_handler_cb); app is the oa_api_t. Authenticates, routes, checks the
 * permission and the cluster's capability, then calls the resource's handler. Answers every request. */
void oa_api_handle(oa_http_request_t *req, void *app);

/* ---- for the resource handlers (api/) ---- */

/* A routed, authenticated request as the resource handlers see it. */
typedef struct oa_api_call_s {
    oa_http_request_t *req;
    oa_api_t *api;
    const oa_user_t *user;
} oa_api_call_t;

/* The backend, for the handlers. */
const oa_api_backend_t *oa_api_backend(const oa_api_t *api);

/* Answers with status and the compact JSON dump of body (body is borrowed, not stolen). */
void oa_api_respond_json(oa_http_request_t *req, int status, const json_t *body);

/* Answers 200 with the configuration in force (the cached body, rebuilt when the configuration changed). */
void oa_api_respond_conf(oa_api_t *api, oa_http_request_t *req);

/* Resource handlers; each answers req exactly once (perhaps later, from a callback). */
void oa_api_ocsp_config_get(const oa_api_call_t *call);
void oa_api_ocsp_config_put(const oa_api_call_t *call);
void oa_api_ocsp_status_get(const oa_api_call_t *call);
void oa_api_ocsp_test_post(const oa_api_call_t *call);
void oa_api_metrics_get(const oa_api_call_t *call);

#endif
