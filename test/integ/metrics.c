/*
 * Integration tests for the metrics aggregator (lib/metrics*.c) against a
 * real PostgreSQL: after rows committed before it started and a scripted
 * workload after, the overview and timelines equal what SQL computes over
 * the same tables (the spec's own queries where it has them); the live path
 * keeps them equal without a reconciliation; events that a reconciliation
 * already counted are not counted again; old timelines come back through
 * done(); corrections with and without a correction_history column.
 *
 * The test databases are set to TimeZone UTC: rtbridge reads timestamps
 * without a time zone as UTC (the spec compares them with utcnow()).
 */
#include "pgtest.h"

#include "bus.h"
#include "event.h"
#include "listener.h"
#include "metrics-internal.h"
#include "metrics.h"
#include "replywait.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct fixture {
    char *url;
    PGconn *db;
    rt_bus_t *bus;
    rt_listener_t *listener;
    rt_metrics_t *m;
} fixture_t;

static uint64_t now_ms(void)
{
    return rt_mono_ns() / 1000000u;
}

static void fixture_db(fixture_t *f, const char *prefix, const char *before_migrate)
{
    memset(f, 0, sizeof *f);
    f->url = pgt_create_db(prefix);
    f->db = pgt_connect(f->url);
    char sql[256];
    snprintf(sql, sizeof sql, "ALTER DATABASE %s SET TimeZone = 'UTC'", PQdb(f->db));
    pgt_exec(f->db, sql);
    PQfinish(f->db);
    f->db = pgt_connect(f->url);
    if (before_migrate) pgt_exec(f->db, before_migrate);
    pgt_migrate(f->url);
    f->bus = rt_bus_new();
}

/* Starts the aggregator (and a listener when with_listener). */
static void fixture_start(fixture_t *f, int with_listener)
{
    rt_metrics_opts_t mo = {.conninfo = f->url,
                            .bus = f->bus,
                            .ring_size = 1u << 16,
                            .reconcile_interval_ms = 3600 * 1000, /* only when asked */
                            .stats_interval_ms = 3600 * 1000};
    if (with_listener) {
        rt_listener_opts_t lo = {.conninfo = f->url,
                                 .channels = "intent_changed,audit_log_created",
                                 .reconnect_min_ms = 10,
                                 .reconnect_max_ms = 200,
                                 .bus = f->bus};
        f->listener = rt_listener_new(&lo);
        assert_non_null(f->listener);
        mo.listener = f->listener;
    }
    f->m = rt_metrics_new(&mo);
    assert_non_null(f->m);
    assert_int_equal(rt_metrics_start(f->m), 0);
    if (with_listener) {
        assert_int_equal(rt_listener_start(f->listener), 0);
        rt_listener_stats_t *st = rt_listener_stats(f->listener);
        uint64_t deadline = now_ms() + 10000;
        while (!atomic_load(&st->connected) && now_ms() < deadline)
            usleep(2000);
        assert_int_equal(atomic_load(&st->connected), 1);
    }
}

static void fixture_stop(fixture_t *f)
{
    rt_listener_free(f->listener);
    rt_metrics_free(f->m);
    rt_bus_free(f->bus);
    PQfinish(f->db);
    pgt_drop_db(f->url);
    free(f->url);
}

/* Polls the snapshot until pred holds (10 s at most). */
static uint64_t snap_field(fixture_t *f, int which)
{
    rt_m_snap_t *s = rt__snap_acquire(f->m);
    uint64_t v = which == 0   ? s->reconciles
                 : which == 1 ? s->events[RT_EV_INTENT_UPDATE]
                 : which == 2 ? s->events[RT_EV_AUDIT_LOG]
                              : s->skipped_visible;
    rt__snap_release(s);
    return v;
}

static void wait_field(fixture_t *f, int which, uint64_t want, const char *what)
{
    uint64_t deadline = now_ms() + 10000;
    while (snap_field(f, which) < want && now_ms() < deadline)
        usleep(2000);
    if (snap_field(f, which) < want)
        fail_msg("%s: %llu, want %llu", what, (unsigned long long)snap_field(f, which),
                 (unsigned long long)want);
}

static void reconcile_now(fixture_t *f)
{
    uint64_t before = snap_field(f, 0);
    rt__metrics_reconcile_now(f->m);
    wait_field(f, 0, before + 1, "reconciliations");
}

