/*
 * Snapshots of the schedule that the API suites render or hand out through a fake backend, built by hand so that
 * every field a test does not set has a known value.
 */
#ifndef OA_TEST_SNAPSHOTS_H
#define OA_TEST_SNAPSHOTS_H

#include "oa_sched.h"

#define SNAP_T0 1700000000 /* Tue, 14 Nov 2023 22:13:20 GMT: the wall clock of every snapshot made here */
#define SNAP_RESPONDER "http://ocsp.example/"

/* A schedule that never ran: disabled, no responder URL, nothing cached or counted, recovery_max_tries 5. */
void snapshot_empty(oa_sched_status_t *st);

/* A valid schedule serving a response with cert_status, produced and updated at SNAP_T0 (no nextUpdate, no
 * revocation), from SNAP_RESPONDER, after one successful query. */
void snapshot_cached(oa_sched_status_t *st, oa_cert_status_t cert_status);

#endif
