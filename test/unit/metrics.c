/* Unit tests for the metrics aggregator's parts that need no database
 * (lib/metrics*.c): ISO 8601 parsing and formatting, bucket arithmetic,
 * query strings, every 400 of the dashboard API, the Prometheus exposition's
 * structure, counting from events put on the bus by the test, and the
 * stats_updated event. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bus.h"
#include "event.h"
#include "metrics-internal.h"
#include "metrics.h"
#include "replywait.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- ISO 8601 ------------------------------------------------------------------- */

static int64_t iso(const char *s)
{
    int64_t t = -1;
    int rc = rt__iso_parse(s, &t);
    if (rc != 0) fail_msg("rt__iso_parse(\"%s\") = %d", s, rc);
    return t;
}

static void test_iso_parse_valid(void **state)
{
    (void)state;
    /* 2025-12-03T10:00:00Z = 1764756000 (checked with date -u -d ... +%s). */
    assert_int_equal(iso("2025-12-03T10:00:00Z"), 1764756000);
    assert_int_equal(iso("2025-12-03T10:00:00"), 1764756000); /* no zone: UTC */
    assert_int_equal(iso("2025-12-03t10:00:00z"), 1764756000);
    assert_int_equal(iso("2025-12-03 10:00:00Z"), 1764756000);
    assert_int_equal(iso("2025-12-03T10:00Z"), 1764756000);        /* no seconds */
    assert_int_equal(iso("2025-12-03T10:00:00.999Z"), 1764756000); /* fraction dropped */
    assert_int_equal(iso("2025-12-03T19:00:00+09:00"), 1764756000);
    assert_int_equal(iso("2025-12-03T19:00:00+0900"), 1764756000);
    assert_int_equal(iso("2025-12-03T19:00:00+09"), 1764756000);
    assert_int_equal(iso("2025-12-03T19:00:00 09:00"), 1764756000); /* '+' decoded to ' ' */
    assert_int_equal(iso("2025-12-03T08:30:00-01:30"), 1764756000);
    assert_int_equal(iso("2025-12-03"), 1764720000);
    assert_int_equal(iso("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(iso("1969-12-31T23:59:59Z"), -1);
    assert_int_equal(iso("2024-02-29T00:00:00Z"), 1709164800); /* leap day */
    assert_int_equal(iso("2000-02-29"), 951782400);            /* 400-year leap */
    /* A journal payload's timestamp (PostgreSQL's to_jsonb of timestamp). */
    assert_int_equal(iso("2026-11-22T08:47:54.123456"), iso("2026-11-22T08:47:54Z"));
    assert_int_equal(iso("2026-11-22T08:47:54.123456+00:00"), iso("2026-11-22T08:47:54Z"));
}

static void test_iso_parse_invalid(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "x",
                         "2025-12-3",
                         "2025-13-01",
                         "2025-00-01",
                         "2025-04-31",
                         "2023-02-29",
                         "1900-02-29",
                         "2025-12-03T24:00:00Z",
                         "2025-12-03T10:60:00Z",
                         "2025-12-03T10:00:60Z",
                         "2025-12-03T10Z",
                         "2025-12-03T10:00:00.Z",
                         "2025-12-03T10:00:00+24:00",
                         "2025-12-03T10:00:00+09:60",
                         "2025-12-03T10:00:00ZZ",
                         "2025-12-03T10:00:00 junk",
                         "2025-12-03T",
                         "12/03/2025",
                         "1764756000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t t = 42;
        if (rt__iso_parse(bad[i], &t) != -EINVAL) fail_msg("\"%s\" was accepted", bad[i]);
        assert_int_equal(t, 42);
    }
    int64_t t;
    assert_int_equal(rt__iso_parse(NULL, &t), -EINVAL);
}

static void test_iso_format_roundtrip(void **state)
{
    (void)state;
    char buf[40];
    assert_int_equal(rt__iso_format(buf, sizeof buf, 1764756000), 20);
    assert_string_equal(buf, "2025-12-03T10:00:00Z");
    /* Every day boundary over 500 years parses back to itself. */
    for (int64_t d = -36500; d < 146000; d += 7) {
        rt__iso_format(buf, sizeof buf, d * 86400 + 3723);
        assert_int_equal(iso(buf), d * 86400 + 3723);
    }
}

/* ---- buckets ----------------------------------------------------------------------- */

static void test_buckets(void **state)
{
    (void)state;
    assert_int_equal(rt__floor_to(0, 60), 0);
    assert_int_equal(rt__floor_to(59, 60), 0);
    assert_int_equal(rt__floor_to(60, 60), 60);
    assert_int_equal(rt__floor_to(-1, 60), -60);
    assert_int_equal(rt__floor_to(-60, 60), -60);
    assert_int_equal(rt__floor_to(-61, 60), -120);
    assert_int_equal(rt__floor_to(1764756000 + 3599, 3600), 1764756000);
    /* [start, end] in whole buckets: both ends' buckets are included. */
    assert_int_equal(rt__bucket_count(0, 0, 60), 1);
    assert_int_equal(rt__bucket_count(0, 59, 60), 1);
    assert_int_equal(rt__bucket_count(0, 60, 60), 2);
    assert_int_equal(rt__bucket_count(59, 61, 60), 2);
    assert_int_equal(rt__bucket_count(-30, 30, 60), 2);
    assert_int_equal(rt__bucket_count(0, 7 * 86400, 86400), 8);
    assert_int_equal(rt__bucket_count(0, 9999 * 60, 60), 10000);
    assert_int_equal(rt__bucket_count(0, 10000 * 60, 60), 10001);
}

static void test_sql_time(void **state)
{
    (void)state;
    char buf[40];
    rt__sql_time(buf, sizeof buf, 1764756000);
    assert_string_equal(buf, "2025-12-03 10:00:00+00");
}

/* ---- query strings ------------------------------------------------------------------- */

static void test_query_get(void **state)
{
    (void)state;
    char v[32];
    assert_int_equal(rt__query_get("a=1&b=2", "b", v, sizeof v), 1);
    assert_string_equal(v, "2");
    assert_int_equal(rt__query_get("ab=1&b=x%2By+z%3a", "b", v, sizeof v), 1);
    assert_string_equal(v, "x+y z:");
    assert_int_equal(rt__query_get("a=1", "b", v, sizeof v), 0);
    assert_int_equal(rt__query_get("", "b", v, sizeof v), 0);
    assert_int_equal(rt__query_get("b", "b", v, sizeof v), 1);
    assert_string_equal(v, "");
    assert_int_equal(rt__query_get("b=1&b=2", "b", v, sizeof v), -EEXIST);
    assert_int_equal(rt__query_get("b=%zz", "b", v, sizeof v), -EINVAL);
    assert_int_equal(rt__query_get("b=%2", "b", v, sizeof v), -EINVAL);
    assert_int_equal(rt__query_get("b=%00", "b", v, sizeof v), -EINVAL);
    assert_int_equal(rt__query_get("b=0123456789012345678901234567890123", "b", v, sizeof v),
                     -EINVAL);
}

/* ---- the handler without a database ------------------------------------------------------ */

typedef struct fx {
    rt_bus_t *bus;
    rt_metrics_t *m;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    f->bus = rt_bus_new();
    rt_metrics_opts_t o = {.bus = f->bus, .ring_size = 1024, .stats_interval_ms = 100};
    f->m = rt_metrics_new(&o);
    assert_non_null(f->m);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    rt_metrics_free(f->m);
    rt_bus_free(f->bus);
    free(f);
    return 0;
}

static void no_done(void *arg, rt_reply_t *r)
{
    (void)arg;
    (void)r;
    fail_msg("done() called for a request answered at once");
}

/* Calls the handler; returns the reply's status, body in *body (caller frees). */
static int call(fx_t *f, const char *path, const char *query, char **body)
{
    rt_reply_t r;
    memset(&r, 0, sizeof r);
    rt_handle_result_t h = rt_metrics_handle(f->m, path, query, &r, no_done, NULL);
    if (h == RT_HANDLE_NOT_MINE) {
        *body = NULL;
        return 404;
    }
    assert_int_equal(h, RT_HANDLE_DONE);
    assert_non_null(strstr(r.headers, "Cache-Control: no-store\r\n"));
    *body = strndup(r.body, r.len);
    if (!r.body_static) free(r.body);
    return r.status;
}

static void expect_400(fx_t *f, const char *path, const char *query, const char *param,
                       const char *msg_part)
{
    char *body;
    int st = call(f, path, query, &body);
    if (st != 400) fail_msg("%s?%s: status %d, body %s", path, query, st, body);
    json_t *j = json_loads(body, 0, NULL);
    if (!j) fail_msg("not JSON: %s", body);
    const char *p = json_string_value(json_object_get(j, "parameter"));
    const char *e = json_string_value(json_object_get(j, "error"));
    if (!p || strcmp(p, param) != 0 || !e || !strstr(e, msg_part))
        fail_msg("%s?%s: want parameter %s and \"%s\", got %s", path, query, param, msg_part, body);
    json_decref(j);
    free(body);
}

static void test_timeline_400(void **state)
{
    fx_t *f = *state;
    const char *tl = "/api/v1/dashboard/timeline";
    expect_400(f, tl, "", "start", "missing");
    expect_400(f, tl, "end=2025-12-03T10:00:00Z", "start", "missing");
    expect_400(f, tl, "start=&end=2025-12-03T10:00:00Z", "start", "missing");
    expect_400(f, tl, "start=yesterday&end=2025-12-03T10:00:00Z", "start", "ISO 8601");
    expect_400(f, tl, "start=2025-12-03T10:00:00Z", "end", "missing");
    expect_400(f, tl, "start=2025-12-03T10:00:00Z&end=2025-13-03", "end", "ISO 8601");
    expect_400(f, tl, "start=2025-12-03T10:00:00Z&end=%zz", "end", "ISO 8601");
    expect_400(f, tl, "start=2025-12-03T10:00:00Z&start=2025-12-03T10:00:00Z&end=2025-12-04",
               "start", "twice");
    expect_400(f, tl, "start=2025-12-03T10:00:00Z&end=2025-12-03T09:59:59Z", "end", "before");
    expect_400(f, tl, "start=2025-12-03&end=2025-12-04&granularity=week", "granularity",
               "minute, hour or day");
    expect_400(f, tl, "start=2025-12-03&end=2025-12-04&granularity=", "granularity",
               "minute, hour or day");
    expect_400(f, tl, "start=2025-12-03&end=2025-12-04&granularity=Hour", "granularity",
               "minute, hour or day");
    /* 7 days of minutes is 10 081 buckets; 10 000 is the most. */
    expect_400(f, tl, "start=2025-12-01T00:00:00Z&end=2025-12-08T00:00:00Z&granularity=minute",
               "granularity", "more than 10000");
    char *body;
    assert_int_equal(call(f, tl,
                          "start=2025-12-01T00:00:00Z&end=2025-12-07T22:39:00Z&"
                          "granularity=minute",
                          &body),
                     503); /* 10 000 buckets: accepted; old, so SQL: no database here */
    free(body);
}

static void test_corrections_400(void **state)
{
    fx_t *f = *state;
    const char *c = "/api/v1/dashboard/corrections";
    const char *bad[] = {"limit=0",
                         "limit=101",
                         "limit=-1",
                         "limit=abc",
                         "limit=",
                         "limit=5x",
                         "limit=99999999999999999999",
                         "limit=1&limit=2",
                         "limit"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_400(f, c, bad[i], "limit", "1 to 100");
    char *body;
    assert_int_equal(call(f, c, "", &body), 200);
    assert_string_equal(body, "[]");
    free(body);
    assert_int_equal(call(f, c, "limit=100", &body), 200);
    free(body);
    assert_int_equal(call(f, "/api/v1/dashboard/nope", "", &body), 404);
    assert_int_equal(call(f, "/api/v1/dashboard/", "", &body), 404);
    assert_int_equal(call(f, "/metricsx", "", &body), 404);
}

/* A timeline older than memory is deferred and answered through done(). */
static void test_deferred_without_database(void **state)
{
    fx_t *f = *state;
    assert_int_equal(rt_metrics_start(f->m), 0);
    replywait_t w;
    replywait_init(&w);
    rt_reply_t r;
    rt_handle_result_t h =
        rt_metrics_handle(f->m, "/api/v1/dashboard/timeline", "start=2020-01-01&end=2020-01-02", &r,
                          replywait_done, &w);
    assert_int_equal(h, RT_HANDLE_LATER);
    assert_int_equal(replywait_wait(&w, 5000), 1);
    assert_int_equal(w.r.status, 503);
    free(w.r.body);
    replywait_destroy(&w);
}

/* ---- counting from events ---------------------------------------------------------------- */

static void publish(rt_bus_t *bus, rt_event_type_t type, const char *body)
{
    rt_event_t *ev = rt_event_new(type, 0, "", "", body, strlen(body), rt_now_ns());
    rt_bus_publish(bus, ev);
    rt_event_unref(ev);
}

/* Polls the snapshot until it has seen n events of type (5 s at most). */
static void wait_events(fx_t *f, rt_event_type_t type, uint64_t n)
{
    uint64_t deadline = rt_mono_ns() + 5000000000u;
    for (;;) {
        rt_m_snap_t *s = rt__snap_acquire(f->m);
        uint64_t got = s->events[type];
        rt__snap_release(s);
        if (got >= n) return;
        if (rt_mono_ns() > deadline)
            fail_msg("saw %llu of %llu events", (unsigned long long)got, (unsigned long long)n);
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
}

static json_t *overview(fx_t *f)
{
    char *body;
    assert_int_equal(call(f, "/api/v1/dashboard/overview", "", &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    free(body);
    return j;
}

static void test_counts_from_events(void **state)
{
    fx_t *f = *state;
    assert_int_equal(rt_metrics_start(f->m), 0);
    char now[40], b[512];
    rt__iso_format(now, sizeof now, (int64_t)(rt_now_ns() / 1000000000u));
    now[strlen(now) - 1] = '\0'; /* like to_jsonb(timestamp): no zone */
    for (int i = 0; i < 5; i++) {
        snprintf(b, sizeof b,
                 "{\"intent_id\":\"i%d\",\"status\":\"received\",\"event_type\":\"INSERT\","
                 "\"old_status\":null,\"created_at\":\"%s.5\"}",
                 i, now);
        publish(f->bus, RT_EV_INTENT_UPDATE, b);
    }
    /* Created two days ago (the payload's created_at decides the bucket). */
    publish(f->bus, RT_EV_INTENT_UPDATE,
            "{\"intent_id\":\"old\",\"status\":null,\"event_type\":\"INSERT\",\"old_status\":null,"
            "\"created_at\":\"2000-01-01T00:00:00\"}");
    publish(f->bus, RT_EV_INTENT_UPDATE,
            "{\"intent_id\":\"i0\",\"status\":\"failed\",\"event_type\":\"UPDATE\","
            "\"old_status\":\"received\"}");
    publish(f->bus, RT_EV_INTENT_UPDATE,
            "{\"intent_id\":\"i1\",\"status\":\"received\",\"event_type\":\"UPDATE\","
            "\"old_status\":\"received\"}"); /* no change of status */
    publish(f->bus, RT_EV_INTENT_UPDATE, "not json");
    snprintf(b, sizeof b,
             "{\"event_type\":\"BRIDGE_STARTED\",\"intent_id\":\"i2\",\"created_at\":\"%s.000\","
             "\"payload\":{\"bridge_type\":\"sepa\"}}",
             now);
    publish(f->bus, RT_EV_AUDIT_LOG, b);
    snprintf(b, sizeof b,
             "{\"event_type\":\"BRIDGE_COMPLETED\",\"intent_id\":\"i2\",\"created_at\":\"%s.750\"}",
             now);
    publish(f->bus, RT_EV_AUDIT_LOG, b);
    wait_events(f, RT_EV_INTENT_UPDATE, 9);
    wait_events(f, RT_EV_AUDIT_LOG, 2);

    json_t *o = overview(f);
    assert_int_equal(json_integer_value(json_object_get(o, "total_intents")), 6);
    json_t *d = json_object_get(o, "status_distribution");
    assert_int_equal(json_integer_value(json_object_get(d, "received")), 4);
    assert_int_equal(json_integer_value(json_object_get(d, "failed")), 1);
    assert_int_equal(json_integer_value(json_object_get(d, "null")), 1);
    assert_int_equal(json_object_size(d), 3);
    json_t *ra = json_object_get(o, "recent_activity");
    assert_int_equal(json_integer_value(json_object_get(ra, "last_hour")), 5);
    assert_int_equal(json_integer_value(json_object_get(ra, "last_7d")), 5);
    assert_true(json_is_null(json_object_get(o, "etl_lag_seconds")));
    const char *keys[] = {"total_intents",   "status_distribution",    "recent_activity",
                          "correction_rate", "avg_processing_time_ms", "active_websockets",
                          "active_sse",      "events_per_second",      "etl_lag_seconds"};
    assert_int_equal(json_object_size(o), sizeof keys / sizeof keys[0]);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_object_get(o, keys[i])) fail_msg("overview lacks %s", keys[i]);
    json_decref(o);

    double v;
    assert_int_equal(rt_metrics_value(f->m, "intents_created_10m", &v), 0);
    assert_true(v == 5);
    assert_int_equal(rt_metrics_value(f->m, "failed_rate_10m", &v), 0);
    assert_true(v == 1.0 / 5);
    assert_int_equal(rt_metrics_value(f->m, "no_such_value", &v), -1);
    for (const char *const *n = rt_metrics_value_names(); *n; n++)
        assert_int_equal(rt_metrics_value(f->m, *n, &v), 0);

    char *text;
    assert_int_equal(call(f, "/metrics", "", &text), 200);
    const char *want[] = {
        "bridge_intents_total{status=\"received\"} 5\n",
        "bridge_intents_total{status=\"failed\"} 1\n",
        "bridge_active_intents{status=\"received\"} 4\n",
        "realtime_events_total{type=\"intent_update\"} 9\n",
        "realtime_events_total{type=\"audit_log\"} 2\n",
        "bridge_processing_duration_seconds_bucket{bridge_type=\"sepa\",le=\"0.5\"} 0\n",
        "bridge_processing_duration_seconds_bucket{bridge_type=\"sepa\",le=\"1\"} 1\n",
        "bridge_processing_duration_seconds_sum{bridge_type=\"sepa\"} 0.75\n",
        "bridge_processing_duration_seconds_count{bridge_type=\"sepa\"} 1\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i])) fail_msg("/metrics lacks %s\n%s", want[i], text);
    free(text);
}

/* More distinct statuses than the table holds: the rest are "other", and
 * nothing is lost or written out of bounds (ASan watches this one). */
static void test_many_statuses(void **state)
{
    fx_t *f = *state;
    assert_int_equal(rt_metrics_start(f->m), 0);
    char b[256];
    for (int i = 0; i < 40; i++) {
        snprintf(b, sizeof b,
                 "{\"intent_id\":\"s%d\",\"status\":\"st%02d\",\"event_type\":\"INSERT\","
                 "\"old_status\":null}",
                 i, i);
        publish(f->bus, RT_EV_INTENT_UPDATE, b);
    }
    wait_events(f, RT_EV_INTENT_UPDATE, 40);
    uint64_t deadline = rt_mono_ns() + 5000000000u;
    json_t *o;
    while ((o = overview(f)) && json_integer_value(json_object_get(o, "total_intents")) < 40 &&
           rt_mono_ns() < deadline) {
        json_decref(o);
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(json_integer_value(json_object_get(o, "total_intents")), 40);
    json_t *d = json_object_get(o, "status_distribution");
    assert_int_equal(json_object_size(d), RT_M_MAX_STATUS);
    assert_int_equal(json_integer_value(json_object_get(d, "st00")), 1);
    assert_int_equal(json_integer_value(json_object_get(d, "other")), 40 - (RT_M_MAX_STATUS - 1));
    json_decref(o);
}

/* Every sample belongs to a family announced with HELP and TYPE before it;
 * counters end in _total; histogram buckets never decrease and end with
 * +Inf equal to _count. */
static void test_prometheus_structure(void **state)
{
    fx_t *f = *state;
    char *text;
    assert_int_equal(call(f, "/metrics", "", &text), 200);
    /* This process started within the last hour and has some fds open. */
    const char *st = strstr(text, "\nprocess_start_time_seconds ");
    assert_non_null(st);
    double started = strtod(st + strlen("\nprocess_start_time_seconds "), NULL);
    double now = (double)rt_now_ns() / 1e9;
    if (!(started <= now + 1 && started > now - 3600))
        fail_msg("start time %f, now %f", started, now);
    const char *fds = strstr(text, "\nprocess_open_fds ");
    assert_non_null(fds);
    assert_true(strtol(fds + strlen("\nprocess_open_fds "), NULL, 10) >= 3);
    char help[128] = "", type_name[128] = "", type[32] = "";
    unsigned long last_bucket = 0;
    int families = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[128];
        if (sscanf(line, "# HELP %127s", help) == 1) continue;
        if (sscanf(line, "# TYPE %127s %31s", type_name, type) == 2) {
            assert_string_equal(type_name, help);
            families++;
            last_bucket = 0;
            if (strcmp(type, "counter") == 0) {
                size_t n = strlen(type_name);
                if (n < 6 || strcmp(type_name + n - 6, "_total") != 0)
                    fail_msg("counter %s does not end in _total", type_name);
            }
            continue;
        }
        assert_true(line[0] != '#');
        size_t n = strcspn(line, "{ ");
        snprintf(name, sizeof name, "%.*s", (int)n, line);
        if (strcmp(type, "histogram") == 0) {
            size_t tl = strlen(type_name);
            if (strncmp(name, type_name, tl) != 0 ||
                (strcmp(name + tl, "_bucket") && strcmp(name + tl, "_sum") &&
                 strcmp(name + tl, "_count")))
                fail_msg("sample %s outside histogram %s", name, type_name);
            const char *sp = strrchr(line, ' ');
            unsigned long c = strtoul(sp + 1, NULL, 10);
            if (strcmp(name + tl, "_bucket") == 0) {
                if (c < last_bucket) fail_msg("bucket decreases: %s", line);
                last_bucket = c;
            } else if (strcmp(name + tl, "_count") == 0) {
                assert_int_equal(c, last_bucket);
                last_bucket = 0;
            }
        } else if (strcmp(name, type_name) != 0) {
            fail_msg("sample %s without its own HELP/TYPE (last family %s)", name, type_name);
        }
    }
    assert_true(families > 30);
    free(text);
}

static void test_stats_updated(void **state)
{
    fx_t *f = *state;
    rt_bus_sub_t *sub = rt_bus_subscribe(f->bus, "test", 64, 1u << RT_EV_STATS_UPDATED, NULL, NULL);
    assert_non_null(sub);
    assert_int_equal(rt_metrics_start(f->m), 0);
    rt_event_t *ev = NULL;
    uint64_t deadline = rt_mono_ns() + 5000000000u;
    while (!ev && rt_mono_ns() < deadline) {
        rt_bus_wait(sub, 100);
        if (rt_bus_drain(sub, &ev, 1) == 0) ev = NULL;
    }
    assert_non_null(ev);
    assert_int_equal(ev->type, RT_EV_STATS_UPDATED);
    json_t *j = json_loadb(ev->body, ev->body_len, 0, NULL);
    assert_non_null(json_object_get(j, "total_intents"));
    assert_non_null(json_object_get(j, "recent_activity"));
    json_decref(j);
    assert_non_null(strstr(ev->sse, "event: stats_updated\n"));
    rt_event_unref(ev);
    rt_metrics_stop(f->m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iso_parse_valid),
        cmocka_unit_test(test_iso_parse_invalid),
        cmocka_unit_test(test_iso_format_roundtrip),
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_sql_time),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test_setup_teardown(test_timeline_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrections_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_without_database, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counts_from_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_statuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prometheus_structure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_updated, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
