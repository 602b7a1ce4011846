/*
 * The Redis store (store.h): the keys, scripts and channel of oa_cluster.h on one Redis server, through two
 * connections of oa_redis.h on the cluster's loop. `cmd` carries the commands; `sub` is subscribed to the events
 * channel (a subscribed connection can send nothing else). The store is up once the subscription is confirmed, so
 * that nothing published after the cluster reads the store can be missed; either connection failing takes both
 * down.
 *
 * Every operation is one command on cmd (a Lua script for every write that must be atomic, scripts.c), queued even
 * before the connection is up: it then goes out behind AUTH and SELECT. Each carries a small request (the store,
 * the callback and its data) that its reply callback turns into a cluster_store_reply_t and frees.
 *
 * Teardown follows oa_redis's rules: a connection is forgotten (its pointer set to NULL) before oa_redis_free, whose
 * queued callbacks run with a NULL reply before it returns; a connection may be freed from inside one of its own
 * callbacks. A NULL reply is CLUSTER_STORE_UNKNOWN for a write that may have gone out (a compare-and-set, a record)
 * and CLUSTER_STORE_UNAVAILABLE otherwise. Once the goodbye has started, the store reports nothing to the cluster
 * but the replies still owed and, at the end, done.
 */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"
#include "oa_redis.h"
#include "oa_tls.h"
#include "oa_util.h"

struct cluster_store_s {
    oa_cluster_t *cluster;
    char host[OA_CLUSTER_HOST_MAX];
    int port;
    int db;
    char *password;
    SSL_CTX *tls; /* a reference of our own; NULL: plain TCP */
    char desc[OA_CLUSTER_HOST_MAX + 16];

    oa_redis_t *cmd;
    oa_redis_t *sub;
    bool cmd_connected;

    bool leaving; /* the goodbye has started */
    uv_timer_t grace;
    void (*done)(oa_cluster_t *c);
};

/* One operation on its way. */
typedef struct request_s {
    cluster_store_t *store;
    cluster_store_cb cb;
    void *data;
    uint64_t sent; /* uv_now when the command was queued */
} request_t;

/* The text a refused reply gives the log: the store's error, else "unexpected reply". */
static const char *reply_why(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply";
}

static void log_refused(const char *op, const redisReply *reply)
{
    OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", op), OA_KV_STR("reply", reply_why(reply)));
}

static request_t *request_new(cluster_store_t *s, cluster_store_cb cb, void *data)
{
    request_t *q = calloc(1, sizeof(*q));

    if (q != NULL) {
        q->store = s;
        q->cb = cb;
        q->data = data;
        q->sent = uv_now(s->cluster->loop);
    }
    return q;
}

/* Fires the request's callback with r and frees it. */
static void request_finish(request_t *q, const cluster_store_reply_t *r)
{
    oa_cluster_t *c = q->store->cluster;
    cluster_store_cb cb = q->cb;
    void *data = q->data;

    free(q);
    cb(c, r, data);
}

/* Finishes q with an outcome and no fields filled. */
static void request_end(request_t *q, cluster_store_outcome_t outcome)
{
    cluster_store_reply_t r;

    memset(&r, 0, sizeof(r));
    r.outcome = outcome;
    request_finish(q, &r);
}

/* ---- connections ---- */

static void drop_context(oa_redis_t **slot)
{
    oa_redis_t *r = *slot;

    *slot = NULL;
    oa_redis_free(r);
}

static void redis_disconnect(cluster_store_t *s)
{
    s->cmd_connected = false;
    drop_context(&s->sub);
    drop_context(&s->cmd);
}

static void goodbye_finish(cluster_store_t *s);

/* A failure of the store's: both connections go, then the cluster hears of it (nothing once leaving). */
static void store_lost(cluster_store_t *s, const char *why)
{
    redis_disconnect(s);
    if (s->leaving)
        goodbye_finish(s);
    else
        cluster_lost(s->cluster, why);
}

