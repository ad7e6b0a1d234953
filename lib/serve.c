/*
 * The serve command. The main thread runs a libuv loop that only handles
 * signals and timers; everything that blocks (journal pruning) runs on the
 * libuv thread pool with its own connection, so the loop stays responsive.
 */
#include "serve.h"

#include "bus.h"
#include "journal.h"
#include "listener.h"
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
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
    int stopping;
} serve_ctx_t;

static void prune_work_cb(uv_work_t *w)
{
    serve_ctx_t *s = w->data;
    PGconn *c = PQconnectdb(s->cfg->database_url);
    s->pruned = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        long long n;
        if (rt_journal_prune(c, s->cfg->journal_retention_ms, &n) == 0) s->pruned = n;
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
    rt_info(COMP,
            "listener %s: %" PRIuFAST64 " published (%" PRIuFAST64 " replayed), %" PRIuFAST64
            " invalid, %" PRIuFAST64 " reconnects",
            atomic_load(&st->connected) ? "connected" : "DISCONNECTED",
            (uint_fast64_t)atomic_load(&st->published), (uint_fast64_t)atomic_load(&st->replayed),
            (uint_fast64_t)atomic_load(&st->invalid), (uint_fast64_t)atomic_load(&st->reconnects));
    if (!s->prune_running) {
        s->prune_running = 1;
        s->prune_work.data = s;
        uv_queue_work(&s->loop, &s->prune_work, prune_work_cb, prune_after_cb);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    serve_ctx_t *s = h->data;
    if (signum == SIGHUP) {
        rt_info(COMP, "SIGHUP: nothing to reload yet");
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

int rt_serve_run(const rt_config_t *cfg)
{
    serve_ctx_t s = {.cfg = cfg};
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
    int rc = s.listener ? rt_listener_start(s.listener) : -errno;
    if (rc < 0) {
        rt_error(COMP, "cannot start the listener: %s", strerror(-rc));
        rt_listener_free(s.listener);
        rt_bus_free(s.bus);
        return 1;
    }
    uv_timer_start(&s.housekeeping, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    rt_info(COMP, "started (channels %s)", cfg->channels);

    uv_run(&s.loop, UV_RUN_DEFAULT);
    rt_listener_free(s.listener);
    rt_bus_free(s.bus);
    uv_loop_close(&s.loop);
    rt_info(COMP, "stopped");
    return 0;
}
