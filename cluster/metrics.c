/*
 * The cluster's Prometheus metrics (oa_cluster.h lists them), written with the agent's one Prometheus writer
 * (oa_prom.h). The names and help texts are part of the agent's interface: dashboards and alerts use them.
 */
#include "cluster_internal.h"
#include "oa_prom.h"
#include "oa_util.h"

static const char *const msg_type_names[CLUSTER_MSG_TYPES] = {"conf", "status", "state", "invalid"};
static const char *const put_result_names[CLUSTER_PUT_RESULTS] = {"committed", "conflict_retry", "unavailable",
                                                                  "timeout"};

int oa_cluster_metrics(const oa_cluster_t *c, oa_buf_t *out)
{
    static const struct {
        const char *name;
        oa_prom_type_t type;
        const char *help;
    } gauges[] = {
        {"ocsp_agent_cluster_store_up", OA_PROM_GAUGE,
         "1 while the cluster store is reachable and this node is synchronised with it."},
        {"ocsp_agent_cluster_poller", OA_PROM_GAUGE, "1 while this node holds the lease and queries the responder."},
        {"ocsp_agent_cluster_conf_version", OA_PROM_GAUGE, "The version of the shared configuration in force here."},
        {"ocsp_agent_cluster_nodes", OA_PROM_GAUGE, "Live nodes seen by the last heartbeat."},
        {"ocsp_agent_cluster_nodes_lacking_ocsp", OA_PROM_GAUGE, "Live nodes without the ocsp capability."},
        {"ocsp_agent_cluster_store_disconnects_total", OA_PROM_COUNTER,
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
    for (i = 0; i < OA_ARRAY_SIZE(gauges); i++) {
        rc |= oa_prom_family(out, gauges[i].name, gauges[i].type, gauges[i].help);
        rc |= oa_prom_sample_u64(out, gauges[i].name, NULL, 0, values[i]);
    }
    rc |= oa_prom_family(out, "ocsp_agent_cluster_messages_received_total", OA_PROM_COUNTER,
                         "Messages received on the cluster channel, by type.");
    for (i = 0; i < CLUSTER_MSG_TYPES; i++)
        rc |= oa_prom_sample_u64(out, "ocsp_agent_cluster_messages_received_total",
                                 &(oa_prom_label_t){"type", msg_type_names[i]}, 1, c->messages[i]);
    rc |= oa_prom_family(out, "ocsp_agent_cluster_puts_total", OA_PROM_COUNTER,
                         "Configuration writes to the cluster store, by result.");
    for (i = 0; i < CLUSTER_PUT_RESULTS; i++)
        rc |= oa_prom_sample_u64(out, "ocsp_agent_cluster_puts_total",
                                 &(oa_prom_label_t){"result", put_result_names[i]}, 1, c->put_counts[i]);
    return rc != 0 ? UV_ENOMEM : 0;
}
