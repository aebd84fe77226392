//! Requests between the hosts of a cluster: components fetched and pushed by digest,
//! and client requests forwarded one hop to a host that runs their service. Every
//! request carries this host's peer credential (`x-shoal-peer`), and the answering
//! host checks it before it believes any `x-shoal-*` header.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

use crate::protocol::{Body, PEER};

/// Path prefix of the hosts' own requests on a gateway (never a service's route:
/// routes cannot start with a dot).
pub const PEER_PATH: &str = "/.shoal/";
/// How long a component transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// A pooled client to the other hosts' gateways.
#[derive(Clone)]
pub struct Peers {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// HTTP/2 only (h2c, or `h2` by ALPN over mutual TLS), for gRPC: its trailers
    /// carry the call's status, and one connection multiplexes every call.
    multiplexed: Client<HttpsConnector<HttpConnector>, Body>,
    credential: HeaderValue,
    /// Largest component accepted from a peer.
    max_component: usize,
    /// `https` when the hosts speak mutual TLS to each other, else `http`.
    scheme: &'static str,
}

impl Peers {
    /// A client presenting `credential`, accepting components up to `max_component`;
    /// with `tls` (the cluster's CA and this host's certificate), over mutual TLS.
    pub fn new(
        credential: HeaderValue,
        max_component: usize,
        tls: Option<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let tls = match tls {
            Some(config) => config,
            None => crate::trust::client_config(None)?,
        };
        let connector = |http2: bool| {
            let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.clone());
            let builder = if scheme == "https" {
                builder.https_only()
            } else {
                builder.https_or_http()
            };
            if http2 {
                builder.enable_http2().wrap_connector(http.clone())
            } else {
                builder.enable_http1().wrap_connector(http.clone())
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector(false));
        let multiplexed = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector(true));
        Ok(Self {
            client,
            multiplexed,
            credential,
            max_component,
            scheme,
        })
    }

    /// The URL of `path` on the peer at `address`.
    pub fn url(&self, address: &str, path: &str) -> String {
        format!("{}://{address}{path}", self.scheme)
    }

    /// Whether the hosts speak mutual TLS to each other.
    pub fn mutual_tls(&self) -> bool {
        self.scheme == "https"
    }

    /// Largest component accepted from a peer.
    pub fn max_component(&self) -> usize {
        self.max_component
    }

    /// The credential this host presents.
    pub fn credential(&self) -> &HeaderValue {
        &self.credential
    }

    /// Send `request` (absolute URI) to a peer, with the credential.
    pub async fn send(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, hyper_util::client::legacy::Error> {
        request
            .headers_mut()
            .insert(PEER.clone(), self.credential.clone());
        let client = if crate::grpc::is_grpc(request.headers()) {
            &self.multiplexed
        } else {
            &self.client
        };
        let response = client.request(request).await?;
        Ok(response.map(|body| body.map_err(std::io::Error::other).boxed_unsync()))
    }

    /// The component `digest` from the peer at `address`, checked against its digest.
    pub async fn fetch(&self, address: &str, digest: &str) -> anyhow::Result<Bytes> {
        let uri = self.url(address, &format!("{PEER_PATH}artifacts/{digest}"));
        let request = Request::get(uri).body(empty())?;
        let transfer = async {
            let response = self.send(request).await?;
            if response.status() != StatusCode::OK {
                anyhow::bail!("{address} answered {}", response.status());
            }
            let limited = http_body_util::Limited::new(response.into_body(), self.max_component);
            let bytes = limited
                .collect()
                .await
                .map_err(|error| anyhow::anyhow!("reading the component from {address}: {error}"))?
                .to_bytes();
            let actual = crate::data_dir::sha256_hex(&bytes);
            if actual != digest {
                anyhow::bail!("{address} sent bytes whose digest is {actual}, not {digest}");
            }
            Ok(bytes)
        };
        tokio::time::timeout(TRANSFER_TIMEOUT, transfer)
            .await
            .map_err(|_| anyhow::anyhow!("fetching {digest} from {address} timed out"))?
    }

    /// Store `bytes` (component `digest`) on the peer at `address`; it answers once
    /// they are on its disk.
    pub async fn push(&self, address: &str, digest: &str, bytes: Bytes) -> anyhow::Result<()> {
        let uri = self.url(address, &format!("{PEER_PATH}artifacts/{digest}"));
        let request = Request::builder().method(Method::PUT).uri(uri).body(
            Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )?;
        let transfer = async {
            let response = self.send(request).await?;
            let status = response.status();
            if !status.is_success() {
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                anyhow::bail!(
                    "{address} answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
            Ok(())
        };
        tokio::time::timeout(TRANSFER_TIMEOUT, transfer)
            .await
            .map_err(|_| anyhow::anyhow!("pushing {digest} to {address} timed out"))?
    }
}

fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
