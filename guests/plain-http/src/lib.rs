//! A plain `wasi:http/proxy` component built only on the standard WASI bindings.
//!
//! - Any path: streams a small answer back in several chunks.
//! - `/proxy?url=http://host/path`: makes an ordinary outgoing `wasi:http` request and
//!   answers with its status and body (or the error code). On Shoal, requests to
//!   `http://<service>/` go through the host's resilient caller. An incoming
//!   `x-pass-<name>` header is sent on as `<name>`.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct PlainHttp;

impl Guest for PlainHttp {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, parts) = if let Some(query) = path.strip_prefix("/proxy?url=") {
            proxy(&decode(query), &request)
        } else if path.starts_with("/missing") {
            (
                404,
                vec![
                    "plain wasi:http here\n".to_owned(),
                    format!("path: {path}\n"),
                ],
            )
        } else {
            (
                200,
                vec![
                    "plain wasi:http here\n".to_owned(),
                    "path: ".to_owned(),
                    path.clone(),
                    "\n".to_owned(),
                ],
            )
        };
        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            for part in &parts {
                for chunk in part.as_bytes().chunks(4096) {
                    if stream.blocking_write_and_flush(chunk).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Forward a GET to `url` (http only), copying the incoming `x-request-id`.
fn proxy(url: &str, incoming: &IncomingRequest) -> (u16, Vec<String>) {
    let Some(rest) = url.strip_prefix("http://") else {
        return (400, vec![format!("only http:// URLs: {url}\n")]);
    };
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    for value in incoming.headers().get("x-request-id") {
        let _ = headers.append("x-request-id", &value);
    }
    // `x-pass-<name>: v` on the incoming request is sent as `<name>: v` (a guest that
    // tries to set any header it likes, for the tests of what the host lets through).
    for (name, value) in incoming.headers().entries() {
        if let Some(passed) = name.strip_prefix("x-pass-") {
            let _ = headers.append(passed, &value);
        }
    }
    let request = OutgoingRequest::new(headers);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => return (502, vec![format!("error: {code:?}\n")]),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return (502, vec![format!("error: {code:?}\n")]),
        _ => return (502, vec!["error: no response\n".to_owned()]),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming_body) = response.consume()
        && let Ok(stream) = incoming_body.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            body.extend_from_slice(&chunk);
        }
    }
    (
        200,
        vec![
            format!("upstream status: {status}\n"),
            String::from_utf8_lossy(&body).into_owned(),
        ],
    )
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

wasip2::http::proxy::export!(PlainHttp);
