/*
 * The staple hook: a program run as `PROGRAM EVENT STAPLE_FILE` (no shell) on every change of the staple, the way any
 * server other than HAProxy is fed (nginx: ssl_stapling_file plus a reload).
 *
 * One run at a time. A change during a run is remembered as "the generation moved on", so any number of changes
 * coalesce into exactly one more run, with the state current when it starts. A run is killed, with every process of
 * its own process group, at the timeout. Its stdout is read and dropped, and only the first line of its stderr is
 * kept (bounded), so a chatty hook neither blocks on a full pipe nor grows the agent's memory. A failed run is
 * retried every oa_delivery_retry_ms() until one succeeds; a newer change starts a run at once instead.
 *
 * A run ends once its process has exited and both pipes are closed (EOF, or forced at the timeout when a leftover
 * child still holds them), that is, once the run's three handles are closed; only then is it reported.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "oa_log.h"
#include "target.h"

extern char **environ;

/* Production kill timeout. Tests shorten it with the environment variable OA_TEST_HOOK_TIMEOUT_MS (milliseconds),
 * read once when the target is created; nothing else should set it. */
#define HOOK_TIMEOUT_MS 30000
#define HOOK_STDERR_LINE_MAX 200

typedef struct hook_target_s {
    oa_dtarget_t base; /* first: the delivery's list holds &base */
    char *program;     /* as given, for logs */
    char *exec_path;   /* absolute, so that a later chdir or PATH never decides what runs */
    uint64_t timeout_ms;

    uv_timer_t kill_timer;  /* the running hook's deadline */
    uv_timer_t retry_timer; /* the next try after a failed run */
    int timers_open;

    /* The current run. */
    bool running;
    int run_handles; /* process and pipes not yet closed */
    uv_process_t proc;
    uv_pipe_t out_pipe;
    uv_pipe_t err_pipe;
    uint64_t run_gen;
    bool run_removed;
    uint64_t run_started; /* uv_now */
    int spawn_error;
    bool exited;
    int64_t exit_status;
    int term_signal;
    bool timed_out;
    char err_line[HOOK_STDERR_LINE_MAX + 1];
    size_t err_line_len;
    bool err_line_done;

    bool failed; /* the last run for the current generation failed: the retry timer is armed */
    bool closing;
    bool closed_reported;
    char read_buf[16384]; /* both pipes read into it; each read is consumed in its callback */
} hook_target_t;

static void start_run(hook_target_t *h);

/* ---- teardown ---- */

static void maybe_closed(hook_target_t *h)
{
    if (!h->closing || h->running || h->timers_open > 0 || h->closed_reported)
        return;
    h->closed_reported = true;
    oa_dtarget_closed(&h->base); /* may free h */
}

static void on_timer_closed(uv_handle_t *handle)
{
    hook_target_t *h = handle->data;

    h->timers_open--;
    maybe_closed(h);
}

/* ---- the end of a run ---- */

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGKILL:
        return "SIGKILL";
    case SIGTERM:
        return "SIGTERM";
    case SIGSEGV:
        return "SIGSEGV";
    case SIGABRT:
        return "SIGABRT";
    case SIGINT:
        return "SIGINT";
    case SIGHUP:
        return "SIGHUP";
    case SIGPIPE:
        return "SIGPIPE";
    case SIGBUS:
        return "SIGBUS";
    case SIGFPE:
        return "SIGFPE";
    case SIGILL:
        return "SIGILL";
    default:
        return NULL;
    }
}

/* The run's outcome as one sentence into why, or NULL when it succeeded. */
static const char *run_error(const hook_target_t *h, char *why, size_t len)
{
    char sig[32];
    const char *name;
    int n;

    if (h->spawn_error != 0) {
        n = snprintf(why, len, "the hook %s could not be started: %s", h->program, uv_strerror(h->spawn_error));
    } else if (h->timed_out) {
        n = snprintf(why, len, "the hook %s was killed after %" PRIu64 " ms without finishing", h->program,
                     h->timeout_ms);
    } else if (h->term_signal != 0) {
        name = signal_name(h->term_signal);
        if (name == NULL)
            snprintf(sig, sizeof(sig), "signal %d", h->term_signal);
        else
            snprintf(sig, sizeof(sig), "signal %d (%s)", h->term_signal, name);
        n = snprintf(why, len, "the hook %s was killed by %s", h->program, sig);
    } else if (h->exit_status != 0) {
        n = snprintf(why, len, "the hook %s exited with status %" PRId64, h->program, h->exit_status);
    } else {
        return NULL;
    }
    if (h->err_line_len > 0 && n > 0 && (size_t)n < len)
        snprintf(why + n, len - (size_t)n, ": %s", h->err_line);
    return why;
}

