/*
 * The audit-log ETL thread (see etl.h for what it does). This comment is the
 * argument for why its cursor never skips a row.
 *
 * The source is rt_journal. Every row records the id of the transaction that
 * wrote it (xid), and seqs are taken at insert time, so a transaction can
 * commit after another one that holds a higher seq. The cursor is three
 * values (S, X, P) (last_seq, last_xmin, snapshot) with the invariant
 *   (a) every row with xid < X is loaded, and
 *   (b) every row with seq <= S that is visible in snapshot P is loaded.
 * So a row not yet loaded has xid >= X and either seq > S or is invisible in
 * P, and a row invisible in P has xid >= xmin(P) (a transaction below a
 * snapshot's xmin had ended when it was taken).
 *
 * Each load is one REPEATABLE READ transaction with snapshot N. It takes, in
 * seq order, the first batch_size rows of R: the rows visible in N that have
 * seq > S, or seq <= S, xid >= max(X, xmin(P)) and are invisible in P. (R
 * also holds rows with seq > S and xid < X, loaded already by (a): taking
 * them again is harmless and keeps that half a plain scan of the key; the
 * other half is a scan of the xid index.) Every row visible in N and not
 * yet loaded is in R. Let L be the highest seq taken. After loading:
 *   - if R was cut at batch_size, the cursor becomes (L, X, N). (b) holds: a
 *     row with seq <= L visible in N is either in R, and then among the rows
 *     taken (they are the first of R by seq), or not in R, and then it was
 *     loaded already. (a) is unchanged.
 *   - otherwise every row visible in N is now loaded, and the cursor becomes
 *     (max(S, L), xmin(N), N). (a) holds because a transaction below xmin(N)
 *     had ended before N, so its rows are visible in N.
 * The cursor is written in the transaction that loads the rows, so the
 * invariant survives a crash at any point. A transaction in flight at N is
 * invisible in N and is picked up by a later load whatever its seq. Rows are
 * read twice only in the rare cases above, and loads are idempotent anyway
 * (the unique key (log_id, time) with ON CONFLICT DO NOTHING), so a row read
 * twice is never loaded twice.
 *
 * The leader lock is a session advisory lock on the same connection that
 * loads: a session that dies loses the lock and its open transaction at once,
 * so two loads never overlap. The cursor row is also read FOR UPDATE in
 * REPEATABLE READ, which would make an overlapping load fail with a
 * serialization error rather than commit on a stale cursor.
 */
#include "etl.h"

#include "listener.h"
#include "log.h"
#include "pgconn.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define COMP "etl"
#define SOURCE "audit_logs"
/* "rtbr_etl" in ASCII read as a big-endian 64-bit integer. */
#define LOCK_KEY "8247325060988499052"
#define CONNECT_TIMEOUT_MS 10000
#define MAINTENANCE_MS (3600 * 1000)
#define COPY_FLUSH (1u << 20)

/* ---- SQL ------------------------------------------------------------------------ */

/* Columns of the staging table: audit_logs_ts plus the transform's bad flag,
 * in the order rt_etl_transform returns them. */
static const char STAGE_SQL[] =
    "CREATE TEMP TABLE IF NOT EXISTS rt_etl_stage ("
    " time timestamptz, log_id bigint, event_type text, intent_id uuid, actor text,"
    " bridge_type text, status_from text, status_to text, payload jsonb,"
    " duration_ms integer, success boolean, bad boolean"
    ") ON COMMIT DELETE ROWS";

/* The first statement of the transaction, so the snapshot it reports is the
 * transaction's. */
static const char CURSOR_SQL[] =
    "SELECT last_seq, last_xmin::text, snapshot, pg_current_snapshot()::text, "
    "pg_snapshot_xmin(pg_current_snapshot())::text "
    "FROM rt_etl_cursor WHERE source = $1 FOR UPDATE";

/* $1 S, $2 X, $3 P, $4 batch size: see the top of the file. The first half
 * leaves out "xid >= X": that only adds rows already loaded (harmless, and
 * rare: seq > S and xid < X happens only after S moved back), and keeps the
 * plan an ordered scan of the primary key that stops after $4 rows, whatever
 * the statistics say about xid. The second half must be found through the
 * xid index (few rows: transactions in flight at P); seq + 0 keeps the
 * planner from scanning the key range seq <= S instead. */
static const char EXTRACT_SQL[] =
    "WITH pick AS ("
    " (SELECT seq FROM rt_journal"
    "  WHERE channel = 'audit_log_created' AND seq > $1::bigint"
    "  ORDER BY seq LIMIT $4::bigint)"
    " UNION ALL"
    " (SELECT seq FROM rt_journal"
    "  WHERE channel = 'audit_log_created' AND seq + 0 <= $1::bigint"
    "  AND xid >= greatest($2::xid8, pg_snapshot_xmin($3::pg_snapshot))"
    "  AND NOT pg_visible_in_snapshot(xid, $3::pg_snapshot)"
    "  ORDER BY seq LIMIT $4::bigint)"
    " ORDER BY seq LIMIT $4::bigint) "
    "SELECT j.seq, extract(epoch FROM j.created_at)::float8, t.* "
    "FROM pick JOIN rt_journal j ON j.seq = pick.seq "
    "CROSS JOIN LATERAL rt_etl_transform(j.payload, j.created_at) t "
    "ORDER BY j.seq";
