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
 * With a separate source the same argument holds with N the snapshot of the
 * source's extract transaction: the cursor describes the source's
 * transactions, and is only ever written in the target's load transaction.
 *
 * The leader lock is a session advisory lock on the same connection that
 * loads: a session that dies loses the lock and its open transaction at once,
 * so two loads never overlap. The cursor row is also read FOR UPDATE in
 * REPEATABLE READ, which would make an overlapping load fail with a
 * serialization error rather than commit on a stale cursor.
 */
#include "etl.h"

#include "auditrow.h"
#include "listener.h"
#include "log.h"
#include "pgconn.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
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

/* The fallback's staging table: audit_logs_ts's columns and the row's place
 * in the batch. */
static const char STAGE_SQL[] =
    "CREATE TEMP TABLE IF NOT EXISTS rt_etl_stage_rows ("
    " time timestamptz, log_id bigint, event_type text, intent_id uuid, actor text,"
    " bridge_type text, status_from text, status_to text, payload jsonb,"
    " duration_ms integer, success boolean, ord integer"
    ") ON COMMIT DELETE ROWS";

#define TS_COLUMNS                                                                                 \
    "time, log_id, event_type, intent_id, actor, bridge_type, status_from, status_to, payload, "   \
    "duration_ms, success"

/* The first statement of the transaction, so the snapshot it reports is the
 * transaction's. */
static const char CURSOR_SQL[] =
    "SELECT last_seq, last_xmin::text, snapshot, pg_current_snapshot()::text, "
    "pg_snapshot_xmin(pg_current_snapshot())::text "
    "FROM rt_etl_cursor WHERE source = $1 FOR UPDATE";
enum { C_SEQ = 0, C_XMIN, C_SNAP, C_NOW_SNAP, C_NOW_XMIN };

/* With a separate source: its snapshot, first in its own transaction. */
static const char SOURCE_SNAPSHOT_SQL[] =
    "SELECT pg_current_snapshot()::text, pg_snapshot_xmin(pg_current_snapshot())::text";

/* $1 S, $2 X, $3 P, $4 batch size: see the top of the file. The first half
 * leaves out "xid >= X": that only adds rows already loaded (harmless, and
 * rare: seq > S and xid < X happens only after S moved back), and keeps the
 * plan an ordered scan of the primary key that stops after $4 rows, whatever
 * the statistics say about xid. The second half must be found through the
 * xid index (few rows: transactions in flight at P); seq + 0 keeps the
 * planner from scanning the key range seq <= S instead. The transform is
 * done in C (auditrow.c): this returns the payload text as it is. */
static const char EXTRACT_SQL[] =
    "SELECT seq, date_part('epoch', created_at), payload,"
    " (SELECT date_part('epoch', created_at) FROM rt_journal"
    "  WHERE channel = 'audit_log_created' ORDER BY seq DESC LIMIT 1) "
    "FROM ("
    " (SELECT seq, created_at, payload FROM rt_journal"
    "  WHERE channel = 'audit_log_created' AND seq > $1::bigint"
    "  ORDER BY seq LIMIT $4::bigint)"
    " UNION ALL"
    " (SELECT seq, created_at, payload FROM rt_journal"
    "  WHERE channel = 'audit_log_created' AND seq + 0 <= $1::bigint"
    "  AND xid >= greatest($2::xid8, pg_snapshot_xmin($3::pg_snapshot))"
    "  AND NOT pg_visible_in_snapshot(xid, $3::pg_snapshot)"
    "  ORDER BY seq LIMIT $4::bigint)"
    " ORDER BY seq LIMIT $4::bigint) j "
    "ORDER BY seq";
/* Times as seconds in a double: exact to the microsecond until 2255. The
 * last column is the newest audit log's time (one look-up), for the lag. */
enum { X_SEQ = 0, X_JTIME, X_PAYLOAD, X_NEWEST };

static const char ENSURE_DAYS_SQL[] =
    "SELECT coalesce(sum(rt_etl_ensure_partition(d)::int), 0) FROM unnest($1::date[]) d";

static const char ENSURE_AHEAD_SQL[] = "SELECT coalesce(sum(rt_etl_ensure_partition(d)::int), 0) "
                                       "FROM (VALUES ((now() AT TIME ZONE 'UTC')::date), "
                                       "((now() AT TIME ZONE 'UTC')::date + 1)) v(d)";

/* Wall-clock minutes (counted from 1970-01-01 00:00) to the instants they
 * begin at in this session's time zone, as a cast of a time without an
 * offset reads them. */
static const char MINUTES_SQL[] =
    "SELECT k, extract(epoch FROM (timestamp '1970-01-01' + k * interval '1 minute')"
    "::timestamptz)::bigint FROM unnest($1::bigint[]) k";

/* The fallback load, when the COPY straight into audit_logs_ts failed (a row
 * there already, or no partition for it): skips the duplicates and returns
 * the place in the batch of each row inserted. */
static const char INSERT_SQL[] =
    "WITH ins AS ("
    " INSERT INTO audit_logs_ts (" TS_COLUMNS ")"
    " SELECT " TS_COLUMNS " FROM rt_etl_stage_rows"
    " ON CONFLICT (log_id, time) DO NOTHING"
    " RETURNING log_id, time) "
    "SELECT min(s.ord) FROM ins JOIN rt_etl_stage_rows s"
    " ON s.log_id = ins.log_id AND s.time = ins.time GROUP BY ins.log_id, ins.time";

/* Adds one batch's counts per (hour, event_type, actor) to rt_etl_hourly and
 * rewrites those rows of audit_logs_hourly from it: an average needs the
 * count and sum of the durations, which audit_logs_hourly (the continuous
 * aggregate's columns) does not keep. avg = sum / count in numeric is what
 * avg(integer) computes. One loader at a time (the cursor row is locked), so
 * the update-then-insert needs no unique key. */
