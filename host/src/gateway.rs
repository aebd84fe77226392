//! The inbound HTTP gateway: routes `/{service}/...` (or a manifest's route) to a
//! fresh instance of the service and streams the answer back.

use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::deadline::Deadline;
use crate::listener::{self, ConnectionLimits};
use crate::protocol::{self, Body, CALLER, DEADLINE_MS, FORWARDED_PREFIX};
use crate::services::Services;

/// Serve the gateway on `listener` until `shutdown` resolves, then stop accepting,
/// let in-flight requests finish (up to `drain`), and return.
pub async fn serve(
    listener: TcpListener,
    limits: ConnectionLimits,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let service_for = move |_peer: SocketAddr| {
        let services = services.clone();
        hyper::service::service_fn(move |request| {
            let services = services.clone();
            async move { Ok::<_, Infallible>(route(&services, request).await) }
        })
    };
    listener::serve("gateway", listener, limits, service_for, shutdown, drain).await;
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
