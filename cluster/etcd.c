/*
 * The etcd client: members, the calls and how they move between members, authentication, and the JSON of the v3
 * gateway; see oa_etcd.h for the contract. One connection is etcd_conn.c, the watch etcd_watch.c.
 *
 * A call holds one timer. It is armed for the end of the current attempt (the attempt timeout, or the call's
 * deadline when that comes first), or for the pause between two rounds over the members. The callback fires from
 * that timer's close callback, so never inside the function that started the call, and the call's memory goes
 * right after it.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_internal.h"

#define DEFAULT_TIMEOUT_MS         5000u
#define DEFAULT_ATTEMPT_TIMEOUT_MS 1500u
#define DEFAULT_MAX_BODY           (16u * 1024u * 1024u)
#define DEFAULT_WATCH_PROBE_MS     2000u
#define ROUND_PAUSE_MS             100u /* grows with each round over the members, up to ROUND_PAUSE_MAX_MS */
#define ROUND_PAUSE_MAX_MS         500u

static const struct {
    const char *path;
    int write; /* sent twice it could act twice: never repeated once it may have reached a member */
} kinds[] = {
    [ETCD_RANGE] = {"/v3/kv/range", 0},        [ETCD_PUT] = {"/v3/kv/put", 1},
    [ETCD_DELETE] = {"/v3/kv/deleterange", 1}, [ETCD_TXN] = {"/v3/kv/txn", 1},
    [ETCD_GRANT] = {"/v3/lease/grant", 0},     [ETCD_KEEPALIVE] = {"/v3/lease/keepalive", 0},
    [ETCD_REVOKE] = {"/v3/lease/revoke", 1},
};

typedef enum phase_e { PH_ATTEMPT, PH_PAUSE, PH_DONE } phase_t;

struct etcd_call_s {
    oa_etcd_t *c;
    etcd_call_t *next;
    uv_timer_t timer;
    etcd_kind_t kind;
    char *body;
    etcd_conn_t *conn;
    size_t member;
    size_t tried; /* members tried in this round */
    unsigned round;
    uint64_t deadline;
    phase_t phase;
    int authing;   /* the exchange in progress is the authentication */
    int reauthed;  /* the call already authenticated again once */
    int skip_auth; /* the member said authentication is not enabled */
    int pinned;    /* one attempt, on one member: no moving on */
    int status;    /* the HTTP status of the answer in progress */
    int too_large;
    oa_buf_t answer;
    oa_etcd_result_t res;
    oa_etcd_kv_t *kvs;
    size_t n_kvs, cap_kvs;
    char why[ETCD_WHY_MAX];
    oa_etcd_cb cb;
    void *data;
};

static void attempt(etcd_call_t *k);
static void finish(etcd_call_t *k, oa_etcd_err_t err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

const char *oa_etcd_err_name(oa_etcd_err_t err)
{
    static const char *const names[] = {"ok",        "unavailable", "unknown_outcome", "compacted", "auth",
                                        "not_found", "protocol",    "other",           "cancelled"};

    return (size_t)err < OA_ARRAY_SIZE(names) ? names[err] : "invalid";
}

/* ---- the client's memory ---- */

static void client_free(oa_etcd_t *c)
{
    size_t i;

    for (i = 0; i < c->n_members; i++)
        free(c->members[i].host);
    free(c->members);
    free(c->user);
    free(c->password);
    free(c->token);
    free(c);
}

static void client_maybe_free(oa_etcd_t *c)
{
    if (!c->closing || !c->closer_closed || c->live > 0)
        return;
    if (c->on_closed != NULL)
        c->on_closed(c, c->closed_data);
    client_free(c);
}

void etcd_client_hold(oa_etcd_t *c)
{
    c->live++;
}

void etcd_client_drop(oa_etcd_t *c)
{
    c->live--;
    client_maybe_free(c);
}

static void on_closer_closed(uv_handle_t *h)
{
    oa_etcd_t *c = oa_container_of(h, oa_etcd_t, closer);

    c->closer_closed = 1;
    client_maybe_free(c);
}

/* ---- options ---- */

static bool host_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
           ch == '.' || ch == '_' || ch == ':';
}

