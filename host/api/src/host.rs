//! `/v1/host`: which host answers, and what it runs on.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer of `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// The host's id (persisted in its data directory).
    pub host_id: String,
    /// The `shoal` version it runs.
    pub version: String,
    /// Where services' stores live: `sqlite` (the embedded default, files in the data
    /// directory) or `postgresql`.
    pub store: String,
    /// Where the event bus keeps deliveries: `sqlite` (the embedded default).
    pub bus: String,
    /// Linear memory all instances together may hold, in bytes.
    pub memory_budget_bytes: u64,
}
