#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "oa_conf.h"
#include "oa_util.h"

/* The persisted file is a handful of keys; anything far larger is not ours. */
#define CONF_FILE_MAX     (64 * 1024)
#define CONF_FILE_VERSION 1

/* Keys and values quoted inside an error sentence are cut to this many bytes of output. */
#define QUOTE_MAX 64

/* The four integer settings, in the order of the API object, with their ranges and change bits. */
static const struct {
    const char *name;
    size_t offset;
    int min, max;
    unsigned flag;
} int_keys[] = {
    {"query_frequency", offsetof(oa_conf_t, query_frequency), OA_CONF_QUERY_FREQUENCY_MIN,
     OA_CONF_QUERY_FREQUENCY_MAX, OA_CONF_F_QUERY_FREQUENCY},
    {"response_timeout", offsetof(oa_conf_t, response_timeout), OA_CONF_RESPONSE_TIMEOUT_MIN,
     OA_CONF_RESPONSE_TIMEOUT_MAX, OA_CONF_F_RESPONSE_TIMEOUT},
    {"recovery_frequency", offsetof(oa_conf_t, recovery_frequency), OA_CONF_RECOVERY_FREQUENCY_MIN,
     OA_CONF_RECOVERY_FREQUENCY_MAX, OA_CONF_F_RECOVERY_FREQUENCY},
    {"recovery_max_tries", offsetof(oa_conf_t, recovery_max_tries), OA_CONF_RECOVERY_MAX_TRIES_MIN,
     OA_CONF_RECOVERY_MAX_TRIES_MAX, OA_CONF_F_RECOVERY_MAX_TRIES},
};

static int *int_field(oa_conf_t *c, size_t i)
{
    return (int *)((char *)c + int_keys[i].offset);
}

static int int_field_get(const oa_conf_t *c, size_t i)
{
    return *(const int *)((const char *)c + int_keys[i].offset);
}

void oa_conf_defaults(oa_conf_t *c)
{
    c->ocsp_functionality = false;
    c->query_frequency = 3600;
    c->response_timeout = 1;
    c->recovery_frequency = 60;
    c->recovery_max_tries = 5;
}

json_t *oa_conf_to_json(const oa_conf_t *c, const char *responder_url)
{
    return json_pack("{s:b, s:s, s:i, s:i, s:i, s:i}", "ocsp_functionality", (int)c->ocsp_functionality,
                     "responder_url", responder_url != NULL ? responder_url : "", "query_frequency",
                     c->query_frequency, "response_timeout", c->response_timeout, "recovery_frequency",
                     c->recovery_frequency, "recovery_max_tries", c->recovery_max_tries);
}

/*
 * Copies n bytes of s into out (QUOTE_MAX + 8 bytes) for use inside an error sentence. Error sentences end up in
 * JSON responses and log lines, so only printable ASCII is kept as is; quotes and backslashes are escaped and every
 * other byte becomes \xNN. That also means a cut can never split a UTF-8 sequence.
 */
static const char *quote_for_error(const char *s, size_t n, char out[QUOTE_MAX + 8])
{
    size_t i, o = 0;
    unsigned char c;

    for (i = 0; i < n; i++) {
        c = (unsigned char)s[i];
        if (o + 4 > QUOTE_MAX) {
            memcpy(out + o, "...", 4);
            return out;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
        } else {
            snprintf(out + o, 5, "\\x%02x", c);
            o += 4;
        }
    }
    out[o] = '\0';
    return out;
}

/* Copies jansson's error text into out, keeping printable ASCII only: its "near '...'" part quotes raw body bytes,
 * which may be control bytes or not UTF-8 at all, and the sentence must be safe to put in a JSON response. */
static const char *clean_text(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    unsigned char c;

    for (; *in != '\0' && o + 5 < outlen; in++) {
        c = (unsigned char)*in;
        if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
        } else {
            snprintf(out + o, 5, "\\x%02x", c);
            o += 4;
        }
    }
    out[o] = '\0';
    return out;
}

/* A phrase naming the JSON type of v, for sentences like "got a string". */
static const char *type_phrase(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown value";
}

/*
 * Applies one of the five settable keys to c after checking its type and range. Returns 0, or -1 with err filled
 * (OA_E_INVALID_SCHEMA) for a wrong value or a key that is not one of the five.
 */
