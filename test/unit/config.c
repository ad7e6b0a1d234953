/*
 * Unit tests for lib/config.c: defaults, every flag in both spellings, every
 * environment variable, precedence, every class of bad value for every type,
 * the value syntaxes (int, duration, size, bool) on their own, and the help
 * and Markdown output. The environment is a small table behind a fake getenv,
 * so tests never depend on, or change, the real one (except the one test of
 * getenv_fn == NULL, which restores what it sets). Every test frees what it
 * parsed, so the ASan build reports any leak.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "config.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers --------------------------------------------------------------- */

#define MAX_ENV 64
#define MAX_ARGS 16

static struct {
    const char *name, *value;
} env_table[MAX_ENV];
static size_t env_count;

static const char *fake_getenv(const char *name)
{
    for (size_t i = 0; i < env_count; i++)
        if (strcmp(env_table[i].name, name) == 0) return env_table[i].value;
    return NULL;
}

static void env_set(const char *name, const char *value)
{
    assert_true(env_count < MAX_ENV);
    env_table[env_count].name = name;
    env_table[env_count].value = value;
    env_count++;
}

static int reset_env(void **state)
{
    (void)state;
    env_count = 0;
    return 0;
}

/* Parses a NULL-terminated list of arguments with the fake environment. */
static int parse_list(rt_config_t *cfg, char *err, size_t errlen, const char *const *args)
{
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    while (args[argc]) {
        assert_true(argc < MAX_ARGS);
        argv[argc] = (char *)args[argc]; /* the parser does not write to argv */
        argc++;
    }
    argv[argc] = NULL;
    return rt_config_parse(cfg, argc, argv, fake_getenv, err, errlen);
}

#define PARSE(cfg, err, ...)                                                                       \
    parse_list(cfg, err, sizeof(err), (const char *const[]){__VA_ARGS__, NULL})
