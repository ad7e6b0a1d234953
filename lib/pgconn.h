/*
 * What the database worker threads (listener, ETL, metrics) share: connecting to
 * PostgreSQL while staying stoppable, waiting out a backoff while staying
 * stoppable, and putting libpq's multi-line messages on one log line.
 *
 * A worker is stopped by setting its stopping flag and writing its wake
 * eventfd. The same eventfd may also carry "work to do" wake-ups (the ETL's
 * bus ring): these helpers read it when it becomes readable, so a pending
 * wake-up cannot make them spin; the worker finds its work again from its
 * ring after reconnecting.
 *
 * Any thread; a connection returned belongs to the caller.
 */
#ifndef RT_PGCONN_H
#define RT_PGCONN_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Connects to conninfo (URL or key=value) as application_name. Gives up after
 * timeout_ms, or as soon as *stopping becomes non-zero (checked whenever
 * wakefd, if >= 0, becomes readable, and at least every 200 ms). Returns the
 * connection, or NULL with libpq's message on one line in err (empty when it
 * gave up because of *stopping). */
PGconn *rt_pg_connect(const char *conninfo, const char *application_name, int wakefd,
                      const atomic_int *stopping, int timeout_ms, char *err, size_t errlen);

/* Writes one wake-up to an eventfd (stop, or work to do). Never blocks:
 * eventfds coalesce, and a full counter only means one is already pending. */
void rt_wake(int wakefd);

/* Sleeps ms milliseconds, or less if *stopping becomes non-zero (noticed when
 * wakefd becomes readable). */
void rt_sleep_or_stop(int wakefd, const atomic_int *stopping, int64_t ms);

/* Rewrites s in place as one line: line breaks and tabs become spaces,
 * trailing spaces go. Returns s. */
char *rt_pg_oneline(char *s);

#endif
