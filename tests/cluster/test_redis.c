/*
 * The Redis connection against real redis-server processes on 127.0.0.1: one plain and one TLS server for the whole
 * suite (started in the group setup), a private one for the test that kills its server, and small in-process
 * servers for the failures Redis itself never produces (silence, garbage). Certificates are made at test time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "oa_redis.h"
#include "oa_tls.h"
#include "testnet.h"
#include "testpki.h"

#define GUARD_MS 8000

/* ---- redis-server processes ---- */

typedef struct server_s {
    pid_t pid;
    int port;
} server_t;

static struct {
    char dir[OA_TESTPKI_DIR_MAX];
    char ca[256], server_cert[256], server_key[256], client_cert[256], client_key[256];
    char other_ca[256], other_key[256], missing[256];
    server_t plain, tls;
} g;

/* Starts redis-server on a free port of 127.0.0.1 (TLS only when tls, with a client certificate required) and
 * waits until it accepts. */
static void server_start(server_t *s, int tls)
{
    const char *const tls_args[] = {"--tls-cert-file",    g.server_cert, "--tls-key-file",     g.server_key,
                                    "--tls-ca-cert-file", g.ca,          "--tls-auth-clients", "yes",
                                    NULL};

    s->port = oa_testnet_free_port();
    assert_true(s->port > 0);
    s->pid = oa_testnet_redis_start(s->port, g.dir, tls ? tls_args : NULL);
    assert_true(s->pid > 0);
}

/* SIGKILL: the suite wants the server gone at once, as in a crash, never a clean shutdown. */
static void server_stop(server_t *s)
{
    oa_testnet_redis_stop(s->pid, SIGKILL);
    s->pid = 0;
}

static int write_ident(const oa_testpki_ident_t *id, char *cert, char *key, const char *name)
{
    char file[64];

    snprintf(file, sizeof(file), "%s.pem", name);
    oa_testpki_path(cert, 256, g.dir, file);
    snprintf(file, sizeof(file), "%s.key", name);
    oa_testpki_path(key, 256, g.dir, file);
    return oa_testpki_write_certs(cert, id->cert, (X509 *)NULL) == 0 && oa_testpki_write_key(key, id->key) == 0 ? 0
                                                                                                                : -1;
}

static int group_setup(void **state)
{
    oa_testpki_ident_t ca = {0}, server = {0}, client = {0}, other = {0};
    char unused[256];

    (void)state;
    signal(SIGPIPE, SIG_IGN);
    assert_int_equal(oa_testpki_tmpdir(g.dir), 0);
    assert_int_equal(oa_testpki_ca_new("Redis Test CA", &ca), 0);
    assert_int_equal(oa_testpki_ca_new("Unrelated CA", &other), 0);
    assert_int_equal(oa_testpki_tls_leaf_new(&ca, "redis.test", "DNS:localhost,IP:127.0.0.1,IP:::1", &server), 0);
    assert_int_equal(oa_testpki_tls_leaf_new(&ca, "agent.test", NULL, &client), 0);
    assert_int_equal(write_ident(&ca, g.ca, unused, "ca"), 0);
    assert_int_equal(write_ident(&other, g.other_ca, unused, "other-ca"), 0);
    assert_int_equal(write_ident(&server, g.server_cert, g.server_key, "server"), 0);
    assert_int_equal(write_ident(&client, g.client_cert, g.client_key, "client"), 0);
    oa_testpki_path(g.other_key, sizeof(g.other_key), g.dir, "other-ca.key");
    oa_testpki_path(g.missing, sizeof(g.missing), g.dir, "absent.pem");
    oa_testpki_ident_free(&ca);
    oa_testpki_ident_free(&server);
    oa_testpki_ident_free(&client);
    oa_testpki_ident_free(&other);
    server_start(&g.plain, 0);
    server_start(&g.tls, 1);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    server_stop(&g.plain);
    server_stop(&g.tls);
    oa_testpki_rmdir(g.dir);
    return 0;
}

/* ---- the loop and what the callbacks saw ---- */

typedef struct slot_s {
    int fired;
    int null;
    int type;
    long long integer;
    size_t len;
    char str[256];
    size_t elements;
    char el[3][128];
} slot_t;

typedef struct tc_s {
    uv_loop_t loop;
    uv_timer_t guard;
    int timed_out;
    oa_redis_t *r;
    int freed;
    int ready;
    int events;   /* a sequence number over every callback */
    int ready_at; /* the sequence number of on_ready */
    int errors;
    int nulls; /* reply callbacks that got NULL */
    int nulls_at_error;
    int command_after_error; /* what oa_redis_command returned inside on_error */
    char why[512];
    int free_on_ready; /* free r inside on_ready */
    int free_after;    /* free r once this many replies (NULL or not) have come; 0: never */
    int replies;
    int in_free;       /* set around an oa_redis_free call of the test */
    int nulls_in_free; /* NULL replies that fired while in_free was set */
    int pushes;
    slot_t push[4];
    long long next_incr; /* the pipelined INCRs: the value the next reply must carry */
    int incr_errors;
} tc_t;

