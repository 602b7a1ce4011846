/*
 * Roles and permissions, password hashes, the users file, and Basic authentication on a real libuv loop.
 */
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* cmocka needs setjmp.h first. */
#include <setjmp.h>

#include <cmocka.h>

#include "oa_auth.h"
#include "oa_util.h"

/* Made outside this code base (Python's hashlib.pbkdf2_hmac) with the password "secret" and salt bytes 0..15; the
 * same string is in tests/data/users/valid.json. */
#define KNOWN_HASH "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY="

static const char *data_path(char *out, size_t outlen, const char *name)
{
    const char *dir = getenv("OA_TEST_DATA");

    assert_non_null(dir);
    snprintf(out, outlen, "%s/users/%s", dir, name);
    return out;
}

/* ---- roles ------------------------------------------------------------------------------------------------- */

static void test_roles_table(void **state)
{
    static const struct {
        const char *name;
        oa_role_t role;
        int allowed[4];
    } want[] = {
        {"admin", OA_ROLE_ADMIN, {1, 1, 1, 1}},
        {"cluster_member", OA_ROLE_CLUSTER_MEMBER, {0, 0, 0, 0}},
        {"cluster_viewer", OA_ROLE_CLUSTER_VIEWER, {0, 0, 0, 0}},
        {"db_member", OA_ROLE_DB_MEMBER, {0, 0, 0, 0}},
        {"db_viewer", OA_ROLE_DB_VIEWER, {0, 0, 0, 0}},
        {"user_manager", OA_ROLE_USER_MANAGER, {0, 0, 0, 0}},
        {"none", OA_ROLE_NONE, {0, 0, 0, 0}},
    };
    static const oa_perm_t perms[4] = {OA_PERM_VIEW_OCSP_CONFIG, OA_PERM_CONFIG_OCSP, OA_PERM_VIEW_OCSP_STATUS,
                                       OA_PERM_TEST_OCSP_STATUS};
    static const char *const perm_names[4] = {"view_ocsp_config", "config_ocsp", "view_ocsp_status",
                                              "test_ocsp_status"};
    oa_role_t role;
    size_t i, j;

    (void)state;
    assert_int_equal(OA_ARRAY_SIZE(want), OA_ROLE_COUNT);
    for (i = 0; i < OA_ARRAY_SIZE(want); i++) {
        role = OA_ROLE_COUNT;
        assert_int_equal(oa_role_parse(want[i].name, &role), 0);
        assert_int_equal(role, want[i].role);
        assert_string_equal(oa_role_name(want[i].role), want[i].name);
        for (j = 0; j < 4; j++)
            assert_int_equal(oa_role_allows(want[i].role, perms[j]), want[i].allowed[j]);
    }
    for (j = 0; j < 4; j++)
        assert_string_equal(oa_perm_name(perms[j]), perm_names[j]);

    /* Several bits at once need all of them. */
    assert_int_equal(oa_role_allows(OA_ROLE_ADMIN, OA_PERM_CONFIG_OCSP | OA_PERM_TEST_OCSP_STATUS), true);
    assert_int_equal(oa_role_allows(OA_ROLE_CLUSTER_VIEWER, OA_PERM_VIEW_OCSP_STATUS | OA_PERM_VIEW_OCSP_CONFIG), false);
    assert_int_equal(oa_role_allows(OA_ROLE_COUNT, OA_PERM_VIEW_OCSP_CONFIG), false);

    role = OA_ROLE_NONE;
    assert_int_equal(oa_role_parse("root", &role), -1);
    assert_int_equal(oa_role_parse("Admin", &role), -1);
    assert_int_equal(oa_role_parse("", &role), -1);
    assert_int_equal(oa_role_parse(NULL, &role), -1);
    assert_int_equal(role, OA_ROLE_NONE);
}

/* ---- password hashes --------------------------------------------------------------------------------------- */

static void test_hash_and_verify(void **state)
{
    char h[OA_PASSWD_ENCODED_MAX];

    (void)state;
    assert_int_equal(oa_passwd_hash("secret", 6, 1000, h, sizeof(h)), 0);
    assert_int_equal(strncmp(h, "$pbkdf2-sha256$1000$", 20), 0);
    /* 24 characters of salt and 44 of hash after the prefix and separator. */
    assert_int_equal(strlen(h), 20 + 24 + 1 + 44);
    assert_int_equal(oa_passwd_is_valid_encoding(h), true);
    assert_int_equal(oa_passwd_verify(h, "secret", 6), OA_PASSWD_MATCH);
    assert_int_equal(oa_passwd_verify(h, "Secret", 6), OA_PASSWD_MISMATCH);
    assert_int_equal(oa_passwd_verify(h, "secret!", 7), OA_PASSWD_MISMATCH);
    assert_int_equal(oa_passwd_verify(h, "secret", 5), OA_PASSWD_MISMATCH);
    assert_int_equal(oa_passwd_verify(h, "", 0), OA_PASSWD_MISMATCH);

    /* The length counts, not a terminating NUL. */
    assert_int_equal(oa_passwd_hash("a\0b", 3, 1000, h, sizeof(h)), 0);
    assert_int_equal(oa_passwd_verify(h, "a\0b", 3), OA_PASSWD_MATCH);
    assert_int_equal(oa_passwd_verify(h, "a", 1), OA_PASSWD_MISMATCH);

    /* An independent implementation's output verifies. */
    assert_int_equal(oa_passwd_verify(KNOWN_HASH, "secret", 6), OA_PASSWD_MATCH);
    assert_int_equal(oa_passwd_verify(KNOWN_HASH, "secreT", 6), OA_PASSWD_MISMATCH);
}

static void test_hash_salts_differ(void **state)
{
    char a[OA_PASSWD_ENCODED_MAX], b[OA_PASSWD_ENCODED_MAX];

    (void)state;
    assert_int_equal(oa_passwd_hash("secret", 6, 1000, a, sizeof(a)), 0);
    assert_int_equal(oa_passwd_hash("secret", 6, 1000, b, sizeof(b)), 0);
    assert_string_not_equal(a, b);
    /* The salt part (after "$pbkdf2-sha256$1000$") differs, not just the output. */
    assert_int_not_equal(memcmp(a + 20, b + 20, 24), 0);
    assert_int_equal(oa_passwd_verify(a, "secret", 6), OA_PASSWD_MATCH);
    assert_int_equal(oa_passwd_verify(b, "secret", 6), OA_PASSWD_MATCH);
}

static void test_hash_bad_arguments(void **state)
{
    char h[OA_PASSWD_ENCODED_MAX];

    (void)state;
    assert_int_equal(oa_passwd_hash("secret", 6, 999, h, sizeof(h)), -1);
    assert_int_equal(oa_passwd_hash("secret", 6, 10000001, h, sizeof(h)), -1);
    assert_int_equal(oa_passwd_hash("secret", 6, 1000, h, 60), -1);
    assert_int_equal(h[0], '\0');
    assert_int_equal(oa_passwd_hash("secret", 6, 1000, h, 20 + 24 + 1 + 44 + 1), 0);
}