static const char ROLLUP_SQL[] =
    "WITH g AS (SELECT to_timestamp(b) AS bucket, et, act, n, dn, ds, ok, ko"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],"
    " $6::bigint[], $7::bigint[], $8::bigint[]) AS u(b, et, act, n, dn, ds, ok, ko)),"
    " upd AS (UPDATE rt_etl_hourly h SET event_count = h.event_count + g.n,"
    "  duration_count = h.duration_count + g.dn, duration_sum = h.duration_sum + g.ds,"
    "  success_count = h.success_count + g.ok, failure_count = h.failure_count + g.ko"
    "  FROM g WHERE h.bucket = g.bucket AND h.event_type IS NOT DISTINCT FROM g.et"
    "  AND h.actor IS NOT DISTINCT FROM g.act RETURNING h.*),"
    " ins AS (INSERT INTO rt_etl_hourly (bucket, event_type, actor, event_count,"
    "  duration_count, duration_sum, success_count, failure_count)"
    "  SELECT bucket, et, act, n, dn, ds, ok, ko FROM g WHERE NOT EXISTS (SELECT 1 FROM upd"
    "  WHERE upd.bucket = g.bucket AND upd.event_type IS NOT DISTINCT FROM g.et"
    "  AND upd.actor IS NOT DISTINCT FROM g.act) RETURNING *),"
    " cur AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),"
    " del AS (DELETE FROM audit_logs_hourly a USING cur WHERE a.bucket = cur.bucket"
    "  AND a.event_type IS NOT DISTINCT FROM cur.event_type"
    "  AND a.actor IS NOT DISTINCT FROM cur.actor) "
    "INSERT INTO audit_logs_hourly (bucket, event_type, actor, event_count, avg_duration_ms,"
    " success_count, failure_count) "
    "SELECT bucket, event_type, actor, event_count,"
    " duration_sum::numeric / nullif(duration_count, 0)::numeric, success_count, failure_count "
    "FROM cur";

static const char UPDATE_CURSOR_SQL[] =
    "UPDATE rt_etl_cursor SET last_seq = $2::bigint, last_xmin = greatest(last_xmin, $3::xid8),"
    " snapshot = $4, rows_loaded = rows_loaded + $5::bigint, updated_at = now() "
    "WHERE source = $1 RETURNING last_seq, last_xmin::text, snapshot";

/* With a separate target, a copy of the cursor kept in the source under its
 * own key, so the journal's pruning there can tell what is loaded
 * (lib/journal.c). Written after the target commits: it may lag, never lead. */
static const char MIRROR_SQL[] =
    "INSERT INTO rt_etl_cursor (source, last_seq, last_xmin, snapshot) "
    "VALUES ($1, $2::bigint, $3::xid8, $4) ON CONFLICT (source) DO UPDATE SET "
    "last_seq = excluded.last_seq, last_xmin = excluded.last_xmin, "
    "snapshot = excluded.snapshot, updated_at = now()";

/* Our partitions (by name) whose upper bound is at or before the cutoff. */
static const char EXPIRED_SQL[] =
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass('audit_logs_ts') "
    "AND c.relname ~ '^audit_logs_ts_p[0-9]{8}$' "
    "AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']*)''\\)')::timestamptz"
    " <= now() - $1::bigint * interval '1 millisecond' "
    "ORDER BY c.relname";

/* ---- state ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

/* A wall-clock minute and the instant it begins at (MINUTES_SQL). */
typedef struct minute_ent {
    int64_t local, utc_s;
    int used;
} minute_ent_t;
#define MINUTE_CACHE 1024 /* a power of two; cleared when half full */

struct rt_etl {
    char *conninfo;     /* the target: audit_logs_ts, the cursor, the lock */
    char *src_conninfo; /* the source (rt_journal); NULL: the target */
    rt_etl_mode_t mode;
    int64_t batch_size, interval_ms, poll_ms, retention_ms;
    int64_t reconnect_min_ms, reconnect_max_ms, leader_retry_ms;
    rt_bus_sub_t *sub;

    pthread_t thread;
    int started;
    int wakefd;
    atomic_int stopping;

    PGconn *conn; /* target */
    PGconn *src;  /* source, NULL when it is the target */
    char mirror_key[256];
    int leader;
    int partitioned;     /* audit_logs_ts is natively partitioned: make partitions */
    int hypertable;      /* timescaledb is installed and audit_logs_ts is not partitioned */
    int maintain_hourly; /* audit_logs_hourly is a table (not a continuous aggregate) */
    unsigned rng;

    sbuf_t copy;         /* the COPY data of one batch, and other text built per batch */
    rt_auditrow_t *rows; /* the batch, transformed */
    unsigned char *inserted;
    int64_t *scratch, *scratch2; /* per-row numbers (minutes and instants, days) */
    size_t rows_cap;
    uint64_t last_mirror_ns;
    char *arena; /* decoded strings of the batch */
    size_t arena_cap;
    minute_ent_t minutes[MINUTE_CACHE];
    size_t nminutes;
    int64_t *days; /* UTC days whose partition is known to exist */
    size_t ndays, days_cap;

    rt_etl_stats_t stats;
};

static int stopping(rt_etl_t *e)
{
    return atomic_load_explicit(&e->stopping, memory_order_acquire);
}

static void on_bus_wake(void *arg)
{
    rt_etl_t *e = arg;
    rt_wake(e->wakefd);
}

