//! The host services every guest request can reach: registry, discovery and the
//! caller. Built once by `shoal serve` and shared.

use std::sync::Arc;

use crate::caller::Caller;
use crate::registry::Registry;

/// Host-wide plumbing handed to capabilities.
pub struct Platform {
    /// Identity of this host in the registry.
    pub host_id: String,
    /// Registry backend.
    pub registry: Arc<dyn Registry>,
    /// The resilient caller.
    pub caller: Arc<Caller>,
    /// Metrics and traces.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Every service's own store.
    pub stores: Arc<dyn crate::store::StoreBackend>,
    /// Deliveries of published events.
    pub bus: Arc<dyn crate::events::EventBus>,
    /// Woken when an event is published, so delivery starts at once.
    pub published: tokio::sync::Notify,
}

impl Platform {
    /// Registry id of `version` of `service` on this host: a stable version and its
    /// canary are distinct instances.
    pub fn local_instance_id(&self, service: &str, version: &str) -> String {
        format!("{}/{service}@{version}", self.host_id)
    }
}
