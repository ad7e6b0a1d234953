/*
 * Notification receivers for tests (see sink.h). One thread per sink polls
 * the listening socket, a stop pipe and every connection; each connection is
 * a small state machine over its input buffer. Connections are answered and
 * closed (HTTP, Connection: close) or held open (hanging requests).
 */
#include "sink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 64
#define MAX_ITEMS 1024
#define MAX_IN (1 << 20)

typedef struct conn {
    int fd;
    char *in;
    size_t len;
    int hanging;
    /* SMTP */
    int in_data;
    char env[1024];
} conn_t;

typedef struct item {
    char *text;
    int status;
} item_t;

struct sink {
    int smtp;
    int lfd, stop_pipe[2], port;
    pthread_t thread;
    pthread_mutex_t mu;
    item_t items[MAX_ITEMS];
    size_t nitems;
    char fail_match[128];
    int fail_n;
    char hang_match[128];
    conn_t conns[MAX_CONNS];
};

static void record(sink_t *s, const char *text, size_t len, int status)
{
    pthread_mutex_lock(&s->mu);
    if (s->nitems < MAX_ITEMS) {
        char *t = malloc(len + 1);
        if (!t) abort();
        memcpy(t, text, len);
        t[len] = '\0';
        s->items[s->nitems].text = t;
        s->items[s->nitems].status = status;
        s->nitems++;
    }
    pthread_mutex_unlock(&s->mu);
}

static void send_all(int fd, const char *p)
{
    size_t n = strlen(p);
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void conn_close(conn_t *c)
{
    close(c->fd);
    free(c->in);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* HTTP: returns 1 when the request was handled (answered or held). */
static int http_step(sink_t *s, conn_t *c)
{
    if (c->hanging) return 0;
    char *end = memmem(c->in, c->len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - c->in) + 4;
    size_t clen = 0;
    for (char *p = c->in; p < end; p++) {
        if ((p == c->in || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0)
            clen = strtoul(p + 15, NULL, 10);
    }
    if (c->len < head + clen) return 0;
    const char *body = c->in + head;
    char *copy = strndup(body, clen);
    if (!copy) abort();
    pthread_mutex_lock(&s->mu);
    int hang = s->hang_match[0] && strstr(copy, s->hang_match);
    int fail = !hang && s->fail_n > 0 && strstr(copy, s->fail_match);
    if (fail) s->fail_n--;
    pthread_mutex_unlock(&s->mu);
    int status = hang ? 0 : fail ? 500 : 200;
    record(s, body, clen, status);
    free(copy);
    if (hang) {
        c->hanging = 1;
        return 1;
    }
    char resp[160];
    snprintf(resp, sizeof resp,
             "HTTP/1.1 %d %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", status,
             status == 200 ? "OK" : "Internal Server Error");
    send_all(c->fd, resp);
    conn_close(c);
    return 1;
}

/* SMTP: consumes complete lines (or the data block). */
static void smtp_step(sink_t *s, conn_t *c)
{
    for (;;) {
        if (c->fd < 0) return;
        if (c->in_data) {
            char *end = memmem(c->in, c->len, "\r\n.\r\n", 5);
            if (!end) return;
            size_t dlen = (size_t)(end - c->in) + 2;
            size_t elen = strlen(c->env);
            char *t = malloc(elen + 1 + dlen);
            if (!t) abort();
            memcpy(t, c->env, elen);
            t[elen] = '\n';
            memcpy(t + elen + 1, c->in, dlen);
            record(s, t, elen + 1 + dlen, 250);
            free(t);
            size_t used = dlen + 3;
            memmove(c->in, c->in + used, c->len - used);
            c->len -= used;
            c->in_data = 0;
            c->env[0] = '\0';
            send_all(c->fd, "250 OK queued\r\n");
            continue;
        }
        char *nl = memmem(c->in, c->len, "\r\n", 2);
        if (!nl) return;
        size_t n = (size_t)(nl - c->in);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(n < 1000 ? n : 1000), c->in);
        memmove(c->in, nl + 2, c->len - n - 2);
        c->len -= n + 2;
        if (strncasecmp(line, "EHLO", 4) == 0 || strncasecmp(line, "HELO", 4) == 0) {
            send_all(c->fd, "250 sink\r\n");
        } else if (strncasecmp(line, "MAIL FROM:", 10) == 0 ||
                   strncasecmp(line, "RCPT TO:", 8) == 0) {
            size_t used = strlen(c->env);
            /* "FROM:<a>" or "TO:<b>" */
            snprintf(c->env + used, sizeof c->env - used, "%s\n", line + 5);
            send_all(c->fd, "250 OK\r\n");
        } else if (strncasecmp(line, "DATA", 4) == 0) {
            c->in_data = 1;
            send_all(c->fd, "354 go ahead\r\n");
        } else if (strncasecmp(line, "QUIT", 4) == 0) {
            send_all(c->fd, "221 bye\r\n");
            conn_close(c);
        } else if (strncasecmp(line, "RSET", 4) == 0 || strncasecmp(line, "NOOP", 4) == 0) {
            send_all(c->fd, "250 OK\r\n");
        } else {
            send_all(c->fd, "502 not implemented\r\n");
        }
    }
}

static void *sink_main(void *arg)
{
    sink_t *s = arg;
    for (;;) {
        struct pollfd p[MAX_CONNS + 2];
        int idx[MAX_CONNS + 2];
        int n = 0;
        p[n++] = (struct pollfd){.fd = s->stop_pipe[0], .events = POLLIN};
        p[n++] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        for (int i = 0; i < MAX_CONNS; i++) {
            if (s->conns[i].fd < 0) continue;
            idx[n] = i;
            p[n++] = (struct pollfd){.fd = s->conns[i].fd, .events = POLLIN};
        }
        if (poll(p, (nfds_t)n, 1000) < 0 && errno != EINTR) break;
        if (p[0].revents) break;
        if (p[1].revents & POLLIN) {
            int fd = accept(s->lfd, NULL, NULL);
            int slot = -1;
            for (int i = 0; fd >= 0 && i < MAX_CONNS; i++)
                if (s->conns[i].fd < 0) {
                    slot = i;
                    break;
                }
            if (fd >= 0 && slot < 0) close(fd);
            if (slot >= 0) {
                s->conns[slot].fd = fd;
                if (s->smtp) send_all(fd, "220 sink ESMTP\r\n");
            }
        }
        for (int k = 2; k < n; k++) {
            if (!p[k].revents) continue;
            conn_t *c = &s->conns[idx[k]];
            char buf[65536];
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0 || c->len + (size_t)r > MAX_IN) {
                conn_close(c);
                continue;
            }
            char *in = realloc(c->in, c->len + (size_t)r + 1);
            if (!in) abort();
            c->in = in;
            memcpy(c->in + c->len, buf, (size_t)r);
            c->len += (size_t)r;
            if (s->smtp)
                smtp_step(s, c);
            else
                http_step(s, c);
        }
    }
    return NULL;
}

static sink_t *start(int smtp)
{
    sink_t *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->smtp = smtp;
    for (int i = 0; i < MAX_CONNS; i++)
        s->conns[i].fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(s->lfd, 64) != 0 || getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0 ||
        pipe(s->stop_pipe) != 0) {
        perror("sink");
        abort();
    }
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->thread, NULL, sink_main, s) != 0) abort();
    return s;
}

