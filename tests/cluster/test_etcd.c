/*
 * The etcd client against real etcd processes on 127.0.0.1: one member alone (restarted by the watch test), one with
 * authentication enabled, and a cluster of three for the failover of a watch. Every member runs on free ports with
 * its data in the suite's temporary directory, and is killed in the group teardown (and with the suite, should it
 * crash). Sockets that refuse or never answer stand for members that are down or hung.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "oa_etcd.h"
#include "oa_tls.h"
#include "testnet.h"
#include "testpki.h"

#define GUARD_MS    10000
#define START_MS    8000
#define PASSWORD    "s3cret-pw"
#define MAX_RESULTS 8
#define MAX_EVENTS  16

/* ---- etcd processes ---- */

typedef struct member_s {
    char name[16];
    int client, peer;
    pid_t pid;
    char addr[32]; /* "127.0.0.1:client" */
} member_t;

static struct {
    char dir[OA_TESTPKI_DIR_MAX];
    member_t one;      /* alone */
    member_t auth;     /* alone, authentication enabled, tokens that expire after 1 s */
    member_t three[3]; /* one cluster */
    member_t tls;      /* alone, clients over TLS only */
    char cluster[512]; /* --initial-cluster of the three */
    char ca[256], other_ca[256], cert[256], key[256];
} g;

/* A free port that no member of this suite was given yet: the kernel may hand the same free port out twice in a
 * row, since each one is closed again before the next is asked for. */
static int distinct_port(void)
{
    static int given[64];
    static size_t ngiven;
    int port, tries;
    size_t i;

    for (tries = 0; tries < 100 && ngiven < sizeof(given) / sizeof(given[0]); tries++) {
        port = oa_testnet_free_port();
        if (port <= 0)
            return -1;
        for (i = 0; i < ngiven && given[i] != port; i++)
            ;
        if (i == ngiven) {
            given[ngiven++] = port;
            return port;
        }
    }
    return -1;
}

static int member_ports(member_t *m, const char *name)
{
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->client = distinct_port();
    m->peer = distinct_port();
    snprintf(m->addr, sizeof(m->addr), "127.0.0.1:%d", m->client);
    return m->client > 0 && m->peer > 0 ? 0 : -1;
}

static int member_start(member_t *m, const char *cluster, const char *const *extra)
{
    m->pid = oa_testnet_etcd_start(m->name, m->client, m->peer, cluster, g.dir, extra);
    return m->pid > 0 ? 0 : -1;
}

/* SIGKILL: a member that crashes, never one that shuts down cleanly. */
static void member_kill(member_t *m)
{
    oa_testnet_etcd_stop(m->pid, SIGKILL);
    m->pid = 0;
}

static int etcdctl(const member_t *m, const char *args)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints http://%s %s >/dev/null 2>&1", m->addr, args);
    return system(cmd) == 0 ? 0 : -1;
}

/* A CA, a server certificate of it for localhost and 127.0.0.1, and an unrelated CA, as PEM files in g.dir. */
static void make_pki(void)
{
    oa_testpki_ident_t ca = {0}, other = {0}, server = {0};

    assert_int_equal(oa_testpki_ca_new("etcd Test CA", &ca), 0);
    assert_int_equal(oa_testpki_ca_new("Unrelated CA", &other), 0);
    assert_int_equal(oa_testpki_tls_leaf_new(&ca, "etcd.test", "DNS:localhost,IP:127.0.0.1", &server), 0);
    oa_testpki_path(g.ca, sizeof(g.ca), g.dir, "ca.pem");
    oa_testpki_path(g.other_ca, sizeof(g.other_ca), g.dir, "other-ca.pem");
    oa_testpki_path(g.cert, sizeof(g.cert), g.dir, "server.pem");
    oa_testpki_path(g.key, sizeof(g.key), g.dir, "server.key");
    assert_int_equal(oa_testpki_write_certs(g.ca, ca.cert, (X509 *)NULL), 0);
    assert_int_equal(oa_testpki_write_certs(g.other_ca, other.cert, (X509 *)NULL), 0);
    assert_int_equal(oa_testpki_write_certs(g.cert, server.cert, (X509 *)NULL), 0);
    assert_int_equal(oa_testpki_write_key(g.key, server.key), 0);
    oa_testpki_ident_free(&ca);
    oa_testpki_ident_free(&other);
    oa_testpki_ident_free(&server);
}

static int group_setup(void **state)
{
    static const char *const auth_args[] = {"--auth-token-ttl", "1", NULL};
    const char *tls_args[] = {"--cert-file", g.cert, "--key-file", g.key, NULL};
    size_t i, n = 0;

    (void)state;
    signal(SIGPIPE, SIG_IGN);
    assert_int_equal(oa_testpki_tmpdir(g.dir), 0);
    make_pki();
    assert_int_equal(member_ports(&g.tls, "tls"), 0);
    snprintf(g.tls.addr, sizeof(g.tls.addr), "localhost:%d", g.tls.client);
    assert_int_equal(member_ports(&g.one, "one"), 0);
    assert_int_equal(member_ports(&g.auth, "auth"), 0);
    for (i = 0; i < 3; i++) {
        char name[8];

        snprintf(name, sizeof(name), "m%zu", i);
        assert_int_equal(member_ports(&g.three[i], name), 0);
        n += (size_t)snprintf(g.cluster + n, sizeof(g.cluster) - n, "%s%s=http://127.0.0.1:%d", i > 0 ? "," : "",
                              name, g.three[i].peer);
    }
    /* All six start together; the waits below then overlap their start-up. */
    assert_int_equal(member_start(&g.one, NULL, NULL), 0);
    assert_int_equal(member_start(&g.tls, NULL, tls_args), 0);
    assert_int_equal(member_start(&g.auth, NULL, auth_args), 0);
    for (i = 0; i < 3; i++)
        assert_int_equal(member_start(&g.three[i], g.cluster, NULL), 0);
    assert_int_equal(oa_testnet_etcd_wait(g.one.client, 0, START_MS), 0);
    assert_int_equal(oa_testnet_etcd_wait(g.auth.client, 0, START_MS), 0);
    assert_int_equal(oa_testnet_etcd_wait(g.tls.client, 1, START_MS), 0);
    for (i = 0; i < 3; i++)
        assert_int_equal(oa_testnet_etcd_wait(g.three[i].client, 0, START_MS), 0);
    assert_int_equal(etcdctl(&g.auth, "user add root:" PASSWORD), 0);
    assert_int_equal(etcdctl(&g.auth, "auth enable"), 0);
    return 0;
}

