//! The admin API, on its own port: deploy, inspect and remove services.
//!
//! | method | path                  | what                                         |
//! |--------|-----------------------|----------------------------------------------|
//! | GET    | `/`                   | the dashboard (its data calls need a token)  |
//! | GET    | `/healthz`            | liveness (no token needed)                   |
//! | GET    | `/metrics`            | Prometheus text format (no token needed)     |
//! | GET    | `/readyz`             | 200 once every persisted service is restored, 503 before (no token) |
//! | GET    | `/v1/openapi.json`    | this API as an OpenAPI 3.1 document, derived from its types |
//! | GET    | `/v1/services`        | every service                                |
//! | GET    | `/v1/services/{name}` | one service                                  |
//! | PUT    | `/v1/services/{name}` | deploy: `application/wasm` body, or multipart with `component` and `manifest` parts |
//! | DELETE | `/v1/services/{name}` | remove                                       |
//! | GET    | `/v1/services/{name}/logs` | recent log lines; `?follow=1` streams them (server-sent events), `level`, `request_id`, `tail` filter |
//! | PUT    | `/v1/services/{name}?canary=N` | deploy as a canary taking N % of traffic (`&max_error_rate=0.1` rolls it back automatically) |
//! | PUT    | `/v1/services/{name}/scale` | `{"max_concurrency": N, "queue": M}`, live |
//! | any    | `/v1/services/{name}/call/{path}` | an operator's request to the service, private paths included, as the caller `operator` |
//! | POST   | `/v1/services/{name}/rollback` | back to the previous version, or `{"version": "..."}` |
//! | PUT / DELETE | `/v1/services/{name}/canary` | `{"weight": N}` / drop the canary |
//! | POST   | `/v1/services/{name}/canary/promote` | the canary becomes current |
//! | GET    | `/v1/external`        | external services                            |
//! | PUT    | `/v1/external/{name}` | register an external service (JSON)          |
//! | GET / DELETE | `/v1/external/{name}` | show / remove one                      |
//! | GET    | `/v1/discovery/{name}`| every registered instance of a service, with health |
//! | GET    | `/v1/events`          | deliveries waiting, and the dead letters      |
//! | POST   | `/v1/events/dead/{subscriber}/{event_id}/replay` | deliver a dead letter again |
//! | DELETE | `/v1/events/dead/{subscriber}/{event_id}` | drop a dead letter          |
//! | POST   | `/v1/tokens`          | `{"name", "scope", "services"}` → 201 `{"id", "token", …}` (shown once) |
//! | GET    | `/v1/tokens`          | every token, without secrets                 |
//! | DELETE | `/v1/tokens/{id}`     | revoke a token                               |
//! | GET    | `/v1/audit?limit=N`   | the audit log's last N entries, oldest first |
//! | GET    | `/v1/audit/verify`    | check the audit log's hash chain |
//! | GET    | `/v1/whoami`          | the calling token's id, scope and service patterns |
//! | GET/PUT/DELETE | `/v1/services/{name}/data` | export, import (into an empty store) or delete a service's data |
//! | GET    | `/v1/host`            | the host's id, version and backends (store, bus) |
//! | GET    | `/v1/cluster`         | in a cluster: every host, its state, labels, memory and services; the leader |
//! | POST / DELETE | `/v1/hosts/{id}/drain` | in a cluster: move every replica off a host / return it to service |
//! | GET    | `/v1/stats`           | requests, failures, by-version counts and latency histograms per service; breaker states |
//! | PUT    | `/v1/secrets/{name}`  | set a secret: `{"value", "services"}` JSON, or the raw value (`?services=a,b`) |
//! | GET    | `/v1/secrets`         | every secret's name, source and services, never its value |
//! | DELETE | `/v1/secrets/{name}`  | remove a secret set through the API          |
//!
//! Every `/v1` call needs `Authorization: Bearer <token>`: the operator's token, or a
//! scoped one (`read`, `deploy` limited to service patterns, `admin`); see
//! [`auth`]. Until the host is ready, calls that change something answer 503 with
//! `Retry-After`.

