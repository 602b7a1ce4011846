/*
 * One asynchronous connection to a Redis server on the agent's libuv loop, over plain TCP or TLS.
 *
 * hiredis does the protocol: commands are encoded with redisvFormatCommand and replies decoded by a redisReader.
 * This module does everything around it, on libuv, so that nothing ever blocks the loop: the host name is resolved
 * with uv_getaddrinfo, every address is tried in turn, TLS runs over memory BIOs (oa_tls.h) with the server's
 * certificate and name verified, and one deadline covers resolution, connect and handshake. (hiredis 0.14, the
 * version Debian 12 ships, resolves names with a blocking getaddrinfo and has no TLS; its asynchronous context is
 * therefore not used.)
 *
 * Replies come back in the order the commands were sent, each to the callback queued with its command. A reply
 * that arrives with no callback queued (a Pub/Sub message on a subscribed connection) goes to on_push.
 */
#ifndef OA_REDIS_H
#define OA_REDIS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "oa_error.h"

typedef struct oa_redis_s oa_redis_t;

/* reply is borrowed for the call (freed when it returns). reply is NULL when the connection went before the
 * answer came: the callback then only releases what priv holds. */
typedef void (*oa_redis_reply_cb)(oa_redis_t *r, redisReply *reply, void *priv);

typedef struct oa_redis_options_s {
    const char *host;            /* an IPv4 or IPv6 literal, or a name (resolved with uv_getaddrinfo) */
    int port;
    SSL_CTX *tls;                /* NULL: plain TCP. The connection takes its own reference (oa_tls_client_ctx_new) */
    const char *tls_name;        /* the name or address the server's certificate must carry; NULL: host */
    unsigned connect_timeout_ms; /* resolution + connect + TLS handshake; 0: 2000 */
    unsigned max_reply_bytes;    /* a reply larger than this fails the connection; 0: 16 MiB */
    /* The connection is up (TLS handshake done and the certificate verified). Fires once, from the loop. */
    void (*on_ready)(oa_redis_t *r, void *data);
    /* The connection failed (resolution, connect, handshake, verification, deadline, protocol error) or the server
     * closed it. Fires once, from the loop, after every queued callback has fired with NULL; nothing fires after
     * it. why is a sentence for the log. The owner frees r with oa_redis_free, in the callback or later. */
    void (*on_error)(oa_redis_t *r, const char *why, void *data);
    oa_redis_reply_cb on_push; /* replies with no queued callback; NULL: dropped. priv is data. */
    void *data;
} oa_redis_options_t;

/* Starts connecting. Returns 0 with *out set (on_ready or on_error will fire, never before this returns), or -1
 * with err filled (out of memory, empty host, port out of range). The option strings are copied. */
int oa_redis_connect(uv_loop_t *loop, const oa_redis_options_t *o, oa_redis_t **out, oa_error_t *err);

/*
 * Queues one command, formatted as redisFormatCommand does ("%s" a C string, "%b" a pointer and a size_t length,
 * each argument one word). Commands may be queued before on_ready: they go out, in order, once the connection is
 * up. cb NULL: the reply is read and dropped. Returns 0 (cb will fire exactly once, with the reply or with NULL,
 * never before this returns), or -1 when the connection has failed or is being freed, or on a format error or
 * out of memory (cb will not fire).
 */
int oa_redis_command(oa_redis_t *r, oa_redis_reply_cb cb, void *priv, const char *fmt, ...);

/* true once on_ready has fired and until the connection fails. */
bool oa_redis_ready(const oa_redis_t *r);

/* The data pointer of the options. */
void *oa_redis_data(const oa_redis_t *r);

/* Closes the connection at once: every queued callback fires with NULL before this returns, then nothing more
 * fires. The memory goes once libuv has closed the handles. Safe inside any callback of r, and on NULL. */
void oa_redis_free(oa_redis_t *r);

#endif
