/*
 * The HTTP server over real sockets on 127.0.0.1: the server's loop runs in its own thread, the test thread is a
 * blocking client with a receive timeout. Every test stops the server, joins the thread and closes the loop.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "oa_http.h"
#include "oa_log.h"

enum { CMD_STOP = 1, CMD_RELEASE = 2 };

typedef struct fx_s {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    oa_http_server_t *srv;
    int port;
    atomic_int cmd;
    atomic_int received;  /* requests handed to the handler */
    atomic_int responded; /* answers given by the handler */
    atomic_int done;      /* the server's stop callback ran */
    int inflight;         /* loop thread only */
    int max_inflight;     /* loop thread only */
    unsigned conns_at_stop;
    oa_http_request_t *held;
} fx_t;

typedef struct delayed_s {
    uv_timer_t timer;
    fx_t *fx;
    oa_http_request_t *req;
    char body[128];
} delayed_t;

static void answer(fx_t *fx, oa_http_request_t *req, const char *body)
{
    fx->inflight--;
    oa_http_respond(req, 200, NULL, body, strlen(body));
    atomic_fetch_add(&fx->responded, 1);
}

static void on_delayed_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_delayed(uv_timer_t *t)
{
    delayed_t *d = t->data;

    answer(d->fx, d->req, d->body);
    uv_close((uv_handle_t *)t, on_delayed_closed);
}

/*
 * /hold          kept until the test sends CMD_RELEASE
 * /async/<ms>/x  answered from a timer after ms milliseconds with {"path":"/async/<ms>/x"}
 * /echo          the body back, with the method, content type, query and Authorization length in headers
 * anything else  {"path":"<path>"} at once, with the peer in X-Peer
 */
static void handler(oa_http_request_t *req, void *app)
{
    fx_t *fx = app;
    char body[4096], extra[512];

    atomic_fetch_add(&fx->received, 1);
    fx->inflight++;
    if (fx->inflight > fx->max_inflight)
        fx->max_inflight = fx->inflight;
    if (strcmp(req->path, "/hold") == 0) {
        fx->held = req;
        return;
    }
    if (strncmp(req->path, "/async/", 7) == 0) {
        delayed_t *d = calloc(1, sizeof(*d));

        assert_non_null(d);
        d->fx = fx;
        d->req = req;
        snprintf(d->body, sizeof(d->body), "{\"path\":\"%s\"}", req->path);
        uv_timer_init(&fx->loop, &d->timer);
        d->timer.data = d;
        uv_timer_start(&d->timer, on_delayed, (uint64_t)atoi(req->path + 7), 0);
        return;
    }
    if (strncmp(req->path, "/big/", 5) == 0) {
        /* /big/<bytes>/<letter>: a body larger than the socket buffers. */
        size_t n = (size_t)atol(req->path + 5);
        const char *letter = strrchr(req->path, '/') + 1;
        char *big = malloc(n);

        assert_non_null(big);
        memset(big, letter[0], n);
        fx->inflight--;
        oa_http_respond_typed(req, 200, "application/octet-stream", NULL, big, n);
        atomic_fetch_add(&fx->responded, 1);
        free(big);
        return;
    }
    if (strcmp(req->path, "/echo") == 0) {
        snprintf(extra, sizeof(extra), "X-Method: %s\r\nX-Content-Type: %s\r\nX-Query: %s\r\nX-Auth-Len: %zu\r\n",
                 req->method_name, req->content_type ? req->content_type : "(none)",
                 req->query ? req->query : "(none)", req->authorization_len);
        fx->inflight--;
        oa_http_respond(req, 200, extra, req->body, req->body_len);
        atomic_fetch_add(&fx->responded, 1);
        return;
    }
    snprintf(body, sizeof(body), "{\"path\":\"%s\"}", req->path);
    snprintf(extra, sizeof(extra), "X-Peer: %s\r\n", req->peer);
    fx->inflight--;
    oa_http_respond(req, 200, extra, body, strlen(body));
    atomic_fetch_add(&fx->responded, 1);
}

static void on_stopped(void *arg)
{
    fx_t *fx = arg;

    atomic_store(&fx->done, 1);
}

