/*
 * A watch of the etcd client; see oa_etcd.h for the contract.
 *
 * /v3/watch answers with a chunked body that never ends: one JSON message per line, first {"created":true}, then one
 * per batch of events. The watch keeps the revision to start from (the last event's revision + 1), so when a stream
 * breaks it opens a new one on the next member from there: nothing is delivered twice and nothing is skipped. The
 * request carries gRPC's "hasleader" metadata, so that a member cut off from its leader ends the stream rather than
 * keeping quiet.
 *
 * The watch's timer bounds one attempt (connection, authentication and the "created" message), spaces the
 * attempts once every member has failed, and, while a stream is up, sets off a probe of its member when the stream
 * has been quiet for a while. The final update fires from its close callback, and the memory goes right after it (or
 * after a probe still under way has come back).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_internal.h"

#define PAUSE_MS     100u /* grows with each round over the members */
#define PAUSE_MAX_MS 1000u

/* gRPC metadata travels through the gateway as Grpc-Metadata-* headers. */
#define HASLEADER_HEADER "Grpc-Metadata-Hasleader: true\r\n"

struct oa_etcd_watch_s {
    oa_etcd_t *c;
    oa_etcd_watch_t *next; /* in c->watches */
    uv_timer_t timer;
    unsigned char *key, *end;
    size_t key_len, end_len;
    int64_t next_rev; /* where the next stream starts; 0: now */
    size_t member;
    unsigned failures; /* attempts that failed since the last stream was created */
    etcd_conn_t *conn;
    int authing, reauthed, skip_auth;
    int status;       /* the HTTP status of the answer in progress */
    int streaming;    /* the current stream said "created" */
    oa_buf_t line;    /* the stream: bytes of a message whose end has not come yet; the authentication's answer */
    int done;         /* the final update is fixed */
    int timer_closed; /* the final update went out; the memory waits only for a probe still under way */
    int probing;      /* a probe of the member is under way */
    unsigned gen, probe_gen; /* the stream's number, and the number of the one the probe is about */
    oa_etcd_watch_update_t final;
    char why[ETCD_WHY_MAX];
    oa_etcd_watch_cb cb;
    void *data;
};

static void attempt(oa_etcd_watch_t *w);

/* ---- the end ---- */

static void watch_free(oa_etcd_watch_t *w)
{
    oa_etcd_t *c = w->c;

    free(w->key);
    free(w->end);
    oa_buf_free(&w->line);
    free(w);
    etcd_client_drop(c);
}

static void on_watch_closed(uv_handle_t *h)
{
    oa_etcd_watch_t *w = oa_container_of(h, oa_etcd_watch_t, timer);

    w->final.why = w->why;
    w->cb(w, &w->final, w->data);
    w->timer_closed = 1;
    if (!w->probing)
        watch_free(w);
}

static void finish(oa_etcd_watch_t *w, oa_etcd_watch_kind_t kind, oa_etcd_err_t err)
{
    oa_etcd_watch_t **pp;

    if (w->done)
        return;
    w->done = 1;
    w->final.kind = kind;
    w->final.err = err;
    if (w->conn != NULL) {
        etcd_conn_close(w->conn);
        w->conn = NULL;
    }
    for (pp = &w->c->watches; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, on_watch_closed);
}

void oa_etcd_watch_stop(oa_etcd_watch_t *w)
{
    if (w == NULL || w->done)
        return;
    snprintf(w->why, sizeof(w->why), "The watch was stopped.");
    finish(w, OA_ETCD_WATCH_CANCELLED, OA_ETCD_E_CANCELLED);
}

void etcd_watch_cancel_all(oa_etcd_t *c)
{
    while (c->watches != NULL) {
        snprintf(c->watches->why, sizeof(c->watches->why), "The etcd client was closed.");
        finish(c->watches, OA_ETCD_WATCH_CANCELLED, OA_ETCD_E_CANCELLED);
    }
}

