/*
 * What the tests of one delivery target share: a test PKI and its responses, the log captured in memory, a temporary
 * directory per test, and a loop with one delivery whose counters and status the tests wait on. Every wait is bounded
 * and fails the test (cmocka) when it runs out.
 */
#ifndef OA_TARGET_HARNESS_H
#define OA_TARGET_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "../../engine/target.h"
#include "oa_delivery.h"
#include "oa_log.h"
#include "oa_util.h"
#include "testpki.h"

extern oa_testpki_t pki;              /* made by group_setup, serial 0x1001 */
extern char dir[OA_TESTPKI_DIR_MAX]; /* the test's temporary directory (test_setup) */
extern time_t now;                    /* group_setup's wall clock; responses are dated from it */

/* cmocka group set-up and tear-down: the PKI, and every log line at info and above into a memory stream. */
int group_setup(void **state);
int group_teardown(void **state);

/* cmocka per-test set-up and tear-down: a fresh temporary directory in dir, removed afterwards. */
int test_setup(void **state);
int test_teardown(void **state);

/* <dir>/name in one of four slots (0 to 3; slot 3 is the delivery's staple path), valid until the slot is reused. */
const char *in_dir(int slot, const char *name);

/* A verified-looking result for a real response: status (V_OCSP_CERTSTATUS_*), thisUpdate this_off s from now,
 * nextUpdate next_off s from now (none when !has_next). Different this_off give different DER. Free with
 * oa_ocsp_result_clear. */
void make_result(oa_ocsp_result_t *res, int cert_status, long this_off, bool has_next, long next_off);

/* The log written since mark, a position that log_mark returns. */
size_t log_mark(void);
const char *log_since(size_t mark);
int log_count(size_t mark, const char *needle); /* occurrences of needle since mark */

typedef struct ctx_s {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes the loop up so that conditions on files are checked */
    oa_delivery_t *d;
    bool closed;
} ctx_t;

void ctx_start(ctx_t *c);
/* Runs the loop until cond(c, arg) holds; fails the test after timeout_ms, naming what it waited for. */
void run_until(ctx_t *c, bool (*cond)(ctx_t *c, const void *arg), const void *arg, uint64_t timeout_ms,
               const char *what);
/* Runs the loop for ms milliseconds (to show that nothing more happens). */
void run_for(ctx_t *c, uint64_t ms);
/* Closes the delivery and the loop; asserts uv_loop_close() == 0. */
void ctx_close(ctx_t *c);
/* The one target's deliveries_total for result "ok" or "error". */
uint64_t count(const ctx_t *c, const char *result);
/* Runs the loop until the one target has finished n tries in all. */
void wait_tries(ctx_t *c, uint64_t n, uint64_t timeout_ms);
/* The state and last_error ("" when none) of the one target, and its name when name is not NULL (512 bytes). */
void target_status(const ctx_t *c, char *state, char *last_error, char *name);

#endif