#define PARSE_NONE(cfg, err) parse_list(cfg, err, sizeof(err), (const char *const[]){NULL})

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (!strstr(h_, n_)) {                                                                     \
            print_error("expected \"%s\"\n     to contain \"%s\"\n", h_, n_);                      \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

#define assert_not_contains(hay, needle)                                                           \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (strstr(h_, n_)) {                                                                      \
            print_error("expected \"%s\"\n not to contain \"%s\"\n", h_, n_);                      \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

static void assert_cfg_zero(const rt_config_t *cfg)
{
    assert_null(cfg->database_url);
    assert_null(cfg->channels);
}

/* ---- one row per option: a valid value and another one ----------------------
 * value and value2 differ, and at least value differs from the default, so
 * each test sees that the value was really taken. */

/* K_BOOL: an int field whose flag takes no separate value ("--flag" alone
 * means true, the value goes after "="). */
typedef enum { K_STR, K_I64, K_INT, K_BOOL } kind_t;

typedef struct {
    const char *flag; /* with "--" */
    const char *env;
    kind_t kind;
    size_t offset;
    const char *value, *value2;
    int64_t want, want2; /* K_I64, K_INT, K_BOOL */
} opt_case_t;

#define OFF(f) offsetof(rt_config_t, f)

static const opt_case_t cases[] = {
    {"--database-url", "DATABASE_URL", K_STR, OFF(database_url), "postgres://u@db:5432/app",
     "host=db dbname=app", 0, 0},
    {"--channels", "RTBRIDGE_CHANNELS", K_STR, OFF(channels), "orders,audit_2", "x", 0, 0},
    {"--log-level", "RTBRIDGE_LOG_LEVEL", K_INT, OFF(log_level), "debug", "error", RT_LOG_DEBUG,
     RT_LOG_ERROR},
    {"--log-format", "RTBRIDGE_LOG_FORMAT", K_INT, OFF(log_format), "json", "text", RT_LOG_JSON,
     RT_LOG_TEXT},
    {"--bus-ring-size", "RTBRIDGE_BUS_RING_SIZE", K_I64, OFF(bus_ring_size), "16", "16777216",
     16, 16777216},
    {"--reconnect-min", "RTBRIDGE_RECONNECT_MIN", K_I64, OFF(reconnect_min_ms), "250ms", "2s", 250,
     2000},
    {"--reconnect-max", "RTBRIDGE_RECONNECT_MAX", K_I64, OFF(reconnect_max_ms), "5m", "1500",
     300000, 1500},
    {"--journal-retention", "RTBRIDGE_JOURNAL_RETENTION", K_I64, OFF(journal_retention_ms), "7d",
     "90m", 7 * 86400000LL, 90 * 60000LL},
    {"--format", "RTBRIDGE_TAIL_FORMAT", K_INT, OFF(tail_format), "text", "json", RT_TAIL_TEXT,
     RT_TAIL_JSON},
    {"--listen", "RTBRIDGE_LISTEN", K_STR, OFF(listen), "127.0.0.1:9000", "[::1]:80", 0, 0},
    {"--fanout-threads", "RTBRIDGE_FANOUT_THREADS", K_I64, OFF(fanout_threads), "4", "64", 4, 64},
    {"--ws-max-message", "RTBRIDGE_WS_MAX_MESSAGE", K_I64, OFF(ws_max_message), "1m", "4096",
     1 << 20, 4096},
    {"--ping-interval", "RTBRIDGE_PING_INTERVAL", K_I64, OFF(ping_interval_ms), "5s", "1h", 5000,
     3600000},
    {"--keepalive-interval", "RTBRIDGE_KEEPALIVE_INTERVAL", K_I64, OFF(keepalive_interval_ms),
     "15s", "200ms", 15000, 200},
    {"--allowed-origins", "RTBRIDGE_ALLOWED_ORIGINS", K_STR, OFF(allowed_origins),
     "https://a.example,http://localhost:3000", "https://b.example", 0, 0},
    {"--replay-window", "RTBRIDGE_REPLAY_WINDOW", K_I64, OFF(replay_window), "1000", "0", 1000, 0},
    {"--client-max-queued", "RTBRIDGE_CLIENT_MAX_QUEUED", K_I64, OFF(client_max_queued), "64k",
     "2m", 65536, 2 << 20},
    {"--max-conns", "RTBRIDGE_MAX_CONNS", K_I64, OFF(max_conns), "100", "5000", 100, 5000},
    {"--max-conns-per-ip", "RTBRIDGE_MAX_CONNS_PER_IP", K_I64, OFF(max_conns_per_ip), "0", "50", 0,
     50},
    {"--auth-token", "RTBRIDGE_AUTH_TOKEN", K_STR, OFF(auth_token), "s3cret", "other", 0, 0},
    {"--jwt-secret", "RTBRIDGE_JWT_SECRET", K_STR, OFF(jwt_secret), "k1", "k2", 0, 0},
    {"--header-timeout", "RTBRIDGE_HEADER_TIMEOUT", K_I64, OFF(header_timeout_ms), "2s", "500ms",
     2000, 500},
    {"--shutdown-timeout", "RTBRIDGE_SHUTDOWN_TIMEOUT", K_I64, OFF(shutdown_timeout_ms), "0", "1m",
     0, 60000},
    {"--client-msg-rate", "RTBRIDGE_CLIENT_MSG_RATE", K_I64, OFF(client_msg_rate), "5", "1000", 5,
     1000},
    {"--etl", "RTBRIDGE_ETL", K_BOOL, OFF(etl), "off", "yes", 0, 1},
    {"--etl-mode", "RTBRIDGE_ETL_MODE", K_INT, OFF(etl_mode), "polling", "event",
     RT_ETL_MODE_POLLING, RT_ETL_MODE_EVENT},
    {"--etl-batch-size", "RTBRIDGE_ETL_BATCH_SIZE", K_I64, OFF(etl_batch_size), "500", "100000",
     500, 100000},
    {"--etl-interval", "RTBRIDGE_ETL_INTERVAL", K_I64, OFF(etl_interval_ms), "1s", "0", 1000, 0},
    {"--etl-poll-interval", "RTBRIDGE_ETL_POLL_INTERVAL", K_I64, OFF(etl_poll_interval_ms),
     "250ms", "1h", 250, 3600000},
    {"--etl-retention", "RTBRIDGE_ETL_RETENTION", K_I64, OFF(etl_retention_ms), "30d", "1d",
     30 * 86400000LL, 86400000LL},
    {"--once", "RTBRIDGE_ETL_ONCE", K_BOOL, OFF(etl_once), "true", "0", 1, 0},
    {"--etl-source-url", "RTBRIDGE_ETL_SOURCE_URL", K_STR, OFF(etl_source_url),
     "postgres://u@src/app", "host=src dbname=app", 0, 0},
    {"--etl-target-url", "RTBRIDGE_ETL_TARGET_URL", K_STR, OFF(etl_target_url),
     "postgres://u@dw/ts", "host=dw dbname=ts", 0, 0},
    {"--metrics-reconcile-interval", "RTBRIDGE_METRICS_RECONCILE_INTERVAL", K_I64,
     OFF(metrics_reconcile_interval_ms), "5m", "100ms", 300000, 100},
    {"--stats-interval", "RTBRIDGE_STATS_INTERVAL", K_I64, OFF(stats_interval_ms), "2s", "1h",
     2000, 3600000},
    /* alerts */
    {"--alert-rules", "RTBRIDGE_ALERT_RULES", K_STR, OFF(alert_rules), "/etc/rt/rules.json",
     "r.json", 0, 0},
    {"--alert-query-timeout", "RTBRIDGE_ALERT_QUERY_TIMEOUT", K_I64, OFF(alert_query_timeout_ms),
     "2s", "10ms", 2000, 10},
    {"--alert-webhook-url", "ALERT_WEBHOOK_URL", K_STR, OFF(alert_webhook_url), "http://h/x",
     "https://y", 0, 0},
    {"--slack-webhook-url", "SLACK_WEBHOOK_URL", K_STR, OFF(slack_webhook_url),
     "https://hooks.example/T/B/x", "http://s", 0, 0},
    {"--smtp-url", "RTBRIDGE_SMTP_URL", K_STR, OFF(smtp_url), "smtp+starttls://u:p@mail:587",
     "smtps://mail", 0, 0},
    {"--smtp-from", "RTBRIDGE_SMTP_FROM", K_STR, OFF(smtp_from), "a@example.com", "b@x", 0, 0},
    {"--smtp-to", "RTBRIDGE_SMTP_TO", K_STR, OFF(smtp_to), "a@x,b@y", "c@z", 0, 0},
    {"--alert-notify-timeout", "RTBRIDGE_ALERT_NOTIFY_TIMEOUT", K_I64,
     OFF(alert_notify_timeout_ms), "500ms", "5m", 500, 300000},
    {"--alert-notify-tries", "RTBRIDGE_ALERT_NOTIFY_TRIES", K_I64, OFF(alert_notify_tries), "1",
     "10", 1, 10},
    {"--alert-notify-backoff", "RTBRIDGE_ALERT_NOTIFY_BACKOFF", K_I64,
     OFF(alert_notify_backoff_ms), "50ms", "10m", 50, 600000},
    /* dashboard page */
    {"--web-root", "RTBRIDGE_WEB_ROOT", K_STR, OFF(web_root), "lib/web", "/srv/web", 0, 0},
};
#define NCASES (sizeof cases / sizeof cases[0])

static void assert_case(const rt_config_t *cfg, const opt_case_t *c, int second)
{
    const char *p = (const char *)cfg + c->offset;
    switch (c->kind) {
    case K_STR: {
        const char *got = *(char *const *)p;
        assert_non_null(got);
        assert_string_equal(got, second ? c->value2 : c->value);
        break;
    }
    case K_I64:
        assert_int_equal(*(const int64_t *)p, second ? c->want2 : c->want);
        break;
    case K_INT:
    case K_BOOL:
        assert_int_equal(*(const int *)p, second ? c->want2 : c->want);
        break;
    }
}

/* ---- defaults and sources ---------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    assert_int_equal(PARSE_NONE(&cfg, err), 0);
    assert_string_equal(err, "");
    assert_null(cfg.database_url);
    assert_string_equal(cfg.channels, "intent_changed,audit_log_created");
    assert_int_equal(cfg.log_level, RT_LOG_INFO);
    assert_int_equal(cfg.log_format, RT_LOG_TEXT);
    assert_int_equal(cfg.bus_ring_size, 65536);
    assert_int_equal(cfg.reconnect_min_ms, 100);
    assert_int_equal(cfg.reconnect_max_ms, 30000);
    assert_int_equal(cfg.journal_retention_ms, 24 * 3600 * 1000LL);
    assert_int_equal(cfg.tail_format, RT_TAIL_JSON);
    assert_int_equal(cfg.etl, 1);
    assert_int_equal(cfg.etl_mode, RT_ETL_MODE_HYBRID);
    assert_int_equal(cfg.etl_batch_size, 1000);
    assert_int_equal(cfg.etl_interval_ms, 200);
    assert_int_equal(cfg.etl_poll_interval_ms, 5000);
    assert_int_equal(cfg.etl_retention_ms, 90 * 86400000LL);
    assert_int_equal(cfg.etl_once, 0);
    assert_null(cfg.etl_source_url);
    assert_null(cfg.etl_target_url);
    assert_int_equal(cfg.metrics_reconcile_interval_ms, 30000);
    assert_int_equal(cfg.stats_interval_ms, 10000);
    rt_config_free(&cfg);
}

static void test_flags_separate(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCASES; i++) {
        rt_config_t cfg;
        char err[256];
        if (cases[i].kind == K_BOOL) {
            /* A boolean never takes the next argument: alone it means
             * true, and a separate value is a stray argument. */
            int rc = PARSE(&cfg, err, cases[i].flag);
            if (rc != 0) print_error("%s: %s\n", cases[i].flag, err);
            assert_int_equal(rc, 0);
            assert_int_equal(*(const int *)((const char *)&cfg + cases[i].offset), 1);
            rt_config_free(&cfg);
            assert_int_equal(PARSE(&cfg, err, cases[i].flag, cases[i].value), -EINVAL);
            assert_contains(err, "unexpected argument");
            continue;
        }
        for (int second = 0; second < 2; second++) {
            const char *v = second ? cases[i].value2 : cases[i].value;
            int rc = PARSE(&cfg, err, cases[i].flag, v);
            if (rc != 0) print_error("%s %s: %s\n", cases[i].flag, v, err);
            assert_int_equal(rc, 0);
            assert_case(&cfg, &cases[i], second);
            rt_config_free(&cfg);
        }
    }
}

