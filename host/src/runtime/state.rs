//! Per-request store data (`T` of `Store<T>`): the WASI contexts, Shoal's platform
//! context, the resource table they share, and the store's limits. It lends each
//! capability a view of its own ([`WasiView`], [`WasiHttpView`], [`PlatformView`]).

use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::journaled::{self, JournalSlot};
use super::limits::{GuestLimiter, MemoryBudget};
use super::reuse::IdlePools;
use crate::caller::outbound::OutboundHooks;
use crate::capabilities::log::Source;
use crate::capabilities::output::GuestOutput;
use crate::capabilities::{MAX_TABLE_ENTRIES, PlatformCtx, PlatformCtxView, PlatformView};

/// What bounds one instance of a service.
#[derive(Debug, Clone)]
pub struct InstanceLimits {
    /// Maximum linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Maximum elements of one table of an instance.
    pub table_elements: usize,
    /// The host-wide memory budget its growth draws on.
    pub budget: Arc<MemoryBudget>,
    /// Idle instances of every service, given up when no instance slot is free.
    pub idle: Arc<IdlePools>,
}

/// The host's ends of an instance's standard output and error.
pub struct Output {
    /// Standard output.
    pub stdout: GuestOutput,
    /// Standard error.
    pub stderr: GuestOutput,
}

/// Store data for one instance: the request it serves (or, for a WASIp3 instance
/// serving several at once, the one whose task is calling the host right now).
pub struct GuestState {
    /// The request it serves (for a WASIp3 instance, the one whose task is calling).
    pub(crate) request: Arc<PlatformCtx>,
    pub(crate) output: Output,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    hooks: OutboundHooks,
    pub(crate) limits: GuestLimiter,
    /// The requests of a WASIp3 instance, by the guest task that serves each.
    pub(crate) requests: Option<super::concurrent::RequestsByTask>,
    /// The journal its clocks and random numbers go through (the current request's).
    journal: JournalSlot,
    /// Its `wasi:random/insecure-seed`, told to each recorded request's journal.
    insecure_seed: u128,
}

impl GuestState {
    /// Fresh state for the request `request` describes, within `limits`.
    pub fn new(request: Arc<PlatformCtx>, limits: InstanceLimits) -> Self {
        // No preopened directories, no environment, no network sockets: a service gets
        // only what Shoal's interfaces grant. Its output goes to the host log.
        let output_of = |source| {
            GuestOutput::new(
                source,
                request.service.clone(),
                request.platform.clone(),
                request.request_id.clone(),
            )
        };
        let output = Output {
            stdout: output_of(Source::Stdout),
            stderr: output_of(Source::Stderr),
        };
        let journal = JournalSlot::default();
        journal.set(request.journal.clone());
        // A replay's instance gets the seed of the instance it replays.
        let insecure_seed = request
            .journal
            .as_ref()
            .and_then(|journal| journal.insecure_seed())
            .unwrap_or_else(rand::random);
        if let Some(journal) = &request.journal {
            journal.set_insecure_seed(insecure_seed);
        }
        let wasi = WasiCtx::builder()
            .allow_ip_name_lookup(false)
            .stdout(output.stdout.handle())
            .stderr(output.stderr.handle())
            .wall_clock(journaled::WallClock::new(journal.clone()))
            .monotonic_clock(journaled::MonotonicClock::new(journal.clone()))
            .secure_random(journaled::Random::new(journal.clone()))
            .insecure_random(journaled::Random::new(journal.clone()))
            .insecure_random_seed(insecure_seed)
            .build();
        let store_limits =
            GuestLimiter::new(limits.memory_bytes, limits.table_elements, limits.budget);
        let hooks = OutboundHooks::new(
            request.platform.caller.clone(),
            request.call_context(),
            request.journal.clone(),
        );
        Self {
            request,
            output,
            wasi,
            http: WasiHttpCtx::new(),
            table: bounded_table(),
            hooks,
            limits: store_limits,
            requests: None,
            journal,
            insecure_seed,
        }
    }

    /// Make a reused instance's state serve the request `next` describes.
    pub(crate) fn prepare(&mut self, next: Arc<PlatformCtx>) {
        self.output.stdout.next_request(next.request_id.clone());
        self.output.stderr.next_request(next.request_id.clone());
        self.hooks = OutboundHooks::new(
            next.platform.caller.clone(),
            next.call_context(),
            next.journal.clone(),
        );
        // The slot holds the last request's journal; storing into it costs more than
        // comparing, so a service that records nothing never stores.
        if self.request.journal.is_some() || next.journal.is_some() {
            self.journal.set(next.journal.clone());
        }
        if let Some(journal) = &next.journal {
            journal.set_insecure_seed(self.insecure_seed);
        }
        self.request = next;
    }
}

impl Drop for GuestState {
    fn drop(&mut self) {
        // A WASIp3 instance ended while running wasm (trap, deadline): that time counts.
        if let Some(spent) = self.requests.as_mut().and_then(|r| r.unmetered()) {
            self.request.service.meter.add_cpu(spent);
        }
        // The instance ends with its store.
        self.request
            .service
            .meter
            .instance_ended(self.limits.peak());
    }
}

/// A resource table that holds at most [`MAX_TABLE_ENTRIES`] handles.
fn bounded_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_TABLE_ENTRIES);
    table
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl PlatformView for GuestState {
    fn platform(&mut self) -> PlatformCtxView<'_> {
        PlatformCtxView {
            ctx: &self.request,
            table: &mut self.table,
        }
    }
}
