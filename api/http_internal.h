/*
 * The HTTP server's private parts, shared by its files and by nothing else in the product: the server and
 * connection structs, and the calls one file makes into another.
 *
 *   http_server.c   the listener, accepting, the connection's life cycle (timers by phase, closing), stopping
 *   http_parse.c    the llhttp callbacks, request assembly, and handing requests to the handler one at a time
 *   http_io.c       reading and writing the socket, in plaintext or through the TLS session, and lingering close
 *   http_respond.c  building responses and JSON error bodies (oa_http_respond*)
 *
 * Tests and fuzz targets also reach oa_http_server_adopt through this header; the daemon never calls it.
 */
#ifndef OA_HTTP_INTERNAL_H
#define OA_HTTP_INTERNAL_H

#include <llhttp.h>
#include <stddef.h>
#include <time.h>
#include <uv.h>

#include "oa_error.h"
#include "oa_http.h"
#include "oa_tls.h"
#include "oa_util.h"

/* Unparsed input kept while a request waits for its response; past it the socket is not read any more. */
#define IN_HIGH_WATER (64 * 1024)
/* Free room offered to each socket read. */
#define READ_CHUNK (16 * 1024)
/* Queued response bytes past which no further pipelined request is started until the socket drains. */
#define OUT_HIGH_WATER (256 * 1024)
/* How long a connection we are closing keeps reading and discarding, so that unread request bytes do not turn
 * our close into a reset that destroys the response in flight. */
#define LINGER_MS 2000
/* Ciphertext buffer shared by every TLS connection of a server, and discard buffer while lingering. */
#define SCRATCH_SIZE (64 * 1024)

enum { HDR_AUTHORIZATION, HDR_CONTENT_TYPE, HDR_EXPECT, HDR_CONNECTION, HDR_COUNT };

/* What the connection's single timer is measuring. */
typedef enum phase_e {
    PHASE_NONE,     /* timer stopped */
    PHASE_IDLE,     /* between requests: idle_timeout, silent close */
    PHASE_HEADERS,  /* header_timeout, 408 */
    PHASE_BODY,     /* body_timeout, 408 */
    PHASE_HANDLER,  /* waiting for oa_http_respond: no timer */
    PHASE_LINGER    /* our response is out, discard input until EOF or LINGER_MS */
} phase_t;

typedef struct conn_s conn_t;

struct oa_http_server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    oa_http_limits_t limits;
    SSL_CTX *tls;
    oa_http_handler_cb handler;
    void *app;
    llhttp_settings_t settings;
    conn_t *conns;      /* every allocated connection, rejected ones included */
    unsigned nconns;    /* length of conns */
    unsigned nopen;     /* accepted within the limit and not yet freed */
    int port;
    int stopping;
    int listener_closed;
    void (*done)(void *arg);
    void *done_arg;
    time_t date_sec;
    char date[OA_RFC1123_LEN];
    char scratch[SCRATCH_SIZE];
};

struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    oa_http_server_t *srv;
    conn_t *prev, *next;
    int pending_closes;
    unsigned closing : 1;     /* handles are being closed; nothing more is sent */
    unsigned timer_closed : 1;
    unsigned counted : 1;     /* included in srv->nopen */
    unsigned awaiting : 1;    /* a request is with the handler */
    unsigned in_process : 1;  /* http_conn_process is on the stack */
    unsigned paused : 1;      /* llhttp returned HPE_PAUSED and waits for llhttp_resume */
    unsigned no_more : 1;     /* no further request is parsed: close once the output is written */
    unsigned finishing : 1;   /* the output is written and the close has begun */
    unsigned reading : 1;
    unsigned writing : 1;     /* wreq is in flight with wbuf */
    unsigned keep_alive : 1;
    unsigned is_head : 1;
    phase_t phase;
    phase_t timer_phase;

    llhttp_t parser;
    oa_errcode_t fail_code;   /* set by a parser callback that rejects the request */
    const char *fail_text;
    size_t header_bytes;
    int cur_hdr;              /* HDR_* of the header whose value is being received, or -1 */
    unsigned hdr_seen;        /* bit per HDR_* */

    oa_buf_t in;              /* plaintext input; bytes before in_off are parsed */
    size_t in_off;
    oa_buf_t url;
    oa_buf_t field;
    oa_buf_t hdr[HDR_COUNT];
    oa_buf_t body;
    oa_buf_t obuf;            /* bytes to write, not yet given to libuv */
    oa_buf_t wbuf;            /* bytes in flight with wreq */
    oa_buf_t resp;            /* plaintext response before encryption (TLS only) */
    oa_buf_t ebuf;            /* JSON error bodies */

    oa_tls_session_t tls;
    int has_tls;
    oa_http_request_t req;
    char peer[80];
};

/* ---- http_server.c ---- */

/* Sets what the connection's timer measures and (re)arms it for that phase's limit; PHASE_NONE and PHASE_HANDLER
 * stop it. */
void http_conn_set_phase(conn_t *c, phase_t phase);
/* Starts closing c; it is freed in its close callbacks, so callers up the stack may keep using it. */
void http_conn_close(conn_t *c);
/* The close callback of the connection's handles; the last one frees the connection. */
void http_on_conn_closed(uv_handle_t *h);

/* ---- http_parse.c ---- */

/* Fills settings with llhttp's defaults and the server's parser callbacks. */
void http_parse_settings_init(llhttp_settings_t *settings);
/* Parses buffered input and hands complete requests to the handler, one at a time; reentrant calls return at
 * once. */
void http_conn_process(conn_t *c);
/* Answers a request that never reached the handler with the error body for code, then closes. */
void http_conn_fail(conn_t *c, oa_errcode_t code, const char *text);

/* ---- http_io.c ---- */

/* Starts or stops reading the socket, as the parser's backlog and the phase allow. */
void http_conn_update_reading(conn_t *c);
/* Writes the queued output; once nothing more is to be sent, begins the lingering close. */
void http_conn_flush(conn_t *c);
/* Queues bytes for the peer, through TLS when the connection has it. Returns 0 or a negative error. */
int http_conn_send(conn_t *c, const char *p, size_t n);

/* ---- for tests and fuzz targets ---- */

/*
 * Serves one already-connected stream socket (a TCP socket, or one end of an AF_UNIX socketpair) as if s had
 * accepted it: the same limits, timers, parsing and responses as a connection from the listener, counted in
 * oa_http_server_connections and refused the same way when max_connections are open. The peer is named
 * "unknown" when the socket has no IP address.
 *
 * Returns 0 when the connection was set up or refused (s then owns fd and closes it), or a negative UV_E* error
 * when fd could not be taken (the caller still owns fd and must close it). Fails with UV_ECANCELED once
 * oa_http_server_stop was called.
 */
int oa_http_server_adopt(oa_http_server_t *s, uv_os_sock_t fd);

#endif
