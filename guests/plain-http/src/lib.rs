//! A plain `wasi:http/proxy` component built only on the standard WASI bindings.
//! It streams its answer in several chunks to show that bodies stream through.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct PlainHttp;

impl Guest for PlainHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let status = if path.starts_with("/missing") {
            404
        } else {
            200
        };
        let _ = response.set_status_code(status);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            for part in ["plain wasi:http here\n", "path: ", path.as_str(), "\n"] {
                if stream.blocking_write_and_flush(part.as_bytes()).is_err() {
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(PlainHttp);
