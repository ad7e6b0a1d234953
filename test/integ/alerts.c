/*
 * Integration tests for the alert evaluator (lib/alerts.c, lib/alertrules.c,
 * lib/notify.c) against a real PostgreSQL, with notification receivers on
 * 127.0.0.1 started here (test/support/sink.h): an HTTP server that records
 * requests and can answer 500 or hang, and an SMTP sink.
 *
 * Covered: every kind of invalid rules file gives its message (rule and
 * field named); firing exactly past the threshold, cooldown of reminders,
 * one resolution; a poke fires a metric rule at once; `for` delays firing;
 * 500 then 200 delivered after a retry; a hanging receiver times out
 * without delaying another rule; stopping abandons a request in flight; an
 * unreachable database; query errors and timeouts counted and retried while
 * other rules fire, and a rule that keeps timing out does not delay the
 * others; restart while firing does not notify again; one leader per
 * database, and a standby takes over without notifying again; webhook,
 * Slack and e-mail bodies; STARTTLS required; alert events on the bus;
 * reload good and bad; the /metrics families.
 */
#include "pgtest.h"
#include "sink.h"

#include "alerts.h"
#include "bus.h"
#include "log.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ms(void)
{
    return rt_mono_ns() / 1000000u;
}

#define WAIT_FOR(cond, ms)                                                                         \
    do {                                                                                           \
        uint64_t wf_deadline_ = now_ms() + (ms);                                                   \
        while (!(cond) && now_ms() < wf_deadline_)                                                 \
            usleep(5000);                                                                          \
    } while (0)

/* ---- metrics the rules read ---------------------------------------------------------- */

static pthread_mutex_t metric_mu = PTHREAD_MUTEX_INITIALIZER;
static double metric_m1, metric_m2;
static const char *const metric_names[] = {"m1", "m2", NULL};

static int metric_fn(void *arg, const char *name, double *out)
{
    (void)arg;
    int rc = 0;
    pthread_mutex_lock(&metric_mu);
    if (strcmp(name, "m1") == 0)
        *out = metric_m1;
    else if (strcmp(name, "m2") == 0)
        *out = metric_m2;
    else
        rc = -1;
    pthread_mutex_unlock(&metric_mu);
    return rc;
}

static void set_metric(double *m, double v)
{
    pthread_mutex_lock(&metric_mu);
    *m = v;
    pthread_mutex_unlock(&metric_mu);
}

/* ---- fixture ------------------------------------------------------------------------- */

typedef struct {
    char *url;
    PGconn *db;
    sink_t *http;
    char dir[64], path[128], hook[96], slack[96];
    rt_bus_t *bus;
    rt_bus_sub_t *sub;
} fx_t;

static void fx_open(fx_t *f, const char *prefix)
{
    memset(f, 0, sizeof *f);
    f->url = pgt_create_db(prefix);
    pgt_migrate(f->url);
    f->db = pgt_connect(f->url);
    f->http = sink_http_start();
    snprintf(f->hook, sizeof f->hook, "http://127.0.0.1:%d/hook", sink_port(f->http));
    snprintf(f->slack, sizeof f->slack, "http://127.0.0.1:%d/slack", sink_port(f->http));
    snprintf(f->dir, sizeof f->dir, "/tmp/rt-alerts-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/rules.json", f->dir);
    f->bus = rt_bus_new();
    f->sub =
        rt_bus_subscribe(f->bus, "test", 1024,
                         (1u << RT_EV_ALERT_FIRING) | (1u << RT_EV_ALERT_RESOLVED), NULL, NULL);
    assert_non_null(f->sub);
    set_metric(&metric_m1, 0);
    set_metric(&metric_m2, 0);
}

static void fx_close(fx_t *f)
{
    rt_bus_free(f->bus);
    sink_stop(f->http);
    unlink(f->path);
    rmdir(f->dir);
    PQfinish(f->db);
    pgt_drop_db(f->url);
    free(f->url);
}

static void write_rules(const fx_t *f, const char *json)
{
    FILE *o = fopen(f->path, "w");
    assert_non_null(o);
    fputs(json, o);
    fclose(o);
}

static rt_alerts_opts_t opts(const fx_t *f)
{
    return (rt_alerts_opts_t){
        .conninfo = f->url,
        .rules_path = f->path,
        .query_timeout_ms = 2000,
        .leader_retry_ms = 100,
        .reconnect_ms = 100,
        .notify = {.webhook_url = f->hook,
                   .slack_url = f->slack,
                   .timeout_ms = 2000,
                   .tries = 3,
                   .backoff_ms = 100},
        .bus = f->bus,
        .metric_value = metric_fn,
        .metric_names = metric_names,
    };
}

static rt_alerts_t *start(const rt_alerts_opts_t *o)
{
    rt_alerts_t *a = rt_alerts_new(o);
    assert_non_null(a);
    assert_int_equal(rt_alerts_start(a), 0);
    return a;
}

