//! One execution interface for a deployment's code.
//!
//! The services layer hands a request to an [`Executor`] and gets back a response (its
//! body may still be written while it is read) or the [`GuestFailure`] that ended it.
//! It never learns how the code is run: one request at a time per instance, fresh or
//! reused ([`SequentialExecutor`], WASIp2), or several at once per instance
//! ([`ConcurrentExecutor`], WASIp3). A [`Loader`] turns an upload into an executor;
//! [`Runtime`] is the real one, and tests of the layers above can use their own.

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::compile::{CodeTier, Compiled, Handler, LoadError, Loaded};
use super::concurrent::{Concurrency, ConcurrentService, Instances};
use super::failure::GuestFailure;
use super::invoke::{self, Invocation};
use super::limits::MemoryBudget;
use super::reuse::InstancePool;
use super::{InstanceLimits, Runtime, ServiceContext};
use crate::deadline::Deadline;
use crate::manifest::ManifestError;
use crate::platform::Platform;
use crate::protocol::{Body, RequestId};
use crate::registry::Health;

/// The body of a request handed to a guest.
pub type RequestBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// `body` as the body of a request handed to a guest.
pub fn request_body<B>(body: B) -> RequestBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What one request brings to its execution besides itself.
pub struct RequestScope {
    /// The request id.
    pub request_id: RequestId,
    /// When the request must be done.
    pub deadline: Deadline,
    /// The request's span.
    pub trace: opentelemetry::Context,
    /// Held until the guest has finished with the request (not only until its response
    /// was sent), then dropped: the service's concurrency slot, so a guest that runs
    /// on after its answer still counts against its limit.
    pub held_until_done: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// What the request receives, when it is recorded.
    pub journal: Option<Arc<crate::recording::journal::Journal>>,
}

/// What the admin API shows of a deployment's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    /// Which compiler produced the code serving now.
    pub tier: CodeTier,
    /// The WASI generation of its HTTP interface (`p2` or `p3`).
    pub wasi: &'static str,
    /// Whether it exports `shoal:platform/health-check`.
    pub health_check: bool,
}

/// Runs the requests of one deployment.
pub trait Executor: Send + Sync {
    /// Serve `request`: the response once its head is ready, or why the guest failed.
    fn handle(
        &self,
        scope: RequestScope,
        request: Request<RequestBody>,
    ) -> BoxFuture<'_, Result<Response<Body>, GuestFailure>>;

    /// Run the code's exported health check in an instance of its own, by the scope's
    /// deadline; `None` when the code exports none.
    fn check_health(
        &self,
        scope: RequestScope,
    ) -> Option<BoxFuture<'_, Result<Health, GuestFailure>>>;

    /// The code serving now.
    fn info(&self) -> CodeInfo;

    /// The deployment is no longer live: drop what it keeps for later requests (idle
    /// instances). Requests still running on it finish.
    fn retire(&self);
}

/// How a deployment's instances are bounded and how many requests each takes, as
/// its manifest and the host's defaults resolve them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionSpec {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Elements per table of an instance.
    pub table_elements: usize,
    /// A request's time limit.
    pub timeout: Duration,
    /// Requests one WASIp2 instance serves, one after another (1: fresh per request).
    pub sequential_reuse: u32,
    /// How WASIp3 instances take requests.
    pub concurrency: Concurrency,
    /// Whether the manifest asked for several requests in one instance at once,
    /// which only WASIp3 code can do.
    pub asks_concurrency: bool,
}

/// Makes a deployment's service context (its store, identity, meters), once its code
/// has been accepted: a refused upload opens nothing and changes nothing.
pub type ContextFactory =
    Box<dyn FnOnce() -> Result<Arc<ServiceContext>, LoadError> + Send + 'static>;

/// Turns uploaded components into executors.
#[async_trait::async_trait]
pub trait Loader: Send + Sync {
    /// Compile and link `component` (whose SHA-256 is `digest`), check it against
    /// `spec`, and only then make the service's context with `context` and the
    /// executor of one deployment of it; both are returned.
    async fn load(
        &self,
        component: Bytes,
        digest: &str,
        spec: &ExecutionSpec,
        context: ContextFactory,
        platform: &Arc<Platform>,
    ) -> Result<(Arc<dyn Executor>, Arc<ServiceContext>), LoadError>;

