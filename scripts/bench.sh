#!/usr/bin/env bash
# Benchmarks: builds the release host and the guests, then runs every bench and writes
# the table to BENCHMARKS.md. `--quick` runs each step with a tiny size (used by CI so
# the script cannot rot); its figures mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
shoal_setup
source scripts/servers.sh
trap stop_servers EXIT

quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
profile=release
[ -n "$quick" ] && profile=debug
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
guests_dir="${CARGO_TARGET_DIR:-$PWD/guests/target}/wasm32-wasip2/release"

if [ -z "$quick" ] && ! wasmtime --version 2>/dev/null | grep -q '48\.0\.8'; then
    # The baseline: wasmtime serve of the same wasmtime line (the newest that builds
    # on this toolchain). Takes a while the first time.
    cargo install --locked wasmtime-cli@48.0.8
fi
# hey drives a fixed request rate for the latency-at-half-load rows.
if [ -z "$quick" ] && ! command -v hey >/dev/null 2>&1; then
    apt_install hey
fi

(cd guests && cargo build --release --target wasm32-wasip2)
# The JavaScript and Python greeters (big components for the deploy benchmark).
bash scripts/polyglot.sh "$guests_dir"

# A large component for the deploy benchmark: the Python hello (componentize-py).
large=""
if [ -z "$quick" ] && ! command -v componentize-py >/dev/null 2>&1; then
    python3 -m pip install --quiet componentize-py==0.25.1
fi
if command -v componentize-py >/dev/null 2>&1; then
    large="$target_dir/python_hello.wasm"
    (cd guests/python-hello && componentize-py -d ../../wit -w wasi:http/proxy@0.2.12 componentize app -o "$large")
fi

if [ "$profile" = release ]; then
    cargo build --release -p shoal
else
    cargo build -p shoal
fi

# The gRPC rows' native ceiling: helloworld.Greeter in tonic (a package of its own).
if [ -z "$quick" ]; then
    cargo build --release --manifest-path tests/grpc/tonic-greeter/Cargo.toml --target-dir "$target_dir"
    export SHOAL_BENCH_TONIC="$target_dir/release/tonic-greeter"
fi

# The store backends' rows compare against a real PostgreSQL.
start_postgres
start_nats
start_etcd

out=BENCHMARKS.md
[ -n "$quick" ] && out="$target_dir/bench-quick.md"
python3 scripts/bench.py --shoal "$target_dir/$profile/shoal" --guests "$guests_dir" --out "$out" \
    ${large:+--large "$large"} $quick
