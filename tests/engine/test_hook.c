/*
 * The staple hook (engine/hook.c) on a real libuv loop, with small shell scripts as hooks and real OCSP responses
 * built by testpki. The hooks write what they saw to files in the test's directory; the test waits on those files
 * and on the delivery's counters, each wait bounded. The kill timeout is shortened with OA_TEST_HOOK_TIMEOUT_MS.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "target_harness.h"

/* Every test starts with the production kill timeout unless it shortens it itself. */
static int hook_test_setup(void **state)
{
    unsetenv("OA_TEST_HOOK_TIMEOUT_MS");
    return test_setup(state);
}

/* ---- responses ---- */

static void set_good(oa_delivery_t *d, long this_off)
{
    oa_ocsp_result_t r;

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, this_off, true, 3600);
    assert_int_equal(oa_delivery_set_staple(d, &r), OA_DELIVERY_STAPLE_SET);
    oa_ocsp_result_clear(&r);
}

/* ---- the loop ---- */

/* A loop, a delivery with node id "node-7" and staple path <dir>/ocsp.der, and the hook at program. */
static void ctx_init(ctx_t *c, const char *program)
{
    oa_error_t err;

    ctx_start(c);
    if (oa_delivery_add_hook(c->d, program, &err) != 0)
        fail_msg("oa_delivery_add_hook: %s", err.text);
}

/* ---- what the delivery and the hooks tell ---- */

/* Number of lines in the file at path (0 when absent). */
static int line_count(const char *path)
{
    oa_buf_t b;
    int n = 0;
    size_t i;

    oa_buf_init(&b);
    if (oa_file_read(path, 1 << 20, &b) == 0)
        for (i = 0; i < b.len; i++)
            n += b.data[i] == '\n';
    oa_buf_free(&b);
    return n;
}

/* Line n (1-based) of the file at path, without its newline, into out. */
static void nth_line(const char *path, int n, char *out, size_t size)
{
    oa_buf_t b;
    const char *p, *e;

    oa_buf_init(&b);
    assert_int_equal(oa_file_read(path, 1 << 20, &b), 0);
    p = b.data;
    while (--n > 0) {
        p = strchr(p, '\n');
        assert_non_null(p);
        p++;
    }
    e = strchr(p, '\n');
    assert_non_null(e);
    snprintf(out, size, "%.*s", (int)(e - p), p);
    oa_buf_free(&b);
}

/* Writes an executable /bin/sh script named name in the test's directory; returns its path (slot 1 or 2). */
static const char *write_hook(int slot, const char *name, const char *body)
{
    const char *path = in_dir(slot, name);
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0755), 0);
    return path;
}

/* Records one line per run in $HOOK_DIR/runs.log; the test's directory reaches the hook through the environment
 * the agent passes on. */
#define RECORD "printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$#\" \"$1\" \"$2\" \"$OCSP_AGENT_EVENT\" " \
               "\"$OCSP_AGENT_STAPLE_FILE\" \"$OCSP_AGENT_CERT_STATUS\" \"$OCSP_AGENT_THIS_UPDATE\" "     \
               "\"$OCSP_AGENT_NEXT_UPDATE\" \"$OCSP_AGENT_NODE_ID\" \"$(env | grep -c '^OCSP_AGENT_EVENT=')\" " \
               ">>\"$HOOK_DIR/runs.log\""

static void set_hook_dir(void)
{
    assert_int_equal(setenv("HOOK_DIR", dir, 1), 0);
}

/* ---- cases ---- */

