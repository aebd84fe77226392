"""`python-greeter`: a Shoal service in Python (componentize-py) on the same
`shoal:platform` imports as the Rust SDK: config, log, store and events, metrics,
tracing, and a call to another service through the resilient caller.

`GET /` answers, one `key: value` a line:
- `greeting`: the manifest's `greeting` config (default `Hello`);
- `visits`: a counter in the service's own store, incremented in a transaction
  that also publishes `greeting.sent` (the outbox: both or neither);
- `downstream`: the status and body of `GET` at the service named by the config
  `downstream` (default `hello`), path `downstream_path` (default `/`), called
  through the caller (which passes on the request id and trace);
- `trace`: the current trace id.

Build: componentize-py -d ../../wit -w shoal:platform/service@0.1.0 componentize app -o python_greeter.wasm
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import caller, config, events, log, metrics, store, tracing
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def count_visit() -> int:
    """Add one to `visits` and publish it, in one transaction; retried on conflict."""
    for _ in range(20):
        tx = store.Transaction()
        try:
            current = tx.get("visits")
            visits = int(current.decode()) + 1 if current else 1
            tx.set("visits", str(visits).encode())
            events.publish_in(tx, "greeting.sent", str(visits).encode())
            tx.commit()
            return visits
        except Err as error:
            if not isinstance(error.value, store.StoreError_Conflict):
                raise
    raise RuntimeError("the visit counter kept conflicting")


def call_downstream() -> str:
    target = config.get("downstream") or "hello"
    path = config.get("downstream_path") or "/"
    try:
        response = caller.call(
            target,
            caller.Request("GET", path, [], b""),
            caller.CallOptions(None, None, True),
        )
        return f"{response.status} {response.body.decode(errors='replace').strip()}"
    except Err as error:
        return f"failed {type(error.value).__name__}"


def answer(response_out: ResponseOutparam, status: int, text: str) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    data = text.encode()
    for start in range(0, len(data), 4096):
        stream.blocking_write_and_flush(data[start : start + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        if path.split("?")[0] != "/":
            answer(response_out, 404, "no such route\n")
            return
        span = tracing.start_span("greet")
        span.set_attribute("language", "python")
        greeting = config.get("greeting") or "Hello"
        visits = count_visit()
        # The downstream answer is several lines: indent it under its key.
        downstream = call_downstream().replace("\n", "\n  ")
        metrics.counter_add("greetings_total", [("language", "python")], 1.0)
        log.write(log.Level.INFO, "greeted", [("visits", str(visits))])
        trace = tracing.trace_id()
        span.end()
        answer(
            response_out,
            200,
            f"greeting: {greeting}\nvisits: {visits}\ndownstream: {downstream}\ntrace: {trace}\n",
        )
