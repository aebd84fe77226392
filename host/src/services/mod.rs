//! The services this host runs: the live table the gateway routes through, and the
//! operations that change it.
//!
//! - [`table`]: the live services (admission, fault counts, the versions live now).
//! - [`spec`]: a deployment's settings, resolved once, and the table of defaults.
//! - [`lifecycle`]: deploy, remove, restore, rollback, canary, scale: one change path.
//! - [`serving`]: admission, version choice, fault counting, in-process dispatch,
//!   registration and health checks.
//! - [`delivery`]: handing published events to their subscribers.
//! - [`limiter`]: per-service concurrency and queue (pure logic).
//! - [`state`]: what is persisted per service.
//!
//! How a deployment's code runs is the runtime's: a deployment holds an
//! [`Executor`](crate::runtime::executor::Executor) that a
//! [`Loader`](crate::runtime::executor::Loader) made of its component.

pub mod data;
pub mod delivery;
mod lifecycle;
pub mod limiter;
pub mod replay;
mod serving;
pub mod spec;
pub mod state;
mod table;
#[cfg(test)]
mod tests;
pub mod topics;

pub use lifecycle::DeployMode;
pub use spec::{DeploymentSpec, ServiceDefaults, ServiceSettings};
pub use table::{Canary, Deployment, FaultCounters, LiveService, ServiceTable, Versions};

use std::sync::{Arc, Weak};
use std::time::Duration;
use thiserror::Error;

use crate::data_dir::DataDir;
use crate::manifest::ManifestError;
use crate::platform::Platform;
use crate::registry::InvalidName;
use crate::runtime::LoadError;
use crate::runtime::executor::Loader;

/// Lease of a local service's registration; renewed by the host's heartbeat.
pub const LOCAL_LEASE: Duration = Duration::from_secs(15);

/// Why an operation on a service was refused.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The service name is not acceptable (the client's fault).
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The manifest is invalid (the client's fault).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component cannot be loaded (the client's fault, unless `LoadError::Internal`).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The route sits inside another service's route (it would take that service's
    /// traffic below it), and the deployer may not change that service.
    #[error(
        "route `{route}` sits inside the route of service `{owner}` and would take its \
         traffic there; only a deployer who may change `{owner}` can nest a route in it \
         (or an operator who serves with --allow-nested-routes)"
    )]
    RouteNested {
        /// The route asked for.
        route: String,
        /// The service whose route it sits inside.
        owner: String,
    },
    /// The version declares a topic another service owns, and the deployer may not
    /// change that service.
    #[error(
        "topic `{topic}` belongs to service `{owner}`: only a deployer who may change \
         `{owner}` can publish to it too"
    )]
    TopicOwned {
        /// The declaration.
        topic: String,
        /// The service that owns it.
        owner: String,
    },
    /// The version subscribes to a topic its publisher does not share with it.
    #[error(
        "service `{owner}` does not share topic `{topic}` with this service: its manifest \
         must name it under `[events] subscribers`"
    )]
    TopicNotShared {
        /// The topic.
        topic: String,
        /// The publisher.
        owner: String,
    },
    /// Another service already owns the route.
    #[error("route `{route}` is already used by service `{owner}`")]
    RouteConflict {
        /// The contested route.
        route: String,
        /// The service that has it.
        owner: String,
    },
    /// No such service.
    #[error("no service named `{0}`")]
    NotFound(String),
    /// The request does not fit the service's current state.
    #[error("`{service}` {reason}")]
    Conflict {
        /// The service.
        service: String,
        /// What does not fit.
        reason: Conflict,
    },
    /// A parameter is out of range.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The data directory could not be written (the host's fault).
    #[error("storage failure: {0:#}")]
    Storage(anyhow::Error),
}

/// Why a change does not fit a service's current state (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Conflict {
    /// A canary asked for another route than the running version's.
    #[error(
        "cannot take a canary on another route: it serves `{stable}`, the canary asks for `{asked}`"
    )]
    CanaryRoute {
        /// The running version's route.
        stable: String,
        /// The canary's route.
        asked: String,
    },
    /// A canary needs a running version to share traffic with.
    #[error("is not deployed: a canary needs a running version to share traffic with")]
    NothingToShareWith,
    /// Rollback found no such earlier version.
    #[error("has no earlier version {}", match .0 { Some(v) => format!("`{v}`"), None => "to roll back to".to_owned() })]
    NoEarlierVersion(Option<String>),
    /// The operation needs a canary and there is none.
    #[error("has no canary")]
    NoCanary,
    /// The service changed while the operation prepared; nothing was done.
    #[error("changed while the operation was prepared; try again")]
    ChangedMeanwhile,
    /// The name belongs to an external service.
    #[error("is the name of an external service; a deployed service needs a name of its own")]
    ExternalName,
    /// The name is the one operators' calls are made as.
    #[error("is the name operators' calls through the admin API are made as; choose another")]
    ReservedName,
    /// Its data cannot be deleted while a version of it runs.
    #[error("still runs: remove it before deleting its data")]
    StillRuns,
    /// Data is loaded into an empty store only.
    #[error("already holds data: import into an empty store (delete its data first)")]
    StoreNotEmpty,
}

