//! `/v1/services` handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_api::ErrorBody;
use shoal_api::services as api;

use super::AdminState;
use super::error::ApiError;
use crate::cluster::records::Change;
use crate::data_dir::VersionRecord;
use crate::manifest::Manifest;
use crate::runtime::CodeTier;
use crate::services::limiter::Scale;
use crate::services::state::AutoRollback;
use crate::services::{DeployKind, DeployMode, FailedService, LiveService, ServiceError};

/// The API's view of a running service. The secrets' status is added only in the
/// answer about one service.
fn running_view(service: &LiveService) -> api::RunningService {
    let versions = service.versions();
    let deployment = &versions.stable;
    let record = &deployment.record;
    let code = deployment.executor.info();
    let scale = service.limiter.scale();
    let (in_flight, queued) = service.limiter.load();
    let usage = deployment.context.meter.usage();
    api::RunningService {
        name: record.name.clone(),
        version: record.version.clone(),
        digest: record.digest.clone(),
        deployed_at: record.deployed_at.clone(),
        route: deployment.route().to_owned(),
        code: tier(code.tier),
        wasi: code.wasi.to_owned(),
        limits: api::Limits {
            memory_mb: u64::from(deployment.spec.memory_mb),
            memory_budget_mb: u64::from(deployment.spec.memory_mb)
                * u64::from(scale.max_concurrency),
            timeout_ms: deployment.timeout().as_millis() as u64,
            max_concurrency: scale.max_concurrency,
            queue: scale.queue,
            scaled_by_operator: versions.scale_override.is_some(),
        },
        load: api::Load { in_flight, queued },
        requests: service
            .faults
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        faults: service
            .faults
            .snapshot()
            .into_iter()
            .map(|(kind, count)| (kind.to_owned(), count))
            .collect(),
        usage: api::Usage {
            cpu_seconds: usage.cpu_seconds,
            instances_created: usage.instances_created,
            memory_peak_bytes: usage.memory_peak_bytes,
        },
        config_keys: record.manifest.config.keys().cloned().collect(),
        store_bytes: deployment.context.store.size().ok(),
        canary: versions.canary.as_ref().map(|canary| api::Canary {
            version: canary.deployment.record.version.clone(),
            digest: canary.deployment.record.digest.clone(),
            code: tier(canary.deployment.executor.info().tier),
            weight: canary.weight,
            auto_rollback: canary.auto_rollback.as_ref().map(|rule| api::AutoRollback {
                max_error_rate: rule.max_error_rate,
                window_ms: rule.window_ms,
                min_requests: rule.min_requests,
            }),
        }),
        history: versions.history.iter().map(version_view).collect(),
        secrets: None,
        replicas: None,
        placements: Vec::new(),
        revision: None,
        shortfall: None,
    }
}

/// Where the cluster placed `name`, for the API.
fn placements(cluster: &crate::cluster::Cluster, name: &str) -> Vec<api::Placement> {
    cluster
        .placements_of(name)
        .into_iter()
        .map(|(host, address, state)| api::Placement {
            host,
            address,
            state: state.to_owned(),
        })
        .collect()
}

/// A running service's view with its replicas and placements, in a cluster.
fn with_cluster(state: &AdminState, mut view: api::RunningService) -> api::RunningService {
    if let Some(cluster) = &state.cluster {
        let record = cluster.view().services.get(&view.name).cloned();
        view.replicas = record.as_ref().map(|(record, _)| record.replicas());
        view.revision = record.map(|(_, revision)| revision);
        view.placements = placements(cluster, &view.name);
        view.shortfall = cluster.shortfall(&view.name);
    }
    view
}

/// A service of the cluster that does not run on this host.
fn elsewhere_view(
    cluster: &crate::cluster::Cluster,
    name: &str,
    record: &crate::cluster::records::ServiceRecord,
    revision: i64,
) -> api::ElsewhereService {
    let current = &record.state.current;
    api::ElsewhereService {
        name: name.to_owned(),
        version: current.version.clone(),
        digest: current.digest.clone(),
        deployed_at: current.deployed_at.clone(),
        route: record.route(),
        canary: record
            .state
            .canary
            .as_ref()
            .map(|c| version_view(&c.record)),
        canary_weight: record.state.canary.as_ref().map(|c| c.weight),
        history: record.state.history.iter().map(version_view).collect(),
        replicas: record.replicas(),
        placements: placements(cluster, name),
        shortfall: cluster.shortfall(name),
        revision,
    }
}

