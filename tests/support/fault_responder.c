/*
 * oa-fault-responder: an OCSP responder for the integration suites that answers badly on purpose.
 *
 *   oa-fault-responder --dir DIR --port PORT [--host 127.0.0.1] [--mode good] [--next-update 3600]
 *
 * At start-up it builds a fresh test PKI (tests/support/testpki.h) whose proxy certificate names this responder in
 * its Authority Information Access extension (http://HOST:PORT/), writes it into DIR (ca.pem, leaf.pem,
 * leaf-chain.pem, responder.pem, ... as oa_testpki_write_dir describes) and prints one line "ready port=PORT" on
 * standard output once it listens. With --port 0 the kernel picks the port, and that line says which.
 *
 * It then serves OCSP over HTTP/1.1 on one libuv loop: a POST whose body is a DER OCSPRequest, or a GET of
 * /<base64 of the request> (RFC 6960 Appendix A). Every answer is shaped by the current mode (see --help for the
 * list); a real response is signed by the test PKI and copies the request's nonce unless the mode is about nonces.
 * Every connection is closed after one answer.
 *
 * Control requests on the same port, which are not counted as OCSP requests:
 *   GET /_control/mode?name=MODE   switches the mode; 200 "ok", or 400 when MODE is unknown
 *   GET /_control/stats            200 {"requests": N, "mode": "MODE"}: N counts OCSP requests received
 *
 * One line per request goes to standard error. SIGTERM or SIGINT closes every connection and exits 0.
 */
#include <errno.h>
#include <getopt.h>
#include <llhttp.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <uv.h>

#include "oa_util.h"
#include "testpki.h"

#define MAX_REQUEST_BODY 65536
#define SLOW_BYTE_INTERVAL_MS 300
#define HUGE_LENGTH (100u * 1024u * 1024u)
#define STREAM_CHUNK 65536
#define LEAF_SERIAL 0x1001L
#define TRAILING_BYTES 7

typedef enum mode_e {
    MODE_GOOD,
    MODE_REVOKED,
    MODE_UNKNOWN,
    MODE_DELEGATED,
    MODE_HANG,
    MODE_SLOW,
    MODE_CLOSE_MID,
    MODE_RESET,
    MODE_HTTP500,
    MODE_HTTP404,
    MODE_REDIRECT,
    MODE_WRONG_CTYPE,
    MODE_HUGE,
    MODE_HUGE_CHUNKED,
    MODE_GARBAGE,
    MODE_TRUNCATED,
    MODE_TRAILING,
    MODE_TRYLATER,
    MODE_INTERNALERROR,
    MODE_UNAUTHORIZED,
    MODE_MALFORMEDREQUEST,
    MODE_SIGREQUIRED,
    MODE_UNRELATED_CA,
    MODE_NOEKU,
    MODE_OTHER_SERIAL,
    MODE_EXPIRED,
    MODE_FUTURE,
    MODE_NO_NEXT_UPDATE,
    MODE_WRONG_NONCE,
    MODE_NO_NONCE,
    MODE_COUNT
} mode_id_t;

