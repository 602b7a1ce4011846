/*
 * The HTTP server's listener and the connection's life cycle: accepting (or adopting) a socket, the timer that
 * measures each phase, closing and freeing, and stopping the server.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_internal.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_log.h"
#include "oa_util.h"
#include "oa_tls.h"

void oa_http_limits_default(oa_http_limits_t *l)
{
    l->max_header_bytes = 8192;
    l->max_url_bytes = 2048;
    l->max_body_bytes = 65536;
    l->max_connections = 1024;
    l->header_timeout_ms = 10000;
    l->body_timeout_ms = 10000;
    l->idle_timeout_ms = 60000;
}

int oa_http_server_port(const oa_http_server_t *s)
{
    return s->port;
}

unsigned oa_http_server_connections(const oa_http_server_t *s)
{
    return s->nopen;
}

/* ---- server teardown ---- */

static void server_maybe_done(oa_http_server_t *s)
{
    void (*done)(void *);
    void *arg;

    if (!s->stopping || !s->listener_closed || s->nconns != 0)
        return;
    done = s->done;
    arg = s->done_arg;
    SSL_CTX_free(s->tls);
    free(s);
    if (done != NULL)
        done(arg);
}

static void on_listener_closed(uv_handle_t *h)
{
    oa_http_server_t *s = oa_container_of(h, oa_http_server_t, listener);

    s->listener_closed = 1;
    server_maybe_done(s);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t);

void http_conn_set_phase(conn_t *c, phase_t phase)
{
    const oa_http_limits_t *l = &c->srv->limits;
    uint64_t ms = 0;

    c->phase = phase;
    if (c->closing || c->timer_phase == phase)
        return;
    switch (phase) {
    case PHASE_IDLE:
        ms = l->idle_timeout_ms;
        break;
    case PHASE_HEADERS:
        ms = l->header_timeout_ms;
        break;
    case PHASE_BODY:
        ms = l->body_timeout_ms;
        break;
    case PHASE_LINGER:
        ms = LINGER_MS;
        break;
    case PHASE_NONE:
    case PHASE_HANDLER:
        break;
    }
    c->timer_phase = phase;
    if (ms == 0) {
        c->timer_phase = PHASE_NONE;
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    conn_t *c = oa_container_of(t, conn_t, timer);
    phase_t phase = c->timer_phase;

    c->timer_phase = PHASE_NONE;
    switch (phase) {
    case PHASE_HEADERS:
        http_conn_fail(c, OA_E_REQUEST_TIMEOUT, "The request headers did not arrive in time.");
        break;
    case PHASE_BODY:
        http_conn_fail(c, OA_E_REQUEST_TIMEOUT, "The request body did not arrive in time.");
        break;
    default:
        http_conn_close(c);
        break;
    }
}

/* ---- closing ---- */

static void conn_free(conn_t *c)
{
    oa_http_server_t *s = c->srv;
    int i;

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->nconns--;
    if (c->counted)
        s->nopen--;
    oa_buf_free(&c->in);
    oa_buf_free(&c->url);
    oa_buf_free(&c->field);
    for (i = 0; i < HDR_COUNT; i++)
        oa_buf_free(&c->hdr[i]);
    oa_buf_free(&c->body);
    oa_buf_free(&c->obuf);
    oa_buf_free(&c->wbuf);
    oa_buf_free(&c->resp);
    oa_buf_free(&c->ebuf);
    if (c->has_tls)
        oa_tls_session_free(&c->tls);
    free(c);
    server_maybe_done(s);
}

void http_on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;

    if (h == (uv_handle_t *)&c->timer)
        c->timer_closed = 1;
    c->pending_closes--;
    /* A request still with the handler keeps the struct (and its timer handle) alive: oa_http_respond
     * closes the timer, and that close frees the connection. */
    if (c->pending_closes == 0 && c->timer_closed && !c->awaiting)
        conn_free(c);
}

/* Starts closing: memory is released in the close callbacks, never here, so callers up the stack may keep
 * using c until they return to the loop. */
void http_conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reading = 0;
    uv_timer_stop(&c->timer);
    c->pending_closes++;
    uv_close((uv_handle_t *)&c->tcp, http_on_conn_closed);
    if (!c->awaiting) {
        c->pending_closes++;
        uv_close((uv_handle_t *)&c->timer, http_on_conn_closed);
    }
}

/* ---- accepting ---- */

