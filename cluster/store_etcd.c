/*
 * The etcd store (store.h): the cluster's keys in an etcd cluster of three or five members, through the v3 JSON
 * gateway client (oa_etcd.h). Keys, all under "/ocsp-agent/":
 *   conf           the configuration, stored as its own conf message {"type":"conf","epoch","version","node","conf",
 *                  "seeded":0|1}, so that the watch hands every change to the nodes as it is
 *   node/<C>/<id>  a live node's registry entry, C the CertID it holds, attached to the node's session lease
 *   lease/<C>      the id of C's poller, attached to the poller's session lease
 *   status/<C>     C's status record, and sched/<C> its schedule state record, both without "seq": a record's number
 *                  is its key's mod_revision, which etcd makes grow with every write to the store
 *
 * Each node holds one session lease (the larger of lease_ms and node_ttl_ms, in whole seconds), renewed by every
 * heartbeat: when the node dies or stays paused past it, etcd deletes its registry entry and its poller lease.
 *
 * The guarantees of oa_cluster.h, and how they hold here:
 *   - a PUT is a transaction that writes only when the conf key's mod_revision is the one this node read with the
 *     epoch and version it holds, so two configurations never share one version; an acknowledged write is in the
 *     log of a majority, so it survives while a majority lives;
 *   - a PUT whose answer did not come back (the member died, etcd gave up on it) is reported as unknown and never
 *     sent again; the watch then tells every node what happened;
 *   - the poller's lease is the key lease/<C>, created by a transaction that finds it missing; the poller remembers
 *     the key's create_revision, and each of its record writes compares it: once the lease expired and another node
 *     created the key anew, the old poller's writes are refused (fenced), however late they arrive;
 *   - a node reads the store at every resynchronisation (the conf key, then its CertID's records) and watches the
 *     prefix from the revision of that read on: nothing written meanwhile is missed, and a revision compacted away
 *     makes it read everything again;
 *   - the registry entries of CertIDs no live node holds are gone with their session leases; the records of such a
 *     CertID are deleted by a transaction that checks, in the store, that no registry entry names it.
 *
 * The client tries every member, follows leader changes and resumes the watch on another member; this file sees a
 * failure only when no member could serve a call before its deadline (node_ttl_ms), and then reports the store as
 * lost, which the cluster handles as it does for Redis.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_log.h"
#include "oa_tls.h"
#include "oa_util.h"
#include "store_etcd.h"

/* ---- keys ---- */

void estore_key(char out[ETCD_KEY_MAX], const char *kind, const char *certid)
{
    snprintf(out, ETCD_KEY_MAX, ETCD_PREFIX "%s/%s", kind, certid);
}

void estore_node_key(char out[ETCD_KEY_MAX], const char *certid, const char *node_id)
{
    snprintf(out, ETCD_KEY_MAX, ETCD_PREFIX "node/%s/%s", certid, node_id);
}

bool estore_key_is(const oa_etcd_kv_t *kv, const char *key)
{
    return kv->key_len == strlen(key) && memcmp(kv->key, key, kv->key_len) == 0;
}

bool estore_key_starts(const oa_etcd_kv_t *kv, const char *prefix)
{
    size_t n = strlen(prefix);

    return kv->key_len >= n && memcmp(kv->key, prefix, n) == 0;
}

/* ---- requests ---- */

etcd_req_t *estore_req_new(cluster_store_t *s, req_kind_t kind, cluster_store_cb cb, void *data)
{
    etcd_req_t *q = calloc(1, sizeof(*q));

    if (q == NULL)
        return NULL;
    q->s = s;
    q->kind = kind;
    q->cb = cb;
    q->data = data;
    q->answered = cb == NULL;
    q->sent = uv_now(s->c->loop);
    q->next = s->reqs;
    if (s->reqs != NULL)
        s->reqs->prev = q;
    s->reqs = q;
    return q;
}

void estore_req_free(etcd_req_t *q)
{
    cluster_store_t *s = q->s;

    if (q->prev != NULL)
        q->prev->next = q->next;
    else if (s->reqs == q)
        s->reqs = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    free(q->conf_text);
    free(q->entry);
    free(q);
}

