/*
 * The staple's way to the TLS endpoints: the current staple, the targets, and what each of them did with it.
 */
#include <inttypes.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "oa_log.h"
#include "target.h"

struct oa_delivery_s {
    uv_loop_t *loop;
    char *node_id;
    char *staple_path;
    uint64_t retry_ms;

    oa_ocsp_result_t staple;
    bool have_staple;
    uint64_t gen;

    OCSP_CERTID *certid; /* the watched certificate's; NULL: every staple is taken */
    uint64_t cert_gen;   /* the generation that dropped the previous certificate's staple, 0 for none */

    oa_dtarget_t *targets; /* in the order they were added */
    oa_dtarget_t *api;     /* the API's own target, when added */

    bool closing;
    size_t pending_closes;
    void (*done)(void *arg);
    void *done_arg;
};

#define DEFAULT_RETRY_MS 60000

const char *oa_dtarget_state_name(oa_dtarget_state_t s)
{
    switch (s) {
    case OA_DTARGET_PENDING:
        return "pending";
    case OA_DTARGET_DELIVERED:
        return "delivered";
    case OA_DTARGET_FAILED:
        return "failed";
    }
    return "pending";
}

int oa_delivery_new(uv_loop_t *loop, const oa_delivery_options_t *opts, oa_delivery_t **out)
{
    oa_delivery_t *d;

    *out = NULL;
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return UV_ENOMEM;
    d->loop = loop;
    d->retry_ms = DEFAULT_RETRY_MS;
    d->node_id = strdup(opts->node_id != NULL ? opts->node_id : "");
    d->staple_path = strdup(opts->staple_path != NULL ? opts->staple_path : "");
    if (d->node_id == NULL || d->staple_path == NULL) {
        free(d->node_id);
        free(d->staple_path);
        free(d);
        return UV_ENOMEM;
    }
    *out = d;
    return 0;
}

int oa_dtarget_attach(oa_delivery_t *d, oa_dtarget_t *t, const oa_dtarget_ops_t *ops, const char *name)
{
    oa_dtarget_t **tail;

    t->name = strdup(name);
    if (t->name == NULL)
        return UV_ENOMEM;
    t->ops = ops;
    t->delivery = d;
    t->state = OA_DTARGET_PENDING;
    t->delivered_status = -1;
    t->next = NULL;
    for (tail = &d->targets; *tail != NULL; tail = &(*tail)->next)
        ;
    *tail = t;
    return 0;
}

/* ---- the agent's own HTTPS API: it reads the current staple in every handshake, so holding it is immediate ---- */

static void api_update(oa_dtarget_t *t)
{
    oa_dtarget_report(t, oa_delivery_generation(t->delivery), NULL);
}

static void api_close(oa_dtarget_t *t)
{
    oa_dtarget_closed(t);
}

static void api_free(oa_dtarget_t *t)
{
    free(t);
}

static const oa_dtarget_ops_t api_ops = {api_update, api_close, api_free};