enum { X_SEQ = 0, X_JTIME, X_FIRST_STAGED, X_NCOLS = 14 };

static const char ENSURE_STAGED_SQL[] =
    "SELECT coalesce(sum(rt_etl_ensure_partition(d)::int), 0) "
    "FROM (SELECT DISTINCT (time AT TIME ZONE 'UTC')::date AS d FROM rt_etl_stage) s";

static const char ENSURE_AHEAD_SQL[] = "SELECT coalesce(sum(rt_etl_ensure_partition(d)::int), 0) "
                                       "FROM (VALUES ((now() AT TIME ZONE 'UTC')::date), "
                                       "((now() AT TIME ZONE 'UTC')::date + 1)) v(d)";

/* COPY cannot skip duplicates; this does. Returns rows inserted, bad rows
 * among them, rows without a log_id (not loaded), and the UTC hours touched. */
static const char INSERT_SQL[] =
    "WITH ins AS ("
    " INSERT INTO audit_logs_ts (time, log_id, event_type, intent_id, actor, bridge_type,"
    "  status_from, status_to, payload, duration_ms, success)"
    " SELECT time, log_id, event_type, intent_id, actor, bridge_type, status_from, status_to,"
    "  payload, duration_ms, success FROM rt_etl_stage WHERE log_id IS NOT NULL"
    " ON CONFLICT (log_id, time) DO NOTHING"
    " RETURNING log_id, time) "
    "SELECT (SELECT count(*) FROM ins),"
    " (SELECT count(*) FROM rt_etl_stage s WHERE s.bad AND s.log_id IS NOT NULL"
    "  AND EXISTS (SELECT 1 FROM ins WHERE ins.log_id = s.log_id AND ins.time = s.time)),"
    " (SELECT count(*) FROM rt_etl_stage WHERE log_id IS NULL),"
    " (SELECT array_agg(DISTINCT date_trunc('hour', time AT TIME ZONE 'UTC')) FROM ins)::text";

/* Recomputes whole hours ($1: UTC hours) of the rollup from audit_logs_ts, as
 * the continuous aggregate of the TimescaleDB path defines them. The DELETE
 * and the INSERT share one snapshot, so the DELETE sees only the old rows. */
static const char HOURLY_SQL[] =
    "WITH h AS (SELECT unnest($1::timestamp[]) AT TIME ZONE 'UTC' AS bucket),"
    " d AS (DELETE FROM audit_logs_hourly WHERE bucket IN (SELECT bucket FROM h)) "
    "INSERT INTO audit_logs_hourly (bucket, event_type, actor, event_count, avg_duration_ms,"
    " success_count, failure_count) "
    "SELECT h.bucket, t.event_type, t.actor, count(*), avg(t.duration_ms),"
    " sum(CASE WHEN t.success THEN 1 ELSE 0 END), sum(CASE WHEN NOT t.success THEN 1 ELSE 0 END) "
    "FROM h JOIN audit_logs_ts t ON t.time >= h.bucket AND t.time < h.bucket + interval '1 hour' "
    "GROUP BY h.bucket, t.event_type, t.actor";

static const char UPDATE_CURSOR_SQL[] =
    "UPDATE rt_etl_cursor SET last_seq = $2::bigint, last_xmin = greatest(last_xmin, $3::xid8),"
    " snapshot = $4, rows_loaded = rows_loaded + $5::bigint, updated_at = now() "
    "WHERE source = $1";

static const char NEWEST_SQL[] = "SELECT extract(epoch FROM created_at)::float8 FROM rt_journal "
                                 "WHERE channel = 'audit_log_created' ORDER BY seq DESC LIMIT 1";

/* Our partitions (by name) whose upper bound is at or before the cutoff. */
static const char EXPIRED_SQL[] =
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass('audit_logs_ts') "
    "AND c.relname ~ '^audit_logs_ts_p[0-9]{8}$' "
    "AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']*)''\\)')::timestamptz"
    " <= now() - $1::bigint * interval '1 millisecond' "
    "ORDER BY c.relname";

/* ---- state ------------------------------------------------------------------------ */

struct rt_etl {
    char *conninfo;
    rt_etl_mode_t mode;
    int64_t batch_size, interval_ms, poll_ms, retention_ms;
    int64_t reconnect_min_ms, reconnect_max_ms, leader_retry_ms;
    rt_bus_sub_t *sub;

    pthread_t thread;
    int started;
    int wakefd;
    atomic_int stopping;

    PGconn *conn;
    int leader;
    int partitioned;     /* audit_logs_ts is natively partitioned: make partitions */
    int hypertable;      /* timescaledb is installed and audit_logs_ts is not partitioned */
    int maintain_hourly; /* audit_logs_hourly is a table (not a continuous aggregate) */
    unsigned rng;

    char *buf; /* the COPY data of one batch */
    size_t len, cap;

    rt_etl_stats_t stats;
};

static int stopping(rt_etl_t *e)
{
    return atomic_load_explicit(&e->stopping, memory_order_acquire);
}

static void on_bus_wake(void *arg)
{
    rt_etl_t *e = arg;
    uint64_t one = 1;
    /* Non-blocking and coalescing: a full counter (never in practice) only
     * means a wake-up is already pending. */
    ssize_t w = write(e->wakefd, &one, sizeof one);
    (void)w;
}

