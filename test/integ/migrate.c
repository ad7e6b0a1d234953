/*
 * Integration tests of the schema (the files of schema/) and its migrator
 * (lib/migrate.c) against a real PostgreSQL: idempotence, respect for
 * existing application tables, the journal + NOTIFY contract the listener
 * relies on, oversized payloads, concurrent migrators and failure handling.
 *
 * Each test works in its own fresh database, made by the fixture and dropped
 * by it even when the test fails.
 */
#include "pgtest.h"

#include "migrate.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NOTIFY_WAIT_MS 5000

/* Everything the migrations can create or change in the current schema, with
 * no OIDs or timestamps: equal strings mean an identical schema. */
static const char *const FINGERPRINT_SQL =
    "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) "
    "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ("
    "  SELECT format('class %s kind=%s', c.relname, c.relkind) "
    "    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns) "
    "  UNION ALL "
    "  SELECT format('column %s.%s %s notnull=%s default=%s', c.relname, a.attname, "
    "                format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "                coalesce(pg_get_expr(d.adbin, d.adrelid), '')) "
    "    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "    WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped "
    "  UNION ALL "
    "  SELECT 'index ' || pg_get_indexdef(i.indexrelid) "
    "    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
    "    WHERE c.relnamespace = (SELECT oid FROM ns) "
    "  UNION ALL "
    "  SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled) "
    "    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
    "    WHERE c.relnamespace = (SELECT oid FROM ns) AND NOT t.tgisinternal "
    "  UNION ALL "
    "  SELECT format('function %s secdef=%s config=%s body=%s', p.oid::regprocedure, "
    "                p.prosecdef, p.proconfig, p.prosrc) "
    "    FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns) "
    "  UNION ALL "
    "  SELECT format('sequence %s start=%s step=%s cache=%s', s.seqrelid::regclass, s.seqstart, "
    "                s.seqincrement, s.seqcache) "
    "    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid "
    "    WHERE c.relnamespace = (SELECT oid FROM ns) "
    ") f(x)";

/* ---- helpers ------------------------------------------------------------------ */

/* rt_migrate on c; fails the test with rt_migrate's message on error. */
static int migrate_ok(PGconn *c)
{
    char err[512] = "";
    int applied = -1;
    int rc = rt_migrate(c, &applied, err, sizeof err);
    if (rc != 0) fail_msg("rt_migrate returned %d: %s", rc, err);
    return applied;
}

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (j == NULL) fail_msg("invalid JSON (%s at byte %d): %s", e.text, e.position, text);
    if (!json_is_object(j)) fail_msg("JSON is not an object: %s", text);
    return j;
}

static void fail_in(json_t *o, const char *key, const char *got, const char *want)
{
    char *dump = json_dumps(o, JSON_COMPACT);
    fail_msg("key \"%s\": got %s, expected %s\n  in: %s", key, got, want, dump ? dump : "?");
}

static void expect_str(json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);
    const char *got = json_is_string(v) ? json_string_value(v) : NULL;
    if (!pgt_str_same(got, want)) fail_in(o, key, got ? got : "(no string)", want);
}

static void expect_ll(json_t *o, const char *key, long long want)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) != want) {
        char got[32] = "(no integer)", w[32];
        if (json_is_integer(v)) snprintf(got, sizeof got, "%lld", (long long)json_integer_value(v));
        snprintf(w, sizeof w, "%lld", want);
        fail_in(o, key, got, w);
    }
}

static void expect_null(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_null(v)) fail_in(o, key, v ? "a non-null value" : "(missing)", "null");
}

/* The object has exactly these keys. */
static void expect_keys(json_t *o, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (json_object_get(o, keys[i]) == NULL) fail_in(o, keys[i], "(missing)", "present");
    }
    if (json_object_size(o) != n) {
        char got[32], want[32];
        snprintf(got, sizeof got, "%zu keys", json_object_size(o));
        snprintf(want, sizeof want, "%zu keys", n);
        fail_in(o, "(all)", got, want);
    }
}

/* The spec's keys, data and seq, and (005) old_status and created_at. */
static const char *const INTENT_KEYS[] = {"intent_id", "status",     "version",   "updated_at",
                                          "event_type", "data",      "seq",       "old_status",
                                          "created_at"};
