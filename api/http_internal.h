/*
 * Entry points of the HTTP server that only tests and fuzz targets use. The daemon never calls them.
 */
#ifndef OA_HTTP_INTERNAL_H
#define OA_HTTP_INTERNAL_H

#include <uv.h>

#include "oa_http.h"

/*
 * Serves one already-connected stream socket (a TCP socket, or one end of an AF_UNIX socketpair) as if s had
 * accepted it: the same limits, timers, parsing and responses as a connection from the listener, counted in
 * oa_http_server_connections and refused the same way when max_connections are open. The peer is named
 * "unknown" when the socket has no IP address.
 *
 * Returns 0 when the connection was set up or refused (s then owns fd and closes it), or a negative UV_E* error
 * when fd could not be taken (the caller still owns fd and must close it). Fails with UV_ECANCELED once
 * oa_http_server_stop was called.
 */
int oa_http_server_adopt(oa_http_server_t *s, uv_os_sock_t fd);

#endif