/* ---- moving on ---- */

static void move_on(oa_etcd_watch_t *w);
static void start_probe(oa_etcd_watch_t *w);

static void on_timer(uv_timer_t *t)
{
    oa_etcd_watch_t *w = oa_container_of(t, oa_etcd_watch_t, timer);

    if (w->streaming) {
        start_probe(w);
        return;
    }
    if (w->conn != NULL) {
        /* The attempt took too long: the member is there but does not serve. */
        etcd_conn_close(w->conn);
        w->conn = NULL;
        w->failures++;
        w->member = (w->member + 1) % w->c->n_members;
    }
    attempt(w);
}

/* The stream (or the attempt to open one) ended: go on from next_rev on the next member, at once for the first
 * round over the members and after a growing pause from then on. */
static void move_on(oa_etcd_watch_t *w)
{
    unsigned rounds, pause = 0;

    if (w->conn != NULL) {
        etcd_conn_close(w->conn);
        w->conn = NULL;
    }
    w->streaming = 0;
    w->gen++;
    oa_buf_reset(&w->line);
    w->member = (w->member + 1) % w->c->n_members;
    rounds = w->failures++ / (unsigned)w->c->n_members;
    if (rounds > 0)
        pause = PAUSE_MS * rounds < PAUSE_MAX_MS ? PAUSE_MS * rounds : PAUSE_MAX_MS;
    uv_timer_start(&w->timer, on_timer, pause, 0);
}

/* ---- a quiet stream: is its member still there? ---- */

/* A stream that says nothing may be one whose member hangs (stopped, overloaded): the kernel keeps the connection
 * up, and the member's own checks (hasleader) cannot run. A cheap read on the same member, served by it alone,
 * tells; a member that does not answer it in time is left for the next one. */
static void on_probe(oa_etcd_t *c, const oa_etcd_result_t *r, void *data)
{
    oa_etcd_watch_t *w = data;

    w->probing = 0;
    if (w->done) {
        if (w->timer_closed)
            watch_free(w);
        return;
    }
    if (!w->streaming)
        return; /* the timer serves an attempt now */
    if (w->probe_gen == w->gen && r->err == OA_ETCD_E_UNAVAILABLE) {
        snprintf(w->why, sizeof(w->why), "etcd at %s stopped answering while watched: %s",
                 c->members[w->member].where, r->why);
        move_on(w);
        return;
    }
    /* The member answered, or the probe was about a stream that has since been replaced: the stream up now gets
     * its own probe after a quiet while. */
    uv_timer_start(&w->timer, on_timer, c->watch_probe_ms, 0);
}

static void start_probe(oa_etcd_watch_t *w)
{
    json_t *o =
        json_pack("{s:o, s:b, s:b}", "key", etcd_json_b64(w->key, w->key_len), "count_only", 1, "serializable", 1);

    if (etcd_call_start(w->c, ETCD_RANGE, o, w->member, on_probe, w) != 0) {
        /* Out of memory, or the client is closing (the watch then ends too): try again later. */
        uv_timer_start(&w->timer, on_timer, w->c->watch_probe_ms, 0);
        return;
    }
    w->probing = 1;
    w->probe_gen = w->gen;
}

/* What an error from etcd (code, message) means for the watch. */
static void on_etcd_error(oa_etcd_watch_t *w, int code, const char *message)
{
    oa_etcd_t *c = w->c;
    oa_etcd_err_t err;

    snprintf(w->why, sizeof(w->why), "etcd at %s refused the watch: %s.", c->members[w->member].where,
             message != NULL ? message : "no reason given");
    switch (etcd_classify(code, message, &err)) {
    case ETCD_V_TOKEN:
        free(c->token);
        c->token = NULL;
        if (!w->reauthed && c->user != NULL) {
            w->reauthed = 1;
            move_on(w);
            return;
        }
        finish(w, OA_ETCD_WATCH_ERROR, OA_ETCD_E_AUTH);
        return;
    case ETCD_V_NO_AUTH:
        w->skip_auth = 1;
        move_on(w);
        return;
    case ETCD_V_NEXT:
    case ETCD_V_AMBIGUOUS:
        move_on(w);
        return;
    case ETCD_V_FINAL:
        finish(w, OA_ETCD_WATCH_ERROR, err);
        return;
    }
}

