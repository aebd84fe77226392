//! Host implementations of the `shoal:platform` interfaces, one module per interface.
//!
//! The runtime's per-request store data owns a [`PlatformCtx`] and lends it out as a
//! [`PlatformCtxView`] (with the instance's resource table) through [`PlatformView`],
//! the way `wasmtime-wasi-http` lends a `WasiHttpCtxView`. Each capability implements
//! its generated `Host` trait on a small view of its own that borrows only what it
//! needs, so this layer never sees the runtime, the service table or the admin API.
//!
//! Errors say whose fault they are: a host method returns `Err` (a trap that ends the
//! instance and is counted as a host fault) only for a host-side failure, and a WIT
//! error value for anything the guest did or may retry. Every host call runs in a
//! `tracing` span that records which of the two a failure was.

pub mod caller;
pub mod config;
pub mod discovery;
pub mod events;
pub mod keyvalue;
pub mod log;
pub mod metrics;
pub mod output;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod tracing;

#[cfg(test)]
mod test_env;

use ::tracing::Instrument as _;
use parking_lot::Mutex;
use std::sync::Arc;
use thiserror::Error;
use wasmtime::component::{Linker, ResourceTable, ResourceTableError};

use crate::caller::CallContext;
use crate::deadline::Deadline;
use crate::manifest::Outbound;
use crate::platform::Platform;
use crate::policy::rate::LogBudget;
use crate::protocol::RequestId;
use crate::recording::journal::Journal;
use crate::registry::HealthSignals;
use crate::telemetry::TraceScope;

/// What a running service knows about itself; shared by all of its requests.
pub struct ServiceContext {
    /// The service name, as deployed.
    pub name: Arc<str>,
    /// The deployed version.
    pub version: Arc<str>,
    /// The `[config]` table of its manifest.
    pub config: config::ServiceConfig,
    /// The secrets its manifest names.
    pub secrets: Vec<String>,
    /// Registry id of this version's instance on this host.
    pub instance_id: String,
    /// Outbound settings from the manifest.
    pub outbound: Arc<Outbound>,
    /// The topics it may publish (its manifest's `[events]`).
    pub topics: crate::events::topics::TopicRules,
    /// Self-reported and checked health of this version on this host.
    pub health: Mutex<HealthSignals>,
    /// How much it may still log (its log import and its stdout/stderr together).
    pub log_budget: Mutex<LogBudget>,
    /// Its own key-value store.
    pub store: Arc<dyn crate::store::ServiceStore>,
    /// What it uses of the host.
    pub meter: crate::telemetry::metering::ServiceMeter,
    /// Its recent log lines (shared by its versions).
    pub logs: Arc<crate::telemetry::guest_logs::ServiceLogs>,
    /// A replay's context: what it does is seen by nobody but the replay (no host
    /// log lines, no metrics of the real service).
    pub replay: bool,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// What Shoal's capabilities know about the request an instance is serving.
pub struct PlatformCtx {
    /// The service the instance runs.
    pub service: Arc<ServiceContext>,
    /// Registry, caller, telemetry and host identity.
    pub platform: Arc<Platform>,
    /// The request id, propagated on every outbound call and log line.
    pub request_id: RequestId,
    /// When the request must be done; no host call outlives it.
    pub deadline: Deadline,
    /// The request's span and the guest's open spans.
    pub trace: TraceScope,
    /// Discovery watches the guest holds open.
    pub open_watches: std::sync::atomic::AtomicUsize,
    /// Store transactions the guest holds open, and the memory they hold.
    pub transactions: Arc<store::TransactionAccount>,
    /// What the request receives from outside, when it is recorded; or the
    /// recording that answers its calls, when it is a replay.
    pub journal: Option<Arc<Journal>>,
}

impl PlatformCtx {
    /// The request's journal, if it is recorded or replayed.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_deref()
    }

    /// Whether this is a replay: calls are answered from a recording, and nothing
    /// the guest does may leave the sandbox.
    pub fn replaying(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|journal| journal.is_replaying())
    }

    /// Who is calling when this request makes an outbound call.
    pub fn call_context(&self) -> CallContext {
        CallContext {
            caller: self.service.name.clone(),
            request_id: self.request_id.clone(),
            deadline: self.deadline,
            outbound: self.service.outbound.clone(),
            trace: self.trace.clone(),
        }
    }
}

/// One instance's platform state and resource table, borrowed for a host call.
pub struct PlatformCtxView<'a> {
    /// The request's platform state.
    pub ctx: &'a PlatformCtx,
    /// The instance's resource table (watchers, spans).
    pub table: &'a mut ResourceTable,
}

/// Store data that can lend out a [`PlatformCtxView`]: what [`add_to_linker`] needs.
pub trait PlatformView: Send {
    /// Borrow the platform state and resource table.
    fn platform(&mut self) -> PlatformCtxView<'_>;
}

