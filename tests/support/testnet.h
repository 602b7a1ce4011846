/*
 * Test-side network helpers shared by the suites: loopback ports, redis-server and etcd processes.
 *
 * Everything here works on 127.0.0.1 only and is bounded in time. Nothing asserts: every function reports failure
 * through its return value, and the suite decides what that means (fail, or skip).
 */
#ifndef OA_TESTNET_H
#define OA_TESTNET_H

#include <sys/types.h>

/* A TCP port of 127.0.0.1 that is free at the time of the call (bound to port 0, read back, closed again), or -1
 * when no socket could be bound. Nothing listens on it afterwards, so it also serves as a port that refuses. */
int oa_testnet_free_port(void);

/* 1 when something accepts a TCP connection on 127.0.0.1:port now, else 0. The connection is closed at once, so
 * this must not be used on a server that stalls on a client that sends nothing (`openssl ocsp`). */
int oa_testnet_port_accepts(int port);

/*
 * Starts redis-server on 127.0.0.1:port without persistence (--save "", --appendonly no), with its working directory
 * and its log file (redis-<port>.log) in dir, and waits until the port accepts connections, at most 5 s.
 * extra_args (NULL, or a NULL-terminated list) are appended to the command line. When they contain
 * "--tls-cert-file", port is served with TLS only (--tls-port port, --port 0); the caller passes the other TLS
 * options (key, CA, client authentication). The server's standard streams go to /dev/null.
 *
 * Returns the server's pid, to be given to oa_testnet_redis_stop, or -1 when the port accepts connections already
 * (another server has it), or the server could not be started, exited, or did not accept connections in time (a
 * process that was started is then killed and reaped).
 */
pid_t oa_testnet_redis_start(int port, const char *dir, const char *const *extra_args);

/* Sends sig to the server started as pid and reaps it. Does nothing when pid <= 0. */
void oa_testnet_redis_stop(pid_t pid, int sig);

/*
 * Starts one etcd member named name on 127.0.0.1 (client_port for clients, peer_port for the other members) with its
 * data in "<dir>/<name>.etcd" and its log in "<dir>/<name>.log", without waiting for it. initial_cluster is
 * etcd's --initial-cluster ("a=http://127.0.0.1:PEER,..."); NULL makes a cluster of this member alone. Heartbeat
 * 100 ms and election timeout 500 ms keep elections short. extra_args (NULL or NULL-terminated) are appended; with
 * "--cert-file" among them, clients are served over TLS only (the caller passes --cert-file and --key-file). A
 * data directory from an earlier start is reused (a restart). Returns the pid, or -1 when the fork failed or
 * client_port accepts connections already.
 */
pid_t oa_testnet_etcd_start(const char *name, int client_port, int peer_port, const char *initial_cluster,
                            const char *dir, const char *const *extra_args);

/* Waits until the member on client_port answers GET /health with "true" (it has a leader), at most ms
 * milliseconds; a member serving TLS (tls 1) only until it accepts connections. Returns 0, or -1 on time out. */
int oa_testnet_etcd_wait(int client_port, int tls, unsigned ms);

/* Sends sig to the member started as pid and reaps it. Does nothing when pid <= 0. */
void oa_testnet_etcd_stop(pid_t pid, int sig);

/* One HTTP/1.1 exchange with a server on 127.0.0.1:port, blocking, bounded by a 10 s receive timeout: sends method
 * and path with Connection: close, the Authorization header "Basic <basic_auth>" when basic_auth is not NULL, the
 * extra header lines (each ending in CRLF) and body with its Content-Length, then reads until the server closes. */
typedef struct oa_testnet_reply_s {
    int status;         /* the status code, 0 when none could be read */
    char headers[2048]; /* the status line and headers, without the blank line */
    char body[16384];   /* the body, NUL-terminated (truncated when larger) */
} oa_testnet_reply_t;

/* Returns 0 with r filled, or -1 when the connection or the exchange failed or the reply is not HTTP. */
int oa_testnet_http(int port, const char *method, const char *path, const char *basic_auth, const char *extra,
                    const char *body, oa_testnet_reply_t *r);

#endif
