#!/usr/bin/env bash
# ops/nginx/rtbridge.conf, tested for real (issue #9): Debian's nginx with that
# file (its upstream pointed at two local instances, its listen at a free
# port) in front of two `rtbridge serve` on one PostgreSQL, the second with
# --etl=off. Checks, with rtbridge-loadgen:
#   * WebSocket and SSE clients through the proxy receive every event, once;
#   * no buffering delay: the best p99 of three runs through the proxy is
#     within 5 ms of the best p99 of three direct runs (runs alternate, so
#     both see the same machine load; the best of three filters out load
#     from other processes, which only adds); the numbers are printed;
#   * the polling fallback (GET /api/v1/events, long poll) answers through it;
#   * the proxy spreads clients over both instances;
#   * an instance killed with SIGKILL while events flow: its SSE (and WS)
#     clients reconnect through the proxy with their last id, land on the
#     other instance, and nothing is lost or duplicated.
# nginx runs in the foreground under its own prefix in a temp dir (pid, logs,
# temp paths), so it needs no root and touches nothing of the system's.
# Prints PASS:/FAIL: lines; run by test/run.sh. About 40 s.
set -u
# shellcheck source=test/sh/ops-lib/common.sh
. "$(dirname "$0")/ops-lib/common.sh"
BUILD=${RT_BUILD:?RT_BUILD not set}
LG=$BUILD/bin/rtbridge-loadgen
CONF=$ROOT/ops/nginx/rtbridge.conf
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
jget() {
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
# conns PORT TRANSPORT: the instance's open connections of that transport.
conns() {
    curl -sf "http://127.0.0.1:$1/health/realtime" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"][sys.argv[1]])' "$2" 2>/dev/null ||
        echo -1
}
sql() { psql -qAt "$URL" -c "$1"; }

for tool in "$NGINX" "$LG" "$BIN"; do
    if [ ! -x "$tool" ]; then
        fail "$tool is installed" "missing (bash ops/install-deps.sh; make all)"
        exit 1
    fi
done

ops_db rt_ops_nginx_$$ || { fail "create and migrate a database"; exit 1; }

# ---- two instances on one database ------------------------------------------------

port_a=$(ops_freeport)
port_b=$(ops_freeport)
while [ "$port_b" = "$port_a" ]; do port_b=$(ops_freeport); done
# Behind the proxy every client comes from nginx's address: the per-address
# limit belongs to nginx (see the config), so it is off here.
pid_a="" pid_b=""
ops_serve pid_a "$port_a" --max-conns-per-ip 0 --fanout-threads 1 --log-format json
ops_serve pid_b "$port_b" --max-conns-per-ip 0 --fanout-threads 1 --etl=off --log-format json

if ops_wait_ready "http://127.0.0.1:$port_a/readyz" "$pid_a" && ops_wait_ready "http://127.0.0.1:$port_b/readyz" "$pid_b"; then
    pass "two instances ready (ports $port_a, $port_b; the second with --etl=off)"
else
    fail "two instances ready" "$(tail -3 "$tmp/pid_a.log")" "$(tail -3 "$tmp/pid_b.log")"
    exit 1
fi

# ---- nginx with ops/nginx/rtbridge.conf -----------------------------------------------

port_ng=$(ops_freeport)
ng=$tmp/nginx
mkdir -p "$ng/logs"
# The shipped file, with only its listen line and upstream servers changed.
sed -e "s|^\( *\)listen 80;|\1listen 127.0.0.1:$port_ng;|" \
    -e "s|server rtbridge-1:8080|server 127.0.0.1:$port_a|" \
    -e "s|server rtbridge-2:8080|server 127.0.0.1:$port_b|" "$CONF" >"$ng/rtbridge.conf"
if grep -q "listen 127.0.0.1:$port_ng;" "$ng/rtbridge.conf" &&
    [ "$(grep -c "server 127.0.0.1:\($port_a\|$port_b\) " "$ng/rtbridge.conf")" = 2 ] &&
    ! grep -q "rtbridge-[12]:8080" "$ng/rtbridge.conf"; then
    pass "config adapted: only listen and upstream servers changed"
else
    fail "config adapted: only listen and upstream servers changed" \
        "ops/nginx/rtbridge.conf no longer has 'listen 80;' and 'server rtbridge-1:8080 / rtbridge-2:8080'"
fi
cat >"$ng/nginx.conf" <<EOF
worker_processes 1;
pid $ng/nginx.pid;
error_log $ng/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log $ng/logs/access.log;
    client_body_temp_path $ng/client_body;
    proxy_temp_path $ng/proxy;
    fastcgi_temp_path $ng/fastcgi;
    uwsgi_temp_path $ng/uwsgi;
    scgi_temp_path $ng/scgi;
    include $ng/rtbridge.conf;
}
EOF
if "$NGINX" -t -p "$ng/" -e "$ng/logs/error.log" -c "$ng/nginx.conf" >"$tmp/nginx-t.log" 2>&1; then
    pass "nginx -t accepts the config"
