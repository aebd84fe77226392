//! Serving a request: admission through the service's limiter, the choice between
//! stable and canary, fault counting and automatic canary rollback. Also the
//! in-process path for calls between services, registration and health checks.

use bytes::Bytes;
use http::header::{HOST, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::limiter::Slot;
use super::table::{Canary, Deployment, ServiceEntry};
use super::{LOCAL_LEASE, Services};
use crate::caller::transport::LocalDispatch;
use crate::capabilities::registry::health_from_wit;
use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::policy::is_failure_status;
use crate::protocol::{self, Body};
use crate::registry::health::HealthTracker;
use crate::registry::{Endpoint, Health, Instance};
use crate::runtime::Handler;
use crate::runtime::invoke::{self, Invocation};
use crate::telemetry::metrics::status_class;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};

/// How a served request failed, for counters, spans and the canary's window.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// Short name of the failure (`trap`, `timeout`, `overload`, `host`, ...).
    pub kind: &'static str,
    /// Whether the service is to blame (a host fault is not held against it).
    pub guest_fault: bool,
}

impl Services {
    /// Serve `request` with `entry`: pick stable or canary, wait for a slot (or answer
    /// 503 at once when the queue is full), run it, and count the outcome.
    pub async fn serve<B>(
        &self,
        entry: &ServiceEntry,
        request: Request<B>,
        request_id: &str,
        deadline: Deadline,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let shared = &entry.shared;
        shared.faults.request();
        let arrival = Instant::now();
        let mut record =
            RequestRecord::start(&self.platform, entry, &entry.stable, &request, request_id);
        // Waiting in the queue counts against the request's time; no version allows
        // more than the longest of the live ones.
        let wait_deadline = deadline.within(entry.longest_timeout());
        let slot =
            match tokio::time::timeout_at(wait_deadline.into(), shared.limiter.acquire()).await {
                Ok(Ok(slot)) => slot,
                outcome => {
                    record.failure = Some(Failure {
                        kind: "overload",
                        guest_fault: false,
                    });
                    shared.faults.count("overload");
                    return overloaded(entry, request_id, outcome.is_err());
                }
            };
        // Admitted: the versions live now decide, not those live when it arrived (a
        // rollback or a new canary while it waited), and a removed service answers.
        let Some(current) = self.table.entry(entry.name()) else {
            record.failure = Some(Failure {
                kind: "removed",
                guest_fault: false,
            });
            let message = format!(
                "service `{}` was removed while the request waited (request id {request_id})\n",
                entry.name()
            );
            return protocol::with_request_id(
                protocol::text(StatusCode::SERVICE_UNAVAILABLE, message),
                request_id,
            );
        };
        let draw = (rand::random::<u32>() % 100) as u8;
        let (deployment, canary) = current.pick(draw);
        record.set_version(&deployment.record.version);
        // The version's own time limit runs from the request's arrival.
        let deadline = deadline.min(Deadline::at(arrival + deployment.timeout));
        // The slot is released when both the guest has finished and the response body
        // has been streamed, whichever comes last.
        let slot = Arc::new(slot);
        let invocation = deployment
            .invocation(
                &self.platform,
                request_id.into(),
                deadline,
                record.span.clone(),
            )
            .holding(slot.clone());
        let (response, failure) =
            serve_deployment(deployment, invocation, request, request_id).await;
        if let Some(failure) = failure {
            shared.faults.count(failure.kind);
        }
        record.status = response.status().as_u16();
        record.failure = failure;
        if let Some(canary) = canary {
            let success =
                !is_failure_status(record.status) || failure.is_some_and(|f| !f.guest_fault);
            self.record_canary_outcome(&current, canary, success);
        }
        // The slot is held, and the request measured, until the body has been streamed.
        response.map(|body| {
            SlotBody {
                body,
                _slot: slot,
                _record: record,
            }
            .boxed_unsync()
        })
    }

