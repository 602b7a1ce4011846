/*
 * Cluster mode over Redis: the node registry, the shared configuration, the poller lease and the shared status.
 *
 * Two hiredis asynchronous contexts share the agent's loop: `cmd` for commands, `sub` subscribed to the events
 * channel (a subscribed connection can send nothing else). Either one failing takes both down, because a node that
 * misses messages must resynchronise anyway; the reconnect then subscribes first and reads the store second, so a
 * change published in between is never lost (at worst it is applied twice, which versions make harmless).
 *
 * Teardown follows hiredis's rules: a context is forgotten (its pointer set to NULL) before redisAsyncFree, whose
 * callbacks run with a NULL reply and must touch nothing but their own request; a context freed from inside one of
 * its own callbacks is freed by hiredis when the callback returns.
 *
 * Every write that must be atomic is one Lua script: the configuration's compare-and-set on its version (with the
 * PUBLISH inside, so no node can see the write without the message or the reverse), the seed after a store restart,
 * the lease renewal, the heartbeat (SET the node's key, prune the dead from the node set and return the live), and
 * the status and state records (number, SET and PUBLISH).
 *
 * The status and state records are numbered by the store, not by the nodes: two nodes' clocks never have to agree,
 * and a poller that takes over continues the same sequence. A node forgets the highest number it has seen when it
 * reconnects, because a store that restarted empty starts counting again.
 */
#include <ctype.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_cluster.h"
#include "oa_log.h"
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

#define K_CONF OA_CLUSTER_KEY_PREFIX "conf"
#define K_NODE OA_CLUSTER_KEY_PREFIX "node:"
#define K_NODES OA_CLUSTER_KEY_PREFIX "nodes"
#define K_LEASE OA_CLUSTER_KEY_PREFIX "lease"
#define K_STATUS OA_CLUSTER_KEY_PREFIX "status"
#define K_SCHED OA_CLUSTER_KEY_PREFIX "sched"
#define K_SEQ OA_CLUSTER_KEY_PREFIX "seq"
#define K_EVENTS OA_CLUSTER_KEY_PREFIX "events"

/* KEYS: conf, events. ARGV: expected version, conf JSON, node id as a JSON string. Returns {1, new version, conf}
 * when written, {0, stored version, stored conf or ""} when the version did not match. */
static const char lua_conf_cas[] =
    "local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')\n"
    "if v ~= tonumber(ARGV[1]) then return {0, v, redis.call('HGET', KEYS[1], 'conf') or ''} end\n"
    "v = v + 1\n"
    "redis.call('HSET', KEYS[1], 'version', v, 'conf', ARGV[2])\n"
    "redis.call('PUBLISH', KEYS[2], '{\"type\":\"conf\",\"version\":' .. v .. ',\"node\":' .. ARGV[3] .. "
    "',\"conf\":' .. ARGV[2] .. '}')\n"
    "return {1, v, ARGV[2]}\n";

/* Same KEYS and ARGV (ARGV[1] is this node's version): writes this node's configuration only when the store holds
 * an older version or none, as after a restart of a store without persistence. Returns {version, conf or ""}. */
static const char lua_conf_seed[] =
    "local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')\n"
    "local mine = tonumber(ARGV[1])\n"
    "if mine > v then\n"
    "  redis.call('HSET', KEYS[1], 'version', mine, 'conf', ARGV[2])\n"
    "  redis.call('PUBLISH', KEYS[2], '{\"type\":\"conf\",\"version\":' .. mine .. ',\"node\":' .. ARGV[3] .. "
    "',\"conf\":' .. ARGV[2] .. '}')\n"
    "  return {mine, ARGV[2]}\n"
    "end\n"
    "return {v, redis.call('HGET', KEYS[1], 'conf') or ''}\n";

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
    unsigned heartbeat_ms, node_ttl_ms, lease_ms;
    oa_cluster_hooks_t hooks;

    redisAsyncContext *cmd;
    redisAsyncContext *sub;
    bool cmd_connected;
    bool synced; /* subscribed, and the store was read: PUTs may go */
    bool outage_logged;
    bool ever_synced;
    unsigned backoff_ms;
    uint64_t connect_started;

    oa_conf_t conf;
    uint64_t version;

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
static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv);
static void on_retry(uv_timer_t *t);
static void release(oa_cluster_t *c);