static void on_stopped_flag(void *arg)
{
    *(int *)arg = 1;
}

static void on_async(uv_async_t *a)
{
    fx_t *fx = a->data;
    int cmd = atomic_exchange(&fx->cmd, 0);

    if ((cmd & CMD_RELEASE) && fx->held != NULL) {
        oa_http_request_t *req = fx->held;

        fx->held = NULL;
        answer(fx, req, "{\"path\":\"/hold\"}");
    }
    if (cmd & CMD_STOP) {
        fx->conns_at_stop = oa_http_server_connections(fx->srv);
        oa_http_server_stop(fx->srv, on_stopped, fx);
        uv_close((uv_handle_t *)&fx->async, NULL);
    }
}

static void loop_thread(void *arg)
{
    fx_t *fx = arg;

    uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static fx_t *fx_start(const oa_http_limits_t *limits)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    oa_error_t err;

    assert_non_null(fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(oa_http_server_start(&fx->loop, "127.0.0.1", 0, limits, NULL, handler, fx, &fx->srv, &err), 0);
    fx->port = oa_http_server_port(fx->srv);
    assert_true(fx->port > 0);
    fx->async.data = fx;
    assert_int_equal(uv_async_init(&fx->loop, &fx->async, on_async), 0);
    assert_int_equal(uv_thread_create(&fx->thread, loop_thread, fx), 0);
    return fx;
}

static void fx_command(fx_t *fx, int cmd)
{
    atomic_fetch_or(&fx->cmd, cmd);
    uv_async_send(&fx->async);
}

/* Stops the server and returns once the loop thread ended with nothing left open. */
static void fx_stop(fx_t *fx)
{
    fx_command(fx, CMD_STOP);
    assert_int_equal(uv_thread_join(&fx->thread), 0);
    assert_int_equal(atomic_load(&fx->done), 1);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
}

static int wait_for(atomic_int *v, int want)
{
    int i;

    for (i = 0; i < 300 && atomic_load(v) < want; i++)
        usleep(10000);
    return atomic_load(v) >= want;
}

/* ---- a blocking client ---- */

typedef struct client_s {
    int fd;
    char buf[1 << 16];
    size_t len;
} client_t;

typedef struct resp_s {
    int status;
    char head[8192];
    char body[1 << 16];
    size_t body_len;
} resp_t;

static client_t *client_open(int port)
{
    client_t *cl = calloc(1, sizeof(*cl));
    struct sockaddr_in sa;
    struct timeval tv = {3, 0};

    assert_non_null(cl);
    cl->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(cl->fd >= 0);
    setsockopt(cl->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(cl->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return cl;
}

static void client_close(client_t *cl)
{
    close(cl->fd);
    free(cl);
}

static void client_send(client_t *cl, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(cl->fd, p, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        assert_true(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void client_send_str(client_t *cl, const char *s)
{
    client_send(cl, s, strlen(s));
}

/* Reads more bytes into the buffer. Returns the count, 0 at EOF, -1 on timeout or error. */
static ssize_t client_fill(client_t *cl)
{
    ssize_t r;

    if (cl->len == sizeof(cl->buf))
        return -1;
    do
        r = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
    while (r < 0 && errno == EINTR);
    if (r > 0)
        cl->len += (size_t)r;
    return r;
}

static void client_consume(client_t *cl, size_t n)
{
    memmove(cl->buf, cl->buf + n, cl->len - n);
    cl->len -= n;
}

/* The value of header name in r->head (case-insensitive name), or "" when absent. */
static const char *header(const resp_t *r, const char *name, char *out, size_t outlen)
{
    const char *line = strstr(r->head, "\r\n");
    size_t nlen = strlen(name);

    out[0] = '\0';
    while (line != NULL && line[2] != '\0') {
        const char *end;

        line += 2;
        end = strstr(line, "\r\n");
        if (end == NULL)
            break;
        if ((size_t)(end - line) > nlen + 1 && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            size_t n;

            while (*v == ' ')
                v++;
            n = (size_t)(end - v);
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return out;
        }
        line = end;
    }
    return out;
}

/* Reads one whole response (headers and Content-Length body). Returns 0, or -1 on EOF or timeout. */
static int client_read_response(client_t *cl, resp_t *r)
{
    char *end;
    char v[64];
    size_t hlen, clen;

    memset(r, 0, sizeof(*r));
    for (;;) {
        end = memmem(cl->buf, cl->len, "\r\n\r\n", 4);
        if (end != NULL)
            break;
        if (client_fill(cl) <= 0)
            return -1;
    }
    hlen = (size_t)(end - cl->buf) + 4;
    assert_true(hlen < sizeof(r->head));
    memcpy(r->head, cl->buf, hlen);
    r->head[hlen] = '\0';
    if (sscanf(r->head, "HTTP/1.1 %d ", &r->status) != 1)
        return -1;
    clen = (size_t)strtoul(header(r, "Content-Length", v, sizeof(v)), NULL, 10);
    assert_true(clen < sizeof(r->body));
    while (cl->len < hlen + clen)
        if (client_fill(cl) <= 0)
            return -1;
    memcpy(r->body, cl->buf + hlen, clen);
    r->body[clen] = '\0';
    r->body_len = clen;
    client_consume(cl, hlen + clen);
    return 0;
}

/* Returns 1 when the server closes the connection (EOF or reset) with no further bytes, 0 on timeout, -1 when
 * bytes arrive instead. */
static int client_wait_eof(client_t *cl)
{
    ssize_t r;

    if (cl->len > 0)
        return -1;
    r = client_fill(cl);
    if (r == 0 || (r < 0 && errno == ECONNRESET))
        return 1;
    return r < 0 ? 0 : -1;
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Asserts r is the server's JSON error for code with status, sent with Connection: close. */
static void assert_error_response(const resp_t *r, int status, const char *code)
{
    json_t *j;
    json_error_t jerr;
    char v[64];

    assert_int_equal(r->status, status);
    assert_string_equal(header(r, "Connection", v, sizeof(v)), "close");
    assert_string_equal(header(r, "Content-Type", v, sizeof(v)), "application/json");
    j = json_loadb(r->body, r->body_len, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "error_code")), code);
    assert_true(strlen(json_string_value(json_object_get(j, "description"))) > 5);
    assert_string_equal(json_string_value(json_object_get(j, "description")),
                        json_string_value(json_object_get(j, "message")));
    json_decref(j);
}

/* Sends raw bytes on a fresh connection and asserts the error answer followed by the close. */
static void expect_error(const oa_http_limits_t *limits, const char *raw, size_t rawlen, int status, const char *code)
{
    fx_t *fx = fx_start(limits);
    client_t *cl = client_open(fx->port);
    resp_t r;

    client_send(cl, raw, rawlen);
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_error_response(&r, status, code);
    assert_int_equal(client_wait_eof(cl), 1);
    assert_int_equal(atomic_load(&fx->received), 0);
    client_close(cl);
    fx_stop(fx);
}

static void expect_error_str(const oa_http_limits_t *limits, const char *raw, int status, const char *code)
{
    expect_error(limits, raw, strlen(raw), status, code);
}

static oa_http_limits_t small_limits(void)
{
    oa_http_limits_t l;

    oa_http_limits_default(&l);
    l.max_header_bytes = 1024;
    l.max_url_bytes = 256;
    l.max_body_bytes = 1024;
    return l;
}

/* ---- tests ---- */

static void test_limits_default(void **state)
{
    oa_http_limits_t l;

    (void)state;
    memset(&l, 0xff, sizeof(l));
    oa_http_limits_default(&l);
    assert_int_equal(l.max_header_bytes, 8192);
    assert_int_equal(l.max_url_bytes, 2048);
    assert_int_equal(l.max_body_bytes, 65536);
    assert_int_equal(l.max_connections, 1024);
    assert_int_equal(l.header_timeout_ms, 10000);
    assert_int_equal(l.body_timeout_ms, 10000);
    assert_int_equal(l.idle_timeout_ms, 60000);
}

static void test_simple_get(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    struct sockaddr_in local;
    socklen_t slen = sizeof(local);
    char date[64], expected[1024], peer[64];
    struct tm tm;
    time_t t;
    resp_t r;

    (void)state;
    assert_int_equal(getsockname(cl->fd, (struct sockaddr *)&local, &slen), 0);
    client_send_str(cl, "GET /hello?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    header(&r, "Date", date, sizeof(date));
    snprintf(peer, sizeof(peer), "127.0.0.1:%u", (unsigned)ntohs(local.sin_port));
    snprintf(expected, sizeof(expected),
             "HTTP/1.1 200 OK\r\nServer: ocsp-agent\r\nDate: %s\r\nContent-Type: application/json\r\n"
             "Content-Length: 17\r\nConnection: keep-alive\r\nX-Peer: %s\r\n\r\n",
             date, peer);
    assert_string_equal(r.head, expected);
    assert_string_equal(r.body, "{\"path\":\"/hello\"}");
    /* The date is RFC 1123 in GMT and current. */
    memset(&tm, 0, sizeof(tm));
    assert_non_null(strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm));
    t = timegm(&tm);
    assert_true(labs((long)(t - time(NULL))) <= 5);
    assert_int_equal(strlen(date), 29);
    client_close(cl);
    fx_stop(fx);
}

static void test_keepalive_sequential(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    char v[64];

    (void)state;
    client_send_str(cl, "GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "Connection", v, sizeof(v)), "keep-alive");
    assert_string_equal(r.body, "{\"path\":\"/one\"}");
    client_send_str(cl, "GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"path\":\"/two\"}");
    assert_int_equal(atomic_load(&fx->received), 2);
    client_close(cl);
    fx_stop(fx);
}

static void test_pipelined_sync(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;

    (void)state;
    client_send_str(cl, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/a\"}");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/b\"}");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/c\"}");
    client_close(cl);
    fx_stop(fx);
}

static void test_pipelined_async(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;

    (void)state;
    /* The first answer is the slowest: order must still hold, and the handler must see one request at a time. */
    client_send_str(cl, "GET /async/120/a HTTP/1.1\r\nHost: x\r\n\r\nGET /async/30/b HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /async/0/c HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/async/120/a\"}");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/async/30/b\"}");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/async/0/c\"}");
    client_close(cl);
    fx_stop(fx);
}

static void test_one_request_at_a_time(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    int i;

    (void)state;
    client_send_str(cl, "GET /async/50/1 HTTP/1.1\r\n\r\nGET /async/10/2 HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n");
    for (i = 0; i < 3; i++)
        assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/x\"}");
    client_close(cl);
    fx_command(fx, CMD_STOP);
    assert_int_equal(uv_thread_join(&fx->thread), 0);
    assert_int_equal(fx->max_inflight, 1);
    assert_int_equal(atomic_load(&fx->received), 3);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
}

static void test_put_echo(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    char v[128];

    (void)state;
    client_send_str(cl, "PUT /echo?dry=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json  \r\n"
                        "Authorization: Bearer abc\r\nContent-Length: 8\r\n\r\n{\"a\":12}");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"a\":12}");
    assert_string_equal(header(&r, "X-Method", v, sizeof(v)), "PUT");
    assert_string_equal(header(&r, "X-Content-Type", v, sizeof(v)), "application/json");
    assert_string_equal(header(&r, "X-Query", v, sizeof(v)), "dry=1");
    assert_string_equal(header(&r, "X-Auth-Len", v, sizeof(v)), "10");
    client_close(cl);
    fx_stop(fx);
}

