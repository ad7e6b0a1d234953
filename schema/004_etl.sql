-- 004_etl.sql: the audit-log ETL's target tables, its cursor, and the
-- transform it applies (lib/etl.c).
--
-- audit_logs_ts holds one row per audit log, in the spec's columns. Where the
-- timescaledb extension can be loaded it is a hypertable with a continuous
-- aggregate audit_logs_hourly. Otherwise (plain PostgreSQL) it is natively
-- range-partitioned by UTC day, rtbridge creates the daily partitions (ahead
-- of time, and on demand for a row whose day has none) and keeps a table
-- audit_logs_hourly with the aggregate's columns current in the same
-- transaction as each load. Both answer the same queries with the same rows.
--
-- A partitioned table's unique keys must contain its partition key, so the
-- key that makes re-loading a log a no-op is (log_id, time). The ETL takes
-- time from the source row, where it never changes, so a log_id is never
-- loaded twice. log_id is bigint, wider than the spec's integer, so an
-- existing audit_logs with bigint ids loads as well.
--
-- Nothing here drops or alters an existing table: an existing audit_logs_ts
-- or audit_logs_hourly is used as it is (only the indexes are added).
-- Retention (dropping whole daily partitions past --etl-retention) is done by
-- rtbridge at run time, never by a migration. Every statement is idempotent.

DO $do$
DECLARE
    use_timescale boolean := false;
BEGIN
    IF to_regclass('audit_logs_ts') IS NULL THEN
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
            -- Available is not loadable: the library must be preloaded, and
            -- the role may lack the right. Either way fall back to native
            -- partitions instead of failing the migration.
            BEGIN
                CREATE EXTENSION IF NOT EXISTS timescaledb;
                use_timescale := true;
            EXCEPTION WHEN others THEN
                RAISE WARNING 'timescaledb is available but cannot be used (%): '
                              'audit_logs_ts uses native partitions', SQLERRM;
            END;
        END IF;

        IF use_timescale THEN
            CREATE TABLE audit_logs_ts (
                time        timestamptz  NOT NULL,
                log_id      bigint       NOT NULL,
                event_type  varchar(100),
                intent_id   uuid,
                actor       varchar(100),
                bridge_type varchar(100),
                status_from varchar(50),
                status_to   varchar(50),
                payload     jsonb,
                duration_ms integer,
                success     boolean
            );
            EXECUTE $$SELECT create_hypertable('audit_logs_ts', 'time',
                                               chunk_time_interval => interval '1 day')$$;
        ELSE
            CREATE TABLE audit_logs_ts (
                time        timestamptz  NOT NULL,
                log_id      bigint       NOT NULL,
                event_type  varchar(100),
                intent_id   uuid,
                actor       varchar(100),
                bridge_type varchar(100),
                status_from varchar(50),
                status_to   varchar(50),
                payload     jsonb,
                duration_ms integer,
                success     boolean
            ) PARTITION BY RANGE (time);
        END IF;
    END IF;
END;
$do$;

CREATE UNIQUE INDEX IF NOT EXISTS audit_logs_ts_log_id_time_key ON audit_logs_ts (log_id, time);
-- TimescaleDB gives every hypertable this index; the native table gets it too
-- (the hourly rollup reads hour ranges through it).
CREATE INDEX IF NOT EXISTS audit_logs_ts_time_idx ON audit_logs_ts (time DESC);
CREATE INDEX IF NOT EXISTS idx_audit_logs_ts_intent_id ON audit_logs_ts (intent_id, time DESC);
CREATE INDEX IF NOT EXISTS idx_audit_logs_ts_event_type ON audit_logs_ts (event_type, time DESC);
CREATE INDEX IF NOT EXISTS idx_audit_logs_ts_actor ON audit_logs_ts (actor, time DESC);

DO $do$
DECLARE
    hypertable boolean := false;
