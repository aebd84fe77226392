//! The HTTP vocabulary every layer shares: the body type of responses the host hands
//! around, the headers Shoal reads and writes, request ids, hop-by-hop stripping and
//! small response helpers. A leaf: it imports nothing from the rest of the host.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};

/// Body of every response the host produces or relays (gateway, in-process calls,
/// remote calls).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Header carrying the request id, accepted from clients and always returned.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Header telling the guest which route prefix the gateway stripped.
pub static FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
/// Prefix of Shoal's internal headers: honoured only on the in-process path and from
/// trusted peers, removed from everyone else's requests at the gateway.
pub const INTERNAL_PREFIX: &str = "x-shoal-";
/// Header naming the calling service; set by the host only.
pub static CALLER: HeaderName = HeaderName::from_static("x-shoal-caller");
/// The caller an operator's call through the admin API is made as: a name no service
/// may take.
pub const OPERATOR: &str = "operator";
/// Header carrying the caller's remaining deadline, in milliseconds.
pub static DEADLINE_MS: HeaderName = HeaderName::from_static("x-shoal-deadline-ms");
/// Header by which a host of the cluster proves itself to a peer (`host-id:mac`).
pub static PEER: HeaderName = HeaderName::from_static("x-shoal-peer");
/// Header on a host's answer to a peer: the service does not run here (the request
/// was not served, so it may go to another host).
pub static NOT_HERE: HeaderName = HeaderName::from_static("x-shoal-not-here");
/// Header naming the service a request between hosts is for (its path is already the
/// service's own: no route prefix to strip).
pub static TARGET: HeaderName = HeaderName::from_static("x-shoal-target");

/// Headers that say whom a request came through. Only the host (its gateway, for a
/// client's request) and trusted peers set them.
pub const FORWARDING_HEADERS: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
];

/// Remove what a guest may not say on a request it sends: every `x-shoal-*` header
/// (the host's own vocabulary: who calls, event deliveries, deadlines), and with
/// `forwarding` also the [`FORWARDING_HEADERS`] and the route prefix the gateway
/// stripped. The host sets its own afterwards, so a header a callee reads from it was
/// the host's to set.
pub fn remove_host_owned(headers: &mut HeaderMap, forwarding: bool) {
    let owned: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().starts_with(INTERNAL_PREFIX)
                || (forwarding
                    && (FORWARDING_HEADERS.contains(&name.as_str()) || *name == FORWARDED_PREFIX))
        })
        .cloned()
        .collect();
    for name in owned {
        headers.remove(name);
    }
}

/// Longest request id accepted from a client.
const MAX_REQUEST_ID: usize = 128;

/// A request's id: what a client sent in `x-request-id` when it is sane, a fresh
/// random one otherwise. One type from the gateway to the guest and back: it is kept
/// as the header value it is sent as, so passing it on costs no copy.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh random id (32 hex digits).
    pub fn new() -> Self {
        Self(
            HeaderValue::from_maybe_shared(Bytes::from(new_request_id()))
                .unwrap_or_else(|_| HeaderValue::from_static("0")),
        )
    }

    /// The `x-request-id` of `headers` when it is sane, a fresh id otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(&REQUEST_ID)
            .filter(|value| value.to_str().is_ok_and(is_sane_request_id))
            .map_or_else(Self::new, |value| Self(value.clone()))
    }

    /// No request: what an instance's own work (a WASIp3 instance between requests)
    /// is tagged with.
    pub fn none() -> Self {
        Self(HeaderValue::from_static(""))
    }

    /// `id` when it is sane (letters, digits, `-_.:`, at most 128 bytes).
    pub fn parse(id: &str) -> Option<Self> {
        is_sane_request_id(id)
            .then(|| HeaderValue::from_str(id).ok().map(Self))
            .flatten()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only sane ids (visible ASCII) are ever made.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as an `x-request-id` value.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

/// A fresh random request id (32 hex digits).
fn new_request_id() -> String {
    // Hex digits picked directly: `format!` with padding is a measurable share of a
    // small request's host work.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u128>();
    (0..32)
        .rev()
        .map(|nibble| char::from(DIGITS[((bits >> (nibble * 4)) & 0xf) as usize]))
        .collect()
}

fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Set `x-request-id` on a request or response's headers.
pub fn set_request_id(headers: &mut HeaderMap, request_id: &RequestId) {
    headers.insert(REQUEST_ID.clone(), request_id.header());
}

/// Set `x-request-id` on a response.
pub fn with_request_id(mut response: Response<Body>, request_id: &RequestId) -> Response<Body> {
    set_request_id(response.headers_mut(), request_id);
    response
}

/// The text of an answer the host made itself (not a service), kept beside its body
/// so an edge can restate it in another protocol's terms (a gRPC status).
#[derive(Debug, Clone)]
pub struct HostMessage(pub std::sync::Arc<str>);

/// A plain-text response made by the host.
pub fn text(status: StatusCode, message: String) -> Response<Body> {
    let host_message = HostMessage(std::sync::Arc::from(message.trim_end()));
    let mut response = Response::new(full(Bytes::from(message)));
    response.extensions_mut().insert(host_message);
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A complete body.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including those the `connection`
/// header names, and the ones the transport sets itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        "content-length",
    ] {
        headers.remove(name);
    }
}

/// A request with `method`, `uri`, `headers` and a complete `body`.
pub fn buffered_request(
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_id(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_ID.clone(),
            HeaderValue::from_str(id).expect("header value"),
        );
        headers
    }

    #[test]
    fn fresh_request_ids_are_32_lowercase_hex_digits_and_differ() {
        let first = new_request_id();
        assert_eq!(first.len(), 32, "{first}");
        assert!(
            first
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{first}"
        );
        assert!(is_sane_request_id(&first));
        // All 128 bits land in the digits: a run of ids covers every digit value.
        let digits: std::collections::HashSet<u8> = (0..64)
            .flat_map(|_| new_request_id().into_bytes())
            .collect();
        assert_eq!(digits.len(), 16);
        assert_ne!(first, new_request_id());
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let id = RequestId::from_headers(&headers_with_id("abc-123"));
        assert_eq!(id.as_str(), "abc-123");
        assert_eq!(id.header(), "abc-123");
        assert_eq!(RequestId::parse("abc-123"), Some(id));
    }

    #[test]
    fn unsafe_request_ids_are_replaced() {
        for bad in ["", "a b", "x\"y", &"z".repeat(200)] {
            let id = RequestId::from_headers(&headers_with_id(bad));
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.len(), 32);
            assert_eq!(RequestId::parse(bad), None);
        }
        assert_eq!(RequestId::from_headers(&HeaderMap::new()).len(), 32);
        assert_ne!(RequestId::new(), RequestId::new());
    }

    #[test]
    fn a_guest_cannot_send_the_host_s_own_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-shoal-event-id", "evt-1"),
            ("x-shoal-topic", "orders"),
            ("x-shoal-delivery-attempt", "1"),
            ("x-shoal-caller", "payment"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-prefix", "/admin"),
            ("x-kept", "yes"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut external = headers.clone();
        remove_host_owned(&mut headers, true);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-kept"], "yes");
        // To a host outside the platform, forwarding headers are the guest's to set.
        remove_host_owned(&mut external, false);
        assert_eq!(external.len(), 4);
        assert!(
            external
                .keys()
                .all(|name| !name.as_str().starts_with("x-shoal-"))
        );
    }

    #[test]
    fn hop_by_hop_headers_and_connection_tokens_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-kept"], "yes");
    }
}
