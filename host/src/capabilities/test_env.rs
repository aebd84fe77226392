//! Capabilities without wasm: a [`TestEnv`] builds the per-request platform state with
//! the real embedded registry, caller and telemetry, and the tests call the `Host`
//! methods on each capability's view directly. A [`ScriptedService`] stands in for
//! the service on the other end of the caller's in-process path, answering each
//! attempt as its script says, so retries, breakers and deadlines are exercised
//! against the real caller in milliseconds.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};

use super::caller::CallerView;

/// The memory budget a test environment's transactions draw on.
const TEST_BUDGET: usize = 64 * 1024 * 1024;
use super::config::ConfigView;
use super::discovery::DiscoveryView;
use super::metrics::MetricsView;
use super::registry::RegistryView;
use super::secrets::SecretsView;
use super::tracing::TracingView;
use super::{HostFault, PlatformCtx, ServiceContext};
use crate::bindings;
use crate::caller::transport::LocalDispatch;
use crate::deadline::Deadline;
use crate::manifest::{BreakerPolicy, Outbound, TargetPolicy};
use crate::platform::Platform;
use crate::protocol::{self, Body};
use crate::registry::{self as reg, Endpoint, Health, Instance, Registry};
use crate::telemetry::TraceScope;

/// One request's platform state and resource table, on a real registry and caller.
struct TestEnv {
    ctx: PlatformCtx,
    table: ResourceTable,
    registry: Arc<dyn Registry>,
    /// The far end of in-process calls (the caller holds it weakly).
    local: Option<Arc<dyn LocalDispatch>>,
    /// Where the stores live.
    _dir: tempfile::TempDir,
}

impl TestEnv {
    fn new(outbound: Outbound, deadline: Deadline) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let platform = Platform::builder(dir.path())
            .host_id("test-host")
            .registry_sweep(Duration::from_secs(60))
            .build()
            .expect("platform");
        let registry = platform.registry.clone();
        let store = platform.stores.open("orders", 1 << 20).expect("store");
        let service = Arc::new(ServiceContext {
            name: "orders".into(),
            version: "1.0.0".into(),
            config: BTreeMap::from([
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ])
            .into(),
            secrets: vec!["db-password".into()],
            instance_id: "test-host/orders".into(),
            outbound: Arc::new(outbound),
            topics: Default::default(),
            health: Default::default(),
            log_budget: Default::default(),
            store,
            meter: Default::default(),
            logs: Default::default(),
            replay: false,
        });
        Self {
            ctx: PlatformCtx {
                service,
                platform,
                request_id: crate::protocol::RequestId::parse("req-1").expect("a sane id"),
                deadline,
                trace: TraceScope::default(),
                open_watches: Default::default(),
                transactions: super::store::TransactionAccount::new(
                    crate::policy::budget::MemoryBudget::new(TEST_BUDGET),
                ),
                journal: None,
            },
            table: ResourceTable::new(),
            registry,
            local: None,
            _dir: dir,
        }
    }

    fn plain() -> Self {
        Self::new(
            Outbound::default(),
            Deadline::after(Duration::from_secs(30)),
        )
    }

    fn store(&mut self) -> super::store::StoreView<'_> {
        super::store::StoreView {
            store: &self.ctx.service.store,
            table: &mut self.table,
            service: &self.ctx.service.name,
            published: &self.ctx.platform.published,
            metrics: &self.ctx.platform.telemetry.metrics,
            tracing: &self.ctx.platform.telemetry.tracing,
            trace: &self.ctx.trace,
            transactions: &self.ctx.transactions,
            deadline: self.ctx.deadline,
            journal: self.ctx.journal(),
        }
    }

    fn config(&self) -> ConfigView<'_> {
        ConfigView {
            config: self.ctx.service.config.values(),
            service: &self.ctx.service.name,
            journal: self.ctx.journal(),
        }
    }

    fn registry_view(&self) -> RegistryView<'_> {
        RegistryView {
            service: &self.ctx.service,
            host_id: &self.ctx.platform.host_id,
            registry: &self.ctx.platform.registry,
            request_id: &self.ctx.request_id,
            journal: self.ctx.journal(),
        }
    }

    fn discovery(&mut self) -> DiscoveryView<'_> {
        DiscoveryView {
            open_watches: &self.ctx.open_watches,
            registry: &self.ctx.platform.registry,
            table: &mut self.table,
            service: &self.ctx.service.name,
            journal: self.ctx.journal.as_deref(),
        }
    }

    fn tracing(&mut self) -> TracingView<'_> {
        TracingView {
            tracing: &self.ctx.platform.telemetry.tracing,
            service: &self.ctx.service.name,
            scope: &self.ctx.trace,
            table: &mut self.table,
            journal: self.ctx.journal.as_deref(),
        }
    }

    fn metrics(&self) -> MetricsView<'_> {
        MetricsView {
            metrics: &self.ctx.platform.telemetry.metrics,
            service: &self.ctx.service.name,
            redactor: self.ctx.platform.secrets.redactor(),
            replaying: self.ctx.replaying(),
        }
    }

    fn secrets(&self) -> SecretsView<'_> {
        SecretsView {
            secrets: &self.ctx.platform.secrets,
            service: &self.ctx.service.name,
            declared: &self.ctx.service.secrets,
            journal: self.ctx.journal(),
        }
    }

    fn caller(&self) -> CallerView<'_> {
        CallerView {
            caller: &self.ctx.platform.caller,
            context: self.ctx.call_context(),
            journal: self.ctx.journal(),
        }
    }

    async fn register(&self, service: &str, id: &str, health: Health) {
        let instance = Instance {
            id: id.into(),
            service: service.into(),
            endpoint: Endpoint::Local,
            version: "1".into(),
            tags: Vec::new(),
            health,
        };
        self.registry
            .register(instance, Duration::from_secs(60))
            .await
            .expect("register");
    }
}