static void on_ready(oa_redis_t *r, void *data)
{
    cluster_store_t *s = data;

    if (r == s->cmd)
        s->cmd_connected = true;
}

/* The connection failed (name, connect, TLS, deadline) or the store closed it. Its queued callbacks have already
 * had their NULL reply; it is forgotten before it is freed, and takes the other connection down with it. */
static void on_error(oa_redis_t *r, const char *why, void *data)
{
    cluster_store_t *s = data;

    if (r == s->cmd) {
        s->cmd = NULL;
    } else if (r == s->sub) {
        s->sub = NULL;
    } else {
        oa_redis_free(r);
        return;
    }
    /* why stays valid until this callback returns, freed or not. */
    oa_redis_free(r);
    store_lost(s, why);
}

static void on_setup_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    cluster_store_t *s = oa_redis_data(r);

    (void)priv;
    if (reply == NULL || s->leaving || reply->type != REDIS_REPLY_ERROR)
        return;
    OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "auth/select"), OA_KV_STR("reply", reply->str));
    store_lost(s, reply->str);
}

/* The kind of a Pub/Sub reply ("subscribe", "message", ...), or NULL when there is none to act on. */
static const char *pubsub_kind(const cluster_store_t *s, const redisReply *reply)
{
    if (reply == NULL || s->leaving || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return NULL;
    return reply->element[0]->str;
}

/* The reply to SUBSCRIBE. */
static void on_sub_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    cluster_store_t *s = priv;
    const char *kind = pubsub_kind(s, reply);

    (void)r;
    /* Subscribed: only now may the cluster read the store, so that nothing published meanwhile can be missed. */
    if (kind != NULL && strcmp(kind, "subscribe") == 0)
        cluster_store_up(s->cluster);
}

/* A message on the events channel (the sub connection's on_push). A text that is not JSON still reaches the
 * cluster, as NULL, which counts it as invalid. */
static void on_sub_message(oa_redis_t *r, redisReply *reply, void *priv)
{
    cluster_store_t *s = priv;
    const char *kind = pubsub_kind(s, reply);
    json_t *o;

    (void)r;
    if (kind == NULL || strcmp(kind, "message") != 0 || reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    o = json_loadb(reply->element[2]->str, reply->element[2]->len, 0, NULL);
    cluster_store_message(s->cluster, o);
    json_decref(o);
}

static oa_redis_t *open_context(cluster_store_t *s, bool sub)
{
    oa_redis_options_t o;
    oa_redis_t *r;
    oa_error_t err;

    memset(&o, 0, sizeof(o));
    o.host = s->host;
    o.port = s->port;
    o.tls = s->tls; /* the certificate must name the URL's host */
    o.on_ready = on_ready;
    o.on_error = on_error;
    o.on_push = sub ? on_sub_message : NULL;
    o.data = s;
    if (oa_redis_connect(s->cluster->loop, &o, &r, &err) != 0)
        return NULL;
    if (s->password != NULL)
        oa_redis_command(r, on_setup_reply, NULL, "AUTH %s", s->password);
    return r;
}

static int redis_connect(cluster_store_t *s)
{
    if (s->leaving || s->cmd != NULL || s->sub != NULL)
        return UV_EALREADY;
    s->cmd = open_context(s, false);
    s->sub = s->cmd != NULL ? open_context(s, true) : NULL;
    if (s->cmd == NULL || s->sub == NULL) {
        redis_disconnect(s);
        return UV_EINVAL;
    }
    if (s->db != 0)
        oa_redis_command(s->cmd, on_setup_reply, NULL, "SELECT %d", s->db);
    oa_redis_command(s->sub, on_sub_reply, s, "SUBSCRIBE %s", CLUSTER_K_EVENTS);
    return 0;
}

/* The command connection for an operation, or NULL when there is none (or the goodbye has started). */
static oa_redis_t *command_conn(const cluster_store_t *s)
{
    return s->leaving ? NULL : s->cmd;
}

/* Starts an operation: 0 with *conn (the command connection) and *q (its request; NULL when cb is NULL, for a
 * command whose reply nobody waits for) set, or UV_ENOTCONN, or UV_ENOMEM. */
static int request_start(cluster_store_t *s, cluster_store_cb cb, void *data, oa_redis_t **conn, request_t **q)
{
    *q = NULL;
    *conn = command_conn(s);
    if (*conn == NULL)
        return UV_ENOTCONN;
    if (cb != NULL && (*q = request_new(s, cb, data)) == NULL)
        return UV_ENOMEM;
    return 0;
}

/* q's command was queued (rc 0), or not: then q goes, and its callback never fires. */
static int request_sent(request_t *q, int rc)
{
    if (rc == 0)
        return 0;
    free(q);
    return UV_ECONNABORTED;
}

/* ---- the configuration ---- */

static void conf_reply(request_t *q, const redisReply *reply, bool cas)
{
    cluster_store_reply_t r;
    int rc;

    if (reply == NULL) {
        /* A compare-and-set may have been applied; a seed that was is read back at the next resynchronisation. */
        request_end(q, cas ? CLUSTER_STORE_UNKNOWN : CLUSTER_STORE_UNAVAILABLE);
        return;
    }
    memset(&r, 0, sizeof(r));
    rc = cas ? cluster_cas_reply_parse(reply, &r.conf) : cluster_seed_reply_parse(reply, &r.conf);
    if (rc != 0) {
        log_refused(cas ? "conf_cas" : "resync", reply);
        request_end(q, CLUSTER_STORE_REFUSED);
        return;
    }
    r.outcome = CLUSTER_STORE_DONE;
    request_finish(q, &r);
}

static void on_seed_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    (void)r;
    conf_reply(priv, reply, false);
}