int estore_req_sent(etcd_req_t *q, int rc)
{
    if (rc != 0) {
        q->answered = true;
        estore_req_free(q);
    }
    return rc;
}

void estore_req_answer(etcd_req_t *q, const cluster_store_reply_t *r)
{
    if (q->answered)
        return;
    q->answered = true;
    q->cb(q->s->c, r, q->data);
}

void estore_req_answer_outcome(etcd_req_t *q, cluster_store_outcome_t outcome)
{
    estore_req_answer_why(q, outcome, NULL);
}

void estore_req_answer_why(etcd_req_t *q, cluster_store_outcome_t outcome, const char *why)
{
    cluster_store_reply_t r;

    memset(&r, 0, sizeof(r));
    r.outcome = outcome;
    r.why = why != NULL && why[0] != '\0' ? why : NULL;
    r.conf.epoch = "";
    r.conf.conf = "";
    estore_req_answer(q, &r);
}

/* A call's failure: answered as the store's outcome; a store no member could serve in time is lost. Returns true
 * when q was answered (the caller returns). */
bool estore_req_failed(etcd_req_t *q, const oa_etcd_result_t *r, const char *op)
{
    cluster_store_t *s = q->s;

    if (r->err == OA_ETCD_OK)
        return false;
    if (r->err == OA_ETCD_E_CANCELLED) {
        estore_req_answer_outcome(q, q->kind == REQ_CAS && q->stage > 0 ? CLUSTER_STORE_UNKNOWN
                                                                        : CLUSTER_STORE_UNAVAILABLE);
        return true;
    }
    if (r->err == OA_ETCD_E_UNKNOWN) {
        estore_req_answer_why(q, CLUSTER_STORE_UNKNOWN, r->why);
    } else if (r->err == OA_ETCD_E_UNAVAILABLE) {
        estore_req_answer_why(q, CLUSTER_STORE_UNAVAILABLE, r->why);
    } else {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", op), OA_KV_STR("reply", r->why),
               OA_KV_STR("error", oa_etcd_err_name(r->err)));
        estore_req_answer_why(q, CLUSTER_STORE_REFUSED, r->why);
    }
    /* No member answered within the deadline: the store is gone for this node, as a Redis that closed. */
    if (r->err == OA_ETCD_E_UNAVAILABLE && s->up && !s->c->closing)
        cluster_lost(s->c, r->why);
    return true;
}

etcd_req_t *estore_req_ok(void *data, const oa_etcd_result_t *r, const char *op)
{
    etcd_req_t *q = estore_req_from(data, r);

    if (q != NULL && estore_req_failed(q, r, op)) {
        estore_req_free(q);
        return NULL;
    }
    return q;
}

/* The etcd callback of every call: a request already answered (the store was disconnected meanwhile) only goes. */
etcd_req_t *estore_req_from(void *data, const oa_etcd_result_t *r)
{
    etcd_req_t *q = data;

    (void)r;
    if (q->detached) {
        estore_req_free(q);
        return NULL;
    }
    return q;
}

/* ---- the configuration ---- */

/* The conf key's value: the conf message of a configuration (text, the stored form) under epoch and version. NULL
 * when out of memory or when text is not JSON. */
static char *conf_value(const cluster_store_t *s, const char *epoch, uint64_t version, const char *text, int seeded)
{
    json_t *conf = json_loads(text, 0, NULL), *o;
    char *out;

    if (conf == NULL)
        return NULL;
    o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:i}", "type", "conf", "epoch", epoch, "version", (json_int_t)version,
                  "node", s->c->node_id, "conf", conf, "seeded", seeded);
    out = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return out;
}

/* What a conf value holds, as the cluster reads it; conf borrows from the value's object (NULL, or not an object,
 * when it holds no readable configuration). */
typedef struct stored_conf_s {
    char epoch[CLUSTER_EPOCH_LEN + 1];
    uint64_t version;
    bool seeded;
    json_t *conf;
} stored_conf_t;

