#include <arpa/inet.h>
#include <llhttp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "fetch.h"
#include "oa_connect.h"
#include "oa_util.h"

#define DEFAULT_MAX_BODY 65536
#define HEADERS_MAX      32768 /* status line and headers together */
#define READ_CHUNK       16384
#define REASON_MAX       64

enum sock_state { SOCK_NONE, SOCK_OPEN, SOCK_CLOSING };

struct oa_fetch_s {
    uv_loop_t *loop;
    uv_timer_t timer; /* the deadline once connected (the connector keeps it before), then the report */
    uv_tcp_t tcp;
    uv_write_t write_req;
    llhttp_t parser;

    oa_fetch_url_t url;
    char where[OA_FETCH_HOST_MAX + 16]; /* "host:port" for every sentence */
    unsigned timeout_ms;
    size_t max_body;
    oa_buf_t request;
    oa_buf_t body;
    char readbuf[READ_CHUNK];

    oa_connect_t *connector; /* while resolving and connecting; it holds tcp until it reports */

    /* Callbacks still due: the timer's close, the TCP handle's close, the connector's report. The struct is freed
     * when this drops to zero. */
    int pending;
    enum sock_state tcp_state;

    const char *phase; /* what the exchange was doing, for the timeout sentence */
    int done;          /* finish() ran: handles are closing, the outcome is fixed */
    int complete;      /* llhttp saw the whole response */
    int got_bytes;     /* the responder sent at least one byte */
    int cb_fired;      /* the callback has been called (or is running) */

    /* Header parsing state: llhttp may hand names and values over in pieces. */
    char field[16];
    size_t field_len;
    int field_overflow;
    int in_content_type;
    int saw_content_type;
    char content_type[128];
    size_t content_type_len;
    char reason[REASON_MAX];
    size_t reason_len;
    size_t header_bytes;

    int code;
    char text[OA_ERROR_TEXT_MAX];
    oa_fetch_cb cb;
    void *data;
};

static void on_tcp_closed(uv_handle_t *h);

/* ---- URL parsing ---- */

static int host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

void oa_fetch_url_free(oa_fetch_url_t *u)
{
    if (u == NULL)
        return;
    free(u->path);
    memset(u, 0, sizeof(*u));
}