/* ---- hiredis on libuv ----
 *
 * hiredis 0.14's own libuv adapter ignores the status libuv hands a poll callback. A refused connection shows up
 * exactly there (libuv reports POLLERR as an error status and stops the handle), so with that adapter hiredis never
 * learns that the connection failed and the node would wait forever. This adapter passes errors on: before the
 * connection is up hiredis checks the socket's error on a write event, afterwards it sees the failure on a read.
 */

typedef struct poll_s {
    redisAsyncContext *ac; /* NULL once hiredis let go of it */
    uv_poll_t handle;
    int events;
} poll_t;

static void on_poll(uv_poll_t *h, int status, int events)
{
    poll_t *p = h->data;

    if (p->ac == NULL)
        return;
    if (status != 0) {
        if (!(p->ac->c.flags & REDIS_CONNECTED))
            redisAsyncHandleWrite(p->ac);
        else
            redisAsyncHandleRead(p->ac);
        return;
    }
    if (events & UV_READABLE)
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void poll_update(poll_t *p)
{
    if (p->events != 0)
        uv_poll_start(&p->handle, p->events, on_poll);
    else
        uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d)
{
    poll_t *p = d;

    p->events |= UV_READABLE;
    poll_update(p);
}

static void ev_del_read(void *d)
{
    poll_t *p = d;

    p->events &= ~UV_READABLE;
    poll_update(p);
}

static void ev_add_write(void *d)
{
    poll_t *p = d;

    p->events |= UV_WRITABLE;
    poll_update(p);
}

static void ev_del_write(void *d)
{
    poll_t *p = d;

    p->events &= ~UV_WRITABLE;
    poll_update(p);
}

static void on_poll_closed(uv_handle_t *h)
{
    free(h->data);
}

/* hiredis is done with the context (it closes the socket right after): the handle goes, its memory with it. */
static void ev_cleanup(void *d)
{
    poll_t *p = d;

    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, on_poll_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    poll_t *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return -1;
    if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
        free(p);
        return -1;
    }
    p->ac = ac;
    p->handle.data = p;
    ac->ev.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return 0;
}

/* ---- small helpers ---- */

int oa_cluster_url_parse(const char *url, char host[OA_CLUSTER_HOST_MAX], int *port, int *db, oa_error_t *err)
{
    const char *p, *h, *hend, *q;
    long v;
    size_t hl;
    char *end;

    if (url == NULL || strncmp(url, "redis://", 8) != 0)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected redis://HOST:PORT[/DB], got \"%.64s\"",
                            url ? url : "");
    p = url + 8;
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
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected redis://HOST:PORT[/DB], got \"%.64s\"", url);
    }
    return 0;
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

static void save_version(oa_cluster_t *c)
{
    char text[64];
    int rc, n;

    if (c->version_path == NULL)
        return;
    n = snprintf(text, sizeof(text), "{\"conf_version\":%" PRIu64 "}\n", c->version);
    rc = oa_file_write_atomic(c->version_path, text, (size_t)n, 0600);
    if (rc != 0)
        OA_LOG(OA_LOG_ERROR, "cluster_version_persist_failed", OA_KV_STR("path", c->version_path),
               OA_KV_STR("reason", uv_strerror(rc)));
}

static void load_version(oa_cluster_t *c)
{
    oa_buf_t buf;
    json_t *o;

    oa_buf_init(&buf);
    if (c->version_path != NULL && oa_file_read(c->version_path, 4096, &buf) == 0) {
        o = json_loadb(buf.data, buf.len, 0, NULL);
        c->version = (uint64_t)(json_int(o, "conf_version", 0) > 0 ? json_int(o, "conf_version", 0) : 0);
        json_decref(o);
    }
    oa_buf_free(&buf);
}

