/*
 * The etcd store's session, registry and poller lease (store_etcd.c describes the keys). The session is one etcd
 * lease per node, renewed by every heartbeat; the node's registry entry and, on the poller, the CertID's lease key
 * are attached to it, so etcd deletes both when the node dies or stays paused past it. The poller remembers its
 * lease key's create_revision, which fences its record writes (store_etcd.c, publish).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_log.h"
#include "oa_util.h"
#include "store_etcd.h"

/* ---- the session, the registry and the lease ---- */

static void session_renewed(cluster_store_t *s, uint64_t sent, int64_t ttl_s)
{
    s->renewed_sent = sent;
    s->renewed_ttl_ms = ttl_s > 0 ? (uint64_t)ttl_s * 1000 : 0;
}

/* The session is gone (expired while the node was cut off or paused): so are its registry entry and its lease. */
static void session_lost(cluster_store_t *s)
{
    s->session = 0;
    s->entry_key[0] = '\0';
    free(s->entry);
    s->entry = NULL;
    s->lease_create = 0;
}

/* Renews the session this node has (stage 0), or grants one when it has none (stage 1), for q. */
static int session_renew(cluster_store_t *s, etcd_req_t *q, oa_etcd_cb cb)
{
    if (s->session != 0)
        return oa_etcd_lease_keepalive(s->client, s->session, cb, q);
    q->stage = 1;
    return oa_etcd_lease_grant(s->client, s->session_ttl_s, cb, q);
}

/* Whether a renewal (stage 0) found the session gone. */
static bool session_expired(const etcd_req_t *q, const oa_etcd_result_t *r)
{
    return q->stage == 0 && (r->err == OA_ETCD_E_NOT_FOUND || (r->err == OA_ETCD_OK && r->ttl <= 0));
}

/* What a renewal's (or grant's) answer means for the request that asked. */
typedef enum session_step_e {
    SESSION_OK,         /* the session is renewed (or granted) and recorded */
    SESSION_REGRANTING, /* the renewal found it expired: a new one is asked for, the callback fires again */
    SESSION_FAILED,     /* no session: r says why, or the new grant could not be sent */
} session_step_t;

static session_step_t session_step(etcd_req_t *q, const oa_etcd_result_t *r, oa_etcd_cb again)
{
    cluster_store_t *s = q->s;

    if (session_expired(q, r)) {
        /* Expired while this node was cut off or paused: a new one, and everything the old one held is written
         * again under it. */
        OA_LOG(OA_LOG_WARN, "cluster_session_expired", OA_KV_INT("lease", s->session));
        session_lost(s);
        q->sent = uv_now(s->c->loop);
        return session_renew(s, q, again) == 0 ? SESSION_REGRANTING : SESSION_FAILED;
    }
    if (r->err != OA_ETCD_OK)
        return SESSION_FAILED;
    if (q->stage == 1)
        s->session = r->lease;
    session_renewed(s, q->sent, r->ttl);
    return SESSION_OK;
}

static void heartbeat_registry(etcd_req_t *q);
static void cleanup_records(cluster_store_t *s, const oa_etcd_result_t *r);

static void on_hb_registry(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_ok(data, r, "heartbeat");
    cluster_registry_view_t view;
    cluster_store_reply_t rep;
    cluster_store_t *s;
    size_t i;

    (void)e;
    if (q == NULL)
        return;
    s = q->s;
    if (q->entry != NULL) {
        /* The entry now stands under this session. */
        estore_node_key(s->entry_key, q->certid, s->c->node_id);
        free(s->entry);
        s->entry = q->entry;
        q->entry = NULL;
    }
    cluster_registry_view_init(&view);
    for (i = 0; i < r->n_kvs; i++)
        cluster_registry_view_add(&view, (const char *)r->kvs[i].value, r->kvs[i].value_len);
    if (++s->heartbeats % ETCD_CLEANUP_EVERY == 0)
        cleanup_records(s, r);
    memset(&rep, 0, sizeof(rep));
    rep.outcome = CLUSTER_STORE_DONE;
    rep.view = &view;
    estore_req_answer(q, &rep);
    estore_req_free(q);
}

static void on_hb_session(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_from(data, r);

    (void)e;
    if (q == NULL)
        return;
    switch (session_step(q, r, on_hb_session)) {
    case SESSION_REGRANTING:
        return;
    case SESSION_FAILED:
        if (!estore_req_failed(q, r, "heartbeat"))
            estore_req_answer_outcome(q, CLUSTER_STORE_UNAVAILABLE);
        estore_req_free(q);
        return;
    case SESSION_OK:
        heartbeat_registry(q);
        return;
    }
}

