/* Tests for the fan-out's routing of plain GET requests to handlers outside
 * it (reply.h): answers given at once, answers given later from another
 * thread, keep-alive and pipelined requests behind a deferred one, a client
 * that leaves before its answer, and a shutdown with an answer still owed.
 * A real fan-out on 127.0.0.1 (no database: nothing here reads the journal),
 * driven with blocking sockets. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bus.h"
#include "config.h"
#include "fanout.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- a handler that answers "/now/..." at once and "/later/..." from a thread */

typedef struct later {
    rt_reply_done_cb done;
    void *arg;
    char body[128];
} later_t;

typedef struct handler_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    later_t *queue[16]; /* requests owed an answer, answered by answer_one */
    int n;
    atomic_int calls;
} handler_state_t;

static handler_state_t hs = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static rt_handle_result_t test_handler(void *ctx, const char *path, const char *query,
                                       rt_reply_t *out, rt_reply_done_cb done, void *done_arg)
{
    (void)ctx;
    atomic_fetch_add(&hs.calls, 1);
    char body[128];
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"query\":\"%s\"}", path, query);
    if (strncmp(path, "/t/now", 6) == 0) {
        rt_reply_owned(out, 200, "application/json", strdup(body), strlen(body));
        snprintf(out->headers, sizeof out->headers, "X-Test: now\r\n");
        return RT_HANDLE_DONE;
    }
    if (strncmp(path, "/t/later", 8) == 0) {
        later_t *l = malloc(sizeof *l);
        l->done = done;
        l->arg = done_arg;
        snprintf(l->body, sizeof l->body, "%s", body);
        pthread_mutex_lock(&hs.mu);
        hs.queue[hs.n++] = l;
        pthread_cond_broadcast(&hs.cv);
        pthread_mutex_unlock(&hs.mu);
        return RT_HANDLE_LATER;
    }
    return RT_HANDLE_NOT_MINE;
}

/* Waits (bounded) until a deferred request is queued, then answers the oldest
 * from this (non-loop) thread. Returns 0, or -1 if none came within 5 s. */
static int answer_one(void)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    pthread_mutex_lock(&hs.mu);
    while (hs.n == 0)
        if (pthread_cond_timedwait(&hs.cv, &hs.mu, &dl) == ETIMEDOUT) break;
    later_t *l = NULL;
    if (hs.n > 0) {
        l = hs.queue[0];
        memmove(hs.queue, hs.queue + 1, (size_t)(hs.n - 1) * sizeof hs.queue[0]);
        hs.n--;
    }
    pthread_mutex_unlock(&hs.mu);
    if (!l) return -1;
    rt_reply_t r;
    rt_reply_owned(&r, 200, "application/json", strdup(l->body), strlen(l->body));
    l->done(l->arg, &r);
    free(l);
    return 0;
}

/* ---- fixture ------------------------------------------------------------------ */

typedef struct fx {
    rt_config_t cfg;
    rt_bus_t *bus;
    rt_fanout_t *f;
    int port;
} fx_t;

static int setup(void **state)
{
    fx_t *x = calloc(1, sizeof *x);
    char *argv[] = {"--listen", "127.0.0.1:0", "--fanout-threads", "1"};
    char err[256];
    if (rt_config_parse(&x->cfg, 4, argv, rt_config_getenv, err, sizeof err) != 0) return -1;
    x->bus = rt_bus_new();
    x->f = rt_fanout_new(&x->cfg, x->bus, NULL, err, sizeof err);
    if (!x->f) return -1;
    if (rt_fanout_add_handler(x->f, "/t/", test_handler, NULL) != 0) return -1;
    if (rt_fanout_start(x->f) != 0) return -1;
    x->port = rt_fanout_port(x->f);
    atomic_store(&hs.calls, 0);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fx_t *x = *state;
    rt_fanout_shutdown(x->f);
    /* Whatever is still owed is answered after the shutdown: dropped. */
    while (hs.n > 0) answer_one();
    rt_fanout_free(x->f);
    rt_bus_free(x->bus);
    rt_config_free(&x->cfg);
    free(x);
    return 0;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    assert_int_equal(write(fd, s, n), (ssize_t)n);
}

/* Reads one response (headers + Content-Length body) into buf. Returns its
 * length, or -1 on EOF/timeout before a whole response. Leftover bytes of a
 * following response stay in *carry. */
static int read_response(int fd, char *buf, size_t cap, char *carry, size_t *ncarry)
{
    size_t n = *ncarry;
    memcpy(buf, carry, n);
    *ncarry = 0;
    for (;;) {
        buf[n] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            const char *cl = strcasestr(buf, "Content-Length:");
            size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
            size_t total = (size_t)(end + 4 - buf) + body;
            if (n >= total) {
                *ncarry = n - total;
                memcpy(carry, buf + total, *ncarry);
                buf[total] = '\0';
                return (int)total;
            }
        }
        if (n + 1 >= cap) return -1;
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0) return -1;
        n += (size_t)r;
    }
}

