/*
 * Cluster mode over Redis: the node registry, the shared configuration, the poller lease and the shared status.
 *
 * Two Redis connections (oa_redis.h) share the agent's loop: `cmd` for commands, `sub` subscribed to the events
 * channel (a subscribed connection can send nothing else). Either one failing takes both down, because a node that
 * misses messages must resynchronise anyway; the reconnect then subscribes first and reads the store second, so a
 * change published in between is never lost (at worst it is applied twice, which versions make harmless).
 *
 * Teardown follows oa_redis's rules: a connection is forgotten (its pointer set to NULL) before oa_redis_free, whose
 * queued callbacks run with a NULL reply before it returns and must touch nothing but their own request; a
 * connection may be freed from inside one of its own callbacks.
 *
 * Every write that must be atomic is one Lua script: the configuration's compare-and-set on its version (with the
 * PUBLISH inside, so no node can see the write without the message or the reverse), the seed after a store restart,
 * the lease renewal, the heartbeat (SET the node's key, prune the dead from the node set and return the live), and
 * the status and state records (number, SET and PUBLISH).
 *
 * The configuration is identified by (epoch, version). The epoch names one life of the stored configuration: a
 * random id (16 hex digits) made by the node whose script finds the conf hash empty (a new store, or one that
 * restarted without persistence), kept by every later write until the store loses it again. Within an epoch the
 * version only grows, by one per committed PUT. The hash also carries "seeded": 1 while what it holds was only
 * seeded (copied from a node's memory into the empty store, or replaced by a better-informed seed), 0 once a PUT
 * committed in that epoch. The rules, exactly:
 *   - the seed (each node, once per (re)connection, after subscribing): on an empty hash it writes the node's
 *     configuration and version under a new epoch with seeded=1; on a hash with seeded=1 it replaces the
 *     configuration and version (keeping the epoch) only when the node's version is higher, so that the
 *     best-informed node wins while nothing was written yet; on seeded=0 it never writes: an acknowledged PUT is
 *     never overwritten by a seed. A hash without an epoch (written before epochs existed) is given one, seeded=0;
 *   - the compare-and-set of a PUT writes only when the stored epoch and version are the node's; on an empty hash
 *     it writes anyway, at the node's version + 1 under a new epoch, as a seed and the PUT at once; a write always
 *     sets seeded=0;
 *   - a node adopts what its seed returns (the store's configuration after the seed) whatever the versions, because
 *     the store is the truth once it has been read; the one exception is a newer configuration of the same epoch
 *     applied from a message while the seed was on its way;
 *   - a configuration seen on a live connection (a message, the reply to a compare-and-set) is applied when its
 *     epoch differs from the node's, even at a lower version (the store lost what the node knew, and its new life
 *     wins), or when it has the node's epoch and a higher version; never when its epoch is the one the node has
 *     just left (a message written before the store was emptied, overtaken on the other connection);
 *   - a committed write is applied from the reply to it even when its PUT was answered "not confirmed in time"; this
 *     node's own conf message is applied only while no compare-and-set reply is owed, because that reply puts the
 *     write in force itself, under the PUT's user, and must not find it already applied (or be applied twice).
 * <data_dir>/cluster.json keeps the epoch with the version. What these rules cannot do is bring back everything a
 * store without persistence lost: after it restarts empty, what it held returns only through seeds, and seeds count
 * only until the first PUT of the new epoch commits. A node that comes back after that with a newer configuration
 * from before the restart (acknowledged PUTs included) adopts the store's instead; a PUT acknowledged by a store
 * that lost it before any node applied it is gone at once. Run the store with persistence where that matters.
 *
 * The status and state records are numbered by the store, not by the nodes: two nodes' clocks never have to agree,
 * and a poller that takes over continues the same sequence. A node forgets the highest number it has seen when it
 * reconnects, because a store that restarted empty starts counting again.
 */
#include <ctype.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_cluster.h"
#include "oa_log.h"
#include "oa_redis.h"
#include "oa_util.h"

#define DEFAULT_PORT 6379
#define DEFAULT_HEARTBEAT_MS 1000
#define DEFAULT_NODE_TTL_MS 3000
#define DEFAULT_LEASE_MS 3000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define CLOSE_GRACE_MS 1000
#define PUT_TIMEOUT_MS 3000
#define PUT_MAX_ROUNDS 5
#define LACKING_MAX 512
#define HANDSHAKE_TIMEOUT_MS 2000
#define EPOCH_LEN 16

#define K_CONF OA_CLUSTER_KEY_PREFIX "conf"
#define K_NODE OA_CLUSTER_KEY_PREFIX "node:"
#define K_NODES OA_CLUSTER_KEY_PREFIX "nodes"
#define K_LEASE OA_CLUSTER_KEY_PREFIX "lease"
#define K_STATUS OA_CLUSTER_KEY_PREFIX "status"
#define K_SCHED OA_CLUSTER_KEY_PREFIX "sched"
#define K_SEQ OA_CLUSTER_KEY_PREFIX "seq"
#define K_EVENTS OA_CLUSTER_KEY_PREFIX "events"

/* KEYS: conf, events. ARGV: this node's epoch, its version (the one expected), the new conf JSON, the node id as a
 * JSON string, a fresh epoch (used when the hash is empty). Writes when the stored epoch and version are the node's,
 * or when the hash is empty (a seed and the write at once, under the fresh epoch); every write clears "seeded".
 * Returns {1, new version, conf, epoch} when written, {0, stored version, stored conf, stored epoch} when not. */
static const char lua_conf_cas[] =
    "local h = redis.call('HMGET', KEYS[1], 'version', 'conf', 'epoch')\n"
    "local epoch = h[3]\n"
    "if not h[1] then\n"
    "  epoch = ARGV[5]\n"
    "elseif epoch ~= ARGV[1] or tonumber(h[1]) ~= tonumber(ARGV[2]) then\n"
    "  return {0, tonumber(h[1]) or 0, h[2] or '', epoch or ''}\n"
    "end\n"
    "local v = tonumber(ARGV[2]) + 1\n"
    "redis.call('HSET', KEYS[1], 'version', v, 'conf', ARGV[3], 'epoch', epoch, 'seeded', '0')\n"
    "redis.call('PUBLISH', KEYS[2], '{\"type\":\"conf\",\"epoch\":\"' .. epoch .. '\",\"version\":' .. v .. "
    "',\"node\":' .. ARGV[4] .. ',\"conf\":' .. ARGV[3] .. '}')\n"
    "return {1, v, ARGV[3], epoch}\n";

/* Same KEYS and ARGV, ARGV[2] being this node's version. The seed at every (re)connection: an empty hash gets the
 * node's configuration under the fresh epoch, seeded=1; a hash still seeded=1 gets it only when the node's version
 * is higher (the epoch stays); a hash with seeded=0 (a PUT committed in its epoch) is never written. A hash without
 * an epoch gets one, seeded=0. Returns {version, conf or "", epoch, written}: written is 0 when nothing was
 * written, 1 when the hash was empty, 2 when a seeded configuration of a lower version was replaced. */
static const char lua_conf_seed[] =
    "local h = redis.call('HMGET', KEYS[1], 'version', 'conf', 'epoch', 'seeded')\n"
    "local mine = tonumber(ARGV[2])\n"
    "local epoch = h[3]\n"
    "local write = 0\n"
    "if not h[1] then\n"
    "  epoch = ARGV[5]\n"
    "  write = 1\n"
    "elseif not epoch then\n"
    "  epoch = ARGV[5]\n"
    "  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seeded', '0')\n"
    "elseif h[4] == '1' and mine > (tonumber(h[1]) or 0) then\n"
    "  write = 2\n"
    "end\n"
    "if write == 0 then return {tonumber(h[1]) or 0, h[2] or '', epoch, 0} end\n"
    "redis.call('HSET', KEYS[1], 'version', mine, 'conf', ARGV[3], 'epoch', epoch, 'seeded', '1')\n"
    "redis.call('PUBLISH', KEYS[2], '{\"type\":\"conf\",\"epoch\":\"' .. epoch .. '\",\"version\":' .. mine .. "
    "',\"node\":' .. ARGV[4] .. ',\"conf\":' .. ARGV[3] .. '}')\n"
    "return {mine, ARGV[3], epoch, write}\n";

