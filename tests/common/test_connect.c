/*
 * Resolving and connecting under one deadline, against real loopback sockets only (127.0.0.1 and ::1): listeners
 * on the test's own loop, ports nothing listens on, and a listener whose accept queue is full so that a connect to
 * it hangs until the deadline.
 */
#include <dlfcn.h>
#include <netdb.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "oa_connect.h"
#include "oa_util.h"
#include "testnet.h"

/*
 * The resolver, interposed for one made-up name so that the order of the addresses (and a port per address) is the
 * test's to choose on any host: FAKE_NAME resolves to the numeric addresses in fake_addrs, in that order. Every
 * other name goes to the real resolver. Each entry comes from the real getaddrinfo, so freeaddrinfo frees them.
 */
#define FAKE_NAME "fallback.test"

typedef struct fake_addr_s {
    const char *ip;
    int port;
} fake_addr_t;

static fake_addr_t fake_addrs[4];
static size_t fake_count;

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    static gai_fn real;
    struct addrinfo numeric, *head = NULL, **tail = &head;
    char port[8];
    size_t i;
    int rc;

    if (real == NULL)
        real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (node == NULL || strcmp(node, FAKE_NAME) != 0)
        return real(node, service, hints, res);
    memset(&numeric, 0, sizeof(numeric));
    numeric.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    numeric.ai_socktype = SOCK_STREAM;
    for (i = 0; i < fake_count; i++) {
        snprintf(port, sizeof(port), "%d", fake_addrs[i].port);
        rc = real(fake_addrs[i].ip, port, &numeric, tail);
        if (rc != 0) {
            freeaddrinfo(head);
            return rc;
        }
        while (*tail != NULL)
            tail = &(*tail)->ai_next;
    }
    *res = head;
    return head != NULL ? 0 : EAI_NONAME;
}

/* ---- A listener that reads one word ---- */

typedef struct fixture_s fixture_t;

typedef struct server_s {
    fixture_t *fx;
    uv_tcp_t listener;
    uv_tcp_t conn;
    int port;
    int accepted;
    int stopped;
    char got[8];
    size_t got_len;
} server_t;

/* One connector run: the handle it connects, what the callback saw, the servers and timer living on the loop. */
struct fixture_s {
    uv_loop_t loop;
    uv_tcp_t tcp;
    uv_write_t write_req;
    uv_timer_t cancel_timer;
    oa_connect_t *c;
    oa_connect_result_t res;
    int calls;
    int started;             /* oa_connect_start has returned */
    int called_inside_start; /* the callback fired before it had */
    int cancel_inside_cb;    /* call oa_connect_cancel from the callback: must do nothing */
    uint64_t t0;
    uint64_t elapsed_ms;
    server_t srv[2];
    int nsrv;
};

static void fixture_init(fixture_t *fx)
{
    memset(fx, 0, sizeof(*fx));
    assert_int_equal(uv_loop_init(&fx->loop), 0);
}

static void stop_servers(fixture_t *fx)
{
    int i;

    for (i = 0; i < fx->nsrv; i++) {
        server_t *s = &fx->srv[i];

        if (s->stopped)
            continue;
        s->stopped = 1;
        uv_close((uv_handle_t *)&s->listener, NULL);
        if (s->accepted > 0)
            uv_close((uv_handle_t *)&s->conn, NULL);
    }
}

static void srv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    server_t *s = h->data;

    (void)suggested;
    *buf = uv_buf_init(s->got + s->got_len, (unsigned)(sizeof(s->got) - 1 - s->got_len));
}

static void srv_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    server_t *s = stream->data;

    (void)buf;
    if (nread > 0)
        s->got_len += (size_t)nread;
    /* The client sends one word and closes: either ends the run. */
    if (nread < 0 || s->got_len >= 4)
        stop_servers(s->fx);
}

static void srv_on_connection(uv_stream_t *listener, int status)
{
    server_t *s = listener->data;

    assert_int_equal(status, 0);
    assert_int_equal(s->accepted, 0);
    s->accepted = 1;
    assert_int_equal(uv_tcp_init(listener->loop, &s->conn), 0);
    s->conn.data = s;
    assert_int_equal(uv_accept(listener, (uv_stream_t *)&s->conn), 0);
    assert_int_equal(uv_read_start((uv_stream_t *)&s->conn, srv_alloc, srv_read), 0);
}

