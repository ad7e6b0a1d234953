#!/usr/bin/env bash
# Alerts as an operator uses them: `alerts check` on the shipped rules
# (ops/alert-rules.json) with data crafted to cross each threshold and to sit
# just below it (table and exit status), invalid files (exit 2, every problem
# named), `alerts list`, and `serve --alert-rules`: a bad file refuses to
# start, alert_firing / alert_resolved reach an SSE subscriber, a metric
# rule fires on the aggregator's snapshot, /metrics has the alert families, SIGHUP
# reloads a good file and keeps the old rules on a bad one, and a webhook URL
# with a password never appears in the log. Prints PASS:/FAIL: lines.
set -u
. "$(dirname "$0")/lib/common.sh"
db=rt_alerts_sh_$$

wait_for() { # FILE REGEX SECONDS
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# ---- usage errors --------------------------------------------------------------------

env DATABASE_URL=x "$BIN" alerts >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] && grep -q "expected 'check' or 'list'" "$tmp/err" &&
    pass "alerts without a subcommand exits 2" || fail "alerts without a subcommand exits 2" "exit $rc" "$(cat "$tmp/err")"
env DATABASE_URL=x "$BIN" alerts check >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] && grep -q -- "--alert-rules is required" "$tmp/err" &&
    pass "alerts check without --alert-rules exits 2" || fail "alerts check without --alert-rules exits 2" "exit $rc" "$(cat "$tmp/err")"

# ---- the shipped rules, on crafted data ------------------------------------------------

psql -q "$BASE" -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="${BASE%/*}/$db"
sql() { psql -qAt "$DATABASE_URL" -c "$1"; }
"$BIN" migrate >/dev/null 2>&1 || fail "migrate"

# The shipped rules notify Slack and e-mail: those channels must be configured
# for the file to load (nothing is sent by check).
export SLACK_WEBHOOK_URL=http://127.0.0.1:1/slack RTBRIDGE_SMTP_URL=smtp://127.0.0.1:1
export RTBRIDGE_SMTP_FROM=alerts@example.com RTBRIDGE_SMTP_TO=ops@example.com
RULES="$ROOT/ops/alert-rules.json"

# check ROW_RULE -> "YES" or "no" (the WOULD FIRE column), exit status in $check_rc
check() {
    "$BIN" alerts check --alert-rules "$RULES" >"$tmp/check" 2>"$tmp/check.err"
    check_rc=$?
}
verdict() { awk -v r="$1" '$1 == r { print $NF }' "$tmp/check"; }

# 100 intents in the last minutes; n failed, m corrected.
intents() {
    sql "TRUNCATE intents"
    sql "INSERT INTO intents (id, status, data, created_at)
         SELECT gen_random_uuid(), CASE WHEN g <= $1 THEN 'failed' ELSE 'completed' END,
                CASE WHEN g > 100 - $2 THEN '{\"correction_history\": [{\"by\": \"x\"}]}'::jsonb
                     ELSE '{\"correction_history\": []}'::jsonb END,
                now() - interval '1 minute'
         FROM generate_series(1, 100) g"
}
# BRIDGE_COMPLETED audit logs with these durations (ms), loaded by the ETL.
completions() {
    sql "TRUNCATE audit_logs_ts, audit_logs"
    for d in "$@"; do
        sql "INSERT INTO audit_logs (event_type, actor, payload) VALUES ('BRIDGE_COMPLETED', 'sh', '{\"duration_ms\": $d}')"
    done
    "$BIN" etl --once >/dev/null 2>&1
}

intents 5 20
completions 5000 5000
check
if [ $check_rc -eq 0 ] && [ "$(verdict high_error_rate)" = no ] && [ "$(verdict high_correction_rate)" = no ] &&
    [ "$(verdict slow_processing)" = no ] && [ "$(verdict no_activity)" = no ]; then
    pass "just below every threshold: nothing would fire, exit 0"
