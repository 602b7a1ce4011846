/*
 * Private to the etcd client (cluster/etcd*.c): one HTTP/1.1 connection to one member (etcd_conn.c), the client's
 * shared state, and the helpers that the calls (etcd.c) and the watch (etcd_watch.c) share.
 */
#ifndef OA_CLUSTER_ETCD_INTERNAL_H
#define OA_CLUSTER_ETCD_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "oa_etcd.h"
#include "oa_util.h"

#define ETCD_WHY_MAX 384

typedef struct etcd_conn_s etcd_conn_t;
typedef struct etcd_call_s etcd_call_t;

typedef struct etcd_member_s {
    char *host; /* without brackets */
    char port[8];
    char where[300]; /* "host:port" for sentences and the Host header */
} etcd_member_t;

struct oa_etcd_s {
    uv_loop_t *loop;
    etcd_member_t *members;
    size_t n_members;
    size_t preferred; /* the member that answered last: calls start there */
    char *user, *password;
    char *token; /* from /v3/auth/authenticate; NULL until then, and after etcd refused it */
    SSL_CTX *tls;
    unsigned timeout_ms, attempt_timeout_ms, watch_probe_ms;
    size_t max_body;

    etcd_conn_t *idle;        /* open keep-alive connections with nothing to do */
    etcd_call_t *calls;       /* calls not yet reported */
    oa_etcd_watch_t *watches; /* watches not yet finished */
    unsigned live;            /* connections, calls and watches whose memory is not freed yet */

    uv_timer_t closer; /* the client's own handle: its close callback is where the client may be freed */
    int closing;
    int closer_closed;
    void (*on_closed)(oa_etcd_t *c, void *data);
    void *closed_data;
};

/* ---- one connection (etcd_conn.c) ---- */

/* What a connection tells the one exchange it carries. Handlers may close the connection, release it, or send the
 * next request on it from inside any of these; nothing more fires for the exchange after on_done or a close. */
typedef struct etcd_conn_handler_s {
    /* The status line and the headers arrived. */
    void (*on_headers)(void *ctx, int status);
    /* A piece of the body (chunked or not, already de-chunked). The handler may close the connection here to stop
     * reading. */
    void (*on_body)(void *ctx, const char *p, size_t n);
    /* The exchange ended: rc 0 when the whole answer arrived, else a UV_E* with why (a sentence naming the member).
     * sent is 0 when the request cannot have reached the member (no connection, no TLS session), else 1. After a
     * failure (rc not 0) the connection is already closed: the handler must not use it any more. */
    void (*on_done)(void *ctx, int rc, int sent, const char *why);
} etcd_conn_handler_t;

/* Opens a connection to member m of c (resolve, connect, TLS), or takes an idle open one. Returns 0 with *out set, or
 * a negative UV_E* (nothing to clean up). */
int etcd_conn_get(oa_etcd_t *c, size_t m, etcd_conn_t **out);

/* Sends one request (head and body as one buffer of len bytes, copied) once the connection is up; the answer goes
 * to h with ctx. One exchange at a time. Returns 0, or a negative UV_E* when the request could not be queued (the
 * connection is then closed and nothing fires). */
int etcd_conn_send(etcd_conn_t *k, const char *req, size_t len, const etcd_conn_handler_t *h, void *ctx);

/* Ends the exchange's interest in k: a connection whose answer was complete and that may be kept open goes back to
 * the client's idle list, any other is closed. Nothing fires for the exchange any more. */
void etcd_conn_release(etcd_conn_t *k);

/* true when a byte of the current request went to the socket (the member may have acted on it). */
bool etcd_conn_sent(const etcd_conn_t *k);

/* Closes k at once; nothing fires for the exchange any more. The memory goes in the close callbacks. */
void etcd_conn_close(etcd_conn_t *k);

/* Closes every idle connection of c. */
void etcd_conn_close_idle(oa_etcd_t *c);

