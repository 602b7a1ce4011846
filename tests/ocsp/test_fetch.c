/*
 * The HTTP exchange with a responder, against small servers living on the same libuv loop: each listens on
 * 127.0.0.1 port 0, reads the request and then behaves in one scripted way (a canned answer, silence, one byte at
 * a time, a reset, a flood).
 */
#include <dlfcn.h>
#include <netdb.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <uv.h>

#include "../../ocsp/fetch.h"
#include "oa_error.h"
#include "oa_util.h"
#include "testnet.h"

/*
 * The resolver, interposed for two made-up names so the address fallback can be tested on any host:
 * "dualstack.test" resolves to ::1 first and 127.0.0.1 second, "tworefused.test" likewise (used with a port
 * nothing listens on). Every other name goes to the real resolver.
 */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    static gai_fn real;
    struct addrinfo h, *v6 = NULL, *v4 = NULL, *last;
    int rc;

    if (real == NULL)
        real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (node == NULL || (strcmp(node, "dualstack.test") != 0 && strcmp(node, "tworefused.test") != 0))
        return real(node, service, hints, res);
    memset(&h, 0, sizeof(h));
    h.ai_flags = AI_NUMERICHOST;
    h.ai_socktype = SOCK_STREAM;
    h.ai_family = AF_INET6;
    rc = real("::1", service, &h, &v6);
    if (rc != 0)
        return rc;
    h.ai_family = AF_INET;
    rc = real("127.0.0.1", service, &h, &v4);
    if (rc != 0) {
        freeaddrinfo(v6);
        return rc;
    }
    for (last = v6; last->ai_next != NULL; last = last->ai_next)
        ;
    last->ai_next = v4;
    *res = v6;
    return 0;
}

/* ---- A scripted server ---- */

typedef enum srv_mode_e {
    SRV_CANNED,        /* write the canned response, then shut down the write side */
    SRV_SILENT,        /* read the request, never answer */
    SRV_DRIP,          /* write the canned response one byte every 40 ms */
    SRV_RESET_AT_ONCE, /* reset the connection as soon as it is accepted */
    SRV_RESET_MID,     /* write the canned (partial) response, reset 50 ms later */
    SRV_FLOOD,         /* write the canned headers, then a long chunked body */
} srv_mode_t;

typedef struct server_s server_t;

typedef struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    server_t *srv;
    int pending;
    int closing;
    int responded;
    size_t drip_pos;
} conn_t;

struct server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int stopped;
    srv_mode_t mode;
    const char *response;
    size_t response_len;
    oa_buf_t request; /* what the client sent */
    conn_t *conn;
    int accepted;
    char *flood;
    size_t flood_len;
    int flood_status; /* 1 while the flood write is pending, then its status */
};

typedef struct write_s {
    uv_write_t req;
    char byte;
} write_t;

static void conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;

    if (--c->pending == 0) {
        if (c->srv->conn == c)
            c->srv->conn = NULL;
        free(c);
    }
}

static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    uv_close((uv_handle_t *)&c->timer, conn_closed);
}

