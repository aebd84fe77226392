"""A plain wasi:http service in Python (componentize-py): no Shoal SDK needed.

Build: componentize-py -d ../../wit -w wasi:http/proxy@0.2.12 componentize app -o python_hello.wasm
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(f"Hello from Python, path {path}\n".encode())
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)