static const struct {
    const char *name;
    const char *help;
} modes[MODE_COUNT] = {
    [MODE_GOOD] = {"good", "a valid GOOD response signed by the CA"},
    [MODE_REVOKED] = {"revoked", "a valid REVOKED response (revoked a day ago, no reason)"},
    [MODE_UNKNOWN] = {"unknown", "a valid UNKNOWN response"},
    [MODE_DELEGATED] = {"delegated", "GOOD, signed by the delegated responder that has the OCSP-signing EKU"},
    [MODE_HANG] = {"hang", "read the request and never answer"},
    [MODE_SLOW] = {"slow", "a valid GOOD answer, sent one byte every 300 ms"},
    [MODE_CLOSE_MID] = {"close_mid", "the headers and half the body, then close"},
    [MODE_RESET] = {"reset", "close with a TCP reset (SO_LINGER 0) right after reading the request"},
    [MODE_HTTP500] = {"http500", "HTTP 500 Internal Server Error"},
    [MODE_HTTP404] = {"http404", "HTTP 404 Not Found"},
    [MODE_REDIRECT] = {"redirect", "HTTP 302 with a Location header"},
    [MODE_WRONG_CTYPE] = {"wrong_ctype", "a valid GOOD body with Content-Type text/html"},
    [MODE_HUGE] = {"huge", "Content-Length 100 MB, zeros streamed as fast as the peer reads"},
    [MODE_HUGE_CHUNKED] = {"huge_chunked", "chunked transfer encoding, zero chunks without end"},
    [MODE_GARBAGE] = {"garbage", "512 random bytes as the body"},
    [MODE_TRUNCATED] = {"truncated", "a valid DER response cut in half"},
    [MODE_TRAILING] = {"trailing", "a valid DER response followed by 7 more bytes"},
    [MODE_TRYLATER] = {"trylater", "OCSP response status tryLater"},
    [MODE_INTERNALERROR] = {"internalerror", "OCSP response status internalError"},
    [MODE_UNAUTHORIZED] = {"unauthorized", "OCSP response status unauthorized"},
    [MODE_MALFORMEDREQUEST] = {"malformedrequest", "OCSP response status malformedRequest"},
    [MODE_SIGREQUIRED] = {"sigrequired", "OCSP response status sigRequired"},
    [MODE_UNRELATED_CA] = {"unrelated_ca", "GOOD, signed by an unrelated CA"},
    [MODE_NOEKU] = {"noeku", "GOOD, signed by a responder certificate without the OCSP-signing EKU"},
    [MODE_OTHER_SERIAL] = {"other_serial", "GOOD, for a CertID with another serial number"},
    [MODE_EXPIRED] = {"expired", "GOOD, thisUpdate two hours ago and nextUpdate one hour ago"},
    [MODE_FUTURE] = {"future", "GOOD, thisUpdate one hour ahead"},
    [MODE_NO_NEXT_UPDATE] = {"no_next_update", "GOOD without nextUpdate (valid)"},
    [MODE_WRONG_NONCE] = {"wrong_nonce", "GOOD with a nonce that is not the request's"},
    [MODE_NO_NONCE] = {"no_nonce", "GOOD without a nonce (valid)"},
};

/* What a connection does once its answer is under way. */
typedef enum phase_e {
    PHASE_READING,  /* the request is not complete yet */
    PHASE_FLUSHING, /* a whole answer is queued: shut down and close once it is written */
    PHASE_WAITING,  /* hang: wait for the peer to give up */
    PHASE_SLOW,     /* a byte of out per timer tick */
    PHASE_STREAM,   /* one chunk of zeros in flight at a time */
} phase_t;

typedef struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    llhttp_t parser;
    struct conn_s *prev, *next;
    phase_t phase;
    bool closing;
    bool request_complete;
    bool body_too_large;
    bool chunked;
    int pending_closes;
    int writes_pending;
    uint64_t streamed;
    oa_buf_t url;
    oa_buf_t body;
    oa_buf_t out; /* slow mode: the whole answer, sent from out_off on */
    size_t out_off;
    char peer[64];
    char rbuf[16384];
} conn_t;

typedef struct write_req_s {
    uv_write_t req;
    conn_t *conn;
    size_t len;
    char data[]; /* a copy of what is written; empty for streamed zeros */
} write_req_t;

static uv_loop_t *loop;
static uv_tcp_t server;
static uv_signal_t sigterm_handle, sigint_handle;
static llhttp_settings_t parser_settings;
static oa_testpki_t pki;
static conn_t *conns;
static mode_id_t current_mode = MODE_GOOD;
static unsigned long request_count;
static long next_update_seconds = 3600;
static char host[64] = "127.0.0.1";
static int port;
static bool stopping;
static const char zeros[STREAM_CHUNK];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
    char ts[OA_ISO8601_LEN];
    va_list ap;

    fprintf(stderr, "%s fault-responder: ", oa_time_iso8601_ms(oa_time_now_ms(), ts));
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static int mode_by_name(const char *name)
{
    for (int i = 0; i < MODE_COUNT; i++) {
        if (strcmp(modes[i].name, name) == 0)
            return i;
    }
    return -1;
}

/* Connection teardown. Memory goes only in the last close callback: write and shutdown callbacks that are still
 * pending fire (cancelled) before it, and may still look at the connection. */

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;

    if (--c->pending_closes > 0)
        return;
    oa_buf_free(&c->url);
    oa_buf_free(&c->body);
    oa_buf_free(&c->out);
    free(c);
}

