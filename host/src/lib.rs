//! Shoal: a WebAssembly host for microservices.
//!
//! The binary (`shoal`) is a thin edge over these modules, from the leaves up:
//!
//! - [`protocol`]: the HTTP vocabulary every layer shares (the request id among it);
//!   [`deadline`]: the one type for a request's time budget; [`grpc`]: gRPC's status
//!   codes, timeouts and host answers.
//! - [`manifest`]: deploy manifests and the one table of their defaults;
//!   [`data_dir`]: durable state in the data directory.
//! - [`policy`]: load balancing, circuit breaking, retries, rates as pure code;
//!   [`trust`]: the certificate authorities Shoal trusts as a TLS client.
//! - [`registry`]: service registry backends, external services, health checks.
//! - [`store`]: each service's own key-value store (embedded SQLite, PostgreSQL).
//! - [`events`]: the event bus (embedded SQLite queue of deliveries, NATS JetStream).
//! - [`access`]: scoped admin tokens and the audit log; [`secrets`]: the operator's
//!   secrets for services, sealed at rest and masked in everything the host writes.
//! - [`telemetry`]: Prometheus metrics, OpenTelemetry traces, guests' log lines.
//! - [`caller`]: the resilient outbound caller (and plain `wasi:http` outbound).
//! - [`platform`]: the host-wide plumbing every guest request reaches (registry,
//!   caller, telemetry, stores, bus, secrets), and its builder.
//! - [`capabilities`]: host implementations of the `shoal:platform` WIT interfaces.
//! - [`runtime`]: the wasmtime engines, compile cache, and the executors that run a
//!   deployment's requests (WASIp2 one at a time, fresh or reused; WASIp3 several at
//!   once).
//! - [`services`]: the live service table, deployment settings, the one change path
//!   (deploy, canary, rollback, scale, remove, restore), serving and deliveries.
//! - [`cluster`]: many hosts as one on etcd: membership, desired state, the elected
//!   placer, each host's reconcile loop, requests between hosts.
//! - [`listener`]: accepting connections with caps and timeouts (both listeners),
//!   [`tls`] certificates for them, [`serving_threads`] the gateway's event loops;
//!   [`gateway`]: inbound HTTP routing; [`admin`]: the admin API.
//! - [`config`]: the `shoal serve` flags, each part's own; [`server`]: `shoal serve`
//!   wiring; [`cli`]: the command line.

pub mod access;
pub mod admin;
#[allow(missing_docs)]
pub mod bindings;
pub mod caller;
pub mod capabilities;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod data_dir;
pub mod deadline;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod listener;
pub mod manifest;
pub mod platform;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod services;
pub mod serving_threads;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trust;
