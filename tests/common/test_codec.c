/*
 * The shared text encodings: the inside of a JSON string and base64 (common/codec.c), table-driven.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "oa_codec.h"

static void test_json_escape(void **state)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"", ""},
        {"plain text", "plain text"},
        {"a\"b\\c", "a\\\"b\\\\c"},
        {"\b\f\n\r\t", "\\b\\f\\n\\r\\t"},
        {"\x01\x1f", "\\u0001\\u001f"},
        {"\x7f", "\x7f"},
        {"caf\xc3\xa9", "caf\xc3\xa9"},                   /* valid two-byte sequence kept */
        {"\xe2\x82\xac \xf0\x9f\x94\x92", "\xe2\x82\xac \xf0\x9f\x94\x92"}, /* three and four bytes */
        {"\xff", "\\ufffd"},                               /* never valid */
        {"\xc0\xaf", "\\ufffd\\ufffd"},                    /* overlong '/' */
        {"\xed\xa0\x80", "\\ufffd\\ufffd\\ufffd"},         /* a surrogate */
        {"\xf4\x90\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd"}, /* above U+10FFFF */
        {"\xe2\x82", "\\ufffd\\ufffd"},                    /* cut short */
    };
    oa_buf_t b;
    json_t *j;
    char quoted[256];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        oa_buf_init(&b);
        assert_int_equal(oa_json_escape(&b, cases[i].in), 0);
        if (strcmp(b.len ? b.data : "", cases[i].out) != 0)
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, b.len ? b.data : "", cases[i].out);
        /* Whatever went in, what comes out is a valid JSON string. */
        snprintf(quoted, sizeof(quoted), "[\"%s\"]", b.len ? b.data : "");
        j = json_loads(quoted, 0, NULL);
        if (j == NULL)
            fail_msg("case %zu: %s is not valid JSON", i, quoted);
        json_decref(j);
        oa_buf_free(&b);
    }
}

static void test_base64(void **state)
{
    static const struct {
        const char *raw;
        const char *b64;
    } good[] = {
        {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"\xff\xfe\x00", "//4A"},
    };
    static const char *const bad[] = {
        "",       /* nothing */
        "Zg=",    /* not a multiple of four */
        "Zh==",   /* bits set in the padding */
        "Zm9=",   /* bits set in the padding */
        "Z===",   /* three '=' */
        "Zg=a",   /* '=' inside */
        "Zm 9",   /* a space */
        "Zm9-",   /* the URL alphabet */
        "Zm9v\n", /* a trailing newline */
    };
    unsigned char out[16];
    oa_buf_t b;
    size_t i, len;
    size_t n;

    (void)state;
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        len = strlen(good[i].raw) + (good[i].raw[0] == '\xff'); /* the NUL in the last case */
        oa_buf_init(&b);
        assert_int_equal(oa_base64_encode(&b, good[i].raw, len), 0);
        assert_int_equal(b.len, strlen(good[i].b64));
        assert_string_equal(b.data, good[i].b64);
        oa_buf_free(&b);
        assert_int_equal(oa_base64_decode(good[i].b64, strlen(good[i].b64), out, sizeof(out), &n), 0);
        assert_int_equal(n, len);
        assert_memory_equal(out, good[i].raw, len);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (oa_base64_decode(bad[i], strlen(bad[i]), out, sizeof(out), &n) != UV_EINVAL)
            fail_msg("bad case %zu (\"%s\") accepted", i, bad[i]);
    /* Too large for the output: refused, nothing written past it. */
    assert_int_equal(oa_base64_decode("Zm9vYmFy", 8, out, 5, &n), UV_EINVAL);
    /* Appending keeps what was there. */
    oa_buf_init(&b);
    assert_int_equal(oa_buf_append_str(&b, "set ssl ocsp-response "), 0);
    assert_int_equal(oa_base64_encode(&b, "foo", 3), 0);
    assert_string_equal(b.data, "set ssl ocsp-response Zm9v");
    oa_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_base64),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
