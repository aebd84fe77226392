//! Run one HTTP request through a fresh instance of a service.

use bytes::Bytes;
use futures::FutureExt as _;
use http::StatusCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use wasmtime::component::Resource;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::limits::{HostMemoryExhausted, InstanceMemoryExceeded};
use super::reuse::{InstancePool, Reusable};
use super::{GuestState, InstanceLimits, ServiceContext};
use crate::capabilities::{HostFault, PlatformCtx};
use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::telemetry::TraceScope;
use opentelemetry::Context;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};

/// How a request to a guest failed. A failure ends that request only.
#[derive(Debug, Error)]
pub enum GuestFailure {
    /// No instance could be created (e.g. the instance pool is exhausted).
    #[error("could not start an instance: {0}")]
    Instantiate(String),
    /// The guest trapped (including Rust panics, which abort as a trap). `stderr` is
    /// the end of what it wrote to standard error (a panic's message), for the log.
    #[error("the service trapped: {reason}{}", stderr_suffix(.stderr))]
    Trap {
        /// The trap.
        reason: String,
        /// The guest's last standard-error lines, if any.
        stderr: Option<String>,
    },
    /// The guest tried to grow its memory past its limit.
    #[error("the service exceeded its memory limit of {0} MiB")]
    MemoryLimit(usize),
    /// The guest's memory growth did not fit the host-wide memory budget.
    #[error("the host's memory budget is exhausted; retry later")]
    HostMemory,
    /// The guest overflowed its wasm stack (runaway recursion).
    #[error("the service overflowed its stack")]
    StackOverflow,
    /// The guest ran past its execution deadline.
    #[error("the service exceeded its execution time limit of {0:?}")]
    Deadline(Duration),
    /// The guest returned without ever sending a response.
    #[error("the service returned without sending a response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code instead of a response.
    #[error("the service answered with an error: {0:?}")]
    ErrorCode(ErrorCode),
    /// The host failed while serving the request (a host call's own failure, a
    /// panicked host task): not the service's fault, and not counted as its fault.
    #[error("the host failed while serving the request: {0}")]
    Host(String),
}

impl GuestFailure {
    /// The status the gateway answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            GuestFailure::Instantiate(_) | GuestFailure::HostMemory => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GuestFailure::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            GuestFailure::ErrorCode(_) => StatusCode::BAD_GATEWAY,
            GuestFailure::Trap { .. }
            | GuestFailure::MemoryLimit(_)
            | GuestFailure::StackOverflow
            | GuestFailure::NoResponse
            | GuestFailure::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short name of the failure, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestFailure::Instantiate(_) => "instantiate",
            GuestFailure::Trap { .. } => "trap",
            GuestFailure::MemoryLimit(_) => "memory",
            GuestFailure::HostMemory => "host-memory",
            GuestFailure::StackOverflow => "stack",
            GuestFailure::Deadline(_) => "timeout",
            GuestFailure::NoResponse => "no-response",
            GuestFailure::ErrorCode(_) => "error-response",
            GuestFailure::Host(_) => "host",
        }
    }

    /// What a client is told: the fault without the host's internal details and
    /// without the guest's output (those go to the log).
    pub fn public_message(&self) -> String {
        match self {
            GuestFailure::Instantiate(_) => "could not start an instance".into(),
            GuestFailure::Host(_) => "the host failed while serving the request".into(),
            GuestFailure::Trap { reason, .. } => format!("the service trapped: {reason}"),
            other => other.to_string(),
        }
    }

    fn trap(reason: String) -> Self {
        GuestFailure::Trap {
            reason,
            stderr: None,
        }
    }

    /// Attach what the guest last wrote to standard error to a trap.
    fn with_stderr(self, tail: String) -> Self {
        match self {
            GuestFailure::Trap { reason, .. } if !tail.is_empty() => GuestFailure::Trap {
                reason,
                stderr: Some(tail),
            },
            other => other,
        }
    }

    /// Whether the service is to blame (counted against it, its canary and breakers
    /// of its callers) rather than the host.
    pub fn is_guest_fault(&self) -> bool {
        !matches!(self, GuestFailure::Host(_) | GuestFailure::HostMemory)
    }
}