/* KEYS: lease. ARGV: node id, lease ms. 1 when renewed, 0 when the lease is someone else's. A lease that vanished
 * (a store restarted empty) is taken back by its holder if nobody took it meanwhile. */
static const char lua_lease_renew[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n"
    "if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end\n"
    "return 0\n";

/* KEYS: lease. ARGV: node id. */
static const char lua_lease_release[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* KEYS: node key prefix, node set. ARGV: node id, node JSON, ttl ms. Returns the JSON of every live node. */
static const char lua_heartbeat[] =
    "redis.call('SET', KEYS[1] .. ARGV[1], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "local out = {}\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
    "  local v = redis.call('GET', KEYS[1] .. id)\n"
    "  if v then out[#out + 1] = v else redis.call('SREM', KEYS[2], id) end\n"
    "end\n"
    "return out\n";

/* KEYS: seq, events, then every key that stores the record. ARGV: the record, a JSON object of at least one member.
 * The record gets the next number as its first member, "seq"; it is stored and published as one text. Returns the
 * number. */
static const char lua_publish[] =
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local msg = '{\"seq\":' .. seq .. ',' .. string.sub(ARGV[1], 2)\n"
    "for i = 3, #KEYS do redis.call('SET', KEYS[i], msg) end\n"
    "redis.call('PUBLISH', KEYS[2], msg)\n"
    "return seq\n";

/* Messages counted by type, for the metrics. */
enum { MSG_CONF, MSG_STATUS, MSG_STATE, MSG_INVALID, MSG_TYPES };
static const char *const msg_type_names[MSG_TYPES] = {"conf", "status", "state", "invalid"};

/* Rounds of PUT /v1/ocsp by outcome, for the metrics. */
enum { PUT_COMMITTED, PUT_CONFLICT_RETRY, PUT_UNAVAILABLE, PUT_TIMEOUT, PUT_RESULTS };
static const char *const put_result_names[PUT_RESULTS] = {"committed", "conflict_retry", "unavailable", "timeout"};

typedef struct put_s {
    oa_cluster_t *cluster;
    struct put_s *prev, *next;
    char *body;
    size_t len;
    char *responder_url;
    char *user;
    oa_cluster_put_cb cb;
    void *data;
    int rounds;
    oa_conf_t next_conf;
    unsigned changed;
    bool answered;     /* cb has fired */
    bool reply_owed;   /* an EVAL is outstanding; its callback still holds the put */
    bool timer_closed;
    uv_timer_t timeout;
} put_t;

struct oa_cluster_s {
    uv_loop_t *loop;
    char host[OA_CLUSTER_HOST_MAX];
    int port;
    int db;
    char *password;
    char *node_id;
    char *node_id_json; /* the id as a JSON string, for the scripts' messages */
    char *node_json;    /* this node's registry entry */
    char *caps;
    char *version_path;
    SSL_CTX *tls; /* a reference of our own; NULL: plain TCP */
    unsigned heartbeat_ms, node_ttl_ms, lease_ms;
    oa_cluster_hooks_t hooks;

    oa_redis_t *cmd;
    oa_redis_t *sub;
    bool cmd_connected;
    bool synced; /* subscribed, and the store was read: PUTs may go */
    bool outage_logged;
    bool ever_synced;
    unsigned backoff_ms;
    uint64_t connect_started;

    oa_conf_t conf;
    uint64_t version;
    char epoch[EPOCH_LEN + 1];      /* the epoch of conf and version; "" before this node ever read one */
    char prev_epoch[EPOCH_LEN + 1]; /* the epoch this node left last, whose late messages are ignored */
    unsigned cas_owed;              /* compare-and-set replies still to come, answered PUTs' included */
    bool conf_live;                 /* a configuration was applied from a message since the seed was sent */
    uint64_t refused_base;          /* put_counts[PUT_UNAVAILABLE] when the store was last synchronised */

    char lacking[LACKING_MAX]; /* nodes without "ocsp", ", "-separated; "" when none */
    char members[LACKING_MAX]; /* live node ids, for the membership log line */

    bool poller;
    uint64_t lease_deadline; /* uv_now after which this node no longer counts on its lease */
    bool lease_owed;
    uint64_t lease_sent;
    bool hb_owed;
    uint64_t hb_sent;

    uint64_t last_seq; /* the highest status/state number seen since the last (re)connection */

    /* Metrics. */
    unsigned live_nodes;
    unsigned lacking_nodes;
    uint64_t disconnects;
    uint64_t messages[MSG_TYPES];
    uint64_t put_counts[PUT_RESULTS];

    put_t *puts;

    uv_timer_t tick;
    uv_timer_t retry;
    uv_timer_t grace;
    bool closing;
    int pending_closes;
    void (*done)(void *arg);
    void *done_arg;
};

static void connect_store(oa_cluster_t *c);
static void tick_now(oa_cluster_t *c);
static void on_retry(uv_timer_t *t);
static void release(oa_cluster_t *c);

/* ---- small helpers ---- */

int oa_cluster_url_parse(const char *url, char host[OA_CLUSTER_HOST_MAX], int *port, int *db, oa_error_t *err)
{
    const char *p, *h, *hend, *q;
    long v;
    size_t hl;
    char *end;

    if (oa_cluster_url_is_tls(url))
        p = url + 9;
    else if (url != NULL && strncmp(url, "redis://", 8) == 0)
        p = url + 8;
    else
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected redis[s]://HOST:PORT[/DB], got \"%.64s\"",
                            url ? url : "");
    if (strchr(p, '@') != NULL)
        return oa_error_set(err, OA_E_BAD_OPTION,
                            "--cluster: credentials in the URL are not accepted; use --cluster-password");
    if (*p == '[') {
        h = p + 1;
        hend = strchr(h, ']');
        if (hend == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: unterminated [IPv6] address in \"%.64s\"", url);
        q = hend + 1;
    } else {
        h = p;
        hend = h + strcspn(h, ":/");
        q = hend;
    }
    hl = (size_t)(hend - h);
    if (hl == 0 || hl >= OA_CLUSTER_HOST_MAX)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: missing or too long host in \"%.64s\"", url);
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && strchr(".-_:", h[i]) == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: invalid host in \"%.64s\"", url);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = DEFAULT_PORT;
    *db = 0;
    if (*q == ':') {
        v = strtol(q + 1, &end, 10);
        if (!isdigit((unsigned char)q[1]) || v < 1 || v > 65535 || (*end != '\0' && *end != '/'))
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected a port from 1 to 65535 in \"%.64s\"",
                                url);
        *port = (int)v;
        q = end;
    }
    if (*q == '/' && q[1] != '\0') {
        v = strtol(q + 1, &end, 10);
        if (!isdigit((unsigned char)q[1]) || v < 0 || v > 15 || *end != '\0')
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected a database number from 0 to 15 in "
                                "\"%.64s\"", url);
        *db = (int)v;
    } else if (*q != '\0' && strcmp(q, "/") != 0) {
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected redis[s]://HOST:PORT[/DB], got \"%.64s\"",
                            url);
    }
    return 0;
}

int oa_cluster_url_is_tls(const char *url)
{
    return url != NULL && strncmp(url, "rediss://", 9) == 0;
}

int oa_cluster_caps_valid(const char *caps)
{
    const char *p;
    bool empty_item = true;

    if (caps == NULL)
        return -1;
    if (caps[0] == '\0')
        return 0;
    for (p = caps; *p != '\0'; p++) {
        if (*p == ',') {
            if (empty_item)
                return -1;
            empty_item = true;
        } else if (islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_' || *p == '-') {
            empty_item = false;
        } else {
            return -1;
        }
    }
    return empty_item ? -1 : 0;
}

