/*
 * bench-etl: how fast the audit-log ETL loads, against a bare COPY of the
 * same rows, and how far behind it stays under a steady stream.
 *
 * Setup: a database of its own (rt_bench_etl, dropped and made again),
 * migrated, with N audit logs inserted through the schema's trigger (so
 * rt_journal holds N payloads), then VACUUMed so no run pays for hint bits
 * that an earlier one set.
 *
 *   catch-up  for each batch size: audit_logs_ts, the rollup and the cursor
 *             are emptied, then rt_etl_run_once loads all N rows (what
 *             `rtbridge etl --once --batch-size B` does: extract, transform
 *             in C, COPY, rollup, cursor, one transaction per batch). Rate =
 *             N / wall time.
 *   bare      the limit: the very rows the ETL wrote (COPY ... TO STDOUT of
 *             audit_logs_ts, held in memory), COPYed back into the emptied
 *             audit_logs_ts in one statement. Nothing is parsed, nothing
 *             read from the journal, one transaction.
 *   lag       a producer commits --lag-rate rows/s (a transaction of 20 rows
 *             every 20/rate s) for --lag-seconds while the ETL runs in hybrid
 *             mode, woken by rt_listener through a bus ring as in `serve`. A
 *             watcher polls max(log_id) of audit_logs_ts every 2 ms; a row's
 *             lag is from its transaction's COMMIT returning to the first
 *             poll that sees it (so it includes up to 2 ms of polling).
 *
 * Each catch-up and bare measurement runs --runs times, in rounds (a bare
 * COPY, then each batch size); the table shows medians (min .. max), and
 * the median of the rounds' ETL/bare ratios.
 *
 *   build/perf/bench-etl --url URL [--rows N] [--batches 100,1000,10000] [--runs R]
 *                        [--lag-rate R] [--lag-seconds S]
 *
 * URL may also come from RT_BENCH_DATABASE_URL or DATABASE_URL; it names any
 * database of a throwaway server (perf/bench.sh starts one).
 */
#include "bus.h"
#include "etl.h"
#include "listener.h"
#include "log.h"
#include "migrate.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_RUNS 20
#define MAX_BATCHES 8
#define DBNAME "rt_bench_etl"

typedef struct {
    const char *url;
    long rows;
    long batches[MAX_BATCHES];
    int nbatches;
    int runs;
    long lag_rate;
    long lag_seconds;
} opts_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, PGconn *c)
{
    fprintf(stderr, "bench-etl: %s: %s\n", what, c ? PQerrorMessage(c) : "");
    exit(1);
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) die(sql, c);
}

static long long scalar(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) die(sql, c);
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static PGconn *connect_or_die(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) die("connect", c);
    PQsetNoticeProcessor(c, quiet, NULL);
    return c;
}

