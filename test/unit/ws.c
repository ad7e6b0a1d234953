/* Unit tests for lib/ws.c: the upgrade handshake (on requests parsed by the
 * real lib/http.c), framing on hand-built masked client frames, the frames
 * we emit (decoded back here), and parsing of client JSON messages. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "http.h"
#include "ws.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers: client frames --------------------------------------------------- */

/* The masking key of RFC 6455 §5.7's examples. */
static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

typedef struct bytes {
    uint8_t *p;
    size_t n, cap;
} bytes_t;

static void bytes_put(bytes_t *b, const void *data, size_t len)
{
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + len)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void bytes_free(bytes_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Appends one client frame: FIN bit, opcode, payload; masked with MASK unless
 * masked is 0. */
static void add_frame_ex(bytes_t *b, int fin, int opcode, const void *payload, size_t len,
                         int masked)
{
    uint8_t h[14];
    size_t n = 0;
    uint8_t m = masked ? 0x80 : 0;
    h[n++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        h[n++] = (uint8_t)(m | len);
    } else if (len < 65536) {
        h[n++] = m | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = m | 127;
        for (int i = 7; i >= 0; i--)
            h[n++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    if (masked) {
        memcpy(h + n, MASK, 4);
        n += 4;
    }
    bytes_put(b, h, n);
    const uint8_t *p = payload;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)(p[i] ^ (masked ? MASK[i % 4] : 0));
        bytes_put(b, &c, 1);
    }
}

static void add_frame(bytes_t *b, int fin, int opcode, const void *payload, size_t len)
{
    add_frame_ex(b, fin, opcode, payload, len, 1);
}

static void add_text(bytes_t *b, const char *s)
{
    add_frame(b, 1, 0x1, s, strlen(s));
}

/* ---- helpers: server frames --------------------------------------------------- */

typedef struct oframe {
    int fin, rsv, opcode, masked;
    size_t len;
    const uint8_t *payload;
} oframe_t;

/* Splits output into frames; every byte must belong to a complete frame. */
static size_t parse_frames(const char *out, size_t n, oframe_t *f, size_t max)
{
    const uint8_t *p = (const uint8_t *)out;
    size_t off = 0, count = 0;
    while (off < n) {
        assert_true(count < max);
        assert_true(n - off >= 2);
        oframe_t *fr = &f[count++];
        fr->fin = p[off] >> 7;
        fr->rsv = (p[off] >> 4) & 7;
        fr->opcode = p[off] & 0xf;
        fr->masked = p[off + 1] >> 7;
        size_t len = p[off + 1] & 0x7f;
        off += 2;
        if (len == 126) {
            assert_true(n - off >= 2);
            len = ((size_t)p[off] << 8) | p[off + 1];
            off += 2;
        } else if (len == 127) {
            assert_true(n - off >= 8);
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | p[off + i];
            off += 8;
        }
        assert_true(n - off >= len);
        fr->len = len;
        fr->payload = p + off;
        off += len;
    }
    assert_int_equal(off, n);
    return count;
}

static uint16_t close_code(const oframe_t *f)
{
    assert_int_equal(f->opcode, 0x8);
    assert_true(f->len >= 2);
    return (uint16_t)((f->payload[0] << 8) | f->payload[1]);
}

/* ---- fixture ------------------------------------------------------------------ */

#define MAX_MSG 1024

typedef struct fx {
    rt_ws_t *ws;
    int ntext;
    char *text[16];
    size_t text_len[16];
    int npong;
    int nclose;
    uint16_t code;
    char *out; /* last output taken */
    size_t out_len;
    oframe_t frames[32];
    size_t nframes;
    bytes_t in;
} fx_t;

static void on_text(void *ud, const char *msg, size_t len)
{
    fx_t *fx = ud;
    assert_non_null(msg); /* "" for an empty message, never NULL */
    assert_true(fx->ntext < 16);
    fx->text[fx->ntext] = malloc(len + 1);
    assert_non_null(fx->text[fx->ntext]);
    memcpy(fx->text[fx->ntext], msg, len);
    fx->text[fx->ntext][len] = '\0';
    fx->text_len[fx->ntext] = len;
    fx->ntext++;
}

static void on_pong(void *ud)
{
    ((fx_t *)ud)->npong++;
}

static void on_close(void *ud, uint16_t code)
{
    fx_t *fx = ud;
    fx->nclose++;
    fx->code = code;
}

static const rt_ws_callbacks_t CBS = {on_text, on_pong, on_close};

static int setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->ws = rt_ws_new(MAX_MSG, &CBS, fx);
    assert_non_null(fx->ws);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fx_t *fx = *state;
    rt_ws_free(fx->ws);
    for (int i = 0; i < fx->ntext; i++)
        free(fx->text[i]);
    free(fx->out);
    bytes_free(&fx->in);
    free(fx);
    return 0;
}

