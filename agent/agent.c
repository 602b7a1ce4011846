/*
 * The daemon's start-up, configuration changes and orderly stop.
 */
#include <dirent.h>
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "oa_agent.h"
#include "oa_api.h"
#include "oa_cert_reload.h"
#include "oa_cluster.h"
#include "oa_delivery.h"
#include "oa_log.h"
#include "oa_reload.h"
#include "oa_tls.h"

static int ensure_data_dir(const char *dir, oa_error_t *err)
{
    struct stat st;

    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return oa_error_set(err, OA_E_BAD_OPTION, "--data-dir: %s is not a directory", dir);
        return 0;
    }
    if (errno != ENOENT || mkdir(dir, 0700) != 0)
        return oa_error_set(err, OA_E_BAD_OPTION, "--data-dir: cannot use %s: %s", dir, strerror(errno));
    OA_LOG(OA_LOG_INFO, "data_dir_created", OA_KV_STR("path", dir));
    return 0;
}

/* A configuration file that cannot be read back is kept aside for the operator, never silently overwritten. */
static void load_conf(oa_agent_t *a)
{
    oa_error_t err;
    char *aside;
    bool found;

    oa_error_clear(&err);
    oa_conf_defaults(&a->conf);
    if (oa_conf_load(a->conf_path, &a->conf, &found, &err) == 0 && found) {
        OA_LOG(OA_LOG_INFO, "config_loaded", OA_KV_STR("path", a->conf_path));
        return;
    }
    if (!found && err.code == OA_OK) {
        OA_LOG(OA_LOG_INFO, "config_default", OA_KV_STR("path", a->conf_path),
               OA_KV_STR("reason", "no persisted configuration; using the defaults"));
        return;
    }
    aside = malloc(strlen(a->conf_path) + sizeof(".corrupt"));
    if (aside != NULL) {
        sprintf(aside, "%s.corrupt", a->conf_path);
        if (rename(a->conf_path, aside) != 0) {
            free(aside);
            aside = NULL;
        }
    }
    OA_LOG(OA_LOG_ERROR, "config_corrupt", OA_KV_STR("path", a->conf_path), OA_KV_STR("reason", err.text),
           OA_KV_STR("moved_to", aside), OA_KV_STR("using", "defaults"));
    free(aside);
}

static void apply_delivery_retry(oa_agent_t *a);

/* ---- cluster mode: the hooks between the store and the daemon ---- */

/* A configuration from the cluster is in force here whether or not the local cache could be written: the store,
 * not the file, is where it lives. */
static void on_cluster_conf(void *data, const oa_conf_t *conf, unsigned changed, const char *user, const char *from)
{
    oa_agent_t *a = data;
    oa_error_t err;
    char keys[160];

    if (changed == 0)
        return;
    if (oa_agent_conf_update(a, conf, changed, user != NULL ? user : "cluster", &err) == 0) {
        if (user == NULL)
            OA_LOG(OA_LOG_INFO, "cluster_conf_received", OA_KV_STR("from", from));
        return;
    }
    a->conf = *conf;
    oa_api_conf_changed(a->api);
    oa_conf_changed_names(changed, keys, sizeof(keys));
    OA_LOG(OA_LOG_WARN, "config_changed", OA_KV_STR("user", user != NULL ? user : "cluster"), OA_KV_STR("keys", keys),
           OA_KV_STR("note", "in force, but the local cache could not be written"));
    oa_sched_apply_conf(a->sched, &a->conf);
    apply_delivery_retry(a);
}

static void on_cluster_status(void *data, const unsigned char *der, size_t len, int64_t at_ms, const char *from)
{
    oa_agent_t *a = data;
    oa_error_t err;
    oa_sched_remote_t rc;

    if (a->sched == NULL)
        return;
    rc = oa_sched_apply_remote(a->sched, der, len, at_ms, &err);
    if (rc == OA_SCHED_REMOTE_APPLIED)
        OA_LOG(OA_LOG_INFO, "cluster_status_applied", OA_KV_STR("from", from),
               OA_KV_STR("state", oa_sched_state_name(oa_sched_state(a->sched))));
    else if (rc == OA_SCHED_REMOTE_REFUSED)
        OA_LOG(OA_LOG_WARN, "cluster_status_rejected", OA_KV_STR("from", from),
               OA_KV_STR("error_code", oa_errcode_name(err.code)), OA_KV_STR("reason", err.text));
}

