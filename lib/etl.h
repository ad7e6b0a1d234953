/*
 * The audit-log ETL: loads every audit log, exactly once, from the journal
 * (rt_journal rows of channel audit_log_created) into audit_logs_ts, and
 * keeps audit_logs_hourly current where it is a table (plain PostgreSQL).
 *
 * One thread with one libpq connection to the target (plus one to the source
 * when rt_journal lives in another database). It holds a session advisory
 * lock on the target connection while it loads, so exactly one ETL runs per
 * target database: the others retry the lock every second and one of them
 * takes over once the leader's session ends (process exit, kill -9,
 * connection loss). Losing the connection loses the lock and any transaction
 * in flight with it, so a former leader can never commit a load after
 * another one started.
 *
 * Each load is one transaction on the target: extract up to batch_size
 * journal rows past the cursor, transform them in C (auditrow.h), COPY them
 * straight into audit_logs_ts, add the batch's counts to the hourly rollup
 * (rt_etl_hourly, from which the touched rows of audit_logs_hourly are
 * rewritten), and advance the cursor row (rt_etl_cursor). A crash at any
 * point leaves either all of it or none. If the server refuses the COPY (a
 * row of the batch is there already, or has no partition), the transaction
 * is rolled back and the batch loaded again through a staging table with
 * INSERT ... ON CONFLICT (log_id, time) DO NOTHING, so loads stay idempotent.
 *
 * With a separate source the cursor still lives in the target and advances
 * in the load's transaction there; the extract reads the source in a
 * read-only REPEATABLE READ transaction whose snapshot is the one the cursor
 * records. A crash between the target's commit and anything else therefore
 * neither loses nor repeats a row. After each commit (at most once a second
 * during a catch-up) the cursor is copied into the source's rt_etl_cursor
 * under the key "audit_logs>DB@HOST:PORT", so the journal pruning there
 * (journal.h) keeps what the target has not loaded; the copy may lag, never
 * lead.
 *
 * The cursor is exact under out-of-order commits; see the comment at the top
 * of etl.c for the argument. Loads are idempotent besides, so reading a row
 * twice is harmless.
 *
 * What wakes it (mode): event, audit_log events from its bus ring; polling,
 * a timer every poll_ms; hybrid, both. Events are only wake-ups: the journal
 * is the source of truth, so a dropped event (full ring) costs latency, never
 * a row. After a wake-up it waits until batch_size events are pending or
 * interval_ms has passed since the first one, whichever comes first.
 *
 * Threads: rt_etl_new/start/stop/free from one controlling thread (main),
 * rt_etl_new before anything publishes on the bus. The stats may be read
 * from any thread. rt_etl_run_once runs on the calling thread.
 */
#ifndef RT_ETL_H
#define RT_ETL_H

#include "bus.h"
#include "config.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

typedef struct rt_etl_opts {
    const char *conninfo;        /* URL or key=value string; source and target by default */
    const char *source_conninfo; /* where rt_journal is, if not conninfo (may be NULL) */
    const char *target_conninfo; /* where audit_logs_ts and the cursor are, if not conninfo */
    rt_etl_mode_t mode;
    int64_t batch_size;       /* rows per load transaction; 0 = 1000 */
    int64_t interval_ms;      /* wait from the first pending event to the load */
    int64_t poll_ms;          /* polling/hybrid: journal check period; 0 = 5000 */
    int64_t retention_ms;     /* drop daily partitions wholly older; 0 = keep all */
    int64_t reconnect_min_ms; /* first reconnect delay; doubles up to max, jittered */
    int64_t reconnect_max_ms;
    int64_t leader_retry_ms; /* how often a non-leader tries the lock; 0 = 1000 */
    rt_bus_t *bus;           /* event/hybrid: audit_log events wake the ETL (may be NULL) */
    unsigned ring_size;      /* capacity of its ring, a power of two; 0 = 65536 */
} rt_etl_opts_t;

typedef struct rt_etl_stats {
    atomic_int connected;               /* 1 while the connection is up */
    atomic_int leader;                  /* 1 while this instance holds the ETL lock */
    atomic_uint_fast64_t rows_loaded;   /* rows inserted into audit_logs_ts */
    atomic_uint_fast64_t rows_read;     /* journal rows extracted (loaded or already there) */
    atomic_uint_fast64_t bad_payloads;  /* rows loaded with NULLs for unusable fields, or
                                         * skipped for lack of a usable log_id */
    atomic_uint_fast64_t skipped;       /* of those, rows without a usable log_id */
    atomic_uint_fast64_t batches;       /* committed load transactions that moved rows */
    atomic_uint_fast64_t last_batch_us; /* duration of the last such transaction */
    atomic_uint_fast64_t lag_ms;        /* newest journal row - newest loaded row (ms) */
    atomic_int_fast64_t cursor_seq;     /* the cursor's last_seq */
    atomic_uint_fast64_t passes;        /* catch-ups completed (caught up to a snapshot) */
    atomic_uint_fast64_t events;        /* audit_log events received (wake-ups) */
    atomic_uint_fast64_t partitions_created;
    atomic_uint_fast64_t partitions_dropped;
    atomic_uint_fast64_t reconnects; /* successful connects after a loss */
    atomic_uint_fast64_t errors;     /* failed load transactions (retried) */
    atomic_uint_fast64_t fallbacks;  /* batches loaded through the staging table */
} rt_etl_stats_t;

typedef struct rt_etl rt_etl_t;

/* Copies opts. With a bus and mode event or hybrid it subscribes a ring for
 * audit_log events (so call it before the publisher starts). Returns NULL with
 * errno EINVAL (no conninfo) or the subscription's errno. */
rt_etl_t *rt_etl_new(const rt_etl_opts_t *opts);
/* Starts the thread. Returns 0 or a negative errno. */
int rt_etl_start(rt_etl_t *e);
/* Asks the thread to stop and joins it: a load in flight finishes (or rolls
 * back), the connection and with it the lock are released. Safe if never
 * started. */
void rt_etl_stop(rt_etl_t *e);
void rt_etl_free(rt_etl_t *e);
rt_etl_stats_t *rt_etl_stats(rt_etl_t *e);

/* On the calling thread: connects once, takes the lock, creates partitions
 * ahead, loads everything committed so far, applies retention, disconnects.
 * stats (may be NULL) receives the counters. Returns 0, -EBUSY if another
 * instance holds the lock, or -EIO (logged). */
int rt_etl_run_once(const rt_etl_opts_t *opts, rt_etl_stats_t *stats);

/* Fills opts from the configuration (bus and ring size left to the caller). */
void rt_etl_opts_from_config(rt_etl_opts_t *opts, const rt_config_t *cfg);

/* `rtbridge etl`: with --once, rt_etl_run_once and a summary line on out;
 * otherwise runs the ETL (plus a listener for event wake-ups unless polling)
 * until SIGINT or SIGTERM. Returns the exit status. Main thread, before any
 * other thread exists (it blocks those signals to wait for them). */
int rt_etl_cmd(const rt_config_t *cfg, FILE *out);

#endif
