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

/*
 * The keys of the API object, in its order, with everything the module knows about each: where it lives in
 * oa_conf_t, its range and default, and its change bit. Defaults, the API object, the strict reading of a PUT body,
 * the persisted file and the cluster's stored form all come from this one table.
 *
 * responder_url is in the API object and may appear in a PUT body, but it is not a setting: it has no field, no
 * default and no change bit, and neither the file nor the store holds it.
 */
typedef enum key_kind_e {
    KEY_BOOL,     /* a bool field; min, max and dflt are 0 or 1 */
    KEY_INT,      /* an int field within min..max */
    KEY_READ_ONLY /* responder_url: shown and compared, never stored */
} key_kind_t;

typedef struct conf_key_s {
    const char *name;
    key_kind_t kind;
    size_t offset;
    int min, max, dflt;
    unsigned flag;
} conf_key_t;

static const conf_key_t keys[] = {
    {"ocsp_functionality", KEY_BOOL, offsetof(oa_conf_t, ocsp_functionality), 0, 1, 0, OA_CONF_F_OCSP_FUNCTIONALITY},
    {"responder_url", KEY_READ_ONLY, 0, 0, 0, 0, 0},
    {"query_frequency", KEY_INT, offsetof(oa_conf_t, query_frequency), OA_CONF_QUERY_FREQUENCY_MIN,
     OA_CONF_QUERY_FREQUENCY_MAX, 3600, OA_CONF_F_QUERY_FREQUENCY},
    {"response_timeout", KEY_INT, offsetof(oa_conf_t, response_timeout), OA_CONF_RESPONSE_TIMEOUT_MIN,
     OA_CONF_RESPONSE_TIMEOUT_MAX, 1, OA_CONF_F_RESPONSE_TIMEOUT},
    {"recovery_frequency", KEY_INT, offsetof(oa_conf_t, recovery_frequency), OA_CONF_RECOVERY_FREQUENCY_MIN,
     OA_CONF_RECOVERY_FREQUENCY_MAX, 60, OA_CONF_F_RECOVERY_FREQUENCY},
    {"recovery_max_tries", KEY_INT, offsetof(oa_conf_t, recovery_max_tries), OA_CONF_RECOVERY_MAX_TRIES_MIN,
     OA_CONF_RECOVERY_MAX_TRIES_MAX, 5, OA_CONF_F_RECOVERY_MAX_TRIES},
};

/* The value of a setting as an int (a bool reads as 0 or 1). */
static int key_get(const oa_conf_t *c, const conf_key_t *k)
{
    const char *field = (const char *)c + k->offset;

    return k->kind == KEY_BOOL ? (int)*(const bool *)field : *(const int *)field;
}

static void key_set(oa_conf_t *c, const conf_key_t *k, int v)
{
    char *field = (char *)c + k->offset;

    if (k->kind == KEY_BOOL)
        *(bool *)field = v != 0;
    else
        *(int *)field = v;
}

