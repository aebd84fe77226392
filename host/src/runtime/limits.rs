//! What bounds instances: each instance's own memory and table limits, and one
//! host-wide budget of linear memory that no sum of live instances can pass.
//!
//! Without the budget, many concurrent requests to services that each stay within
//! their own limit could still take the whole machine's memory. With it, a growth
//! past the budget fails that one instance with a typed error (a named 5xx), never
//! the host.

use std::sync::Arc;
use thiserror::Error;
use wasmtime::ResourceLimiter;

pub use crate::policy::budget::MemoryBudget;

/// A service's instance tried to grow its memory past its own limit.
#[derive(Debug, Error)]
#[error("memory growth to {desired} bytes exceeds the instance limit of {limit} bytes")]
pub struct InstanceMemoryExceeded {
    /// The instance's limit.
    pub limit: usize,
    /// What it asked for.
    pub desired: usize,
}

/// An instance's growth did not fit the host-wide memory budget.
#[derive(Debug, Error)]
#[error("the host's memory budget of {limit} bytes is exhausted")]
pub struct HostMemoryExhausted {
    /// The host's budget.
    pub limit: usize,
}

/// A service's instance tried to grow a table past its limit.
#[derive(Debug, Error)]
#[error("table growth to {desired} elements exceeds the instance limit of {limit}")]
pub struct InstanceTableExceeded {
    /// The instance's limit.
    pub limit: usize,
    /// What it asked for.
    pub desired: usize,
}

/// The per-store limiter: an instance's own caps plus its share of the host budget,
/// given back when the store is dropped.
pub struct GuestLimiter {
    memory_max: usize,
    table_max: usize,
    budget: Arc<MemoryBudget>,
    /// Bytes this store holds of the budget.
    reserved: usize,
    /// The most it has held.
    peak: usize,
}

impl GuestLimiter {
    /// A limiter for one store.
    pub fn new(memory_max: usize, table_max: usize, budget: Arc<MemoryBudget>) -> Self {
        Self {
            memory_max,
            table_max,
            budget,
            reserved: 0,
            peak: 0,
        }
    }

    /// The most linear memory this store has held, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_max {
            return Err(InstanceMemoryExceeded {
                limit: self.memory_max,
                desired,
            }
            .into());
        }
        let delta = desired.saturating_sub(current);
        if !self.budget.try_reserve(delta) {
            return Err(HostMemoryExhausted {
                limit: self.budget.limit(),
            }
            .into());
        }
        self.reserved += delta;
        self.peak = self.peak.max(self.reserved);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Wasmtime may report a failure without asking first, so which reservation
        // it concerns is unknown: keep them all. The error traps the guest, and its
        // store (with this limiter) is dropped, which gives everything back.
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_max {
            return Err(InstanceTableExceeded {
                limit: self.table_max,
                desired,
            }
            .into());
        }
        Ok(true)
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

/// The machine's memory, from `/proc/meminfo` (Linux); `None` elsewhere.
pub fn machine_memory_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn growth_is_bounded_per_instance_and_host_wide_and_given_back() {
        let budget = MemoryBudget::new(10 * MIB);
        let mut a = GuestLimiter::new(8 * MIB, 100, budget.clone());
        let mut b = GuestLimiter::new(8 * MIB, 100, budget.clone());
        assert!(a.memory_growing(0, 6 * MIB, None).expect("fits"));
        assert_eq!(a.peak(), 6 * MIB);
        let error = a
            .memory_growing(6 * MIB, 9 * MIB, None)
            .expect_err("instance limit");
        assert!(error.downcast_ref::<InstanceMemoryExceeded>().is_some());
        let error = b.memory_growing(0, 5 * MIB, None).expect_err("host budget");
        assert!(error.downcast_ref::<HostMemoryExhausted>().is_some());
        assert_eq!(budget.used(), 6 * MIB, "a refused growth takes nothing");
        drop(a);
        assert_eq!(budget.used(), 0, "a dropped store gives its memory back");
        assert!(b.memory_growing(0, 5 * MIB, None).expect("fits now"));
        assert!(
            b.memory_grow_failed(wasmtime::Error::msg("mmap failed"))
                .is_err(),
            "a failed growth traps"
        );
        assert!(b.table_growing(0, 101, None).is_err());
        drop(b);
        assert_eq!(budget.used(), 0, "the trapped store gives everything back");
    }
}