/* The registry step of a heartbeat: the entry written when this session has not got it yet (or it changed), the
 * entry of a CertID held before deleted, and every entry read, in one transaction. */
static void heartbeat_registry(etcd_req_t *q)
{
    cluster_store_t *s = q->s;
    char key[ETCD_KEY_MAX], prefix[] = ETCD_PREFIX "node/";
    unsigned char end[sizeof(prefix)];
    size_t end_len, n = 0;
    oa_etcd_op_t ops[3];
    bool write;

    estore_node_key(key, q->certid, s->c->node_id);
    oa_etcd_prefix_end(prefix, strlen(prefix), end, &end_len);
    write = s->entry == NULL || strcmp(s->entry_key, key) != 0 || strcmp(s->entry, q->entry) != 0;
    memset(ops, 0, sizeof(ops));
    if (write && s->entry_key[0] != '\0' && strcmp(s->entry_key, key) != 0)
        ops[n++] = (oa_etcd_op_t){.kind = OA_ETCD_OP_DELETE, .key = s->entry_key, .key_len = strlen(s->entry_key)};
    if (write)
        ops[n++] = (oa_etcd_op_t){.kind = OA_ETCD_OP_PUT,
                                  .key = key,
                                  .key_len = strlen(key),
                                  .value = q->entry,
                                  .value_len = strlen(q->entry),
                                  .lease = s->session};
    else {
        free(q->entry);
        q->entry = NULL;
    }
    ops[n++] = (oa_etcd_op_t){.kind = OA_ETCD_OP_RANGE,
                              .key = prefix,
                              .key_len = strlen(prefix),
                              .range_end = end,
                              .range_end_len = end_len};
    if (oa_etcd_txn(s->client, NULL, 0, ops, n, NULL, 0, on_hb_registry, q) != 0) {
        estore_req_answer_outcome(q, CLUSTER_STORE_UNAVAILABLE);
        estore_req_free(q);
    }
}

int estore_heartbeat(cluster_store_t *s, const char *entry, const char *certid, cluster_store_cb cb, void *data)
{
    etcd_req_t *q;

    if (s->client == NULL || (q = estore_req_new(s, REQ_HEARTBEAT, cb, data)) == NULL)
        return s->client == NULL ? UV_ENOTCONN : UV_ENOMEM;
    snprintf(q->certid, sizeof(q->certid), "%s", certid);
    q->entry = strdup(entry);
    if (q->entry == NULL)
        return estore_req_sent(q, UV_ENOMEM);
    return estore_req_sent(q, session_renew(s, q, on_hb_session));
}

/* The records of a CertID no live node holds are deleted, each by a transaction that checks in the store that no
 * registry entry names it (the view may be older than a node that just came with it). Nothing answers. */
static void on_cleanup(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_from(data, r);

    (void)e;
    if (q == NULL)
        return;
    if (r->err == OA_ETCD_OK && r->deleted > 0)
        OA_LOG(OA_LOG_INFO, "cluster_certid_records_removed", OA_KV_STR("certid", q->certid));
    estore_req_free(q);
}

static void cleanup_certid(cluster_store_t *s, const char *certid)
{
    char holders[ETCD_KEY_MAX], status[ETCD_KEY_MAX], sched[ETCD_KEY_MAX];
    unsigned char end[ETCD_KEY_MAX];
    size_t end_len;
    oa_etcd_op_t ops[2];
    oa_etcd_cmp_t cmp;
    etcd_req_t *q = estore_req_new(s, REQ_OTHER, NULL, NULL);

    if (q == NULL)
        return;
    snprintf(q->certid, sizeof(q->certid), "%s", certid);
    snprintf(holders, sizeof(holders), ETCD_PREFIX "node/%s/", certid);
    oa_etcd_prefix_end(holders, strlen(holders), end, &end_len);
    estore_key(status, "status", certid);
    estore_key(sched, "sched", certid);
    cmp = (oa_etcd_cmp_t){.key = holders,
                          .key_len = strlen(holders),
                          .range_end = end,
                          .range_end_len = end_len,
                          .target = OA_ETCD_TARGET_CREATE,
                          .result = OA_ETCD_EQUAL,
                          .number = 0};
    memset(ops, 0, sizeof(ops));
    ops[0] = (oa_etcd_op_t){.kind = OA_ETCD_OP_DELETE, .key = status, .key_len = strlen(status)};
    ops[1] = (oa_etcd_op_t){.kind = OA_ETCD_OP_DELETE, .key = sched, .key_len = strlen(sched)};
    if (oa_etcd_txn(s->client, &cmp, 1, ops, 2, NULL, 0, on_cleanup, q) != 0)
        estore_req_free(q);
}

