//! The lifecycle and serving rules without wasm or sockets: a [`ScriptedLoader`] makes
//! an executor of each "component" (a line of text that says how it answers), so
//! canary splits, automatic rollback, rollbacks to a version, overload, queue order
//! and removal while queued are checked against the real table, limiter, change path
//! and data directory in milliseconds.

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::limiter::Scale;
use super::state::AutoRollback;
use super::{DeployKind, DeployMode, ServiceDefaults, ServiceError, Services};
use crate::data_dir::DataDir;
use crate::deadline::Deadline;
use crate::manifest::Manifest;
use crate::platform::Platform;
use crate::protocol::{self, RequestId};
use crate::registry::Health;
use crate::runtime::compile::{CodeTier, LoadError};
use crate::runtime::executor::{
    CodeInfo, ContextFactory, ExecutionSpec, Executor, Loader, RequestBody, RequestScope,
};
use crate::runtime::failure::GuestFailure;
use crate::runtime::limits::MemoryBudget;

/// How a scripted component answers each request.
#[derive(Debug, Clone)]
enum Script {
    /// 200 with its tag as the body.
    Answer(String),
    /// Fails as a trapping guest would.
    Trap,
    /// Waits for a permit of the gate named like it, then answers 200 with its tag.
    Hold(String),
}

/// What every scripted executor shares with its test: the gates held requests wait
/// at, and the order requests started in (their `x-test` header).
#[derive(Default)]
struct Stage {
    gates: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    started: Mutex<Vec<String>>,
    retired: Mutex<Vec<String>>,
}

impl Stage {
    fn gate(&self, name: &str) -> Arc<tokio::sync::Semaphore> {
        self.gates
            .lock()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(0)))
            .clone()
    }
}

/// Makes executors of scripted components: `answer TAG`, `trap`, `hold GATE`;
/// anything else is refused as an invalid component.
struct ScriptedLoader {
    stage: Arc<Stage>,
    budget: Arc<MemoryBudget>,
}

struct ScriptedExecutor {
    script: Script,
    stage: Arc<Stage>,
    tag: String,
}

#[async_trait::async_trait]
impl Loader for ScriptedLoader {
    async fn load(
        &self,
        component: Bytes,
        _digest: &str,
        _spec: &ExecutionSpec,
        context: ContextFactory,
        _platform: &Arc<Platform>,
    ) -> Result<(Arc<dyn Executor>, Arc<crate::runtime::ServiceContext>), LoadError> {
        let text = std::str::from_utf8(&component).unwrap_or_default();
        let script = match text.split_once(' ') {
            Some(("answer", tag)) => Script::Answer(tag.to_owned()),
            Some(("hold", gate)) => Script::Hold(gate.to_owned()),
            _ if text == "trap" => Script::Trap,
            _ => return Err(LoadError::Invalid(format!("not a script: {text}"))),
        };
        let service = context()?;
        let executor: Arc<dyn Executor> = Arc::new(ScriptedExecutor {
            script,
            stage: self.stage.clone(),
            tag: format!("{}@{}", service.name, service.version),
        });
        Ok((executor, service))
    }

    fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    async fn replay(
        &self,
        _component: Bytes,
        _digest: &str,
        _run: crate::runtime::replay::ReplayRun,
        _request: Request<http_body_util::Full<Bytes>>,
    ) -> Result<Result<Response<crate::runtime::invoke::GuestBody>, GuestFailure>, LoadError> {
        Err(LoadError::Invalid(
            "scripted components are not replayed".into(),
        ))
    }

    fn collect_garbage(&self, _keep: &HashSet<String>) -> usize {
        0
    }
}

