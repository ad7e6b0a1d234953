#!/usr/bin/env bash
# The ETL across a real database restart: a PostgreSQL cluster of this test's
# own (test/pg.sh, a free port) is stopped and started again while a
# producer commits audit logs and `rtbridge etl` loads them. The loader must
# reconnect, take the lead again and end with every committed audit log in
# audit_logs_ts exactly once (count = distinct log_id = source count, sum of
# log_ids equal) and the hourly rollup equal to the aggregate of the loaded
# rows. Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
BIN=${RT_BIN:?RT_BIN not set}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d /tmp/rtetlrs.XXXXXX)
chmod 755 "$tmp"
etl_pid=""
prod_pid=""
cleanup() {
    [ -n "$prod_pid" ] && kill -KILL "$prod_pid" 2>/dev/null
    [ -n "$etl_pid" ] && kill -KILL "$etl_pid" 2>/dev/null
    sh "$ROOT/test/pg.sh" stop "$tmp/pg" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT

fails=0
pass() { echo "PASS: $1"; }
fail() { echo "FAIL: $1"; shift; for l in "$@"; do echo "    $l"; done; fails=$((fails + 1)); }

# Polls `sql` until it prints want (or, with ge, at least want); bounded.
wait_sql() {
    local sql=$1 want=$2 secs=$3 mode=${4:-eq} got deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        got=$(psql -qAt "$DATABASE_URL" -c "$sql" 2>/dev/null)
        if [ -n "$got" ]; then
            if [ "$mode" = ge ] && [ "$got" -ge "$want" ]; then return 0; fi
            if [ "$mode" = eq ] && [ "$got" = "$want" ]; then return 0; fi
        fi
        sleep 0.05
    done
    return 1
}
sql() { psql -qAt "$DATABASE_URL" -c "$1"; }

port=$(sh "$ROOT/test/pg.sh" freeport)
if ! DATABASE_URL=$(sh "$ROOT/test/pg.sh" start "$tmp/pg" "$port"); then
    fail "start a cluster of the test's own"
    exit 1
fi
export DATABASE_URL
"$BIN" migrate >"$tmp/migrate" 2>&1 || fail "migrate" "$(cat "$tmp/migrate")"

"$BIN" etl --mode hybrid --etl-poll-interval 200ms --batch-size 500 --reconnect-min 50ms \
    --reconnect-max 300ms >"$tmp/etl.out" 2>"$tmp/etl.err" &
etl_pid=$!

# The producer: 100 audit logs per transaction, one transaction every ~20 ms,
# at most 400 of them, until told to stop. Failures while the server is down
# are expected and simply not retried: the source table is the truth.
(
    for i in $(seq 1 400); do
        [ -e "$tmp/stop" ] && break
        psql -qAt "$DATABASE_URL" -c "INSERT INTO audit_logs (event_type, actor, payload) \
            SELECT 'RESTART', 'p' || (g % 4), jsonb_build_object('duration_ms', g, 'success', g % 5 <> 0) \
            FROM generate_series(1, 100) g" >/dev/null 2>&1 && echo "$i" >>"$tmp/committed"
        sleep 0.02
    done
) &
prod_pid=$!

if wait_sql "SELECT count(*) FROM audit_logs_ts" 1000 30 ge; then
    pass "loading while the producer commits"
else
    fail "loading while the producer commits" "$(tail -5 "$tmp/etl.err")"
fi

# The restart. The server stays down for a second (the length of the outage,
# not a wait for anything), then comes back on the same port.
sh "$ROOT/test/pg.sh" stop "$tmp/pg" >/dev/null
before=$(wc -l <"$tmp/committed")
sleep 1
sh "$ROOT/test/pg.sh" start "$tmp/pg" "$port" >/dev/null || fail "restart the cluster"

# Commits resume after the restart; then stop the producer.
deadline=$((SECONDS + 20))
while [ "$(wc -l <"$tmp/committed")" -lt $((before + 20)) ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
touch "$tmp/stop"
wait "$prod_pid"
prod_pid=""
after=$(wc -l <"$tmp/committed")
[ "$after" -gt "$before" ] && pass "the producer committed again after the restart ($before, then $after transactions)" ||
    fail "the producer committed again after the restart" "$before then $after"

src=$(sql "SELECT count(*) FROM audit_logs")
if wait_sql "SELECT count(*) FROM audit_logs_ts" "$src" 30; then
    pass "caught up after the restart ($src rows)"
else
    fail "caught up after the restart" "source $src, loaded $(sql 'SELECT count(*) FROM audit_logs_ts')" "$(tail -5 "$tmp/etl.err")"
fi
got=$(sql "SELECT (SELECT count(*) FROM audit_logs) || ' ' || count(*) || ' ' || count(DISTINCT log_id) || ' ' || \
    (SELECT sum(id) FROM audit_logs) || ' ' || sum(log_id) FROM audit_logs_ts")
read -r s_n t_n t_d s_sum t_sum <<<"$got"
if [ "$s_n" = "$t_n" ] && [ "$t_n" = "$t_d" ] && [ "$s_sum" = "$t_sum" ]; then
    pass "exactly once across the restart (source, loaded, distinct: $s_n $t_n $t_d)"
else
    fail "exactly once across the restart" "source, loaded, distinct, sums: $got"
fi
hourly='SELECT date_trunc($$hour$$, time AT TIME ZONE $$UTC$$) AT TIME ZONE $$UTC$$, event_type, actor, count(*),
    avg(duration_ms), sum(CASE WHEN success THEN 1 ELSE 0 END), sum(CASE WHEN NOT success THEN 1 ELSE 0 END)
    FROM audit_logs_ts GROUP BY 1, 2, 3'
diff=$(sql "SELECT count(*) FROM ((SELECT * FROM audit_logs_hourly EXCEPT ALL $hourly) UNION ALL ($hourly EXCEPT ALL SELECT * FROM audit_logs_hourly)) d")
[ "$diff" = 0 ] && pass "hourly rollup equals the aggregate of the loaded rows" ||
    fail "hourly rollup equals the aggregate of the loaded rows" "$diff rows differ"

if grep -q "reconnected" "$tmp/etl.err" && kill -0 "$etl_pid" 2>/dev/null; then
    pass "the loader reconnected and kept running"
else
    fail "the loader reconnected and kept running" "$(tail -5 "$tmp/etl.err")"
fi
kill -TERM "$etl_pid"
wait "$etl_pid"
rc=$?
etl_pid=""
[ $rc -eq 0 ] && pass "the loader exits 0 on SIGTERM" || fail "the loader exits 0 on SIGTERM" "exit $rc"

exit $((fails > 0))
