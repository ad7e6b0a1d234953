#!/bin/sh
# pg.sh: a throwaway PostgreSQL cluster for tests and the demo.
#
#   sh test/pg.sh start DIR PORT   init DIR/data (if needed), start it on
#                                  127.0.0.1:PORT with its socket in DIR, wait
#                                  until it accepts connections, print its URL
#   sh test/pg.sh stop DIR         stop it (fast mode); a no-op if not running
#   sh test/pg.sh freeport         print a free TCP port on 127.0.0.1
#
# PostgreSQL refuses to run as root, so as root the server runs as the
# `postgres` user (runuser) and DIR is handed to that user; as anyone else it
# runs as the caller. The binaries come from the newest
# /usr/lib/postgresql/*/bin unless PGBIN names a directory.
#
# The settings trade durability for speed (fsync, synchronous_commit and
# full_page_writes off): never point this at data you want to keep.
set -eu

prog=pg.sh

die() {
    echo "$prog: $*" >&2
    exit 1
}

find_pgbin() {
    if [ -n "${PGBIN:-}" ]; then
        [ -x "$PGBIN/pg_ctl" ] || die "PGBIN=$PGBIN has no pg_ctl"
        return
    fi
    # Sort on the version directory, numerically, so 9.6 < 15 < 16.
    PGBIN=$(for d in /usr/lib/postgresql/*/bin; do [ -d "$d" ] && echo "$d"; done |
        sort -t/ -k5,5n | tail -n 1)
    if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ] || [ ! -x "$PGBIN/pg_ctl" ]; then
        die "PostgreSQL server binaries not found (looked for /usr/lib/postgresql/*/bin/initdb)." \
            "Install them with 'sh ops/install-deps.sh' (Debian package postgresql-15)," \
            "or set PGBIN to the directory holding initdb and pg_ctl."
    fi
}

is_root() {
    [ "$(id -u)" -eq 0 ]
}

# Runs a command as the user the server runs as, from a directory that user
# can enter (initdb and pg_ctl complain about an unreadable working directory).
as_pg() {
    if is_root; then
        if command -v runuser >/dev/null 2>&1; then
            (cd "$dir" && runuser -u postgres -- "$@")
        else
            # su needs one command string; quote each argument for sh.
            cmd=""
            for a in "$@"; do
                cmd="$cmd '$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'"
            done
            (cd "$dir" && su -s /bin/sh postgres -c "$cmd")
        fi
    else
        (cd "$dir" && "$@")
    fi
}

abs_dir() {
    (cd "$1" && pwd)
}

cmd_start() {
    [ $# -eq 2 ] || die "usage: sh test/pg.sh start DIR PORT"
    port=$2
    case $port in
        '' | *[!0-9]*) die "PORT must be a number, got '$port'" ;;
    esac
    find_pgbin
    mkdir -p "$1"
    dir=$(abs_dir "$1")
    case $dir in
        *"'"* | *' '*) die "DIR must not contain quotes or spaces: $dir" ;;
    esac
    # The Unix socket path (DIR/.s.PGSQL.PORT) must fit in sun_path.
    sock="$dir/.s.PGSQL.$port"
    [ ${#sock} -le 100 ] || die "DIR is too long for a Unix socket path: $sock"

    if is_root; then
        id postgres >/dev/null 2>&1 ||
            die "running as root, but there is no 'postgres' user to run the server" \
                "(it comes with the postgresql-15 package)"
        chown postgres "$dir"
        as_pg test -w "$dir" ||
            die "user postgres cannot write $dir (are its parent directories searchable?)"
    fi

    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        # Already running (a second start): report where it listens.
        running_port=$(sed -n 4p "$dir/data/postmaster.pid")
        echo "$prog: already running in $dir on port $running_port" >&2
        echo "postgresql://postgres@127.0.0.1:$running_port/postgres"
        return 0
    fi

    if [ ! -f "$dir/data/PG_VERSION" ]; then
        if ! as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C \
            --no-sync >"$dir/initdb.log" 2>&1; then
            cat "$dir/initdb.log" >&2
            die "initdb failed (log above, also in $dir/initdb.log)"
        fi
    fi

    # pg_ctl hands these to sh -c: keep them on one line, quote the path.
    opts="-p $port -k '$dir' -c listen_addresses=127.0.0.1"
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    opts="$opts -c max_connections=300"
    if ! as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "$opts" start >/dev/null; then
        tail -n 20 "$dir/postgres.log" >&2 2>/dev/null || true
        die "PostgreSQL did not start on port $port (log above, also in $dir/postgres.log)"
    fi

    # pg_ctl -w already waited for the server; this also checks the TCP port.
    i=0
    until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
        i=$((i + 1))
        [ $i -lt 100 ] || die "PostgreSQL started but 127.0.0.1:$port does not answer"
        sleep 0.1
    done
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

cmd_stop() {
    [ $# -eq 1 ] || die "usage: sh test/pg.sh stop DIR"
    [ -d "$1/data" ] || return 0
    dir=$(abs_dir "$1")
    [ -f "$dir/data/postmaster.pid" ] || return 0
    find_pgbin
    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    fi
}

# A port is taken if any socket, in any state, uses it locally: /proc/net/tcp
# lists it in hex after the local address.
port_in_use() {
    hex=$(printf ':%04X ' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '{ print $2 " " }' | grep -q "$hex"
}

cmd_freeport() {
    if command -v python3 >/dev/null 2>&1; then
        # Let the kernel pick: bind port 0 and report what we got.
        if python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null; then
            return 0
        fi
    fi
    [ -r /proc/net/tcp ] || die "cannot find a free port: no python3 and no /proc/net/tcp"
    # Random ports below the usual ephemeral range (32768-60999), so an
    # outgoing connection is unlikely to take it before the server binds it.
    tries=0
    while [ $tries -lt 200 ]; do
        r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
        port=$((10000 + r % 22000))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
        tries=$((tries + 1))
    done
    die "cannot find a free port"
}

[ $# -ge 1 ] || die "usage: sh test/pg.sh start DIR PORT | stop DIR | freeport"
sub=$1
shift
case $sub in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    freeport) cmd_freeport "$@" ;;
    *) die "unknown command '$sub' (start DIR PORT | stop DIR | freeport)" ;;
esac
