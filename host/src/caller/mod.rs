//! The resilient outbound caller.
//!
//! One call = discovery → load balancing → per-attempt timeout inside an overall
//! deadline → retries (idempotent requests, or requests that never left) with
//! jittered backoff under a retry budget → a circuit breaker per target instance and
//! per target service → `x-request-id` and remaining-deadline propagation. Services
//! on this host are called in process; remote endpoints over pooled connections.
//!
//! The rules themselves live in [`crate::policy`]; this module only composes them
//! with the registry and the transports.

pub mod config;
pub mod outbound;
pub mod transport;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{HeaderMap, Method, Response, Uri};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use thiserror::Error;

pub use config::TargetPolicy;
use transport::{LocalDispatch, RemoteClient, TransportError};

use crate::deadline::{self, Deadline};
use crate::policy::balancer::{Balancer, Load};
use crate::policy::breaker::{BreakerState, CircuitBreaker, Permit};
use crate::policy::retry::{self, Attempt, Next, RetryBudget, is_idempotent_method};
use crate::protocol::{
    self, Body, CALLER, DEADLINE_MS, NOT_HERE, PEER, REQUEST_ID, RequestId, TARGET,
};
use crate::registry::{Endpoint, Instance, Registry, routable};
use crate::telemetry::TraceScope;
use crate::telemetry::metrics::OTHER_LABEL;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};

/// Why a call produced no response.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CallError {
    /// No healthy instance of the target.
    #[error("no healthy instance of `{0}`")]
    NoInstances(String),
    /// The target's circuit breaker is open.
    #[error("circuit open for `{0}`")]
    CircuitOpen(String),
    /// The deadline passed.
    #[error("deadline exceeded")]
    Timeout,
    /// The target refused the connection.
    #[error("connection refused: {0}")]
    Refused(String),
    /// The target could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The caller may not make this call.
    #[error("denied: {0}")]
    Denied(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl CallError {
    /// A short, stable name of the error kind (for metrics and spans).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::NoInstances(_) => "no-instances",
            CallError::CircuitOpen(_) => "circuit-open",
            CallError::Timeout => "timeout",
            CallError::Refused(_) => "refused",
            CallError::Unreachable(_) => "unreachable",
            CallError::Denied(_) => "denied",
            CallError::InvalidRequest(_) => "invalid-request",
        }
    }
}

/// A request to another service. The body is buffered so it can be retried.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// Method.
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
    /// Headers (hop-by-hop ones are dropped on send).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Per-call overrides.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Per-attempt timeout.
    pub attempt_timeout: Option<Duration>,
    /// Overall deadline.
    pub deadline: Option<Duration>,
    /// Whether retries are safe; by default from the method.
    pub idempotent: Option<bool>,
}

/// Who is calling, on behalf of which request.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The calling service.
    pub caller: Arc<str>,
    /// The request id to propagate.
    pub request_id: RequestId,
    /// The caller's own deadline; no call outlives it.
    pub deadline: Deadline,
    /// The caller's outbound settings.
    pub outbound: Arc<crate::manifest::Outbound>,
    /// The caller's spans: outbound calls are children of its current one.
    pub trace: TraceScope,
}

struct InstanceState {
    breaker: CircuitBreaker,
    outstanding: AtomicU32,
}

/// Per (caller, target) state: breakers, balancer, budget.
struct TargetState {
    policy: TargetPolicy,
    balancer: Balancer,
    breaker: CircuitBreaker,
    instances: Mutex<HashMap<String, Arc<InstanceState>>>,
    budget: Mutex<RetryBudget>,
}

impl TargetState {
    fn new(policy: TargetPolicy) -> Self {
        Self {
            balancer: Balancer::new(policy.strategy),
            breaker: CircuitBreaker::new(policy.breaker.clone(), Instant::now()),
            instances: Mutex::new(HashMap::new()),
            budget: Mutex::new(RetryBudget::new(policy.budget.clone())),
            policy,
        }
    }