static void on_retry(uv_timer_t *timer)
{
    hook_target_t *h = timer->data;

    if (!h->running && !h->closing)
        start_run(h);
}

static void run_finished(hook_target_t *h)
{
    char why[OA_DTARGET_ERROR_MAX];
    const char *error;
    uint64_t duration = uv_now(oa_delivery_loop(h->base.delivery)) - h->run_started;
    bool no_status = h->spawn_error != 0 || h->term_signal != 0 || h->timed_out;

    h->running = false;
    uv_timer_stop(&h->kill_timer);
    if (h->closing) {
        maybe_closed(h);
        return;
    }
    error = run_error(h, why, sizeof(why));
    OA_LOG(error == NULL ? OA_LOG_INFO : OA_LOG_WARN, "staple_hook", OA_KV_STR("program", h->program),
           OA_KV_STR("hook_event", h->run_removed ? "removed" : "updated"),
           OA_KV_INT("exit_status", no_status ? -1 : h->exit_status),
           OA_KV_STR("signal", h->term_signal != 0 ? signal_name(h->term_signal) : NULL),
           OA_KV_BOOL("timed_out", h->timed_out), OA_KV_INT("duration_ms", duration),
           OA_KV_STR("stderr", h->err_line_len > 0 ? h->err_line : NULL));
    oa_dtarget_report(&h->base, h->run_gen, error);

    /* A change during the run: one more run, at once, with what is current now. */
    if (oa_delivery_generation(h->base.delivery) != h->run_gen) {
        start_run(h);
        return;
    }
    h->failed = error != NULL;
    if (h->failed)
        uv_timer_start(&h->retry_timer, on_retry, oa_delivery_retry_ms(h->base.delivery), 0);
}

static void on_run_handle_closed(uv_handle_t *handle)
{
    hook_target_t *h = handle->data;

    if (--h->run_handles == 0)
        run_finished(h);
}

static void close_run_handle(hook_target_t *h, uv_handle_t *handle)
{
    (void)h;
    if (!uv_is_closing(handle))
        uv_close(handle, on_run_handle_closed);
}

/* Kills the hook and everything it started in its process group (it runs detached: its pid is the group's id). */
static void kill_group(hook_target_t *h)
{
    if (kill(-h->proc.pid, SIGKILL) != 0 && !h->exited)
        uv_process_kill(&h->proc, SIGKILL);
}

static void on_hook_exit(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    hook_target_t *h = oa_container_of(proc, hook_target_t, proc);

    h->exited = true;
    h->exit_status = exit_status;
    h->term_signal = term_signal;
    close_run_handle(h, (uv_handle_t *)&h->proc);
}

static void on_kill_timer(uv_timer_t *timer)
{
    hook_target_t *h = timer->data;

    if (!h->exited)
        h->timed_out = true;
    /* Also when the hook itself has exited but a child it left behind still holds the pipes open. */
    kill_group(h);
    close_run_handle(h, (uv_handle_t *)&h->out_pipe);
    close_run_handle(h, (uv_handle_t *)&h->err_pipe);
}

