//! End-to-end tests: the real `shoal` binary, real components, real HTTP.
//!
//! Needs the host (`cargo build -p shoal`) and the guests (`cargo build --release
//! --target wasm32-wasip2` in `guests/`); `scripts/test.sh` builds both.

mod access;
mod bad_input;
mod caller;
mod cli;
mod cluster;
mod dashboard;
mod deploy;
mod dev;
mod durability;
mod events;
mod grpc;
mod hardening;
mod http2;
mod isolation;
mod keyvalue;
mod languages;
mod lifecycle;
mod operations;
mod polyglot;
mod recordings;
mod secrets;
mod shop;
mod store;
mod telemetry;
mod tls;
mod trust;
mod wasi;
mod wasip3;