static void test_bad_encodings(void **state)
{
    static const char *const bad[] = {
        "",
        "secret",
        "$pbkdf2-sha512$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$PBKDF2-SHA256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        /* iterations: below, above, leading zero, sign, empty, not a number */
        "$pbkdf2-sha256$999$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$10000001$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$01000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$+1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$1e3$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        /* parts missing */
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$",
        "$pbkdf2-sha256$1000$$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$1000",
        /* salt of 15 and 18 bytes */
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0O$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODxAR$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        /* hash of 31 and 33 bytes */
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBg==",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgYA",
        /* padding dropped, padding doubled, non-zero unused bits, URL-safe alphabet, whitespace, extra part */
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY==",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODx==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgZ=",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h_1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY= ",
        " $pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=",
        "$pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY=$",
    };
    size_t i;

    (void)state;
    assert_int_equal(oa_passwd_is_valid_encoding(KNOWN_HASH), true);
    /* The bounds of the iteration range are accepted. */
    assert_int_equal(
        oa_passwd_is_valid_encoding(
            "$pbkdf2-sha256$10000000$AAECAwQFBgcICQoLDA0ODw==$Tvsru20utY6o3q7VRBeuL9h/1QqKhWhwk2PaYNRWBgY="),
        1);
    assert_int_equal(oa_passwd_is_valid_encoding(NULL), false);
    for (i = 0; i < OA_ARRAY_SIZE(bad); i++) {
        if (oa_passwd_is_valid_encoding(bad[i]) != 0)
            fail_msg("accepted bad encoding #%zu: %s", i, bad[i]);
        assert_int_equal(oa_passwd_verify(bad[i], "secret", 6), OA_PASSWD_MALFORMED);
    }
}

/* ---- users file -------------------------------------------------------------------------------------------- */

static void test_users_invalid_files(void **state)
{
    static const struct {
        const char *file;
        const char *says;
    } cases[] = {
        {"invalid_not_json.json", "not valid JSON"},
        {"invalid_unterminated_hash.json", "not valid JSON"},
        {"invalid_duplicate_key.json", "not valid JSON"},
        {"invalid_not_object.json", "expected a JSON object"},
        {"invalid_root_unknown_key.json", "unknown key \"admins\""},
        {"invalid_users_missing.json", "\"users\" is missing"},
        {"invalid_users_not_array.json", "\"users\" must be an array"},
        {"invalid_users_empty.json", "\"users\" is empty"},
        {"invalid_entry_not_object.json", "users[0]: expected an object"},
        {"invalid_entry_unknown_key.json", "users[1]: unknown key \"email\""},
        {"invalid_name_missing.json", "users[0]: \"name\" is missing"},
        {"invalid_name_empty.json", "users[0]: \"name\" is empty"},
        {"invalid_name_not_string.json", "users[0]: \"name\" must be a string"},
        {"invalid_name_colon.json", "users[0]: \"name\" must not hold a colon"},
        {"invalid_role_unknown.json", "users[2]: unknown role \"root\""},
        {"invalid_role_missing.json", "users[0] (\"admin@example.com\"): \"role\" is missing"},
        {"invalid_role_not_string.json", "users[0] (\"admin@example.com\"): \"role\" must be a string"},
        {"invalid_password_missing.json", "users[0] (\"admin@example.com\"): \"password\" is missing"},
        {"invalid_password_plain.json", "users[0] (\"admin@example.com\"): \"password\" is not a hash"},
        {"invalid_password_truncated.json", "users[0] (\"admin@example.com\"): \"password\" is not a hash"},
        {"invalid_duplicate_name.json", "users[2]: duplicate name \"admin@example.com\" (see users[0])"},
        {"does_not_exist.json", "cannot be read: no such file or directory"},
    };
    char path[512], want[600];
    oa_auth_t *a;
    oa_error_t err;
    uv_loop_t loop;
    size_t i;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        data_path(path, sizeof(path), cases[i].file);
        oa_error_clear(&err);
        a = (oa_auth_t *)&loop; /* must be reset to NULL on failure */
        assert_int_equal(oa_auth_new_from_file(&loop, path, &a, &err), -1);
        assert_null(a);
        assert_int_equal(err.code, OA_E_BAD_FILE);
        snprintf(want, sizeof(want), "users file %s: %s", path, cases[i].says);
        if (strncmp(err.text, want, strlen(want)) != 0)
            fail_msg("%s: got \"%s\", want a sentence starting \"%s\"", cases[i].file, err.text, want);
        /* Never a hash or a password in an error. */
        assert_null(strstr(err.text, "$pbkdf2"));
        assert_null(strstr(err.text, "Tvsru20"));
        assert_null(strstr(err.text, "correct-horse"));
        assert_null(strchr(err.text, '\n'));
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- checks on a loop -------------------------------------------------------------------------------------- */

typedef struct outcome_s {
    int fired;
    int result;
    const oa_user_t *user;
} outcome_t;

static void on_checked(oa_auth_check_t *check, int result, const oa_user_t *user)
{
    outcome_t *o = check->data;

    o->fired++;
    o->result = result;
    o->user = user;
}

/* Writes "Basic base64(user:password)" into out. */
static const char *basic(char *out, size_t outlen, const char *scheme, const char *user, const char *password)
{
    char plain[256];
    int n = snprintf(plain, sizeof(plain), "%s:%s", user, password);
    size_t sl = strlen(scheme);

    assert_true(sl + 1 + 4 * ((size_t)n + 2) / 3 + 1 <= outlen);
    memcpy(out, scheme, sl);
    out[sl] = ' ';
    EVP_EncodeBlock((unsigned char *)out + sl + 1, (const unsigned char *)plain, n);
    return out;
}

typedef struct env_s {
    uv_loop_t loop;
    oa_auth_t *auth;
    char path[64];
} env_t;

static void env_open_generated(env_t *e)
{
    char h1[OA_PASSWD_ENCODED_MAX], h2[OA_PASSWD_ENCODED_MAX];
    oa_error_t err;
    FILE *fp;
    int fd;

    assert_int_equal(oa_passwd_hash("s3cret:with:colons", 18, 1000, h1, sizeof(h1)), 0);
    assert_int_equal(oa_passwd_hash("view-only", 9, 1000, h2, sizeof(h2)), 0);
    strcpy(e->path, "/tmp/oa-auth-users-XXXXXX");
    fd = mkstemp(e->path);
    assert_true(fd >= 0);
    fp = fdopen(fd, "w");
    assert_non_null(fp);
    fprintf(fp,
            "{\"users\": [{\"name\": \"admin@example.com\", \"role\": \"admin\", \"password\": \"%s\"},\n"
            "            {\"name\": \"viewer@example.com\", \"role\": \"db_viewer\", \"password\": \"%s\"}]}\n",
            h1, h2);
    fclose(fp);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(oa_auth_new_from_file(&e->loop, e->path, &e->auth, &err), 0);
    assert_non_null(e->auth);
}

static void env_close(env_t *e)
{
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_pending(e->auth), 0);
    oa_auth_free(e->auth);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    if (e->path[0] != '\0')
        unlink(e->path);
}

