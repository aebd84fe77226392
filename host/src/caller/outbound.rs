//! Plain `wasi:http` outbound requests of a guest.
//!
//! `http://<service>/...` goes through the [`Caller`](super::Caller) with the same
//! discovery, balancing, breaker, retries and propagation as `shoal:platform/caller`.
//! Any other host is denied unless the service's manifest lists it in
//! `outbound.allowed_hosts`, so a service cannot reach the network behind the
//! operator's back.

use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::{CallContext, CallError, CallOptions, Caller, OutboundRequest};
use crate::recording::MAX_BODY_BYTES;
use crate::recording::journal::{BodyCopy, Journal};
use serde::{Deserialize, Serialize};

/// Largest request body a guest may send through the caller (it is buffered so that
/// it can be retried).
pub const MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// The `wasi:http` hooks of one guest request.
pub struct OutboundHooks {
    caller: Arc<Caller>,
    context: CallContext,
    /// The request's journal: a recorded request keeps each response, a replay is
    /// answered from them and sends nothing.
    journal: Option<Arc<Journal>>,
}

impl OutboundHooks {
    /// Hooks that call on behalf of `context`, through `journal` if there is one.
    pub fn new(caller: Arc<Caller>, context: CallContext, journal: Option<Arc<Journal>>) -> Self {
        Self {
            caller,
            context,
            journal,
        }
    }
}

