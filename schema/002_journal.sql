-- 002_journal.sql: the change journal and the triggers that feed it.
--
-- Every row change on intents / audit_logs is written to rt_journal and
-- announced with NOTIFY in the same transaction, so a notification is sent
-- exactly when its journal row commits. The journal's seq is the event id
-- clients resume from; the NOTIFY payload carries it as "seq", and the
-- journal's payload column holds the very text that was (or would have been)
-- sent.
--
-- NOTIFY payloads must be shorter than 8000 bytes, and an oversized pg_notify
-- raises an error that would roll back the application's own write. A payload
-- over 7999 bytes is therefore announced by reference, {"seq" : N, "ref" : true},
-- and the listener fetches the row from the journal.
--
-- Columns are read through to_jsonb(NEW) rather than NEW.col, so an existing
-- table that lacks one of them (say version or data) still works: the key is
-- then null instead of the trigger failing.
--
-- The functions run as their owner (SECURITY DEFINER) with a fixed
-- search_path, so an application role that may write intents but has no
-- rights on rt_journal, or uses another search_path, still gets its writes
-- journaled instead of failing.
--
-- Every statement is idempotent: running this file again changes nothing.

CREATE SEQUENCE IF NOT EXISTS rt_journal_seq;

CREATE TABLE IF NOT EXISTS rt_journal (
    seq         bigint      PRIMARY KEY DEFAULT nextval('rt_journal_seq'),
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    channel     text        NOT NULL,
    event_type  text        NOT NULL,
    routing_key text,
    payload     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS rt_journal_xid_idx ON rt_journal (xid);
CREATE INDEX IF NOT EXISTS rt_journal_created_at_idx ON rt_journal (created_at);

CREATE OR REPLACE FUNCTION notify_intent_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    s bigint := nextval('rt_journal_seq');
    r jsonb := to_jsonb(NEW);
    p text;
BEGIN
    p := json_build_object(
        'intent_id', r->'id',
        'status', r->'status',
        'version', r->'version',
        'updated_at', r->'updated_at',
        'event_type', TG_OP,
        'data', r->'data',
        'seq', s)::text;
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

CREATE OR REPLACE FUNCTION notify_audit_log_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    s bigint := nextval('rt_journal_seq');
    r jsonb := to_jsonb(NEW);
    p text;
BEGIN
    p := json_build_object(
        'log_id', r->'id',
        'event_type', r->'event_type',
        'intent_id', r->'intent_id',
        'actor', r->'actor',
        'created_at', r->'created_at',
        'payload', r->'payload',
        'seq', s)::text;
    INSERT INTO rt_journal (seq, channel, event_type, routing_key, payload)
    VALUES (s, 'audit_log_created', 'audit_log', r->>'intent_id', p);
    IF octet_length(p) <= 7999 THEN
        PERFORM pg_notify('audit_log_created', p);
    ELSE
        PERFORM pg_notify('audit_log_created', json_build_object('seq', s, 'ref', true)::text);
    END IF;
    RETURN NULL;
END;
$fn$;

-- Pin the search_path to the schema this migration runs in (pg_catalog first
-- so built-ins cannot be shadowed, pg_temp last so a temporary table cannot
-- stand in for rt_journal). Setting the same value again is a no-op.
DO $do$
BEGIN
    EXECUTE format('ALTER FUNCTION notify_intent_changed() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION notify_audit_log_created() SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END;
$do$;

CREATE OR REPLACE TRIGGER intent_changed_trigger
    AFTER INSERT OR UPDATE ON intents
    FOR EACH ROW EXECUTE FUNCTION notify_intent_changed();

CREATE OR REPLACE TRIGGER audit_log_created_trigger
    AFTER INSERT ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION notify_audit_log_created();