static void conn_close(conn_t *c, bool reset)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    if (reset) {
        /* A zero linger time makes close() send RST instead of FIN, which is what a crashing peer looks like. */
        uv_os_fd_t fd;
        struct linger lg = {.l_onoff = 1, .l_linger = 0};

        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;

    (void)status;
    conn_close(c, false);
}

/* Sends FIN once every queued write is out, then closes. */
static void conn_finish(conn_t *c)
{
    c->phase = PHASE_FLUSHING;
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c, false);
}

static void stream_next(conn_t *c);

static void on_written(uv_write_t *req, int status)
{
    write_req_t *w = oa_container_of(req, write_req_t, req);
    conn_t *c = w->conn;

    free(w);
    c->writes_pending--;
    if (c->closing)
        return;
    if (status < 0) {
        /* The peer went away (EPIPE, ECONNRESET): the expected end of every streaming mode. */
        say("%s: write ended after %llu streamed bytes: %s", c->peer, (unsigned long long)c->streamed,
              uv_strerror(status));
        conn_close(c, false);
        return;
    }
    if (c->phase == PHASE_STREAM)
        stream_next(c);
}

/* Queues bufs (copied) on c. Returns 0 or a negative UV error (the connection is then closed). */
static int conn_writev(conn_t *c, const uv_buf_t *bufs, unsigned n)
{
    size_t total = 0, off = 0;
    write_req_t *w;
    uv_buf_t b;
    int rc;

    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    w = malloc(sizeof(*w) + total);
    if (w == NULL) {
        conn_close(c, false);
        return UV_ENOMEM;
    }
    for (unsigned i = 0; i < n; i++) {
        memcpy(w->data + off, bufs[i].base, bufs[i].len);
        off += bufs[i].len;
    }
    w->conn = c;
    w->len = total;
    b = uv_buf_init(w->data, (unsigned)total);
    rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc != 0) {
        free(w);
        conn_close(c, false);
        return rc;
    }
    c->writes_pending++;
    return 0;
}

static int conn_write(conn_t *c, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);

    return conn_writev(c, &b, 1);
}

/* Streams the next chunk of zeros without copying them: only one write is ever in flight, so the pace is the
 * peer's reading pace and nothing piles up in memory. */
static void stream_next(conn_t *c)
{
    static const char chunk_head[] = "10000\r\n"; /* 65536 in hex */
    uv_buf_t bufs[3];
    unsigned n = 0;
    write_req_t *w;
    size_t len = STREAM_CHUNK;

    if (!c->chunked) {
        if (c->streamed >= HUGE_LENGTH) {
            conn_finish(c);
            return;
        }
        if (HUGE_LENGTH - c->streamed < len)
            len = (size_t)(HUGE_LENGTH - c->streamed);
    } else {
        bufs[n++] = uv_buf_init((char *)chunk_head, sizeof(chunk_head) - 1);
    }
    bufs[n++] = uv_buf_init((char *)zeros, (unsigned)len);
    if (c->chunked)
        bufs[n++] = uv_buf_init((char *)"\r\n", 2);
    w = malloc(sizeof(*w));
    if (w == NULL) {
        conn_close(c, false);
        return;
    }
    w->conn = c;
    w->len = 0;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_written) != 0) {
        free(w);
        conn_close(c, false);
        return;
    }
    c->writes_pending++;
    c->streamed += len;
}

static void on_slow_tick(uv_timer_t *t)
{
    conn_t *c = t->data;

    if (c->closing || c->writes_pending > 0)
        return;
    if (c->out_off >= c->out.len) {
        uv_timer_stop(t);
        conn_finish(c);
        return;
    }
    conn_write(c, c->out.data + c->out_off, 1);
    c->out_off++;
}

/* Answers. */