int oa_fetch_url_parse(const char *url, oa_fetch_url_t *out, oa_error_t *err)
{
    const char *sep, *auth, *auth_end, *host, *host_end, *port_start = NULL, *path_end;
    size_t i, host_len, scheme_len, path_len;
    unsigned long port = 80;
    int bracketed = 0;

    memset(out, 0, sizeof(*out));
    if (url == NULL || url[0] == '\0')
        return oa_error_set(err, OA_E_OCSP_URL, "The OCSP responder URL is empty.");
    for (i = 0; url[i] != '\0'; i++) {
        /* A space or control character could end up in the request line and split it. */
        if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f)
            return oa_error_set(err, OA_E_OCSP_URL,
                                "The OCSP responder URL contains a space or a control character at offset %zu.", i);
    }
    sep = strstr(url, "://");
    if (sep == NULL)
        return oa_error_set(err, OA_E_OCSP_URL,
                            "The OCSP responder URL \"%.120s\" has no scheme: only http:// URLs are supported.", url);
    scheme_len = (size_t)(sep - url);
    if (scheme_len != 4 || strncasecmp(url, "http", 4) != 0)
        return oa_error_set(err, OA_E_OCSP_URL,
                            "The OCSP responder URL \"%.120s\" uses the scheme \"%.*s\": only http:// URLs are "
                            "supported.",
                            url, (int)(scheme_len > 16 ? 16 : scheme_len), url);

    auth = sep + 3;
    auth_end = auth + strcspn(auth, "/?#");
    if (memchr(auth, '@', (size_t)(auth_end - auth)) != NULL)
        return oa_error_set(err, OA_E_OCSP_URL,
                            "The OCSP responder URL \"%.120s\" carries user information before the host, which is "
                            "not supported.",
                            url);
    if (auth == auth_end)
        return oa_error_set(err, OA_E_OCSP_URL, "The OCSP responder URL \"%.120s\" has no host.", url);

    if (auth[0] == '[') {
        const char *close = memchr(auth, ']', (size_t)(auth_end - auth));
        char literal[INET6_ADDRSTRLEN];
        struct in6_addr a6;

        host = auth + 1;
        host_end = close;
        if (close == NULL || close == host || (size_t)(close - host) >= sizeof(literal))
            return oa_error_set(err, OA_E_OCSP_URL, "The OCSP responder URL \"%.120s\" has a malformed IPv6 address.",
                                url);
        memcpy(literal, host, (size_t)(close - host));
        literal[close - host] = '\0';
        if (inet_pton(AF_INET6, literal, &a6) != 1)
            return oa_error_set(err, OA_E_OCSP_URL, "The OCSP responder URL \"%.120s\" has a malformed IPv6 address.",
                                url);
        if (close + 1 < auth_end) {
            if (close[1] != ':')
                return oa_error_set(err, OA_E_OCSP_URL,
                                    "The OCSP responder URL \"%.120s\" has characters after its IPv6 address.", url);
            port_start = close + 2;
        }
        bracketed = 1;
    } else {
        const char *colon = memchr(auth, ':', (size_t)(auth_end - auth));

        host = auth;
        host_end = colon != NULL ? colon : auth_end;
        if (colon != NULL)
            port_start = colon + 1;
        if (host == host_end)
            return oa_error_set(err, OA_E_OCSP_URL, "The OCSP responder URL \"%.120s\" has no host.", url);
        for (i = 0; host + i < host_end; i++) {
            if (!host_char_ok(host[i]))
                return oa_error_set(err, OA_E_OCSP_URL,
                                    "The OCSP responder URL \"%.120s\" has an invalid character in its host.", url);
        }
    }
    host_len = (size_t)(host_end - host);
    if (host_len > OA_FETCH_HOST_MAX)
        return oa_error_set(err, OA_E_OCSP_URL, "The OCSP responder URL has a host longer than %d characters.",
                            OA_FETCH_HOST_MAX);

    if (port_start != NULL && port_start < auth_end) {
        const char *p;

        port = 0;
        for (p = port_start; p < auth_end; p++) {
            if (*p < '0' || *p > '9' || p - port_start >= 5) {
                port = 0;
                break;
            }
            port = port * 10 + (unsigned long)(*p - '0');
        }
        if (port == 0 || port > 65535)
            return oa_error_set(err, OA_E_OCSP_URL,
                                "The OCSP responder URL \"%.120s\" has an invalid port: it must be 1 to 65535.", url);
    }

    /* The fragment never goes on the wire; a bare "?query" gets the root path in front of it. */
    path_end = auth_end + strcspn(auth_end, "#");
    path_len = (size_t)(path_end - auth_end);
    out->path = malloc(path_len + 2);
    if (out->path == NULL)
        return oa_error_set(err, OA_E_NOMEM, "Out of memory while parsing the OCSP responder URL.");
    if (path_len == 0 || auth_end[0] == '?') {
        out->path[0] = '/';
        memcpy(out->path + 1, auth_end, path_len);
        out->path[path_len + 1] = '\0';
    } else {
        memcpy(out->path, auth_end, path_len);
        out->path[path_len] = '\0';
    }
    memcpy(out->host, host, host_len);
    out->host[host_len] = '\0';
    out->port = (unsigned)port;
    out->ipv6_literal = bracketed;
    return 0;
}

/* ---- Teardown ---- */

static void maybe_free(oa_fetch_t *f)
{
    if (f->pending > 0)
        return;
    oa_fetch_url_free(&f->url);
    oa_buf_free(&f->request);
    oa_buf_free(&f->body);
    free(f);
}

static void on_timer_closed(uv_handle_t *h)
{
    oa_fetch_t *f = oa_container_of(h, oa_fetch_t, timer);

    f->pending--;
    f->cb_fired = 1;
    /* The callback runs here, from a close callback, so the user may do anything in it; the socket and the
     * connector may still be winding down, which is why freeing waits for the pending count. */
    if (f->code == 0)
        f->cb(f, 0, NULL, (const unsigned char *)(f->body.data != NULL ? f->body.data : ""), f->body.len, f->data);
    else
        f->cb(f, f->code, f->text, NULL, 0, f->data);
    maybe_free(f);
}