/* "host:port" or "[v6]:port" into m. Returns 0, UV_EINVAL, or UV_ENOMEM. */
static int member_parse(const char *s, etcd_member_t *m)
{
    const char *colon, *host = s, *host_end, *p;
    unsigned long port = 0;

    if (s[0] == '[') {
        host = s + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL || host_end[1] != ':')
            return UV_EINVAL;
        colon = host_end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
            return UV_EINVAL;
        host_end = colon;
    }
    if (host_end == host || (size_t)(host_end - host) > 253 || strlen(s) >= sizeof(m->where))
        return UV_EINVAL;
    for (p = host; p < host_end; p++) {
        if (!host_char_ok(*p) || (*p == ':' && s[0] != '['))
            return UV_EINVAL;
    }
    for (p = colon + 1; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || p - colon > 5)
            return UV_EINVAL;
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port == 0 || port > 65535)
        return UV_EINVAL;
    m->host = strndup(host, (size_t)(host_end - host));
    if (m->host == NULL)
        return UV_ENOMEM;
    snprintf(m->port, sizeof(m->port), "%lu", port);
    snprintf(m->where, sizeof(m->where), "%s", s);
    return 0;
}

int oa_etcd_new(uv_loop_t *loop, const oa_etcd_options_t *o, oa_etcd_t **out, oa_error_t *err)
{
    oa_etcd_t *c;
    char *probe;
    size_t i;
    int rc;

    *out = NULL;
    if (o == NULL || o->n_members == 0 || o->members == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "The etcd cluster has no member.");
    if (o->user != NULL && o->password == NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "The etcd user %.60s has no password.", o->user);
    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->members = calloc(o->n_members, sizeof(*c->members))) == NULL)
        goto nomem;
    c->loop = loop;
    c->n_members = o->n_members;
    for (i = 0; i < o->n_members; i++) {
        rc = o->members[i] != NULL ? member_parse(o->members[i], &c->members[i]) : UV_EINVAL;
        if (rc == UV_ENOMEM)
            goto nomem;
        if (rc != 0) {
            oa_error_set(err, OA_E_BAD_OPTION, "The etcd member \"%.120s\" is not host:port.",
                         o->members[i] != NULL ? o->members[i] : "");
            client_free(c);
            return -1;
        }
    }
    if (o->user != NULL) {
        c->user = strdup(o->user);
        c->password = strdup(o->password);
        if (c->user == NULL || c->password == NULL)
            goto nomem;
        /* jansson refuses text that is not UTF-8: better said now than at the first call. */
        probe = etcd_auth_body(c);
        if (probe == NULL) {
            client_free(c);
            return oa_error_set(err, OA_E_BAD_OPTION, "The etcd user name or password is not valid UTF-8.");
        }
        free(probe);
    }
    c->tls = o->tls;
    c->timeout_ms = o->timeout_ms != 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->attempt_timeout_ms = o->attempt_timeout_ms != 0 ? o->attempt_timeout_ms : DEFAULT_ATTEMPT_TIMEOUT_MS;
    c->max_body = o->max_body != 0 ? o->max_body : DEFAULT_MAX_BODY;
    c->watch_probe_ms = o->watch_probe_ms != 0 ? o->watch_probe_ms : DEFAULT_WATCH_PROBE_MS;
    rc = uv_timer_init(loop, &c->closer);
    if (rc != 0) {
        client_free(c);
        return oa_error_set(err, OA_E_INTERNAL, "The etcd client's timer could not be created (%s).",
                            uv_strerror(rc));
    }
    *out = c;
    return 0;
nomem:
    if (c != NULL)
        client_free(c);
    return oa_error_set(err, OA_E_NOMEM, "Out of memory for the etcd client.");
}

void oa_etcd_close(oa_etcd_t *c, void (*on_closed)(oa_etcd_t *c, void *data), void *data)
{
    if (c == NULL || c->closing)
        return;
    c->closing = 1;
    c->on_closed = on_closed;
    c->closed_data = data;
    while (c->calls != NULL)
        finish(c->calls, OA_ETCD_E_CANCELLED, "The etcd client was closed before the call completed.");
    etcd_watch_cancel_all(c);
    etcd_conn_close_idle(c);
    uv_close((uv_handle_t *)&c->closer, on_closer_closed);
}

/* ---- what etcd's errors mean ---- */

