//! The gRPC vocabulary every layer shares: status codes, the `grpc-timeout` header,
//! how an HTTP answer maps to a status (the gRPC spec's table), which failures may be
//! retried, and the "trailers-only" answer the host gives a gRPC client when it, not
//! the service, answers. Pure code: no I/O.
//!
//! A gRPC call is an HTTP/2 `POST /package.Service/Method` with `content-type:
//! application/grpc[+proto|+json…]`; its outcome is the `grpc-status` trailer (or
//! header, when the answer has no body), not the HTTP status, which is 200 for every
//! call a server took.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::time::Duration;

use crate::protocol::{self, Body};

/// The status codes, shared with the guest SDK.
pub use shoal_grpc_wire::Code;

/// `grpc-status`.
pub const STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
pub const TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Whether a request or response is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC service of a path `/package.Service/Method`, when it has that shape.
pub fn service_of(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// The (service, method) of a gRPC path, for metrics and spans.
pub fn method_of(path: &str) -> Option<(&str, &str)> {
    let service = service_of(path)?;
    Some((service, &path[service.len() + 2..]))
}

/// The status in `headers` (a trailer block, or the headers of a trailers-only
/// answer), if they carry one.
pub fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(&STATUS)
        .map(|value| Code::from_value(value.as_bytes()))
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    shoal_grpc_wire::parse_timeout(value.to_str().ok()?)
}

/// `budget` as a `grpc-timeout` value, in the finest unit whose amount fits the
/// header's eight digits (rounded up).
pub fn timeout_value(budget: Duration) -> HeaderValue {
    HeaderValue::from_str(&shoal_grpc_wire::timeout_value(budget))
        .unwrap_or(HeaderValue::from_static("1n"))
}

/// `message` (its trailing line break dropped) percent-encoded for `grpc-message`.
pub fn encode_message(message: &str) -> HeaderValue {
    HeaderValue::from_str(&shoal_grpc_wire::encode_message(message.trim_end()))
        .unwrap_or(HeaderValue::from_static(""))
}

/// The code of an answer the host made with `status` (see
/// [`Code::from_http_status`]).
pub fn code_of_status(status: StatusCode) -> Code {
    Code::from_http_status(status.as_u16())
}

