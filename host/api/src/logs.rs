//! `GET /v1/services/{name}/logs`: a service's recent log lines, or followed as
//! server-sent events.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query of `GET /v1/services/{name}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// `1` (or `true`): keep the answer open and stream new lines as server-sent
    /// events (`line`, and `dropped` with `{"lines": N}` when a slow reader missed
    /// some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<String>,
    /// Only this level and above: `trace`, `debug`, `info`, `warn` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Only this request's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How many kept lines first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
}

/// One line a service logged (through `shoal:platform/log`, or on stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Its number in the service's ring (increasing; gaps mean lines left out).
    pub seq: u64,
    /// When it was written (RFC 3339).
    pub at: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `log`, `stdout` or `stderr`.
    pub source: String,
    /// The version that wrote it.
    pub version: String,
    /// The request it belongs to.
    pub request_id: String,
    /// The message, escaped and with secrets masked.
    pub message: String,
    /// `key="value"` fields.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fields: String,
}

/// Answer of `GET /v1/services/{name}/logs` without `follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLines {
    /// Oldest first.
    pub lines: Vec<LogLine>,
}

/// The data of a `dropped` event of a followed log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Dropped {
    /// Lines the reader missed.
    pub lines: u64,
}
