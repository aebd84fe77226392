//! `shoal serve` settings: the data directory, and each part's own flags (every flag
//! also reads an environment variable), flattened from the struct of the part that
//! uses them. A new flag touches that struct and that part's code, nothing else.

use clap::Args;
use std::path::PathBuf;

use crate::admin::AdminSettings;
use crate::gateway::GatewaySettings;
use crate::listener::ConnectionSettings;
use crate::runtime::RuntimeSettings;
use crate::secrets::SecretsSettings;
use crate::services::ServiceSettings;
use crate::telemetry::TelemetrySettings;

/// Settings of a running host.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Directory for deployed components, records, compiled code and the admin token.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,

    /// The gateway.
    #[command(flatten)]
    pub gateway: GatewaySettings,

    /// The admin API.
    #[command(flatten)]
    pub admin: AdminSettings,

    /// Both listeners' timeouts and the shutdown's drain.
    #[command(flatten)]
    pub connections: ConnectionSettings,

    /// What a manifest leaves unset, and what one service may take.
    #[command(flatten)]
    pub services: ServiceSettings,

    /// The instance pool, memory and compilers.
    #[command(flatten)]
    pub runtime: RuntimeSettings,

    /// Where secrets come from.
    #[command(flatten)]
    pub secrets: SecretsSettings,

    /// Where services' stores live.
    #[command(flatten)]
    pub store: crate::store::postgres::StoreSettings,

    /// How much the event bus may hold.
    #[command(flatten)]
    pub bus: crate::events::BusSettings,

    /// How much audit history is kept.
    #[command(flatten)]
    pub audit: crate::access::audit::AuditSettings,

    /// Metrics and traces.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,

    /// How many recorded requests each service keeps.
    #[command(flatten)]
    pub recordings: crate::recording::RecordingSettings,

    /// Joining a cluster.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterSettings,
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("shoal")
}