static void guard_fire(uv_timer_t *h)
{
    tc_t *t = h->data;

    t->timed_out = 1;
    uv_stop(h->loop);
}

static void tc_init(tc_t *t)
{
    memset(t, 0, sizeof(*t));
    assert_int_equal(uv_loop_init(&t->loop), 0);
    assert_int_equal(uv_timer_init(&t->loop, &t->guard), 0);
    t->guard.data = t;
    t->command_after_error = 99;
}

static void free_r(tc_t *t)
{
    if (t->r != NULL && !t->freed) {
        t->freed = 1;
        oa_redis_free(t->r);
    }
}

/* Runs the loop until nothing is left to do; the unreferenced guard only bounds a test that hangs. */
static void tc_run(tc_t *t)
{
    uv_timer_start(&t->guard, guard_fire, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&t->guard);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_false(t->timed_out);
}

static void tc_close(tc_t *t)
{
    free_r(t);
    uv_close((uv_handle_t *)&t->guard, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

static void on_ready(oa_redis_t *r, void *data)
{
    tc_t *t = data;

    assert_ptr_equal(oa_redis_data(r), t);
    assert_int_equal(oa_redis_ready(r), 1);
    t->ready++;
    t->ready_at = ++t->events;
    if (t->free_on_ready)
        free_r(t);
}

static void on_error(oa_redis_t *r, const char *why, void *data)
{
    tc_t *t = data;

    t->errors++;
    t->nulls_at_error = t->nulls;
    assert_int_equal(oa_redis_ready(r), 0);
    t->command_after_error = oa_redis_command(r, NULL, NULL, "PING");
    snprintf(t->why, sizeof(t->why), "%s", why);
    free_r(t);
}

static void copy_reply(slot_t *s, const redisReply *reply)
{
    size_t i;

    s->fired++;
    if (reply == NULL) {
        s->null = 1;
        return;
    }
    s->type = reply->type;
    s->integer = reply->integer;
    if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS || reply->type == REDIS_REPLY_ERROR) {
        s->len = reply->len;
        memcpy(s->str, reply->str, reply->len < sizeof(s->str) ? reply->len : sizeof(s->str));
    }
    if (reply->type == REDIS_REPLY_ARRAY) {
        s->elements = reply->elements;
        for (i = 0; i < reply->elements && i < 3; i++) {
            const redisReply *e = reply->element[i];

            if (e->type == REDIS_REPLY_STRING)
                memcpy(s->el[i], e->str, e->len < sizeof(s->el[i]) ? e->len : sizeof(s->el[i]) - 1);
            else if (e->type == REDIS_REPLY_INTEGER)
                snprintf(s->el[i], sizeof(s->el[i]), "%lld", e->integer);
        }
    }
}

static void on_slot(oa_redis_t *r, redisReply *reply, void *priv)
{
    tc_t *t = oa_redis_data(r);
    slot_t *s = priv;

    ++t->events;
    copy_reply(s, reply);
    if (reply == NULL) {
        t->nulls++;
        if (t->in_free)
            t->nulls_in_free++;
    }
    t->replies++;
    if (t->free_after != 0 && t->replies == t->free_after)
        free_r(t);
}

static void on_push(oa_redis_t *r, redisReply *reply, void *data)
{
    tc_t *t = data;

    (void)r;
    if (t->pushes < 4)
        copy_reply(&t->push[t->pushes], reply);
    t->pushes++;
}

static oa_redis_options_t opts(tc_t *t, const char *host, int port)
{
    oa_redis_options_t o;

    memset(&o, 0, sizeof(o));
    o.host = host;
    o.port = port;
    o.on_ready = on_ready;
    o.on_error = on_error;
    o.on_push = on_push;
    o.data = t;
    return o;
}

static void connect_ok(tc_t *t, const oa_redis_options_t *o)
{
    oa_error_t err;

    assert_int_equal(oa_redis_connect(&t->loop, o, &t->r, &err), 0);
    assert_non_null(t->r);
    /* Nothing fires before connect returns, and nothing is up yet. */
    assert_int_equal(t->ready + t->errors + t->events, 0);
    assert_int_equal(oa_redis_ready(t->r), 0);
}

/* tc_init, then a connection to host:port with the default callbacks, checked as connect_ok does. */
static void tc_connect(tc_t *t, const char *host, int port)
{
    oa_redis_options_t o;

    tc_init(t);
    o = opts(t, host, port);
    connect_ok(t, &o);
}

static void assert_status(const slot_t *s, const char *text)
{
    assert_int_equal(s->fired, 1);
    assert_int_equal(s->null, 0);
    assert_int_equal(s->type, REDIS_REPLY_STATUS);
    assert_string_equal(s->str, text);
}

static void assert_string_reply(const slot_t *s, const char *text)
{
    assert_int_equal(s->fired, 1);
    assert_int_equal(s->null, 0);
    assert_int_equal(s->type, REDIS_REPLY_STRING);
    assert_int_equal(s->len, strlen(text));
    assert_string_equal(s->str, text);
}

/* ---- plain TCP ---- */

/* Every command below is queued before the connection is up; they go out at on_ready, in order. */
static void test_set_get_queued_before_ready(void **state)
{
    tc_t t;
    slot_t s[4];

    (void)state;
    memset(s, 0, sizeof(s));
    tc_connect(&t, "127.0.0.1", g.plain.port);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "SET %s %s", "oa:test:k1", "value one"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "GET %s", "oa:test:k1"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[2], "GET %s", "oa:test:absent"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[3], "NOSUCHCOMMAND"), 0);
    t.free_after = 4;
    assert_int_equal(t.events, 0);
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.ready_at, 1); /* on_ready came before the first reply */
    assert_int_equal(t.errors, 0);
    assert_int_equal(t.replies, 4);
    assert_status(&s[0], "OK");
    assert_string_reply(&s[1], "value one");
    assert_int_equal(s[2].fired, 1);
    assert_int_equal(s[2].type, REDIS_REPLY_NIL);
    assert_int_equal(s[3].type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(s[3].str, "unknown command"));
    tc_close(&t);
}

