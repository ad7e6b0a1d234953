/*
 * Unit tests for lib/http.c: request parsing on byte strings (whole, split at
 * every boundary, pipelined, upgraded), the limits (431, 413, 400), query and
 * token helpers, and response formatting byte for byte.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------- */

/* A one-line description of a parsed request, so two parses can be compared
 * with one assert_string_equal that prints both sides. */
static void describe(const rt_http_req_t *r, char *out, size_t cap)
{
    size_t n = 0;
    n += (size_t)snprintf(out + n, cap - n, "%s %.*s ka=%d up=%d hb=%zu",
                          llhttp_method_name((llhttp_method_t)r->method), (int)r->url_len,
                          r->url ? r->url : "", r->keep_alive, r->upgrade, r->header_bytes);
    for (int i = 0; i < r->nheaders && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, " [%s: %s]", r->headers[i].name,
                              r->headers[i].value);
    if (n < cap)
        n += (size_t)snprintf(out + n, cap - n, " body(%zu)=%.*s", r->body_len, (int)r->body_len,
                              r->body ? r->body : "");
    assert_true(n < cap);
}

/* Feeds the whole string in one call; expects DONE and returns consumed. */
static size_t parse_ok(rt_http_req_t *r, const char *s, size_t len)
{
    size_t consumed = 12345;
    rt_http_result_t res = rt_http_req_feed(r, s, len, &consumed);
    if (res != RT_HTTP_DONE)
        fail_msg("expected DONE, got %d (status %d, %s) for \"%.60s\"", (int)res, r->error_status,
                 r->error_reason ? r->error_reason : "-", s);
    return consumed;
}

/* Feeds the whole string in one call; expects ERROR and returns the status. */
static int parse_err(rt_http_req_t *r, const char *s, size_t len)
{
    size_t consumed;
    rt_http_result_t res = rt_http_req_feed(r, s, len, &consumed);
    assert_int_equal(res, RT_HTTP_ERROR);
    assert_non_null(r->error_reason);
    return r->error_status;
}

/* Feeds s in pieces ending at cuts[0], cuts[1], ... (the last piece ends at
 * len). Returns the total bytes the request used; describes the result. */
static size_t parse_pieces(const char *s, size_t len, const size_t *cuts, int ncuts,
                           size_t max_body, char *desc, size_t cap)
{
    rt_http_req_t r;
    rt_http_req_init(&r, max_body);
    size_t start = 0, total = 0;
    int done = 0;
    for (int i = 0; i <= ncuts && !done; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        size_t consumed = 99999;
        rt_http_result_t res = rt_http_req_feed(&r, s + start, end - start, &consumed);
        if (res == RT_HTTP_DONE) {
            assert_true(consumed <= end - start);
            total = start + consumed;
            done = 1;
        } else {
            if (res != RT_HTTP_NEED_MORE)
                fail_msg("piece %d [%zu,%zu): result %d status %d (%s)", i, start, end, (int)res,
                         r.error_status, r.error_reason ? r.error_reason : "-");
            assert_int_equal(consumed, end - start);
        }
        start = end;
    }
    assert_true(done);
    describe(&r, desc, cap);
    rt_http_req_close(&r);
    return total;
}

/* A request whose header block (request line through the blank line) is
 * exactly `size` bytes, padded in one header; body appended verbatim. */
static char *request_of_size(size_t size, const char *body)
{
    const char *line = "GET /limit HTTP/1.1\r\n";
    const char *name = "X-Pad: ";
    size_t fixed = strlen(line) + strlen(name) + 2 + 2;
    assert_true(size > fixed);
    size_t pad = size - fixed;
    size_t blen = body ? strlen(body) : 0;
    char *s = malloc(size + blen + 1);
    assert_non_null(s);
    char *p = s;
    p += sprintf(p, "%s%s", line, name);
    memset(p, 'p', pad);
    p += pad;
    p += sprintf(p, "\r\n\r\n%s", body ? body : "");
    assert_int_equal((size_t)(p - s), size + blen);
    return s;
}

/* ---- parsing ------------------------------------------------------------------- */