    /// Forget per-instance state of instances that are gone (or not routable).
    fn prune(&self, live: &[Instance]) {
        let mut instances = self.instances.lock();
        if instances.len() > live.len() {
            instances.retain(|id, _| live.iter().any(|i| &i.id == id));
        }
    }

    fn instance(&self, id: &str) -> Arc<InstanceState> {
        self.instances
            .lock()
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(InstanceState {
                    breaker: CircuitBreaker::new(self.policy.breaker.clone(), Instant::now()),
                    outstanding: AtomicU32::new(0),
                })
            })
            .clone()
    }
}

/// A breaker admission that is given back if the call is dropped (e.g. the guest
/// went away) before an outcome is recorded, so lost calls never hold probe slots.
struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    permit: Option<Permit>,
}

impl<'a> Admission<'a> {
    fn new(breaker: &'a CircuitBreaker, permit: Permit) -> Self {
        Self {
            breaker,
            permit: Some(permit),
        }
    }

    /// Record the call's outcome.
    fn record(mut self, success: bool) {
        if let Some(permit) = self.permit.take() {
            self.breaker.record(permit, success, Instant::now());
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
    }
}

/// Decrements an instance's outstanding count when an attempt ends, however it ends.
struct Outstanding(Arc<InstanceState>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// (calling service, target service)
type TargetKey = (Arc<str>, String);

/// States kept per (caller, target): one per distinct policy, so two live versions of a
/// caller with different policies (during a redeploy) do not reset each other.
const POLICIES_PER_TARGET: usize = 4;

/// The `target` label of calls to names nobody registered.
pub const UNREGISTERED: &str = "(unregistered)";

/// (caller, target) pairs with caller state kept at most; beyond, idle ones are pruned.
const MAX_TARGET_STATES: usize = 4096;

/// The caller shared by every service on the host.
pub struct Caller {
    registry: Arc<dyn Registry>,
    telemetry: Arc<crate::telemetry::Telemetry>,
    local: OnceLock<Weak<dyn LocalDispatch>>,
    remote: RemoteClient,
    targets: Mutex<HashMap<TargetKey, Vec<Arc<TargetState>>>>,
    /// The host's own listeners (gateway, admin API), which no guest may reach as an
    /// outbound host: through them it would come back as a client.
    own_listeners: parking_lot::RwLock<Vec<std::net::SocketAddr>>,
    /// In a cluster, what this host presents to its peers (`x-shoal-peer`).
    peer_credential: OnceLock<HeaderValue>,
    /// In a cluster whose hosts speak mutual TLS, the client to them.
    peer_tls: OnceLock<
        transport::RemoteClient<
            hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        >,
    >,
}

impl Caller {
    /// A caller that discovers through `registry` and reports to `telemetry`.
    pub fn new(registry: Arc<dyn Registry>, telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        Self {
            registry,
            telemetry,
            local: OnceLock::new(),
            remote: RemoteClient::default(),
            targets: Mutex::new(HashMap::new()),
            own_listeners: Default::default(),
            peer_credential: OnceLock::new(),
            peer_tls: OnceLock::new(),
        }
    }

    /// In a cluster whose hosts speak mutual TLS: reach peers with `config`.
    pub fn set_peer_tls(&self, config: rustls::ClientConfig) {
        let _ = self
            .peer_tls
            .set(transport::RemoteClient::mutual_tls(config));
    }

    /// In a cluster: the credential sent with every call to a peer host.
    pub fn set_peer_credential(&self, credential: HeaderValue) {
        let _ = self.peer_credential.set(credential);
    }

    /// The host's own listeners, once bound.
    pub fn set_own_listeners(&self, listeners: Vec<std::net::SocketAddr>) {
        *self.own_listeners.write() = listeners;
    }

    /// Whether `authority` (`host:port`) names one of the host's own listeners: a
    /// loopback or unspecified address, `localhost`, or a listener's own address, on a
    /// listener's port. (A DNS name of this machine other than `localhost` is not
    /// resolved here.)
    pub fn is_own_listener(&self, host: &str, port: Option<u16>) -> bool {
        let listeners = self.own_listeners.read();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = host.parse::<std::net::IpAddr>().ok();
        listeners.iter().any(|listener| {
            port.unwrap_or(80) == listener.port()
                && (host.eq_ignore_ascii_case("localhost")
                    || address.is_some_and(|ip| {
                        ip.is_loopback() || ip.is_unspecified() || ip == listener.ip()
                    }))
        })
    }

    /// Connect the in-process path (set once, after the services exist).
    pub fn set_local(&self, local: Weak<dyn LocalDispatch>) {
        let _ = self.local.set(local);
    }

    /// The registry behind discovery.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Circuit breaker state of the service-level breaker from `caller` to `target`.
    pub fn breaker_state(&self, caller: &str, target: &str) -> Option<BreakerState> {
        let targets = self.targets.lock();
        targets
            .get(&(Arc::from(caller), target.to_owned()))
            .and_then(|states| states.last())
            .map(|state| state.breaker.state(Instant::now()))
    }

    fn target(&self, caller: &Arc<str>, target: &str, policy: TargetPolicy) -> Arc<TargetState> {
        let mut targets = self.targets.lock();
        if targets.len() >= MAX_TARGET_STATES
            && !targets.contains_key(&(caller.clone(), target.to_owned()))
        {
            // Forget pairs whose state nobody holds (no call in flight): they start
            // afresh if used again.
            targets.retain(|_, states| states.iter().any(|state| Arc::strong_count(state) > 1));
        }
        let states = targets
            .entry((caller.clone(), target.to_owned()))
            .or_default();
        if let Some(index) = states.iter().position(|state| state.policy == policy) {
            // Most recently used last.
            let state = states.remove(index);
            states.push(state.clone());
            return state;
        }
        let state = Arc::new(TargetState::new(policy));
        states.push(state.clone());
        if states.len() > POLICIES_PER_TARGET {
            states.remove(0);
        }
        state
    }

    /// The routable instances of `target`, or `None` when it has none registered (it
    /// is not a service the caller can reach). Plain `wasi:http` calls ask this first,
    /// then hand the answer to [`Caller::call_discovered`] so discovery runs once.
    pub async fn discover(&self, target: &str) -> Option<Vec<Instance>> {
        if target.is_empty() {
            return None;
        }
        match self.registry.instances(target).await {
            Ok(instances) if !instances.is_empty() => Some(instances),
            _ => None,
        }
    }

    /// Call `target` with `request`. Any answered status is a response; errors are
    /// only for calls that got no answer.
    pub async fn call(
        &self,
        cx: &CallContext,
        target: &str,
        request: OutboundRequest,
        options: CallOptions,
    ) -> Result<Response<Body>, CallError> {
        self.call_discovered(cx, target, request, options, None)
            .await
    }

    /// [`Caller::call`], with the first attempt using `discovered` (registered
    /// instances just looked up) instead of asking the registry again.
    pub async fn call_discovered(
        &self,
        cx: &CallContext,
        target: &str,
        request: OutboundRequest,
        options: CallOptions,
        discovered: Option<Vec<Instance>>,
    ) -> Result<Response<Body>, CallError> {
        let telemetry = &self.telemetry;
        let started = Instant::now();
        // Only registered targets get caller state and their own metric label: any
        // number of names a guest makes up costs one bounded label and nothing else.
        let discovered = match discovered {
            Some(instances) => Some(instances),
            None => match self.registry.instances(target).await {
                Ok(instances) if instances.is_empty() => None,
                Ok(instances) => Some(instances),
                Err(error) => {
                    let failure = CallError::Unreachable(error.to_string());
                    self.record(cx, UNREGISTERED, started, failure.kind());
                    return Err(failure);
                }
            },
        };
        let Some(discovered) = discovered else {
            let failure = CallError::NoInstances(target.to_owned());
            self.record(cx, UNREGISTERED, started, failure.kind());
            return Err(failure);
        };
        // The target's inbound policy: refused before anything is sent.
        if let Some(reason) = discovered.iter().find_map(|instance| {
            crate::policy::inbound::permits(&cx.caller, target, &instance.tags).err()
        }) {
            let failure = CallError::Denied(reason);
            self.record(cx, target, started, failure.kind());
            return Err(failure);
        }
        let rpc = crate::grpc::is_grpc(&request.headers)
            .then(|| {
                let path = request.path_and_query.split('?').next().unwrap_or_default();
                crate::grpc::method_of(path)
                    .map(|(service, method)| (service.to_owned(), method.to_owned()))
            })
            .flatten();
        let span = telemetry
            .tracing
            .start_with(SpanKind::Client, &cx.trace.current(), || {
                (
                    format!("call {target}"),
                    vec![
                        KeyValue::new("shoal.caller", cx.caller.to_string()),
                        KeyValue::new("shoal.target", target.to_owned()),
                        KeyValue::new("http.request.method", request.method.to_string()),
                        KeyValue::new("url.path", request.path_and_query.clone()),
                        KeyValue::new("shoal.request_id", cx.request_id.to_string()),
                    ]
                    .into_iter()
                    .chain(
                        rpc.as_ref()
                            .map(|(service, method)| {
                                crate::telemetry::traces::rpc_attributes(service, method)
                            })
                            .into_iter()
                            .flatten(),
                    )
                    .collect(),
                )
            });
        let result = self
            .call_within(cx, target, request, options, Some(discovered), &span)
            .await;
        let outcome = match &result {
            Ok(response) if !retry::attempt_succeeded(attempt_of(response)) => "server-error",
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        self.record(cx, target, started, outcome);
        if telemetry.metrics.enabled()
            && let Some(state) = self.breaker_state(&cx.caller, target)
        {
            let value = match state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            telemetry
                .metrics
                .breaker_state
                .with_label_values(&[&*cx.caller, target])
                .set(value);
        }
        let span_ref = span.span();
        span_ref.set_attribute(KeyValue::new("shoal.outcome", outcome));
        if let Ok(response) = &result {
            span_ref.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            ));
            if let Some(code) = response.extensions().get::<crate::grpc::Code>() {
                span_ref.set_attribute(KeyValue::new(
                    "rpc.grpc.status_code",
                    i64::from(code.number()),
                ));
            }
        }
        if outcome != "ok" {
            span_ref.set_status(opentelemetry::trace::Status::error(outcome));
        }
        span_ref.end();
        match (result, rpc) {
            (Ok(response), Some(rpc)) if telemetry.metrics.enabled() => {
                Ok(self.record_rpc(cx, target, started, rpc, response))
            }
            (result, _) => result,
        }
    }

    /// Count a gRPC call under its method and status, once the status is known (it
    /// may be in trailers the guest has yet to read).
    fn record_rpc(
        &self,
        cx: &CallContext,
        target: &str,
        started: Instant,
        (service, method): (String, String),
        response: Response<Body>,
    ) -> Response<Body> {
        let telemetry = self.telemetry.clone();
        let caller = cx.caller.to_string();
        let target = target.to_owned();
        crate::grpc::watch_status(response, move |code| {
            let metrics = &telemetry.metrics;
            let name = format!("{service}/{method}");
            let admitted = metrics.rpc_client_methods.label(
                &caller,
                &name,
                code != crate::grpc::Code::Unimplemented,
            ) == name;
            let (service, method) = if admitted {
                (service.as_str(), method.as_str())
            } else {
                (OTHER_LABEL, OTHER_LABEL)
            };
            let number = code.number().to_string();
            metrics
                .rpc_client_duration
                .with_label_values(&[&*caller, &*target, "grpc", service, method, &*number])
                .observe(started.elapsed().as_secs_f64());
        })
    }

    /// Count one call and its duration under `target` (or [`UNREGISTERED`]).
    fn record(&self, cx: &CallContext, target: &str, started: Instant, outcome: &str) {
        let metrics = &self.telemetry.metrics;
        if metrics.enabled() {
            let labels = [&*cx.caller, target, outcome];
            metrics.calls.with_label_values(&labels).inc();
            metrics
                .call_duration
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
    }

    async fn call_within(
        &self,
        cx: &CallContext,
        target: &str,
        request: OutboundRequest,
        options: CallOptions,
        discovered: Option<Vec<Instance>>,
        span: &opentelemetry::Context,
    ) -> Result<Response<Body>, CallError> {
        let policy = TargetPolicy::resolve(&cx.outbound, target);
        let attempt_timeout = checked_timeout(
            options.attempt_timeout,
            policy.attempt_timeout,
            "attempt timeout",
        )?;
        let overall = checked_timeout(options.deadline, policy.deadline, "deadline")?;
        if !request.path_and_query.starts_with('/')
            || request
                .path_and_query
                .parse::<http::uri::PathAndQuery>()
                .is_err()
        {
            return Err(CallError::InvalidRequest(format!(
                "`{}` is not a path starting with `/`",
                request.path_and_query
            )));
        }
        let deadline = cx.deadline.within(overall);
        if deadline.is_past() {
            // The caller's own time is up: nothing is sent, no breaker is touched.
            return Err(CallError::Timeout);
        }
        let path = request.path_and_query.split('?').next().unwrap_or_default();
        let idempotent = options.idempotent.unwrap_or_else(|| {
            is_idempotent_method(request.method.as_str())
                || cx
                    .outbound
                    .targets
                    .get(target)
                    .is_some_and(|declared| declared.declares_idempotent(path))
        });
        let state = self.target(&cx.caller, target, policy);
        let started = Instant::now();
        state.budget.lock().on_request(started);

        let Ok(permit) = state.breaker.try_acquire(started) else {
            return Err(CallError::CircuitOpen(target.to_owned()));
        };
        let admission = Admission::new(&state.breaker, permit);
        let plan = AttemptPlan {
            cx,
            target,
            state: &state,
            request: &request,
            deadline,
            attempt_timeout,
            idempotent,
            span,
        };
        let (result, sent) = plan.run(self, discovered).await;
        if sent {
            admission.record(
                matches!(&result, Ok(response) if retry::attempt_succeeded(attempt_of(response))),
            );
        }
        // Otherwise nothing reached the target: dropping the admission releases it.
        result
    }

    /// Send one attempt to `instance`, due by `deadline`: in process for a local
    /// instance, over a pooled connection for a remote one.
    async fn send(
        &self,
        cx: &CallContext,
        target: &str,
        instance: &Instance,
        request: &OutboundRequest,
        deadline: Deadline,
        span: &opentelemetry::Context,
    ) -> Result<Response<Body>, TransportError> {
        let not_sent = |error| TransportError { error, sent: false };
        let (uri, host) = match &instance.endpoint {
            Endpoint::Local => (request.path_and_query.parse::<Uri>(), target),
            Endpoint::Http(authority) => (
                format!("http://{authority}{}", request.path_and_query).parse::<Uri>(),
                authority.as_str(),
            ),
            Endpoint::Peer(authority) => {
                let scheme = if self.peer_tls.get().is_some() {
                    "https"
                } else {
                    "http"
                };
                (
                    format!("{scheme}://{authority}{}", request.path_and_query).parse::<Uri>(),
                    authority.as_str(),
                )
            }
        };
        let uri = uri.map_err(|_| {
            not_sent(CallError::InvalidRequest(format!(
                "cannot address `{}` at `{}`",
                request.path_and_query, instance.endpoint
            )))
        })?;
        let (mut headers, request_id) = self.outgoing_headers(cx, request, deadline, span);
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(HOST, value);
        }
        if let Endpoint::Peer(_) = &instance.endpoint {
            // The peer serves `target` itself, and honours the host's headers (who
            // calls, deadline, trace) only from a host with the cluster token.
            let credential = self.peer_credential.get().ok_or_else(|| {
                not_sent(CallError::Unreachable(
                    "this host is not a member of a cluster".into(),
                ))
            })?;
            headers.insert(PEER.clone(), credential.clone());
            if let Ok(value) = HeaderValue::from_str(target) {
                headers.insert(TARGET.clone(), value);
            }
        }
        let grpc = crate::grpc::is_grpc(&headers);
        let outgoing =
            protocol::buffered_request(request.method.clone(), uri, headers, request.body.clone());
        let response = self
            .send_to(target, instance, outgoing, request_id, deadline)
            .await?;
        // A gRPC call's outcome is its status, which may come before any message.
        if grpc && response.status() == http::StatusCode::OK {
            return Ok(crate::grpc::peek_status(response).await);
        }
        Ok(response)
    }

    /// Send `outgoing` to `instance` of `target`: in process, or over the network.
    async fn send_to(
        &self,
        target: &str,
        instance: &Instance,
        outgoing: http::Request<http_body_util::Full<Bytes>>,
        request_id: RequestId,
        deadline: Deadline,
    ) -> Result<Response<Body>, TransportError> {
        let not_sent = |error| TransportError { error, sent: false };
        match &instance.endpoint {
            Endpoint::Local => {
                let local = self.local.get().and_then(Weak::upgrade).ok_or_else(|| {
                    not_sent(CallError::Unreachable("host is shutting down".into()))
                })?;
                local
                    .dispatch(target, outgoing, request_id, deadline)
                    .await
                    .ok_or_else(|| {
                        not_sent(CallError::Refused(format!(
                            "`{target}` is not deployed on this host"
                        )))
                    })
            }
            Endpoint::Http(_) => self.remote.send(outgoing).await,
            Endpoint::Peer(authority) => {
                let response = match self.peer_tls.get() {
                    Some(client) => client.send(outgoing).await?,
                    None => self.remote.send(outgoing).await?,
                };
                // The service moved off that host (a drain, a new placement) before
                // discovery heard of it: the call was not served, and goes elsewhere.
                if response.headers().contains_key(&NOT_HERE) {
                    return Err(not_sent(CallError::Refused(format!(
                        "`{target}` no longer runs on {authority}"
                    ))));
                }
                Ok(response)
            }
        }
    }

    /// The headers of an attempt: the guest's minus hop-by-hop ones, plus trace
    /// context, request id, remaining deadline and the calling service; and the
    /// request id they carry (the guest's own when it set a sane one, else the id of
    /// the request it serves).
    fn outgoing_headers(
        &self,
        cx: &CallContext,
        request: &OutboundRequest,
        deadline: Deadline,
        span: &opentelemetry::Context,
    ) -> (HeaderMap, RequestId) {
        let mut headers = request.headers.clone();
        protocol::strip_hop_by_hop(&mut headers);
        // The callee reads the host's headers (who calls, deliveries, forwarding) as
        // the host's: none that the guest set passes.
        protocol::remove_host_owned(&mut headers, true);
        // The callee continues this call's trace.
        headers.remove("traceparent");
        headers.remove("tracestate");
        self.telemetry.tracing.inject(span, &mut headers);
        let request_id = headers
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(|| cx.request_id.clone());
        protocol::set_request_id(&mut headers, &request_id);
        headers.insert(DEADLINE_MS.clone(), deadline.header_value());
        if crate::grpc::is_grpc(&headers) {
            // gRPC servers insist on `te: trailers` (a hop-by-hop header, stripped
            // above with the guest's others).
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
            // Any gRPC server, in Shoal or not, reads its deadline here.
            headers.insert(
                crate::grpc::TIMEOUT,
                crate::grpc::timeout_value(deadline.remaining()),
            );
        }
        if let Ok(value) = HeaderValue::from_str(&cx.caller) {
            headers.insert(CALLER.clone(), value);
        }
        (headers, request_id)
    }
}

/// The attempts of one call: everything fixed for the call, so each attempt only
/// picks an instance, sends, and asks [`retry::next_step`] what to do next.
struct AttemptPlan<'a> {
    cx: &'a CallContext,
    target: &'a str,
    state: &'a TargetState,
    request: &'a OutboundRequest,
    deadline: Deadline,
    attempt_timeout: Duration,
    idempotent: bool,
    span: &'a opentelemetry::Context,
}