/* Listens on ip port 0. Returns the server, or NULL when ip cannot be bound (no IPv6 on this host). */
static server_t *server_start(fixture_t *fx, const char *ip)
{
    server_t *s = &fx->srv[fx->nsrv];
    struct sockaddr_storage a;
    int len = sizeof(a);

    memset(s, 0, sizeof(*s));
    s->fx = fx;
    if (strchr(ip, ':') != NULL)
        assert_int_equal(uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&a), 0);
    else
        assert_int_equal(uv_ip4_addr(ip, 0, (struct sockaddr_in *)&a), 0);
    assert_int_equal(uv_tcp_init(&fx->loop, &s->listener), 0);
    s->listener.data = s;
    if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) != 0 ||
        uv_listen((uv_stream_t *)&s->listener, 8, srv_on_connection) != 0) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
        return NULL;
    }
    assert_int_equal(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&a, &len), 0);
    s->port = a.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&a)->sin6_port)
                                      : ntohs(((struct sockaddr_in *)&a)->sin_port);
    fx->nsrv++;
    return s;
}

/* ---- A listener that never accepts ---- */

/* A listener with a backlog of 0 holds one finished handshake in its queue; once that is taken by a filler
 * connection, the kernel drops every further SYN, so a connect to it neither succeeds nor fails. */
typedef struct hang_s {
    int listen_fd;
    int filler_fd;
    int port;
} hang_t;

