/*
 * A reply to a plain HTTP GET, produced by a request handler outside the
 * fan-out (metrics, dashboard API, static files) and written by the fan-out
 * loop that owns the connection.
 *
 * A handler either answers at once (RT_HANDLE_DONE, *out filled) or hands the
 * work to a thread of its own and returns RT_HANDLE_LATER; it must then call
 * done(done_arg, reply) exactly once, from any thread, even when the client
 * has gone away meanwhile (the fan-out then just frees the reply). A handler
 * never blocks: SQL runs on the handler's own connection and thread.
 *
 * The fan-out adds Content-Length, Connection and the CORS headers of the
 * streaming endpoints; the handler sets status, content type, body and any
 * other headers (each ending in "\r\n").
 */
#ifndef RT_REPLY_H
#define RT_REPLY_H

#include <stddef.h>

typedef struct rt_reply {
    int status;               /* 200, 400, 404, 503, ... */
    const char *content_type; /* static string, e.g. "application/json" */
    char *body;               /* the body; freed with free() unless body_static */
    size_t len;
    int body_static;          /* 1: body is static data, not to be freed */
    char headers[256];        /* extra header lines, e.g. "Cache-Control: no-store\r\n" */
} rt_reply_t;

typedef enum {
    RT_HANDLE_NOT_MINE = 0, /* path not handled here: the fan-out answers 404 */
    RT_HANDLE_DONE,         /* *out holds the reply */
    RT_HANDLE_LATER,        /* done() will be called once, from any thread */
} rt_handle_result_t;

/* Called once per deferred request; takes ownership of reply->body. */
typedef void (*rt_reply_done_cb)(void *done_arg, rt_reply_t *reply);

/* A handler for GET requests under a path prefix. path is decoded, query is
 * the raw query string ("" when none). Runs on a fan-out loop thread: it must
 * return in microseconds. */
typedef rt_handle_result_t (*rt_handler_fn)(void *ctx, const char *path, const char *query,
                                            rt_reply_t *out, rt_reply_done_cb done,
                                            void *done_arg);

/* Fills *r with a JSON error reply {"error":msg,"parameter":param} (param may
 * be NULL), Cache-Control: no-store. */
void rt_reply_json_error(rt_reply_t *r, int status, const char *msg, const char *param);
/* Fills *r with a 200 reply owning body (malloc'd). */
void rt_reply_owned(rt_reply_t *r, int status, const char *content_type, char *body, size_t len);

#endif
