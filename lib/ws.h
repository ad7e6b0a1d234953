/*
 * WebSocket (RFC 6455) for the fan-out loops, on wslay.
 *
 * Three parts, none touching sockets or libuv, so each is unit-tested on
 * bytes:
 *  - the handshake: validating an upgrade request and computing
 *    Sec-WebSocket-Accept (SHA-1 + base64 through libcrypto);
 *  - a per-connection framing context around wslay's event API: bytes read
 *    from the socket go in with rt_ws_feed(); complete text messages, pings
 *    and closes come out through callbacks; everything wslay wants to send
 *    (pongs, close frames, our control replies) is appended to an output
 *    buffer the caller takes with rt_ws_take_output() and writes. Because
 *    wslay only ever emits whole frames into that buffer, the caller may put
 *    pre-encoded broadcast frames (rt_event_t.ws_frame) between two takes;
 *  - parsing the client's JSON messages (ping, subscribe, unsubscribe,
 *    resume, auth).
 *
 * A context belongs to one connection on one loop (wslay is not
 * thread-safe).
 */
#ifndef RT_WS_H
#define RT_WS_H

#include "http.h"

#include <stddef.h>
#include <stdint.h>

/* ---- handshake ------------------------------------------------------------------ */

/* Computes Sec-WebSocket-Accept for a client key (28 chars + NUL into out).
 * Any thread; aborts only if libcrypto runs out of memory. */
void rt_ws_accept_key(const char *client_key, char out[29]);

/* Checks a parsed request is a valid WebSocket upgrade: GET, Upgrade
 * containing the token "websocket", Connection containing "upgrade",
 * Sec-WebSocket-Key that base64-decodes to 16 bytes, Sec-WebSocket-Version 13.
 * Returns 0 and fills accept (29 bytes) if valid; otherwise returns the status
 * to answer: 400 (malformed: *reason says which header), or 426 when only the
 * version is wrong or missing (answer with "Sec-WebSocket-Version: 13").
 * Other methods than GET get 400 too. The key must be exactly 22 base64
 * characters followed by "==" (surrounding spaces/tabs are ignored). *reason
 * (may be NULL) is a static string, set to NULL on success. Any thread. */
int rt_ws_check_handshake(const rt_http_req_t *r, char accept[29], const char **reason);

/* Formats the 101 Switching Protocols response (malloc'd and NUL-terminated
 * into *out, caller frees; its length is returned). Aborts on OOM. */
size_t rt_ws_format_101(char **out, const char accept[29]);

/* ---- framing ------------------------------------------------------------------- */

typedef struct rt_ws rt_ws_t;

/* All callbacks run synchronously inside rt_ws_feed(), on the caller's
 * thread. They may call rt_ws_send_*() and rt_ws_take_output(), never
 * rt_ws_feed(); only on_close may call rt_ws_free(). */
typedef struct rt_ws_callbacks {
    /* A complete text message (valid UTF-8, reassembled from fragments). msg
     * is valid only during the call and not NUL-terminated ("" when empty,
     * never NULL). Not called any more once our close frame was sent.
     * May be NULL. */
    void (*on_text)(void *ud, const char *msg, size_t len);
    /* The peer sent a pong (for liveness). May be NULL. */
    void (*on_pong)(void *ud);
    /* The session is over for the reason given: the peer sent a close frame
     * (code is theirs), or we closed it because of a protocol error: 1002
     * protocol error (e.g. unmasked frame), 1003 binary message, 1007 invalid
     * UTF-8, 1009 message too big, 1011 out of memory. If the peer's close
     * carried no code, code is 1005. The close reply (if one is due: none
     * when we had already sent ours) is already in the output; take it,
     * write it, then close the socket. Called at most once, and only from
     * rt_ws_feed(), as the last thing it does with ws: rt_ws_free() from
     * here is allowed. rt_ws_send_close() does not call it: after our close
     * the session ends when the peer's close arrives (on_close with its
     * code) or when the caller gives up waiting. May be NULL. */
    void (*on_close)(void *ud, uint16_t code);
} rt_ws_callbacks_t;

