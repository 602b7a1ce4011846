/*
 * The shared helpers: the byte buffer, time formatting, whole-file reads, atomic writes and removal, path joining,
 * constant-time comparison, and the error table with its sentence helpers.
 */
#include <dirent.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "oa_error.h"
#include "oa_util.h"

/* ---- oa_buf_t ---- */

static void test_buf_append(void **state)
{
    oa_buf_t b;

    (void)state;
    oa_buf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);

    /* Appending nothing still yields a usable empty C string. */
    assert_int_equal(oa_buf_append(&b, "", 0), 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    assert_int_equal(b.len, 0);

    assert_int_equal(oa_buf_append(&b, "abc", 3), 0);
    assert_int_equal(oa_buf_append_str(&b, "def"), 0);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abcdef");
    assert_true(b.cap > b.len);

    /* Binary bytes, NULs included, are kept; the terminator follows them. */
    assert_int_equal(oa_buf_append(&b, "x\0y", 3), 0);
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data, "abcdefx\0y", 9);
    assert_int_equal(b.data[9], '\0');
    oa_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);

    /* A freed buffer is reusable. */
    assert_int_equal(oa_buf_append_str(&b, "again"), 0);
    assert_string_equal(b.data, "again");
    oa_buf_free(&b);
}

static void test_buf_printf_growth(void **state)
{
    oa_buf_t b = {0};
    char expect[4096];
    size_t i, off = 0;

    (void)state;
    assert_int_equal(oa_buf_printf(&b, "%s=%d", "n", 42), 0);
    assert_string_equal(b.data, "n=42");
    assert_int_equal(b.len, 4);
    off = (size_t)snprintf(expect, sizeof(expect), "n=42");
    /* Grow well past the first allocation, one formatted piece at a time. */
    for (i = 0; i < 300; i++) {
        assert_int_equal(oa_buf_printf(&b, ",%03zu", i), 0);
        off += (size_t)snprintf(expect + off, sizeof(expect) - off, ",%03zu", i);
    }
    assert_int_equal(b.len, off);
    assert_int_equal(b.len, 4 + 300 * 4);
    assert_string_equal(b.data, expect);
    assert_true(b.cap >= b.len + 1);

    /* An empty format appends nothing and keeps the text intact. */
    assert_int_equal(oa_buf_printf(&b, "%s", ""), 0);
    assert_int_equal(b.len, off);
    assert_string_equal(b.data, expect);
    oa_buf_free(&b);
}

static void test_buf_reserve(void **state)
{
    oa_buf_t b = {0};
    char *before;

    (void)state;
    assert_int_equal(oa_buf_append_str(&b, "keep"), 0);
    assert_int_equal(oa_buf_reserve(&b, 10000), 0);
    assert_int_equal(b.len, 4);
    assert_true(b.cap >= 10005);
    assert_string_equal(b.data, "keep");
    /* A request that can never fit fails and leaves the buffer as it was. */
    before = b.data;
    assert_int_equal(oa_buf_reserve(&b, SIZE_MAX), UV_ENOMEM);
    assert_int_equal(oa_buf_append(&b, "x", SIZE_MAX - 2), UV_ENOMEM);
    assert_ptr_equal(b.data, before);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "keep");
    oa_buf_free(&b);
}

