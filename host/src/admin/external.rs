//! `/v1/external` (operator-registered HTTP services) and `/v1/discovery` handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_api::ErrorBody;
use shoal_api::external as api;

use super::AdminState;
use super::error::ApiError;
use crate::registry::external::ExternalService;
use crate::registry::{Endpoint, Health, validate_name};
use crate::services::ServiceError;

/// The API's view of an external service.
fn external_view(name: String, spec: ExternalService) -> api::External {
    api::External {
        name,
        spec: api::ExternalSpec {
            endpoints: spec.endpoints,
            health_check: spec.health_check.map(|check| api::HealthCheck {
                path: Some(check.path),
                interval_ms: Some(check.interval_ms),
                timeout_ms: Some(check.timeout_ms),
                unhealthy_threshold: Some(check.unhealthy_threshold),
                healthy_threshold: Some(check.healthy_threshold),
            }),
            version: Some(spec.version),
            tags: spec.tags,
        },
    }
}

/// `GET /v1/external`
#[utoipa::path(
    get,
    path = "/v1/external",
    tag = "external",
    responses((status = 200, description = "Every external service", body = api::ExternalList))
)]
pub async fn list(State(state): State<AdminState>) -> Json<api::ExternalList> {
    let external = state
        .external
        .list()
        .into_iter()
        .map(|(name, spec)| external_view(name, spec))
        .collect();
    Json(api::ExternalList { external })
}

/// `GET /v1/external/{name}`
#[utoipa::path(
    get,
    path = "/v1/external/{name}",
    tag = "external",
    params(("name" = String, Path, description = "The external service")),
    responses(
        (status = 200, description = "It", body = api::External),
        (status = 404, description = "No such external service", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::External>, ApiError> {
    validate_name(&name).map_err(ServiceError::from)?;
    state
        .external
        .list()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(name, spec)| Json(external_view(name, spec)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no external service named `{name}`"),
            )
        })
}

/// `PUT /v1/external/{name}` with a JSON body: `{"endpoints": ["host:port", ...],
/// "health_check": {"path": "/health", "interval_ms": 1000, ...}}`.
#[utoipa::path(
    put,
    path = "/v1/external/{name}",
    tag = "external",
    params(("name" = String, Path, description = "The external service")),
    request_body = api::ExternalSpec,
    responses(
        (status = 201, description = "Registered", body = api::External),
        (status = 200, description = "Replaced", body = api::External),
        (status = 400, description = "Not a valid registration", body = ErrorBody),
        (status = 409, description = "A deployed service has the name", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<api::External>), ApiError> {
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
    Ok((status, Json(external_view(name, spec))))
}

/// `DELETE /v1/external/{name}`
#[utoipa::path(
    delete,
    path = "/v1/external/{name}",
    tag = "external",
    params(("name" = String, Path, description = "The external service")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such external service", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/v1/discovery/{name}",
    tag = "external",
    params(("name" = String, Path, description = "The service")),
    responses((status = 200, description = "Its instances", body = api::Discovery))
)]
pub async fn discover(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::Discovery>, ApiError> {
    validate_name(&name).map_err(ServiceError::from)?;
    let instances = state
        .services
        .platform()
        .registry
        .instances(&name)
        .await
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    let instances = instances
        .into_iter()
        .map(|instance| api::Instance {
            id: instance.id,
            service: instance.service,
            endpoint: match instance.endpoint {
                Endpoint::Local => api::Endpoint::Local,
                Endpoint::Http(authority) => api::Endpoint::Http(authority),
                Endpoint::Peer(authority) => api::Endpoint::Peer(authority),
            },
            version: instance.version,
            tags: instance.tags,
            health: match instance.health {
                Health::Serving => api::Health::Serving,
                Health::Degraded => api::Health::Degraded,
                Health::NotServing => api::Health::NotServing,
            },
        })
        .collect();
    Ok(Json(api::Discovery {
        service: name,
        instances,
    }))
}
