/*
 * The command line and the --config file: every field of good command lines, the exact sentence of bad ones,
 * config files from tests/data/config/, and the listen-address helpers.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* cmocka needs setjmp.h first. */
#include <setjmp.h>

#include <cmocka.h>

#include "oa_cluster.h"
#include "oa_options.h"
#include "oa_util.h"

#define MAX_ARGS 40

/* What a parse must produce. Strings that are NULL here must be NULL in the result; node_id NULL means "the host
 * name". */
typedef struct want_s {
    oa_command_t command;
    const char *config_file;
    const char *listen;
    const char *tls_cert;
    const char *tls_key;
    const char *users_file;
    bool no_auth;
    const char *cert;
    const char *issuer;
    const char *responder_url;
    const char *data_dir;
    const char *node_id;
    oa_log_format_t log_format;
    oa_log_level_t log_level;
    double time_scale;
    int max_connections;
    const char *listen_host;
    int listen_port;
} want_t;

/* The values every parse of a run command starts from. */
#define DEFAULTS                                                                                                     \
    .command = OA_CMD_RUN, .listen = "127.0.0.1:9443", .data_dir = "/var/lib/ocsp-agent", .log_format = OA_LOG_TEXT, \
    .log_level = OA_LOG_INFO, .time_scale = 1.0, .max_connections = 1024, .listen_host = "127.0.0.1",                \
    .listen_port = 9443

static char config_dir[512];

/* Replaces "@/" at the start of an argument, or right after its '=', with the config data directory. */
static const char *expand(const char *arg, char *buf, size_t buflen)
{
    const char *at;

    if (arg == NULL)
        return NULL;
    at = strncmp(arg, "@/", 2) == 0 ? arg : strstr(arg, "=@/");
    if (at == NULL)
        return arg;
    if (at != arg)
        at++;
    snprintf(buf, buflen, "%.*s%s/%s", (int)(at - arg), arg, config_dir, at + 2);
    return buf;
}

static int parse(const char *const *args, oa_options_t *o, oa_error_t *err)
{
    static char bufs[MAX_ARGS][600];
    char *argv[MAX_ARGS + 2];
    int argc = 0;

    argv[argc++] = "ocsp-agent";
    for (; *args != NULL; args++) {
        assert_true(argc < MAX_ARGS);
        argv[argc] = (char *)expand(*args, bufs[argc], sizeof(bufs[argc]));
        argc++;
    }
    argv[argc] = NULL;
    memset(o, 0, sizeof(*o));
    return oa_options_parse(argc, argv, o, err);
}

static void assert_str_or_null(const char *what, const char *got, const char *want)
{
    if (want == NULL && got == NULL)
        return;
    if (want == NULL || got == NULL || strcmp(got, want) != 0)
        fail_msg("%s: got %s%s%s, want %s%s%s", what, got ? "\"" : "", got ? got : "NULL", got ? "\"" : "",
                 want ? "\"" : "", want ? want : "NULL", want ? "\"" : "");
}

static void assert_options(const oa_options_t *o, const want_t *w)
{
    char host[256] = {0}, path[600];

    assert_int_equal(o->command, w->command);
    assert_str_or_null("config_file", o->config_file, expand(w->config_file, path, sizeof(path)));
    assert_str_or_null("listen", o->listen, w->listen);
    assert_str_or_null("tls_cert", o->tls_cert, w->tls_cert);
    assert_str_or_null("tls_key", o->tls_key, w->tls_key);
    assert_str_or_null("users_file", o->users_file, w->users_file);
    assert_int_equal(o->no_auth, w->no_auth);
    assert_str_or_null("cert", o->cert, w->cert);
    assert_str_or_null("issuer", o->issuer, w->issuer);
    assert_str_or_null("responder_url", o->responder_url, w->responder_url);
    assert_str_or_null("data_dir", o->data_dir, w->data_dir);
    if (w->node_id == NULL) {
        assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
        assert_str_or_null("node_id", o->node_id, host);
    } else {
        assert_str_or_null("node_id", o->node_id, w->node_id);
    }
    assert_int_equal(o->log_format, w->log_format);
    assert_int_equal(o->log_level, w->log_level);
    assert_true(o->time_scale == w->time_scale);
    assert_int_equal(o->max_connections, w->max_connections);
    assert_string_equal(o->listen_host, w->listen_host);
    assert_int_equal(o->listen_port, w->listen_port);
}

