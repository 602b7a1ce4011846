#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_log.h"
#include "oa_codec.h"
#include "oa_util.h"

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static oa_log_format_t log_format = OA_LOG_TEXT;
static oa_log_level_t log_min_level = OA_LOG_INFO;
static FILE *log_out; /* NULL means stderr, looked up at write time so a replaced stderr is honoured */

void oa_log_setup(oa_log_format_t format, oa_log_level_t min_level, FILE *out)
{
    log_format = format;
    log_min_level = min_level;
    log_out = out;
}

bool oa_log_enabled(oa_log_level_t level)
{
    return (unsigned)level < OA_ARRAY_SIZE(level_names) && level >= log_min_level;
}

const char *oa_log_level_name(oa_log_level_t level)
{
    if ((unsigned)level >= OA_ARRAY_SIZE(level_names))
        return "unknown";
    return level_names[level];
}

int oa_log_format_parse(const char *s, oa_log_format_t *out)
{
    if (s == NULL)
        return -1;
    if (strcmp(s, "text") == 0) {
        *out = OA_LOG_TEXT;
        return 0;
    }
    if (strcmp(s, "json") == 0) {
        *out = OA_LOG_JSON;
        return 0;
    }
    return -1;
}

int oa_log_level_parse(const char *s, oa_log_level_t *out)
{
    size_t i;

    if (s == NULL)
        return -1;
    for (i = 0; i < OA_ARRAY_SIZE(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (oa_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

/* DEL counts as a control byte too: it is invisible on a terminal just like the C0 range. */
static int is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

static int text_needs_quotes(const char *s)
{
    const unsigned char *p;

    if (*s == '\0')
        return 1;
    for (p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || is_ctl(*p))
            return 1;
    }
    return 0;
}

static void text_put_str(oa_buf_t *b, const char *s)
{
    const unsigned char *p;

    if (s == NULL)
        s = "";
    if (!text_needs_quotes(s)) {
        oa_buf_append_str(b, s);
        return;
    }
    oa_buf_append(b, "\"", 1);
    for (p = (const unsigned char *)s; *p != '\0'; p++) {
        switch (*p) {
        case '"':
            oa_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            oa_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            oa_buf_append(b, "\\n", 2);
            break;
        case '\t':
            oa_buf_append(b, "\\t", 2);
            break;
        default:
            if (is_ctl(*p))
                oa_buf_printf(b, "\\x%02x", *p);
            else
                oa_buf_append(b, p, 1);
        }
    }
    oa_buf_append(b, "\"", 1);
}

/* Writes s as a JSON string (null for NULL). */
static void json_put_str(oa_buf_t *b, const char *s)
{
    if (s == NULL) {
        oa_buf_append(b, "null", 4);
        return;
    }
    oa_buf_append(b, "\"", 1);
    oa_json_escape(b, s);
    oa_buf_append(b, "\"", 1);
}

/* Formats d with the fewest significant digits that read back as the same double, so 0.1 is written as 0.1 and
 * not 0.10000000000000001. Returns 0, or -1 for NaN and infinities, which JSON cannot hold. */
static int format_double(double d, char *out, size_t outlen)
{
    int prec;
    char *c;

    if (isnan(d) || isinf(d))
        return -1;
    for (prec = 15; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            break;
    }
    /* A locale with a decimal comma would produce invalid JSON and an ambiguous text value. */
    for (c = out; *c != '\0'; c++) {
        if (*c == ',')
            *c = '.';
    }
    return 0;
}

static void put_value(oa_buf_t *b, const oa_log_kv_t *kv, int json)
{
    char num[40];

    switch (kv->type) {
    case OA_KV_T_STR:
        if (json)
            json_put_str(b, kv->v.s);
        else
            text_put_str(b, kv->v.s);
        break;
    case OA_KV_T_INT:
        oa_buf_printf(b, "%" PRId64, kv->v.i);
        break;
    case OA_KV_T_DBL:
        if (format_double(kv->v.d, num, sizeof(num)) == 0)
            oa_buf_append_str(b, num);
        else if (json)
            oa_buf_append(b, "null", 4);
        else
            oa_buf_append_str(b, isnan(kv->v.d) ? "nan" : kv->v.d > 0 ? "inf" : "-inf");
        break;
    case OA_KV_T_BOOL:
        oa_buf_append_str(b, kv->v.b ? "true" : "false");
        break;
    default:
        oa_buf_append_str(b, json ? "null" : "\"\"");
        break;
    }
}

void oa_log_write(oa_log_level_t level, const char *event, const oa_log_kv_t *kv, size_t n)
{
    char ts[OA_ISO8601_LEN];
    oa_buf_t line;
    FILE *out;
    size_t i;

    if (!oa_log_enabled(level))
        return;
    oa_buf_init(&line);
    /* One reservation large enough for most events keeps the appends below from reallocating. */
    if (oa_buf_reserve(&line, 256 + 64 * n) != 0)
        return;
    oa_time_iso8601_ms(oa_time_now_ms(), ts);

    if (log_format == OA_LOG_JSON) {
        oa_buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", ts, level_names[level]);
        json_put_str(&line, event != NULL ? event : "");
        for (i = 0; i < n; i++) {
            oa_buf_append(&line, ",", 1);
            json_put_str(&line, kv[i].key != NULL ? kv[i].key : "");
            oa_buf_append(&line, ":", 1);
            put_value(&line, &kv[i], 1);
        }
        oa_buf_append(&line, "}\n", 2);
    } else {
        oa_buf_printf(&line, "ts=%s level=%s event=", ts, level_names[level]);
        text_put_str(&line, event);
        for (i = 0; i < n; i++) {
            oa_buf_append(&line, " ", 1);
            oa_buf_append_str(&line, kv[i].key != NULL ? kv[i].key : "");
            oa_buf_append(&line, "=", 1);
            put_value(&line, &kv[i], 0);
        }
        oa_buf_append(&line, "\n", 1);
    }

    /* When memory ran out before the final newline was appended the line is dropped rather than written
     * without its terminator, which would glue it to the next writer's line. */
    if (line.len > 0 && line.data[line.len - 1] == '\n') {
        out = log_out != NULL ? log_out : stderr;
        /* One fwrite per line: stdio locks the stream for the call, so lines from several threads never mix. */
        fwrite(line.data, 1, line.len, out);
        fflush(out);
    }
    oa_buf_free(&line);
}
