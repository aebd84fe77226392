//! `/v1/tokens` and `/v1/audit`: scoped tokens and the audit log (admin scope).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::error::ApiError;
use crate::access::Scope;
use crate::access::tokens::TokenError;

/// Audit entries one `GET /v1/audit` answers at most.
const MAX_AUDIT_ENTRIES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    scope: Scope,
    #[serde(default)]
    services: Vec<String>,
}

fn token_error(error: TokenError) -> ApiError {
    let status = match &error {
        TokenError::Invalid(_) => StatusCode::BAD_REQUEST,
        TokenError::NotFound(_) => StatusCode::NOT_FOUND,
        TokenError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error.to_string())
}

/// `POST /v1/tokens`: 201 with the secret, shown this once.
pub async fn create(
    State(state): State<AdminState>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(new) = body.map_err(|rejection| {
        ApiError::new(
            // 413 for a body past the limit, 400 for anything else wrong with it.
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            },
            format!(
                "expected {{\"name\", \"scope\": \"read\" | \"deploy\" | \"admin\", \
                 \"services\": [patterns]}}: {rejection}"
            ),
        )
    })?;
    let tokens = state.tokens.clone();
    let (info, secret) =
        tokio::task::spawn_blocking(move || tokens.create(&new.name, new.scope, new.services))
            .await
            .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
            .map_err(token_error)?;
    let mut answer = serde_json::to_value(&info).unwrap_or_default();
    answer["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /v1/tokens`: every token, without secrets.
pub async fn list(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({ "tokens": state.tokens.list() }))
}

/// `DELETE /v1/tokens/{id}`: 204; the token is unknown from now on.
pub async fn revoke(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tokens = state.tokens.clone();
    tokio::task::spawn_blocking(move || tokens.revoke(&id))
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .map_err(token_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
}

/// `GET /v1/audit?limit=N`: the last N entries (default 1000), oldest first.
pub async fn audit(
    State(state): State<AdminState>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(1000).min(MAX_AUDIT_ENTRIES);
    let log = state.audit.clone();
    let entries = tokio::task::spawn_blocking(move || log.recent(limit))
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the audit log: {error:#}"),
            )
        })?;
    Ok(Json(json!({ "entries": entries })))
}
