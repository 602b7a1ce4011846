/*
 * Cluster mode's private parts, shared by the files of cluster/ and by nothing else. The store protocol (the keys
 * and their values, the scripts and what each guarantees, the channel and its messages, the rules on epochs,
 * versions and record numbers) is described once, in oa_cluster.h; this header says how the module is built.
 *
 * One concern per file:
 *   url.c          the store's URL, redis[s]://HOST:PORT/DB or etcd://HOST:PORT,...
 *   caps.c         capability lists ("ocsp,foo")
 *   rules.c        the decisions, as pure functions (no store, no loop, no log): which configuration is news, what a
 *                  node does with its seed's reply, which record wins by its number, whose records a node skips,
 *                  the registry view and its capability check, the lease's deadline, when a store counts as gone,
 *                  the reconnection backoff. tests/cluster/test_rules.c checks them from a table
 *   codec.c        the texts the store holds: the configuration, the status and state records, the registry entry
 *   version.c      <data_dir>/cluster.json (the epoch and version in force) and fresh epochs
 *   conf.c         putting a configuration from the store in force: from a message, the seed's reply, a PUT's reply
 *   put.c          PUT /v1/ocsp: the compare-and-set rounds and their time limit
 *   records.c      the status and state records: publishing them, applying them in the order of their numbers
 *   registry.c     the heartbeat, the registry view, the lease and the poller role, a change of the CertID held
 *   metrics.c      the Prometheus text, through oa_prom.h
 *   cluster.c      the store's life cycle seen from above: connecting, resynchronisation, reconnection with a
 *                  backoff, the dispatch of the store's messages, oa_cluster_new/oa_cluster_close
 *   store.h        the store interface: the operations every store implements and what it tells its cluster
 *   store_redis.c  the Redis store: its two connections, the subscription, the operations as commands and scripts,
 *                  the goodbye, its own teardown rules
 *   scripts.c      the Redis store's Lua scripts and the checks of their replies
 *   redis.c        one asynchronous Redis connection on libuv (oa_redis.h)
 *   store_etcd.c   the etcd store: its keys, the configuration by transactions on mod_revision, the records fenced
 *                  by the lease key's create_revision, the watch, the client's life cycle (store_etcd.h)
 *   store_etcd_session.c  the etcd store's session lease, registry and poller lease, and the removal of the
 *                  records of CertIDs nobody holds
 *   etcd*.c        the etcd v3 client (oa_etcd.h)
 * Only store_redis.c, scripts.c and redis.c know Redis, only store_etcd*.c the etcd keys: everything else speaks to
 * the store through its operations.
 *
 * Teardown: callbacks owed by the store fire exactly once, also when its connections drop, and do nothing once the
 * cluster is closing (a PUT's only releases its own memory). At close the store says goodbye and reports done; the
 * cluster's timers then close, and the last close callback of its timers, its PUTs' timers and the store's handles
 * frees the cluster (cluster_release), the store with it.
 */
#ifndef OA_CLUSTER_INTERNAL_H
#define OA_CLUSTER_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "oa_cluster.h"

#define CLUSTER_DEFAULT_PORT 6379
#define CLUSTER_DEFAULT_HEARTBEAT_MS 1000
#define CLUSTER_DEFAULT_NODE_TTL_MS 3000
#define CLUSTER_DEFAULT_LEASE_MS 3000
#define CLUSTER_BACKOFF_MIN_MS 100
#define CLUSTER_CLOSE_GRACE_MS 1000
#define CLUSTER_PUT_TIMEOUT_MS 3000
#define CLUSTER_PUT_MAX_ROUNDS 5
#define CLUSTER_LIST_MAX 512 /* the registry view's lists of node ids */
#define CLUSTER_EPOCH_LEN 16
#define CLUSTER_STATUS_DER_MAX (256 * 1024)

