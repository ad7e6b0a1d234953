/*
 * The metrics worker's database side (see metrics.c): its connection, the
 * reconciliation, and the visibility check that keeps a reconciliation from
 * counting an event twice. Runs on the worker thread only.
 *
 * Reconciliation is exact, not "roughly right". It reads everything in one
 * REPEATABLE READ transaction and remembers that transaction's snapshot.
 * Events of transactions that committed before the snapshot may still be on
 * their way (in the listener, in the ring); applying them again would count
 * them twice. So until the first event that the snapshot does not see, the
 * worker asks the journal which of the intent_update events it drains were
 * visible to it (pg_visible_in_snapshot on the journal row's xid) and skips
 * those. Notifications arrive in commit order, so once one event is invisible
 * every later one is too and the checks stop.
 *
 * What is reconciled, and how often: every interval one scan of intents gives
 * the total, the status distribution, the per-minute creation buckets of the
 * last 8 days (GROUPING SETS: the same scan, so the buckets cost no second
 * pass; they also pick up rows written with a created_at the events cannot
 * know, and deletes, which send no event) and the correction figures when
 * intents has a correction_history column. Average processing time is the
 * spec's audit_logs query (last day, last 10 minutes) on the same schedule:
 * the events only give the live histogram. The spec runs these scans every
 * 30 s too; on a large table an index on intents (created_at) and
 * audit_logs (event_type, created_at) keeps them cheap.
 */
#include "metrics-internal.h"

#include "log.h"
#include "pgconn.h"

#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COMP "metrics"
#define CONNECT_TIMEOUT_MS 5000

void rt__metrics_disconnect(rt_metrics_t *m, const char *why)
{
    if (!m->conn) return;
    if (why) rt_warn(COMP, "database connection lost: %s", why);
    PQfinish(m->conn);
    m->conn = NULL;
    free(m->vis_snapshot);
    m->vis_snapshot = NULL;
}

static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *rt__metrics_connect(const char *conninfo, const char *appname, int wakefd,
                            const atomic_int *stop)
{
    char err[256];
    PGconn *c = rt_pg_connect(conninfo, appname, wakefd, stop, CONNECT_TIMEOUT_MS, err, sizeof err);
    if (!c) {
        if (!atomic_load(stop)) rt_warn(COMP, "%s: connect failed: %s", appname, err);
        return NULL;
    }
    PQsetNoticeProcessor(c, ignore_notice, NULL);
    PGresult *r = PQexec(c, "SET TimeZone = 'UTC'");
    PQclear(r);
    return c;
}

/* Runs sql; returns the result if its status is want, else NULL (logged). */
static PGresult *query(PGconn *c, const char *what, const char *sql, int n,
                       const char *const *params, ExecStatusType want)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (r && PQresultStatus(r) == want) return r;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
    rt_warn(COMP, "%s failed: %s", what, rt_pg_oneline(msg));
    PQclear(r);
    return NULL;
}

#define CORR_TYPE_SQL                                                                              \
    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "                                   \
    "WHERE attrelid = to_regclass('intents') AND attname = 'correction_history' "                  \
    "AND NOT attisdropped"

#define NC_EXPR                                                                                    \
    "CASE WHEN jsonb_typeof(correction_history::jsonb) = 'array' "                                 \
    "THEN jsonb_array_length(correction_history::jsonb) ELSE 0 END"

/* One scan: status rows (g = 1) and minute rows (g = 0). */
#define MAIN_SQL(nc)                                                                               \
    "SELECT GROUPING(m), status, m, count(*), count(*) FILTER (WHERE nc > 0), "                    \
    "coalesce(sum(nc), 0), count(*) FILTER (WHERE nc > 0 AND created_at >= $2) "                   \
    "FROM (SELECT status::text AS status, created_at, "                                            \
    "CASE WHEN created_at >= $1 THEN floor(extract(epoch FROM created_at) / 60)::bigint END "      \
    "AS m, " nc " AS nc FROM intents) t GROUP BY GROUPING SETS ((status), (m))"

#define CORR_ITEMS_SQL                                                                             \
    "SELECT id::text, jsonb_array_length(h), (h -> -1)::text FROM "                                \
    "(SELECT id, updated_at, correction_history::jsonb AS h FROM intents) a "                      \
    "WHERE jsonb_typeof(h) = 'array' AND jsonb_array_length(h) > 0 "                               \
    "ORDER BY updated_at DESC NULLS LAST, id LIMIT 100"

#define CORR_SOURCES_SQL                                                                           \
    "SELECT coalesce(e ->> 'source', 'unknown'), count(*) FROM "                                   \
    "(SELECT correction_history::jsonb AS h FROM intents) a, "                                     \
    "jsonb_array_elements(CASE WHEN jsonb_typeof(h) = 'array' THEN h ELSE '[]' END) e "            \
    "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 31"

