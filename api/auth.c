/*
 * Users, roles, permissions, password hashes and HTTP Basic authentication.
 *
 * The expensive part of a check is the KDF, so it runs on libuv's thread pool and a verified Authorization header
 * is remembered for a while (keyed by its SHA-256, never by the password itself). The number of KDFs in flight is
 * bounded so that a storm of guesses costs the attacker a 503, not the agent its thread pool. Clients that open many
 * connections at once with the same credentials (a proxy pool, a benchmark) would otherwise fill that bound with
 * copies of one KDF, so a check of a header whose KDF is already running waits on it and shares its answer.
 *
 * The users are one counted, read-only version of the users file. A reload makes a new version current; the old one
 * lives on, untouched, as long as a KDF started on it runs on the thread pool (that thread reads an entry's hash and
 * the version's dummy hash without a lock), and is freed on the loop when the last of them is answered. Counting
 * happens on the loop only, so it needs no atomics.
 */
#include <ctype.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "oa_auth.h"
#include "oa_codec.h"
#include "oa_util.h"

#define PASSWD_PREFIX   "$pbkdf2-sha256$"
#define PASSWD_SALT_LEN 16
#define PASSWD_HASH_LEN 32
#define PASSWD_ITER_MIN 1000u
#define PASSWD_ITER_MAX 10000000u

/* An Authorization header longer than this is refused without being decoded; real credentials are far shorter. */
#define AUTH_HEADER_MAX   1024
#define AUTH_CACHE_SIZE   128
#define AUTH_CACHE_TTL_MS (15u * 60u * 1000u)
#define AUTH_MAX_PENDING  8u
#define USERS_FILE_MAX    (1u << 20)

/* The one table of what each role may do. Only admin holds the OCSP permissions. */
static const struct {
    const char *name;
    unsigned perms;
} roles[OA_ROLE_COUNT] = {
    [OA_ROLE_ADMIN] = {"admin", OA_PERM_VIEW_OCSP_CONFIG | OA_PERM_CONFIG_OCSP | OA_PERM_VIEW_OCSP_STATUS |
                                    OA_PERM_TEST_OCSP_STATUS},
    [OA_ROLE_CLUSTER_MEMBER] = {"cluster_member", 0},
    [OA_ROLE_CLUSTER_VIEWER] = {"cluster_viewer", 0},
    [OA_ROLE_DB_MEMBER] = {"db_member", 0},
    [OA_ROLE_DB_VIEWER] = {"db_viewer", 0},
    [OA_ROLE_USER_MANAGER] = {"user_manager", 0},
    [OA_ROLE_NONE] = {"none", 0},
};

/* One version of the users file, and the hash verified in place of an unknown user's. */
typedef struct oa_auth_users_s {
    unsigned refs; /* the authenticator's, while current, and one per KDF started on it */
    oa_user_t *users;
    size_t nusers;
    /* A well-formed hash that no password is expected to match, as costly as the first user's. */
    char dummy_hash[OA_PASSWD_ENCODED_MAX];
} users_t;

/* One KDF in flight: the check that started it, and the checks of the same header waiting on it, in arrival order. */
typedef struct flight_s {
    oa_auth_check_t *leader; /* NULL when the slot is free */
    unsigned char key[32];
    oa_auth_check_t *first, *last;
    unsigned nwaiters;
} flight_t;

typedef struct cache_entry_s {
    unsigned char key[32];
    const oa_user_t *user; /* NULL when the slot is empty */
    uint64_t expires;      /* uv_now() milliseconds */
} cache_entry_t;

struct oa_auth_s {
    uv_loop_t *loop;
    int open;
    users_t *users; /* the users in force; NULL for an open authenticator */
    unsigned long kdf_runs;
    flight_t flights[AUTH_MAX_PENDING];
    /* Fetched once: an implicit fetch on every request would take OpenSSL's provider locks each time. */
    EVP_MD *sha256;
    cache_entry_t cache[AUTH_CACHE_SIZE];
};

static const oa_user_t anonymous_user = {"anonymous", OA_ROLE_ADMIN, NULL};

int oa_role_parse(const char *name, oa_role_t *out)
{
    size_t i;

    if (name == NULL)
        return -1;
    for (i = 0; i < OA_ROLE_COUNT; i++) {
        if (strcmp(name, roles[i].name) == 0) {
            *out = (oa_role_t)i;
            return 0;
        }
    }
    return -1;
}

