/*
 * An asynchronous client of etcd's v3 JSON gateway (etcd 3.4: HTTP/1.1 POST of JSON to /v3/...), on the agent's
 * libuv loop. Keys and values are byte strings of any content (base64 on the wire); revisions, leases and TTLs are
 * int64 (strings on the wire).
 *
 * The client knows a list of members (host:port). Names are resolved with uv_getaddrinfo, never blocking. A call
 * starts on the member that answered last, and moves to the next member when one refuses the connection, does not
 * answer within the attempt timeout, or answers that it cannot serve (no leader, not leader, stopped); after every
 * member has failed once it waits a little and goes round again, until the call's deadline. A write (put, delete,
 * txn, lease revoke) is never sent twice once it may have reached a member: when that member's answer does not
 * arrive, or etcd says it gave up on it ("leader changed", a timeout), the outcome is unknown and the call reports
 * OA_ETCD_E_UNKNOWN. Connections are kept open and reused (HTTP keep-alive; at most four idle ones per member).
 *
 * With a user name, the client authenticates (/v3/auth/authenticate) before its first call and sends the token with
 * every call; a call that meets "invalid auth token" (the token expired, or the member restarted) authenticates again
 * once and repeats. With a TLS context, every connection is TLS and the member's certificate is verified against
 * the name of the member as listed.
 *
 * Every callback fires from the loop, never inside the function that started the work, and exactly once per call.
 * oa_etcd_close cancels everything: each pending call's callback then fires once with OA_ETCD_E_CANCELLED, each
 * watch's once with OA_ETCD_WATCH_CANCELLED, and the memory goes in libuv's close callbacks.
 */
#ifndef OA_ETCD_H
#define OA_ETCD_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "oa_error.h"

typedef struct oa_etcd_s oa_etcd_t;
typedef struct oa_etcd_watch_s oa_etcd_watch_t;

/* What went wrong, as far as the caller needs to decide what to do next. */
typedef enum oa_etcd_err_e {
    OA_ETCD_OK = 0,
    OA_ETCD_E_UNAVAILABLE, /* no member served the call before the deadline (refused, silent, no leader) */
    OA_ETCD_E_UNKNOWN,     /* a write reached a member but its answer did not come back: it may have been applied */
    OA_ETCD_E_COMPACTED,   /* the revision asked for has been compacted away: read everything again */
    OA_ETCD_E_AUTH,        /* no credentials, wrong credentials, or permission denied */
    OA_ETCD_E_NOT_FOUND,   /* the lease does not exist (expired or revoked) */
    OA_ETCD_E_PROTOCOL,    /* a member answered with something the gateway does not send */
    OA_ETCD_E_OTHER,       /* any other error etcd reported (grpc_code and why say which) */
    OA_ETCD_E_CANCELLED,   /* the client was closed (or the watch stopped) before the outcome was known */
} oa_etcd_err_t;

/* The name of err ("unavailable", "compacted", ...), for logs and tests. Never NULL. */
const char *oa_etcd_err_name(oa_etcd_err_t err);

typedef struct oa_etcd_options_s {
    const char *const *members; /* n_members entries of "host:port" ("[v6]:port" for an IPv6 literal) */
    size_t n_members;
    const char *user;            /* NULL: no authentication */
    const char *password;        /* with user */
    SSL_CTX *tls;                /* NULL: plain HTTP. Borrowed; must outlive the client (oa_tls_client_ctx_new) */
    unsigned timeout_ms;         /* one call's deadline, every member and retry included; 0: 5000 */
    unsigned attempt_timeout_ms; /* one member's share: connect, TLS, authentication and answer; 0: 1500 */
    size_t max_body;             /* the largest answer accepted; 0: 16 MiB */
    unsigned watch_probe_ms;     /* a watch stream quiet this long checks that its member still answers; 0: 2000 */
} oa_etcd_options_t;

/* Creates a client on loop. Nothing is connected until the first call. The option strings are copied. Returns 0
 * with *out set, or -1 with err filled (OA_E_BAD_OPTION for an empty list or a member that is not host:port, with
 * a user but no password, or a user or password that cannot travel in JSON; OA_E_NOMEM). */
int oa_etcd_new(uv_loop_t *loop, const oa_etcd_options_t *o, oa_etcd_t **out, oa_error_t *err);

/*
 * Cancels every call and watch and closes every connection. The callbacks of pending calls and watches fire later
 * from the loop, each once with a cancelled result; then on_closed (may be NULL) fires, and c is freed right after
 * it returns. No new call is accepted from here on (they return UV_ECANCELED). Safe inside any callback of c; calling
 * it twice does nothing the second time.
 */