/* ---- the hook's output ---- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    hook_target_t *h = handle->data;

    (void)suggested;
    *buf = uv_buf_init(h->read_buf, sizeof(h->read_buf));
}

static void on_read_out(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    hook_target_t *h = stream->data;

    (void)buf;
    if (nread < 0)
        close_run_handle(h, (uv_handle_t *)stream);
}

/* Keeps the first line of stderr, up to HOOK_STDERR_LINE_MAX bytes, control characters replaced by spaces. */
static void on_read_err(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    hook_target_t *h = stream->data;
    ssize_t i;

    if (nread < 0) {
        close_run_handle(h, (uv_handle_t *)stream);
        return;
    }
    for (i = 0; i < nread && !h->err_line_done; i++) {
        unsigned char c = (unsigned char)buf->base[i];

        if (c == '\n') {
            h->err_line_done = true;
            break;
        }
        if (h->err_line_len >= HOOK_STDERR_LINE_MAX) {
            h->err_line_done = true;
            break;
        }
        h->err_line[h->err_line_len++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
        h->err_line[h->err_line_len] = '\0';
    }
    /* A Windows-style line end, or trailing blanks, say nothing. */
    if (h->err_line_done)
        while (h->err_line_len > 0 && h->err_line[h->err_line_len - 1] == ' ')
            h->err_line[--h->err_line_len] = '\0';
}

/* ---- starting a run ---- */

/* "NAME=value", malloc'ed, or NULL. */
static char *env_entry(const char *name, const char *value)
{
    size_t len = strlen(name) + 1 + strlen(value) + 1;
    char *s = malloc(len);

    if (s != NULL)
        snprintf(s, len, "%s=%s", name, value);
    return s;
}

#define HOOK_ENV_COUNT 6
static const char *const hook_env_names[HOOK_ENV_COUNT] = {
    "OCSP_AGENT_EVENT",       "OCSP_AGENT_STAPLE_FILE",  "OCSP_AGENT_CERT_STATUS",
    "OCSP_AGENT_THIS_UPDATE", "OCSP_AGENT_NEXT_UPDATE", "OCSP_AGENT_NODE_ID",
};

static bool is_hook_env(const char *entry)
{
    size_t i, n;

    for (i = 0; i < HOOK_ENV_COUNT; i++) {
        n = strlen(hook_env_names[i]);
        if (strncmp(entry, hook_env_names[i], n) == 0 && entry[n] == '=')
            return true;
    }
    return false;
}

/* The agent's environment (without any OCSP_AGENT_* of ours it may carry) plus the hook's variables. *owned holds
 * the entries to free. Returns the NULL-terminated array (free it and the owned entries), or NULL. */
static char **build_env(const hook_target_t *h, const oa_ocsp_result_t *staple, char **owned)
{
    const char *values[HOOK_ENV_COUNT];
    char this_update[OA_RFC1123_LEN] = "", next_update[OA_RFC1123_LEN] = "";
    size_t n = 0, i, k = 0;
    char **env;

    for (i = 0; environ != NULL && environ[i] != NULL; i++)
        n++;
    env = calloc(n + HOOK_ENV_COUNT + 1, sizeof(*env));
    if (env == NULL)
        return NULL;
    for (i = 0; i < n; i++)
        if (!is_hook_env(environ[i]))
            env[k++] = environ[i];
    if (staple != NULL) {
        oa_time_rfc1123(staple->this_update, this_update);
        if (staple->next_update != 0)
            oa_time_rfc1123(staple->next_update, next_update);
    }
    values[0] = staple != NULL ? "updated" : "removed";
    values[1] = oa_delivery_staple_path(h->base.delivery);
    values[2] = staple != NULL ? oa_cert_status_name(staple->cert_status) : "";
    values[3] = this_update;
    values[4] = next_update;
    values[5] = oa_delivery_node_id(h->base.delivery);
    for (i = 0; i < HOOK_ENV_COUNT; i++) {
        owned[i] = env_entry(hook_env_names[i], values[i]);
        if (owned[i] == NULL) {
            while (i-- > 0)
                free(owned[i]);
            free(env);
            return NULL;
        }
        env[k++] = owned[i];
    }
    env[k] = NULL;
    return env;
}

static void start_run(hook_target_t *h)
{
    const oa_ocsp_result_t *staple = oa_delivery_staple(h->base.delivery);
    uv_loop_t *loop = oa_delivery_loop(h->base.delivery);
    uv_process_options_t opts;
    uv_stdio_container_t stdio[3];
    char *args[4], *owned[HOOK_ENV_COUNT];
    char **env;
    int rc, i;

    uv_timer_stop(&h->retry_timer);
    h->failed = false;
    h->running = true;
    h->run_gen = oa_delivery_generation(h->base.delivery);
    h->run_removed = staple == NULL;
    h->run_started = uv_now(loop);
    h->spawn_error = 0;
    h->exited = false;
    h->exit_status = 0;
    h->term_signal = 0;
    h->timed_out = false;
    h->err_line[0] = '\0';
    h->err_line_len = 0;
    h->err_line_done = false;

    uv_pipe_init(loop, &h->out_pipe, 0);
    uv_pipe_init(loop, &h->err_pipe, 0);
    h->out_pipe.data = h;
    h->err_pipe.data = h;
    h->proc.data = h;
    h->run_handles = 3;

    env = build_env(h, staple, owned);
    if (env == NULL) {
        /* uv_spawn's own failure path leaves an initialised handle to close; make this one look the same. */
        h->spawn_error = UV_ENOMEM;
        h->exited = true;
        h->run_handles = 2;
        close_run_handle(h, (uv_handle_t *)&h->out_pipe);
        close_run_handle(h, (uv_handle_t *)&h->err_pipe);
        return;
    }
    args[0] = h->exec_path;
    args[1] = staple != NULL ? "updated" : "removed";
    args[2] = (char *)oa_delivery_staple_path(h->base.delivery);
    args[3] = NULL;
    memset(&opts, 0, sizeof(opts));
    stdio[0].flags = UV_IGNORE; /* libuv opens /dev/null for an ignored standard descriptor */
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&h->out_pipe;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&h->err_pipe;
    opts.file = h->exec_path;
    opts.args = args;
    opts.env = env;
    opts.exit_cb = on_hook_exit;
    opts.stdio = stdio;
    opts.stdio_count = 3;
    /* Its own session and process group, so that the timeout kills whatever the hook started too. */
    opts.flags = UV_PROCESS_DETACHED;
    rc = uv_spawn(loop, &h->proc, &opts);
    for (i = 0; i < HOOK_ENV_COUNT; i++)
        free(owned[i]);
    free(env);
    if (rc != 0) {
        h->spawn_error = rc;
        h->exited = true;
        close_run_handle(h, (uv_handle_t *)&h->proc);
        close_run_handle(h, (uv_handle_t *)&h->out_pipe);
        close_run_handle(h, (uv_handle_t *)&h->err_pipe);
        return;
    }
    if (uv_read_start((uv_stream_t *)&h->out_pipe, on_alloc, on_read_out) != 0)
        close_run_handle(h, (uv_handle_t *)&h->out_pipe);
    if (uv_read_start((uv_stream_t *)&h->err_pipe, on_alloc, on_read_err) != 0)
        close_run_handle(h, (uv_handle_t *)&h->err_pipe);
    uv_timer_start(&h->kill_timer, on_kill_timer, h->timeout_ms, 0);
}

/* ---- the target ---- */

static void hook_update(oa_dtarget_t *t)
{
    hook_target_t *h = (hook_target_t *)t;

    if (h->closing)
        return;
    /* While a run is on, its end notices the newer generation and runs once more. */
    if (!h->running)
        start_run(h);
}

static void hook_close(oa_dtarget_t *t)
{
    hook_target_t *h = (hook_target_t *)t;

    h->closing = true;
    if (h->running) {
        /* The process handle is closed from its exit callback, so that the killed hook is reaped. */
        if (!h->exited)
            kill_group(h);
        close_run_handle(h, (uv_handle_t *)&h->out_pipe);
        close_run_handle(h, (uv_handle_t *)&h->err_pipe);
    }
    uv_close((uv_handle_t *)&h->kill_timer, on_timer_closed);
    uv_close((uv_handle_t *)&h->retry_timer, on_timer_closed);
}

static void hook_free(oa_dtarget_t *t)
{
    hook_target_t *h = (hook_target_t *)t;

    free(h->program);
    free(h->exec_path);
    free(h);
}

static const oa_dtarget_ops_t hook_ops = {hook_update, hook_close, hook_free};

static uint64_t hook_timeout_ms(void)
{
    const char *s = getenv("OA_TEST_HOOK_TIMEOUT_MS");
    char *end;
    unsigned long long v;

    if (s == NULL || *s == '\0')
        return HOOK_TIMEOUT_MS;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0)
        return HOOK_TIMEOUT_MS;
    return v;
}

