/*
 * Cluster mode's store logic against a real redis-server on a free loopback port: the URL and capability parsers,
 * a configuration change seen by another node with the same version, concurrent changes merged by the version's
 * compare-and-set, one lease holder and its takeover, the capability view, the shared status, the poller's shared
 * schedule state (its invalidation, the numbering that orders records, resynchronisation from the store, a store
 * restarted empty), the metrics after known events, a store that is not there, a PUT whose write the store confirms
 * after the PUT's time limit, and the configuration's epoch when the store comes back empty (an acknowledged PUT is
 * never overwritten by a seed; the better-informed seed wins while nothing was written). Skipped, saying so, when
 * redis-server is not installed.
 */
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

/* cmocka needs setjmp.h first. */
#include <setjmp.h>

#include <cmocka.h>

#include "cluster_internal.h"
#include "oa_cluster.h"
#include "store_etcd.h"
#include "oa_log.h"
#include "oa_util.h"
#include "testnet.h"
#include "testpki.h"

#define SHORT_HEARTBEAT_MS 100
#define SHORT_TTL_MS 400
#define SHORT_LEASE_MS 400

static pid_t redis_pid = -1;
static int redis_port;
static pid_t etcd_pid = -1;
static int etcd_port;
static char etcd_url[64];
static char redis_dir[OA_TESTPKI_DIR_MAX]; /* the store's working directory and log */

/* ---- the redis-server ---- */

static redisContext *sync_connect(void)
{
    struct timeval tv = {1, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", redis_port, tv);

    if (rc != NULL && rc->err) {
        redisFree(rc);
        return NULL;
    }
    return rc;
}

/* Starts the store on redis_port, which stays the same across restarts: the nodes keep their URL. */
static void redis_start(void)
{
    redis_pid = oa_testnet_redis_start(redis_port, redis_dir, NULL);
    assert_true(redis_pid > 0);
}

/* SIGTERM: the store shuts down as an operator would stop it. */
static void redis_stop(void)
{
    oa_testnet_redis_stop(redis_pid, SIGTERM);
    redis_pid = -1;
}

/* One command on a blocking connection; returns the reply as a string (integers printed), caller frees. */
/* The CertID of a node started without one (oa_cluster_options_t.certid NULL), under which its records are kept. */
#define NO_CERTID "0000000000000000000000000000000000000000"

static char *redis_get(const char *fmt, const char *arg)
{
    redisContext *rc = sync_connect();
    redisReply *r;
    char *out = NULL, buf[32];

    assert_non_null(rc);
    r = redisCommand(rc, fmt, arg);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
        out = strdup(r->str);
    } else if (r->type == REDIS_REPLY_INTEGER) {
        snprintf(buf, sizeof(buf), "%lld", r->integer);
        out = strdup(buf);
    }
    freeReplyObject(r);
    redisFree(rc);
    return out;
}

static int group_setup(void **state)
{
    (void)state;
    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);
    if (system("command -v redis-server >/dev/null 2>&1") != 0)
        return 0;
    redis_port = oa_testnet_free_port();
    assert_true(redis_port > 0);
    assert_int_equal(oa_testpki_tmpdir(redis_dir), 0);
    redis_start();
    if (system("command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1") == 0) {
        etcd_port = oa_testnet_free_port();
        etcd_pid = oa_testnet_etcd_start("store", etcd_port, oa_testnet_free_port(), NULL, redis_dir, NULL);
        assert_true(etcd_pid > 0);
        assert_int_equal(oa_testnet_etcd_wait(etcd_port, 0, 10000), 0);
        snprintf(etcd_url, sizeof(etcd_url), "etcd://127.0.0.1:%d", etcd_port);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    redis_stop();
    oa_testnet_etcd_stop(etcd_pid, SIGTERM);
    /* Non-zero makes cmocka report the teardown as failed: a directory left behind is a fault of the suite. */
    return redis_dir[0] != '\0' ? oa_testpki_rmdir(redis_dir) : 0;
}

#define NEED_REDIS()                                                                                                 \
    do {                                                                                                             \
        if (redis_pid <= 0) {                                                                                        \
            print_message("skipped: redis-server is not installed (Debian package redis-server)\n");                \
            skip();                                                                                                  \
        }                                                                                                            \
    } while (0)

#define NEED_ETCD()                                                                                                  \
    do {                                                                                                             \
        if (etcd_pid <= 0) {                                                                                         \
            print_message("skipped: etcd is not installed (Debian packages etcd-server, etcd-client)\n");           \
            skip();                                                                                                  \
        }                                                                                                            \
    } while (0)

/* etcdctl against the test's member: the command's output (trailing newline dropped), caller frees. */
static char *etcdctl(const char *args)
{
    char cmd[512], *out = calloc(1, 65536);
    size_t n = 0, r;
    FILE *f;

    assert_non_null(out);
    snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:%d --command-timeout=5s %s 2>/dev/null",
             etcd_port, args);
    f = popen(cmd, "r");
    assert_non_null(f);
    while (n + 1 < 65536 && (r = fread(out + n, 1, 65536 - 1 - n, f)) > 0)
        n += r;
    pclose(f);
    while (n > 0 && out[n - 1] == '\n')
        out[--n] = '\0';
    return out;
}

static void flush_store(void)
{
    free(redis_get("FLUSHALL", NULL));
}

/* ---- nodes on one loop ---- */

typedef struct node_s {
    oa_cluster_t *c;
    oa_conf_t conf;
    int conf_calls;
    char last_user[64];
    bool poller;
    int role_calls;
    unsigned char der[64];
    size_t der_len;
    int status_calls;
    int state_calls;
    oa_sched_view_t view; /* the last state, its strings copied below */
    char view_code[64];
    char view_text[128];
    char view_from[32];
    char events[32]; /* 'S' per status, then the first letter of each state's name, in order of arrival */
    bool closed;
} node_t;

static void note_event(node_t *n, char e)
{
    size_t len = strlen(n->events);

    if (len + 1 < sizeof(n->events)) {
        n->events[len] = e;
        n->events[len + 1] = '\0';
    }
}

static void on_conf(void *data, const oa_conf_t *conf, unsigned changed, const char *user, const char *from)
{
    node_t *n = data;

    (void)changed;
    (void)from;
    n->conf = *conf;
    n->conf_calls++;
    snprintf(n->last_user, sizeof(n->last_user), "%s", user != NULL ? user : "");
}

static void on_status(void *data, const unsigned char *der, size_t len, int64_t at_ms, const char *from)
{
    node_t *n = data;

    (void)at_ms;
    (void)from;
    n->der_len = len < sizeof(n->der) ? len : sizeof(n->der);
    memcpy(n->der, der, n->der_len);
    n->status_calls++;
    note_event(n, 'S');
}

static void on_state(void *data, const oa_sched_view_t *v, const char *from)
{
    node_t *n = data;

    n->state_calls++;
    n->view = *v;
    snprintf(n->view_code, sizeof(n->view_code), "%s", v->last_error_code);
    snprintf(n->view_text, sizeof(n->view_text), "%s", v->last_error);
    snprintf(n->view_from, sizeof(n->view_from), "%s", from);
    n->view.last_error_code = n->view_code;
    n->view.last_error = n->view_text;
    note_event(n, oa_sched_state_name(v->state)[0]);
}

static void on_role(void *data, bool poller)
{
    node_t *n = data;

    n->poller = poller;
    n->role_calls++;
}

static void on_closed(void *arg)
{
    ((node_t *)arg)->closed = true;
}

/* What a node starts with besides its id: where its version file lives, the configuration it last had in force,
 * and its timers. Zeroes mean: no version file, the defaults, the short timers. */
typedef struct node_opts_s {
    const char *data_dir;
    const oa_conf_t *conf;
    unsigned heartbeat_ms, ttl_ms, lease_ms;
    const char *url; /* NULL: the test's redis-server at port */
} node_opts_t;

static void node_start_ex(uv_loop_t *loop, node_t *n, const char *id, const char *caps, int port,
                          const node_opts_t *no)
{
    static const node_opts_t none = {NULL, NULL, 0, 0, 0, NULL};
    oa_cluster_options_t o;
    oa_error_t err;
    char url[64];

    if (no == NULL)
        no = &none;
    memset(n, 0, sizeof(*n));
    if (no->conf != NULL)
        n->conf = *no->conf;
    else
        oa_conf_defaults(&n->conf);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    memset(&o, 0, sizeof(o));
    o.url = no->url != NULL ? no->url : url;
    o.node_id = id;
    o.api_address = "http://127.0.0.1:1";
    o.capabilities = caps;
    o.data_dir = no->data_dir;
    o.heartbeat_ms = no->heartbeat_ms ? no->heartbeat_ms : SHORT_HEARTBEAT_MS;
    o.node_ttl_ms = no->ttl_ms ? no->ttl_ms : SHORT_TTL_MS;
    o.lease_ms = no->lease_ms ? no->lease_ms : SHORT_LEASE_MS;
    o.hooks.conf = on_conf;
    o.hooks.status = on_status;
    o.hooks.state = on_state;
    o.hooks.role = on_role;
    o.hooks.data = n;
    assert_int_equal(oa_cluster_new(loop, &o, &n->conf, &n->c, &err), 0);
}