static void test_constructor_checks(void **state)
{
    oa_delivery_options_t o = {.node_id = "n", .staple_path = "/x/ocsp.der"};
    oa_delivery_t *d;
    uv_loop_t loop;
    oa_error_t err;
    const char *plain;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(oa_delivery_new(&loop, &o, &d), 0);
    assert_int_equal(oa_delivery_add_hook(d, "/nonexistent/hook", &err), -1);
    assert_int_equal(err.code, OA_E_BAD_OPTION);
    assert_string_equal(err.text, "--staple-hook: /nonexistent/hook: not executable: No such file or directory");
    plain = in_dir(1, "plain");
    assert_int_equal(oa_testpki_write_file(plain, "x", 1), 0);
    assert_int_equal(chmod(plain, 0644), 0);
    assert_int_equal(oa_delivery_add_hook(d, plain, &err), -1);
    assert_non_null(strstr(err.text, "--staple-hook: "));
    assert_non_null(strstr(err.text, ": not executable: "));
    assert_int_equal(oa_delivery_add_hook(d, dir, &err), -1);
    assert_non_null(strstr(err.text, "not executable: not a regular file"));
    assert_int_equal(oa_delivery_target_count(d), 0);
    oa_delivery_close(d, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Arguments and every variable, for updated (GOOD, REVOKED, no nextUpdate) and removed; the agent's own environment
 * is passed on, and a stale OCSP_AGENT_EVENT in it is replaced, not duplicated. */
static void test_args_and_env(void **state)
{
    char line[1024], expect[1024], t1[OA_RFC1123_LEN], t2[OA_RFC1123_LEN], st[32], le[OA_DTARGET_ERROR_MAX];
    char name[512];
    const char *hook, *staple_path;
    oa_ocsp_result_t r;
    ctx_t c;
    size_t mark;

    (void)state;
    set_hook_dir();
    assert_int_equal(setenv("OCSP_AGENT_EVENT", "stale", 1), 0);
    hook = write_hook(1, "hook.sh", RECORD);
    ctx_init(&c, hook);
    staple_path = in_dir(3, "ocsp.der");
    target_status(&c, st, le, name);
    assert_string_equal(st, "pending");
    snprintf(expect, sizeof(expect), "hook:%s", hook);
    assert_string_equal(name, expect);

    mark = log_mark();
    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -60, true, 3600);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    wait_tries(&c, 1, 5000);
    nth_line(in_dir(0, "runs.log"), 1, line, sizeof(line));
    snprintf(expect, sizeof(expect), "2|updated|%s|updated|%s|GOOD|%s|%s|node-7|1", staple_path, staple_path,
             oa_time_rfc1123(r.this_update, t1), oa_time_rfc1123(r.next_update, t2));
    assert_string_equal(line, expect);
    oa_ocsp_result_clear(&r);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "delivered");
    assert_string_equal(le, "");
    assert_true(oa_delivery_all_delivered(c.d));
    assert_int_equal(count(&c, "ok"), 1);
    assert_non_null(strstr(log_since(mark), "level=info event=staple_hook "));
    assert_non_null(strstr(log_since(mark), "hook_event=updated exit_status=0 "));
    assert_non_null(strstr(log_since(mark), "duration_ms="));

    make_result(&r, V_OCSP_CERTSTATUS_REVOKED, -30, true, 7200);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    wait_tries(&c, 2, 5000);
    nth_line(in_dir(0, "runs.log"), 2, line, sizeof(line));
    snprintf(expect, sizeof(expect), "2|updated|%s|updated|%s|REVOKED|%s|%s|node-7|1", staple_path, staple_path,
             oa_time_rfc1123(r.this_update, t1), oa_time_rfc1123(r.next_update, t2));
    assert_string_equal(line, expect);
    oa_ocsp_result_clear(&r);

    make_result(&r, V_OCSP_CERTSTATUS_GOOD, -10, false, 0);
    assert_int_equal(oa_delivery_set_staple(c.d, &r), OA_DELIVERY_STAPLE_SET);
    wait_tries(&c, 3, 5000);
    nth_line(in_dir(0, "runs.log"), 3, line, sizeof(line));
    snprintf(expect, sizeof(expect), "2|updated|%s|updated|%s|GOOD|%s||node-7|1", staple_path, staple_path,
             oa_time_rfc1123(r.this_update, t1));
    assert_string_equal(line, expect);
    oa_ocsp_result_clear(&r);

    mark = log_mark();
    assert_int_equal(oa_delivery_set_staple(c.d, NULL), OA_DELIVERY_STAPLE_SET);
    wait_tries(&c, 4, 5000);
    nth_line(in_dir(0, "runs.log"), 4, line, sizeof(line));
    snprintf(expect, sizeof(expect), "2|removed|%s|removed|%s||||node-7|1", staple_path, staple_path);
    assert_string_equal(line, expect);
    assert_non_null(strstr(log_since(mark), "hook_event=removed exit_status=0 "));
    assert_true(oa_delivery_all_delivered(c.d));
    assert_int_equal(count(&c, "ok"), 4);
    assert_int_equal(count(&c, "error"), 0);
    ctx_close(&c);
    unsetenv("OCSP_AGENT_EVENT");
}