/* ---- the client (etcd.c) ---- */

typedef enum etcd_kind_e {
    ETCD_RANGE,
    ETCD_PUT,
    ETCD_DELETE,
    ETCD_TXN,
    ETCD_GRANT,
    ETCD_KEEPALIVE,
    ETCD_REVOKE,
} etcd_kind_t;

#define ETCD_ANY_MEMBER ((size_t)-1)

/* Starts one call of kind with body (a JSON object; the reference is stolen, also on failure). member
 * ETCD_ANY_MEMBER: the call goes where calls go; a member's index: one attempt on that member alone, within the
 * attempt timeout. Returns 0 or a negative UV_E* as the public calls do. */
int etcd_call_start(oa_etcd_t *c, etcd_kind_t kind, json_t *body, size_t member, oa_etcd_cb cb, void *data);

/* Sends on k, to member m, the authentication when it is due (a user and no token, unless skip_auth) or else "POST
 * path" with body; both with the headers every request carries (Host, the token when there is one, and extra: lines
 * ending in CRLF, or NULL, for path only). *authing says which went. The answer goes to h with ctx. Returns 0, or a
 * negative UV_E* with k closed. */
int etcd_send(oa_etcd_t *c, etcd_conn_t *k, size_t m, int skip_auth, const char *path, const char *extra,
              const char *body, const etcd_conn_handler_t *h, void *ctx, int *authing);

/* The JSON body of /v3/auth/authenticate with the client's credentials (a malloc'ed string), or NULL. */
char *etcd_auth_body(const oa_etcd_t *c);

/* Takes the token out of an authenticate answer. Returns 0, UV_EPROTO when there is no usable one, or UV_ENOMEM. */
int etcd_auth_store(oa_etcd_t *c, json_t *answer);

/* How the client reacts to an error etcd reported. */
typedef enum etcd_verdict_e {
    ETCD_V_FINAL,     /* report it */
    ETCD_V_NEXT,      /* the member could not serve the call and did not apply it: try the next member */
    ETCD_V_AMBIGUOUS, /* the member gave up after accepting it: a read tries the next member, a write is unknown */
    ETCD_V_TOKEN,     /* the token is no longer valid: authenticate again */
    ETCD_V_NO_AUTH,   /* authentication is not enabled: go on without a token */
} etcd_verdict_t;

/* Classifies etcd's error (code and message) into *err and a verdict. */
etcd_verdict_t etcd_classify(int grpc_code, const char *message, oa_etcd_err_t *err);

/* Reads etcd's int64 (a JSON string, or a number) from obj[name]; 0 when absent. */
int64_t etcd_json_int64(const json_t *obj, const char *name);

/* Decodes the base64 of obj[name] into a malloc'ed, NUL-terminated buffer (*out, *len); an absent field is an empty
 * one. Returns 0, UV_EINVAL when the field is not base64, or UV_ENOMEM. */
int etcd_json_bytes(const json_t *obj, const char *name, unsigned char **out, size_t *len);

/* Fills kv from one mvccpb.KeyValue object; the key and value buffers are malloc'ed (free with etcd_kv_free).
 * Returns 0, UV_EINVAL (not such an object, or not base64), or UV_ENOMEM. */
int etcd_kv_parse(const json_t *o, oa_etcd_kv_t *kv);
void etcd_kv_free(oa_etcd_kv_t *kv);

/* Base64 of n bytes as a new JSON string, or NULL. */
json_t *etcd_json_b64(const void *p, size_t n);

/* The client's bookkeeping for the memory of connections, calls and watches (live count). */
void etcd_client_hold(oa_etcd_t *c);
void etcd_client_drop(oa_etcd_t *c);

/* ---- the watch (etcd_watch.c) ---- */

/* Stops every watch of c (oa_etcd_close). */
void etcd_watch_cancel_all(oa_etcd_t *c);

#endif
