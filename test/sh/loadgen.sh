#!/usr/bin/env bash
# Smoke test of perf/loadgen (issue #4) against a real, healthy rtbridge: a
# fresh database, `rtbridge migrate`, `rtbridge serve` on a free port, then
# loadgen with 20 WebSocket + 5 SSE clients and 200 events at 100/s. Fails if
# loadgen exits non-zero or its JSON shows any loss, a delivered count other
# than the expected one, or a failed connection. Also checks: WebSocket
# ping/pong and a fragmented client message (--ws-hello) against the server,
# drop-and-resume with Last-Event-ID / last_event_id, and that loadgen itself
# fails (exit 1) when connections fail and refuses non-loopback targets
# (exit 2), and, against a scripted fake server, fragment reassembly with an
# interleaved ping, the masked pong and the closing handshake. The server must
# stop with exit 0 on SIGTERM. About 10 s.
# Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
. "$(dirname "$0")/lib/common.sh"
BUILD=${RT_BUILD:?RT_BUILD not set}
LG=$BUILD/perf/loadgen
DB=rt_loadgen_$$
db=$DB
URL=${BASE%/*}/$DB
server_pid=""

# jget FILE EXPR: evaluates a Python expression over the JSON document j.
jget() {
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

if [ ! -x "$LG" ]; then
    fail "loadgen is built" "$LG is missing (make perfs)"
    exit 1
fi

psql -q "$BASE" -c "CREATE DATABASE $DB" >/dev/null || { fail "create database"; exit 1; }
if DATABASE_URL=$URL "$BIN" migrate >"$tmp/migrate.log" 2>&1; then
    pass "migrate"
else
    fail "migrate" "$(tail -5 "$tmp/migrate.log")"
    exit 1
fi

port=$(sh "$ROOT/test/pg.sh" freeport)
# Short ping and keep-alive periods so the clients see pings and comments
# during the run; no per-address limit, since every client comes from
# 127.0.0.1 here.
DATABASE_URL=$URL "$BIN" serve --listen "127.0.0.1:$port" --max-conns-per-ip 0 \
    --ping-interval 500ms --keepalive-interval 500ms >"$tmp/serve.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
up=0
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ $up -eq 1 ]; then
    pass "server ready"
else
    fail "server ready" "$(tail -5 "$tmp/serve.log")"
    exit 1
fi

# ---- the smoke run: 20 WS + 5 SSE, 200 events at 100/s ---------------------------

"$LG" --ws "ws://127.0.0.1:$port/ws/intents" --clients 20 \
    --sse "http://127.0.0.1:$port/api/v2/events/stream" --clients 5 \
    --db "$URL" --events 200 --produce-rate 100 --ws-hello \
    --server-pid "$server_pid" --timeout 25 --label smoke --quiet \
    --json "$tmp/smoke.json" >"$tmp/smoke.out" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
    pass "loadgen exits 0 on a healthy server"
else
    fail "loadgen exits 0 on a healthy server" "exit $rc" "$(cat "$tmp/smoke.out")"
fi
if [ -s "$tmp/smoke.json" ]; then
    lost=$(jget "$tmp/smoke.json" 'j["delivery"]["lost"]')
    delivered=$(jget "$tmp/smoke.json" 'j["delivery"]["delivered"]')
    expected=$(jget "$tmp/smoke.json" 'j["delivery"]["expected"]')
    ready=$(jget "$tmp/smoke.json" 'j["clients"]["ready"]')
    produced=$(jget "$tmp/smoke.json" 'j["producer"]["events"]')
    dups=$(jget "$tmp/smoke.json" 'j["delivery"]["duplicates"]')
    [ "$lost" = 0 ] && pass "no loss" || fail "no loss" "lost=$lost"
    [ "$dups" = 0 ] && pass "no duplicates" || fail "no duplicates" "duplicates=$dups"
    [ "$produced" = 200 ] && pass "200 events produced" || fail "200 events produced" "got $produced"
    [ "$ready" = 25 ] && pass "25 clients connected" || fail "25 clients connected" "ready=$ready"
    # 25 clients, all of them see every intent event.
    if [ "$expected" = 5000 ] && [ "$delivered" = "$expected" ]; then
        pass "delivered == expected"
    else
        fail "delivered == expected" "delivered=$delivered expected=$expected (want 5000)"
    fi
    n=$(jget "$tmp/smoke.json" 'j["latency_ms"]["count"]')
    p99=$(jget "$tmp/smoke.json" 'j["latency_ms"]["p99"]')
    [ "$n" = 5000 ] && pass "a latency per delivery (p99 ${p99} ms)" ||
        fail "a latency per delivery" "count=$n"
    pings=$(jget "$tmp/smoke.json" 'j["messages"]["pings"]')
    [ "$pings" -gt 0 ] && pass "server pings answered ($pings)" || fail "server pings answered" "pings=$pings"
    pongs=$(jget "$tmp/smoke.json" 'j["messages"]["app_pongs"]')
    [ "$pongs" = 20 ] && pass "fragmented client message answered" ||
        fail "fragmented client message answered" "app pongs=$pongs, want 20"
    rss=$(jget "$tmp/smoke.json" 'j["server"]["rss_peak_kib"]')
    [ "$rss" -gt 0 ] && pass "server RSS sampled" || fail "server RSS sampled" "rss_peak_kib=$rss"
else
    fail "loadgen wrote its JSON" "$(cat "$tmp/smoke.out")"
fi

# ---- resume: clients drop and reconnect with their last id ------------------------

"$LG" --ws "ws://127.0.0.1:$port/ws/dashboard" --clients 5 \
    --sse "http://127.0.0.1:$port/events/audit-logs" --clients 5 \
    --db "$URL" --events 150 --produce-rate 100 --workload mixed --drop-every 500ms \
    --timeout 25 --quiet --json "$tmp/resume.json" >"$tmp/resume.out" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ "$(jget "$tmp/resume.json" 'j["delivery"]["lost"]')" = 0 ] &&
    [ "$(jget "$tmp/resume.json" 'j["clients"]["reconnects"] > 0')" = True ]; then
    pass "drop and resume: no loss ($(jget "$tmp/resume.json" 'j["clients"]["reconnects"]') reconnects)"
else
    fail "drop and resume: no loss" "exit $rc" "$(cat "$tmp/resume.out")"
fi

# ---- the WebSocket client against a scripted server --------------------------------
# rtbridge never fragments its frames, so a small fake server checks the rest
# of the client: a text message in three fragments with a ping between them,
# a whole message, the pong (masked, same payload), and a clean end.

fport=$(sh "$ROOT/test/pg.sh" freeport)
python3 - "$fport" "$tmp/fake.result" >"$tmp/fake.log" 2>&1 <<'EOF' &
import base64, hashlib, socket, struct, sys
port, out = int(sys.argv[1]), sys.argv[2]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(1); ls.settimeout(15)
c, _ = ls.accept(); c.settimeout(10)
req = b""
while b"\r\n\r\n" not in req:
    req += c.recv(4096)
key = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
def frame(fin, op, payload):
    n = len(payload)
    h = bytes([(0x80 if fin else 0) | op])
    h += bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n)
    return h + payload
msg = b'{"type":"intent_update","id":7,"data":{"pad":"' + b"x" * 300 + b'"},"timestamp":"t"}'
c.sendall(frame(0, 1, msg[:40]) + frame(1, 9, b"hi") + frame(0, 0, msg[40:200]))
c.sendall(frame(1, 0, msg[200:]) + frame(1, 1, b'{"type":"audit_log","id":8,"data":{}}'))
buf = b""
def read_frame():
    global buf
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7f
            if len(buf) >= 6 + n:
                f = buf[:6 + n]; buf = buf[6 + n:]
                return f
        d = c.recv(4096)
        if not d: return None
        buf += d
f = read_frame()
res = "no frame"
if f:
    masked, op, n = f[1] & 0x80, f[0] & 0x0f, f[1] & 0x7f
    mk = f[2:6]
    payload = bytes(b ^ mk[i % 4] for i, b in enumerate(f[6:6 + n]))
    res = "PONG OK" if masked and op == 0xA and payload == b"hi" else "bad pong: op %d masked %d %r" % (op, masked, payload)
open(out, "w").write(res + "\n")
f = read_frame()  # the client's close frame (1000) when it stops
open(out, "a").write("CLOSE %s\n" % ("OK" if f and (f[0] & 0x0f) == 8 else "missing"))
EOF
fake_pid=$!
for _ in $(seq 1 50); do
    grep -q ":$(printf '%04X' "$fport") " /proc/net/tcp 2>/dev/null && break
    sleep 0.1
done
"$LG" --ws "ws://127.0.0.1:$fport/ws/intents" --clients 1 --idle --duration 1 --timeout 15 \
    --quiet --json "$tmp/fake.json" >"$tmp/fake.out" 2>&1
rc=$?
wait "$fake_pid"
if [ $rc -eq 0 ] && [ "$(jget "$tmp/fake.json" 'j["messages"]["events_unverified"]')" = 2 ] &&
    [ "$(jget "$tmp/fake.json" 'j["messages"]["pings"]')" = 1 ] &&
    grep -q "PONG OK" "$tmp/fake.result" 2>/dev/null && grep -q "CLOSE OK" "$tmp/fake.result"; then
    pass "WS client: fragments reassembled, ping answered with a masked pong, close sent"
else
    fail "WS client: fragments reassembled, ping answered with a masked pong, close sent" "exit $rc" \
        "$(cat "$tmp/fake.out" "$tmp/fake.result" "$tmp/fake.log" 2>/dev/null)"
fi

# ---- loadgen's own failure paths ------------------------------------------------

dead=$(sh "$ROOT/test/pg.sh" freeport)
"$LG" --ws "ws://127.0.0.1:$dead/ws/intents" --clients 3 --idle --duration 0.2 --timeout 10 \
    --quiet --json "$tmp/dead.json" >"$tmp/dead.out" 2>&1
rc=$?
if [ $rc -eq 1 ] && [ "$(jget "$tmp/dead.json" 'j["clients"]["failed"]')" = 3 ]; then
    pass "failed connections: exit 1"
else
    fail "failed connections: exit 1" "exit $rc" "$(cat "$tmp/dead.out")"
fi
"$LG" --ws "ws://192.0.2.1:$port/ws/intents" --idle >"$tmp/remote.out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "loopback" "$tmp/remote.out" && pass "non-loopback target refused" ||
    fail "non-loopback target refused" "exit $rc" "$(cat "$tmp/remote.out")"

# ---- the server stops cleanly -----------------------------------------------------

kill -TERM "$server_pid"
wait "$server_pid"
rc=$?
server_pid=""
pids=()
[ $rc -eq 0 ] && pass "server exits 0 on SIGTERM" || fail "server exits 0 on SIGTERM" "exit $rc" "$(tail -5 "$tmp/serve.log")"

if psql -q "$BASE" -c "DROP DATABASE $DB WITH (FORCE)" >/dev/null 2>&1; then
    pass "drop database"
else
    fail "drop database"
fi
[ $fails -eq 0 ]