static const char *const AUDIT_KEYS[] = {"log_id",     "event_type", "intent_id", "actor",
                                         "created_at", "payload",    "seq"};
static const char *const REF_KEYS[] = {"seq", "ref"};
#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

static char *journal_payload(PGconn *c, long long seq)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT payload FROM rt_journal WHERE seq = %lld", seq);
    return pgt_scalar_str(c, sql);
}

static long long max_seq(PGconn *c)
{
    return pgt_scalar_ll(c, "SELECT max(seq) FROM rt_journal");
}

/* Waits for one notification on channel and returns its payload (malloc'd). */
static char *expect_notify(PGconn *listener, const char *channel)
{
    PGnotify *n = pgt_wait_notify(listener, NOTIFY_WAIT_MS);
    if (n == NULL) fail_msg("no NOTIFY on %s within %d ms", channel, NOTIFY_WAIT_MS);
    pgt_assert_str_eq(n->relname, channel);
    char *payload = strdup(n->extra);
    assert_non_null(payload);
    PQfreemem(n);
    return payload;
}

static void expect_no_notify(PGconn *listener)
{
    PGnotify *n = pgt_wait_notify(listener, 200);
    if (n != NULL) fail_msg("unexpected NOTIFY on %s: %s", n->relname, n->extra);
}

/* Checks the journal row seq: its channel, event type and routing key. */
static void expect_journal_row(PGconn *c, long long seq, const char *channel,
                               const char *event_type, const char *routing_key)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT concat_ws('|', channel, event_type, coalesce(routing_key, '(null)')) "
             "FROM rt_journal WHERE seq = %lld",
             seq);
    char want[256];
    snprintf(want, sizeof want, "%s|%s|%s", channel, event_type,
             routing_key ? routing_key : "(null)");
    char *got = pgt_scalar_str(c, sql);
    pgt_assert_str_eq(got, want);
    free(got);
}

#define ID1 "00000000-0000-4000-8000-000000000001"
#define ID2 "00000000-0000-4000-8000-000000000002"
#define ID3 "00000000-0000-4000-8000-000000000003"

/* ---- (a) a second run changes nothing --------------------------------------- */

static void test_migrate_twice(void **state)
{
    const char *url = *state;
    PGconn *c = pgt_connect(url);

    pgt_assert_ll_eq(migrate_ok(c), rt_migrations_count);
    char *first = pgt_scalar_str(c, FINGERPRINT_SQL);
    assert_non_null(first);
    /* A fingerprint that missed our objects would compare equal trivially. */
    const char *must[] = {"class rt_journal kind=r",
                          "class rt_journal_seq kind=S",
                          "class rt_schema_migrations kind=r",
                          "rt_journal_xid_idx",
                          "rt_journal_created_at_idx",
                          "CREATE TRIGGER intent_changed_trigger AFTER INSERT OR UPDATE ON",
                          "CREATE TRIGGER audit_log_created_trigger AFTER INSERT ON",
                          "function notify_intent_changed() secdef=t",
                          "function notify_audit_log_created() secdef=t",
                          "column intents.version integer"};
    for (size_t i = 0; i < NKEYS(must); i++) {
        if (strstr(first, must[i]) == NULL)
            fail_msg("fingerprint lacks \"%s\":\n%s", must[i], first);
    }

    pgt_assert_ll_eq(migrate_ok(c), 0);
    char *second = pgt_scalar_str(c, FINGERPRINT_SQL);
    pgt_assert_str_eq(second, first);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM rt_schema_migrations"),
                     rt_migrations_count);

    /* The files themselves are idempotent too: with the bookkeeping gone,
     * every one runs again and the schema still comes out identical. */
    pgt_exec(c, "DELETE FROM rt_schema_migrations");
    pgt_assert_ll_eq(migrate_ok(c), rt_migrations_count);
    char *third = pgt_scalar_str(c, FINGERPRINT_SQL);
    pgt_assert_str_eq(third, first);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM rt_journal"), 0);

    free(first);
    free(second);
    free(third);
    PQfinish(c);
}

