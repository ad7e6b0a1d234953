#!/usr/bin/env bash
# The metrics endpoints on a running server: /metrics is accepted by
# `promtool check metrics` (the real Prometheus parser and linter), counters
# move by exactly what a scripted workload did, the dashboard API answers
# with the right headers and equals SQL, bad parameters get a 400 naming the
# parameter, and stats_updated arrives on /api/v2/events/stream. Prints
# PASS:/FAIL: lines; run by test/run.sh.
set -u
. "$(dirname "$0")/lib/common.sh"
db=rt_metrics_sh_$$

if ! command -v promtool >/dev/null; then
    fail "promtool is installed (Debian package prometheus; ops/install-deps.sh)"
    exit 1
fi

psql -q "$BASE" -c "CREATE DATABASE $db" >/dev/null
psql -q "$BASE" -c "ALTER DATABASE $db SET TimeZone = 'UTC'" >/dev/null
export DATABASE_URL="${BASE%/*}/$db"
sql() { psql -qAt "$DATABASE_URL" -c "$1"; }
"$BIN" migrate >/dev/null 2>&1 || fail "migrate"
# Committed before the server starts: found by the first reconciliation.
sql "INSERT INTO intents (id, status) SELECT gen_random_uuid(), 'received' FROM generate_series(1, 12)"

port=$(sh "$ROOT/test/pg.sh" freeport)
b="http://127.0.0.1:$port"
"$BIN" serve --listen "127.0.0.1:$port" --stats-interval 200ms --metrics-reconcile-interval 1h \
    --fanout-threads 2 >"$tmp/serve.out" 2>"$tmp/serve.err" &
spid=$!
pids+=("$spid")

# Up when /metrics shows the first reconciliation (bounded).
up=0
deadline=$((SECONDS + 15))
while [ $SECONDS -lt $deadline ]; do
    if curl -s "$b/metrics" 2>/dev/null | grep -q '^rtbridge_metrics_reconciles_total 1$'; then
        up=1
        break
    fi
    sleep 0.05
done
[ $up -eq 1 ] && pass "server up and reconciled" || { fail "server up and reconciled" "$(cat "$tmp/serve.err")"; exit 1; }

# ---- /metrics through promtool --------------------------------------------------------

curl -s -D "$tmp/m.h" "$b/metrics" >"$tmp/m.txt"
if promtool check metrics <"$tmp/m.txt" >"$tmp/promtool.out" 2>&1; then
    pass "promtool check metrics accepts the scrape ($(grep -c '^# TYPE' "$tmp/m.txt") families)"
else
    fail "promtool check metrics accepts the scrape" "$(cat "$tmp/promtool.out")"
fi
grep -qi '^Content-Type: text/plain; version=0.0.4' "$tmp/m.h" && grep -qi '^Cache-Control: no-store' "$tmp/m.h" &&
    pass "/metrics content type 0.0.4, no-store" || fail "/metrics headers" "$(cat "$tmp/m.h")"
missing=""
for fam in bridge_intents_total bridge_active_intents bridge_websocket_connections bridge_corrections_total \
    bridge_processing_duration_seconds realtime_connections_active realtime_events_total \
    realtime_event_latency_seconds realtime_errors_total realtime_reconnect_total \
    realtime_slow_consumer_disconnects_total realtime_refused_connections_total rtbridge_bus_ring_depth \
    rtbridge_bus_ring_overflows_total rtbridge_listener_connected rtbridge_listener_replayed_total \
    rtbridge_etl_rows_loaded_total rtbridge_etl_lag_seconds rtbridge_etl_leader process_cpu_seconds_total \
    process_resident_memory_bytes process_open_fds process_start_time_seconds; do
    grep -q "^# HELP $fam " "$tmp/m.txt" && grep -q "^# TYPE $fam " "$tmp/m.txt" || missing="$missing $fam"
done
[ -z "$missing" ] && pass "every family of issue 6 has HELP and TYPE" || fail "families with HELP and TYPE" "missing:$missing"

# ---- counters move by what the workload did -----------------------------------------------

