/*
 * The REST API: routing, authentication, permissions, and one handler file per resource.
 *
 * The API owns what only it needs (the cached body of GET /v1/ocsp, a spare credential check) and sees the daemon
 * through oa_api_backend_t alone: read and update the configuration, the status, a test query, the capability
 * check and the metrics. It never reaches into the daemon's state. The status and the metrics reach it as plain
 * snapshots (oa_sched_status_t, oa_delivery_status_t); the JSON and the Prometheus text are written here.
 */
#ifndef OA_API_H
#define OA_API_H

#include <jansson.h>
#include <stdbool.h>

#include "oa_auth.h"
#include "oa_conf.h"
#include "oa_delivery.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_sched.h"
#include "oa_util.h"

/* What oa_api_backend_t.conf_put did with a configuration update. */
typedef enum oa_api_put_e {
    OA_API_PUT_DONE,    /* answered at once: the change, or no change, is in force */
    OA_API_PUT_REFUSED, /* answered at once: refused, with err filled (the code says which answer) */
    OA_API_PUT_PENDING  /* done will fire later (the cluster's store decides) */
} oa_api_put_t;

/* Fires once for a configuration update that oa_api_backend_t.conf_put left pending: err NULL when the change is in
 * force, else why it was refused (the code says which answer). */
typedef void (*oa_api_done_cb)(void *arg, const oa_error_t *err);

/* Fires once per test that oa_api_backend_t.test started: err 0 with status (borrowed for the call), or an OA_E_*
 * code with text. The same shape as oa_sched_test_cb, so the daemon hands it to the scheduler as it is. */
typedef void (*oa_api_test_cb)(void *arg, int err, const char *text, const oa_sched_status_t *status);

/* What GET /v1/ocsp/status and /metrics render: the schedule's snapshot and the delivery's. */
typedef struct oa_api_status_s {
    oa_sched_status_t sched;
    oa_delivery_status_t delivery; /* the API frees it with oa_delivery_status_free */
} oa_api_status_t;

/* What the API asks of the daemon. Every call happens on the loop; data is handed back to each. */
typedef struct oa_api_backend_s {
    void *data;
    /* The configuration in force and the responder URL ("" when none); the pointers stay valid until the next
     * change of the configuration. */
    void (*conf_get)(void *data, const oa_conf_t **conf, const char **responder_url);
    /* Validates body (a partial update) against the configuration in force and applies it for user. Returns
     * OA_API_PUT_DONE, OA_API_PUT_REFUSED with err filled, or OA_API_PUT_PENDING when done will fire later. */
    oa_api_put_t (*conf_put)(void *data, const char *body, size_t len, const char *user, oa_api_done_cb done,
                             void *arg, oa_error_t *err);
    /* Fills out with the snapshots GET /v1/ocsp/status and /metrics render. Returns 0, or UV_ENOMEM with nothing
     * in out to free. */
    int (*status)(void *data, oa_api_status_t *out);
    /* POST /v1/ocsp/test. Returns 0 (cb will fire), or -1 with err filled when the test cannot start. */
    int (*test)(void *data, oa_api_test_cb cb, void *arg, oa_error_t *err);
    /* 0 when every node supports OCSP, else -1 with OA_E_UNSUPPORTED_BY_CAPABILITY. */
    int (*capability_check)(void *data, oa_error_t *err);
    /*
     * Appends the daemon's own metric families (reloads; the cluster's, in cluster mode), written with the common
     * Prometheus writer (oa_prom.h), after the engine's that the API renders from status. Returns 0 or UV_ENOMEM.
     *
     * The cluster writes its families itself rather than handing the API a snapshot: its numbers (store, lease,
     * registry, message and PUT counters) mean something only to the cluster and feed no other output, and the
     * API may not see cluster headers, so a snapshot would need a copy of the cluster's fields and label names
     * declared here and translated in the daemon. Sharing the writer keeps one format and one escaping; keeping the
     * families next to their numbers keeps one place that knows what they mean.
     */
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

/* The status object (new reference, NULL on out of memory): cert_status, responder_url, the response's times,
 * state and the operator fields, then `delivery` when delivery is not NULL (GET /v1/ocsp/status; a test's answer
 * has none). */
json_t *oa_api_status_json(const oa_sched_status_t *st, const oa_delivery_status_t *delivery);
/* The status's `delivery` list alone (new reference, NULL on out of memory): per target, target, state,
 * last_delivery (absent before the first delivery) and last_error (absent when the last try succeeded). */
json_t *oa_api_delivery_json(const oa_delivery_status_t *delivery);

/* The engine's metric families in Prometheus' text format, appended to out: the schedule's (queries, last success,
 * staple expiry, cert status, state, consecutive failures) and the delivery's (nothing without a target). Each
 * returns 0 or UV_ENOMEM. */
int oa_api_sched_metrics(const oa_sched_status_t *st, oa_buf_t *out);
int oa_api_delivery_metrics(const oa_delivery_status_t *delivery, oa_buf_t *out);

/* Resource handlers; each answers req exactly once (perhaps later, from a callback). */
void oa_api_ocsp_config_get(const oa_api_call_t *call);
void oa_api_ocsp_config_put(const oa_api_call_t *call);
void oa_api_ocsp_status_get(const oa_api_call_t *call);
void oa_api_ocsp_test_post(const oa_api_call_t *call);
void oa_api_metrics_get(const oa_api_call_t *call);

#endif