/* The path to execute: program itself when absolute, else taken from the current directory now. PATH is never
 * searched (libuv would search it for a name without a slash). */
static char *exec_path_of(const char *program)
{
    char cwd[4096];

    if (program[0] == '/')
        return strdup(program);
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return NULL;
    return oa_path_join(cwd, program);
}

int oa_hook_target_new(oa_delivery_t *d, const char *program, oa_error_t *err)
{
    uv_loop_t *loop = oa_delivery_loop(d);
    hook_target_t *h = NULL;
    struct stat st;
    char *name = NULL;
    int rc = -1;

    if (program == NULL || program[0] == '\0')
        return oa_error_set(err, OA_E_BAD_OPTION, "--staple-hook: the program path is empty");
    if (stat(program, &st) != 0 || access(program, X_OK) != 0)
        return oa_error_set(err, OA_E_BAD_OPTION, "--staple-hook: %s: not executable: %s", program,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return oa_error_set(err, OA_E_BAD_OPTION, "--staple-hook: %s: not executable: not a regular file", program);

    h = calloc(1, sizeof(*h));
    name = malloc(strlen("hook:") + strlen(program) + 1);
    if (h == NULL || name == NULL)
        goto nomem;
    sprintf(name, "hook:%s", program);
    h->program = strdup(program);
    h->exec_path = exec_path_of(program);
    if (h->program == NULL || h->exec_path == NULL)
        goto nomem;
    h->timeout_ms = hook_timeout_ms();
    if (oa_dtarget_attach(d, &h->base, &hook_ops, name) != 0)
        goto nomem;
    free(name);
    /* Once attached the delivery owns h and closes these from hook_close. */
    uv_timer_init(loop, &h->kill_timer);
    uv_timer_init(loop, &h->retry_timer);
    h->kill_timer.data = h;
    h->retry_timer.data = h;
    h->timers_open = 2;
    return 0;

nomem:
    if (h != NULL) {
        free(h->program);
        free(h->exec_path);
    }
    free(h);
    free(name);
    rc = oa_error_set(err, OA_E_NOMEM, "--staple-hook: %s: out of memory", program);
    return rc;
}