int oa_cluster_caps_have(const char *caps, const char *name)
{
    size_t n = strlen(name);
    const char *p = caps;

    while (p != NULL && *p != '\0') {
        size_t len = strcspn(p, ",");

        if (len == n && memcmp(p, name, n) == 0)
            return 1;
        p = p[len] == ',' ? p + len + 1 : NULL;
    }
    return 0;
}

static int64_t json_int(json_t *o, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(o, key);

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

/* The stored form: the five settable keys, without responder_url, which is each node's own. */
static char *conf_dump(const oa_conf_t *conf)
{
    json_t *o = oa_conf_to_json(conf, NULL);
    char *s;

    if (o == NULL)
        return NULL;
    json_object_del(o, "responder_url");
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Reads a stored configuration strictly: all five keys present, each of its type and in range. */
static int conf_from_json(json_t *o, oa_conf_t *out)
{
    static const struct {
        const char *key;
        size_t off;
        int min, max;
    } ints[] = {
        {"query_frequency", offsetof(oa_conf_t, query_frequency), OA_CONF_QUERY_FREQUENCY_MIN,
         OA_CONF_QUERY_FREQUENCY_MAX},
        {"response_timeout", offsetof(oa_conf_t, response_timeout), OA_CONF_RESPONSE_TIMEOUT_MIN,
         OA_CONF_RESPONSE_TIMEOUT_MAX},
        {"recovery_frequency", offsetof(oa_conf_t, recovery_frequency), OA_CONF_RECOVERY_FREQUENCY_MIN,
         OA_CONF_RECOVERY_FREQUENCY_MAX},
        {"recovery_max_tries", offsetof(oa_conf_t, recovery_max_tries), OA_CONF_RECOVERY_MAX_TRIES_MIN,
         OA_CONF_RECOVERY_MAX_TRIES_MAX},
    };
    oa_conf_t c;
    json_t *v;
    size_t i;

    if (!json_is_object(o))
        return -1;
    v = json_object_get(o, "ocsp_functionality");
    if (!json_is_boolean(v))
        return -1;
    c.ocsp_functionality = json_is_true(v);
    for (i = 0; i < OA_ARRAY_SIZE(ints); i++) {
        v = json_object_get(o, ints[i].key);
        if (!json_is_integer(v) || json_integer_value(v) < ints[i].min || json_integer_value(v) > ints[i].max)
            return -1;
        *(int *)((char *)&c + ints[i].off) = (int)json_integer_value(v);
    }
    *out = c;
    return 0;
}

static int conf_from_text(const char *text, size_t len, oa_conf_t *out)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    int rc = conf_from_json(o, out);

    json_decref(o);
    return rc;
}

/* The epoch comes first, so that the file always ends with the version. */
static void save_version(oa_cluster_t *c)
{
    char text[96];
    int rc, n;

    if (c->version_path == NULL)
        return;
    n = snprintf(text, sizeof(text), "{\"conf_epoch\":\"%s\",\"conf_version\":%" PRIu64 "}\n", c->epoch,
                 c->version);
    rc = oa_file_write_atomic(c->version_path, text, (size_t)n, 0600);
    if (rc != 0)
        OA_LOG(OA_LOG_ERROR, "cluster_version_persist_failed", OA_KV_STR("path", c->version_path),
               OA_KV_STR("reason", uv_strerror(rc)));
}

/* 1 when s is an epoch as the scripts store it: 1 to EPOCH_LEN characters of [0-9a-f]. */
static int epoch_valid(const char *s, size_t len)
{
    size_t i;

    if (s == NULL || len == 0 || len > EPOCH_LEN)
        return 0;
    for (i = 0; i < len; i++)
        if (!isdigit((unsigned char)s[i]) && (s[i] < 'a' || s[i] > 'f'))
            return 0;
    return 1;
}

/* A file without an epoch (written before epochs existed) gives "": whatever the store holds then differs. */
static void load_version(oa_cluster_t *c)
{
    oa_buf_t buf;
    json_t *o;
    const char *e;

    oa_buf_init(&buf);
    if (c->version_path != NULL && oa_file_read(c->version_path, 4096, &buf) == 0) {
        o = json_loadb(buf.data, buf.len, 0, NULL);
        c->version = (uint64_t)(json_int(o, "conf_version", 0) > 0 ? json_int(o, "conf_version", 0) : 0);
        e = json_string_value(json_object_get(o, "conf_epoch"));
        if (e != NULL && epoch_valid(e, strlen(e)))
            snprintf(c->epoch, sizeof(c->epoch), "%s", e);
        json_decref(o);
    }
    oa_buf_free(&buf);
}

/* A fresh epoch for a script that may find the hash empty. */
static void new_epoch(char out[EPOCH_LEN + 1])
{
    unsigned char raw[EPOCH_LEN / 2];
    size_t i;

    if (RAND_bytes(raw, (int)sizeof(raw)) != 1) {
        /* Uniqueness is all an epoch needs; the clock and the address of a stack variable will do. */
        uint64_t x = (uint64_t)oa_time_now_ms() ^ ((uint64_t)(uintptr_t)raw << 16);

        ERR_clear_error();
        for (i = 0; i < sizeof(raw); i++)
            raw[i] = (unsigned char)(x >> (8 * i));
    }
    for (i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* Whether a configuration seen on a live connection, of epoch and version, is news here (see the header). */
static bool conf_is_news(const oa_cluster_t *c, const char *epoch, uint64_t version)
{
    if (strcmp(epoch, c->epoch) != 0)
        return strcmp(epoch, c->prev_epoch) != 0;
    return version > c->version;
}

/* Puts a configuration from the store in force; epoch and version are the store's. A configuration that differs from
 * the one in force only by its epoch is recorded silently: nothing changed for the daemon. */
static void adopt_conf(oa_cluster_t *c, const oa_conf_t *conf, const char *epoch, uint64_t version, const char *user,
                       const char *from)
{
    unsigned changed = oa_conf_diff(&c->conf, conf);
    bool same = changed == 0 && version == c->version;

    c->conf = *conf;
    if (strcmp(epoch, c->epoch) != 0 || version != c->version) {
        if (strcmp(epoch, c->epoch) != 0) {
            memcpy(c->prev_epoch, c->epoch, sizeof(c->prev_epoch));
            snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
        }
        c->version = version;
        save_version(c);
    }
    if (same)
        return;
    OA_LOG(OA_LOG_INFO, "cluster_conf_applied", OA_KV_INT("version", (int64_t)version), OA_KV_STR("epoch", epoch),
           OA_KV_STR("from", from), OA_KV_INT("changed", changed != 0));
    if (c->hooks.conf != NULL)
        c->hooks.conf(c->hooks.data, conf, changed, user, from);
}

static void set_role(oa_cluster_t *c, bool poller, const char *why)
{
    if (c->poller == poller)
        return;
    c->poller = poller;
    OA_LOG(OA_LOG_INFO, poller ? "cluster_poller_acquired" : "cluster_poller_released", OA_KV_STR("reason", why));
    if (c->hooks.role != NULL)
        c->hooks.role(c->hooks.data, poller);
}

static oa_redis_t *ready_cmd(oa_cluster_t *c)
{
    return c->cmd != NULL && c->cmd_connected && !c->closing ? c->cmd : NULL;
}

/* ---- PUT ---- */

static void put_maybe_free(put_t *p)
{
    if (p->reply_owed || !p->timer_closed)
        return;
    free(p->body);
    free(p->responder_url);
    free(p->user);
    free(p);
}

static void on_put_timer_closed(uv_handle_t *h)
{
    put_t *p = oa_container_of(h, put_t, timeout);
    oa_cluster_t *c = p->cluster;

    p->timer_closed = true;
    put_maybe_free(p);
    release(c);
}

/* Answers the caller once; the put itself lives on until its EVAL has come back. */
static void put_answer(put_t *p, const oa_error_t *err)
{
    oa_cluster_t *c = p->cluster;

    if (p->answered)
        return;
    p->answered = true;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        c->puts = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    uv_timer_stop(&p->timeout);
    c->pending_closes++;
    uv_close((uv_handle_t *)&p->timeout, on_put_timer_closed);
    p->cb(p->data, err);
}

static void put_fail(put_t *p, oa_errcode_t code, const char *text)
{
    oa_error_t err;

    oa_error_set(&err, code, "%s", text);
    put_answer(p, &err);
}

static void on_put_timeout(uv_timer_t *t)
{
    put_t *p = oa_container_of(t, put_t, timeout);

    p->cluster->put_counts[PUT_TIMEOUT]++;
    put_fail(p, OA_E_STORE_UNAVAILABLE, "The cluster store did not confirm the change in time; it may or may not "
                                        "have been applied.");
}

static int put_attempt(put_t *p, oa_error_t *err);

/* The reply of the compare-and-set script: {written, version, conf, epoch}, the epoch valid. */
static bool cas_reply_valid(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ARRAY && reply->elements == 4 && reply->element[0]->type == REDIS_REPLY_INTEGER &&
           reply->element[1]->type == REDIS_REPLY_INTEGER && reply->element[1]->integer >= 0 &&
           reply->element[2]->type == REDIS_REPLY_STRING && reply->element[3]->type == REDIS_REPLY_STRING &&
           (reply->element[3]->len == 0 || epoch_valid(reply->element[3]->str, reply->element[3]->len));
}

static void on_put_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    put_t *p = priv;
    oa_cluster_t *c = p->cluster;
    oa_conf_t stored;
    oa_error_t err;
    const char *epoch;
    uint64_t v;
    int rc;

    (void)r;
    p->reply_owed = false;
    c->cas_owed--;
    if (reply == NULL || c->closing) {
        /* Whatever happened to the write, the next resynchronisation reads it from the store. */
        if (p->answered) {
            put_maybe_free(p);
            return;
        }
        c->put_counts[PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "The connection to the cluster store was lost before it confirmed the "
                                            "change; it may or may not have been applied.");
        return;
    }
    if (!cas_reply_valid(reply)) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "conf_cas"),
               OA_KV_STR("reply", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"));
        if (p->answered) {
            put_maybe_free(p);
            return;
        }
        c->put_counts[PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "The cluster store refused the change.");
        return;
    }
    v = (uint64_t)reply->element[1]->integer;
    epoch = reply->element[3]->str;
    if (reply->element[0]->integer == 1) {
        /* Committed: the store and every other node have it, so this node puts it in force too, even when the PUT
         * was already answered "not confirmed in time". A round is counted once, as its answer said. Not when a newer
         * configuration is already in force (applied from a message that overtook this reply). */
        if (!p->answered)
            c->put_counts[PUT_COMMITTED]++;
        if (conf_is_news(c, epoch, v))
            adopt_conf(c, &p->next_conf, epoch, v, p->user, c->node_id);
        if (p->answered)
            put_maybe_free(p);
        else
            put_answer(p, NULL);
        return;
    }
    if (p->answered) {
        /* Not written, and nobody waits for it any more. */
        put_maybe_free(p);
        return;
    }
    /* Another node's change came first: take it, then judge the request again against it. */
    c->put_counts[PUT_CONFLICT_RETRY]++;
    if (reply->element[2]->len > 0 && conf_from_text(reply->element[2]->str, reply->element[2]->len, &stored) == 0 &&
        conf_is_news(c, epoch, v))
        adopt_conf(c, &stored, epoch, v, NULL, "store");
    if (++p->rounds >= PUT_MAX_ROUNDS) {
        c->put_counts[PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "Too many concurrent changes of the cluster configuration; retry.");
        return;
    }
    rc = put_attempt(p, &err);
    if (rc < 0 && err.code == OA_E_STORE_UNAVAILABLE)
        c->put_counts[PUT_UNAVAILABLE]++;
    if (rc != 0)
        put_answer(p, rc > 0 ? NULL : &err);
}

/* Validates the body against the latest configuration and sends the compare-and-set. 1 when there is nothing to
 * write, 0 when sent, -1 with err filled. */
static int put_attempt(put_t *p, oa_error_t *err)
{
    oa_cluster_t *c = p->cluster;
    oa_redis_t *r = ready_cmd(c);
    char ver[32], fresh[EPOCH_LEN + 1], *json;
    int rc;

    if (r == NULL || !c->synced)
        return oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable; the configuration "
                                                         "cannot be changed now.");
    if (oa_conf_patch(&c->conf, p->responder_url, p->body != NULL ? p->body : "", p->len, &p->next_conf,
                      &p->changed, err) != 0)
        return -1;
    if (p->changed == 0)
        return 1;
    json = conf_dump(&p->next_conf);
    if (json == NULL)
        return oa_error_set(err, OA_E_NOMEM, "Out of memory.");
    snprintf(ver, sizeof(ver), "%" PRIu64, c->version);
    new_epoch(fresh);
    rc = oa_redis_command(r, on_put_reply, p, "EVAL %s 2 %s %s %s %s %s %s %s", lua_conf_cas, K_CONF, K_EVENTS,
                          c->epoch, ver, json, c->node_id_json, fresh);
    free(json);
    if (rc != 0)
        return oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable.");
    p->reply_owed = true;
    c->cas_owed++;
    return 0;
}