/* Fixes the outcome and starts closing everything; the callback fires from the timer's close callback. */
static void finish_code(oa_fetch_t *f, int code)
{
    if (f->done)
        return;
    f->done = 1;
    f->code = code;
    uv_timer_stop(&f->timer);
    /* The connector closes the socket if it still holds it, and reports once it has. */
    oa_connect_cancel(f->connector);
    if (f->tcp_state == SOCK_OPEN) {
        f->tcp_state = SOCK_CLOSING;
        uv_close((uv_handle_t *)&f->tcp, on_tcp_closed);
    }
    uv_close((uv_handle_t *)&f->timer, on_timer_closed);
}

static void set_text(oa_fetch_t *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_text(oa_fetch_t *f, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(f->text, sizeof(f->text), fmt, ap);
    va_end(ap);
}

static void finish(oa_fetch_t *f, oa_errcode_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void finish(oa_fetch_t *f, oa_errcode_t code, const char *fmt, ...)
{
    va_list ap;

    if (f->done)
        return;
    va_start(ap, fmt);
    vsnprintf(f->text, sizeof(f->text), fmt, ap);
    va_end(ap);
    finish_code(f, (int)code);
}

/* ---- HTTP response parsing ---- */

static int count_header_bytes(oa_fetch_t *f, size_t len)
{
    f->header_bytes += len;
    if (f->header_bytes > HEADERS_MAX) {
        finish(f, OA_E_OCSP_HTTP, "The OCSP responder %s sent response headers larger than %d bytes.", f->where,
               HEADERS_MAX);
        return HPE_USER;
    }
    return HPE_OK;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    oa_fetch_t *f = p->data;
    size_t i;

    for (i = 0; i < len && f->reason_len + 1 < sizeof(f->reason); i++) {
        unsigned char c = (unsigned char)at[i];
        /* The reason phrase goes into an operator's log: keep it printable. */
        f->reason[f->reason_len++] = (char)(c >= 0x20 && c < 0x7f ? c : '?');
    }
    f->reason[f->reason_len] = '\0';
    return count_header_bytes(f, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    oa_fetch_t *f = p->data;

    if (f->field_len + len >= sizeof(f->field))
        f->field_overflow = 1;
    else {
        memcpy(f->field + f->field_len, at, len);
        f->field_len += len;
    }
    return count_header_bytes(f, len);
}

static int on_header_field_complete(llhttp_t *p)
{
    oa_fetch_t *f = p->data;

    f->field[f->field_len] = '\0';
    f->in_content_type = !f->field_overflow && strcasecmp(f->field, "content-type") == 0;
    if (f->in_content_type) {
        /* A repeated Content-Type replaces the earlier one rather than merging with it. */
        f->saw_content_type = 1;
        f->content_type_len = 0;
        f->content_type[0] = '\0';
    }
    return HPE_OK;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    oa_fetch_t *f = p->data;
    size_t room;

    if (f->in_content_type) {
        room = sizeof(f->content_type) - 1 - f->content_type_len;
        if (len > room)
            len = room;
        memcpy(f->content_type + f->content_type_len, at, len);
        f->content_type_len += len;
        f->content_type[f->content_type_len] = '\0';
    }
    return count_header_bytes(f, len);
}

static int on_header_value_complete(llhttp_t *p)
{
    oa_fetch_t *f = p->data;

    f->field_len = 0;
    f->field_overflow = 0;
    f->in_content_type = 0;
    return HPE_OK;
}

/* True when the media type (parameters ignored, case-insensitive) is application/ocsp-response. */
static int content_type_ok(const char *v)
{
    static const char want[] = "application/ocsp-response";
    size_t n = sizeof(want) - 1;

    while (*v == ' ' || *v == '\t')
        v++;
    if (strncasecmp(v, want, n) != 0)
        return 0;
    v += n;
    while (*v == ' ' || *v == '\t')
        v++;
    return *v == '\0' || *v == ';';
}

static int on_headers_complete(llhttp_t *p)
{
    oa_fetch_t *f = p->data;
    int status = llhttp_get_status_code(p);

    if (status != 200) {
        finish(f, OA_E_OCSP_HTTP_STATUS, "The OCSP responder %s answered HTTP %d%s%s instead of 200%s.", f->where,
               status, f->reason_len > 0 ? " " : "", f->reason,
               status >= 300 && status < 400 ? " (redirects are not followed)" : "");
        return -1;
    }
    if (!f->saw_content_type) {
        finish(f, OA_E_OCSP_CONTENT_TYPE,
               "The OCSP responder %s answered without a Content-Type instead of application/ocsp-response.",
               f->where);
        return -1;
    }
    if (!content_type_ok(f->content_type)) {
        size_t i;

        for (i = 0; i < f->content_type_len; i++) {
            if ((unsigned char)f->content_type[i] < 0x20 || (unsigned char)f->content_type[i] >= 0x7f)
                f->content_type[i] = '?';
        }
        finish(f, OA_E_OCSP_CONTENT_TYPE,
               "The OCSP responder %s answered with Content-Type \"%.60s\" instead of application/ocsp-response.",
               f->where, f->content_type);
        return -1;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > f->max_body) {
        finish(f, OA_E_OCSP_TOO_LARGE,
               "The OCSP responder %s announced a body of %llu bytes, over the limit of %zu bytes.", f->where,
               (unsigned long long)p->content_length, f->max_body);
        return -1;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0 &&
        oa_buf_reserve(&f->body, (size_t)p->content_length) != 0) {
        finish(f, OA_E_NOMEM, "Out of memory while reading the answer of the OCSP responder %s.", f->where);
        return -1;
    }
    return HPE_OK;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    oa_fetch_t *f = p->data;

    /* Checked before appending, so the buffer never holds more than max_body bytes of body. */
    if (len > f->max_body - f->body.len) {
        finish(f, OA_E_OCSP_TOO_LARGE, "The OCSP responder %s sent a body larger than the limit of %zu bytes.",
               f->where, f->max_body);
        return HPE_USER;
    }
    if (oa_buf_append(&f->body, at, len) != 0) {
        finish(f, OA_E_NOMEM, "Out of memory while reading the answer of the OCSP responder %s.", f->where);
        return HPE_USER;
    }
    return HPE_OK;
}

static int on_message_complete(llhttp_t *p)
{
    oa_fetch_t *f = p->data;

    f->complete = 1;
    /* Anything after the one response we asked for is ignored. */
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static const char *parser_error(const llhttp_t *p)
{
    const char *reason = llhttp_get_error_reason(p);

    return reason != NULL ? reason : llhttp_errno_name(llhttp_get_errno(p));
}

/* ---- Socket ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    oa_fetch_t *f = oa_container_of(h, oa_fetch_t, tcp);

    (void)suggested;
    /* One read is outstanding at a time, so one fixed buffer in the struct is enough. */
    *buf = uv_buf_init(f->readbuf, sizeof(f->readbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    oa_fetch_t *f = oa_container_of(s, oa_fetch_t, tcp);
    llhttp_errno_t rc;

    if (f->done || nread == 0)
        return;
    if (nread > 0) {
        if (!f->got_bytes) {
            f->got_bytes = 1;
            f->phase = "receiving the answer";
        }
        rc = llhttp_execute(&f->parser, buf->base, (size_t)nread);
        if (f->done)
            return; /* a parser callback already settled the outcome */
        if (f->complete) {
            finish_code(f, 0);
            return;
        }
        if (rc != HPE_OK)
            finish(f, OA_E_OCSP_HTTP, "The OCSP responder %s sent a malformed HTTP response: %s.", f->where,
                   parser_error(&f->parser));
        return;
    }
    if (nread == UV_EOF) {
        if (!f->got_bytes) {
            finish(f, OA_E_OCSP_CONNECT, "The OCSP responder %s closed the connection without answering.", f->where);
            return;
        }
        /* A response without Content-Length or chunking ends here; llhttp completes it on EOF. */
        rc = llhttp_finish(&f->parser);
        if (f->done)
            return;
        if (f->complete) {
            finish_code(f, 0);
            return;
        }
        finish(f, OA_E_OCSP_HTTP, "The OCSP responder %s closed the connection in the middle of the response%s%s.",
               f->where, rc != HPE_OK ? ": " : "", rc != HPE_OK ? parser_error(&f->parser) : "");
        return;
    }
    if (!f->got_bytes)
        finish(f, OA_E_OCSP_CONNECT, "The connection to the OCSP responder %s failed before any answer: %s.",
               f->where, uv_strerror((int)nread));
    else
        finish(f, OA_E_OCSP_HTTP, "The connection to the OCSP responder %s broke in the middle of the response: %s.",
               f->where, uv_strerror((int)nread));
}

static void on_write(uv_write_t *req, int status)
{
    oa_fetch_t *f = oa_container_of(req, oa_fetch_t, write_req);

    /* Once the responder has started answering, the read side tells the rest of the story. */
    if (f->done || status == 0 || f->got_bytes)
        return;
    finish(f, OA_E_OCSP_CONNECT, "Sending the request to the OCSP responder %s failed: %s.", f->where,
           uv_strerror(status));
}

static void time_out(oa_fetch_t *f)
{
    finish(f, OA_E_OCSP_TIMEOUT, "The OCSP responder %s did not answer within %u ms (timed out while %s).", f->where,
           f->timeout_ms, f->phase);
}

static void on_deadline(uv_timer_t *t)
{
    time_out(oa_container_of(t, oa_fetch_t, timer));
}

static void connect_failed(oa_fetch_t *f, const oa_connect_result_t *res)
{
    switch (res->outcome) {
    case OA_CONNECT_DNS:
        finish(f, OA_E_OCSP_DNS, "Could not resolve the host of the OCSP responder %s: %s.", f->where,
               uv_strerror(res->status));
        break;
    case OA_CONNECT_TIMEOUT:
        f->phase = res->resolved ? "connecting" : "resolving the host name";
        time_out(f);
        break;
    default: /* OA_CONNECT_FAILED */
        finish(f, OA_E_OCSP_CONNECT, "Could not connect to the OCSP responder %s: %s (%u address%s tried).", f->where,
               res->status != 0 ? uv_strerror(res->status) : "no usable address", res->attempts,
               res->attempts == 1 ? "" : "es");
        break;
    }
}

static void on_connected(const oa_connect_result_t *res, void *data)
{
    oa_fetch_t *f = data;
    uv_buf_t buf;
    int rc;

    f->connector = NULL;
    f->pending--;
    /* Only finish_code cancels the connector, so a cancellation comes with an outcome already fixed. */
    if (f->done || res->outcome == OA_CONNECT_CANCELLED) {
        maybe_free(f);
        return;
    }
    if (res->outcome != OA_CONNECT_OK) {
        connect_failed(f, res);
        return;
    }
    f->tcp_state = SOCK_OPEN;
    f->pending++;
    /* The rest of the one deadline now covers sending the request and reading the answer. */
    uv_timer_start(&f->timer, on_deadline, res->left_ms, 0);
    f->phase = "waiting for the answer";
    llhttp_init(&f->parser, HTTP_RESPONSE, &parser_settings);
    f->parser.data = f;
    buf = uv_buf_init(f->request.data, (unsigned)f->request.len);
    rc = uv_write(&f->write_req, (uv_stream_t *)&f->tcp, &buf, 1, on_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&f->tcp, on_alloc, on_read);
    if (rc < 0)
        finish(f, OA_E_OCSP_CONNECT, "Sending the request to the OCSP responder %s failed: %s.", f->where,
               uv_strerror(rc));
}

static void on_tcp_closed(uv_handle_t *h)
{
    oa_fetch_t *f = oa_container_of(h, oa_fetch_t, tcp);

    f->pending--;
    f->tcp_state = SOCK_NONE;
    maybe_free(f);
}

/* ---- Public entry points ---- */

static int build_request(oa_fetch_t *f, oa_fetch_method_t method, const void *body, size_t body_len,
                         const char *content_type)
{
    char hostport[OA_FETCH_HOST_MAX + 16];
    int rc;

    if (f->url.ipv6_literal)
        snprintf(hostport, sizeof(hostport), "[%s]", f->url.host);
    else
        snprintf(hostport, sizeof(hostport), "%s", f->url.host);
    if (f->url.port != 80) {
        size_t n = strlen(hostport);
        snprintf(hostport + n, sizeof(hostport) - n, ":%u", f->url.port);
    }
    if (method == OA_FETCH_POST)
        rc = oa_buf_printf(&f->request,
                           "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                           "Connection: close\r\nUser-Agent: ocsp-agent/" OA_VERSION "\r\n\r\n",
                           f->url.path, hostport, content_type != NULL ? content_type : "application/ocsp-request",
                           body_len);
    else
        rc = oa_buf_printf(&f->request,
                           "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: ocsp-agent/" OA_VERSION
                           "\r\n\r\n",
                           f->url.path, hostport);
    if (rc == 0 && method == OA_FETCH_POST && body_len > 0)
        rc = oa_buf_append(&f->request, body, body_len);
    return rc;
}

int oa_fetch_start(uv_loop_t *loop, const char *url, oa_fetch_method_t method, const void *body, size_t body_len,
                   const char *content_type, unsigned timeout_ms, size_t max_body, oa_fetch_cb cb, void *data,
                   oa_fetch_t **out, oa_error_t *err)
{
    oa_fetch_t *f = NULL;
    int rc;

    if (out != NULL)
        *out = NULL;
    if (content_type != NULL && strpbrk(content_type, "\r\n") != NULL)
        return oa_error_set(err, OA_E_INTERNAL, "The request content type contains a line break.");
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return oa_error_set(err, OA_E_NOMEM, "Out of memory while starting an OCSP query.");
    if (oa_fetch_url_parse(url, &f->url, err) != 0) {
        free(f);
        return -1;
    }
    if (f->url.ipv6_literal)
        snprintf(f->where, sizeof(f->where), "[%s]:%u", f->url.host, f->url.port);
    else
        snprintf(f->where, sizeof(f->where), "%s:%u", f->url.host, f->url.port);
    f->loop = loop;
    f->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    f->max_body = max_body > 0 ? max_body : DEFAULT_MAX_BODY;
    f->cb = cb;
    f->data = data;
    if (build_request(f, method, body, body_len, content_type) != 0) {
        oa_fetch_url_free(&f->url);
        oa_buf_free(&f->request);
        free(f);
        return oa_error_set(err, OA_E_NOMEM, "Out of memory while starting an OCSP query.");
    }
    rc = uv_timer_init(loop, &f->timer);
    if (rc < 0) {
        oa_fetch_url_free(&f->url);
        oa_buf_free(&f->request);
        free(f);
        return oa_error_set(err, OA_E_INTERNAL, "Could not create a timer for the OCSP query: %s.", uv_strerror(rc));
    }
    f->pending = 1;
    rc = oa_connect_start(loop, &f->tcp, f->url.host, f->url.port, f->timeout_ms, on_connected, f, &f->connector);
    if (rc < 0) /* reported through the callback, like every failure once the timer exists */
        finish(f, rc == UV_ENOMEM ? OA_E_NOMEM : OA_E_INTERNAL, "Could not start the OCSP query to %s: %s.", f->where,
               uv_strerror(rc));
    else
        f->pending++;
    if (out != NULL)
        *out = f;
    return 0;
}

void oa_fetch_cancel(oa_fetch_t *f)
{
    if (f == NULL || f->cb_fired)
        return;
    /* An exchange that has finished but not reported yet reports the cancellation too: the caller may already
     * have dropped what it needed to use the outcome. */
    if (f->done) {
        f->code = OA_E_OCSP_CANCELLED;
        set_text(f, "The query to the OCSP responder %s was cancelled.", f->where);
        return;
    }
    finish(f, OA_E_OCSP_CANCELLED, "The query to the OCSP responder %s was cancelled.", f->where);
}
