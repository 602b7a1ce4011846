/*
 * TLS for the HTTP server: the context loader's errors, and requests over real TLS connections on 127.0.0.1.
 * The key and the self-signed certificate are made at test time in a temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include "oa_http.h"
#include "oa_tls.h"
#include "oa_log.h"

typedef struct pki_s {
    char dir[64];
    char cert[128];
    char key[128];
    char other_key[128];
    char missing[128];
    char cert2[128]; /* another certificate for localhost, serial 4343, with other_key */
    char both[128];  /* cert and cert2, what the clients trust */
} pki_t;

static pki_t pki;

static void write_key(EVP_PKEY *k, const char *path)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

/* A self-signed certificate for localhost (also valid for 127.0.0.1) with the given serial, key and common name
 * (distinct names, so that a client trusting both finds the right one). */
static X509 *self_signed(EVP_PKEY *key, long serial, const char *cn)
{
    X509 *x = X509_new();
    X509_NAME *name;
    X509_EXTENSION *ext;
    X509V3_CTX v3;

    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509_set_pubkey(x, key);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    return x;
}

static void write_cert(X509 *x, const char *path, const char *mode)
{
    FILE *f = fopen(path, mode);

    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
}

/* A P-256 key with a self-signed certificate for localhost (also valid for 127.0.0.1), and an unrelated key, which
 * has a certificate of its own for the replacement tests. */
static int make_pki(void **state)
{
    EVP_PKEY *key = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    X509 *x, *x2;

    (void)state;
    assert_non_null(key);
    assert_non_null(other);
    strcpy(pki.dir, "/tmp/oa-tls-XXXXXX");
    assert_non_null(mkdtemp(pki.dir));
    snprintf(pki.cert, sizeof(pki.cert), "%s/cert.pem", pki.dir);
    snprintf(pki.key, sizeof(pki.key), "%s/key.pem", pki.dir);
    snprintf(pki.other_key, sizeof(pki.other_key), "%s/other.pem", pki.dir);
    snprintf(pki.missing, sizeof(pki.missing), "%s/absent.pem", pki.dir);
    snprintf(pki.cert2, sizeof(pki.cert2), "%s/cert2.pem", pki.dir);
    snprintf(pki.both, sizeof(pki.both), "%s/both.pem", pki.dir);

    x = self_signed(key, 4242, "localhost");
    x2 = self_signed(other, 4343, "localhost-two");
    write_cert(x, pki.cert, "w");
    write_cert(x2, pki.cert2, "w");
    write_cert(x, pki.both, "w");
    write_cert(x2, pki.both, "a");
    write_key(key, pki.key);
    write_key(other, pki.other_key);
    X509_free(x);
    X509_free(x2);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    return 0;
}

static int remove_pki(void **state)
{
    (void)state;
    unlink(pki.cert);
    unlink(pki.key);
    unlink(pki.other_key);
    unlink(pki.cert2);
    unlink(pki.both);
    rmdir(pki.dir);
    return 0;
}

/* ---- the context loader ---- */

static void test_ctx_ok(void **state)
{
    SSL_CTX *ctx = NULL;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_tls_server_ctx_new(pki.cert, pki.key, &ctx, &err), 0);
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    assert_non_null(SSL_CTX_get0_certificate(ctx));
    SSL_CTX_free(ctx);
}

static void test_ctx_missing_cert(void **state)
{
    SSL_CTX *ctx = (SSL_CTX *)1;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_tls_server_ctx_new(pki.missing, pki.key, &ctx, &err), -1);
    assert_null(ctx);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, "The certificate file"));
    assert_non_null(strstr(err.text, pki.missing));
    assert_non_null(strstr(err.text, "No such file"));
    assert_int_equal(ERR_peek_error(), 0);
}

static void test_ctx_missing_key(void **state)
{
    SSL_CTX *ctx = NULL;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_tls_server_ctx_new(pki.cert, pki.missing, &ctx, &err), -1);
    assert_null(ctx);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, "The private key file"));
    assert_non_null(strstr(err.text, pki.missing));
    /* A certificate is not a key. */
    assert_int_equal(oa_tls_server_ctx_new(pki.cert, pki.cert, &ctx, &err), -1);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, pki.cert));
}

static void test_ctx_mismatched_key(void **state)
{
    SSL_CTX *ctx = NULL;
    oa_error_t err;

    (void)state;
    assert_int_equal(oa_tls_server_ctx_new(pki.cert, pki.other_key, &ctx, &err), -1);
    assert_null(ctx);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    assert_non_null(strstr(err.text, "does not match"));
    assert_non_null(strstr(err.text, pki.other_key));
    assert_non_null(strstr(err.text, pki.cert));
}