static int apply_key(oa_conf_t *c, const char *key, const json_t *v, oa_error_t *err)
{
    char q[QUOTE_MAX + 8];
    json_int_t n;
    size_t i;

    if (strcmp(key, "ocsp_functionality") == 0) {
        if (!json_is_boolean(v))
            return oa_error_set(err, OA_E_INVALID_SCHEMA, "ocsp_functionality: must be true or false, got %s",
                                type_phrase(v));
        c->ocsp_functionality = json_is_true(v);
        return 0;
    }
    for (i = 0; i < OA_ARRAY_SIZE(int_keys); i++) {
        if (strcmp(key, int_keys[i].name) != 0)
            continue;
        if (!json_is_integer(v))
            return oa_error_set(err, OA_E_INVALID_SCHEMA, "%s: must be an integer from %d to %d, got %s",
                                int_keys[i].name, int_keys[i].min, int_keys[i].max, type_phrase(v));
        n = json_integer_value(v);
        if (n < int_keys[i].min || n > int_keys[i].max)
            return oa_error_set(err, OA_E_INVALID_SCHEMA,
                                "%s: must be an integer from %d to %d, got %" JSON_INTEGER_FORMAT, int_keys[i].name,
                                int_keys[i].min, int_keys[i].max, n);
        *int_field(c, i) = (int)n;
        return 0;
    }
    return oa_error_set(err, OA_E_INVALID_SCHEMA, "unknown key \"%s\"", quote_for_error(key, strlen(key), q));
}

/* responder_url is read-only: it may appear in a body only with exactly its current value. */
static int check_responder_url(const char *current, const json_t *v, oa_error_t *err)
{
    char q[QUOTE_MAX + 8];
    size_t len;

    if (!json_is_string(v))
        return oa_error_set(err, OA_E_INVALID_SCHEMA, "responder_url: must be a string, got %s", type_phrase(v));
    len = json_string_length(v);
    if (len != strlen(current) || memcmp(json_string_value(v), current, len) != 0)
        return oa_error_set(err, OA_E_INVALID_SCHEMA,
                            "responder_url: is read-only and may only be sent with its current value \"%s\"",
                            quote_for_error(current, strlen(current), q));
    return 0;
}

unsigned oa_conf_diff(const oa_conf_t *a, const oa_conf_t *b)
{
    unsigned mask = 0;
    size_t i;

    if (a->ocsp_functionality != b->ocsp_functionality)
        mask |= OA_CONF_F_OCSP_FUNCTIONALITY;
    for (i = 0; i < OA_ARRAY_SIZE(int_keys); i++) {
        if (int_field_get(a, i) != int_field_get(b, i))
            mask |= int_keys[i].flag;
    }
    return mask;
}

/* Parses text as exactly one JSON object. JSON_REJECT_DUPLICATES makes a repeated key an error, and leaving out
 * JSON_DISABLE_EOF_CHECK makes jansson refuse anything but whitespace after the value. */
static json_t *load_object(const char *text, size_t len, const char *what, oa_errcode_t code, oa_error_t *err)
{
    char clean[JSON_ERROR_TEXT_LENGTH * 4];
    json_error_t jerr;
    json_t *root;

    if (len == 0) {
        oa_error_set(err, code, "%s: empty, expected a JSON object", what);
        return NULL;
    }
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        oa_error_set(err, code, "%s: invalid JSON at line %d column %d: %s", what, jerr.line, jerr.column,
                     clean_text(jerr.text, clean, sizeof(clean)));
        return NULL;
    }
    if (!json_is_object(root)) {
        oa_error_set(err, code, "%s: not a JSON object", what);
        json_decref(root);
        return NULL;
    }
    return root;
}

int oa_conf_patch(const oa_conf_t *cur, const char *responder_url, const char *body, size_t len, oa_conf_t *out,
                  unsigned *changed, oa_error_t *err)
{
    const char *url = responder_url != NULL ? responder_url : "";
    json_t *root = NULL, *v;
    const char *key;
    oa_conf_t next;
    int enabling = 0, rc = -1;

    root = load_object(body, len, "body", OA_E_INVALID_SCHEMA, err);
    if (root == NULL)
        goto out;
    next = *cur;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "responder_url") == 0) {
            if (check_responder_url(url, v, err) != 0)
                goto out;
            continue;
        }
        if (apply_key(&next, key, v, err) != 0)
            goto out;
        if (strcmp(key, "ocsp_functionality") == 0 && json_is_true(v))
            enabling = 1;
    }
    /* Checked only after every key passed, so a body with both a schema problem and a missing URL reports the
     * schema problem, which the client can fix by itself. */
    if (enabling && url[0] == '\0') {
        oa_error_set(err, OA_E_NO_RESPONDER_URL,
                     "ocsp_functionality: cannot be enabled because responder_url is empty "
                     "(the proxy certificate names no OCSP responder)");
        goto out;
    }
    *changed = oa_conf_diff(cur, &next);
    *out = next;
    rc = 0;

