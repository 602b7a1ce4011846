/*
 * The HTTP/1.1 server: libuv TCP, llhttp parsing, optional TLS through memory BIOs.
 *
 * Requests on one connection are handed to the handler one at a time, in order: while a request waits for its
 * response, later pipelined bytes stay buffered and unparsed. The handler answers each request exactly once with
 * oa_http_respond, at once or later from another callback; the request and its connection stay allocated until it
 * does, even if the peer has gone (the response is then dropped).
 *
 * Protocol errors are answered by the server itself with a JSON error body and `Connection: close`:
 * 400 malformed HTTP, 408 header or body timeout, 413 body too large, 414 URL too long, 431 headers too large.
 * Connections over the limit are closed at once. Idle keep-alive connections are closed after idle_timeout_ms.
 */
#ifndef OA_HTTP_H
#define OA_HTTP_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "oa_error.h"

typedef struct oa_http_limits_s {
    size_t max_header_bytes;       /* request line + headers, default 8192 */
    size_t max_url_bytes;          /* default 2048 */
    size_t max_body_bytes;         /* default 65536 */
    unsigned max_connections;      /* default 1024 */
    unsigned header_timeout_ms;    /* from the first byte of a request to the end of its headers, default 10000 */
    unsigned body_timeout_ms;      /* from the end of the headers to the end of the body, default 10000 */
    unsigned idle_timeout_ms;      /* keep-alive connection with no request in progress, default 60000 */
} oa_http_limits_t;

void oa_http_limits_default(oa_http_limits_t *l);

typedef struct oa_http_server_s oa_http_server_t;

/* One parsed request. Strings are NUL-terminated and valid until oa_http_respond returns. */
typedef struct oa_http_request_s {
    int method;                /* llhttp_method_t: HTTP_GET, HTTP_PUT, ... */
    const char *method_name;   /* "GET" */
    const char *path;          /* the URL up to '?' */
    const char *query;         /* after '?', or NULL */
    const char *authorization; /* the Authorization header value, or NULL */
    size_t authorization_len;
    const char *content_type;  /* or NULL */
    const char *body;          /* NULL when empty */
    size_t body_len;
    const char *peer;          /* "127.0.0.1:53122" */
    bool tls;
    void *data;                /* free for the handler's use */
} oa_http_request_t;

/* Called on the loop thread for every complete request; app is the pointer given to oa_http_server_start. */
typedef void (*oa_http_handler_cb)(oa_http_request_t *req, void *app);

/*
 * Answers req: status line, `Content-Type: application/json`, Content-Length, `Connection: keep-alive|close`,
 * extra_headers (NULL or complete "Name: value\r\n" lines), then body (len bytes, copied). Must be called exactly
 * once per request. Processing of the next pipelined request starts after it.
 */
void oa_http_respond(oa_http_request_t *req, int status, const char *extra_headers, const char *body, size_t len);

/* Same with a content type of the caller's choice (for /metrics: "text/plain; version=0.0.4"). */
void oa_http_respond_typed(oa_http_request_t *req, int status, const char *content_type, const char *extra_headers,
                           const char *body, size_t len);

/* Answers req with the API's error body {"error_code","description","message"} for code, with status (0: the
 * table's default status for code) and the sentence text. */
void oa_http_respond_error(oa_http_request_t *req, int status, oa_errcode_t code, const char *text,
                           const char *extra_headers);

/*
 * Binds host:port (IPv4 or IPv6 literal), listens, and serves with handler. tls is NULL for plain HTTP; otherwise
 * the server takes a reference (SSL_CTX_up_ref) and speaks TLS on every connection. Returns 0 with *out set, or -1
 * with err filled (OA_E_IO, sentence names the address and the system error).
 */
int oa_http_server_start(uv_loop_t *loop, const char *host, int port, const oa_http_limits_t *limits, SSL_CTX *tls,
                         oa_http_handler_cb handler, void *app, oa_http_server_t **out, oa_error_t *err);

/*
 * Serves every connection accepted from now on with ctx; the server takes its own reference (SSL_CTX_up_ref) and
 * drops the one it held on the previous context. Connections already open (keep-alive ones included) finish on the
 * context they started with, which each of them keeps alive through its own SSL object. Call on the loop thread.
 * Returns 0, or UV_EINVAL when ctx is NULL or the server speaks plain HTTP (a listener does not change protocol).
 */
int oa_http_server_set_tls(oa_http_server_t *s, SSL_CTX *ctx);

/* The port actually bound (useful with port 0). */
int oa_http_server_port(const oa_http_server_t *s);
/* Connections now open. */
unsigned oa_http_server_connections(const oa_http_server_t *s);

/* Stops listening and closes every connection whose request is not waiting for a response; those close right
 * after their response. done fires (on the loop) once every handle is closed and the server is freed. */
void oa_http_server_stop(oa_http_server_t *s, void (*done)(void *arg), void *arg);


#endif
