/*
 * Error codes shared by every module, and the one table that maps them to the API's `error_code` strings and
 * HTTP statuses.
 *
 * The return convention of every public call, in every layer:
 *   - A call that can fail returns int: 0 on success, negative on failure, one of two kinds per call and never
 *     both: -1, with the caller's oa_error_t (when the call takes one) filled with a code from this list and one
 *     full sentence (parsers, validators, loaders: anything whose failure an operator reads); or, for a call whose
 *     only failures are the system's, the libuv UV_E* code (UV_ENOMEM, an I/O error passed through unchanged).
 *   - A call with more than two outcomes returns a named enum whose values say them (oa_auth_verdict_t,
 *     oa_tls_read_t, ...); a question returns bool. Never 0/1/-1 or a negated oa_errcode_t.
 *   - An oa_errcode_t travels as a positive value: in oa_error_t.code, or as a callback's result argument.
 */
#ifndef OA_ERROR_H
#define OA_ERROR_H

#include <stddef.h>

typedef enum oa_errcode_e {
    OA_OK = 0,

    /* API and configuration. */
    OA_E_INVALID_SCHEMA,           /* invalid_schema, 400 */
    OA_E_NO_RESPONDER_URL,         /* no_responder_url, 400 (500 from POST /v1/ocsp/test) */
    OA_E_UNSUPPORTED_BY_CAPABILITY,/* ocsp_unsupported_by_capability, 406 */
    OA_E_NOT_FOUND,                /* not_found, 404 */
    OA_E_METHOD_NOT_ALLOWED,       /* method_not_allowed, 405 */
    OA_E_BAD_REQUEST,              /* bad_request, 400: malformed HTTP */
    OA_E_REQUEST_TIMEOUT,          /* request_timeout, 408 */
    OA_E_BODY_TOO_LARGE,           /* request_body_too_large, 413 */
    OA_E_URI_TOO_LONG,             /* uri_too_long, 414 */
    OA_E_UNSUPPORTED_MEDIA_TYPE,   /* unsupported_media_type, 415 */
    OA_E_HEADERS_TOO_LARGE,        /* request_headers_too_large, 431 */
    OA_E_UNAUTHORIZED,             /* unauthorized, 401 */
    OA_E_FORBIDDEN,                /* insufficient_permissions, 403 */
    OA_E_AUTH_BUSY,                /* authentication_busy, 503 */
    OA_E_INTERNAL,                 /* internal_error, 500 */
    OA_E_NOMEM,                    /* out_of_memory, 500 */
    OA_E_PERSIST,                  /* config_persist_failed, 500 */
    OA_E_TASK_QUEUED_TOO_LONG,     /* task_queued_for_too_long, 500 */
    OA_E_STORE_UNAVAILABLE,        /* cluster_store_unavailable, 503 */

    /* Start-up: options and files. */
    OA_E_BAD_OPTION,               /* invalid_option */
    OA_E_BAD_FILE,                 /* invalid_file */
    OA_E_IO,                       /* io_error */

    /* One OCSP query: transport. */
    OA_E_OCSP_URL,                 /* ocsp_responder_url_unsupported, 500 */
    OA_E_OCSP_DNS,                 /* ocsp_responder_dns_failed, 502 */
    OA_E_OCSP_CONNECT,             /* ocsp_responder_connection_failed, 502 */
    OA_E_OCSP_TIMEOUT,             /* ocsp_responder_timeout, 504 */
    OA_E_OCSP_HTTP,                /* ocsp_responder_bad_http, 502: not HTTP, or closed mid-response */
    OA_E_OCSP_HTTP_STATUS,         /* ocsp_responder_http_status, 502: any status but 200 */
    OA_E_OCSP_CONTENT_TYPE,        /* ocsp_responder_content_type, 502 */
    OA_E_OCSP_TOO_LARGE,           /* ocsp_response_too_large, 502 */
    /* One OCSP query: the response. */
    OA_E_OCSP_MALFORMED,           /* ocsp_response_malformed, 502: bad DER, trailing bytes */
    OA_E_OCSP_UNSUCCESSFUL,        /* ocsp_response_unsuccessful, 502: tryLater, internalError, ... */
    OA_E_OCSP_SIGNATURE,           /* ocsp_response_signature_invalid, 502 */
    OA_E_OCSP_CERTID,              /* ocsp_response_certid_mismatch, 502 */
    OA_E_OCSP_EXPIRED,             /* ocsp_response_expired, 502: nextUpdate passed */
    OA_E_OCSP_NOT_YET_VALID,       /* ocsp_response_not_yet_valid, 502: thisUpdate in the future */
    OA_E_OCSP_NONCE,               /* ocsp_response_nonce_mismatch, 502 */
    OA_E_OCSP_CANCELLED,           /* ocsp_query_cancelled, 503: OCSP disabled while the query was in flight */

    OA_ERRCODE_COUNT
} oa_errcode_t;

#define OA_ERROR_TEXT_MAX 256

typedef struct oa_error_s {
    oa_errcode_t code;
    char text[OA_ERROR_TEXT_MAX]; /* one full sentence, no trailing newline */
} oa_error_t;

/* Fills err (if not NULL) with code and a printf-formatted sentence. Returns -1 so callers can `return
 * oa_error_set(...)`. */
int oa_error_set(oa_error_t *err, oa_errcode_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Clears err to OA_OK and an empty sentence. */
void oa_error_clear(oa_error_t *err);

/* The API's error_code string for code ("invalid_schema"); never NULL. */
const char *oa_errcode_name(oa_errcode_t code);

/* The HTTP status the API answers code with by default (400, 406, 502, ...). */
int oa_errcode_http_status(oa_errcode_t code);

/* Appends OpenSSL's queued errors to err->text as "<text>: <reason>; <reason>" and empties the queue.
 * Safe with err == NULL (the queue is only emptied). */
void oa_error_add_ssl(oa_error_t *err);

#endif