const char *oa_role_name(oa_role_t role)
{
    if ((unsigned)role >= OA_ROLE_COUNT)
        return "unknown";
    return roles[role].name;
}

bool oa_role_allows(oa_role_t role, unsigned perms)
{
    if ((unsigned)role >= OA_ROLE_COUNT)
        return false;
    return (roles[role].perms & perms) == perms;
}

const char *oa_perm_name(oa_perm_t perm)
{
    switch (perm) {
    case OA_PERM_VIEW_OCSP_CONFIG:
        return "view_ocsp_config";
    case OA_PERM_CONFIG_OCSP:
        return "config_ocsp";
    case OA_PERM_VIEW_OCSP_STATUS:
        return "view_ocsp_status";
    case OA_PERM_TEST_OCSP_STATUS:
        return "test_ocsp_status";
    }
    return "unknown";
}

/* Splits an encoded hash into its parts. Returns 0, or -1 when any part is malformed. */
static int passwd_parse(const char *encoded, unsigned *iterations, unsigned char salt[PASSWD_SALT_LEN],
                        unsigned char hash[PASSWD_HASH_LEN])
{
    unsigned char buf[48];
    const char *p, *dollar;
    unsigned long iter = 0;
    size_t len;
    size_t n;

    if (encoded == NULL)
        return -1;
    len = strnlen(encoded, OA_PASSWD_ENCODED_MAX);
    if (len >= OA_PASSWD_ENCODED_MAX || strncmp(encoded, PASSWD_PREFIX, strlen(PASSWD_PREFIX)) != 0)
        return -1;
    p = encoded + strlen(PASSWD_PREFIX);

    /* Plain decimal digits without a sign or leading zero, so the number has one spelling too. */
    if (*p < '1' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        iter = iter * 10 + (unsigned long)(*p - '0');
        if (iter > PASSWD_ITER_MAX)
            return -1;
        p++;
    }
    if (iter < PASSWD_ITER_MIN || *p != '$')
        return -1;
    p++;

    dollar = strchr(p, '$');
    if (dollar == NULL)
        return -1;
    if (oa_base64_decode(p, (size_t)(dollar - p), buf, sizeof(buf), &n) != 0 || n != PASSWD_SALT_LEN)
        return -1;
    memcpy(salt, buf, PASSWD_SALT_LEN);
    p = dollar + 1;
    if (oa_base64_decode(p, strlen(p), buf, sizeof(buf), &n) != 0 || n != PASSWD_HASH_LEN)
        return -1;
    memcpy(hash, buf, PASSWD_HASH_LEN);
    *iterations = (unsigned)iter;
    return 0;
}

bool oa_passwd_is_valid_encoding(const char *encoded)
{
    unsigned char salt[PASSWD_SALT_LEN], hash[PASSWD_HASH_LEN];
    unsigned iterations;

    return passwd_parse(encoded, &iterations, salt, hash) == 0;
}

int oa_passwd_hash(const char *password, size_t len, unsigned iterations, char *out, size_t outlen)
{
    unsigned char salt[PASSWD_SALT_LEN], dk[PASSWD_HASH_LEN];
    char salt64[4 * ((PASSWD_SALT_LEN + 2) / 3) + 1], dk64[4 * ((PASSWD_HASH_LEN + 2) / 3) + 1];
    int rc = -1, n;

    if (iterations < PASSWD_ITER_MIN || iterations > PASSWD_ITER_MAX || len > INT_MAX || out == NULL)
        return -1;
    if (RAND_bytes(salt, sizeof(salt)) != 1)
        goto out;
    if (PKCS5_PBKDF2_HMAC(password, (int)len, salt, sizeof(salt), (int)iterations, EVP_sha256(), sizeof(dk), dk) != 1)
        goto out;
    EVP_EncodeBlock((unsigned char *)salt64, salt, sizeof(salt));
    EVP_EncodeBlock((unsigned char *)dk64, dk, sizeof(dk));
    n = snprintf(out, outlen, PASSWD_PREFIX "%u$%s$%s", iterations, salt64, dk64);
    if (n < 0 || (size_t)n >= outlen) {
        if (outlen > 0)
            out[0] = '\0';
        goto out;
    }
    rc = 0;
out:
    OPENSSL_cleanse(dk, sizeof(dk));
    oa_error_add_ssl(NULL);
    return rc;
}

