/*
 * The command line and the --config file.
 *
 * Every option is one row of a table: its long name, the kind of value it takes and where the value goes. The
 * config file is applied first and the command line after it, so a value given on the command line replaces the
 * file's, and both go through the same checks. Cross-option rules are checked last, on the merged result.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "oa_cluster.h"
#include "oa_options.h"
#include "oa_util.h"

#define DEFAULT_LISTEN          "127.0.0.1:9443"
#define DEFAULT_DATA_DIR        "/var/lib/ocsp-agent"
#define DEFAULT_MAX_CONNECTIONS 1024
#define TIME_SCALE_MIN          0.0001
#define TIME_SCALE_MAX          1000.0
#define MAX_CONNECTIONS_MIN     1
#define MAX_CONNECTIONS_MAX     65536
#define NODE_ID_MAX             255
#define CLUSTER_LEASE_MIN       1000
#define CLUSTER_LEASE_MAX       60000
#define CONFIG_FILE_MAX         (1u << 20)

typedef enum kind_e {
    K_STRING,  /* a non-empty string, stored as is */
    K_LISTEN,  /* ADDR:PORT */
    K_URL,     /* an http:// URL */
    K_NODE_ID, /* printable, bounded */
    K_FLAG,    /* no value on the command line, a boolean in the file; the field is a bool */
    K_CLUSTER_URL, /* redis[s]://HOST:PORT[/DB] or etcd://HOST:PORT[,HOST:PORT...] */
    K_CAPS,    /* a comma-separated list of names, possibly empty */
    K_LOG_FORMAT,
    K_LOG_LEVEL,
    K_TIME_SCALE,
    K_MAX_CONNECTIONS,
    K_CLUSTER_LEASE, /* milliseconds */
    K_HAPROXY_SOCKET, /* repeatable: a UNIX socket path or a loopback ADDR:PORT; an array of them in the file */
    K_COMMAND, /* --help, --version */
} kind_t;

typedef struct optdef_s {
    const char *name; /* long name without the dashes */
    kind_t kind;
    size_t offset; /* of the field in oa_options_t; the command for K_COMMAND */
    int in_file;   /* 1 when the --config file may set it */
} optdef_t;

#define FIELD(f) offsetof(oa_options_t, f)

static const optdef_t optdefs[] = {
    {"config", K_STRING, FIELD(config_file), 0},
    {"listen", K_LISTEN, FIELD(listen), 1},
    {"tls-cert", K_STRING, FIELD(tls_cert), 1},
    {"tls-key", K_STRING, FIELD(tls_key), 1},
    {"users", K_STRING, FIELD(users_file), 1},
    {"no-auth", K_FLAG, FIELD(no_auth), 1},
    {"cert", K_STRING, FIELD(cert), 1},
    {"issuer", K_STRING, FIELD(issuer), 1},
    {"responder-url", K_URL, FIELD(responder_url), 1},
    {"data-dir", K_STRING, FIELD(data_dir), 1},
    {"node-id", K_NODE_ID, FIELD(node_id), 1},
    {"log-format", K_LOG_FORMAT, FIELD(log_format), 1},
    {"log-level", K_LOG_LEVEL, FIELD(log_level), 1},
    {"time-scale", K_TIME_SCALE, FIELD(time_scale), 1},
    {"max-connections", K_MAX_CONNECTIONS, FIELD(max_connections), 1},
    {"cluster", K_CLUSTER_URL, FIELD(cluster_url), 1},
    {"cluster-user", K_STRING, FIELD(cluster_user), 1},
    {"cluster-password", K_STRING, FIELD(cluster_password), 1},
    {"cluster-tls", K_FLAG, FIELD(cluster_tls), 1},
    {"cluster-ca", K_STRING, FIELD(cluster_ca), 1},
    {"cluster-cert", K_STRING, FIELD(cluster_cert), 1},
    {"cluster-key", K_STRING, FIELD(cluster_key), 1},
    {"capabilities", K_CAPS, FIELD(capabilities), 1},
    {"cluster-lease", K_CLUSTER_LEASE, FIELD(cluster_lease_ms), 1},
    {"haproxy-socket", K_HAPROXY_SOCKET, FIELD(haproxy_sockets), 1},
    {"haproxy-crt", K_STRING, FIELD(haproxy_crt), 1},
    {"staple-hook", K_STRING, FIELD(staple_hook), 1},
    {"help", K_COMMAND, OA_CMD_HELP, 0},
    {"version", K_COMMAND, OA_CMD_VERSION, 0},
};

