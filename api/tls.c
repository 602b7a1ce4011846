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
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        oa_error_set(err, OA_E_NOMEM, "The TLS context could not be created");
        oa_error_add_ssl(err);
        goto out;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        oa_error_set(err, OA_E_INTERNAL, "TLS 1.2 could not be set as the minimum version");
        oa_error_add_ssl(err);
        goto out;
    }
    /* Renegotiation only gives a client a way to make the server work harder; the API never needs it. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (oa_tls_ctx_load_identity(ctx, cert_pem, key_pem, err) != 0)
        goto out;
    *out = ctx;
    ctx = NULL;
    rc = 0;
out:
    SSL_CTX_free(ctx);
    return rc;
}
