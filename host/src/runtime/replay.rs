//! Replays: a recorded request run once more, on a fresh instance of code compiled by
//! an engine of its own that enforces determinism (NaN bits canonicalised, relaxed
//! SIMD deterministic), so the same code given the same values computes the same.
//! What the instance receives from outside comes from the request's journal: the
//! capabilities, `wasi:http`, clocks and random numbers all answer from it, and
//! nothing the guest does leaves the sandbox.
//!
//! wasmtime 48's `rr` feature is the base of wasmtime's own
//! record and replay, not yet a working one: `Config::rr` checks that determinism is
//! enforced (the same two settings this engine sets) and puts a checksum of the
//! module in compiled code, and nothing in wasmtime 48 records or replays a call with
//! it. Shoal's host calls are one choke point per import already, which knows what
//! each value means (a store key, a service and path), so a replay can say where new
//! code diverges, and run other code than was recorded.

use bytes::Bytes;
use std::sync::Arc;

use super::compile::{Handler, LoadError};
use super::invoke::{GuestBody, GuestFailure, Invocation};
use super::{InstanceLimits, Runtime, ServiceContext};
use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::protocol::RequestId;
use crate::recording::journal::Journal;

/// One replay: what it runs, for which service, answered from which journal.
pub struct ReplayRun {
    /// The replay's own service context (its store refuses everything; its logs are
    /// the replay's).
    pub service: Arc<ServiceContext>,
    /// Largest linear memory of its instance, in bytes.
    pub memory_bytes: usize,
    /// Registry, caller, telemetry (every call to them is answered from the journal).
    pub platform: Arc<Platform>,
    /// The replay's request id.
    pub request_id: RequestId,
    /// How long it may run, from when its code is ready.
    pub timeout: std::time::Duration,
    /// The recording, replaying.
    pub journal: Arc<Journal>,
}

impl Runtime {
    /// Run `request` through a fresh instance of `component` (SHA-256 `digest`) on the
    /// replay engine. The outer error is the code's (it does not compile or link, or
    /// it is WASIp3), the inner one the request's.
    pub async fn replay(
        &self,
        component: Bytes,
        digest: &str,
        run: ReplayRun,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> Result<Result<http::Response<GuestBody>, GuestFailure>, LoadError> {
        let digest = digest.to_owned();
        let loaded = self
            .compile(move |runtime| runtime.load_for_replay(&component, &digest))
            .await?;
        let Handler::Sequential(pre) = &loaded.handler else {
            return Err(LoadError::NotAService(
                super::compile::NO_WASIP3_REPLAY.into(),
            ));
        };
        let invocation = Invocation {
            service: run.service,
            limits: InstanceLimits {
                memory_bytes: run.memory_bytes,
                table_elements: 20_000,
                budget: self.memory_budget.clone(),
                idle: self.idle.clone(),
            },
            platform: run.platform,
            request_id: run.request_id,
            deadline: Deadline::after(run.timeout),
            trace: opentelemetry::Context::new(),
            held_until_done: None,
            journal: Some(run.journal),
        };
        Ok(super::invoke::handle(pre, None, invocation, request).await)
    }
}
