//! WASIp3 services: one instance serves several requests at once.
//!
//! A component that exports `wasi:http/handler@0.3` is served through
//! `wasmtime-wasi-http`'s [`ProxyHandler`], which keeps the instances (workers) of a
//! deployment and hands each request to one with room for it. Shoal decides how much
//! room an instance has ([`Concurrency`]), when a request's time is up, and which
//! request a host call belongs to: `shoal:platform` and outbound `wasi:http` calls see
//! the request whose guest task is calling, found from the component model's async
//! call stack when the guest enters the host.
//!
//! Isolation: requests served by one instance share its memory. An instance that traps,
//! or whose requests run past their deadline, is dropped with every request it still
//! holds, and each of them fails with the reason; a failed instance never serves again.

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http_body_util::BodyExt as _;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::GuestTaskId;
use wasmtime::{CallHook, Store, StoreContextMut, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    self, ExpirationError, HandlerState, InstantiationError, ProxyHandler, ShouldAccept,
    TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};

use super::failure::{GuestFailure, classify, instantiate_failure};
use super::invoke::Invocation;
use super::{GuestState, Handler, InstanceLimits, Loaded, ServiceContext};
use crate::capabilities::PlatformCtx;
use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::protocol::RequestId;
use crate::serving_threads;
use crate::telemetry::TraceScope;

/// How long an instance with nothing to do is kept for the next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request whose instance failed waits to learn why.
const FAILURE_REPORT_WAIT: Duration = Duration::from_secs(1);

/// How many requests an instance of a WASIp3 service takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Requests one instance serves at once.
    pub per_instance: usize,
    /// Requests one instance serves in its life; then it ends once they are done.
    pub requests_per_instance: usize,
}

impl Concurrency {
    /// Whether an instance serving `running` requests, after `served` in all, takes
    /// another one.
    pub fn accept(&self, running: usize, served: usize) -> ShouldAccept {
        if served >= self.requests_per_instance {
            ShouldAccept::Never
        } else if running >= self.per_instance {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }
}

/// The requests a WASIp3 instance holds, by the guest task serving each: kept in its
/// store so a host call can be given the request of the task that makes it.
#[derive(Default)]
pub struct RequestsByTask {
    by_task: HashMap<GuestTaskId, Weak<PlatformCtx>>,
    current: Option<GuestTaskId>,
    /// When the guest last entered wasm (called in, or got back from the host), while
    /// it runs there: the instance's CPU time is the sum of these stretches.
    in_wasm_since: Option<Instant>,
}

impl RequestsByTask {
    /// Time in wasm not yet added to the service's CPU time (the instance ended in it).
    pub(crate) fn unmetered(&mut self) -> Option<Duration> {
        self.in_wasm_since.take().map(|since| since.elapsed())
    }

    fn insert(&mut self, task: GuestTaskId, request: &Arc<PlatformCtx>) {
        // Requests that are over (their response is gone) are forgotten as new ones come.
        if self.by_task.len() >= 64 {
            self.by_task.retain(|_, request| request.strong_count() > 0);
        }
        self.by_task.insert(task, Arc::downgrade(request));
    }
}

/// On every crossing between wasm and the host: add the stretch spent in wasm to the
/// service's CPU time, and on an entry into the host make the store's request state
/// that of the request whose task is calling (the root of the component model's async
/// call stack).
fn on_crossing(mut store: StoreContextMut<'_, GuestState>, hook: CallHook) -> wasmtime::Result<()> {
    meter_wasm_time(store.data_mut(), hook);
    if !matches!(hook, CallHook::CallingHost) {
        return Ok(());
    }
    follow_calling_request(store);
    Ok(())
}

/// A WASIp3 instance's CPU time: wasm runs between a call into it (or a return to it
/// from the host) and its next call into the host (or its return). Only one of an
/// instance's tasks runs at a time, so the stretches never overlap. Everything
/// between `CallingHost` and `ReturningFromHost` is left out: waiting, an epoch
/// yield (wasmtime yields inside a host libcall), and also the host's own work for
/// the call, which a WASIp2 request's meter includes (it times the whole poll).
/// Time the thread is preempted inside wasm is counted, as for WASIp2.
fn meter_wasm_time(state: &mut GuestState, hook: CallHook) {
    let Some(requests) = state.requests.as_mut() else {
        return;
    };
    match hook {
        CallHook::CallingWasm | CallHook::ReturningFromHost => {
            requests.in_wasm_since = Some(Instant::now());
        }
        CallHook::CallingHost | CallHook::ReturningFromWasm => {
            if let Some(spent) = requests.unmetered() {
                state.request.service.meter.add_cpu(spent);
            }
        }
    }
}

/// Make the store's request state that of the request whose guest task is running.
fn follow_calling_request(mut store: StoreContextMut<'_, GuestState>) {
    // Outside a guest task (instantiation, the event loop's own work) nothing changes.
    let Some(root) = store.async_call_stack().ok().and_then(|stack| stack.last()) else {
        return;
    };
    let state = store.data_mut();
    let Some(requests) = state.requests.as_mut() else {
        return;
    };
    if requests.current == Some(root) {
        return;
    }
    let Some(request) = requests.by_task.get(&root).and_then(Weak::upgrade) else {
        return;
    };
    requests.current = Some(root);
    state.prepare(request);
}

/// What one instance's requests and its expiry share.
struct InstanceShared {
    /// The latest deadline of the requests it accepted: past it, none of them may run.
    latest_deadline: Mutex<Option<Instant>>,
    /// Why it failed, once it has: each request it held is told.
    failure: tokio::sync::watch::Sender<Option<Arc<GuestFailure>>>,
}

impl InstanceShared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            latest_deadline: Mutex::new(None),
            failure: tokio::sync::watch::channel(None).0,
        })
    }

    fn extend_deadline(&self, deadline: Instant) {
        let mut latest = self.latest_deadline.lock();
        if latest.is_none_or(|latest| latest < deadline) {
            *latest = Some(deadline);
        }
    }
}

