/*
 * The HTTP server's socket I/O: reading into the parser's buffer (decrypting through the TLS session when the
 * connection has one), writing the queued output, and the lingering close once the last response is out.
 */
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_log.h"
#include "oa_util.h"
#include "oa_tls.h"

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

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
void http_conn_update_reading(conn_t *c)
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
            http_conn_close(c);
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
            http_conn_flush(c); /* comes back here once the alert is written */
            return;
        }
    }
    c->finishing = 1;
    if (c->srv->stopping || uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        http_conn_close(c);
        return;
    }
    http_conn_set_phase(c, PHASE_LINGER);
    http_conn_update_reading(c);
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = oa_container_of(req, conn_t, wreq);

    c->writing = 0;
    oa_buf_reset(&c->wbuf);
    if (c->closing)
        return;
    if (status < 0) {
        http_conn_close(c);
        return;
    }
    http_conn_flush(c);
    http_conn_process(c);
}

/* Writes obuf: first straight into the socket, and only what the kernel does not take goes through uv_write.
 * The two buffers swap roles so no response needs an allocation of its own. */
void http_conn_flush(conn_t *c)
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
            http_conn_close(c);
            return;
        }
        if ((size_t)n < c->obuf.len) {
            tmp = c->wbuf;
            c->wbuf = c->obuf;
            c->obuf = tmp;
            b = uv_buf_init(c->wbuf.data + n, (unsigned)(c->wbuf.len - (size_t)n));
            if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
                http_conn_close(c);
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
int http_conn_send(conn_t *c, const char *p, size_t n)
{
    int rc;

    if (!c->has_tls)
        return oa_buf_append(&c->obuf, p, n);
    rc = oa_tls_session_write(&c->tls, p, n);
    if (rc == 0)
        rc = oa_tls_session_drain(&c->tls, &c->obuf);
    return rc;
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
            http_conn_update_reading(c);
            return;
        }
        http_conn_close(c);
        return;
    }
    if (nread == 0 || c->phase == PHASE_LINGER)
        return;
    if (!c->has_tls) {
        c->in.len += (size_t)nread;
        c->in.data[c->in.len] = '\0';
        http_conn_process(c);
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
    http_conn_flush(c);
    if (err.code != OA_OK) {
        OA_LOG(OA_LOG_DEBUG, "http_tls_failed", OA_KV_STR("peer", c->peer), OA_KV_STR("reason", err.text));
        http_conn_close(c);
        return;
    }
    http_conn_process(c);
}
