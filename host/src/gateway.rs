//! The inbound HTTP gateway: applies the trust boundary to a client's headers, routes
//! `/{service}/...` (or a manifest's route) to the service, and streams its answer
//! back. How the service runs the request (fresh or reused instances, WASIp3) is the
//! runtime's.
//!
//! In a cluster the gateway serves every service of the cluster: one that runs here in
//! process, any other one hop away on a host that runs it. Requests from the other
//! hosts (`x-shoal-peer`, checked against the cluster token) name their service
//! (`x-shoal-target`) and keep the host's headers (caller, deadline, request id);
//! without a valid credential those headers are never believed.

use http::header::{HOST, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::cluster::peers::PEER_PATH;
use crate::deadline::Deadline;
use crate::grpc;
use crate::listener;
use crate::protocol::{
    self, Body, CALLER, DEADLINE_MS, FORWARDED_PREFIX, FORWARDING_HEADERS, INTERNAL_PREFIX,
    NOT_HERE, PEER, RequestId, TARGET,
};
use crate::services::Services;

/// Who the gateway trusts with forwarding and internal headers.
#[derive(Debug, Clone, Default)]
pub struct TrustedPeers(Vec<IpNet>);

impl TrustedPeers {
    /// Trust peers in `networks`.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|network| network.contains(&peer))
    }
}

/// The gateway's part of the `shoal serve` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GatewaySettings {
    /// Address of the gateway that serves the services (port 0 picks a free port).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain of the gateway: it then speaks HTTPS only. Reloaded when
    /// the file changes.
    #[arg(long, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of the gateway's certificate.
    #[arg(long, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Gateway connections open at once; beyond it, new connections wait in the
    /// kernel's backlog while open ones keep being served.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Threads that serve gateway connections, each with an event loop of its own
    /// (0: one per core). A connection stays on the thread that took it, and a
    /// WASIp3 service keeps instances per thread. At most 64.
    #[arg(long, env = "SHOAL_GATEWAY_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub gateway_threads: u16,

    /// Peers (addresses or CIDR ranges, comma-separated) whose `X-Forwarded-*`,
    /// `Forwarded` and `x-shoal-*` headers the gateway keeps. From anyone else they
    /// are removed, and the gateway names the peer in `X-Forwarded-For` itself.
    #[arg(long, env = "SHOAL_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_peer)]
    pub trusted_proxies: Vec<IpNet>,
}

impl GatewaySettings {
    /// How many serving threads to start: the flag, or one per core.
    pub fn serving_threads(&self) -> usize {
        match self.gateway_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            count => usize::from(count),
        }
    }
}

/// An address (`10.0.0.5`, `::1`) or a CIDR range (`10.0.0.0/8`).
fn parse_peer(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR range"))
}

/// Serve the gateway on `bound` until `shutdown` resolves, then stop accepting, let
/// in-flight requests finish (up to `drain`), and return.
pub async fn serve(
    bound: listener::Bound,
    services: Arc<Services>,
    cluster: Option<Arc<Cluster>>,
    trusted: TrustedPeers,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let service_for = move |address: SocketAddr| {
        let services = services.clone();
        let cluster = cluster.clone();
        // Who the peer is, and whether it is trusted, is settled once per connection.
        let peer = Arc::new(Peer::new(address, &trusted));
        hyper::service::service_fn(move |request| {
            let services = services.clone();
            let cluster = cluster.clone();
            let peer = peer.clone();
            // Boxed where it is made: a request's future holds every layer below it
            // (several KiB), and each move of it unboxed is a copy of all of them.
            Box::pin(async move {
                Ok::<_, Infallible>(route(&services, cluster.as_deref(), &peer, request).await)
            })
        })
    };
    listener::serve(bound, service_for, shutdown, drain).await;
}