/* ---- (b) existing application tables are left alone ------------------------ */

static const char *const TABLE_SHAPE_SQL =
    "SELECT string_agg(format('%s.%s %s notnull=%s default=%s', c.relname, a.attname, "
    "                         format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "                         coalesce(pg_get_expr(d.adbin, d.adrelid), '')), "
    "                  E'\\n' ORDER BY c.relname, a.attnum) "
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE c.relname IN ('intents', 'audit_logs') "
    "  AND c.relnamespace = to_regnamespace(current_schema()) "
    "  AND a.attnum > 0 AND NOT a.attisdropped";

static const char *const TABLE_EXTRAS_SQL =
    "SELECT coalesce(string_agg(x, E'\\n' ORDER BY x), '') FROM ("
    "  SELECT pg_get_indexdef(indexrelid) FROM pg_index "
    "    WHERE indrelid IN ('intents'::regclass, 'audit_logs'::regclass) "
    "  UNION ALL SELECT pg_get_constraintdef(oid) FROM pg_constraint "
    "    WHERE conrelid IN ('intents'::regclass, 'audit_logs'::regclass)) f(x)";

static const char *const TABLE_ROWS_SQL =
    "SELECT (SELECT string_agg(t::text, E'\\n' ORDER BY t.id) FROM intents t) "
    "    || E'\\n--\\n' || (SELECT string_agg(t::text, E'\\n' ORDER BY t.id) FROM audit_logs t)";

static void test_existing_tables_untouched(void **state)
{
    const char *url = *state;
    PGconn *c = pgt_connect(url);

    /* The application's own tables: extra columns, a CHECK, no intents.version,
     * no audit_logs.payload, rows already in them. */
    pgt_exec(c, "CREATE TABLE intents (id uuid PRIMARY KEY, data jsonb, status varchar(50), "
                "  created_at timestamp, updated_at timestamp, "
                "  owner text NOT NULL DEFAULT 'ops', priority smallint CHECK (priority > 0));"
                "INSERT INTO intents VALUES "
                "  ('" ID1 "', '{\"amount\": 10}', 'pending', '2025-01-01 10:00', "
                "   '2025-01-01 10:00', 'alice', 1),"
                "  ('" ID2 "', NULL, 'completed', '2025-01-02 11:00', "
                "   '2025-01-02 12:00', 'bob', 2);"
                "CREATE TABLE audit_logs (id serial PRIMARY KEY, event_type varchar(100), "
                "  intent_id uuid, actor varchar(100), created_at timestamp, source text);"
                "INSERT INTO audit_logs (event_type, intent_id, actor, created_at, source) "
                "  VALUES ('created', '" ID1 "', 'alice', '2025-01-01 10:00', 'api');");

    char *shape = pgt_scalar_str(c, TABLE_SHAPE_SQL);
    char *extras = pgt_scalar_str(c, TABLE_EXTRAS_SQL);
    char *rows = pgt_scalar_str(c, TABLE_ROWS_SQL);

    pgt_assert_ll_eq(migrate_ok(c), rt_migrations_count);

    char *shape_after = pgt_scalar_str(c, TABLE_SHAPE_SQL);
    char *extras_after = pgt_scalar_str(c, TABLE_EXTRAS_SQL);
    char *rows_after = pgt_scalar_str(c, TABLE_ROWS_SQL);
    pgt_assert_str_eq(shape_after, shape);
    pgt_assert_str_eq(extras_after, extras);
    pgt_assert_str_eq(rows_after, rows);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM pg_trigger WHERE tgname IN "
                                      "('intent_changed_trigger', 'audit_log_created_trigger')"),
                     2);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM rt_journal"), 0);

    /* The triggers work on these tables: missing columns become null. */
    pgt_exec(c, "INSERT INTO intents (id, data, status, owner) "
                "VALUES ('" ID3 "', '{\"k\": \"v\"}', 'pending', 'carol')");
    pgt_exec(c, "UPDATE intents SET status = 'failed' WHERE id = '" ID1 "'");
    pgt_exec(c, "INSERT INTO audit_logs (event_type, intent_id, actor, source) "
                "VALUES ('status_changed', '" ID1 "', 'bob', 'cli')");
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM rt_journal"), 3);
    long long seq = pgt_scalar_ll(c, "SELECT min(seq) FROM rt_journal");

    char *p = journal_payload(c, seq);
    json_t *j = parse_json(p);
    expect_keys(j, INTENT_KEYS, NKEYS(INTENT_KEYS));
    expect_str(j, "intent_id", ID3);
    expect_str(j, "status", "pending");
    expect_str(j, "event_type", "INSERT");
    expect_null(j, "version");
    expect_null(j, "updated_at");
    expect_null(j, "old_status");
    expect_str(json_object_get(j, "data"), "k", "v");
    expect_ll(j, "seq", seq);
    expect_journal_row(c, seq, "intent_changed", "intent_update", ID3);
    json_decref(j);
    free(p);

    p = journal_payload(c, seq + 1);
    j = parse_json(p);
    expect_keys(j, INTENT_KEYS, NKEYS(INTENT_KEYS));
    expect_str(j, "intent_id", ID1);
    expect_str(j, "status", "failed");
    expect_str(j, "event_type", "UPDATE");
    expect_str(j, "old_status", "pending");
    expect_str(j, "created_at", "2025-01-01T10:00:00");
    expect_null(j, "version");
    expect_str(j, "updated_at", "2025-01-01T10:00:00");
    expect_ll(json_object_get(j, "data"), "amount", 10);
    expect_ll(j, "seq", seq + 1);
    json_decref(j);
    free(p);

    p = journal_payload(c, seq + 2);
    j = parse_json(p);
    expect_keys(j, AUDIT_KEYS, NKEYS(AUDIT_KEYS));
    expect_ll(j, "log_id", 2);
    expect_str(j, "event_type", "status_changed");
    expect_str(j, "intent_id", ID1);
    expect_str(j, "actor", "bob");
    expect_null(j, "payload");
    expect_ll(j, "seq", seq + 2);
    expect_journal_row(c, seq + 2, "audit_log_created", "audit_log", ID1);
    json_decref(j);
    free(p);

    free(shape);
    free(extras);
    free(rows);
    free(shape_after);
    free(extras_after);
    free(rows_after);
    PQfinish(c);
}

