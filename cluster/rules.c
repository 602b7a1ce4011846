/*
 * The decisions of cluster mode, as pure functions: no Redis, no loop, no log, nothing but their arguments. The
 * rules they implement are those of the store protocol in oa_cluster.h; the Lua scripts (scripts.c) apply the
 * store's side of them, these the node's.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "cluster_internal.h"

bool cluster_epoch_valid(const char *s, size_t len)
{
    size_t i;

    if (s == NULL || len == 0 || len > CLUSTER_EPOCH_LEN)
        return false;
    for (i = 0; i < len; i++)
        if (!isdigit((unsigned char)s[i]) && (s[i] < 'a' || s[i] > 'f'))
            return false;
    return true;
}

bool cluster_conf_is_news(const cluster_conf_pos_t *pos, const char *epoch, uint64_t version)
{
    /* A new epoch wins even at a lower version: the store lost what the node knew, and its new life is the truth.
     * The epoch just left is the exception: its late messages were overtaken on the other connection. */
    if (strcmp(epoch, pos->epoch) != 0)
        return strcmp(epoch, pos->prev_epoch) != 0;
    return version > pos->version;
}

bool cluster_conf_message_applies(const cluster_conf_pos_t *pos, const char *epoch, uint64_t version, bool own,
                                  unsigned cas_owed)
{
    if (!cluster_conf_is_news(pos, epoch, version))
        return false;
    /* This node's own write is put in force by the reply to it, under the PUT's user: while a reply is owed the
     * message waits for it (or, if the connection goes first, for the resynchronisation that follows). A message of
     * its own with no reply owed is a write whose reply it will never see. */
    return !(own && cas_owed > 0);
}

cluster_seed_action_t cluster_seed_action(const cluster_conf_pos_t *pos, bool conf_live, const char *epoch,
                                          uint64_t version, bool readable)
{
    /* The store is the truth once read, whatever the versions, except for a newer configuration of the same epoch
     * applied from a message while the seed was on its way. */
    if (conf_live && strcmp(epoch, pos->epoch) == 0 && version < pos->version)
        return CLUSTER_SEED_KEEP;
    if (readable)
        return CLUSTER_SEED_ADOPT;
    if (version != pos->version || strcmp(epoch, pos->epoch) != 0)
        return CLUSTER_SEED_REBASE;
    return CLUSTER_SEED_NOTHING;
}

bool cluster_seq_accept(uint64_t *last_seq, int64_t seq)
{
    if (seq <= 0)
        return true;
    if ((uint64_t)seq <= *last_seq)
        return false;
    *last_seq = (uint64_t)seq;
    return true;
}

bool cluster_records_swap(int64_t first_seq, int64_t second_seq)
{
    return second_seq < first_seq;
}

bool cluster_record_skipped(bool own, bool from_store, bool poller)
{
    /* The poller's own memory is the truth; a record it wrote earlier may be older than what it knows now. */
    return own && (!from_store || poller);
}

bool cluster_certid_valid(const char *s)
{
    size_t i;

    if (s == NULL || strlen(s) != OA_CLUSTER_CERTID_LEN)
        return false;
    for (i = 0; i < OA_CLUSTER_CERTID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int cluster_certid_key(char *out, size_t size, const char *name, const char *certid)
{
    int n;

    if (size > 0)
        out[0] = '\0';
    if (!cluster_certid_valid(certid) || size == 0)
        return -1;
    n = snprintf(out, size, "%s%s%s", OA_CLUSTER_KEY_PREFIX, name, certid);
    if (n < 0 || (size_t)n >= size) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

bool cluster_record_is_mine(const char *mine, const char *record_certid)
{
    return mine != NULL && record_certid != NULL && strcmp(mine, record_certid) == 0;
}

void cluster_registry_view_init(cluster_registry_view_t *v)
{
    memset(v, 0, sizeof(*v));
}

void cluster_registry_view_add(cluster_registry_view_t *v, const char *entry, size_t len)
{
    json_t *o = json_loadb(entry, len, 0, NULL);
    json_t *caps = json_object_get(o, "capabilities");
    const char *id = json_string_value(json_object_get(o, "node_id"));
    bool has = false;
    size_t j, n;

    if (id != NULL) {
        v->live++;
        for (j = 0; json_is_array(caps) && j < json_array_size(caps); j++)
            if (json_is_string(json_array_get(caps, j)) &&
                strcmp(json_string_value(json_array_get(caps, j)), "ocsp") == 0)
                has = true;
        n = strlen(v->members);
        snprintf(v->members + n, sizeof(v->members) - n, "%s%s", v->members[0] ? "," : "", id);
        if (!has) {
            v->lacking_count++;
            n = strlen(v->lacking);
            snprintf(v->lacking + n, sizeof(v->lacking) - n, "%s%s", v->lacking[0] ? ", " : "", id);
        }
    }
    json_decref(o);
}

bool cluster_registry_view_changed(const cluster_registry_view_t *a, const cluster_registry_view_t *b)
{
    /* The order of SMEMBERS is arbitrary: compare as sets would be exact, but a changed order only costs a line. */
    return strcmp(a->members, b->members) != 0 || strcmp(a->lacking, b->lacking) != 0;
}

int cluster_capability_check(const char *lacking, oa_error_t *err)
{
    if (lacking[0] == '\0')
        return 0;
    return oa_error_set(err, OA_E_UNSUPPORTED_BY_CAPABILITY,
                        "OCSP is not supported by every node of the cluster: %s lack%s the ocsp capability.", lacking,
                        strchr(lacking, ',') != NULL ? "" : "s");
}

uint64_t cluster_lease_deadline(uint64_t sent, unsigned lease_ms)
{
    return sent + lease_ms - lease_ms / 10;
}

bool cluster_store_stalled(uint64_t now, bool hb_owed, uint64_t hb_sent, unsigned node_ttl_ms, bool lease_owed,
                           uint64_t lease_sent, unsigned lease_ms)
{
    return (hb_owed && now - hb_sent > node_ttl_ms) || (lease_owed && now - lease_sent > lease_ms);
}

unsigned cluster_backoff_next(unsigned backoff_ms, unsigned max_ms)
{
    return backoff_ms * 2 > max_ms ? max_ms : backoff_ms * 2;
}
