//! Deploy, remove, restore, roll back, canary and scale. Every change to a service
//! takes one path ([`Services::commit`]): validated first, then, under the change
//! lock, planned from what runs now, persisted, and swapped into the live table last.

use bytes::Bytes;
use futures::StreamExt as _;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::SystemTime;

use super::limiter::Scale;
use super::spec::{self, DeploymentSpec};
use super::state::{AutoRollback, ServiceState};
use super::table::{Canary, Deployment, LiveService, Versions};
use super::{Conflict, DeployKind, Invalid, ServiceError, Services};
use crate::access::{Action, Grant};
use crate::data_dir::{VersionRecord, sha256_hex};
use crate::manifest::Manifest;
use crate::platform::Platform;
use crate::registry::validate_name;
use crate::runtime::executor::ContextFactory;
use crate::runtime::{LoadError, ServiceContext};

/// How a deploy takes traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployMode {
    /// Replace the current version (the previous one goes to the history).
    Replace,
    /// Run beside the current version with `weight`% of the traffic.
    Canary {
        /// Percentage of requests (0–100).
        weight: u8,
        /// Roll back automatically on a high failure ratio.
        auto_rollback: Option<AutoRollback>,
    },
}

fn storage_error(error: impl Into<anyhow::Error>) -> ServiceError {
    ServiceError::Storage(error.into())
}

/// What runs now of a service, or what is persisted of one that failed to restore.
struct Current {
    versions: Option<Arc<Versions>>,
    failed: Option<ServiceState>,
}

impl Current {
    /// The versions running now: `NotFound` when the service does not run.
    fn running(&self, name: &str) -> Result<&Arc<Versions>, ServiceError> {
        self.versions
            .as_ref()
            .ok_or_else(|| ServiceError::NotFound(name.to_owned()))
    }

    /// What is persisted of the service, running or failed.
    fn state(&self) -> Option<ServiceState> {
        match &self.versions {
            Some(versions) => Some(versions.state()),
            None => self.failed.clone(),
        }
    }
}

/// Which kind of change a commit makes: a deploy brings a new version in, the others
/// rearrange what runs already.
#[derive(Debug, Clone, Copy)]
enum ChangeKind<'a> {
    /// A new version (replacing, or as a canary), by a deployer with this grant.
    Deploy(&'a Grant),
    /// Rollback, scale, canary weight, promote or abort.
    Rearrange,
}

/// What a change does to a service, decided under the change lock.
enum Change {
    /// Make these the live versions.
    To {
        /// The new versions (what is persisted follows from them).
        versions: Versions,
        /// A component they refer to, stored before the state that names it.
        blob: Option<(String, Bytes)>,
    },
    /// Nothing to do.
    Unchanged,
}

impl Change {
    fn to(versions: Versions) -> Self {
        Change::To {
            versions,
            blob: None,
        }
    }
}

impl Services {
    /// The one path of every change to an existing or new service: under the change
    /// lock, `plan` decides the change from what runs now; the route and the name are
    /// checked, the component and the new state are persisted, and only then is the
    /// table changed. Nothing changes unless every step succeeds.
    async fn commit<T>(
        &self,
        name: &str,
        kind: ChangeKind<'_>,
        plan: impl FnOnce(&Current) -> Result<(Change, T), ServiceError>,
    ) -> Result<T, ServiceError> {
        let _guard = self.changes.lock().await;
        let current = Current {
            versions: self.table.versions(name),
            failed: self.failed_service(name).map(|failed| failed.state),
        };
        let (change, output) = plan(&current)?;
        let Change::To { versions, blob } = change else {
            return Ok(output);
        };
        self.table
            .check_route(versions.route(), versions.grpc(), name)?;
        if let ChangeKind::Deploy(grant) = kind {
            // A deploy must not take another service's traffic by nesting its route
            // inside that service's, unless its deployer may change that service.
            let grpc_routes = versions
                .grpc()
                .iter()
                .map(|service| crate::manifest::grpc_route(service));
            for route in std::iter::once(versions.route().to_owned()).chain(grpc_routes) {
                if let Some(owner) = self.table.nested_inside(&route, name)
                    && !self.defaults.allow_nested_routes
                    && grant
                        .permits(&Action::ChangeService(owner.clone()))
                        .is_err()
                {
                    return Err(ServiceError::RouteNested { route, owner });
                }
            }
            // Nor publish to another service's topics, or receive topics not shared.
            self.check_topics(&versions, grant)?;
            // Nor shadow an operator's external service; changes to what runs already
            // (scale, canary, rollback) are never held up by one.
            if self.is_external(name).await {
                return Err(conflict(name, Conflict::ExternalName));
            }
        }
        if let Some((digest, component)) = blob {
            let data_dir = self.data_dir.clone();
            tokio::task::spawn_blocking(move || data_dir.put_blob(&digest, &component))
                .await
                .map_err(storage_error)?
                .map_err(ServiceError::Storage)?;
        }
        self.persist(name, &versions.state()).await?;
        // Live limits and versions change only once the new state is on disk.
        self.install(versions).await;
        self.failed.lock().remove(name);
        Ok(output)
    }