/* Takes the output and splits it into fx->frames; returns the frame count. */
static size_t take(fx_t *fx)
{
    free(fx->out);
    fx->out_len = rt_ws_take_output(fx->ws, &fx->out);
    if (fx->out_len == 0) assert_null(fx->out);
    fx->nframes = parse_frames(fx->out, fx->out_len, fx->frames, 32);
    for (size_t i = 0; i < fx->nframes; i++) {
        /* Server frames are never masked and use no extensions. */
        assert_int_equal(fx->frames[i].masked, 0);
        assert_int_equal(fx->frames[i].rsv, 0);
    }
    return fx->nframes;
}

/* Feeds fx->in in one call and clears it. */
static int feed(fx_t *fx)
{
    int rc = rt_ws_feed(fx->ws, (const char *)fx->in.p, fx->in.n);
    fx->in.n = 0;
    return rc;
}

/* Expects exactly one close frame with this code in the output and one
 * on_close with the same code. */
static void expect_closed(fx_t *fx, uint16_t code)
{
    assert_int_equal(fx->nclose, 1);
    assert_int_equal(fx->code, code);
    assert_int_equal(take(fx), 1);
    assert_int_equal(close_code(&fx->frames[0]), code);
    assert_int_equal(rt_ws_closing(fx->ws), 1);
    /* The session is over: more input is refused and no callback runs. */
    bytes_t more = {0};
    add_text(&more, "late");
    assert_int_equal(rt_ws_feed(fx->ws, (const char *)more.p, more.n), -1);
    bytes_free(&more);
    assert_int_equal(fx->nclose, 1);
    assert_int_equal(take(fx), 0);
}

/* ---- handshake ---------------------------------------------------------------- */

static void test_accept_key_rfc_example(void **state)
{
    (void)state;
    char out[29];
    memset(out, 'x', sizeof(out));
    rt_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static rt_http_req_t *parse_req(const char *raw)
{
    rt_http_req_t *r = malloc(sizeof(*r));
    assert_non_null(r);
    rt_http_req_init(r, 0);
    size_t consumed = 0;
    rt_http_result_t res = rt_http_req_feed(r, raw, strlen(raw), &consumed);
    assert_int_equal(res, RT_HTTP_DONE);
    return r;
}

static void free_req(rt_http_req_t *r)
{
    rt_http_req_close(r);
    free(r);
}

/* Builds a request from the method and a block of header lines, checks it,
 * returns the status (0 valid). */
static int check(const char *method, const char *headers, char accept[29], const char **reason)
{
    char raw[2048];
    snprintf(raw, sizeof(raw), "%s /ws/intents HTTP/1.1\r\nHost: example.com\r\n%s\r\n", method,
             headers);
    rt_http_req_t *r = parse_req(raw);
    int st = rt_ws_check_handshake(r, accept, reason);
    free_req(r);
    return st;
}

#define H_UPGRADE "Upgrade: websocket\r\n"
#define H_CONN "Connection: Upgrade\r\n"
#define H_KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define H_VER "Sec-WebSocket-Version: 13\r\n"

static void test_handshake_valid(void **state)
{
    (void)state;
    char accept[29];
    const char *reason = "unset";
    assert_int_equal(check("GET", H_UPGRADE H_CONN H_KEY H_VER, accept, &reason), 0);
    assert_string_equal(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_null(reason);

    /* Token lists and case as browsers and proxies send them. */
    assert_int_equal(check("GET",
                           "upgrade: WebSocket\r\n"
                           "connection: keep-alive, Upgrade\r\n"
                           "sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
                           "sec-websocket-version: 13\r\n",
                           accept, &reason),
                     0);
    char want[29];
    rt_ws_accept_key("AQIDBAUGBwgJCgsMDQ4PEA==", want);
    assert_string_equal(accept, want);
    /* Whitespace around values is not part of them. */
    assert_int_equal(check("GET",
                           H_UPGRADE H_CONN "Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  \r\n"
                                            "Sec-WebSocket-Version:\t13 \r\n",
                           accept, &reason),
                     0);
    assert_string_equal(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* A NULL reason pointer is allowed. */
    assert_int_equal(check("GET", H_UPGRADE H_CONN H_KEY H_VER, accept, NULL), 0);
}

static void expect_400(const char *method, const char *headers, const char *reason_has)
{
    char accept[29];
    const char *reason = NULL;
    int st = check(method, headers, accept, &reason);
    if (st != 400) fail_msg("status %d for headers:\n%s", st, headers);
    assert_non_null(reason);
    if (strstr(reason, reason_has) == NULL) fail_msg("reason '%s' lacks '%s'", reason, reason_has);
}

static void test_handshake_invalid(void **state)
{
    (void)state;
    /* Each required header missing in turn. */
    expect_400("GET", H_CONN H_KEY H_VER, "Upgrade");
    expect_400("GET", H_UPGRADE H_KEY H_VER, "Connection");
    expect_400("GET", H_UPGRADE H_CONN H_VER, "Sec-WebSocket-Key");
    /* Present but wrong. */
    expect_400("GET", "Upgrade: h2c\r\n" H_CONN H_KEY H_VER, "Upgrade");
    expect_400("GET", H_UPGRADE "Connection: keep-alive\r\n" H_KEY H_VER, "Connection");
    expect_400("POST", H_UPGRADE H_CONN H_KEY H_VER, "GET");
    expect_400("PUT", H_UPGRADE H_CONN H_KEY H_VER, "GET");
    /* Keys: 15 bytes, 17 bytes, no padding, bad characters, padding in the
     * wrong place, empty. */
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4P\r\n" H_VER, "Key");
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEBE=\r\n" H_VER,
               "Key");
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA\r\n" H_VER,
               "Key");
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4P*A==\r\n" H_VER,
               "Key");
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PE===\r\n" H_VER,
               "Key");
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4=EA==\r\n" H_VER,
               "Key");
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Key: \r\n" H_VER, "Key");
    /* A bad key wins over a bad version: 426 only when the version alone is
     * wrong. */
    expect_400("GET", H_UPGRADE H_CONN "Sec-WebSocket-Version: 8\r\n", "Key");
}