/* Each expected value starts from DEFAULTS and overrides some fields, which is what the initializer-override
 * warning is about. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
static void test_good_command_lines(void **state)
{
    static const struct {
        const char *args[MAX_ARGS];
        want_t want;
    } cases[] = {
        {{"--users", "/etc/ocsp-agent/users.json", NULL}, {DEFAULTS, .users_file = "/etc/ocsp-agent/users.json"}},
        /* Every option, "--name value". */
        {{"--listen",
          "0.0.0.0:443",
          "--tls-cert",
          "/c/api.pem",
          "--tls-key",
          "/c/api.key",
          "--users",
          "/c/u.json",
          "--cert",
          "/c/proxy.pem",
          "--issuer",
          "/c/ca.pem",
          "--responder-url",
          "http://ocsp.example.com:8080/x",
          "--data-dir",
          "/srv/oa",
          "--node-id",
          "node-7",
          "--log-format",
          "json",
          "--log-level",
          "warn",
          "--time-scale",
          "0.5",
          "--max-connections",
          "64",
          NULL},
         {DEFAULTS, .listen = "0.0.0.0:443", .tls_cert = "/c/api.pem", .tls_key = "/c/api.key",
          .users_file = "/c/u.json", .cert = "/c/proxy.pem", .issuer = "/c/ca.pem",
          .responder_url = "http://ocsp.example.com:8080/x", .data_dir = "/srv/oa", .node_id = "node-7",
          .log_format = OA_LOG_JSON, .log_level = OA_LOG_WARN, .time_scale = 0.5, .max_connections = 64,
          .listen_host = "0.0.0.0", .listen_port = 443}},
        /* Every option, "--name=value", an IPv6 address and the range bounds. */
        {{"--listen=[::]:65535", "--tls-cert=/c/a.pem", "--tls-key=/c/a.key", "--users=/c/u.json", "--cert=/c/p.pem",
          "--issuer=/c/i.pem", "--responder-url=HTTP://OCSP.example.com", "--data-dir=/d", "--node-id=n1.example.com",
          "--log-format=text", "--log-level=error", "--time-scale=0.0001", "--max-connections=1", NULL},
         {DEFAULTS, .listen = "[::]:65535", .tls_cert = "/c/a.pem", .tls_key = "/c/a.key", .users_file = "/c/u.json",
          .cert = "/c/p.pem", .issuer = "/c/i.pem", .responder_url = "HTTP://OCSP.example.com", .data_dir = "/d",
          .node_id = "n1.example.com", .log_format = OA_LOG_TEXT, .log_level = OA_LOG_ERROR, .time_scale = 0.0001,
          .max_connections = 1, .listen_host = "::", .listen_port = 65535}},
        {{"--users", "u.json", "--time-scale", "1000", "--max-connections", "65536", "--log-level", "debug", NULL},
         {DEFAULTS, .users_file = "u.json", .time_scale = 1000, .max_connections = 65536, .log_level = OA_LOG_DEBUG}},
        /* A value may contain '=' and start with a single dash. */
        {{"--users=/c/a=b.json", "--data-dir", "-odd", NULL},
         {DEFAULTS, .users_file = "/c/a=b.json", .data_dir = "-odd"}},
        /* --no-auth on loopback addresses; port 0 is accepted (tests bind to any free port). */
        {{"--no-auth", "--listen", "127.5.5.5:0", NULL},
         {DEFAULTS, .no_auth = true, .listen = "127.5.5.5:0", .listen_host = "127.5.5.5", .listen_port = 0}},
        {{"--listen", "[::1]:8080", "--no-auth", NULL},
         {DEFAULTS, .no_auth = true, .listen = "[::1]:8080", .listen_host = "::1", .listen_port = 8080}},
        {{"--no-auth", NULL}, {DEFAULTS, .no_auth = true}},
        /* passwd needs neither --users nor --no-auth; options around it still apply. */
        {{"passwd", NULL}, {DEFAULTS, .command = OA_CMD_PASSWD}},
        {{"--log-level", "warn", "passwd", "--log-format=json", NULL},
         {DEFAULTS, .command = OA_CMD_PASSWD, .log_level = OA_LOG_WARN, .log_format = OA_LOG_JSON}},
        {{"--", "passwd", NULL}, {DEFAULTS, .command = OA_CMD_PASSWD}},
        /* The config file, and the command line winning over it wherever both speak. */
        {{"--config", "@/valid.json", NULL},
         {DEFAULTS, .config_file = "@/valid.json", .listen = "[::1]:8443", .tls_cert = "/etc/ocsp-agent/api.pem",
          .tls_key = "/etc/ocsp-agent/api.key", .users_file = "/etc/ocsp-agent/users.json",
          .cert = "/etc/ocsp-agent/proxy.pem", .issuer = "/etc/ocsp-agent/issuer.pem",
          .responder_url = "http://ocsp.example.com/", .data_dir = "/srv/ocsp-agent", .node_id = "node-a",
          .log_format = OA_LOG_JSON, .log_level = OA_LOG_DEBUG, .time_scale = 0.01, .max_connections = 512,
          .listen_host = "::1", .listen_port = 8443}},
        {{"--listen", "127.0.0.1:1234", "--log-level=error", "--time-scale", "2", "--max-connections", "8", "--users",
          "/cli/users.json", "--config=@/valid.json", "--node-id", "node-cli", NULL},
         {DEFAULTS, .config_file = "@/valid.json", .listen = "127.0.0.1:1234", .tls_cert = "/etc/ocsp-agent/api.pem",
          .tls_key = "/etc/ocsp-agent/api.key", .users_file = "/cli/users.json", .cert = "/etc/ocsp-agent/proxy.pem",
          .issuer = "/etc/ocsp-agent/issuer.pem", .responder_url = "http://ocsp.example.com/",
          .data_dir = "/srv/ocsp-agent", .node_id = "node-cli", .log_format = OA_LOG_JSON, .log_level = OA_LOG_ERROR,
          .time_scale = 2, .max_connections = 8, .listen_host = "127.0.0.1", .listen_port = 1234}},
        {{"--config", "@/no_auth.json", NULL},
         {DEFAULTS, .config_file = "@/no_auth.json", .no_auth = true, .listen = "127.0.0.2:9000",
          .listen_host = "127.0.0.2", .listen_port = 9000, .time_scale = 3}},
        /* The flag on the command line cannot be undone by the file, and the file's listen address is replaced. */
        {{"--config", "@/no_auth.json", "--listen", "[::1]:1", "--time-scale=0.25", NULL},
         {DEFAULTS, .config_file = "@/no_auth.json", .no_auth = true, .listen = "[::1]:1", .listen_host = "::1",
          .listen_port = 1, .time_scale = 0.25}},
        /* --help and --version win over everything else that is well-formed. */
        {{"--help", NULL}, {.command = OA_CMD_HELP, .listen_host = ""}},
        {{"--version", NULL}, {.command = OA_CMD_VERSION, .listen_host = ""}},
        {{"--listen", "0.0.0.0:1", "--no-auth", "--help", NULL},
         {.command = OA_CMD_HELP, .listen_host = "", .node_id = ""}},
    };
    oa_options_t o;
    oa_error_t err;
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        err.code = OA_E_INTERNAL;
        if (parse(cases[i].args, &o, &err) != 0)
            fail_msg("case %zu (%s ...) refused: %s", i, cases[i].args[0], err.text);
        assert_int_equal(err.code, OA_OK);
        if (cases[i].want.command == OA_CMD_HELP || cases[i].want.command == OA_CMD_VERSION) {
            /* Nothing else is filled in for these: the program prints and exits. */
            assert_int_equal(o.command, cases[i].want.command);
            assert_null(o.listen);
            assert_null(o.node_id);
        } else {
            assert_options(&o, &cases[i].want);
        }
        oa_options_free(&o);
        assert_null(o.listen);
        assert_null(o.users_file);
    }
}
#pragma GCC diagnostic pop

