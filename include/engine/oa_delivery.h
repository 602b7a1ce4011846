/*
 * Staple delivery (API.md section 6): the verified response reaches the TLS endpoints that hand it to clients.
 *
 * The delivery keeps the current staple (a copy of the scheduler's cached response, or none) and a list of targets:
 * HAProxy runtime sockets, the `<crt>.ocsp` file HAProxy loads at start-up, a hook program, and the agent's own
 * HTTPS API. Every change of the staple bumps a generation number and is handed to every target; each target
 * delivers it on the loop, never blocking, and reports back. Per target the delivery keeps what the status and the
 * metrics show (state: pending, delivered, failed; last delivery, last error, counters) and hands it out as a
 * snapshot that the API renders. It logs `staple_delivered` and `staple_delivery_failed` once per change of a
 * target's state, not once per try.
 */
#ifndef OA_DELIVERY_H
#define OA_DELIVERY_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "oa_error.h"
#include "oa_ocsp.h"
#include "oa_util.h"

typedef struct oa_delivery_s oa_delivery_t;

typedef enum oa_dtarget_state_e {
    OA_DTARGET_PENDING,   /* nothing delivered yet for the current generation */
    OA_DTARGET_DELIVERED, /* the target holds the current staple (or, after a removal, staples nothing) */
    OA_DTARGET_FAILED,    /* the last try for the current generation failed; last_error says why */
} oa_dtarget_state_t;

const char *oa_dtarget_state_name(oa_dtarget_state_t s); /* "pending", "delivered", "failed" */

typedef struct oa_delivery_options_s {
    const char *node_id;     /* for the hook's OCSP_AGENT_NODE_ID; copied */
    const char *staple_path; /* <data-dir>/ocsp.der, handed to the hook; copied */
} oa_delivery_options_t;

/* Creates an empty delivery (no target, no staple). Returns 0 with *out set, or UV_ENOMEM. */
int oa_delivery_new(uv_loop_t *loop, const oa_delivery_options_t *opts, oa_delivery_t **out);

/*
 * Targets, added at start-up before the first staple is set. Each returns 0, or -1 with err filled
 * (OA_E_BAD_OPTION naming the option and the problem, for start-up's one error line).
 *   haproxy_socket: spec is a UNIX socket path (starts with '/') or "ADDR:PORT" / "[ADDR]:PORT" on loopback.
 *   haproxy_crt:    the PEM file HAProxy serves; the delivery keeps "<crt>.ocsp" equal to the staple.
 *   hook:           an executable path, run as `PROGRAM EVENT STAPLE_FILE` without a shell.
 *   api:            the agent's own HTTPS API: every handshake on ctx (borrowed; d must outlive its connections)
 *                   whose client asks for the certificate status gets the current staple, none while there is none.
 *                   Called again with another context (the API's certificate was reloaded), it staples on that one
 *                   too, keeping the one "api" target; added after a staple was set, the target holds it at once.
 */
int oa_delivery_add_haproxy_socket(oa_delivery_t *d, const char *spec, oa_error_t *err);
int oa_delivery_add_haproxy_crt(oa_delivery_t *d, const char *crt_path, oa_error_t *err);
int oa_delivery_add_hook(oa_delivery_t *d, const char *program, oa_error_t *err);
int oa_delivery_add_api(oa_delivery_t *d, SSL_CTX *ctx, oa_error_t *err);
/* Removes the "api" target, if any, from the list, the status and the metrics (the API's reloaded certificate is no
 * longer the watched one). Contexts it was added on keep answering status requests for the connections they still
 * serve; the daemon gives new connections a context without that callback. */
void oa_delivery_remove_api(oa_delivery_t *d);

/* What oa_delivery_set_staple did. */
typedef enum oa_delivery_staple_e {
    OA_DELIVERY_STAPLE_SET,     /* res is the current staple (or none is, for NULL); unchanged when it already was */
    OA_DELIVERY_STAPLE_REFUSED, /* res is not about the watched certificate (oa_delivery_set_target): logged as
                                 * `staple_refused`, and the staple counts as removed */
    OA_DELIVERY_STAPLE_NOMEM,   /* out of memory while copying res: the staple counts as removed */
} oa_delivery_staple_t;

/*
 * Makes res (borrowed; copied) the current staple, or removes it (res NULL: invalidated, expired, disabled with
 * nothing valid). The same response as the current one (equal DER) changes nothing. Otherwise the generation grows
 * and every target is handed the change at once. Returns what it did (oa_delivery_staple_t).
 */
oa_delivery_staple_t oa_delivery_set_staple(oa_delivery_t *d, const oa_ocsp_result_t *res);

/*
 * The watched certificate (borrowed for the call; NULL: none, every staple is taken). From then on a staple that is
 * not about target's CertID is refused by oa_delivery_set_staple (OA_DELIVERY_STAPLE_REFUSED, a `staple_refused`
 * log line, and the staple counts as removed). A target with another CertID than the previous one drops the
 * current staple at once: every target is handed a removal (the `<crt>.ocsp` file emptied, the hook run with
 * `removed`), which oa_delivery_cert_gen (engine/target.h) tells apart from an expiry. The same CertID changes
 * nothing. Returns 0, or UV_ENOMEM (nothing changed).
 */
int oa_delivery_set_target(oa_delivery_t *d, const oa_ocsp_target_t *target);

/* The current staple (borrowed, valid until the next oa_delivery_set_staple), or NULL when there is none. */
const oa_ocsp_result_t *oa_delivery_staple(const oa_delivery_t *d);

/* How long a target whose delivery failed waits before its next try when it has no rule of its own (the hook
 * retries every recovery_frequency, scaled by --time-scale). Applied at start-up and on every configuration change. */
void oa_delivery_set_retry_ms(oa_delivery_t *d, uint64_t retry_ms);

/* One target as the status and the metrics show it. The strings are borrowed from the delivery: read them on the
 * loop before the targets change (oa_delivery_remove_api, oa_delivery_close) or the target reports again. */
typedef struct oa_delivery_target_status_s {
    const char *target;         /* "haproxy:/run/haproxy/admin.sock", "file:...", "hook:...", "api" */
    oa_dtarget_state_t state;   /* pending too while a target that took the previous staple has not yet
                                   reported on the current one */
    time_t last_delivery;       /* wall clock of the last successful try, 0 for none */
    const char *last_error;     /* NULL when the last try succeeded */
    bool delivered;             /* the target holds the current staple */
    uint64_t deliveries_ok;     /* tries by result */
    uint64_t deliveries_failed;
} oa_delivery_target_status_t;

/* Every target, in the order they were added. targets is malloc'ed (NULL when count is 0) and the caller's:
 * oa_delivery_status_free frees it. */
typedef struct oa_delivery_status_s {
    oa_delivery_target_status_t *targets;
    size_t count;
} oa_delivery_status_t;

/* Fills st with every target's state. Returns 0, or UV_ENOMEM with st empty. */
int oa_delivery_snapshot(const oa_delivery_t *d, oa_delivery_status_t *st);
/* Frees st->targets and empties st; NULL-safe and idempotent. */
void oa_delivery_status_free(oa_delivery_status_t *st);

/* Number of targets, and whether every one holds the current staple (for tests and logs). */
size_t oa_delivery_target_count(const oa_delivery_t *d);
bool oa_delivery_all_delivered(const oa_delivery_t *d);

/* Stops every target (a hook still running is killed), closes every handle; done fires once all is closed and d
 * is freed. */
void oa_delivery_close(oa_delivery_t *d, void (*done)(void *arg), void *arg);

#endif