static bool first_run_started(ctx_t *c, const void *arg)
{
    (void)c;
    (void)arg;
    return line_count(in_dir(0, "runs.log")) >= 1;
}

/* Three changes during a slow run: exactly one more run, and it sees the last of them. */
static void test_coalescing(void **state)
{
    char line[1024], t1[OA_RFC1123_LEN], st[32], le[OA_DTARGET_ERROR_MAX], expect[128];
    ctx_t c;
    oa_ocsp_result_t last;

    (void)state;
    set_hook_dir();
    ctx_init(&c, write_hook(1, "slow.sh",
                            "printf '%s|%s\\n' \"$OCSP_AGENT_CERT_STATUS\" \"$OCSP_AGENT_THIS_UPDATE\" "
                            ">>\"$HOOK_DIR/runs.log\"\nsleep 0.4"));
    set_good(c.d, -100);
    run_until(&c, first_run_started, NULL, 5000, "the first run to start");
    set_good(c.d, -90);
    set_good(c.d, -80);
    make_result(&last, V_OCSP_CERTSTATUS_REVOKED, -70, true, 3600);
    assert_int_equal(oa_delivery_set_staple(c.d, &last), OA_DELIVERY_STAPLE_SET);
    assert_int_equal(oa_delivery_generation(c.d), 4);
    assert_int_equal(line_count(in_dir(0, "runs.log")), 1);

    wait_tries(&c, 2, 10000);
    run_for(&c, 600); /* longer than one more run would take */
    assert_int_equal(line_count(in_dir(0, "runs.log")), 2);
    assert_int_equal(count(&c, "ok"), 2);
    nth_line(in_dir(0, "runs.log"), 2, line, sizeof(line));
    snprintf(expect, sizeof(expect), "REVOKED|%s", oa_time_rfc1123(last.this_update, t1));
    assert_string_equal(line, expect);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "delivered");
    assert_true(oa_delivery_all_delivered(c.d));
    oa_ocsp_result_clear(&last);
    ctx_close(&c);
}

/* Gone, or a zombie no one has reaped yet: either way it no longer runs. */
static bool pid_gone(pid_t pid)
{
    char path[64], buf[256], *p;
    FILE *f;

    if (kill(pid, 0) != 0)
        return errno == ESRCH;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return true;
    p = fgets(buf, sizeof(buf), f);
    fclose(f);
    p = p != NULL ? strrchr(buf, ')') : NULL;
    return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

static bool pid_file_gone(ctx_t *c, const void *arg)
{
    (void)c;
    return pid_gone((pid_t)*(const long *)arg);
}

static long read_pid_file(const char *path)
{
    oa_buf_t b;
    long pid;

    oa_buf_init(&b);
    assert_int_equal(oa_file_read(path, 64, &b), 0);
    pid = strtol(b.data, NULL, 10);
    oa_buf_free(&b);
    assert_true(pid > 1);
    return pid;
}

static bool pid_file_written(ctx_t *c, const void *arg)
{
    (void)c;
    return line_count((const char *)arg) >= 1;
}

/* A hook that hangs is killed at the timeout with the child it started, and the run is reported failed. */
static void test_timeout_kills_group(void **state)
{
    char st[32], le[OA_DTARGET_ERROR_MAX], pidfile[512];
    uint64_t t0, elapsed;
    ctx_t c;
    long child;
    size_t mark;

    (void)state;
    set_hook_dir();
    assert_int_equal(setenv("OA_TEST_HOOK_TIMEOUT_MS", "300", 1), 0);
    ctx_init(&c, write_hook(1, "hang.sh", "echo 'still thinking' >&2\nsleep 60 &\necho $! >\"$HOOK_DIR/child.pid\"\n"
                                          "sleep 60"));
    snprintf(pidfile, sizeof(pidfile), "%s", in_dir(0, "child.pid"));
    mark = log_mark();
    uv_update_time(&c.loop);
    t0 = uv_now(&c.loop);
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    elapsed = uv_now(&c.loop) - t0;
    assert_true(elapsed >= 300);
    assert_true(elapsed < 4000);
    assert_int_equal(count(&c, "error"), 1);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "was killed after 300 ms without finishing: still thinking"));
    assert_non_null(strstr(log_since(mark), "level=warn event=staple_hook "));
    assert_non_null(strstr(log_since(mark), "timed_out=true"));
    run_until(&c, pid_file_written, pidfile, 2000, "the child's pid file");
    child = read_pid_file(pidfile);
    run_until(&c, pid_file_gone, &child, 3000, "the hook's child to be killed with its group");
    ctx_close(&c);
}