/* Reads the conf value o (borrowed; NULL gives -1). Returns 0, or -1 when it has no valid epoch or version. */
static int stored_conf_of(json_t *o, stored_conf_t *out)
{
    const char *epoch = json_string_value(json_object_get(o, "epoch"));
    int64_t v = cluster_json_int(o, "version", -1);

    memset(out, 0, sizeof(*out));
    if (epoch == NULL || !cluster_epoch_valid(epoch, strlen(epoch)) || v < 0)
        return -1;
    snprintf(out->epoch, sizeof(out->epoch), "%s", epoch);
    out->version = (uint64_t)v;
    out->seeded = cluster_json_int(o, "seeded", 0) == 1;
    out->conf = json_object_get(o, "conf");
    return 0;
}

static json_t *kv_json(const oa_etcd_kv_t *kv)
{
    return json_loadb((const char *)kv->value, kv->value_len, 0, NULL);
}

/* Remembers what the conf key holds at mod_revision mod (0: the key is missing; epoch "" when unreadable), against
 * which the next compare-and-set is made. */
static void conf_seen(cluster_store_t *s, int64_t mod, const char *epoch, uint64_t version)
{
    s->conf_mod = mod;
    s->conf_seen = true;
    snprintf(s->conf_epoch, sizeof(s->conf_epoch), "%s", epoch);
    s->conf_version = version;
}

static void answer_conf(etcd_req_t *q, int written, const char *epoch, uint64_t version, const char *text)
{
    cluster_store_reply_t r;

    memset(&r, 0, sizeof(r));
    r.outcome = CLUSTER_STORE_DONE;
    r.conf.written = written;
    r.conf.version = version;
    r.conf.conf = text;
    r.conf.conf_len = strlen(text);
    r.conf.epoch = epoch;
    estore_req_answer(q, &r);
}

/* Answers q with what kv (the conf key as read; NULL when missing) holds, nothing written. */
static void answer_stored(etcd_req_t *q, const oa_etcd_kv_t *kv)
{
    json_t *o = kv != NULL ? kv_json(kv) : NULL;
    stored_conf_t sc;
    char *text = NULL;

    if (stored_conf_of(o, &sc) == 0 && json_is_object(sc.conf))
        text = json_dumps(sc.conf, JSON_COMPACT);
    /* A value whose configuration is unreadable is answered with its epoch and version and no configuration (the
     * cluster then compares against them, so that its next PUT replaces it); one without them, with neither. */
    conf_seen(q->s, kv != NULL ? kv->mod_revision : 0, sc.epoch, sc.version);
    answer_conf(q, 0, sc.epoch, sc.version, text != NULL ? text : "");
    free(text);
    json_decref(o);
}

/* A transaction on the conf key: put value when cmp holds, else read the key. */
static int conf_txn(cluster_store_t *s, const oa_etcd_cmp_t *cmp, const char *value, oa_etcd_cb cb, etcd_req_t *q)
{
    oa_etcd_op_t put = {.kind = OA_ETCD_OP_PUT,
                        .key = ETCD_K_CONF,
                        .key_len = strlen(ETCD_K_CONF),
                        .value = value,
                        .value_len = strlen(value)};
    oa_etcd_op_t get = {.kind = OA_ETCD_OP_RANGE, .key = ETCD_K_CONF, .key_len = strlen(ETCD_K_CONF)};

    return oa_etcd_txn(s->client, cmp, 1, &put, 1, &get, 1, cb, q);
}

static void on_seed(oa_etcd_t *e, const oa_etcd_result_t *r, void *data);

/* The seed's second step, over a configuration that was only seeded, at a lower version (or unreadable): written
 * only when the key did not change since it was read. */
static void seed_over(etcd_req_t *q, const oa_etcd_kv_t *kv, const char *epoch)
{
    cluster_store_t *s = q->s;
    oa_etcd_cmp_t cmp = {.key = ETCD_K_CONF,
                         .key_len = strlen(ETCD_K_CONF),
                         .target = OA_ETCD_TARGET_MOD,
                         .result = OA_ETCD_EQUAL,
                         .number = kv->mod_revision};
    char *value = conf_value(s, epoch, q->w.version, q->conf_text, 1);

    snprintf(q->epoch, sizeof(q->epoch), "%s", epoch);
    q->stage = 2;
    if (value == NULL || conf_txn(s, &cmp, value, on_seed, q) != 0) {
        estore_req_answer_outcome(q, CLUSTER_STORE_UNAVAILABLE);
        estore_req_free(q);
    }
    free(value);
}

