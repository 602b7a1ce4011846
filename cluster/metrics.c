/*
 * The cluster's Prometheus metrics (oa_cluster.h lists them). The names and help texts are part of the agent's
 * interface: dashboards and alerts use them.
 */
#include <inttypes.h>

#include "cluster_internal.h"
#include "oa_util.h"

static const char *const msg_type_names[CLUSTER_MSG_TYPES] = {"conf", "status", "state", "invalid"};
static const char *const put_result_names[CLUSTER_PUT_RESULTS] = {"committed", "conflict_retry", "unavailable",
                                                                  "timeout"};

int oa_cluster_metrics(const oa_cluster_t *c, oa_buf_t *out)
{
    static const struct {
        const char *name, *type, *help;
    } gauges[] = {
        {"ocsp_agent_cluster_store_up", "gauge",
         "1 while the cluster store is reachable and this node is synchronised with it."},
        {"ocsp_agent_cluster_poller", "gauge", "1 while this node holds the lease and queries the responder."},
        {"ocsp_agent_cluster_conf_version", "gauge", "The version of the shared configuration in force here."},
        {"ocsp_agent_cluster_nodes", "gauge", "Live nodes seen by the last heartbeat."},
        {"ocsp_agent_cluster_nodes_lacking_ocsp", "gauge", "Live nodes without the ocsp capability."},
        {"ocsp_agent_cluster_store_disconnects_total", "counter",
         "Times the connection to a synchronised store was lost."},
    };
    uint64_t values[OA_ARRAY_SIZE(gauges)];
    size_t i;
    int rc = 0;

    values[0] = (uint64_t)oa_cluster_available(c);
    values[1] = c->poller ? 1 : 0;
    values[2] = c->version;
    values[3] = c->view.live;
    values[4] = c->view.lacking_count;
    values[5] = c->disconnects;
    for (i = 0; i < OA_ARRAY_SIZE(gauges); i++)
        rc |= oa_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", gauges[i].name, gauges[i].help,
                            gauges[i].name, gauges[i].type, gauges[i].name, values[i]);
    rc |= oa_buf_append_str(out, "# HELP ocsp_agent_cluster_messages_received_total Messages received on the "
                                 "cluster channel, by type.\n"
                                 "# TYPE ocsp_agent_cluster_messages_received_total counter\n");
    for (i = 0; i < CLUSTER_MSG_TYPES; i++)
        rc |= oa_buf_printf(out, "ocsp_agent_cluster_messages_received_total{type=\"%s\"} %" PRIu64 "\n",
                            msg_type_names[i], c->messages[i]);
    rc |= oa_buf_append_str(out, "# HELP ocsp_agent_cluster_puts_total Configuration writes to the cluster store, "
                                 "by result.\n"
                                 "# TYPE ocsp_agent_cluster_puts_total counter\n");
    for (i = 0; i < CLUSTER_PUT_RESULTS; i++)
        rc |= oa_buf_printf(out, "ocsp_agent_cluster_puts_total{result=\"%s\"} %" PRIu64 "\n", put_result_names[i],
                            c->put_counts[i]);
    return rc != 0 ? UV_ENOMEM : 0;
}