/// A "trailers-only" answer: HTTP 200 with the status in the headers and no body,
/// as a gRPC server answers a call it refuses or fails before any message.
pub fn trailers_only(code: Code, message: &str) -> Response<Body> {
    let mut response = Response::new(protocol::full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(STATUS, HeaderValue::from(u16::from(code.number())));
    if !message.is_empty() {
        headers.insert(MESSAGE, encode_message(message));
    }
    response
}

/// An answer to a gRPC client, in the form its client expects:
///
/// - the host's own answer (an error it made, not the service) becomes
///   trailers-only: the HTTP status a gRPC code, the text the message, its other
///   headers (`x-request-id`, `retry-after`) kept;
/// - a service's answer with `grpc-status` in its head is trailers-only too, which
///   must end the stream with that head: whatever body the service streams after it
///   is dropped.
pub fn for_client(response: Response<Body>) -> Response<Body> {
    let Some(protocol::HostMessage(message)) = response.extensions().get().cloned() else {
        if response.headers().contains_key(&STATUS) {
            return response.map(|_| protocol::full(Bytes::new()));
        }
        return response;
    };
    let code = code_of_status(response.status());
    let (parts, _) = response.into_parts();
    let mut answer = trailers_only(code, &message);
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

/// The status of a gRPC answer when it is known before any message: in its head
/// (trailers-only), or in trailers that come before any data. The answer is given
/// back whole (what was read goes back in front of its body), with the status as a
/// [`Code`] extension when one was found. A call that answers messages first is
/// judged by its transport alone.
pub async fn peek_status(response: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt as _;
    if let Some(code) = status_in(response.headers()) {
        let mut response = response;
        response.extensions_mut().insert(code);
        return response;
    }
    let (mut parts, mut body) = response.into_parts();
    let first = body.frame().await;
    let code = match &first {
        // Ended without a status: the spec reads that as a failure.
        None => Some(Code::Unknown),
        Some(Ok(frame)) => frame
            .trailers_ref()
            .map(|trailers| status_in(trailers).unwrap_or(Code::Unknown)),
        Some(Err(_)) => None,
    };
    if let Some(code) = code {
        parts.extensions.insert(code);
    }
    let front = futures::stream::iter(first);
    let rest = http_body_util::BodyStream::new(body);
    let body = http_body_util::StreamBody::new(futures::StreamExt::chain(front, rest));
    Response::from_parts(parts, body.boxed_unsync())
}

/// A gRPC call's status when its answer is over: the one it sent, else `UNKNOWN`
/// for a body that ended without one (the spec's reading), else `CANCELLED` for
/// one dropped before its end (the client went away).
pub fn final_status(sent: Option<Code>, ended: bool) -> Code {
    sent.unwrap_or(if ended {
        Code::Unknown
    } else {
        Code::Cancelled
    })
}

/// Calls `report` with a gRPC response's status once it is known for good: from its
/// head or [`Code`] extension at once, else from its trailers; a body that ends
/// without one reports `UNKNOWN`, one dropped before its end `CANCELLED`.
pub fn watch_status(
    response: Response<Body>,
    report: impl FnOnce(Code) + Send + 'static,
) -> Response<Body> {
    use http_body_util::BodyExt as _;
    let known = status_in(response.headers()).or_else(|| response.extensions().get().copied());
    if let Some(code) = known {
        report(code);
        return response;
    }
    response.map(|body| {
        StatusWatch {
            body,
            code: None,
            ended: false,
            report: Some(Box::new(report)),
        }
        .boxed_unsync()
    })
}

/// The body [`watch_status`] wraps.
struct StatusWatch {
    body: Body,
    code: Option<Code>,
    ended: bool,
    report: Option<Box<dyn FnOnce(Code) + Send>>,
}

impl hyper::body::Body for StatusWatch {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.code = Some(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            std::task::Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        use hyper::body::Body as _;
        let code = final_status(self.code, self.ended || self.body.is_end_stream());
        if let Some(report) = self.report.take() {
            report(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_by_unit_and_refuse_malformed_values() {
        let parse = |text: &'static str| parse_timeout(&HeaderValue::from_static(text));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789m", "1s", "-1m", "1.5S", " 1m"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_budget_is_sent_in_the_finest_unit_that_fits_and_rounded_up() {
        assert_eq!(timeout_value(Duration::from_nanos(1500)), "1500n");
        assert_eq!(timeout_value(Duration::from_millis(250)), "250000u");
        assert_eq!(timeout_value(Duration::from_secs(3)), "3000000u");
        assert_eq!(timeout_value(Duration::from_secs(200)), "200000m");
        assert_eq!(timeout_value(Duration::from_secs(400_000)), "400000S");
        let sent = timeout_value(Duration::from_nanos(100_000_001));
        assert_eq!(sent, "100001u");
        let back = parse_timeout(&sent).expect("parses");
        assert!(back >= Duration::from_nanos(100_000_001));
    }

    #[test]
    fn http_statuses_map_as_the_spec_says_and_504_is_a_deadline() {
        assert_eq!(code_of_status(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(
            code_of_status(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(
            code_of_status(StatusCode::GATEWAY_TIMEOUT),
            Code::DeadlineExceeded
        );
        assert_eq!(
            code_of_status(StatusCode::INTERNAL_SERVER_ERROR),
            Code::Internal
        );
        assert_eq!(code_of_status(StatusCode::IM_A_TEAPOT), Code::Unknown);
        assert_eq!(
            code_of_status(StatusCode::FORBIDDEN),
            Code::PermissionDenied
        );
    }

    #[test]
    fn paths_name_service_and_method() {
        assert_eq!(
            method_of("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(service_of("/helloworld.Greeter"), None);
        assert_eq!(service_of("/a/b/c"), None);
        assert_eq!(service_of("//x"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("50% off\n"), "50%25 off");
        assert_eq!(encode_message("café"), "caf%C3%A9");
    }

    #[test]
    fn a_host_answer_becomes_trailers_only_and_a_service_answer_is_kept() {
        let refused = protocol::with_request_id(
            protocol::text(StatusCode::NOT_FOUND, "no service\n".to_owned()),
            &protocol::RequestId::parse("req-1").expect("id"),
        );
        let answer = for_client(refused);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(status_in(answer.headers()), Some(Code::Unimplemented));
        assert_eq!(answer.headers()[&MESSAGE], "no service");
        assert_eq!(answer.headers()["x-request-id"], "req-1");
        assert!(is_grpc(answer.headers()));
        let from_service = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(protocol::full(Bytes::new()))
            .expect("response");
        assert_eq!(for_client(from_service).status(), StatusCode::NOT_FOUND);
        let streamed = Response::builder()
            .header("grpc-status", "5")
            .body(
                http_body_util::StreamBody::new(futures::stream::pending::<
                    Result<hyper::body::Frame<Bytes>, std::io::Error>,
                >())
                .boxed_unsync(),
            )
            .expect("response");
        use http_body_util::BodyExt as _;
        use hyper::body::Body as _;
        assert!(for_client(streamed).body().is_end_stream());
    }
}