sink_t *sink_http_start(void)
{
    return start(0);
}

sink_t *sink_smtp_start(void)
{
    return start(1);
}

int sink_port(const sink_t *s)
{
    return s->port;
}

void sink_stop(sink_t *s)
{
    if (!s) return;
    if (write(s->stop_pipe[1], "x", 1) != 1) abort();
    pthread_join(s->thread, NULL);
    for (int i = 0; i < MAX_CONNS; i++)
        if (s->conns[i].fd >= 0) conn_close(&s->conns[i]);
    close(s->lfd);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    for (size_t i = 0; i < s->nitems; i++)
        free(s->items[i].text);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void sink_fail_next(sink_t *s, const char *match, int n)
{
    pthread_mutex_lock(&s->mu);
    snprintf(s->fail_match, sizeof s->fail_match, "%s", match);
    s->fail_n = n;
    pthread_mutex_unlock(&s->mu);
}

void sink_hang(sink_t *s, const char *match)
{
    pthread_mutex_lock(&s->mu);
    snprintf(s->hang_match, sizeof s->hang_match, "%s", match);
    pthread_mutex_unlock(&s->mu);
}

size_t sink_count(sink_t *s, const char *match)
{
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nitems; i++)
        if (!match || strstr(s->items[i].text, match)) n++;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static unsigned long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000u + (unsigned long long)ts.tv_nsec / 1000000u;
}

size_t sink_wait(sink_t *s, const char *match, size_t want, int timeout_ms)
{
    unsigned long long deadline = now_ms() + (unsigned long long)timeout_ms;
    size_t n;
    while ((n = sink_count(s, match)) < want && now_ms() < deadline)
        usleep(10000);
    return n;
}

char *sink_item(sink_t *s, const char *match, size_t k, int *status)
{
    char *out = NULL;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nitems; i++) {
        if (match && !strstr(s->items[i].text, match)) continue;
        if (k-- == 0) {
            out = strdup(s->items[i].text);
            if (status) *status = s->items[i].status;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return out;
}