/* Killed by a signal, or a non-zero exit: the status and the first stderr line (not the second) are reported. */
static void test_crash_and_exit_status(void **state)
{
    char st[32], le[OA_DTARGET_ERROR_MAX];
    const char *log;
    ctx_t c;
    size_t mark;

    (void)state;
    ctx_init(&c, write_hook(1, "crash.sh", "echo 'boom: it\tfailed' >&2\necho 'second line' >&2\nkill -SEGV $$"));
    mark = log_mark();
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "crash.sh was killed by signal 11 (SIGSEGV): boom: it failed"));
    assert_null(strstr(le, "second line"));
    log = log_since(mark);
    assert_non_null(strstr(log, "level=warn event=staple_hook "));
    assert_non_null(strstr(log, "signal=SIGSEGV"));
    assert_non_null(strstr(log, "stderr=\"boom: it failed\""));
    ctx_close(&c);

    ctx_init(&c, write_hook(2, "exit3.sh", "echo 'no reload: nginx -t failed' >&2\nexit 3"));
    mark = log_mark();
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "exit3.sh exited with status 3: no reload: nginx -t failed"));
    log = log_since(mark);
    assert_non_null(strstr(log, "exit_status=3 "));
    assert_non_null(strstr(log, "stderr=\"no reload: nginx -t failed\""));
    ctx_close(&c);
}

/* The resident set, in kB. */
static long rss_kb(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &pages, &resident), 2);
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* 10 MB on stderr and 10 MB on stdout neither block the hook nor grow the agent; the first line is kept. */
static void test_megabytes_of_output(void **state)
{
    char st[32], le[OA_DTARGET_ERROR_MAX];
    long before, after;
    ctx_t c;

    (void)state;
    ctx_init(&c, write_hook(1, "chatty.sh", "echo 'first line' >&2\n"
                                            "head -c 10485760 /dev/zero | tr '\\0' e >&2\n"
                                            "head -c 10485760 /dev/zero | tr '\\0' o\n"
                                            "exit 1"));
    before = rss_kb();
    set_good(c.d, -60);
    wait_tries(&c, 1, 20000);
    after = rss_kb();
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "chatty.sh exited with status 1: first line"));
    /* Keeping the output would take over 10 MB; the bound leaves room for a sanitizer's own bookkeeping. */
    if (after - before > 8192)
        fail_msg("the resident set grew by %ld kB while the hook wrote 20 MB", after - before);
    ctx_close(&c);
}

/* The first line is cut at 200 bytes (the log shows it whole; the status's last_error has its own bound). */
static void test_long_stderr_line(void **state)
{
    char st[32], le[OA_DTARGET_ERROR_MAX], expect[256];
    const char *p;
    ctx_t c;
    size_t mark;

    (void)state;
    ctx_init(&c, write_hook(1, "long.sh", "head -c 5000 /dev/zero | tr '\\0' L >&2\nexit 2"));
    mark = log_mark();
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    target_status(&c, st, le, NULL);
    assert_non_null(strstr(le, "exited with status 2: LLLL"));
    p = strstr(log_since(mark), "stderr=");
    assert_non_null(p);
    memset(expect, 'L', 200);
    expect[200] = '\0';
    assert_memory_equal(p + strlen("stderr="), expect, 200);
    assert_true(p[strlen("stderr=") + 200] != 'L');
    ctx_close(&c);
}

static bool ok_reaches(ctx_t *c, const void *arg)
{
    return count(c, "ok") >= *(const uint64_t *)arg;
}