static void test_request_in_pieces(void **state)
{
    static const char raw[] = "PUT /echo?q=1 HTTP/1.1\r\nContent-Type: text/plain\r\nAuthorization: Basic eHl6\r\n"
                              "Content-Length: 5\r\n\r\nhello";
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    char v[128];
    size_t i;

    (void)state;
    /* Three bytes at a time: URL, names and values all arrive split across reads. */
    for (i = 0; i < sizeof(raw) - 1; i += 3) {
        client_send(cl, raw + i, sizeof(raw) - 1 - i < 3 ? sizeof(raw) - 1 - i : 3);
        usleep(1000);
    }
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_string_equal(header(&r, "X-Content-Type", v, sizeof(v)), "text/plain");
    assert_string_equal(header(&r, "X-Query", v, sizeof(v)), "q=1");
    assert_string_equal(header(&r, "X-Auth-Len", v, sizeof(v)), "10");
    client_close(cl);
    fx_stop(fx);
}

static void test_chunked_body(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    char v[64];

    (void)state;
    client_send_str(cl, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Wikipedia");
    assert_string_equal(header(&r, "X-Method", v, sizeof(v)), "POST");
    assert_string_equal(header(&r, "Connection", v, sizeof(v)), "keep-alive");
    client_close(cl);
    fx_stop(fx);
}

static void test_invalid_chunked(void **state)
{
    (void)state;
    expect_error_str(NULL, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nWiki\r\n0\r\n\r\n", 400,
                     "bad_request");
}

static void test_content_length_too_large(void **state)
{
    oa_http_limits_t l = small_limits();

    (void)state;
    /* The body is never sent: the answer must come from the headers alone. */
    expect_error_str(&l, "PUT /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413, "request_body_too_large");
}

static void test_chunked_too_large(void **state)
{
    oa_http_limits_t l = small_limits();
    char raw[2048];
    int n;

    (void)state;
    n = snprintf(raw, sizeof(raw), "PUT /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n%0600d\r\n",
                 0);
    n += snprintf(raw + n, sizeof(raw) - (size_t)n, "258\r\n%0600d\r\n", 0);
    expect_error(&l, raw, (size_t)n, 413, "request_body_too_large");
}

static void test_headers_too_large(void **state)
{
    oa_http_limits_t l = small_limits();
    char raw[4096];
    int n;

    (void)state;
    n = snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nX-Big: %02000d\r\n\r\n", 0);
    expect_error(&l, raw, (size_t)n, 431, "request_headers_too_large");
}

static void test_url_too_long(void **state)
{
    oa_http_limits_t l = small_limits();
    char raw[1024];
    int n;

    (void)state;
    n = snprintf(raw, sizeof(raw), "GET /%0300d HTTP/1.1\r\n\r\n", 0);
    expect_error(&l, raw, (size_t)n, 414, "uri_too_long");
}

static void test_garbage(void **state)
{
    (void)state;
    expect_error_str(NULL, "\x01\x02 hello there\r\n\r\n", 400, "bad_request");
}

static void test_bad_version(void **state)
{
    (void)state;
    expect_error_str(NULL, "GET / HTTP/2.0\r\n\r\n", 400, "bad_request");
}

static void test_bad_content_length(void **state)
{
    (void)state;
    expect_error_str(NULL, "PUT /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400,
                     "bad_request");
    expect_error_str(NULL, "PUT /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad_request");
    expect_error_str(NULL, "PUT /echo HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", 400,
                     "bad_request");
}

static void test_header_timeout(void **state)
{
    oa_http_limits_t l;
    fx_t *fx;
    client_t *cl;
    resp_t r;
    double t0, dt;

    (void)state;
    oa_http_limits_default(&l);
    l.header_timeout_ms = 200;
    fx = fx_start(&l);
    cl = client_open(fx->port);
    t0 = now_ms();
    client_send_str(cl, "GET / HTTP/1.1\r\nHost: a\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    dt = now_ms() - t0;
    assert_error_response(&r, 408, "request_timeout");
    assert_true(dt >= 150 && dt < 2000);
    assert_int_equal(client_wait_eof(cl), 1);
    client_close(cl);
    fx_stop(fx);
}

static void test_body_timeout(void **state)
{
    oa_http_limits_t l;
    fx_t *fx;
    client_t *cl;
    resp_t r;

    (void)state;
    oa_http_limits_default(&l);
    l.body_timeout_ms = 200;
    fx = fx_start(&l);
    cl = client_open(fx->port);
    client_send_str(cl, "PUT /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_error_response(&r, 408, "request_timeout");
    assert_int_equal(client_wait_eof(cl), 1);
    assert_int_equal(atomic_load(&fx->received), 0);
    client_close(cl);
    fx_stop(fx);
}

static void test_idle_timeout(void **state)
{
    oa_http_limits_t l;
    fx_t *fx;
    client_t *cl;
    resp_t r;
    double t0, dt;

    (void)state;
    oa_http_limits_default(&l);
    l.idle_timeout_ms = 200;
    fx = fx_start(&l);
    cl = client_open(fx->port);
    client_send_str(cl, "GET /a HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    t0 = now_ms();
    assert_int_equal(client_wait_eof(cl), 1); /* closed silently: no bytes before the EOF */
    dt = now_ms() - t0;
    assert_true(dt >= 150 && dt < 2000);
    client_close(cl);
    fx_stop(fx);
}

static void test_max_connections(void **state)
{
    oa_http_limits_t l;
    fx_t *fx;
    client_t *a, *b, *c, *d;
    resp_t r;
    int i, ok = 0;

    (void)state;
    oa_http_limits_default(&l);
    l.max_connections = 2;
    fx = fx_start(&l);
    a = client_open(fx->port);
    b = client_open(fx->port);
    client_send_str(a, "GET /a HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(a, &r), 0);
    client_send_str(b, "GET /b HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(b, &r), 0);
    c = client_open(fx->port);
    assert_int_equal(client_wait_eof(c), 1);
    client_close(c);
    /* Once one connection is gone, a new one is served again. */
    client_close(a);
    for (i = 0; i < 50 && !ok; i++) {
        usleep(20000);
        d = client_open(fx->port);
        client_send(d, "GET /d HTTP/1.1\r\n\r\n", 19);
        ok = client_read_response(d, &r) == 0 && r.status == 200;
        client_close(d);
    }
    assert_true(ok);
    client_close(b);
    fx_stop(fx);
}

static void test_expect_continue(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    resp_t r;

    (void)state;
    client_send_str(cl, "PUT /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    while (cl->len < sizeof(cont) - 1)
        assert_true(client_fill(cl) > 0);
    assert_memory_equal(cl->buf, cont, sizeof(cont) - 1);
    client_consume(cl, sizeof(cont) - 1);
    client_send_str(cl, "hello");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    client_close(cl);
    fx_stop(fx);
}

static void test_expect_too_large(void **state)
{
    oa_http_limits_t l = small_limits();

    (void)state;
    /* 413 comes first, never a 100 Continue. */
    expect_error_str(&l, "PUT /echo HTTP/1.1\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n", 413,
                     "request_body_too_large");
}

static void test_http10_and_close(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    char v[64];

    (void)state;
    client_send_str(cl, "GET /old HTTP/1.0\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_string_equal(header(&r, "Connection", v, sizeof(v)), "close");
    assert_string_equal(r.body, "{\"path\":\"/old\"}");
    assert_int_equal(client_wait_eof(cl), 1);
    client_close(cl);

    /* HTTP/1.1 with Connection: close; the pipelined request behind it is never answered. */
    cl = client_open(fx->port);
    client_send_str(cl, "GET /last HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(header(&r, "Connection", v, sizeof(v)), "close");
    assert_string_equal(r.body, "{\"path\":\"/last\"}");
    assert_int_equal(client_wait_eof(cl), 1);
    client_close(cl);

    /* HTTP/1.0 asking for keep-alive gets it. */
    cl = client_open(fx->port);
    client_send_str(cl, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(header(&r, "Connection", v, sizeof(v)), "keep-alive");
    client_close(cl);
    assert_int_equal(atomic_load(&fx->received), 3);
    fx_stop(fx);
}

static void test_head(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    resp_t r;
    char v[64];

    (void)state;
    client_send_str(cl, "HEAD /h HTTP/1.1\r\n\r\n");
    /* Headers only: Content-Length describes the GET body, which is not sent. */
    while (memmem(cl->buf, cl->len, "\r\n\r\n", 4) == NULL)
        assert_true(client_fill(cl) > 0);
    memset(&r, 0, sizeof(r));
    memcpy(r.head, cl->buf, cl->len);
    assert_string_equal(header(&r, "Content-Length", v, sizeof(v)), "13");
    assert_int_equal((char *)memmem(cl->buf, cl->len, "\r\n\r\n", 4) + 4 - cl->buf, (long)cl->len);
    cl->len = 0;
    client_send_str(cl, "GET /g HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/g\"}");
    client_close(cl);
    fx_stop(fx);
}

static void test_peer_gone_while_pending(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    client_t *other;
    resp_t r;

    (void)state;
    client_send_str(cl, "GET /async/200/x HTTP/1.1\r\n\r\nGET /never HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&fx->received, 1));
    client_close(cl);
    /* The handler still answers later; the connection must have stayed valid for it. */
    assert_true(wait_for(&fx->responded, 1));
    usleep(50000);
    assert_int_equal(atomic_load(&fx->received), 1);
    other = client_open(fx->port);
    client_send_str(other, "GET /after HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(other, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/after\"}");
    client_close(other);
    usleep(50000);
    fx_command(fx, CMD_STOP);
    assert_int_equal(uv_thread_join(&fx->thread), 0);
    assert_int_equal(fx->conns_at_stop, 0);
    assert_int_equal(atomic_load(&fx->done), 1);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
}

static void test_stop_with_pending(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *busy = client_open(fx->port);
    client_t *idle = client_open(fx->port);
    resp_t r;
    char v[64];

    (void)state;
    client_send_str(idle, "GET /first HTTP/1.1\r\n\r\n");
    assert_int_equal(client_read_response(idle, &r), 0);
    client_send_str(busy, "GET /async/300/slow HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&fx->received, 2));
    fx_command(fx, CMD_STOP);
    /* The idle connection goes at once; the busy one gets its answer, marked close, then the close. */
    assert_int_equal(client_wait_eof(idle), 1);
    assert_int_equal(client_read_response(busy, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"path\":\"/async/300/slow\"}");
    assert_string_equal(header(&r, "Connection", v, sizeof(v)), "close");
    assert_int_equal(client_wait_eof(busy), 1);
    assert_int_equal(uv_thread_join(&fx->thread), 0);
    assert_int_equal(fx->conns_at_stop, 2);
    assert_int_equal(atomic_load(&fx->done), 1);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    client_close(busy);
    client_close(idle);
    free(fx);
}

static void test_backpressure(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    static const char one[] = "GET /p HTTP/1.1\r\nHost: x\r\n\r\n";
    char *block;
    size_t block_len = 0, total = 0;
    double last_progress;
    resp_t r;

    (void)state;
    block = malloc(64 * 1024);
    assert_non_null(block);
    while (block_len + sizeof(one) - 1 <= 64 * 1024) {
        memcpy(block + block_len, one, sizeof(one) - 1);
        block_len += sizeof(one) - 1;
    }
    client_send_str(cl, "GET /hold HTTP/1.1\r\n\r\n");
    assert_true(wait_for(&fx->received, 1));
    /* With the first request held, the server must stop reading: sends stall well before 64 MiB. */
    fcntl(cl->fd, F_SETFL, fcntl(cl->fd, F_GETFL) | O_NONBLOCK);
    last_progress = now_ms();
    while (total < 64u * 1024 * 1024 && now_ms() - last_progress < 300) {
        ssize_t w = send(cl->fd, block, block_len, MSG_NOSIGNAL);

        if (w > 0) {
            total += (size_t)w;
            last_progress = now_ms();
        } else {
            usleep(5000);
        }
    }
    assert_true(total < 64u * 1024 * 1024);
    assert_int_equal(atomic_load(&fx->received), 1);
    fcntl(cl->fd, F_SETFL, fcntl(cl->fd, F_GETFL) & ~O_NONBLOCK);
    fx_command(fx, CMD_RELEASE);
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/hold\"}");
    assert_int_equal(client_read_response(cl, &r), 0);
    assert_string_equal(r.body, "{\"path\":\"/p\"}");
    assert_true(atomic_load(&fx->received) > 1);
    client_close(cl);
    free(block);
    fx_stop(fx);
}

/* Reads a response whose body may exceed the buffer, checking that every body byte is letter. */
static void read_big_response(client_t *cl, size_t want, char letter)
{
    char *end;
    char v[32];
    size_t hlen, got = 0, i, take;
    resp_t *r = malloc(sizeof(*r));

    assert_non_null(r);
    memset(r, 0, sizeof(*r));
    while ((end = memmem(cl->buf, cl->len, "\r\n\r\n", 4)) == NULL)
        assert_true(client_fill(cl) > 0);
    hlen = (size_t)(end - cl->buf) + 4;
    memcpy(r->head, cl->buf, hlen);
    assert_true(strncmp(r->head, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_int_equal(strtoul(header(r, "Content-Length", v, sizeof(v)), NULL, 10), want);
    assert_string_equal(header(r, "Content-Type", v, sizeof(v)), "application/octet-stream");
    client_consume(cl, hlen);
    while (got < want) {
        if (cl->len == 0)
            assert_true(client_fill(cl) > 0);
        take = cl->len < want - got ? cl->len : want - got;
        for (i = 0; i < take; i++)
            assert_int_equal(cl->buf[i], letter);
        client_consume(cl, take);
        got += take;
    }
    free(r);
}

static void test_large_responses_pipelined(void **state)
{
    fx_t *fx = fx_start(NULL);
    client_t *cl = client_open(fx->port);
    char req[128];
    int i;

    (void)state;
    for (i = 0; i < 8; i++) {
        snprintf(req, sizeof(req), "GET /big/300000/%c HTTP/1.1\r\n\r\n", 'a' + i);
        client_send_str(cl, req);
    }
    /* Not reading for a while makes the server queue writes and hold back the later requests. */
    usleep(200000);
    for (i = 0; i < 8; i++)
        read_big_response(cl, 300000, (char)('a' + i));
    assert_int_equal(atomic_load(&fx->responded), 8);
    client_close(cl);
    fx_stop(fx);
}

static void test_start_errors(void **state)
{
    uv_loop_t loop;
    oa_http_server_t *a = NULL, *b = (oa_http_server_t *)1;
    oa_error_t err;
    char want[64];
    int done = 0;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_http_server_start(&loop, "127.0.0.1", 0, NULL, NULL, handler, NULL, &a, &err), 0);
    assert_int_equal(oa_http_server_start(&loop, "127.0.0.1", oa_http_server_port(a), NULL, NULL, handler, NULL, &b,
                                          &err),
                     -1);
    assert_null(b);
    assert_int_equal(err.code, OA_E_IO);
    snprintf(want, sizeof(want), "127.0.0.1:%d", oa_http_server_port(a));
    assert_non_null(strstr(err.text, want));
    assert_non_null(strstr(err.text, "address already in use"));
    assert_int_equal(oa_http_server_start(&loop, "localhost", 0, NULL, NULL, handler, NULL, &b, &err), -1);
    assert_int_equal(err.code, OA_E_IO);
    assert_non_null(strstr(err.text, "localhost"));
    assert_int_equal(oa_http_server_start(&loop, "::1", 0, NULL, NULL, handler, NULL, &b, &err) == 0 ||
                         err.code == OA_E_IO,
                     1);
    if (b != NULL) {
        assert_true(oa_http_server_port(b) > 0);
        oa_http_server_stop(b, NULL, NULL);
    }
    assert_int_equal(oa_http_server_connections(a), 0);
    oa_http_server_stop(a, on_stopped_flag, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(done, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_default),
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_keepalive_sequential),
        cmocka_unit_test(test_pipelined_sync),
        cmocka_unit_test(test_pipelined_async),
        cmocka_unit_test(test_one_request_at_a_time),
        cmocka_unit_test(test_put_echo),
        cmocka_unit_test(test_request_in_pieces),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_invalid_chunked),
        cmocka_unit_test(test_content_length_too_large),
        cmocka_unit_test(test_chunked_too_large),
        cmocka_unit_test(test_headers_too_large),
        cmocka_unit_test(test_url_too_long),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_bad_content_length),
        cmocka_unit_test(test_header_timeout),
        cmocka_unit_test(test_body_timeout),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_expect_too_large),
        cmocka_unit_test(test_http10_and_close),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_peer_gone_while_pending),
        cmocka_unit_test(test_stop_with_pending),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_large_responses_pipelined),
        cmocka_unit_test(test_start_errors),
    };

    signal(SIGPIPE, SIG_IGN);
    oa_log_setup(OA_LOG_TEXT, getenv("OA_TEST_DEBUG") ? OA_LOG_DEBUG : OA_LOG_ERROR, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