oa_passwd_match_t oa_passwd_verify(const char *encoded, const char *password, size_t len)
{
    unsigned char salt[PASSWD_SALT_LEN], want[PASSWD_HASH_LEN], got[PASSWD_HASH_LEN];
    unsigned iterations;
    oa_passwd_match_t rc = OA_PASSWD_MISMATCH;

    if (passwd_parse(encoded, &iterations, salt, want) != 0)
        return OA_PASSWD_MALFORMED;
    /* A password too long for the KDF's int length cannot match; it is refused like a wrong one. */
    if (len > INT_MAX)
        return OA_PASSWD_MISMATCH;
    if (PKCS5_PBKDF2_HMAC(password, (int)len, salt, sizeof(salt), (int)iterations, EVP_sha256(), sizeof(got), got) ==
        1)
        rc = CRYPTO_memcmp(got, want, sizeof(got)) == 0 ? OA_PASSWD_MATCH : OA_PASSWD_MISMATCH;
    else
        oa_error_add_ssl(NULL);
    OPENSSL_cleanse(got, sizeof(got));
    return rc;
}

static oa_auth_t *auth_alloc(uv_loop_t *loop)
{
    oa_auth_t *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return NULL;
    a->loop = loop;
    a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (a->sha256 == NULL) {
        oa_error_add_ssl(NULL);
        free(a);
        return NULL;
    }
    return a;
}

/* Fills u->dummy_hash with a hash of the given cost whose salt and value are zero bytes, so verifying against it
 * costs what verifying a real user's password costs without a KDF being spent to make it. */
static void set_dummy_hash(users_t *u, unsigned iterations)
{
    snprintf(u->dummy_hash, sizeof(u->dummy_hash), PASSWD_PREFIX "%u$%s$%s", iterations,
             "AAAAAAAAAAAAAAAAAAAAAA==", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
}

static users_t *users_ref(users_t *u)
{
    u->refs++;
    return u;
}

/* Drops one reference; the last one frees the version. */
static void users_unref(users_t *u)
{
    size_t i;

    if (u == NULL || --u->refs > 0)
        return;
    for (i = 0; i < u->nusers; i++) {
        free(u->users[i].name);
        if (u->users[i].password_hash != NULL)
            OPENSSL_cleanse(u->users[i].password_hash, strlen(u->users[i].password_hash));
        free(u->users[i].password_hash);
    }
    free(u->users);
    free(u);
}

static const oa_user_t *users_find(const users_t *u, const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < u->nusers; i++) {
        if (strlen(u->users[i].name) == len && memcmp(u->users[i].name, name, len) == 0)
            return &u->users[i];
    }
    return NULL;
}

/* The entry of u for the same name, role and password hash as old, or NULL: what old's credentials are now. */
static const oa_user_t *users_same(const users_t *u, const oa_user_t *old)
{
    const oa_user_t *e = users_find(u, old->name, strlen(old->name));

    if (e == NULL || e->role != old->role || strcmp(e->password_hash, old->password_hash) != 0)
        return NULL;
    return e;
}

/* Jansson's messages may quote the text near the error, which in a users file can be a password hash; only the
 * part before that quotation is kept. */
static void json_error_reason(const json_error_t *je, char *out, size_t outlen)
{
    const char *near = strstr(je->text, " near ");
    int keep = near != NULL ? (int)(near - je->text) : (int)strlen(je->text);

    snprintf(out, outlen, "%.*s", keep, je->text);
}