static void peer_name(conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[48];

    snprintf(c->peer, sizeof(c->peer), "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;

        if (uv_ip4_name(a, ip, sizeof(ip)) == 0)
            snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, (unsigned)ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;

        if (uv_ip6_name(a, ip, sizeof(ip)) == 0)
            snprintf(c->peer, sizeof(c->peer), "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    }
}

/* A connection struct with its handles initialised and linked into the server's list (so http_conn_close can always
 * be used on it), or NULL when out of memory. */
static conn_t *conn_new(oa_http_server_t *s)
{
    conn_t *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->srv = s;
    c->cur_hdr = -1;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    return c;
}

/* Counts a connected socket against the limit and starts serving it; a connection over the limit, or whose TLS
 * session cannot be set up, is closed. */
static void conn_begin(conn_t *c)
{
    oa_http_server_t *s = c->srv;

    if (s->nopen >= s->limits.max_connections) {
        OA_LOG(OA_LOG_DEBUG, "http_connection_refused", OA_KV_INT("open", s->nopen));
        http_conn_close(c);
        return;
    }
    c->counted = 1;
    s->nopen++;
    peer_name(c);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    if (s->tls != NULL) {
        if (oa_tls_session_init(&c->tls, s->tls) != 0) {
            http_conn_close(c);
            return;
        }
        c->has_tls = 1;
    }
    uv_tcp_nodelay(&c->tcp, 1); /* fails harmlessly on a socket that is not TCP */
    http_conn_set_phase(c, PHASE_IDLE);
    http_conn_update_reading(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    oa_http_server_t *s = oa_container_of(server, oa_http_server_t, listener);
    conn_t *c;

    if (status < 0 || s->stopping) {
        OA_LOG(OA_LOG_DEBUG, "http_accept_failed", OA_KV_STR("reason", uv_err_name(status)));
        return;
    }
    c = conn_new(s);
    if (c == NULL) {
        OA_LOG(OA_LOG_DEBUG, "http_accept_failed", OA_KV_STR("reason", "out of memory"));
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        http_conn_close(c);
        return;
    }
    conn_begin(c);
}

/* The same as an accepted connection, for a socket that did not come from the listener: fuzz targets and tests
 * drive the real connection code through a socketpair this way. */
int oa_http_server_adopt(oa_http_server_t *s, uv_os_sock_t fd)
{
    conn_t *c;
    int rc;

    if (s->stopping)
        return UV_ECANCELED;
    c = conn_new(s);
    if (c == NULL)
        return UV_ENOMEM;
    rc = uv_tcp_open(&c->tcp, fd);
    if (rc != 0) {
        /* The handle holds no descriptor, so closing it leaves fd to the caller. */
        http_conn_close(c);
        return rc;
    }
    conn_begin(c);
    return 0;
}

/* ---- server ---- */

static void on_failed_listener_closed(uv_handle_t *h)
{
    free(oa_container_of(h, oa_http_server_t, listener));
}

int oa_http_server_start(uv_loop_t *loop, const char *host, int port, const oa_http_limits_t *limits, SSL_CTX *tls,
                         oa_http_handler_cb handler, void *app, oa_http_server_t **out, oa_error_t *err)
{
    oa_http_server_t *s;
    struct sockaddr_storage addr;
    int len = sizeof(addr);
    int rc;

    *out = NULL;
    memset(&addr, 0, sizeof(addr));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
        return oa_error_set(err, OA_E_IO, "The listen address %s is not an IPv4 or IPv6 address.", host);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return oa_error_set(err, OA_E_NOMEM, "Out of memory.");
    s->loop = loop;
    if (limits != NULL)
        s->limits = *limits;
    else
        oa_http_limits_default(&s->limits);
    s->handler = handler;
    s->app = app;
    s->date_sec = (time_t)-1;
    http_parse_settings_init(&s->settings);

    rc = uv_tcp_init(loop, &s->listener);
    if (rc != 0) {
        free(s);
        return oa_error_set(err, OA_E_IO, "The listening socket for %s:%d could not be created: %s.", host, port,
                            uv_strerror(rc));
    }
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc == 0)
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&addr, &len);
    if (rc != 0) {
        /* The handle is released by the loop's next turn. */
        uv_close((uv_handle_t *)&s->listener, on_failed_listener_closed);
        return oa_error_set(err, OA_E_IO, "Cannot listen on %s:%d: %s.", host, port, uv_strerror(rc));
    }
    if (addr.ss_family == AF_INET)
        s->port = ntohs(((struct sockaddr_in *)&addr)->sin_port);
    else
        s->port = ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    if (tls != NULL) {
        SSL_CTX_up_ref(tls);
        s->tls = tls;
    }
    *out = s;
    return 0;
}

int oa_http_server_set_tls(oa_http_server_t *s, SSL_CTX *ctx)
{
    if (ctx == NULL || s->tls == NULL)
        return UV_EINVAL;
    /* SSL_new took a reference for every open connection, so releasing ours frees the old context only once the
     * last connection that started on it is gone. */
    SSL_CTX_up_ref(ctx);
    SSL_CTX_free(s->tls);
    s->tls = ctx;
    return 0;
}

void oa_http_server_stop(oa_http_server_t *s, void (*done)(void *arg), void *arg)
{
    conn_t *c;

    if (s->stopping)
        return;
    s->stopping = 1;
    s->done = done;
    s->done_arg = arg;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    /* Connections are only unlinked when freed, in a close callback, so walking the list here is safe. */
    for (c = s->conns; c != NULL; c = c->next) {
        if (c->closing || c->awaiting)
            continue; /* a request with the handler closes after its response (keep-alive is off now) */
        if (c->writing || c->obuf.len > 0) {
            c->no_more = 1;
            http_conn_update_reading(c);
            continue;
        }
        http_conn_close(c);
    }
}