/* The poller's view of the schedule: every node shows it, and an invalidation removes this node's staple too. */
static void on_cluster_state(void *data, const oa_sched_view_t *v, const char *from)
{
    oa_agent_t *a = data;
    oa_sched_state_t before;
    oa_error_t err;

    if (a->sched == NULL)
        return;
    before = oa_sched_state(a->sched);
    if (oa_sched_apply_remote_state(a->sched, v, &err) != 0) {
        OA_LOG(OA_LOG_WARN, "cluster_state_rejected", OA_KV_STR("from", from),
               OA_KV_STR("error_code", oa_errcode_name(err.code)), OA_KV_STR("reason", err.text));
        return;
    }
    if (v->state == OA_STATE_INVALIDATED && before != OA_STATE_INVALIDATED)
        OA_LOG(OA_LOG_ERROR, "cluster_status_invalidated", OA_KV_STR("from", from),
               OA_KV_STR("error_code", v->last_error_code), OA_KV_STR("error", v->last_error),
               OA_KV_STR("effect", "the cached response is dropped and the staple file removed"));
    else
        OA_LOG(before != oa_sched_state(a->sched) ? OA_LOG_INFO : OA_LOG_DEBUG, "cluster_state_applied",
               OA_KV_STR("from", from), OA_KV_STR("state", oa_sched_state_name(oa_sched_state(a->sched))),
               OA_KV_INT("consecutive_failures", v->consecutive_failures));
}

static void on_cluster_role(void *data, bool poller)
{
    oa_agent_t *a = data;

    if (a->sched != NULL)
        oa_sched_set_follower(a->sched, !poller);
}

static void on_sched_result(void *data, const oa_ocsp_result_t *res)
{
    oa_agent_t *a = data;

    if (a->cluster != NULL)
        oa_cluster_publish_result(a->cluster, res);
}

/* Only the poller speaks for the cluster: a follower's own expiry or a query that was in flight when it lost the
 * lease is its own business. */
static void on_sched_state(void *data, const oa_sched_view_t *v)
{
    oa_agent_t *a = data;

    if (a->cluster != NULL && oa_cluster_is_poller(a->cluster))
        oa_cluster_publish_state(a->cluster, v);
}

/* The TLS context for the store, made at start-up (so that a bad file stops it) and by a reload. It names no host:
 * each connection sets the name the store's certificate must carry (the URL's host for Redis, the member's host as
 * listed for etcd), so one context serves every member of an etcd cluster. The one error line names the option
 * whose file is at fault: the CA file, else the certificate when it could not be loaded, else the key; *file (when
 * not NULL) is set to that file, or NULL when no file is to blame (--cluster-tls alone). */
static int cluster_tls_ctx(const oa_options_t *o, SSL_CTX **out, const char **file, oa_error_t *err)
{
    SSL_CTX *ctx = NULL;
    const char *opt, *at_fault;
    oa_error_t e;

    *out = NULL;
    if (oa_tls_client_ctx_new(o->cluster_ca, NULL, NULL, &ctx, &e) != 0) {
        opt = o->cluster_ca != NULL ? "--cluster-ca" : "--cluster-tls";
        at_fault = o->cluster_ca;
        goto fail;
    }
    if (o->cluster_cert != NULL && oa_tls_ctx_load_identity(ctx, o->cluster_cert, o->cluster_key, &e) != 0) {
        if (SSL_CTX_get0_certificate(ctx) == NULL) {
            opt = "--cluster-cert";
            at_fault = o->cluster_cert;
        } else {
            opt = "--cluster-key";
            at_fault = o->cluster_key;
        }
        goto fail;
    }
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    if (file != NULL)
        *file = at_fault;
    return oa_error_set(err, e.code, "%s: %s", opt, e.text);
}

/* SHA-256 over the bytes of the store's CA, certificate and key files, in that order (a file that cannot be read
 * counts as empty: making the context then fails and says why). */
static void cluster_tls_digest(const oa_options_t *o, unsigned char digest[32])
{
    const char *files[] = {o->cluster_ca, o->cluster_cert, o->cluster_key};
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    oa_buf_t buf;
    size_t i;

    memset(digest, 0, 32);
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        oa_buf_init(&buf);
        if (files[i] != NULL && oa_file_read(files[i], 1 << 20, &buf) == 0)
            EVP_DigestUpdate(md, buf.data, buf.len);
        EVP_DigestUpdate(md, "\0", 1); /* so that moving bytes from one file to the next is a change */
        oa_buf_free(&buf);
    }
    EVP_DigestFinal_ex(md, digest, NULL);
