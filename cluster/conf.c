/*
 * Putting a configuration from the store in force: from a conf message on the channel, from the seed's reply at
 * resynchronisation, and (put.c) from a compare-and-set's reply. Which one is news is rules.c's decision; this file
 * records the epoch and version, logs and calls the conf hook.
 */
#include <stdio.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"

cluster_conf_pos_t cluster_conf_pos(const oa_cluster_t *c)
{
    cluster_conf_pos_t pos = {c->epoch, c->version, c->prev_epoch};

    return pos;
}

/* Takes epoch as the node's, remembering the one it leaves. */
static void enter_epoch(oa_cluster_t *c, const char *epoch)
{
    if (strcmp(epoch, c->epoch) != 0) {
        memcpy(c->prev_epoch, c->epoch, sizeof(c->prev_epoch));
        snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
    }
}

void cluster_conf_adopt(oa_cluster_t *c, const oa_conf_t *conf, const char *epoch, uint64_t version, const char *user,
                        const char *from)
{
    unsigned changed = oa_conf_diff(&c->conf, conf);
    bool same = changed == 0 && version == c->version;

    c->conf = *conf;
    if (strcmp(epoch, c->epoch) != 0 || version != c->version) {
        enter_epoch(c, epoch);
        c->version = version;
        cluster_version_save(c);
    }
    if (same)
        return;
    OA_LOG(OA_LOG_INFO, "cluster_conf_applied", OA_KV_INT("version", (int64_t)version), OA_KV_STR("epoch", epoch),
           OA_KV_STR("from", from), OA_KV_INT("changed", changed != 0));
    if (c->hooks.conf != NULL)
        c->hooks.conf(c->hooks.data, conf, changed, user, from);
}

void cluster_conf_message(oa_cluster_t *c, json_t *o, const char *node)
{
    cluster_conf_pos_t pos = cluster_conf_pos(c);
    int64_t v = cluster_json_int(o, "version", -1);
    const char *epoch = json_string_value(json_object_get(o, "epoch"));
    oa_conf_t conf;

    if (v < 0 || epoch == NULL || !cluster_epoch_valid(epoch, strlen(epoch)) ||
        !cluster_conf_message_applies(&pos, epoch, (uint64_t)v, strcmp(node, c->node_id) == 0, c->cas_owed))
        return;
    if (cluster_conf_decode_json(json_object_get(o, "conf"), &conf) == 0) {
        cluster_conf_adopt(c, &conf, epoch, (uint64_t)v, NULL, node);
        c->conf_live = true;
    }
}

void cluster_conf_seeded(oa_cluster_t *c, const cluster_conf_reply_t *s)
{
    cluster_conf_pos_t pos = cluster_conf_pos(c);
    oa_conf_t stored;
    bool readable;

    memset(&stored, 0, sizeof(stored));
    readable = s->conf_len > 0 && cluster_conf_decode(s->conf, s->conf_len, &stored) == 0;

    if (s->written != 0)
        OA_LOG(OA_LOG_INFO, "cluster_conf_seeded", OA_KV_INT("version", (int64_t)s->version),
               OA_KV_STR("epoch", s->epoch),
               OA_KV_STR("over", s->written == 1 ? "an empty store" : "a seeded configuration of a lower version"));
    switch (cluster_seed_action(&pos, c->conf_live, s->epoch, s->version, readable)) {
    case CLUSTER_SEED_ADOPT:
        cluster_conf_adopt(c, &stored, s->epoch, s->version, NULL, "store");
        break;
    case CLUSTER_SEED_REBASE:
        /* An unreadable stored configuration: keep ours, but compare-and-set against the store's epoch and version,
         * so that the next PUT replaces it. */
        enter_epoch(c, s->epoch);
        c->version = s->version;
        cluster_version_save(c);
        break;
    case CLUSTER_SEED_KEEP:
    case CLUSTER_SEED_NOTHING:
        break;
    }
}
