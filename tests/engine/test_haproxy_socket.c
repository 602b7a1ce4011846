/*
 * The HAProxy runtime socket target, against a fake runtime API living on the same libuv loop. The fake listens on
 * a UNIX socket in a temporary directory or on 127.0.0.1, reads one command line per connection and answers the way
 * HAProxy 2.6 does: `set ssl ocsp-response <base64>` stores the response and answers "OCSP Response updated!",
 * `show ssl ocsp-response <id>` prints the stored response with OCSP_RESPONSE_print (empty lines as " ", the reply
 * ending with an empty line). Other modes misbehave in one scripted way each. Responses are real ones, built with
 * tests/support/testpki.h. The intervals are shortened with the target's OA_TEST_HAPROXY_* knobs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <uv.h>

#include "oa_delivery.h"
#include "oa_log.h"
#include "oa_util.h"
#include "testnet.h"
#include "testpki.h"

#define CHECK_MS    150
#define EXCHANGE_MS 300
#define BACKOFF_MS  100 /* the longest retry delay is then 500 ms */
#define SLACK_MS    400 /* for a busy machine */

/* ---- the fake runtime API ---- */

typedef enum fake_mode_e {
    FAKE_HAPROXY, /* behaves like HAProxy 2.6 */
    FAKE_CANNED,  /* answers every command with canned, then closes */
    FAKE_SILENT,  /* reads the command, never answers */
    FAKE_SLOW,    /* like FAKE_HAPROXY, 150 ms late */
} fake_mode_t;

typedef struct fake_s fake_t;

typedef struct fconn_s {
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } s;
    uv_timer_t timer;
    uv_write_t wreq;
    fake_t *fake;
    struct fconn_s *next;
    oa_buf_t in;
    oa_buf_t out;
    int pending; /* handles open */
    int closing;
    int answered;
} fconn_t;

struct fake_s {
    uv_loop_t *loop;
    int is_unix;
    char path[128];
    int port;
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } listener;
    int listening;
    fake_mode_t mode;
    const char *canned;
    size_t canned_len;

    fconn_t *conns;
    int open_conns, max_open_conns, connections;
    int sets, shows;
    oa_buf_t last_set; /* the last `set ssl ocsp-response` line, without its "\n" */
    unsigned char *held; /* the response "HAProxy" holds, DER */
    size_t held_len;
    char certid[300]; /* the one CertID "HAProxy" knows */
};

static void fconn_closed(uv_handle_t *h)
{
    fconn_t *c = h->data;
    fake_t *f = c->fake;
    fconn_t **pp;

    if (--c->pending > 0)
        return;
    for (pp = &f->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    f->open_conns--;
    oa_buf_free(&c->in);
    oa_buf_free(&c->out);
    free(c);
}

static void fconn_close(fconn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->s, fconn_closed);
    uv_close((uv_handle_t *)&c->timer, fconn_closed);
}

static void fconn_written(uv_write_t *req, int status)
{
    fconn_t *c = req->data;

    (void)status;
    /* HAProxy closes a non-interactive CLI connection after the reply. */
    fconn_close(c);
}

static void fconn_send(fconn_t *c, const void *data, size_t len)
{
    uv_buf_t buf;

    oa_buf_reset(&c->out);
    assert_int_equal(oa_buf_append(&c->out, data, len), 0);
    buf = uv_buf_init(c->out.data, (unsigned)c->out.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->s, &buf, 1, fconn_written) != 0)
        fconn_close(c);
}