static rt_etl_t *etl_alloc(const rt_etl_opts_t *opts)
{
    if (!opts->conninfo || !*opts->conninfo) {
        errno = EINVAL;
        return NULL;
    }
    rt_etl_t *e = calloc(1, sizeof *e);
    if (!e) abort();
    const char *tgt =
        opts->target_conninfo && *opts->target_conninfo ? opts->target_conninfo : opts->conninfo;
    e->conninfo = strdup(tgt);
    if (!e->conninfo) abort();
    if (opts->source_conninfo && *opts->source_conninfo &&
        strcmp(opts->source_conninfo, tgt) != 0) {
        e->src_conninfo = strdup(opts->source_conninfo);
        if (!e->src_conninfo) abort();
    } else if (tgt != opts->conninfo && strcmp(opts->conninfo, tgt) != 0) {
        e->src_conninfo = strdup(opts->conninfo);
        if (!e->src_conninfo) abort();
    }
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
        free(e->src_conninfo);
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
static const char *errmsg_conn(PGconn *c, const PGresult *r)
{
    static _Thread_local char buf[512];
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg || !*msg) msg = c ? PQerrorMessage(c) : NULL;
    if (!msg || !*msg) msg = "unknown error";
    if (state)
        snprintf(buf, sizeof buf, "%s (SQLSTATE %s)", msg, state);
    else
        snprintf(buf, sizeof buf, "%s", msg);
    return rt_pg_oneline(buf);
}

static const char *errmsg_of(rt_etl_t *e, const PGresult *r)
{
    return errmsg_conn(e->conn, r);
}

/* Runs sql on c (with n text parameters); returns the result if its status
 * is want, else logs "what: message" and returns NULL. */
static PGresult *run_on(rt_etl_t *e, PGconn *c, const char *what, const char *sql, int n,
                        const char *const *params, ExecStatusType want)
{
    PGresult *r = n ? PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    if (PQresultStatus(r) != want) {
        if (!stopping(e)) rt_warn(COMP, "%s: %s", what, errmsg_conn(c, r));
        PQclear(r);
        return NULL;
    }
    return r;
}

/* The statements run once per batch, prepared once per session on the
 * target: parsing and planning them was a tenth of a small batch. */
static const struct {
    const char *name, *sql;
    int nparams;
} PREPARED[] = {
    {"rt_etl_cursor", CURSOR_SQL, 1},
    {"rt_etl_rollup", ROLLUP_SQL, 8},
    {"rt_etl_advance", UPDATE_CURSOR_SQL, 5},
};

static PGresult *run(rt_etl_t *e, const char *what, const char *sql, int n,
                     const char *const *params, ExecStatusType want)
{
    return run_on(e, e->conn, what, sql, n, params, want);
}

static int run_cmd(rt_etl_t *e, const char *what, const char *sql)
{
    PGresult *r = run(e, what, sql, 0, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r ? 0 : -1;
}

static int conn_ok(rt_etl_t *e)
{
    return e->conn && PQstatus(e->conn) == CONNECTION_OK &&
           (!e->src || PQstatus(e->src) == CONNECTION_OK);
}

static void rollback(rt_etl_t *e)
{
    PGconn *cs[2] = {e->conn, e->src};
    for (int i = 0; i < 2; i++)
        if (cs[i] && PQstatus(cs[i]) == CONNECTION_OK && PQtransactionStatus(cs[i]) != PQTRANS_IDLE)
            PQclear(PQexec(cs[i], "ROLLBACK"));
}

static void disconnect(rt_etl_t *e, const char *why)
{
    if (!e->conn) return;
    if (why) rt_warn(COMP, "connection lost: %s", why);
    if (e->leader) rt_info(COMP, "no longer the ETL leader");
    PQfinish(e->conn);
    PQfinish(e->src);
    e->conn = NULL;
    e->src = NULL;
    e->leader = 0;
    atomic_store(&e->stats.leader, 0);
    atomic_store(&e->stats.connected, 0);
}

static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* The session settings both ends need: ISO dates (dates go out as text),
 * and UTF-8, the encoding the transform decodes JSON escapes into. */
static PGconn *open_conn(rt_etl_t *e, const char *conninfo, const char *what)
{
    char err[256];
    PGconn *c = rt_pg_connect(conninfo, "rtbridge-etl", e->wakefd, &e->stopping, CONNECT_TIMEOUT_MS,
                              err, sizeof err);
    if (!c) {
        if (!stopping(e)) rt_warn(COMP, "connect to the %s failed: %s", what, err);
        return NULL;
    }
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    PGresult *r = PQexec(c, "SET datestyle = 'ISO, YMD'; SET client_encoding = 'UTF8'");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        rt_warn(COMP, "setting up the %s session: %s", what, rt_pg_oneline(PQerrorMessage(c)));
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Connects without blocking a stop for longer than one poll, then prepares
 * the session: the staging table, the cursor row, and what kind of target
 * this is. With a separate source, connects to it too and checks it has a
 * journal. */
static int connect_db(rt_etl_t *e)
{
    if (!(e->conn = open_conn(e, e->conninfo, e->src_conninfo ? "target" : "database"))) return -1;
    e->nminutes = 0;
    memset(e->minutes, 0, sizeof e->minutes);
    e->ndays = 0;

    const char *src[1] = {SOURCE};
    PGresult *r = NULL;
    if (run_cmd(e, "creating the staging table", STAGE_SQL) < 0) goto fail;
    r = run(e, "looking up audit_logs_ts",
            "SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_logs_ts'))::text,"
            " (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_logs_hourly'))::text,"
            " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),"
            " to_regclass('rt_etl_cursor') IS NOT NULL, to_regclass('rt_etl_hourly') IS NOT NULL",
            0, NULL, PGRES_TUPLES_OK);
    if (!r) goto fail;
    if (PQgetisnull(r, 0, 0) || PQgetvalue(r, 0, 3)[0] != 't' || PQgetvalue(r, 0, 4)[0] != 't') {
        rt_error(COMP,
                 "audit_logs_ts, rt_etl_cursor or rt_etl_hourly does not exist in the %s "
                 "(has `rtbridge migrate` run there?)",
                 e->src_conninfo ? "target" : "database");
        PQclear(r);
        goto fail;
    }
    e->partitioned = strcmp(PQgetvalue(r, 0, 0), "p") == 0;
    e->hypertable = !e->partitioned && PQgetvalue(r, 0, 2)[0] == 't';
    e->maintain_hourly = !PQgetisnull(r, 0, 1) && strcmp(PQgetvalue(r, 0, 1), "r") == 0;
    PQclear(r);
    for (size_t i = 0; i < sizeof PREPARED / sizeof PREPARED[0]; i++) {
        if (PREPARED[i].sql == ROLLUP_SQL && !e->maintain_hourly) continue;
        r = PQprepare(e->conn, PREPARED[i].name, PREPARED[i].sql, PREPARED[i].nparams, NULL);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) rt_warn(COMP, "preparing %s: %s", PREPARED[i].name, errmsg_of(e, r));
        PQclear(r);
        r = NULL;
        if (!ok) goto fail;
    }
    r = run(e, "creating the cursor row",
            "INSERT INTO rt_etl_cursor (source) VALUES ($1) ON CONFLICT (source) DO NOTHING", 1,
            src, PGRES_COMMAND_OK);
    if (!r) goto fail;
    PQclear(r);

    if (e->src_conninfo) {
        if (!(e->src = open_conn(e, e->src_conninfo, "source"))) goto fail;
        r = run_on(e, e->src, "looking up rt_journal in the source",
                   "SELECT to_regclass('rt_journal') IS NOT NULL", 0, NULL, PGRES_TUPLES_OK);
        if (!r) goto fail;
        int ok = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!ok) {
            rt_error(COMP, "the source has no rt_journal (has `rtbridge migrate` run there?)");
            goto fail;
        }
        snprintf(e->mirror_key, sizeof e->mirror_key, "%s>%s@%s:%s", SOURCE, PQdb(e->conn),
                 PQhost(e->conn), PQport(e->conn));
    }
    atomic_store(&e->stats.connected, 1);
    return 0;
fail:
    PQfinish(e->conn);
    PQfinish(e->src);
    e->conn = NULL;
    e->src = NULL;
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

static void sb_reserve(sbuf_t *b, size_t more)
{
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + more)
        cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
}

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_putc(sbuf_t *b, char c)
{
    sb_reserve(b, 1);
    b->p[b->len++] = c;
}