static void node_start(uv_loop_t *loop, node_t *n, const char *id, const char *caps, int port)
{
    node_start_ex(loop, n, id, caps, port, NULL);
}

static void node_close(node_t *n)
{
    if (n->c != NULL && !n->closed)
        oa_cluster_close(n->c, on_closed, n);
}

static void on_wake(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until pred holds or ms pass; returns pred's last value. */
static int run_until(uv_loop_t *loop, int (*pred)(void *), void *arg, unsigned ms)
{
    uv_timer_t wake;
    uint64_t end;
    int ok;

    uv_timer_init(loop, &wake);
    uv_timer_start(&wake, on_wake, 5, 5);
    uv_update_time(loop);
    end = uv_now(loop) + ms;
    while (!(ok = pred(arg)) && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static int pred_never(void *arg)
{
    (void)arg;
    return 0;
}

static int pred_available(void *arg)
{
    node_t **nodes = arg;
    int i;

    for (i = 0; nodes[i] != NULL; i++)
        if (!oa_cluster_available(nodes[i]->c))
            return 0;
    return 1;
}

static void close_all_and_finish(uv_loop_t *loop, node_t **nodes)
{
    int i;

    for (i = 0; nodes[i] != NULL; i++)
        node_close(nodes[i]);
    uv_run(loop, UV_RUN_DEFAULT);
    for (i = 0; nodes[i] != NULL; i++)
        assert_true(nodes[i]->closed);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* ---- tests ---- */

static void test_url_parse(void **state)
{
    static const struct {
        const char *url;
        int ok;
        const char *host;
        int port, db;
    } cases[] = {
        {"redis://127.0.0.1:6380", 1, "127.0.0.1", 6380, 0},
        {"redis://127.0.0.1:6380/3", 1, "127.0.0.1", 6380, 3},
        {"redis://localhost", 1, "localhost", 6379, 0},
        {"redis://[::1]:7000/15", 1, "::1", 7000, 15},
        {"redis://db.example:1/", 1, "db.example", 1, 0},
        {"http://127.0.0.1:6379", 0, NULL, 0, 0},
        {"redis://", 0, NULL, 0, 0},
        {"redis://h:0", 0, NULL, 0, 0},
        {"redis://h:65536", 0, NULL, 0, 0},
        {"redis://h:6379/16", 0, NULL, 0, 0},
        {"redis://h:6379/x", 0, NULL, 0, 0},
        {"redis://:pw@h:6379", 0, NULL, 0, 0},
        {"redis://[::1:6379", 0, NULL, 0, 0},
        {"redis://h h:1", 0, NULL, 0, 0},
    };
    char host[OA_CLUSTER_HOST_MAX];
    int port, db;
    oa_error_t err;
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        int rc = oa_cluster_url_parse(cases[i].url, host, &port, &db, &err);

        if (!cases[i].ok) {
            if (rc != -1)
                fail_msg("%s: accepted", cases[i].url);
            assert_int_equal(err.code, OA_E_BAD_OPTION);
            assert_true(strncmp(err.text, "--cluster: ", 11) == 0);
            continue;
        }
        if (rc != 0)
            fail_msg("%s: %s", cases[i].url, err.text);
        assert_string_equal(host, cases[i].host);
        assert_int_equal(port, cases[i].port);
        assert_int_equal(db, cases[i].db);
    }
}

/* The members of an etcd:// URL, each as "host:port" with the default port filled in; every refusal is one sentence
 * that names the part at fault. */
static void test_etcd_url_parse(void **state)
{
    static const struct {
        const char *url;
        const char *members; /* the members joined by spaces; NULL: refused, text then says why */
        const char *text;
    } cases[] = {
        {"etcd://127.0.0.1:2379", "127.0.0.1:2379", NULL},
        {"etcd://127.0.0.1", "127.0.0.1:2379", NULL},
        {"etcd://a.example:1,b.example:65535,c", "a.example:1 b.example:65535 c:2379", NULL},
        {"etcd://[::1]:23790,[fe80::1]", "[::1]:23790 [fe80::1]:2379", NULL},
        {"etcd://etcd_1:2379,etcd-2:2379", "etcd_1:2379 etcd-2:2379", NULL},
        /* The same host on two ports is two members. */
        {"etcd://h:2379,h:2380", "h:2379 h:2380", NULL},
        {"etcd://", NULL, "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...] without an empty member, got "
                          "\"etcd://\""},
        {"etcd://a,,b", NULL, "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...] without an empty member, got "
                              "\"etcd://a,,b\""},
        {"etcd://a,", NULL, "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...] without an empty member, got "
                            "\"etcd://a,\""},
        {",a", NULL, "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...], got \",a\""},
        {"ETCD://a", NULL, "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...], got \"ETCD://a\""},
        {"redis://a", NULL, "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...], got \"redis://a\""},
        {"etcd://root:pw@a:2379", NULL,
         "--cluster: credentials in the URL are not accepted; use --cluster-user and --cluster-password"},
        {"etcd://a,b:0", NULL, "--cluster: expected a port from 1 to 65535 in \"b:0\""},
        {"etcd://a:65536,b", NULL, "--cluster: expected a port from 1 to 65535 in \"a:65536\""},
        {"etcd://a:,b", NULL, "--cluster: expected a port from 1 to 65535 in \"a:\""},
        {"etcd://a:x", NULL, "--cluster: expected a port from 1 to 65535 in \"a:x\""},
        {"etcd://a:-1", NULL, "--cluster: expected a port from 1 to 65535 in \"a:-1\""},
        {"etcd://a:2379/", NULL, "--cluster: an etcd URL has no path or database part, got \"a:2379/\""},
        {"etcd://a/0,b", NULL, "--cluster: an etcd URL has no path or database part, got \"a/0\""},
        {"etcd://a,h h:1", NULL, "--cluster: invalid host in \"h h:1\""},
        {"etcd://a,:2379", NULL, "--cluster: missing or too long host in \":2379\""},
        {"etcd://[::1:2379", NULL, "--cluster: unterminated [IPv6] address in \"[::1:2379\""},
        {"etcd://[]:2379", NULL, "--cluster: missing or too long host in \"[]:2379\""},
        {"etcd://[etcd.example]:2379", NULL, "--cluster: \"[etcd.example]:2379\" is not an IPv6 address in brackets"},
        {"etcd://[::1]x", NULL, "--cluster: expected HOST[:PORT] as a member, got \"[::1]x\""},
        {"etcd://a:2379,b,a", NULL, "--cluster: the etcd member a:2379 is listed twice"},
        {"etcd://B.example:2379,b.EXAMPLE", NULL, "--cluster: the etcd member b.EXAMPLE:2379 is listed twice"},
        {"etcd://[::1],[::1]:2379", NULL, "--cluster: the etcd member [::1]:2379 is listed twice"},
    };
    char members[OA_CLUSTER_MEMBERS_MAX][OA_CLUSTER_MEMBER_MAX], joined[512], url[600], host[300];
    oa_error_t err;
    size_t i, j, n;
    int rc, port, db;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        oa_error_clear(&err);
        rc = oa_cluster_etcd_url_parse(cases[i].url, members, &n, &err);
        if (cases[i].members == NULL) {
            if (rc != -1 || err.code != OA_E_BAD_OPTION || strcmp(err.text, cases[i].text) != 0)
                fail_msg("%s: got %d \"%s\"; want \"%s\"", cases[i].url, rc, err.text, cases[i].text);
            continue;
        }
        if (rc != 0)
            fail_msg("%s: %s", cases[i].url, err.text);
        joined[0] = '\0';
        for (j = 0; j < n; j++) {
            if (j > 0)
                strcat(joined, " ");
            assert_true(strlen(joined) + strlen(members[j]) < sizeof(joined));
            strcat(joined, members[j]);
        }
        if (strcmp(joined, cases[i].members) != 0)
            fail_msg("%s: got \"%s\"; want \"%s\"", cases[i].url, joined, cases[i].members);
    }

    assert_true(oa_cluster_url_is_etcd("etcd://a"));
    assert_false(oa_cluster_url_is_etcd("etcd:/a"));
    assert_false(oa_cluster_url_is_etcd("redis://a"));
    assert_false(oa_cluster_url_is_etcd(NULL));
    /* etcd:// is not a Redis URL. */
    assert_int_equal(oa_cluster_url_parse("etcd://a", host, &port, &db, &err), -1);

    /* The limit on members: sixteen pass, seventeen do not. */
    snprintf(url, sizeof(url), "etcd://m0");
    for (j = 1; j < OA_CLUSTER_MEMBERS_MAX; j++)
        snprintf(url + strlen(url), sizeof(url) - strlen(url), ",m%zu", j);
    assert_int_equal(oa_cluster_etcd_url_parse(url, members, &n, &err), 0);
    assert_int_equal(n, OA_CLUSTER_MEMBERS_MAX);
    assert_string_equal(members[OA_CLUSTER_MEMBERS_MAX - 1], "m15:2379");
    snprintf(url + strlen(url), sizeof(url) - strlen(url), ",m%d", OA_CLUSTER_MEMBERS_MAX);
    assert_int_equal(oa_cluster_etcd_url_parse(url, members, &n, &err), -1);
    assert_string_equal(err.text, "--cluster: at most 16 etcd members are accepted");

    /* The longest host fits with its port; one more character does not. */
    memset(host, 'h', OA_CLUSTER_HOST_MAX - 1);
    host[OA_CLUSTER_HOST_MAX - 1] = '\0';
    snprintf(url, sizeof(url), "etcd://a,%s:65535", host);
    assert_int_equal(oa_cluster_etcd_url_parse(url, members, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(strlen(members[1]), OA_CLUSTER_HOST_MAX - 1 + 6);
    snprintf(url, sizeof(url), "etcd://a,%sh:65535", host);
    assert_int_equal(oa_cluster_etcd_url_parse(url, members, &n, &err), -1);
    assert_true(strncmp(err.text, "--cluster: missing or too long host in ", 39) == 0);
}

static void test_caps(void **state)
{
    (void)state;
    assert_int_equal(oa_cluster_caps_valid(""), 0);
    assert_int_equal(oa_cluster_caps_valid("ocsp"), 0);
    assert_int_equal(oa_cluster_caps_valid("ocsp,tls_1-3"), 0);
    assert_int_equal(oa_cluster_caps_valid(","), -1);
    assert_int_equal(oa_cluster_caps_valid("ocsp,"), -1);
    assert_int_equal(oa_cluster_caps_valid("OCSP"), -1);
    assert_int_equal(oa_cluster_caps_valid("a b"), -1);
    assert_int_equal(oa_cluster_caps_have("x,ocsp", "ocsp"), 1);
    assert_int_equal(oa_cluster_caps_have("ocsp2,xocsp", "ocsp"), 0);
    assert_int_equal(oa_cluster_caps_have("", "ocsp"), 0);
}

typedef struct put_result_s {
    int fired;
    oa_errcode_t code;
} put_result_t;

static void on_put(void *data, const oa_error_t *err)
{
    put_result_t *r = data;

    r->fired++;
    r->code = err != NULL ? err->code : OA_OK;
}

/* PUT /v1/ocsp as the daemon makes it: the body validated once (with the responder URL every node here has), then the
 * patch handed to the cluster. Returns what oa_cluster_conf_put returns, or OA_CLUSTER_PUT_FAILED with err filled for
 * an invalid body, which the cluster is never asked about. */
static oa_cluster_put_t conf_put(oa_cluster_t *c, const char *body, const char *user, put_result_t *r, oa_error_t *err)
{
    oa_conf_patch_t patch;

    if (oa_conf_patch_parse("http://r/", body, strlen(body), &patch, err) != 0)
        return OA_CLUSTER_PUT_FAILED;
    return oa_cluster_conf_put(c, &patch, user, on_put, r, err);
}

typedef struct conf_wait_s {
    node_t *n;
    int calls;
} conf_wait_t;

static int pred_conf_calls(void *arg)
{
    conf_wait_t *w = arg;

    return w->n->conf_calls >= w->calls;
}

static int pred_put_fired(void *arg)
{
    put_result_t *r = arg;

    return r[0].fired > 0 && r[1].fired > 0;
}

/* a PUTs body_a and b body_b at once (as alice and bob); both are answered within ms, each acknowledged. */
static void puts_at_once(uv_loop_t *loop, node_t *a, const char *body_a, node_t *b, const char *body_b, unsigned ms)
{
    put_result_t res[2] = {{0, 0}, {0, 0}};
    oa_error_t err;

    assert_int_equal(conf_put(a->c, body_a, "alice", &res[0], &err), OA_CLUSTER_PUT_STARTED);
    assert_int_equal(conf_put(b->c, body_b, "bob", &res[1], &err), OA_CLUSTER_PUT_STARTED);
    assert_true(run_until(loop, pred_put_fired, res, ms));
    assert_int_equal(res[0].code, OA_OK);
    assert_int_equal(res[1].code, OA_OK);
}

static void test_conf_put_propagates(void **state)
{
    uv_loop_t loop;
    node_t a, b;
    node_t *nodes[] = {&a, &b, NULL};
    put_result_t res[2] = {{0, 0}, {0, 0}};
    conf_wait_t w = {&b, 1};
    oa_error_t err;
    char *v, *conf;
    static const char body[] = "{\"query_frequency\": 120, \"ocsp_functionality\": true}";

    (void)state;
    NEED_REDIS();
    flush_store();
    uv_loop_init(&loop);
    node_start(&loop, &a, "a", NULL, redis_port);
    node_start(&loop, &b, "b", NULL, redis_port);
    assert_true(run_until(&loop, pred_available, nodes, 3000));

    /* A body that changes nothing: no write, no callback. */
    assert_int_equal(conf_put(a.c, "{\"query_frequency\": 3600}", "u", &res[0], &err), OA_CLUSTER_PUT_UNCHANGED);
    /* An invalid body never reaches the store. */
    assert_int_equal(conf_put(a.c, "{\"query_frequency\": 1}", "u", &res[0], &err), OA_CLUSTER_PUT_FAILED);
    assert_int_equal(err.code, OA_E_INVALID_SCHEMA);

    assert_int_equal(conf_put(a.c, body, "alice", &res[0], &err), OA_CLUSTER_PUT_STARTED);
    assert_int_equal(res[0].fired, 0); /* never from inside the call */
    res[1].fired = 1;
    assert_true(run_until(&loop, pred_put_fired, res, 3000));
    assert_int_equal(res[0].fired, 1);
    assert_int_equal(res[0].code, OA_OK);
    /* The writer put it in force with the user's name before answering. */
    assert_int_equal(a.conf_calls, 1);
    assert_string_equal(a.last_user, "alice");
    assert_int_equal(a.conf.query_frequency, 120);
    assert_true(a.conf.ocsp_functionality);
    assert_int_equal(oa_cluster_conf_version(a.c), 1);
    /* Acknowledged means stored. */
    v = redis_get("HGET " OA_CLUSTER_KEY_PREFIX "conf %s", "version");
    assert_string_equal(v, "1");
    free(v);
    conf = redis_get("HGET " OA_CLUSTER_KEY_PREFIX "conf %s", "conf");
    assert_non_null(strstr(conf, "\"query_frequency\":120"));
    free(conf);

    /* The other node applies it from the message, as nobody's user. */
    assert_true(run_until(&loop, pred_conf_calls, &w, 1000));
    assert_int_equal(b.conf.query_frequency, 120);
    assert_true(b.conf.ocsp_functionality);
    assert_string_equal(b.last_user, "");
    assert_int_equal(oa_cluster_conf_version(b.c), 1);

    /* Two nodes change different keys at once: the compare-and-set makes one retry on top of the other. */
    puts_at_once(&loop, &a, "{\"response_timeout\": 7}", &b, "{\"recovery_max_tries\": 9}", 3000);
    run_until(&loop, pred_never, NULL, 200);
    assert_int_equal(oa_cluster_conf_version(a.c), 3);
    assert_int_equal(oa_cluster_conf_version(b.c), 3);
    assert_int_equal(a.conf.response_timeout, 7);
    assert_int_equal(a.conf.recovery_max_tries, 9);
    assert_int_equal(b.conf.response_timeout, 7);
    assert_int_equal(b.conf.recovery_max_tries, 9);
    assert_int_equal(b.conf.query_frequency, 120);
    close_all_and_finish(&loop, nodes);
}

static int pred_one_poller(void *arg)
{
    node_t **nodes = arg;

    return (nodes[0]->poller ? 1 : 0) + (nodes[1]->poller ? 1 : 0) == 1;
}

/* Exactly one poller in a NULL-terminated list of nodes. */
static int pred_one_poller_of(void *arg)
{
    node_t **nodes = arg;
    int i, n = 0;

    for (i = 0; nodes[i] != NULL; i++)
        n += nodes[i]->poller ? 1 : 0;
    return n == 1;
}

static int pred_poller(void *arg)
{
    return ((node_t *)arg)->poller;
}

static int pred_status(void *arg)
{
    return ((node_t *)arg)->der_len > 0;
}

static int pred_lacking(void *arg)
{
    oa_error_t err;

    return oa_cluster_capability_check(((node_t *)arg)->c, &err) != 0;
}

/* Each node's view is refreshed by its own heartbeat, so the nodes learn at slightly different times. */
static int pred_all_lacking(void *arg)
{
    node_t **nodes = arg;
    int i;

    for (i = 0; nodes[i] != NULL; i++)
        if (!pred_lacking(nodes[i]))
            return 0;
    return 1;
}

static int pred_none_lacking(void *arg)
{
    node_t **nodes = arg;
    int i;

    for (i = 0; nodes[i] != NULL; i++)
        if (pred_lacking(nodes[i]))
            return 0;
    return 1;
}

static void test_lease_registry_status(void **state)
{
    uv_loop_t loop;
    node_t a, b, old;
    node_t *pair[] = {&a, &b, NULL};
    node_t *rest[] = {NULL, NULL};
    node_t *poller, *follower;
    oa_ocsp_result_t res;
    unsigned char der[] = {0x30, 0x03, 0x0a, 0x01, 0x00};
    oa_error_t err;
    char *holder;

    (void)state;
    NEED_REDIS();
    flush_store();
    uv_loop_init(&loop);
    node_start(&loop, &a, "a", "ocsp", redis_port);
    node_start(&loop, &b, "b", NULL, redis_port);
    assert_true(run_until(&loop, pred_available, pair, 3000));
    assert_true(run_until(&loop, pred_one_poller, pair, 2000));
    /* It stays one: several renewals later there is still exactly one holder, and it is the one in the store. */
    run_until(&loop, pred_never, NULL, 3 * SHORT_LEASE_MS);
    assert_true(pred_one_poller(pair));
    poller = a.poller ? &a : &b;
    follower = a.poller ? &b : &a;
    assert_int_equal(poller->role_calls, 1);
    assert_int_equal(follower->role_calls, 0);
    holder = redis_get("GET " OA_CLUSTER_KEY_PREFIX "%s", "lease:" NO_CERTID);
    assert_string_equal(holder, poller == &a ? "a" : "b");
    free(holder);
    assert_int_equal(oa_cluster_capability_check(a.c, &err), 0);

    /* The status the poller stores reaches the follower, byte for byte, and stays in the store. */
    memset(&res, 0, sizeof(res));
    res.der = der;
    res.der_len = sizeof(der);
    oa_cluster_publish_result(poller->c, &res);
    assert_true(run_until(&loop, pred_status, follower, 1000));
    assert_int_equal(follower->der_len, sizeof(der));
    assert_memory_equal(follower->der, der, sizeof(der));
    assert_int_equal(poller->der_len, 0); /* its own message is not applied again */

    /* A node without the capability: every node's check fails and names it; gone, the check passes again. */
    node_start(&loop, &old, "old-node", "", redis_port);
    assert_true(run_until(&loop, pred_all_lacking, pair, 2000));
    assert_int_equal(oa_cluster_capability_check(b.c, &err), -1);
    assert_int_equal(err.code, OA_E_UNSUPPORTED_BY_CAPABILITY);
    assert_non_null(strstr(err.text, "old-node lacks the ocsp capability"));
    assert_int_equal(oa_cluster_capability_check(old.c, &err), -1);
    node_close(&old);
    assert_true(run_until(&loop, pred_none_lacking, pair, 2000));

    /* The poller leaves: the follower takes over within the lease. */
    node_close(poller);
    assert_true(run_until(&loop, pred_poller, follower, SHORT_LEASE_MS + 3 * SHORT_HEARTBEAT_MS));
    rest[0] = follower;
    assert_true(poller->closed);
    assert_true(old.closed);
    close_all_and_finish(&loop, rest);
}

/* ---- the poller's schedule state, and the metrics ---- */

/* The value of the metrics line that starts with name (labels included), or -1 when there is none. */
static long long metric(node_t *n, const char *name)
{
    oa_buf_t b;
    char want[160];
    const char *at;
    long long v = -1;

    oa_buf_init(&b);
    assert_int_equal(oa_cluster_metrics(n->c, &b), 0);
    snprintf(want, sizeof(want), "\n%s ", name);
    at = b.len > 0 ? strstr(b.data, want) : NULL;
    if (at != NULL)
        v = strtoll(at + strlen(want), NULL, 10);
    oa_buf_free(&b);
    return v;
}

typedef struct metric_wait_s {
    node_t *n;
    const char *name;
    long long value;
} metric_wait_t;

static int pred_metric(void *arg)
{
    metric_wait_t *w = arg;

    return metric(w->n, w->name) == w->value;
}

/* Runs the loop until n's metric name has value (each node reads its messages on its own connection, in its own
 * time); returns the value then. */
static long long metric_after(uv_loop_t *loop, node_t *n, const char *name, long long value)
{
    metric_wait_t w = {n, name, value};

    run_until(loop, pred_metric, &w, 1000);
    return metric(n, name);
}

typedef struct count_wait_s {
    node_t **nodes;
    int min;
} count_wait_t;

/* 1 when the counter at offset in node_t (an int) has reached w->min on every node of w. */
static int all_counted(const count_wait_t *w, size_t offset)
{
    int i;

    for (i = 0; w->nodes[i] != NULL; i++)
        if (*(const int *)((const char *)w->nodes[i] + offset) < w->min)
            return 0;
    return 1;
}

static int pred_states(void *arg)
{
    return all_counted(arg, offsetof(node_t, state_calls));
}

static int pred_statuses(void *arg)
{
    return all_counted(arg, offsetof(node_t, status_calls));
}

static int pred_two_live(void *arg)
{
    node_t **nodes = arg;

    return metric(nodes[0], "ocsp_agent_cluster_nodes") == 2 && metric(nodes[1], "ocsp_agent_cluster_nodes") == 2;
}

static int pred_down(void *arg)
{
    node_t **nodes = arg;
    int i;

    for (i = 0; nodes[i] != NULL; i++)
        if (oa_cluster_available(nodes[i]->c))
            return 0;
    return 1;
}

static oa_sched_view_t view_of(oa_sched_state_t st, bool recovering, int failures, int tries, const char *code,
                               const char *text)
{
    oa_sched_view_t v = {.state = st,
                         .recovering = recovering,
                         .consecutive_failures = failures,
                         .recovery_tries = tries,
                         .last_attempt_ms = 1700000000123LL,
                         .last_error_code = code,
                         .last_error = text};

    return v;
}

static void test_state_invalidation_and_metrics(void **state)
{
    uv_loop_t loop;
    node_t a, b, late1, late2;
    node_t *pair[] = {&a, &b, NULL};
    node_t *first[] = {&a, NULL};
    node_t *all[] = {&a, &b, &late1, &late2, NULL};
    node_t *followers[3] = {NULL, NULL, NULL};
    node_t *poller, *follower;
    count_wait_t w;
    oa_ocsp_result_t res;
    unsigned char der[] = {0x30, 0x03, 0x0a, 0x01, 0x00};
    oa_sched_view_t v;
    put_result_t puts[2] = {{0, 0}, {0, 0}};
    oa_error_t err;
    char *text;
    int i;

    (void)state;
    NEED_REDIS();
    flush_store();
    uv_loop_init(&loop);
    /* One after the other: "a" seeds the empty store and receives its own seed's conf message; "b", subscribed
     * later, finds the seed in place and writes nothing. */
    node_start(&loop, &a, "a", NULL, redis_port);
    assert_true(run_until(&loop, pred_available, first, 3000));
    node_start(&loop, &b, "b", NULL, redis_port);
    assert_true(run_until(&loop, pred_available, pair, 3000));
    assert_true(run_until(&loop, pred_one_poller, pair, 2000));
    assert_true(run_until(&loop, pred_two_live, pair, 2000));
    poller = a.poller ? &a : &b;
    follower = a.poller ? &b : &a;
    followers[0] = follower;

    /* The metrics of a quiet cluster of two. */
    assert_int_equal(metric(poller, "ocsp_agent_cluster_store_up"), 1);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_store_up"), 1);
    assert_int_equal(metric(poller, "ocsp_agent_cluster_poller"), 1);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_poller"), 0);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_conf_version"), 0);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_nodes_lacking_ocsp"), 0);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_store_disconnects_total"), 0);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_messages_received_total{type=\"state\"}"), 0);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_puts_total{result=\"committed\"}"), 0);

    /* A response, the start of recovery, the invalidation: the follower sees each, in order, as published. */
    memset(&res, 0, sizeof(res));
    res.der = der;
    res.der_len = sizeof(der);
    oa_cluster_publish_result(poller->c, &res);
    v = view_of(OA_STATE_RECOVERING, true, 1, 0, "ocsp_responder_http_status", "HTTP 500");
    oa_cluster_publish_state(poller->c, &v);
    v = view_of(OA_STATE_INVALIDATED, false, 3, 2, "ocsp_responder_connection_failed", "connection refused");
    oa_cluster_publish_state(poller->c, &v);
    w.nodes = followers;
    w.min = 2;
    assert_true(run_until(&loop, pred_states, &w, 1000));
    assert_string_equal(follower->events, "Sri");
    assert_int_equal(follower->view.state, OA_STATE_INVALIDATED);
    assert_false(follower->view.recovering);
    assert_int_equal(follower->view.consecutive_failures, 3);
    assert_int_equal(follower->view.recovery_tries, 2);
    assert_int_equal(follower->view.last_attempt_ms, 1700000000123LL);
    assert_string_equal(follower->view_code, "ocsp_responder_connection_failed");
    assert_string_equal(follower->view_text, "connection refused");
    assert_string_equal(follower->view_from, poller == &a ? "a" : "b");
    assert_string_equal(poller->events, ""); /* its own messages are not applied again */
    /* The store: numbered records, the invalidation in both keys. */
    text = redis_get("GET %s", OA_CLUSTER_KEY_PREFIX "seq");
    assert_string_equal(text, "3");
    free(text);
    text = redis_get("GET %s", OA_CLUSTER_KEY_PREFIX "status:" NO_CERTID);
    assert_non_null(strstr(text, "{\"seq\":3,\"type\":\"state\""));
    assert_non_null(strstr(text, "\"state\":\"invalidated\""));
    free(text);
    text = redis_get("GET %s", OA_CLUSTER_KEY_PREFIX "sched:" NO_CERTID);
    assert_non_null(strstr(text, "{\"seq\":3,\"type\":\"state\""));
    free(text);
    /* Messages are counted on every node, its own included. */
    assert_int_equal(metric(follower, "ocsp_agent_cluster_messages_received_total{type=\"status\"}"), 1);
    assert_int_equal(metric(follower, "ocsp_agent_cluster_messages_received_total{type=\"state\"}"), 2);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_messages_received_total{type=\"conf\"}"), 1);
    assert_int_equal(metric(&b, "ocsp_agent_cluster_messages_received_total{type=\"conf\"}"), 0);
    assert_int_equal(metric_after(&loop, poller, "ocsp_agent_cluster_messages_received_total{type=\"state\"}", 2),
                     2);

    /* A node that joins now reads the invalidation from the store: one state, no response. */
    node_start(&loop, &late1, "late1", NULL, redis_port);
    followers[1] = &late1;
    w.min = 1;
    followers[0] = &late1;
    followers[1] = NULL;
    assert_true(run_until(&loop, pred_states, &w, 2000));
    run_until(&loop, pred_never, NULL, 100);
    assert_string_equal(late1.events, "i");
    assert_string_equal(late1.view_code, "ocsp_responder_connection_failed");
    assert_int_equal(late1.der_len, 0);

    /* A message older than what a node has seen is ignored: only the store's numbering counts. */
    text = redis_get("PUBLISH " OA_CLUSTER_KEY_PREFIX "events %s",
                     "{\"seq\":2,\"type\":\"state\",\"node\":\"x\",\"certid\":\"" NO_CERTID
                     "\",\"ts\":1,\"state\":\"valid\"}");
    free(text);
    /* The poller's next response: the status key holds it again, the sched key still the invalidation. */
    oa_cluster_publish_result(poller->c, &res);
    followers[0] = follower;
    followers[1] = NULL;
    w.min = 2;
    assert_true(run_until(&loop, pred_statuses, &w, 1000));
    followers[0] = &late1;
    w.min = 1;
    assert_true(run_until(&loop, pred_statuses, &w, 1000));
    run_until(&loop, pred_never, NULL, 100);
    assert_string_equal(follower->events, "SriS");
    assert_string_equal(late1.events, "iS");
    assert_int_equal(metric_after(&loop, follower, "ocsp_agent_cluster_messages_received_total{type=\"state\"}",
                                  3),
                     3);

    /* A node that joins now applies the older record first: invalidated, then the response. */
    node_start(&loop, &late2, "late2", NULL, redis_port);
    followers[0] = &late2;
    assert_true(run_until(&loop, pred_statuses, &w, 2000));
    run_until(&loop, pred_never, NULL, 100);
    assert_string_equal(late2.events, "iS");
    assert_int_equal(late2.der_len, sizeof(der));

    /* Two PUTs at once: both committed, one after losing a round. */
    puts_at_once(&loop, &a, "{\"response_timeout\": 7}", &b, "{\"recovery_max_tries\": 9}", 3000);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"committed\"}"), 1);
    assert_int_equal(metric(&b, "ocsp_agent_cluster_puts_total{result=\"committed\"}"), 1);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"conflict_retry\"}") +
                         metric(&b, "ocsp_agent_cluster_puts_total{result=\"conflict_retry\"}"),
                     1);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"unavailable\"}"), 0);
    assert_int_equal(metric_after(&loop, &late2, "ocsp_agent_cluster_conf_version", 2), 2);
    assert_int_equal(metric_after(&loop, &late2, "ocsp_agent_cluster_messages_received_total{type=\"conf\"}", 2), 2);

    /* The store restarts empty: one disconnect each, and the numbering starts again at 1, which every node
     * accepts because it forgot the old numbers when it reconnected. */
    redis_stop();
    assert_true(run_until(&loop, pred_down, all, 3000));
    assert_int_equal(metric(&late1, "ocsp_agent_cluster_store_up"), 0);
    assert_int_equal(conf_put(a.c, "{\"response_timeout\": 8}", "u", &puts[0], &err), OA_CLUSTER_PUT_FAILED);
    assert_int_equal(err.code, OA_E_STORE_UNAVAILABLE);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"unavailable\"}"), 1);
    redis_start();
    assert_true(run_until(&loop, pred_available, all, 5000));
    /* Any of the four may hold the lease now; the state goes from it to another. */
    assert_true(run_until(&loop, pred_one_poller_of, all, 3000));
    for (i = 0; all[i] != NULL; i++)
        if (all[i]->poller)
            poller = all[i];
    follower = poller == &late1 ? &late2 : &late1;
    assert_int_equal(metric(follower, "ocsp_agent_cluster_store_disconnects_total"), 1);
    assert_int_equal(metric(poller, "ocsp_agent_cluster_store_disconnects_total"), 1);
    follower->state_calls = 0;
    v = view_of(OA_STATE_RECOVERING, true, 1, 0, "ocsp_responder_timeout", "no answer");
    oa_cluster_publish_state(poller->c, &v);
    followers[0] = follower;
    assert_true(run_until(&loop, pred_states, &w, 1000));
    assert_int_equal(follower->view.state, OA_STATE_RECOVERING);
    assert_string_equal(follower->view_code, "ocsp_responder_timeout");
    text = redis_get("GET %s", OA_CLUSTER_KEY_PREFIX "seq");
    assert_string_equal(text, "1");
    free(text);
    close_all_and_finish(&loop, all);
}