etcd_verdict_t etcd_classify(int grpc_code, const char *message, oa_etcd_err_t *err)
{
    /* The messages come from etcd's rpctypes; the code alone cannot tell "no leader" (not applied, safe anywhere)
     * from "leader changed" (perhaps applied). */
    static const char *const not_applied[] = {"no leader",   "not leader",        "server stopped",
                                              "not capable", "unhealthy cluster", "too many requests"};
    size_t i;

    *err = OA_ETCD_E_OTHER;
    if (message == NULL)
        message = "";
    switch (grpc_code) {
    case 14: /* Unavailable */
        *err = OA_ETCD_E_UNAVAILABLE;
        for (i = 0; i < OA_ARRAY_SIZE(not_applied); i++) {
            if (strstr(message, not_applied[i]) != NULL)
                return ETCD_V_NEXT;
        }
        return ETCD_V_AMBIGUOUS;
    case 4: /* DeadlineExceeded */
    case 1: /* Canceled: the member gave up on the request */
        *err = OA_ETCD_E_UNAVAILABLE;
        return ETCD_V_AMBIGUOUS;
    case 16: /* Unauthenticated */
        *err = OA_ETCD_E_AUTH;
        return strstr(message, "invalid auth token") != NULL ? ETCD_V_TOKEN : ETCD_V_FINAL;
    case 7: /* PermissionDenied */
        *err = OA_ETCD_E_AUTH;
        return ETCD_V_FINAL;
    case 11: /* OutOfRange */
        if (strstr(message, "compacted") != NULL)
            *err = OA_ETCD_E_COMPACTED;
        return ETCD_V_FINAL;
    case 5: /* NotFound */
        *err = OA_ETCD_E_NOT_FOUND;
        return ETCD_V_FINAL;
    case 9: /* FailedPrecondition */
        if (strstr(message, "authentication is not enabled") != NULL)
            return ETCD_V_NO_AUTH;
        return ETCD_V_FINAL;
    case 3: /* InvalidArgument carries the authentication failures */
        if (strstr(message, "authentication failed") != NULL || strstr(message, "user name is empty") != NULL ||
            strstr(message, "user name not found") != NULL)
            *err = OA_ETCD_E_AUTH;
        return ETCD_V_FINAL;
    default:
        return ETCD_V_FINAL;
    }
}

/* ---- requests and authentication ---- */

int etcd_send(oa_etcd_t *c, etcd_conn_t *k, size_t m, int skip_auth, const char *path, const char *extra,
              const char *body, const etcd_conn_handler_t *h, void *ctx, int *authing)
{
    oa_buf_t req = {0};
    char *auth = NULL;
    int rc = UV_ENOMEM;

    *authing = c->user != NULL && c->token == NULL && !skip_auth;
    if (*authing) {
        auth = etcd_auth_body(c);
        path = "/v3/auth/authenticate";
        extra = NULL;
        body = auth;
    }
    if (body != NULL)
        rc = oa_buf_printf(&req,
                           "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                           "User-Agent: ocsp-agent/" OA_VERSION "\r\n%s%s%s%s\r\n%s",
                           path, c->members[m].where, strlen(body), c->token != NULL ? "Authorization: " : "",
                           c->token != NULL ? c->token : "", c->token != NULL ? "\r\n" : "",
                           extra != NULL ? extra : "", body);
    if (rc == 0)
        rc = etcd_conn_send(k, req.data, req.len, h, ctx); /* closes k when it fails */
    else
        etcd_conn_close(k);
    free(auth);
    oa_buf_free(&req);
    return rc;
}

char *etcd_auth_body(const oa_etcd_t *c)
{
    json_t *o = json_pack("{s:s, s:s}", "name", c->user, "password", c->password);
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    return s;
}

int etcd_auth_store(oa_etcd_t *c, json_t *answer)
{
    const char *token = json_string_value(json_object_get(answer, "token"));
    const char *p;
    char *copy;

    if (token == NULL || token[0] == '\0')
        return UV_EPROTO;
    /* The token goes into a header line: a byte that could end the line is refused. */
    for (p = token; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            return UV_EPROTO;
    }
    copy = strdup(token);
    if (copy == NULL)
        return UV_ENOMEM;
    free(c->token);
    c->token = copy;
    return 0;
}

/* The error in an answer, unary ({"error","code","message"}) or from a stream ({"error":{"grpc_code",...}}).
 * Returns true with *code and *message set. */
static bool answer_error(const json_t *a, int *code, const char **message)
{
    const json_t *e = json_object_get(a, "error");

    if (json_is_object(e)) {
        *code = (int)json_integer_value(json_object_get(e, "grpc_code"));
        *message = json_string_value(json_object_get(e, "message"));
        return true;
    }
    if (!json_is_integer(json_object_get(a, "code")))
        return false;
    *code = (int)json_integer_value(json_object_get(a, "code"));
    *message = json_string_value(json_object_get(a, "message"));
    if (*message == NULL)
        *message = json_string_value(e);
    return true;
}

