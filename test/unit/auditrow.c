/* Unit tests for lib/auditrow.c: exact integers on decimal text, ISO 8601
 * times as rt_etl_time (schema/004) accepts them, and the transform of
 * journal payloads of every shape, including JSON the scanner must refuse. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "auditrow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int integral(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    return rt_json_integral(s, strlen(s), lo, hi, out);
}

static void test_integral(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int ok;
        int64_t v;
    } cases[] = {
        {"0", 1, 0},
        {"-0", 1, 0},
        {"1500", 1, 1500},
        {"1500.000", 1, 1500},
        {"15e2", 1, 1500},
        {"1.5E3", 1, 1500},
        {"15000e-1", 1, 1500},
        {"0.0015e6", 1, 1500},
        {"1500.5", 0, 0},
        {"1e400", 0, 0},
        {"1e-400", 0, 0},
        {"2147483647", 1, 2147483647},
        {"2147483648", 0, 0},
        {"-2147483648", 1, -2147483648LL},
        {"-2147483649", 0, 0},
        {"0.1", 0, 0},
        {"100000000000000000000e-11", 1, 1000000000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t v = -7;
        int ok = integral(cases[i].s, INT32_MIN, INT32_MAX, &v);
        if (ok != cases[i].ok || (ok && v != cases[i].v))
            fail_msg("%s: ok %d value %lld, want ok %d value %lld", cases[i].s, ok, (long long)v,
                     cases[i].ok, (long long)cases[i].v);
    }
    int64_t v;
    assert_true(integral("9223372036854775807", 1, INT64_MAX, &v));
    assert_true(v == INT64_MAX);
    assert_false(integral("9223372036854775808", 1, INT64_MAX, &v));
    assert_false(integral("0", 1, INT64_MAX, &v));
    assert_false(integral("-5", 1, INT64_MAX, &v));
    assert_true(integral("-9223372036854775808", INT64_MIN, 0, &v));
    assert_true(v == INT64_MIN);
}

static int64_t utc_of(const char *s)
{
    rt_auditrow_t r;
    memset(&r, 0, sizeof r);
    if (rt_auditrow_parse_time(s, strlen(s), &r) < 0) return INT64_MIN;
    assert_false(r.time_local);
    return r.utc_us;
}

static void test_times(void **state)
{
    (void)state;
    /* 2026-11-22 08:47:56.123456 UTC = 1795337276.123456 */
    assert_true(utc_of("2026-11-22T08:47:56.123456Z") == 1795337276123456LL);
    assert_true(utc_of("2026-11-22 10:47:56.123456+02") == 1795337276123456LL);
    assert_true(utc_of("2026-11-22T03:17:56.123456-05:30") == 1795337276123456LL);
    assert_true(utc_of("2026-11-22T03:17:56.123456-0530") == 1795337276123456LL);
    assert_true(utc_of("2026-11-22Z") == 1795305600000000LL);
    assert_true(utc_of("2026-11-22T08:47Z") == 1795337220000000LL);
    /* Rounded to the microsecond, as PostgreSQL reads it. */
    assert_true(utc_of("1970-01-01T00:00:00.9999996Z") == 1000000);
    assert_true(utc_of("1969-12-31T23:59:59Z") == -1000000);
    assert_true(utc_of("2024-02-29T00:00:00Z") != INT64_MIN);
    static const char *const refused[] = {
        "2026-02-29",
        "2026-02-30T10:00:00",
        "2100-02-29",
        "0000-01-01",
        "2026-13-01",
        "2026-00-10",
        "2026-01-32",
        "2026-01-01T24:00",
        "2026-01-01T23:60",
        "2026-01-01T23:59:60",
        "2026-01-01T10",
        "2026-01-01T10:00:00.",
        "2026-01-01T10:00:00+16",
        "2026-01-01T10:00z",
        "2026-1-01",
        "26-01-01",
        "2026-01-01x",
        "",
        "yesterday",
        "2026-01-01T10:00:00+01:6",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (utc_of(refused[i]) != INT64_MIN) fail_msg("\"%s\" was accepted", refused[i]);

    rt_auditrow_t r;
    memset(&r, 0, sizeof r);
    assert_int_equal(rt_auditrow_parse_time("2026-11-22T08:47:56.5", 21, &r), 0);
    assert_true(r.time_local);
    assert_true(r.local_minute == 1795337220LL / 60);
    assert_true(r.local_rest_us == 56500000);
    rt_auditrow_set_utc(&r, 1795337220LL - 3600);
    assert_true(r.utc_us == (1795337220LL - 3600) * 1000000 + 56500000);

    char buf[40];
    rt_format_utc(1795337276123456LL, buf);
    assert_string_equal(buf, "2026-11-22 08:47:56.123456+00");
    rt_format_utc(-1, buf);
    assert_string_equal(buf, "1969-12-31 23:59:59.999999+00");
    /* Before year 1 and after 9999, as PostgreSQL reads them (year 0 is 1 BC). */
    rt_format_utc(utc_of("0001-01-01T00:30+01:00"), buf);
    assert_string_equal(buf, "0001-12-31 23:30:00.000000+00 BC");
    rt_format_utc(utc_of("9999-12-31T23:30-01:00"), buf);
    assert_string_equal(buf, "10000-01-01 00:30:00.000000+00");
    for (int64_t d = -800000; d < 3000000; d += 997) {
        int64_t y;
        unsigned m, dd;
        rt_civil_from_days(d, &y, &m, &dd);
        assert_true(rt_days_from_civil(y, m, dd) == d);
    }
}

