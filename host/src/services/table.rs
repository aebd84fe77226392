//! The live table of services: name → entry (stable version, optional canary,
//! admission limiter), route → name.

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::ServiceError;
use super::limiter::Limiter;
use super::state::{AutoRollback, CanaryState};
use crate::policy::error_rate::ErrorWindow;
use crate::runtime::{InstanceLimits, Loaded, ServiceContext};
use crate::storage::ServiceRecord;

/// One deployed version of a service, ready to serve.
///
/// Requests hold an `Arc` to the deployment they started on, so a redeploy never
/// changes the version under a running request.
pub struct Deployment {
    /// What is persisted about it.
    pub record: ServiceRecord,
    /// Gateway path prefix.
    pub route: String,
    /// What its instances see of themselves.
    pub context: Arc<ServiceContext>,
    /// What bounds each of its instances.
    pub limits: InstanceLimits,
    /// The compiled, linked component. Baseline code is swapped for optimised code
    /// when that is ready; a request keeps the code it started on.
    pub code: Arc<ArcSwap<Loaded>>,
    /// Deadline per request.
    pub timeout: Duration,
    /// The periodic health check of this version, when the component exports one.
    pub(crate) health_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Idle instances kept for reuse, when the manifest opts in (WASIp2 code).
    pub pool: Option<Arc<crate::runtime::reuse::InstancePool>>,
    /// The instances serving requests several at a time (WASIp3 code).
    pub concurrent: Option<Arc<crate::runtime::concurrent::ConcurrentService>>,
}

impl Deployment {
    /// The code new requests run.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.code.load_full()
    }

    /// Stop this version's background work: its health checks, and its idle reusable
    /// instances (requests still running on it finish).
    pub fn retire(&self) {
        if let Some(task) = self.health_task.lock().take() {
            task.abort();
        }
        if let Some(pool) = &self.pool {
            pool.clear();
        }
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

/// What lives as long as the service, across versions.
pub struct Shared {
    /// Admission control.
    pub limiter: Arc<Limiter>,
    /// Fault counters.
    pub faults: FaultCounters,
}

/// A service as the gateway sees it.
pub struct ServiceEntry {
    /// The version that takes the traffic the canary does not.
    pub stable: Arc<Deployment>,
    /// A version taking a share of the traffic.
    pub canary: Option<Arc<Canary>>,
    /// Earlier versions, newest first (for rollback).
    pub history: Vec<ServiceRecord>,
    /// State kept across versions.
    pub shared: Arc<Shared>,
    /// Whether the scale was set with `shoal scale` (persisted) rather than the manifest.
    pub scale_override: bool,
}

impl ServiceEntry {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.stable.record.name
    }

    /// The gateway route.
    pub fn route(&self) -> &str {
        &self.stable.route
    }

    /// The same service with `canary` in place of the current one.
    pub fn with_canary(&self, canary: Option<Arc<Canary>>) -> ServiceEntry {
        ServiceEntry {
            stable: self.stable.clone(),
            canary,
            history: self.history.clone(),
            shared: self.shared.clone(),
            scale_override: self.scale_override,
        }
    }

    /// The live versions: the stable one, and the canary if any.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        std::iter::once(&self.stable).chain(self.canary.as_ref().map(|canary| &canary.deployment))
    }

    /// The longest time limit of the live versions.
    pub fn longest_timeout(&self) -> Duration {
        let canary = self.canary.as_ref().map(|canary| canary.deployment.timeout);
        canary.map_or(self.stable.timeout, |canary| {
            canary.max(self.stable.timeout)
        })
    }

    /// The deployment a request should use: the canary for `weight`% of draws.
    /// `draw` is uniform in 0..100.
    pub fn pick(&self, draw: u8) -> (&Arc<Deployment>, Option<&Arc<Canary>>) {
        match &self.canary {
            Some(canary) if draw < canary.weight => (&canary.deployment, Some(canary)),
            _ => (&self.stable, None),
        }
    }
}

#[derive(Default)]
struct Inner {
    by_name: BTreeMap<String, Arc<ServiceEntry>>,
    by_route: Routes,
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
}

/// Name- and route-indexed set of services. Lock hold times are a map lookup or
/// insert; the lock is never held across an await.
#[derive(Default)]
pub struct ServiceTable {
    inner: RwLock<Inner>,
}

impl ServiceTable {
    /// The entry of `name`.
    pub fn entry(&self, name: &str) -> Option<Arc<ServiceEntry>> {
        self.inner.read().by_name.get(name).cloned()
    }

    /// The stable deployment of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Deployment>> {
        self.entry(name).map(|entry| entry.stable.clone())
    }

    /// Every entry, by name.
    pub fn entries(&self) -> Vec<Arc<ServiceEntry>> {
        self.inner.read().by_name.values().cloned().collect()
    }

    /// Which service owns `route`, if any.
    pub fn route_owner(&self, route: &str) -> Option<String> {
        self.inner.read().by_route.get(route).cloned()
    }

    /// Whether `name` may take `route`: free, or already its own. The one route check
    /// of deploy, rollback and restore.
    pub fn check_route(&self, route: &str, name: &str) -> Result<(), ServiceError> {
        match self.route_owner(route) {
            Some(owner) if owner != name => Err(ServiceError::RouteConflict {
                route: route.to_owned(),
                owner,
            }),
            _ => Ok(()),
        }
    }

    /// Install `entry`, replacing the previous entry of the same name (and its route,
    /// if the route changed). Returns the replaced entry. Refused, with nothing
    /// changed, when another service owns the route: one route, one service.
    pub fn insert(
        &self,
        entry: Arc<ServiceEntry>,
    ) -> Result<Option<Arc<ServiceEntry>>, ServiceError> {
        let mut inner = self.inner.write();
        let name = entry.name().to_owned();
        let old_route = inner.by_name.get(&name).map(|old| old.route().to_owned());
        inner
            .by_route
            .claim(&name, entry.route(), old_route.as_deref())
            .map_err(|owner| ServiceError::RouteConflict {
                route: entry.route().to_owned(),
                owner,
            })?;
        Ok(inner.by_name.insert(name, entry))
    }

    /// Remove `name` (and its route, if it owns it). Returns the removed entry.
    pub fn remove(&self, name: &str) -> Option<Arc<ServiceEntry>> {
        let mut inner = self.inner.write();
        let removed = inner.by_name.remove(name)?;
        inner.by_route.release(name, removed.route());
        Some(removed)
    }

    /// The entry whose route is the longest prefix of `path` on a segment boundary,
    /// with the length of that prefix.
    pub fn resolve(&self, path: &str) -> Option<(Arc<ServiceEntry>, usize)> {
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
                return lookup("/").map(|entry| (entry, 0));
            }
            if let Some(entry) = lookup(candidate) {
                return Some((entry, candidate.len()));
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