fn stderr_suffix(stderr: &Option<String>) -> String {
    match stderr {
        Some(tail) => format!("; its last standard error: {tail}"),
        None => String::new(),
    }
}

/// The rest of a request's guest once its response head is out.
type GuestFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), GuestFailure>> + Send>>;

/// A response body that also runs its guest: each read first lets the guest go on
/// (writing more of the body), in the task that reads it. When the body ends, or
/// is dropped unread, a guest that is not done yet continues in a task of its own,
/// so it always runs to its end or its deadline, as it would have alone.
pub struct GuestBody {
    body: HyperOutgoingBody,
    guest: Option<GuestFuture>,
}

impl GuestBody {
    /// Let an unfinished guest run on in a task of its own.
    fn detach(&mut self) {
        if let Some(guest) = self.guest.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(guest);
        }
    }
}

impl hyper::body::Body for GuestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(guest) = this.guest.as_mut()
            && guest.as_mut().poll(cx).is_ready()
        {
            // Its outcome was recorded on its span; the head is long gone.
            this.guest = None;
        }
        let frame = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(None)) {
            this.detach();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Marker error raised from the epoch callback when a request's time is up.
#[derive(Debug, Error)]
#[error("execution deadline exceeded")]
struct DeadlineExceeded;

/// Who serves a request, for whom, until when, in which trace.
pub struct Invocation {
    /// The service's own context.
    pub service: Arc<ServiceContext>,
    /// What bounds its instances.
    pub limits: InstanceLimits,
    /// Registry, caller, telemetry.
    pub platform: Arc<Platform>,
    /// The request id.
    pub request_id: Arc<str>,
    /// When the request must be done.
    pub deadline: Deadline,
    /// The request's span.
    pub trace: Context,
    /// Held until the guest has finished with the request (not only until its response
    /// was sent), then dropped: the service's concurrency slot, so a guest that runs
    /// on after its answer still counts against its limit.
    pub held_until_done: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Invocation {
    fn platform_ctx(&self) -> PlatformCtx {
        PlatformCtx {
            service: self.service.clone(),
            platform: self.platform.clone(),
            request_id: self.request_id.clone(),
            deadline: self.deadline,
            trace: TraceScope::new(self.trace.clone()),
            open_watches: Default::default(),
        }
    }
}

/// An instance ready to take a request: a reused one, or a store to instantiate in.
struct Prepared {
    store: Store<GuestState>,
    reused: Option<(Proxy, u32)>,
}

/// Instantiate `pre` in a fresh store (or take an idle instance from `pool`) and hand
/// it `request`.
///
/// Returns as soon as the guest has sent its response head; a guest still writing its
/// body runs on while the body is read (see [`GuestBody`]) until it finishes or its
/// deadline hits.
pub async fn handle<B>(
    pre: &ProxyPre<GuestState>,
    pool: Option<Arc<InstancePool>>,
    invocation: Invocation,
    request: hyper::Request<B>,
) -> Result<hyper::Response<GuestBody>, GuestFailure>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    // A reused instance keeps its store; only the per-request state and the deadline
    // are renewed.
    // An idle instance of code that has since been swapped out is not reused.
    let idle = pool
        .as_ref()
        .and_then(|pool| pool.take())
        .filter(|idle| wasmtime::Engine::same(idle.store.engine(), pre.engine()));
    let mut prepared = match idle {
        Some(Reusable {
            mut store,
            proxy,
            uses,
        }) => {
            store.data_mut().prepare(invocation.platform_ctx());
            arm_deadline(&mut store, invocation.deadline);
            Prepared {
                store,
                reused: Some((proxy, uses)),
            }
        }
        None => Prepared {
            store: new_store(pre.engine(), &invocation),
            reused: None,
        },
    };

    let (sender, mut receiver) = tokio::sync::oneshot::channel();
    let (incoming, outparam) = {
        let mut http = prepared.store.data_mut().http();
        let incoming = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(|error| GuestFailure::Host(format!("{error:#}")))?;
        let outparam = http
            .new_response_outparam(sender)
            .map_err(|error| GuestFailure::Host(format!("{error:#}")))?;
        (incoming, outparam)
    };

    // The guest runs in the caller's task, and then in its response body's: no task
    // of its own and no other worker thread woken for it, and each chunk it writes
    // is taken by the same task that writes it to the socket.
    // A panic in the host while it serves the guest fails this request only.
    let mut guest: GuestFuture = Box::pin(
        std::panic::AssertUnwindSafe(run_guest(
            pre.clone(),
            pool,
            invocation,
            prepared,
            incoming,
            outparam,
        ))
        .catch_unwind()
        .map(|outcome| {
            outcome.unwrap_or_else(|_| {
                Err(GuestFailure::Host(
                    "the host panicked while serving the request".into(),
                ))
            })
        }),
    );
    let head = tokio::select! {
        biased;
        head = &mut receiver => head,
        finished = &mut guest => {
            // Done: the head was sent by now, or it never will be (even if a leaked
            // handle keeps its sender alive).
            return match (receiver.try_recv(), finished) {
                (Ok(Ok(response)), _) => Ok(response.map(|body| GuestBody { body, guest: None })),
                (Ok(Err(code)), _) => Err(GuestFailure::ErrorCode(code)),
                (Err(_), Ok(())) => Err(GuestFailure::NoResponse),
                (Err(_), Err(failure)) => Err(failure),
            };
        }
    };
    match head {
        // The head is out; the body runs the rest of the guest.
        Ok(Ok(response)) => Ok(response.map(|body| GuestBody {
            body,
            guest: Some(guest),
        })),
        // An error instead of a response: the guest is stopped (dropped here).
        Ok(Err(code)) => Err(GuestFailure::ErrorCode(code)),
        // The outparam was dropped unset: the guest's outcome says why.
        Err(_) => match guest.await {
            Ok(()) => Err(GuestFailure::NoResponse),
            Err(failure) => Err(failure),
        },
    }
}

/// The guest's side of one request: instantiate (unless reused), call the incoming
/// handler within the deadline, and give a cleanly finished instance back to `pool`.
async fn run_guest(
    pre: ProxyPre<GuestState>,
    pool: Option<Arc<InstancePool>>,
    invocation: Invocation,
    prepared: Prepared,
    incoming: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
) -> Result<(), GuestFailure> {
    let Prepared { mut store, reused } = prepared;
    let telemetry = &invocation.platform.telemetry;
    let trace = &invocation.trace;
    let budget = invocation.deadline.remaining();
    let memory_limit = invocation.limits.memory_bytes;
    let guest_span = telemetry.tracing.start_with(SpanKind::Internal, trace, || {
        ("shoal.guest".into(), Vec::new())
    });
    let run = async {
        let (proxy, uses) = match reused {
            Some(reused) => reused,
            None => (instantiate(&pre, &mut store, &invocation).await?, 0),
        };
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, outparam)
            .await
            .map_err(|error| classify(error, budget, memory_limit))?;
        Ok((proxy, uses))
    };
    let result = {
        let run = std::pin::pin!(run);
        let run = super::cpu::CpuMetered::new(run, &invocation.service.meter);
        match tokio::time::timeout_at(invocation.deadline.into(), run).await {
            Ok(result) => result,
            Err(_) => Err(GuestFailure::Deadline(budget)),
        }
    };
    let output = &store.data().output;
    output.stdout.finish();
    output.stderr.finish();
    let result = result.map_err(|failure| failure.with_stderr(output.stderr.tail()));
    // Only an instance that finished cleanly may serve again.
    let result = result.map(|(proxy, uses)| {
        if let Some(pool) = &pool {
            pool.put(Reusable { store, proxy, uses });
        }
    });
    if let Err(failure) = &result {
        guest_span
            .span()
            .set_status(opentelemetry::trace::Status::error(failure.to_string()));
    }
    guest_span.span().end();
    result
}