static void test_bad_command_lines(void **state)
{
    static const struct {
        const char *args[12];
        oa_errcode_t code;
        const char *text; /* the whole sentence; "@/" expands to the config data directory */
    } cases[] = {
        {{"--query-frequency", "5", NULL}, OA_E_BAD_OPTION, "--query-frequency: unknown option"},
        {{"--users", "u", "--query-frequency=5", NULL}, OA_E_BAD_OPTION, "--query-frequency: unknown option"},
        {{"-u", "x", NULL}, OA_E_BAD_OPTION, "-u: unknown option"},
        {{"--", NULL}, OA_E_BAD_OPTION, "--users: required (or --no-auth on a loopback address)"},
        {{"--users", NULL}, OA_E_BAD_OPTION, "--users: missing value"},
        {{"--users", "--no-auth", NULL}, OA_E_BAD_OPTION, "--users: missing value"},
        {{"--users", "a", "--users", "b", NULL}, OA_E_BAD_OPTION, "--users: given more than once"},
        {{"--users=a", "--users=a", NULL}, OA_E_BAD_OPTION, "--users: given more than once"},
        {{"--no-auth", "--no-auth", NULL}, OA_E_BAD_OPTION, "--no-auth: given more than once"},
        {{"--no-auth=yes", NULL}, OA_E_BAD_OPTION, "--no-auth: takes no value"},
        {{"--help=1", NULL}, OA_E_BAD_OPTION, "--help: takes no value"},
        {{"--users", "u", "extra", NULL}, OA_E_BAD_OPTION, "unexpected argument \"extra\""},
        {{"passwd", "passwd", NULL}, OA_E_BAD_OPTION, "unexpected argument \"passwd\""},
        {{"--users", "", NULL}, OA_E_BAD_OPTION, "--users: expected a value, got an empty string"},
        {{"--users=", NULL}, OA_E_BAD_OPTION, "--users: expected a value, got an empty string"},
#define LISTEN_BAD(v)                                                                                                \
    {{"--users", "u", "--listen", v, NULL},                                                                          \
     OA_E_BAD_OPTION,                                                                                                \
     "--listen: expected IPV4:PORT or [IPV6]:PORT with a port from 0 to 65535, got \"" v "\""}
        LISTEN_BAD("localhost:9443"),
        LISTEN_BAD("127.0.0.1"),
        LISTEN_BAD("127.0.0.1:"),
        LISTEN_BAD("127.0.0.1:65536"),
        LISTEN_BAD("127.0.0.1:-1"),
        LISTEN_BAD("127.0.0.1:80x"),
        LISTEN_BAD("127.1:80"),
        LISTEN_BAD("256.0.0.1:80"),
        LISTEN_BAD(":80"),
        LISTEN_BAD("::1:9443"),
        LISTEN_BAD("[::1]9443"),
        LISTEN_BAD("[::1]:"),
        LISTEN_BAD("[::1:80"),
        LISTEN_BAD("[127.0.0.1]:80"),
        LISTEN_BAD("[fe80::1%eth0]:80"),
#define SCALE_BAD(v)                                                                                                 \
    {{"--users", "u", "--time-scale", v, NULL},                                                                      \
     OA_E_BAD_OPTION,                                                                                                \
     "--time-scale: expected a number from 0.0001 to 1000, got \"" v "\""}
        SCALE_BAD("abc"),
        SCALE_BAD("0"),
        SCALE_BAD("0.00009"),
        SCALE_BAD("1000.5"),
        SCALE_BAD("-1"),
        SCALE_BAD("nan"),
        SCALE_BAD("inf"),
        SCALE_BAD(" 1"),
        SCALE_BAD("1x"),
        SCALE_BAD("1e999"),
#define CONN_BAD(v)                                                                                                  \
    {{"--users", "u", "--max-connections", v, NULL},                                                                 \
     OA_E_BAD_OPTION,                                                                                                \
     "--max-connections: expected an integer from 1 to 65536, got \"" v "\""}
        CONN_BAD("0"),
        CONN_BAD("65537"),
        CONN_BAD("-1"),
        CONN_BAD("+5"),
        CONN_BAD("1.5"),
        CONN_BAD("abc"),
        CONN_BAD("99999999999999999999"),
        {{"--users", "u", "--log-format", "xml", NULL},
         OA_E_BAD_OPTION,
         "--log-format: expected text or json, got \"xml\""},
        {{"--users", "u", "--log-format", "TEXT", NULL},
         OA_E_BAD_OPTION,
         "--log-format: expected text or json, got \"TEXT\""},
        {{"--users", "u", "--log-level", "verbose", NULL},
         OA_E_BAD_OPTION,
         "--log-level: expected debug, info, warn or error, got \"verbose\""},
        {{"--users", "u", "--tls-cert", "c.pem", NULL}, OA_E_BAD_OPTION, "--tls-cert: given without --tls-key"},
        {{"--users", "u", "--tls-key", "k.pem", NULL}, OA_E_BAD_OPTION, "--tls-key: given without --tls-cert"},
        {{"--no-auth", "--listen", "0.0.0.0:9443", NULL},
         OA_E_BAD_OPTION,
         "--no-auth: refused on 0.0.0.0, a non-loopback address"},
        {{"--no-auth", "--listen", "[::]:9443", NULL},
         OA_E_BAD_OPTION,
         "--no-auth: refused on ::, a non-loopback address"},
        {{"--listen=10.0.0.1:80", "--no-auth", NULL},
         OA_E_BAD_OPTION,
         "--no-auth: refused on 10.0.0.1, a non-loopback address"},
        {{"--no-auth", "--users", "u", NULL}, OA_E_BAD_OPTION, "--no-auth: cannot be combined with --users"},
        {{NULL}, OA_E_BAD_OPTION, "--users: required (or --no-auth on a loopback address)"},
        {{"--listen", "127.0.0.1:1", NULL},
         OA_E_BAD_OPTION,
         "--users: required (or --no-auth on a loopback address)"},
        {{"--users", "u", "--responder-url", "https://ocsp.example.com", NULL},
         OA_E_BAD_OPTION,
         "--responder-url: expected an http:// URL, got \"https://ocsp.example.com\""},
        {{"--users", "u", "--responder-url", "ocsp.example.com", NULL},
         OA_E_BAD_OPTION,
         "--responder-url: expected an http:// URL, got \"ocsp.example.com\""},
        {{"--users", "u", "--responder-url=http://", NULL},
         OA_E_BAD_OPTION,
         "--responder-url: expected an http:// URL, got \"http://\""},
        {{"--users", "u", "--node-id", "node a", NULL},
         OA_E_BAD_OPTION,
         "--node-id: expected up to 255 printable characters without spaces, got \"node a\""},
        {{"--config", "/nonexistent/ocsp-agent.json", NULL},
         OA_E_BAD_FILE,
         "config file /nonexistent/ocsp-agent.json: cannot be read: no such file or directory"},
        {{"--config", NULL}, OA_E_BAD_OPTION, "--config: missing value"},
        /* Config files: the file and the key are named. */
#define CONFIG_BAD(file, text) {{"--config", "@/" file, NULL}, OA_E_BAD_FILE, "config file @/" file ": " text}
        CONFIG_BAD("invalid_time_scale_string.json", "\"time_scale\": expected a number"),
        /* A bad value in the file is an error even when the command line gives that option too. */
        {{"--config", "@/invalid_time_scale_string.json", "--time-scale", "1", "--users", "u", NULL},
         OA_E_BAD_FILE,
         "config file @/invalid_time_scale_string.json: \"time_scale\": expected a number"},
        CONFIG_BAD("invalid_time_scale_range.json",
                   "\"time_scale\": expected a number from 0.0001 to 1000, got 5000"),
        CONFIG_BAD("invalid_max_connections_real.json", "\"max_connections\": expected an integer"),
        CONFIG_BAD("invalid_no_auth_string.json", "\"no_auth\": expected true or false"),
        CONFIG_BAD("invalid_listen_number.json", "\"listen\": expected a string"),
        CONFIG_BAD("invalid_users_null.json", "\"users\": expected a string"),
        CONFIG_BAD("invalid_listen_name.json",
                   "\"listen\": expected IPV4:PORT or [IPV6]:PORT with a port from 0 to 65535, got \"localhost:9443\""),
        CONFIG_BAD("invalid_log_level.json", "\"log_level\": expected debug, info, warn or error, got \"verbose\""),
        CONFIG_BAD("invalid_unknown_key.json", "\"data-dir\": unknown key"),
        CONFIG_BAD("invalid_config_key.json", "\"config\": unknown key"),
        CONFIG_BAD("invalid_not_object.json", "expected one JSON object"),
        /* The rules across options apply to values from the file too. */
        {{"--config", "@/no_auth.json", "--users", "u", NULL},
         OA_E_BAD_OPTION,
         "--no-auth: cannot be combined with --users"},
        {{"--config", "@/no_auth.json", "--listen", "0.0.0.0:9000", NULL},
         OA_E_BAD_OPTION,
         "--no-auth: refused on 0.0.0.0, a non-loopback address"},
    };
    char want[800], *at;
    oa_options_t o;
    oa_error_t err;
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        oa_error_clear(&err);
        if (parse(cases[i].args, &o, &err) != -1)
            fail_msg("case %zu (%s ...) accepted", i, cases[i].args[0] ? cases[i].args[0] : "(none)");
        oa_options_free(&o);
        at = strstr(cases[i].text, "@/");
        if (at != NULL)
            snprintf(want, sizeof(want), "%.*s%s/%s", (int)(at - cases[i].text), cases[i].text, config_dir, at + 2);
        else
            snprintf(want, sizeof(want), "%s", cases[i].text);
        if (err.code != cases[i].code || strcmp(err.text, want) != 0)
            fail_msg("case %zu: got code %d \"%s\", want code %d \"%s\"", i, err.code, err.text, cases[i].code, want);
    }
}