    /// Validate, compile, persist and swap in a new version of `name`, as the operator.
    ///
    /// Nothing changes unless every step succeeds; requests already running on the
    /// previous version finish on it.
    pub async fn deploy(
        &self,
        name: &str,
        component: Bytes,
        manifest: Manifest,
        mode: DeployMode,
    ) -> Result<(Arc<Deployment>, DeployKind), ServiceError> {
        self.deploy_as(name, component, manifest, mode, &Grant::admin())
            .await
    }

    /// [`Services::deploy`] by a deployer with `grant`: its route may not sit inside
    /// the route of a service the grant may not change.
    pub async fn deploy_as(
        &self,
        name: &str,
        component: Bytes,
        manifest: Manifest,
        mode: DeployMode,
        grant: &Grant,
    ) -> Result<(Arc<Deployment>, DeployKind), ServiceError> {
        let result = self
            .deploy_checked(name, component, manifest, mode, grant)
            .await;
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            let outcome = match &result {
                Ok((_, DeployKind::Created)) => "created",
                Ok((_, DeployKind::Replaced)) => "replaced",
                Ok((_, DeployKind::Canary)) => "canary",
                Err(_) => "rejected",
            };
            metrics.deploys.with_label_values(&[outcome]).inc();
        }
        result
    }

    async fn deploy_checked(
        &self,
        name: &str,
        component: Bytes,
        manifest: Manifest,
        mode: DeployMode,
        grant: &Grant,
    ) -> Result<(Arc<Deployment>, DeployKind), ServiceError> {
        let (record, spec) = self.check_new(name, &component, manifest, &mode)?;
        // Compile before taking the lock: a slow compile must not block other changes.
        let deployment = Arc::new(self.build(record, spec, component.clone()).await?);
        let blob = Some((deployment.record.digest.clone(), component));
        let (deployment, kind) = self
            .commit(name, ChangeKind::Deploy(grant), |current| {
                let (versions, kind) = match mode {
                    DeployMode::Replace => replace(current, &deployment),
                    DeployMode::Canary {
                        weight,
                        auto_rollback,
                    } => (
                        with_canary(current, &deployment, weight, auto_rollback)?,
                        DeployKind::Canary,
                    ),
                };
                let change = Change::To { versions, blob };
                Ok((change, (deployment.clone(), kind)))
            })
            .await?;
        tracing::info!(
            service = name,
            version = %deployment.record.version,
            digest = %deployment.record.digest,
            route = %deployment.route(),
            ?kind,
            "deployed"
        );
        Ok((deployment, kind))
    }

    /// The record and settings of a new version of `name`, once its name, manifest,
    /// mode and size are acceptable here.
    fn check_new(
        &self,
        name: &str,
        component: &[u8],
        manifest: Manifest,
        mode: &DeployMode,
    ) -> Result<(VersionRecord, DeploymentSpec), ServiceError> {
        validate_name(name)?;
        if name == crate::protocol::OPERATOR {
            return Err(conflict(name, Conflict::ReservedName));
        }
        manifest.validate(self.defaults.max_memory_mb)?;
        mode.validate()?;
        let record = new_record(name, component, manifest);
        let spec = DeploymentSpec::resolve(&record, &self.defaults);
        spec::check_fits(
            spec.memory_mb,
            spec.scale.max_concurrency,
            &self.defaults,
            self.loader.memory_budget().limit(),
        )?;
        Ok((record, spec))
    }

    /// Check and compile a new version of `name` and store its component, without
    /// running it: what a cluster host does before it writes the version into the
    /// cluster's desired state (each host then runs it through [`Services::apply`]).
    pub async fn prepare(
        &self,
        name: &str,
        component: Bytes,
        manifest: Manifest,
        mode: &DeployMode,
    ) -> Result<VersionRecord, ServiceError> {
        let (record, spec) = self.check_new(name, &component, manifest, mode)?;
        // Compiling proves the code runs here (and leaves it in the code cache).
        drop(self.build(record.clone(), spec, component.clone()).await?);
        self.store_blob(&record.digest, component).await?;
        Ok(record)
    }

    /// Store a component by digest in the data directory (checked against it).
    pub async fn store_blob(&self, digest: &str, component: Bytes) -> Result<(), ServiceError> {
        if sha256_hex(&component) != digest {
            return Err(ServiceError::Storage(anyhow::anyhow!(
                "the component's bytes do not match digest {digest}"
            )));
        }
        let data_dir = self.data_dir.clone();
        let digest = digest.to_owned();
        tokio::task::spawn_blocking(move || data_dir.put_blob(&digest, &component))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)
    }

    /// A stored component, checked against its digest; `None` when it is not here.
    pub async fn read_blob(&self, digest: &str) -> Option<Bytes> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let data_dir = self.data_dir.clone();
        let digest = digest.to_owned();
        tokio::task::spawn_blocking(move || data_dir.read_blob(&digest).ok())
            .await
            .ok()
            .flatten()
            .map(Bytes::from)
    }

    /// Make `state` what runs of its service here (a cluster's reconciliation): the
    /// versions it names are loaded (those already live are kept, not recompiled),
    /// persisted and swapped in like any change. Their components must be stored.
    pub async fn apply(&self, state: ServiceState) -> Result<(), ServiceError> {
        let name = state.current.name.clone();
        validate_name(&name)?;
        let live = self.table.versions(&name);
        if live.as_ref().is_some_and(|live| live.state() == state) {
            return Ok(());
        }
        let reuse = |record: &VersionRecord| {
            live.as_ref()
                .and_then(|live| live.deployments().find(|d| d.record == *record).cloned())
        };
        let stable = match reuse(&state.current) {
            Some(deployment) => deployment,
            None => Arc::new(self.load(state.current.clone()).await?),
        };
        let canary = match &state.canary {
            Some(canary) => {
                let deployment = match reuse(&canary.record) {
                    Some(deployment) => deployment,
                    None => Arc::new(self.load(canary.record.clone()).await?),
                };
                Some(Arc::new(Canary::new(
                    deployment,
                    canary.weight,
                    canary.auto_rollback.clone(),
                )))
            }
            None => None,
        };
        let versions = Versions {
            stable,
            canary,
            history: state.history.clone(),
            scale_override: state.scale,
        };
        self.commit(&name, ChangeKind::Rearrange, |_| {
            Ok((Change::to(versions), ()))
        })
        .await?;
        tracing::info!(service = %name, version = %state.current.version, "applied the cluster's desired state");
        Ok(())
    }

    /// Stop routing to `name` and forget it. Running requests finish; queued ones are
    /// refused.
    pub async fn remove(&self, name: &str) -> Result<(), ServiceError> {
        validate_name(name)?;
        let _guard = self.changes.lock().await;
        if self.table.get(name).is_none() && self.failed_service(name).is_none() {
            return Err(ServiceError::NotFound(name.to_owned()));
        }
        let data_dir = self.data_dir.clone();
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || data_dir.remove_record(&owned))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)?;
        self.failed.lock().remove(name);
        let removed = self.table.remove(name);
        // Its recordings go too (also those of a service that failed to restore): a
        // later service of the same name must not read its clients' requests.
        let recordings = self.platform.recordings.clone();
        let owned = name.to_owned();
        let _ = tokio::task::spawn_blocking(move || recordings.forget(&owned)).await;
        if let Some(removed) = removed {
            let versions = removed.versions();
            retire(&versions, None);
            self.platform.telemetry.metrics.forget_service(name);
            self.platform.telemetry.guest_logs.forget(name);
            for deployment in versions.deployments() {
                let _ = self
                    .platform
                    .registry
                    .deregister(&deployment.context.instance_id)
                    .await;
            }
        }
        tracing::info!(service = name, "removed");
        Ok(())
    }

    /// Switch `name` back to an earlier version (`version`, or the previous one). Any
    /// canary is dropped. Returns the version now serving.
    pub async fn rollback(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<Deployment>, ServiceError> {
        validate_name(name)?;
        // Compile the target before taking the change lock (a compile may take
        // seconds); the commit checks that it is still the version to go to.
        let wanted = {
            let current = Current {
                versions: self.table.versions(name),
                failed: self.failed_service(name).map(|failed| failed.state),
            };
            rollback_target(&current, name, version)?.1
        };
        let deployment = Arc::new(self.load(wanted.clone()).await?);
        self.commit(name, ChangeKind::Rearrange, |current| {
            let (mut state, target) = rollback_target(current, name, version)?;
            if target != wanted {
                return Err(conflict(name, Conflict::ChangedMeanwhile));
            }
            state.take_rollback_target(version);
            state.promote(target);
            // The version rolled back to brings its own manifest limits, unless the
            // operator scaled the service.
            let versions = Versions {
                stable: deployment.clone(),
                canary: None,
                history: state.history,
                scale_override: state.scale,
            };
            Ok((Change::to(versions), ()))
        })
        .await?;
        tracing::info!(service = name, version = %deployment.record.version, "rolled back");
        Ok(deployment)
    }

    /// Change the canary's share of traffic.
    pub async fn set_canary_weight(&self, name: &str, weight: u8) -> Result<(), ServiceError> {
        validate_name(name)?;
        check_weight(weight)?;
        self.commit(name, ChangeKind::Rearrange, |current| {
            let versions = current.running(name)?;
            let canary = versions
                .canary
                .as_ref()
                .ok_or_else(|| conflict(name, Conflict::NoCanary))?;
            let canary = Arc::new(canary.with_weight(weight));
            Ok((Change::to(versions.with_canary(Some(canary))), ()))
        })
        .await?;
        tracing::info!(service = name, weight, "canary weight changed");
        Ok(())
    }

    /// Make the canary the current version.
    pub async fn promote_canary(&self, name: &str) -> Result<Arc<Deployment>, ServiceError> {
        validate_name(name)?;
        let promoted = self
            .commit(name, ChangeKind::Rearrange, |current| {
                let versions = current.running(name)?;
                let canary = versions
                    .canary
                    .as_ref()
                    .ok_or_else(|| conflict(name, Conflict::NoCanary))?;
                let mut state = versions.state();
                state.promote(canary.deployment.record.clone());
                let promoted = Versions {
                    stable: canary.deployment.clone(),
                    canary: None,
                    history: state.history,
                    scale_override: versions.scale_override,
                };
                Ok((Change::to(promoted), canary.deployment.clone()))
            })
            .await?;
        tracing::info!(service = name, version = %promoted.record.version, "canary promoted");
        Ok(promoted)
    }

    /// Drop the canary; all traffic returns to the current version.
    pub async fn abort_canary(&self, name: &str, reason: &str) -> Result<(), ServiceError> {
        self.abort_canary_if(name, reason, None).await
    }

    /// Drop the canary of `name`, but only if it is still `only` (when given): an
    /// automatic rollback never drops a newer canary deployed meanwhile. Checked under
    /// the change lock, by identity.
    pub(super) async fn abort_canary_if(
        &self,
        name: &str,
        reason: &str,
        only: Option<&Arc<Deployment>>,
    ) -> Result<(), ServiceError> {
        validate_name(name)?;
        let aborted = self
            .commit(name, ChangeKind::Rearrange, |current| {
                let versions = current.running(name)?;
                let Some(canary) = &versions.canary else {
                    return Err(conflict(name, Conflict::NoCanary));
                };
                if only.is_some_and(|only| !Arc::ptr_eq(only, &canary.deployment)) {
                    return Ok((Change::Unchanged, false));
                }
                Ok((Change::to(versions.with_canary(None)), true))
            })
            .await?;
        if aborted {
            tracing::warn!(service = name, reason, "canary rolled back");
        } else {
            tracing::info!(
                service = name,
                "a newer canary replaced the one that tripped; keeping it"
            );
        }
        Ok(())
    }

    /// Change a service's concurrency and queue live, and persist the override.
    pub async fn scale(&self, name: &str, scale: Scale) -> Result<(), ServiceError> {
        validate_name(name)?;
        spec::check_scale(scale)?;
        let budget = self.loader.memory_budget().limit();
        self.commit(name, ChangeKind::Rearrange, |current| {
            let versions = current.running(name)?;
            spec::check_fits(
                versions.stable.spec.memory_mb,
                scale.max_concurrency,
                &self.defaults,
                budget,
            )?;
            let scaled = Versions {
                scale_override: Some(scale),
                ..versions.with_canary(versions.canary.clone())
            };
            Ok((Change::to(scaled), ()))
        })
        .await?;
        tracing::info!(service = name, ?scale, "scaled");
        Ok(())
    }

    /// Load every persisted service. Returns how many are running; a service that
    /// fails to load stays listed as failed, with its persisted state.
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let data_dir = self.data_dir.clone();
        let (states, broken) =
            tokio::task::spawn_blocking(move || data_dir.services::<ServiceState>()).await??;
        let broken_count = broken.len();
        for (path, error) in broken {
            tracing::error!(path = %path.display(), error = %format!("{error:#}"), "unreadable service state");
        }
        // Compile in parallel (bounded by the runtime's compile permits), install in
        // name order so a route claimed twice goes to the same service every time.
        let mut states = states;
        states.sort_by(|a, b| a.current.name.cmp(&b.current.name));
        let referenced: std::collections::HashSet<String> = states
            .iter()
            .flat_map(|state| {
                std::iter::once(&state.current)
                    .chain(&state.history)
                    .chain(state.canary.as_ref().map(|canary| &canary.record))
                    .map(|record| record.digest.clone())
            })
            .collect();
        let loads = states.into_iter().map(|state| async move {
            let stable = self.load(state.current.clone()).await;
            let canary = match &state.canary {
                Some(canary) => Some(self.load(canary.record.clone()).await),
                None => None,
            };
            (state, stable, canary)
        });
        let mut loaded = futures::stream::iter(loads).buffered(super::parallelism() * 2);
        let mut restored = 0;
        while let Some((state, stable, canary)) = loaded.next().await {
            let name = state.current.name.clone();
            let stable = match stable {
                Ok(deployment) => Arc::new(deployment),
                Err(error) => {
                    self.mark_failed(&name, state, format!("cannot restore: {error}"));
                    continue;
                }
            };
            // Two records claiming one route: the first restored keeps it.
            if let Err(error) = self.table.check_route(stable.route(), stable.grpc(), &name) {
                self.mark_failed(&name, state, format!("cannot restore: {error}"));
                continue;
            }
            let canary = match (canary, &state.canary) {
                (Some(Ok(deployment)), Some(persisted)) => Some(Arc::new(Canary::new(
                    Arc::new(deployment),
                    persisted.weight,
                    persisted.auto_rollback.clone(),
                ))),
                (Some(Err(error)), _) => {
                    tracing::error!(service = %name, %error, "cannot restore the canary; serving the stable version only");
                    None
                }
                _ => None,
            };
            self.install(Versions {
                stable,
                canary,
                history: state.history,
                scale_override: state.scale,
            })
            .await;
            restored += 1;
        }
        // Broken records may still refer to blobs: collect nothing while any exists;
        // nor on a cluster member, which keeps copies for other hosts.
        let member = self
            .cluster_member
            .load(std::sync::atomic::Ordering::Acquire);
        if broken_count == 0 && !member {
            self.collect_garbage(&referenced);
        }
        Ok(restored)
    }

    /// Remove stored components and compiled code that no persisted version (current,
    /// history or canary, of running and failed services) refers to.
    fn collect_garbage(&self, referenced: &std::collections::HashSet<String>) {
        let blobs =
            crate::runtime::engine::collect_files(&self.data_dir.blob_dir(), "wasm", referenced);
        let compiled = self.loader.collect_garbage(referenced);
        if blobs + compiled > 0 {
            tracing::info!(blobs, compiled, "removed components no version refers to");
        }
    }

    /// Whether `name` is registered as an external service (an HTTP endpoint an
    /// operator registered), which a deploy must not shadow.
    async fn is_external(&self, name: &str) -> bool {
        self.platform
            .registry
            .instances(name)
            .await
            .is_ok_and(|instances| {
                instances
                    .iter()
                    .any(|instance| matches!(instance.endpoint, crate::registry::Endpoint::Http(_)))
            })
    }

    /// Keep `name` visible as failed, with its persisted state, and say why.
    fn mark_failed(&self, name: &str, state: ServiceState, reason: String) {
        tracing::error!(service = %name, %reason, "service failed to restore; it stays listed as failed");
        self.failed
            .lock()
            .insert(name.to_owned(), super::FailedService { state, reason });
    }

    /// The live service `name`: `InvalidName` or `NotFound` when there is none.
    pub fn existing(&self, name: &str) -> Result<Arc<LiveService>, ServiceError> {
        validate_name(name)?;
        self.table
            .get(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_owned()))
    }

    /// Swap `versions` into the table, register them, start the stable version's
    /// health checks and retire what they replaced.
    async fn install(&self, versions: Versions) {
        let scale = versions.scale();
        let (live, previous) = match self.table.install(versions, scale) {
            Ok((_, live, previous)) => (live, previous),
            Err(error) => {
                // Every change checks the route under the change lock first; the table
                // refusing means that check was missed: keep what serves now.
                tracing::error!(%error, "the route table refused a change");
                return;
            }
        };
        for deployment in live.deployments() {
            self.register(deployment).await;
        }
        if let Some(previous) = previous {
            retire(&previous, Some(&live));
            // Versions no longer live leave discovery, and their request series go.
            for old in previous.deployments() {
                let still_live =
                    |live: &Arc<Deployment>| live.context.instance_id == old.context.instance_id;
                if !live.deployments().any(still_live) {
                    let _ = self
                        .platform
                        .registry
                        .deregister(&old.context.instance_id)
                        .await;
                }
                if !live
                    .deployments()
                    .any(|live| live.record.version == old.record.version)
                {
                    self.platform
                        .telemetry
                        .metrics
                        .forget_version(&old.record.name, &old.record.version);
                }
            }
        }
        // The service's store takes the quota of the version serving now.
        live.stable
            .context
            .store
            .set_quota(live.stable.spec.store_quota_bytes);
        if live.stable.health_task.lock().is_none() {
            self.start_health_checks(&live.stable);
        }
    }

    async fn persist(&self, name: &str, state: &ServiceState) -> Result<(), ServiceError> {
        let data_dir = self.data_dir.clone();
        let name = name.to_owned();
        let state = state.clone();
        tokio::task::spawn_blocking(move || data_dir.put_service(&name, &state))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)
    }

    /// Build a deployment from a persisted record (reading its component back).
    async fn load(&self, record: VersionRecord) -> Result<Deployment, ServiceError> {
        let data_dir = self.data_dir.clone();
        let digest = record.digest.clone();
        let bytes = tokio::task::spawn_blocking(move || data_dir.read_blob(&digest))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)?;
        let spec = DeploymentSpec::resolve(&record, &self.defaults);
        self.build(record, spec, Bytes::from(bytes)).await
    }

    /// A deployment of `component` as `record` and `spec` say: its context (store,
    /// identity, meters) and the executor the runtime makes of its code.
    async fn build(
        &self,
        record: VersionRecord,
        spec: DeploymentSpec,
        component: Bytes,
    ) -> Result<Deployment, ServiceError> {
        // The context (a store opened with this version's quota, meters, the log ring)
        // is made only once the runtime has accepted the code: a refused upload opens
        // nothing and leaves the running version's store as it is.
        let context: ContextFactory = {
            let platform = self.platform.clone();
            let record = record.clone();
            let quota = spec.store_quota_bytes;
            Box::new(move || service_context(&platform, &record, quota))
        };
        let (executor, context) = self
            .loader
            .load(
                component,
                &record.digest,
                &spec.execution,
                context,
                &self.platform,
            )
            .await?;
        Ok(Deployment {
            record,
            spec,
            context,
            executor,
            health_task: Mutex::new(None),
            request_series: Default::default(),
        })
    }
}