#define NOPTS OA_ARRAY_SIZE(optdefs)

/* One parse in progress. file is the --config file while its values are applied, NULL for the command line; it
 * decides how an error names the option and which code it carries. */
typedef struct ctx_s {
    oa_options_t *o;
    oa_error_t *err;
    const char *file;
    int given[NOPTS];
} ctx_t;

static const char usage[] =
    "Usage: ocsp-agent [OPTIONS]\n"
    "       ocsp-agent passwd            read a password on stdin, print its hash for the users file\n"
    "       ocsp-agent --version | --help\n"
    "\n"
    "Watches a certificate's OCSP status and serves it over a REST API.\n"
    "Every option can also be written --name=value.\n"
    "\n"
    "  --config FILE           JSON object of options, keys with '_' for '-' (\"data_dir\");\n"
    "                          the command line wins over the file\n"
    "  --listen ADDR:PORT      API address, an IPv4 or [IPv6] literal (default 127.0.0.1:9443)\n"
    "  --tls-cert PEM          serve HTTPS with this certificate chain; needs --tls-key (default: HTTP)\n"
    "  --tls-key PEM           the private key of --tls-cert\n"
    "  --users FILE            users, roles and password hashes (required unless --no-auth)\n"
    "  --no-auth               no authentication, every caller is admin; loopback only (default off)\n"
    "  --cert PEM              the proxy certificate to watch, optionally followed by its chain\n"
    "  --issuer PEM            its issuer, when not the next certificate in --cert\n"
    "  --responder-url URL     an http:// OCSP responder instead of the certificate's own (default: none)\n"
    "  --data-dir DIR          persisted configuration and ocsp.der (default /var/lib/ocsp-agent)\n"
    "  --node-id NAME          this node's name (default: the host name)\n"
    "  --log-format FORMAT     text or json (default text)\n"
    "  --log-level LEVEL       debug, info, warn or error (default info)\n"
    "  --time-scale F          multiplies the query and recovery intervals, 0.0001 to 1000 (default 1)\n"
    "  --max-connections N     concurrent API connections, 1 to 65536 (default 1024)\n"
    "  --cluster URL           share configuration and status with other nodes through a store:\n"
    "                          Redis, redis://HOST:PORT[/DB] or rediss://... for TLS, or the members\n"
    "                          of an etcd cluster, etcd://HOST:PORT[,HOST:PORT...] (default port 2379)\n"
    "                          (default: a single node)\n"
    "  --cluster-user U        etcd only: the user to authenticate as; needs --cluster-password\n"
    "  --cluster-password P    the Redis AUTH password, or the etcd password of --cluster-user\n"
    "  --cluster-tls           TLS to the store; its certificate must name the URL's host (for etcd,\n"
    "                          each member's host as listed) (default off)\n"
    "  --cluster-ca PEM        CAs that verify the store's certificate (default: the system's\n"
    "                          trust store)\n"
    "  --cluster-cert PEM      client certificate chain, for a store that asks for one; needs\n"
    "                          --cluster-key\n"
    "  --cluster-key PEM       the private key of --cluster-cert\n"
    "  --capabilities LIST     capabilities this node advertises, comma-separated (default ocsp)\n"
    "  --cluster-lease MS      the poller's lease and a node's registry lifetime in milliseconds, 1000 to\n"
    "                          60000; heartbeats every third of it (default 3000)\n"
    "  --haproxy-socket SOCKET HAProxy's runtime API (a UNIX socket path or a loopback ADDR:PORT):\n"
    "                          every new staple is pushed there and kept there; repeatable\n"
    "  --haproxy-crt FILE      the PEM file HAProxy serves; FILE.ocsp is kept equal to the staple\n"
    "  --staple-hook PROGRAM   run as PROGRAM EVENT STAPLE_FILE (no shell) whenever the staple changes\n"
    "  --version               print the version and exit\n"
    "  --help                  print this text and exit\n";

const char *oa_options_usage(void)
{
    return usage;
}

/* The config file key of an option: its long name with '_' for '-'. */
static void file_key(const optdef_t *d, char *out, size_t outlen)
{
    size_t i;

    for (i = 0; d->name[i] != '\0' && i + 1 < outlen; i++)
        out[i] = d->name[i] == '-' ? '_' : d->name[i];
    out[i] = '\0';
}

