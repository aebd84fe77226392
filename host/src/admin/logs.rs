//! `GET /v1/services/{name}/logs`: a service's recent log lines, as JSON, or followed
//! as server-sent events (`?follow=1`). Filters: `level` (that level and above),
//! `request_id`, `tail` (how many kept lines first; default 100).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use shoal_api::ErrorBody;
use shoal_api::logs as api;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

use super::AdminState;
use super::error::ApiError;
use crate::telemetry::guest_logs::{LogLine, MAX_LINES, level_rank};

/// Followers the admin API serves at once; more get 429.
pub const MAX_FOLLOWERS: usize = 64;

/// The API's view of a log line.
fn line_view(line: &LogLine) -> api::LogLine {
    api::LogLine {
        seq: line.seq,
        at: line.at.clone(),
        level: line.level.to_owned(),
        source: line.source.to_owned(),
        version: line.version.clone(),
        request_id: line.request_id.clone(),
        message: line.message.clone(),
        fields: line.fields.clone(),
    }
}

/// Which lines a reader wants.
struct Filter {
    min_rank: u8,
    request_id: Option<String>,
}

impl Filter {
    fn keeps(&self, line: &LogLine) -> bool {
        level_rank(line.level).unwrap_or(0) >= self.min_rank
            && self
                .request_id
                .as_deref()
                .is_none_or(|id| id == line.request_id)
    }
}

fn event(line: &LogLine) -> Event {
    Event::default()
        .event("line")
        .id(line.seq.to_string())
        .data(serde_json::to_string(&line_view(line)).unwrap_or_default())
}

/// `GET /v1/services/{name}/logs[?follow=1&level=warn&request_id=R&tail=N]`.
#[utoipa::path(
    get,
    path = "/v1/services/{name}/logs",
    tag = "services",
    params(("name" = String, Path, description = "The service"), api::LogQuery),
    responses(
        (status = 200, description = "Its recent lines; with `follow`, a `text/event-stream` of `line` events (a LogLine each) and `dropped` events (a Dropped)", body = api::LogLines),
        (status = 400, description = "Not a level", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 429, description = "Too many followers", body = ErrorBody),
    )
)]
pub async fn logs(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<api::LogQuery>,
) -> Result<Response, ApiError> {
    let min_rank = match query.level.as_deref() {
        None => 0,
        Some(level) => level_rank(level).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "level must be trace, debug, info, warn or error",
            )
        })?,
    };
    let filter = Filter {
        min_rank,
        request_id: query.request_id,
    };
    let tail = query.tail.unwrap_or(100).min(MAX_LINES);
    let follow = matches!(query.follow.as_deref(), Some("1" | "true" | ""));
    let telemetry = &state.services.platform().telemetry;
    // Only the service's own deploys make its ring: one removed meanwhile is gone.
    let ring = telemetry.guest_logs.get(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no service named `{name}`"))
    })?;
    if !follow {
        let lines = ring.recent(tail, |line| filter.keeps(line));
        let lines = lines.iter().map(|line| line_view(line)).collect();
        return Ok(Json(api::LogLines { lines }).into_response());
    }
    let Ok(permit) = state.followers.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_FOLLOWERS} log followers are connected already; try again later"),
        ));
    };
    let (kept, receiver) = ring.follow(tail, |line| filter.keeps(line));
    drop(ring);
    let closing = telemetry.guest_logs.closing();
    struct Follow {
        kept: std::vec::IntoIter<Arc<LogLine>>,
        receiver: tokio::sync::broadcast::Receiver<Arc<LogLine>>,
        closing: tokio::sync::watch::Receiver<bool>,
        filter: Filter,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let start = Follow {
        kept: kept.into_iter(),
        receiver,
        closing,
        filter,
        _permit: permit,
    };
    let stream = futures::stream::unfold(start, |mut follow| async move {
        if let Some(line) = follow.kept.next() {
            return Some((Ok::<_, Infallible>(event(&line)), follow));
        }
        loop {
            let received = tokio::select! {
                _ = follow.closing.wait_for(|closing| *closing) => return None,
                received = follow.receiver.recv() => received,
            };
            match received {
                Ok(line) if follow.filter.keeps(&line) => {
                    return Some((Ok(event(&line)), follow));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    let dropped = api::Dropped { lines: missed };
                    let event = Event::default()
                        .event("dropped")
                        .data(serde_json::to_string(&dropped).unwrap_or_default());
                    return Some((Ok(event), follow));
                }
                // The service was removed and its last version is gone.
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