else
    fail "just below every threshold: nothing would fire, exit 0" "exit $check_rc" "$(cat "$tmp/check" "$tmp/check.err")"
fi
grep -qE '^high_error_rate +error +0\.05 +> 0\.05 +no$' "$tmp/check" &&
    pass "check prints rule, severity, value, threshold, verdict" || fail "check prints rule, severity, value, threshold, verdict" "$(cat "$tmp/check")"

expect_fire() { # NAME RULE
    check
    local others=0
    for r in high_error_rate high_correction_rate slow_processing no_activity; do
        [ "$r" = "$2" ] && continue
        [ "$(verdict "$r")" = no ] || others=1
    done
    if [ $check_rc -eq 1 ] && [ "$(verdict "$2")" = YES ] && [ $others -eq 0 ]; then
        pass "$1"
    else
        fail "$1" "exit $check_rc" "$(cat "$tmp/check" "$tmp/check.err")"
    fi
}

intents 6 20
expect_fire "high_error_rate fires at 6% (not at 5%)" high_error_rate
intents 5 21
expect_fire "high_correction_rate fires at 21% (not at 20%)" high_correction_rate
intents 5 20
completions 5000 5000 5003
expect_fire "slow_processing fires at 5.001 s (not at 5.0 s)" slow_processing
completions 5000
sql "UPDATE intents SET created_at = now() - interval '31 minutes'"
sql "UPDATE intents SET created_at = now() - interval '29 minutes' WHERE id = (SELECT id FROM intents LIMIT 1)"
check
[ "$(verdict no_activity)" = no ] && pass "no_activity quiet with one intent in 30 minutes" ||
    fail "no_activity quiet with one intent in 30 minutes" "$(cat "$tmp/check")"
sql "UPDATE intents SET created_at = now() - interval '31 minutes'"
expect_fire "no_activity fires with none in 30 minutes" no_activity

# ---- invalid files ---------------------------------------------------------------------------

cat >"$tmp/bad.json" <<'EOF'
{"rules": [
  {"name": "a", "severity": "warning", "condition": {"sql": "SELEC 1"}, "threshold": 1},
  {"name": "a", "severity": "warning", "condition": {"sql": "SELECT 1"}, "operator": "=>", "threshold": 1},
  {"name": "b", "severity": "warning", "condition": {"sql": "SELECT 1"}, "threshold": 1, "colour": "red",
   "channels": ["webhook"]}
]}
EOF
"$BIN" alerts check --alert-rules "$tmp/bad.json" >"$tmp/out" 2>"$tmp/err"
rc=$?
want=("rule 'a': field 'name': duplicate name (rule #1 has it too)"
    "rule 'a': field 'operator': invalid value '=>'"
    "rule 'b': field 'colour': unknown field"
    "rule 'b': field 'channels': channel 'webhook' is not configured (set --alert-webhook-url)")
missing=""
for w in "${want[@]}"; do grep -qF -- "$w" "$tmp/err" || missing="$missing [$w]"; done
[ $rc -eq 2 ] && [ -z "$missing" ] && pass "invalid file: exit 2, every problem with rule and field" ||
    fail "invalid file: exit 2, every problem with rule and field" "exit $rc" "missing:$missing" "$(cat "$tmp/err")"
cat >"$tmp/badsql.json" <<'EOF'
{"rules": [{"name": "q", "severity": "info", "condition": {"sql": "SELECT count(*) FROM no_such_table"}, "threshold": 1}]}
EOF
"$BIN" alerts check --alert-rules "$tmp/badsql.json" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] && grep -qF "rule 'q': field 'condition.sql': does not parse: relation \"no_such_table\" does not exist" "$tmp/err" &&
    pass "SQL that does not PREPARE: exit 2, named" || fail "SQL that does not PREPARE: exit 2, named" "exit $rc" "$(cat "$tmp/err")"

# ---- serve ---------------------------------------------------------------------------------------

