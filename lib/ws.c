/*
 * WebSocket (RFC 6455) on wslay: the upgrade handshake, a per-connection
 * framing context, and parsing of the client's JSON messages.
 *
 * The framing context wraps wslay's event API without any I/O of its own.
 * wslay pulls input through a recv callback, which here reads from the buffer
 * handed to rt_ws_feed() and reports WSLAY_ERR_WOULDBLOCK once it is used up,
 * and it pushes output through a send callback, which here appends to a
 * growable buffer and always accepts every byte. Because the send callback
 * never pushes back, every wslay_event_send() drains wslay's queues
 * completely; we call it at the end of every public entry point, so between
 * two calls the output buffer holds only whole frames and the caller may
 * write its own pre-encoded frames between two rt_ws_take_output() calls.
 *
 * The session ends (on_close, exactly once) when a close frame arrives from
 * the peer, or when wslay or we refuse the peer's input (1002, 1003, 1007,
 * 1009); by then the close frame we answer with is already in the output.
 * on_close is the last thing rt_ws_feed() does with the context, so the
 * caller may free it from there.
 */
#include "ws.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <wslay/wslay.h>

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- handshake ------------------------------------------------------------------ */

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

void rt_ws_accept_key(const char *client_key, char out[29])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    /* Two updates instead of one EVP_Digest over a concatenation, so a key
     * of any length needs no buffer of ours. Failures here are out of memory
     * inside libcrypto: abort, as for any small internal allocation. */
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(md, client_key, strlen(client_key)) != 1 ||
        EVP_DigestUpdate(md, WS_GUID, sizeof(WS_GUID) - 1) != 1 ||
        EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 20)
        abort();
    EVP_MD_CTX_free(md);
    /* 20 bytes encode to 28 characters; EVP_EncodeBlock adds the NUL. */
    int n = EVP_EncodeBlock((unsigned char *)out, digest, 20);
    assert(n == 28);
    (void)n;
}

static int is_b64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* Copies value without surrounding spaces/tabs into out; -1 if too long. */
static int trim_copy(const char *value, char *out, size_t cap)
{
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t'))
        n--;
    if (n >= cap) return -1;
    memcpy(out, value, n);
    out[n] = '\0';
    return (int)n;
}

/* A 16-byte value in base64 is exactly 22 alphabet characters and "==".
 * Checking the shape is the strict form of "decodes to 16 bytes":
 * EVP_DecodeBlock would count the padding as data (18 bytes for 24
 * characters) and accept surrounding whitespace. Unused low bits of the last
 * character are not checked, as other servers (Node's ws) do not either. */
static int valid_key(const char *key)
{
    for (int i = 0; i < 22; i++)
        if (!is_b64_char((unsigned char)key[i])) return 0;
    return key[22] == '=' && key[23] == '=' && key[24] == '\0';
}

int rt_ws_check_handshake(const rt_http_req_t *r, char accept[29], const char **reason)
{
    const char *why = NULL;
    int status = 400;
    const char *v;
    char key[32], version[8];

    if (r->method != HTTP_GET) {
        why = "WebSocket upgrade requires GET";
        goto fail;
    }
    v = rt_http_req_header(r, "Upgrade");
    if (v == NULL || !rt_http_has_token(v, "websocket")) {
        why = "Upgrade header must contain websocket";
        goto fail;
    }
    v = rt_http_req_header(r, "Connection");
    if (v == NULL || !rt_http_has_token(v, "upgrade")) {
        why = "Connection header must contain upgrade";
        goto fail;
    }
    v = rt_http_req_header(r, "Sec-WebSocket-Key");
    if (v == NULL || trim_copy(v, key, sizeof(key)) != 24 || !valid_key(key)) {
        why = "invalid Sec-WebSocket-Key";
        goto fail;
    }
    v = rt_http_req_header(r, "Sec-WebSocket-Version");
    if (v == NULL || trim_copy(v, version, sizeof(version)) < 0 || strcmp(version, "13") != 0) {
        why = "unsupported Sec-WebSocket-Version (13 required)";
        status = 426;
        goto fail;
    }
    rt_ws_accept_key(key, accept);
    if (reason != NULL) *reason = NULL;
    return 0;

fail:
    if (reason != NULL) *reason = why;
    return status;
}

