/*
 * HTTP/1.1 request parsing on llhttp, with the limits a public endpoint needs.
 *
 * llhttp is a streaming parser: it hands out the URL and header names and
 * values as spans of the caller's buffer, possibly in several pieces when a
 * token straddles two reads. We copy those pieces into the request's fixed
 * store, so a request never points into a read buffer that libuv will reuse,
 * and a peer controls no allocation except the body, which is capped by
 * max_body.
 *
 * Two pauses make byte accounting exact. on_headers_complete pauses, so the
 * parser tells us (llhttp_get_error_pos) where the header block ended; we
 * resume at once. on_message_complete pauses, so the parser stops right after
 * the request and the caller learns how many bytes it used: what follows is a
 * pipelined request, or WebSocket frames sent together with an upgrade
 * request, and must not be swallowed by the HTTP parser. Before the headers
 * end, llhttp is never given more bytes than the header budget has left, so
 * a peer cannot make us scan an unbounded run of bytes (whitespace, say) that
 * no callback would have counted.
 */
#include "http.h"

#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- request parsing ----------------------------------------------------------- */

static int fail(rt_http_req_t *r, int status, const char *reason)
{
    /* The first failure wins: llhttp may call several callbacks before it
     * notices the error, and the earliest one is the real cause. */
    if (!r->error_status) {
        r->error_status = status;
        r->error_reason = reason;
    }
    return -1;
}

static int fail_431(rt_http_req_t *r)
{
    return fail(r, 431, "Request Header Fields Too Large");
}

/* Appends to the store. The header budget already keeps the stored bytes
 * below the store's size (the store has room for every terminating NUL on
 * top of RT_HTTP_MAX_HEADER_BYTES), so failing here means the accounting has
 * a bug; answer 431 rather than overflow. */
static int store_append(rt_http_req_t *r, const char *at, size_t len)
{
    if (len > sizeof r->store - r->store_used) return fail_431(r);
    memcpy(r->store + r->store_used, at, len);
    r->store_used += len;
    return 0;
}

static int store_nul(rt_http_req_t *r)
{
    static const char nul = '\0';
    return store_append(r, &nul, 1);
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    return store_append(p->data, at, len);
}

static int on_url_complete(llhttp_t *p)
{
    rt_http_req_t *r = p->data;
    /* The URL is the first thing stored, so it starts at the store's start. */
    r->url = r->store;
    r->url_len = r->store_used;
    return store_nul(r);
}

/* Bytes of chunk extensions and trailers share one budget: they are
 * metadata, not body, and a peer could otherwise send them without end. */
static int count_trailer(rt_http_req_t *r, size_t len, int status, const char *reason)
{
    r->trailer_bytes += len;
    if (r->trailer_bytes > RT_HTTP_MAX_HEADER_BYTES) return fail(r, status, reason);
    return 0;
}

/* in_header_value: what the pieces arriving now belong to. */
enum { IN_NONE = 0, IN_FIELD = 1, IN_VALUE = 2, IN_EXTRA_FIELD = 3 };

static void start_header(rt_http_req_t *r)
{
    if (r->nheaders >= RT_HTTP_MAX_HEADERS) {
        /* One header too many. Refused when its name is complete, not now:
         * llhttp delivers a name in one piece or several depending on how
         * the reads were cut, and a bad byte in it must give the same 400
         * however they were cut. */
        r->in_header_value = IN_EXTRA_FIELD;
        return;
    }
    r->headers[r->nheaders].name = r->store + r->store_used;
    r->headers[r->nheaders].value = NULL;
    r->in_header_value = IN_FIELD;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    rt_http_req_t *r = p->data;
    if (r->headers_done) return count_trailer(r, len, 431, "Request Header Fields Too Large");
    if (r->in_header_value != IN_FIELD && r->in_header_value != IN_EXTRA_FIELD) start_header(r);
    if (r->in_header_value == IN_EXTRA_FIELD) return 0;
    return store_append(r, at, len);
}

/* RFC 9110 5.6.2 tchar. */
static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int on_header_field_complete(llhttp_t *p)
{
    rt_http_req_t *r = p->data;
    if (r->headers_done) return 0;
    if (r->in_header_value != IN_FIELD && r->in_header_value != IN_EXTRA_FIELD) start_header(r);
    if (r->in_header_value == IN_EXTRA_FIELD) return fail_431(r);
    /* llhttp built without LLHTTP_STRICT_MODE lets spaces into field names
     * ("Host : x", "Bad Name: x"). RFC 9112 5.1 requires a 400 for
     * whitespace before the colon: proxies disagree about such fields, which
     * is how requests get smuggled. */
    const char *name = r->headers[r->nheaders].name;
    if (name == r->store + r->store_used) return fail(r, 400, "Invalid header field name");
    for (const char *c = name; c < r->store + r->store_used; c++)
        if (!is_tchar((unsigned char)*c)) return fail(r, 400, "Invalid header field name");
    if (store_nul(r) != 0) return -1;
    r->headers[r->nheaders].value = r->store + r->store_used;
    r->in_header_value = IN_VALUE;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    rt_http_req_t *r = p->data;
    if (r->headers_done) return count_trailer(r, len, 431, "Request Header Fields Too Large");
    return store_append(r, at, len);
}

