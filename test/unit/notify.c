/* Unit tests for the bodies of lib/notify.c: the spec's message text, the
 * webhook JSON keys, Slack's colours by severity (green on resolution), and
 * an e-mail with CRLF line endings and its headers. No network. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "notify.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* 2026-01-02T03:04:05.678Z */
#define AT_NS UINT64_C(1767323045678000000)

static rt_alert_note_t note(const char *state, rt_alert_sev_t sev, double value)
{
    return (rt_alert_note_t){.rule = "high_error_rate",
                             .description = "Error rate exceeds 5% in last 10 minutes",
                             .state = state,
                             .severity = sev,
                             .op = RT_OP_GT,
                             .value = value,
                             .threshold = 0.05,
                             .at_ns = AT_NS,
                             .labels_json = NULL};
}

static void test_message(void **state)
{
    (void)state;
    rt_alert_note_t n = note("firing", RT_SEV_ERROR, 0.0612);
    char *m = rt_notify_message(&n);
    assert_string_equal(m,
                        "[ERROR] high_error_rate\nError rate exceeds 5% in last 10 minutes\n"
                        "Current value: 0.06 (threshold: > 0.05)\nTime: 2026-01-02T03:04:05.678Z");
    free(m);
    n = note("resolved", RT_SEV_ERROR, NAN);
    m = rt_notify_message(&n);
    assert_non_null(strstr(m, "[RESOLVED] high_error_rate\n"));
    assert_non_null(strstr(m, "Current value: none"));
    free(m);
}

static void test_webhook(void **state)
{
    (void)state;
    rt_alert_note_t n = note("firing", RT_SEV_WARNING, 0.25);
    n.labels_json = "{\"team\":\"ops\"}";
    char *b = rt_notify_webhook_body(&n);
    json_t *j = json_loads(b, 0, NULL);
    assert_non_null(j);
    const char *keys[] = {"rule",      "severity",  "message", "value",
                          "threshold", "timestamp", "state"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_object_get(j, keys[i])) fail_msg("no key %s in %s", keys[i], b);
    assert_string_equal(json_string_value(json_object_get(j, "timestamp")),
                        "2026-01-02T03:04:05.678Z");
    assert_true(json_real_value(json_object_get(j, "value")) == 0.25);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "labels"), "team")),
                        "ops");
    json_decref(j);
    free(b);
    n.value = NAN;
    b = rt_notify_webhook_body(&n);
    assert_non_null(strstr(b, "\"value\":null"));
    free(b);
}

static void test_slack_colours(void **state)
{
    (void)state;
    const char *want[] = {"#36a64f", "#ff9800", "#f44336", "#9c27b0"};
    for (int s = RT_SEV_INFO; s <= RT_SEV_CRITICAL; s++) {
        rt_alert_note_t n = note("firing", (rt_alert_sev_t)s, 1);
        char *b = rt_notify_slack_body(&n);
        json_t *j = json_loads(b, 0, NULL);
        json_t *a = json_array_get(json_object_get(j, "attachments"), 0);
        assert_string_equal(json_string_value(json_object_get(a, "color")), want[s]);
        assert_string_equal(json_string_value(json_object_get(a, "title")),
                            "\xF0\x9F\x94\x94 high_error_rate");
        assert_int_equal(json_integer_value(json_object_get(a, "ts")), 1767323045);
        json_decref(j);
        free(b);
    }
    rt_alert_note_t n = note("resolved", RT_SEV_CRITICAL, 0);
    char *b = rt_notify_slack_body(&n);
    assert_non_null(strstr(b, "\"color\":\"#36a64f\""));
    free(b);
}

static void test_email(void **state)
{
    (void)state;
    rt_alert_note_t n = note("firing", RT_SEV_ERROR, 0.5);
    char *m = rt_notify_email_body(&n, "a@example.com", "b@example.com, c@example.com");
    assert_non_null(strstr(m, "Date: Fri, 02 Jan 2026 03:04:05 +0000\r\n"));
    assert_non_null(strstr(m, "From: a@example.com\r\n"));
    assert_non_null(strstr(m, "To: b@example.com, c@example.com\r\n"));
    assert_non_null(strstr(m, "Subject: [ERROR] high_error_rate\r\n"));
    assert_non_null(strstr(m, "\r\n\r\n[ERROR] high_error_rate\r\n"));
    /* No bare LF anywhere. */
    for (const char *p = m; *p; p++)
        if (*p == '\n' && (p == m || p[-1] != '\r')) fail_msg("bare LF at %zu", (size_t)(p - m));
    free(m);
}

static void test_configured(void **state)
{
    (void)state;
    rt_notify_opts_t o = {0};
    assert_int_equal(rt_notify_configured(&o), RT_CH_LOG);
    o.webhook_url = "http://x";
    o.smtp_url = "smtp://x";
    o.smtp_from = "a@x";
    assert_int_equal(rt_notify_configured(&o), RT_CH_LOG | RT_CH_WEBHOOK); /* no --smtp-to */
    o.smtp_to = "b@x";
    o.slack_url = "http://s";
    assert_int_equal(rt_notify_configured(&o),
                     RT_CH_LOG | RT_CH_WEBHOOK | RT_CH_SLACK | RT_CH_EMAIL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_message),       cmocka_unit_test(test_webhook),
        cmocka_unit_test(test_slack_colours), cmocka_unit_test(test_email),
        cmocka_unit_test(test_configured),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