static void on_cas_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    (void)r;
    conf_reply(priv, reply, true);
}

/* Both conf scripts take the same KEYS and ARGV. */
static int send_conf(cluster_store_t *s, const cluster_conf_write_t *w, const char *script,
                     oa_redis_reply_cb on_reply, cluster_store_cb cb, void *data)
{
    oa_redis_t *r;
    char ver[32];
    request_t *q;
    int rc;

    if ((rc = request_start(s, cb, data, &r, &q)) != 0)
        return rc;
    snprintf(ver, sizeof(ver), "%" PRIu64, w->version);
    return request_sent(q, oa_redis_command(r, on_reply, q, "EVAL %s 2 %s %s %s %s %s %s %s", script, CLUSTER_K_CONF,
                                            CLUSTER_K_EVENTS, w->epoch, ver, w->conf, s->cluster->node_id_json,
                                            w->fresh_epoch));
}

static int redis_seed(cluster_store_t *s, const cluster_conf_write_t *w, cluster_store_cb cb, void *data)
{
    return send_conf(s, w, cluster_lua_conf_seed, on_seed_reply, cb, data);
}

static int redis_conf_cas(cluster_store_t *s, const cluster_conf_write_t *w, cluster_store_cb cb, void *data)
{
    return send_conf(s, w, cluster_lua_conf_cas, on_cas_reply, cb, data);
}

/* ---- the records ---- */

/* The keys of one CertID's records. */
typedef struct record_keys_s {
    char status[CLUSTER_CERTID_KEY_MAX];
    char sched[CLUSTER_CERTID_KEY_MAX];
} record_keys_t;

/* request_start for an operation on certid's records, with their keys in *k; UV_EINVAL when certid is not a
 * CertID's hex. */
static int record_request_start(cluster_store_t *s, const char *certid, cluster_store_cb cb, void *data,
                                record_keys_t *k, oa_redis_t **conn, request_t **q)
{
    if (cluster_certid_key(k->status, sizeof(k->status), CLUSTER_K_STATUS, certid) != 0 ||
        cluster_certid_key(k->sched, sizeof(k->sched), CLUSTER_K_SCHED, certid) != 0)
        return UV_EINVAL;
    return request_start(s, cb, data, conn, q);
}

