/*
 * Helpers shared by the listener and the ETL worker threads (see pgconn.h).
 */
#include "pgconn.h"

#include "event.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Consumes a pending wake-up so the next poll waits again. */
static void drain(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
}

char *rt_pg_oneline(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    size_t n = strlen(s);
    while (n && s[n - 1] == ' ') s[--n] = '\0';
    return s;
}

void rt_wake(int wakefd)
{
    uint64_t one = 1;
    ssize_t w = write(wakefd, &one, sizeof one);
    (void)w;
}

void rt_sleep_or_stop(int wakefd, const atomic_int *stopping, int64_t ms)
{
    struct pollfd pfd = {.fd = wakefd, .events = POLLIN};
    uint64_t until = rt_mono_ns() + (uint64_t)ms * 1000000u;
    while (!atomic_load_explicit(stopping, memory_order_acquire)) {
        uint64_t now = rt_mono_ns();
        if (now >= until) return;
        if (poll(&pfd, 1, (int)((until - now) / 1000000u) + 1) > 0 && pfd.revents) drain(wakefd);
    }
}

PGconn *rt_pg_connect(const char *conninfo, const char *application_name, int wakefd,
                      const atomic_int *stopping, int timeout_ms, char *err, size_t errlen)
{
    const char *keys[] = {"dbname",          "application_name",    "connect_timeout",
                          "keepalives",      "keepalives_idle",     "keepalives_interval",
                          "keepalives_count", NULL};
    const char *vals[] = {conninfo, application_name, "10", "1", "10", "5", "3", NULL};
    if (errlen) err[0] = '\0';
    PGconn *c = PQconnectStartParams(keys, vals, 1);
    if (!c) abort();
    uint64_t deadline = rt_mono_ns() + (uint64_t)timeout_ms * 1000000u;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    int gave_up = 0;
    while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK) {
        if (atomic_load(stopping)) {
            gave_up = 1;
            break;
        }
        if (rt_mono_ns() > deadline) break;
        struct pollfd pfds[2] = {
            {.fd = PQsocket(c), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT},
            {.fd = wakefd, .events = POLLIN},
        };
        if (poll(pfds, wakefd >= 0 ? 2 : 1, 200) < 0 && errno != EINTR) break;
        if (wakefd >= 0 && pfds[1].revents) drain(wakefd);
        if (pfds[0].revents) st = PQconnectPoll(c);
        if (st == PGRES_POLLING_FAILED) break;
    }
    if (st == PGRES_POLLING_OK && PQstatus(c) == CONNECTION_OK) return c;
    if (!gave_up && errlen) {
        const char *m = PQerrorMessage(c);
        snprintf(err, errlen, "%s", m && *m ? m : "connection timed out");
        rt_pg_oneline(err);
    }
    PQfinish(c);
    return NULL;
}
