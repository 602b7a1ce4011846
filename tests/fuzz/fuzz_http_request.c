/*
 * Fuzz target: the HTTP server's request path (llhttp callbacks, limits, pipelining, Expect, error answers and the
 * response writer) on arbitrary bytes.
 *
 * Each input is written into one end of an AF_UNIX socketpair whose other end the server adopts as a connection,
 * so every byte goes through the same code as a TCP client's. The first input byte chooses how the rest is cut:
 * below 0x80 it is written at once, otherwise in pieces of (byte & 0x7f) + 1 bytes, each read by the server
 * before the next is written, which moves every parser boundary across callbacks. Then the client half-closes,
 * and the loop runs until the server has freed the connection.
 *
 * The handler answers every request at once. The bytes that come back must parse as a sequence of responses:
 * "HTTP/1.1 " and a three-digit status, headers, a Content-Length body; one final response per request the
 * handler saw, in order and with the status and body it sent, optionally followed by one error response from
 * the server itself (a JSON body whose error_code names the error), after which nothing else may come.
 */
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "http_internal.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small limits so that short inputs reach the 413, 414 and 431 paths. */
#define FUZZ_MAX_HEADER 1024
#define FUZZ_MAX_URL    256
#define FUZZ_MAX_BODY   2048
/* More requests than fit in -max_len bytes, so the table never overflows in practice. */
#define MAX_SEEN 2048
/* Loop turns allowed for the connection to close after the client's FIN; far more than it ever takes. */
#define MAX_TURNS 10000

#define CHECK(cond, ...)                                                                                             \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_http_request: check failed: %s: ", #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                                                            \
            fprintf(stderr, "\n");                                                                                   \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

/* What the handler answered, to be found again in the output. */
typedef struct seen_s {
    int status;
    int head;
    size_t body_len;
} seen_t;

static uv_loop_t loop;
static oa_http_server_t *server;
static seen_t seen[MAX_SEEN];
static size_t nseen;
static int seen_overflow;
static oa_buf_t output;
static char reply[512];

/* Answers every request at once, in one of three ways chosen by the path, so that plain, typed and error
 * answers (with the path, any bytes llhttp let through, escaped into JSON) all reach the writer. */
static void handler(oa_http_request_t *req, void *app)
{
    int status, n;

    (void)app;
    CHECK(req->path != NULL && req->method_name != NULL, "request without a path or a method name");
    CHECK(strlen(req->path) <= FUZZ_MAX_URL, "path of %zu bytes passed the URL limit", strlen(req->path));
    CHECK(req->body_len <= FUZZ_MAX_BODY, "body of %zu bytes passed the body limit", req->body_len);
    CHECK((req->body == NULL) == (req->body_len == 0), "body pointer and length disagree");
    CHECK(req->query == NULL || req->query == req->path + strlen(req->path) + 1, "query not right after the path");
    CHECK(req->authorization == NULL || req->authorization_len == strlen(req->authorization),
          "authorization length %zu disagrees with the string", req->authorization_len);
    CHECK(!req->tls, "plain connection marked as TLS");

    if (nseen >= MAX_SEEN) {
        seen_overflow = 1;
    }
    if (strncmp(req->path, "/e", 2) == 0) {
        status = 404;
        oa_http_respond_error(req, status, OA_E_NOT_FOUND, req->path, NULL);
        /* The body is the escaped error object; its length is checked through Content-Length only. */
        if (!seen_overflow)
            seen[nseen++] = (seen_t){status, req->method == HTTP_HEAD, (size_t)-1};
        return;
    }
    if (strncmp(req->path, "/t", 2) == 0) {
        status = 200;
        n = snprintf(reply, sizeof(reply), "method=%s body=%zu\n", req->method_name, req->body_len);
        oa_http_respond_typed(req, status, "text/plain; version=0.0.4", "X-Fuzz: typed\r\n", reply, (size_t)n);
    } else {
        status = req->body_len > 0 ? 201 : 200;
        n = snprintf(reply, sizeof(reply), "{\"method\":\"%s\",\"body_len\":%zu,\"query\":%s}", req->method_name,
                     req->body_len, req->query != NULL ? "true" : "false");
        oa_http_respond(req, status, NULL, reply, (size_t)n);
    }
    if (!seen_overflow)
        seen[nseen++] = (seen_t){status, req->method == HTTP_HEAD, (size_t)n};
}

