//! `/v1/cluster`: the hosts of a cluster and what each runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Answer of `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// The host that answers.
    pub host: String,
    /// The elected leader (which places replicas), when one is known.
    pub leader: Option<String>,
    /// Every host that ever joined, by id.
    pub hosts: Vec<Host>,
}

/// A host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    /// Its id.
    pub id: String,
    /// Its gateway, as the other hosts reach it.
    pub address: String,
    /// Its admin API.
    pub admin_address: String,
    /// `up`, `draining` or `down` (its lease expired).
    pub state: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Memory it may promise to services, MiB.
    pub memory_budget_mb: u64,
    /// Memory promised to the replicas placed on it, MiB.
    pub memory_used_mb: u64,
    /// What is left, MiB.
    pub memory_free_mb: u64,
    /// Services placed on it.
    pub services: Vec<String>,
}
