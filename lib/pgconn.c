/*
 * The stoppable connect shared by the listener and the ETL workers.
 */
#include "pgconn.h"

#include "event.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

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
        if (pfds[0].revents) st = PQconnectPoll(c);
        if (st == PGRES_POLLING_FAILED) break;
    }
    if (st == PGRES_POLLING_OK && PQstatus(c) == CONNECTION_OK) return c;
    if (!gave_up && errlen) {
        const char *m = PQerrorMessage(c);
        snprintf(err, errlen, "%s", m && *m ? m : "connection timed out");
        /* libpq's messages span lines; a log record is one line. */
        for (char *p = err; *p; p++)
            if (*p == '\n' || *p == '\t') *p = ' ';
    }
    PQfinish(c);
    return NULL;
}