static void test_store_unreachable(void **state)
{
    uv_loop_t loop;
    node_t a;
    node_t *nodes[] = {&a, NULL};
    put_result_t res = {0, 0};
    oa_error_t err;

    (void)state;
    uv_loop_init(&loop);
    /* Port 1 on loopback: nothing listens there, the connection is refused at once. */
    node_start(&loop, &a, "lonely", NULL, 1);
    run_until(&loop, pred_never, NULL, 400);
    assert_false(oa_cluster_available(a.c));
    assert_int_equal(conf_put(a.c, "{\"query_frequency\": 120}", "u", &res, &err), OA_CLUSTER_PUT_FAILED);
    assert_int_equal(err.code, OA_E_STORE_UNAVAILABLE);
    assert_int_equal(res.fired, 0);
    assert_int_equal(a.conf_calls, 0);
    assert_false(a.poller);
    /* Never up, so never disconnected; the refused PUT is counted. */
    assert_int_equal(metric(&a, "ocsp_agent_cluster_store_up"), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_poller"), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_nodes"), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_store_disconnects_total"), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"unavailable\"}"), 1);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"timeout\"}"), 0);
    {
        static const char want[] =
            "# HELP ocsp_agent_cluster_store_up 1 while the cluster store is reachable and this node is synchronised "
            "with it.\n# TYPE ocsp_agent_cluster_store_up gauge\nocsp_agent_cluster_store_up 0\n"
            "# HELP ocsp_agent_cluster_poller 1 while this node holds the lease and queries the responder.\n"
            "# TYPE ocsp_agent_cluster_poller gauge\nocsp_agent_cluster_poller 0\n"
            "# HELP ocsp_agent_cluster_conf_version The version of the shared configuration in force here.\n"
            "# TYPE ocsp_agent_cluster_conf_version gauge\nocsp_agent_cluster_conf_version 0\n"
            "# HELP ocsp_agent_cluster_nodes Live nodes seen by the last heartbeat.\n"
            "# TYPE ocsp_agent_cluster_nodes gauge\nocsp_agent_cluster_nodes 0\n"
            "# HELP ocsp_agent_cluster_nodes_lacking_ocsp Live nodes without the ocsp capability.\n"
            "# TYPE ocsp_agent_cluster_nodes_lacking_ocsp gauge\nocsp_agent_cluster_nodes_lacking_ocsp 0\n"
            "# HELP ocsp_agent_cluster_store_disconnects_total Times the connection to a synchronised store was "
            "lost.\n# TYPE ocsp_agent_cluster_store_disconnects_total counter\n"
            "ocsp_agent_cluster_store_disconnects_total 0\n"
            "# HELP ocsp_agent_cluster_messages_received_total Messages received on the cluster channel, by type.\n"
            "# TYPE ocsp_agent_cluster_messages_received_total counter\n"
            "ocsp_agent_cluster_messages_received_total{type=\"conf\"} 0\n"
            "ocsp_agent_cluster_messages_received_total{type=\"status\"} 0\n"
            "ocsp_agent_cluster_messages_received_total{type=\"state\"} 0\n"
            "ocsp_agent_cluster_messages_received_total{type=\"invalid\"} 0\n"
            "# HELP ocsp_agent_cluster_puts_total Configuration writes to the cluster store, by result.\n"
            "# TYPE ocsp_agent_cluster_puts_total counter\n"
            "ocsp_agent_cluster_puts_total{result=\"committed\"} 0\n"
            "ocsp_agent_cluster_puts_total{result=\"conflict_retry\"} 0\n"
            "ocsp_agent_cluster_puts_total{result=\"unavailable\"} 1\n"
            "ocsp_agent_cluster_puts_total{result=\"timeout\"} 0\n";
        oa_buf_t b;

        /* The whole exposition, byte for byte: names, types, help and label sets. */
        oa_buf_init(&b);
        assert_int_equal(oa_cluster_metrics(a.c, &b), 0);
        assert_int_equal(b.len, strlen(want));
        assert_memory_equal(b.data, want, b.len);
        oa_buf_free(&b);
    }
    close_all_and_finish(&loop, nodes);
}