static int on_header_value_complete(llhttp_t *p)
{
    rt_http_req_t *r = p->data;
    if (r->headers_done) return 0;
    if (r->in_header_value != IN_VALUE) return fail(r, 400, "Bad Request");
    /* llhttp drops the whitespace before a value; drop the one after it too,
     * so "Upgrade: websocket \r\n" compares equal to "websocket". */
    const char *value = r->headers[r->nheaders].value;
    while (r->store + r->store_used > value &&
           (r->store[r->store_used - 1] == ' ' || r->store[r->store_used - 1] == '\t'))
        r->store_used--;
    if (store_nul(r) != 0) return -1;
    r->nheaders++;
    r->in_header_value = IN_NONE;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    rt_http_req_t *r = p->data;
    r->headers_done = 1;
    r->method = p->method;
    r->upgrade = p->upgrade;
    r->keep_alive = llhttp_should_keep_alive(p);
    /* Refuse a declared body that cannot fit before any of it arrives. */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > r->max_body)
        return fail(r, 413, "Payload Too Large");
    /* Pause so rt_http_req_feed learns where the header block ended. */
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    rt_http_req_t *r = p->data;
    if (len > r->max_body - r->body_len) return fail(r, 413, "Payload Too Large");
    size_t need = r->body_len + len + 1;
    if (need > r->body_cap) {
        /* A declared length is allocated at once (it was checked against
         * max_body); a chunked body grows by doubling up to max_body + 1. */
        size_t cap;
        if (p->flags & F_CONTENT_LENGTH) {
            cap = (size_t)p->content_length + 1;
        } else {
            cap = r->body_cap ? r->body_cap * 2 : 256;
            if (cap > r->max_body + 1) cap = r->max_body + 1;
        }
        if (cap < need) cap = need;
        char *b = realloc(r->body, cap);
        if (!b) abort(); /* bounded by max_body: out of memory is fatal */
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return 0;
}

static int on_chunk_extension(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    return count_trailer(p->data, len, 413, "Payload Too Large");
}

static int on_message_complete(llhttp_t *p)
{
    rt_http_req_t *r = p->data;
    r->done = 1;
    r->upgrade = p->upgrade;
    r->keep_alive = llhttp_should_keep_alive(p);
    /* Stop right after this request; see the top of the file. */
    return HPE_PAUSED;
}

/* llhttp keeps a pointer to its settings for the parser's lifetime. */
static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_message_complete = on_message_complete,
};

static void clear_request(rt_http_req_t *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    r->body_cap = 0;
    r->method = 0;
    r->upgrade = 0;
    r->keep_alive = 0;
    r->done = 0;
    r->error_status = 0;
    r->error_reason = NULL;
    r->store_used = 0;
    r->header_bytes = 0;
    r->url = NULL;
    r->url_len = 0;
    r->nheaders = 0;
    r->in_header_value = 0;
    r->headers_done = 0;
    r->trailer_bytes = 0;
}

void rt_http_req_init(rt_http_req_t *r, size_t max_body)
{
    r->body = NULL;
    clear_request(r);
    r->max_body = max_body;
    llhttp_init(&r->parser, HTTP_REQUEST, &settings);
    r->parser.data = r;
}

void rt_http_req_close(rt_http_req_t *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    r->body_cap = 0;
}

void rt_http_req_reset(rt_http_req_t *r)
{
    clear_request(r);
    /* Also clears a sticky error or a pause; keeps settings and data. */
    llhttp_reset(&r->parser);
    r->parser.data = r;
}

