/* Unit tests for lib/alertrules.c (no database): defaults, durations in both
 * spellings, labels, every operator at and around the threshold, metric
 * names checked or not, and that a file with one bad rule yields nothing. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "alertrules.h"

#include <math.h>
#include <string.h>

static const rt_alert_env_t env_all = {
    .channels_configured = RT_CH_LOG | RT_CH_WEBHOOK | RT_CH_SLACK | RT_CH_EMAIL,
    .metric_names = NULL,
};

static rt_alert_rules_t *parse(const char *json, const rt_alert_env_t *env, rt_alert_problems_t *p)
{
    return rt_alert_rules_parse(json, strlen(json), "test.json", env, p);
}

static void test_defaults(void **state)
{
    (void)state;
    rt_alert_problems_t p = {0};
    rt_alert_rules_t *r = parse("{\"rules\":[{\"name\":\"a\",\"severity\":\"critical\","
                                "\"condition\":{\"sql\":\"SELECT 1\"},\"threshold\":0.5}]}",
                                &env_all, &p);
    assert_non_null(r);
    assert_int_equal(p.n, 0);
    assert_int_equal(r->n, 1);
    const rt_alert_rule_t *a = &r->rules[0];
    assert_string_equal(a->name, "a");
    assert_string_equal(a->description, "");
    assert_int_equal(a->severity, RT_SEV_CRITICAL);
    assert_string_equal(a->sql, "SELECT 1");
    assert_null(a->metric);
    assert_int_equal(a->op, RT_OP_GT);
    assert_true(a->threshold == 0.5);
    assert_int_equal(a->for_ms, 0);
    assert_int_equal(a->interval_ms, 60000);
    assert_int_equal(a->cooldown_ms, 300000);
    assert_int_equal(a->channels, RT_CH_LOG);
    assert_null(a->labels_json);
    rt_alert_rules_free(r);
}

static void test_fields(void **state)
{
    (void)state;
    rt_alert_problems_t p = {0};
    /* A bare array works too; durations as seconds or with a unit. */
    rt_alert_rules_t *r = parse(
        "[{\"name\":\"m.x-1\",\"description\":\"d\",\"severity\":\"info\",\"condition\":"
        "{\"metric\":\"anything\"},\"operator\":\"<=\",\"threshold\":-3,\"for\":1.5,\"interval\":"
        "\"500ms\",\"cooldown\":\"10m\",\"channels\":[\"email\",\"slack\",\"webhook\"],"
        "\"labels\":{\"team\":\"ops\",\"env\":\"prod\"}}]",
        &env_all, &p);
    assert_non_null(r);
    const rt_alert_rule_t *a = &r->rules[0];
    assert_string_equal(a->metric, "anything");
    assert_int_equal(a->op, RT_OP_LE);
    assert_true(a->threshold == -3);
    assert_int_equal(a->for_ms, 1500);
    assert_int_equal(a->interval_ms, 500);
    assert_int_equal(a->cooldown_ms, 600000);
    assert_int_equal(a->channels, RT_CH_EMAIL | RT_CH_SLACK | RT_CH_WEBHOOK);
    assert_string_equal(a->labels_json, "{\"env\":\"prod\",\"team\":\"ops\"}");
    rt_alert_rules_free(r);
}

static void test_compare(void **state)
{
    (void)state;
    struct {
        rt_alert_op_t op;
        int below, at, above;
    } c[] = {{RT_OP_GT, 0, 0, 1}, {RT_OP_GE, 0, 1, 1}, {RT_OP_LT, 1, 0, 0},
             {RT_OP_LE, 1, 1, 0}, {RT_OP_EQ, 0, 1, 0}, {RT_OP_NE, 1, 0, 1}};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        assert_int_equal(rt_alert_compare(c[i].op, 0.04, 0.05), c[i].below);
        assert_int_equal(rt_alert_compare(c[i].op, 0.05, 0.05), c[i].at);
        assert_int_equal(rt_alert_compare(c[i].op, 0.06, 0.05), c[i].above);
    }
    assert_string_equal(rt_alert_op_name(RT_OP_NE), "!=");
    assert_string_equal(rt_alert_sev_name(RT_SEV_WARNING), "warning");
    assert_string_equal(rt_alert_channel_name(RT_CH_EMAIL), "email");
}

static void test_metric_names(void **state)
{
    (void)state;
    static const char *const names[] = {"failed_rate_10m", "events_per_second", NULL};
    rt_alert_env_t env = {.channels_configured = RT_CH_LOG, .metric_names = names};
    rt_alert_problems_t p = {0};
    rt_alert_rules_t *r = parse("{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":"
                                "{\"metric\":\"failed_rate_10m\"},\"threshold\":1}]}",
                                &env, &p);
    assert_non_null(r);
    rt_alert_rules_free(r);
    assert_null(parse("{\"rules\":[{\"name\":\"a\",\"severity\":\"info\",\"condition\":"
                      "{\"metric\":\"nope\"},\"threshold\":1}]}",
                      &env, &p));
    assert_int_equal(p.n, 1);
    assert_string_equal(p.msg[0], "test.json: rule 'a': field 'condition.metric': unknown metric "
                                  "'nope' (known: failed_rate_10m, events_per_second)");
    rt_alert_problems_free(&p);
}

static void test_one_bad_rule_rejects_all(void **state)
{
    (void)state;
    rt_alert_problems_t p = {0};
    assert_null(parse("{\"rules\":[{\"name\":\"good\",\"severity\":\"info\",\"condition\":"
                      "{\"sql\":\"SELECT 1\"},\"threshold\":1},{\"name\":\"bad\",\"severity\":"
                      "\"info\",\"condition\":{\"sql\":\"SELECT 1\",\"metric\":\"x\"},"
                      "\"threshold\":\"high\",\"for\":-1}]}",
                      &env_all, &p));
    const char *want[] = {"rule 'bad': field 'condition': has both sql and metric",
                          "rule 'bad': field 'threshold': expected a number",
                          "rule 'bad': field 'for': expected a duration"};
    for (size_t k = 0; k < 3; k++) {
        int found = 0;
        for (size_t i = 0; i < p.n; i++)
            found |= strstr(p.msg[i], want[k]) != NULL;
        if (!found) fail_msg("missing: %s", want[k]);
    }
    rt_alert_problems_free(&p);
    /* Duplicate keys in one object are refused by the JSON parser. */
    assert_null(parse("{\"rules\":[{\"name\":\"a\",\"name\":\"b\"}]}", &env_all, &p));
    assert_non_null(strstr(p.msg[0], "duplicate object key"));
    rt_alert_problems_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_metric_names),
        cmocka_unit_test(test_one_bad_rule_rejects_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