/* The spec's average (the first BRIDGE_COMPLETED of the intent minus each
 * BRIDGE_STARTED, over the STARTED logs of the window), as a join instead of
 * a correlated subquery: the same rows, one pass over the completions. */
#define PROC_SQL                                                                                   \
    "WITH c AS (SELECT intent_id, min(created_at) AS done FROM audit_logs "                        \
    "WHERE event_type = 'BRIDGE_COMPLETED' GROUP BY intent_id) "                                   \
    "SELECT 1000 * avg(extract(epoch FROM c.done) - extract(epoch FROM s.created_at)), "           \
    "1000 * avg(extract(epoch FROM c.done) - extract(epoch FROM s.created_at)) "                   \
    "FILTER (WHERE s.created_at > $2) "                                                            \
    "FROM audit_logs s JOIN c ON c.intent_id = s.intent_id "                                       \
    "WHERE s.event_type = 'BRIDGE_STARTED' AND s.created_at > $1"

void rt__snap_clear_items(rt_m_snap_t *r)
{
    for (int i = 0; i < r->ncorr_items; i++)
        free(r->corr_items[i]);
    r->ncorr_items = 0;
}

static int reconcile_corrections(rt_metrics_t *m, rt_m_snap_t *r)
{
    PGresult *q = query(m->conn, "reading corrections", CORR_ITEMS_SQL, 0, NULL, PGRES_TUPLES_OK);
    if (!q) return -1;
    for (int i = 0; i < PQntuples(q) && i < RT_M_MAX_CORR_ITEMS; i++) {
        json_t *last = json_loads(PQgetvalue(q, i, 2), JSON_DECODE_ANY, NULL);
        json_t *o = json_pack("{s:s,s:I,s:o}", "intent_id", PQgetvalue(q, i, 0), "correction_count",
                              (json_int_t)strtoll(PQgetvalue(q, i, 1), NULL, 10), "last_correction",
                              last ? last : json_null());
        r->corr_items[r->ncorr_items++] = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
    }
    PQclear(q);
    q = query(m->conn, "reading correction sources", CORR_SOURCES_SQL, 0, NULL, PGRES_TUPLES_OK);
    if (!q) return -1;
    for (int i = 0; i < PQntuples(q) && r->nsources < RT_M_MAX_SOURCES; i++) {
        rt_m_count_t *c = &r->sources[r->nsources++];
        snprintf(c->name, sizeof c->name, "%s", PQgetvalue(q, i, 0));
        c->n = strtoll(PQgetvalue(q, i, 1), NULL, 10);
    }
    PQclear(q);
    return 0;
}

/* Replaces the worker's totals with the database's (see the top of the file).
 * Returns 0 or -1 (logged; the connection may be gone). */