static void test_buf_consume_reset(void **state)
{
    oa_buf_t b = {0};
    size_t cap;

    (void)state;
    assert_int_equal(oa_buf_append_str(&b, "GET / HTTP/1.1\r\n"), 0);
    oa_buf_consume(&b, 4);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.data, "/ HTTP/1.1\r\n");
    oa_buf_consume(&b, 0);
    assert_string_equal(b.data, "/ HTTP/1.1\r\n");
    oa_buf_consume(&b, 11);
    assert_int_equal(b.len, 1);
    assert_string_equal(b.data, "\n");
    oa_buf_consume(&b, 1);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");

    assert_int_equal(oa_buf_append_str(&b, "more text"), 0);
    cap = b.cap;
    oa_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    /* Reset keeps the allocation for reuse. */
    assert_int_equal(b.cap, cap);
    assert_int_equal(oa_buf_append_str(&b, "xy"), 0);
    assert_string_equal(b.data, "xy");
    oa_buf_free(&b);

    /* Resetting a buffer that never allocated is harmless. */
    oa_buf_reset(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

/* ---- time ---- */

static void test_time_rfc1123(void **state)
{
    static const struct {
        time_t t;
        const char *s;
    } cases[] = {
        {1640177411, "Wed, 22 Dec 2021 12:50:11 GMT"}, {0, "Thu, 01 Jan 1970 00:00:00 GMT"},
        {951782400, "Tue, 29 Feb 2000 00:00:00 GMT"},  {1709164799, "Wed, 28 Feb 2024 23:59:59 GMT"},
        {2147483647, "Tue, 19 Jan 2038 03:14:07 GMT"}, {4102444800, "Fri, 01 Jan 2100 00:00:00 GMT"},
    };
    char out[OA_RFC1123_LEN];
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        memset(out, 'x', sizeof(out));
        assert_ptr_equal(oa_time_rfc1123(cases[i].t, out), out);
        assert_string_equal(out, cases[i].s);
    }
}

static void test_time_iso8601(void **state)
{
    char out[OA_ISO8601_LEN];
    int64_t now, wall;

    (void)state;
    assert_string_equal(oa_time_iso8601_ms(1640177411123LL, out), "2021-12-22T12:50:11.123Z");
    assert_string_equal(oa_time_iso8601_ms(1640177411005LL, out), "2021-12-22T12:50:11.005Z");
    assert_string_equal(oa_time_iso8601_ms(0, out), "1970-01-01T00:00:00.000Z");
    assert_string_equal(oa_time_iso8601_ms(951868799999LL, out), "2000-02-29T23:59:59.999Z");

    now = oa_time_now_ms();
    wall = (int64_t)time(NULL) * 1000;
    assert_true(now >= wall - 2000 && now <= wall + 2000);
}

/* ---- files ---- */

typedef struct dir_fixture_s {
    char dir[64];
} dir_fixture_t;

static int dir_setup(void **state)
{
    dir_fixture_t *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/oa-util-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    *state = f;
    return 0;
}

/* Removes the files a test left (one level deep) and the directory itself. */
static int dir_teardown(void **state)
{
    dir_fixture_t *f = *state;
    struct dirent *de;
    char path[512];
    DIR *d = opendir(f->dir);

    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", f->dir, de->d_name);
        if (unlink(path) != 0)
            rmdir(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* The names in dir, sorted and joined with spaces, into out. */
static void list_dir(const char *dir, char *out, size_t outlen)
{
    char *names[32];
    struct dirent *de;
    size_t n = 0, i, used = 0;
    DIR *d = opendir(dir);

    out[0] = '\0';
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        assert_true(n < OA_ARRAY_SIZE(names));
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    for (i = 0; i < n; i++) {
        size_t j;

        for (j = i + 1; j < n; j++) {
            if (strcmp(names[j], names[i]) < 0) {
                char *t = names[i];

                names[i] = names[j];
                names[j] = t;
            }
        }
        used += (size_t)snprintf(out + used, outlen - used, "%s%s", i ? " " : "", names[i]);
        free(names[i]);
    }
}

static void write_raw(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");

    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void test_file_write_atomic(void **state)
{
    dir_fixture_t *f = *state;
    char *path = oa_path_join(f->dir, "state.json");
    const char content[] = "{\"a\":1}\n\0binary";
    struct stat st;
    ino_t first;
    oa_buf_t b = {0};
    char names[256];
    mode_t old_umask = umask(022);

    assert_non_null(path);
    assert_int_equal(oa_file_write_atomic(path, content, sizeof(content), 0600), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, sizeof(content));
    first = st.st_ino;
    assert_int_equal(oa_file_read(path, 1024, &b), 0);
    assert_int_equal(b.len, sizeof(content));
    assert_memory_equal(b.data, content, sizeof(content));
    /* Only the target is left behind, no temporary file. */
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "state.json");

    /* Replacing goes through a new file renamed over the old one. */
    assert_int_equal(oa_file_write_atomic(path, "new", 3, 0644), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    assert_true(st.st_ino != first);
    assert_int_equal(oa_file_read(path, 1024, &b), 0);
    assert_string_equal(b.data, "new");
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "state.json");

    /* An empty write gives an empty file. */
    assert_int_equal(oa_file_write_atomic(path, "", 0, 0600), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0);

    umask(old_umask);
    oa_buf_free(&b);
    free(path);
}

static void test_file_write_atomic_failure(void **state)
{
    dir_fixture_t *f = *state;
    char path[256], names[256], blocker[256];
    oa_buf_t b = {0};

    /* A missing directory: negative, and nothing is created anywhere. */
    snprintf(path, sizeof(path), "%s/missing/state.json", f->dir);
    assert_int_equal(oa_file_write_atomic(path, "x", 1, 0600), UV_ENOENT);
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "");

    /* A target that cannot be replaced (a non-empty directory): the temporary file is cleaned up. */
    snprintf(blocker, sizeof(blocker), "%s/target", f->dir);
    assert_int_equal(mkdir(blocker, 0700), 0);
    snprintf(path, sizeof(path), "%s/target/inner", f->dir);
    write_raw(path, "keep", 4);
    assert_true(oa_file_write_atomic(blocker, "x", 1, 0600) < 0);
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "target");
    assert_int_equal(oa_file_read(path, 100, &b), 0);
    assert_string_equal(b.data, "keep");
    assert_int_equal(unlink(path), 0);
    oa_buf_free(&b);
}

