//! A portable component on standard interfaces only: it reads its configuration
//! through `wasi:config/store@0.2.0-rc.1` and tries what a Shoal service is not
//! granted, answering what it got.
//!
//! - `GET /config/{key}`: the value, or 404; `GET /config`: every `key=value`.
//! - `GET /env`: the environment variables it sees, one a line.
//! - `GET /preopens`: the directories it was given, one a line.
//! - `GET /file?path=P`: tries to read the file.
//! - `GET /tcp?addr=IP:PORT`: tries to open a TCP connection.
//! - `GET /dns?name=N`: tries to resolve a name.
//! - `POST /trailers`: reads the body and its trailers; answers the body's size and
//!   sends each trailer `name` back as the response trailer `echo-name`.

wit_bindgen::generate!({
    inline: "
        package example:wasi-probe;
        world probe {
            import wasi:config/store@0.2.0-rc.1;
        }
    ",
    path: "../../wit/deps/config",
    world: "example:wasi-probe/probe",
    generate_all,
});

use wasi::config::store as config;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Probe;

fn query_value(query: &str, name: &str) -> String {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
        .to_owned()
}

fn route(path: &str, query: &str) -> (u16, String) {
    match path {
        "/config" => match config::get_all() {
            Ok(all) => (200, all.iter().map(|(k, v)| format!("{k}={v}\n")).collect()),
            Err(error) => (500, format!("{error:?}")),
        },
        path if path.starts_with("/config/") => match config::get(&path[8..]) {
            Ok(Some(value)) => (200, value),
            Ok(None) => (404, "no such key".into()),
            Err(error) => (500, format!("{error:?}")),
        },
        "/env" => (
            200,
            std::env::vars()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect(),
        ),
        "/preopens" => (
            200,
            wasip2::filesystem::preopens::get_directories()
                .into_iter()
                .map(|(_, name)| format!("{name}\n"))
                .collect(),
        ),
        "/file" => match std::fs::read(query_value(query, "path")) {
            Ok(bytes) => (200, format!("read {} bytes", bytes.len())),
            Err(error) => (403, format!("denied: {error}")),
        },
        "/tcp" => match std::net::TcpStream::connect(query_value(query, "addr")) {
            Ok(_) => (200, "connected".into()),
            Err(error) => (403, format!("denied: {error}")),
        },
        "/dns" => {
            use std::net::ToSocketAddrs as _;
            match (query_value(query, "name").as_str(), 80).to_socket_addrs() {
                Ok(addrs) => (200, format!("resolved {}", addrs.count())),
                Err(error) => (403, format!("denied: {error}")),
            }
        }
        _ => (404, "no such route".into()),
    }
}

impl Guest for Probe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_and_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query.as_str(), ""));
        if path == "/trailers" {
            return echo_trailers(request, response_out);
        }
        let (status, text) = route(path, query);
        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            for chunk in text.as_bytes().chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Read the request's body to its end, then its trailers; answer the size, with each
/// trailer sent back renamed `echo-<name>`.
fn echo_trailers(request: IncomingRequest, response_out: ResponseOutparam) {
    let Ok(body) = request.consume() else { return };
    let mut size = 0usize;
    if let Ok(stream) = body.stream() {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            size += chunk.len();
        }
    }
    let future = IncomingBody::finish(body);
    future.subscribe().block();
    let received = match future.get() {
        Some(Ok(Ok(Some(trailers)))) => trailers.entries(),
        _ => Vec::new(),
    };
    let response = OutgoingResponse::new(Fields::new());
    let Ok(out) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(stream) = out.write() {
        let _ = stream.blocking_write_and_flush(format!("{size} bytes\n").as_bytes());
    }
    let trailers = Fields::new();
    for (name, value) in received {
        let _ = trailers.append(&format!("echo-{name}"), &value);
    }
    let _ = OutgoingBody::finish(out, Some(trailers));
}

wasip2::http::proxy::export!(Probe);
