/*
 * Users, roles, permissions and HTTP Basic authentication.
 *
 * Passwords are stored as "$pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>" (PBKDF2-HMAC-SHA256 from
 * OpenSSL, 16-byte random salt, 32-byte hash). The KDF runs on libuv's thread pool, never on the loop; a verified
 * Authorization header is remembered (keyed by its SHA-256) so later requests with it cost one hash, not the KDF.
 * Checks of a header whose KDF is already running share that KDF instead of starting another.
 *
 * The users file can be read again while the agent runs (oa_auth_reload): the authenticator stays the same object,
 * so the API's borrowed pointer, the bound on KDFs in flight and the cache of unchanged users carry over, and the
 * swap needs no coordination with the requests in progress.
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
/* true when role holds every permission bit in perms (one table, in auth.c). */
bool oa_role_allows(oa_role_t role, unsigned perms);
/* "view_ocsp_config" for OA_PERM_VIEW_OCSP_CONFIG (a single bit). */
const char *oa_perm_name(oa_perm_t perm);

/* Hashes password (len bytes) with a fresh salt into out. Returns 0 or -1 (OpenSSL failure, out too small). */
int oa_passwd_hash(const char *password, size_t len, unsigned iterations, char *out, size_t outlen);
/* What oa_passwd_verify found. */
typedef enum oa_passwd_match_e {
    OA_PASSWD_MATCH,     /* the password is the one encoded */
    OA_PASSWD_MISMATCH,  /* it is not (or the KDF failed: never a match by accident) */
    OA_PASSWD_MALFORMED, /* encoded is not a valid hash string */
} oa_passwd_match_t;

/* Checks password against encoded, in constant time in the password. Runs the full KDF: call it off the loop. */
oa_passwd_match_t oa_passwd_verify(const char *encoded, const char *password, size_t len);
/* true when encoded is a well-formed hash string (checked at load time). */
bool oa_passwd_is_valid_encoding(const char *encoded);

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
/* What oa_auth_reload found: users in the new file, and how they differ from those in force before it. A user is
 * unchanged when its name, role and password hash are all the same; changed when its name is kept but its role or
 * password hash is not. */
typedef struct oa_auth_reload_stats_s {
    size_t users;
    size_t added;
    size_t removed;
    size_t changed;
    size_t unchanged;
} oa_auth_reload_stats_t;

/*
 * Reads the users file at path again, with every check of oa_auth_new_from_file, and puts it in force at once, whole,
 * or not at all.
 * Returns 0 with stats filled: when nothing was added, removed or changed, nothing is touched (the users in force
 * stay, with their cache). Otherwise, from the next check on:
 *   - a removed or changed user's remembered credentials are forgotten, so its next request pays the KDF against the
 *     new entry (a changed role thus takes effect at once, and an old password is refused);
 *   - a KDF already running for an old entry of a removed or changed user does not authenticate: every check waiting
 *     on it is answered OA_E_UNAUTHORIZED; a check that arrives after the reload with the same header starts a KDF of
 *     its own against the new entry rather than wait on the old one;
 *   - an unchanged user keeps its remembered credentials, and a KDF running for it still authenticates, so no request
 *     of an unchanged user pays a new KDF because of the reload.
 * The old entries stay allocated, untouched, until the last KDF that reads them has been answered, so a reload may
 * happen at any time on the loop, even with checks pending.
 * Returns -1 with err filled (the sentences of oa_auth_new_from_file, naming the file and the entry; OA_E_BAD_OPTION
 * for an open authenticator, which has no file) and the users in force unchanged.
 */
int oa_auth_reload(oa_auth_t *a, const char *path, oa_auth_reload_stats_t *stats, oa_error_t *err);
/* An authenticator that lets every request through as an anonymous admin (--no-auth). */
int oa_auth_new_open(uv_loop_t *loop, oa_auth_t **out);
/* At most this many checks wait on one KDF besides the check that started it; more get OA_AUTH_BUSY. With at
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
/* Fires on the loop thread exactly once per check that oa_auth_check answered OA_AUTH_QUEUED to, whether that check started the
 * KDF or waits on another's. result is 0 with user set, or OA_E_UNAUTHORIZED with user NULL. The callback may free
 * check and may start new checks; it must not free the authenticator while other checks are pending.
 * A user pointer (here or from oa_auth_check) is an entry of the users in force: use it at once, since the next
 * oa_auth_reload that changes the users may free it. */
typedef void (*oa_auth_cb)(oa_auth_check_t *check, int result, const oa_user_t *user);

struct oa_auth_check_s {
    uv_work_t work;        /* private */
    oa_auth_check_t *next; /* private: the next check waiting on the same KDF */
    struct oa_auth_users_s *users; /* private: the users the KDF of this check reads (a counted reference) */
    oa_auth_t *auth;
    oa_auth_cb cb;
    const oa_user_t *user;
    unsigned char key[32];
    char *password;
    size_t password_len;
    int verified;
    void *data; /* the caller's */
};

/* What oa_auth_check did with a header. */
typedef enum oa_auth_verdict_e {
    OA_AUTH_VERIFIED, /* verified now (cache hit, or an open authenticator); *user is set; cb will not fire */
    OA_AUTH_QUEUED,   /* the KDF was queued, or check waits on the KDF already running for the same header (the
                       * same bytes: equal SHA-256); cb fires later with the result, the same for every check of
                       * that header. check must stay alive until then. A waiting check starts no KDF, holds no copy
                       * of the password and does not count against the 8 KDFs in flight. */
    OA_AUTH_REFUSED,  /* no header, not "Basic", bad base64, no colon: answer 401 now. An unknown user name is
                       * answered through cb, after a KDF against a dummy hash, so that timing does not tell which
                       * names exist (checks of the same such header share that KDF too). */
    OA_AUTH_BUSY,     /* a new header while 8 KDFs are in flight (a guess storm), or a header whose KDF already has
                       * OA_AUTH_MAX_WAITERS checks waiting on it: answer 503 now. */
} oa_auth_verdict_t;

/* Checks an Authorization header value (header may be NULL when the request had none). */
oa_auth_verdict_t oa_auth_check(oa_auth_t *a, const char *header, size_t len, oa_auth_check_t *check, oa_auth_cb cb,
                                const oa_user_t **user);

#endif
