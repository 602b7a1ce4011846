/*
 * The store's URL: redis://HOST[:PORT][/DB], rediss://... (TLS), or etcd://HOST[:PORT][,HOST[:PORT]...] (the
 * members of an etcd cluster). Credentials never travel in it: they are options of their own.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <uv.h>

#include "cluster_internal.h"

#define ETCD_SCHEME     "etcd://"
#define ETCD_URL_FORMAT "etcd://HOST[:PORT][,HOST[:PORT]...]"

/* How much of a URL or member a sentence quotes. */
#define SHOWN_MAX 64

/*
 * Reads HOST[:PORT] at p, the part of a URL that the sentences quote as what (what_len characters of it, at most
 * SHOWN_MAX shown). HOST is an [IPv6] literal (copied without its brackets) or a run of letters, digits and ".-_"
 * ending at one of host_ends or at the end; PORT, after a ':', runs from 1 to 65535 and must be followed by one of
 * port_ends or the end. *port keeps its value when no port is given. Returns 0 with *rest at the first character
 * neither part took and *bracketed set when HOST was in brackets, or -1 with err filled.
 */
static int host_port_read(const char *p, const char *what, size_t what_len, const char *host_ends,
                          const char *port_ends, char host[OA_CLUSTER_HOST_MAX], int *port, bool *bracketed,
                          const char **rest, oa_error_t *err)
{
    const char *h, *hend, *q;
    int shown = (int)(what_len < SHOWN_MAX ? what_len : SHOWN_MAX);
    size_t hl;
    char *end;
    long v;

    *bracketed = *p == '[';
    if (*bracketed) {
        h = p + 1;
        hend = strchr(h, ']');
        if (hend == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: unterminated [IPv6] address in \"%.*s\"", shown,
                                what);
        q = hend + 1;
    } else {
        h = p;
        hend = h + strcspn(h, host_ends);
        q = hend;
    }
    hl = (size_t)(hend - h);
    if (hl == 0 || hl >= OA_CLUSTER_HOST_MAX)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: missing or too long host in \"%.*s\"", shown, what);
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && strchr(".-_:", h[i]) == NULL)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: invalid host in \"%.*s\"", shown, what);
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (*q == ':') {
        v = strtol(q + 1, &end, 10);
        if (!isdigit((unsigned char)q[1]) || v < 1 || v > 65535 || (*end != '\0' && strchr(port_ends, *end) == NULL))
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected a port from 1 to 65535 in \"%.*s\"",
                                shown, what);
        *port = (int)v;
        q = end;
    }
    *rest = q;
    return 0;
}

int oa_cluster_url_parse(const char *url, char host[OA_CLUSTER_HOST_MAX], int *port, int *db, oa_error_t *err)
{
    const char *p, *q;
    bool bracketed;
    long v;
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
    *port = CLUSTER_DEFAULT_PORT;
    *db = 0;
    if (host_port_read(p, url, strlen(url), ":/", "/", host, port, &bracketed, &q, err) != 0)
        return -1;
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

bool oa_cluster_url_is_etcd(const char *url)
{
    return url != NULL && strncmp(url, ETCD_SCHEME, strlen(ETCD_SCHEME)) == 0;
}

/* Reads the member that starts at p and runs for len characters (up to a ',' or the end) into member as
 * "host:port" ("[v6]:port"). Returns 0, or -1 with err filled. */
static int member_read(const char *p, size_t len, char member[OA_CLUSTER_MEMBER_MAX], oa_error_t *err)
{
    char host[OA_CLUSTER_HOST_MAX];
    unsigned char addr[16];
    int port = OA_CLUSTER_ETCD_DEFAULT_PORT, shown = (int)(len < SHOWN_MAX ? len : SHOWN_MAX);
    const char *q;
    bool bracketed;

    if (host_port_read(p, p, len, ":,/", ",/", host, &port, &bracketed, &q, err) != 0)
        return -1;
    if (*q == '/')
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: an etcd URL has no path or database part, got \"%.*s\"",
                            shown, p);
    if (*q != ',' && *q != '\0')
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected HOST[:PORT] as a member, got \"%.*s\"", shown,
                            p);
    /* A name never holds a ':', so a host in brackets can only be an IPv6 address: say so now rather than when
     * the connection fails to resolve it. */
    if (bracketed && uv_inet_pton(AF_INET6, host, addr) != 0)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: \"%.*s\" is not an IPv6 address in brackets", shown,
                            p);
    snprintf(member, OA_CLUSTER_MEMBER_MAX, bracketed ? "[%s]:%d" : "%s:%d", host, port);
    return 0;
}

int oa_cluster_etcd_url_parse(const char *url, char members[OA_CLUSTER_MEMBERS_MAX][OA_CLUSTER_MEMBER_MAX], size_t *n,
                              oa_error_t *err)
{
    const char *p;
    size_t len, i;

    *n = 0;
    if (!oa_cluster_url_is_etcd(url))
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected " ETCD_URL_FORMAT ", got \"%.64s\"",
                            url ? url : "");
    p = url + strlen(ETCD_SCHEME);
    if (strchr(p, '@') != NULL)
        return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: credentials in the URL are not accepted; use "
                            "--cluster-user and --cluster-password");
    for (;;) {
        len = strcspn(p, ",");
        if (len == 0)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: expected " ETCD_URL_FORMAT
                                " without an empty member, got \"%.64s\"", url);
        if (*n == OA_CLUSTER_MEMBERS_MAX)
            return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: at most %d etcd members are accepted",
                                OA_CLUSTER_MEMBERS_MAX);
        if (member_read(p, len, members[*n], err) != 0)
            return -1;
        /* Host names are case-insensitive: a member listed twice would only be tried twice in each round. */
        for (i = 0; i < *n; i++)
            if (strcasecmp(members[i], members[*n]) == 0)
                return oa_error_set(err, OA_E_BAD_OPTION, "--cluster: the etcd member %.*s is listed twice",
                                    SHOWN_MAX, members[*n]);
        (*n)++;
        if (p[len] == '\0')
            return 0;
        p += len + 1;
    }
}