/// A request on its way to an instance.
pub struct Admitted {
    request: Arc<PlatformCtx>,
    deadline: Deadline,
    /// The instance that takes it, once one has.
    instance: Arc<OnceLock<Arc<InstanceShared>>>,
}

/// One instance: how much it takes, and what its requests share.
pub struct Worker {
    concurrency: Concurrency,
    shared: Arc<InstanceShared>,
    service: Arc<ServiceContext>,
    timeout: Duration,
    memory_limit: usize,
}

impl WorkerState for Worker {
    type StoreData = GuestState;
    type RequestData = Admitted;

    fn should_accept_request(&self, running: usize, served: usize) -> ShouldAccept {
        self.concurrency.accept(running, served)
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, GuestState>,
        admitted: Admitted,
        task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        let _ = admitted.instance.set(self.shared.clone());
        self.shared.extend_deadline(admitted.deadline.instant());
        if let Some(requests) = store.data_mut().requests.as_mut() {
            requests.insert(task, &admitted.request);
        }
        Box::pin(tokio::time::sleep_until(admitted.deadline.into()))
    }

    fn drop(&self, store: Store<GuestState>, result: wasmtime::Result<()>) {
        let Err(error) = result else {
            return;
        };
        let output = &store.data().output;
        output.stdout.finish();
        output.stderr.finish();
        let past_deadline = self
            .shared
            .latest_deadline
            .lock()
            .is_some_and(|deadline| deadline <= Instant::now());
        let failure = if past_deadline {
            GuestFailure::Deadline(self.timeout)
        } else {
            classify(error, self.timeout, self.memory_limit).with_stderr(output.stderr.tail())
        };
        tracing::warn!(
            service = %self.service.name,
            %failure,
            "an instance of a WASIp3 service failed; the requests it held fail with it"
        );
        self.shared.failure.send_replace(Some(Arc::new(failure)));
    }
}