/* Starts a check that must be queued, runs the loop until it answers, and returns the outcome. */
static outcome_t check_async(env_t *e, const char *header)
{
    oa_auth_check_t check;
    const oa_user_t *user = (const oa_user_t *)e;
    outcome_t o = {0, -1, NULL};

    memset(&check, 0, sizeof(check));
    check.data = &o;
    assert_int_equal(oa_auth_check(e->auth, header, strlen(header), &check, on_checked, &user), OA_AUTH_QUEUED);
    assert_null(user);
    assert_int_equal(oa_auth_pending(e->auth), 1);
    assert_int_equal(o.fired, 0);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(o.fired, 1);
    assert_int_equal(oa_auth_pending(e->auth), 0);
    /* The copy of the password is gone once the answer is in. */
    assert_null(check.password);
    assert_int_equal(check.password_len, 0);
    assert_ptr_equal(check.data, &o);
    return o;
}

static void test_check_malformed(void **state)
{
    static const char *const headers[] = {
        "Bearer YWRtaW5AZXhhbXBsZS5jb206czNjcmV0",
        "Basic",
        "Basic ",
        "BasicYWRtaW5AZXhhbXBsZS5jb206czNjcmV0",
        "Basic !!!!",
        "Basic YWRtaW4=",              /* "admin": no colon */
        "Basic YWRtaW46c2VjcmV0=",     /* bad length */
        "Basic YWRtaW46c2VjcmV",       /* bad length */
        "Basic YWRtaW46c2VjcmV0Og==x", /* data after padding */
        "Basic YWRtaW46c2VjcmV0Oh==",  /* non-zero unused bits */
        "Basic YWRtaW46c2VjcmV0-_==",  /* URL-safe alphabet */
        "Basic YWRtaW46 c2VjcmV0",     /* space inside */
    };
    env_t e = {0};
    oa_auth_check_t check;
    outcome_t o = {0, -1, NULL};
    const oa_user_t *user;
    char *huge;
    size_t i;

    (void)state;
    env_open_generated(&e);
    memset(&check, 0, sizeof(check));
    check.data = &o;

    user = (const oa_user_t *)&e;
    assert_int_equal(oa_auth_check(e.auth, NULL, 0, &check, on_checked, &user), OA_AUTH_REFUSED);
    assert_null(user);
    for (i = 0; i < OA_ARRAY_SIZE(headers); i++) {
        user = (const oa_user_t *)&e;
        if (oa_auth_check(e.auth, headers[i], strlen(headers[i]), &check, on_checked, &user) != OA_AUTH_REFUSED)
            fail_msg("header #%zu \"%s\" was not refused at once", i, headers[i]);
        assert_null(user);
    }
    /* Longer than any real credentials: refused without decoding, even though it is well-formed base64. */
    huge = malloc(1100);
    assert_non_null(huge);
    memcpy(huge, "Basic ", 6);
    memset(huge + 6, 'A', 1092);
    memcpy(huge + 1098, "Og", 2); /* ends with ':' when decoded */
    assert_int_equal(oa_auth_check(e.auth, huge, 1100, &check, on_checked, &user), OA_AUTH_REFUSED);
    free(huge);

    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_int_equal(uv_run(&e.loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(o.fired, 0);
    assert_null(check.password);
    env_close(&e);
}

static void test_check_flow(void **state)
{
    env_t e = {0};
    oa_auth_check_t check;
    const oa_user_t *user;
    outcome_t o, first;
    char h[256], h2[256];

    (void)state;
    env_open_generated(&e);

    /* An unknown user and a wrong password get the same answer, through the callback both times. */
    o = check_async(&e, basic(h, sizeof(h), "Basic", "mallory@example.com", "s3cret:with:colons"));
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    assert_null(o.user);
    o = check_async(&e, basic(h, sizeof(h), "Basic", "admin@example.com", "s3cret"));
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    assert_null(o.user);
    o = check_async(&e, basic(h, sizeof(h), "Basic", "", ""));
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    /* A failure is not remembered: the same wrong header pays the KDF again. */
    o = check_async(&e, basic(h, sizeof(h), "Basic", "admin@example.com", "s3cret"));
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);

    /* The password may hold colons: only the first one separates it from the name. */
    first = check_async(&e, basic(h, sizeof(h), "Basic", "admin@example.com", "s3cret:with:colons"));
    assert_int_equal(first.result, 0);
    assert_non_null(first.user);
    assert_string_equal(first.user->name, "admin@example.com");
    assert_int_equal(first.user->role, OA_ROLE_ADMIN);

    /* The same header again is answered from the cache, synchronously, with the same user. */
    memset(&check, 0, sizeof(check));
    o = (outcome_t){0, -1, NULL};
    check.data = &o;
    user = NULL;
    assert_int_equal(oa_auth_check(e.auth, h, strlen(h), &check, on_checked, &user), OA_AUTH_VERIFIED);
    assert_ptr_equal(user, first.user);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_null(check.password);
    assert_int_equal(uv_run(&e.loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(o.fired, 0);

    /* The scheme is case-insensitive; a different spelling is a different cache key, so it is verified once. */
    basic(h2, sizeof(h2), "bAsIc", "admin@example.com", "s3cret:with:colons");
    o = check_async(&e, h2);
    assert_int_equal(o.result, 0);
    assert_ptr_equal(o.user, first.user);
    assert_int_equal(oa_auth_check(e.auth, h2, strlen(h2), &check, on_checked, &user), OA_AUTH_VERIFIED);

    /* A second user with another role. */
    o = check_async(&e, basic(h, sizeof(h), "Basic", "viewer@example.com", "view-only"));
    assert_int_equal(o.result, 0);
    assert_string_equal(o.user->name, "viewer@example.com");
    assert_int_equal(o.user->role, OA_ROLE_DB_VIEWER);
    /* One user's password does not open the other's account. */
    o = check_async(&e, basic(h, sizeof(h), "Basic", "viewer@example.com", "s3cret:with:colons"));
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    env_close(&e);
}

static void test_users_valid_file(void **state)
{
    env_t e = {0};
    oa_error_t err;
    outcome_t o;
    char h[256];

    (void)state;
    data_path(e.path, sizeof(e.path), "valid.json");
    assert_int_equal(uv_loop_init(&e.loop), 0);
    assert_int_equal(oa_auth_new_from_file(&e.loop, e.path, &e.auth, &err), 0);
    e.path[0] = '\0'; /* a data file: not to be removed */

    o = check_async(&e, basic(h, sizeof(h), "Basic", "admin@example.com", "secret"));
    assert_int_equal(o.result, 0);
    assert_string_equal(o.user->name, "admin@example.com");
    assert_int_equal(o.user->role, OA_ROLE_ADMIN);
    o = check_async(&e, basic(h, sizeof(h), "Basic", "viewer@example.com", "hunter2"));
    assert_int_equal(o.result, 0);
    assert_int_equal(o.user->role, OA_ROLE_CLUSTER_VIEWER);
    o = check_async(&e, basic(h, sizeof(h), "Basic", "nobody@example.com", "opensesame"));
    assert_int_equal(o.result, 0);
    assert_int_equal(o.user->role, OA_ROLE_NONE);
    o = check_async(&e, basic(h, sizeof(h), "Basic", "nobody@example.com", "secret"));
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    env_close(&e);
}

static void test_check_busy(void **state)
{
    enum { N = 9 };
    static const char *const schemes[] = {"Basic", "BASIC", "basic", "BAsic", "Basic"};
    env_t e = {0};
    oa_auth_check_t checks[N], dup_right, dup_wrong;
    outcome_t outs[N], dup_right_out = {0, -1, NULL}, dup_wrong_out = {0, -1, NULL};
    const oa_user_t *user;
    char h[N][256];
    int i, ok = 0, bad = 0;

    (void)state;
    env_open_generated(&e);
    for (i = 0; i < N; i++) {
        /* Odd ones right, even ones wrong, all distinct (the scheme's spelling differs), so none can come
         * from the cache. */
        char pw[32];

        snprintf(pw, sizeof(pw), i % 2 ? "s3cret:with:colons" : "guess-%d", i);
        basic(h[i], sizeof(h[i]), schemes[i / 2], "admin@example.com", pw);
        memset(&checks[i], 0, sizeof(checks[i]));
        outs[i] = (outcome_t){0, -1, NULL};
        checks[i].data = &outs[i];
    }
    for (i = 0; i < N - 1; i++) {
        assert_int_equal(oa_auth_check(e.auth, h[i], strlen(h[i]), &checks[i], on_checked, &user), OA_AUTH_QUEUED);
        assert_int_equal(oa_auth_pending(e.auth), (unsigned)i + 1);
    }
    user = (const oa_user_t *)&e;
    assert_int_equal(oa_auth_check(e.auth, h[N - 1], strlen(h[N - 1]), &checks[N - 1], on_checked, &user),
                     OA_AUTH_BUSY);
    assert_null(user);
    assert_null(checks[N - 1].password);
    assert_int_equal(oa_auth_pending(e.auth), N - 1);

    /* While the ninth distinct header is refused, a copy of one in flight waits on that KDF instead. */
    memset(&dup_right, 0, sizeof(dup_right));
    memset(&dup_wrong, 0, sizeof(dup_wrong));
    dup_right.data = &dup_right_out;
    dup_wrong.data = &dup_wrong_out;
    assert_int_equal(oa_auth_check(e.auth, h[3], strlen(h[3]), &dup_right, on_checked, &user), OA_AUTH_QUEUED);
    assert_int_equal(oa_auth_check(e.auth, h[4], strlen(h[4]), &dup_wrong, on_checked, &user), OA_AUTH_QUEUED);
    assert_null(dup_right.password);
    assert_null(dup_wrong.password);
    assert_int_equal(oa_auth_pending(e.auth), N - 1);
    assert_int_equal(oa_auth_kdf_runs(e.auth), N - 1);

    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_int_equal(oa_auth_kdf_runs(e.auth), N - 1);
    assert_int_equal(dup_right_out.fired, 1);
    assert_int_equal(dup_right_out.result, 0);
    assert_ptr_equal(dup_right_out.user, outs[3].user);
    assert_string_equal(dup_right_out.user->name, "admin@example.com");
    assert_int_equal(dup_wrong_out.fired, 1);
    assert_int_equal(dup_wrong_out.result, OA_E_UNAUTHORIZED);
    assert_null(dup_wrong_out.user);
    for (i = 0; i < N - 1; i++) {
        assert_int_equal(outs[i].fired, 1);
        if (i % 2) {
            assert_int_equal(outs[i].result, 0);
            ok++;
        } else {
            assert_int_equal(outs[i].result, OA_E_UNAUTHORIZED);
            bad++;
        }
    }
    assert_int_equal(ok, 4);
    assert_int_equal(bad, 4);
    assert_int_equal(outs[N - 1].fired, 0);

    /* Once the storm has passed, the refused check goes through. */
    outs[N - 1] = check_async(&e, h[N - 1]);
    assert_int_equal(outs[N - 1].result, OA_E_UNAUTHORIZED);
    env_close(&e);
}

/* ---- checks of one header share one KDF ------------------------------------------------------------------- */

enum { SAME = 50 };

/* Issues n checks of header in one loop turn (no loop iteration between them): the first starts the KDF, the others
 * wait on it. Asserts that each is queued, that one KDF more runs in all, and that no waiter holds a password. */
static void issue_same(env_t *e, const char *header, oa_auth_check_t *checks, outcome_t *outs, int n)
{
    unsigned long runs = oa_auth_kdf_runs(e->auth);
    unsigned pending = oa_auth_pending(e->auth);
    const oa_user_t *user;
    int i;

    for (i = 0; i < n; i++) {
        memset(&checks[i], 0, sizeof(checks[i]));
        outs[i] = (outcome_t){0, -1, NULL};
        checks[i].data = &outs[i];
        user = (const oa_user_t *)e;
        assert_int_equal(oa_auth_check(e->auth, header, strlen(header), &checks[i], on_checked, &user), OA_AUTH_QUEUED);
        assert_null(user);
        assert_int_equal(oa_auth_pending(e->auth), pending + 1);
        assert_int_equal(oa_auth_kdf_runs(e->auth), runs + 1);
        /* The first check's copy of the password belongs to the KDF's thread now; only the waiters are read. */
        if (i > 0)
            assert_null(checks[i].password);
    }
}

static void test_same_header_right(void **state)
{
    env_t e = {0};
    oa_auth_check_t *checks = calloc(SAME + 1, sizeof(*checks));
    outcome_t outs[SAME + 1];
    const oa_user_t *user = NULL;
    char h[256];
    int i;

    (void)state;
    assert_non_null(checks);
    env_open_generated(&e);
    basic(h, sizeof(h), "Basic", "admin@example.com", "s3cret:with:colons");
    issue_same(&e, h, checks, outs, SAME);
    assert_int_equal(oa_auth_pending(e.auth), 1);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 1);

    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 1);
    assert_non_null(outs[0].user);
    assert_string_equal(outs[0].user->name, "admin@example.com");
    for (i = 0; i < SAME; i++) {
        if (outs[i].fired != 1 || outs[i].result != 0 || outs[i].user != outs[0].user)
            fail_msg("check #%d: fired %d, result %d, user %p (want 1, 0, %p)", i, outs[i].fired, outs[i].result,
                     (const void *)outs[i].user, (const void *)outs[0].user);
        assert_ptr_equal(checks[i].user, outs[0].user);
        assert_null(checks[i].password);
        assert_null(checks[i].next);
    }

    /* The shared answer was remembered: a 51st check is answered at once, without a KDF. */
    outs[SAME] = (outcome_t){0, -1, NULL};
    checks[SAME].data = &outs[SAME];
    assert_int_equal(oa_auth_check(e.auth, h, strlen(h), &checks[SAME], on_checked, &user), OA_AUTH_VERIFIED);
    assert_ptr_equal(user, outs[0].user);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 1);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    env_close(&e);
    assert_int_equal(outs[SAME].fired, 0);
    free(checks);
}