fn host_fault(error: &wasmtime::Error) -> &HostFault {
    error
        .downcast_ref::<HostFault>()
        .expect("a host-side failure is reported as a HostFault")
}

#[tokio::test]
async fn config_answers_from_the_manifest_table_in_key_order() {
    use bindings::config::Host as _;
    let env = TestEnv::plain();
    let mut config = env.config();
    assert_eq!(config.get("a".into()).await.expect("get"), Some("1".into()));
    assert_eq!(config.get("zz".into()).await.expect("get"), None);
    let all = config.get_all().await.expect("get-all");
    assert_eq!(
        all,
        vec![("a".into(), "1".into()), ("b".into(), "2".into())]
    );
}

#[tokio::test]
async fn secrets_are_given_only_when_named_provided_and_granted() {
    use bindings::secrets::{Host as _, SecretError};
    let env = TestEnv::plain();
    let secrets = &env.ctx.platform.secrets;
    let mut view = env.secrets();
    assert_eq!(
        view.get("db-password".into()).await.expect("get"),
        Err(SecretError::NotFound)
    );
    secrets
        .put(
            "db-password",
            "correct-horse-1".into(),
            vec!["orders".into()],
        )
        .expect("put");
    assert_eq!(
        view.get("db-password".into())
            .await
            .expect("get")
            .as_deref(),
        Ok("correct-horse-1")
    );
    assert_eq!(
        view.get("api-key".into()).await.expect("get"),
        Err(SecretError::NotDeclared)
    );
    secrets
        .put(
            "db-password",
            "correct-horse-2".into(),
            vec!["billing".into()],
        )
        .expect("rotate");
    assert_eq!(
        view.get("db-password".into()).await.expect("get"),
        Err(SecretError::Denied)
    );
}

