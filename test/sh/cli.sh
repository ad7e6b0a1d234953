#!/usr/bin/env bash
# CLI behaviour of the real binary: help, version, flag and environment
# errors (exit 2, one line naming the flag), migrate idempotence, `tail` end
# to end in both formats, clean stop on SIGTERM/SIGINT, and the README's CLI
# reference matching --help. Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
. "$(dirname "$0")/lib/common.sh"
db=rt_cli_$$

# expect_exit NAME STATUS STDERR_SUBSTRING -- command...
expect_exit() {
    local name=$1 want=$2 needle=$3
    shift 4
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    local lines
    lines=$(wc -l <"$tmp/err")
    if [ "$rc" -ne "$want" ]; then
        fail "$name" "exit $rc, want $want" "stderr: $(cat "$tmp/err")"
    elif [ -n "$needle" ] && ! grep -qF -- "$needle" "$tmp/err"; then
        fail "$name" "stderr lacks '$needle'" "stderr: $(cat "$tmp/err")"
    elif [ -n "$needle" ] && [ "$lines" -ne 1 ]; then
        fail "$name" "want a one-line error, got $lines lines" "$(cat "$tmp/err")"
    else
        pass "$name"
    fi
}

# wait_for FILE PATTERN SECONDS: polls until the file has a matching line.
wait_for() {
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# ---- no database needed -------------------------------------------------------

out=$("$BIN" version)
[[ $out =~ ^rtbridge\ [0-9]+\.[0-9]+\.[0-9]+$ ]] && pass "version" || fail "version" "got '$out'"

"$BIN" help >"$tmp/help" && grep -q -- "--database-url" "$tmp/help" && grep -q "DATABASE_URL" "$tmp/help" &&
    pass "help" || fail "help" "$(head -5 "$tmp/help")"
"$BIN" serve --help >"$tmp/help2" && cmp -s "$tmp/help" "$tmp/help2" &&
    pass "serve --help is the help" || fail "serve --help is the help"

expect_exit "unknown command" 2 "unknown command 'frobnicate'" -- "$BIN" frobnicate
expect_exit "unknown flag" 2 "--nope" -- env DATABASE_URL=x "$BIN" serve --nope
expect_exit "bad ring size" 2 "--bus-ring-size" -- env DATABASE_URL=x "$BIN" serve --bus-ring-size 1000
expect_exit "non-numeric ring size" 2 "--bus-ring-size" -- env DATABASE_URL=x "$BIN" serve --bus-ring-size=lots
expect_exit "bad duration" 2 "--reconnect-max" -- env DATABASE_URL=x "$BIN" tail --reconnect-max 5parsecs
expect_exit "bad enum" 2 "--format" -- env DATABASE_URL=x "$BIN" tail --format xml
expect_exit "bad env value" 2 "RTBRIDGE_LOG_LEVEL" -- env DATABASE_URL=x RTBRIDGE_LOG_LEVEL=loud "$BIN" serve
expect_exit "missing value" 2 "--channels" -- env DATABASE_URL=x "$BIN" tail --channels
expect_exit "missing database url" 2 "--database-url" -- env -u DATABASE_URL "$BIN" migrate
expect_exit "stray argument" 2 "unexpected argument" -- env DATABASE_URL=x "$BIN" serve extra

# ---- README's CLI reference is the --help table ---------------------------------

missing=""
while read -r flag; do
    grep -qF -- "$flag" "$ROOT/README.md" || missing="$missing $flag"
done < <("$BIN" help --markdown | grep -oE -- '--[a-z][a-z0-9-]+' | sort -u)
[ -z "$missing" ] && pass "README documents every flag" || fail "README documents every flag" "missing:$missing"

# ---- with a database ----------------------------------------------------------------

psql -q "$BASE" -c "CREATE DATABASE rt_cli_$$" >/dev/null
export DATABASE_URL="${BASE%/*}/rt_cli_$$"

"$BIN" migrate >"$tmp/m1" 2>&1 && grep -q "applied" "$tmp/m1" && pass "migrate" || fail "migrate" "$(cat "$tmp/m1")"
"$BIN" migrate >"$tmp/m2" 2>&1 && grep -q "^migrate: 0 migration(s) applied" "$tmp/m2" &&
    pass "migrate twice applies nothing" || fail "migrate twice applies nothing" "$(cat "$tmp/m2")"

sql() { psql -qAt "$DATABASE_URL" -c "$1"; }

# tail --format json prints exactly the WebSocket message.
"$BIN" tail --format json >"$tmp/tail.json" 2>"$tmp/tail.err" &
tpid=$!
pids+=("$tpid")
if wait_for "$tmp/tail.err" "listening on" 10; then
    sql "INSERT INTO intents(id, status, data) VALUES ('22222222-2222-2222-2222-222222222222', 'pending', '{\"n\": 1}')"
    sql "UPDATE intents SET status = 'done' WHERE id = '22222222-2222-2222-2222-222222222222'"
    if wait_for "$tmp/tail.json" '"status" ?: ?"done"' 10; then
        seqs=$(sql "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM rt_journal")
        if python3 - "$tmp/tail.json" "$seqs" <<'PY'; then pass "tail json"; else fail "tail json" "$(cat "$tmp/tail.json")"; fi
import json, sys, re
lines = open(sys.argv[1]).read().splitlines()
want = [int(s) for s in sys.argv[2].split(",")]
msgs = [json.loads(l) for l in lines]
assert [m["id"] for m in msgs] == want, (msgs, want)
for m, op in zip(msgs, ["INSERT", "UPDATE"]):
    assert list(m.keys()) == ["type", "id", "data", "timestamp"], m.keys()
    assert m["type"] == "intent_update"
    assert m["data"]["seq"] == m["id"] and m["data"]["event_type"] == op
    assert m["data"]["intent_id"] == "22222222-2222-2222-2222-222222222222"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["timestamp"])
