//! `/v1/cluster` and `/v1/hosts/{id}/drain`: the hosts of a cluster.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use shoal_api::ErrorBody;
use shoal_api::cluster as api;

use super::AdminState;
use super::error::ApiError;
use crate::cluster::Cluster;

fn member(state: &AdminState) -> Result<&std::sync::Arc<Cluster>, ApiError> {
    state.cluster.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this host is not a member of a cluster (serve with --etcd to join one)",
        )
    })
}

/// `GET /v1/cluster`: every host that joined, its state and what is placed on it.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster", body = api::Cluster),
        (status = 404, description = "This host is not in a cluster", body = ErrorBody),
    )
)]
pub async fn show(State(state): State<AdminState>) -> Result<Json<api::Cluster>, ApiError> {
    let cluster = member(&state)?;
    let view = cluster.view();
    let demands = cluster.memory_demands();
    let hosts = view
        .members
        .values()
        .map(|host| {
            let services: Vec<String> = view
                .placements
                .iter()
                .filter(|(_, hosts)| hosts.contains(&host.id))
                .map(|(name, _)| name.clone())
                .collect();
            let used: u64 = services
                .iter()
                .map(|name| demands.get(name).copied().unwrap_or(0))
                .sum();
            let state = if !view.hosts.contains_key(&host.id) {
                "down"
            } else if view.drains.contains_key(&host.id) {
                "draining"
            } else {
                "up"
            };
            api::Host {
                id: host.id.clone(),
                address: host.address.clone(),
                admin_address: host.admin_address.clone(),
                state: state.to_owned(),
                labels: host.labels.clone(),
                memory_budget_mb: host.memory_budget_mb,
                memory_used_mb: used,
                memory_free_mb: host.memory_budget_mb.saturating_sub(used),
                services,
            }
        })
        .collect();
    Ok(Json(api::Cluster {
        host: cluster.host_id().to_owned(),
        leader: view.leader().map(str::to_owned),
        hosts,
    }))
}

/// `POST /v1/hosts/{id}/drain`: move every replica off the host (each leaves once its
/// replacement serves); the host takes no new ones.
#[utoipa::path(
    post,
    path = "/v1/hosts/{id}/drain",
    tag = "cluster",
    params(("id" = String, Path, description = "The host")),
    responses(
        (status = 204, description = "Draining"),
        (status = 404, description = "No such host, or not in a cluster", body = ErrorBody),
        (status = 503, description = "etcd is unavailable", body = ErrorBody),
    )
)]
pub async fn drain(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_draining(&state, &id, true).await
}

/// `DELETE /v1/hosts/{id}/drain`: the host takes replicas again.
#[utoipa::path(
    delete,
    path = "/v1/hosts/{id}/drain",
    tag = "cluster",
    params(("id" = String, Path, description = "The host")),
    responses(
        (status = 204, description = "In service"),
        (status = 404, description = "No such host, or not in a cluster", body = ErrorBody),
        (status = 503, description = "etcd is unavailable", body = ErrorBody),
    )
)]
pub async fn undrain(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_draining(&state, &id, false).await
}

async fn set_draining(
    state: &AdminState,
    id: &str,
    draining: bool,
) -> Result<StatusCode, ApiError> {
    let cluster = member(state)?;
    if !cluster.view().members.contains_key(id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no host `{id}` in the cluster"),
        ));
    }
    cluster.set_draining(id, draining).await?;
    Ok(StatusCode::NO_CONTENT)
}
