//! Shoal: a WebAssembly host for microservices.
//!
//! The binary (`shoal`) is a thin edge over these modules:
//!
//! - [`protocol`]: the HTTP vocabulary every layer shares; [`deadline`]: the one type
//!   for a request's time budget.
//! - [`runtime`]: the wasmtime engine, compile cache and per-request instantiation.
//! - [`capabilities`]: host implementations of the `shoal:platform` WIT interfaces.
//! - [`policy`]: load balancing, circuit breaking and retries as pure code.
//! - [`registry`]: service registry backends, external services, health checks.
//! - [`caller`]: the resilient outbound caller (and plain `wasi:http` outbound).
//! - [`platform`]: the registry and caller, bundled for capabilities.
//! - [`services`]: the live service table and deploy / remove / restore.
//! - [`listener`]: accepting connections with caps and timeouts (both listeners);
//!   [`gateway`]: inbound HTTP routing; [`admin`]: the admin API.
//! - [`storage`]: durable state in the data directory; [`manifest`]: deploy manifests.
//! - [`store`]: each service's own key-value store (embedded SQLite backend).
//! - [`events`]: the event bus (embedded SQLite queue of deliveries).
//! - [`access`]: scoped admin tokens and the audit log; [`secrets`]: the operator's
//!   secrets for services, sealed at rest and masked in everything the host writes.
//! - [`telemetry`]: Prometheus metrics and OpenTelemetry traces.
//! - [`server`]: `shoal serve` wiring; [`cli`]: the command line.

pub mod access;
pub mod admin;
#[allow(missing_docs)]
pub mod bindings;
pub mod caller;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod events;
pub mod gateway;
pub mod listener;
pub mod manifest;
pub mod platform;
pub mod policy;
pub mod protocol;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod services;
pub mod serving_threads;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod tls;
