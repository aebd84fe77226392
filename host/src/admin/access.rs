//! `/v1/tokens` and `/v1/audit`: scoped tokens and the audit log (admin scope).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use shoal_api::ErrorBody;
use shoal_api::access as api;

use super::AdminState;
use super::error::ApiError;
use crate::access::Scope;
use crate::access::tokens::{TokenError, TokenInfo};

/// Audit entries one `GET /v1/audit` answers at most.
const MAX_AUDIT_ENTRIES: usize = 10_000;

fn token_error(error: TokenError) -> ApiError {
    error.into()
}

/// The API's view of a token.
fn token_view(info: TokenInfo) -> api::Token {
    api::Token {
        id: info.id,
        name: info.name,
        scope: scope_view(info.grant.scope),
        services: info.grant.services,
        created_at: info.created_at,
    }
}

/// The API's name of a scope.
pub(super) fn scope_view(scope: Scope) -> api::Scope {
    match scope {
        Scope::Read => api::Scope::Read,
        Scope::Deploy => api::Scope::Deploy,
        Scope::Admin => api::Scope::Admin,
    }
}

/// `POST /v1/tokens`: 201 with the secret, shown this once.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "access",
    request_body = api::NewToken,
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = api::CreatedToken),
        (status = 400, description = "Not a valid token request", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AdminState>,
    body: Result<Json<api::NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<api::CreatedToken>), ApiError> {
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
    let scope = match new.scope {
        api::Scope::Read => Scope::Read,
        api::Scope::Deploy => Scope::Deploy,
        api::Scope::Admin => Scope::Admin,
    };
    let (info, secret) = match &state.cluster {
        Some(cluster) => cluster
            .create_token(&tokens, &new.name, scope, new.services)
            .await
            .map_err(ApiError::from)?,
        None => tokio::task::spawn_blocking(move || tokens.create(&new.name, scope, new.services))
            .await
            .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
            .map_err(token_error)?,
    };
    Ok((
        StatusCode::CREATED,
        Json(api::CreatedToken {
            info: token_view(info),
            token: secret,
        }),
    ))
}

/// `GET /v1/tokens`: every token, without secrets.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "access",
    responses((status = 200, description = "Every token, without secrets", body = api::TokenList))
)]
pub async fn list(State(state): State<AdminState>) -> Json<api::TokenList> {
    Json(api::TokenList {
        tokens: state.tokens.list().into_iter().map(token_view).collect(),
    })
}

/// `DELETE /v1/tokens/{id}`: 204; the token is unknown from now on.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "access",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token", body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tokens = state.tokens.clone();
    match &state.cluster {
        Some(cluster) => cluster
            .revoke_token(&tokens, &id)
            .await
            .map_err(ApiError::from)?,
        None => tokio::task::spawn_blocking(move || tokens.revoke(&id))
            .await
            .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
            .map_err(token_error)?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/audit?limit=N`: the last N entries (default 1000), oldest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "access",
    params(api::AuditQuery),
    responses((status = 200, description = "The most recent entries, oldest first", body = api::AuditLog))
)]
pub async fn audit(
    State(state): State<AdminState>,
    Query(query): Query<api::AuditQuery>,
) -> Result<Json<api::AuditLog>, ApiError> {
    let limit = query.limit.unwrap_or(1000).min(MAX_AUDIT_ENTRIES);
    let mut entries = local_audit(&state, limit).await?;
    let mut unreachable = Vec::new();
    if let Some(cluster) = &state.cluster {
        for entry in &mut entries {
            entry.host = Some(cluster.host_id().to_owned());
        }
        // Every other host's own log, read through its gateway, merged by time.
        let (others, missing) = cluster.peer_audit(limit).await;
        entries.extend(others);
        unreachable = missing;
        entries.sort_by(|a, b| a.at.cmp(&b.at));
        let excess = entries.len().saturating_sub(limit);
        entries.drain(..excess);
    }
    Ok(Json(api::AuditLog {
        entries,
        unreachable,
    }))
}

/// This host's last `limit` audit entries, oldest first.
pub(crate) async fn local_audit(
    state: &AdminState,
    limit: usize,
) -> Result<Vec<api::AuditEntry>, ApiError> {
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
    Ok(entries.into_iter().map(api::AuditEntry::from).collect())
}

/// `GET /v1/audit/verify`: check the hash chain of the kept entries.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "access",
    responses((status = 200, description = "What the check found", body = api::AuditVerification))
)]
pub async fn verify_audit(
    State(state): State<AdminState>,
) -> Result<Json<api::AuditVerification>, ApiError> {
    let log = state.audit.clone();
    let found = tokio::task::spawn_blocking(move || log.verify())
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the audit log: {error:#}"),
            )
        })?;
    Ok(Json(found.into()))
}
