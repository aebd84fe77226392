//! The service manifest: what an operator says about a service at deploy time.
//!
//! ```toml
//! version = "1.2.0"          # shown by `shoal ls`; defaults to the digest prefix
//! route = "/api/hello"       # gateway path prefix; defaults to "/<name>"
//! grpc = ["helloworld.Greeter"]  # gRPC services it serves: the gateway sends it
//!                            #   `/helloworld.Greeter/<Method>` unchanged (no prefix
//!                            #   stripped), beside everything under `route`
//!
//! secrets = ["db-password"]  # operator-provided secrets it reads (shoal:platform/secrets)
//!
//! [config]                   # values the service reads through shoal:platform/config
//! greeting = "Hi"
//!
//! [limits]
//! memory_mb = 64             # linear memory per instance
//! timeout_ms = 30000         # wall-clock and CPU deadline per request
//! table_elements = 20000     # elements per table of one instance
//! instance_reuse = 1         # requests per instance (1: fresh instance per request;
//!                            #   WASIp3 components default to 128)
//! instance_concurrency = 16  # WASIp3 only: requests one instance serves at once
//! max_concurrency = 64       # requests running at once
//! queue = 256                # requests waiting; beyond that: 503 + Retry-After
//! store_mb = 64              # size quota of the service's own store
//!
//! [outbound]
//! allowed_hosts = ["api.example.com", "127.0.0.1:9000"]  # plain wasi:http beyond services
//!
//! [outbound.targets.inventory]   # caller policy towards one service
//! attempt_timeout_ms = 1000
//! deadline_ms = 3000
//! max_attempts = 3
//! load_balancing = "round-robin" # or "power-of-two-choices" (default)
//! breaker = { consecutive_failures = 5, cool_down_ms = 5000 }
//! idempotent = ["/inventory.Stock/Get"]  # paths safe to retry after a failure (any
//!                            #   method; a trailing `*` makes a prefix)
//!
//! [inbound]
//! allowed_callers = ["orders", "shop-*"]  # services that may call this one (default: any)
//! public = false                 # clients cannot reach it through the gateway (default true)
//! private_paths = ["/mode"]      # paths below its route only services reach
//!
//! [events]
//! publishes = ["order.created", "order.audit.*"]  # topics it may publish (`*`: a prefix)
//! subscribers = ["inventory", "shop-*"]  # services that may receive them (default: none)
//!
//! [[subscriptions]]              # events of a topic, POSTed to a route of the service
//! topic = "order.created"
//! route = "/events/order-created"
//! max_attempts = 5               # then the event becomes a dead letter
//! ```
//!
//! Unknown keys are errors, so a typo never silently does nothing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Longest accepted config value, in bytes.
const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
/// Secrets one service may name.
const MAX_SECRETS: usize = 64;
/// Longest accepted request deadline.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// A parsed and validated manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Version label of this deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Gateway path prefix that routes to this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Fully qualified gRPC services (`package.Service`) it serves: their paths
    /// reach it unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc: Vec<String>,
    /// Names of the operator's secrets the service reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Configuration values handed to the service.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Outbound calls: allowed external hosts and per-target caller policy.
    #[serde(default, skip_serializing_if = "Outbound::is_empty")]
    pub outbound: Outbound,
    /// Schedule of the service's own health check (when it exports one).
    #[serde(default)]
    pub health: HealthSchedule,
    /// Topics it publishes, and who may receive them.
    #[serde(default, skip_serializing_if = "Events::is_empty")]
    pub events: Events,
    /// Topics whose events the service receives, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
    /// Who may call it.
    #[serde(default, skip_serializing_if = "Inbound::is_open")]
    pub inbound: Inbound,
    /// How `shoal build` builds the service (the host ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// In a cluster: how many hosts run the service (default 1; one host ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// In a cluster: which hosts may run it.
    #[serde(default, skip_serializing_if = "Placement::is_any")]
    pub placement: Placement,
    /// Debugging aids: which requests are recorded.
    #[serde(default, skip_serializing_if = "DebugSection::is_default")]
    pub debug: DebugSection,
}

/// The `[debug]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugSection {
    /// Which requests are recorded: `"off"` (the default), `"failed"`, or a ratio
    /// of all requests in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordSetting>,
}

/// `record = "failed"` or `record = 0.1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordSetting {
    /// `off` or `failed`.
    Word(String),
    /// A sampling ratio.
    Ratio(f64),
}