void oa_etcd_close(oa_etcd_t *c, void (*on_closed)(oa_etcd_t *c, void *data), void *data);

/* One key-value pair. The bytes are borrowed for the duration of the callback. */
typedef struct oa_etcd_kv_s {
    const unsigned char *key;
    size_t key_len;
    const unsigned char *value; /* NUL-terminated for convenience (the NUL is not counted in value_len) */
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease; /* 0: none */
} oa_etcd_kv_t;

/* The outcome of one call; borrowed for the duration of the callback. */
typedef struct oa_etcd_result_s {
    oa_etcd_err_t err;
    int grpc_code;    /* the gRPC status code etcd gave with an error, else 0 */
    const char *why;  /* one sentence when err is not OA_ETCD_OK, naming the member; else "" */
    int64_t revision; /* the store's revision when the member answered (header.revision) */
    /* range: the keys found; txn: the keys read by the range operations of the branch taken, in order. */
    const oa_etcd_kv_t *kvs;
    size_t n_kvs;
    int64_t count;   /* range: how many keys the range holds (may exceed n_kvs with a limit) */
    bool succeeded;  /* txn: true when every comparison held and the success branch ran */
    int64_t deleted; /* delete, and the delete operations of a txn */
    int64_t lease;   /* lease grant and keepalive: the lease ID */
    int64_t ttl;     /* lease grant and keepalive: the TTL in seconds granted or renewed */
} oa_etcd_result_t;

/* Fires exactly once per call, from the loop. */
typedef void (*oa_etcd_cb)(oa_etcd_t *c, const oa_etcd_result_t *r, void *data);

/*
 * The calls. Each returns 0 (cb will fire exactly once, never before the function returns) or a negative UV_E* and
 * cb will not fire: UV_ECANCELED once oa_etcd_close was called, UV_EINVAL for an empty key, UV_ENOMEM. Key, value
 * and range bytes are copied.
 *
 * A range is [key, range_end): range_end NULL asks for key alone; oa_etcd_prefix_end gives the end of a prefix.
 */

/* Reads a key or a range; revision 0 reads the latest, limit 0 reads every key. Linearizable (through the leader). */
int oa_etcd_range(oa_etcd_t *c, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                  int64_t revision, int64_t limit, oa_etcd_cb cb, void *data);

/* Writes one key, attached to lease (0: none). */
int oa_etcd_put(oa_etcd_t *c, const void *key, size_t key_len, const void *value, size_t value_len, int64_t lease,
                oa_etcd_cb cb, void *data);

/* Deletes a key or a range; the result's deleted says how many keys went. */
int oa_etcd_delete(oa_etcd_t *c, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                   oa_etcd_cb cb, void *data);

/* One comparison of a transaction: the key's target compared with number or value. A key that does not exist has
 * version, create_revision and mod_revision 0. */
typedef enum oa_etcd_target_e {
    OA_ETCD_TARGET_VERSION,
    OA_ETCD_TARGET_CREATE,
    OA_ETCD_TARGET_MOD,
    OA_ETCD_TARGET_VALUE,
    OA_ETCD_TARGET_LEASE,
} oa_etcd_target_t;

typedef enum oa_etcd_cmp_result_e {
    OA_ETCD_EQUAL,
    OA_ETCD_GREATER,
    OA_ETCD_LESS,
    OA_ETCD_NOT_EQUAL,
} oa_etcd_cmp_result_t;

/* With range_end (range_end_len > 0), every key of [key, range_end) must satisfy the comparison; a range that holds
 * no key compares as one missing key (etcd's rule), so CREATE EQUAL 0 over a prefix asks "no key starts with it". */
typedef struct oa_etcd_cmp_s {
    const void *key;
    size_t key_len;
    const void *range_end;
    size_t range_end_len;
    oa_etcd_target_t target;
    oa_etcd_cmp_result_t result;
    int64_t number;    /* for every target but VALUE */
    const void *value; /* for VALUE */
    size_t value_len;
} oa_etcd_cmp_t;

typedef enum oa_etcd_op_kind_e { OA_ETCD_OP_RANGE, OA_ETCD_OP_PUT, OA_ETCD_OP_DELETE } oa_etcd_op_kind_t;

/* One operation of a transaction's branch. RANGE and DELETE use range_end as oa_etcd_range does; PUT uses value
 * and lease. */