/// Instantiate `pre` in `store`, measured and traced.
async fn instantiate(
    pre: &ProxyPre<GuestState>,
    store: &mut Store<GuestState>,
    invocation: &Invocation,
) -> Result<Proxy, GuestFailure> {
    let telemetry = &invocation.platform.telemetry;
    let started = Instant::now();
    let span = telemetry
        .tracing
        .start_with(SpanKind::Internal, &invocation.trace, || {
            ("shoal.instantiate".into(), Vec::new())
        });
    let mut proxy = pre.instantiate_async(&mut *store).await;
    if let Err(error) = &proxy
        && error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        && invocation.limits.idle.evict_all() > 0
    {
        // Every allocator slot is taken and some by idle reusable instances: take
        // those back and try once more.
        proxy = pre.instantiate_async(&mut *store).await;
    }
    span.span().end();
    if proxy.is_ok() {
        invocation.service.meter.instance_created();
    }
    if telemetry.metrics.enabled() {
        telemetry
            .metrics
            .instantiation
            .with_label_values(&[&*invocation.service.name])
            .observe(started.elapsed().as_secs_f64());
    }
    proxy.map_err(instantiate_failure)
}

/// Why an instance could not be created: its memory did not fit (its own limit or the
/// host's budget), or anything else.
fn instantiate_failure(error: wasmtime::Error) -> GuestFailure {
    if error.downcast_ref::<HostMemoryExhausted>().is_some() {
        GuestFailure::HostMemory
    } else if let Some(exceeded) = error.downcast_ref::<InstanceMemoryExceeded>() {
        GuestFailure::MemoryLimit(exceeded.limit / (1024 * 1024))
    } else {
        GuestFailure::Instantiate(format!("{error:#}"))
    }
}

