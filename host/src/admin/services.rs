//! `/v1/services` handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;

use super::AdminState;
use super::error::ApiError;
use crate::manifest::Manifest;
use crate::services::{DeployKind, Deployment, ServiceError, validate_name};

/// What the admin API shows of a service.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    name: String,
    version: String,
    digest: String,
    deployed_at: String,
    route: String,
    state: &'static str,
    limits: LimitsView,
    config_keys: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LimitsView {
    memory_mb: u64,
    timeout_ms: u64,
}

impl From<&Deployment> for ServiceView {
    fn from(deployment: &Deployment) -> Self {
        let record = &deployment.record;
        Self {
            name: record.name.clone(),
            version: record.version.clone(),
            digest: record.digest.clone(),
            deployed_at: record.deployed_at.clone(),
            route: deployment.route.clone(),
            state: "running",
            limits: LimitsView {
                memory_mb: (deployment.context.memory_limit_bytes / (1024 * 1024)) as u64,
                timeout_ms: deployment.timeout.as_millis() as u64,
            },
            config_keys: record.manifest.config.keys().cloned().collect(),
        }
    }
}

/// `GET /v1/services`
pub async fn list(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let services: Vec<ServiceView> = state
        .services
        .table()
        .list()
        .iter()
        .map(|d| ServiceView::from(d.as_ref()))
        .collect();
    Json(serde_json::json!({ "services": services }))
}

/// `GET /v1/services/{name}`
pub async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    validate_name(&name)?;
    let deployment = state
        .services
        .table()
        .get(&name)
        .ok_or(ServiceError::NotFound(name))?;
    Ok(Json(ServiceView::from(deployment.as_ref())))
}

/// `DELETE /v1/services/{name}`
pub async fn remove(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/services/{name}`: the component as the body (`application/wasm`), or a
/// `multipart/form-data` body with a `component` part and an optional `manifest`
/// part (TOML).
pub async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    // Refuse a declared oversize body before reading any of it.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared
        && length > state.max_upload_bytes as u64
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is {length} bytes; this host accepts at most {} (--max-upload-bytes)",
                state.max_upload_bytes
            ),
        ));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/wasm")
        .to_ascii_lowercase();
    let max_memory_mb = state.services.defaults().max_memory_mb;
    let (component, manifest) = if content_type.starts_with("multipart/form-data") {
        read_multipart(request, &state, max_memory_mb).await?
    } else {
        // Any other body is taken as the component itself (`application/wasm`
        // preferred); its bytes, not its label, decide whether it is acceptable.
        let body = Bytes::from_request(request, &state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        (body, Manifest::default())
    };

    let (deployment, kind) = state.services.deploy(&name, component, manifest).await?;
    let status = match kind {
        DeployKind::Created => StatusCode::CREATED,
        DeployKind::Replaced => StatusCode::OK,
    };
    Ok((status, Json(ServiceView::from(Arc::as_ref(&deployment)))).into_response())
}

async fn read_multipart(
    request: Request,
    state: &AdminState,
    max_memory_mb: u32,
) -> Result<(Bytes, Manifest), ApiError> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let mut component = None;
    let mut manifest = Manifest::default();
    let part_error = |error: axum::extract::multipart::MultipartError| {
        ApiError::new(error.status(), error.body_text())
    };
    while let Some(field) = multipart.next_field().await.map_err(part_error)? {
        match field.name() {
            Some("component") => component = Some(field.bytes().await.map_err(part_error)?),
            Some("manifest") => {
                let text = field.text().await.map_err(part_error)?;
                manifest = Manifest::parse(&text, max_memory_mb).map_err(ServiceError::from)?;
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unexpected multipart part `{}`: expected `component` and `manifest`",
                        other.unwrap_or("")
                    ),
                ));
            }
        }
    }
    let component = component.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the multipart body has no `component` part",
        )
    })?;
    Ok((component, manifest))
}
