"""`payment`, in Python: the shop's payment service with the same HTTP contract as the
Rust one (guests/shop/payment), so either can be deployed as `payment`.

- `PUT /mode` `{"mode": "ok" | "fail" | "hang"}`.
- `POST /charges` `{"order", "amount"}`: 201 `{"charge"}` (idempotent by order); 402 in
  `fail` mode; in `hang` mode it never answers in time; 409 when the order was already
  refunded.
- `POST /charges/{order}/refund`: 200, idempotent. A refund of a charge not (yet) made
  leaves a tombstone, so a charge that arrives late is refused.
- `GET /charges/{order}`: the charge or 404.

Build: componentize-py -d ../../../wit -w shoal:platform/service@0.1.0 componentize app -o payment_py.wasm
"""

import json
import random
import time

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import log, store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# Bodies this service reads: a charge or a mode is a few dozen bytes.
MAX_BODY = 16 * 1024


def answer(response_out: ResponseOutparam, status: int, value: object) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    stream.blocking_write_and_flush(json.dumps(value).encode())
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


def read_body(request: IncomingRequest) -> bytes | None:
    """The request's body, or None when it is larger than MAX_BODY."""
    incoming = request.consume()
    stream = incoming.stream()
    data = b""
    while True:
        try:
            chunk = stream.blocking_read(4096)
        except Err:
            break  # the end of the body
        data += chunk
        if len(data) > MAX_BODY:
            return None
    stream.__exit__(None, None, None)
    return data


def parse(body: bytes | None, *fields: str) -> dict | None:
    try:
        value = json.loads(body or b"")
    except ValueError:
        return None
    if not isinstance(value, dict) or any(field not in value for field in fields):
        return None
    return value


def backoff(attempt):
    """Wait a random time below a ceiling that doubles per attempt (1 ms up to 50 ms),
    so transactions that conflicted do not all run again at once."""
    ceiling_ms = min(2 ** min(attempt, 6), 50)
    time.sleep(random.uniform(0, ceiling_ms) / 1000)


def transaction(work):
    """Run `work(tx)` in a store transaction, retried on conflict after a backoff."""
    for attempt in range(20):
        tx = store.Transaction()
        try:
            result = work(tx)
            tx.commit()
            return result
        except Err as error:
            if not isinstance(error.value, store.StoreError_Conflict):
                raise
        backoff(attempt)
    raise RuntimeError("the transaction kept conflicting")


def record_of(tx: store.Transaction, order: str) -> dict | None:
    stored = tx.get(f"charges/{order}")
    return json.loads(stored) if stored else None


def mode() -> str:
    stored = store.get("mode")
    return stored.decode() if stored else "ok"


def set_mode(body: bytes | None):
    wanted = parse(body, "mode")
    if wanted is None or wanted["mode"] not in ("ok", "fail", "hang"):
        return 400, {"error": 'expected {"mode": "ok" | "fail" | "hang"}'}
    store.set("mode", wanted["mode"].encode())
    return 200, {"mode": wanted["mode"]}


# The largest amount the Rust payment takes too (an unsigned 64-bit count).
MAX_AMOUNT = 2**64 - 1


def valid_amount(amount) -> bool:
    """A whole, non-negative amount: JSON `true` is not 1, and no charge is negative."""
    return type(amount) is int and 0 <= amount <= MAX_AMOUNT


def charge(body: bytes | None):
    wanted = parse(body, "order", "amount")
    if wanted is None or not isinstance(wanted["order"], str) or not valid_amount(wanted["amount"]):
        return 400, {"error": 'expected {"order", "amount"} with a whole amount of at least 0'}
    current = mode()
    if current == "fail":
        return 402, {"error": "payment declined"}
    if current == "hang":
        # Longer than any caller waits: the caller's deadline ends it.
        time.sleep(120)
        return 504, {"error": "hung"}
    order = wanted["order"]

    def work(tx):
        record = record_of(tx, order)
        if record is not None:
            return not record["refunded"]
        tx.set(f"charges/{order}", json.dumps({"amount": wanted["amount"], "refunded": False}).encode())
        return True

    if transaction(work):
        log.write(log.Level.INFO, "charged", [("order", order)])
        return 201, {"charge": f"charge-{order}"}
    return 409, {"error": "the order was refunded"}


def refund(order: str):
    def work(tx):
        record = record_of(tx, order) or {"amount": 0, "refunded": True}
        record["refunded"] = True
        tx.set(f"charges/{order}", json.dumps(record).encode())
        return record["amount"]

    return 200, {"order": order, "refunded": transaction(work)}


def show(order: str):
    stored = store.get(f"charges/{order}")
    if stored is None:
        return 404, {"error": "no such charge"}
    return 200, json.loads(stored)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        if isinstance(method, Method_Other):
            name = method.value.upper()
        else:
            name = type(method).__name__.removeprefix("Method_").upper()
        path = (request.path_with_query() or "/").split("?")[0]
        parts = [part for part in path.strip("/").split("/") if part]
        try:
            if name == "PUT" and parts == ["mode"]:
                status, value = set_mode(read_body(request))
            elif name == "POST" and parts == ["charges"]:
                status, value = charge(read_body(request))
            elif name == "POST" and len(parts) == 3 and parts[0] == "charges" and parts[2] == "refund":
                status, value = refund(parts[1])
            elif name == "GET" and len(parts) == 2 and parts[0] == "charges":
                status, value = show(parts[1])
            else:
                status, value = 404, {"error": "no such route"}
        except Err as error:
            status, value = 503, {"error": f"store: {error.value!r}"}
        answer(response_out, status, value)
