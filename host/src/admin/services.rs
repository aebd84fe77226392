//! `/v1/services` handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AdminState;
use super::error::ApiError;
use crate::data_dir::VersionRecord;
use crate::manifest::Manifest;
use crate::runtime::CodeTier;
use crate::services::limiter::Scale;
use crate::services::state::AutoRollback;
use crate::services::{DeployKind, DeployMode, FailedService, LiveService, ServiceError};

/// What the admin API shows of a service.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    name: String,
    version: String,
    digest: String,
    deployed_at: String,
    route: String,
    state: &'static str,
    /// Which compiler's code new requests run: `baseline` until the optimised code
    /// of a big new component is ready, then `optimized`.
    code: CodeTier,
    /// Which WASI its HTTP handler is: `p2` (an instance serves one request at a time)
    /// or `p3` (an instance serves several at once).
    wasi: &'static str,
    limits: LimitsView,
    load: LoadView,
    requests: u64,
    faults: std::collections::BTreeMap<&'static str, u64>,
    /// What it has used of the host (CPU, instances, memory).
    usage: crate::telemetry::metering::Usage,
    config_keys: Vec<String>,
    /// Bytes of keys and values in the service's store.
    store_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<CanaryView>,
    history: Vec<VersionView>,
}

#[derive(Debug, Serialize)]
struct LimitsView {
    memory_mb: u64,
    /// What the service can hold at most: memory per instance × concurrency.
    memory_budget_mb: u64,
    timeout_ms: u64,
    max_concurrency: u32,
    queue: u32,
    scaled_by_operator: bool,
}

#[derive(Debug, Serialize)]
struct LoadView {
    in_flight: u32,
    queued: u32,
}

#[derive(Debug, Serialize)]
struct CanaryView {
    version: String,
    digest: String,
    code: CodeTier,
    weight: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_rollback: Option<AutoRollback>,
}

#[derive(Debug, Serialize)]
struct VersionView {
    version: String,
    digest: String,
    deployed_at: String,
}

impl From<&LiveService> for ServiceView {
    fn from(service: &LiveService) -> Self {
        let versions = service.versions();
        let deployment = &versions.stable;
        let record = &deployment.record;
        let code = deployment.executor.info();
        let scale = service.limiter.scale();
        let (in_flight, queued) = service.limiter.load();
        Self {
            name: record.name.clone(),
            version: record.version.clone(),
            digest: record.digest.clone(),
            deployed_at: record.deployed_at.clone(),
            route: deployment.route().to_owned(),
            state: "running",
            code: code.tier,
            wasi: code.wasi,
            limits: LimitsView {
                memory_mb: u64::from(deployment.spec.memory_mb),
                memory_budget_mb: u64::from(deployment.spec.memory_mb)
                    * u64::from(scale.max_concurrency),
                timeout_ms: deployment.timeout().as_millis() as u64,
                max_concurrency: scale.max_concurrency,
                queue: scale.queue,
                scaled_by_operator: versions.scale_override.is_some(),
            },
            load: LoadView { in_flight, queued },
            requests: service
                .faults
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            faults: service.faults.snapshot(),
            usage: deployment.context.meter.usage(),
            config_keys: record.manifest.config.keys().cloned().collect(),
            store_bytes: deployment.context.store.size().ok(),
            canary: versions.canary.as_ref().map(|canary| CanaryView {
                version: canary.deployment.record.version.clone(),
                digest: canary.deployment.record.digest.clone(),
                code: canary.deployment.executor.info().tier,
                weight: canary.weight,
                auto_rollback: canary.auto_rollback.clone(),
            }),
            history: versions.history.iter().map(VersionView::from).collect(),
        }
    }
}

/// What the admin API shows of a service that failed to restore.
#[derive(Debug, Serialize)]
pub struct FailedView {
    name: String,
    version: String,
    digest: String,
    deployed_at: String,
    route: String,
    state: &'static str,
    reason: String,
    history: Vec<VersionView>,
}

impl FailedView {
    fn new(name: &str, failed: &FailedService) -> Self {
        let record = &failed.state.current;
        Self {
            name: name.to_owned(),
            version: record.version.clone(),
            digest: record.digest.clone(),
            deployed_at: record.deployed_at.clone(),
            route: record
                .manifest
                .route
                .clone()
                .unwrap_or_else(|| format!("/{name}")),
            state: "failed",
            reason: failed.reason.clone(),
            history: failed.state.history.iter().map(VersionView::from).collect(),
        }
    }
}

impl From<&VersionRecord> for VersionView {
    fn from(record: &VersionRecord) -> Self {
        VersionView {
            version: record.version.clone(),
            digest: record.digest.clone(),
            deployed_at: record.deployed_at.clone(),
        }
    }
}