mod access;
mod auth;
mod cluster;
mod dashboard;
mod data;
mod error;
mod events;
mod external;
mod logs;
mod openapi;
mod recordings;
mod secrets;
mod services;
#[cfg(test)]
mod tests;

pub use auth::{TOKEN_FILE, load_or_create_token};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use std::sync::Arc;

use crate::registry::external::ExternalServices;
use crate::services::Services;

/// The admin API's part of the `shoal serve` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AdminSettings {
    /// Address of the admin API (port 0 picks a free port).
    #[arg(long, env = "SHOAL_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: std::net::SocketAddr,

    /// PEM certificate chain of the admin API: it then speaks HTTPS only. Reloaded
    /// when the file changes.
    #[arg(long, env = "SHOAL_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of the admin API's certificate.
    #[arg(long, env = "SHOAL_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<std::path::PathBuf>,

    /// Token the admin API requires. When unset, one is generated into the data
    /// directory on first start and printed once.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest component upload accepted, in bytes.
    #[arg(long, env = "SHOAL_MAX_UPLOAD_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Admin API connections open at once.
    #[arg(long, env = "SHOAL_ADMIN_MAX_CONNECTIONS", default_value_t = 256)]
    pub admin_max_connections: usize,
}

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The services this host runs.
    pub services: Arc<Services>,
    /// The cluster this host is a member of: changes to services go through it.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// External services registered by operators.
    pub external: Arc<ExternalServices>,
    /// The tokens a `/v1` call may present.
    pub tokens: Arc<crate::access::tokens::TokenStore>,
    /// Where changes and refused attempts are recorded.
    pub audit: Arc<crate::access::audit::AuditLog>,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: usize,
    /// Log followers that may connect at once.
    pub followers: Arc<tokio::sync::Semaphore>,
}

impl AdminState {
    /// The admin state over `services`, `external`, `tokens` and `audit`.
    pub fn new(
        services: Arc<Services>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        external: Arc<ExternalServices>,
        tokens: Arc<crate::access::tokens::TokenStore>,
        audit: Arc<crate::access::audit::AuditLog>,
        max_upload_bytes: usize,
    ) -> Self {
        Self {
            services,
            cluster,
            external,
            tokens,
            audit,
            max_upload_bytes,
            followers: Arc::new(tokio::sync::Semaphore::new(logs::MAX_FOLLOWERS)),
        }
    }
}

/// `GET /metrics`: Prometheus text format (no token, like `/healthz`).
async fn metrics(
    axum::extract::State(state): axum::extract::State<AdminState>,
) -> impl axum::response::IntoResponse {
    let metrics = &state.services.platform().telemetry.metrics;
    // Load gauges are read at scrape time, from the live table.
    metrics.in_flight.reset();
    metrics.queued.reset();
    let dropped = crate::telemetry::logs::dropped_lines();
    let counted = metrics.log_lines_dropped.get();
    if dropped > counted {
        metrics.log_lines_dropped.inc_by(dropped - counted);
    }
    if let Some(cluster) = &state.cluster {
        let view = cluster.view();
        for state_name in ["up", "draining", "down"] {
            let count = view
                .members
                .keys()
                .filter(|id| {
                    let state_of = if !view.hosts.contains_key(*id) {
                        "down"
                    } else if view.drains.contains_key(*id) {
                        "draining"
                    } else {
                        "up"
                    };
                    state_of == state_name
                })
                .count();
            metrics
                .cluster_hosts
                .with_label_values(&[state_name])
                .set(count as i64);
        }
        metrics
            .cluster_placements
            .set(view.placements.values().map(Vec::len).sum::<usize>() as i64);
        metrics
            .cluster_leader
            .set(i64::from(view.leader() == Some(cluster.host_id())));
    }
    let budget = state.services.memory_budget();
    metrics.memory_reserved.set(budget.used() as i64);
    metrics.memory_budget.set(budget.limit() as i64);
    for service in state.services.table().services() {
        let (running, queued) = service.limiter.load();
        metrics
            .in_flight
            .with_label_values(&[service.name()])
            .set(i64::from(running));
        metrics
            .queued
            .with_label_values(&[service.name()])
            .set(i64::from(queued));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// `GET /readyz`: 200 once every persisted service has been restored, 503 before.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AdminState>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if state.services.is_ready() {
        "ready\n".into_response()
    } else {
        restoring()
    }
}

