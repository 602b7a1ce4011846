/*
 * The HTTP server's parsing: llhttp's callbacks, which only collect the request line, the headers the API reads
 * and the body within the limits, then the request handed to the handler, one at a time.
 */
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_internal.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_log.h"
#include "oa_util.h"

static const char *const hdr_names[HDR_COUNT] = {"authorization", "content-type", "expect", "connection"};

/* ---- parser callbacks: they only collect ---- */

static int conn_reject(conn_t *c, oa_errcode_t code, const char *text)
{
    c->fail_code = code;
    c->fail_text = text;
    return HPE_USER;
}

static int count_header_bytes(conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->srv->limits.max_header_bytes)
        return conn_reject(c, OA_E_HEADERS_TOO_LARGE, "The request line and headers are too large.");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    int i;

    oa_buf_reset(&c->url);
    oa_buf_reset(&c->field);
    oa_buf_reset(&c->body);
    for (i = 0; i < HDR_COUNT; i++)
        oa_buf_reset(&c->hdr[i]);
    c->hdr_seen = 0;
    c->cur_hdr = -1;
    c->header_bytes = 4; /* the request line's two spaces and CRLF */
    http_conn_set_phase(c, PHASE_HEADERS);
    return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return count_header_bytes(p->data, n);
}

static int on_version(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    return count_header_bytes(p->data, n);
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (c->url.len + n > c->srv->limits.max_url_bytes)
        return conn_reject(c, OA_E_URI_TOO_LONG, "The request URL is too long.");
    if (count_header_bytes(c, n) != 0)
        return HPE_USER;
    if (oa_buf_append(&c->url, at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (count_header_bytes(c, n) != 0)
        return HPE_USER;
    if (oa_buf_append(&c->field, at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    int i;

    c->cur_hdr = -1;
    for (i = 0; i < HDR_COUNT && c->field.len > 0; i++) {
        if (strcasecmp(c->field.data, hdr_names[i]) != 0)
            continue;
        if (c->hdr_seen & (1u << i)) {
            /* Two credentials or two media types make the request ambiguous; list headers just join. */
            if (i == HDR_AUTHORIZATION || i == HDR_CONTENT_TYPE)
                return conn_reject(c, OA_E_BAD_REQUEST, "A header that must appear once is repeated.");
            if (oa_buf_append(&c->hdr[i], ", ", 2) != 0)
                return conn_reject(c, OA_E_NOMEM, "Out of memory.");
        }
        c->hdr_seen |= 1u << i;
        c->cur_hdr = i;
        break;
    }
    oa_buf_reset(&c->field);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (count_header_bytes(c, n) != 0)
        return HPE_USER;
    if (c->cur_hdr >= 0 && oa_buf_append(&c->hdr[c->cur_hdr], at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;

    c->cur_hdr = -1;
    return count_header_bytes(c, 4); /* ": " and CRLF */
}

/* Header values end without the optional whitespace before CRLF, and always as C strings. */
static const char *hdr_value(conn_t *c, int i, size_t *len)
{
    oa_buf_t *b = &c->hdr[i];

    *len = 0;
    if (!(c->hdr_seen & (1u << i)))
        return NULL;
    if (b->data == NULL)
        return "";
    while (b->len > 0 && (b->data[b->len - 1] == ' ' || b->data[b->len - 1] == '\t'))
        b->len--;
    b->data[b->len] = '\0';
    *len = b->len;
    return b->data;
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    const oa_http_limits_t *l = &c->srv->limits;
    const char *expect;
    size_t n;
    int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);

    if (p->http_major != 1 || p->http_minor > 1)
        return conn_reject(c, OA_E_BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 are supported.");
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > l->max_body_bytes)
        return conn_reject(c, OA_E_BODY_TOO_LARGE, "The request body is too large.");
    expect = hdr_value(c, HDR_EXPECT, &n);
    if (expect != NULL && p->http_minor == 1 && has_body && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

        if (http_conn_send(c, cont, sizeof(cont) - 1) != 0)
            return conn_reject(c, OA_E_NOMEM, "Out of memory.");
        http_conn_flush(c);
    }
    if (has_body)
        http_conn_set_phase(c, PHASE_BODY);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;

    if (c->body.len + n > c->srv->limits.max_body_bytes)
        return conn_reject(c, OA_E_BODY_TOO_LARGE, "The request body is too large.");
    if (oa_buf_append(&c->body, at, n) != 0)
        return conn_reject(c, OA_E_NOMEM, "Out of memory.");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;

    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    /* Stop right after this request: the bytes behind it stay unparsed until it is answered. */
    return HPE_PAUSED;
}

/* ---- requests ---- */

static void conn_dispatch(conn_t *c)
{
    oa_http_request_t *req = &c->req;
    size_t ctype_len;
    char *q;

    if (c->closing)
        return;
    if (c->url.data == NULL && oa_buf_append(&c->url, "", 0) != 0) {
        http_conn_close(c);
        return;
    }
    q = strchr(c->url.data, '?');
    if (q != NULL)
        *q = '\0';
    req->method = c->parser.method;
    req->method_name = llhttp_method_name((llhttp_method_t)c->parser.method);
    req->path = c->url.data;
    req->query = q != NULL ? q + 1 : NULL;
    req->authorization = hdr_value(c, HDR_AUTHORIZATION, &req->authorization_len);
    req->content_type = hdr_value(c, HDR_CONTENT_TYPE, &ctype_len);
    req->body = c->body.len > 0 ? c->body.data : NULL;
    req->body_len = c->body.len;
    req->peer = c->peer;
    req->tls = c->has_tls != 0;
    req->data = NULL;
    c->is_head = c->parser.method == HTTP_HEAD;
    c->awaiting = 1;
    http_conn_set_phase(c, PHASE_HANDLER);
    c->srv->handler(req, c->srv->app);
}

/* Answers a request that never reached the handler, then closes. */
void http_conn_fail(conn_t *c, oa_errcode_t code, const char *text)
{
    if (c->closing || c->awaiting || c->no_more) {
        http_conn_close(c);
        return;
    }
    OA_LOG(OA_LOG_DEBUG, "http_request_rejected", OA_KV_STR("peer", c->peer),
           OA_KV_STR("error_code", oa_errcode_name(code)));
    memset(&c->req, 0, sizeof(c->req));
    c->keep_alive = 0;
    c->is_head = 0;
    c->awaiting = 1;
    oa_http_respond_error(&c->req, 0, code, text, NULL);
}

/* Parses buffered input and hands complete requests to the handler, one at a time. Reentrant calls (a handler
 * answering synchronously) return at once: the outer loop carries on. */
void http_conn_process(conn_t *c)
{
    if (c->in_process)
        return;
    c->in_process = 1;
    while (!c->closing && !c->no_more && !c->awaiting && c->in_off < c->in.len) {
        const char *start = c->in.data + c->in_off;
        enum llhttp_errno e;

        if (c->writing && c->obuf.len >= OUT_HIGH_WATER)
            break;
        e = llhttp_execute(&c->parser, start, c->in.len - c->in_off);
        if (c->closing)
            break; /* a failed write inside a callback (100 Continue) already ended the connection */
        if (e == HPE_OK) {
            c->in_off = c->in.len;
        } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            c->in_off += (size_t)(llhttp_get_error_pos(&c->parser) - start);
            c->paused = e == HPE_PAUSED;
            conn_dispatch(c);
        } else {
            c->in_off = c->in.len;
            if (c->fail_code != OA_OK)
                http_conn_fail(c, c->fail_code, c->fail_text);
            else
                http_conn_fail(c, OA_E_BAD_REQUEST, "The request is not valid HTTP/1.1.");
        }
    }
    if (c->in_off == c->in.len) {
        c->in_off = 0;
        oa_buf_reset(&c->in);
    }
    if (!c->closing && !c->awaiting && !c->no_more && c->phase == PHASE_NONE)
        http_conn_set_phase(c, PHASE_IDLE);
    http_conn_update_reading(c);
    c->in_process = 0;
}

void http_parse_settings_init(llhttp_settings_t *settings)
{
    llhttp_settings_init(settings);
    settings->on_message_begin = on_message_begin;
    settings->on_method = on_method;
    settings->on_url = on_url;
    settings->on_version = on_version;
    settings->on_header_field = on_header_field;
    settings->on_header_field_complete = on_header_field_complete;
    settings->on_header_value = on_header_value;
    settings->on_header_value_complete = on_header_value_complete;
    settings->on_headers_complete = on_headers_complete;
    settings->on_body = on_body;
    settings->on_message_complete = on_message_complete;
}