static rt_alerts_counts_t counts(rt_alerts_t *a)
{
    rt_alerts_counts_t c;
    rt_alerts_counts(a, &c);
    return c;
}

/* The /metrics text of the evaluator (caller frees). */
static char *exposition(rt_alerts_t *a)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    rt_alerts_exposition(a, m);
    fclose(m);
    return buf;
}

static int exposition_has(rt_alerts_t *a, const char *line)
{
    char *e = exposition(a);
    int yes = strstr(e, line) != NULL;
    free(e);
    return yes;
}

/* The "timestamp" of the k-th recorded webhook body containing match, as
 * milliseconds since the epoch. */
static int64_t body_time_ms(sink_t *s, const char *match, size_t k)
{
    char *body = sink_item(s, match, k, NULL);
    assert_non_null(body);
    json_t *j = json_loads(body, 0, NULL);
    const char *ts = json_string_value(json_object_get(j, "timestamp"));
    assert_non_null(ts);
    struct tm tm = {0};
    int ms = 0;
    if (sscanf(ts, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &ms) != 7)
        fail_msg("bad timestamp %s", ts);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t t = (int64_t)timegm(&tm) * 1000 + ms;
    json_decref(j);
    free(body);
    return t;
}

static long long db_ll(fx_t *f, const char *sql)
{
    return pgt_scalar_ll(f->db, sql);
}

/* ---- invalid files ---------------------------------------------------------------------- */

#define RULE_A(extra)                                                                              \
    "{\"rules\":[{\"name\":\"a\",\"severity\":\"warning\",\"condition\":{\"sql\":\"SELECT 1\"},"   \
    "\"threshold\":1" extra "}]}"

static void expect_problem(fx_t *f, const char *json, const char *want)
{
    write_rules(f, json);
    rt_alerts_opts_t o = opts(f);
    o.notify.slack_url = NULL;
    rt_alert_env_t env = rt_alerts_env(&o);
    rt_alert_problems_t p = {0};
    rt_alert_rules_t *r = rt_alerts_load_checked(f->path, f->url, &env, 0, &p);
    if (r) fail_msg("accepted: %s", json);
    int found = 0;
    for (size_t i = 0; i < p.n; i++)
        found |= strstr(p.msg[i], want) != NULL;
    if (!found) {
        fprintf(stderr, "problems for %s:\n", json);
        rt_alert_problems_print(&p, "  ", stderr);
        fail_msg("no problem mentions: %s", want);
    }
    rt_alert_problems_free(&p);
}

static void test_invalid_files(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_invalid");
    pgt_exec(f.db, "CREATE TABLE t (v int)");
    expect_problem(&f, RULE_A(",\"operator\":\"=>\""),
                   "rule 'a': field 'operator': invalid value '=>'");
    expect_problem(&f, RULE_A(",\"treshold\":2"), "rule 'a': field 'treshold': unknown field");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":{\"sql\":"
                   "\"SELECT 1\"},\"threshold\":1},{\"name\":\"a\",\"severity\":\"info\","
                   "\"condition\":{\"sql\":\"SELECT 2\"},\"threshold\":1}]}",
                   "rule 'a': field 'name': duplicate name (rule #1 has it too)");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":{\"sql\":"
                   "\"SELEC 1\"},\"threshold\":1}]}",
                   "rule 'a': field 'condition.sql': does not parse: syntax error");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":{\"sql\":"
                   "\"SELECT count(*) FROM nosuch\"},\"threshold\":1}]}",
                   "relation \"nosuch\" does not exist");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":{\"sql\":"
                   "\"SELECT 'x'::text\"},\"threshold\":1}]}",
                   "rule 'a': field 'condition.sql': column 'text' is not a number");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":{\"sql\":"
                   "\"SELECT 1, 2\"},\"threshold\":1}]}",
                   "returns 2 columns, want one number");
    expect_problem(&f, RULE_A(",\"channels\":[\"slack\"]"),
                   "rule 'a': field 'channels': channel 'slack' is not configured (set "
                   "--slack-webhook-url)");
    expect_problem(&f, RULE_A(",\"channels\":[\"pager\"]"), "unknown channel 'pager'");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":{\"metric\":"
                   "\"zz\"},\"threshold\":1}]}",
                   "rule 'a': field 'condition.metric': unknown metric 'zz' (known: m1, m2)");
    expect_problem(&f,
                   "{\"rules\":[{\"name\":\"a\",\"severity\":\"bad\",\"condition\":{\"sql\":"
                   "\"SELECT 1\"},\"threshold\":1}]}",
                   "rule 'a': field 'severity': invalid value 'bad'");
    expect_problem(&f, RULE_A(",\"interval\":\"5 minutes\""), "rule 'a': field 'interval'");
    expect_problem(&f, RULE_A(",\"interval\":0.01"), "must be at least 100 ms");
    expect_problem(&f, "{\"rules\":[{\"name\":\"a\"", "rules.json: line 1");
    expect_problem(&f, "{\"rule\":[]}", "unknown top-level field 'rule'");
    expect_problem(&f, "{\"rules\":[{\"severity\":\"info\"}]}", "rule #1: field 'name': missing");

    /* Several problems: all of them reported, not just the first. */
    write_rules(&f, "{\"rules\":[{\"name\":\"a\",\"severity\":\"x\",\"operator\":\"~\","
                    "\"condition\":{},\"bogus\":1}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alert_env_t env = rt_alerts_env(&o);
    rt_alert_problems_t p = {0};
    assert_null(rt_alerts_load_checked(f.path, f.url, &env, 0, &p));
    if (p.n < 5) {
        rt_alert_problems_print(&p, "  ", stderr);
        fail_msg("want >= 5 problems, got %zu", p.n);
    }
    rt_alert_problems_free(&p);

    /* Missing file. */
    unlink(f.path);
    assert_null(rt_alerts_load_checked(f.path, f.url, &env, 0, &p));
    assert_non_null(strstr(p.msg[0], "cannot open"));
    rt_alert_problems_free(&p);

    /* And the evaluator refuses to start with a bad file. */
    write_rules(&f, RULE_A(",\"operator\":\"=>\""));
    errno = 0;
    assert_null(rt_alerts_new(&o));
    assert_int_equal(errno, EINVAL);
    fx_close(&f);
}