int oa_cluster_conf_put(oa_cluster_t *c, const char *body, size_t len, const char *responder_url, const char *user,
                        oa_cluster_put_cb cb, void *data, oa_error_t *err)
{
    put_t *p;
    int rc;

    if (ready_cmd(c) == NULL || !c->synced) {
        c->put_counts[PUT_UNAVAILABLE]++;
        return oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable; the configuration "
                                                         "cannot be changed now.");
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return oa_error_set(err, OA_E_NOMEM, "Out of memory.");
    p->cluster = c;
    p->cb = cb;
    p->data = data;
    p->len = len;
    p->body = malloc(len + 1);
    p->responder_url = strdup(responder_url != NULL ? responder_url : "");
    p->user = strdup(user != NULL ? user : "");
    if (p->body == NULL || p->responder_url == NULL || p->user == NULL) {
        free(p->body);
        free(p->responder_url);
        free(p->user);
        free(p);
        return oa_error_set(err, OA_E_NOMEM, "Out of memory.");
    }
    if (len > 0)
        memcpy(p->body, body, len);
    p->body[len] = '\0';
    uv_timer_init(c->loop, &p->timeout);
    p->next = c->puts;
    if (c->puts != NULL)
        c->puts->prev = p;
    c->puts = p;
    rc = put_attempt(p, err);
    if (rc == 0) {
        uv_timer_start(&p->timeout, on_put_timeout, PUT_TIMEOUT_MS, 0);
        return 0;
    }
    if (rc < 0 && err->code == OA_E_STORE_UNAVAILABLE)
        c->put_counts[PUT_UNAVAILABLE]++;
    /* Nothing was sent: undo without calling cb. */
    p->answered = true;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        c->puts = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    c->pending_closes++;
    uv_close((uv_handle_t *)&p->timeout, on_put_timer_closed);
    return rc < 0 ? -1 : 1;
}

/* ---- the status ---- */

void oa_cluster_publish_result(oa_cluster_t *c, const oa_ocsp_result_t *res)
{
    oa_redis_t *r = ready_cmd(c);
    json_t *msg = NULL;
    char *b64 = NULL, *text = NULL;
    int n;

    if (r == NULL || !c->synced || res == NULL || res->der == NULL || res->der_len > 256 * 1024)
        return;
    b64 = malloc(4 * ((res->der_len + 2) / 3) + 1);
    if (b64 == NULL)
        goto out;
    n = EVP_EncodeBlock((unsigned char *)b64, res->der, (int)res->der_len);
    b64[n] = '\0';
    /* The parsed fields are for whoever reads the store (an operator with redis-cli, a monitoring probe); nodes
     * trust only the DER, which they verify themselves. Times are Unix seconds. */
    msg = json_pack("{s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:s}", "type", "status", "node", c->node_id, "ts",
                    (json_int_t)oa_time_now_ms(), "cert_status", oa_cert_status_name(res->cert_status),
                    "produced_at", (json_int_t)res->produced_at, "this_update", (json_int_t)res->this_update,
                    "next_update", (json_int_t)res->next_update, "der", b64);
    if (msg != NULL && res->cert_status == OA_CERT_REVOKED &&
        (json_object_set_new(msg, "revocation_time", json_integer((json_int_t)res->revocation_time)) != 0 ||
         (res->revocation_reason >= 0 &&
          json_object_set_new(msg, "revocation_reason", json_integer(res->revocation_reason)) != 0)))
        goto out;
    text = msg != NULL ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (text == NULL)
        goto out;
    if (oa_redis_command(r, NULL, NULL, "EVAL %s 3 %s %s %s %s", lua_publish, K_SEQ, K_EVENTS, K_STATUS, text) == 0)
        OA_LOG(OA_LOG_INFO, "cluster_status_published", OA_KV_STR("cert_status", oa_cert_status_name(res->cert_status)),
               OA_KV_INT("der_bytes", res->der_len));
out:
    free(text);
    json_decref(msg);
    free(b64);
}