/* The CertID a record key names (status/<C> or sched/<C>) into certid; false when kv is no record key. */
static bool record_certid(const oa_etcd_kv_t *kv, char certid[OA_CLUSTER_CERTID_LEN + 1])
{
    static const char *const kinds[] = {ETCD_PREFIX "status/", ETCD_PREFIX "sched/"};
    size_t i, n;

    for (i = 0; i < OA_ARRAY_SIZE(kinds); i++) {
        n = strlen(kinds[i]);
        if (kv->key_len == n + OA_CLUSTER_CERTID_LEN && estore_key_starts(kv, kinds[i])) {
            memcpy(certid, kv->key + n, OA_CLUSTER_CERTID_LEN);
            certid[OA_CLUSTER_CERTID_LEN] = '\0';
            return cluster_certid_valid(certid);
        }
    }
    return false;
}

static void on_records_list(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_from(data, r);
    char certid[OA_CLUSTER_CERTID_LEN + 1];
    size_t i;

    (void)e;
    if (q == NULL)
        return;
    /* q->entry lists the CertIDs the heartbeat saw held, one per line: the others are candidates, each checked
     * again in the store by its own transaction. */
    for (i = 0; r->err == OA_ETCD_OK && i < r->n_kvs; i++)
        if (record_certid(&r->kvs[i], certid) && strstr(q->entry, certid) == NULL)
            cleanup_certid(q->s, certid);
    estore_req_free(q);
}

/* Looks for the records of CertIDs that no entry of the heartbeat's read (r) names. */
static void cleanup_records(cluster_store_t *s, const oa_etcd_result_t *r)
{
    char status[] = ETCD_PREFIX "status/", sched[] = ETCD_PREFIX "sched/";
    char held[4096] = "", certid[OA_CLUSTER_CERTID_LEN + 1];
    const size_t nlen = strlen(ETCD_PREFIX "node/");
    unsigned char status_end[sizeof(status)], sched_end[sizeof(sched)];
    size_t status_end_len, sched_end_len, i, used = 0;
    oa_etcd_op_t ops[2];
    etcd_req_t *q;

    for (i = 0; i < r->n_kvs; i++) {
        if (r->kvs[i].key_len < nlen + OA_CLUSTER_CERTID_LEN || used + OA_CLUSTER_CERTID_LEN + 2 > sizeof(held))
            continue;
        memcpy(certid, r->kvs[i].key + nlen, OA_CLUSTER_CERTID_LEN);
        certid[OA_CLUSTER_CERTID_LEN] = '\0';
        if (strstr(held, certid) == NULL)
            used += (size_t)snprintf(held + used, sizeof(held) - used, "%s\n", certid);
    }
    if ((q = estore_req_new(s, REQ_OTHER, NULL, NULL)) == NULL)
        return;
    q->entry = strdup(held);
    oa_etcd_prefix_end(status, strlen(status), status_end, &status_end_len);
    oa_etcd_prefix_end(sched, strlen(sched), sched_end, &sched_end_len);
    memset(ops, 0, sizeof(ops));
    ops[0] = (oa_etcd_op_t){.kind = OA_ETCD_OP_RANGE,
                            .key = status,
                            .key_len = strlen(status),
                            .range_end = status_end,
                            .range_end_len = status_end_len};
    ops[1] = (oa_etcd_op_t){.kind = OA_ETCD_OP_RANGE,
                            .key = sched,
                            .key_len = strlen(sched),
                            .range_end = sched_end,
                            .range_end_len = sched_end_len};
    if (q->entry == NULL || oa_etcd_txn(s->client, NULL, 0, ops, 2, NULL, 0, on_records_list, q) != 0)
        estore_req_free(q);
}

static void on_lease(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_ok(data, r, "lease");
    cluster_store_reply_t rep;
    cluster_store_t *s;
    const oa_etcd_kv_t *kv;
    int64_t created = 0;

    (void)e;
    if (q == NULL)
        return;
    s = q->s;
    kv = r->n_kvs > 0 ? &r->kvs[0] : NULL;
    if (r->succeeded)
        created = r->revision;
    if (created != 0 && q->ask <= s->released_after && strcmp(q->certid, s->released_certid) == 0) {
        /* Given up while this request was on its way, on another connection that may have overtaken it: the key
         * this request made goes too, or it would live as long as this node's session. */
        estore_lease_release(s, q->certid);
        created = 0;
    } else if (kv != NULL && kv->lease == s->session && kv->value_len == strlen(s->c->node_id) &&
               memcmp(kv->value, s->c->node_id, kv->value_len) == 0)
        created = kv->create_revision;
    memset(&rep, 0, sizeof(rep));
    rep.outcome = CLUSTER_STORE_DONE;
    rep.lease_held = created != 0 && s->session != 0;
    if (rep.lease_held) {
        snprintf(s->lease_certid, sizeof(s->lease_certid), "%s", q->certid);
        s->lease_create = created;
        /* The key lives as long as the session, which the last renewal keeps for its TTL from when it left. */
        rep.lease_until = cluster_lease_deadline(s->renewed_sent, (unsigned)s->renewed_ttl_ms);
    } else if (strcmp(s->lease_certid, q->certid) == 0) {
        s->lease_create = 0;
    }
    estore_req_answer(q, &rep);
    estore_req_free(q);
}