static rt_etl_t *etl_alloc(const rt_etl_opts_t *opts)
{
    if (!opts->conninfo || !*opts->conninfo) {
        errno = EINVAL;
        return NULL;
    }
    rt_etl_t *e = calloc(1, sizeof *e);
    if (!e) abort();
    e->conninfo = strdup(opts->conninfo);
    if (!e->conninfo) abort();
    e->mode = opts->mode;
    e->batch_size = opts->batch_size > 0 ? opts->batch_size : 1000;
    e->interval_ms = opts->interval_ms >= 0 ? opts->interval_ms : 200;
    e->poll_ms = opts->poll_ms > 0 ? opts->poll_ms : 5000;
    e->retention_ms = opts->retention_ms > 0 ? opts->retention_ms : 0;
    e->reconnect_min_ms = opts->reconnect_min_ms > 0 ? opts->reconnect_min_ms : 100;
    e->reconnect_max_ms = opts->reconnect_max_ms > 0 ? opts->reconnect_max_ms : 30000;
    if (e->reconnect_max_ms < e->reconnect_min_ms) e->reconnect_max_ms = e->reconnect_min_ms;
    e->leader_retry_ms = opts->leader_retry_ms > 0 ? opts->leader_retry_ms : 1000;
    e->rng = (unsigned)getpid() ^ (unsigned)rt_mono_ns();
    atomic_init(&e->stopping, 0);
    e->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->wakefd < 0) {
        int err = errno;
        free(e->conninfo);
        free(e);
        errno = err;
        return NULL;
    }
    return e;
}

rt_etl_t *rt_etl_new(const rt_etl_opts_t *opts)
{
    rt_etl_t *e = etl_alloc(opts);
    if (!e) return NULL;
    if (opts->bus && opts->mode != RT_ETL_MODE_POLLING) {
        unsigned size = opts->ring_size ? opts->ring_size : 65536;
        e->sub = rt_bus_subscribe(opts->bus, "etl", size, 1u << RT_EV_AUDIT_LOG, on_bus_wake, e);
        if (!e->sub) {
            int err = errno;
            rt_etl_free(e);
            errno = err;
            return NULL;
        }
    }
    return e;
}

rt_etl_stats_t *rt_etl_stats(rt_etl_t *e)
{
    return &e->stats;
}

/* ---- connection and SQL helpers ---------------------------------------------------- */

/* The server's message (or libpq's) on one line, with the SQLSTATE. */
static const char *errmsg_of(rt_etl_t *e, const PGresult *r)
{
    static _Thread_local char buf[512];
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg || !*msg) msg = e->conn ? PQerrorMessage(e->conn) : NULL;
    if (!msg || !*msg) msg = "unknown error";
    if (state)
        snprintf(buf, sizeof buf, "%s (SQLSTATE %s)", msg, state);
    else
        snprintf(buf, sizeof buf, "%s", msg);
    return rt_pg_oneline(buf);
}

/* Runs sql (with n text parameters); returns the result if its status is
 * want, else logs "what: message" and returns NULL. */
static PGresult *run(rt_etl_t *e, const char *what, const char *sql, int n,
                     const char *const *params, ExecStatusType want)
{
    PGresult *r =
        n ? PQexecParams(e->conn, sql, n, NULL, params, NULL, NULL, 0) : PQexec(e->conn, sql);
    if (PQresultStatus(r) != want) {
        if (!stopping(e)) rt_warn(COMP, "%s: %s", what, errmsg_of(e, r));
        PQclear(r);
        return NULL;
    }
    return r;
}

