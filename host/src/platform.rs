//! The host-wide plumbing every guest request can reach: the registry (and discovery
//! through it), the caller, telemetry, every service's store, the event bus, what was
//! published since delivery last looked, and the operator's secrets. Built once (by
//! [`PlatformBuilder`]: `shoal serve`, the benchmarks and the tests alike) and shared.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::caller::Caller;
use crate::events::sqlite::SqliteBus;
use crate::policy::redact::Redactor;
use crate::registry::Registry;
use crate::registry::embedded::EmbeddedRegistry;
use crate::secrets::Secrets;
use crate::store::sqlite::SqliteBackend;
use crate::telemetry::Telemetry;

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
    /// What the bus holds against its host-wide bound.
    pub bus_bound: crate::events::BusBound,
    /// How long subscribers remember the events they handled.
    pub inbox_retention: Duration,
    /// The operator's secrets, and the redactor that masks them.
    pub secrets: Arc<crate::secrets::Secrets>,
    /// Requests kept for debugging, a ring per service.
    pub recordings: Arc<crate::recording::Recordings>,
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
    /// A platform on the embedded backends, keeping its data under `data_dir`.
    pub fn builder(data_dir: impl Into<PathBuf>) -> PlatformBuilder {
        PlatformBuilder {
            data_dir: data_dir.into(),
            host_id: "local".into(),
            telemetry: None,
            secrets: None,
            registry_sweep: Duration::from_secs(1),
            stores: None,
            bus: None,
            registry: None,
            bus_limit: crate::events::BusSettings::default().max_bus_mb * 1024 * 1024,
            inbox_retention: crate::events::BusSettings::default().inbox_retention,
            recordings: (100, 16 * 1024 * 1024),
        }
    }

    /// Registry id of `version` of `service` on this host: a stable version and its
    /// canary are distinct instances.
    pub fn local_instance_id(&self, service: &str, version: &str) -> String {
        format!("{}/{service}@{version}", self.host_id)
    }
}

/// Builds a [`Platform`] on the embedded backends: the in-process registry, a SQLite
/// store per service under `stores/` and the SQLite event bus in `events.sqlite3` of
/// the data directory.
pub struct PlatformBuilder {
    data_dir: PathBuf,
    host_id: String,
    telemetry: Option<Arc<Telemetry>>,
    secrets: Option<Arc<Secrets>>,
    registry_sweep: Duration,
    stores: Option<Arc<dyn crate::store::StoreBackend>>,
    bus: Option<Arc<dyn crate::events::EventBus>>,
    registry: Option<Arc<dyn Registry>>,
    bus_limit: u64,
    inbox_retention: Duration,
    recordings: (usize, u64),
}

impl PlatformBuilder {
    /// How many recordings, and bytes of them, each service keeps (default 100 and
    /// 16 MiB).
    pub fn recordings(mut self, count: usize, bytes: u64) -> Self {
        self.recordings = (count, bytes);
        self
    }

    /// Keep services' stores in `stores` instead of SQLite files in the data
    /// directory.
    pub fn stores(mut self, stores: Arc<dyn crate::store::StoreBackend>) -> Self {
        self.stores = Some(stores);
        self
    }

    /// Keep the event bus in `bus` instead of SQLite in the data directory.
    pub fn bus(mut self, bus: Arc<dyn crate::events::EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Discover through `registry` instead of the in-process one (a cluster's).
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Bytes the event bus may hold for all services together.
    pub fn bus_limit(mut self, bytes: u64) -> Self {
        self.bus_limit = bytes;
        self
    }

    /// How long subscribers remember the events they handled.
    pub fn inbox_retention(mut self, retention: Duration) -> Self {
        self.inbox_retention = retention;
        self
    }

    /// This host's identity in the registry (default `local`).
    pub fn host_id(mut self, host_id: impl Into<String>) -> Self {
        self.host_id = host_id.into();
        self
    }

    /// Metrics and traces (default: measured, exported as the environment says).
    pub fn telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The operator's secrets (default: sealed in the data directory, none set).
    pub fn secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// How often the embedded registry drops expired registrations (default 1 s).
    pub fn registry_sweep(mut self, every: Duration) -> Self {
        self.registry_sweep = every;
        self
    }

    /// Open the backends and start the registry.
    pub fn build(self) -> anyhow::Result<Arc<Platform>> {
        let telemetry = match self.telemetry {
            Some(telemetry) => telemetry,
            None => Arc::new(Telemetry::from_env(true)?),
        };
        let secrets = match self.secrets {
            Some(secrets) => secrets,
            None => Arc::new(Secrets::in_data_dir(
                &self.data_dir,
                Arc::new(Redactor::default()),
            )?),
        };
        let registry: Arc<dyn Registry> = match self.registry {
            Some(registry) => registry,
            None => EmbeddedRegistry::start(self.registry_sweep),
        };
        let stores: Arc<dyn crate::store::StoreBackend> = match self.stores {
            Some(stores) => stores,
            None => Arc::new(
                SqliteBackend::new(self.data_dir.join("stores"))
                    .map_err(|error| anyhow::anyhow!("opening the stores directory: {error}"))?,
            ),
        };
        let bus: Arc<dyn crate::events::EventBus> = match self.bus {
            Some(bus) => bus,
            None => Arc::new(open_bus(&self.data_dir)?),
        };
        Ok(Arc::new(Platform {
            host_id: self.host_id,
            caller: Arc::new(Caller::new(registry.clone(), telemetry.clone())),
            registry,
            telemetry,
            stores,
            bus,
            published: Published::default(),
            bus_bound: crate::events::BusBound::new(self.bus_limit),
            inbox_retention: self.inbox_retention,
            secrets,
            recordings: crate::recording::Recordings::new(
                self.data_dir.join("recordings"),
                self.recordings.0,
                self.recordings.1,
            ),
        }))
    }
}

fn open_bus(data_dir: &Path) -> anyhow::Result<SqliteBus> {
    let path = data_dir.join("events.sqlite3");
    SqliteBus::open(&path)
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("opening the event bus {}", path.display()))
}
