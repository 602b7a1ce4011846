/*
 * The OCSP engine: what to ask (a target), how to ask (request, HTTP exchange on libuv) and whether to believe the
 * answer (verification). Usable without the API or the scheduler; it never logs.
 */
#ifndef OA_OCSP_H
#define OA_OCSP_H

#include <openssl/ocsp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <uv.h>

#include "oa_error.h"

/* The certificate we watch, its issuer and where to ask. */
typedef struct oa_ocsp_target_s {
    X509 *cert;
    X509 *issuer;
    STACK_OF(X509) *chain; /* every certificate after the first in --cert, plus --issuer: candidates for a
                              delegated responder's chain; may be empty, never NULL */
    char *aia_url;         /* the first OCSP URI of the certificate's AIA, or NULL */
    char *responder_url;   /* the URL queried: the override, else aia_url, else NULL */
    char *subject;         /* one-line subject, for logs */
    char *serial_hex;      /* the serial in hex, for logs */
} oa_ocsp_target_t;

/*
 * Loads the proxy certificate (cert_pem: PEM, optionally followed by its chain) and its issuer (the next certificate
 * in cert_pem, or issuer_pem when given — issuer_pem wins). responder_override (NULL for none) must be an http://
 * URL. Checks that the issuer really issued the certificate (names and signature). Returns 0 with *out set, or -1
 * with err filled (OA_E_BAD_FILE, naming the file and the problem, e.g. "no issuer certificate: the file holds one
 * certificate and --issuer was not given").
 */
int oa_ocsp_target_load(const char *cert_pem, const char *issuer_pem, const char *responder_override,
                        oa_ocsp_target_t **out, oa_error_t *err);
void oa_ocsp_target_free(oa_ocsp_target_t *t);

/* Length of oa_ocsp_target_certid_hex's text, without its terminating NUL. */
#define OA_OCSP_CERTID_HEX_LEN 40

/*
 * Names the CertID the target is queried with (SHA-1 hashes of the issuer's name and key, and the serial): out
 * receives the lowercase hex of the SHA-1 digest of that CertID's DER, so that two targets get the same name exactly
 * when a responder would see the same CertID. Returns 0, or -1 (out "") when OpenSSL fails.
 */
int oa_ocsp_target_certid_hex(const oa_ocsp_target_t *t, char out[OA_OCSP_CERTID_HEX_LEN + 1]);

typedef enum oa_cert_status_e { OA_CERT_GOOD, OA_CERT_REVOKED, OA_CERT_UNKNOWN } oa_cert_status_t;

/* "GOOD", "REVOKED", "UNKNOWN". */
const char *oa_cert_status_name(oa_cert_status_t s);

/* A verified response. */
typedef struct oa_ocsp_result_s {
    oa_cert_status_t cert_status;
    time_t produced_at;
    time_t this_update;
    time_t next_update;      /* 0 when the response has none */
    time_t revocation_time;  /* 0 unless REVOKED */
    int revocation_reason;   /* OCSP_REVOKED_STATUS_*, -1 when absent */
    unsigned char *der;      /* the whole OCSPResponse, owned (malloc) */
    size_t der_len;
} oa_ocsp_result_t;

void oa_ocsp_result_clear(oa_ocsp_result_t *r); /* frees der, zeroes */
/* Deep copy of src into dst (dst is overwritten, not freed). Returns 0 or UV_ENOMEM. */
int oa_ocsp_result_copy(oa_ocsp_result_t *dst, const oa_ocsp_result_t *src);

/* Seconds of clock skew tolerated on thisUpdate/nextUpdate. */
#define OA_OCSP_LEEWAY_SECONDS 300

/*
 * A request for the target: CertID with SHA-1, and a fresh 16-byte nonce when with_nonce. Returns 0 with *out set
 * (free with OCSP_REQUEST_free) or -1 with err filled.
 */
int oa_ocsp_request_new(const oa_ocsp_target_t *t, bool with_nonce, OCSP_REQUEST **out, oa_error_t *err);

/*
 * Verifies a DER OCSPResponse for the target: parses it whole (trailing bytes are an error), requires `successful`,
 * verifies the signature against the issuer (the CA itself, or a delegated responder it certified with the
 * OCSP-signing EKU), finds the SingleResponse for the target's CertID, checks thisUpdate/nextUpdate against now with
 * OA_OCSP_LEEWAY_SECONDS, and, when req is not NULL and the response echoes a nonce, that it equals req's.
 * Returns 0 with *out filled (der copied in), or -1 with err filled with the code of the first check that failed
 * (OA_E_OCSP_MALFORMED, _UNSUCCESSFUL, _SIGNATURE, _CERTID, _EXPIRED, _NOT_YET_VALID, _NONCE) and a sentence.
 */
int oa_ocsp_verify(const oa_ocsp_target_t *t, const unsigned char *der, size_t len, OCSP_REQUEST *req, time_t now,
                   oa_ocsp_result_t *out, oa_error_t *err);

/* Options of one query. */
typedef struct oa_ocsp_query_opts_s {
    unsigned timeout_ms;   /* the whole exchange: resolve, connect, send, receive */
    size_t max_body;       /* larger responses fail with OA_E_OCSP_TOO_LARGE; default 65536 when 0 */
    bool use_get;          /* GET per RFC 6960 Appendix A when the encoded request fits in 255 bytes, else POST */
    bool with_nonce;
} oa_ocsp_query_opts_t;

typedef struct oa_ocsp_query_s oa_ocsp_query_t;

/* Fires exactly once per started query, on the loop: err is 0 with res set (borrowed for the call only), or an
 * OA_E_OCSP_* code with res NULL and errtext one sentence. duration_ms is the whole exchange. The query is freed
 * right after the callback returns. */
typedef void (*oa_ocsp_query_cb)(oa_ocsp_query_t *q, int err, const char *errtext, const oa_ocsp_result_t *res,
                                 unsigned duration_ms, void *data);

/*
 * Queries t->responder_url for t: builds the request, resolves the host (uv_getaddrinfo; every address tried in
 * turn), sends it over HTTP/1.1, reads the answer (HTTP 200, Content-Type application/ocsp-response, body under
 * max_body, parsed with llhttp) and verifies it with oa_ocsp_verify. Only http:// URLs are supported. Returns 0
 * with *out set (may be NULL), or -1 with err filled when the query cannot even start (no URL, unsupported
 * scheme): then cb never fires.
 */
int oa_ocsp_query_start(uv_loop_t *loop, const oa_ocsp_target_t *t, const oa_ocsp_query_opts_t *opts,
                        oa_ocsp_query_cb cb, void *data, oa_ocsp_query_t **out, oa_error_t *err);

/* Abandons q: closes its sockets; cb fires later with OA_E_OCSP_CANCELLED. */
void oa_ocsp_query_cancel(oa_ocsp_query_t *q);

#endif
