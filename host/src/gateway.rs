//! The inbound HTTP gateway: routes `/{service}/...` (or a manifest's route) to a
//! fresh instance of the service and streams the answer back.

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

use crate::platform::Platform;
use crate::runtime::invoke;
use crate::services::{Deployment, Services};

/// Body type of every gateway response.
pub type GatewayBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Header carrying the request id, accepted from clients and always returned.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Header telling the guest which route prefix the gateway stripped.
pub static FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Serve the gateway on `listener` until `shutdown` resolves, then stop accepting,
/// let in-flight requests finish (up to `drain`), and return.
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let services = services.clone();
        let service = hyper::service::service_fn(move |request| {
            let services = services.clone();
            async move { Ok::<_, Infallible>(route(&services, request).await) }
        });
        // The timer enables hyper's header-read timeout, so idle half-sent requests
        // (slowloris) cannot pin connections forever.
        let connection = http1::Builder::new()
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "gateway connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("gateway draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "gateway drain timed out; closing remaining connections"
        );
    }
}

/// Route one request to its service.
pub async fn route(services: &Services, request: Request<Incoming>) -> Response<GatewayBody> {
    let request_id = request_id(&request);
    let path = request.uri().path();
    let Some((entry, prefix_len)) = services.table().resolve(path) else {
        let message = format!("no service is routed at `{path}`\n");
        return with_request_id(text(StatusCode::NOT_FOUND, message), &request_id);
    };

    let (mut parts, body) = request.into_parts();
    let prefix = &parts.uri.path()[..prefix_len];
    let rest = &parts.uri.path()[prefix_len..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let prefix_header = HeaderValue::from_str(if prefix.is_empty() { "/" } else { prefix });
    parts.uri = match Uri::builder().path_and_query(path_and_query).build() {
        Ok(uri) => uri,
        Err(error) => {
            let message = format!("invalid request path: {error}\n");
            return with_request_id(text(StatusCode::BAD_REQUEST, message), &request_id);
        }
    };
    if let Ok(value) = prefix_header {
        parts.headers.insert(FORWARDED_PREFIX.clone(), value);
    }
    // Only the host says which service is calling; a client cannot claim to be one.
    parts.headers.remove(&crate::caller::CALLER);
    // A caller on another host passes its remaining deadline; never run longer. The
    // service's own limit applies on top (in `Services::serve`).
    let mut deadline = Instant::now() + crate::caller::config::MAX_TIMEOUT;
    if let Some(ms) = parts
        .headers
        .get(&crate::caller::DEADLINE_MS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
    {
        deadline = deadline.min(Instant::now() + Duration::from_millis(ms.max(1)));
    }
    let request = Request::from_parts(parts, body);
    services.serve(&entry, request, &request_id, deadline).await
}

/// Run `request` on `deployment` (gateway and in-process calls alike) and turn a
/// guest failure into a 5xx that names the reason. Returns the failure's kind too.
pub async fn serve_deployment<B>(
    platform: &Arc<Platform>,
    deployment: &Deployment,
    request: Request<B>,
    request_id: &str,
    deadline: Instant,
    trace: opentelemetry::Context,
) -> (Response<GatewayBody>, Option<&'static str>)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (mut parts, body) = request.into_parts();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        parts.headers.insert(REQUEST_ID.clone(), value);
    }
    if !parts.headers.contains_key(HOST)
        && let Ok(value) = HeaderValue::from_str(&deployment.record.name)
    {
        parts.headers.insert(HOST, value);
    }
    let request = Request::from_parts(parts, body);
    let trace_id = crate::telemetry::traces::trace_id(&trace);

    let outcome = invoke::handle(
        &deployment.loaded.pre,
        deployment.pool.clone(),
        invoke::Invocation {
            service: deployment.context.clone(),
            platform: platform.clone(),
            request_id: request_id.into(),
            deadline,
            trace,
        },
        request,
    )
    .await;
    let mut kind = None;
    let response = match outcome {
        Ok(response) => response.map(|body| {
            body.map_err(|code| std::io::Error::other(format!("{code:?}")))
                .boxed_unsync()
        }),
        Err(failure) => {
            kind = Some(failure.kind());
            tracing::error!(
                service = %deployment.record.name,
                version = %deployment.record.version,
                request_id = %request_id,
                trace_id = %trace_id.as_deref().unwrap_or(""),
                error = %failure,
                "request failed"
            );
            let message = format!(
                "service `{}` failed: {failure} (request id {request_id})\n",
                deployment.record.name
            );
            text(failure.status(), message)
        }
    };
    (with_request_id(response, request_id), kind)
}

/// The client's `x-request-id` when it is sane, a fresh random id otherwise.
pub fn request_id<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// Set `x-request-id` on a response.
pub fn with_request_id(
    mut response: Response<GatewayBody>,
    request_id: &str,
) -> Response<GatewayBody> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, message: String) -> Response<GatewayBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane() {
        let request = Request::builder()
            .header("x-request-id", "abc-123")
            .body(())
            .expect("request");
        assert_eq!(request_id(&request), "abc-123");
    }

    #[test]
    fn unsafe_request_ids_are_replaced() {
        for bad in ["", "a b", "x\"y", &"z".repeat(200)] {
            let request = Request::builder()
                .header("x-request-id", bad)
                .body(())
                .expect("request");
            let id = request_id(&request);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32);
        }
    }
}
