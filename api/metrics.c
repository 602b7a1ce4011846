/*
 * GET /metrics in Prometheus' text format: the engine's families rendered from the status snapshots, then the
 * daemon's own (reloads, the cluster's in cluster mode), then the API's. The names, labels and help texts are part
 * of the agent's interface: dashboards and alerts use them.
 */
#include "api_internal.h"
#include "oa_prom.h"

#define QUERIES     "ocsp_agent_queries_total"
#define CERT_STATUS "ocsp_agent_cert_status"
#define STATE       "ocsp_agent_state"
#define DELIVERIES  "ocsp_agent_staple_deliveries_total"
#define DELIVERED   "ocsp_agent_staple_delivered"

int oa_api_sched_metrics(const oa_sched_status_t *st, oa_buf_t *out)
{
    static const oa_cert_status_t statuses[] = {OA_CERT_GOOD, OA_CERT_REVOKED, OA_CERT_UNKNOWN};
    static const oa_sched_state_t states[] = {OA_STATE_DISABLED, OA_STATE_PENDING, OA_STATE_VALID,
                                              OA_STATE_RECOVERING, OA_STATE_INVALIDATED};
    oa_cert_status_t current = st->have_response ? st->response.cert_status : OA_CERT_UNKNOWN;
    size_t i;
    int rc = 0;

    /* Outcomes that never happened are left out, except "ok": a series appears when it first counts. */
    rc |= oa_prom_family(out, QUERIES, OA_PROM_COUNTER, "OCSP query attempts by result.");
    rc |= oa_prom_sample_u64(out, QUERIES, &(oa_prom_label_t){"result", "ok"}, 1, st->queries_ok);
    if (st->queries_unknown > 0)
        rc |= oa_prom_sample_u64(out, QUERIES, &(oa_prom_label_t){"result", OA_SCHED_OUTCOME_UNKNOWN}, 1,
                                 st->queries_unknown);
    for (i = 1; i < OA_ERRCODE_COUNT; i++)
        if (st->queries_failed[i] > 0)
            rc |= oa_prom_sample_u64(out, QUERIES, &(oa_prom_label_t){"result", oa_errcode_name((oa_errcode_t)i)}, 1,
                                     st->queries_failed[i]);

    rc |= oa_prom_family(out, "ocsp_agent_last_success_timestamp_seconds", OA_PROM_GAUGE,
                         "Wall-clock time of the last valid answer, 0 when none.");
    rc |= oa_prom_sample_i64(out, "ocsp_agent_last_success_timestamp_seconds", NULL, 0, (int64_t)st->last_success);

    rc |= oa_prom_family(out, "ocsp_agent_staple_expiry_seconds", OA_PROM_GAUGE,
                         "Seconds until the cached response's nextUpdate, NaN when there is none.");
    if (st->have_response && st->response.next_update != 0)
        rc |= oa_prom_sample_i64(out, "ocsp_agent_staple_expiry_seconds", NULL, 0,
                                 (int64_t)(st->response.next_update - st->taken_at));
    else
        rc |= oa_prom_sample_nan(out, "ocsp_agent_staple_expiry_seconds", NULL, 0);

    rc |= oa_prom_family(out, CERT_STATUS, OA_PROM_GAUGE, "1 for the certificate status being served.");
    for (i = 0; i < OA_ARRAY_SIZE(statuses); i++)
        rc |= oa_prom_sample_u64(out, CERT_STATUS, &(oa_prom_label_t){"status", oa_cert_status_name(statuses[i])}, 1,
                                 statuses[i] == current);

    rc |= oa_prom_family(out, STATE, OA_PROM_GAUGE, "1 for the querying engine's current state.");
    for (i = 0; i < OA_ARRAY_SIZE(states); i++)
        rc |= oa_prom_sample_u64(out, STATE, &(oa_prom_label_t){"state", oa_sched_state_name(states[i])}, 1,
                                 states[i] == st->state);

    rc |= oa_prom_family(out, "ocsp_agent_consecutive_failures", OA_PROM_GAUGE,
                         "Scheduled attempts that failed since the last valid answer.");
    rc |= oa_prom_sample_i64(out, "ocsp_agent_consecutive_failures", NULL, 0, st->consecutive_failures);
    return rc != 0 ? UV_ENOMEM : 0;
}

int oa_api_delivery_metrics(const oa_delivery_status_t *delivery, oa_buf_t *out)
{
    const oa_delivery_target_status_t *t;
    oa_prom_label_t labels[2] = {{"target", NULL}, {"result", NULL}};
    size_t i;
    int rc = 0;

    /* A node that delivers nowhere has no series to show, not empty families. */
    if (delivery->count == 0)
        return 0;
    rc |= oa_prom_family(out, DELIVERIES, OA_PROM_COUNTER, "Tries to deliver the staple to a target, by result.");
    for (i = 0; i < delivery->count; i++) {
        t = &delivery->targets[i];
        labels[0].value = t->target;
        labels[1].value = "ok";
        rc |= oa_prom_sample_u64(out, DELIVERIES, labels, 2, t->deliveries_ok);
        labels[1].value = "error";
        rc |= oa_prom_sample_u64(out, DELIVERIES, labels, 2, t->deliveries_failed);
    }
    rc |= oa_prom_family(out, DELIVERED, OA_PROM_GAUGE, "1 while the target holds the current staple.");
    for (i = 0; i < delivery->count; i++) {
        labels[0].value = delivery->targets[i].target;
        rc |= oa_prom_sample_u64(out, DELIVERED, labels, 1, delivery->targets[i].delivered);
    }
    return rc != 0 ? UV_ENOMEM : 0;
}

/* The API's own families: its open connections and the build. */
static int api_metrics(const oa_api_t *api, oa_buf_t *out)
{
    int rc = 0;

    rc |= oa_prom_family(out, "ocsp_agent_http_connections", OA_PROM_GAUGE, "Open API connections.");
    rc |= oa_prom_sample_u64(out, "ocsp_agent_http_connections", NULL, 0,
                             api->server != NULL ? oa_http_server_connections(api->server) : 0);
    rc |= oa_prom_family(out, "ocsp_agent_info", OA_PROM_GAUGE, "Build information.");
    rc |= oa_prom_sample_u64(out, "ocsp_agent_info", &(oa_prom_label_t){"version", OA_VERSION}, 1, 1);
    return rc != 0 ? UV_ENOMEM : 0;
}

void oa_api_metrics_get(const oa_api_call_t *call)
{
    oa_api_t *api = call->api;
    oa_api_status_t st;
    oa_buf_t out;
    int rc;

    oa_buf_init(&out);
    rc = api->backend.status(api->backend.data, &st);
    if (rc == 0) {
        rc = oa_api_sched_metrics(&st.sched, &out);
        if (rc == 0)
            rc = oa_api_delivery_metrics(&st.delivery, &out);
        oa_delivery_status_free(&st.delivery);
    }
    if (rc == 0)
        rc = api->backend.metrics(api->backend.data, &out);
    if (rc == 0)
        rc = api_metrics(api, &out);
    if (rc != 0)
        oa_http_respond_error(call->req, 0, OA_E_NOMEM, "Out of memory.", NULL);
    else
        oa_http_respond_typed(call->req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, out.data, out.len);
    oa_buf_free(&out);
}
