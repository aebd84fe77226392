//! `shoal serve` settings: every flag also reads an environment variable.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::listener::ConnectionLimits;
use crate::services::spec::defaults;

/// Settings of a running host.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Directory for deployed components, records, compiled code and the admin token.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// Address of the gateway that serves the services (port 0 picks a free port).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the admin API (port 0 picks a free port).
    #[arg(long, env = "SHOAL_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain of the gateway: it then speaks HTTPS only. Reloaded when
    /// the file changes.
    #[arg(long, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of the gateway's certificate.
    #[arg(long, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM certificate chain of the admin API: it then speaks HTTPS only. Reloaded
    /// when the file changes.
    #[arg(long, env = "SHOAL_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of the admin API's certificate.
    #[arg(long, env = "SHOAL_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<std::path::PathBuf>,

    /// Key that seals the secrets set through the admin API (64 hex digits). Created
    /// on first use; keep it apart from the data directory (default: in it).
    #[arg(long, env = "SHOAL_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// Directory of operator-provided secrets, one file per secret named like it
    /// (a mounted secret volume); re-read while running.
    #[arg(long, env = "SHOAL_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Token the admin API requires. When unset, one is generated into the data
    /// directory on first start and printed once.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest component upload accepted, in bytes.
    #[arg(long, env = "SHOAL_MAX_UPLOAD_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Linear memory per instance when a manifest sets none, in MiB.
    #[arg(long, env = "SHOAL_DEFAULT_MEMORY_MB", default_value_t = defaults::MEMORY_MB)]
    pub default_memory_mb: u32,

    /// Largest linear memory a manifest may ask for, in MiB.
    #[arg(long, env = "SHOAL_MAX_MEMORY_MB", default_value_t = defaults::MAX_MEMORY_MB)]
    pub max_memory_mb: u32,

    /// Deadline per request when a manifest sets none, in milliseconds.
    #[arg(long, env = "SHOAL_DEFAULT_TIMEOUT_MS", default_value_t = defaults::TIMEOUT_MS)]
    pub default_timeout_ms: u64,

    /// Requests a service may run at once when its manifest sets no limit.
    #[arg(long, env = "SHOAL_DEFAULT_MAX_CONCURRENCY", default_value_t = defaults::MAX_CONCURRENCY)]
    pub default_max_concurrency: u32,

    /// Requests that may wait per service when its manifest sets no limit.
    #[arg(long, env = "SHOAL_DEFAULT_QUEUE", default_value_t = defaults::QUEUE)]
    pub default_queue: u32,

    /// Instances that may run at once across all services, for each kind of code
    /// (WASIp2, WASIp3, baseline): the size of each engine's pooling allocator.
    #[arg(long, env = "SHOAL_MAX_INSTANCES", default_value_t = 1000)]
    pub max_instances: u32,

    /// Linear memory all instances together may hold, in MiB (0: three quarters of
    /// the machine's memory). A growth beyond it fails that instance with a 503,
    /// never the host; a deploy whose memory × concurrency exceeds it is refused.
    #[arg(long, env = "SHOAL_MAX_TOTAL_MEMORY_MB", default_value_t = 0)]
    pub max_total_memory_mb: usize,

    /// Instances one service may run at once (0: half of --max-instances); a service
    /// whose manifest asks for more concurrency is refused, the default is lowered.
    #[arg(long, env = "SHOAL_MAX_INSTANCES_PER_SERVICE", default_value_t = 0)]
    pub max_instances_per_service: u32,

    /// Wasm call-stack limit per instance, in KiB. Engine-wide: wasmtime fixes it for
    /// every instance of an engine, so it is a host setting, not a manifest one.
    #[arg(long, env = "SHOAL_MAX_WASM_STACK_KB", default_value_t = 512)]
    pub max_wasm_stack_kb: usize,

    /// Elements one table of an instance may have, reserved for every table slot of
    /// the instance pool. A component with a larger table is refused at deploy.
    #[arg(long, env = "SHOAL_MAX_TABLE_ELEMENTS", default_value_t = defaults::TABLE_ELEMENTS)]
    pub max_table_elements: u32,

    /// MiB of compiled functions kept on disk for later deploys: components that
    /// share code (one language runtime) then compile only what is new. 0 turns it off.
    #[arg(long, env = "SHOAL_FUNCTION_CACHE_MB", default_value_t = 1024)]
    pub function_cache_mb: u64,

    /// Components of at least this many KiB whose optimised code is not cached yet
    /// serve at once on code from the baseline compiler (Winch), and switch to the
    /// optimised code (Cranelift) when its background compile is done.
    #[arg(long, env = "SHOAL_BASELINE_ABOVE_KB", default_value_t = 2048)]
    pub baseline_above_kb: usize,

    /// Bytes at the start of each pooled memory, table and stack that are reset with
    /// memset when an instance ends, instead of handed back to the kernel (KiB).
    /// Larger: faster instantiation for small guests, more resident memory.
    #[arg(long, env = "SHOAL_KEEP_RESIDENT_KB", default_value_t = 64)]
    pub keep_resident_kb: usize,

    /// Never serve baseline code: a deploy waits for optimised code.
    #[arg(long, env = "SHOAL_NO_BASELINE")]
    pub no_baseline: bool,

    /// Measure nothing and trace nothing (the benchmark's baseline).
    #[arg(long, env = "SHOAL_NO_TELEMETRY")]
    pub no_telemetry: bool,

    /// Allocate instances on demand instead of from a pre-reserved pool.
    #[arg(long, env = "SHOAL_NO_POOLING")]
    pub no_pooling: bool,

    /// Gateway connections open at once; beyond it, new connections wait in the
    /// kernel's backlog while open ones keep being served.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Threads that serve gateway connections, each with an event loop of its own
    /// (0: one per core). A connection stays on the thread that took it, and a
    /// WASIp3 service keeps instances per thread. At most 64.
    #[arg(long, env = "SHOAL_GATEWAY_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub gateway_threads: u16,

    /// Admin API connections open at once.
    #[arg(long, env = "SHOAL_ADMIN_MAX_CONNECTIONS", default_value_t = 256)]
    pub admin_max_connections: usize,

    /// Time a client has to send a whole request head, on both listeners, in ms.
    #[arg(long, env = "SHOAL_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time a keep-alive connection may sit idle (no request, no traffic), in ms.
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Peers (addresses or CIDR ranges, comma-separated) whose `X-Forwarded-*`,
    /// `Forwarded` and `x-shoal-*` headers the gateway keeps. From anyone else they
    /// are removed, and the gateway names the peer in `X-Forwarded-For` itself.
    #[arg(long, env = "SHOAL_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_peer)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// How long SIGTERM waits for in-flight requests before exiting, in seconds.
    #[arg(long, env = "SHOAL_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
}