#define CLUSTER_K_CONF OA_CLUSTER_KEY_PREFIX "conf"
#define CLUSTER_K_NODE OA_CLUSTER_KEY_PREFIX "node:"
#define CLUSTER_K_NODES OA_CLUSTER_KEY_PREFIX "nodes"
#define CLUSTER_K_CERTIDS OA_CLUSTER_KEY_PREFIX "certids"
/* The records of one CertID: these names followed by its hex (cluster_certid_key). */
#define CLUSTER_K_LEASE "lease:"
#define CLUSTER_K_STATUS "status:"
#define CLUSTER_K_SCHED "sched:"
#define CLUSTER_CERTID_KEY_MAX (sizeof(OA_CLUSTER_KEY_PREFIX) + 8 + OA_CLUSTER_CERTID_LEN)
#define CLUSTER_K_SEQ OA_CLUSTER_KEY_PREFIX "seq"
#define CLUSTER_K_EVENTS OA_CLUSTER_KEY_PREFIX "events"

/* Messages counted by type, for the metrics. */
enum { CLUSTER_MSG_CONF, CLUSTER_MSG_STATUS, CLUSTER_MSG_STATE, CLUSTER_MSG_INVALID, CLUSTER_MSG_TYPES };

/* Rounds of PUT /v1/ocsp by outcome, for the metrics. */
enum {
    CLUSTER_PUT_COMMITTED,
    CLUSTER_PUT_CONFLICT_RETRY,
    CLUSTER_PUT_UNAVAILABLE,
    CLUSTER_PUT_TIMEOUT,
    CLUSTER_PUT_RESULTS
};

/* ---- rules.c: the decisions, pure ---- */

/* 1 when s (len bytes, not necessarily terminated) is an epoch as the scripts store it: 1 to CLUSTER_EPOCH_LEN
 * characters of [0-9a-f]; else 0 (also for NULL). */
bool cluster_epoch_valid(const char *s, size_t len);

/* Where a node stands: the epoch and version of the configuration in force ("" and 0 before it ever read one), and
 * the epoch it left last ("" when none). Strings borrowed. */
typedef struct cluster_conf_pos_s {
    const char *epoch;
    uint64_t version;
    const char *prev_epoch;
} cluster_conf_pos_t;

/* Whether a configuration seen on a live connection (a message, a compare-and-set's reply), of epoch and version,
 * is news at pos: an epoch other than the node's is, unless it is the one the node has just left; in the node's
 * epoch only a higher version is. */
bool cluster_conf_is_news(const cluster_conf_pos_t *pos, const char *epoch, uint64_t version);

/* Whether a conf message (epoch, version; own: written by this node) is put in force at pos. Not when it is no news;
 * not when it is this node's own write while compare-and-set replies are owed (cas_owed > 0): the reply puts that
 * write in force, under the PUT's user. */
bool cluster_conf_message_applies(const cluster_conf_pos_t *pos, const char *epoch, uint64_t version, bool own,
                                  unsigned cas_owed);

/* What a node does with its seed's reply (the store's epoch and version after the seed). */
typedef enum cluster_seed_action_e {
    CLUSTER_SEED_KEEP,   /* a message applied while the seed was on its way (conf_live) is newer: change nothing */
    CLUSTER_SEED_ADOPT,  /* put the store's configuration in force, whatever its version */
    CLUSTER_SEED_REBASE, /* the stored configuration is unreadable: keep this node's, but take the store's epoch and
                          * version, so that the next PUT replaces it */
    CLUSTER_SEED_NOTHING /* unreadable, and the epoch and version are already the node's */
} cluster_seed_action_t;

/* readable: the stored configuration was read (codec's cluster_conf_decode returned 0). */
cluster_seed_action_t cluster_seed_action(const cluster_conf_pos_t *pos, bool conf_live, const char *epoch,
                                          uint64_t version, bool readable);

/* Whether a status or state record numbered seq is news after last_seq, the highest number seen since the last
 * (re)connection; when it is, *last_seq becomes seq. A record without a number (seq <= 0) always is, and leaves
 * *last_seq alone. */
bool cluster_seq_accept(uint64_t *last_seq, int64_t seq);

/* Whether two records read together (status and sched) must be swapped so that the older comes first and the newer
 * has the last word: when the second's number is below the first's. */
bool cluster_records_swap(int64_t first_seq, int64_t second_seq);