/// Serve the cluster port (mutual TLS: the listener completes a handshake only with a
/// certificate of the cluster's CA): requests between hosts, nothing else.
pub async fn serve_peers(
    bound: listener::Bound,
    services: Arc<Services>,
    cluster: Arc<Cluster>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let service_for = move |_address: SocketAddr| {
        let services = services.clone();
        let cluster = cluster.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let services = services.clone();
            let cluster = cluster.clone();
            async move {
                let request_id = RequestId::from_headers(request.headers());
                if !request.headers().contains_key(&PEER) {
                    let message = "this port takes requests from the cluster's hosts only\n";
                    return Ok::<_, Infallible>(refuse(
                        StatusCode::FORBIDDEN,
                        message.to_owned(),
                        &request_id,
                    ));
                }
                Ok(from_peer(&services, &cluster, request, request_id, true).await)
            }
        })
    };
    listener::serve(bound, service_for, shutdown, drain).await;
}

/// The other end of a connection, as the gateway's header rules see it.
#[derive(Debug)]
pub struct Peer {
    ip: IpAddr,
    trusted: bool,
    /// Its address as an `X-Forwarded-For` entry.
    forwarded_for: Option<HeaderValue>,
}

impl Peer {
    /// The peer at `address`, trusted if `trusted` holds it.
    pub fn new(address: SocketAddr, trusted: &TrustedPeers) -> Self {
        let ip = address.ip();
        Self {
            ip,
            trusted: trusted.contains(ip),
            forwarded_for: HeaderValue::from_str(&ip.to_string()).ok(),
        }
    }
}

/// A client error answered by the gateway itself, counted against no service.
fn refuse(status: StatusCode, message: String, request_id: &RequestId) -> Response<Body> {
    protocol::with_request_id(protocol::text(status, message), request_id)
}

/// Route one request from `peer` to its service.
pub async fn route(
    services: &Services,
    cluster: Option<&Cluster>,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<Body> {
    let request_id = RequestId::from_headers(request.headers());
    // A host that serves alone has no peers: the header is a client's, and goes
    // with the other internal headers.
    if let Some(cluster) = cluster
        && request.headers().contains_key(&PEER)
    {
        let grpc = grpc::is_grpc(request.headers());
        // The cold branches (a host of the cluster, another host) are boxed: unboxed,
        // each request's future would be as large as theirs, and moved whole.
        let response = Box::pin(from_peer(services, cluster, request, request_id, false)).await;
        return if grpc {
            grpc::for_client(response)
        } else {
            response
        };
    }
    if grpc::is_grpc(request.headers()) {
        // A gRPC client reads its outcome from `grpc-status`: the host's own answers
        // (no such method, overload, a guest's fault) are restated in its terms.
        return grpc::for_client(route_grpc(services, cluster, peer, request, request_id).await);
    }
    route_http(services, cluster, peer, request, request_id).await
}

/// Route a gRPC call: `/package.Service/Method` goes, unchanged, to the service that
/// declares `package.Service` (here, or one hop away); any other path is routed as
/// HTTP (a service may take gRPC under its own route, prefix stripped).
async fn route_grpc(
    services: &Services,
    cluster: Option<&Cluster>,
    peer: &Peer,
    request: Request<Incoming>,
    request_id: RequestId,
) -> Response<Body> {
    let Some(name) = grpc::service_of(request.uri().path()) else {
        return route_http(services, cluster, peer, request, request_id).await;
    };
    if let Some(service) = services.table().resolve_grpc(name) {
        return serve_client(services, &service, request, 0, peer, request_id).await;
    }
    if let Some(cluster) = cluster
        && let Some(owner) = cluster.view().resolve_grpc(name).map(str::to_owned)
    {
        return Box::pin(to_peer(cluster, peer, request, &owner, 0, request_id)).await;
    }
    route_http(services, cluster, peer, request, request_id).await
}

/// Route an HTTP request by the longest route that holds its path.
async fn route_http(
    services: &Services,
    cluster: Option<&Cluster>,
    peer: &Peer,
    request: Request<Incoming>,
    request_id: RequestId,
) -> Response<Body> {
    let path = request.uri().path();
    let local = services.table().resolve(path);
    // A service elsewhere in the cluster whose route holds the path more closely than
    // any local one's is served one hop away.
    if let Some(cluster) = cluster
        && let Some((name, prefix_len)) = cluster.view().resolve(path)
        && local
            .as_ref()
            .is_none_or(|(service, len)| service.name() != name && *len < prefix_len)
    {
        return Box::pin(to_peer(
            cluster, peer, request, &name, prefix_len, request_id,
        ))
        .await;
    }
    let Some((service, prefix_len)) = local else {
        if !services.is_ready() {
            // It may be a service that is still being restored.
            let message = "the host is restoring its services; retry shortly\n".to_owned();
            let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, message, &request_id);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        let message = format!("no service is routed at `{path}`\n");
        return refuse(StatusCode::NOT_FOUND, message, &request_id);
    };
    serve_client(services, &service, request, prefix_len, peer, request_id).await
}

/// Serve a client's request on `service` here, its route prefix (`prefix_len` bytes
/// of the path) stripped.
async fn serve_client(
    services: &Services,
    service: &Arc<crate::services::LiveService>,
    request: Request<Incoming>,
    prefix_len: usize,
    peer: &Peer,
    request_id: RequestId,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let deadline = match rewrite_for_service(&mut parts, prefix_len, peer) {
        Ok(deadline) => deadline,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message, &request_id),
    };
    serve_here(services, service, parts, body, request_id, deadline).await
}