/* HAProxy's `show ssl ocsp-response <id>`: OCSP_RESPONSE_print, empty lines written as " ", an empty line last. */
static void print_like_haproxy(const unsigned char *der, size_t len, oa_buf_t *out)
{
    const unsigned char *p = der;
    OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
    BIO *bio = BIO_new(BIO_s_mem());
    char *text, *line, *nl;
    long n;

    assert_non_null(resp);
    assert_non_null(bio);
    assert_true(OCSP_RESPONSE_print(bio, resp, 0) > 0);
    n = BIO_get_mem_data(bio, &text);
    line = text;
    while (line < text + n) {
        nl = memchr(line, '\n', (size_t)(text + n - line));
        if (nl == NULL)
            nl = text + n;
        if (nl == line)
            oa_buf_append_str(out, " ");
        else
            oa_buf_append(out, line, (size_t)(nl - line));
        oa_buf_append_str(out, "\n");
        line = nl + 1;
    }
    oa_buf_append_str(out, "\n");
    BIO_free(bio);
    OCSP_RESPONSE_free(resp);
}

static void fake_answer(fconn_t *c)
{
    fake_t *f = c->fake;
    const char *cmd = c->in.data;
    oa_buf_t reply;

    oa_buf_init(&reply);
    if (strncmp(cmd, "set ssl ocsp-response ", 22) == 0) {
        const char *b64 = cmd + 22;
        size_t b64_len = strlen(b64);
        unsigned char *der = malloc(b64_len + 1);
        int n;

        f->sets++;
        oa_buf_reset(&f->last_set);
        oa_buf_append_str(&f->last_set, cmd);
        assert_non_null(der);
        n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)b64_len);
        /* EVP_DecodeBlock counts the padding as bytes. */
        if (n > 0 && b64_len >= 1 && b64[b64_len - 1] == '=')
            n--;
        if (n > 0 && b64_len >= 2 && b64[b64_len - 2] == '=')
            n--;
        if (f->mode == FAKE_CANNED) {
            free(der);
            fconn_send(c, f->canned, f->canned_len);
            oa_buf_free(&reply);
            return;
        }
        if (n <= 0) {
            free(der);
            oa_buf_append_str(&reply, "'set ssl ocsp-response' received invalid base64 encoded response.\n\n");
        } else {
            free(f->held);
            f->held = der;
            f->held_len = (size_t)n;
            oa_buf_append_str(&reply, "OCSP Response updated!\n\n");
        }
    } else if (strncmp(cmd, "show ssl ocsp-response ", 23) == 0) {
        f->shows++;
        if (f->mode == FAKE_CANNED) {
            fconn_send(c, f->canned, f->canned_len);
            oa_buf_free(&reply);
            return;
        }
        if (f->certid[0] != '\0' && strcmp(cmd + 23, f->certid) != 0)
            oa_buf_append_str(&reply, "Certificate ID does not match any certificate.\n\n");
        else if (f->held == NULL)
            oa_buf_append_str(&reply, "\n");
        else
            print_like_haproxy(f->held, f->held_len, &reply);
    } else {
        oa_buf_append_str(&reply, "Unknown command.\n\n");
    }
    fconn_send(c, reply.data, reply.len);
    oa_buf_free(&reply);
}

static void fconn_late(uv_timer_t *timer)
{
    fake_answer(timer->data);
}

static void fconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base != NULL ? suggested : 0;
}

static void fconn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    fconn_t *c = s->data;
    char *nl;

    if (nread < 0) {
        fconn_close(c);
    } else if (nread > 0 && !c->answered) {
        oa_buf_append(&c->in, buf->base, (size_t)nread);
        nl = memchr(c->in.data, '\n', c->in.len);
        if (nl != NULL) {
            *nl = '\0';
            c->answered = 1;
            if (c->fake->mode == FAKE_SLOW)
                uv_timer_start(&c->timer, fconn_late, 150, 0);
            else if (c->fake->mode != FAKE_SILENT)
                fake_answer(c);
            else if (strncmp(c->in.data, "set ", 4) == 0)
                c->fake->sets++;
        }
    }
    free(buf->base);
}

