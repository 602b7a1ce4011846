/*
 * Capability lists: what a node advertises in its registry entry, as --capabilities gives it ("ocsp,foo").
 */
#include <ctype.h>
#include <stdbool.h>
#include <string.h>

#include "cluster_internal.h"

int oa_cluster_caps_valid(const char *caps)
{
    const char *p;
    bool empty_item = true;

    if (caps == NULL)
        return -1;
    if (caps[0] == '\0')
        return 0;
    for (p = caps; *p != '\0'; p++) {
        if (*p == ',') {
            if (empty_item)
                return -1;
            empty_item = true;
        } else if (islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_' || *p == '-') {
            empty_item = false;
        } else {
            return -1;
        }
    }
    return empty_item ? -1 : 0;
}

bool oa_cluster_caps_have(const char *caps, const char *name)
{
    size_t n = strlen(name);
    const char *p = caps;

    while (p != NULL && *p != '\0') {
        size_t len = strcspn(p, ",");

        if (len == n && memcmp(p, name, n) == 0)
            return 1;
        p = p[len] == ',' ? p + len + 1 : NULL;
    }
    return 0;
}
