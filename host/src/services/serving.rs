//! Serving a request: admission through the service's limiter, the choice between
//! stable and canary, the request's deadline, its telemetry and fault counts (one
//! [`RequestRecord`]), and automatic canary rollback. Also the in-process path for
//! calls between services, registration and health checks.

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
use super::table::{Canary, Deployment, LiveService};
use super::{LOCAL_LEASE, Services};
use crate::caller::transport::LocalDispatch;
use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::policy::is_failure_status;
use crate::protocol::{self, Body, RequestId};
use crate::registry::health::HealthTracker;
use crate::registry::{Endpoint, Health, Instance};
use crate::runtime::executor::{RequestScope, request_body};
use crate::runtime::failure::GuestFailure;
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

impl Failure {
    /// No slot and no room in the queue, or the queue did not move in time.
    const OVERLOAD: Failure = Failure {
        kind: "overload",
        guest_fault: false,
    };
    /// The service was removed while the request waited.
    const REMOVED: Failure = Failure {
        kind: "removed",
        guest_fault: false,
    };
}

impl Services {
    /// Serve `request` with `service`: wait for a slot (or answer 503 at once when the
    /// queue is full), pick stable or canary among the versions live once admitted,
    /// run it, and count the outcome.
    ///
    /// `deadline` is the budget the request arrived with; it is narrowed here, and
    /// only here, by the service's time limits: waiting in the queue by the longest
    /// of its live versions', running by the chosen version's, from arrival.
    pub async fn serve<B>(
        &self,
        service: &Arc<LiveService>,
        request: Request<B>,
        request_id: RequestId,
        deadline: Deadline,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let arrival = Instant::now();
        let versions = service.versions();
        // A call from another service (the host names it) is checked here too, not
        // only by the caller: the target's own `[inbound] allowed_callers` decides.
        if let Some(caller) = request
            .headers()
            .get(&protocol::CALLER)
            .and_then(|value| value.to_str().ok())
            .filter(|caller| *caller != protocol::OPERATOR)
        {
            let allowed = versions
                .stable
                .record
                .manifest
                .inbound
                .allowed_callers
                .as_deref();
            let tags = crate::policy::inbound::tags(allowed);
            if let Err(reason) = crate::policy::inbound::permits(caller, service.name(), &tags) {
                tracing::warn!(service = %service.name(), caller, %request_id, "call refused by the target's inbound policy");
                return protocol::with_request_id(
                    protocol::text(StatusCode::FORBIDDEN, format!("{reason}\n")),
                    &request_id,
                );
            }
        }
        let mut record = RequestRecord::start(
            &self.platform,
            service,
            &versions.stable,
            &request,
            &request_id,
        );
        // Recording: the request's body is copied as the guest reads it.
        let mode = service.recording_mode(&versions.stable);
        let request = match mode {
            crate::recording::Mode::Off => request.map(|body| TeeBody { body, copy: None }),
            mode => {
                let copy = Arc::new(parking_lot::Mutex::new(Captured::default()));
                record.capture = Some(Capture::start(mode, &request, &request_id, copy.clone()));
                request.map(|body| TeeBody {
                    body,
                    copy: Some(copy),
                })
            }
        };
        let wait_deadline = deadline.within(versions.longest_timeout());
        drop(versions);
        let slot =
            match tokio::time::timeout_at(wait_deadline.into(), service.limiter.acquire()).await {
                Ok(Ok(slot)) => slot,
                outcome => {
                    record.failed(Failure::OVERLOAD);
                    return overloaded(service, &request_id, outcome.is_err());
                }
            };
        // Admitted: the versions live now decide, not those live when it arrived (a
        // rollback or a new canary while it waited), and a removed service answers.
        if service.is_removed() {
            record.failed(Failure::REMOVED);
            let message = format!(
                "service `{}` was removed while the request waited (request id {request_id})\n",
                service.name()
            );
            return protocol::with_request_id(
                protocol::text(StatusCode::SERVICE_UNAVAILABLE, message),
                &request_id,
            );
        }
        let versions = service.versions();
        let draw = (rand::random::<u32>() % 100) as u8;
        let (deployment, canary) = versions.pick(draw);
        record.set_deployment(deployment);
        let deadline = deadline.min(Deadline::at(arrival + deployment.timeout()));
        // The slot is released when both the guest has finished and the response body
        // has been streamed, whichever comes last.
        let slot = Arc::new(slot);
        let scope = RequestScope {
            request_id: request_id.clone(),
            deadline,
            trace: record.span.clone(),
            held_until_done: Some(slot.clone()),
            journal: record
                .capture
                .as_ref()
                .map(|capture| capture.journal.clone()),
        };
        let response = run(deployment, scope, request).await;
        let response = match response {
            Ok(response) => response,
            Err(failure) => {
                if let Some(capture) = &mut record.capture {
                    capture.fault = Some(failure.to_string());
                }
                record.failed(Failure {
                    kind: failure.kind(),
                    guest_fault: failure.is_guest_fault(),
                });
                failure_response(deployment, &record.span, &request_id, &failure)
            }
        };
        record.answered(&response);
        if let Some(canary) = canary {
            // Counted when the record ends: a gRPC call's outcome is in its trailers.
            record.canary = Some((canary.clone(), self.me.clone()));
        }
        // The slot is held, and the request measured, until the body has been streamed.
        protocol::with_request_id(response, &request_id).map(|body| {
            SlotBody {
                body,
                _slot: slot,
                record,
            }
            .boxed_unsync()
        })
    }