static void on_seed(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_ok(data, r, "resync");
    cluster_store_t *s;
    stored_conf_t sc;
    const oa_etcd_kv_t *kv;
    bool readable;
    json_t *o;

    (void)e;
    if (q == NULL)
        return;
    s = q->s;
    /* The watch starts after what this read saw; the records are read after it, and what changes between the two
     * comes twice at worst, which the records' numbers make harmless. */
    s->watch_from = r->revision + 1;
    if (r->succeeded) {
        conf_seen(s, r->revision, q->stage == 2 ? q->epoch : q->fresh, q->w.version);
        answer_conf(q, q->stage == 2 ? 2 : 1, s->conf_epoch, q->w.version, q->conf_text);
        estore_req_free(q);
        return;
    }
    kv = r->n_kvs > 0 ? &r->kvs[0] : NULL;
    if (q->stage == 0 && kv != NULL) {
        o = kv_json(kv);
        readable = stored_conf_of(o, &sc) == 0;
        json_decref(o);
        if (!readable) {
            /* Not a configuration this agent wrote: the seed replaces it, as into an empty store. */
            seed_over(q, kv, q->fresh);
            return;
        }
        if (sc.seeded && q->w.version > sc.version) {
            /* Only seeded so far, and this node knows a newer version: the best-informed node wins. */
            seed_over(q, kv, sc.epoch);
            return;
        }
    }
    answer_stored(q, kv);
    estore_req_free(q);
}

static etcd_req_t *conf_req(cluster_store_t *s, req_kind_t kind, const cluster_conf_write_t *w, cluster_store_cb cb,
                            void *data)
{
    etcd_req_t *q;

    if (s->client == NULL)
        return NULL;
    q = estore_req_new(s, kind, cb, data);
    if (q == NULL)
        return NULL;
    q->conf_text = strdup(w->conf);
    snprintf(q->fresh, sizeof(q->fresh), "%s", w->fresh_epoch);
    q->w.version = w->version;
    if (q->conf_text == NULL) {
        q->answered = true;
        estore_req_free(q);
        return NULL;
    }
    return q;
}

static int etcd_seed(cluster_store_t *s, const cluster_conf_write_t *w, cluster_store_cb cb, void *data)
{
    etcd_req_t *q = conf_req(s, REQ_SEED, w, cb, data);
    oa_etcd_cmp_t cmp = {.key = ETCD_K_CONF,
                         .key_len = strlen(ETCD_K_CONF),
                         .target = OA_ETCD_TARGET_CREATE,
                         .result = OA_ETCD_EQUAL,
                         .number = 0};
    char *value;
    int rc;

    if (q == NULL)
        return UV_ENOMEM;
    value = conf_value(s, q->fresh, w->version, q->conf_text, 1);
    rc = value != NULL ? conf_txn(s, &cmp, value, on_seed, q) : UV_ENOMEM;
    free(value);
    return estore_req_sent(q, rc);
}

static void on_cas(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_ok(data, r, "conf_cas");
    cluster_store_t *s;

    (void)e;
    if (q == NULL)
        return;
    s = q->s;
    if (r->succeeded) {
        conf_seen(s, r->revision, q->fresh, q->w.version);
        answer_conf(q, 1, q->fresh, q->w.version, q->conf_text);
    } else {
        answer_stored(q, r->n_kvs > 0 ? &r->kvs[0] : NULL);
    }
    estore_req_free(q);
}