static int run_cmd(rt_etl_t *e, const char *what, const char *sql)
{
    PGresult *r = run(e, what, sql, 0, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r ? 0 : -1;
}

static int conn_ok(rt_etl_t *e)
{
    return e->conn && PQstatus(e->conn) == CONNECTION_OK;
}

static void rollback(rt_etl_t *e)
{
    if (conn_ok(e) && PQtransactionStatus(e->conn) != PQTRANS_IDLE)
        PQclear(PQexec(e->conn, "ROLLBACK"));
}

static void disconnect(rt_etl_t *e, const char *why)
{
    if (!e->conn) return;
    if (why) rt_warn(COMP, "connection lost: %s", why);
    if (e->leader) rt_info(COMP, "no longer the ETL leader");
    PQfinish(e->conn);
    e->conn = NULL;
    e->leader = 0;
    atomic_store(&e->stats.leader, 0);
    atomic_store(&e->stats.connected, 0);
}

static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Connects without blocking a stop for longer than one poll, then prepares
 * the session: ISO dates (the text the extract returns goes back in through
 * COPY), the staging table, the cursor row, and what kind of target this is. */
static int connect_db(rt_etl_t *e)
{
    char err[256];
    PGconn *c = rt_pg_connect(e->conninfo, "rtbridge-etl", e->wakefd, &e->stopping,
                              CONNECT_TIMEOUT_MS, err, sizeof err);
    if (!c) {
        if (!stopping(e)) rt_warn(COMP, "connect failed: %s", err);
        return -1;
    }
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    e->conn = c;

    const char *src[1] = {SOURCE};
    PGresult *r = NULL;
    if (run_cmd(e, "setting datestyle", "SET datestyle = 'ISO, YMD'") < 0 ||
        run_cmd(e, "creating the staging table", STAGE_SQL) < 0)
        goto fail;
    r = run(e, "looking up audit_logs_ts",
            "SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_logs_ts'))::text,"
            " (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_logs_hourly'))::text,"
            " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),"
            " to_regclass('rt_etl_cursor') IS NOT NULL",
            0, NULL, PGRES_TUPLES_OK);
    if (!r) goto fail;
    if (PQgetisnull(r, 0, 0) || PQgetvalue(r, 0, 3)[0] != 't') {
        rt_error(COMP,
                 "audit_logs_ts or rt_etl_cursor does not exist (has `rtbridge migrate` run?)");
        PQclear(r);
        goto fail;
    }
    e->partitioned = strcmp(PQgetvalue(r, 0, 0), "p") == 0;
    e->hypertable = !e->partitioned && PQgetvalue(r, 0, 2)[0] == 't';
    e->maintain_hourly = !PQgetisnull(r, 0, 1) && strcmp(PQgetvalue(r, 0, 1), "r") == 0;
    PQclear(r);
    r = run(e, "creating the cursor row",
            "INSERT INTO rt_etl_cursor (source) VALUES ($1) ON CONFLICT (source) DO NOTHING", 1,
            src, PGRES_COMMAND_OK);
    if (!r) goto fail;
    PQclear(r);
    atomic_store(&e->stats.connected, 1);
    return 0;
fail:
    PQfinish(e->conn);
    e->conn = NULL;
    return -1;
}

/* Returns 1 if this session now holds the ETL lock, 0 if another does, -1 on
 * error. */
static int try_lead(rt_etl_t *e)
{
    PGresult *r = run(e, "taking the ETL lock", "SELECT pg_try_advisory_lock(" LOCK_KEY ")", 0,
                      NULL, PGRES_TUPLES_OK);
    if (!r) return -1;
    int got = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (got) {
        e->leader = 1;
        atomic_store(&e->stats.leader, 1);
    }
    return got;
}

static int64_t backoff_ms(rt_etl_t *e, unsigned attempt)
{
    int64_t d = e->reconnect_min_ms;
    for (unsigned i = 0; i < attempt && d < e->reconnect_max_ms; i++)
        d *= 2;
    if (d > e->reconnect_max_ms) d = e->reconnect_max_ms;
    /* Jitter over [d/2, d], so a fleet of instances does not retry in step. */
    int64_t half = d / 2;
    return half + (half > 0 ? (int64_t)(rand_r(&e->rng) % (unsigned)(half + 1)) : 0);
}

/* ---- one load ---------------------------------------------------------------------- */

static void buf_reserve(rt_etl_t *e, size_t more)
{
    if (e->len + more <= e->cap) return;
    size_t cap = e->cap ? e->cap : 65536;
    while (cap < e->len + more)
        cap *= 2;
    e->buf = realloc(e->buf, cap);
    if (!e->buf) abort();
    e->cap = cap;
}

/* Appends one field in COPY's text format: \N for NULL, and the four
 * characters that would end a field or a row escaped. */
static void copy_field(rt_etl_t *e, const char *v, size_t n, int isnull)
{
    if (isnull) {
        buf_reserve(e, 2);
        memcpy(e->buf + e->len, "\\N", 2);
        e->len += 2;
        return;
    }
    buf_reserve(e, 2 * n);
    char *o = e->buf + e->len;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        switch (c) {
        case '\\':
            *o++ = '\\', *o++ = '\\';
            break;
        case '\n':
            *o++ = '\\', *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\', *o++ = 'r';
            break;
        case '\t':
            *o++ = '\\', *o++ = 't';
            break;
        default:
            *o++ = c;
            break;
        }
    }
    e->len = (size_t)(o - e->buf);
}

static int copy_flush(rt_etl_t *e)
{
    if (e->len && PQputCopyData(e->conn, e->buf, (int)e->len) != 1) return -1;
    e->len = 0;
    return 0;
}

