/*
 * TLS over two memory BIOs, for the HTTP server (server side) and the Redis and etcd connections (client side,
 * through oa_tls_stream.h), and every TLS context the daemon makes (common/tls_ctx.c).
 *
 * A session never touches a socket: ciphertext read from the network is fed in with oa_tls_session_feed,
 * plaintext comes out of oa_tls_session_read, plaintext to send goes in with oa_tls_session_write, and the
 * ciphertext OpenSSL produced (handshake records, application data, alerts) is taken out with
 * oa_tls_session_drain and written to the socket by the caller. None of these calls blocks.
 */
#ifndef OA_TLS_H
#define OA_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "oa_error.h"
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

/* Creates the SSL object in client mode on ctx (which the session does not own). name is what the server's
 * certificate must carry: a DNS name (also sent as SNI) or an IPv4/IPv6 literal (matched against the IP address
 * entries; no SNI). Verification itself happens only if ctx asks for it (oa_tls_client_ctx_new does). The first
 * oa_tls_session_read starts the handshake. Returns 0, UV_ENOMEM, or UV_EINVAL (name empty or refused by
 * OpenSSL); on failure t holds nothing to free. */
int oa_tls_session_init_client(oa_tls_session_t *t, SSL_CTX *ctx, const char *name);

/* Frees the SSL object and its BIOs. Safe on a session that was never initialised (zeroed). */
void oa_tls_session_free(oa_tls_session_t *t);

/* Hands n bytes of ciphertext from the peer to the session. Returns 0 or UV_ENOMEM. */
int oa_tls_session_feed(oa_tls_session_t *t, const void *p, size_t n);

/* Where oa_tls_session_read left the session. */
typedef enum oa_tls_read_e {
    OA_TLS_READ_MORE,   /* every fed byte was used: more ciphertext is needed */
    OA_TLS_READ_CLOSED, /* the peer sent close_notify */
    OA_TLS_READ_FAILED, /* the handshake or a record failed (the queued alert can still be drained), or memory ran out */
} oa_tls_read_t;

/* Runs the handshake as far as the fed bytes allow and appends every plaintext byte they carry to out. On
 * OA_TLS_READ_FAILED, err (if not NULL) says why in one sentence: OA_E_NOMEM, or OA_E_IO with the result of the peer
 * certificate's verification when that failed, then OpenSSL's reasons (a received alert among them). OpenSSL's
 * error queue is emptied. */
oa_tls_read_t oa_tls_session_read(oa_tls_session_t *t, oa_buf_t *out, oa_error_t *err);

/* true once the handshake has completed. */
bool oa_tls_session_established(const oa_tls_session_t *t);

/* Encrypts n bytes of plaintext. The memory BIO takes every record, so the write is complete or failed.
 * Returns 0 or UV_EPROTO. */
int oa_tls_session_write(oa_tls_session_t *t, const void *p, size_t n);

/* Queues close_notify once. */
void oa_tls_session_shutdown(oa_tls_session_t *t);

/* Moves all pending ciphertext for the peer to the end of out. Returns 0 or UV_ENOMEM. */
int oa_tls_session_drain(oa_tls_session_t *t, oa_buf_t *out);

/*
 * The settings every TLS context of the daemon shares: a new SSL_CTX for method (TLS_server_method() or
 * TLS_client_method()) with TLS 1.2 as the minimum version and renegotiation refused. Returns the context, which the
 * caller owns (SSL_CTX_free), or NULL with err filled (OA_E_NOMEM when OpenSSL could not create it, OA_E_INTERNAL
 * when it refused the minimum version; both with OpenSSL's reason).
 */
SSL_CTX *oa_tls_ctx_base(const SSL_METHOD *method, oa_error_t *err);

/* Loads a certificate chain (PEM, leaf first) and its unencrypted PEM private key into ctx, and checks that they
 * belong together. Returns 0, or -1 with err filled (OA_E_BAD_FILE naming the file that could not be read or the
 * key and certificate files that do not match, with OpenSSL's reason). Used by both server and client contexts. */
int oa_tls_ctx_load_identity(SSL_CTX *ctx, const char *cert_pem, const char *key_pem, oa_error_t *err);

/*
 * A client-side TLS context: TLS 1.2 minimum, the server's certificate verified (SSL_VERIFY_PEER) against the CAs
 * in ca_file (PEM; NULL: OpenSSL's default locations), and, when cert_file is not NULL, a client certificate chain
 * with its key key_file (both or neither) for servers that ask for one. Returns 0 with *out set (free with
 * SSL_CTX_free), or -1 with err filled (OA_E_BAD_FILE naming the file, with OpenSSL's reason; OA_E_BAD_OPTION when
 * only one of cert_file and key_file is given).
 */
int oa_tls_client_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, SSL_CTX **out,
                          oa_error_t *err);

/* A server-side TLS context from PEM files (key unencrypted): the base settings, the server's cipher order, and for
 * TLS 1.2 only the OA_TLS12_CIPHERS suites. Returns 0, or -1 with err filled (OA_E_BAD_FILE naming the file, with
 * OpenSSL's reason). Free with SSL_CTX_free. */
int oa_tls_server_ctx_new(const char *cert_pem, const char *key_pem, SSL_CTX **out, oa_error_t *err);

/* A client's context replaced (a reload): *slot takes its own reference of ctx and drops the one it held, while
 * connections made with the old one keep it (SSL_new holds its own). Returns 0, or UV_EINVAL when ctx is NULL or
 * *slot is NULL: a client that speaks plain TCP does not change protocol. */
int oa_tls_ctx_replace(SSL_CTX **slot, SSL_CTX *ctx);

/* The TLS 1.2 suites a server offers: ECDHE key exchange and an AEAD cipher only (TLS 1.3's suites all are). */
#define OA_TLS12_CIPHERS                                                                                            \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"                     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* true when ctx's own certificate is cert (the same leaf). */
bool oa_tls_ctx_serves(SSL_CTX *ctx, X509 *cert);

#endif
