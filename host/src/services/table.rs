//! The live table of services: name → [`LiveService`] (its admission limiter, its
//! fault counts and the [`Versions`] live now), route → name.

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::ServiceError;
use super::limiter::{Limiter, Scale};
use super::spec::DeploymentSpec;
use super::state::{AutoRollback, CanaryState, ServiceState};
use crate::data_dir::VersionRecord;
use crate::policy::error_rate::ErrorWindow;
use crate::runtime::ServiceContext;
use crate::runtime::executor::Executor;

/// One deployed version of a service, ready to serve.
///
/// Requests hold an `Arc` to the deployment they started on, so a redeploy never
/// changes the version under a running request.
pub struct Deployment {
    /// What is persisted about it.
    pub record: VersionRecord,
    /// Its settings, resolved from its manifest and the host's defaults.
    pub spec: DeploymentSpec,
    /// What its instances see of themselves.
    pub context: Arc<ServiceContext>,
    /// Runs its requests.
    pub executor: Arc<dyn Executor>,
    /// The periodic health check of this version, when the code exports one.
    pub(crate) health_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Its request metrics, resolved once per method and status class.
    pub(crate) request_series: crate::telemetry::metrics::RequestSeries,
}

impl Deployment {
    /// Gateway path prefix.
    pub fn route(&self) -> &str {
        &self.spec.route
    }

    /// The gRPC services it serves (`package.Service`), whose paths reach it unchanged.
    pub fn grpc(&self) -> &[String] {
        &self.record.manifest.grpc
    }

    /// A request's time limit.
    pub fn timeout(&self) -> Duration {
        self.spec.timeout()
    }

    /// Stop this version's background work: its health checks, and what its executor
    /// keeps for later requests (requests still running on it finish).
    pub fn retire(&self) {
        if let Some(task) = self.health_task.lock().take() {
            task.abort();
        }
        self.executor.retire();
    }
}

/// A version that takes a share of a service's traffic.
pub struct Canary {
    /// The canary version.
    pub deployment: Arc<Deployment>,
    /// Percentage of requests (0–100) it receives.
    pub weight: u8,
    /// When to roll it back automatically.
    pub auto_rollback: Option<AutoRollback>,
    /// Its recent outcomes (kept when only the weight changes).
    pub window: Arc<Mutex<ErrorWindow>>,
    /// Set once an automatic rollback has been started.
    pub tripped: Arc<AtomicBool>,
}

impl Canary {
    /// A new canary: an empty error window (as long as the rule's, or 30 s).
    pub fn new(
        deployment: Arc<Deployment>,
        weight: u8,
        auto_rollback: Option<AutoRollback>,
    ) -> Self {
        let window = auto_rollback
            .as_ref()
            .map_or(Duration::from_secs(30), |rule| {
                Duration::from_millis(rule.window_ms)
            });
        Self {
            deployment,
            weight,
            auto_rollback,
            window: Arc::new(Mutex::new(ErrorWindow::new(
                window,
                std::time::Instant::now(),
            ))),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same canary with another share of the traffic: its error window and trip
    /// state carry over.
    pub fn with_weight(&self, weight: u8) -> Self {
        Self {
            deployment: self.deployment.clone(),
            weight,
            auto_rollback: self.auto_rollback.clone(),
            window: self.window.clone(),
            tripped: self.tripped.clone(),
        }
    }

    /// What is persisted of it.
    pub fn state(&self) -> CanaryState {
        CanaryState {
            record: self.deployment.record.clone(),
            weight: self.weight,
            auto_rollback: self.auto_rollback.clone(),
        }
    }
}

/// Failures counted per kind, for the admin API.
#[derive(Debug, Default)]
pub struct FaultCounters {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests served (any outcome).
    pub requests: AtomicU64,
}

impl FaultCounters {
    /// Count one failure of `kind`.
    pub fn count(&self, kind: &'static str) {
        *self.counts.lock().entry(kind).or_default() += 1;
    }

    /// Every kind and its count.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().clone()
    }

    /// Count one request.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// The versions of a service live at one moment. Replaced whole by every change, so
/// a request sees one consistent set.
pub struct Versions {
    /// The version that takes the traffic the canary does not.
    pub stable: Arc<Deployment>,
    /// A version taking a share of the traffic.
    pub canary: Option<Arc<Canary>>,
    /// Earlier versions, newest first (for rollback).
    pub history: Vec<VersionRecord>,
    /// The scale set with `shoal scale` (persisted), which the manifests' limits do
    /// not override.
    pub scale_override: Option<Scale>,
}

impl Versions {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.stable.record.name
    }

    /// The gateway route.
    pub fn route(&self) -> &str {
        self.stable.route()
    }

    /// The gRPC services it serves.
    pub fn grpc(&self) -> &[String] {
        self.stable.grpc()
    }

    /// The manifests of the versions that run: the stable one, then the canary's.
    pub fn manifests(&self) -> impl Iterator<Item = &crate::manifest::Manifest> {
        std::iter::once(&self.stable.record.manifest).chain(
            self.canary
                .iter()
                .map(|canary| &canary.deployment.record.manifest),
        )
    }

    /// The same versions with `canary` in place of the current one.
    pub fn with_canary(&self, canary: Option<Arc<Canary>>) -> Versions {
        Versions {
            stable: self.stable.clone(),
            canary,
            history: self.history.clone(),
            scale_override: self.scale_override,
        }
    }

    /// The live versions: the stable one, and the canary if any.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        std::iter::once(&self.stable).chain(self.canary.as_ref().map(|canary| &canary.deployment))
    }