/* Called in a handshake whose client asked for the certificate status: hands it the current staple, if any. */
static int on_status_request(SSL *ssl, void *arg)
{
    const oa_ocsp_result_t *staple = oa_delivery_staple(arg);
    unsigned char *copy;

    if (staple == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    /* OpenSSL takes ownership of the buffer and frees it with the connection. */
    copy = OPENSSL_memdup(staple->der, staple->der_len);
    if (copy == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)staple->der_len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

int oa_delivery_add_api(oa_delivery_t *d, SSL_CTX *ctx, oa_error_t *err)
{
    oa_dtarget_t *t;

    if (d->api == NULL) {
        t = calloc(1, sizeof(*t));
        if (t == NULL || oa_dtarget_attach(d, t, &api_ops, "api") != 0) {
            free(t);
            return oa_error_set(err, OA_E_NOMEM, "out of memory");
        }
        d->api = t;
        /* Added after a staple was set (a reloaded API certificate): it holds that staple from the next handshake. */
        if (d->gen > 0)
            api_update(t);
    }
    SSL_CTX_set_tlsext_status_cb(ctx, on_status_request);
    SSL_CTX_set_tlsext_status_arg(ctx, d);
    return 0;
}

void oa_delivery_remove_api(oa_delivery_t *d)
{
    oa_dtarget_t **p;

    if (d->api == NULL || d->closing)
        return;
    /* The target has no handle and nothing in flight: it can go at once. */
    for (p = &d->targets; *p != NULL; p = &(*p)->next) {
        if (*p == d->api) {
            *p = d->api->next;
            break;
        }
    }
    free(d->api->name);
    d->api->ops->free(d->api);
    d->api = NULL;
}

int oa_delivery_add_haproxy_socket(oa_delivery_t *d, const char *spec, oa_error_t *err)
{
    return oa_haproxy_socket_target_new(d, spec, err);
}

int oa_delivery_add_haproxy_crt(oa_delivery_t *d, const char *crt_path, oa_error_t *err)
{
    return oa_haproxy_crt_target_new(d, crt_path, err);
}

int oa_delivery_add_hook(oa_delivery_t *d, const char *program, oa_error_t *err)
{
    return oa_hook_target_new(d, program, err);
}

/* ---- the staple ---- */

/* true when the DER response res holds a single response for certid. */
static bool staple_is_for(const oa_ocsp_result_t *res, const OCSP_CERTID *certid)
{
    const unsigned char *p = res->der;
    OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)res->der_len);
    OCSP_BASICRESP *basic = resp != NULL ? OCSP_response_get1_basic(resp) : NULL;
    bool found = basic != NULL && OCSP_resp_find(basic, (OCSP_CERTID *)certid, -1) >= 0;

    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
    ERR_clear_error();
    return found;
}

/* The staple held now is a new generation: every target is handed it. */
static void publish(oa_delivery_t *d)
{
    oa_dtarget_t *t;

    d->gen++;
    for (t = d->targets; t != NULL; t = t->next)
        t->ops->update(t);
}

int oa_delivery_set_target(oa_delivery_t *d, const oa_ocsp_target_t *target)
{
    OCSP_CERTID *id = NULL;

    if (d->closing)
        return 0;
    if (target != NULL) {
        id = OCSP_cert_to_id(EVP_sha1(), target->cert, target->issuer);
        if (id == NULL) {
            ERR_clear_error();
            return UV_ENOMEM;
        }
    }
    if (id != NULL && d->certid != NULL && OCSP_id_cmp(id, d->certid) == 0) {
        OCSP_CERTID_free(id);
        return 0;
    }
    OCSP_CERTID_free(d->certid);
    d->certid = id;
    /* The previous certificate's staple must reach no target any more; targets learn of it as of a removal, and
     * can tell the two apart with oa_delivery_cert_gen. The first target (at start-up) has nothing to drop. */
    if (d->have_staple || d->gen > 0) {
        /* A new generation even when nothing is held any more: a target may still hold the old response (HAProxy
         * after an expiry). cert_gen is set before the targets are told, so that they read it as they plan. */
        oa_ocsp_result_clear(&d->staple);
        d->have_staple = false;
        d->cert_gen = d->gen + 1;
        publish(d);
    }
    return 0;
}

uint64_t oa_delivery_cert_gen(const oa_delivery_t *d)
{
    return d->cert_gen;
}

oa_delivery_staple_t oa_delivery_set_staple(oa_delivery_t *d, const oa_ocsp_result_t *res)
{
    oa_ocsp_result_t copy;
    oa_delivery_staple_t rc = OA_DELIVERY_STAPLE_SET;

    if (d->closing)
        return OA_DELIVERY_STAPLE_SET;
    /* A response about another certificate would be stapled on the watched one's handshakes: a lie to clients. */
    if (res != NULL && d->certid != NULL && !staple_is_for(res, d->certid)) {
        OA_LOG(OA_LOG_ERROR, "staple_refused", OA_KV_STR("reason", "the response is not for the watched certificate"),
               OA_KV_STR("effect", "no target staples it"));
        res = NULL;
        rc = OA_DELIVERY_STAPLE_REFUSED;
    }
    if (res != NULL && d->have_staple && res->der_len == d->staple.der_len &&
        memcmp(res->der, d->staple.der, res->der_len) == 0)
        return OA_DELIVERY_STAPLE_SET;
    if (res == NULL && !d->have_staple && d->gen > 0)
        return rc;
    memset(&copy, 0, sizeof(copy));
    if (res != NULL && oa_ocsp_result_copy(&copy, res) != 0) {
        rc = OA_DELIVERY_STAPLE_NOMEM;
        res = NULL;
    }
    oa_ocsp_result_clear(&d->staple);
    d->staple = copy;
    d->have_staple = res != NULL;
    publish(d);
    return rc;
}