static void test_flags_equals(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCASES; i++) {
        for (int second = 0; second < 2; second++) {
            rt_config_t cfg;
            char err[256], arg[128];
            snprintf(arg, sizeof arg, "%s=%s", cases[i].flag,
                     second ? cases[i].value2 : cases[i].value);
            int rc = PARSE(&cfg, err, arg);
            if (rc != 0) print_error("%s: %s\n", arg, err);
            assert_int_equal(rc, 0);
            assert_case(&cfg, &cases[i], second);
            rt_config_free(&cfg);
        }
    }
}

static void test_env(void **state)
{
    for (size_t i = 0; i < NCASES; i++) {
        for (int second = 0; second < 2; second++) {
            rt_config_t cfg;
            char err[256];
            reset_env(state);
            env_set(cases[i].env, second ? cases[i].value2 : cases[i].value);
            int rc = PARSE_NONE(&cfg, err);
            if (rc != 0) print_error("%s: %s\n", cases[i].env, err);
            assert_int_equal(rc, 0);
            assert_case(&cfg, &cases[i], second);
            rt_config_free(&cfg);
        }
    }
}

static void test_flag_overrides_env(void **state)
{
    for (size_t i = 0; i < NCASES; i++) {
        rt_config_t cfg;
        char err[256];
        reset_env(state);
        env_set(cases[i].env, cases[i].value2);
        int rc;
        if (cases[i].kind == K_BOOL) {
            char arg[128];
            snprintf(arg, sizeof arg, "%s=%s", cases[i].flag, cases[i].value);
            rc = PARSE(&cfg, err, arg);
        } else {
            rc = PARSE(&cfg, err, cases[i].flag, cases[i].value);
        }
        if (rc != 0) print_error("%s: %s\n", cases[i].flag, err);
        assert_int_equal(rc, 0);
        assert_case(&cfg, &cases[i], 0);
        rt_config_free(&cfg);
    }
}

static void test_all_env_at_once(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    for (size_t i = 0; i < NCASES; i++)
        env_set(cases[i].env, cases[i].value);
    assert_int_equal(PARSE_NONE(&cfg, err), 0);
    for (size_t i = 0; i < NCASES; i++)
        assert_case(&cfg, &cases[i], 0);
    rt_config_free(&cfg);
}

static void test_last_wins(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    assert_int_equal(PARSE(&cfg, err, "--channels", "a", "--channels=b", "--database-url", "x",
                           "--database-url", "y", "--bus-ring-size", "2048", "--bus-ring-size",
                           "4096"),
                     0);
    assert_string_equal(cfg.channels, "b");
    assert_string_equal(cfg.database_url, "y");
    assert_int_equal(cfg.bus_ring_size, 4096);
    rt_config_free(&cfg);
}

