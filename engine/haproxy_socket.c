/*
 * The HAProxy runtime socket target: pushes the staple with `set ssl ocsp-response <base64>` and checks that HAProxy
 * still holds it.
 *
 * The runtime API is HAProxy's stats socket (`stats socket ... level admin`) used non-interactively: one connection
 * per command, the command line written once, the reply read until HAProxy closes. Every exchange is bounded by a
 * deadline (connect and reply together) and its reply by REPLY_MAX bytes. A target runs at most one exchange at a
 * time; the socket handle is embedded and reused, so the next exchange starts only from the close callback of the
 * previous one.
 *
 * What the target does, per generation of the staple:
 *   - a staple HAProxy would not staple (oa_haproxy_staple_check) is reported failed and not pushed;
 *   - otherwise it is pushed, and retried with a backoff (BACKOFF_MIN_MS doubling up to BACKOFF_MAX_MS) until
 *     HAProxy answers "OCSP Response updated!";
 *   - once delivered, every CHECK_MS `show ssl ocsp-response <CertID>` tells whether HAProxy still holds it; when it
 *     holds nothing (restart, reload) or another response (someone else pushed), the staple is pushed again;
 *   - a removed staple cannot be taken back: HAProxy 2.6 has no command that drops a response (an empty
 *     `set ssl ocsp-response` is refused, a `set ssl cert <crt>.ocsp` transaction with an empty payload commits but
 *     the response stays, replacing the certificate needs its private key). The target says so in its error and
 *     reports the removal delivered once HAProxy stops stapling by itself, 300 s before the nextUpdate.
 *
 * Comparing responses: `show ssl ocsp-response <id>` prints HAProxy's copy with OCSP_RESPONSE_print (empty lines
 * turned into " " lines). The target prints its own DER the same way and compares a fingerprint of both texts: the
 * status, CertID, times and revocation lines, and the hex of the response's signature, which is unique to one
 * response. Only those lines are compared so that a HAProxy linked with another OpenSSL version, which lays out
 * other lines differently, still compares equal.
 *
 * For tests only, OA_TEST_HAPROXY_CHECK_MS, OA_TEST_HAPROXY_EXCHANGE_MS and OA_TEST_HAPROXY_BACKOFF_MS (the first
 * retry; the longest is five times it) replace the intervals; production leaves them unset.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "oa_codec.h"
#include "oa_log.h"
#include "target.h"

#define CHECK_MS        5000u  /* how often a delivered staple is checked */
#define EXCHANGE_MS     2000u  /* connect, command and reply, together */
#define BACKOFF_MIN_MS  1000u  /* the first retry after a failure; doubles up to ... */
#define BACKOFF_MAX_MS  5000u  /* ... this, so a restarted HAProxy is served within CHECK_MS + BACKOFF_MAX_MS */
#define REPLY_MAX       65536u /* a longer reply is an error: no answer to our two commands is that long */
#define READ_CHUNK      16384u
#define QUOTE_MAX       120    /* how much of HAProxy's reply an error quotes */
#define CERTID_MAX      128    /* HAProxy's OCSP_MAX_CERTID_ASN1_LENGTH */
#define WHERE_MAX       128
/* A sentence before oa_dtarget_report cuts it to OA_DTARGET_ERROR_MAX: room for the spec and a quote. */
#define WHY_MAX         (OA_DTARGET_ERROR_MAX + WHERE_MAX + QUOTE_MAX)

#define PUSH_OK "OCSP Response updated!"

typedef enum exch_kind_e { EX_NONE, EX_PUSH, EX_CHECK } exch_kind_t;

/* What the timer does when it fires. */
typedef enum want_e {
    WANT_NOTHING,
    WANT_PUSH,        /* push the current staple (first try, retry, or after a check found it missing) */
    WANT_CHECK,       /* ask HAProxy whether it still holds the current staple */
    WANT_REMOVAL_END, /* HAProxy has stopped stapling the removed staple's response by itself */
} want_t;

