/*
 * The API object: what it owns, and the cached body of GET /v1/ocsp.
 */
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"

int oa_api_new(oa_auth_t *auth, const oa_api_backend_t *backend, oa_api_t **out)
{
    oa_api_t *api = calloc(1, sizeof(*api));

    *out = NULL;
    if (api == NULL)
        return UV_ENOMEM;
    api->auth = auth;
    api->backend = *backend;
    oa_buf_init(&api->conf_body);
    *out = api;
    return 0;
}

void oa_api_free(oa_api_t *api)
{
    if (api == NULL)
        return;
    oa_buf_free(&api->conf_body);
    free(api->spare_check);
    free(api);
}

const oa_api_backend_t *oa_api_backend(const oa_api_t *api)
{
    return &api->backend;
}

void oa_api_set_server(oa_api_t *api, oa_http_server_t *server)
{
    api->server = server;
}

void oa_api_conf_changed(oa_api_t *api)
{
    oa_buf_reset(&api->conf_body);
}

void oa_api_shutdown(oa_api_t *api)
{
    api->shutting_down = true;
}

/* GET is the hot path, and its body changes only when the configuration does: it is built once per change. */
static int conf_body_build(oa_api_t *api)
{
    const oa_conf_t *conf;
    const char *responder_url;
    json_t *obj;
    char *text;
    int rc;

    api->backend.conf_get(api->backend.data, &conf, &responder_url);
    obj = oa_conf_to_json(conf, responder_url);
    if (obj == NULL)
        return UV_ENOMEM;
    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (text == NULL)
        return UV_ENOMEM;
    oa_buf_reset(&api->conf_body);
    rc = oa_buf_append_str(&api->conf_body, text);
    free(text);
    return rc;
}

void oa_api_respond_conf(oa_api_t *api, oa_http_request_t *req)
{
    if (api->conf_body.len == 0 && conf_body_build(api) != 0) {
        oa_buf_reset(&api->conf_body);
        oa_http_respond_error(req, 0, OA_E_NOMEM, "Out of memory.", NULL);
        return;
    }
    oa_http_respond(req, 200, NULL, api->conf_body.data, api->conf_body.len);
}

void oa_api_respond_json(oa_http_request_t *req, int status, const json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);

    if (text == NULL) {
        oa_http_respond_error(req, 0, OA_E_NOMEM, "The response could not be encoded.", NULL);
        return;
    }
    oa_http_respond(req, status, NULL, text, strlen(text));
    free(text);
}
