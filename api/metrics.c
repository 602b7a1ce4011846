/*
 * GET /metrics: the engine's metrics, the cluster's (in cluster mode) and the API's own, in Prometheus' text format.
 */
#include "api_internal.h"

void oa_api_metrics_get(const oa_api_call_t *call)
{
    oa_api_t *api = call->api;
    oa_buf_t out;
    int rc;

    oa_buf_init(&out);
    rc = api->backend.metrics(api->backend.data, &out);
    if (rc == 0)
        rc = oa_buf_printf(&out,
                           "# HELP ocsp_agent_http_connections Open API connections.\n"
                           "# TYPE ocsp_agent_http_connections gauge\n"
                           "ocsp_agent_http_connections %u\n"
                           "# HELP ocsp_agent_info Build information.\n"
                           "# TYPE ocsp_agent_info gauge\n"
                           "ocsp_agent_info{version=\"%s\"} 1\n",
                           api->server != NULL ? oa_http_server_connections(api->server) : 0, OA_VERSION);
    if (rc != 0)
        oa_http_respond_error(call->req, 0, OA_E_NOMEM, "Out of memory.", NULL);
    else
        oa_http_respond_typed(call->req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, out.data, out.len);
    oa_buf_free(&out);
}
