-- 007_etl_rollup.sql: what the ETL needs to keep audit_logs_hourly current
-- by adding each load's counts instead of recomputing whole hours
-- (lib/etl.c, ROLLUP_SQL).
--
-- audit_logs_hourly has the continuous aggregate's columns, and an average
-- cannot be updated from an average: rt_etl_hourly keeps, per (hour,
-- event_type, actor), the count and sum of the non-NULL durations besides
-- the counts. Each load adds to it and rewrites the touched rows of
-- audit_logs_hourly from it, in the load's transaction.
--
-- The first time, it is filled from audit_logs_ts, which the ETL has kept
-- audit_logs_hourly equal to until now. Only where audit_logs_hourly is a
-- table (plain PostgreSQL); a continuous aggregate needs none of this. Adds a
-- table and an index; changes nothing that exists. Idempotent.

DO $do$
BEGIN
    IF to_regclass('rt_etl_hourly') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE rt_etl_hourly (
        bucket         timestamptz  NOT NULL,
        event_type     varchar(100),
        actor          varchar(100),
        event_count    bigint       NOT NULL,
        duration_count bigint       NOT NULL,
        duration_sum   bigint       NOT NULL,
        success_count  bigint       NOT NULL,
        failure_count  bigint       NOT NULL
    );
    CREATE INDEX rt_etl_hourly_bucket_idx ON rt_etl_hourly (bucket);
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit_logs_hourly')) = 'r'
       AND to_regclass('audit_logs_ts') IS NOT NULL THEN
        INSERT INTO rt_etl_hourly
        SELECT date_trunc('hour', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', event_type, actor,
               count(*), count(duration_ms), coalesce(sum(duration_ms), 0),
               sum(CASE WHEN success THEN 1 ELSE 0 END),
               sum(CASE WHEN NOT success THEN 1 ELSE 0 END)
        FROM audit_logs_ts
        GROUP BY 1, 2, 3;
    END IF;
END;
$do$;
