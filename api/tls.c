#include <openssl/err.h>
#include <openssl/ssl.h>

#include "oa_delivery.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_tls.h"

int oa_tls_server_ctx_new(const char *cert_pem, const char *key_pem, SSL_CTX **out, oa_error_t *err)
{
    SSL_CTX *ctx = NULL;
    int rc = -1;

    *out = NULL;
    ERR_clear_error();
    ctx = oa_tls_ctx_base(TLS_server_method(), err);
    if (ctx == NULL)
        goto out;
    /* The server's order of ciphers wins, so that a client cannot steer a connection to the weakest one offered. */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* TLS 1.2 offers only AEAD suites with forward secrecy (TLS 1.3's suites all are); no CBC, no static RSA. */
    if (SSL_CTX_set_cipher_list(ctx, OA_TLS12_CIPHERS) != 1) {
        oa_error_set(err, OA_E_INTERNAL, "OpenSSL refused the TLS 1.2 cipher list");
        goto out;
    }
    if (oa_tls_ctx_load_identity(ctx, cert_pem, key_pem, err) != 0)
        goto out;
    *out = ctx;
    ctx = NULL;
    rc = 0;
out:
    SSL_CTX_free(ctx);
    return rc;
}

/* Called in a handshake whose client asked for the certificate status: hands it the current staple, if any. */
static int on_status_request(SSL *ssl, void *arg)
{
    const oa_ocsp_result_t *staple = oa_delivery_staple(arg);
    unsigned char *copy;

    if (staple == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    /* OpenSSL takes ownership of the buffer and frees it with the connection. */
    copy = OPENSSL_memdup(staple->der, staple->der_len);
    if (copy == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)staple->der_len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

bool oa_tls_server_ctx_staples(SSL_CTX *ctx, X509 *watched)
{
    X509 *served = SSL_CTX_get0_certificate(ctx);

    return served != NULL && watched != NULL && X509_cmp(served, watched) == 0;
}

void oa_tls_server_ctx_staple_from(SSL_CTX *ctx, const oa_delivery_t *d)
{
    SSL_CTX_set_tlsext_status_cb(ctx, on_status_request);
    SSL_CTX_set_tlsext_status_arg(ctx, (void *)d);
}