static void fake_accept(uv_stream_t *server, int status)
{
    fake_t *f = server->data;
    fconn_t *c;

    assert_int_equal(status, 0);
    c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fake = f;
    if (f->is_unix)
        uv_pipe_init(f->loop, &c->s.pipe, 0);
    else
        uv_tcp_init(f->loop, &c->s.tcp);
    uv_timer_init(f->loop, &c->timer);
    c->s.pipe.data = c;
    c->timer.data = c;
    c->pending = 2;
    c->next = f->conns;
    f->conns = c;
    f->connections++;
    if (++f->open_conns > f->max_open_conns)
        f->max_open_conns = f->open_conns;
    if (uv_accept(server, (uv_stream_t *)&c->s) != 0 ||
        uv_read_start((uv_stream_t *)&c->s, fconn_alloc, fconn_read) != 0)
        fconn_close(c);
}

/* Starts listening: on f->path when is_unix, else on 127.0.0.1:f->port (0 picks a port, kept in f->port). */
static void fake_listen(fake_t *f)
{
    if (f->is_unix) {
        unlink(f->path);
        assert_int_equal(uv_pipe_init(f->loop, &f->listener.pipe, 0), 0);
        assert_int_equal(uv_pipe_bind(&f->listener.pipe, f->path), 0);
    } else {
        struct sockaddr_in a;
        struct sockaddr_storage got;
        int len = sizeof(got);

        assert_int_equal(uv_tcp_init(f->loop, &f->listener.tcp), 0);
        uv_ip4_addr("127.0.0.1", f->port, &a);
        assert_int_equal(uv_tcp_bind(&f->listener.tcp, (const struct sockaddr *)&a, 0), 0);
        uv_tcp_getsockname(&f->listener.tcp, (struct sockaddr *)&got, &len);
        f->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    }
    f->listener.pipe.data = f;
    assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 16, fake_accept), 0);
    f->listening = 1;
}

/* Stops listening and drops every open connection (what a HAProxy that stops does). */
static void fake_stop(fake_t *f)
{
    fconn_t *c;

    for (c = f->conns; c != NULL; c = c->next)
        fconn_close(c);
    if (f->listening) {
        uv_close((uv_handle_t *)&f->listener, NULL);
        f->listening = 0;
        if (f->is_unix)
            unlink(f->path);
    }
}

static void fake_free(fake_t *f)
{
    fake_stop(f);
    oa_buf_free(&f->last_set);
    free(f->held);
    f->held = NULL;
}

/* ---- the test bench ---- */

typedef struct bench_s {
    uv_loop_t loop;
    uv_timer_t tick;
    char dir[OA_TESTPKI_DIR_MAX];
    oa_testpki_t pki;
    oa_delivery_t *d;
    fake_t fake;
    char spec[160];
    FILE *log;
    int closed;
} bench_t;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void bench_init(bench_t *b, int is_unix)
{
    oa_delivery_options_t opts = {"node-1", "/nonexistent/ocsp.der"};

    memset(b, 0, sizeof(*b));
    assert_int_equal(uv_loop_init(&b->loop), 0);
    /* Keeps uv_run(UV_RUN_ONCE) returning often enough to look at the state. */
    uv_timer_init(&b->loop, &b->tick);
    uv_timer_start(&b->tick, on_tick, 5, 5);
    assert_int_equal(oa_testpki_tmpdir(b->dir), 0);
    assert_int_equal(oa_testpki_init(&b->pki, 0x1001, NULL), 0);
    b->fake.loop = &b->loop;
    b->fake.is_unix = is_unix;
    oa_testpki_path(b->fake.path, sizeof(b->fake.path), b->dir, "admin.sock");
    if (is_unix)
        snprintf(b->spec, sizeof(b->spec), "%s", b->fake.path);
    b->log = tmpfile();
    assert_non_null(b->log);
    oa_log_setup(OA_LOG_TEXT, OA_LOG_INFO, b->log);
    assert_int_equal(oa_delivery_new(&b->loop, &opts, &b->d), 0);
}

