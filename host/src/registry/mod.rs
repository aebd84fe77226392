//! The service registry: which instances of which services exist, where they are
//! reached, and how healthy they are.
//!
//! [`Registry`] is a small async trait so the backend can change without touching
//! callers: [`embedded::EmbeddedRegistry`] (in process, the default), and
//! [`etcd::EtcdRegistry`] for a cluster. Every registration carries a lease
//! (TTL); a registration that is not renewed expires and disappears from discovery.

pub mod embedded;
pub mod etcd;
pub mod external;
pub mod health;
pub mod name;

pub use name::{InvalidName, validate_name};

use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

/// Where an instance is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "authority")]
pub enum Endpoint {
    /// A service running on this host: called in process, no socket.
    Local,
    /// A plain HTTP endpoint, `host:port`.
    Http(String),
    /// A service on another host of the cluster, reached through that host's gateway
    /// (`host:port`) with the cluster's peer credential.
    Peer(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Local => f.write_str("local"),
            Endpoint::Http(authority) | Endpoint::Peer(authority) => f.write_str(authority),
        }
    }
}

/// Health of an instance, as load balancing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Takes traffic.
    Serving,
    /// Takes traffic only when no instance is serving.
    Degraded,
    /// Takes no traffic.
    NotServing,
}

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// Unique id, stable for the life of the registration.
    pub id: String,
    /// The service it belongs to.
    pub service: String,
    /// Where it is reached.
    pub endpoint: Endpoint,
    /// The version it runs.
    pub version: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Last known health.
    pub health: Health,
}

/// A live view of a service's instances; `changed()` wakes on every change.
pub type InstanceWatch = watch::Receiver<Arc<Vec<Instance>>>;

/// Registry failures.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// No registration with that id (expired or never made).
    #[error("no registration `{0}`")]
    UnknownInstance(String),
    /// The backend could not be reached.
    #[error("registry backend unavailable: {0}")]
    Unavailable(String),
}

/// A registry backend.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Register (or replace) `instance` with a lease of `ttl`.
    async fn register(&self, instance: Instance, ttl: Duration) -> Result<(), RegistryError>;
    /// Extend the lease of instance `id` by its TTL.
    async fn renew(&self, id: &str) -> Result<(), RegistryError>;
    /// Remove instance `id`.
    async fn deregister(&self, id: &str) -> Result<(), RegistryError>;
    /// Record the health of instance `id`.
    async fn set_health(&self, id: &str, health: Health) -> Result<(), RegistryError>;
    /// Every live instance of `service`, whatever its health, sorted by id.
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError>;
    /// Watch `service`'s instances (whatever their health).
    async fn watch(&self, service: &str) -> Result<InstanceWatch, RegistryError>;
}

/// The two health signals of a local service: what it reported about itself through
/// `shoal:platform/registry`, and the verdict of its exported health check. The
/// effective health is the worse of the two, so a service that says it is draining
/// stays out of rotation even while its check passes, and vice versa.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthSignals {
    /// Last self-report.
    pub reported: Option<Health>,
    /// Last health-check verdict.
    pub checked: Option<Health>,
}

impl HealthSignals {
    /// The health discovery should use.
    pub fn effective(&self) -> Health {
        let rank = |h: Health| match h {
            Health::Serving => 0,
            Health::Degraded => 1,
            Health::NotServing => 2,
        };
        [self.reported, self.checked]
            .into_iter()
            .flatten()
            .max_by_key(|h| rank(*h))
            .unwrap_or(Health::Serving)
    }
}

/// The instances that should take traffic: serving ones, or the degraded ones when
/// none is serving. Never not-serving ones.
pub fn routable(instances: &[Instance]) -> Vec<Instance> {
    let serving: Vec<Instance> = instances
        .iter()
        .filter(|i| i.health == Health::Serving)
        .cloned()
        .collect();
    if !serving.is_empty() {
        return serving;
    }
    instances
        .iter()
        .filter(|i| i.health == Health::Degraded)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, health: Health) -> Instance {
        Instance {
            id: id.into(),
            service: "s".into(),
            endpoint: Endpoint::Local,
            version: "1".into(),
            tags: vec![],
            health,
        }
    }

    #[test]
    fn effective_health_is_the_worse_signal() {
        let signals = |reported, checked| HealthSignals { reported, checked }.effective();
        assert_eq!(signals(None, None), Health::Serving);
        assert_eq!(
            signals(Some(Health::NotServing), Some(Health::Serving)),
            Health::NotServing
        );
        assert_eq!(
            signals(Some(Health::Serving), Some(Health::Degraded)),
            Health::Degraded
        );
        assert_eq!(signals(None, Some(Health::Serving)), Health::Serving);
    }

    #[test]
    fn routable_prefers_serving_then_degraded_never_down() {
        let all = [
            instance("a", Health::Degraded),
            instance("b", Health::Serving),
            instance("c", Health::NotServing),
        ];
        let ids = |v: Vec<Instance>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(routable(&all)), ["b"]);
        assert_eq!(ids(routable(&all[..1])), ["a"]);
        assert!(routable(&all[2..]).is_empty());
    }
}