static void test_every_enum_value(void **state)
{
    (void)state;
    static const struct {
        const char *flag, *value;
        size_t offset;
        int want;
    } t[] = {
        {"--log-level", "debug", OFF(log_level), RT_LOG_DEBUG},
        {"--log-level", "info", OFF(log_level), RT_LOG_INFO},
        {"--log-level", "warn", OFF(log_level), RT_LOG_WARN},
        {"--log-level", "error", OFF(log_level), RT_LOG_ERROR},
        {"--log-format", "text", OFF(log_format), RT_LOG_TEXT},
        {"--log-format", "json", OFF(log_format), RT_LOG_JSON},
        {"--format", "json", OFF(tail_format), RT_TAIL_JSON},
        {"--format", "text", OFF(tail_format), RT_TAIL_TEXT},
        {"--etl-mode", "event", OFF(etl_mode), RT_ETL_MODE_EVENT},
        {"--etl-mode", "polling", OFF(etl_mode), RT_ETL_MODE_POLLING},
        {"--etl-mode", "hybrid", OFF(etl_mode), RT_ETL_MODE_HYBRID},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        rt_config_t cfg;
        char err[256];
        assert_int_equal(PARSE(&cfg, err, t[i].flag, t[i].value), 0);
        assert_int_equal(*(int *)((char *)&cfg + t[i].offset), t[i].want);
        rt_config_free(&cfg);
    }
}

static void test_bounds_inclusive(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    assert_int_equal(PARSE(&cfg, err, "--reconnect-min", "10ms", "--reconnect-max", "100ms",
                           "--journal-retention", "1m"),
                     0);
    assert_int_equal(cfg.reconnect_min_ms, 10);
    assert_int_equal(cfg.reconnect_max_ms, 100);
    assert_int_equal(cfg.journal_retention_ms, 60000);
    rt_config_free(&cfg);
    assert_int_equal(PARSE(&cfg, err, "--reconnect-min", "60s", "--reconnect-max", "10m",
                           "--journal-retention", "365d"),
                     0);
    assert_int_equal(cfg.reconnect_min_ms, 60000);
    assert_int_equal(cfg.reconnect_max_ms, 600000);
    assert_int_equal(cfg.journal_retention_ms, 365 * 86400000LL);
    rt_config_free(&cfg);
    /* max == min is allowed */
    assert_int_equal(PARSE(&cfg, err, "--reconnect-min", "1s", "--reconnect-max", "1000"), 0);
    rt_config_free(&cfg);
}

static void test_channels_list(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    char longest[64];
    memset(longest, 'a', 63);
    longest[63] = '\0';
    assert_int_equal(PARSE(&cfg, err, "--channels", "a_1,b,0z,c_d_e"), 0);
    assert_string_equal(cfg.channels, "a_1,b,0z,c_d_e");
    rt_config_free(&cfg);
    assert_int_equal(PARSE(&cfg, err, "--channels", longest), 0);
    assert_string_equal(cfg.channels, longest);
    rt_config_free(&cfg);
}

static void test_empty_env_is_unset(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    env_set("RTBRIDGE_BUS_RING_SIZE", "");
    env_set("DATABASE_URL", "");
    env_set("RTBRIDGE_CHANNELS", "");
    assert_int_equal(PARSE_NONE(&cfg, err), 0);
    assert_int_equal(cfg.bus_ring_size, 65536);
    assert_null(cfg.database_url);
    assert_string_equal(cfg.channels, "intent_changed,audit_log_created");
    rt_config_free(&cfg);
}

static void test_process_environment(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    char *old = getenv("RTBRIDGE_LOG_LEVEL");
    char *saved = old ? strdup(old) : NULL;
    setenv("RTBRIDGE_LOG_LEVEL", "warn", 1);
    assert_string_equal(rt_config_getenv("RTBRIDGE_LOG_LEVEL"), "warn");
    int rc = rt_config_parse(&cfg, 0, NULL, NULL, err, sizeof err);
    if (saved)
        setenv("RTBRIDGE_LOG_LEVEL", saved, 1);
    else
        unsetenv("RTBRIDGE_LOG_LEVEL");
    free(saved);
    assert_int_equal(rc, 0);
    assert_int_equal(cfg.log_level, RT_LOG_WARN);
    rt_config_free(&cfg);
}

/* ---- bad values ---------------------------------------------------------------- */

typedef struct {
    const char *args[5];
    const char *want[3]; /* substrings the error must contain */
} bad_case_t;

#define INV(flag, v) flag ": invalid value '" v "'"
#define RING_EXPECT "expected a power of two between 16 and 16777216"
#define DUR "expected a duration between "