static void add_target(bench_t *b)
{
    oa_error_t err;

    if (!b->fake.is_unix)
        snprintf(b->spec, sizeof(b->spec), "127.0.0.1:%d", b->fake.port);
    assert_int_equal(oa_delivery_add_haproxy_socket(b->d, b->spec, &err), 0);
}

static void on_delivery_closed(void *arg)
{
    ((bench_t *)arg)->closed = 1;
}

static void bench_run_ms(bench_t *b, unsigned ms)
{
    uint64_t end;

    uv_update_time(&b->loop);
    end = uv_now(&b->loop) + ms;
    while (uv_now(&b->loop) < end)
        uv_run(&b->loop, UV_RUN_ONCE);
}

/* Runs the loop until pred(b) holds or ms pass. Returns whether pred held. */
static int bench_run_until(bench_t *b, int (*pred)(bench_t *b), unsigned ms)
{
    uint64_t end;

    uv_update_time(&b->loop);
    end = uv_now(&b->loop) + ms;
    while (!pred(b) && uv_now(&b->loop) < end)
        uv_run(&b->loop, UV_RUN_ONCE);
    return pred(b);
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void bench_free(bench_t *b)
{
    if (b->d != NULL) {
        oa_delivery_close(b->d, on_delivery_closed, b);
        b->d = NULL;
        while (!b->closed)
            uv_run(&b->loop, UV_RUN_ONCE);
    }
    fake_free(&b->fake);
    uv_close((uv_handle_t *)&b->tick, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    uv_walk(&b->loop, walk_close, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&b->loop), 0);
    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);
    fclose(b->log);
    oa_testpki_free(&b->pki);
    oa_testpki_rmdir(b->dir);
}

/* A real response for the bench's leaf, nextUpdate next_offset seconds from now (serial_offset makes a different
 * CertID when not 0). */
static void make_staple(bench_t *b, long next_offset, int cert_status, oa_ocsp_result_t *out)
{
    oa_testpki_resp_opts_t o;
    unsigned char *der;
    size_t len;
    time_t now = time(NULL);

    oa_testpki_resp_opts_init(&o, &b->pki);
    o.now = now;
    o.next_update_offset = next_offset;
    o.cert_status = cert_status;
    assert_int_equal(oa_testpki_response(&o, &der, &len), 0);
    memset(out, 0, sizeof(*out));
    out->cert_status = cert_status == V_OCSP_CERTSTATUS_REVOKED ? OA_CERT_REVOKED : OA_CERT_GOOD;
    out->produced_at = now - 60;
    out->this_update = now - 60;
    out->next_update = now + next_offset;
    out->revocation_reason = -1;
    out->der = der;
    out->der_len = len;
}

/* The target's status object (the bench has one target): state and last_error into the buffers. */
static void target_status(bench_t *b, char *state, size_t state_len, char *error, size_t error_len)
{
    oa_delivery_status_t st;

    assert_int_equal(oa_delivery_snapshot(b->d, &st), 0);
    assert_int_equal(st.count, 1);
    snprintf(state, state_len, "%s", oa_dtarget_state_name(st.targets[0].state));
    snprintf(error, error_len, "%s", st.targets[0].last_error != NULL ? st.targets[0].last_error : "");
    oa_delivery_status_free(&st);
}

static int is_state(bench_t *b, const char *want)
{
    char state[32], error[512];

    target_status(b, state, sizeof(state), error, sizeof(error));
    return strcmp(state, want) == 0;
}

static int delivered(bench_t *b)
{
    return is_state(b, "delivered");
}

static int failed(bench_t *b)
{
    return is_state(b, "failed");
}

static void assert_error_contains(bench_t *b, const char *want)
{
    char state[32], error[512];

    target_status(b, state, sizeof(state), error, sizeof(error));
    if (strstr(error, want) == NULL)
        fail_msg("last_error \"%s\" does not contain \"%s\"", error, want);
}

