/*
 * Fuzz target: oa_conf_patch, the strict validator behind PUT /v1/ocsp, on arbitrary bytes.
 *
 * Every input is applied as a body to each of a few current configurations under each of a few responder URLs,
 * and the answers are checked against the contract in oa_conf.h and against each other:
 *   - on success every setting is within its range, *changed is exactly the set of settings that differ from the
 *     current ones, OCSP is not switched on without a responder URL, applying the same body again changes
 *     nothing, and the result written back as JSON (GET, then PUT of what it returned) is accepted unchanged;
 *   - on failure *out and *changed are untouched, the code is invalid_schema or no_responder_url (the latter only
 *     without a URL), and the sentence is non-empty printable ASCII that fits the error buffer;
 *   - whether a body is accepted, and with which code it is refused, does not depend on the current values.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oa_conf.h"
#include "oa_error.h"
#include "oa_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                                                                             \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_conf_patch: check failed: %s: ", #cond);                                           \
            fprintf(stderr, __VA_ARGS__);                                                                            \
            fprintf(stderr, "\n");                                                                                   \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

/* NULL and "" both mean "the certificate names no responder"; the last one is not ASCII. */
static const char *const urls[] = {NULL, "", "http://ocsp.example.com/", "http://ocsp.example.com/caf\xc3\xa9"};

/* A byte pattern no valid result has, to see whether a failing call wrote anything. */
#define POISON         0xa5
#define CHANGED_POISON 0xdeadbeefu

static void currents(oa_conf_t cur[3])
{
    oa_conf_defaults(&cur[0]);
    cur[1] = (oa_conf_t){true, OA_CONF_QUERY_FREQUENCY_MAX, OA_CONF_RESPONSE_TIMEOUT_MAX,
                         OA_CONF_RECOVERY_FREQUENCY_MAX, OA_CONF_RECOVERY_MAX_TRIES_MAX};
    cur[2] = (oa_conf_t){false, OA_CONF_QUERY_FREQUENCY_MIN, OA_CONF_RESPONSE_TIMEOUT_MIN,
                         OA_CONF_RECOVERY_FREQUENCY_MIN, OA_CONF_RECOVERY_MAX_TRIES_MIN};
}

static unsigned diff(const oa_conf_t *a, const oa_conf_t *b)
{
    unsigned m = 0;

    if (a->ocsp_functionality != b->ocsp_functionality)
        m |= OA_CONF_F_OCSP_FUNCTIONALITY;
    if (a->query_frequency != b->query_frequency)
        m |= OA_CONF_F_QUERY_FREQUENCY;
    if (a->response_timeout != b->response_timeout)
        m |= OA_CONF_F_RESPONSE_TIMEOUT;
    if (a->recovery_frequency != b->recovery_frequency)
        m |= OA_CONF_F_RECOVERY_FREQUENCY;
    if (a->recovery_max_tries != b->recovery_max_tries)
        m |= OA_CONF_F_RECOVERY_MAX_TRIES;
    return m;
}

static int same(const oa_conf_t *a, const oa_conf_t *b)
{
    return diff(a, b) == 0;
}

static void check_ranges(const oa_conf_t *c)
{
    CHECK(c->query_frequency >= OA_CONF_QUERY_FREQUENCY_MIN && c->query_frequency <= OA_CONF_QUERY_FREQUENCY_MAX,
          "query_frequency %d", c->query_frequency);
    CHECK(c->response_timeout >= OA_CONF_RESPONSE_TIMEOUT_MIN && c->response_timeout <= OA_CONF_RESPONSE_TIMEOUT_MAX,
          "response_timeout %d", c->response_timeout);
    CHECK(c->recovery_frequency >= OA_CONF_RECOVERY_FREQUENCY_MIN &&
              c->recovery_frequency <= OA_CONF_RECOVERY_FREQUENCY_MAX,
          "recovery_frequency %d", c->recovery_frequency);
    CHECK(c->recovery_max_tries >= OA_CONF_RECOVERY_MAX_TRIES_MIN &&
              c->recovery_max_tries <= OA_CONF_RECOVERY_MAX_TRIES_MAX,
          "recovery_max_tries %d", c->recovery_max_tries);
}

static void check_sentence(const oa_error_t *err)
{
    size_t i, n = strnlen(err->text, sizeof(err->text));

    CHECK(n > 0 && n < sizeof(err->text), "error sentence of %zu bytes", n);
    for (i = 0; i < n; i++)
        CHECK(err->text[i] >= 0x20 && err->text[i] < 0x7f, "byte 0x%02x at %zu of the error sentence \"%s\"",
              (unsigned char)err->text[i], i, err->text);
}

