/*
 * The heartbeat and the lease. Every heartbeat_ms the node renews its registry entry with the heartbeat script,
 * which returns every live entry (the registry view, and from it the capability check), and asks for the lease:
 * SET NX while it is a follower, the compare-and-renew script while it is the poller. A store that accepts the
 * connection but answers neither in time counts as gone. The lease and the records are the ones of the CertID the
 * node holds; when it holds another, it gives up the old lease and follows the new CertID at once.
 */
#include <stdio.h>
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

static void request_lease(oa_cluster_t *c, oa_redis_t *r, uint64_t now);

static void on_lease_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    bool got, stale = c->lease_stale;

    c->lease_owed = false;
    c->lease_stale = false;
    if (reply == NULL || c->closing)
        return;
    /* The answer about the CertID held before: a lease got there was released right behind the request (the
     * same connection keeps the order); ask for the new CertID's now. */
    if (stale) {
        if (c->synced)
            request_lease(c, r, uv_now(c->loop));
        return;
    }
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

static void request_lease(oa_cluster_t *c, oa_redis_t *r, uint64_t now)
{
    char lease[16];
    int rc;

    snprintf(lease, sizeof(lease), "%u", c->lease_ms);
    rc = c->poller ? oa_redis_command(r, on_lease_reply, c, "EVAL %s 1 %s %s %s", cluster_lua_lease_renew, c->k_lease,
                                      c->node_id, lease)
                   : oa_redis_command(r, on_lease_reply, c, "SET %s %s NX PX %s", c->k_lease, c->node_id, lease);
    if (rc == 0) {
        c->lease_owed = true;
        c->lease_sent = now;
    }
}

static void send_heartbeat(oa_cluster_t *c, oa_redis_t *r, uint64_t now)
{
    char ttl[16];

    snprintf(ttl, sizeof(ttl), "%u", c->node_ttl_ms);
    if (oa_redis_command(r, on_heartbeat_reply, c, "EVAL %s 4 %s %s %s %s %s %s %s %s", cluster_lua_heartbeat,
                         CLUSTER_K_NODE, CLUSTER_K_NODES, CLUSTER_K_CERTIDS, OA_CLUSTER_KEY_PREFIX, c->node_id,
                         c->node_json, ttl, c->certid) == 0) {
        c->hb_owed = true;
        c->hb_sent = now;
    }
}

void cluster_tick(oa_cluster_t *c)
{
    oa_redis_t *r;
    uint64_t now = uv_now(c->loop);

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
    if (!c->hb_owed)
        send_heartbeat(c, r, now);
    if (!c->lease_owed)
        request_lease(c, r, now);
}

static void on_records_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;

    (void)r;
    if (reply != NULL && !c->closing)
        cluster_records_read(c, reply);
}

int oa_cluster_set_certid(oa_cluster_t *c, const char *certid)
{
    char lease[CLUSTER_CERTID_KEY_MAX], status[CLUSTER_CERTID_KEY_MAX], sched[CLUSTER_CERTID_KEY_MAX], *json;
    oa_redis_t *r;
    uint64_t now = uv_now(c->loop);

    if (cluster_certid_valid(certid) && strcmp(certid, c->certid) == 0)
        return 0;
    if (cluster_certid_key(lease, sizeof(lease), CLUSTER_K_LEASE, certid) != 0 ||
        cluster_certid_key(status, sizeof(status), CLUSTER_K_STATUS, certid) != 0 ||
        cluster_certid_key(sched, sizeof(sched), CLUSTER_K_SCHED, certid) != 0)
        return -1;
    json = cluster_node_entry_encode(c->node_id, c->api, c->caps, certid);
    if (json == NULL)
        return UV_ENOMEM;
    free(c->node_json);
    c->node_json = json;
    r = cluster_ready_cmd(c);
    /* The old CertID's lease goes at once (after any request for it still on its way), so that a node still
     * holding that certificate takes over without waiting for it to expire. */
    if (r != NULL)
        oa_redis_command(r, NULL, NULL, "EVAL %s 1 %s %s", cluster_lua_lease_release, c->k_lease, c->node_id);
    if (c->lease_owed)
        c->lease_stale = true;
    cluster_set_role(c, false, "the certificate changed");
    OA_LOG(OA_LOG_INFO, "cluster_certid_changed", OA_KV_STR("old_certid", c->certid), OA_KV_STR("certid", certid));
    memcpy(c->certid, certid, sizeof(c->certid));
    memcpy(c->k_lease, lease, sizeof(lease));
    memcpy(c->k_status, status, sizeof(status));
    memcpy(c->k_sched, sched, sizeof(sched));
    /* The new CertID's records come from the same counter, but this node has not seen any of them yet. */
    c->last_seq = 0;
    if (r == NULL || !c->synced)
        return 0; /* resynchronisation registers the node and reads the new CertID's records */
    if (!c->hb_owed)
        send_heartbeat(c, r, now);
    if (!c->lease_owed)
        request_lease(c, r, now);
    oa_redis_command(r, on_records_reply, c, "MGET %s %s", c->k_status, c->k_sched);
    return 0;
}

int oa_cluster_capability_check(const oa_cluster_t *c, oa_error_t *err)
{
    return cluster_capability_check(c->view.lacking, err);
}