static const bad_case_t bad[] = {
    /* int, power of two */
    {{"--bus-ring-size", "x"}, {INV("--bus-ring-size", "x") ": " RING_EXPECT}},
    {{"--bus-ring-size", "1024x"}, {INV("--bus-ring-size", "1024x"), RING_EXPECT}},
    {{"--bus-ring-size", "1024.0"}, {INV("--bus-ring-size", "1024.0")}},
    {{"--bus-ring-size", "99999999999999999999"}, {INV("--bus-ring-size", "99999999999999999999")}},
    {{"--bus-ring-size", "8"}, {INV("--bus-ring-size", "8"), RING_EXPECT}},
    {{"--bus-ring-size", "33554432"}, {INV("--bus-ring-size", "33554432"), RING_EXPECT}},
    {{"--bus-ring-size", "1000"}, {INV("--bus-ring-size", "1000") ": " RING_EXPECT}},
    {{"--bus-ring-size", "1025"}, {INV("--bus-ring-size", "1025")}},
    {{"--bus-ring-size="}, {INV("--bus-ring-size", "")}},
    {{"--bus-ring-size", ""}, {INV("--bus-ring-size", "")}},
    {{"--bus-ring-size", " 1024"}, {INV("--bus-ring-size", " 1024")}},
    {{"--bus-ring-size", "1024 "}, {INV("--bus-ring-size", "1024 ")}},
    {{"--bus-ring-size", "+1024"}, {INV("--bus-ring-size", "+1024")}},
    {{"--bus-ring-size", "-1024"}, {INV("--bus-ring-size", "-1024")}},
    {{"--bus-ring-size", "0x400"}, {INV("--bus-ring-size", "0x400")}},
    {{"--bus-ring-size", "0"}, {INV("--bus-ring-size", "0")}},
    /* durations */
    {{"--reconnect-min", "fast"}, {INV("--reconnect-min", "fast"), DUR "10ms and 1m"}},
    {{"--reconnect-min", "10x"}, {INV("--reconnect-min", "10x")}},
    {{"--reconnect-min", "10sec"}, {INV("--reconnect-min", "10sec")}},
    {{"--reconnect-min", "10MS"}, {INV("--reconnect-min", "10MS")}},
    {{"--reconnect-min", "10 ms"}, {INV("--reconnect-min", "10 ms")}},
    {{"--reconnect-min", "1.5s"}, {INV("--reconnect-min", "1.5s")}},
    {{"--reconnect-min", "ms"}, {INV("--reconnect-min", "ms")}},
    {{"--reconnect-min", "1s500ms"}, {INV("--reconnect-min", "1s500ms")}},
    {{"--reconnect-min="}, {INV("--reconnect-min", "")}},
    {{"--reconnect-min", "-10ms"}, {INV("--reconnect-min", "-10ms")}},
    {{"--reconnect-min", "9ms"}, {INV("--reconnect-min", "9ms"), DUR "10ms and 1m"}},
    {{"--reconnect-min", "61s"}, {INV("--reconnect-min", "61s"), DUR "10ms and 1m"}},
    {{"--reconnect-min", "99999999999999999999ms"},
     {INV("--reconnect-min", "99999999999999999999ms")}},
    {{"--reconnect-min", "106751991168d"}, {INV("--reconnect-min", "106751991168d")}},
    {{"--reconnect-max", "50ms"}, {INV("--reconnect-max", "50ms"), DUR "100ms and 10m"}},
    {{"--reconnect-max", "11m"}, {INV("--reconnect-max", "11m"), DUR "100ms and 10m"}},
    {{"--reconnect-max", "1h"}, {INV("--reconnect-max", "1h")}},
    {{"--journal-retention", "59s"}, {INV("--journal-retention", "59s"), DUR "1m and 365d"}},
    {{"--journal-retention", "366d"}, {INV("--journal-retention", "366d"), DUR "1m and 365d"}},
    {{"--journal-retention", "1y"}, {INV("--journal-retention", "1y")}},
    {{"--journal-retention", "forever"}, {INV("--journal-retention", "forever")}},
    /* enums */
    {{"--log-level", "verbose"}, {INV("--log-level", "verbose"), "debug|info|warn|error"}},
    {{"--log-level", "INFO"}, {INV("--log-level", "INFO")}},
    {{"--log-level="}, {INV("--log-level", "")}},
    {{"--log-format", "yaml"}, {INV("--log-format", "yaml"), "text|json"}},
    {{"--log-format", "JSON"}, {INV("--log-format", "JSON")}},
    {{"--format", "xml"}, {INV("--format", "xml"), "json|text"}},
    {{"--format="}, {INV("--format", "")}},
    {{"--etl-mode", "both"}, {INV("--etl-mode", "both"), "event|polling|hybrid"}},
    /* ETL numbers and booleans */
    {{"--etl-batch-size", "0"}, {INV("--etl-batch-size", "0"), "between 1 and 100000"}},
    {{"--etl-batch-size", "100001"}, {INV("--etl-batch-size", "100001")}},
    {{"--etl-interval", "2m"}, {INV("--etl-interval", "2m"), DUR "0 and 1m"}},
    {{"--etl-poll-interval", "50ms"}, {INV("--etl-poll-interval", "50ms"), DUR "100ms and 1h"}},
    {{"--etl-retention", "12h"}, {INV("--etl-retention", "12h"), DUR "1d and 3650d"}},
    {{"--etl=maybe"}, {INV("--etl", "maybe"), "true|false|yes|no|on|off|1|0"}},
    {{"--once=2"}, {INV("--once", "2")}},
    /* lists */
    {{"--channels", "a,,b"}, {INV("--channels", "a,,b"), "a-z, 0-9 and _"}},
    {{"--channels", ",a"}, {INV("--channels", ",a")}},
    {{"--channels", "a,"}, {INV("--channels", "a,")}},
    {{"--channels", ","}, {INV("--channels", ",")}},
    {{"--channels", "Intent"}, {INV("--channels", "Intent")}},
    {{"--channels", "a-b"}, {INV("--channels", "a-b")}},
    {{"--channels", "a, b"}, {INV("--channels", "a, b")}},
    {{"--channels", "a;drop"}, {INV("--channels", "a;drop")}},
    {{"--channels", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
     {"--channels: invalid value 'aaaa", "at most 63 bytes"}},
    {{"--channels="}, {INV("--channels", "")}},
    /* strings */
    {{"--database-url="}, {INV("--database-url", ""), "non-empty"}},
    {{"--database-url", ""}, {INV("--database-url", "")}},
    /* missing values */
    {{"--channels"}, {"--channels: missing value"}},
    {{"--bus-ring-size", "--log-level", "debug"}, {"--bus-ring-size: missing value"}},
    {{"--log-level", "--"}, {"--log-level: missing value"}},
    /* unknown flags */
    {{"--foo"}, {"unknown flag '--foo'"}},
    {{"--foo=bar"}, {"unknown flag '--foo'"}},
    {{"--Channels", "a"}, {"unknown flag '--Channels'"}},
    {{"--channel", "a"}, {"unknown flag '--channel'"}},
    {{"-x"}, {"unknown flag '-x'"}},
    {{"---channels", "a"}, {"unknown flag '---channels'"}},
    {{"--help=yes"}, {"--help: takes no value"}},
    /* positional arguments */
    {{"x"}, {"unexpected argument 'x'"}},
    {{"--log-level", "debug", "serve"}, {"unexpected argument 'serve'"}},
    {{"-"}, {"unexpected argument '-'"}},
    {{"--", "x"}, {"unexpected argument 'x'"}},
    {{"--", "-h"}, {"unexpected argument '-h'"}},
    /* rules across options */
    {{"--reconnect-min", "5s", "--reconnect-max", "1s"},
     {"--reconnect-max (1s) must not be less than --reconnect-min (5s)"}},
    {{"--reconnect-min", "1m"}, {"--reconnect-max (30s)", "--reconnect-min (1m)"}},
};

static void test_bad_values(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rt_config_t cfg;
        char err[512];
        const char *args[6] = {0};
        memcpy(args, bad[i].args, sizeof bad[i].args);
        int rc = parse_list(&cfg, err, sizeof err, args);
        if (rc != -EINVAL) {
            print_error("case %zu (%s %s): rc %d, err \"%s\"\n", i, args[0], args[1] ? args[1] : "",
                        rc, err);
        }
        assert_int_equal(rc, -EINVAL);
        for (size_t j = 0; j < 3 && bad[i].want[j]; j++)
            assert_contains(err, bad[i].want[j]);
        assert_null(strchr(err, '\n'));
        assert_cfg_zero(&cfg); /* freed by the parser on error */
        rt_config_free(&cfg);  /* and harmless to free again */
    }
}