impl ServeConfig {
    /// The per-service instance cap: the flag, or half the pool.
    pub fn instances_per_service(&self) -> u32 {
        match self.max_instances_per_service {
            0 => (self.max_instances / 2).max(1),
            cap => cap.min(self.max_instances),
        }
    }

    /// The host-wide memory budget in bytes: the flag, or three quarters of the
    /// machine's memory (16 GiB where that cannot be read).
    pub fn memory_budget_bytes(&self) -> usize {
        if self.max_total_memory_mb > 0 {
            return self.max_total_memory_mb.saturating_mul(1024 * 1024);
        }
        crate::runtime::limits::machine_memory_bytes()
            .map(|total| total / 4 * 3)
            .unwrap_or(16 << 30)
    }

    /// How many gateway serving threads to start: the flag, or one per core.
    pub fn serving_threads(&self) -> usize {
        match self.gateway_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            count => usize::from(count),
        }
    }

    /// The defences of the gateway and admin listeners.
    pub fn connection_limits(&self) -> (ConnectionLimits, ConnectionLimits) {
        let limits = |max_connections| ConnectionLimits {
            max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
        };
        (
            limits(self.max_connections),
            limits(self.admin_max_connections),
        )
    }
}

/// An address (`10.0.0.5`, `::1`) or a CIDR range (`10.0.0.0/8`).
fn parse_peer(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR range"))
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("shoal")
}