/* The spec's own trigger (section 2.1) may already be installed. Our objects
 * reuse its names, so it is upgraded in place, not doubled: one change still
 * means one NOTIFY, now with a seq. */
static void test_spec_trigger_upgraded(void **state)
{
    const char *url = *state;
    PGconn *c = pgt_connect(url);
    PGconn *l = pgt_connect(url);
    pgt_exec(c, "CREATE TABLE intents (id uuid PRIMARY KEY, data jsonb, status varchar(50), "
                "  created_at timestamp, updated_at timestamp, version integer DEFAULT 1);"
                "CREATE OR REPLACE FUNCTION notify_intent_changed() RETURNS TRIGGER AS $$ "
                "BEGIN "
                "  PERFORM pg_notify('intent_changed', json_build_object("
                "    'intent_id', NEW.id, 'status', NEW.status, 'version', NEW.version, "
                "    'updated_at', NEW.updated_at, 'event_type', TG_OP)::text); "
                "  RETURN NEW; "
                "END; $$ LANGUAGE plpgsql;"
                "CREATE TRIGGER intent_changed_trigger AFTER INSERT OR UPDATE ON intents "
                "  FOR EACH ROW EXECUTE FUNCTION notify_intent_changed();");
    pgt_assert_ll_eq(migrate_ok(c), rt_migrations_count);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM pg_trigger "
                                      "WHERE tgrelid = 'intents'::regclass AND NOT tgisinternal"),
                     1);

    pgt_exec(l, "LISTEN intent_changed");
    pgt_exec(c, "INSERT INTO intents (id, status) VALUES ('" ID1 "', 'pending')");
    char *n = expect_notify(l, "intent_changed");
    json_t *j = parse_json(n);
    expect_keys(j, INTENT_KEYS, NKEYS(INTENT_KEYS));
    expect_ll(j, "seq", max_seq(c));
    json_decref(j);
    free(n);
    expect_no_notify(l);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM rt_journal"), 1);

    PQfinish(l);
    PQfinish(c);
}

