/*
 * The metrics worker (see metrics.h). One thread owns all mutable state:
 * it drains its bus ring, applies each event to its counters, reconciles with
 * the database on its own connection, and publishes immutable snapshots.
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
 *
 * A full ring (events lost) and an UPDATE without "old_status" (a database
 * whose trigger predates migration 005) bring the next reconciliation
 * forward, at most one every MIN_RECONCILE_GAP_MS.
 */
#include "metrics-internal.h"

#include "etl.h"
#include "fanout.h"
#include "listener.h"
#include "log.h"
#include "pgconn.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define COMP "metrics"
#define MS_NS UINT64_C(1000000)
#define CONNECT_TIMEOUT_MS 5000
#define PUBLISH_MIN_MS 50         /* snapshots at most this often while events flow */
#define PUBLISH_MAX_MS 1000       /* and at least this often (windows move on) */
#define MIN_RECONCILE_GAP_MS 5000 /* reconciliations brought forward, at most this often */
#define FAILED_MINUTES 60
#define EPS_SECONDS 300
#define PEND_SLOTS 16384 /* BRIDGE_STARTED awaiting their BRIDGE_COMPLETED */
#define MAX_QUERY_QUEUE 64

const double rt__proc_bounds_s[RT_M_PROC_NB] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                2.5,  5,    10,  30,   60,  300};

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
    PGconn *conn;
    char corr_type[64]; /* "" when intents has no correction_history */
    int64_t total;
    int nstatus;
    rt_m_status_t status[RT_M_MAX_STATUS];
    uint32_t minutes[RT_M_MINUTES];
    int64_t cur_min;
    uint32_t failed[FAILED_MINUTES];
    int64_t failed_min;
    uint32_t eps[EPS_SECONDS];
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
    PGcancel *qcancel; /* under qmu */
};

static int stopping(rt_metrics_t *m)
{
    return atomic_load_explicit(&m->stopping, memory_order_acquire);
}

static void on_bus_wake(void *arg)
{
    rt_metrics_t *m = arg;
    uint64_t one = 1;
    ssize_t w = write(m->wakefd, &one, sizeof one);
    (void)w;
}

struct rt_metrics_pub *rt__metrics_pub(rt_metrics_t *m)
{
    return &m->pub;
}

/* ---- rings of counts -------------------------------------------------------------- */

static size_t slot(int64_t i, size_t n)
{
    int64_t r = i % (int64_t)n;
    return (size_t)(r < 0 ? r + (int64_t)n : r);
}

/* ring[slot(i)] holds index i for i in (*cur - n, *cur]. */
static void ring_advance(uint32_t *ring, size_t n, int64_t *cur, int64_t to)
{
    if (to <= *cur) return;
    if (to - *cur >= (int64_t)n) {
        memset(ring, 0, n * sizeof *ring);
    } else {
        for (int64_t i = *cur + 1; i <= to; i++)
            ring[slot(i, n)] = 0;
    }
    *cur = to;
}

static void ring_add(uint32_t *ring, size_t n, int64_t cur, int64_t i, uint32_t v)
{
    if (i > cur || i <= cur - (int64_t)n) return;
    ring[slot(i, n)] += v;
}

static uint64_t ring_sum(const uint32_t *ring, size_t n, int64_t cur, int64_t k)
{
    uint64_t s = 0;
    if (k > (int64_t)n) k = (int64_t)n;
    for (int64_t i = cur - k + 1; i <= cur; i++)
        s += ring[slot(i, n)];
    return s;
}

static void advance_clocks(rt_metrics_t *m, uint64_t now_ns)
{
    int64_t sec = (int64_t)(now_ns / 1000000000u);
    ring_advance(m->minutes, RT_M_MINUTES, &m->cur_min, sec / 60);
    ring_advance(m->failed, FAILED_MINUTES, &m->failed_min, sec / 60);
    ring_advance(m->eps, EPS_SECONDS, &m->eps_sec, sec);
}

/* ---- statuses ---------------------------------------------------------------------- */