impl DebugSection {
    fn is_default(&self) -> bool {
        self.record.is_none()
    }

    /// The recording mode it names.
    pub fn record_mode(&self) -> Result<crate::recording::Mode, String> {
        match &self.record {
            None => Ok(crate::recording::Mode::Off),
            Some(RecordSetting::Word(word)) if word != "off" && word != "failed" => Err(format!(
                "`{word}` is not a recording mode: `off`, `failed`, or a ratio in (0, 1]"
            )),
            Some(RecordSetting::Word(word)) => crate::recording::Mode::parse(word),
            Some(RecordSetting::Ratio(ratio)) => crate::recording::Mode::ratio(*ratio),
        }
    }
}

/// Most replicas of one service a cluster runs.
pub const MAX_REPLICAS: u32 = 64;

/// The `placement` table: the labels (`--labels` of `shoal serve`) a host must carry,
/// every one with the same value, to run the service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Required labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Placement {
    fn is_any(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The `[build]` section: the shell command `shoal build` runs in the service's
/// directory, and the component it leaves there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Run with `sh -c` in the service's directory.
    pub command: String,
    /// The component, relative to the service's directory.
    pub output: String,
}

/// The `[events]` section: what the service publishes and who may receive it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// Topics it may publish: exact topics, or a prefix followed by `*`. Declaring a
    /// topic claims it: no other service may declare it unless its deployer may
    /// change this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publishes: Vec<String>,
    /// Services (name patterns, `*` for any) that may subscribe to its topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<String>,
}

impl Events {
    fn is_empty(&self) -> bool {
        self.publishes.is_empty() && self.subscribers.is_empty()
    }

    /// The topic rules these declarations make.
    pub fn rules(&self) -> crate::events::topics::TopicRules {
        crate::events::topics::TopicRules::new(&self.publishes, &self.subscribers)
    }
}

/// Most topic patterns, and most subscriber patterns, one manifest may list.
const MAX_TOPIC_PATTERNS: usize = 64;

/// A subscription: events of `topic` are delivered as `POST` requests to `route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// The service's own path that receives the events (starts with `/`).
    pub route: String,
    /// Failed deliveries of one event before it becomes a dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_max_attempts() -> u32 {
    5
}

/// When and how strictly the host runs a service's exported health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSchedule {
    /// Time between checks.
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    /// Deadline of one check.
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Failed checks in a row before the service is marked not serving.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Good checks in a row before it serves again.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
}

impl Default for HealthSchedule {
    fn default() -> Self {
        Self {
            interval_ms: default_health_interval(),
            timeout_ms: default_health_timeout(),
            unhealthy_threshold: default_unhealthy(),
            healthy_threshold: default_healthy(),
        }
    }
}

fn default_health_interval() -> u64 {
    5_000
}
fn default_health_timeout() -> u64 {
    1_000
}
fn default_unhealthy() -> u32 {
    1
}
fn default_healthy() -> u32 {
    1
}

/// Inbound call settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Services (name patterns) that may call this one through the caller; unset:
    /// any. Requests from the gateway are not service calls and are not affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_callers: Option<Vec<String>>,
    /// Whether clients reach it through the gateway (default true). An internal
    /// service (`false`) is reached by other services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// Paths below its route that only other services reach (`"/charges"` covers
    /// `/charges` and everything below it); the gateway refuses them to clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_paths: Vec<String>,
}

impl Inbound {
    fn is_open(&self) -> bool {
        self.allowed_callers.is_none() && self.public.is_none() && self.private_paths.is_empty()
    }
}

/// Most caller patterns one manifest may list.
const MAX_ALLOWED_CALLERS: usize = 64;

/// Outbound call settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Hosts (`host` or `host:port`) a plain `wasi:http` request may reach directly.
    /// Services are always reachable as `http://<service>/`; everything else is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Caller policy per target service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, TargetPolicy>,
}

impl Outbound {
    fn is_empty(&self) -> bool {
        self.allowed_hosts.is_empty() && self.targets.is_empty()
    }
}

/// Caller policy towards one target; unset fields take the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetPolicy {
    /// Time one attempt may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_ms: Option<u64>,
    /// Time the whole call (all attempts) may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Attempts in total, including the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `power-of-two-choices` (default) or `round-robin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<crate::policy::balancer::Strategy>,
    /// Circuit breaker thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerPolicy>,
    /// Retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetPolicy>,
    /// Paths whose calls are safe to repeat whatever their method (a gRPC method,
    /// `/package.Service/Method`, or a prefix ending in `*`): they are retried after
    /// a server failure, not only when the target never took them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotent: Vec<String>,
}