/* ---- a PUT confirmed after its time limit, and a store that comes back empty ---- */

typedef struct version_wait_s {
    node_t *n[3]; /* NULL-terminated */
    uint64_t v;
} version_wait_t;

static int pred_versions(void *arg)
{
    version_wait_t *w = arg;
    int i;

    for (i = 0; w->n[i] != NULL; i++)
        if (oa_cluster_conf_version(w->n[i]->c) != w->v)
            return 0;
    return 1;
}

static int pred_closed(void *arg)
{
    return ((node_t *)arg)->closed;
}

static int pred_fired(void *arg)
{
    return ((put_result_t *)arg)->fired > 0;
}

/* One PUT on n, waited for; returns its outcome (OA_OK once the store confirmed it). */
static oa_errcode_t put_and_wait(uv_loop_t *loop, node_t *n, const char *body, const char *user)
{
    put_result_t r = {0, 0};
    oa_error_t err;
    oa_cluster_put_t rc = conf_put(n->c, body, user, &r, &err);

    if (rc != OA_CLUSTER_PUT_STARTED)
        fail_msg("PUT %s: returned %d (%s)", body, (int)rc, rc == OA_CLUSTER_PUT_FAILED ? err.text : "nothing to change");
    assert_true(run_until(loop, pred_fired, &r, 4000));
    assert_int_equal(r.fired, 1);
    return r.code;
}

