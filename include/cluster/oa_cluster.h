/*
 * Cluster mode: every node shares one OCSP configuration, and one OCSP status per certificate (CertID) with the
 * nodes that hold the same certificate, through a store: one Redis, or an etcd cluster. This comment is the store
 * protocol, the one description of it, written in Redis's terms. The code is in cluster/: what does not depend on the
 * store (the configuration, PUT, the records, the registry and the lease, the life cycle) is written once over the
 * store interface, cluster/store.h; cluster/store_redis.c keeps this protocol on Redis, cluster/store_etcd.c on etcd,
 * where every rule below holds with the keys, transactions and leases its opening comment describes (the epoch is
 * kept; a record's number is its key's mod_revision; the lease is fenced by its key's create_revision).
 * cluster/cluster_internal.h says which file does what.
 *
 * Keys (DB chosen by the URL), all under the prefix "ocsp-agent:":
 *   node:<id>  a live node: {"node_id","api","version","capabilities":[...],"certid"}, SET with PX node_ttl_ms and
 *              renewed every heartbeat_ms, so it disappears when the node dies; certid names the CertID of the
 *              certificate the node holds (the hex of the SHA-1 digest of its DER, oa_ocsp_target_certid_hex)
 *   nodes      a set of the node ids seen, pruned of those whose key expired
 *   conf       a hash {"epoch": E, "version": N, "conf": <the five settable keys as JSON, without responder_url,
 *              which is each node's own>, "seeded": "1"|"0"}, written only by the conf scripts below
 *   certids    a set of the CertIDs registered; the heartbeat script deletes the three keys below of every one
 *              no live node holds any more, and takes it out of the set
 * The status is kept per CertID (nodes hold different certificates during a rolling replacement); <C> is the hex
 * of one:
 *   lease:<C>  the id of the node allowed to query the responder (SET NX PX lease_ms, renewed by a script); the
 *              holder is "the poller" of C, every other node holding C "a follower"; a node asks only for its
 *              own CertID's lease, so the responder sees one query per period per distinct certificate
 *   seq        a counter that numbers every status and state record
 *   status:<C> what every node holding C must serve, the latest of two records: the poller's last valid response
 *              {"seq","type":"status","node","certid","ts","cert_status","produced_at","this_update","next_update"
 *              [,"revocation_time","revocation_reason"],"der": base64} (times in Unix seconds; the parsed fields
 *              are for readers of the store, nodes verify the DER), or, once the poller has given up on it, its
 *              invalidation: the state record below with "state":"invalidated"
 *   sched:<C>  the poller's last schedule state {"seq","type":"state","node","certid","ts","state","recovering",
 *              "consecutive_failures","recovery_tries","last_attempt_ms","last_error_code","last_error"},
 *              written after every attempt that counted and when its cached response expired
 *   events     the Pub/Sub channel, read on a second connection (a subscribed connection can send nothing else)
 *
 * Messages on events, each a JSON object with "type" and "node" (the writer's id):
 *   conf    {"type":"conf","epoch","version","node","conf"}, published by the conf scripts with what they wrote
 *   status  the very text stored in status, published by the script that stores it
 *   state   the very text stored in sched (and in status for an invalidation), likewise
 * Anything else is counted as "invalid" and ignored.
 *
 * Scripts: every write that must be atomic is one Lua script, with its PUBLISH inside, so that no node can see a
 * write without its message or the reverse.
 *   conf compare-and-set (a PUT): writes only when the stored epoch and version are the node's; on an empty hash
 *       it writes anyway, at the node's version + 1 under a fresh epoch (a seed and the PUT at once); a write
 *       always sets seeded=0. Returns what it wrote, or what is stored.
 *   conf seed (each node, once per (re)connection, after subscribing): on an empty hash it writes the node's
 *       configuration and version under a fresh epoch with seeded=1; on a hash with seeded=1 it replaces the
 *       configuration and version (keeping the epoch) only when the node's version is higher, so that the
 *       best-informed node wins while nothing was written; on seeded=0 it never writes: a PUT acknowledged in the
 *       current epoch is never overwritten by a seed. A hash without an epoch (written before epochs existed) is
 *       given one, seeded=0. Returns what the hash holds afterwards and whether it wrote.
 *   lease renew: extends the lease when it is the node's; a lease that vanished (a store restarted empty) is taken
 *       back by its holder if nobody took it meanwhile. lease release (at shutdown): deletes it when it is the
 *       node's. A follower asks with SET NX.
 *   heartbeat: sets the node's key with its time to live, adds it to nodes, prunes the ids whose key expired and
 *       returns every live entry: the registry view, from which the capability check and the metrics come.
 *   publish (status and state records): INCR seq, prefix the record with it as "seq", SET every key it goes to and
 *       PUBLISH it, as one text.
 *
 * The configuration is identified by (epoch, version). The epoch names one life of the stored configuration: a
 * random id (16 hex digits) made by the node whose script finds the conf hash empty (a new store, or one that
 * restarted without persistence), kept by every later write until the store loses it again. Within an epoch the
 * version only grows, by one per committed PUT. "seeded" is 1 while what the hash holds was only seeded, 0 once a
 * PUT committed in that epoch. On the node's side:
 *   - a node adopts what its seed returns (the store's configuration after the seed) whatever the versions, because
 *     the store is the truth once it has been read; the one exception is a newer configuration of the same epoch
 *     applied from a message while the seed was on its way. An unreadable stored configuration is not adopted, but
 *     its epoch and version are, so that the next PUT replaces it;
 *   - a configuration seen on a live connection (a message, the reply to a compare-and-set) is applied when its
 *     epoch differs from the node's, even at a lower version (the store lost what the node knew, and its new life
 *     wins), or when it has the node's epoch and a higher version; never when its epoch is the one the node has
 *     just left (a message written before the store was emptied, overtaken on the other connection);
 *   - a committed write is applied from the reply to it even when its PUT was answered "not confirmed in time"; this
 *     node's own conf message is applied only while no compare-and-set reply is owed, because that reply puts the
 *     write in force itself, under the PUT's user, and must not find it already applied (or be applied twice).
 * The epoch and version are kept in <data_dir>/cluster.json ({"conf_epoch","conf_version"}) next to ocsp.json, the
 * local cache. The limit: what a store without persistence lost comes back only through seeds, and seeds count only
 * until the first PUT of the new epoch commits; a node that comes back after that with a newer configuration from
 * before the restart (acknowledged PUTs included) adopts the store's instead, and a PUT acknowledged by a store that
 * lost it before any node applied it is gone at once. Run Redis with persistence (appendonly) where that matters.
 *
 * The status and state records are numbered by the store, not by the nodes: two nodes' clocks never have to agree,
 * and a poller that takes over continues the same sequence. A node applies a record only when its number is above
 * the highest it has seen since it last (re)connected (a record without one always), so a record read back at
 * resynchronisation never undoes a newer message that overtook it on the other connection; it forgets that number
 * when it reconnects, because a store that restarted empty counts from 1 again. At resynchronisation it reads status
 * and sched together and applies them older first. A node ignores its own records from the channel, and the poller
 * its own read back from the store (its memory is newer). A node applies only the records that name the CertID it
 * holds, and forgets the highest number it has seen when it comes to hold another one. An invalidation makes every
 * node holding that CertID drop its cached response and remove its staple file; the next valid response restores
 * "valid" everywhere.
 *
 * Two Redis connections (oa_redis.h: plain TCP or TLS, names resolved asynchronously) run on the agent's libuv
 * loop; no call here ever blocks. Either one failing takes both down. While the store is unreachable the module
 * reconnects with a doubling backoff (100 ms to 2 s), logs `store_unavailable` once and `store_reconnected` when it
 * is back, then resynchronises: it subscribes first, then seeds, adopts the store's configuration as the seed
 * leaves it, and reads the records, so that nothing published meanwhile is missed (at worst it is applied twice,
 * which versions and numbers make harmless). A store that accepts the connection but answers neither a heartbeat
 * within node_ttl_ms nor a lease request within lease_ms counts as gone; a poller whose lease was not renewed in
 * time (a tenth short of lease_ms, counted from the request) stops being the poller.
 */