/* The exact messages from the specification. */
static void test_exact_messages(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    assert_int_equal(PARSE(&cfg, err, "--bus-ring-size", "1000"), -EINVAL);
    assert_string_equal(err, "--bus-ring-size: invalid value '1000': expected a power of two "
                             "between 16 and 16777216");
    assert_int_equal(PARSE(&cfg, err, "--foo"), -EINVAL);
    assert_string_equal(err, "unknown flag '--foo'");
    assert_int_equal(PARSE(&cfg, err, "--channels"), -EINVAL);
    assert_string_equal(err, "--channels: missing value");
    assert_int_equal(PARSE(&cfg, err, "x"), -EINVAL);
    assert_string_equal(err, "unexpected argument 'x'");
    env_set("RTBRIDGE_BUS_RING_SIZE", "x");
    assert_int_equal(PARSE_NONE(&cfg, err), -EINVAL);
    assert_string_equal(err, "RTBRIDGE_BUS_RING_SIZE: invalid value 'x': expected a power of two "
                             "between 16 and 16777216");
}

static void test_every_flag_missing_value(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCASES; i++) {
        rt_config_t cfg;
        char err[256], want[128];
        if (cases[i].kind == K_BOOL) continue; /* alone it means true (test_flags_separate) */
        snprintf(want, sizeof want, "%s: missing value", cases[i].flag);
        assert_int_equal(PARSE(&cfg, err, cases[i].flag), -EINVAL);
        assert_string_equal(err, want);
    }
}

static void test_bad_env(void **state)
{
    static const struct {
        const char *env, *value;
    } t[] = {
        {"RTBRIDGE_CHANNELS", "A"},          {"RTBRIDGE_CHANNELS", "a,,b"},
        {"RTBRIDGE_LOG_LEVEL", "loud"},      {"RTBRIDGE_LOG_FORMAT", "xml"},
        {"RTBRIDGE_BUS_RING_SIZE", "x"},     {"RTBRIDGE_BUS_RING_SIZE", "3000"},
        {"RTBRIDGE_RECONNECT_MIN", "1d"},    {"RTBRIDGE_RECONNECT_MAX", "10ms"},
        {"RTBRIDGE_JOURNAL_RETENTION", "5"}, {"RTBRIDGE_TAIL_FORMAT", "yaml"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        rt_config_t cfg;
        char err[512], want[128];
        reset_env(state);
        env_set(t[i].env, t[i].value);
        snprintf(want, sizeof want, "%s: invalid value '%s': expected ", t[i].env, t[i].value);
        assert_int_equal(PARSE_NONE(&cfg, err), -EINVAL);
        assert_contains(err, want);
        assert_cfg_zero(&cfg);
    }
}

/* A bad environment variable is reported even when a flag would override it:
 * a broken deployment setting should not hide behind a flag. */
static void test_bad_env_with_flag(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    env_set("RTBRIDGE_LOG_LEVEL", "loud");
    assert_int_equal(PARSE(&cfg, err, "--log-level", "debug"), -EINVAL);
    assert_contains(err, "RTBRIDGE_LOG_LEVEL: invalid value 'loud'");
}

static void test_order_names_source(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    env_set("RTBRIDGE_RECONNECT_MIN", "5s");
    env_set("RTBRIDGE_RECONNECT_MAX", "1s");
    assert_int_equal(PARSE_NONE(&cfg, err), -EINVAL);
    assert_string_equal(err, "RTBRIDGE_RECONNECT_MAX (1s) must not be less than "
                             "RTBRIDGE_RECONNECT_MIN (5s)");
    assert_int_equal(PARSE(&cfg, err, "--reconnect-max", "2s"), -EINVAL);
    assert_string_equal(err, "--reconnect-max (2s) must not be less than "
                             "RTBRIDGE_RECONNECT_MIN (5s)");
    /* a flag can repair what the environment broke */
    assert_int_equal(PARSE(&cfg, err, "--reconnect-max", "5s"), 0);
    assert_int_equal(cfg.reconnect_max_ms, 5000);
    rt_config_free(&cfg);
}

/* Control characters never reach the message, long values are cut, and a
 * value given with an unknown flag is not echoed (it may be a password). */
static void test_error_quoting(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[512], big[1000];
    assert_int_equal(PARSE(&cfg, err, "--channels", "a\nb\tc"), -EINVAL);
    assert_contains(err, "'a?b?c'");
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(PARSE(&cfg, err, "--log-level", big), -EINVAL);
    assert_contains(err, "qqq...'");
    assert_true(strlen(err) < 300);
    assert_int_equal(PARSE(&cfg, err, "--databse-url=postgres://u:hunter2@h/db"), -EINVAL);
    assert_string_equal(err, "unknown flag '--databse-url'");
}

static void test_small_error_buffer(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[8];
    memset(err, 'z', sizeof err);
    assert_int_equal(PARSE(&cfg, err, "--bus-ring-size", "1000"), -EINVAL);
    assert_string_equal(err, "--bus-r");
    char *argv[] = {"--foo", NULL};
    assert_int_equal(rt_config_parse(&cfg, 1, argv, fake_getenv, NULL, 0), -EINVAL);
    assert_int_equal(rt_config_parse(&cfg, 0, NULL, fake_getenv, NULL, 0), 0);
    rt_config_free(&cfg);
}

static void test_free_twice(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    assert_int_equal(PARSE(&cfg, err, "--database-url", "postgres://x"), 0);
    rt_config_free(&cfg);
    assert_cfg_zero(&cfg);
    rt_config_free(&cfg);
    rt_config_t zero = {0};
    rt_config_free(&zero);
}

/* ---- value syntaxes ---------------------------------------------------------- */

typedef struct {
    const char *in;
    int ok;
    int64_t want;
} num_case_t;

static void run_num_cases(const char *what, int (*fn)(const char *, int64_t *), const num_case_t *t,
                          size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int64_t got = 42;
        int rc = fn(t[i].in, &got);
        if ((rc == 0) != t[i].ok || (t[i].ok && got != t[i].want)) {
            print_error("%s(\"%s\"): rc %d got %lld, want %s %lld\n", what, t[i].in, rc,
                        (long long)got, t[i].ok ? "ok" : "-EINVAL", (long long)t[i].want);
            fail();
        }
        if (!t[i].ok) {
            assert_int_equal(rc, -EINVAL);
            assert_int_equal(got, 42); /* untouched on failure */
        }
    }
}