typedef struct hsock_s {
    oa_dtarget_t base; /* first: the delivery sees an oa_dtarget_t */
    uv_loop_t *loop;
    char where[WHERE_MAX]; /* the spec, for every sentence */
    int is_unix;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct sockaddr_storage addr;

    unsigned check_ms, exchange_ms, backoff_min_ms, backoff_max_ms;
    unsigned backoff_ms; /* the last retry delay, 0 after a success */

    uv_timer_t timer;    /* the next push, check or end of a removal */
    uv_timer_t deadline; /* bounds the exchange in flight */
    union {
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } sock;
    uv_connect_t connect_req;
    uv_write_t write_req;
    unsigned open_handles; /* the two timers, and the socket while an exchange is open */
    int sock_open;         /* the socket handle is initialised and not closed yet */
    int closing;

    /* The exchange in flight: its command, its reply, and once ex_done, its outcome. */
    exch_kind_t exch;
    uint64_t exch_gen;
    const char *phase;
    int ex_done;
    int update_waiting; /* the staple changed during the exchange */
    char ex_error[OA_DTARGET_ERROR_MAX];
    oa_buf_t cmd;
    oa_buf_t reply;
    char rbuf[READ_CHUNK];

    /* The current generation, as planned by plan(). */
    uint64_t seen_gen;
    want_t want;
    char certid[2 * CERTID_MAX + 1]; /* hex of the DER CertID: HAProxy's key for the response */
    oa_buf_t fingerprint;            /* of the current staple's printed form */
    time_t next_update;              /* the current staple's */
    time_t acked_next_update;        /* nextUpdate of the response HAProxy last accepted from us, 0 for none */
    const char *redeliver_reason;    /* set when a check found the staple missing, until it is delivered again */
} hsock_t;

static void start_exchange(hsock_t *t, exch_kind_t kind);
static void plan(hsock_t *t);

/* ---- small helpers ---- */

static unsigned env_ms(const char *name, unsigned dflt)
{
    /* A test-only knob: the suites shorten the intervals. Production never sets these. */
    const char *s = getenv(name);
    char *end;
    unsigned long v;

    if (s == NULL || *s == '\0')
        return dflt;
    v = strtoul(s, &end, 10);
    if (*end != '\0' || v == 0 || v > 3600000ul)
        return dflt;
    return (unsigned)v;
}

/* The first non-empty line of text, printable and bounded, for an error sentence. */
static void quote_first_line(const char *text, size_t len, char *out, size_t out_len)
{
    size_t i = 0, n = 0;

    while (i < len && (text[i] == '\n' || text[i] == '\r' || text[i] == ' '))
        i++;
    for (; i < len && text[i] != '\n' && text[i] != '\r' && n + 1 < out_len && n < QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)text[i];

        /* HAProxy's words end up in a log line and the status JSON: nothing but printable ASCII. */
        out[n++] = (char)(c >= 0x20 && c < 0x7f && c != '"' ? c : '?');
    }
    out[n] = '\0';
}

static int starts_with(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);

    return len >= n && memcmp(s, prefix, n) == 0;
}

/*
 * The parts of an OCSP_RESPONSE_print text that identify one response, appended to out: the status, the CertID, the
 * times and revocation lines of the single response, and the hex of the response's signature. Returns 0, or -1 when
 * the text does not look like a printed response (or out of memory).
 */
