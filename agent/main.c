/*
 * ocsp-agent: parse the options, build the loop, run.
 */
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "oa_agent.h"
#include "oa_auth.h"
#include "oa_log.h"
#include "oa_options.h"

#define PASSWORD_MAX 1024

/* `ocsp-agent passwd`: one password on stdin (echo off on a terminal), its hash on stdout. */
static int run_passwd(void)
{
    char line[PASSWORD_MAX + 2], hash[OA_PASSWD_ENCODED_MAX];
    struct termios saved, quiet;
    int tty = isatty(STDIN_FILENO), rc = 1;
    size_t len;

    if (tty) {
        fputs("Password: ", stderr);
        tcgetattr(STDIN_FILENO, &saved);
        quiet = saved;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    if (fgets(line, sizeof(line), stdin) == NULL) {
        fputs("ocsp-agent passwd: no password on standard input\n", stderr);
        goto out;
    }
    len = strcspn(line, "\r\n");
    if (line[len] == '\0' && len > PASSWORD_MAX) {
        fprintf(stderr, "ocsp-agent passwd: password longer than %d bytes\n", PASSWORD_MAX);
        goto out;
    }
    line[len] = '\0';
    if (len == 0) {
        fputs("ocsp-agent passwd: empty password\n", stderr);
        goto out;
    }
    if (oa_passwd_hash(line, len, OA_PASSWD_ITERATIONS, hash, sizeof(hash)) != 0) {
        fputs("ocsp-agent passwd: hashing failed\n", stderr);
        goto out;
    }
    printf("%s\n", hash);
    rc = 0;
out:
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
        fputs("\n", stderr);
    }
    OPENSSL_cleanse(line, sizeof(line));
    return rc;
}

static int run_agent(const oa_options_t *opts)
{
    uv_loop_t loop;
    oa_agent_t agent;
    oa_error_t err;
    int rc = 0;

    oa_log_setup(opts->log_format, opts->log_level, NULL);
    /* A peer that disappears must not kill the process with SIGPIPE; libuv reports EPIPE instead. */
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    if (oa_agent_start(&agent, &loop, opts, &err) != 0) {
        fprintf(stderr, "ocsp-agent: %s\n", err.text);
        oa_agent_stop(&agent);
        rc = 2;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    oa_agent_free(&agent);
    if (uv_loop_close(&loop) != 0) {
        /* Something still open means a module leaked a handle; exit cleanly all the same. */
        OA_LOG(OA_LOG_WARN, "loop_not_empty_at_exit", OA_KV_STR("note", "a handle was still open"));
    }
    if (rc == 0)
        OA_LOG0(OA_LOG_INFO, "agent_stopped");
    return rc;
}

int main(int argc, char **argv)
{
    oa_options_t opts;
    oa_error_t err;
    int rc;

    memset(&opts, 0, sizeof(opts));
    if (oa_options_parse(argc, argv, &opts, &err) != 0) {
        fprintf(stderr, "ocsp-agent: %s\n", err.text);
        oa_options_free(&opts);
        return 2;
    }
    switch (opts.command) {
    case OA_CMD_VERSION:
        printf("ocsp-agent %s (%s, libuv %s, jansson %s)\n", OA_VERSION, OpenSSL_version(OPENSSL_VERSION),
               uv_version_string(), JANSSON_VERSION);
        rc = 0;
        break;
    case OA_CMD_HELP:
        fputs(oa_options_usage(), stdout);
        rc = 0;
        break;
    case OA_CMD_PASSWD:
        rc = run_passwd();
        break;
    default:
        rc = run_agent(&opts);
        break;
    }
    oa_options_free(&opts);
    return rc;
}