static int log_contains(bench_t *b, const char *want)
{
    char buf[65536];
    size_t n;

    fflush(b->log);
    rewind(b->log);
    n = fread(buf, 1, sizeof(buf) - 1, b->log);
    buf[n] = '\0';
    fseek(b->log, 0, SEEK_END);
    return strstr(buf, want) != NULL;
}

/* The hex of the DER CertID of res's single response, as HAProxy lists it. */
static void certid_hex(const oa_ocsp_result_t *res, char *out)
{
    const unsigned char *p = res->der;
    OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)res->der_len);
    OCSP_BASICRESP *basic = OCSP_response_get1_basic(resp);
    unsigned char buf[128], *q = buf;
    int n, i;

    n = i2d_OCSP_CERTID(OCSP_SINGLERESP_get0_id(OCSP_resp_get0(basic, 0)), &q);
    assert_true(n > 0);
    for (i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", buf[i]);
    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
}

static void expect_push_line(const fake_t *f, const oa_ocsp_result_t *res)
{
    char *b64 = malloc(4 * ((res->der_len + 2) / 3) + 32);
    char *want;

    assert_non_null(b64);
    EVP_EncodeBlock((unsigned char *)b64, res->der, (int)res->der_len);
    want = malloc(strlen(b64) + 32);
    assert_non_null(want);
    sprintf(want, "set ssl ocsp-response %s", b64);
    assert_non_null(f->last_set.data);
    assert_string_equal(f->last_set.data, want);
    free(want);
    free(b64);
}

/* ---- the tests ---- */

static void push_delivered(int is_unix)
{
    bench_t b;
    oa_ocsp_result_t res;
    oa_delivery_status_t list;
    char name[200];

    bench_init(&b, is_unix);
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    certid_hex(&res, b.fake.certid);
    assert_int_equal(oa_delivery_snapshot(b.d, &list), 0);
    snprintf(name, sizeof(name), "haproxy:%s", b.spec);
    assert_string_equal(list.targets[0].target, name);
    oa_delivery_status_free(&list);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, delivered, 2000));
    assert_true(oa_delivery_all_delivered(b.d));
    assert_int_equal(b.fake.sets, 1);
    expect_push_line(&b.fake, &res);
    assert_int_equal(b.fake.held_len, res.der_len);
    assert_memory_equal(b.fake.held, res.der, res.der_len);
    assert_true(log_contains(&b, "event=staple_delivered"));

    /* Checks follow; HAProxy holds the response, so nothing is pushed again. */
    bench_run_ms(&b, CHECK_MS * 4);
    assert_true(b.fake.shows >= 2);
    assert_int_equal(b.fake.sets, 1);
    assert_int_equal(b.fake.max_open_conns, 1);
    assert_true(delivered(&b));
    assert_false(log_contains(&b, "staple_redelivered"));
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

static void test_push_unix(void **state)
{
    (void)state;
    push_delivered(1);
}

static void test_push_tcp(void **state)
{
    (void)state;
    push_delivered(0);
}

static void test_target_name_and_specs(void **state)
{
    static const char *const bad[] = {"127.0.0.1", "10.0.0.1:9999", "localhost:9999", "[::2]:80", "127.0.0.1:0",
                                      "127.0.0.1:70000", "[::1]80", ""};
    bench_t b;
    oa_error_t err;
    oa_delivery_status_t list;
    size_t i;

    (void)state;
    bench_init(&b, 0);
    for (i = 0; i < OA_ARRAY_SIZE(bad); i++) {
        assert_int_equal(oa_delivery_add_haproxy_socket(b.d, bad[i], &err), -1);
        assert_int_equal(err.code, OA_E_BAD_OPTION);
    }
    assert_int_equal(oa_delivery_add_haproxy_socket(b.d, "[::1]:9999", &err), 0);
    assert_int_equal(oa_delivery_add_haproxy_socket(b.d, "/run/haproxy/admin.sock", &err), 0);
    assert_int_equal(oa_delivery_snapshot(b.d, &list), 0);
    assert_int_equal(list.count, 2);
    assert_string_equal(list.targets[0].target, "haproxy:[::1]:9999");
    assert_string_equal(list.targets[1].target, "haproxy:/run/haproxy/admin.sock");
    assert_string_equal(oa_dtarget_state_name(list.targets[1].state), "pending");
    oa_delivery_status_free(&list);
    bench_free(&b);
}