size_t rt_ws_format_101(char **out, const char accept[29])
{
    static const char fmt[] = "HTTP/1.1 101 Switching Protocols\r\n"
                              "Upgrade: websocket\r\n"
                              "Connection: Upgrade\r\n"
                              "Sec-WebSocket-Accept: %.28s\r\n"
                              "\r\n";
    int n = snprintf(NULL, 0, fmt, accept);
    assert(n > 0);
    char *buf = malloc((size_t)n + 1);
    if (buf == NULL) abort();
    snprintf(buf, (size_t)n + 1, fmt, accept);
    *out = buf;
    return (size_t)n;
}

/* ---- framing ------------------------------------------------------------------- */

struct rt_ws {
    wslay_event_context_ptr ctx;
    rt_ws_callbacks_t cb;
    void *ud;
    /* Input for the recv callback: valid only during rt_ws_feed(). */
    const uint8_t *in;
    size_t in_len;
    /* Whole frames waiting for rt_ws_take_output(). */
    char *out;
    size_t out_len, out_cap;
    /* A close code we chose ourselves (1002 rewrite, 1003, 1011), which wins
     * over what wslay reports as sent. */
    uint16_t our_code;
    int in_feed;
    int done; /* on_close was called */
    /* Where the peer's byte stream stands, tracked beside wslay so the caller
     * can tell when nothing is buffered mid-frame (rt_ws_at_rest). */
    uint8_t hdr[14];
    uint8_t hdr_len, hdr_need;
    uint64_t payload_left;
    int frag_open; /* a fragmented data message has begun and not ended */
};

/* Follows frame boundaries in the input (RFC 6455 §5.2 header layout). */
static void track(rt_ws_t *ws, const uint8_t *p, size_t len)
{
    while (len) {
        if (ws->payload_left) {
            uint64_t n = ws->payload_left < len ? ws->payload_left : len;
            ws->payload_left -= n;
            p += n;
            len -= (size_t)n;
            continue;
        }
        ws->hdr[ws->hdr_len++] = *p++;
        len--;
        if (ws->hdr_len == 2) {
            unsigned len7 = ws->hdr[1] & 0x7f;
            ws->hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) +
                                     ((ws->hdr[1] & 0x80) ? 4 : 0));
        }
        if (ws->hdr_len < 2 || ws->hdr_len < ws->hdr_need) continue;
        unsigned len7 = ws->hdr[1] & 0x7f;
        uint64_t plen = len7;
        if (len7 == 126) plen = ((uint64_t)ws->hdr[2] << 8) | ws->hdr[3];
        if (len7 == 127) {
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | ws->hdr[2 + i];
        }
        unsigned opcode = ws->hdr[0] & 0x0f;
        if (opcode < 8) ws->frag_open = !(ws->hdr[0] & 0x80); /* data and continuation frames */
        ws->payload_left = plen;
        ws->hdr_len = ws->hdr_need = 0;
    }
}

int rt_ws_at_rest(const rt_ws_t *ws)
{
    return !ws->done && !ws->in_feed && ws->hdr_len == 0 && ws->payload_left == 0 &&
           !ws->frag_open && ws->out_len == 0 && !wslay_event_get_close_sent(ws->ctx) &&
           !wslay_event_get_close_received(ws->ctx) &&
           wslay_event_get_queued_msg_count(ws->ctx) == 0;
}

static void out_append(rt_ws_t *ws, const void *data, size_t len)
{
    if (len > ws->out_cap - ws->out_len) {
        size_t cap = ws->out_cap ? ws->out_cap : 256;
        while (cap - ws->out_len < len) {
            if (cap > SIZE_MAX / 2) abort();
            cap *= 2;
        }
        char *p = realloc(ws->out, cap);
        if (p == NULL) abort();
        ws->out = p;
        ws->out_cap = cap;
    }
    memcpy(ws->out + ws->out_len, data, len);
    ws->out_len += len;
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    rt_ws_t *ws = ud;
    (void)flags;
    if (ws->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < ws->in_len ? len : ws->in_len;
    memcpy(buf, ws->in, n);
    ws->in += n;
    ws->in_len -= n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    (void)ctx;
    (void)flags;
    out_append(ud, data, len);
    return (ssize_t)len;
}

/* Servers never mask (RFC 6455 §5.1), so wslay never asks for a mask; if it
 * ever did, failing is better than a predictable key. */
static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ctx;
    (void)buf;
    (void)len;
    (void)ud;
    return -1;
}

