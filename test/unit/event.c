/* Unit tests for lib/event.c: payload parsing and the shared wire encodings. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "event.h"

#include <stdlib.h>
#include <string.h>

/* 2026-01-02T03:04:05.678Z */
#define T0 1767323045678000000ull

static void test_intent_payload(void **state)
{
    (void)state;
    const char *p = "{\"intent_id\":\"abc\",\"status\":\"pending\",\"seq\":42}";
    rt_event_t *ev;
    int64_t seq;
    char why[128];
    assert_int_equal(rt_event_parse_notify("intent_changed", p, strlen(p), T0, &ev, &seq, why,
                                           sizeof why),
                     RT_PARSE_OK);
    assert_int_equal(seq, 42);
    assert_int_equal(ev->seq, 42);
    assert_int_equal(ev->type, RT_EV_INTENT_UPDATE);
    assert_string_equal(ev->key, "abc");
    assert_string_equal(ev->channel, "intent_changed");
    assert_string_equal(ev->body, p);
    const char *msg = "{\"type\":\"intent_update\",\"id\":42,\"data\":{\"intent_id\":\"abc\","
                      "\"status\":\"pending\",\"seq\":42},\"timestamp\":\"2026-01-02T03:04:05.678Z\"}";
    assert_string_equal(ev->msg, msg);
    assert_int_equal(ev->msg_len, strlen(msg));
    const char *sse = "id: 42\nevent: intent_update\ndata: {\"intent_id\":\"abc\","
                      "\"status\":\"pending\",\"seq\":42}\n\n";
    assert_string_equal(ev->sse, sse);
    assert_int_equal(ev->sse_len, strlen(sse));
    /* one unmasked final text frame carrying exactly msg */
    assert_int_equal((unsigned char)ev->ws_frame[0], 0x81);
    assert_true(strlen(msg) > 125); /* so the 16-bit length form is used */
    assert_int_equal((unsigned char)ev->ws_frame[1], 126);
    assert_int_equal(((unsigned char)ev->ws_frame[2] << 8) | (unsigned char)ev->ws_frame[3],
                     strlen(msg));
    assert_int_equal(ev->ws_frame_len, 4 + strlen(msg));
    assert_memory_equal(ev->ws_frame + 4, msg, strlen(msg));
    rt_event_unref(ev);
}

static void test_audit_payload(void **state)
{
    (void)state;
    const char *p = "{\"log_id\":7,\"intent_id\":null,\"seq\":3}";
    rt_event_t *ev;
    int64_t seq;
    assert_int_equal(rt_event_parse_notify("audit_log_created", p, strlen(p), T0, &ev, &seq, NULL, 0),
                     RT_PARSE_OK);
    assert_int_equal(ev->type, RT_EV_AUDIT_LOG);
    assert_string_equal(ev->key, "");
    assert_string_equal(rt_event_type_name(ev->type), "audit_log");
    rt_event_unref(ev);
}

static void test_other_channel_uses_type_field(void **state)
{
    (void)state;
    const char *p = "{\"type\":\"alert_firing\",\"seq\":9}";
    const char *q = "{\"type\":\"no_such_type\",\"seq\":10}";
    rt_event_t *ev;
    int64_t seq;
    assert_int_equal(rt_event_parse_notify("custom", p, strlen(p), T0, &ev, &seq, NULL, 0),
                     RT_PARSE_OK);
    assert_int_equal(ev->type, RT_EV_ALERT_FIRING);
    rt_event_unref(ev);
    assert_int_equal(rt_event_parse_notify("custom", q, strlen(q), T0, &ev, &seq, NULL, 0),
                     RT_PARSE_OK);
    assert_int_equal(ev->type, RT_EV_SYSTEM_NOTIFICATION);
    rt_event_unref(ev);
}

static void test_by_reference(void **state)
{
    (void)state;
    const char *p = "{\"seq\":77,\"ref\":true}";
    rt_event_t *ev;
    int64_t seq;
    assert_int_equal(rt_event_parse_notify("intent_changed", p, strlen(p), T0, &ev, &seq, NULL, 0),
                     RT_PARSE_BY_REF);
    assert_null(ev);
    assert_int_equal(seq, 77);
}

typedef struct {
    const char *channel, *payload;
    rt_parse_result_t want;
    int64_t want_seq;
    const char *why_contains;
} bad_case_t;