    /// The longest time limit of the live versions.
    pub fn longest_timeout(&self) -> Duration {
        self.deployments()
            .map(|deployment| deployment.timeout())
            .max()
            .unwrap_or_default()
    }

    /// The deployment a request should use: the canary for `weight`% of draws.
    /// `draw` is uniform in 0..100.
    pub fn pick(&self, draw: u8) -> (&Arc<Deployment>, Option<&Arc<Canary>>) {
        match &self.canary {
            Some(canary) if draw < canary.weight => (&canary.deployment, Some(canary)),
            _ => (&self.stable, None),
        }
    }

    /// The scale that applies: the operator's override, or the stable version's
    /// manifest.
    pub fn scale(&self) -> Scale {
        self.scale_override.unwrap_or(self.stable.spec.scale)
    }

    /// What is persisted of these versions.
    pub fn state(&self) -> ServiceState {
        ServiceState {
            current: self.stable.record.clone(),
            history: self.history.clone(),
            canary: self.canary.as_ref().map(|canary| canary.state()),
            scale: self.scale_override,
        }
    }
}

/// A service as the gateway sees it: what lives as long as the service, across its
/// versions (admission, fault counts), and the versions live now. The gateway finds it
/// once per request; a request admitted after waiting reads the versions live then.
pub struct LiveService {
    name: String,
    /// Admission control.
    pub limiter: Arc<Limiter>,
    /// Fault counters.
    pub faults: FaultCounters,
    versions: ArcSwap<Versions>,
    removed: AtomicBool,
    /// Which requests are recorded, when set live (else the manifest says).
    recording: parking_lot::RwLock<Option<crate::recording::Mode>>,
}

impl LiveService {
    fn new(versions: Arc<Versions>, scale: Scale) -> Self {
        Self {
            name: versions.name().to_owned(),
            limiter: Limiter::new(scale),
            faults: FaultCounters::default(),
            versions: ArcSwap::new(versions),
            removed: AtomicBool::new(false),
            recording: parking_lot::RwLock::new(None),
        }
    }

    /// Which of its requests are recorded: as set live, else as `stable`'s manifest
    /// says.
    pub fn recording_mode(&self, stable: &Deployment) -> crate::recording::Mode {
        match *self.recording.read() {
            Some(mode) => mode,
            None => stable
                .record
                .manifest
                .debug
                .record_mode()
                .unwrap_or_default(),
        }
    }

    /// Set which requests are recorded from now on (`None`: as the manifest says).
    pub fn set_recording_mode(&self, mode: Option<crate::recording::Mode>) {
        *self.recording.write() = mode;
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The versions live now.
    pub fn versions(&self) -> Arc<Versions> {
        self.versions.load_full()
    }

    /// Whether the service has been removed (its requests still queued are refused).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Inner {
    by_name: BTreeMap<String, Arc<LiveService>>,
    by_route: Routes,
    /// gRPC service name → the service that serves it.
    by_grpc: Routes,
}

/// Route → owning service, one owner per route. Pure, so ownership is unit-tested.
#[derive(Debug, Default)]
struct Routes(HashMap<String, String>);

impl Routes {
    fn get(&self, route: &str) -> Option<&String> {
        self.0.get(route)
    }