else
    fail "nginx -t accepts the config" "$(cat "$tmp/nginx-t.log")"
    exit 1
fi
"$NGINX" -p "$ng/" -e "$ng/logs/error.log" -c "$ng/nginx.conf" -g 'daemon off;' >"$tmp/nginx.out" 2>&1 &
pid_ng=$!
ops_track_term "$pid_ng"
if ops_wait_ready "http://127.0.0.1:$port_ng/readyz" "$pid_ng"; then
    pass "nginx up on 127.0.0.1:$port_ng"
else
    fail "nginx up" "$(cat "$tmp/nginx.out" "$ng/logs/error.log" 2>/dev/null | tail -5)"
    exit 1
fi

first=$(curl -sN --max-time 3 "http://127.0.0.1:$port_ng/api/v2/events/stream" 2>/dev/null | head -c 11)
[ "$first" = "retry: 3000" ] && pass "an SSE stream opens through the proxy" ||
    fail "an SSE stream opens through the proxy" "first bytes: '$first'"

# The polling fallback through the proxy: a long poll that waits 1 s for an
# event that never comes answers with an empty list and the last id.
poll=$(curl -s --max-time 10 "http://127.0.0.1:$port_ng/api/v1/events?after=0&wait=1" 2>/dev/null)
case "$poll" in
*'"events":[]'*'"last_id":'*) pass "a long poll of GET /api/v1/events answers through the proxy" ;;
*) fail "a long poll of GET /api/v1/events answers through the proxy" "got: $poll" ;;
esac

# Quiet streams must outlive rtbridge's keep-alive period (3 periods at
# least) in every streaming location, and nothing is buffered there.
keepalive=$("$BIN" help | sed -n 's/.*--keepalive-interval.*default \([0-9]*\)s.*/\1/p')
check=$(python3 - "$CONF" "${keepalive:-0}" <<'PY'
import re, sys
text, keepalive = open(sys.argv[1]).read(), int(sys.argv[2])
bad = [] if keepalive else ["cannot read --keepalive-interval's default from rtbridge help"]
for loc in ("/ws/", "/events/", "/api/v2/events/"):
    m = re.search(r"location %s \{(.*?)\n    \}" % re.escape(loc), text, re.S)
    if not m:
        bad.append("no location " + loc)
        continue
    body = m.group(1)
    t = re.search(r"proxy_read_timeout (\d+)s;", body)
    if not t or int(t.group(1)) < 3 * keepalive:
        bad.append("%s: proxy_read_timeout below 3 x %d s" % (loc, keepalive))
    if "proxy_buffering off;" not in body:
        bad.append(loc + ": proxy_buffering is not off")
print("; ".join(bad) or "OK")
PY
)
[ "$check" = OK ] && pass "streaming locations: proxy_read_timeout >= 3 x --keepalive-interval ($keepalive s), buffering off" ||
    fail "streaming locations: proxy_read_timeout >= 3 x --keepalive-interval, buffering off" "$check"

# ---- every event through the proxy; p99 through the proxy vs direct ----------------

# lg NAME TARGET_ARGS...: 300 intent events at 100/s to the given clients.
lg() {
    local name=$1
    shift
    "$LG" "$@" --db "$URL" --events 300 --produce-rate 100 --timeout 60 --quiet \
        --label "$name" --json "$tmp/$name.json" >"$tmp/$name.out" 2>&1
}
direct=() proxied=()
ok_runs=1
for i in 1 2 3; do
    lg "direct$i" --ws "ws://127.0.0.1:$port_a/ws/intents" --clients 5 --ws "ws://127.0.0.1:$port_b/ws/intents" --clients 5 \
        --sse "http://127.0.0.1:$port_a/api/v2/events/stream" --clients 5 \
        --sse "http://127.0.0.1:$port_b/api/v2/events/stream" --clients 5
    rc_d=$?
    lg "proxy$i" --ws "ws://127.0.0.1:$port_ng/ws/intents" --clients 10 \
        --sse "http://127.0.0.1:$port_ng/api/v2/events/stream" --clients 10
    rc_p=$?
    for run in "direct$i:$rc_d" "proxy$i:$rc_p"; do
        name=${run%%:*} rc=${run##*:}
        f=$tmp/$name.json
        if [ "$rc" -ne 0 ] || [ ! -s "$f" ] ||
            [ "$(jget "$f" 'j["delivery"]["lost"] + j["delivery"]["duplicates"]')" != 0 ] ||
            [ "$(jget "$f" 'j["delivery"]["delivered"]')" != 6000 ]; then
            ok_runs=0
            fail "$name: 20 clients x 300 events, all delivered once" "exit $rc" "$(cat "$tmp/$name.out")"
        fi
    done
    direct+=("$(jget "$tmp/direct$i.json" 'j["latency_ms"]["p99"]' 2>/dev/null || echo 999)")
    proxied+=("$(jget "$tmp/proxy$i.json" 'j["latency_ms"]["p99"]' 2>/dev/null || echo 999)")
done
[ $ok_runs -eq 1 ] && pass "WS + SSE through the proxy and direct: 6000 of 6000 deliveries in each of 6 runs, none lost or duplicated"
# Load from other processes on the machine only ever adds latency, and it
# comes and goes between runs; a buffering proxy would delay every run. So
# the best p99 of the three runs on each side is compared (the medians are
# printed too).
verdict=$(python3 - "${direct[*]}" "${proxied[*]}" <<'EOF'
import statistics, sys
d = [float(x) for x in sys.argv[1].split()]
p = [float(x) for x in sys.argv[2].split()]
bd, bp = min(d), min(p)
print("%s best p99 direct %.2f ms, through nginx %.2f ms: difference %+.2f ms (runs: direct %s, nginx %s; medians %.2f, %.2f ms)"
      % ("OK" if bp - bd <= 5.0 else "BAD", bd, bp, bp - bd, " ".join("%.2f" % x for x in d),
         " ".join("%.2f" % x for x in p), statistics.median(d), statistics.median(p)))
EOF
)
case "$verdict" in
OK*) pass "no buffering delay: ${verdict#OK }" ;;
*) fail "no buffering delay (p99 through the proxy within 5 ms of direct)" "${verdict#BAD }" ;;
esac

