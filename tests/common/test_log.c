/*
 * Structured logging: the text and JSON line formats, quoting and escaping, level filtering, the parse helpers,
 * and whole lines under concurrent writers.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "oa_log.h"

#define TS_PATTERN "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

static FILE *capture_begin(oa_log_format_t format, oa_log_level_t level)
{
    FILE *fp = tmpfile();

    assert_non_null(fp);
    oa_log_setup(format, level, fp);
    return fp;
}

/* Stops capturing and returns everything written (malloc'ed). Logging goes back to stderr, errors only. */
static char *capture_end(FILE *fp)
{
    long size;
    char *text;

    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    size = ftell(fp);
    assert_true(size >= 0);
    rewind(fp);
    text = malloc((size_t)size + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)size, fp), (size_t)size);
    text[size] = '\0';
    fclose(fp);
    return text;
}

static int matches(const char *pattern, const char *s)
{
    regex_t re;
    int rc;

    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    rc = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return rc;
}

/* Checks that line is "ts=<ISO 8601> " followed by exactly rest. */
static void assert_text_line(const char *line, const char *rest)
{
    const char *sp;

    assert_true(matches("^ts=" TS_PATTERN " ", line));
    sp = strchr(line, ' ');
    assert_non_null(sp);
    assert_string_equal(sp + 1, rest);
}

/* Logs one event with a single string value in text format and checks the value as written. */
static void check_text_value(const char *value, const char *expected)
{
    char want[512];
    char *out;
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_INFO);

    OA_LOG(OA_LOG_INFO, "e", OA_KV_STR("v", value));
    out = capture_end(fp);
    snprintf(want, sizeof(want), "level=info event=e v=%s\n", expected);
    assert_text_line(out, want);
    free(out);
}

static void test_text_basic(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_INFO);
    char *out;

    (void)state;
    OA_LOG(OA_LOG_INFO, "query", OA_KV_STR("result", "ok"), OA_KV_INT("duration_ms", 12),
           OA_KV_STR("user", "admin@example.com"));
    out = capture_end(fp);
    assert_text_line(out, "level=info event=query result=ok duration_ms=12 user=admin@example.com\n");
    /* Exactly one line was written. */
    assert_int_equal(strchr(out, '\n') - out + 1, (long)strlen(out));
    free(out);
}

static void test_text_no_kv(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_DEBUG);
    char *out;

    (void)state;
    OA_LOG0(OA_LOG_ERROR, "shutdown");
    out = capture_end(fp);
    assert_text_line(out, "level=error event=shutdown\n");
    free(out);
}

static void test_text_quoting(void **state)
{
    (void)state;
    check_text_value("plain", "plain");
    check_text_value("caf\xc3\xa9", "caf\xc3\xa9");
    check_text_value("hello world", "\"hello world\"");
    check_text_value("a=b", "\"a=b\"");
    check_text_value("say \"hi\"", "\"say \\\"hi\\\"\"");
    check_text_value("C:\\dir", "\"C:\\\\dir\"");
    check_text_value("one\ntwo\tthree", "\"one\\ntwo\\tthree\"");
    check_text_value("cr\r", "\"cr\\x0d\"");
    check_text_value("\x01\x1f\x7f", "\"\\x01\\x1f\\x7f\"");
    check_text_value("", "\"\"");
    check_text_value(NULL, "\"\"");
    check_text_value("https://ocsp.example.com/a?b", "https://ocsp.example.com/a?b");
}

static void test_text_types(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_INFO);
    char *out;

    (void)state;
    OA_LOG(OA_LOG_WARN, "types", OA_KV_INT("min", INT64_MIN), OA_KV_INT("max", INT64_MAX), OA_KV_BOOL("t", 7),
           OA_KV_BOOL("f", 0), OA_KV_DBL("d", 0.1), OA_KV_DBL("third", 1.0 / 3.0), OA_KV_DBL("big", 1e300),
           OA_KV_DBL("nan", NAN), OA_KV_DBL("ninf", -INFINITY));
    out = capture_end(fp);
    assert_text_line(out, "level=warn event=types min=-9223372036854775808 max=9223372036854775807 t=true f=false "
                          "d=0.1 third=0.3333333333333333 big=1e+300 nan=nan ninf=-inf\n");
    free(out);
}