static void test_handshake_version(void **state)
{
    (void)state;
    char accept[29];
    const char *reason = NULL;
    assert_int_equal(
        check("GET", H_UPGRADE H_CONN H_KEY "Sec-WebSocket-Version: 8\r\n", accept, &reason), 426);
    assert_non_null(reason);
    reason = NULL;
    assert_int_equal(check("GET", H_UPGRADE H_CONN H_KEY, accept, &reason), 426);
    assert_non_null(reason);
    assert_int_equal(
        check("GET", H_UPGRADE H_CONN H_KEY "Sec-WebSocket-Version: 130\r\n", accept, &reason),
        426);
}

static void test_format_101(void **state)
{
    (void)state;
    char *out = NULL;
    size_t n = rt_ws_format_101(&out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    const char *want = "HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                       "\r\n";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
    free(out);
}

/* ---- receiving ----------------------------------------------------------------- */

static void test_text_frame(void **state)
{
    fx_t *fx = *state;
    add_text(&fx->in, "{\"type\":\"ping\"}");
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 1);
    assert_string_equal(fx->text[0], "{\"type\":\"ping\"}");
    assert_int_equal(fx->nclose, 0);
    assert_int_equal(rt_ws_closing(fx->ws), 0);
    /* Nothing to answer at the WebSocket level. */
    assert_int_equal(take(fx), 0);
}

static void test_empty_and_utf8_text(void **state)
{
    fx_t *fx = *state;
    add_text(&fx->in, "");
    add_text(&fx->in, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 2);
    assert_int_equal(fx->text_len[0], 0);
    assert_string_equal(fx->text[1], "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

static void test_fragmented_message(void **state)
{
    fx_t *fx = *state;
    add_frame(&fx->in, 0, 0x1, "hel", 3);
    add_frame(&fx->in, 0, 0x0, "lo, ", 4);
    /* A control frame may come between fragments (RFC 6455 §5.4). */
    add_frame(&fx->in, 1, 0x9, "p", 1);
    add_frame(&fx->in, 1, 0x0, "world", 5);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 1);
    assert_string_equal(fx->text[0], "hello, world");
    assert_int_equal(take(fx), 1);
    assert_int_equal(fx->frames[0].opcode, 0xa);
}

/* rt_ws_at_rest: only on a frame boundary, outside a fragmented message,
 * with the output taken and no close under way. */
static void test_at_rest(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(rt_ws_at_rest(fx->ws), 1); /* fresh */

    /* Half a frame (a 300-byte text, 16-bit length form) is not at rest. */
    char payload[300];
    memset(payload, 'a', sizeof payload);
    add_frame(&fx->in, 1, 0x1, payload, sizeof payload);
    size_t all = fx->in.n;
    for (size_t cut = 1; cut < all; cut += 37) {
        fx_t *g = calloc(1, sizeof *g);
        g->ws = rt_ws_new(MAX_MSG, &CBS, g);
        assert_int_equal(rt_ws_feed(g->ws, (const char *)fx->in.p, cut), 0);
        assert_int_equal(rt_ws_at_rest(g->ws), 0);
        assert_int_equal(rt_ws_feed(g->ws, (const char *)fx->in.p + cut, all - cut), 0);
        assert_int_equal(g->ntext, 1);
        assert_int_equal(rt_ws_at_rest(g->ws), 1);
        rt_ws_free(g->ws);
        free(g->text[0]);
        free(g);
    }
    fx->in.n = 0;

    /* The first fragment of a message: the message is open. */
    add_frame(&fx->in, 0, 0x1, "hel", 3);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(rt_ws_at_rest(fx->ws), 0);
    /* A ping between fragments: its pong is queued, the message still open. */
    add_frame(&fx->in, 1, 0x9, "p", 1);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(rt_ws_at_rest(fx->ws), 0);
    add_frame(&fx->in, 1, 0x0, "lo", 2);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 1);
    /* Message complete, but the pong is not taken yet. */
    assert_int_equal(rt_ws_at_rest(fx->ws), 0);
    assert_int_equal(take(fx), 1);
    assert_int_equal(rt_ws_at_rest(fx->ws), 1);

    /* A close under way is never at rest. */
    assert_int_equal(rt_ws_send_close(fx->ws, 1000, "bye"), 0);
    take(fx);
    assert_int_equal(rt_ws_at_rest(fx->ws), 0);
}

