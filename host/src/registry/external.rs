//! External services: plain HTTP endpoints that operators register through the admin
//! API (a legacy service, a database proxy, ...). They are discoverable and callable
//! like deployed services, health-checked by the host, and persisted.

use anyhow::Context as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

use super::health::{HealthCheck, HealthChecker};
use super::{Endpoint, Health, Instance, Registry};

/// Lease of an external registration; renewed by the host's heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);

/// What an operator registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    /// Replicas, each `host:port`.
    pub endpoints: Vec<String>,
    /// Active health check; without one every endpoint counts as serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Version label shown by discovery.
    #[serde(default = "default_version")]
    pub version: String,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_version() -> String {
    "external".into()
}

/// An external service registration that cannot be accepted.
#[derive(Debug, Error)]
#[error("invalid external service: {0}")]
pub struct InvalidExternal(pub String);

impl ExternalService {
    /// Parse and check a JSON registration.
    pub fn parse(json: &[u8]) -> Result<Self, InvalidExternal> {
        let spec: ExternalService =
            serde_json::from_slice(json).map_err(|error| InvalidExternal(error.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), InvalidExternal> {
        if self.endpoints.is_empty() || self.endpoints.len() > 256 {
            return Err(InvalidExternal(
                "`endpoints` must list 1 to 256 `host:port` entries".into(),
            ));
        }
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let authority: http::uri::Authority = endpoint.parse().map_err(|_| {
                InvalidExternal(format!(
                    "`endpoints[{index}]`: `{endpoint}` is not `host:port`"
                ))
            })?;
            if authority.port_u16().is_none() || authority.as_str().contains('@') {
                return Err(InvalidExternal(format!(
                    "`endpoints[{index}]`: `{endpoint}` needs an explicit port and no user info"
                )));
            }
            if self.endpoints[..index].contains(endpoint) {
                return Err(InvalidExternal(format!(
                    "`endpoints[{index}]`: `{endpoint}` is listed twice"
                )));
            }
        }
        if let Some(check) = &self.health_check {
            if !check.path.starts_with('/')
                || check.path.parse::<http::uri::PathAndQuery>().is_err()
            {
                return Err(InvalidExternal(
                    "`health_check.path` must be a path starting with `/`".into(),
                ));
            }
            if !(10..=3_600_000).contains(&check.interval_ms) {
                return Err(InvalidExternal(
                    "`health_check.interval_ms` must be 10 to 3600000".into(),
                ));
            }
            if !(1..=60_000).contains(&check.timeout_ms) {
                return Err(InvalidExternal(
                    "`health_check.timeout_ms` must be 1 to 60000".into(),
                ));
            }
            if check.unhealthy_threshold == 0 || check.healthy_threshold == 0 {
                return Err(InvalidExternal(
                    "health check thresholds must be at least 1".into(),
                ));
            }
        }
        if self.version.is_empty() || self.version.len() > 64 {
            return Err(InvalidExternal(
                "`version` must be 1 to 64 characters".into(),
            ));
        }
        Ok(())
    }

    /// Registry instances for this service's endpoints.
    pub fn instances(&self, name: &str) -> Vec<Instance> {
        self.endpoints
            .iter()
            .map(|endpoint| Instance {
                id: instance_id(name, endpoint),
                service: name.to_owned(),
                endpoint: Endpoint::Http(endpoint.clone()),
                version: self.version.clone(),
                tags: self.tags.clone(),
                health: Health::Serving,
            })
            .collect()
    }
}

/// Registry id of one endpoint of an external service.
pub fn instance_id(name: &str, endpoint: &str) -> String {
    format!("external/{name}/{endpoint}")
}

struct Entry {
    spec: ExternalService,
    checks: Vec<tokio::task::JoinHandle<()>>,
}

/// The registered external services: registry entries, health checks, persistence.
pub struct ExternalServices {
    registry: Arc<dyn Registry>,
    checker: HealthChecker,
    dir: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Serialises put and remove, so disk and memory never disagree.
    changes: tokio::sync::Mutex<()>,
}

impl ExternalServices {
    /// External services persisted under `dir`.
    pub fn new(
        registry: Arc<dyn Registry>,
        checker: HealthChecker,
        dir: PathBuf,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            registry,
            checker,
            dir,
            entries: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// Persist and activate `spec` as `name`, replacing a previous registration.
    /// Returns whether it replaced one.
    pub async fn put(&self, name: &str, spec: ExternalService) -> anyhow::Result<bool> {
        let _guard = self.changes.lock().await;
        let json = serde_json::to_vec_pretty(&spec)?;
        let path = self.dir.join(format!("{name}.json"));
        tokio::task::spawn_blocking(move || crate::data_dir::write_durably(&path, &json)).await??;
        Ok(self.activate(name, spec).await)
    }

    async fn activate(&self, name: &str, spec: ExternalService) -> bool {
        let previous = self.entries.lock().remove(name);
        let replaced = previous.is_some();
        if let Some(previous) = previous {
            self.retire(name, previous).await;
        }
        let mut checks = Vec::new();
        for instance in spec.instances(name) {
            let endpoint = instance.endpoint.to_string();
            let id = instance.id.clone();
            if let Err(error) = self.registry.register(instance, LEASE).await {
                tracing::error!(service = name, %error, "cannot register external endpoint");
            }
            if let Some(check) = &spec.health_check {
                checks.push(self.checker.spawn(id, endpoint, check.clone()));
            }
        }
        tracing::info!(
            service = name,
            endpoints = spec.endpoints.len(),
            "external service registered"
        );
        self.entries
            .lock()
            .insert(name.to_owned(), Entry { spec, checks });
        replaced
    }

    async fn retire(&self, name: &str, entry: Entry) {
        for check in entry.checks {
            check.abort();
        }
        for endpoint in &entry.spec.endpoints {
            let id = instance_id(name, endpoint);
            self.checker.forget(&id);
            let _ = self.registry.deregister(&id).await;
        }
    }

    /// Forget `name`. Returns whether it existed.
    pub async fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let _guard = self.changes.lock().await;
        if !self.entries.lock().contains_key(name) {
            return Ok(false);
        }
        let path = self.dir.join(format!("{name}.json"));
        tokio::task::spawn_blocking(move || crate::data_dir::remove_durably(&path)).await??;
        // Forget it only once it is gone from disk.
        let entry = self.entries.lock().remove(name);
        if let Some(entry) = entry {
            self.retire(name, entry).await;
        }
        Ok(true)
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.lock().contains_key(name)
    }