#ifndef OA_CLUSTER_H
#define OA_CLUSTER_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "oa_conf.h"
#include "oa_error.h"
#include "oa_ocsp.h"
#include "oa_sched.h"
#include "oa_util.h"

#define OA_CLUSTER_HOST_MAX 256
#define OA_CLUSTER_KEY_PREFIX "ocsp-agent:"
#define OA_CLUSTER_VERSION_FILE "cluster.json"
#define OA_CLUSTER_CERTID_LEN OA_OCSP_CERTID_HEX_LEN

/* Parses "redis://HOST[:PORT][/DB]" or "rediss://..." (the same over TLS; see oa_cluster_url_is_tls) (HOST an IPv4
 * literal, [IPv6] or a name; PORT default 6379; DB 0..15, default 0). Returns 0 with the parts filled, or -1 with
 * err filled (OA_E_BAD_OPTION) naming what is wrong. */
int oa_cluster_url_parse(const char *url, char host[OA_CLUSTER_HOST_MAX], int *port, int *db, oa_error_t *err);

#define OA_CLUSTER_MEMBERS_MAX 16
#define OA_CLUSTER_MEMBER_MAX (OA_CLUSTER_HOST_MAX + 8)
#define OA_CLUSTER_ETCD_DEFAULT_PORT 2379