/* Closes one node and runs the loop until it is gone. */
static void node_stop(uv_loop_t *loop, node_t *n)
{
    node_close(n);
    assert_true(run_until(loop, pred_closed, n, 3000));
}

static char *stored_field(const char *field)
{
    return redis_get("HGET " OA_CLUSTER_KEY_PREFIX "conf %s", field);
}

static void assert_stored(const char *field, const char *want)
{
    char *v = stored_field(field);

    if (v == NULL)
        fail_msg("the store holds no conf field %s", field);
    if (strcmp(v, want) != 0)
        fail_msg("the store's conf field %s is \"%s\", expected \"%s\"", field, v, want);
    free(v);
}

/* An integer member of the configuration the store holds, or -1. */
static long long stored_conf_int(const char *key)
{
    char *text = stored_field("conf");
    json_t *o = text != NULL ? json_loads(text, 0, NULL) : NULL;
    json_t *v = json_object_get(o, key);
    long long out = json_is_integer(v) ? (long long)json_integer_value(v) : -1;

    json_decref(o);
    free(text);
    return out;
}

/* A conf message as a script publishes it, with the stored configuration but query_frequency set to qf. */
static char *conf_message(const char *epoch, int version, const char *node, int qf)
{
    char *text = stored_field("conf");
    json_t *conf = text != NULL ? json_loads(text, 0, NULL) : NULL;
    json_t *msg;
    char *out;

    assert_non_null(conf);
    json_object_set_new(conf, "query_frequency", json_integer(qf));
    msg = json_pack("{s:s, s:s, s:i, s:s, s:o}", "type", "conf", "epoch", epoch, "version", version, "node", node,
                    "conf", conf);
    assert_non_null(msg);
    out = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    free(text);
    return out;
}

