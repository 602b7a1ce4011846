/*
 * One HTTP/1.1 connection to one etcd member, for the calls and the watch of the etcd client (etcd_internal.h).
 *
 * Life of a connection: connecting (oa_connect.h: the name resolved, then each address in turn, a fresh TCP handle
 * for each) -> TLS handshake (when the client has a context) -> ready. A request given before it is ready waits in a
 * buffer. Answers are parsed with llhttp in response mode; the body goes to the exchange's handler as it arrives, so
 * a watch (a chunked answer that never ends) is read the same way as a short answer. A complete answer on a
 * connection the member lets live goes back to the client's idle list for the next call.
 *
 * Teardown: memory goes only once the TCP handle's close callback and the connector's report (which comes after it
 * closed the socket it held) have both come back, and never while a handler is running (depth counts them), so a
 * handler may close the connection from inside any of its callbacks.
 */
#include <errno.h>
#include <llhttp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "etcd_internal.h"
#include "oa_connect.h"
#include "oa_tls.h"
#include "oa_tls_stream.h"

#define IDLE_MAX 4 /* open connections kept per member with nothing to do */

typedef enum state_e { ST_CONNECTING, ST_HANDSHAKE, ST_READY } state_t;

struct etcd_conn_s {
    oa_etcd_t *c;
    size_t member;
    etcd_conn_t *next; /* in c->idle */

    uv_tcp_t tcp;
    oa_connect_t *connector; /* while resolving and connecting; it holds tcp until it reports */

    oa_tls_stream_t io; /* the bytes to and from tcp, through TLS when the client has a context */
    llhttp_t parser;

    const etcd_conn_handler_t *h; /* the exchange in progress; NULL when there is none */
    void *ctx;
    state_t state;
    unsigned depth;        /* handler callbacks running now */
    unsigned tcp_open : 1; /* the connection is ours (the connector handed it over) and not closed yet */
    unsigned failed : 1;   /* no more I/O */
    unsigned closed : 1;   /* nobody uses the connection any more: memory follows */
    unsigned in_idle : 1;
    unsigned sent : 1;     /* a byte of the current request went to the socket */
    unsigned complete : 1; /* the current answer arrived whole */
    unsigned keep_alive : 1;
    char why[ETCD_WHY_MAX];
};