/* ---- serving ---- */

typedef struct fx_s {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    uv_async_t swap;       /* sets swap_ctx as the server's context, on the loop */
    SSL_CTX *swap_ctx;
    atomic_int swapped;
    oa_http_server_t *srv;
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
    int port;
    atomic_int done;
    atomic_int received;
} fx_t;

static void handler(oa_http_request_t *req, void *app)
{
    fx_t *fx = app;
    char body[256];

    atomic_fetch_add(&fx->received, 1);
    snprintf(body, sizeof(body), "{\"path\":\"%s\",\"tls\":%s,\"body\":\"%s\"}", req->path, req->tls ? "true" : "false",
             req->body != NULL ? req->body : "");
    oa_http_respond(req, 200, NULL, body, strlen(body));
}

static void on_stopped(void *arg)
{
    atomic_store(&((fx_t *)arg)->done, 1);
}

static void on_async(uv_async_t *a)
{
    fx_t *fx = a->data;

    oa_http_server_stop(fx->srv, on_stopped, fx);
    uv_close((uv_handle_t *)a, NULL);
    uv_close((uv_handle_t *)&fx->swap, NULL);
}

static void on_swap(uv_async_t *a)
{
    fx_t *fx = a->data;

    atomic_store(&fx->swapped, oa_http_server_set_tls(fx->srv, fx->swap_ctx) == 0 ? 1 : -1);
}

static void loop_thread(void *arg)
{
    fx_t *fx = arg;

    uv_run(&fx->loop, UV_RUN_DEFAULT);
}

static fx_t *fx_start(void)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    oa_error_t err;

    assert_non_null(fx);
    assert_int_equal(oa_tls_server_ctx_new(pki.cert, pki.key, &fx->server_ctx, &err), 0);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(
        oa_http_server_start(&fx->loop, "127.0.0.1", 0, NULL, fx->server_ctx, handler, fx, &fx->srv, &err), 0);
    /* The server holds its own reference. */
    SSL_CTX_free(fx->server_ctx);
    fx->server_ctx = NULL;
    fx->port = oa_http_server_port(fx->srv);
    fx->async.data = fx;
    assert_int_equal(uv_async_init(&fx->loop, &fx->async, on_async), 0);
    fx->swap.data = fx;
    assert_int_equal(uv_async_init(&fx->loop, &fx->swap, on_swap), 0);
    assert_int_equal(uv_thread_create(&fx->thread, loop_thread, fx), 0);

    fx->client_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(fx->client_ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(fx->client_ctx, pki.both, NULL), 1);
    SSL_CTX_set_verify(fx->client_ctx, SSL_VERIFY_PEER, NULL);
    return fx;
}

static void fx_stop(fx_t *fx)
{
    uv_async_send(&fx->async);
    assert_int_equal(uv_thread_join(&fx->thread), 0);
    assert_int_equal(atomic_load(&fx->done), 1);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    SSL_CTX_free(fx->client_ctx);
    free(fx);
}

