//! Opt-in instance reuse: one instance serves up to N requests, one after another.
//!
//! A fresh instance per request is the default and the safest: nothing a request
//! leaves in memory survives it. Reuse (manifest `limits.instance_reuse = N`) trades
//! that for throughput: instantiation happens once per N requests, and whatever a
//! request leaves in linear memory (globals, caches, leaks) is visible to the next
//! requests served by the same instance. An instance that traps or overruns its
//! deadline is never reused.

use parking_lot::Mutex;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::GuestState;
use crate::serving_threads::LaneStacks;

/// An instance kept between requests.
pub struct Reusable {
    /// Its store (limits and WASI state persist).
    pub store: Store<GuestState>,
    /// Its `wasi:http/proxy` exports.
    pub proxy: Proxy,
    /// Requests it has served.
    pub uses: u32,
}

/// Idle instances of one deployment, kept per serving thread (see
/// [`LaneStacks`]): a request takes an instance last used on its own thread.
pub struct InstancePool {
    idle: LaneStacks<Reusable>,
    max_uses: u32,
}

impl InstancePool {
    /// A pool whose instances serve at most `max_uses` requests each, keeping at most
    /// `max_idle` idle per serving thread (each holds an instance slot of the
    /// allocator).
    pub fn new(max_uses: u32, max_idle: usize) -> Self {
        Self {
            idle: LaneStacks::new(max_idle),
            max_uses,
        }
    }

    /// An idle instance of the calling thread's lane, if any (most recently used
    /// first: its memory is warm).
    pub fn take(&self) -> Option<Reusable> {
        self.idle.pop()
    }

    /// Return an instance after a request that completed cleanly.
    pub fn put(&self, mut instance: Reusable) {
        instance.uses += 1;
        if instance.uses >= self.max_uses {
            return;
        }
        // A full lane drops it.
        let _ = self.idle.push(instance);
    }

    /// Drop every idle instance (the deployment is retired, or the host needs the
    /// instance slots). Returns how many were dropped.
    pub fn clear(&self) -> usize {
        self.idle.clear()
    }

    /// Idle instances right now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// Every deployment's pool of idle instances, so the host can take their allocator
/// slots back when new instances find none free: idle instances never starve
/// requests of other services.
#[derive(Default)]
pub struct IdlePools {
    pools: Mutex<Vec<std::sync::Weak<InstancePool>>>,
}

impl std::fmt::Debug for IdlePools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePools")
            .field("pools", &self.pools.lock().len())
            .finish()
    }
}

impl IdlePools {
    /// Track `pool` (forgotten once it is dropped).
    pub fn register(&self, pool: &std::sync::Arc<InstancePool>) {
        let mut pools = self.pools.lock();
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(std::sync::Arc::downgrade(pool));
    }

    /// Drop every idle instance of every deployment; returns how many.
    pub fn evict_all(&self) -> usize {
        let pools: Vec<_> = self
            .pools
            .lock()
            .iter()
            .filter_map(|p| p.upgrade())
            .collect();
        pools.iter().map(|pool| pool.clear()).sum()
    }
}
