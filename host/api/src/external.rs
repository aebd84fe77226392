//! `/v1/external` (HTTP services an operator registers) and `/v1/discovery`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An external service: its endpoints and how they are checked. The body of
/// `PUT /v1/external/{name}`, and what is shown of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// Replicas, each `host:port`.
    pub endpoints: Vec<String>,
    /// An active health check; without one every endpoint counts as serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// The version label discovery shows (default `external`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// How an external service's endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The path probed (default `/health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between probes of one endpoint, ms (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Time a probe may take, ms (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Failed probes in a row before an endpoint stops serving (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Good probes in a row before it serves again (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

/// One external service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct External {
    /// Its name, as services call it.
    pub name: String,
    /// Its endpoints and health check.
    pub spec: ExternalSpec,
}

/// Answer of `GET /v1/external`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExternalList {
    /// Every external service.
    pub external: Vec<External>,
}

/// Answer of `GET /v1/discovery/{name}`: every registered instance of a service,
/// whatever its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Discovery {
    /// The service.
    pub service: String,
    /// Its instances.
    pub instances: Vec<Instance>,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Its id, stable for the life of the registration.
    pub id: String,
    /// The service it belongs to.
    pub service: String,
    /// Where it is reached.
    pub endpoint: Endpoint,
    /// The version it runs.
    pub version: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Its last known health.
    pub health: Health,
}

/// Where an instance is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "authority")]
pub enum Endpoint {
    /// On this host, called in process.
    Local,
    /// A plain HTTP endpoint, `host:port`.
    Http(String),
    /// Another host of the cluster, reached through its gateway (`host:port`).
    Peer(String),
}

/// An instance's health, as load balancing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Takes traffic.
    Serving,
    /// Takes traffic only when no instance is serving.
    Degraded,
    /// Takes no traffic.
    NotServing,
}
