/*
 * The store a cluster runs on, behind one interface: Redis (store_redis.c: Lua scripts and Pub/Sub on one server)
 * or etcd (store_etcd.c: transactions, leases and a watch on a quorum of members). Everything above it, the
 * registry view and its capability check, the configuration's rules, the PUT rounds, the records' numbering, the
 * poller role and the outage behaviour, is written once, in cluster.c, conf.c, put.c, records.c and registry.c.
 *
 * A store knows its cluster (the oa_cluster_t that made it) and tells it what happens through the calls declared at
 * the end of this header (cluster_store_up, cluster_store_message, cluster_store_resync, cluster_lost). Every
 * operation is asynchronous: it returns 0 when it was sent, and then its callback fires exactly once from the loop,
 * never inside the call; or it returns a negative UV_E* and the callback never fires. When the store drops its
 * connections (disconnect, or a failure it reports with cluster_lost), the callbacks still owed fire before that
 * returns, with CLUSTER_STORE_UNAVAILABLE, or CLUSTER_STORE_UNKNOWN for a write that may have been applied.
 *
 * What each operation must guarantee is the store protocol of oa_cluster.h; how each store keeps it is described at
 * the top of its file.
 */
#ifndef OA_CLUSTER_STORE_H
#define OA_CLUSTER_STORE_H

#include <jansson.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "oa_cluster.h"
#include "oa_error.h"

typedef struct cluster_store_s cluster_store_t;
typedef struct cluster_registry_view_s cluster_registry_view_t;

typedef enum cluster_store_outcome_e {
    CLUSTER_STORE_DONE,        /* the store answered; the reply's fields for the operation are filled */
    CLUSTER_STORE_UNAVAILABLE, /* no answer, and nothing was written */
    CLUSTER_STORE_UNKNOWN,     /* a write reached the store but its answer did not come back: it may be applied */
    CLUSTER_STORE_REFUSED,     /* the store answered with an error (the store logged it) */
    CLUSTER_STORE_FENCED,      /* publish: the write was refused because this node no longer holds the lease */
} cluster_store_outcome_t;

/* A configuration write: the node's epoch and version (the ones it expects to find), the new configuration's stored
 * form (cluster_conf_encode) and a fresh epoch for a store found empty. Borrowed for the call. */
typedef struct cluster_conf_write_s {
    const char *epoch;
    uint64_t version;
    const char *conf;
    const char *fresh_epoch;
} cluster_conf_write_t;

/* What the store holds after a seed or a compare-and-set. */
typedef struct cluster_conf_reply_s {
    int written;      /* compare-and-set: 1 written, 0 not. seed: 0 nothing, 1 into an empty store, 2 over a seeded
                       * configuration of a lower version */
    uint64_t version; /* the stored version: the new one when written */
    const char *conf; /* the stored configuration's text ("" when none; the new one when written) */
    size_t conf_len;
    const char *epoch; /* the stored epoch, valid (cluster_epoch_valid) or "" */
} cluster_conf_reply_t;

/* The answer to one operation; borrowed for the duration of the callback. */
typedef struct cluster_store_reply_s {
    cluster_store_outcome_t outcome;
    const char *why;               /* when not DONE: the store's own sentence, or NULL when it has none */
    cluster_conf_reply_t conf;     /* seed, conf_cas */
    json_t *records[2];            /* read_records: the status and the sched record (NULL when absent), each an
                                    * object with its number in "seq" */
    cluster_registry_view_t *view; /* heartbeat: every live node's entry added (cluster_registry_view_add) */
    bool lease_held;               /* lease: this node holds the CertID's lease */
    uint64_t lease_until;          /* lease, when held: the loop time (uv_now) after which the node must not count
                                    * on it any more, a margin short of when the store can give it to another */
} cluster_store_reply_t;

typedef void (*cluster_store_cb)(oa_cluster_t *c, const cluster_store_reply_t *r, void *data);

/* Which keys a record goes to. */
typedef enum cluster_record_dest_e {
    CLUSTER_DEST_STATUS,       /* a response: status:<C> */
    CLUSTER_DEST_SCHED,        /* a schedule state: sched:<C> */
    CLUSTER_DEST_SCHED_STATUS, /* an invalidation: both */
} cluster_record_dest_t;

