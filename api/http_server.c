#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http_internal.h"
#include "oa_codec.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_log.h"
#include "oa_util.h"
#include "oa_tls.h"

/* Unparsed input kept while a request waits for its response; past it the socket is not read any more. */
#define IN_HIGH_WATER (64 * 1024)
/* Free room offered to each socket read. */
#define READ_CHUNK (16 * 1024)
/* Queued response bytes past which no further pipelined request is started until the socket drains. */
#define OUT_HIGH_WATER (256 * 1024)
/* How long a connection we are closing keeps reading and discarding, so that unread request bytes do not turn
 * our close into a reset that destroys the response in flight. */
#define LINGER_MS 2000
/* Ciphertext buffer shared by every TLS connection of a server, and discard buffer while lingering. */
#define SCRATCH_SIZE (64 * 1024)

enum { HDR_AUTHORIZATION, HDR_CONTENT_TYPE, HDR_EXPECT, HDR_CONNECTION, HDR_COUNT };

static const char *const hdr_names[HDR_COUNT] = {"authorization", "content-type", "expect", "connection"};

/* What the connection's single timer is measuring. */
typedef enum phase_e {
    PHASE_NONE,     /* timer stopped */
    PHASE_IDLE,     /* between requests: idle_timeout, silent close */
    PHASE_HEADERS,  /* header_timeout, 408 */
    PHASE_BODY,     /* body_timeout, 408 */
    PHASE_HANDLER,  /* waiting for oa_http_respond: no timer */
    PHASE_LINGER    /* our response is out, discard input until EOF or LINGER_MS */
} phase_t;

typedef struct conn_s conn_t;

struct oa_http_server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    oa_http_limits_t limits;
    SSL_CTX *tls;
    oa_http_handler_cb handler;
    void *app;
    llhttp_settings_t settings;
    conn_t *conns;      /* every allocated connection, rejected ones included */
    unsigned nconns;    /* length of conns */
    unsigned nopen;     /* accepted within the limit and not yet freed */
    int port;
    int stopping;
    int listener_closed;
    void (*done)(void *arg);
    void *done_arg;
    time_t date_sec;
    char date[OA_RFC1123_LEN];
    char scratch[SCRATCH_SIZE];
};

struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    oa_http_server_t *srv;
    conn_t *prev, *next;
    int pending_closes;
    unsigned closing : 1;     /* handles are being closed; nothing more is sent */
    unsigned timer_closed : 1;
    unsigned counted : 1;     /* included in srv->nopen */
    unsigned awaiting : 1;    /* a request is with the handler */
    unsigned in_process : 1;  /* conn_process is on the stack */
    unsigned paused : 1;      /* llhttp returned HPE_PAUSED and waits for llhttp_resume */
    unsigned no_more : 1;     /* no further request is parsed: close once the output is written */
    unsigned finishing : 1;   /* the output is written and the close has begun */
    unsigned reading : 1;
    unsigned writing : 1;     /* wreq is in flight with wbuf */
    unsigned keep_alive : 1;
    unsigned is_head : 1;
    phase_t phase;
    phase_t timer_phase;

    llhttp_t parser;
    oa_errcode_t fail_code;   /* set by a parser callback that rejects the request */
    const char *fail_text;
    size_t header_bytes;
    int cur_hdr;              /* HDR_* of the header whose value is being received, or -1 */
    unsigned hdr_seen;        /* bit per HDR_* */

    oa_buf_t in;              /* plaintext input; bytes before in_off are parsed */
    size_t in_off;
    oa_buf_t url;
    oa_buf_t field;
    oa_buf_t hdr[HDR_COUNT];
    oa_buf_t body;
    oa_buf_t obuf;            /* bytes to write, not yet given to libuv */
    oa_buf_t wbuf;            /* bytes in flight with wreq */
    oa_buf_t resp;            /* plaintext response before encryption (TLS only) */
    oa_buf_t ebuf;            /* JSON error bodies */

    oa_tls_session_t tls;
    int has_tls;
    oa_http_request_t req;
    char peer[80];
};