static void fail(etcd_conn_t *k, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- teardown ---- */

static void maybe_free(etcd_conn_t *k)
{
    oa_etcd_t *c = k->c;

    if (!k->closed || k->depth > 0 || k->connector != NULL || k->tcp_open)
        return;
    oa_tls_stream_free(&k->io);
    free(k);
    etcd_client_drop(c);
}

static void on_tcp_closed(uv_handle_t *h)
{
    etcd_conn_t *k = oa_container_of(h, etcd_conn_t, tcp);

    k->tcp_open = 0;
    maybe_free(k);
}

static void unlink_idle(etcd_conn_t *k)
{
    etcd_conn_t **pp;

    if (!k->in_idle)
        return;
    for (pp = &k->c->idle; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    }
    k->in_idle = 0;
    k->next = NULL;
}

/* Stops every source of events. A connector still running reports its cancellation later, once it has closed the
 * socket it holds. */
static void stop_io(etcd_conn_t *k)
{
    oa_connect_cancel(k->connector);
    if (k->tcp_open && !uv_is_closing((uv_handle_t *)&k->tcp))
        uv_close((uv_handle_t *)&k->tcp, on_tcp_closed);
}

void etcd_conn_close(etcd_conn_t *k)
{
    if (k == NULL || k->closed)
        return;
    k->closed = 1;
    k->failed = 1;
    k->h = NULL;
    unlink_idle(k);
    stop_io(k);
    maybe_free(k);
}

void etcd_conn_close_idle(oa_etcd_t *c)
{
    while (c->idle != NULL)
        etcd_conn_close(c->idle);
}

void etcd_conn_release(etcd_conn_t *k)
{
    const etcd_conn_t *i;
    unsigned idle = 0;

    for (i = k->c->idle; i != NULL; i = i->next)
        idle += i->member == k->member;
    /* A burst of calls opens a connection each; only a few are worth keeping once it is over. */
    if (k->failed || !k->complete || !k->keep_alive || k->c->closing || idle >= IDLE_MAX) {
        etcd_conn_close(k);
        return;
    }
    k->h = NULL;
    k->next = k->c->idle;
    k->c->idle = k;
    k->in_idle = 1;
}

/* Ends the exchange in progress with rc (0: the answer is complete). */
static void done(etcd_conn_t *k, int rc)
{
    const etcd_conn_handler_t *h = k->h;

    if (h == NULL)
        return;
    k->h = NULL;
    k->depth++;
    h->on_done(k->ctx, rc, k->sent, k->why);
    k->depth--;
}

/* The connection is unusable: the exchange (if any) is told, an idle connection just goes. */
static void fail(etcd_conn_t *k, int rc, const char *fmt, ...)
{
    va_list ap;

    if (k->failed)
        return;
    k->failed = 1;
    va_start(ap, fmt);
    vsnprintf(k->why, sizeof(k->why), fmt, ap);
    va_end(ap);
    stop_io(k);
    if (k->h == NULL) {
        etcd_conn_close(k);
        return;
    }
    done(k, rc);
    /* The exchange knows it is over; the connection is nobody's any more. */
    k->closed = 1;
    maybe_free(k);
}

/* ---- writing ---- */

/* Starts the next write when none is in flight. Request bytes wait until the connection is ready; before that only
 * handshake records go out. */
static int flush(etcd_conn_t *k)
{
    bool sent = false;
    int rc;

    if (k->failed || (k->state != ST_READY && k->state != ST_HANDSHAKE))
        return 0;
    rc = oa_tls_stream_flush(&k->io, k->state == ST_READY, &sent);
    if (sent)
        k->sent = 1;
    return rc;
}

static void on_written(oa_tls_stream_t *s, int status)
{
    etcd_conn_t *k = oa_container_of(s, etcd_conn_t, io);
    int rc;

    if (k->failed)
        return;
    if (status != 0) {
        fail(k, status, "Writing to etcd at %s failed (%s).", k->c->members[k->member].where, uv_strerror(status));
        return;
    }
    rc = flush(k);
    if (rc != 0)
        fail(k, rc, "Writing to etcd at %s failed (%s).", k->c->members[k->member].where, uv_strerror(rc));
}

/* ---- reading ---- */

static int on_headers_complete(llhttp_t *p)
{
    etcd_conn_t *k = p->data;

    if (k->h == NULL)
        return HPE_USER;
    k->depth++;
    k->h->on_headers(k->ctx, llhttp_get_status_code(p));
    k->depth--;
    return k->h == NULL ? HPE_USER : HPE_OK;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    etcd_conn_t *k = p->data;

    if (k->h == NULL)
        return HPE_USER;
    k->depth++;
    k->h->on_body(k->ctx, at, len);
    k->depth--;
    return k->h == NULL ? HPE_USER : HPE_OK;
}

static int on_message_complete(llhttp_t *p)
{
    etcd_conn_t *k = p->data;

    k->complete = 1;
    k->keep_alive = llhttp_should_keep_alive(p) != 0;
    /* Nothing may follow one answer: the next request is only sent after it. */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void parse(etcd_conn_t *k, const char *p, size_t n)
{
    llhttp_errno_t rc;

    if (k->h == NULL) {
        /* An idle connection has nothing to say: bytes here mean the member is confused. */
        fail(k, UV_EPROTO, "etcd at %s sent bytes nobody asked for.", k->c->members[k->member].where);
        return;
    }
    k->depth++;
    rc = llhttp_execute(&k->parser, p, n);
    k->depth--;
    if (k->closed || k->failed) {
        maybe_free(k);
        return;
    }
    if (k->complete) {
        done(k, 0);
        maybe_free(k);
        return;
    }
    if (rc != HPE_OK)
        fail(k, UV_EPROTO, "etcd at %s sent a malformed HTTP answer (%s).", k->c->members[k->member].where,
             llhttp_errno_name(rc));
}

/* Runs the TLS engine over what was fed: handshake progress, records to send, plaintext answers. */
static void tls_pump(etcd_conn_t *k)
{
    const char *where = k->c->members[k->member].where;
    oa_tls_read_t rd;
    oa_error_t e;
    int wrc;

    oa_error_clear(&e);
    rd = oa_tls_stream_decrypt(&k->io, &e);
    if (rd == OA_TLS_READ_FAILED) {
        fail(k, e.code == OA_E_NOMEM ? UV_ENOMEM : UV_EPROTO, "TLS with etcd at %s failed: %s", where, e.text);
        return;
    }
    if (k->state == ST_HANDSHAKE && oa_tls_session_established(&k->io.tls))
        k->state = ST_READY;
    wrc = flush(k);
    if (wrc != 0) {
        fail(k, wrc, "Writing to etcd at %s failed (%s).", where, uv_strerror(wrc));
        return;
    }
    if (k->io.dec.len > 0)
        parse(k, k->io.dec.data, k->io.dec.len);
    if (!k->failed && rd == OA_TLS_READ_CLOSED)
        fail(k, UV_EOF, "etcd at %s closed the TLS session.", where);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    etcd_conn_t *k = oa_container_of(s, etcd_conn_t, tcp);
    const char *where = k->c->members[k->member].where;
    int rc;

    if (k->failed || nread == 0)
        return;
    /* A handler may close the connection anywhere below; the memory waits until this frame is left. */
    k->depth++;
    if (nread < 0) {
        if (nread == UV_EOF)
            fail(k, UV_EOF, "etcd at %s closed the connection.", where);
        else
            fail(k, (int)nread, "Reading from etcd at %s failed (%s).", where, uv_strerror((int)nread));
    } else if (k->c->tls == NULL) {
        parse(k, buf->base, (size_t)nread);
    } else if ((rc = oa_tls_session_feed(&k->io.tls, buf->base, (size_t)nread)) != 0) {
        fail(k, rc, "TLS with etcd at %s failed (%s).", where, uv_strerror(rc));
    } else {
        tls_pump(k);
    }
    k->depth--;
    maybe_free(k);
}

/* ---- connecting ---- */

static void connect_failed(etcd_conn_t *k, const oa_connect_result_t *res)
{
    const char *where = k->c->members[k->member].where;

    switch (res->outcome) {
    case OA_CONNECT_DNS:
        fail(k, res->status, "The etcd member %s could not be resolved (%s).", where, uv_strerror(res->status));
        break;
    case OA_CONNECT_TIMEOUT:
        fail(k, UV_ETIMEDOUT, "etcd at %s did not accept a connection in time.", where);
        break;
    default: { /* OA_CONNECT_FAILED; a name with no usable address fails as the address family would */
        int status = res->status != 0 ? res->status : UV_EADDRNOTAVAIL;

        fail(k, status, "Could not connect to etcd at %s (%s).", where, uv_strerror(status));
        break;
    }
    }
}

static void on_connected(const oa_connect_result_t *res, void *data)
{
    etcd_conn_t *k = data;
    const etcd_member_t *m = &k->c->members[k->member];
    int rc;

    k->connector = NULL;
    /* Only stop_io cancels the connector, after setting failed. */
    if (k->failed || res->outcome == OA_CONNECT_CANCELLED) {
        maybe_free(k);
        return;
    }
    if (res->outcome != OA_CONNECT_OK) {
        connect_failed(k, res);
        return;
    }
    k->tcp_open = 1;
    /* Requests are small and each waits for its answer: Nagle would only hold them back. */
    (void)uv_tcp_nodelay(&k->tcp, 1);
    (void)uv_tcp_keepalive(&k->tcp, 1, 60);
    rc = oa_tls_stream_read_start(&k->io, on_read);
    if (rc != 0) {
        fail(k, rc, "Reading from etcd at %s failed (%s).", m->where, uv_strerror(rc));
        return;
    }
    if (k->c->tls == NULL) {
        k->state = ST_READY;
    } else {
        k->state = ST_HANDSHAKE;
        rc = oa_tls_session_init_client(&k->io.tls, k->c->tls, m->host);
        if (rc != 0) {
            fail(k, rc, "TLS with etcd at %s could not start (%s).", m->where, uv_strerror(rc));
            return;
        }
        k->depth++;
        tls_pump(k); /* sends the ClientHello */
        k->depth--;
        maybe_free(k);
        return;
    }
    rc = flush(k);
    if (rc != 0)
        fail(k, rc, "Writing to etcd at %s failed (%s).", m->where, uv_strerror(rc));
}

/* ---- the exchange ---- */

/* An idle connection whose member went away may have its end of file waiting in the socket, not read yet because the
 * loop was busy elsewhere. A request sent on it would break, and a write would look as if its outcome were unknown;
 * a look at the socket first avoids that. */
static bool idle_alive(etcd_conn_t *k)
{
    uv_os_fd_t fd;
    ssize_t n;
    char b;

    if (uv_fileno((const uv_handle_t *)&k->tcp, &fd) != 0)
        return false;
    n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

int etcd_conn_get(oa_etcd_t *c, size_t m, etcd_conn_t **out)
{
    etcd_conn_t *k, **pp;
    int rc;

    pp = &c->idle;
    while ((k = *pp) != NULL) {
        if (k->member != m) {
            pp = &k->next;
            continue;
        }
        if (!idle_alive(k)) {
            etcd_conn_close(k); /* unlinks it: *pp is the next one now */
            continue;
        }
        *pp = k->next;
        k->next = NULL;
        k->in_idle = 0;
        *out = k;
        return 0;
    }
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return UV_ENOMEM;
    k->c = c;
    k->member = m;
    k->state = ST_CONNECTING;
    oa_tls_stream_init(&k->io, (uv_stream_t *)&k->tcp, c->tls != NULL, on_written);
    /* The caller's attempt timer is the deadline that counts; the connector's, as long, only bounds its own work. */
    rc = oa_connect_start(c->loop, &k->tcp, c->members[m].host, (unsigned)strtoul(c->members[m].port, NULL, 10),
                          c->attempt_timeout_ms, on_connected, k, &k->connector);
    if (rc != 0) {
        free(k);
        return rc;
    }
    etcd_client_hold(c);
    *out = k;
    return 0;
}

int etcd_conn_send(etcd_conn_t *k, const char *req, size_t len, const etcd_conn_handler_t *h, void *ctx)
{
    int rc;

    if (k->failed) {
        etcd_conn_close(k);
        return UV_ECONNRESET;
    }
    k->h = h;
    k->ctx = ctx;
    k->sent = 0;
    k->complete = 0;
    k->keep_alive = 0;
    k->why[0] = '\0';
    llhttp_init(&k->parser, HTTP_RESPONSE, &parser_settings);
    k->parser.data = k;
    rc = oa_tls_stream_queue(&k->io, req, len);
    if (rc == 0)
        rc = flush(k);
    if (rc != 0) {
        etcd_conn_close(k);
        return rc;
    }
    return 0;
}

bool etcd_conn_sent(const etcd_conn_t *k)
{
    return k->sent;
}
