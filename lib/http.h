/*
 * HTTP/1.1 requests, parsed with llhttp, for the fan-out loops: one
 * rt_http_req_t per connection, fed whatever bytes a read delivered. It
 * enforces the limits a public endpoint needs (request line + headers at most
 * RT_HTTP_MAX_HEADER_BYTES → 431, body at most max_body → 413, malformed →
 * 400) and keeps the parsed request in fixed storage, so a hostile peer
 * controls no allocation size.
 *
 * Also: query-string access with percent-decoding, header token lists, and
 * formatting of complete responses.
 *
 * Not thread-safe; a request object belongs to one connection on one loop.
 * No libuv here: this file is pure and unit-tested on byte strings. Nothing
 * here calls back into the caller.
 */
#ifndef RT_HTTP_H
#define RT_HTTP_H

#include <llhttp.h>
#include <stddef.h>

#define RT_HTTP_MAX_HEADER_BYTES 8192 /* request line + header lines + blank line */
#define RT_HTTP_MAX_HEADERS 64

typedef struct rt_http_header {
    const char *name; /* points into the request's storage; NUL-terminated */
    const char *value;
} rt_http_header_t;

typedef enum {
    RT_HTTP_NEED_MORE = 0, /* all input consumed; the request is not complete yet */
    RT_HTTP_DONE = 1,      /* a complete request; *consumed says how much input it used */
    RT_HTTP_ERROR = -1,    /* unusable request: answer error_status and close */
} rt_http_result_t;

/* The URL and header pointers point into the object itself (store), so an
 * rt_http_req_t must not be moved or copied while it holds a request; embed
 * it in the connection. All fields are read-only for callers. */
typedef struct rt_http_req {
    llhttp_t parser;
    int method;     /* llhttp_method_t (HTTP_GET, ...) */
    int upgrade;    /* the request asks for a protocol upgrade */
    int keep_alive; /* the connection may carry another request after this one */
    int done;
    int error_status;         /* 400, 413, 431 ... when RT_HTTP_ERROR */
    const char *error_reason; /* static string: ours or llhttp's reason */
    /* Storage for the URL and headers (each NUL-terminated), capped. */
    char store[RT_HTTP_MAX_HEADER_BYTES + 2 * RT_HTTP_MAX_HEADERS + 8];
    size_t store_used;
    size_t header_bytes; /* bytes of request line + headers seen; once the request is
                            DONE, exactly the bytes up to and including the blank line */
    const char *url;     /* full request target, e.g. "/ws/intents?intent_ids=a" */
    size_t url_len;
    rt_http_header_t headers[RT_HTTP_MAX_HEADERS];
    int nheaders;
    char *body; /* heap, at most max_body bytes; NULL when none; NUL-terminated
                   (the NUL is not counted in body_len) */
    size_t body_len;
    size_t max_body;
    int in_header_value; /* parser state for pieces arriving split */
    /* Added with lib/http.c; private to it. */
    int headers_done;     /* the blank line after the headers was seen */
    size_t body_cap;      /* allocated size of body (body_len + 1 for the NUL, or more) */
    size_t trailer_bytes; /* chunk extensions + trailer fields, capped like headers */
} rt_http_req_t;

/* Prepares r for a first request. max_body: largest accepted body (0: none;
 * a declared "Content-Length: 0" is still fine). Allocates nothing. */
void rt_http_req_init(rt_http_req_t *r, size_t max_body);
/* Releases the body; r may be initialised again. */
void rt_http_req_close(rt_http_req_t *r);
/* Forgets the finished request so the next one on a keep-alive connection
 * can be parsed. Also clears an error. Frees the body: copy out what you need
 * first. */
void rt_http_req_reset(rt_http_req_t *r);