    /// The canary of `name` here: its version and its window's (calls, failures) now.
    pub fn canary_window(&self, name: &str) -> Option<(String, u32, u32)> {
        let versions = self.table.versions(name)?;
        let canary = versions.canary.as_ref()?;
        let (calls, failures) = canary.window.lock().totals(Instant::now());
        Some((canary.deployment.record.version.clone(), calls, failures))
    }

    /// Count one canary outcome; start an automatic rollback when its window trips.
    fn record_canary_outcome(&self, service: &str, canary: &Canary, success: bool) {
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
            self.roll_back_canary_in_background(service.to_owned(), canary.deployment.clone());
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
            // In a cluster the rollback is the cluster's: every host drops the canary
            // (dropping it here alone would be undone by the next reconciliation).
            if let Some(directory) = services.directory.get() {
                if let Err(error) = directory
                    .roll_back_canary(&name, &canary.record.version, &reason)
                    .await
                {
                    tracing::error!(service = %name, %error, "automatic canary rollback failed");
                }
                return;
            }
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
        for service in self.table.services() {
            let versions = service.versions();
            for deployment in versions.deployments() {
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
                let current = self.table.versions(service.name());
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
        if !deployment.executor.info().health_check {
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
                let scope = RequestScope {
                    request_id: RequestId::parse(&format!("health-{:016x}", rand::random::<u64>()))
                        .unwrap_or_default(),
                    deadline: Deadline::after(Duration::from_millis(schedule.timeout_ms)),
                    trace: opentelemetry::Context::new(),
                    held_until_done: None,
                    journal: None,
                };
                // The code may have been swapped for optimised code since the last check.
                let Some(check) = deployment.executor.check_health(scope) else {
                    break;
                };
                let reported = match check.await {
                    Ok(health) => health,
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
        request_id: RequestId,
        deadline: Deadline,
    ) -> Option<Response<Body>> {
        let service = self.table.get(service)?;
        Some(self.serve(&service, request, request_id, deadline).await)
    }
}

/// The 503 of a request that found no slot: the queue is full (`timed_out` false) or
/// did not move before the request's deadline.
fn overloaded(service: &LiveService, request_id: &RequestId, timed_out: bool) -> Response<Body> {
    let (running, queued) = service.limiter.load();
    let why = if timed_out {
        "its queue did not move before the request's deadline"
    } else {
        "all of its slots and its queue are full"
    };
    tracing::warn!(service = %service.name(), %request_id, running, queued, "overloaded");
    let message = format!(
        "service `{}` is overloaded: {why} ({running} running, {queued} queued); retry later (request id {request_id})\n",
        service.name()
    );
    let mut response = protocol::text(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    protocol::with_request_id(response, request_id)
}

/// Run `request` on `deployment`: the id and the `Host` the guest sees are set, and
/// its executor runs it.
async fn run<B>(
    deployment: &Deployment,
    scope: RequestScope,
    request: Request<B>,
) -> Result<Response<Body>, GuestFailure>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (mut parts, body) = request.into_parts();
    protocol::set_request_id(&mut parts.headers, &scope.request_id);
    if !parts.headers.contains_key(HOST)
        && let Ok(value) = HeaderValue::from_str(&deployment.record.name)
    {
        parts.headers.insert(HOST, value);
    }
    let request = Request::from_parts(parts, request_body(body));
    deployment.executor.handle(scope, request).await
}

/// The 5xx that names why a guest failed, logged with whose fault it was.
fn failure_response(
    deployment: &Deployment,
    trace: &opentelemetry::Context,
    request_id: &RequestId,
    failure: &GuestFailure,
) -> Response<Body> {
    tracing::error!(
        service = %deployment.record.name,
        version = %deployment.record.version,
        %request_id,
        // The trace id is formatted only for a failure's log line.
        trace_id = %crate::telemetry::traces::trace_id(trace).unwrap_or_default(),
        error = %failure,
        fault = if failure.is_guest_fault() { "guest" } else { "host" },
        "request failed"
    );
    let message = format!(
        "service `{}` failed: {} (request id {request_id})\n",
        deployment.record.name,
        failure.public_message()
    );
    protocol::text(failure.status(), message)
}

/// A response body that holds the service's concurrency slot until it is done.
struct SlotBody {
    body: Body,
    _slot: Arc<Slot>,
    record: RequestRecord,
}

/// Metrics and the server span of one request, recorded when it is dropped (after
/// the response body has been streamed, or at once for an early answer).
struct RequestRecord {
    platform: Arc<Platform>,
    live: Arc<LiveService>,
    service: String,
    version: String,
    method: &'static str,
    status: u16,
    failure: Option<Failure>,
    started: Instant,
    span: opentelemetry::Context,
    /// A gRPC call to a service the manifest declares.
    rpc: Option<RpcCall>,
    /// The canary that served it, counted when the record ends.
    canary: Option<(Arc<Canary>, std::sync::Weak<Services>)>,
    /// What is kept of it for a recording, when its service records.
    capture: Option<Capture>,
    /// The deployment that served it, once one was chosen (its metrics are resolved).
    deployment: Option<Arc<Deployment>>,
}

/// Bytes of a body copied for a recording, up to [`crate::recording::MAX_BODY_BYTES`].
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Captured {
    fn add(&mut self, data: &[u8]) {
        let room = crate::recording::MAX_BODY_BYTES.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A request being recorded: its head, its body as the guest read it, and the
/// response as it went out.
struct Capture {
    mode: crate::recording::Mode,
    request_id: String,
    arrived: std::time::SystemTime,
    method: String,
    path: String,
    request_headers: http::HeaderMap,
    request_body: Arc<parking_lot::Mutex<Captured>>,
    response_headers: http::HeaderMap,
    response_body: Captured,
    /// What the guest receives from outside while it serves the request.
    journal: Arc<crate::recording::journal::Journal>,
    /// The fault in full, when the request failed.
    fault: Option<String>,
}

impl Capture {
    fn start<B>(
        mode: crate::recording::Mode,
        request: &Request<B>,
        request_id: &RequestId,
        request_body: Arc<parking_lot::Mutex<Captured>>,
    ) -> Self {
        Self {
            mode,
            request_id: request_id.to_string(),
            arrived: std::time::SystemTime::now(),
            method: request.method().to_string(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
            request_headers: request.headers().clone(),
            request_body,
            response_headers: http::HeaderMap::new(),
            response_body: Captured::default(),
            journal: crate::recording::journal::Journal::recording(),
            fault: None,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // What the request received is not needed any more (kept, or not wanted): an
        // idle instance or a guest still running must not hold it.
        self.journal.discard();
    }
}

pin_project_lite::pin_project! {
    /// A request body that copies what the guest reads of it, when it is recorded.
    struct TeeBody<B> {
        #[pin]
        body: B,
        copy: Option<Arc<parking_lot::Mutex<Captured>>>,
    }
}

impl<B> hyper::body::Body for TeeBody<B>
where
    B: hyper::body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let (Some(copy), Poll::Ready(Some(Ok(frame)))) = (&*this.copy, &polled)
            && let Some(data) = frame.data_ref()
        {
            copy.lock().add(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// What a record keeps of a gRPC call: its names and, once known, its status.
struct RpcCall {
    service: String,
    method: String,
    /// From the response's head (trailers-only) or its trailers.
    code: Option<crate::grpc::Code>,
    /// Whether the response body was read to its end.
    ended: bool,
}

impl RpcCall {
    /// The call's status: as sent, or `UNKNOWN` for a body that ended without one
    /// (the spec's reading), or `CANCELLED` when the client went away first.
    fn code(&self) -> crate::grpc::Code {
        crate::grpc::final_status(self.code, self.ended)
    }
}

impl RequestRecord {
    /// The request failed: counted at once against the service, kept for the metrics
    /// and the span.
    fn failed(&mut self, failure: Failure) {
        self.live.faults.count(failure.kind);
        self.failure = Some(failure);
    }

    /// The response's head is known: its status, and a gRPC call's status when it is
    /// there (a trailers-only answer) or implied (the host's own answers, or a
    /// service's HTTP error).
    fn answered(&mut self, response: &Response<Body>) {
        self.status = response.status().as_u16();
        if let Some(capture) = &mut self.capture {
            // Recording failures only, an answer that did not fail (and whose outcome
            // no trailer can still change) is not kept: stop copying it now.
            let settled_ok = self.status < 500 && self.failure.is_none() && self.rpc.is_none();
            if capture.mode == crate::recording::Mode::Failed && settled_ok {
                self.capture = None;
            } else {
                capture.response_headers = response.headers().clone();
            }
        }
        if let Some(rpc) = &mut self.rpc {
            rpc.code = crate::grpc::status_in(response.headers()).or_else(|| {
                (self.failure.is_some() || !response.status().is_success())
                    .then(|| crate::grpc::code_of_status(response.status()))
            });
        }
    }

    /// A frame of the response body went by: a gRPC call's trailers carry its status.
    fn saw_frame(&mut self, frame: &hyper::body::Frame<Bytes>) {
        if let Some(capture) = &mut self.capture
            && let Some(data) = frame.data_ref()
        {
            capture.response_body.add(data);
        }
        if let Some(rpc) = &mut self.rpc
            && rpc.code.is_none()
            && let Some(trailers) = frame.trailers_ref()
        {
            rpc.code = crate::grpc::status_in(trailers);
        }
    }

    /// The response body was read to its end.
    fn ended(&mut self) {
        if let Some(rpc) = &mut self.rpc {
            rpc.ended = true;
        }
    }

    /// Whether the request counts as a failure of its version, for the canary: a 5xx
    /// or a gRPC server-failure code, unless the host was to blame.
    fn failed_the_service(&self) -> bool {
        if self.failure.is_some_and(|failure| !failure.guest_fault) {
            return false;
        }
        match &self.rpc {
            Some(rpc) => rpc.code().is_server_failure(),
            None => is_failure_status(self.status),
        }
    }

    /// The deployment that serves the request (chosen once it is admitted).
    fn set_deployment(&mut self, deployment: &Arc<Deployment>) {
        let version = &deployment.record.version;
        if &self.version != version {
            self.version = version.clone();
            self.span
                .span()
                .set_attribute(KeyValue::new("shoal.version", self.version.clone()));
        }
        self.deployment = Some(deployment.clone());
    }

    /// Start measuring a request to `deployment` of `service`, under a server span
    /// that continues the client's trace.
    fn start<B>(
        platform: &Arc<Platform>,
        service: &Arc<LiveService>,
        deployment: &Deployment,
        request: &Request<B>,
        request_id: &RequestId,
    ) -> Self {
        service.faults.request();
        let telemetry = &platform.telemetry;
        let method = method_label(request.method());
        let version = deployment.record.version.clone();
        let parent = telemetry.tracing.extract(request.headers());
        let rpc = rpc_call(deployment, request);
        let span = telemetry.tracing.start_with(SpanKind::Server, &parent, || {
            let route = deployment.route().to_owned();
            let mut attributes = vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", request.uri().path().to_owned()),
                KeyValue::new("shoal.service", service.name().to_owned()),
                KeyValue::new("shoal.request_id", request_id.to_string()),
                KeyValue::new("shoal.version", version.clone()),
            ];
            let name = match &rpc {
                // OpenTelemetry's RPC conventions name the span `service/method`.
                Some(rpc) => {
                    attributes.extend(crate::telemetry::traces::rpc_attributes(
                        &rpc.service,
                        &rpc.method,
                    ));
                    format!("{}/{}", rpc.service, rpc.method)
                }
                None => format!("{method} {route}"),
            };
            attributes.push(KeyValue::new("http.route", route));
            (name, attributes)
        });
        Self {
            platform: platform.clone(),
            live: service.clone(),
            service: service.name().to_owned(),
            version,
            method,
            // Until the request is answered, it counts as refused.
            status: 503,
            failure: None,
            started: Instant::now(),
            span,
            rpc,
            canary: None,
            capture: None,
            deployment: None,
        }
    }

    /// Keep a recording of the request when its service's mode picks it.
    fn keep_recording(&mut self) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        // The host's own refusals (overload, a removed service) are not the service's
        // failures: recording them would let an overload push real faults out.
        if self.failure.is_some_and(|failure| !failure.guest_fault) {
            return;
        }
        let grpc_status = self.rpc.as_ref().map(|rpc| rpc.code());
        let failed = self.status >= 500
            || self.failure.is_some()
            || grpc_status.is_some_and(|code| code.is_server_failure());
        if !capture.mode.keeps(failed, rand::random::<f64>()) {
            return;
        }
        let redactor = crate::policy::redact::Redactor::process();
        let request_body = capture.request_body.lock();
        let message = |method: String, path: String, status, headers, captured: &Captured| {
            crate::recording::Message {
                method,
                path,
                status,
                headers: crate::recording::headers_of(headers, &redactor),
                body: crate::recording::body_of(&captured.bytes, &redactor),
                truncated: captured.truncated,
            }
        };
        let recording = crate::recording::Recording {
            id: crate::recording::new_id(),
            service: self.service.clone(),
            version: self.version.clone(),
            request_id: capture.request_id.clone(),
            at: humantime::format_rfc3339_millis(capture.arrived).to_string(),
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            request: message(
                capture.method.clone(),
                redactor.redact(&capture.path).into_owned(),
                0,
                &capture.request_headers,
                &request_body,
            ),
            response: message(
                String::new(),
                String::new(),
                self.status,
                &capture.response_headers,
                &capture.response_body,
            ),
            fault: capture
                .fault
                .as_deref()
                .map(|fault| redactor.redact(fault).into_owned())
                .or_else(|| self.failure.map(|failure| failure.kind.to_owned())),
            grpc_status: grpc_status.map(|code| code.number()),
            received: capture.journal.received(&redactor),
        };
        drop(request_body);
        let live = self.live.clone();
        self.platform
            .recordings
            .submit(recording, move || !live.is_removed());
    }
}

/// The gRPC call `request` is, if it is one to a gRPC service `deployment` declares
/// (only those are named in metrics: a client cannot invent new series).
fn rpc_call<B>(deployment: &Deployment, request: &Request<B>) -> Option<RpcCall> {
    if !crate::grpc::is_grpc(request.headers()) {
        return None;
    }
    let (service, method) = crate::grpc::method_of(request.uri().path())?;
    deployment
        .record
        .manifest
        .grpc
        .iter()
        .any(|declared| declared == service)
        .then(|| RpcCall {
            service: service.to_owned(),
            method: method.to_owned(),
            code: None,
            ended: false,
        })
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
        self.keep_recording();
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            let class = status_class(self.status);
            let labels = [&*self.service, &*self.version, self.method, class];
            let seconds = self.started.elapsed().as_secs_f64();
            match &self.deployment {
                Some(deployment) => deployment.request_series.observe(metrics, labels, seconds),
                None => {
                    metrics.requests.with_label_values(&labels).inc();
                    metrics
                        .request_duration
                        .with_label_values(&labels)
                        .observe(seconds);
                }
            }
            if let Some(failure) = self.failure {
                metrics
                    .errors
                    .with_label_values(&[&*self.service, failure.kind])
                    .inc();
            }
            if let Some(rpc) = &self.rpc {
                let code = rpc.code();
                // A method becomes a label once the service has answered it with
                // anything but UNIMPLEMENTED: made-up names stay `_OTHER`.
                let method = metrics.rpc_methods.label(
                    &self.service,
                    &rpc.method,
                    code != crate::grpc::Code::Unimplemented,
                );
                let number = code.number().to_string();
                metrics
                    .rpc_server_duration
                    .with_label_values(&[
                        &*self.service,
                        &*self.version,
                        "grpc",
                        &*rpc.service,
                        method,
                        &*number,
                    ])
                    .observe(self.started.elapsed().as_secs_f64());
            }
        }
        if let Some((canary, services)) = self.canary.take()
            && let Some(services) = services.upgrade()
        {
            services.record_canary_outcome(&self.service, &canary, !self.failed_the_service());
        }
        let span = self.span.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status),
        ));
        if let Some(failure) = self.failure {
            span.set_attribute(KeyValue::new("error.type", failure.kind));
        }
        if let Some(rpc) = &self.rpc {
            let code = rpc.code();
            span.set_attribute(KeyValue::new(
                "rpc.grpc.status_code",
                i64::from(code.number()),
            ));
            if code.is_server_failure() && !is_failure_status(self.status) {
                span.set_status(opentelemetry::trace::Status::error(code.name()));
            }
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
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => self.record.saw_frame(frame),
            Poll::Ready(None) => self.record.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