static void test_text_event_quoted(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_INFO);
    char *out;

    (void)state;
    OA_LOG0(OA_LOG_INFO, "two words");
    out = capture_end(fp);
    assert_text_line(out, "level=info event=\"two words\"\n");
    free(out);
}

static void test_json_line(void **state)
{
    FILE *fp = capture_begin(OA_LOG_JSON, OA_LOG_INFO);
    const char *rest;
    char *out;

    (void)state;
    OA_LOG(OA_LOG_WARN, "x", OA_KV_INT("n", 5), OA_KV_BOOL("ok", 1), OA_KV_STR("s", NULL), OA_KV_DBL("d", 0.25),
           OA_KV_STR("e", ""));
    out = capture_end(fp);
    assert_true(matches("^\\{\"ts\":\"" TS_PATTERN "\",", out));
    rest = strchr(out, ',');
    assert_non_null(rest);
    assert_string_equal(rest, ",\"level\":\"warn\",\"event\":\"x\",\"n\":5,\"ok\":true,\"s\":null,\"d\":0.25,"
                              "\"e\":\"\"}\n");
    free(out);
}

static void test_json_typed_values(void **state)
{
    const char *tricky = "q\"b\\s/n\nt\tr\rb\bf\fc\x01\x1f del\x7f caf\xc3\xa9";
    FILE *fp = capture_begin(OA_LOG_JSON, OA_LOG_DEBUG);
    json_error_t jerr;
    json_t *obj;
    char *out;

    (void)state;
    OA_LOG(OA_LOG_DEBUG, "typed", OA_KV_INT("neg", -42), OA_KV_INT("big", INT64_MAX), OA_KV_DBL("third", 1.0 / 3.0),
           OA_KV_DBL("nan", NAN), OA_KV_DBL("inf", INFINITY), OA_KV_BOOL("f", 0), OA_KV_STR("s", tricky),
           OA_KV_STR("bad", "a\xff\xc0z"));
    out = capture_end(fp);
    /* One line, ending in a newline, that jansson accepts as a whole. */
    assert_int_equal(strchr(out, '\n') - out + 1, (long)strlen(out));
    obj = json_loads(out, 0, &jerr);
    assert_non_null(obj);
    assert_int_equal(json_object_size(obj), 11);
    assert_true(matches("^" TS_PATTERN "$", json_string_value(json_object_get(obj, "ts"))));
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "debug");
    assert_string_equal(json_string_value(json_object_get(obj, "event")), "typed");
    assert_true(json_is_integer(json_object_get(obj, "neg")));
    assert_int_equal(json_integer_value(json_object_get(obj, "neg")), -42);
    assert_int_equal(json_integer_value(json_object_get(obj, "big")), INT64_MAX);
    assert_true(json_is_real(json_object_get(obj, "third")));
    assert_true(json_real_value(json_object_get(obj, "third")) == 1.0 / 3.0);
    assert_true(json_is_null(json_object_get(obj, "nan")));
    assert_true(json_is_null(json_object_get(obj, "inf")));
    assert_true(json_is_false(json_object_get(obj, "f")));
    assert_string_equal(json_string_value(json_object_get(obj, "s")), tricky);
    /* Bytes that are not UTF-8 are replaced by U+FFFD so the line stays valid JSON. */
    assert_string_equal(json_string_value(json_object_get(obj, "bad")), "a\xef\xbf\xbd\xef\xbf\xbdz");
    /* Control bytes use the short escapes where JSON has them and \u00XX otherwise. */
    assert_non_null(strstr(out, "\\nt\\tr\\rb\\bf\\fc\\u0001\\u001f"));
    json_decref(obj);
    free(out);
}