impl Executor for ScriptedExecutor {
    fn handle(
        &self,
        scope: RequestScope,
        request: Request<RequestBody>,
    ) -> BoxFuture<'_, Result<Response<protocol::Body>, GuestFailure>> {
        Box::pin(async move {
            let _held = scope.held_until_done;
            let label = request
                .headers()
                .get("x-test")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            self.stage.started.lock().push(label);
            let body = match &self.script {
                Script::Answer(tag) => tag.clone(),
                Script::Trap => {
                    return Err(GuestFailure::trap("unreachable executed".into()));
                }
                Script::Hold(name) => {
                    let gate = self.stage.gate(name);
                    let permit = gate.acquire().await.map_err(|_| GuestFailure::NoResponse)?;
                    permit.forget();
                    name.clone()
                }
            };
            Ok(Response::new(protocol::full(Bytes::from(body))))
        })
    }

    fn check_health(
        &self,
        _scope: RequestScope,
    ) -> Option<BoxFuture<'_, Result<Health, GuestFailure>>> {
        None
    }

    fn info(&self) -> CodeInfo {
        CodeInfo {
            tier: CodeTier::Optimized,
            wasi: "p2",
            health_check: false,
        }
    }

    fn retire(&self) {
        self.stage.retired.lock().push(self.tag.clone());
    }
}

struct Host {
    services: Arc<Services>,
    stage: Arc<Stage>,
    dir: tempfile::TempDir,
}

fn host() -> Host {
    host_in(tempfile::tempdir().expect("tempdir"))
}

fn host_in(dir: tempfile::TempDir) -> Host {
    let stage = Arc::new(Stage::default());
    let loader = Arc::new(ScriptedLoader {
        stage: stage.clone(),
        budget: MemoryBudget::new(1 << 40),
    });
    let data_dir = DataDir::open(dir.path()).expect("data_dir");
    let platform = Platform::builder(dir.path())
        .registry_sweep(Duration::from_secs(60))
        .build()
        .expect("platform");
    let services = Services::new(loader, data_dir, ServiceDefaults::default(), platform);
    services.mark_ready();
    Host {
        services,
        stage,
        dir,
    }
}

/// A response's status and body text.
async fn read(response: Response<protocol::Body>) -> (StatusCode, String) {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn manifest(text: &str) -> Manifest {
    Manifest::from_toml(text).expect("a manifest")
}

fn versioned(version: &str) -> Manifest {
    manifest(&format!("version = \"{version}\""))
}

impl Host {
    /// The same data directory under a new host, as after a restart.
    fn restart(self) -> Host {
        let Host { services, dir, .. } = self;
        drop(services);
        host_in(dir)
    }

    async fn deploy(&self, name: &str, script: &str, manifest: Manifest) -> DeployKind {
        self.services
            .deploy(
                name,
                Bytes::from(script.to_owned()),
                manifest,
                DeployMode::Replace,
            )
            .await
            .expect("deployed")
            .1
    }

    async fn canary(&self, name: &str, script: &str, version: &str, weight: u8) {
        self.services
            .deploy(
                name,
                Bytes::from(script.to_owned()),
                versioned(version),
                DeployMode::Canary {
                    weight,
                    auto_rollback: None,
                },
            )
            .await
            .expect("canary deployed");
    }

    /// One request to `name`, labelled `label`: its status and body.
    async fn call(&self, name: &str, label: &str) -> (StatusCode, String) {
        let service = self.services.table().get(name).expect("a live service");
        let request = Request::builder()
            .uri("/")
            .header("x-test", label)
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let response = self
            .services
            .serve(&service, request, RequestId::new(), Deadline::longest())
            .await;
        read(response).await
    }

    /// Wait until `condition` holds (checked every millisecond, for at most 10 s).
    async fn until(&self, what: &str, condition: impl Fn(&Services) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !condition(&self.services) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "never happened: {what}");
    }

    fn load(&self, name: &str) -> (u32, u32) {
        self.services
            .table()
            .get(name)
            .map_or((0, 0), |service| service.limiter.load())
    }
}

#[tokio::test]
async fn a_deploy_creates_then_replaces_and_keeps_the_history() {
    let host = host();
    assert_eq!(
        host.deploy("orders", "answer one", versioned("1")).await,
        DeployKind::Created
    );
    assert_eq!(
        host.call("orders", "a").await,
        (StatusCode::OK, "one".into())
    );
    assert_eq!(
        host.deploy("orders", "answer two", versioned("2")).await,
        DeployKind::Replaced
    );
    assert_eq!(
        host.call("orders", "b").await,
        (StatusCode::OK, "two".into())
    );
    let versions = host.services.table().versions("orders").expect("live");
    assert_eq!(versions.history.len(), 1);
    assert_eq!(versions.history[0].version, "1");
    assert_eq!(*host.stage.retired.lock(), ["orders@1"]);
}