int rt__metrics_reconcile(rt_metrics_t *m)
{
    uint64_t t0 = rt_mono_ns();
    uint64_t now_ns = rt_now_ns();
    int64_t now_s = (int64_t)(now_ns / 1000000000u), now_min = now_s / 60;
    char since[40], hour[40], day[40], tenmin[40];
    rt__sql_time(since, sizeof since, (now_min - (RT_M_MINUTES - 1)) * 60);
    rt__sql_time(hour, sizeof hour, now_s - 3600);
    rt__sql_time(day, sizeof day, now_s - 86400);
    rt__sql_time(tenmin, sizeof tenmin, now_s - 600);

    PGresult *q = NULL;
    rt_m_snap_t *r = calloc(1, sizeof *r);
    if (!r) abort();
    char *vis = NULL;
    if (!(q = query(m->conn, "begin", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL,
                    PGRES_COMMAND_OK)))
        goto fail;
    PQclear(q);
    if (!(q = query(m->conn, "reading the snapshot", "SELECT pg_current_snapshot()::text", 0, NULL,
                    PGRES_TUPLES_OK)))
        goto fail;
    vis = strdup(PQgetvalue(q, 0, 0));
    PQclear(q);
    if (!(q = query(m->conn, "looking up correction_history", CORR_TYPE_SQL, 0, NULL,
                    PGRES_TUPLES_OK)))
        goto fail;
    char type[64] = "";
    if (PQntuples(q) == 1) snprintf(type, sizeof type, "%s", PQgetvalue(q, 0, 0));
    PQclear(q);
    int corr = strcmp(type, "jsonb") == 0 || strcmp(type, "json") == 0;
    if (!type[0])
        r->corr_unavailable = "intents has no correction_history column (rtbridge never adds "
                              "columns to an existing table): correction figures are 0";
    else if (!corr) {
        snprintf(r->corr_reason, sizeof r->corr_reason,
                 "intents.correction_history is of type %s, not json or jsonb: correction "
                 "figures are 0",
                 type);
        r->corr_unavailable = r->corr_reason;
    }

    const char *p2[2] = {since, hour};
    if (!(q = query(m->conn, "counting intents", corr ? MAIN_SQL(NC_EXPR) : MAIN_SQL("0"), 2, p2,
                    PGRES_TUPLES_OK)))
        goto fail;
    /* Everything below replaces state: nothing can fail from here on but
     * the optional parts, which leave their figures at 0. */
    m->total = 0;
    for (int i = 0; i < m->nstatus; i++)
        m->status[i].active = 0;
    memset(m->minutes, 0, sizeof m->minutes);
    m->cur_min = now_min;
    for (int i = 0; i < PQntuples(q); i++) {
        long long n = strtoll(PQgetvalue(q, i, 3), NULL, 10);
        if (PQgetvalue(q, i, 0)[0] == '1') {
            rt__status_slot(m, PQgetisnull(q, i, 1) ? NULL : PQgetvalue(q, i, 1))->active += n;
            m->total += n;
            r->corr_intents += strtoll(PQgetvalue(q, i, 4), NULL, 10);
            r->corr_total += strtoll(PQgetvalue(q, i, 5), NULL, 10);
            r->corr_intents_1h += strtoll(PQgetvalue(q, i, 6), NULL, 10);
        } else if (!PQgetisnull(q, i, 2)) {
            rt__ring_add(m->minutes, RT_M_MINUTES, m->cur_min,
                         strtoll(PQgetvalue(q, i, 2), NULL, 10), (uint32_t)n);
        }
    }
    PQclear(q);
    r->created_1h_rec = (int64_t)rt__ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 60);
    free(m->vis_snapshot);
    m->vis_snapshot = vis;
    vis = NULL;

    if (corr && reconcile_corrections(m, r) < 0) r->corr_unavailable = "reading corrections failed";
    const char *pp[2] = {day, tenmin};
    if ((q = query(m->conn, "averaging processing time", PROC_SQL, 2, pp, PGRES_TUPLES_OK))) {
        r->avg_proc_ms_1d = PQgetisnull(q, 0, 0) ? 0 : strtod(PQgetvalue(q, 0, 0), NULL);
        r->avg_proc_ms_10m = PQgetisnull(q, 0, 1) ? 0 : strtod(PQgetvalue(q, 0, 1), NULL);
        PQclear(q);
    }
    q = PQexec(m->conn, "COMMIT");
    PQclear(q);
    rt__snap_clear_items(&m->rec);
    m->rec = *r;
    if (r->corr_unavailable == r->corr_reason) m->rec.corr_unavailable = m->rec.corr_reason;
    free(r);
    m->reconciles++;
    m->last_reconcile_ns = now_ns;
    m->last_reconcile_us = (rt_mono_ns() - t0) / 1000;
    m->dirty = 1;
    return 0;
fail:
    free(vis);
    rt__snap_clear_items(r);
    free(r);
    q = PQexec(m->conn, "ROLLBACK");
    PQclear(q);
    m->reconcile_failures++;
    return -1;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* While a reconciliation's snapshot is being checked: marks in skip[] the
 * intent_update events it already counted. */
void rt__metrics_check_visible(rt_metrics_t *m, rt_event_t **evs, size_t n, char *skip)
{
    int64_t *seqs = malloc(n * sizeof *seqs);
    if (!seqs) abort();
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (evs[i]->type == RT_EV_INTENT_UPDATE && evs[i]->seq > 0) seqs[k++] = evs[i]->seq;
    if (k == 0) {
        free(seqs);
        return;
    }
    /* {1,2,3} */
    size_t cap = k * 22 + 3, len = 0;
    char *arr = malloc(cap);
    if (!arr) abort();
    arr[len++] = '{';
    for (size_t i = 0; i < k; i++)
        len += (size_t)snprintf(arr + len, cap - len, "%s%" PRId64, i ? "," : "", seqs[i]);
    snprintf(arr + len, cap - len, "}");
    const char *params[2] = {arr, m->vis_snapshot};
    PGresult *q = query(m->conn, "checking visibility",
                        "SELECT seq FROM rt_journal WHERE seq = ANY($1::bigint[]) "
                        "AND pg_visible_in_snapshot(xid, $2::pg_snapshot)",
                        2, params, PGRES_TUPLES_OK);
    free(arr);
    size_t nvis = 0;
    if (q) {
        nvis = (size_t)PQntuples(q);
        for (size_t i = 0; i < nvis; i++)
            seqs[i] = strtoll(PQgetvalue(q, (int)i, 0), NULL, 10);
        qsort(seqs, nvis, sizeof *seqs, cmp_i64);
        PQclear(q);
    }
    int all_visible = q != NULL;
    for (size_t i = 0; i < n; i++) {
        if (evs[i]->type != RT_EV_INTENT_UPDATE || evs[i]->seq <= 0) continue;
        if (bsearch(&evs[i]->seq, seqs, nvis, sizeof *seqs, cmp_i64)) {
            skip[i] = 1;
            m->skipped_visible++;
        } else {
            all_visible = 0;
        }
    }
    free(seqs);
    /* An event the snapshot did not see: every later one committed later. */
    if (!all_visible) {
        free(m->vis_snapshot);
        m->vis_snapshot = NULL;
    }
}
