#!/usr/bin/env bash
# ops/Dockerfile, proved without a Docker engine (issue #9):
#   * every shared library `ldd` shows for the built binary comes (dpkg -S)
#     from a package the runtime stage installs, or one those depend on
#     (apt-cache depends --recurse: the same Debian release as the image);
#   * the runtime stage installs no -dev package and no compiler;
#   * the build stage is debian:bookworm running ops/install-deps.sh and make,
#     the runtime debian:bookworm-slim;
#   * user, port, entrypoint, command, health check and log format match the
#     README's "Container image" table, and the port agrees with
#     RTBRIDGE_LISTEN, EXPOSE and the HEALTHCHECK URL;
#   * the environment variables the image sets exist in `rtbridge help`;
#   * shellcheck passes on every shell script in ops/.
# Prints PASS:/FAIL: lines; run by test/run.sh.
set -u
# shellcheck source=test/sh/ops-lib/common.sh
. "$(dirname "$0")/ops-lib/common.sh"
DF=$ROOT/ops/Dockerfile
README=$ROOT/README.md

# check NAME STATUS DETAIL...: STATUS is the $? of the condition just run, so
# NAME must not contain a command substitution (it would reset $?).
check() {
    local name=$1 st=$2
    shift 2
    if [ "$st" -eq 0 ]; then pass "$name"; else fail "$name" "$@"; fi
}

# Instructions of the Dockerfile with continuation lines joined, one a line,
# and the runtime stage (after the last FROM) on its own.
sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$DF" | grep -v '^[[:space:]]*#' | sed 's/[[:space:]]\+/ /g' >"$tmp/df"
awk '/^FROM /{n++} {print > (FILENAME ".stage" n)}' "$tmp/df"
stages=$(grep -c '^FROM ' "$tmp/df")
runtime=$tmp/df.stage$stages
build=$tmp/df.stage1

# ---- stages ----------------------------------------------------------------------------

[ "$stages" = 2 ] && grep -q '^FROM debian:bookworm AS build$' "$build" &&
    grep -q '^FROM debian:bookworm-slim$' "$runtime"
check "two stages: debian:bookworm build, debian:bookworm-slim runtime" $? "$(grep '^FROM' "$tmp/df")"
grep -q 'bash ops/install-deps.sh' "$build" && grep -q 'make .*all' "$build"
check "build stage uses ops/install-deps.sh and make" $? "$(cat "$build")"

# The runtime stage's apt-get install list.
pkgs=$(sed -n 's/.*apt-get install -y --no-install-recommends \([^&]*\).*/\1/p' "$runtime" | xargs)
if [ -z "$pkgs" ]; then
    fail "runtime stage installs packages" "no 'apt-get install -y --no-install-recommends ...' in the runtime stage"
    exit 1
fi
bad=$(printf '%s\n' $pkgs | grep -E -- '-dev$|^(gcc|g\+\+|make|build-essential|clang)' | xargs)
[ -z "$bad" ]
check "runtime stage: runtime packages only ($pkgs)" $? "build packages: $bad"

# ---- every linked library is provided ---------------------------------------------------

# shellcheck disable=SC2086 # the list is words on purpose
if ! apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances $pkgs 2>"$tmp/apt.err" | grep -v '^ ' | grep -v '^<' | sort -u >"$tmp/closure"; then
    fail "apt-cache depends on the runtime packages" "$(cat "$tmp/apt.err")"
fi
for p in $pkgs; do
    grep -qx "$p" "$tmp/closure" || fail "runtime package $p exists in this Debian release" "apt-cache knows no $p"
done
missing="" n=0
# The image holds the release build (plain `make`): under `make check-san`
# RT_BIN is the sanitizer build, which links libasan and friends, so look at
# the release binary, which `make test` built first.
rel=$ROOT/build/bin/rtbridge
[ -x "$rel" ] || rel=$BIN
ldd "$rel" >"$tmp/ldd" 2>&1
if grep -q 'not found' "$tmp/ldd"; then
    fail "ldd resolves every library" "$(grep 'not found' "$tmp/ldd")"
fi
# One dpkg -S for all of them (it is slow per call). dpkg knows each file
# by the path its package installed, which with merged /usr is either ldd's
# /lib/... path or the real /usr/lib/... one: ask for both.
awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' "$tmp/ldd" | sort -u >"$tmp/libs"
while read -r lib; do echo "$lib $(readlink -f "$lib")"; done <"$tmp/libs" >"$tmp/pairs"
# shellcheck disable=SC2046
dpkg -S $(cat "$tmp/pairs") 2>/dev/null | grep -v '^diversion' |
    sed 's/^\([^:,]*\)[^ ]* \(\/.*\)$/\1 \2/' >"$tmp/owners"
while read -r lib real; do
    n=$((n + 1))
    owner=$(awk -v a="$lib" -v b="$real" '$2 == a || $2 == b {print $1; exit}' "$tmp/owners")
    if [ -z "$owner" ] || ! grep -qx "$owner" "$tmp/closure"; then
        missing="$missing $lib(${owner:-no package})"
    fi