/* ---- firing, cooldown, resolution, bodies, bus events, history ------------------------- */

static void test_fire_cooldown_resolve(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_fire");
    write_rules(&f, "{\"rules\":[{\"name\":\"cool\",\"description\":\"m1 too high\","
                    "\"severity\":\"error\",\"condition\":{\"metric\":\"m1\"},\"operator\":\">\","
                    "\"threshold\":10,\"interval\":\"100ms\",\"cooldown\":\"1500ms\","
                    "\"channels\":[\"webhook\",\"log\"],\"labels\":{\"team\":\"ops\"}}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).leader == 1 && counts(a).evaluations >= 3, 5000);
    assert_int_equal(counts(a).leader, 1);
    /* Exactly at the threshold: > does not hold. */
    set_metric(&metric_m1, 10);
    uint64_t e0 = counts(a).evaluations;
    WAIT_FOR(counts(a).evaluations >= e0 + 3, 3000);
    assert_int_equal(sink_count(f.http, NULL), 0);

    set_metric(&metric_m1, 20);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "\"state\":\"firing\"", 1, 3000), 1);
    uint64_t t_fire = now_ms();

    /* The webhook body: the spec's keys plus state. */
    int status = 0;
    char *body = sink_item(f.http, "firing", 0, &status);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "rule")), "cool");
    assert_string_equal(json_string_value(json_object_get(j, "severity")), "error");
    assert_string_equal(json_string_value(json_object_get(j, "state")), "firing");
    assert_true(json_number_value(json_object_get(j, "value")) == 20.0);
    assert_true(json_number_value(json_object_get(j, "threshold")) == 10.0);
    assert_non_null(strstr(json_string_value(json_object_get(j, "message")),
                           "[ERROR] cool\nm1 too high\nCurrent value: 20.00"));
    assert_non_null(json_string_value(json_object_get(j, "timestamp")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "labels"), "team")),
                        "ops");
    json_decref(j);
    free(body);

    /* Within the cooldown, evaluations go on but no reminder is sent. */
    uint64_t e1 = counts(a).evaluations;
    WAIT_FOR(counts(a).evaluations >= e1 + 5, 3000);
    if (now_ms() - t_fire < 1400) assert_int_equal(sink_count(f.http, "firing"), 1);
    /* After it, one reminder. */
    assert_int_equal(sink_wait(f.http, "\"state\":\"firing\"", 2, 4000), 2);
    /* Measured between the decisions (the bodies' timestamps), not the
     * arrivals, which a loaded machine may delay unevenly. */
    int64_t gap = body_time_ms(f.http, "\"state\":\"firing\"", 1) -
                  body_time_ms(f.http, "\"state\":\"firing\"", 0);
    if (gap < 1500) fail_msg("reminder after %lld ms, cooldown is 1500", (long long)gap);

    /* Resolution: notified once. */
    set_metric(&metric_m1, 1);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "\"state\":\"resolved\"", 1, 3000), 1);
    uint64_t e2 = counts(a).evaluations;
    WAIT_FOR(counts(a).evaluations >= e2 + 5, 3000);
    assert_int_equal(sink_count(f.http, "\"state\":\"resolved\""), 1);
    assert_int_equal(sink_count(f.http, "\"state\":\"firing\""), 2);

    /* The bus saw one alert_firing and one alert_resolved (reminders are not events). */
    rt_event_t *evs[8];
    size_t n = rt_bus_drain(f.sub, evs, 8);
    assert_int_equal(n, 2);
    assert_int_equal(evs[0]->type, RT_EV_ALERT_FIRING);
    assert_int_equal(evs[1]->type, RT_EV_ALERT_RESOLVED);
    assert_non_null(strstr(evs[0]->body, "\"rule\":\"cool\""));
    assert_non_null(strstr(evs[0]->body, "\"status\":\"firing\""));
    assert_non_null(strstr(evs[1]->body, "\"status\":\"resolved\""));
    assert_non_null(strstr(evs[0]->sse, "event: alert_firing"));
    for (size_t i = 0; i < n; i++)
        rt_event_unref(evs[i]);

    /* History: firing, reminder, resolved; state row resolved. */
    WAIT_FOR(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE notified") == 3, 3000);
    assert_int_equal(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE notified"), 3);
    assert_int_equal(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE state = 'resolved'"), 1);
    WAIT_FOR(db_ll(&f, "SELECT count(*) FROM rt_alert_state WHERE state = 'resolved'") == 1, 3000);
    assert_int_equal(db_ll(&f, "SELECT count(*) FROM rt_alert_state WHERE rule = 'cool' AND "
                               "state = 'resolved'"),
                     1);
    rt_alerts_free(a);
    fx_close(&f);
}

/* A metric rule with a one-minute interval fires within a second of a poke
 * (the metrics aggregator pokes after each snapshot). */
static void test_poke_fires_promptly(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_poke");
    write_rules(&f, "{\"rules\":[{\"name\":\"spike\",\"severity\":\"error\",\"condition\":"
                    "{\"metric\":\"m1\"},\"threshold\":100,\"interval\":\"1m\",\"channels\":"
                    "[\"webhook\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).evaluations >= 1, 5000); /* the first evaluation, on taking the lead */
    assert_int_equal(counts(a).evaluations, 1);
    set_metric(&metric_m1, 500);
    uint64_t t0 = now_ms();
    rt_alerts_poke_cb(a);
    assert_int_equal(sink_wait(f.http, "spike", 1, 5000), 1);
    uint64_t took = now_ms() - t0;
    /* The requirement is a second; the bound leaves room for a loaded test
     * machine. Without the poke it would take the one-minute interval. */
    if (took > 2000) fail_msg("fired %llu ms after the poke", (unsigned long long)took);
    printf("measured: poke to webhook received: %llu ms\n", (unsigned long long)took);
    rt_alerts_free(a);
    fx_close(&f);
}

static atomic_int poker_done;

static void *poker(void *arg)
{
    while (!atomic_load(&poker_done))
        rt_alerts_poke(arg);
    return NULL;
}

/* Pokes from another thread (the metrics worker) may race with the stop. */
static void test_poke_during_stop(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_pokestop");
    write_rules(&f, "{\"rules\":[{\"name\":\"p\",\"severity\":\"info\",\"condition\":"
                    "{\"metric\":\"m1\"},\"threshold\":10,\"interval\":\"1m\"}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).evaluations >= 1, 5000);
    atomic_store(&poker_done, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, poker, a), 0);
    WAIT_FOR(counts(a).evaluations >= 20, 5000); /* pokes arrive */
    assert_true(counts(a).evaluations >= 20);
    rt_alerts_stop(a);
    atomic_store(&poker_done, 1);
    pthread_join(t, NULL);
    rt_alerts_free(a);
    fx_close(&f);
}

/* ---- for ---------------------------------------------------------------------------------- */

static void test_for_delays_firing(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_for");
    write_rules(&f, "{\"rules\":[{\"name\":\"held\",\"severity\":\"warning\",\"condition\":"
                    "{\"metric\":\"m2\"},\"threshold\":10,\"for\":\"800ms\",\"interval\":"
                    "\"100ms\",\"channels\":[\"webhook\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).leader == 1, 5000);
    uint64_t t0 = now_ms();
    set_metric(&metric_m2, 50);
    rt_alerts_poke(a);
    /* Pending first (recorded), not firing. */
    WAIT_FOR(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE state = 'pending'") == 1, 3000);
    assert_int_equal(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE state = 'pending'"), 1);
    if (now_ms() - t0 < 700) assert_int_equal(sink_count(f.http, "held"), 0);
    assert_int_equal(sink_wait(f.http, "\"state\":\"firing\"", 1, 4000), 1);
    uint64_t took = now_ms() - t0;
    if (took < 800) fail_msg("fired after %llu ms, for is 800", (unsigned long long)took);
    rt_alerts_free(a);
    fx_close(&f);
}

/* ---- retry, hang ------------------------------------------------------------------------ */

static void test_retry_after_500(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_retry");
    write_rules(&f, "{\"rules\":[{\"name\":\"retry_rule\",\"severity\":\"warning\",\"condition\":"
                    "{\"metric\":\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":"
                    "[\"webhook\"]}]}");
    sink_fail_next(f.http, "retry_rule", 1);
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    set_metric(&metric_m1, 11);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "retry_rule", 2, 5000), 2);
    int s0 = 0, s1 = 0;
    free(sink_item(f.http, "retry_rule", 0, &s0));
    free(sink_item(f.http, "retry_rule", 1, &s1));
    assert_int_equal(s0, 500);
    assert_int_equal(s1, 200);
    WAIT_FOR(exposition_has(a, "rtbridge_alert_notifications_total{channel=\"webhook\"} 1\n"),
             2000);
    char *e = exposition(a);
    if (!strstr(e, "rtbridge_alert_notification_retries_total{channel=\"webhook\"} 1\n") ||
        !strstr(e, "rtbridge_alert_notification_failures_total{channel=\"webhook\"} 0\n") ||
        !strstr(e, "rtbridge_alert_notifications_total{channel=\"webhook\"} 1\n"))
        fail_msg("exposition:\n%s", e);
    /* Every family has HELP and TYPE. */
    const char *fams[] = {"rtbridge_alert_rule_state",
                          "rtbridge_alert_rule_error",
                          "rtbridge_alert_evaluations_total",
                          "rtbridge_alert_evaluation_errors_total",
                          "rtbridge_alert_notifications_total",
                          "rtbridge_alert_notification_failures_total",
                          "rtbridge_alert_notification_retries_total",
                          "rtbridge_alert_leader"};
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        char h[128], t[128];
        snprintf(h, sizeof h, "# HELP %s ", fams[i]);
        snprintf(t, sizeof t, "# TYPE %s ", fams[i]);
        if (!strstr(e, h) || !strstr(e, t)) fail_msg("no HELP/TYPE for %s:\n%s", fams[i], e);
    }
    assert_non_null(strstr(
        e,
        "rtbridge_alert_rule_state{rule=\"retry_rule\",severity=\"warning\",state=\"firing\"} 1"));
    assert_non_null(strstr(e, "rtbridge_alert_leader 1"));
    free(e);
    rt_alerts_free(a);
    fx_close(&f);
}

static void test_hanging_receiver(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_hang");
    write_rules(&f, "{\"rules\":["
                    "{\"name\":\"hang_rule\",\"severity\":\"warning\",\"condition\":{\"metric\":"
                    "\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":[\"webhook\"]},"
                    "{\"name\":\"quick_rule\",\"severity\":\"warning\",\"condition\":{\"metric\":"
                    "\"m2\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":[\"webhook\"]}"
                    "]}");
    sink_hang(f.http, "hang_rule");
    rt_alerts_opts_t o = opts(&f);
    o.notify.timeout_ms = 4000;
    o.notify.tries = 1;
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).leader == 1, 5000);
    set_metric(&metric_m1, 11);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "hang_rule", 1, 3000), 1);
    /* hang_rule's request is now held open; quick_rule fires meanwhile. */
    uint64_t t0 = now_ms();
    set_metric(&metric_m2, 11);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "quick_rule", 1, 3000), 1);
    uint64_t took = now_ms() - t0;
    if (took > 2500)
        fail_msg("quick_rule took %llu ms while another receiver hung", (unsigned long long)took);
    int st = -1;
    free(sink_item(f.http, "hang_rule", 0, &st));
    assert_int_equal(st, 0); /* still unanswered */
    /* The hung request times out and is counted as a failure. */
    WAIT_FOR(
        exposition_has(a, "rtbridge_alert_notification_failures_total{channel=\"webhook\"} 1\n"),
        4000);
    assert_true(
        exposition_has(a, "rtbridge_alert_notification_failures_total{channel=\"webhook\"} 1\n"));
    rt_alerts_free(a);
    fx_close(&f);
}