static int group_teardown(void **state)
{
    size_t i;

    (void)state;
    member_kill(&g.one);
    member_kill(&g.auth);
    member_kill(&g.tls);
    for (i = 0; i < 3; i++)
        member_kill(&g.three[i]);
    oa_testpki_rmdir(g.dir);
    return 0;
}

/* ---- the loop ---- */

typedef struct tc_s {
    uv_loop_t loop;
    uv_timer_t guard;
    uv_timer_t nap;
    int timed_out;
    int napped;
    oa_etcd_t *c;
    int closed;
} tc_t;

static void guard_fire(uv_timer_t *h)
{
    tc_t *t = h->data;

    t->timed_out = 1;
}

static void tc_loop(tc_t *t)
{
    memset(t, 0, sizeof(*t));
    assert_int_equal(uv_loop_init(&t->loop), 0);
    assert_int_equal(uv_timer_init(&t->loop, &t->guard), 0);
    assert_int_equal(uv_timer_init(&t->loop, &t->nap), 0);
    t->guard.data = t;
    t->nap.data = t;
}

/* A client with options o on the loop of t, which tc_loop made. */
static void tc_client_opts(tc_t *t, const oa_etcd_options_t *o)
{
    oa_error_t err;

    assert_int_equal(oa_etcd_new(&t->loop, o, &t->c, &err), 0);
}

static void tc_client(tc_t *t, const char *const *members, size_t n, const char *user, const char *password,
                      unsigned timeout_ms, unsigned attempt_ms, SSL_CTX *tls)
{
    oa_etcd_options_t o = {.members = members,
                           .n_members = n,
                           .user = user,
                           .password = password,
                           .tls = tls,
                           .timeout_ms = timeout_ms,
                           .attempt_timeout_ms = attempt_ms};

    tc_client_opts(t, &o);
}

static void tc_open_tls(tc_t *t, const char *const *members, size_t n, const char *user, const char *password,
                        unsigned timeout_ms, unsigned attempt_ms, SSL_CTX *tls)
{
    tc_loop(t);
    tc_client(t, members, n, user, password, timeout_ms, attempt_ms, tls);
}

static void tc_open(tc_t *t, const char *const *members, size_t n, const char *user, const char *password,
                    unsigned timeout_ms, unsigned attempt_ms)
{
    tc_open_tls(t, members, n, user, password, timeout_ms, attempt_ms, NULL);
}

/* Runs the loop until *flag is set; the guard fails a test that hangs. */
static void tc_wait(tc_t *t, const int *flag)
{
    t->timed_out = 0;
    uv_timer_start(&t->guard, guard_fire, GUARD_MS, 0);
    while (!*flag && !t->timed_out)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_timer_stop(&t->guard);
    assert_false(t->timed_out);
}

static void nap_fire(uv_timer_t *h)
{
    tc_t *t = h->data;

    t->napped = 1;
}

/* Lets the loop run for ms milliseconds. */
static void tc_sleep(tc_t *t, unsigned ms)
{
    t->napped = 0;
    uv_timer_start(&t->nap, nap_fire, ms, 0);
    tc_wait(t, &t->napped);
}

static void on_closed(oa_etcd_t *c, void *data)
{
    tc_t *t = data;

    (void)c;
    t->closed++;
}