#[tokio::test]
async fn a_health_report_reaches_the_registry() {
    use bindings::registry::Host as _;
    let env = TestEnv::plain();
    env.register("orders", "test-host/orders", Health::Serving)
        .await;
    let identity = env.registry_view().get_identity().await.expect("identity");
    assert_eq!(identity.service, "orders");
    assert_eq!(identity.host_id, "test-host");
    env.registry_view()
        .report_health(
            bindings::registry::Health::Degraded,
            Some("draining".into()),
        )
        .await
        .expect("report");
    let instances = env.registry.instances("orders").await.expect("instances");
    assert_eq!(instances[0].health, Health::Degraded);
}

#[tokio::test]
async fn discovery_refuses_bad_names_as_guest_errors_and_watches_changes() {
    use bindings::discovery::{DiscoveryError, Host as _, HostWatcher as _};
    let mut env = TestEnv::plain();
    let refused = env
        .discovery()
        .discover("Not_A_Name".into())
        .await
        .expect("a bad name is the guest's error, not a trap");
    assert!(matches!(refused, Err(DiscoveryError::InvalidName(_))));

    env.register("payments", "h/payments-1", Health::Serving)
        .await;
    env.register("payments", "h/payments-2", Health::NotServing)
        .await;
    let found = env
        .discovery()
        .discover("payments".into())
        .await
        .expect("no trap")
        .expect("found");
    assert_eq!(found.len(), 1, "not-serving instances are not routable");

    let watcher = env
        .discovery()
        .watch("payments".into())
        .await
        .expect("no trap")
        .expect("watch");
    let rep = watcher.rep();
    let first = env
        .discovery()
        .next(Resource::new_borrow(rep))
        .await
        .expect("no trap");
    assert_eq!(
        first.map(|set| set.len()),
        Some(2),
        "the first read is the set"
    );
    let unchanged = env
        .discovery()
        .next(Resource::new_borrow(rep))
        .await
        .expect("no trap");
    assert!(unchanged.is_none());
    env.register("payments", "h/payments-3", Health::Serving)
        .await;
    let changed = env
        .discovery()
        .next(Resource::new_borrow(rep))
        .await
        .expect("no trap");
    assert_eq!(changed.map(|set| set.len()), Some(3));

    env.discovery().drop(watcher).await.expect("drop");
    let trap = env
        .discovery()
        .next(Resource::new_borrow(rep))
        .await
        .expect_err("a dangling handle is a host fault");
    assert_eq!(host_fault(&trap).call, "discovery.watcher.next");
}

#[tokio::test]
async fn guest_spans_nest_and_a_dangling_span_is_a_host_fault() {
    use bindings::tracing::{Host as _, HostSpan as _};
    let mut env = TestEnv::plain();
    let outer = env
        .tracing()
        .start_span("outer".into())
        .await
        .expect("span");
    let inner = env
        .tracing()
        .start_span("x".repeat(5000))
        .await
        .expect("span");
    assert_eq!(env.ctx.trace.open_spans(), 2);
    let inner_rep = inner.rep();
    env.tracing()
        .end(Resource::new_borrow(inner_rep))
        .await
        .expect("end");
    assert_eq!(env.ctx.trace.open_spans(), 1);
    env.tracing().drop(inner).await.expect("drop");
    env.tracing().drop(outer).await.expect("drop");
    assert_eq!(env.ctx.trace.open_spans(), 0);
    let trap = env
        .tracing()
        .set_attribute(Resource::new_borrow(inner_rep), "k".into(), "v".into())
        .await
        .expect_err("dangling");
    assert_eq!(host_fault(&trap).call, "tracing.span.set-attribute");
}

#[tokio::test]
async fn metric_errors_are_the_guests() {
    use bindings::metrics::{Host as _, MetricError};
    let env = TestEnv::plain();
    let ok = env
        .metrics()
        .counter_add("orders_placed".into(), vec![], 1.0)
        .await
        .expect("no trap");
    assert!(ok.is_ok());
    let refused = env
        .metrics()
        .counter_add("bad name!".into(), vec![], 1.0)
        .await
        .expect("no trap");
    assert!(matches!(refused, Err(MetricError::InvalidName(_))));
}

