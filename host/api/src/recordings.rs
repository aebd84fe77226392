//! `GET /v1/services/{name}/recordings[/{id}]` and `PUT /v1/services/{name}/recording`:
//! requests a service's recording mode kept, for debugging.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recording {
    /// Its id (unique in the service's ring; also names its file).
    pub id: String,
    /// The service that served it.
    pub service: String,
    /// The version that served it.
    pub version: String,
    /// The request's id.
    pub request_id: String,
    /// When it arrived (RFC 3339).
    pub at: String,
    /// How long it took, to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// What came in.
    pub request: Message,
    /// What went out (the status the client got).
    pub response: Message,
    /// Why it failed, when the host saw it fail (a trap, a timeout, …).
    pub fault: Option<String>,
    /// The gRPC status, for a gRPC call.
    pub grpc_status: Option<u8>,
}

/// A request or response as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// The request's method (empty for a response).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// The request's path and query (empty for a response).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The response's status (0 for a request).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status: u16,
    /// Its headers, credentials masked.
    pub headers: Vec<(String, String)>,
    /// Its body, up to 64 KiB: text when it is UTF-8, else base64.
    pub body: Body,
    /// Whether the body went on past what was kept.
    pub truncated: bool,
}

fn is_zero(value: &u16) -> bool {
    *value == 0
}

/// A recorded body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// UTF-8 text.
    Text(String),
    /// Anything else, base64.
    Base64(String),
}

/// A recording as listed: enough to pick one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    /// The recording's id.
    pub id: String,
    /// When the request arrived.
    pub at: String,
    /// The version that served it.
    pub version: String,
    /// The request's id.
    pub request_id: String,
    /// Its method.
    pub method: String,
    /// Its path and query.
    pub path: String,
    /// The status it got.
    pub status: u16,
    /// Its fault, if the host saw one.
    pub fault: Option<String>,
}

/// What one service's ring holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Listing {
    /// Newest first.
    pub recordings: Vec<Summary>,
    /// Recordings dropped to keep the ring within its bounds.
    pub dropped: u64,
    /// Which requests are recorded now.
    pub record: String,
}

/// `PUT /v1/services/{name}/recording`, and its answer: which requests are
/// recorded from now on: `"off"`, `"failed"`, or a ratio in (0, 1] as text (`"0.1"`);
/// `null` goes back to the manifest's `[debug] record`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingMode {
    /// The mode.
    pub record: Option<String>,
}
