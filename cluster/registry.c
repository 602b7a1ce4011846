/*
 * The heartbeat and the lease. Every heartbeat_ms the node renews its registry entry with the heartbeat script,
 * which returns every live entry (the registry view, and from it the capability check), and asks for the lease:
 * SET NX while it is a follower, the compare-and-renew script while it is the poller. A store that accepts the
 * connection but answers neither in time counts as gone.
 */
#include <stdio.h>
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

static void on_heartbeat_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    cluster_registry_view_t view;
    size_t i;

    (void)r;
    c->hb_owed = false;
    if (reply == NULL || c->closing)
        return;
    if (reply->type != REDIS_REPLY_ARRAY) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "heartbeat"),
               OA_KV_STR("reply", cluster_reply_why(reply)));
        return;
    }
    cluster_registry_view_init(&view);
    for (i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            cluster_registry_view_add(&view, reply->element[i]->str, reply->element[i]->len);
    if (cluster_registry_view_changed(&view, &c->view))
        OA_LOG(OA_LOG_INFO, "cluster_membership", OA_KV_STR("nodes", view.members),
               OA_KV_STR("lacking_ocsp", view.lacking));
    c->view = view;
}

static void on_lease_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    bool got;

    (void)r;
    c->lease_owed = false;
    if (reply == NULL || c->closing)
        return;
    got = (reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "OK") == 0) ||
          (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    if (got) {
        /* Counted from when the request left, so this node stops believing in its lease before the store lets
         * anyone else have it. */
        c->lease_deadline = cluster_lease_deadline(c->lease_sent, c->lease_ms);
        cluster_set_role(c, true, c->poller ? "renewed" : "lease acquired");
    } else {
        if (reply->type == REDIS_REPLY_ERROR)
            OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "lease"), OA_KV_STR("reply", reply->str));
        cluster_set_role(c, false, "the lease belongs to another node");
    }
}

void cluster_tick(oa_cluster_t *c)
{
    oa_redis_t *r;
    uint64_t now = uv_now(c->loop);
    char ttl[16], lease[16];

    if (c->closing)
        return;
    if (c->poller && now >= c->lease_deadline)
        cluster_set_role(c, false, "the lease could not be renewed in time");
    /* The tick also bounds the handshake: connecting, subscribing and the first reads of the store. */
    if ((c->cmd != NULL || c->sub != NULL) && !c->synced && now - c->connect_started > CLUSTER_HANDSHAKE_TIMEOUT_MS) {
        cluster_lost(c, "the store did not complete the handshake in time");
        return;
    }
    r = cluster_ready_cmd(c);
    if (r == NULL || !c->synced)
        return;
    /* A store that accepts the connection but answers nothing is as good as gone. */
    if (cluster_store_stalled(now, c->hb_owed, c->hb_sent, c->node_ttl_ms, c->lease_owed, c->lease_sent,
                              c->lease_ms)) {
        cluster_lost(c, "the store stopped answering");
        return;
    }
    snprintf(ttl, sizeof(ttl), "%u", c->node_ttl_ms);
    snprintf(lease, sizeof(lease), "%u", c->lease_ms);
    if (!c->hb_owed && oa_redis_command(r, on_heartbeat_reply, c, "EVAL %s 2 %s %s %s %s %s", cluster_lua_heartbeat,
                                        CLUSTER_K_NODE, CLUSTER_K_NODES, c->node_id, c->node_json, ttl) == 0) {
        c->hb_owed = true;
        c->hb_sent = now;
    }
    if (!c->lease_owed) {
        int rc = c->poller ? oa_redis_command(r, on_lease_reply, c, "EVAL %s 1 %s %s %s", cluster_lua_lease_renew,
                                              CLUSTER_K_LEASE, c->node_id, lease)
                           : oa_redis_command(r, on_lease_reply, c, "SET %s %s NX PX %s", CLUSTER_K_LEASE,
                                              c->node_id, lease);
        if (rc == 0) {
            c->lease_owed = true;
            c->lease_sent = now;
        }
    }
}

int oa_cluster_capability_check(const oa_cluster_t *c, oa_error_t *err)
{
    return cluster_capability_check(c->view.lacking, err);
}