impl TargetPolicy {
    /// Whether the manifest declares calls to `path` idempotent.
    pub fn declares_idempotent(&self, path: &str) -> bool {
        self.idempotent
            .iter()
            .any(|declared| match declared.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == declared,
            })
    }
}

/// Circuit breaker thresholds of a target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Failures in a row that open the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure ratio (0–1) over the window that opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// Calls the window must hold before the ratio counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// Sliding window length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Time open before probing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_down_ms: Option<u64>,
    /// Probes admitted while half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

/// Retry budget of a target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetPolicy {
    /// Retries as a fraction of calls over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries always allowed per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries: Option<u32>,
}

/// Per-instance resource limits; unset values take the host's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory per instance, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Deadline per request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Elements a table of one instance may hold (bounds indirect-call tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_elements: Option<u32>,
    /// Requests one instance may serve, one after another (default 1: a fresh
    /// instance per request). Faster, but requests share the instance's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    /// Requests one instance of a WASIp3 component serves at once (default 16; a
    /// WASIp2 instance serves one at a time). They share the instance's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_concurrency: Option<u32>,
    /// Requests that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Requests that may wait for a slot; beyond that the gateway answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Size quota of the service's store, in MiB (keys and values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_mb: Option<u32>,
}

/// Largest store quota a manifest may ask for, in MiB.
const MAX_STORE_MB: u32 = 64 * 1024;

/// The one table of defaults for what a manifest leaves unset, and the host's
/// ceilings. The `shoal serve` flags that change a default start from these values.
pub mod defaults {
    /// Linear memory per instance, in MiB (`--default-memory-mb`).
    pub const MEMORY_MB: u32 = 128;
    /// Largest linear memory a manifest may ask for, in MiB (`--max-memory-mb`).
    pub const MAX_MEMORY_MB: u32 = 1024;
    /// A request's time limit, in milliseconds (`--default-timeout-ms`).
    pub const TIMEOUT_MS: u64 = 30_000;
    /// Requests a service runs at once (`--default-max-concurrency`).
    pub const MAX_CONCURRENCY: u32 = 64;
    /// Requests that may wait for a slot (`--default-queue`).
    pub const QUEUE: u32 = 256;
    /// Elements per table of an instance: what the instance pool reserves for every
    /// table (`--max-table-elements`), so a manifest can only ask for less.
    pub const TABLE_ELEMENTS: u32 = 20_000;
    /// Size quota of a service's store, in MiB.
    pub const STORE_MB: u32 = 64;
    /// Requests one WASIp2 instance serves in its life (1: a fresh one per request).
    pub const INSTANCE_REUSE: u32 = 1;
    /// Requests one WASIp3 instance serves in its life.
    pub const INSTANCE_REUSE_WASIP3: u32 = 128;
    /// Requests one WASIp3 instance serves at once.
    pub const INSTANCE_CONCURRENCY: u32 = 16;
}