static void conn_reset(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    assert_int_equal(uv_tcp_close_reset(&c->tcp, conn_closed), 0);
    uv_close((uv_handle_t *)&c->timer, conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

static void on_written(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    uv_shutdown_t *sd;

    (void)status;
    free(oa_container_of(req, write_t, req));
    if (c == NULL || c->closing || c->srv->mode != SRV_CANNED)
        return;
    sd = malloc(sizeof(*sd));
    assert_non_null(sd);
    if (uv_shutdown(sd, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        free(sd);
}

static void conn_write(conn_t *c, const char *p, size_t n, uv_write_cb cb)
{
    write_t *w = malloc(sizeof(*w));
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);

    assert_non_null(w);
    w->req.data = c;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, cb) != 0)
        free(w);
}

static void on_flood_written(uv_write_t *req, int status)
{
    conn_t *c = req->data;

    c->srv->flood_status = status;
    free(oa_container_of(req, write_t, req));
}

static void on_drip(uv_timer_t *t)
{
    conn_t *c = t->data;
    server_t *s = c->srv;

    if (c->drip_pos >= s->response_len) {
        uv_timer_stop(t);
        return;
    }
    conn_write(c, s->response + c->drip_pos, 1, on_written);
    c->drip_pos++;
}

static void on_reset_timer(uv_timer_t *t)
{
    conn_reset(t->data);
}

/* True once the request's headers and its Content-Length worth of body have arrived. */
static int request_complete(const oa_buf_t *b)
{
    const char *end, *cl;
    size_t body = 0;

    if (b->data == NULL || (end = strstr(b->data, "\r\n\r\n")) == NULL)
        return 0;
    cl = strstr(b->data, "Content-Length: ");
    if (cl != NULL && cl < end)
        body = strtoul(cl + 16, NULL, 10);
    return b->len >= (size_t)(end + 4 - b->data) + body;
}

static void respond(conn_t *c)
{
    server_t *s = c->srv;

    c->responded = 1;
    switch (s->mode) {
    case SRV_CANNED:
        conn_write(c, s->response, s->response_len, on_written);
        break;
    case SRV_SILENT:
        break;
    case SRV_DRIP:
        uv_timer_start(&c->timer, on_drip, 40, 40);
        break;
    case SRV_RESET_MID:
        conn_write(c, s->response, s->response_len, on_written);
        uv_timer_start(&c->timer, on_reset_timer, 50, 0);
        break;
    case SRV_FLOOD:
        conn_write(c, s->response, s->response_len, on_written);
        s->flood_status = 1;
        conn_write(c, s->flood, s->flood_len, on_flood_written);
        break;
    case SRV_RESET_AT_ONCE:
        break;
    }
}

static void srv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base != NULL ? suggested : 0;
}

static void srv_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;

    if (nread > 0) {
        assert_int_equal(oa_buf_append(&c->srv->request, buf->base, (size_t)nread), 0);
        if (!c->responded && request_complete(&c->srv->request))
            respond(c);
    } else if (nread < 0) {
        conn_close(c);
    }
    free(buf->base);
}

static void on_connection(uv_stream_t *l, int status)
{
    server_t *s = l->data;
    conn_t *c;

    assert_int_equal(status, 0);
    c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->srv = s;
    assert_int_equal(uv_tcp_init(s->loop, &c->tcp), 0);
    assert_int_equal(uv_timer_init(s->loop, &c->timer), 0);
    c->tcp.data = c;
    c->timer.data = c;
    c->pending = 2;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    s->accepted++;
    if (s->conn != NULL || s->stopped) {
        conn_close(c);
        return;
    }
    s->conn = c;
    if (s->mode == SRV_RESET_AT_ONCE) {
        conn_reset(c);
        return;
    }
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, srv_alloc, srv_read), 0);
}

static void server_start(server_t *s, uv_loop_t *loop, srv_mode_t mode, const char *response)
{
    struct sockaddr_in a;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->mode = mode;
    s->response = response;
    s->response_len = response != NULL ? strlen(response) : 0;
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
    assert_int_equal(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 8, on_connection), 0);
    assert_int_equal(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len), 0);
    s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void server_stop(server_t *s)
{
    if (s->stopped)
        return;
    s->stopped = 1;
    uv_close((uv_handle_t *)&s->listener, NULL);
    if (s->conn != NULL)
        conn_close(s->conn);
}

static void server_free(server_t *s)
{
    oa_buf_free(&s->request);
    free(s->flood);
}

/* ---- Running one exchange ---- */

typedef struct outcome_s {
    int calls;
    int err;
    char text[OA_ERROR_TEXT_MAX];
    oa_buf_t body;
    int body_null;
    uint64_t t0;
    unsigned elapsed_ms;
    server_t *srv;
    int cancel_again; /* call oa_fetch_cancel from inside the callback: must do nothing */
} outcome_t;