BEGIN
    IF to_regclass('audit_logs_hourly') IS NOT NULL THEN
        RETURN;
    END IF;
    -- timescaledb_information exists only with the extension: look it up
    -- only then (EXECUTE: a static reference would fail to parse).
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $$SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                                 WHERE hypertable_name = 'audit_logs_ts'
                                   AND hypertable_schema = current_schema())$$
            INTO hypertable;
    END IF;
    IF hypertable THEN
        -- WITH NO DATA: a continuous aggregate cannot be filled inside a
        -- transaction. Real-time aggregation (materialized_only = false)
        -- answers with fresh rows until the policy has materialized them.
        EXECUTE $$
            CREATE MATERIALIZED VIEW audit_logs_hourly
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket('1 hour', time) AS bucket,
                   event_type,
                   actor,
                   count(*) AS event_count,
                   avg(duration_ms) AS avg_duration_ms,
                   sum(CASE WHEN success THEN 1 ELSE 0 END) AS success_count,
                   sum(CASE WHEN NOT success THEN 1 ELSE 0 END) AS failure_count
            FROM audit_logs_ts
            GROUP BY bucket, event_type, actor
            WITH NO DATA$$;
        EXECUTE $$SELECT add_continuous_aggregate_policy('audit_logs_hourly',
                      start_offset => interval '2 hours',
                      end_offset => interval '1 hour',
                      schedule_interval => interval '1 hour',
                      if_not_exists => true)$$;
    ELSE
        -- The aggregate's columns and types, kept current by the ETL: every
        -- load recomputes the hours it touched from audit_logs_ts.
        CREATE TABLE audit_logs_hourly (
            bucket          timestamptz NOT NULL,
            event_type      varchar(100),
            actor           varchar(100),
            event_count     bigint      NOT NULL,
            avg_duration_ms numeric,
            success_count   bigint      NOT NULL,
            failure_count   bigint      NOT NULL
        );
        CREATE INDEX audit_logs_hourly_bucket_idx ON audit_logs_hourly (bucket);
    END IF;
END;
$do$;

-- Where the ETL is, per source. Every journal row with xid < last_xmin has
-- been loaded, and so has every row with seq <= last_seq that is visible in
-- the snapshot `snapshot` (a pg_snapshot as text). A row still to load
-- therefore has xid >= last_xmin and either seq > last_seq or an xid that
-- snapshot did not see: see lib/etl.c. The row advances in the transaction
-- that loads the rows.
CREATE TABLE IF NOT EXISTS rt_etl_cursor (
    source      text        PRIMARY KEY,
    last_seq    bigint      NOT NULL DEFAULT 0,
    last_xmin   xid8        NOT NULL DEFAULT '0',
    snapshot    text        NOT NULL DEFAULT '1:1:',
    rows_loaded bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---- the transform ------------------------------------------------------------
--
-- The spec's transform (bridge_type, old_status -> status_from, new_status ->
-- status_to, duration_ms, success defaulting to true) done by the server,
-- whose JSON parser is the one that wrote the payload, so numbers of any
-- size and every string survive exactly. A field that is absent or JSON null
-- loads as NULL (success: true when absent). A field of the wrong type, a
-- string too long for its column, a number that is not an integer in range,
-- or a payload that is not an object loads as NULL too, and marks the row
-- bad, so the ETL can count it. No input makes these functions fail.