out:
    json_decref(root);
    return rc;
}

void oa_conf_changed_names(unsigned changed, char *out, size_t outlen)
{
    static const struct {
        unsigned flag;
        const char *name;
    } names[] = {
        {OA_CONF_F_OCSP_FUNCTIONALITY, "ocsp_functionality"}, {OA_CONF_F_QUERY_FREQUENCY, "query_frequency"},
        {OA_CONF_F_RESPONSE_TIMEOUT, "response_timeout"},     {OA_CONF_F_RECOVERY_FREQUENCY, "recovery_frequency"},
        {OA_CONF_F_RECOVERY_MAX_TRIES, "recovery_max_tries"},
    };
    size_t i, used = 0, need;

    if (outlen == 0)
        return;
    out[0] = '\0';
    for (i = 0; i < OA_ARRAY_SIZE(names); i++) {
        if (!(changed & names[i].flag))
            continue;
        /* A name that does not fit whole is left out, so a short buffer never holds half a key. */
        need = (used > 0 ? 1 : 0) + strlen(names[i].name);
        if (need >= outlen - used)
            return;
        snprintf(out + used, outlen - used, "%s%s", used > 0 ? "," : "", names[i].name);
        used += need;
    }
}

int oa_conf_save(const char *path, const oa_conf_t *c)
{
    oa_buf_t file = {0};
    json_t *obj = NULL;
    char *text = NULL;
    int rc = UV_ENOMEM;

    obj = json_pack("{s:i, s:b, s:i, s:i, s:i, s:i}", "version", CONF_FILE_VERSION, "ocsp_functionality",
                    (int)c->ocsp_functionality, "query_frequency", c->query_frequency, "response_timeout",
                    c->response_timeout, "recovery_frequency", c->recovery_frequency, "recovery_max_tries",
                    c->recovery_max_tries);
    if (obj == NULL)
        goto out;
    text = json_dumps(obj, JSON_INDENT(2));
    if (text == NULL)
        goto out;
    /* A trailing newline keeps the file pleasant for cat and diff; the loader ignores it. */
    if (oa_buf_append_str(&file, text) != 0 || oa_buf_append(&file, "\n", 1) != 0)
        goto out;
    rc = oa_file_write_atomic(path, file.data, file.len, 0600);

out:
    oa_buf_free(&file);
    free(text);
    json_decref(obj);
    return rc;
}

int oa_conf_load(const char *path, oa_conf_t *out, oa_error_t *err)
{
    oa_buf_t buf = {0};
    json_t *root = NULL, *v;
    oa_error_t why;
    const char *key;
    oa_conf_t c;
    int rc;

    rc = oa_file_read(path, CONF_FILE_MAX, &buf);
    if (rc == UV_ENOENT)
        goto out;
    if (rc != 0) {
        rc = oa_error_set(err, OA_E_BAD_FILE, "%s: cannot read: %s", path,
                          rc == UV_EFBIG ? "larger than 64 KiB" : uv_strerror(rc));
        goto out;
    }
    rc = -1;
    root = load_object(buf.data, buf.len, path, OA_E_BAD_FILE, err);
    if (root == NULL)
        goto out;
    oa_conf_defaults(&c);
    json_object_foreach(root, key, v) {
        if (strcmp(key, "version") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) != CONF_FILE_VERSION) {
                oa_error_set(err, OA_E_BAD_FILE, "%s: version: must be %d", path, CONF_FILE_VERSION);
                goto out;
            }
            continue;
        }
        if (apply_key(&c, key, v, &why) != 0) {
            oa_error_set(err, OA_E_BAD_FILE, "%s: %s", path, why.text);
            goto out;
        }
    }
    *out = c;
    rc = 0;

out:
    json_decref(root);
    oa_buf_free(&buf);
    return rc;
}
