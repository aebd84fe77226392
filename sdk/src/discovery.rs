//! Find the instances of a service, once or as a live watch.

use crate::bindings::shoal::platform::discovery as wit;

pub use crate::bindings::shoal::platform::registry::Health;
pub use wit::{DiscoveryError, Instance};

/// The instances of `service` that take traffic now.
pub fn discover(service: &str) -> Result<Vec<Instance>, DiscoveryError> {
    wit::discover(service)
}

/// A live view of a service's instances.
pub struct Watcher(wit::Watcher);

/// Watch `service`: [`Watcher::next`] yields the instances whenever they change.
pub fn watch(service: &str) -> Result<Watcher, DiscoveryError> {
    wit::watch(service).map(Watcher)
}

impl Watcher {
    /// The current instances if they changed since the last call (the first call
    /// always returns them).
    pub fn next(&self) -> Option<Vec<Instance>> {
        self.0.next()
    }

    /// Block until the instances change, or `timeout_ms` passes; then return the
    /// current set if it changed.
    pub fn wait(&self, timeout_ms: u64) -> Option<Vec<Instance>> {
        use crate::bindings::wasi::clocks::monotonic_clock;
        use crate::bindings::wasi::io::poll;
        let changed = self.0.subscribe();
        let timer = monotonic_clock::subscribe_duration(timeout_ms.saturating_mul(1_000_000));
        poll::poll(&[&changed, &timer]);
        self.next()
    }

    /// A pollable that is ready when the instances changed, to combine with others
    /// in `wasi:io/poll`.
    pub fn subscribe(&self) -> crate::bindings::wasi::io::poll::Pollable {
        self.0.subscribe()
    }
}