static void tc_close(tc_t *t)
{
    oa_etcd_close(t->c, on_closed, t);
    tc_wait(t, &t->closed);
    assert_int_equal(t->closed, 1);
    uv_close((uv_handle_t *)&t->guard, NULL);
    uv_close((uv_handle_t *)&t->nap, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* ---- what a call's callback saw ---- */

typedef struct res_s {
    int fired;
    oa_etcd_err_t err;
    int grpc;
    char why[512];
    int64_t revision, count, deleted, lease, ttl;
    int succeeded;
    size_t n;
    char key[MAX_RESULTS][64];
    unsigned char value[MAX_RESULTS][300];
    size_t value_len[MAX_RESULTS];
    int64_t mod[MAX_RESULTS], create[MAX_RESULTS], kv_lease[MAX_RESULTS];
    int call_in_cb; /* what a call started inside the callback returned */
} res_t;

static void on_res(oa_etcd_t *c, const oa_etcd_result_t *r, void *data)
{
    res_t *s = data;
    size_t i;

    s->fired++;
    s->err = r->err;
    s->grpc = r->grpc_code;
    snprintf(s->why, sizeof(s->why), "%s", r->why);
    s->revision = r->revision;
    s->count = r->count;
    s->deleted = r->deleted;
    s->lease = r->lease;
    s->ttl = r->ttl;
    s->succeeded = r->succeeded;
    s->n = r->n_kvs;
    for (i = 0; i < r->n_kvs && i < MAX_RESULTS; i++) {
        snprintf(s->key[i], sizeof(s->key[i]), "%.*s", (int)r->kvs[i].key_len, (const char *)r->kvs[i].key);
        s->value_len[i] = r->kvs[i].value_len;
        memcpy(s->value[i], r->kvs[i].value, r->kvs[i].value_len < 300 ? r->kvs[i].value_len : 300);
        s->mod[i] = r->kvs[i].mod_revision;
        s->create[i] = r->kvs[i].create_revision;
        s->kv_lease[i] = r->kvs[i].lease;
    }
    if (r->err == OA_ETCD_E_CANCELLED)
        s->call_in_cb = oa_etcd_range(c, "x", 1, NULL, 0, 0, 0, on_res, s);
}

static void wait_ok(tc_t *t, res_t *r)
{
    tc_wait(t, &r->fired);
    assert_int_equal(r->fired, 1);
    if (r->err != OA_ETCD_OK)
        print_error("unexpected %s: %s\n", oa_etcd_err_name(r->err), r->why);
    assert_int_equal(r->err, OA_ETCD_OK);
}

static void put(tc_t *t, const char *key, const char *value, int64_t lease, res_t *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(oa_etcd_put(t->c, key, strlen(key), value, strlen(value), lease, on_res, r), 0);
    wait_ok(t, r);
}

static void get(tc_t *t, const char *key, res_t *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(oa_etcd_range(t->c, key, strlen(key), NULL, 0, 0, 0, on_res, r), 0);
    wait_ok(t, r);
}

/* ---- what a watch's callback saw ---- */

typedef struct seen_s {
    size_t n;
    oa_etcd_event_type_t type[MAX_EVENTS];
    char key[MAX_EVENTS][64];
    char value[MAX_EVENTS][64];
    int64_t mod[MAX_EVENTS], create[MAX_EVENTS];
    int updates;
    int finals;
    oa_etcd_watch_kind_t final;
    oa_etcd_err_t err;
    int64_t compact_revision;
} seen_t;

static void on_watch(oa_etcd_watch_t *w, const oa_etcd_watch_update_t *u, void *data)
{
    seen_t *s = data;
    size_t i;

    (void)w;
    if (u->kind != OA_ETCD_WATCH_EVENTS) {
        s->finals++;
        s->final = u->kind;
        s->err = u->err;
        s->compact_revision = u->compact_revision;
        return;
    }
    s->updates++;
    for (i = 0; i < u->n_events && s->n < MAX_EVENTS; i++, s->n++) {
        const oa_etcd_kv_t *kv = &u->events[i].kv;

        s->type[s->n] = u->events[i].type;
        snprintf(s->key[s->n], sizeof(s->key[0]), "%.*s", (int)kv->key_len, (const char *)kv->key);
        snprintf(s->value[s->n], sizeof(s->value[0]), "%.*s", (int)kv->value_len, (const char *)kv->value);
        s->mod[s->n] = kv->mod_revision;
        s->create[s->n] = kv->create_revision;
    }
}

/* Runs the loop until the watch has seen n events. */
static void wait_events(tc_t *t, seen_t *s, size_t n)
{
    int enough = 0;

    t->timed_out = 0;
    uv_timer_start(&t->guard, guard_fire, GUARD_MS, 0);
    while (!(enough = s->n >= n) && !t->timed_out && s->finals == 0)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_timer_stop(&t->guard);
    assert_int_equal(s->finals, 0);
    assert_true(enough);
}

static void assert_event(const seen_t *s, size_t i, oa_etcd_event_type_t type, const char *key, const char *value)
{
    assert_int_equal(s->type[i], type);
    assert_string_equal(s->key[i], key);
    assert_string_equal(s->value[i], value);
    if (i > 0)
        assert_true(s->mod[i] > s->mod[i - 1]);
}

/* ---- a socket that accepts connections but never answers, for a hung member ---- */

static int silent_listener(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* ---- the tests ---- */

static void test_put_range_binary(void **state)
{
    static const char key[] = "bin/\0k\xff";
    unsigned char value[260], end[16];
    const char *members[] = {g.one.addr};
    size_t i, end_len;
    res_t r, w;
    tc_t t;

    (void)state;
    for (i = 0; i < sizeof(value); i++)
        value[i] = (unsigned char)i;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    memset(&w, 0, sizeof(w));
    assert_int_equal(oa_etcd_put(t.c, key, sizeof(key) - 1, value, sizeof(value), 0, on_res, &w), 0);
    wait_ok(&t, &w);
    assert_true(w.revision > 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, key, sizeof(key) - 1, NULL, 0, 0, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.count, 1);
    assert_int_equal(r.value_len[0], sizeof(value));
    assert_memory_equal(r.value[0], value, sizeof(value));
    assert_int_equal(r.mod[0], w.revision);
    assert_int_equal(r.create[0], w.revision);

    /* A prefix reads both keys under it, in key order, and nothing beside it. */
    put(&t, "pre/b", "2", 0, &w);
    put(&t, "pre/a", "1", 0, &w);
    put(&t, "pre0", "outside", 0, &w);
    oa_etcd_prefix_end("pre/", 4, end, &end_len);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "pre/", 4, end, end_len, 0, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.key[0], "pre/a");
    assert_string_equal(r.key[1], "pre/b");

    get(&t, "absent", &r);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.count, 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_delete(t.c, "pre/", 4, end, end_len, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.deleted, 2);
    assert_int_equal(oa_etcd_range(t.c, "", 0, NULL, 0, 0, 0, on_res, &r), UV_EINVAL);
    tc_close(&t);
}

static void test_txn_mod_revision(void **state)
{
    const char *members[] = {g.one.addr};
    oa_etcd_cmp_t cmp = {.key = "txn", .key_len = 3, .target = OA_ETCD_TARGET_MOD, .result = OA_ETCD_EQUAL};
    oa_etcd_op_t then = {.kind = OA_ETCD_OP_PUT, .key = "txn", .key_len = 3, .value = "second", .value_len = 6};
    oa_etcd_op_t otherwise = {.kind = OA_ETCD_OP_RANGE, .key = "txn", .key_len = 3};
    res_t first, r;
    int64_t applied;
    tc_t t;

    (void)state;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    put(&t, "txn", "first", 0, &first);

    cmp.number = first.revision;
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, &otherwise, 1, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 1);
    assert_true(r.revision > first.revision);
    applied = r.revision;

    /* The same comparison again: the key moved on, so the failure branch reads what is there now. */
    then.value = "third";
    then.value_len = 5;
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, &otherwise, 1, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.value_len[0], 6);
    assert_memory_equal(r.value[0], "second", 6);
    assert_int_equal(r.mod[0], applied);
    assert_int_equal(r.create[0], first.revision);

    /* A key that does not exist has create_revision 0: the "create only" idiom. */
    cmp.key = "txn-new";
    cmp.key_len = 7;
    cmp.target = OA_ETCD_TARGET_CREATE;
    cmp.number = 0;
    then.key = "txn-new";
    then.key_len = 7;
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, NULL, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 1);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, NULL, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 0);
    tc_close(&t);
}

/* A comparison over a range holds only when every key of it does; an empty range compares as one missing key. */
static void test_txn_range_compare(void **state)
{
    const char *members[] = {g.one.addr};
    unsigned char end[16];
    size_t end_len;
    oa_etcd_cmp_t cmp = {.key = "held/", .key_len = 5, .target = OA_ETCD_TARGET_CREATE, .result = OA_ETCD_EQUAL};
    oa_etcd_op_t then = {.kind = OA_ETCD_OP_PUT, .key = "held-mark", .key_len = 9, .value = "x", .value_len = 1};
    res_t r;
    tc_t t;

    (void)state;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    oa_etcd_prefix_end("held/", 5, end, &end_len);
    cmp.range_end = end;
    cmp.range_end_len = end_len;
    put(&t, "held0", "next to the range, not in it", 0, &r);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, NULL, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 1);

    put(&t, "held/a", "1", 0, &r);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, NULL, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 0);

    /* Without the range end the same comparison is about the key "held/" alone, which does not exist. */
    cmp.range_end_len = 0;
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_txn(t.c, &cmp, 1, &then, 1, NULL, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.succeeded, 1);
    tc_close(&t);
}