static void on_incr(oa_redis_t *r, redisReply *reply, void *priv)
{
    tc_t *t = oa_redis_data(r);
    long long i = (long long)(intptr_t)priv;

    /* Reply i must be the (i+1)-th INCR's and say i+1. */
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != i + 1 || t->next_incr != i)
        t->incr_errors++;
    t->next_incr = i + 1;
    if (i == 999)
        free_r(t);
}

static void pipeline_on_ready(oa_redis_t *r, void *data)
{
    long long i;

    on_ready(r, data);
    assert_int_equal(oa_redis_command(r, NULL, NULL, "DEL %s", "oa:test:counter"), 0);
    for (i = 0; i < 1000; i++)
        assert_int_equal(oa_redis_command(r, on_incr, (void *)(intptr_t)i, "INCR %s", "oa:test:counter"), 0);
}

static void test_pipelined_incr_in_order(void **state)
{
    tc_t t;
    oa_redis_options_t o;

    (void)state;
    tc_init(&t);
    o = opts(&t, "127.0.0.1", g.plain.port);
    o.on_ready = pipeline_on_ready;
    connect_ok(&t, &o);
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.errors, 0);
    assert_int_equal(t.next_incr, 1000);
    assert_int_equal(t.incr_errors, 0);
    tc_close(&t);
}

static void test_localhost_resolved(void **state)
{
    tc_t t;
    slot_t s[2];

    (void)state;
    memset(s, 0, sizeof(s));
    tc_connect(&t, "localhost", g.plain.port);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "SET %s %s", "oa:test:local", "via-name"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "GET %s", "oa:test:local"), 0);
    t.free_after = 2;
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.errors, 0);
    assert_status(&s[0], "OK");
    assert_string_reply(&s[1], "via-name");
    tc_close(&t);
}

static void test_binary_argument(void **state)
{
    static const char value[] = {'a', '\0', 'b', '\r', '\n', '\0', 'c'};
    tc_t t;
    slot_t s[3];

    (void)state;
    memset(s, 0, sizeof(s));
    tc_connect(&t, "127.0.0.1", g.plain.port);
    assert_int_equal(
        oa_redis_command(t.r, on_slot, &s[0], "SET %b %b", "oa:test:\0bin", (size_t)12, value, sizeof(value)), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "STRLEN %b", "oa:test:\0bin", (size_t)12), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[2], "GET %b", "oa:test:\0bin", (size_t)12), 0);
    t.free_after = 3;
    tc_run(&t);
    assert_status(&s[0], "OK");
    assert_int_equal(s[1].type, REDIS_REPLY_INTEGER);
    assert_int_equal(s[1].integer, 7);
    assert_int_equal(s[2].type, REDIS_REPLY_STRING);
    assert_int_equal(s[2].len, sizeof(value));
    assert_memory_equal(s[2].str, value, sizeof(value));
    tc_close(&t);
}

/* ---- Pub/Sub ---- */

typedef struct pubsub_s {
    tc_t sub;
    tc_t pub;
    oa_redis_t *pub_r;
    slot_t subscribed, published, ping;
    int pub_ready;
} pubsub_t;

static pubsub_t *ps;
static const char payload[] = "{\"type\":\"conf\",\"version\":7} \x01\xff end";

