//! Run one HTTP request through an instance of WASIp2 code: a fresh one, or an idle
//! one kept for reuse when the service opts in.

use bytes::Bytes;
use futures::FutureExt as _;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Resource;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

pub use super::failure::GuestFailure;
use super::failure::{DeadlineExceeded, classify, instantiate_failure};
use super::reuse::{InstancePool, Reusable};
use super::{GuestState, InstanceLimits, ServiceContext};
use crate::capabilities::PlatformCtx;
use crate::capabilities::store::TransactionAccount;
use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::protocol::RequestId;
use crate::telemetry::TraceScope;
use opentelemetry::Context;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};

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

/// Who serves a request, for whom, until when, in which trace.
pub struct Invocation {
    /// The service's own context.
    pub service: Arc<ServiceContext>,
    /// What bounds its instances.
    pub limits: InstanceLimits,
    /// Registry, caller, telemetry.
    pub platform: Arc<Platform>,
    /// The request id.
    pub request_id: RequestId,
    /// When the request must be done.
    pub deadline: Deadline,
    /// The request's span.
    pub trace: Context,
    /// Held until the guest has finished with the request (not only until its response
    /// was sent), then dropped: the service's concurrency slot, so a guest that runs
    /// on after its answer still counts against its limit.
    pub held_until_done: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// What the request receives, when it is recorded; the recording that answers
    /// its calls, when it is a replay.
    pub journal: Option<Arc<crate::recording::journal::Journal>>,
}

impl Invocation {
    pub(crate) fn platform_ctx(&self) -> PlatformCtx {
        PlatformCtx {
            service: self.service.clone(),
            platform: self.platform.clone(),
            request_id: self.request_id.clone(),
            deadline: self.deadline,
            trace: TraceScope::new(self.trace.clone()),
            open_watches: Default::default(),
            transactions: TransactionAccount::new(self.limits.budget.clone()),
            journal: self.journal.clone(),
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
            store
                .data_mut()
                .prepare(Arc::new(invocation.platform_ctx()));
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
                (Ok(Err(code)), _) => Err(GuestFailure::ErrorCode(format!("{code:?}"))),
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
        Ok(Err(code)) => Err(GuestFailure::ErrorCode(format!("{code:?}"))),
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
    if telemetry.metrics.enabled() && !invocation.service.replay {
        telemetry
            .metrics
            .instantiation
            .with_label_values(&[&*invocation.service.name])
            .observe(started.elapsed().as_secs_f64());
    }
    proxy.map_err(|error| instantiate_failure(&error))
}

/// A fresh store for one guest invocation: limits, and an epoch deadline that traps at
/// the invocation's deadline and yields to the executor on every tick before it.
pub(crate) fn new_store(engine: &wasmtime::Engine, invocation: &Invocation) -> Store<GuestState> {
    let mut store = Store::new(
        engine,
        GuestState::new(
            Arc::new(invocation.platform_ctx()),
            invocation.limits.clone(),
        ),
    );
    store.limiter(|state| &mut state.limits);
    arm_deadline(&mut store, invocation.deadline);
    store
}

/// Trap at `deadline`; yield to the executor on every epoch tick before it.
pub(crate) fn arm_deadline(store: &mut Store<GuestState>, deadline: Deadline) {
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
    handler: &super::Handler,
    invocation: &Invocation,
) -> Result<(), GuestFailure> {
    let mut store = new_store(handler.engine(), invocation);
    let instantiated = match handler {
        super::Handler::Sequential(pre) => pre.instantiate_async(&mut store).await.map(drop),
        super::Handler::Concurrent(pre) => pre.instantiate_async(&mut store).await.map(drop),
    };
    instantiated.map_err(|error| GuestFailure::Instantiate(format!("{error:#}")))
}

/// Run a service's exported health check in a fresh instance, by the invocation's
/// deadline.
pub async fn check_health(
    handler: &super::Handler,
    indices: &crate::bindings::health_check::GuestIndices,
    invocation: &Invocation,
) -> Result<crate::bindings::registry::Health, GuestFailure> {
    let budget = invocation.deadline.remaining();
    let memory_limit = invocation.limits.memory_bytes;
    let mut store = new_store(handler.engine(), invocation);
    let run = async {
        let instance = handler
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|error| instantiate_failure(&error))?;
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
