//! `/v1/events`: pending deliveries and dead letters; replay or drop a dead letter.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_api::ErrorBody;
use shoal_api::events as api;

use super::AdminState;
use super::error::ApiError;

/// Dead letters shown at most.
const MAX_DEAD_LETTERS: u32 = 1000;

fn bus_error(error: crate::events::BusError) -> ApiError {
    tracing::error!(%error, "event bus failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

/// Run blocking bus work off the runtime.
async fn on_bus<R: Send + 'static>(
    state: &AdminState,
    work: impl FnOnce(&dyn crate::events::EventBus) -> Result<R, crate::events::BusError>
    + Send
    + 'static,
) -> Result<R, ApiError> {
    let bus = state.services.platform().bus.clone();
    tokio::task::spawn_blocking(move || work(&*bus))
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .map_err(bus_error)
}

/// `GET /v1/events`: topics and subscriptions, deliveries waiting, dead letters.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    responses((status = 200, description = "The event bus", body = api::EventsView))
)]
pub async fn show(State(state): State<AdminState>) -> Result<Json<api::EventsView>, ApiError> {
    let (pending, dead) = on_bus(&state, |bus| {
        Ok((bus.pending()?, bus.dead_letters(MAX_DEAD_LETTERS)?))
    })
    .await?;
    let subscriptions = state.services.subscriptions();
    let topics: std::collections::BTreeSet<String> = subscriptions
        .iter()
        .map(|(_, subscription)| subscription.topic.clone())
        .collect();
    Ok(Json(api::EventsView {
        topics: topics.into_iter().collect(),
        subscriptions: subscriptions
            .into_iter()
            .map(|(service, subscription)| api::Subscription {
                service,
                topic: subscription.topic,
                route: subscription.route,
                max_attempts: subscription.max_attempts,
            })
            .collect(),
        pending,
        dead_letters: dead
            .into_iter()
            .map(|letter| api::DeadLetter {
                event_id: letter.event_id,
                subscriber: letter.subscriber,
                topic: letter.topic,
                attempts: letter.attempts,
                reason: letter.reason,
                payload_bytes: letter.payload_bytes as u64,
            })
            .collect(),
    }))
}

/// `POST /v1/events/dead/{subscriber}/{event_id}/replay`: deliver it again.
#[utoipa::path(
    post,
    path = "/v1/events/dead/{subscriber}/{event_id}/replay",
    tag = "events",
    params(
        ("subscriber" = String, Path, description = "The subscribing service"),
        ("event_id" = String, Path, description = "The event"),
    ),
    responses(
        (status = 200, description = "Delivered again"),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<AdminState>,
    Path((subscriber, event_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let found = on_bus(&state, move |bus| bus.replay(&event_id, &subscriber)).await?;
    if found {
        state.services.platform().published.wake();
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such dead letter"))
    }
}

/// `DELETE /v1/events/dead/{subscriber}/{event_id}`: forget it.
#[utoipa::path(
    delete,
    path = "/v1/events/dead/{subscriber}/{event_id}",
    tag = "events",
    params(
        ("subscriber" = String, Path, description = "The subscribing service"),
        ("event_id" = String, Path, description = "The event"),
    ),
    responses(
        (status = 204, description = "Dropped"),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    )
)]
pub async fn drop_dead(
    State(state): State<AdminState>,
    Path((subscriber, event_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let found = on_bus(&state, move |bus| bus.drop_dead(&event_id, &subscriber)).await?;
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such dead letter"))
    }
}