port=$(sh "$ROOT/test/pg.sh" freeport)
"$BIN" serve --listen 127.0.0.1:"$port" --fanout-threads 1 --etl=off --alert-rules "$tmp/bad.json" >"$tmp/serve0.out" 2>"$tmp/serve0.err" &
spid=$!
pids+=("$spid")
deadline=$((SECONDS + 15))
while kill -0 "$spid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
wait "$spid" 2>/dev/null
rc=$?
[ $rc -eq 2 ] && grep -qF "field 'operator': invalid value '=>'" "$tmp/serve0.err" &&
    pass "serve refuses a bad rules file (exit 2, problems logged)" || fail "serve refuses a bad rules file" "exit $rc" "$(tail -5 "$tmp/serve0.err")"

sql "CREATE TABLE alert_t (v int); INSERT INTO alert_t VALUES (0)"
cat >"$tmp/rules.json" <<'EOF'
{"rules": [{"name": "t_high", "description": "alert_t over 5", "severity": "critical",
            "condition": {"sql": "SELECT max(v) FROM alert_t"}, "threshold": 5,
            "interval": "200ms", "cooldown": "1h", "channels": ["log", "webhook"]},
           {"name": "busy", "description": "more than 2 intents in 10 minutes", "severity": "warning",
            "condition": {"metric": "intents_created_10m"}, "threshold": 2,
            "interval": "1h", "channels": ["log"]}]}
EOF
secret=s3cr3tpass
"$BIN" serve --listen 127.0.0.1:"$port" --fanout-threads 1 --etl=off --alert-rules "$tmp/rules.json" \
    --alert-webhook-url "http://hookuser:$secret@127.0.0.1:1/hook?token=$secret" \
    --alert-notify-tries 2 --alert-notify-backoff 50ms --alert-notify-timeout 1s \
    >"$tmp/serve.out" 2>"$tmp/serve.err" &
spid=$!
pids+=("$spid")
if wait_for "$tmp/serve.err" "alerts: leading" 15; then
    curl -sN --max-time 20 "http://127.0.0.1:$port/api/v2/events/stream?types=alert_firing,alert_resolved" >"$tmp/sse" 2>/dev/null &
    cpid=$!
    pids+=("$cpid")
    if wait_for "$tmp/sse" "^retry:" 10; then
        sql "UPDATE alert_t SET v = 10"
        if wait_for "$tmp/sse" "^event: alert_firing" 10 && grep -q '"rule":"t_high"' "$tmp/sse"; then
            pass "alert_firing reaches an SSE subscriber"
        else
            fail "alert_firing reaches an SSE subscriber" "$(cat "$tmp/sse")" "$(tail -5 "$tmp/serve.err")"
        fi
        sql "UPDATE alert_t SET v = 0"
        wait_for "$tmp/sse" "^event: alert_resolved" 10 && pass "alert_resolved reaches an SSE subscriber" ||
            fail "alert_resolved reaches an SSE subscriber" "$(cat "$tmp/sse")"
    else
        fail "SSE subscriber connects" "$(cat "$tmp/sse")"
    fi
    kill "$cpid" 2>/dev/null
    wait_for "$tmp/serve.err" "webhook notification for rule t_high failed after 2 attempts" 10 &&
        ! grep -q "$secret" "$tmp/serve.err" "$tmp/serve.out" &&
        pass "a failing webhook is logged without its URL's secrets" ||
        fail "a failing webhook is logged without its URL's secrets" "$(grep -i webhook "$tmp/serve.err" | tail -3)"

    # A metric rule with a one-hour interval fires on the metrics' snapshot.
    busy_before=$(grep -c "\[WARNING\] busy" "$tmp/serve.err")
    sql "INSERT INTO intents (id, status) SELECT gen_random_uuid(), 'created' FROM generate_series(1, 3)"
    [ "$busy_before" -eq 0 ] && wait_for "$tmp/serve.err" "\[WARNING\] busy" 10 &&
        pass "a metric rule fires on the aggregator's snapshot" ||
        fail "a metric rule fires on the aggregator's snapshot" "$(tail -5 "$tmp/serve.err")"
    curl -s --max-time 5 "http://127.0.0.1:$port/metrics" >"$tmp/metrics"
    grep -q '^rtbridge_alert_rule_state{rule="busy",severity="warning",state="firing"} 1$' "$tmp/metrics" &&
        grep -q '^# TYPE rtbridge_alert_notification_failures_total counter$' "$tmp/metrics" &&
        grep -q '^rtbridge_alert_notification_failures_total{channel="webhook"} 2$' "$tmp/metrics" &&
        pass "/metrics has the alert families" ||
        fail "/metrics has the alert families" "$(grep rtbridge_alert "$tmp/metrics" | head -20)"

    "$BIN" alerts list >"$tmp/list" 2>&1
    rc=$?
    [ $rc -eq 0 ] && grep -qE '^  t_high +resolved' "$tmp/list" && [ "$(grep -cE '^  t_high +(firing|resolved) ' "$tmp/list")" -ge 3 ] &&
        pass "alerts list: state and last notifications" || fail "alerts list: state and last notifications" "exit $rc" "$(cat "$tmp/list")"

    # SIGHUP with a good file: two rules.
    cat >"$tmp/rules.json" <<'EOF'
{"rules": [{"name": "t_high", "severity": "critical", "condition": {"sql": "SELECT max(v) FROM alert_t"},
            "threshold": 5, "interval": "200ms", "cooldown": "1h", "channels": ["log"]},
           {"name": "t_any", "severity": "info", "condition": {"sql": "SELECT count(*) FROM alert_t"},
            "threshold": 0, "interval": "200ms", "channels": ["log"]}]}
