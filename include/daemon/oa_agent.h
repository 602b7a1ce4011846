/*
 * The daemon as one object: its options, the watched certificate, the OCSP configuration and where it is
 * persisted, the authenticator, the scheduler and the API server, all on one libuv loop.
 */
#ifndef OA_AGENT_H
#define OA_AGENT_H

#include <openssl/ssl.h>
#include <uv.h>

#include "oa_auth.h"
#include "oa_conf.h"
#include "oa_datadir.h"
#include "oa_error.h"
#include "oa_http.h"
#include "oa_ocsp.h"
#include "oa_options.h"
#include "oa_sched.h"
#include "oa_util.h"



typedef struct oa_agent_s {
    uv_loop_t *loop;
    const oa_options_t *opts;     /* borrowed; outlives the agent */
    oa_ocsp_target_t *target;     /* NULL without --cert */
    const char *responder_url;    /* target's responder URL, or "" */
    oa_conf_t conf;               /* the configuration in force */
    char *conf_path;              /* <data_dir>/ocsp.json */
    oa_auth_t *auth;
    oa_sched_t *sched;
    SSL_CTX *tls;                 /* NULL for plain HTTP */
    SSL_CTX *cluster_tls;         /* TLS to the cluster store; NULL without --cluster-tls */
    unsigned char cluster_tls_digest[32]; /* SHA-256 of the files cluster_tls was made from, to spot a rewrite */
    oa_http_server_t *server;
    struct oa_cluster_s *cluster; /* NULL without --cluster */
    struct oa_delivery_s *delivery; /* the staple's targets (oa_delivery.h); always set once started */
    struct oa_api_s *api;         /* the REST API, which sees the agent through its backend interface only */
    struct oa_reload_s *reload;   /* what SIGHUP reads again (oa_reload.h); set once started */
    struct oa_cert_reload_s *cert_reload; /* the "cert" group and the watch on --cert (oa_cert_reload.h); NULL
                                           * without --cert */
    uv_signal_t sigterm;
    uv_signal_t sigint;
    uv_signal_t sighup;
    int closing;
    int pending_closes;
} oa_agent_t;

/*
 * Loads the users, the certificate and its issuer, the persisted configuration (a corrupt file is moved aside to
 * "<file>.corrupt" with an error log line and the defaults are used), starts the scheduler and the API server, and
 * installs SIGTERM/SIGINT handlers that stop the agent and a SIGHUP handler that reloads the users file, the API's
 * certificate and key, and the watched certificate (oa_agent_reload), which is also watched for a replacement. Returns 0, or -1 with err filled with one sentence naming
 * the option or file at fault; on failure everything already started is torn down (run the loop to finish closes).
 */
int oa_agent_start(oa_agent_t *a, uv_loop_t *loop, const oa_options_t *opts, oa_error_t *err);

/* Begins an orderly stop: the server stops listening and finishes in-flight responses, the scheduler cancels its
 * query, the signal handles close. uv_run returns once everything is closed. Safe to call more than once. */
void oa_agent_stop(oa_agent_t *a);

/* Frees what oa_agent_start allocated; call after uv_run has returned. */
void oa_agent_free(oa_agent_t *a);

/*
 * Makes next the configuration in force: persists it first (on failure returns -1 with OA_E_PERSIST and nothing
 * changes), then applies it to the scheduler and logs `config_changed` with user and the changed keys.
 */
int oa_agent_conf_update(oa_agent_t *a, const oa_conf_t *next, unsigned changed, const char *user, oa_error_t *err);

/* What SIGHUP does: reads again, each group all-or-nothing, --users (unless --no-auth), --tls-cert/--tls-key, the
 * store's --cluster-ca/--cluster-cert/--cluster-key and --cert/--issuer (when given), logging `reloaded` or
 * `reload_failed` per group. Returns the number of groups that failed. */
unsigned oa_agent_reload(oa_agent_t *a);

/* 0 when every node supports OCSP (always, on a single node), else -1 with OA_E_UNSUPPORTED_BY_CAPABILITY. */
int oa_agent_capability_check(oa_agent_t *a, oa_error_t *err);

#endif