static void conn_process(conn_t *c);
static void conn_close(conn_t *c);
static void conn_flush(conn_t *c);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

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

static void conn_set_phase(conn_t *c, phase_t phase)
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

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = oa_container_of(h, conn_t, tcp);

    (void)suggested;
    /* Ciphertext and discarded bytes only pass through, so one buffer per server serves every connection:
     * libuv always hands the buffer to on_read before asking for another. */
    if (c->has_tls || c->phase == PHASE_LINGER) {
        *buf = uv_buf_init(c->srv->scratch, sizeof(c->srv->scratch));
        return;
    }
    if (c->in_off > 0) {
        oa_buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    if (oa_buf_reserve(&c->in, READ_CHUNK) != 0) {
        *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to on_read */
        return;
    }
    *buf = uv_buf_init(c->in.data + c->in.len, (unsigned)(c->in.cap - c->in.len - 1));
}

/* Reads while the parser can take the bytes; a request waiting for its response with a full buffer behind it
 * stops the socket so a pipelining client cannot make us buffer without bound. */
static void conn_update_reading(conn_t *c)
{
    int want;

    if (c->closing)
        return;
    if (c->phase == PHASE_LINGER)
        want = 1;
    else
        want = !c->no_more && c->in.len - c->in_off < IN_HIGH_WATER;
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
            conn_close(c);
            return;
        }
        c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* ---- writing ---- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
    /* Nothing to do: the lingering read or its timer ends the connection. */
}

/* The last response is on the wire: close now when the server stops, otherwise send FIN and keep draining
 * the peer's bytes for a while so that the kernel does not answer them with a reset. */
static void conn_finish(conn_t *c)
{
    if (c->finishing || c->closing)
        return;
    if (c->has_tls && !c->tls.shutdown_sent) {
        oa_tls_session_shutdown(&c->tls);
        if (oa_tls_session_drain(&c->tls, &c->obuf) == 0 && c->obuf.len > 0) {
            conn_flush(c); /* comes back here once the alert is written */
            return;
        }
    }
    c->finishing = 1;
    if (c->srv->stopping || uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    conn_set_phase(c, PHASE_LINGER);
    conn_update_reading(c);
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = oa_container_of(req, conn_t, wreq);

    c->writing = 0;
    oa_buf_reset(&c->wbuf);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_flush(c);
    conn_process(c);
}

/* Writes obuf: first straight into the socket, and only what the kernel does not take goes through uv_write.
 * The two buffers swap roles so no response needs an allocation of its own. */
static void conn_flush(conn_t *c)
{
    if (c->closing || c->writing)
        return;
    if (c->obuf.len > 0) {
        uv_buf_t b = uv_buf_init(c->obuf.data, (unsigned)c->obuf.len);
        oa_buf_t tmp;
        int n;

        n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == UV_EAGAIN || n == UV_ENOSYS)
            n = 0;
        if (n < 0) {
            conn_close(c);
            return;
        }
        if ((size_t)n < c->obuf.len) {
            tmp = c->wbuf;
            c->wbuf = c->obuf;
            c->obuf = tmp;
            b = uv_buf_init(c->wbuf.data + n, (unsigned)(c->wbuf.len - (size_t)n));
            if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
                conn_close(c);
                return;
            }
            c->writing = 1;
            return;
        }
        oa_buf_reset(&c->obuf);
    }
    if (c->no_more && !c->awaiting)
        conn_finish(c);
}

/* Queues bytes for the peer, through TLS when the connection has it. Returns 0 or a negative error. */
static int conn_send(conn_t *c, const char *p, size_t n)
{
    int rc;

    if (!c->has_tls)
        return oa_buf_append(&c->obuf, p, n);
    rc = oa_tls_session_write(&c->tls, p, n);
    if (rc == 0)
        rc = oa_tls_session_drain(&c->tls, &c->obuf);
    return rc;
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

static void on_conn_closed(uv_handle_t *h)
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
static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reading = 0;
    uv_timer_stop(&c->timer);
    c->pending_closes++;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    if (!c->awaiting) {
        c->pending_closes++;
        uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    }
}

