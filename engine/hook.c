/* Placeholder: staple hook target. */
#include "target.h"

int oa_hook_target_new(oa_delivery_t *d, const char *program, oa_error_t *err)
{
    (void)d;
    return oa_error_set(err, OA_E_BAD_OPTION, "--staple-hook %s: not available in this build", program);
}
