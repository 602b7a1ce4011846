/*
 * The watched certificate replaced while the agent runs: the "cert" reload group and the watch on its files.
 */
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "oa_api.h"
#include "oa_cert_reload.h"
#include "oa_cluster.h"
#include "oa_delivery.h"
#include "oa_log.h"
#include "oa_reload.h"
#include "oa_tls.h"

#define DEBOUNCE_MS 500u  /* the files must keep one content this long before it is read */
#define POLL_MS     2000u /* the backstop: a replacement is noticed within POLL_MS + DEBOUNCE_MS */
#define FILE_MAX    (1024 * 1024)
#define DIGEST_LEN  32
#define WATCH_MAX   4 /* the directory of each file, and the directory each resolves to */

typedef struct watch_s {
    uv_fs_event_t ev;
    char *dir; /* the directory watched, NULL while the slot is idle */
} watch_t;

struct oa_cert_reload_s {
    oa_agent_t *a;
    unsigned char in_force[DIGEST_LEN]; /* the content of the files whose certificate is in force */
    unsigned char seen[DIGEST_LEN];     /* the last content tried, in force or refused */
    unsigned char pending[DIGEST_LEN];  /* the content waiting for its quiet period */
    bool debouncing;
    uv_timer_t debounce;
    uv_timer_t poll;
    watch_t watches[WATCH_MAX];
    int pending_closes;
    void (*done)(void *arg);
    void *done_arg;
};

/* ---- the files' content ---- */

static void digest_file(EVP_MD_CTX *md, const char *path)
{
    oa_buf_t buf;
    int rc;

    oa_buf_init(&buf);
    rc = oa_file_read(path, FILE_MAX, &buf);
    /* An unreadable file has a content too (its error), so that it is reported once, like a broken one. */
    EVP_DigestUpdate(md, &rc, sizeof(rc));
    if (rc == 0 && buf.len > 0)
        EVP_DigestUpdate(md, buf.data, buf.len);
    EVP_DigestUpdate(md, "\n--\n", 4);
    oa_buf_free(&buf);
}

/* SHA-256 over --cert and --issuer as they are now, read through any symlink. */
static void files_digest(const oa_options_t *o, unsigned char out[DIGEST_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int len = DIGEST_LEN;

    memset(out, 0, DIGEST_LEN);
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        ERR_clear_error();
        return;
    }
    digest_file(md, o->cert);
    if (o->issuer != NULL)
        digest_file(md, o->issuer);
    EVP_DigestFinal_ex(md, out, &len);
    EVP_MD_CTX_free(md);
}

/* ---- the group ---- */

/* The loader's sentences start with the file at fault: the issuer file when it names it, else the certificate. */
static const char *file_at_fault(const oa_options_t *o, const oa_error_t *err)
{
    size_t n = o->issuer != NULL ? strlen(o->issuer) : 0;

    if (n > 0 && strncmp(err->text, o->issuer, n) == 0 && err->text[n] == ':')
        return o->issuer;
    return o->cert;
}

/* A certificate past its notAfter has nothing left to staple: a responder would at best say it is unknown. */
static int check_not_expired(const oa_ocsp_target_t *t, const char *path, oa_error_t *err)
{
    const ASN1_TIME *na = X509_get0_notAfter(t->cert);
    char when[OA_RFC1123_LEN] = "";
    struct tm tm;

    if (X509_cmp_time(na, NULL) > 0)
        return 0;
    if (ASN1_TIME_to_tm(na, &tm) == 1)
        oa_time_rfc1123(timegm(&tm), when);
    ERR_clear_error();
    return oa_error_set(err, OA_E_BAD_FILE, "%s: the certificate expired on %s", path, when);
}

static bool same_certid(const oa_ocsp_target_t *x, const oa_ocsp_target_t *y)
{
    OCSP_CERTID *ix = OCSP_cert_to_id(EVP_sha1(), x->cert, x->issuer);
    OCSP_CERTID *iy = OCSP_cert_to_id(EVP_sha1(), y->cert, y->issuer);
    bool same = ix != NULL && iy != NULL && OCSP_id_cmp(ix, iy) == 0;

    OCSP_CERTID_free(ix);
    OCSP_CERTID_free(iy);
    ERR_clear_error();
    return same;
}

/*
 * The API staples exactly when its certificate is the watched one. When it no longer is, its context loses the
 * status callback at once: the next handshake must not hand out the new certificate's response with the old
 * certificate.
 */
static void api_staple_follow(oa_agent_t *a)
{
    oa_error_t err;

    if (a->tls == NULL)
        return;
    if (oa_tls_ctx_serves(a->tls, a->target->cert)) {
        if (oa_delivery_add_api(a->delivery, a->tls, &err) != 0)
            OA_LOG(OA_LOG_ERROR, "api_staple_failed", OA_KV_STR("reason", err.text));
        return;
    }
    SSL_CTX_set_tlsext_status_cb(a->tls, NULL);
    oa_delivery_remove_api(a->delivery);
}