#define D 86400000LL

static void test_parse_duration(void **state)
{
    (void)state;
    static const num_case_t t[] = {
        {"0", 1, 0},
        {"1", 1, 1},
        {"250", 1, 250},
        {"250ms", 1, 250},
        {"10s", 1, 10000},
        {"5m", 1, 300000},
        {"2h", 1, 7200000},
        {"7d", 1, 7 * D},
        {"0s", 1, 0},
        {"007s", 1, 7000},
        {"9223372036854775807", 1, INT64_MAX},
        {"9223372036854775807ms", 1, INT64_MAX},
        {"106751991167d", 1, 106751991167LL * D},
        {"106751991168d", 0, 0},
        {"9223372036854775808", 0, 0},
        {"9223372036854776s", 0, 0},
        {"", 0, 0},
        {"s", 0, 0},
        {"ms", 0, 0},
        {"-1s", 0, 0},
        {"+1s", 0, 0},
        {" 1s", 0, 0},
        {"1s ", 0, 0},
        {"1 s", 0, 0},
        {"1.5s", 0, 0},
        {"1S", 0, 0},
        {"1M", 0, 0},
        {"1H", 0, 0},
        {"1us", 0, 0},
        {"1sec", 0, 0},
        {"1mss", 0, 0},
        {"1d1h", 0, 0},
        {"0x10", 0, 0},
        {"1e3", 0, 0},
    };
    run_num_cases("duration", rt_config__parse_duration, t, sizeof t / sizeof t[0]);
}

static void test_parse_size(void **state)
{
    (void)state;
    static const num_case_t t[] = {
        {"0", 1, 0},
        {"512", 1, 512},
        {"1k", 1, 1024},
        {"1K", 1, 1024},
        {"64k", 1, 65536},
        {"1m", 1, 1048576},
        {"2M", 1, 2097152},
        {"1g", 1, 1073741824},
        {"3G", 1, 3221225472LL},
        {"8589934591G", 1, 8589934591LL << 30},
        {"8589934592G", 0, 0},
        {"9223372036854775807", 1, INT64_MAX},
        {"9223372036854775808", 0, 0},
        {"", 0, 0},
        {"k", 0, 0},
        {"1KB", 0, 0},
        {"1KiB", 0, 0},
        {"1b", 0, 0},
        {"1.5M", 0, 0},
        {"-1k", 0, 0},
        {"+1k", 0, 0},
        {"1t", 0, 0},
        {"1T", 0, 0},
        {" 1", 0, 0},
        {"1 k", 0, 0},
        {"0x10", 0, 0},
    };
    run_num_cases("size", rt_config__parse_size, t, sizeof t / sizeof t[0]);
}

static void test_parse_int(void **state)
{
    (void)state;
    static const num_case_t t[] = {
        {"0", 1, 0},
        {"-0", 1, 0},
        {"123", 1, 123},
        {"-5", 1, -5},
        {"0010", 1, 10},
        {"9223372036854775807", 1, INT64_MAX},
        {"-9223372036854775807", 1, -INT64_MAX},
        {"9223372036854775808", 0, 0},
        {"", 0, 0},
        {"-", 0, 0},
        {"--1", 0, 0},
        {"+1", 0, 0},
        {" 1", 0, 0},
        {"1 ", 0, 0},
        {"1a", 0, 0},
        {"0x1", 0, 0},
        {"1e3", 0, 0},
        {"1.0", 0, 0},
    };
    run_num_cases("int", rt_config__parse_int, t, sizeof t / sizeof t[0]);
}

static void test_parse_bool(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int ok, want;
    } t[] = {
        {"true", 1, 1},   {"TRUE", 1, 1},  {"True", 1, 1},  {"yes", 1, 1},   {"YES", 1, 1},
        {"on", 1, 1},     {"On", 1, 1},    {"1", 1, 1},     {"false", 1, 0}, {"FALSE", 1, 0},
        {"no", 1, 0},     {"off", 1, 0},   {"OFF", 1, 0},   {"0", 1, 0},     {"", 0, 0},
        {"2", 0, 0},      {"01", 0, 0},    {"y", 0, 0},     {"n", 0, 0},     {"t", 0, 0},
        {"enable", 0, 0}, {"truee", 0, 0}, {" true", 0, 0}, {"true ", 0, 0}, {"-1", 0, 0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int got = 42;
        int rc = rt_config__parse_bool(t[i].in, &got);
        if ((rc == 0) != t[i].ok || (t[i].ok && got != t[i].want) || (!t[i].ok && got != 42)) {
            print_error("bool(\"%s\"): rc %d got %d, want %s %d\n", t[i].in, rc, got,
                        t[i].ok ? "ok" : "-EINVAL", t[i].want);
            fail();
        }
    }
}

/* ---- help ------------------------------------------------------------------------ */