static int etcd_conf_cas(cluster_store_t *s, const cluster_conf_write_t *w, cluster_store_cb cb, void *data)
{
    etcd_req_t *q = conf_req(s, REQ_CAS, w, cb, data);
    oa_etcd_cmp_t cmp = {
        .key = ETCD_K_CONF, .key_len = strlen(ETCD_K_CONF), .target = OA_ETCD_TARGET_MOD, .result = OA_ETCD_EQUAL};
    char *value;
    int rc;

    if (q == NULL)
        return UV_ENOMEM;
    if (s->conf_seen && s->conf_mod == 0) {
        /* The store holds no configuration: written anyway, under a fresh epoch (a seed and the PUT at once). */
        cmp.target = OA_ETCD_TARGET_CREATE;
        cmp.number = 0;
    } else if (s->conf_seen && strcmp(s->conf_epoch, w->epoch) == 0 && s->conf_version == w->version) {
        snprintf(q->fresh, sizeof(q->fresh), "%s", w->epoch);
        cmp.number = s->conf_mod;
    } else {
        /* This node holds another version than the one last seen in the store: never written over it; the read
         * that answers tells the node what the store holds, and the PUT's next round starts from it. -1 never
         * matches a mod_revision. */
        cmp.number = -1;
    }
    q->w.version = w->version + 1;
    value = conf_value(s, q->fresh, q->w.version, q->conf_text, 0);
    q->stage = 1; /* from here on, a write whose answer is lost has an unknown outcome */
    rc = value != NULL ? conf_txn(s, &cmp, value, on_cas, q) : UV_ENOMEM;
    free(value);
    return estore_req_sent(q, rc);
}

/* ---- the records ---- */