#[tokio::test]
async fn a_failed_deploy_changes_nothing() {
    let host = host();
    host.deploy("orders", "answer one", versioned("1")).await;
    let refused = host
        .services
        .deploy(
            "orders",
            Bytes::from_static(b"not a component"),
            versioned("2"),
            DeployMode::Replace,
        )
        .await;
    assert!(matches!(
        refused,
        Err(ServiceError::Load(LoadError::Invalid(_)))
    ));
    // A refused upload makes no context: no store opened with its quota (the running
    // version's keeps its own), no meters, no log ring; for a new name, nothing at all.
    let never = host
        .services
        .deploy(
            "never",
            Bytes::from_static(b"not a component"),
            Manifest::default(),
            DeployMode::Replace,
        )
        .await;
    assert!(never.is_err());
    let metrics = host.services.platform().telemetry.metrics.render();
    assert!(
        !metrics.contains("service=\"never\""),
        "a refused deploy made the service's context (its meters): {metrics}"
    );
    assert_eq!(
        host.call("orders", "a").await,
        (StatusCode::OK, "one".into())
    );
    let persisted: Vec<super::state::ServiceState> =
        host.services.data_dir.services().expect("readable").0;
    assert_eq!(persisted.len(), 1);
    assert_eq!(persisted[0].current.version, "1");
    assert!(persisted[0].history.is_empty());
}

#[tokio::test]
async fn a_route_has_one_owner_and_a_refused_deploy_installs_nothing() {
    let host = host();
    host.deploy("orders", "answer one", manifest("route = \"/shop\""))
        .await;
    let taken = host
        .services
        .deploy(
            "payment",
            Bytes::from_static(b"answer pay"),
            manifest("route = \"/shop\""),
            DeployMode::Replace,
        )
        .await;
    assert!(matches!(taken, Err(ServiceError::RouteConflict { owner, .. }) if owner == "orders"));
    assert!(host.services.table().get("payment").is_none());
}

#[tokio::test]
async fn a_canary_takes_exactly_its_weight_of_the_draws() {
    let host = host();
    host.deploy("orders", "answer stable", versioned("1")).await;
    host.canary("orders", "answer canary", "2", 30).await;
    let versions = host.services.table().versions("orders").expect("live");
    let to_canary = (0..100u8)
        .filter(|draw| versions.pick(*draw).1.is_some())
        .count();
    assert_eq!(to_canary, 30);
    // Both versions really serve: the chance that 200 requests all land on one side
    // is below 10^-30.
    let mut seen = HashSet::new();
    for index in 0..200 {
        seen.insert(host.call("orders", &index.to_string()).await.1);
    }
    assert_eq!(seen, HashSet::from(["stable".into(), "canary".into()]));
    host.services
        .set_canary_weight("orders", 0)
        .await
        .expect("weight set");
    for index in 0..20 {
        assert_eq!(host.call("orders", &index.to_string()).await.1, "stable");
    }
    host.services
        .promote_canary("orders")
        .await
        .expect("promoted");
    assert_eq!(host.call("orders", "x").await.1, "canary");
    let versions = host.services.table().versions("orders").expect("live");
    assert!(versions.canary.is_none());
    assert_eq!(versions.history[0].version, "1");
}

