/*
 * Structured logs on stderr, one line per event.
 *
 *   text: ts=2026-11-21T16:40:00.123Z level=info event=config_changed user=admin@example.com keys=query_frequency
 *   json: {"ts":"2026-11-21T16:40:00.123Z","level":"info","event":"config_changed","user":"...","keys":"..."}
 *
 * Text values that hold spaces, quotes, '=' or control bytes are written in double quotes with C-style escapes;
 * JSON values are escaped per RFC 8259. Never pass a password or an Authorization header here.
 *
 *   OA_LOG(OA_LOG_INFO, "query", OA_KV_STR("result", "ok"), OA_KV_INT("duration_ms", 12));
 */
#ifndef OA_LOG_H
#define OA_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum oa_log_level_e { OA_LOG_DEBUG, OA_LOG_INFO, OA_LOG_WARN, OA_LOG_ERROR } oa_log_level_t;
typedef enum oa_log_format_e { OA_LOG_TEXT, OA_LOG_JSON } oa_log_format_t;

typedef enum oa_kv_type_e { OA_KV_T_STR, OA_KV_T_INT, OA_KV_T_DBL, OA_KV_T_BOOL } oa_kv_type_t;

typedef struct oa_log_kv_s {
    const char *key;
    oa_kv_type_t type;
    union {
        const char *s; /* NULL is written as an empty string (text) or null (json) */
        int64_t i;
        double d;
        int b;
    } v;
} oa_log_kv_t;

#define OA_KV_STR(k, val) ((oa_log_kv_t){.key = (k), .type = OA_KV_T_STR, .v.s = (val)})
#define OA_KV_INT(k, val) ((oa_log_kv_t){.key = (k), .type = OA_KV_T_INT, .v.i = (int64_t)(val)})
#define OA_KV_DBL(k, val) ((oa_log_kv_t){.key = (k), .type = OA_KV_T_DBL, .v.d = (double)(val)})
#define OA_KV_BOOL(k, val) ((oa_log_kv_t){.key = (k), .type = OA_KV_T_BOOL, .v.b = !!(val)})

/* Sets format, minimum level and destination (stderr when out is NULL). Defaults: text, info, stderr. */
void oa_log_setup(oa_log_format_t format, oa_log_level_t min_level, FILE *out);

/* true when events of level are written. */
bool oa_log_enabled(oa_log_level_t level);

/* Writes one event line with n key/value pairs, flushed at once. */
void oa_log_write(oa_log_level_t level, const char *event, const oa_log_kv_t *kv, size_t n);

/* Parses "text"/"json" and "debug"/"info"/"warn"/"error". Return 0 or -1. */
int oa_log_format_parse(const char *s, oa_log_format_t *out);
int oa_log_level_parse(const char *s, oa_log_level_t *out);
const char *oa_log_level_name(oa_log_level_t level);

#define OA_LOG(level, event, ...)                                                                                 \
    do {                                                                                                          \
        if (oa_log_enabled(level)) {                                                                              \
            const oa_log_kv_t oa_kv_[] = {__VA_ARGS__};                                                           \
            oa_log_write((level), (event), oa_kv_, sizeof(oa_kv_) / sizeof(oa_kv_[0]));                           \
        }                                                                                                         \
    } while (0)

#define OA_LOG0(level, event)                                                                                     \
    do {                                                                                                          \
        if (oa_log_enabled(level))                                                                                \
            oa_log_write((level), (event), NULL, 0);                                                              \
    } while (0)

#endif