static void on_ping(oa_redis_t *r, redisReply *reply, void *priv)
{
    (void)priv;
    copy_reply(&ps->ping, reply);
    free_r(oa_redis_data(r));
    oa_redis_free(ps->pub_r);
}

static void on_published(oa_redis_t *r, redisReply *reply, void *priv)
{
    (void)r;
    (void)priv;
    copy_reply(&ps->published, reply);
    /* The message is on its way to the subscriber: a command queued now can meet it on the wire, and the message
     * must still go to on_push and not to this command's callback. */
    assert_int_equal(oa_redis_command(ps->sub.r, on_ping, NULL, "PING"), 0);
}

static void on_subscribed(oa_redis_t *r, redisReply *reply, void *priv)
{
    (void)r;
    (void)priv;
    copy_reply(&ps->subscribed, reply);
    assert_int_equal(oa_redis_command(ps->pub_r, on_published, NULL, "PUBLISH %s %b", "oa:test:events", payload,
                                      sizeof(payload) - 1),
                     0);
}

static void pub_on_ready(oa_redis_t *r, void *data)
{
    (void)r;
    (void)data;
    ps->pub_ready++;
}

static void test_pubsub_message_to_on_push(void **state)
{
    pubsub_t p;
    oa_redis_options_t o;
    oa_error_t err;

    (void)state;
    memset(&p, 0, sizeof(p));
    ps = &p;
    tc_init(&p.sub);
    o = opts(&p.sub, "127.0.0.1", g.plain.port);
    connect_ok(&p.sub, &o);
    /* The publisher: the same options with its own callbacks, on the same loop. */
    o.on_ready = pub_on_ready;
    o.on_push = NULL;
    assert_int_equal(oa_redis_connect(&p.sub.loop, &o, &p.pub_r, &err), 0);
    assert_int_equal(oa_redis_command(p.sub.r, on_subscribed, NULL, "SUBSCRIBE %s", "oa:test:events"), 0);
    tc_run(&p.sub);
    assert_int_equal(p.sub.errors, 0);
    assert_int_equal(p.pub_ready, 1);
    assert_int_equal(p.subscribed.type, REDIS_REPLY_ARRAY);
    assert_int_equal(p.subscribed.elements, 3);
    assert_string_equal(p.subscribed.el[0], "subscribe");
    assert_string_equal(p.subscribed.el[1], "oa:test:events");
    assert_string_equal(p.subscribed.el[2], "1");
    assert_int_equal(p.published.type, REDIS_REPLY_INTEGER);
    assert_int_equal(p.published.integer, 1); /* one subscriber got it */
    assert_int_equal(p.sub.pushes, 1);
    assert_int_equal(p.sub.push[0].elements, 3);
    assert_string_equal(p.sub.push[0].el[0], "message");
    assert_string_equal(p.sub.push[0].el[1], "oa:test:events");
    assert_memory_equal(p.sub.push[0].el[2], payload, sizeof(payload) - 1);
    assert_int_equal(p.ping.type, REDIS_REPLY_ARRAY); /* PING in Pub/Sub mode answers ["pong", ""] */
    assert_string_equal(p.ping.el[0], "pong");
    tc_close(&p.sub);
    ps = NULL;
}

/* ---- failures ---- */

static void test_refused_port(void **state)
{
    tc_t t;
    slot_t s[2];
    int port = oa_testnet_free_port();

    (void)state;
    assert_true(port > 0);
    memset(s, 0, sizeof(s));
    tc_connect(&t, "127.0.0.1", port);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "PING"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "PING"), 0);
    tc_run(&t);
    assert_int_equal(t.ready, 0);
    assert_int_equal(t.errors, 1);
    assert_int_equal(t.nulls_at_error, 2); /* both callbacks had NULL before on_error */
    assert_int_equal(s[0].null + s[1].null, 2);
    assert_int_equal(t.command_after_error, -1);
    assert_non_null(strstr(t.why, "Could not connect to Redis at 127.0.0.1:"));
    assert_non_null(strstr(t.why, "connection refused"));
    tc_close(&t);
}

static void test_connect_arguments(void **state)
{
    tc_t t;
    oa_redis_options_t o;
    oa_error_t err;
    oa_redis_t *r = (oa_redis_t *)&t;

    (void)state;
    tc_init(&t);
    o = opts(&t, "", 6379);
    assert_int_equal(oa_redis_connect(&t.loop, &o, &r, &err), -1);
    assert_null(r);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    o = opts(&t, "127.0.0.1", 0);
    assert_int_equal(oa_redis_connect(&t.loop, &o, &r, &err), -1);
    assert_non_null(strstr(err.text, "port 0"));
    o = opts(&t, "127.0.0.1", 65536);
    assert_int_equal(oa_redis_connect(&t.loop, &o, &r, &err), -1);
    assert_null(r);
    oa_redis_free(NULL);
    tc_close(&t);
}