static rt_m_status_t *status_slot(rt_metrics_t *m, const char *name)
{
    if (!name) name = "null";
    for (int i = 0; i < m->nstatus; i++)
        if (strcmp(m->status[i].name, name) == 0) return &m->status[i];
    if (m->nstatus >= RT_M_MAX_STATUS - 1 && strcmp(name, "other") != 0)
        return status_slot(m, "other");
    rt_m_status_t *s = &m->status[m->nstatus++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

/* ---- events ------------------------------------------------------------------------ */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* A payload time in milliseconds, or fallback. */
static int64_t jtime_ms(json_t *o, const char *key, int64_t fallback)
{
    const char *s = jstr(o, key);
    int64_t sec;
    if (!s || rt__iso_parse(s, &sec) < 0) return fallback;
    const char *dot = strchr(s, '.');
    int64_t ms = 0;
    if (dot) {
        int digits = 0;
        for (const char *p = dot + 1; *p >= '0' && *p <= '9' && digits < 3; p++, digits++)
            ms = ms * 10 + (*p - '0');
        for (; digits < 3; digits++)
            ms *= 10;
    }
    return sec * 1000 + ms;
}

static void on_intent(rt_metrics_t *m, const rt_event_t *ev)
{
    json_t *j = json_loadb(ev->body, ev->body_len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    const char *op = jstr(j, "event_type");
    json_t *st = json_object_get(j, "status");
    const char *status = json_is_string(st) ? json_string_value(st) : NULL;
    int64_t recv_ms = (int64_t)(ev->recv_ns / MS_NS);
    if (op && strcmp(op, "INSERT") == 0) {
        m->total++;
        rt_m_status_t *s = status_slot(m, status);
        s->active++;
        s->entered++;
        int64_t t = jtime_ms(j, "created_at", jtime_ms(j, "updated_at", recv_ms));
        ring_add(m->minutes, RT_M_MINUTES, m->cur_min, rt__floor_to(t, 60000) / 60000, 1);
        if (status && strcmp(status, "failed") == 0)
            ring_add(m->failed, FAILED_MINUTES, m->failed_min, recv_ms / 60000, 1);
    } else if (op && strcmp(op, "UPDATE") == 0) {
        json_t *old = json_object_get(j, "old_status");
        if (!old) {
            /* A trigger from before migration 005: the change is unknown
             * until the next reconciliation, which comes sooner. */
            m->unknown_transitions++;
        } else {
            const char *o = json_is_string(old) ? json_string_value(old) : NULL;
            int same = (o == NULL && status == NULL) || (o && status && strcmp(o, status) == 0);
            if (!same) {
                status_slot(m, o)->active--;
                rt_m_status_t *s = status_slot(m, status);
                s->active++;
                s->entered++;
                if (status && strcmp(status, "failed") == 0)
                    ring_add(m->failed, FAILED_MINUTES, m->failed_min, recv_ms / 60000, 1);
            }
        }
    }
    json_decref(j);
}

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static rt_m_proc_t *proc_slot(rt_metrics_t *m, const char *name)
{
    for (int i = 0; i < m->nproc; i++)
        if (strcmp(m->proc[i].name, name) == 0) return &m->proc[i];
    if (m->nproc >= RT_M_MAX_BTYPES - 1 && strcmp(name, "other") != 0) return proc_slot(m, "other");
    rt_m_proc_t *p = &m->proc[m->nproc++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    return p;
}

/* BRIDGE_STARTED -> BRIDGE_COMPLETED of one intent: one observation of the
 * processing-time histogram, labelled with the payload's bridge_type. */
static void on_audit(rt_metrics_t *m, const rt_event_t *ev)
{
    json_t *j = json_loadb(ev->body, ev->body_len, 0, NULL);
    const char *type = json_is_object(j) ? jstr(j, "event_type") : NULL;
    const char *id = type ? jstr(j, "intent_id") : NULL;
    if (!id || strlen(id) >= sizeof m->pend[0].id) goto out;
    int started = strcmp(type, "BRIDGE_STARTED") == 0;
    if (!started && strcmp(type, "BRIDGE_COMPLETED") != 0) goto out;
    int64_t t = jtime_ms(j, "created_at", (int64_t)(ev->recv_ns / MS_NS));
    const char *bt = jstr(json_object_get(j, "payload"), "bridge_type");
    pend_t *p = &m->pend[fnv1a(id) % PEND_SLOTS];
    if (started) {
        snprintf(p->id, sizeof p->id, "%s", id);
        p->started_ms = t;
        snprintf(p->btype, sizeof p->btype, "%s", bt ? bt : "");
    } else if (p->started_ms && strcmp(p->id, id) == 0) {
        double d = (double)(t - p->started_ms) / 1000.0;
        if (d >= 0) {
            rt_m_proc_t *h = proc_slot(m, p->btype[0] ? p->btype : bt ? bt : "unknown");
            int i = 0;
            while (i < RT_M_PROC_NB && d > rt__proc_bounds_s[i])
                i++;
            h->b[i]++;
            h->sum_s += d;
            h->count++;
        }
        p->started_ms = 0;
    }
out:
    json_decref(j);
}

/* ---- the database --------------------------------------------------------------------- */

static void disconnect(rt_metrics_t *m, const char *why)
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

static PGconn *connect_db(const char *conninfo, const char *appname, int wakefd,
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

static void rec_clear_items(rt_m_snap_t *r)
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
static int reconcile(rt_metrics_t *m)
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
            status_slot(m, PQgetisnull(q, i, 1) ? NULL : PQgetvalue(q, i, 1))->active += n;
            m->total += n;
            r->corr_intents += strtoll(PQgetvalue(q, i, 4), NULL, 10);
            r->corr_total += strtoll(PQgetvalue(q, i, 5), NULL, 10);
            r->corr_intents_1h += strtoll(PQgetvalue(q, i, 6), NULL, 10);
        } else if (!PQgetisnull(q, i, 2)) {
            ring_add(m->minutes, RT_M_MINUTES, m->cur_min, strtoll(PQgetvalue(q, i, 2), NULL, 10),
                     (uint32_t)n);
        }
    }
    PQclear(q);
    r->created_1h_rec = (int64_t)ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 60);
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
    rec_clear_items(&m->rec);
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
    rec_clear_items(r);
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
static void check_visible(rt_metrics_t *m, rt_event_t **evs, size_t n, char *skip)
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

static size_t drain(rt_metrics_t *m)
{
    rt_event_t *evs[256];
    char skip[256];
    size_t n, total = 0;
    while ((n = rt_bus_drain(m->sub, evs, 256)) > 0) {
        uint64_t now = rt_now_ns();
        advance_clocks(m, now);
        memset(skip, 0, n);
        if (m->vis_snapshot && m->conn) check_visible(m, evs, n, skip);
        for (size_t i = 0; i < n; i++) {
            rt_event_t *ev = evs[i];
            if (ev->type < RT_EV__COUNT) m->events[ev->type]++;
            if (!skip[i] && ev->type == RT_EV_INTENT_UPDATE) on_intent(m, ev);
            if (ev->type == RT_EV_AUDIT_LOG) on_audit(m, ev);
            rt_event_unref(ev);
        }
        m->eps[slot(m->eps_sec, EPS_SECONDS)] += (uint32_t)n;
        total += n;
        m->dirty = 1;
        if (total >= 65536) break; /* let the rest of the loop run too */
    }
    return total;
}

/* ---- snapshots -------------------------------------------------------------------------- */

static void snap_free(rt_m_snap_t *s)
{
    rec_clear_items(s);
    free(s);
}

void rt__snap_release(rt_m_snap_t *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) snap_free(s);
}

rt_m_snap_t *rt__snap_acquire(rt_metrics_t *m)
{
    pthread_mutex_lock(&m->pub.snap_mu);
    rt_m_snap_t *s = m->pub.snap;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&m->pub.snap_mu);
    return s;
}