static void sb_i64(sbuf_t *b, int64_t v)
{
    char tmp[24], *o = tmp + sizeof tmp;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--o = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--o = '-';
    sb_put(b, o, (size_t)(tmp + sizeof tmp - o));
}

/* Appends one field in COPY's text format: \N for NULL, and the four
 * characters that would end a field or a row escaped. */
static void copy_field(sbuf_t *b, const char *v, size_t n)
{
    if (!v) {
        sb_put(b, "\\N", 2);
        return;
    }
    sb_reserve(b, 2 * n);
    char *o = b->p + b->len;
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
    b->len = (size_t)(o - b->p);
}

/* One element of an array literal: NULL, or the text double-quoted. */
static void array_text(sbuf_t *b, const char *v, size_t n)
{
    if (!v) {
        sb_put(b, "NULL", 4);
        return;
    }
    sb_reserve(b, 2 * n + 2);
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '"' || v[i] == '\\') *o++ = '\\';
        *o++ = v[i];
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0..n) and drops repeats; returns the new count. */
static size_t sort_unique(int64_t *v, size_t n)
{
    if (n < 2) return n;
    qsort(v, n, sizeof *v, cmp_i64);
    size_t k = 1;
    for (size_t i = 1; i < n; i++)
        if (v[i] != v[k - 1]) v[k++] = v[i];
    return k;
}

/* A time column (seconds since the epoch, a double) in microseconds. */
static int64_t us_of(const PGresult *r, int row, int col)
{
    return llround(strtod(PQgetvalue(r, row, col), NULL) * 1e6);
}

/* Parses the batch's payloads into e->rows. Each row's strings point into
 * e->arena and into rows, which must outlive them. A row without a usable
 * created_at takes the journal's time. */
static void transform(rt_etl_t *e, const PGresult *rows, int n)
{
    if ((size_t)n > e->rows_cap) {
        e->rows_cap = (size_t)n;
        e->rows = realloc(e->rows, e->rows_cap * sizeof *e->rows);
        e->inserted = realloc(e->inserted, e->rows_cap);
        e->scratch = realloc(e->scratch, e->rows_cap * sizeof *e->scratch);
        e->scratch2 = realloc(e->scratch2, e->rows_cap * sizeof *e->scratch2);
        if (!e->rows || !e->inserted || !e->scratch || !e->scratch2) abort();
    }
    size_t need = 0;
    for (int i = 0; i < n; i++)
        need += (size_t)PQgetlength(rows, i, X_PAYLOAD);
    if (need > e->arena_cap) {
        e->arena_cap = need + 4096;
        free(e->arena);
        e->arena = malloc(e->arena_cap);
        if (!e->arena) abort();
    }
    char *a = e->arena;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)PQgetlength(rows, i, X_PAYLOAD);
        rt_auditrow_t *row = &e->rows[i];
        rt_auditrow_parse(PQgetvalue(rows, i, X_PAYLOAD), len, a, row);
        a += len;
        if (!row->has_time) {
            row->has_time = 1;
            row->time_local = 0;
            row->utc_us = us_of(rows, i, X_JTIME);
        }
    }
}

static size_t minute_slot(int64_t local)
{
    return (size_t)(((uint64_t)local * 0x9E3779B97F4A7C15u) >> 54) & (MINUTE_CACHE - 1);
}

static minute_ent_t *minute_find(rt_etl_t *e, int64_t local)
{
    for (size_t i = minute_slot(local);; i = (i + 1) & (MINUTE_CACHE - 1)) {
        if (!e->minutes[i].used) return NULL;
        if (e->minutes[i].local == local) return &e->minutes[i];
    }
}

static void minute_add(rt_etl_t *e, int64_t local, int64_t utc_s)
{
    if (e->nminutes >= MINUTE_CACHE / 2) {
        memset(e->minutes, 0, sizeof e->minutes);
        e->nminutes = 0;
    }
    size_t i = minute_slot(local);
    while (e->minutes[i].used)
        i = (i + 1) & (MINUTE_CACHE - 1);
    e->minutes[i] = (minute_ent_t){.local = local, .utc_s = utc_s, .used = 1};
    e->nminutes++;
}