typedef struct cluster_store_ops_s {
    const char *kind;        /* "redis" or "etcd" */
    unsigned backoff_max_ms; /* the longest wait between two reconnections */
    unsigned handshake_ms;   /* how long connecting and the first reads of the store may take */
    /* Starts connecting. Later, from the loop, either cluster_store_up (connected, and from now on every change
     * written by any node reaches cluster_store_message) or cluster_lost. 0, or a negative UV_E*. */
    int (*connect)(cluster_store_t *s);
    /* Drops every connection (callbacks owed fire first, see above). connect may follow. */
    void (*disconnect)(cluster_store_t *s);
    /* Seeds the configuration at resynchronisation (the seed script's rules, oa_cluster.h); reply: conf. */
    int (*seed)(cluster_store_t *s, const cluster_conf_write_t *w, cluster_store_cb cb, void *data);
    /* A PUT's compare-and-set; reply: conf. */
    int (*conf_cas)(cluster_store_t *s, const cluster_conf_write_t *w, cluster_store_cb cb, void *data);
    /* Reads a CertID's status and sched records; reply: records. */
    int (*read_records)(cluster_store_t *s, const char *certid, cluster_store_cb cb, void *data);
    /* Registers (or renews) this node with its entry (cluster_node_entry_encode) and CertID, removes the records of
     * CertIDs no live node holds, and reads the registry; reply: view. */
    int (*heartbeat)(cluster_store_t *s, const char *entry, const char *certid, cluster_store_cb cb, void *data);
    /* Asks for (or renews, when this node is the poller) the CertID's lease; reply: lease_held, lease_until. */
    int (*lease)(cluster_store_t *s, const char *certid, bool poller, cluster_store_cb cb, void *data);
    /* Gives the CertID's lease up when it is this node's. Nothing answers. */
    void (*lease_release)(cluster_store_t *s, const char *certid);
    /* Stores a record (the text of an object without "seq") under dest and makes it reach every node; the store
     * numbers it. cb may be NULL. */
    int (*publish)(cluster_store_t *s, const char *certid, cluster_record_dest_t dest, const char *text,
                   cluster_store_cb cb, void *data);
    /* At shutdown: removes this node's registry entry and (poller) its lease when the store is reachable, bounded
     * in time, then drops the connections, starts closing the store's own handles (each close counted in
     * c->pending_closes and ended with cluster_release) and fires done (from the loop). Called once. */
    void (*goodbye)(cluster_store_t *s, const char *certid, bool poller, void (*done)(oa_cluster_t *c));
    /* The TLS context of later connections (a reload): 0, or UV_EINVAL when the store speaks plain TCP. */
    int (*set_tls)(cluster_store_t *s, SSL_CTX *ctx);
    /* Frees the store, once disconnected. */
    void (*free)(cluster_store_t *s);
} cluster_store_ops_t;

/* The stores. Each returns 0 with *out set, or -1 with err filled (a bad URL, a TLS URL without a context, out of
 * memory). The options' strings and TLS context are copied or referenced, not borrowed. *desc is set to the store's
 * name for the logs (kept by the store until it is freed). A store reads what it needs of its cluster (node id,
 * loop, timings) from the cluster's struct (cluster_internal.h). */

extern const cluster_store_ops_t cluster_store_redis_ops;
int cluster_store_redis_new(oa_cluster_t *c, const oa_cluster_options_t *o, cluster_store_t **out,
                            const char **desc, oa_error_t *err);
extern const cluster_store_ops_t cluster_store_etcd_ops;
int cluster_store_etcd_new(oa_cluster_t *c, const oa_cluster_options_t *o, cluster_store_t **out, const char **desc,
                           oa_error_t *err);

/* ---- what a store tells its cluster (cluster.c) ---- */

/* Connected: the cluster resynchronises (seed, read the records) and is then synchronised. */
void cluster_store_up(oa_cluster_t *c);

/* A change another node (or this one) wrote: a conf message ({"type":"conf","epoch","version","node","conf"}) or a
 * record (status or state, with its "seq"). o is borrowed. */
void cluster_store_message(oa_cluster_t *c, json_t *o);

/* The store lost track of changes (an etcd watch whose revision was compacted): read everything again. */
void cluster_store_resync(oa_cluster_t *c);

/* The store is gone (why, a sentence): the store has dropped its connections; the cluster reconnects later. */
void cluster_lost(oa_cluster_t *c, const char *why);

#endif