static int load_user(const char *path, size_t idx, json_t *entry, oa_user_t *u, oa_error_t *err)
{
    const char *key, *name, *role, *password;
    json_t *v, *jname, *jrole, *jpassword;
    size_t i;

    if (!json_is_object(entry))
        return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu]: expected an object", path, idx);
    json_object_foreach(entry, key, v) {
        if (strcmp(key, "name") != 0 && strcmp(key, "role") != 0 && strcmp(key, "password") != 0)
            return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu]: unknown key \"%.40s\"", path, idx,
                                key);
    }
    jname = json_object_get(entry, "name");
    jrole = json_object_get(entry, "role");
    jpassword = json_object_get(entry, "password");
    if (!json_is_string(jname))
        return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu]: \"name\" %s", path, idx,
                            jname == NULL ? "is missing" : "must be a string");
    name = json_string_value(jname);
    if (name[0] == '\0')
        return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu]: \"name\" is empty", path, idx);
    /* Basic credentials end the user name at the first colon, so such a name could never log in. */
    for (i = 0; name[i] != '\0'; i++) {
        if (name[i] == ':' || iscntrl((unsigned char)name[i]))
            return oa_error_set(err, OA_E_BAD_FILE,
                                "users file %s: users[%zu]: \"name\" must not hold a colon or control characters",
                                path, idx);
    }
    if (!json_is_string(jrole))
        return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu] (\"%.64s\"): \"role\" %s", path, idx, name,
                            jrole == NULL ? "is missing" : "must be a string");
    role = json_string_value(jrole);
    if (oa_role_parse(role, &u->role) != 0)
        return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu]: unknown role \"%.40s\"", path, idx, role);
    if (!json_is_string(jpassword))
        return oa_error_set(err, OA_E_BAD_FILE, "users file %s: users[%zu] (\"%.64s\"): \"password\" %s", path, idx,
                            name, jpassword == NULL ? "is missing" : "must be a string");
    password = json_string_value(jpassword);
    if (!oa_passwd_is_valid_encoding(password))
        return oa_error_set(err, OA_E_BAD_FILE,
                            "users file %s: users[%zu] (\"%.64s\"): \"password\" is not a hash made by "
                            "`ocsp-agent passwd`",
                            path, idx, name);
    u->name = strdup(name);
    u->password_hash = strdup(password);
    if (u->name == NULL || u->password_hash == NULL)
        return oa_error_set(err, OA_E_NOMEM, "users file %s: out of memory", path);
    return 0;
}

/* Reads and checks the users file. Returns 0 with *out set (one reference), or -1 with err filled. */
static int users_load(const char *path, users_t **out, oa_error_t *err)
{
    oa_buf_t text = {0};
    json_error_t je;
    json_t *root = NULL, *list, *v;
    const char *key;
    users_t *u = NULL;
    unsigned char salt[PASSWD_SALT_LEN], hash[PASSWD_HASH_LEN];
    unsigned iterations;
    char reason[160];
    size_t i, j;
    int rc = -1, r;

    *out = NULL;
    r = oa_file_read(path, USERS_FILE_MAX, &text);
    if (r != 0) {
        oa_error_set(err, OA_E_BAD_FILE, "users file %s: cannot be read: %s", path, uv_strerror(r));
        goto out;
    }
    root = json_loadb(text.data, text.len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL) {
        json_error_reason(&je, reason, sizeof(reason));
        oa_error_set(err, OA_E_BAD_FILE, "users file %s: not valid JSON at line %d, column %d: %s", path, je.line,
                     je.column, reason);
        goto out;
    }
    if (!json_is_object(root)) {
        oa_error_set(err, OA_E_BAD_FILE, "users file %s: expected a JSON object with a \"users\" array", path);
        goto out;
    }
    json_object_foreach(root, key, v) {
        if (strcmp(key, "users") != 0) {
            oa_error_set(err, OA_E_BAD_FILE, "users file %s: unknown key \"%.40s\"", path, key);
            goto out;
        }
    }
    list = json_object_get(root, "users");
    if (!json_is_array(list)) {
        oa_error_set(err, OA_E_BAD_FILE, "users file %s: \"users\" %s", path,
                     list == NULL ? "is missing" : "must be an array");
        goto out;
    }
    if (json_array_size(list) == 0) {
        oa_error_set(err, OA_E_BAD_FILE, "users file %s: \"users\" is empty, so no one could log in", path);
        goto out;
    }

    u = calloc(1, sizeof(*u));
    if (u == NULL || (u->users = calloc(json_array_size(list), sizeof(*u->users))) == NULL) {
        oa_error_set(err, OA_E_NOMEM, "users file %s: out of memory", path);
        goto out;
    }
    json_array_foreach(list, i, v) {
        u->nusers = i + 1; /* counted before loading so a half-loaded entry is freed too */
        if (load_user(path, i, v, &u->users[i], err) != 0)
            goto out;
        for (j = 0; j < i; j++) {
            if (strcmp(u->users[j].name, u->users[i].name) == 0) {
                oa_error_set(err, OA_E_BAD_FILE,
                             "users file %s: users[%zu]: duplicate name \"%.64s\" (see users[%zu])", path, i,
                             u->users[i].name, j);
                goto out;
            }
        }
    }
    /* Unknown names are checked against a hash as costly as the first user's, so both answers take as long. */
    passwd_parse(u->users[0].password_hash, &iterations, salt, hash);
    set_dummy_hash(u, iterations);
    u->refs = 1;
    *out = u;
    u = NULL;
    rc = 0;
out:
    if (u != NULL) {
        u->refs = 1;
        users_unref(u);
    }
    json_decref(root);
    if (text.data != NULL)
        OPENSSL_cleanse(text.data, text.len);
    oa_buf_free(&text);
    return rc;
}