static void test_fragment_split_utf8(void **state)
{
    fx_t *fx = *state;
    /* A two-byte character split across fragments is valid. */
    add_frame(&fx->in, 0, 0x1, "caf\xc3", 4);
    add_frame(&fx->in, 1, 0x0, "\xa9", 1);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 1);
    assert_string_equal(fx->text[0], "caf\xc3\xa9");
}

static void test_byte_by_byte(void **state)
{
    fx_t *fx = *state;
    char msg[300];
    for (size_t i = 0; i < sizeof(msg) - 1; i++)
        msg[i] = (char)('a' + i % 26);
    msg[sizeof(msg) - 1] = '\0';
    add_text(&fx->in, msg); /* 16-bit length form */
    for (size_t i = 0; i < fx->in.n; i++) {
        assert_int_equal(fx->ntext, 0);
        assert_int_equal(rt_ws_feed(fx->ws, (const char *)fx->in.p + i, 1), 0);
    }
    assert_int_equal(fx->ntext, 1);
    assert_string_equal(fx->text[0], msg);
    /* Empty feeds are harmless. */
    assert_int_equal(rt_ws_feed(fx->ws, "", 0), 0);
    assert_int_equal(take(fx), 0);
}

static void test_two_frames_one_feed(void **state)
{
    fx_t *fx = *state;
    add_text(&fx->in, "first");
    add_text(&fx->in, "second");
    /* and half of a third */
    bytes_t third = {0};
    add_text(&third, "third");
    bytes_put(&fx->in, third.p, 4);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 2);
    assert_string_equal(fx->text[0], "first");
    assert_string_equal(fx->text[1], "second");
    assert_int_equal(rt_ws_feed(fx->ws, (const char *)third.p + 4, third.n - 4), 0);
    assert_int_equal(fx->ntext, 3);
    assert_string_equal(fx->text[2], "third");
    bytes_free(&third);
}

static void test_ping_pong(void **state)
{
    fx_t *fx = *state;
    add_frame(&fx->in, 1, 0x9, "are you there", 13);
    add_frame(&fx->in, 1, 0x9, NULL, 0);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(take(fx), 2);
    assert_int_equal(fx->frames[0].opcode, 0xa);
    assert_int_equal(fx->frames[0].fin, 1);
    assert_int_equal(fx->frames[0].len, 13);
    assert_memory_equal(fx->frames[0].payload, "are you there", 13);
    assert_int_equal(fx->frames[1].opcode, 0xa);
    assert_int_equal(fx->frames[1].len, 0);
    assert_int_equal(fx->ntext, 0);
    assert_int_equal(fx->npong, 0);
}

static void test_pong_callback(void **state)
{
    fx_t *fx = *state;
    add_frame(&fx->in, 1, 0xa, "x", 1);
    add_frame(&fx->in, 1, 0xa, NULL, 0);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->npong, 2);
    assert_int_equal(take(fx), 0);
}

static void test_close_normal(void **state)
{
    fx_t *fx = *state;
    static const char payload[] = {0x03, (char)0xe8, 'b', 'y', 'e'}; /* 1000 "bye" */
    add_frame(&fx->in, 1, 0x8, payload, sizeof(payload));
    /* Anything after the close frame is ignored. */
    add_text(&fx->in, "after close");
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 0);
    expect_closed(fx, 1000);
}

static void test_close_without_code(void **state)
{
    fx_t *fx = *state;
    add_frame(&fx->in, 1, 0x8, NULL, 0);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->nclose, 1);
    assert_int_equal(fx->code, 1005);
    /* The reply is an empty close too. */
    assert_int_equal(take(fx), 1);
    assert_int_equal(fx->frames[0].opcode, 0x8);
    assert_int_equal(fx->frames[0].len, 0);
}

static void test_close_with_invalid_code(void **state)
{
    fx_t *fx = *state;
    /* 1005 must never appear on the wire. */
    add_frame(&fx->in, 1, 0x8, "\x03\xed", 2);
    assert_int_equal(feed(fx), 0);
    expect_closed(fx, 1002);
}

static void test_unmasked_frame(void **state)
{
    fx_t *fx = *state;
    add_frame_ex(&fx->in, 1, 0x1, "hello", 5, 0);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 0);
    expect_closed(fx, 1002);
}

static void test_invalid_utf8(void **state)
{
    fx_t *fx = *state;
    add_text(&fx->in, "ok");
    add_text(&fx->in, "bad \xff byte");
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 1);
    expect_closed(fx, 1007);
}

