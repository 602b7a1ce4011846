/*
 * Live reload: the groups of files SIGHUP reads again, their log lines and their counter.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "oa_prom.h"
#include "oa_reload.h"

typedef struct group_s {
    const char *name;
    oa_reload_fn fn;
    void *data;
} group_t;

struct oa_reload_s {
    group_t groups[OA_RELOAD_GROUPS_MAX];
    size_t ngroups;
    uint64_t ok;
    uint64_t failed;
};

int oa_reload_new(oa_reload_t **out)
{
    *out = calloc(1, sizeof(**out));
    return *out != NULL ? 0 : UV_ENOMEM;
}

void oa_reload_free(oa_reload_t *r)
{
    free(r);
}

int oa_reload_add(oa_reload_t *r, const char *group, oa_reload_fn fn, void *data)
{
    if (r->ngroups >= OA_RELOAD_GROUPS_MAX)
        return UV_ENOSPC;
    r->groups[r->ngroups++] = (group_t){group, fn, data};
    return 0;
}

void oa_reload_note_str(oa_reload_result_t *res, const char *key, const char *value)
{
    size_t room = sizeof(res->text) - res->text_used;
    char *copy = res->text + res->text_used;
    int n;

    if (res->nnotes >= OA_RELOAD_NOTES_MAX || room == 0)
        return;
    n = snprintf(copy, room, "%s", value != NULL ? value : "");
    res->text_used += n < 0 ? 1 : (size_t)n >= room ? room : (size_t)n + 1;
    res->notes[res->nnotes++] = OA_KV_STR(key, copy);
}

void oa_reload_note_int(oa_reload_result_t *res, const char *key, int64_t value)
{
    if (res->nnotes >= OA_RELOAD_NOTES_MAX)
        return;
    res->notes[res->nnotes++] = OA_KV_INT(key, value);
}

/* One line: group=... file=... then the group's notes. */
static void log_reloaded(const char *group, const oa_reload_result_t *res)
{
    oa_log_kv_t kv[2 + OA_RELOAD_NOTES_MAX];
    size_t n = 0, i;

    kv[n++] = OA_KV_STR("group", group);
    kv[n++] = OA_KV_STR("file", res->file);
    for (i = 0; i < res->nnotes; i++)
        kv[n++] = res->notes[i];
    if (res->changed)
        oa_log_write(OA_LOG_INFO, "reloaded", kv, n);
    else if (oa_log_enabled(OA_LOG_DEBUG))
        oa_log_write(OA_LOG_DEBUG, "reload_unchanged", kv, 2);
}

/* Runs one group: logs and counts it. Returns 0 when its files are in force, -1 when they were refused. */
static int run_group(oa_reload_t *r, const group_t *g)
{
    oa_reload_result_t res;
    oa_error_t err;

    memset(&res, 0, sizeof(res));
    oa_error_clear(&err);
    if (g->fn(g->data, &res, &err) == 0) {
        r->ok++;
        log_reloaded(g->name, &res);
        return 0;
    }
    r->failed++;
    OA_LOG(OA_LOG_ERROR, "reload_failed", OA_KV_STR("group", g->name), OA_KV_STR("file", res.file),
           OA_KV_STR("error_code", oa_errcode_name(err.code)), OA_KV_STR("reason", err.text),
           OA_KV_STR("effect", "the files in force before are kept"));
    return -1;
}

unsigned oa_reload_run(oa_reload_t *r)
{
    unsigned failed = 0;
    size_t i;

    for (i = 0; i < r->ngroups; i++)
        if (run_group(r, &r->groups[i]) != 0)
            failed++;
    return failed;
}

int oa_reload_run_group(oa_reload_t *r, const char *group)
{
    size_t i;

    for (i = 0; i < r->ngroups; i++)
        if (strcmp(r->groups[i].name, group) == 0)
            return run_group(r, &r->groups[i]);
    return UV_ENOENT;
}

uint64_t oa_reload_count(const oa_reload_t *r, bool ok)
{
    return ok ? r->ok : r->failed;
}

int oa_reload_metrics(const oa_reload_t *r, oa_buf_t *out)
{
    int rc;

    rc = oa_prom_family(out, "ocsp_agent_reloads_total", OA_PROM_COUNTER,
                        "Reloads of a group of files (SIGHUP), by result.");
    rc |= oa_prom_sample_u64(out, "ocsp_agent_reloads_total", &(oa_prom_label_t){"result", "ok"}, 1, r->ok);
    rc |= oa_prom_sample_u64(out, "ocsp_agent_reloads_total", &(oa_prom_label_t){"result", "failed"}, 1, r->failed);
    return rc != 0 ? UV_ENOMEM : 0;
}
