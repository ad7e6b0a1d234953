/*
 * GET /metrics: the Prometheus text exposition (format 0.0.4) of the metrics
 * snapshot, of the live counters of the listener, fan-out, bus and ETL (read
 * at scrape time: they are atomics), of this process (/proc/self), and of
 * other subsystems' families (rt_metrics_add_exposition). Every family has
 * HELP and TYPE lines; counters end in _total.
 */
#include "metrics-internal.h"

#include "etl.h"
#include "fanout.h"
#include "listener.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped. */
static void label_value(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            fputs("\\\\", f);
        else if (*v == '"')
            fputs("\\\"", f);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

static void sample_l(FILE *f, const char *name, const char *label, const char *value, double v)
{
    fprintf(f, "%s{%s=\"", name, label);
    label_value(f, value);
    fprintf(f, "\"} %.17g\n", v);
}

static void sample(FILE *f, const char *name, double v)
{
    fprintf(f, "%s %.17g\n", name, v);
}

static void one(FILE *f, const char *name, const char *type, const char *help, double v)
{
    family(f, name, type, help);
    sample(f, name, v);
}

/* Buckets are per-bucket counts (b[nb] the rest); written cumulative. */
static void histogram(FILE *f, const char *name, const char *label, const char *lvalue,
                      const double *bounds, int nb, const unsigned long *b, double sum,
                      unsigned long count)
{
    unsigned long cum = 0;
    for (int i = 0; i <= nb; i++) {
        cum += b[i];
        fprintf(f, "%s_bucket{", name);
        if (label) {
            fprintf(f, "%s=\"", label);
            label_value(f, lvalue);
            fputs("\",", f);
        }
        if (i < nb)
            fprintf(f, "le=\"%g\"} %lu\n", bounds[i], cum);
        else
            fprintf(f, "le=\"+Inf\"} %lu\n", cum);
    }
    if (label) {
        fprintf(f, "%s_sum{%s=\"", name, label);
        label_value(f, lvalue);
        fprintf(f, "\"} %.17g\n%s_count{%s=\"", sum, name, label);
        label_value(f, lvalue);
        fprintf(f, "\"} %lu\n", count);
    } else {
        fprintf(f, "%s_sum %.17g\n%s_count %lu\n", name, sum, name, count);
    }
}

static void bridge_families(FILE *f, const rt_m_snap_t *s, const rt_fanout_stats_t *fs)
{
    family(f, "bridge_intents_total", "counter",
           "Intents that entered each status (inserted with it or updated to it) since start");
    for (int i = 0; i < s->nstatus; i++)
        sample_l(f, "bridge_intents_total", "status", s->status[i].name,
                 (double)s->status[i].entered);
    family(f, "bridge_active_intents", "gauge", "Intents currently in each status");
    for (int i = 0; i < s->nstatus; i++)
        sample_l(f, "bridge_active_intents", "status", s->status[i].name,
                 (double)s->status[i].active);
    one(f, "bridge_websocket_connections", "gauge", "Open WebSocket connections",
        (double)fs->active[RT_TRANSPORT_WS]);
    family(f, "bridge_corrections_total", "counter",
           "Corrections applied (entries of intents.correction_history), by source; 0 without "
           "that column");
    for (int i = 0; i < s->nsources; i++)
        sample_l(f, "bridge_corrections_total", "source", s->sources[i].name,
                 (double)s->sources[i].n);
    if (s->nsources == 0) sample_l(f, "bridge_corrections_total", "source", "none", 0);
    family(f, "bridge_processing_duration_seconds", "histogram",
           "BRIDGE_STARTED to BRIDGE_COMPLETED audit logs of one intent, by bridge_type");
    for (int i = 0; i < s->nproc; i++) {
        unsigned long b[RT_M_PROC_NB + 1];
        for (int k = 0; k <= RT_M_PROC_NB; k++)
            b[k] = (unsigned long)s->proc[i].b[k];
        histogram(f, "bridge_processing_duration_seconds", "bridge_type", s->proc[i].name,
                  rt__proc_bounds_s, RT_M_PROC_NB, b, s->proc[i].sum_s,
                  (unsigned long)s->proc[i].count);
    }
    one(f, "bridge_intents_stored", "gauge", "Rows of the intents table", (double)s->total_intents);
    one(f, "bridge_correction_rate", "gauge",
        "Share of intents with at least one correction (as of the last reconciliation)",
        s->total_intents > 0 ? (double)s->corr_intents / (double)s->total_intents : 0);
    one(f, "bridge_avg_processing_time_seconds", "gauge",
        "Average BRIDGE_STARTED to BRIDGE_COMPLETED time over the last day (spec query)",
        s->avg_proc_ms_1d / 1000.0);
}

static void realtime_families(FILE *f, const rt_m_snap_t *s, const rt_fanout_stats_t *fs,
                              rt_listener_stats_t *ls, const rt_metrics_opts_t *o)
{
    static const char *const tnames[RT_TRANSPORT__COUNT] = {"websocket", "sse", "http"};
    family(f, "realtime_connections_active", "gauge", "Open client connections by transport");
    for (int t = 0; t < RT_TRANSPORT__COUNT; t++)
        sample_l(f, "realtime_connections_active", "transport", tnames[t], (double)fs->active[t]);
    family(f, "realtime_events_total", "counter", "Events that went over the bus, by type");
    for (int t = 0; t < RT_EV__COUNT; t++)
        sample_l(f, "realtime_events_total", "type", rt_event_type_name((rt_event_type_t)t),
                 (double)s->events[t]);
    family(f, "realtime_event_latency_seconds", "histogram",
           "Listener receive to the last byte of the event written to a client socket");
    histogram(f, "realtime_event_latency_seconds", NULL, NULL, rt_latency_bounds_s, RT_LATENCY_NB,
              fs->lat, fs->lat_sum_s, fs->lat_count);

    uint64_t overflows = 0;
    for (unsigned k = 0; k < o->bus->nsubs; k++)
        overflows += atomic_load(&o->bus->subs[k]->overflows);
    family(f, "realtime_errors_total", "counter", "Errors by kind");
    sample_l(f, "realtime_errors_total", "error_type", "invalid_payload",
             ls ? (double)atomic_load(&ls->invalid) : 0);
    sample_l(f, "realtime_errors_total", "error_type", "database_connect",
             ls ? (double)atomic_load(&ls->connect_failures) : 0);
    sample_l(f, "realtime_errors_total", "error_type", "ring_overflow", (double)overflows);
    sample_l(f, "realtime_errors_total", "error_type", "ping_timeout", (double)fs->ping_timeouts);
    sample_l(f, "realtime_errors_total", "error_type", "metrics_reconcile",
             (double)s->reconcile_failures);
    sample_l(f, "realtime_errors_total", "error_type", "etl_load",
             o->etl ? (double)atomic_load(&rt_etl_stats(o->etl)->errors) : 0);
    one(f, "realtime_reconnect_total", "counter",
        "Listener reconnects to PostgreSQL after a lost connection",
        ls ? (double)atomic_load(&ls->reconnects) : 0);
    one(f, "realtime_slow_consumer_disconnects_total", "counter",
        "Clients disconnected because their outbound queue passed --client-max-queued",
        (double)fs->slow_disconnects);
    family(f, "realtime_refused_connections_total", "counter", "Connections refused, by reason");
    for (int r = 0; r < RT_REFUSE__COUNT; r++)
        sample_l(f, "realtime_refused_connections_total", "reason",
                 rt_refuse_reason_name((rt_refuse_reason_t)r), (double)fs->refused[r]);
    one(f, "realtime_connections_accepted_total", "counter", "Connections accepted",
        (double)fs->accepted);
    one(f, "realtime_events_delivered_total", "counter", "Event deliveries queued to clients",
        (double)fs->events_sent);
    one(f, "realtime_resumes_total", "counter", "Resume requests served", (double)fs->resumes);
    one(f, "realtime_resyncs_total", "counter", "Resume requests answered with resync",
        (double)fs->resyncs);
}

static void pipeline_families(FILE *f, const rt_m_snap_t *s, rt_listener_stats_t *ls,
                              const rt_metrics_opts_t *o)
{
    family(f, "rtbridge_bus_ring_depth", "gauge", "Events queued in each consumer's ring");
    for (unsigned k = 0; k < o->bus->nsubs; k++)
        sample_l(f, "rtbridge_bus_ring_depth", "consumer", o->bus->subs[k]->name,
                 (double)rt_bus_depth(o->bus->subs[k]));
    family(f, "rtbridge_bus_ring_overflows_total", "counter",
           "Events a full consumer ring could not take (the consumer recovers from the database)");
    for (unsigned k = 0; k < o->bus->nsubs; k++)
        sample_l(f, "rtbridge_bus_ring_overflows_total", "consumer", o->bus->subs[k]->name,
                 (double)atomic_load(&o->bus->subs[k]->overflows));
    one(f, "rtbridge_bus_published_total", "counter", "Events published on the bus",
        (double)atomic_load(&o->bus->published));
    if (ls) {
        one(f, "rtbridge_listener_connected", "gauge", "1 while the listener is LISTENing",
            atomic_load(&ls->connected));
        one(f, "rtbridge_listener_notifications_total", "counter", "Notifications received",
            (double)atomic_load(&ls->notifications));
        one(f, "rtbridge_listener_published_total", "counter",
            "Events the listener published (live and replayed)",
            (double)atomic_load(&ls->published));
        one(f, "rtbridge_listener_replayed_total", "counter",
            "Events published from the journal (after a reconnect, or ahead of their "
            "notification)",
            (double)atomic_load(&ls->replayed));
        one(f, "rtbridge_listener_duplicates_total", "counter",
            "Notifications skipped as already published", (double)atomic_load(&ls->duplicates));
        one(f, "rtbridge_listener_last_seq", "gauge", "Highest journal seq published",
            (double)atomic_load(&ls->last_seq));
    }
    if (o->etl) {
        rt_etl_stats_t *es = rt_etl_stats(o->etl);
        one(f, "rtbridge_etl_connected", "gauge", "1 while the ETL is connected",
            atomic_load(&es->connected));
        one(f, "rtbridge_etl_leader", "gauge", "1 while this instance holds the ETL lock",
            atomic_load(&es->leader));
        one(f, "rtbridge_etl_rows_loaded_total", "counter", "Rows inserted into audit_logs_ts",
            (double)atomic_load(&es->rows_loaded));
        one(f, "rtbridge_etl_rows_read_total", "counter", "Journal rows extracted",
            (double)atomic_load(&es->rows_read));
        one(f, "rtbridge_etl_batches_total", "counter", "Load transactions that moved rows",
            (double)atomic_load(&es->batches));
        one(f, "rtbridge_etl_lag_seconds", "gauge", "Newest journal row minus newest loaded row",
            (double)atomic_load(&es->lag_ms) / 1000.0);
        one(f, "rtbridge_etl_last_batch_seconds", "gauge", "Duration of the last load",
            (double)atomic_load(&es->last_batch_us) / 1e6);
    }
    one(f, "rtbridge_metrics_reconciles_total", "counter",
        "Reconciliations of the aggregator with the database", (double)s->reconciles);
    one(f, "rtbridge_metrics_last_reconcile_timestamp_seconds", "gauge",
        "When the aggregator last reconciled (Unix time; 0: never)",
        (double)s->last_reconcile_ns / 1e9);
    one(f, "rtbridge_metrics_last_reconcile_duration_seconds", "gauge",
        "How long the last reconciliation took", (double)s->last_reconcile_us / 1e6);
    one(f, "rtbridge_metrics_database_connected", "gauge",
        "1 while the aggregator's own connection is up", s->db_connected);
    one(f, "rtbridge_metrics_corrections_available", "gauge",
        "1 when intents has a usable correction_history column", s->corr_unavailable ? 0 : 1);
}

void rt__procinfo_read(rt_m_procinfo_t *p)
{
    memset(p, 0, sizeof *p);
    p->open_fds = -1;
    p->max_fds = -1;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *st = fopen("/proc/self/stat", "r");
    size_t n = st ? fread(buf, 1, sizeof buf - 1, st) : 0;
    if (st) fclose(st);
    buf[n] = '\0';
    /* Fields after the command name, which may hold spaces: from the last ')'. */
    char *q = strrchr(buf, ')');
    unsigned long long ut = 0, stt = 0, start = 0, vsize = 0;
    long long rss = 0;
    if (q && sscanf(q + 2,
                    "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
                    "%*d %llu %llu %lld",
                    &ut, &stt, &start, &vsize, &rss) == 5) {
        double btime = 0;
        FILE *ps = fopen("/proc/stat", "r");
        char line[256];
        while (ps && fgets(line, sizeof line, ps))
            if (sscanf(line, "btime %lf", &btime) == 1) break;
        if (ps) fclose(ps);
        p->ok = 1;
        p->cpu_s = (double)(ut + stt) / (double)tick;
        p->rss_bytes = (double)rss * (double)page;
        p->vsize_bytes = (double)vsize;
        p->start_time_s = btime + (double)start / (double)tick;
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long fds = 0;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') fds++;
        closedir(d);
        p->open_fds = fds - 1; /* not the directory's own */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) p->max_fds = (double)rl.rlim_cur;
}

static void process_families(FILE *f, const rt_m_procinfo_t *p)
{
    if (p->ok) {
        one(f, "process_cpu_seconds_total", "counter", "User and system CPU time spent", p->cpu_s);
        one(f, "process_resident_memory_bytes", "gauge", "Resident memory size", p->rss_bytes);
        one(f, "process_virtual_memory_bytes", "gauge", "Virtual memory size", p->vsize_bytes);
        one(f, "process_start_time_seconds", "gauge", "Start time of the process (Unix time)",
            p->start_time_s);
    }
    if (p->open_fds >= 0)
        one(f, "process_open_fds", "gauge", "Open file descriptors", (double)p->open_fds);
    if (p->max_fds >= 0)
        one(f, "process_max_fds", "gauge", "Limit on open file descriptors", p->max_fds);
}

char *rt__prom_render(rt_metrics_t *m, const rt_m_snap_t *s, size_t *len)
{
    struct rt_metrics_pub *pub = rt__metrics_pub(m);
    const rt_metrics_opts_t *o = &pub->opts;
    rt_fanout_stats_t fs = {0};
    if (o->fanout) rt_fanout_stats(o->fanout, &fs);
    rt_listener_stats_t *ls = o->listener ? rt_listener_stats(o->listener) : NULL;
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) abort();
    bridge_families(f, s, &fs);
    realtime_families(f, s, &fs, ls, o);
    pipeline_families(f, s, ls, o);
    process_families(f, &s->procinfo);
    for (int i = 0; i < pub->nexpo; i++)
        pub->expo[i].fn(pub->expo[i].arg, f);
    fclose(f);
    return buf;
}
