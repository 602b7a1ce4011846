/*
 * The OCSP configuration object: the PUT validator driven by the cases in tests/data/put/{valid,invalid}/, a
 * validated patch applied to other configurations, the persisted file, the stored form the cluster keeps, the
 * change-mask names and the API object.
 *
 * A case file is one JSON object:
 *   body | body_hex   the raw request body, as a string or as hex for bytes a JSON string cannot carry
 *   current           the settings before the PUT (absent keys take the defaults)
 *   responder_url     the current responder URL, or null for none
 *   expect_code       null for a valid body, else "invalid_schema" or "no_responder_url"
 *   expect, changed   valid cases: all five settings afterwards and the names of the keys that changed
 *   error_contains    invalid cases: a piece of the error sentence
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "oa_conf.h"
#include "oa_util.h"

#define MIN_INVALID_CASES 30
#define MIN_VALID_CASES   10

static const char *const key_names[] = {"ocsp_functionality", "query_frequency", "response_timeout",
                                        "recovery_frequency", "recovery_max_tries"};
static const unsigned key_flags[] = {OA_CONF_F_OCSP_FUNCTIONALITY, OA_CONF_F_QUERY_FREQUENCY,
                                     OA_CONF_F_RESPONSE_TIMEOUT, OA_CONF_F_RECOVERY_FREQUENCY,
                                     OA_CONF_F_RECOVERY_MAX_TRIES};

/* A configuration with no setting at its default, for the JSON forms. */
static const oa_conf_t sample = {.ocsp_functionality = true,
                                 .query_frequency = 120,
                                 .response_timeout = 7,
                                 .recovery_frequency = 90,
                                 .recovery_max_tries = 3};

/* Fails the running test with the case file's name in the message. */
#define CASE_CHECK(cond, ...)                                                                                        \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            print_error("%s: ", name);                                                                               \
            print_error(__VA_ARGS__);                                                                                \
            print_error("\n");                                                                                       \
            fail();                                                                                                  \
        }                                                                                                            \
    } while (0)

static void conf_fill(oa_conf_t *c, const json_t *obj, const char *name)
{
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)obj, key, v) {
        if (strcmp(key, "ocsp_functionality") == 0) {
            CASE_CHECK(json_is_boolean(v), "ocsp_functionality in the case must be a boolean");
            c->ocsp_functionality = json_is_true(v);
        } else if (strcmp(key, "query_frequency") == 0) {
            c->query_frequency = (int)json_integer_value(v);
        } else if (strcmp(key, "response_timeout") == 0) {
            c->response_timeout = (int)json_integer_value(v);
        } else if (strcmp(key, "recovery_frequency") == 0) {
            c->recovery_frequency = (int)json_integer_value(v);
        } else if (strcmp(key, "recovery_max_tries") == 0) {
            c->recovery_max_tries = (int)json_integer_value(v);
        } else {
            CASE_CHECK(0, "unexpected key \"%s\" in a settings object", key);
        }
    }
}

static unsigned mask_from_names(const json_t *arr, const char *name)
{
    unsigned mask = 0;
    size_t i, k;
    json_t *v;

    CASE_CHECK(json_is_array(arr), "\"changed\" must be an array");
    json_array_foreach(arr, i, v) {
        for (k = 0; k < OA_ARRAY_SIZE(key_names); k++) {
            if (json_is_string(v) && strcmp(json_string_value(v), key_names[k]) == 0)
                break;
        }
        CASE_CHECK(k < OA_ARRAY_SIZE(key_names), "\"changed\" holds an unknown name");
        mask |= key_flags[k];
    }
    return mask;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The case's body as raw bytes (malloc'ed, *len set). */
static char *case_body(const json_t *doc, size_t *len, const char *name)
{
    json_t *body = json_object_get(doc, "body"), *hex = json_object_get(doc, "body_hex");
    const char *h;
    size_t i, n;
    char *out;

    CASE_CHECK((body != NULL) != (hex != NULL), "exactly one of body and body_hex must be given");
    if (body != NULL) {
        CASE_CHECK(json_is_string(body), "body must be a string");
        n = json_string_length(body);
        out = malloc(n + 1);
        assert_non_null(out);
        memcpy(out, json_string_value(body), n);
        *len = n;
        return out;
    }
    CASE_CHECK(json_is_string(hex), "body_hex must be a string");
    h = json_string_value(hex);
    n = strlen(h);
    CASE_CHECK(n % 2 == 0, "body_hex must have an even length");
    out = malloc(n / 2 + 1);
    assert_non_null(out);
    for (i = 0; i < n / 2; i++) {
        int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);

        CASE_CHECK(hi >= 0 && lo >= 0, "body_hex holds a non-hex digit");
        out[i] = (char)(hi << 4 | lo);
    }
    *len = n / 2;
    return out;
}