fn tier(tier: CodeTier) -> api::CodeTier {
    match tier {
        CodeTier::Baseline => api::CodeTier::Baseline,
        CodeTier::Optimized => api::CodeTier::Optimized,
    }
}

/// The API's view of a service that failed to restore.
fn failed_view(name: &str, failed: &FailedService) -> api::FailedService {
    let record = &failed.state.current;
    api::FailedService {
        name: name.to_owned(),
        version: record.version.clone(),
        digest: record.digest.clone(),
        deployed_at: record.deployed_at.clone(),
        route: record
            .manifest
            .route
            .clone()
            .unwrap_or_else(|| format!("/{name}")),
        reason: failed.reason.clone(),
        history: failed.state.history.iter().map(version_view).collect(),
    }
}

fn version_view(record: &VersionRecord) -> api::Version {
    api::Version {
        version: record.version.clone(),
        digest: record.digest.clone(),
        deployed_at: record.deployed_at.clone(),
    }
}

fn secret_status(status: &str) -> api::SecretStatus {
    match status {
        "available" => api::SecretStatus::Available,
        "denied" => api::SecretStatus::Denied,
        "not-declared" => api::SecretStatus::NotDeclared,
        _ => api::SecretStatus::Missing,
    }
}

fn view_of(state: &AdminState, name: &str) -> Result<Json<api::Service>, ApiError> {
    match state.services.existing(name) {
        Ok(service) => {
            let mut view = running_view(&service);
            // Whether each secret it names can be read now (never the value).
            let secrets = &state.services.platform().secrets;
            let status: std::collections::BTreeMap<String, api::SecretStatus> = service
                .versions()
                .stable
                .record
                .manifest
                .secrets
                .iter()
                .map(|secret| (secret.clone(), secret_status(secrets.status(name, secret))))
                .collect();
            if !status.is_empty() {
                view.secrets = Some(status);
            }
            Ok(Json(api::Service::Running(Box::new(with_cluster(
                state, view,
            )))))
        }
        Err(ServiceError::NotFound(_)) => match state.services.failed_service(name) {
            Some(failed) => Ok(Json(api::Service::Failed(failed_view(name, &failed)))),
            None => {
                let elsewhere = state.cluster.as_ref().and_then(|cluster| {
                    let view = cluster.view();
                    let (record, revision) = view.services.get(name)?;
                    Some(elsewhere_view(cluster, name, record, *revision))
                });
                match elsewhere {
                    Some(view) => Ok(Json(api::Service::Elsewhere(view))),
                    None => Err(ServiceError::NotFound(name.to_owned()).into()),
                }
            }
        },
        Err(error) => Err(error.into()),
    }
}

/// `GET /v1/services`: running services, and those that failed to restore.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "services",
    responses((status = 200, description = "Every service, by name", body = api::ServiceList))
)]
pub async fn list(State(state): State<AdminState>) -> Json<api::ServiceList> {
    let mut services: Vec<api::Service> = state
        .services
        .table()
        .services()
        .iter()
        .map(|service| api::Service::Running(Box::new(with_cluster(&state, running_view(service)))))
        .collect();
    for (name, failed) in state.services.failed() {
        services.push(api::Service::Failed(failed_view(&name, &failed)));
    }
    if let Some(cluster) = &state.cluster {
        let view = cluster.view();
        for (name, (record, revision)) in &view.services {
            if !services.iter().any(|service| service.name() == name) {
                services.push(api::Service::Elsewhere(elsewhere_view(
                    cluster, name, record, *revision,
                )));
            }
        }
    }
    services.sort_by(|a, b| a.name().cmp(b.name()));
    Json(api::ServiceList { services })
}

