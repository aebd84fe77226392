//! Telemetry: Prometheus metrics (host-measured and guest-defined) and OpenTelemetry
//! traces with W3C trace-context propagation and OTLP export.
//!
//! - [`metrics`]: the host's metric families and the bounded per-service guest metrics.
//! - [`traces`]: the tracer (OTLP over HTTP when `OTEL_EXPORTER_OTLP_*` is set) and
//!   the `traceparent` helpers.
//! - [`scope`]: the spans open during one request.
//! - [`logs`]: the host's own log, written without blocking; [`guest_logs`]: each
//!   service's recent lines, kept to read and follow.
//! - [`metering`]: what each service uses of the host (CPU, instances, memory).

pub mod guest_logs;
pub mod logs;
pub mod metering;
pub mod metrics;
pub mod scope;
pub mod traces;

/// Telemetry's part of the `shoal serve` flags (traces are exported as the standard
/// `OTEL_*` environment variables say).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TelemetrySettings {
    /// Measure nothing and trace nothing (the benchmark's baseline).
    #[arg(long, env = "SHOAL_NO_TELEMETRY")]
    pub no_telemetry: bool,
}

pub use metrics::Metrics;
pub use scope::TraceScope;
pub use traces::Tracing;

/// Everything telemetry, shared by the host.
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// OpenTelemetry traces.
    pub tracing: Tracing,
    /// Each service's recent log lines.
    pub guest_logs: guest_logs::GuestLogs,
}

impl Telemetry {
    /// Metrics, plus tracing configured from the standard `OTEL_*` variables. With
    /// `enabled` false, nothing is measured or traced (for the benchmark's baseline).
    pub fn from_env(enabled: bool) -> anyhow::Result<Self> {
        Ok(Self {
            metrics: Metrics::new(enabled)?,
            tracing: Tracing::from_env(enabled)?,
            guest_logs: Default::default(),
        })
    }
}
