/*
 * The `<crt>.ocsp` file HAProxy loads next to its certificate at start-up and reload.
 *
 * HAProxy refuses a .ocsp file it would not staple (see oa_haproxy_staple_check), and a refused file can stop it from
 * starting; an empty file is accepted: it staples nothing and still takes runtime updates
 * (`set ssl ocsp-response`). So the file holds the staple when HAProxy takes it, and is empty otherwise: after a
 * removal (delivered: the file staples nothing, as it should), or when HAProxy would refuse the staple (failed, with
 * the reason). A response that HAProxy takes now stops being one OA_HAPROXY_STAPLE_MARGIN_SECONDS before its
 * nextUpdate; a timer empties the file then, in case no newer response has replaced it by that time.
 *
 * The writes are small and synchronous (temp file, fsync, rename), like the scheduler's own staple file.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "oa_log.h"
#include "target.h"

#define CRT_OCSP_MODE 0644

typedef struct crt_target_s {
    oa_dtarget_t base; /* first: the delivery's list holds &base */
    char *ocsp_path;   /* "<crt>.ocsp" */
    uv_timer_t retry_timer;  /* the next try after a failed write */
    uv_timer_t margin_timer; /* HAProxy's margin before the staple's nextUpdate is reached */
    int timers_open;
} crt_target_t;

static void crt_deliver(crt_target_t *c);

static void on_timer(uv_timer_t *timer)
{
    crt_deliver(timer->data);
}

/* Writes the file for the current staple and reports the try. */
static void crt_deliver(crt_target_t *c)
{
    const oa_ocsp_result_t *staple = oa_delivery_staple(c->base.delivery);
    uint64_t gen = oa_delivery_generation(c->base.delivery);
    char why[OA_DTARGET_ERROR_MAX], error[2 * OA_DTARGET_ERROR_MAX];
    bool refused = false;
    time_t now = time(NULL);
    int rc;

    uv_timer_stop(&c->retry_timer);
    uv_timer_stop(&c->margin_timer);
    if (staple != NULL && oa_haproxy_staple_check(staple, now, why, sizeof(why)) != 0)
        refused = true;
    if (staple != NULL && !refused)
        rc = oa_file_write_atomic(c->ocsp_path, staple->der, staple->der_len, CRT_OCSP_MODE);
    else
        rc = oa_file_write_atomic(c->ocsp_path, "", 0, CRT_OCSP_MODE);
    if (rc != 0) {
        snprintf(error, sizeof(error), "cannot write %s: %s", c->ocsp_path, uv_strerror(rc));
        oa_dtarget_report(&c->base, gen, error);
        uv_timer_start(&c->retry_timer, on_timer, oa_delivery_retry_ms(c->base.delivery), 0);
        return;
    }
    if (refused) {
        snprintf(error, sizeof(error), "%s; %s is left empty", why, c->ocsp_path);
        oa_dtarget_report(&c->base, gen, error);
        return;
    }
    oa_dtarget_report(&c->base, gen, NULL);
    if (staple != NULL)
        uv_timer_start(&c->margin_timer, on_timer,
                       (uint64_t)(staple->next_update - OA_HAPROXY_STAPLE_MARGIN_SECONDS - now) * 1000, 0);
}

static void crt_update(oa_dtarget_t *t)
{
    if (!t->closing)
        crt_deliver((crt_target_t *)t);
}

static void on_timer_closed(uv_handle_t *handle)
{
    crt_target_t *c = handle->data;

    if (--c->timers_open == 0)
        oa_dtarget_closed(&c->base); /* may free c */
}

static void crt_close(oa_dtarget_t *t)
{
    crt_target_t *c = (crt_target_t *)t;

    uv_close((uv_handle_t *)&c->retry_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->margin_timer, on_timer_closed);
}

static void crt_free(oa_dtarget_t *t)
{
    crt_target_t *c = (crt_target_t *)t;

    free(c->ocsp_path);
    free(c);
}

static const oa_dtarget_ops_t crt_ops = {crt_update, crt_close, crt_free};

int oa_haproxy_crt_target_new(oa_delivery_t *d, const char *crt_path, oa_error_t *err)
{
    uv_loop_t *loop = oa_delivery_loop(d);
    crt_target_t *c = NULL;
    char *dir = NULL, *name = NULL;
    const char *slash, *base;
    struct stat st;
    size_t len;

    if (crt_path == NULL || crt_path[0] == '\0')
        return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-crt: the file path is empty");
    len = strlen(crt_path);
    if (crt_path[len - 1] == '/')
        return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-crt: %s: names a directory, not a file", crt_path);
    slash = strrchr(crt_path, '/');
    if (slash == NULL)
        dir = strdup(".");
    else if (slash == crt_path)
        dir = strdup("/");
    else
        dir = strndup(crt_path, (size_t)(slash - crt_path));
    if (dir == NULL)
        goto nomem;
    base = slash != NULL ? slash + 1 : crt_path;
    if (stat(dir, &st) != 0) {
        oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-crt: %s: directory %s: %s", crt_path, dir, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-crt: %s: %s is not a directory", crt_path, dir);
        goto fail;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-crt: %s: directory %s is not writable: %s", crt_path, dir,
                     strerror(errno));
        goto fail;
    }

    c = calloc(1, sizeof(*c));
    len = strlen(crt_path) + strlen(".ocsp") + 1;
    if (c == NULL || (c->ocsp_path = malloc(len)) == NULL || (name = malloc(len + strlen("file:"))) == NULL)
        goto nomem;
    snprintf(c->ocsp_path, len, "%s.ocsp", crt_path);
    snprintf(name, len + strlen("file:"), "file:%s", c->ocsp_path);
    {
        const char *bases[] = {c->ocsp_path + (base - crt_path)};

        oa_file_remove_stale_temps(dir, bases, 1);
    }
    if (oa_dtarget_attach(d, &c->base, &crt_ops, name) != 0)
        goto nomem;
    /* Once attached the delivery owns c and closes these from crt_close. */
    uv_timer_init(loop, &c->retry_timer);
    uv_timer_init(loop, &c->margin_timer);
    c->retry_timer.data = c;
    c->margin_timer.data = c;
    c->timers_open = 2;
    free(name);
    free(dir);
    return 0;

nomem:
    oa_error_set(err, OA_E_NOMEM, "--haproxy-crt: %s: out of memory", crt_path);
fail:
    if (c != NULL)
        free(c->ocsp_path);
    free(c);
    free(name);
    free(dir);
    return -1;
}