/// What one attempt of a [`ScriptedService`] does.
#[derive(Clone, Copy)]
enum Step {
    Answer(u16),
    /// Answer 200 after this long.
    Slow(Duration),
}

/// The far end of the caller's in-process path: answers attempts in script order
/// (repeating the last step), and records how many it saw and their deadlines.
struct ScriptedService {
    script: Mutex<VecDeque<Step>>,
    last: Mutex<Step>,
    attempts: AtomicU32,
    deadlines: Mutex<Vec<Deadline>>,
}

impl ScriptedService {
    fn new(steps: &[Step]) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(steps.iter().copied().collect()),
            last: Mutex::new(*steps.last().expect("a script")),
            attempts: AtomicU32::new(0),
            deadlines: Mutex::new(Vec::new()),
        })
    }

    fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl LocalDispatch for ScriptedService {
    async fn dispatch(
        &self,
        _service: &str,
        _request: Request<Full<Bytes>>,
        _request_id: crate::protocol::RequestId,
        deadline: Deadline,
    ) -> Option<Response<Body>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.deadlines.lock().push(deadline);
        let step = {
            let mut script = self.script.lock();
            match script.pop_front() {
                Some(step) => {
                    *self.last.lock() = step;
                    step
                }
                None => *self.last.lock(),
            }
        };
        let status = match step {
            Step::Answer(status) => status,
            Step::Slow(delay) => {
                tokio::time::sleep(delay).await;
                200
            }
        };
        let status = StatusCode::from_u16(status).expect("status");
        Some(protocol::text(status, "scripted\n".into()))
    }
}

/// An environment whose caller reaches `script` for service `payments`, with
/// `policy` towards it.
async fn calling(
    script: &Arc<ScriptedService>,
    policy: TargetPolicy,
    deadline: Deadline,
) -> TestEnv {
    let outbound = Outbound {
        allowed_hosts: Vec::new(),
        targets: BTreeMap::from([("payments".to_owned(), policy)]),
    };
    let mut env = TestEnv::new(outbound, deadline);
    let local: Arc<dyn LocalDispatch> = script.clone();
    env.ctx.platform.caller.set_local(Arc::downgrade(&local));
    env.local = Some(local);
    env.register("payments", "h/payments", Health::Serving)
        .await;
    env
}

fn request(method: &str) -> bindings::caller::Request {
    bindings::caller::Request {
        method: method.into(),
        path_with_query: "/charge".into(),
        headers: vec![("x-kept".into(), b"1".to_vec())],
        body: b"{}".to_vec(),
    }
}

fn fast_retries() -> TargetPolicy {
    TargetPolicy {
        max_attempts: Some(3),
        ..TargetPolicy::default()
    }
}

async fn call(
    env: &TestEnv,
    method: &str,
) -> Result<bindings::caller::Response, bindings::caller::CallError> {
    use bindings::caller::Host as _;
    let options = bindings::caller::CallOptions {
        attempt_timeout_ms: None,
        deadline_ms: None,
        idempotent: None,
    };
    env.caller()
        .call("payments".into(), request(method), options)
        .await
        .expect("a failed call is never a trap")
}

#[tokio::test]
async fn idempotent_calls_are_retried_through_unavailable_answers() {
    let script = ScriptedService::new(&[Step::Answer(503), Step::Answer(503), Step::Answer(200)]);
    let env = calling(
        &script,
        fast_retries(),
        Deadline::after(Duration::from_secs(30)),
    )
    .await;
    let response = call(&env, "GET").await.expect("third attempt answers");
    assert_eq!(response.status, 200);
    assert_eq!(script.attempts(), 3);
}

#[tokio::test]
async fn a_post_that_was_answered_is_never_sent_twice() {
    let script = ScriptedService::new(&[Step::Answer(503), Step::Answer(200)]);
    let env = calling(
        &script,
        fast_retries(),
        Deadline::after(Duration::from_secs(30)),
    )
    .await;
    match call(&env, "POST").await {
        Err(bindings::caller::CallError::ServerError(response)) => assert_eq!(response.status, 503),
        other => panic!("expected the 503 back, got {other:?}"),
    }
    assert_eq!(script.attempts(), 1);
}