/* ---- the stream ---- */

/* A watch that etcd cancelled says why only in words ("rpc error: code = Unauthenticated desc = ..."). */
static int cancel_code(const char *reason)
{
    static const struct {
        const char *name;
        int code;
    } codes[] = {{"code = Unauthenticated", 16}, {"code = PermissionDenied", 7}, {"code = InvalidArgument", 3},
                 {"code = Unavailable", 14},     {"code = OutOfRange", 11},      {"code = FailedPrecondition", 9}};
    size_t i;

    for (i = 0; reason != NULL && i < OA_ARRAY_SIZE(codes); i++) {
        if (strstr(reason, codes[i].name) != NULL)
            return codes[i].code;
    }
    return 2; /* Unknown */
}

static void deliver_events(oa_etcd_watch_t *w, const json_t *r, const json_t *events)
{
    oa_etcd_watch_update_t u = {.kind = OA_ETCD_WATCH_EVENTS, .why = ""};
    oa_etcd_event_t *ev;
    size_t i, n = json_array_size(events), got = 0;
    int bad = 0;

    ev = calloc(n, sizeof(*ev));
    if (ev == NULL) {
        snprintf(w->why, sizeof(w->why), "Out of memory for the events of a watch.");
        finish(w, OA_ETCD_WATCH_ERROR, OA_ETCD_E_OTHER);
        return;
    }
    for (i = 0; i < n && !bad; i++, got++) {
        const json_t *e = json_array_get(events, i);
        const char *type = json_string_value(json_object_get(e, "type"));

        ev[i].type = type != NULL && strcmp(type, "DELETE") == 0 ? OA_ETCD_EVENT_DELETE : OA_ETCD_EVENT_PUT;
        bad = etcd_kv_parse(json_object_get(e, "kv"), &ev[i].kv) != 0;
    }
    if (bad) {
        snprintf(w->why, sizeof(w->why), "etcd at %s sent a watch event that could not be read.",
                 w->c->members[w->member].where);
        finish(w, OA_ETCD_WATCH_ERROR, OA_ETCD_E_PROTOCOL);
    } else {
        /* Set before the callback, which may stop the watch or close the client. */
        w->next_rev = ev[n - 1].kv.mod_revision + 1;
        u.events = ev;
        u.n_events = n;
        u.revision = etcd_json_int64(json_object_get(r, "header"), "revision");
        w->cb(w, &u, w->data);
    }
    for (i = 0; i < got; i++)
        etcd_kv_free(&ev[i].kv);
    free(ev);
}

