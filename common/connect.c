/*
 * Resolve, then connect to the first address that accepts, under one deadline; see oa_connect.h for the contract.
 *
 * The connector owns three things while it runs: its deadline timer, the lookup (a request in the thread pool that
 * may not be cancellable any more once it runs) and, during an attempt, the caller's TCP handle. Once the outcome is
 * settled every one of them is wound down; the caller hears of a failure only when its handle is closed, and the
 * connector's memory goes when the last of them has called back (settle).
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "oa_connect.h"
#include "oa_util.h"

struct oa_connect_s {
    uv_loop_t *loop;
    uv_tcp_t *tcp; /* the caller's; the connector's until it reports */
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    uv_connect_t req;
    struct addrinfo *addrs; /* owned, from uv_getaddrinfo */
    struct addrinfo *next;  /* the next address to try */
    uint64_t deadline;      /* in loop time (uv_now) */
    oa_connect_result_t res;
    oa_connect_cb cb;
    void *data;

    unsigned timer_open : 1;
    unsigned gai_active : 1;
    unsigned tcp_open : 1; /* the handle is initialised and not handed over, its close callback still due */
    unsigned done : 1;     /* the outcome is settled: nothing new starts */
    unsigned reported : 1; /* cb has been called (or is running) */
};

static void on_tcp_closed(uv_handle_t *h);

/* Reports a failure once the caller's handle is closed and the timer too (so the report always comes from the
 * loop), and frees the memory once nothing is left to call back into it. */
static void settle(oa_connect_t *c)
{
    if (c->done && !c->reported && !c->timer_open && !c->tcp_open) {
        c->reported = 1;
        c->cb(&c->res, c->data);
    }
    if (c->reported && !c->timer_open && !c->tcp_open && !c->gai_active) {
        uv_freeaddrinfo(c->addrs);
        free(c);
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    oa_connect_t *c = oa_container_of(h, oa_connect_t, timer);

    c->timer_open = 0;
    settle(c);
}

/* Fixes a failed outcome and starts winding everything down; settle reports it. */
static void finish(oa_connect_t *c, oa_connect_outcome_t outcome)
{
    if (c->done)
        return;
    c->done = 1;
    c->res.outcome = outcome;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    if (c->gai_active)
        (void)uv_cancel((uv_req_t *)&c->gai);
    /* Between two attempts the handle is already closing; its close callback then finds done set. */
    if (c->tcp_open && !uv_is_closing((uv_handle_t *)c->tcp))
        uv_close((uv_handle_t *)c->tcp, on_tcp_closed);
}

static void on_connected(uv_connect_t *req, int status)
{
    oa_connect_t *c = oa_container_of(req, oa_connect_t, req);
    uint64_t now;

    if (c->done)
        return; /* the handle is being closed: this is its cancelled request */
    if (status < 0) {
        /* A socket whose connect failed cannot be connected again: close it, the close callback tries the next
         * address on a fresh one. */
        c->res.status = status;
        uv_close((uv_handle_t *)c->tcp, on_tcp_closed);
        return;
    }
    c->done = 1;
    c->reported = 1;
    c->tcp_open = 0;
    c->tcp->data = NULL;
    c->res.outcome = OA_CONNECT_OK;
    now = uv_now(c->loop);
    c->res.left_ms = c->deadline > now ? c->deadline - now : 0;
    /* The memory goes in the timer's close callback, so the caller may do anything in cb. */
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    c->cb(&c->res, c->data);
}

static void try_next(oa_connect_t *c)
{
    struct addrinfo *ai;
    int rc;

    while ((ai = c->next) != NULL) {
        c->next = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (uv_ip_name(ai->ai_addr, c->res.addr, sizeof(c->res.addr)) != 0)
            snprintf(c->res.addr, sizeof(c->res.addr), "?");
        rc = uv_tcp_init(c->loop, c->tcp);
        if (rc < 0) {
            c->res.status = rc;
            continue;
        }
        c->tcp->data = c;
        c->tcp_open = 1;
        c->res.attempts++;
        rc = uv_tcp_connect(&c->req, c->tcp, ai->ai_addr, on_connected);
        if (rc < 0) {
            /* E.g. an address family this host cannot use: move on once the handle is closed. */
            c->res.status = rc;
            uv_close((uv_handle_t *)c->tcp, on_tcp_closed);
        }
        return;
    }
    finish(c, OA_CONNECT_FAILED);
}

static void on_tcp_closed(uv_handle_t *h)
{
    oa_connect_t *c = h->data;

    c->tcp_open = 0;
    if (c->done)
        settle(c);
    else
        try_next(c);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    oa_connect_t *c = oa_container_of(req, oa_connect_t, gai);

    c->gai_active = 0;
    if (c->done) {
        uv_freeaddrinfo(res);
        settle(c);
        return;
    }
    if (status < 0) {
        c->res.status = status;
        finish(c, OA_CONNECT_DNS);
        return;
    }
    c->addrs = res;
    c->next = res;
    c->res.resolved = true;
    try_next(c);
}

static void on_deadline(uv_timer_t *t)
{
    finish(oa_container_of(t, oa_connect_t, timer), OA_CONNECT_TIMEOUT);
}

int oa_connect_start(uv_loop_t *loop, uv_tcp_t *tcp, const char *host, unsigned port, unsigned timeout_ms,
                     oa_connect_cb cb, void *data, oa_connect_t **out)
{
    struct addrinfo hints;
    char service[16];
    oa_connect_t *c;
    int rc;

    *out = NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return UV_ENOMEM;
    rc = uv_timer_init(loop, &c->timer);
    if (rc < 0) {
        free(c);
        return rc;
    }
    c->timer_open = 1;
    c->loop = loop;
    c->tcp = tcp;
    c->cb = cb;
    c->data = data;
    c->deadline = uv_now(loop) + timeout_ms;
    uv_timer_start(&c->timer, on_deadline, timeout_ms, 0);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(service, sizeof(service), "%u", port);
    rc = uv_getaddrinfo(loop, &c->gai, on_resolved, host, service, &hints);
    if (rc < 0) {
        c->res.status = rc;
        finish(c, OA_CONNECT_DNS);
    } else {
        c->gai_active = 1;
    }
    *out = c;
    return 0;
}

void oa_connect_cancel(oa_connect_t *c)
{
    if (c == NULL || c->reported)
        return;
    /* A failure that is settled but still waiting for its handles to close is reported as the cancellation: the
     * caller may already have let go of what it needed to act on it. */
    if (c->done) {
        c->res.outcome = OA_CONNECT_CANCELLED;
        return;
    }
    finish(c, OA_CONNECT_CANCELLED);
}