/// An outgoing response's head, as a recording keeps it (the journal adds the body).
#[derive(Serialize)]
struct SentHead {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

/// An outgoing request's outcome, as a replay reads it back.
#[derive(Deserialize)]
#[serde(untagged)]
enum Sent {
    Response {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        #[serde(default)]
        body: Vec<u8>,
        #[serde(default)]
        trailers: Vec<(String, Vec<u8>)>,
    },
    Failed {
        error: String,
    },
}

/// What the journal says an outgoing request is about: `METHOD authority/path`.
fn about(request: &http::Request<WasiBody>) -> String {
    let uri = request.uri();
    format!(
        "{} {}{}",
        request.method(),
        uri.authority().map_or("", |authority| authority.as_str()),
        uri.path_and_query().map_or("/", |path| path.as_str())
    )
}

/// The recorded answer to an outgoing request, in a replay.
fn replayed(journal: &Journal, key: &str) -> Result<http::Response<WasiBody>, HttpError> {
    let sent = journal
        .replayed::<Sent>("http.send", key)
        .map_err(|diverged| HttpError::InternalError(Some(format!("{diverged}"))))?;
    match sent {
        Sent::Response {
            status,
            headers,
            body,
            trailers,
        } => {
            let trailers = (!trailers.is_empty()).then(|| header_map(trailers));
            let body = http_body_util::Full::new(bytes::Bytes::from(body))
                .map_err(|never| match never {})
                .with_trailers(async move { trailers.map(Ok) })
                .boxed_unsync();
            let mut response = http::Response::new(body);
            *response.status_mut() =
                http::StatusCode::from_u16(status).map_err(|_| HttpError::HttpProtocolError)?;
            *response.headers_mut() = header_map(headers);
            Ok(response)
        }
        Sent::Failed { error } => Err(error_code(&error)),
    }
}

/// A recorded failure's error code, as the guest got it (by its name; one with data
/// of its own comes back as an internal error naming it).
fn error_code(recorded: &str) -> HttpError {
    match recorded {
        "DestinationNotFound" => HttpError::DestinationNotFound,
        "DestinationUnavailable" => HttpError::DestinationUnavailable,
        "ConnectionTimeout" => HttpError::ConnectionTimeout,
        "ConnectionRefused" => HttpError::ConnectionRefused,
        "HttpRequestDenied" => HttpError::HttpRequestDenied,
        "HttpRequestUriInvalid" => HttpError::HttpRequestUriInvalid,
        "HttpResponseIncomplete" => HttpError::HttpResponseIncomplete,
        "HttpProtocolError" => HttpError::HttpProtocolError,
        other => HttpError::InternalError(Some(other.to_owned())),
    }
}

/// Recorded header fields as a map (fields that are no longer valid are left out).
fn header_map(fields: Vec<(String, Vec<u8>)>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// `route`, through the journal: kept when recording, answered when replaying. Its
/// place among the request's calls is taken now, when the guest sends (the response
/// is awaited in a task of its own, while the guest may make other calls).
fn journaled(
    caller: Arc<Caller>,
    context: CallContext,
    journal: Arc<Journal>,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> SendFuture {
    let key = about(&request);
    if journal.is_replaying() {
        let response = replayed(&journal, &key);
        // Nothing is sent; what the guest writes of the body goes nowhere.
        let mut body = request.into_body();
        tokio::spawn(async move { while body.frame().await.is_some() {} });
        return Box::new(async move {
            let io: IoFuture = Box::new(async { Ok(()) });
            Ok((response?, io))
        });
    }
    let slot = journal.reserve("http.send", key);
    Box::new(async move {
        let sent = route(caller, context, request, options).await;
        let Some(slot) = slot else {
            return sent;
        };
        match sent {
            Ok((response, io)) => {
                let head = SentHead {
                    status: response.status().as_u16(),
                    headers: recorded_fields(response.headers()),
                };
                let copy = journal.fill_response(slot, &head, MAX_BODY_BYTES);
                let response = response.map(|body| CopiedBody { body, copy }.boxed_unsync());
                Ok((response, io))
            }
            Err(error) => {
                journal.fill(slot, &serde_json::json!({ "error": format!("{error:?}") }));
                Err(error)
            }
        }
    })
}

/// Header fields as a recording keeps them: credentials masked.
fn recorded_fields(fields: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    fields
        .iter()
        .map(|(name, value)| {
            let value = if crate::recording::is_credential_header(name.as_str()) {
                crate::policy::redact::MASK.as_bytes().to_vec()
            } else {
                value.as_bytes().to_vec()
            };
            (name.to_string(), value)
        })
        .collect()
}

pin_project_lite::pin_project! {
    /// An outgoing response's body that keeps a copy of what the guest reads.
    struct CopiedBody {
        #[pin]
        body: WasiBody,
        copy: Arc<parking_lot::Mutex<BodyCopy>>,
    }
}

impl hyper::body::Body for CopiedBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, HttpError>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &frame {
            if let Some(data) = frame.data_ref() {
                this.copy.lock().add(data, MAX_BODY_BYTES);
            } else if let Some(trailers) = frame.trailers_ref() {
                this.copy.lock().trailers = recorded_fields(trailers);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let caller = self.caller.clone();
        let context = self.context.clone();
        match self.journal.clone() {
            None => Box::new(async move { route(caller, context, request, options).await }),
            Some(journal) => journaled(caller, context, journal, request, options),
        }
    }
}

async fn route(
    caller: Arc<Caller>,
    context: CallContext,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    let is_plain_http = uri.scheme_str() == Some("http") && uri.port_u16().is_none_or(|p| p == 80);

    let discovered = if is_plain_http {
        caller.discover(&host).await
    } else {
        None
    };
    if let Some(discovered) = discovered {
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, MAX_BUFFERED_BODY)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    HttpError::HttpRequestBodySize(Some(MAX_BUFFERED_BODY as u64))
                } else {
                    // The guest's body stream itself failed (e.g. wrong content-length).
                    HttpError::HttpProtocolError
                }
            })?
            .to_bytes();
        let outbound = OutboundRequest {
            method: parts.method,
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            headers: parts.headers,
            body,
        };
        let options = CallOptions {
            attempt_timeout: options.and_then(|o| o.first_byte_timeout),
            ..CallOptions::default()
        };
        let response = caller
            .call_discovered(&context, &host, outbound, options, Some(discovered))
            .await
            .map_err(to_wasi_error)?;
        let response = response.map(|body| {
            body.map_err(|_| HttpError::HttpResponseIncomplete)
                .boxed_unsync()
        });
        let io: IoFuture = Box::new(async { Ok(()) });
        return Ok((response, io));
    }

    let allowed = context.outbound.allowed_hosts.iter().any(|allowed| {
        allowed.eq_ignore_ascii_case(&authority) || allowed.eq_ignore_ascii_case(&host)
    });
    if allowed && caller.is_own_listener(&host, uri.port_u16()) {
        tracing::warn!(
            service = %context.caller,
            request_id = %context.request_id,
            destination = %authority,
            "outbound request denied: the host's own listener"
        );
        return Err(HttpError::HttpRequestDenied);
    }
    if !allowed {
        tracing::warn!(
            service = %context.caller,
            request_id = %context.request_id,
            destination = %authority,
            "outbound request denied: not a service and not in outbound.allowed_hosts"
        );
        return Err(HttpError::HttpRequestDenied);
    }
    // The host's own headers never leave a guest's hands, whatever the destination
    // (the host's own gateway among them).
    let mut request = request;
    crate::protocol::remove_host_owned(request.headers_mut(), false);
    let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
    let io: IoFuture = Box::new(io);
    Ok((response.map(BodyExt::boxed_unsync), io))
}

fn to_wasi_error(error: CallError) -> HttpError {
    match error {
        CallError::NoInstances(_) => HttpError::DestinationNotFound,
        CallError::CircuitOpen(_) | CallError::Unreachable(_) => HttpError::DestinationUnavailable,
        CallError::Timeout => HttpError::ConnectionTimeout,
        CallError::Refused(_) => HttpError::ConnectionRefused,
        CallError::Denied(_) => HttpError::HttpRequestDenied,
        CallError::InvalidRequest(_) => HttpError::HttpRequestUriInvalid,
    }
}