static void test_bad_payloads(void **state)
{
    (void)state;
    static const bad_case_t cases[] = {
        {"intent_changed", "not json", RT_PARSE_BAD_JSON, 0, "invalid JSON"},
        {"intent_changed", "{\"seq\":1", RT_PARSE_BAD_JSON, 0, "invalid JSON"},
        {"intent_changed", "[1,2]", RT_PARSE_BAD_JSON, 0, "not a JSON object"},
        {"intent_changed", "\"str\"", RT_PARSE_BAD_JSON, 0, "invalid JSON"},
        {"intent_changed", "", RT_PARSE_BAD_JSON, 0, "invalid JSON"},
        {"intent_changed", "{\"intent_id\":\"a\"}", RT_PARSE_MISSING, 0, "seq"},
        {"intent_changed", "{\"intent_id\":\"a\",\"seq\":\"5\"}", RT_PARSE_MISSING, 0, "seq"},
        {"intent_changed", "{\"intent_id\":\"a\",\"seq\":0}", RT_PARSE_MISSING, 0, "seq"},
        {"intent_changed", "{\"intent_id\":\"a\",\"seq\":-4}", RT_PARSE_MISSING, 0, "seq"},
        {"intent_changed", "{\"seq\":5}", RT_PARSE_MISSING, 5, "intent_id"},
        {"intent_changed", "{\"intent_id\":12,\"seq\":5}", RT_PARSE_MISSING, 5, "intent_id"},
        {"audit_log_created", "{\"seq\":6}", RT_PARSE_MISSING, 6, "log_id"},
        {"audit_log_created", "{\"log_id\":\"x\",\"seq\":6}", RT_PARSE_MISSING, 6, "log_id"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rt_event_t *ev = (rt_event_t *)1;
        int64_t seq = -1;
        char why[160] = "";
        rt_parse_result_t r =
            rt_event_parse_notify(cases[i].channel, cases[i].payload, strlen(cases[i].payload),
                                  T0, &ev, &seq, why, sizeof why);
        if (r != cases[i].want || seq != cases[i].want_seq || ev != NULL ||
            !strstr(why, cases[i].why_contains))
            fail_msg("case %zu (%s): result %d want %d, seq %lld want %lld, why '%s' want '%s'", i,
                     cases[i].payload, r, cases[i].want, (long long)seq,
                     (long long)cases[i].want_seq, why, cases[i].why_contains);
    }
}

static void test_line_breaks_are_recompacted(void **state)
{
    (void)state;
    const char *p = "{\"intent_id\": \"a\",\n \"seq\": 4}";
    rt_event_t *ev;
    int64_t seq;
    assert_int_equal(rt_event_parse_notify("intent_changed", p, strlen(p), T0, &ev, &seq, NULL, 0),
                     RT_PARSE_OK);
    assert_null(strchr(ev->body, '\n'));
    assert_string_equal(ev->body, "{\"intent_id\":\"a\",\"seq\":4}");
    rt_event_unref(ev);
}

/* Frame headers at the length boundaries of RFC 6455 §5.2. */
static void test_frame_length_encodings(void **state)
{
    (void)state;
    size_t overhead = strlen("{\"type\":\"intent_update\",\"id\":1,\"data\":,\"timestamp\":\""
                             "2026-01-02T03:04:05.678Z\"}");
    size_t targets[] = {125, 126, 65535, 65536, 100000};
    for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
        size_t body_len = targets[t] - overhead;
        char *body = malloc(body_len + 1);
        memset(body, ' ', body_len);
        body[0] = '0'; /* a JSON number with trailing blanks is still embedded verbatim */
        body[body_len] = '\0';
        rt_event_t *ev = rt_event_new(RT_EV_INTENT_UPDATE, 1, "c", "", body, body_len, T0);
        const unsigned char *h = (const unsigned char *)ev->ws_frame;
        size_t len = ev->msg_len, hdr;
        assert_int_equal(len, targets[t]);
        if (len < 126) {
            assert_int_equal(h[1], len);
            hdr = 2;
        } else if (len <= 0xffff) {
            assert_int_equal(h[1], 126);
            assert_int_equal(((size_t)h[2] << 8) | h[3], len);
            hdr = 4;
        } else {
            assert_int_equal(h[1], 127);
            size_t v = 0;
            for (int i = 0; i < 8; i++) v = (v << 8) | h[2 + i];
            assert_int_equal(v, len);
            hdr = 10;
        }
        assert_int_equal(ev->ws_frame_len, hdr + len);
        assert_ptr_equal(ev->ws_frame + hdr, ev->msg);
        rt_event_unref(ev);
        free(body);
    }
}

/* Events outside the journal (seq 0) carry no SSE id line, so a browser's
 * Last-Event-ID stays at the last journaled event instead of becoming 0. */
static void test_unjournaled_event_has_no_sse_id(void **state)
{
    (void)state;
    const char *b = "{\"total_intents\":3}";
    rt_event_t *ev = rt_event_new(RT_EV_STATS_UPDATED, 0, "", "", b, strlen(b), 0);
    assert_string_equal(ev->sse, "event: stats_updated\ndata: {\"total_intents\":3}\n\n");
    assert_int_equal(ev->sse_len, strlen(ev->sse));
    assert_non_null(strstr(ev->msg, "\"id\":0,"));
    rt_event_unref(ev);
    ev = rt_event_new(RT_EV_STATS_UPDATED, 7, "", "", b, strlen(b), 0);
    assert_string_equal(ev->sse, "id: 7\nevent: stats_updated\ndata: {\"total_intents\":3}\n\n");
    assert_int_equal(ev->sse_len, strlen(ev->sse));
    rt_event_unref(ev);
}

static void test_type_names_round_trip(void **state)
{
    (void)state;
    for (int t = 0; t < RT_EV__COUNT; t++)
        assert_int_equal(rt_event_type_from_name(rt_event_type_name((rt_event_type_t)t)), t);
    assert_int_equal(rt_event_type_from_name("nope"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intent_payload),
        cmocka_unit_test(test_audit_payload),
        cmocka_unit_test(test_other_channel_uses_type_field),
        cmocka_unit_test(test_by_reference),
        cmocka_unit_test(test_bad_payloads),
        cmocka_unit_test(test_line_breaks_are_recompacted),
        cmocka_unit_test(test_frame_length_encodings),
        cmocka_unit_test(test_unjournaled_event_has_no_sse_id),
        cmocka_unit_test(test_type_names_round_trip),
    };
    return cmocka_run_group_tests_name("event", tests, NULL, NULL);
}