/* Stopping with a notification in flight abandons it at once. */
static void test_stop_with_request_in_flight(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_stop");
    write_rules(&f, "{\"rules\":[{\"name\":\"hang_rule\",\"severity\":\"warning\",\"condition\":"
                    "{\"metric\":\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":"
                    "[\"webhook\"]}]}");
    sink_hang(f.http, "hang_rule");
    rt_alerts_opts_t o = opts(&f);
    o.notify.timeout_ms = 30000;
    rt_alerts_t *a = start(&o);
    set_metric(&metric_m1, 11);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "hang_rule", 1, 3000), 1);
    uint64_t t0 = now_ms();
    rt_alerts_free(a);
    uint64_t took = now_ms() - t0;
    if (took > 3000) fail_msg("stop took %llu ms", (unsigned long long)took);
    fx_close(&f);
}

/* An unreachable database: serve (lenient) starts with the SQL unchecked and
 * keeps retrying; alerts check (strict) refuses. Stop stays prompt. */
static void test_unreachable_database(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_unreach");
    write_rules(&f, "{\"rules\":[{\"name\":\"q\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELECT 1\"},\"threshold\":0,\"interval\":\"100ms\"}]}");
    rt_alerts_opts_t o = opts(&f);
    o.conninfo = "postgresql://postgres@127.0.0.1:1/nowhere";
    rt_alert_env_t env = rt_alerts_env(&o);
    rt_alert_problems_t p = {0};
    assert_null(rt_alerts_load_checked(f.path, o.conninfo, &env, 0, &p));
    assert_int_equal(p.n, 1);
    assert_non_null(strstr(p.msg[0], "cannot check the SQL conditions: cannot connect"));
    rt_alert_problems_free(&p);
    rt_alerts_t *a = start(&o);
    usleep(300000); /* a few failed connection attempts (100 ms apart) */
    assert_int_equal(counts(a).leader, 0);
    assert_int_equal(counts(a).evaluations, 0);
    uint64_t t0 = now_ms();
    rt_alerts_free(a);
    if (now_ms() - t0 > 3000) fail_msg("stop took %llu ms", (unsigned long long)(now_ms() - t0));
    fx_close(&f);
}

