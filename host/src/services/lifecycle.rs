//! Deploy, remove, restore, roll back, canary and scale: every change is validated
//! first, persisted next, and swapped into the live table last.

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::StreamExt as _;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use super::limiter::{Limiter, Scale};
use super::state::{AutoRollback, CanaryState, ServiceState};
use super::table::{Canary, Deployment, FaultCounters, ServiceEntry, Shared};
use super::{Conflict, DeployKind, Invalid, ServiceError, Services};
use crate::manifest::{Manifest, ManifestError};
use crate::policy::error_rate::ErrorWindow;
use crate::registry::validate_name;
use crate::runtime::concurrent::{self, Concurrency, ConcurrentService, Instances};
use crate::runtime::reuse::InstancePool;
use crate::runtime::{CodeTier, Compiled, Handler, InstanceLimits, ServiceContext};
use crate::storage::{ServiceRecord, sha256_hex};

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

impl Services {
    /// Validate, compile, persist and swap in a new version of `name`.
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
        let result = self.deploy_checked(name, component, manifest, mode).await;
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
    ) -> Result<(Arc<Deployment>, DeployKind), ServiceError> {
        validate_name(name)?;
        manifest.validate(self.defaults.max_memory_mb)?;
        mode.validate()?;
        let memory_mb = manifest.limits.memory_mb.unwrap_or(self.defaults.memory_mb);
        let concurrency = self.manifest_scale(&manifest).max_concurrency;
        self.check_instance_cap(concurrency)?;
        self.check_memory_budget(memory_mb, concurrency)?;
        let record = new_record(name, &component, manifest);
        // Compile before taking the lock: a slow compile must not block other changes.
        let deployment = Arc::new(self.build(record, component.clone()).await?);

        let _guard = self.changes.lock().await;
        self.table.check_route(&deployment.route, name)?;
        if self.is_external(name).await {
            return Err(conflict(name, Conflict::ExternalName));
        }
        let storage = self.storage.clone();
        let digest = deployment.record.digest.clone();
        tokio::task::spawn_blocking(move || storage.put_blob(&digest, &component))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)?;

        let existing = self.table.entry(name);
        let failed = self.failed_service(name).map(|failed| failed.state);
        let (state, plan) = match mode {
            DeployMode::Replace => plan_replace(existing, failed, &deployment),
            DeployMode::Canary {
                weight,
                auto_rollback,
            } => plan_canary(existing, &deployment, weight, auto_rollback)?,
        };
        self.persist(name, &state).await?;
        // Live limits change only once the new state is on disk.
        let kind = plan.kind;
        let entry = match plan.existing {
            Some(existing) if kind == DeployKind::Canary => {
                existing.with_canary(plan.canary.map(Arc::new))
            }
            existing => ServiceEntry {
                stable: deployment.clone(),
                canary: None,
                history: state.history,
                shared: self.shared_for(existing.as_deref(), &deployment, state.scale),
                scale_override: state.scale.is_some(),
            },
        };
        self.install(entry).await;
        self.failed.lock().remove(name);
        tracing::info!(
            service = name,
            version = %deployment.record.version,
            digest = %deployment.record.digest,
            route = %deployment.route,
            ?kind,
            "deployed"
        );
        Ok((deployment, kind))
    }

    /// Stop routing to `name` and forget it. Running requests finish.
    pub async fn remove(&self, name: &str) -> Result<(), ServiceError> {
        validate_name(name)?;
        let _guard = self.changes.lock().await;
        if self.table.entry(name).is_none() && self.failed_service(name).is_none() {
            return Err(ServiceError::NotFound(name.to_owned()));
        }
        let storage = self.storage.clone();
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || storage.remove_record(&owned))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)?;
        self.failed.lock().remove(name);
        if let Some(removed) = self.table.remove(name) {
            retire_entry(&removed, None);
            self.platform.telemetry.metrics.forget_service(name);
            self.platform.telemetry.guest_logs.forget(name);
            for deployment in removed.deployments() {
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
        // seconds), then check under the lock that it is still an earlier version.
        let (_, _, wanted) = self.rollback_plan(name, version)?;
        let deployment = Arc::new(self.load(wanted.clone()).await?);
        let _guard = self.changes.lock().await;
        let (entry, mut state, target) = self.rollback_plan(name, version)?;
        if target != wanted {
            return Err(conflict(name, Conflict::ChangedMeanwhile));
        }
        state.take_rollback_target(version);
        // The earlier version's route may have been taken since.
        self.table.check_route(&deployment.route, name)?;
        state.promote(target);
        state.canary = None;
        self.persist(name, &state).await?;
        // The version rolled back to brings its own manifest limits, unless the
        // operator scaled the service.
        let shared = self.shared_for(entry.as_deref(), &deployment, state.scale);
        self.install(ServiceEntry {
            stable: deployment.clone(),
            canary: None,
            history: state.history,
            shared,
            scale_override: state.scale.is_some(),
        })
        .await;
        self.failed.lock().remove(name);
        tracing::info!(service = name, version = %deployment.record.version, "rolled back");
        Ok(deployment)
    }

    /// The live entry (if running) and persisted state of `name`, and the version a
    /// rollback to `version` (or the previous one) would go to.
    fn rollback_plan(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(Option<Arc<ServiceEntry>>, ServiceState, ServiceRecord), ServiceError> {
        let entry = self.table.entry(name);
        let state = match (&entry, self.failed_service(name)) {
            (Some(entry), _) => state_of(entry),
            (None, Some(failed)) => failed.state,
            (None, None) => return Err(ServiceError::NotFound(name.to_owned())),
        };
        let target = state.clone().take_rollback_target(version).ok_or_else(|| {
            conflict(name, Conflict::NoEarlierVersion(version.map(str::to_owned)))
        })?;
        Ok((entry, state, target))
    }

    /// Change the canary's share of traffic.
    pub async fn set_canary_weight(&self, name: &str, weight: u8) -> Result<(), ServiceError> {
        validate_name(name)?;
        check_weight(weight)?;
        let _guard = self.changes.lock().await;
        let entry = self.existing(name)?;
        let canary = entry
            .canary
            .as_ref()
            .ok_or_else(|| conflict(name, Conflict::NoCanary))?;
        let mut state = state_of(&entry);
        if let Some(persisted) = &mut state.canary {
            persisted.weight = weight;
        }
        self.persist(name, &state).await?;
        // Same canary, new share: its error window and trip state carry over.
        let canary = Canary {
            deployment: canary.deployment.clone(),
            weight,
            auto_rollback: canary.auto_rollback.clone(),
            window: canary.window.clone(),
            tripped: canary.tripped.clone(),
        };
        self.install(entry.with_canary(Some(Arc::new(canary))))
            .await;
        tracing::info!(service = name, weight, "canary weight changed");
        Ok(())
    }

    /// Make the canary the current version.
    pub async fn promote_canary(&self, name: &str) -> Result<Arc<Deployment>, ServiceError> {
        validate_name(name)?;
        let _guard = self.changes.lock().await;
        let entry = self.existing(name)?;
        let canary = entry
            .canary
            .clone()
            .ok_or_else(|| conflict(name, Conflict::NoCanary))?;
        let mut state = state_of(&entry);
        state.promote(canary.deployment.record.clone());
        state.canary = None;
        self.persist(name, &state).await?;
        let shared = self.shared_for(Some(&entry), &canary.deployment, state.scale);
        self.install(ServiceEntry {
            stable: canary.deployment.clone(),
            canary: None,
            history: state.history,
            shared,
            scale_override: entry.scale_override,
        })
        .await;
        tracing::info!(service = name, version = %canary.deployment.record.version, "canary promoted");
        Ok(canary.deployment.clone())
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
        let _guard = self.changes.lock().await;
        let entry = self.existing(name)?;
        let Some(canary) = &entry.canary else {
            return Err(conflict(name, Conflict::NoCanary));
        };
        if only.is_some_and(|only| !Arc::ptr_eq(only, &canary.deployment)) {
            tracing::info!(
                service = name,
                "a newer canary replaced the one that tripped; keeping it"
            );
            return Ok(());
        }
        let mut state = state_of(&entry);
        state.canary = None;
        self.persist(name, &state).await?;
        self.install(entry.with_canary(None)).await;
        tracing::warn!(service = name, reason, "canary rolled back");
        Ok(())
    }

    /// Change a service's concurrency and queue live, and persist the override.
    pub async fn scale(&self, name: &str, scale: Scale) -> Result<(), ServiceError> {
        validate_name(name)?;
        if !(1..=100_000).contains(&scale.max_concurrency) || scale.queue > 1_000_000 {
            return Err(Invalid::Scale.into());
        }
        let _guard = self.changes.lock().await;
        let entry = self.existing(name)?;
        let memory_mb = (entry.stable.limits.memory_bytes / (1024 * 1024)) as u32;
        self.check_instance_cap(scale.max_concurrency)?;
        self.check_memory_budget(memory_mb, scale.max_concurrency)?;
        let mut state = state_of(&entry);
        state.scale = Some(scale);
        self.persist(name, &state).await?;
        entry.shared.limiter.rescale(scale);
        self.install(ServiceEntry {
            scale_override: true,
            ..entry.with_canary(entry.canary.clone())
        })
        .await;
        tracing::info!(service = name, ?scale, "scaled");
        Ok(())
    }

    /// Load every persisted service. Returns how many are running; a service that
    /// fails to load is logged and left on disk.
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let storage = self.storage.clone();
        let (states, broken) =
            tokio::task::spawn_blocking(move || storage.services::<ServiceState>()).await??;
        let broken_count = broken.len();
        for (path, error) in broken {
            tracing::error!(path = %path.display(), error = %format!("{error:#}"), "unreadable service state");
        }
        // Compile in parallel (bounded by the compile permits), install in name order
        // so a route claimed twice goes to the same service every time.
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
        // Broken records may still refer to blobs: collect nothing while any exists.
        let referenced = if broken_count > 0 {
            None
        } else {
            Some(referenced)
        };
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
            if let Err(error) = self.table.check_route(&stable.route, &name) {
                self.mark_failed(&name, state, format!("cannot restore: {error}"));
                continue;
            }
            let canary = match (canary, &state.canary) {
                (Some(Ok(deployment)), Some(persisted)) => Some(Arc::new(new_canary(
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
            let shared = self.shared_for(None, &stable, state.scale);
            self.install(ServiceEntry {
                stable,
                canary,
                history: state.history,
                shared,
                scale_override: state.scale.is_some(),
            })
            .await;
            restored += 1;
        }
        if let Some(referenced) = &referenced {
            self.collect_garbage(referenced);
        }
        Ok(restored)
    }

    /// Remove stored components and compiled code that no persisted version (current,
    /// history or canary, of running and failed services) refers to.
    fn collect_garbage(&self, referenced: &std::collections::HashSet<String>) {
        let blobs =
            crate::runtime::engine::collect_files(&self.storage.blob_dir(), "wasm", referenced);
        let compiled = self.runtime.collect_cache(referenced);
        if blobs + compiled > 0 {
            tracing::info!(blobs, compiled, "removed components no version refers to");
        }
    }

    /// No service may run more instances at once than the per-service cap.
    fn check_instance_cap(&self, concurrency: u32) -> Result<(), ServiceError> {
        let cap = self.defaults.max_instances_per_service;
        if concurrency > cap {
            return Err(Invalid::InstanceCap {
                asked: concurrency,
                cap,
            }
            .into());
        }
        Ok(())
    }

    /// A service's worst case (every slot busy, every instance at its memory limit)
    /// must fit the host's memory budget.
    fn check_memory_budget(&self, memory_mb: u32, concurrency: u32) -> Result<(), ServiceError> {
        let need_mb = u64::from(memory_mb) * u64::from(concurrency);
        let budget_mb = (self.runtime.memory_budget.limit() / (1024 * 1024)) as u64;
        if need_mb > budget_mb {
            return Err(Invalid::MemoryBudget {
                memory_mb: u64::from(memory_mb),
                concurrency: u64::from(concurrency),
                need_mb,
                budget_mb,
            }
            .into());
        }
        Ok(())
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

    /// The live entry of `name`: `InvalidName` or `NotFound` when there is none.
    pub fn existing(&self, name: &str) -> Result<Arc<ServiceEntry>, ServiceError> {
        validate_name(name)?;
        self.table
            .entry(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_owned()))
    }

    /// Swap `entry` into the table, register it, start its health checks and retire
    /// what it replaced.
    async fn install(&self, entry: ServiceEntry) {
        let entry = Arc::new(entry);
        let previous = match self.table.insert(entry.clone()) {
            Ok(previous) => previous,
            Err(error) => {
                // Every change checks the route under the change lock first; the table
                // refusing means that check was missed: keep what serves now.
                tracing::error!(service = %entry.name(), %error, "the route table refused an entry");
                return;
            }
        };
        for deployment in entry.deployments() {
            self.register(deployment).await;
        }
        if let Some(previous) = previous {
            retire_entry(&previous, Some(&entry));
            // Versions no longer live leave discovery.
            for old in previous.deployments() {
                let id = &old.context.instance_id;
                if !entry
                    .deployments()
                    .any(|live| &live.context.instance_id == id)
                {
                    let _ = self.platform.registry.deregister(id).await;
                }
            }
            // Only live versions keep their request series.
            let live = |version: &str| {
                entry.stable.record.version == version
                    || entry
                        .canary
                        .as_ref()
                        .is_some_and(|canary| canary.deployment.record.version == version)
            };
            let old_versions = std::iter::once(&previous.stable)
                .chain(previous.canary.as_ref().map(|canary| &canary.deployment));
            for old in old_versions {
                if !live(&old.record.version) {
                    self.platform
                        .telemetry
                        .metrics
                        .forget_version(&old.record.name, &old.record.version);
                }
            }
        }
        if entry.stable.health_task.lock().is_none() {
            self.start_health_checks(&entry.stable);
        }
    }

    async fn persist(&self, name: &str, state: &ServiceState) -> Result<(), ServiceError> {
        let storage = self.storage.clone();
        let name = name.to_owned();
        let state = state.clone();
        tokio::task::spawn_blocking(move || storage.put_service(&name, &state))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)
    }

    /// The shared state of a service: kept across versions, created on first deploy.
    fn shared_for(
        &self,
        existing: Option<&ServiceEntry>,
        deployment: &Deployment,
        scale_override: Option<Scale>,
    ) -> Arc<Shared> {
        let scale =
            scale_override.unwrap_or_else(|| self.manifest_scale(&deployment.record.manifest));
        match existing {
            Some(entry) => {
                // A new manifest's limits apply unless `shoal scale` overrode them.
                if scale_override.is_none() {
                    entry.shared.limiter.rescale(scale);
                }
                entry.shared.clone()
            }
            None => Arc::new(Shared {
                limiter: Limiter::new(scale),
                faults: FaultCounters::default(),
            }),
        }
    }

    fn manifest_scale(&self, manifest: &Manifest) -> Scale {
        let cap = self.defaults.max_instances_per_service;
        Scale {
            max_concurrency: manifest
                .limits
                .max_concurrency
                .unwrap_or(self.defaults.scale.max_concurrency.min(cap)),
            queue: manifest.limits.queue.unwrap_or(self.defaults.scale.queue),
        }
    }

    /// Build a deployment from a persisted record (reading its component back).
    async fn load(&self, record: ServiceRecord) -> Result<Deployment, ServiceError> {
        let storage = self.storage.clone();
        let digest = record.digest.clone();
        let bytes = tokio::task::spawn_blocking(move || storage.read_blob(&digest))
            .await
            .map_err(storage_error)?
            .map_err(ServiceError::Storage)?;
        self.build(record, Bytes::from(bytes)).await
    }

    async fn build(
        &self,
        record: ServiceRecord,
        component: Bytes,
    ) -> Result<Deployment, ServiceError> {
        let runtime = self.runtime.clone();
        let digest = record.digest.clone();
        // At most one compile per core at once; the rest wait here, never under the
        // change lock.
        let permit = self.compiles.acquire().await.map_err(storage_error)?;
        let compiled = {
            let component = component.clone();
            tokio::task::spawn_blocking(move || runtime.load(&component, &digest))
                .await
                .map_err(storage_error)??
        };
        drop(permit);
        self.observe_compile(&record.name, &compiled);
        let tier = compiled.code.tier;
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
        let concurrent_code = matches!(compiled.code.handler, Handler::Concurrent(_));
        let manifest_limits = &record.manifest.limits;
        if !concurrent_code && manifest_limits.instance_concurrency.is_some_and(|n| n > 1) {
            return Err(ServiceError::Manifest(ManifestError::Field {
                field: "limits.instance_concurrency".into(),
                reason: "only a WASIp3 component (exporting `wasi:http/handler@0.3`) serves \
                         several requests in one instance; this one is WASIp2"
                    .into(),
            }));
        }
        let pool = manifest_limits
            .instance_reuse
            .filter(|uses| *uses > 1 && !concurrent_code)
            .map(|uses| {
                let pool = Arc::new(InstancePool::new(uses, MAX_IDLE_REUSABLE));
                self.runtime.idle.register(&pool);
                pool
            });
        let concurrency = Concurrency {
            per_instance: manifest_limits
                .instance_concurrency
                .unwrap_or(concurrent::DEFAULT_PER_INSTANCE) as usize,
            requests_per_instance: manifest_limits
                .instance_reuse
                .unwrap_or(concurrent::DEFAULT_REQUESTS_PER_INSTANCE)
                as usize,
        };
        let limits = InstanceLimits {
            memory_bytes: memory_mb as usize * 1024 * 1024,
            table_elements: record
                .manifest
                .limits
                .table_elements
                .unwrap_or(DEFAULT_TABLE_ELEMENTS) as usize,
            budget: self.runtime.memory_budget.clone(),
            idle: self.runtime.idle.clone(),
        };
        let quota_mb = record
            .manifest
            .limits
            .store_mb
            .unwrap_or(crate::manifest::DEFAULT_STORE_MB);
        let store = self
            .platform
            .stores
            .open(&record.name, u64::from(quota_mb) * 1024 * 1024)
            .map_err(|error| {
                ServiceError::Storage(anyhow::anyhow!("opening the store: {error}"))
            })?;
        let context = Arc::new(ServiceContext {
            name: record.name.as_str().into(),
            version: record.version.as_str().into(),
            config: record.manifest.config.clone().into(),
            secrets: record.manifest.secrets.clone(),
            instance_id: self
                .platform
                .local_instance_id(&record.name, &record.version),
            outbound: Arc::new(record.manifest.outbound.clone()),
            health: Mutex::new(Default::default()),
            log_budget: Default::default(),
            store,
            meter: crate::telemetry::metering::ServiceMeter::new(
                &self.platform.telemetry.metrics,
                &record.name,
            ),
            logs: self.platform.telemetry.guest_logs.service(&record.name),
        });
        let code = Arc::new(ArcSwap::new(compiled.code));
        let concurrent = concurrent_code.then(|| {
            Arc::new(ConcurrentService::new(Instances {
                code: code.clone(),
                service: context.clone(),
                limits: limits.clone(),
                platform: self.platform.clone(),
                concurrency,
                timeout,
            }))
        });
        let deployment = Deployment {
            record,
            route,
            context,
            limits,
            code,
            timeout,
            health_task: Mutex::new(None),
            pool,
            concurrent,
        };
        if tier == CodeTier::Baseline {
            self.optimize_in_background(&deployment, component);
        }
        Ok(deployment)
    }

    fn observe_compile(&self, service: &str, compiled: &Compiled) {
        let metrics = &self.platform.telemetry.metrics;
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

    /// Compile `component` with the optimising compiler (one background compile at a
    /// time, at low priority) and swap it in for the deployment's baseline code. Requests already running
    /// finish on the code they started on; idle reusable instances of the baseline
    /// code are dropped. If optimising fails, the baseline code keeps serving.
    fn optimize_in_background(&self, deployment: &Deployment, component: Bytes) {
        let Some(services) = self.me.upgrade() else {
            return;
        };
        let code = deployment.code.clone();
        let pool = deployment.pool.clone();
        let name = deployment.record.name.clone();
        let digest = deployment.record.digest.clone();
        tokio::spawn(async move {
            let Ok(_permit) = services.background_compiles.acquire().await else {
                return;
            };
            let runtime = services.runtime.clone();
            // A thread of its own: the compile lowers its priority.
            let (done, optimized) = tokio::sync::oneshot::channel();
            let spawned = {
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
            // The deployment is gone (replaced or removed): its code and its metric
            // series with it; the optimised code is in the cache for a later deploy.
            if Arc::strong_count(&code) == 1 {
                return;
            }
            match optimized {
                Ok(Ok(compiled)) => {
                    services.observe_compile(&name, &compiled);
                    code.store(compiled.code);
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

/// Idle instances one deployment keeps for reuse on each serving thread (each holds
/// an allocator slot).
const MAX_IDLE_REUSABLE: usize = 32;

/// Table elements per instance when the manifest sets none.
const DEFAULT_TABLE_ELEMENTS: u32 = 100_000;

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
fn new_record(name: &str, component: &[u8], manifest: Manifest) -> ServiceRecord {
    let digest = sha256_hex(component);
    ServiceRecord {
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

/// How a deploy changes the live entry, decided before anything is persisted.
struct DeployPlan {
    kind: DeployKind,
    /// The entry the deploy changes, if the service runs already.
    existing: Option<Arc<ServiceEntry>>,
    /// The new canary, for a canary deploy.
    canary: Option<Canary>,
}

/// Replace the running version (if any) with `deployment`; it goes to the history.
/// A service that failed to restore keeps its persisted history the same way.
fn plan_replace(
    existing: Option<Arc<ServiceEntry>>,
    failed: Option<ServiceState>,
    deployment: &Arc<Deployment>,
) -> (ServiceState, DeployPlan) {
    let previous = existing.as_deref().map(state_of).or(failed);
    let replaced = previous.is_some();
    let state = match previous {
        Some(mut state) => {
            state.promote(deployment.record.clone());
            state.canary = None;
            state
        }
        None => ServiceState {
            current: deployment.record.clone(),
            history: Vec::new(),
            canary: None,
            scale: None,
        },
    };
    let kind = if replaced {
        DeployKind::Replaced
    } else {
        DeployKind::Created
    };
    let plan = DeployPlan {
        kind,
        existing,
        canary: None,
    };
    (state, plan)
}

/// Run `deployment` as a canary beside the running version, on the same route.
fn plan_canary(
    existing: Option<Arc<ServiceEntry>>,
    deployment: &Arc<Deployment>,
    weight: u8,
    auto_rollback: Option<AutoRollback>,
) -> Result<(ServiceState, DeployPlan), ServiceError> {
    let name = &deployment.record.name;
    let Some(existing) = existing else {
        return Err(conflict(name, Conflict::NothingToShareWith));
    };
    if deployment.route != existing.stable.route {
        return Err(conflict(
            name,
            Conflict::CanaryRoute {
                stable: existing.stable.route.clone(),
                asked: deployment.route.clone(),
            },
        ));
    }
    let mut state = state_of(&existing);
    state.canary = Some(CanaryState {
        record: deployment.record.clone(),
        weight,
        auto_rollback: auto_rollback.clone(),
    });
    let plan = DeployPlan {
        kind: DeployKind::Canary,
        existing: Some(existing),
        canary: Some(new_canary(deployment.clone(), weight, auto_rollback)),
    };
    Ok((state, plan))
}

fn new_canary(
    deployment: Arc<Deployment>,
    weight: u8,
    auto_rollback: Option<AutoRollback>,
) -> Canary {
    let window = auto_rollback
        .as_ref()
        .map(|rule| Duration::from_millis(rule.window_ms))
        .unwrap_or(Duration::from_secs(30));
    Canary {
        deployment,
        weight,
        auto_rollback,
        window: Arc::new(Mutex::new(ErrorWindow::new(window, Instant::now()))),
        tripped: Arc::new(AtomicBool::new(false)),
    }
}

/// The persisted form of a live entry.
fn state_of(entry: &ServiceEntry) -> ServiceState {
    ServiceState {
        current: entry.stable.record.clone(),
        history: entry.history.clone(),
        canary: entry.canary.as_ref().map(|canary| canary.state()),
        scale: entry.scale_override.then(|| entry.shared.limiter.scale()),
    }
}

/// Stop the background work of the deployments of `old` that `new` no longer uses.
fn retire_entry(old: &ServiceEntry, new: Option<&ServiceEntry>) {
    let in_use = |deployment: &Arc<Deployment>| {
        new.is_some_and(|new| {
            Arc::ptr_eq(&new.stable, deployment)
                || new
                    .canary
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(&c.deployment, deployment))
        })
    };
    if !in_use(&old.stable) {
        old.stable.retire();
    }
    if let Some(canary) = &old.canary
        && !in_use(&canary.deployment)
    {
        canary.deployment.retire();
    }
}
