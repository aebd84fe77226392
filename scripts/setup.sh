#!/usr/bin/env bash
# Install what building and testing Shoal needs. Idempotent; safe to run again.
# Sourced by demo.sh and test.sh, or run on its own.
set -euo pipefail

# Install Debian packages (none: do nothing), with sudo unless root.
apt_install() {
    [ $# -gt 0 ] || return 0
    echo "== apt-get install $*"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

shoal_setup() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
        return 1
    fi
    # Guests compile to WebAssembly components.
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "== rustup target add wasm32-wasip2"
        rustup target add wasm32-wasip2
    fi
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
            rustup component add "$component"
        fi
    done
    # curl drives the demo and the TLS tests; wrk the benchmark (and its smoke run
    # in the tests); the end-to-end tests scrape the host with a real Prometheus
    # server.
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    # h2load drives the gRPC and HTTP/2 rows of the benchmark (and its smoke run).
    command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    # openssl makes the TLS tests' certificates.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # The dashboard's test drives a real headless browser over WebDriver.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    # The etcd client's gRPC code is generated from etcd's .proto files at build time.
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    [ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
    apt_install "${missing[@]}"
    # Real gRPC and HTTP/2 clients for the tests and the demo: grpcio (and its protoc
    # for Python stubs), python-hyper's h2 for what curl cannot send.
    if ! python3 -c 'import grpc, grpc_tools, h2; assert grpc.__version__ == "1.76.0"' 2>/dev/null; then
        echo "== pip install grpcio grpcio-tools h2"
        python3 -m pip install --quiet --disable-pip-version-check \
            grpcio==1.76.0 grpcio-tools==1.76.0 h2==4.3.0
    fi
}

# The component tooling of the other guest languages (scripts/polyglot.sh).
shoal_polyglot_setup() {
    if ! command -v componentize-py >/dev/null 2>&1 ||
        [ "$(componentize-py --version 2>/dev/null | awk '{print $2}')" != "0.25.1" ]; then
        echo "== pip install componentize-py==0.25.1"
        python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
    fi
    # Node for JavaScript; clang, wasm-ld, wasi-libc and compiler-rt for wasm32 C.
    local missing=()
    command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
    command -v clang-16 >/dev/null 2>&1 || missing+=(clang-16)
    command -v wasm-ld-16 >/dev/null 2>&1 || missing+=(lld-16)
    [ -e /usr/lib/wasm32-wasi/libc.a ] || missing+=(wasi-libc)
    [ -e /usr/lib/llvm-16/lib/clang/16/lib/wasi/libclang_rt.builtins-wasm32.a ] ||
        missing+=(libclang-rt-16-dev-wasm32)
    apt_install "${missing[@]}"
}

# `wit-bindgen` (C bindings) and `wasm-tools` (core module to component), built once
# into `$1/bin` with the features guests/languages/c.md names (so its steps find them).
shoal_component_tools() {
    local root="$1"
    if [ "$("$root/bin/wit-bindgen" --version 2>/dev/null | awk '{print $2}')" != "0.63.0" ]; then
        echo "== cargo install wit-bindgen-cli 0.63.0 (C generator only)"
        cargo install --quiet --locked --root "$root" wit-bindgen-cli@0.63.0 \
            --no-default-features --features c
    fi
    if [ "$("$root/bin/wasm-tools" --version 2>/dev/null | awk '{print $2}')" != "1.254.2" ]; then
        echo "== cargo install wasm-tools 1.254.2 (component support only)"
        cargo install --quiet --locked --root "$root" wasm-tools@1.254.2 \
            --no-default-features --features component
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    shoal_setup
fi
