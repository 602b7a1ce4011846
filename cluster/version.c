/*
 * The identity of the configuration in force, (epoch, version), kept in <data_dir>/cluster.json
 * ({"conf_epoch","conf_version"}) next to ocsp.json, and the fresh epochs a node offers the scripts.
 */
#include <inttypes.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "cluster_internal.h"
#include "oa_log.h"
#include "oa_util.h"

/* The epoch comes first, so that the file always ends with the version. */
void cluster_version_save(oa_cluster_t *c)
{
    char text[96];
    int rc, n;

    if (c->version_path == NULL)
        return;
    n = snprintf(text, sizeof(text), "{\"conf_epoch\":\"%s\",\"conf_version\":%" PRIu64 "}\n", c->epoch,
                 c->version);
    rc = oa_file_write_atomic(c->version_path, text, (size_t)n, 0600);
    if (rc != 0)
        OA_LOG(OA_LOG_ERROR, "cluster_version_persist_failed", OA_KV_STR("path", c->version_path),
               OA_KV_STR("reason", uv_strerror(rc)));
}

/* A file without an epoch (written before epochs existed) gives "": whatever the store holds then differs. */
void cluster_version_load(oa_cluster_t *c)
{
    oa_buf_t buf;
    json_t *o;
    const char *e;

    oa_buf_init(&buf);
    if (c->version_path != NULL && oa_file_read(c->version_path, 4096, &buf) == 0) {
        o = json_loadb(buf.data, buf.len, 0, NULL);
        c->version = (uint64_t)(cluster_json_int(o, "conf_version", 0) > 0 ? cluster_json_int(o, "conf_version", 0)
                                                                            : 0);
        e = json_string_value(json_object_get(o, "conf_epoch"));
        if (e != NULL && cluster_epoch_valid(e, strlen(e)))
            snprintf(c->epoch, sizeof(c->epoch), "%s", e);
        json_decref(o);
    }
    oa_buf_free(&buf);
}

void cluster_epoch_new(char out[CLUSTER_EPOCH_LEN + 1])
{
    unsigned char raw[CLUSTER_EPOCH_LEN / 2];
    size_t i;

    if (RAND_bytes(raw, (int)sizeof(raw)) != 1) {
        /* Uniqueness is all an epoch needs; the clock and the address of a stack variable will do. */
        uint64_t x = (uint64_t)oa_time_now_ms() ^ ((uint64_t)(uintptr_t)raw << 16);

        ERR_clear_error();
        for (i = 0; i < sizeof(raw); i++)
            raw[i] = (unsigned char)(x >> (8 * i));
    }
    for (i = 0; i < sizeof(raw); i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}
