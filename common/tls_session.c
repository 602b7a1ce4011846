#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <uv.h>

#include "oa_error.h"
#include "oa_tls.h"

/* Creates the SSL object and its two memory BIOs; the caller then chooses the side. */
static int session_new(oa_tls_session_t *t, SSL_CTX *ctx)
{
    BIO *rbio = NULL, *wbio = NULL;

    t->ssl = NULL;
    t->rbio = NULL;
    t->wbio = NULL;
    t->shutdown_sent = 0;
    t->ssl = SSL_new(ctx);
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        SSL_free(t->ssl);
        t->ssl = NULL;
        ERR_clear_error();
        return UV_ENOMEM;
    }
    /* An empty read BIO must mean "not yet", never end of stream. */
    BIO_set_mem_eof_return(rbio, -1);
    BIO_set_mem_eof_return(wbio, -1);
    SSL_set_bio(t->ssl, rbio, wbio); /* ssl owns both from here */
    t->rbio = rbio;
    t->wbio = wbio;
    return 0;
}

int oa_tls_session_init(oa_tls_session_t *t, SSL_CTX *ctx)
{
    int rc = session_new(t, ctx);

    if (rc != 0)
        return rc;
    SSL_set_accept_state(t->ssl);
    return 0;
}

int oa_tls_session_init_client(oa_tls_session_t *t, SSL_CTX *ctx, const char *name)
{
    unsigned char addr[16];
    int rc, ok;

    t->ssl = NULL;
    if (name == NULL || name[0] == '\0')
        return UV_EINVAL;
    rc = session_new(t, ctx);
    if (rc != 0)
        return rc;
    SSL_set_connect_state(t->ssl);
    /* SNI carries host names only (RFC 6066), so an address literal is matched against the certificate's IP
     * entries and not announced. */
    if (uv_inet_pton(AF_INET, name, addr) == 0 || uv_inet_pton(AF_INET6, name, addr) == 0) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name);
    } else {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set_tlsext_host_name(t->ssl, name) == 1 && SSL_set1_host(t->ssl, name) == 1;
    }
    if (!ok) {
        ERR_clear_error();
        oa_tls_session_free(t);
        return UV_EINVAL;
    }
    return 0;
}

void oa_tls_session_free(oa_tls_session_t *t)
{
    SSL_free(t->ssl);
    t->ssl = NULL;
    t->rbio = NULL;
    t->wbio = NULL;
}

int oa_tls_session_feed(oa_tls_session_t *t, const void *p, size_t n)
{
    if (n > (size_t)INT32_MAX)
        return UV_ENOMEM;
    if (n == 0)
        return 0;
    if (BIO_write(t->rbio, p, (int)n) != (int)n) {
        ERR_clear_error();
        return UV_ENOMEM;
    }
    return 0;
}

/* Says why the session failed: the certificate check first (its result outlives the error queue and names the
 * actual problem, such as a host name mismatch), then whatever OpenSSL queued. */
static void describe_failure(oa_tls_session_t *t, oa_error_t *err)
{
    long vr = SSL_get_verify_result(t->ssl);

    if (vr != X509_V_OK)
        oa_error_set(err, OA_E_IO, "The peer's certificate was not accepted (%s)", X509_verify_cert_error_string(vr));
    else if (!SSL_is_init_finished(t->ssl))
        oa_error_set(err, OA_E_IO, "The TLS handshake failed");
    else
        oa_error_set(err, OA_E_IO, "The TLS session failed");
    oa_error_add_ssl(err);
}

oa_tls_read_t oa_tls_session_read(oa_tls_session_t *t, oa_buf_t *out, oa_error_t *err)
{
    for (;;) {
        size_t room;
        int n;

        if (oa_buf_reserve(out, 16384) != 0) {
            oa_error_set(err, OA_E_NOMEM, "Out of memory for TLS plaintext");
            return OA_TLS_READ_FAILED;
        }
        room = out->cap - out->len - 1;
        if (room > (size_t)INT32_MAX)
            room = (size_t)INT32_MAX;
        n = SSL_read(t->ssl, out->data + out->len, (int)room);
        if (n > 0) {
            out->len += (size_t)n;
            out->data[out->len] = '\0';
            continue;
        }
        switch (SSL_get_error(t->ssl, n)) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE: /* a memory BIO never refuses a write; treated as "wait" for completeness */
            return OA_TLS_READ_MORE;
        case SSL_ERROR_ZERO_RETURN:
            return OA_TLS_READ_CLOSED;
        default:
            if (err != NULL)
                describe_failure(t, err);
            ERR_clear_error();
            return OA_TLS_READ_FAILED;
        }
    }
}

bool oa_tls_session_established(const oa_tls_session_t *t)
{
    return t->ssl != NULL && SSL_is_init_finished(t->ssl);
}

int oa_tls_session_write(oa_tls_session_t *t, const void *p, size_t n)
{
    int w;

    if (n == 0)
        return 0;
    if (n > (size_t)INT32_MAX)
        return UV_EPROTO;
    w = SSL_write(t->ssl, p, (int)n);
    if (w != (int)n) {
        ERR_clear_error();
        return UV_EPROTO;
    }
    return 0;
}

void oa_tls_session_shutdown(oa_tls_session_t *t)
{
    if (t->shutdown_sent || t->ssl == NULL)
        return;
    t->shutdown_sent = 1;
    /* Only our close_notify is queued; waiting for the peer's would need a read we do not care about. */
    if (SSL_is_init_finished(t->ssl))
        (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}

int oa_tls_session_drain(oa_tls_session_t *t, oa_buf_t *out)
{
    size_t pending = BIO_ctrl_pending(t->wbio);
    int n, rc;

    if (pending == 0)
        return 0;
    if (pending > (size_t)INT32_MAX)
        pending = (size_t)INT32_MAX;
    rc = oa_buf_reserve(out, pending);
    if (rc != 0)
        return rc;
    n = BIO_read(t->wbio, out->data + out->len, (int)pending);
    if (n > 0) {
        out->len += (size_t)n;
        out->data[out->len] = '\0';
    }
    return 0;
}
