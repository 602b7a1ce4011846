/*
 * Private to the ocsp folder: one HTTP/1.1 exchange with an OCSP responder on a libuv loop, parsed with llhttp.
 *
 * Only http:// URLs are supported. The exchange resolves the host with uv_getaddrinfo (every address is tried in
 * turn until one connects), sends one request with "Connection: close", and reads one response that must be
 * HTTP 200 with Content-Type application/ocsp-response and a body of at most max_body bytes. One deadline covers
 * the whole exchange: resolve, connect, send and receive. Redirects are not followed.
 *
 * Error codes given to the callback (the sentence always names the responder as host:port):
 *   OA_E_OCSP_DNS          the host does not resolve;
 *   OA_E_OCSP_CONNECT      no resolved address accepted the connection, or the connection was reset or closed
 *                          before the responder sent a single byte (the request never got an answer);
 *   OA_E_OCSP_TIMEOUT      the deadline passed;
 *   OA_E_OCSP_HTTP         the answer is not HTTP, or the connection broke after the first byte of the answer;
 *   OA_E_OCSP_HTTP_STATUS  any status but 200 (3xx included);
 *   OA_E_OCSP_CONTENT_TYPE the Content-Type is absent or not application/ocsp-response;
 *   OA_E_OCSP_TOO_LARGE    Content-Length announces more than max_body, or the body grows past it (reading stops
 *                          at once; no more than max_body bytes of body are ever kept);
 *   OA_E_OCSP_CANCELLED    oa_fetch_cancel was called;
 *   OA_E_NOMEM             out of memory.
 */
#ifndef OA_OCSP_FETCH_H
#define OA_OCSP_FETCH_H

#include <stddef.h>
#include <uv.h>

#include "oa_error.h"

/* The longest host name accepted in a URL (DNS names are at most 253 characters). */
#define OA_FETCH_HOST_MAX 255

/* An http:// URL taken apart. */
typedef struct oa_fetch_url_s {
    char host[OA_FETCH_HOST_MAX + 1]; /* name or address literal; an IPv6 literal without its brackets */
    unsigned port;                    /* 80 when the URL gives none */
    char *path;                       /* owned: "/" when the URL has no path; keeps the query, drops the fragment */
    int ipv6_literal;                 /* 1 when host was written in brackets */
} oa_fetch_url_t;

/*
 * Parses url into *out. Accepts "http://host[:port][/path][?query][#fragment]" with a case-insensitive scheme and
 * an IPv6 literal in brackets. Rejects other schemes (https included), userinfo ("user@host"), empty or malformed
 * hosts, ports outside 1-65535, and control characters or spaces anywhere. Returns 0 with *out filled (release with
 * oa_fetch_url_free) or -1 with err filled (OA_E_OCSP_URL, or OA_E_NOMEM) and *out left empty.
 */
int oa_fetch_url_parse(const char *url, oa_fetch_url_t *out, oa_error_t *err);
void oa_fetch_url_free(oa_fetch_url_t *u);

typedef enum oa_fetch_method_e { OA_FETCH_GET, OA_FETCH_POST } oa_fetch_method_t;

typedef struct oa_fetch_s oa_fetch_t;

/*
 * Fires exactly once per started exchange, always from a libuv close callback (never from inside
 * oa_fetch_start, oa_fetch_cancel or a read callback), so it may start or cancel other work freely.
 * err is 0 with the response body in body/body_len (borrowed for the call only; body_len may be 0), or an
 * oa_errcode_t from the list above with errtext one sentence and body NULL. f stays valid until the callback
 * returns and is freed by the module afterwards, once all its handles are closed.
 */
typedef void (*oa_fetch_cb)(oa_fetch_t *f, int err, const char *errtext, const unsigned char *body, size_t body_len,
                            void *data);

/*
 * Starts one exchange with url on loop. method POST sends body (body_len bytes, copied) with content_type; GET
 * sends no body (body and content_type are ignored). timeout_ms bounds the whole exchange (0 means 1 ms); max_body
 * caps the response body (0 means 65536). Returns 0 with *out set when out is not NULL (the handle stays valid until
 * cb returns), or -1 with err filled when the exchange cannot start (bad URL, out of memory): then cb never fires.
 */
int oa_fetch_start(uv_loop_t *loop, const char *url, oa_fetch_method_t method, const void *body, size_t body_len,
                   const char *content_type, unsigned timeout_ms, size_t max_body, oa_fetch_cb cb, void *data,
                   oa_fetch_t **out, oa_error_t *err);

/* Abandons f: closes its socket and timer and cancels a pending lookup; cb fires later with OA_E_OCSP_CANCELLED,
 * even when the exchange had already finished but not reported yet. Does nothing once cb has been called (e.g. when
 * called from inside cb). */
void oa_fetch_cancel(oa_fetch_t *f);

#endif
