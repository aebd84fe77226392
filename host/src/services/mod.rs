//! The services this host runs: the live table the gateway routes through, and the
//! deploy / remove / restore operations that change it.

mod table;

pub use table::{Deployment, ServiceTable};

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;

use crate::caller::transport::LocalDispatch;
use crate::gateway::GatewayBody;
use crate::manifest::{Manifest, ManifestError};
use crate::platform::Platform;
use crate::registry::health::HealthTracker;
use crate::registry::{Endpoint, Health, Instance};
use crate::runtime::{LoadError, Runtime, ServiceContext};
use crate::storage::{ServiceRecord, Storage, sha256_hex};

/// Lease of a local service's registration; renewed by the host's heartbeat.
pub const LOCAL_LEASE: Duration = Duration::from_secs(15);

/// Host-wide defaults for what a manifest leaves unset.
#[derive(Debug, Clone)]
pub struct ServiceDefaults {
    /// Linear memory per instance, in MiB.
    pub memory_mb: u32,
    /// Ceiling a manifest may ask for, in MiB.
    pub max_memory_mb: u32,
    /// Deadline per request.
    pub timeout: Duration,
}

/// Why a deploy or removal was refused.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The service name is not acceptable.
    #[error(
        "invalid service name `{0}`: use 1 to 63 lower-case letters, digits and `-`, \
         starting with a letter and not ending with `-`"
    )]
    InvalidName(String),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
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
    /// The data directory could not be written.
    #[error("storage failure: {0:#}")]
    Storage(anyhow::Error),
}

/// Whether a deploy created a service or replaced a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployKind {
    /// The name was new.
    Created,
    /// A running version was replaced.
    Replaced,
}

/// Deploys, removes and restores services; owns the live table.
pub struct Services {
    runtime: Runtime,
    platform: Arc<Platform>,
    storage: Storage,
    table: ServiceTable,
    defaults: ServiceDefaults,
    /// Serialises changes so the table and the data directory never disagree.
    changes: tokio::sync::Mutex<()>,
}

