/*
 * The status and state records (oa_cluster.h: their texts, their numbers and which one wins): publishing them, and
 * applying them from the channel or as read back at resynchronisation; a node applies only its own CertID's. Which
 * CertID is its own, which number is news, in which order a pair is applied and whose records are skipped are
 * rules.c's decisions.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"
#include "oa_util.h"

void oa_cluster_publish_result(oa_cluster_t *c, const oa_ocsp_result_t *res)
{
    oa_redis_t *r = cluster_ready_cmd(c);
    char *text;

    if (r == NULL || !c->synced || res == NULL || res->der == NULL || res->der_len > CLUSTER_STATUS_DER_MAX)
        return;
    text = cluster_status_encode(c->node_id, c->certid, oa_time_now_ms(), res);
    if (text == NULL)
        return;
    if (oa_redis_command(r, NULL, NULL, "EVAL %s 3 %s %s %s %s", cluster_lua_publish, CLUSTER_K_SEQ,
                         CLUSTER_K_EVENTS, c->k_status, text) == 0)
        OA_LOG(OA_LOG_INFO, "cluster_status_published", OA_KV_STR("cert_status", oa_cert_status_name(res->cert_status)),
               OA_KV_INT("der_bytes", res->der_len));
    free(text);
}

void oa_cluster_publish_state(oa_cluster_t *c, const oa_sched_view_t *v)
{
    oa_redis_t *r = cluster_ready_cmd(c);
    bool invalidated = v->state == OA_STATE_INVALIDATED;
    char *text;
    int rc;

    if (r == NULL || !c->synced)
        return;
    text = cluster_state_encode(c->node_id, c->certid, oa_time_now_ms(), v);
    if (text == NULL)
        return;
    /* An invalidation replaces the stored response too: a node that reads the store later must not serve it. */
    if (invalidated)
        rc = oa_redis_command(r, NULL, NULL, "EVAL %s 4 %s %s %s %s %s", cluster_lua_publish, CLUSTER_K_SEQ,
                              CLUSTER_K_EVENTS, c->k_sched, c->k_status, text);
    else
        rc = oa_redis_command(r, NULL, NULL, "EVAL %s 3 %s %s %s %s", cluster_lua_publish, CLUSTER_K_SEQ,
                              CLUSTER_K_EVENTS, c->k_sched, text);
    if (rc == 0)
        OA_LOG(invalidated ? OA_LOG_INFO : OA_LOG_DEBUG, "cluster_state_published",
               OA_KV_STR("state", oa_sched_state_name(v->state)), OA_KV_STR("error_code", v->last_error_code),
               OA_KV_INT("consecutive_failures", v->consecutive_failures));
    free(text);
}

/* Whether the record o, from node, is skipped here (rules.c). */
static bool skipped(const oa_cluster_t *c, const char *node, bool from_store)
{
    return cluster_record_skipped(strcmp(node, c->node_id) == 0, from_store, c->poller);
}

/* A status record, from the channel or read back at resynchronisation. */
static void handle_status(oa_cluster_t *c, json_t *o, bool from_store)
{
    const char *node = json_string_value(json_object_get(o, "node"));
    unsigned char *der;
    size_t len;

    if (node == NULL || skipped(c, node, from_store))
        return;
    der = cluster_status_der(o, &len);
    if (der != NULL && c->hooks.status != NULL)
        c->hooks.status(c->hooks.data, der, len, cluster_json_int(o, "ts", oa_time_now_ms()), node);
    free(der);
}

/* A state record, from the channel or read back at resynchronisation. */
static void handle_state(oa_cluster_t *c, json_t *o, bool from_store)
{
    const char *node = json_string_value(json_object_get(o, "node"));
    oa_sched_view_t v;

    if (node == NULL || cluster_state_decode(o, &v) != 0 || skipped(c, node, from_store))
        return;
    if (c->hooks.state != NULL)
        c->hooks.state(c->hooks.data, &v, node);
}

static void handle_record(oa_cluster_t *c, json_t *o, const char *type, bool from_store)
{
    /* Another certificate's records are no concern of this node's (and do not move its numbering either: the
     * records of its own CertID are numbered from the same counter, read back or not). */
    if (!cluster_record_is_mine(c->certid, json_string_value(json_object_get(o, "certid"))))
        return;
    if (!cluster_seq_accept(&c->last_seq, cluster_json_int(o, "seq", 0)))
        return;
    if (strcmp(type, "status") == 0)
        handle_status(c, o, from_store);
    else if (strcmp(type, "state") == 0)
        handle_state(c, o, from_store);
}

void cluster_record_message(oa_cluster_t *c, json_t *o, const char *type)
{
    handle_record(c, o, type, false);
}

void cluster_records_read(oa_cluster_t *c, const redisReply *reply)
{
    json_t *rec[2] = {NULL, NULL}, *o;
    const char *type;
    size_t i;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2)
        return;
    for (i = 0; i < 2; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            rec[i] = json_loadb(reply->element[i]->str, reply->element[i]->len, 0, NULL);
    /* The older record first, so that the newer one has the last word. */
    if (rec[0] != NULL && rec[1] != NULL &&
        cluster_records_swap(cluster_json_int(rec[0], "seq", 0), cluster_json_int(rec[1], "seq", 0))) {
        o = rec[0];
        rec[0] = rec[1];
        rec[1] = o;
    }
    for (i = 0; i < 2; i++) {
        type = json_string_value(json_object_get(rec[i], "type"));
        if (rec[i] != NULL && type != NULL)
            handle_record(c, rec[i], type, true);
    }
    json_decref(rec[0]);
    json_decref(rec[1]);
}
