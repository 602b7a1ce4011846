/*
 * The texts cluster mode keeps in the store (oa_cluster.h describes them): the configuration, the status and state
 * records without their number, and a node's registry entry. Encoders return compact JSON; decoders are strict about
 * what the daemon will act on and lenient about the rest.
 */
#include <openssl/evp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_util.h"

int64_t cluster_json_int(json_t *o, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(o, key);

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

char *cluster_conf_encode(const oa_conf_t *conf)
{
    json_t *o = oa_conf_stored_json(conf);
    char *s;

    if (o == NULL)
        return NULL;
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

int cluster_conf_decode_json(json_t *o, oa_conf_t *out)
{
    oa_error_t err;

    return oa_conf_from_stored(o, out, &err);
}

int cluster_conf_decode(const char *text, size_t len, oa_conf_t *out)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    int rc = cluster_conf_decode_json(o, out);

    json_decref(o);
    return rc;
}

char *cluster_status_encode(const char *node_id, const char *certid, int64_t now_ms, const oa_ocsp_result_t *res)
{
    json_t *msg = NULL;
    char *b64 = NULL, *text = NULL;
    int n;

    b64 = malloc(4 * ((res->der_len + 2) / 3) + 1);
    if (b64 == NULL)
        goto out;
    n = EVP_EncodeBlock((unsigned char *)b64, res->der, (int)res->der_len);
    b64[n] = '\0';
    /* The parsed fields are for whoever reads the store (an operator with redis-cli, a monitoring probe); nodes
     * trust only the DER, which they verify themselves. Times are Unix seconds. */
    msg = json_pack("{s:s, s:s, s:s, s:I, s:s, s:I, s:I, s:I, s:s}", "type", "status", "node", node_id, "certid",
                    certid, "ts",
                    (json_int_t)now_ms, "cert_status", oa_cert_status_name(res->cert_status), "produced_at",
                    (json_int_t)res->produced_at, "this_update", (json_int_t)res->this_update, "next_update",
                    (json_int_t)res->next_update, "der", b64);
    if (msg != NULL && res->cert_status == OA_CERT_REVOKED &&
        (json_object_set_new(msg, "revocation_time", json_integer((json_int_t)res->revocation_time)) != 0 ||
         (res->revocation_reason >= 0 &&
          json_object_set_new(msg, "revocation_reason", json_integer(res->revocation_reason)) != 0)))
        goto out;
    text = msg != NULL ? json_dumps(msg, JSON_COMPACT) : NULL;
out:
    json_decref(msg);
    free(b64);
    return text;
}

unsigned char *cluster_status_der(json_t *o, size_t *len)
{
    const char *b64 = json_string_value(json_object_get(o, "der"));
    unsigned char *der;
    size_t n64, pad = 0;
    int n;

    if (b64 == NULL)
        return NULL;
    n64 = strlen(b64);
    if (n64 == 0 || n64 % 4 != 0)
        return NULL;
    der = malloc(n64 / 4 * 3 + 1);
    if (der == NULL)
        return NULL;
    /* EVP_DecodeBlock counts the padding as bytes: take it off. */
    n = EVP_DecodeBlock(der, (const unsigned char *)b64, (int)n64);
    if (b64[n64 - 1] == '=')
        pad++;
    if (n64 > 1 && b64[n64 - 2] == '=')
        pad++;
    if (n <= 0 || (size_t)n <= pad) {
        free(der);
        return NULL;
    }
    *len = (size_t)n - pad;
    return der;
}

char *cluster_state_encode(const char *node_id, const char *certid, int64_t now_ms, const oa_sched_view_t *v)
{
    json_t *msg;
    char *text;

    msg = json_pack("{s:s, s:s, s:s, s:I, s:s, s:b, s:i, s:i, s:I, s:s, s:s}", "type", "state", "node", node_id,
                    "certid", certid, "ts",
                    (json_int_t)now_ms, "state", oa_sched_state_name(v->state), "recovering", (int)v->recovering,
                    "consecutive_failures", v->consecutive_failures, "recovery_tries", v->recovery_tries,
                    "last_attempt_ms", (json_int_t)v->last_attempt_ms, "last_error_code",
                    v->last_error_code != NULL ? v->last_error_code : "", "last_error",
                    v->last_error != NULL ? v->last_error : "");
    text = msg != NULL ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    return text;
}

static int state_from_name(const char *name, oa_sched_state_t *out)
{
    static const oa_sched_state_t all[] = {OA_STATE_DISABLED, OA_STATE_PENDING, OA_STATE_VALID, OA_STATE_RECOVERING,
                                           OA_STATE_INVALIDATED};
    size_t i;

    for (i = 0; name != NULL && i < OA_ARRAY_SIZE(all); i++) {
        if (strcmp(name, oa_sched_state_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    }
    return -1;
}

int cluster_state_decode(json_t *o, oa_sched_view_t *v)
{
    if (state_from_name(json_string_value(json_object_get(o, "state")), &v->state) != 0)
        return -1;
    v->recovering = json_is_true(json_object_get(o, "recovering"));
    v->consecutive_failures = (int)cluster_json_int(o, "consecutive_failures", 0);
    v->recovery_tries = (int)cluster_json_int(o, "recovery_tries", 0);
    v->last_attempt_ms = cluster_json_int(o, "last_attempt_ms", 0);
    v->last_error_code = json_string_value(json_object_get(o, "last_error_code"));
    v->last_error = json_string_value(json_object_get(o, "last_error"));
    if (v->last_error_code == NULL)
        v->last_error_code = "";
    if (v->last_error == NULL)
        v->last_error = "";
    return 0;
}

char *cluster_node_entry_encode(const char *node_id, const char *api, const char *caps, const char *certid)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:[], s:s}", "node_id", node_id, "api", api ? api : "", "version",
                          OA_VERSION, "capabilities", "certid", certid);
    json_t *list = json_object_get(o, "capabilities");
    const char *p = caps;
    char *text;

    while (list != NULL && p != NULL && *p != '\0') {
        size_t len = strcspn(p, ",");

        json_array_append_new(list, json_stringn(p, len));
        p = p[len] == ',' ? p + len + 1 : NULL;
    }
    text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}
