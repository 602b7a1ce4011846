/* Placeholder: HAProxy runtime socket target. */
#include "target.h"

int oa_haproxy_socket_target_new(oa_delivery_t *d, const char *spec, oa_error_t *err)
{
    (void)d;
    return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-socket %s: not available in this build", spec);
}