static void test_config_not_json(void **state)
{
    const char *args[] = {"--config", "@/invalid_not_json.json", NULL};
    char prefix[600];
    oa_options_t o;
    oa_error_t err;

    (void)state;
    assert_int_equal(parse(args, &o, &err), -1);
    oa_options_free(&o);
    assert_int_equal(err.code, OA_E_BAD_FILE);
    /* The parser's own words follow the position; only the stable part is compared. */
    snprintf(prefix, sizeof(prefix), "config file %s/invalid_not_json.json: not valid JSON at line 1, column",
             config_dir);
    assert_int_equal(strncmp(err.text, prefix, strlen(prefix)), 0);
}

static void test_split_listen(void **state)
{
    static const struct {
        const char *in;
        int ok;
        const char *host;
        int port;
    } cases[] = {
        {"127.0.0.1:9443", 1, "127.0.0.1", 9443},
        {"0.0.0.0:0", 1, "0.0.0.0", 0},
        {"10.1.2.3:65535", 1, "10.1.2.3", 65535},
        {"[::1]:443", 1, "::1", 443},
        {"[::]:80", 1, "::", 80},
        {"[2001:db8::17]:8443", 1, "2001:db8::17", 8443},
        {"[::ffff:127.0.0.1]:1", 1, "::ffff:127.0.0.1", 1},
        {"127.0.0.1", 0, NULL, 0},
        {"127.0.0.1:65536", 0, NULL, 0},
        {"127.0.0.1:123456", 0, NULL, 0},
        {"127.0.0.1: 80", 0, NULL, 0},
        {"localhost:80", 0, NULL, 0},
        {"::1:80", 0, NULL, 0},
        {"[::1]", 0, NULL, 0},
        {"[]:80", 0, NULL, 0},
        {"[::1]:80:", 0, NULL, 0},
        {"", 0, NULL, 0},
        {NULL, 0, NULL, 0},
    };
    char host[64], tiny[4];
    int port;
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        strcpy(host, "untouched");
        port = -7;
        if (!cases[i].ok) {
            if (oa_options_split_listen(cases[i].in, host, sizeof(host), &port) != -1)
                fail_msg("accepted \"%s\"", cases[i].in);
            assert_string_equal(host, "untouched");
            assert_int_equal(port, -7);
            continue;
        }
        assert_int_equal(oa_options_split_listen(cases[i].in, host, sizeof(host), &port), 0);
        assert_string_equal(host, cases[i].host);
        assert_int_equal(port, cases[i].port);
    }
    /* A host buffer too small is a failure, not a truncation. */
    assert_int_equal(oa_options_split_listen("127.0.0.1:80", tiny, sizeof(tiny), &port), -1);
}