static void send_answer(conn_t *c, int status, const char *reason, const char *ctype, const char *extra_headers,
                        const void *body, size_t len, size_t send_len)
{
    oa_buf_t head;
    uv_buf_t bufs[2];

    oa_buf_init(&head);
    if (oa_buf_printf(&head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
                      status, reason, ctype, len, extra_headers != NULL ? extra_headers : "") != 0) {
        oa_buf_free(&head);
        conn_close(c, false);
        return;
    }
    bufs[0] = uv_buf_init(head.data, (unsigned)head.len);
    bufs[1] = uv_buf_init((char *)body, (unsigned)send_len);
    if (conn_writev(c, bufs, send_len > 0 ? 2 : 1) == 0)
        conn_finish(c);
    oa_buf_free(&head);
}

static void send_text(conn_t *c, int status, const char *reason, const char *text)
{
    send_answer(c, status, reason, "text/plain", NULL, text, strlen(text), strlen(text));
}

/* The hash algorithm of the request's first CertID, so the answer's CertID is built the same way; SHA-1 when the
 * request says nothing usable. */
static const EVP_MD *request_certid_md(OCSP_REQUEST *req)
{
    ASN1_OBJECT *alg = NULL;
    OCSP_ONEREQ *one;
    const EVP_MD *md;

    if (req == NULL || OCSP_request_onereq_count(req) < 1)
        return EVP_sha1();
    one = OCSP_request_onereq_get0(req, 0);
    if (OCSP_id_get0_info(NULL, &alg, NULL, NULL, OCSP_onereq_get0_id(one)) != 1 || alg == NULL)
        return EVP_sha1();
    md = EVP_get_digestbyobj(alg);
    return md != NULL ? md : EVP_sha1();
}

/* Builds the OCSP response the mode calls for. An undecodable request gets a malformedRequest answer whatever the
 * mode, as a real responder would give. Returns 0 with *der (free()) and *len, or -1. */
static int build_response(mode_id_t mode, OCSP_REQUEST *req, unsigned char **der, size_t *len)
{
    oa_testpki_resp_opts_t o;

    oa_testpki_resp_opts_init(&o, &pki);
    o.req = req;
    o.nonce = OA_TESTPKI_NONCE_COPY;
    o.next_update_offset = next_update_seconds;
    o.certid_md = request_certid_md(req);
    if (req == NULL)
        o.response_status = OCSP_RESPONSE_STATUS_MALFORMEDREQUEST;
    switch (mode) {
    case MODE_REVOKED:
        o.cert_status = V_OCSP_CERTSTATUS_REVOKED;
        break;
    case MODE_UNKNOWN:
        o.cert_status = V_OCSP_CERTSTATUS_UNKNOWN;
        break;
    case MODE_DELEGATED:
        o.signer_key = pki.responder.key;
        o.signer_cert = pki.responder.cert;
        break;
    case MODE_TRYLATER:
        o.response_status = OCSP_RESPONSE_STATUS_TRYLATER;
        break;
    case MODE_INTERNALERROR:
        o.response_status = OCSP_RESPONSE_STATUS_INTERNALERROR;
        break;
    case MODE_UNAUTHORIZED:
        o.response_status = OCSP_RESPONSE_STATUS_UNAUTHORIZED;
        break;
    case MODE_MALFORMEDREQUEST:
        o.response_status = OCSP_RESPONSE_STATUS_MALFORMEDREQUEST;
        break;
    case MODE_SIGREQUIRED:
        o.response_status = OCSP_RESPONSE_STATUS_SIGREQUIRED;
        break;
    case MODE_UNRELATED_CA:
        o.signer_key = pki.other_ca.key;
        o.signer_cert = pki.other_ca.cert;
        break;
    case MODE_NOEKU:
        o.signer_key = pki.responder_noeku.key;
        o.signer_cert = pki.responder_noeku.cert;
        break;
    case MODE_OTHER_SERIAL:
        o.other_serial = LEAF_SERIAL + 1;
        break;
    case MODE_EXPIRED:
        o.this_update_offset = -7200;
        o.produced_at_offset = -7200;
        o.next_update_offset = -3600;
        break;
    case MODE_FUTURE:
        o.this_update_offset = 3600;
        o.next_update_offset = 3600 + next_update_seconds;
        break;
    case MODE_NO_NEXT_UPDATE:
        o.has_next_update = false;
        break;
    case MODE_WRONG_NONCE:
        o.nonce = OA_TESTPKI_NONCE_WRONG;
        break;
    case MODE_NO_NONCE:
        o.nonce = OA_TESTPKI_NONCE_NONE;
        break;
    default:
        break;
    }
    return oa_testpki_response(&o, der, len);
}