static int tcp_connect(int port)
{
    struct sockaddr_in sa;
    struct timeval tv = {3, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

typedef struct tls_client_s {
    int fd;
    SSL *ssl;
    char buf[16384];
    size_t len;
} tls_client_t;

static void client_open(fx_t *fx, tls_client_t *cl)
{
    memset(cl, 0, sizeof(*cl));
    cl->fd = tcp_connect(fx->port);
    cl->ssl = SSL_new(fx->client_ctx);
    assert_non_null(cl->ssl);
    assert_int_equal(SSL_set1_host(cl->ssl, "localhost"), 1);
    SSL_set_tlsext_host_name(cl->ssl, "localhost");
    SSL_set_fd(cl->ssl, cl->fd);
    assert_int_equal(SSL_connect(cl->ssl), 1);
    assert_int_equal(SSL_get_verify_result(cl->ssl), X509_V_OK);
}

static void client_close(tls_client_t *cl)
{
    SSL_free(cl->ssl);
    close(cl->fd);
}

static void client_write(tls_client_t *cl, const char *s)
{
    assert_int_equal(SSL_write(cl->ssl, s, (int)strlen(s)), (int)strlen(s));
}

/* Reads one response; returns its body (in a static buffer) and its head in head. */
static const char *client_response(tls_client_t *cl, char *head, size_t headlen)
{
    static char body[4096];
    char *end;
    const char *cl_hdr;
    size_t hlen, clen;

    for (;;) {
        int n;

        end = memmem(cl->buf, cl->len, "\r\n\r\n", 4);
        if (end != NULL)
            break;
        n = SSL_read(cl->ssl, cl->buf + cl->len, (int)(sizeof(cl->buf) - cl->len - 1));
        assert_true(n > 0);
        cl->len += (size_t)n;
    }
    hlen = (size_t)(end - cl->buf) + 4;
    assert_true(hlen < headlen);
    memcpy(head, cl->buf, hlen);
    head[hlen] = '\0';
    cl_hdr = strstr(head, "Content-Length: ");
    assert_non_null(cl_hdr);
    clen = strtoul(cl_hdr + 16, NULL, 10);
    assert_true(clen < sizeof(body));
    while (cl->len < hlen + clen) {
        int n = SSL_read(cl->ssl, cl->buf + cl->len, (int)(sizeof(cl->buf) - cl->len - 1));

        assert_true(n > 0);
        cl->len += (size_t)n;
    }
    memcpy(body, cl->buf + hlen, clen);
    body[clen] = '\0';
    memmove(cl->buf, cl->buf + hlen + clen, cl->len - hlen - clen);
    cl->len -= hlen + clen;
    return body;
}

static void test_tls_get(void **state)
{
    fx_t *fx = fx_start();
    tls_client_t cl;
    char head[2048];
    const char *body;

    (void)state;
    client_open(fx, &cl);
    client_write(&cl, "GET /v1/ocsp HTTP/1.1\r\nHost: localhost\r\n\r\n");
    body = client_response(&cl, head, sizeof(head));
    assert_true(strncmp(head, "HTTP/1.1 200 OK\r\nServer: ocsp-agent\r\n", 37) == 0);
    assert_non_null(strstr(head, "\r\nConnection: keep-alive\r\n"));
    assert_string_equal(body, "{\"path\":\"/v1/ocsp\",\"tls\":true,\"body\":\"\"}");
    /* A second request on the same TLS connection. */
    client_write(&cl, "PUT /again HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    body = client_response(&cl, head, sizeof(head));
    assert_string_equal(body, "{\"path\":\"/again\",\"tls\":true,\"body\":\"abc\"}");
    client_close(&cl);
    fx_stop(fx);
}

static void test_tls_pipelined(void **state)
{
    fx_t *fx = fx_start();
    tls_client_t cl;
    char head[2048];

    (void)state;
    client_open(fx, &cl);
    client_write(&cl, "GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_string_equal(client_response(&cl, head, sizeof(head)), "{\"path\":\"/first\",\"tls\":true,\"body\":\"\"}");
    assert_string_equal(client_response(&cl, head, sizeof(head)), "{\"path\":\"/second\",\"tls\":true,\"body\":\"\"}");
    assert_int_equal(atomic_load(&fx->received), 2);
    client_close(&cl);
    fx_stop(fx);
}

static void test_tls_connection_close(void **state)
{
    fx_t *fx = fx_start();
    tls_client_t cl;
    char head[2048], byte;

    (void)state;
    client_open(fx, &cl);
    client_write(&cl, "GET /bye HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_string_equal(client_response(&cl, head, sizeof(head)), "{\"path\":\"/bye\",\"tls\":true,\"body\":\"\"}");
    assert_non_null(strstr(head, "\r\nConnection: close\r\n"));
    /* The server ends the session properly: close_notify, not a bare TCP close. */
    assert_true(SSL_read(cl.ssl, &byte, 1) <= 0);
    assert_int_equal(SSL_get_error(cl.ssl, 0), SSL_ERROR_ZERO_RETURN);
    client_close(&cl);
    fx_stop(fx);
}

static void test_tls_handshake_failure(void **state)
{
    fx_t *fx = fx_start();
    tls_client_t cl;
    char buf[512], head[2048];
    ssize_t n, total = 0;
    int fd;

    (void)state;
    /* Plain HTTP to the TLS port: the server gives up on the handshake and closes, never answering in HTTP. */
    fd = tcp_connect(fx->port);
    assert_int_equal(send(fd, "GET / HTTP/1.1\r\n\r\n", 18, MSG_NOSIGNAL), 18);
    while ((n = recv(fd, buf + total, sizeof(buf) - (size_t)total, 0)) > 0)
        total += n;
    assert_true(n == 0 || errno == ECONNRESET);
    assert_true(total < 64);
    assert_false(total >= 5 && memcmp(buf, "HTTP/", 5) == 0);
    close(fd);
    assert_int_equal(atomic_load(&fx->received), 0);
    /* The server is unharmed. */
    client_open(fx, &cl);
    client_write(&cl, "GET /ok HTTP/1.1\r\n\r\n");
    assert_string_equal(client_response(&cl, head, sizeof(head)), "{\"path\":\"/ok\",\"tls\":true,\"body\":\"\"}");
    client_close(&cl);
    fx_stop(fx);
}

/* The serial of the certificate the server showed on cl's connection. */
static long peer_serial(tls_client_t *cl)
{
    X509 *peer = SSL_get1_peer_certificate(cl->ssl);
    long serial;

    assert_non_null(peer);
    serial = ASN1_INTEGER_get(X509_get0_serialNumber(peer));
    X509_free(peer);
    return serial;
}

static void test_tls_swap_context(void **state)
{
    fx_t *fx = fx_start();
    tls_client_t before, after, late;
    char head[2048];
    oa_error_t err;
    int i;

    (void)state;
    client_open(fx, &before);
    client_write(&before, "GET /before HTTP/1.1\r\n\r\n");
    assert_string_equal(client_response(&before, head, sizeof(head)), "{\"path\":\"/before\",\"tls\":true,\"body\":\"\"}");
    assert_int_equal(peer_serial(&before), 4242);

    /* The new context is the only reference the test keeps: the server takes its own. */
    assert_int_equal(oa_tls_server_ctx_new(pki.cert2, pki.other_key, &fx->swap_ctx, &err), 0);
    uv_async_send(&fx->swap);
    for (i = 0; i < 500 && atomic_load(&fx->swapped) == 0; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&fx->swapped), 1);
    SSL_CTX_free(fx->swap_ctx);
    fx->swap_ctx = NULL;

    /* A new connection gets the new certificate. */
    client_open(fx, &after);
    assert_int_equal(peer_serial(&after), 4343);
    client_write(&after, "GET /after HTTP/1.1\r\n\r\n");
    assert_string_equal(client_response(&after, head, sizeof(head)), "{\"path\":\"/after\",\"tls\":true,\"body\":\"\"}");
    /* The keep-alive connection opened before finishes on the old one, several requests later. */
    for (i = 0; i < 3; i++) {
        client_write(&before, "GET /still HTTP/1.1\r\n\r\n");
        assert_string_equal(client_response(&before, head, sizeof(head)),
                            "{\"path\":\"/still\",\"tls\":true,\"body\":\"\"}");
        assert_non_null(strstr(head, "\r\nConnection: keep-alive\r\n"));
    }
    assert_int_equal(peer_serial(&before), 4242);
    /* Closing the last connection on the old context (whose last reference it held) harms nothing. */
    client_close(&before);
    client_open(fx, &late);
    assert_int_equal(peer_serial(&late), 4343);
    client_write(&late, "GET /late HTTP/1.1\r\n\r\n");
    assert_string_equal(client_response(&late, head, sizeof(head)), "{\"path\":\"/late\",\"tls\":true,\"body\":\"\"}");
    client_close(&late);
    client_close(&after);
    fx_stop(fx);
}

static void test_tls_swap_refused(void **state)
{
    oa_http_server_t *srv = NULL;
    SSL_CTX *ctx = NULL;
    oa_error_t err;
    uv_loop_t loop;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_tls_server_ctx_new(pki.cert, pki.key, &ctx, &err), 0);
    /* A plain HTTP server does not turn into a TLS one, and a NULL context is refused. */
    assert_int_equal(oa_http_server_start(&loop, "127.0.0.1", 0, NULL, NULL, handler, NULL, &srv, &err), 0);
    assert_int_equal(oa_http_server_set_tls(srv, ctx), UV_EINVAL);
    oa_http_server_stop(srv, NULL, NULL);
    assert_int_equal(oa_http_server_start(&loop, "127.0.0.1", 0, NULL, ctx, handler, NULL, &srv, &err), 0);
    assert_int_equal(oa_http_server_set_tls(srv, NULL), UV_EINVAL);
    oa_http_server_stop(srv, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    SSL_CTX_free(ctx);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_ok),
        cmocka_unit_test(test_ctx_missing_cert),
        cmocka_unit_test(test_ctx_missing_key),
        cmocka_unit_test(test_ctx_mismatched_key),
        cmocka_unit_test(test_tls_get),
        cmocka_unit_test(test_tls_pipelined),
        cmocka_unit_test(test_tls_connection_close),
        cmocka_unit_test(test_tls_handshake_failure),
        cmocka_unit_test(test_tls_swap_context),
        cmocka_unit_test(test_tls_swap_refused),
    };

    signal(SIGPIPE, SIG_IGN);
    oa_log_setup(OA_LOG_TEXT, OA_LOG_ERROR, NULL);
    return cmocka_run_group_tests(tests, make_pki, remove_pki);
}