#[tokio::test]
async fn a_canary_whose_failures_pass_its_threshold_is_rolled_back_by_itself() {
    let host = host();
    host.deploy("orders", "answer stable", versioned("1")).await;
    host.services
        .deploy(
            "orders",
            Bytes::from_static(b"trap"),
            versioned("2"),
            DeployMode::Canary {
                weight: 100,
                auto_rollback: Some(AutoRollback {
                    max_error_rate: 0.5,
                    window_ms: 60_000,
                    min_requests: 5,
                }),
            },
        )
        .await
        .expect("canary deployed");
    for index in 0..5 {
        let (status, _) = host.call("orders", &index.to_string()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    host.until("the canary is rolled back", |services| {
        services
            .table()
            .versions("orders")
            .is_some_and(|versions| versions.canary.is_none())
    })
    .await;
    assert_eq!(
        host.call("orders", "after").await,
        (StatusCode::OK, "stable".into())
    );
    let faults = host
        .services
        .table()
        .get("orders")
        .expect("live")
        .faults
        .snapshot();
    assert_eq!(faults.get("trap"), Some(&5));
    // The rollback is persisted: a restart serves the stable version alone.
    let restarted = host.restart();
    restarted.services.restore().await.expect("restored");
    let versions = restarted
        .services
        .table()
        .versions("orders")
        .expect("restored");
    assert!(versions.canary.is_none());
    assert_eq!(versions.stable.record.version, "1");
}

#[tokio::test]
async fn a_rollback_goes_to_the_version_asked_for_and_the_rest_stays_in_history() {
    let host = host();
    for version in ["1", "2", "3"] {
        host.deploy("orders", &format!("answer v{version}"), versioned(version))
            .await;
    }
    let back = host
        .services
        .rollback("orders", Some("1"))
        .await
        .expect("rolled back");
    assert_eq!(back.record.version, "1");
    assert_eq!(host.call("orders", "a").await.1, "v1");
    let versions = host.services.table().versions("orders").expect("live");
    let history: Vec<&str> = versions
        .history
        .iter()
        .map(|record| record.version.as_str())
        .collect();
    assert_eq!(history, ["3", "2"]);
    let missing = host.services.rollback("orders", Some("9")).await;
    assert!(matches!(missing, Err(ServiceError::Conflict { .. })));
    // Without a version: the previous one.
    host.services
        .rollback("orders", None)
        .await
        .expect("rolled back");
    assert_eq!(host.call("orders", "b").await.1, "v3");
}

#[tokio::test]
async fn a_full_service_answers_503_at_once_and_its_neighbour_does_not_notice() {
    let host = host();
    host.deploy(
        "slow",
        "hold slow",
        manifest("[limits]\nmax_concurrency = 1\nqueue = 0"),
    )
    .await;
    host.deploy("fast", "answer fast", Manifest::default())
        .await;
    let held = {
        let services = host.services.clone();
        let service = services.table().get("slow").expect("live");
        tokio::spawn(async move {
            let request = Request::new(Empty::<Bytes>::new());
            services
                .serve(&service, request, RequestId::new(), Deadline::longest())
                .await
                .status()
        })
    };
    host.until("the first request runs", |_| host.load("slow") == (1, 0))
        .await;
    let (status, body) = host.call("slow", "second").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("overloaded"), "{body}");
    assert_eq!(
        host.call("fast", "x").await,
        (StatusCode::OK, "fast".into())
    );
    host.stage.gate("slow").add_permits(1);
    assert_eq!(held.await.expect("served"), StatusCode::OK);
    let faults = host
        .services
        .table()
        .get("slow")
        .expect("live")
        .faults
        .snapshot();
    assert_eq!(faults.get("overload"), Some(&1));
}

#[tokio::test]
async fn queued_requests_run_in_arrival_order() {
    let host = host();
    host.deploy(
        "orders",
        "hold orders",
        manifest("[limits]\nmax_concurrency = 1\nqueue = 8"),
    )
    .await;
    let mut waiting = Vec::new();
    for index in 0..5u32 {
        let services = host.services.clone();
        let service = services.table().get("orders").expect("live");
        waiting.push(tokio::spawn(async move {
            let request = Request::builder()
                .header("x-test", index.to_string())
                .body(Empty::<Bytes>::new())
                .expect("a request");
            services
                .serve(&service, request, RequestId::new(), Deadline::longest())
                .await
                .status()
        }));
        // Each arrives only once the one before it runs or waits.
        host.until("the request is in", |_| {
            let (running, queued) = host.load("orders");
            running + queued == index + 1
        })
        .await;
    }
    host.stage.gate("orders").add_permits(5);
    for request in waiting {
        assert_eq!(request.await.expect("served"), StatusCode::OK);
    }
    assert_eq!(*host.stage.started.lock(), ["0", "1", "2", "3", "4"]);
}

#[tokio::test]
async fn a_request_queued_when_its_service_is_removed_is_refused_once_admitted() {
    let host = host();
    host.deploy(
        "orders",
        "hold orders",
        manifest("[limits]\nmax_concurrency = 1\nqueue = 4"),
    )
    .await;
    let first = {
        let services = host.services.clone();
        let service = services.table().get("orders").expect("live");
        tokio::spawn(async move {
            services
                .serve(
                    &service,
                    Request::new(Empty::<Bytes>::new()),
                    RequestId::new(),
                    Deadline::longest(),
                )
                .await
                .status()
        })
    };
    host.until("the first request runs", |_| host.load("orders") == (1, 0))
        .await;
    let service = host.services.table().get("orders").expect("live");
    let queued = {
        let services = host.services.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let response = services
                .serve(
                    &service,
                    Request::new(Empty::<Bytes>::new()),
                    RequestId::new(),
                    Deadline::longest(),
                )
                .await;
            read(response).await
        })
    };
    host.until("the second request waits", |_| {
        service.limiter.load() == (1, 1)
    })
    .await;
    host.services.remove("orders").await.expect("removed");
    host.stage.gate("orders").add_permits(1);
    assert_eq!(first.await.expect("served"), StatusCode::OK);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued request is answered, not run")
        .expect("answered");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("was removed while the request waited"),
        "{body}"
    );
    assert_eq!(
        host.stage.started.lock().len(),
        1,
        "the queued one never ran"
    );
}

