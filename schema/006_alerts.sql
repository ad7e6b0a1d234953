-- 006_alerts.sql: the alert evaluator's memory (lib/alerts.c).
--
-- rt_alert_events is the history: one row per state change of a rule
-- (pending, firing, resolved, error) and one per repeated notification of a
-- rule still firing (notified = true). rt_alert_state holds the current state
-- of each rule, so an evaluator that restarts (or takes over from another
-- instance) knows a rule is already firing and when it last notified, and
-- does not notify again before the rule's cooldown.
--
-- New tables only; nothing existing is dropped or altered. Idempotent.

CREATE TABLE IF NOT EXISTS rt_alert_events (
    id         bigserial PRIMARY KEY,
    rule       text NOT NULL,
    state      text NOT NULL,
    severity   text,
    value      double precision,
    threshold  double precision,
    notified   boolean NOT NULL DEFAULT false,
    message    text,
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_rt_alert_events_rule_at ON rt_alert_events (rule, at DESC);

CREATE TABLE IF NOT EXISTS rt_alert_state (
    rule          text PRIMARY KEY,
    state         text NOT NULL,
    value         double precision,
    threshold     double precision,
    since         timestamptz NOT NULL DEFAULT now(),
    last_notified timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
