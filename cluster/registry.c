/*
 * The heartbeat and the lease. Every heartbeat_ms the node renews its registry entry with the store's heartbeat,
 * which returns every live entry (the registry view, and from it the capability check), and asks for the lease
 * (for it while it is a follower, to renew it while it is the poller). A store that accepts the connection but
 * answers neither in time counts as gone. The lease and the records are the ones of the CertID the node holds;
 * when it holds another, it gives up the old lease and follows the new CertID at once.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"

void cluster_set_role(oa_cluster_t *c, bool poller, const char *why)
{
    if (c->poller == poller)
        return;
    c->poller = poller;
    OA_LOG(OA_LOG_INFO, poller ? "cluster_poller_acquired" : "cluster_poller_released", OA_KV_STR("reason", why));
    if (c->hooks.role != NULL)
        c->hooks.role(c->hooks.data, poller);
}

static void on_heartbeat(oa_cluster_t *c, const cluster_store_reply_t *r, void *data)
{
    (void)data;
    c->hb_owed = false;
    if (c->closing || r->outcome != CLUSTER_STORE_DONE)
        return;
    if (cluster_registry_view_changed(r->view, &c->view))
        OA_LOG(OA_LOG_INFO, "cluster_membership", OA_KV_STR("nodes", r->view->members),
               OA_KV_STR("lacking_ocsp", r->view->lacking));
    c->view = *r->view;
}

static void request_lease(oa_cluster_t *c, uint64_t now);

static void on_lease(oa_cluster_t *c, const cluster_store_reply_t *r, void *data)
{
    bool stale = c->lease_stale;

    (void)data;
    c->lease_owed = false;
    c->lease_stale = false;
    if (c->closing || r->outcome == CLUSTER_STORE_UNAVAILABLE || r->outcome == CLUSTER_STORE_UNKNOWN)
        return;
    /* The answer about the CertID held before: a lease got there was released right behind the request (the
     * store keeps the order); ask for the new CertID's now. */
    if (stale) {
        if (c->synced)
            request_lease(c, uv_now(c->loop));
        return;
    }
    if (r->outcome == CLUSTER_STORE_DONE && r->lease_held) {
        c->lease_deadline = r->lease_until;
        cluster_set_role(c, true, c->poller ? "renewed" : "lease acquired");
    } else {
        cluster_set_role(c, false, "the lease belongs to another node");
    }
}

static void request_lease(oa_cluster_t *c, uint64_t now)
{
    if (c->ops->lease(c->store, c->certid, c->poller, on_lease, NULL) == 0) {
        c->lease_owed = true;
        c->lease_sent = now;
    }
}

static void send_heartbeat(oa_cluster_t *c, uint64_t now)
{
    if (c->ops->heartbeat(c->store, c->node_json, c->certid, on_heartbeat, NULL) == 0) {
        c->hb_owed = true;
        c->hb_sent = now;
    }
}

void cluster_tick(oa_cluster_t *c)
{
    uint64_t now = uv_now(c->loop);

    if (c->closing)
        return;
    if (c->poller && now >= c->lease_deadline)
        cluster_set_role(c, false, "the lease could not be renewed in time");
    /* The tick also bounds the handshake: connecting, the store coming up and the first reads of it. */
    if (c->store_open && !c->synced && now - c->connect_started > c->ops->handshake_ms) {
        cluster_lost(c, "the store did not complete the handshake in time");
        return;
    }
    if (!cluster_synced(c))
        return;
    /* A store that accepts the connection but answers nothing is as good as gone. */
    if (cluster_store_stalled(now, c->hb_owed, c->hb_sent, c->node_ttl_ms, c->lease_owed, c->lease_sent,
                              c->lease_ms)) {
        cluster_lost(c, "the store stopped answering");
        return;
    }
    if (!c->hb_owed)
        send_heartbeat(c, now);
    if (!c->lease_owed)
        request_lease(c, now);
}

static void on_records(oa_cluster_t *c, const cluster_store_reply_t *r, void *data)
{
    (void)data;
    if (!c->closing && r->outcome == CLUSTER_STORE_DONE)
        cluster_records_apply(c, r->records);
}

int oa_cluster_set_certid(oa_cluster_t *c, const char *certid)
{
    char *json;
    uint64_t now = uv_now(c->loop);

    if (!cluster_certid_valid(certid))
        return -1;
    if (strcmp(certid, c->certid) == 0)
        return 0;
    json = cluster_node_entry_encode(c->node_id, c->api, c->caps, certid);
    if (json == NULL)
        return UV_ENOMEM;
    free(c->node_json);
    c->node_json = json;
    /* The old CertID's lease goes at once (after any request for it still on its way), so that a node still
     * holding that certificate takes over without waiting for it to expire. */
    if (!c->closing)
        c->ops->lease_release(c->store, c->certid);
    if (c->lease_owed)
        c->lease_stale = true;
    cluster_set_role(c, false, "the certificate changed");
    OA_LOG(OA_LOG_INFO, "cluster_certid_changed", OA_KV_STR("old_certid", c->certid), OA_KV_STR("certid", certid));
    memcpy(c->certid, certid, sizeof(c->certid));
    /* The new CertID's records come from the same counter, but this node has not seen any of them yet. */
    c->last_seq = 0;
    if (!cluster_synced(c))
        return 0; /* resynchronisation registers the node and reads the new CertID's records */
    if (!c->hb_owed)
        send_heartbeat(c, now);
    if (!c->lease_owed)
        request_lease(c, now);
    c->ops->read_records(c->store, c->certid, on_records, NULL);
    return 0;
}

int oa_cluster_capability_check(const oa_cluster_t *c, oa_error_t *err)
{
    return cluster_capability_check(c->view.lacking, err);
}
