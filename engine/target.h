/*
 * What a delivery target implements, and what the delivery offers it (engine/delivery.c). Private to engine/.
 *
 * A target embeds oa_dtarget_t as its first member. The delivery calls ops->update on the loop after every change
 * of the staple; the target reads the staple with oa_delivery_staple() and oa_delivery_generation(), starts
 * delivering it without blocking, and reports each finished try with oa_dtarget_report(), naming the generation it
 * tried. A report for an older generation only counts the try: the state follows the current generation.
 * ops->close stops the target; it calls oa_dtarget_closed() once its handles are closed (at once if it has none),
 * and the delivery then calls ops->free.
 */
#ifndef OA_ENGINE_TARGET_H
#define OA_ENGINE_TARGET_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "oa_delivery.h"

typedef struct oa_dtarget_s oa_dtarget_t;

typedef struct oa_dtarget_ops_s {
    void (*update)(oa_dtarget_t *t); /* the staple changed; never blocks */
    void (*close)(oa_dtarget_t *t);  /* stop; call oa_dtarget_closed when every handle is closed */
    void (*free)(oa_dtarget_t *t);   /* frees the target itself, after oa_dtarget_closed */
} oa_dtarget_ops_t;

#define OA_DTARGET_ERROR_MAX 256

struct oa_dtarget_s {
    const oa_dtarget_ops_t *ops;
    oa_delivery_t *delivery;
    char *name; /* "haproxy:/run/haproxy/admin.sock", "file:/etc/haproxy/proxy.pem.ocsp", "hook:/x", "api"; owned */
    struct oa_dtarget_s *next;

    /* Kept by engine/delivery.c; targets read, never write. state is the outcome of the last try that was about
     * the generation current at the time: DELIVERED with delivered_gen behind the current generation shows as
     * pending. */
    oa_dtarget_state_t state;
    uint64_t delivered_gen; /* the generation the target last delivered, 0 for none */
    int delivered_status;   /* the oa_cert_status_t it last delivered, -1 for a removal or none */
    time_t last_delivery;   /* wall clock of the last successful try, 0 for none */
    bool have_error;
    char last_error[OA_DTARGET_ERROR_MAX];
    uint64_t count_ok;
    uint64_t count_failed;
    bool closing;
};

/*
 * Initialises the common part of a target (name is copied) and appends it to d's list; the delivery owns it from
 * then on (ops->free is called after close). Returns 0 or UV_ENOMEM (then nothing was appended; the caller frees its
 * target).
 */
int oa_dtarget_attach(oa_delivery_t *d, oa_dtarget_t *t, const oa_dtarget_ops_t *ops, const char *name);

/*
 * The outcome of one try to deliver generation gen: error NULL when the target now holds it, else one sentence.
 * Counts the try, updates state, last_delivery and last_error, and logs staple_delivered / staple_delivery_failed
 * when the state changes (or, for a failure, when its reason changes).
 */
void oa_dtarget_report(oa_dtarget_t *t, uint64_t gen, const char *error);

/* The target's handles are all closed: the delivery may free it. */
void oa_dtarget_closed(oa_dtarget_t *t);

/* The current generation: 0 before the first oa_delivery_set_staple, then one more for every change. */
uint64_t oa_delivery_generation(const oa_delivery_t *d);

/* The generation whose removal came from a change of the watched certificate (oa_delivery_set_target), 0 for
 * none: a target that cannot take a staple back knows then that it was keyed by the old CertID, which the new
 * certificate never matches. */
uint64_t oa_delivery_cert_gen(const oa_delivery_t *d);

/* What the delivery was created with, and the retry interval for targets without a rule of their own. */
uv_loop_t *oa_delivery_loop(const oa_delivery_t *d);
const char *oa_delivery_node_id(const oa_delivery_t *d);
const char *oa_delivery_staple_path(const oa_delivery_t *d);
uint64_t oa_delivery_retry_ms(const oa_delivery_t *d);

/*
 * HAProxy's own rules for a response it will staple (ssl_sock.c in HAProxy 2.x): exactly one SingleResponse, a
 * nextUpdate, and more than 300 s (HAProxy's OCSP_MAX_RESPONSE_TIME_SKEW) left before that nextUpdate at now — HAProxy
 * stops stapling a response that close to its end. Returns 0 when HAProxy will staple res, or -1 with why filled with
 * one sentence ("HAProxy will not staple this response: ...").
 */
#define OA_HAPROXY_STAPLE_MARGIN_SECONDS 300
int oa_haproxy_staple_check(const oa_ocsp_result_t *res, time_t now, char *why, size_t why_len);

/* Target constructors, one per file: engine/haproxy_socket.c, engine/haproxy_crt.c, engine/hook.c. Each returns 0
 * with the target attached to d, or -1 with err filled (OA_E_BAD_OPTION naming the option). */
int oa_haproxy_socket_target_new(oa_delivery_t *d, const char *spec, oa_error_t *err);
int oa_haproxy_crt_target_new(oa_delivery_t *d, const char *crt_path, oa_error_t *err);
int oa_hook_target_new(oa_delivery_t *d, const char *program, oa_error_t *err);

#endif
