/*
 * One Redis connection on libuv; see oa_redis.h for the contract.
 *
 * Life of a connection: connecting (oa_connect.h: the name resolved, then each address in turn, a fresh TCP handle
 * for each) -> handshaking (TLS only) -> ready. A failure at any point, or the deadline, moves it to failed: every
 * handle is closed at once, and the owner is told from a zero-delay timer, so that a failure found inside
 * oa_redis_connect or oa_redis_command is still reported from the loop and never before the call returns.
 *
 * Teardown follows one rule: memory goes only in the last of the libuv close callbacks (the timer, the TCP handle,
 * the connector's report, which comes from one of its own), and never while one of the owner's callbacks is running
 * (depth counts them), so oa_redis_free is safe from inside any of them.
 */
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "oa_connect.h"
#include "oa_error.h"
#include "oa_redis.h"
#include "oa_tls.h"
#include "oa_tls_stream.h"
#include "oa_util.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 2000u
#define DEFAULT_MAX_REPLY_BYTES    (16u * 1024u * 1024u)

typedef struct pending_s {
    struct pending_s *next;
    oa_redis_reply_cb cb; /* NULL: the reply is dropped */
    void *priv;
} pending_t;

typedef enum state_e {
    ST_CONNECTING, /* resolving the name, then connecting */
    ST_HANDSHAKE,
    ST_READY,
} state_t;

struct oa_redis_s {
    uv_loop_t *loop;
    char *host;
    char *tls_name; /* TLS only: what the certificate must name */
    int port;
    SSL_CTX *tls_ctx;
    unsigned timeout_ms;
    size_t max_reply;
    void (*on_ready)(oa_redis_t *r, void *data);
    void (*on_error)(oa_redis_t *r, const char *why, void *data);
    oa_redis_reply_cb on_push;
    void *data;

    uv_timer_t timer; /* the deadline during the handshake, then the deferred failure report */
    uv_tcp_t tcp;

    oa_connect_t *connector; /* while resolving and connecting; it holds tcp until it reports */
    int write_status;        /* a failed write, reported once the read side had its say */

    oa_tls_stream_t io; /* the bytes to and from tcp, through TLS when tls_ctx is set */
    redisReader *reader;
    size_t reply_bytes; /* bytes of the reply in progress that the reader already consumed */

    pending_t *head, *tail;

    state_t state;
    unsigned depth;         /* owner callbacks running now */
    unsigned failed : 1;    /* no more I/O; set by a failure and by oa_redis_free */
    unsigned freed : 1;     /* oa_redis_free was called */
    unsigned finishing : 1; /* the timer is being closed; memory follows */
    unsigned timer_open : 1;
    unsigned tcp_open : 1;   /* the connection is ours (the connector handed it over) and not closed yet */
    unsigned subscribed : 1; /* the server put the connection in Pub/Sub mode */
    char why[OA_ERROR_TEXT_MAX + 128];
};