/* Error sentences are sent in JSON bodies and logs: they must be non-empty printable ASCII. */
static int printable_sentence(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return 0;
    }
    return 1;
}

static void run_case(const char *path, const char *name, int want_valid)
{
    json_t *doc, *url_j, *code_j, *v;
    json_error_t jerr;
    oa_conf_t cur, out, sentinel, expect;
    unsigned changed, want_mask;
    oa_error_t err;
    char *body;
    size_t len;
    int rc;

    doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    CASE_CHECK(doc != NULL && json_is_object(doc), "case file unreadable: %s", jerr.text);
    body = case_body(doc, &len, name);

    oa_conf_defaults(&cur);
    if ((v = json_object_get(doc, "current")) != NULL)
        conf_fill(&cur, v, name);
    url_j = json_object_get(doc, "responder_url");
    CASE_CHECK(url_j == NULL || json_is_null(url_j) || json_is_string(url_j), "responder_url must be a string");
    code_j = json_object_get(doc, "expect_code");
    CASE_CHECK(code_j != NULL && (json_is_null(code_j) || json_is_string(code_j)), "expect_code missing");
    CASE_CHECK(json_is_null(code_j) == want_valid, "expect_code does not match the folder the case is in");

    /* Out-parameters start as a recognisable pattern so a failed call can be seen to leave them alone. */
    memset(&sentinel, 0x5a, sizeof(sentinel));
    out = sentinel;
    changed = 0xdeadbeefu;
    oa_error_clear(&err);
    rc = oa_conf_patch(&cur, json_string_value(url_j), body, len, &out, &changed, &err);

    if (want_valid) {
        CASE_CHECK(rc == 0, "expected success, got %d: %s", rc, err.text);
        CASE_CHECK(err.code == OA_OK, "error code set on success");
        oa_conf_defaults(&expect);
        v = json_object_get(doc, "expect");
        CASE_CHECK(json_is_object(v) && json_object_size(v) == 5, "expect must hold all five settings");
        conf_fill(&expect, v, name);
        CASE_CHECK(out.ocsp_functionality == expect.ocsp_functionality, "ocsp_functionality %d, want %d",
                   out.ocsp_functionality, expect.ocsp_functionality);
        CASE_CHECK(out.query_frequency == expect.query_frequency, "query_frequency %d, want %d", out.query_frequency,
                   expect.query_frequency);
        CASE_CHECK(out.response_timeout == expect.response_timeout, "response_timeout %d, want %d",
                   out.response_timeout, expect.response_timeout);
        CASE_CHECK(out.recovery_frequency == expect.recovery_frequency, "recovery_frequency %d, want %d",
                   out.recovery_frequency, expect.recovery_frequency);
        CASE_CHECK(out.recovery_max_tries == expect.recovery_max_tries, "recovery_max_tries %d, want %d",
                   out.recovery_max_tries, expect.recovery_max_tries);
        want_mask = mask_from_names(json_object_get(doc, "changed"), name);
        CASE_CHECK(changed == want_mask, "changed mask 0x%x, want 0x%x", changed, want_mask);
    } else {
        const char *want_code = json_string_value(code_j), *piece;

        CASE_CHECK(rc == -1, "expected failure, got %d", rc);
        CASE_CHECK(strcmp(oa_errcode_name(err.code), want_code) == 0, "error code %s, want %s (%s)",
                   oa_errcode_name(err.code), want_code, err.text);
        CASE_CHECK(memcmp(&out, &sentinel, sizeof(out)) == 0, "*out was written on failure");
        CASE_CHECK(changed == 0xdeadbeefu, "*changed was written on failure");
        CASE_CHECK(printable_sentence(err.text), "error sentence empty or not printable ASCII: %s", err.text);
        piece = json_string_value(json_object_get(doc, "error_contains"));
        CASE_CHECK(piece != NULL, "invalid cases must give error_contains");
        CASE_CHECK(strstr(err.text, piece) != NULL, "error \"%s\" lacks \"%s\"", err.text, piece);
    }
    free(body);
    json_decref(doc);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every *.json case in tests/data/put/<folder>, in name order, and returns how many there were. */
static size_t run_folder(const char *folder, int want_valid)
{
    const char *data = getenv("OA_TEST_DATA");
    char dir[1024], path[1400];
    char *names[512];
    struct dirent *de;
    size_t n = 0, i, l;
    DIR *d;

    assert_non_null(data);
    snprintf(dir, sizeof(dir), "%s/put/%s", data, folder);
    d = opendir(dir);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        l = strlen(de->d_name);
        if (l <= 5 || strcmp(de->d_name + l - 5, ".json") != 0)
            continue;
        assert_true(n < OA_ARRAY_SIZE(names));
        names[n] = strdup(de->d_name);
        assert_non_null(names[n]);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), cmp_names);
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        run_case(path, names[i], want_valid);
        free(names[i]);
    }
    return n;
}