/* Decodes %XX escapes in place (a GET request's base64 may have its '/', '+' and '=' escaped). */
static void url_unescape(char *s)
{
    char *out = s;

    for (; *s != '\0'; s++) {
        if (s[0] == '%' && s[1] != '\0' && s[2] != '\0') {
            char hex[3] = {s[1], s[2], '\0'};
            char *end;
            long v = strtol(hex, &end, 16);

            if (*end == '\0') {
                *out++ = (char)v;
                s += 2;
                continue;
            }
        }
        *out++ = *s;
    }
    *out = '\0';
}

/* The DER request of a GET: the path after '/' is its base64. Returns a malloc'ed buffer with *len, or NULL. */
static unsigned char *get_request_der(const char *url, size_t *len)
{
    char *b64 = strdup(url + 1);
    unsigned char *der = NULL;
    size_t n, pad = 0;
    int got;

    if (b64 == NULL)
        return NULL;
    url_unescape(b64);
    n = strlen(b64);
    if (n == 0 || n % 4 != 0)
        goto out;
    der = malloc(n / 4 * 3 + 1);
    if (der == NULL)
        goto out;
    got = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)n);
    if (got < 0) {
        free(der);
        der = NULL;
        goto out;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    while (pad < 2 && n > pad && b64[n - 1 - pad] == '=')
        pad++;
    *len = (size_t)got - pad;
out:
    free(b64);
    return der;
}

static OCSP_REQUEST *decode_request(const unsigned char *der, size_t len)
{
    const unsigned char *p = der;
    OCSP_REQUEST *req;

    if (der == NULL || len == 0)
        return NULL;
    req = d2i_OCSP_REQUEST(NULL, &p, (long)len);
    if (req != NULL && p != der + len) {
        OCSP_REQUEST_free(req);
        req = NULL;
    }
    ERR_clear_error();
    return req;
}

static void handle_control(conn_t *c, const char *url)
{
    if (strncmp(url, "/_control/mode?name=", 20) == 0) {
        int m = mode_by_name(url + 20);

        if (m < 0) {
            say("%s: control: unknown mode \"%s\"", c->peer, url + 20);
            send_text(c, 400, "Bad Request", "unknown mode\n");
            return;
        }
        current_mode = (mode_id_t)m;
        say("%s: control: mode %s", c->peer, modes[m].name);
        send_text(c, 200, "OK", "ok");
    } else if (strcmp(url, "/_control/stats") == 0) {
        char json[128];

        snprintf(json, sizeof(json), "{\"requests\": %lu, \"mode\": \"%s\"}", request_count,
                 modes[current_mode].name);
        send_answer(c, 200, "OK", "application/json", NULL, json, strlen(json), strlen(json));
    } else {
        send_text(c, 404, "Not Found", "unknown control path\n");
    }
}

