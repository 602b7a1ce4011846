/*
 * The etcd store's private parts, shared by store_etcd.c (the configuration, the records, the watch, the
 * connection and the life cycle) and store_etcd_session.c (the session lease, the registry, the poller's lease).
 * store_etcd.c's opening comment describes the keys and the guarantees.
 */
#ifndef OA_STORE_ETCD_H
#define OA_STORE_ETCD_H

#include "cluster_internal.h"
#include "oa_etcd.h"
#include "store.h"

#define ETCD_PREFIX        "/ocsp-agent/"
#define ETCD_K_CONF        ETCD_PREFIX "conf"
#define ETCD_KEY_MAX       (sizeof(ETCD_PREFIX) + 16 + OA_CLUSTER_CERTID_LEN + 256)
#define ETCD_ATTEMPT_MS    1000
#define ETCD_GOODBYE_MS    1000
#define ETCD_CLEANUP_EVERY 2 /* heartbeats between two looks for the records of CertIDs nobody holds */

typedef enum req_kind_e {
    REQ_SEED,
    REQ_CAS,
    REQ_RECORDS,
    REQ_HEARTBEAT,
    REQ_LEASE,
    REQ_PUBLISH,
    REQ_OTHER
} req_kind_t;

typedef struct etcd_req_s etcd_req_t;

struct cluster_store_s {
    oa_cluster_t *c;
    char desc[OA_CLUSTER_MEMBERS_MAX * OA_CLUSTER_MEMBER_MAX + 8];
    char members[OA_CLUSTER_MEMBERS_MAX][OA_CLUSTER_MEMBER_MAX];
    const char *member_ptrs[OA_CLUSTER_MEMBERS_MAX];
    size_t n_members;
    char *user, *password;
    SSL_CTX *tls; /* a reference of our own, for the next client; NULL: plain HTTP */

    oa_etcd_t *client; /* NULL while disconnected */
    oa_etcd_watch_t *watch;
    etcd_req_t *reqs; /* the calls whose callback is owed, or whose etcd answer is still to come */
    bool up;

    int64_t session;              /* the session lease's ID; 0: none */
    int64_t session_ttl_s;        /* asked for */
    uint64_t renewed_sent;        /* loop time when the last successful grant or keepalive left */
    uint64_t renewed_ttl_ms;      /* the TTL it gave */
    char entry_key[ETCD_KEY_MAX]; /* the registry key written under the current session; "" when none */
    char *entry;                  /* the entry written there */
    unsigned heartbeats;

    int64_t conf_mod; /* the conf key's mod_revision as last seen (0: missing), with its epoch and version */
    char conf_epoch[CLUSTER_EPOCH_LEN + 1];
    uint64_t conf_version;
    bool conf_seen;

    char lease_certid[OA_CLUSTER_CERTID_LEN + 1];    /* the CertID whose lease key this node created */
    int64_t lease_create;                            /* that key's create_revision; 0: no lease held */
    uint64_t lease_asks;                             /* lease requests sent so far */
    uint64_t released_after;                         /* lease_asks when a lease was last released ... */
    char released_certid[OA_CLUSTER_CERTID_LEN + 1]; /* ... and whose */

    int64_t watch_from; /* the revision the next watch starts at (the resynchronisation's read + 1) */

    uv_timer_t goodbye;
    void (*goodbye_done)(oa_cluster_t *c);
    bool goodbye_fired;
};

struct etcd_req_s {
    cluster_store_t *s;
    etcd_req_t *prev, *next;
    req_kind_t kind;
    cluster_store_cb cb;
    void *data;
    bool answered; /* cb has fired (or was never wanted) */
    bool detached; /* the store disconnected: the etcd answer only frees it */
    int stage;
    uint64_t sent;
    uint64_t ask; /* lease: its number among the lease requests */
    char certid[OA_CLUSTER_CERTID_LEN + 1];
    cluster_conf_write_t w; /* seed and cas: copies below */
    char *conf_text;
    char epoch[CLUSTER_EPOCH_LEN + 1], fresh[CLUSTER_EPOCH_LEN + 1];
    char *entry;
};

/* Keys: ETCD_PREFIX kind "/" certid; a registry entry's ETCD_PREFIX "node/" certid "/" node_id. */
void estore_key(char out[ETCD_KEY_MAX], const char *kind, const char *certid);
void estore_node_key(char out[ETCD_KEY_MAX], const char *certid, const char *node_id);
bool estore_key_is(const oa_etcd_kv_t *kv, const char *key);
bool estore_key_starts(const oa_etcd_kv_t *kv, const char *prefix);

/* A call on its way: listed in the store until its etcd answer came, answered once (cb NULL: nobody waits). */
etcd_req_t *estore_req_new(cluster_store_t *s, req_kind_t kind, cluster_store_cb cb, void *data);
void estore_req_free(etcd_req_t *q);
/* rc, after q's call was started with it: when it was not sent (rc != 0), q goes without answering. */
int estore_req_sent(etcd_req_t *q, int rc);
void estore_req_answer(etcd_req_t *q, const cluster_store_reply_t *r);
void estore_req_answer_outcome(etcd_req_t *q, cluster_store_outcome_t outcome);
/* The same with the store's sentence (NULL or "": none), for the cluster's log. */
void estore_req_answer_why(etcd_req_t *q, cluster_store_outcome_t outcome, const char *why);
/* A failed call answered as the store's outcome (a store no member served in time is lost): true when it failed. */
bool estore_req_failed(etcd_req_t *q, const oa_etcd_result_t *r, const char *op);
/* The request of an etcd answer, or NULL (freed) when the store was disconnected since. */
etcd_req_t *estore_req_from(void *data, const oa_etcd_result_t *r);
/* The same for a call whose failure is answered at once (estore_req_failed): NULL too when it failed. */
etcd_req_t *estore_req_ok(void *data, const oa_etcd_result_t *r, const char *op);

/* store_etcd_session.c */

/* Opens the session (renews the one this node has, or grants one); then cluster_store_up or cluster_lost. */
int estore_session_open(cluster_store_t *s);
int estore_heartbeat(cluster_store_t *s, const char *entry, const char *certid, cluster_store_cb cb, void *data);
int estore_lease(cluster_store_t *s, const char *certid, bool poller, cluster_store_cb cb, void *data);
void estore_lease_release(cluster_store_t *s, const char *certid);

#endif