/* max_message: the largest accepted message (bigger → close 1009; control
 * frames count too, so keep it >= 125). A fragmented message is refused as
 * soon as its fragments declare more, before the payload is buffered.
 * *cb is copied. Never returns NULL (aborts on OOM). */
rt_ws_t *rt_ws_new(size_t max_message, const rt_ws_callbacks_t *cb, void *ud);
/* Frees the context and any output not taken. Not from on_text/on_pong. */
void rt_ws_free(rt_ws_t *ws);

/* Processes bytes read from the peer (any split: partial frames are kept
 * for the next call; data is not referenced after return); callbacks run
 * synchronously inside. Afterwards everything to send (pongs, the close
 * reply, replies queued from callbacks) is in the output. Returns 0 (also
 * on the call that ends the session and calls on_close), or -1 if the
 * session was already over (ignore further input). */
int rt_ws_feed(rt_ws_t *ws, const char *data, size_t len);

/* Appends a text message (must be valid UTF-8: not checked) / an empty ping /
 * a close (code 1000-1014 other than 1004-1006, or 3000-4999; reason NULL or
 * at most 123 bytes of UTF-8) to the output as whole unmasked frames.
 * Return 0; -EPIPE once a close was sent (ours, or our reply to the peer's);
 * -EINVAL for a bad close code or reason; -ENOMEM. */
int rt_ws_send_text(rt_ws_t *ws, const char *msg, size_t len);
int rt_ws_send_ping(rt_ws_t *ws);
int rt_ws_send_close(rt_ws_t *ws, uint16_t code, const char *reason);

/* Moves everything queued for output into *buf (malloc'd, caller frees) and
 * returns its length; 0 (and *buf NULL) if nothing is queued. The bytes are
 * always whole frames. Take it after every rt_ws_feed()/rt_ws_send_*()
 * before writing frames of your own, so control replies keep their order;
 * after a close frame, write nothing more (check rt_ws_closing()). */
size_t rt_ws_take_output(rt_ws_t *ws, char **buf);

/* 1 once a close frame was sent or received (no more application data:
 * stop writing broadcast frames; the close frame is the last one). */
int rt_ws_closing(const rt_ws_t *ws);

/* 1 when the context holds nothing: the peer's input ended on a frame
 * boundary outside any fragmented message, all output was taken, and no close
 * is under way. The caller may then free it and start a fresh one on the
 * peer's next bytes (an idle connection need not keep wslay's ~9 KB). Not
 * from inside a callback. */
int rt_ws_at_rest(const rt_ws_t *ws);

/* ---- client messages ------------------------------------------------------------ */

typedef enum {
    RT_WS_MSG_PING,
    RT_WS_MSG_SUBSCRIBE,
    RT_WS_MSG_UNSUBSCRIBE,
    RT_WS_MSG_RESUME,
    RT_WS_MSG_AUTH,
} rt_ws_msg_type_t;

#define RT_WS_MAX_IDS 256
#define RT_WS_MAX_ID_LEN 64

typedef struct rt_ws_client_msg {
    rt_ws_msg_type_t type;
    int nids; /* subscribe/unsubscribe */
    char ids[RT_WS_MAX_IDS][RT_WS_MAX_ID_LEN];
    long long last_event_id; /* resume, >= 0 */
    char token[4096];        /* auth */
} rt_ws_client_msg_t;

/* Parses one client message. Returns 0, or -1 with a short message for the
 * client in err ("invalid JSON", "unknown type 'x'", "intent_ids must be an
 * array of strings", "too many intent_ids (max 256)", "last_event_id must be
 * a non-negative integer", ...). err (may be NULL; truncated to errlen) never
 * contains the token, quotes, backslashes or control characters, so it can
 * be echoed. Unknown fields are ignored; duplicate keys are invalid JSON.
 * ids: non-empty, at most RT_WS_MAX_ID_LEN-1 bytes, at most RT_WS_MAX_IDS
 * (an empty array is valid). last_event_id: a JSON integer >= 0 or a string
 * of decimal digits ("42"). token: non-empty, at most 4095 bytes. Only the
 * fields of the parsed type are meaningful; nids is 0 for other types.
 * Any thread. */
int rt_ws_parse_client_msg(const char *msg, size_t len, rt_ws_client_msg_t *out, char *err,
                           size_t errlen);

#endif
