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
}

impl OutboundHooks {
    /// Hooks that call on behalf of `context`.
    pub fn new(caller: Arc<Caller>, context: CallContext) -> Self {
        Self { caller, context }
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
        Box::new(async move { route(caller, context, request, options).await })
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