/* Whether a record is skipped: one this node wrote (own) is, when it came on the channel or when this node is the
 * poller, whose memory is the truth; one read back from the store by a follower is not (it may be a poller's
 * earlier self). */
bool cluster_record_skipped(bool own, bool from_store, bool poller);

/* The registry as the last heartbeat saw it. */
typedef struct cluster_registry_view_s {
    char members[CLUSTER_LIST_MAX]; /* live node ids, ","-separated, for the membership log line */
    char lacking[CLUSTER_LIST_MAX]; /* those without "ocsp", ", "-separated; "" when none */
    unsigned live;
    unsigned lacking_count;
} cluster_registry_view_t;

/* The store interface, whose replies carry a registry view. */
#include "store.h"

/* Empties v. */
void cluster_registry_view_init(cluster_registry_view_t *v);

/* Adds one registry entry (the JSON text of a node key, len bytes) to v: a live node when it has a string
 * "node_id", lacking when its "capabilities" array does not hold "ocsp". Other texts are ignored. Lists that would
 * overflow are cut. */
void cluster_registry_view_add(cluster_registry_view_t *v, const char *entry, size_t len);

/* Whether two views differ in what the membership log line shows. */
bool cluster_registry_view_changed(const cluster_registry_view_t *a, const cluster_registry_view_t *b);

/* 0 when lacking (a view's list) is empty, else -1 with err filled (OA_E_UNSUPPORTED_BY_CAPABILITY) naming the
 * nodes. */
int cluster_capability_check(const char *lacking, oa_error_t *err);

/* The loop time after which a node that sent its lease request at sent no longer counts on the lease it got: a
 * tenth short of lease_ms, for clock rates, so it gives up before the store lets anyone else have it. */
uint64_t cluster_lease_deadline(uint64_t sent, unsigned lease_ms);

/* Whether a store that accepted the connection counts as gone at now: a heartbeat owed for longer than the node's
 * time to live, or a lease request owed for longer than the lease. */
bool cluster_store_stalled(uint64_t now, bool hb_owed, uint64_t hb_sent, unsigned node_ttl_ms, bool lease_owed,
                           uint64_t lease_sent, unsigned lease_ms);

/* The reconnection delay after one of backoff_ms: doubled, at most max_ms (the store's backoff_max_ms). */
unsigned cluster_backoff_next(unsigned backoff_ms, unsigned max_ms);

/* 1 when s (NUL-terminated) names a CertID as the store keys it: OA_CLUSTER_CERTID_LEN characters of [0-9a-f];
 * else 0 (also for NULL). */
bool cluster_certid_valid(const char *s);

/* The key of one CertID's record: OA_CLUSTER_KEY_PREFIX, then name (CLUSTER_K_LEASE, _STATUS or _SCHED), then
 * certid. Returns 0, or -1 (out "") when certid is not valid or out (size bytes) is too small. */
int cluster_certid_key(char *out, size_t size, const char *name, const char *certid);

/* Whether a status or state record naming record_certid (NULL when it names none) is this node's, holding mine:
 * only a record of the same CertID is; one without a CertID never is, since a node cannot tell whose it was. */
bool cluster_record_is_mine(const char *mine, const char *record_certid);

/* ---- codec.c: the texts the store holds ---- */

/* The integer member key of o, or dflt when o has none (or o is not an object). */
int64_t cluster_json_int(json_t *o, const char *key, int64_t dflt);

/* The stored form of a configuration (oa_conf_stored_json): the five settable keys as compact JSON, without
 * responder_url, which is each node's own. Returns a string to free, or NULL when out of memory. */
char *cluster_conf_encode(const oa_conf_t *conf);

/* Reads a stored configuration with oa_conf_from_stored: all five keys present, each of its type and in range,
 * other members ignored. Returns 0 with *out filled, or -1 (out untouched). o is borrowed; NULL gives -1. */
int cluster_conf_decode_json(json_t *o, oa_conf_t *out);

/* The same from text (len bytes). */
int cluster_conf_decode(const char *text, size_t len, oa_conf_t *out);

/* A status record without its number (the script adds "seq"): compact JSON to free, NULL when out of memory. */
char *cluster_status_encode(const char *node_id, const char *certid, int64_t now_ms, const oa_ocsp_result_t *res);

