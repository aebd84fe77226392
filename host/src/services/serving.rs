//! Serving a request: admission through the service's limiter, the choice between
//! stable and canary, fault counting and automatic canary rollback. Also the
//! in-process path for calls between services, registration and health checks.

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::limiter::Slot;
use super::table::{Deployment, ServiceEntry};
use super::{LOCAL_LEASE, Services};
use crate::caller::transport::LocalDispatch;
use crate::gateway::{self, GatewayBody};
use crate::registry::health::HealthTracker;
use crate::registry::{Endpoint, Health, Instance};
use crate::telemetry::metrics::status_class;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};

impl Services {
    /// Serve `request` with `entry`: wait for a slot (or answer 503 at once when the
    /// queue is full), pick stable or canary, run it, and count the outcome.
    pub async fn serve<B>(
        &self,
        entry: &ServiceEntry,
        request: Request<B>,
        request_id: &str,
        deadline: Instant,
    ) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let shared = &entry.shared;
        shared.faults.request();
        let telemetry = &self.platform.telemetry;
        let started = Instant::now();
        // Bounded label: any other token a client sends counts as `OTHER`.
        let method = match *request.method() {
            http::Method::GET
            | http::Method::HEAD
            | http::Method::POST
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::PATCH
            | http::Method::OPTIONS
            | http::Method::CONNECT
            | http::Method::TRACE => request.method().to_string(),
            _ => "OTHER".to_owned(),
        };
        let parent = telemetry.tracing.extract(request.headers());
        let span = telemetry.tracing.start_with(SpanKind::Server, &parent, || {
            let route = entry.route().to_owned();
            (
                format!("{method} {route}"),
                vec![
                    KeyValue::new("http.request.method", method.clone()),
                    KeyValue::new("http.route", route),
                    KeyValue::new("url.path", request.uri().path().to_owned()),
                    KeyValue::new("shoal.service", entry.name().to_owned()),
                    KeyValue::new("shoal.request_id", request_id.to_owned()),
                ],
            )
        });
        let mut record = RequestRecord {
            platform: self.platform.clone(),
            service: entry.name().to_owned(),
            version: entry.stable.record.version.clone(),
            method,
            status: 503,
            failure: None,
            started,
            span: span.clone(),
        };
        // Waiting in the queue counts against the request's time.
        let queue_deadline = deadline.min(Instant::now() + entry.stable.timeout);
        let slot = match tokio::time::timeout_at(queue_deadline.into(), shared.limiter.acquire())
            .await
        {
            Ok(Ok(slot)) => slot,
            outcome => {
                shared.faults.count("overload");
                let (running, queued) = shared.limiter.load();
                let why = if outcome.is_err() {
                    "its queue did not move before the request's deadline"
                } else {
                    "all of its slots and its queue are full"
                };
                tracing::warn!(service = %entry.name(), request_id, running, queued, "overloaded");
                let message = format!(
                    "service `{}` is overloaded: {why} ({running} running, {queued} queued); retry later (request id {request_id})\n",
                    entry.name()
                );
                let mut response = gateway::text(StatusCode::SERVICE_UNAVAILABLE, message);
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                record.failure = Some("overload");
                drop(record);
                return gateway::with_request_id(response, request_id);
            }
        };