impl Services {
    /// An empty set of services backed by `storage`.
    pub fn new(
        runtime: Runtime,
        storage: Storage,
        defaults: ServiceDefaults,
        platform: Arc<Platform>,
    ) -> Self {
        Self {
            runtime,
            platform,
            storage,
            table: ServiceTable::default(),
            defaults,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The live table (read by the gateway).
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Host defaults.
    pub fn defaults(&self) -> &ServiceDefaults {
        &self.defaults
    }

    /// Registry, caller and host identity.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    /// Register (or re-register) the local instance of `deployment`.
    async fn register(&self, deployment: &Deployment) {
        let instance = Instance {
            id: deployment.context.instance_id.clone(),
            service: deployment.record.name.clone(),
            endpoint: Endpoint::Local,
            version: deployment.record.version.clone(),
            tags: Vec::new(),
            health: deployment.context.health.lock().effective(),
        };
        if let Err(error) = self.platform.registry.register(instance, LOCAL_LEASE).await {
            tracing::error!(service = %deployment.record.name, %error, "cannot register the service");
        }
    }

    /// Run the component's exported health check on the manifest's schedule, and
    /// record the verdicts in the registry, until the deployment is retired.
    fn start_health_checks(&self, deployment: &Arc<Deployment>) {
        let Some(indices) = deployment.loaded.health_check.clone() else {
            return;
        };
        let schedule = deployment.record.manifest.health.clone();
        let weak = Arc::downgrade(deployment);
        let platform = self.platform.clone();
        let task = tokio::spawn(async move {
            let mut tracker =
                HealthTracker::new(schedule.unhealthy_threshold, schedule.healthy_threshold);
            let mut tick = tokio::time::interval(Duration::from_millis(schedule.interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(deployment) = weak.upgrade() else {
                    break;
                };
                let verdict = crate::runtime::invoke::check_health(
                    &deployment.loaded.pre,
                    &indices,
                    deployment.context.clone(),
                    platform.clone(),
                    Duration::from_millis(schedule.timeout_ms),
                )
                .await;
                let reported = match verdict {
                    Ok(crate::bindings::registry::Health::Serving) => Health::Serving,
                    Ok(crate::bindings::registry::Health::Degraded) => Health::Degraded,
                    Ok(crate::bindings::registry::Health::NotServing) => Health::NotServing,
                    Err(failure) => {
                        tracing::warn!(service = %deployment.record.name, %failure, "health check failed");
                        Health::NotServing
                    }
                };
                tracker.observe_health(reported);
                let effective = {
                    let mut signals = deployment.context.health.lock();
                    signals.checked = Some(tracker.current());
                    signals.effective()
                };
                if let Err(error) = platform
                    .registry
                    .set_health(&deployment.context.instance_id, effective)
                    .await
                {
                    tracing::warn!(service = %deployment.record.name, %error, "cannot record health");
                }
            }
        });
        *deployment.health_task.lock() = Some(task);
    }

    /// Renew every local registration's lease, re-registering lost ones.
    pub async fn renew_leases(&self) {
        for deployment in self.table.list() {
            if self
                .platform
                .registry
                .renew(&deployment.context.instance_id)
                .await
                .is_err()
            {
                self.register(&deployment).await;
            }
        }
    }

    /// Validate, compile, persist and swap in a new version of `name`.
    ///
    /// Nothing changes unless every step succeeds; requests already running on the
    /// previous version finish on it.
    pub async fn deploy(
        &self,
        name: &str,
        component: Bytes,
        manifest: Manifest,
    ) -> Result<(Arc<Deployment>, DeployKind), ServiceError> {
        validate_name(name)?;
        manifest.validate(self.defaults.max_memory_mb)?;
        let digest = sha256_hex(&component);
        let record = ServiceRecord {
            name: name.to_owned(),
            version: manifest
                .version
                .clone()
                .unwrap_or_else(|| format!("sha256-{}", &digest[..12])),
            digest,
            deployed_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            manifest,
        };
        // Compile before taking the lock: a slow compile must not block other deploys.
        let deployment = self.build(record, component.clone()).await?;

        let _guard = self.changes.lock().await;
        if let Some(owner) = self.table.route_owner(&deployment.route)
            && owner != name
        {
            return Err(ServiceError::RouteConflict {
                route: deployment.route.clone(),
                owner,
            });
        }
        let digest = deployment.record.digest.clone();
        let storage = self.storage.clone();
        let record = deployment.record.clone();
        let bytes = component;
        tokio::task::spawn_blocking(move || {
            storage.put_blob(&digest, &bytes)?;
            storage.put_record(&record)
        })
        .await
        .map_err(|error| ServiceError::Storage(error.into()))?
        .map_err(ServiceError::Storage)?;

        let deployment = Arc::new(deployment);
        self.register(&deployment).await;
        let kind = match self.table.insert(deployment.clone()) {
            Some(previous) => {
                previous.retire();
                DeployKind::Replaced
            }
            None => DeployKind::Created,
        };
        self.start_health_checks(&deployment);
        tracing::info!(
            service = name,
            version = %deployment.record.version,
            digest = %deployment.record.digest,
            route = %deployment.route,
            "deployed"
        );
        Ok((deployment, kind))
    }

    /// Stop routing to `name` and forget it. Running requests finish.
    pub async fn remove(&self, name: &str) -> Result<(), ServiceError> {
        validate_name(name)?;
        let _guard = self.changes.lock().await;
        if self.table.get(name).is_none() {
            return Err(ServiceError::NotFound(name.to_owned()));
        }
        let storage = self.storage.clone();
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || storage.remove_record(&owned))
            .await
            .map_err(|error| ServiceError::Storage(error.into()))?
            .map_err(ServiceError::Storage)?;
        if let Some(removed) = self.table.remove(name) {
            let _ = self
                .platform
                .registry
                .deregister(&removed.context.instance_id)
                .await;
        }
        tracing::info!(service = name, "removed");
        Ok(())
    }

    /// Load every persisted service. Returns how many are running; a service that
    /// fails to load is logged and left on disk.
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let storage = self.storage.clone();
        let (records, broken) = tokio::task::spawn_blocking(move || storage.records()).await??;
        for (path, error) in broken {
            tracing::error!(path = %path.display(), error = %format!("{error:#}"), "unreadable service record");
        }
        let mut restored = 0;
        for record in records {
            let name = record.name.clone();
            let storage = self.storage.clone();
            let digest = record.digest.clone();
            let bytes = match tokio::task::spawn_blocking(move || storage.read_blob(&digest))
                .await?
            {
                Ok(bytes) => Bytes::from(bytes),
                Err(error) => {
                    tracing::error!(service = %name, error = %format!("{error:#}"), "cannot restore");
                    continue;
                }
            };
            match self.build(record, bytes).await {
                Ok(deployment) => {
                    let deployment = Arc::new(deployment);
                    self.register(&deployment).await;
                    self.table.insert(deployment.clone());
                    self.start_health_checks(&deployment);
                    restored += 1;
                }
                Err(error) => tracing::error!(service = %name, %error, "cannot restore"),
            }
        }
        Ok(restored)
    }

    async fn build(
        &self,
        record: ServiceRecord,
        component: Bytes,
    ) -> Result<Deployment, ServiceError> {
        let runtime = self.runtime.clone();
        let digest = record.digest.clone();
        let loaded = tokio::task::spawn_blocking(move || runtime.load(&component, &digest))
            .await
            .map_err(|error| ServiceError::Storage(error.into()))??;
        let memory_mb = record
            .manifest
            .limits
            .memory_mb
            .unwrap_or(self.defaults.memory_mb);
        let timeout = record
            .manifest
            .limits
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.defaults.timeout);
        let route = record
            .manifest
            .route
            .clone()
            .unwrap_or_else(|| format!("/{}", record.name));
        let context = Arc::new(ServiceContext {
            name: record.name.as_str().into(),
            version: record.version.as_str().into(),
            config: record.manifest.config.clone(),
            memory_limit_bytes: memory_mb as usize * 1024 * 1024,
            instance_id: self.platform.local_instance_id(&record.name),
            outbound: Arc::new(record.manifest.outbound.clone()),
            health: parking_lot::Mutex::new(Default::default()),
        });
        Ok(Deployment {
            record,
            route,
            context,
            loaded,
            timeout,
            health_task: parking_lot::Mutex::new(None),
        })
    }
}

#[async_trait::async_trait]
impl LocalDispatch for Services {
    async fn dispatch(
        &self,
        service: &str,
        request: http::Request<http_body_util::Full<Bytes>>,
        deadline: std::time::Instant,
    ) -> Option<http::Response<GatewayBody>> {
        let deployment = self.table.get(service)?;
        let request_id = crate::gateway::request_id(&request);
        let deadline = deadline.min(std::time::Instant::now() + deployment.timeout);
        Some(
            crate::gateway::serve_deployment(
                &self.platform,
                &deployment,
                request,
                &request_id,
                deadline,
            )
            .await,
        )
    }
}

/// Service names double as DNS labels (`http://<service>/` in later releases).
pub fn validate_name(name: &str) -> Result<(), ServiceError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(ServiceError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello", "order-service", "b2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "2b",
            "a_b",
            "a-",
            "a.b",
            &"x".repeat(64),
            "v1/x",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