/* A canned reply to the push: the target fails with the sentence, and retries. */
static void canned_failure(const char *reply, size_t reply_len, const char *want)
{
    bench_t b;
    oa_ocsp_result_t res;

    bench_init(&b, 1);
    b.fake.mode = FAKE_CANNED;
    b.fake.canned = reply;
    b.fake.canned_len = reply_len;
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, failed, 2000));
    assert_error_contains(&b, want);
    assert_true(log_contains(&b, "event=staple_delivery_failed"));
    /* Retried with the backoff, logged once. */
    bench_run_ms(&b, 400);
    assert_true(b.fake.sets >= 2);
    assert_true(failed(&b));
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

static void test_error_reply(void **state)
{
    static const char reply[] = "OCSP single response: Certificate ID does not match any certificate or issuer.\n\n";

    (void)state;
    canned_failure(reply, sizeof(reply) - 1,
                   "refused the response: \"OCSP single response: Certificate ID does not match any certificate or "
                   "issuer.\"");
}

static void test_garbage_reply(void **state)
{
    static const char reply[] = "\x01\x7fHTTP/1.1 400 \"Bad\"\r\nmore\n\n";

    (void)state;
    canned_failure(reply, sizeof(reply) - 1, "refused the response: \"??HTTP/1.1 400 ?Bad?\".");
}

static void test_huge_reply(void **state)
{
    size_t len = 70000;
    char *reply = malloc(len);

    (void)state;
    assert_non_null(reply);
    memset(reply, 'x', len);
    canned_failure(reply, len, "reply too large");
    free(reply);
}

static void test_close_mid_reply(void **state)
{
    static const char reply[] = "OCSP Resp";

    (void)state;
    canned_failure(reply, sizeof(reply) - 1, "closed the connection in the middle of the reply");
}

static void test_close_without_answer(void **state)
{
    (void)state;
    canned_failure("", 0, "closed the connection without answering");
}

static void test_missing_socket(void **state)
{
    bench_t b;
    oa_ocsp_result_t res;

    (void)state;
    bench_init(&b, 1);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, failed, 1000));
    assert_error_contains(&b, "does not exist");

    /* HAProxy comes up: served within the longest backoff (5 x BACKOFF_MS), plus an exchange. */
    fake_listen(&b.fake);
    assert_true(bench_run_until(&b, delivered, 5 * BACKOFF_MS + EXCHANGE_MS + SLACK_MS));
    expect_push_line(&b.fake, &res);
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

static void test_refused_tcp(void **state)
{
    bench_t b;
    oa_ocsp_result_t res;

    (void)state;
    bench_init(&b, 0);
    b.fake.port = oa_testnet_free_port();
    assert_true(b.fake.port > 0);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, failed, 1000));
    assert_error_contains(&b, "refused the connection");
    /* A few retries later, still one failure logged for the one reason. */
    bench_run_ms(&b, 600);
    fake_listen(&b.fake);
    assert_true(bench_run_until(&b, delivered, 5 * BACKOFF_MS + EXCHANGE_MS + SLACK_MS));
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

static void test_silent_deadline(void **state)
{
    bench_t b;
    oa_ocsp_result_t res;
    uint64_t start;

    (void)state;
    bench_init(&b, 1);
    b.fake.mode = FAKE_SILENT;
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    uv_update_time(&b.loop);
    start = uv_now(&b.loop);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, failed, 2000));
    assert_true(uv_now(&b.loop) - start >= EXCHANGE_MS - 10);
    assert_error_contains(&b, "did not answer within 300 ms (timed out while waiting for the reply)");
    /* The target closed its end: the fake sees the connection go. */
    bench_run_ms(&b, 50);
    assert_true(b.fake.max_open_conns == 1);
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

