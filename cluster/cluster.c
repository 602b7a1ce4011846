/*
 * Cluster mode's life cycle over its store (store.h): connecting, the resynchronisation that follows every
 * (re)connection (once the store is up: seed, read the records; only then is the node synchronised), reconnection
 * with a doubling backoff, the dispatch of the store's messages, and oa_cluster_new/oa_cluster_close. oa_cluster.h
 * says why in that order; cluster_internal.h the teardown rules.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"
#include "oa_util.h"

static void on_retry(uv_timer_t *t);

bool cluster_synced(const oa_cluster_t *c)
{
    return c->synced && c->store_up && !c->closing;
}

static void on_tick(uv_timer_t *t)
{
    cluster_tick(oa_container_of(t, oa_cluster_t, tick));
}

/* ---- resynchronisation ---- */

/* Whether a reply says nothing at all: the store went (it reports that itself) or the cluster is closing. */
static bool reply_void(const oa_cluster_t *c, const cluster_store_reply_t *r)
{
    return c->closing || r->outcome == CLUSTER_STORE_UNAVAILABLE || r->outcome == CLUSTER_STORE_UNKNOWN;
}

static void on_records_read(oa_cluster_t *c, const cluster_store_reply_t *r, void *data)
{
    (void)data;
    if (reply_void(c, r))
        return;
    /* A read the store refused leaves the records to the channel, as before any was published. */
    if (r->outcome == CLUSTER_STORE_DONE)
        cluster_records_apply(c, r->records);
    c->synced = true;
    c->backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    if (c->outage_logged) {
        /* The refusals of the outage, counted rather than logged one by one. */
        OA_LOG(OA_LOG_INFO, "store_reconnected", OA_KV_STR("store", c->store_desc),
               OA_KV_INT("conf_version", (int64_t)c->version),
               OA_KV_INT("puts_refused", (int64_t)(c->put_counts[CLUSTER_PUT_UNAVAILABLE] - c->refused_base)));
        c->outage_logged = false;
    } else if (!c->ever_synced) {
        OA_LOG(OA_LOG_INFO, "store_connected", OA_KV_STR("store", c->store_desc),
               OA_KV_INT("conf_version", (int64_t)c->version));
    }
    c->ever_synced = true;
    c->refused_base = c->put_counts[CLUSTER_PUT_UNAVAILABLE];
    cluster_tick(c);
}

/* The seed's reply: the store's configuration after the seed is put in force, then the records are read. */
static void on_seeded(oa_cluster_t *c, const cluster_store_reply_t *r, void *data)
{
    (void)data;
    if (reply_void(c, r))
        return;
    if (r->outcome != CLUSTER_STORE_DONE) {
        /* The store's own words when it has them (etcd: "permission denied"), so the outage's one line says why. */
        cluster_lost(c, r->why != NULL ? r->why : "the store refused the resynchronisation");
        return;
    }
    cluster_conf_seeded(c, &r->conf);
    if (c->ops->read_records(c->store, c->certid, on_records_read, NULL) != 0)
        cluster_lost(c, "the status could not be read");
}

static void resync(oa_cluster_t *c)
{
    char fresh[CLUSTER_EPOCH_LEN + 1], *json = cluster_conf_encode(&c->conf);
    cluster_conf_write_t w = {c->epoch, c->version, json, fresh};

    cluster_epoch_new(fresh);
    c->conf_live = false;
    if (json == NULL || c->ops->seed(c->store, &w, on_seeded, NULL) != 0)
        cluster_lost(c, "the resynchronisation could not be sent");
    free(json);
}

void cluster_store_up(oa_cluster_t *c)
{
    if (c->closing)
        return;
    c->store_up = true;
    resync(c);
}

void cluster_store_resync(oa_cluster_t *c)
{
    if (c->closing || !c->store_up)
        return;
    /* Not synchronised until the store has been read again, within the same time limit as at connection. */
    c->synced = false;
    c->connect_started = uv_now(c->loop);
    resync(c);
}

void cluster_store_message(oa_cluster_t *c, json_t *o)
{
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *node = json_string_value(json_object_get(o, "node"));

    if (c->closing)
        return;
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
}

/* ---- connecting ---- */

/* The store is gone: drop what is left of it and try again later. The goodbye handles the store's end itself. */
void cluster_lost(oa_cluster_t *c, const char *why)
{
    bool was_up = c->synced;

    if (c->closing)
        return;
    c->synced = false;
    c->store_up = false;
    c->store_open = false;
    c->ops->disconnect(c->store);
    c->hb_owed = false;
    c->lease_owed = false;
    if (was_up)
        c->disconnects++;
    if (!c->outage_logged) {
        OA_LOG(OA_LOG_ERROR, "store_unavailable", OA_KV_STR("store", c->store_desc), OA_KV_STR("reason", why),
               OA_KV_STR("effect", "PUT answers 503; the last known configuration is served; reconnecting"));
        c->outage_logged = true;
    } else {
        OA_LOG(OA_LOG_DEBUG, "store_retry_failed", OA_KV_STR("reason", why), OA_KV_INT("was_up", was_up));
    }
    uv_timer_start(&c->retry, on_retry, c->backoff_ms, 0);
    c->backoff_ms = cluster_backoff_next(c->backoff_ms, c->ops->backoff_max_ms);
}

