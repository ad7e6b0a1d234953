#!/usr/bin/env bash
# install-deps.sh: install what rtbridge needs to build, test and run
# (Debian 12 / Ubuntu package names).
#
#   bash ops/install-deps.sh            install whatever is missing
#   bash ops/install-deps.sh --check    only list what is missing (exit 1 if any)
#
# Idempotent: each package is checked with dpkg-query first, `apt-get update`
# runs only when something has to be installed, and with everything present
# it changes nothing and says so. Installing needs root (or sudo).

# `make deps` runs this with sh; the rest is bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

PACKAGES=(
    build-essential pkg-config
    libuv1-dev libpq-dev libck-dev libjansson-dev libssl-dev libcmocka-dev
    node-llhttp libwslay-dev libcurl4-openssl-dev libjwt-dev
    postgresql-15 postgresql-client-15
    python3 procps curl
    wrk
    # ops/ tests (issue #9): nginx in front of two instances, promtool (in
    # prometheus, also for the metrics test), yamllint, shellcheck,
    # systemd-analyze (in systemd).
    nginx prometheus yamllint shellcheck systemd
    chromium # the dashboard's browser tests (test/browser, driven by npm playwright-core)
)

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *)
        echo "usage: bash ops/install-deps.sh [--check]" >&2
        exit 2
        ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps.sh: dpkg-query not found; this script supports Debian/Ubuntu only." >&2
    echo "Needed (Debian names): ${PACKAGES[*]}" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

# The integration tests drive the server with Node clients (npm ws, pg,
# eventsource). A machine that already has node and npm (from anywhere) keeps
# them; otherwise Debian's packages are enough.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "all dependencies present"
    exit 0
fi

echo "missing: ${missing[*]}"
if [ $check_only -eq 1 ]; then
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "install-deps.sh: installing needs root; run it as root or install sudo." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
echo "installed: ${missing[*]}"