out:
    EVP_MD_CTX_free(md);
    ERR_clear_error();
}

/*
 * The store's CA, client certificate and key (--cluster-ca, --cluster-cert, --cluster-key). The new context serves
 * the next connection to the store (a reconnection after an outage, or the store restarting); the connection up now
 * keeps its session, like the API's open connections after a "tls" reload.
 */
static int reload_cluster_tls(void *data, oa_reload_result_t *res, oa_error_t *err)
{
    oa_agent_t *a = data;
    const oa_options_t *o = a->opts;
    unsigned char digest[32];
    SSL_CTX *ctx = NULL;
    const char *at_fault;

    res->file = o->cluster_ca != NULL ? o->cluster_ca : o->cluster_cert;
    cluster_tls_digest(o, digest);
    if (memcmp(digest, a->cluster_tls_digest, sizeof(digest)) == 0)
        return 0;
    if (cluster_tls_ctx(o, &ctx, &at_fault, err) != 0) {
        if (at_fault != NULL)
            res->file = at_fault;
        return -1;
    }
    if (oa_cluster_set_tls(a->cluster, ctx) != 0) {
        SSL_CTX_free(ctx);
        return oa_error_set(err, OA_E_INTERNAL, "the cluster refused the new TLS context");
    }
    SSL_CTX_free(a->cluster_tls);
    a->cluster_tls = ctx;
    memcpy(a->cluster_tls_digest, digest, sizeof(digest));
    res->changed = true;
    oa_reload_note_str(res, "applies_to", "the next connection to the store");
    return 0;
}

static int start_cluster(oa_agent_t *a, oa_error_t *err)
{
    const oa_options_t *o = a->opts;
    oa_cluster_options_t co;
    char api[128], certid[OA_OCSP_CERTID_HEX_LEN + 1];

    snprintf(api, sizeof(api), "%s://%s", a->tls != NULL ? "https" : "http", o->listen);
    memset(&co, 0, sizeof(co));
    co.url = o->cluster_url;
    co.user = o->cluster_user;
    co.password = o->cluster_password;
    co.tls = a->cluster_tls; /* the cluster takes its own reference */
    co.node_id = o->node_id;
    if (a->target != NULL && oa_ocsp_target_certid_hex(a->target, certid) != 0)
        return oa_error_set(err, OA_E_BAD_FILE, "%s: the certificate's CertID could not be computed", o->cert);
    co.certid = a->target != NULL ? certid : NULL;
    co.api_address = api;
    co.capabilities = o->capabilities;
    co.data_dir = o->data_dir;
    /* One knob: a node's registry entry lives as long as the lease, and both are renewed three times per term. */
    if (o->cluster_lease_ms > 0) {
        co.lease_ms = (unsigned)o->cluster_lease_ms;
        co.node_ttl_ms = (unsigned)o->cluster_lease_ms;
        co.heartbeat_ms = (unsigned)o->cluster_lease_ms / 3;
    }
    co.hooks.conf = on_cluster_conf;
    co.hooks.status = on_cluster_status;
    co.hooks.state = on_cluster_state;
    co.hooks.role = on_cluster_role;
    co.hooks.data = a;
    /* Every node starts as a follower; the lease decides who queries. */
    oa_sched_set_follower(a->sched, true);
    oa_sched_set_result_hook(a->sched, on_sched_result, a);
    oa_sched_set_state_hook(a->sched, on_sched_state, a);
    return oa_cluster_new(a->loop, &co, &a->conf, &a->cluster, err);
}

/* ---- staple delivery ---- */

static void on_sched_staple(void *data, const oa_ocsp_result_t *res)
{
    oa_agent_t *a = data;

    /* A refused staple was logged by the delivery itself. */
    if (oa_delivery_set_staple(a->delivery, res) == OA_DELIVERY_STAPLE_NOMEM)
        OA_LOG(OA_LOG_ERROR, "staple_delivery_failed", OA_KV_STR("target", "*"),
               OA_KV_STR("error", "out of memory while copying the staple; it counts as removed"));
}

/* A failed delivery is retried at the engine's own recovery pace. */
static void apply_delivery_retry(oa_agent_t *a)
{
    double ms = (double)a->conf.recovery_frequency * 1000.0 * a->opts->time_scale;

    oa_delivery_set_retry_ms(a->delivery, ms < 1.0 ? 1 : (uint64_t)ms);
}