static int one_set(bench_t *b)
{
    return b->fake.sets >= 1;
}

static int two_sets(bench_t *b)
{
    return b->fake.sets >= 2 && delivered(b);
}

/* HAProxy restarted: it holds nothing; then someone pushed another response. Both are pushed again. */
static void test_reconciliation(void **state)
{
    bench_t b;
    oa_ocsp_result_t res, other;

    (void)state;
    bench_init(&b, 1);
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    certid_hex(&res, b.fake.certid);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, delivered, 2000));

    /* A restart: the process goes away, comes back with an empty .ocsp. */
    fake_stop(&b.fake);
    free(b.fake.held);
    b.fake.held = NULL;
    bench_run_ms(&b, CHECK_MS + 100);
    fake_listen(&b.fake);
    assert_true(bench_run_until(&b, two_sets, CHECK_MS + 5 * BACKOFF_MS + EXCHANGE_MS + SLACK_MS));
    assert_memory_equal(b.fake.held, res.der, res.der_len);
    assert_true(log_contains(&b, "event=staple_redelivered"));
    assert_true(log_contains(&b, "reason=\"haproxy lost the response\""));

    /* Someone else pushes another response for the same certificate. */
    make_staple(&b, 7200, V_OCSP_CERTSTATUS_GOOD, &other);
    free(b.fake.held);
    b.fake.held = malloc(other.der_len);
    assert_non_null(b.fake.held);
    memcpy(b.fake.held, other.der, other.der_len);
    b.fake.held_len = other.der_len;
    b.fake.sets = 0;
    assert_true(bench_run_until(&b, one_set, 2000));
    bench_run_ms(&b, 50);
    assert_int_equal(b.fake.sets, 1);
    assert_memory_equal(b.fake.held, res.der, res.der_len);
    assert_true(log_contains(&b, "reason=\"haproxy holds another response\""));
    assert_true(delivered(&b));

    /* From then on HAProxy holds it: no more pushes. */
    bench_run_ms(&b, CHECK_MS * 3);
    assert_int_equal(b.fake.sets, 1);
    assert_int_equal(b.fake.max_open_conns, 1);
    oa_ocsp_result_clear(&other);
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

/* Two staples in quick succession while the first push is in flight: one exchange at a time, the newest wins. */
static void test_newest_wins(void **state)
{
    bench_t b;
    oa_ocsp_result_t first, second;

    (void)state;
    bench_init(&b, 1);
    b.fake.mode = FAKE_SLOW;
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &first);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_REVOKED, &second);
    assert_int_equal(oa_delivery_set_staple(b.d, &first), OA_DELIVERY_STAPLE_SET);
    bench_run_ms(&b, 50);
    assert_int_equal(oa_delivery_set_staple(b.d, &second), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, two_sets, 2000));
    assert_int_equal(b.fake.max_open_conns, 1);
    assert_int_equal(b.fake.held_len, second.der_len);
    assert_memory_equal(b.fake.held, second.der, second.der_len);
    expect_push_line(&b.fake, &second);
    oa_ocsp_result_clear(&first);
    oa_ocsp_result_clear(&second);
    bench_free(&b);
}

/* close() with an exchange in flight: everything closes, the loop closes. */
static void test_close_in_flight(void **state)
{
    bench_t b;
    oa_ocsp_result_t res;

    (void)state;
    bench_init(&b, 0);
    b.fake.mode = FAKE_SILENT;
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 3600, V_OCSP_CERTSTATUS_GOOD, &res);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    while (b.fake.sets == 0)
        uv_run(&b.loop, UV_RUN_ONCE);
    oa_delivery_close(b.d, on_delivery_closed, &b);
    b.d = NULL;
    while (!b.closed)
        uv_run(&b.loop, UV_RUN_ONCE);
    oa_ocsp_result_clear(&res);
    bench_free(&b); /* asserts uv_loop_close() == 0 */
}

