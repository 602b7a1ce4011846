/*
 * Cluster mode: every node shares one OCSP configuration and one OCSP status through a Redis store.
 *
 * Keys (DB chosen by the URL), all under the prefix "ocsp-agent:":
 *   node:<id>  a live node: {"node_id","api","version","capabilities":[...]}, SET with PX node_ttl_ms and renewed
 *              every heartbeat_ms, so it disappears when the node dies
 *   nodes      a set of the node ids seen, pruned of those whose key expired
 *   conf       a hash {"epoch": E, "version": N, "conf": <the five settable keys as JSON>, "seeded": "1"|"0"},
 *              written only by two Lua scripts, each of which also publishes what it wrote ({"type":"conf","epoch",
 *              "version","node","conf"}): the compare-and-set of a PUT (on the epoch and the version; it sets
 *              seeded 0) and the seed that a node sends at every (re)connection (seeded 1). E, 16 hex digits, is
 *              made at random by the node whose script finds the hash empty (a store that restarted without
 *              persistence) and is kept until the store loses the hash again; N grows by one per committed PUT
 *              within E. A seed writes into an empty hash, or over a hash still seeded 1 when its version is
 *              higher (the best-informed node wins while nothing was written); never over seeded 0: a PUT
 *              acknowledged in the current epoch is never overwritten by a seed. A compare-and-set that finds the
 *              hash empty writes anyway, under a new epoch, at the node's version + 1
 *   lease      the id of the node allowed to query the responder (SET NX PX lease_ms, renewed by a Lua
 *              compare-and-renew); the holder is "the poller", every other node "a follower"
 *   seq        a counter that numbers every status and state message (INCR in the script that writes it)
 *   status     what every node must serve, the latest of two records: the poller's last valid response
 *              {"seq","type":"status","node","ts","cert_status","produced_at","this_update","next_update"
 *              [,"revocation_time","revocation_reason"],"der": base64} (times in Unix seconds; the parsed fields
 *              are for readers of the store, nodes verify the DER), or, once the poller has given up on it, its
 *              invalidation: the state record below with "state":"invalidated"
 *   sched      the poller's last schedule state {"seq","type":"state","node","ts","state","recovering",
 *              "consecutive_failures","recovery_tries","last_attempt_ms","last_error_code","last_error"},
 *              written after every attempt that counted and when its cached response expired
 *   events     the Pub/Sub channel of "conf", "status" and "state" messages, read on a second connection; a status
 *              or state message is the very text stored, published by the same script
 *
 * A node applies a status or state message only when its seq is above the highest it has seen since it last
 * (re)connected, so a record read back at resynchronisation never undoes a newer message that overtook it on the
 * other connection; at resynchronisation it reads status and sched together and applies them in seq order. An
 * invalidation makes every node drop its cached response and remove its staple file; the next valid response
 * restores "valid" everywhere.
 *
 * Two Redis connections (oa_redis.h: plain TCP or TLS, names resolved asynchronously) run on the agent's libuv
 * loop; no call here ever blocks. While the store is unreachable the module reconnects with a doubling backoff
 * (100 ms to 2 s), logs `store_unavailable` once and `store_reconnected` when it is back, then resynchronises: it
 * seeds (see conf above), adopts the store's configuration as the seed leaves it (whatever its version: the store
 * is the truth once read), and reads the status. On a live connection a configuration is applied when its epoch
 * differs from the node's (even at a lower version) or its version is higher in the same epoch; a committed PUT is
 * applied by the node that sent it even when the PUT was answered "not confirmed in time". The epoch and version
 * are kept in <data_dir>/cluster.json ({"conf_epoch","conf_version"}) next to ocsp.json, the local cache. The limit:
 * what a store without persistence lost comes back only through a seed, and seeds count only until the first PUT
 * of the new epoch commits; a configuration a node brings back after that (acknowledged PUTs included) is
 * discarded in favour of the store's. Run Redis with persistence (appendonly) where that matters.
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

/* Parses "redis://HOST[:PORT][/DB]" or "rediss://..." (the same over TLS; see oa_cluster_url_is_tls) (HOST an IPv4
 * literal, [IPv6] or a name; PORT default 6379; DB 0..15, default 0). Returns 0 with the parts filled, or -1 with
 * err filled (OA_E_BAD_OPTION) naming what is wrong. */
int oa_cluster_url_parse(const char *url, char host[OA_CLUSTER_HOST_MAX], int *port, int *db, oa_error_t *err);

/* 1 when url starts with "rediss://", the scheme that asks for TLS to the store; else 0 (also for NULL). */
int oa_cluster_url_is_tls(const char *url);

/* 1 when the comma-separated capability list caps holds the capability name (exactly). */
int oa_cluster_caps_have(const char *caps, const char *name);

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
    const char *url;          /* redis://HOST:PORT[/DB], or rediss://... (then tls must be set) */
    const char *password;     /* NULL: no AUTH */
    /* TLS to the store (oa_tls_client_ctx_new): the store's certificate must name the URL's host. NULL: plain TCP.
     * Not taken: the cluster holds its own reference (SSL_CTX_up_ref) until it is freed, so the caller may free
     * its own as soon as oa_cluster_new returns. */
    SSL_CTX *tls;
    const char *node_id;
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
 * has already put it in force here), else the reason (OA_E_STORE_UNAVAILABLE, OA_E_INVALID_SCHEMA, ...). */
typedef void (*oa_cluster_put_cb)(void *data, const oa_error_t *err);

/*
 * PUT /v1/ocsp in cluster mode: validates body (len bytes, copied) with oa_conf_patch against the latest known
 * configuration and writes the result with a compare-and-set on the version. When another node's write came
 * first, the newer configuration is applied and the patch re-validated against it (at most 5 rounds). Returns 0
 * (cb will fire, not before this returns); 1 when the body changes nothing (cb never fires); or -1 with err filled
 * when the store is unreachable now (OA_E_STORE_UNAVAILABLE) or the body is invalid (cb never fires).
 */
int oa_cluster_conf_put(oa_cluster_t *c, const char *body, size_t len, const char *responder_url, const char *user,
                        oa_cluster_put_cb cb, void *data, oa_error_t *err);

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

/* Deletes this node's registry key and releases the lease (when the store is reachable), answers pending PUTs
 * with OA_E_STORE_UNAVAILABLE, closes the connections and timers; done fires once everything is closed and c is
 * freed. Bounded: a store that does not answer within 1 s is dropped. */
void oa_cluster_close(oa_cluster_t *c, void (*done)(void *arg), void *arg);

#endif
