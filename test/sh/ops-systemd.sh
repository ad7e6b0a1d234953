#!/usr/bin/env bash
# ops/systemd/rtbridge.service (issue #9):
#   * `systemd-analyze verify` passes with no warning (on a copy whose paths
#     point at the built binary, which verify requires to exist);
#   * `systemd-analyze security --offline` rates it 2.0 or better (0 is
#     best, 10 worst) and the hardening the issue names is there;
#   * the unit's own commands work: ExecStartPre (migrate), ExecStart
#     (serve), ExecReload (kill -HUP $MAINPID: the server reloads and keeps
#     running), and KillSignal stops it with exit 0 well within TimeoutStopSec,
#     which is longer than --shutdown-timeout.
# Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
# shellcheck source=test/sh/ops-lib/common.sh
. "$(dirname "$0")/ops-lib/common.sh"
UNIT=$ROOT/ops/systemd/rtbridge.service
# key NAME: the unit's value(s) for NAME, one a line.
key() { sed -n "s/^$1=//p" "$UNIT"; }
# seconds DURATION: "30s", "1min", "10s" -> seconds.
seconds() {
    case "$1" in
    *min) echo $((${1%min} * 60)) ;;
    *ms) echo 0 ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
    esac
}

if ! command -v systemd-analyze >/dev/null; then
    fail "systemd-analyze is installed" "bash ops/install-deps.sh (package systemd)"
    exit 1
fi

# ---- static checks ---------------------------------------------------------------------

copy=$tmp/rtbridge.service
sed "s|/usr/local/bin/rtbridge|$BIN|g" "$UNIT" >"$copy"
n=$(grep -c "^Exec.*$BIN" "$copy")
[ "$n" = 2 ] && pass "unit runs /usr/local/bin/rtbridge (ExecStartPre, ExecStart)" ||
    fail "unit runs /usr/local/bin/rtbridge" "$n Exec lines name it"
# verify looks for the unit's environment file only when starting; it wants
# the executables. Run it from an empty directory (it loads units found there).
(cd "$tmp" && systemd-analyze verify "$copy") >"$tmp/verify.out" 2>&1
rc=$?
if [ $rc -eq 0 ] && [ ! -s "$tmp/verify.out" ]; then
    pass "systemd-analyze verify: no errors, no warnings"
else
    fail "systemd-analyze verify" "exit $rc" "$(cat "$tmp/verify.out")"
fi
systemd-analyze security --offline=true "$copy" >"$tmp/sec.out" 2>&1
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$tmp/sec.out")
if [ -n "$score" ] && python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)"; then
    pass "systemd-analyze security: exposure $score (<= 2.0)"
else
    fail "systemd-analyze security: exposure <= 2.0" "score '$score'" "$(grep '✗' "$tmp/sec.out" | head -20)"
fi
missing=""
for kv in DynamicUser=yes ProtectSystem=strict NoNewPrivileges=yes ProtectHome=yes PrivateTmp=yes \
    PrivateDevices=yes CapabilityBoundingSet= RestrictAddressFamilies="AF_INET AF_INET6 AF_UNIX" \
    SystemCallFilter=@system-service MemoryDenyWriteExecute=yes KillSignal=SIGTERM; do
    grep -qx "$kv" "$UNIT" || missing="$missing $kv"
done
[ -z "$missing" ] && pass "hardening and stop settings present" || fail "hardening and stop settings present" "missing:$missing"
reload=$(key ExecReload)
[ "$reload" = '/bin/kill -HUP $MAINPID' ] && pass "ExecReload sends SIGHUP" || fail "ExecReload sends SIGHUP" "'$reload'"
stop_s=$(seconds "$(key TimeoutStopSec)")
drain_s=$("$BIN" help | sed -n 's/.*--shutdown-timeout.*default \([0-9]*\)s.*/\1/p')
if [ -n "$drain_s" ] && [ "${stop_s:-0}" -gt $((drain_s + 5)) ]; then
    pass "TimeoutStopSec ${stop_s}s > --shutdown-timeout ${drain_s}s + 5s"
else
    fail "TimeoutStopSec > --shutdown-timeout + 5s" "TimeoutStopSec '$stop_s', --shutdown-timeout '$drain_s'"
fi

# ---- the unit's commands, run as systemd would -----------------------------------------

ops_db rt_ops_systemd_$$ || { fail "create and migrate a database"; exit 1; }
export DATABASE_URL=$URL
port=$(ops_freeport)
export RTBRIDGE_LISTEN=127.0.0.1:$port
pre=$(key ExecStartPre)
start=$(key ExecStart)
# shellcheck disable=SC2086 # the unit's command lines are words
if ${pre//\/usr\/local\/bin\/rtbridge/$BIN} >"$tmp/pre.log" 2>&1; then
    pass "ExecStartPre: $pre"
else
    fail "ExecStartPre: $pre" "$(tail -3 "$tmp/pre.log")"
fi
# shellcheck disable=SC2086
${start//\/usr\/local\/bin\/rtbridge/$BIN} >"$tmp/serve.log" 2>&1 &
pid=$!
_ops_pids+=("$pid")
ops_wait_ready "http://127.0.0.1:$port/readyz" "$pid" && pass "ExecStart: $start (ready)" || fail "ExecStart: $start" "$(tail -3 "$tmp/serve.log")"
MAINPID=$pid
reload_cmd=${reload//\$MAINPID/$MAINPID}
# shellcheck disable=SC2086
$reload_cmd
reloaded=0
for _ in $(seq 1 50); do
    grep -q "SIGHUP" "$tmp/serve.log" && { reloaded=1; break; }
    sleep 0.1
done
if [ $reloaded -eq 1 ] && kill -0 "$pid" 2>/dev/null && curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then
    pass "ExecReload: the server logs the SIGHUP and keeps serving"
else
    fail "ExecReload: the server logs the SIGHUP and keeps serving" "$(tail -3 "$tmp/serve.log")"
fi
t0=$SECONDS
kill -"$(key KillSignal | sed 's/^SIG//')" "$pid"
wait "$pid"
rc=$?
took=$((SECONDS - t0))
if [ $rc -eq 0 ] && [ $took -lt "$stop_s" ]; then
    pass "KillSignal stops it: exit 0 in ${took}s (< TimeoutStopSec)"
else
    fail "KillSignal stops it with exit 0 within TimeoutStopSec" "exit $rc after ${took}s"
fi
[ $fails -eq 0 ]