static void handle_ocsp(conn_t *c, const char *method, const char *url)
{
    mode_id_t mode = current_mode;
    unsigned char *reqder = NULL, *der = NULL;
    size_t reqlen = 0, len = 0;
    OCSP_REQUEST *req = NULL;
    const char *what = NULL;
    char location[160];

    request_count++;
    if (strcmp(method, "POST") == 0) {
        req = decode_request((const unsigned char *)c->body.data, c->body.len);
        reqlen = c->body.len;
    } else {
        reqder = get_request_der(url, &reqlen);
        req = decode_request(reqder, reqlen);
    }

    switch (mode) {
    case MODE_HANG:
        c->phase = PHASE_WAITING;
        what = "no answer";
        break;
    case MODE_RESET:
        conn_close(c, true);
        what = "reset";
        break;
    case MODE_HTTP500:
        send_text(c, 500, "Internal Server Error", "the responder failed\n");
        what = "HTTP 500";
        break;
    case MODE_HTTP404:
        send_text(c, 404, "Not Found", "no such responder\n");
        what = "HTTP 404";
        break;
    case MODE_REDIRECT:
        snprintf(location, sizeof(location), "Location: http://%s:%d/moved\r\n", host, port);
        send_answer(c, 302, "Found", "text/plain", location, "moved\n", 6, 6);
        what = "HTTP 302";
        break;
    case MODE_HUGE:
    case MODE_HUGE_CHUNKED: {
        static const char huge_head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                                        "Content-Length: 104857600\r\nConnection: close\r\n\r\n";
        static const char chunked_head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                                           "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

        c->chunked = mode == MODE_HUGE_CHUNKED;
        if (c->chunked ? conn_write(c, chunked_head, sizeof(chunked_head) - 1) == 0
                       : conn_write(c, huge_head, sizeof(huge_head) - 1) == 0) {
            c->phase = PHASE_STREAM;
            stream_next(c);
        }
        what = "streaming zeros";
        break;
    }
    case MODE_GARBAGE: {
        unsigned char junk[512];

        RAND_bytes(junk, sizeof(junk));
        /* Never a DER SEQUENCE tag, so no chance of a lucky parse. */
        junk[0] = 0xa5;
        send_answer(c, 200, "OK", "application/ocsp-response", NULL, junk, sizeof(junk), sizeof(junk));
        what = "512 random bytes";
        break;
    }
    default:
        if (build_response(mode, req, &der, &len) != 0) {
            say("%s: cannot build a response", c->peer);
            ERR_print_errors_fp(stderr);
            send_text(c, 500, "Internal Server Error", "cannot build a response\n");
            what = "HTTP 500 (build failed)";
            break;
        }
        if (mode == MODE_WRONG_CTYPE) {
            send_answer(c, 200, "OK", "text/html", NULL, der, len, len);
            what = "valid body as text/html";
        } else if (mode == MODE_TRUNCATED) {
            send_answer(c, 200, "OK", "application/ocsp-response", NULL, der, len / 2, len / 2);
            what = "DER cut in half";
        } else if (mode == MODE_TRAILING) {
            static const unsigned char tail[TRAILING_BYTES] = {0x04, 0x05, 'e', 'x', 't', 'r', 'a'};

            if (oa_testpki_der_append(&der, &len, tail, sizeof(tail)) == 0)
                send_answer(c, 200, "OK", "application/ocsp-response", NULL, der, len, len);
            else
                conn_close(c, false);
            what = "DER plus 7 bytes";
        } else if (mode == MODE_CLOSE_MID) {
            send_answer(c, 200, "OK", "application/ocsp-response", NULL, der, len, len / 2);
            what = "half the body, then close";
        } else if (mode == MODE_SLOW) {
            if (oa_buf_printf(&c->out,
                              "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                              "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                              len) != 0 ||
                oa_buf_append(&c->out, der, len) != 0) {
                conn_close(c, false);
            } else {
                c->phase = PHASE_SLOW;
                c->timer.data = c;
                uv_timer_start(&c->timer, on_slow_tick, 0, SLOW_BYTE_INTERVAL_MS);
            }
            what = "one byte every 300 ms";
        } else {
            send_answer(c, 200, "OK", "application/ocsp-response", NULL, der, len, len);
            what = req == NULL ? "malformedRequest (undecodable request)" : "response";
        }
        break;
    }
    say("%s: %s %.60s%s (%zu bytes, request %s, %s) mode=%s -> %s", c->peer, method, url,
          strlen(url) > 60 ? "..." : "", reqlen, req != NULL ? "decoded" : "undecodable",
          req != NULL && OCSP_request_onereq_count(req) > 0 &&
                  OCSP_REQUEST_get_ext_by_NID(req, NID_id_pkix_OCSP_Nonce, -1) >= 0
              ? "with nonce"
              : "no nonce",
          modes[mode].name, what);
    free(der);
    free(reqder);
    OCSP_REQUEST_free(req);
}

static void handle_request(conn_t *c)
{
    const char *method = llhttp_method_name((llhttp_method_t)llhttp_get_method(&c->parser));
    const char *url = c->url.data != NULL ? c->url.data : "";

    if (c->body_too_large) {
        say("%s: %s %.60s: body over %d bytes", c->peer, method, url, MAX_REQUEST_BODY);
        send_text(c, 413, "Payload Too Large", "request body too large\n");
    } else if (strncmp(url, "/_control/", 10) == 0) {
        handle_control(c, url);
    } else if (strcmp(method, "POST") == 0 || (strcmp(method, "GET") == 0 && url[0] == '/')) {
        handle_ocsp(c, method, url);
    } else {
        say("%s: %s %.60s: method not allowed", c->peer, method, url);
        send_answer(c, 405, "Method Not Allowed", "text/plain", "Allow: GET, POST\r\n", "GET or POST\n", 12, 12);
    }
}