static void on_msg_recv(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                        void *ud)
{
    rt_ws_t *ws = ud;
    switch (arg->opcode) {
    case WSLAY_TEXT_FRAME:
        /* Once our close is out, the peer's remaining data is of no use. */
        /* wslay passes NULL for an empty message; callers get "" instead so
         * they never hand NULL to memcpy or a JSON parser. */
        if (!wslay_event_get_close_sent(ctx) && ws->cb.on_text != NULL)
            ws->cb.on_text(ws->ud, arg->msg != NULL ? (const char *)arg->msg : "", arg->msg_length);
        break;
    case WSLAY_BINARY_FRAME:
        /* We speak JSON text only. Stop reading: the loop in
         * wslay_event_recv() checks read_enabled before the next frame. */
        if (wslay_event_queue_close(ctx, WSLAY_CODE_UNSUPPORTED_DATA,
                                    (const uint8_t *)"text messages only", 18) == 0)
            ws->our_code = WSLAY_CODE_UNSUPPORTED_DATA;
        wslay_event_shutdown_read(ctx);
        break;
    case WSLAY_PONG:
        if (ws->cb.on_pong != NULL) ws->cb.on_pong(ws->ud);
        break;
    default:
        /* Pings are answered and closes recorded by wslay itself. */
        break;
    }
}

/* Hands everything wslay has queued to the output buffer. The send callback
 * accepts every byte, so this empties wslay's queues (or stops because a
 * close frame went out and wslay refuses to write more). */
static void flush(rt_ws_t *ws)
{
    int rv = wslay_event_send(ws->ctx);
    /* Only an out-of-memory inside wslay can fail here. */
    if (rv != 0 && rv != WSLAY_ERR_CALLBACK_FAILURE) abort();
}

rt_ws_t *rt_ws_new(size_t max_message, const rt_ws_callbacks_t *cb, void *ud)
{
    static const struct wslay_event_callbacks wcb = {
        .recv_callback = recv_cb,
        .send_callback = send_cb,
        .genmask_callback = genmask_cb,
        .on_msg_recv_callback = on_msg_recv,
    };
    rt_ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) abort();
    ws->cb = *cb;
    ws->ud = ud;
    if (wslay_event_context_server_init(&ws->ctx, &wcb, ws) != 0)
        abort(); /* only fails on out-of-memory */
    wslay_event_config_set_max_recv_msg_length(ws->ctx, max_message);
    return ws;
}

void rt_ws_free(rt_ws_t *ws)
{
    if (ws == NULL) return;
    assert(!ws->in_feed);
    wslay_event_context_free(ws->ctx);
    free(ws->out);
    free(ws);
}

/* wslay's frame layer reports some protocol errors (a control frame over 125
 * bytes or fragmented, a non-minimal length encoding) by queueing a close
 * frame without a status code and failing wslay_event_recv(). RFC 6455
 * wants 1002 there, and an empty close is exactly the two bytes 0x88 0x00,
 * so we replace it when it is the frame that flush() just appended. */
static void rewrite_empty_close(rt_ws_t *ws, size_t mark)
{
    static const uint8_t close_1002[] = {0x88, 0x02, 0x03, 0xea};
    if (ws->out_len == mark + 2 && (uint8_t)ws->out[mark] == 0x88 &&
        (uint8_t)ws->out[mark + 1] == 0x00) {
        ws->out_len = mark;
        out_append(ws, close_1002, sizeof(close_1002));
        ws->our_code = WSLAY_CODE_PROTOCOL_ERROR;
    }
}