static int value_error(ctx_t *c, const optdef_t *d, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int value_error(ctx_t *c, const optdef_t *d, const char *fmt, ...)
{
    char msg[160], key[32];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->file != NULL) {
        file_key(d, key, sizeof(key));
        return oa_error_set(c->err, OA_E_BAD_FILE, "config file %s: \"%s\": %s", c->file, key, msg);
    }
    return oa_error_set(c->err, OA_E_BAD_OPTION, "--%s: %s", d->name, msg);
}

static int set_string(ctx_t *c, const optdef_t *d, const char *s)
{
    char **field = (char **)((char *)c->o + d->offset);
    char *copy = strdup(s);

    if (copy == NULL)
        return oa_error_set(c->err, OA_E_NOMEM, "--%s: out of memory", d->name);
    free(*field);
    *field = copy;
    return 0;
}

static int set_time_scale(ctx_t *c, const optdef_t *d, double v, const char *shown)
{
    /* Written so that NaN fails the test too. */
    if (!(v >= TIME_SCALE_MIN && v <= TIME_SCALE_MAX))
        return value_error(c, d, "expected a number from 0.0001 to 1000, got %s", shown);
    c->o->time_scale = v;
    return 0;
}

static int set_max_connections(ctx_t *c, const optdef_t *d, long long v, const char *shown)
{
    if (v < MAX_CONNECTIONS_MIN || v > MAX_CONNECTIONS_MAX)
        return value_error(c, d, "expected an integer from 1 to 65536, got %s", shown);
    c->o->max_connections = (int)v;
    return 0;
}

static int set_cluster_lease(ctx_t *c, const optdef_t *d, long long v, const char *shown)
{
    if (v < CLUSTER_LEASE_MIN || v > CLUSTER_LEASE_MAX)
        return value_error(c, d, "expected milliseconds from 1000 to 60000, got %s", shown);
    c->o->cluster_lease_ms = (int)v;
    return 0;
}