rt_http_result_t rt_http_req_feed(rt_http_req_t *r, const char *data, size_t len, size_t *consumed)
{
    size_t off = 0;
    *consumed = 0;
    if (r->error_status) return RT_HTTP_ERROR;
    if (r->done) return RT_HTTP_DONE;
    if (len == 0) return RT_HTTP_NEED_MORE;

    for (;;) {
        const char *chunk = data + off;
        size_t n = len - off;
        int before_headers = !r->headers_done;
        if (before_headers && n > RT_HTTP_MAX_HEADER_BYTES - r->header_bytes)
            n = RT_HTTP_MAX_HEADER_BYTES - r->header_bytes;

        llhttp_errno_t err = llhttp_execute(&r->parser, chunk, n);
        const char *pos = llhttp_get_error_pos(&r->parser);
        size_t used =
            (err != HPE_OK && pos && pos >= chunk && pos <= chunk + n) ? (size_t)(pos - chunk) : n;

        if (err == HPE_OK) {
            off += n;
            if (before_headers) {
                r->header_bytes += n;
                /* The budget is spent and the blank line has not come. */
                if (r->header_bytes >= RT_HTTP_MAX_HEADER_BYTES) {
                    fail_431(r);
                    *consumed = off;
                    return RT_HTTP_ERROR;
                }
            }
            if (off == len) {
                *consumed = len;
                return RT_HTTP_NEED_MORE;
            }
            continue; /* unreachable in practice: only the budget shortens n */
        }

        if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && !r->error_status) {
            off += used;
            if (before_headers) r->header_bytes += used;
            if (r->done || err == HPE_PAUSED_UPGRADE) {
                /* HPE_PAUSED_UPGRADE without our pause cannot happen with
                 * these callbacks (message_complete pauses first), but it
                 * means the same: the request ended here. */
                r->done = 1;
                r->upgrade = r->parser.upgrade;
                *consumed = off;
                return RT_HTTP_DONE;
            }
            if (before_headers && r->headers_done) {
                /* Our pause at the end of the headers: carry on, even with
                 * no bytes left, so a bodiless request completes now. */
                llhttp_resume(&r->parser);
                continue;
            }
            abort(); /* no other callback pauses */
        }

        /* A real error: ours (set by a callback) or llhttp's. */
        *consumed = off + used;
        if (!r->error_status) {
            const char *reason = llhttp_get_error_reason(&r->parser);
            r->error_status = 400;
            r->error_reason = reason && *reason ? reason : "Bad Request";
        }
        return RT_HTTP_ERROR;
    }
}

/* ---- headers ------------------------------------------------------------------- */

