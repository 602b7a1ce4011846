/*
 * The pump between a client and its stream, without TLS (the TLS path is driven end to end by the Redis and etcd
 * tests against real servers): over a socket pair, bytes wait until the owner says the connection is ready, one
 * write is in flight at a time and what is queued meanwhile goes in the next, and reads land in the pump's buffer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <uv.h>

#include "oa_tls_stream.h"
#include "oa_util.h"

typedef struct side_s {
    uv_pipe_t pipe;
    oa_tls_stream_t io;
    oa_buf_t got; /* what this side read */
    int written;  /* on_written calls */
    int last_status;
} side_t;

static void on_written(oa_tls_stream_t *s, int status)
{
    side_t *x = oa_container_of(s, side_t, io);

    x->written++;
    x->last_status = status;
    /* What was queued while the write was in flight goes now. */
    assert_int_equal(oa_tls_stream_flush(s, true, NULL), 0);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    side_t *x = oa_container_of(st, side_t, pipe);

    if (nread > 0) {
        /* The pump hands out its own buffer. */
        assert_ptr_equal(buf->base, x->io.rbuf);
        assert_int_equal(oa_buf_append(&x->got, buf->base, (size_t)nread), 0);
    }
}

static void open_pair(uv_loop_t *loop, side_t *a, side_t *b)
{
    uv_os_sock_t fds[2];

    memset(a, 0, sizeof(*a));
    memset(b, 0, sizeof(*b));
    assert_int_equal(uv_socketpair(SOCK_STREAM, 0, fds, 0, 0), 0);
    assert_int_equal(uv_pipe_init(loop, &a->pipe, 0), 0);
    assert_int_equal(uv_pipe_init(loop, &b->pipe, 0), 0);
    assert_int_equal(uv_pipe_open(&a->pipe, fds[0]), 0);
    assert_int_equal(uv_pipe_open(&b->pipe, fds[1]), 0);
    oa_tls_stream_init(&a->io, (uv_stream_t *)&a->pipe, false, on_written);
    oa_tls_stream_init(&b->io, (uv_stream_t *)&b->pipe, false, on_written);
}

static void close_pair(uv_loop_t *loop, side_t *a, side_t *b)
{
    uv_close((uv_handle_t *)&a->pipe, NULL);
    uv_close((uv_handle_t *)&b->pipe, NULL);
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    oa_tls_stream_free(&a->io);
    oa_tls_stream_free(&b->io);
    oa_buf_free(&a->got);
    oa_buf_free(&b->got);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void run_until(uv_loop_t *loop, const side_t *x, size_t len)
{
    int i;

    for (i = 0; i < 1000 && x->got.len < len; i++)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(x->got.len, len);
}

static void test_waits_until_ready(void **state)
{
    uv_loop_t loop;
    side_t a, b;
    bool sent = false;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    open_pair(&loop, &a, &b);
    assert_int_equal(oa_tls_stream_read_start(&b.io, on_read), 0);

    assert_int_equal(oa_tls_stream_queue(&a.io, "GET", 3), 0);
    assert_int_equal(oa_tls_stream_flush(&a.io, false, &sent), 0);
    assert_false(sent);
    assert_false(a.io.writing);
    (void)uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(b.got.len, 0);

    assert_int_equal(oa_tls_stream_flush(&a.io, true, &sent), 0);
    assert_true(sent);
    assert_true(a.io.writing);
    /* A second write waits for the first. */
    assert_int_equal(oa_tls_stream_queue(&a.io, " /", 2), 0);
    sent = false;
    assert_int_equal(oa_tls_stream_flush(&a.io, true, &sent), 0);
    assert_false(sent);

    run_until(&loop, &b, 5);
    assert_memory_equal(b.got.data, "GET /", 5);
    assert_int_equal(a.written, 2);
    assert_int_equal(a.last_status, 0);
    assert_false(a.io.writing);
    assert_int_equal(a.io.inflight.len, 0);
    close_pair(&loop, &a, &b);
}

static void test_both_ways(void **state)
{
    uv_loop_t loop;
    side_t a, b;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    open_pair(&loop, &a, &b);
    assert_int_equal(oa_tls_stream_read_start(&a.io, on_read), 0);
    assert_int_equal(oa_tls_stream_read_start(&b.io, on_read), 0);
    assert_int_equal(oa_tls_stream_queue(&a.io, "ping", 4), 0);
    assert_int_equal(oa_tls_stream_queue(&b.io, "pong!", 5), 0);
    assert_int_equal(oa_tls_stream_flush(&a.io, true, NULL), 0);
    assert_int_equal(oa_tls_stream_flush(&b.io, true, NULL), 0);
    run_until(&loop, &b, 4);
    run_until(&loop, &a, 5);
    assert_memory_equal(b.got.data, "ping", 4);
    assert_memory_equal(a.got.data, "pong!", 5);
    close_pair(&loop, &a, &b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_waits_until_ready),
        cmocka_unit_test(test_both_ways),
    };

    return cmocka_run_group_tests_name("tls_stream", tests, NULL, NULL);
}