static void test_same_header_refused(void **state)
{
    /* A wrong password for a known user, and a user that does not exist (checked against the dummy hash). */
    static const char *const who[][2] = {{"admin@example.com", "s3cret"}, {"mallory@example.com", "s3cret"}};
    env_t e = {0};
    oa_auth_check_t *checks = calloc(SAME, sizeof(*checks));
    outcome_t outs[SAME];
    char h[256];
    size_t k;
    int i;

    (void)state;
    assert_non_null(checks);
    env_open_generated(&e);
    for (k = 0; k < OA_ARRAY_SIZE(who); k++) {
        basic(h, sizeof(h), "Basic", who[k][0], who[k][1]);
        issue_same(&e, h, checks, outs, SAME);
        assert_int_equal(oa_auth_pending(e.auth), 1);
        assert_int_equal(oa_auth_kdf_runs(e.auth), 2 * k + 1);
        assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
        assert_int_equal(oa_auth_pending(e.auth), 0);
        assert_int_equal(oa_auth_kdf_runs(e.auth), 2 * k + 1);
        for (i = 0; i < SAME; i++) {
            if (outs[i].fired != 1 || outs[i].result != OA_E_UNAUTHORIZED || outs[i].user != NULL)
                fail_msg("%s, check #%d: fired %d, result %d (want 1, %d)", who[k][0], i, outs[i].fired,
                         outs[i].result, OA_E_UNAUTHORIZED);
            assert_null(checks[i].user);
            assert_null(checks[i].password);
        }
        /* Nothing was remembered: the same header costs a KDF again. */
        outs[0] = check_async(&e, h);
        assert_int_equal(outs[0].result, OA_E_UNAUTHORIZED);
        assert_int_equal(oa_auth_kdf_runs(e.auth), 2 * k + 2);
    }
    env_close(&e);
    free(checks);
}