/// What the instances of `record`'s version see of their service: its store (opened
/// with `quota` bytes), identity, config, meters and log ring.
fn service_context(
    platform: &Platform,
    record: &VersionRecord,
    quota: u64,
) -> Result<Arc<ServiceContext>, LoadError> {
    let store = platform
        .stores
        .open(&record.name, quota)
        .map_err(|error| LoadError::Internal(anyhow::anyhow!("opening the store: {error}")))?;
    Ok(Arc::new(ServiceContext {
        name: record.name.as_str().into(),
        version: record.version.as_str().into(),
        config: record.manifest.config.clone().into(),
        secrets: record.manifest.secrets.clone(),
        instance_id: platform.local_instance_id(&record.name, &record.version),
        outbound: Arc::new(record.manifest.outbound.clone()),
        topics: record.manifest.events.rules(),
        health: Mutex::new(Default::default()),
        log_budget: Default::default(),
        store,
        meter: crate::telemetry::metering::ServiceMeter::new(
            &platform.telemetry.metrics,
            &record.name,
        ),
        logs: platform.telemetry.guest_logs.service(&record.name),
        replay: false,
    }))
}

fn check_weight(weight: u8) -> Result<(), ServiceError> {
    if weight > 100 {
        return Err(Invalid::CanaryWeight(weight).into());
    }
    Ok(())
}

