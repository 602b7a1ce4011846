#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <uv.h>

#include "oa_tls_stream.h"

/* A write buffer that grew past this for one burst is given back rather than kept for the life of the connection. */
#define KEEP_BUFFER_MAX (1024u * 1024u)

void oa_tls_stream_init(oa_tls_stream_t *s, uv_stream_t *stream, bool secure, oa_tls_stream_written_cb on_written)
{
    memset(s, 0, offsetof(oa_tls_stream_t, rbuf)); /* the read buffer needs no clearing */
    s->stream = stream;
    s->secure = secure;
    s->on_written = on_written;
}

void oa_tls_stream_free(oa_tls_stream_t *s)
{
    oa_tls_session_free(&s->tls);
    oa_buf_free(&s->plain);
    oa_buf_free(&s->out);
    oa_buf_free(&s->inflight);
    oa_buf_free(&s->dec);
}

int oa_tls_stream_queue(oa_tls_stream_t *s, const void *p, size_t n)
{
    return oa_buf_append(s->secure ? &s->plain : &s->out, p, n);
}

static void on_write_done(uv_write_t *req, int status)
{
    oa_tls_stream_t *s = oa_container_of(req, oa_tls_stream_t, write_req);

    s->writing = false;
    if (status == 0) {
        if (s->inflight.cap > KEEP_BUFFER_MAX)
            oa_buf_free(&s->inflight);
        else
            oa_buf_reset(&s->inflight);
    }
    s->on_written(s, status);
}

int oa_tls_stream_flush(oa_tls_stream_t *s, bool ready, bool *sent)
{
    oa_buf_t tmp;
    uv_buf_t b;
    int rc;

    if (s->writing)
        return 0;
    if (s->secure) {
        if (ready && s->plain.len > 0) {
            rc = oa_tls_session_write(&s->tls, s->plain.data, s->plain.len);
            if (rc != 0)
                return rc;
            oa_buf_reset(&s->plain);
            if (sent != NULL)
                *sent = true;
        }
        rc = oa_tls_session_drain(&s->tls, &s->out);
        if (rc != 0)
            return rc;
    } else if (!ready) {
        return 0;
    } else if (s->out.len > 0 && sent != NULL) {
        *sent = true;
    }
    if (s->out.len == 0)
        return 0;
    /* The filled buffer goes to the write; the empty one takes what is queued meanwhile. */
    tmp = s->inflight;
    s->inflight = s->out;
    s->out = tmp;
    oa_buf_reset(&s->out);
    b = uv_buf_init(s->inflight.data, (unsigned)s->inflight.len);
    rc = uv_write(&s->write_req, s->stream, &b, 1, on_write_done);
    if (rc != 0)
        return rc;
    s->writing = true;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    oa_tls_stream_t *s = h->data;

    (void)suggested;
    *buf = uv_buf_init(s->rbuf, sizeof(s->rbuf));
}

int oa_tls_stream_read_start(oa_tls_stream_t *s, uv_read_cb read_cb)
{
    s->stream->data = s;
    return uv_read_start(s->stream, on_alloc, read_cb);
}

oa_tls_read_t oa_tls_stream_decrypt(oa_tls_stream_t *s, oa_error_t *err)
{
    oa_buf_reset(&s->dec);
    return oa_tls_session_read(&s->tls, &s->dec, err);
}