/* true when url starts with "etcd://", the scheme of an etcd cluster (false for NULL). */
bool oa_cluster_url_is_etcd(const char *url);

/* Parses "etcd://HOST[:PORT][,HOST[:PORT]...]" (each HOST an IPv4 literal, [IPv6] or a name; PORT default 2379; at
 * most OA_CLUSTER_MEMBERS_MAX members, no duplicates) into members[0..*n-1], each "host:port" ("[v6]:port" for an
 * IPv6 literal), as the etcd client takes them. Returns 0, or -1 with err filled (OA_E_BAD_OPTION) naming what is
 * wrong. */
int oa_cluster_etcd_url_parse(const char *url, char members[OA_CLUSTER_MEMBERS_MAX][OA_CLUSTER_MEMBER_MAX], size_t *n,
                              oa_error_t *err);

/* true when url starts with "rediss://", the scheme that asks for TLS to the store (false for NULL). */
bool oa_cluster_url_is_tls(const char *url);

/* true when the comma-separated capability list caps holds the capability name (exactly). */
bool oa_cluster_caps_have(const char *caps, const char *name);

/* 0 when caps is a valid list ("" or names of [a-z0-9_-] separated by commas), else -1. */
int oa_cluster_caps_valid(const char *caps);

typedef struct oa_cluster_s oa_cluster_t;

/* What the module tells the daemon. Every hook runs on the loop, never from inside oa_cluster_new. */
typedef struct oa_cluster_hooks_s {
    /* A configuration to put in force: one read from the store, published by another node, or committed by a PUT
     * on this node (user is then the PUT's user; NULL otherwise). The module has already recorded version. */
    void (*conf)(void *data, const oa_conf_t *conf, unsigned changed, const char *user, const char *from_node);
    /* A response the poller stored (DER bytes, borrowed for the call), obtained at at_ms (wall clock, ms). The
     * daemon verifies it before serving. */
    void (*status)(void *data, const unsigned char *der, size_t len, int64_t at_ms, const char *from_node);
    /* The poller's schedule state (oa_cluster_publish_state on another node, or read back at resynchronisation),
     * v and its strings borrowed for the call; "invalidated" means: drop the cached response and the staple. */
    void (*state)(void *data, const oa_sched_view_t *v, const char *from_node);
    /* This node became the poller (true) or stopped being it (false). */
    void (*role)(void *data, bool poller);
    void *data;
} oa_cluster_hooks_t;

typedef struct oa_cluster_options_s {
    const char *url;          /* redis://HOST:PORT[/DB], rediss://... (then tls must be set), or etcd://HOST:PORT,... */
    const char *user;         /* etcd: the user to authenticate as (with password); NULL: none. Redis: unused */
    const char *password;     /* NULL: no AUTH (Redis) or no authentication (etcd) */
    /* TLS to the store (oa_tls_client_ctx_new): the store's certificate must name the URL's host. NULL: plain TCP.
     * Not taken: the cluster holds its own reference (SSL_CTX_up_ref) until it is freed, so the caller may free
     * its own as soon as oa_cluster_new returns. */
    SSL_CTX *tls;
    const char *node_id;
    const char *certid;       /* the CertID this node holds (oa_ocsp_target_certid_hex); NULL: forty zeros */
    const char *api_address;  /* advertised in the registry, e.g. "http://127.0.0.1:9443" */
    const char *capabilities; /* comma-separated; NULL means "ocsp" */
    const char *data_dir;     /* where cluster.json lives; NULL: the version is not persisted */
    unsigned heartbeat_ms;    /* 0: 1000 */
    unsigned node_ttl_ms;     /* 0: 3000 */
    unsigned lease_ms;        /* 0: 3000 */
    oa_cluster_hooks_t hooks;
} oa_cluster_options_t;

/*
 * Starts connecting (asynchronously) with conf as this node's last known configuration. Returns 0 with *out set,
 * or -1 with err filled (bad URL, a rediss:// URL without o->tls, out of memory). The strings of o are copied.
 */
int oa_cluster_new(uv_loop_t *loop, const oa_cluster_options_t *o, const oa_conf_t *conf, oa_cluster_t **out,
                   oa_error_t *err);