/* ---- the life of a call ---- */

static void on_call_closed(uv_handle_t *h)
{
    etcd_call_t *k = oa_container_of(h, etcd_call_t, timer);
    oa_etcd_t *c = k->c;
    size_t i;

    k->res.why = k->res.err == OA_ETCD_OK ? "" : k->why;
    k->res.kvs = k->kvs;
    k->res.n_kvs = k->n_kvs;
    k->cb(c, &k->res, k->data);
    for (i = 0; i < k->n_kvs; i++)
        etcd_kv_free(&k->kvs[i]);
    free(k->kvs);
    free(k->body);
    oa_buf_free(&k->answer);
    free(k);
    etcd_client_drop(c);
}

static void unlink_call(etcd_call_t *k)
{
    etcd_call_t **pp;

    for (pp = &k->c->calls; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == k) {
            *pp = k->next;
            return;
        }
    }
}

/* Fixes the outcome; the callback fires from the timer's close callback. */
static void finish(etcd_call_t *k, oa_etcd_err_t err, const char *fmt, ...)
{
    va_list ap;

    if (k->phase == PH_DONE)
        return;
    k->phase = PH_DONE;
    k->res.err = err;
    if (fmt != NULL) {
        va_start(ap, fmt);
        vsnprintf(k->why, sizeof(k->why), fmt, ap);
        va_end(ap);
    }
    if (k->conn != NULL) {
        etcd_conn_close(k->conn);
        k->conn = NULL;
    }
    unlink_call(k);
    uv_timer_stop(&k->timer);
    uv_close((uv_handle_t *)&k->timer, on_call_closed);
}

static void on_timer(uv_timer_t *t);

/* The member failed the call without acting on it (why says how): the next member, or a pause after a round. */
static void next_member(etcd_call_t *k)
{
    oa_etcd_t *c = k->c;
    uint64_t now = uv_now(c->loop), pause;

    if (k->conn != NULL) {
        etcd_conn_close(k->conn);
        k->conn = NULL;
    }
    if (k->pinned) {
        finish(k, OA_ETCD_E_UNAVAILABLE, NULL);
        return;
    }
    k->member = (k->member + 1) % c->n_members;
    if (++k->tried < c->n_members) {
        attempt(k);
        return;
    }
    k->tried = 0;
    k->round++;
    pause = (uint64_t)ROUND_PAUSE_MS * k->round;
    if (pause > ROUND_PAUSE_MAX_MS)
        pause = ROUND_PAUSE_MAX_MS;
    if (now + pause >= k->deadline) {
        finish(k, OA_ETCD_E_UNAVAILABLE, NULL); /* why holds the last member's failure */
        return;
    }
    k->phase = PH_PAUSE;
    uv_timer_start(&k->timer, on_timer, pause, 0);
}

static void on_headers(void *ctx, int status);
static void on_body(void *ctx, const char *p, size_t n);
static void on_done(void *ctx, int rc, int sent, const char *why);

static const etcd_conn_handler_t call_handler = {on_headers, on_body, on_done};

/* Sends the authentication when it is due, else the call itself, on the call's connection. */
static void send_current(etcd_call_t *k)
{
    oa_etcd_t *c = k->c;
    int rc;

    k->status = 0;
    k->too_large = 0;
    oa_buf_reset(&k->answer);
    rc = etcd_send(c, k->conn, k->member, k->skip_auth, kinds[k->kind].path, NULL, k->body, &call_handler, k,
                   &k->authing);
    if (rc != 0) {
        k->conn = NULL; /* closed by etcd_send */
        snprintf(k->why, sizeof(k->why), "The request to etcd at %s could not be sent (%s).",
                 c->members[k->member].where, uv_strerror(rc));
        next_member(k);
    }
}

/* One attempt on k->member: a connection (kept open or new), then the request. */
static void attempt(etcd_call_t *k)
{
    oa_etcd_t *c = k->c;
    uint64_t now = uv_now(c->loop), end = now + c->attempt_timeout_ms;
    int rc;

    if (now >= k->deadline) {
        finish(k, OA_ETCD_E_UNAVAILABLE, NULL);
        return;
    }
    k->phase = PH_ATTEMPT;
    uv_timer_start(&k->timer, on_timer, (end < k->deadline ? end : k->deadline) - now, 0);
    rc = etcd_conn_get(c, k->member, &k->conn);
    if (rc != 0) {
        k->conn = NULL;
        snprintf(k->why, sizeof(k->why), "Could not start a connection to etcd at %s (%s).",
                 c->members[k->member].where, uv_strerror(rc));
        next_member(k);
        return;
    }
    send_current(k);
}