static void on_fetched(oa_fetch_t *f, int err, const char *errtext, const unsigned char *body, size_t body_len,
                       void *data)
{
    outcome_t *o = data;

    o->calls++;
    o->err = err;
    snprintf(o->text, sizeof(o->text), "%s", errtext != NULL ? errtext : "");
    o->body_null = body == NULL;
    if (body != NULL)
        assert_int_equal(oa_buf_append(&o->body, body, body_len), 0);
    o->elapsed_ms = (unsigned)((uv_hrtime() - o->t0) / 1000000);
    if (o->cancel_again)
        oa_fetch_cancel(f);
    if (o->srv != NULL)
        server_stop(o->srv);
}

/* Starts a POST of "hello" to url and runs loop until everything is closed. */
static void run_fetch(uv_loop_t *loop, const char *url, oa_fetch_method_t method, unsigned timeout_ms,
                      size_t max_body, outcome_t *o, server_t *srv)
{
    oa_error_t err;
    oa_fetch_t *f = NULL;

    o->srv = srv;
    o->t0 = uv_hrtime();
    assert_int_equal(
        oa_fetch_start(loop, url, method, "hello", 5, NULL, timeout_ms, max_body, on_fetched, o, &f, &err), 0);
    assert_non_null(f);
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(o->calls, 1);
}

