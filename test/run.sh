#!/bin/sh
# Test runner: starts one throwaway PostgreSQL for the whole run, runs every
# test binary (cmocka) and shell test, stops the cluster, and ends with the
# line "N passed, N failed". Exit status 0 only if nothing failed.
#
# Usage: sh test/run.sh BUILD_DIR [all|threaded]
#   threaded: only the tests of the threaded parts (for the TSan build).
set -u
B=${1:?usage: test/run.sh BUILD_DIR [all|threaded]}
MODE=${2:-all}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

THREADED="unit-bus unit-event unit-fanout_handler unit-metrics integ-listener integ-etl integ-metrics integ-alerts js-fanout js-poll"

tmp=$(mktemp -d /tmp/rtbridge-test.XXXXXX)
chmod 755 "$tmp"
cleanup() {
    sh test/pg.sh stop "$tmp/pg" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(sh test/pg.sh freeport) || { echo "test/run.sh: no free port"; exit 1; }
if ! url=$(sh test/pg.sh start "$tmp/pg" "$port" 2>"$tmp/pg-start.log"); then
    echo "test/run.sh: cannot start PostgreSQL:"
    cat "$tmp/pg-start.log"
    exit 1
fi
export RT_TEST_DATABASE_URL="$url" RT_BIN="$ROOT/$B/bin/rtbridge" RT_BUILD="$ROOT/$B"
echo "PostgreSQL for tests: $url"

pass=0
fail=0
failed=""

# Runs one test program, adds its cmocka (or PASS:/FAIL: line) counts.
run_one() {
    name=$1
    shift
    log="$tmp/$name.log"
    start=$(date +%s)
    "$@" >"$log" 2>&1
    rc=$?
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -n 1)
    if [ -z "$p" ] && [ -z "$f" ]; then
        # node --test (TAP): "# pass N" / "# fail N"
        p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -n 1)
        f=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -n 1)
    fi
    if [ -z "$p" ] && [ -z "$f" ]; then
        p=$(grep -c '^PASS: ' "$log")
        f=$(grep -c '^FAIL: ' "$log")
    fi
    p=${p:-0}
    f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1 # crashed, or a sanitizer stopped it
    fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
        f=1 # ran nothing: that is a failure too
    fi
    pass=$((pass + p))
    fail=$((fail + f))
    secs=$(($(date +%s) - start))
    if [ "$f" -gt 0 ]; then
        failed="$failed $name"
        echo "FAILED  $name ($p passed, $f failed, exit $rc, ${secs}s); last lines of its output:"
        tail -n 60 "$log" | sed 's/^/    /'
    else
        echo "ok      $name ($p passed, ${secs}s)"
    fi
}

for t in "$B"/test/unit-* "$B"/test/integ-*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    if [ "$MODE" = threaded ]; then
        case " $THREADED " in *" $name "*) ;; *) continue ;; esac
    fi
    run_one "$name" "$t"
done

# End-to-end tests in Node (the server binary is threaded: TSan runs them too),
# and the dashboard in a real browser (test/browser, chromium + playwright-core).
for t in test/js/*.test.mjs test/browser/*.test.mjs; do
    [ -f "$t" ] || continue
    name="$(basename "$(dirname "$t")")-$(basename "$t" .test.mjs)"
    if [ "$MODE" = threaded ]; then
        case " $THREADED " in *" $name "*) ;; *) continue ;; esac
    fi
    run_one "$name" node --test --test-reporter=tap "$t"
done

if [ "$MODE" = all ]; then
    for t in test/sh/*.sh; do
        [ -f "$t" ] || continue
        run_one "sh-$(basename "$t" .sh)" bash "$t"
    done
fi

[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
