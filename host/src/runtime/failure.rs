//! How a request to a guest can fail, and how a wasmtime error becomes one of those
//! failures: whose fault it is (guest or host) and what the client is told.

use http::StatusCode;
use std::time::Duration;
use thiserror::Error;

use super::limits::{HostMemoryExhausted, InstanceMemoryExceeded};
use crate::capabilities::HostFault;

/// How a request to a guest failed. A failure ends that request only.
#[derive(Debug, Clone, Error)]
pub enum GuestFailure {
    /// No instance could be created (e.g. the instance pool is exhausted).
    #[error("could not start an instance: {0}")]
    Instantiate(String),
    /// The guest trapped (including Rust panics, which abort as a trap). `stderr` is
    /// the end of what it wrote to standard error (a panic's message), for the log.
    #[error("the service trapped: {reason}{}", stderr_suffix(.stderr))]
    Trap {
        /// The trap.
        reason: String,
        /// The guest's last standard-error lines, if any.
        stderr: Option<String>,
    },
    /// The guest tried to grow its memory past its limit.
    #[error("the service exceeded its memory limit of {0} MiB")]
    MemoryLimit(usize),
    /// The guest's memory growth did not fit the host-wide memory budget.
    #[error("the host's memory budget is exhausted; retry later")]
    HostMemory,
    /// The guest overflowed its wasm stack (runaway recursion).
    #[error("the service overflowed its stack")]
    StackOverflow,
    /// The guest ran past its execution deadline.
    #[error("the service exceeded its execution time limit of {0:?}")]
    Deadline(Duration),
    /// The guest returned without ever sending a response.
    #[error("the service returned without sending a response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code instead of a response.
    #[error("the service answered with an error: {0:?}")]
    ErrorCode(String),
    /// The host failed while serving the request (a host call's own failure, a
    /// panicked host task): not the service's fault, and not counted as its fault.
    #[error("the host failed while serving the request: {0}")]
    Host(String),
}

impl GuestFailure {
    /// The status the gateway answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            GuestFailure::Instantiate(_) | GuestFailure::HostMemory => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GuestFailure::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            GuestFailure::ErrorCode(_) => StatusCode::BAD_GATEWAY,
            GuestFailure::Trap { .. }
            | GuestFailure::MemoryLimit(_)
            | GuestFailure::StackOverflow
            | GuestFailure::NoResponse
            | GuestFailure::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short name of the failure, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestFailure::Instantiate(_) => "instantiate",
            GuestFailure::Trap { .. } => "trap",
            GuestFailure::MemoryLimit(_) => "memory",
            GuestFailure::HostMemory => "host-memory",
            GuestFailure::StackOverflow => "stack",
            GuestFailure::Deadline(_) => "timeout",
            GuestFailure::NoResponse => "no-response",
            GuestFailure::ErrorCode(_) => "error-response",
            GuestFailure::Host(_) => "host",
        }
    }

    /// What a client is told: the fault without the host's internal details and
    /// without the guest's output (those go to the log).
    pub fn public_message(&self) -> String {
        match self {
            GuestFailure::Instantiate(_) => "could not start an instance".into(),
            GuestFailure::Host(_) => "the host failed while serving the request".into(),
            GuestFailure::Trap { reason, .. } => format!("the service trapped: {reason}"),
            other => other.to_string(),
        }
    }

    pub(crate) fn trap(reason: String) -> Self {
        GuestFailure::Trap {
            reason,
            stderr: None,
        }
    }

    /// Attach what the guest last wrote to standard error to a trap.
    pub(crate) fn with_stderr(self, tail: String) -> Self {
        match self {
            GuestFailure::Trap { reason, .. } if !tail.is_empty() => GuestFailure::Trap {
                reason,
                stderr: Some(tail),
            },
            other => other,
        }
    }

    /// Whether the service is to blame (counted against it, its canary and breakers
    /// of its callers) rather than the host.
    pub fn is_guest_fault(&self) -> bool {
        !matches!(self, GuestFailure::Host(_) | GuestFailure::HostMemory)
    }
}

fn stderr_suffix(stderr: &Option<String>) -> String {
    match stderr {
        Some(tail) => format!("; its last standard error: {tail}"),
        None => String::new(),
    }
}

/// Marker error raised from the epoch callback when a request's time is up.
#[derive(Debug, Error)]
#[error("execution deadline exceeded")]
pub(crate) struct DeadlineExceeded;

/// Why an instance could not be created: its memory did not fit (its own limit or the
/// host's budget), or anything else.
pub(crate) fn instantiate_failure(error: &wasmtime::Error) -> GuestFailure {
    if error.downcast_ref::<HostMemoryExhausted>().is_some() {
        GuestFailure::HostMemory
    } else if let Some(exceeded) = error.downcast_ref::<InstanceMemoryExceeded>() {
        GuestFailure::MemoryLimit(exceeded.limit / (1024 * 1024))
    } else {
        GuestFailure::Instantiate(format!("{error:#}"))
    }
}

/// What a wasmtime error raised while running a guest means for its request.
pub(crate) fn classify(
    error: wasmtime::Error,
    timeout: Duration,
    memory_limit: usize,
) -> GuestFailure {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return GuestFailure::Deadline(timeout);
    }
    if let Some(fault) = error.downcast_ref::<HostFault>() {
        return GuestFailure::Host(fault.to_string());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::StackOverflow {
            return GuestFailure::StackOverflow;
        }
        return GuestFailure::trap(trap.to_string());
    }
    if error.downcast_ref::<InstanceMemoryExceeded>().is_some() {
        return GuestFailure::MemoryLimit(memory_limit / (1024 * 1024));
    }
    if error.downcast_ref::<HostMemoryExhausted>().is_some() {
        return GuestFailure::HostMemory;
    }
    // The root cause without the (long) wasm backtrace context.
    GuestFailure::trap(error.root_cause().to_string())
}