    /// Give `route` to `name`, moving it off `old_route`; refused when another
    /// service owns `route`.
    fn claim(&mut self, name: &str, route: &str, old_route: Option<&str>) -> Result<(), String> {
        if let Some(owner) = self.0.get(route)
            && owner != name
        {
            return Err(owner.clone());
        }
        if let Some(old) = old_route
            && old != route
        {
            self.release(name, old);
        }
        self.0.insert(route.to_owned(), name.to_owned());
        Ok(())
    }

    /// Drop `route` if `name` owns it.
    fn release(&mut self, name: &str, route: &str) {
        if self.0.get(route).is_some_and(|owner| owner == name) {
            self.0.remove(route);
        }
    }

    /// Give every one of `names` to `name` (the caller checked that no other service
    /// owns one) and release those of `old` it no longer names.
    fn reassign(&mut self, name: &str, names: &[String], old: &[String]) {
        for gone in old.iter().filter(|gone| !names.contains(gone)) {
            self.release(name, gone);
        }
        for wanted in names {
            self.0.insert(wanted.clone(), name.to_owned());
        }
    }
}

/// Name- and route-indexed set of services. Lock hold times are a map lookup or
/// insert; the lock is never held across an await.
#[derive(Default)]
pub struct ServiceTable {
    inner: RwLock<Inner>,
}

impl ServiceTable {
    /// The live service `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LiveService>> {
        self.inner.read().by_name.get(name).cloned()
    }

    /// The versions of `name` live now.
    pub fn versions(&self, name: &str) -> Option<Arc<Versions>> {
        self.get(name).map(|service| service.versions())
    }

    /// Every live service, by name.
    pub fn services(&self) -> Vec<Arc<LiveService>> {
        self.inner.read().by_name.values().cloned().collect()
    }

    /// Which service owns `route`, if any.
    pub fn route_owner(&self, route: &str) -> Option<String> {
        self.inner.read().by_route.get(route).cloned()
    }

    /// Whether `name` may take `route` and the gRPC services `grpc`: free, or already
    /// its own. The one route check of every change and of restore.
    pub fn check_route(
        &self,
        route: &str,
        grpc: &[String],
        name: &str,
    ) -> Result<(), ServiceError> {
        if let Some(owner) = self.route_owner(route).filter(|owner| owner != name) {
            return Err(ServiceError::RouteConflict {
                route: route.to_owned(),
                owner,
            });
        }
        let inner = self.inner.read();
        for service in grpc {
            if let Some(owner) = inner.by_grpc.get(service).filter(|owner| *owner != name) {
                return Err(ServiceError::RouteConflict {
                    route: crate::manifest::grpc_route(service),
                    owner: owner.clone(),
                });
            }
        }
        Ok(())
    }

    /// The service whose traffic `route` would take a share of: the owner of the
    /// longest route that `route` sits inside (on a segment boundary), when that is
    /// another service than `name`. The gateway sends each request to the longest
    /// matching route, so a route nested inside another service's takes its traffic
    /// below that path.
    pub fn nested_inside(&self, route: &str, name: &str) -> Option<String> {
        let inner = self.inner.read();
        let mut candidate = route.trim_end_matches('/');
        loop {
            candidate = match candidate.rfind('/') {
                Some(index) => &candidate[..index],
                None => return None,
            };
            let parent = if candidate.is_empty() { "/" } else { candidate };
            if let Some(owner) = inner.by_route.get(parent) {
                return (owner != name).then(|| owner.clone());
            }
            if candidate.is_empty() {
                return None;
            }
        }
    }

    /// Make `versions` the live versions of their service (created if new), moving its
    /// route if it changed, and apply `scale` to its limiter. Returns the service, the
    /// versions installed and those they replaced. Refused, with nothing changed, when
    /// another service owns the route: one route, one service.
    #[allow(clippy::type_complexity)]
    pub fn install(
        &self,
        versions: Versions,
        scale: Scale,
    ) -> Result<(Arc<LiveService>, Arc<Versions>, Option<Arc<Versions>>), ServiceError> {
        let mut inner = self.inner.write();
        let name = versions.name().to_owned();
        let existing = inner.by_name.get(&name).cloned();
        let old = existing.as_ref().map(|service| service.versions());
        let old_route = old.as_ref().map(|old| old.route().to_owned());
        let old_grpc = old.as_ref().map_or(&[][..], |old| old.grpc());
        if let Some((service, owner)) = versions.grpc().iter().find_map(|service| {
            inner
                .by_grpc
                .get(service)
                .filter(|owner| **owner != name)
                .map(|owner| (service.clone(), owner.clone()))
        }) {
            return Err(ServiceError::RouteConflict {
                route: crate::manifest::grpc_route(&service),
                owner,
            });
        }
        inner
            .by_route
            .claim(&name, versions.route(), old_route.as_deref())
            .map_err(|owner| ServiceError::RouteConflict {
                route: versions.route().to_owned(),
                owner,
            })?;
        inner.by_grpc.reassign(&name, versions.grpc(), old_grpc);
        let versions = Arc::new(versions);
        Ok(match existing {
            Some(service) => {
                service.limiter.rescale(scale);
                let previous = service.versions.swap(versions.clone());
                (service, versions, Some(previous))
            }
            None => {
                let service = Arc::new(LiveService::new(versions.clone(), scale));
                inner.by_name.insert(name, service.clone());
                (service, versions, None)
            }
        })
    }

