//! The Shoal admin API's request and response types.
//!
//! One definition of every shape the admin API reads and writes, used by the host's
//! handlers, the `shoal` CLI's client and the end-to-end tests alike, so a change of
//! shape is a compile error on every side. Each type derives its JSON Schema
//! ([`utoipa::ToSchema`]); the host assembles them into the OpenAPI document it serves
//! at `GET /v1/openapi.json`.
//!
//! Field names are the JSON names. Requests refuse unknown fields, so a typo in a
//! client never silently does nothing.

pub mod access;
pub mod cluster;
pub mod data;
pub mod events;
pub mod external;
pub mod host;
pub mod logs;
pub mod recordings;
pub mod secrets;
pub mod services;
pub mod stats;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer (4xx and 5xx): what went wrong, for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and whose fault it is.
    pub error: String,
}