static void test_lease(void **state)
{
    const char *members[] = {g.one.addr};
    res_t grant, r;
    int waited;
    tc_t t;

    (void)state;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    memset(&grant, 0, sizeof(grant));
    assert_int_equal(oa_etcd_lease_grant(t.c, 2, on_res, &grant), 0);
    wait_ok(&t, &grant);
    assert_true(grant.lease != 0);
    assert_int_equal(grant.ttl, 2);
    put(&t, "leased", "v", grant.lease, &r);

    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_lease_keepalive(t.c, grant.lease, on_res, &r), 0);
    wait_ok(&t, &r);
    assert_int_equal(r.lease, grant.lease);
    assert_int_equal(r.ttl, 2);
    get(&t, "leased", &r);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.kv_lease[0], grant.lease);

    /* Without keepalives the lease expires and takes the key with it. */
    for (waited = 0; waited < 6000; waited += 250) {
        get(&t, "leased", &r);
        if (r.n == 0)
            break;
        tc_sleep(&t, 250);
    }
    assert_int_equal(r.n, 0);
    assert_true(waited >= 1000);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_lease_keepalive(t.c, grant.lease, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_NOT_FOUND);

    /* Revoking deletes the keys at once; a second revoke finds nothing. */
    memset(&grant, 0, sizeof(grant));
    assert_int_equal(oa_etcd_lease_grant(t.c, 30, on_res, &grant), 0);
    wait_ok(&t, &grant);
    put(&t, "revoked", "v", grant.lease, &r);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_lease_revoke(t.c, grant.lease, on_res, &r), 0);
    wait_ok(&t, &r);
    get(&t, "revoked", &r);
    assert_int_equal(r.n, 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_lease_revoke(t.c, grant.lease, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_NOT_FOUND);
    tc_close(&t);
}

static void watch_prefix(tc_t *t, const char *prefix, int64_t from, seen_t *s, oa_etcd_watch_t **w)
{
    unsigned char end[16];
    size_t end_len;

    memset(s, 0, sizeof(*s));
    oa_etcd_prefix_end(prefix, strlen(prefix), end, &end_len);
    assert_int_equal(oa_etcd_watch_start(t->c, prefix, strlen(prefix), end, end_len, from, on_watch, s, w), 0);
}

static void stop_watch(tc_t *t, oa_etcd_watch_t *w, seen_t *s)
{
    oa_etcd_watch_stop(w);
    tc_wait(t, &s->finals);
    assert_int_equal(s->finals, 1);
    assert_int_equal(s->final, OA_ETCD_WATCH_CANCELLED);
}

/* Watches prefix from the current revision, then writes <prefix>1=a and <prefix>2=b and waits for both events. */
static void watch_first_two(tc_t *t, const char *prefix, seen_t *s, oa_etcd_watch_t **w)
{
    char key[32];
    res_t r;

    get(t, prefix, &r);
    watch_prefix(t, prefix, r.revision + 1, s, w);
    snprintf(key, sizeof(key), "%s1", prefix);
    put(t, key, "a", 0, &r);
    snprintf(key, sizeof(key), "%s2", prefix);
    put(t, key, "b", 0, &r);
    wait_events(t, s, 2);
}

static void test_watch_resumes_after_restart(void **state)
{
    const char *members[] = {g.one.addr};
    oa_etcd_watch_t *w;
    res_t r;
    seen_t s;
    tc_t t;

    (void)state;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    watch_first_two(&t, "w/", &s, &w);

    member_kill(&g.one);
    assert_int_equal(member_start(&g.one, NULL, NULL), 0);
    assert_int_equal(oa_testnet_etcd_wait(g.one.client, 0, START_MS), 0);
    put(&t, "w/3", "c", 0, &r);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_delete(t.c, "w/1", 3, NULL, 0, on_res, &r), 0);
    wait_ok(&t, &r);
    put(&t, "w/4", "d", 0, &r);
    wait_events(&t, &s, 5);
    assert_int_equal(s.n, 5);
    assert_event(&s, 0, OA_ETCD_EVENT_PUT, "w/1", "a");
    assert_event(&s, 1, OA_ETCD_EVENT_PUT, "w/2", "b");
    assert_event(&s, 2, OA_ETCD_EVENT_PUT, "w/3", "c");
    assert_event(&s, 3, OA_ETCD_EVENT_DELETE, "w/1", "");
    assert_event(&s, 4, OA_ETCD_EVENT_PUT, "w/4", "d");
    assert_int_equal(s.create[2], s.mod[2]);
    stop_watch(&t, w, &s);
    assert_int_equal(s.n, 5);
    tc_close(&t);
}

static void test_watch_fails_over(void **state)
{
    const char *members[] = {g.three[0].addr, g.three[1].addr, g.three[2].addr};
    oa_etcd_watch_t *w;
    res_t r;
    seen_t s;
    tc_t t;

    (void)state;
    tc_open(&t, members, 3, NULL, NULL, 8000, 1000);
    /* The first member answers the read before the watch, so the watch starts there too. */
    watch_first_two(&t, "f/", &s, &w);

    /* A read right after the crash moves on to the members left, waiting out the election if it must. A write is
     * another matter: sent to a member while there is no leader, its outcome can be unknown (see
     * test_unreachable_members), so the writes wait for the new leader. */
    member_kill(&g.three[0]);
    get(&t, "f/2", &r);
    assert_int_equal(r.n, 1);
    assert_int_equal(oa_testnet_etcd_wait(g.three[1].client, 0, START_MS), 0);
    put(&t, "f/3", "c", 0, &r);
    put(&t, "f/4", "d", 0, &r);
    wait_events(&t, &s, 4);
    assert_int_equal(s.n, 4);
    assert_event(&s, 0, OA_ETCD_EVENT_PUT, "f/1", "a");
    assert_event(&s, 1, OA_ETCD_EVENT_PUT, "f/2", "b");
    assert_event(&s, 2, OA_ETCD_EVENT_PUT, "f/3", "c");
    assert_event(&s, 3, OA_ETCD_EVENT_PUT, "f/4", "d");
    get(&t, "f/4", &r);
    assert_int_equal(r.n, 1);
    stop_watch(&t, w, &s);
    tc_close(&t);
}