static void hang_open(hang_t *h)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    struct pollfd pfd;

    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
    h->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(h->listen_fd >= 0);
    assert_int_equal(bind(h->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(h->listen_fd, 0), 0);
    assert_int_equal(getsockname(h->listen_fd, (struct sockaddr *)&a, &len), 0);
    h->port = ntohs(a.sin_port);
    h->filler_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(h->filler_fd >= 0);
    assert_int_equal(connect(h->filler_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    /* The listener turns readable once the filler sits in the accept queue: from then on the queue is full. */
    pfd.fd = h->listen_fd;
    pfd.events = POLLIN;
    assert_int_equal(poll(&pfd, 1, 5000), 1);
}

static void hang_close(hang_t *h)
{
    close(h->filler_fd);
    close(h->listen_fd);
}

/* ---- Running the connector ---- */

static void on_client_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_written(uv_write_t *req, int status)
{
    fixture_t *fx = oa_container_of(req, fixture_t, write_req);

    assert_int_equal(status, 0);
    uv_close((uv_handle_t *)&fx->tcp, on_client_closed);
}

static void on_result(const oa_connect_result_t *res, void *data)
{
    fixture_t *fx = data;
    uv_buf_t word = uv_buf_init("ping", 4);

    fx->calls++;
    fx->called_inside_start |= !fx->started;
    fx->res = *res;
    fx->elapsed_ms = uv_now(&fx->loop) - fx->t0;
    if (fx->cancel_inside_cb)
        oa_connect_cancel(fx->c);
    fx->c = NULL;
    if (res->outcome != OA_CONNECT_OK) {
        /* The handle is closed already: nothing of the client is left on the loop. */
        stop_servers(fx);
        return;
    }
    /* The handle is the caller's now, and connected: one word goes through it to the server. */
    assert_null(fx->tcp.data);
    assert_int_equal(uv_write(&fx->write_req, (uv_stream_t *)&fx->tcp, &word, 1, on_written), 0);
}

static void start(fixture_t *fx, const char *host, int port, unsigned timeout_ms)
{
    fx->t0 = uv_now(&fx->loop);
    assert_int_equal(oa_connect_start(&fx->loop, &fx->tcp, host, (unsigned)port, timeout_ms, on_result, fx, &fx->c),
                     0);
    assert_non_null(fx->c);
    fx->started = 1;
}

/* Runs the loop until everything is closed; the callback must have fired exactly once, from the loop. */
static void run(fixture_t *fx)
{
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    assert_int_equal(fx->calls, 1);
    assert_false(fx->called_inside_start);
}

static void connect_and_run(fixture_t *fx, const char *host, int port, unsigned timeout_ms)
{
    start(fx, host, port, timeout_ms);
    run(fx);
}

/* FAKE_NAME resolves to these two addresses, in this order. */
static void fake_two(const char *ip1, int port1, const char *ip2, int port2)
{
    fake_addrs[0] = (fake_addr_t){ip1, port1};
    fake_addrs[1] = (fake_addr_t){ip2, port2};
    fake_count = 2;
}

/* ---- Tests ---- */

static void connect_to_listener(const char *ip)
{
    fixture_t fx;
    server_t *s;

    fixture_init(&fx);
    s = server_start(&fx, ip);
    if (s == NULL) {
        assert_int_equal(uv_loop_close(&fx.loop), 0);
        skip();
    }
    fx.cancel_inside_cb = 1;
    connect_and_run(&fx, ip, s->port, 5000);
    assert_int_equal(fx.res.outcome, OA_CONNECT_OK);
    assert_int_equal(fx.res.status, 0);
    assert_true(fx.res.resolved);
    assert_int_equal(fx.res.attempts, 1);
    assert_string_equal(fx.res.addr, ip);
    assert_true(fx.res.left_ms <= 5000);
    assert_int_equal(s->accepted, 1);
    assert_int_equal(s->got_len, 4);
    assert_memory_equal(s->got, "ping", 4);
}

static void test_connects_ipv4(void **state)
{
    (void)state;
    connect_to_listener("127.0.0.1");
}

static void test_connects_ipv6(void **state)
{
    (void)state;
    connect_to_listener("::1");
}

/* The first address refuses; the connector must go on to the second, which listens. */
static void fall_through(const char *first_ip)
{
    fixture_t fx;
    server_t *s;
    int refused = oa_testnet_free_port();

    assert_true(refused > 0);
    fixture_init(&fx);
    s = server_start(&fx, "127.0.0.1");
    assert_non_null(s);
    fake_two(first_ip, refused, "127.0.0.1", s->port);
    connect_and_run(&fx, FAKE_NAME, 1, 5000);
    assert_int_equal(fx.res.outcome, OA_CONNECT_OK);
    assert_int_equal(fx.res.attempts, 2);
    assert_string_equal(fx.res.addr, "127.0.0.1");
    assert_int_equal(s->accepted, 1);
    assert_memory_equal(s->got, "ping", 4);
}

static void test_falls_through_to_next_address(void **state)
{
    (void)state;
    fall_through("127.0.0.1");
    /* IPv6 first, then IPv4, as getaddrinfo orders them for a dual-stack name. Where ::1 is missing its connect
     * fails otherwise than with a refusal, and the connector moves on all the same. */
    fall_through("::1");
}

/* Two listening addresses: the first in the list is the one connected, the second is never tried. */
static void test_tries_addresses_in_order(void **state)
{
    fixture_t fx;
    server_t *first, *second;

    (void)state;
    fixture_init(&fx);
    first = server_start(&fx, "127.0.0.1");
    second = server_start(&fx, "127.0.0.1");
    assert_non_null(first);
    assert_non_null(second);
    fake_two("127.0.0.1", first->port, "127.0.0.1", second->port);
    connect_and_run(&fx, FAKE_NAME, 1, 5000);
    assert_int_equal(fx.res.outcome, OA_CONNECT_OK);
    assert_int_equal(fx.res.attempts, 1);
    assert_int_equal(first->accepted, 1);
    assert_int_equal(second->accepted, 0);
}

static void test_every_address_refused(void **state)
{
    fixture_t fx;
    int one = oa_testnet_free_port(), two = oa_testnet_free_port();

    (void)state;
    assert_true(one > 0 && two > 0);
    fixture_init(&fx);
    fake_two("127.0.0.1", one, "127.0.0.1", two);
    connect_and_run(&fx, FAKE_NAME, 1, 5000);
    assert_int_equal(fx.res.outcome, OA_CONNECT_FAILED);
    assert_int_equal(fx.res.status, UV_ECONNREFUSED);
    assert_true(fx.res.resolved);
    assert_int_equal(fx.res.attempts, 2);
    assert_string_equal(fx.res.addr, "127.0.0.1");

    /* A literal address is no different: one attempt, refused. */
    fixture_init(&fx);
    connect_and_run(&fx, "127.0.0.1", one, 5000);
    assert_int_equal(fx.res.outcome, OA_CONNECT_FAILED);
    assert_int_equal(fx.res.status, UV_ECONNREFUSED);
    assert_int_equal(fx.res.attempts, 1);
}

static void test_dns_failure(void **state)
{
    fixture_t fx;

    (void)state;
    fixture_init(&fx);
    /* A generous deadline: on a host with an unreachable DNS server the lookup fails only after its retries. */
    connect_and_run(&fx, "nonexistent.invalid", 80, 12000);
    assert_int_equal(fx.res.outcome, OA_CONNECT_DNS);
    assert_true(fx.res.status < 0);
    assert_false(fx.res.resolved);
    assert_int_equal(fx.res.attempts, 0);
    assert_string_equal(fx.res.addr, "");
}

/* A name libuv refuses before any lookup (longer than a DNS name can be) is still reported from the loop. */
static void test_lookup_that_cannot_start(void **state)
{
    fixture_t fx;
    char name[300];

    (void)state;
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    fixture_init(&fx);
    start(&fx, name, 80, 5000);
    assert_int_equal(fx.calls, 0);
    run(&fx);
    assert_int_equal(fx.res.outcome, OA_CONNECT_DNS);
    assert_true(fx.res.status < 0);
    assert_int_equal(fx.res.attempts, 0);
}

/* One deadline for everything: an address that hangs uses it all up, and the listening address after it is never
 * tried. */
static void test_deadline_while_connecting(void **state)
{
    fixture_t fx;
    server_t *s;
    hang_t hang;

    (void)state;
    hang_open(&hang);
    fixture_init(&fx);
    s = server_start(&fx, "127.0.0.1");
    assert_non_null(s);
    fake_two("127.0.0.1", hang.port, "127.0.0.1", s->port);
    connect_and_run(&fx, FAKE_NAME, 1, 300);
    hang_close(&hang);
    assert_int_equal(fx.res.outcome, OA_CONNECT_TIMEOUT);
    assert_true(fx.res.resolved);
    assert_int_equal(fx.res.attempts, 1);
    assert_int_equal(s->accepted, 0);
    assert_true(fx.elapsed_ms >= 300);
}

static void on_cancel_timer(uv_timer_t *t)
{
    fixture_t *fx = oa_container_of(t, fixture_t, cancel_timer);

    oa_connect_cancel(fx->c);
    oa_connect_cancel(fx->c); /* a second call changes nothing */
    assert_int_equal(fx->calls, 0);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel_while_connecting(void **state)
{
    fixture_t fx;
    hang_t hang;

    (void)state;
    hang_open(&hang);
    fixture_init(&fx);
    start(&fx, "127.0.0.1", hang.port, 5000);
    assert_int_equal(uv_timer_init(&fx.loop, &fx.cancel_timer), 0);
    assert_int_equal(uv_timer_start(&fx.cancel_timer, on_cancel_timer, 100, 0), 0);
    run(&fx);
    hang_close(&hang);
    assert_int_equal(fx.res.outcome, OA_CONNECT_CANCELLED);
    assert_true(fx.res.resolved);
    assert_int_equal(fx.res.attempts, 1);
}

static void test_cancel_while_resolving(void **state)
{
    fixture_t fx;

    (void)state;
    fixture_init(&fx);
    /* Even a literal goes through the lookup on the thread pool: it has not come back before the loop runs. */
    start(&fx, "127.0.0.1", 1, 5000);
    oa_connect_cancel(fx.c);
    oa_connect_cancel(fx.c);
    assert_int_equal(fx.calls, 0);
    run(&fx);
    assert_int_equal(fx.res.outcome, OA_CONNECT_CANCELLED);
    assert_int_equal(fx.res.attempts, 0);
}

/* A failure already settled but not reported yet (the lookup could not start) is reported as the cancellation. */
static void test_cancel_after_failure_settled(void **state)
{
    fixture_t fx;
    char name[300];

    (void)state;
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    fixture_init(&fx);
    start(&fx, name, 80, 5000);
    oa_connect_cancel(fx.c);
    run(&fx);
    assert_int_equal(fx.res.outcome, OA_CONNECT_CANCELLED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connects_ipv4),
        cmocka_unit_test(test_connects_ipv6),
        cmocka_unit_test(test_falls_through_to_next_address),
        cmocka_unit_test(test_tries_addresses_in_order),
        cmocka_unit_test(test_every_address_refused),
        cmocka_unit_test(test_dns_failure),
        cmocka_unit_test(test_lookup_that_cannot_start),
        cmocka_unit_test(test_deadline_while_connecting),
        cmocka_unit_test(test_cancel_while_connecting),
        cmocka_unit_test(test_cancel_while_resolving),
        cmocka_unit_test(test_cancel_after_failure_settled),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
