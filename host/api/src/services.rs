//! `/v1/services`: deployed services, their versions, limits, load and faults, and the
//! requests that change them (scale, rollback, canary).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Every service of a host: `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    /// By name.
    pub services: Vec<Service>,
}

/// A service: running, or persisted but failed to restore (it keeps its history and
/// can be redeployed, rolled back or removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Service {
    /// Serving requests.
    Running(Box<RunningService>),
    /// Not serving: it could not be restored.
    Failed(FailedService),
    /// In a cluster: it runs on other hosts, not on the one that answers.
    Elsewhere(ElsewhereService),
}

impl Service {
    /// The service name.
    pub fn name(&self) -> &str {
        match self {
            Service::Running(service) => &service.name,
            Service::Failed(service) => &service.name,
            Service::Elsewhere(service) => &service.name,
        }
    }

    /// The running service, if it runs.
    pub fn running(&self) -> Option<&RunningService> {
        match self {
            Service::Running(service) => Some(service),
            Service::Failed(_) | Service::Elsewhere(_) => None,
        }
    }
}

/// A running service: its stable version, canary, limits, load and what it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunningService {
    /// The service name.
    pub name: String,
    /// The stable version's label.
    pub version: String,
    /// SHA-256 of the stable version's component.
    pub digest: String,
    /// When the stable version was deployed (RFC 3339).
    pub deployed_at: String,
    /// The gateway route prefix.
    pub route: String,
    /// Which compiler's code new requests run.
    pub code: CodeTier,
    /// Which WASI its HTTP handler is: `p2` (an instance serves one request at a
    /// time) or `p3` (an instance serves several at once).
    pub wasi: String,
    /// What bounds it.
    pub limits: Limits,
    /// Requests running and waiting now.
    pub load: Load,
    /// Requests served since the host started (any outcome).
    pub requests: u64,
    /// Failed requests by kind (`trap`, `timeout`, `overload`, ...).
    pub faults: BTreeMap<String, u64>,
    /// What it has used of the host.
    pub usage: Usage,
    /// Keys of its manifest's `[config]`.
    pub config_keys: Vec<String>,
    /// Bytes of keys and values in its store, when it could be read.
    pub store_bytes: Option<u64>,
    /// A version taking a share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Earlier versions, newest first (for rollback).
    pub history: Vec<Version>,
    /// Whether each secret its manifest names can be read now (never the value); only
    /// in the answer about one service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<BTreeMap<String, SecretStatus>>,
    /// In a cluster: how many hosts should run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// In a cluster: the hosts placed to run it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<Placement>,
    /// In a cluster: why fewer hosts run it than it asks for, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<String>,
    /// In a cluster: the revision of its desired state. A deploy with `If-Match:
    /// <revision>` is refused with 409 if the service changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// A service of the cluster that runs on other hosts than the one that answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ElsewhereService {
    /// The service name.
    pub name: String,
    /// The stable version's label.
    pub version: String,
    /// SHA-256 of the stable version's component.
    pub digest: String,
    /// When the stable version was deployed (RFC 3339).
    pub deployed_at: String,
    /// The gateway route prefix (every host's gateway serves it).
    pub route: String,
    /// A version taking a share of the traffic: its label and weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Version>,
    /// The canary's share, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<u8>,
    /// Earlier versions, newest first.
    pub history: Vec<Version>,
    /// How many hosts should run it.
    pub replicas: u32,
    /// The hosts placed to run it.
    pub placements: Vec<Placement>,
    /// Why fewer hosts run it than it asks for, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<String>,
    /// The revision of its desired state (for `If-Match`).
    pub revision: i64,
}

/// A host placed to run a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Placement {
    /// The host's id.
    pub host: String,
    /// Its gateway.
    pub address: String,
    /// `up`, `draining` or `down`.
    pub state: String,
}

/// A persisted service that could not be restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FailedService {
    /// The service name.
    pub name: String,
    /// The version it would run.
    pub version: String,
    /// SHA-256 of that version's component.
    pub digest: String,
    /// When that version was deployed (RFC 3339).
    pub deployed_at: String,
    /// Its gateway route prefix.
    pub route: String,
    /// Why it is not running.
    pub reason: String,
    /// Earlier versions, newest first.
    pub history: Vec<Version>,
}