/* Puts a configuration from the store in force; version is the store's. */
static void adopt_conf(oa_cluster_t *c, const oa_conf_t *conf, uint64_t version, const char *user, const char *from)
{
    unsigned changed = oa_conf_diff(&c->conf, conf);

    c->conf = *conf;
    if (version != c->version) {
        c->version = version;
        save_version(c);
    }
    OA_LOG(OA_LOG_INFO, "cluster_conf_applied", OA_KV_INT("version", (int64_t)version), OA_KV_STR("from", from),
           OA_KV_INT("changed", changed != 0));
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

static redisAsyncContext *ready_cmd(oa_cluster_t *c)
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

static void on_put_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    put_t *p = priv;
    oa_cluster_t *c = p->cluster;
    oa_conf_t stored;
    oa_error_t err;
    uint64_t v;
    int rc;

    (void)ac;
    p->reply_owed = false;
    if (p->answered) {
        /* Timed out already; a committed write still arrives to every node through its message. */
        put_maybe_free(p);
        return;
    }
    if (reply == NULL || c->closing) {
        c->put_counts[PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "The connection to the cluster store was lost before it confirmed the "
                                            "change; it may or may not have been applied.");
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_INTEGER || reply->element[2]->type != REDIS_REPLY_STRING) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "conf_cas"),
               OA_KV_STR("reply", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"));
        c->put_counts[PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "The cluster store refused the change.");
        return;
    }
    v = (uint64_t)reply->element[1]->integer;
    if (reply->element[0]->integer == 1) {
        c->put_counts[PUT_COMMITTED]++;
        if (v > c->version || oa_conf_diff(&c->conf, &p->next_conf) != 0)
            adopt_conf(c, &p->next_conf, v, p->user, c->node_id);
        put_answer(p, NULL);
        return;
    }
    /* Another node's change came first: take it, then judge the request again against it. */
    c->put_counts[PUT_CONFLICT_RETRY]++;
    if (reply->element[2]->len > 0 && conf_from_text(reply->element[2]->str, reply->element[2]->len, &stored) == 0)
        adopt_conf(c, &stored, v, NULL, "store");
    else
        c->version = v;
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
    redisAsyncContext *ac = ready_cmd(c);
    char ver[32], *json;
    int rc;

    if (ac == NULL || !c->synced)
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
    rc = redisAsyncCommand(ac, on_put_reply, p, "EVAL %s 2 %s %s %s %s %s", lua_conf_cas, K_CONF, K_EVENTS, ver, json,
                           c->node_id_json);
    free(json);
    if (rc != REDIS_OK)
        return oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable.");
    p->reply_owed = true;
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
    redisAsyncContext *ac = ready_cmd(c);
    json_t *msg = NULL;
    char *b64 = NULL, *text = NULL;
    int n;

    if (ac == NULL || !c->synced || res == NULL || res->der == NULL || res->der_len > 256 * 1024)
        return;
    b64 = malloc(4 * ((res->der_len + 2) / 3) + 1);
    if (b64 == NULL)
        goto out;
    n = EVP_EncodeBlock((unsigned char *)b64, res->der, (int)res->der_len);
    b64[n] = '\0';
    msg = json_pack("{s:s, s:s, s:I, s:s}", "type", "status", "node", c->node_id, "ts", (json_int_t)oa_time_now_ms(),
                    "der", b64);
    text = msg != NULL ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (text == NULL)
        goto out;
    if (redisAsyncCommand(ac, NULL, NULL, "EVAL %s 3 %s %s %s %s", lua_publish, K_SEQ, K_EVENTS, K_STATUS, text) ==
        REDIS_OK)
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
    redisAsyncContext *ac = ready_cmd(c);
    bool invalidated = v->state == OA_STATE_INVALIDATED;
    json_t *msg;
    char *text = NULL;
    int rc;

    if (ac == NULL || !c->synced)
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
        rc = redisAsyncCommand(ac, NULL, NULL, "EVAL %s 4 %s %s %s %s %s", lua_publish, K_SEQ, K_EVENTS, K_SCHED,
                               K_STATUS, text);
    else
        rc = redisAsyncCommand(ac, NULL, NULL, "EVAL %s 3 %s %s %s %s", lua_publish, K_SEQ, K_EVENTS, K_SCHED, text);
    if (rc == REDIS_OK)
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

static void on_heartbeat_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    oa_cluster_t *c = priv;
    char lacking[LACKING_MAX] = "", members[LACKING_MAX] = "";
    unsigned live = 0, lacking_count = 0;
    size_t i, j;

    (void)ac;
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