/* The attempt's time ran out, or the pause between rounds ended. */
static void on_timer(uv_timer_t *t)
{
    etcd_call_t *k = oa_container_of(t, etcd_call_t, timer);
    const char *where = k->c->members[k->member].where;

    if (k->phase == PH_PAUSE) {
        attempt(k);
        return;
    }
    if (kinds[k->kind].write && !k->authing && k->conn != NULL && etcd_conn_sent(k->conn)) {
        finish(k, OA_ETCD_E_UNKNOWN, "etcd at %s did not answer the write in time: it may or may not be applied.",
               where);
        return;
    }
    snprintf(k->why, sizeof(k->why), "etcd at %s did not answer in time.", where);
    next_member(k);
}

static void on_headers(void *ctx, int status)
{
    etcd_call_t *k = ctx;

    k->status = status;
}

static void on_body(void *ctx, const char *p, size_t n)
{
    etcd_call_t *k = ctx;

    if (k->too_large)
        return;
    if (n > k->c->max_body - k->answer.len || oa_buf_append(&k->answer, p, n) != 0) {
        /* The connection cannot be used for another request in the middle of an answer: it goes. */
        k->too_large = 1;
        etcd_conn_close(k->conn);
        k->conn = NULL;
        finish(k, OA_ETCD_E_PROTOCOL, "The answer of etcd at %s is larger than %zu bytes.",
               k->c->members[k->member].where, k->c->max_body);
    }
}

static int add_kv(etcd_call_t *k, const json_t *o)
{
    int rc;

    if (k->n_kvs == k->cap_kvs) {
        size_t cap = k->cap_kvs != 0 ? k->cap_kvs * 2 : 4;
        oa_etcd_kv_t *kvs = realloc(k->kvs, cap * sizeof(*kvs));

        if (kvs == NULL)
            return UV_ENOMEM;
        k->kvs = kvs;
        k->cap_kvs = cap;
    }
    rc = etcd_kv_parse(o, &k->kvs[k->n_kvs]);
    if (rc != 0)
        return rc;
    k->n_kvs++;
    return 0;
}