#[tokio::test]
async fn scale_changes_the_limits_live_and_survives_a_redeploy_and_a_restart() {
    let host = host();
    host.deploy("orders", "answer one", versioned("1")).await;
    let scale = Scale {
        max_concurrency: 3,
        queue: 7,
    };
    host.services.scale("orders", scale).await.expect("scaled");
    let service = host.services.table().get("orders").expect("live");
    assert_eq!(service.limiter.scale(), scale);
    host.deploy(
        "orders",
        "answer two",
        manifest("version = \"2\"\n[limits]\nmax_concurrency = 9"),
    )
    .await;
    assert_eq!(service.limiter.scale(), scale, "the operator's scale wins");
    let too_many = Scale {
        max_concurrency: 501,
        queue: 0,
    };
    assert!(matches!(
        host.services.scale("orders", too_many).await,
        Err(ServiceError::Invalid(_))
    ));
    let restarted = host.restart();
    restarted.services.restore().await.expect("restored");
    let service = restarted.services.table().get("orders").expect("restored");
    assert_eq!(service.limiter.scale(), scale);
}

#[tokio::test]
async fn only_a_deploy_is_refused_over_an_external_service_of_the_same_name() {
    let host = host();
    host.deploy("legacy", "answer one", versioned("1")).await;
    // An operator registers an external service of the same name meanwhile.
    let external = crate::registry::Instance {
        id: "ext/legacy".into(),
        service: "legacy".into(),
        endpoint: crate::registry::Endpoint::Http("127.0.0.1:9".into()),
        version: "external".into(),
        tags: Vec::new(),
        health: Health::Serving,
    };
    host.services
        .platform()
        .registry
        .register(external, Duration::from_secs(60))
        .await
        .expect("registered");
    let redeploy = host
        .services
        .deploy(
            "legacy",
            Bytes::from_static(b"answer two"),
            versioned("2"),
            DeployMode::Replace,
        )
        .await;
    assert!(
        matches!(redeploy, Err(ServiceError::Conflict { .. })),
        "the deploy was not refused"
    );
    // What runs already can still be changed.
    let scale = Scale {
        max_concurrency: 2,
        queue: 1,
    };
    host.services
        .scale("legacy", scale)
        .await
        .expect("scaled all the same");
}