#[tokio::test]
async fn failures_open_the_breaker_and_then_calls_fail_fast() {
    let script = ScriptedService::new(&[Step::Answer(500)]);
    let policy = TargetPolicy {
        max_attempts: Some(1),
        breaker: Some(BreakerPolicy {
            consecutive_failures: Some(3),
            cool_down_ms: Some(60_000),
            ..BreakerPolicy::default()
        }),
        ..TargetPolicy::default()
    };
    let env = calling(&script, policy, Deadline::after(Duration::from_secs(30))).await;
    for _ in 0..3 {
        assert!(matches!(
            call(&env, "GET").await,
            Err(bindings::caller::CallError::ServerError(_))
        ));
    }
    assert_eq!(script.attempts(), 3);
    assert!(matches!(
        call(&env, "GET").await,
        Err(bindings::caller::CallError::CircuitOpen)
    ));
    assert_eq!(script.attempts(), 3, "an open breaker sends nothing");
}

#[tokio::test]
async fn retries_never_outlive_the_callers_deadline() {
    // Every attempt would take a minute; the attempt timeout is 50 ms and the caller's
    // own request has 2 s left.
    let script = ScriptedService::new(&[Step::Slow(Duration::from_secs(60))]);
    let policy = TargetPolicy {
        max_attempts: Some(100),
        attempt_timeout_ms: Some(50),
        ..TargetPolicy::default()
    };
    let caller_deadline = Deadline::after(Duration::from_secs(2));
    let env = calling(&script, policy, caller_deadline).await;
    let outcome = call(&env, "GET").await;
    assert!(matches!(outcome, Err(bindings::caller::CallError::Timeout)));
    // Far sooner than one attempt's minute: the call ended with the caller's time.
    assert!(Instant::now() < caller_deadline.instant() + Duration::from_secs(5));
    let deadlines = script.deadlines.lock().clone();
    assert!(deadlines.len() >= 2, "timed-out attempts are retried");
    assert!(deadlines.iter().all(|d| *d <= caller_deadline));
    // Each callee got its attempt's budget, not the whole call's.
    assert!(deadlines[0] < caller_deadline);
}

#[tokio::test]
async fn a_caller_out_of_time_sends_nothing() {
    let script = ScriptedService::new(&[Step::Answer(200)]);
    let past = Deadline::at(Instant::now() - Duration::from_millis(1));
    let env = calling(&script, fast_retries(), past).await;
    assert!(matches!(
        call(&env, "GET").await,
        Err(bindings::caller::CallError::Timeout)
    ));
    assert_eq!(script.attempts(), 0);
}

#[tokio::test]
async fn an_unknown_target_has_no_instances() {
    use bindings::caller::Host as _;
    let env = TestEnv::plain();
    let options = bindings::caller::CallOptions {
        attempt_timeout_ms: None,
        deadline_ms: None,
        idempotent: None,
    };
    let outcome = env
        .caller()
        .call("nobody".into(), request("GET"), options)
        .await
        .expect("no trap");
    assert!(matches!(
        outcome,
        Err(bindings::caller::CallError::NoInstances)
    ));
    // Name rules are the registry's, checked once for every entry point.
    assert!(reg::validate_name("nobody").is_ok());
}

#[tokio::test]
async fn open_spans_and_watches_are_capped_per_request_as_the_guests_fault() {
    use super::{InstanceLimit, MAX_OPEN_SPANS, MAX_WATCHES};
    use bindings::discovery::Host as _;
    use bindings::tracing::Host as _;
    let mut env = TestEnv::plain();
    for _ in 0..MAX_OPEN_SPANS {
        env.tracing().start_span("s".into()).await.expect("span");
    }
    let trap = env
        .tracing()
        .start_span("one too many".into())
        .await
        .expect_err("capped");
    assert!(trap.downcast_ref::<InstanceLimit>().is_some(), "{trap:#}");
    for _ in 0..MAX_WATCHES {
        env.discovery()
            .watch("payments".into())
            .await
            .expect("no trap")
            .expect("watch");
    }
    let trap = env
        .discovery()
        .watch("payments".into())
        .await
        .expect_err("capped");
    assert!(trap.downcast_ref::<InstanceLimit>().is_some(), "{trap:#}");
}