static void no_done(void *arg, rt_reply_t *r)
{
    (void)arg;
    (void)r;
    fail_msg("done() called for an immediate answer");
}

static json_t *get_json(fixture_t *f, const char *path, const char *query)
{
    rt_reply_t r;
    memset(&r, 0, sizeof r);
    assert_int_equal(rt_metrics_handle(f->m, path, query, &r, no_done, NULL), RT_HANDLE_DONE);
    if (r.status != 200) fail_msg("%s?%s: %d %.*s", path, query, r.status, (int)r.len, r.body);
    json_t *j = json_loadb(r.body, r.len, 0, NULL);
    assert_non_null(j);
    free(r.body);
    return j;
}

static json_t *sql_json(fixture_t *f, const char *sql)
{
    char *s = pgt_scalar_str(f->db, sql);
    assert_non_null(s);
    json_t *j = json_loads(s, JSON_DECODE_ANY, NULL);
    if (!j) fail_msg("not JSON: %s", s);
    free(s);
    return j;
}

static void assert_json_eq(json_t *got, json_t *want, const char *what)
{
    if (!json_equal(got, want)) {
        char *a = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        char *b = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        fail_msg("%s differs\n  aggregator: %s\n  SQL:        %s", what, a, b);
    }
}

/* The overview against the spec's SQL over the same tables. */
#define OVERVIEW_SQL                                                                               \
    "SELECT json_build_object("                                                                    \
    "'total_intents', (SELECT count(*) FROM intents),"                                             \
    "'status_distribution', (SELECT coalesce(json_object_agg(coalesce(status, 'null'), n), '{}') " \
    "  FROM (SELECT status, count(*) AS n FROM intents GROUP BY status) s),"                       \
    "'recent_activity', json_build_object("                                                        \
    "  'last_hour', (SELECT count(*) FROM intents WHERE created_at > now() - interval '1 hour'),"  \
    "  'last_24h', (SELECT count(*) FROM intents WHERE created_at > now() - interval '24 hours')," \
    "  'last_7d', (SELECT count(*) FROM intents WHERE created_at > now() - interval '168 "         \
    "hours')),"                                                                                    \
    "'avg_processing_time_ms', (SELECT coalesce(trunc(AVG(EXTRACT(EPOCH FROM ("                    \
    "  SELECT MIN(created_at) FROM audit_logs al2 WHERE al2.intent_id = al1.intent_id"             \
    "  AND al2.event_type = 'BRIDGE_COMPLETED')) - EXTRACT(EPOCH FROM created_at)) * 1000), 0)"    \
    "  FROM audit_logs al1 WHERE event_type = 'BRIDGE_STARTED'"                                    \
    "  AND created_at > now() - interval '1 day')"                                                 \
    ")::text"

static void assert_overview_matches(fixture_t *f)
{
    json_t *got = get_json(f, "/api/v1/dashboard/overview", "");
    json_t *want = sql_json(f, OVERVIEW_SQL);
    json_t *sub = json_object();
    const char *keys[] = {"total_intents", "status_distribution", "recent_activity",
                          "avg_processing_time_ms"};
    for (size_t i = 0; i < 4; i++)
        json_object_set(sub, keys[i], json_object_get(got, keys[i]));
    assert_json_eq(sub, want, "overview");
    json_decref(sub);
    json_decref(got);
    json_decref(want);
}