static void on_closed_flag(oa_etcd_t *c, void *data)
{
    (void)c;
    *(int *)data = 1;
}

static void test_watch_leaves_hung_member(void **state)
{
    const char *watched[] = {g.three[1].addr, g.three[2].addr, g.three[0].addr};
    const char *writers[] = {g.three[2].addr, g.three[0].addr};
    oa_etcd_options_t o = {.members = writers, .n_members = 2, .timeout_ms = 8000, .attempt_timeout_ms = 2000};
    oa_etcd_options_t ow = {
        .members = watched, .n_members = 3, .timeout_ms = 8000, .attempt_timeout_ms = 500, .watch_probe_ms = 300};
    oa_etcd_t *writer = NULL, *mine;
    oa_etcd_watch_t *w;
    oa_error_t err;
    int writer_closed = 0;
    res_t r;
    seen_t s;
    tc_t t;

    (void)state;
    /* The failover test killed the first member: it comes back, so that two members still make a majority once
     * the watched one hangs. */
    if (g.three[0].pid == 0)
        assert_int_equal(member_start(&g.three[0], g.cluster, NULL), 0);
    assert_int_equal(oa_testnet_etcd_wait(g.three[0].client, 0, START_MS), 0);

    tc_loop(&t);
    tc_client_opts(&t, &ow);
    watch_first_two(&t, "h/", &s, &w);

    /* Stopped, not dead: its connections stay up and say nothing. The writes go through a client of the others. */
    kill(g.three[1].pid, SIGSTOP);
    assert_int_equal(oa_testnet_etcd_wait(g.three[2].client, 0, START_MS), 0);
    assert_int_equal(oa_etcd_new(&t.loop, &o, &writer, &err), 0);
    mine = t.c;
    t.c = writer;
    put(&t, "h/3", "c", 0, &r);
    t.c = mine;
    wait_events(&t, &s, 3);
    assert_event(&s, 2, OA_ETCD_EVENT_PUT, "h/3", "c");
    kill(g.three[1].pid, SIGCONT);
    stop_watch(&t, w, &s);
    oa_etcd_close(writer, on_closed_flag, &writer_closed);
    tc_wait(&t, &writer_closed);
    tc_close(&t);
}

static void test_compaction_reported(void **state)
{
    const char *members[] = {g.one.addr};
    oa_testnet_reply_t reply;
    oa_etcd_watch_t *w;
    res_t first, last, r;
    char body[64];
    seen_t s;
    tc_t t;

    (void)state;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    put(&t, "c/k", "1", 0, &first);
    put(&t, "c/k", "2", 0, &last);
    put(&t, "c/k", "3", 0, &last);
    snprintf(body, sizeof(body), "{\"revision\":\"%lld\"}", (long long)last.revision);
    assert_int_equal(oa_testnet_http(g.one.client, "POST", "/v3/kv/compaction", NULL, NULL, body, &reply), 0);
    assert_int_equal(reply.status, 200);

    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "c/k", 3, NULL, 0, first.revision, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_COMPACTED);

    watch_prefix(&t, "c/", first.revision, &s, &w);
    tc_wait(&t, &s.finals);
    assert_int_equal(s.finals, 1);
    assert_int_equal(s.final, OA_ETCD_WATCH_COMPACTED);
    assert_int_equal(s.err, OA_ETCD_E_COMPACTED);
    assert_int_equal(s.compact_revision, last.revision);
    assert_int_equal(s.n, 0);
    tc_close(&t);
}

static void test_unreachable_members(void **state)
{
    char refusing[32], silent[32];
    const char *refused_first[] = {refusing, g.one.addr};
    const char *silent_first[] = {silent, g.one.addr};
    const char *none[] = {refusing};
    int fd, port;
    res_t r;
    tc_t t;

    (void)state;
    snprintf(refusing, sizeof(refusing), "127.0.0.1:%d", oa_testnet_free_port());
    fd = silent_listener(&port);
    snprintf(silent, sizeof(silent), "127.0.0.1:%d", port);

    /* A member that refuses connections is skipped, for reads and writes alike. */
    tc_open(&t, refused_first, 2, NULL, NULL, 3000, 500);
    put(&t, "reach", "1", 0, &r);
    get(&t, "reach", &r);
    assert_int_equal(r.n, 1);
    tc_close(&t);

    /* A member that accepts but never answers: a read moves on after the attempt timeout; a write that went out
     * to it is not sent again, and its outcome is unknown. */
    tc_open(&t, silent_first, 2, NULL, NULL, 3000, 300);
    get(&t, "reach", &r);
    assert_int_equal(r.n, 1);
    tc_close(&t);
    tc_open(&t, silent_first, 2, NULL, NULL, 3000, 300);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_put(t.c, "reach", 5, "2", 1, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_UNKNOWN);
    assert_non_null(strstr(r.why, silent));
    tc_close(&t);

    /* Nobody there: unavailable once the deadline passes. */
    tc_open(&t, none, 1, NULL, NULL, 400, 100);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "reach", 5, NULL, 0, 0, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.fired, 1);
    assert_int_equal(r.err, OA_ETCD_E_UNAVAILABLE);
    assert_non_null(strstr(r.why, refusing));
    tc_close(&t);
    close(fd);
}

