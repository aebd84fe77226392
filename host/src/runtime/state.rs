//! Per-request store data (`T` of `Store<T>`).

use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

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
}

/// Store data for one request: WASI contexts plus what Shoal's capabilities need.
pub struct GuestState {
    pub(crate) service: Arc<ServiceContext>,
    pub(crate) request_id: Arc<str>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    pub(crate) limits: StoreLimits,
}

impl GuestState {
    /// Fresh state for one request to `service`.
    pub fn new(service: Arc<ServiceContext>, request_id: Arc<str>) -> Self {
        // No preopened directories, no environment, no network sockets: a service gets
        // only what Shoal's interfaces grant.
        let wasi = WasiCtx::builder().allow_ip_name_lookup(false).build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(service.memory_limit_bytes)
            .trap_on_grow_failure(true)
            .build();
        Self {
            service,
            request_id,
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy,
            limits,
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

/// Outbound HTTP policy of a guest.
///
/// Default-deny: until a manifest grants outbound access, every outgoing request
/// answers `HTTP-request-denied`, so a service cannot reach the network behind the
/// operator's back.
struct OutboundPolicy;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