static void test_interleaved_headers(void **state)
{
    enum { GROUPS = 3, PER = 20 };
    env_t e = {0};
    oa_auth_check_t *checks = calloc(GROUPS * PER, sizeof(*checks));
    outcome_t outs[GROUPS * PER];
    const oa_user_t *user;
    char h[GROUPS][256];
    int g, i;

    (void)state;
    assert_non_null(checks);
    env_open_generated(&e);
    basic(h[0], sizeof(h[0]), "Basic", "admin@example.com", "s3cret:with:colons");
    basic(h[1], sizeof(h[1]), "Basic", "viewer@example.com", "view-only");
    basic(h[2], sizeof(h[2]), "Basic", "admin@example.com", "view-only");
    /* Check i is of header i % GROUPS, so the three groups arrive interleaved. */
    for (i = 0; i < GROUPS * PER; i++) {
        outs[i] = (outcome_t){0, -1, NULL};
        checks[i].data = &outs[i];
        assert_int_equal(oa_auth_check(e.auth, h[i % GROUPS], strlen(h[i % GROUPS]), &checks[i], on_checked, &user),
                         OA_AUTH_QUEUED);
        assert_int_equal(oa_auth_pending(e.auth), i < GROUPS ? (unsigned)i + 1 : GROUPS);
    }
    assert_int_equal(oa_auth_kdf_runs(e.auth), GROUPS);
    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_int_equal(oa_auth_kdf_runs(e.auth), GROUPS);

    assert_string_equal(outs[0].user->name, "admin@example.com");
    assert_string_equal(outs[1].user->name, "viewer@example.com");
    for (i = 0; i < GROUPS * PER; i++) {
        g = i % GROUPS;
        assert_int_equal(outs[i].fired, 1);
        assert_int_equal(outs[i].result, g == 2 ? OA_E_UNAUTHORIZED : 0);
        assert_ptr_equal(outs[i].user, g == 2 ? NULL : outs[g].user);
    }
    /* The two verified headers are remembered, each for its own user; the refused one is not. */
    for (g = 0; g < 2; g++) {
        assert_int_equal(oa_auth_check(e.auth, h[g], strlen(h[g]), &checks[0], on_checked, &user), OA_AUTH_VERIFIED);
        assert_ptr_equal(user, outs[g].user);
    }
    assert_int_equal(oa_auth_check(e.auth, h[2], strlen(h[2]), &checks[0], on_checked, &user), OA_AUTH_QUEUED);
    assert_int_equal(oa_auth_kdf_runs(e.auth), GROUPS + 1);
    env_close(&e);
    assert_int_equal(outs[0].fired, 2);
    assert_int_equal(outs[0].result, OA_E_UNAUTHORIZED);
    free(checks);
}

/* Checks on the heap that free themselves in their callback, the way the router's requests do, and that may start
 * another check from inside it, recorded in the record that follows their own. */
typedef struct self_freeing_s {
    env_t *env;
    outcome_t *out;
    const char *again;      /* a header to check from inside the callback, or NULL */
    oa_auth_verdict_t again_rc; /* what oa_auth_check answered to that */
    unsigned again_pending; /* KDFs in flight right after it */
} self_freeing_t;

static void on_checked_free(oa_auth_check_t *check, int result, const oa_user_t *user);

/* Starts a heap check of header whose callback frees it. Returns what oa_auth_check answered; the check is freed at
 * once unless that is OA_AUTH_QUEUED. */
static oa_auth_verdict_t start_self_freeing(env_t *e, const char *header, self_freeing_t *sf)
{
    oa_auth_check_t *check = calloc(1, sizeof(*check));
    const oa_user_t *user = NULL;
    oa_auth_verdict_t rc;

    assert_non_null(check);
    check->data = sf;
    rc = oa_auth_check(e->auth, header, strlen(header), check, on_checked_free, &user);
    if (rc != OA_AUTH_QUEUED) {
        if (rc == OA_AUTH_VERIFIED)
            sf->out->user = user;
        free(check);
    }
    return rc;
}

static void on_checked_free(oa_auth_check_t *check, int result, const oa_user_t *user)
{
    self_freeing_t *sf = check->data;

    sf->out->fired++;
    sf->out->result = result;
    sf->out->user = user;
    free(check);
    if (sf->again != NULL) {
        sf->again_rc = start_self_freeing(sf->env, sf->again, &sf[1]);
        sf->again_pending = oa_auth_pending(sf->env->auth);
    }
}