/* The DER of a status record: a buffer to free with *len set, or NULL when the record holds none (no "der", bad
 * base64, out of memory). */
unsigned char *cluster_status_der(json_t *o, size_t *len);

/* A state record without its number: compact JSON to free, NULL when out of memory. */
char *cluster_state_encode(const char *node_id, const char *certid, int64_t now_ms, const oa_sched_view_t *v);

/* Reads a state record into *v, whose strings borrow from o. Returns 0, or -1 when "state" is not a state name. */
int cluster_state_decode(json_t *o, oa_sched_view_t *v);

/* This node's registry entry {"node_id","api","version","capabilities":[...],"certid"}: compact JSON to free, or
 * NULL when out of memory. api NULL is "". */
char *cluster_node_entry_encode(const char *node_id, const char *api, const char *caps, const char *certid);

/* ---- Redis store only: scripts.c, the Lua scripts (see oa_cluster.h for what each guarantees) ---- */

/* KEYS: conf, events. ARGV: the node's epoch, its version (the one expected), the new conf JSON, the node id as a
 * JSON string, a fresh epoch. Returns {written 1|0, version, conf, epoch}: the new ones, or the stored ones. */
extern const char cluster_lua_conf_cas[];
/* Same KEYS and ARGV, ARGV[2] being the node's version. Returns {version, conf or "", epoch, written}: written 0
 * when nothing was, 1 into an empty hash, 2 over a seeded configuration of a lower version. */
extern const char cluster_lua_conf_seed[];
/* KEYS: lease. ARGV: node id, lease ms. 1 when renewed (or taken back after it vanished), 0 when someone else's. */
extern const char cluster_lua_lease_renew[];
/* KEYS: lease. ARGV: node id. Deletes the lease when it is the node's. */
extern const char cluster_lua_lease_release[];
/* KEYS: node key prefix, node set, CertID set, key prefix. ARGV: node id, node JSON, ttl ms, the node's CertID.
 * Returns the JSON of every live node, after deleting the records of every CertID no live node holds. */
extern const char cluster_lua_heartbeat[];
/* KEYS: seq, events, then every key that stores the record. ARGV: the record, a JSON object of at least one member.
 * Returns the record's number. */
extern const char cluster_lua_publish[];

/* hiredis's reply, named here without its header, which only the Redis store's files include. */
struct redisReply;

/* The compare-and-set's reply, checked: 0 with *out filled (written 1 or 0; the strings borrow from the reply, the
 * epoch "" or valid) when reply has the script's shape, else -1. */
int cluster_cas_reply_parse(const struct redisReply *reply, cluster_conf_reply_t *out);

/* The seed's reply, checked: 0 with *out filled (written 0, 1 or 2; the strings borrow from the reply, the epoch
 * valid) when reply has the script's shape, else -1. */
int cluster_seed_reply_parse(const struct redisReply *reply, cluster_conf_reply_t *out);

/* ---- the cluster ---- */

typedef struct cluster_put_s cluster_put_t;

struct oa_cluster_s {
    uv_loop_t *loop;
    char *node_id;
    char *node_id_json; /* the id as a JSON string, for the scripts' messages */
    char *node_json;    /* this node's registry entry */
    char *caps;
    char *api;
    char certid[OA_CLUSTER_CERTID_LEN + 1]; /* the CertID this node holds, whose records it follows */
    bool lease_stale; /* the lease reply owed is about the CertID held before */
    char *version_path;
    unsigned heartbeat_ms, node_ttl_ms, lease_ms;
    oa_cluster_hooks_t hooks;

    cluster_store_t *store;
    const cluster_store_ops_t *ops;
    const char *store_desc; /* the store's name for the logs, kept by the store */
    bool store_open;        /* connect succeeded and the store was not lost since: connecting or connected */
    bool store_up;          /* the store reported itself up (cluster_store_up) and was not lost since */
    bool synced;            /* up, and the store was read: PUTs may go */
    bool outage_logged;
    bool ever_synced;
    unsigned backoff_ms;
    uint64_t connect_started;