const char *rt_http_req_header(const rt_http_req_t *r, const char *name)
{
    for (int i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

int rt_http_has_token(const char *value, const char *token)
{
    if (!value || !token) return 0;
    size_t tlen = strlen(token);
    if (tlen == 0) return 0;
    const char *p = value;
    for (;;) {
        while (is_ows(*p))
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && is_ows(end[-1]))
            end--;
        if ((size_t)(end - start) == tlen && strncasecmp(start, token, tlen) == 0) return 1;
        if (!*p) return 0;
        p++; /* past the comma */
    }
}

/* ---- URL ----------------------------------------------------------------------- */

/* The origin-form part of the URL: an absolute-form target
 * ("http://host/path?q", which RFC 9112 says a server must accept) is cut
 * to its path and query. */
static const char *url_local(const rt_http_req_t *r, size_t *len)
{
    if (!r->url) {
        *len = 0;
        return "";
    }
    const char *u = r->url;
    size_t n = r->url_len;
    const char *sep = memmem(u, n, "://", 3);
    if (n > 0 && u[0] != '/' && sep) {
        const char *q = sep + 3;
        const char *end = u + n;
        while (q < end && *q != '/' && *q != '?' && *q != '#')
            q++;
        *len = (size_t)(end - q);
        return q;
    }
    *len = n;
    return u;
}

int rt_http_req_path(const rt_http_req_t *r, char *out, size_t cap)
{
    size_t n;
    const char *u = url_local(r, &n);
    size_t plen = 0;
    while (plen < n && u[plen] != '?' && u[plen] != '#')
        plen++;
    /* An absolute-form target without a path ("http://host") means "/". */
    const char *path = u;
    if (plen == 0 && r->url && r->url != u) {
        path = "/";
        plen = 1;
    }
    if (plen + 1 > cap) return -1;
    memcpy(out, path, plen);
    out[plen] = '\0';
    return (int)plen;
}

const char *rt_http_req_query(const rt_http_req_t *r, size_t *len)
{
    size_t n;
    const char *u = url_local(r, &n);
    const char *q = memchr(u, '?', n);
    if (!q) {
        *len = 0;
        return "";
    }
    q++;
    size_t qlen = (size_t)(u + n - q);
    const char *hash = memchr(q, '#', qlen);
    if (hash) qlen = (size_t)(hash - q);
    *len = qlen;
    return q;
}

/* ---- query strings ------------------------------------------------------------- */

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes the byte at s[*i] (advancing *i): %XX is a byte, and '+' a space
 * in a query (plus_is_space). Returns the byte, or -1 if malformed. %00
 * counts as malformed: values end up in C strings, where an embedded NUL
 * would silently cut them short. */
static int decode_one(const char *s, size_t n, size_t *i, int plus_is_space)
{
    unsigned char c = (unsigned char)s[*i];
    if (c == '+' && plus_is_space) {
        (*i)++;
        return ' ';
    }
    if (c != '%') {
        (*i)++;
        return c;
    }
    if (n - *i < 3) return -1;
    int hi = hex_value((unsigned char)s[*i + 1]), lo = hex_value((unsigned char)s[*i + 2]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return -1;
    *i += 3;
    return hi * 16 + lo;
}

/* 1 if the encoded key s[0..n) decodes to exactly key. A malformed key
 * matches nothing. */
static int key_equals(const char *s, size_t n, const char *key)
{
    size_t i = 0, k = 0;
    while (i < n) {
        int c = decode_one(s, n, &i, 1);
        if (c < 0 || key[k] == '\0' || (unsigned char)key[k] != c) return 0;
        k++;
    }
    return key[k] == '\0';
}

int rt_http_query_get(const char *query, size_t qlen, const char *key, int index, char *out,
                      size_t cap)
{
    size_t pos = 0;
    int seen = 0;
    while (pos < qlen) {
        const char *pair = query + pos;
        const char *amp = memchr(pair, '&', qlen - pos);
        size_t plen = amp ? (size_t)(amp - pair) : qlen - pos;
        pos += plen + 1;
        if (plen == 0) continue; /* "a=1&&b=2" */

        const char *eq = memchr(pair, '=', plen);
        size_t klen = eq ? (size_t)(eq - pair) : plen;
        if (!key_equals(pair, klen, key)) continue;
        if (seen++ != index) continue;

        const char *v = eq ? eq + 1 : pair + plen;
        size_t vlen = (size_t)(pair + plen - v);
        size_t i = 0, o = 0;
        while (i < vlen) {
            int c = decode_one(v, vlen, &i, 1);
            if (c < 0) return -2;
            if (o + 1 >= cap) return -2;
            out[o++] = (char)c;
        }
        if (o >= cap) return -2;
        out[o] = '\0';
        return (int)o;
    }
    return -1;
}

int rt_http_path_decode(const char *s, size_t len, char *out, size_t cap)
{
    size_t i = 0, o = 0;
    while (i < len) {
        int c = decode_one(s, len, &i, 0);
        if (c < 0 || o + 1 >= cap) return -2;
        out[o++] = (char)c;
    }
    if (o >= cap) return -2;
    out[o] = '\0';
    return (int)o;
}

/* ---- responses ----------------------------------------------------------------- */

const char *rt_http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

size_t rt_http_format_response(char **out, int status, const char *content_type,
                               const char *extra_headers, const char *body, size_t body_len,
                               int keep_alive)
{
    /* RFC 9110 8.6: no Content-Length in 1xx or 204 responses. A 101 also
     * gets no Connection header: the caller's extra headers carry
     * "Connection: Upgrade", and a second Connection header would
     * contradict it. */
    int informational = status >= 100 && status < 200;
    int with_length = !informational && status != 204;
    int with_connection = !informational;
    if (!with_length) body_len = 0;

    char head[512];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n", status, rt_http_status_text(status));
    if (n < 0 || (size_t)n >= sizeof head) abort();
    size_t hlen = (size_t)n;
    size_t ctlen = content_type ? strlen(content_type) : 0;
    size_t xlen = extra_headers ? strlen(extra_headers) : 0;

    char tail[128];
    int m = 0;
    if (with_length) {
        m = snprintf(tail, sizeof tail, "Content-Length: %zu\r\n", body_len);
        if (m < 0 || (size_t)m >= sizeof tail) abort();
    }
    if (with_connection) {
        int k = snprintf(tail + m, sizeof tail - (size_t)m, "Connection: %s\r\n",
                         keep_alive ? "keep-alive" : "close");
        if (k < 0 || (size_t)k >= sizeof tail - (size_t)m) abort();
        m += k;
    }

    size_t total = hlen + (content_type ? 14 + ctlen + 2 : 0) + (size_t)m + xlen + 2 + body_len;
    char *buf = malloc(total + 1);
    if (!buf) abort();
    char *p = buf;
    memcpy(p, head, hlen);
    p += hlen;
    if (content_type) {
        memcpy(p, "Content-Type: ", 14);
        p += 14;
        memcpy(p, content_type, ctlen);
        p += ctlen;
        memcpy(p, "\r\n", 2);
        p += 2;
    }
    memcpy(p, tail, (size_t)m);
    p += m;
    if (xlen) {
        memcpy(p, extra_headers, xlen);
        p += xlen;
    }
    memcpy(p, "\r\n", 2);
    p += 2;
    if (body_len) {
        memcpy(p, body, body_len);
        p += body_len;
    }
    *p = '\0';
    *out = buf;
    return total;
}