static int fingerprint(const char *text, size_t len, oa_buf_t *out)
{
    static const char *const keys[] = {
        "OCSP Response Status:", "Produced At:",   "Issuer Name Hash:", "Issuer Key Hash:",   "Serial Number:",
        "Cert Status:",          "Revocation Time:", "Revocation Reason:", "This Update:", "Next Update:",
    };
    const char *p = text, *end = text + len;
    int in_signature = 0, have_this_update = 0;
    size_t sig_bytes = 0, i;
    int rc = 0;

    oa_buf_reset(out);
    while (p < end && rc == 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl != NULL ? nl : end;
        const char *s = p;

        p = nl != NULL ? nl + 1 : end;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
            e--;
        if (!in_signature) {
            if (starts_with(s, (size_t)(e - s), "Signature Algorithm:")) {
                in_signature = 1;
                rc = oa_buf_append_str(out, "Signature:");
                continue;
            }
            for (i = 0; i < OA_ARRAY_SIZE(keys); i++) {
                if (starts_with(s, (size_t)(e - s), keys[i])) {
                    if (strcmp(keys[i], "This Update:") == 0)
                        have_this_update = 1;
                    rc = oa_buf_append(out, s, (size_t)(e - s));
                    rc |= oa_buf_append(out, "\n", 1);
                    break;
                }
            }
            continue;
        }
        /* OpenSSL 3 puts "Signature Value:" before the hex dump, 1.1 does not. */
        if (starts_with(s, (size_t)(e - s), "Signature Value:"))
            continue;
        if (s == e || strspn(s, "0123456789abcdefABCDEF:") < (size_t)(e - s))
            break;
        for (; s < e && rc == 0; s++) {
            if (*s != ':') {
                rc = oa_buf_append(out, s, 1);
                sig_bytes++;
            }
        }
    }
    if (rc != 0 || !have_this_update || sig_bytes == 0)
        return -1;
    return 0;
}

/* Fills t->certid and t->fingerprint from the DER of staple. Returns 0, or -1 with why filled. */
static int describe_staple(hsock_t *t, const oa_ocsp_result_t *staple, char *why, size_t why_len)
{
    const unsigned char *p = staple->der;
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *basic = NULL;
    OCSP_SINGLERESP *single;
    unsigned char idbuf[CERTID_MAX], *q = idbuf;
    BIO *bio = NULL;
    char *text;
    long text_len;
    int idlen, i, rc = -1;

    resp = d2i_OCSP_RESPONSE(NULL, &p, (long)staple->der_len);
    if (resp != NULL)
        basic = OCSP_response_get1_basic(resp);
    single = basic != NULL ? OCSP_resp_get0(basic, 0) : NULL;
    if (single == NULL) {
        snprintf(why, why_len, "The staple is not a basic OCSP response with a single response.");
        goto out;
    }
    /* HAProxy keys its responses by the DER of the CertID of the response's single response. */
    idlen = i2d_OCSP_CERTID(OCSP_SINGLERESP_get0_id(single), NULL);
    if (idlen <= 0 || idlen > CERTID_MAX) {
        snprintf(why, why_len, "The staple's CertID cannot be encoded in at most %d bytes.", CERTID_MAX);
        goto out;
    }
    i2d_OCSP_CERTID(OCSP_SINGLERESP_get0_id(single), &q);
    for (i = 0; i < idlen; i++)
        snprintf(t->certid + 2 * i, 3, "%02x", idbuf[i]);
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || OCSP_RESPONSE_print(bio, resp, 0) <= 0) {
        snprintf(why, why_len, "Out of memory while printing the staple.");
        goto out;
    }
    text_len = BIO_get_mem_data(bio, &text);
    if (text_len <= 0 || fingerprint(text, (size_t)text_len, &t->fingerprint) != 0) {
        snprintf(why, why_len, "The staple's printed form has no signature or no thisUpdate to compare.");
        goto out;
    }
    rc = 0;
out:
    BIO_free(bio);
    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
    return rc;
}

/* ---- scheduling ---- */

static void on_timer(uv_timer_t *timer);

static void schedule(hsock_t *t, want_t want, uint64_t delay_ms)
{
    t->want = want;
    uv_timer_start(&t->timer, on_timer, delay_ms, 0);
}

/* After a failed try: the same action again, later each time, never later than backoff_max_ms. */
static void retry(hsock_t *t, want_t want)
{
    if (t->backoff_ms == 0)
        t->backoff_ms = t->backoff_min_ms;
    else if (t->backoff_ms < t->backoff_max_ms / 2)
        t->backoff_ms *= 2;
    else
        t->backoff_ms = t->backoff_max_ms;
    schedule(t, want, t->backoff_ms);
}