/// `GET /v1/services/{name}`
#[utoipa::path(
    get,
    path = "/v1/services/{name}",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "The service", body = api::Service),
        (status = 404, description = "No such service", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::Service>, ApiError> {
    view_of(&state, &name)
}

/// `PUT /v1/services/{name}/scale`: change concurrency and queue live.
#[utoipa::path(
    put,
    path = "/v1/services/{name}/scale",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    request_body = api::ScaleRequest,
    responses(
        (status = 200, description = "The service, scaled", body = api::Service),
        (status = 400, description = "Out of range", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
    )
)]
pub async fn scale(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<api::Service>, ApiError> {
    let request: api::ScaleRequest = parse_json(&body)?;
    if request.max_concurrency.is_none() && request.replicas.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give `max_concurrency`, `replicas`, or both",
        ));
    }
    let Some(cluster) = &state.cluster else {
        if request.replicas.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`replicas` needs a cluster: this host serves alone (no --etcd)",
            ));
        }
        let current = state.services.existing(&name)?.limiter.scale();
        let scale = Scale {
            max_concurrency: request.max_concurrency.unwrap_or(current.max_concurrency),
            queue: request.queue.unwrap_or(current.queue),
        };
        state.services.scale(&name, scale).await?;
        return view_of(&state, &name);
    };
    if let Some(replicas) = request.replicas {
        if !(1..=crate::manifest::MAX_REPLICAS).contains(&replicas) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`replicas` must be 1 to {}", crate::manifest::MAX_REPLICAS),
            ));
        }
        cluster
            .change(&name, None, Change::Replicas(replicas))
            .await?;
    }
    if let Some(max_concurrency) = request.max_concurrency {
        let queue = match request.queue {
            Some(queue) => queue,
            None => cluster
                .view()
                .services
                .get(&name)
                .map(|(record, _)| {
                    record.state.scale.map_or_else(
                        || {
                            crate::services::spec::DeploymentSpec::resolve(
                                &record.state.current,
                                state.services.defaults(),
                            )
                            .scale
                            .queue
                        },
                        |s| s.queue,
                    )
                })
                .ok_or_else(|| ServiceError::NotFound(name.clone()))?,
        };
        let scale = Scale {
            max_concurrency,
            queue,
        };
        crate::services::spec::check_scale(scale).map_err(ServiceError::from)?;
        cluster.change(&name, None, Change::Scale(scale)).await?;
    }
    view_of(&state, &name)
}

/// `POST /v1/services/{name}/rollback`: back to the previous (or a named) version.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/rollback",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    request_body(content = Option<api::RollbackRequest>, description = "The version; none: the previous one"),
    responses(
        (status = 200, description = "The service, on the earlier version", body = api::Service),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 409, description = "No such earlier version", body = ErrorBody),
    )
)]
pub async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<api::Service>, ApiError> {
    let request: api::RollbackRequest = if body.is_empty() {
        api::RollbackRequest::default()
    } else {
        parse_json(&body)?
    };
    match &state.cluster {
        Some(cluster) => {
            cluster
                .change(&name, None, Change::Rollback(request.version))
                .await?;
        }
        None => {
            state
                .services
                .rollback(&name, request.version.as_deref())
                .await?;
        }
    }
    view_of(&state, &name)
}

/// `PUT /v1/services/{name}/canary`: change the canary's share of traffic.
#[utoipa::path(
    put,
    path = "/v1/services/{name}/canary",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    request_body = api::CanaryWeightRequest,
    responses(
        (status = 200, description = "The service", body = api::Service),
        (status = 409, description = "It has no canary", body = ErrorBody),
    )
)]
pub async fn canary_weight(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<api::Service>, ApiError> {
    let request: api::CanaryWeightRequest = parse_json(&body)?;
    match &state.cluster {
        Some(cluster) => {
            if request.weight > 100 {
                return Err(ServiceError::from(crate::services::Invalid::CanaryWeight(
                    request.weight,
                ))
                .into());
            }
            cluster
                .change(&name, None, Change::CanaryWeight(request.weight))
                .await?;
        }
        None => {
            state
                .services
                .set_canary_weight(&name, request.weight)
                .await?;
        }
    }
    view_of(&state, &name)
}

/// `POST /v1/services/{name}/canary/promote`: the canary becomes the current version.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/canary/promote",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "The service, on the promoted version", body = api::Service),
        (status = 409, description = "It has no canary", body = ErrorBody),
    )
)]
pub async fn promote(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::Service>, ApiError> {
    match &state.cluster {
        Some(cluster) => {
            cluster.change(&name, None, Change::Promote).await?;
        }
        None => {
            state.services.promote_canary(&name).await?;
        }
    }
    view_of(&state, &name)
}

/// `DELETE /v1/services/{name}/canary`: drop the canary.
#[utoipa::path(
    delete,
    path = "/v1/services/{name}/canary",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "The service, without its canary", body = api::Service),
        (status = 409, description = "It has no canary", body = ErrorBody),
    )
)]
pub async fn abort_canary(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<api::Service>, ApiError> {
    match &state.cluster {
        Some(cluster) => {
            cluster.change(&name, None, Change::AbortCanary).await?;
        }
        None => {
            state
                .services
                .abort_canary(&name, "rolled back by the operator")
                .await?;
        }
    }
    view_of(&state, &name)
}

/// `/v1/services/{name}/call/{path}`, any method: the request, to `/{path}` of the
/// service, as an in-process call from the caller `operator`. It reaches what clients
/// of the gateway do not (`[inbound] public = false`, `private_paths`); the answer is
/// the service's own.
#[utoipa::path(
    post,
    path = "/v1/services/{name}/call/{path}",
    tag = "services",
    params(
        ("name" = String, Path, description = "The service"),
        ("path" = String, Path, description = "The path below its route; any method works, not only POST"),
    ),
    request_body(description = "Passed on as it is", content(("application/octet-stream"))),
    responses(
        (status = 200, description = "The service's own answer, whatever its status"),
        (status = 403, description = "The token may not change the service", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
    )
)]
pub async fn call(
    State(state): State<AdminState>,
    Path((name, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let local = match state.services.existing(&name) {
        Ok(service) => Some(service),
        Err(ServiceError::NotFound(_))
            if state
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.view().services.contains_key(&name)) =>
        {
            None
        }
        Err(error) => return Err(error.into()),
    };
    let (mut parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, state.max_upload_bytes)
        .await
        .map_err(|error| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()))?;
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    parts.uri = path_and_query.parse().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid path `{path_and_query}`: {error}"),
        )
    })?;
    parts.headers.remove(header::AUTHORIZATION);
    crate::protocol::strip_hop_by_hop(&mut parts.headers);
    crate::protocol::remove_host_owned(&mut parts.headers, true);
    parts.headers.insert(
        crate::protocol::CALLER.clone(),
        axum::http::HeaderValue::from_static(crate::protocol::OPERATOR),
    );
    let request_id = crate::protocol::RequestId::from_headers(&parts.headers);
    let service = match (local, &state.cluster) {
        (Some(service), _) => service,
        // In a cluster, a service that runs on other hosts is called on one of them.
        (None, Some(cluster)) => {
            return call_elsewhere(cluster, &name, parts, body, &request_id).await;
        }
        (None, None) => return Err(ServiceError::NotFound(name).into()),
    };
    let request = axum::http::Request::from_parts(parts, http_body_util::Full::new(body));
    let response = state
        .services
        .serve(
            &service,
            request,
            request_id,
            crate::deadline::Deadline::longest(),
        )
        .await;
    Ok(response.map(axum::body::Body::new))
}