static void parse(const char *json, rt_auditrow_t *r, char *scratch)
{
    rt_auditrow_parse(json, strlen(json), scratch, r);
}

static void assert_str(rt_str_t s, const char *want)
{
    if (!want) {
        if (s.ptr) fail_msg("got \"%.*s\", want NULL", (int)s.len, s.ptr);
        return;
    }
    if (!s.ptr || s.len != strlen(want) || memcmp(s.ptr, want, s.len) != 0)
        fail_msg("got \"%.*s\", want \"%s\"", s.ptr ? (int)s.len : 4, s.ptr ? s.ptr : "NULL", want);
}

static void test_rows(void **state)
{
    (void)state;
    char scratch[1024];
    rt_auditrow_t r;
    parse("{\"log_id\": 7, \"event_type\": \"BRIDGE_COMPLETED\", \"intent_id\": "
          "\"6f9619ff-8b86-d011-b42d-00cf4fc964ff\", \"actor\": \"al\\u00e9\\ud83d\\ude00\", "
          "\"created_at\": \"2026-11-22T08:47:56Z\", \"payload\": {\"bridge_type\": \"slack\", "
          "\"old_status\": \"a\\tb\", \"new_status\": \"c\", \"duration_ms\": 1500.0, "
          "\"success\": false, \"nested\": [{\"x\": [1, {}]}, null]}, \"seq\": 3}",
          &r, scratch);
    assert_false(r.bad);
    assert_true(r.has_log_id && r.log_id == 7);
    assert_str(r.event_type, "BRIDGE_COMPLETED");
    assert_string_equal(r.intent_id, "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
    assert_str(r.actor, "al\xc3\xa9\xf0\x9f\x98\x80");
    assert_str(r.bridge_type, "slack");
    assert_str(r.status_from, "a\tb");
    assert_str(r.status_to, "c");
    assert_true(r.has_duration && r.duration_ms == 1500);
    assert_int_equal(r.success, 0);
    assert_true(r.has_time && !r.time_local && r.utc_us == 1795337276000000LL);
    assert_true(r.payload.ptr && r.payload.ptr[0] == '{' &&
                r.payload.ptr[r.payload.len - 1] == '}');

    /* Absent and null: NULLs, success true when absent, nothing bad. */
    parse("{\"log_id\": 8, \"created_at\": \"2026-11-22\", \"payload\": null}", &r, scratch);
    assert_false(r.bad);
    assert_null(r.payload.ptr);
    assert_int_equal(r.success, 1);
    assert_str(r.event_type, NULL);
    parse("{\"log_id\": 8, \"created_at\": \"2026-11-22\", \"payload\": {\"success\": null}}", &r,
          scratch);
    assert_false(r.bad);
    assert_int_equal(r.success, -1);

    /* Wrong types: NULL and bad. */
    parse("{\"log_id\": 9, \"created_at\": \"2026-11-22\", \"payload\": {\"bridge_type\": 5, "
          "\"duration_ms\": \"1500\", \"success\": \"yes\"}}",
          &r, scratch);
    assert_true(r.bad);
    assert_str(r.bridge_type, NULL);
    assert_false(r.has_duration);
    assert_int_equal(r.success, -1);
    parse("{\"log_id\": 9, \"created_at\": \"2026-11-22\", \"payload\": [1, 2]}", &r, scratch);
    assert_true(r.bad);
    assert_int_equal(r.success, 1);
    assert_true(r.payload.len == 6);
    parse("{\"log_id\": 9, \"created_at\": \"2026-11-22\", \"intent_id\": \"not-a-uuid\"}", &r,
          scratch);
    assert_true(r.bad);
    assert_string_equal(r.intent_id, "");
    /* 100 characters fit (multibyte ones count once), 101 do not. */
    char big[512];
    char *o = big + sprintf(big, "{\"log_id\": 1, \"created_at\": \"2026-11-22\", \"actor\": \"");
    for (int i = 0; i < 100; i++)
        o += sprintf(o, "\xc3\xa9");
    sprintf(o, "\"}");
    parse(big, &r, scratch);
    assert_false(r.bad);
    assert_int_equal(r.actor.len, 200);
    sprintf(o, "x\"}");
    parse(big, &r, scratch);
    assert_true(r.bad);
    assert_str(r.actor, NULL);
    /* The last of repeated keys wins, as in jsonb; escaped keys match. */
    parse("{\"log_id\": 1, \"log_id\": 2, \"created_at\": \"2026-11-22\", \"act\\u006fr\": \"x\"}",
          &r, scratch);
    assert_true(r.log_id == 2);
    assert_str(r.actor, "x");
    /* No log_id, a bad time, \u0000: bad. */
    parse("{\"created_at\": \"2026-11-22\"}", &r, scratch);
    assert_true(r.bad && !r.has_log_id);
    parse("{\"log_id\": 1, \"created_at\": \"2026-02-30\"}", &r, scratch);
    assert_true(r.bad && !r.has_time);
    parse("{\"log_id\": 1, \"created_at\": \"2026-11-22\", \"actor\": \"a\\u0000\"}", &r, scratch);
    assert_true(r.bad);
    assert_str(r.actor, NULL);

    /* Not JSON, or not an object: a bad row without a log_id. */
    static const char *const broken[] = {
        "",
        "[]",
        "42",
        "{",
        "{\"log_id\": 1,}",
        "{\"log_id\": 01}",
        "{\"log_id\": 1} x",
        "{\"a\": [1, 2}",
        "{\"a\": \"\\x\"}",
        "{\"a\": tru}",
        "{\"a\": \"\x01\"}",
        "{\"a\" 1}",
        "{\"a\": -}",
        "{\"a\": 1.}",
        "{\"a\": 1e}",
        "{\"a\": [}]}",
    };
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        parse(broken[i], &r, scratch);
        if (!r.bad || r.has_log_id) fail_msg("'%s' parsed", broken[i]);
    }
    /* Deep nesting is fine (no recursion). */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 64);
    char *scr = malloc(2 * depth + 64);
    o = deep + sprintf(deep, "{\"log_id\": 5, \"payload\": {\"x\": ");
    for (size_t i = 0; i < depth; i++)
        *o++ = '[';
    for (size_t i = 0; i < depth; i++)
        *o++ = ']';
    strcpy(o, "}}");
    parse(deep, &r, scr);
    assert_true(r.has_log_id && r.log_id == 5);
    free(deep);
    free(scr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integral),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_rows),
    };
    return cmocka_run_group_tests_name("auditrow", tests, NULL, NULL);
}