/* The reply of "MGET status sched": each text read as JSON (NULL when absent or unreadable). */
static void on_records_reply(oa_redis_t *conn, redisReply *reply, void *priv)
{
    request_t *q = priv;
    cluster_store_reply_t r;
    size_t i;

    (void)conn;
    if (reply == NULL) {
        request_end(q, CLUSTER_STORE_UNAVAILABLE);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        log_refused("read_records", reply);
        request_end(q, CLUSTER_STORE_REFUSED);
        return;
    }
    memset(&r, 0, sizeof(r));
    r.outcome = CLUSTER_STORE_DONE;
    for (i = 0; i < 2; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            r.records[i] = json_loadb(reply->element[i]->str, reply->element[i]->len, 0, NULL);
    request_finish(q, &r);
    json_decref(r.records[0]);
    json_decref(r.records[1]);
}

static int redis_read_records(cluster_store_t *s, const char *certid, cluster_store_cb cb, void *data)
{
    oa_redis_t *r;
    record_keys_t k;
    request_t *q;
    int rc;

    if ((rc = record_request_start(s, certid, cb, data, &k, &r, &q)) != 0)
        return rc;
    return request_sent(q, oa_redis_command(r, on_records_reply, q, "MGET %s %s", k.status, k.sched));
}

static void on_publish_reply(oa_redis_t *conn, redisReply *reply, void *priv)
{
    request_t *q = priv;

    (void)conn;
    if (reply == NULL) {
        request_end(q, CLUSTER_STORE_UNKNOWN);
    } else if (reply->type != REDIS_REPLY_INTEGER) {
        log_refused("publish", reply);
        request_end(q, CLUSTER_STORE_REFUSED);
    } else {
        request_end(q, CLUSTER_STORE_DONE);
    }
}

static int redis_publish(cluster_store_t *s, const char *certid, cluster_record_dest_t dest, const char *text,
                         cluster_store_cb cb, void *data)
{
    oa_redis_t *r;
    record_keys_t k;
    oa_redis_reply_cb on_reply;
    request_t *q;
    int rc;

    if ((rc = record_request_start(s, certid, cb, data, &k, &r, &q)) != 0)
        return rc;
    on_reply = q != NULL ? on_publish_reply : NULL;
    /* An invalidation replaces the stored response too: a node that reads the store later must not serve it. */
    if (dest == CLUSTER_DEST_SCHED_STATUS)
        rc = oa_redis_command(r, on_reply, q, "EVAL %s 4 %s %s %s %s %s", cluster_lua_publish, CLUSTER_K_SEQ,
                              CLUSTER_K_EVENTS, k.sched, k.status, text);
    else
        rc = oa_redis_command(r, on_reply, q, "EVAL %s 3 %s %s %s %s", cluster_lua_publish, CLUSTER_K_SEQ,
                              CLUSTER_K_EVENTS, dest == CLUSTER_DEST_STATUS ? k.status : k.sched, text);
    return request_sent(q, rc);
}

/* ---- the registry and the lease ---- */

static void on_heartbeat_reply(oa_redis_t *conn, redisReply *reply, void *priv)
{
    request_t *q = priv;
    cluster_registry_view_t view;
    cluster_store_reply_t r;
    size_t i;

    (void)conn;
    if (reply == NULL) {
        request_end(q, CLUSTER_STORE_UNAVAILABLE);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        log_refused("heartbeat", reply);
        request_end(q, CLUSTER_STORE_REFUSED);
        return;
    }
    cluster_registry_view_init(&view);
    for (i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            cluster_registry_view_add(&view, reply->element[i]->str, reply->element[i]->len);
    memset(&r, 0, sizeof(r));
    r.outcome = CLUSTER_STORE_DONE;
    r.view = &view;
    request_finish(q, &r);
}

static int redis_heartbeat(cluster_store_t *s, const char *entry, const char *certid, cluster_store_cb cb, void *data)
{
    oa_cluster_t *c = s->cluster;
    oa_redis_t *r;
    char ttl[16];
    request_t *q;
    int rc;

    if ((rc = request_start(s, cb, data, &r, &q)) != 0)
        return rc;
    snprintf(ttl, sizeof(ttl), "%u", c->node_ttl_ms);
    return request_sent(q, oa_redis_command(r, on_heartbeat_reply, q, "EVAL %s 4 %s %s %s %s %s %s %s %s",
                                            cluster_lua_heartbeat, CLUSTER_K_NODE, CLUSTER_K_NODES, CLUSTER_K_CERTIDS,
                                            OA_CLUSTER_KEY_PREFIX, c->node_id, entry, ttl, certid));
}

/* The reply to SET NX ("OK", or nil when the lease is someone else's) or to the renew script (1 or 0). */
static void on_lease_reply(oa_redis_t *conn, redisReply *reply, void *priv)
{
    request_t *q = priv;
    cluster_store_reply_t r;

    (void)conn;
    if (reply == NULL) {
        request_end(q, CLUSTER_STORE_UNAVAILABLE);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        log_refused("lease", reply);
        request_end(q, CLUSTER_STORE_REFUSED);
        return;
    }
    memset(&r, 0, sizeof(r));
    r.outcome = CLUSTER_STORE_DONE;
    r.lease_held = (reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "OK") == 0) ||
                   (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1);
    /* Counted from when the request left, so the node stops believing in its lease before the store lets anyone
     * else have it. */
    if (r.lease_held)
        r.lease_until = cluster_lease_deadline(q->sent, q->store->cluster->lease_ms);
    request_finish(q, &r);
}

static int redis_lease(cluster_store_t *s, const char *certid, bool poller, cluster_store_cb cb, void *data)
{
    oa_cluster_t *c = s->cluster;
    oa_redis_t *r;
    char k_lease[CLUSTER_CERTID_KEY_MAX], lease[16];
    request_t *q;
    int rc;

    if (cluster_certid_key(k_lease, sizeof(k_lease), CLUSTER_K_LEASE, certid) != 0)
        return UV_EINVAL;
    if ((rc = request_start(s, cb, data, &r, &q)) != 0)
        return rc;
    snprintf(lease, sizeof(lease), "%u", c->lease_ms);
    if (poller)
        rc = oa_redis_command(r, on_lease_reply, q, "EVAL %s 1 %s %s %s", cluster_lua_lease_renew, k_lease,
                              c->node_id, lease);
    else
        rc = oa_redis_command(r, on_lease_reply, q, "SET %s %s NX PX %s", k_lease, c->node_id, lease);
    return request_sent(q, rc);
}

/* Sends the release script on conn (nothing answers). */
static void send_lease_release(cluster_store_t *s, oa_redis_t *conn, const char *certid)
{
    char k_lease[CLUSTER_CERTID_KEY_MAX];

    if (cluster_certid_key(k_lease, sizeof(k_lease), CLUSTER_K_LEASE, certid) == 0)
        oa_redis_command(conn, NULL, NULL, "EVAL %s 1 %s %s", cluster_lua_lease_release, k_lease,
                         s->cluster->node_id);
}

static void redis_lease_release(cluster_store_t *s, const char *certid)
{
    oa_redis_t *r = command_conn(s);

    /* After any request for the lease still on its way: the connection keeps the order. */
    if (r != NULL && s->cmd_connected)
        send_lease_release(s, r, certid);
}

/* ---- the goodbye ---- */

static void on_grace_closed(uv_handle_t *h)
{
    cluster_store_t *s = oa_container_of((uv_timer_t *)h, cluster_store_t, grace);
    oa_cluster_t *c = s->cluster;

    s->done(c);
    cluster_release(c);
}

/* Once both connections are gone, the grace timer closes and its close reports the goodbye done. */
static void goodbye_finish(cluster_store_t *s)
{
    if (s->cmd != NULL || s->sub != NULL || uv_is_closing((uv_handle_t *)&s->grace))
        return;
    uv_timer_stop(&s->grace);
    s->cluster->pending_closes++;
    uv_close((uv_handle_t *)&s->grace, on_grace_closed);
}

static void on_grace(uv_timer_t *t)
{
    cluster_store_t *s = oa_container_of(t, cluster_store_t, grace);

    drop_context(&s->cmd);
    goodbye_finish(s);
}

/* The reply to the QUIT that ends the goodbye, or NULL when the connection went first: either way the store has
 * had the commands before it, and the connection can go. */
static void on_quit_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    cluster_store_t *s = priv;

    (void)reply;
    if (r == s->cmd) {
        s->cmd = NULL;
        oa_redis_free(r);
    }
    goodbye_finish(s);
}

