#include "testnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* Polling every 10 ms for at most 5 s: a redis-server starts in a few milliseconds, even under sanitizers. */
#define REDIS_WAIT_STEP_US 10000
#define REDIS_WAIT_STEPS   500

static void loopback(struct sockaddr_in *a, int port)
{
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->sin_port = htons((uint16_t)port);
}

int oa_testnet_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd, port = -1;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    loopback(&a, 0);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int oa_testnet_port_accepts(int port)
{
    struct sockaddr_in a;
    int fd, ok;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    loopback(&a, port);
    ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static int has_arg(const char *const *args, const char *name)
{
    size_t i;

    for (i = 0; args != NULL && args[i] != NULL; i++)
        if (strcmp(args[i], name) == 0)
            return 1;
    return 0;
}

/* Starts argv[0] with stdin on /dev/null and stdout and stderr appended to log (NULL: /dev/null). The child dies
 * with the suite, so a server never outlives a suite that crashed. Returns its pid, or -1. */
static pid_t spawn(const char **argv, const char *log)
{
    pid_t pid = fork();

    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        int out = log != NULL ? open(log, O_WRONLY | O_CREAT | O_APPEND, 0600) : devnull;

        if (devnull >= 0)
            dup2(devnull, 0);
        if (out >= 0) {
            dup2(out, 1);
            dup2(out, 2);
        }
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* execvp's argv is not const-qualified for historical reasons; it does not write to the strings. */
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid < 0 ? -1 : pid;
}

static void reap(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

pid_t oa_testnet_redis_start(int port, const char *dir, const char *const *extra_args)
{
    char port_text[16], log[4096];
    const char **argv = NULL;
    size_t n = 0, extra = 0, i;
    pid_t pid = -1;
    int tls = has_arg(extra_args, "--tls-cert-file");

    /* A port that accepts already is someone else's: waiting for it to accept would prove nothing. */
    if (port <= 0 || dir == NULL || oa_testnet_port_accepts(port))
        return -1;
    snprintf(port_text, sizeof(port_text), "%d", port);
    if ((size_t)snprintf(log, sizeof(log), "%s/redis-%d.log", dir, port) >= sizeof(log))
        return -1;
    while (extra_args != NULL && extra_args[extra] != NULL)
        extra++;
    /* The argument vector is built before fork so that the child only has to exec. */
    argv = calloc(20 + extra, sizeof(*argv));
    if (argv == NULL)
        return -1;
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = tls ? "0" : port_text;
    if (tls) {
        argv[n++] = "--tls-port";
        argv[n++] = port_text;
    }
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = dir;
    argv[n++] = "--logfile";
    argv[n++] = log;
    for (i = 0; i < extra; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;

    pid = spawn(argv, NULL);
    if (pid < 0)
        goto out;
    for (i = 0; i < REDIS_WAIT_STEPS; i++) {
        /* A server that exited (a bad option, a port taken meanwhile) will never accept: no need to wait 5 s. */
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            pid = -1;
            goto out;
        }
        if (oa_testnet_port_accepts(port))
            goto out;
        usleep(REDIS_WAIT_STEP_US);
    }
    if (oa_testnet_port_accepts(port))
        goto out;
    kill(pid, SIGKILL);
    reap(pid);
    pid = -1;
out:
    free(argv);
    return pid;
}

void oa_testnet_redis_stop(pid_t pid, int sig)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    reap(pid);
}

pid_t oa_testnet_etcd_start(const char *name, int client_port, int peer_port, const char *initial_cluster,
                            const char *dir, const char *const *extra_args)
{
    char client_url[64], peer_url[64], self[128], data[512], log[512];
    const char **argv = NULL;
    size_t n = 0, extra = 0, i;
    pid_t pid = -1;

    if (client_port <= 0 || peer_port <= 0 || oa_testnet_port_accepts(client_port))
        return -1;
    snprintf(client_url, sizeof(client_url), "%s://127.0.0.1:%d",
             has_arg(extra_args, "--cert-file") ? "https" : "http", client_port);
    snprintf(peer_url, sizeof(peer_url), "http://127.0.0.1:%d", peer_port);
    snprintf(self, sizeof(self), "%s=%s", name, peer_url);
    if ((size_t)snprintf(data, sizeof(data), "%s/%s.etcd", dir, name) >= sizeof(data) ||
        (size_t)snprintf(log, sizeof(log), "%s/%s.log", dir, name) >= sizeof(log))
        return -1;
    while (extra_args != NULL && extra_args[extra] != NULL)
        extra++;
    /* The argument vector is built before fork so that the child only has to exec. */
    argv = calloc(32 + extra, sizeof(*argv));
    if (argv == NULL)
        return -1;
    argv[n++] = "etcd";
    argv[n++] = "--name";
    argv[n++] = name;
    argv[n++] = "--data-dir";
    argv[n++] = data;
    argv[n++] = "--listen-client-urls";
    argv[n++] = client_url;
    argv[n++] = "--advertise-client-urls";
    argv[n++] = client_url;
    argv[n++] = "--listen-peer-urls";
    argv[n++] = peer_url;
    argv[n++] = "--initial-advertise-peer-urls";
    argv[n++] = peer_url;
    argv[n++] = "--initial-cluster";
    argv[n++] = initial_cluster != NULL ? initial_cluster : self;
    argv[n++] = "--initial-cluster-state";
    argv[n++] = "new";
    argv[n++] = "--heartbeat-interval";
    argv[n++] = "100";
    argv[n++] = "--election-timeout";
    argv[n++] = "500";
    for (i = 0; i < extra; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;

    pid = spawn(argv, log);
    free(argv);
    return pid;
}

int oa_testnet_etcd_wait(int client_port, int tls, unsigned ms)
{
    oa_testnet_reply_t r = {0};
    unsigned waited;

    for (waited = 0; waited <= ms; waited += 20) {
        /* A member serving TLS drops a plain HTTP request unanswered: that one is only waited for to listen. */
        if (oa_testnet_port_accepts(client_port) &&
            (tls || (oa_testnet_http(client_port, "GET", "/health", NULL, NULL, NULL, &r) == 0 && r.status == 200 &&
                     strstr(r.body, "\"true\"") != NULL)))
            return 0;
        usleep(20000);
    }
    return -1;
}

void oa_testnet_etcd_stop(pid_t pid, int sig)
{
    if (pid <= 0)
        return;
    kill(pid, sig);
    reap(pid);
}

int oa_testnet_http(int port, const char *method, const char *path, const char *basic_auth, const char *extra,
                    const char *body, oa_testnet_reply_t *r)
{
    struct timeval tv = {.tv_sec = 10};
    struct sockaddr_in a;
    char req[8192], resp[sizeof(r->headers) + sizeof(r->body) + 8];
    size_t got = 0, len;
    ssize_t n;
    char *sep;
    int fd, rc = -1;

    memset(r, 0, sizeof(*r));
    len = (size_t)snprintf(req, sizeof(req),
                           "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s%s%s%s"
                           "Content-Length: %zu\r\n\r\n%s",
                           method, path, basic_auth ? "Authorization: Basic " : "", basic_auth ? basic_auth : "",
                           basic_auth ? "\r\n" : "", extra ? extra : "", body ? strlen(body) : 0, body ? body : "");
    if (len >= sizeof(req))
        return -1;
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    loopback(&a, port);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || write(fd, req, len) != (ssize_t)len)
        goto out;
    while (got < sizeof(resp) - 1 && (n = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
        got += (size_t)n;
    resp[got] = '\0';
    sep = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.1 %d", &r->status) != 1 || sep == NULL)
        goto out;
    snprintf(r->headers, sizeof(r->headers), "%.*s", (int)(sep - resp), resp);
    snprintf(r->body, sizeof(r->body), "%s", sep + 4);
    rc = 0;
out:
    close(fd);
    return rc;
}