static void test_simple_get(void **state)
{
    (void)state;
    const char *s = "GET /ws/intents?intent_ids=a HTTP/1.1\r\nHost: example.com\r\n"
                    "User-Agent: t\r\n\r\n";
    rt_http_req_t r;
    rt_http_req_init(&r, 0);
    assert_int_equal(parse_ok(&r, s, strlen(s)), strlen(s));
    assert_int_equal(r.done, 1);
    assert_int_equal(r.method, HTTP_GET);
    assert_int_equal(r.upgrade, 0);
    assert_int_equal(r.keep_alive, 1);
    assert_int_equal(r.error_status, 0);
    assert_int_equal(r.url_len, strlen("/ws/intents?intent_ids=a"));
    assert_string_equal(r.url, "/ws/intents?intent_ids=a");
    assert_int_equal(r.nheaders, 2);
    assert_string_equal(r.headers[0].name, "Host");
    assert_string_equal(r.headers[0].value, "example.com");
    assert_string_equal(r.headers[1].name, "User-Agent");
    assert_string_equal(r.headers[1].value, "t");
    assert_int_equal(r.header_bytes, strlen(s));
    assert_null(r.body);
    assert_int_equal(r.body_len, 0);

    /* Fed again before a reset: still DONE, nothing more used. */
    size_t consumed = 7;
    assert_int_equal(rt_http_req_feed(&r, "GET", 3, &consumed), RT_HTTP_DONE);
    assert_int_equal(consumed, 0);

    /* Partial input: everything is consumed, NEED_MORE. */
    rt_http_req_reset(&r);
    assert_int_equal(rt_http_req_feed(&r, s, 10, &consumed), RT_HTTP_NEED_MORE);
    assert_int_equal(consumed, 10);
    assert_int_equal(rt_http_req_feed(&r, s + 10, 0, &consumed), RT_HTTP_NEED_MORE);
    assert_int_equal(consumed, 0);
    assert_int_equal(parse_ok(&r, s + 10, strlen(s) - 10), strlen(s) - 10);
    assert_string_equal(r.url, "/ws/intents?intent_ids=a");
    rt_http_req_close(&r);
}

static void test_header_lookup(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\nX-Custom-Thing:  value with spaces \t\r\n"
                    "x-dup: first\r\nX-DUP: second\r\nX-Empty:\r\nX-Blank:   \r\n\r\n";
    rt_http_req_t r;
    rt_http_req_init(&r, 0);
    parse_ok(&r, s, strlen(s));
    assert_string_equal(rt_http_req_header(&r, "host"), "h");
    assert_string_equal(rt_http_req_header(&r, "HOST"), "h");
    assert_string_equal(rt_http_req_header(&r, "x-custom-thing"), "value with spaces");
    assert_string_equal(rt_http_req_header(&r, "X-Dup"), "first");
    assert_string_equal(rt_http_req_header(&r, "x-empty"), "");
    assert_string_equal(rt_http_req_header(&r, "x-blank"), "");
    assert_null(rt_http_req_header(&r, "X-Missing"));
    assert_null(rt_http_req_header(&r, "Hos"));
    assert_null(rt_http_req_header(&r, "Host2"));
    assert_int_equal(r.nheaders, 6);
    rt_http_req_close(&r);
}

/* Every way of cutting a request into 1-byte pieces or two pieces gives the
 * same request and the same byte count as feeding it whole. */