static void test_put_valid_cases(void **state)
{
    (void)state;
    assert_true(run_folder("valid", 1) >= MIN_VALID_CASES);
}

static void test_put_invalid_cases(void **state)
{
    (void)state;
    assert_true(run_folder("invalid", 0) >= MIN_INVALID_CASES);
}

static void test_patch_does_not_read_past_len(void **state)
{
    /* The body is not NUL-terminated: only the first len bytes count. */
    const char buf[] = "{\"query_frequency\": 120}garbage";
    oa_conf_t cur, out;
    unsigned changed = 0;
    oa_error_t err;

    (void)state;
    oa_conf_defaults(&cur);
    assert_int_equal(oa_conf_patch(&cur, "http://ocsp.example.com/", buf, 24, &out, &changed, &err), 0);
    assert_int_equal(out.query_frequency, 120);
    assert_int_equal(changed, OA_CONF_F_QUERY_FREQUENCY);
    assert_int_equal(oa_conf_patch(&cur, "http://ocsp.example.com/", buf, sizeof(buf) - 1, &out, &changed, &err), -1);
    assert_int_equal(err.code, OA_E_INVALID_SCHEMA);
}

/* A body is validated once and may be applied later to another configuration: only the keys it carries move. */
static void test_patch_parse_then_apply(void **state)
{
    static const char body[] = "{\"response_timeout\": 7, \"query_frequency\": 3600}";
    oa_conf_t a, b, out, sentinel;
    oa_conf_patch_t p, untouched;
    unsigned changed;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_conf_patch_parse("http://ocsp.example.com/", body, strlen(body), &p, &err), 0);
    assert_int_equal(p.set, OA_CONF_F_RESPONSE_TIMEOUT | OA_CONF_F_QUERY_FREQUENCY);

    oa_conf_defaults(&a);
    changed = oa_conf_patch_apply(&p, &a, &out);
    /* query_frequency was carried with the value a already has: set, but not changed. */
    assert_int_equal(changed, OA_CONF_F_RESPONSE_TIMEOUT);
    assert_int_equal(out.response_timeout, 7);
    assert_int_equal(out.query_frequency, 3600);
    assert_int_equal(out.recovery_max_tries, 5);

    /* The same patch on another configuration keeps that one's other settings. */
    b = (oa_conf_t){.ocsp_functionality = true,
                    .query_frequency = 120,
                    .response_timeout = 7,
                    .recovery_frequency = 90,
                    .recovery_max_tries = 9};
    changed = oa_conf_patch_apply(&p, &b, &b);
    assert_int_equal(changed, OA_CONF_F_QUERY_FREQUENCY);
    assert_true(b.ocsp_functionality);
    assert_int_equal(b.query_frequency, 3600);
    assert_int_equal(b.response_timeout, 7);
    assert_int_equal(b.recovery_frequency, 90);
    assert_int_equal(b.recovery_max_tries, 9);

    /* An empty object carries nothing and changes nothing. */
    assert_int_equal(oa_conf_patch_parse(NULL, "{}", 2, &p, &err), 0);
    assert_int_equal(p.set, 0);
    memset(&sentinel, 0x5a, sizeof(sentinel));
    sentinel.ocsp_functionality = true;
    assert_int_equal(oa_conf_patch_apply(&p, &sentinel, &out), 0);
    assert_memory_equal(&out, &sentinel, sizeof(out));

    /* A refused body leaves the patch alone. */
    memset(&untouched, 0x5a, sizeof(untouched));
    p = untouched;
    assert_int_equal(oa_conf_patch_parse(NULL, "{\"ocsp_functionality\": true}", 28, &p, &err), -1);
    assert_int_equal(err.code, OA_E_NO_RESPONDER_URL);
    assert_memory_equal(&p, &untouched, sizeof(p));
}