/* Parser callbacks only collect; the work happens in on_read once llhttp_execute has returned. */

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;

    return oa_buf_append(&c->url, at, len) == 0 ? 0 : -1;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;

    if (c->body.len + len > MAX_REQUEST_BODY) {
        c->body_too_large = true;
        return 0;
    }
    return oa_buf_append(&c->body, at, len) == 0 ? 0 : -1;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;

    c->request_complete = true;
    return HPE_PAUSED;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;

    (void)suggested;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    llhttp_errno_t perr;

    if (c->closing)
        return;
    if (nread < 0) {
        /* The peer closed or reset. A queued whole answer may still be flushing; everything else stops here. */
        if (c->phase == PHASE_READING)
            say("%s: closed before a complete request: %s", c->peer, uv_strerror((int)nread));
        else if (c->phase == PHASE_WAITING || c->phase == PHASE_SLOW || c->phase == PHASE_STREAM)
            say("%s: the peer left (%s)%s", c->peer, uv_strerror((int)nread),
                  c->phase == PHASE_SLOW ? " during the slow answer" : "");
        uv_read_stop(s);
        if (c->phase != PHASE_FLUSHING || nread != UV_EOF)
            conn_close(c, false);
        return;
    }
    if (nread == 0 || c->phase != PHASE_READING)
        return;
    perr = llhttp_execute(&c->parser, buf->base, (size_t)nread);
    if (perr != HPE_OK && perr != HPE_PAUSED) {
        say("%s: bad HTTP: %s", c->peer, llhttp_get_error_reason(&c->parser));
        send_text(c, 400, "Bad Request", "bad HTTP request\n");
        return;
    }
    if (c->request_complete)
        handle_request(c);
}