int oa_auth_new_from_file(uv_loop_t *loop, const char *path, oa_auth_t **out, oa_error_t *err)
{
    users_t *u = NULL;
    oa_auth_t *a;

    *out = NULL;
    if (users_load(path, &u, err) != 0)
        return -1;
    a = auth_alloc(loop);
    if (a == NULL) {
        users_unref(u);
        return oa_error_set(err, OA_E_NOMEM, "users file %s: out of memory", path);
    }
    a->users = u;
    *out = a;
    return 0;
}

/* Forgets every remembered header of a user that is not in next as it was; the others now name next's entry. */
static void cache_follow(oa_auth_t *a, const users_t *next)
{
    size_t i;

    for (i = 0; i < AUTH_CACHE_SIZE; i++) {
        cache_entry_t *e = &a->cache[i];

        if (e->user == NULL)
            continue;
        e->user = users_same(next, e->user);
        if (e->user == NULL)
            OPENSSL_cleanse(e, sizeof(*e));
    }
}

int oa_auth_reload(oa_auth_t *a, const char *path, oa_auth_reload_stats_t *stats, oa_error_t *err)
{
    users_t *next = NULL, *old = a->users;
    const oa_user_t *e;
    size_t i;

    memset(stats, 0, sizeof(*stats));
    if (a->open)
        return oa_error_set(err, OA_E_BAD_OPTION, "users file %s: authentication is off (--no-auth)", path);
    if (users_load(path, &next, err) != 0)
        return -1;
    stats->users = next->nusers;
    for (i = 0; i < next->nusers; i++) {
        e = users_find(old, next->users[i].name, strlen(next->users[i].name));
        if (e == NULL)
            stats->added++;
        else if (users_same(next, e) != NULL)
            stats->unchanged++;
        else
            stats->changed++;
    }
    for (i = 0; i < old->nusers; i++) {
        if (users_find(next, old->users[i].name, strlen(old->users[i].name)) == NULL)
            stats->removed++;
    }
    if (stats->added == 0 && stats->removed == 0 && stats->changed == 0) {
        users_unref(next);
        return 0;
    }
    cache_follow(a, next);
    a->users = next;
    /* KDFs still running on the old version hold their own references: it is freed when the last is answered. */
    users_unref(old);
    return 0;
}

int oa_auth_new_open(uv_loop_t *loop, oa_auth_t **out)
{
    oa_auth_t *a = auth_alloc(loop);

    *out = NULL;
    if (a == NULL)
        return UV_ENOMEM;
    a->open = 1;
    *out = a;
    return 0;
}

void oa_auth_free(oa_auth_t *a)
{
    if (a == NULL)
        return;
    users_unref(a->users);
    OPENSSL_cleanse(a->cache, sizeof(a->cache));
    OPENSSL_cleanse(a->flights, sizeof(a->flights));
    EVP_MD_free(a->sha256);
    free(a);
}

unsigned oa_auth_pending(const oa_auth_t *a)
{
    unsigned n = 0;
    size_t i;

    for (i = 0; i < AUTH_MAX_PENDING; i++)
        n += a->flights[i].leader != NULL;
    return n;
}

unsigned long oa_auth_kdf_runs(const oa_auth_t *a)
{
    return a->kdf_runs;
}

static const oa_user_t *cache_lookup(oa_auth_t *a, const unsigned char key[32])
{
    uint64_t now = uv_now(a->loop);
    size_t i;

    for (i = 0; i < AUTH_CACHE_SIZE; i++) {
        cache_entry_t *e = &a->cache[i];

        if (e->user != NULL && CRYPTO_memcmp(e->key, key, 32) == 0) {
            if (e->expires > now)
                return e->user;
            e->user = NULL; /* expired: the next check pays the KDF again */
        }
    }
    return NULL;
}