static void test_stored_json(void **state)
{
    oa_conf_t c = sample;
    oa_conf_t back;
    oa_error_t err;
    json_t *obj;
    char *text;

    (void)state;
    obj = oa_conf_stored_json(&c);
    assert_non_null(obj);
    text = json_dumps(obj, JSON_COMPACT);
    assert_non_null(text);
    /* The API object's settings in its order, without the node's own responder_url. */
    assert_string_equal(text, "{\"ocsp_functionality\":true,\"query_frequency\":120,\"response_timeout\":7,"
                              "\"recovery_frequency\":90,\"recovery_max_tries\":3}");
    free(text);
    memset(&back, 0, sizeof(back));
    assert_int_equal(oa_conf_from_stored(obj, &back, &err), 0);
    assert_int_equal(oa_conf_diff(&c, &back), 0);
    json_decref(obj);
}

/* The stored form is read with the same table as a PUT: every setting present, of its type and in range; members it
 * does not know are left for versions that know them. */
static void test_from_stored(void **state)
{
#define ALL_BUT_FIRST                                                                                                \
    "\"query_frequency\":3600,\"response_timeout\":10,\"recovery_frequency\":60,\"recovery_max_tries\":5"
    static const struct {
        const char *text; /* NULL: a NULL object */
        int rc;
        const char *piece; /* a piece of the error sentence */
    } cases[] = {
        {"{\"ocsp_functionality\":true," ALL_BUT_FIRST "}", 0, NULL},
        {"{" ALL_BUT_FIRST ",\"ocsp_functionality\":false}", 0, NULL},
        {"{\"ocsp_functionality\":true," ALL_BUT_FIRST ",\"responder_url\":\"http://elsewhere/\"}", 0, NULL},
        {"{\"ocsp_functionality\":true," ALL_BUT_FIRST ",\"version\":99,\"a_later_key\":[1]}", 0, NULL},
        {"{\"ocsp_functionality\":false,\"query_frequency\":86400,\"response_timeout\":1,"
         "\"recovery_frequency\":86400,\"recovery_max_tries\":100}",
         0, NULL},
        {NULL, -1, "not a JSON object"},
        {"[]", -1, "not a JSON object"},
        {"\"{}\"", -1, "not a JSON object"},
        {"{}", -1, "ocsp_functionality: missing"},
        {"{" ALL_BUT_FIRST "}", -1, "ocsp_functionality: missing"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":10,\"recovery_frequency\":60}",
         -1, "recovery_max_tries: missing"},
        {"{\"ocsp_functionality\":1," ALL_BUT_FIRST "}", -1,
         "ocsp_functionality: must be true or false, got an integer"},
        {"{\"ocsp_functionality\":null," ALL_BUT_FIRST "}", -1, "got null"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":\"3600\",\"response_timeout\":10,"
         "\"recovery_frequency\":60,\"recovery_max_tries\":5}",
         -1, "query_frequency: must be an integer from 60 to 86400, got a string"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":3600.0,\"response_timeout\":10,"
         "\"recovery_frequency\":60,\"recovery_max_tries\":5}",
         -1, "got a number with a fraction or exponent"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":59,\"response_timeout\":10,"
         "\"recovery_frequency\":60,\"recovery_max_tries\":5}",
         -1, "query_frequency: must be an integer from 60 to 86400, got 59"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":61,"
         "\"recovery_frequency\":60,\"recovery_max_tries\":5}",
         -1, "response_timeout: must be an integer from 1 to 60, got 61"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":10,"
         "\"recovery_frequency\":86401,\"recovery_max_tries\":5}",
         -1, "recovery_frequency: must be an integer from 60 to 86400, got 86401"},
        {"{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":10,"
         "\"recovery_frequency\":60,\"recovery_max_tries\":4294967297}",
         -1, "recovery_max_tries: must be an integer from 1 to 100, got 4294967297"},
    };
#undef ALL_BUT_FIRST
    json_error_t jerr;
    oa_conf_t c;
    oa_error_t err;
    json_t *o;
    size_t i;
    int rc;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        o = cases[i].text != NULL ? json_loads(cases[i].text, JSON_DECODE_ANY, &jerr) : NULL;
        if (cases[i].text != NULL && o == NULL) {
            print_error("case %zu does not parse: %s\n", i, jerr.text);
            fail();
        }
        memset(&c, 0x5a, sizeof(c));
        oa_error_clear(&err);
        rc = oa_conf_from_stored(o, &c, &err);
        json_decref(o);
        if (rc != cases[i].rc || (rc == 0) != (err.code == OA_OK) ||
            (rc != 0 && (err.code != OA_E_INVALID_SCHEMA || strstr(err.text, cases[i].piece) == NULL))) {
            print_error("stored %s: %d, error %d \"%s\", want %d \"%s\"\n", cases[i].text ? cases[i].text : "NULL",
                        rc, err.code, err.text, cases[i].rc, cases[i].piece ? cases[i].piece : "");
            fail();
        }
        if (rc == 0) {
            assert_int_equal(c.recovery_max_tries, i == 4 ? 100 : 5);
            assert_int_equal(c.query_frequency, i == 4 ? 86400 : 3600);
        } else {
            assert_int_equal(c.query_frequency, 0x5a5a5a5a);
            assert_int_equal(c.recovery_max_tries, 0x5a5a5a5a);
        }
    }
}