static rt_m_snap_t *build_snapshot(rt_metrics_t *m)
{
    uint64_t now = rt_now_ns();
    advance_clocks(m, now);
    rt_m_snap_t *s = malloc(sizeof *s);
    if (!s) abort();
    *s = m->rec; /* correction and processing figures, then the rest */
    for (int i = 0; i < s->ncorr_items; i++) {
        s->corr_items[i] = strdup(m->rec.corr_items[i]);
        if (!s->corr_items[i]) abort();
    }
    if (m->rec.corr_unavailable == m->rec.corr_reason) s->corr_unavailable = s->corr_reason;
    atomic_init(&s->refs, 1);
    s->now_ns = now;
    s->now_min = m->cur_min;
    s->total_intents = m->total;
    s->nstatus = m->nstatus;
    memcpy(s->status, m->status, sizeof s->status);
    for (size_t i = 0; i < RT_M_MINUTES; i++)
        s->minutes[i] =
            m->minutes[slot(m->cur_min - (RT_M_MINUTES - 1) + (int64_t)i, RT_M_MINUTES)];
    s->created_10m = (int64_t)ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 10);
    s->created_30m = (int64_t)ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 30);
    s->last_hour = (int64_t)ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 60);
    s->last_24h = (int64_t)ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 24 * 60);
    s->last_7d = (int64_t)ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 7 * 24 * 60);
    s->failed_10m = (int64_t)ring_sum(m->failed, FAILED_MINUTES, m->failed_min, 10);
    memcpy(s->events, m->events, sizeof s->events);
    /* Whole seconds only: the current one is still filling. */
    s->events_last_60s = ring_sum(m->eps, EPS_SECONDS, m->eps_sec - 1, 60);
    s->events_last_5m = ring_sum(m->eps, EPS_SECONDS, m->eps_sec, EPS_SECONDS);
    s->nproc = m->nproc;
    memcpy(s->proc, m->proc, sizeof s->proc);
    s->reconciles = m->reconciles;
    s->reconcile_failures = m->reconcile_failures;
    s->skipped_visible = m->skipped_visible;
    s->unknown_transitions = m->unknown_transitions;
    s->last_reconcile_ns = m->last_reconcile_ns;
    s->last_reconcile_us = m->last_reconcile_us;
    s->db_connected = m->conn != NULL;
    if (rt_mono_ns() >= m->procinfo_at + PUBLISH_MAX_MS * MS_NS) {
        rt__procinfo_read(&m->procinfo);
        m->procinfo_at = rt_mono_ns();
    }
    s->procinfo = m->procinfo;
    return s;
}

