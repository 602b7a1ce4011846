#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "oa_error.h"

/* The one table from error codes to the API's error_code strings and default HTTP statuses. */
static const struct {
    const char *name;
    int status;
} errcodes[OA_ERRCODE_COUNT] = {
    [OA_OK] = {"ok", 200},
    [OA_E_INVALID_SCHEMA] = {"invalid_schema", 400},
    [OA_E_NO_RESPONDER_URL] = {"no_responder_url", 400},
    [OA_E_UNSUPPORTED_BY_CAPABILITY] = {"ocsp_unsupported_by_capability", 406},
    [OA_E_NOT_FOUND] = {"not_found", 404},
    [OA_E_METHOD_NOT_ALLOWED] = {"method_not_allowed", 405},
    [OA_E_BAD_REQUEST] = {"bad_request", 400},
    [OA_E_REQUEST_TIMEOUT] = {"request_timeout", 408},
    [OA_E_BODY_TOO_LARGE] = {"request_body_too_large", 413},
    [OA_E_URI_TOO_LONG] = {"uri_too_long", 414},
    [OA_E_UNSUPPORTED_MEDIA_TYPE] = {"unsupported_media_type", 415},
    [OA_E_HEADERS_TOO_LARGE] = {"request_headers_too_large", 431},
    [OA_E_UNAUTHORIZED] = {"unauthorized", 401},
    [OA_E_FORBIDDEN] = {"insufficient_permissions", 403},
    [OA_E_AUTH_BUSY] = {"authentication_busy", 503},
    [OA_E_INTERNAL] = {"internal_error", 500},
    [OA_E_NOMEM] = {"out_of_memory", 500},
    [OA_E_PERSIST] = {"config_persist_failed", 500},
    [OA_E_TASK_QUEUED_TOO_LONG] = {"task_queued_for_too_long", 500},
    [OA_E_STORE_UNAVAILABLE] = {"cluster_store_unavailable", 503},
    [OA_E_BAD_OPTION] = {"invalid_option", 500},
    [OA_E_BAD_FILE] = {"invalid_file", 500},
    [OA_E_IO] = {"io_error", 500},
    [OA_E_OCSP_URL] = {"ocsp_responder_url_unsupported", 500},
    [OA_E_OCSP_DNS] = {"ocsp_responder_dns_failed", 502},
    [OA_E_OCSP_CONNECT] = {"ocsp_responder_connection_failed", 502},
    [OA_E_OCSP_TIMEOUT] = {"ocsp_responder_timeout", 504},
    [OA_E_OCSP_HTTP] = {"ocsp_responder_bad_http", 502},
    [OA_E_OCSP_HTTP_STATUS] = {"ocsp_responder_http_status", 502},
    [OA_E_OCSP_CONTENT_TYPE] = {"ocsp_responder_content_type", 502},
    [OA_E_OCSP_TOO_LARGE] = {"ocsp_response_too_large", 502},
    [OA_E_OCSP_MALFORMED] = {"ocsp_response_malformed", 502},
    [OA_E_OCSP_UNSUCCESSFUL] = {"ocsp_response_unsuccessful", 502},
    [OA_E_OCSP_SIGNATURE] = {"ocsp_response_signature_invalid", 502},
    [OA_E_OCSP_CERTID] = {"ocsp_response_certid_mismatch", 502},
    [OA_E_OCSP_EXPIRED] = {"ocsp_response_expired", 502},
    [OA_E_OCSP_NOT_YET_VALID] = {"ocsp_response_not_yet_valid", 502},
    [OA_E_OCSP_NONCE] = {"ocsp_response_nonce_mismatch", 502},
    [OA_E_OCSP_CANCELLED] = {"ocsp_query_cancelled", 503},
};

const char *oa_errcode_name(oa_errcode_t code)
{
    if ((unsigned)code >= OA_ERRCODE_COUNT || errcodes[code].name == NULL)
        return "internal_error";
    return errcodes[code].name;
}

int oa_errcode_http_status(oa_errcode_t code)
{
    if ((unsigned)code >= OA_ERRCODE_COUNT || errcodes[code].name == NULL)
        return 500;
    return errcodes[code].status;
}

int oa_error_set(oa_error_t *err, oa_errcode_t code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return -1;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof(err->text), fmt, ap);
    va_end(ap);
    return -1;
}

void oa_error_clear(oa_error_t *err)
{
    if (err == NULL)
        return;
    err->code = OA_OK;
    err->text[0] = '\0';
}

void oa_error_add_ssl(oa_error_t *err)
{
    unsigned long e;
    char reason[160];
    size_t used;
    int first = 1;

    while ((e = ERR_get_error()) != 0) {
        if (err == NULL)
            continue;
        ERR_error_string_n(e, reason, sizeof(reason));
        used = strlen(err->text);
        if (used + 3 >= sizeof(err->text))
            continue;
        snprintf(err->text + used, sizeof(err->text) - used, "%s%s", used == 0 ? "" : first ? ": " : "; ",
                 reason);
        first = 0;
    }
}
