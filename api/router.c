/*
 * Routing: authenticate, find the resource, check the method and the role's permission, check the cluster's
 * capability, then hand the call to the resource's handler.
 */
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_internal.h"
#include "oa_log.h"

typedef void (*handler_fn)(const oa_api_call_t *call);

typedef struct route_method_s {
    int method;
    unsigned perm;
    handler_fn fn;
} route_method_t;

typedef struct route_s {
    const char *path;
    const char *allow; /* the Allow header's value for 405 */
    int needs_capability;
    route_method_t methods[2];
} route_t;

static const route_t routes[] = {
    {"/v1/ocsp", "GET, HEAD, PUT", 1,
     {{HTTP_GET, OA_PERM_VIEW_OCSP_CONFIG, oa_api_ocsp_config_get},
      {HTTP_PUT, OA_PERM_CONFIG_OCSP, oa_api_ocsp_config_put}}},
    {"/v1/ocsp/status", "GET, HEAD", 1, {{HTTP_GET, OA_PERM_VIEW_OCSP_STATUS, oa_api_ocsp_status_get}}},
    {"/v1/ocsp/test", "POST", 1, {{HTTP_POST, OA_PERM_TEST_OCSP_STATUS, oa_api_ocsp_test_post}}},
    {"/metrics", "GET, HEAD", 0, {{HTTP_GET, OA_PERM_VIEW_OCSP_STATUS, oa_api_metrics_get}}},
};

static const route_t *route_find(const char *path)
{
    size_t i;

    for (i = 0; i < OA_ARRAY_SIZE(routes); i++)
        if (strcmp(routes[i].path, path) == 0)
            return &routes[i];
    return NULL;
}

/* The path of an origin-form target, or of an absolute-form one ("http://host:port/v1/ocsp"), which servers must
 * accept too (RFC 9112, section 3.2.2). */
static const char *target_path(const char *target)
{
    const char *p = NULL;

    if (strncasecmp(target, "http://", 7) == 0)
        p = target + 7;
    else if (strncasecmp(target, "https://", 8) == 0)
        p = target + 8;
    if (p == NULL)
        return target;
    p = strchr(p, '/');
    return p != NULL ? p : "/";
}

static void dispatch(oa_http_request_t *req, oa_api_t *api, const oa_user_t *user)
{
    const route_t *route = route_find(target_path(req->path));
    /* HEAD is GET without a body; the server leaves the body out. */
    int method = req->method == HTTP_HEAD ? HTTP_GET : req->method;
    const route_method_t *m = NULL;
    oa_api_call_t call = {.req = req, .api = api, .user = user};
    char allow[64];
    oa_error_t err;
    size_t i;

    OA_LOG(OA_LOG_DEBUG, "api_request", OA_KV_STR("method", req->method_name), OA_KV_STR("path", req->path),
           OA_KV_STR("user", user->name), OA_KV_STR("peer", req->peer));
    if (route == NULL) {
        oa_http_respond_error(req, 0, OA_E_NOT_FOUND, "No resource at this path.", NULL);
        return;
    }
    for (i = 0; i < OA_ARRAY_SIZE(route->methods); i++)
        if (route->methods[i].fn != NULL && route->methods[i].method == method)
            m = &route->methods[i];
    if (m == NULL) {
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", route->allow);
        oa_http_respond_error(req, 0, OA_E_METHOD_NOT_ALLOWED, "This method is not allowed on this resource.",
                              allow);
        return;
    }
    if (!oa_role_allows(user->role, m->perm)) {
        oa_error_set(&err, OA_E_FORBIDDEN, "Role %s lacks the permission %s.", oa_role_name(user->role),
                     oa_perm_name((oa_perm_t)m->perm));
        oa_http_respond_error(req, 0, err.code, err.text, NULL);
        return;
    }
    if (route->needs_capability && api->backend.capability_check(api->backend.data, &err) != 0) {
        oa_http_respond_error(req, 0, err.code, err.text, NULL);
        return;
    }
    m->fn(&call);
}

static void respond_auth_error(oa_http_request_t *req, oa_auth_verdict_t verdict)
{
    if (verdict == OA_AUTH_BUSY)
        oa_http_respond_error(req, 0, OA_E_AUTH_BUSY, "Too many authentications in progress; retry shortly.",
                              "Retry-After: 1\r\n");
    else
        oa_http_respond_error(req, 0, OA_E_UNAUTHORIZED, "Valid credentials are required.",
                              "WWW-Authenticate: Basic realm=\"ocsp-agent\"\r\n");
}

static void on_auth_done(oa_auth_check_t *check, int result, const oa_user_t *user)
{
    oa_http_request_t *req = check->data;
    oa_api_t *api = req->data;

    free(check);
    if (result != 0 || user == NULL) {
        respond_auth_error(req, OA_AUTH_REFUSED);
        return;
    }
    /* The KDF ran on the thread pool: the daemon may have begun to stop meanwhile. */
    if (api->shutting_down) {
        oa_http_respond_error(req, 503, OA_E_INTERNAL, "The agent is shutting down.", NULL);
        return;
    }
    dispatch(req, api, user);
}

void oa_api_handle(oa_http_request_t *req, void *app)
{
    oa_api_t *api = app;
    const oa_user_t *user = NULL;
    oa_auth_check_t *check;
    oa_auth_verdict_t verdict;

    /* Most requests are answered from the credential cache, so the check they needed is kept for the next one. */
    check = api->spare_check;
    api->spare_check = NULL;
    if (check != NULL)
        memset(check, 0, sizeof(*check));
    else
        check = calloc(1, sizeof(*check));
    if (check == NULL) {
        oa_http_respond_error(req, 0, OA_E_NOMEM, "Out of memory.", NULL);
        return;
    }
    check->data = req;
    req->data = api;
    verdict = oa_auth_check(api->auth, req->authorization, req->authorization_len, check, on_auth_done, &user);
    if (verdict == OA_AUTH_QUEUED)
        return; /* on_auth_done owns check now */
    api->spare_check = check;
    if (verdict != OA_AUTH_VERIFIED) {
        respond_auth_error(req, verdict);
        return;
    }
    dispatch(req, api, user);
}