static const conf_key_t *key_find(const char *name)
{
    size_t i;

    for (i = 0; i < OA_ARRAY_SIZE(keys); i++) {
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

void oa_conf_defaults(oa_conf_t *c)
{
    size_t i;

    for (i = 0; i < OA_ARRAY_SIZE(keys); i++) {
        if (keys[i].kind != KEY_READ_ONLY)
            key_set(c, &keys[i], keys[i].dflt);
    }
}

/* The JSON value of key k (new reference, NULL on allocation failure); responder_url's is url. */
static json_t *key_json(const oa_conf_t *c, const conf_key_t *k, const char *url)
{
    switch (k->kind) {
    case KEY_BOOL:
        return json_boolean(key_get(c, k));
    case KEY_INT:
        return json_integer(key_get(c, k));
    case KEY_READ_ONLY:
        break;
    }
    return json_string(url);
}

/* The settings of c in table order, with responder_url where the table has it when url is not NULL. */
static json_t *conf_object(const oa_conf_t *c, const char *url)
{
    json_t *obj = json_object();
    size_t i;

    for (i = 0; obj != NULL && i < OA_ARRAY_SIZE(keys); i++) {
        if (keys[i].kind == KEY_READ_ONLY && url == NULL)
            continue;
        /* json_object_set_new takes the value even when it fails, and fails on a NULL one. */
        if (json_object_set_new(obj, keys[i].name, key_json(c, &keys[i], url)) != 0) {
            json_decref(obj);
            obj = NULL;
        }
    }
    return obj;
}

json_t *oa_conf_to_json(const oa_conf_t *c, const char *responder_url)
{
    return conf_object(c, responder_url != NULL ? responder_url : "");
}

json_t *oa_conf_stored_json(const oa_conf_t *c)
{
    return conf_object(c, NULL);
}

/*
 * Copies n bytes of s into out (max + 8 bytes) for use inside an error sentence. Error sentences end up in JSON
 * responses and log lines, so only printable ASCII is kept as is; with quotes, '"' and '\' are escaped too; every
 * other byte becomes \xNN (so a cut can never split a UTF-8 sequence). Past max bytes the copy ends with "...".
 */
static const char *printable(const char *s, size_t n, bool quotes, char *out, size_t max)
{
    size_t i, o = 0;
    unsigned char c;

    for (i = 0; i < n; i++) {
        c = (unsigned char)s[i];
        if (o + 4 > max) {
            memcpy(out + o, "...", 4);
            return out;
        }
        if (quotes && (c == '"' || c == '\\')) {
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

/* A body's bytes quoted in an error sentence, at most QUOTE_MAX of them. */
static const char *quote_for_error(const char *s, size_t n, char out[QUOTE_MAX + 8])
{
    return printable(s, n, true, out, QUOTE_MAX);
}

/* jansson's error text: its "near '...'" part quotes raw body bytes, which may be control bytes or not UTF-8 at
 * all, and the sentence must be safe to put in a JSON response. */
static const char *clean_text(const char *in, char *out, size_t outlen)
{
    return printable(in, strlen(in), false, out, outlen - 8);
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
 * Sets the setting k of c from v after checking its type and range. Returns 0, or -1 with err filled
 * (OA_E_INVALID_SCHEMA) naming the key and what was wrong with the value.
 */
static int read_key(oa_conf_t *c, const conf_key_t *k, const json_t *v, oa_error_t *err)
{
    json_int_t n;

    if (k->kind == KEY_BOOL) {
        if (!json_is_boolean(v))
            return oa_error_set(err, OA_E_INVALID_SCHEMA, "%s: must be true or false, got %s", k->name,
                                type_phrase(v));
        key_set(c, k, json_is_true(v));
        return 0;
    }
    if (!json_is_integer(v))
        return oa_error_set(err, OA_E_INVALID_SCHEMA, "%s: must be an integer from %d to %d, got %s", k->name, k->min,
                            k->max, type_phrase(v));
    n = json_integer_value(v);
    if (n < k->min || n > k->max)
        return oa_error_set(err, OA_E_INVALID_SCHEMA,
                            "%s: must be an integer from %d to %d, got %" JSON_INTEGER_FORMAT, k->name, k->min,
                            k->max, n);
    key_set(c, k, (int)n);
    return 0;
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

/*
 * What sets the three readers of a configuration object apart. A PUT body and the file are partial (an absent key
 * keeps the value it had) and refuse any member they do not know; the store's form is whole and ignores members it
 * does not know, so that a store written by a later version with more keys stays readable here.
 */
typedef struct form_s {
    const char *url; /* a PUT body: responder_url may be sent with this value; NULL: it is not a key of the form */
    bool whole;      /* every setting must be present */
    bool lenient;    /* unknown members are ignored rather than refused */
    bool versioned;  /* the file: "version" must be CONF_FILE_VERSION */
} form_t;

/*
 * Reads the members of the object root into c, as form says, and adds the change bits of the settings it carried to
 * *set. Returns 0, or -1 with err filled (OA_E_INVALID_SCHEMA) for the first member in the object's order that is
 * wrong; c may then hold some of the values already read.
 */
static int read_object(const json_t *root, const form_t *form, oa_conf_t *c, unsigned *set, oa_error_t *err)
{
    char q[QUOTE_MAX + 8];
    const conf_key_t *k;
    const char *key;
    json_t *v;
    size_t i;

    json_object_foreach((json_t *)root, key, v) {
        k = key_find(key);
        if (k != NULL && k->kind == KEY_READ_ONLY && form->url != NULL) {
            if (check_responder_url(form->url, v, err) != 0)
                return -1;
            continue;
        }
        if (k != NULL && k->kind != KEY_READ_ONLY) {
            if (read_key(c, k, v, err) != 0)
                return -1;
            *set |= k->flag;
            continue;
        }
        if (form->versioned && strcmp(key, "version") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) != CONF_FILE_VERSION)
                return oa_error_set(err, OA_E_INVALID_SCHEMA, "version: must be %d", CONF_FILE_VERSION);
            continue;
        }
        if (!form->lenient)
            return oa_error_set(err, OA_E_INVALID_SCHEMA, "unknown key \"%s\"", quote_for_error(key, strlen(key), q));
    }
    for (i = 0; form->whole && i < OA_ARRAY_SIZE(keys); i++) {
        if (keys[i].kind != KEY_READ_ONLY && !(*set & keys[i].flag))
            return oa_error_set(err, OA_E_INVALID_SCHEMA, "%s: missing", keys[i].name);
    }
    return 0;
}

unsigned oa_conf_diff(const oa_conf_t *a, const oa_conf_t *b)
{
    unsigned mask = 0;
    size_t i;

    for (i = 0; i < OA_ARRAY_SIZE(keys); i++) {
        if (keys[i].kind != KEY_READ_ONLY && key_get(a, &keys[i]) != key_get(b, &keys[i]))
            mask |= keys[i].flag;
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

int oa_conf_patch_parse(const char *responder_url, const char *body, size_t len, oa_conf_patch_t *out,
                        oa_error_t *err)
{
    const form_t form = {.url = responder_url != NULL ? responder_url : ""};
    oa_conf_patch_t p = {.set = 0};
    json_t *root = NULL;
    int rc = -1;

    root = load_object(body, len, "body", OA_E_INVALID_SCHEMA, err);
    if (root == NULL)
        goto out;
    /* The values of the keys the body leaves out are never read; defaults keep the struct fully initialised. */
    oa_conf_defaults(&p.values);
    if (read_object(root, &form, &p.values, &p.set, err) != 0)
        goto out;
    /* Checked only after every key passed, so a body with both a schema problem and a missing URL reports the
     * schema problem, which the client can fix by itself. */
    if ((p.set & OA_CONF_F_OCSP_FUNCTIONALITY) && p.values.ocsp_functionality && form.url[0] == '\0') {
        oa_error_set(err, OA_E_NO_RESPONDER_URL,
                     "ocsp_functionality: cannot be enabled because responder_url is empty "
                     "(the proxy certificate names no OCSP responder)");
        goto out;
    }
    *out = p;
    rc = 0;

out:
    json_decref(root);
    return rc;
}

unsigned oa_conf_patch_apply(const oa_conf_patch_t *p, const oa_conf_t *cur, oa_conf_t *out)
{
    oa_conf_t next = *cur;
    unsigned changed;
    size_t i;

    for (i = 0; i < OA_ARRAY_SIZE(keys); i++) {
        if (keys[i].kind != KEY_READ_ONLY && (p->set & keys[i].flag))
            key_set(&next, &keys[i], key_get(&p->values, &keys[i]));
    }
    /* Compared before *out is written: out may be cur. */
    changed = oa_conf_diff(cur, &next);
    *out = next;
    return changed;
}

int oa_conf_patch(const oa_conf_t *cur, const char *responder_url, const char *body, size_t len, oa_conf_t *out,
                  unsigned *changed, oa_error_t *err)
{
    oa_conf_patch_t p;

    if (oa_conf_patch_parse(responder_url, body, len, &p, err) != 0)
        return -1;
    *changed = oa_conf_patch_apply(&p, cur, out);
    return 0;
}

void oa_conf_changed_names(unsigned changed, char *out, size_t outlen)
{
    size_t i, used = 0, need;

    if (outlen == 0)
        return;
    out[0] = '\0';
    for (i = 0; i < OA_ARRAY_SIZE(keys); i++) {
        if (keys[i].kind == KEY_READ_ONLY || !(changed & keys[i].flag))
            continue;
        /* A name that does not fit whole is left out, so a short buffer never holds half a key. */
        need = (used > 0 ? 1 : 0) + strlen(keys[i].name);
        if (need >= outlen - used)
            return;
        snprintf(out + used, outlen - used, "%s%s", used > 0 ? "," : "", keys[i].name);
        used += need;
    }
}

int oa_conf_from_stored(const json_t *o, oa_conf_t *out, oa_error_t *err)
{
    const form_t form = {.whole = true, .lenient = true};
    unsigned set = 0;
    oa_conf_t c;

    if (!json_is_object(o))
        return oa_error_set(err, OA_E_INVALID_SCHEMA, "not a JSON object");
    oa_conf_defaults(&c);
    if (read_object(o, &form, &c, &set, err) != 0)
        return -1;
    *out = c;
    return 0;
}

int oa_conf_save(const char *path, const oa_conf_t *c)
{
    oa_buf_t file = {0};
    json_t *obj = NULL, *settings = NULL;
    char *text = NULL;
    int rc = UV_ENOMEM;

    /* "version" first, so that a reader of the file sees at once which layout follows. */
    obj = json_pack("{s:i}", "version", CONF_FILE_VERSION);
    settings = oa_conf_stored_json(c);
    if (obj == NULL || settings == NULL || json_object_update(obj, settings) != 0)
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
    json_decref(settings);
    json_decref(obj);
    return rc;
}

int oa_conf_load(const char *path, oa_conf_t *out, bool *found, oa_error_t *err)
{
    const form_t form = {.versioned = true};
    oa_buf_t buf = {0};
    json_t *root = NULL;
    unsigned set = 0;
    oa_error_t why;
    oa_conf_t c;
    int rc;

    *found = false;
    rc = oa_file_read(path, CONF_FILE_MAX, &buf);
    if (rc == UV_ENOENT) {
        rc = 0;
        goto out;
    }
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
    if (read_object(root, &form, &c, &set, &why) != 0) {
        oa_error_set(err, OA_E_BAD_FILE, "%s: %s", path, why.text);
        goto out;
    }
    *out = c;
    *found = true;
    rc = 0;

out:
    json_decref(root);
    oa_buf_free(&buf);
    return rc;
}