static void log_changed(const oa_agent_t *a, const oa_ocsp_target_t *old)
{
    const oa_ocsp_target_t *t = a->target;

    OA_LOG(OA_LOG_INFO, "certificate_changed", OA_KV_STR("cert", a->opts->cert),
           OA_KV_STR("old_subject", old->subject), OA_KV_STR("old_serial", old->serial_hex),
           OA_KV_STR("old_responder", old->responder_url != NULL ? old->responder_url : ""),
           OA_KV_STR("new_subject", t->subject), OA_KV_STR("new_serial", t->serial_hex),
           OA_KV_STR("new_responder", a->responder_url),
           OA_KV_STR("effect", "the old staple is removed; the new certificate is pending"));
    if (a->conf.ocsp_functionality && a->responder_url[0] == '\0')
        OA_LOG(OA_LOG_ERROR, "ocsp_query_failed", OA_KV_STR("error_code", oa_errcode_name(OA_E_NO_RESPONDER_URL)),
               OA_KV_STR("serial", t->serial_hex), OA_KV_STR("subject", t->subject),
               OA_KV_STR("reason", "the new certificate has no OCSP URI in its AIA and --responder-url is not set"),
               OA_KV_STR("effect", "nothing is queried and no staple is served until a certificate with one"));
}

/* Puts t in force everywhere; the delivery first, so that its targets learn of a change of certificate rather
 * than of an ordinary removal when the scheduler drops its staple. Returns 0, or -1 with err filled (nothing
 * changed; t is still the caller's). */
static int put_in_force(oa_agent_t *a, oa_ocsp_target_t *t, oa_error_t *err)
{
    oa_ocsp_target_t *old = a->target;

    char certid[OA_OCSP_CERTID_HEX_LEN + 1], old_certid[OA_OCSP_CERTID_HEX_LEN + 1];

    /* In a cluster the node follows the new CertID's records and lease before its scheduler learns of the new
     * target: it starts as a follower, and queries only once it holds that CertID's lease. */
    if (a->cluster != NULL &&
        (oa_ocsp_target_certid_hex(old, old_certid) != 0 || oa_ocsp_target_certid_hex(t, certid) != 0 ||
         oa_cluster_set_certid(a->cluster, certid) != 0))
        return oa_error_set(err, OA_E_NOMEM, "%s: the cluster could not follow the new certificate", a->opts->cert);
    if (oa_delivery_set_target(a->delivery, t) != 0) {
        /* The old certificate stays in force: so does its CertID in the cluster. */
        if (a->cluster != NULL)
            oa_cluster_set_certid(a->cluster, old_certid);
        return oa_error_set(err, OA_E_NOMEM, "%s: out of memory while changing the certificate", a->opts->cert);
    }
    a->target = t;
    a->responder_url = t->responder_url != NULL ? t->responder_url : "";
    oa_sched_set_target(a->sched, t);
    api_staple_follow(a);
    oa_api_conf_changed(a->api);
    log_changed(a, old);
    /* The cancelled query and the scheduler no longer point at the old target. */
    oa_ocsp_target_free(old);
    return 0;
}

static int reload_cert(void *data, oa_reload_result_t *res, oa_error_t *err)
{
    oa_cert_reload_t *c = data;
    oa_agent_t *a = c->a;
    const oa_options_t *o = a->opts;
    unsigned char digest[DIGEST_LEN];
    oa_ocsp_target_t *t = NULL;

    res->file = o->cert;
    files_digest(o, digest);
    memcpy(c->seen, digest, DIGEST_LEN);
    if (memcmp(digest, c->in_force, DIGEST_LEN) == 0)
        return 0;
    if (oa_ocsp_target_load(o->cert, o->issuer, o->responder_url, &t, err) != 0) {
        res->file = file_at_fault(o, err);
        return -1;
    }
    if (check_not_expired(t, o->cert, err) != 0 || (!same_certid(a->target, t) && put_in_force(a, t, err) != 0)) {
        oa_ocsp_target_free(t);
        return -1;
    }
    memcpy(c->in_force, digest, DIGEST_LEN);
    if (a->target != t) {
        /* The same certificate, rewritten (or with another chain): what is in force stays. */
        oa_ocsp_target_free(t);
        return 0;
    }
    res->changed = true;
    oa_reload_note_str(res, "subject", t->subject);
    oa_reload_note_str(res, "serial", t->serial_hex);
    oa_reload_note_str(res, "responder_url", a->responder_url);
    return 0;
}

/* ---- the watch ---- */

static void check_files(oa_cert_reload_t *c);

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)filename;
    (void)events;
    (void)status;
    check_files(h->data);
}

/* The directory of path, or of what its symlinks resolve to (resolved); NULL when there is none. */
static char *dir_of(const char *path, bool resolved)
{
    char *full = resolved ? realpath(path, NULL) : strdup(path);
    char *slash;

    if (full == NULL)
        return NULL;
    slash = strrchr(full, '/');
    if (slash == NULL) {
        free(full);
        return strdup(".");
    }
    if (slash == full)
        slash[1] = '\0';
    else
        *slash = '\0';
    return full;
}

