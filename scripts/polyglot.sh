#!/usr/bin/env bash
# Build the guests written in other languages into components, each with its own
# language's component tooling: Python (componentize-py), JavaScript
# (componentize-js, the engine behind `jco componentize`; jco 1.35's own wrapper
# cannot open a WIT folder on Node here: "failed to get path metadata"), and C
# (`wit-bindgen c`, clang for wasm32-wasi with wasi-libc, `wasm-tools component new`). Writes `<name>.wasm` into the directory given (default: beside the
# Rust guests), and rebuilds a guest only when its sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
shoal_polyglot_setup

out="${1:-${CARGO_TARGET_DIR:-$PWD/guests/target}/wasm32-wasip2/release}"
work="${CARGO_TARGET_DIR:-$PWD/target}/polyglot"
mkdir -p "$out" "$work"
out="$(cd "$out" && pwd)"
work="$(cd "$work" && pwd)"

# Whether `$1` is missing or older than any of the other paths (files or folders).
stale() {
    local target="$1"
    shift
    [ -e "$target" ] || return 0
    [ -n "$(find "$@" -newer "$target" -type f -not -path '*/node_modules/*' -print -quit)" ]
}

# A WIT folder for a toolchain whose runtime exports its own `wasi:http` 0.2.x:
# the guest's world, `shoal:platform`, and the WASI packages both at the version
# Shoal's WIT names and at the toolchain's (the same interfaces: WASI 0.2 releases
# differ in their version number only, and the host runs every 0.2.x).
assemble_wit() {
    local guest="$1" version="$2" into="$3"
    rm -rf "$into"
    mkdir -p "$into/deps/shoal"
    cp "$guest"/wit/*.wit "$into/"
    cp wit/*.wit "$into/deps/shoal/"
    for package in io clocks random cli filesystem sockets http; do
        cp -r "wit/deps/$package" "$into/deps/$package"
        mkdir -p "$into/deps/$package-$version"
        for file in "wit/deps/$package"/*.wit; do
            sed -e "s/@0\.2\.12/@$version/g" -e "s/version = 0\.2\.12/version = $version/g" \
                "$file" >"$into/deps/$package-$version/$(basename "$file")"
        done
    done
}

echo "== python-greeter (componentize-py)"
if stale "$out/python_greeter.wasm" guests/python-greeter wit; then
    (cd guests/python-greeter &&
        componentize-py -d ../../wit -w shoal:platform/service@0.1.0 componentize app \
            -o "$out/python_greeter.wasm")
fi

echo "== js-greeter (componentize-js)"
if stale "$out/js_greeter.wasm" guests/js-greeter wit; then
    (cd guests/js-greeter && npm ci --no-audit --no-fund --loglevel=error)
    # StarlingMonkey, the JavaScript runtime componentize-js embeds, exports
    # wasi:http 0.2.10.
    assemble_wit guests/js-greeter 0.2.10 "$work/js-greeter-wit"
    (cd guests/js-greeter &&
        node_modules/.bin/componentize-js app.js --wit "$work/js-greeter-wit" \
            --world-name shoal-examples:js-greeter/greeter -o "$out/js_greeter.wasm")
fi
echo "== the shop's payment in Python and inventory in JavaScript"
if stale "$out/payment_py.wasm" guests/shop-polyglot/payment-py wit; then
    (cd guests/shop-polyglot/payment-py &&
        componentize-py -d ../../../wit -w shoal:platform/service@0.1.0 componentize app \
            -o "$out/payment_py.wasm")
fi
if stale "$out/inventory_js.wasm" guests/shop-polyglot/inventory-js wit; then
    (cd guests/shop-polyglot/inventory-js && npm ci --no-audit --no-fund --loglevel=error)
    assemble_wit guests/shop-polyglot/inventory-js 0.2.10 "$work/inventory-js-wit"
    (cd guests/shop-polyglot/inventory-js &&
        node_modules/.bin/componentize-js app.js --wit "$work/inventory-js-wit" \
            --world-name shoal-examples:inventory-js/inventory -o "$out/inventory_js.wasm")
fi
echo "== c-greeter (wit-bindgen c, clang, wasm-tools)"
if stale "$out/c_greeter.wasm" guests/c-greeter wit; then
    # Cargo's own root, where guests/languages/c.md installs them too.
    tools="${CARGO_HOME:-$HOME/.cargo}"
    shoal_component_tools "$tools"
    build="$work/c-greeter"
    rm -rf "$build"
    mkdir -p "$build"
    "$tools/bin/wit-bindgen" c wit --world shoal:platform/service@0.1.0 --out-dir "$build"
    clang-16 --target=wasm32-wasi -O2 -Wall -Wextra -Werror -mexec-model=reactor \
        -fuse-ld=/usr/bin/wasm-ld-16 -I"$build" \
        guests/c-greeter/greeter.c "$build/service.c" "$build/service_component_type.o" \
        -o "$build/core.wasm"
    # wasi-libc speaks WASI preview 1; the adapter turns that into WASI 0.2 imports
    # (the one `jco` ships, installed with componentize-js above).
    adapter=guests/js-greeter/node_modules/@bytecodealliance/jco/lib/wasi_snapshot_preview1.reactor.wasm
    [ -e "$adapter" ] || (cd guests/js-greeter && npm ci --no-audit --no-fund --loglevel=error)
    "$tools/bin/wasm-tools" component new "$build/core.wasm" \
        --adapt "wasi_snapshot_preview1=$adapter" -o "$out/c_greeter.wasm"
fi
ls -l "$out"/python_greeter.wasm "$out"/js_greeter.wasm "$out"/c_greeter.wasm \
    "$out"/payment_py.wasm "$out"/inventory_js.wasm