/// Serve a request on `service` here. A client (no calling service: only the host, or
/// another host of the cluster, says which service calls) reaches only what the
/// service keeps public.
async fn serve_here(
    services: &Services,
    service: &Arc<crate::services::LiveService>,
    parts: http::request::Parts,
    body: Incoming,
    request_id: RequestId,
    deadline: Deadline,
) -> Response<Body> {
    if !parts.headers.contains_key(&CALLER) && !open_to_clients(service, parts.uri.path()) {
        let message = format!(
            "`{}` of service `{}` is internal: other services reach it, clients do not\n",
            parts.uri.path(),
            service.name()
        );
        return refuse(StatusCode::FORBIDDEN, message, &request_id);
    }
    let request = Request::from_parts(parts, body);
    services.serve(service, request, request_id, deadline).await
}

/// Make a client's request one for its service: the route prefix (`prefix_len` bytes
/// of the path) stripped and named in `x-forwarded-prefix`, the authority as `Host`,
/// the trust boundary applied. Returns the request's deadline, or why the request is
/// bad.
fn rewrite_for_service(
    parts: &mut http::request::Parts,
    prefix_len: usize,
    peer: &Peer,
) -> Result<Deadline, String> {
    // The authority comes from the request target first (absolute form), then from
    // `Host` (RFC 9112 §3.2.2); the guest sees it as `Host`.
    let authority = authority_of(parts)?;
    let prefix = &parts.uri.path()[..prefix_len];
    let rest = &parts.uri.path()[prefix_len..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let prefix_header = HeaderValue::from_str(if prefix.is_empty() { "/" } else { prefix });
    parts.uri = Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|error| format!("invalid request path: {error}\n"))?;
    parts.headers.insert(HOST, authority);
    if let Ok(value) = prefix_header {
        parts.headers.insert(FORWARDED_PREFIX.clone(), value);
    }
    Ok(sanitize_headers(&mut parts.headers, peer))
}