static void test_auth(void **state)
{
    const char *members[] = {g.auth.addr};
    oa_etcd_watch_t *w;
    res_t r;
    seen_t s;
    tc_t t;

    (void)state;
    tc_open(&t, members, 1, NULL, NULL, 0, 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_put(t.c, "a", 1, "1", 1, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_AUTH);
    tc_close(&t);

    tc_open(&t, members, 1, "root", "wrong", 0, 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "a", 1, NULL, 0, 0, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_AUTH);
    tc_close(&t);

    tc_open(&t, members, 1, "root", PASSWORD, 0, 0);
    get(&t, "a/", &r);
    watch_prefix(&t, "a/", r.revision + 1, &s, &w);
    put(&t, "a/1", "one", 0, &r);
    get(&t, "a/1", &r);
    assert_int_equal(r.n, 1);
    assert_memory_equal(r.value[0], "one", 3);
    wait_events(&t, &s, 1);
    /* The member forgets a token after 1 s unused: the next call authenticates again and goes through. */
    tc_sleep(&t, 2500);
    put(&t, "a/2", "two", 0, &r);
    wait_events(&t, &s, 2);
    assert_event(&s, 1, OA_ETCD_EVENT_PUT, "a/2", "two");
    stop_watch(&t, w, &s);
    tc_close(&t);
}

static void test_tls(void **state)
{
    const char *members[] = {g.tls.addr};
    oa_etcd_watch_t *w;
    SSL_CTX *ctx = NULL, *wrong = NULL;
    oa_error_t err;
    res_t r;
    seen_t s;
    tc_t t;

    (void)state;
    assert_int_equal(oa_tls_client_ctx_new(g.ca, NULL, NULL, &ctx, &err), 0);
    assert_int_equal(oa_tls_client_ctx_new(g.other_ca, NULL, NULL, &wrong, &err), 0);

    /* The name "localhost" is resolved, and is what the member's certificate must carry. */
    tc_open_tls(&t, members, 1, NULL, NULL, 0, 0, ctx);
    get(&t, "t/", &r);
    watch_prefix(&t, "t/", r.revision + 1, &s, &w);
    put(&t, "t/1", "over TLS", 0, &r);
    get(&t, "t/1", &r);
    assert_int_equal(r.n, 1);
    assert_memory_equal(r.value[0], "over TLS", 8);
    wait_events(&t, &s, 1);
    assert_event(&s, 0, OA_ETCD_EVENT_PUT, "t/1", "over TLS");
    stop_watch(&t, w, &s);
    tc_close(&t);

    /* A certificate from another CA is refused: nothing is sent, so even a write is simply unavailable. */
    tc_open_tls(&t, members, 1, NULL, NULL, 600, 300, wrong);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_put(t.c, "t/2", 3, "x", 1, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_UNAVAILABLE);
    assert_non_null(strstr(r.why, "TLS"));
    tc_close(&t);
    SSL_CTX_free(ctx);
    SSL_CTX_free(wrong);
}

/* ---- a member made up by the test, for the answers a real one gives only in a crisis ---- */

#define FAKE_CLIENTS 16

typedef struct fake_s {
    uv_tcp_t server;
    uv_tcp_t clients[FAKE_CLIENTS];
    size_t n_clients;
    char addr[32];
    const char *answer; /* the whole HTTP answer to every request */
    int requests;
} fake_t;

static void fake_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char mem[65536];

    (void)h;
    (void)suggested;
    *buf = uv_buf_init(mem, sizeof(mem));
}

static void fake_written(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

/* Every request (its head and body arrive in one piece from the client) gets the canned answer. */
static void fake_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    fake_t *f = s->data;
    const char *p = buf->base;
    uv_write_t *req;
    uv_buf_t b;

    if (n <= 0) {
        if (n < 0 && !uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, NULL);
        return;
    }
    while ((p = memmem(p, (size_t)(buf->base + n - p), "POST /v3", 8)) != NULL) {
        f->requests++;
        p += 8;
        req = malloc(sizeof(*req));
        assert_non_null(req);
        b = uv_buf_init((char *)f->answer, (unsigned)strlen(f->answer));
        assert_int_equal(uv_write(req, s, &b, 1, fake_written), 0);
    }
}

static void fake_accept(uv_stream_t *server, int status)
{
    fake_t *f = server->data;
    uv_tcp_t *c = &f->clients[f->n_clients];

    assert_int_equal(status, 0);
    assert_true(f->n_clients < FAKE_CLIENTS);
    f->n_clients++;
    assert_int_equal(uv_tcp_init(server->loop, c), 0);
    c->data = f;
    assert_int_equal(uv_accept(server, (uv_stream_t *)c), 0);
    assert_int_equal(uv_read_start((uv_stream_t *)c, fake_alloc, fake_read), 0);
}

static void fake_start(tc_t *t, fake_t *f, const char *answer)
{
    struct sockaddr_in a;
    int len = sizeof(a);

    memset(f, 0, sizeof(*f));
    f->answer = answer;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
    assert_int_equal(uv_tcp_init(&t->loop, &f->server), 0);
    f->server.data = f;
    assert_int_equal(uv_tcp_bind(&f->server, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->server, 8, fake_accept), 0);
    assert_int_equal(uv_tcp_getsockname(&f->server, (struct sockaddr *)&a, &len), 0);
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", ntohs(a.sin_port));
}

static void fake_stop(fake_t *f)
{
    size_t i;

    for (i = 0; i < f->n_clients; i++) {
        if (!uv_is_closing((uv_handle_t *)&f->clients[i]))
            uv_close((uv_handle_t *)&f->clients[i], NULL);
    }
    uv_close((uv_handle_t *)&f->server, NULL);
}

/* n ranges at once, all answered. */
static void burst(tc_t *t, size_t n)
{
    res_t r[8];
    size_t i;

    assert_true(n <= 8);
    memset(r, 0, sizeof(r));
    for (i = 0; i < n; i++)
        assert_int_equal(oa_etcd_range(t->c, "k", 1, NULL, 0, 0, 0, on_res, &r[i]), 0);
    for (i = 0; i < n; i++)
        wait_ok(t, &r[i]);
}

static void test_keep_alive_and_int64(void **state)
{
    /* A range answer as the gateway writes it: int64 as strings, base64 bytes, a lease ID past 2^53. */
    static const char body[] = "{\"header\":{\"revision\":\"9007199254740993\"},\"kvs\":[{\"key\":\"aw==\","
                               "\"create_revision\":\"5\",\"mod_revision\":\"7\",\"version\":\"2\","
                               "\"value\":\"AP8=\",\"lease\":\"7587868473434213123\"}],\"count\":\"1\"}";
    char answer[512];
    const char *members[1];
    fake_t f;
    res_t r;
    tc_t t;
    int i;

    (void)state;
    snprintf(answer, sizeof(answer),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", sizeof(body) - 1,
             body);
    tc_loop(&t);
    fake_start(&t, &f, answer);
    members[0] = f.addr;
    tc_client(&t, members, 1, NULL, NULL, 0, 0, NULL);
    for (i = 0; i < 3; i++) {
        memset(&r, 0, sizeof(r));
        assert_int_equal(oa_etcd_range(t.c, "k", 1, NULL, 0, 0, 0, on_res, &r), 0);
        wait_ok(&t, &r);
        assert_int_equal(r.revision, 9007199254740993LL);
        assert_int_equal(r.n, 1);
        assert_string_equal(r.key[0], "k");
        assert_int_equal(r.value_len[0], 2);
        assert_memory_equal(r.value[0], "\x00\xff", 2);
        assert_int_equal(r.mod[0], 7);
        assert_int_equal(r.kv_lease[0], 7587868473434213123LL);
    }
    /* Three calls, one connection. */
    assert_int_equal(f.requests, 3);
    assert_int_equal(f.n_clients, 1);

    /* Six calls at once need six connections; four of them stay for the next burst, which opens two more. */
    burst(&t, 6);
    assert_int_equal(f.n_clients, 6);
    burst(&t, 6);
    assert_int_equal(f.n_clients, 8);
    assert_int_equal(f.requests, 15);
    fake_stop(&f);
    tc_close(&t);
}