static void connect_store(oa_cluster_t *c)
{
    if (c->closing || c->store_open)
        return;
    c->connect_started = uv_now(c->loop);
    /* The store may have restarted empty and count from 1 again; what it holds is read once it is up. */
    c->last_seq = 0;
    if (c->ops->connect(c->store) != 0) {
        cluster_lost(c, "the connection could not be opened");
        return;
    }
    c->store_open = true;
}

static void on_retry(uv_timer_t *t)
{
    oa_cluster_t *c = oa_container_of(t, oa_cluster_t, retry);

    connect_store(c);
}

/* ---- life cycle ---- */

int oa_cluster_available(const oa_cluster_t *c)
{
    return c->synced && c->store_up;
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
    if (c->store != NULL)
        c->ops->free(c->store);
    free(c->node_id);
    free(c->node_id_json);
    free(c->node_json);
    free(c->caps);
    free(c->api);
    free(c->version_path);
    free(c);
}

int oa_cluster_new(uv_loop_t *loop, const oa_cluster_options_t *o, const oa_conf_t *conf, oa_cluster_t **out,
                   oa_error_t *err)
{
    oa_cluster_t *c = calloc(1, sizeof(*c));
    json_t *id;

    if (c == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    c->loop = loop;
    /* The stores read the timings (etcd's session outlives the longer of the lease and the registry lifetime). */
    c->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : CLUSTER_DEFAULT_HEARTBEAT_MS;
    c->node_ttl_ms = o->node_ttl_ms ? o->node_ttl_ms : CLUSTER_DEFAULT_NODE_TTL_MS;
    c->lease_ms = o->lease_ms ? o->lease_ms : CLUSTER_DEFAULT_LEASE_MS;
    c->ops = oa_cluster_url_is_etcd(o->url) ? &cluster_store_etcd_ops : &cluster_store_redis_ops;
    if ((oa_cluster_url_is_etcd(o->url) ? cluster_store_etcd_new : cluster_store_redis_new)(c, o, &c->store,
                                                                                           &c->store_desc, err) != 0) {
        free(c);
        return -1;
    }
    if (o->capabilities != NULL && oa_cluster_caps_valid(o->capabilities) != 0) {
        free_cluster(c);
        return oa_error_set(err, OA_E_BAD_OPTION, "--capabilities: expected names of a-z, 0-9, _ and - separated "
                            "by commas, got \"%.64s\"", o->capabilities);
    }
    c->hooks = o->hooks;
    c->backoff_ms = CLUSTER_BACKOFF_MIN_MS;
    c->conf = *conf;
    c->node_id = strdup(o->node_id != NULL ? o->node_id : "node");
    c->caps = strdup(o->capabilities != NULL ? o->capabilities : "ocsp");
    c->api = strdup(o->api_address != NULL ? o->api_address : "");
    c->version_path = o->data_dir != NULL ? oa_path_join(o->data_dir, OA_CLUSTER_VERSION_FILE) : NULL;
    id = c->node_id != NULL ? json_string(c->node_id) : NULL;
    c->node_id_json = id != NULL ? json_dumps(id, JSON_ENCODE_ANY) : NULL;
    json_decref(id);
    snprintf(c->certid, sizeof(c->certid), "%s",
             o->certid != NULL ? o->certid : "0000000000000000000000000000000000000000");
    if (!cluster_certid_valid(c->certid)) {
        free_cluster(c);
        return oa_error_set(err, OA_E_BAD_OPTION, "the certificate's CertID could not be named");
    }
    c->node_json = c->node_id != NULL && c->caps != NULL && c->api != NULL
                       ? cluster_node_entry_encode(c->node_id, c->api, c->caps, c->certid)
                       : NULL;
    if (c->node_id == NULL || c->caps == NULL || c->api == NULL || c->node_id_json == NULL || c->node_json == NULL ||
        (o->data_dir != NULL && c->version_path == NULL)) {
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

/* The store's goodbye is over: the timers close and the last close frees c. */
static void finish_close(oa_cluster_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tick))
        return;
    c->tick.data = c->retry.data = c;
    c->pending_closes += 2;
    uv_close((uv_handle_t *)&c->tick, on_timer_closed);
    uv_close((uv_handle_t *)&c->retry, on_timer_closed);
    /* Put timers closing right now hold pending_closes above zero until they are done. */
}

int oa_cluster_set_tls(oa_cluster_t *c, SSL_CTX *ctx)
{
    return c->ops->set_tls(c->store, ctx);
}

void oa_cluster_close(oa_cluster_t *c, void (*done)(void *arg), void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->done = done;
    c->done_arg = arg;
    cluster_puts_fail_all(c, "The agent is shutting down.");
    uv_timer_stop(&c->tick);
    uv_timer_stop(&c->retry);
    /* The store leaves the registry and the lease at once rather than when they expire, bounded in time. */
    c->ops->goodbye(c->store, c->certid, c->poller, finish_close);
    if (c->poller) {
        c->poller = false;
        OA_LOG(OA_LOG_INFO, "cluster_poller_released", OA_KV_STR("reason", "shutting down"));
    }
}