int rt_ws_feed(rt_ws_t *ws, const char *data, size_t len)
{
    if (ws->done) return -1;
    assert(!ws->in_feed); /* no rt_ws_feed() from inside a callback */
    ws->in_feed = 1;
    track(ws, (const uint8_t *)data, len);
    ws->in = (const uint8_t *)data;
    ws->in_len = len;
    int had_close_sent = wslay_event_get_close_sent(ws->ctx);
    int rv = wslay_event_recv(ws->ctx);
    ws->in = NULL;
    ws->in_len = 0;
    size_t mark = ws->out_len;
    if (rv != 0 && rv != WSLAY_ERR_CALLBACK_FAILURE) {
        /* Out of memory buffering the peer's message: wslay stopped reading
         * without queueing a close. The close may fail if ours is already
         * queued; then that one stands. */
        if (wslay_event_queue_close(ws->ctx, WSLAY_CODE_INTERNAL_SERVER_ERROR, NULL, 0) == 0)
            ws->our_code = WSLAY_CODE_INTERNAL_SERVER_ERROR;
        wslay_event_shutdown_read(ws->ctx);
    }
    flush(ws);
    if (rv == WSLAY_ERR_CALLBACK_FAILURE && !had_close_sent) rewrite_empty_close(ws, mark);
    ws->in_feed = 0;

    if (wslay_event_get_read_enabled(ws->ctx)) return 0;
    /* Reading stopped: the peer closed, or its input was refused. */
    uint16_t code;
    if (wslay_event_get_close_received(ws->ctx))
        code = wslay_event_get_status_code_received(ws->ctx);
    else if (ws->our_code != 0)
        code = ws->our_code;
    else
        code = wslay_event_get_status_code_sent(ws->ctx);
    ws->done = 1;
    /* Last use of ws: the callback may free it. */
    if (ws->cb.on_close != NULL) ws->cb.on_close(ws->ud, code);
    return 0;
}

static int queue(rt_ws_t *ws, uint8_t opcode, const void *msg, size_t len)
{
    struct wslay_event_msg m = {.opcode = opcode, .msg = msg, .msg_length = len};
    int rv = wslay_event_queue_msg(ws->ctx, &m);
    if (rv == WSLAY_ERR_NO_MORE_MSG) return -EPIPE;
    if (rv == WSLAY_ERR_NOMEM) return -ENOMEM;
    if (rv != 0) return -EINVAL;
    flush(ws);
    return 0;
}

int rt_ws_send_text(rt_ws_t *ws, const char *msg, size_t len)
{
    return queue(ws, WSLAY_TEXT_FRAME, msg, len);
}

int rt_ws_send_ping(rt_ws_t *ws)
{
    return queue(ws, WSLAY_PING, NULL, 0);
}

static int sendable_close_code(uint16_t code)
{
    return (code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006) ||
           (code >= 3000 && code <= 4999);
}

int rt_ws_send_close(rt_ws_t *ws, uint16_t code, const char *reason)
{
    size_t rlen = reason != NULL ? strlen(reason) : 0;
    if (!sendable_close_code(code) || rlen > 123) return -EINVAL;
    int rv = wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, rlen);
    if (rv == WSLAY_ERR_NO_MORE_MSG) return -EPIPE;
    if (rv != 0) return rv == WSLAY_ERR_NOMEM ? -ENOMEM : -EINVAL;
    flush(ws);
    return 0;
}

size_t rt_ws_take_output(rt_ws_t *ws, char **buf)
{
    size_t n = ws->out_len;
    if (n == 0) {
        *buf = NULL;
        return 0;
    }
    *buf = ws->out;
    ws->out = NULL;
    ws->out_len = ws->out_cap = 0;
    return n;
}

int rt_ws_closing(const rt_ws_t *ws)
{
    return wslay_event_get_close_sent(ws->ctx) || wslay_event_get_close_received(ws->ctx);
}

/* ---- client messages ------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A peer-chosen string made safe to quote back: at most 32 characters from
 * [A-Za-z0-9_.-], anything else as '?', so an error message never carries
 * quotes, backslashes, control characters or broken UTF-8. */