static void publish_snapshot(rt_metrics_t *m)
{
    rt_m_snap_t *s = build_snapshot(m), *old;
    pthread_mutex_lock(&m->pub.snap_mu);
    old = m->pub.snap;
    m->pub.snap = s;
    pthread_mutex_unlock(&m->pub.snap_mu);
    rt__snap_release(old);
    m->dirty = 0;
    if (m->snap_cb) m->snap_cb(m->snap_cb_arg);
}

static void publish_stats(rt_metrics_t *m)
{
    rt_m_snap_t *s = rt__snap_acquire(m);
    char *body = rt__overview_json(m, s);
    rt__snap_release(s);
    rt_event_t *ev = rt_event_new(RT_EV_STATS_UPDATED, 0, "", "", body, strlen(body), rt_now_ns());
    free(body);
    rt_bus_publish(m->pub.opts.bus, ev);
    rt_event_unref(ev);
}

/* ---- the worker thread ------------------------------------------------------------------- */

static void wait_until(rt_metrics_t *m, uint64_t until)
{
    uint64_t now = rt_mono_ns();
    if (until <= now) return;
    struct pollfd pfd = {.fd = m->wakefd, .events = POLLIN};
    if (poll(&pfd, 1, (int)((until - now) / MS_NS) + 1) > 0 && pfd.revents) {
        uint64_t v;
        ssize_t r = read(m->wakefd, &v, sizeof v);
        (void)r;
    }
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static void *worker_main(void *arg)
{
    rt_metrics_t *m = arg;
    rt_log_thread_name("metrics");
    const rt_metrics_opts_t *o = &m->pub.opts;
    uint64_t now = rt_mono_ns();
    uint64_t next_connect = now, next_reconcile = now, last_reconcile = 0;
    uint64_t next_stats = now + (uint64_t)o->stats_interval_ms * MS_NS;
    uint64_t last_publish = 0;
    uint64_t backoff_ms = 500;
    uint64_t unknown_seen = 0;

    while (!stopping(m)) {
        now = rt_mono_ns();
        if (!m->conn && now >= next_connect && o->conninfo) {
            m->conn = connect_db(o->conninfo, "rtbridge-metrics", m->wakefd, &m->stopping);
            now = rt_mono_ns();
            if (!m->conn) {
                next_connect = now + backoff_ms * MS_NS;
                backoff_ms = backoff_ms * 2 > 30000 ? 30000 : backoff_ms * 2;
            } else {
                backoff_ms = 500;
                next_reconcile = now;
            }
            m->dirty = 1;
        }
        drain(m);
        /* Lost events or unknown transitions: reconcile soon. */
        int behind = rt_bus_take_recovery(m->sub) || m->unknown_transitions != unknown_seen;
        unknown_seen = m->unknown_transitions;
        if (atomic_exchange(&m->reconcile_now, 0)) next_reconcile = now;
        if (behind) {
            uint64_t soon = last_reconcile + (uint64_t)MIN_RECONCILE_GAP_MS * MS_NS;
            next_reconcile = min_u64(next_reconcile, soon > now ? soon : now);
        }
        if (m->conn && now >= next_reconcile) {
            /* Events queued so far committed before the snapshot: the
             * visibility check sorts them out after. */
            if (reconcile(m) == 0) {
                next_reconcile = rt_mono_ns() + (uint64_t)o->reconcile_interval_ms * MS_NS;
            } else {
                if (PQstatus(m->conn) != CONNECTION_OK) {
                    char msg[256];
                    snprintf(msg, sizeof msg, "%s", PQerrorMessage(m->conn));
                    disconnect(m, rt_pg_oneline(msg));
                    next_connect = rt_mono_ns();
                }
                next_reconcile = rt_mono_ns() + (uint64_t)MIN_RECONCILE_GAP_MS * MS_NS;
            }
            last_reconcile = rt_mono_ns();
            drain(m);
            now = rt_mono_ns();
        }
        if ((m->dirty && now >= last_publish + PUBLISH_MIN_MS * MS_NS) ||
            now >= last_publish + PUBLISH_MAX_MS * MS_NS) {
            publish_snapshot(m);
            last_publish = now;
        }
        if (now >= next_stats) {
            publish_stats(m);
            next_stats = now + (uint64_t)o->stats_interval_ms * MS_NS;
        }
        uint64_t until = min_u64(next_stats, last_publish + PUBLISH_MAX_MS * MS_NS);
        if (m->dirty) until = min_u64(until, last_publish + PUBLISH_MIN_MS * MS_NS);
        if (m->conn)
            until = min_u64(until, next_reconcile);
        else
            until = min_u64(until, next_connect);
        wait_until(m, until);
    }
    disconnect(m, NULL);
    return NULL;
}

void rt__metrics_reconcile_now(rt_metrics_t *m)
{
    atomic_store(&m->reconcile_now, 1);
    on_bus_wake(m);
}

/* ---- the query thread --------------------------------------------------------------------- */

/* The cancel handle of the query connection, for rt_metrics_stop. */
static void set_cancel(rt_metrics_t *m, PGconn *conn)
{
    pthread_mutex_lock(&m->qmu);
    if (m->qcancel) PQfreeCancel(m->qcancel);
    m->qcancel = conn ? PQgetCancel(conn) : NULL;
    pthread_mutex_unlock(&m->qmu);
}

static void *query_main(void *arg)
{
    rt_metrics_t *m = arg;
    rt_log_thread_name("metrics-query");
    PGconn *conn = NULL;
    pthread_mutex_lock(&m->qmu);
    for (;;) {
        while (!m->qhead && !m->qstopping)
            pthread_cond_wait(&m->qcv, &m->qmu);
        if (m->qstopping) break;
        tq_t *t = m->qhead;
        m->qhead = t->next;
        if (!m->qhead) m->qtail = &m->qhead;
        m->qlen--;
        pthread_mutex_unlock(&m->qmu);
        if (conn && PQstatus(conn) != CONNECTION_OK) {
            set_cancel(m, NULL);
            PQfinish(conn);
            conn = NULL;
        }
        if (!conn && m->pub.opts.conninfo) {
            conn = connect_db(m->pub.opts.conninfo, "rtbridge-metrics-query", m->qwakefd,
                              &m->qstop_flag);
            /* A query that runs away is cut off, not waited for. */
            if (conn) PQclear(PQexec(conn, "SET statement_timeout = '30s'"));
            set_cancel(m, conn);
        }
        rt_reply_t r;
        rt__timeline_sql_reply(conn, t->start, t->end, t->gran, &r);
        t->done(t->done_arg, &r);
        free(t);
        pthread_mutex_lock(&m->qmu);
    }
    pthread_mutex_unlock(&m->qmu);
    set_cancel(m, NULL);
    if (conn) PQfinish(conn);
    return NULL;
}

int rt__metrics_defer_timeline(rt_metrics_t *m, int64_t start, int64_t end, int64_t gran,
                               rt_reply_done_cb done, void *done_arg)
{
    int rc = 0;
    pthread_mutex_lock(&m->qmu);
    if (m->qstopping || !m->qstarted) {
        rc = -ESHUTDOWN;
    } else if (m->qlen >= MAX_QUERY_QUEUE) {
        rc = -EAGAIN;
    } else {
        tq_t *t = calloc(1, sizeof *t);
        if (!t) abort();
        *t = (tq_t){.start = start, .end = end, .gran = gran, .done = done, .done_arg = done_arg};
        *m->qtail = t;
        m->qtail = &t->next;
        m->qlen++;
        pthread_cond_signal(&m->qcv);
    }
    pthread_mutex_unlock(&m->qmu);
    return rc;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

rt_metrics_t *rt_metrics_new(const rt_metrics_opts_t *opts)
{
    if (!opts || !opts->bus) {
        errno = EINVAL;
        return NULL;
    }
    rt_metrics_t *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->pub.opts = *opts;
    m->pub.opts.conninfo = opts->conninfo ? strdup(opts->conninfo) : NULL;
    if (m->pub.opts.reconcile_interval_ms <= 0) m->pub.opts.reconcile_interval_ms = 30000;
    if (m->pub.opts.stats_interval_ms <= 0) m->pub.opts.stats_interval_ms = 10000;
    pthread_mutex_init(&m->pub.snap_mu, NULL);
    pthread_mutex_init(&m->qmu, NULL);
    pthread_cond_init(&m->qcv, NULL);
    m->qtail = &m->qhead;
    atomic_init(&m->stopping, 0);
    atomic_init(&m->reconcile_now, 0);
    atomic_init(&m->qstop_flag, 0);
    m->pend = calloc(PEND_SLOTS, sizeof *m->pend);
    if (!m->pend) abort();
    int64_t sec = (int64_t)(rt_now_ns() / 1000000000u);
    m->cur_min = m->failed_min = sec / 60;
    m->eps_sec = sec;
    m->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    m->qwakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->wakefd < 0 || m->qwakefd < 0) goto fail;
    m->rec.corr_unavailable = "not reconciled with the database yet";
    m->pub.snap = build_snapshot(m);
    unsigned size = opts->ring_size ? opts->ring_size : 65536;
    m->sub = rt_bus_subscribe(opts->bus, "metrics", size, RT_BUS_ALL_TYPES, on_bus_wake, m);
    if (!m->sub) goto fail;
    return m;
fail:;
    int err = errno;
    rt_metrics_free(m);
    errno = err;
    return NULL;
}

int rt_metrics_start(rt_metrics_t *m)
{
    if (m->started) return -EALREADY;
    int rc = pthread_create(&m->worker, NULL, worker_main, m);
    if (rc) return -rc;
    m->started = 1;
    rc = pthread_create(&m->qthread, NULL, query_main, m);
    if (rc) {
        rt_metrics_stop(m);
        return -rc;
    }
    pthread_mutex_lock(&m->qmu);
    m->qstarted = 1;
    pthread_mutex_unlock(&m->qmu);
    return 0;
}

void rt_metrics_stop(rt_metrics_t *m)
{
    if (!m) return;
    if (m->started) {
        atomic_store_explicit(&m->stopping, 1, memory_order_release);
        on_bus_wake(m);
        pthread_join(m->worker, NULL);
        m->started = 0;
    }
    pthread_mutex_lock(&m->qmu);
    int joined = m->qstarted;
    m->qstopping = 1;
    pthread_cond_signal(&m->qcv);
    if (m->qcancel) {
        char err[128];
        PQcancel(m->qcancel, err, sizeof err); /* a timeline query in flight */
    }
    pthread_mutex_unlock(&m->qmu);
    atomic_store(&m->qstop_flag, 1);
    uint64_t one = 1;
    ssize_t w = write(m->qwakefd, &one, sizeof one); /* a connect or query in flight */
    (void)w;
    if (joined) pthread_join(m->qthread, NULL);
    m->qstarted = 0;
    /* Whatever is still queued is answered, as the fan-out requires. */
    for (;;) {
        pthread_mutex_lock(&m->qmu);
        tq_t *t = m->qhead;
        if (t) m->qhead = t->next;
        pthread_mutex_unlock(&m->qmu);
        if (!t) break;
        rt_reply_t r;
        rt_reply_json_error(&r, 503, "shutting down", NULL);
        t->done(t->done_arg, &r);
        free(t);
    }
    m->qtail = &m->qhead;
    m->qlen = 0;
}

void rt_metrics_free(rt_metrics_t *m)
{
    if (!m) return;
    rt_metrics_stop(m);
    disconnect(m, NULL);
    rt__snap_release(m->pub.snap);
    rec_clear_items(&m->rec);
    if (m->wakefd >= 0) close(m->wakefd);
    if (m->qwakefd >= 0) close(m->qwakefd);
    pthread_mutex_destroy(&m->pub.snap_mu);
    pthread_mutex_destroy(&m->qmu);
    pthread_cond_destroy(&m->qcv);
    free(m->pend);
    free((char *)m->pub.opts.conninfo);
    free(m);
}

void rt_metrics_add_exposition(rt_metrics_t *m, rt_metrics_exposition_fn fn, void *arg)
{
    if (m->pub.nexpo == (int)(sizeof m->pub.expo / sizeof m->pub.expo[0])) abort();
    m->pub.expo[m->pub.nexpo].fn = fn;
    m->pub.expo[m->pub.nexpo].arg = arg;
    m->pub.nexpo++;
}

void rt_metrics_on_snapshot(rt_metrics_t *m, rt_metrics_snapshot_cb cb, void *arg)
{
    m->snap_cb = cb;
    m->snap_cb_arg = arg;
}

const char *rt_metrics_corrections_unavailable(rt_metrics_t *m)
{
    rt_m_snap_t *s = rt__snap_acquire(m);
    /* Static strings, or the snapshot's reason copied to a per-thread buffer
     * (the snapshot may be freed once released). */
    static _Thread_local char buf[200];
    const char *r = s->corr_unavailable;
    if (r == s->corr_reason) {
        snprintf(buf, sizeof buf, "%s", r);
        r = buf;
    }
    rt__snap_release(s);
    return r;
}