/* ---- parser callbacks: they only collect ---- */

static int conn_reject(conn_t *c, oa_errcode_t code, const char *text)
{
    c->fail_code = code;
    c->fail_text = text;
    return HPE_USER;
}

static int count_header_bytes(conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->srv->limits.max_header_bytes)
        return conn_reject(c, OA_E_HEADERS_TOO_LARGE, "The request line and headers are too large.");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    int i;

    oa_buf_reset(&c->url);
    oa_buf_reset(&c->field);
    oa_buf_reset(&c->body);
    for (i = 0; i < HDR_COUNT; i++)
        oa_buf_reset(&c->hdr[i]);
    c->hdr_seen = 0;
    c->cur_hdr = -1;
    c->header_bytes = 4; /* the request line's two spaces and CRLF */
    conn_set_phase(c, PHASE_HEADERS);
    return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return count_header_bytes(p->data, n);
}

static int on_version(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return count_header_bytes(p->data, n);
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (c->url.len + n > c->srv->limits.max_url_bytes)
        return conn_reject(c, OA_E_URI_TOO_LONG, "The request URL is too long.");
    if (count_header_bytes(c, n) != 0)
        return HPE_USER;
    if (oa_buf_append(&c->url, at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (count_header_bytes(c, n) != 0)
        return HPE_USER;
    if (oa_buf_append(&c->field, at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    int i;

    c->cur_hdr = -1;
    for (i = 0; i < HDR_COUNT && c->field.len > 0; i++) {
        if (strcasecmp(c->field.data, hdr_names[i]) != 0)
            continue;
        if (c->hdr_seen & (1u << i)) {
            /* Two credentials or two media types make the request ambiguous; list headers just join. */
            if (i == HDR_AUTHORIZATION || i == HDR_CONTENT_TYPE)
                return conn_reject(c, OA_E_BAD_REQUEST, "A header that must appear once is repeated.");
            if (oa_buf_append(&c->hdr[i], ", ", 2) != 0)
                return conn_reject(c, OA_E_NOMEM, "Out of memory.");
        }
        c->hdr_seen |= 1u << i;
        c->cur_hdr = i;
        break;
    }
    oa_buf_reset(&c->field);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (count_header_bytes(c, n) != 0)
        return HPE_USER;
    if (c->cur_hdr >= 0 && oa_buf_append(&c->hdr[c->cur_hdr], at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;

    c->cur_hdr = -1;
    return count_header_bytes(c, 4); /* ": " and CRLF */
}

/* Header values end without the optional whitespace before CRLF, and always as C strings. */
static const char *hdr_value(conn_t *c, int i, size_t *len)
{
    oa_buf_t *b = &c->hdr[i];

    *len = 0;
    if (!(c->hdr_seen & (1u << i)))
        return NULL;
    if (b->data == NULL)
        return "";
    while (b->len > 0 && (b->data[b->len - 1] == ' ' || b->data[b->len - 1] == '\t'))
        b->len--;
    b->data[b->len] = '\0';
    *len = b->len;
    return b->data;
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    const oa_http_limits_t *l = &c->srv->limits;
    const char *expect;
    size_t n;
    int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);

    if (p->http_major != 1 || p->http_minor > 1)
        return conn_reject(c, OA_E_BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 are supported.");
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > l->max_body_bytes)
        return conn_reject(c, OA_E_BODY_TOO_LARGE, "The request body is too large.");
    expect = hdr_value(c, HDR_EXPECT, &n);
    if (expect != NULL && p->http_minor == 1 && has_body && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

        if (conn_send(c, cont, sizeof(cont) - 1) != 0)
            return conn_reject(c, OA_E_NOMEM, "Out of memory.");
        conn_flush(c);
    }
    if (has_body)
        conn_set_phase(c, PHASE_BODY);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (c->body.len + n > c->srv->limits.max_body_bytes)
        return conn_reject(c, OA_E_BODY_TOO_LARGE, "The request body is too large.");
    if (oa_buf_append(&c->body, at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;

    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    /* Stop right after this request: the bytes behind it stay unparsed until it is answered. */
    return HPE_PAUSED;
}

/* ---- requests ---- */

static void conn_dispatch(conn_t *c)
{
    oa_http_request_t *req = &c->req;
    size_t ctype_len;
    char *q;

    if (c->closing)
        return;
    if (c->url.data == NULL && oa_buf_append(&c->url, "", 0) != 0) {
        conn_close(c);
        return;
    }
    q = strchr(c->url.data, '?');
    if (q != NULL)
        *q = '\0';
    req->method = c->parser.method;
    req->method_name = llhttp_method_name((llhttp_method_t)c->parser.method);
    req->path = c->url.data;
    req->query = q != NULL ? q + 1 : NULL;
    req->authorization = hdr_value(c, HDR_AUTHORIZATION, &req->authorization_len);
    req->content_type = hdr_value(c, HDR_CONTENT_TYPE, &ctype_len);
    req->body = c->body.len > 0 ? c->body.data : NULL;
    req->body_len = c->body.len;
    req->peer = c->peer;
    req->tls = c->has_tls != 0;
    req->data = NULL;
    c->is_head = c->parser.method == HTTP_HEAD;
    c->awaiting = 1;
    conn_set_phase(c, PHASE_HANDLER);
    c->srv->handler(req, c->srv->app);
}

/* Answers a request that never reached the handler, then closes. */
static void conn_fail(conn_t *c, oa_errcode_t code, const char *text)
{
    if (c->closing || c->awaiting || c->no_more) {
        conn_close(c);
        return;
    }
    OA_LOG(OA_LOG_DEBUG, "http_request_rejected", OA_KV_STR("peer", c->peer),
           OA_KV_STR("error_code", oa_errcode_name(code)));
    memset(&c->req, 0, sizeof(c->req));
    c->keep_alive = 0;
    c->is_head = 0;
    c->awaiting = 1;
    oa_http_respond_error(&c->req, 0, code, text, NULL);
}

/* Parses buffered input and hands complete requests to the handler, one at a time. Reentrant calls (a handler
 * answering synchronously) return at once: the outer loop carries on. */
static void conn_process(conn_t *c)
{
    if (c->in_process)
        return;
    c->in_process = 1;
    while (!c->closing && !c->no_more && !c->awaiting && c->in_off < c->in.len) {
        const char *start = c->in.data + c->in_off;
        enum llhttp_errno e;

        if (c->writing && c->obuf.len >= OUT_HIGH_WATER)
            break;
        e = llhttp_execute(&c->parser, start, c->in.len - c->in_off);
        if (c->closing)
            break; /* a failed write inside a callback (100 Continue) already ended the connection */
        if (e == HPE_OK) {
            c->in_off = c->in.len;
        } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            c->in_off += (size_t)(llhttp_get_error_pos(&c->parser) - start);
            c->paused = e == HPE_PAUSED;
            conn_dispatch(c);
        } else {
            c->in_off = c->in.len;
            if (c->fail_code != OA_OK)
                conn_fail(c, c->fail_code, c->fail_text);
            else
                conn_fail(c, OA_E_BAD_REQUEST, "The request is not valid HTTP/1.1.");
        }
    }
    if (c->in_off == c->in.len) {
        c->in_off = 0;
        oa_buf_reset(&c->in);
    }
    if (!c->closing && !c->awaiting && !c->no_more && c->phase == PHASE_NONE)
        conn_set_phase(c, PHASE_IDLE);
    conn_update_reading(c);
    c->in_process = 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = oa_container_of(s, conn_t, tcp);
    oa_error_t err;

    if (nread < 0) {
        /* A client that half-closes right after its request (printf ... | nc -N) still reads the answer: with a
         * request at the handler, finish it, then close. */
        if (nread == UV_EOF && c->awaiting && !c->closing) {
            c->no_more = 1;
            conn_update_reading(c);
            return;
        }
        conn_close(c);
        return;
    }
    if (nread == 0 || c->phase == PHASE_LINGER)
        return;
    if (!c->has_tls) {
        c->in.len += (size_t)nread;
        c->in.data[c->in.len] = '\0';
        conn_process(c);
        return;
    }
    if (c->in_off > 0) {
        oa_buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    oa_error_clear(&err);
    if (oa_tls_session_feed(&c->tls, buf->base, (size_t)nread) != 0)
        oa_error_set(&err, OA_E_NOMEM, "Out of memory for TLS records");
    else if (oa_tls_session_read(&c->tls, &c->in, &err) == OA_TLS_READ_CLOSED)
        oa_error_set(&err, OA_E_IO, "The client closed the TLS session");
    /* Handshake records, tickets and alerts go out whatever happened. */
    if (oa_tls_session_drain(&c->tls, &c->obuf) != 0 && err.code == OA_OK)
        oa_error_set(&err, OA_E_NOMEM, "Out of memory for TLS records");
    conn_flush(c);
    if (err.code != OA_OK) {
        OA_LOG(OA_LOG_DEBUG, "http_tls_failed", OA_KV_STR("peer", c->peer), OA_KV_STR("reason", err.text));
        conn_close(c);
        return;
    }
    conn_process(c);
}

static void on_timer(uv_timer_t *t)
{
    conn_t *c = oa_container_of(t, conn_t, timer);
    phase_t phase = c->timer_phase;

    c->timer_phase = PHASE_NONE;
    switch (phase) {
    case PHASE_HEADERS:
        conn_fail(c, OA_E_REQUEST_TIMEOUT, "The request headers did not arrive in time.");
        break;
    case PHASE_BODY:
        conn_fail(c, OA_E_REQUEST_TIMEOUT, "The request body did not arrive in time.");
        break;
    default:
        conn_close(c);
        break;
    }
}

/* ---- responses ---- */

static const char *status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

static const char *server_date(oa_http_server_t *s)
{
    time_t now = time(NULL);

    if (now != s->date_sec) {
        s->date_sec = now;
        oa_time_rfc1123(now, s->date);
    }
    return s->date;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_uint(char *p, size_t v)
{
    char tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

/* Appends the whole response to b with one size computation and plain copies: this runs for every request. */
static int build_response(oa_http_server_t *s, oa_buf_t *b, int status, const char *ctype, const char *extra,
                          const char *body, size_t len, int keep, int head)
{
    const char *reason, *date;
    size_t rlen, dlen, clen, elen, blen;
    char *p;
    int rc;

    if (status < 100 || status > 999)
        status = 500;
    reason = status_reason(status);
    date = server_date(s);
    rlen = strlen(reason);
    dlen = strlen(date);
    clen = strlen(ctype);
    elen = extra != NULL ? strlen(extra) : 0;
    blen = head ? 0 : len;
    rc = oa_buf_reserve(b, 160 + rlen + dlen + clen + elen + blen);
    if (rc != 0)
        return rc;
    p = b->data + b->len;
    p = PUT_LIT(p, "HTTP/1.1 ");
    p = put_uint(p, (size_t)status);
    *p++ = ' ';
    p = put(p, reason, rlen);
    p = PUT_LIT(p, "\r\nServer: ocsp-agent\r\nDate: ");
    p = put(p, date, dlen);
    p = PUT_LIT(p, "\r\nContent-Type: ");
    p = put(p, ctype, clen);
    p = PUT_LIT(p, "\r\nContent-Length: ");
    p = put_uint(p, len);
    if (keep)
        p = PUT_LIT(p, "\r\nConnection: keep-alive\r\n");
    else
        p = PUT_LIT(p, "\r\nConnection: close\r\n");
    if (elen > 0)
        p = put(p, extra, elen);
    p = PUT_LIT(p, "\r\n");
    if (blen > 0)
        p = put(p, body, blen);
    *p = '\0';
    b->len = (size_t)(p - b->data);
    return 0;
}

void oa_http_respond_typed(oa_http_request_t *req, int status, const char *content_type, const char *extra_headers,
                           const char *body, size_t len)
{
    conn_t *c = oa_container_of(req, conn_t, req);
    oa_http_server_t *s = c->srv;
    int keep, rc;

    if (!c->awaiting)
        return; /* answered twice: the first answer stands */
    c->awaiting = 0;
    if (c->closing) {
        /* The peer left while the handler worked: drop the answer and finish the teardown that was waiting for
         * it. The timer close is the last one, so the connection is freed in its callback. */
        OA_LOG(OA_LOG_DEBUG, "http_response_dropped", OA_KV_STR("peer", c->peer), OA_KV_INT("status", status));
        c->pending_closes++;
        uv_close((uv_handle_t *)&c->timer, on_conn_closed);
        return;
    }
    keep = c->keep_alive && !s->stopping;
    if (!c->has_tls) {
        rc = build_response(s, &c->obuf, status, content_type, extra_headers, body, len, keep, c->is_head);
    } else {
        oa_buf_reset(&c->resp);
        rc = build_response(s, &c->resp, status, content_type, extra_headers, body, len, keep, c->is_head);
        if (rc == 0)
            rc = conn_send(c, c->resp.data, c->resp.len);
    }
    if (rc != 0) {
        conn_close(c);
        return;
    }
    if (!keep)
        c->no_more = 1;
    conn_set_phase(c, PHASE_NONE);
    if (keep && c->paused) {
        c->paused = 0;
        llhttp_resume(&c->parser);
    }
    conn_flush(c);
    if (!c->in_process)
        conn_process(c);
}

void oa_http_respond(oa_http_request_t *req, int status, const char *extra_headers, const char *body, size_t len)
{
    oa_http_respond_typed(req, status, "application/json", extra_headers, body, len);
}

void oa_http_respond_error(oa_http_request_t *req, int status, oa_errcode_t code, const char *text,
                           const char *extra_headers)
{
    conn_t *c = oa_container_of(req, conn_t, req);
    oa_buf_t *b = &c->ebuf;
    int rc;

    if (text == NULL)
        text = "";
    oa_buf_reset(b);
    rc = oa_buf_append_str(b, "{\"error_code\":\"");
    if (rc == 0)
        rc = oa_buf_append_str(b, oa_errcode_name(code));
    if (rc == 0)
        rc = oa_buf_append_str(b, "\",\"description\":\"");
    if (rc == 0)
        rc = oa_json_escape(b, text);
    if (rc == 0)
        rc = oa_buf_append_str(b, "\",\"message\":\"");
    if (rc == 0)
        rc = oa_json_escape(b, text);
    if (rc == 0)
        rc = oa_buf_append_str(b, "\"}");
    if (rc != 0) {
        static const char fallback[] = "{\"error_code\":\"out_of_memory\",\"description\":\"Out of memory.\","
                                       "\"message\":\"Out of memory.\"}";

        oa_http_respond_typed(req, 500, "application/json", NULL, fallback, sizeof(fallback) - 1);
        return;
    }
    oa_http_respond_typed(req, status != 0 ? status : oa_errcode_http_status(code), "application/json",
                          extra_headers, b->data, b->len);
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

/* A connection struct with its handles initialised and linked into the server's list (so conn_close can always
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
        conn_close(c);
        return;
    }
    c->counted = 1;
    s->nopen++;
    peer_name(c);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    if (s->tls != NULL) {
        if (oa_tls_session_init(&c->tls, s->tls) != 0) {
            conn_close(c);
            return;
        }
        c->has_tls = 1;
    }
    uv_tcp_nodelay(&c->tcp, 1); /* fails harmlessly on a socket that is not TCP */
    conn_set_phase(c, PHASE_IDLE);
    conn_update_reading(c);
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
        conn_close(c);
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
        conn_close(c);
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
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_method = on_method;
    s->settings.on_url = on_url;
    s->settings.on_version = on_version;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_field_complete = on_header_field_complete;
    s->settings.on_header_value = on_header_value;
    s->settings.on_header_value_complete = on_header_value_complete;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;

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
            conn_update_reading(c);
            continue;
        }
        conn_close(c);
    }
}