/* A failed run is retried every retry_ms until one succeeds, then nothing more runs. */
static void test_retry_until_success(void **state)
{
    char st[32], le[OA_DTARGET_ERROR_MAX];
    uint64_t t1, t2, one = 1;
    int runs;
    ctx_t c;

    (void)state;
    set_hook_dir();
    ctx_init(&c, write_hook(1, "flaky.sh", "echo run >>\"$HOOK_DIR/runs.log\"\n"
                                           "[ -e \"$HOOK_DIR/ok\" ] || { echo 'not yet' >&2; exit 1; }"));
    oa_delivery_set_retry_ms(c.d, 250);
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    t1 = uv_now(&c.loop);
    wait_tries(&c, 2, 5000);
    t2 = uv_now(&c.loop);
    assert_true(t2 - t1 >= 250);
    assert_int_equal(count(&c, "error"), 2);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "exited with status 1: not yet"));

    assert_int_equal(oa_testpki_write_file(in_dir(2, "ok"), "", 0), 0);
    run_until(&c, ok_reaches, &one, 5000, "a successful retry");
    runs = line_count(in_dir(0, "runs.log"));
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "delivered");
    assert_string_equal(le, "");
    run_for(&c, 600);
    assert_int_equal(line_count(in_dir(0, "runs.log")), runs);
    ctx_close(&c);
}

/* After a failure, a newer staple starts a run at once, not at the next retry. */
static void test_change_after_failure_runs_at_once(void **state)
{
    ctx_t c;
    uint64_t t0;

    (void)state;
    ctx_init(&c, write_hook(1, "fail.sh", "exit 1"));
    oa_delivery_set_retry_ms(c.d, 60000);
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    t0 = uv_now(&c.loop);
    set_good(c.d, -50);
    wait_tries(&c, 2, 5000);
    assert_true(uv_now(&c.loop) - t0 < 5000);
    assert_int_equal(count(&c, "error"), 2);
    ctx_close(&c);
}

/* A hook that cannot be executed at all (its interpreter is missing) is a failed run too. */
static void test_spawn_failure(void **state)
{
    char st[32], le[OA_DTARGET_ERROR_MAX];
    const char *path = in_dir(1, "badinterp.sh");
    FILE *f = fopen(path, "w");
    ctx_t c;

    (void)state;
    assert_non_null(f);
    fputs("#!/nonexistent/interpreter\n", f);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
    ctx_init(&c, path);
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    target_status(&c, st, le, NULL);
    assert_string_equal(st, "failed");
    assert_non_null(strstr(le, "could not be started"));
    ctx_close(&c);
}

/* Closing while a hook runs kills it (and its child) and closes every handle. */
static void test_close_while_running(void **state)
{
    char pidfile[512];
    long child;
    ctx_t c;

    (void)state;
    set_hook_dir();
    ctx_init(&c, write_hook(1, "long.sh", "sleep 60 &\necho $! >\"$HOOK_DIR/child.pid\"\nsleep 60"));
    snprintf(pidfile, sizeof(pidfile), "%s", in_dir(0, "child.pid"));
    set_good(c.d, -60);
    run_until(&c, pid_file_written, pidfile, 5000, "the hook to start its child");
    child = read_pid_file(pidfile);
    ctx_close(&c);
    for (int i = 0; i < 200 && !pid_gone((pid_t)child); i++)
        usleep(10000);
    assert_true(pid_gone((pid_t)child));
}

/* A relative path without a slash is taken from the current directory at start-up, never looked up in PATH. */
static void test_relative_path(void **state)
{
    char cwd[1024], st[32], le[OA_DTARGET_ERROR_MAX], name[512];
    ctx_t c;

    (void)state;
    write_hook(1, "rel.sh", "exit 0");
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(dir), 0);
    ctx_init(&c, "rel.sh");
    assert_int_equal(chdir(cwd), 0); /* a later change of directory does not matter */
    set_good(c.d, -60);
    wait_tries(&c, 1, 5000);
    target_status(&c, st, le, name);
    assert_string_equal(name, "hook:rel.sh");
    assert_string_equal(st, "delivered");
    ctx_close(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_constructor_checks, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_args_and_env, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_coalescing, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_kills_group, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_crash_and_exit_status, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_megabytes_of_output, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_long_stderr_line, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_retry_until_success, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_change_after_failure_runs_at_once, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_spawn_failure, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_close_while_running, hook_test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_relative_path, hook_test_setup, test_teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