    /// The linear memory all instances together may hold.
    fn memory_budget(&self) -> &Arc<MemoryBudget>;

    /// Run `request` once more on a fresh instance of `component`, compiled for
    /// replays, every import answered from `run`'s journal (see
    /// [`Runtime::replay`]).
    async fn replay(
        &self,
        component: Bytes,
        digest: &str,
        run: super::replay::ReplayRun,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> Result<Result<http::Response<super::invoke::GuestBody>, GuestFailure>, LoadError>;

    /// Forget compiled code no digest in `keep` refers to; returns how many files.
    fn collect_garbage(&self, keep: &HashSet<String>) -> usize;
}

/// Idle instances one deployment keeps for reuse on each serving thread (each holds
/// an allocator slot).
const MAX_IDLE_REUSABLE: usize = 32;

#[async_trait::async_trait]
impl Loader for Runtime {
    async fn load(
        &self,
        component: Bytes,
        digest: &str,
        spec: &ExecutionSpec,
        context: ContextFactory,
        platform: &Arc<Platform>,
    ) -> Result<(Arc<dyn Executor>, Arc<ServiceContext>), LoadError> {
        let compiled = {
            let component = component.clone();
            let digest = digest.to_owned();
            self.compile(move |runtime| runtime.load(&component, &digest))
                .await?
        };
        let concurrent_code = matches!(compiled.code.handler, Handler::Concurrent(_));
        if !concurrent_code && spec.asks_concurrency {
            return Err(LoadError::Manifest(ManifestError::Field {
                field: "limits.instance_concurrency".into(),
                reason: "only a WASIp3 component (exporting `wasi:http/handler@0.3`) serves \
                         several requests in one instance; this one is WASIp2"
                    .into(),
            }));
        }
        // Opening the store is file I/O: not on a runtime worker.
        let service = tokio::task::spawn_blocking(context)
            .await
            .map_err(|error| LoadError::Internal(error.into()))??;
        observe_compile(platform, &service.name, &compiled);
        let made = service.clone();
        let baseline = compiled.code.tier == CodeTier::Baseline;
        let code = DeploymentCode {
            code: Arc::new(ArcSwap::new(compiled.code)),
            service,
            limits: InstanceLimits {
                memory_bytes: spec.memory_bytes,
                table_elements: spec.table_elements,
                budget: self.memory_budget.clone(),
                idle: self.idle.clone(),
            },
            platform: platform.clone(),
        };
        let (executor, pool): (Arc<dyn Executor>, _) = if concurrent_code {
            let concurrent = ConcurrentExecutor::new(code.clone(), spec);
            (Arc::new(concurrent), None)
        } else {
            let pool = (spec.sequential_reuse > 1).then(|| {
                let pool = Arc::new(InstancePool::new(spec.sequential_reuse, MAX_IDLE_REUSABLE));
                self.idle.register(&pool);
                pool
            });
            let sequential = SequentialExecutor {
                code: code.clone(),
                pool: pool.clone(),
            };
            (Arc::new(sequential), pool)
        };
        if baseline {
            self.optimize_in_background(&code, pool, component, digest.to_owned());
        }
        Ok((executor, made))
    }

    fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.memory_budget
    }

