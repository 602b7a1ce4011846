/*
 * The JSON of etcd's v3 gateway: the bodies of the KV and lease calls, and the pieces every answer is made of (keys
 * and values in base64, int64 numbers as strings). The calls themselves run in etcd.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_internal.h"
#include "oa_codec.h"

int64_t etcd_json_int64(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return (int64_t)strtoll(json_string_value(v), NULL, 10);
    return 0;
}

int etcd_json_bytes(const json_t *obj, const char *name, unsigned char **out, size_t *len)
{
    const json_t *v = json_object_get(obj, name);
    size_t n = json_is_string(v) ? json_string_length(v) : 0, got = 0;

    *out = malloc(n / 4 * 3 + 1);
    *len = 0;
    if (*out == NULL)
        return UV_ENOMEM;
    if (n > 0 && oa_base64_decode(json_string_value(v), n, *out, n / 4 * 3, &got) != 0) {
        free(*out);
        *out = NULL;
        return UV_EINVAL;
    }
    (*out)[got] = '\0';
    *len = got;
    return 0;
}

json_t *etcd_json_b64(const void *p, size_t n)
{
    oa_buf_t b = {0};
    json_t *s = NULL;

    if (oa_base64_encode(&b, p, n) == 0)
        s = json_stringn(b.data != NULL ? b.data : "", b.len);
    oa_buf_free(&b);
    return s;
}

int etcd_kv_parse(const json_t *o, oa_etcd_kv_t *kv)
{
    unsigned char *key = NULL, *value = NULL;
    int rc;

    memset(kv, 0, sizeof(*kv));
    if (!json_is_object(o))
        return UV_EINVAL;
    rc = etcd_json_bytes(o, "key", &key, &kv->key_len);
    if (rc == 0)
        rc = etcd_json_bytes(o, "value", &value, &kv->value_len);
    if (rc != 0) {
        free(key);
        return rc;
    }
    kv->key = key;
    kv->value = value;
    kv->create_revision = etcd_json_int64(o, "create_revision");
    kv->mod_revision = etcd_json_int64(o, "mod_revision");
    kv->version = etcd_json_int64(o, "version");
    kv->lease = etcd_json_int64(o, "lease");
    return 0;
}

void etcd_kv_free(oa_etcd_kv_t *kv)
{
    free((void *)kv->key);
    free((void *)kv->value);
    memset(kv, 0, sizeof(*kv));
}

void oa_etcd_prefix_end(const void *prefix, size_t prefix_len, unsigned char *out, size_t *out_len)
{
    const unsigned char *p = prefix;
    size_t i = prefix_len;

    while (i > 0 && p[i - 1] == 0xff)
        i--;
    if (i == 0) {
        out[0] = 0;
        *out_len = 1;
        return;
    }
    memcpy(out, p, i);
    out[i - 1]++;
    *out_len = i;
}

/* ---- request bodies ---- */

/* etcd's JSON reads an int64 from a string as from a number; a string keeps every digit whatever the reader. */
static json_t *int64_json(int64_t v)
{
    char text[24];

    snprintf(text, sizeof(text), "%lld", (long long)v);
    return json_string(text);
}

/* Sets obj[name] to v (stolen). A NULL v (out of memory upstream) makes the object unusable: *bad is set. */
static void set(json_t *obj, const char *name, json_t *v, int *bad)
{
    if (v == NULL || json_object_set_new(obj, name, v) != 0)
        *bad = 1;
}

/* {"key", "range_end"} of a key or a range, into obj. */
static void set_range(json_t *obj, const void *key, size_t key_len, const void *end, size_t end_len, int *bad)
{
    set(obj, "key", etcd_json_b64(key, key_len), bad);
    if (end != NULL)
        set(obj, "range_end", etcd_json_b64(end, end_len), bad);
}

/* A new object, or NULL with obj released when something failed while filling it. */
static json_t *checked(json_t *obj, int bad)
{
    if (!bad)
        return obj;
    json_decref(obj);
    return NULL;
}

static json_t *put_body(const void *key, size_t key_len, const void *value, size_t value_len, int64_t lease)
{
    json_t *o = json_object();
    int bad = o == NULL;

    if (!bad) {
        set(o, "key", etcd_json_b64(key, key_len), &bad);
        set(o, "value", etcd_json_b64(value, value_len), &bad);
        if (lease != 0)
            set(o, "lease", int64_json(lease), &bad);
    }
    return checked(o, bad);
}

static json_t *range_body(const void *key, size_t key_len, const void *end, size_t end_len)
{
    json_t *o = json_object();
    int bad = o == NULL;

    if (!bad)
        set_range(o, key, key_len, end, end_len, &bad);
    return checked(o, bad);
}

int oa_etcd_range(oa_etcd_t *c, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                  int64_t revision, int64_t limit, oa_etcd_cb cb, void *data)
{
    json_t *o;
    int bad = 0;

    if (key_len == 0)
        return UV_EINVAL;
    o = range_body(key, key_len, range_end, range_end_len);
    if (o != NULL && revision > 0)
        set(o, "revision", int64_json(revision), &bad);
    if (o != NULL && limit > 0)
        set(o, "limit", int64_json(limit), &bad);
    return etcd_call_start(c, ETCD_RANGE, checked(o, bad), ETCD_ANY_MEMBER, cb, data);
}