CREATE OR REPLACE FUNCTION rt_etl_given(v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT v IS NOT NULL AND jsonb_typeof(v) <> 'null' $fn$;

CREATE OR REPLACE FUNCTION rt_etl_text(v jsonb, maxlen integer) RETURNS text
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT CASE WHEN jsonb_typeof(v) = 'string' AND char_length(v #>> '{}') <= maxlen
                 THEN v #>> '{}' END $fn$;

-- An integral JSON number within [lo, hi]. CASE fixes the order: the cast to
-- numeric runs only on numbers.
CREATE OR REPLACE FUNCTION rt_etl_integral(v jsonb, lo numeric, hi numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT CASE WHEN jsonb_typeof(v) IS DISTINCT FROM 'number' THEN NULL
                 WHEN v::numeric <> trunc(v::numeric) THEN NULL
                 WHEN v::numeric < lo OR v::numeric > hi THEN NULL
                 ELSE v::numeric END $fn$;

CREATE OR REPLACE FUNCTION rt_etl_uuid(v jsonb) RETURNS uuid
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT CASE WHEN jsonb_typeof(v) = 'string'
                      AND (v #>> '{}') ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
                 THEN (v #>> '{}')::uuid END $fn$;

CREATE OR REPLACE FUNCTION rt_etl_bool(v jsonb, absent boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE AS
$fn$ SELECT CASE WHEN v IS NULL THEN absent
                 WHEN jsonb_typeof(v) = 'boolean' THEN v::boolean END $fn$;

-- A timestamp as to_jsonb() writes one (ISO 8601, with or without an offset),
-- read in the session's time zone when it has no offset, as a plain cast
-- would. Anything else is NULL. The pattern rules out every malformed value
-- except a day past the end of its month, which only the cast can tell; the
-- exception block (a subtransaction) is entered only for days 29 to 31.
CREATE OR REPLACE FUNCTION rt_etl_time(v jsonb) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS
$fn$
DECLARE
    s text;
BEGIN
    IF jsonb_typeof(v) IS DISTINCT FROM 'string' THEN
        RETURN NULL;
    END IF;
    s := v #>> '{}';
    IF s !~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]+)?)?)?(Z|[+-](0[0-9]|1[0-5])(:?[0-5][0-9])?)?$'
       OR substr(s, 1, 4) = '0000' THEN
        RETURN NULL;
    END IF;
    IF substr(s, 9, 2) <= '28' THEN
        RETURN s::timestamptz;
    END IF;
    BEGIN
        RETURN s::timestamptz;
    EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
        RETURN NULL;
    END;
END;
$fn$;

-- One journal row of channel audit_log_created (its NOTIFY payload: log_id,
-- event_type, intent_id, actor, created_at, payload, seq) as one row of
-- audit_logs_ts, plus bad. A row whose created_at is missing or unreadable
-- takes fallback_time (the journal's) and is bad; one without a usable
-- log_id has log_id NULL and is bad (the ETL skips it: it has no key).
CREATE OR REPLACE FUNCTION rt_etl_transform(notify_payload text, fallback_time timestamptz)
RETURNS TABLE ("time" timestamptz, log_id bigint, event_type text, intent_id uuid, actor text,
               bridge_type text, status_from text, status_to text, payload jsonb,
               duration_ms integer, success boolean, bad boolean)
LANGUAGE sql STABLE AS
-- Each level is fenced with OFFSET 0 so the planner does not flatten it and
-- copy its expressions into every reference: the text is parsed once, each
-- field is extracted once, and each conversion runs once.
$fn$
SELECT coalesce(c.t, fallback_time), c.lid::bigint, c.et, c.iid, c.act, c.bt, c.sf, c.st,
       c.pl, c.dur::integer, c.ok,
       c.t IS NULL
       OR c.lid IS NULL
       OR (rt_etl_given(c.v_et) AND c.et IS NULL)
       OR (rt_etl_given(c.v_iid) AND c.iid IS NULL)
       OR (rt_etl_given(c.v_act) AND c.act IS NULL)
       OR (c.pl IS NOT NULL AND jsonb_typeof(c.pl) <> 'object')
       OR (rt_etl_given(c.v_bt) AND c.bt IS NULL)
       OR (rt_etl_given(c.v_sf) AND c.sf IS NULL)
       OR (rt_etl_given(c.v_st) AND c.st IS NULL)
       OR (rt_etl_given(c.v_dur) AND c.dur IS NULL)
       OR (rt_etl_given(c.v_ok) AND c.ok IS NULL)
FROM (
    SELECT f.*,
           rt_etl_time(f.v_time) AS t,
           rt_etl_integral(f.v_lid, 1, 9223372036854775807) AS lid,
           rt_etl_text(f.v_et, 100) AS et,
           rt_etl_uuid(f.v_iid) AS iid,
           rt_etl_text(f.v_act, 100) AS act,
           rt_etl_text(f.v_bt, 100) AS bt,
           rt_etl_text(f.v_sf, 50) AS sf,
           rt_etl_text(f.v_st, 50) AS st,
           rt_etl_integral(f.v_dur, -2147483648, 2147483647) AS dur,
           rt_etl_bool(f.v_ok, true) AS ok
    FROM (
        SELECT o.pl,
               o.p -> 'created_at' AS v_time, o.p -> 'log_id' AS v_lid,
               o.p -> 'event_type' AS v_et, o.p -> 'intent_id' AS v_iid,
               o.p -> 'actor' AS v_act,
               o.pl -> 'bridge_type' AS v_bt, o.pl -> 'old_status' AS v_sf,
               o.pl -> 'new_status' AS v_st, o.pl -> 'duration_ms' AS v_dur,
               o.pl -> 'success' AS v_ok
        FROM (
            SELECT j.p, nullif(j.p -> 'payload', 'null'::jsonb) AS pl
            FROM (SELECT notify_payload::jsonb AS p OFFSET 0) j
            OFFSET 0
        ) o
        OFFSET 0
    ) f
    OFFSET 0
) c
$fn$;

-- Creates the partition of audit_logs_ts for one UTC day unless it exists;
-- returns whether it did. A no-op when audit_logs_ts is not natively
-- partitioned (a hypertable makes its own chunks).
CREATE OR REPLACE FUNCTION rt_etl_ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS
$fn$
DECLARE
    part text := 'audit_logs_ts_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_logs_ts')) IS DISTINCT FROM 'p'
       OR to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_logs_ts FOR VALUES FROM (%L) TO (%L)',
                   part, to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
                   to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
END;
$fn$;
