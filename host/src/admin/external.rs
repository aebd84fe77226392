//! `/v1/external` (operator-registered HTTP services) and `/v1/discovery` handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use super::AdminState;
use super::error::ApiError;
use crate::registry::external::ExternalService;
use crate::registry::validate_name;
use crate::services::ServiceError;

/// `GET /v1/external`
pub async fn list(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let services: Vec<serde_json::Value> = state
        .external
        .list()
        .into_iter()
        .map(|(name, spec)| json!({ "name": name, "spec": spec }))
        .collect();
    Json(json!({ "external": services }))
}

/// `GET /v1/external/{name}`
pub async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_name(&name).map_err(ServiceError::from)?;
    state
        .external
        .list()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(name, spec)| Json(json!({ "name": name, "spec": spec })))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no external service named `{name}`"),
            )
        })
}

/// `PUT /v1/external/{name}` with a JSON body: `{"endpoints": ["host:port", ...],
/// "health_check": {"path": "/health", "interval_ms": 1000, ...}}`.
pub async fn put(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    validate_name(&name).map_err(ServiceError::from)?;
    let spec = ExternalService::parse(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.to_string()))?;
    if state.services.table().get(&name).is_some() || state.services.failed_service(&name).is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("`{name}` is a deployed service; external services need a name of their own"),
        ));
    }
    let replaced = state
        .external
        .put(&name, spec.clone())
        .await
        .map_err(ServiceError::Storage)?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!({ "name": name, "spec": spec }))))
}

/// `DELETE /v1/external/{name}`
pub async fn remove(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    validate_name(&name).map_err(ServiceError::from)?;
    if state
        .external
        .remove(&name)
        .await
        .map_err(ServiceError::Storage)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no external service named `{name}`"),
        ))
    }
}

/// `GET /v1/discovery/{name}`: every registered instance, whatever its health.
pub async fn discover(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_name(&name).map_err(ServiceError::from)?;
    let instances = state
        .services
        .platform()
        .registry
        .instances(&name)
        .await
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    Ok(Json(json!({ "service": name, "instances": instances })))
}