    /// Every registration, by name.
    pub fn list(&self) -> Vec<(String, ExternalService)> {
        self.entries
            .lock()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.spec.clone()))
            .collect()
    }

    /// Registry ids of every external endpoint (for lease renewal).
    pub fn instance_ids(&self) -> Vec<String> {
        self.entries
            .lock()
            .iter()
            .flat_map(|(name, entry)| entry.spec.endpoints.iter().map(|e| instance_id(name, e)))
            .collect()
    }

    /// Re-register one endpoint whose lease was lost (e.g. after a long stall).
    pub async fn reregister(&self, id: &str) {
        let instance =
            self.entries.lock().iter().find_map(|(name, entry)| {
                entry.spec.instances(name).into_iter().find(|i| i.id == id)
            });
        if let Some(mut instance) = instance {
            if let Some(health) = self.checker.last_verdict(id) {
                instance.health = health;
            }
            let _ = self.registry.register(instance, LEASE).await;
        }
    }

    /// Load every persisted registration.
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let mut restored = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| ExternalService::parse(&bytes).map_err(anyhow::Error::from))
            {
                Ok(spec) => {
                    self.activate(&name, spec).await;
                    restored += 1;
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), error = %format!("{error:#}"), "cannot restore external service")
                }
            }
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registration_renewed_after_a_lost_lease_keeps_its_last_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry: Arc<dyn Registry> =
            super::super::embedded::EmbeddedRegistry::start(Duration::from_secs(60));
        let checker = HealthChecker::new(registry.clone());
        let external = ExternalServices::new(registry.clone(), checker.clone(), dir.path().into())
            .expect("external");
        let spec = ExternalService::parse(br#"{"endpoints":["127.0.0.1:9"]}"#).expect("spec");
        external.put("db", spec).await.expect("put");
        let id = instance_id("db", "127.0.0.1:9");
        checker.record(&id, Health::NotServing);
        // The lease is lost (a long stall); the heartbeat registers it again.
        registry.deregister(&id).await.expect("deregister");
        external.reregister(&id).await;
        let instances = registry.instances("db").await.expect("instances");
        assert_eq!(instances[0].health, Health::NotServing);
    }

    #[test]
    fn parses_with_defaults() {
        let spec = ExternalService::parse(
            br#"{"endpoints":["127.0.0.1:9001","localhost:9002"],"health_check":{}}"#,
        )
        .expect("valid");
        let check = spec.health_check.expect("check");
        assert_eq!(check.path, "/health");
        assert_eq!(check.interval_ms, 1000);
        assert_eq!(spec.version, "external");
        let instances = ExternalService::parse(br#"{"endpoints":["h:1"]}"#)
            .expect("valid")
            .instances("legacy");
        assert_eq!(instances[0].id, "external/legacy/h:1");
        assert_eq!(instances[0].endpoint, Endpoint::Http("h:1".into()));
    }

    #[test]
    fn rejects_bad_registrations_with_the_reason() {
        for (json, needle) in [
            (&br#"{"endpoints":[]}"#[..], "endpoints"),
            (br#"{"endpoints":["no-port"]}"#, "explicit port"),
            (br#"{"endpoints":["a b:1"]}"#, "host:port"),
            (br#"{"endpoints":["u@h:1"]}"#, "user info"),
            (br#"{"endpoints":["h:1","h:1"]}"#, "twice"),
            (
                br#"{"endpoints":["h:1"],"health_check":{"path":"x"}}"#,
                "path",
            ),
            (
                br#"{"endpoints":["h:1"],"health_check":{"interval_ms":1}}"#,
                "interval_ms",
            ),
            (br#"{"endpoints":["h:1"],"bogus":1}"#, "bogus"),
            (br#"not json"#, "expected"),
        ] {
            let error = ExternalService::parse(json)
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }
}