/* The node's version file: its version, and its epoch copied into epoch. */
static long long version_file(const char *dir, char epoch[64])
{
    char path[256];
    json_error_t e;
    json_t *o;
    const char *s;
    long long v;

    snprintf(path, sizeof(path), "%s/%s", dir, OA_CLUSTER_VERSION_FILE);
    o = json_load_file(path, 0, &e);
    if (o == NULL)
        fail_msg("%s: %s", path, e.text);
    s = json_string_value(json_object_get(o, "conf_epoch"));
    snprintf(epoch, 64, "%s", s != NULL ? s : "");
    v = json_is_integer(json_object_get(o, "conf_version"))
            ? (long long)json_integer_value(json_object_get(o, "conf_version"))
            : -1;
    json_decref(o);
    return v;
}

/* An epoch is 16 lowercase hexadecimal digits. */
static void assert_epoch(const char *s)
{
    size_t i;

    assert_int_equal(strlen(s), 16);
    for (i = 0; i < 16; i++)
        if (strchr("0123456789abcdef", s[i]) == NULL)
            fail_msg("not an epoch: %s", s);
}

/* The epoch the store holds now, checked to be one and, when previous is not NULL, to differ from it. The caller
 * frees it. */
static char *stored_epoch(const char *previous)
{
    char *epoch = stored_field("epoch");

    assert_non_null(epoch);
    assert_epoch(epoch);
    if (previous != NULL)
        assert_string_not_equal(epoch, previous);
    return epoch;
}

/* The store's configuration record: its version, its "seeded" mark and, when epoch is not NULL, its epoch. */
static void assert_store_record(const char *version, const char *seeded, const char *epoch)
{
    assert_stored("version", version);
    assert_stored("seeded", seeded);
    if (epoch != NULL)
        assert_stored("epoch", epoch);
}

static void remove_data_dir(const char *dir)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, OA_CLUSTER_VERSION_FILE);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

