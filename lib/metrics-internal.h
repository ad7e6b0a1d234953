/*
 * What the files of the metrics aggregator share: the immutable snapshot the
 * worker publishes (metrics.c), which the HTTP handlers (metrics_api.c) and
 * the Prometheus exposition (metrics_prom.c) read; the worker's own state,
 * which metrics.c and its database side (metrics_db.c) share; and the pure
 * helpers the unit tests call (ISO 8601 parsing, bucket arithmetic, query
 * strings).
 *
 * A snapshot is written once by the worker, then only read, by any thread,
 * until its last reference drops (rt__snap_acquire / rt__snap_release).
 * struct rt_metrics: the fields under "worker-only state" belong to the
 * worker thread; the query-thread fields are under qmu; pub.snap is under
 * pub.snap_mu.
 */
#ifndef RT_METRICS_INTERNAL_H
#define RT_METRICS_INTERNAL_H

#include "event.h"
#include "metrics.h"
#include "reply.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Per-minute creation buckets kept in memory: 8 days, so that a range that
 * starts within the last 7 days is answered from memory at any granularity
 * (its first day bucket may begin up to a day before). */
#define RT_M_MINUTES (8 * 24 * 60)
#define RT_M_MEMORY_DAYS 7
#define RT_M_MAX_STATUS 32  /* distinct statuses tracked; more go to "other" */
#define RT_M_MAX_SOURCES 32 /* correction sources */
#define RT_M_MAX_BTYPES 16  /* bridge types of the processing histogram */
#define RT_M_MAX_CORR_ITEMS 100
#define RT_M_NAME 64
#define RT_M_MAX_BUCKETS 10000 /* timeline buckets per request */
#define RT_M_PROC_NB 12
extern const double rt__proc_bounds_s[RT_M_PROC_NB];

typedef struct rt_m_status {
    char name[RT_M_NAME]; /* "null" for a NULL status */
    int64_t active;       /* intents in this status now */
    uint64_t entered;     /* changes into this status seen since start */
} rt_m_status_t;

typedef struct rt_m_count {
    char name[RT_M_NAME];
    int64_t n;
} rt_m_count_t;

typedef struct rt_m_proc {
    char name[RT_M_NAME];         /* bridge_type */
    uint64_t b[RT_M_PROC_NB + 1]; /* not cumulative; b[NB] counts the rest */
    double sum_s;
    uint64_t count;
} rt_m_proc_t;

/* This process, from /proc (sampled by the worker: counting the fds of a
 * server with 19 000 connections is too slow for a fan-out loop). */
typedef struct rt_m_procinfo {
    int ok; /* /proc/self/stat was read */
    double cpu_s, rss_bytes, vsize_bytes, start_time_s;
    long open_fds;  /* -1: unknown */
    double max_fds; /* -1: unknown */
} rt_m_procinfo_t;

/* Fills *p from /proc (any thread; reads a directory of one entry per fd). */
void rt__procinfo_read(rt_m_procinfo_t *p);

typedef struct rt_m_snap {
    atomic_uint refs;
    uint64_t now_ns; /* CLOCK_REALTIME when taken */
    int64_t now_min; /* its minute number (Unix seconds / 60) */

    int64_t total_intents;
    int nstatus;
    rt_m_status_t status[RT_M_MAX_STATUS];
    /* minutes[i]: intents created in minute now_min - (RT_M_MINUTES - 1) + i */
    uint32_t minutes[RT_M_MINUTES];
    int64_t created_10m, created_30m, last_hour, last_24h, last_7d;
    int64_t failed_10m; /* changes into "failed", last 10 minutes */

    uint64_t events[RT_EV__COUNT]; /* events drained, by type, since start */
    uint64_t events_last_60s, events_last_5m;

    /* Corrections, from the last reconciliation. */
    const char *corr_unavailable; /* NULL, or why the figures are 0 (static or in corr_reason) */
    char corr_reason[200];
    int64_t corr_intents;    /* intents with at least one correction */
    int64_t corr_total;      /* corrections over all intents */
    int64_t corr_intents_1h; /* of the intents created in the last hour */
    int64_t created_1h_rec;  /* intents created in the last hour, at that reconciliation */
    int nsources;
    rt_m_count_t sources[RT_M_MAX_SOURCES];
    int ncorr_items;
    char *corr_items[RT_M_MAX_CORR_ITEMS]; /* {"intent_id":..,...} JSON texts, newest first */

    /* Processing time (BRIDGE_STARTED -> BRIDGE_COMPLETED). */
    double avg_proc_ms_1d, avg_proc_ms_10m; /* from the last reconciliation */
    int nproc;
    rt_m_proc_t proc[RT_M_MAX_BTYPES]; /* live, since start */

    uint64_t reconciles, reconcile_failures, skipped_visible, unknown_transitions;
    uint64_t last_reconcile_ns; /* CLOCK_REALTIME; 0: never */
    uint64_t last_reconcile_us; /* how long it took */
    int db_connected;
    rt_m_procinfo_t procinfo; /* at most PUBLISH_MAX_MS old */
} rt_m_snap_t;