impl AttemptPlan<'_> {
    /// The routable instances for the next attempt: `discovered` when given,
    /// otherwise what the registry says now.
    async fn instances(
        &self,
        caller: &Caller,
        discovered: Option<Vec<Instance>>,
    ) -> Result<Vec<Instance>, CallError> {
        let registered = match discovered {
            Some(instances) => instances,
            None => caller
                .registry
                .instances(self.target)
                .await
                .map_err(|error| CallError::Unreachable(error.to_string()))?,
        };
        let instances = routable(&registered);
        self.state.prune(&instances);
        Ok(instances)
    }

    /// One attempt on `instance`, within the attempt timeout (and the call's deadline),
    /// counted in the instance's outstanding load while it runs.
    async fn send_once(
        &self,
        caller: &Caller,
        instance: &Instance,
        instance_state: &Arc<InstanceState>,
    ) -> Result<Response<Body>, TransportError> {
        // The callee gets this attempt's deadline, not the whole call's.
        let attempt_deadline = self.deadline.within(self.attempt_timeout);
        instance_state.outstanding.fetch_add(1, Ordering::Relaxed);
        let _outstanding = Outstanding(instance_state.clone());
        let send = caller.send(
            self.cx,
            self.target,
            instance,
            self.request,
            attempt_deadline,
            self.span,
        );
        tokio::time::timeout_at(attempt_deadline.into(), send)
            .await
            .unwrap_or(Err(TransportError {
                error: CallError::Timeout,
                sent: true,
            }))
    }

    /// Run attempts until one succeeds or retrying is not allowed. Also says whether
    /// any attempt reached the point of sending. The first attempt uses `discovered`
    /// when given; later ones ask the registry again.
    async fn run(
        &self,
        caller: &Caller,
        mut discovered: Option<Vec<Instance>>,
    ) -> (Result<Response<Body>, CallError>, bool) {
        let mut tried: Vec<String> = Vec::new();
        let mut previous: Option<Result<Response<Body>, CallError>> = None;
        let mut number = 0;
        loop {
            number += 1;
            let instances = match self.instances(caller, discovered.take()).await {
                Ok(instances) => instances,
                Err(failure) => return (previous.unwrap_or(Err(failure)), !tried.is_empty()),
            };
            let picked = if instances.is_empty() {
                None
            } else {
                pick(self.state, &instances, &tried)
            };
            let Some((instance, permit, instance_state)) = picked else {
                // Nothing to (re)try: a retry keeps the answer it already has.
                let failure = if instances.is_empty() {
                    CallError::NoInstances(self.target.to_owned())
                } else {
                    CallError::CircuitOpen(self.target.to_owned())
                };
                return (previous.unwrap_or(Err(failure)), !tried.is_empty());
            };
            let admission = Admission::new(&instance_state.breaker, permit);
            if self.deadline.is_past() {
                return (
                    previous.unwrap_or(Err(CallError::Timeout)),
                    !tried.is_empty(),
                );
            }
            tried.push(instance.id.clone());
            let outcome = self.send_once(caller, instance, &instance_state).await;
            let attempt = match &outcome {
                Ok(response) => attempt_of(response),
                Err(failure) => Attempt::Failed { sent: failure.sent },
            };
            admission.record(retry::attempt_succeeded(attempt));
            let outcome = outcome.map_err(|failure| failure.error);
            let next = retry::next_step(
                &self.state.policy.retry,
                &mut self.state.budget.lock(),
                number,
                attempt,
                self.idempotent,
                Instant::now(),
                self.deadline.instant(),
                rand::random::<f64>(),
            );
            let Next::RetryAfter(backoff) = next else {
                return (outcome, true);
            };
            tracing::debug!(caller = %self.cx.caller, target = self.target, attempt = number, ?backoff, "retrying");
            self.span.span().add_event(
                "retry",
                vec![
                    KeyValue::new("shoal.attempt", i64::from(number)),
                    KeyValue::new("shoal.instance", instance.id.clone()),
                ],
            );
            previous = Some(outcome);
            tokio::time::sleep(backoff).await;
        }
    }
}

