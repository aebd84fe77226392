//! Per-request store data (`T` of `Store<T>`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::caller::CallContext;
use crate::caller::outbound::OutboundHooks;
use crate::capabilities::tracing::TraceScope;
use crate::manifest::Outbound;
use crate::platform::Platform;

/// What a running service knows about itself; shared by all of its requests.
#[derive(Debug)]
pub struct ServiceContext {
    /// The service name, as deployed.
    pub name: Arc<str>,
    /// The deployed version.
    pub version: Arc<str>,
    /// The `[config]` table of its manifest.
    pub config: BTreeMap<String, String>,
    /// Maximum linear memory of one instance, in bytes.
    pub memory_limit_bytes: usize,
    /// Maximum elements of one table of an instance.
    pub table_elements: usize,
    /// Registry id of this service's instance on this host.
    pub instance_id: String,
    /// Outbound settings from the manifest.
    pub outbound: Arc<Outbound>,
    /// Self-reported and checked health of this version on this host.
    pub health: parking_lot::Mutex<crate::registry::HealthSignals>,
}

/// Store data for one request: WASI contexts plus what Shoal's capabilities need.
pub struct GuestState {
    pub(crate) service: Arc<ServiceContext>,
    pub(crate) request_id: Arc<str>,
    pub(crate) platform: Arc<Platform>,
    /// When this request must be done; outbound calls never outlive it.
    pub(crate) deadline: Instant,
    /// The request's span and the guest's open spans.
    pub(crate) trace: TraceScope,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    hooks: OutboundHooks,
    pub(crate) limits: StoreLimits,
}

impl GuestState {
    /// Fresh state for one request to `service`, due by `deadline`.
    pub fn new(
        service: Arc<ServiceContext>,
        request_id: Arc<str>,
        platform: Arc<Platform>,
        deadline: Instant,
        trace: TraceScope,
    ) -> Self {
        // No preopened directories, no environment, no network sockets: a service gets
        // only what Shoal's interfaces grant.
        let wasi = WasiCtx::builder().allow_ip_name_lookup(false).build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(service.memory_limit_bytes)
            .table_elements(service.table_elements)
            .trap_on_grow_failure(true)
            .build();
        let hooks = OutboundHooks::new(
            platform.caller.clone(),
            GuestState::call_context_of(&service, &request_id, deadline, &trace),
        );
        Self {
            service,
            request_id,
            platform,
            deadline,
            trace,
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            limits,
        }
    }

    /// Make a reused instance's state serve a new request.
    pub(crate) fn prepare(&mut self, request_id: Arc<str>, deadline: Instant, trace: TraceScope) {
        self.hooks = OutboundHooks::new(
            self.platform.caller.clone(),
            GuestState::call_context_of(&self.service, &request_id, deadline, &trace),
        );
        self.request_id = request_id;
        self.deadline = deadline;
        self.trace = trace;
    }

    /// Who is calling when this request makes an outbound call.
    pub(crate) fn call_context(&self) -> CallContext {
        Self::call_context_of(&self.service, &self.request_id, self.deadline, &self.trace)
    }

    fn call_context_of(
        service: &ServiceContext,
        request_id: &Arc<str>,
        deadline: Instant,
        trace: &TraceScope,
    ) -> CallContext {
        CallContext {
            caller: service.name.clone(),
            request_id: request_id.clone(),
            deadline,
            outbound: service.outbound.clone(),
            trace: trace.clone(),
        }
    }
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