/* Points each slot at the directory it should watch now: a swapped symlink may resolve somewhere else. */
static void sync_watches(oa_cert_reload_t *c)
{
    const oa_options_t *o = c->a->opts;
    const char *paths[WATCH_MAX] = {o->cert, o->cert, o->issuer, o->issuer};
    watch_t *w;
    char *dir;
    int i, j, rc;

    for (i = 0; i < WATCH_MAX; i++) {
        w = &c->watches[i];
        dir = paths[i] != NULL ? dir_of(paths[i], i % 2 == 1) : NULL;
        /* One watch per directory is enough. */
        for (j = 0; dir != NULL && j < i; j++)
            if (c->watches[j].dir != NULL && strcmp(c->watches[j].dir, dir) == 0) {
                free(dir);
                dir = NULL;
            }
        if (dir != NULL && w->dir != NULL && strcmp(dir, w->dir) == 0) {
            free(dir);
            continue;
        }
        if (w->dir != NULL)
            uv_fs_event_stop(&w->ev);
        free(w->dir);
        w->dir = NULL;
        if (dir == NULL)
            continue;
        rc = uv_fs_event_start(&w->ev, on_fs_event, dir, 0);
        if (rc != 0) {
            OA_LOG(OA_LOG_DEBUG, "cert_watch_unavailable", OA_KV_STR("dir", dir), OA_KV_STR("error", uv_strerror(rc)),
                   OA_KV_STR("effect", "the periodic check still notices a replacement"));
            free(dir);
            continue;
        }
        w->dir = dir;
    }
}

static void on_debounce(uv_timer_t *t)
{
    oa_cert_reload_t *c = t->data;
    oa_agent_t *a = c->a;
    unsigned char digest[DIGEST_LEN];

    c->debouncing = false;
    files_digest(a->opts, digest);
    if (memcmp(digest, c->seen, DIGEST_LEN) == 0)
        return;
    if (memcmp(digest, c->pending, DIGEST_LEN) != 0) {
        /* Still being written: wait for another quiet period. */
        memcpy(c->pending, digest, DIGEST_LEN);
        c->debouncing = true;
        uv_timer_start(&c->debounce, on_debounce, DEBOUNCE_MS, 0);
        return;
    }
    if (a->closing)
        return;
    OA_LOG(OA_LOG_INFO, "cert_file_changed", OA_KV_STR("cert", a->opts->cert), OA_KV_STR("issuer", a->opts->issuer));
    oa_reload_run_group(a->reload, "cert");
    sync_watches(c);
}

/* Something happened in a watched directory, or the poll came round: a new content starts its quiet period. */
static void check_files(oa_cert_reload_t *c)
{
    unsigned char digest[DIGEST_LEN];

    files_digest(c->a->opts, digest);
    if (memcmp(digest, c->seen, DIGEST_LEN) == 0) {
        /* Back to what was tried last (a write undone): nothing to wait for. */
        if (c->debouncing)
            uv_timer_stop(&c->debounce);
        c->debouncing = false;
        return;
    }
    if (c->debouncing && memcmp(digest, c->pending, DIGEST_LEN) == 0)
        return;
    memcpy(c->pending, digest, DIGEST_LEN);
    c->debouncing = true;
    uv_timer_start(&c->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_poll(uv_timer_t *t)
{
    oa_cert_reload_t *c = t->data;

    sync_watches(c);
    check_files(c);
}

int oa_cert_reload_start(oa_agent_t *a, oa_error_t *err)
{
    oa_cert_reload_t *c;
    int i;

    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    c->a = a;
    a->cert_reload = c;
    files_digest(a->opts, c->in_force);
    memcpy(c->seen, c->in_force, DIGEST_LEN);
    uv_timer_init(a->loop, &c->debounce);
    uv_timer_init(a->loop, &c->poll);
    c->debounce.data = c;
    c->poll.data = c;
    for (i = 0; i < WATCH_MAX; i++) {
        uv_fs_event_init(a->loop, &c->watches[i].ev);
        c->watches[i].ev.data = c;
    }
    if (oa_reload_add(a->reload, "cert", reload_cert, c) != 0)
        return oa_error_set(err, OA_E_INTERNAL, "too many reload groups");
    sync_watches(c);
    uv_timer_start(&c->poll, on_poll, POLL_MS, POLL_MS);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    oa_cert_reload_t *c = h->data;
    int i;

    if (--c->pending_closes > 0)
        return;
    for (i = 0; i < WATCH_MAX; i++)
        free(c->watches[i].dir);
    if (c->done != NULL)
        c->done(c->done_arg);
    free(c);
}

void oa_cert_reload_close(oa_cert_reload_t *c, void (*done)(void *arg), void *arg)
{
    int i;

    c->done = done;
    c->done_arg = arg;
    c->pending_closes = 2 + WATCH_MAX;
    uv_close((uv_handle_t *)&c->debounce, on_closed);
    uv_close((uv_handle_t *)&c->poll, on_closed);
    for (i = 0; i < WATCH_MAX; i++)
        uv_close((uv_handle_t *)&c->watches[i].ev, on_closed);
}