    /// Count one canary outcome; start an automatic rollback when its window trips.
    fn record_canary_outcome(&self, entry: &ServiceEntry, canary: &Canary, success: bool) {
        let now = Instant::now();
        let tripped = {
            let mut window = canary.window.lock();
            window.record(success, now);
            canary
                .auto_rollback
                .as_ref()
                .is_some_and(|rule| window.exceeds(rule.max_error_rate, rule.min_requests, now))
        };
        if tripped && !canary.tripped.swap(true, Ordering::SeqCst) {
            self.roll_back_canary_in_background(entry.name().to_owned(), canary.deployment.clone());
        }
    }

    fn roll_back_canary_in_background(&self, name: String, canary: Arc<Deployment>) {
        let Some(services) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let reason = format!(
                "canary {} exceeded its error-rate threshold",
                canary.record.version
            );
            // Only the canary that tripped, never a newer one.
            if let Err(error) = services
                .abort_canary_if(&name, &reason, Some(&canary))
                .await
            {
                tracing::error!(service = %name, %error, "automatic canary rollback failed");
            }
        });
    }

    /// Register (or re-register) the local instance of `deployment`.
    pub(super) async fn register(&self, deployment: &Deployment) {
        let instance = Instance {
            id: deployment.context.instance_id.clone(),
            service: deployment.record.name.clone(),
            endpoint: Endpoint::Local,
            version: deployment.record.version.clone(),
            tags: crate::policy::inbound::tags(
                deployment
                    .record
                    .manifest
                    .inbound
                    .allowed_callers
                    .as_deref(),
            ),
            health: deployment.context.health.lock().effective(),
        };
        if let Err(error) = self.platform.registry.register(instance, LOCAL_LEASE).await {
            tracing::error!(service = %deployment.record.name, %error, "cannot register the service");
        }
    }

    /// Renew every local registration's lease, re-registering lost ones.
    pub async fn renew_leases(&self) {
        for entry in self.table.entries() {
            for deployment in entry.deployments() {
                if self
                    .platform
                    .registry
                    .renew(&deployment.context.instance_id)
                    .await
                    .is_ok()
                {
                    continue;
                }
                // Re-register only what still runs: a service removed (or a version
                // replaced) since the snapshot must not come back through its heartbeat.
                let _guard = self.changes.lock().await;
                let current = self.table.entry(entry.name());
                if current.is_some_and(|current| {
                    current
                        .deployments()
                        .any(|live| Arc::ptr_eq(live, deployment))
                }) {
                    self.register(deployment).await;
                }
            }
        }
    }

    /// Run the component's exported health check on the manifest's schedule, and
    /// record the verdicts in the registry, until the deployment is retired.
    pub(super) fn start_health_checks(&self, deployment: &Arc<Deployment>) {
        if deployment.loaded().health_check.is_none() {
            return;
        }
        let schedule = deployment.record.manifest.health.clone();
        let weak = Arc::downgrade(deployment);
        let platform = self.platform.clone();
        let task = tokio::spawn(async move {
            let mut tracker =
                HealthTracker::new(schedule.unhealthy_threshold, schedule.healthy_threshold);
            let mut tick = tokio::time::interval(Duration::from_millis(schedule.interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(deployment) = weak.upgrade() else {
                    break;
                };
                let timeout = Duration::from_millis(schedule.timeout_ms);
                let invocation = deployment.invocation(
                    &platform,
                    format!("health-{:016x}", rand::random::<u64>()).into(),
                    Deadline::after(timeout),
                    opentelemetry::Context::new(),
                );
                // The code may have been swapped for optimised code since the last check.
                let loaded = deployment.loaded();
                let Some(indices) = &loaded.health_check else {
                    break;
                };
                let verdict = invoke::check_health(&loaded.handler, indices, &invocation).await;
                let reported = match verdict {
                    Ok(health) => health_from_wit(health),
                    Err(failure) => {
                        tracing::warn!(service = %deployment.record.name, %failure, "health check failed");
                        Health::NotServing
                    }
                };
                tracker.observe_health(reported);
                let effective = {
                    let mut signals = deployment.context.health.lock();
                    signals.checked = Some(tracker.current());
                    signals.effective()
                };
                if let Err(error) = platform
                    .registry
                    .set_health(&deployment.context.instance_id, effective)
                    .await
                {
                    tracing::warn!(service = %deployment.record.name, %error, "cannot record health");
                }
            }
        });
        *deployment.health_task.lock() = Some(task);
    }
}