PY
    else
        fail "tail json" "no event within 10 s" "$(cat "$tmp/tail.err")"
    fi
else
    fail "tail json" "tail did not connect" "$(cat "$tmp/tail.err")"
fi
kill -TERM "$tpid"
wait "$tpid"
rc=$?
[ "$rc" -eq 0 ] && pass "tail exits 0 on SIGTERM" || fail "tail exits 0 on SIGTERM" "exit $rc" "$(tail -3 "$tmp/tail.err")"

# tail --format text: one short line per event.
"$BIN" tail --format text >"$tmp/tail.txt" 2>"$tmp/tail2.err" &
tpid=$!
pids+=("$tpid")
if wait_for "$tmp/tail2.err" "listening on" 10; then
    sql "INSERT INTO audit_logs(event_type, intent_id, actor, payload) VALUES ('status_change', '22222222-2222-2222-2222-222222222222', 'bob', '{}')"
    if wait_for "$tmp/tail.txt" 'audit_log +#[0-9]+ intent=22222222-2222-2222-2222-222222222222 log=[0-9]+ op=status_change actor=bob' 10; then
        pass "tail text"
    else
        fail "tail text" "$(cat "$tmp/tail.txt")"
    fi
else
    fail "tail text" "tail did not connect" "$(cat "$tmp/tail2.err")"
fi
kill -INT "$tpid"
wait "$tpid"
rc=$?
[ "$rc" -eq 0 ] && pass "tail exits 0 on SIGINT" || fail "tail exits 0 on SIGINT" "exit $rc"

# tail into a closed pipe stops by itself.
( "$BIN" tail --format json 2>"$tmp/tail3.err" | head -n 1 >"$tmp/head.out" ) &
hpid=$!
pids+=("$hpid")
wait_for "$tmp/tail3.err" "listening on" 10
sql "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'a'), (gen_random_uuid(), 'b')"
sql "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'c')"
deadline=$((SECONDS + 10))
while kill -0 "$hpid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
    sql "INSERT INTO intents(id, status) VALUES (gen_random_uuid(), 'more')"
    sleep 0.1
done
if ! kill -0 "$hpid" 2>/dev/null && [ "$(wc -l <"$tmp/head.out")" -eq 1 ]; then
    pass "tail stops when its reader goes away"
else
    fail "tail stops when its reader goes away" "$(cat "$tmp/tail3.err")"
fi

# serve starts, stays up without a consumer, and stops cleanly on SIGTERM.
"$BIN" serve --log-format json >"$tmp/serve.out" 2>"$tmp/serve.err" &
spid=$!
pids+=("$spid")
if wait_for "$tmp/serve.err" '"msg":"connected, listening on' 10; then
    python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$tmp/serve.err" &&
        pass "serve logs JSON lines" || fail "serve logs JSON lines" "$(head -3 "$tmp/serve.err")"
else
    fail "serve logs JSON lines" "$(cat "$tmp/serve.err")"
fi
kill -TERM "$spid"
wait "$spid"
rc=$?
[ "$rc" -eq 0 ] && grep -q '"msg":"stopped"' "$tmp/serve.err" && pass "serve exits 0 on SIGTERM" ||
    fail "serve exits 0 on SIGTERM" "exit $rc" "$(tail -3 "$tmp/serve.err")"

exit $((fails > 0))
