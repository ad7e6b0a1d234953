#!/bin/sh
# perf/bench.sh BUILD_DIR: runs the core-pipeline benchmarks (issue #2) and
# the ETL's (issue #5, perf/bench-etl.c).
#
# Builds nothing (`make bench` builds first). Starts a throwaway PostgreSQL
# with test/pg.sh in a fresh temporary directory on a free port, runs
# BUILD_DIR/perf/bench-bus and BUILD_DIR/perf/bench-listener against it, and
# writes everything they print, after a header describing the machine, to
# perf/results/<UTC date>-core.txt (a second run on the same day gets the
# time added to the name) while printing it. The server is stopped and the
# directory removed on exit, whatever happens. Exits non-zero if a benchmark
# failed.
#
# POSIX sh, since `make bench` runs it with sh. Extra arguments for each
# benchmark come from the environment (split on blanks), e.g.
#   BENCH_BUS_ARGS="--events 200000 --runs 3" BENCH_LISTENER_ARGS="--runs 1" make bench
#   BENCH_ETL_ARGS="--rows 500000 --runs 5" make bench
set -eu

prog=bench.sh
die() {
    echo "$prog: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: perf/bench.sh BUILD_DIR"
build=$1
root=$(cd "$(dirname "$0")/.." && pwd)
for b in bench-bus bench-listener bench-etl; do
    [ -x "$build/perf/$b" ] || die "$build/perf/$b is missing: run 'make perfs' first"
done

# The directory is handed to the postgres user by pg.sh; it sits right under
# /tmp (searchable by everyone) and keeps the socket path short.
tmp=$(mktemp -d /tmp/rtbench.XXXXXX)
cleanup() {
    sh "$root/test/pg.sh" stop "$tmp" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(sh "$root/test/pg.sh" freeport)
url=$(sh "$root/test/pg.sh" start "$tmp" "$port")

mkdir -p "$root/perf/results"
out="$root/perf/results/$(date -u +%Y-%m-%d)-core.txt"
[ -e "$out" ] && out="$root/perf/results/$(date -u +%Y-%m-%dT%H%M%SZ)-core.txt"

header() {
    dirty=""
    [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ] && dirty=" (with uncommitted changes)"
    echo "# rtbridge core-pipeline benchmarks (issue #2)"
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit:  $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
    echo "cpu:     $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel:  $(uname -sr)"
    echo "cc:      $(${CC:-cc} --version | head -n 1)"
    # Other busy processes make the numbers noisy: show the load and the top
    # consumers at the start so a reader can tell.
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
    echo "busiest processes at start (%CPU over their lifetime):"
    ps -eo pcpu=,comm= --sort=-pcpu | head -n 3 | sed 's/^/   /'
    echo
}

# Runs one benchmark, showing the command; records a failure in $tmp/failed
# (the pipeline into tee runs this in a subshell, so a variable would not do).
run() {
    echo "\$ $*"
    "$@" || {
        echo "$prog: $1 exited with status $?"
        : >"$tmp/failed"
    }
    echo
}

# The extra arguments are split on blanks on purpose.
# shellcheck disable=SC2086
{
    header
    run "$build/perf/bench-bus" ${BENCH_BUS_ARGS:-}
    run "$build/perf/bench-listener" --url "$url" ${BENCH_LISTENER_ARGS:-}
    # The audit-log ETL (issue #5): catch-up against a bare COPY, steady-state lag.
    run "$build/perf/bench-etl" --url "$url" ${BENCH_ETL_ARGS:-}
} 2>&1 | tee "$out"

echo "$prog: results written to perf/results/$(basename "$out")"
[ ! -e "$tmp/failed" ] || die "a benchmark failed (see above)"