    oa_conf_t conf;
    uint64_t version;
    char epoch[CLUSTER_EPOCH_LEN + 1];      /* the epoch of conf and version; "" before this node ever read one */
    char prev_epoch[CLUSTER_EPOCH_LEN + 1]; /* the epoch this node left last, whose late messages are ignored */
    unsigned cas_owed;                      /* compare-and-set replies still to come, answered PUTs' included */
    bool conf_live;                         /* a configuration was applied from a message since the seed was sent */
    uint64_t refused_base; /* put_counts[CLUSTER_PUT_UNAVAILABLE] when the store was last synchronised */

    cluster_registry_view_t view; /* the last heartbeat's; before it, this node alone */

    bool poller;
    uint64_t lease_deadline; /* uv_now after which this node no longer counts on its lease */
    bool lease_owed;
    uint64_t lease_sent;
    bool hb_owed;
    uint64_t hb_sent;

    uint64_t last_seq; /* the highest status/state number seen since the last (re)connection */

    /* Metrics. */
    uint64_t disconnects;
    uint64_t messages[CLUSTER_MSG_TYPES];
    uint64_t put_counts[CLUSTER_PUT_RESULTS];

    cluster_put_t *puts;

    uv_timer_t tick;
    uv_timer_t retry;
    bool closing;
    int pending_closes;
    void (*done)(void *arg);
    void *done_arg;
};

/* cluster.c */

/* Whether operations may go to the store now: it is up, this node is synchronised with it and not closing. */
bool cluster_synced(const oa_cluster_t *c);

/* Drops one pending close; the last one, once the cluster is closing and its own timers are closing too, frees c
 * and fires the close's done. */
void cluster_release(oa_cluster_t *c);

/* conf.c */

/* The node's position (borrowing c's strings), for rules.c. */
cluster_conf_pos_t cluster_conf_pos(const oa_cluster_t *c);

/* Puts a configuration from the store in force; epoch and version are the store's; user (NULL but for a PUT of this
 * node) and from (a node id, or "store") go to the conf hook. Records epoch and version in cluster.json. A
 * configuration that differs from the one in force only by its epoch is recorded silently. */
void cluster_conf_adopt(oa_cluster_t *c, const oa_conf_t *conf, const char *epoch, uint64_t version, const char *user,
                        const char *from);

/* A conf message o from node (the channel's). */
void cluster_conf_message(oa_cluster_t *c, json_t *o, const char *node);

/* The seed's reply at resynchronisation (s, checked): logs what the seed wrote, then puts the store's configuration
 * in force, or keeps this node's as the rules say (cluster_seed_action). */
void cluster_conf_seeded(oa_cluster_t *c, const cluster_conf_reply_t *s);

/* put.c */

/* Answers every pending PUT with OA_E_STORE_UNAVAILABLE and text (the cluster is closing). */
void cluster_puts_fail_all(oa_cluster_t *c, const char *text);

/* records.c */

/* A status or state message o from the channel. type is "status" or "state". */
void cluster_record_message(oa_cluster_t *c, json_t *o, const char *type);

/* The status and sched records read from the store (rec borrowed, each NULL when absent), at resynchronisation or
 * for a new CertID: applied in the order of their numbers. */
void cluster_records_apply(oa_cluster_t *c, json_t *const rec[2]);

/* registry.c */

/* One heartbeat: gives up the role when the lease ran out, takes the store down when it stopped answering, else
 * sends the heartbeat and the lease request that are not owed already. */
void cluster_tick(oa_cluster_t *c);

/* The poller role changes (why, for the log and the role hook); nothing when it already is poller. */
void cluster_set_role(oa_cluster_t *c, bool poller, const char *why);

/* version.c */

/* Reads c->version_path into c->epoch and c->version; a missing or unreadable file leaves them alone, a file
 * without an epoch leaves the epoch "". */
void cluster_version_load(oa_cluster_t *c);

/* Writes c->epoch and c->version to c->version_path (when set); a failure is logged. */
void cluster_version_save(oa_cluster_t *c);

/* A fresh random epoch for a script that may find the conf hash empty. */
void cluster_epoch_new(char out[CLUSTER_EPOCH_LEN + 1]);

#endif
