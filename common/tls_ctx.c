/*
 * Every TLS context the daemon makes: the shared base, server and client contexts, and loading an identity.
 */
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <uv.h>

#include "oa_error.h"
#include "oa_tls.h"

/* A key file must never make the daemon stop and ask for a passphrase on its terminal: refusing is the answer. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return 0;
}

int oa_tls_ctx_load_identity(SSL_CTX *ctx, const char *cert_pem, const char *key_pem, oa_error_t *err)
{
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    int rc = -1;

    ERR_clear_error();
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_pem) != 1) {
        oa_error_set(err, OA_E_BAD_FILE, "The certificate file %s could not be loaded", cert_pem);
        oa_error_add_ssl(err);
        goto out;
    }
    /* The key is read here rather than with SSL_CTX_use_PrivateKey_file so that an unreadable file and a key
     * that belongs to another certificate give different sentences. */
    bio = BIO_new_file(key_pem, "r");
    if (bio != NULL)
        key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    if (key == NULL) {
        oa_error_set(err, OA_E_BAD_FILE, "The private key file %s could not be loaded", key_pem);
        oa_error_add_ssl(err);
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        oa_error_set(err, OA_E_BAD_FILE, "The private key in %s does not match the certificate in %s", key_pem,
                     cert_pem);
        oa_error_add_ssl(err);
        goto out;
    }
    rc = 0;
out:
    EVP_PKEY_free(key); /* SSL_CTX_use_PrivateKey took its own reference */
    BIO_free(bio);
    return rc;
}

SSL_CTX *oa_tls_ctx_base(const SSL_METHOD *method, oa_error_t *err)
{
    SSL_CTX *ctx = SSL_CTX_new(method);

    if (ctx == NULL) {
        oa_error_set(err, OA_E_NOMEM, "The TLS context could not be created");
        oa_error_add_ssl(err);
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        oa_error_set(err, OA_E_INTERNAL, "TLS 1.2 could not be set as the minimum version");
        oa_error_add_ssl(err);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* Renegotiation only gives a peer a way to make us work harder; neither the API nor the store needs it. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    return ctx;
}

int oa_tls_client_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, SSL_CTX **out,
                          oa_error_t *err)
{
    SSL_CTX *ctx = NULL;
    int rc = -1;

    *out = NULL;
    ERR_clear_error();
    if ((cert_file == NULL) != (key_file == NULL)) {
        oa_error_set(err, OA_E_BAD_OPTION,
                     "A TLS client certificate needs its key file and a key its certificate "
                     "file (only %s was given)",
                     cert_file != NULL ? cert_file : key_file);
        goto out;
    }
    ctx = oa_tls_ctx_base(TLS_client_method(), err);
    if (ctx == NULL)
        goto out;
    /* The verify callback stays OpenSSL's own: a failed verification aborts the handshake, and the session reads
     * the reason back with SSL_get_verify_result. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            oa_error_set(err, OA_E_BAD_FILE, "The CA file %s could not be loaded", ca_file);
            oa_error_add_ssl(err);
            goto out;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        oa_error_set(err, OA_E_BAD_FILE, "The system's default CA locations could not be loaded");
        oa_error_add_ssl(err);
        goto out;
    }
    if (cert_file != NULL && oa_tls_ctx_load_identity(ctx, cert_file, key_file, err) != 0)
        goto out;
    *out = ctx;
    ctx = NULL;
    rc = 0;
out:
    SSL_CTX_free(ctx);
    return rc;
}

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

bool oa_tls_ctx_serves(SSL_CTX *ctx, X509 *cert)
{
    X509 *served = SSL_CTX_get0_certificate(ctx);

    return served != NULL && cert != NULL && X509_cmp(served, cert) == 0;
}

int oa_tls_ctx_replace(SSL_CTX **slot, SSL_CTX *ctx)
{
    if (ctx == NULL || *slot == NULL || SSL_CTX_up_ref(ctx) != 1)
        return UV_EINVAL;
    SSL_CTX_free(*slot);
    *slot = ctx;
    return 0;
}
