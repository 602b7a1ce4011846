/*
 * The watched certificate (--cert, --issuer) replaced while the agent runs (API.md section 7): the "cert" group of
 * the live reload, and a watch that notices a replaced file without a signal.
 *
 * The group reads both files again and refuses them whole (`reload_failed`, everything kept) when one is unreadable,
 * holds no PEM certificate, the issuer is missing or did not sign the certificate, or the certificate has expired.
 * Files that hold what is in force (the same bytes, or the same certificate: the same CertID) change nothing. A new
 * certificate is put in force everywhere at once: the scheduler (its old staple dropped, the old query cancelled,
 * the new one asked at once when OCSP is enabled), every delivery target (the old staple removed, never served for
 * the new certificate), the API's own stapling and the responder URL the API shows. The agent logs
 * `certificate_changed` with the old and new subject, serial and responder.
 *
 * The watch: a uv_fs_event on the directory of each file and on the directory its symlinks resolve to (a
 * Kubernetes secret mount swaps a `..data` symlink; certbot points a symlink into an archive directory), plus a
 * poll every POLL_MS as a backstop for file systems without notifications. A change is taken once the files'
 * content has been quiet for DEBOUNCE_MS, so a half-written file is never read; each distinct content is tried once,
 * so a broken file is reported once and not at every poll.
 */
#ifndef OA_CERT_RELOAD_H
#define OA_CERT_RELOAD_H

#include "oa_agent.h"
#include "oa_error.h"

typedef struct oa_cert_reload_s oa_cert_reload_t;

/*
 * Adds the "cert" group to a->reload and starts the watch. Call once start-up has a->reload, a->sched and
 * a->delivery, and only with --cert. Returns 0 with a->cert_reload set (owned by the agent, released with
 * oa_cert_reload_close), or -1 with err filled.
 */
int oa_cert_reload_start(oa_agent_t *a, oa_error_t *err);

/* Stops the watch and closes its handles; done fires once they are closed and c is freed. */
void oa_cert_reload_close(oa_cert_reload_t *c, void (*done)(void *arg), void *arg);

#endif