/// The revision an `If-Match` header asks for (`"17"` or `17`), if any.
fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|text| text.trim().trim_matches('"'))
        .and_then(|text| text.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "`If-Match` must be a service's `revision` (a number)",
            )
        })
}

/// An operator's call to `name`, which runs on other hosts of the cluster: sent to one
/// of them as a request between hosts, its answer passed back as it is.
async fn call_elsewhere(
    cluster: &crate::cluster::Cluster,
    name: &str,
    mut parts: axum::http::request::Parts,
    body: Bytes,
    request_id: &crate::protocol::RequestId,
) -> Result<Response, ApiError> {
    use http_body_util::BodyExt as _;
    crate::protocol::set_request_id(&mut parts.headers, request_id);
    if let Ok(value) = axum::http::HeaderValue::from_str(name) {
        parts.headers.insert(crate::protocol::TARGET.clone(), value);
    }
    let path = parts.uri.clone();
    // A host that cannot be reached (one that died, still listed until its lease
    // expires) never got the call: the next one is tried.
    let mut last_error = format!("no host of the cluster serves `{name}` right now");
    for address in cluster.hosts_serving(name).await {
        let mut attempt = parts.clone();
        attempt.uri = cluster
            .peers()
            .url(&address, &path.to_string())
            .parse()
            .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("{error}")))?;
        let request = axum::http::Request::from_parts(
            attempt,
            http_body_util::Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        match cluster.peers().send(request).await {
            Ok(response) => return Ok(response.map(axum::body::Body::new)),
            Err(error) if error.is_connect() => {
                last_error = format!("calling `{name}` on {address}: {error}");
            }
            Err(error) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("calling `{name}` on {address}: {error}"),
                ));
            }
        }
    }
    Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, last_error))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {error}"),
        )
    })
}

/// How a deploy with `query` takes traffic.
fn deploy_mode(query: &api::DeployQuery) -> Result<DeployMode, ApiError> {
    let Some(weight) = query.canary else {
        if query.max_error_rate.is_some()
            || query.window_ms.is_some()
            || query.min_requests.is_some()
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`max_error_rate`, `window_ms` and `min_requests` need `canary`",
            ));
        }
        return Ok(DeployMode::Replace);
    };
    let auto_rollback = query.max_error_rate.map(|max_error_rate| AutoRollback {
        max_error_rate,
        window_ms: query.window_ms.unwrap_or(30_000),
        min_requests: query.min_requests.unwrap_or(20),
    });
    Ok(DeployMode::Canary {
        weight,
        auto_rollback,
    })
}