/* A loop with a fake member answering answer (an etcd error with its HTTP status when json is not NULL), and a
 * client of the fake first and the member alone second. */
static void fake_pair(tc_t *t, fake_t *f, const char *members[2], char *buf, size_t size, const char *status,
                      const char *json)
{
    snprintf(buf, size, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", status,
             strlen(json), json);
    tc_loop(t);
    fake_start(t, f, buf);
    members[0] = f->addr;
    members[1] = g.one.addr;
    tc_client(t, members, 2, NULL, NULL, 3000, 1000, NULL);
}

static void test_member_errors(void **state)
{
    const char *members[2];
    char answer[512];
    fake_t f;
    res_t r;
    tc_t t;

    (void)state;
    /* "not leader": the member did nothing, so even a write goes on to the next member. */
    fake_pair(&t, &f, members, answer, sizeof(answer), "503 Service Unavailable",
              "{\"error\":\"etcdserver: not leader\",\"message\":\"etcdserver: not leader\",\"code\":14}");
    put(&t, "errs", "1", 0, &r);
    assert_int_equal(f.requests, 1);
    fake_stop(&f);
    tc_close(&t);

    /* "leader changed": the write may have been applied; a read still goes on. */
    fake_pair(&t, &f, members, answer, sizeof(answer), "503 Service Unavailable",
              "{\"error\":\"etcdserver: leader changed\",\"message\":\"etcdserver: leader changed\",\"code\":14}");
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_put(t.c, "errs", 4, "2", 1, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_UNKNOWN);
    assert_int_equal(r.grpc, 14);
    assert_non_null(strstr(r.why, "leader changed"));
    get(&t, "errs", &r);
    assert_int_equal(r.n, 1);
    assert_memory_equal(r.value[0], "1", 1);
    assert_int_equal(f.requests, 2);
    fake_stop(&f);
    tc_close(&t);

    /* Any other error is the caller's to see, with etcd's words. */
    fake_pair(&t, &f, members, answer, sizeof(answer), "400 Bad Request",
              "{\"error\":\"etcdserver: too many operations in txn request\",\"message\":\"etcdserver: too many "
              "operations in txn request\",\"code\":3}");
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "errs", 4, NULL, 0, 0, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_OTHER);
    assert_int_equal(r.grpc, 3);
    assert_non_null(strstr(r.why, "too many operations"));
    fake_stop(&f);
    tc_close(&t);

    /* Something that is not the gateway. */
    fake_pair(&t, &f, members, answer, sizeof(answer), "200 OK", "<html>hello</html>");
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "errs", 4, NULL, 0, 0, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_PROTOCOL);
    fake_stop(&f);
    tc_close(&t);
}

static void test_token_refused_twice(void **state)
{
    static const char json[] =
        "{\"error\":\"etcdserver: invalid auth token\",\"message\":\"etcdserver: invalid auth token\",\"code\":16}";
    const char *members[1];
    char answer[512];
    fake_t f;
    res_t r;
    tc_t t;

    (void)state;
    /* A member that refuses every token: the client authenticates again once, then gives up. */
    snprintf(answer, sizeof(answer), "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", sizeof(json) - 1, json);
    tc_loop(&t);
    fake_start(&t, &f, answer);
    members[0] = f.addr;
    tc_client(&t, members, 1, "root", "pw", 3000, 1000, NULL);
    memset(&r, 0, sizeof(r));
    assert_int_equal(oa_etcd_range(t.c, "k", 1, NULL, 0, 0, 0, on_res, &r), 0);
    tc_wait(&t, &r.fired);
    assert_int_equal(r.err, OA_ETCD_E_AUTH);
    assert_int_equal(r.grpc, 16);
    assert_int_equal(f.requests, 2);
    fake_stop(&f);
    tc_close(&t);
}

static void test_watch_stream_error(void **state)
{
    /* A stream as a member that loses its leader sends it: "created", then the error without a newline, then the
     * end of the stream. */
    static const char error[] = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no "
                                "leader\",\"http_status\":\"Service Unavailable\"}}";
    static const char denied[] = "{\"error\":{\"grpc_code\":7,\"http_code\":403,\"message\":\"etcdserver: "
                                 "permission denied\",\"http_status\":\"Forbidden\"}}";
    const char *members[2], *real[] = {g.one.addr};
    oa_etcd_t *watcher = NULL;
    oa_etcd_options_t o = {.members = members, .n_members = 2};
    int watcher_closed = 0;
    char created[256], answer[1024];
    oa_etcd_watch_t *w;
    oa_error_t err;
    size_t created_len;
    fake_t f;
    res_t r;
    seen_t s;
    tc_t t;

    (void)state;
    /* t's client writes to the real member; the watch has a client of its own that tries the made-up one first. */
    tc_open(&t, real, 1, NULL, NULL, 0, 0);
    get(&t, "se", &r);
    created_len = (size_t)snprintf(created, sizeof(created),
                                   "{\"result\":{\"header\":{\"revision\":\"%lld\"},\"created\":true}}\n",
                                   (long long)r.revision);
    snprintf(answer, sizeof(answer),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
             "%zx\r\n%s\r\n%zx\r\n%s\r\n0\r\n\r\n",
             created_len, created, sizeof(error) - 1, error);
    fake_start(&t, &f, answer);
    members[0] = f.addr;
    members[1] = g.one.addr;
    assert_int_equal(oa_etcd_new(&t.loop, &o, &watcher, &err), 0);

    /* The watch starts on the made-up member, which says "created" as of the real revision, then "no leader": the
     * watch goes on on the real member from the revision after it, and sees the next write. */
    memset(&s, 0, sizeof(s));
    assert_int_equal(oa_etcd_watch_start(watcher, "se", 2, NULL, 0, 0, on_watch, &s, &w), 0);
    while (f.requests == 0)
        tc_sleep(&t, 20);
    tc_sleep(&t, 300);
    put(&t, "se", "after", 0, &r);
    wait_events(&t, &s, 1);
    assert_event(&s, 0, OA_ETCD_EVENT_PUT, "se", "after");
    assert_int_equal(f.requests, 1);
    stop_watch(&t, w, &s);

    /* The same stream ending in "permission denied" is not the member's trouble but the caller's: the watch ends. */
    snprintf(answer, sizeof(answer),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
             "%zx\r\n%s\r\n%zx\r\n%s\r\n0\r\n\r\n",
             created_len, created, sizeof(denied) - 1, denied);
    memset(&s, 0, sizeof(s));
    assert_int_equal(oa_etcd_watch_start(watcher, "se", 2, NULL, 0, 0, on_watch, &s, &w), 0);
    tc_wait(&t, &s.finals);
    assert_int_equal(s.final, OA_ETCD_WATCH_ERROR);
    assert_int_equal(s.err, OA_ETCD_E_AUTH);
    assert_int_equal(f.requests, 2);
    oa_etcd_close(watcher, on_closed_flag, &watcher_closed);
    tc_wait(&t, &watcher_closed);
    fake_stop(&f);
    tc_close(&t);
}

