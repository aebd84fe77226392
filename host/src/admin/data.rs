//! `/v1/services/{name}/data`: export a service's store, import one into an empty
//! store, delete it. Converting between the API's base64 snapshot and the store's.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use shoal_api::data as api;

use super::AdminState;
use super::error::ApiError;
use crate::services::data::DataError;
use crate::store::{OutboxEvent, Snapshot, StoreError};

impl From<DataError> for ApiError {
    fn from(error: DataError) -> Self {
        match error {
            DataError::Service(error) => error.into(),
            DataError::Store(StoreError::QuotaExceeded) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the data does not fit the store's quota",
            ),
            DataError::Store(error @ (StoreError::TooLarge(_) | StoreError::Conflict)) => {
                ApiError::new(StatusCode::BAD_REQUEST, error.to_string())
            }
            DataError::Store(error @ StoreError::Unavailable(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            DataError::Store(error) => {
                tracing::error!(%error, "a data operation failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            }
        }
    }
}

/// `GET /v1/services/{name}/data`: a consistent snapshot of the service's store.
#[utoipa::path(
    get,
    path = "/v1/services/{name}/data",
    tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The store's snapshot", body = api::Snapshot))
)]
pub async fn export(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::Snapshot>, ApiError> {
    let snapshot = state.services.export_data(&name).await?;
    let engine = state.services.platform().stores.engine().to_owned();
    Ok(Json(to_api(&name, engine, snapshot)))
}

/// `PUT /v1/services/{name}/data`: load a snapshot into the service's empty store.
#[utoipa::path(
    put,
    path = "/v1/services/{name}/data",
    tag = "services",
    params(("name" = String, Path, description = "Service name")),
    request_body = api::Snapshot,
    responses((status = 204, description = "Loaded"))
)]
pub async fn import(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Json(snapshot): Json<api::Snapshot>,
) -> Result<StatusCode, ApiError> {
    let snapshot = from_api(snapshot)?;
    state.services.import_data(&name, snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/services/{name}/data`: delete the store of a service that no longer
/// runs.
#[utoipa::path(
    delete,
    path = "/v1/services/{name}/data",
    tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 204, description = "Deleted"))
)]
pub async fn purge(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services.purge_data(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn to_api(service: &str, engine: String, snapshot: Snapshot) -> api::Snapshot {
    api::Snapshot {
        format: api::FORMAT.to_owned(),
        service: service.to_owned(),
        engine,
        sequence: snapshot.sequence,
        entries: snapshot
            .entries
            .into_iter()
            .map(|(key, value, version)| api::Entry {
                key,
                value: STANDARD.encode(value),
                version,
            })
            .collect(),
        outbox: snapshot
            .outbox
            .into_iter()
            .map(|event| api::OutboxEvent {
                id: event.id,
                topic: event.topic,
                payload: STANDARD.encode(event.payload),
                traceparent: event.traceparent,
                published_ms: event.published_ms,
                deliver_at_ms: event.deliver_at_ms,
            })
            .collect(),
        inbox: snapshot
            .inbox
            .into_iter()
            .map(|(id, handled_ms)| api::Handled { id, handled_ms })
            .collect(),
    }
}

/// The store's snapshot of an uploaded one; a clear 400 for a bad one.
fn from_api(snapshot: api::Snapshot) -> Result<Snapshot, ApiError> {
    if snapshot.format != api::FORMAT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "snapshot format `{}` is not `{}`",
                snapshot.format.chars().take(64).collect::<String>(),
                api::FORMAT
            ),
        ));
    }
    let bytes = |what: &str, text: &str| {
        STANDARD.decode(text).map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{what} is not base64: {error}"),
            )
        })
    };
    let mut entries = Vec::with_capacity(snapshot.entries.len());
    for entry in snapshot.entries {
        let value = bytes(&format!("the value of `{}`", entry.key), &entry.value)?;
        entries.push((entry.key, value, entry.version));
    }
    let mut outbox = Vec::with_capacity(snapshot.outbox.len());
    for event in snapshot.outbox {
        crate::events::validate_topic(&event.topic)
            .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.to_string()))?;
        let payload = bytes(
            &format!("the payload of event `{}`", event.id),
            &event.payload,
        )?;
        outbox.push(OutboxEvent {
            id: event.id,
            topic: event.topic,
            payload,
            traceparent: event.traceparent,
            published_ms: event.published_ms,
            deliver_at_ms: event.deliver_at_ms,
        });
    }
    Ok(Snapshot {
        entries,
        outbox,
        inbox: snapshot
            .inbox
            .into_iter()
            .map(|handled| (handled.id, handled.handled_ms))
            .collect(),
        sequence: snapshot.sequence,
    })
}
