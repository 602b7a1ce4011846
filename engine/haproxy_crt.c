/* Placeholder: HAProxy <crt>.ocsp file target. */
#include "target.h"

int oa_haproxy_crt_target_new(oa_delivery_t *d, const char *crt_path, oa_error_t *err)
{
    (void)d;
    return oa_error_set(err, OA_E_BAD_OPTION, "--haproxy-crt %s: not available in this build", crt_path);
}