    async fn replay(
        &self,
        component: Bytes,
        digest: &str,
        run: super::replay::ReplayRun,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> Result<Result<http::Response<super::invoke::GuestBody>, GuestFailure>, LoadError> {
        Runtime::replay(self, component, digest, run, request).await
    }

    fn collect_garbage(&self, keep: &HashSet<String>) -> usize {
        self.collect_cache(keep)
    }
}

impl Runtime {
    /// Run `work` (a compile) on the blocking pool, at most one compile per core at
    /// once: the rest wait here.
    pub(crate) async fn compile<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Runtime) -> Result<T, LoadError> + Send + 'static,
    ) -> Result<T, LoadError> {
        let _permit = self
            .compiles
            .acquire()
            .await
            .map_err(|error| LoadError::Internal(error.into()))?;
        let runtime = self.clone();
        tokio::task::spawn_blocking(move || work(&runtime))
            .await
            .map_err(|error| LoadError::Internal(error.into()))?
    }

    /// Compile `component` with the optimising compiler (one background compile at a
    /// time, at low priority) and swap it in for `code`'s baseline code. Requests
    /// already running finish on the code they started on; idle reusable instances of
    /// the baseline code are dropped. If optimising fails, the baseline code serves on.
    fn optimize_in_background(
        &self,
        code: &DeploymentCode,
        pool: Option<Arc<InstancePool>>,
        component: Bytes,
        digest: String,
    ) {
        let runtime = self.clone();
        let swap = code.code.clone();
        let platform = code.platform.clone();
        let name = code.service.name.clone();
        tokio::spawn(async move {
            let Ok(_permit) = runtime.background_compiles.clone().acquire_owned().await else {
                return;
            };
            // A thread of its own: the compile lowers its priority.
            let (done, optimized) = tokio::sync::oneshot::channel();
            let spawned = {
                let runtime = runtime.clone();
                let digest = digest.clone();
                std::thread::Builder::new()
                    .name("shoal-optimize".into())
                    .spawn(move || {
                        let _ =
                            done.send(runtime.load_optimized_in_background(&component, &digest));
                    })
            };
            if let Err(error) = spawned {
                tracing::error!(service = %name, %error, "cannot start the optimising compile; the baseline code keeps serving");
                return;
            }
            let optimized = optimized.await;
            // The deployment is gone (replaced or removed): the optimised code is in
            // the cache for a later deploy.
            if Arc::strong_count(&swap) == 1 {
                return;
            }
            match optimized {
                Ok(Ok(compiled)) => {
                    observe_compile(&platform, &name, &compiled);
                    swap.store(compiled.code);
                    if let Some(pool) = &pool {
                        pool.clear();
                    }
                    tracing::info!(service = %name, digest, "optimised code swapped in");
                }
                Ok(Err(error)) => tracing::error!(
                    service = %name,
                    digest,
                    %error,
                    "optimising failed; the baseline code keeps serving"
                ),
                Err(_) => tracing::error!(
                    service = %name,
                    digest,
                    "the optimising compile panicked; the baseline code keeps serving"
                ),
            }
        });
    }
}

/// Record how long a compile took, by service and tier.
fn observe_compile(platform: &Platform, service: &str, compiled: &Compiled) {
    let metrics = &platform.telemetry.metrics;
    if let Some(elapsed) = compiled.compiled_in
        && metrics.enabled()
    {
        let tier = match compiled.code.tier {
            CodeTier::Baseline => "baseline",
            CodeTier::Optimized => "optimized",
        };
        metrics
            .compile
            .with_label_values(&[service, tier])
            .observe(elapsed.as_secs_f64());
    }
}

/// What every executor of a deployment holds: its code (baseline code is swapped for
/// optimised code when that is ready; a request keeps the code it started on), the
/// service it runs, and the bounds of its instances.
#[derive(Clone)]
pub struct DeploymentCode {
    code: Arc<ArcSwap<Loaded>>,
    service: Arc<ServiceContext>,
    limits: InstanceLimits,
    platform: Arc<Platform>,
}

impl DeploymentCode {
    /// The code new requests run.
    fn loaded(&self) -> Arc<Loaded> {
        self.code.load_full()
    }

    /// The invocation of one request (or health check) on this code.
    fn invocation(&self, scope: RequestScope) -> Invocation {
        Invocation {
            service: self.service.clone(),
            limits: self.limits.clone(),
            platform: self.platform.clone(),
            request_id: scope.request_id,
            deadline: scope.deadline,
            trace: scope.trace,
            held_until_done: scope.held_until_done,
            journal: scope.journal,
        }
    }

