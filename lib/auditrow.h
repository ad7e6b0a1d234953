/*
 * The ETL's transform, in C: one journal payload of channel audit_log_created
 * (the trigger's JSON: log_id, event_type, intent_id, actor, created_at,
 * payload, seq) becomes one row of audit_logs_ts, rendered as a line of
 * COPY text. It replaces a per-row SQL function whose JSON parsing, regexes
 * and PL/pgSQL call were nearly half of the ETL's time.
 *
 * The rules are the spec's, as schema/004_etl.sql's rt_etl_transform wrote
 * them: bridge_type, old_status -> status_from, new_status -> status_to,
 * duration_ms and success come from the nested payload; a field that is
 * absent or JSON null is NULL (success: true when absent); a field of the
 * wrong type, a string longer than its column, a number that is not an
 * integer in range, a payload that is not an object, a created_at that is not
 * an ISO 8601 time, or a log_id that is not a positive integer is NULL and
 * makes the row bad. Nothing in the input can make the parse fail: a payload
 * that is not JSON at all is a bad row without a log_id (skipped).
 *
 * The JSON scanner validates the document and records where each value lies;
 * numbers are checked exactly on their decimal digits (1500.000 and 15e2 are
 * integers, 1500.5 and 1e400 are not), so no value is rounded through a
 * double. Strings are decoded (escapes, surrogate pairs) and measured in
 * characters, as the column types count them.
 *
 * Pure functions, no allocation except where noted; any thread.
 */
#ifndef RT_AUDITROW_H
#define RT_AUDITROW_H

#include <stddef.h>
#include <stdint.h>

/* A decoded string: ptr NULL means SQL NULL. */
typedef struct rt_str {
    const char *ptr;
    size_t len;
} rt_str_t;

typedef struct rt_auditrow {
    int has_log_id;
    int64_t log_id;
    rt_str_t event_type, actor, bridge_type, status_from, status_to;
    char intent_id[37]; /* "" = NULL */
    rt_str_t payload;   /* raw JSON text of the nested payload, NULL if absent or null */
    int has_duration;
    int32_t duration_ms;
    int success; /* -1 NULL, 0 false, 1 true */

    /* created_at: has_time 0 if absent or unreadable. With an offset (Z,
     * +hh[:mm]) utc_us is the instant. Without one it is a wall-clock time
     * in the session's zone: local_minute is its minute counted from
     * 1970-01-01 00:00 as if it were UTC, and local_rest_us the seconds and
     * fraction within that minute; the caller resolves the minute in the
     * zone (rt_auditrow_set_utc). */
    int has_time;
    int time_local;
    int64_t utc_us;
    int64_t local_minute;
    int64_t local_rest_us;

    int bad; /* some field was unusable (and is NULL) */
} rt_auditrow_t;

/* Parses one journal payload (len bytes, need not be NUL-terminated).
 * Decoded strings are written to scratch, which must hold len bytes; the
 * row's strings point into scratch and into json. Always succeeds. */
void rt_auditrow_parse(const char *json, size_t len, char *scratch, rt_auditrow_t *row);

/* For a row with time_local: minute_utc_s is the instant (seconds since the
 * epoch) at which its local minute began. Sets utc_us. */
void rt_auditrow_set_utc(rt_auditrow_t *row, int64_t minute_utc_s);

/* Parses an ISO 8601 time the way rt_etl_time (schema/004) accepts one:
 * YYYY-MM-DD, optionally [T ]hh:mm[:ss[.fff...]], optionally Z or
 * +-hh[[:]mm]; year 0000 and days past the end of their month are refused.
 * Returns 0 and fills the row's time fields, or -1. */
int rt_auditrow_parse_time(const char *s, size_t n, rt_auditrow_t *row);

/* Whether the JSON number text [s, s+n) is an integer within [lo, hi]
 * (exactly, on its decimal digits); stores it in *out. */
int rt_json_integral(const char *s, size_t n, int64_t lo, int64_t hi, int64_t *out);

/* Writes us (microseconds since the epoch) as "YYYY-MM-DD hh:mm:ss.ffffff+00"
 * (with " BC" after it before year 1) into out (at least 40 bytes); returns
 * the length. */
size_t rt_format_utc(int64_t us, char *out);

/* Days since 1970-01-01 of a proleptic Gregorian date, and back. */
int64_t rt_days_from_civil(int64_t y, unsigned m, unsigned d);
void rt_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

#endif