/* A staple HAProxy would not staple (nextUpdate less than 300 s away) is not pushed. */
static void test_refused_by_haproxy_rules(void **state)
{
    bench_t b;
    oa_ocsp_result_t res;

    (void)state;
    bench_init(&b, 1);
    fake_listen(&b.fake);
    add_target(&b);
    make_staple(&b, 200, V_OCSP_CERTSTATUS_GOOD, &res);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(failed(&b));
    assert_error_contains(&b, "HAProxy will not staple this response");
    bench_run_ms(&b, 300);
    assert_int_equal(b.fake.connections, 0);
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

/* The staple is removed: HAProxy cannot be told, so the error says until when it staples the old one; once that
 * time has come, the removal counts as delivered. */
static void test_removal(void **state)
{
    bench_t b;
    oa_ocsp_result_t res;
    char want[256], when[OA_RFC1123_LEN];
    int shows;

    (void)state;
    bench_init(&b, 1);
    fake_listen(&b.fake);
    add_target(&b);

    /* Nothing was ever pushed: nothing to drop. */
    assert_int_equal(oa_delivery_set_staple(b.d, NULL), OA_DELIVERY_STAPLE_SET);
    assert_true(delivered(&b));

    make_staple(&b, 302, V_OCSP_CERTSTATUS_GOOD, &res);
    assert_int_equal(oa_delivery_set_staple(b.d, &res), OA_DELIVERY_STAPLE_SET);
    assert_true(bench_run_until(&b, delivered, 2000));
    assert_int_equal(oa_delivery_set_staple(b.d, NULL), OA_DELIVERY_STAPLE_SET);
    assert_true(failed(&b));
    snprintf(want, sizeof(want),
             "HAProxy has no runtime command to drop a response; it staples the previous one until 300 s before its "
             "nextUpdate, %s",
             oa_time_rfc1123(res.next_update, when));
    assert_error_contains(&b, want);
    /* No checks while there is no staple. */
    shows = b.fake.shows;
    bench_run_ms(&b, CHECK_MS * 2);
    assert_int_equal(b.fake.shows, shows);
    /* 300 s before nextUpdate (about 2 s from now) HAProxy stops stapling it. */
    assert_true(bench_run_until(&b, delivered, 3500));
    oa_ocsp_result_clear(&res);
    bench_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_unix),
        cmocka_unit_test(test_push_tcp),
        cmocka_unit_test(test_target_name_and_specs),
        cmocka_unit_test(test_error_reply),
        cmocka_unit_test(test_garbage_reply),
        cmocka_unit_test(test_huge_reply),
        cmocka_unit_test(test_close_mid_reply),
        cmocka_unit_test(test_close_without_answer),
        cmocka_unit_test(test_missing_socket),
        cmocka_unit_test(test_refused_tcp),
        cmocka_unit_test(test_silent_deadline),
        cmocka_unit_test(test_reconciliation),
        cmocka_unit_test(test_newest_wins),
        cmocka_unit_test(test_close_in_flight),
        cmocka_unit_test(test_refused_by_haproxy_rules),
        cmocka_unit_test(test_removal),
    };
    char v[16];

    snprintf(v, sizeof(v), "%d", CHECK_MS);
    setenv("OA_TEST_HAPROXY_CHECK_MS", v, 1);
    snprintf(v, sizeof(v), "%d", EXCHANGE_MS);
    setenv("OA_TEST_HAPROXY_EXCHANGE_MS", v, 1);
    snprintf(v, sizeof(v), "%d", BACKOFF_MS);
    setenv("OA_TEST_HAPROXY_BACKOFF_MS", v, 1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
