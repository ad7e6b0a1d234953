# Sourced by the shell tests in test/sh/ (not a test itself: test/run.sh runs
# only test/sh/*.sh). Sets up what every one of them needs:
#
#   BIN BASE ROOT  the binary and database URL test/run.sh exports, the tree
#   tmp            a private temporary directory
#   pids           PIDs to kill on exit (append what you start)
#   db             a database name to drop on exit (set it, or leave empty)
#   pass NAME / fail NAME [DETAIL...]   PASS:/FAIL: lines; fails counts them
#
# On exit every PID in pids is killed, db is dropped and tmp removed.
# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing test
BIN=${RT_BIN:?RT_BIN not set}
BASE=${RT_TEST_DATABASE_URL:?RT_TEST_DATABASE_URL not set}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
tmp=$(mktemp -d)
db=""
pids=()
_common_cleanup() {
    local p
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
    [ -n "$db" ] && psql -q "$BASE" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap _common_cleanup EXIT

fails=0
pass() { echo "PASS: $1"; }
fail() {
    echo "FAIL: $1"
    shift
    local l
    for l in "$@"; do echo "    $l"; done
    fails=$((fails + 1))
}