/// When an instance ends: after being idle for [`IDLE_TIMEOUT`], or when the latest
/// deadline of its requests has passed while it still works for them. Polled outside
/// the store's event loop, so it fires even when a guest keeps the loop busy.
pub struct Expiry {
    shared: Arc<InstanceShared>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        since: Instant,
    ) -> Poll<()> {
        let this = self.get_mut();
        let at = match status {
            WorkerStatus::Idle => since + IDLE_TIMEOUT,
            WorkerStatus::Requests | WorkerStatus::PostReturn => {
                match *this.shared.latest_deadline.lock() {
                    Some(deadline) => deadline,
                    None => return Poll::Pending,
                }
            }
        };
        let at = tokio::time::Instant::from_std(at);
        if this.sleep.deadline() != at {
            this.sleep.as_mut().reset(at);
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// What a WASIp3 deployment is made of; makes its instances.
#[derive(Clone)]
pub struct Instances {
    /// Its code (swapped from baseline to optimised code while it runs).
    pub code: Arc<arc_swap::ArcSwap<Loaded>>,
    /// The service.
    pub service: Arc<ServiceContext>,
    /// What bounds each instance.
    pub limits: InstanceLimits,
    /// Registry, caller, telemetry.
    pub platform: Arc<Platform>,
    /// How many requests an instance takes.
    pub concurrency: Concurrency,
    /// A request's time limit.
    pub timeout: Duration,
}

impl Instances {
    /// The state a new instance starts with, before any request: the service's own,
    /// with no request id and a deadline of one request's time.
    fn instance_context(&self) -> Arc<PlatformCtx> {
        Arc::new(PlatformCtx {
            service: self.service.clone(),
            platform: self.platform.clone(),
            request_id: RequestId::none(),
            deadline: Deadline::after(self.timeout),
            trace: TraceScope::new(opentelemetry::Context::new()),
            open_watches: Default::default(),
            transactions: crate::capabilities::store::TransactionAccount::new(
                self.limits.budget.clone(),
            ),
            journal: None,
        })
    }

    async fn instantiate_within_timeout(
        &self,
        store: &mut Store<GuestState>,
        pre: &wasmtime_wasi_http::p3::bindings::ServicePre<GuestState>,
    ) -> wasmtime::Result<wasmtime_wasi_http::p3::bindings::Service> {
        // WASIp3 instances have a pool of their own (their engine's), so idle WASIp2
        // instances are no help when it is full.
        let instantiate = pre.instantiate_async(&mut *store);
        match tokio::time::timeout(self.timeout, instantiate).await {
            Ok(service) => service,
            Err(_) => Err(wasmtime::format_err!(
                "instantiation did not finish within {:?}",
                self.timeout
            )),
        }
    }
}

impl HandlerState for Instances {
    type StoreData = GuestState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<handler::Instance<GuestState, Expiry, Worker>> {
        let loaded = self.code.load_full();
        let Handler::Concurrent(pre) = &loaded.handler else {
            return Err(wasmtime::format_err!(
                "the deployment's code no longer exports a WASIp3 handler"
            ));
        };
        let started = Instant::now();
        let mut store = Store::new(
            pre.engine(),
            GuestState::new(self.instance_context(), self.limits.clone()),
        );
        store.limiter(|state| &mut state.limits);
        store.data_mut().requests = Some(RequestsByTask::default());
        // Yield on every tick so the expiry, polled between yields, can end an
        // instance whose guest never waits.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.call_hook(on_crossing);
        let service = self.instantiate_within_timeout(&mut store, pre).await?;
        self.service.meter.instance_created();
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            metrics
                .instantiation
                .with_label_values(&[&*self.service.name])
                .observe(started.elapsed().as_secs_f64());
        }
        let shared = InstanceShared::new();
        Ok(handler::Instance {
            store,
            proxy: handler::Proxy::P3(service),
            view: <GuestState as WasiHttpView>::http,
            expiration: Expiry {
                shared: shared.clone(),
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
            },
            state: Worker {
                concurrency: self.concurrency,
                shared,
                service: self.service.clone(),
                timeout: self.timeout,
                memory_limit: self.limits.memory_bytes,
            },
        })
    }
}

/// The instances of one WASIp3 deployment, and the requests waiting for room in them.
///
/// Kept per lane ([`serving_threads::lane`]): requests that arrive on one gateway
/// serving thread are served by instances whose tasks run on that thread, so a
/// request and its instance never wait on each other across threads. Requests from
/// the rest of the host (health checks, deliveries) have a lane of their own. A
/// lane's dispatcher is made when its first request comes.
pub struct ConcurrentService {
    instances: Instances,
    lanes: Box<[OnceLock<ProxyHandler<Instances>>]>,
}

impl ConcurrentService {
    /// Serve a deployment's requests with instances of its (WASIp3) code.
    pub fn new(instances: Instances) -> Self {
        Self {
            instances,
            lanes: (0..=serving_threads::MAX_THREADS)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The dispatcher of the calling thread's lane.
    fn lane(&self) -> &ProxyHandler<Instances> {
        self.lanes[serving_threads::lane()]
            .get_or_init(|| ProxyHandler::new(self.instances.clone()))
    }

    /// Hand `request` to an instance with room for it (starting one if none has) and
    /// wait for its response head, at most until the invocation's deadline.
    pub async fn handle<B>(
        &self,
        invocation: Invocation,
        request: hyper::Request<B>,
    ) -> Result<hyper::Response<ConcurrentBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let budget = invocation.deadline.remaining();
        let telemetry = &invocation.platform.telemetry;
        let guest_span =
            telemetry
                .tracing
                .start_with(SpanKind::Internal, &invocation.trace, || {
                    ("shoal.guest".into(), Vec::new())
                });
        let request_state = Arc::new(invocation.platform_ctx());
        let instance = Arc::new(OnceLock::new());
        let admitted = Admitted {
            request: request_state.clone(),
            deadline: invocation.deadline,
            instance: instance.clone(),
        };
        let request = absolute(request).map(|body| body.map_err(Into::into).boxed_unsync());
        let handled = tokio::time::timeout_at(
            invocation.deadline.into(),
            self.lane().handle(admitted, request),
        )
        .await;
        let outcome = match handled {
            Ok(Ok(response)) => Ok(response.map(|body| ConcurrentBody {
                body,
                _request: request_state,
                _held_until_done: invocation.held_until_done,
            })),
            Ok(Err(error)) => Err(failure_of(error, &instance, budget, &invocation.limits).await),
            Err(_) => Err(GuestFailure::Deadline(budget)),
        };
        if let Err(failure) = &outcome {
            guest_span
                .span()
                .set_status(opentelemetry::trace::Status::error(failure.to_string()));
        }
        guest_span.span().end();
        outcome
    }
}

/// What an error from the handler means for the request.
async fn failure_of(
    error: wasmtime::Error,
    instance: &OnceLock<Arc<InstanceShared>>,
    budget: Duration,
    limits: &InstanceLimits,
) -> GuestFailure {
    if let Some(failed) = error.downcast_ref::<InstantiationError<Admitted>>() {
        return instantiate_failure(&failed.error);
    }
    if error.downcast_ref::<ExpirationError>().is_some() {
        return GuestFailure::Deadline(budget);
    }
    if error.downcast_ref::<TrapOrPanicError>().is_some() {
        // The instance ended under the request: its worker reports why as it drops it.
        let Some(shared) = instance.get() else {
            return GuestFailure::Host("the instance for the request ended before it".into());
        };
        let mut reported = shared.failure.subscribe();
        let waited = tokio::time::timeout(
            FAILURE_REPORT_WAIT,
            reported.wait_for(|failure| failure.is_some()),
        )
        .await;
        return match waited {
            Ok(Ok(failure)) => failure
                .as_deref()
                .cloned()
                .unwrap_or_else(|| GuestFailure::trap("the instance failed".into())),
            _ => GuestFailure::Host("the instance serving the request stopped".into()),
        };
    }
    if let Some(code) =
        error.downcast_ref::<wasmtime_wasi_http::p3::bindings::http::types::ErrorCode>()
    {
        return GuestFailure::ErrorCode(format!("{code:?}"));
    }
    classify(error, budget, limits.memory_bytes)
}

/// The request with a scheme and authority (from its `Host` header), as a WASIp3
/// guest expects of an incoming request.
fn absolute<B>(request: hyper::Request<B>) -> hyper::Request<B> {
    let (mut parts, body) = request.into_parts();
    if parts.uri.authority().is_none() {
        let authority = parts
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<Authority>().ok());
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority.unwrap_or_else(|| Authority::from_static("localhost")));
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
    }
    hyper::Request::from_parts(parts, body)
}