/// What an answer says about its attempt: its HTTP status, or, for a gRPC call whose
/// status came before any message, that status.
fn attempt_of(response: &Response<Body>) -> Attempt {
    match response.extensions().get::<crate::grpc::Code>() {
        Some(code) if response.status() == http::StatusCode::OK => Attempt::Grpc(*code),
        _ => Attempt::Answered(response.status().as_u16()),
    }
}

/// Pick an instance: eligible ones are those whose breaker admits a call; instances
/// already tried in this call are avoided while others remain.
fn pick<'a>(
    state: &TargetState,
    instances: &'a [Instance],
    tried: &[String],
) -> Option<(&'a Instance, Permit, Arc<InstanceState>)> {
    let now = Instant::now();
    let states: Vec<Arc<InstanceState>> = instances.iter().map(|i| state.instance(&i.id)).collect();
    let mut excluded: Vec<bool> = states
        .iter()
        .map(|s| s.breaker.state(now) == BreakerState::Open)
        .collect();
    for _ in 0..instances.len() {
        // Prefer instances this call has not tried yet, among the eligible ones.
        let untried_exist = instances
            .iter()
            .enumerate()
            .any(|(index, i)| !excluded[index] && !tried.contains(&i.id));
        let loads: Vec<Load> = instances
            .iter()
            .zip(&states)
            .enumerate()
            .map(|(index, (instance, s))| Load {
                outstanding: s.outstanding.load(Ordering::Relaxed),
                eligible: !(excluded[index] || untried_exist && tried.contains(&instance.id)),
            })
            .collect();
        let index = state.balancer.pick(&loads, rand::random::<u64>)?;
        match states[index].breaker.try_acquire(now) {
            Ok(permit) => return Some((&instances[index], permit, states[index].clone())),
            // Half-open with its probes taken: try another instance.
            Err(_) => excluded[index] = true,
        }
    }
    None
}

fn checked_timeout(
    requested: Option<Duration>,
    default: Duration,
    what: &str,
) -> Result<Duration, CallError> {
    match requested {
        None => Ok(default),
        Some(value) if value.is_zero() => Err(CallError::InvalidRequest(format!(
            "{what} must be positive"
        ))),
        Some(value) if value > deadline::LONGEST => Err(CallError::InvalidRequest(format!(
            "{what} of {value:?} exceeds the maximum of {:?}",
            deadline::LONGEST
        ))),
        Some(value) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_checked() {
        assert_eq!(
            checked_timeout(None, Duration::from_secs(1), "t"),
            Ok(Duration::from_secs(1))
        );
        assert!(checked_timeout(Some(Duration::ZERO), Duration::from_secs(1), "t").is_err());
        assert!(
            checked_timeout(Some(Duration::from_secs(601)), Duration::from_secs(1), "t").is_err()
        );
    }
}