/* The aggregator: fields shared between the files. The worker's private
 * state lives in metrics.c. */
struct rt_metrics_pub {
    rt_metrics_opts_t opts;
    pthread_mutex_t snap_mu; /* held only to load + ref, or to swap */
    rt_m_snap_t *snap;
    /* The rendered overview, reused for OVERVIEW_CACHE_MS while the snapshot
     * is the same: rendering costs 10-30 us, a copy well under 1 us, and a
     * dashboard API under load is asked the same thing thousands of times a
     * second. The lock is held only to compare and copy. */
    pthread_mutex_t ov_mu;
    uint64_t ov_snap_ns;   /* now_ns of the snapshot it was rendered from */
    uint64_t ov_mono_ns;   /* when it was rendered */
    char *ov_body;
    struct {
        rt_metrics_exposition_fn fn;
        void *arg;
    } expo[8];
    int nexpo;
};

/* The latest snapshot with one reference (never NULL once created). */
rt_m_snap_t *rt__snap_acquire(rt_metrics_t *m);
void rt__snap_release(rt_m_snap_t *s);
struct rt_metrics_pub *rt__metrics_pub(rt_metrics_t *m);
/* Queues a timeline query over [start, end) with buckets of gran seconds on
 * the query thread. Returns 0, or -EAGAIN (queue full) / -ESHUTDOWN. */
int rt__metrics_defer_timeline(rt_metrics_t *m, int64_t start, int64_t end, int64_t gran,
                               rt_reply_done_cb done, void *done_arg);

/* On the query thread: runs a timeline query on conn (NULL: no database,
 * 503) and fills *out. */
struct pg_conn;
void rt__timeline_sql_reply(struct pg_conn *conn, int64_t start, int64_t end, int64_t gran,
                            rt_reply_t *out);

/* For tests: asks the worker to reconcile now (it still must be connected);
 * the snapshot's reconciles count says when it has. Any thread. */
void rt__metrics_reconcile_now(rt_metrics_t *m);

/* The overview JSON object text (malloc'd), used for the API and the body of
 * stats_updated. */
char *rt__overview_json(rt_metrics_t *m, const rt_m_snap_t *s);
/* Prometheus text of everything (malloc'd, *len set). */
char *rt__prom_render(rt_metrics_t *m, const rt_m_snap_t *s, size_t *len);

/* ---- the worker (metrics.c, metrics_db.c) -------------------------------------- */

#define RT_M_FAILED_MINUTES 60
#define RT_M_EPS_SECONDS 300

struct pg_conn;
struct pg_cancel;

typedef struct pend {
    char id[40];
    int64_t started_ms; /* 0: free */
    char btype[RT_M_NAME];
} pend_t;

/* A deferred timeline query (metrics_api.c renders, the query thread runs). */
typedef struct tq {
    struct tq *next;
    int64_t start, end, gran;
    rt_reply_done_cb done;
    void *done_arg;
} tq_t;

struct rt_metrics {
    struct rt_metrics_pub pub;
    rt_bus_sub_t *sub;
    int wakefd;
    atomic_int stopping;
    atomic_int reconcile_now;
    pthread_t worker;
    int started;
    rt_metrics_snapshot_cb snap_cb;
    void *snap_cb_arg;

    /* ---- worker-only state ---- */
    struct pg_conn *conn;
    int64_t total;
    int nstatus;
    rt_m_status_t status[RT_M_MAX_STATUS];
    uint32_t minutes[RT_M_MINUTES];
    int64_t cur_min;
    uint32_t failed[RT_M_FAILED_MINUTES];
    int64_t failed_min;
    uint32_t eps[RT_M_EPS_SECONDS];
    int64_t eps_sec;
    uint64_t events[RT_EV__COUNT];
    pend_t *pend;
    int nproc;
    rt_m_proc_t proc[RT_M_MAX_BTYPES];
    /* from the last reconciliation */
    rt_m_snap_t rec;    /* only the correction and processing fields are used */
    char *vis_snapshot; /* pg_snapshot text while checking visibility, else NULL */
    uint64_t reconciles, reconcile_failures, skipped_visible, unknown_transitions;
    uint64_t last_reconcile_ns, last_reconcile_us;
    int dirty; /* state changed since the last snapshot */
    rt_m_procinfo_t procinfo;
    uint64_t procinfo_at; /* monotonic ns of the last sample */

