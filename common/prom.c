/*
 * Prometheus' text exposition format: family headers and samples with escaped label values.
 */
#include <inttypes.h>
#include <uv.h>

#include "oa_prom.h"

/* Appends s with backslash and line feed escaped, and double quote too when quote is set (label values need it,
 * help texts do not). */
static int append_escaped(oa_buf_t *out, const char *s, int quote)
{
    const char *run = s;
    int rc = 0;

    for (; *s != '\0'; s++) {
        if (*s != '\\' && *s != '\n' && !(quote && *s == '"'))
            continue;
        rc |= oa_buf_append(out, run, (size_t)(s - run));
        rc |= oa_buf_append_str(out, *s == '\n' ? "\\n" : *s == '"' ? "\\\"" : "\\\\");
        run = s + 1;
    }
    rc |= oa_buf_append(out, run, (size_t)(s - run));
    return rc != 0 ? UV_ENOMEM : 0;
}

int oa_prom_family(oa_buf_t *out, const char *name, oa_prom_type_t type, const char *help)
{
    int rc;

    rc = oa_buf_printf(out, "# HELP %s ", name);
    rc |= append_escaped(out, help, 0);
    rc |= oa_buf_printf(out, "\n# TYPE %s %s\n", name, type == OA_PROM_COUNTER ? "counter" : "gauge");
    return rc != 0 ? UV_ENOMEM : 0;
}

/* Everything of a sample line but its value: the name and the labels, then the space before the value. */
static int sample_start(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels)
{
    size_t i;
    int rc;

    rc = oa_buf_append_str(out, name);
    for (i = 0; i < n_labels; i++) {
        rc |= oa_buf_printf(out, "%s%s=\"", i == 0 ? "{" : ",", labels[i].name);
        rc |= append_escaped(out, labels[i].value, 1);
        rc |= oa_buf_append_str(out, "\"");
    }
    rc |= oa_buf_append_str(out, n_labels > 0 ? "} " : " ");
    return rc != 0 ? UV_ENOMEM : 0;
}

int oa_prom_sample_u64(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels,
                       uint64_t value)
{
    if (sample_start(out, name, labels, n_labels) != 0)
        return UV_ENOMEM;
    return oa_buf_printf(out, "%" PRIu64 "\n", value) != 0 ? UV_ENOMEM : 0;
}

int oa_prom_sample_i64(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels, int64_t value)
{
    if (sample_start(out, name, labels, n_labels) != 0)
        return UV_ENOMEM;
    return oa_buf_printf(out, "%" PRId64 "\n", value) != 0 ? UV_ENOMEM : 0;
}

int oa_prom_sample_nan(oa_buf_t *out, const char *name, const oa_prom_label_t *labels, size_t n_labels)
{
    if (sample_start(out, name, labels, n_labels) != 0)
        return UV_ENOMEM;
    return oa_buf_append_str(out, "NaN\n") != 0 ? UV_ENOMEM : 0;
}