/* ---- SQL errors, timeouts ------------------------------------------------------------- */

static void test_sql_errors_do_not_stall(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_sqlerr");
    pgt_exec(f.db, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)");
    write_rules(&f, "{\"rules\":["
                    "{\"name\":\"slow\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELECT 1 FROM pg_sleep(2)\"},\"threshold\":0,\"interval\":\"200ms\"},"
                    "{\"name\":\"div\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELECT v / 0 FROM t\"},\"threshold\":0,\"interval\":\"200ms\"},"
                    "{\"name\":\"ok\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELECT v FROM t\"},\"threshold\":5,\"interval\":\"200ms\","
                    "\"channels\":[\"webhook\"]}"
                    "]}");
    rt_alerts_opts_t o = opts(&f);
    o.query_timeout_ms = 200;
    rt_alerts_t *a = start(&o);
    assert_int_equal(sink_wait(f.http, "\"rule\":\"ok\"", 1, 5000), 1);
    /* Both failing rules are retried: several errors each. */
    WAIT_FOR(counts(a).errors >= 6, 8000);
    char *e = exposition(a);
    if (!strstr(e, "rtbridge_alert_rule_error{rule=\"slow\"} 1") ||
        !strstr(e, "rtbridge_alert_rule_error{rule=\"div\"} 1") ||
        !strstr(e, "rtbridge_alert_rule_error{rule=\"ok\"} 0") || counts(a).errors < 6)
        fail_msg("errors %llu; exposition:\n%s", (unsigned long long)counts(a).errors, e);
    free(e);
    /* One error record per rule (on entering error), not one per attempt. */
    WAIT_FOR(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE state = 'error'") == 2, 3000);
    assert_int_equal(db_ll(&f, "SELECT count(*) FROM rt_alert_events WHERE state = 'error'"), 2);
    char *msg = pgt_scalar_str(f.db, "SELECT message FROM rt_alert_events WHERE rule = 'slow' AND "
                                     "state = 'error'");
    assert_non_null(strstr(msg, "timed out after 200 ms"));
    free(msg);
    rt_alerts_free(a);
    fx_close(&f);
}

/* A rule that keeps timing out moves to a connection of its own: another
 * rule's changes are noticed within its interval, not after the timeout. */
static void test_slow_rule_does_not_delay_others(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_lanes");
    pgt_exec(f.db, "CREATE TABLE t (v int); INSERT INTO t VALUES (0)");
    write_rules(&f, "{\"rules\":["
                    "{\"name\":\"slow\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELECT 1 FROM pg_sleep(10)\"},\"threshold\":0,\"interval\":\"100ms\"},"
                    "{\"name\":\"quick\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELECT v FROM t\"},\"threshold\":5,\"interval\":\"100ms\","
                    "\"channels\":[\"webhook\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    o.query_timeout_ms = 2500;
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).errors >= 1, 8000); /* slow has timed out once */
    assert_true(counts(a).errors >= 1);
    uint64_t worst = 0;
    for (int k = 0; k < 4; k++) {
        const char *want = k % 2 == 0 ? "\"state\":\"firing\"" : "\"state\":\"resolved\"";
        uint64_t t0 = now_ms();
        pgt_exec(f.db, k % 2 == 0 ? "UPDATE t SET v = 10" : "UPDATE t SET v = 0");
        assert_int_equal(sink_wait(f.http, want, (size_t)k / 2 + 1, 8000), (size_t)k / 2 + 1);
        uint64_t took = now_ms() - t0;
        if (took > worst) worst = took;
    }
    printf("measured: worst change-to-webhook latency beside a rule timing out every 2.5 s: %llu "
           "ms\n",
           (unsigned long long)worst);
    if (worst > 1500) fail_msg("a change took %llu ms to notify", (unsigned long long)worst);
    WAIT_FOR(counts(a).errors >= 2, 8000); /* slow keeps being retried */
    assert_true(counts(a).errors >= 2);
    rt_alerts_free(a);
    fx_close(&f);
}