/* COPYs the transformed rows into the staging table. */
static int stage_rows(rt_etl_t *e, const PGresult *rows)
{
    PGresult *r = run(e, "starting COPY", "COPY rt_etl_stage FROM STDIN", 0, NULL, PGRES_COPY_IN);
    if (!r) return -1;
    PQclear(r);
    e->len = 0;
    int n = PQntuples(rows), failed = 0;
    for (int i = 0; i < n && !failed; i++) {
        for (int c = X_FIRST_STAGED; c < X_NCOLS; c++) {
            copy_field(e, PQgetvalue(rows, i, c), (size_t)PQgetlength(rows, i, c),
                       PQgetisnull(rows, i, c));
            buf_reserve(e, 1);
            e->buf[e->len++] = c + 1 < X_NCOLS ? '\t' : '\n';
        }
        if (e->len >= COPY_FLUSH && copy_flush(e) < 0) failed = 1;
    }
    if (!failed && copy_flush(e) < 0) failed = 1;
    if (PQputCopyEnd(e->conn, failed ? "rtbridge: sending COPY data failed" : NULL) != 1)
        failed = 1;
    int ok = 1;
    while ((r = PQgetResult(e->conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            rt_warn(COMP, "COPY into the staging table: %s", errmsg_of(e, r));
            ok = 0;
        }
        PQclear(r);
    }
    return ok && !failed ? 0 : -1;
}

/* One load transaction (see the top of the file). *more is set when the batch
 * was full, so more rows may be waiting. Returns 0 or -1 (rolled back). */
static int load_batch(rt_etl_t *e, int *more)
{
    uint64_t t0 = rt_mono_ns();
    PGresult *cur = NULL, *rows = NULL, *r = NULL;
    long long inserted = 0, bad = 0, skipped = 0, created = 0;
    double lag = 0;
    *more = 0;

    if (run_cmd(e, "starting a load", "BEGIN ISOLATION LEVEL REPEATABLE READ") < 0) return -1;
    const char *src[1] = {SOURCE};
    cur = run(e, "reading the cursor", CURSOR_SQL, 1, src, PGRES_TUPLES_OK);
    if (!cur) goto fail;
    if (PQntuples(cur) != 1) {
        rt_error(COMP, "the cursor row of '%s' is missing from rt_etl_cursor", SOURCE);
        goto fail;
    }
    const char *S = PQgetvalue(cur, 0, 0), *X = PQgetvalue(cur, 0, 1), *P = PQgetvalue(cur, 0, 2);
    const char *N = PQgetvalue(cur, 0, 3), *NX = PQgetvalue(cur, 0, 4);
    char batch[24];
    snprintf(batch, sizeof batch, "%" PRId64, e->batch_size);
    const char *xp[4] = {S, X, P, batch};
    rows = run(e, "extracting from rt_journal", EXTRACT_SQL, 4, xp, PGRES_TUPLES_OK);
    if (!rows) goto fail;
    int n = PQntuples(rows);
    int64_t last = n ? strtoll(PQgetvalue(rows, n - 1, X_SEQ), NULL, 10) : 0;

    if (n > 0) {
        if (stage_rows(e, rows) < 0) goto fail;
        if (e->partitioned) {
            /* A row of a day without a partition (late data, a clock
             * crossing midnight) gets one now, inside this transaction. */
            if (!(r = run(e, "creating partitions", ENSURE_STAGED_SQL, 0, NULL, PGRES_TUPLES_OK)))
                goto fail;
            created = atoll(PQgetvalue(r, 0, 0));
            PQclear(r);
        }
        if (!(r = run(e, "loading audit_logs_ts", INSERT_SQL, 0, NULL, PGRES_TUPLES_OK))) goto fail;
        inserted = atoll(PQgetvalue(r, 0, 0));
        bad = atoll(PQgetvalue(r, 0, 1));
        skipped = atoll(PQgetvalue(r, 0, 2));
        if (e->maintain_hourly && !PQgetisnull(r, 0, 3)) {
            const char *hp[1] = {PQgetvalue(r, 0, 3)};
            PGresult *h = run(e, "updating audit_logs_hourly", HOURLY_SQL, 1, hp, PGRES_COMMAND_OK);
            if (!h) goto fail;
            PQclear(h);
        }
        PQclear(r);
        r = NULL;
    }

    int cut = n >= e->batch_size;
    int64_t s0 = strtoll(S, NULL, 10);
    char news[24], loaded[24];
    snprintf(news, sizeof news, "%" PRId64, cut ? last : (last > s0 ? last : s0));
    snprintf(loaded, sizeof loaded, "%lld", inserted);
    if (cut) {
        /* Lag: how far the newest row loaded is behind the newest row there is. */
        if (!(r = run(e, "reading the newest journal row", NEWEST_SQL, 0, NULL, PGRES_TUPLES_OK)))
            goto fail;
        if (PQntuples(r) == 1)
            lag =
                strtod(PQgetvalue(r, 0, 0), NULL) - strtod(PQgetvalue(rows, n - 1, X_JTIME), NULL);
        PQclear(r);
        r = NULL;
    }
    const char *up[5] = {SOURCE, news, cut ? X : NX, N, loaded};
    if (!(r = run(e, "advancing the cursor", UPDATE_CURSOR_SQL, 5, up, PGRES_COMMAND_OK)))
        goto fail;
    PQclear(r);
    r = run(e, "committing a load", "COMMIT", 0, NULL, PGRES_COMMAND_OK);
    if (!r) goto fail;
    int committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    r = NULL;
    if (!committed) {
        rt_warn(COMP, "a load was rolled back by the server");
        goto fail;
    }

    rt_etl_stats_t *st = &e->stats;
    atomic_fetch_add_explicit(&st->rows_read, (uint_fast64_t)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->rows_loaded, (uint_fast64_t)inserted, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->bad_payloads, (uint_fast64_t)(bad + skipped),
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&st->skipped, (uint_fast64_t)skipped, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->partitions_created, (uint_fast64_t)created,
                              memory_order_relaxed);
    atomic_store_explicit(&st->cursor_seq, strtoll(news, NULL, 10), memory_order_relaxed);
    atomic_store_explicit(&st->lag_ms, lag > 0 ? (uint_fast64_t)(lag * 1000) : 0,
                          memory_order_relaxed);
    if (n > 0) {
        atomic_fetch_add_explicit(&st->batches, 1, memory_order_relaxed);
        atomic_store_explicit(&st->last_batch_us, (rt_mono_ns() - t0) / 1000, memory_order_relaxed);
        rt_debug(COMP, "loaded %lld of %d rows (%lld bad, %lld without log_id), cursor %s",
                 inserted, n, bad, skipped, news);
    }
    if (created) rt_info(COMP, "created %lld partition(s) of audit_logs_ts on demand", created);
    PQclear(rows);
    PQclear(cur);
    *more = cut;
    return 0;
fail:
    PQclear(r);
    PQclear(rows);
    PQclear(cur);
    rollback(e);
    return -1;
}

/* Loads until a batch comes back short (caught up with its snapshot), or a
 * stop is asked for between batches. */
static int run_pass(rt_etl_t *e)
{
    for (;;) {
        int more;
        if (load_batch(e, &more) < 0) {
            atomic_fetch_add_explicit(&e->stats.errors, 1, memory_order_relaxed);
            return -1;
        }
        if (!more) {
            atomic_fetch_add_explicit(&e->stats.passes, 1, memory_order_relaxed);
            return 0;
        }
        if (stopping(e)) return 0;
    }
}

/* ---- partitions ahead and retention -------------------------------------------------- */

static int drop_partition(rt_etl_t *e, const char *name)
{
    char *q = PQescapeIdentifier(e->conn, name, strlen(name));
    if (!q) return -1;
    char sql[256];
    int rc = -1;
    /* DETACH takes an exclusive lock on audit_logs_ts: give up after a few
     * seconds rather than queue every reader behind a long query. */
    if (run_cmd(e, "dropping a partition", "BEGIN") < 0) goto out;
    if (run_cmd(e, "dropping a partition", "SET LOCAL lock_timeout = '5s'") < 0) goto out_rollback;
    snprintf(sql, sizeof sql, "ALTER TABLE audit_logs_ts DETACH PARTITION %s", q);
    if (run_cmd(e, "detaching an expired partition", sql) < 0) goto out_rollback;
    snprintf(sql, sizeof sql, "DROP TABLE %s", q);
    if (run_cmd(e, "dropping an expired partition", sql) < 0) goto out_rollback;
    if (run_cmd(e, "dropping a partition", "COMMIT") < 0) goto out_rollback;
    rc = 0;
    goto out;
out_rollback:
    rollback(e);
out:
    PQfreemem(q);
    return rc;
}

/* Partitions for today and tomorrow (UTC), and, with retain set, retention:
 * whole daily partitions past the window are detached and dropped (native),
 * or chunks dropped (TimescaleDB). Failures are logged and left for the next
 * run. Returns -1 only if the connection failed. */
static int maintenance(rt_etl_t *e, int retain)
{
    PGresult *r;
    if (e->partitioned) {
        r = run(e, "creating partitions ahead", ENSURE_AHEAD_SQL, 0, NULL, PGRES_TUPLES_OK);
        if (r) {
            long long n = atoll(PQgetvalue(r, 0, 0));
            atomic_fetch_add(&e->stats.partitions_created, (uint_fast64_t)n);
            if (n) rt_info(COMP, "created %lld partition(s) of audit_logs_ts ahead", n);
            PQclear(r);
        }
    }
    if (!retain || e->retention_ms <= 0) return conn_ok(e) ? 0 : -1;

    char ms[24];
    snprintf(ms, sizeof ms, "%" PRId64, e->retention_ms);
    const char *p[1] = {ms};
    if (e->partitioned) {
        r = run(e, "listing expired partitions", EXPIRED_SQL, 1, p, PGRES_TUPLES_OK);
        if (r) {
            int dropped = 0;
            for (int i = 0; i < PQntuples(r) && !stopping(e); i++)
                if (drop_partition(e, PQgetvalue(r, i, 0)) == 0) dropped++;
            PQclear(r);
            atomic_fetch_add(&e->stats.partitions_dropped, (uint_fast64_t)dropped);
            if (dropped)
                rt_info(COMP, "retention: dropped %d partition(s) of audit_logs_ts", dropped);
        }
    } else if (e->hypertable) {
        r = run(e, "retention (drop_chunks)",
                "SELECT count(*) FROM drop_chunks('audit_logs_ts', "
                "older_than => now() - $1::bigint * interval '1 millisecond')",
                1, p, PGRES_TUPLES_OK);
        if (r) {
            long long n = atoll(PQgetvalue(r, 0, 0));
            atomic_fetch_add(&e->stats.partitions_dropped, (uint_fast64_t)n);
            PQclear(r);
        }
    }
    return conn_ok(e) ? 0 : -1;
}

/* ---- the thread ----------------------------------------------------------------------- */

/* Takes every queued event off the ring; they are wake-ups only. */
static size_t take_events(rt_etl_t *e)
{
    if (!e->sub) return 0;
    rt_event_t *evs[256];
    size_t n, total = 0;
    while ((n = rt_bus_drain(e->sub, evs, 256)) > 0) {
        for (size_t i = 0; i < n; i++)
            rt_event_unref(evs[i]);
        total += n;
    }
    if (total) atomic_fetch_add_explicit(&e->stats.events, total, memory_order_relaxed);
    return total;
}

/* Sleeps until `until` (monotonic ns; UINT64_MAX: no limit), a wake-up, or
 * news on the connection: a server that ends the session (shutdown,
 * pg_terminate_backend) makes the socket readable, and the lock is gone with
 * it, so the connection is dropped at once. */
static void wait_until(rt_etl_t *e, uint64_t until)
{
    uint64_t now = rt_mono_ns();
    int timeout = -1;
    if (until != UINT64_MAX) {
        if (until <= now) return;
        uint64_t ms = (until - now) / 1000000u + 1;
        timeout = ms > 60000 ? 60000 : (int)ms;
    }
    struct pollfd pfds[2] = {{.fd = e->wakefd, .events = POLLIN},
                             {.fd = e->conn ? PQsocket(e->conn) : -1, .events = POLLIN}};
    if (poll(pfds, 2, timeout) < 0) return;
    if (pfds[0].revents) {
        uint64_t v;
        ssize_t r = read(e->wakefd, &v, sizeof v);
        (void)r;
    }
    if (pfds[1].revents && e->conn) {
        if (!PQconsumeInput(e->conn) || PQstatus(e->conn) != CONNECTION_OK) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", PQerrorMessage(e->conn));
            disconnect(e, rt_pg_oneline(msg));
            return;
        }
        PGnotify *n;
        while ((n = PQnotifies(e->conn)) != NULL)
            PQfreemem(n);
    }
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static void *etl_main(void *arg)
{
    rt_etl_t *e = arg;
    rt_log_thread_name("etl");
    const uint64_t MS_NS = 1000000u;
    int polls = e->mode != RT_ETL_MODE_EVENT;
    int ever_connected = 0, need_pass = 0;
    unsigned attempt = 0, failures = 0;
    uint64_t pending = 0, pending_since = 0;
    uint64_t next_poll = 0, next_try = 0, next_maint = 0, retry_at = 0;

    while (!stopping(e)) {
        uint64_t now = rt_mono_ns();
        if (!e->conn) {
            if (connect_db(e) == 0) {
                if (ever_connected) atomic_fetch_add(&e->stats.reconnects, 1);
                rt_info(COMP, "%s", ever_connected ? "reconnected" : "connected");
                ever_connected = 1;
                attempt = 0;
                next_try = 0;
            } else if (!stopping(e)) {
                rt_sleep_or_stop(e->wakefd, &e->stopping, backoff_ms(e, attempt++));
            }
            continue;
        }

        if (!e->leader) {
            /* Not loading: events are of no use, but the ring must not fill. */
            take_events(e);
            if (e->sub) rt_bus_take_recovery(e->sub);
            pending = 0;
            if (now >= next_try) {
                next_try = now + (uint64_t)e->leader_retry_ms * MS_NS;
                int rc = try_lead(e);
                if (rc < 0) {
                    disconnect(e, errmsg_of(e, NULL));
                    continue;
                }
                if (rc == 1) {
                    rt_info(COMP, "leader: loading audit logs into audit_logs_ts (%s mode)",
                            e->mode == RT_ETL_MODE_EVENT     ? "event"
                            : e->mode == RT_ETL_MODE_POLLING ? "polling"
                                                             : "hybrid");
                    need_pass = 1;
                    failures = 0;
                    retry_at = 0;
                    next_maint = 0;
                    continue;
                }
            }
            wait_until(e, next_try);
            continue;
        }

        if (now >= next_maint) {
            next_maint = now + (uint64_t)MAINTENANCE_MS * MS_NS;
            if (maintenance(e, 1) < 0) {
                disconnect(e, errmsg_of(e, NULL));
                continue;
            }
        }
        size_t got = take_events(e);
        if (got) {
            if (!pending) pending_since = now;
            pending += got;
        }
        /* A full ring dropped events: the journal has them, catch up now. */
        if (e->sub && rt_bus_take_recovery(e->sub)) need_pass = 1;
        if (pending && (pending >= (uint64_t)e->batch_size ||
                        now - pending_since >= (uint64_t)e->interval_ms * MS_NS))
            need_pass = 1;
        if (polls && now >= next_poll) need_pass = 1;

        if (need_pass && now >= retry_at) {
            /* Rows of the events queued so far committed before this pass's
             * first snapshot, so the pass covers them. */
            take_events(e);
            pending = 0;
            if (run_pass(e) < 0) {
                if (!conn_ok(e)) {
                    disconnect(e, errmsg_of(e, NULL));
                    continue;
                }
                retry_at = rt_mono_ns() + (uint64_t)backoff_ms(e, failures++) * MS_NS;
                continue;
            }
            failures = 0;
            need_pass = 0;
            next_poll = rt_mono_ns() + (uint64_t)e->poll_ms * MS_NS;
            continue;
        }

        uint64_t until = next_maint;
        if (need_pass) until = min_u64(until, retry_at);
        if (pending) until = min_u64(until, pending_since + (uint64_t)e->interval_ms * MS_NS);
        if (polls) until = min_u64(until, next_poll);
        wait_until(e, until);
    }
    disconnect(e, NULL);
    return NULL;
}

int rt_etl_start(rt_etl_t *e)
{
    if (e->started) return -EALREADY;
    int rc = pthread_create(&e->thread, NULL, etl_main, e);
    if (rc) return -rc;
    e->started = 1;
    return 0;
}

void rt_etl_stop(rt_etl_t *e)
{
    if (!e || !e->started) return;
    atomic_store_explicit(&e->stopping, 1, memory_order_release);
    on_bus_wake(e);
    pthread_join(e->thread, NULL);
    e->started = 0;
}

void rt_etl_free(rt_etl_t *e)
{
    if (!e) return;
    rt_etl_stop(e);
    disconnect(e, NULL);
    if (e->wakefd >= 0) close(e->wakefd);
    free(e->buf);
    free(e->conninfo);
    free(e);
}

/* ---- once, options, the command ------------------------------------------------------- */

static void stats_copy(rt_etl_stats_t *to, rt_etl_stats_t *from)
{
#define COPY_FIELD(f) atomic_store(&to->f, atomic_load(&from->f))
    COPY_FIELD(connected);
    COPY_FIELD(leader);
    COPY_FIELD(rows_loaded);
    COPY_FIELD(rows_read);
    COPY_FIELD(bad_payloads);
    COPY_FIELD(skipped);
    COPY_FIELD(batches);
    COPY_FIELD(last_batch_us);
    COPY_FIELD(lag_ms);
    COPY_FIELD(cursor_seq);
    COPY_FIELD(passes);
    COPY_FIELD(events);
    COPY_FIELD(partitions_created);
    COPY_FIELD(partitions_dropped);
    COPY_FIELD(reconnects);
    COPY_FIELD(errors);
#undef COPY_FIELD
}

int rt_etl_run_once(const rt_etl_opts_t *opts, rt_etl_stats_t *stats)
{
    rt_etl_t *e = etl_alloc(opts);
    if (!e) return -errno;
    int rc = -EIO;
    if (connect_db(e) < 0) goto out;
    int lead = try_lead(e);
    if (lead < 0) goto out;
    if (lead == 0) {
        rc = -EBUSY;
        goto out;
    }
    if (maintenance(e, 0) < 0 || run_pass(e) < 0 || maintenance(e, 1) < 0) goto out;
    rc = 0;
out:
    if (stats) stats_copy(stats, &e->stats);
    rt_etl_free(e);
    return rc;
}

void rt_etl_opts_from_config(rt_etl_opts_t *o, const rt_config_t *cfg)
{
    memset(o, 0, sizeof *o);
    o->conninfo = cfg->database_url;
    o->mode = (rt_etl_mode_t)cfg->etl_mode;
    o->batch_size = cfg->etl_batch_size;
    o->interval_ms = cfg->etl_interval_ms;
    o->poll_ms = cfg->etl_poll_interval_ms;
    o->retention_ms = cfg->etl_retention_ms;
    o->reconnect_min_ms = cfg->reconnect_min_ms;
    o->reconnect_max_ms = cfg->reconnect_max_ms;
}

static void print_stats(FILE *out, rt_etl_stats_t *st)
{
    fprintf(out,
            "etl: %" PRIuFAST64 " rows loaded in %" PRIuFAST64 " batches (%" PRIuFAST64
            " read, %" PRIuFAST64 " bad payloads, %" PRIuFAST64 " without log_id), lag %.3f s, "
            "cursor seq %" PRIdFAST64 "\n",
            (uint_fast64_t)atomic_load(&st->rows_loaded), (uint_fast64_t)atomic_load(&st->batches),
            (uint_fast64_t)atomic_load(&st->rows_read),
            (uint_fast64_t)atomic_load(&st->bad_payloads), (uint_fast64_t)atomic_load(&st->skipped),
            (double)atomic_load(&st->lag_ms) / 1000.0, (int_fast64_t)atomic_load(&st->cursor_seq));
}

int rt_etl_cmd(const rt_config_t *cfg, FILE *out)
{
    rt_etl_opts_t o;
    rt_etl_opts_from_config(&o, cfg);
    if (cfg->etl_once) {
        rt_etl_stats_t st;
        memset(&st, 0, sizeof st);
        int rc = rt_etl_run_once(&o, &st);
        if (rc == -EBUSY) {
            rt_error(COMP, "another instance is the ETL leader (it holds the lock); nothing done");
            return 1;
        }
        print_stats(out, &st);
        fflush(out);
        return rc == 0 ? 0 : 1;
    }

    /* Threads started below inherit the mask, so the signals wait for us. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 0;
    rt_bus_t *bus = NULL;
    rt_listener_t *l = NULL;
    rt_etl_t *e = NULL;
    if (o.mode != RT_ETL_MODE_POLLING) {
        bus = rt_bus_new();
        o.bus = bus;
        o.ring_size = (unsigned)cfg->bus_ring_size;
    }
    e = rt_etl_new(&o);
    if (!e) {
        rt_error(COMP, "cannot create the ETL: %s", strerror(errno));
        status = 1;
        goto out;
    }
    if (bus) {
        rt_listener_opts_t lo = {
            .conninfo = cfg->database_url,
            .channels = "audit_log_created",
            .reconnect_min_ms = cfg->reconnect_min_ms,
            .reconnect_max_ms = cfg->reconnect_max_ms,
            .bus = bus,
        };
        l = rt_listener_new(&lo);
        if (!l) {
            rt_error(COMP, "cannot create the listener: %s", strerror(errno));
            status = 1;
            goto out;
        }
    }
    int rc = rt_etl_start(e);
    if (rc == 0 && l) rc = rt_listener_start(l);
    if (rc < 0) {
        rt_error(COMP, "cannot start: %s", strerror(-rc));
        status = 1;
        goto out;
    }
    int sig = 0;
    sigwait(&set, &sig);
    rt_info(COMP, "%s: stopping", strsignal(sig));
out:
    rt_listener_free(l);
    if (e) print_stats(out, rt_etl_stats(e));
    rt_etl_free(e);
    rt_bus_free(bus);
    return status;
}