/* The delivery and its targets, from the options; a target that cannot be set up stops start-up. */
static int start_delivery(oa_agent_t *a, oa_error_t *err)
{
    const oa_options_t *o = a->opts;
    oa_delivery_options_t dopts;
    char *staple_path;
    int i, rc;

    staple_path = oa_path_join(o->data_dir, OA_STAPLE_FILE_NAME);
    if (staple_path == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    dopts.node_id = o->node_id;
    dopts.staple_path = staple_path;
    rc = oa_delivery_new(a->loop, &dopts, &a->delivery);
    free(staple_path);
    if (rc != 0)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    for (i = 0; i < o->n_haproxy_sockets; i++)
        if (oa_delivery_add_haproxy_socket(a->delivery, o->haproxy_sockets[i], err) != 0)
            return -1;
    if (o->haproxy_crt != NULL && oa_delivery_add_haproxy_crt(a->delivery, o->haproxy_crt, err) != 0)
        return -1;
    if (o->staple_hook != NULL && oa_delivery_add_hook(a->delivery, o->staple_hook, err) != 0)
        return -1;
    /* The API staples only the certificate it serves: another certificate's status would be a lie to its clients. */
    if (oa_delivery_set_target(a->delivery, a->target) != 0)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    if (a->tls != NULL && a->target != NULL && oa_tls_ctx_serves(a->tls, a->target->cert) &&
        oa_delivery_add_api(a->delivery, a->tls, err) != 0)
        return -1;
    apply_delivery_retry(a);
    return 0;
}

/* ---- live reload (SIGHUP) ---- */

static int reload_users(void *data, oa_reload_result_t *res, oa_error_t *err)
{
    oa_agent_t *a = data;
    oa_auth_reload_stats_t st;

    res->file = a->opts->users_file;
    if (oa_auth_reload(a->auth, a->opts->users_file, &st, err) != 0)
        return -1;
    res->changed = st.added != 0 || st.removed != 0 || st.changed != 0;
    oa_reload_note_int(res, "users", st.users);
    oa_reload_note_int(res, "added", st.added);
    oa_reload_note_int(res, "removed", st.removed);
    oa_reload_note_int(res, "changed", st.changed);
    return 0;
}

/* true when both contexts serve the same leaf, chain and key: the files were rewritten with what is in force. */
static bool tls_same_identity(SSL_CTX *x, SSL_CTX *y)
{
    X509 *cx = SSL_CTX_get0_certificate(x), *cy = SSL_CTX_get0_certificate(y);
    EVP_PKEY *kx = SSL_CTX_get0_privatekey(x), *ky = SSL_CTX_get0_privatekey(y);
    STACK_OF(X509) *chx = NULL, *chy = NULL;
    int i, n;

    if (cx == NULL || cy == NULL || X509_cmp(cx, cy) != 0 || kx == NULL || ky == NULL || EVP_PKEY_eq(kx, ky) != 1)
        return false;
    SSL_CTX_get0_chain_certs(x, &chx);
    SSL_CTX_get0_chain_certs(y, &chy);
    n = chx != NULL ? sk_X509_num(chx) : 0;
    if (n != (chy != NULL ? sk_X509_num(chy) : 0))
        return false;
    for (i = 0; i < n; i++)
        if (X509_cmp(sk_X509_value(chx, i), sk_X509_value(chy, i)) != 0)
            return false;
    return true;
}

/* Which of --tls-cert and --tls-key a refused pair is blamed on: the certificate file when it does not even start
 * with a PEM certificate, else the key file (unreadable, not a key, or not the certificate's key). The reason
 * itself is the context loader's sentence, which names the files. */
static const char *tls_file_at_fault(const oa_options_t *o)
{
    BIO *bio = BIO_new_file(o->tls_cert, "r");
    X509 *x = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    const char *file = x != NULL ? o->tls_key : o->tls_cert;

    X509_free(x);
    BIO_free(bio);
    ERR_clear_error();
    return file;
}

/* subject, serial and notAfter of the certificate a reloaded context serves, for the `reloaded` line. */
static void note_certificate(oa_reload_result_t *res, X509 *cert)
{
    char when[OA_RFC1123_LEN], *hex = NULL, *p;
    BIGNUM *bn;
    BIO *bio;
    struct tm tm;
    long n;

    bio = BIO_new(BIO_s_mem());
    if (bio != NULL && X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0 &&
        (n = BIO_get_mem_data(bio, &p)) >= 0) {
        char subject[256];

        snprintf(subject, sizeof(subject), "%.*s", (int)n, p);
        oa_reload_note_str(res, "subject", subject);
    }
    BIO_free(bio);
    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    if (bn != NULL)
        hex = BN_bn2hex(bn);
    oa_reload_note_str(res, "serial", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
        oa_reload_note_str(res, "not_after", oa_time_rfc1123(timegm(&tm), when));
    ERR_clear_error();
}

/*
 * The API's certificate and key. The new context staples exactly when the start-up one would have: when it serves
 * the watched certificate. When it no longer does, the "api" delivery target goes, rather than showing a target
 * that staples nothing (the old context keeps the callback for the connections it still serves, which is harmless:
 * they have finished their handshake). The later --cert reload calls api_staple_follow after a certificate change.
 */
static int reload_tls(void *data, oa_reload_result_t *res, oa_error_t *err)
{
    oa_agent_t *a = data;
    const oa_options_t *o = a->opts;
    SSL_CTX *ctx = NULL;
    bool staples;
    int rc;

    res->file = o->tls_cert;
    if (oa_tls_server_ctx_new(o->tls_cert, o->tls_key, &ctx, err) != 0) {
        res->file = tls_file_at_fault(o);
        return -1;
    }
    if (tls_same_identity(a->tls, ctx)) {
        SSL_CTX_free(ctx);
        return 0;
    }
    /* The callback goes on before the first connection can use the context. */
    staples = a->target != NULL && oa_tls_ctx_serves(ctx, a->target->cert);
    if (staples && oa_delivery_add_api(a->delivery, ctx, err) != 0) {
        SSL_CTX_free(ctx);
        return -1;
    }
    rc = oa_http_server_set_tls(a->server, ctx);
    if (rc != 0) {
        SSL_CTX_free(ctx);
        return oa_error_set(err, OA_E_INTERNAL, "--tls-cert %s: the server refused the new context: %s", o->tls_cert,
                            uv_strerror(rc));
    }
    if (!staples)
        oa_delivery_remove_api(a->delivery);
    SSL_CTX_free(a->tls);
    a->tls = ctx;
    res->changed = true;
    note_certificate(res, SSL_CTX_get0_certificate(ctx));
    oa_reload_note_str(res, "staples", staples ? "yes" : "no");
    return 0;
}

/* The groups SIGHUP reloads, in this order. --no-auth has no users file, and plain HTTP no certificate. */
static int start_reload(oa_agent_t *a, oa_error_t *err)
{
    const oa_options_t *o = a->opts;

    if (oa_reload_new(&a->reload) != 0)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    if (!o->no_auth && oa_reload_add(a->reload, "users", reload_users, a) != 0)
        return oa_error_set(err, OA_E_INTERNAL, "too many reload groups");
    if (a->tls != NULL && oa_reload_add(a->reload, "tls", reload_tls, a) != 0)
        return oa_error_set(err, OA_E_INTERNAL, "too many reload groups");
    /* Only files can be read again: --cluster-tls alone trusts the system's CAs and presents no certificate. */
    if (a->cluster_tls != NULL && a->cluster != NULL && (o->cluster_ca != NULL || o->cluster_cert != NULL) &&
        oa_reload_add(a->reload, "cluster_tls", reload_cluster_tls, a) != 0)
        return oa_error_set(err, OA_E_INTERNAL, "too many reload groups");
    /* After "tls": a SIGHUP that replaces both with one certificate finds the API serving it when "cert" runs. */
    if (a->target != NULL && oa_cert_reload_start(a, err) != 0)
        return -1;
    return 0;
}

unsigned oa_agent_reload(oa_agent_t *a)
{
    if (a->closing || a->reload == NULL)
        return 0;
    return oa_reload_run(a->reload);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    oa_agent_t *a = h->data;

    (void)signum;
    if (a->closing)
        return;
    if (a->reload == NULL) {
        OA_LOG(OA_LOG_WARN, "reload_ignored", OA_KV_STR("signal", "SIGHUP"),
               OA_KV_STR("reason", "start-up has not finished"));
        return;
    }
    OA_LOG(OA_LOG_INFO, "reload_requested", OA_KV_STR("signal", "SIGHUP"));
    oa_agent_reload(a);
}

static void on_signal(uv_signal_t *h, int signum)
{
    oa_agent_t *a = h->data;

    OA_LOG(OA_LOG_INFO, "agent_stopping", OA_KV_STR("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT"));
    oa_agent_stop(a);
}

static void log_started(const oa_agent_t *a)
{
    const oa_options_t *o = a->opts;

    OA_LOG(OA_LOG_INFO, "agent_started", OA_KV_STR("version", OA_VERSION), OA_KV_STR("node_id", o->node_id),
           OA_KV_STR("listen", o->listen), OA_KV_INT("port", oa_http_server_port(a->server)),
           OA_KV_BOOL("tls", a->tls != NULL), OA_KV_BOOL("auth", !o->no_auth), OA_KV_STR("data_dir", o->data_dir),
           OA_KV_STR("cert_subject", a->target ? a->target->subject : NULL),
           OA_KV_STR("cert_serial", a->target ? a->target->serial_hex : NULL),
           OA_KV_STR("responder_url", a->responder_url), OA_KV_BOOL("ocsp_functionality", a->conf.ocsp_functionality),
           OA_KV_INT("query_frequency", a->conf.query_frequency),
           OA_KV_INT("response_timeout", a->conf.response_timeout),
           OA_KV_INT("recovery_frequency", a->conf.recovery_frequency),
           OA_KV_INT("recovery_max_tries", a->conf.recovery_max_tries), OA_KV_DBL("time_scale", o->time_scale));
    if (o->time_scale != 1.0)
        OA_LOG(OA_LOG_WARN, "time_scale_active", OA_KV_DBL("time_scale", o->time_scale),
               OA_KV_STR("note", "query and recovery frequencies are scaled; for tests and demos only"));
    if (o->no_auth)
        OA_LOG(OA_LOG_WARN, "auth_disabled", OA_KV_STR("listen", o->listen));
}

/* ---- what the API asks of the agent (oa_api_backend_t) ---- */

static void api_conf_get(void *data, const oa_conf_t **conf, const char **responder_url)
{
    oa_agent_t *a = data;

    *conf = &a->conf;
    *responder_url = a->responder_url;
}

/* Validated here, once, so that a bad body is a 400 and a body that changes nothing in force a 200 even while the
 * cluster's store is out of reach; a change in cluster mode goes to the store as the validated patch, which the
 * cluster applies to the store's latest configuration and puts in force here through on_cluster_conf. */
static oa_api_put_t api_conf_put(void *data, const char *body, size_t len, const char *user, oa_api_done_cb done,
                                 void *arg, oa_error_t *err)
{
    oa_agent_t *a = data;
    oa_conf_patch_t patch;
    unsigned changed;
    oa_cluster_put_t put;
    oa_conf_t next;

    oa_error_clear(err);
    if (oa_conf_patch_parse(a->responder_url, body, len, &patch, err) != 0)
        return OA_API_PUT_REFUSED;
    changed = oa_conf_patch_apply(&patch, &a->conf, &next);
    if (a->cluster != NULL && changed != 0) {
        put = oa_cluster_conf_put(a->cluster, &patch, user, done, arg, err);
        if (put == OA_CLUSTER_PUT_STARTED)
            return OA_API_PUT_PENDING;
        if (put == OA_CLUSTER_PUT_UNCHANGED) {
            oa_error_clear(err);
            return OA_API_PUT_DONE;
        }
        return OA_API_PUT_REFUSED;
    }
    return oa_agent_conf_update(a, &next, changed, user, err) == 0 ? OA_API_PUT_DONE : OA_API_PUT_REFUSED;
}

static int api_status(void *data, oa_api_status_t *out)
{
    oa_agent_t *a = data;

    oa_sched_snapshot(a->sched, &out->sched);
    return oa_delivery_snapshot(a->delivery, &out->delivery);
}

static int api_test(void *data, oa_api_test_cb cb, void *arg, oa_error_t *err)
{
    oa_agent_t *a = data;

    return oa_sched_test(a->sched, cb, arg, err);
}

static int api_capability_check(void *data, oa_error_t *err)
{
    return oa_agent_capability_check(data, err);
}

static int api_metrics(void *data, oa_buf_t *out)
{
    oa_agent_t *a = data;
    int rc = 0;

    /* The engine's families come first, rendered by the API from the status snapshots. */
    if (a->reload != NULL)
        rc = oa_reload_metrics(a->reload, out);
    if (rc == 0 && a->cluster != NULL)
        rc = oa_cluster_metrics(a->cluster, out);
    return rc;
}

int oa_agent_start(oa_agent_t *a, uv_loop_t *loop, const oa_options_t *opts, oa_error_t *err)
{
    oa_sched_options_t so;
    oa_http_limits_t limits;
    int rc;

    const oa_api_backend_t api_backend = {a,          api_conf_get,          api_conf_put, api_status,
                                          api_test,   api_capability_check, api_metrics};

    memset(a, 0, sizeof(*a));
    a->loop = loop;
    a->opts = opts;
    a->responder_url = "";
    oa_conf_defaults(&a->conf);

    /* Signals first: once the port is open, SIGTERM must mean an orderly stop, even during the rest of start-up
     * (the handlers run when the loop does). */
    uv_signal_init(loop, &a->sigterm);
    uv_signal_init(loop, &a->sigint);
    uv_signal_init(loop, &a->sighup);
    a->sigterm.data = a;
    a->sigint.data = a;
    a->sighup.data = a;
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    /* SIGHUP's default action would end the process: `systemctl reload` must not take the agent down. */
    uv_signal_start(&a->sighup, on_sighup, SIGHUP);

    if (opts->responder_url != NULL && opts->cert == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--responder-url: needs --cert, the certificate to ask about");
    rc = opts->no_auth ? oa_auth_new_open(loop, &a->auth) : oa_auth_new_from_file(loop, opts->users_file, &a->auth, err);
    if (rc != 0) {
        if (opts->no_auth)
            oa_error_set(err, OA_E_NOMEM, "out of memory");
        return -1;
    }
    if (opts->cert != NULL) {
        if (oa_ocsp_target_load(opts->cert, opts->issuer, opts->responder_url, &a->target, err) != 0)
            return -1;
        if (a->target->responder_url != NULL)
            a->responder_url = a->target->responder_url;
        else
            OA_LOG(OA_LOG_WARN, "no_responder_url", OA_KV_STR("cert", opts->cert),
                   OA_KV_STR("reason", "the certificate has no OCSP URI in its AIA and --responder-url is not set"));
    }
    if (opts->tls_cert != NULL && oa_tls_server_ctx_new(opts->tls_cert, opts->tls_key, &a->tls, err) != 0)
        return -1;
    if (opts->cluster_tls)
        cluster_tls_digest(opts, a->cluster_tls_digest);
    if (opts->cluster_tls && cluster_tls_ctx(opts, &a->cluster_tls, NULL, err) != 0)
        return -1;
    /* Bind before anything is logged or created, so a taken port is one line too. Requests wait for the loop, which
     * runs only once start-up is complete. */
    oa_http_limits_default(&limits);
    limits.max_connections = (unsigned)opts->max_connections;
    if (oa_api_new(a->auth, &api_backend, &a->api) != 0)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    if (oa_http_server_start(loop, opts->listen_host, opts->listen_port, &limits, a->tls, oa_api_handle, a->api,
                             &a->server, err) != 0)
        return -1;
    oa_api_set_server(a->api, a->server);

    /* The data dir comes after every file was checked, so a bad file stops start-up before anything is created. */
    if (ensure_data_dir(opts->data_dir, err) != 0)
        return -1;
    a->conf_path = oa_path_join(opts->data_dir, OA_CONF_FILE_NAME);
    if (a->conf_path == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    {
        /* A process killed in the middle of an atomic write leaves its temp file; nothing else would remove it. */
        static const char *const data_files[] = {OA_CONF_FILE_NAME, OA_STAPLE_FILE_NAME, OA_CLUSTER_FILE_NAME};

        oa_file_remove_stale_temps(opts->data_dir, data_files, OA_ARRAY_SIZE(data_files));
    }

    load_conf(a);
    if (a->conf.ocsp_functionality && a->responder_url[0] == '\0') {
        OA_LOG(OA_LOG_WARN, "ocsp_not_started",
               OA_KV_STR("reason", "the persisted configuration enables OCSP but there is no responder URL"));
        a->conf.ocsp_functionality = false;
    }
    oa_api_conf_changed(a->api);

    so.target = a->target;
    so.data_dir = opts->data_dir;
    so.time_scale = opts->time_scale;
    so.querier = NULL;
    so.clock = NULL;
    rc = oa_sched_new(loop, &so, &a->sched);
    if (rc != 0)
        return oa_error_set(err, OA_E_IO, "the scheduler could not start: %s", uv_strerror(rc));
    if (start_delivery(a, err) != 0)
        return -1;
    /* Hands over a staple reloaded from the data dir at once, so targets are fed from the first second. */
    oa_sched_set_staple_hook(a->sched, on_sched_staple, a);
    if (opts->cluster_url != NULL && start_cluster(a, err) != 0)
        return -1;
    if (start_reload(a, err) != 0)
        return -1;

    log_started(a);
    oa_sched_apply_conf(a->sched, &a->conf);
    return 0;
}

static void on_part_closed(void *arg)
{
    oa_agent_t *a = arg;

    a->pending_closes--;
}

static void on_signal_closed(uv_handle_t *h)
{
    (void)h;
}

void oa_agent_stop(oa_agent_t *a)
{
    if (a->closing)
        return;
    a->closing = 1;
    if (a->api != NULL)
        oa_api_shutdown(a->api);
    /* The scheduler goes first so that tests waiting on it are answered while the server can still reply. */
    if (a->sched != NULL) {
        a->pending_closes++;
        oa_sched_close(a->sched, on_part_closed, a);
        a->sched = NULL;
    }
    /* The delivery after it, so that no staple change arrives once it is closing; a running hook is killed. */
    if (a->delivery != NULL) {
        a->pending_closes++;
        oa_delivery_close(a->delivery, on_part_closed, a);
        a->delivery = NULL;
    }
    if (a->cert_reload != NULL) {
        a->pending_closes++;
        oa_cert_reload_close(a->cert_reload, on_part_closed, a);
        a->cert_reload = NULL;
    }
    /* Then the cluster, which answers PUTs still waiting for the store. */
    if (a->cluster != NULL) {
        a->pending_closes++;
        oa_cluster_close(a->cluster, on_part_closed, a);
        a->cluster = NULL;
    }
    if (a->server != NULL) {
        a->pending_closes++;
        oa_http_server_stop(a->server, on_part_closed, a);
        a->server = NULL;
    }
    if (a->sigterm.loop != NULL && !uv_is_closing((uv_handle_t *)&a->sigterm)) {
        uv_close((uv_handle_t *)&a->sigterm, on_signal_closed);
        uv_close((uv_handle_t *)&a->sigint, on_signal_closed);
        uv_close((uv_handle_t *)&a->sighup, on_signal_closed);
    }
}

void oa_agent_free(oa_agent_t *a)
{
    if (a->auth != NULL)
        oa_auth_free(a->auth);
    if (a->target != NULL)
        oa_ocsp_target_free(a->target);
    SSL_CTX_free(a->tls);
    SSL_CTX_free(a->cluster_tls);
    free(a->conf_path);
    oa_reload_free(a->reload);
    oa_api_free(a->api);
    memset(a, 0, sizeof(*a));
}

int oa_agent_conf_update(oa_agent_t *a, const oa_conf_t *next, unsigned changed, const char *user, oa_error_t *err)
{
    char keys[160];
    int rc;

    if (changed == 0) {
        OA_LOG(OA_LOG_DEBUG, "config_unchanged", OA_KV_STR("user", user));
        return 0;
    }
    rc = oa_conf_save(a->conf_path, next);
    if (rc != 0) {
        OA_LOG(OA_LOG_ERROR, "config_persist_failed", OA_KV_STR("user", user), OA_KV_STR("path", a->conf_path),
               OA_KV_STR("reason", uv_strerror(rc)));
        return oa_error_set(err, OA_E_PERSIST, "The configuration could not be saved (%s); nothing was changed.",
                            uv_strerror(rc));
    }
    a->conf = *next;
    oa_api_conf_changed(a->api);
    oa_conf_changed_names(changed, keys, sizeof(keys));
    OA_LOG(OA_LOG_INFO, "config_changed", OA_KV_STR("user", user), OA_KV_STR("keys", keys),
           OA_KV_BOOL("ocsp_functionality", next->ocsp_functionality),
           OA_KV_INT("query_frequency", next->query_frequency), OA_KV_INT("response_timeout", next->response_timeout),
           OA_KV_INT("recovery_frequency", next->recovery_frequency),
           OA_KV_INT("recovery_max_tries", next->recovery_max_tries));
    oa_sched_apply_conf(a->sched, &a->conf);
    apply_delivery_retry(a);
    return 0;
}

int oa_agent_capability_check(oa_agent_t *a, oa_error_t *err)
{
    /* A single node supports what it runs; a cluster answers from the view its heartbeat keeps. */
    if (a->cluster == NULL)
        return 0;
    return oa_cluster_capability_check(a->cluster, err);
}