int estore_lease(cluster_store_t *s, const char *certid, bool poller, cluster_store_cb cb, void *data)
{
    char key[ETCD_KEY_MAX];
    oa_etcd_op_t put, get;
    oa_etcd_cmp_t cmp;
    etcd_req_t *q;
    int rc;

    (void)poller; /* a poller's lease lives with its session, which the heartbeat renews; asking checks it is ours */
    if (s->client == NULL || s->session == 0)
        return UV_ENOTCONN;
    if ((q = estore_req_new(s, REQ_LEASE, cb, data)) == NULL)
        return UV_ENOMEM;
    snprintf(q->certid, sizeof(q->certid), "%s", certid);
    q->ask = ++s->lease_asks;
    estore_key(key, "lease", certid);
    cmp = (oa_etcd_cmp_t){
        .key = key, .key_len = strlen(key), .target = OA_ETCD_TARGET_CREATE, .result = OA_ETCD_EQUAL, .number = 0};
    put = (oa_etcd_op_t){.kind = OA_ETCD_OP_PUT,
                         .key = key,
                         .key_len = strlen(key),
                         .value = s->c->node_id,
                         .value_len = strlen(s->c->node_id),
                         .lease = s->session};
    get = (oa_etcd_op_t){.kind = OA_ETCD_OP_RANGE, .key = key, .key_len = strlen(key)};
    rc = oa_etcd_txn(s->client, &cmp, 1, &put, 1, &get, 1, on_lease, q);
    return estore_req_sent(q, rc);
}

static void on_released(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_from(data, r);

    (void)e;
    if (q != NULL)
        estore_req_free(q);
}

void estore_lease_release(cluster_store_t *s, const char *certid)
{
    char key[ETCD_KEY_MAX];
    oa_etcd_op_t del;
    oa_etcd_cmp_t cmp;
    etcd_req_t *q;

    if (strcmp(s->lease_certid, certid) == 0)
        s->lease_create = 0;
    s->released_after = s->lease_asks;
    snprintf(s->released_certid, sizeof(s->released_certid), "%s", certid);
    if (s->client == NULL || s->session == 0 || (q = estore_req_new(s, REQ_OTHER, NULL, NULL)) == NULL)
        return;
    estore_key(key, "lease", certid);
    /* Deleted only while it is this session's. */
    cmp = (oa_etcd_cmp_t){.key = key,
                          .key_len = strlen(key),
                          .target = OA_ETCD_TARGET_LEASE,
                          .result = OA_ETCD_EQUAL,
                          .number = s->session};
    del = (oa_etcd_op_t){.kind = OA_ETCD_OP_DELETE, .key = key, .key_len = strlen(key)};
    if (oa_etcd_txn(s->client, &cmp, 1, &del, 1, NULL, 0, on_released, q) != 0)
        estore_req_free(q);
}

/* ---- opening the session ---- */

static void on_session(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_from(data, r);
    cluster_store_t *s;

    (void)e;
    if (q == NULL)
        return;
    s = q->s;
    switch (session_step(q, r, on_session)) {
    case SESSION_REGRANTING:
        return;
    case SESSION_FAILED:
        OA_LOG(OA_LOG_DEBUG, "cluster_store_connect_failed", OA_KV_STR("reason", r->why));
        estore_req_free(q);
        cluster_lost(s->c, r->err != OA_ETCD_OK ? r->why : "the store's session could not be opened");
        return;
    case SESSION_OK:
        estore_req_free(q);
        s->up = true;
        cluster_store_up(s->c);
        return;
    }
}

int estore_session_open(cluster_store_t *s)
{
    etcd_req_t *q = estore_req_new(s, REQ_OTHER, NULL, NULL);

    if (q == NULL)
        return UV_ENOMEM;
    return estore_req_sent(q, session_renew(s, q, on_session));
}
