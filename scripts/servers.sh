#!/usr/bin/env bash
# The real servers the tests use (PostgreSQL; NATS; etcd), each started once per test run on
# a free local port with its data in a temporary directory, and stopped when the run
# ends. Sourced by test.sh after setup.sh; `start_postgres` exports the URL the
# end-to-end tests connect to.

# PIDs, PostgreSQL clusters and directories to clean up when the sourcing script
# exits.
shoal_servers_pids=()
shoal_servers_postgres=()
shoal_servers_dirs=()

stop_servers() {
    local pid cluster dir
    # PostgreSQL runs under runuser as another user: stop it through pg_ctl (fast
    # shutdown), then wait for what was started in the background.
    for cluster in "${shoal_servers_postgres[@]}"; do
        as_postgres "${cluster%%|*}/pg_ctl" stop -m fast -D "${cluster#*|}" >/dev/null 2>&1 || true
    done
    for pid in "${shoal_servers_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${shoal_servers_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for dir in "${shoal_servers_dirs[@]}"; do
        rm -rf "$dir"
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Run a command as the `postgres` user when root (PostgreSQL refuses to run as root).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Start PostgreSQL (installing Debian's package if needed) and export
# SHOAL_TEST_POSTGRES_URL, a superuser URL the tests make their databases with.
start_postgres() {
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
        apt_install postgresql postgresql-client
        bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    fi
    local dir port
    dir="$(mktemp -d /tmp/shoal-postgres-XXXXXX)"
    shoal_servers_dirs+=("$dir")
    [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }
    port="$(free_port)"
    as_postgres "$bin/postgres" -D "$dir/data" -c listen_addresses=127.0.0.1 -p "$port" \
        -k "$dir" -c max_connections=400 -c fsync=on >"$dir/postgres.log" 2>&1 &
    shoal_servers_pids+=($!)
    shoal_servers_postgres+=("$bin|$dir/data")
    local tries=0
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            echo "error: PostgreSQL did not start" >&2
            cat "$dir/postgres.log" >&2
            return 1
        fi
        sleep 0.1
    done
    export SHOAL_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export SHOAL_TEST_POSTGRES_BIN="$bin"
    echo "== PostgreSQL on 127.0.0.1:$port ($dir)"
}

# Start NATS with JetStream (installing Debian's package if needed) and export
# SHOAL_TEST_NATS_URL; each test host uses a namespace of its own on it.
start_nats() {
    local bin
    bin="$(command -v nats-server || true)"
    if [ -z "$bin" ]; then
        apt_install nats-server
        bin="$(command -v nats-server)"
    fi
    local dir port monitor
    dir="$(mktemp -d /tmp/shoal-nats-XXXXXX)"
    shoal_servers_dirs+=("$dir")
    port="$(free_port)"
    monitor="$(free_port)"
    "$bin" -a 127.0.0.1 -p "$port" -m "$monitor" -js -sd "$dir/jetstream" >"$dir/nats.log" 2>&1 &
    shoal_servers_pids+=($!)
    local tries=0
    until curl -fsS "http://127.0.0.1:$monitor/healthz?js-enabled-only=true" >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            echo "error: NATS did not start" >&2
            cat "$dir/nats.log" >&2
            return 1
        fi
        sleep 0.1
    done
    export SHOAL_TEST_NATS_URL="nats://127.0.0.1:$port"
    export SHOAL_TEST_NATS_BIN="$bin"
    echo "== NATS on 127.0.0.1:$port ($dir)"
}

# Start a single-member etcd (installing Debian's package if needed) and export
# SHOAL_TEST_ETCD_URL; each test cluster uses a key prefix of its own on it.
start_etcd() {
    local bin
    bin="$(command -v etcd || true)"
    if [ -z "$bin" ]; then
        apt_install etcd-server
        bin="$(command -v etcd)"
    fi
    local dir port peer
    dir="$(mktemp -d /tmp/shoal-etcd-XXXXXX)"
    shoal_servers_dirs+=("$dir")
    port="$(free_port)"
    peer="$(free_port)"
    "$bin" --name shoal-test --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "shoal-test=http://127.0.0.1:$peer" >"$dir/etcd.log" 2>&1 &
    shoal_servers_pids+=($!)
    local tries=0
    until curl -fsS "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '"true"'; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            echo "error: etcd did not start" >&2
            cat "$dir/etcd.log" >&2
            return 1
        fi
        sleep 0.1
    done
    export SHOAL_TEST_ETCD_URL="http://127.0.0.1:$port"
    export SHOAL_TEST_ETCD_BIN="$bin"
    echo "== etcd on 127.0.0.1:$port ($dir)"
}