/// A fresh store for one guest invocation: limits, and an epoch deadline that traps at
/// the invocation's deadline and yields to the executor on every tick before it.
fn new_store(engine: &wasmtime::Engine, invocation: &Invocation) -> Store<GuestState> {
    let mut store = Store::new(
        engine,
        GuestState::new(invocation.platform_ctx(), invocation.limits.clone()),
    );
    store.limiter(|state| &mut state.limits);
    arm_deadline(&mut store, invocation.deadline);
    store
}

/// Trap at `deadline`; yield to the executor on every epoch tick before it.
fn arm_deadline(store: &mut Store<GuestState>, deadline: Deadline) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if deadline.is_past() {
            Err(DeadlineExceeded.into())
        } else {
            // Yield so a busy guest never starves other work on the same thread.
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// Create a store and instantiate `pre` in it, then drop both: exactly the per-request
/// instantiation work, without a request. Used by `shoal bench-instantiate`.
pub async fn instantiate_once(
    pre: &ProxyPre<GuestState>,
    invocation: &Invocation,
) -> Result<(), GuestFailure> {
    let mut store = new_store(pre.engine(), invocation);
    pre.instantiate_async(&mut store)
        .await
        .map(drop)
        .map_err(|error| GuestFailure::Instantiate(format!("{error:#}")))
}

/// Run a service's exported health check in a fresh instance, by the invocation's
/// deadline.
pub async fn check_health(
    pre: &ProxyPre<GuestState>,
    indices: &crate::bindings::health_check::GuestIndices,
    invocation: &Invocation,
) -> Result<crate::bindings::registry::Health, GuestFailure> {
    let budget = invocation.deadline.remaining();
    let memory_limit = invocation.limits.memory_bytes;
    let mut store = new_store(pre.engine(), invocation);
    let run = async {
        let instance = pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(instantiate_failure)?;
        let guest = indices
            .load(&mut store, &instance)
            .map_err(|error| GuestFailure::Instantiate(format!("{error:#}")))?;
        guest
            .call_check(&mut store)
            .await
            .map_err(|error| classify(error, budget, memory_limit))
    };
    match tokio::time::timeout_at(invocation.deadline.into(), run).await {
        Ok(result) => result,
        Err(_) => Err(GuestFailure::Deadline(budget)),
    }
}

fn classify(error: wasmtime::Error, timeout: Duration, memory_limit: usize) -> GuestFailure {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return GuestFailure::Deadline(timeout);
    }
    if let Some(fault) = error.downcast_ref::<HostFault>() {
        return GuestFailure::Host(fault.to_string());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::StackOverflow {
            return GuestFailure::StackOverflow;
        }
        return GuestFailure::trap(trap.to_string());
    }
    if error.downcast_ref::<InstanceMemoryExceeded>().is_some() {
        return GuestFailure::MemoryLimit(memory_limit / (1024 * 1024));
    }
    if error.downcast_ref::<HostMemoryExhausted>().is_some() {
        return GuestFailure::HostMemory;
    }
    // The root cause without the (long) wasm backtrace context.
    GuestFailure::trap(error.root_cause().to_string())
}