const oa_ocsp_result_t *oa_delivery_staple(const oa_delivery_t *d)
{
    return d->have_staple ? &d->staple : NULL;
}

uint64_t oa_delivery_generation(const oa_delivery_t *d)
{
    return d->gen;
}

void oa_delivery_set_retry_ms(oa_delivery_t *d, uint64_t retry_ms)
{
    d->retry_ms = retry_ms > 0 ? retry_ms : 1;
}

uint64_t oa_delivery_retry_ms(const oa_delivery_t *d)
{
    return d->retry_ms;
}

uv_loop_t *oa_delivery_loop(const oa_delivery_t *d)
{
    return d->loop;
}

const char *oa_delivery_node_id(const oa_delivery_t *d)
{
    return d->node_id;
}

const char *oa_delivery_staple_path(const oa_delivery_t *d)
{
    return d->staple_path;
}

/* ---- reports ---- */

void oa_dtarget_report(oa_dtarget_t *t, uint64_t gen, const char *error)
{
    oa_delivery_t *d = t->delivery;
    oa_dtarget_state_t before = t->state;
    bool reason_changed, routine;
    int status;
    char when[OA_RFC1123_LEN];

    if (error == NULL)
        t->count_ok++;
    else
        t->count_failed++;
    /* A try for a staple that has been replaced since says nothing about the current one. */
    if (gen != d->gen)
        return;
    if (error == NULL) {
        /* A routine refresh (the same status again, to a target that took the previous staple too) is a debug
         * line; a first delivery, one after a failure, a new status and a removal are what an operator looks for. */
        status = d->have_staple ? (int)d->staple.cert_status : -1;
        routine = before == OA_DTARGET_DELIVERED && status >= 0 && status == t->delivered_status;
        t->state = OA_DTARGET_DELIVERED;
        t->delivered_gen = gen;
        t->delivered_status = status;
        t->last_delivery = time(NULL);
        t->have_error = false;
        OA_LOG(routine ? OA_LOG_DEBUG : OA_LOG_INFO, "staple_delivered",
               OA_KV_STR("target", t->name),
                   OA_KV_STR("staple", d->have_staple ? oa_cert_status_name(d->staple.cert_status) : "removed"),
                   OA_KV_STR("this_update", d->have_staple ? oa_time_rfc1123(d->staple.this_update, when) : NULL));
        return;
    }
    reason_changed = !t->have_error || strcmp(t->last_error, error) != 0;
    t->state = OA_DTARGET_FAILED;
    t->have_error = true;
    snprintf(t->last_error, sizeof(t->last_error), "%s", error);
    if (before != OA_DTARGET_FAILED || reason_changed)
        OA_LOG(OA_LOG_WARN, "staple_delivery_failed", OA_KV_STR("target", t->name), OA_KV_STR("error", error),
               OA_KV_STR("staple", d->have_staple ? oa_cert_status_name(d->staple.cert_status) : "removed"));
}

/* ---- the snapshot for the status and the metrics ---- */

static bool holds_current(const oa_delivery_t *d, const oa_dtarget_t *t)
{
    return t->state == OA_DTARGET_DELIVERED && t->delivered_gen == d->gen;
}

/* What the status shows: a target that took the previous staple and has not yet reported on this one is pending. */
static oa_dtarget_state_t shown_state(const oa_delivery_t *d, const oa_dtarget_t *t)
{
    return t->state == OA_DTARGET_DELIVERED && !holds_current(d, t) ? OA_DTARGET_PENDING : t->state;
}

