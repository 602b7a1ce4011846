/*
 * The byte pump of a client connection on a libuv stream, with or without TLS: what the Redis and etcd clients
 * share between their protocol and the socket.
 *
 * Writing: the owner queues plaintext (oa_tls_stream_queue) and calls oa_tls_stream_flush whenever something may
 * be sent. With TLS, queued plaintext waits until the owner says the connection is ready, is then encrypted in one
 * go (few large records rather than one per request), and every record OpenSSL produced (handshake, data, alerts)
 * goes out; without TLS the queued bytes go out once ready. At most one uv_write is in flight; its completion is
 * reported to the owner's callback, which usually flushes again.
 *
 * Reading: oa_tls_stream_read_start reads into the stream's own buffer. The owner's read callback hands ciphertext
 * to the session (oa_tls_session_feed on s->tls) and runs it with oa_tls_stream_decrypt; the plaintext is in s->dec.
 * What the owner does with a state change, the plaintext and each failure (its sentences, their order) stays its own.
 *
 * The struct is embedded in the owner's connection; the owner recovers itself with container_of. The stream is the
 * owner's handle: the owner closes it, and frees the pump (oa_tls_stream_free) in its close callback.
 */
#ifndef OA_TLS_STREAM_H
#define OA_TLS_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "oa_error.h"
#include "oa_tls.h"
#include "oa_util.h"

#define OA_TLS_STREAM_READ_CHUNK 65536

typedef struct oa_tls_stream_s oa_tls_stream_t;

/* Fires when the uv_write in flight completed: status 0 (its buffer is then released) or the UV_E* of the write
 * (UV_ECANCELED when the stream was closed). No write is in flight any more. */
typedef void (*oa_tls_stream_written_cb)(oa_tls_stream_t *s, int status);

struct oa_tls_stream_s {
    uv_stream_t *stream; /* borrowed: the owner's handle */
    bool secure;         /* TLS over the stream; tls is then the owner's to start with oa_tls_session_init_client */
    bool writing;        /* a uv_write is in flight */
    oa_tls_session_t tls;
    oa_tls_stream_written_cb on_written;
    uv_write_t write_req;
    oa_buf_t plain;    /* TLS: plaintext waiting for the connection to be ready and for encryption */
    oa_buf_t out;      /* bytes for the socket not yet handed to uv_write */
    oa_buf_t inflight; /* the bytes of the one uv_write in flight */
    oa_buf_t dec;      /* TLS: plaintext decrypted by the last oa_tls_stream_decrypt */
    char rbuf[OA_TLS_STREAM_READ_CHUNK];
};

/* Prepares s (memory of the owner's, zeroed or not) for stream, which need not be initialised or connected yet:
 * nothing touches it before oa_tls_stream_flush or oa_tls_stream_read_start. */
void oa_tls_stream_init(oa_tls_stream_t *s, uv_stream_t *stream, bool secure, oa_tls_stream_written_cb on_written);

/* Frees the session and the buffers. Only once no write is in flight (the stream's close callback has run). */
void oa_tls_stream_free(oa_tls_stream_t *s);

/* Copies n bytes of plaintext to the queue. Returns 0 or UV_ENOMEM. */
int oa_tls_stream_queue(oa_tls_stream_t *s, const void *p, size_t n);

/* Starts the next uv_write unless one is in flight. ready: the connection may carry the owner's bytes (before
 * that, only TLS handshake records go out, and nothing at all without TLS). *sent (may be NULL) is set to true when
 * queued plaintext was handed on (encrypted, or about to be written). Returns 0, or a UV_E* from the encryption,
 * the buffers or uv_write (the owner fails the connection then). */
int oa_tls_stream_flush(oa_tls_stream_t *s, bool ready, bool *sent);

/* uv_read_start on the stream with the pump's buffer, which read_cb receives (valid until it returns). Uses the
 * stream's data field. Returns 0 or the UV_E* of uv_read_start. */
int oa_tls_stream_read_start(oa_tls_stream_t *s, uv_read_cb read_cb);

/* Runs the TLS session over what was fed: the handshake as far as it can go, and the plaintext into s->dec (emptied
 * first). Returns what oa_tls_session_read returns, err filled as it says. The records the session produced wait for
 * the next oa_tls_stream_flush. */
oa_tls_read_t oa_tls_stream_decrypt(oa_tls_stream_t *s, oa_error_t *err);

#endif
