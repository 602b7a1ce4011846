/*
 * The store's URL: redis://HOST[:PORT][/DB] or rediss://... (TLS). Credentials never travel in it.
 */
#include <ctype.h>
#include <string.h>

#include "cluster_internal.h"

int oa_cluster_url_parse(const char *url, char host[OA_CLUSTER_HOST_MAX], int *port, int *db, oa_error_t *err)
{
    const char *p, *h, *hend, *q;
    long v;
    size_t hl;
    char *end;

    if (oa_cluster_url_is_tls(url))
        p = url + 9;
    else if (url != NULL && strncmp(url, "redis://", 8) == 0)
        p = url + 8;
    else
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected redis[s]://HOST:PORT[/DB], got \"%.64s\"",
                            url ? url : "");
    if (strchr(p, '@') != NULL)
        return oa_error_set(err, OA_E_BAD_OPTION,
                            "--cluster: credentials in the URL are not accepted; use --cluster-password");
    if (*p == '[') {
        h = p + 1;
        hend = strchr(h, ']');
        if (hend == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: unterminated [IPv6] address in \"%.64s\"", url);
        q = hend + 1;
    } else {
        h = p;
        hend = h + strcspn(h, ":/");
        q = hend;
    }
    hl = (size_t)(hend - h);
    if (hl == 0 || hl >= OA_CLUSTER_HOST_MAX)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: missing or too long host in \"%.64s\"", url);
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && strchr(".-_:", h[i]) == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: invalid host in \"%.64s\"", url);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = CLUSTER_DEFAULT_PORT;
    *db = 0;
    if (*q == ':') {
        v = strtol(q + 1, &end, 10);
        if (!isdigit((unsigned char)q[1]) || v < 1 || v > 65535 || (*end != '\0' && *end != '/'))
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected a port from 1 to 65535 in \"%.64s\"",
                                url);
        *port = (int)v;
        q = end;
    }
    if (*q == '/' && q[1] != '\0') {
        v = strtol(q + 1, &end, 10);
        if (!isdigit((unsigned char)q[1]) || v < 0 || v > 15 || *end != '\0')
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected a database number from 0 to 15 in "
                                "\"%.64s\"", url);
        *db = (int)v;
    } else if (*q != '\0' && strcmp(q, "/") != 0) {
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected redis[s]://HOST:PORT[/DB], got \"%.64s\"",
                            url);
    }
    return 0;
}

bool oa_cluster_url_is_tls(const char *url)
{
    return url != NULL && strncmp(url, "rediss://", 9) == 0;
}
