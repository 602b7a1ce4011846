/*
 * The API object, shared by the files of api/ only.
 */
#ifndef OA_API_INTERNAL_H
#define OA_API_INTERNAL_H

#include "oa_api.h"

struct oa_api_s {
    oa_auth_t *auth;              /* borrowed */
    oa_api_backend_t backend;
    oa_http_server_t *server;     /* borrowed, for the connection count; may be NULL */
    oa_buf_t conf_body;           /* GET /v1/ocsp's body; empty when it must be rebuilt */
    oa_auth_check_t *spare_check; /* reused by the next request when the last one authenticated at once */
    bool shutting_down;
};

#endif