static void test_help_returns_1(void **state)
{
    static const char *const t[][5] = {
        {"--help"},
        {"-h"},
        {"--log-level", "debug", "-h"},
        {"--bogus", "--help"},
        {"x", "--help"},
        {"--bus-ring-size", "1000", "-h"},
        {"--channels", "--help"}, /* a flag is never taken as a value */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        rt_config_t cfg;
        char err[256];
        const char *args[6] = {0};
        memcpy(args, t[i], sizeof t[i]);
        reset_env(state);
        int rc = parse_list(&cfg, err, sizeof err, args);
        if (rc != 1) print_error("case %zu: rc %d err \"%s\"\n", i, rc, err);
        assert_int_equal(rc, 1);
        assert_string_equal(cfg.channels, "intent_changed,audit_log_created");
        rt_config_free(&cfg);
    }
    /* help works even when the environment is broken */
    rt_config_t cfg;
    char err[256];
    env_set("RTBRIDGE_BUS_RING_SIZE", "x");
    assert_int_equal(PARSE(&cfg, err, "--help"), 1);
    rt_config_free(&cfg);
}

/* "-h" in the position of a value is that value, not a request for help. */
static void test_help_as_value(void **state)
{
    (void)state;
    rt_config_t cfg;
    char err[256];
    assert_int_equal(PARSE(&cfg, err, "--database-url", "-h"), 0);
    assert_string_equal(cfg.database_url, "-h");
    rt_config_free(&cfg);
}

static char *capture_help(int markdown)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    rt_config_print_help(f, markdown);
    assert_int_equal(fclose(f), 0);
    assert_non_null(buf);
    return buf;
}

static void test_help_text(void **state)
{
    (void)state;
    char *out = capture_help(0);
    for (size_t i = 0; i < NCASES; i++) {
        char want[96];
        /* "--flag METAVAR", or "--flag[=BOOL]" for a boolean */
        snprintf(want, sizeof want, "  %s%s", cases[i].flag, cases[i].kind == K_BOOL ? "[" : " ");
        assert_contains(out, want);
        snprintf(want, sizeof want, "[env %s", cases[i].env);
        assert_contains(out, want);
    }
    assert_contains(out, "  --bus-ring-size N ");
    assert_contains(out, "capacity of each consumer's ring (events) [env RTBRIDGE_BUS_RING_SIZE, "
                         "default 65536");
    assert_contains(out, "--database-url URL ");
    assert_contains(out, "--channels LIST ");
    assert_contains(out, "--reconnect-min DURATION ");
    assert_contains(out, "--log-level debug|info|warn|error ");
    assert_contains(out, "--log-format text|json ");
    assert_contains(out, "--format json|text ");
    assert_contains(out, "default 100ms");
    assert_contains(out, "default 24h");
    assert_contains(out, "  --etl[=BOOL] ");
    assert_contains(out, "--etl-mode event|polling|hybrid ");
    assert_contains(out, "default 90d");
    assert_contains(out, "default intent_changed,audit_log_created");
    assert_contains(out, "-h, --help");
    assert_not_contains(out, "default (null)");

    /* one line per option plus --help, each opening with two spaces */
    size_t lines = 0;
    for (char *p = out; *p; p++) {
        if (p == out || p[-1] == '\n') assert_true(strncmp(p, "  -", 3) == 0);
        if (*p == '\n') lines++;
    }
    assert_int_equal(lines, NCASES + 1);
    free(out);
}

static void test_help_markdown(void **state)
{
    (void)state;
    char *out = capture_help(1);
    assert_true(strncmp(out, "| flag | env | default | meaning |\n|", 36) == 0);
    for (size_t i = 0; i < NCASES; i++) {
        char want[96];
        snprintf(want, sizeof want, "\n| `%s", cases[i].flag);
        assert_contains(out, want);
        snprintf(want, sizeof want, " | `%s` | ", cases[i].env);
        assert_contains(out, want);
    }
    assert_contains(out, "`--log-level debug\\|info\\|warn\\|error`");
    assert_contains(out, "| `--bus-ring-size N` | `RTBRIDGE_BUS_RING_SIZE` | `65536` | ");
    size_t rows = 0;
    for (char *p = strstr(out, "\n| `--"); p; p = strstr(p + 1, "\n| `--"))
        rows++;
    assert_int_equal(rows, NCASES + 1); /* + --help */
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, reset_env),
        cmocka_unit_test_setup(test_flags_separate, reset_env),
        cmocka_unit_test_setup(test_flags_equals, reset_env),
        cmocka_unit_test_setup(test_env, reset_env),
        cmocka_unit_test_setup(test_flag_overrides_env, reset_env),
        cmocka_unit_test_setup(test_all_env_at_once, reset_env),
        cmocka_unit_test_setup(test_last_wins, reset_env),
        cmocka_unit_test_setup(test_every_enum_value, reset_env),
        cmocka_unit_test_setup(test_bounds_inclusive, reset_env),
        cmocka_unit_test_setup(test_channels_list, reset_env),
        cmocka_unit_test_setup(test_empty_env_is_unset, reset_env),
        cmocka_unit_test_setup(test_process_environment, reset_env),
        cmocka_unit_test_setup(test_bad_values, reset_env),
        cmocka_unit_test_setup(test_exact_messages, reset_env),
        cmocka_unit_test_setup(test_every_flag_missing_value, reset_env),
        cmocka_unit_test_setup(test_bad_env, reset_env),
        cmocka_unit_test_setup(test_bad_env_with_flag, reset_env),
        cmocka_unit_test_setup(test_order_names_source, reset_env),
        cmocka_unit_test_setup(test_error_quoting, reset_env),
        cmocka_unit_test_setup(test_small_error_buffer, reset_env),
        cmocka_unit_test_setup(test_free_twice, reset_env),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_int),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test_setup(test_help_returns_1, reset_env),
        cmocka_unit_test_setup(test_help_as_value, reset_env),
        cmocka_unit_test(test_help_text),
        cmocka_unit_test(test_help_markdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