/* A status message, from the channel or read back at resynchronisation. */
static void handle_status(oa_cluster_t *c, json_t *o, bool from_store)
{
    const char *node = json_string_value(json_object_get(o, "node"));
    const char *b64 = json_string_value(json_object_get(o, "der"));
    unsigned char *der;
    size_t len, pad = 0;
    int n;

    if (node == NULL || b64 == NULL || (strcmp(node, c->node_id) == 0 && (!from_store || c->poller)))
        return;
    len = strlen(b64);
    if (len == 0 || len % 4 != 0)
        return;
    der = malloc(len / 4 * 3 + 1);
    if (der == NULL)
        return;
    n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)len);
    if (b64[len - 1] == '=')
        pad++;
    if (len > 1 && b64[len - 2] == '=')
        pad++;
    if (n > 0 && (size_t)n > pad && c->hooks.status != NULL)
        c->hooks.status(c->hooks.data, der, (size_t)n - pad, json_int(o, "ts", oa_time_now_ms()), node);
    free(der);
}

/* A record's number decides whether it is news: 0 (a record without one) always is. */
static bool seq_is_new(oa_cluster_t *c, json_t *o)
{
    int64_t seq = json_int(o, "seq", 0);

    if (seq <= 0)
        return true;
    if ((uint64_t)seq <= c->last_seq)
        return false;
    c->last_seq = (uint64_t)seq;
    return true;
}

/* Kept apart from the status so that the state can travel without the response, and the reverse. */
void oa_cluster_publish_state(oa_cluster_t *c, const oa_sched_view_t *v)
{
    oa_redis_t *r = ready_cmd(c);
    bool invalidated = v->state == OA_STATE_INVALIDATED;
    json_t *msg;
    char *text = NULL;
    int rc;

    if (r == NULL || !c->synced)
        return;
    msg = json_pack("{s:s, s:s, s:I, s:s, s:b, s:i, s:i, s:I, s:s, s:s}", "type", "state", "node", c->node_id, "ts",
                    (json_int_t)oa_time_now_ms(), "state", oa_sched_state_name(v->state), "recovering",
                    (int)v->recovering, "consecutive_failures", v->consecutive_failures, "recovery_tries",
                    v->recovery_tries, "last_attempt_ms", (json_int_t)v->last_attempt_ms, "last_error_code",
                    v->last_error_code != NULL ? v->last_error_code : "", "last_error",
                    v->last_error != NULL ? v->last_error : "");
    text = msg != NULL ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (text == NULL)
        goto out;
    /* An invalidation replaces the stored response too: a node that reads the store later must not serve it. */
    if (invalidated)
        rc = oa_redis_command(r, NULL, NULL, "EVAL %s 4 %s %s %s %s %s", lua_publish, K_SEQ, K_EVENTS, K_SCHED,
                              K_STATUS, text);
    else
        rc = oa_redis_command(r, NULL, NULL, "EVAL %s 3 %s %s %s %s", lua_publish, K_SEQ, K_EVENTS, K_SCHED, text);
    if (rc == 0)
        OA_LOG(invalidated ? OA_LOG_INFO : OA_LOG_DEBUG, "cluster_state_published",
               OA_KV_STR("state", oa_sched_state_name(v->state)), OA_KV_STR("error_code", v->last_error_code),
               OA_KV_INT("consecutive_failures", v->consecutive_failures));
out:
    free(text);
    json_decref(msg);
}

static int state_from_name(const char *name, oa_sched_state_t *out)
{
    static const oa_sched_state_t all[] = {OA_STATE_DISABLED, OA_STATE_PENDING, OA_STATE_VALID, OA_STATE_RECOVERING,
                                           OA_STATE_INVALIDATED};
    size_t i;

    for (i = 0; name != NULL && i < OA_ARRAY_SIZE(all); i++) {
        if (strcmp(name, oa_sched_state_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return -1;
}

/* A state message, from the channel or read back at resynchronisation. */
static void handle_state(oa_cluster_t *c, json_t *o, bool from_store)
{
    const char *node = json_string_value(json_object_get(o, "node"));
    oa_sched_view_t v;

    if (node == NULL || state_from_name(json_string_value(json_object_get(o, "state")), &v.state) != 0)
        return;
    /* The poller's own memory is the truth; a record it wrote earlier may be older than what it knows now. */
    if (strcmp(node, c->node_id) == 0 && (!from_store || c->poller))
        return;
    v.recovering = json_is_true(json_object_get(o, "recovering"));
    v.consecutive_failures = (int)json_int(o, "consecutive_failures", 0);
    v.recovery_tries = (int)json_int(o, "recovery_tries", 0);
    v.last_attempt_ms = json_int(o, "last_attempt_ms", 0);
    v.last_error_code = json_string_value(json_object_get(o, "last_error_code"));
    v.last_error = json_string_value(json_object_get(o, "last_error"));
    if (v.last_error_code == NULL)
        v.last_error_code = "";
    if (v.last_error == NULL)
        v.last_error = "";
    if (c->hooks.state != NULL)
        c->hooks.state(c->hooks.data, &v, node);
}

/* A stored record (status or sched) of either type. */
static void handle_record(oa_cluster_t *c, json_t *o)
{
    const char *type = json_string_value(json_object_get(o, "type"));

    if (type == NULL || !seq_is_new(c, o))
        return;
    if (strcmp(type, "status") == 0)
        handle_status(c, o, true);
    else if (strcmp(type, "state") == 0)
        handle_state(c, o, true);
}

int oa_cluster_metrics(const oa_cluster_t *c, oa_buf_t *out)
{
    static const struct {
        const char *name, *type, *help;
    } gauges[] = {
        {"ocsp_agent_cluster_store_up", "gauge",
         "1 while the cluster store is reachable and this node is synchronised with it."},
        {"ocsp_agent_cluster_poller", "gauge", "1 while this node holds the lease and queries the responder."},
        {"ocsp_agent_cluster_conf_version", "gauge", "The version of the shared configuration in force here."},
        {"ocsp_agent_cluster_nodes", "gauge", "Live nodes seen by the last heartbeat."},
        {"ocsp_agent_cluster_nodes_lacking_ocsp", "gauge", "Live nodes without the ocsp capability."},
        {"ocsp_agent_cluster_store_disconnects_total", "counter",
         "Times the connection to a synchronised store was lost."},
    };
    uint64_t values[OA_ARRAY_SIZE(gauges)];
    size_t i;
    int rc = 0;

    values[0] = (uint64_t)oa_cluster_available(c);
    values[1] = c->poller ? 1 : 0;
    values[2] = c->version;
    values[3] = c->live_nodes;
    values[4] = c->lacking_nodes;
    values[5] = c->disconnects;
    for (i = 0; i < OA_ARRAY_SIZE(gauges); i++)
        rc |= oa_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", gauges[i].name, gauges[i].help,
                            gauges[i].name, gauges[i].type, gauges[i].name, values[i]);
    rc |= oa_buf_append_str(out, "# HELP ocsp_agent_cluster_messages_received_total Messages received on the "
                                 "cluster channel, by type.\n"
                                 "# TYPE ocsp_agent_cluster_messages_received_total counter\n");
    for (i = 0; i < MSG_TYPES; i++)
        rc |= oa_buf_printf(out, "ocsp_agent_cluster_messages_received_total{type=\"%s\"} %" PRIu64 "\n",
                            msg_type_names[i], c->messages[i]);
    rc |= oa_buf_append_str(out, "# HELP ocsp_agent_cluster_puts_total Configuration writes to the cluster store, "
                                 "by result.\n"
                                 "# TYPE ocsp_agent_cluster_puts_total counter\n");
    for (i = 0; i < PUT_RESULTS; i++)
        rc |= oa_buf_printf(out, "ocsp_agent_cluster_puts_total{result=\"%s\"} %" PRIu64 "\n", put_result_names[i],
                            c->put_counts[i]);
    return rc != 0 ? UV_ENOMEM : 0;
}

/* ---- the registry and the lease ---- */

static void on_heartbeat_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    char lacking[LACKING_MAX] = "", members[LACKING_MAX] = "";
    unsigned live = 0, lacking_count = 0;
    size_t i, j;

    (void)r;
    c->hb_owed = false;
    if (reply == NULL || c->closing)
        return;
    if (reply->type != REDIS_REPLY_ARRAY) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "heartbeat"),
               OA_KV_STR("reply", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"));
        return;
    }
    for (i = 0; i < reply->elements; i++) {
        json_t *o, *caps;
        const char *id;
        bool has = false;

        if (reply->element[i]->type != REDIS_REPLY_STRING)
            continue;
        o = json_loadb(reply->element[i]->str, reply->element[i]->len, 0, NULL);
        id = json_string_value(json_object_get(o, "node_id"));
        caps = json_object_get(o, "capabilities");
        if (id != NULL) {
            live++;
            for (j = 0; json_is_array(caps) && j < json_array_size(caps); j++)
                if (json_is_string(json_array_get(caps, j)) &&
                    strcmp(json_string_value(json_array_get(caps, j)), "ocsp") == 0)
                    has = true;
            snprintf(members + strlen(members), sizeof(members) - strlen(members), "%s%s", members[0] ? "," : "",
                     id);
            if (!has) {
                lacking_count++;
                snprintf(lacking + strlen(lacking), sizeof(lacking) - strlen(lacking), "%s%s",
                         lacking[0] ? ", " : "", id);
            }
        }
        json_decref(o);
    }
    /* The order of SMEMBERS is arbitrary: compare as sets would be exact, but a changed order only costs a line. */
    if (strcmp(members, c->members) != 0 || strcmp(lacking, c->lacking) != 0)
        OA_LOG(OA_LOG_INFO, "cluster_membership", OA_KV_STR("nodes", members), OA_KV_STR("lacking_ocsp", lacking));
    memcpy(c->members, members, sizeof(members));
    memcpy(c->lacking, lacking, sizeof(lacking));
    c->live_nodes = live;
    c->lacking_nodes = lacking_count;
}

