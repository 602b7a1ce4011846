#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fetch.h"
#include "oa_codec.h"
#include "oa_ocsp.h"
#include "oa_util.h"

#define DEFAULT_TIMEOUT_MS 1000
#define GET_MAX_ENCODED    255 /* RFC 6960 Appendix A.1: GET is for requests this small once base64-encoded */

struct oa_ocsp_query_s {
    const oa_ocsp_target_t *target; /* borrowed: the caller keeps it alive until cb fires */
    OCSP_REQUEST *req;              /* owned: its nonce is checked against the answer */
    oa_fetch_t *fetch;              /* valid until on_fetched returns */
    oa_ocsp_query_cb cb;
    void *data;
    uint64_t start_ns;
};

static void query_free(oa_ocsp_query_t *q)
{
    OCSP_REQUEST_free(q->req);
    free(q);
}

static void on_fetched(oa_fetch_t *f, int err, const char *errtext, const unsigned char *body, size_t len, void *data)
{
    oa_ocsp_query_t *q = data;
    unsigned duration_ms = (unsigned)((uv_hrtime() - q->start_ns) / 1000000);
    oa_ocsp_result_t res;
    oa_error_t verr;

    (void)f;
    q->fetch = NULL;
    memset(&res, 0, sizeof(res));
    oa_error_clear(&verr);
    /* A cancelled query arrives here with OA_E_OCSP_CANCELLED even when the answer had come in already, so the
     * target, which its owner may have dropped, is never touched after a cancel. */
    if (err != 0) {
        q->cb(q, err, errtext, NULL, duration_ms, q->data);
    } else if (oa_ocsp_verify(q->target, body, len, q->req, time(NULL), &res, &verr) != 0) {
        q->cb(q, (int)verr.code, verr.text, NULL, duration_ms, q->data);
    } else {
        q->cb(q, 0, NULL, &res, duration_ms, q->data);
        oa_ocsp_result_clear(&res);
    }
    /* Called from the fetch's close callback: nothing of ours runs after this, so the query can go now. */
    query_free(q);
}

/*
 * The GET form of RFC 6960 Appendix A.1: base URL, '/', then the request's base64 with '+', '/' and '=' escaped.
 * Returns a malloc'ed URL, or NULL when the request is too large for GET (or memory ran out): then POST is used.
 */
static char *get_url(const char *base, const unsigned char *der, int der_len)
{
    oa_buf_t b64, url;
    size_t i;

    if (der_len <= 0 || (size_t)(der_len + 2) / 3 * 4 > GET_MAX_ENCODED)
        return NULL;
    /* A query string in the base URL would swallow the appended request; such responders get POST. */
    if (strchr(base, '?') != NULL)
        return NULL;
    oa_buf_init(&b64);
    oa_buf_init(&url);
    if (oa_base64_encode(&b64, der, (size_t)der_len) != 0)
        goto fail;
    if (oa_buf_append_str(&url, base) != 0)
        goto fail;
    if ((url.len == 0 || url.data[url.len - 1] != '/') && oa_buf_append(&url, "/", 1) != 0)
        goto fail;
    for (i = 0; i < b64.len; i++) {
        int rc;

        switch (b64.data[i]) {
        case '+':
            rc = oa_buf_append(&url, "%2B", 3);
            break;
        case '/':
            rc = oa_buf_append(&url, "%2F", 3);
            break;
        case '=':
            rc = oa_buf_append(&url, "%3D", 3);
            break;
        default:
            rc = oa_buf_append(&url, &b64.data[i], 1);
            break;
        }
        if (rc != 0)
            goto fail;
    }
    oa_buf_free(&b64);
    return url.data;
fail:
    oa_buf_free(&b64);
    oa_buf_free(&url);
    return NULL;
}

int oa_ocsp_query_start(uv_loop_t *loop, const oa_ocsp_target_t *t, const oa_ocsp_query_opts_t *opts,
                        oa_ocsp_query_cb cb, void *data, oa_ocsp_query_t **out, oa_error_t *err)
{
    static const oa_ocsp_query_opts_t defaults = {DEFAULT_TIMEOUT_MS, 0, false, true};
    oa_ocsp_query_t *q = NULL;
    unsigned char *der = NULL;
    char *url = NULL;
    oa_fetch_url_t parsed;
    int der_len, rc = -1;

    if (out != NULL)
        *out = NULL;
    if (opts == NULL)
        opts = &defaults;
    if (t == NULL || t->responder_url == NULL || t->responder_url[0] == '\0')
        return oa_error_set(err, OA_E_NO_RESPONDER_URL,
                            "The certificate names no OCSP responder and no responder URL was given.");
    /* An unusable URL is refused here, before any work, so the caller hears of it at once. */
    if (oa_fetch_url_parse(t->responder_url, &parsed, err) != 0)
        return -1;
    oa_fetch_url_free(&parsed);

    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        oa_error_set(err, OA_E_NOMEM, "Out of memory while starting an OCSP query.");
        goto out;
    }
    q->target = t;
    q->cb = cb;
    q->data = data;
    if (oa_ocsp_request_new(t, opts->with_nonce, &q->req, err) != 0)
        goto out;
    der_len = i2d_OCSP_REQUEST(q->req, &der);
    if (der_len <= 0) {
        oa_error_set(err, OA_E_INTERNAL, "Could not encode the OCSP request");
        oa_error_add_ssl(err);
        goto out;
    }
    if (opts->use_get)
        url = get_url(t->responder_url, der, der_len);
    q->start_ns = uv_hrtime();
    if (url != NULL)
        rc = oa_fetch_start(loop, url, OA_FETCH_GET, NULL, 0, NULL,
                            opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS, opts->max_body, on_fetched,
                            q, &q->fetch, err);
    else
        rc = oa_fetch_start(loop, t->responder_url, OA_FETCH_POST, der, (size_t)der_len, "application/ocsp-request",
                            opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS, opts->max_body, on_fetched,
                            q, &q->fetch, err);
    if (rc == 0 && out != NULL)
        *out = q;
out:
    OPENSSL_free(der);
    free(url);
    if (rc != 0 && q != NULL)
        query_free(q);
    return rc;
}

void oa_ocsp_query_cancel(oa_ocsp_query_t *q)
{
    if (q != NULL && q->fetch != NULL)
        oa_fetch_cancel(q->fetch);
}