/* A HAProxy runtime socket: an absolute UNIX socket path that fits sun_path, or ADDR:PORT on loopback. */
static int add_haproxy_socket(ctx_t *c, const optdef_t *d, const char *s, const char *shown)
{
    char host[64];
    char *copy;
    int port;

    if (s[0] == '/') {
        if (strlen(s) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return value_error(c, d, "the UNIX socket path is longer than %zu bytes",
                               sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    } else if (oa_options_split_listen(s, host, sizeof(host), &port) != 0 || port == 0) {
        return value_error(c, d, "expected a UNIX socket path or ADDR:PORT, got %s", shown);
    } else if (!oa_options_host_is_loopback(host)) {
        return value_error(c, d, "refused %s: a TCP runtime socket must be on loopback", shown);
    }
    if (c->o->n_haproxy_sockets >= OA_HAPROXY_SOCKETS_MAX)
        return value_error(c, d, "at most %d sockets", OA_HAPROXY_SOCKETS_MAX);
    copy = strdup(s);
    if (copy == NULL)
        return oa_error_set(c->err, OA_E_NOMEM, "--%s: out of memory", d->name);
    c->o->haproxy_sockets[c->o->n_haproxy_sockets++] = copy;
    return 0;
}

static void clear_haproxy_sockets(oa_options_t *o)
{
    while (o->n_haproxy_sockets > 0)
        free(o->haproxy_sockets[--o->n_haproxy_sockets]);
}

/* Applies a value given as text: any option's value on the command line, or a string-valued key of the file. */
static int apply_text(ctx_t *c, const optdef_t *d, const char *s)
{
    char shown[80], host[64];
    char *end;
    size_t i;
    int port;
    long long n;
    double v;

    snprintf(shown, sizeof(shown), "\"%.64s\"", s);
    if (d->kind == K_CAPS) {
        /* Empty is meaningful here: a node that advertises nothing, as an older one would. */
        if (oa_cluster_caps_valid(s) != 0)
            return value_error(c, d, "expected names of a-z, 0-9, _ and - separated by commas, got %s", shown);
        return set_string(c, d, s);
    }
    if (s[0] == '\0')
        return value_error(c, d, "expected a value, got an empty string");

    switch (d->kind) {
    case K_STRING:
        return set_string(c, d, s);
    case K_HAPROXY_SOCKET:
        return add_haproxy_socket(c, d, s, shown);
    case K_LISTEN:
        if (oa_options_split_listen(s, host, sizeof(host), &port) != 0)
            return value_error(c, d, "expected IPV4:PORT or [IPV6]:PORT with a port from 0 to 65535, got %s", shown);
        return set_string(c, d, s);
    case K_URL:
        if (strncasecmp(s, "http://", 7) != 0 || s[7] == '\0')
            return value_error(c, d, "expected an http:// URL, got %s", shown);
        return set_string(c, d, s);
    case K_NODE_ID:
        for (i = 0; s[i] != '\0'; i++) {
            if (i >= NODE_ID_MAX || !isgraph((unsigned char)s[i]))
                return value_error(c, d, "expected up to 255 printable characters without spaces, got %s", shown);
        }
        return set_string(c, d, s);
    case K_LOG_FORMAT:
        if (oa_log_format_parse(s, &c->o->log_format) != 0)
            return value_error(c, d, "expected text or json, got %s", shown);
        return 0;
    case K_LOG_LEVEL:
        if (oa_log_level_parse(s, &c->o->log_level) != 0)
            return value_error(c, d, "expected debug, info, warn or error, got %s", shown);
        return 0;
    case K_TIME_SCALE:
        errno = 0;
        v = strtod(s, &end);
        if (isspace((unsigned char)s[0]) || *end != '\0' || errno != 0)
            return value_error(c, d, "expected a number from 0.0001 to 1000, got %s", shown);
        return set_time_scale(c, d, v, shown);
    case K_MAX_CONNECTIONS:
        for (i = 0; s[i] != '\0'; i++) {
            if (!isdigit((unsigned char)s[i]) || i >= 9)
                return value_error(c, d, "expected an integer from 1 to 65536, got %s", shown);
        }
        n = strtoll(s, NULL, 10);
        return set_max_connections(c, d, n, shown);
    case K_CLUSTER_LEASE:
        for (i = 0; s[i] != '\0'; i++) {
            if (!isdigit((unsigned char)s[i]) || i >= 9)
                return value_error(c, d, "expected milliseconds from 1000 to 60000, got %s", shown);
        }
        return set_cluster_lease(c, d, strtoll(s, NULL, 10), shown);
    case K_CLUSTER_URL: {
        char rhost[OA_CLUSTER_HOST_MAX], members[OA_CLUSTER_MEMBERS_MAX][OA_CLUSTER_MEMBER_MAX];
        int rport, rdb;
        size_t nmembers;
        oa_error_t uerr;

        if ((oa_cluster_url_is_etcd(s) ? oa_cluster_etcd_url_parse(s, members, &nmembers, &uerr)
                                       : oa_cluster_url_parse(s, rhost, &rport, &rdb, &uerr)) != 0)
            return value_error(c, d, "%s", strncmp(uerr.text, "--cluster: ", 11) == 0 ? uerr.text + 11 : uerr.text);
        return set_string(c, d, s);
    }
    case K_CAPS:
    case K_FLAG:
    case K_COMMAND:
        break;
    }
    return value_error(c, d, "takes no value");
}

/* Applies one key of the config file: the JSON type must match the option's kind before the value is checked. */
static int apply_json(ctx_t *c, const optdef_t *d, json_t *v)
{
    char shown[40];
    json_t *item;
    size_t i;

    switch (d->kind) {
    case K_HAPROXY_SOCKET:
        /* One socket as a string, or several as an array of strings. */
        if (!json_is_array(v))
            break;
        json_array_foreach(v, i, item) {
            if (!json_is_string(item) || strlen(json_string_value(item)) != json_string_length(item))
                return value_error(c, d, "expected an array of strings");
            if (apply_text(c, d, json_string_value(item)) != 0)
                return -1;
        }
        return 0;
    case K_FLAG:
        if (!json_is_boolean(v))
            return value_error(c, d, "expected true or false");
        *(bool *)((char *)c->o + d->offset) = json_is_true(v);
        return 0;
    case K_TIME_SCALE:
        if (!json_is_number(v))
            return value_error(c, d, "expected a number");
        snprintf(shown, sizeof(shown), "%g", json_number_value(v));
        return set_time_scale(c, d, json_number_value(v), shown);
    case K_MAX_CONNECTIONS:
        if (!json_is_integer(v))
            return value_error(c, d, "expected an integer");
        snprintf(shown, sizeof(shown), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return set_max_connections(c, d, json_integer_value(v), shown);
    case K_CLUSTER_LEASE:
        if (!json_is_integer(v))
            return value_error(c, d, "expected an integer");
        snprintf(shown, sizeof(shown), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return set_cluster_lease(c, d, json_integer_value(v), shown);
    default:
        break;
    }
    if (!json_is_string(v))
        return value_error(c, d, "expected a string");
    if (strlen(json_string_value(v)) != json_string_length(v))
        return value_error(c, d, "expected a string without NUL characters");
    return apply_text(c, d, json_string_value(v));
}

static const optdef_t *find_by_name(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < NOPTS; i++) {
        if (strlen(optdefs[i].name) == len && memcmp(optdefs[i].name, name, len) == 0)
            return &optdefs[i];
    }
    return NULL;
}

static const optdef_t *find_by_key(const char *key)
{
    char k[32];
    size_t i;

    for (i = 0; i < NOPTS; i++) {
        if (!optdefs[i].in_file)
            continue;
        file_key(&optdefs[i], k, sizeof(k));
        if (strcmp(k, key) == 0)
            return &optdefs[i];
    }
    return NULL;
}

static int load_config(ctx_t *c, const char *path)
{
    oa_buf_t text = {0};
    json_error_t je;
    json_t *root = NULL, *v;
    const optdef_t *d;
    const char *key;
    int rc = -1, r;

    r = oa_file_read(path, CONFIG_FILE_MAX, &text);
    if (r != 0) {
        oa_error_set(c->err, OA_E_BAD_FILE, "config file %s: cannot be read: %s", path, uv_strerror(r));
        goto out;
    }
    root = json_loadb(text.data, text.len, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL) {
        oa_error_set(c->err, OA_E_BAD_FILE, "config file %s: not valid JSON at line %d, column %d: %s", path, je.line,
                     je.column, je.text);
        goto out;
    }
    if (!json_is_object(root)) {
        oa_error_set(c->err, OA_E_BAD_FILE, "config file %s: expected one JSON object", path);
        goto out;
    }
    c->file = path;
    json_object_foreach(root, key, v) {
        d = find_by_key(key);
        if (d == NULL) {
            oa_error_set(c->err, OA_E_BAD_FILE, "config file %s: \"%.40s\": unknown key", path, key);
            goto out;
        }
        if (apply_json(c, d, v) != 0)
            goto out;
        c->given[d - optdefs] = 1;
    }
    rc = 0;
out:
    c->file = NULL;
    json_decref(root);
    oa_buf_free(&text);
    return rc;
}

static int set_default(char **field, const char *value, oa_error_t *err)
{
    if (*field != NULL)
        return 0;
    *field = strdup(value);
    if (*field == NULL)
        return oa_error_set(err, OA_E_NOMEM, "out of memory");
    return 0;
}

static int was_given(const ctx_t *c, const char *name)
{
    return c->given[find_by_name(name, strlen(name)) - optdefs];
}

static int apply_defaults(ctx_t *c)
{
    oa_options_t *o = c->o;
    char host[NODE_ID_MAX + 1];

    if (set_default(&o->listen, DEFAULT_LISTEN, c->err) != 0 ||
        set_default(&o->data_dir, DEFAULT_DATA_DIR, c->err) != 0)
        return -1;
    if (o->node_id == NULL) {
        /* gethostname may leave the name unterminated when it is truncated. */
        if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
            strcpy(host, "localhost");
        host[sizeof(host) - 1] = '\0';
        if (set_default(&o->node_id, host, c->err) != 0)
            return -1;
    }
    /* These fields have no "unset" value of their own (zero is a valid log level), hence the given[] record. */
    if (!was_given(c, "log-format"))
        o->log_format = OA_LOG_TEXT;
    if (!was_given(c, "log-level"))
        o->log_level = OA_LOG_INFO;
    if (!was_given(c, "time-scale"))
        o->time_scale = 1.0;
    if (!was_given(c, "max-connections"))
        o->max_connections = DEFAULT_MAX_CONNECTIONS;
    return 0;
}

/* The rules that involve more than one option, checked on the merged result. */
static int check_combinations(oa_options_t *o, oa_error_t *err)
{
    if (o->tls_cert != NULL && o->tls_key == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--tls-cert: given without --tls-key");
    if (o->tls_key != NULL && o->tls_cert == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--tls-key: given without --tls-cert");
    if (o->no_auth && !oa_options_host_is_loopback(o->listen_host))
        return oa_error_set(err, OA_E_BAD_OPTION, "--no-auth: refused on %s, a non-loopback address", o->listen_host);
    /* Both at once would leave it unclear whether the users file is meant to protect the API. */
    if (o->no_auth && o->users_file != NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--no-auth: cannot be combined with --users");
    if (o->cluster_url == NULL) {
        if (o->cluster_user != NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-user: needs --cluster");
        if (o->cluster_password != NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-password: needs --cluster");
        if (o->cluster_tls)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-tls: needs --cluster");
        if (o->capabilities != NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--capabilities: needs --cluster");
        if (o->cluster_lease_ms != 0)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-lease: needs --cluster");
    }
    if (o->cluster_user != NULL && !oa_cluster_url_is_etcd(o->cluster_url))
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-user: only for an etcd:// cluster (Redis AUTH takes a "
                            "password alone)");
    if (o->cluster_user != NULL && o->cluster_password == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-user: needs --cluster-password");
    /* etcd authenticates a user with a password: a password alone would be silently unused. */
    if (o->cluster_password != NULL && o->cluster_user == NULL && oa_cluster_url_is_etcd(o->cluster_url))
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-password: needs --cluster-user with an etcd:// cluster");
    /* rediss:// asks for TLS as --cluster-tls does. */
    if (oa_cluster_url_is_tls(o->cluster_url))
        o->cluster_tls = true;
    if (!o->cluster_tls) {
        if (o->cluster_ca != NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-ca: needs --cluster-tls");
        if (o->cluster_cert != NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-cert: needs --cluster-tls");
        if (o->cluster_key != NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-key: needs --cluster-tls");
    }
    if (o->cluster_cert != NULL && o->cluster_key == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-cert: needs --cluster-key");
    if (o->cluster_key != NULL && o->cluster_cert == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster-key: needs --cluster-cert");
    if (o->command == OA_CMD_RUN && o->users_file == NULL && !o->no_auth)
        return oa_error_set(err, OA_E_BAD_OPTION, "--users: required (or --no-auth on a loopback address)");
    return 0;
}

int oa_options_parse(int argc, char **argv, oa_options_t *o, oa_error_t *err)
{
    const char *cli[NOPTS] = {0};
    const char *sockets[OA_HAPROXY_SOCKETS_MAX + 1];
    int n_sockets = 0;
    int seen[NOPTS] = {0};
    ctx_t c = {.o = o, .err = err};
    const optdef_t *d;
    const char *arg, *name, *eq, *value;
    int i, only_args = 0, passwd = 0, help = 0, version = 0;
    size_t k, namelen;

    oa_error_clear(err);
    o->command = OA_CMD_RUN;

    /* First pass: the command line's shape (names, values, repeats) without applying anything, so the config
     * file can be applied before the command line values that override it. */
    for (i = 1; i < argc; i++) {
        arg = argv[i];
        if (!only_args && strcmp(arg, "--") == 0) {
            only_args = 1;
            continue;
        }
        if (only_args || arg[0] != '-' || arg[1] == '\0') {
            if (passwd || strcmp(arg, "passwd") != 0)
                return oa_error_set(err, OA_E_BAD_OPTION, "unexpected argument \"%.64s\"", arg);
            passwd = 1;
            continue;
        }
        if (arg[1] != '-')
            return oa_error_set(err, OA_E_BAD_OPTION, "%.64s: unknown option", arg);
        name = arg + 2;
        eq = strchr(name, '=');
        namelen = eq != NULL ? (size_t)(eq - name) : strlen(name);
        d = find_by_name(name, namelen);
        if (d == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--%.*s: unknown option", (int)(namelen > 64 ? 64 : namelen),
                                name);
        k = (size_t)(d - optdefs);
        if (seen[k] && d->kind != K_HAPROXY_SOCKET)
            return oa_error_set(err, OA_E_BAD_OPTION, "--%s: given more than once", d->name);
        seen[k] = 1;
        if (d->kind == K_FLAG || d->kind == K_COMMAND) {
            if (eq != NULL)
                return oa_error_set(err, OA_E_BAD_OPTION, "--%s: takes no value", d->name);
            if (d->kind == K_COMMAND && d->offset == OA_CMD_HELP)
                help = 1;
            else if (d->kind == K_COMMAND)
                version = 1;
            continue;
        }
        if (eq != NULL)
            value = eq + 1;
        else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            value = argv[++i];
        else
            return oa_error_set(err, OA_E_BAD_OPTION, "--%s: missing value", d->name);
        cli[k] = value;
        if (d->kind == K_HAPROXY_SOCKET) {
            if (n_sockets == OA_HAPROXY_SOCKETS_MAX)
                return oa_error_set(err, OA_E_BAD_OPTION, "--%s: at most %d sockets", d->name,
                                    OA_HAPROXY_SOCKETS_MAX);
            sockets[n_sockets++] = value;
        }
    }

    if (help || version) {
        o->command = help ? OA_CMD_HELP : OA_CMD_VERSION;
        return 0;
    }
    if (passwd)
        o->command = OA_CMD_PASSWD;

    if (cli[0] != NULL) {
        if (apply_text(&c, &optdefs[0], cli[0]) != 0 || load_config(&c, o->config_file) != 0)
            return -1;
    }
    for (k = 1; k < NOPTS; k++) {
        if (!seen[k])
            continue;
        c.given[k] = 1;
        if (optdefs[k].kind == K_FLAG) {
            *(bool *)((char *)o + optdefs[k].offset) = true;
        } else if (optdefs[k].kind == K_HAPROXY_SOCKET) {
            /* The command line's list replaces the file's. */
            clear_haproxy_sockets(o);
            for (i = 0; i < n_sockets; i++)
                if (apply_text(&c, &optdefs[k], sockets[i]) != 0)
                    return -1;
        } else if (apply_text(&c, &optdefs[k], cli[k]) != 0) {
            return -1;
        }
    }

    if (apply_defaults(&c) != 0)
        return -1;
    if (oa_options_split_listen(o->listen, o->listen_host, sizeof(o->listen_host), &o->listen_port) != 0)
        return oa_error_set(err, OA_E_BAD_OPTION, "--listen: \"%.64s\" is not a valid address", o->listen);
    return check_combinations(o, err);
}

void oa_options_free(oa_options_t *o)
{
    if (o == NULL)
        return;
    free(o->config_file);
    free(o->listen);
    free(o->tls_cert);
    free(o->tls_key);
    free(o->users_file);
    free(o->cert);
    free(o->issuer);
    free(o->responder_url);
    free(o->data_dir);
    free(o->node_id);
    free(o->cluster_url);
    free(o->cluster_user);
    free(o->cluster_password);
    free(o->cluster_ca);
    free(o->cluster_cert);
    free(o->cluster_key);
    free(o->capabilities);
    clear_haproxy_sockets(o);
    free(o->haproxy_crt);
    free(o->staple_hook);
    memset(o, 0, sizeof(*o));
}

static int parse_port(const char *s, int *port)
{
    long v = 0;
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (!isdigit((unsigned char)s[i]) || i >= 5)
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (i == 0 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

int oa_options_split_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    char tmp[64];
    unsigned char addr[sizeof(struct in6_addr)];
    const char *h, *close, *colon, *portstr;
    size_t hl;
    int family, p;

    if (listen == NULL)
        return -1;
    /* IPv6 needs brackets: without them the last colon could belong to the address as well as to the port. */
    if (listen[0] == '[') {
        close = strchr(listen, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        h = listen + 1;
        hl = (size_t)(close - h);
        portstr = close + 2;
        family = AF_INET6;
    } else {
        colon = strrchr(listen, ':');
        if (colon == NULL)
            return -1;
        h = listen;
        hl = (size_t)(colon - listen);
        portstr = colon + 1;
        family = AF_INET;
    }
    if (hl == 0 || hl >= sizeof(tmp) || hl >= hostlen)
        return -1;
    memcpy(tmp, h, hl);
    tmp[hl] = '\0';
    if (inet_pton(family, tmp, addr) != 1 || parse_port(portstr, &p) != 0)
        return -1;
    memcpy(host, tmp, hl + 1);
    *port = p;
    return 0;
}

bool oa_options_host_is_loopback(const char *host)
{
    char tmp[64];
    struct in_addr a4;
    struct in6_addr a6;
    size_t len;

    if (host == NULL)
        return 0;
    len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    if (len >= sizeof(tmp))
        return 0;
    memcpy(tmp, host, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET, tmp, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, tmp, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return 0;
}