fn view_of(state: &AdminState, name: &str) -> Result<Json<serde_json::Value>, ApiError> {
    let view = match state.services.existing(name) {
        Ok(service) => serde_json::to_value(ServiceView::from(service.as_ref())).map(|mut view| {
            // Whether each secret it names can be read now (never the value).
            let secrets = &state.services.platform().secrets;
            let status: serde_json::Map<String, serde_json::Value> = service
                .versions()
                .stable
                .record
                .manifest
                .secrets
                .iter()
                .map(|secret| (secret.clone(), secrets.status(name, secret).into()))
                .collect();
            if !status.is_empty() {
                view["secrets"] = status.into();
            }
            view
        }),
        Err(ServiceError::NotFound(_)) => match state.services.failed_service(name) {
            Some(failed) => serde_json::to_value(FailedView::new(name, &failed)),
            None => return Err(ServiceError::NotFound(name.to_owned()).into()),
        },
        Err(error) => return Err(error.into()),
    };
    view.map(Json)
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
}

/// `GET /v1/services`: running services, and those that failed to restore.
pub async fn list(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let mut services: Vec<(String, serde_json::Value)> = state
        .services
        .table()
        .services()
        .iter()
        .map(|service| {
            let view = serde_json::to_value(ServiceView::from(service.as_ref()));
            (service.name().to_owned(), view.unwrap_or_default())
        })
        .collect();
    for (name, failed) in state.services.failed() {
        let view = serde_json::to_value(FailedView::new(&name, &failed));
        services.push((name, view.unwrap_or_default()));
    }
    services.sort_by(|a, b| a.0.cmp(&b.0));
    let services: Vec<serde_json::Value> = services.into_iter().map(|(_, view)| view).collect();
    Json(serde_json::json!({ "services": services }))
}

/// `GET /v1/services/{name}`
pub async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    view_of(&state, &name)
}

/// Body of `PUT /v1/services/{name}/scale`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    max_concurrency: u32,
    #[serde(default)]
    queue: Option<u32>,
}

/// `PUT /v1/services/{name}/scale`: change concurrency and queue live.
pub async fn scale(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: ScaleRequest = parse_json(&body)?;
    let current = state.services.existing(&name)?.limiter.scale();
    let scale = Scale {
        max_concurrency: request.max_concurrency,
        queue: request.queue.unwrap_or(current.queue),
    };
    state.services.scale(&name, scale).await?;
    view_of(&state, &name)
}

/// Body of `POST /v1/services/{name}/rollback`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    version: Option<String>,
}

/// `POST /v1/services/{name}/rollback`: back to the previous (or a named) version.
pub async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        parse_json(&body)?
    };
    state
        .services
        .rollback(&name, request.version.as_deref())
        .await?;
    view_of(&state, &name)
}

/// Body of `PUT /v1/services/{name}/canary`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryWeight {
    weight: u8,
}

/// `PUT /v1/services/{name}/canary`: change the canary's share of traffic.
pub async fn canary_weight(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: CanaryWeight = parse_json(&body)?;
    state
        .services
        .set_canary_weight(&name, request.weight)
        .await?;
    view_of(&state, &name)
}

/// `POST /v1/services/{name}/canary/promote`: the canary becomes the current version.
pub async fn promote(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.services.promote_canary(&name).await?;
    view_of(&state, &name)
}

/// `DELETE /v1/services/{name}/canary`: drop the canary.
pub async fn abort_canary(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .services
        .abort_canary(&name, "rolled back by the operator")
        .await?;
    view_of(&state, &name)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {error}"),
        )
    })
}

/// Query of `PUT /v1/services/{name}`: deploy as a canary.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Percentage of traffic for the new version; absent: replace the current one.
    canary: Option<u8>,
    /// Automatic rollback when the canary's 5xx ratio exceeds this.
    max_error_rate: Option<f64>,
    /// Window of the ratio, in milliseconds.
    window_ms: Option<u64>,
    /// Canary requests needed before the ratio counts.
    min_requests: Option<u32>,
}

impl DeployQuery {
    fn mode(&self) -> Result<DeployMode, ApiError> {
        let Some(weight) = self.canary else {
            if self.max_error_rate.is_some()
                || self.window_ms.is_some()
                || self.min_requests.is_some()
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "`max_error_rate`, `window_ms` and `min_requests` need `canary`",
                ));
            }
            return Ok(DeployMode::Replace);
        };
        let auto_rollback = self.max_error_rate.map(|max_error_rate| AutoRollback {
            max_error_rate,
            window_ms: self.window_ms.unwrap_or(30_000),
            min_requests: self.min_requests.unwrap_or(20),
        });
        Ok(DeployMode::Canary {
            weight,
            auto_rollback,
        })
    }
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
    query: Result<Query<DeployQuery>, QueryRejection>,
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
    let mode = query.mode()?;
    let manifest = manifest?;
    // A guest can hand out what it reads: below `admin`, a deploy may name only the
    // secrets granted to this service.
    if caller.is_none_or(|caller| caller.grant.scope != crate::access::Scope::Admin) {
        let secrets = &state.services.platform().secrets;
        for secret in &manifest.secrets {
            secrets
                .deployer_may_name(&name, secret)
                .map_err(|reason| ApiError::new(StatusCode::FORBIDDEN, reason))?;
        }
    }
    let (_, kind) = state
        .services
        .deploy(&name, component, manifest, mode)
        .await?;
    let status = match kind {
        DeployKind::Created => StatusCode::CREATED,
        DeployKind::Replaced | DeployKind::Canary => StatusCode::OK,
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