int oa_delivery_snapshot(const oa_delivery_t *d, oa_delivery_status_t *st)
{
    oa_delivery_target_status_t *ts;
    const oa_dtarget_t *t;

    st->targets = NULL;
    st->count = oa_delivery_target_count(d);
    if (st->count == 0)
        return 0;
    st->targets = calloc(st->count, sizeof(*st->targets));
    if (st->targets == NULL) {
        st->count = 0;
        return UV_ENOMEM;
    }
    for (t = d->targets, ts = st->targets; t != NULL; t = t->next, ts++) {
        ts->target = t->name;
        ts->state = shown_state(d, t);
        ts->last_delivery = t->last_delivery;
        ts->last_error = t->have_error ? t->last_error : NULL;
        ts->delivered = holds_current(d, t);
        ts->deliveries_ok = t->count_ok;
        ts->deliveries_failed = t->count_failed;
    }
    return 0;
}

void oa_delivery_status_free(oa_delivery_status_t *st)
{
    free(st->targets);
    st->targets = NULL;
    st->count = 0;
}

size_t oa_delivery_target_count(const oa_delivery_t *d)
{
    const oa_dtarget_t *t;
    size_t n = 0;

    for (t = d->targets; t != NULL; t = t->next)
        n++;
    return n;
}

bool oa_delivery_all_delivered(const oa_delivery_t *d)
{
    const oa_dtarget_t *t;

    for (t = d->targets; t != NULL; t = t->next)
        if (!holds_current(d, t))
            return false;
    return true;
}

/* ---- HAProxy's rules ---- */

int oa_haproxy_staple_check(const oa_ocsp_result_t *res, time_t now, char *why, size_t why_len)
{
    const unsigned char *p = res->der;
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *basic = NULL;
    int count, rc = -1;

    resp = d2i_OCSP_RESPONSE(NULL, &p, (long)res->der_len);
    if (resp != NULL)
        basic = OCSP_response_get1_basic(resp);
    if (basic == NULL) {
        snprintf(why, why_len, "HAProxy will not staple this response: it is not a basic OCSP response");
        goto out;
    }
    count = OCSP_resp_count(basic);
    if (count != 1) {
        snprintf(why, why_len, "HAProxy will not staple this response: it holds %d single responses, HAProxy "
                 "takes exactly one", count);
        goto out;
    }
    if (res->next_update == 0) {
        snprintf(why, why_len, "HAProxy will not staple this response: it has no nextUpdate");
        goto out;
    }
    if (res->next_update - now <= OA_HAPROXY_STAPLE_MARGIN_SECONDS) {
        snprintf(why, why_len, "HAProxy will not staple this response: %lld s left before its nextUpdate, HAProxy "
                 "stops stapling %d s before it", (long long)(res->next_update - now),
                 OA_HAPROXY_STAPLE_MARGIN_SECONDS);
        goto out;
    }
    rc = 0;
out:
    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
    return rc;
}

/* ---- teardown ---- */

static void finish(oa_delivery_t *d)
{
    oa_dtarget_t *t, *next;

    if (d->pending_closes > 0)
        return;
    for (t = d->targets; t != NULL; t = next) {
        char *name = t->name;

        next = t->next;
        t->ops->free(t);
        free(name);
    }
    oa_ocsp_result_clear(&d->staple);
    OCSP_CERTID_free(d->certid);
    free(d->node_id);
    free(d->staple_path);
    if (d->done != NULL)
        d->done(d->done_arg);
    free(d);
}

void oa_dtarget_closed(oa_dtarget_t *t)
{
    oa_delivery_t *d = t->delivery;

    d->pending_closes--;
    finish(d);
}

void oa_delivery_close(oa_delivery_t *d, void (*done)(void *arg), void *arg)
{
    oa_dtarget_t *t;

    if (d->closing)
        return;
    d->closing = true;
    d->done = done;
    d->done_arg = arg;
    /* One extra count so that a target closing synchronously cannot finish the delivery mid-loop. */
    d->pending_closes = 1;
    for (t = d->targets; t != NULL; t = t->next)
        d->pending_closes++;
    for (t = d->targets; t != NULL; t = t->next) {
        t->closing = true;
        t->ops->close(t);
    }
    d->pending_closes--;
    finish(d);
}