static void test_defaults(void **state)
{
    oa_conf_t c;

    (void)state;
    memset(&c, 0xff, sizeof(c));
    oa_conf_defaults(&c);
    assert_false(c.ocsp_functionality);
    assert_int_equal(c.query_frequency, 3600);
    assert_int_equal(c.response_timeout, 1);
    assert_int_equal(c.recovery_frequency, 60);
    assert_int_equal(c.recovery_max_tries, 5);
}

static void test_to_json(void **state)
{
    oa_conf_t c = sample;
    json_t *obj;
    char *text;

    (void)state;
    obj = oa_conf_to_json(&c, "http://ocsp.example.com/");
    assert_non_null(obj);
    assert_int_equal(json_object_size(obj), 6);
    assert_true(json_is_true(json_object_get(obj, "ocsp_functionality")));
    assert_string_equal(json_string_value(json_object_get(obj, "responder_url")), "http://ocsp.example.com/");
    assert_true(json_is_integer(json_object_get(obj, "query_frequency")));
    assert_int_equal(json_integer_value(json_object_get(obj, "query_frequency")), 120);
    assert_int_equal(json_integer_value(json_object_get(obj, "response_timeout")), 7);
    assert_int_equal(json_integer_value(json_object_get(obj, "recovery_frequency")), 90);
    assert_int_equal(json_integer_value(json_object_get(obj, "recovery_max_tries")), 3);
    json_decref(obj);

    oa_conf_defaults(&c);
    obj = oa_conf_to_json(&c, NULL);
    assert_non_null(obj);
    text = json_dumps(obj, JSON_COMPACT);
    assert_non_null(text);
    /* The keys come out in the order of the API table. */
    assert_string_equal(text, "{\"ocsp_functionality\":false,\"responder_url\":\"\",\"query_frequency\":3600,"
                              "\"response_timeout\":1,\"recovery_frequency\":60,\"recovery_max_tries\":5}");
    free(text);
    json_decref(obj);
}

static void test_changed_names(void **state)
{
    char buf[128];

    (void)state;
    memset(buf, 'x', sizeof(buf));
    oa_conf_changed_names(0, buf, sizeof(buf));
    assert_string_equal(buf, "");
    oa_conf_changed_names(OA_CONF_F_QUERY_FREQUENCY, buf, sizeof(buf));
    assert_string_equal(buf, "query_frequency");
    oa_conf_changed_names(OA_CONF_F_RECOVERY_MAX_TRIES | OA_CONF_F_OCSP_FUNCTIONALITY, buf, sizeof(buf));
    assert_string_equal(buf, "ocsp_functionality,recovery_max_tries");
    oa_conf_changed_names(0x1f, buf, sizeof(buf));
    assert_string_equal(buf,
                        "ocsp_functionality,query_frequency,response_timeout,recovery_frequency,recovery_max_tries");
    /* A short buffer holds whole names only. */
    oa_conf_changed_names(0x1f, buf, 30);
    assert_string_equal(buf, "ocsp_functionality");
    oa_conf_changed_names(OA_CONF_F_RESPONSE_TIMEOUT, buf, 5);
    assert_string_equal(buf, "");
    buf[0] = 'x';
    oa_conf_changed_names(OA_CONF_F_RESPONSE_TIMEOUT, buf, 0);
    assert_int_equal(buf[0], 'x');
}