static void on_lease_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    bool got;

    (void)r;
    c->lease_owed = false;
    if (reply == NULL || c->closing)
        return;
    got = (reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "OK") == 0) ||
          (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    if (got) {
        /* Counted from when the request left, less a tenth for clock rates, so this node stops believing in its
         * lease before the store lets anyone else have it. */
        c->lease_deadline = c->lease_sent + c->lease_ms - c->lease_ms / 10;
        set_role(c, true, c->poller ? "renewed" : "lease acquired");
    } else {
        if (reply->type == REDIS_REPLY_ERROR)
            OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "lease"), OA_KV_STR("reply", reply->str));
        set_role(c, false, "the lease belongs to another node");
    }
}

static void lost(oa_cluster_t *c, const char *why);

static void on_tick(uv_timer_t *t)
{
    tick_now(oa_container_of(t, oa_cluster_t, tick));
}

static void tick_now(oa_cluster_t *c)
{
    oa_redis_t *r;
    uint64_t now = uv_now(c->loop);
    char ttl[16], lease[16];

    if (c->closing)
        return;
    if (c->poller && now >= c->lease_deadline)
        set_role(c, false, "the lease could not be renewed in time");
    if ((c->cmd != NULL || c->sub != NULL) && !c->synced && now - c->connect_started > HANDSHAKE_TIMEOUT_MS) {
        lost(c, "the store did not complete the handshake in time");
        return;
    }
    r = ready_cmd(c);
    if (r == NULL || !c->synced)
        return;
    /* A store that accepts the connection but answers nothing is as good as gone. */
    if ((c->hb_owed && now - c->hb_sent > c->node_ttl_ms) || (c->lease_owed && now - c->lease_sent > c->lease_ms)) {
        lost(c, "the store stopped answering");
        return;
    }
    snprintf(ttl, sizeof(ttl), "%u", c->node_ttl_ms);
    snprintf(lease, sizeof(lease), "%u", c->lease_ms);
    if (!c->hb_owed && oa_redis_command(r, on_heartbeat_reply, c, "EVAL %s 2 %s %s %s %s %s", lua_heartbeat, K_NODE,
                                        K_NODES, c->node_id, c->node_json, ttl) == 0) {
        c->hb_owed = true;
        c->hb_sent = now;
    }
    if (!c->lease_owed) {
        int rc = c->poller ? oa_redis_command(r, on_lease_reply, c, "EVAL %s 1 %s %s %s", lua_lease_renew, K_LEASE,
                                              c->node_id, lease)
                           : oa_redis_command(r, on_lease_reply, c, "SET %s %s NX PX %s", K_LEASE, c->node_id,
                                              lease);
        if (rc == 0) {
            c->lease_owed = true;
            c->lease_sent = now;
        }
    }
}

int oa_cluster_capability_check(const oa_cluster_t *c, oa_error_t *err)
{
    if (c->lacking[0] == '\0')
        return 0;
    return oa_error_set(err, OA_E_UNSUPPORTED_BY_CAPABILITY,
                        "OCSP is not supported by every node of the cluster: %s lack%s the ocsp capability.",
                        c->lacking, strchr(c->lacking, ',') != NULL ? "" : "s");
}

/* ---- resynchronisation ---- */

static void on_status_read(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    json_t *o;

    (void)r;
    if (reply == NULL || c->closing)
        return;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        json_t *rec[2] = {NULL, NULL};
        size_t i;

        for (i = 0; i < 2; i++)
            if (reply->element[i]->type == REDIS_REPLY_STRING)
                rec[i] = json_loadb(reply->element[i]->str, reply->element[i]->len, 0, NULL);
        /* The older record first, so that the newer one has the last word. */
        if (rec[0] != NULL && rec[1] != NULL && json_int(rec[1], "seq", 0) < json_int(rec[0], "seq", 0)) {
            o = rec[0];
            rec[0] = rec[1];
            rec[1] = o;
        }
        for (i = 0; i < 2; i++)
            if (rec[i] != NULL)
                handle_record(c, rec[i]);
        json_decref(rec[0]);
        json_decref(rec[1]);
    }
    c->synced = true;
    c->backoff_ms = BACKOFF_MIN_MS;
    if (c->outage_logged) {
        /* The refusals of the outage, counted rather than logged one by one. */
        OA_LOG(OA_LOG_INFO, "store_reconnected", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_INT("conf_version", (int64_t)c->version),
               OA_KV_INT("puts_refused", (int64_t)(c->put_counts[PUT_UNAVAILABLE] - c->refused_base)));
        c->outage_logged = false;
    } else if (!c->ever_synced) {
        OA_LOG(OA_LOG_INFO, "store_connected", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_INT("conf_version", (int64_t)c->version));
    }
    c->ever_synced = true;
    c->refused_base = c->put_counts[PUT_UNAVAILABLE];
    tick_now(c);
}