static void test_json_key_order(void **state)
{
    FILE *fp = capture_begin(OA_LOG_JSON, OA_LOG_INFO);
    char *out;
    char *ts, *level, *event, *k;

    (void)state;
    OA_LOG(OA_LOG_ERROR, "ocsp_query_failed", OA_KV_STR("error_code", "ocsp_responder_timeout"));
    out = capture_end(fp);
    ts = strstr(out, "\"ts\":");
    level = strstr(out, "\"level\":\"error\"");
    event = strstr(out, "\"event\":\"ocsp_query_failed\"");
    k = strstr(out, "\"error_code\":\"ocsp_responder_timeout\"");
    assert_true(ts == out + 1);
    assert_true(ts < level && level < event && event < k);
    free(out);
}

static int arg_evaluations;

static int64_t count_evaluation(void)
{
    arg_evaluations++;
    return 1;
}

static void test_level_filtering(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_WARN);
    char *out, *second;

    (void)state;
    assert_false(oa_log_enabled(OA_LOG_DEBUG));
    assert_false(oa_log_enabled(OA_LOG_INFO));
    assert_true(oa_log_enabled(OA_LOG_WARN));
    assert_true(oa_log_enabled(OA_LOG_ERROR));
    assert_false(oa_log_enabled((oa_log_level_t)17));

    arg_evaluations = 0;
    OA_LOG(OA_LOG_DEBUG, "hidden", OA_KV_INT("n", count_evaluation()));
    OA_LOG(OA_LOG_INFO, "hidden", OA_KV_INT("n", count_evaluation()));
    OA_LOG0(OA_LOG_INFO, "hidden");
    oa_log_write(OA_LOG_INFO, "hidden", NULL, 0);
    /* A filtered event does not even evaluate its arguments. */
    assert_int_equal(arg_evaluations, 0);
    OA_LOG(OA_LOG_WARN, "shown", OA_KV_INT("n", count_evaluation()));
    OA_LOG0(OA_LOG_ERROR, "shown2");
    assert_int_equal(arg_evaluations, 1);
    out = capture_end(fp);

    assert_null(strstr(out, "hidden"));
    second = strchr(out, '\n') + 1;
    assert_text_line(second, "level=error event=shown2\n");
    *second = '\0';
    assert_text_line(out, "level=warn event=shown n=1\n");
    free(out);
}

static void test_parse(void **state)
{
    oa_log_format_t f = OA_LOG_JSON;
    oa_log_level_t l = OA_LOG_ERROR;

    (void)state;
    assert_int_equal(oa_log_format_parse("text", &f), 0);
    assert_int_equal(f, OA_LOG_TEXT);
    assert_int_equal(oa_log_format_parse("json", &f), 0);
    assert_int_equal(f, OA_LOG_JSON);
    assert_int_equal(oa_log_format_parse("JSON", &f), -1);
    assert_int_equal(oa_log_format_parse("", &f), -1);
    assert_int_equal(oa_log_format_parse("texts", &f), -1);
    assert_int_equal(oa_log_format_parse(NULL, &f), -1);
    assert_int_equal(f, OA_LOG_JSON);

    assert_int_equal(oa_log_level_parse("debug", &l), 0);
    assert_int_equal(l, OA_LOG_DEBUG);
    assert_int_equal(oa_log_level_parse("info", &l), 0);
    assert_int_equal(l, OA_LOG_INFO);
    assert_int_equal(oa_log_level_parse("warn", &l), 0);
    assert_int_equal(l, OA_LOG_WARN);
    assert_int_equal(oa_log_level_parse("error", &l), 0);
    assert_int_equal(l, OA_LOG_ERROR);
    assert_int_equal(oa_log_level_parse("warning", &l), -1);
    assert_int_equal(oa_log_level_parse("Info", &l), -1);
    assert_int_equal(oa_log_level_parse("", &l), -1);
    assert_int_equal(oa_log_level_parse(NULL, &l), -1);
    assert_int_equal(l, OA_LOG_ERROR);

    assert_string_equal(oa_log_level_name(OA_LOG_DEBUG), "debug");
    assert_string_equal(oa_log_level_name(OA_LOG_INFO), "info");
    assert_string_equal(oa_log_level_name(OA_LOG_WARN), "warn");
    assert_string_equal(oa_log_level_name(OA_LOG_ERROR), "error");
    assert_string_equal(oa_log_level_name((oa_log_level_t)9), "unknown");
}

