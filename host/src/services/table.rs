//! The live table of services: name → current deployment, route → service.

use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{Loaded, ServiceContext};
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
    /// The compiled, linked component.
    pub loaded: Loaded,
    /// Deadline per request.
    pub timeout: Duration,
    /// The periodic health check of this version, when the component exports one.
    pub(crate) health_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Deployment {
    /// Stop this version's background work (its health checks).
    pub fn retire(&self) {
        if let Some(task) = self.health_task.lock().take() {
            task.abort();
        }
    }
}

#[derive(Default)]
struct Inner {
    by_name: BTreeMap<String, Arc<Deployment>>,
    by_route: HashMap<String, Arc<Deployment>>,
}

/// Name- and route-indexed set of current deployments. Lock hold times are a map
/// lookup or insert; the lock is never held across an await.
#[derive(Default)]
pub struct ServiceTable {
    inner: RwLock<Inner>,
}

impl ServiceTable {
    /// The current deployment of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Deployment>> {
        self.inner.read().by_name.get(name).cloned()
    }

    /// Every current deployment, by name.
    pub fn list(&self) -> Vec<Arc<Deployment>> {
        self.inner.read().by_name.values().cloned().collect()
    }

    /// Which service owns `route`, if any.
    pub fn route_owner(&self, route: &str) -> Option<String> {
        self.inner
            .read()
            .by_route
            .get(route)
            .map(|deployment| deployment.record.name.clone())
    }

    /// Install `deployment`, replacing the previous version of the same name (and its
    /// route, if the route changed). Returns the replaced deployment.
    pub fn insert(&self, deployment: Arc<Deployment>) -> Option<Arc<Deployment>> {
        let mut inner = self.inner.write();
        let previous = inner
            .by_name
            .insert(deployment.record.name.clone(), deployment.clone());
        if let Some(previous) = &previous
            && previous.route != deployment.route
        {
            inner.by_route.remove(&previous.route);
        }
        inner.by_route.insert(deployment.route.clone(), deployment);
        previous
    }

    /// Remove `name`. Returns the removed deployment.
    pub fn remove(&self, name: &str) -> Option<Arc<Deployment>> {
        let mut inner = self.inner.write();
        let removed = inner.by_name.remove(name)?;
        inner.by_route.remove(&removed.route);
        Some(removed)
    }

    /// The deployment whose route is the longest prefix of `path` on a segment
    /// boundary, with the length of that prefix.
    pub fn resolve(&self, path: &str) -> Option<(Arc<Deployment>, usize)> {
        let inner = self.inner.read();
        let mut candidate = path.trim_end_matches('/');
        loop {
            if candidate.is_empty() {
                return inner.by_route.get("/").map(|d| (d.clone(), 0));
            }
            if let Some(deployment) = inner.by_route.get(candidate) {
                return Some((deployment.clone(), candidate.len()));
            }
            candidate = match candidate.rfind('/') {
                Some(index) => &candidate[..index],
                None => "",
            };
        }
    }
}
