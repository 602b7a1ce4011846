/*
 * Prometheus' text exposition format (version 0.0.4), appended to an oa_buf_t. Every metric the agent exposes is
 * written through these few functions, whichever layer owns its numbers, so the layout and the escaping live in one
 * place.
 *
 * A family is written as its HELP and TYPE lines, followed by its samples. Label values are escaped as the format
 * asks (backslash, double quote and line feed), because some carry operator input (a target's path); help texts are
 * escaped the same way for backslash and line feed. Metric and label names are the caller's constants and must
 * already be valid names. Every function returns 0 or UV_ENOMEM (what was appended before the failure stays).
 */
#ifndef OA_PROM_H
#define OA_PROM_H

#include <stddef.h>
#include <stdint.h>

#include "oa_util.h"

typedef enum oa_prom_type_e {
    OA_PROM_COUNTER,
    OA_PROM_GAUGE,
} oa_prom_type_t;

/* One label of a sample: name="value". Both borrowed for the call. */
typedef struct oa_prom_label_s {
    const char *name;
    const char *value;
} oa_prom_label_t;

/* "# HELP name help" and "# TYPE name counter|gauge", each on its own line. */
int oa_prom_family(oa_buf_t *out, const char *name, oa_prom_type_t type, const char *help);

/* One sample line, "name{l1="v1",l2="v2"} value" (no braces when n_labels is 0), with an unsigned, a signed or a
 * NaN value. labels may be NULL when n_labels is 0. */
int oa_prom_sample_u64(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels,
                       uint64_t value);
int oa_prom_sample_i64(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels,
                       int64_t value);
int oa_prom_sample_nan(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels);

#endif