/* One message of the stream. */
static void on_message(oa_etcd_watch_t *w, const json_t *m)
{
    const json_t *r = json_object_get(m, "result"), *err = json_object_get(m, "error"), *events;

    if (json_is_object(err)) {
        on_etcd_error(w, (int)json_integer_value(json_object_get(err, "grpc_code")),
                      json_string_value(json_object_get(err, "message")));
        return;
    }
    if (!json_is_object(r)) {
        snprintf(w->why, sizeof(w->why), "etcd at %s sent a watch message without a result.",
                 w->c->members[w->member].where);
        finish(w, OA_ETCD_WATCH_ERROR, OA_ETCD_E_PROTOCOL);
        return;
    }
    if (json_is_true(json_object_get(r, "canceled"))) {
        const char *reason = json_string_value(json_object_get(r, "cancel_reason"));

        w->final.compact_revision = etcd_json_int64(r, "compact_revision");
        if (w->final.compact_revision > 0) {
            snprintf(w->why, sizeof(w->why), "The revision %lld was compacted away (the oldest left is %lld).",
                     (long long)w->next_rev, (long long)w->final.compact_revision);
            finish(w, OA_ETCD_WATCH_COMPACTED, OA_ETCD_E_COMPACTED);
            return;
        }
        on_etcd_error(w, cancel_code(reason), reason);
        return;
    }
    if (json_is_true(json_object_get(r, "created"))) {
        /* The stream is up: the attempt met its deadline. Without a start revision, the watch starts after the
         * revision the member had then. */
        w->streaming = 1;
        w->failures = 0;
        w->reauthed = 0;
        if (w->next_rev == 0)
            w->next_rev = etcd_json_int64(json_object_get(r, "header"), "revision") + 1;
    }
    /* Whatever the member says proves it alive: the next probe waits for a quiet while again. */
    if (w->streaming && !w->probing)
        uv_timer_start(&w->timer, on_timer, w->c->watch_probe_ms, 0);
    events = json_object_get(r, "events");
    if (json_array_size(events) > 0 && w->streaming)
        deliver_events(w, r, events);
}

static void on_headers(void *ctx, int status)
{
    oa_etcd_watch_t *w = ctx;

    w->status = status;
}

static void on_body(void *ctx, const char *p, size_t n)
{
    oa_etcd_watch_t *w = ctx;
    const char *nl;
    json_t *m;

    if (oa_buf_append(&w->line, p, n) != 0 || w->line.len > w->c->max_body) {
        snprintf(w->why, sizeof(w->why), "A watch message from etcd at %s is larger than %zu bytes.",
                 w->c->members[w->member].where, w->c->max_body);
        finish(w, OA_ETCD_WATCH_ERROR, OA_ETCD_E_PROTOCOL);
        return;
    }
    if (w->authing || w->status != 200)
        return; /* one JSON answer, read whole in on_done */
    /* Each message ends with a newline; the message is taken out of the buffer before it is acted on, since acting
     * on it may end this stream and start another. */
    while (!w->done && w->conn != NULL && (nl = memchr(w->line.data, '\n', w->line.len)) != NULL) {
        size_t len = (size_t)(nl - w->line.data);

        m = json_loadb(w->line.data, len, 0, NULL);
        oa_buf_consume(&w->line, len + 1);
        if (m == NULL) {
            snprintf(w->why, sizeof(w->why), "etcd at %s sent a watch message that is not JSON.",
                     w->c->members[w->member].where);
            finish(w, OA_ETCD_WATCH_ERROR, OA_ETCD_E_PROTOCOL);
            return;
        }
        on_message(w, m);
        json_decref(m);
    }
}

static void send_current(oa_etcd_watch_t *w);

static void on_done(void *ctx, int rc, int sent, const char *why)
{
    oa_etcd_watch_t *w = ctx;
    json_t *a;
    int code = 0;

    (void)sent;
    if (rc != 0) {
        w->conn = NULL;
        snprintf(w->why, sizeof(w->why), "%s", why);
        move_on(w);
        return;
    }
    /* A complete answer: the authentication's, an error, or a stream the member ended. */
    a = json_loadb(w->line.data != NULL ? w->line.data : "", w->line.len, 0, NULL);
    if (w->authing && w->status == 200 && etcd_auth_store(w->c, a) == 0) {
        json_decref(a);
        send_current(w); /* the watch itself, on the same connection */
        return;
    }
    if (w->status != 200 && json_is_integer(json_object_get(a, "code"))) {
        code = (int)json_integer_value(json_object_get(a, "code"));
        on_etcd_error(w, code, json_string_value(json_object_get(a, "message")));
        json_decref(a);
        return;
    }
    if (w->status == 200 && !w->authing && json_is_object(a)) {
        /* A stream's last message may come without its newline: "no leader" does, just before the end. */
        etcd_conn_t *was = w->conn;

        on_message(w, a);
        json_decref(a);
        if (w->done || w->conn != was)
            return; /* finished, or already moving on */
        a = NULL;
    }
    json_decref(a);
    snprintf(w->why, sizeof(w->why), "etcd at %s ended the watch stream (HTTP %d).", w->c->members[w->member].where,
             w->status);
    move_on(w);
}

