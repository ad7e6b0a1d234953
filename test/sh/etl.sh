#!/usr/bin/env bash
# `rtbridge etl` as an operator runs it: --once loads what is pending and
# prints a summary, the short flag spellings work, bad flags exit 2, a loader
# killed with SIGKILL in the middle of a 100 000-row catch-up leaves nothing
# half done (a second run completes it exactly), and a running loader stops
# cleanly on SIGTERM. Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
. "$(dirname "$0")/lib/common.sh"
db=rt_etl_sh_$$

wait_for() {
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# ---- usage errors (no database needed) ---------------------------------------------

env DATABASE_URL=x "$BIN" etl --mode sometimes >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] && grep -q -- "--etl-mode: invalid value 'sometimes'" "$tmp/err" &&
    pass "bad --mode exits 2" || fail "bad --mode exits 2" "exit $rc" "$(cat "$tmp/err")"
env DATABASE_URL=x "$BIN" etl --batch-size=0 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] && grep -q -- "--etl-batch-size: invalid value '0'" "$tmp/err" &&
    pass "bad --batch-size= exits 2" || fail "bad --batch-size= exits 2" "exit $rc" "$(cat "$tmp/err")"

# ---- with a database -------------------------------------------------------------------

psql -q "$BASE" -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="${BASE%/*}/$db"
sql() { psql -qAt "$DATABASE_URL" -c "$1"; }
"$BIN" migrate >/dev/null 2>&1 || fail "migrate"

sql "INSERT INTO audit_logs (event_type, actor, payload) SELECT 'E', 'sh', jsonb_build_object('duration_ms', g) FROM generate_series(1, 2500) g"
"$BIN" etl --once --batch-size 1000 >"$tmp/once" 2>"$tmp/once.err"
rc=$?
if [ $rc -eq 0 ] && grep -qE '^etl: 2500 rows loaded in 3 batches \(2500 read, 0 bad payloads, 0 without log_id\), lag [0-9.]+ s, cursor seq [0-9]+$' "$tmp/once"; then
    pass "etl --once loads and prints rows and lag"
else
    fail "etl --once loads and prints rows and lag" "exit $rc" "$(cat "$tmp/once" "$tmp/once.err")"
fi
"$BIN" etl --once >"$tmp/once2" 2>&1
grep -q '^etl: 0 rows loaded' "$tmp/once2" && pass "etl --once again loads nothing" ||
    fail "etl --once again loads nothing" "$(cat "$tmp/once2")"

# The issue's 100 000-row catch-up, with a SIGKILL in the middle of it, then
# --once: exact (2 500 rows above + 97 500 here).
for k in 1 2 3 4 5; do
    sql "INSERT INTO audit_logs (event_type, actor, payload) SELECT 'K', 'kill', jsonb_build_object('duration_ms', g) FROM generate_series(1, 19500) g"
done
"$BIN" etl --mode polling --batch-size 500 --log-level warn >"$tmp/run.out" 2>"$tmp/run.err" &
kpid=$!
pids+=("$kpid")
deadline=$((SECONDS + 30))
while [ "$(sql 'SELECT count(*) FROM audit_logs_ts')" -lt 30000 ] && [ $SECONDS -lt $deadline ]; do sleep 0.02; done
{ kill -KILL "$kpid"; wait "$kpid"; } 2>/dev/null # no "Killed" notice
mid=$(sql "SELECT count(*) FROM audit_logs_ts")
"$BIN" etl --once >"$tmp/once3" 2>&1
counts=$(sql "SELECT (SELECT count(*) FROM audit_logs) || ' ' || count(*) || ' ' || count(DISTINCT log_id) FROM audit_logs_ts")
if [ "$counts" = "100000 100000 100000" ] && [ "$mid" -lt 100000 ] && [ "$mid" -ge 30000 ]; then
    pass "100 000 rows, SIGKILL mid-load, then --once: exact ($mid loaded before the kill)"
else
    fail "100 000 rows, SIGKILL mid-load, then --once: exact" "source, target, distinct: $counts; before the kill: $mid" "$(cat "$tmp/once3")"
fi
sums=$(sql "SELECT (SELECT sum(id) FROM audit_logs) = sum(log_id) AND (SELECT sum(event_count) FROM audit_logs_hourly) = count(*) FROM audit_logs_ts")
[ "$sums" = "t" ] && pass "the same log_ids, and the hourly rollup counts each once" ||
    fail "the same log_ids, and the hourly rollup counts each once" "$sums"
cursor=$(sql "SELECT last_seq = (SELECT max(seq) FROM rt_journal) FROM rt_etl_cursor")
[ "$cursor" = "t" ] && pass "cursor at the last journal row" || fail "cursor at the last journal row" "$cursor"

# A running loader loads new rows, and stops cleanly on SIGTERM.
"$BIN" etl --mode hybrid >"$tmp/run2.out" 2>"$tmp/run2.err" &
rpid=$!
pids+=("$rpid")
if wait_for "$tmp/run2.err" "leader: loading" 10; then
    sql "INSERT INTO audit_logs (event_type, actor) VALUES ('R', 'running')"
    deadline=$((SECONDS + 5))
    while [ "$(sql "SELECT count(*) FROM audit_logs_ts WHERE actor = 'running'")" != 1 ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
    [ "$(sql "SELECT count(*) FROM audit_logs_ts WHERE actor = 'running'")" = 1 ] &&
        pass "etl --mode hybrid loads new rows" || fail "etl --mode hybrid loads new rows" "$(cat "$tmp/run2.err")"
else
    fail "etl --mode hybrid loads new rows" "no leader within 10 s" "$(cat "$tmp/run2.err")"
fi
kill -TERM "$rpid"
wait "$rpid"
rc=$?
[ $rc -eq 0 ] && grep -q "stopping" "$tmp/run2.err" && grep -q "^etl: 1 rows loaded" "$tmp/run2.out" &&
    pass "etl exits 0 on SIGTERM" || fail "etl exits 0 on SIGTERM" "exit $rc" "$(tail -3 "$tmp/run2.err")" "$(cat "$tmp/run2.out")"

exit $((fails > 0))