static void on_lease_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    oa_cluster_t *c = priv;
    bool got;

    (void)ac;
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
    redisAsyncContext *ac;
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
    ac = ready_cmd(c);
    if (ac == NULL || !c->synced)
        return;
    /* A store that accepts the connection but answers nothing is as good as gone. */
    if ((c->hb_owed && now - c->hb_sent > c->node_ttl_ms) || (c->lease_owed && now - c->lease_sent > c->lease_ms)) {
        lost(c, "the store stopped answering");
        return;
    }
    snprintf(ttl, sizeof(ttl), "%u", c->node_ttl_ms);
    snprintf(lease, sizeof(lease), "%u", c->lease_ms);
    if (!c->hb_owed && redisAsyncCommand(ac, on_heartbeat_reply, c, "EVAL %s 2 %s %s %s %s %s", lua_heartbeat, K_NODE,
                                         K_NODES, c->node_id, c->node_json, ttl) == REDIS_OK) {
        c->hb_owed = true;
        c->hb_sent = now;
    }
    if (!c->lease_owed) {
        int rc = c->poller ? redisAsyncCommand(ac, on_lease_reply, c, "EVAL %s 1 %s %s %s", lua_lease_renew, K_LEASE,
                                               c->node_id, lease)
                           : redisAsyncCommand(ac, on_lease_reply, c, "SET %s %s NX PX %s", K_LEASE, c->node_id,
                                               lease);
        if (rc == REDIS_OK) {
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

static void on_status_read(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    oa_cluster_t *c = priv;
    json_t *o;

    (void)ac;
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
        OA_LOG(OA_LOG_INFO, "store_reconnected", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_INT("conf_version", (int64_t)c->version));
        c->outage_logged = false;
    } else if (!c->ever_synced) {
        OA_LOG(OA_LOG_INFO, "store_connected", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_INT("conf_version", (int64_t)c->version));
    }
    c->ever_synced = true;
    tick_now(c);
}

static void on_seed_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    oa_cluster_t *c = priv;
    oa_conf_t stored;
    uint64_t v;

    if (reply == NULL || c->closing)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "resync"),
               OA_KV_STR("reply", reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply"));
        lost(c, "the store refused the resynchronisation");
        return;
    }
    v = (uint64_t)reply->element[0]->integer;
    if (reply->element[1]->len > 0 &&
        conf_from_text(reply->element[1]->str, reply->element[1]->len, &stored) == 0) {
        if (v != c->version || oa_conf_diff(&stored, &c->conf) != 0)
            adopt_conf(c, &stored, v, NULL, "store");
    } else if (v != c->version) {
        c->version = v;
        save_version(c);
    }
    if (redisAsyncCommand(ac, on_status_read, c, "MGET %s %s", K_STATUS, K_SCHED) != REDIS_OK)
        lost(c, "the status could not be read");
}

static void resync(oa_cluster_t *c)
{
    redisAsyncContext *ac = ready_cmd(c);
    char ver[32], *json = conf_dump(&c->conf);

    snprintf(ver, sizeof(ver), "%" PRIu64, c->version);
    if (ac == NULL || json == NULL ||
        redisAsyncCommand(ac, on_seed_reply, c, "EVAL %s 2 %s %s %s %s %s", lua_conf_seed, K_CONF, K_EVENTS, ver,
                          json, c->node_id_json) != REDIS_OK)
        lost(c, "the resynchronisation could not be sent");
    free(json);
}