/* Stores a verified key, reusing an empty or expired slot, else the one closest to expiry. */
static void cache_store(oa_auth_t *a, const unsigned char key[32], const oa_user_t *user)
{
    uint64_t now = uv_now(a->loop);
    cache_entry_t *victim = &a->cache[0];
    size_t i;

    for (i = 0; i < AUTH_CACHE_SIZE; i++) {
        cache_entry_t *e = &a->cache[i];

        if (e->user == NULL || e->expires <= now) {
            victim = e;
            break;
        }
        if (e->expires < victim->expires)
            victim = e;
    }
    memcpy(victim->key, key, 32);
    victim->user = user;
    victim->expires = now + AUTH_CACHE_TTL_MS;
}

static void wipe_password(oa_auth_check_t *check)
{
    if (check->password != NULL) {
        OPENSSL_cleanse(check->password, check->password_len);
        free(check->password);
        check->password = NULL;
    }
    check->password_len = 0;
}

/* The flight a new check of key may wait on: one running the KDF for key against the users in force, or NULL. A
 * flight started before a reload verifies against entries that may be gone, so it takes no new waiters. The key is a
 * hash of the credentials, so it is compared in constant time like the cache's keys. */
static flight_t *flight_find(oa_auth_t *a, const unsigned char key[32])
{
    size_t i;

    for (i = 0; i < AUTH_MAX_PENDING; i++) {
        flight_t *f = &a->flights[i];

        if (f->leader != NULL && f->leader->users == a->users && CRYPTO_memcmp(f->key, key, 32) == 0)
            return f;
    }
    return NULL;
}

/* The flight check leads (there is one: a flight ends only in its leader's kdf_done). */
static flight_t *flight_of(oa_auth_t *a, const oa_auth_check_t *check)
{
    size_t i;

    for (i = 0; i < AUTH_MAX_PENDING; i++) {
        if (a->flights[i].leader == check)
            return &a->flights[i];
    }
    return NULL;
}

static void flight_clear(flight_t *f)
{
    OPENSSL_cleanse(f->key, sizeof(f->key));
    f->leader = NULL;
    f->first = f->last = NULL;
    f->nwaiters = 0;
}

/* Runs on a thread-pool thread: the only place the KDF runs for a request. */
static void kdf_work(uv_work_t *work)
{
    oa_auth_check_t *check = oa_container_of(work, oa_auth_check_t, work);
    /* Both strings belong to check->users, which this check's reference keeps alive and a reload never changes. */
    const char *encoded = check->user != NULL ? check->user->password_hash : check->users->dummy_hash;
    int ok = oa_passwd_verify(encoded, check->password, check->password_len) == OA_PASSWD_MATCH;

    check->verified = ok && check->user != NULL;
    wipe_password(check);
}

/* Runs on the loop thread once the KDF finished (or was cancelled), and answers the check that started it and then
 * every check that waited on it, with the same result. */
static void kdf_done(uv_work_t *work, int status)
{
    oa_auth_check_t *check = oa_container_of(work, oa_auth_check_t, work);
    oa_auth_t *a = check->auth;
    flight_t *f = flight_of(a, check);
    const oa_user_t *user = NULL;
    oa_auth_check_t *waiter, *next;
    int result = OA_E_UNAUTHORIZED;

    /* The flight is closed and the answer cached before any callback runs, so a callback that checks the same header
     * again meets the cache after a success, or starts a KDF of its own after a failure, and never joins the list
     * being walked below. */
    waiter = f->first;
    flight_clear(f);
    wipe_password(check);
    /* A KDF started before a reload verified an entry that may be gone: it authenticates only a user that is still
     * there with the same role and hash, and then as the entry in force. */
    if (status == 0 && check->verified)
        user = check->users == a->users ? check->user : users_same(a->users, check->user);
    if (user != NULL) {
        result = 0;
        cache_store(a, check->key, user);
    }
    users_unref(check->users);
    check->users = NULL;
    check->user = user;
    /* Each callback may free its check, so a check is not touched once its callback has been called. */
    check->cb(check, result, user);
    for (; waiter != NULL; waiter = next) {
        next = waiter->next;
        waiter->next = NULL;
        waiter->user = user;
        waiter->cb(waiter, result, user);
    }
}