static void test_is_loopback(void **state)
{
    static const struct {
        const char *host;
        int loopback;
    } cases[] = {
        {"127.0.0.1", 1}, {"127.5.5.5", 1}, {"127.255.255.255", 1},
        {"::1", 1},       {"[::1]", 1},     {"::ffff:127.0.0.1", 1},
        {"0.0.0.0", 0},   {"10.0.0.1", 0},  {"128.0.0.1", 0},
        {"::", 0},        {"[::]", 0},      {"::2", 0},
        {"localhost", 0}, {"", 0},          {NULL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        if (oa_options_host_is_loopback(cases[i].host) != cases[i].loopback)
            fail_msg("%s: want %d", cases[i].host ? cases[i].host : "NULL", cases[i].loopback);
    }
}

static void test_usage(void **state)
{
    static const char *const must[] = {
        "--config FILE",
        "--listen ADDR:PORT",
        "--tls-cert PEM",
        "--tls-key PEM",
        "--users FILE",
        "--no-auth",
        "--cert PEM",
        "--issuer PEM",
        "--responder-url URL",
        "--data-dir DIR",
        "--node-id NAME",
        "--log-format",
        "--log-level",
        "--time-scale F",
        "--max-connections N",
        "--cluster-lease MS",
        "--version",
        "--help",
        "passwd",
        "default 127.0.0.1:9443",
        "default /var/lib/ocsp-agent",
        "default text",
        "default info",
        "default 1)",
        "default 1024",
        "default: the host name",
    };
    const char *u = oa_options_usage();
    size_t i;

    (void)state;
    assert_non_null(u);
    assert_int_equal(u[strlen(u) - 1], '\n');
    for (i = 0; i < OA_ARRAY_SIZE(must); i++) {
        if (strstr(u, must[i]) == NULL)
            fail_msg("usage text lacks \"%s\"", must[i]);
    }
}

/* Cluster mode's options: parsed values, an empty capability list, and the refusals, each one exact sentence. */
static void test_cluster_options(void **state)
{
    static const struct {
        const char *args[10];
        const char *text; /* NULL: accepted */
    } cases[] = {
        {{"--users", "u", "--cluster", "redis://127.0.0.1:6380/2", "--cluster-password", "pw", "--capabilities", "",
          NULL},
         NULL},
        {{"--users", "u", "--cluster", "redis://127.0.0.1:6380/2", "--capabilities=ocsp,x", NULL}, NULL},
        {{"--users", "u", "--cluster", "http://h", NULL},
         "--cluster: expected redis[s]://HOST:PORT[/DB], got \"http://h\""},
        {{"--users", "u", "--cluster", "redis://h:6379/99", NULL},
         "--cluster: expected a database number from 0 to 15 in \"redis://h:6379/99\""},
        {{"--users", "u", "--cluster", "redis://h", "--capabilities", "OCSP", NULL},
         "--capabilities: expected names of a-z, 0-9, _ and - separated by commas, got \"OCSP\""},
        {{"--users", "u", "--capabilities", "ocsp", NULL}, "--capabilities: needs --cluster"},
        {{"--users", "u", "--cluster-password", "pw", NULL}, "--cluster-password: needs --cluster"},
        {{"--users", "u", "--cluster-tls", NULL}, "--cluster-tls: needs --cluster"},
        {{"--users", "u", "--cluster", "rediss:h", NULL},
         "--cluster: expected redis[s]://HOST:PORT[/DB], got \"rediss:h\""},
    };
    oa_options_t o;
    oa_error_t err;
    size_t i;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        int rc = parse(cases[i].args, &o, &err);

        if (cases[i].text == NULL) {
            if (rc != 0)
                fail_msg("case %zu: %s", i, err.text);
        } else {
            assert_int_equal(rc, -1);
            assert_int_equal(err.code, OA_E_BAD_OPTION);
            assert_string_equal(err.text, cases[i].text);
        }
        if (i == 0) {
            assert_string_equal(o.cluster_url, "redis://127.0.0.1:6380/2");
            assert_string_equal(o.cluster_password, "pw");
            assert_string_equal(o.capabilities, "");
            assert_false(o.cluster_tls);
        } else if (i == 1) {
            assert_string_equal(o.capabilities, "ocsp,x");
            assert_null(o.cluster_password);
        }
        oa_options_free(&o);
    }
}

/*
 * The cluster tests write a --config file per case: "%s" in their arguments and expected sentences stands for the
 * file's path. Parses the case's args (up to nargs, NULL-terminated) with "%s" replaced by path, after writing file
 * to path when it is not NULL. Returns what the parse returned.
 */
static int parse_with_file(const char *const *case_args, size_t nargs, const char *file, const char *path,
                           oa_options_t *o, oa_error_t *err)
{
    const char *args[MAX_ARGS + 1];
    size_t j;
    FILE *f;

    assert_true(nargs <= MAX_ARGS);
    for (j = 0; j < nargs; j++)
        args[j] = case_args[j] != NULL && strcmp(case_args[j], "%s") == 0 ? path : case_args[j];
    args[nargs] = NULL;
    if (file != NULL) {
        f = fopen(path, "w");
        assert_non_null(f);
        fputs(file, f);
        fclose(f);
    }
    oa_error_clear(err);
    return parse(args, o, err);
}

/* Fails case i unless its parse returned -1 with code and text ("%s" in text standing for path). */
static void assert_refused_with_file(size_t i, int rc, const oa_error_t *err, oa_errcode_t code, const char *text,
                                     const char *path)
{
    const char *at = strstr(text, "%s");
    char want[256];

    if (at != NULL)
        snprintf(want, sizeof(want), "%.*s%s%s", (int)(at - text), text, path, at + 2);
    else
        snprintf(want, sizeof(want), "%s", text);
    if (rc != -1 || err->code != code || strcmp(err->text, want) != 0)
        fail_msg("case %zu: got %d, code %d \"%s\"; want code %d \"%s\"", i, rc, err->code, err->text, code, want);
}

/* Fails unless the --help text holds each of the n strings of must. */
static void assert_usage_has(const char *const *must, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strstr(oa_options_usage(), must[i]) == NULL)
            fail_msg("usage text lacks \"%s\"", must[i]);
}

/* Runs case i of a table with a --config file: parses it (parse_with_file) and, when text is not NULL, asserts that
 * it was refused with code and text. Returns 1 when it was accepted, as it must be when text is NULL (o then holds
 * the values to check), 0 when it was refused as expected. o must be freed either way. */
static int run_file_case(size_t i, const char *const *args, size_t nargs, const char *file, oa_errcode_t code,
                         const char *text, const char *path, oa_options_t *o)
{
    oa_error_t err;
    int rc = parse_with_file(args, nargs, file, path, o, &err);

    if (text != NULL) {
        assert_refused_with_file(i, rc, &err, code, text, path);
        return 0;
    }
    if (rc != 0)
        fail_msg("case %zu: %s", i, err.text);
    return 1;
}

/* --cluster-lease: on the command line and in the file, its range, its type in the file, and that it needs
 * --cluster. Config files are written to a temporary directory, "%s" in args standing for it. */
