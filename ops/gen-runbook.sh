#!/bin/sh
# Regenerates the parts of ops/RUNBOOK.md that come from rtbridge itself, so
# the runbook cannot drift from the binary:
#   * the flag/environment table, from `rtbridge help --markdown` (the one
#     configuration table in lib/config.c), between
#       <!-- BEGIN GENERATED: rtbridge help --markdown -->  and  <!-- END GENERATED -->
#   * the command list, from the "Commands:" block of `rtbridge help`, between
#       <!-- BEGIN GENERATED: rtbridge commands -->  and  <!-- END GENERATED -->
#
#   sh ops/gen-runbook.sh [--check] [RTBRIDGE]
#
# RTBRIDGE defaults to build/bin/rtbridge. --check changes nothing and exits 1
# when the runbook differs from what the binary prints (test/sh/ops-runbook.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
runbook=$here/RUNBOOK.md
check=0
if [ "${1:-}" = --check ]; then
    check=1
    shift
fi
bin=${1:-$here/../build/bin/rtbridge}
if [ ! -x "$bin" ]; then
    echo "gen-runbook.sh: $bin is not an executable (run make first)" >&2
    exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" help --markdown >"$tmp/flags"
# The indented lines after "Commands:" up to the blank line, as a code block.
"$bin" help | awk '/^Commands:/ {on = 1; next} on && /^$/ {exit} on {print}' |
    sed 's/^  //' >"$tmp/cmds.body"
{
    echo '```'
    cat "$tmp/cmds.body"
    echo '```'
} >"$tmp/cmds"
if [ ! -s "$tmp/flags" ] || [ ! -s "$tmp/cmds.body" ]; then
    echo "gen-runbook.sh: $bin printed no flag table or no command list" >&2
    exit 2
fi

# Replaces each marked block with its file; fails on a missing marker.
awk -v flags="$tmp/flags" -v cmds="$tmp/cmds" '
    function emit(f,   line) { while ((getline line < f) > 0) print line; close(f) }
    /^<!-- BEGIN GENERATED: rtbridge help --markdown -->$/ { print; emit(flags); skip = 1; nf++; next }
    /^<!-- BEGIN GENERATED: rtbridge commands -->$/ { print; emit(cmds); skip = 1; nc++; next }
    /^<!-- END GENERATED -->$/ { skip = 0 }
    !skip { print }
    END { if (nf != 1 || nc != 1 || skip) exit 3 }
' "$runbook" >"$tmp/new" || {
    echo "gen-runbook.sh: $runbook needs exactly one of each BEGIN GENERATED marker, each closed by END GENERATED" >&2
    exit 2
}

if [ $check -eq 1 ]; then
    if ! diff -u "$runbook" "$tmp/new" >"$tmp/diff"; then
        echo "ops/RUNBOOK.md disagrees with '$bin help'; run: sh ops/gen-runbook.sh" >&2
        cat "$tmp/diff" >&2
        exit 1
    fi
    exit 0
fi
cat "$tmp/new" >"$runbook"
