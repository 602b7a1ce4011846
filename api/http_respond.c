/*
 * The HTTP server's responses: the status line and headers built around the handler's body in one pass, and the
 * API's JSON error body.
 */
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_internal.h"
#include "oa_codec.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_log.h"
#include "oa_util.h"

/* ---- responses ---- */

static const char *status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

static const char *server_date(oa_http_server_t *s)
{
    time_t now = time(NULL);

    if (now != s->date_sec) {
        s->date_sec = now;
        oa_time_rfc1123(now, s->date);
    }
    return s->date;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_uint(char *p, size_t v)
{
    char tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

/* Appends the whole response to b with one size computation and plain copies: this runs for every request. */
static int build_response(oa_http_server_t *s, oa_buf_t *b, int status, const char *ctype, const char *extra,
                          const char *body, size_t len, int keep, int head)
{
    const char *reason, *date;
    size_t rlen, dlen, clen, elen, blen;
    char *p;
    int rc;

    if (status < 100 || status > 999)
        status = 500;
    reason = status_reason(status);
    date = server_date(s);
    rlen = strlen(reason);
    dlen = strlen(date);
    clen = strlen(ctype);
    elen = extra != NULL ? strlen(extra) : 0;
    blen = head ? 0 : len;
    rc = oa_buf_reserve(b, 160 + rlen + dlen + clen + elen + blen);
    if (rc != 0)
        return rc;
    p = b->data + b->len;
    p = PUT_LIT(p, "HTTP/1.1 ");
    p = put_uint(p, (size_t)status);
    *p++ = ' ';
    p = put(p, reason, rlen);
    p = PUT_LIT(p, "\r\nServer: ocsp-agent\r\nDate: ");
    p = put(p, date, dlen);
    p = PUT_LIT(p, "\r\nContent-Type: ");
    p = put(p, ctype, clen);
    p = PUT_LIT(p, "\r\nContent-Length: ");
    p = put_uint(p, len);
    if (keep)
        p = PUT_LIT(p, "\r\nConnection: keep-alive\r\n");
    else
        p = PUT_LIT(p, "\r\nConnection: close\r\n");
    if (elen > 0)
        p = put(p, extra, elen);
    p = PUT_LIT(p, "\r\n");
    if (blen > 0)
        p = put(p, body, blen);
    *p = '\0';
    b->len = (size_t)(p - b->data);
    return 0;
}

void oa_http_respond_typed(oa_http_request_t *req, int status, const char *content_type, const char *extra_headers,
                           const char *body, size_t len)
{
    conn_t *c = oa_container_of(req, conn_t, req);
    oa_http_server_t *s = c->srv;
    int keep, rc;

    if (!c->awaiting)
        return; /* answered twice: the first answer stands */
    c->awaiting = 0;
    if (c->closing) {
        /* The peer left while the handler worked: drop the answer and finish the teardown that was waiting for
         * it. The timer close is the last one, so the connection is freed in its callback. */
        OA_LOG(OA_LOG_DEBUG, "http_response_dropped", OA_KV_STR("peer", c->peer), OA_KV_INT("status", status));
        c->pending_closes++;
        uv_close((uv_handle_t *)&c->timer, http_on_conn_closed);
        return;
    }
    keep = c->keep_alive && !s->stopping;
    if (!c->has_tls) {
        rc = build_response(s, &c->obuf, status, content_type, extra_headers, body, len, keep, c->is_head);
    } else {
        oa_buf_reset(&c->resp);
        rc = build_response(s, &c->resp, status, content_type, extra_headers, body, len, keep, c->is_head);
        if (rc == 0)
            rc = http_conn_send(c, c->resp.data, c->resp.len);
    }
    if (rc != 0) {
        http_conn_close(c);
        return;
    }
    if (!keep)
        c->no_more = 1;
    http_conn_set_phase(c, PHASE_NONE);
    if (keep && c->paused) {
        c->paused = 0;
        llhttp_resume(&c->parser);
    }
    http_conn_flush(c);
    if (!c->in_process)
        http_conn_process(c);
}

void oa_http_respond(oa_http_request_t *req, int status, const char *extra_headers, const char *body, size_t len)
{
    oa_http_respond_typed(req, status, "application/json", extra_headers, body, len);
}

void oa_http_respond_error(oa_http_request_t *req, int status, oa_errcode_t code, const char *text,
                           const char *extra_headers)
{
    conn_t *c = oa_container_of(req, conn_t, req);
    oa_buf_t *b = &c->ebuf;
    int rc;

    if (text == NULL)
        text = "";
    oa_buf_reset(b);
    rc = oa_buf_append_str(b, "{\"error_code\":\"");
    if (rc == 0)
        rc = oa_buf_append_str(b, oa_errcode_name(code));
    if (rc == 0)
        rc = oa_buf_append_str(b, "\",\"description\":\"");
    if (rc == 0)
        rc = oa_json_escape(b, text);
    if (rc == 0)
        rc = oa_buf_append_str(b, "\",\"message\":\"");
    if (rc == 0)
        rc = oa_json_escape(b, text);
    if (rc == 0)
        rc = oa_buf_append_str(b, "\"}");
    if (rc != 0) {
        static const char fallback[] = "{\"error_code\":\"out_of_memory\",\"description\":\"Out of memory.\","
                                       "\"message\":\"Out of memory.\"}";

        oa_http_respond_typed(req, 500, "application/json", NULL, fallback, sizeof(fallback) - 1);
        return;
    }
    oa_http_respond_typed(req, status != 0 ? status : oa_errcode_http_status(code), "application/json",
                          extra_headers, b->data, b->len);
}
