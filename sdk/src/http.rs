//! Buffered HTTP requests and responses for handlers written with
//! [`http_service!`](crate::http_service).

use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::StreamError;

/// An incoming HTTP request with its body read into memory.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    authority: Option<String>,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// Build a request by hand, e.g. in unit tests of a handler.
    pub fn new(method: &str, path_with_query: &str) -> Self {
        let (path, query) = split_path_and_query(path_with_query);
        Self {
            method: method.to_owned(),
            authority: None,
            path,
            query,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Set the authority (builder style).
    pub fn with_authority(mut self, authority: &str) -> Self {
        self.authority = Some(authority.to_owned());
        self
    }

    /// Add a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Set the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The method, upper case (`GET`, `POST`, ...).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The authority the client addressed (`host[:port]`): from the request target of
    /// an absolute-form request, otherwise from its `Host` header.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The path the service was called with, without the gateway's route prefix
    /// (always starts with `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Every value of query parameter `name`, percent-decoded, in order.
    pub fn query_params(&self, name: &str) -> Vec<String> {
        self.query
            .as_deref()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key) == name).then(|| percent_decode(value))
            })
            .collect()
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// Every header as (lower-case name, raw value).
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The request body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The request body as UTF-8 text, lossily converted.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP response built by a handler.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// An `application/json` response; `json` must already be serialised.
    pub fn json(status: u16, json: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(json.into())
    }

    /// Add a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Set the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Every header as (lower-case name, raw value).
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The body as UTF-8 text, lossily converted.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Adapt the raw `incoming-handler` export to a buffered handler function.
///
/// Used by [`http_service!`](crate::http_service); not meant to be called directly.
#[doc(hidden)]
pub fn serve(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let request = match read_request(request, usize::MAX) {
        Ok(request) => request,
        Err(reason) => {
            write_response(response_out, Response::text(400, format!("{reason}\n")));
            return;
        }
    };
    write_response(response_out, handler(request));
}

/// Read `request` with its whole body; refused beyond `max_body` bytes.
pub(crate) fn read_request(request: IncomingRequest, max_body: usize) -> Result<Request, String> {
    let method = method_name(&request.method());
    let authority = request.authority();
    let (path, query) = split_path_and_query(&request.path_with_query().unwrap_or_default());
    let headers = request.headers().entries();
    let body = request
        .consume()
        .map_err(|()| "request body was already consumed".to_owned())?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream unavailable".to_owned())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if bytes.len().saturating_add(chunk.len()) > max_body {
                    return Err(format!("the request body is larger than {max_body} bytes"));
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(format!(
                    "reading the request body failed: {}",
                    error.to_debug_string()
                ));
            }
        }
    }
    drop(stream);
    Ok(Request {
        method,
        authority,
        path,
        query,
        headers,
        body: bytes,
    })
}

pub(crate) fn write_response(response_out: ResponseOutparam, response: Response) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // A header the host refuses (forbidden or malformed) is dropped rather than
        // failing the whole response.
        let _ = headers.append(name, value);
    }
    let outgoing = OutgoingResponse::new(headers);
    if outgoing.set_status_code(response.status).is_err() {
        let _ = outgoing.set_status_code(500);
    }
    let Ok(body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    if let Ok(stream) = body.write() {
        // `blocking-write-and-flush` accepts at most 4096 bytes per call.
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn split_path_and_query(path_with_query: &str) -> (String, Option<String>) {
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (path_with_query, None),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    (path, query)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let req = Request::new("GET", "/x?name=J%C3%BCrg+en&flag&n=2");
        assert_eq!(req.path(), "/x");
        assert_eq!(req.query_param("name").as_deref(), Some("Jürg en"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("n").as_deref(), Some("2"));
        assert_eq!(req.query_param("missing"), None);
    }

    #[test]
    fn truncated_escape_is_kept_verbatim() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