/* Times without an offset are wall-clock times in the target session's zone
 * (the SQL transform read them so). The instant each wall-clock minute
 * begins at comes from the server, once per minute (cached), so a row's
 * instant is exact and matches what PostgreSQL would make of the text. */
static int resolve_minutes(rt_etl_t *e, int n)
{
    /* The batch's distinct minutes, sorted, and beside each its instant:
     * from the cache, or asked for in one query. */
    int64_t *min = e->scratch, *utc = e->scratch2;
    size_t k = 0, missing = 0;
    for (int i = 0; i < n; i++)
        if (e->rows[i].time_local) min[k++] = e->rows[i].local_minute;
    if (k == 0) return 0;
    k = sort_unique(min, k);
    e->copy.len = 0;
    sb_putc(&e->copy, '{');
    for (size_t i = 0; i < k; i++) {
        minute_ent_t *m = minute_find(e, min[i]);
        utc[i] = m ? m->utc_s : INT64_MIN;
        if (m) continue;
        if (missing++) sb_putc(&e->copy, ',');
        sb_i64(&e->copy, min[i]);
    }
    sb_put(&e->copy, "}", 2);
    if (missing) {
        const char *p[1] = {e->copy.p};
        PGresult *r = run(e, "reading wall-clock times", MINUTES_SQL, 1, p, PGRES_TUPLES_OK);
        if (!r) return -1;
        for (int j = 0; j < PQntuples(r); j++) {
            int64_t local = strtoll(PQgetvalue(r, j, 0), NULL, 10);
            int64_t *at = bsearch(&local, min, k, sizeof *min, cmp_i64);
            if (!at) continue;
            utc[at - min] = strtoll(PQgetvalue(r, j, 1), NULL, 10);
            minute_add(e, local, utc[at - min]);
        }
        PQclear(r);
    }
    for (int i = 0; i < n; i++) {
        rt_auditrow_t *row = &e->rows[i];
        if (!row->time_local) continue;
        int64_t *at = bsearch(&row->local_minute, min, k, sizeof *min, cmp_i64);
        if (!at || utc[at - min] == INT64_MIN) {
            rt_error(COMP, "no instant for wall-clock minute %lld", (long long)row->local_minute);
            return -1;
        }
        rt_auditrow_set_utc(row, utc[at - min]);
    }
    return 0;
}

/* Creates the partitions of the batch's UTC days that are not known to
 * exist (a row of a day without one: late data, a clock past midnight).
 * *created receives how many were made. */
static int ensure_days(rt_etl_t *e, int n, long long *created)
{
    *created = 0;
    if (!e->partitioned) return 0;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        if (!e->rows[i].has_log_id) continue;
        int64_t day = floor_div(e->rows[i].utc_us, 86400LL * 1000000);
        int known = 0;
        for (size_t j = 0; j < e->ndays && !known; j++)
            known = e->days[j] == day;
        if (!known) e->scratch[k++] = day;
    }
    if (k == 0) return 0;
    k = sort_unique(e->scratch, k);
    e->copy.len = 0;
    sb_putc(&e->copy, '{');
    for (size_t i = 0; i < k; i++) {
        /* A midnight as COPY gets it (years before 1 in BC), which date reads. */
        char tmp[40];
        size_t len = rt_format_utc(e->scratch[i] * 86400LL * 1000000, tmp);
        if (i) sb_putc(&e->copy, ',');
        array_text(&e->copy, tmp, len);
    }
    sb_put(&e->copy, "}", 2);
    const char *p[1] = {e->copy.p};
    PGresult *r = run(e, "creating partitions", ENSURE_DAYS_SQL, 1, p, PGRES_TUPLES_OK);
    if (!r) return -1;
    *created = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    /* Known from now on (only this session's retention drops partitions,
     * and it forgets them then). */
    if (e->ndays + k > e->days_cap) {
        e->days_cap = (e->ndays + k) * 2;
        e->days = realloc(e->days, e->days_cap * sizeof *e->days);
        if (!e->days) abort();
    }
    memcpy(e->days + e->ndays, e->scratch, k * sizeof *e->days);
    e->ndays += k;
    return 0;
}

static int copy_flush(rt_etl_t *e)
{
    if (e->copy.len && PQputCopyData(e->conn, e->copy.p, (int)e->copy.len) != 1) return -1;
    e->copy.len = 0;
    return 0;
}

/* COPYs the batch's loadable rows (those with a log_id) with sql; with_ord
 * adds each row's place in the batch as a last column. Returns 0, or -1 with
 * *server_error set if the server refused the data (the connection is fine,
 * the transaction aborted). */