static void test_file_read(void **state)
{
    dir_fixture_t *f = *state;
    char path[256], missing[256];
    char *big;
    oa_buf_t b = {0};
    size_t i, n = 20000;

    snprintf(path, sizeof(path), "%s/data", f->dir);
    snprintf(missing, sizeof(missing), "%s/absent", f->dir);

    /* Larger than one read chunk, exactly at the limit. */
    big = malloc(n);
    assert_non_null(big);
    for (i = 0; i < n; i++)
        big[i] = (char)(i * 7);
    write_raw(path, big, n);
    assert_int_equal(oa_buf_append_str(&b, "old content is replaced"), 0);
    assert_int_equal(oa_file_read(path, n, &b), 0);
    assert_int_equal(b.len, n);
    assert_memory_equal(b.data, big, n);
    assert_int_equal(b.data[n], '\0');
    /* One byte over the limit. */
    assert_int_equal(oa_file_read(path, n - 1, &b), UV_EFBIG);
    free(big);

    assert_int_equal(oa_file_read(missing, 100, &b), UV_ENOENT);

    /* An empty file reads as an empty, NUL-terminated string. */
    write_raw(path, "", 0);
    oa_buf_free(&b);
    assert_int_equal(oa_file_read(path, 100, &b), 0);
    assert_int_equal(b.len, 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    /* Even with a zero limit. */
    assert_int_equal(oa_file_read(path, 0, &b), 0);
    assert_int_equal(b.len, 0);

    /* A directory cannot be read as a file. */
    assert_int_equal(oa_file_read(f->dir, 100, &b), UV_EISDIR);
    oa_buf_free(&b);
}

static void test_file_remove(void **state)
{
    dir_fixture_t *f = *state;
    char path[256], sub[256], names[256];
    struct stat st;

    snprintf(path, sizeof(path), "%s/ocsp.der", f->dir);
    write_raw(path, "der", 3);
    assert_int_equal(oa_file_remove(path), 0);
    assert_int_equal(stat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    /* Already absent is success. */
    assert_int_equal(oa_file_remove(path), 0);
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "");
    /* A directory is not removed and the failure is reported. */
    snprintf(sub, sizeof(sub), "%s/sub", f->dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_true(oa_file_remove(sub) < 0);
    assert_int_equal(stat(sub, &st), 0);
}

/* ---- small helpers ---- */

static void check_join(const char *dir, const char *name, const char *want)
{
    char *p = oa_path_join(dir, name);

    assert_non_null(p);
    assert_string_equal(p, want);
    free(p);
}

static void test_path_join(void **state)
{
    (void)state;
    check_join("/var/lib/ocsp-agent", "ocsp.der", "/var/lib/ocsp-agent/ocsp.der");
    check_join("/var/lib/ocsp-agent/", "ocsp.der", "/var/lib/ocsp-agent/ocsp.der");
    check_join("/var/lib/ocsp-agent///", "ocsp.der", "/var/lib/ocsp-agent/ocsp.der");
    check_join("data", "conf.json", "data/conf.json");
    check_join(".", "x", "./x");
    check_join("/tmp", "", "/tmp/");
}

static void test_secure_equal(void **state)
{
    (void)state;
    assert_int_equal(oa_secure_equal("secret", 6, "secret", 6), 1);
    assert_int_equal(oa_secure_equal("secret", 6, "secreT", 6), 0);
    assert_int_equal(oa_secure_equal("secret", 6, "Secret", 6), 0);
    assert_int_equal(oa_secure_equal("secret", 6, "secret!", 7), 0);
    assert_int_equal(oa_secure_equal("secret!", 7, "secret", 6), 0);
    assert_int_equal(oa_secure_equal("secret", 6, "", 0), 0);
    assert_int_equal(oa_secure_equal("", 0, "secret", 6), 0);
    assert_int_equal(oa_secure_equal("", 0, "", 0), 1);
    /* Embedded NULs count like any other byte. */
    assert_int_equal(oa_secure_equal("a\0b", 3, "a\0b", 3), 1);
    assert_int_equal(oa_secure_equal("a\0b", 3, "a\0c", 3), 0);
    /* A string that repeats the other one must not compare equal. */
    assert_int_equal(oa_secure_equal("abab", 4, "ab", 2), 0);
}

static void test_macros(void **state)
{
    struct outer {
        int a;
        double b;
        char c[3];
    } o;
    int arr[7];

    (void)state;
    assert_ptr_equal(oa_container_of(&o.c, struct outer, c), &o);
    assert_ptr_equal(oa_container_of(&o.b, struct outer, b), &o);
    assert_int_equal(OA_ARRAY_SIZE(arr), 7);
}

/* ---- errors ---- */

static void test_error_table(void **state)
{
    int i, j;

    (void)state;
    assert_string_equal(oa_errcode_name(OA_E_INVALID_SCHEMA), "invalid_schema");
    assert_int_equal(oa_errcode_http_status(OA_E_INVALID_SCHEMA), 400);
    assert_string_equal(oa_errcode_name(OA_E_NO_RESPONDER_URL), "no_responder_url");
    assert_string_equal(oa_errcode_name(OA_E_UNSUPPORTED_BY_CAPABILITY), "ocsp_unsupported_by_capability");
    assert_int_equal(oa_errcode_http_status(OA_E_UNSUPPORTED_BY_CAPABILITY), 406);
    assert_string_equal(oa_errcode_name(OA_E_TASK_QUEUED_TOO_LONG), "task_queued_for_too_long");
    assert_int_equal(oa_errcode_http_status(OA_E_OCSP_TIMEOUT), 504);
    assert_int_equal(oa_errcode_http_status(OA_E_UNAUTHORIZED), 401);
    assert_int_equal(oa_errcode_http_status(OA_E_FORBIDDEN), 403);
    assert_string_equal(oa_errcode_name(OA_E_INTERNAL), "internal_error");
    assert_int_equal(oa_errcode_http_status(OA_E_INTERNAL), 500);

    for (i = 0; i < OA_ERRCODE_COUNT; i++) {
        const char *name = oa_errcode_name((oa_errcode_t)i);
        int status = oa_errcode_http_status((oa_errcode_t)i);

        assert_non_null(name);
        if (i != OA_E_INTERNAL && strcmp(name, "internal_error") == 0) {
            print_error("code %d has no entry in the table\n", i);
            fail();
        }
        assert_true(status >= 200 && status <= 599);
        for (j = 0; j < i; j++) {
            if (strcmp(name, oa_errcode_name((oa_errcode_t)j)) == 0) {
                print_error("codes %d and %d share the name %s\n", j, i, name);
                fail();
            }
        }
    }
    /* Codes outside the table fall back to an internal error. */
    assert_string_equal(oa_errcode_name(OA_ERRCODE_COUNT), "internal_error");
    assert_string_equal(oa_errcode_name((oa_errcode_t)-1), "internal_error");
    assert_int_equal(oa_errcode_http_status(OA_ERRCODE_COUNT), 500);
}

static void test_error_set(void **state)
{
    char long_arg[600];
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_error_set(&err, OA_E_BAD_OPTION, "--listen: bad port %d in \"%s\"", 70000, "x:70000"), -1);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    assert_string_equal(err.text, "--listen: bad port 70000 in \"x:70000\"");

    /* Long sentences are cut to the buffer, still terminated. */
    memset(long_arg, 'a', sizeof(long_arg) - 1);
    long_arg[sizeof(long_arg) - 1] = '\0';
    assert_int_equal(oa_error_set(&err, OA_E_IO, "%s", long_arg), -1);
    assert_int_equal(strlen(err.text), OA_ERROR_TEXT_MAX - 1);
    assert_int_equal(err.code, OA_E_IO);

    assert_int_equal(oa_error_set(NULL, OA_E_IO, "ignored %d", 1), -1);

    oa_error_clear(&err);
    assert_int_equal(err.code, OA_OK);
    assert_string_equal(err.text, "");
    oa_error_clear(NULL);
}

/* Makes OpenSSL queue a real error: parsing a PEM certificate out of text that holds none. */
static void queue_pem_error(void)
{
    static const char junk[] = "not a certificate\n";
    BIO *bio = BIO_new_mem_buf(junk, (int)sizeof(junk) - 1);
    X509 *x;

    assert_non_null(bio);
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    assert_null(x);
    BIO_free(bio);
}

static void test_error_add_ssl(void **state)
{
    oa_error_t err;
    const char *reason;

    (void)state;
    ERR_clear_error();
    queue_pem_error();
    assert_int_not_equal(ERR_peek_error(), 0);
    oa_error_set(&err, OA_E_BAD_FILE, "--cert: cannot read a certificate");
    oa_error_add_ssl(&err);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_int_equal(ERR_peek_error(), 0);
    assert_int_equal(strncmp(err.text, "--cert: cannot read a certificate: ", 35), 0);
    reason = err.text + 35;
    assert_non_null(strstr(reason, "no start line"));
    assert_null(strchr(reason, '\n'));

    /* Two queued errors are joined with "; ". */
    ERR_raise(ERR_LIB_X509, X509_R_CERT_ALREADY_IN_HASH_TABLE);
    ERR_raise(ERR_LIB_PEM, PEM_R_BAD_END_LINE);
    oa_error_set(&err, OA_E_INTERNAL, "two");
    oa_error_add_ssl(&err);
    assert_int_equal(strncmp(err.text, "two: ", 5), 0);
    assert_non_null(strstr(err.text, "; "));
    assert_true(strstr(err.text, "cert already in hash table") < strstr(err.text, "bad end line"));
    assert_int_equal(ERR_peek_error(), 0);

    /* An empty queue leaves the sentence alone. */
    oa_error_set(&err, OA_E_INTERNAL, "unchanged");
    oa_error_add_ssl(&err);
    assert_string_equal(err.text, "unchanged");

    /* A full sentence stays terminated inside its buffer. */
    memset(err.text, 'z', sizeof(err.text) - 1);
    err.text[sizeof(err.text) - 1] = '\0';
    queue_pem_error();
    oa_error_add_ssl(&err);
    assert_int_equal(strlen(err.text), OA_ERROR_TEXT_MAX - 1);
    assert_int_equal(ERR_peek_error(), 0);

    /* Without an error struct the queue is still emptied. */
    queue_pem_error();
    oa_error_add_ssl(NULL);
    assert_int_equal(ERR_peek_error(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_append),
        cmocka_unit_test(test_buf_printf_growth),
        cmocka_unit_test(test_buf_reserve),
        cmocka_unit_test(test_buf_consume_reset),
        cmocka_unit_test(test_time_rfc1123),
        cmocka_unit_test(test_time_iso8601),
        cmocka_unit_test_setup_teardown(test_file_write_atomic, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_file_write_atomic_failure, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_file_read, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_file_remove, dir_setup, dir_teardown),
        cmocka_unit_test(test_path_join),
        cmocka_unit_test(test_secure_equal),
        cmocka_unit_test(test_macros),
        cmocka_unit_test(test_error_table),
        cmocka_unit_test(test_error_set),
        cmocka_unit_test(test_error_add_ssl),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
