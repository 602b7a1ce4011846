#include <string.h>

#include "snapshots.h"

void snapshot_empty(oa_sched_status_t *st)
{
    memset(st, 0, sizeof(*st));
    st->state = OA_STATE_DISABLED;
    st->responder_url = "";
    st->response.cert_status = OA_CERT_UNKNOWN;
    st->response.revocation_reason = -1;
    st->recovery_max_tries = 5;
    st->taken_at = SNAP_T0;
}

void snapshot_cached(oa_sched_status_t *st, oa_cert_status_t cert_status)
{
    snapshot_empty(st);
    st->state = OA_STATE_VALID;
    st->responder_url = SNAP_RESPONDER;
    st->have_response = true;
    st->response.cert_status = cert_status;
    st->response.produced_at = SNAP_T0;
    st->response.this_update = SNAP_T0;
    st->last_attempt = SNAP_T0;
    st->last_success = SNAP_T0;
    st->queries_ok = 1;
}
