/*
 * The serve command. The main thread runs a libuv loop that only handles
 * signals and timers; everything that blocks (journal pruning) runs on the
 * libuv thread pool with its own connection, so the loop stays responsive.
 * The audit-log ETL (--etl, on by default) is one more consumer of the bus
 * with its own thread and connection.
 */
#include "serve.h"

#include "alerts.h"
#include "bus.h"
#include "etl.h"
#include "fanout.h"
#include "journal.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "static.h"

#include <errno.h>
#include <jansson.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define COMP "serve"
#define HOUSEKEEPING_MS 60000

typedef struct serve_ctx {
    const rt_config_t *cfg;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t housekeeping;
    uv_work_t prune_work;
    int prune_running;
    long long pruned;
    rt_bus_t *bus;
    rt_listener_t *listener;
    rt_fanout_t *fanout;
    rt_etl_t *etl; /* NULL with --etl=off */
    rt_metrics_t *metrics;
    rt_alerts_t *alerts; /* NULL without --alert-rules */
    uv_work_t reload_work;
    int reload_running;
    int stopping;
} serve_ctx_t;

static void prune_work_cb(uv_work_t *w)
{
    serve_ctx_t *s = w->data;
    PGconn *c = PQconnectdb(s->cfg->database_url);
    s->pruned = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        long long n;
        /* With the ETL on, audit logs it has not loaded yet stay. */
        if (rt_journal_prune(c, s->cfg->journal_retention_ms, s->cfg->etl, &n) == 0)
            s->pruned = n;
    } else {
        rt_warn(COMP, "journal prune: cannot connect: %s", PQerrorMessage(c));
    }
    PQfinish(c);
}

static void prune_after_cb(uv_work_t *w, int status)
{
    serve_ctx_t *s = w->data;
    s->prune_running = 0;
    if (status == 0 && s->pruned > 0) rt_info(COMP, "pruned %lld journal rows", s->pruned);
}

static void on_housekeeping(uv_timer_t *t)
{
    serve_ctx_t *s = t->data;
    rt_listener_stats_t *st = rt_listener_stats(s->listener);
    rt_fanout_stats_t fs;
    rt_fanout_stats(s->fanout, &fs);
    rt_info(COMP,
            "listener %s: %" PRIuFAST64 " published (%" PRIuFAST64 " from the journal), %" PRIuFAST64
            " invalid, %" PRIuFAST64 " reconnects; clients: %ld ws, %ld sse; %lu events sent, "
            "%lu slow disconnects",
            atomic_load(&st->connected) ? "connected" : "DISCONNECTED",
            (uint_fast64_t)atomic_load(&st->published), (uint_fast64_t)atomic_load(&st->replayed),
            (uint_fast64_t)atomic_load(&st->invalid), (uint_fast64_t)atomic_load(&st->reconnects),
            fs.active[RT_TRANSPORT_WS], fs.active[RT_TRANSPORT_SSE], fs.events_sent,
            fs.slow_disconnects);
    if (s->etl) {
        rt_etl_stats_t *es = rt_etl_stats(s->etl);
        rt_info(COMP,
                "etl %s: %" PRIuFAST64 " rows loaded in %" PRIuFAST64 " batches (last %" PRIuFAST64
                " us), %" PRIuFAST64 " bad payloads, lag %" PRIuFAST64 " ms, cursor %" PRIdFAST64,
                !atomic_load(&es->connected) ? "DISCONNECTED"
                : atomic_load(&es->leader)   ? "leader"
                                             : "standby",
                (uint_fast64_t)atomic_load(&es->rows_loaded),
                (uint_fast64_t)atomic_load(&es->batches),
                (uint_fast64_t)atomic_load(&es->last_batch_us),
                (uint_fast64_t)atomic_load(&es->bad_payloads),
                (uint_fast64_t)atomic_load(&es->lag_ms), (int_fast64_t)atomic_load(&es->cursor_seq));
    }
    if (s->alerts) {
        rt_alerts_counts_t ac;
        rt_alerts_counts(s->alerts, &ac);
        rt_info(COMP,
                "alerts %s: %" PRIu64 " rules, %" PRIu64 " firing, %" PRIu64 " evaluations (%" PRIu64
                " failed), %" PRIu64 " notifications",
                ac.leader ? "leader" : "standby", ac.rules, ac.firing, ac.evaluations, ac.errors,
                ac.notifications);
    }
    if (!s->prune_running) {
        s->prune_running = 1;
        s->prune_work.data = s;
        uv_queue_work(&s->loop, &s->prune_work, prune_work_cb, prune_after_cb);
    }
}