fn restoring() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        "restoring services\n",
    )
        .into_response()
}

/// Whether a request has a body: one answered before it is read leaves the
/// connection unusable for another request, so that answer closes it.
fn carries_body(headers: &axum::http::HeaderMap) -> bool {
    use axum::http::header;
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// Changes (anything but `GET`) wait for the restore to finish: a deploy must not
/// race the restore of the same service.
async fn changes_wait_for_restore(
    axum::extract::State(state): axum::extract::State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() != axum::http::Method::GET && !state.services.is_ready() {
        let mut response = restoring();
        if carries_body(request.headers()) {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        return response;
    }
    next.run(request).await
}

/// The admin router. `state.max_upload_bytes` bounds a deploy's body (413 beyond it).
pub fn router(state: AdminState) -> Router {
    let max_upload_bytes = state.max_upload_bytes;
    let v1 = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/services", get(services::list))
        .route(
            "/services/{name}",
            get(services::show)
                .put(services::deploy)
                .delete(services::remove),
        )
        .route("/services/{name}/scale", put(services::scale))
        .route(
            "/services/{name}/data",
            get(data::export).put(data::import).delete(data::purge),
        )
        .route("/services/{name}/call/{*path}", any(services::call))
        .route("/services/{name}/logs", get(logs::logs))
        .route("/services/{name}/recordings", get(recordings::list))
        .route("/services/{name}/recordings/{id}", get(recordings::show))
        .route(
            "/services/{name}/recordings/{id}/replay",
            post(recordings::replay),
        )
        .route("/services/{name}/recording", put(recordings::set_mode))
        .route("/services/{name}/rollback", post(services::rollback))
        .route(
            "/services/{name}/canary",
            put(services::canary_weight).delete(services::abort_canary),
        )
        .route("/services/{name}/canary/promote", post(services::promote))
        .route(
            "/external/{name}",
            get(external::show)
                .put(external::put)
                .delete(external::remove),
        )
        .route("/external", get(external::list))
        .route("/cluster", get(cluster::show))
        .route(
            "/hosts/{id}/drain",
            post(cluster::drain).delete(cluster::undrain),
        )
        .route("/discovery/{name}", get(external::discover))
        .route("/events", get(events::show))
        .route(
            "/tokens",
            get(access::list)
                .post(access::create)
                .layer(DefaultBodyLimit::max(64 * 1024)),
        )
        .route("/tokens/{id}", axum::routing::delete(access::revoke))
        .route("/audit", get(access::audit))
        .route("/audit/verify", get(access::verify_audit))
        .route("/whoami", get(dashboard::whoami))
        .route("/host", get(dashboard::host))
        .route("/stats", get(dashboard::stats))
        .route("/secrets", get(secrets::list))
        .route(
            "/secrets/{name}",
            put(secrets::put)
                .delete(secrets::remove)
                .layer(DefaultBodyLimit::max(secrets::MAX_BODY_BYTES)),
        )
        .route(
            "/events/dead/{subscriber}/{event_id}",
            axum::routing::delete(events::drop_dead),
        )
        .route(
            "/events/dead/{subscriber}/{event_id}/replay",
            post(events::replay),
        )
        .layer(DefaultBodyLimit::max(max_upload_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            changes_wait_for_restore,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .fallback(error::not_found)
        .with_state(state)
}