/* The names oa_conf_changed_names writes are whole key names, one per bit, within the buffer. */
static void check_names(unsigned changed)
{
    char full[128], shortbuf[20];
    size_t commas = 0, i, bits = 0;

    memset(shortbuf, POISON, sizeof(shortbuf));
    oa_conf_changed_names(changed, full, sizeof(full));
    oa_conf_changed_names(changed, shortbuf, 16);
    CHECK((unsigned char)shortbuf[16] == POISON, "oa_conf_changed_names wrote past its buffer");
    CHECK(memchr(shortbuf, '\0', 16) != NULL, "oa_conf_changed_names left its buffer unterminated");
    CHECK(strncmp(full, shortbuf, strlen(shortbuf)) == 0, "short names are not a prefix of the full list");
    for (i = 0; full[i] != '\0'; i++)
        commas += full[i] == ',';
    for (i = 0; i < 5; i++)
        bits += (changed >> i) & 1;
    CHECK(bits == 0 ? full[0] == '\0' : commas + 1 == bits, "\"%s\" for mask 0x%x", full, changed);
}

/* GET then PUT of what it returned: the API's own JSON must be accepted and change nothing. */
static void check_round_trip(const oa_conf_t *c, const char *url)
{
    json_t *obj = oa_conf_to_json(c, url);
    char *text;
    oa_conf_t again;
    unsigned changed = CHANGED_POISON;
    oa_error_t err;
    int rc;

    CHECK(obj != NULL, "oa_conf_to_json failed");
    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    CHECK(text != NULL, "json_dumps failed");
    rc = oa_conf_patch(c, url, text, strlen(text), &again, &changed, &err);
    /* Writing back ocsp_functionality:true is refused without a URL even when it is already on. */
    if ((url == NULL || url[0] == '\0') && c->ocsp_functionality) {
        CHECK(rc == -1 && err.code == OA_E_NO_RESPONDER_URL, "round trip of %s: rc %d", text, rc);
    } else {
        CHECK(rc == 0, "round trip of %s refused: %s", text, err.text);
        CHECK(same(&again, c) && changed == 0, "round trip of %s changed 0x%x", text, changed);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    oa_conf_t cur[3];
    size_t u, i;

    currents(cur);
    for (u = 0; u < OA_ARRAY_SIZE(urls); u++) {
        const char *url = urls[u];
        int no_url = url == NULL || url[0] == '\0';
        int first_rc = 0;
        oa_errcode_t first_code = OA_OK;

        for (i = 0; i < 3; i++) {
            oa_conf_t out, poison, again;
            unsigned changed = CHANGED_POISON, changed2 = CHANGED_POISON;
            oa_error_t err;
            int rc;

            memset(&out, POISON, sizeof(out));
            memset(&poison, POISON, sizeof(poison));
            oa_error_clear(&err);
            rc = oa_conf_patch(&cur[i], url, body, size, &out, &changed, &err);
            CHECK(rc == 0 || rc == -1, "rc %d", rc);
            if (i == 0) {
                first_rc = rc;
                first_code = err.code;
            } else {
                CHECK(rc == first_rc && (rc == 0 || err.code == first_code),
                      "current values changed the outcome: rc %d code %s against rc %d code %s", rc,
                      oa_errcode_name(err.code), first_rc, oa_errcode_name(first_code));
            }
            if (rc != 0) {
                CHECK(memcmp(&out, &poison, sizeof(out)) == 0, "*out written on failure");
                CHECK(changed == CHANGED_POISON, "*changed written on failure");
                CHECK(err.code == OA_E_INVALID_SCHEMA || (err.code == OA_E_NO_RESPONDER_URL && no_url),
                      "code %s (url %s)", oa_errcode_name(err.code), url != NULL ? url : "NULL");
                check_sentence(&err);
                continue;
            }
            check_ranges(&out);
            CHECK(changed == diff(&cur[i], &out), "changed 0x%x, values differ in 0x%x", changed,
                  diff(&cur[i], &out));
            CHECK(!(no_url && out.ocsp_functionality && !cur[i].ocsp_functionality),
                  "OCSP switched on without a responder URL");
            check_names(changed);

            /* The body states absolute values, so a second application is a no-op. */
            rc = oa_conf_patch(&out, url, body, size, &again, &changed2, &err);
            CHECK(rc == 0 && same(&again, &out) && changed2 == 0, "second application: rc %d changed 0x%x", rc,
                  changed2);
            check_round_trip(&out, url);
        }
    }
    return 0;
}