static const etcd_conn_handler_t watch_handler = {on_headers, on_body, on_done};

/* The request body: {"create_request": {"key", "range_end", "start_revision"}}. */
static char *watch_body(const oa_etcd_watch_t *w)
{
    json_t *inner = json_object(), *o = json_object();
    char rev[24], *s = NULL;
    int bad = inner == NULL || o == NULL;

    snprintf(rev, sizeof(rev), "%lld", (long long)w->next_rev);
    bad = bad || json_object_set_new(inner, "key", etcd_json_b64(w->key, w->key_len)) != 0;
    if (!bad && w->end != NULL)
        bad = json_object_set_new(inner, "range_end", etcd_json_b64(w->end, w->end_len)) != 0;
    if (!bad && w->next_rev > 0)
        bad = json_object_set_new(inner, "start_revision", json_string(rev)) != 0;
    if (!bad && json_object_set(o, "create_request", inner) == 0)
        s = json_dumps(o, JSON_COMPACT);
    json_decref(inner);
    json_decref(o);
    return s;
}

static void send_current(oa_etcd_watch_t *w)
{
    oa_etcd_t *c = w->c;
    char *body = watch_body(w);
    int rc;

    w->status = 0;
    oa_buf_reset(&w->line);
    rc = etcd_send(c, w->conn, w->member, w->skip_auth, "/v3/watch", HASLEADER_HEADER, body, &watch_handler, w,
                   &w->authing);
    free(body);
    if (rc != 0) {
        w->conn = NULL; /* closed by etcd_send */
        snprintf(w->why, sizeof(w->why), "The watch request to etcd at %s could not be sent (%s).",
                 c->members[w->member].where, uv_strerror(rc));
        move_on(w);
    }
}

static void attempt(oa_etcd_watch_t *w)
{
    oa_etcd_t *c = w->c;
    int rc;

    uv_timer_start(&w->timer, on_timer, c->attempt_timeout_ms, 0);
    rc = etcd_conn_get(c, w->member, &w->conn);
    if (rc != 0) {
        w->conn = NULL;
        snprintf(w->why, sizeof(w->why), "Could not start a connection to etcd at %s (%s).",
                 c->members[w->member].where, uv_strerror(rc));
        move_on(w);
        return;
    }
    send_current(w);
}

int oa_etcd_watch_start(oa_etcd_t *c, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                        int64_t start_revision, oa_etcd_watch_cb cb, void *data, oa_etcd_watch_t **out)
{
    oa_etcd_watch_t *w;

    if (out != NULL)
        *out = NULL;
    if (c->closing)
        return UV_ECANCELED;
    if (key_len == 0 || start_revision < 0)
        return UV_EINVAL;
    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return UV_ENOMEM;
    w->key = malloc(key_len);
    w->end = range_end != NULL ? malloc(range_end_len + 1) : NULL;
    if (w->key == NULL || (range_end != NULL && w->end == NULL) || uv_timer_init(c->loop, &w->timer) != 0) {
        free(w->key);
        free(w->end);
        free(w);
        return UV_ENOMEM;
    }
    memcpy(w->key, key, key_len);
    w->key_len = key_len;
    if (w->end != NULL) {
        memcpy(w->end, range_end, range_end_len);
        w->end_len = range_end_len;
    }
    w->c = c;
    w->next_rev = start_revision;
    w->member = c->preferred;
    w->cb = cb;
    w->data = data;
    w->final.why = "";
    w->next = c->watches;
    c->watches = w;
    etcd_client_hold(c);
    attempt(w);
    if (out != NULL)
        *out = w;
    return 0;
}