#[test]
fn a_full_resource_table_is_the_guests_limit_and_a_missing_handle_the_hosts() {
    use super::InstanceLimit;
    use wasmtime::component::ResourceTableError;
    let full = HostFault::table("x.y", ResourceTableError::Full);
    assert!(full.downcast_ref::<InstanceLimit>().is_some());
    let missing = HostFault::table("x.y", ResourceTableError::NotPresent);
    assert!(missing.downcast_ref::<HostFault>().is_some());
}

#[tokio::test]
async fn open_transactions_are_capped_and_what_they_hold_comes_from_the_memory_budget() {
    use super::InstanceLimit;
    use super::store::{MAX_OPEN_TRANSACTIONS, TransactionAccount};
    use crate::policy::budget::MemoryBudget;
    use bindings::store::{HostTransaction as _, StoreError as WitError};
    const MIB: usize = 1024 * 1024;
    let mut env = TestEnv::plain();
    let budget = MemoryBudget::new(TEST_BUDGET);
    env.ctx.transactions = TransactionAccount::new(budget.clone());
    // Each transaction holds at most 16 MiB, taken from the budget while it is open.
    let tx = env.store().new().await.expect("a transaction");
    let value = vec![b'v'; MIB];
    for n in 0..15 {
        env.store()
            .set(
                Resource::new_borrow(tx.rep()),
                format!("k{n}"),
                value.clone(),
            )
            .await
            .expect("no trap")
            .expect("fits");
    }
    assert!(budget.used() >= 15 * MIB, "{}", budget.used());
    let over = env
        .store()
        .set(Resource::new_borrow(tx.rep()), "k15".into(), value.clone())
        .await
        .expect("no trap");
    assert!(matches!(over, Err(WitError::TooLarge(_))));
    // Reads are held too: a transaction cannot read its way past the limit.
    let reads = env.store().new().await.expect("a transaction");
    let mut refused = None;
    for n in 0..400_000 {
        let key = format!("{n:0>400}");
        let got = env
            .store()
            .get(Resource::new_borrow(reads.rep()), key)
            .await
            .expect("no trap");
        if let Err(error) = got {
            refused = Some((n, error));
            break;
        }
    }
    let (reads_held, error) = refused.expect("reads are bounded");
    assert!(matches!(error, WitError::TooLarge(_)), "{error:?}");
    assert!(reads_held > 30_000, "{reads_held}");
    env.store().drop(tx).await.expect("dropped");
    env.store().drop(reads).await.expect("dropped");
    assert_eq!(
        budget.used(),
        0,
        "dropped transactions give their bytes back"
    );

    // A budget without room closes the transaction and gives back what it held.
    let small = MemoryBudget::new(2 * MIB);
    env.ctx.transactions = TransactionAccount::new(small.clone());
    let tx = env.store().new().await.expect("a transaction");
    let mut outcomes = Vec::new();
    for n in 0..3 {
        outcomes.push(
            env.store()
                .set(
                    Resource::new_borrow(tx.rep()),
                    format!("k{n}"),
                    value.clone(),
                )
                .await
                .expect("no trap"),
        );
    }
    assert!(outcomes[0].is_ok());
    assert!(
        matches!(&outcomes[1], Err(WitError::TooLarge(text)) if text.contains("memory budget")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], Err(WitError::Closed)),
        "{outcomes:?}"
    );
    assert_eq!(small.used(), 0);
    let commit = env
        .store()
        .commit(Resource::new_borrow(tx.rep()))
        .await
        .expect("no trap");
    assert!(matches!(commit, Err(WitError::Closed)), "{commit:?}");
    env.store().drop(tx).await.expect("dropped");

    // At most so many open at once: one more is the guest's fault.
    let mut open = Vec::new();
    for _ in 0..MAX_OPEN_TRANSACTIONS {
        open.push(env.store().new().await.expect("a transaction"));
    }
    let trap = env.store().new().await.expect_err("capped");
    assert!(trap.downcast_ref::<InstanceLimit>().is_some(), "{trap:#}");
    let first = open.remove(0);
    env.store().drop(first).await.expect("dropped");
    env.store().new().await.expect("room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_reads_one_snapshot_without_conflicts_under_concurrent_writes() {
    use bindings::keyvalue::batch::Host as _;
    let mut env = TestEnv::plain();
    let store = env.ctx.service.store.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut tx = crate::store::Transaction::default();
                tx.put("a", Some(n.to_string().into_bytes())).expect("put");
                tx.put("b", Some(n.to_string().into_bytes())).expect("put");
                tx.commit(&*store).expect("commit");
            }
            n
        })
    };
    let keys = vec!["a".to_owned(), "b".to_owned()];
    for _ in 0..300 {
        let bucket = Resource::new_own(0);
        let found = env
            .store()
            .get_many(bucket, keys.clone())
            .await
            .expect("no trap")
            .expect("no conflict");
        // Written together, read together: the same commit's values.
        assert_eq!(
            found[0].as_ref().map(|f| &f.1),
            found[1].as_ref().map(|f| &f.1)
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        writer.join().expect("writer") > 10,
        "the writer ran meanwhile"
    );
}