#[async_trait::async_trait]
impl LocalDispatch for Services {
    async fn dispatch(
        &self,
        service: &str,
        request: Request<http_body_util::Full<Bytes>>,
        deadline: Deadline,
    ) -> Option<Response<Body>> {
        let entry = self.table.entry(service)?;
        let request_id = protocol::request_id(request.headers());
        Some(self.serve(&entry, request, &request_id, deadline).await)
    }
}

/// The 503 of a request that found no slot: the queue is full (`timed_out` false) or
/// did not move before the request's deadline.
fn overloaded(entry: &ServiceEntry, request_id: &str, timed_out: bool) -> Response<Body> {
    let (running, queued) = entry.shared.limiter.load();
    let why = if timed_out {
        "its queue did not move before the request's deadline"
    } else {
        "all of its slots and its queue are full"
    };
    tracing::warn!(service = %entry.name(), request_id, running, queued, "overloaded");
    let message = format!(
        "service `{}` is overloaded: {why} ({running} running, {queued} queued); retry later (request id {request_id})\n",
        entry.name()
    );
    let mut response = protocol::text(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    protocol::with_request_id(response, request_id)
}

/// Run `request` on `deployment` (gateway and in-process calls alike) and turn a
/// guest failure into a 5xx that names the reason. Returns the failure too.
pub async fn serve_deployment<B>(
    deployment: &Deployment,
    invocation: Invocation,
    request: Request<B>,
    request_id: &str,
) -> (Response<Body>, Option<Failure>)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (mut parts, body) = request.into_parts();
    // A response to HEAD has no body to wait for, and its length is the guest's to say.
    let read_ahead = parts.method != http::Method::HEAD;
    protocol::set_request_id(&mut parts.headers, request_id);
    if !parts.headers.contains_key(HOST)
        && let Ok(value) = HeaderValue::from_str(&deployment.record.name)
    {
        parts.headers.insert(HOST, value);
    }
    let request = Request::from_parts(parts, body);
    // Its trace id is formatted only for a failure's log line.
    let trace = invocation.trace.clone();
    let code = deployment.loaded();
    let outcome = match (&code.handler, &deployment.concurrent) {
        (Handler::Concurrent(_), Some(concurrent)) => {
            match concurrent.handle(invocation, request).await {
                Ok(response) => {
                    let response =
                        response.map(|body| body.map_err(std::io::Error::other).boxed_unsync());
                    // Its body is written by another task of the instance: the head
                    // waits a moment for it, so both leave in one write.
                    Ok(if read_ahead {
                        super::read_ahead::read_ahead(response, super::read_ahead::TURNS).await
                    } else {
                        response
                    })
                }
                Err(failure) => Err(failure),
            }
        }
        (Handler::Sequential(pre), _) => {
            invoke::handle(pre, deployment.pool.clone(), invocation, request)
                .await
                .map(|response| {
                    response.map(|body| {
                        body.map_err(|code| std::io::Error::other(format!("{code:?}")))
                            .boxed_unsync()
                    })
                })
        }
        (Handler::Concurrent(_), None) => Err(invoke::GuestFailure::Host(
            "the deployment has WASIp3 code but no WASIp3 dispatcher".into(),
        )),
    };
    let (response, failure) = match outcome {
        Ok(response) => (response, None),
        Err(failure) => {
            tracing::error!(
                service = %deployment.record.name,
                version = %deployment.record.version,
                request_id = %request_id,
                trace_id = %crate::telemetry::traces::trace_id(&trace).unwrap_or_default(),
                error = %failure,
                fault = if failure.is_guest_fault() { "guest" } else { "host" },
                "request failed"
            );
            let message = format!(
                "service `{}` failed: {} (request id {request_id})\n",
                deployment.record.name,
                failure.public_message()
            );
            let kind = Failure {
                kind: failure.kind(),
                guest_fault: failure.is_guest_fault(),
            };
            (protocol::text(failure.status(), message), Some(kind))
        }
    };
    (protocol::with_request_id(response, request_id), failure)
}