# ---- kill one instance while events flow: resume on the other --------------------

base_seq=$(sql "SELECT coalesce(max(seq), 0) FROM rt_journal")
rm -f "$tmp/ready"
"$LG" --sse "http://127.0.0.1:$port_ng/api/v2/events/stream" --clients 10 \
    --ws "ws://127.0.0.1:$port_ng/ws/intents" --clients 10 --reconnect \
    --db "$URL" --events 800 --produce-rate 100 --settle 1 --timeout 60 --quiet \
    --ready-file "$tmp/ready" --label failover --json "$tmp/failover.json" >"$tmp/failover.out" 2>&1 &
pid_lg=$!
_ops_pids+=("$pid_lg")
for _ in $(seq 1 200); do
    [ -s "$tmp/ready" ] && break
    kill -0 "$pid_lg" 2>/dev/null || break
    sleep 0.05
done
sse_a=$(conns "$port_a" sse) sse_b=$(conns "$port_b" sse)
ws_a=$(conns "$port_a" websocket) ws_b=$(conns "$port_b" websocket)
if [ "$sse_a" -gt 0 ] && [ "$sse_b" -gt 0 ] && [ $((sse_a + sse_b)) -eq 10 ] &&
    [ $((ws_a + ws_b)) -eq 10 ]; then
    pass "the proxy spreads clients: SSE $sse_a + $sse_b, WS $ws_a + $ws_b"
else
    fail "the proxy spreads clients over both instances" "SSE $sse_a + $sse_b, WS $ws_a + $ws_b" "$(cat "$tmp/ready" 2>/dev/null)"
fi
# Kill A once a quarter of the events have been committed.
deadline=$((SECONDS + 20))
while [ "$(sql "SELECT count(*) FROM rt_journal WHERE seq > $base_seq")" -lt 200 ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.05
done
before_kill=$(sql "SELECT count(*) FROM rt_journal WHERE seq > $base_seq")
kill -KILL "$pid_a"
wait "$pid_a" 2>/dev/null
moved=0
for _ in $(seq 1 200); do
    if [ "$(conns "$port_b" sse)" = 10 ] && [ "$(conns "$port_b" websocket)" = 10 ]; then moved=1; break; fi
    kill -0 "$pid_lg" 2>/dev/null || break
    sleep 0.05
done
[ $moved -eq 1 ] && pass "after SIGKILL of one instance (at $before_kill of 800 events) all 20 clients are on the other" ||
    fail "after SIGKILL of one instance all clients are on the other" "SSE $(conns "$port_b" sse), WS $(conns "$port_b" websocket) on B"
wait "$pid_lg"
rc=$?
f=$tmp/failover.json
if [ $rc -eq 0 ] && [ -s "$f" ] && [ "$(jget "$f" 'j["delivery"]["lost"]')" = 0 ] &&
    [ "$(jget "$f" 'j["delivery"]["duplicates"]')" = 0 ] &&
    [ "$(jget "$f" 'j["delivery"]["delivered"]')" = 16000 ] &&
    [ "$(jget "$f" 'j["clients"]["reconnects"]')" -ge $((sse_a + ws_a)) ]; then
    pass "resume with the last id on the other instance: 16000 of 16000 deliveries, 0 lost, 0 duplicates, $(jget "$f" 'j["clients"]["reconnects"]') reconnects"
else
    fail "resume with the last id on the other instance, no loss" "exit $rc" "$(cat "$tmp/failover.out")"
fi

# ---- stop ---------------------------------------------------------------------------

ops_stop pid_b
rc=$?
[ $rc -eq 0 ] && pass "surviving instance exits 0 on SIGTERM" || fail "surviving instance exits 0 on SIGTERM" "exit $rc"
kill -QUIT "$pid_ng"
wait "$pid_ng"
rc=$?
[ $rc -eq 0 ] && pass "nginx stops" || fail "nginx stops" "exit $rc"
[ $fails -eq 0 ]