static void handle_message(oa_cluster_t *c, const char *text, size_t len)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *node = json_string_value(json_object_get(o, "node"));
    oa_conf_t conf;
    int64_t v;

    if (type == NULL || node == NULL) {
        c->messages[MSG_INVALID]++;
        goto out;
    }
    if (strcmp(type, "conf") == 0) {
        c->messages[MSG_CONF]++;
        /* This node's own change is put in force by the reply to its write, with the user's name. */
        v = json_int(o, "version", -1);
        if (strcmp(node, c->node_id) == 0 || v < 0 || (uint64_t)v <= c->version)
            goto out;
        if (conf_from_json(json_object_get(o, "conf"), &conf) == 0)
            adopt_conf(c, &conf, (uint64_t)v, NULL, node);
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

static void drop_context(redisAsyncContext **slot)
{
    redisAsyncContext *ac = *slot;

    *slot = NULL;
    if (ac != NULL)
        redisAsyncFree(ac);
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

static void on_connect(const redisAsyncContext *ac, int status)
{
    oa_cluster_t *c = ac->data;

    if (status == REDIS_OK) {
        if (ac == c->cmd)
            c->cmd_connected = true;
        return;
    }
    /* hiredis frees ac when this returns. */
    if (ac == c->cmd)
        c->cmd = NULL;
    else if (ac == c->sub)
        c->sub = NULL;
    else
        return;
    lost(c, ac->errstr[0] ? ac->errstr : "connection refused");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    oa_cluster_t *c = ac->data;

    (void)status;
    if (ac == c->cmd)
        c->cmd = NULL;
    else if (ac == c->sub)
        c->sub = NULL;
    else
        return; /* dropped on purpose */
    if (c->closing) {
        finish_close(c);
        return;
    }
    lost(c, ac->errstr[0] ? ac->errstr : "the store closed the connection");
}

static void on_setup_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    oa_cluster_t *c = ac->data;

    (void)priv;
    if (reply == NULL || c->closing || reply->type != REDIS_REPLY_ERROR)
        return;
    OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "auth/select"), OA_KV_STR("reply", reply->str));
    lost(c, reply->str);
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    oa_cluster_t *c = priv;

    (void)ac;
    if (reply == NULL || c->closing || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(reply->element[0]->str, "subscribe") == 0) {
        /* Subscribed: only now read the store, so that nothing published meanwhile can be missed. */
        resync(c);
    } else if (strcmp(reply->element[0]->str, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING) {
        handle_message(c, reply->element[2]->str, reply->element[2]->len);
    }
}

static redisAsyncContext *open_context(oa_cluster_t *c)
{
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);

    if (ac == NULL)
        return NULL;
    if (ac->err != 0 || ev_attach(ac, c->loop) != 0) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = c;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (c->password != NULL)
        redisAsyncCommand(ac, on_setup_reply, NULL, "AUTH %s", c->password);
    return ac;
}

static void connect_store(oa_cluster_t *c)
{
    if (c->closing || c->cmd != NULL || c->sub != NULL)
        return;
    c->connect_started = uv_now(c->loop);
    /* The store may have restarted empty and count from 1 again; what it holds is read once subscribed. */
    c->last_seq = 0;
    c->cmd = open_context(c);
    c->sub = c->cmd != NULL ? open_context(c) : NULL;
    if (c->cmd == NULL || c->sub == NULL) {
        lost(c, "the connection could not be opened");
        return;
    }
    if (c->db != 0)
        redisAsyncCommand(c->cmd, on_setup_reply, NULL, "SELECT %d", c->db);
    redisAsyncCommand(c->sub, on_sub_reply, c, "SUBSCRIBE %s", K_EVENTS);
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
    c->loop = loop;
    c->hooks = o->hooks;
    c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    c->node_ttl_ms = o->node_ttl_ms ? o->node_ttl_ms : DEFAULT_NODE_TTL_MS;
    c->lease_ms = o->lease_ms ? o->lease_ms : DEFAULT_LEASE_MS;
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
        (o->password != NULL && c->password == NULL) || (o->data_dir != NULL && c->version_path == NULL)) {
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

void oa_cluster_close(oa_cluster_t *c, void (*done)(void *arg), void *arg)
{
    redisAsyncContext *ac;

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
    ac = c->cmd;
    if (ac != NULL && c->cmd_connected && c->synced) {
        /* Leave the registry and the lease at once rather than when they expire; the disconnect waits for the
         * replies, and the grace timer for a store that does not send them. */
        redisAsyncCommand(ac, NULL, NULL, "DEL %s%s", K_NODE, c->node_id);
        if (c->poller)
            redisAsyncCommand(ac, NULL, NULL, "EVAL %s 1 %s %s", lua_lease_release, K_LEASE, c->node_id);
        redisAsyncDisconnect(ac);
        uv_timer_start(&c->grace, on_grace, CLOSE_GRACE_MS, 0);
    } else {
        drop_context(&c->cmd);
    }
    if (c->poller) {
        c->poller = false;
        OA_LOG(OA_LOG_INFO, "cluster_poller_released", OA_KV_STR("reason", "shutting down"));
    }
    finish_close(c);
}