/* ---- restart, leadership ------------------------------------------------------------ */

static void test_restart_while_firing(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_restart");
    pgt_exec(f.db, "CREATE TABLE t (v int); INSERT INTO t VALUES (10)");
    write_rules(&f, "{\"rules\":[{\"name\":\"sticky\",\"severity\":\"critical\",\"condition\":"
                    "{\"sql\":\"SELECT max(v) FROM t\"},\"threshold\":5,\"interval\":\"100ms\","
                    "\"cooldown\":\"1h\",\"channels\":[\"webhook\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    assert_int_equal(sink_wait(f.http, "\"state\":\"firing\"", 1, 5000), 1);
    WAIT_FOR(db_ll(&f, "SELECT count(*) FROM rt_alert_state WHERE state = 'firing'") == 1, 3000);
    rt_alerts_free(a);

    a = start(&o);
    WAIT_FOR(counts(a).evaluations >= 5, 5000);
    assert_true(counts(a).evaluations >= 5);
    assert_int_equal(counts(a).firing, 1);
    assert_int_equal(sink_count(f.http, "sticky"), 1);
    /* It knew the rule was firing: clearing it notifies the resolution. */
    pgt_exec(f.db, "UPDATE t SET v = 0");
    assert_int_equal(sink_wait(f.http, "\"state\":\"resolved\"", 1, 5000), 1);
    rt_alerts_free(a);
    fx_close(&f);
}