/// Which compiler produced the code a version runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CodeTier {
    /// The baseline compiler's: ready at once, slower; replaced when the optimised
    /// code is ready.
    Baseline,
    /// The optimising compiler's.
    Optimized,
}

/// What bounds a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Linear memory per instance, in MiB.
    pub memory_mb: u64,
    /// What the service can hold at most: memory per instance × concurrency, in MiB.
    pub memory_budget_mb: u64,
    /// A request's time limit, in milliseconds.
    pub timeout_ms: u64,
    /// Requests running at once.
    pub max_concurrency: u32,
    /// Requests that may wait for a slot.
    pub queue: u32,
    /// Whether the operator set the concurrency (`shoal scale`), overriding the
    /// manifests.
    pub scaled_by_operator: bool,
}

/// Requests running and waiting now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Load {
    /// Requests running.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
}

/// What a service has used of the host since it was deployed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// CPU time spent in its guest code, in seconds.
    pub cpu_seconds: f64,
    /// Instances created.
    pub instances_created: u64,
    /// The largest linear memory any of its instances reached, in bytes.
    pub memory_peak_bytes: u64,
}

/// A canary: a version taking a share of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Canary {
    /// Its version label.
    pub version: String,
    /// SHA-256 of its component.
    pub digest: String,
    /// Which compiler's code it runs.
    pub code: CodeTier,
    /// Percentage of requests it takes (0 to 100).
    pub weight: u8,
    /// When it is rolled back by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
}

/// Roll a canary back when its failure (5xx) ratio over a window exceeds a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoRollback {
    /// Failure ratio (0 to 1) that triggers the rollback.
    pub max_error_rate: f64,
    /// The window, in milliseconds.
    pub window_ms: u64,
    /// Canary requests in the window before the ratio counts.
    pub min_requests: u32,
}

/// An earlier version of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Version {
    /// Its label.
    pub version: String,
    /// SHA-256 of its component.
    pub digest: String,
    /// When it was deployed (RFC 3339).
    pub deployed_at: String,
}

/// Whether a secret a service names can be read by it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SecretStatus {
    /// It can read it.
    Available,
    /// No such secret is set.
    Missing,
    /// It is set but not granted to this service.
    Denied,
    /// The service's manifest does not name it.
    NotDeclared,
}

/// Query of `PUT /v1/services/{name}`: deploy as a canary beside the running version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeployQuery {
    /// Percentage of traffic for the new version (0 to 100); absent: it replaces the
    /// running version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u8>,
    /// Roll the canary back by itself when its 5xx ratio exceeds this (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The window of that ratio, in milliseconds (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Canary requests needed in the window before the ratio counts (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
}

/// Body of `PUT /v1/services/{name}/scale`: change the concurrency live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Requests running at once on each host (1 to 100000); absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// In a cluster: how many hosts run it (1 to 64); absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Requests that may wait (at most 1000000); absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
}

/// Body of `POST /v1/services/{name}/rollback` (optional): the version to go back
/// to; absent, the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Body of `PUT /v1/services/{name}/canary`: the canary's new share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryWeightRequest {
    /// Percentage of requests (0 to 100).
    pub weight: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_carries_its_state_as_a_field() {
        let failed = Service::Failed(FailedService {
            name: "orders".into(),
            version: "1".into(),
            digest: "d".into(),
            deployed_at: "t".into(),
            route: "/orders".into(),
            reason: "cannot restore".into(),
            history: Vec::new(),
        });
        let json = serde_json::to_value(&failed).expect("serialises");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["name"], "orders");
        let back: Service = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, failed);
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(serde_json::from_str::<ScaleRequest>(r#"{"max": 3}"#).is_err());
        assert!(serde_json::from_str::<RollbackRequest>(r#"{"versoin": "1"}"#).is_err());
        let scale: ScaleRequest =
            serde_json::from_str(r#"{"max_concurrency": 3}"#).expect("parses");
        assert_eq!(scale.queue, None);
    }
}
