//! `/v1/secrets`: the operator's secrets for services (admin scope). Values go in and
//! never come out: listings carry names, sources and service patterns only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use shoal_api::ErrorBody;
use shoal_api::secrets as api;

use super::AdminState;
use super::error::ApiError;
use crate::secrets::{SecretError, SecretInfo, Source};

/// Largest accepted body of `PUT /v1/secrets/{name}`.
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// The API's view of a secret: never its value.
fn secret_view(info: SecretInfo) -> api::Secret {
    api::Secret {
        name: info.name,
        source: match info.source {
            Source::Api => api::Source::Api,
            Source::Env => api::Source::Env,
            Source::File => api::Source::File,
        },
        services: info.services,
        updated_at: info.updated_at,
    }
}

fn secret_error(error: SecretError) -> ApiError {
    error.into()
}

/// `PUT /v1/secrets/{name}`: set a secret. The body is JSON
/// `{"value": "...", "services": ["pattern"]}` when sent as `application/json`, and
/// the value itself (UTF-8) otherwise, with `?services=` patterns comma-separated.
#[utoipa::path(
    put,
    path = "/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret"), api::PutSecretQuery),
    request_body(
        description = "`application/json`: a NewSecret; anything else: the value itself (UTF-8)",
        content(
            (api::NewSecret = "application/json"),
            (String = "text/plain"),
        )
    ),
    responses(
        (status = 200, description = "Set (its value is never shown)", body = api::Secret),
        (status = 400, description = "Not a valid name or value", body = ErrorBody),
        (status = 409, description = "Given by the environment or the secrets directory", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<api::PutSecretQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<api::Secret>, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let (value, services) = if json {
        if query.services.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a JSON body carries its own `services`; drop the query",
            ));
        }
        // serde's message may quote the body, which holds the value: say what is
        // expected instead.
        let new: api::NewSecret = serde_json::from_slice(&body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "expected {\"value\": \"...\", \"services\": [\"pattern\", ...]} (services optional)",
            )
        })?;
        (new.value, new.services)
    } else {
        let value = String::from_utf8(body.to_vec()).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "a secret's value must be UTF-8 text",
            )
        })?;
        let services = query
            .services
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|pattern| !pattern.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        (value, services)
    };
    let secrets = state.services.platform().secrets.clone();
    let info = match &state.cluster {
        Some(cluster) => cluster
            .put_secret(&secrets, &name, value, services)
            .await
            .map_err(ApiError::from)?,
        None => tokio::task::spawn_blocking(move || secrets.put(&name, value, services))
            .await
            .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
            .map_err(secret_error)?,
    };
    Ok(Json(secret_view(info)))
}

/// `GET /v1/secrets`: every secret, without values.
#[utoipa::path(
    get,
    path = "/v1/secrets",
    tag = "secrets",
    responses((status = 200, description = "Every secret, never a value", body = api::SecretList))
)]
pub async fn list(State(state): State<AdminState>) -> Json<api::SecretList> {
    Json(api::SecretList {
        secrets: state
            .services
            .platform()
            .secrets
            .list()
            .into_iter()
            .map(secret_view)
            .collect(),
    })
}

/// `DELETE /v1/secrets/{name}`: 204; services that name it get `not-found` from now on.
#[utoipa::path(
    delete,
    path = "/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such secret set through the API", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let secrets = state.services.platform().secrets.clone();
    match &state.cluster {
        Some(cluster) => cluster
            .remove_secret(&secrets, &name)
            .await
            .map_err(ApiError::from)?,
        None => tokio::task::spawn_blocking(move || secrets.remove(&name))
            .await
            .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
            .map_err(secret_error)?,
    }
    Ok(StatusCode::NO_CONTENT)
}