/* /health/realtime: whether correction figures are available, and why not. */
static void metrics_health(void *arg, void *obj)
{
    const char *why = rt_metrics_corrections_unavailable(arg);
    json_t *c = json_pack("{s:b}", "available", why == NULL);
    if (why) json_object_set_new(c, "reason", json_string(why));
    json_object_set_new(obj, "corrections", c);
}

/* /health/realtime: the ETL's state in this instance. */
static void etl_health(void *arg, void *obj)
{
    rt_etl_stats_t *es = rt_etl_stats(arg);
    json_object_set_new(
        obj, "etl",
        json_pack("{s:b, s:b, s:f, s:I}", "connected", atomic_load(&es->connected), "leader",
                  atomic_load(&es->leader), "lag_seconds",
                  (double)atomic_load(&es->lag_ms) / 1000.0, "rows_loaded",
                  (json_int_t)atomic_load(&es->rows_loaded)));
}

/* {"metric": NAME} alert rules read the aggregator's latest snapshot. */
static int metric_value(void *arg, const char *name, double *out)
{
    return rt_metrics_value(arg, name, out);
}

/* Reloading reads a file and checks SQL on a connection: off the loop. */
static void reload_work_cb(uv_work_t *w)
{
    serve_ctx_t *s = w->data;
    rt_alerts_reload(s->alerts);
}

static void reload_after_cb(uv_work_t *w, int status)
{
    (void)status;
    serve_ctx_t *s = w->data;
    s->reload_running = 0;
}