    /* ---- the query thread (timelines older than memory) ---- */
    pthread_t qthread;
    int qstarted;
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    tq_t *qhead, **qtail;
    int qlen, qstopping;
    int qwakefd;
    atomic_int qstop_flag;
    struct pg_cancel *qcancel; /* under qmu */
};

/* ---- rings of counts, for the worker ---- */

static inline size_t rt__slot(int64_t i, size_t n)
{
    int64_t r = i % (int64_t)n;
    return (size_t)(r < 0 ? r + (int64_t)n : r);
}

/* ring[rt__slot(i)] holds index i for i in (*cur - n, *cur]. */
static inline void rt__ring_advance(uint32_t *ring, size_t n, int64_t *cur, int64_t to)
{
    if (to <= *cur) return;
    if (to - *cur >= (int64_t)n) {
        memset(ring, 0, n * sizeof *ring);
    } else {
        for (int64_t i = *cur + 1; i <= to; i++)
            ring[rt__slot(i, n)] = 0;
    }
    *cur = to;
}

static inline void rt__ring_add(uint32_t *ring, size_t n, int64_t cur, int64_t i, uint32_t v)
{
    if (i > cur || i <= cur - (int64_t)n) return;
    ring[rt__slot(i, n)] += v;
}

static inline uint64_t rt__ring_sum(const uint32_t *ring, size_t n, int64_t cur, int64_t k)
{
    uint64_t s = 0;
    if (k > (int64_t)n) k = (int64_t)n;
    for (int64_t i = cur - k + 1; i <= cur; i++)
        s += ring[rt__slot(i, n)];
    return s;
}

rt_m_status_t *rt__status_slot(rt_metrics_t *m, const char *name);
void rt__snap_clear_items(rt_m_snap_t *s);
/* A connection in UTC; NULL after a failure (logged) or a stop. */
struct pg_conn *rt__metrics_connect(const char *conninfo, const char *appname, int wakefd,
                                    const atomic_int *stop);
void rt__metrics_disconnect(rt_metrics_t *m, const char *why);
/* Replaces the worker's totals with the database's; 0 or -1 (logged). */
int rt__metrics_reconcile(rt_metrics_t *m);
/* Marks in skip[] the intent_update events the last reconciliation counted. */
void rt__metrics_check_visible(rt_metrics_t *m, rt_event_t **evs, size_t n, char *skip);

/* ---- pure helpers (unit-tested) ---------------------------------------------- */

/* Parses an ISO 8601 date-time: YYYY-MM-DD, optionally followed by T (or a
 * space) and HH:MM[:SS[.fraction]], optionally followed by Z or an offset
 * +HH[:MM] / -HH[:MM] (a space where the '+' was: a '+' in a query string
 * decodes to a space). Without a zone the time is UTC. Stores Unix seconds
 * (the fraction is dropped, toward the past). Returns 0 or -EINVAL. */
int rt__iso_parse(const char *s, int64_t *out);
/* Formats Unix seconds as "YYYY-MM-DDTHH:MM:SSZ"; returns the length. */
size_t rt__iso_format(char *buf, size_t cap, int64_t t);
/* Unix seconds as an SQL parameter, "YYYY-MM-DD HH:MM:SS+00": read as UTC by
 * a timestamptz column, and by a timestamp column (which ignores the zone)
 * as the UTC wall time the spec's utcnow() comparisons assume. */
void rt__sql_time(char *buf, size_t cap, int64_t t);
/* Days since 1970-01-01 of a proleptic Gregorian date. */
int64_t rt__days_from_civil(int64_t y, unsigned m, unsigned d);

/* floor(t / g) * g, also for negative t. */
int64_t rt__floor_to(int64_t t, int64_t g);
/* Number of buckets of width g covering [floor(start), floor(end)] inclusive
 * (end >= start). */
int64_t rt__bucket_count(int64_t start, int64_t end, int64_t g);

/* Finds key in a raw query string ("a=1&b=2"), percent-decoding the value
 * ('+' is a space) into buf. Returns 1 found, 0 absent, -EINVAL bad
 * encoding or too long, -EEXIST the key appears twice. */
int rt__query_get(const char *query, const char *key, char *buf, size_t cap);

#endif
