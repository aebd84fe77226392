//! `shoal:platform/discovery`: instances of a service, once or as a live watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::registry::health_to_wit;
use super::{HostFault, InstanceLimit, MAX_WATCHES, PlatformView, traced, traced_fallible};
use crate::bindings::discovery::{self, DiscoveryError, Host, HostWatcher, Instance};
use crate::recording::journal::{self, Journal};
use crate::registry::{self, InstanceWatch, Registry, validate_name};

/// A guest's live view of one service's instances.
pub struct Watcher {
    receiver: InstanceWatch,
    /// Changed since the guest last read (the first read always returns the set).
    pending: bool,
    /// The registry dropped the watch; nothing will change any more.
    closed: bool,
    /// A replay's watcher: what it reads comes from the recording, so it is always
    /// ready.
    replayed: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Watcher {
    async fn ready(&mut self) {
        if self.pending || self.closed || self.replayed {
            return;
        }
        match self.receiver.changed().await {
            Ok(()) => self.pending = true,
            Err(_) => self.closed = true,
        }
    }
}

/// What a discovery call sees: the registry and the instance's resource table.
pub struct DiscoveryView<'a> {
    /// Watches open now (bounded by [`MAX_WATCHES`]).
    pub open_watches: &'a AtomicUsize,
    /// Where instances are looked up.
    pub registry: &'a Arc<dyn Registry>,
    /// Holds the guest's watchers.
    pub table: &'a mut ResourceTable,
    /// The calling service, for the call's span.
    pub service: &'a str,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasDiscovery;

impl HasData for HasDiscovery {
    type Data<'a> = DiscoveryView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    discovery::add_to_linker::<T, HasDiscovery>(linker, |state| {
        let view = state.platform();
        DiscoveryView {
            open_watches: &view.ctx.open_watches,
            registry: &view.ctx.platform.registry,
            table: view.table,
            service: &view.ctx.service.name,
            journal: view.ctx.journal.as_deref(),
        }
    })
}

fn to_wit(instance: &registry::Instance) -> Instance {
    Instance {
        id: instance.id.clone(),
        address: instance.endpoint.to_string(),
        version: instance.version.clone(),
        tags: instance.tags.clone(),
        health: health_to_wit(instance.health),
    }
}

fn check_name(service: &str) -> Result<(), DiscoveryError> {
    validate_name(service).map_err(|error| DiscoveryError::InvalidName(error.to_string()))
}

impl Host for DiscoveryView<'_> {
    async fn discover(
        &mut self,
        service: String,
    ) -> wasmtime::Result<Result<Vec<Instance>, DiscoveryError>> {
        let registry = self.registry;
        let about = journal::about(self.journal, || service.clone());
        let live = async move {
            if let Err(error) = check_name(&service) {
                return Ok(Err(error));
            }
            Ok(match registry.instances(&service).await {
                Ok(instances) => Ok(registry::routable(&instances).iter().map(to_wit).collect()),
                Err(error) => Err(DiscoveryError::BackendUnavailable(error.to_string())),
            })
        };
        traced_fallible(
            "discovery.discover",
            self.service,
            journal::call(self.journal, "discovery.discover", about, live),
        )
        .await
    }

    async fn watch(
        &mut self,
        service: String,
    ) -> wasmtime::Result<Result<Resource<Watcher>, DiscoveryError>> {
        let registry = self.registry;
        let table = &mut *self.table;
        let open_watches = self.open_watches;
        let journal = self.journal;
        traced_fallible("discovery.watch", self.service, async {
            if open_watches.load(Ordering::Relaxed) >= MAX_WATCHES {
                return Err(wasmtime::Error::new(InstanceLimit {
                    call: "discovery.watch",
                    what: "open watches",
                    limit: MAX_WATCHES,
                }));
            }
            // Whether a watch could be opened is what the guest learns from outside;
            // a replay opens none (what its watcher reads comes from the recording).
            let mut receiver = None;
            let about = journal::about(journal, || service.clone());
            let opened = journal::call(journal, "discovery.watch", about, async {
                if let Err(error) = check_name(&service) {
                    return Ok(Err(error));
                }
                Ok(match registry.watch(&service).await {
                    Ok(watch) => {
                        receiver = Some(watch);
                        Ok(())
                    }
                    Err(error) => Err(DiscoveryError::BackendUnavailable(error.to_string())),
                })
            })
            .await?;
            if let Err(error) = opened {
                return Ok(Err(error));
            }
            let replayed = receiver.is_none();
            let receiver =
                receiver.unwrap_or_else(|| tokio::sync::watch::channel(Arc::default()).1);
            let watcher = Watcher {
                receiver,
                pending: true,
                closed: false,
                replayed,
            };
            let resource = table
                .push(watcher)
                .map_err(|error| HostFault::table("discovery.watch", error))?;
            open_watches.fetch_add(1, Ordering::Relaxed);
            Ok(Ok(resource))
        })
        .await
    }
}

impl HostWatcher for DiscoveryView<'_> {
    async fn subscribe(
        &mut self,
        watcher: Resource<Watcher>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, watcher)
    }

    async fn next(
        &mut self,
        watcher: Resource<Watcher>,
    ) -> wasmtime::Result<Option<Vec<Instance>>> {
        let table = &mut *self.table;
        let about = journal::about(self.journal, String::new);
        let live = async move {
            let watcher = table
                .get_mut(&watcher)
                .map_err(|error| HostFault::table("discovery.watcher.next", error))?;
            if !watcher.pending && !watcher.receiver.has_changed().unwrap_or(false) {
                return Ok(None);
            }
            watcher.pending = false;
            let current = watcher.receiver.borrow_and_update().clone();
            Ok(Some(current.iter().map(to_wit).collect()))
        };
        traced(
            "discovery.watcher.next",
            self.service,
            journal::call(self.journal, "discovery.watcher.next", about, live),
        )
        .await
    }

    async fn drop(&mut self, watcher: Resource<Watcher>) -> wasmtime::Result<()> {
        self.table
            .delete(watcher)
            .map_err(|error| HostFault::table("discovery.watcher.drop", error))?;
        // Saturating: a reused instance may drop a watch opened for an earlier request.
        let _ = self
            .open_watches
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        Ok(())
    }
}
