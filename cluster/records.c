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
    char *text;

    if (!cluster_synced(c) || res == NULL || res->der == NULL || res->der_len > CLUSTER_STATUS_DER_MAX)
        return;
    text = cluster_status_encode(c->node_id, c->certid, oa_time_now_ms(), res);
    if (text == NULL)
        return;
    if (c->ops->publish(c->store, c->certid, CLUSTER_DEST_STATUS, text, NULL, NULL) == 0)
        OA_LOG(OA_LOG_INFO, "cluster_status_published", OA_KV_STR("cert_status", oa_cert_status_name(res->cert_status)),
               OA_KV_INT("der_bytes", res->der_len));
    free(text);
}

void oa_cluster_publish_state(oa_cluster_t *c, const oa_sched_view_t *v)
{
    bool invalidated = v->state == OA_STATE_INVALIDATED;
    char *text;

    if (!cluster_synced(c))
        return;
    text = cluster_state_encode(c->node_id, c->certid, oa_time_now_ms(), v);
    if (text == NULL)
        return;
    /* An invalidation replaces the stored response too: a node that reads the store later must not serve it. */
    if (c->ops->publish(c->store, c->certid, invalidated ? CLUSTER_DEST_SCHED_STATUS : CLUSTER_DEST_SCHED, text, NULL,
                        NULL) == 0)
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

void cluster_records_apply(oa_cluster_t *c, json_t *const rec[2])
{
    json_t *o[2] = {rec[0], rec[1]};
    const char *type;
    size_t i;

    /* The older record first, so that the newer one has the last word. */
    if (o[0] != NULL && o[1] != NULL &&
        cluster_records_swap(cluster_json_int(o[0], "seq", 0), cluster_json_int(o[1], "seq", 0))) {
        o[0] = rec[1];
        o[1] = rec[0];
    }
    for (i = 0; i < 2; i++) {
        type = json_string_value(json_object_get(o[i], "type"));
        if (o[i] != NULL && type != NULL)
            handle_record(c, o[i], type, true);
    }
}