static void run_want(hsock_t *t)
{
    want_t want = t->want;

    if (t->closing || t->exch != EX_NONE)
        return;
    t->want = WANT_NOTHING;
    switch (want) {
    case WANT_PUSH:
        start_exchange(t, EX_PUSH);
        break;
    case WANT_CHECK:
        start_exchange(t, EX_CHECK);
        break;
    case WANT_REMOVAL_END:
        t->acked_next_update = 0;
        oa_dtarget_report(&t->base, t->seen_gen, NULL);
        break;
    case WANT_NOTHING:
        break;
    }
}

static void on_timer(uv_timer_t *timer)
{
    run_want(oa_container_of(timer, hsock_t, timer));
}

/* The staple was removed. HAProxy keeps what it has; say until when. */
static void plan_removal(hsock_t *t, uint64_t gen)
{
    time_t now = time(NULL), stops;
    char when[OA_RFC1123_LEN], why[OA_DTARGET_ERROR_MAX];

    /* After a change of certificate HAProxy may keep the old response, but under the old CertID: it staples it only
     * on the old certificate, for which it is true, and never on the new one. */
    if (gen == oa_delivery_cert_gen(t->base.delivery))
        t->acked_next_update = 0;
    stops = t->acked_next_update - OA_HAPROXY_STAPLE_MARGIN_SECONDS;
    if (t->acked_next_update == 0 || stops <= now) {
        /* HAProxy holds nothing of ours, or no longer staples it. */
        t->acked_next_update = 0;
        oa_dtarget_report(&t->base, gen, NULL);
        return;
    }
    snprintf(why, sizeof(why),
             "HAProxy has no runtime command to drop a response; it staples the previous one until %d s before its "
             "nextUpdate, %s",
             OA_HAPROXY_STAPLE_MARGIN_SECONDS, oa_time_rfc1123(t->acked_next_update, when));
    oa_dtarget_report(&t->base, gen, why);
    schedule(t, WANT_REMOVAL_END, (uint64_t)(stops - now) * 1000u);
}

/* Decides what to do for the current generation, if it is new. Runs only while no exchange is in flight. */
static void plan(hsock_t *t)
{
    uint64_t gen = oa_delivery_generation(t->base.delivery);
    const oa_ocsp_result_t *staple = oa_delivery_staple(t->base.delivery);
    char why[OA_DTARGET_ERROR_MAX];

    if (gen == t->seen_gen || t->closing)
        return;
    t->seen_gen = gen;
    t->backoff_ms = 0;
    t->redeliver_reason = NULL;
    t->want = WANT_NOTHING;
    uv_timer_stop(&t->timer);
    if (staple == NULL) {
        plan_removal(t, gen);
        return;
    }
    /* A response HAProxy would refuse or not staple would only be pushed to fail, or to be ignored. */
    if (oa_haproxy_staple_check(staple, time(NULL), why, sizeof(why)) != 0 ||
        describe_staple(t, staple, why, sizeof(why)) != 0) {
        oa_dtarget_report(&t->base, gen, why);
        return;
    }
    t->next_update = staple->next_update;
    t->want = WANT_PUSH;
    run_want(t);
}

/* ---- the outcome of an exchange ---- */

typedef enum held_e { HELD_CURRENT, HELD_NOTHING, HELD_OTHER, HELD_UNKNOWN } held_t;

