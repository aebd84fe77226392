#!/usr/bin/env bash
# Set up and run every test: formatting, lints, unit tests, the SDK's tests, and the
# end-to-end tests that drive the real `shoal` binary with real components.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
shoal_setup
source scripts/servers.sh
trap stop_servers EXIT

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
guests_target="${CARGO_TARGET_DIR:-$PWD/guests/target}"
export SHOAL_GUESTS_DIR="$guests_target/wasm32-wasip2/release"

echo "== guests (wasm32-wasip2)"
(cd guests && cargo build --release --target wasm32-wasip2)
echo "== guests in Python and JavaScript"
bash scripts/polyglot.sh "$SHOAL_GUESTS_DIR"

echo "== formatting"
cargo fmt --all --check
(cd guests && cargo fmt --all --check)
cargo fmt --manifest-path sdk/Cargo.toml --check
cargo fmt --manifest-path sdk/grpc-wire/Cargo.toml --check

echo "== layering (no import cycles, no upward imports)"
python3 scripts/layers.py

echo "== lints"
cargo clippy --all-targets -- -D warnings
(cd guests && cargo clippy --release --target wasm32-wasip2 -- -D warnings)
cargo clippy --manifest-path sdk/grpc-wire/Cargo.toml --all-targets --target-dir "$guests_target" -- -D warnings

echo "== host unit tests"
cargo test -p shoal -p shoal-api

echo "== SDK tests"
cargo test --manifest-path sdk/Cargo.toml --all-features --target-dir "$guests_target"
cargo test --manifest-path sdk/grpc-wire/Cargo.toml --target-dir "$guests_target"

cargo build -p shoal

echo "== servers the tests use"
start_postgres
start_nats
start_etcd

echo "== benchmark smoke run (tiny sizes, figures meaningless)"
python3 scripts/bench.py --shoal "$target_dir/debug/shoal" --guests "$SHOAL_GUESTS_DIR" \
    --out "$target_dir/bench-quick.md" --quick

echo "== end-to-end tests"
export SHOAL_ARTIFACTS_DIR="$target_dir/artifacts"
SHOAL_BIN="$target_dir/debug/shoal" cargo test -p shoal-tests
echo "== artifacts: $SHOAL_ARTIFACTS_DIR (the dashboard's screenshot: dashboard.png)"
