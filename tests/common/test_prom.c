/*
 * The Prometheus writer (common/prom.c): family headers, samples with zero, one and two labels, the three kinds of
 * value, and the escaping of label values and help texts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "oa_prom.h"
#include "oa_util.h"

static void test_family_header(void **state)
{
    oa_buf_t b;

    (void)state;
    oa_buf_init(&b);
    assert_int_equal(oa_prom_family(&b, "x_total", OA_PROM_COUNTER, "Things, by kind."), 0);
    assert_int_equal(oa_prom_family(&b, "y", OA_PROM_GAUGE, "1 while it holds."), 0);
    assert_string_equal(b.data, "# HELP x_total Things, by kind.\n"
                                "# TYPE x_total counter\n"
                                "# HELP y 1 while it holds.\n"
                                "# TYPE y gauge\n");
    oa_buf_free(&b);
}

/* The format escapes backslash and line feed in help texts, and leaves double quotes alone there. */
static void test_help_escaping(void **state)
{
    oa_buf_t b;

    (void)state;
    oa_buf_init(&b);
    assert_int_equal(oa_prom_family(&b, "z", OA_PROM_GAUGE, "a \"quoted\" C:\\path\nsecond line"), 0);
    assert_string_equal(b.data, "# HELP z a \"quoted\" C:\\\\path\\nsecond line\n# TYPE z gauge\n");
    oa_buf_free(&b);
}

static void test_sample_values(void **state)
{
    oa_buf_t b;

    (void)state;
    oa_buf_init(&b);
    assert_int_equal(oa_prom_sample_u64(&b, "a", NULL, 0, 0), 0);
    assert_int_equal(oa_prom_sample_u64(&b, "a", NULL, 0, UINT64_MAX), 0);
    assert_int_equal(oa_prom_sample_i64(&b, "b", NULL, 0, -42), 0);
    assert_int_equal(oa_prom_sample_i64(&b, "b", NULL, 0, INT64_MIN), 0);
    assert_int_equal(oa_prom_sample_nan(&b, "c", NULL, 0), 0);
    assert_string_equal(b.data, "a 0\n"
                                "a 18446744073709551615\n"
                                "b -42\n"
                                "b -9223372036854775808\n"
                                "c NaN\n");
    oa_buf_free(&b);
}

static void test_sample_labels(void **state)
{
    const oa_prom_label_t two[] = {{"target", "hook:/x"}, {"result", "ok"}};
    oa_buf_t b;

    (void)state;
    oa_buf_init(&b);
    assert_int_equal(oa_prom_sample_u64(&b, "d_total", two, 1, 7), 0);
    assert_int_equal(oa_prom_sample_u64(&b, "d_total", two, 2, 8), 0);
    assert_int_equal(oa_prom_sample_i64(&b, "e", &(oa_prom_label_t){"state", ""}, 1, -1), 0);
    assert_int_equal(oa_prom_sample_nan(&b, "f", two, 2), 0);
    assert_string_equal(b.data, "d_total{target=\"hook:/x\"} 7\n"
                                "d_total{target=\"hook:/x\",result=\"ok\"} 8\n"
                                "e{state=\"\"} -1\n"
                                "f{target=\"hook:/x\",result=\"ok\"} NaN\n");
    oa_buf_free(&b);
}

/* A label value may be operator input (a file path): backslash, double quote and line feed are escaped, nothing
 * else is touched, and an escape at either end or several in a row come out right. */
static void test_label_escaping(void **state)
{
    static const struct {
        const char *value, *want;
    } cases[] = {
        {"plain/path-1.sock", "plain/path-1.sock"},
        {"file:/a \"b\"\\c", "file:/a \\\"b\\\"\\\\c"},
        {"\"", "\\\""},
        {"\\\\", "\\\\\\\\"},
        {"\nx\n", "\\nx\\n"},
        {"tab\there, {braces}=ok", "tab\there, {braces}=ok"},
        {"caf\xc3\xa9", "caf\xc3\xa9"},
    };
    oa_buf_t b, want;
    size_t i;

    (void)state;
    oa_buf_init(&b);
    oa_buf_init(&want);
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        oa_buf_reset(&b);
        oa_buf_reset(&want);
        assert_int_equal(oa_prom_sample_u64(&b, "g", &(oa_prom_label_t){"target", cases[i].value}, 1, 1), 0);
        assert_int_equal(oa_buf_printf(&want, "g{target=\"%s\"} 1\n", cases[i].want), 0);
        assert_string_equal(b.data, want.data);
    }
    oa_buf_free(&want);
    oa_buf_free(&b);
}

/* A whole family as a producer writes it: the header once, then one line per series. */
static void test_family_with_samples(void **state)
{
    static const char *const results[] = {"ok", "failed"};
    oa_buf_t b;
    size_t i;

    (void)state;
    oa_buf_init(&b);
    assert_int_equal(oa_prom_family(&b, "ocsp_agent_reloads_total", OA_PROM_COUNTER,
                                    "Reloads of a group of files (SIGHUP), by result."),
                     0);
    for (i = 0; i < OA_ARRAY_SIZE(results); i++)
        assert_int_equal(oa_prom_sample_u64(&b, "ocsp_agent_reloads_total",
                                            &(oa_prom_label_t){"result", results[i]}, 1, i + 2),
                         0);
    assert_string_equal(b.data, "# HELP ocsp_agent_reloads_total Reloads of a group of files (SIGHUP), by result.\n"
                                "# TYPE ocsp_agent_reloads_total counter\n"
                                "ocsp_agent_reloads_total{result=\"ok\"} 2\n"
                                "ocsp_agent_reloads_total{result=\"failed\"} 3\n");
    oa_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_header),      cmocka_unit_test(test_help_escaping),
        cmocka_unit_test(test_sample_values),      cmocka_unit_test(test_sample_labels),
        cmocka_unit_test(test_label_escaping),     cmocka_unit_test(test_family_with_samples),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