/* What `show ssl ocsp-response <id>` says HAProxy holds for our CertID. */
static held_t classify_check(hsock_t *t)
{
    const char *r = t->reply.data;
    size_t len = t->reply.len;
    oa_buf_t theirs;
    held_t held;

    /* Known CertID without a response (loaded from an empty .ocsp file): HAProxy prints nothing. */
    if (len == 1 && r[0] == '\n')
        return HELD_NOTHING;
    /* A HAProxy that does not know the certificate at all (reloaded with another configuration) holds nothing
     * either; the push that follows says what HAProxy thinks of it. */
    if (starts_with(r, len, "Certificate ID does not match any certificate"))
        return HELD_NOTHING;
    if (!starts_with(r, len, "OCSP Response Data:"))
        return HELD_UNKNOWN;
    oa_buf_init(&theirs);
    if (fingerprint(r, len, &theirs) != 0)
        held = HELD_UNKNOWN;
    else if (theirs.len == t->fingerprint.len && memcmp(theirs.data, t->fingerprint.data, theirs.len) == 0)
        held = HELD_CURRENT;
    else
        held = HELD_OTHER;
    oa_buf_free(&theirs);
    return held;
}

static void push_done(hsock_t *t, uint64_t gen)
{
    char quote[QUOTE_MAX + 1], why[WHY_MAX];
    int ok = t->ex_error[0] == '\0' && t->reply.len > 0 && strstr(t->reply.data, PUSH_OK) != NULL;

    if (!ok && t->ex_error[0] == '\0') {
        quote_first_line(t->reply.data, t->reply.len, quote, sizeof(quote));
        snprintf(why, sizeof(why), "HAProxy (%s) refused the response: \"%s\".", t->where, quote);
    }
    oa_dtarget_report(&t->base, gen, ok ? NULL : t->ex_error[0] != '\0' ? t->ex_error : why);
    /* A newer staple waits for plan() until this exchange is over, so t->next_update is still the pushed one's. */
    if (ok)
        t->acked_next_update = t->next_update;
    if (gen != oa_delivery_generation(t->base.delivery))
        return;
    if (!ok) {
        retry(t, WANT_PUSH);
        return;
    }
    t->backoff_ms = 0;
    if (t->redeliver_reason != NULL) {
        OA_LOG(OA_LOG_INFO, "staple_redelivered", OA_KV_STR("target", t->base.name),
               OA_KV_STR("reason", t->redeliver_reason));
        t->redeliver_reason = NULL;
    }
    schedule(t, WANT_CHECK, t->check_ms);
}

static void check_done(hsock_t *t, uint64_t gen)
{
    char quote[QUOTE_MAX + 1], why[WHY_MAX];

    if (t->ex_error[0] != '\0') {
        oa_dtarget_report(&t->base, gen, t->ex_error);
        retry(t, WANT_CHECK);
        return;
    }
    switch (classify_check(t)) {
    case HELD_CURRENT:
        /* Only a change is worth a report: the counters count deliveries, not checks. */
        if (t->base.state != OA_DTARGET_DELIVERED)
            oa_dtarget_report(&t->base, gen, NULL);
        t->backoff_ms = 0;
        schedule(t, WANT_CHECK, t->check_ms);
        return;
    case HELD_NOTHING:
        t->redeliver_reason = "haproxy lost the response";
        break;
    case HELD_OTHER:
        t->redeliver_reason = "haproxy holds another response";
        break;
    case HELD_UNKNOWN:
        quote_first_line(t->reply.data, t->reply.len, quote, sizeof(quote));
        snprintf(why, sizeof(why), "HAProxy (%s) answered `show ssl ocsp-response` with \"%s\".", t->where, quote);
        oa_dtarget_report(&t->base, gen, why);
        retry(t, WANT_CHECK);
        return;
    }
    t->want = WANT_PUSH;
    run_want(t);
}

/* The socket of the exchange is closed: act on the outcome. Runs from a close callback, so a new exchange may
 * reuse the embedded handle. */
static void exchange_done(hsock_t *t)
{
    exch_kind_t kind = t->exch;
    uint64_t gen = t->exch_gen;

    t->exch = EX_NONE;
    if (kind == EX_PUSH)
        push_done(t, gen); /* counts the try even for a staple replaced since */
    else if (kind == EX_CHECK && gen == oa_delivery_generation(t->base.delivery))
        check_done(t, gen);
    if (t->update_waiting) {
        t->update_waiting = 0;
        plan(t);
    }
}