EOF
    kill -HUP "$spid"
    wait_for "$tmp/serve.err" "rules reloaded: 2 rule\(s\)" 10 && wait_for "$tmp/serve.err" "\[INFO\] t_any|\] t_any" 10 &&
        pass "SIGHUP reloads a good file (the new rule fires)" || fail "SIGHUP reloads a good file" "$(tail -5 "$tmp/serve.err")"
    # SIGHUP with a bad file: old rules kept, problem logged, still evaluating.
    cp "$tmp/bad.json" "$tmp/rules.json"
    kill -HUP "$spid"
    if wait_for "$tmp/serve.err" "reload: keeping the current rules" 10 &&
        wait_for "$tmp/serve.err" "field 'operator': invalid value '=>'" 5 && kill -0 "$spid"; then
        # t_high resolved earlier; firing again proves the old rules still run.
        before=$(grep -c "\[CRITICAL\] t_high" "$tmp/serve.err")
        sql "UPDATE alert_t SET v = 11"
        deadline=$((SECONDS + 10))
        while [ "$(grep -c "\[CRITICAL\] t_high" "$tmp/serve.err")" -le "$before" ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
        [ "$(grep -c "\[CRITICAL\] t_high" "$tmp/serve.err")" -gt "$before" ] &&
            pass "SIGHUP with a bad file keeps the old rules (logged, still evaluating)" ||
            fail "SIGHUP with a bad file keeps the old rules" "$(tail -5 "$tmp/serve.err")"
    else
        fail "SIGHUP with a bad file keeps the old rules" "$(tail -5 "$tmp/serve.err")"
    fi
else
    fail "serve with alert rules starts leading" "$(tail -5 "$tmp/serve.err")"
fi
kill -TERM "$spid"
wait "$spid"
rc=$?
[ $rc -eq 0 ] && pass "serve with alerts stops cleanly on SIGTERM" || fail "serve with alerts stops cleanly on SIGTERM" "exit $rc" "$(tail -3 "$tmp/serve.err")"

exit $((fails > 0))