#[tokio::test]
async fn a_replay_is_answered_from_its_recording_and_writes_nothing() {
    use crate::recording::journal::Journal;
    use bindings::store::{Host, HostTransaction};
    async fn set(store: &mut super::store::StoreView<'_>, key: &str, value: &[u8]) {
        Host::set(store, key.into(), value.to_vec())
            .await
            .expect("set")
            .expect("ok");
    }
    async fn get(store: &mut super::store::StoreView<'_>, key: &str) -> Option<Vec<u8>> {
        Host::get(store, key.into())
            .await
            .expect("get")
            .expect("ok")
    }
    let mut env = TestEnv::plain();
    // Recorded: a write and a read, through the store.
    let recording = Journal::recording();
    env.ctx.journal = Some(recording.clone());
    let mut store = env.store();
    set(&mut store, "k", b"v1").await;
    assert_eq!(get(&mut store, "k").await, Some(b"v1".to_vec()));
    let received = recording.received(&crate::policy::redact::Redactor::default());
    let imports: Vec<_> = received
        .calls
        .iter()
        .map(|call| call.import.as_str())
        .collect();
    assert_eq!(imports, ["store.set", "store.get"]);

    // The store changes; a replay still reads what was recorded, and its writes
    // (single and in a transaction) reach nothing.
    env.ctx.journal = None;
    set(&mut env.store(), "k", b"v2").await;
    env.ctx.journal = Some(Journal::replaying(received, "seed", Arc::default()));
    let mut store = env.store();
    set(&mut store, "k", b"v1").await;
    assert_eq!(get(&mut store, "k").await, Some(b"v1".to_vec()));
    // A call the recording lacks traps, naming it.
    let tx = HostTransaction::new(&mut store)
        .await
        .expect("a transaction");
    let diverged = HostTransaction::set(&mut store, tx, "other".into(), b"x".to_vec())
        .await
        .expect_err("not in the recording");
    assert!(
        diverged.to_string().contains("store.transaction.set other"),
        "{diverged}"
    );
    env.ctx.journal = None;
    let mut store = env.store();
    assert_eq!(
        get(&mut store, "k").await,
        Some(b"v2".to_vec()),
        "the replay wrote nothing"
    );
    assert_eq!(get(&mut store, "other").await, None);
}
