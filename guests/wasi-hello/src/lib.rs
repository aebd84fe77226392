//! The smallest `wasi:http` hello: a fixed answer written in one piece. The
//! benchmark runs it on every server, beside `plain-http` (which streams several
//! chunks), so per-request overhead is measured with and without body streaming.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct WasiHello;

const ANSWER: &[u8] = b"Hello, world!\n";

impl Guest for WasiHello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        if let Ok(stream) = body.write() {
            // Written before the response is handed over, so head and body can leave
            // together.
            let _ = stream.blocking_write_and_flush(ANSWER);
        }
        ResponseOutparam::set(response_out, Ok(response));
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(WasiHello);