/* ---- the exchange ---- */

static void maybe_closed(hsock_t *t)
{
    if (t->open_handles == 0)
        oa_dtarget_closed(&t->base); /* may free t: nothing after this */
}

static void on_sock_closed(uv_handle_t *h)
{
    hsock_t *t = oa_container_of(h, hsock_t, sock);

    t->sock_open = 0;
    t->open_handles--;
    if (t->closing)
        maybe_closed(t);
    else
        exchange_done(t);
}

static void on_handle_closed(uv_handle_t *h)
{
    hsock_t *t = h->data;

    t->open_handles--;
    maybe_closed(t);
}

/* Fixes the outcome of the exchange (error NULL: the reply is complete) and closes its socket. */
static void end_exchange(hsock_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void end_exchange(hsock_t *t, const char *fmt, ...)
{
    va_list ap;

    if (t->ex_done)
        return;
    t->ex_done = 1;
    t->ex_error[0] = '\0';
    if (fmt != NULL) {
        va_start(ap, fmt);
        vsnprintf(t->ex_error, sizeof(t->ex_error), fmt, ap);
        va_end(ap);
    }
    uv_timer_stop(&t->deadline);
    if (t->sock_open && !uv_is_closing((uv_handle_t *)&t->sock))
        uv_close((uv_handle_t *)&t->sock, on_sock_closed);
}

static void on_deadline(uv_timer_t *timer)
{
    hsock_t *t = oa_container_of(timer, hsock_t, deadline);

    end_exchange(t, "HAProxy's runtime socket %s did not answer within %u ms (timed out while %s).", t->where,
                 t->exchange_ms, t->phase);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    hsock_t *t = oa_container_of(h, hsock_t, sock);

    (void)suggested;
    *buf = uv_buf_init(t->rbuf, sizeof(t->rbuf));
}

/* HAProxy ends every reply of its CLI with an empty line; an empty reply is that line alone. */
static int reply_complete(const oa_buf_t *r)
{
    return (r->len == 1 && r->data[0] == '\n') || (r->len >= 2 && r->data[r->len - 1] == '\n' &&
                                                   r->data[r->len - 2] == '\n');
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    hsock_t *t = oa_container_of(s, hsock_t, sock);

    if (t->ex_done || nread == 0)
        return;
    if (nread > 0) {
        if ((size_t)nread > REPLY_MAX - t->reply.len) {
            end_exchange(t, "HAProxy's runtime socket %s sent more than %u bytes (reply too large).", t->where,
                         REPLY_MAX);
            return;
        }
        if (oa_buf_append(&t->reply, buf->base, (size_t)nread) != 0)
            end_exchange(t, "Out of memory while reading the reply of HAProxy's runtime socket %s.", t->where);
        return;
    }
    if (nread != UV_EOF)
        end_exchange(t, "The connection to HAProxy's runtime socket %s broke while %s: %s.", t->where, t->phase,
                     uv_strerror((int)nread));
    else if (t->reply.len == 0)
        end_exchange(t, "HAProxy's runtime socket %s closed the connection without answering.", t->where);
    else if (!reply_complete(&t->reply))
        end_exchange(t, "HAProxy's runtime socket %s closed the connection in the middle of the reply.", t->where);
    else
        end_exchange(t, NULL);
}

static void on_write(uv_write_t *req, int status)
{
    hsock_t *t = oa_container_of(req, hsock_t, write_req);

    if (t->ex_done || status == 0)
        return;
    end_exchange(t, "Sending the command to HAProxy's runtime socket %s failed: %s.", t->where, uv_strerror(status));
}

static void on_connect(uv_connect_t *req, int status)
{
    hsock_t *t = oa_container_of(req, hsock_t, connect_req);
    uv_buf_t buf;
    int rc;

    if (t->ex_done)
        return;
    if (status == UV_ENOENT) {
        end_exchange(t, "HAProxy's runtime socket %s does not exist.", t->where);
        return;
    }
    if (status == UV_ECONNREFUSED) {
        end_exchange(t, "HAProxy's runtime socket %s refused the connection.", t->where);
        return;
    }
    if (status < 0) {
        end_exchange(t, "Could not connect to HAProxy's runtime socket %s: %s.", t->where, uv_strerror(status));
        return;
    }
    t->phase = "waiting for the reply";
    buf = uv_buf_init(t->cmd.data, (unsigned)t->cmd.len);
    rc = uv_write(&t->write_req, (uv_stream_t *)&t->sock, &buf, 1, on_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&t->sock, on_alloc, on_read);
    if (rc < 0)
        end_exchange(t, "Sending the command to HAProxy's runtime socket %s failed: %s.", t->where, uv_strerror(rc));
}

static int build_command(hsock_t *t, exch_kind_t kind)
{
    const oa_ocsp_result_t *staple = oa_delivery_staple(t->base.delivery);
    int rc;

    oa_buf_reset(&t->cmd);
    if (kind == EX_CHECK)
        return oa_buf_printf(&t->cmd, "show ssl ocsp-response %s\n", t->certid);
    if (staple == NULL)
        return UV_EINVAL;
    rc = oa_buf_append_str(&t->cmd, "set ssl ocsp-response ");
    if (rc == 0)
        rc = oa_base64_encode(&t->cmd, staple->der, staple->der_len);
    if (rc != 0)
        return rc;
    return oa_buf_append(&t->cmd, "\n", 1);
}

static void start_exchange(hsock_t *t, exch_kind_t kind)
{
    int rc;

    t->exch = kind;
    t->exch_gen = oa_delivery_generation(t->base.delivery);
    t->ex_done = 0;
    t->ex_error[0] = '\0';
    t->phase = "connecting";
    oa_buf_reset(&t->reply);
    rc = t->is_unix ? uv_pipe_init(t->loop, &t->sock.pipe, 0) : uv_tcp_init(t->loop, &t->sock.tcp);
    if (rc < 0) {
        /* No handle to close, so no close callback to report from: try again later. */
        t->exch = EX_NONE;
        oa_dtarget_report(&t->base, t->exch_gen, "Could not create a socket for HAProxy's runtime API.");
        retry(t, kind == EX_PUSH ? WANT_PUSH : WANT_CHECK);
        return;
    }
    t->sock_open = 1;
    t->open_handles++;
    uv_timer_start(&t->deadline, on_deadline, t->exchange_ms, 0);
    if (build_command(t, kind) != 0) {
        end_exchange(t, "Out of memory while building the command for HAProxy's runtime socket %s.", t->where);
        return;
    }
    if (t->is_unix) {
        uv_pipe_connect(&t->connect_req, &t->sock.pipe, t->path, on_connect);
        return;
    }
    rc = uv_tcp_connect(&t->connect_req, &t->sock.tcp, (const struct sockaddr *)&t->addr, on_connect);
    if (rc < 0)
        end_exchange(t, "Could not connect to HAProxy's runtime socket %s: %s.", t->where, uv_strerror(rc));
}

/* ---- the target interface ---- */

static void hsock_update(oa_dtarget_t *base)
{
    hsock_t *t = (hsock_t *)base;

    /* One exchange at a time: the one in flight finishes (bounded by its deadline), then the newest is planned. */
    if (t->exch != EX_NONE) {
        t->update_waiting = 1;
        return;
    }
    plan(t);
}

static void hsock_close(oa_dtarget_t *base)
{
    hsock_t *t = (hsock_t *)base;

    if (t->closing)
        return;
    t->closing = 1;
    uv_timer_stop(&t->timer);
    uv_timer_stop(&t->deadline);
    if (t->sock_open && !uv_is_closing((uv_handle_t *)&t->sock))
        uv_close((uv_handle_t *)&t->sock, on_sock_closed);
    uv_close((uv_handle_t *)&t->timer, on_handle_closed);
    uv_close((uv_handle_t *)&t->deadline, on_handle_closed);
}

static void hsock_free(oa_dtarget_t *base)
{
    hsock_t *t = (hsock_t *)base;

    /* base.name belongs to the delivery, which frees it after this. */
    oa_buf_free(&t->cmd);
    oa_buf_free(&t->reply);
    oa_buf_free(&t->fingerprint);
    free(t);
}

static const oa_dtarget_ops_t hsock_ops = {hsock_update, hsock_close, hsock_free};

/* "ADDR:PORT" or "[ADDR]:PORT" with a numeric loopback address into addr. Returns 0 or -1. */
static int parse_tcp_spec(const char *spec, struct sockaddr_storage *addr)
{
    char host[64];
    const char *h, *portstr, *close;
    size_t hl;
    char *end;
    unsigned long port;
    int v6 = spec[0] == '[';

    if (v6) {
        close = strchr(spec, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        h = spec + 1;
        hl = (size_t)(close - h);
        portstr = close + 2;
    } else {
        close = strrchr(spec, ':');
        if (close == NULL)
            return -1;
        h = spec;
        hl = (size_t)(close - h);
        portstr = close + 1;
    }
    if (hl == 0 || hl >= sizeof(host) || *portstr < '0' || *portstr > '9')
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    port = strtoul(portstr, &end, 10);
    if (*end != '\0' || port == 0 || port > 65535)
        return -1;
    memset(addr, 0, sizeof(*addr));
    if (v6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;

        if (uv_ip6_addr(host, (int)port, a6) != 0 || !IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr))
            return -1;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)addr;

        if (uv_ip4_addr(host, (int)port, a4) != 0 || (ntohl(a4->sin_addr.s_addr) >> 24) != 127)
            return -1;
    }
    return 0;
}