static void test_put_reply_after_timeout(void **state)
{
    /* Timers long enough that the store's pause is not taken for an outage: only the PUT's own 3 s limit runs out. */
    static const node_opts_t slow = {NULL, NULL, 1000, 8000, 8000, NULL};
    static const char body[] = "{\"query_frequency\": 777}";
    uv_loop_t loop;
    node_t a, b;
    node_t *nodes[] = {&a, &b, NULL};
    node_t *first[] = {&a, NULL};
    version_wait_t w = {{&a, &b, NULL}, 1};
    put_result_t r = {0, 0};
    oa_error_t err;
    char *text, *msg, epoch[64];

    (void)state;
    NEED_REDIS();
    flush_store();
    uv_loop_init(&loop);
    node_start_ex(&loop, &a, "a", NULL, redis_port, &slow);
    assert_true(run_until(&loop, pred_available, first, 3000));
    node_start_ex(&loop, &b, "b", NULL, redis_port, &slow);
    assert_true(run_until(&loop, pred_available, nodes, 3000));
    run_until(&loop, pred_never, NULL, 200);
    assert_int_equal(a.conf_calls, 0);
    assert_int_equal(b.conf_calls, 0);

    /* The store holds every client for 3.3 s: the write commits then, and its reply comes 0.3 s after the PUT's
     * limit, which answered "unavailable". */
    text = redis_get("CLIENT PAUSE %s ALL", "3300");
    assert_string_equal(text, "OK");
    free(text);
    assert_int_equal(conf_put(a.c, body, "alice", &r, &err), OA_CLUSTER_PUT_STARTED);
    assert_true(run_until(&loop, pred_fired, &r, 4000));
    assert_int_equal(r.fired, 1);
    assert_int_equal(r.code, OA_E_STORE_UNAVAILABLE);
    assert_int_equal(a.conf_calls, 0);
    assert_int_equal(oa_cluster_conf_version(a.c), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"timeout\"}"), 1);

    /* Once the store answers, the node that took the PUT has the write in force like every other node: once, under
     * the PUT's user, whichever of the reply and its own message came first. */
    assert_true(run_until(&loop, pred_versions, &w, 2000));
    run_until(&loop, pred_never, NULL, 300);
    assert_int_equal(r.fired, 1);
    assert_int_equal(a.conf.query_frequency, 777);
    assert_int_equal(a.conf_calls, 1);
    assert_string_equal(a.last_user, "alice");
    assert_int_equal(b.conf.query_frequency, 777);
    assert_int_equal(b.conf_calls, 1);
    assert_string_equal(b.last_user, "");
    assert_stored("version", "1");
    assert_int_equal(stored_conf_int("query_frequency"), 777);
    /* No outage was declared: the late reply itself did it. A round counts once, as what its answer said. */
    assert_true(oa_cluster_available(a.c));
    assert_int_equal(metric(&a, "ocsp_agent_cluster_store_disconnects_total"), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"committed\"}"), 0);
    assert_int_equal(metric(&a, "ocsp_agent_cluster_puts_total{result=\"timeout\"}"), 1);

    /* A conf message of the node's own with a version above its own (a write whose reply it never saw) is applied
     * too, with no user; one at or below its version is not. */
    text = stored_epoch(NULL);
    snprintf(epoch, sizeof(epoch), "%s", text);
    free(text);
    msg = conf_message(epoch, 2, "a", 778);
    free(redis_get("PUBLISH " OA_CLUSTER_KEY_PREFIX "events %s", msg));
    free(msg);
    w.v = 2;
    assert_true(run_until(&loop, pred_versions, &w, 1000));
    assert_int_equal(a.conf.query_frequency, 778);
    assert_int_equal(a.conf_calls, 2);
    assert_string_equal(a.last_user, "");
    assert_int_equal(b.conf.query_frequency, 778);
    msg = conf_message(epoch, 2, "a", 779);
    free(redis_get("PUBLISH " OA_CLUSTER_KEY_PREFIX "events %s", msg));
    free(msg);
    msg = conf_message(epoch, 1, "b", 780);
    free(redis_get("PUBLISH " OA_CLUSTER_KEY_PREFIX "events %s", msg));
    free(msg);
    run_until(&loop, pred_never, NULL, 300);
    assert_int_equal(a.conf.query_frequency, 778);
    assert_int_equal(a.conf_calls, 2);
    assert_int_equal(b.conf.query_frequency, 778);
    assert_int_equal(b.conf_calls, 2);
    /* "b" came after the seed: the PUT's message and the three published here. */
    assert_int_equal(metric(&b, "ocsp_agent_cluster_messages_received_total{type=\"conf\"}"), 4);
    close_all_and_finish(&loop, nodes);
}

static void test_seed_after_empty_store(void **state)
{
    char dir_old[] = "/tmp/oa-cluster-old-XXXXXX", dir_new[] = "/tmp/oa-cluster-new-XXXXXX";
    node_opts_t o_old = {NULL, NULL, 0, 0, 0, NULL}, o_new = {NULL, NULL, 0, 0, 0, NULL};
    oa_conf_t conf_old, conf_new;
    uv_loop_t loop;
    node_t old, nw;
    node_t *one_old[] = {&old, NULL}, *one_new[] = {&nw, NULL}, *both[] = {&old, &nw, NULL};
    version_wait_t w = {{&nw, NULL, NULL}, 1};
    char e_old[64], e_new[64], *epoch, *epoch2;

    (void)state;
    NEED_REDIS();
    assert_non_null(mkdtemp(dir_old));
    assert_non_null(mkdtemp(dir_new));
    o_old.data_dir = dir_old;
    o_new.data_dir = dir_new;
    flush_store();
    uv_loop_init(&loop);

    /* Two nodes; "old" leaves at version 1, "new" goes on to version 3. */
    node_start_ex(&loop, &old, "old", NULL, redis_port, &o_old);
    node_start_ex(&loop, &nw, "new", NULL, redis_port, &o_new);
    assert_true(run_until(&loop, pred_available, both, 3000));
    assert_int_equal(put_and_wait(&loop, &nw, "{\"query_frequency\": 100}", "u"), OA_OK);
    w.n[0] = &old;
    assert_true(run_until(&loop, pred_versions, &w, 1000));
    node_stop(&loop, &old);
    conf_old = old.conf;
    assert_int_equal(put_and_wait(&loop, &nw, "{\"query_frequency\": 200}", "u"), OA_OK);
    assert_int_equal(put_and_wait(&loop, &nw, "{\"query_frequency\": 300}", "u"), OA_OK);
    assert_int_equal(oa_cluster_conf_version(nw.c), 3);
    node_stop(&loop, &nw);
    conf_new = nw.conf;
    assert_int_equal(version_file(dir_old, e_old), 1);
    assert_int_equal(version_file(dir_new, e_new), 3);
    assert_epoch(e_old);
    assert_string_equal(e_old, e_new);

    /* The store comes back empty. The node that was away comes first and seeds its version 1 under a new epoch,
     * marked "seeded, nothing written since". */
    flush_store();
    o_old.conf = &conf_old;
    node_start_ex(&loop, &old, "old", NULL, redis_port, &o_old);
    assert_true(run_until(&loop, pred_available, one_old, 3000));
    assert_store_record("1", "1", NULL);
    assert_int_equal(stored_conf_int("query_frequency"), 100);
    epoch = stored_epoch(e_new);
    assert_int_equal(version_file(dir_old, e_old), 1);
    assert_string_equal(e_old, epoch);
    assert_int_equal(old.conf_calls, 0);

    /* A PUT through it is acknowledged: version 2, and the mark is gone. */
    assert_int_equal(put_and_wait(&loop, &old, "{\"recovery_max_tries\": 9}", "carol"), OA_OK);
    assert_store_record("2", "0", NULL);
    assert_int_equal(old.conf.recovery_max_tries, 9);

    /* The better-informed node reconnects with version 3: its seed may not replace the acknowledged write; it adopts
     * the store's configuration, whose version is lower, because the epoch differs. */
    o_new.conf = &conf_new;
    node_start_ex(&loop, &nw, "new", NULL, redis_port, &o_new);
    assert_true(run_until(&loop, pred_available, one_new, 3000));
    w.n[0] = &nw;
    w.v = 2;
    assert_true(run_until(&loop, pred_versions, &w, 1000));
    run_until(&loop, pred_never, NULL, 200);
    assert_store_record("2", "0", epoch);
    assert_int_equal(stored_conf_int("query_frequency"), 100);
    assert_int_equal(stored_conf_int("recovery_max_tries"), 9);
    assert_int_equal(nw.conf.query_frequency, 100);
    assert_int_equal(nw.conf.recovery_max_tries, 9);
    assert_int_equal(nw.conf_calls, 1);
    assert_string_equal(nw.last_user, "");
    assert_int_equal(version_file(dir_new, e_new), 2);
    assert_string_equal(e_new, epoch);
    assert_int_equal(oa_cluster_conf_version(old.c), 2);
    assert_int_equal(old.conf_calls, 1);
    assert_int_equal(old.conf.query_frequency, 100);

    /* Nothing written after a restart: the better-informed seed wins. "new" leaves at version 2, "old" goes on to
     * version 3 (query_frequency 400); the store comes back empty; "new" seeds version 2 first, then "old" replaces
     * it with version 3 in the same epoch, and "new" applies that from the message. */
    node_stop(&loop, &nw);
    conf_new = nw.conf;
    assert_int_equal(put_and_wait(&loop, &old, "{\"query_frequency\": 400}", "u"), OA_OK);
    node_stop(&loop, &old);
    conf_old = old.conf;
    flush_store();
    node_start_ex(&loop, &nw, "new", NULL, redis_port, &o_new);
    assert_true(run_until(&loop, pred_available, one_new, 3000));
    assert_store_record("2", "1", NULL);
    epoch2 = stored_epoch(epoch);
    node_start_ex(&loop, &old, "old", NULL, redis_port, &o_old);
    assert_true(run_until(&loop, pred_available, both, 3000));
    w.v = 3;
    assert_true(run_until(&loop, pred_versions, &w, 1000));
    run_until(&loop, pred_never, NULL, 200);
    assert_store_record("3", "1", epoch2);
    assert_int_equal(stored_conf_int("query_frequency"), 400);
    assert_int_equal(stored_conf_int("recovery_max_tries"), 9);
    assert_int_equal(nw.conf.query_frequency, 400);
    assert_int_equal(nw.conf_calls, 1);
    assert_int_equal(old.conf_calls, 0);
    assert_int_equal(oa_cluster_conf_version(old.c), 3);
    assert_int_equal(version_file(dir_new, e_new), 3);
    assert_string_equal(e_new, epoch2);
    assert_int_equal(version_file(dir_old, e_old), 3);
    assert_string_equal(e_old, epoch2);

    /* The store emptied under live connections: the next PUT finds it empty and starts a new epoch itself, at the
     * next version, already written; the other node adopts it from the message. */
    free(epoch);
    flush_store();
    assert_int_equal(put_and_wait(&loop, &nw, "{\"response_timeout\": 7}", "u"), OA_OK);
    assert_store_record("4", "0", NULL);
    epoch = stored_epoch(epoch2);
    assert_int_equal(stored_conf_int("response_timeout"), 7);
    assert_int_equal(stored_conf_int("query_frequency"), 400);
    w.n[0] = &old;
    w.v = 4;
    assert_true(run_until(&loop, pred_versions, &w, 1000));
    assert_int_equal(old.conf.response_timeout, 7);
    assert_int_equal(version_file(dir_old, e_old), 4);
    assert_string_equal(e_old, epoch);
    free(epoch);
    free(epoch2);
    close_all_and_finish(&loop, both);
    remove_data_dir(dir_old);
    remove_data_dir(dir_new);
}