static void on_signal(uv_signal_t *h, int signum)
{
    serve_ctx_t *s = h->data;
    if (signum == SIGHUP) {
        if (!s->alerts) {
            rt_info(COMP, "SIGHUP: nothing to reload (no --alert-rules)");
        } else if (s->reload_running) {
            rt_info(COMP, "SIGHUP: a reload is already running");
        } else {
            rt_info(COMP, "SIGHUP: reloading the alert rules");
            s->reload_running = 1;
            s->reload_work.data = s;
            uv_queue_work(&s->loop, &s->reload_work, reload_work_cb, reload_after_cb);
        }
        return;
    }
    if (s->stopping) return;
    s->stopping = 1;
    rt_info(COMP, "%s: shutting down", strsignal(signum));
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
    uv_close((uv_handle_t *)&s->housekeeping, NULL);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

int rt_serve_run(const rt_config_t *cfg)
{
    serve_ctx_t s = {.cfg = cfg};
    int status = 0;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&s.loop);
    uv_signal_init(&s.loop, &s.sigint);
    uv_signal_init(&s.loop, &s.sigterm);
    uv_signal_init(&s.loop, &s.sighup);
    uv_timer_init(&s.loop, &s.housekeeping);
    s.sigint.data = s.sigterm.data = s.sighup.data = s.housekeeping.data = &s;
    uv_signal_start(&s.sigint, on_signal, SIGINT);
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_signal_start(&s.sighup, on_signal, SIGHUP);

    s.bus = rt_bus_new();
    rt_listener_opts_t lo = {
        .conninfo = cfg->database_url,
        .channels = cfg->channels,
        .reconnect_min_ms = cfg->reconnect_min_ms,
        .reconnect_max_ms = cfg->reconnect_max_ms,
        .bus = s.bus,
    };
    s.listener = rt_listener_new(&lo);
    if (!s.listener) {
        rt_error(COMP, "cannot create the listener: %s", strerror(errno));
        status = 1;
        goto out;
    }
    /* Consumers subscribe before the listener can publish anything. */
    char err[256];
    s.fanout = rt_fanout_new(cfg, s.bus, s.listener, err, sizeof err);
    if (!s.fanout) {
        fprintf(stderr, "rtbridge: %s\n", err);
        status = 2;
        goto out;
    }
    /* The dashboard page and the JavaScript client (lib/static.h). */
    if (cfg->web_root && rt_static_check_root(cfg->web_root, err, sizeof err) < 0) {
        fprintf(stderr, "rtbridge: %s\n", err);
        status = 2;
        goto out;
    }
    if (rt_fanout_add_handler(s.fanout, "/", rt_static_handle, cfg->web_root) < 0 ||
        rt_fanout_add_handler(s.fanout, "/static/", rt_static_handle, cfg->web_root) < 0)
        abort(); /* valid prefixes, well under the limit: cannot fail */
    if (cfg->etl) {
        rt_etl_opts_t eo;
        rt_etl_opts_from_config(&eo, cfg);
        eo.bus = s.bus;
        eo.ring_size = (unsigned)cfg->bus_ring_size;
        s.etl = rt_etl_new(&eo);
        if (!s.etl) {
            rt_error(COMP, "cannot create the ETL: %s", strerror(errno));
            status = 1;
            goto out;
        }
    }
    rt_metrics_opts_t mo = {
        .conninfo = cfg->database_url,
        .bus = s.bus,
        .ring_size = (unsigned)cfg->bus_ring_size,
        .reconcile_interval_ms = cfg->metrics_reconcile_interval_ms,
        .stats_interval_ms = cfg->stats_interval_ms,
        .listener = s.listener,
        .fanout = s.fanout,
        .etl = s.etl,
    };
    s.metrics = rt_metrics_new(&mo);
    int hrc = s.metrics ? rt_fanout_add_handler(s.fanout, "/metrics", rt_metrics_handle, s.metrics)
                        : -errno;
    if (hrc == 0)
        hrc = rt_fanout_add_handler(s.fanout, "/api/v1/dashboard/", rt_metrics_handle, s.metrics);
    if (hrc == 0) hrc = rt_fanout_add_health(s.fanout, metrics_health, s.metrics);
    if (hrc == 0 && s.etl) hrc = rt_fanout_add_health(s.fanout, etl_health, s.etl);
    if (hrc < 0) {
        rt_error(COMP, "cannot set up the metrics aggregator: %s", strerror(-hrc));
        status = 1;
        goto out;
    }
    if (cfg->alert_rules) {
        rt_alerts_opts_t ao;
        rt_alerts_opts_from_config(&ao, cfg);
        ao.bus = s.bus;
        ao.metric_value = metric_value;
        ao.metric_arg = s.metrics;
        ao.metric_names = rt_metrics_value_names();
        s.alerts = rt_alerts_new(&ao); /* logs every problem of a bad file */
        if (!s.alerts) {
            fprintf(stderr, "rtbridge: --alert-rules %s: invalid (see the log above)\n",
                    cfg->alert_rules);
            status = 2;
            goto out;
        }
        /* Metric rules re-checked on each new snapshot; states in /metrics. */
        rt_metrics_on_snapshot(s.metrics, rt_alerts_poke_cb, s.alerts);
        rt_metrics_add_exposition(s.metrics, rt_alerts_exposition, s.alerts);
    }
    int rc = rt_fanout_start(s.fanout);
    if (rc == 0) rc = rt_metrics_start(s.metrics);
    if (rc == 0 && s.etl) rc = rt_etl_start(s.etl);
    if (rc == 0 && s.alerts) rc = rt_alerts_start(s.alerts);
    if (rc == 0) rc = rt_listener_start(s.listener);
    if (rc < 0) {
        rt_error(COMP, "cannot start: %s", strerror(-rc));
        status = 1;
        goto out;
    }
    uv_timer_start(&s.housekeeping, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    rt_info(COMP, "started (channels %s)", cfg->channels);

    uv_run(&s.loop, UV_RUN_DEFAULT);
    /* Clients first (close frames, drained writes), then the producer. */
    rt_fanout_shutdown(s.fanout);
out:
    /* Answers its deferred requests (503) before the fan-out is freed. */
    rt_metrics_stop(s.metrics);
    rt_listener_free(s.listener);
    /* The evaluator publishes too: stopped before the bus goes. */
    rt_alerts_free(s.alerts);
    /* After the producer: its ring lives in the bus, freed last. */
    rt_etl_free(s.etl);
    rt_metrics_free(s.metrics);
    rt_fanout_free(s.fanout);
    rt_bus_free(s.bus);
    if (status != 0) {
        uv_walk(&s.loop, close_walk_cb, NULL);
        uv_run(&s.loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&s.loop);
    if (status != 0) return status;
    rt_info(COMP, "stopped");
    return 0;
}