static void on_connection(uv_stream_t *srv, int status)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    conn_t *c;

    if (status < 0 || stopping)
        return;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->pending_closes = 2;
    c->next = conns;
    if (conns != NULL)
        conns->prev = c;
    conns = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c, false);
        return;
    }
    snprintf(c->peer, sizeof(c->peer), "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0) {
        char ip[INET6_ADDRSTRLEN] = "?";

        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
            snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
            snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
        }
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c, false);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    say("signal %d: stopping", signum);
    stopping = true;
    while (conns != NULL)
        conn_close(conns, false);
    uv_close((uv_handle_t *)&server, NULL);
    uv_close((uv_handle_t *)&sigterm_handle, NULL);
    uv_close((uv_handle_t *)&sigint_handle, NULL);
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: oa-fault-responder --dir DIR --port PORT [--host ADDR] [--mode MODE] [--next-update S]\n"
               "\n"
               "Creates a test PKI in DIR (the proxy certificate's OCSP URI is http://ADDR:PORT/; start the agent\n"
               "with --cert DIR/leaf-chain.pem) and answers OCSP requests (POST, or GET /<base64>) as MODE says.\n"
               "Prints \"ready port=PORT\" on stdout once it listens (--port 0: the kernel picks the port).\n"
               "\n"
               "  --dir DIR          where the PKI is written (created when absent)\n"
               "  --port PORT        TCP port to listen on\n"
               "  --host ADDR        IPv4 or IPv6 literal to listen on (default 127.0.0.1)\n"
               "  --mode MODE        the mode at start (default good)\n"
               "  --next-update S    seconds from now to nextUpdate in valid responses (default 3600)\n"
               "  --help             this text\n"
               "\n"
               "Control, on the same port:\n"
               "  GET /_control/mode?name=MODE   switch the mode (200 \"ok\"; 400 for an unknown mode)\n"
               "  GET /_control/stats            {\"requests\": N, \"mode\": \"MODE\"}: OCSP requests received\n"
               "\n"
               "Modes (a refused connection is not a mode: stop the responder):\n");
    for (int i = 0; i < MODE_COUNT; i++)
        fprintf(f, "  %-17s %s\n", modes[i].name, modes[i].help);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},         {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, 'H'},        {"mode", required_argument, NULL, 'm'},
        {"next-update", required_argument, NULL, 'n'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct sockaddr_storage addr;
    int addrlen = sizeof(addr);
    const char *dir = NULL;
    char aia[160], *end;
    int opt, rc = 1, port_arg = -1;
    bool loop_ready = false;
    long v;

    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'd':
            dir = optarg;
            break;
        case 'p':
            v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 65535) {
                fprintf(stderr, "oa-fault-responder: --port: not a port number: %s\n", optarg);
                return 2;
            }
            port_arg = (int)v;
            break;
        case 'H':
            snprintf(host, sizeof(host), "%s", optarg);
            break;
        case 'm':
            if (mode_by_name(optarg) < 0) {
                fprintf(stderr, "oa-fault-responder: --mode: unknown mode %s (see --help)\n", optarg);
                return 2;
            }
            current_mode = (mode_id_t)mode_by_name(optarg);
            break;
        case 'n':
            v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 1 || v > 10L * 365 * 86400) {
                fprintf(stderr, "oa-fault-responder: --next-update: not a number of seconds: %s\n", optarg);
                return 2;
            }
            next_update_seconds = v;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (dir == NULL || port_arg < 0 || optind != argc) {
        fprintf(stderr, "oa-fault-responder: --dir and --port are required (see --help)\n");
        return 2;
    }
    /* A peer that disconnects while we write must give EPIPE, not kill the process. */
    signal(SIGPIPE, SIG_IGN);

    loop = uv_default_loop();
    if (strchr(host, ':') != NULL ? uv_ip6_addr(host, port_arg, (struct sockaddr_in6 *)&addr) != 0
                                  : uv_ip4_addr(host, port_arg, (struct sockaddr_in *)&addr) != 0) {
        fprintf(stderr, "oa-fault-responder: --host: not an IP address: %s\n", host);
        return 2;
    }
    uv_tcp_init(loop, &server);
    uv_signal_init(loop, &sigterm_handle);
    uv_signal_init(loop, &sigint_handle);
    loop_ready = true;
    if ((rc = uv_tcp_bind(&server, (struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&server, 128, on_connection)) != 0) {
        fprintf(stderr, "oa-fault-responder: cannot listen on %s port %d: %s\n", host, port_arg, uv_strerror(rc));
        rc = 1;
        goto out;
    }
    uv_tcp_getsockname(&server, (struct sockaddr *)&addr, &addrlen);
    port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                            : ((struct sockaddr_in *)&addr)->sin_port);

    snprintf(aia, sizeof(aia), strchr(host, ':') != NULL ? "http://[%s]:%d/" : "http://%s:%d/", host, port);
    if ((mkdir(dir, 0700) != 0 && errno != EEXIST) || oa_testpki_init(&pki, LEAF_SERIAL, aia) != 0 ||
        oa_testpki_write_dir(&pki, dir) != 0) {
        fprintf(stderr, "oa-fault-responder: cannot create the test PKI in %s: %s\n", dir, strerror(errno));
        ERR_print_errors_fp(stderr);
        rc = 1;
        goto out;
    }

    llhttp_settings_init(&parser_settings);
    parser_settings.on_url = on_url;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
    uv_signal_start(&sigterm_handle, on_signal, SIGTERM);
    uv_signal_start(&sigint_handle, on_signal, SIGINT);

    say("listening on %s port %d, PKI in %s, OCSP URI %s, mode %s", host, port, dir, aia,
          modes[current_mode].name);
    printf("ready port=%d\n", port);
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    if (loop_ready && !stopping) {
        uv_close((uv_handle_t *)&server, NULL);
        uv_close((uv_handle_t *)&sigterm_handle, NULL);
        uv_close((uv_handle_t *)&sigint_handle, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(loop) != 0) {
        fprintf(stderr, "oa-fault-responder: handles left open at exit\n");
        rc = 1;
    }
    oa_testpki_free(&pki);
    if (rc == 0)
        say("stopped after %lu OCSP requests", request_count);
    return rc;
}