/* A TLS client against a socket that accepts (the kernel's backlog) and never says a word: the deadline fires. */
static void test_silent_server_deadline(void **state)
{
    tc_t t;
    slot_t s[1];
    oa_redis_options_t o;
    SSL_CTX *ctx = NULL;
    oa_error_t err;
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd;
    uint64_t start, took;

    (void)state;
    memset(s, 0, sizeof(s));
    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, g.client_key, &ctx, &err), 0);
    tc_init(&t);
    o = opts(&t, "127.0.0.1", ntohs(a.sin_port));
    o.tls = ctx;
    o.connect_timeout_ms = 300;
    start = uv_hrtime();
    connect_ok(&t, &o);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "PING"), 0);
    tc_run(&t);
    took = (uv_hrtime() - start) / 1000000;
    assert_int_equal(t.ready, 0);
    assert_int_equal(t.errors, 1);
    assert_int_equal(t.nulls_at_error, 1);
    assert_true(took >= 290 && took < 2000);
    assert_non_null(strstr(t.why, "not ready within 300 ms"));
    assert_non_null(strstr(t.why, "timed out during the TLS handshake"));
    tc_close(&t);
    SSL_CTX_free(ctx);
    close(fd);
}

/* An in-loop server that answers every connection with the given bytes. */
typedef struct fake_s {
    uv_tcp_t listener;
    uv_tcp_t conn;
    uv_write_t wreq;
    const char *answer;
    size_t answer_len;
    int port;
    int accepted;
} fake_t;

static void fake_on_conn(uv_stream_t *l, int status)
{
    fake_t *f = l->data;
    uv_buf_t b;

    assert_int_equal(status, 0);
    assert_int_equal(uv_tcp_init(l->loop, &f->conn), 0);
    assert_int_equal(uv_accept(l, (uv_stream_t *)&f->conn), 0);
    f->accepted++;
    b = uv_buf_init((char *)f->answer, (unsigned)f->answer_len);
    assert_int_equal(uv_write(&f->wreq, (uv_stream_t *)&f->conn, &b, 1, NULL), 0);
}

static void fake_start(fake_t *f, uv_loop_t *loop, const char *ip, const char *answer, size_t n)
{
    struct sockaddr_storage a;
    int len = sizeof(a);

    memset(f, 0, sizeof(*f));
    f->answer = answer;
    f->answer_len = n;
    assert_int_equal(uv_tcp_init(loop, &f->listener), 0);
    f->listener.data = f;
    if (strchr(ip, ':') != NULL)
        assert_int_equal(uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&a), 0);
    else
        assert_int_equal(uv_ip4_addr(ip, 0, (struct sockaddr_in *)&a), 0);
    assert_int_equal(uv_tcp_bind(&f->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 4, fake_on_conn), 0);
    assert_int_equal(uv_tcp_getsockname(&f->listener, (struct sockaddr *)&a, &len), 0);
    f->port = ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port
                                            : ((struct sockaddr_in *)&a)->sin_port);
}

static void fake_stop(fake_t *f)
{
    uv_close((uv_handle_t *)&f->listener, NULL);
    if (f->accepted)
        uv_close((uv_handle_t *)&f->conn, NULL);
}

static fake_t *current_fake;

/* The fake server keeps the loop alive; it goes once the client has given up. */
static void on_error_then_stop(oa_redis_t *r, const char *why, void *data)
{
    on_error(r, why, data);
    fake_stop(current_fake);
}

static void test_garbage_is_protocol_error(void **state)
{
    static const char garbage[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    tc_t t;
    fake_t f;
    slot_t s[1];
    oa_redis_options_t o;

    (void)state;
    memset(s, 0, sizeof(s));
    tc_init(&t);
    fake_start(&f, &t.loop, "127.0.0.1", garbage, sizeof(garbage) - 1);
    current_fake = &f;
    o = opts(&t, "127.0.0.1", f.port);
    o.on_error = on_error_then_stop;
    connect_ok(&t, &o);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "GET %s", "x"), 0);
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.errors, 1);
    assert_int_equal(t.nulls_at_error, 1);
    assert_int_equal(s[0].null, 1);
    assert_non_null(strstr(t.why, "not the Redis protocol"));
    assert_non_null(strstr(t.why, "Protocol error"));
    tc_close(&t);
    current_fake = NULL;
}

static void pong_then_stop(oa_redis_t *r, redisReply *reply, void *priv)
{
    on_slot(r, reply, priv);
    free_r(oa_redis_data(r));
    fake_stop(current_fake);
}