/* Feeds bytes. On RT_HTTP_DONE, *consumed bytes of data belong to this
 * request; the rest (a pipelined request, or the first WebSocket frames after
 * an upgrade request) must be fed again after handling it (and after
 * rt_http_req_reset for a next request). On RT_HTTP_NEED_MORE *consumed == len.
 * On RT_HTTP_ERROR, error_status/error_reason say what to answer.
 *
 * The caller decides what follows a DONE:
 *  - upgrade == 1: the bytes after *consumed are in the new protocol (for a
 *    valid WebSocket handshake, frames: give them to the WebSocket layer) and
 *    must never be fed here. llhttp sets upgrade for any method with
 *    "Connection: upgrade" + "Upgrade: x" (and for CONNECT): check the method
 *    and headers (rt_ws_check_handshake) before switching.
 *  - keep_alive == 0 (HTTP/1.0 without keep-alive, or "Connection: close"):
 *    answer, then close; do not parse further requests.
 *  - otherwise answer, rt_http_req_reset, and feed the rest.
 * Feeding again before the reset returns DONE with *consumed == 0; after an
 * error, ERROR (sticky until reset). On ERROR *consumed is how far parsing
 * got, for logging only. Request line + headers are limited to
 * RT_HTTP_MAX_HEADER_BYTES bytes counted through the blank line (exactly that
 * many pass), and to RT_HTTP_MAX_HEADERS fields; chunk extensions and
 * trailer fields (read and dropped) share a budget of the same size. */
rt_http_result_t rt_http_req_feed(rt_http_req_t *r, const char *data, size_t len, size_t *consumed);

/* First header with this name (case-insensitive), or NULL. Values have no
 * leading or trailing whitespace. */
const char *rt_http_req_header(const rt_http_req_t *r, const char *name);
/* 1 if the comma-separated header value contains token (case-insensitive). */
int rt_http_has_token(const char *value, const char *token);

/* The path part of the URL (before '?' or '#'), copied NUL-terminated into
 * out; returns its length, or -1 if it does not fit. Not percent-decoded. An
 * absolute-form target ("http://host/p?q") gives its path ("/p", or "/"). */
int rt_http_req_path(const rt_http_req_t *r, char *out, size_t cap);
/* The query part (after '?'), or "" if none. Points into r's storage; the
 * length is in *len. */
const char *rt_http_req_query(const rt_http_req_t *r, size_t *len);

/* The index-th (0-based) value of key in a query string (a=1&b=2&a=3),
 * percent-decoded ('+' is a space) into out, NUL-terminated. Returns its
 * length, -1 if there is no such occurrence, -2 if it does not fit or is
 * malformed (bad %XX). Keys are compared after decoding, exactly (case
 * matters); "a" and "a=" have the value "". %00 counts as malformed (values
 * are used as C strings); a pair whose key is malformed matches no key.
 * Comma-separated lists inside a value are the caller's to split. */
int rt_http_query_get(const char *query, size_t qlen, const char *key, int index, char *out,
                      size_t cap);

/* Percent-decodes len bytes of a path (or a path segment) into out,
 * NUL-terminated; '+' stays '+'. Returns the length, or -2 if it does not fit
 * or is malformed (bad %XX, or %00). Decoded '/' and ".." are the caller's to
 * judge. Added for path segments such as /sse/intents/<id>. */
int rt_http_path_decode(const char *s, size_t len, char *out, size_t cap);

/* "OK", "Not Found", ...; "Unknown" for others. */
const char *rt_http_status_text(int status);

/* Formats a whole response into a malloc'd buffer (*out, length returned;
 * the caller frees it; it is also NUL-terminated): status line, Content-Type
 * (if non-NULL), Content-Length, Connection (keep-alive or close), any extra
 * header lines (each ending in \r\n; may be NULL), the blank line, and the
 * body (may be NULL when body_len is 0). Aborts on OOM.
 * As RFC 9110 requires, a 1xx response gets neither Content-Length nor
 * Connection (for 101 the extra headers carry "Upgrade: websocket\r\n
 * Connection: Upgrade\r\n..."), and a 204 no Content-Length; both drop the
 * body. For HEAD the caller passes no body. */
size_t rt_http_format_response(char **out, int status, const char *content_type,
                               const char *extra_headers, const char *body, size_t body_len,
                               int keep_alive);

#endif