static void test_truncated_utf8(void **state)
{
    fx_t *fx = *state;
    /* Valid so far byte by byte, but the message ends inside a character. */
    add_frame(&fx->in, 0, 0x1, "ab", 2);
    add_frame(&fx->in, 1, 0x0, "\xe2\x82", 2);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 0);
    expect_closed(fx, 1007);
}

static void test_binary_refused(void **state)
{
    fx_t *fx = *state;
    add_frame(&fx->in, 1, 0x2, "\x00\x01\x02", 3);
    add_text(&fx->in, "not delivered");
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 0);
    expect_closed(fx, 1003);
}

static void test_message_too_big(void **state)
{
    fx_t *fx = *state;
    char *big = malloc(MAX_MSG + 1);
    assert_non_null(big);
    memset(big, 'a', MAX_MSG + 1);
    /* Exactly the maximum is fine. */
    add_frame(&fx->in, 1, 0x1, big, MAX_MSG);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 1);
    assert_int_equal(fx->text_len[0], MAX_MSG);
    /* One more byte is not: refused at the first payload byte, before the
     * rest of the message is sent or buffered. */
    add_frame(&fx->in, 1, 0x1, big, MAX_MSG + 1);
    assert_int_equal(rt_ws_feed(fx->ws, (const char *)fx->in.p, 8 + 1), 0);
    fx->in.n = 0;
    assert_int_equal(fx->ntext, 1);
    expect_closed(fx, 1009);
    free(big);
}

static void test_fragmented_too_big(void **state)
{
    fx_t *fx = *state;
    char part[600];
    memset(part, 'b', sizeof(part));
    add_frame(&fx->in, 0, 0x1, part, sizeof(part));
    add_frame(&fx->in, 1, 0x0, part, sizeof(part));
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 0);
    expect_closed(fx, 1009);
}

static void test_huge_declared_length(void **state)
{
    fx_t *fx = *state;
    /* 64-bit length 2^40: refused from the header, nothing allocated. */
    static const uint8_t hdr[] = {0x81, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 0x37, 0xfa, 0x21, 0x3d, 'x'};
    assert_int_equal(rt_ws_feed(fx->ws, (const char *)hdr, sizeof(hdr)), 0);
    expect_closed(fx, 1009);
}

static void test_frame_layer_protocol_errors(void **state)
{
    (void)state;
    /* Errors wslay's frame layer catches: a control frame over 125 bytes, a
     * fragmented control frame, a length not in its shortest form, a
     * continuation without a start, reserved bits, a reserved opcode. */
    char payload[200];
    memset(payload, 'p', sizeof(payload));
    for (int c = 0; c < 6; c++) {
        fx_t *fx = NULL;
        setup((void **)&fx);
        switch (c) {
        case 0:
            add_frame(&fx->in, 1, 0x9, payload, 126);
            break;
        case 1:
            add_frame(&fx->in, 0, 0x9, "x", 1);
            break;
        case 2: {
            static const uint8_t hdr[] = {0x81, 0xfe, 0x00, 0x05, 0x37, 0xfa, 0x21, 0x3d};
            bytes_put(&fx->in, hdr, sizeof(hdr));
            bytes_put(&fx->in, "hello", 5);
            break;
        }
        case 3:
            add_frame(&fx->in, 1, 0x0, "x", 1);
            break;
        case 4: {
            add_text(&fx->in, "x");
            fx->in.p[0] |= 0x40; /* RSV1 without a negotiated extension */
            break;
        }
        case 5:
            add_frame(&fx->in, 1, 0x3, "x", 1);
            break;
        }
        assert_int_equal(feed(fx), 0);
        assert_int_equal(fx->ntext, 0);
        expect_closed(fx, 1002);
        void *st = fx;
        teardown(&st);
    }
}

/* ---- sending ------------------------------------------------------------------- */

static void expect_text_frame(fx_t *fx, size_t len, size_t header_len)
{
    char *msg = malloc(len + 1);
    assert_non_null(msg);
    for (size_t i = 0; i < len; i++)
        msg[i] = (char)('A' + i % 26);
    assert_int_equal(rt_ws_send_text(fx->ws, msg, len), 0);
    assert_int_equal(take(fx), 1);
    assert_int_equal(fx->out_len, header_len + len);
    const uint8_t *o = (const uint8_t *)fx->out;
    assert_int_equal(o[0], 0x81);
    if (header_len == 2) {
        assert_int_equal(o[1], len);
    } else if (header_len == 4) {
        assert_int_equal(o[1], 126);
    } else {
        assert_int_equal(o[1], 127);
    }
    assert_int_equal(fx->frames[0].len, len);
    assert_memory_equal(fx->frames[0].payload, msg, len);
    free(msg);
}

static void test_send_text_length_encodings(void **state)
{
    fx_t *fx = *state;
    expect_text_frame(fx, 0, 2);
    expect_text_frame(fx, 125, 2);
    expect_text_frame(fx, 126, 4);
    expect_text_frame(fx, 65535, 4);
    expect_text_frame(fx, 65536, 10);
    expect_text_frame(fx, 70000, 10);
}

