#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and its helpers run from traps
# run-embedded.sh: `make run`, the newcomer's first look at rtbridge.
#
#   bash ops/run-embedded.sh path/to/rtbridge
#
# Uses DATABASE_URL if set; otherwise starts a throwaway PostgreSQL
# (test/pg.sh) in a temporary directory on a free port. Then it applies the
# schema (`rtbridge migrate`), starts a demo producer that writes an intent,
# a status change and an audit log every second, starts `rtbridge serve` in
# the background, and shows the live event stream (`rtbridge tail --format
# text`) until Ctrl-C.
#
# On Ctrl-C, TERM, or any of them exiting, every process started here is
# stopped by its PID and waited for, the throwaway cluster is stopped and its
# directory removed: nothing is left behind. RT_DEMO_PRODUCER=0 skips the
# producer (e.g. when DATABASE_URL points at a database with real traffic;
# the producer only ever updates intents it inserted itself).

# `make run` runs this with sh; the rest is bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash ops/run-embedded.sh path/to/rtbridge" >&2
    exit 2
fi
BIN=$1
case $BIN in */*) ;; *) BIN=./$BIN ;; esac
if [ ! -x "$BIN" ]; then
    echo "run-embedded.sh: $BIN is not an executable (build it with 'make')" >&2
    exit 1
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
ROOT=$(cd "$(dirname "$0")/.." && pwd)

say() { printf '==> %s\n' "$*"; }

work=""
pgdir=""
producer_pid=""
pids=()
declare -A names

# Stops one process and waits for it, so no zombie and no orphan outlives the
# script: TERM, then after 10 s KILL.
stop_pid() {
    local pid=$1 i
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# True while any of the given processes is alive.
any_alive() {
    local pid
    for pid in "$@"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

interrupted=0
cleanup() {
    local rc=$?
    trap '' INT TERM
    trap - EXIT
    # Ctrl-C in a terminal reaches the whole process group, so rtbridge is
    # already shutting down and handles no second signal: give it up to 2 s
    # before sending TERM. The producer ignores INT and always gets TERM.
    local i
    if [ "$interrupted" -eq 1 ]; then
        local own=()
        for i in "${pids[@]}"; do
            [ "$i" = "$producer_pid" ] || own+=("$i")
        done
        for ((i = 0; i < 20; i++)); do
            any_alive "${own[@]}" || break
            sleep 0.1
        done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_pid "${pids[i]}"
    done
    if [ -n "$pgdir" ]; then
        sh "$ROOT/test/pg.sh" stop "$pgdir" || echo "run-embedded.sh: could not stop PostgreSQL in $pgdir" >&2
    fi
    if [ -n "$work" ]; then
        rm -rf "$work"
    fi
    say "stopped"
    exit "$rc"
}
trap cleanup EXIT
# The EXIT trap does the work; these only give the usual exit statuses.
trap 'interrupted=1; exit 130' INT
trap 'exit 143' TERM

work=$(mktemp -d "${TMPDIR:-/tmp}/rtbridge-run.XXXXXX")
chmod 755 "$work"

if [ -n "${DATABASE_URL:-}" ]; then
    say "database: $DATABASE_URL (from DATABASE_URL)"
else
    port=$(sh "$ROOT/test/pg.sh" freeport)
    pgdir=$work/pg
    say "starting a throwaway PostgreSQL on 127.0.0.1:$port ..."
    DATABASE_URL=$(sh "$ROOT/test/pg.sh" start "$pgdir" "$port")
    say "database: $DATABASE_URL (throwaway, removed on exit)"
fi
export DATABASE_URL

"$BIN" migrate

# The demo producer: every second an INSERT of a new intent, a status change
# of one it made earlier (with an audit log row describing it), as separate
# transactions, so each shows up as its own event. It only touches intents it
# inserted itself.
producer() {
    local sleeper=""
    # Ctrl-C reaches the whole process group; the main script decides and
    # stops the producer with TERM, which also ends the sleep it waits on.
    trap '' INT
    trap 'if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null; wait "$sleeper"; fi; exit 0' TERM
    local statuses=(pending processing completed failed)
    local bridges=(ach sepa swift fedwire)
    local ids=() tick=0
    while :; do
        tick=$((tick + 1))
        local st=${statuses[RANDOM % 4]}
        local amount=$((RANDOM % 100000))
        local id
        id=$(psql "$DATABASE_URL" -X -q -A -t -v ON_ERROR_STOP=1 -c "
            INSERT INTO intents (id, status, data, created_at, updated_at)
            VALUES (gen_random_uuid(), '$st',
                    jsonb_build_object('amount', $amount, 'currency', 'USD',
                                       'source', 'demo', 'tick', $tick),
                    now(), now())
            RETURNING id") || id=""
        [ -n "$id" ] && ids+=("$id")
        if [ ${#ids[@]} -gt 0 ]; then
            local target=${ids[RANDOM % ${#ids[@]}]}
            local new=${statuses[RANDOM % 4]}
            local bridge=${bridges[RANDOM % 4]}
            local ms=$((RANDOM % 2000 + 5))
            local ok=true
            [ "$new" = failed ] && ok=false
            psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL || true
CREATE TEMP TABLE prev AS SELECT status FROM intents WHERE id = '$target';
UPDATE intents SET status = '$new', version = version + 1, updated_at = now()
    WHERE id = '$target';
INSERT INTO audit_logs (event_type, intent_id, actor, payload, created_at)
    SELECT 'status_changed', '$target', 'demo-producer',
           jsonb_build_object('bridge_type', '$bridge', 'old_status', status,
                              'new_status', '$new', 'duration_ms', $ms,
                              'success', $ok),
           now()
    FROM prev;
-- The spec's processing time runs from BRIDGE_STARTED to BRIDGE_COMPLETED.
INSERT INTO audit_logs (event_type, intent_id, actor, payload, created_at)
    SELECT CASE '$new' WHEN 'processing' THEN 'BRIDGE_STARTED' ELSE 'BRIDGE_COMPLETED' END,
           '$target', 'demo-producer', jsonb_build_object('bridge_type', '$bridge'), now()
    WHERE '$new' IN ('processing', 'completed');
SQL
        fi
        # Keep the list short: old intents stop changing, like real ones.
        [ ${#ids[@]} -gt 50 ] && ids=("${ids[@]:1}")
        sleep 1 &
        sleeper=$!
        wait "$sleeper" || true
        sleeper=""
    done
}

if [ "${RT_DEMO_PRODUCER:-1}" != 0 ]; then
    producer >>"$work/producer.log" 2>&1 &
    producer_pid=$!
    pids+=("$producer_pid")
    say "demo producer running (pid $producer_pid): an intent, a status change, its audit logs per second (RT_DEMO_PRODUCER=0 turns it off)"
fi

"$BIN" serve >>"$work/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
sleep 0.5
if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "run-embedded.sh: 'rtbridge serve' exited at once; its log:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
say "rtbridge serve running (pid $serve_pid), log: $work/serve.log (removed on exit)"
listen=${RTBRIDGE_LISTEN:-0.0.0.0:8080}
port=${listen##*:}
say "dashboard: http://127.0.0.1:$port/"
say "live streams on port $port, for example:"
say "    curl -N http://127.0.0.1:$port/api/v2/events/stream"
say "    curl -N http://127.0.0.1:$port/events/audit-logs"
say "    websocket: ws://127.0.0.1:$port/ws/intents    health: http://127.0.0.1:$port/health/realtime"

# The tail runs in the background too, so a TERM to this script is handled
# at once (bash runs traps only between foreground commands, but `wait`
# returns as soon as a signal arrives).
"$BIN" tail --format text </dev/null &
tail_pid=$!
pids+=("$tail_pid")
say "live events follow (rtbridge tail --format text). Ctrl-C to stop."

# Until Ctrl-C (the INT trap), or until one of them ends by itself: then say
# which one, and stop the rest.
names=([$serve_pid]=serve [$tail_pid]=tail)
[ -n "$producer_pid" ] && names[$producer_pid]="demo producer"
ended=""
set +e
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)); then
    wait -n -p ended
else
    wait -n
fi
status=$?
set -e
if [ -n "$ended" ]; then
    echo "run-embedded.sh: ${names[$ended]:-pid $ended} exited (status $status)" >&2
else
    echo "run-embedded.sh: a process exited (status $status)" >&2
fi
if [ "$ended" = "$serve_pid" ] || [ "$ended" = "" ]; then
    echo "last lines of the server log:" >&2
    tail -n 20 "$work/serve.log" >&2
fi
exit "$status"