int oa_haproxy_socket_target_new(oa_delivery_t *d, const char *spec, oa_error_t *err)
{
    char name[WHERE_MAX + 16];
    hsock_t *t;

    if (spec == NULL || spec[0] == '\0' || strlen(spec) >= WHERE_MAX)
        return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-socket: expected a UNIX socket path or ADDR:PORT");
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return oa_error_set(err, OA_E_NOMEM, "--haproxy-socket %s: out of memory", spec);
    if (spec[0] == '/') {
        if (strlen(spec) >= sizeof(t->path)) {
            free(t);
            return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-socket %s: the UNIX socket path is longer than %zu "
                                "bytes", spec, sizeof(t->path) - 1);
        }
        t->is_unix = 1;
        memcpy(t->path, spec, strlen(spec) + 1);
    } else if (parse_tcp_spec(spec, &t->addr) != 0) {
        free(t);
        return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-socket %s: expected a UNIX socket path or a numeric "
                            "loopback ADDR:PORT", spec);
    }
    snprintf(t->where, sizeof(t->where), "%s", spec);
    t->loop = oa_delivery_loop(d);
    t->check_ms = env_ms("OA_TEST_HAPROXY_CHECK_MS", CHECK_MS);
    t->exchange_ms = env_ms("OA_TEST_HAPROXY_EXCHANGE_MS", EXCHANGE_MS);
    t->backoff_min_ms = env_ms("OA_TEST_HAPROXY_BACKOFF_MS", BACKOFF_MIN_MS);
    t->backoff_max_ms = t->backoff_min_ms * (BACKOFF_MAX_MS / BACKOFF_MIN_MS);
    snprintf(name, sizeof(name), "haproxy:%s", spec);
    if (oa_dtarget_attach(d, &t->base, &hsock_ops, name) != 0) {
        free(t);
        return oa_error_set(err, OA_E_NOMEM, "--haproxy-socket %s: out of memory", spec);
    }
    /* Neither fails for a valid loop; from here on the delivery closes and frees the target. */
    uv_timer_init(t->loop, &t->timer);
    uv_timer_init(t->loop, &t->deadline);
    t->timer.data = t;
    t->deadline.data = t;
    t->open_handles = 2;
    return 0;
}