static void test_send_accumulates_whole_frames(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(rt_ws_send_text(fx->ws, "one", 3), 0);
    assert_int_equal(rt_ws_send_ping(fx->ws), 0);
    assert_int_equal(rt_ws_send_text(fx->ws, "two", 3), 0);
    assert_int_equal(take(fx), 3);
    assert_int_equal(fx->frames[0].opcode, 0x1);
    assert_memory_equal(fx->frames[0].payload, "one", 3);
    assert_int_equal(fx->frames[1].opcode, 0x9);
    assert_int_equal(fx->frames[2].opcode, 0x1);
    assert_int_equal(take(fx), 0);
}

static void test_send_ping(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(rt_ws_send_ping(fx->ws), 0);
    assert_int_equal(take(fx), 1);
    assert_int_equal(fx->out_len, 2);
    assert_int_equal((uint8_t)fx->out[0], 0x89);
    assert_int_equal((uint8_t)fx->out[1], 0x00);
    add_frame(&fx->in, 1, 0xa, NULL, 0);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->npong, 1);
}

static void test_send_close_then_peer_reply(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(rt_ws_send_close(fx->ws, 1001, "going away"), 0);
    assert_int_equal(rt_ws_closing(fx->ws), 1);
    assert_int_equal(take(fx), 1);
    assert_int_equal(close_code(&fx->frames[0]), 1001);
    assert_int_equal(fx->frames[0].len, 2 + 10);
    assert_memory_equal(fx->frames[0].payload + 2, "going away", 10);
    /* No application data after our close. */
    assert_int_equal(rt_ws_send_text(fx->ws, "x", 1), -EPIPE);
    assert_int_equal(rt_ws_send_ping(fx->ws), -EPIPE);
    assert_int_equal(rt_ws_send_close(fx->ws, 1000, NULL), -EPIPE);
    assert_int_equal(fx->nclose, 0);
    /* The peer's late text is dropped; its close ends the session with no
     * second close from us. */
    add_text(&fx->in, "in flight");
    add_frame(&fx->in, 1, 0x8, "\x03\xe8", 2);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->ntext, 0);
    assert_int_equal(fx->nclose, 1);
    assert_int_equal(fx->code, 1000);
    assert_int_equal(take(fx), 0);
    assert_int_equal(rt_ws_feed(fx->ws, "x", 1), -1);
}

static void test_send_close_rejects_bad_args(void **state)
{
    fx_t *fx = *state;
    char reason[125];
    memset(reason, 'r', 124);
    reason[124] = '\0';
    assert_int_equal(rt_ws_send_close(fx->ws, 1005, NULL), -EINVAL);
    assert_int_equal(rt_ws_send_close(fx->ws, 999, NULL), -EINVAL);
    assert_int_equal(rt_ws_send_close(fx->ws, 1000, reason), -EINVAL);
    assert_int_equal(rt_ws_closing(fx->ws), 0);
    assert_int_equal(take(fx), 0);
    reason[123] = '\0';
    assert_int_equal(rt_ws_send_close(fx->ws, 4000, reason), 0);
    assert_int_equal(take(fx), 1);
    assert_int_equal(close_code(&fx->frames[0]), 4000);
    assert_int_equal(fx->frames[0].len, 125);
}

/* A reply sent from inside on_text lands in the output in order. */
static void echo_text(void *ud, const char *msg, size_t len)
{
    fx_t *fx = ud;
    on_text(ud, msg, len);
    assert_int_equal(rt_ws_send_text(fx->ws, msg, len), 0);
}

static void test_send_from_callback(void **state)
{
    (void)state;
    fx_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    rt_ws_callbacks_t cb = {echo_text, NULL, on_close};
    fx->ws = rt_ws_new(MAX_MSG, &cb, fx);
    add_text(&fx->in, "a");
    add_frame(&fx->in, 1, 0x9, "p", 1);
    add_text(&fx->in, "b");
    add_frame(&fx->in, 1, 0xa, NULL, 0); /* on_pong NULL is allowed */
    assert_int_equal(feed(fx), 0);
    assert_int_equal(take(fx), 3);
    assert_int_equal(fx->frames[0].opcode, 0x1);
    assert_memory_equal(fx->frames[0].payload, "a", 1);
    assert_int_equal(fx->frames[1].opcode, 0xa);
    assert_int_equal(fx->frames[2].opcode, 0x1);
    assert_memory_equal(fx->frames[2].payload, "b", 1);
    void *st = fx;
    teardown(&st);
}

/* The context may be freed from on_close. */
static void free_on_close(void *ud, uint16_t code)
{
    fx_t *fx = ud;
    fx->nclose++;
    fx->code = code;
    char *out = NULL;
    size_t n = rt_ws_take_output(fx->ws, &out);
    assert_int_equal(n, 4);
    free(out);
    rt_ws_free(fx->ws);
    fx->ws = NULL;
}

