/*
 * Connecting to PostgreSQL from a worker thread that must stay stoppable: the
 * connect runs non-blocking (PQconnectStartParams/PQconnectPoll) and polls a
 * wake descriptor too, so asking the thread to stop never waits for a TCP or
 * authentication timeout. TCP keep-alives are on, so a dead peer is noticed.
 *
 * Any thread; the connection it returns belongs to the caller.
 */
#ifndef RT_PGCONN_H
#define RT_PGCONN_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stddef.h>

/* Connects to conninfo (URL or key=value) as application_name. Gives up after
 * timeout_ms, or as soon as *stopping becomes non-zero (checked whenever
 * wakefd, if >= 0, becomes readable, and at least every 200 ms). Returns the
 * connection, or NULL with libpq's message on one line in err (empty when it
 * gave up because of *stopping). */
PGconn *rt_pg_connect(const char *conninfo, const char *application_name, int wakefd,
                      const atomic_int *stopping, int timeout_ms, char *err, size_t errlen);

#endif