/* An IPv6 literal host, against a small server on ::1 that answers one PING. */
static void test_ipv6_literal(void **state)
{
    static const char pong[] = "+PONG\r\n";
    tc_t t;
    fake_t f;
    slot_t s[1];
    oa_redis_options_t o;

    (void)state;
    memset(s, 0, sizeof(s));
    tc_init(&t);
    fake_start(&f, &t.loop, "::1", pong, sizeof(pong) - 1);
    current_fake = &f;
    o = opts(&t, "::1", f.port);
    connect_ok(&t, &o);
    assert_int_equal(oa_redis_command(t.r, pong_then_stop, &s[0], "PING"), 0);
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.errors, 0);
    assert_int_equal(f.accepted, 1);
    assert_status(&s[0], "PONG");
    tc_close(&t);
    current_fake = NULL;
}

/* A reply above max_reply_bytes fails the connection, whether it came whole in one read or is still arriving. */
static void run_too_large(size_t value_len, unsigned max)
{
    tc_t t;
    slot_t s[4];
    oa_redis_options_t o;
    char *value = malloc(value_len);

    memset(s, 0, sizeof(s));
    assert_non_null(value);
    memset(value, 'v', value_len);
    tc_init(&t);
    o = opts(&t, "127.0.0.1", g.plain.port);
    o.max_reply_bytes = max;
    connect_ok(&t, &o);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "SET %s %b", "oa:test:big", value, value_len), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "GET %s", "oa:test:k1-missing"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[2], "GET %s", "oa:test:big"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[3], "PING"), 0);
    tc_run(&t);
    assert_status(&s[0], "OK"); /* small replies before it are fine */
    assert_int_equal(s[1].type, REDIS_REPLY_NIL);
    assert_int_equal(s[2].null, 1);
    assert_int_equal(s[3].null, 1);
    assert_int_equal(t.errors, 1);
    assert_int_equal(t.nulls_at_error, 2);
    assert_non_null(strstr(t.why, "larger than the limit"));
    tc_close(&t);
    free(value);
}

static void test_reply_too_large(void **state)
{
    (void)state;
    run_too_large(5000, 1000);             /* arrives in one read, complete */
    run_too_large(1024 * 1024, 64 * 1024); /* caught while still buffering */
}

typedef struct killed_s {
    tc_t t;
    uv_timer_t kill_timer;
    server_t srv;
    slot_t s[2];
} killed_t;

static void on_kill(uv_timer_t *h)
{
    killed_t *k = h->data;

    server_stop(&k->srv);
    uv_close((uv_handle_t *)h, NULL);
}

static void killed_on_ready(oa_redis_t *r, void *data)
{
    killed_t *k = oa_container_of(data, killed_t, t);

    on_ready(r, data);
    /* BLPOP with no timeout never answers on its own: its callback can only end with NULL. */
    assert_int_equal(oa_redis_command(r, on_slot, &k->s[0], "BLPOP %s 0", "oa:test:never"), 0);
    assert_int_equal(oa_redis_command(r, on_slot, &k->s[1], "PING"), 0);
    uv_timer_start(&k->kill_timer, on_kill, 100, 0);
}

static void test_server_killed_mid_stream(void **state)
{
    killed_t k;
    oa_redis_options_t o;

    (void)state;
    memset(&k, 0, sizeof(k));
    server_start(&k.srv, 0);
    tc_init(&k.t);
    assert_int_equal(uv_timer_init(&k.t.loop, &k.kill_timer), 0);
    k.kill_timer.data = &k;
    o = opts(&k.t, "127.0.0.1", k.srv.port);
    o.on_ready = killed_on_ready;
    connect_ok(&k.t, &o);
    tc_run(&k.t);
    assert_int_equal(k.srv.pid, 0);
    assert_int_equal(k.t.ready, 1);
    assert_int_equal(k.t.errors, 1);
    assert_int_equal(k.t.nulls_at_error, 2);
    assert_int_equal(k.s[0].null, 1);
    assert_int_equal(k.s[1].null, 1);
    assert_true(strstr(k.t.why, "closed the connection") != NULL || strstr(k.t.why, "reset") != NULL);
    tc_close(&k.t);
}

/* ---- freeing from anywhere ---- */

static void free_in_cb(oa_redis_t *r, redisReply *reply, void *priv)
{
    tc_t *t = oa_redis_data(r);

    on_slot(r, reply, priv);
    t->in_free = 1;
    free_r(t);
    t->in_free = 0;
    /* After free the connection takes nothing more. */
    assert_int_equal(oa_redis_command(r, NULL, NULL, "PING"), -1);
}

static void test_free_inside_reply_callback(void **state)
{
    tc_t t;
    slot_t s[3];

    (void)state;
    memset(s, 0, sizeof(s));
    tc_connect(&t, "127.0.0.1", g.plain.port);
    assert_int_equal(oa_redis_command(t.r, free_in_cb, &s[0], "ECHO %s", "first"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "ECHO %s", "second"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[2], "ECHO %s", "third"), 0);
    tc_run(&t);
    assert_string_reply(&s[0], "first");
    /* The two later ones got NULL inside oa_redis_free, although their replies may already have been read. */
    assert_int_equal(s[1].null, 1);
    assert_int_equal(s[2].null, 1);
    assert_int_equal(t.nulls_in_free, 2);
    assert_int_equal(t.errors, 0);
    tc_close(&t);
}