static void test_long_value(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_INFO);
    char *big = malloc(20001), *want = malloc(20100), *out;

    (void)state;
    assert_non_null(big);
    assert_non_null(want);
    memset(big, 'x', 20000);
    big[20000] = '\0';
    OA_LOG(OA_LOG_INFO, "big", OA_KV_STR("v", big), OA_KV_INT("a", 1), OA_KV_INT("b", 2), OA_KV_INT("c", 3));
    out = capture_end(fp);
    snprintf(want, 20100, "level=info event=big v=%s a=1 b=2 c=3\n", big);
    assert_text_line(out, want);
    free(out);
    free(want);
    free(big);
}

#define WRITERS          4
#define LINES_PER_WRITER 300

static void *writer_thread(void *arg)
{
    int id = (int)(intptr_t)arg, i;
    char pad[200];

    /* Long values make a torn line far more likely if writes were not whole. */
    memset(pad, 'a' + id, sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (i = 0; i < LINES_PER_WRITER; i++)
        OA_LOG(OA_LOG_INFO, "w", OA_KV_INT("id", id), OA_KV_INT("i", i), OA_KV_STR("pad", pad));
    return NULL;
}

static void test_concurrent_lines_whole(void **state)
{
    FILE *fp = capture_begin(OA_LOG_TEXT, OA_LOG_INFO);
    pthread_t threads[WRITERS];
    int counts[WRITERS] = {0};
    char *out, *line, *save = NULL, pad[200], want[300];
    int t, id, i, n, lines = 0;

    (void)state;
    for (t = 0; t < WRITERS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, writer_thread, (void *)(intptr_t)t), 0);
    for (t = 0; t < WRITERS; t++)
        assert_int_equal(pthread_join(threads[t], NULL), 0);
    out = capture_end(fp);

    for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        assert_true(matches("^ts=" TS_PATTERN " level=info event=w id=[0-9] i=[0-9]+ pad=[a-z]+$", line));
        assert_int_equal(sscanf(strstr(line, "id="), "id=%d i=%d%n", &id, &i, &n), 2);
        assert_true(id >= 0 && id < WRITERS);
        /* Each writer's lines arrive complete and in its own order. */
        assert_int_equal(i, counts[id]);
        counts[id]++;
        memset(pad, 'a' + id, sizeof(pad) - 1);
        pad[sizeof(pad) - 1] = '\0';
        snprintf(want, sizeof(want), " pad=%s", pad);
        assert_string_equal(strstr(line, " pad="), want);
        lines++;
    }
    assert_int_equal(lines, WRITERS * LINES_PER_WRITER);
    for (t = 0; t < WRITERS; t++)
        assert_int_equal(counts[t], LINES_PER_WRITER);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_basic),        cmocka_unit_test(test_text_no_kv),
        cmocka_unit_test(test_text_quoting),      cmocka_unit_test(test_text_types),
        cmocka_unit_test(test_text_event_quoted), cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_json_typed_values), cmocka_unit_test(test_json_key_order),
        cmocka_unit_test(test_level_filtering),   cmocka_unit_test(test_parse),
        cmocka_unit_test(test_long_value),        cmocka_unit_test(test_concurrent_lines_whole),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