typedef struct oa_etcd_op_s {
    oa_etcd_op_kind_t kind;
    const void *key;
    size_t key_len;
    const void *range_end;
    size_t range_end_len;
    const void *value;
    size_t value_len;
    int64_t lease;
} oa_etcd_op_t;

/* If every comparison holds, runs the success operations, else the failure ones, atomically. */
int oa_etcd_txn(oa_etcd_t *c, const oa_etcd_cmp_t *cmp, size_t n_cmp, const oa_etcd_op_t *success, size_t n_success,
                const oa_etcd_op_t *failure, size_t n_failure, oa_etcd_cb cb, void *data);

/* Grants a lease of ttl_s seconds; the result carries its ID and TTL. */
int oa_etcd_lease_grant(oa_etcd_t *c, int64_t ttl_s, oa_etcd_cb cb, void *data);

/* Renews a lease once; the result's ttl is the new TTL. A lease that expired or was revoked: OA_ETCD_E_NOT_FOUND. */
int oa_etcd_lease_keepalive(oa_etcd_t *c, int64_t lease, oa_etcd_cb cb, void *data);

/* Revokes a lease, deleting every key attached to it. */
int oa_etcd_lease_revoke(oa_etcd_t *c, int64_t lease, oa_etcd_cb cb, void *data);

/* Writes the end of the range of every key that starts with prefix into out (at least prefix_len bytes) and its
 * length into *out_len: the prefix with its last byte below 0xff incremented and what follows dropped. A prefix of
 * 0xff bytes only (or an empty one) gives the one byte "\0", which etcd reads as "every key from here on". */
void oa_etcd_prefix_end(const void *prefix, size_t prefix_len, unsigned char *out, size_t *out_len);

/* ---- watch ---- */

typedef enum oa_etcd_event_type_e { OA_ETCD_EVENT_PUT, OA_ETCD_EVENT_DELETE } oa_etcd_event_type_t;

typedef struct oa_etcd_event_s {
    oa_etcd_event_type_t type;
    oa_etcd_kv_t kv; /* DELETE: the key, its mod_revision (that of the delete) and an empty value */
} oa_etcd_event_t;

typedef enum oa_etcd_watch_kind_e {
    OA_ETCD_WATCH_EVENTS,    /* events, in revision order; more will follow */
    OA_ETCD_WATCH_COMPACTED, /* final: the start revision was compacted (compact_revision); read again, watch again */
    OA_ETCD_WATCH_ERROR,     /* final: etcd refused the watch (err, why), e.g. OA_ETCD_E_AUTH */
    OA_ETCD_WATCH_CANCELLED, /* final: oa_etcd_watch_stop or oa_etcd_close */
} oa_etcd_watch_kind_t;

typedef struct oa_etcd_watch_update_s {
    oa_etcd_watch_kind_t kind;
    const oa_etcd_event_t *events; /* EVENTS only */
    size_t n_events;
    int64_t revision;         /* EVENTS: the store's revision; the watch has seen every change up to the last event */
    int64_t compact_revision; /* COMPACTED: the oldest revision still available */
    oa_etcd_err_t err;        /* ERROR */
    const char *why;          /* ERROR, COMPACTED: a sentence; else "" */
} oa_etcd_watch_update_t;

/* Fires from the loop. After a final kind nothing more fires and w is freed once the callback returns. */
typedef void (*oa_etcd_watch_cb)(oa_etcd_watch_t *w, const oa_etcd_watch_update_t *u, void *data);

/*
 * Watches a key or a range (range_end as oa_etcd_range) from start_revision (0: changes after now). When the
 * member's stream breaks (the member died, lost its leader, or closed the connection) or the member stops answering
 * (a stream quiet for watch_probe_ms is checked with a small read on the same member, which must answer within the
 * attempt timeout), the watch goes on from the last revision it delivered + 1 on the next member, so every change
 * arrives once and in order. Returns 0 with *out set (when out is not NULL) or a negative UV_E* as the calls do (cb
 * will not fire).
 */
int oa_etcd_watch_start(oa_etcd_t *c, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                        int64_t start_revision, oa_etcd_watch_cb cb, void *data, oa_etcd_watch_t **out);

/* Stops w: its callback fires once more, later from the loop, with OA_ETCD_WATCH_CANCELLED. Does nothing once the
 * final update was delivered or is about to be (so it is safe inside the callback). */
void oa_etcd_watch_stop(oa_etcd_watch_t *w);

#endif