typedef struct dir_fixture_s {
    char dir[64];
    char path[128];
} dir_fixture_t;

static int dir_setup(void **state)
{
    dir_fixture_t *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/oa-conf-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/ocsp.json", f->dir);
    *state = f;
    return 0;
}

static int dir_teardown(void **state)
{
    dir_fixture_t *f = *state;

    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    assert_int_equal(oa_file_write_atomic(path, text, strlen(text), 0600), 0);
}

static void test_save_load_round_trip(void **state)
{
    bool found;
    dir_fixture_t *f = *state;
    oa_conf_t c = {.ocsp_functionality = true,
                   .query_frequency = 86400,
                   .response_timeout = 60,
                   .recovery_frequency = 61,
                   .recovery_max_tries = 100};
    oa_conf_t back;
    oa_error_t err;
    struct stat st;
    json_t *doc;
    json_error_t jerr;

    assert_int_equal(oa_conf_save(f->path, &c), 0);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    doc = json_load_file(f->path, 0, &jerr);
    assert_non_null(doc);
    assert_int_equal(json_object_size(doc), 6);
    assert_int_equal(json_integer_value(json_object_get(doc, "version")), 1);
    assert_true(json_is_true(json_object_get(doc, "ocsp_functionality")));
    assert_int_equal(json_integer_value(json_object_get(doc, "recovery_frequency")), 61);
    assert_null(json_object_get(doc, "responder_url"));
    json_decref(doc);

    memset(&back, 0, sizeof(back));
    assert_int_equal(oa_conf_load(f->path, &back, &found, &err), 0);
    assert_true(back.ocsp_functionality);
    assert_int_equal(back.query_frequency, 86400);
    assert_int_equal(back.response_timeout, 60);
    assert_int_equal(back.recovery_frequency, 61);
    assert_int_equal(back.recovery_max_tries, 100);

    /* Saving again replaces the file. */
    oa_conf_defaults(&c);
    assert_int_equal(oa_conf_save(f->path, &c), 0);
    assert_int_equal(oa_conf_load(f->path, &back, &found, &err), 0);
    assert_false(back.ocsp_functionality);
    assert_int_equal(back.query_frequency, 3600);
    assert_int_equal(back.recovery_max_tries, 5);
}

static void test_save_fails_in_missing_dir(void **state)
{
    dir_fixture_t *f = *state;
    char path[160];
    oa_conf_t c;

    oa_conf_defaults(&c);
    snprintf(path, sizeof(path), "%s/absent/ocsp.json", f->dir);
    assert_int_equal(oa_conf_save(path, &c), UV_ENOENT);
}

static void test_load_missing(void **state)
{
    bool found;
    dir_fixture_t *f = *state;
    oa_conf_t c;
    oa_error_t err;

    memset(&c, 0x5a, sizeof(c));
    oa_error_clear(&err);
    assert_int_equal(oa_conf_load(f->path, &c, &found, &err), 0);
    assert_false(found);
    assert_int_equal(c.query_frequency, 0x5a5a5a5a);
}

static void test_load_partial_file(void **state)
{
    bool found;
    dir_fixture_t *f = *state;
    oa_conf_t c;
    oa_error_t err;

    write_file(f->path, "{\"query_frequency\": 120}");
    memset(&c, 0, sizeof(c));
    assert_int_equal(oa_conf_load(f->path, &c, &found, &err), 0);
    assert_false(c.ocsp_functionality);
    assert_int_equal(c.query_frequency, 120);
    assert_int_equal(c.response_timeout, 1);
    assert_int_equal(c.recovery_frequency, 60);
    assert_int_equal(c.recovery_max_tries, 5);

    /* Enabled without a URL is a valid file: the URL is not known when the file is read. */
    write_file(f->path, "{\"version\": 1, \"ocsp_functionality\": true}\n");
    assert_int_equal(oa_conf_load(f->path, &c, &found, &err), 0);
    assert_true(c.ocsp_functionality);
    assert_int_equal(c.query_frequency, 3600);
}

