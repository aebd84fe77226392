//! A service's recorded requests (`GET /v1/services/{name}/recordings[/{id}]`) and
//! which ones are recorded (`PUT /v1/services/{name}/recording`). Reading them needs a
//! token that may change the service: they hold what clients sent.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_api::ErrorBody;
use shoal_api::recordings as api;
use std::sync::Arc;

use super::AdminState;
use super::error::ApiError;
use crate::recording::Mode;
use crate::services::LiveService;
use crate::services::replay::ReplayTarget;

fn service(state: &AdminState, name: &str) -> Result<Arc<LiveService>, ApiError> {
    state.services.table().get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no service named `{name}` runs here"),
        )
    })
}

fn mode_of(service: &LiveService) -> Mode {
    service.recording_mode(&service.versions().stable)
}

fn storage(error: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the host cannot read its recordings: {error}"),
    )
}

/// List a service's recordings.
#[utoipa::path(
    get,
    path = "/v1/services/{name}/recordings",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "Its recordings, newest first, and its mode", body = api::Listing),
        (status = 403, description = "The token may not change this service", body = ErrorBody),
        (status = 404, description = "No such service here", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::Listing>, ApiError> {
    let live = service(&state, &name)?;
    let mode = mode_of(&live);
    let recordings = state.services.platform().recordings.clone();
    let listing = tokio::task::spawn_blocking(move || recordings.list(&name, mode))
        .await
        .map_err(|error| storage(std::io::Error::other(error)))?
        .map_err(storage)?;
    Ok(Json(listing))
}

/// One recording, whole.
#[utoipa::path(
    get,
    path = "/v1/services/{name}/recordings/{id}",
    tag = "services",
    params(
        ("name" = String, Path, description = "The service"),
        ("id" = String, Path, description = "The recording"),
    ),
    responses(
        (status = 200, description = "The recording", body = api::Recording),
        (status = 403, description = "The token may not change this service", body = ErrorBody),
        (status = 404, description = "No such service or recording", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<api::Recording>, ApiError> {
    service(&state, &name)?;
    let recordings = state.services.platform().recordings.clone();
    let found = {
        let (name, id) = (name.clone(), id.clone());
        tokio::task::spawn_blocking(move || recordings.get(&name, &id))
            .await
            .map_err(|error| storage(std::io::Error::other(error)))?
            .map_err(storage)?
    };
    found.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("`{name}` keeps no recording `{id}` (the oldest are dropped)"),
        )
    })
}

/// `POST /v1/services/{name}/recordings/{id}/replay`: which code to replay against.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// A version of the service kept on this host (default: the recorded one). With a
    /// component in the body, the body is what runs.
    pub version: Option<String>,
}

/// Replay a recorded request in a sandbox, against the recorded version, another
/// version, or a component in the body (`application/wasm`).
#[utoipa::path(
    post,
    path = "/v1/services/{name}/recordings/{id}/replay",
    tag = "services",
    params(
        ("name" = String, Path, description = "The service"),
        ("id" = String, Path, description = "The recording"),
        ReplayQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/wasm",
                 description = "A component to replay against (optional)"),
    responses(
        (status = 200, description = "The replay beside the recording", body = api::Replay),
        (status = 400, description = "The component cannot be replayed", body = ErrorBody),
        (status = 403, description = "The token may not change this service", body = ErrorBody),
        (status = 404, description = "No such service, recording or version", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    query: Result<axum::extract::Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
    component: axum::body::Bytes,
) -> Result<Json<api::Replay>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.body_text()))?;
    let target = match (component.is_empty(), query.version) {
        (false, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "replay against a version or an uploaded component, not both",
            ));
        }
        (false, None) => ReplayTarget::Component(component),
        (true, Some(version)) => ReplayTarget::Version(version),
        (true, None) => ReplayTarget::Recorded,
    };
    Ok(Json(state.services.replay(&name, &id, target).await?))
}

/// Set which requests are recorded, live.
#[utoipa::path(
    put,
    path = "/v1/services/{name}/recording",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    request_body = api::RecordingMode,
    responses(
        (status = 200, description = "The mode now", body = api::RecordingMode),
        (status = 400, description = "Not a mode", body = ErrorBody),
        (status = 403, description = "The token may not change this service", body = ErrorBody),
        (status = 404, description = "No such service here", body = ErrorBody),
    )
)]
pub async fn set_mode(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Json(request): Json<api::RecordingMode>,
) -> Result<Json<api::RecordingMode>, ApiError> {
    let live = service(&state, &name)?;
    let mode = match request.record.as_deref() {
        None => None,
        Some(text) => Some(
            Mode::parse(text).map_err(|reason| ApiError::new(StatusCode::BAD_REQUEST, reason))?,
        ),
    };
    live.set_recording_mode(mode);
    tracing::info!(service = %name, mode = %mode_of(&live).name(), "recording mode set");
    Ok(Json(api::RecordingMode {
        record: Some(mode_of(&live).name()),
    }))
}