static void test_free_inside_on_ready(void **state)
{
    tc_t t;
    slot_t s[1];
    oa_redis_options_t o;

    (void)state;
    memset(s, 0, sizeof(s));
    tc_init(&t);
    t.free_on_ready = 1;
    o = opts(&t, "127.0.0.1", g.plain.port);
    connect_ok(&t, &o);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "PING"), 0);
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(s[0].fired, 1);
    assert_int_equal(s[0].null, 1);
    assert_int_equal(t.errors, 0);
    tc_close(&t);
}

static void free_in_push(oa_redis_t *r, redisReply *reply, void *data)
{
    tc_t *t = data;

    on_push(r, reply, data);
    free_r(t);
}

/* A reply with no command queued goes to on_push; freeing there drops the rest of the read. */
static void test_free_inside_on_push(void **state)
{
    tc_t t;
    slot_t s[1];
    oa_redis_options_t o;

    (void)state;
    memset(s, 0, sizeof(s));
    tc_init(&t);
    o = opts(&t, "127.0.0.1", g.plain.port);
    o.on_push = free_in_push;
    connect_ok(&t, &o);
    /* Two channels, one queued callback: the second confirmation has no callback and becomes a push. */
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "SUBSCRIBE %s %s", "oa:test:a", "oa:test:b"), 0);
    tc_run(&t);
    assert_int_equal(s[0].elements, 3);
    assert_string_equal(s[0].el[1], "oa:test:a");
    assert_int_equal(t.pushes, 1);
    assert_string_equal(t.push[0].el[0], "subscribe");
    assert_string_equal(t.push[0].el[1], "oa:test:b");
    assert_string_equal(t.push[0].el[2], "2");
    assert_int_equal(t.errors, 0);
    tc_close(&t);
}

static void run_free_right_after_connect(const char *host)
{
    tc_t t;
    slot_t s[2];

    memset(s, 0, sizeof(s));
    tc_connect(&t, host, g.plain.port);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "PING"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "PING"), 0);
    t.in_free = 1;
    free_r(&t);
    t.in_free = 0;
    assert_int_equal(t.nulls_in_free, 2);
    tc_run(&t);
    assert_int_equal(t.ready + t.errors, 0);
    assert_int_equal(s[0].fired + s[1].fired, 2);
    tc_close(&t);
}

static void test_free_right_after_connect(void **state)
{
    (void)state;
    run_free_right_after_connect("localhost"); /* the name is still being resolved */
    run_free_right_after_connect("127.0.0.1");
}

/* ---- TLS ---- */

static void run_tls_roundtrip(const char *host, const char *tls_name)
{
    tc_t t;
    slot_t s[2];
    oa_redis_options_t o;
    SSL_CTX *ctx = NULL;
    oa_error_t err;

    memset(s, 0, sizeof(s));
    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, g.client_key, &ctx, &err), 0);
    tc_init(&t);
    o = opts(&t, host, g.tls.port);
    o.tls = ctx;
    o.tls_name = tls_name;
    connect_ok(&t, &o);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[0], "SET %s %s", "oa:test:tls", "over tls"), 0);
    assert_int_equal(oa_redis_command(t.r, on_slot, &s[1], "GET %s", "oa:test:tls"), 0);
    t.free_after = 2;
    tc_run(&t);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.errors, 0);
    assert_status(&s[0], "OK");
    assert_string_reply(&s[1], "over tls");
    tc_close(&t);
    SSL_CTX_free(ctx);
}

static void test_tls_roundtrip(void **state)
{
    (void)state;
    run_tls_roundtrip("127.0.0.1", NULL);        /* the IP address SAN */
    run_tls_roundtrip("127.0.0.1", "localhost"); /* the DNS SAN */
    run_tls_roundtrip("localhost", NULL);        /* resolved, DNS SAN */
}

static void test_tls_pipelined(void **state)
{
    tc_t t;
    oa_redis_options_t o;
    SSL_CTX *ctx = NULL;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, g.client_key, &ctx, &err), 0);
    tc_init(&t);
    o = opts(&t, "127.0.0.1", g.tls.port);
    o.tls = ctx;
    o.on_ready = pipeline_on_ready;
    connect_ok(&t, &o);
    tc_run(&t);
    assert_int_equal(t.errors, 0);
    assert_int_equal(t.next_incr, 1000);
    assert_int_equal(t.incr_errors, 0);
    tc_close(&t);
    SSL_CTX_free(ctx);
}