fn conflict(name: &str, reason: Conflict) -> ServiceError {
    ServiceError::Conflict {
        service: name.to_owned(),
        reason,
    }
}

impl DeployMode {
    fn validate(&self) -> Result<(), ServiceError> {
        if let DeployMode::Canary {
            weight,
            auto_rollback,
        } = self
        {
            check_weight(*weight)?;
            if let Some(rule) = auto_rollback {
                rule.validate().map_err(Invalid::AutoRollback)?;
            }
        }
        Ok(())
    }
}

/// What is persisted about a new version of `name`.
fn new_record(name: &str, component: &[u8], manifest: Manifest) -> VersionRecord {
    let digest = sha256_hex(component);
    VersionRecord {
        name: name.to_owned(),
        version: manifest
            .version
            .clone()
            .unwrap_or_else(|| format!("sha256-{}", &digest[..12])),
        digest,
        deployed_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        manifest,
    }
}

/// `deployment` in place of the running version (if any), which goes to the history;
/// a service that failed to restore keeps its persisted history the same way.
fn replace(current: &Current, deployment: &Arc<Deployment>) -> (Versions, DeployKind) {
    match current.state() {
        Some(mut state) => {
            state.promote(deployment.record.clone());
            let versions = Versions {
                stable: deployment.clone(),
                canary: None,
                history: state.history,
                scale_override: state.scale,
            };
            (versions, DeployKind::Replaced)
        }
        None => {
            let versions = Versions {
                stable: deployment.clone(),
                canary: None,
                history: Vec::new(),
                scale_override: None,
            };
            (versions, DeployKind::Created)
        }
    }
}