/* ---- (c) one journal row and one NOTIFY per change ------------------------- */

static void test_notify_payloads(void **state)
{
    const char *url = *state;
    pgt_migrate(url);
    PGconn *w = pgt_connect(url);
    PGconn *l = pgt_connect(url);
    pgt_exec(l, "LISTEN intent_changed; LISTEN audit_log_created");

    /* INSERT */
    pgt_exec(w, "INSERT INTO intents (id, status, data) "
                "VALUES ('" ID1 "', 'pending', '{\"amount\": 42, \"note\": \"h\\u00e9llo\"}')");
    char *n = expect_notify(l, "intent_changed");
    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT count(*) FROM rt_journal"), 1);
    long long s1 = max_seq(w);
    char *p = journal_payload(w, s1);
    pgt_assert_str_eq(n, p); /* the journal holds exactly what was sent */
    json_t *j = parse_json(n);
    expect_keys(j, INTENT_KEYS, NKEYS(INTENT_KEYS));
    expect_str(j, "intent_id", ID1);
    expect_str(j, "status", "pending");
    expect_ll(j, "version", 1);
    expect_str(j, "event_type", "INSERT");
    expect_ll(j, "seq", s1);
    expect_ll(json_object_get(j, "data"), "amount", 42);
    expect_str(json_object_get(j, "data"), "note", "h\xc3\xa9llo");
    if (!json_is_string(json_object_get(j, "updated_at")))
        fail_in(j, "updated_at", "?", "a string");
    expect_journal_row(w, s1, "intent_changed", "intent_update", ID1);
    json_decref(j);
    free(p);
    free(n);
    expect_no_notify(l);

    /* UPDATE */
    pgt_exec(w, "UPDATE intents SET status = 'processing', version = version + 1, "
                "updated_at = '2025-12-02 09:30:00.5' WHERE id = '" ID1 "'");
    n = expect_notify(l, "intent_changed");
    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT count(*) FROM rt_journal"), 2);
    long long s2 = max_seq(w);
    assert_true(s2 > s1);
    p = journal_payload(w, s2);
    pgt_assert_str_eq(n, p);
    j = parse_json(n);
    expect_keys(j, INTENT_KEYS, NKEYS(INTENT_KEYS));
    expect_str(j, "intent_id", ID1);
    expect_str(j, "status", "processing");
    expect_ll(j, "version", 2);
    expect_str(j, "updated_at", "2025-12-02T09:30:00.5");
    expect_str(j, "event_type", "UPDATE");
    expect_ll(j, "seq", s2);
    expect_journal_row(w, s2, "intent_changed", "intent_update", ID1);
    json_decref(j);
    free(p);
    free(n);
    expect_no_notify(l);

    /* INSERT into audit_logs */
    pgt_exec(w, "INSERT INTO audit_logs (event_type, intent_id, actor, payload, created_at) "
                "VALUES ('status_changed', '" ID1 "', 'tester', "
                "'{\"bridge_type\": \"sepa\", \"old_status\": \"pending\", "
                "\"new_status\": \"processing\", \"duration_ms\": 12, \"success\": true}', "
                "'2025-12-02 09:30:01')");
    n = expect_notify(l, "audit_log_created");
    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT count(*) FROM rt_journal"), 3);
    long long s3 = max_seq(w);
    assert_true(s3 > s2);
    p = journal_payload(w, s3);
    pgt_assert_str_eq(n, p);
    j = parse_json(n);
    expect_keys(j, AUDIT_KEYS, NKEYS(AUDIT_KEYS));
    expect_ll(j, "log_id", pgt_scalar_ll(w, "SELECT max(id) FROM audit_logs"));
    expect_str(j, "event_type", "status_changed");
    expect_str(j, "intent_id", ID1);
    expect_str(j, "actor", "tester");
    expect_str(j, "created_at", "2025-12-02T09:30:01");
    json_t *inner = json_object_get(j, "payload");
    expect_str(inner, "bridge_type", "sepa");
    expect_str(inner, "old_status", "pending");
    expect_str(inner, "new_status", "processing");
    expect_ll(inner, "duration_ms", 12);
    if (!json_is_true(json_object_get(inner, "success"))) fail_in(inner, "success", "?", "true");
    expect_ll(j, "seq", s3);
    expect_journal_row(w, s3, "audit_log_created", "audit_log", ID1);
    json_decref(j);
    free(p);
    free(n);
    expect_no_notify(l);

    PQfinish(l);
    PQfinish(w);
}