static void test_callbacks_free_and_restart(void **state)
{
    enum { N = 10 };
    env_t e = {0};
    /* Each check's record is followed by the record of the check its callback may start. */
    self_freeing_t sf[N][2];
    outcome_t outs[N][2];
    char good[256], wrong[256], wrong2[256];
    int i;

    (void)state;
    env_open_generated(&e);
    basic(good, sizeof(good), "Basic", "admin@example.com", "s3cret:with:colons");
    basic(wrong, sizeof(wrong), "Basic", "admin@example.com", "guess-1");
    basic(wrong2, sizeof(wrong2), "Basic", "viewer@example.com", "guess-2");
    memset(sf, 0, sizeof(sf));
    for (i = 0; i < N; i++) {
        outs[i][0] = outs[i][1] = (outcome_t){0, -1, NULL};
        sf[i][0] = (self_freeing_t){&e, &outs[i][0], NULL, -1, 0};
        sf[i][1] = (self_freeing_t){&e, &outs[i][1], NULL, -1, 0};
    }
    /* From inside their callbacks: the first check (which ran the KDF) asks for the same header, which is cached
     * by then; the fifth asks for a wrong one, which starts a KDF; the sixth for the same wrong one, which waits on
     * it. */
    sf[0][0].again = good;
    sf[4][0].again = wrong;
    sf[5][0].again = wrong;
    for (i = 0; i < N; i++)
        assert_int_equal(start_self_freeing(&e, good, &sf[i][0]), OA_AUTH_QUEUED);
    assert_int_equal(oa_auth_pending(e.auth), 1);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 1);
    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 2);

    for (i = 0; i < N; i++) {
        assert_int_equal(outs[i][0].fired, 1);
        assert_int_equal(outs[i][0].result, 0);
        assert_ptr_equal(outs[i][0].user, outs[0][0].user);
    }
    assert_string_equal(outs[0][0].user->name, "admin@example.com");
    assert_int_equal(sf[0][0].again_rc, OA_AUTH_VERIFIED);
    assert_int_equal(sf[0][0].again_pending, 0);
    assert_ptr_equal(outs[0][1].user, outs[0][0].user);
    assert_int_equal(outs[0][1].fired, 0);
    assert_int_equal(sf[4][0].again_rc, OA_AUTH_QUEUED);
    assert_int_equal(sf[4][0].again_pending, 1);
    assert_int_equal(sf[5][0].again_rc, OA_AUTH_QUEUED);
    assert_int_equal(sf[5][0].again_pending, 1);
    for (i = 4; i <= 5; i++) {
        assert_int_equal(outs[i][1].fired, 1);
        assert_int_equal(outs[i][1].result, OA_E_UNAUTHORIZED);
        assert_null(outs[i][1].user);
    }
    for (i = 1; i < N; i++) {
        if (i != 4 && i != 5)
            assert_int_equal(outs[i][1].fired, 0);
    }

    /* The same with a refused header: the third check asks again from its callback, after the KDF ended, so that
     * is a new KDF rather than a share of the answer being handed out. */
    memset(sf, 0, sizeof(sf));
    for (i = 0; i < N; i++) {
        outs[i][0] = outs[i][1] = (outcome_t){0, -1, NULL};
        sf[i][0] = (self_freeing_t){&e, &outs[i][0], NULL, -1, 0};
        sf[i][1] = (self_freeing_t){&e, &outs[i][1], NULL, -1, 0};
    }
    sf[2][0].again = wrong2;
    for (i = 0; i < N; i++)
        assert_int_equal(start_self_freeing(&e, wrong2, &sf[i][0]), OA_AUTH_QUEUED);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 3);
    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 4);
    for (i = 0; i < N; i++) {
        assert_int_equal(outs[i][0].fired, 1);
        assert_int_equal(outs[i][0].result, OA_E_UNAUTHORIZED);
        assert_null(outs[i][0].user);
    }
    assert_int_equal(sf[2][0].again_rc, OA_AUTH_QUEUED);
    assert_int_equal(sf[2][0].again_pending, 1);
    assert_int_equal(outs[2][1].fired, 1);
    assert_int_equal(outs[2][1].result, OA_E_UNAUTHORIZED);
    env_close(&e);
}

static void test_waiters_bounded(void **state)
{
    enum { N = OA_AUTH_MAX_WAITERS + 2 };
    env_t e = {0};
    oa_auth_check_t *checks = calloc(N, sizeof(*checks));
    outcome_t *outs = calloc(N, sizeof(*outs));
    const oa_user_t *user;
    char h[256];
    int i;

    (void)state;
    assert_non_null(checks);
    assert_non_null(outs);
    env_open_generated(&e);
    basic(h, sizeof(h), "Basic", "viewer@example.com", "view-only");
    /* The check that runs the KDF and OA_AUTH_MAX_WAITERS waiting on it are taken; one more is refused. */
    for (i = 0; i < N; i++) {
        outs[i] = (outcome_t){0, -1, NULL};
        checks[i].data = &outs[i];
        user = (const oa_user_t *)&e;
        assert_int_equal(oa_auth_check(e.auth, h, strlen(h), &checks[i], on_checked, &user),
                         i < N - 1 ? OA_AUTH_QUEUED : OA_AUTH_BUSY);
        assert_null(user);
    }
    assert_int_equal(oa_auth_pending(e.auth), 1);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 1);
    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    for (i = 0; i < N - 1; i++) {
        assert_int_equal(outs[i].fired, 1);
        assert_int_equal(outs[i].result, 0);
        assert_ptr_equal(outs[i].user, outs[0].user);
    }
    assert_string_equal(outs[0].user->name, "viewer@example.com");
    assert_int_equal(outs[N - 1].fired, 0);
    /* The refused one is now a cache hit. */
    assert_int_equal(oa_auth_check(e.auth, h, strlen(h), &checks[N - 1], on_checked, &user), OA_AUTH_VERIFIED);
    assert_ptr_equal(user, outs[0].user);
    env_close(&e);
    free(checks);
    free(outs);
}

static void test_open(void **state)
{
    env_t e = {0};
    oa_auth_check_t check;
    outcome_t o = {0, -1, NULL};
    const oa_user_t *user = NULL;

    (void)state;
    assert_int_equal(uv_loop_init(&e.loop), 0);
    assert_int_equal(oa_auth_new_open(&e.loop, &e.auth), 0);
    memset(&check, 0, sizeof(check));
    check.data = &o;
    assert_int_equal(oa_auth_check(e.auth, NULL, 0, &check, on_checked, &user), OA_AUTH_VERIFIED);
    assert_non_null(user);
    assert_string_equal(user->name, "anonymous");
    assert_int_equal(user->role, OA_ROLE_ADMIN);
    user = NULL;
    assert_int_equal(oa_auth_check(e.auth, "Bearer x", 8, &check, on_checked, &user), OA_AUTH_VERIFIED);
    assert_string_equal(user->name, "anonymous");
    assert_int_equal(oa_auth_pending(e.auth), 0);
    assert_int_equal(o.fired, 0);
    env_close(&e);
}

/* ---- reloading the users file ------------------------------------------------------------------------------ */

typedef struct tuser_s {
    const char *name;
    const char *role;
    const char *password;
    char hash[OA_PASSWD_ENCODED_MAX];
} tuser_t;

static void tuser_hash(tuser_t *u, unsigned iterations)
{
    assert_int_equal(oa_passwd_hash(u->password, strlen(u->password), iterations, u->hash, sizeof(u->hash)), 0);
}

/* Replaces path (write aside, rename) with a users file of the n users. */
static void write_users(const char *path, tuser_t *const *users, size_t n)
{
    char tmp[128];
    FILE *fp;
    size_t i;

    snprintf(tmp, sizeof(tmp), "%s.new", path);
    fp = fopen(tmp, "w");
    assert_non_null(fp);
    fprintf(fp, "{\"users\": [");
    for (i = 0; i < n; i++)
        fprintf(fp, "%s{\"name\": \"%s\", \"role\": \"%s\", \"password\": \"%s\"}", i > 0 ? ",\n" : "", users[i]->name,
                users[i]->role, users[i]->hash);
    fprintf(fp, "]}\n");
    fclose(fp);
    assert_int_equal(rename(tmp, path), 0);
}

/* An authenticator over a fresh temporary users file holding the n users. */
static void env_open_users(env_t *e, tuser_t *const *users, size_t n)
{
    oa_error_t err;
    int fd;

    strcpy(e->path, "/tmp/oa-auth-reload-XXXXXX");
    fd = mkstemp(e->path);
    assert_true(fd >= 0);
    close(fd);
    write_users(e->path, users, n);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(oa_auth_new_from_file(&e->loop, e->path, &e->auth, &err), 0);
}

