//! How one attempt reaches an instance: in process for services on this host, over
//! pooled keep-alive HTTP/1.1 connections for remote endpoints, and over HTTP/2 (one
//! connection multiplexing the calls) for gRPC.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

use super::CallError;
use crate::deadline::Deadline;
use crate::protocol::{Body, RequestId};

/// Dispatches a request to a service deployed on this host, without a socket.
#[async_trait::async_trait]
pub trait LocalDispatch: Send + Sync {
    /// Serve `request` (whose id is `request_id`) with the current version of
    /// `service`, within `deadline`. Guest failures come back as 5xx responses, like
    /// through the gateway; `None` means the service is not deployed here.
    async fn dispatch(
        &self,
        service: &str,
        request: Request<Full<Bytes>>,
        request_id: RequestId,
        deadline: Deadline,
    ) -> Option<Response<Body>>;
}

/// Pooled HTTP/1.1 client for remote instances (over mutual TLS for a cluster's
/// peers when the hosts speak it: [`RemoteClient::mutual_tls`]).
#[derive(Clone)]
pub struct RemoteClient<C = HttpConnector> {
    client: Client<C, Full<Bytes>>,
    /// HTTP/2 only, for gRPC: calls to one endpoint are streams of one connection.
    multiplexed: Client<C, Full<Bytes>>,
}

/// The two clients over `connector`: pooled HTTP/1.1 keep-alive connections, and
/// HTTP/2 (prior knowledge, or `h2` by ALPN over TLS) for gRPC.
fn clients<C>(connector: C) -> (Client<C, Full<Bytes>>, Client<C, Full<Bytes>>)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64);
    let client = builder.build(connector.clone());
    builder
        .http2_only(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(20))
        .http2_keep_alive_timeout(Duration::from_secs(20));
    (client, builder.build(connector))
}

impl RemoteClient<hyper_rustls::HttpsConnector<HttpConnector>> {
    /// A client that speaks only TLS, showing the certificate `config` carries.
    pub fn mutual_tls(config: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let (client, multiplexed) = clients(connector);
        Self {
            client,
            multiplexed,
        }
    }
}

impl Default for RemoteClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let (client, multiplexed) = clients(connector);
        Self {
            client,
            multiplexed,
        }
    }
}

impl<C> RemoteClient<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    /// Send `request` (its URI already absolute) and classify transport failures.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Body>, TransportError> {
        let client = if crate::grpc::is_grpc(request.headers()) {
            &self.multiplexed
        } else {
            &self.client
        };
        match client.request(request).await {
            Ok(response) => {
                Ok(response.map(|body| body.map_err(std::io::Error::other).boxed_unsync()))
            }
            Err(error) => Err(TransportError {
                // A failure to connect means the request never left: always safe to retry.
                sent: !error.is_connect(),
                error: classify(&error),
            }),
        }
    }
}

/// A failed attempt, and whether the request may have reached the target.
#[derive(Debug)]
pub struct TransportError {
    /// The typed error.
    pub error: CallError,
    /// Whether any of the request may have been sent.
    pub sent: bool,
}

fn classify(error: &hyper_util::client::legacy::Error) -> CallError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return CallError::Refused(io.to_string());
                }
                std::io::ErrorKind::TimedOut => return CallError::Timeout,
                _ => {}
            }
        }
        source = cause.source();
    }
    if error.is_connect() {
        CallError::Unreachable(format!("{error:#}"))
    } else {
        // The connection broke after the request may have been sent.
        CallError::Unreachable(format!("connection failed: {}", chain(error)))
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