static void on_closed_count(oa_etcd_t *c, void *data)
{
    (void)c;
    (*(int *)data)++;
}

static void test_close_cancels(void **state)
{
    char silent[32];
    const char *members[] = {silent, g.one.addr};
    oa_etcd_watch_t *w, *w2;
    int fd, port, second_close = 0;
    res_t a, b;
    seen_t s, s2;
    tc_t t;

    (void)state;
    fd = silent_listener(&port);
    snprintf(silent, sizeof(silent), "127.0.0.1:%d", port);
    tc_open(&t, members, 2, NULL, NULL, 5000, 4000);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_int_equal(oa_etcd_range(t.c, "k", 1, NULL, 0, 0, 0, on_res, &a), 0);
    assert_int_equal(oa_etcd_put(t.c, "k", 1, "v", 1, 0, on_res, &b), 0);
    watch_prefix(&t, "k", 0, &s, &w);
    watch_prefix(&t, "k", 0, &s2, &w2);
    tc_sleep(&t, 50);
    assert_int_equal(a.fired + b.fired + s.finals + s.updates, 0);

    /* A stopped watch reports once, from the loop. */
    oa_etcd_watch_stop(w2);
    oa_etcd_watch_stop(w2);
    assert_int_equal(s2.finals, 0);

    oa_etcd_close(t.c, on_closed, &t);
    oa_etcd_close(t.c, on_closed_count, &second_close);
    assert_int_equal(oa_etcd_range(t.c, "k", 1, NULL, 0, 0, 0, on_res, &a), UV_ECANCELED);
    assert_int_equal(a.fired, 0);
    tc_wait(&t, &t.closed);
    assert_int_equal(a.fired, 1);
    assert_int_equal(a.err, OA_ETCD_E_CANCELLED);
    assert_int_equal(a.call_in_cb, UV_ECANCELED);
    assert_int_equal(b.fired, 1);
    assert_int_equal(b.err, OA_ETCD_E_CANCELLED);
    assert_int_equal(s.finals, 1);
    assert_int_equal(s.final, OA_ETCD_WATCH_CANCELLED);
    assert_int_equal(s2.finals, 1);
    assert_int_equal(s2.final, OA_ETCD_WATCH_CANCELLED);
    assert_int_equal(second_close, 0);
    uv_close((uv_handle_t *)&t.guard, NULL);
    uv_close((uv_handle_t *)&t.nap, NULL);
    uv_run(&t.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t.loop), 0);
    close(fd);
}

static void test_bad_options(void **state)
{
    const char *bad[] = {"127.0.0.1"};
    const char *bad_port[] = {"127.0.0.1:99999"};
    const char *v6[] = {"[::1]:2379"};
    oa_etcd_options_t o = {.members = bad, .n_members = 1};
    oa_etcd_t *c = NULL;
    oa_error_t err;
    uv_loop_t loop;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_etcd_new(&loop, &o, &c, &err), -1);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    o.members = bad_port;
    assert_int_equal(oa_etcd_new(&loop, &o, &c, &err), -1);
    o.n_members = 0;
    assert_int_equal(oa_etcd_new(&loop, &o, &c, &err), -1);
    o.members = v6;
    o.n_members = 1;
    o.user = "root";
    assert_int_equal(oa_etcd_new(&loop, &o, &c, &err), -1);
    o.password = "pw";
    assert_int_equal(oa_etcd_new(&loop, &o, &c, &err), 0);
    oa_etcd_close(c, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_prefix_end(void **state)
{
    unsigned char out[8];
    size_t n;

    (void)state;
    oa_etcd_prefix_end("ab", 2, out, &n);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "ac", 2);
    oa_etcd_prefix_end("a\xff\xff", 3, out, &n);
    assert_int_equal(n, 1);
    assert_memory_equal(out, "b", 1);
    oa_etcd_prefix_end("\xff", 1, out, &n);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_end),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_put_range_binary),
        cmocka_unit_test(test_txn_mod_revision),
        cmocka_unit_test(test_txn_range_compare),
        cmocka_unit_test(test_unreachable_members),
        cmocka_unit_test(test_close_cancels),
        cmocka_unit_test(test_compaction_reported),
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_watch_resumes_after_restart),
        cmocka_unit_test(test_watch_fails_over),
        cmocka_unit_test(test_watch_leaves_hung_member),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_keep_alive_and_int64),
        cmocka_unit_test(test_member_errors),
        cmocka_unit_test(test_token_refused_twice),
        cmocka_unit_test(test_watch_stream_error),
    };

    /* OA_TEST_FILTER=test_auth (a cmocka pattern) runs only the matching tests, the group set-up still first. */
    if (getenv("OA_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("OA_TEST_FILTER"));
    return cmocka_run_group_tests_name("etcd", tests, group_setup, group_teardown);
}
