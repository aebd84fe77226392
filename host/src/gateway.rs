//! The inbound HTTP gateway: routes `/{service}/...` (or a manifest's route) to a
//! fresh instance of the service and streams the answer back.

use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::deadline::Deadline;
use crate::protocol::{self, Body, CALLER, DEADLINE_MS, FORWARDED_PREFIX};
use crate::services::Services;

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
pub async fn route(services: &Services, request: Request<Incoming>) -> Response<Body> {
    let request_id = protocol::request_id(request.headers());
    let path = request.uri().path();
    let Some((entry, prefix_len)) = services.table().resolve(path) else {
        let message = format!("no service is routed at `{path}`\n");
        return protocol::with_request_id(
            protocol::text(StatusCode::NOT_FOUND, message),
            &request_id,
        );
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
            return protocol::with_request_id(
                protocol::text(StatusCode::BAD_REQUEST, message),
                &request_id,
            );
        }
    };
    if let Ok(value) = prefix_header {
        parts.headers.insert(FORWARDED_PREFIX.clone(), value);
    }
    // Only the host says which service is calling; a client cannot claim to be one.
    parts.headers.remove(&CALLER);
    // A caller on another host passes its remaining deadline; never run longer. The
    // service's own limit applies on top (in `Services::serve`).
    let deadline = Deadline::longest().within_header(parts.headers.get(&DEADLINE_MS));
    let request = Request::from_parts(parts, body);
    services.serve(&entry, request, &request_id, deadline).await
}