static void redis_goodbye(cluster_store_t *s, const char *certid, bool poller, void (*done)(oa_cluster_t *c))
{
    oa_cluster_t *c = s->cluster;
    oa_redis_t *r = s->cmd;

    s->leaving = true;
    s->done = done;
    uv_timer_init(c->loop, &s->grace);
    drop_context(&s->sub);
    if (r != NULL && s->cmd_connected && c->synced) {
        /* Leave the registry and the lease at once rather than when they expire; the connection goes with the
         * reply to QUIT, and the grace timer drops a store that does not send it. */
        oa_redis_command(r, NULL, NULL, "DEL %s%s", CLUSTER_K_NODE, c->node_id);
        if (poller)
            send_lease_release(s, r, certid);
        if (oa_redis_command(r, on_quit_reply, s, "QUIT") == 0) {
            uv_timer_start(&s->grace, on_grace, CLUSTER_CLOSE_GRACE_MS, 0);
            return;
        }
    }
    drop_context(&s->cmd);
    goodbye_finish(s);
}

/* ---- the store ---- */

static int redis_set_tls(cluster_store_t *s, SSL_CTX *ctx)
{
    return oa_tls_ctx_replace(&s->tls, ctx);
}

static void redis_free(cluster_store_t *s)
{
    if (s == NULL)
        return;
    free(s->password);
    SSL_CTX_free(s->tls);
    free(s);
}