static int copy_rows(rt_etl_t *e, const char *what, const char *sql, int with_ord, int n,
                     int *server_error)
{
    *server_error = 0;
    PGresult *r = run(e, what, sql, 0, NULL, PGRES_COPY_IN);
    if (!r) return -1;
    PQclear(r);
    sbuf_t *b = &e->copy;
    b->len = 0;
    int failed = 0;
    char ts[40];
    for (int i = 0; i < n && !failed; i++) {
        const rt_auditrow_t *row = &e->rows[i];
        if (!row->has_log_id) continue;
        sb_put(b, ts, rt_format_utc(row->utc_us, ts));
        sb_putc(b, '\t');
        sb_i64(b, row->log_id);
        sb_putc(b, '\t');
        copy_field(b, row->event_type.ptr, row->event_type.len);
        sb_putc(b, '\t');
        copy_field(b, row->intent_id[0] ? row->intent_id : NULL, 36);
        sb_putc(b, '\t');
        copy_field(b, row->actor.ptr, row->actor.len);
        sb_putc(b, '\t');
        copy_field(b, row->bridge_type.ptr, row->bridge_type.len);
        sb_putc(b, '\t');
        copy_field(b, row->status_from.ptr, row->status_from.len);
        sb_putc(b, '\t');
        copy_field(b, row->status_to.ptr, row->status_to.len);
        sb_putc(b, '\t');
        copy_field(b, row->payload.ptr, row->payload.len);
        sb_putc(b, '\t');
        if (row->has_duration)
            sb_i64(b, row->duration_ms);
        else
            sb_put(b, "\\N", 2);
        sb_putc(b, '\t');
        sb_put(b, row->success < 0 ? "\\N" : row->success ? "t" : "f", row->success < 0 ? 2 : 1);
        if (with_ord) {
            sb_putc(b, '\t');
            sb_i64(b, i);
        }
        sb_putc(b, '\n');
        if (b->len >= COPY_FLUSH && copy_flush(e) < 0) failed = 1;
    }
    if (!failed && copy_flush(e) < 0) failed = 1;
    if (PQputCopyEnd(e->conn, failed ? "rtbridge: sending COPY data failed" : NULL) != 1)
        failed = 1;
    int ok = 1;
    while ((r = PQgetResult(e->conn)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            if (!failed && PQstatus(e->conn) == CONNECTION_OK) *server_error = 1;
            if (with_ord || !*server_error)
                rt_warn(COMP, "%s: %s", what, errmsg_of(e, r));
            else
                rt_info(COMP, "%s: %s; loading the batch again through a staging table", what,
                        errmsg_of(e, r));
            ok = 0;
        }
        PQclear(r);
    }
    return ok && !failed ? 0 : -1;
}

/* The fallback: COPY into the staging table, then INSERT the rows not there
 * yet; marks e->inserted. */
static int load_staged(rt_etl_t *e, int n)
{
    int server_error;
    if (copy_rows(e, "copying into the staging table",
                  "COPY rt_etl_stage_rows (" TS_COLUMNS ", ord) FROM STDIN", 1, n,
                  &server_error) < 0)
        return -1;
    PGresult *r = run(e, "loading audit_logs_ts", INSERT_SQL, 0, NULL, PGRES_TUPLES_OK);
    if (!r) return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        long ord = atol(PQgetvalue(r, i, 0));
        if (ord >= 0 && ord < n) e->inserted[ord] = 1;
    }
    PQclear(r);
    return 0;
}

/* One group of the hourly rollup. */
typedef struct grp {
    const rt_auditrow_t *key; /* the first row of the group */
    int64_t bucket;           /* seconds since the epoch, a whole UTC hour */
    int64_t n, dn, ds, ok, ko;
} grp_t;