/* ---- the etcd store ---- */

static int pred_put_fired_one(void *arg)
{
    return ((put_result_t *)arg)->fired > 0;
}

/*
 * The same module on etcd: a PUT reaches the other node through the watch; two PUTs at once both commit, at two
 * versions (the compare on mod_revision makes the later one retry on top of the other); one poller; and the fence:
 * a poller frozen past its session, whose successor took the lease, cannot store a record any more, however it
 * still believes itself the poller.
 */
static void test_etcd_conf_lease_fence(void **state)
{
    uv_loop_t loop;
    node_t a, b;
    node_t *pair[] = {&a, &b, NULL};
    node_t *poller, *follower;
    node_opts_t no = {NULL, NULL, 0, 0, 0, etcd_url};
    put_result_t res[2] = {{0, 0}, {0, 0}};
    conf_wait_t w = {NULL, 1};
    oa_ocsp_result_t r;
    unsigned char der1[] = {0x30, 0x03, 0x0a, 0x01, 0x01}, der2[] = {0x30, 0x03, 0x0a, 0x01, 0x02},
                  der3[] = {0x30, 0x03, 0x0a, 0x01, 0x03};
    oa_error_t err;
    char *out;

    (void)state;
    NEED_ETCD();
    free(etcdctl("del --prefix /ocsp-agent/"));
    uv_loop_init(&loop);
    node_start_ex(&loop, &a, "a", NULL, 0, &no);
    node_start_ex(&loop, &b, "b", NULL, 0, &no);
    assert_true(run_until(&loop, pred_available, pair, 5000));

    /* One PUT, seen by the other node; the store holds it at version 1. */
    assert_int_equal(conf_put(a.c, "{\"query_frequency\": 120}", "alice", &res[0], &err), OA_CLUSTER_PUT_STARTED);
    assert_true(run_until(&loop, pred_put_fired_one, &res[0], 5000));
    assert_int_equal(res[0].code, OA_OK);
    assert_int_equal(oa_cluster_conf_version(a.c), 1);
    w.n = &b;
    w.calls = 1;
    assert_true(run_until(&loop, pred_conf_calls, &w, 3000));
    assert_int_equal(b.conf.query_frequency, 120);
    out = etcdctl("get --print-value-only /ocsp-agent/conf");
    assert_non_null(strstr(out, "\"version\":1"));
    assert_non_null(strstr(out, "\"query_frequency\":120"));
    free(out);

    /* Two PUTs at once: both acknowledged, each at its own version, and both nodes end on the same one. */
    puts_at_once(&loop, &a, "{\"query_frequency\": 300}", &b, "{\"recovery_max_tries\": 7}", 5000);
    run_until(&loop, pred_never, NULL, 300);
    assert_int_equal(oa_cluster_conf_version(a.c), 3);
    assert_int_equal(oa_cluster_conf_version(b.c), 3);
    assert_int_equal(a.conf.query_frequency, 300);
    assert_int_equal(b.conf.query_frequency, 300);
    assert_int_equal(a.conf.recovery_max_tries, 7);
    assert_int_equal(b.conf.recovery_max_tries, 7);

    /* One poller; its record reaches the follower and is in the store under its name. */
    assert_true(run_until(&loop, pred_one_poller, pair, 5000));
    poller = a.poller ? &a : &b;
    follower = a.poller ? &b : &a;
    memset(&r, 0, sizeof(r));
    r.der = der1;
    r.der_len = sizeof(der1);
    oa_cluster_publish_result(poller->c, &r);
    assert_true(run_until(&loop, pred_status, follower, 3000));
    assert_memory_equal(follower->der, der1, sizeof(der1));

    /* The poller freezes (its heartbeats and lease requests stop, as in a process paused): its session expires, the
     * follower takes the lease and stores its own record. */
    uv_timer_stop(&poller->c->tick);
    assert_true(run_until(&loop, pred_poller, follower, 8000));
    assert_true(poller->poller); /* it still believes it */
    r.der = der2;
    oa_cluster_publish_result(follower->c, &r);
    run_until(&loop, pred_never, NULL, 300);
    out = etcdctl("get --print-value-only /ocsp-agent/status/" NO_CERTID);
    assert_non_null(strstr(out, follower == &a ? "\"node\":\"a\"" : "\"node\":\"b\""));
    free(out);

    /* The frozen poller's late write is refused by the store: the successor's record stays, and nothing reaches
     * the successor. */
    follower->status_calls = 0;
    r.der = der3;
    oa_cluster_publish_result(poller->c, &r);
    run_until(&loop, pred_never, NULL, 500);
    out = etcdctl("get --print-value-only /ocsp-agent/status/" NO_CERTID);
    assert_non_null(strstr(out, follower == &a ? "\"node\":\"a\"" : "\"node\":\"b\""));
    free(out);
    assert_int_equal(follower->status_calls, 0);
    assert_memory_equal(follower->der, der1, sizeof(der1));
    close_all_and_finish(&loop, pair);
}

/*
 * A watch that resumes from a revision etcd has compacted away: the node reads everything again, then watches from
 * there. The node's watch is stopped (as when its member went away), a change is written and the store compacted
 * meanwhile; the watch then starts again from an old revision, and the change it missed is put in force all the
 * same. Without the resynchronisation the node would never learn it: nothing else reads the configuration.
 */
static void test_etcd_watch_compacted(void **state)
{
    uv_loop_t loop;
    node_t a, b;
    node_t *pair[] = {&a, &b, NULL};
    node_opts_t no = {NULL, NULL, 0, 0, 0, etcd_url};
    put_result_t res = {0, 0};
    cluster_store_t *s;
    conf_wait_t w_conf = {NULL, 0};
    oa_error_t err;
    char cmd[128], *out;
    const char *p;

    (void)state;
    NEED_ETCD();
    free(etcdctl("del --prefix /ocsp-agent/"));
    uv_loop_init(&loop);
    node_start_ex(&loop, &a, "a", NULL, 0, &no);
    node_start_ex(&loop, &b, "b", NULL, 0, &no);
    assert_true(run_until(&loop, pred_available, pair, 5000));
    s = a.c->store;
    assert_non_null(s->watch);
    oa_etcd_watch_stop(s->watch);
    run_until(&loop, pred_never, NULL, 200);
    assert_null(s->watch);

    assert_int_equal(conf_put(b.c, "{\"query_frequency\": 777}", "bob", &res, &err), OA_CLUSTER_PUT_STARTED);
    assert_true(run_until(&loop, pred_put_fired_one, &res, 5000));
    assert_int_equal(res.code, OA_OK);
    run_until(&loop, pred_never, NULL, 300);
    assert_int_not_equal(a.conf.query_frequency, 777); /* no watch: a has not heard of it */

    out = etcdctl("get /ocsp-agent/conf -w json");
    p = strstr(out, "\"revision\":");
    assert_non_null(p);
    snprintf(cmd, sizeof(cmd), "compact %lld", strtoll(p + strlen("\"revision\":"), NULL, 10));
    free(out);
    free(etcdctl(cmd));

    /* The watch starts again from a revision that is gone (the next read of the records starts it). */
    s->watch_from = 1;
    assert_int_equal(oa_cluster_set_certid(a.c, "1111111111111111111111111111111111111111"), 0);
    w_conf.n = &a;
    w_conf.calls = a.conf_calls + 1;
    assert_true(run_until(&loop, pred_conf_calls, &w_conf, 5000));
    assert_int_equal(a.conf.query_frequency, 777);
    run_until(&loop, pred_never, NULL, 300); /* the records are read after the configuration, then it watches */
    assert_non_null(s->watch);
    close_all_and_finish(&loop, pair);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_etcd_url_parse),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_conf_put_propagates),
        cmocka_unit_test(test_lease_registry_status),
        cmocka_unit_test(test_state_invalidation_and_metrics),
        cmocka_unit_test(test_store_unreachable),
        cmocka_unit_test(test_put_reply_after_timeout),
        cmocka_unit_test(test_seed_after_empty_store),
        cmocka_unit_test(test_etcd_conf_lease_fence),
        cmocka_unit_test(test_etcd_watch_compacted),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
