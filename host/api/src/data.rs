//! `/v1/services/{name}/data`: a service's store as an operator backs it up and moves
//! it (`shoal data export`, `shoal data import`, `shoal rm --purge`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The format written by this version.
pub const FORMAT: &str = "shoal-store/1";

/// A consistent snapshot of one service's store. Bytes are base64 (standard
/// alphabet, padded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`FORMAT`].
    pub format: String,
    /// The service it was taken from.
    pub service: String,
    /// The backend it was taken from (`sqlite`, `postgresql`).
    pub engine: String,
    /// The last commit's sequence number.
    pub sequence: u64,
    /// Keys and values, in key order.
    pub entries: Vec<Entry>,
    /// Events committed and not yet handed to the bus, oldest first.
    pub outbox: Vec<OutboxEvent>,
    /// Events handled, for de-duplication.
    pub inbox: Vec<Handled>,
}

/// One key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value, base64.
    pub value: String,
    /// The commit that wrote it.
    pub version: u64,
}

/// An event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxEvent {
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its payload, base64.
    pub payload: String,
    /// The publisher's `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// When it was published (Unix milliseconds).
    pub published_ms: u64,
    /// Not delivered before (Unix milliseconds; 0: at once).
    pub deliver_at_ms: u64,
}

/// A handled event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Handled {
    /// The event's id.
    pub id: String,
    /// When it was handled (Unix milliseconds).
    pub handled_ms: u64,
}
