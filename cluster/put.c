/*
 * PUT /v1/ocsp in cluster mode: the patch the daemon validated is applied to the latest known configuration and the
 * result written with the store's compare-and-set (conf_cas); a write of another node that came first is put in
 * force and the patch applied again on top of it, for at most CLUSTER_PUT_MAX_ROUNDS rounds, all within
 * CLUSTER_PUT_TIMEOUT_MS.
 *
 * A put is answered once (its callback fires) and lives on until the reply to its last compare-and-set has come
 * back, because a write confirmed after the answer "not confirmed in time" is still put in force here.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"
#include "oa_util.h"

struct cluster_put_s {
    oa_cluster_t *cluster;
    cluster_put_t *prev, *next;
    oa_conf_patch_t patch;
    char *user;
    oa_cluster_put_cb cb;
    void *data;
    int rounds;
    oa_conf_t next_conf;
    unsigned changed;
    bool answered;     /* cb has fired */
    bool reply_owed;   /* a compare-and-set is outstanding; its callback still holds the put */
    bool timer_closed;
    uv_timer_t timeout;
};

static void put_maybe_free(cluster_put_t *p)
{
    if (p->reply_owed || !p->timer_closed)
        return;
    free(p->user);
    free(p);
}

static void on_put_timer_closed(uv_handle_t *h)
{
    cluster_put_t *p = oa_container_of(h, cluster_put_t, timeout);
    oa_cluster_t *c = p->cluster;

    p->timer_closed = true;
    put_maybe_free(p);
    cluster_release(c);
}