static void test_one_leader(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_leader");
    write_rules(&f, "{\"rules\":[{\"name\":\"lead_rule\",\"severity\":\"warning\",\"condition\":"
                    "{\"metric\":\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"cooldown\":"
                    "\"1h\",\"channels\":[\"webhook\"]}]}");
    set_metric(&metric_m1, 50);
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    WAIT_FOR(counts(a).leader == 1, 5000);
    assert_int_equal(counts(a).leader, 1);
    assert_int_equal(sink_wait(f.http, "lead_rule", 1, 3000), 1);
    rt_alerts_t *b = start(&o);
    /* b retries the lock every 100 ms; watch it for 600 ms. */
    uint64_t until = now_ms() + 600;
    while (now_ms() < until) {
        assert_int_equal(counts(b).leader, 0);
        usleep(20000);
    }
    assert_int_equal(counts(b).evaluations, 0);
    WAIT_FOR(db_ll(&f, "SELECT count(*) FROM rt_alert_state WHERE state = 'firing'") == 1, 3000);
    rt_alerts_free(a);
    WAIT_FOR(counts(b).leader == 1, 5000);
    assert_int_equal(counts(b).leader, 1);
    WAIT_FOR(counts(b).evaluations >= 5, 3000);
    assert_int_equal(counts(b).firing, 1);
    assert_int_equal(sink_count(f.http, "lead_rule"), 1); /* no second notification */
    rt_alerts_free(b);
    fx_close(&f);
}

/* ---- Slack, e-mail -------------------------------------------------------------------- */

/* Starts an SMTP sink and points o's e-mail channel at it (url: the buffer
 * that holds its URL, alive as long as o). */
static sink_t *with_smtp(rt_alerts_opts_t *o, const char *scheme, char *url, size_t len,
                         const char *to)
{
    sink_t *smtp = sink_smtp_start();
    snprintf(url, len, "%s://127.0.0.1:%d", scheme, sink_port(smtp));
    o->notify.smtp_url = url;
    o->notify.smtp_from = "alerts@example.com";
    o->notify.smtp_to = to;
    return smtp;
}

static void test_slack_and_email(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_mail");
    write_rules(&f, "{\"rules\":[{\"name\":\"mail_rule\",\"description\":\"too many\","
                    "\"severity\":\"critical\",\"condition\":{\"metric\":\"m1\"},\"threshold\":"
                    "10,\"interval\":\"100ms\",\"channels\":[\"slack\",\"email\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    char smtp_url[64];
    sink_t *smtp =
        with_smtp(&o, "smtp", smtp_url, sizeof smtp_url, "ops@example.com, dev@example.com");
    rt_alerts_t *a = start(&o);
    set_metric(&metric_m1, 99);
    rt_alerts_poke(a);

    assert_int_equal(sink_wait(f.http, "attachments", 1, 5000), 1);
    char *body = sink_item(f.http, "attachments", 0, NULL);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    json_t *att = json_array_get(json_object_get(j, "attachments"), 0);
    assert_string_equal(json_string_value(json_object_get(att, "color")), "#9c27b0");
    assert_non_null(strstr(json_string_value(json_object_get(att, "title")), "mail_rule"));
    assert_string_equal(json_string_value(json_object_get(att, "footer")),
                        "Bridge Lite Alert System");
    assert_non_null(
        strstr(json_string_value(json_object_get(att, "text")), "[CRITICAL] mail_rule"));
    assert_true(json_is_integer(json_object_get(att, "ts")));
    json_decref(j);
    free(body);

    assert_int_equal(sink_wait(smtp, "mail_rule", 1, 5000), 1);
    char *mail = sink_item(smtp, "mail_rule", 0, NULL);
    const char *want[] = {"FROM:<alerts@example.com>", "TO:<ops@example.com>",
                          "TO:<dev@example.com>",      "Subject: [CRITICAL] mail_rule\r\n",
                          "From: alerts@example.com",  "Current value: 99.00 (threshold: > 10)"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(mail, want[i])) fail_msg("mail lacks '%s':\n%s", want[i], mail);
    free(mail);

    /* Resolution goes to both, Slack in green. */
    set_metric(&metric_m1, 0);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(smtp, "[RESOLVED] mail_rule", 1, 5000), 1);
    assert_int_equal(sink_wait(f.http, "#36a64f", 1, 5000), 1);
    rt_alerts_free(a);
    sink_stop(smtp);
    fx_close(&f);
}

