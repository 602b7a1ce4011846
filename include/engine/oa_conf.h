/*
 * The OCSP configuration object: its defaults, ranges, JSON form, the strict partial-update validator behind
 * PUT /v1/ocsp, its persisted file and the stored form the cluster keeps. One table in conf.c describes every key
 * for all of them.
 *
 * responder_url is not stored here: it is read from the proxy certificate (or --responder-url) and passed in
 * wherever the JSON form needs it.
 */
#ifndef OA_CONF_H
#define OA_CONF_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "oa_error.h"

#define OA_CONF_QUERY_FREQUENCY_MIN 60
#define OA_CONF_QUERY_FREQUENCY_MAX 86400
#define OA_CONF_RESPONSE_TIMEOUT_MIN 1
#define OA_CONF_RESPONSE_TIMEOUT_MAX 60
#define OA_CONF_RECOVERY_FREQUENCY_MIN 60
#define OA_CONF_RECOVERY_FREQUENCY_MAX 86400
#define OA_CONF_RECOVERY_MAX_TRIES_MIN 1
#define OA_CONF_RECOVERY_MAX_TRIES_MAX 100

typedef struct oa_conf_s {
    bool ocsp_functionality; /* default false */
    int query_frequency;     /* seconds, 60..86400, default 3600 */
    int response_timeout;    /* seconds, 1..60, default 1 */
    int recovery_frequency;  /* seconds, 60..86400, default 60 */
    int recovery_max_tries;  /* 1..100, default 5 */
} oa_conf_t;

/* Bits of a change mask: which keys a patch carried with a value different from the current one. */
enum {
    OA_CONF_F_OCSP_FUNCTIONALITY = 1u << 0,
    OA_CONF_F_QUERY_FREQUENCY = 1u << 1,
    OA_CONF_F_RESPONSE_TIMEOUT = 1u << 2,
    OA_CONF_F_RECOVERY_FREQUENCY = 1u << 3,
    OA_CONF_F_RECOVERY_MAX_TRIES = 1u << 4,
};

void oa_conf_defaults(oa_conf_t *c);

/* The six-key API object (new reference, NULL on allocation failure). responder_url may be NULL, meaning "". */
json_t *oa_conf_to_json(const oa_conf_t *c, const char *responder_url);

/*
 * A PUT body once validated: the values it carries and which settings it carries them for. It is a partial update,
 * applied with oa_conf_patch_apply to whichever configuration is current when the change is made (in cluster mode
 * the store's latest, which may move between the validation and the write).
 */
typedef struct oa_conf_patch_s {
    oa_conf_t values; /* the body's values for the settings in set; the others hold their defaults */
    unsigned set;     /* OA_CONF_F_* bits of the settings the body carries, whether or not they change anything */
} oa_conf_patch_t;

/*
 * Validates the PUT body (len bytes, not NUL-terminated). Whether a body is valid does not depend on the current
 * settings, only on responder_url. On success returns 0 and fills *out. On failure returns -1, leaves *out
 * untouched, and fills err:
 *   OA_E_INVALID_SCHEMA   body not one JSON object (or invalid UTF-8, duplicate keys, trailing bytes), unknown key,
 *                         wrong JSON type (float/string/bool for an integer, number for the boolean, null),
 *                         value out of range, or responder_url other than the current one (NULL counts as "").
 *   OA_E_NO_RESPONDER_URL the body sets ocsp_functionality to true while responder_url is "".
 * The sentence names the key and what was wrong with it; with several wrong keys, the first in the body's order.
 */
int oa_conf_patch_parse(const char *responder_url, const char *body, size_t len, oa_conf_patch_t *out,
                        oa_error_t *err);

/* Fills *out with cur updated by p (out may be cur) and returns the OA_CONF_F_* bits of the values that differ
 * from cur. */
unsigned oa_conf_patch_apply(const oa_conf_patch_t *p, const oa_conf_t *cur, oa_conf_t *out);

/*
 * oa_conf_patch_parse, then oa_conf_patch_apply to cur: on success returns 0 with *out and *changed filled; on
 * failure returns -1 with err filled and *out and *changed untouched.
 */
int oa_conf_patch(const oa_conf_t *cur, const char *responder_url, const char *body, size_t len, oa_conf_t *out,
                  unsigned *changed, oa_error_t *err);

/* The OA_CONF_F_* bits of the keys whose values differ between a and b. */
unsigned oa_conf_diff(const oa_conf_t *a, const oa_conf_t *b);

/* Writes the names of the keys in changed, comma-separated ("ocsp_functionality,query_frequency"), into out. */
void oa_conf_changed_names(unsigned changed, char *out, size_t outlen);

/* The stored form of c: a JSON object of the five settable keys, without responder_url (new reference, NULL on
 * allocation failure). The persisted file and the cluster's store hold it. */
json_t *oa_conf_stored_json(const oa_conf_t *c);

/*
 * Reads the stored form strictly where it matters: each of the five settable keys present, of its type and in
 * range. Members it does not know (responder_url among them) are ignored, so that a configuration written by a
 * later version that knows more keys stays readable. Returns 0 with *out filled, or -1 with err filled
 * (OA_E_INVALID_SCHEMA: not an object, a key missing, or the sentence a PUT would get for the value) and *out
 * untouched. o is borrowed; NULL gives -1.
 */
int oa_conf_from_stored(const json_t *o, oa_conf_t *out, oa_error_t *err);

/* Saves c to path as the stored form plus "version": 1, atomically
 * (oa_file_write_atomic, mode 0600). Returns 0 or a negative UV_E* error. */
int oa_conf_save(const char *path, const oa_conf_t *c);

/* Loads the file written by oa_conf_save. Returns 0 with *found true and *out filled, or 0 with *found false and
 * *out untouched when the file is absent; -1 with err filled (OA_E_BAD_FILE) when it is unreadable, not JSON, or
 * fails the same validation as a PUT (absent keys take their defaults), *out untouched. */
int oa_conf_load(const char *path, oa_conf_t *out, bool *found, oa_error_t *err);

#endif
