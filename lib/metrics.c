/*
 * The metrics worker (see metrics.h). One thread owns all mutable state:
 * it drains its bus ring, applies each event to its counters, reconciles with
 * the database on its own connection (metrics_db.c), and publishes immutable
 * snapshots, at most every PUBLISH_MIN_MS while events flow and at least
 * every PUBLISH_MAX_MS. A second thread runs the timeline queries that are
 * older than the in-memory buckets, on a connection of its own.
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
#define PUBLISH_MIN_MS 50         /* snapshots at most this often while events flow */
#define PUBLISH_MAX_MS 1000       /* and at least this often (windows move on) */
#define MIN_RECONCILE_GAP_MS 5000 /* reconciliations brought forward, at most this often */
#define PEND_SLOTS 16384          /* BRIDGE_STARTED awaiting their BRIDGE_COMPLETED */
#define MAX_QUERY_QUEUE 64

const double rt__proc_bounds_s[RT_M_PROC_NB] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                2.5,  5,    10,  30,   60,  300};

static int stopping(rt_metrics_t *m)
{
    return atomic_load_explicit(&m->stopping, memory_order_acquire);
}

static void on_bus_wake(void *arg)
{
    rt_metrics_t *m = arg;
    rt_wake(m->wakefd);
}

struct rt_metrics_pub *rt__metrics_pub(rt_metrics_t *m)
{
    return &m->pub;
}

static void advance_clocks(rt_metrics_t *m, uint64_t now_ns)
{
    int64_t sec = (int64_t)(now_ns / 1000000000u);
    rt__ring_advance(m->minutes, RT_M_MINUTES, &m->cur_min, sec / 60);
    rt__ring_advance(m->failed, RT_M_FAILED_MINUTES, &m->failed_min, sec / 60);
    rt__ring_advance(m->eps, RT_M_EPS_SECONDS, &m->eps_sec, sec);
}

/* ---- statuses ---------------------------------------------------------------------- */

rt_m_status_t *rt__status_slot(rt_metrics_t *m, const char *name)
{
    if (!name) name = "null";
    for (int i = 0; i < m->nstatus; i++)
        if (strcmp(m->status[i].name, name) == 0) return &m->status[i];
    if (m->nstatus >= RT_M_MAX_STATUS - 1 && strcmp(name, "other") != 0)
        return rt__status_slot(m, "other");
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
        rt_m_status_t *s = rt__status_slot(m, status);
        s->active++;
        s->entered++;
        int64_t t = jtime_ms(j, "created_at", jtime_ms(j, "updated_at", recv_ms));
        rt__ring_add(m->minutes, RT_M_MINUTES, m->cur_min, rt__floor_to(t, 60000) / 60000, 1);
        if (status && strcmp(status, "failed") == 0)
            rt__ring_add(m->failed, RT_M_FAILED_MINUTES, m->failed_min, recv_ms / 60000, 1);
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
                rt__status_slot(m, o)->active--;
                rt_m_status_t *s = rt__status_slot(m, status);
                s->active++;
                s->entered++;
                if (status && strcmp(status, "failed") == 0)
                    rt__ring_add(m->failed, RT_M_FAILED_MINUTES, m->failed_min, recv_ms / 60000, 1);
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

static size_t drain(rt_metrics_t *m)
{
    rt_event_t *evs[256];
    char skip[256];
    size_t n, total = 0;
    while ((n = rt_bus_drain(m->sub, evs, 256)) > 0) {
        uint64_t now = rt_now_ns();
        advance_clocks(m, now);
        memset(skip, 0, n);
        if (m->vis_snapshot && m->conn) rt__metrics_check_visible(m, evs, n, skip);
        for (size_t i = 0; i < n; i++) {
            rt_event_t *ev = evs[i];
            if (ev->type < RT_EV__COUNT) m->events[ev->type]++;
            if (!skip[i] && ev->type == RT_EV_INTENT_UPDATE) on_intent(m, ev);
            if (ev->type == RT_EV_AUDIT_LOG) on_audit(m, ev);
            rt_event_unref(ev);
        }
        m->eps[rt__slot(m->eps_sec, RT_M_EPS_SECONDS)] += (uint32_t)n;
        total += n;
        m->dirty = 1;
        if (total >= 65536) break; /* let the rest of the loop run too */
    }
    return total;
}

/* ---- snapshots -------------------------------------------------------------------------- */

static void snap_free(rt_m_snap_t *s)
{
    rt__snap_clear_items(s);
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
            m->minutes[rt__slot(m->cur_min - (RT_M_MINUTES - 1) + (int64_t)i, RT_M_MINUTES)];
    s->created_10m = (int64_t)rt__ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 10);
    s->created_30m = (int64_t)rt__ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 30);
    s->last_hour = (int64_t)rt__ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 60);
    s->last_24h = (int64_t)rt__ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 24 * 60);
    s->last_7d = (int64_t)rt__ring_sum(m->minutes, RT_M_MINUTES, m->cur_min, 7 * 24 * 60);
    s->failed_10m = (int64_t)rt__ring_sum(m->failed, RT_M_FAILED_MINUTES, m->failed_min, 10);
    memcpy(s->events, m->events, sizeof s->events);
    /* Whole seconds only: the current one is still filling. */
    s->events_last_60s = rt__ring_sum(m->eps, RT_M_EPS_SECONDS, m->eps_sec - 1, 60);
    s->events_last_5m = rt__ring_sum(m->eps, RT_M_EPS_SECONDS, m->eps_sec, RT_M_EPS_SECONDS);
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
            m->conn = rt__metrics_connect(o->conninfo, "rtbridge-metrics", m->wakefd, &m->stopping);
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
            if (rt__metrics_reconcile(m) == 0) {
                next_reconcile = rt_mono_ns() + (uint64_t)o->reconcile_interval_ms * MS_NS;
            } else {
                if (PQstatus(m->conn) != CONNECTION_OK) {
                    char msg[256];
                    snprintf(msg, sizeof msg, "%s", PQerrorMessage(m->conn));
                    rt__metrics_disconnect(m, rt_pg_oneline(msg));
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
    rt__metrics_disconnect(m, NULL);
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
            conn = rt__metrics_connect(m->pub.opts.conninfo, "rtbridge-metrics-query", m->qwakefd,
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
    pthread_mutex_init(&m->pub.ov_mu, NULL);
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
    rt_wake(m->qwakefd); /* a connect or query in flight */
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
    rt__metrics_disconnect(m, NULL);
    rt__snap_release(m->pub.snap);
    rt__snap_clear_items(&m->rec);
    if (m->wakefd >= 0) close(m->wakefd);
    if (m->qwakefd >= 0) close(m->qwakefd);
    pthread_mutex_destroy(&m->pub.snap_mu);
    pthread_mutex_destroy(&m->pub.ov_mu);
    free(m->pub.ov_body);
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
