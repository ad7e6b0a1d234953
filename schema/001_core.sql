-- 001_core.sql: the application's tables, as the spec defines them.
--
-- In production these tables already exist and hold live data, often with
-- more columns than listed here. CREATE TABLE IF NOT EXISTS leaves an existing
-- table exactly as it is (columns, types, defaults, rows); the definitions
-- below only matter on an empty database (development, tests, the demo).
-- Nothing in schema/ removes or alters a table or column that exists; the
-- later migrations only add their own tables, functions and triggers.

CREATE TABLE IF NOT EXISTS intents (
    id UUID PRIMARY KEY,
    data JSONB,
    status VARCHAR(50),
    created_at TIMESTAMP DEFAULT now(),
    updated_at TIMESTAMP DEFAULT now(),
    version INTEGER DEFAULT 1
);

CREATE TABLE IF NOT EXISTS audit_logs (
    id SERIAL PRIMARY KEY,
    event_type VARCHAR(100),
    intent_id UUID,
    actor VARCHAR(100),
    payload JSONB,
    created_at TIMESTAMP DEFAULT now()
);