static void test_load_corrupt(void **state)
{
    bool found;
    static const struct {
        const char *text;
        const char *piece;
    } cases[] = {
        {"", "empty"},
        {"not json", "invalid JSON at line 1"},
        {"{\"query_frequency\": 120", "invalid JSON"},
        {"[]", "not a JSON object"},
        {"{\"query_frequency\": \"120\"}", "query_frequency: must be an integer from 60 to 86400, got a string"},
        {"{\"query_frequency\": 120.0}", "query_frequency: must be an integer"},
        {"{\"query_frequency\": 59}", "got 59"},
        {"{\"response_timeout\": 61}", "response_timeout: must be an integer from 1 to 60, got 61"},
        {"{\"recovery_max_tries\": 0}", "recovery_max_tries: must be an integer from 1 to 100, got 0"},
        {"{\"recovery_frequency\": null}", "got null"},
        {"{\"ocsp_functionality\": 1}", "ocsp_functionality: must be true or false"},
        {"{\"version\": 2}", "version: must be 1"},
        {"{\"version\": \"1\"}", "version: must be 1"},
        {"{\"responder_url\": \"http://ocsp.example.com/\"}", "unknown key \"responder_url\""},
        {"{\"extra\": true}", "unknown key \"extra\""},
        {"{\"version\": 1, \"version\": 1}", "duplicate"},
        {"{} {}", "invalid JSON"},
    };
    dir_fixture_t *f = *state;
    oa_conf_t c;
    oa_error_t err;
    size_t i;

    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        write_file(f->path, cases[i].text);
        memset(&c, 0x5a, sizeof(c));
        oa_error_clear(&err);
        if (oa_conf_load(f->path, &c, &found, &err) != -1 || err.code != OA_E_BAD_FILE ||
            strstr(err.text, cases[i].piece) == NULL || strstr(err.text, f->path) != err.text) {
            print_error("file %s: error %d \"%s\", want \"%s\"\n", cases[i].text, err.code, err.text, cases[i].piece);
            fail();
        }
        assert_int_equal(c.query_frequency, 0x5a5a5a5a);
        assert_int_equal(c.recovery_max_tries, 0x5a5a5a5a);
    }
}

static void test_load_too_large(void **state)
{
    bool found;
    dir_fixture_t *f = *state;
    size_t n = 70 * 1024;
    char *big = malloc(n + 1);
    oa_conf_t c;
    oa_error_t err;

    assert_non_null(big);
    /* Valid JSON, just far larger than a settings file can be. */
    memset(big, ' ', n);
    memcpy(big, "{}", 2);
    big[n] = '\0';
    write_file(f->path, big);
    free(big);
    memset(&c, 0x5a, sizeof(c));
    assert_int_equal(oa_conf_load(f->path, &c, &found, &err), -1);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, "larger than"));
    assert_int_equal(c.query_frequency, 0x5a5a5a5a);
}

static void test_load_unreadable(void **state)
{
    bool found;
    dir_fixture_t *f = *state;
    oa_conf_t c;
    oa_error_t err;

    /* A directory in place of the file cannot be read as one. */
    assert_int_equal(mkdir(f->path, 0700), 0);
    memset(&c, 0x5a, sizeof(c));
    assert_int_equal(oa_conf_load(f->path, &c, &found, &err), -1);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, "cannot read"));
    assert_int_equal(c.query_frequency, 0x5a5a5a5a);
    assert_int_equal(rmdir(f->path), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_valid_cases),
        cmocka_unit_test(test_put_invalid_cases),
        cmocka_unit_test(test_patch_does_not_read_past_len),
        cmocka_unit_test(test_patch_parse_then_apply),
        cmocka_unit_test(test_stored_json),
        cmocka_unit_test(test_from_stored),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_to_json),
        cmocka_unit_test(test_changed_names),
        cmocka_unit_test_setup_teardown(test_save_load_round_trip, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_save_fails_in_missing_dir, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_load_missing, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_load_partial_file, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_load_corrupt, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_load_too_large, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_load_unreadable, dir_setup, dir_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