static void test_cluster_lease(void **state)
{
    static const struct {
        const char *args[8];
        const char *file; /* the --config file's text, or NULL */
        int lease;        /* the parsed value when accepted */
        oa_errcode_t code;
        const char *text; /* NULL: accepted; "%s" stands for the config file's path */
    } cases[] = {
        {{"--users", "u", "--cluster", "redis://h", NULL}, NULL, 0, OA_OK, NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease", "1500", NULL}, NULL, 1500, OA_OK, NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease=1000", NULL}, NULL, 1000, OA_OK, NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease", "60000", NULL}, NULL, 60000, OA_OK, NULL},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_lease\": 9000}",
         9000,
         OA_OK,
         NULL},
        /* The command line wins over the file. */
        {{"--users", "u", "--config", "%s", "--cluster-lease", "4000", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_lease\": 9000}",
         4000,
         OA_OK,
         NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease", "999", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: expected milliseconds from 1000 to 60000, got \"999\""},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease", "60001", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: expected milliseconds from 1000 to 60000, got \"60001\""},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease", "3s", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: expected milliseconds from 1000 to 60000, got \"3s\""},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease=-1500", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: expected milliseconds from 1000 to 60000, got \"-1500\""},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease=", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: expected a value, got an empty string"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-lease", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: missing value"},
        {{"--users", "u", "--cluster-lease", "1500", NULL},
         NULL,
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: needs --cluster"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_lease\": \"1500\"}",
         0,
         OA_E_BAD_FILE,
         "config file %s: \"cluster_lease\": expected an integer"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_lease\": 1500.5}",
         0,
         OA_E_BAD_FILE,
         "config file %s: \"cluster_lease\": expected an integer"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_lease\": 500}",
         0,
         OA_E_BAD_FILE,
         "config file %s: \"cluster_lease\": expected milliseconds from 1000 to 60000, got 500"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster_lease\": 1500}",
         0,
         OA_E_BAD_OPTION,
         "--cluster-lease: needs --cluster"},
    };
    char dir[] = "/tmp/oa-options-XXXXXX", path[64];
    oa_options_t o;
    size_t i;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/lease.json", dir);
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        if (run_file_case(i, cases[i].args, OA_ARRAY_SIZE(cases[i].args), cases[i].file, cases[i].code,
                          cases[i].text, path, &o)) {
            assert_int_equal(o.cluster_lease_ms, cases[i].lease);
        }
        oa_options_free(&o);
    }
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

/* The TLS options of cluster mode: on the command line and in the file, rediss:// as --cluster-tls, and every
 * refusal, each one exact sentence. The files are not read here (the agent loads them at start-up). "%s" stands for
 * the config file's path. */