static int same_str(rt_str_t a, rt_str_t b)
{
    if (!a.ptr || !b.ptr) return !a.ptr && !b.ptr;
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

static uint64_t hash_str(uint64_t h, rt_str_t s)
{
    if (!s.ptr) return (h ^ 0xFF) * 0x100000001b3u;
    for (size_t i = 0; i < s.len; i++)
        h = (h ^ (unsigned char)s.ptr[i]) * 0x100000001b3u;
    return (h ^ 0xFE) * 0x100000001b3u;
}

/* Groups the rows inserted by this batch by (UTC hour, event_type, actor)
 * and renders the eight array parameters of the rollup statement into
 * e->copy (p points into it). Returns the number of groups (0: nothing to
 * add). */
static size_t rollup_params(rt_etl_t *e, int n, const char *p[8])
{
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap *= 2;
    grp_t *g = calloc(cap, sizeof *g);
    if (!g) abort();
    size_t ngroups = 0;
    for (int i = 0; i < n; i++) {
        if (!e->inserted[i]) continue;
        const rt_auditrow_t *row = &e->rows[i];
        int64_t bucket = floor_div(row->utc_us, 3600LL * 1000000) * 3600;
        uint64_t h = 0xcbf29ce484222325u ^ (uint64_t)bucket;
        h = hash_str(hash_str(h * 0x100000001b3u, row->event_type), row->actor);
        size_t s = (size_t)(h & (cap - 1));
        while (g[s].key &&
               !(g[s].bucket == bucket && same_str(g[s].key->event_type, row->event_type) &&
                 same_str(g[s].key->actor, row->actor)))
            s = (s + 1) & (cap - 1);
        if (!g[s].key) {
            g[s].key = row;
            g[s].bucket = bucket;
            ngroups++;
        }
        g[s].n++;
        if (row->has_duration) g[s].dn++, g[s].ds += row->duration_ms;
        if (row->success == 1) g[s].ok++;
        if (row->success == 0) g[s].ko++;
    }
    if (ngroups > 0) {
        /* Eight array literals, one after the other, NUL-separated. */
        sbuf_t *b = &e->copy;
        b->len = 0;
        size_t off[8];
        for (int col = 0; col < 8; col++) {
            off[col] = b->len;
            sb_putc(b, '{');
            int first = 1;
            for (size_t s = 0; s < cap; s++) {
                if (!g[s].key) continue;
                if (!first) sb_putc(b, ',');
                first = 0;
                switch (col) {
                case 0:
                    sb_i64(b, g[s].bucket);
                    break;
                case 1:
                    array_text(b, g[s].key->event_type.ptr, g[s].key->event_type.len);
                    break;
                case 2:
                    array_text(b, g[s].key->actor.ptr, g[s].key->actor.len);
                    break;
                case 3:
                    sb_i64(b, g[s].n);
                    break;
                case 4:
                    sb_i64(b, g[s].dn);
                    break;
                case 5:
                    sb_i64(b, g[s].ds);
                    break;
                case 6:
                    sb_i64(b, g[s].ok);
                    break;
                default:
                    sb_i64(b, g[s].ko);
                    break;
                }
            }
            sb_put(b, "}", 2);
        }
        for (int col = 0; col < 8; col++)
            p[col] = b->p + off[col];
    }
    free(g);
    return ngroups;
}

/* One statement of a pipeline: prepared (name) or not (sql). */
typedef struct pstmt {
    const char *name, *sql;
    int nparams;
    const char *const *params;
    ExecStatusType want;
    int keep;         /* hand the result back in result */
    PGresult *result; /* the caller clears it */
} pstmt_t;

/* Runs the statements on the target in one round trip (libpq's pipeline
 * mode). A load is several short statements, and on a busy machine each
 * round trip is a wait for two processes to be scheduled. Returns 0 if each
 * one had the status it wanted; after a failure the rest were skipped by
 * the server. */
static int run_pipeline(rt_etl_t *e, const char *what, pstmt_t *st, int n)
{
    PGconn *c = e->conn;
    int sent = PQenterPipelineMode(c);
    for (int i = 0; i < n && sent; i++)
        sent =
            st[i].name
                ? PQsendQueryPrepared(c, st[i].name, st[i].nparams, st[i].params, NULL, NULL, 0)
                : PQsendQueryParams(c, st[i].sql, st[i].nparams, NULL, st[i].params, NULL, NULL, 0);
    if (sent) sent = PQpipelineSync(c);
    if (!sent) {
        if (!stopping(e)) rt_warn(COMP, "%s: %s", what, errmsg_of(e, NULL));
        if (!PQexitPipelineMode(c) && PQpipelineStatus(c) != PQ_PIPELINE_OFF)
            disconnect(e, "a pipeline could not be ended");
        return -1;
    }
    int good = 1;
    for (int i = 0; i < n; i++) {
        PGresult *r = PQgetResult(c);
        if (!r) {
            good = 0;
            break;
        }
        if (PQresultStatus(r) != st[i].want) {
            if (good && !stopping(e)) rt_warn(COMP, "%s: %s", what, errmsg_of(e, r));
            good = 0;
            PQclear(r);
        } else if (st[i].keep) {
            st[i].result = r;
        } else {
            PQclear(r);
        }
        /* Each statement's results end with a NULL. */
        while ((r = PQgetResult(c)) != NULL)
            PQclear(r);
    }
    PGresult *sync = PQgetResult(c);
    if (PQresultStatus(sync) != PGRES_PIPELINE_SYNC) good = 0;
    PQclear(sync);
    /* Normally idle now; after a lost result, drain what is left. A session
     * that cannot leave pipeline mode is of no further use. */
    for (int k = 0; k < 4 * n + 4 && !PQexitPipelineMode(c); k++) {
        good = 0;
        PGresult *x = PQgetResult(c);
        if (x)
            PQclear(x);
        else if (PQstatus(c) != CONNECTION_OK)
            break;
    }
    if (PQpipelineStatus(c) != PQ_PIPELINE_OFF) {
        disconnect(e, "a pipeline could not be ended");
        return -1;
    }
    return good ? 0 : -1;
}

/* Writes the committed cursor into the source under the mirror key (see
 * MIRROR_SQL); at most once a second while a catch-up runs. */
static void mirror_cursor(rt_etl_t *e, const PGresult *cur, int cut)
{
    uint64_t now = rt_mono_ns();
    if (cut && now - e->last_mirror_ns < 1000000000u) return;
    const char *p[4] = {e->mirror_key, PQgetvalue(cur, 0, 0), PQgetvalue(cur, 0, 1),
                        PQgetvalue(cur, 0, 2)};
    PGresult *r =
        run_on(e, e->src, "copying the cursor into the source", MIRROR_SQL, 4, p, PGRES_COMMAND_OK);
    if (r) e->last_mirror_ns = now;
    PQclear(r);
}

/* One load transaction (see the top of the file). *more is set when the batch
 * was full, so more rows may be waiting. Returns 0, -1 (rolled back), or 1:
 * the COPY straight into audit_logs_ts was refused (a row already there, no
 * partition for a day), rolled back; load the batch again with safe set,
 * through the staging table. */
static int load_batch(rt_etl_t *e, int *more, int safe)
{
    uint64_t t0 = rt_mono_ns();
    PGresult *cur = NULL, *snap = NULL, *rows = NULL, *r = NULL, *upd = NULL;
    long long inserted = 0, bad = 0, skipped = 0, created = 0;
    int64_t lag_us = 0;
    int rc = -1;
    *more = 0;

    const char *src[1] = {SOURCE};
    pstmt_t begin[2] = {
        {.sql = "BEGIN ISOLATION LEVEL REPEATABLE READ", .want = PGRES_COMMAND_OK},
        {.name = "rt_etl_cursor", .nparams = 1, .params = src, .want = PGRES_TUPLES_OK, .keep = 1},
    };
    int began = run_pipeline(e, "starting a load", begin, 2);
    cur = begin[1].result;
    if (began < 0) goto fail;
    if (PQntuples(cur) != 1) {
        rt_error(COMP, "the cursor row of '%s' is missing from rt_etl_cursor", SOURCE);
        goto fail;
    }
    const char *S = PQgetvalue(cur, 0, C_SEQ), *X = PQgetvalue(cur, 0, C_XMIN);
    const char *P = PQgetvalue(cur, 0, C_SNAP);
    const char *N = PQgetvalue(cur, 0, C_NOW_SNAP), *NX = PQgetvalue(cur, 0, C_NOW_XMIN);
    PGconn *sc = e->conn;
    if (e->src) {
        /* The snapshot that counts is the source's: take it and extract in
         * one transaction there. */
        sc = e->src;
        r = run_on(e, sc, "starting an extract", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                   0, NULL, PGRES_COMMAND_OK);
        if (!r) goto fail;
        PQclear(r);
        r = NULL;
        snap = run_on(e, sc, "reading the source's snapshot", SOURCE_SNAPSHOT_SQL, 0, NULL,
                      PGRES_TUPLES_OK);
        if (!snap) goto fail;
        N = PQgetvalue(snap, 0, 0);
        NX = PQgetvalue(snap, 0, 1);
    }
    char batch[24];
    snprintf(batch, sizeof batch, "%" PRId64, e->batch_size);
    const char *xp[4] = {S, X, P, batch};
    rows = run_on(e, sc, "extracting from rt_journal", EXTRACT_SQL, 4, xp, PGRES_TUPLES_OK);
    if (!rows) goto fail;
    int n = PQntuples(rows);
    int64_t last = n ? strtoll(PQgetvalue(rows, n - 1, X_SEQ), NULL, 10) : 0;
    int cut = n >= e->batch_size;
    /* Lag: how far the newest row loaded is behind the newest row there is. */
    if (cut) lag_us = us_of(rows, 0, X_NEWEST) - us_of(rows, n - 1, X_JTIME);
    if (e->src) {
        r = run_on(e, sc, "ending an extract", "COMMIT", 0, NULL, PGRES_COMMAND_OK);
        if (!r) goto fail;
        PQclear(r);
        r = NULL;
    }

    if (n > 0) {
        transform(e, rows, n);
        if (resolve_minutes(e, n) < 0 || ensure_days(e, n, &created) < 0) goto fail;
        memset(e->inserted, 0, (size_t)n);
        if (!safe) {
            int server_error;
            if (copy_rows(e, "copying into audit_logs_ts",
                          "COPY audit_logs_ts (" TS_COLUMNS ") FROM STDIN", 0, n,
                          &server_error) < 0) {
                if (server_error && conn_ok(e)) rc = 1;
                goto fail;
            }
            for (int i = 0; i < n; i++)
                e->inserted[i] = (unsigned char)e->rows[i].has_log_id;
        } else {
            if (load_staged(e, n) < 0) goto fail;
            atomic_fetch_add_explicit(&e->stats.fallbacks, 1, memory_order_relaxed);
        }
        for (int i = 0; i < n; i++) {
            if (!e->rows[i].has_log_id) skipped++;
            if (e->inserted[i]) inserted++, bad += e->rows[i].bad;
        }
    }

    int64_t s0 = strtoll(S, NULL, 10);
    char news[24], loaded[24];
    snprintf(news, sizeof news, "%" PRId64, cut ? last : (last > s0 ? last : s0));
    snprintf(loaded, sizeof loaded, "%lld", inserted);
    const char *up[5] = {SOURCE, news, cut ? X : NX, N, loaded};
    /* The rollup, the cursor and the commit in one round trip. */
    const char *hp[8];
    pstmt_t end[3], *ep = end;
    if (e->maintain_hourly && inserted > 0 && rollup_params(e, n, hp) > 0)
        *ep++ = (pstmt_t){
            .name = "rt_etl_rollup", .nparams = 8, .params = hp, .want = PGRES_COMMAND_OK};
    pstmt_t *adv = ep;
    *ep++ = (pstmt_t){
        .name = "rt_etl_advance", .nparams = 5, .params = up, .want = PGRES_TUPLES_OK, .keep = 1};
    pstmt_t *com = ep;
    *ep++ = (pstmt_t){.sql = "COMMIT", .want = PGRES_COMMAND_OK, .keep = 1};
    int ended = run_pipeline(e, "committing a load", end, (int)(ep - end));
    upd = adv->result;
    r = com->result;
    if (ended < 0) goto fail;
    int committed = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    r = NULL;
    if (!committed) {
        rt_warn(COMP, "a load was rolled back by the server");
        goto fail;
    }
    if (e->src && PQntuples(upd) == 1) mirror_cursor(e, upd, cut);

    rt_etl_stats_t *st = &e->stats;
    atomic_fetch_add_explicit(&st->rows_read, (uint_fast64_t)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->rows_loaded, (uint_fast64_t)inserted, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->bad_payloads, (uint_fast64_t)(bad + skipped),
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&st->skipped, (uint_fast64_t)skipped, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->partitions_created, (uint_fast64_t)created,
                              memory_order_relaxed);
    atomic_store_explicit(&st->cursor_seq, strtoll(news, NULL, 10), memory_order_relaxed);
    atomic_store_explicit(&st->lag_ms, lag_us > 0 ? (uint_fast64_t)(lag_us / 1000) : 0,
                          memory_order_relaxed);
    if (n > 0) {
        atomic_fetch_add_explicit(&st->batches, 1, memory_order_relaxed);
        atomic_store_explicit(&st->last_batch_us, (rt_mono_ns() - t0) / 1000, memory_order_relaxed);
        rt_debug(COMP, "loaded %lld of %d rows (%lld bad, %lld without log_id), cursor %s",
                 inserted, n, bad, skipped, news);
    }
    if (created) rt_info(COMP, "created %lld partition(s) of audit_logs_ts on demand", created);
    *more = cut;
    rc = 0;
    goto out;
fail:
    rollback(e);
    /* What was made in the rolled-back transaction is gone again. */
    e->ndays = 0;
out:
    PQclear(upd);
    PQclear(r);
    PQclear(rows);
    PQclear(snap);
    PQclear(cur);
    return rc;
}

/* Loads until a batch comes back short (caught up with its snapshot), or a
 * stop is asked for between batches. */
static int run_pass(rt_etl_t *e)
{
    for (;;) {
        int more;
        int rc = load_batch(e, &more, 0);
        if (rc == 1) rc = load_batch(e, &more, 1);
        if (rc < 0) {
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
            e->ndays = 0; /* forget the partitions known to exist */
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
    free(e->copy.p);
    free(e->rows);
    free(e->inserted);
    free(e->scratch);
    free(e->scratch2);
    free(e->arena);
    free(e->days);
    free(e->src_conninfo);
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
    COPY_FIELD(fallbacks);
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
    o->source_conninfo = cfg->etl_source_url;
    o->target_conninfo = cfg->etl_target_url;
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
            .conninfo = cfg->etl_source_url && *cfg->etl_source_url ? cfg->etl_source_url
                                                                    : cfg->database_url,
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
