/*
 * Users, roles, permissions and HTTP Basic authentication.
 *
 * Passwords are stored as "$pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>" (PBKDF2-HMAC-SHA256 from
 * OpenSSL, 16-byte random salt, 32-byte hash). The KDF runs on libuv's thread pool, never on the loop; a verified
 * Authorization header is remembered (keyed by its SHA-256) so later requests with it cost one hash, not the KDF.
 * Checks of a header whose KDF is already running share that KDF instead of starting another.
 */
#ifndef OA_AUTH_H
#define OA_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "oa_error.h"

#define OA_PASSWD_ITERATIONS 600000
#define OA_PASSWD_ENCODED_MAX 160

typedef enum oa_role_e {
    OA_ROLE_ADMIN,
    OA_ROLE_CLUSTER_MEMBER,
    OA_ROLE_CLUSTER_VIEWER,
    OA_ROLE_DB_MEMBER,
    OA_ROLE_DB_VIEWER,
    OA_ROLE_USER_MANAGER,
    OA_ROLE_NONE,
    OA_ROLE_COUNT
} oa_role_t;

typedef enum oa_perm_e {
    OA_PERM_VIEW_OCSP_CONFIG = 1u << 0,
    OA_PERM_CONFIG_OCSP = 1u << 1,
    OA_PERM_VIEW_OCSP_STATUS = 1u << 2,
    OA_PERM_TEST_OCSP_STATUS = 1u << 3,
} oa_perm_t;

/* "admin" -> OA_ROLE_ADMIN. Returns 0 or -1. */
int oa_role_parse(const char *name, oa_role_t *out);
const char *oa_role_name(oa_role_t role);
/* 1 when role holds every permission bit in perms (one table, in auth.c). */
int oa_role_allows(oa_role_t role, unsigned perms);
/* "view_ocsp_config" for OA_PERM_VIEW_OCSP_CONFIG (a single bit). */
const char *oa_perm_name(oa_perm_t perm);

/* Hashes password (len bytes) with a fresh salt into out. Returns 0 or -1 (OpenSSL failure, out too small). */
int oa_passwd_hash(const char *password, size_t len, unsigned iterations, char *out, size_t outlen);
/* 1 when password matches encoded, 0 when not, -1 when encoded is not a valid hash string. Constant time in the
 * password. Runs the full KDF: call it off the loop. */
int oa_passwd_verify(const char *encoded, const char *password, size_t len);
/* 1 when encoded is a well-formed hash string (checked at load time). */
int oa_passwd_is_valid_encoding(const char *encoded);

typedef struct oa_user_s {
    char *name;
    oa_role_t role;
    char *password_hash;
} oa_user_t;

typedef struct oa_auth_s oa_auth_t;

/* Loads the users file ({"users": [{"name", "role", "password"}]}), refusing duplicates, unknown roles, bad hashes,
 * unknown keys. Returns 0 with *out set, or -1 with err filled (OA_E_BAD_FILE, sentence names the file and the
 * entry). */
int oa_auth_new_from_file(uv_loop_t *loop, const char *path, oa_auth_t **out, oa_error_t *err);
/* An authenticator that lets every request through as an anonymous admin (--no-auth). */
int oa_auth_new_open(uv_loop_t *loop, oa_auth_t **out);
/* At most this many checks wait on one KDF besides the check that started it; more get -OA_E_AUTH_BUSY. With at
 * most 8 KDFs in flight, this bounds the checks that can be waiting at once. */
#define OA_AUTH_MAX_WAITERS 1024

/* Frees a; no check may be pending, neither one whose KDF runs nor one waiting on another's KDF. */
void oa_auth_free(oa_auth_t *a);
/* The number of KDFs still running (at most 8). Checks waiting on another check's KDF are not counted. */
unsigned oa_auth_pending(const oa_auth_t *a);
/* The number of KDFs a has started since it was made (for tests and statistics). */
unsigned long oa_auth_kdf_runs(const oa_auth_t *a);

/* One authentication in progress; embed it in the request or connection that waits for it. */
typedef struct oa_auth_check_s oa_auth_check_t;
/* Fires on the loop thread exactly once per check that oa_auth_check answered 1 to, whether that check started the
 * KDF or waits on another's. result is 0 with user set, or OA_E_UNAUTHORIZED with user NULL. The callback may free
 * check and may start new checks; it must not free the authenticator while other checks are pending. */
typedef void (*oa_auth_cb)(oa_auth_check_t *check, int result, const oa_user_t *user);

struct oa_auth_check_s {
    uv_work_t work;        /* private */
    oa_auth_check_t *next; /* private: the next check waiting on the same KDF */
    oa_auth_t *auth;
    oa_auth_cb cb;
    const oa_user_t *user;
    unsigned char key[32];
    char *password;
    size_t password_len;
    int verified;
    void *data; /* the caller's */
};

/*
 * Checks an Authorization header value (header may be NULL when the request had none).
 * Returns:
 *   0                  verified now (cache hit, or an open authenticator); *user is set; cb will not fire.
 *   1                  the KDF was queued, or check waits on the KDF already running for the same header (the
 *                      same bytes: equal SHA-256); cb fires later with the result, the same for every check of
 *                      that header. check must stay alive until then. A waiting check starts no KDF, holds no copy
 *                      of the password and does not count against the 8 KDFs in flight.
 *   -OA_E_UNAUTHORIZED no header, not "Basic", bad base64, no colon: answer 401 now. An unknown user name is
 *                      answered through cb, after a KDF against a dummy hash, so that timing does not tell which
 *                      names exist (checks of the same such header share that KDF too).
 *   -OA_E_AUTH_BUSY    a new header while 8 KDFs are in flight (a guess storm), or a header whose KDF already has
 *                      OA_AUTH_MAX_WAITERS checks waiting on it: answer 503 now.
 */
int oa_auth_check(oa_auth_t *a, const char *header, size_t len, oa_auth_check_t *check, oa_auth_cb cb,
                  const oa_user_t **user);

#endif