static int init_once(void)
{
    oa_http_limits_t limits;
    oa_error_t err;

    if (server != NULL)
        return 0;
    if (uv_loop_init(&loop) != 0)
        return -1;
    oa_http_limits_default(&limits);
    limits.max_header_bytes = FUZZ_MAX_HEADER;
    limits.max_url_bytes = FUZZ_MAX_URL;
    limits.max_body_bytes = FUZZ_MAX_BODY;
    limits.max_connections = 4;
    /* The listener is never connected to: connections come in through oa_http_server_adopt. */
    if (oa_http_server_start(&loop, "127.0.0.1", 0, &limits, NULL, handler, NULL, &server, &err) != 0) {
        fprintf(stderr, "fuzz_http_request: %s\n", err.text);
        return -1;
    }
    oa_buf_init(&output);
    return 0;
}

/* Reads everything the server has written so far. Returns the number of bytes read, or -1 at end of stream. */
static ssize_t drain(int fd)
{
    char buf[16384];
    ssize_t total = 0, n;

    for (;;) {
        n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            CHECK(oa_buf_append(&output, buf, (size_t)n) == 0, "out of memory");
            total += n;
            continue;
        }
        /* A server that closes with unread input makes the kernel report a reset after the queued bytes. */
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return total > 0 ? total : -1;
        CHECK(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR, "read: %s", strerror(errno));
        if (errno != EINTR)
            return total;
    }
}

/* Runs the loop until neither side has anything more to say for now. */
static void settle(int fd)
{
    int turns = 0;

    do {
        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK(++turns < MAX_TURNS, "the server keeps writing");
    } while (drain(fd) > 0);
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    int turns = 0;

    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        CHECK(w < 0 && (errno == EAGAIN || errno == EINTR || errno == EPIPE || errno == ECONNRESET), "write: %s",
              strerror(errno));
        if (errno == EPIPE || errno == ECONNRESET)
            return; /* the server has closed its side: the rest is not read, which is allowed */
        settle(fd);
        CHECK(++turns < MAX_TURNS, "the server stopped reading");
    }
}

static const char *find_crlfcrlf(const char *p, const char *end)
{
    for (; p + 4 <= end; p++) {
        if (memcmp(p, "\r\n\r\n", 4) == 0)
            return p;
    }
    return NULL;
}

/* The value of header name (with its colon, e.g. "Content-Length:") in [head, end), or NULL. */
static const char *header(const char *head, const char *end, const char *name)
{
    size_t n = strlen(name);
    const char *p;

    for (p = head; p + n + 2 <= end; p++) {
        if (p[0] == '\r' && p[1] == '\n' && strncmp(p + 2, name, n) == 0)
            return p + 2 + n + 1;
    }
    return NULL;
}

