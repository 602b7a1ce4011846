/*
 * Cluster mode's connection to the store and its life cycle: the two connections, the subscription, the
 * resynchronisation that follows every (re)connection (subscribe, seed, read the records; only then is the node
 * synchronised), reconnection with a doubling backoff, the dispatch of the channel's messages, and
 * oa_cluster_new/oa_cluster_close. oa_cluster.h says why in that order; cluster_internal.h the teardown rules.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"
#include "oa_util.h"

static void on_retry(uv_timer_t *t);
static void finish_close(oa_cluster_t *c);

oa_redis_t *cluster_ready_cmd(oa_cluster_t *c)
{
    return c->cmd != NULL && c->cmd_connected && !c->closing ? c->cmd : NULL;
}

static void on_tick(uv_timer_t *t)
{
    cluster_tick(oa_container_of(t, oa_cluster_t, tick));
}

/* ---- resynchronisation ---- */

static void on_status_read(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;

    (void)r;
    if (reply == NULL || c->closing)
        return;
    cluster_records_read(c, reply);
    c->synced = true;
    c->backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    if (c->outage_logged) {
        /* The refusals of the outage, counted rather than logged one by one. */
        OA_LOG(OA_LOG_INFO, "store_reconnected", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_INT("conf_version", (int64_t)c->version),
               OA_KV_INT("puts_refused", (int64_t)(c->put_counts[CLUSTER_PUT_UNAVAILABLE] - c->refused_base)));
        c->outage_logged = false;
    } else if (!c->ever_synced) {
        OA_LOG(OA_LOG_INFO, "store_connected", OA_KV_STR("store", c->host), OA_KV_INT("port", c->port),
               OA_KV_INT("conf_version", (int64_t)c->version));
    }
    c->ever_synced = true;
    c->refused_base = c->put_counts[CLUSTER_PUT_UNAVAILABLE];
    cluster_tick(c);
}

/* The reply of the seed script: the store's configuration after the seed is put in force, then the records are
 * read. */
static void on_seed_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = priv;
    cluster_seed_reply_t s;

    if (reply == NULL || c->closing)
        return;
    if (cluster_seed_reply_parse(reply, &s) != 0) {
        OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "resync"),
               OA_KV_STR("reply", cluster_reply_why(reply)));
        cluster_lost(c, "the store refused the resynchronisation");
        return;
    }
    cluster_conf_seeded(c, &s);
    if (oa_redis_command(r, on_status_read, c, "MGET %s %s", c->k_status, c->k_sched) != 0)
        cluster_lost(c, "the status could not be read");
}

static void resync(oa_cluster_t *c)
{
    /* The subscription can be confirmed before the command connection is up: the script is then queued behind its
     * AUTH and SELECT and goes out once it is. */
    oa_redis_t *r = c->closing ? NULL : c->cmd;
    char ver[32], fresh[CLUSTER_EPOCH_LEN + 1], *json = cluster_conf_encode(&c->conf);

    snprintf(ver, sizeof(ver), "%" PRIu64, c->version);
    cluster_epoch_new(fresh);
    c->conf_live = false;
    if (r == NULL || json == NULL ||
        oa_redis_command(r, on_seed_reply, c, "EVAL %s 2 %s %s %s %s %s %s %s", cluster_lua_conf_seed,
                         CLUSTER_K_CONF, CLUSTER_K_EVENTS, c->epoch, ver, json, c->node_id_json, fresh) != 0)
        cluster_lost(c, "the resynchronisation could not be sent");
    free(json);
}

static void handle_message(oa_cluster_t *c, const char *text, size_t len)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *node = json_string_value(json_object_get(o, "node"));

    if (type == NULL || node == NULL) {
        c->messages[CLUSTER_MSG_INVALID]++;
    } else if (strcmp(type, "conf") == 0) {
        c->messages[CLUSTER_MSG_CONF]++;
        cluster_conf_message(c, o, node);
    } else if (strcmp(type, "status") == 0) {
        c->messages[CLUSTER_MSG_STATUS]++;
        cluster_record_message(c, o, type);
    } else if (strcmp(type, "state") == 0) {
        c->messages[CLUSTER_MSG_STATE]++;
        cluster_record_message(c, o, type);
    } else {
        c->messages[CLUSTER_MSG_INVALID]++;
    }
    json_decref(o);
}

/* ---- connections ---- */

static void drop_context(oa_redis_t **slot)
{
    oa_redis_t *r = *slot;

    *slot = NULL;
    oa_redis_free(r);
}

/* Either connection failed: drop both and try again later. */
void cluster_lost(oa_cluster_t *c, const char *why)
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
    c->backoff_ms = cluster_backoff_next(c->backoff_ms);
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
    cluster_lost(c, why);
}

static void on_setup_reply(oa_redis_t *r, redisReply *reply, void *priv)
{
    oa_cluster_t *c = oa_redis_data(r);

    (void)priv;
    if (reply == NULL || c->closing || reply->type != REDIS_REPLY_ERROR)
        return;
    OA_LOG(OA_LOG_ERROR, "cluster_store_error", OA_KV_STR("op", "auth/select"), OA_KV_STR("reply", reply->str));
    cluster_lost(c, reply->str);
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
        cluster_lost(c, "the connection could not be opened");
        return;
    }
    if (c->db != 0)
        oa_redis_command(c->cmd, on_setup_reply, NULL, "SELECT %d", c->db);
    oa_redis_command(c->sub, on_sub_reply, c, "SUBSCRIBE %s", CLUSTER_K_EVENTS);
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

