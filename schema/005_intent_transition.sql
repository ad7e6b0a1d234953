-- 005_intent_transition.sql: intent_update payloads say where a change came from.
--
-- The metrics aggregator keeps the status distribution current between its
-- reconciliations from the events alone, which needs the status an UPDATE
-- moved away from; and it buckets creations by the row's created_at, which an
-- application may set itself. So the payload gains two keys: "old_status"
-- (OLD.status on UPDATE, null on INSERT) and "created_at". Only keys are
-- added; everything 002 sent is sent unchanged, and like 002 the columns are
-- read through to_jsonb, so a table without one of them still works.
--
-- CREATE OR REPLACE of rtbridge's own function: idempotent, and it touches no
-- table. The search_path pin of 002 is restated because CREATE OR REPLACE
-- resets the function's settings to the ones given here.

CREATE OR REPLACE FUNCTION notify_intent_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    s bigint := nextval('rt_journal_seq');
    r jsonb := to_jsonb(NEW);
    o jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
    p text;
BEGIN
    p := json_build_object(
        'intent_id', r->'id',
        'status', r->'status',
        'version', r->'version',
        'updated_at', r->'updated_at',
        'event_type', TG_OP,
        'data', r->'data',
        'seq', s,
        'old_status', o->'status',
        'created_at', r->'created_at')::text;
    INSERT INTO rt_journal (seq, channel, event_type, routing_key, payload)
    VALUES (s, 'intent_changed', 'intent_update', r->>'id', p);
    IF octet_length(p) <= 7999 THEN
        PERFORM pg_notify('intent_changed', p);
    ELSE
        PERFORM pg_notify('intent_changed', json_build_object('seq', s, 'ref', true)::text);
    END IF;
    RETURN NULL;
END;
$fn$;

DO $do$
BEGIN
    EXECUTE format('ALTER FUNCTION notify_intent_changed() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END;
$do$;
