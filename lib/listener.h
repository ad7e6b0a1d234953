/*
 * The listener thread: one libpq connection that LISTENs on the configured
 * channels and turns each notification into an event on the bus.
 *
 * Exactly-once across reconnects. Every notified row is also a row of
 * rt_journal carrying the id of the transaction that wrote it. The listener
 * remembers the xmin of a snapshot taken after its LISTEN was active: every
 * transaction below it had finished by then, and every later one either is
 * visible to that snapshot or notifies this connection when it commits. After
 * a reconnect it re-LISTENs, then publishes every journal row with
 * xid >= that xmin it has not published yet (a set of published seqs makes it
 * exact), which covers rows whose transactions committed out of seq order
 * while it was away. The set is pruned after each such snapshot, once a
 * marker NOTIFY the listener sends itself has come back: notifications arrive
 * in commit order, so none for a pruned row can still be in flight.
 *
 * Threads: rt_listener_new/start/stop/free from one controlling thread (main).
 * The stats may be read from any thread.
 */
#ifndef RT_LISTENER_H
#define RT_LISTENER_H

#include "bus.h"

#include <stdatomic.h>
#include <stdint.h>

typedef struct rt_listener_opts {
    const char *conninfo;     /* URL or key=value string */
    const char *channels;     /* comma-separated */
    int64_t reconnect_min_ms; /* first delay; doubles up to max, with jitter */
    int64_t reconnect_max_ms;
    int64_t refresh_ms;       /* how often to prune the dedup set; 0 = 5000 */
    rt_bus_t *bus;            /* events are published here */
} rt_listener_opts_t;

typedef struct rt_listener_stats {
    atomic_int connected;              /* 1 while LISTENing */
    atomic_uint_fast64_t notifications; /* received from the server */
    atomic_uint_fast64_t published;    /* events put on the bus (live + replayed) */
    atomic_uint_fast64_t replayed;     /* published from the journal: after a reconnect, or
                                        * by a periodic refresh that saw a row before its
                                        * notification arrived (which is then skipped) */
    atomic_uint_fast64_t duplicates;   /* notifications skipped as already published */
    atomic_uint_fast64_t invalid;      /* payloads skipped: bad JSON or missing fields */
    atomic_uint_fast64_t by_ref;       /* oversize payloads fetched from the journal */
    atomic_uint_fast64_t reconnects;   /* successful reconnects after a loss */
    atomic_uint_fast64_t connect_failures;
    atomic_int_fast64_t last_seq;      /* highest seq published */
    atomic_uint_fast64_t last_event_ns; /* CLOCK_REALTIME of the last publish */
} rt_listener_stats_t;

typedef struct rt_listener rt_listener_t;

/* Copies opts (strings included). Returns NULL with errno EINVAL if there is
 * no channel or a channel name is empty. */
rt_listener_t *rt_listener_new(const rt_listener_opts_t *opts);
/* Starts the thread. Returns 0 or a negative errno. */
int rt_listener_start(rt_listener_t *l);
/* Asks the thread to stop and joins it. Safe if never started. */
void rt_listener_stop(rt_listener_t *l);
void rt_listener_free(rt_listener_t *l);
rt_listener_stats_t *rt_listener_stats(rt_listener_t *l);

#endif
