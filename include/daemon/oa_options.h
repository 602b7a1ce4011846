/*
 * The command line and the --config file.
 *
 *   ocsp-agent [--config FILE] [--listen ADDR:PORT] [--tls-cert PEM --tls-key PEM] [--users FILE] [--no-auth]
 *              [--cert PEM] [--issuer PEM] [--responder-url URL] [--data-dir DIR] [--node-id NAME]
 *              [--log-format text|json] [--log-level debug|info|warn|error] [--time-scale F]
 *              [--max-connections N] [--cluster redis[s]://HOST:PORT[/DB] [--cluster-password P]
 *              | --cluster etcd://HOST:PORT[,HOST:PORT...] [--cluster-user U --cluster-password P]
 *              [--cluster-tls [--cluster-ca PEM] [--cluster-cert PEM --cluster-key PEM]] [--capabilities LIST]
 *              [--cluster-lease MS]]
 *   ocsp-agent passwd
 *   ocsp-agent --version | --help
 *
 * Every long option can also be `--name=value`. The --config file is one JSON object whose keys are the long option
 * names with '_' for '-' ("data_dir", "listen", "no_auth": true, "time_scale": 0.01, "max_connections": 512); options
 * on the command line win over the file. String values must be JSON strings, numbers JSON numbers, flags JSON
 * booleans; unknown keys are errors.
 */
#ifndef OA_OPTIONS_H
#define OA_OPTIONS_H

#include <stdbool.h>

#include "oa_error.h"
#include "oa_log.h"

/* How many --haproxy-socket options one agent takes. */
#define OA_HAPROXY_SOCKETS_MAX 16

typedef enum oa_command_e { OA_CMD_RUN, OA_CMD_PASSWD, OA_CMD_VERSION, OA_CMD_HELP } oa_command_t;

typedef struct oa_options_s {
    oa_command_t command;
    /* Strings are malloc'ed and owned by the struct; NULL when not given and without a default. */
    char *config_file;
    char *listen;        /* default "127.0.0.1:9443" */
    char *tls_cert;      /* both or neither of tls_cert/tls_key */
    char *tls_key;
    char *users_file;
    bool no_auth;        /* accepted only when listen is a loopback address (127.0.0.0/8, ::1) */
    char *cert;
    char *issuer;
    char *responder_url;
    char *data_dir;      /* default "/var/lib/ocsp-agent" */
    char *node_id;       /* default: the host name */
    oa_log_format_t log_format; /* default text */
    oa_log_level_t log_level;   /* default info */
    double time_scale;   /* default 1; accepted range 0.0001..1000 */
    int max_connections; /* default 1024; accepted range 1..65536 */

    /* Cluster mode (oa_cluster.h); all unset without --cluster. */
    char *cluster_url;      /* redis://HOST:PORT[/DB], rediss://... for TLS, or etcd://HOST:PORT[,HOST:PORT...] */
    char *cluster_user;     /* etcd only: the user to authenticate as; needs cluster_password */
    char *cluster_password; /* AUTH password of Redis, or the password of cluster_user on etcd */
    bool cluster_tls;       /* TLS to the store; also set by a rediss:// URL */
    char *cluster_ca;       /* PEM CAs that verify the store's certificate; NULL: the system's trust store */
    char *cluster_cert;     /* client certificate chain for the store; both or neither of cluster_cert/cluster_key */
    char *cluster_key;
    char *capabilities;     /* advertised capabilities, comma-separated, may be ""; NULL means "ocsp" */
    int cluster_lease_ms;   /* 0: the cluster's default (3000); else 1000..60000, the lease and the node TTL, with
                               a heartbeat of a third of it */

    /* Staple delivery (oa_delivery.h); all unset by default. */
    char *haproxy_sockets[OA_HAPROXY_SOCKETS_MAX]; /* UNIX socket paths or loopback ADDR:PORT, in the order given */
    int n_haproxy_sockets;
    char *haproxy_crt;      /* the PEM file HAProxy serves; <haproxy_crt>.ocsp is kept equal to the staple */
    char *staple_hook;      /* a program run as `PROGRAM EVENT STAPLE_FILE` when the staple changes */

    /* listen split into its parts (filled by oa_options_parse). */
    char listen_host[64]; /* "127.0.0.1" or "::1" (no brackets) */
    int listen_port;
} oa_options_t;

/*
 * Parses argv (argv[0] is the program name) and the --config file it names, applies defaults and checks every
 * value: ranges, both-or-neither TLS files (--tls-cert/--tls-key, --cluster-cert/--cluster-key), the --cluster-ca/
 * --cluster-cert/--cluster-key files only with --cluster-tls, --cluster-user only with an etcd:// cluster and with
 * --cluster-password (which an etcd:// cluster takes only with --cluster-user), --no-auth only on loopback, users
 * file or --no-auth required to run.
 * Whether the named files exist and parse is checked later by the modules that load them. Returns 0, or -1 with
 * err filled (OA_E_BAD_OPTION, or OA_E_BAD_FILE for the --config file) with one sentence naming the option, e.g.
 * "--query-frequency: unknown option" or "--time-scale: expected a number from 0.0001 to 1000, got \"abc\"".
 * o must be zeroed or fresh; free it with oa_options_free whatever the result.
 */
int oa_options_parse(int argc, char **argv, oa_options_t *o, oa_error_t *err);

void oa_options_free(oa_options_t *o);

/* The --help text. */
const char *oa_options_usage(void);

/* Splits "ADDR:PORT" / "[v6]:PORT" into host and port, and checks both. Returns 0 or -1. */
int oa_options_split_listen(const char *listen, char *host, size_t hostlen, int *port);

/* true when host is a loopback address literal (127.0.0.0/8 or ::1). */
bool oa_options_host_is_loopback(const char *host);

#endif