/* Runs one TLS connection expected to fail and returns what on_error said in t->why. */
static void run_tls_failure(tc_t *t, const char *ca, const char *cert, const char *key, const char *tls_name)
{
    slot_t s[1];
    oa_redis_options_t o;
    SSL_CTX *ctx = NULL;
    oa_error_t err;

    memset(s, 0, sizeof(s));
    assert_int_equal(oa_tls_client_ctx_new(ca, cert, key, &ctx, &err), 0);
    tc_init(t);
    o = opts(t, "127.0.0.1", g.tls.port);
    o.tls = ctx;
    o.tls_name = tls_name;
    connect_ok(t, &o);
    assert_int_equal(oa_redis_command(t->r, on_slot, &s[0], "GET %s", "oa:test:tls"), 0);
    tc_run(t);
    assert_int_equal(t->errors, 1);
    assert_int_equal(t->nulls_at_error, 1);
    assert_int_equal(s[0].null, 1);
    tc_close(t);
    SSL_CTX_free(ctx);
}

/* TLS connections the client or the server refuses, each with the words on_error must say. */
static void test_tls_refused(void **state)
{
    const struct {
        const char *ca, *cert, *key, *tls_name;
        int may_be_ready; /* on_ready may come before the failure */
        const char *why[2];
    } cases[] = {
        /* The server sends its CA along, which the client does not trust. */
        {g.other_ca,
         g.client_cert,
         g.client_key,
         NULL,
         0,
         {"certificate was not accepted (self-signed certificate in certificate chain)", "certificate verify failed"}},
        {g.ca, g.client_cert, g.client_key, "wrong.example", 0, {"certificate was not accepted (hostname mismatch)"}},
        {g.ca, g.client_cert, g.client_key, "127.0.0.2", 0, {"certificate was not accepted (IP address mismatch)"}},
        /* No client certificate: with TLS 1.3 the client finishes its side first, so on_ready may come before the
         * server's alert. */
        {g.ca, NULL, NULL, NULL, 1, {"TLS with Redis at 127.0.0.1:", "certificate required"}},
    };
    tc_t t;
    size_t i, j;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        run_tls_failure(&t, cases[i].ca, cases[i].cert, cases[i].key, cases[i].tls_name);
        if (!cases[i].may_be_ready && t.ready != 0)
            fail_msg("case %zu: on_ready fired", i);
        for (j = 0; j < OA_ARRAY_SIZE(cases[i].why); j++)
            if (cases[i].why[j] != NULL && strstr(t.why, cases[i].why[j]) == NULL)
                fail_msg("case %zu: \"%s\" lacks \"%s\"", i, t.why, cases[i].why[j]);
    }
}

static void test_client_ctx_errors(void **state)
{
    SSL_CTX *ctx = (SSL_CTX *)&ctx;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, g.client_key, &ctx, &err), 0);
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_PEER);
    SSL_CTX_free(ctx);

    assert_int_equal(oa_tls_client_ctx_new(g.missing, NULL, NULL, &ctx, &err), -1);
    assert_null(ctx);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, g.missing));

    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.missing, g.client_key, &ctx, &err), -1);
    assert_non_null(strstr(err.text, "certificate file"));
    assert_non_null(strstr(err.text, g.missing));

    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, g.missing, &ctx, &err), -1);
    assert_non_null(strstr(err.text, "private key file"));
    assert_non_null(strstr(err.text, g.missing));

    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, g.other_key, &ctx, &err), -1);
    assert_null(ctx);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, "does not match"));
    assert_non_null(strstr(err.text, g.other_key));
    assert_non_null(strstr(err.text, g.client_cert));

    assert_int_equal(oa_tls_client_ctx_new(g.ca, g.client_cert, NULL, &ctx, &err), -1);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    assert_non_null(strstr(err.text, g.client_cert));

    /* NULL: the system's CA locations. */
    assert_int_equal(oa_tls_client_ctx_new(NULL, NULL, NULL, &ctx, &err), 0);
    SSL_CTX_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get_queued_before_ready),
        cmocka_unit_test(test_pipelined_incr_in_order),
        cmocka_unit_test(test_localhost_resolved),
        cmocka_unit_test(test_binary_argument),
        cmocka_unit_test(test_pubsub_message_to_on_push),
        cmocka_unit_test(test_refused_port),
        cmocka_unit_test(test_connect_arguments),
        cmocka_unit_test(test_silent_server_deadline),
        cmocka_unit_test(test_garbage_is_protocol_error),
        cmocka_unit_test(test_reply_too_large),
        cmocka_unit_test(test_ipv6_literal),
        cmocka_unit_test(test_server_killed_mid_stream),
        cmocka_unit_test(test_free_inside_reply_callback),
        cmocka_unit_test(test_free_inside_on_ready),
        cmocka_unit_test(test_free_inside_on_push),
        cmocka_unit_test(test_free_right_after_connect),
        cmocka_unit_test(test_tls_roundtrip),
        cmocka_unit_test(test_tls_pipelined),
        cmocka_unit_test(test_tls_refused),
        cmocka_unit_test(test_client_ctx_errors),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