static void test_free_in_on_close(void **state)
{
    (void)state;
    fx_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    rt_ws_callbacks_t cb = {on_text, on_pong, free_on_close};
    fx->ws = rt_ws_new(MAX_MSG, &cb, fx);
    add_frame(&fx->in, 1, 0x8, "\x03\xe8", 2);
    assert_int_equal(feed(fx), 0);
    assert_int_equal(fx->nclose, 1);
    assert_null(fx->ws);
    void *st = fx;
    teardown(&st);
}

/* ---- client messages ------------------------------------------------------------ */

static rt_ws_client_msg_t *msg_new(void)
{
    rt_ws_client_msg_t *m = malloc(sizeof(*m));
    assert_non_null(m);
    memset(m, 0x5a, sizeof(*m));
    return m;
}

static int parse(rt_ws_client_msg_t *m, const char *json, char *err)
{
    return rt_ws_parse_client_msg(json, strlen(json), m, err, 128);
}

static void test_parse_valid(void **state)
{
    (void)state;
    rt_ws_client_msg_t *m = msg_new();
    char err[128] = "";

    assert_int_equal(parse(m, "{\"type\":\"ping\"}", err), 0);
    assert_int_equal(m->type, RT_WS_MSG_PING);

    assert_int_equal(parse(m, " {\"type\":\"subscribe\",\"intent_ids\":[\"a\",\"int-42\"]} ", err),
                     0);
    assert_int_equal(m->type, RT_WS_MSG_SUBSCRIBE);
    assert_int_equal(m->nids, 2);
    assert_string_equal(m->ids[0], "a");
    assert_string_equal(m->ids[1], "int-42");

    assert_int_equal(parse(m, "{\"intent_ids\":[\"x\"],\"type\":\"unsubscribe\",\"extra\":1}", err),
                     0);
    assert_int_equal(m->type, RT_WS_MSG_UNSUBSCRIBE);
    assert_int_equal(m->nids, 1);
    assert_string_equal(m->ids[0], "x");

    assert_int_equal(parse(m, "{\"type\":\"subscribe\",\"intent_ids\":[]}", err), 0);
    assert_int_equal(m->nids, 0);

    assert_int_equal(parse(m, "{\"type\":\"resume\",\"last_event_id\":0}", err), 0);
    assert_int_equal(m->type, RT_WS_MSG_RESUME);
    assert_int_equal(m->last_event_id, 0);
    assert_int_equal(parse(m, "{\"type\":\"resume\",\"last_event_id\":9007199254740993}", err), 0);
    assert_int_equal(m->last_event_id, 9007199254740993LL);
    assert_int_equal(parse(m, "{\"type\":\"resume\",\"last_event_id\":\"1234\"}", err), 0);
    assert_int_equal(m->last_event_id, 1234);
    assert_int_equal(
        parse(m, "{\"type\":\"resume\",\"last_event_id\":\"9223372036854775807\"}", err), 0);
    assert_int_equal(m->last_event_id, 9223372036854775807LL);

    assert_int_equal(parse(m, "{\"type\":\"auth\",\"token\":\"eyJ.abc.def\"}", err), 0);
    assert_int_equal(m->type, RT_WS_MSG_AUTH);
    assert_string_equal(m->token, "eyJ.abc.def");

    /* Maximum sizes are accepted. */
    char *big = malloc(64 * 1024);
    assert_non_null(big);
    size_t n = (size_t)sprintf(big, "{\"type\":\"subscribe\",\"intent_ids\":[");
    for (int i = 0; i < RT_WS_MAX_IDS; i++)
        n += (size_t)sprintf(big + n, "%s\"%063d\"", i ? "," : "", i);
    strcpy(big + n, "]}");
    assert_int_equal(parse(m, big, err), 0);
    assert_int_equal(m->nids, RT_WS_MAX_IDS);
    assert_int_equal(strlen(m->ids[255]), 63);
    n = (size_t)sprintf(big, "{\"type\":\"auth\",\"token\":\"");
    memset(big + n, 't', 4095);
    strcpy(big + n + 4095, "\"}");
    assert_int_equal(parse(m, big, err), 0);
    assert_int_equal(strlen(m->token), 4095);

    /* Not NUL-terminated input: only len bytes are read. */
    const char *j = "{\"type\":\"ping\"}garbage";
    assert_int_equal(rt_ws_parse_client_msg(j, 15, m, err, sizeof(err)), 0);
    free(big);
    free(m);
}