static void fail(oa_redis_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- teardown ---- */

static void release(oa_redis_t *r)
{
    pending_t *p;

    while ((p = r->head) != NULL) {
        r->head = p->next;
        free(p);
    }
    if (r->reader != NULL)
        redisReaderFree(r->reader);
    oa_tls_stream_free(&r->io);
    SSL_CTX_free(r->tls_ctx);
    free(r->host);
    free(r->tls_name);
    free(r);
}

static void maybe_release(oa_redis_t *r)
{
    if (r->freed && r->depth == 0 && !r->timer_open && !r->tcp_open && r->connector == NULL)
        release(r);
}

static void on_timer_closed(uv_handle_t *h)
{
    oa_redis_t *r = oa_container_of(h, oa_redis_t, timer);

    r->timer_open = 0;
    maybe_release(r);
}

static void on_tcp_closed(uv_handle_t *h)
{
    oa_redis_t *r = oa_container_of(h, oa_redis_t, tcp);

    r->tcp_open = 0;
    maybe_release(r);
}

/* Stops every source of further events. A connector still running reports its cancellation later, once it has
 * closed the socket it holds. */
static void stop_io(oa_redis_t *r)
{
    oa_connect_cancel(r->connector);
    if (r->tcp_open && !uv_is_closing((uv_handle_t *)&r->tcp))
        uv_close((uv_handle_t *)&r->tcp, on_tcp_closed);
    if (r->timer_open)
        uv_timer_stop(&r->timer);
}

/* Called once the owner freed r and no owner callback is running any more. */
static void finish(oa_redis_t *r)
{
    if (r->finishing)
        return;
    r->finishing = 1;
    if (r->timer_open && !uv_is_closing((uv_handle_t *)&r->timer))
        uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

static void enter(oa_redis_t *r)
{
    r->depth++;
}

static void leave(oa_redis_t *r)
{
    r->depth--;
    /* Only starts closing: the memory goes in a close callback, which never runs inside the caller's frame. */
    if (r->depth == 0 && r->freed)
        finish(r);
}

/* Hands NULL to every queued callback, oldest first. A callback cannot queue more (commands are refused once
 * failed is set) but may call oa_redis_free, which empties the same queue: it is re-read after each callback. */
static void fire_pending_null(oa_redis_t *r)
{
    pending_t *p;

    enter(r);
    while ((p = r->head) != NULL) {
        r->head = p->next;
        if (r->head == NULL)
            r->tail = NULL;
        if (p->cb != NULL)
            p->cb(r, NULL, p->priv);
        free(p);
    }
    leave(r);
}

static void on_report_failure(uv_timer_t *t)
{
    oa_redis_t *r = oa_container_of(t, oa_redis_t, timer);

    enter(r);
    fire_pending_null(r);
    if (!r->freed && r->on_error != NULL)
        r->on_error(r, r->why, r->data);
    leave(r);
}

static void fail(oa_redis_t *r, const char *fmt, ...)
{
    va_list ap;

    if (r->failed)
        return;
    r->failed = 1;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    stop_io(r);
    /* Reported from the loop even when the failure was found inside a call of the owner's. */
    uv_timer_start(&r->timer, on_report_failure, 0, 0);
}

void oa_redis_free(oa_redis_t *r)
{
    if (r == NULL || r->freed)
        return;
    r->freed = 1;
    if (!r->failed) {
        r->failed = 1;
        stop_io(r);
    }
    /* A failure report still waiting on the timer is dropped: after free, only the queued callbacks fire, here. */
    if (r->timer_open)
        uv_timer_stop(&r->timer);
    fire_pending_null(r);
    if (r->depth == 0)
        finish(r);
}

/* ---- writing ---- */

/* Starts the next write when none is in flight. Commands wait until the connection is ready; before that only
 * handshake records go out. With TLS, everything queued is encrypted in one go: few large records rather than one
 * per command. */
static int flush(oa_redis_t *r)
{
    if (r->failed || r->write_status != 0 || (r->state != ST_READY && r->state != ST_HANDSHAKE))
        return 0;
    return oa_tls_stream_flush(&r->io, r->state == ST_READY, NULL);
}

static void on_write_grace(uv_timer_t *t)
{
    oa_redis_t *r = oa_container_of(t, oa_redis_t, timer);

    fail(r, "Writing to Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(r->write_status));
}

static void on_written(oa_tls_stream_t *s, int status)
{
    oa_redis_t *r = oa_container_of(s, oa_redis_t, io);
    int rc;

    if (r->failed)
        return; /* the handle is closing; the buffer goes with r */
    if (status != 0) {
        /* A write fails when the server has already closed, often right after saying why (a TLS alert, an error
         * reply) or after answering earlier commands. Those bytes are read first; the write error is the report
         * only if the read side has nothing to say within a short grace. */
        r->write_status = status;
        uv_timer_start(&r->timer, on_write_grace, 100, 0);
        return;
    }
    rc = flush(r);
    if (rc != 0)
        fail(r, "Writing to Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(rc));
}

/* ---- reading ---- */

static size_t unconsumed(const redisReader *rd)
{
    return rd->len - rd->pos;
}

/* In Pub/Sub mode a message can arrive between a command and its reply; it must not be taken for that reply. */
static int is_push(const oa_redis_t *r, const redisReply *reply)
{
    const char *kind;

    if (!r->subscribed || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    kind = reply->element[0]->str;
    return strcmp(kind, "message") == 0 || strcmp(kind, "pmessage") == 0 || strcmp(kind, "smessage") == 0;
}

/* A (un)subscribe confirmation carries the number of subscriptions left: Pub/Sub mode lasts while it is above 0. */
static void track_subscriptions(oa_redis_t *r, const redisReply *reply)
{
    static const char *const kinds[] = {"subscribe",   "psubscribe",   "ssubscribe",
                                        "unsubscribe", "punsubscribe", "sunsubscribe"};
    size_t i;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 || reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_INTEGER)
        return;
    for (i = 0; i < OA_ARRAY_SIZE(kinds); i++) {
        if (strcmp(reply->element[0]->str, kinds[i]) == 0) {
            r->subscribed = reply->element[2]->integer > 0;
            return;
        }
    }
}

static void deliver(oa_redis_t *r, redisReply *reply)
{
    pending_t *p = r->head;

    track_subscriptions(r, reply);
    if (p == NULL || is_push(r, reply)) {
        if (r->on_push != NULL) {
            enter(r);
            r->on_push(r, reply, r->data);
            leave(r);
        }
        return;
    }
    r->head = p->next;
    if (r->head == NULL)
        r->tail = NULL;
    if (p->cb != NULL) {
        enter(r);
        p->cb(r, reply, p->priv);
        leave(r);
    }
    free(p);
}

static void feed_replies(oa_redis_t *r, const char *p, size_t n)
{
    if (redisReaderFeed(r->reader, p, n) != REDIS_OK) {
        fail(r, "Redis at %s:%d: the reply could not be buffered (%s)", r->host, r->port, r->reader->errstr);
        return;
    }
    while (!r->failed) {
        void *reply = NULL;
        size_t before = unconsumed(r->reader), size;

        if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
            fail(r, "Redis at %s:%d sent something that is not the Redis protocol (%s)", r->host, r->port,
                 r->reader->errstr);
            return;
        }
        /* The reader compacts its buffer as it goes, so what it consumed is measured on the unconsumed rest. */
        r->reply_bytes += before - unconsumed(r->reader);
        if (reply == NULL) {
            if (r->reply_bytes + unconsumed(r->reader) > r->max_reply)
                fail(r, "A reply from Redis at %s:%d is larger than the limit of %zu bytes", r->host, r->port,
                     r->max_reply);
            return;
        }
        size = r->reply_bytes;
        r->reply_bytes = 0;
        if (size > r->max_reply) {
            freeReplyObject(reply);
            fail(r, "A reply from Redis at %s:%d is larger than the limit of %zu bytes", r->host, r->port,
                 r->max_reply);
            return;
        }
        deliver(r, reply);
        freeReplyObject(reply);
    }
}

static void become_ready(oa_redis_t *r)
{
    int rc;

    r->state = ST_READY;
    if (r->write_status == 0)
        uv_timer_stop(&r->timer); /* the deadline is met */
    rc = flush(r);
    if (rc != 0) {
        fail(r, "Writing to Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(rc));
        return;
    }
    if (r->on_ready != NULL) {
        enter(r);
        r->on_ready(r, r->data);
        leave(r);
    }
}

/* Runs the TLS engine over what was fed: handshake progress, records to send, plaintext replies. */
static void tls_pump(oa_redis_t *r)
{
    oa_error_t e;
    oa_tls_read_t rd;
    int wrc;

    oa_error_clear(&e);
    rd = oa_tls_stream_decrypt(&r->io, &e);
    if (rd == OA_TLS_READ_FAILED) {
        fail(r, "TLS with Redis at %s:%d failed: %s", r->host, r->port, e.text);
        return;
    }
    wrc = flush(r);
    if (wrc != 0) {
        fail(r, "Writing to Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(wrc));
        return;
    }
    if (r->state == ST_HANDSHAKE && oa_tls_session_established(&r->io.tls)) {
        become_ready(r);
        if (r->failed)
            return;
    }
    if (r->io.dec.len > 0)
        feed_replies(r, r->io.dec.data, r->io.dec.len);
    if (!r->failed && rd == OA_TLS_READ_CLOSED)
        fail(r, "Redis at %s:%d closed the TLS session", r->host, r->port);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    oa_redis_t *r = oa_container_of(s, oa_redis_t, tcp);
    int rc;

    if (r->failed || nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && r->state == ST_HANDSHAKE)
            fail(r, "Redis at %s:%d closed the connection during the TLS handshake", r->host, r->port);
        else if (nread == UV_EOF)
            fail(r, "Redis at %s:%d closed the connection", r->host, r->port);
        else
            fail(r, "Reading from Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror((int)nread));
        return;
    }
    if (r->tls_ctx == NULL) {
        feed_replies(r, buf->base, (size_t)nread);
        return;
    }
    rc = oa_tls_session_feed(&r->io.tls, buf->base, (size_t)nread);
    if (rc != 0) {
        fail(r, "TLS with Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(rc));
        return;
    }
    tls_pump(r);
}

/* ---- connecting ---- */

static void time_out(oa_redis_t *r, const char *phase)
{
    fail(r, "Redis at %s:%d was not ready within %u ms (timed out %s)", r->host, r->port, r->timeout_ms, phase);
}

static void on_deadline(uv_timer_t *t)
{
    time_out(oa_container_of(t, oa_redis_t, timer), "during the TLS handshake");
}

static void connect_failed(oa_redis_t *r, const oa_connect_result_t *res)
{
    switch (res->outcome) {
    case OA_CONNECT_DNS:
        fail(r, "The Redis host %s could not be resolved (%s)", r->host, uv_strerror(res->status));
        break;
    case OA_CONNECT_TIMEOUT:
        time_out(r, res->resolved ? "while connecting" : "while resolving the name");
        break;
    default: /* OA_CONNECT_FAILED; a name with no usable address is told by the name */
        fail(r, "Could not connect to Redis at %s:%d (%s: %s)", r->host, r->port,
             res->addr[0] != '\0' ? res->addr : r->host,
             uv_strerror(res->status != 0 ? res->status : UV_EADDRNOTAVAIL));
        break;
    }
}

static void on_connected(const oa_connect_result_t *res, void *data)
{
    oa_redis_t *r = data;
    int rc;

    r->connector = NULL;
    /* Only stop_io cancels the connector, after setting failed. */
    if (r->failed || res->outcome == OA_CONNECT_CANCELLED) {
        maybe_release(r);
        return;
    }
    if (res->outcome != OA_CONNECT_OK) {
        connect_failed(r, res);
        return;
    }
    r->tcp_open = 1;
    /* Commands are small and pipelined: Nagle would only hold them back. Keep-alive notices a vanished server on an
     * idle Pub/Sub connection. Neither is worth failing the connection over. */
    (void)uv_tcp_nodelay(&r->tcp, 1);
    (void)uv_tcp_keepalive(&r->tcp, 1, 60);
    rc = oa_tls_stream_read_start(&r->io, on_read);
    if (rc != 0) {
        fail(r, "Reading from Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(rc));
        return;
    }
    if (r->tls_ctx == NULL) {
        become_ready(r);
        return;
    }
    /* The rest of the one deadline now covers the handshake. */
    uv_timer_start(&r->timer, on_deadline, res->left_ms, 0);
    r->state = ST_HANDSHAKE;
    rc = oa_tls_session_init_client(&r->io.tls, r->tls_ctx, r->tls_name);
    if (rc != 0) {
        fail(r, "TLS with Redis at %s:%d could not start (%s, name \"%s\")", r->host, r->port, uv_strerror(rc),
             r->tls_name);
        return;
    }
    tls_pump(r); /* sends the ClientHello */
}

int oa_redis_connect(uv_loop_t *loop, const oa_redis_options_t *o, oa_redis_t **out, oa_error_t *err)
{
    oa_redis_t *r = NULL;
    int rc;

    *out = NULL;
    if (o == NULL || o->host == NULL || o->host[0] == '\0')
        return oa_error_set(err, OA_E_BAD_OPTION, "The Redis host is empty");
    if (o->port < 1 || o->port > 65535)
        return oa_error_set(err, OA_E_BAD_OPTION, "The Redis port %d is out of range (1 to 65535)", o->port);
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        goto nomem;
    r->loop = loop;
    r->port = o->port;
    /* Its own reference: the owner may replace its context (a reload) while this connection is still connecting. */
    if (o->tls != NULL && SSL_CTX_up_ref(o->tls) == 1)
        r->tls_ctx = o->tls;
    r->timeout_ms = o->connect_timeout_ms != 0 ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    r->max_reply = o->max_reply_bytes != 0 ? o->max_reply_bytes : DEFAULT_MAX_REPLY_BYTES;
    r->on_ready = o->on_ready;
    r->on_error = o->on_error;
    r->on_push = o->on_push;
    r->data = o->data;
    r->state = ST_CONNECTING;
    oa_tls_stream_init(&r->io, (uv_stream_t *)&r->tcp, o->tls != NULL, on_written);
    r->host = strdup(o->host);
    r->reader = redisReaderCreate();
    if (r->host == NULL || r->reader == NULL)
        goto nomem;
    if (o->tls != NULL) {
        if (r->tls_ctx == NULL)
            goto nomem;
        r->tls_name = strdup(o->tls_name != NULL ? o->tls_name : o->host);
        if (r->tls_name == NULL)
            goto nomem;
    }
    rc = uv_timer_init(loop, &r->timer);
    if (rc != 0) {
        oa_error_set(err, OA_E_INTERNAL, "The Redis connection timer could not be created (%s)", uv_strerror(rc));
        release(r);
        return -1;
    }
    r->timer_open = 1;
    rc = oa_connect_start(loop, &r->tcp, r->host, (unsigned)o->port, r->timeout_ms, on_connected, r, &r->connector);
    if (rc != 0)
        fail(r, "Could not connect to Redis at %s:%d (%s)", r->host, r->port, uv_strerror(rc));
    *out = r;
    return 0;
nomem:
    if (r != NULL)
        release(r);
    return oa_error_set(err, OA_E_NOMEM, "Out of memory for a Redis connection");
}

int oa_redis_command(oa_redis_t *r, oa_redis_reply_cb cb, void *priv, const char *fmt, ...)
{
    va_list ap;
    char *cmd = NULL;
    pending_t *p;
    int len, rc;

    if (r == NULL || r->failed)
        return -1;
    va_start(ap, fmt);
    len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return -1;
    p = malloc(sizeof(*p));
    if (p == NULL) {
        redisFreeCommand(cmd);
        return -1;
    }
    /* With TLS the bytes wait in plain and are encrypted when the next write starts. */
    rc = oa_tls_stream_queue(&r->io, cmd, (size_t)len);
    redisFreeCommand(cmd);
    if (rc != 0) {
        free(p);
        return -1;
    }
    p->next = NULL;
    p->cb = cb;
    p->priv = priv;
    if (r->tail != NULL)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    rc = flush(r);
    if (rc != 0) /* the callback is queued: it gets NULL from the loop, as the contract says */
        fail(r, "Writing to Redis at %s:%d failed (%s)", r->host, r->port, uv_strerror(rc));
    return 0;
}

bool oa_redis_ready(const oa_redis_t *r)
{
    return r != NULL && !r->failed && r->state == ST_READY;
}

void *oa_redis_data(const oa_redis_t *r)
{
    return r->data;
}
