/*
 * One server-side TLS session over two memory BIOs, private to the HTTP server.
 *
 * The session never touches a socket: ciphertext read from the network is fed in with oa_tls_session_feed,
 * plaintext comes out of oa_tls_session_read, plaintext to send goes in with oa_tls_session_write, and the
 * ciphertext OpenSSL produced (handshake records, application data, alerts) is taken out with
 * oa_tls_session_drain and written to the socket by the caller. None of these calls blocks.
 */
#ifndef OA_TLS_SESSION_H
#define OA_TLS_SESSION_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "oa_util.h"

typedef struct oa_tls_session_s {
    SSL *ssl;  /* owns both BIOs once set */
    BIO *rbio; /* ciphertext from the peer, borrowed from ssl */
    BIO *wbio; /* ciphertext for the peer, borrowed from ssl */
    int shutdown_sent;
} oa_tls_session_t;

/* Creates the SSL object in server mode on ctx (which the session does not own). Returns 0 or UV_ENOMEM; on
 * failure t holds nothing to free. */
int oa_tls_session_init(oa_tls_session_t *t, SSL_CTX *ctx);

/* Frees the SSL object and its BIOs. Safe on a session that was never initialised (zeroed). */
void oa_tls_session_free(oa_tls_session_t *t);

/* Hands n bytes of ciphertext from the peer to the session. Returns 0 or UV_ENOMEM. */
int oa_tls_session_feed(oa_tls_session_t *t, const void *p, size_t n);

/* Runs the handshake as far as the fed bytes allow and appends every plaintext byte they carry to out.
 * Returns 0 when more ciphertext is needed, 1 when the peer sent close_notify, UV_EPROTO when the handshake or
 * a record failed (the queued alert can still be drained), UV_ENOMEM. OpenSSL's error queue is emptied. */
int oa_tls_session_read(oa_tls_session_t *t, oa_buf_t *out);

/* Encrypts n bytes of plaintext. The memory BIO takes every record, so the write is complete or failed.
 * Returns 0 or UV_EPROTO. */
int oa_tls_session_write(oa_tls_session_t *t, const void *p, size_t n);

/* Queues close_notify once. */
void oa_tls_session_shutdown(oa_tls_session_t *t);

/* Moves all pending ciphertext for the peer to the end of out. Returns 0 or UV_ENOMEM. */
int oa_tls_session_drain(oa_tls_session_t *t, oa_buf_t *out);

#endif