/// The running versions with `deployment` as their canary, on the same route.
fn with_canary(
    current: &Current,
    deployment: &Arc<Deployment>,
    weight: u8,
    auto_rollback: Option<AutoRollback>,
) -> Result<Versions, ServiceError> {
    let name = &deployment.record.name;
    let Some(versions) = &current.versions else {
        return Err(conflict(name, Conflict::NothingToShareWith));
    };
    if deployment.route() != versions.route() || deployment.grpc() != versions.grpc() {
        let routes = |route: &str, grpc: &[String]| {
            std::iter::once(route.to_owned())
                .chain(
                    grpc.iter()
                        .map(|service| crate::manifest::grpc_route(service)),
                )
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(conflict(
            name,
            Conflict::CanaryRoute {
                stable: routes(versions.route(), versions.grpc()),
                asked: routes(deployment.route(), deployment.grpc()),
            },
        ));
    }
    let canary = Canary::new(deployment.clone(), weight, auto_rollback);
    Ok(versions.with_canary(Some(Arc::new(canary))))
}

/// What is persisted of `name`, and the version a rollback to `version` (or to the
/// previous one) would go to.
fn rollback_target(
    current: &Current,
    name: &str,
    version: Option<&str>,
) -> Result<(ServiceState, VersionRecord), ServiceError> {
    let state = current
        .state()
        .ok_or_else(|| ServiceError::NotFound(name.to_owned()))?;
    let target = state
        .clone()
        .take_rollback_target(version)
        .ok_or_else(|| conflict(name, Conflict::NoEarlierVersion(version.map(str::to_owned))))?;
    Ok((state, target))
}

/// Stop the background work of the deployments of `old` that `new` no longer uses.
fn retire(old: &Versions, new: Option<&Versions>) {
    for deployment in old.deployments() {
        let in_use =
            new.is_some_and(|new| new.deployments().any(|live| Arc::ptr_eq(live, deployment)));
        if !in_use {
            deployment.retire();
        }
    }
}
