#!/usr/bin/env bash
# The main job, end to end: build the host and the example guests, start a host on
# embedded defaults, deploy the examples and the shop over HTTP, call them, place
# orders, restart the host and show that the deploys and the data survived. Prints
# what happened and how to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
shoal_setup

profile="${SHOAL_PROFILE:-debug}"
cargo_profile=()
[ "$profile" = "release" ] && cargo_profile=(--release)
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
guests_dir="${CARGO_TARGET_DIR:-$PWD/guests/target}/wasm32-wasip2/release"
shoal="$target_dir/$profile/shoal"
data_dir="$PWD/.shoal-demo"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; echo; }

step "building the example guests (wasm32-wasip2 components)"
(cd guests && cargo build --release --target wasm32-wasip2)
bash scripts/polyglot.sh "$guests_dir"
ls -l "$guests_dir"/*.wasm

step "building the host ($profile)"
cargo build -p shoal "${cargo_profile[@]}"

start_host() {
    SHOAL_DATA_DIR="$data_dir" SHOAL_LISTEN=127.0.0.1:0 SHOAL_ADMIN_LISTEN=127.0.0.1:0 \
        "$shoal" serve >"$data_dir.out" 2>"$data_dir.log" &
    host_pid=$!
    for _ in $(seq 1 600); do
        if grep -q '^admin API listening on ' "$data_dir.out" 2>/dev/null; then break; fi
        if ! kill -0 "$host_pid" 2>/dev/null; then cat "$data_dir.log"; exit 1; fi
        sleep 0.1
    done
    gateway=$(sed -n 's/^gateway listening on //p' "$data_dir.out")
    admin=$(sed -n 's/^admin API listening on //p' "$data_dir.out")
    export SHOAL_ADMIN_URL="$admin"
    # Serving starts at once; the restore of deployed services finishes a moment later.
    for _ in $(seq 1 600); do
        if curl -sf "$admin/readyz" >/dev/null; then break; fi
        sleep 0.1
    done
    cat "$data_dir.out"
}
stop_host() {
    kill -TERM "$host_pid" 2>/dev/null || true
    wait "$host_pid" 2>/dev/null || true
}
trap stop_host EXIT

step "starting a host (embedded defaults, data in $data_dir)"
rm -rf "$data_dir" "$data_dir.out" "$data_dir.log"
mkdir -p "$data_dir"
start_host
export SHOAL_DATA_DIR="$data_dir"   # lets the CLI find the generated admin token

step "deploying over HTTP"
show "$shoal" deploy "$guests_dir/hello.wasm" --name hello --manifest guests/hello/shoal.toml
token=$(cat "$data_dir/admin-token")
printf '$ curl -X PUT --data-binary @plain_http.wasm %s/v1/services/plain-http\n' "$admin"
curl -sS -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/wasm' \
    --data-binary @"$guests_dir/plain_http.wasm" "$admin/v1/services/plain-http"
echo; echo
show "$shoal" deploy "$guests_dir/faulty.wasm"
show "$shoal" ls

step "calling the services through the gateway ($gateway)"
show curl -sS "$gateway/hello/?name=Shoal"
show curl -sS -X POST --data 'hi there' "$gateway/hello/echo?x=1"
show curl -sS "$gateway/plain-http/any/path"

step "a guest fault ends its own request only"
show curl -sS -w 'HTTP %{http_code}\n' "$gateway/faulty/trap"
show curl -sS "$gateway/hello/?name=still-up"

step "bad input is refused with a reason"
printf '$ curl -X PUT --data-binary "not wasm" %s/v1/services/hello\n' "$admin"
curl -sS -X PUT -H "Authorization: Bearer $token" --data-binary 'not wasm' \
    -w '  HTTP %{http_code}\n' "$admin/v1/services/hello"
printf '$ curl %s/v1/services (no token)\n' "$admin"
curl -sS -w '  HTTP %{http_code}\n' "$admin/v1/services"

step "the shop: inventory, payment, orders and shipping, each with its own data"
for service in inventory payment orders shipping; do
    show "$shoal" deploy "guests/shop/$service" --manifest "guests/shop/$service/shoal.toml"
done
echo "Stock and the payment mode are the operator's: private paths, reached through the admin API."
show curl -sS -w '  HTTP %{http_code}\n' -X PUT --data '{"available": 10}' "$gateway/inventory/stock/widget"
operator() { curl -sS -H "Authorization: Bearer $token" "$@"; }
printf '$ curl -X PUT --data %s %s\n' "'{\"available\": 10}'" "$admin/v1/services/inventory/call/stock/widget"
operator -X PUT --data '{"available": 10}' "$admin/v1/services/inventory/call/stock/widget"; echo
echo "Payment declines: the order fails and its reservation is released."
operator -X PUT --data '{"mode": "fail"}' "$admin/v1/services/payment/call/mode"; echo
show curl -sS -w '  HTTP %{http_code}\n' -X POST --data '{"sku": "widget", "quantity": 1}' "$gateway/orders/"
operator -X PUT --data '{"mode": "ok"}' "$admin/v1/services/payment/call/mode"; echo
echo '$ 14 concurrent orders of one widget each against a stock of 10 (POST $gateway/orders/)'
seq 1 14 | xargs -P 7 -I{} curl -sS -o /dev/null -w '%{http_code}\n' -X POST \
    --data '{"sku": "widget", "quantity": 1}' "$gateway/orders/" | sort | uniq -c |
    sed -e 's/ 201$/ placed (201)/' -e 's/ 409$/ refused: insufficient stock (409)/'
echo
show curl -sS -w '  HTTP %{http_code}\n' -X POST --data '{"sku": "widget", "quantity": -5}' "$gateway/orders/"
sleep 1
echo "Stock after the orders (10 = available + reserved + sold; failed payments released theirs):"
printf '$ curl %s\n' "$admin/v1/services/inventory/call/stock/widget"
operator "$admin/v1/services/inventory/call/stock/widget"; echo
echo "Orders shipped, each once (delivered by order.created events from the outbox):"
show curl -sS "$gateway/shipping/handled"
echo "Event deliveries waiting (each order's order.timeout, due 20 s after it: it compensates"
echo "an order whose request died with the host) and dead letters:"
printf '$ curl -H "Authorization: Bearer …" %s/v1/events\n' "$admin"
curl -sS -H "Authorization: Bearer $token" "$admin/v1/events"
echo

step "a gRPC service: helloworld.Greeter, called by a real gRPC client (grpcio) over h2c"
show "$shoal" deploy "$guests_dir/grpc_greeter.wasm" --name greeter --manifest guests/grpc-greeter/shoal.toml
show python3 tests/grpc/greeter.py "${gateway#http://}" SayHello '{"name": "demo"}'
show python3 tests/grpc/greeter.py "${gateway#http://}" SayHelloStream '{"name": "demo", "count": 3}'
echo "An unknown method and a bad argument are gRPC statuses, not HTTP errors:"
show python3 tests/grpc/greeter.py "${gateway#http://}" SayGoodbye '{"name": "demo"}'
show python3 tests/grpc/greeter.py "${gateway#http://}" SayHello '{"name": ""}'

step "guests in JavaScript, Python and C on the same platform: JavaScript calls Python calls Rust"
show "$shoal" deploy "$guests_dir/python_greeter.wasm" --name python-greeter --manifest guests/python-greeter/shoal.toml
show "$shoal" deploy "$guests_dir/js_greeter.wasm" --name js-greeter --manifest guests/js-greeter/shoal.toml
show curl -sS -H 'x-request-id: demo-chain' "$gateway/js-greeter/"
show "$shoal" deploy "$guests_dir/c_greeter.wasm" --name c-greeter --manifest guests/c-greeter/shoal.toml
show curl -sS "$gateway/c-greeter/"

step "a portable component on the standard wasi:keyvalue (no Shoal crate) keeps its own data"
show "$shoal" deploy "$guests_dir/keyvalue.wasm" --name notes
show curl -sS -X PUT --data 'remember the milk' "$gateway/notes/kv/todo"
show curl -sS "$gateway/notes/kv/todo"
show curl -sS -X POST "$gateway/notes/incr/visits?by=5"

step "an operator's view: a secret, a summary, who uses the host, the log, the dashboard"
echo '$ printf demo-secret-value-42 | shoal secret set demo-key --service notes'
printf 'demo-secret-value-42' | "$shoal" secret set demo-key --service notes
show "$shoal" secret ls
show "$shoal" show hello
show "$shoal" top --iterations 1
show "$shoal" logs hello --tail 3
echo "The dashboard: open $admin/ and log in with the token in $data_dir/admin-token."

step "a failed request recorded, then replayed against a fix in a sandbox (nothing written, called or published)"
orders_manifest() {  # orders' manifest as version $1, and what follows
    sed -e "s/^version = \"1.0.0\"/version = \"$1\"/" guests/shop/orders/shoal.toml
    printf '%b' "${2:-}"
}
orders_manifest 1.0.1 '\n[debug]\nrecord = "failed"\n' >"$data_dir.orders.toml"
echo "A bug ships: orders 1.0.1 panics after placing an order. Its failed requests are recorded."
show "$shoal" deploy "$guests_dir/orders_broken.wasm" --name orders --manifest "$data_dir.orders.toml"
operator -X PUT --data '{"available": 5}' "$admin/v1/services/inventory/call/stock/gadget"; echo
show curl -sS -w '  HTTP %{http_code}\n' -X POST --data '{"sku": "gadget", "quantity": 2}' "$gateway/orders/"
for _ in $(seq 1 100); do
    "$shoal" recordings orders | grep -q ' 500 ' && break
    sleep 0.1
done
show "$shoal" recordings orders
recording=$("$shoal" recordings orders | awk '$4 == 500 {print $1; exit}')
echo "The fix, deployed as 1.0.2; the recorded request replayed against it, then against 1.0.1:"
orders_manifest 1.0.2 >"$data_dir.orders.toml"
show "$shoal" deploy "$guests_dir/orders.wasm" --name orders --manifest "$data_dir.orders.toml"
show "$shoal" replay "$recording" --to 1.0.2
show "$shoal" replay "$recording"

step "restarting the host: deploys are persisted"
stop_host
start_host
show "$shoal" ls
show curl -sS "$gateway/hello/?name=again"
printf '$ curl %s\n' "$admin/v1/services/inventory/call/stock/widget"
operator "$admin/v1/services/inventory/call/stock/widget"; echo
show curl -sS "$gateway/notes/kv/todo"

step "guest log lines are tagged with service, version and request id"
grep 'guest' "$data_dir.log" | tail -n 3 || true

stop_host
trap - EXIT
cat <<EOT

Done. What to try next:
  $shoal serve --data-dir $data_dir          # restart it; the services come back
  $shoal deploy guests/hello --manifest guests/hello/shoal.toml   # build + deploy
  $shoal ls / $shoal rm NAME                 # with SHOAL_DATA_DIR=$data_dir for the token
  $shoal show NAME / top / logs NAME -f      # an operator's view; the dashboard is at the admin address
  $shoal --help                              # every command and flag
The host log of this run is in $data_dir.log.
EOT