/// A manifest that cannot be accepted, naming the field and the reason.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Not valid TOML, or a field of the wrong type, or an unknown field.
    #[error("invalid manifest: {0}")]
    Syntax(String),
    /// A field with a value outside what it allows.
    #[error("invalid manifest: field `{field}`: {reason}")]
    Field {
        /// Dotted path of the field, e.g. `limits.memory_mb`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Manifest {
    /// Parse and validate manifest text. `max_memory_mb` is the host's ceiling.
    pub fn parse(text: &str, max_memory_mb: u32) -> Result<Self, ManifestError> {
        let manifest = Self::from_toml(text)?;
        manifest.validate(max_memory_mb)?;
        Ok(manifest)
    }

    /// Read a manifest's TOML without checking its values (a deploy checks them, in
    /// one place, with [`Manifest::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text)
            .map_err(|error| ManifestError::Syntax(error.to_string().trim().to_owned()))
    }

    /// Check every field's value.
    pub fn validate(&self, max_memory_mb: u32) -> Result<(), ManifestError> {
        self.debug
            .record_mode()
            .map_err(|reason| field("debug.record", &reason))?;
        if let Some(version) = &self.version {
            let valid_chars = version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
            if version.is_empty() || version.len() > 64 || !valid_chars {
                return Err(field(
                    "version",
                    "must be 1 to 64 characters of letters, digits, `.`, `-`, `_` or `+`",
                ));
            }
        }
        if let Some(route) = &self.route {
            validate_route(route).map_err(|reason| field("route", reason))?;
        }
        if self.grpc.len() > MAX_GRPC_SERVICES {
            return Err(field(
                "grpc",
                &format!("names at most {MAX_GRPC_SERVICES} gRPC services"),
            ));
        }
        for (index, name) in self.grpc.iter().enumerate() {
            validate_grpc_service(name)
                .map_err(|reason| field(&format!("grpc[{index}]"), reason))?;
            if self.grpc[..index].contains(name) {
                return Err(field(&format!("grpc[{index}]"), "is named twice"));
            }
        }
        if self
            .replicas
            .is_some_and(|replicas| !(1..=MAX_REPLICAS).contains(&replicas))
        {
            return Err(field(
                "replicas",
                &format!("must be between 1 and {MAX_REPLICAS}"),
            ));
        }
        for (key, value) in &self.placement.labels {
            crate::policy::placement::validate_label(key, value)
                .map_err(|reason| field("placement.labels", &reason))?;
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(field(
                "secrets",
                &format!("a service names at most {MAX_SECRETS} secrets"),
            ));
        }
        for name in &self.secrets {
            validate_secret_name(name).map_err(|reason| field("secrets", &reason))?;
        }
        for (key, value) in &self.config {
            if key.is_empty() || key.len() > 128 {
                return Err(field("config", "keys must be 1 to 128 characters"));
            }
            if value.len() > MAX_CONFIG_VALUE_BYTES {
                return Err(field(
                    &format!("config.{key}"),
                    "value is longer than 64 KiB",
                ));
            }
        }
        if let Some(memory_mb) = self.limits.memory_mb
            && (memory_mb == 0 || memory_mb > max_memory_mb)
        {
            return Err(field(
                "limits.memory_mb",
                &format!("must be between 1 and {max_memory_mb} (the host's --max-memory-mb)"),
            ));
        }
        if let Some(timeout_ms) = self.limits.timeout_ms
            && (timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS)
        {
            return Err(field(
                "limits.timeout_ms",
                &format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if self
            .limits
            .instance_reuse
            .is_some_and(|n| !(1..=1_000_000).contains(&n))
        {
            return Err(field(
                "limits.instance_reuse",
                "must be between 1 and 1000000",
            ));
        }
        if self
            .limits
            .instance_concurrency
            .is_some_and(|n| !(1..=1024).contains(&n))
        {
            return Err(field(
                "limits.instance_concurrency",
                "must be between 1 and 1024",
            ));
        }
        if self
            .limits
            .max_concurrency
            .is_some_and(|n| !(1..=100_000).contains(&n))
        {
            return Err(field(
                "limits.max_concurrency",
                "must be between 1 and 100000",
            ));
        }
        if self
            .limits
            .store_mb
            .is_some_and(|mb| mb == 0 || mb > MAX_STORE_MB)
        {
            return Err(field(
                "limits.store_mb",
                &format!("must be between 1 and {MAX_STORE_MB}"),
            ));
        }
        if self.events.publishes.len() > MAX_TOPIC_PATTERNS {
            return Err(field("events.publishes", "lists at most 64 topics"));
        }
        for (index, pattern) in self.events.publishes.iter().enumerate() {
            crate::events::topics::TopicPattern::parse(pattern)
                .map_err(|reason| field(&format!("events.publishes[{index}]"), &reason))?;
        }
        if self.events.subscribers.len() > MAX_TOPIC_PATTERNS {
            return Err(field(
                "events.subscribers",
                "lists at most 64 service patterns",
            ));
        }
        for (index, pattern) in self.events.subscribers.iter().enumerate() {
            crate::policy::glob::validate_pattern(pattern)
                .map_err(|reason| field(&format!("events.subscribers[{index}]"), &reason))?;
        }
        if self.subscriptions.len() > 64 {
            return Err(field("subscriptions", "at most 64"));
        }
        for (index, subscription) in self.subscriptions.iter().enumerate() {
            if let Err(error) = crate::events::validate_topic(&subscription.topic) {
                return Err(field(
                    &format!("subscriptions[{index}].topic"),
                    &error.to_string(),
                ));
            }
            if !subscription.route.starts_with('/')
                || subscription
                    .route
                    .parse::<http::uri::PathAndQuery>()
                    .is_err()
            {
                return Err(field(
                    &format!("subscriptions[{index}].route"),
                    "must be a path starting with `/`",
                ));
            }
            if !(1..=100).contains(&subscription.max_attempts) {
                return Err(field(
                    &format!("subscriptions[{index}].max_attempts"),
                    "must be between 1 and 100",
                ));
            }
        }
        if self.limits.queue.is_some_and(|n| n > 1_000_000) {
            return Err(field("limits.queue", "must be at most 1000000"));
        }
        let health = &self.health;
        if !(10..=3_600_000).contains(&health.interval_ms) {
            return Err(field(
                "health.interval_ms",
                "must be between 10 and 3600000",
            ));
        }
        if !(1..=60_000).contains(&health.timeout_ms) {
            return Err(field("health.timeout_ms", "must be between 1 and 60000"));
        }
        if health.unhealthy_threshold == 0 || health.healthy_threshold == 0 {
            return Err(field("health", "thresholds must be at least 1"));
        }
        if self.inbound.private_paths.len() > MAX_ALLOWED_CALLERS {
            return Err(field("inbound.private_paths", "lists at most 64 paths"));
        }
        for (index, path) in self.inbound.private_paths.iter().enumerate() {
            if !path.starts_with('/')
                || path.contains(['?', '#'])
                || path.parse::<http::uri::PathAndQuery>().is_err()
            {
                return Err(field(
                    &format!("inbound.private_paths[{index}]"),
                    "must be a path starting with `/`, without a query",
                ));
            }
        }
        if let Some(callers) = &self.inbound.allowed_callers {
            if callers.len() > MAX_ALLOWED_CALLERS {
                return Err(field(
                    "inbound.allowed_callers",
                    "lists at most 64 service patterns",
                ));
            }
            for (index, pattern) in callers.iter().enumerate() {
                crate::policy::glob::validate_pattern(pattern).map_err(|reason| {
                    field(&format!("inbound.allowed_callers[{index}]"), &reason)
                })?;
            }
        }
        self.validate_outbound()
    }

    fn validate_outbound(&self) -> Result<(), ManifestError> {
        for (index, host) in self.outbound.allowed_hosts.iter().enumerate() {
            let valid = host
                .parse::<http::uri::Authority>()
                .is_ok_and(|a| a.as_str() == host && !host.contains('@'));
            if !valid {
                return Err(field(
                    &format!("outbound.allowed_hosts[{index}]"),
                    "must be `host` or `host:port`",
                ));
            }
        }
        for (target, policy) in &self.outbound.targets {
            let at = |name: &str| format!("outbound.targets.{target}.{name}");
            let in_range =
                |value: Option<u64>, max: u64| value.is_none_or(|v| (1..=max).contains(&v));
            if !in_range(policy.attempt_timeout_ms, MAX_TIMEOUT_MS) {
                return Err(field(
                    &at("attempt_timeout_ms"),
                    &format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                ));
            }
            if !in_range(policy.deadline_ms, MAX_TIMEOUT_MS) {
                return Err(field(
                    &at("deadline_ms"),
                    &format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                ));
            }
            if policy.max_attempts.is_some_and(|n| !(1..=10).contains(&n)) {
                return Err(field(&at("max_attempts"), "must be between 1 and 10"));
            }
            if let Some(breaker) = &policy.breaker {
                if breaker.failure_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
                    return Err(field(&at("breaker.failure_rate"), "must be in (0, 1]"));
                }
                for (name, value) in [
                    ("breaker.consecutive_failures", breaker.consecutive_failures),
                    ("breaker.minimum_calls", breaker.minimum_calls),
                    ("breaker.half_open_probes", breaker.half_open_probes),
                ] {
                    if value.is_some_and(|v| !(1..=100_000).contains(&v)) {
                        return Err(field(&at(name), "must be between 1 and 100000"));
                    }
                }
                for (name, value) in [
                    ("breaker.window_ms", breaker.window_ms),
                    ("breaker.cool_down_ms", breaker.cool_down_ms),
                ] {
                    if !in_range(value, MAX_TIMEOUT_MS) {
                        return Err(field(
                            &at(name),
                            &format!("must be between 1 and {MAX_TIMEOUT_MS}"),
                        ));
                    }
                }
            }
            if let Some(budget) = &policy.retry_budget
                && budget.ratio.is_some_and(|r| !(0.0..=10.0).contains(&r))
            {
                return Err(field(&at("retry_budget.ratio"), "must be between 0 and 10"));
            }
        }
        Ok(())
    }
}

fn field(name: &str, reason: &str) -> ManifestError {
    ManifestError::Field {
        field: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Check that `name` is a secret name: 1 to 63 of `a-z`, `0-9` and `-`, starting
/// with a letter or digit (so it maps one-to-one onto `SHOAL_SECRET_<NAME>`).
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid secret name `{}`: use 1 to 63 lower-case letters, digits and `-`, \
             not starting with `-`",
            name.chars().take(64).collect::<String>()
        ))
    }
}