#[tokio::test]
async fn a_route_inside_another_service_s_needs_a_deployer_who_may_change_it() {
    let host = host();
    host.deploy(
        "payment",
        "answer payment",
        manifest("route = \"/payment\""),
    )
    .await;
    let shop_only = crate::access::Grant {
        scope: crate::access::Scope::Deploy,
        services: vec!["shop-*".into()],
    };
    let taking = host
        .services
        .deploy_as(
            "shop-x",
            Bytes::from_static(b"answer stolen"),
            manifest("route = \"/payment/charges\""),
            DeployMode::Replace,
            &shop_only,
        )
        .await;
    assert!(
        matches!(&taking, Err(ServiceError::RouteNested { owner, .. }) if owner == "payment"),
        "a shop-* token took payment's traffic"
    );
    assert!(host.services.table().get("shop-x").is_none());
    // Beside it, the same token may deploy; one who may change payment may nest.
    host.services
        .deploy_as(
            "shop-y",
            Bytes::from_static(b"answer y"),
            manifest("route = \"/shop-y\""),
            DeployMode::Replace,
            &shop_only,
        )
        .await
        .expect("a route of its own");
    let payment_team = crate::access::Grant {
        scope: crate::access::Scope::Deploy,
        services: vec!["shop-*".into(), "payment".into()],
    };
    host.services
        .deploy_as(
            "shop-x",
            Bytes::from_static(b"answer charges"),
            manifest("route = \"/payment/charges\""),
            DeployMode::Replace,
            &payment_team,
        )
        .await
        .expect("nested by a deployer of payment");
}

#[tokio::test]
async fn a_refused_deploy_leaves_the_running_store_quota_as_it_is() {
    let host = host();
    host.deploy(
        "orders",
        "answer one",
        manifest("version = \"1\"\n[limits]\nstore_mb = 1"),
    )
    .await;
    host.deploy("web", "answer web", manifest("route = \"/shop\""))
        .await;
    let quota = || {
        host.services
            .table()
            .versions("orders")
            .expect("live")
            .stable
            .context
            .store
            .quota()
    };
    assert_eq!(quota(), 1024 * 1024);
    // Compiled and accepted by the runtime, then refused for its route.
    let refused = host
        .services
        .deploy(
            "orders",
            Bytes::from_static(b"answer two"),
            manifest("version = \"2\"\nroute = \"/shop\"\n[limits]\nstore_mb = 2"),
            DeployMode::Replace,
        )
        .await;
    assert!(matches!(refused, Err(ServiceError::RouteConflict { .. })));
    assert_eq!(quota(), 1024 * 1024, "the refused version's quota applied");
    // Accepted, its quota applies.
    host.deploy(
        "orders",
        "answer three",
        manifest("version = \"3\"\n[limits]\nstore_mb = 2"),
    )
    .await;
    assert_eq!(quota(), 2 * 1024 * 1024);
}

#[tokio::test]
async fn a_service_refuses_a_caller_its_manifest_does_not_allow() {
    let host = host();
    host.deploy(
        "payment",
        "answer paid",
        manifest("[inbound]\nallowed_callers = [\"orders\"]"),
    )
    .await;
    let service = host.services.table().get("payment").expect("live");
    let from = |caller: &'static str| {
        Request::builder()
            .header("x-shoal-caller", caller)
            .body(Empty::<Bytes>::new())
            .expect("a request")
    };
    let refused = host
        .services
        .serve(
            &service,
            from("shipping"),
            RequestId::new(),
            Deadline::longest(),
        )
        .await;
    let (status, body) = read(refused).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("does not accept calls from `shipping`"),
        "{body}"
    );
    assert!(host.stage.started.lock().is_empty(), "the guest never ran");
    let allowed = host
        .services
        .serve(
            &service,
            from("orders"),
            RequestId::new(),
            Deadline::longest(),
        )
        .await;
    assert_eq!(read(allowed).await, (StatusCode::OK, "paid".into()));
}
