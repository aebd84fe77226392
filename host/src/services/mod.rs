//! The services this host runs: the live table the gateway routes through, and the
//! operations that change it.
//!
//! - [`table`]: the live entries (stable version, canary, limiter).
//! - [`lifecycle`]: deploy, remove, restore, rollback, canary, scale.
//! - [`serving`]: admission, version choice, fault counting, in-process dispatch.
//! - [`limiter`]: per-service concurrency and queue (pure logic).
//! - [`state`]: what is persisted per service.

mod lifecycle;
pub mod limiter;
mod serving;
pub mod state;
mod table;

pub use lifecycle::DeployMode;
pub use table::{Canary, Deployment, FaultCounters, ServiceEntry, ServiceTable, Shared};

use std::sync::{Arc, Weak};
use std::time::Duration;
use thiserror::Error;

use crate::manifest::ManifestError;
use crate::platform::Platform;
use crate::runtime::{LoadError, Runtime};
use crate::storage::Storage;

/// Lease of a local service's registration; renewed by the host's heartbeat.
pub const LOCAL_LEASE: Duration = Duration::from_secs(15);

/// Host-wide defaults for what a manifest leaves unset.
#[derive(Debug, Clone)]
pub struct ServiceDefaults {
    /// Linear memory per instance, in MiB.
    pub memory_mb: u32,
    /// Ceiling a manifest may ask for, in MiB.
    pub max_memory_mb: u32,
    /// Deadline per request.
    pub timeout: Duration,
    /// Concurrency and queue per service.
    pub scale: limiter::Scale,
}

/// Why an operation on a service was refused.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The service name is not acceptable.
    #[error(
        "invalid service name `{0}`: use 1 to 63 lower-case letters, digits and `-`, \
         starting with a letter and not ending with `-`"
    )]
    InvalidName(String),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Another service already owns the route.
    #[error("route `{route}` is already used by service `{owner}`")]
    RouteConflict {
        /// The contested route.
        route: String,
        /// The service that has it.
        owner: String,
    },
    /// No such service.
    #[error("no service named `{0}`")]
    NotFound(String),
    /// The request does not fit the service's state; the text says why.
    #[error("{0}")]
    Conflict(String),
    /// A parameter is out of range; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The data directory could not be written.
    #[error("storage failure: {0:#}")]
    Storage(anyhow::Error),
}

/// Whether a deploy created a service or replaced a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployKind {
    /// The name was new.
    Created,
    /// A running version was replaced.
    Replaced,
    /// The new version runs as a canary beside the stable one.
    Canary,
}

/// Deploys, removes and restores services; owns the live table.
pub struct Services {
    runtime: Runtime,
    platform: Arc<Platform>,
    storage: Storage,
    table: ServiceTable,
    defaults: ServiceDefaults,
    /// Serialises changes so the table and the data directory never disagree.
    changes: tokio::sync::Mutex<()>,
    /// This object, for background work it starts (automatic canary rollback).
    me: Weak<Services>,
}

impl Services {
    /// An empty set of services backed by `storage`.
    pub fn new(
        runtime: Runtime,
        storage: Storage,
        defaults: ServiceDefaults,
        platform: Arc<Platform>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            runtime,
            platform,
            storage,
            table: ServiceTable::default(),
            defaults,
            changes: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }

    /// The live table (read by the gateway).
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Host defaults.
    pub fn defaults(&self) -> &ServiceDefaults {
        &self.defaults
    }

    /// Registry, caller and host identity.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }
}

/// Service names double as DNS labels (`http://<service>/`).
pub fn validate_name(name: &str) -> Result<(), ServiceError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(ServiceError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "hello", "order-service", "b2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "2b",
            "a_b",
            "a-",
            "a.b",
            &"x".repeat(64),
            "v1/x",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