static int add_kvs(etcd_call_t *k, const json_t *arr)
{
    size_t i;
    json_t *o;

    json_array_foreach(arr, i, o)
    {
        int rc = add_kv(k, o);

        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Fills the result from a successful answer. Returns 0, UV_EPROTO when it is not what the gateway sends, or
 * UV_ENOMEM. */
static int read_result(etcd_call_t *k, json_t *a)
{
    oa_etcd_result_t *r = &k->res;
    json_t *op;
    size_t i;

    if (k->kind == ETCD_KEEPALIVE)
        a = json_object_get(a, "result"); /* a stream of one message */
    if (!json_is_object(a))
        return UV_EPROTO;
    r->revision = etcd_json_int64(json_object_get(a, "header"), "revision");
    switch (k->kind) {
    case ETCD_RANGE:
        r->count = etcd_json_int64(a, "count");
        return add_kvs(k, json_object_get(a, "kvs"));
    case ETCD_DELETE:
        r->deleted = etcd_json_int64(a, "deleted");
        return 0;
    case ETCD_TXN:
        r->succeeded = json_is_true(json_object_get(a, "succeeded"));
        json_array_foreach(json_object_get(a, "responses"), i, op)
        {
            json_t *range = json_object_get(op, "response_range");

            r->deleted += etcd_json_int64(json_object_get(op, "response_delete_range"), "deleted");
            int rc = range != NULL ? add_kvs(k, json_object_get(range, "kvs")) : 0;

            if (rc != 0)
                return rc;
        }
        return 0;
    case ETCD_GRANT:
    case ETCD_KEEPALIVE:
        r->lease = etcd_json_int64(a, "ID");
        r->ttl = etcd_json_int64(a, "TTL");
        return 0;
    default:
        return 0;
    }
}

static void on_done(void *ctx, int rc, int sent, const char *why)
{
    etcd_call_t *k = ctx;
    oa_etcd_t *c = k->c;
    const char *where = c->members[k->member].where, *message = NULL;
    oa_etcd_err_t err;
    json_t *a = NULL;
    int code = 0;

    if (rc != 0) {
        k->conn = NULL; /* it closed itself */
        if (kinds[k->kind].write && !k->authing && sent) {
            finish(k, OA_ETCD_E_UNKNOWN, "%s The write may or may not be applied.", why);
            return;
        }
        snprintf(k->why, sizeof(k->why), "%s", why);
        next_member(k);
        return;
    }
    a = json_loadb(k->answer.data != NULL ? k->answer.data : "", k->answer.len, 0, NULL);
    if (a == NULL || (k->status != 200 && !answer_error(a, &code, &message))) {
        json_decref(a);
        snprintf(k->why, sizeof(k->why), "etcd at %s answered HTTP %d with %s.", where, k->status,
                 a == NULL ? "a body that is not JSON" : "no error in the body");
        /* A proxy or a member in trouble: a read may go elsewhere, a write that was delivered is unknown. */
        if (k->status >= 500 && !kinds[k->kind].write) {
            next_member(k);
            return;
        }
        finish(k, k->status >= 500 ? OA_ETCD_E_UNKNOWN : OA_ETCD_E_PROTOCOL, NULL);
        return;
    }
    if (!answer_error(a, &code, &message)) {
        if (k->authing) {
            rc = etcd_auth_store(c, a);
            json_decref(a);
            if (rc != 0) {
                finish(k, OA_ETCD_E_PROTOCOL, "etcd at %s answered the authentication without a usable token.",
                       where);
                return;
            }
            send_current(k); /* the call itself, on the same connection */
            return;
        }
        etcd_conn_release(k->conn);
        k->conn = NULL;
        c->preferred = k->member;
        rc = read_result(k, a);
        json_decref(a);
        if (rc != 0)
            finish(k, OA_ETCD_E_PROTOCOL, "etcd at %s sent an answer that could not be read.", where);
        else if (k->kind == ETCD_KEEPALIVE && k->res.ttl <= 0)
            finish(k, OA_ETCD_E_NOT_FOUND, "etcd at %s says the lease %lld does not exist any more.", where,
                   (long long)k->res.lease);
        else
            finish(k, OA_ETCD_OK, NULL);
        return;
    }
    k->res.grpc_code = code;
    snprintf(k->why, sizeof(k->why), "etcd at %s answered %s (code %d).", where,
             message != NULL ? message : "an error", code);
    json_decref(a);
    switch (etcd_classify(code, k->why, &err)) {
    case ETCD_V_TOKEN:
        free(c->token);
        c->token = NULL;
        if (!k->reauthed && c->user != NULL) {
            k->reauthed = 1;
            send_current(k);
            return;
        }
        break;
    case ETCD_V_NO_AUTH:
        k->skip_auth = 1;
        send_current(k);
        return;
    case ETCD_V_NEXT:
        next_member(k);
        return;
    case ETCD_V_AMBIGUOUS:
        if (kinds[k->kind].write && !k->authing) {
            err = OA_ETCD_E_UNKNOWN;
            break;
        }
        next_member(k);
        return;
    case ETCD_V_FINAL:
        break;
    }
    /* The member answered in full: its connection can serve the next call. */
    etcd_conn_release(k->conn);
    k->conn = NULL;
    finish(k, err, NULL);
}

int etcd_call_start(oa_etcd_t *c, etcd_kind_t kind, json_t *body, size_t member, oa_etcd_cb cb, void *data)
{
    etcd_call_t *k = NULL;
    int rc = UV_ENOMEM;

    if (c->closing) {
        rc = UV_ECANCELED;
        goto out;
    }
    if (body == NULL || (k = calloc(1, sizeof(*k))) == NULL)
        goto out;
    k->body = json_dumps(body, JSON_COMPACT);
    if (k->body == NULL)
        goto out;
    rc = uv_timer_init(c->loop, &k->timer);
    if (rc != 0)
        goto out;
    json_decref(body);
    k->c = c;
    k->kind = kind;
    k->cb = cb;
    k->data = data;
    k->member = member < c->n_members ? member : c->preferred;
    k->pinned = member < c->n_members;
    k->deadline = uv_now(c->loop) + (k->pinned ? c->attempt_timeout_ms : c->timeout_ms);
    snprintf(k->why, sizeof(k->why), "No etcd member answered within %u ms.", c->timeout_ms);
    k->next = c->calls;
    c->calls = k;
    etcd_client_hold(c);
    attempt(k);
    return 0;
out:
    json_decref(body);
    if (k != NULL)
        free(k->body);
    free(k);
    return rc;
}