/* The reply of the seed script: {version, conf or "", epoch, written (0, 1: into an empty hash, 2: replacing)}. */
static void on_seed_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    oa_conf_t stored;
    const char *epoch;
    uint64_t v;

    if (reply == NULL || c->closing)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[0]->integer < 0 || reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_STRING ||
        !epoch_valid(reply->element[2]->str, reply->element[2]->len) ||
        reply->element[3]->type != REDIS_REPLY_INTEGER) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "resync"),
               OA_KV_STR("reply", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"));
        lost(c, "the store refused the resynchronisation");
        return;
    }
    v = (uint64_t)reply->element[0]->integer;
    epoch = reply->element[2]->str;
    if (reply->element[3]->integer != 0)
        OA_LOG(OA_LOG_INFO, "cluster_conf_seeded", OA_KV_INT("version", (int64_t)v), OA_KV_STR("epoch", epoch),
               OA_KV_STR("over", reply->element[3]->integer == 1 ? "an empty store"
                                                                   : "a seeded configuration of a lower version"));
    if (c->conf_live && strcmp(epoch, c->epoch) == 0 && v < c->version) {
        /* A message applied while the seed was on its way was newer than what the seed read. */
    } else if (reply->element[1]->len > 0 &&
               conf_from_text(reply->element[1]->str, reply->element[1]->len, &stored) == 0) {
        adopt_conf(c, &stored, epoch, v, NULL, "store");
    } else if (v != c->version || strcmp(epoch, c->epoch) != 0) {
        /* An unreadable stored configuration: keep ours, but compare-and-set against the store's epoch and version,
         * so that the next PUT replaces it. */
        if (strcmp(epoch, c->epoch) != 0) {
            memcpy(c->prev_epoch, c->epoch, sizeof(c->prev_epoch));
            snprintf(c->epoch, sizeof(c->epoch), "%s", epoch);
        }
        c->version = v;
        save_version(c);
    }
    if (oa_redis_command(r, on_status_read, c, "MGET %s %s", K_STATUS, K_SCHED) != 0)
        lost(c, "the status could not be read");
}

static void resync(oa_cluster_t *c)
{
    /* The subscription can be confirmed before the command connection is up: the script is then queued behind its
     * AUTH and SELECT and goes out once it is. */
    oa_redis_t *r = c->closing ? NULL : c->cmd;
    char ver[32], fresh[EPOCH_LEN + 1], *json = conf_dump(&c->conf);

    snprintf(ver, sizeof(ver), "%" PRIu64, c->version);
    new_epoch(fresh);
    c->conf_live = false;
    if (r == NULL || json == NULL ||
        oa_redis_command(r, on_seed_reply, c, "EVAL %s 2 %s %s %s %s %s %s %s", lua_conf_seed, K_CONF, K_EVENTS,
                         c->epoch, ver, json, c->node_id_json, fresh) != 0)
        lost(c, "the resynchronisation could not be sent");
    free(json);
}

static void handle_message(oa_cluster_t *c, const char *text, size_t len)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *node = json_string_value(json_object_get(o, "node"));
    const char *epoch;
    oa_conf_t conf;
    int64_t v;

    if (type == NULL || node == NULL) {
        c->messages[MSG_INVALID]++;
        goto out;
    }
    if (strcmp(type, "conf") == 0) {
        c->messages[MSG_CONF]++;
        v = json_int(o, "version", -1);
        epoch = json_string_value(json_object_get(o, "epoch"));
        if (v < 0 || epoch == NULL || !epoch_valid(epoch, strlen(epoch)) || !conf_is_news(c, epoch, (uint64_t)v))
            goto out;
        /* This node's own write is put in force by the reply to it, under the PUT's user: while a reply is owed the
         * message waits for it (or, if the connection goes first, for the resynchronisation that follows). A message
         * of its own with no reply owed is a write whose reply it will never see. */
        if (strcmp(node, c->node_id) == 0 && c->cas_owed > 0)
            goto out;
        if (conf_from_json(json_object_get(o, "conf"), &conf) == 0) {
            adopt_conf(c, &conf, epoch, (uint64_t)v, NULL, node);
            c->conf_live = true;
        }
    } else if (strcmp(type, "status") == 0) {
        c->messages[MSG_STATUS]++;
        if (seq_is_new(c, o))
            handle_status(c, o, false);
    } else if (strcmp(type, "state") == 0) {
        c->messages[MSG_STATE]++;
        if (seq_is_new(c, o))
            handle_state(c, o, false);
    } else {
        c->messages[MSG_INVALID]++;
    }
out:
    json_decref(o);
}

/* ---- connections ---- */

static void drop_context(oa_redis_t **slot)
{
    oa_redis_t *r = *slot;

    *slot = NULL;
    oa_redis_free(r);
}

static void finish_close(oa_cluster_t *c);

/* Either connection failed: drop both and try again later. */
static void lost(oa_cluster_t *c, const char *why)
{
    bool was_up = c->synced;

    c->cmd_connected = false;
    c->synced = false;
    drop_context(&c->sub);
    drop_context(&c->cmd);
    c->hb_owed = false;
    c->lease_owed = false;
    if (c->closing) {
        finish_close(c);
        return;
    }
    if (was_up)
        c->disconnects++;
    if (!c->outage_logged) {
        OA_LOG(OA_LOG_ERROR, "store_unavailable", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_STR("reason", why), OA_KV_STR("effect", "PUT answers 503; the last known configuration is "
                                                               "served; reconnecting"));
        c->outage_logged = true;
    } else {
        OA_LOG(OA_LOG_DEBUG, "store_retry_failed", OA_KV_STR("reason", why), OA_KV_INT("was_up", was_up));
    }
    uv_timer_start(&c->retry, on_retry, c->backoff_ms, 0);
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void on_ready(oa_redis_t *r, void *data)
{
    oa_cluster_t *c = data;

    if (r == c->cmd)
        c->cmd_connected = true;
}

/* The connection failed (name, connect, TLS, deadline) or the store closed it. Its queued callbacks have already
 * had their NULL reply; it is forgotten before it is freed, and takes the other connection down with it. */
static void on_error(oa_redis_t *r, const char *why, void *data)
{
    oa_cluster_t *c = data;

    if (r == c->cmd) {
        c->cmd = NULL;
    } else if (r == c->sub) {
        c->sub = NULL;
    } else {
        oa_redis_free(r);
        return;
    }
    oa_redis_free(r);
    lost(c, why);
}

static void on_setup_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = oa_redis_data(r);

    (void)priv;
    if (reply == NULL || c->closing || reply->type != REDIS_REPLY_ERROR)
        return;
    OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "auth/select"), OA_KV_STR("reply", reply->str));
    lost(c, reply->str);
}

/* The kind of a Pub/Sub reply ("subscribe", "message", ...), or NULL when there is none to act on. */
static const char *pubsub_kind(const oa_cluster_t *c, const redisReply *reply)
{
    if (reply == NULL || c->closing || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return NULL;
    return reply->element[0]->str;
}

/* The reply to SUBSCRIBE. */
static void on_sub_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    const char *kind = pubsub_kind(c, reply);

    (void)r;
    /* Subscribed: only now read the store, so that nothing published meanwhile can be missed. */
    if (kind != NULL && strcmp(kind, "subscribe") == 0)
        resync(c);
}