/* Checks the whole output against what the handler answered. */
static void check_output(void)
{
    const char *p, *end;
    size_t finals = 0;
    int closed = 0, server_error = 0;

    if (output.len == 0) {
        /* Silence is right only when no request was complete. */
        CHECK(nseen == 0, "no response for %zu handled requests", nseen);
        return;
    }
    p = output.data;
    end = output.data + output.len;
    while (p < end) {
        const char *head_end, *v;
        int status;
        size_t clen;
        char *num_end;

        CHECK(!closed, "bytes after a response with Connection: close");
        CHECK(end - p >= 13 && memcmp(p, "HTTP/1.1 ", 9) == 0, "a response does not start with HTTP/1.1");
        CHECK(p[9] >= '1' && p[9] <= '9' && p[10] >= '0' && p[10] <= '9' && p[11] >= '0' && p[11] <= '9' &&
                  p[12] == ' ',
              "no three-digit status");
        status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        head_end = find_crlfcrlf(p, end);
        CHECK(head_end != NULL, "a response head is cut short");
        if (status == 100) {
            CHECK(head_end == p + 21, "100 Continue carries headers");
            p = head_end + 4;
            continue;
        }
        v = header(p, head_end + 2, "Content-Length:");
        CHECK(v != NULL, "no Content-Length");
        clen = strtoul(v, &num_end, 10);
        CHECK(*num_end == '\r', "bad Content-Length");
        closed = header(p, head_end + 2, "Connection: close") != NULL;
        CHECK(closed || header(p, head_end + 2, "Connection: keep-alive") != NULL, "no Connection header");

        if (finals < nseen || seen_overflow) {
            const seen_t *s = finals < nseen ? &seen[finals] : NULL;
            size_t blen = s != NULL && s->head ? 0 : clen;

            CHECK(s == NULL || s->status == status, "response %zu has status %d, the handler sent %d", finals, status,
                  s->status);
            CHECK(s == NULL || s->body_len == (size_t)-1 || s->body_len == clen,
                  "response %zu has Content-Length %zu, the handler sent %zu bytes", finals, clen, s->body_len);
            CHECK((size_t)(end - head_end - 4) >= blen, "response %zu body cut short", finals);
            p = head_end + 4 + blen;
        } else {
            /* The server's own answer to a request it rejected: the last thing on the connection. */
            json_t *root;
            json_error_t jerr;
            const char *ecode;

            CHECK(!server_error, "two error responses from the server");
            server_error = 1;
            CHECK(status >= 400 && status <= 599, "server error response with status %d", status);
            CHECK(closed, "server error response without Connection: close");
            CHECK((size_t)(end - head_end - 4) == clen, "server error body is %zu bytes, Content-Length %zu",
                  (size_t)(end - head_end - 4), clen);
            root = json_loadb(head_end + 4, clen, 0, &jerr);
            CHECK(root != NULL && json_is_object(root), "server error body is not a JSON object: %s", jerr.text);
            ecode = json_string_value(json_object_get(root, "error_code"));
            CHECK(ecode != NULL && ecode[0] != '\0', "server error body has no error_code");
            CHECK(json_is_string(json_object_get(root, "description")), "server error body has no description");
            json_decref(root);
            p = head_end + 4 + clen;
        }
        finals++;
    }
    CHECK(seen_overflow || finals == nseen || finals == nseen + 1, "%zu responses for %zu handled requests", finals,
          nseen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    size_t piece, off;
    int turns = 0;

    if (size == 0)
        return 0;
    if (init_once() != 0)
        abort();
    nseen = 0;
    seen_overflow = 0;
    oa_buf_reset(&output);

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s",
          strerror(errno));
    CHECK(oa_http_server_adopt(server, sv[1]) == 0, "the server does not take the socket");

    piece = data[0] < 0x80 ? size : (size_t)(data[0] & 0x7f) + 1;
    for (off = 1; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;

        write_all(sv[0], data + off, n);
        settle(sv[0]);
    }
    shutdown(sv[0], SHUT_WR);
    /* The connection is freed in its close callbacks; the output ends with the server's FIN or close. */
    while (oa_http_server_connections(server) != 0 || drain(sv[0]) >= 0) {
        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK(++turns < MAX_TURNS, "the connection does not close after the client's FIN");
    }
    close(sv[0]);
    /* OA_FUZZ_VERBOSE=1 shows what came back, to see what the seeds reach (`-runs=0 corpus/fuzz_http_request`). */
    if (getenv("OA_FUZZ_VERBOSE") != NULL)
        fprintf(stderr, "--- %zu requests handled, %zu bytes back:\n%.*s\n", nseen, output.len, (int)output.len,
                output.data != NULL ? output.data : "");
    check_output();
    return 0;
}