static void safe_echo(const char *s, char out[36])
{
    size_t i = 0;
    for (; s[i] != '\0' && i < 32; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
        out[i] = ok ? (char)c : '?';
    }
    if (s[i] != '\0') {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

static int parse_ids(json_t *root, rt_ws_client_msg_t *out, char *err, size_t errlen)
{
    json_t *ids = json_object_get(root, "intent_ids");
    if (!json_is_array(ids)) {
        set_err(err, errlen, "intent_ids must be an array of strings");
        return -1;
    }
    size_t n = json_array_size(ids);
    if (n > RT_WS_MAX_IDS) {
        set_err(err, errlen, "too many intent_ids (max %d)", RT_WS_MAX_IDS);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(ids, i);
        if (!json_is_string(id)) {
            set_err(err, errlen, "intent_ids must be an array of strings");
            return -1;
        }
        size_t len = json_string_length(id);
        if (len == 0) {
            set_err(err, errlen, "intent_ids must not contain empty strings");
            return -1;
        }
        if (len >= RT_WS_MAX_ID_LEN) {
            set_err(err, errlen, "intent_id too long (max %d bytes)", RT_WS_MAX_ID_LEN - 1);
            return -1;
        }
        /* jansson rejects \u0000 by default, so the length is the C length. */
        memcpy(out->ids[i], json_string_value(id), len + 1);
    }
    out->nids = (int)n;
    return 0;
}

/* JavaScript clients may hold ids as strings ("42"): accept plain decimal
 * digits, nothing else (no sign, space, exponent or fraction). */
static int parse_decimal(const char *s, long long *out)
{
    long long v = 0;
    if (*s == '\0') return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') return -1;
        int d = *s - '0';
        if (v > (LLONG_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int parse_resume(json_t *root, rt_ws_client_msg_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, "last_event_id");
    long long id = -1;
    if (json_is_integer(v))
        id = json_integer_value(v);
    else if (json_is_string(v) && parse_decimal(json_string_value(v), &id) != 0)
        id = -1;
    if (id < 0) {
        set_err(err, errlen, "last_event_id must be a non-negative integer");
        return -1;
    }
    out->last_event_id = id;
    return 0;
}

static int parse_auth(json_t *root, rt_ws_client_msg_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, "token");
    if (!json_is_string(v) || json_string_length(v) == 0) {
        set_err(err, errlen, "token must be a non-empty string");
        return -1;
    }
    size_t len = json_string_length(v);
    if (len >= sizeof(out->token)) {
        set_err(err, errlen, "token too long (max %zu bytes)", sizeof(out->token) - 1);
        return -1;
    }
    memcpy(out->token, json_string_value(v), len + 1);
    return 0;
}

int rt_ws_parse_client_msg(const char *msg, size_t len, rt_ws_client_msg_t *out, char *err,
                           size_t errlen)
{
    int rc = -1;
    json_error_t jerr;
    /* Duplicate keys would make "which type?" ambiguous: refuse them.
     * JSON_DECODE_ANY so that a bare scalar gets the clearer error below. */
    json_t *root = json_loadb(msg, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);

    out->nids = 0;
    out->last_event_id = 0;
    out->token[0] = '\0';
    if (root == NULL) {
        /* jerr.text may quote the input: keep it to ourselves. */
        set_err(err, errlen, "invalid JSON");
        goto out;
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "message must be a JSON object");
        goto out;
    }
    json_t *t = json_object_get(root, "type");
    if (!json_is_string(t)) {
        set_err(err, errlen, "missing \"type\"");
        goto out;
    }
    const char *type = json_string_value(t);
    if (strcmp(type, "ping") == 0) {
        out->type = RT_WS_MSG_PING;
        rc = 0;
    } else if (strcmp(type, "subscribe") == 0) {
        out->type = RT_WS_MSG_SUBSCRIBE;
        rc = parse_ids(root, out, err, errlen);
    } else if (strcmp(type, "unsubscribe") == 0) {
        out->type = RT_WS_MSG_UNSUBSCRIBE;
        rc = parse_ids(root, out, err, errlen);
    } else if (strcmp(type, "resume") == 0) {
        out->type = RT_WS_MSG_RESUME;
        rc = parse_resume(root, out, err, errlen);
    } else if (strcmp(type, "auth") == 0) {
        out->type = RT_WS_MSG_AUTH;
        rc = parse_auth(root, out, err, errlen);
    } else {
        char echo[36];
        safe_echo(type, echo);
        set_err(err, errlen, "unknown type '%s'", echo);
    }

out:
    json_decref(root);
    return rc;
}