static void test_cluster_tls_options(void **state)
{
    static const struct {
        const char *args[12];
        const char *file; /* the --config file's text, or NULL */
        bool tls;         /* the parsed values when accepted */
        const char *ca, *cert, *key;
        oa_errcode_t code;
        const char *text; /* NULL: accepted */
    } cases[] = {
        {{"--users", "u", "--cluster", "redis://h", NULL}, NULL, false, NULL, NULL, NULL, OA_OK, NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-tls", NULL}, NULL, true, NULL, NULL, NULL, OA_OK, NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-tls", "--cluster-ca", "ca.pem", "--cluster-cert",
          "c.pem", "--cluster-key=c.key", NULL},
         NULL, true, "ca.pem", "c.pem", "c.key", OA_OK, NULL},
        /* rediss:// turns TLS on by itself. */
        {{"--users", "u", "--cluster", "rediss://h:6380/1", "--cluster-ca", "ca.pem", NULL},
         NULL, true, "ca.pem", NULL, NULL, OA_OK, NULL},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_tls\": true, \"cluster_ca\": \"f-ca.pem\", "
         "\"cluster_cert\": \"f.pem\", \"cluster_key\": \"f.key\"}",
         true, "f-ca.pem", "f.pem", "f.key", OA_OK, NULL},
        /* The command line wins over the file. */
        {{"--users", "u", "--config", "%s", "--cluster-ca", "cli-ca.pem", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_tls\": true, \"cluster_ca\": \"f-ca.pem\"}",
         true, "cli-ca.pem", NULL, NULL, OA_OK, NULL},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-ca", "ca.pem", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-ca: needs --cluster-tls"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-cert", "c.pem", "--cluster-key", "c.key", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-cert: needs --cluster-tls"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-key", "c.key", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-key: needs --cluster-tls"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-tls", "--cluster-key", "c.key", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-key: needs --cluster-cert"},
        {{"--users", "u", "--cluster", "rediss://h", "--cluster-cert", "c.pem", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-cert: needs --cluster-key"},
        {{"--users", "u", "--cluster-ca", "ca.pem", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-ca: needs --cluster-tls"},
        {{"--users", "u", "--cluster-tls", "--cluster-ca", "ca.pem", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-tls: needs --cluster"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-tls", "--cluster-ca=", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-ca: expected a value, got an empty string"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-tls", "--cluster-cert", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-cert: missing value"},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-tls=yes", NULL},
         NULL, false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-tls: takes no value"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_tls\": \"yes\"}",
         false, NULL, NULL, NULL, OA_E_BAD_FILE, "config file %s: \"cluster_tls\": expected true or false"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_tls\": true, \"cluster_key\": 5}",
         false, NULL, NULL, NULL, OA_E_BAD_FILE, "config file %s: \"cluster_key\": expected a string"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_ca\": \"ca.pem\"}",
         false, NULL, NULL, NULL, OA_E_BAD_OPTION, "--cluster-ca: needs --cluster-tls"},
    };
    static const char *const usage_must[] = {"--cluster-tls", "--cluster-ca PEM", "--cluster-cert PEM",
                                             "--cluster-key PEM", "rediss://", "trust store"};
    char dir[] = "/tmp/oa-options-XXXXXX", path[64];
    oa_options_t o;
    size_t i;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tls.json", dir);
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        if (run_file_case(i, cases[i].args, OA_ARRAY_SIZE(cases[i].args), cases[i].file, cases[i].code,
                          cases[i].text, path, &o)) {
            if (o.cluster_tls != cases[i].tls)
                fail_msg("case %zu: cluster_tls is %d", i, (int)o.cluster_tls);
            assert_str_or_null("cluster_ca", o.cluster_ca, cases[i].ca);
            assert_str_or_null("cluster_cert", o.cluster_cert, cases[i].cert);
            assert_str_or_null("cluster_key", o.cluster_key, cases[i].key);
        }
        oa_options_free(&o);
    }
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
    assert_usage_has(usage_must, OA_ARRAY_SIZE(usage_must));
}

/* An etcd:// cluster: its URL, --cluster-user with --cluster-password, the TLS options, the same in the file, and
 * every refusal, each one exact sentence. "%s" stands for the config file's path. */
static void test_cluster_etcd_options(void **state)
{
    static const struct {
        const char *args[14];
        const char *file; /* the --config file's text, or NULL */
        const char *url, *user, *password; /* the parsed values when accepted */
        bool tls;
        oa_errcode_t code;
        const char *text; /* NULL: accepted */
    } cases[] = {
        {{"--users", "u", "--cluster", "etcd://127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379", NULL},
         NULL, "etcd://127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379", NULL, NULL, false, OA_OK, NULL},
        {{"--users", "u", "--cluster", "etcd://e1.example,e2.example", "--cluster-user", "agent",
          "--cluster-password", "pw", NULL},
         NULL, "etcd://e1.example,e2.example", "agent", "pw", false, OA_OK, NULL},
        {{"--users", "u", "--cluster=etcd://[::1]:2379", "--cluster-user=agent", "--cluster-password=pw",
          "--cluster-tls", "--cluster-ca", "ca.pem", "--cluster-cert", "c.pem", "--cluster-key", "c.key", NULL},
         NULL, "etcd://[::1]:2379", "agent", "pw", true, OA_OK, NULL},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"etcd://a:2379,b:2379,c:2379\", \"cluster_user\": \"agent\", \"cluster_password\": \"pw\", "
         "\"cluster_tls\": true}",
         "etcd://a:2379,b:2379,c:2379", "agent", "pw", true, OA_OK, NULL},
        /* The command line wins over the file. */
        {{"--users", "u", "--config", "%s", "--cluster-user", "cli", NULL},
         "{\"cluster\": \"etcd://a\", \"cluster_user\": \"agent\", \"cluster_password\": \"pw\"}",
         "etcd://a", "cli", "pw", false, OA_OK, NULL},
        {{"--users", "u", "--cluster", "etcd://a,a", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster: the etcd member a:2379 is listed twice"},
        {{"--users", "u", "--cluster", "etcd://a:2379/0", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster: an etcd URL has no path or database part, got \"a:2379/0\""},
        {{"--users", "u", "--cluster", "etcd://agent:pw@a", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster: credentials in the URL are not accepted; use --cluster-user and --cluster-password"},
        {{"--users", "u", "--cluster", "etcd://a,,b", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster: expected etcd://HOST[:PORT][,HOST[:PORT]...] without an empty member, got \"etcd://a,,b\""},
        {{"--users", "u", "--cluster", "etcd://a:99999", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster: expected a port from 1 to 65535 in \"a:99999\""},
        {{"--users", "u", "--cluster", "redis://h", "--cluster-user", "agent", "--cluster-password", "pw", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster-user: only for an etcd:// cluster (Redis AUTH takes a password alone)"},
        {{"--users", "u", "--cluster", "rediss://h", "--cluster-user", "agent", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster-user: only for an etcd:// cluster (Redis AUTH takes a password alone)"},
        {{"--users", "u", "--cluster", "etcd://a", "--cluster-user", "agent", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster-user: needs --cluster-password"},
        {{"--users", "u", "--cluster", "etcd://a", "--cluster-password", "pw", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster-password: needs --cluster-user with an etcd:// cluster"},
        {{"--users", "u", "--cluster-user", "agent", "--cluster-password", "pw", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster-user: needs --cluster"},
        {{"--users", "u", "--cluster", "etcd://a", "--cluster-user=", "--cluster-password", "pw", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster-user: expected a value, got an empty string"},
        {{"--users", "u", "--cluster", "etcd://a", "--cluster-user", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster-user: missing value"},
        {{"--users", "u", "--cluster", "etcd://a", "--cluster-ca", "ca.pem", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster-ca: needs --cluster-tls"},
        {{"--users", "u", "--cluster", "etcd://a", "--cluster-tls", "--cluster-cert", "c.pem", NULL},
         NULL, NULL, NULL, NULL, false, OA_E_BAD_OPTION, "--cluster-cert: needs --cluster-key"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"etcd://a\", \"cluster_user\": 7}",
         NULL, NULL, NULL, false, OA_E_BAD_FILE, "config file %s: \"cluster_user\": expected a string"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"etcd://a,b,a\"}",
         NULL, NULL, NULL, false, OA_E_BAD_FILE,
         "config file %s: \"cluster\": the etcd member a:2379 is listed twice"},
        {{"--users", "u", "--config", "%s", NULL},
         "{\"cluster\": \"redis://h\", \"cluster_user\": \"agent\", \"cluster_password\": \"pw\"}",
         NULL, NULL, NULL, false, OA_E_BAD_OPTION,
         "--cluster-user: only for an etcd:// cluster (Redis AUTH takes a password alone)"},
    };
    static const char *const usage_must[] = {"etcd://HOST:PORT[,HOST:PORT...]", "--cluster-user U",
                                             "each member's host as listed"};
    char dir[] = "/tmp/oa-options-XXXXXX", path[64];
    oa_options_t o;
    size_t i;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/etcd.json", dir);
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        if (run_file_case(i, cases[i].args, OA_ARRAY_SIZE(cases[i].args), cases[i].file, cases[i].code,
                          cases[i].text, path, &o)) {
            assert_str_or_null("cluster_url", o.cluster_url, cases[i].url);
            assert_str_or_null("cluster_user", o.cluster_user, cases[i].user);
            assert_str_or_null("cluster_password", o.cluster_password, cases[i].password);
            if (o.cluster_tls != cases[i].tls)
                fail_msg("case %zu: cluster_tls is %d", i, (int)o.cluster_tls);
        }
        oa_options_free(&o);
    }
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
    assert_usage_has(usage_must, OA_ARRAY_SIZE(usage_must));
}

/* rediss:// is the TLS form of the cluster URL; the parts are read the same way. */
static void test_cluster_url_tls(void **state)
{
    char host[OA_CLUSTER_HOST_MAX];
    oa_error_t err;
    int port = 0, db = -1;

    (void)state;
    assert_int_equal(oa_cluster_url_parse("rediss://store.example:6380/3", host, &port, &db, &err), 0);
    assert_string_equal(host, "store.example");
    assert_int_equal(port, 6380);
    assert_int_equal(db, 3);
    assert_int_equal(oa_cluster_url_is_tls("rediss://store.example:6380/3"), 1);
    assert_int_equal(oa_cluster_url_parse("redis://localhost", host, &port, &db, &err), 0);
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 6379);
    assert_int_equal(db, 0);
    assert_int_equal(oa_cluster_url_is_tls("redis://localhost"), 0);
    assert_int_equal(oa_cluster_url_is_tls("REDISS://h"), 0);
    assert_int_equal(oa_cluster_url_is_tls(NULL), 0);
    assert_int_equal(oa_cluster_url_parse("redisss://h", host, &port, &db, &err), -1);
    assert_string_equal(err.text, "--cluster: expected redis[s]://HOST:PORT[/DB], got \"redisss://h\"");
}

/* --haproxy-socket repeats in order; the file takes a string or an array; the command line's list replaces the
 * file's; --haproxy-crt and --staple-hook are plain paths. */
static void test_delivery_options(void **state)
{
    static const char *const one[] = {"--users", "u", "--haproxy-socket", "/run/haproxy/admin.sock", NULL};
    static const char *const three[] = {"--users", "u", "--haproxy-socket", "/a.sock", "--haproxy-socket=127.0.0.1:9",
                                        "--haproxy-socket", "[::1]:10", "--haproxy-crt", "/etc/haproxy/p.pem",
                                        "--staple-hook", "/bin/true", NULL};
    static const char *const file[] = {"--config", "@/delivery.json", NULL};
    static const char *const file_one[] = {"--config", "@/delivery_one_socket.json", NULL};
    static const char *const file_cli[] = {"--config", "@/delivery.json", "--haproxy-socket", "/x.sock", NULL};
    static const char *const none[] = {"--users", "u", NULL};
    static const struct {
        const char *const *args;
        int n;
        const char *sockets[3];
        const char *crt;
        const char *hook;
    } cases[] = {
        {none, 0, {NULL}, NULL, NULL},
        {one, 1, {"/run/haproxy/admin.sock"}, NULL, NULL},
        {three, 3, {"/a.sock", "127.0.0.1:9", "[::1]:10"}, "/etc/haproxy/p.pem", "/bin/true"},
        {file, 2, {"/run/haproxy/admin.sock", "127.0.0.1:9999"}, "/etc/haproxy/certs/proxy.pem",
         "/usr/local/bin/staple-nginx"},
        {file_one, 1, {"/run/haproxy/admin.sock"}, NULL, NULL},
        {file_cli, 1, {"/x.sock"}, "/etc/haproxy/certs/proxy.pem", "/usr/local/bin/staple-nginx"},
    };
    oa_options_t o;
    oa_error_t err;
    size_t i;
    int k;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        if (parse(cases[i].args, &o, &err) != 0)
            fail_msg("case %zu refused: %s", i, err.text);
        assert_int_equal(o.n_haproxy_sockets, cases[i].n);
        for (k = 0; k < cases[i].n; k++)
            assert_string_equal(o.haproxy_sockets[k], cases[i].sockets[k]);
        assert_str_or_null("haproxy_crt", o.haproxy_crt, cases[i].crt);
        assert_str_or_null("staple_hook", o.staple_hook, cases[i].hook);
        oa_options_free(&o);
    }
}

static void test_delivery_options_bad(void **state)
{
    char long_path[200], many_args[OA_HAPROXY_SOCKETS_MAX + 1][16], want[600];
    const char *many[2 * (OA_HAPROXY_SOCKETS_MAX + 1) + 3];
    static const struct {
        const char *args[8];
        const char *text;
    } cases[] = {
        {{"--users", "u", "--haproxy-socket", "10.0.0.1:9999", NULL},
         "--haproxy-socket: refused \"10.0.0.1:9999\": a TCP runtime socket must be on loopback"},
        {{"--users", "u", "--haproxy-socket", "[::]:9999", NULL},
         "--haproxy-socket: refused \"[::]:9999\": a TCP runtime socket must be on loopback"},
        {{"--users", "u", "--haproxy-socket", "admin.sock", NULL},
         "--haproxy-socket: expected a UNIX socket path or ADDR:PORT, got \"admin.sock\""},
        {{"--users", "u", "--haproxy-socket", "127.0.0.1:0", NULL},
         "--haproxy-socket: expected a UNIX socket path or ADDR:PORT, got \"127.0.0.1:0\""},
        {{"--users", "u", "--haproxy-socket", "", NULL}, "--haproxy-socket: expected a value, got an empty string"},
        {{"--users", "u", "--haproxy-socket", NULL}, "--haproxy-socket: missing value"},
        {{"--users", "u", "--haproxy-crt", "a", "--haproxy-crt", "b", NULL}, "--haproxy-crt: given more than once"},
        {{"--users", "u", "--staple-hook", "", NULL}, "--staple-hook: expected a value, got an empty string"},
        {{"--config", "@/invalid_haproxy_socket_type.json", NULL},
         "config file @/invalid_haproxy_socket_type.json: \"haproxy_socket\": expected an array of strings"},
        {{"--config", "@/invalid_haproxy_socket_remote.json", NULL},
         "config file @/invalid_haproxy_socket_remote.json: \"haproxy_socket\": refused \"10.1.2.3:9999\": a TCP "
         "runtime socket must be on loopback"},
    };
    oa_options_t o;
    oa_error_t err;
    const char *at;
    size_t i;
    int n = 0, k;

    (void)state;
    for (i = 0; i < OA_ARRAY_SIZE(cases); i++) {
        assert_int_equal(parse(cases[i].args, &o, &err), -1);
        oa_options_free(&o);
        at = strstr(cases[i].text, "@/");
        if (at != NULL)
            snprintf(want, sizeof(want), "%.*s%s/%s", (int)(at - cases[i].text), cases[i].text, config_dir, at + 2);
        else
            snprintf(want, sizeof(want), "%s", cases[i].text);
        if (strcmp(err.text, want) != 0)
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, err.text, want);
    }

    /* A path that does not fit a UNIX socket address. */
    memset(long_path, 'a', sizeof(long_path) - 1);
    long_path[0] = '/';
    long_path[sizeof(long_path) - 1] = '\0';
    {
        const char *args[] = {"--users", "u", "--haproxy-socket", long_path, NULL};

        assert_int_equal(parse(args, &o, &err), -1);
        oa_options_free(&o);
        assert_string_equal(err.text, "--haproxy-socket: the UNIX socket path is longer than 107 bytes");
    }

    /* One socket more than the limit. */
    many[n++] = "--users";
    many[n++] = "u";
    for (k = 0; k <= OA_HAPROXY_SOCKETS_MAX; k++) {
        snprintf(many_args[k], sizeof(many_args[k]), "/s%d.sock", k);
        many[n++] = "--haproxy-socket";
        many[n++] = many_args[k];
    }
    many[n] = NULL;
    assert_int_equal(parse(many, &o, &err), -1);
    oa_options_free(&o);
    assert_string_equal(err.text, "--haproxy-socket: at most 16 sockets");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_command_lines), cmocka_unit_test(test_bad_command_lines),
        cmocka_unit_test(test_config_not_json),    cmocka_unit_test(test_split_listen),
        cmocka_unit_test(test_is_loopback),        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_cluster_options),
        cmocka_unit_test(test_cluster_lease),
        cmocka_unit_test(test_cluster_tls_options),
        cmocka_unit_test(test_cluster_etcd_options),
        cmocka_unit_test(test_cluster_url_tls),
        cmocka_unit_test(test_delivery_options),
        cmocka_unit_test(test_delivery_options_bad),
    };
    const char *data = getenv("OA_TEST_DATA");

    if (data == NULL) {
        fprintf(stderr, "OA_TEST_DATA is not set\n");
        return 1;
    }
    snprintf(config_dir, sizeof(config_dir), "%s/config", data);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