/* Several rows in one transaction: one journal row each, all with the
 * transaction's xid, notified in seq order. */
static void test_one_transaction_many_rows(void **state)
{
    const char *url = *state;
    pgt_migrate(url);
    PGconn *w = pgt_connect(url);
    PGconn *l = pgt_connect(url);
    pgt_exec(l, "LISTEN intent_changed");

    pgt_exec(w, "BEGIN");
    pgt_exec(w, "INSERT INTO intents (id, status) VALUES "
                "('" ID1 "', 'pending'), ('" ID2 "', 'pending'), ('" ID3 "', 'failed')");
    long long xid = pgt_scalar_ll(w, "SELECT pg_current_xact_id()::text::bigint");
    pgt_exec(w, "COMMIT");

    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT count(*) FROM rt_journal"), 3);
    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT count(DISTINCT xid) FROM rt_journal"), 1);
    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT min(xid::text::bigint) FROM rt_journal"), xid);
    long long first = pgt_scalar_ll(w, "SELECT min(seq) FROM rt_journal");
    for (long long i = 0; i < 3; i++) {
        char *n = expect_notify(l, "intent_changed");
        json_t *j = parse_json(n);
        expect_ll(j, "seq", first + i);
        json_decref(j);
        free(n);
    }
    expect_no_notify(l);

    PQfinish(l);
    PQfinish(w);
}

/* ---- (d) payloads too big for NOTIFY travel by reference ------------------- */

static void commit_ok(PGconn *c)
{
    PGresult *r = PQexec(c, "COMMIT");
    /* COMMIT of a failed transaction "succeeds" with the tag ROLLBACK. */
    pgt_assert_str_eq(PQcmdStatus(r), "COMMIT");
    PQclear(r);
}

static void expect_ref(const char *notify_payload, long long seq)
{
    json_t *j = parse_json(notify_payload);
    expect_keys(j, REF_KEYS, NKEYS(REF_KEYS));
    expect_ll(j, "seq", seq);
    if (!json_is_true(json_object_get(j, "ref"))) fail_in(j, "ref", "?", "true");
    json_decref(j);
}

