# Shared by the test/sh/ops-*.sh tests (sourced, not run: test/run.sh runs
# only test/sh/*.sh). Gives:
#   pass NAME / fail NAME DETAIL...   PASS:/FAIL: lines; $fails counts failures
#   ops_tmp                           a temp dir in $tmp, removed at exit
#   ops_db NAME                       a fresh database NAME on the test cluster,
#                                     migrated; sets $URL; dropped at exit
#   ops_serve VAR PORT FLAGS...       starts `rtbridge serve` on 127.0.0.1:PORT
#                                     against $URL, its PID in $VAR, output in
#                                     $tmp/VAR.log; killed at exit if still up
#   ops_wait_ready URL [PID]          polls URL for 10 s while PID lives
#   ops_stop VAR                      SIGTERM, wait; returns the exit status
#   ops_track_term PID                at exit, stop PID with SIGTERM and wait
#                                     (for programs like nginx whose children
#                                     outlive a SIGKILLed parent)
#   ops_freeport                      a free port on 127.0.0.1
# Needs RT_BIN (and RT_TEST_DATABASE_URL for ops_db).
# shellcheck shell=bash
BIN=${RT_BIN:?RT_BIN not set}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
# For the Python parts: sys.path.insert(0, os.environ["OPS_LIB"]); import check
export OPS_LIB=$ROOT/test/sh/ops-lib
fails=0
tmp=$(mktemp -d)
chmod 755 "$tmp"
_ops_pids=()
_ops_term=()
_ops_dbs=()

pass() { echo "PASS: $1"; }
fail() {
    echo "FAIL: $1"
    shift
    for l in "$@"; do echo "    $l"; done
    fails=$((fails + 1))
}

_ops_cleanup() {
    local p d
    for p in "${_ops_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for p in "${_ops_term[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for d in "${_ops_dbs[@]}"; do
        psql -q "$RT_TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1
    done
    rm -rf "$tmp"
}
trap _ops_cleanup EXIT

ops_db() {
    local base=${RT_TEST_DATABASE_URL:?RT_TEST_DATABASE_URL not set}
    psql -q "$base" -c "CREATE DATABASE $1" >/dev/null || return 1
    _ops_dbs+=("$1")
    URL=${base%/*}/$1
    DATABASE_URL=$URL "$BIN" migrate >"$tmp/migrate-$1.log" 2>&1 || {
        cat "$tmp/migrate-$1.log" >&2
        return 1
    }
}

ops_serve() {
    local var=$1 port=$2
    shift 2
    DATABASE_URL=$URL "$BIN" serve --listen "127.0.0.1:$port" "$@" >"$tmp/$var.log" 2>&1 &
    printf -v "$var" '%s' "$!"
    _ops_pids+=("$!")
}

ops_wait_ready() {
    local _
    for _ in $(seq 1 100); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

ops_stop() {
    local pid=${!1}
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
}

ops_track_term() {
    _ops_term+=("$1")
}

ops_freeport() {
    sh "$ROOT/test/pg.sh" freeport
}
