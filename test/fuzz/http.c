/*
 * libFuzzer harness for lib/http.c. Not built by the Makefile; build and run
 * from the repository root with clang:
 *
 *   mkdir -p build/fuzz && clang -std=c11 -g -O1 -D_GNU_SOURCE \
 *       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
 *       -Ilib -I/usr/share/include/llhttp test/fuzz/http.c lib/http.c \
 *       /usr/share/llhttp/llhttp.c /usr/share/llhttp/api.c /usr/share/llhttp/http.c \
 *       -o build/fuzz/http
 *   build/fuzz/http -max_len=20000 -timeout=5 build/fuzz/corpus-http
 *
 * The first input byte picks a read size; the rest is a byte stream from a
 * client. The stream is parsed as a run of pipelined requests twice: fed
 * whole, then in reads of the chosen size. Both runs must see the same
 * requests (compared by a description of each) and the same final outcome,
 * and every result must keep the documented invariants: consumed within the
 * input, limits respected, strings inside the request's storage. Each parsed
 * request also goes through the URL, query, token and response helpers.
 */
#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY 1024
#define LOG_CAP 65536

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int in_store(const rt_http_req_t *r, const char *s)
{
    if (s < r->store || s >= r->store + sizeof r->store) return 0;
    /* NUL-terminated inside the store. */
    return memchr(s, '\0', (size_t)(r->store + sizeof r->store - s)) != NULL;
}

static void exercise(const rt_http_req_t *r)
{
    CHECK(r->header_bytes <= RT_HTTP_MAX_HEADER_BYTES);
    CHECK(r->nheaders >= 0 && r->nheaders <= RT_HTTP_MAX_HEADERS);
    CHECK(r->body_len <= MAX_BODY);
    CHECK(r->store_used <= sizeof r->store);
    CHECK(r->url && in_store(r, r->url) && strlen(r->url) == r->url_len);
    if (r->body) CHECK(r->body[r->body_len] == '\0');
    for (int i = 0; i < r->nheaders; i++) {
        CHECK(in_store(r, r->headers[i].name) && in_store(r, r->headers[i].value));
        CHECK(rt_http_req_header(r, r->headers[i].name) != NULL);
        (void)rt_http_has_token(r->headers[i].value, "upgrade");
        (void)rt_http_has_token(r->headers[i].value, r->headers[i].name);
    }

    char path[64];
    int plen = rt_http_req_path(r, path, sizeof path);
    CHECK(plen == -1 || (plen >= 0 && (size_t)plen == strlen(path)));
    if (plen >= 0) {
        char dec[64];
        int dlen = rt_http_path_decode(path, (size_t)plen, dec, sizeof dec);
        CHECK(dlen == -2 || (dlen >= 0 && dlen <= plen && (size_t)dlen == strlen(dec)));
    }

    size_t qlen;
    const char *q = rt_http_req_query(r, &qlen);
    char v[16];
    const char *keys[] = {"a", "intent_ids", "", " "};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        for (int idx = 0; idx < 3; idx++) {
            int n = rt_http_query_get(q, qlen, keys[k], idx, v, sizeof v);
            CHECK(n >= -2 && n < (int)sizeof v);
            if (n >= 0) CHECK(strlen(v) == (size_t)n);
        }

    char *out;
    size_t len =
        rt_http_format_response(&out, 200, "text/plain", NULL, r->url, r->url_len, r->keep_alive);
    CHECK(len >= r->url_len && memcmp(out + len - r->url_len, r->url, r->url_len) == 0);
    free(out);
}

/* Parses data as pipelined requests, in reads of at most `step` bytes
 * (0: everything at once). Appends one line per request, and the final
 * outcome, to log. */
static void parse_stream(const uint8_t *data, size_t size, size_t step, char *log, size_t cap)
{
    size_t used = 0;
    log[0] = '\0';
    rt_http_req_t *r = malloc(sizeof *r);
    CHECK(r);
    rt_http_req_init(r, MAX_BODY);

    size_t read_start = 0;
    while (read_start < size) {
        /* One read from the socket... */
        size_t read_end = step ? read_start + step : size;
        if (read_end > size) read_end = size;
        const char *buf = (const char *)data + read_start;
        size_t len = read_end - read_start, off = 0;
        read_start = read_end;

        /* ...may hold the end of one request and the start of others. */
        while (off < len) {
            size_t consumed = (size_t)-1;
            rt_http_result_t res = rt_http_req_feed(r, buf + off, len - off, &consumed);
            CHECK(consumed <= len - off);
            if (res == RT_HTTP_NEED_MORE) {
                CHECK(consumed == len - off);
                off = len;
            } else if (res == RT_HTTP_DONE) {
                CHECK(r->done);
                exercise(r);
                used += snprintf(log + used, cap - used, "%d %s ka=%d up=%d h=%d b=%zu hb=%zu\n",
                                 r->method, r->url, r->keep_alive, r->upgrade, r->nheaders,
                                 r->body_len, r->header_bytes);
                CHECK(used < cap);
                off += consumed;
                /* After an upgrade the rest is WebSocket, not HTTP. */
                if (r->upgrade) goto out;
                rt_http_req_reset(r);
            } else {
                CHECK(res == RT_HTTP_ERROR);
                CHECK(r->error_status == 400 || r->error_status == 413 || r->error_status == 431);
                CHECK(r->error_reason && *r->error_reason);
                /* Sticky. */
                CHECK(rt_http_req_feed(r, "GET / HTTP/1.1\r\n\r\n", 18, &consumed) ==
                      RT_HTTP_ERROR);
                /* Errors in the request line and headers are found at the
                 * same byte however the reads were cut. After the headers
                 * they need not be: the budget for chunk extensions and
                 * trailers is checked on llhttp's spans, which arrive
                 * whole or in pieces depending on the cuts, so a trailer
                 * both too long and malformed may give 431 or 400. */
                if (r->headers_done)
                    used += snprintf(log + used, cap - used, "error after headers\n");
                else
                    used += snprintf(log + used, cap - used, "error %d\n", r->error_status);
                goto out;
            }
        }
    }
    used += snprintf(log + used, cap - used, "end\n");
out:
    rt_http_req_close(r);
    free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char whole[LOG_CAP], split[LOG_CAP];
    if (size < 1) return 0;
    size_t step = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    parse_stream(data, size, 0, whole, sizeof whole);
    parse_stream(data, size, step, split, sizeof split);
    if (strcmp(whole, split) != 0) {
        fprintf(stderr, "whole and split (step %zu) differ:\n--- whole\n%s--- split\n%s", step,
                whole, split);
        abort();
    }
    return 0;
}