/* A check answered at once from the cache: returns the user, without a KDF. */
static const oa_user_t *check_cached(env_t *e, const char *header)
{
    unsigned long runs = oa_auth_kdf_runs(e->auth);
    oa_auth_check_t check;
    const oa_user_t *user = NULL;

    memset(&check, 0, sizeof(check));
    assert_int_equal(oa_auth_check(e->auth, header, strlen(header), &check, on_checked, &user), OA_AUTH_VERIFIED);
    assert_non_null(user);
    assert_int_equal(oa_auth_kdf_runs(e->auth), runs);
    return user;
}

static void reload_ok(env_t *e, oa_auth_reload_stats_t *st)
{
    oa_error_t err;

    oa_error_clear(&err);
    if (oa_auth_reload(e->auth, e->path, st, &err) != 0)
        fail_msg("reload refused: %s", err.text);
}

static void test_reload_removed_and_changed(void **state)
{
    tuser_t admin = {"admin@example.com", "admin", "adm1n", ""}, viewer = {"viewer@example.com", "db_viewer", "v1", ""},
            gone = {"gone@example.com", "admin", "g0ne", ""}, viewer2 = {"viewer@example.com", "db_viewer", "v2", ""},
            newbie = {"new@example.com", "cluster_viewer", "n3w", ""},
            promoted = {"viewer@example.com", "admin", "v2", ""};
    tuser_t *before[] = {&admin, &viewer, &gone}, *after[] = {&admin, &viewer2, &newbie},
            *after_role[] = {&admin, &promoted, &newbie};
    char h_admin[256], h_viewer[256], h_gone[256], h_viewer2[256], h_new[256];
    oa_auth_reload_stats_t st;
    const oa_user_t *u;
    env_t e = {0};
    outcome_t o;

    (void)state;
    tuser_hash(&admin, 1000);
    tuser_hash(&viewer, 1000);
    tuser_hash(&gone, 1000);
    tuser_hash(&viewer2, 1000);
    tuser_hash(&newbie, 1000);
    memcpy(promoted.hash, viewer2.hash, sizeof(promoted.hash));
    env_open_users(&e, before, OA_ARRAY_SIZE(before));
    basic(h_admin, sizeof(h_admin), "Basic", admin.name, admin.password);
    basic(h_viewer, sizeof(h_viewer), "Basic", viewer.name, viewer.password);
    basic(h_gone, sizeof(h_gone), "Basic", gone.name, gone.password);
    basic(h_viewer2, sizeof(h_viewer2), "Basic", viewer2.name, viewer2.password);
    basic(h_new, sizeof(h_new), "Basic", newbie.name, newbie.password);
    /* Every user logs in once, so each header is remembered. */
    assert_int_equal(check_async(&e, h_admin).result, 0);
    assert_int_equal(check_async(&e, h_viewer).result, 0);
    assert_int_equal(check_async(&e, h_gone).result, 0);
    assert_string_equal(check_cached(&e, h_gone)->name, gone.name);
    assert_int_equal(check_async(&e, h_new).result, OA_E_UNAUTHORIZED);

    /* gone removed, viewer's password changed, new added, admin as it was. */
    write_users(e.path, after, OA_ARRAY_SIZE(after));
    reload_ok(&e, &st);
    assert_int_equal(st.users, 3);
    assert_int_equal(st.added, 1);
    assert_int_equal(st.removed, 1);
    assert_int_equal(st.changed, 1);
    assert_int_equal(st.unchanged, 1);

    /* The unchanged user is still remembered: no KDF, and the entry is the new file's. */
    u = check_cached(&e, h_admin);
    assert_string_equal(u->name, admin.name);
    assert_int_equal(u->role, OA_ROLE_ADMIN);
    /* The removed user and the old password are refused at the next request, after a KDF like any unknown header. */
    o = check_async(&e, h_gone);
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    assert_null(o.user);
    o = check_async(&e, h_viewer);
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    /* The new password and the new user are let in. */
    o = check_async(&e, h_viewer2);
    assert_int_equal(o.result, 0);
    assert_string_equal(o.user->name, viewer.name);
    assert_int_equal(o.user->role, OA_ROLE_DB_VIEWER);
    o = check_async(&e, h_new);
    assert_int_equal(o.result, 0);
    assert_int_equal(o.user->role, OA_ROLE_CLUSTER_VIEWER);

    /* A role changed with the password kept: the remembered header is forgotten and the next check sees the role. */
    write_users(e.path, after_role, OA_ARRAY_SIZE(after_role));
    reload_ok(&e, &st);
    assert_int_equal(st.changed, 1);
    assert_int_equal(st.added + st.removed, 0);
    o = check_async(&e, h_viewer2);
    assert_int_equal(o.result, 0);
    assert_int_equal(o.user->role, OA_ROLE_ADMIN);
    assert_string_equal(check_cached(&e, h_admin)->name, admin.name);
    env_close(&e);
}

static void test_reload_unchanged_file(void **state)
{
    tuser_t admin = {"admin@example.com", "admin", "adm1n", ""}, viewer = {"viewer@example.com", "db_viewer", "v1", ""};
    tuser_t *users[] = {&admin, &viewer};
    oa_auth_reload_stats_t st;
    const oa_user_t *u;
    env_t e = {0};
    char h[256];

    (void)state;
    tuser_hash(&admin, 1000);
    tuser_hash(&viewer, 1000);
    env_open_users(&e, users, OA_ARRAY_SIZE(users));
    basic(h, sizeof(h), "Basic", admin.name, admin.password);
    assert_int_equal(check_async(&e, h).result, 0);
    u = check_cached(&e, h);
    /* The same content, written again: nothing is replaced, not even the entries. */
    write_users(e.path, users, OA_ARRAY_SIZE(users));
    reload_ok(&e, &st);
    assert_int_equal(st.users, 2);
    assert_int_equal(st.unchanged, 2);
    assert_int_equal(st.added + st.removed + st.changed, 0);
    assert_ptr_equal(check_cached(&e, h), u);
    env_close(&e);
}

/* KDFs running while the file is replaced. They read the old entries on the thread pool after the reload let go of
 * them, so under AddressSanitizer this also shows that nothing is freed before the last of them is answered. */