/// `DELETE /v1/services/{name}`
#[utoipa::path(
    delete,
    path = "/v1/services/{name}",
    tag = "services",
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 204, description = "Removed; requests running on it finish"),
        (status = 404, description = "No such service", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    match &state.cluster {
        Some(cluster) => cluster.remove(&name).await?,
        None => state.services.remove(&name).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/services/{name}`: the component as the body (`application/wasm`), or a
/// `multipart/form-data` body with a `component` part and an optional `manifest`
/// part (TOML).
#[utoipa::path(
    put,
    path = "/v1/services/{name}",
    tag = "services",
    params(("name" = String, Path, description = "The service"), api::DeployQuery),
    request_body(
        description = "The component (`application/wasm`), or `multipart/form-data` with a `component` part and an optional `manifest` part (TOML)",
        content(("application/wasm"), ("multipart/form-data"))
    ),
    responses(
        (status = 201, description = "Created", body = api::Service),
        (status = 200, description = "Replaced, or running as a canary", body = api::Service),
        (status = 400, description = "Not a component this host can run, or a bad manifest", body = ErrorBody),
        (status = 403, description = "The token may not deploy it, or its route would sit inside the route of a service the token may not change", body = ErrorBody),
        (status = 409, description = "Its route belongs to another service", body = ErrorBody),
        (status = 413, description = "Larger than --max-upload-bytes", body = ErrorBody),
    )
)]
pub async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<api::DeployQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    // Refuse a declared oversize body before reading any of it (and close the
    // connection, whose unread body cannot carry another request).
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
        )
        .closing());
    }
    let caller = request.extensions().get::<super::auth::Caller>().cloned();
    let if_match = if_match(request.headers())?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/wasm")
        .to_ascii_lowercase();
    // Other checks come after the (bounded) body is read, so the connection stays
    // usable for the client's next request.
    let (component, manifest) = if content_type.starts_with("multipart/form-data") {
        read_multipart(request, &state).await?
    } else {
        // Any other body is taken as the component itself (`application/wasm`
        // preferred); its bytes, not its label, decide whether it is acceptable.
        let body = Bytes::from_request(request, &state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        (body, Ok(Manifest::default()))
    };

    let Query(query) =
        query.map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    let mode = deploy_mode(&query)?;
    let manifest = manifest?;
    // A guest can hand out what it reads: below `admin`, a deploy may name only the
    // secrets granted to this service.
    if caller
        .as_ref()
        .is_none_or(|caller| caller.grant.scope != crate::access::Scope::Admin)
    {
        let secrets = &state.services.platform().secrets;
        for secret in &manifest.secrets {
            secrets
                .deployer_may_name(&name, secret)
                .map_err(|reason| ApiError::new(StatusCode::FORBIDDEN, reason))?;
        }
    }
    // No authenticated caller (never the case behind the router's middleware) may
    // nest nothing.
    let grant = caller.map_or(
        crate::access::Grant {
            scope: crate::access::Scope::Read,
            services: Vec::new(),
        },
        |caller| caller.grant,
    );
    let status = match &state.cluster {
        Some(cluster) => {
            let created = cluster
                .deploy(&name, component, manifest, mode, &grant, if_match)
                .await?;
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            }
        }
        None => {
            let (_, kind) = state
                .services
                .deploy_as(&name, component, manifest, mode, &grant)
                .await?;
            match kind {
                DeployKind::Created => StatusCode::CREATED,
                DeployKind::Replaced | DeployKind::Canary => StatusCode::OK,
            }
        }
    };
    Ok((status, view_of(&state, &name)?).into_response())
}

/// The parts of a multipart deploy. A bad manifest is returned as an error only after
/// the whole body has been read.
async fn read_multipart(
    request: Request,
    state: &AdminState,
) -> Result<(Bytes, Result<Manifest, ApiError>), ApiError> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let mut component = None;
    let mut manifest = Ok(Manifest::default());
    let part_error = |error: axum::extract::multipart::MultipartError| {
        ApiError::new(error.status(), error.body_text())
    };
    while let Some(field) = multipart.next_field().await.map_err(part_error)? {
        match field.name() {
            Some("component") => component = Some(field.bytes().await.map_err(part_error)?),
            Some("manifest") => {
                let text = field.text().await.map_err(part_error)?;
                manifest = Manifest::from_toml(&text)
                    .map_err(|error| ApiError::from(ServiceError::from(error)));
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