/* smtp+starttls:// requires STARTTLS: a server without it gets nothing in
 * plain text, and the failure is counted. */
static void test_starttls_required(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_starttls");
    write_rules(&f, "{\"rules\":[{\"name\":\"tls_rule\",\"severity\":\"info\",\"condition\":"
                    "{\"metric\":\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":"
                    "[\"email\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    char smtp_url[64];
    sink_t *smtp = with_smtp(&o, "smtp+starttls", smtp_url, sizeof smtp_url, "ops@example.com");
    o.notify.tries = 1;
    rt_alerts_t *a = start(&o);
    set_metric(&metric_m1, 99);
    rt_alerts_poke(a);
    WAIT_FOR(exposition_has(a, "rtbridge_alert_notification_failures_total{channel=\"email\"} 1\n"),
             5000);
    assert_true(
        exposition_has(a, "rtbridge_alert_notification_failures_total{channel=\"email\"} 1\n"));
    assert_int_equal(sink_count(smtp, NULL), 0);
    rt_alerts_free(a);
    sink_stop(smtp);
    fx_close(&f);
}

/* ---- reload ----------------------------------------------------------------------------- */

static void test_reload(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, "alerts_reload");
    write_rules(&f,
                "{\"rules\":[{\"name\":\"r1\",\"severity\":\"info\",\"condition\":{\"metric\":"
                "\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":[\"webhook\"]}]}");
    rt_alerts_opts_t o = opts(&f);
    rt_alerts_t *a = start(&o);
    set_metric(&metric_m1, 20);
    rt_alerts_poke(a);
    assert_int_equal(sink_wait(f.http, "\"rule\":\"r1\"", 1, 5000), 1);

    write_rules(&f, "{\"rules\":[{\"name\":\"r1\",\"severity\":\"info\",\"condition\":{\"metric\":"
                    "\"m1\"},\"threshold\":10,\"interval\":\"100ms\",\"channels\":[\"webhook\"]},"
                    "{\"name\":\"r2\",\"severity\":\"info\",\"condition\":{\"sql\":\"SELECT 3\"},"
                    "\"threshold\":1,\"interval\":\"100ms\",\"channels\":[\"webhook\"]}]}");
    assert_int_equal(rt_alerts_reload(a), 0);
    WAIT_FOR(counts(a).rules == 2, 3000);
    assert_int_equal(counts(a).rules, 2);
    assert_int_equal(sink_wait(f.http, "\"rule\":\"r2\"", 1, 5000), 1);
    /* r1 kept its state: still firing, not notified again. */
    assert_int_equal(counts(a).firing, 2);
    assert_int_equal(sink_count(f.http, "\"rule\":\"r1\""), 1);

    write_rules(&f, "{\"rules\":[{\"name\":\"r1\",\"severity\":\"info\",\"condition\":{\"sql\":"
                    "\"SELEC 1\"},\"threshold\":10}]}");
    assert_int_equal(rt_alerts_reload(a), -EINVAL);
    uint64_t e0 = counts(a).evaluations;
    WAIT_FOR(counts(a).evaluations >= e0 + 4, 3000);
    assert_int_equal(counts(a).rules, 2);
    assert_int_equal(counts(a).firing, 2);
    rt_alerts_free(a);
    fx_close(&f);
}

int main(void)
{
    rt_log_setup(RT_LOG_WARN, RT_LOG_TEXT, 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_files),
        cmocka_unit_test(test_fire_cooldown_resolve),
        cmocka_unit_test(test_poke_fires_promptly),
        cmocka_unit_test(test_poke_during_stop),
        cmocka_unit_test(test_for_delays_firing),
        cmocka_unit_test(test_retry_after_500),
        cmocka_unit_test(test_hanging_receiver),
        cmocka_unit_test(test_stop_with_request_in_flight),
        cmocka_unit_test(test_unreachable_database),
        cmocka_unit_test(test_sql_errors_do_not_stall),
        cmocka_unit_test(test_slow_rule_does_not_delay_others),
        cmocka_unit_test(test_restart_while_firing),
        cmocka_unit_test(test_one_leader),
        cmocka_unit_test(test_slack_and_email),
        cmocka_unit_test(test_starttls_required),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
