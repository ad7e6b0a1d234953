/*
 * The metrics aggregator (DESIGN §7): one worker thread draining its own bus
 * ring. It counts events by type and intents by status, keeps per-minute
 * buckets for the last 7 days, correction counts and processing-time stats,
 * and reconciles its totals with the database at start and every
 * --metrics-reconcile-interval on a connection of its own, so a missed
 * notification cannot make it drift. After each change it publishes an
 * immutable, reference-counted snapshot: readers (HTTP handlers on fan-out
 * loops, the alert evaluator) take no lock that the worker holds for long.
 * Every --stats-interval it publishes a stats_updated event on the bus.
 *
 * It answers GET /metrics (Prometheus text 0.0.4) and
 * GET /api/v1/dashboard/{overview,timeline,corrections} through
 * rt_metrics_handle (an rt_handler_fn, see reply.h): from the snapshot at once,
 * or, for timeline ranges older than the in-memory 7 days, on its query
 * thread and connection.
 *
 * Threads: new/start/stop/free and the add_* calls from the main thread,
 * before start for add_*. rt_metrics_handle, rt_metrics_value from any thread.
 */
#ifndef RT_METRICS_H
#define RT_METRICS_H

#include "bus.h"
#include "config.h"
#include "reply.h"

#include <stdint.h>
#include <stdio.h>

struct rt_listener;
struct rt_fanout;
struct rt_etl;

typedef struct rt_metrics_opts {
    const char *conninfo;
    rt_bus_t *bus;
    unsigned ring_size;              /* power of two */
    int64_t reconcile_interval_ms;   /* --metrics-reconcile-interval (30 s) */
    int64_t stats_interval_ms;       /* --stats-interval (10 s) */
    /* Sources read at scrape/snapshot time; each may be NULL. */
    struct rt_listener *listener;
    struct rt_fanout *fanout;
    struct rt_etl *etl;
} rt_metrics_opts_t;

typedef struct rt_metrics rt_metrics_t;

/* Subscribes the ring (so call before anything publishes). NULL + errno. */
rt_metrics_t *rt_metrics_new(const rt_metrics_opts_t *opts);
int rt_metrics_start(rt_metrics_t *m);
/* Stops the worker and the query thread; pending deferred requests are
 * answered 503. Safe on NULL and on a never-started aggregator. */
void rt_metrics_stop(rt_metrics_t *m);
void rt_metrics_free(rt_metrics_t *m);

/* The rt_handler_fn for "/metrics" and "/api/v1/dashboard/" (ctx = m). */
rt_handle_result_t rt_metrics_handle(void *ctx, const char *path, const char *query,
                                     rt_reply_t *out, rt_reply_done_cb done, void *done_arg);

/* Another subsystem's families for /metrics (e.g. the alert evaluator's):
 * fn writes complete families (HELP, TYPE, samples) to out, from any thread. */
typedef void (*rt_metrics_exposition_fn)(void *arg, FILE *out);
void rt_metrics_add_exposition(rt_metrics_t *m, rt_metrics_exposition_fn fn, void *arg);

/* Called on the worker thread after each new snapshot (e.g. to let the alert
 * evaluator re-check metric rules at once). Must not block. */
typedef void (*rt_metrics_snapshot_cb)(void *arg);
void rt_metrics_on_snapshot(rt_metrics_t *m, rt_metrics_snapshot_cb cb, void *arg);

/*
 * Named values of the latest snapshot, for {"metric": NAME} alert rules:
 *   intents_total, intents_created_10m, intents_created_30m, intents_created_1h,
 *   failed_rate_10m      (intents that became failed / intents created, last 10 min; 0 when none),
 *   correction_rate_1h   (intents with a correction / intents created, last hour),
 *   avg_processing_time_ms, avg_processing_time_s (BRIDGE_STARTED → BRIDGE_COMPLETED, last 10 min),
 *   events_per_second    (all events, last minute),
 *   events_last_5m,
 *   etl_lag_seconds, listener_connected, active_connections,
 *   slow_consumer_disconnects, ring_overflows
 * Returns 0 and *out, or -1 when name is unknown.
 * avg_processing_time_* and correction_rate_1h come from the last
 * reconciliation (at most --metrics-reconcile-interval old); the others
 * follow the events (snapshot at most 50 ms behind) or are read live.
 */
int rt_metrics_value(rt_metrics_t *m, const char *name, double *out);
/* The names above, NULL-terminated (for rule validation messages). */
const char *const *rt_metrics_value_names(void);

/* NULL while the correction figures are real; otherwise why they are 0 (no
 * intents.correction_history column, a column of another type, not
 * reconciled yet), for /health/realtime. The string stays valid until the
 * calling thread calls this again. Any thread. */
const char *rt_metrics_corrections_unavailable(rt_metrics_t *m);

#endif
