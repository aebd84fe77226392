//! `shoal:platform/discovery`: instances of a service, once or as a live watch.

use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::bindings::discovery::{DiscoveryError, Host, HostWatcher, Instance};
use crate::bindings::registry::Health;
use crate::registry::{self, InstanceWatch};
use crate::runtime::GuestState;
use crate::services::validate_name;

/// A guest's live view of one service's instances.
pub struct Watcher {
    receiver: InstanceWatch,
    /// Changed since the guest last read (the first read always returns the set).
    pending: bool,
    /// The registry dropped the watch; nothing will change any more.
    closed: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Watcher {
    async fn ready(&mut self) {
        if self.pending || self.closed {
            return;
        }
        match self.receiver.changed().await {
            Ok(()) => self.pending = true,
            Err(_) => self.closed = true,
        }
    }
}

fn to_wit(instance: &registry::Instance) -> Instance {
    Instance {
        id: instance.id.clone(),
        address: instance.endpoint.to_string(),
        version: instance.version.clone(),
        tags: instance.tags.clone(),
        health: match instance.health {
            registry::Health::Serving => Health::Serving,
            registry::Health::Degraded => Health::Degraded,
            registry::Health::NotServing => Health::NotServing,
        },
    }
}

fn check_name(service: &str) -> Result<(), DiscoveryError> {
    validate_name(service).map_err(|error| DiscoveryError::InvalidName(error.to_string()))
}

impl Host for GuestState {
    async fn discover(&mut self, service: String) -> Result<Vec<Instance>, DiscoveryError> {
        check_name(&service)?;
        let instances = self
            .platform
            .registry
            .instances(&service)
            .await
            .map_err(|error| DiscoveryError::BackendUnavailable(error.to_string()))?;
        Ok(registry::routable(&instances).iter().map(to_wit).collect())
    }

    async fn watch(&mut self, service: String) -> Result<Resource<Watcher>, DiscoveryError> {
        check_name(&service)?;
        let receiver = self
            .platform
            .registry
            .watch(&service)
            .await
            .map_err(|error| DiscoveryError::BackendUnavailable(error.to_string()))?;
        self.table
            .push(Watcher {
                receiver,
                pending: true,
                closed: false,
            })
            .map_err(|error| DiscoveryError::BackendUnavailable(error.to_string()))
    }
}

impl HostWatcher for GuestState {
    async fn subscribe(
        &mut self,
        watcher: Resource<Watcher>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(&mut self.table, watcher)
    }

    async fn next(&mut self, watcher: Resource<Watcher>) -> Option<Vec<Instance>> {
        let watcher = self.table.get_mut(&watcher).ok()?;
        if !watcher.pending && !watcher.receiver.has_changed().unwrap_or(false) {
            return None;
        }
        watcher.pending = false;
        let current = watcher.receiver.borrow_and_update().clone();
        Some(current.iter().map(to_wit).collect())
    }

    async fn drop(&mut self, watcher: Resource<Watcher>) -> wasmtime::Result<()> {
        self.table.delete(watcher)?;
        Ok(())
    }
}