/* One exchange against a fresh server in mode with response; checks that the loop closes clean. */
static void exchange(srv_mode_t mode, const char *response, unsigned timeout_ms, size_t max_body, outcome_t *o,
                     server_t *srv)
{
    uv_loop_t loop;
    char url[128];

    memset(o, 0, sizeof(*o));
    assert_int_equal(uv_loop_init(&loop), 0);
    server_start(srv, &loop, mode, response);
    if (mode == SRV_FLOOD) {
        /* 8 MiB of chunked body, far more than the socket buffers can take in while the client is not reading. */
        static const char chunk[] = "1000\r\n";
        size_t n = 8u << 20, i, per = sizeof(chunk) - 1 + 0x1000 + 2;

        srv->flood_len = n / 0x1000 * per;
        srv->flood = malloc(srv->flood_len);
        assert_non_null(srv->flood);
        for (i = 0; i < n / 0x1000; i++) {
            char *p = srv->flood + i * per;
            memcpy(p, chunk, sizeof(chunk) - 1);
            memset(p + sizeof(chunk) - 1, 'x', 0x1000);
            memcpy(p + sizeof(chunk) - 1 + 0x1000, "\r\n", 2);
        }
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/ocsp", srv->port);
    run_fetch(&loop, url, OA_FETCH_POST, timeout_ms, max_body, o, srv);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void outcome_free(outcome_t *o)
{
    oa_buf_free(&o->body);
}

static int starts_with(const char *s, const char *prefix)
{
    return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

#define OK_HEADERS "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"

/* ---- Tests ---- */

static void test_ok_post(void **state)
{
    outcome_t o;
    server_t s;
    char host[64];

    (void)state;
    exchange(SRV_CANNED, OK_HEADERS "Content-Length: 6\r\n\r\n\x30\x03\x0a\x01\x06Z", 2000, 0, &o, &s);
    assert_int_equal(o.err, 0);
    assert_string_equal(o.text, "");
    assert_int_equal(o.body.len, 6);
    assert_memory_equal(o.body.data, "\x30\x03\x0a\x01\x06Z", 6);
    /* The request as the responder saw it. */
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%d\r\n", s.port);
    assert_non_null(s.request.data);
    assert_true(starts_with(s.request.data, "POST /ocsp HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request.data, host));
    assert_non_null(strstr(s.request.data, "\r\nContent-Type: application/ocsp-request\r\n"));
    assert_non_null(strstr(s.request.data, "\r\nContent-Length: 5\r\n"));
    assert_non_null(strstr(s.request.data, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(s.request.data, "\r\nUser-Agent: ocsp-agent/" OA_VERSION "\r\n"));
    assert_int_equal(strcmp(s.request.data + s.request.len - 9, "\r\n\r\nhello"), 0);
    server_free(&s);
    outcome_free(&o);
}

static void test_ok_get_until_eof(void **state)
{
    uv_loop_t loop;
    outcome_t o;
    server_t s;
    char url[128];

    (void)state;
    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    /* No Content-Length: the body runs to the end of the connection. Parameters and case in the type are fine. */
    server_start(&s, &loop, SRV_CANNED,
                 "HTTP/1.1 200 OK\r\nContent-Type: Application/OCSP-Response; charset=binary\r\n\r\nbody-to-eof");
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/a/MEUw%%2B%%2F%%3D?x=1#frag", s.port);
    run_fetch(&loop, url, OA_FETCH_GET, 2000, 0, &o, &s);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.body.len, 11);
    assert_memory_equal(o.body.data, "body-to-eof", 11);
    assert_true(starts_with(s.request.data, "GET /a/MEUw%2B%2F%3D?x=1 HTTP/1.1\r\n"));
    assert_null(strstr(s.request.data, "Content-Length"));
    assert_int_equal(strcmp(s.request.data + s.request.len - 4, "\r\n\r\n"), 0);
    server_free(&s);
    outcome_free(&o);
}

static void test_http_status(void **state)
{
    static const struct {
        const char *response;
        const char *expect;
    } cases[] = {
        {"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
         "answered HTTP 500 Internal Server Error instead of 200."},
        {"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 3\r\n\r\nno!",
         "answered HTTP 404 Not Found instead of 200."},
        {"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/\r\nContent-Length: 0\r\n\r\n",
         "answered HTTP 302 Found instead of 200 (redirects are not followed)."},
    };
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        outcome_t o;
        server_t s;
        char where[64];

        exchange(SRV_CANNED, cases[i].response, 2000, 0, &o, &s);
        assert_int_equal(o.err, OA_E_OCSP_HTTP_STATUS);
        assert_true(o.body_null);
        snprintf(where, sizeof(where), "The OCSP responder 127.0.0.1:%d ", s.port);
        assert_true(strncmp(o.text, where, strlen(where)) == 0);
        assert_string_equal(o.text + strlen(where), cases[i].expect);
        server_free(&s);
        outcome_free(&o);
    }
}

static void test_content_type(void **state)
{
    outcome_t o;
    server_t s;

    (void)state;
    exchange(SRV_CANNED, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi", 2000, 0, &o,
             &s);
    assert_int_equal(o.err, OA_E_OCSP_CONTENT_TYPE);
    assert_non_null(strstr(o.text, "with Content-Type \"text/html\" instead of application/ocsp-response"));
    server_free(&s);
    outcome_free(&o);

    /* A prefix of the right type is not the right type. */
    exchange(SRV_CANNED, "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-responses\r\nContent-Length: 2\r\n\r\nhi",
             2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_CONTENT_TYPE);
    server_free(&s);
    outcome_free(&o);

    exchange(SRV_CANNED, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_CONTENT_TYPE);
    assert_non_null(strstr(o.text, "without a Content-Type"));
    server_free(&s);
    outcome_free(&o);
}

static void test_too_large_announced(void **state)
{
    outcome_t o;
    server_t s;

    (void)state;
    exchange(SRV_CANNED, OK_HEADERS "Content-Length: 1000001\r\n\r\nxxxx", 2000, 1000, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_TOO_LARGE);
    assert_non_null(strstr(o.text, "announced a body of 1000001 bytes, over the limit of 1000 bytes"));
    server_free(&s);
    outcome_free(&o);

    /* Exactly at the cap is fine. */
    {
        char resp[2200];
        int n = snprintf(resp, sizeof(resp), OK_HEADERS "Content-Length: 1000\r\n\r\n");
        memset(resp + n, 'b', 1000);
        resp[n + 1000] = '\0';
        exchange(SRV_CANNED, resp, 2000, 1000, &o, &s);
        assert_int_equal(o.err, 0);
        assert_int_equal(o.body.len, 1000);
        server_free(&s);
        outcome_free(&o);
    }
}

static void test_too_large_chunked(void **state)
{
    outcome_t o;
    server_t s;

    (void)state;
    exchange(SRV_FLOOD, OK_HEADERS "Transfer-Encoding: chunked\r\n\r\n", 5000, 10000, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_TOO_LARGE);
    assert_non_null(strstr(o.text, "sent a body larger than the limit of 10000 bytes"));
    /* The client stopped reading at the cap and closed: the server's 8 MiB write never completed (it failed when
     * the client closed or was cancelled when the test stopped the server), and nobody waited for it. */
    assert_true(s.flood_status < 0);
    assert_true(o.elapsed_ms < 3000);
    server_free(&s);
    outcome_free(&o);
}

static void test_broken_responses(void **state)
{
    outcome_t o;
    server_t s;

    (void)state;
    /* The server shuts its side down after 4 of the 100 announced bytes. */
    exchange(SRV_CANNED, OK_HEADERS "Content-Length: 100\r\n\r\nabcd", 2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_HTTP);
    assert_non_null(strstr(o.text, "closed the connection in the middle of the response"));
    server_free(&s);
    outcome_free(&o);

    exchange(SRV_CANNED, "SSH-2.0-OpenSSH_9.2\r\n", 2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_HTTP);
    assert_non_null(strstr(o.text, "sent a malformed HTTP response"));
    server_free(&s);
    outcome_free(&o);

    /* A chunked body cut short. */
    exchange(SRV_CANNED, OK_HEADERS "Transfer-Encoding: chunked\r\n\r\n10\r\nabc", 2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_HTTP);
    server_free(&s);
    outcome_free(&o);
}

static void test_reset(void **state)
{
    outcome_t o;
    server_t s;
    char where[64];

    (void)state;
    exchange(SRV_RESET_AT_ONCE, NULL, 2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_CONNECT);
    snprintf(where, sizeof(where), "127.0.0.1:%d", s.port);
    assert_non_null(strstr(o.text, where));
    assert_int_equal(s.accepted, 1);
    server_free(&s);
    outcome_free(&o);

    exchange(SRV_RESET_MID, OK_HEADERS "Content-Length: 100\r\n\r\nabcd", 2000, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_HTTP);
    assert_non_null(strstr(o.text, "in the middle of the response"));
    server_free(&s);
    outcome_free(&o);
}

static void test_timeout_silent(void **state)
{
    outcome_t o;
    server_t s;

    (void)state;
    exchange(SRV_SILENT, NULL, 300, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_TIMEOUT);
    assert_non_null(strstr(o.text, "did not answer within 300 ms (timed out while waiting for the answer)"));
    assert_in_range(o.elapsed_ms, 290, 1500);
    assert_non_null(strstr(s.request.data, "\r\n\r\nhello"));
    server_free(&s);
    outcome_free(&o);
}

static void test_timeout_drip(void **state)
{
    outcome_t o;
    server_t s;

    (void)state;
    /* 40 ms per byte: the whole answer would take about 3 s, the deadline is 300 ms for everything. */
    exchange(SRV_DRIP, OK_HEADERS "Content-Length: 4\r\n\r\nabcd", 300, 0, &o, &s);
    assert_int_equal(o.err, OA_E_OCSP_TIMEOUT);
    assert_non_null(strstr(o.text, "timed out while receiving the answer"));
    assert_in_range(o.elapsed_ms, 290, 1500);
    server_free(&s);
    outcome_free(&o);
}

static void expect_failure(const char *url, unsigned timeout_ms, int code, const char *needle)
{
    uv_loop_t loop;
    outcome_t o;

    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    run_fetch(&loop, url, OA_FETCH_POST, timeout_ms, 0, &o, NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o.err, code);
    if (strstr(o.text, needle) == NULL)
        fail_msg("\"%s\" not in \"%s\"", needle, o.text);
    outcome_free(&o);
}

static void test_refused_and_dns(void **state)
{
    char url[128], needle[128];
    int port = oa_testnet_free_port(); /* nothing listens on it */

    (void)state;
    assert_true(port > 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    snprintf(needle, sizeof(needle),
             "Could not connect to the OCSP responder 127.0.0.1:%d: connection refused (1 "
             "address tried).",
             port);
    expect_failure(url, 5000, OA_E_OCSP_CONNECT, needle);

    snprintf(url, sizeof(url), "http://tworefused.test:%d/", port);
    snprintf(needle, sizeof(needle), "tworefused.test:%d: connection refused (2 addresses tried)", port);
    expect_failure(url, 5000, OA_E_OCSP_CONNECT, needle);

    /* A generous deadline: on a host with an unreachable DNS server the lookup fails only after its retries. */
    expect_failure("http://nonexistent.invalid/", 12000, OA_E_OCSP_DNS,
                   "Could not resolve the host of the OCSP responder nonexistent.invalid:80");
}

/* A name whose first address (::1) refuses: the exchange must go on to 127.0.0.1 and succeed. */
static void fallback_to_v4(const char *name)
{
    uv_loop_t loop;
    outcome_t o;
    server_t s;
    char url[128], host[64];

    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    server_start(&s, &loop, SRV_CANNED, OK_HEADERS "Content-Length: 2\r\n\r\nok");
    snprintf(url, sizeof(url), "http://%s:%d", name, s.port);
    run_fetch(&loop, url, OA_FETCH_POST, 3000, 0, &o, &s);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.body.len, 2);
    assert_memory_equal(o.body.data, "ok", 2);
    assert_int_equal(s.accepted, 1);
    snprintf(host, sizeof(host), "\r\nHost: %s:%d\r\n", name, s.port);
    assert_non_null(strstr(s.request.data, host));
    assert_true(starts_with(s.request.data, "POST / HTTP/1.1\r\n"));
    server_free(&s);
    outcome_free(&o);
}

static void test_address_fallback(void **state)
{
    (void)state;
    fallback_to_v4("dualstack.test");
    fallback_to_v4("localhost");
}

static void on_cancel_timer(uv_timer_t *t)
{
    oa_fetch_cancel(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel(void **state)
{
    uv_loop_t loop;
    outcome_t o;
    server_t s;
    oa_fetch_t *f = NULL;
    oa_error_t err;
    uv_timer_t t;
    char url[128];

    (void)state;
    /* Cancelled while waiting for a silent responder; a second cancel from inside the callback does nothing. */
    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    server_start(&s, &loop, SRV_SILENT, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    o.srv = &s;
    o.cancel_again = 1;
    o.t0 = uv_hrtime();
    assert_int_equal(oa_fetch_start(&loop, url, OA_FETCH_POST, "x", 1, NULL, 5000, 0, on_fetched, &o, &f, &err), 0);
    assert_int_equal(uv_timer_init(&loop, &t), 0);
    t.data = f;
    assert_int_equal(uv_timer_start(&t, on_cancel_timer, 100, 0), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, OA_E_OCSP_CANCELLED);
    assert_true(o.body_null);
    assert_in_range(o.elapsed_ms, 90, 1500);
    assert_int_equal(s.accepted, 1);
    server_free(&s);
    outcome_free(&o);

    /* Cancelled right after the start, during the lookup: the callback still fires once, later, not inside. */
    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(
        oa_fetch_start(&loop, "http://localhost:9/", OA_FETCH_GET, NULL, 0, NULL, 5000, 0, on_fetched, &o, &f, &err),
        0);
    oa_fetch_cancel(f);
    assert_int_equal(o.calls, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.err, OA_E_OCSP_CANCELLED);
    assert_string_equal(o.text, "The query to the OCSP responder localhost:9 was cancelled.");
    outcome_free(&o);
}

static void test_start_rejects_url(void **state)
{
    uv_loop_t loop;
    outcome_t o;
    oa_fetch_t *f = (oa_fetch_t *)&o;
    oa_error_t err;

    (void)state;
    memset(&o, 0, sizeof(o));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_fetch_start(&loop, "https://ocsp.example.com/", OA_FETCH_POST, "x", 1, NULL, 1000, 0,
                                    on_fetched, &o, &f, &err),
                     -1);
    assert_null(f);
    assert_int_equal(err.code, OA_E_OCSP_URL);
    assert_non_null(strstr(err.text, "\"https\""));
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(o.calls, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_url_parse(void **state)
{
    static const struct {
        const char *url;
        const char *host;
        unsigned port;
        const char *path;
        int v6;
    } good[] = {
        {"http://ocsp.example.com", "ocsp.example.com", 80, "/", 0},
        {"HTTP://ocsp.example.com/", "ocsp.example.com", 80, "/", 0},
        {"http://ocsp.example.com:8080/ca/ocsp?x=1&y=2", "ocsp.example.com", 8080, "/ca/ocsp?x=1&y=2", 0},
        {"http://127.0.0.1:65535/a#frag", "127.0.0.1", 65535, "/a", 0},
        {"http://host?q", "host", 80, "/?q", 0},
        {"http://[::1]:8888/ocsp", "::1", 8888, "/ocsp", 1},
        {"http://[2001:db8::7]", "2001:db8::7", 80, "/", 1},
        {"http://under_score.example:81", "under_score.example", 81, "/", 0},
    };
    static const char *const bad[] = {
        "",
        "ocsp.example.com",
        "https://ocsp.example.com/",
        "ftp://x/",
        "ldap://x/",
        "http://",
        "http:///path",
        "http://user:pw@ocsp.example.com/",
        "http://@host/",
        "http://host:0/",
        "http://host:65536/",
        "http://host:80x/",
        "http://host:123456/",
        "http://[::1/",
        "http://[zz::1]/",
        "http://[::1]x/",
        "http://[]/",
        "http://ho st/",
        "http://host/a b",
        "http://host/a\r\nX: y",
        "http://ho%73t/",
        "http://:80/",
    };
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(good); i++) {
        oa_fetch_url_t u;
        oa_error_t err;

        if (oa_fetch_url_parse(good[i].url, &u, &err) != 0)
            fail_msg("%s: %s", good[i].url, err.text);
        assert_string_equal(u.host, good[i].host);
        assert_int_equal(u.port, good[i].port);
        assert_string_equal(u.path, good[i].path);
        assert_int_equal(u.ipv6_literal, good[i].v6);
        oa_fetch_url_free(&u);
    }
    for (i = 0; i < OA_ARRAY_SIZE(bad); i++) {
        oa_fetch_url_t u;
        oa_error_t err;

        oa_error_clear(&err);
        if (oa_fetch_url_parse(bad[i], &u, &err) != -1)
            fail_msg("accepted %s", bad[i]);
        assert_int_equal(err.code, OA_E_OCSP_URL);
        assert_true(strlen(err.text) > 10);
        assert_null(u.path);
    }
    {
        oa_fetch_url_t u;
        oa_error_t err;
        char longhost[300];

        memset(longhost, 0, sizeof(longhost));
        memcpy(longhost, "http://", 7);
        memset(longhost + 7, 'a', 260);
        assert_int_equal(oa_fetch_url_parse(longhost, &u, &err), -1);
        assert_non_null(strstr(err.text, "longer than 255"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_start_rejects_url),
        cmocka_unit_test(test_ok_post),
        cmocka_unit_test(test_ok_get_until_eof),
        cmocka_unit_test(test_http_status),
        cmocka_unit_test(test_content_type),
        cmocka_unit_test(test_too_large_announced),
        cmocka_unit_test(test_too_large_chunked),
        cmocka_unit_test(test_broken_responses),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_timeout_silent),
        cmocka_unit_test(test_timeout_drip),
        cmocka_unit_test(test_refused_and_dns),
        cmocka_unit_test(test_address_fallback),
        cmocka_unit_test(test_cancel),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