/* Fires once per oa_cluster_conf_put that returned 0: err NULL once the store confirmed the write (the conf hook
 * has already put it in force here), else the reason (OA_E_STORE_UNAVAILABLE; OA_E_NOMEM when out of memory). */
typedef void (*oa_cluster_put_cb)(void *data, const oa_error_t *err);

/*
 * PUT /v1/ocsp in cluster mode: applies patch (validated by the caller with oa_conf_patch_parse; copied) to the
 * latest known configuration and writes the result with a compare-and-set on the version. When another node's write
 * came first, the newer configuration is applied and the patch applied again on top of it (at most 5 rounds).
 */
typedef enum oa_cluster_put_e {
    OA_CLUSTER_PUT_STARTED,   /* the write is on its way: cb will fire, not before this returns */
    OA_CLUSTER_PUT_UNCHANGED, /* the patch changes nothing in the latest configuration: cb never fires */
    OA_CLUSTER_PUT_FAILED,    /* err filled: the store is unreachable now (OA_E_STORE_UNAVAILABLE) or out of memory;
                               * cb never fires */
} oa_cluster_put_t;

oa_cluster_put_t oa_cluster_conf_put(oa_cluster_t *c, const oa_conf_patch_t *patch, const char *user,
                                     oa_cluster_put_cb cb, void *data, oa_error_t *err);

/*
 * The node now holds another certificate, certid (oa_ocsp_target_certid_hex): it registers it at once, gives up
 * the old CertID's lease (the role hook fires with false when it was the poller), asks for the new one's and reads
 * the new one's records, which it follows from now on; records of the old one are ignored. The old CertID's records
 * go once no live node holds it. Returns 0 (also when certid is the one held), -1 when certid is not a CertID's hex,
 * or UV_ENOMEM (nothing changed).
 */
int oa_cluster_set_certid(oa_cluster_t *c, const char *certid);

/* Stores and publishes a valid response obtained on this node (by the poller, or by a test while enabled).
 * Does nothing while the store is unreachable. */
void oa_cluster_publish_result(oa_cluster_t *c, const oa_ocsp_result_t *res);

/* Stores and publishes this node's schedule state (the poller's, after every attempt that counted and when its
 * response expired): always in the sched key, and in the status key too when v says "invalidated", so that a node
 * that synchronises later drops the response as well. Does nothing while the store is unreachable. */
void oa_cluster_publish_state(oa_cluster_t *c, const oa_sched_view_t *v);

/* 0 when every live node advertises "ocsp", else -1 with err filled (OA_E_UNSUPPORTED_BY_CAPABILITY) naming the
 * nodes that lack it. Reads the view the heartbeat refreshes; never blocks. */
int oa_cluster_capability_check(const oa_cluster_t *c, oa_error_t *err);

/* 1 while the store is reachable and this node is synchronised with it. */
int oa_cluster_available(const oa_cluster_t *c);
/* 1 while this node holds the lease. */
int oa_cluster_is_poller(const oa_cluster_t *c);
/* The configuration version this node has in force. */
uint64_t oa_cluster_conf_version(const oa_cluster_t *c);

/*
 * Appends the Prometheus text of the cluster's metrics to out: ocsp_agent_cluster_store_up, _poller,
 * _conf_version, _nodes and _nodes_lacking_ocsp (from the last heartbeat; before the first: 0 nodes, and this
 * node alone lacking ocsp when it does not advertise it),
 * _store_disconnects_total (a synchronised connection lost), _messages_received_total{type="conf|status|state|
 * invalid"} (every message on the channel, this node's own included) and _puts_total{result="committed|
 * conflict_retry|unavailable|timeout"} (compare-and-set rounds of PUT /v1/ocsp: written, lost to another node's
 * write and retried, refused or failed because the store was unreachable, not confirmed in time). Returns 0 or
 * UV_ENOMEM.
 */
int oa_cluster_metrics(const oa_cluster_t *c, oa_buf_t *out);

/* The TLS context for every later connection to the store (a reload of the cluster's TLS files): the cluster takes
 * its own reference and drops the old one; connections already up, or connecting, keep the context they started
 * with. Returns 0, or UV_EINVAL when ctx is NULL or the cluster speaks plain TCP (a store does not change
 * protocol). */
int oa_cluster_set_tls(oa_cluster_t *c, SSL_CTX *ctx);

/* Deletes this node's registry key and releases the lease (when the store is reachable), answers pending PUTs
 * with OA_E_STORE_UNAVAILABLE, closes the connections and timers; done fires once everything is closed and c is
 * freed. Bounded: a store that does not answer within 1 s is dropped. */
void oa_cluster_close(oa_cluster_t *c, void (*done)(void *arg), void *arg);

#endif