    fn info(&self) -> CodeInfo {
        let loaded = self.loaded();
        CodeInfo {
            tier: loaded.tier,
            wasi: loaded.handler.wasi(),
            health_check: loaded.health_check.is_some(),
        }
    }

    fn check_health(
        &self,
        scope: RequestScope,
    ) -> Option<BoxFuture<'_, Result<Health, GuestFailure>>> {
        let loaded = self.loaded();
        loaded.health_check.as_ref()?;
        let invocation = self.invocation(scope);
        Some(Box::pin(async move {
            let Some(indices) = &loaded.health_check else {
                return Err(GuestFailure::Host("the health check export is gone".into()));
            };
            invoke::check_health(&loaded.handler, indices, &invocation)
                .await
                .map(crate::capabilities::registry::health_from_wit)
        }))
    }
}

/// WASIp2 code: an instance serves one request at a time, a fresh one per request or,
/// when the manifest opts in, one reused for several in turn. The guest runs in the
/// task that reads its response body ([`invoke::GuestBody`]).
pub struct SequentialExecutor {
    code: DeploymentCode,
    /// Idle instances kept for reuse, when the manifest opts in.
    pool: Option<Arc<InstancePool>>,
}

impl Executor for SequentialExecutor {
    fn handle(
        &self,
        scope: RequestScope,
        request: Request<RequestBody>,
    ) -> BoxFuture<'_, Result<Response<Body>, GuestFailure>> {
        Box::pin(async move {
            let loaded = self.code.loaded();
            let Handler::Sequential(pre) = &loaded.handler else {
                return Err(GuestFailure::Host(
                    "WASIp2 deployment whose code is not WASIp2".into(),
                ));
            };
            let invocation = self.code.invocation(scope);
            let response = invoke::handle(pre, self.pool.clone(), invocation, request).await?;
            Ok(response.map(|body| {
                body.map_err(|code| std::io::Error::other(format!("{code:?}")))
                    .boxed_unsync()
            }))
        })
    }

    fn check_health(
        &self,
        scope: RequestScope,
    ) -> Option<BoxFuture<'_, Result<Health, GuestFailure>>> {
        self.code.check_health(scope)
    }

    fn info(&self) -> CodeInfo {
        self.code.info()
    }

    fn retire(&self) {
        if let Some(pool) = &self.pool {
            pool.clear();
        }
    }
}

/// WASIp3 code: an instance serves several requests at once. A response head waits a
/// moment for its body ([`super::read_ahead`]), so a small answer leaves in one write.
pub struct ConcurrentExecutor {
    code: DeploymentCode,
    service: ConcurrentService,
}

impl ConcurrentExecutor {
    fn new(code: DeploymentCode, spec: &ExecutionSpec) -> Self {
        let service = ConcurrentService::new(Instances {
            code: code.code.clone(),
            service: code.service.clone(),
            limits: code.limits.clone(),
            platform: code.platform.clone(),
            concurrency: spec.concurrency,
            timeout: spec.timeout,
        });
        Self { code, service }
    }
}

impl Executor for ConcurrentExecutor {
    fn handle(
        &self,
        scope: RequestScope,
        request: Request<RequestBody>,
    ) -> BoxFuture<'_, Result<Response<Body>, GuestFailure>> {
        // A response to HEAD has no body to wait for, and its length is the guest's.
        let read_ahead = request.method() != http::Method::HEAD;
        let invocation = self.code.invocation(scope);
        Box::pin(async move {
            let response = self.service.handle(invocation, request).await?;
            let response = response.map(|body| body.map_err(std::io::Error::other).boxed_unsync());
            // Its body is written by another task of the instance: the head waits a
            // moment for it, so both leave in one write.
            Ok(if read_ahead {
                super::read_ahead::read_ahead(response, super::read_ahead::TURNS).await
            } else {
                response
            })
        })
    }

    fn check_health(
        &self,
        scope: RequestScope,
    ) -> Option<BoxFuture<'_, Result<Health, GuestFailure>>> {
        self.code.check_health(scope)
    }

    fn info(&self) -> CodeInfo {
        self.code.info()
    }

    fn retire(&self) {}
}