/* URL with its database replaced by name (a URL ending in /dbname). */
static char *with_db(const char *url, const char *name)
{
    const char *slash = strrchr(url, '/');
    const char *q = strchr(url, '?');
    if (!slash || strncmp(url, "postgres", 8) != 0) {
        fprintf(stderr, "bench-etl: --url must be a postgresql:// URL\n");
        exit(2);
    }
    char *out = NULL;
    if (asprintf(&out, "%.*s/%s%s", (int)(slash - url), url, name, q ? q : "") < 0) abort();
    return out;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void reset_target(PGconn *c)
{
    exec_ok(c, "TRUNCATE audit_logs_ts, audit_logs_hourly, rt_etl_hourly");
    exec_ok(c, "DELETE FROM rt_etl_cursor");
}

/* ---- catch-up and bare COPY --------------------------------------------------------- */

static double run_etl(const char *db, PGconn *c, long batch, long rows)
{
    reset_target(c);
    exec_ok(c, "CHECKPOINT");
    rt_etl_opts_t o = {.conninfo = db, .mode = RT_ETL_MODE_POLLING, .batch_size = batch};
    rt_etl_stats_t st;
    memset(&st, 0, sizeof st);
    double t0 = now_s();
    int rc = rt_etl_run_once(&o, &st);
    double t = now_s() - t0;
    if (rc != 0 || (long)atomic_load(&st.rows_loaded) != rows) {
        fprintf(stderr, "bench-etl: the ETL returned %d and loaded %llu of %ld rows\n", rc,
                (unsigned long long)atomic_load(&st.rows_loaded), rows);
        exit(1);
    }
    /* Exactly once, outside the timing: every log, each once. */
    if (scalar(c, "SELECT count(*) FROM audit_logs_ts") != rows ||
        scalar(c, "SELECT count(DISTINCT log_id) FROM audit_logs_ts") != rows ||
        scalar(c, "SELECT sum(event_count) FROM audit_logs_hourly") != rows)
        die("ETL row counts", NULL);
    return (double)rows / t;
}

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void copy_out(PGconn *c, buf_t *b)
{
    PGresult *r = PQexec(c, "COPY (SELECT * FROM audit_logs_ts) TO STDOUT");
    if (PQresultStatus(r) != PGRES_COPY_OUT) die("COPY TO", c);
    PQclear(r);
    char *line;
    int n;
    while ((n = PQgetCopyData(c, &line, 0)) > 0) {
        if (b->len + (size_t)n > b->cap) {
            b->cap = b->cap ? b->cap * 2 : (1u << 24);
            while (b->cap < b->len + (size_t)n)
                b->cap *= 2;
            b->p = realloc(b->p, b->cap);
            if (!b->p) abort();
        }
        memcpy(b->p + b->len, line, (size_t)n);
        b->len += (size_t)n;
        PQfreemem(line);
    }
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
}

static double run_bare(PGconn *c, const buf_t *b, long rows)
{
    reset_target(c);
    exec_ok(c, "CHECKPOINT");
    double t0 = now_s();
    PGresult *r = PQexec(c, "COPY audit_logs_ts FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) die("COPY FROM", c);
    PQclear(r);
    for (size_t off = 0; off < b->len; off += 1u << 20) {
        size_t n = b->len - off < (1u << 20) ? b->len - off : (1u << 20);
        if (PQputCopyData(c, b->p + off, (int)n) != 1) die("COPY data", c);
    }
    if (PQputCopyEnd(c, NULL) != 1) die("COPY end", c);
    int ok = 1;
    while ((r = PQgetResult(c)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) ok = 0;
        PQclear(r);
    }
    double t = now_s() - t0;
    if (!ok) die("bare COPY", c);
    if (scalar(c, "SELECT count(*) FROM audit_logs_ts") != rows) die("bare row count", NULL);
    return (double)rows / t;
}

/* ---- steady-state lag ------------------------------------------------------------------ */

typedef struct {
    const char *db;
    long rate, seconds;
    long *last_id;     /* per transaction: its highest log_id */
    double *commit_at; /* per transaction: when COMMIT returned */
    long txns;
    atomic_int done;
} producer_t;

static void *producer_main(void *arg)
{
    producer_t *p = arg;
    PGconn *c = connect_or_die(p->db);
    const int per = 20;
    double period = (double)per / (double)p->rate, start = now_s();
    long total = p->rate * p->seconds / per;
    for (long i = 0; i < total; i++) {
        double due = start + (double)i * period, now = now_s();
        if (due > now) usleep((useconds_t)((due - now) * 1e6));
        PGresult *r = PQexec(c, "INSERT INTO audit_logs (event_type, intent_id, actor, payload) "
                                "SELECT 'LAG', gen_random_uuid(), 'lag', jsonb_build_object("
                                "'bridge_type', 'x', 'duration_ms', g, 'success', true) "
                                "FROM generate_series(1, 20) g RETURNING id");
        if (PQresultStatus(r) != PGRES_TUPLES_OK) die("producer insert", c);
        long hi = 0;
        for (int k = 0; k < PQntuples(r); k++)
            if (atol(PQgetvalue(r, k, 0)) > hi) hi = atol(PQgetvalue(r, k, 0));
        PQclear(r);
        p->commit_at[i] = now_s();
        p->last_id[i] = hi;
        p->txns = i + 1;
    }
    PQfinish(c);
    atomic_store(&p->done, 1);
    return NULL;
}

static void run_lag(const char *db, PGconn *c, long rate, long seconds)
{
    reset_target(c);
    rt_bus_t *bus = rt_bus_new();
    rt_etl_opts_t o = {.conninfo = db,
                       .mode = RT_ETL_MODE_HYBRID,
                       .batch_size = 1000,
                       .interval_ms = 200,
                       .poll_ms = 5000,
                       .bus = bus,
                       .ring_size = 65536};
    rt_etl_t *e = rt_etl_new(&o);
    rt_listener_opts_t lo = {.conninfo = db, .channels = "audit_log_created", .bus = bus};
    rt_listener_t *l = rt_listener_new(&lo);
    if (!e || !l || rt_etl_start(e) != 0 || rt_listener_start(l) != 0)
        die("starting the ETL", NULL);
    /* Caught up with the catch-up rows (a full pass) before producing. */
    double deadline = now_s() + 120;
    while (atomic_load(&rt_etl_stats(e)->passes) < 1 && now_s() < deadline)
        usleep(10000);
    while (!atomic_load(&rt_listener_stats(l)->connected) && now_s() < deadline)
        usleep(10000);

    long max_txns = rate * seconds / 20 + 1;
    producer_t p = {.db = db, .rate = rate, .seconds = seconds};
    p.last_id = calloc((size_t)max_txns, sizeof *p.last_id);
    p.commit_at = calloc((size_t)max_txns, sizeof *p.commit_at);
    double *lag = calloc((size_t)max_txns, sizeof *lag);
    long seen_txn = 0;
    pthread_t t;
    pthread_create(&t, NULL, producer_main, &p);
    deadline = now_s() + (double)seconds + 30;
    for (;;) {
        long long hi = scalar(c, "SELECT coalesce(max(log_id), 0) FROM audit_logs_ts");
        double at = now_s();
        long txns = p.txns;
        while (seen_txn < txns && p.last_id[seen_txn] <= hi) {
            lag[seen_txn] = at - p.commit_at[seen_txn];
            seen_txn++;
        }
        if ((atomic_load(&p.done) && seen_txn == p.txns) || at > deadline) break;
        usleep(2000);
    }
    pthread_join(t, NULL);
    rt_listener_free(l);
    rt_etl_free(e);
    rt_bus_free(bus);
    if (seen_txn != p.txns) {
        fprintf(stderr, "bench-etl: lag: %ld of %ld transactions never loaded\n", p.txns - seen_txn,
                p.txns);
        exit(1);
    }
    qsort(lag, (size_t)seen_txn, sizeof *lag, cmp_double);
    printf("\nsteady state, %ld rows/s for %ld s (%ld transactions of 20 rows), hybrid mode, "
           "batch 1000, interval 200 ms:\n",
           rate, seconds, seen_txn);
    printf("  lag from COMMIT to visible in audit_logs_ts: p50 %.0f ms, p99 %.0f ms, max %.0f ms\n",
           lag[seen_txn / 2] * 1000, lag[(long)((double)seen_txn * 0.99)] * 1000,
           lag[seen_txn - 1] * 1000);
    free(lag);
    free(p.last_id);
    free(p.commit_at);
}

/* ---- main ------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: bench-etl --url URL [--rows N] [--batches B1,B2,..] [--runs R] "
                    "[--lag-rate R] [--lag-seconds S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts_t o = {.rows = 200000, .runs = 3, .lag_rate = 2000, .lag_seconds = 10};
    o.url =
        getenv("RT_BENCH_DATABASE_URL") ? getenv("RT_BENCH_DATABASE_URL") : getenv("DATABASE_URL");
    const char *batches = "100,1000,10000";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (strcmp(a, "--url") == 0)
            o.url = v;
        else if (strcmp(a, "--rows") == 0)
            o.rows = atol(v);
        else if (strcmp(a, "--batches") == 0)
            batches = v;
        else if (strcmp(a, "--runs") == 0)
            o.runs = atoi(v);
        else if (strcmp(a, "--lag-rate") == 0)
            o.lag_rate = atol(v);
        else if (strcmp(a, "--lag-seconds") == 0)
            o.lag_seconds = atol(v);
        else
            usage();
        i++;
    }
    for (const char *p = batches; *p && o.nbatches < MAX_BATCHES;) {
        o.batches[o.nbatches++] = strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
    }
    if (!o.url || o.rows < 1 || o.runs < 1 || o.runs > MAX_RUNS || o.nbatches == 0) usage();
    for (int i = 0; i < o.nbatches; i++)
        if (o.batches[i] < 1 || o.batches[i] > 100000) usage();
    rt_log_setup(RT_LOG_WARN, RT_LOG_TEXT, 2);

    PGconn *admin = connect_or_die(o.url);
    exec_ok(admin, "DROP DATABASE IF EXISTS " DBNAME " WITH (FORCE)");
    exec_ok(admin, "CREATE DATABASE " DBNAME);
    char *db = with_db(o.url, DBNAME);
    PGconn *c = connect_or_die(db);
    char err[512];
    if (rt_migrate(c, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "bench-etl: migrate: %s\n", err);
        return 1;
    }
    double t0 = now_s();
    for (long done = 0; done < o.rows;) {
        long n = o.rows - done < 10000 ? o.rows - done : 10000;
        char sql[512];
        snprintf(sql, sizeof sql,
                 "INSERT INTO audit_logs (event_type, intent_id, actor, payload) "
                 "SELECT (ARRAY['BRIDGE_STARTED','BRIDGE_COMPLETED','BRIDGE_FAILED'])[1 + g %% 3], "
                 "gen_random_uuid(), 'actor' || (g %% 10), jsonb_build_object('bridge_type', "
                 "'slack', 'old_status', 'pending', 'new_status', 'completed', 'duration_ms', "
                 "g %% 5000, 'success', g %% 7 <> 0) FROM generate_series(1, %ld) g",
                 n);
        exec_ok(c, sql);
        done += n;
    }
    exec_ok(c, "VACUUM ANALYZE rt_journal");
    exec_ok(c, "VACUUM ANALYZE audit_logs");
    printf("bench-etl: %ld audit logs journaled in %.1f s; %d runs per cell\n\n", o.rows,
           now_s() - t0, o.runs);

    /* A first load, not measured, gives the bare COPY its rows. Then each
     * round runs the bare COPY and every batch size once, so all cells see
     * the same stretch of a noisy machine; the ratio is the median of the
     * rounds' ratios. */
    run_etl(db, c, 1000, o.rows);
    buf_t copy = {0};
    copy_out(c, &copy);
    double bare[MAX_RUNS], etl[MAX_BATCHES][MAX_RUNS], ratio[MAX_BATCHES][MAX_RUNS];
    for (int r = 0; r < o.runs; r++) {
        bare[r] = run_bare(c, &copy, o.rows);
        for (int b = 0; b < o.nbatches; b++) {
            etl[b][r] = run_etl(db, c, o.batches[b], o.rows);
            ratio[b][r] = etl[b][r] / bare[r];
        }
        fprintf(stderr, "bench-etl: round %d of %d done\n", r + 1, o.runs);
    }
    double bare_med = median(bare, o.runs);
    printf("| batch size | ETL rows/s, median (min .. max) | bare COPY rows/s, median (min .. max) "
           "| ETL / bare, median of rounds (min .. max) |\n|---:|---:|---:|---:|\n");
    for (int b = 0; b < o.nbatches; b++) {
        double med = median(etl[b], o.runs), rmed = median(ratio[b], o.runs);
        printf("| %ld | %.0f (%.0f .. %.0f) | %.0f (%.0f .. %.0f) | **%.2f** (%.2f .. %.2f) |\n",
               o.batches[b], med, etl[b][0], etl[b][o.runs - 1], bare_med, bare[0],
               bare[o.runs - 1], rmed, ratio[b][0], ratio[b][o.runs - 1]);
    }
    fflush(stdout);
    free(copy.p);
    if (o.lag_seconds > 0 && o.lag_rate > 0) run_lag(db, c, o.lag_rate, o.lag_seconds);
    PQfinish(c);
    exec_ok(admin, "DROP DATABASE IF EXISTS " DBNAME " WITH (FORCE)");
    PQfinish(admin);
    free(db);
    return 0;
}