static void test_large_payload(void **state)
{
    const char *url = *state;
    pgt_migrate(url);
    PGconn *w = pgt_connect(url);
    PGconn *l = pgt_connect(url);
    pgt_exec(l, "LISTEN intent_changed");

    pgt_exec(w, "BEGIN");
    pgt_exec(w, "INSERT INTO intents (id, status, data) "
                "VALUES ('" ID1 "', 'pending', jsonb_build_object('blob', repeat('x', 20000)))");
    commit_ok(w);
    pgt_assert_ll_eq(pgt_scalar_ll(w, "SELECT count(*) FROM intents"), 1);

    long long seq = max_seq(w);
    char *n = expect_notify(l, "intent_changed");
    expect_ref(n, seq);
    free(n);
    expect_no_notify(l);

    char *p = journal_payload(w, seq);
    assert_true(strlen(p) > 20000);
    json_t *j = parse_json(p);
    expect_keys(j, INTENT_KEYS, NKEYS(INTENT_KEYS));
    expect_ll(j, "seq", seq);
    expect_str(j, "event_type", "INSERT");
    json_t *blob = json_object_get(json_object_get(j, "data"), "blob");
    assert_true(json_is_string(blob));
    const char *b = json_string_value(blob);
    pgt_assert_ll_eq(strlen(b), 20000);
    pgt_assert_ll_eq(strspn(b, "x"), 20000);
    json_decref(j);
    free(p);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT (payload::jsonb -> 'data') = (SELECT data FROM intents) "
             "FROM rt_journal WHERE seq = %lld",
             seq);
    char *same = pgt_scalar_str(w, sql);
    pgt_assert_str_eq(same, "t");
    free(same);

    /* The boundary: 7999 bytes still go inline, 8000 go by reference. Fix
     * every variable part (seq digits, timestamps) so only the blob's length
     * changes the payload's length, then measure the rest. */
    pgt_exec(w, "SELECT setval('rt_journal_seq', 100000)");
    pgt_exec(w, "INSERT INTO intents (id, status, data, updated_at, created_at) "
                "VALUES ('" ID2 "', 'pending', jsonb_build_object('blob', repeat('y', 100)), "
                "'2025-01-01 00:00:00', '2025-01-01 00:00:00')");
    free(expect_notify(l, "intent_changed"));
    long long fixed = pgt_scalar_ll(w, "SELECT octet_length(payload) - 100 FROM rt_journal "
                                       "WHERE seq = (SELECT max(seq) FROM rt_journal)");
    long long fit = 7999 - fixed;

    pgt_exec(w, "DELETE FROM intents WHERE id <> '" ID1 "'");
    snprintf(sql, sizeof sql,
             "INSERT INTO intents (id, status, data, updated_at, created_at) "
             "VALUES ('" ID2 "', 'pending', jsonb_build_object('blob', repeat('y', %lld)), "
             "'2025-01-01 00:00:00', '2025-01-01 00:00:00')",
             fit);
    pgt_exec(w, sql);
    seq = max_seq(w);
    p = journal_payload(w, seq);
    pgt_assert_ll_eq(strlen(p), 7999);
    n = expect_notify(l, "intent_changed");
    pgt_assert_str_eq(n, p);
    free(n);
    free(p);

    snprintf(sql, sizeof sql,
             "INSERT INTO intents (id, status, data, updated_at, created_at) "
             "VALUES ('" ID3 "', 'pending', jsonb_build_object('blob', repeat('y', %lld)), "
             "'2025-01-01 00:00:00', '2025-01-01 00:00:00')",
             fit + 1);
    pgt_exec(w, sql);
    seq = max_seq(w);
    p = journal_payload(w, seq);
    pgt_assert_ll_eq(strlen(p), 8000);
    n = expect_notify(l, "intent_changed");
    expect_ref(n, seq);
    free(n);
    free(p);
    expect_no_notify(l);

    /* Audit logs take the same path. */
    pgt_exec(l, "LISTEN audit_log_created");
    pgt_exec(w, "INSERT INTO audit_logs (event_type, intent_id, actor, payload) VALUES "
                "('big', '" ID1 "', 'tester', jsonb_build_object('blob', repeat('z', 9000)))");
    seq = max_seq(w);
    n = expect_notify(l, "audit_log_created");
    expect_ref(n, seq);
    p = journal_payload(w, seq);
    j = parse_json(p);
    expect_keys(j, AUDIT_KEYS, NKEYS(AUDIT_KEYS));
    expect_ll(j, "seq", seq);
    pgt_assert_ll_eq(
        strlen(json_string_value(json_object_get(json_object_get(j, "payload"), "blob"))), 9000);
    json_decref(j);
    free(p);
    free(n);
    expect_no_notify(l);

    PQfinish(l);
    PQfinish(w);
}

/* ---- (e) the schema never drops a table ------------------------------------ */