/// A parameter out of range (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Invalid {
    /// A canary weight above 100.
    #[error("canary weight {0} is not a percentage (0 to 100)")]
    CanaryWeight(u8),
    /// An automatic-rollback rule out of range.
    #[error("invalid automatic rollback: {0}")]
    AutoRollback(String),
    /// A scale out of range.
    #[error("`max_concurrency` must be 1 to 100000 and `queue` at most 1000000")]
    Scale,
    /// The service asks for more concurrent instances than one service may run.
    #[error(
        "`max_concurrency` {asked} exceeds the {cap} instances one service may run \
         (--max-instances-per-service)"
    )]
    InstanceCap {
        /// What was asked.
        asked: u32,
        /// The host's cap.
        cap: u32,
    },
    /// The service could hold more memory than the whole host may.
    #[error(
        "the service could hold {need_mb} MiB ({memory_mb} MiB per instance × {concurrency} \
         concurrent requests), more than the host's memory budget of {budget_mb} MiB \
         (--max-total-memory-mb): lower `limits.memory_mb` or `limits.max_concurrency`"
    )]
    MemoryBudget {
        /// Memory per instance.
        memory_mb: u64,
        /// Requests at once.
        concurrency: u64,
        /// Their product.
        need_mb: u64,
        /// The host's budget.
        budget_mb: u64,
    },
}

/// Whether a deploy created a service or replaced a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployKind {
    /// The name was new.
    Created,
    /// A running version was replaced.
    Replaced,
    /// The new version runs as a canary beside the stable one.
    Canary,
}

/// A persisted service that could not be restored. It stays visible with the reason
/// and keeps its persisted state (history included), so it can be redeployed, rolled
/// back or removed; nothing about it is lost.
#[derive(Debug, Clone)]
pub struct FailedService {
    /// What is persisted about it.
    pub state: state::ServiceState,
    /// Why it is not running.
    pub reason: String,
}

/// Every service of a cluster, wherever it runs: what a host needs to know of the
/// services on other hosts to route their events.
#[async_trait::async_trait]
pub trait ServiceDirectory: Send + Sync {
    /// The manifests of `service`'s live versions (stable and canary).
    fn manifests(&self, service: &str) -> Vec<crate::manifest::Manifest>;
    /// Every subscription of every service's stable version: (subscriber,
    /// subscription).
    fn subscriptions(&self) -> Vec<(String, crate::manifest::Subscription)>;
    /// Drop `service`'s canary for every host, if it is still `version` (an
    /// automatic rollback that tripped here; a newer canary is kept).
    async fn roll_back_canary(
        &self,
        service: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), String>;
}

/// Deploys, removes and restores services; owns the live table.
pub struct Services {
    loader: Arc<dyn Loader>,
    platform: Arc<Platform>,
    data_dir: DataDir,
    table: ServiceTable,
    /// Persisted services that failed to restore, by name.
    failed: parking_lot::Mutex<std::collections::BTreeMap<String, FailedService>>,
    defaults: ServiceDefaults,
    /// Serialises changes so the table and the data directory never disagree.
    changes: tokio::sync::Mutex<()>,
    /// In a cluster, every service of the cluster (for events to subscribers on other
    /// hosts).
    directory: std::sync::OnceLock<Arc<dyn ServiceDirectory>>,
    /// Set once everything persisted has been restored (`/readyz`).
    ready: std::sync::atomic::AtomicBool,
    /// Set when the host is a member of a cluster: it also stores components other
    /// hosts run, so none is collected for want of a local version naming it.
    cluster_member: std::sync::atomic::AtomicBool,
    /// This object, for background work it starts (automatic canary rollback).
    me: Weak<Services>,
}

impl Services {
    /// An empty set of services backed by `data_dir`, whose code `loader` runs.
    pub fn new(
        loader: Arc<dyn Loader>,
        data_dir: DataDir,
        defaults: ServiceDefaults,
        platform: Arc<Platform>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            loader,
            platform,
            data_dir,
            table: ServiceTable::default(),
            failed: Default::default(),
            defaults,
            changes: tokio::sync::Mutex::new(()),
            directory: std::sync::OnceLock::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
            cluster_member: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// The live table (read by the gateway).
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Persisted services that failed to restore, by name.
    pub fn failed(&self) -> Vec<(String, FailedService)> {
        self.failed
            .lock()
            .iter()
            .map(|(name, failed)| (name.clone(), failed.clone()))
            .collect()
    }

    /// The failed service `name`, if it is one.
    pub fn failed_service(&self, name: &str) -> Option<FailedService> {
        self.failed.lock().get(name).cloned()
    }

    /// Whether everything persisted has been restored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The host is a member of a cluster whose services `directory` lists (before
    /// [`Services::restore`]).
    pub fn join_cluster(&self, directory: Arc<dyn ServiceDirectory>) {
        let _ = self.directory.set(directory);
        self.cluster_member
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Everything persisted has been restored.
    pub fn mark_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The host-wide memory budget of all instances.
    pub fn memory_budget(&self) -> &Arc<crate::runtime::limits::MemoryBudget> {
        self.loader.memory_budget()
    }

    /// Host defaults.
    pub fn defaults(&self) -> &ServiceDefaults {
        &self.defaults
    }

    /// Registry, caller and host identity.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }
}

/// Cores to use for restoring at once.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}
