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
    /// Which services committed events since delivery last looked, and a wake-up.
    pub published: Published,
    /// The operator's secrets, and the redactor that masks them.
    pub secrets: Arc<crate::secrets::Secrets>,
}

/// Services whose outboxes got events, so delivery reads only those (not every
/// service's database every round) and starts at once.
#[derive(Debug)]
pub struct Published {
    services: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Wakes the delivery loop.
    pub notify: tokio::sync::Notify,
    /// Until the first round, every outbox is read (events left by a crash).
    everything: std::sync::atomic::AtomicBool,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            services: Default::default(),
            notify: tokio::sync::Notify::new(),
            everything: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl Published {
    /// `service` committed something that may hold events.
    pub fn mark(&self, service: &str) {
        self.services.lock().insert(service.to_owned());
        self.notify.notify_one();
    }

    /// Read every outbox in the next round (a periodic safety net).
    pub fn mark_all(&self) {
        self.everything
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Wake delivery without an outbox to read (a replayed dead letter).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// The services to read now: `None` means every one.
    pub fn take(&self) -> Option<Vec<String>> {
        let marked: Vec<String> = self.services.lock().drain().collect();
        if self
            .everything
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return None;
        }
        Some(marked)
    }
}

impl Platform {
    /// Registry id of `version` of `service` on this host: a stable version and its
    /// canary are distinct instances.
    pub fn local_instance_id(&self, service: &str, version: &str) -> String {
        format!("{}/{service}@{version}", self.host_id)
    }
}
