/*
 * Live reload (API.md section 7): what SIGHUP runs, one group of files at a time.
 *
 * A group is a set of files that are only meaningful together (the users file; the API's certificate and its key;
 * the watched certificate and its issuer) with one function that reads them all, checks them all, and puts
 * them in force at once or not at all. The orchestrator runs the groups in the order they were added, logs one line
 * per group (`reloaded` with what changed; `reload_unchanged`, at debug, when the files hold what is in force;
 * `reload_failed` at error, naming the file and the reason) and counts every attempt in
 * ocsp_agent_reloads_total{result="ok"|"failed"}. A failed group never stops the others.
 */
#ifndef OA_RELOAD_H
#define OA_RELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "oa_error.h"
#include "oa_log.h"
#include "oa_util.h"

#define OA_RELOAD_GROUPS_MAX 8
#define OA_RELOAD_NOTES_MAX 8

/* What one group's function reports besides its return value. */
typedef struct oa_reload_result_s {
    const char *file;  /* the file at fault when the group failed, else the group's main file (borrowed: it must
                        * outlive the call to oa_reload_run, like the option strings it comes from) */
    bool changed;      /* false: the files hold what is in force already, and nothing was touched */
    oa_log_kv_t notes[OA_RELOAD_NOTES_MAX]; /* what changed, for the `reloaded` line; filled by oa_reload_note_* */
    size_t nnotes;
    char text[512];    /* storage for the notes' strings */
    size_t text_used;
} oa_reload_result_t;

/* Adds key=value to the `reloaded` line. value is copied (cut when the result's storage runs out); key must be a
 * string literal. Notes past OA_RELOAD_NOTES_MAX are dropped. */
void oa_reload_note_str(oa_reload_result_t *res, const char *key, const char *value);
void oa_reload_note_int(oa_reload_result_t *res, const char *key, int64_t value);

/*
 * Reads a group's files again and applies them. Returns 0 when they were put in force or were already in force
 * (res->changed says which), or -1 with err filled with one sentence (naming the file) and res->file set to the file
 * at fault, with everything the group governs as it was before the call. Runs on the loop.
 */
typedef int (*oa_reload_fn)(void *data, oa_reload_result_t *res, oa_error_t *err);

typedef struct oa_reload_s oa_reload_t;

/* An orchestrator with no group. Returns 0 with *out set, or UV_ENOMEM. */
int oa_reload_new(oa_reload_t **out);

/* Adds a group named group (a string literal: "users", "tls") whose files fn reloads with data. Returns 0, or
 * UV_ENOSPC past OA_RELOAD_GROUPS_MAX groups. */
int oa_reload_add(oa_reload_t *r, const char *group, oa_reload_fn fn, void *data);

/* Runs every group once, in the order they were added: logs and counts each. Returns the number that failed. */
unsigned oa_reload_run(oa_reload_t *r);

/* Runs the one group named group, logged and counted like oa_reload_run does (a change noticed without a signal).
 * Returns 0 when its files are in force, -1 when they were refused, UV_ENOENT when there is no such group. */
int oa_reload_run_group(oa_reload_t *r, const char *group);

/* The attempts so far, for tests: ok and failed, over all groups. */
uint64_t oa_reload_count(const oa_reload_t *r, bool ok);

/* Appends ocsp_agent_reloads_total{result="ok"|"failed"} (one HELP/TYPE block, both lines always present) in
 * Prometheus' text format. Returns 0 or UV_ENOMEM. */
int oa_reload_metrics(const oa_reload_t *r, oa_buf_t *out);

void oa_reload_free(oa_reload_t *r);

#endif
