//! `/v1/secrets`: the operator's secrets for services. Values go in and never come
//! out: answers carry names, sources and service patterns only.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The JSON body of `PUT /v1/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecret {
    /// The value (UTF-8).
    pub value: String,
    /// Service patterns that may read it (none: any service that names it).
    #[serde(default)]
    pub services: Vec<String>,
}

/// Query of a raw-body `PUT /v1/secrets/{name}`: the value is the body itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutSecretQuery {
    /// Service patterns that may read it, comma-separated (with a raw body only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<String>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Set through the admin API.
    Api,
    /// The host's environment (`SHOAL_SECRET_*`).
    Env,
    /// A file in the secrets directory.
    File,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    /// Its name.
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// Service patterns that may read it (empty: any that names it).
    pub services: Vec<String>,
    /// When it was last set (RFC 3339).
    pub updated_at: String,
}

/// Answer of `GET /v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    /// Every secret, without values.
    pub secrets: Vec<Secret>,
}