    /// Remove `name` (and its route, if it owns it). Requests it still has queued are
    /// refused once admitted. Returns the removed service.
    pub fn remove(&self, name: &str) -> Option<Arc<LiveService>> {
        let mut inner = self.inner.write();
        let removed = inner.by_name.remove(name)?;
        removed.removed.store(true, Ordering::Release);
        let versions = removed.versions();
        inner.by_route.release(name, versions.route());
        for service in versions.grpc() {
            inner.by_grpc.release(name, service);
        }
        Some(removed)
    }

    /// The service that serves gRPC service `name` (the first segment of a gRPC
    /// path).
    pub fn resolve_grpc(&self, name: &str) -> Option<Arc<LiveService>> {
        let inner = self.inner.read();
        let owner = inner.by_grpc.get(name)?;
        inner.by_name.get(owner).cloned()
    }

    /// The service whose route is the longest prefix of `path` on a segment boundary,
    /// with the length of that prefix.
    pub fn resolve(&self, path: &str) -> Option<(Arc<LiveService>, usize)> {
        let inner = self.inner.read();
        let lookup = |route: &str| {
            inner
                .by_route
                .get(route)
                .and_then(|name| inner.by_name.get(name))
                .cloned()
        };
        let mut candidate = path.trim_end_matches('/');
        loop {
            if candidate.is_empty() {
                return lookup("/").map(|service| (service, 0));
            }
            if let Some(service) = lookup(candidate) {
                return Some((service, candidate.len()));
            }
            candidate = match candidate.rfind('/') {
                Some(index) => &candidate[..index],
                None => "",
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Routes;

    #[test]
    fn a_route_nested_inside_another_service_s_names_its_owner() {
        let table = super::ServiceTable::default();
        {
            let mut inner = table.inner.write();
            inner
                .by_route
                .claim("payment", "/payment", None)
                .expect("free");
            inner
                .by_route
                .claim("charges", "/payment/charges", None)
                .expect("free");
        }
        let nested = |route: &str, name: &str| table.nested_inside(route, name);
        assert_eq!(
            nested("/payment/charges/x", "shop-x").as_deref(),
            Some("charges")
        );
        assert_eq!(
            nested("/payment/refunds", "shop-x").as_deref(),
            Some("payment")
        );
        assert_eq!(
            nested("/payment/refunds/", "shop-x").as_deref(),
            Some("payment")
        );
        // Its own route, a route beside it, and a parent of it take nothing.
        assert_eq!(nested("/payment/refunds", "payment"), None);
        assert_eq!(nested("/paymentx", "shop-x"), None);
        assert_eq!(nested("/pay", "shop-x"), None);
        assert_eq!(nested("/shop", "shop-x"), None);
        // Under a root route, every other route is nested.
        table
            .inner
            .write()
            .by_route
            .claim("web", "/", None)
            .expect("free");
        assert_eq!(nested("/shop", "shop-x").as_deref(), Some("web"));
        assert_eq!(nested("/", "web"), None);
    }

    #[test]
    fn a_route_has_one_owner() {
        let mut routes = Routes::default();
        routes.claim("a", "/x", None).expect("free");
        assert_eq!(routes.claim("b", "/x", None), Err("a".to_owned()));
        assert_eq!(routes.get("/x").map(String::as_str), Some("a"));
        // Moving a's route frees the old one; b cannot release what a owns.
        routes.claim("a", "/y", Some("/x")).expect("move");
        assert!(routes.get("/x").is_none());
        routes.release("b", "/y");
        assert_eq!(routes.get("/y").map(String::as_str), Some("a"));
        routes.claim("b", "/x", None).expect("free again");
        routes.release("a", "/y");
        assert!(routes.get("/y").is_none());
    }
}