/// A client's request for `name`, which runs on other hosts of the cluster: sent one
/// hop to a host that runs it, with the request id and the remaining deadline. A
/// request without a body is tried on the next host when one cannot be reached.
async fn to_peer(
    cluster: &Cluster,
    peer: &Peer,
    request: Request<Incoming>,
    name: &str,
    prefix_len: usize,
    request_id: RequestId,
) -> Response<Body> {
    use http_body_util::BodyExt as _;
    let (mut parts, body) = request.into_parts();
    let deadline = match rewrite_for_service(&mut parts, prefix_len, peer) {
        Ok(deadline) => deadline,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message, &request_id),
    };
    protocol::strip_hop_by_hop(&mut parts.headers);
    if grpc::is_grpc(&parts.headers) {
        // The hop is HTTP/2, where `te: trailers` is the one `te` allowed, and gRPC
        // servers may ask for it.
        parts
            .headers
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    protocol::set_request_id(&mut parts.headers, &request_id);
    parts
        .headers
        .insert(DEADLINE_MS.clone(), deadline.header_value());
    if let Ok(value) = HeaderValue::from_str(name) {
        parts.headers.insert(TARGET.clone(), value);
    }
    let hosts = cluster.hosts_serving(name).await;
    if hosts.is_empty() {
        let message = format!("no host of the cluster serves `{name}` right now; retry shortly\n");
        let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, message, &request_id);
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    // A request with no body and an idempotent method may go to the next host after
    // any failure; any other only when the host it went to did not serve it.
    let bodiless = !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && !parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let repeatable = bodiless
        && matches!(
            parts.method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
    let mut body = Some(body.map_err(std::io::Error::other).boxed_unsync());
    let mut last_error = String::new();
    for address in &hosts {
        let Ok(uri) = cluster
            .peers()
            .url(address, &parts.uri.to_string())
            .parse::<Uri>()
        else {
            continue;
        };
        let mut attempt = Request::new(match body.take() {
            Some(body) => body,
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        });
        *attempt.method_mut() = parts.method.clone();
        *attempt.uri_mut() = uri;
        *attempt.headers_mut() = parts.headers.clone();
        let sent = tokio::time::timeout(deadline.remaining(), cluster.peers().send(attempt)).await;
        match sent {
            Ok(Ok(mut response)) => {
                let not_here = response.headers_mut().remove(&NOT_HERE).is_some();
                if not_here && bodiless {
                    // It moved away meanwhile: the next host serves it.
                    last_error = format!("{address}: `{name}` no longer runs there");
                    continue;
                }
                return protocol::with_request_id(response, &request_id);
            }
            Ok(Err(error)) => {
                last_error = format!("{address}: {error}");
                if !(repeatable || (error.is_connect() && bodiless)) {
                    break;
                }
            }
            Err(_) => {
                let message = format!("`{name}` did not answer within the request's deadline\n");
                return refuse(StatusCode::GATEWAY_TIMEOUT, message, &request_id);
            }
        }
    }
    tracing::warn!(service = name, error = %last_error, "forwarding to another host failed");
    let message = format!("the hosts that run `{name}` could not be reached\n");
    refuse(StatusCode::BAD_GATEWAY, message, &request_id)
}

/// A request from another host of the cluster: a component by digest, or a request
/// for a service that runs here.
async fn from_peer(
    services: &Services,
    cluster: &Cluster,
    request: Request<Incoming>,
    request_id: RequestId,
    on_cluster_port: bool,
) -> Response<Body> {
    let credential = request
        .headers()
        .get(&PEER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if cluster.peers().mutual_tls() && !on_cluster_port {
        let message =
            "the hosts of this cluster speak to each other on their cluster port, over mutual TLS\n"
                .to_owned();
        return refuse(StatusCode::FORBIDDEN, message, &request_id);
    }
    let Some(peer_id) = cluster.key().verify_peer(credential).map(str::to_owned) else {
        tracing::warn!("refused a request with an invalid cluster credential");
        let message = "the request's cluster credential is not valid for this cluster\n".to_owned();
        return refuse(StatusCode::FORBIDDEN, message, &request_id);
    };
    if let Some(rest) = request.uri().path().strip_prefix(PEER_PATH) {
        return peer_api(services, cluster, rest.to_owned(), request, &request_id).await;
    }
    let (mut parts, body) = request.into_parts();
    let target = parts
        .headers
        .get(&TARGET)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    parts.headers.remove(&PEER);
    parts.headers.remove(&TARGET);
    let Some(service) = services.table().get(&target) else {
        let message = format!(
            "service `{target}` does not run on host `{}` (asked by `{peer_id}`)\n",
            cluster.host_id()
        );
        let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, message, &request_id);
        response
            .headers_mut()
            .insert(NOT_HERE.clone(), HeaderValue::from_static("1"));
        return response;
    };
    let deadline = Deadline::longest().within_header(parts.headers.get(&DEADLINE_MS));
    serve_here(services, &service, parts, body, request_id, deadline).await
}

/// The hosts' own calls: `artifacts/{digest}`, GET to fetch a component, PUT to store
/// one (answered once it is on disk).
async fn peer_api(
    services: &Services,
    cluster: &Cluster,
    rest: String,
    request: Request<Incoming>,
    request_id: &RequestId,
) -> Response<Body> {
    use http_body_util::BodyExt as _;
    if rest == "audit" && request.method() == http::Method::GET {
        let limit = request
            .uri()
            .query()
            .and_then(|query| query.strip_prefix("limit="))
            .and_then(|limit| limit.parse::<usize>().ok())
            .unwrap_or(1000)
            .min(10_000);
        return match cluster.local_audit(limit).await {
            Ok(entries) => {
                let body = serde_json::to_vec(&entries).unwrap_or_default();
                let mut response = Response::new(
                    http_body_util::Full::new(bytes::Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(error) => refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the audit log: {error:#}\n"),
                request_id,
            ),
        };
    }
    if let Some(service) = rest.strip_prefix("canary/") {
        // This host's share of a canary's recent outcomes, for the leader's sum.
        let Some((version, calls, failures)) = services.canary_window(service) else {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no canary of `{service}` here\n"),
                request_id,
            );
        };
        let body = serde_json::json!({ "version": version, "calls": calls, "failures": failures });
        return Response::new(
            http_body_util::Full::new(bytes::Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    let Some(digest) = rest.strip_prefix("artifacts/") else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no peer call `{rest}`\n"),
            request_id,
        );
    };
    match *request.method() {
        http::Method::GET => match services.read_blob(digest).await {
            Some(bytes) => Response::new(
                http_body_util::Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            None => refuse(
                StatusCode::NOT_FOUND,
                format!("no component {digest} here\n"),
                request_id,
            ),
        },
        http::Method::PUT => {
            let limit = cluster.peers().max_component();
            let body = http_body_util::Limited::new(request.into_body(), limit);
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    let message = format!("cannot read the component: {error}\n");
                    return refuse(StatusCode::BAD_REQUEST, message, request_id);
                }
            };
            let size = bytes.len() as u64;
            match services.store_blob(digest, bytes).await {
                Ok(()) => {
                    if let Err(error) = cluster.announce_artifact(digest, size).await {
                        tracing::warn!(%error, "cannot announce a stored component");
                    }
                    protocol::with_request_id(
                        protocol::text(StatusCode::CREATED, "stored\n".into()),
                        request_id,
                    )
                }
                Err(error) => refuse(StatusCode::BAD_REQUEST, format!("{error}\n"), request_id),
            }
        }
        _ => refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or PUT\n".into(),
            request_id,
        ),
    }
}

/// Whether a client may reach `path` (below its route) of `service`: the stable
/// version's `[inbound]` decides, for the path as sent and as a guest may read it
/// (percent-decoded, repeated slashes collapsed), so no spelling slips past.
fn open_to_clients(service: &crate::services::LiveService, path: &str) -> bool {
    let versions = service.versions();
    let inbound = &versions.stable.record.manifest.inbound;
    let public = inbound.public.unwrap_or(true);
    if public && inbound.private_paths.is_empty() {
        return true;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut normalized = String::with_capacity(decoded.len());
    for character in decoded.chars() {
        if !(character == '/' && normalized.ends_with('/')) {
            normalized.push(character);
        }
    }
    [path, normalized.as_str()].into_iter().all(|spelling| {
        crate::policy::inbound::open_to_clients(public, &inbound.private_paths, spelling)
    })
}

/// The request's authority as a `Host` value, or why there is none.
fn authority_of(parts: &http::request::Parts) -> Result<HeaderValue, String> {
    if let Some(authority) = parts.uri.authority() {
        return HeaderValue::from_str(authority.as_str())
            .map_err(|_| "the request target's authority is not valid\n".to_owned());
    }
    let Some(host) = parts.headers.get(HOST) else {
        return Err("the request has no `Host` header and no authority in its target\n".into());
    };
    let valid = host
        .to_str()
        .ok()
        .and_then(|text| text.parse::<http::uri::Authority>().ok())
        .is_some_and(|authority| authority.as_str().len() == host.len());
    if valid {
        Ok(host.clone())
    } else {
        Err("the `Host` header is not a valid authority (ASCII `host[:port]`)\n".into())
    }
}

/// Apply the trust boundary to a client's headers: only the host says which service
/// calls; forwarding and `x-shoal-*` headers are kept from trusted peers only, and the
/// peer is added to `X-Forwarded-For`. Returns the request's deadline: the host's
/// longest, narrowed by a trusted peer's `x-shoal-deadline-ms`.
fn sanitize_headers(headers: &mut HeaderMap, peer: &Peer) -> Deadline {
    let mut deadline = Deadline::longest();
    if peer.trusted {
        deadline = deadline.within_header(headers.get(&DEADLINE_MS));
    }
    // A gRPC client states its deadline itself; a shorter one than the service's
    // own limit ends the call (DEADLINE_EXCEEDED) when it passes.
    if let Some(budget) = headers.get(&grpc::TIMEOUT).and_then(grpc::parse_timeout) {
        deadline = deadline.within(budget);
    }
    // Shoal's internal headers (the caller, event ids, topics, ...) are never a
    // client's, whoever forwards them; forwarding headers only a trusted peer's.
    // One pass over the names; most requests have none of them.
    let unwanted: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().starts_with(INTERNAL_PREFIX)
                || (!peer.trusted && FORWARDING_HEADERS.contains(&name.as_str()))
        })
        .cloned()
        .collect();
    for name in unwanted {
        headers.remove(name);
    }
    let forwarded_for = if peer.trusted {
        match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(chain) if !chain.trim().is_empty() => {
                HeaderValue::from_str(&format!("{chain}, {}", peer.ip)).ok()
            }
            _ => peer.forwarded_for.clone(),
        }
    } else {
        peer.forwarded_for.clone()
    };
    if let Some(value) = forwarded_for {
        headers.insert("x-forwarded-for", value);
    }
    deadline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CALLER;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    #[test]
    fn untrusted_clients_cannot_forge_forwarding_or_internal_headers() {
        let trusted = TrustedPeers::new(vec!["10.0.0.0/8".parse().expect("net")]);
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-shoal-caller", "orders"),
            ("x-shoal-deadline-ms", "1"),
            ("x-shoal-anything", "x"),
            ("x-kept", "yes"),
        ]);
        let deadline = sanitize_headers(&mut map, &Peer::new(peer("192.0.2.7"), &trusted));
        assert_eq!(map["x-forwarded-for"], "192.0.2.7");
        assert!(map.get("forwarded").is_none());
        assert!(
            map.keys()
                .all(|name| !name.as_str().starts_with("x-shoal-"))
        );
        assert_eq!(map["x-kept"], "yes");
        assert!(
            deadline.remaining() > Duration::from_secs(60),
            "the deadline header was ignored"
        );
    }

    #[test]
    fn trusted_peers_extend_the_chain_and_pass_their_deadline() {
        let trusted = TrustedPeers::new(vec!["10.0.0.0/8".parse().expect("net")]);
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-shoal-deadline-ms", "250"),
            ("x-shoal-caller", "forged"),
            ("x-shoal-event-id", "forged"),
        ]);
        let deadline = sanitize_headers(&mut map, &Peer::new(peer("10.1.2.3"), &trusted));
        assert_eq!(map["x-forwarded-for"], "1.2.3.4, 10.1.2.3");
        assert!(
            map.get("x-shoal-caller").is_none(),
            "only the host names the caller"
        );
        assert!(
            map.get("x-shoal-event-id").is_none(),
            "nor does a proxy forward events"
        );
        assert!(deadline.remaining() <= Duration::from_millis(250));
        // An IPv4 peer seen through an IPv6 socket is the same peer.
        assert!(trusted.contains("::ffff:10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn the_authority_comes_from_the_target_then_from_host() {
        let absolute = Request::get("http://example.test/svc/")
            .body(())
            .expect("request");
        let (parts, ()) = absolute.into_parts();
        assert_eq!(authority_of(&parts).expect("authority"), "example.test");
        let origin = Request::get("/svc/")
            .header(HOST, "shop.test:8080")
            .body(())
            .expect("request");
        let (parts, ()) = origin.into_parts();
        assert_eq!(authority_of(&parts).expect("authority"), "shop.test:8080");
        let none = Request::get("/svc/").body(()).expect("request");
        let (parts, ()) = none.into_parts();
        assert!(authority_of(&parts).is_err());
        let bad = Request::get("/svc/")
            .header(HOST, HeaderValue::from_bytes(b"caf\xe9").expect("bytes"))
            .body(())
            .expect("request");
        let (parts, ()) = bad.into_parts();
        assert!(authority_of(&parts).is_err());
    }

    /// Property test: whatever headers a client sends, the host's own headers never
    /// get through from an untrusted peer, and the deadline is never extended.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
            let name = prop_oneof![
                Just("x-shoal-caller".to_owned()),
                Just("x-shoal-deadline-ms".to_owned()),
                Just("x-shoal-event-id".to_owned()),
                Just("x-forwarded-for".to_owned()),
                Just("x-forwarded-prefix".to_owned()),
                Just("host".to_owned()),
                "x-shoal-[a-z-]{1,12}",
                "[a-z][a-z0-9-]{0,20}",
            ];
            (name, prop::collection::vec(0x20u8..0x7f, 0..64))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn untrusted_clients_never_pass_internal_headers(
                headers in prop::collection::vec(header(), 0..12),
                trusted in any::<bool>(),
            ) {
                let mut map = HeaderMap::new();
                for (name, value) in &headers {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_bytes(value),
                    ) {
                        map.append(name, value);
                    }
                }
                let peer: SocketAddr = "192.0.2.7:4000".parse().expect("addr");
                let peers = if trusted {
                    TrustedPeers::new(vec!["192.0.2.7/32".parse().expect("net")])
                } else {
                    TrustedPeers::new(Vec::new())
                };
                let deadline = sanitize_headers(&mut map, &Peer::new(peer, &peers));
                // Taken after: the longest deadline from any later instant is later still.
                let ceiling = Deadline::longest();
                prop_assert!(map.get(&CALLER).is_none(), "only the host names the caller");
                if !trusted {
                    prop_assert!(
                        map.keys().all(|name| !name.as_str().starts_with(INTERNAL_PREFIX)),
                        "{map:?}"
                    );
                }
                prop_assert!(deadline.instant() <= ceiling.instant());
                let mut parts = http::Request::new(()).into_parts().0;
                parts.headers = map;
                let _ = authority_of(&parts);
            }
        }
    }
}