/* Takes p off the cluster's list of PUTs in progress and marks it answered, so that nothing answers it again. */
static void put_unlink(cluster_put_t *p)
{
    oa_cluster_t *c = p->cluster;

    p->answered = true;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        c->puts = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

/* Answers the caller once; the put itself lives on until its compare-and-set has come back. */
static void put_answer(cluster_put_t *p, const oa_error_t *err)
{
    oa_cluster_t *c = p->cluster;

    if (p->answered)
        return;
    put_unlink(p);
    uv_timer_stop(&p->timeout);
    c->pending_closes++;
    uv_close((uv_handle_t *)&p->timeout, on_put_timer_closed);
    p->cb(p->data, err);
}

static void put_fail(cluster_put_t *p, oa_errcode_t code, const char *text)
{
    oa_error_t err;

    oa_error_set(&err, code, "%s", text);
    put_answer(p, &err);
}

static void on_put_timeout(uv_timer_t *t)
{
    cluster_put_t *p = oa_container_of(t, cluster_put_t, timeout);

    p->cluster->put_counts[CLUSTER_PUT_TIMEOUT]++;
    put_fail(p, OA_E_STORE_UNAVAILABLE, "The cluster store did not confirm the change in time; it may or may not "
                                        "have been applied.");
}

static int put_attempt(cluster_put_t *p, oa_error_t *err);

static void on_put_reply(oa_cluster_t *c, const cluster_store_reply_t *r, void *data)
{
    cluster_put_t *p = data;
    const cluster_conf_reply_t *cas = &r->conf;
    cluster_conf_pos_t pos;
    oa_conf_t stored;
    oa_error_t err;
    int rc;

    p->reply_owed = false;
    c->cas_owed--;
    if (r->outcome == CLUSTER_STORE_UNKNOWN || r->outcome == CLUSTER_STORE_UNAVAILABLE || c->closing) {
        /* Whatever happened to the write, the next resynchronisation reads it from the store. */
        if (p->answered) {
            put_maybe_free(p);
            return;
        }
        c->put_counts[CLUSTER_PUT_UNAVAILABLE]++;
        /* Said as the store knows it: a write that reached the store but whose answer was lost may be in force (the
         * store's next message says), one that no store member took is not. */
        put_fail(p, OA_E_STORE_UNAVAILABLE,
                 r->outcome == CLUSTER_STORE_UNAVAILABLE
                     ? "The cluster store could not be reached; the change was not applied."
                     : "The connection to the cluster store was lost before it confirmed the change; it may or may "
                       "not have been applied.");
        return;
    }
    if (r->outcome != CLUSTER_STORE_DONE) {
        if (p->answered) {
            put_maybe_free(p);
            return;
        }
        c->put_counts[CLUSTER_PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "The cluster store refused the change.");
        return;
    }
    pos = cluster_conf_pos(c);
    if (cas->written) {
        /* Committed: the store and every other node have it, so this node puts it in force too, even when the PUT
         * was already answered "not confirmed in time". A round is counted once, as its answer said. Not when a newer
         * configuration is already in force (applied from a message that overtook this reply). */
        if (!p->answered)
            c->put_counts[CLUSTER_PUT_COMMITTED]++;
        if (cluster_conf_is_news(&pos, cas->epoch, cas->version))
            cluster_conf_adopt(c, &p->next_conf, cas->epoch, cas->version, p->user, c->node_id);
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
    /* Another node's change came first: take it, then apply the patch again on top of it. */
    c->put_counts[CLUSTER_PUT_CONFLICT_RETRY]++;
    if (cas->conf_len > 0 && cluster_conf_decode(cas->conf, cas->conf_len, &stored) == 0 &&
        cluster_conf_is_news(&pos, cas->epoch, cas->version))
        cluster_conf_adopt(c, &stored, cas->epoch, cas->version, NULL, "store");
    if (++p->rounds >= CLUSTER_PUT_MAX_ROUNDS) {
        c->put_counts[CLUSTER_PUT_UNAVAILABLE]++;
        put_fail(p, OA_E_STORE_UNAVAILABLE, "Too many concurrent changes of the cluster configuration; retry.");
        return;
    }
    rc = put_attempt(p, &err);
    if (rc < 0 && err.code == OA_E_STORE_UNAVAILABLE)
        c->put_counts[CLUSTER_PUT_UNAVAILABLE]++;
    if (rc != 0)
        put_answer(p, rc > 0 ? NULL : &err);
}

/* Applies the patch to the latest configuration and sends the compare-and-set. 1 when there is nothing to write,
 * 0 when sent, -1 with err filled. */
static int put_attempt(cluster_put_t *p, oa_error_t *err)
{
    oa_cluster_t *c = p->cluster;
    char fresh[CLUSTER_EPOCH_LEN + 1], *json;
    cluster_conf_write_t w;
    int rc;

    if (!cluster_synced(c))
        return oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable; the configuration "
                                                         "cannot be changed now.");
    p->changed = oa_conf_patch_apply(&p->patch, &c->conf, &p->next_conf);
    if (p->changed == 0)
        return 1;
    json = cluster_conf_encode(&p->next_conf);
    if (json == NULL)
        return oa_error_set(err, OA_E_NOMEM, "Out of memory.");
    cluster_epoch_new(fresh);
    w.epoch = c->epoch;
    w.version = c->version;
    w.conf = json;
    w.fresh_epoch = fresh;
    rc = c->ops->conf_cas(c->store, &w, on_put_reply, p);
    free(json);
    if (rc != 0)
        return oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable.");
    p->reply_owed = true;
    c->cas_owed++;
    return 0;
}

oa_cluster_put_t oa_cluster_conf_put(oa_cluster_t *c, const oa_conf_patch_t *patch, const char *user,
                                     oa_cluster_put_cb cb, void *data, oa_error_t *err)
{
    cluster_put_t *p;
    int rc;

    if (!cluster_synced(c)) {
        c->put_counts[CLUSTER_PUT_UNAVAILABLE]++;
        oa_error_set(err, OA_E_STORE_UNAVAILABLE, "The cluster store is unreachable; the configuration cannot be "
                                                  "changed now.");
        return OA_CLUSTER_PUT_FAILED;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        oa_error_set(err, OA_E_NOMEM, "Out of memory.");
        return OA_CLUSTER_PUT_FAILED;
    }
    p->cluster = c;
    p->cb = cb;
    p->data = data;
    p->patch = *patch;
    p->user = strdup(user != NULL ? user : "");
    if (p->user == NULL) {
        free(p);
        oa_error_set(err, OA_E_NOMEM, "Out of memory.");
        return OA_CLUSTER_PUT_FAILED;
    }
    uv_timer_init(c->loop, &p->timeout);
    p->next = c->puts;
    if (c->puts != NULL)
        c->puts->prev = p;
    c->puts = p;
    rc = put_attempt(p, err);
    if (rc == 0) {
        uv_timer_start(&p->timeout, on_put_timeout, CLUSTER_PUT_TIMEOUT_MS, 0);
        return OA_CLUSTER_PUT_STARTED;
    }
    if (rc < 0 && err->code == OA_E_STORE_UNAVAILABLE)
        c->put_counts[CLUSTER_PUT_UNAVAILABLE]++;
    /* Nothing was sent: undo without calling cb. */
    put_unlink(p);
    c->pending_closes++;
    uv_close((uv_handle_t *)&p->timeout, on_put_timer_closed);
    return rc < 0 ? OA_CLUSTER_PUT_FAILED : OA_CLUSTER_PUT_UNCHANGED;
}

void cluster_puts_fail_all(oa_cluster_t *c, const char *text)
{
    while (c->puts != NULL)
        put_fail(c->puts, OA_E_STORE_UNAVAILABLE, text);
}