/* A timeline (from memory or deferred) against generate_series over SQL. */
static void assert_timeline_matches(fixture_t *f, int64_t start, int64_t end, const char *gran,
                                    int want_deferred)
{
    char a[40], b[40], q[160];
    rt__iso_format(a, sizeof a, start);
    rt__iso_format(b, sizeof b, end);
    snprintf(q, sizeof q, "start=%s&end=%s&granularity=%s", a, b, gran);
    replywait_t w;
    replywait_init(&w);
    rt_reply_t r;
    memset(&r, 0, sizeof r);
    rt_handle_result_t h =
        rt_metrics_handle(f->m, "/api/v1/dashboard/timeline", q, &r, replywait_done, &w);
    assert_int_equal(h, want_deferred ? RT_HANDLE_LATER : RT_HANDLE_DONE);
    if (want_deferred) {
        assert_int_equal(replywait_wait(&w, 10000), 1);
        r = w.r;
    }
    replywait_destroy(&w);
    if (r.status != 200) fail_msg("timeline %s: %d %.*s", q, r.status, (int)r.len, r.body);
    json_t *got = json_loadb(r.body, r.len, 0, NULL);
    free(r.body);
    char sql[1024];
    snprintf(
        sql, sizeof sql,
        "SELECT json_agg(json_build_object('time', to_char(b, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " 'count', (SELECT count(*) FROM intents WHERE created_at >= b"
        " AND created_at < b + '1 %s'::interval)) ORDER BY b)::text "
        "FROM generate_series(date_trunc('%s', '%s'::timestamp), date_trunc('%s', "
        "'%s'::timestamp), '1 %s'::interval) b",
        gran, gran, a, gran, b, gran);
    json_t *want = sql_json(f, sql);
    assert_json_eq(got, want, q);
    json_decref(got);
    json_decref(want);
}

static int64_t now_s(void)
{
    return (int64_t)(rt_now_ns() / 1000000000u);
}

/* The text of /metrics. */
static char *scrape(fixture_t *f)
{
    rt_reply_t r;
    memset(&r, 0, sizeof r);
    assert_int_equal(rt_metrics_handle(f->m, "/metrics", "", &r, no_done, NULL), RT_HANDLE_DONE);
    char *s = strndup(r.body, r.len);
    free(r.body);
    return s;
}

static void assert_has(const char *text, const char *line)
{
    if (!strstr(text, line)) fail_msg("/metrics lacks \"%s\"", line);
}

/* The snapshot follows the events within PUBLISH_MIN_MS: polls the
 * overview until its total is want (5 s at most; the caller's comparison
 * with SQL then says what is wrong if it never is). */
static void wait_total(fixture_t *f, long long want)
{
    uint64_t deadline = now_ms() + 5000;
    for (;;) {
        json_t *g = get_json(f, "/api/v1/dashboard/overview", "");
        long long tot = json_integer_value(json_object_get(g, "total_intents"));
        json_decref(g);
        if (tot == want || now_ms() > deadline) return;
        usleep(2000);
    }
}

/* Rows committed before the aggregator starts, then a live workload. */
static void test_matches_sql(void **state)
{
    (void)state;
    fixture_t f;
    fixture_db(&f, "metrics_sql", NULL);
    pgt_exec(f.db,
             "INSERT INTO intents (id, status, created_at) SELECT gen_random_uuid(), 'received', "
             "now() - interval '30 minutes' FROM generate_series(1, 10);"
             "INSERT INTO intents (id, status, created_at) SELECT gen_random_uuid(), 'processed', "
             "now() - interval '3 hours' FROM generate_series(1, 5);"
             "INSERT INTO intents (id, status, created_at) SELECT gen_random_uuid(), 'completed', "
             "now() - interval '2 days' FROM generate_series(1, 4);"
             "INSERT INTO intents (id, status, created_at) SELECT gen_random_uuid(), 'failed', "
             "now() - interval '10 days' FROM generate_series(1, 3);"
             "INSERT INTO intents (id, status, created_at) SELECT gen_random_uuid(), NULL, "
             "now() - interval '5 minutes' FROM generate_series(1, 2);"
             /* Three intents take 1.5 s, 2.5 s and 3.5 s; one never completes. */
             "INSERT INTO audit_logs (event_type, intent_id, created_at) "
             "SELECT 'BRIDGE_STARTED', id, now() - interval '2 hours' "
             "FROM intents WHERE status = 'completed';"
             "INSERT INTO audit_logs (event_type, intent_id, created_at) "
             "SELECT 'BRIDGE_COMPLETED', id, now() - interval '2 hours' + "
             "(row_number() OVER (ORDER BY id) + 0.5) * interval '1 second' "
             "FROM (SELECT id FROM intents WHERE status = 'completed' ORDER BY id LIMIT 3) c");
    fixture_start(&f, 1);
    wait_field(&f, 0, 1, "first reconciliation");
    assert_overview_matches(&f);
    json_t *o = get_json(&f, "/api/v1/dashboard/overview", "");
    pgt_assert_ll_eq(json_integer_value(json_object_get(o, "avg_processing_time_ms")), 2500);
    json_decref(o);

    /* Live: 16 intent events, no reconciliation. */
    pgt_exec(f.db, "INSERT INTO intents (id, status) SELECT gen_random_uuid(), 'received' "
                   "FROM generate_series(1, 7)");
    pgt_exec(f.db, "UPDATE intents SET status = 'processed' WHERE id IN "
                   "(SELECT id FROM intents WHERE status = 'received' ORDER BY id LIMIT 3)");
    pgt_exec(f.db, "UPDATE intents SET status = 'failed' WHERE id IN "
                   "(SELECT id FROM intents WHERE status = 'processed' ORDER BY id LIMIT 2)");
    pgt_exec(f.db, "UPDATE intents SET data = '{\"x\": 1}' WHERE id IN "
                   "(SELECT id FROM intents WHERE status = 'received' ORDER BY id LIMIT 1)");
    pgt_exec(f.db, "UPDATE intents SET status = 'received' WHERE status IS NULL");
    pgt_exec(f.db, "INSERT INTO intents (id, status, created_at) VALUES "
                   "(gen_random_uuid(), 'completed', now() - interval '2 hours')");
    wait_field(&f, 1, 16, "intent events");
    pgt_assert_ll_eq(snap_field(&f, 0), 1); /* still the first reconciliation */
    wait_total(&f, 32);
    assert_overview_matches(&f);

    int64_t t = now_s();
    assert_timeline_matches(&f, t - 2 * 86400, t, "hour", 0);
    assert_timeline_matches(&f, t - 3 * 3600, t, "minute", 0);
    assert_timeline_matches(&f, t - 6 * 86400, t + 86400, "day", 0);
    assert_timeline_matches(&f, t - 30 * 86400, t, "day", 1); /* older than memory: SQL */
    assert_timeline_matches(&f, t - 12 * 86400, t - 9 * 86400, "hour", 1);

    char *text = scrape(&f);
    assert_has(text, "realtime_events_total{type=\"intent_update\"} 16\n");
    assert_has(text, "bridge_intents_total{status=\"failed\"} 2\n");
    assert_has(text, "bridge_intents_total{status=\"received\"} 9\n"); /* 7 new + 2 from NULL */
    assert_has(text, "bridge_active_intents{status=\"failed\"} 5\n");
    assert_has(text, "rtbridge_metrics_reconciles_total 1\n");
    assert_has(text, "rtbridge_listener_connected 1\n");
    free(text);

    /* And a reconciliation changes nothing. */
    reconcile_now(&f);
    assert_overview_matches(&f);
    const char *why = rt_metrics_corrections_unavailable(f.m);
    assert_non_null(why);
    assert_non_null(strstr(why, "no correction_history column"));
    fixture_stop(&f);
}

/* The test publishes the journal's events itself, so it decides when they
 * arrive: events committed before a reconciliation's snapshot but delivered
 * after it are skipped, later ones counted. */
static int64_t publish_journal(fixture_t *f, int64_t after, rt_event_t **held, int *nheld)
{
    char sql[128];
    snprintf(sql, sizeof sql,
             "SELECT seq, channel, payload FROM rt_journal WHERE seq > %" PRId64 " ORDER BY seq",
             after);
    PGresult *r = PQexec(f->db, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(r); i++) {
        rt_event_t *ev = NULL;
        int64_t seq;
        const char *p = PQgetvalue(r, i, 2);
        assert_int_equal(rt_event_parse_notify(PQgetvalue(r, i, 1), p, strlen(p), rt_now_ns(), &ev,
                                               &seq, NULL, 0),
                         RT_PARSE_OK);
        if (held) {
            held[(*nheld)++] = ev;
        } else {
            rt_bus_publish(f->bus, ev);
            rt_event_unref(ev);
        }
        after = seq;
    }
    PQclear(r);
    return after;
}

static void test_no_double_count(void **state)
{
    (void)state;
    fixture_t f;
    fixture_db(&f, "metrics_vis", NULL);
    fixture_start(&f, 0);
    wait_field(&f, 0, 1, "first reconciliation");
    pgt_exec(f.db, "INSERT INTO intents (id, status) SELECT gen_random_uuid(), 'received' "
                   "FROM generate_series(1, 5)");
    pgt_exec(f.db, "UPDATE intents SET status = 'failed' WHERE id IN "
                   "(SELECT id FROM intents ORDER BY id LIMIT 2)");
    rt_event_t *held[16];
    int nheld = 0;
    int64_t seq = publish_journal(&f, 0, held, &nheld);
    assert_int_equal(nheld, 7);
    reconcile_now(&f); /* sees all 7 changes */
    for (int i = 0; i < nheld; i++) {
        rt_bus_publish(f.bus, held[i]);
        rt_event_unref(held[i]);
    }
    pgt_exec(f.db, "INSERT INTO intents (id, status) SELECT gen_random_uuid(), 'received' "
                   "FROM generate_series(1, 3)");
    pgt_exec(f.db, "UPDATE intents SET status = 'completed' WHERE status = 'failed'");
    publish_journal(&f, seq, NULL, NULL);
    wait_field(&f, 1, 12, "intent events");
    wait_total(&f, 8);
    assert_overview_matches(&f);
    pgt_assert_ll_eq(snap_field(&f, 3), 7); /* the 7 the snapshot saw */
    pgt_assert_ll_eq(snap_field(&f, 0), 2);
    fixture_stop(&f);
}

/* An existing intents table with correction_history (rtbridge never adds it). */
static void test_corrections(void **state)
{
    (void)state;
    fixture_t f;
    fixture_db(&f, "metrics_corr",
               "CREATE TABLE intents (id uuid PRIMARY KEY, data jsonb, status varchar(50), "
               "created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now(), "
               "version integer DEFAULT 1, correction_history jsonb)");
    pgt_exec(f.db,
             "INSERT INTO intents (id, status, updated_at, correction_history) VALUES "
             "('00000000-0000-0000-0000-00000000000a', 'corrected', now() - interval '1 hour', "
             " '[{\"source\": \"YUNO\", \"reason\": \"r1\", \"applied_at\": "
             "\"2025-12-03T10:00:00Z\"}]'),"
             "('00000000-0000-0000-0000-00000000000b', 'corrected', now(), "
             " '[{\"source\": \"YUNO\", \"reason\": \"r2\"}, {\"source\": \"manual\", \"reason\": "
             "\"r3\"}]'),"
             "('00000000-0000-0000-0000-00000000000c', 'completed', now(), '[]'),"
             "('00000000-0000-0000-0000-00000000000d', 'completed', now(), NULL)");
    fixture_start(&f, 0);
    wait_field(&f, 0, 1, "first reconciliation");
    assert_null(rt_metrics_corrections_unavailable(f.m));
    const char *spec = "SELECT json_agg(json_build_object('intent_id', intent_id, "
                       "'correction_count', correction_count, 'last_correction', last_correction) "
                       "ORDER BY updated_at DESC)::text FROM (SELECT id AS intent_id, updated_at, "
                       "jsonb_array_length(correction_history) AS correction_count, "
                       "correction_history->-1 AS last_correction FROM intents "
                       "WHERE jsonb_array_length(correction_history) > 0 "
                       "ORDER BY updated_at DESC LIMIT %d) t";
    for (int limit = 1; limit <= 2; limit++) {
        char sql[640], q[32];
        snprintf(sql, sizeof sql, spec, limit);
        snprintf(q, sizeof q, "limit=%d", limit);
        json_t *got = get_json(&f, "/api/v1/dashboard/corrections", q);
        json_t *want = sql_json(&f, sql);
        assert_json_eq(got, want, q);
        json_decref(got);
        json_decref(want);
    }
    json_t *o = get_json(&f, "/api/v1/dashboard/overview", "");
    assert_true(json_real_value(json_object_get(o, "correction_rate")) == 0.5);
    json_decref(o);
    char *text = scrape(&f);
    assert_has(text, "bridge_corrections_total{source=\"YUNO\"} 2\n");
    assert_has(text, "bridge_corrections_total{source=\"manual\"} 1\n");
    assert_has(text, "rtbridge_metrics_corrections_available 1\n");
    free(text);

    /* A column of another type: figures 0, and why. */
    pgt_exec(f.db, "ALTER TABLE intents RENAME COLUMN correction_history TO ch_old;"
                   "ALTER TABLE intents ADD COLUMN correction_history text");
    reconcile_now(&f);
    const char *why = rt_metrics_corrections_unavailable(f.m);
    assert_non_null(why);
    assert_non_null(strstr(why, "of type text"));
    fixture_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_sql),
        cmocka_unit_test(test_no_double_count),
        cmocka_unit_test(test_corrections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
