"""`{{name}}`: a Shoal service in Python. `GET /` greets with the manifest's `greeting`."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import config, log, metrics
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


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
        path = (request.path_with_query() or "/").split("?")[0]
        if path != "/":
            answer(response_out, 404, f"no route for {path}\n")
            return
        greeting = config.get("greeting") or "Hello"
        # A metric the host exports as shoal_guest_{{metric}}:greetings_total.
        metrics.counter_add("greetings_total", [], 1.0)
        log.write(log.Level.INFO, "greeted", [("greeting", greeting)])
        answer(response_out, 200, f"{greeting} from {{name}}!\n")