/* A record's text with its number, the mod_revision of its key: an object to decref, or NULL. */
static json_t *record_of(const oa_etcd_kv_t *kv)
{
    json_t *o = kv_json(kv);

    if (!json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    json_object_set_new(o, "seq", json_integer(kv->mod_revision));
    return o;
}

static void watch_start(cluster_store_t *s);
static void etcd_client_close(cluster_store_t *s);

static void on_records(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_ok(data, r, "read_records");
    cluster_store_reply_t rep;
    char status[ETCD_KEY_MAX], sched[ETCD_KEY_MAX];
    size_t i;

    (void)e;
    if (q == NULL)
        return;
    estore_key(status, "status", q->certid);
    estore_key(sched, "sched", q->certid);
    memset(&rep, 0, sizeof(rep));
    rep.outcome = CLUSTER_STORE_DONE;
    for (i = 0; i < r->n_kvs; i++) {
        if (estore_key_is(&r->kvs[i], status) && rep.records[0] == NULL)
            rep.records[0] = record_of(&r->kvs[i]);
        else if (estore_key_is(&r->kvs[i], sched) && rep.records[1] == NULL)
            rep.records[1] = record_of(&r->kvs[i]);
    }
    watch_start(q->s);
    estore_req_answer(q, &rep);
    json_decref(rep.records[0]);
    json_decref(rep.records[1]);
    estore_req_free(q);
}

static int etcd_read_records(cluster_store_t *s, const char *certid, cluster_store_cb cb, void *data)
{
    char status[ETCD_KEY_MAX], sched[ETCD_KEY_MAX];
    oa_etcd_op_t ops[2];
    etcd_req_t *q;
    int rc;

    if (s->client == NULL || (q = estore_req_new(s, REQ_RECORDS, cb, data)) == NULL)
        return s->client == NULL ? UV_ENOTCONN : UV_ENOMEM;
    snprintf(q->certid, sizeof(q->certid), "%s", certid);
    estore_key(status, "status", certid);
    estore_key(sched, "sched", certid);
    memset(ops, 0, sizeof(ops));
    ops[0] = (oa_etcd_op_t){.kind = OA_ETCD_OP_RANGE, .key = status, .key_len = strlen(status)};
    ops[1] = (oa_etcd_op_t){.kind = OA_ETCD_OP_RANGE, .key = sched, .key_len = strlen(sched)};
    rc = oa_etcd_txn(s->client, NULL, 0, ops, 2, NULL, 0, on_records, q);
    return estore_req_sent(q, rc);
}

static void on_published(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = estore_req_ok(data, r, "publish");
    cluster_store_reply_t rep;

    (void)e;
    if (q == NULL)
        return;
    memset(&rep, 0, sizeof(rep));
    rep.outcome = r->succeeded ? CLUSTER_STORE_DONE : CLUSTER_STORE_FENCED;
    if (!r->succeeded)
        OA_LOG(OA_LOG_WARN, "cluster_status_fenced", OA_KV_STR("certid", q->certid),
               OA_KV_STR("reason", "the lease this node held was given to another node"));
    if (!r->succeeded && strcmp(q->s->lease_certid, q->certid) == 0)
        q->s->lease_create = 0;
    estore_req_answer(q, &rep);
    estore_req_free(q);
}

static int etcd_publish(cluster_store_t *s, const char *certid, cluster_record_dest_t dest, const char *text,
                        cluster_store_cb cb, void *data)
{
    char status[ETCD_KEY_MAX], sched[ETCD_KEY_MAX], lease[ETCD_KEY_MAX];
    oa_etcd_op_t ops[2];
    oa_etcd_cmp_t cmp;
    size_t n = 0;
    etcd_req_t *q;
    int rc;

    if (s->client == NULL)
        return UV_ENOTCONN;
    /* Only the lease holder writes records; a node that does not hold it (a follower's test, a poller whose lease
     * ran out) is refused here already. */
    if (s->lease_create == 0 || strcmp(s->lease_certid, certid) != 0) {
        OA_LOG(OA_LOG_DEBUG, "cluster_record_not_published", OA_KV_STR("certid", certid),
               OA_KV_STR("reason", "this node does not hold the certificate's lease"));
        return UV_EPERM;
    }
    if ((q = estore_req_new(s, REQ_PUBLISH, cb, data)) == NULL)
        return UV_ENOMEM;
    snprintf(q->certid, sizeof(q->certid), "%s", certid);
    estore_key(status, "status", certid);
    estore_key(sched, "sched", certid);
    estore_key(lease, "lease", certid);
    memset(ops, 0, sizeof(ops));
    if (dest != CLUSTER_DEST_STATUS)
        ops[n++] = (oa_etcd_op_t){
            .kind = OA_ETCD_OP_PUT, .key = sched, .key_len = strlen(sched), .value = text, .value_len = strlen(text)};
    if (dest != CLUSTER_DEST_SCHED)
        ops[n++] = (oa_etcd_op_t){.kind = OA_ETCD_OP_PUT,
                                  .key = status,
                                  .key_len = strlen(status),
                                  .value = text,
                                  .value_len = strlen(text)};
    /* The fence: the lease key must be the very one this node created. */
    cmp = (oa_etcd_cmp_t){.key = lease,
                          .key_len = strlen(lease),
                          .target = OA_ETCD_TARGET_CREATE,
                          .result = OA_ETCD_EQUAL,
                          .number = s->lease_create};
    rc = oa_etcd_txn(s->client, &cmp, 1, ops, n, NULL, 0, on_published, q);
    return estore_req_sent(q, rc);
}

/* ---- the watch ---- */

static void on_watch(oa_etcd_watch_t *w, const oa_etcd_watch_update_t *u, void *data)
{
    cluster_store_t *s = data;
    const size_t plen = strlen(ETCD_PREFIX);
    const oa_etcd_kv_t *kv;
    stored_conf_t sc;
    json_t *o;
    size_t i;

    if (s->watch != w)
        return; /* a watch this store stopped: its last word changes nothing */
    if (u->kind != OA_ETCD_WATCH_EVENTS) {
        s->watch = NULL;
        if (u->kind == OA_ETCD_WATCH_COMPACTED) {
            OA_LOG(OA_LOG_WARN, "cluster_watch_compacted", OA_KV_INT("compact_revision", u->compact_revision));
            cluster_store_resync(s->c);
        } else if (u->kind == OA_ETCD_WATCH_ERROR && !s->c->closing) {
            cluster_lost(s->c, u->why);
        }
        return;
    }
    for (i = 0; i < u->n_events && s->watch == w; i++) {
        kv = &u->events[i].kv;
        s->watch_from = kv->mod_revision + 1;
        if (u->events[i].type != OA_ETCD_EVENT_PUT || kv->key_len <= plen)
            continue;
        if (estore_key_is(kv, ETCD_K_CONF)) {
            o = kv_json(kv);
            stored_conf_of(o, &sc);
            conf_seen(s, kv->mod_revision, sc.epoch, sc.version);
        } else if (estore_key_starts(kv, ETCD_PREFIX "status/") || estore_key_starts(kv, ETCD_PREFIX "sched/")) {
            o = record_of(kv);
        } else {
            continue;
        }
        cluster_store_message(s->c, o);
        json_decref(o);
    }
}

static void watch_start(cluster_store_t *s)
{
    char prefix[] = ETCD_PREFIX;
    unsigned char end[sizeof(prefix)];
    size_t end_len;

    if (s->watch != NULL || s->client == NULL)
        return;
    oa_etcd_prefix_end(prefix, strlen(prefix), end, &end_len);
    if (oa_etcd_watch_start(s->client, prefix, strlen(prefix), end, end_len, s->watch_from, on_watch, s, &s->watch) !=
        0) {
        s->watch = NULL;
        cluster_lost(s->c, "the store's changes could not be watched");
    }
}

/* ---- connection ---- */

static int etcd_connect(cluster_store_t *s)
{
    oa_cluster_t *c = s->c;
    oa_etcd_options_t o;
    oa_error_t err;
    int rc;

    if (s->client != NULL)
        return 0;
    memset(&o, 0, sizeof(o));
    o.members = s->member_ptrs;
    o.n_members = s->n_members;
    o.user = s->user;
    o.password = s->password;
    o.tls = s->tls;
    o.timeout_ms = c->node_ttl_ms;
    o.attempt_timeout_ms = ETCD_ATTEMPT_MS < c->node_ttl_ms ? ETCD_ATTEMPT_MS : c->node_ttl_ms;
    if (oa_etcd_new(c->loop, &o, &s->client, &err) != 0) {
        s->client = NULL;
        return UV_EINVAL;
    }
    rc = estore_session_open(s);
    if (rc != 0)
        etcd_client_close(s);
    return rc;
}

static void on_client_gone(oa_etcd_t *e, void *data)
{
    cluster_store_t *s = data;

    (void)e;
    cluster_release(s->c);
}

/* Closes the client; the cluster outlives it (its cancelled answers come later and touch the store). */
static void etcd_client_close(cluster_store_t *s)
{
    oa_etcd_t *client = s->client;

    s->client = NULL;
    s->watch = NULL; /* stopped with the client; its last word is ignored */
    if (client == NULL)
        return;
    s->c->pending_closes++;
    oa_etcd_close(client, on_client_gone, s);
}

static void etcd_disconnect(cluster_store_t *s)
{
    etcd_req_t *q;

    s->up = false;
    /* Every call owed answers now; their etcd answers, cancelled, only free them. */
    for (q = s->reqs; q != NULL; q = q->next) {
        if (!q->answered)
            estore_req_answer_outcome(q, q->kind == REQ_CAS && q->stage > 0 ? CLUSTER_STORE_UNKNOWN
                                                                            : CLUSTER_STORE_UNAVAILABLE);
        q->detached = true;
    }
    etcd_client_close(s);
}

/* ---- life cycle ---- */

static void on_goodbye_timer_closed(uv_handle_t *h)
{
    cluster_store_t *s = h->data;

    cluster_release(s->c);
}

/* The goodbye ends: the connections go, the timer closes, and done fires (always from the loop). */
static void goodbye_end(cluster_store_t *s)
{
    if (s->goodbye_fired)
        return;
    s->goodbye_fired = true;
    etcd_disconnect(s);
    uv_timer_stop(&s->goodbye);
    s->goodbye.data = s;
    s->c->pending_closes++;
    uv_close((uv_handle_t *)&s->goodbye, on_goodbye_timer_closed);
    s->goodbye_done(s->c);
}

static void on_goodbye_timer(uv_timer_t *t)
{
    goodbye_end(oa_container_of(t, cluster_store_t, goodbye));
}

static void on_revoked(oa_etcd_t *e, const oa_etcd_result_t *r, void *data)
{
    etcd_req_t *q = data;
    cluster_store_t *s = q->s;
    bool detached = q->detached;

    (void)e;
    (void)r;
    estore_req_free(q);
    if (!detached)
        goodbye_end(s);
}

static void etcd_goodbye(cluster_store_t *s, const char *certid, bool poller, void (*done)(oa_cluster_t *c))
{
    etcd_req_t *q = NULL;

    (void)certid;
    (void)poller;
    s->goodbye_done = done;
    uv_timer_init(s->c->loop, &s->goodbye);
    /* Revoking the session deletes the registry entry and the poller's lease at once, rather than when the session
     * expires; a store that does not answer within ETCD_GOODBYE_MS is left to expire them. */
    if (s->client != NULL && s->up && s->session != 0 && (q = estore_req_new(s, REQ_OTHER, NULL, NULL)) != NULL &&
        oa_etcd_lease_revoke(s->client, s->session, on_revoked, q) == 0) {
        s->session = 0;
        uv_timer_start(&s->goodbye, on_goodbye_timer, ETCD_GOODBYE_MS, 0);
        return;
    }
    if (q != NULL)
        estore_req_free(q);
    uv_timer_start(&s->goodbye, on_goodbye_timer, 0, 0);
}

/* The client in use makes its next connections with the new context from its next reconnection. */
static int etcd_set_tls(cluster_store_t *s, SSL_CTX *ctx)
{
    return oa_tls_ctx_replace(&s->tls, ctx);
}

static void etcd_free(cluster_store_t *s)
{
    while (s->reqs != NULL)
        estore_req_free(s->reqs);
    free(s->entry);
    free(s->user);
    free(s->password);
    SSL_CTX_free(s->tls);
    free(s);
}

int cluster_store_etcd_new(oa_cluster_t *c, const oa_cluster_options_t *o, cluster_store_t **out, const char **desc,
                           oa_error_t *err)
{
    cluster_store_t *s = calloc(1, sizeof(*s));
    unsigned longest;
    size_t i;

    if (s == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    if (oa_cluster_etcd_url_parse(o->url, s->members, &s->n_members, err) != 0) {
        free(s);
        return -1;
    }
    if (o->user != NULL && o->password == NULL) {
        free(s);
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-user: needs --cluster-password");
    }
    s->c = c;
    for (i = 0; i < s->n_members; i++)
        s->member_ptrs[i] = s->members[i];
    snprintf(s->desc, sizeof(s->desc), "%s", o->url + strlen("etcd://"));
    s->user = o->user != NULL ? strdup(o->user) : NULL;
    s->password = o->user != NULL ? strdup(o->password) : NULL;
    if (o->tls != NULL && SSL_CTX_up_ref(o->tls) == 1)
        s->tls = o->tls;
    if ((o->user != NULL && (s->user == NULL || s->password == NULL)) || (o->tls != NULL && s->tls == NULL)) {
        etcd_free(s);
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    }
    /* The session outlives the longer of the poller's lease and the registry's lifetime, in whole seconds. */
    longest = c->lease_ms > c->node_ttl_ms ? c->lease_ms : c->node_ttl_ms;
    s->session_ttl_s = (longest + 999) / 1000;
    *out = s;
    *desc = s->desc;
    return 0;
}

const cluster_store_ops_t cluster_store_etcd_ops = {
    .kind = "etcd",
    /* The client already goes round the members within each call, so a reconnection is one call: tried often, it
     * finds the new leader within half a second of its election. The handshake outlives a call's deadline. */
    .backoff_max_ms = 500,
    .handshake_ms = 4000,
    .connect = etcd_connect,
    .disconnect = etcd_disconnect,
    .seed = etcd_seed,
    .conf_cas = etcd_conf_cas,
    .read_records = etcd_read_records,
    .heartbeat = estore_heartbeat,
    .lease = estore_lease,
    .lease_release = estore_lease_release,
    .publish = etcd_publish,
    .goodbye = etcd_goodbye,
    .set_tls = etcd_set_tls,
    .free = etcd_free,
};