static void expect_err(const char *json, const char *want)
{
    rt_ws_client_msg_t *m = msg_new();
    char err[128];
    memset(err, 0, sizeof(err));
    assert_int_equal(parse(m, json, err), -1);
    if (strcmp(err, want) != 0) fail_msg("for %s\n got '%s'\nwant '%s'", json, err, want);
    free(m);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_err("", "invalid JSON");
    expect_err("{\"type\":", "invalid JSON");
    expect_err("{\"type\":\"ping\"} {}", "invalid JSON");
    expect_err("{\"type\":\"ping\",\"type\":\"auth\"}", "invalid JSON");
    expect_err("{\"type\":\"sub\\u0000scribe\"}", "invalid JSON");
    expect_err("[\"ping\"]", "message must be a JSON object");
    expect_err("\"ping\"", "message must be a JSON object");
    expect_err("{}", "missing \"type\"");
    expect_err("{\"type\":7}", "missing \"type\"");
    expect_err("{\"type\":\"pong\"}", "unknown type 'pong'");
    expect_err("{\"type\":\"x\\\"y<z>\"}", "unknown type 'x?y?z?'");
    expect_err("{\"type\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
               "unknown type 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'");

    expect_err("{\"type\":\"subscribe\"}", "intent_ids must be an array of strings");
    expect_err("{\"type\":\"subscribe\",\"intent_ids\":\"a\"}",
               "intent_ids must be an array of strings");
    expect_err("{\"type\":\"unsubscribe\",\"intent_ids\":{}}",
               "intent_ids must be an array of strings");
    expect_err("{\"type\":\"subscribe\",\"intent_ids\":[\"a\",1]}",
               "intent_ids must be an array of strings");
    expect_err("{\"type\":\"subscribe\",\"intent_ids\":[null]}",
               "intent_ids must be an array of strings");
    expect_err("{\"type\":\"subscribe\",\"intent_ids\":[\"\"]}",
               "intent_ids must not contain empty strings");
    char buf[40000];
    int n = sprintf(buf, "{\"type\":\"subscribe\",\"intent_ids\":[\"");
    memset(buf + n, 'i', 64);
    strcpy(buf + n + 64, "\"]}");
    expect_err(buf, "intent_id too long (max 63 bytes)");
    n = sprintf(buf, "{\"type\":\"unsubscribe\",\"intent_ids\":[");
    for (int i = 0; i <= RT_WS_MAX_IDS; i++)
        n += sprintf(buf + n, "%s\"%d\"", i ? "," : "", i);
    strcpy(buf + n, "]}");
    expect_err(buf, "too many intent_ids (max 256)");

    const char *bad_ids[] = {"-1",     "1.5",  "1e3",      "\"-1\"",  "\"1.0\"",
                             "\" 1\"", "\"\"", "\"0x10\"", "\"abc\"", "null",
                             "true",   "[1]",  "{}",       "\"+5\"",  "\"99999999999999999999\""};
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        sprintf(buf, "{\"type\":\"resume\",\"last_event_id\":%s}", bad_ids[i]);
        expect_err(buf, "last_event_id must be a non-negative integer");
    }
    expect_err("{\"type\":\"resume\"}", "last_event_id must be a non-negative integer");

    expect_err("{\"type\":\"auth\"}", "token must be a non-empty string");
    expect_err("{\"type\":\"auth\",\"token\":\"\"}", "token must be a non-empty string");
    expect_err("{\"type\":\"auth\",\"token\":42}", "token must be a non-empty string");
    n = sprintf(buf, "{\"type\":\"auth\",\"token\":\"");
    memset(buf + n, 's', 4096);
    strcpy(buf + n + 4096, "\"}");
    expect_err(buf, "token too long (max 4095 bytes)");
}

static void test_parse_error_truncated_to_errlen(void **state)
{
    (void)state;
    rt_ws_client_msg_t *m = msg_new();
    char err[8];
    memset(err, 'z', sizeof(err));
    const char *j = "{\"type\":\"subscribe\"}";
    assert_int_equal(rt_ws_parse_client_msg(j, strlen(j), m, err, sizeof(err)), -1);
    assert_string_equal(err, "intent_");
    /* err may be NULL. */
    assert_int_equal(rt_ws_parse_client_msg(j, strlen(j), m, NULL, 0), -1);
    free(m);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key_rfc_example),
        cmocka_unit_test(test_handshake_valid),
        cmocka_unit_test(test_handshake_invalid),
        cmocka_unit_test(test_handshake_version),
        cmocka_unit_test(test_format_101),
        T(test_text_frame),
        T(test_empty_and_utf8_text),
        T(test_fragmented_message),
        T(test_at_rest),
        T(test_fragment_split_utf8),
        T(test_byte_by_byte),
        T(test_two_frames_one_feed),
        T(test_ping_pong),
        T(test_pong_callback),
        T(test_close_normal),
        T(test_close_without_code),
        T(test_close_with_invalid_code),
        T(test_unmasked_frame),
        T(test_invalid_utf8),
        T(test_truncated_utf8),
        T(test_binary_refused),
        T(test_message_too_big),
        T(test_fragmented_too_big),
        T(test_huge_declared_length),
        cmocka_unit_test(test_frame_layer_protocol_errors),
        T(test_send_text_length_encodings),
        T(test_send_accumulates_whole_frames),
        T(test_send_ping),
        T(test_send_close_then_peer_reply),
        T(test_send_close_rejects_bad_args),
        cmocka_unit_test(test_send_from_callback),
        cmocka_unit_test(test_free_in_on_close),
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_error_truncated_to_errlen),
    };
    return cmocka_run_group_tests_name("ws", tests, NULL, NULL);
}
