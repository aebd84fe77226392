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
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::Full;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use thiserror::Error;

pub use config::TargetPolicy;
use transport::{LocalDispatch, RemoteClient, TransportError};

use crate::gateway::{GatewayBody, REQUEST_ID};
use crate::policy::balancer::{Balancer, Load};
use crate::policy::breaker::{BreakerState, CircuitBreaker, Permit};
use crate::policy::retry::{RetryBudget, is_idempotent_method, is_retryable_status};
use crate::registry::{Endpoint, Instance, Registry, routable};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};

/// Header carrying the caller's remaining deadline, in milliseconds.
pub static DEADLINE_MS: HeaderName = HeaderName::from_static("x-shoal-deadline-ms");
/// Header naming the calling service.
pub static CALLER: HeaderName = HeaderName::from_static("x-shoal-caller");

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
    pub request_id: Arc<str>,
    /// The caller's own deadline; no call outlives it.
    pub deadline: Instant,
    /// The caller's outbound settings.
    pub outbound: Arc<crate::manifest::Outbound>,
    /// The caller's spans: outbound calls are children of its current one.
    pub trace: crate::capabilities::tracing::TraceScope,
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

/// The caller shared by every service on the host.
pub struct Caller {
    registry: Arc<dyn Registry>,
    telemetry: Arc<crate::telemetry::Telemetry>,
    local: OnceLock<Weak<dyn LocalDispatch>>,
    remote: RemoteClient,
    targets: Mutex<HashMap<TargetKey, Vec<Arc<TargetState>>>>,
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
        }
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

    /// Call `target` with `request`. Any answered status is a response; errors are
    /// only for calls that got no answer.
    pub async fn call(
        &self,
        cx: &CallContext,
        target: &str,
        request: OutboundRequest,
        options: CallOptions,
    ) -> Result<Response<GatewayBody>, CallError> {
        let telemetry = &self.telemetry;
        let started = Instant::now();
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
                    ],
                )
            });
        let result = self.call_within(cx, target, request, options, &span).await;
        let outcome = match &result {
            Ok(response) if response.status().is_server_error() => "server-error",
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        if telemetry.metrics.enabled() {
            let labels = [&*cx.caller, target, outcome];
            telemetry.metrics.calls.with_label_values(&labels).inc();
            telemetry
                .metrics
                .call_duration
                .with_label_values(&labels)
                .observe(started.elapsed().as_secs_f64());
            if let Some(state) = self.breaker_state(&cx.caller, target) {
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
        }
        let span_ref = span.span();
        span_ref.set_attribute(KeyValue::new("shoal.outcome", outcome));
        if let Ok(response) = &result {
            span_ref.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            ));
        }
        if outcome != "ok" {
            span_ref.set_status(opentelemetry::trace::Status::error(outcome));
        }
        span_ref.end();
        result
    }

    async fn call_within(
        &self,
        cx: &CallContext,
        target: &str,
        request: OutboundRequest,
        options: CallOptions,
        span: &opentelemetry::Context,
    ) -> Result<Response<GatewayBody>, CallError> {
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
        let started = Instant::now();
        let deadline = cx.deadline.min(started + overall);
        if deadline <= started {
            // The caller's own time is up: nothing is sent, no breaker is touched.
            return Err(CallError::Timeout);
        }
        let idempotent = options
            .idempotent
            .unwrap_or_else(|| is_idempotent_method(request.method.as_str()));
        let state = self.target(&cx.caller, target, policy);
        state.budget.lock().on_request(started);

        let Ok(permit) = state.breaker.try_acquire(started) else {
            return Err(CallError::CircuitOpen(target.to_owned()));
        };
        let admission = Admission::new(&state.breaker, permit);
        let (result, sent) = self
            .attempts(
                cx,
                target,
                &state,
                &request,
                deadline,
                attempt_timeout,
                idempotent,
                span,
            )
            .await;
        if sent {
            admission
                .record(matches!(&result, Ok(response) if !response.status().is_server_error()));
        }
        // Otherwise nothing reached the target: dropping the admission releases it.
        result
    }

    /// Run attempts until one succeeds or retrying is not allowed. Also says whether
    /// any attempt reached the point of sending.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        cx: &CallContext,
        target: &str,
        state: &TargetState,
        request: &OutboundRequest,
        deadline: Instant,
        attempt_timeout: Duration,
        idempotent: bool,
        span: &opentelemetry::Context,
    ) -> (Result<Response<GatewayBody>, CallError>, bool) {
        let mut tried: Vec<String> = Vec::new();
        let mut previous: Option<Result<Response<GatewayBody>, CallError>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let instances = match self.registry.instances(target).await {
                Ok(instances) => routable(&instances),
                Err(error) => {
                    let failure = Err(CallError::Unreachable(error.to_string()));
                    return (previous.unwrap_or(failure), !tried.is_empty());
                }
            };
            state.prune(&instances);
            let picked = if instances.is_empty() {
                None
            } else {
                pick(state, &instances, &tried)
            };
            let Some((instance, permit, instance_state)) = picked else {
                // Nothing to (re)try: a retry keeps the answer it already has.
                let failure = if instances.is_empty() {
                    CallError::NoInstances(target.to_owned())
                } else {
                    CallError::CircuitOpen(target.to_owned())
                };
                return (previous.unwrap_or(Err(failure)), !tried.is_empty());
            };
            let admission = Admission::new(&instance_state.breaker, permit);
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return (
                    previous.unwrap_or(Err(CallError::Timeout)),
                    !tried.is_empty(),
                );
            }
            tried.push(instance.id.clone());
            // The callee gets this attempt's deadline, not the whole call's.
            let attempt_deadline = now + attempt_timeout.min(remaining);
            instance_state.outstanding.fetch_add(1, Ordering::Relaxed);
            let guard = Outstanding(instance_state.clone());
            let outcome = tokio::time::timeout_at(
                attempt_deadline.into(),
                self.send(cx, target, instance, request, attempt_deadline, span),
            )
            .await
            .unwrap_or(Err(TransportError {
                error: CallError::Timeout,
                sent: true,
            }));
            drop(guard);
            let now = Instant::now();
            let (success, retryable) = match &outcome {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (status < 500, idempotent && is_retryable_status(status))
                }
                Err(failure) => (false, idempotent || !failure.sent),
            };
            admission.record(success);
            let outcome = outcome.map_err(|failure| failure.error);
            let may_retry = retryable
                && attempt < state.policy.retry.max_attempts
                && now < deadline
                && state.budget.lock().try_retry(now);
            if !may_retry {
                return (outcome, true);
            }
            let backoff = state.policy.retry.backoff(attempt, rand::random::<f64>());
            if now + backoff >= deadline {
                return (outcome, true);
            }
            tracing::debug!(caller = %cx.caller, target, attempt, ?backoff, "retrying");
            span.span().add_event(
                "retry",
                vec![
                    KeyValue::new("shoal.attempt", i64::from(attempt)),
                    KeyValue::new("shoal.instance", instance.id.clone()),
                ],
            );
            previous = Some(outcome);
            tokio::time::sleep(backoff).await;
        }
    }

    async fn send(
        &self,
        cx: &CallContext,
        target: &str,
        instance: &Instance,
        request: &OutboundRequest,
        deadline: Instant,
        span: &opentelemetry::Context,
    ) -> Result<Response<GatewayBody>, TransportError> {
        let mut headers = request.headers.clone();
        strip_hop_by_hop(&mut headers);
        // The callee continues this call's trace.
        headers.remove("traceparent");
        headers.remove("tracestate");
        self.telemetry.tracing.inject(span, &mut headers);
        if !headers.contains_key(&REQUEST_ID)
            && let Ok(value) = HeaderValue::from_str(&cx.request_id)
        {
            headers.insert(REQUEST_ID.clone(), value);
        }
        let remaining_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        headers.insert(DEADLINE_MS.clone(), HeaderValue::from(remaining_ms as u64));
        if let Ok(value) = HeaderValue::from_str(&cx.caller) {
            headers.insert(CALLER.clone(), value);
        }
        let not_sent = |error| TransportError { error, sent: false };
        match &instance.endpoint {
            Endpoint::Local => {
                let uri: Uri = request
                    .path_and_query
                    .parse()
                    .map_err(|_| not_sent(CallError::InvalidRequest("bad path".into())))?;
                if let Ok(value) = HeaderValue::from_str(target) {
                    headers.insert(HOST, value);
                }
                let mut outgoing = Request::new(Full::new(request.body.clone()));
                *outgoing.method_mut() = request.method.clone();
                *outgoing.uri_mut() = uri;
                *outgoing.headers_mut() = headers;
                let local = self.local.get().and_then(Weak::upgrade).ok_or_else(|| {
                    not_sent(CallError::Unreachable("host is shutting down".into()))
                })?;
                local
                    .dispatch(target, outgoing, deadline)
                    .await
                    .ok_or_else(|| {
                        not_sent(CallError::Refused(format!(
                            "`{target}` is not deployed on this host"
                        )))
                    })
            }
            Endpoint::Http(authority) => {
                let uri: Uri = format!("http://{authority}{}", request.path_and_query)
                    .parse()
                    .map_err(|_| {
                        not_sent(CallError::InvalidRequest(format!(
                            "bad endpoint `{authority}`"
                        )))
                    })?;
                if let Ok(value) = HeaderValue::from_str(authority) {
                    headers.insert(HOST, value);
                }
                let mut outgoing = Request::new(Full::new(request.body.clone()));
                *outgoing.method_mut() = request.method.clone();
                *outgoing.uri_mut() = uri;
                *outgoing.headers_mut() = headers;
                self.remote.send(outgoing).await
            }
        }
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
        Some(value) if value > config::MAX_TIMEOUT => Err(CallError::InvalidRequest(format!(
            "{what} of {value:?} exceeds the maximum of {:?}",
            config::MAX_TIMEOUT
        ))),
        Some(value) => Ok(value),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