metric() { curl -s "$b/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
ev0=$(metric 'realtime_events_total{type="intent_update"}')
sql "INSERT INTO intents (id, status) SELECT gen_random_uuid(), 'received' FROM generate_series(1, 20)"
sql "UPDATE intents SET status = 'failed' WHERE id IN (SELECT id FROM intents ORDER BY id LIMIT 5)"
want=$((ev0 + 25))
got=""
deadline=$((SECONDS + 10))
while [ $SECONDS -lt $deadline ]; do
    got=$(metric 'realtime_events_total{type="intent_update"}')
    [ "$got" = "$want" ] && break
    sleep 0.05
done
[ "$got" = "$want" ] && pass "realtime_events_total{intent_update} moved by 25" ||
    fail "realtime_events_total{intent_update} moved by 25" "before $ev0, now $got"
# The snapshot follows the events within 50 ms; poll briefly.
deadline=$((SECONDS + 5))
while [ $SECONDS -lt $deadline ]; do
    [ "$(metric 'bridge_active_intents{status="failed"}')" = 5 ] && break
    sleep 0.05
done
a=$(metric 'bridge_active_intents{status="received"}')
f=$(metric 'bridge_active_intents{status="failed"}')
e=$(metric 'bridge_intents_total{status="failed"}')
[ "$a" = 27 ] && [ "$f" = 5 ] && [ "$e" = 5 ] && pass "status gauges and counters follow the workload" ||
    fail "status gauges and counters follow the workload" "received $a (want 27), failed $f (want 5), entered failed $e (want 5)"
promtool check metrics < <(curl -s "$b/metrics") >"$tmp/promtool2.out" 2>&1 &&
    pass "promtool still accepts it after the workload" || fail "promtool after the workload" "$(cat "$tmp/promtool2.out")"

# ---- dashboard API --------------------------------------------------------------------------

curl -s -D "$tmp/o.h" "$b/api/v1/dashboard/overview" >"$tmp/o.json"
want_total=$(sql "SELECT count(*) FROM intents")
python3 - "$tmp/o.json" "$want_total" >"$tmp/o.check" 2>&1 <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
keys = ["total_intents", "status_distribution", "recent_activity", "correction_rate",
        "avg_processing_time_ms", "active_websockets", "active_sse", "events_per_second",
        "etl_lag_seconds"]
assert sorted(o) == sorted(keys), sorted(o)
assert o["total_intents"] == int(sys.argv[2]), o
assert o["status_distribution"] == {"received": 27, "failed": 5}, o
assert o["recent_activity"]["last_hour"] == 32, o
EOF
[ $? -eq 0 ] && grep -qi '^Content-Type: application/json' "$tmp/o.h" && grep -qi '^Cache-Control: no-store' "$tmp/o.h" &&
    grep -qi '^Access-Control-Allow-Origin' "$tmp/o.h" &&
    pass "overview: spec keys, equals SQL, JSON + no-store + CORS" ||
    fail "overview" "$(cat "$tmp/o.json" "$tmp/o.check" "$tmp/o.h")"

code=$(curl -s -o "$tmp/e.json" -w '%{http_code}' "$b/api/v1/dashboard/timeline?start=2025-12-03T10:00:00Z&end=2025-12-01T00:00:00Z")
[ "$code" = 400 ] && grep -q '"parameter":"end"' "$tmp/e.json" && pass "timeline end < start: 400 naming end" ||
    fail "timeline end < start" "$code $(cat "$tmp/e.json")"
code=$(curl -s -o "$tmp/e.json" -w '%{http_code}' "$b/api/v1/dashboard/corrections?limit=101")
[ "$code" = 400 ] && grep -q '"parameter":"limit"' "$tmp/e.json" && pass "corrections limit=101: 400 naming limit" ||
    fail "corrections limit=101" "$code $(cat "$tmp/e.json")"
start=$(date -u -d '-40 days' +%Y-%m-%dT%H:%M:%S%:z | sed 's/+/%2B/')
end=$(date -u +%Y-%m-%dT%H:%M:%SZ)
code=$(curl -s -o "$tmp/t.json" -w '%{http_code}' "$b/api/v1/dashboard/timeline?start=$start&end=$end&granularity=day")
n=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print(sum(x["count"] for x in t), len(t))' "$tmp/t.json" 2>/dev/null)
[ "$code" = 200 ] && [ "$n" = "32 41" ] && pass "an old timeline is answered from SQL (41 days, 32 intents)" ||
    fail "old timeline" "$code $n $(head -c 300 "$tmp/t.json")"

# ---- stats_updated on the SSE stream ---------------------------------------------------------

curl -s -N --max-time 3 "$b/api/v2/events/stream?types=stats_updated" >"$tmp/sse.txt" 2>/dev/null
if grep -q '^event: stats_updated$' "$tmp/sse.txt" && grep -q '"total_intents":32' "$tmp/sse.txt"; then
    pass "stats_updated arrives on /api/v2/events/stream ($(grep -c '^event: stats_updated' "$tmp/sse.txt") in 3 s at --stats-interval 200ms)"
else
    fail "stats_updated arrives on /api/v2/events/stream" "$(head -c 600 "$tmp/sse.txt")"
fi

# ---- /health/realtime: correction figures and the ETL ------------------------------------

# The default schema's intents table has no correction_history column.
curl -s "$b/health/realtime" >"$tmp/h.json"
if python3 - "$tmp/h.json" <<'EOF'; then
import json, sys
h = json.load(open(sys.argv[1]))
c, e = h["corrections"], h["etl"]
assert c["available"] is False and "correction_history" in c["reason"], c
assert set(e) == {"connected", "leader", "lag_seconds", "rows_loaded"} and e["connected"] is True, e
EOF
    pass "/health/realtime says why correction figures are 0, and the ETL's state"
else
    fail "/health/realtime corrections and etl" "$(head -c 800 "$tmp/h.json")"
fi

kill -TERM "$spid"
wait "$spid"
rc=$?
[ $rc -eq 0 ] && pass "serve stops cleanly with the aggregator" || fail "serve stops cleanly" "exit $rc" "$(tail -5 "$tmp/serve.err")"
pids=()
exit $((fails > 0))