/* A message on the events channel (the sub connection's on_push). */
static void on_sub_message(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    const char *kind = pubsub_kind(c, reply);

    (void)r;
    if (kind != NULL && strcmp(kind, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING)
        handle_message(c, reply->element[2]->str, reply->element[2]->len);
}

static oa_redis_t *open_context(oa_cluster_t *c, bool sub)
{
    oa_redis_options_t o;
    oa_redis_t *r;
    oa_error_t err;

    memset(&o, 0, sizeof(o));
    o.host = c->host;
    o.port = c->port;
    o.tls = c->tls; /* the certificate must name the URL's host */
    o.on_ready = on_ready;
    o.on_error = on_error;
    o.on_push = sub ? on_sub_message : NULL;
    o.data = c;
    if (oa_redis_connect(c->loop, &o, &r, &err) != 0)
        return NULL;
    if (c->password != NULL)
        oa_redis_command(r, on_setup_reply, NULL, "AUTH %s", c->password);
    return r;
}

static void connect_store(oa_cluster_t *c)
{
    if (c->closing || c->cmd != NULL || c->sub != NULL)
        return;
    c->connect_started = uv_now(c->loop);
    /* The store may have restarted empty and count from 1 again; what it holds is read once subscribed. */
    c->last_seq = 0;
    c->cmd = open_context(c, false);
    c->sub = c->cmd != NULL ? open_context(c, true) : NULL;
    if (c->cmd == NULL || c->sub == NULL) {
        lost(c, "the connection could not be opened");
        return;
    }
    if (c->db != 0)
        oa_redis_command(c->cmd, on_setup_reply, NULL, "SELECT %d", c->db);
    oa_redis_command(c->sub, on_sub_reply, c, "SUBSCRIBE %s", K_EVENTS);
}

static void on_retry(uv_timer_t *t)
{
    oa_cluster_t *c = oa_container_of(t, oa_cluster_t, retry);

    connect_store(c);
}

/* ---- life cycle ---- */

int oa_cluster_available(const oa_cluster_t *c)
{
    return c->synced && c->cmd_connected;
}

int oa_cluster_is_poller(const oa_cluster_t *c)
{
    return c->poller;
}

uint64_t oa_cluster_conf_version(const oa_cluster_t *c)
{
    return c->version;
}

static void cluster_free(oa_cluster_t *c)
{
    free(c->password);
    free(c->node_id);
    free(c->node_id_json);
    free(c->node_json);
    free(c->caps);
    free(c->version_path);
    SSL_CTX_free(c->tls);
    free(c);
}

static char *node_entry(const oa_cluster_t *c, const char *api)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:[]}", "node_id", c->node_id, "api", api ? api : "", "version",
                          OA_VERSION, "capabilities");
    json_t *caps = json_object_get(o, "capabilities");
    const char *p = c->caps;
    char *text;

    while (caps != NULL && p != NULL && *p != '\0') {
        size_t len = strcspn(p, ",");

        json_array_append_new(caps, json_stringn(p, len));
        p = p[len] == ',' ? p + len + 1 : NULL;
    }
    text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

int oa_cluster_new(uv_loop_t *loop, const oa_cluster_options_t *o, const oa_conf_t *conf, oa_cluster_t **out,
                   oa_error_t *err)
{
    oa_cluster_t *c = calloc(1, sizeof(*c));
    json_t *id;

    if (c == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    if (oa_cluster_url_parse(o->url, c->host, &c->port, &c->db, err) != 0) {
        free(c);
        return -1;
    }
    if (o->capabilities != NULL && oa_cluster_caps_valid(o->capabilities) != 0) {
        free(c);
        return oa_error_set(err, OA_E_BAD_OPTION, "--capabilities: expected names of a-z, 0-9, _ and - separated "
                            "by commas, got \"%.64s\"", o->capabilities);
    }
    /* A rediss:// URL promises TLS; falling back to plain TCP would break that promise silently. */
    if (oa_cluster_url_is_tls(o->url) && o->tls == NULL) {
        free(c);
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: a rediss:// URL needs a TLS context (--cluster-tls)");
    }
    c->loop = loop;
    c->hooks = o->hooks;
    c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    c->node_ttl_ms = o->node_ttl_ms ? o->node_ttl_ms : DEFAULT_NODE_TTL_MS;
    c->lease_ms = o->lease_ms ? o->lease_ms : DEFAULT_LEASE_MS;
    if (o->tls != NULL && SSL_CTX_up_ref(o->tls) == 1)
        c->tls = o->tls;
    c->backoff_ms = BACKOFF_MIN_MS;
    c->conf = *conf;
    c->password = o->password != NULL ? strdup(o->password) : NULL;
    c->node_id = strdup(o->node_id != NULL ? o->node_id : "node");
    c->caps = strdup(o->capabilities != NULL ? o->capabilities : "ocsp");
    c->version_path = o->data_dir != NULL ? oa_path_join(o->data_dir, OA_CLUSTER_VERSION_FILE) : NULL;
    id = c->node_id != NULL ? json_string(c->node_id) : NULL;
    c->node_id_json = id != NULL ? json_dumps(id, JSON_ENCODE_ANY) : NULL;
    json_decref(id);
    c->node_json = c->node_id != NULL && c->caps != NULL ? node_entry(c, o->api_address) : NULL;
    if (c->node_id == NULL || c->caps == NULL || c->node_id_json == NULL || c->node_json == NULL ||
        (o->password != NULL && c->password == NULL) || (o->data_dir != NULL && c->version_path == NULL) ||
        (o->tls != NULL && c->tls == NULL)) {
        cluster_free(c);
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    }
    /* Until the first heartbeat answers, the only node known is this one. */
    if (!oa_cluster_caps_have(c->caps, "ocsp")) {
        snprintf(c->lacking, sizeof(c->lacking), "%s", c->node_id);
        c->lacking_nodes = 1;
    }
    load_version(c);
    uv_timer_init(loop, &c->tick);
    uv_timer_init(loop, &c->retry);
    uv_timer_init(loop, &c->grace);
    uv_timer_start(&c->tick, on_tick, c->heartbeat_ms, c->heartbeat_ms);
    connect_store(c);
    *out = c;
    return 0;
}

/* Drops one pending close; the last one, once the cluster is closing and its own timers are closing too, frees c
 * and reports it. */
static void release(oa_cluster_t *c)
{
    void (*done)(void *arg);
    void *arg;

    if (--c->pending_closes > 0 || !uv_is_closing((uv_handle_t *)&c->tick))
        return;
    done = c->done;
    arg = c->done_arg;
    cluster_free(c);
    if (done != NULL)
        done(arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    release(h->data);
}

/* Once both connections are gone, the timers close and the last close frees c. */
static void finish_close(oa_cluster_t *c)
{
    if (c->cmd != NULL || c->sub != NULL || uv_is_closing((uv_handle_t *)&c->tick))
        return;
    c->tick.data = c->retry.data = c->grace.data = c;
    c->pending_closes += 3;
    uv_close((uv_handle_t *)&c->tick, on_timer_closed);
    uv_close((uv_handle_t *)&c->retry, on_timer_closed);
    uv_close((uv_handle_t *)&c->grace, on_timer_closed);
    /* Put timers closing right now hold pending_closes above zero until they are done. */
}

static void on_grace(uv_timer_t *t)
{
    oa_cluster_t *c = oa_container_of(t, oa_cluster_t, grace);

    drop_context(&c->cmd);
    finish_close(c);
}

/* The reply to the QUIT that ends the goodbye, or NULL when the connection went first: either way the store has
 * had the commands before it, and the connection can go. */
static void on_quit_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;

    (void)reply;
    if (r == c->cmd)
        c->cmd = NULL;
    oa_redis_free(r);
    finish_close(c);
}

void oa_cluster_close(oa_cluster_t *c, void (*done)(void *arg), void *arg)
{
    oa_redis_t *r;

    if (c->closing)
        return;
    c->closing = true;
    c->done = done;
    c->done_arg = arg;
    while (c->puts != NULL)
        put_fail(c->puts, OA_E_STORE_UNAVAILABLE, "The agent is shutting down.");
    uv_timer_stop(&c->tick);
    uv_timer_stop(&c->retry);
    drop_context(&c->sub);
    r = c->cmd;
    if (r != NULL && c->cmd_connected && c->synced) {
        /* Leave the registry and the lease at once rather than when they expire; the connection goes with the
         * reply to QUIT, and the grace timer drops a store that does not send it. */
        oa_redis_command(r, NULL, NULL, "DEL %s%s", K_NODE, c->node_id);
        if (c->poller)
            oa_redis_command(r, NULL, NULL, "EVAL %s 1 %s %s", lua_lease_release, K_LEASE, c->node_id);
        if (oa_redis_command(r, on_quit_reply, c, "QUIT") == 0)
            uv_timer_start(&c->grace, on_grace, CLOSE_GRACE_MS, 0);
        else
            drop_context(&c->cmd);
    } else {
        drop_context(&c->cmd);
    }
    if (c->poller) {
        c->poller = false;
        OA_LOG(OA_LOG_INFO, "cluster_poller_released", OA_KV_STR("reason", "shutting down"));
    }
    finish_close(c);
}