/// Add every `shoal:platform` interface the host implements to `linker`.
pub fn add_to_linker<T: PlatformView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    config::add_to_linker(linker)?;
    secrets::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    registry::add_to_linker(linker)?;
    discovery::add_to_linker(linker)?;
    caller::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    tracing::add_to_linker(linker)?;
    store::add_to_linker(linker)?;
    events::add_to_linker(linker)?;
    keyvalue::add_to_linker(linker)?;
    Ok(())
}

/// A failure on the host's side of a host call. It traps the instance; the runtime
/// reports it as a host fault, never as the service's.
#[derive(Debug, Error)]
#[error("host fault in {call}: {reason}")]
pub struct HostFault {
    /// The host call, `interface.function`.
    pub call: &'static str,
    /// What failed.
    pub reason: String,
}

impl HostFault {
    /// The error for a resource-table failure in `call`: a full table is the guest's
    /// doing (it holds too many handles) and traps as its fault; anything else (a
    /// handle the host cannot find) is the host's.
    pub fn table(call: &'static str, error: ResourceTableError) -> wasmtime::Error {
        if matches!(error, ResourceTableError::Full) {
            return wasmtime::Error::new(InstanceLimit {
                call,
                what: "open handles",
                limit: MAX_TABLE_ENTRIES,
            });
        }
        wasmtime::Error::new(HostFault {
            call,
            reason: format!("resource table: {error}"),
        })
    }
}

/// Handles (resources) one instance may hold at once: streams, fields, spans,
/// watchers. Past it, creating another traps the instance.
pub const MAX_TABLE_ENTRIES: usize = 10_000;
/// Guest spans one request may have open at once.
pub const MAX_OPEN_SPANS: usize = 256;
/// Discovery watches one request may have open at once.
pub const MAX_WATCHES: usize = 64;

/// A guest went past one of its instance's limits: it traps, as its own fault.
#[derive(Debug, Error)]
#[error("{call}: the instance has more than {limit} {what}")]
pub struct InstanceLimit {
    /// The host call.
    pub call: &'static str,
    /// What ran out.
    pub what: &'static str,
    /// The limit.
    pub limit: usize,
}

/// Run one host call that has no guest-visible error in a span named after it.
pub(crate) async fn traced<T>(
    call: &'static str,
    service: &str,
    body: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let span = ::tracing::debug_span!("host_call", call, service, fault = ::tracing::field::Empty);
    let result = body.instrument(span.clone()).await;
    if let Err(error) = &result {
        blame_host(&span, call, service, error);
    }
    result
}

/// [`traced`] for a host call whose work is synchronous.
pub(crate) fn traced_sync<T>(
    call: &'static str,
    service: &str,
    body: impl FnOnce() -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let span = ::tracing::debug_span!("host_call", call, service, fault = ::tracing::field::Empty);
    let result = span.in_scope(body);
    if let Err(error) = &result {
        blame_host(&span, call, service, error);
    }
    result
}

/// Run one host call that can refuse the guest, in a span that records whose fault a
/// failure was: a trap is the host's, a WIT error value the guest's.
pub(crate) async fn traced_fallible<T, E: std::fmt::Debug>(
    call: &'static str,
    service: &str,
    body: impl Future<Output = wasmtime::Result<Result<T, E>>>,
) -> wasmtime::Result<Result<T, E>> {
    let span = ::tracing::debug_span!("host_call", call, service, fault = ::tracing::field::Empty);
    let result = body.instrument(span.clone()).await;
    match &result {
        Err(error) => blame_host(&span, call, service, error),
        Ok(Err(error)) => {
            span.record("fault", "guest");
            ::tracing::debug!(parent: &span, call, service, error = ?error, "host call refused the guest");
        }
        Ok(Ok(_)) => {}
    }
    result
}

fn blame_host(span: &::tracing::Span, call: &str, service: &str, error: &wasmtime::Error) {
    if error
        .downcast_ref::<crate::recording::journal::Diverged>()
        .is_some()
    {
        span.record("fault", "replay");
        ::tracing::debug!(parent: span, call, service, %error, "a replay left its recording");
        return;
    }
    if error.downcast_ref::<InstanceLimit>().is_some() {
        span.record("fault", "guest");
        ::tracing::debug!(parent: span, call, service, %error, "the guest went past an instance limit");
        return;
    }
    span.record("fault", "host");
    ::tracing::error!(parent: span, call, service, error = %format!("{error:#}"), "host call failed on the host's side");
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn bounded_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_cuts_on_a_char_boundary() {
        let cut = bounded_text("é".repeat(100), 51);
        assert!(cut.len() <= 51 + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_text("hi".into(), 51), "hi");
    }
}
