//! `/v1/tokens`, `/v1/whoami` and `/v1/audit`: scoped tokens and the audit log.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// List and show services, external services, events, discovery.
    Read,
    /// `read`, and deploy, remove, scale, canary and roll back the services its
    /// patterns match.
    Deploy,
    /// Everything, tokens, external services, dead letters and the audit log included.
    Admin,
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name for it (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// With `deploy`: the services it may change (glob patterns; none: all).
    #[serde(default)]
    pub services: Vec<String>,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// Its public id (`tok_…`), for listing, revoking and the audit log.
    pub id: String,
    /// The operator's name for it.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Which services a `deploy` token may change.
    pub services: Vec<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// Answer of `POST /v1/tokens`: the token, and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    pub info: Token,
    /// The secret to send as `Authorization: Bearer <token>`.
    pub token: String,
}

/// Answer of `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Every token.
    pub tokens: Vec<Token>,
}

/// Answer of `GET /v1/whoami`: the calling token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// Its id (`operator` for the operator's token).
    pub token_id: String,
    /// What it may do.
    pub scope: Scope,
    /// Which services a `deploy` token may change.
    pub services: Vec<String>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries to answer, the most recent (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// How an audited change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Allowed and about to run (written before the change; its outcome follows).
    Started,
    /// Done.
    Ok,
    /// Not allowed or not valid: nothing changed.
    Refused,
    /// Allowed, but the host failed.
    Failed,
}

/// One entry of the audit log: a change someone attempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// When (RFC 3339, milliseconds).
    pub at: String,
    /// The token used; none when no known token was presented.
    pub token_id: Option<String>,
    /// What was attempted: `deploy`, `remove`, `scale`, `canary`, `rollback`, ...
    pub action: String,
    /// What it was attempted on, if anything.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered (none for `started`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The deployed component's SHA-256, for deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it was refused or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Refusals of known tokens left out of the log just before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_not_logged: Option<u64>,
    /// Anonymous refusals (no or an unknown token) left out just before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_not_logged: Option<u64>,
    /// The hash of the entry before it.
    pub prev: String,
    /// Its own hash: SHA-256 of `prev` and its JSON line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// In a cluster: the host whose log holds it (each host chains its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Answer of `GET /v1/audit/verify`: whether the hash chain of the kept entries is
/// intact and ends at the last entry the host wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// Whether no problem was found.
    pub intact: bool,
    /// Entries checked.
    pub entries: u64,
    /// When the first kept entry was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_at: Option<String>,
    /// Whether older entries were rotated out of the kept history.
    pub rotated_out: bool,
    /// The hash of the last entry: record it elsewhere to check later that the log
    /// still contains it.
    pub head: String,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// Answer of `GET /v1/audit`: oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// In a cluster: hosts whose entries could not be read now (down or cut off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}