static void test_immediate_answer_keeps_the_connection(void **state)
{
    fx_t *x = *state;
    int fd = connect_to(x->port);
    char buf[4096], carry[4096];
    size_t nc = 0;
    for (int i = 0; i < 3; i++) {
        send_all(fd, "GET /t/now/a%20b?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
        assert_non_null(strstr(buf, "HTTP/1.1 200"));
        assert_non_null(strstr(buf, "X-Test: now\r\n"));
        assert_non_null(strstr(buf, "Access-Control-Allow-Origin: *"));
        assert_non_null(strstr(buf, "{\"path\":\"/t/now/a b\",\"query\":\"x=1&y=2\"}"));
    }
    close(fd);
    assert_int_equal(atomic_load(&hs.calls), 3);
}

static void test_not_mine_and_unregistered_are_404(void **state)
{
    fx_t *x = *state;
    char buf[4096], carry[4096];
    const char *paths[] = {"/t/other", "/nowhere"};
    for (int i = 0; i < 2; i++) {
        size_t nc = 0;
        int fd = connect_to(x->port);
        char req[128];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", paths[i]);
        send_all(fd, req);
        assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
        assert_non_null(strstr(buf, "HTTP/1.1 404"));
        close(fd);
    }
    /* Only the registered prefix reached the handler. */
    assert_int_equal(atomic_load(&hs.calls), 1);
}

/* A deferred answer from another thread, then a pipelined request that came
 * in the same write: it is answered after the first, in order. */
static void test_deferred_answer_then_pipelined_request(void **state)
{
    fx_t *x = *state;
    int fd = connect_to(x->port);
    char buf[4096], carry[4096];
    size_t nc = 0;
    send_all(fd, "GET /t/later/1 HTTP/1.1\r\nHost: h\r\n\r\n"
                 "GET /t/now/2 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_int_equal(answer_one(), 0);
    assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    assert_non_null(strstr(buf, "/t/later/1"));
    assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
    assert_non_null(strstr(buf, "/t/now/2"));
    /* And input that arrives while a deferred request waits. */
    send_all(fd, "GET /t/later/3 HTTP/1.1\r\nHost: h\r\n\r\n");
    /* Wait until it is queued before sending more, so the next request is
     * read while the connection waits. */
    pthread_mutex_lock(&hs.mu);
    while (hs.n == 0) pthread_cond_wait(&hs.cv, &hs.mu);
    pthread_mutex_unlock(&hs.mu);
    send_all(fd, "GET /t/now/4 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_int_equal(answer_one(), 0);
    assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
    assert_non_null(strstr(buf, "/t/later/3"));
    assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
    assert_non_null(strstr(buf, "/t/now/4"));
    close(fd);
}

/* The client leaves before its answer: the late answer is dropped, and the
 * server goes on serving. */
static void test_client_gone_before_answer(void **state)
{
    fx_t *x = *state;
    int fd = connect_to(x->port);
    send_all(fd, "GET /t/later/gone HTTP/1.1\r\nHost: h\r\n\r\n");
    pthread_mutex_lock(&hs.mu);
    while (hs.n == 0) pthread_cond_wait(&hs.cv, &hs.mu);
    pthread_mutex_unlock(&hs.mu);
    close(fd);
    /* Let the loop see the close: a request on a new connection is served
     * after it (one loop, events in order). */
    char buf[4096], carry[4096];
    size_t nc = 0;
    int fd2 = connect_to(x->port);
    send_all(fd2, "GET /t/now/after HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(read_response(fd2, buf, sizeof buf, carry, &nc) > 0);
    assert_int_equal(answer_one(), 0);
    send_all(fd2, "GET /t/now/again HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_true(read_response(fd2, buf, sizeof buf, carry, &nc) > 0);
    assert_non_null(strstr(buf, "/t/now/again"));
    close(fd2);
}

/* Shutting down with an answer owed: the client gets a 503, and the answer
 * given afterwards is dropped (teardown answers it; ASan checks the frees). */
static void test_shutdown_with_answer_owed(void **state)
{
    fx_t *x = *state;
    int fd = connect_to(x->port);
    send_all(fd, "GET /t/later/owed HTTP/1.1\r\nHost: h\r\n\r\n");
    pthread_mutex_lock(&hs.mu);
    while (hs.n == 0) pthread_cond_wait(&hs.cv, &hs.mu);
    pthread_mutex_unlock(&hs.mu);
    rt_fanout_shutdown(x->f);
    char buf[4096], carry[4096];
    size_t nc = 0;
    assert_true(read_response(fd, buf, sizeof buf, carry, &nc) > 0);
    assert_non_null(strstr(buf, "HTTP/1.1 503"));
    close(fd);
    assert_int_equal(hs.n, 1);
}

static void test_registration_rules(void **state)
{
    fx_t *x = *state;
    assert_int_equal(rt_fanout_add_handler(x->f, "/late/", test_handler, NULL), -EBUSY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_immediate_answer_keeps_the_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_mine_and_unregistered_are_404, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_answer_then_pipelined_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_before_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_with_answer_owed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registration_rules, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
