/*
 * Journal housekeeping: rt_journal grows by one row per change; rows older
 * than the retention are deleted in bounded batches so a prune never holds
 * long locks. Resume requests older than the retention get a resync.
 *
 * Blocking (libpq): call from a worker thread or uv_queue_work, not a loop.
 */
#ifndef RT_JOURNAL_H
#define RT_JOURNAL_H

#include "event.h"

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

/* Deletes rows older than retention_ms, 10 000 at a time. With keep_unloaded
 * set (the ETL runs), audit-log rows that some ETL cursor in rt_etl_cursor
 * has not loaded yet are kept whatever their age (lib/etl.c: a row is loaded
 * if its xid is below the cursor's xmin, or its seq is at most the cursor's
 * and the cursor's snapshot saw it; with no cursor at all, none is). *deleted receives the count. Returns 0
 * or -EIO (logged). */
int rt_journal_prune(PGconn *conn, int64_t retention_ms, int keep_unloaded, long long *deleted);

/* The highest seq in the journal (0 when empty) into *seq. Returns 0 or
 * -EIO (logged). */
int rt_journal_head(PGconn *conn, int64_t *seq);

/* Reads up to limit journal rows with seq > after, in seq order, as events
 * (*evs: malloc'd array of *n events, one reference each; rows whose payload
 * does not parse are skipped). *pruned_through receives the highest seq ever
 * pruned: if after < it, rows the client needs are gone (resync). Returns 0
 * or -EIO (logged). */
int rt_journal_fetch_after(PGconn *conn, int64_t after, size_t limit, rt_event_t ***evs,
                           size_t *n, int64_t *pruned_through);

#endif
