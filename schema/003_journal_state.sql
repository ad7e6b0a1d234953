-- 003_journal_state.sql: how far the journal has been pruned.
--
-- A client resuming from seq S can be served from rt_journal only if no row
-- after S has been pruned. rtbridge's pruning records the highest seq it
-- deleted here, so "past retention" is a fact, not a guess from gaps in the
-- sequence (which also come from rolled-back transactions).

CREATE TABLE IF NOT EXISTS rt_journal_state (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    pruned_through bigint  NOT NULL DEFAULT 0
);

INSERT INTO rt_journal_state (id) VALUES (true) ON CONFLICT (id) DO NOTHING;