        let draw = (rand::random::<u32>() % 100) as u8;
        let (deployment, canary) = entry.pick(draw);
        let deadline = deadline.min(Instant::now() + deployment.timeout);
        record.version = deployment.record.version.clone();
        span.span()
            .set_attribute(KeyValue::new("shoal.version", record.version.clone()));
        let (response, failure) = gateway::serve_deployment(
            &self.platform,
            deployment,
            request,
            request_id,
            deadline,
            span,
        )
        .await;
        if let Some(kind) = failure {
            shared.faults.count(kind);
        }
        record.status = response.status().as_u16();
        record.failure = failure;
        if let Some(canary) = canary {
            let now = Instant::now();
            let success = !response.status().is_server_error();
            let tripped = {
                let mut window = canary.window.lock();
                window.record(success, now);
                canary
                    .auto_rollback
                    .as_ref()
                    .is_some_and(|rule| window.exceeds(rule.max_error_rate, rule.min_requests, now))
            };
            if tripped && !canary.tripped.swap(true, Ordering::SeqCst) {
                self.roll_back_canary_in_background(
                    entry.name().to_owned(),
                    canary.deployment.record.version.clone(),
                );
            }
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

    fn roll_back_canary_in_background(&self, name: String, version: String) {
        let Some(services) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let reason = format!("canary {version} exceeded its error-rate threshold");
            // Only roll back the canary that tripped, not a newer one.
            let still_current = services
                .table
                .entry(&name)
                .and_then(|entry| {
                    entry
                        .canary
                        .as_ref()
                        .map(|c| c.deployment.record.version.clone())
                })
                .is_some_and(|current| current == version);
            if still_current && let Err(error) = services.abort_canary(&name, &reason).await {
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
            tags: Vec::new(),
            health: deployment.context.health.lock().effective(),
        };
        if let Err(error) = self.platform.registry.register(instance, LOCAL_LEASE).await {
            tracing::error!(service = %deployment.record.name, %error, "cannot register the service");
        }
    }

    /// Renew every local registration's lease, re-registering lost ones.
    pub async fn renew_leases(&self) {
        for entry in self.table.entries() {
            let deployment = &entry.stable;
            if self
                .platform
                .registry
                .renew(&deployment.context.instance_id)
                .await
                .is_err()
            {
                self.register(deployment).await;
            }
        }
    }

    /// Run the component's exported health check on the manifest's schedule, and
    /// record the verdicts in the registry, until the deployment is retired.
    pub(super) fn start_health_checks(&self, deployment: &Arc<Deployment>) {
        let Some(indices) = deployment.loaded.health_check.clone() else {
            return;
        };
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
                let verdict = crate::runtime::invoke::check_health(
                    &deployment.loaded.pre,
                    &indices,
                    deployment.context.clone(),
                    platform.clone(),
                    Duration::from_millis(schedule.timeout_ms),
                )
                .await;
                let reported = match verdict {
                    Ok(crate::bindings::registry::Health::Serving) => Health::Serving,
                    Ok(crate::bindings::registry::Health::Degraded) => Health::Degraded,
                    Ok(crate::bindings::registry::Health::NotServing) => Health::NotServing,
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
        deadline: Instant,
    ) -> Option<Response<GatewayBody>> {
        let entry = self.table.entry(service)?;
        let request_id = gateway::request_id(&request);
        Some(self.serve(&entry, request, &request_id, deadline).await)
    }
}

/// A response body that holds the service's concurrency slot until it is done.
struct SlotBody {
    body: GatewayBody,
    _slot: Slot,
    _record: RequestRecord,
}

/// Metrics and the server span of one request, recorded when it is dropped (after
/// the response body has been streamed, or at once for an early answer).
struct RequestRecord {
    platform: Arc<crate::platform::Platform>,
    service: String,
    version: String,
    method: String,
    status: u16,
    failure: Option<&'static str>,
    started: Instant,
    span: opentelemetry::Context,
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            let class = status_class(self.status);
            let labels = [&*self.service, &*self.version, &*self.method, class];
            metrics.requests.with_label_values(&labels).inc();
            metrics
                .request_duration
                .with_label_values(&labels)
                .observe(self.started.elapsed().as_secs_f64());
            if let Some(kind) = self.failure {
                metrics
                    .errors
                    .with_label_values(&[&*self.service, kind])
                    .inc();
            }
        }
        let span = self.span.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status),
        ));
        if let Some(kind) = self.failure {
            span.set_attribute(KeyValue::new("error.type", kind));
        }
        if self.status >= 500 {
            span.set_status(opentelemetry::trace::Status::error(
                self.failure.unwrap_or("5xx"),
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