const cluster_store_ops_t cluster_store_redis_ops = {
    .kind = "redis",
    .backoff_max_ms = 2000,
    .handshake_ms = 2000,
    .connect = redis_connect,
    .disconnect = redis_disconnect,
    .seed = redis_seed,
    .conf_cas = redis_conf_cas,
    .read_records = redis_read_records,
    .heartbeat = redis_heartbeat,
    .lease = redis_lease,
    .lease_release = redis_lease_release,
    .publish = redis_publish,
    .goodbye = redis_goodbye,
    .set_tls = redis_set_tls,
    .free = redis_free,
};

int cluster_store_redis_new(oa_cluster_t *c, const oa_cluster_options_t *o, cluster_store_t **out, const char **desc,
                            oa_error_t *err)
{
    cluster_store_t *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    if (oa_cluster_url_parse(o->url, s->host, &s->port, &s->db, err) != 0) {
        free(s);
        return -1;
    }
    /* A rediss:// URL promises TLS; falling back to plain TCP would break that promise silently. */
    if (oa_cluster_url_is_tls(o->url) && o->tls == NULL) {
        free(s);
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: a rediss:// URL needs a TLS context (--cluster-tls)");
    }
    s->cluster = c;
    if (o->tls != NULL && SSL_CTX_up_ref(o->tls) == 1)
        s->tls = o->tls;
    s->password = o->password != NULL ? strdup(o->password) : NULL;
    if ((o->password != NULL && s->password == NULL) || (o->tls != NULL && s->tls == NULL)) {
        redis_free(s);
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    }
    if (strchr(s->host, ':') != NULL)
        snprintf(s->desc, sizeof(s->desc), "[%s]:%d", s->host, s->port);
    else
        snprintf(s->desc, sizeof(s->desc), "%s:%d", s->host, s->port);
    *out = s;
    *desc = s->desc;
    return 0;
}