impl Deployment {
    /// The invocation of one request (or health check) on this version.
    pub fn invocation(
        &self,
        platform: &Arc<Platform>,
        request_id: Arc<str>,
        deadline: Deadline,
        trace: opentelemetry::Context,
    ) -> Invocation {
        Invocation {
            service: self.context.clone(),
            limits: self.limits.clone(),
            platform: platform.clone(),
            request_id,
            deadline,
            trace,
            held_until_done: None,
        }
    }
}

impl Invocation {
    /// The same invocation, holding `token` until the guest has finished.
    fn holding(mut self, token: Arc<Slot>) -> Self {
        self.held_until_done = Some(token);
        self
    }
}

/// A response body that holds the service's concurrency slot until it is done.
struct SlotBody {
    body: Body,
    _slot: Arc<Slot>,
    _record: RequestRecord,
}

/// Metrics and the server span of one request, recorded when it is dropped (after
/// the response body has been streamed, or at once for an early answer).
struct RequestRecord {
    platform: Arc<Platform>,
    service: String,
    version: String,
    method: &'static str,
    status: u16,
    failure: Option<Failure>,
    started: Instant,
    span: opentelemetry::Context,
}

impl RequestRecord {
    /// The version that serves the request (chosen once it is admitted).
    fn set_version(&mut self, version: &str) {
        if self.version != version {
            self.version = version.to_owned();
            self.span
                .span()
                .set_attribute(KeyValue::new("shoal.version", self.version.clone()));
        }
    }

    /// Start measuring a request to `deployment` of `entry`, under a server span that
    /// continues the client's trace.
    fn start<B>(
        platform: &Arc<Platform>,
        entry: &ServiceEntry,
        deployment: &Deployment,
        request: &Request<B>,
        request_id: &str,
    ) -> Self {
        let telemetry = &platform.telemetry;
        let method = method_label(request.method());
        let version = deployment.record.version.clone();
        let parent = telemetry.tracing.extract(request.headers());
        let span = telemetry.tracing.start_with(SpanKind::Server, &parent, || {
            let route = entry.route().to_owned();
            (
                format!("{method} {route}"),
                vec![
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("http.route", route),
                    KeyValue::new("url.path", request.uri().path().to_owned()),
                    KeyValue::new("shoal.service", entry.name().to_owned()),
                    KeyValue::new("shoal.request_id", request_id.to_owned()),
                    KeyValue::new("shoal.version", version.clone()),
                ],
            )
        });
        Self {
            platform: platform.clone(),
            service: entry.name().to_owned(),
            version,
            method,
            // Until the request is answered, it counts as refused.
            status: 503,
            failure: None,
            started: Instant::now(),
            span,
        }
    }
}

/// The method as a bounded metric label: any other token a client sends is `OTHER`.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            let class = status_class(self.status);
            let labels = [&*self.service, &*self.version, self.method, class];
            metrics.requests.with_label_values(&labels).inc();
            metrics
                .request_duration
                .with_label_values(&labels)
                .observe(self.started.elapsed().as_secs_f64());
            if let Some(failure) = self.failure {
                metrics
                    .errors
                    .with_label_values(&[&*self.service, failure.kind])
                    .inc();
            }
        }
        let span = self.span.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status),
        ));
        if let Some(failure) = self.failure {
            span.set_attribute(KeyValue::new("error.type", failure.kind));
        }
        if is_failure_status(self.status) {
            span.set_status(opentelemetry::trace::Status::error(
                self.failure.map_or("5xx", |failure| failure.kind),
            ));
        }
        span.end();
    }
}

impl hyper::body::Body for SlotBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