/// A WASIp3 response body. It keeps its request's state alive while it streams, so the
/// guest task that writes it is still seen as serving that request.
pub struct ConcurrentBody {
    body: wasmtime_wasi_http::WasiBody,
    _request: Arc<PlatformCtx>,
    _held_until_done: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl hyper::body::Body for ConcurrentBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(concurrency: Concurrency, running: usize, served: usize) -> &'static str {
        match concurrency.accept(running, served) {
            ShouldAccept::Yes => "yes",
            ShouldAccept::No => "no",
            ShouldAccept::Never => "never",
        }
    }

    #[test]
    fn an_instance_takes_requests_up_to_its_concurrency_and_its_lifetime() {
        let concurrency = Concurrency {
            per_instance: 2,
            requests_per_instance: 5,
        };
        assert_eq!(accepts(concurrency, 0, 0), "yes");
        assert_eq!(accepts(concurrency, 1, 3), "yes");
        assert_eq!(accepts(concurrency, 2, 3), "no");
        assert_eq!(accepts(concurrency, 0, 5), "never");
        assert_eq!(accepts(concurrency, 1, 7), "never");
    }

    #[test]
    fn one_at_a_time_is_never_more_than_one() {
        let concurrency = Concurrency {
            per_instance: 1,
            requests_per_instance: 1,
        };
        assert_eq!(accepts(concurrency, 0, 0), "yes");
        assert_eq!(accepts(concurrency, 1, 1), "never");
    }

    #[test]
    fn a_request_without_authority_gets_its_host_header_as_one() {
        let request = hyper::Request::get("/orders?id=7")
            .header("host", "shop.internal:8080")
            .body(())
            .expect("a valid request");
        let request = absolute(request);
        assert_eq!(
            request.uri().to_string(),
            "http://shop.internal:8080/orders?id=7"
        );
        let request = hyper::Request::get("/x")
            .header("host", "not a host")
            .body(())
            .expect("a valid request");
        assert_eq!(absolute(request).uri().to_string(), "http://localhost/x");
    }
}