/* Parses "Basic <base64 of user:password>" into buf. Returns the decoded length and the colon's offset, or -1. */
static int parse_basic(const char *header, size_t len, unsigned char *buf, size_t bufmax, size_t *colon)
{
    const char *p = header, *end = header + len;
    unsigned char *c;
    size_t n;

    if (len < 6 || strncasecmp(p, "Basic", 5) != 0 || (p[5] != ' ' && p[5] != '\t'))
        return -1;
    p += 5;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (oa_base64_decode(p, (size_t)(end - p), buf, bufmax, &n) != 0)
        return -1;
    c = memchr(buf, ':', n);
    if (c == NULL) {
        OPENSSL_cleanse(buf, n);
        return -1;
    }
    *colon = (size_t)(c - buf);
    return (int)n;
}

oa_auth_verdict_t oa_auth_check(oa_auth_t *a, const char *header, size_t len, oa_auth_check_t *check, oa_auth_cb cb,
                                const oa_user_t **user)
{
    unsigned char decoded[AUTH_HEADER_MAX];
    const oa_user_t *cached;
    flight_t *f;
    size_t colon = 0, i;
    oa_auth_verdict_t rc;
    int n;

    *user = NULL;
    if (a->open) {
        *user = &anonymous_user;
        return OA_AUTH_VERIFIED;
    }
    if (header == NULL || len > AUTH_HEADER_MAX)
        return OA_AUTH_REFUSED;
    n = parse_basic(header, len, decoded, sizeof(decoded), &colon);
    if (n < 0)
        return OA_AUTH_REFUSED;

    if (EVP_Digest(header, len, check->key, NULL, a->sha256, NULL) != 1) {
        oa_error_add_ssl(NULL);
        rc = OA_AUTH_REFUSED;
        goto out;
    }
    cached = cache_lookup(a, check->key);
    if (cached != NULL) {
        *user = cached;
        rc = OA_AUTH_VERIFIED;
        goto out;
    }

    check->auth = a;
    check->cb = cb;
    check->verified = 0;
    check->next = NULL;
    check->users = NULL;
    check->password = NULL;
    check->password_len = 0;
    f = flight_find(a, check->key);
    if (f != NULL) {
        /* The same header is being verified already: its answer will be this check's answer, so no KDF and no copy
         * of the password are needed. The list is bounded so that one header cannot pin unbounded memory. */
        if (f->nwaiters >= OA_AUTH_MAX_WAITERS) {
            rc = OA_AUTH_BUSY;
            goto out;
        }
        check->user = NULL;
        if (f->last != NULL)
            f->last->next = check;
        else
            f->first = check;
        f->last = check;
        f->nwaiters++;
        rc = OA_AUTH_QUEUED;
        goto out;
    }
    /* A new header needs a KDF of its own, and a free slot for it. */
    f = NULL;
    for (i = 0; i < AUTH_MAX_PENDING && f == NULL; i++) {
        if (a->flights[i].leader == NULL)
            f = &a->flights[i];
    }
    if (f == NULL) {
        rc = OA_AUTH_BUSY;
        goto out;
    }
    /* An unknown name still pays for a KDF (against the dummy hash) and is answered through the callback, so
     * neither the timing nor the kind of answer tells which names exist. */
    check->user = users_find(a->users, (const char *)decoded, colon);
    check->password_len = (size_t)n - colon - 1;
    check->password = malloc(check->password_len + 1);
    if (check->password == NULL) {
        rc = OA_AUTH_BUSY;
        goto out;
    }
    memcpy(check->password, decoded + colon + 1, check->password_len);
    check->password[check->password_len] = '\0';
    /* Taken before the work is queued: the thread may start reading at once. */
    check->users = users_ref(a->users);
    if (uv_queue_work(a->loop, &check->work, kdf_work, kdf_done) != 0) {
        wipe_password(check);
        users_unref(check->users);
        check->users = NULL;
        rc = OA_AUTH_BUSY;
        goto out;
    }
    f->leader = check;
    memcpy(f->key, check->key, sizeof(f->key));
    a->kdf_runs++;
    rc = OA_AUTH_QUEUED;
out:
    OPENSSL_cleanse(decoded, (size_t)n);
    return rc;
}