int oa_etcd_put(oa_etcd_t *c, const void *key, size_t key_len, const void *value, size_t value_len, int64_t lease,
                oa_etcd_cb cb, void *data)
{
    if (key_len == 0)
        return UV_EINVAL;
    return etcd_call_start(c, ETCD_PUT, put_body(key, key_len, value, value_len, lease), ETCD_ANY_MEMBER, cb, data);
}

int oa_etcd_delete(oa_etcd_t *c, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                   oa_etcd_cb cb, void *data)
{
    if (key_len == 0)
        return UV_EINVAL;
    return etcd_call_start(c, ETCD_DELETE, range_body(key, key_len, range_end, range_end_len), ETCD_ANY_MEMBER, cb,
                           data);
}

static json_t *cmp_json(const oa_etcd_cmp_t *cmp)
{
    static const char *const targets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
    static const char *const fields[] = {"version", "create_revision", "mod_revision", "value", "lease"};
    static const char *const results[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
    json_t *o;
    int bad = 0;

    if ((size_t)cmp->target >= OA_ARRAY_SIZE(targets) || (size_t)cmp->result >= OA_ARRAY_SIZE(results) ||
        cmp->key_len == 0 || (o = json_object()) == NULL)
        return NULL;
    set(o, "key", etcd_json_b64(cmp->key, cmp->key_len), &bad);
    set(o, "target", json_string(targets[cmp->target]), &bad);
    set(o, "result", json_string(results[cmp->result]), &bad);
    if (cmp->target == OA_ETCD_TARGET_VALUE)
        set(o, fields[cmp->target], etcd_json_b64(cmp->value, cmp->value_len), &bad);
    else
        set(o, fields[cmp->target], int64_json(cmp->number), &bad);
    if (cmp->range_end_len > 0)
        set(o, "range_end", etcd_json_b64(cmp->range_end, cmp->range_end_len), &bad);
    return checked(o, bad);
}

static json_t *op_json(const oa_etcd_op_t *op)
{
    json_t *o = json_object();
    int bad = o == NULL || op->key_len == 0;

    if (bad)
        return checked(o, bad);
    switch (op->kind) {
    case OA_ETCD_OP_RANGE:
        set(o, "request_range", range_body(op->key, op->key_len, op->range_end, op->range_end_len), &bad);
        break;
    case OA_ETCD_OP_PUT:
        set(o, "request_put", put_body(op->key, op->key_len, op->value, op->value_len, op->lease), &bad);
        break;
    case OA_ETCD_OP_DELETE:
        set(o, "request_delete_range", range_body(op->key, op->key_len, op->range_end, op->range_end_len), &bad);
        break;
    default:
        bad = 1;
    }
    return checked(o, bad);
}

/* A JSON array of n items made by one of the functions above, or NULL. */
static json_t *array_of(const void *items, size_t n, size_t size, json_t *(*make)(const void *))
{
    json_t *a = json_array();
    size_t i;

    for (i = 0; a != NULL && i < n; i++) {
        if (json_array_append_new(a, make((const char *)items + i * size)) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *cmp_item(const void *p)
{
    return cmp_json(p);
}

static json_t *op_item(const void *p)
{
    return op_json(p);
}

int oa_etcd_txn(oa_etcd_t *c, const oa_etcd_cmp_t *cmp, size_t n_cmp, const oa_etcd_op_t *success, size_t n_success,
                const oa_etcd_op_t *failure, size_t n_failure, oa_etcd_cb cb, void *data)
{
    json_t *o = json_object();
    int bad = o == NULL;

    if (!bad) {
        set(o, "compare", array_of(cmp, n_cmp, sizeof(*cmp), cmp_item), &bad);
        set(o, "success", array_of(success, n_success, sizeof(*success), op_item), &bad);
        set(o, "failure", array_of(failure, n_failure, sizeof(*failure), op_item), &bad);
    }
    if (bad && o != NULL) {
        json_decref(o);
        return c->closing ? UV_ECANCELED : UV_EINVAL;
    }
    return etcd_call_start(c, ETCD_TXN, o, ETCD_ANY_MEMBER, cb, data);
}

static int lease_call(oa_etcd_t *c, etcd_kind_t kind, const char *field, int64_t v, oa_etcd_cb cb, void *data)
{
    json_t *o = json_object();
    int bad = o == NULL;

    if (!bad)
        set(o, field, int64_json(v), &bad);
    return etcd_call_start(c, kind, checked(o, bad), ETCD_ANY_MEMBER, cb, data);
}

int oa_etcd_lease_grant(oa_etcd_t *c, int64_t ttl_s, oa_etcd_cb cb, void *data)
{
    if (ttl_s <= 0)
        return UV_EINVAL;
    return lease_call(c, ETCD_GRANT, "TTL", ttl_s, cb, data);
}

int oa_etcd_lease_keepalive(oa_etcd_t *c, int64_t lease, oa_etcd_cb cb, void *data)
{
    return lease_call(c, ETCD_KEEPALIVE, "ID", lease, cb, data);
}

int oa_etcd_lease_revoke(oa_etcd_t *c, int64_t lease, oa_etcd_cb cb, void *data)
{
    return lease_call(c, ETCD_REVOKE, "ID", lease, cb, data);
}
