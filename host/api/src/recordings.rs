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
    /// What the guest received from outside while it served the request.
    #[serde(default)]
    pub received: Received,
}

/// Every value a guest received from outside while it served one request, in the
/// order it asked: what a replay answers its imports with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Received {
    /// Import calls whose results came from outside the guest (store, caller,
    /// discovery, events, config, secrets as a placeholder, outgoing `wasi:http`).
    pub calls: Vec<ImportCall>,
    /// Wall-clock readings, nanoseconds since the Unix epoch, in order.
    pub wall_clock: Vec<u64>,
    /// Monotonic-clock readings, nanoseconds, in order.
    pub monotonic_clock: Vec<u64>,
    /// The random bytes the guest drew, in order, base64.
    pub random: String,
    /// Whether the guest received more than a recording keeps; what came after the
    /// limit is missing (a replay reports it as a divergence where it runs out).
    pub truncated: bool,
    /// The `wasi:random/insecure-seed` of the instance that served it (hex), which a
    /// replay's instance is given (hash maps' order may depend on it).
    #[serde(default)]
    pub insecure_seed: Option<String>,
}

/// One import call and the value the guest got back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportCall {
    /// Its number among the request's calls, from 1.
    pub n: u32,
    /// The import, `interface.function` (`store.get`, `caller.call`, `http.send`).
    pub import: String,
    /// What it was about: a key, a service and path, a topic.
    pub key: String,
    /// What the guest got back, as JSON (bytes are `{"$text": …}` or
    /// `{"$base64": …}`; secret values are masked).
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
}

/// `POST /v1/services/{name}/recordings/{id}/replay`: a recorded request run again in
/// a sandbox whose imports are answered from the recording, beside what it got then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replay {
    /// The recording replayed.
    pub recording: String,
    /// What ran: a version of the service, or an uploaded component (by digest).
    pub ran: String,
    /// Whether `ran` is the version that served the recorded request.
    pub same_version: bool,
    /// What the recorded request got.
    pub recorded: Outcome,
    /// What the replay answered.
    pub replayed: Outcome,
    /// Where the code asked for something the recording does not have.
    pub divergence: Option<Divergence>,
    /// Recorded calls the replay never asked for.
    pub unused_calls: u32,
    /// Clock readings past those recorded (answered with the last recorded reading).
    pub extra_clock_reads: u32,
    /// Random bytes drawn past those recorded (answered by a generator seeded with
    /// the recording's id).
    pub extra_random_bytes: u64,
    /// The log lines the replay wrote (they went nowhere else).
    pub logs: Vec<String>,
    /// What else to know: values the recording had cut, state it could not hold.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A response, or the fault that ended it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    /// The status.
    pub status: u16,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body, up to 64 KiB.
    pub body: Body,
    /// Whether the body went on past what was kept.
    pub truncated: bool,
    /// The fault, if the request failed on the guest's or the host's side.
    pub fault: Option<String>,
}

/// Where a replay left the recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Divergence {
    /// The number of the call that diverged, from 1.
    pub call: u32,
    /// What the code asked for: `import key`.
    pub asked: String,
    /// What the recording has at that place (`None`: the recording had no more calls).
    pub recorded: Option<String>,
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
