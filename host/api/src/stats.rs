//! `GET /v1/stats`: what the dashboard draws.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Per service request counts and latencies since the host started, and every
/// circuit breaker's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// By service.
    pub services: BTreeMap<String, RequestStats>,
    /// Every caller's breaker towards every target.
    pub breakers: Vec<Breaker>,
}

/// One service's requests since the host started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestStats {
    /// Requests answered.
    pub requests: u64,
    /// Of them, answered with a 5xx.
    pub failures: u64,
    /// Requests answered by each version (a canary's share).
    pub by_version: BTreeMap<String, u64>,
    /// Cumulative latency histogram: `[upper bound in seconds, requests at most that]`.
    pub buckets: Vec<(f64, u64)>,
    /// gRPC calls by status class: `ok`, `client_error` (the caller's mistake, such
    /// as `INVALID_ARGUMENT` or `NOT_FOUND`) and `server_error` (`INTERNAL`,
    /// `UNAVAILABLE`, `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `DATA_LOSS`).
    /// A call that failed with a status in its trailers was an HTTP 200, so these are
    /// not in `failures`.
    #[serde(default)]
    pub grpc: BTreeMap<String, u64>,
}

/// A circuit breaker: one calling service towards one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Breaker {
    /// The calling service.
    pub caller: String,
    /// The service it calls.
    pub target: String,
    /// Its state.
    pub state: BreakerState,
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// A few probes go through; the rest fail fast.
    HalfOpen,
    /// Calls fail fast.
    Open,
}