static void test_split_everywhere(void **state)
{
    (void)state;
    const char *cases[] = {
        "GET /ws/intents?intent_ids=a%2Cb&x=1 HTTP/1.1\r\nHost: example.com\r\n"
        "Connection: keep-alive\r\nAccept: */*\r\nX-Long-Header-Name: some longer value\r\n\r\n",
        "POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        "Content-Length: 17\r\n\r\n{\"hello\":\"world\"}",
        "POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n7;ext=yes\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        /* An upgrade with a frame behind it, and a pipelined second request
         * behind a first: the parse must stop at the same byte. */
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        "\x81\x85"
        "abcdefghi",
        "GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *s = cases[c];
        size_t len = strlen(s);
        char want[2048], got[2048];
        size_t want_used = parse_pieces(s, len, NULL, 0, 1024, want, sizeof want);

        /* One byte at a time (stopping when the request is done). */
        size_t *cuts = malloc(len * sizeof *cuts);
        assert_non_null(cuts);
        for (size_t i = 0; i + 1 < len; i++)
            cuts[i] = i + 1;
        size_t used = parse_pieces(s, len, cuts, (int)len - 1, 1024, got, sizeof got);
        assert_int_equal(used, want_used);
        assert_string_equal(got, want);
        free(cuts);

        /* Every two-way split, including empty first and last pieces. */
        for (size_t cut = 0; cut <= len; cut++) {
            used = parse_pieces(s, len, &cut, 1, 1024, got, sizeof got);
            if (used != want_used || strcmp(got, want) != 0)
                fail_msg("case %zu cut %zu: used %zu vs %zu\n got  %s\n want %s", c, cut, used,
                         want_used, got, want);
        }
    }
}

static void test_pipelined(void **state)
{
    (void)state;
    const char *a = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *b = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz";
    const char *c = "GET /c?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    char buf[512];
    snprintf(buf, sizeof buf, "%s%s%s", a, b, c);
    size_t len = strlen(buf), off = 0;

    rt_http_req_t r;
    rt_http_req_init(&r, 16);
    size_t used = parse_ok(&r, buf + off, len - off);
    assert_int_equal(used, strlen(a));
    assert_string_equal(r.url, "/a");
    assert_int_equal(r.keep_alive, 1);
    off += used;

    rt_http_req_reset(&r);
    used = parse_ok(&r, buf + off, len - off);
    assert_int_equal(used, strlen(b));
    assert_string_equal(r.url, "/b");
    assert_int_equal(r.method, HTTP_POST);
    assert_int_equal(r.body_len, 3);
    assert_string_equal(r.body, "xyz");
    off += used;

    /* The last one arrives in two reads. */
    rt_http_req_reset(&r);
    size_t consumed;
    assert_int_equal(rt_http_req_feed(&r, buf + off, 5, &consumed), RT_HTTP_NEED_MORE);
    assert_int_equal(consumed, 5);
    off += 5;
    used = parse_ok(&r, buf + off, len - off);
    assert_int_equal(off + used, len);
    assert_string_equal(r.url, "/c?q=1");
    assert_int_equal(r.keep_alive, 0);
    assert_null(r.body);
    rt_http_req_close(&r);
}

static void test_upgrade_with_frame(void **state)
{
    (void)state;
    const char *head = "GET /ws/intents?intent_ids=a HTTP/1.1\r\nHost: h\r\n"
                       "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n";
    /* A masked text frame "hello" sent in the same read. */
    const char frame[] = "\x81\x85\x01\x02\x03\x04"
                         "ifmmp";
    char buf[512];
    size_t hlen = strlen(head);
    memcpy(buf, head, hlen);
    memcpy(buf + hlen, frame, sizeof frame - 1);
    size_t len = hlen + sizeof frame - 1;

    rt_http_req_t r;
    rt_http_req_init(&r, 0);
    assert_int_equal(parse_ok(&r, buf, len), hlen);
    assert_int_equal(r.upgrade, 1);
    assert_int_equal(r.method, HTTP_GET);
    assert_int_equal(r.header_bytes, hlen);
    assert_true(rt_http_has_token(rt_http_req_header(&r, "connection"), "upgrade"));
    assert_true(rt_http_has_token(rt_http_req_header(&r, "upgrade"), "websocket"));

    /* Upgrade without Connection: upgrade is a plain GET. */
    rt_http_req_reset(&r);
    const char *plain = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
    assert_int_equal(parse_ok(&r, plain, strlen(plain)), strlen(plain));
    assert_int_equal(r.upgrade, 0);

    /* A POST with upgrade headers is reported as llhttp sees it: the caller
     * checks the method. Its body is read first. */
    rt_http_req_reset(&r);
    rt_http_req_close(&r);
    rt_http_req_init(&r, 8);
    const char *post = "POST /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nContent-Length: 2\r\n\r\nhiFRAME";
    assert_int_equal(parse_ok(&r, post, strlen(post)), strlen(post) - 5);
    assert_int_equal(r.method, HTTP_POST);
    assert_int_equal(r.upgrade, 1);
    assert_string_equal(r.body, "hi");

    /* Bodiless POST with upgrade headers also stops at the headers. */
    rt_http_req_reset(&r);
    const char *post0 = "POST /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\n\r\nFRAME";
    assert_int_equal(parse_ok(&r, post0, strlen(post0)), strlen(post0) - 5);
    assert_int_equal(r.method, HTTP_POST);
    assert_int_equal(r.upgrade, 1);
    rt_http_req_close(&r);
}

static void test_body_limits(void **state)
{
    (void)state;
    rt_http_req_t r;
    rt_http_req_init(&r, 10);
    char buf[256];

    /* Within and exactly at max_body. */
    const char *bodies[] = {"", "abc", "0123456789"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(buf, sizeof buf, "POST /p HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                 strlen(bodies[i]), bodies[i]);
        assert_int_equal(parse_ok(&r, buf, strlen(buf)), strlen(buf));
        assert_int_equal(r.body_len, strlen(bodies[i]));
        if (r.body_len) assert_string_equal(r.body, bodies[i]);
        rt_http_req_reset(&r);
    }

    /* One over: refused as soon as the headers declare it. */
    snprintf(buf, sizeof buf, "POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
    assert_int_equal(parse_err(&r, buf, strlen(buf)), 413);
    assert_string_equal(r.error_reason, "Payload Too Large");
    /* Errors are sticky until reset. */
    size_t consumed;
    assert_int_equal(rt_http_req_feed(&r, "0123456789a", 11, &consumed), RT_HTTP_ERROR);
    assert_int_equal(r.error_status, 413);
    rt_http_req_reset(&r);

    /* A huge declared length. */
    snprintf(buf, sizeof buf, "POST /p HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n");
    assert_int_equal(parse_err(&r, buf, strlen(buf)), 413);
    rt_http_req_reset(&r);

    /* Chunked: within, then over max_body in the second chunk. */
    snprintf(buf, sizeof buf,
             "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n");
    assert_int_equal(parse_ok(&r, buf, strlen(buf)), strlen(buf));
    assert_string_equal(r.body, "helloworld");
    rt_http_req_reset(&r);
    snprintf(buf, sizeof buf,
             "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n");
    assert_int_equal(parse_err(&r, buf, strlen(buf)), 413);
    rt_http_req_close(&r);

    /* max_body 0: no body at all, but an explicit zero length is fine. */
    rt_http_req_init(&r, 0);
    snprintf(buf, sizeof buf, "POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(parse_ok(&r, buf, strlen(buf)), strlen(buf));
    assert_null(r.body);
    rt_http_req_reset(&r);
    snprintf(buf, sizeof buf, "POST /p HTTP/1.1\r\nContent-Length: 1\r\n\r\nx");
    assert_int_equal(parse_err(&r, buf, strlen(buf)), 413);
    rt_http_req_reset(&r);
    snprintf(buf, sizeof buf,
             "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             "1\r\nx\r\n0\r\n\r\n");
    assert_int_equal(parse_err(&r, buf, strlen(buf)), 413);
    rt_http_req_close(&r);
}

/* A header block of exactly RT_HTTP_MAX_HEADER_BYTES passes, one byte more
 * is 431 — whole, byte by byte, and with a body behind it. */
static void test_header_limit_exact(void **state)
{
    (void)state;
    rt_http_req_t r;
    rt_http_req_init(&r, 64);
    size_t consumed;

    char *s = request_of_size(RT_HTTP_MAX_HEADER_BYTES, NULL);
    assert_int_equal(parse_ok(&r, s, RT_HTTP_MAX_HEADER_BYTES), RT_HTTP_MAX_HEADER_BYTES);
    assert_int_equal(r.header_bytes, RT_HTTP_MAX_HEADER_BYTES);
    assert_int_equal(strlen(rt_http_req_header(&r, "X-Pad")),
                     RT_HTTP_MAX_HEADER_BYTES - strlen("GET /limit HTTP/1.1\r\nX-Pad: \r\n\r\n"));
    rt_http_req_reset(&r);
    for (size_t i = 0; i + 1 < RT_HTTP_MAX_HEADER_BYTES; i++) {
        assert_int_equal(rt_http_req_feed(&r, s + i, 1, &consumed), RT_HTTP_NEED_MORE);
        assert_int_equal(consumed, 1);
    }
    assert_int_equal(rt_http_req_feed(&r, s + RT_HTTP_MAX_HEADER_BYTES - 1, 1, &consumed),
                     RT_HTTP_DONE);
    assert_int_equal(consumed, 1);
    assert_int_equal(r.header_bytes, RT_HTTP_MAX_HEADER_BYTES);
    rt_http_req_reset(&r);
    free(s);

    /* With a pipelined request behind it in the same buffer. */
    s = request_of_size(RT_HTTP_MAX_HEADER_BYTES, "GET /next HTTP/1.1\r\n\r\n");
    assert_int_equal(parse_ok(&r, s, strlen(s)), RT_HTTP_MAX_HEADER_BYTES);
    rt_http_req_reset(&r);
    assert_int_equal(
        parse_ok(&r, s + RT_HTTP_MAX_HEADER_BYTES, strlen(s) - RT_HTTP_MAX_HEADER_BYTES),
        strlen("GET /next HTTP/1.1\r\n\r\n"));
    assert_string_equal(r.url, "/next");
    rt_http_req_reset(&r);
    free(s);

    /* A body does not count against the header limit. */
    s = request_of_size(RT_HTTP_MAX_HEADER_BYTES, NULL);
    char *withbody = malloc(RT_HTTP_MAX_HEADER_BYTES + 64);
    assert_non_null(withbody);
    /* Same size, one header swapped for Content-Length: rebuild by hand. */
    const char *line = "POST /limit HTTP/1.1\r\nContent-Length: 5\r\nX-Pad: ";
    size_t pad = RT_HTTP_MAX_HEADER_BYTES - strlen(line) - 4;
    char *p = withbody + sprintf(withbody, "%s", line);
    memset(p, 'p', pad);
    p += pad;
    p += sprintf(p, "\r\n\r\nhello");
    assert_int_equal(parse_ok(&r, withbody, (size_t)(p - withbody)), (size_t)(p - withbody));
    assert_int_equal(r.header_bytes, RT_HTTP_MAX_HEADER_BYTES);
    assert_string_equal(r.body, "hello");
    rt_http_req_reset(&r);
    free(withbody);
    free(s);

    /* One byte over: whole, and byte by byte (the error comes at the byte
     * that exceeds the budget, before the block ends). */
    s = request_of_size(RT_HTTP_MAX_HEADER_BYTES + 1, NULL);
    assert_int_equal(parse_err(&r, s, RT_HTTP_MAX_HEADER_BYTES + 1), 431);
    assert_string_equal(r.error_reason, "Request Header Fields Too Large");
    rt_http_req_reset(&r);
    rt_http_result_t res = RT_HTTP_NEED_MORE;
    size_t i = 0;
    for (; i < RT_HTTP_MAX_HEADER_BYTES + 1 && res == RT_HTTP_NEED_MORE; i++)
        res = rt_http_req_feed(&r, s + i, 1, &consumed);
    assert_int_equal(res, RT_HTTP_ERROR);
    assert_int_equal(r.error_status, 431);
    assert_int_equal(i, RT_HTTP_MAX_HEADER_BYTES);
    rt_http_req_reset(&r);
    free(s);

    /* A request line alone over the limit. */
    s = malloc(RT_HTTP_MAX_HEADER_BYTES + 64);
    assert_non_null(s);
    p = s + sprintf(s, "GET /");
    memset(p, 'u', RT_HTTP_MAX_HEADER_BYTES);
    p += RT_HTTP_MAX_HEADER_BYTES;
    p += sprintf(p, " HTTP/1.1\r\n\r\n");
    assert_int_equal(parse_err(&r, s, (size_t)(p - s)), 431);
    free(s);

    /* The object is fine again after a reset. */
    rt_http_req_reset(&r);
    const char *ok = "GET /again HTTP/1.1\r\n\r\n";
    assert_int_equal(parse_ok(&r, ok, strlen(ok)), strlen(ok));
    assert_string_equal(r.url, "/again");
    rt_http_req_close(&r);
}

static char *request_with_headers(int n)
{
    size_t cap = 64 + (size_t)n * 32;
    char *s = malloc(cap);
    assert_non_null(s);
    char *p = s + sprintf(s, "GET /h HTTP/1.1\r\n");
    for (int i = 0; i < n; i++)
        p += sprintf(p, "X-H%d: v%d\r\n", i, i);
    p += sprintf(p, "\r\n");
    assert_true((size_t)(p - s) < cap);
    return s;
}

static void test_too_many_headers(void **state)
{
    (void)state;
    rt_http_req_t r;
    rt_http_req_init(&r, 0);
    char *s = request_with_headers(RT_HTTP_MAX_HEADERS);
    assert_int_equal(parse_ok(&r, s, strlen(s)), strlen(s));
    assert_int_equal(r.nheaders, RT_HTTP_MAX_HEADERS);
    assert_string_equal(rt_http_req_header(&r, "x-h63"), "v63");
    free(s);
    rt_http_req_reset(&r);
    s = request_with_headers(RT_HTTP_MAX_HEADERS + 1);
    assert_int_equal(parse_err(&r, s, strlen(s)), 431);
    assert_string_equal(r.error_reason, "Request Header Fields Too Large");
    free(s);
    rt_http_req_close(&r);
}

static void test_malformed(void **state)
{
    (void)state;
    const char *bad[] = {
        "GET / HTTP/1.1 extra\r\n\r\n",
        "GET / HTTX/1.1\r\n\r\n",
        "GET / HTTP/1.1\nHost: x\n\n", /* bare LF */
        "G@T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n", /* whitespace before the colon */
        "GET / HTTP/1.1\r\n: x\r\n\r\n",
        "GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n",
        "GET /a\x01 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
        "\x00\x01\x02\x03 garbage \xff\xfe",
    };
    const size_t lens[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11, 15};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rt_http_req_t r;
        rt_http_req_init(&r, 16);
        size_t len = lens[i] ? lens[i] : strlen(bad[i]);
        size_t consumed;
        rt_http_result_t res = rt_http_req_feed(&r, bad[i], len, &consumed);
        if (res != RT_HTTP_ERROR || r.error_status != 400)
            fail_msg("case %zu: result %d status %d", i, (int)res, r.error_status);
        assert_non_null(r.error_reason);
        assert_true(strlen(r.error_reason) > 0);
        assert_true(consumed <= len);
        /* Sticky, then recoverable by reset. */
        assert_int_equal(rt_http_req_feed(&r, "GET / HTTP/1.1\r\n\r\n", 18, &consumed),
                         RT_HTTP_ERROR);
        rt_http_req_reset(&r);
        assert_int_equal(parse_ok(&r, "GET / HTTP/1.1\r\n\r\n", 18), 18);
        rt_http_req_close(&r);
    }
}

static void test_keep_alive_flags(void **state)
{
    (void)state;
    struct {
        const char *req;
        int ka;
    } cases[] = {
        {"GET / HTTP/1.0\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rt_http_req_t r;
        rt_http_req_init(&r, 0);
        assert_int_equal(parse_ok(&r, cases[i].req, strlen(cases[i].req)), strlen(cases[i].req));
        if (r.keep_alive != cases[i].ka)
            fail_msg("case %zu: keep_alive %d, want %d", i, r.keep_alive, cases[i].ka);
        rt_http_req_close(&r);
    }
}

static void test_reuse_100(void **state)
{
    (void)state;
    rt_http_req_t r;
    rt_http_req_init(&r, 64);
    for (int i = 0; i < 100; i++) {
        char buf[256], url[32], body[32];
        snprintf(url, sizeof url, "/r/%d?i=%d", i, i);
        snprintf(body, sizeof body, "body-%d", i);
        if (i % 3 == 0)
            snprintf(buf, sizeof buf,
                     "POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n%s", url,
                     strlen(body), body);
        else
            snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: h\r\nX-N: %d\r\n\r\n", url, i);
        assert_int_equal(parse_ok(&r, buf, strlen(buf)), strlen(buf));
        assert_string_equal(r.url, url);
        assert_int_equal(r.keep_alive, 1);
        if (i % 3 == 0) {
            assert_int_equal(r.method, HTTP_POST);
            assert_string_equal(r.body, body);
            assert_int_equal(r.nheaders, 2);
        } else {
            assert_int_equal(r.method, HTTP_GET);
            assert_null(r.body);
            assert_int_equal(r.nheaders, 2);
            assert_int_equal(atoi(rt_http_req_header(&r, "x-n")), i);
        }
        char v[16];
        size_t qlen;
        const char *q = rt_http_req_query(&r, &qlen);
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        assert_int_equal(rt_http_query_get(q, qlen, "i", 0, v, sizeof v), (int)strlen(want));
        assert_string_equal(v, want);
        rt_http_req_reset(&r);
    }
    rt_http_req_close(&r);
}

static void test_trailers_and_extensions(void **state)
{
    (void)state;
    rt_http_req_t r;
    rt_http_req_init(&r, 64);
    /* Trailer fields are read and dropped; they are not headers. */
    const char *s = "POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3;name=value\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n";
    assert_int_equal(parse_ok(&r, s, strlen(s)), strlen(s));
    assert_string_equal(r.body, "abc");
    assert_int_equal(r.nheaders, 1);
    assert_null(rt_http_req_header(&r, "X-Trailer"));
    rt_http_req_reset(&r);

    /* Trailers without end: capped like headers. */
    size_t consumed;
    const char *head = "POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
    assert_int_equal(rt_http_req_feed(&r, head, strlen(head), &consumed), RT_HTTP_NEED_MORE);
    rt_http_result_t res = RT_HTTP_NEED_MORE;
    for (int i = 0; i < 2000 && res == RT_HTTP_NEED_MORE; i++)
        res = rt_http_req_feed(&r, "X-T: 0123456789\r\n", 17, &consumed);
    assert_int_equal(res, RT_HTTP_ERROR);
    assert_int_equal(r.error_status, 431);
    rt_http_req_close(&r);
}

/* ---- URL, query ---------------------------------------------------------------- */

static void test_path_and_query(void **state)
{
    (void)state;
    struct {
        const char *target, *path, *query;
    } cases[] = {
        {"/ws/intents?intent_ids=a%2Cb&x=1", "/ws/intents", "intent_ids=a%2Cb&x=1"},
        {"/plain", "/plain", ""},
        {"/empty?", "/empty", ""},
        {"/", "/", ""},
        {"/a%20b/c?", "/a%20b/c", ""},
        {"/q?a=1?b=2", "/q", "a=1?b=2"},
        {"http://example.com/abs?k=v", "/abs", "k=v"},
        {"http://example.com", "/", ""},
        {"http://example.com?k=v", "/", "k=v"},
        {"*", "*", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[256];
        const char *method = strcmp(cases[i].target, "*") == 0 ? "OPTIONS" : "GET";
        snprintf(buf, sizeof buf, "%s %s HTTP/1.1\r\nHost: h\r\n\r\n", method, cases[i].target);
        rt_http_req_t r;
        rt_http_req_init(&r, 0);
        parse_ok(&r, buf, strlen(buf));
        char path[64];
        assert_int_equal(rt_http_req_path(&r, path, sizeof path), (int)strlen(cases[i].path));
        assert_string_equal(path, cases[i].path);
        size_t qlen = 99;
        const char *q = rt_http_req_query(&r, &qlen);
        assert_int_equal(qlen, strlen(cases[i].query));
        char qs[64];
        snprintf(qs, sizeof qs, "%.*s", (int)qlen, q);
        assert_string_equal(qs, cases[i].query);
        rt_http_req_close(&r);
    }

    /* The path buffer: exactly enough, one short. */
    rt_http_req_t r;
    rt_http_req_init(&r, 0);
    const char *s = "GET /12345?x HTTP/1.1\r\n\r\n";
    parse_ok(&r, s, strlen(s));
    char path[8];
    assert_int_equal(rt_http_req_path(&r, path, 7), 6);
    assert_string_equal(path, "/12345");
    assert_int_equal(rt_http_req_path(&r, path, 6), -1);
    assert_int_equal(rt_http_req_path(&r, path, 0), -1);
    rt_http_req_close(&r);

    /* Before any request: empty path and query. */
    rt_http_req_init(&r, 0);
    assert_int_equal(rt_http_req_path(&r, path, sizeof path), 0);
    assert_string_equal(path, "");
    size_t qlen = 5;
    assert_string_equal(rt_http_req_query(&r, &qlen), "");
    assert_int_equal(qlen, 0);
    rt_http_req_close(&r);
}

/* rt_http_query_get on q, returning the result; *out holds the value. */
static int qget(const char *q, const char *key, int index, char *out, size_t cap)
{
    return rt_http_query_get(q, strlen(q), key, index, out, cap);
}

static void test_query_get(void **state)
{
    (void)state;
    char v[64];
    struct {
        const char *query, *key;
        int index, ret;
        const char *value;
    } cases[] = {
        {"a", "a", 0, 0, ""},
        {"a=", "a", 0, 0, ""},
        {"a=1", "a", 0, 1, "1"},
        {"a=1&&b=2", "b", 0, 1, "2"},
        {"a=1&&b=2", "a", 0, 1, "1"},
        {"&&a=1&", "a", 0, 1, "1"},
        {"a=1&b=2&a=3", "a", 0, 1, "1"},
        {"a=1&b=2&a=3", "a", 1, 1, "3"},
        {"a=1&b=2&a=3", "a", 2, -1, NULL},
        {"a=1&b=2&a=3", "b", 1, -1, NULL},
        {"a=1&b=2", "c", 0, -1, NULL},
        {"", "a", 0, -1, NULL},
        {"ab=1", "a", 0, -1, NULL},
        {"a=1", "ab", 0, -1, NULL},
        {"A=1", "a", 0, -1, NULL},
        {"a=hello+world", "a", 0, 11, "hello world"},
        {"ids=x%2Cy%2cz", "ids", 0, 5, "x,y,z"},
        {"a=%41%62", "a", 0, 2, "Ab"},
        {"%61=5", "a", 0, 1, "5"},
        {"my+key=1", "my key", 0, 1, "1"},
        {"my%20key=2", "my key", 0, 1, "2"},
        {"a=b=c", "a", 0, 3, "b=c"},
        {"a=%G1", "a", 0, -2, NULL},
        {"a=%1G", "a", 0, -2, NULL},
        {"a=%4", "a", 0, -2, NULL},
        {"a=%", "a", 0, -2, NULL},
        {"a=x%00y", "a", 0, -2, NULL},
        {"b=%G1&a=ok", "a", 0, 2, "ok"}, /* another pair's value is not looked at */
        {"%G1=x&a=ok", "a", 0, 2, "ok"}, /* a malformed key matches nothing */
        {"a=%e2%82%ac", "a", 0, 3, "\xe2\x82\xac"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(v, '#', sizeof v);
        int ret = qget(cases[i].query, cases[i].key, cases[i].index, v, sizeof v);
        if (ret != cases[i].ret)
            fail_msg("case %zu (%s / %s #%d): got %d, want %d", i, cases[i].query, cases[i].key,
                     cases[i].index, ret, cases[i].ret);
        if (cases[i].value) assert_string_equal(v, cases[i].value);
    }

    /* Only the given length is read. */
    assert_int_equal(rt_http_query_get("a=12&b=3", 3, "a", 0, v, sizeof v), 1);
    assert_string_equal(v, "1");
    assert_int_equal(rt_http_query_get("a=12&b=3", 4, "b", 0, v, sizeof v), -1);

    /* Too long: the value plus its NUL must fit. */
    assert_int_equal(qget("a=12345", "a", 0, v, 6), 5);
    assert_string_equal(v, "12345");
    assert_int_equal(qget("a=12345", "a", 0, v, 5), -2);
    assert_int_equal(qget("a=%41%41", "a", 0, v, 3), 2);
    assert_int_equal(qget("a=%41%41", "a", 0, v, 2), -2);
    assert_int_equal(qget("a", "a", 0, v, 1), 0);
    assert_int_equal(qget("a", "a", 0, v, 0), -2);
}

static void test_path_decode(void **state)
{
    (void)state;
    char out[16];
    struct {
        const char *in;
        int ret;
        const char *out;
    } cases[] = {
        {"abc", 3, "abc"},
        {"", 0, ""},
        {"a%20b", 3, "a b"},
        {"a+b", 3, "a+b"},
        {"%2Fx%2f", 3, "/x/"},
        {"%e2%82%AC", 3, "\xe2\x82\xac"},
        {"%G1", -2, NULL},
        {"%1", -2, NULL},
        {"x%", -2, NULL},
        {"a%00b", -2, NULL},
        {"0123456789abcde", 15, "0123456789abcde"}, /* exactly fits with its NUL */
        {"0123456789abcdef", -2, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int ret = rt_http_path_decode(cases[i].in, strlen(cases[i].in), out, sizeof out);
        if (ret != cases[i].ret)
            fail_msg("case %zu (%s): got %d, want %d", i, cases[i].in, ret, cases[i].ret);
        if (cases[i].out) assert_string_equal(out, cases[i].out);
    }
    /* Only len bytes are read. */
    assert_int_equal(rt_http_path_decode("ab%41", 2, out, sizeof out), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(rt_http_path_decode("", 0, out, 0), -2);
}

/* ---- headers, responses -------------------------------------------------------- */

static void test_has_token(void **state)
{
    (void)state;
    assert_true(rt_http_has_token("keep-alive, Upgrade", "upgrade"));
    assert_true(rt_http_has_token("keep-alive, Upgrade", "keep-alive"));
    assert_true(rt_http_has_token("Upgrade", "upgrade"));
    assert_true(rt_http_has_token("UPGRADE", "Upgrade"));
    assert_true(rt_http_has_token("  upgrade  ", "upgrade"));
    assert_true(rt_http_has_token("keep-alive,Upgrade", "upgrade"));
    assert_true(rt_http_has_token("a,,upgrade,", "upgrade"));
    assert_true(rt_http_has_token("x\t,\tupgrade\t", "upgrade"));
    assert_true(rt_http_has_token("upgrade, keep-alive", "upgrade"));
    assert_false(rt_http_has_token("upgrade2", "upgrade"));
    assert_false(rt_http_has_token("upgrad", "upgrade"));
    assert_false(rt_http_has_token("keep-alive", "upgrade"));
    assert_false(rt_http_has_token("x-upgrade, upgrade-x", "upgrade"));
    assert_false(rt_http_has_token("", "upgrade"));
    assert_false(rt_http_has_token(" , ", "upgrade"));
    assert_false(rt_http_has_token(NULL, "upgrade"));
    assert_false(rt_http_has_token("a, b", ""));
}

static void check_response(char *got, size_t len, const char *want)
{
    assert_int_equal(len, strlen(want));
    assert_string_equal(got, want);
    free(got);
}

static void test_format_response(void **state)
{
    (void)state;
    char *out = NULL;
    size_t len;

    len = rt_http_format_response(&out, 200, "application/json", NULL, "{\"ok\":true}", 11, 1);
    check_response(out, len,
                   "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
                   "Connection: keep-alive\r\n\r\n{\"ok\":true}");

    len = rt_http_format_response(&out, 404, NULL, NULL, NULL, 0, 0);
    check_response(out, len,
                   "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");

    len = rt_http_format_response(&out, 426, "text/plain", "Sec-WebSocket-Version: 13\r\n",
                                  "upgrade", 7, 0);
    check_response(out, len,
                   "HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\n"
                   "Content-Length: 7\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n"
                   "\r\nupgrade");

    len = rt_http_format_response(&out, 429, NULL, "Retry-After: 1\r\nX-A: b\r\n", "", 0, 1);
    check_response(out, len,
                   "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
                   "Connection: keep-alive\r\nRetry-After: 1\r\nX-A: b\r\n\r\n");

    /* A body with NUL bytes is copied whole. */
    len = rt_http_format_response(&out, 200, NULL, NULL, "a\0b", 3, 1);
    const char want_nul[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n"
                            "\r\na\0b";
    assert_int_equal(len, sizeof want_nul - 1);
    assert_memory_equal(out, want_nul, len);
    free(out);

    /* 101: no Content-Length, no Connection (the caller's headers carry it). */
    len = rt_http_format_response(&out, 101, NULL,
                                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
                                  NULL, 0, 1);
    check_response(out, len,
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                   "\r\n");

    /* 204: no Content-Length and no body. */
    len = rt_http_format_response(&out, 204, NULL, NULL, NULL, 0, 1);
    check_response(out, len, "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n");

    /* A long body and long extra headers. */
    size_t big = 100000;
    char *body = malloc(big);
    assert_non_null(body);
    memset(body, 'b', big);
    len = rt_http_format_response(&out, 500, "text/plain", NULL, body, big, 0);
    const char *head = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                       "Content-Length: 100000\r\nConnection: close\r\n\r\n";
    assert_int_equal(len, strlen(head) + big);
    assert_memory_equal(out, head, strlen(head));
    assert_memory_equal(out + strlen(head), body, big);
    free(out);
    free(body);
}

static void test_status_text(void **state)
{
    (void)state;
    struct {
        int code;
        const char *text;
    } cases[] = {
        {101, "Switching Protocols"},
        {200, "OK"},
        {204, "No Content"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {413, "Payload Too Large"},
        {426, "Upgrade Required"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {503, "Service Unavailable"},
        {299, "Unknown"},
        {0, "Unknown"},
        {-1, "Unknown"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_string_equal(rt_http_status_text(cases[i].code), cases[i].text);
}

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_header_lookup),
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_upgrade_with_frame),
        cmocka_unit_test(test_body_limits),
        cmocka_unit_test(test_header_limit_exact),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_keep_alive_flags),
        cmocka_unit_test(test_reuse_100),
        cmocka_unit_test(test_trailers_and_extensions),
        cmocka_unit_test(test_path_and_query),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_path_decode),
        cmocka_unit_test(test_has_token),
        cmocka_unit_test(test_format_response),
        cmocka_unit_test(test_status_text),
    };
    /* clang-format on */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
