/*
 * The logger formats into a stack buffer and emits the record with one
 * write(2): POSIX makes writes to a pipe of up to PIPE_BUF bytes atomic, and
 * for files and terminals a single write per line is what keeps lines whole
 * in practice. No lock is taken, so logging from a hot error path costs one
 * syscall and never waits on another thread.
 */
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = RT_LOG_INFO;
static rt_log_format_t g_format = RT_LOG_TEXT;
static int g_fd = 2;
static _Thread_local char t_name[16] = "main";

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void rt_log_setup(rt_log_level_t level, rt_log_format_t format, int fd)
{
    atomic_store(&g_level, (int)level);
    g_format = format;
    g_fd = fd;
}

void rt_log_set_level(rt_log_level_t level)
{
    atomic_store(&g_level, (int)level);
}

int rt_log_enabled(rt_log_level_t level)
{
    return (int)level >= atomic_load_explicit(&g_level, memory_order_relaxed);
}

int rt_log_level_parse(const char *s, rt_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (rt_log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

void rt_log_thread_name(const char *name)
{
    snprintf(t_name, sizeof t_name, "%s", name);
    pthread_setname_np(pthread_self(), t_name);
}

/* Appends s to buf as the inside of a JSON string. Returns the new length. */
static size_t json_escape(char *buf, size_t len, size_t cap, const char *s)
{
    for (; *s && len + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[len++] = '\\';
            buf[len++] = (char)c;
        } else if (c == '\n') {
            buf[len++] = '\\';
            buf[len++] = 'n';
        } else if (c < 0x20) {
            len += (size_t)snprintf(buf + len, cap - len, "\\u%04x", c);
        } else {
            buf[len++] = (char)c;
        }
    }
    return len;
}

void rt_logv(rt_log_level_t level, const char *component, const char *fmt, va_list ap)
{
    if (!rt_log_enabled(level)) return;
    int saved_errno = errno;

    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[80];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    char line[4096];
    size_t n;
    if (g_format == RT_LOG_JSON) {
        n = (size_t)snprintf(line, sizeof line,
                             "{\"time\":\"%s\",\"level\":\"%s\",\"component\":\"%s\","
                             "\"thread\":\"%s\",\"msg\":\"",
                             when, level_names[level], component, t_name);
        if (n >= sizeof line) n = sizeof line - 1;
        n = json_escape(line, n, sizeof line - 3, msg);
        line[n++] = '"';
        line[n++] = '}';
        line[n++] = '\n';
    } else {
        n = (size_t)snprintf(line, sizeof line, "%s %-5s [%s] %s: %s\n", when, level_names[level],
                             t_name, component, msg);
        if (n >= sizeof line) {
            n = sizeof line - 1;
            line[n - 1] = '\n';
        }
    }
    ssize_t w = write(g_fd, line, n);
    (void)w;
    errno = saved_errno;
}

void rt_log(rt_log_level_t level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rt_logv(level, component, fmt, ap);
    va_end(ap);
}