done <"$tmp/pairs"
binname=$(basename "$BIN")
[ $n -gt 5 ] && [ -z "$missing" ]
check "all $n shared libraries of $binname come from the runtime stage's packages" $? \
    "not provided:$missing" "runtime packages: $pkgs"

# ---- the image's contract, against the README ------------------------------------------

# readme_row KEY: the value column of the README's container table row.
readme_row() {
    sed -n '/^### Container image/,/^##[^#]/p' "$README" |
        sed -n "s/^| $1 | \`\(.*\)\` |.*/\1/p" | head -n 1
}
user=$(sed -n 's/^USER //p' "$runtime")
uid=$(sed -n 's/.*useradd .*--uid \([0-9]*\) .*/\1/p' "$runtime")
name=$(sed -n 's/.*useradd .* \([a-z][a-z0-9_-]*\)$/\1/p; s/.*useradd .* \([a-z][a-z0-9_-]*\) *&&.*/\1/p' "$runtime" | head -n 1)
expose=$(sed -n 's/^EXPOSE //p' "$runtime")
listen=$(sed -n 's/.*RTBRIDGE_LISTEN=\([^ ]*\).*/\1/p' "$runtime")
hc=$(sed -n 's/^HEALTHCHECK .*"\(http:[^"]*\)".*/\1/p' "$runtime")
entry=$(sed -n 's/^ENTRYPOINT //p' "$runtime")
cmd=$(sed -n 's/^CMD //p' "$runtime")
stop=$(sed -n 's/^STOPSIGNAL //p' "$runtime")
logfmt=$(sed -n 's/.*RTBRIDGE_LOG_FORMAT=\([^ ]*\).*/\1/p' "$runtime")

[ "$user" = "$uid:$uid" ] && [ "$name" = rtbridge ] && [ "$uid" != 0 ]
check "runs as the unprivileged user $name ($user)" $? "USER '$user', useradd uid '$uid' name '$name'"
[ "$(readme_row user)" = "$name ($uid:$uid)" ]
check "README: user" $? "README '$(readme_row user)', Dockerfile '$name ($uid:$uid)'"
[ "$expose" = "${listen##*:}" ] && [ "$hc" = "http://127.0.0.1:$expose/healthz" ] && [ "$(readme_row port)" = "$expose" ]
check "port $expose: EXPOSE, RTBRIDGE_LISTEN, HEALTHCHECK /healthz and the README agree" $? \
    "EXPOSE '$expose', RTBRIDGE_LISTEN '$listen', HEALTHCHECK '$hc', README '$(readme_row port)'"
[ "$entry" = '["rtbridge"]' ] && [ "$cmd" = '["serve"]' ] &&
    [ "$(readme_row entrypoint)" = "$entry" ] && [ "$(readme_row command)" = "$cmd" ]
check "ENTRYPOINT [\"rtbridge\"], CMD [\"serve\"], as the README says" $? \
    "ENTRYPOINT '$entry' CMD '$cmd'; README '$(readme_row entrypoint)' '$(readme_row command)'"
[ "$stop" = SIGTERM ] && [ "$(readme_row 'stop signal')" = SIGTERM ]
check "STOPSIGNAL SIGTERM" $? "'$stop', README '$(readme_row 'stop signal')'"
[ "$logfmt" = json ] && [ "$(readme_row logs)" = "RTBRIDGE_LOG_FORMAT=json" ]
check "JSON logs by default" $? "RTBRIDGE_LOG_FORMAT '$logfmt', README '$(readme_row logs)'"
[ "$(readme_row healthcheck)" = "GET /healthz" ]
check "README: health check" $? "'$(readme_row healthcheck)'"

# Every variable the image sets is one rtbridge reads, with a valid value.
"$BIN" help >"$tmp/help" 2>&1
unknown=""
for v in $(grep '^ENV ' "$runtime" | grep -o 'RTBRIDGE_[A-Z_]*\|DATABASE_URL' | sort -u); do
    grep -q "env ${v}[],]" "$tmp/help" || unknown="$unknown $v"
done
[ -z "$unknown" ]
check "ENV names exist in rtbridge help" $? "unknown:$unknown"
env RTBRIDGE_LOG_FORMAT="$logfmt" RTBRIDGE_LISTEN="$listen" DATABASE_URL=postgresql://x@127.0.0.1:1/x \
    "$BIN" migrate >"$tmp/env.out" 2>&1
rc=$?
[ $rc -ne 2 ] && grep -q '^{"time":' "$tmp/env.out"
check "the image's environment is accepted and gives JSON log lines" $? "exit $rc" "$(head -3 "$tmp/env.out")"

# ---- shellcheck on every script in ops/ -----------------------------------------------

scripts=$(cd "$ROOT" && { find ops -type f -name '*.sh'; grep -rlE '^#!.*(ba|da)?sh' ops 2>/dev/null; } | sort -u)
if command -v shellcheck >/dev/null; then
    # shellcheck disable=SC2086
    list=$(echo "$scripts" | xargs)
    (cd "$ROOT" && shellcheck $scripts) >"$tmp/sc" 2>&1
    check "shellcheck: $list" $? "$(head -40 "$tmp/sc")"
else
    fail "shellcheck is installed" "bash ops/install-deps.sh"
fi

[ $fails -eq 0 ]
