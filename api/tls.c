#include <openssl/err.h>
#include <openssl/ssl.h>

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
    if (oa_tls_ctx_load_identity(ctx, cert_pem, key_pem, err) != 0)
        goto out;
    *out = ctx;
    ctx = NULL;
    rc = 0;
out:
    SSL_CTX_free(ctx);
    return rc;
}