/* Finds "drop" + whitespace + "table" in any case. */
static const char *find_drop_table(const char *s)
{
    for (const char *p = s; (p = strcasestr(p, "drop")) != NULL; p++) {
        const char *q = p + 4;
        if (!(*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) continue;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
            q++;
        if (strncasecmp(q, "table", 5) == 0) return p;
    }
    return NULL;
}

static void test_no_drop_table(void **state)
{
    (void)state;
    assert_true(rt_migrations_count >= 2);
    assert_non_null(find_drop_table("x; Drop\n  TABLE y;")); /* the scanner itself works */
    for (size_t i = 0; i < rt_migrations_count; i++) {
        const char *hit = find_drop_table(rt_migrations[i].sql);
        if (hit) fail_msg("%s contains DROP TABLE: \"%.60s\"", rt_migrations[i].name, hit);
    }
}

/* ---- (f) instances migrating at the same time ------------------------------ */

typedef struct {
    const char *url;
    pthread_barrier_t *start;
    int rc;
    int applied;
    char err[512];
} racer_t;

static void *race(void *arg)
{
    racer_t *r = arg;
    PGconn *c = PQconnectdb(r->url);
    pthread_barrier_wait(r->start);
    if (PQstatus(c) == CONNECTION_OK) {
        r->rc = rt_migrate(c, &r->applied, r->err, sizeof r->err);
    } else {
        r->rc = -1;
        snprintf(r->err, sizeof r->err, "connect: %s", PQerrorMessage(c));
    }
    PQfinish(c);
    return NULL;
}

static void test_concurrent_migrators(void **state)
{
    const char *url = *state;
    enum { N = 4 };
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    racer_t racers[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        racers[i] = (racer_t){.url = url, .start = &start};
        assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < N; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < N; i++) {
        if (racers[i].rc != 0)
            fail_msg("migrator %d returned %d: %s", i, racers[i].rc, racers[i].err);
        total += racers[i].applied;
    }
    pgt_assert_ll_eq(total, rt_migrations_count);

    PGconn *c = pgt_connect(url);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM rt_schema_migrations"),
                     rt_migrations_count);
    PQfinish(c);
}

/* ---- (g) a failing migration rolls back and says why ----------------------- */

static void test_failure_rolls_back(void **state)
{
    const char *url = *state;
    PGconn *c = pgt_connect(url);
    char err[512];
    int applied = -1;

    /* Not from inside a transaction. */
    pgt_exec(c, "BEGIN");
    pgt_assert_ll_eq(rt_migrate(c, &applied, err, sizeof err), -EIO);
    if (strstr(err, "inside a transaction") == NULL) fail_msg("unexpected message: %s", err);
    pgt_exec(c, "ROLLBACK");

    /* A view named rt_journal makes 002's CREATE INDEX fail half-way. */
    pgt_exec(c, "CREATE VIEW rt_journal AS SELECT 1::bigint AS seq");
    pgt_assert_ll_eq(rt_migrate(c, &applied, err, sizeof err), -EIO);
    pgt_assert_ll_eq(applied, 1); /* 001 ran; migrating stops at the failing 002 */
    const char *want = "migration 002_journal.sql failed: SQLSTATE 42809: "
                       "cannot create index on relation \"rt_journal\"";
    pgt_assert_str_eq(err, want);
    assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);

    /* Nothing of 002 is left behind, and it is not recorded. */
    char *names = pgt_scalar_str(c, "SELECT string_agg(name, ',' ORDER BY name) "
                                    "FROM rt_schema_migrations");
    pgt_assert_str_eq(names, "001_core.sql");
    free(names);
    pgt_assert_ll_eq(pgt_scalar_ll(c, "SELECT count(*) FROM pg_proc "
                                      "WHERE proname LIKE 'notify_%'"),
                     0);
    char *seq = pgt_scalar_str(c, "SELECT to_regclass('rt_journal_seq')::text");
    pgt_assert_str_eq(seq, NULL);

    /* Fix the cause and the rest applies. */
    pgt_exec(c, "DROP VIEW rt_journal");
    pgt_assert_ll_eq(migrate_ok(c), rt_migrations_count - 1);

    PQfinish(c);
}

static int db_setup(void **state)
{
    *state = pgt_create_db("rt_migrate");
    return 0;
}

static int db_teardown(void **state)
{
    pgt_drop_db(*state);
    free(*state);
    return 0;
}

#define DB_TEST(f) cmocka_unit_test_setup_teardown(f, db_setup, db_teardown)

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_drop_table),
        DB_TEST(test_migrate_twice),
        DB_TEST(test_existing_tables_untouched),
        DB_TEST(test_spec_trigger_upgraded),
        DB_TEST(test_notify_payloads),
        DB_TEST(test_one_transaction_many_rows),
        DB_TEST(test_large_payload),
        DB_TEST(test_concurrent_migrators),
        DB_TEST(test_failure_rolls_back),
    };
    /* clang-format on */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