static void free_cluster(oa_cluster_t *c)
{
    free(c->password);
    free(c->node_id);
    free(c->node_id_json);
    free(c->node_json);
    free(c->caps);
    free(c->api);
    free(c->version_path);
    SSL_CTX_free(c->tls);
    free(c);
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
    c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : CLUSTER_DEFAULT_HEARTBEAT_MS;
    c->node_ttl_ms = o->node_ttl_ms ? o->node_ttl_ms : CLUSTER_DEFAULT_NODE_TTL_MS;
    c->lease_ms = o->lease_ms ? o->lease_ms : CLUSTER_DEFAULT_LEASE_MS;
    if (o->tls != NULL && SSL_CTX_up_ref(o->tls) == 1)
        c->tls = o->tls;
    c->backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    c->conf = *conf;
    c->password = o->password != NULL ? strdup(o->password) : NULL;
    c->node_id = strdup(o->node_id != NULL ? o->node_id : "node");
    c->caps = strdup(o->capabilities != NULL ? o->capabilities : "ocsp");
    c->api = strdup(o->api_address != NULL ? o->api_address : "");
    c->version_path = o->data_dir != NULL ? oa_path_join(o->data_dir, OA_CLUSTER_VERSION_FILE) : NULL;
    id = c->node_id != NULL ? json_string(c->node_id) : NULL;
    c->node_id_json = id != NULL ? json_dumps(id, JSON_ENCODE_ANY) : NULL;
    json_decref(id);
    snprintf(c->certid, sizeof(c->certid), "%s",
             o->certid != NULL ? o->certid : "0000000000000000000000000000000000000000");
    if (cluster_certid_key(c->k_lease, sizeof(c->k_lease), CLUSTER_K_LEASE, c->certid) != 0 ||
        cluster_certid_key(c->k_status, sizeof(c->k_status), CLUSTER_K_STATUS, c->certid) != 0 ||
        cluster_certid_key(c->k_sched, sizeof(c->k_sched), CLUSTER_K_SCHED, c->certid) != 0) {
        free_cluster(c);
        return oa_error_set(err, OA_E_BAD_OPTION, "the certificate's CertID could not be named");
    }
    c->node_json = c->node_id != NULL && c->caps != NULL && c->api != NULL
                       ? cluster_node_entry_encode(c->node_id, c->api, c->caps, c->certid)
                       : NULL;
    if (c->node_id == NULL || c->caps == NULL || c->api == NULL || c->node_id_json == NULL || c->node_json == NULL ||
        (o->password != NULL && c->password == NULL) || (o->data_dir != NULL && c->version_path == NULL) ||
        (o->tls != NULL && c->tls == NULL)) {
        free_cluster(c);
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    }
    /* Until the first heartbeat answers, the only node known is this one. */
    if (!oa_cluster_caps_have(c->caps, "ocsp")) {
        snprintf(c->view.lacking, sizeof(c->view.lacking), "%s", c->node_id);
        c->view.lacking_count = 1;
    }
    cluster_version_load(c);
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
void cluster_release(oa_cluster_t *c)
{
    void (*done)(void *arg);
    void *arg;

    if (--c->pending_closes > 0 || !uv_is_closing((uv_handle_t *)&c->tick))
        return;
    done = c->done;
    arg = c->done_arg;
    free_cluster(c);
    if (done != NULL)
        done(arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    cluster_release(h->data);
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

int oa_cluster_set_tls(oa_cluster_t *c, SSL_CTX *ctx)
{
    if (ctx == NULL || c->tls == NULL || SSL_CTX_up_ref(ctx) != 1)
        return UV_EINVAL;
    SSL_CTX_free(c->tls);
    c->tls = ctx;
    return 0;
}

void oa_cluster_close(oa_cluster_t *c, void (*done)(void *arg), void *arg)
{
    oa_redis_t *r;

    if (c->closing)
        return;
    c->closing = true;
    c->done = done;
    c->done_arg = arg;
    cluster_puts_fail_all(c, "The agent is shutting down.");
    uv_timer_stop(&c->tick);
    uv_timer_stop(&c->retry);
    drop_context(&c->sub);
    r = c->cmd;
    if (r != NULL && c->cmd_connected && c->synced) {
        /* Leave the registry and the lease at once rather than when they expire; the connection goes with the
         * reply to QUIT, and the grace timer drops a store that does not send it. */
        oa_redis_command(r, NULL, NULL, "DEL %s%s", CLUSTER_K_NODE, c->node_id);
        if (c->poller)
            oa_redis_command(r, NULL, NULL, "EVAL %s 1 %s %s", cluster_lua_lease_release, c->k_lease, c->node_id);
        if (oa_redis_command(r, on_quit_reply, c, "QUIT") == 0)
            uv_timer_start(&c->grace, on_grace, CLUSTER_CLOSE_GRACE_MS, 0);
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