/// gRPC services one service may serve.
const MAX_GRPC_SERVICES: usize = 32;

/// A gRPC service is named `package.Service` (the package optional): identifiers
/// joined by dots, as in a `.proto` file.
fn validate_grpc_service(name: &str) -> Result<(), &'static str> {
    let identifier = |part: &str| {
        part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if name.is_empty() || name.len() > 200 || !name.split('.').all(identifier) {
        return Err(
            "must be a gRPC service name such as `helloworld.Greeter` (identifiers joined by `.`, at most 200 characters)",
        );
    }
    Ok(())
}

/// The gateway route of gRPC service `name`: `/name`, matched but never stripped.
pub fn grpc_route(name: &str) -> String {
    format!("/{name}")
}

/// A route is `/` or `/segment[/segment...]` of URL-safe characters.
fn validate_route(route: &str) -> Result<(), &'static str> {
    if route == "/" {
        return Ok(());
    }
    if !route.starts_with('/') || route.ends_with('/') || route.len() > 256 {
        return Err("must start with `/`, not end with `/`, and be at most 256 characters");
    }
    for segment in route[1..].split('/') {
        let safe = segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
        if segment.is_empty() || segment == "." || segment == ".." || !safe {
            return Err(
                "segments must be non-empty and use only letters, digits, `-`, `_`, `.`, `~`",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let manifest = Manifest::parse(
            "version = \"1.0.0\"\nroute = \"/api/hi\"\n[config]\ngreeting = \"Hi\"\n[limits]\nmemory_mb = 16\ntimeout_ms = 500\n",
            256,
        )
        .expect("valid manifest");
        assert_eq!(manifest.version.as_deref(), Some("1.0.0"));
        assert_eq!(manifest.route.as_deref(), Some("/api/hi"));
        assert_eq!(manifest.config["greeting"], "Hi");
        assert_eq!(manifest.limits.memory_mb, Some(16));
    }

    #[test]
    fn secrets_are_named_by_valid_names() {
        let manifest =
            Manifest::parse("secrets = [\"db-password\", \"api-key\"]", 256).expect("valid");
        assert_eq!(manifest.secrets, ["db-password", "api-key"]);
        for bad in ["Upper", "-lead", "", "a_b", "a.b"] {
            let text = format!("secrets = [\"{bad}\"]");
            let error = Manifest::parse(&text, 256).expect_err(bad);
            assert!(error.to_string().contains("secrets"), "{error}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"s{i}\"")).collect();
        let text = format!("secrets = [{}]", many.join(","));
        assert!(Manifest::parse(&text, 256).is_err());
    }

    #[test]
    fn empty_manifest_is_valid() {
        assert_eq!(
            Manifest::parse("", 256).expect("empty"),
            Manifest::default()
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let error = Manifest::parse("verison = \"1\"", 256).expect_err("typo");
        assert!(error.to_string().contains("verison"), "{error}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let error = Manifest::parse("[limits]\nmemory_mb = \"lots\"", 256).expect_err("type");
        assert!(error.to_string().contains("memory_mb"), "{error}");
    }

    #[test]
    fn limits_are_bounded() {
        let error = Manifest::parse("[limits]\nmemory_mb = 100000", 256).expect_err("too big");
        assert!(error.to_string().contains("limits.memory_mb"), "{error}");
        let error = Manifest::parse("[limits]\ntimeout_ms = 0", 256).expect_err("zero");
        assert!(error.to_string().contains("limits.timeout_ms"), "{error}");
    }

    #[test]
    fn grpc_service_names_are_checked() {
        for good in ["helloworld.Greeter", "Greeter", "a.b_c.D9", "_x.Y"] {
            assert!(validate_grpc_service(good).is_ok(), "{good}");
        }
        for bad in ["", "hello/world", ".Greeter", "a..b", "9a.B", "a.B.", "a b"] {
            assert!(validate_grpc_service(bad).is_err(), "{bad}");
        }
        let twice = Manifest {
            grpc: vec!["a.B".into(), "a.B".into()],
            ..Manifest::default()
        };
        let error = twice.validate(256).expect_err("named twice");
        assert!(error.to_string().contains("grpc[1]"), "{error}");
    }

    #[test]
    fn routes_are_checked() {
        for good in ["/", "/a", "/api/v1.2/x_y"] {
            assert!(validate_route(good).is_ok(), "{good}");
        }
        for bad in ["", "a", "/a/", "//", "/a/../b", "/a b", "/ä"] {
            assert!(validate_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outbound_policy_parses_and_is_checked() {
        let manifest = Manifest::parse(
            "[outbound]\nallowed_hosts = [\"api.example.com\", \"127.0.0.1:9000\"]\n\
             [outbound.targets.b]\nattempt_timeout_ms = 100\nmax_attempts = 2\n\
             load_balancing = \"round-robin\"\nbreaker = { consecutive_failures = 2, cool_down_ms = 300 }\n",
            256,
        )
        .expect("valid");
        let b = &manifest.outbound.targets["b"];
        assert_eq!(b.max_attempts, Some(2));
        assert_eq!(
            b.load_balancing,
            Some(crate::policy::balancer::Strategy::RoundRobin)
        );
        for (text, needle) in [
            (
                "[outbound]\nallowed_hosts = [\"http://x\"]",
                "outbound.allowed_hosts[0]",
            ),
            (
                "[outbound.targets.b]\nmax_attempts = 0",
                "outbound.targets.b.max_attempts",
            ),
            (
                "[outbound.targets.b]\nattempt_timeout_ms = 0",
                "attempt_timeout_ms",
            ),
            (
                "[outbound.targets.b]\nbreaker = { failure_rate = 2.0 }",
                "breaker.failure_rate",
            ),
            (
                "[outbound.targets.b]\nload_balancing = \"random\"",
                "load_balancing",
            ),
            ("[outbound.targets.b]\nretries = 3", "retries"),
        ] {
            let error = Manifest::parse(text, 256).expect_err(text).to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn version_is_checked() {
        assert!(Manifest::parse("version = \"\"", 256).is_err());
        assert!(Manifest::parse("version = \"1 0\"", 256).is_err());
        assert!(Manifest::parse("version = \"1.0.0-rc.1+b7\"", 256).is_ok());
    }

    /// Property tests: whatever the text, parsing answers a manifest or an error,
    /// never a panic; a manifest it accepts survives a round trip unchanged.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A TOML value of the kinds manifests use, including the extremes.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                (0u64..100_000).prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                any::<bool>().prop_map(|b| b.to_string()),
                "[ -~]{0,40}".prop_map(|s| format!("{s:?}")),
                prop::collection::vec("[a-z*?/.-]{0,12}", 0..4)
                    .prop_map(|items| format!("{items:?}")),
                Just("{ consecutive_failures = 0 }".to_owned()),
            ]
        }

        /// A manifest-shaped document: known sections and keys, random values.
        fn document() -> impl Strategy<Value = String> {
            let keys = prop::sample::select(vec![
                "version",
                "route",
                "limits.memory_mb",
                "limits.timeout_ms",
                "limits.max_concurrency",
                "limits.queue",
                "limits.store_mb",
                "limits.instance_reuse",
                "limits.instance_concurrency",
                "limits.table_elements",
                "config.greeting",
                "outbound.allowed_hosts",
                "outbound.targets.inventory.max_attempts",
                "outbound.targets.inventory.deadline_ms",
                "outbound.targets.inventory.breaker",
                "inbound.allowed_callers",
                "health.interval_ms",
                "health.timeout_ms",
                "unknown_key",
            ]);
            prop::collection::vec((keys, value()), 0..8).prop_map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(key, value)| format!("{key} = {value}\n"))
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
                let _ = Manifest::parse(&text, 128);
            }

            #[test]
            fn accepted_manifests_round_trip(text in document()) {
                if let Ok(manifest) = Manifest::parse(&text, 128) {
                    let again = toml::to_string(&manifest).expect("serializes");
                    let reparsed = Manifest::parse(&again, 128).expect("still valid");
                    prop_assert_eq!(reparsed, manifest);
                }
            }
        }
    }
}
