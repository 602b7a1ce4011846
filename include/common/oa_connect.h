/*
 * Opening one TCP connection to a host name on a libuv loop: the name is resolved with uv_getaddrinfo, then every
 * address it gave (IPv6 and IPv4, in the order getaddrinfo returned them) is tried in turn, each on a fresh
 * socket, until one connects. One deadline covers the lookup and every attempt together; an address that hangs
 * uses up the deadline rather than a share of it.
 *
 * The connection is made on the caller's uv_tcp_t, so the caller keeps finding its struct from the handle with
 * container_of once the connection is up. Until the callback reports, the handle belongs to the connector (which
 * uses its data field); the caller neither touches nor frees it.
 */
#ifndef OA_CONNECT_H
#define OA_CONNECT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct oa_connect_s oa_connect_t;

typedef enum oa_connect_outcome_e {
    OA_CONNECT_OK = 0,    /* the handle is connected and now the caller's */
    OA_CONNECT_DNS,       /* the name did not resolve, or the lookup could not start */
    OA_CONNECT_FAILED,    /* every address refused or failed, or the name gave none that TCP can use */
    OA_CONNECT_TIMEOUT,   /* the deadline passed first */
    OA_CONNECT_CANCELLED, /* oa_connect_cancel */
} oa_connect_outcome_t;

/* Long enough for any IPv6 address in text (INET6_ADDRSTRLEN is 46). */
#define OA_CONNECT_ADDR_MAX 64

typedef struct oa_connect_result_s {
    oa_connect_outcome_t outcome;
    /* OA_CONNECT_DNS: the lookup's UV_E* error. Otherwise the error of the last address that failed, 0 when no
     * address was tried or none failed. */
    int status;
    /* Whether the name had resolved: an OA_CONNECT_TIMEOUT then passed while connecting, not while resolving. */
    bool resolved;
    /* How many connections were attempted. */
    unsigned attempts;
    /* The last address tried, as text ("?" when it cannot be printed), "" before the first attempt. */
    char addr[OA_CONNECT_ADDR_MAX];
    /* OA_CONNECT_OK: the milliseconds left before the deadline, for a caller whose own deadline also covers what
     * it does on the connection (0 when it is already due). */
    uint64_t left_ms;
} oa_connect_result_t;

/* Fires exactly once, from the loop, never from inside oa_connect_start or oa_connect_cancel. res is borrowed for
 * the call. On OA_CONNECT_OK the handle is connected and the caller's, its data field NULL: the caller reads and
 * writes it and eventually uv_closes it. On any other outcome the handle is closed (its close callback has run) or
 * was never initialised: the caller may free the memory holding it. The connector is gone once this returns. */
typedef void (*oa_connect_cb)(const oa_connect_result_t *res, void *data);

/*
 * Starts connecting tcp (uninitialised memory of the caller's, which must stay valid until cb fires) to host (a
 * name, or an IPv4 or IPv6 literal without brackets; it need not outlive the call) on port. timeout_ms is the
 * deadline, counted from this call. Returns 0 with *out set (valid until cb returns, for oa_connect_cancel), or a
 * negative UV_E* error (UV_ENOMEM): cb then never fires and tcp was not touched. A lookup that cannot even start
 * is reported through cb as OA_CONNECT_DNS.
 */
int oa_connect_start(uv_loop_t *loop, uv_tcp_t *tcp, const char *host, unsigned port, unsigned timeout_ms,
                     oa_connect_cb cb, void *data, oa_connect_t **out);

/* Abandons the connection: the socket of the attempt in progress is closed and a pending lookup cancelled; cb
 * fires later with OA_CONNECT_CANCELLED, also when another outcome was already settled but not yet reported.
 * Does nothing on NULL or once cb has been called (e.g. from inside cb). */
void oa_connect_cancel(oa_connect_t *c);

#endif