static void test_reload_kdf_in_flight(void **state)
{
    enum { SLOW = 100000 };
    tuser_t admin = {"admin@example.com", "admin", "adm1n", ""}, viewer = {"viewer@example.com", "db_viewer", "v1", ""},
            gone = {"gone@example.com", "admin", "g0ne", ""}, viewer2 = {"viewer@example.com", "db_viewer", "v2", ""};
    tuser_t *before[] = {&admin, &viewer, &gone}, *after[] = {&admin, &viewer2};
    enum { LEAD_VIEWER, WAIT_VIEWER, LEAD_GONE, LEAD_ADMIN, AFTER_VIEWER, N };
    oa_auth_check_t checks[N];
    outcome_t outs[N];
    char h_admin[256], h_viewer[256], h_gone[256], h_viewer2[256];
    const char *headers[N];
    oa_auth_reload_stats_t st;
    const oa_user_t *user;
    env_t e = {0};
    outcome_t o;
    int i;

    (void)state;
    /* Costly enough that the KDFs are still running when the reload happens (not that the outcome depends on it). */
    tuser_hash(&admin, SLOW);
    tuser_hash(&viewer, SLOW);
    tuser_hash(&gone, SLOW);
    tuser_hash(&viewer2, 1000);
    env_open_users(&e, before, OA_ARRAY_SIZE(before));
    basic(h_admin, sizeof(h_admin), "Basic", admin.name, admin.password);
    basic(h_viewer, sizeof(h_viewer), "Basic", viewer.name, viewer.password);
    basic(h_gone, sizeof(h_gone), "Basic", gone.name, gone.password);
    basic(h_viewer2, sizeof(h_viewer2), "Basic", viewer2.name, viewer2.password);
    headers[LEAD_VIEWER] = h_viewer;
    headers[WAIT_VIEWER] = h_viewer;
    headers[LEAD_GONE] = h_gone;
    headers[LEAD_ADMIN] = h_admin;
    headers[AFTER_VIEWER] = h_viewer;
    memset(checks, 0, sizeof(checks));
    for (i = 0; i < N; i++) {
        outs[i] = (outcome_t){0, -1, NULL};
        checks[i].data = &outs[i];
    }
    for (i = LEAD_VIEWER; i <= LEAD_ADMIN; i++)
        assert_int_equal(oa_auth_check(e.auth, headers[i], strlen(headers[i]), &checks[i], on_checked, &user), OA_AUTH_QUEUED);
    assert_int_equal(oa_auth_pending(e.auth), 3);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 3);

    write_users(e.path, after, OA_ARRAY_SIZE(after));
    reload_ok(&e, &st);
    assert_int_equal(st.removed, 1);
    assert_int_equal(st.changed, 1);
    assert_int_equal(st.unchanged, 1);

    /* The old header checked after the reload does not wait on the KDF against the old entry: it starts its own. */
    assert_int_equal(oa_auth_check(e.auth, h_viewer, strlen(h_viewer), &checks[AFTER_VIEWER], on_checked, &user), OA_AUTH_QUEUED);
    assert_int_equal(oa_auth_pending(e.auth), 4);
    assert_int_equal(oa_auth_kdf_runs(e.auth), 4);

    assert_int_equal(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(oa_auth_pending(e.auth), 0);
    for (i = 0; i < N; i++)
        assert_int_equal(outs[i].fired, 1);
    /* The old entries' KDFs matched, but their users are gone or changed: refused, the waiter too. */
    for (i = LEAD_VIEWER; i <= LEAD_GONE; i++) {
        assert_int_equal(outs[i].result, OA_E_UNAUTHORIZED);
        assert_null(outs[i].user);
    }
    assert_int_equal(outs[AFTER_VIEWER].result, OA_E_UNAUTHORIZED);
    /* The unchanged user's KDF still counts, as the entry in force (read here after the old entries are freed). */
    assert_int_equal(outs[LEAD_ADMIN].result, 0);
    assert_string_equal(outs[LEAD_ADMIN].user->name, admin.name);
    assert_int_equal(outs[LEAD_ADMIN].user->role, OA_ROLE_ADMIN);
    assert_ptr_equal(check_cached(&e, h_admin), outs[LEAD_ADMIN].user);
    /* Nothing was remembered for the refused ones; the new password works. */
    o = check_async(&e, h_viewer);
    assert_int_equal(o.result, OA_E_UNAUTHORIZED);
    o = check_async(&e, h_viewer2);
    assert_int_equal(o.result, 0);
    for (i = 0; i < N; i++) {
        assert_null(checks[i].password);
        assert_null(checks[i].users);
    }
    env_close(&e);
}

static void test_reload_bad_files(void **state)
{
    static const char *const bad[] = {"invalid_not_json.json", "invalid_role_unknown.json", "invalid_users_empty.json",
                                      "invalid_duplicate_name.json", "invalid_password_plain.json",
                                      "does_not_exist.json"};
    tuser_t admin = {"admin@example.com", "admin", "adm1n", ""}, viewer = {"viewer@example.com", "db_viewer", "v1", ""};
    tuser_t *users[] = {&admin, &viewer};
    oa_auth_reload_stats_t st;
    char h_admin[256], h_viewer[256], path[512], want[600];
    const oa_user_t *u;
    oa_error_t err;
    env_t e = {0};
    size_t i;

    (void)state;
    tuser_hash(&admin, 1000);
    tuser_hash(&viewer, 1000);
    env_open_users(&e, users, OA_ARRAY_SIZE(users));
    basic(h_admin, sizeof(h_admin), "Basic", admin.name, admin.password);
    basic(h_viewer, sizeof(h_viewer), "Basic", viewer.name, viewer.password);
    assert_int_equal(check_async(&e, h_admin).result, 0);
    u = check_cached(&e, h_admin);
    for (i = 0; i < OA_ARRAY_SIZE(bad); i++) {
        data_path(path, sizeof(path), bad[i]);
        oa_error_clear(&err);
        assert_int_equal(oa_auth_reload(e.auth, path, &st, &err), -1);
        assert_int_equal(err.code, OA_E_BAD_FILE);
        snprintf(want, sizeof(want), "users file %s: ", path);
        if (strncmp(err.text, want, strlen(want)) != 0)
            fail_msg("%s: got \"%s\"", bad[i], err.text);
        assert_null(strstr(err.text, "$pbkdf2"));
        /* The users in force are untouched: the remembered header, and a KDF against the old entries. */
        assert_ptr_equal(check_cached(&e, h_admin), u);
    }
    assert_int_equal(check_async(&e, h_viewer).result, 0);
    env_close(&e);
}

static void test_reload_open(void **state)
{
    oa_auth_reload_stats_t st;
    oa_error_t err;
    env_t e = {0};

    (void)state;
    assert_int_equal(uv_loop_init(&e.loop), 0);
    assert_int_equal(oa_auth_new_open(&e.loop, &e.auth), 0);
    assert_int_equal(oa_auth_reload(e.auth, "/nonexistent/users.json", &st, &err), -1);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    env_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles_table),
        cmocka_unit_test(test_hash_and_verify),
        cmocka_unit_test(test_hash_salts_differ),
        cmocka_unit_test(test_hash_bad_arguments),
        cmocka_unit_test(test_bad_encodings),
        cmocka_unit_test(test_users_invalid_files),
        cmocka_unit_test(test_users_valid_file),
        cmocka_unit_test(test_check_malformed),
        cmocka_unit_test(test_check_flow),
        cmocka_unit_test(test_check_busy),
        cmocka_unit_test(test_same_header_right),
        cmocka_unit_test(test_same_header_refused),
        cmocka_unit_test(test_interleaved_headers),
        cmocka_unit_test(test_callbacks_free_and_restart),
        cmocka_unit_test(test_waiters_bounded),
        cmocka_unit_test(test_open),
        cmocka_unit_test(test_reload_removed_and_changed),
        cmocka_unit_test(test_reload_unchanged_file),
        cmocka_unit_test(test_reload_kdf_in_flight),
        cmocka_unit_test(test_reload_bad_files),
        cmocka_unit_test(test_reload_open),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
