//! The dashboard: one page at `/` on the admin port, plain HTML, CSS and JavaScript
//! compiled into the binary (no CDN, no build step). The page holds no data of its
//! own: it logs in with a token and reads the `/v1` API like any client, so a `read`
//! token sees everything and changes nothing. `/v1/whoami` tells it what the token
//! may do; `/v1/stats` gives it request counts and latency histograms to chart.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;
use super::auth::Caller;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Scripts and styles from this origin only; nothing inline, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js`
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/style.css`
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /v1/whoami`: the calling token's id, scope and service patterns.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "access",
    responses((status = 200, description = "The calling token", body = shoal_api::access::WhoAmI))
)]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<shoal_api::access::WhoAmI> {
    Json(shoal_api::access::WhoAmI {
        token_id: caller.token_id,
        scope: super::access::scope_view(caller.grant.scope),
        services: caller.grant.services,
    })
}

/// `GET /v1/host`: which host answers, and the backends it runs on.
#[utoipa::path(
    get,
    path = "/v1/host",
    tag = "services",
    responses((status = 200, description = "The host", body = shoal_api::host::HostInfo))
)]
pub async fn host(State(state): State<AdminState>) -> Json<shoal_api::host::HostInfo> {
    let platform = state.services.platform();
    Json(shoal_api::host::HostInfo {
        host_id: platform.host_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: platform.stores.engine().to_owned(),
        bus: platform.bus.engine().to_owned(),
        memory_budget_bytes: state.services.memory_budget().limit() as u64,
    })
}

/// `GET /v1/stats`: per service, requests, failures, requests by version and the
/// latency histogram, summed since start; and every circuit breaker's state.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "services",
    responses((status = 200, description = "What the dashboard draws", body = shoal_api::stats::Stats))
)]
pub async fn stats(State(state): State<AdminState>) -> Json<shoal_api::stats::Stats> {
    use shoal_api::stats as api;
    let metrics = &state.services.platform().telemetry.metrics;
    let breakers = metrics
        .breaker_states()
        .into_iter()
        .map(|(caller, target, state)| api::Breaker {
            caller,
            target,
            state: match state {
                0 => api::BreakerState::Closed,
                1 => api::BreakerState::HalfOpen,
                _ => api::BreakerState::Open,
            },
        })
        .collect();
    let services = metrics
        .request_stats()
        .into_iter()
        .map(|(service, stats)| {
            let stats = api::RequestStats {
                requests: stats.requests,
                failures: stats.failures,
                by_version: stats.by_version,
                buckets: stats.buckets,
                grpc: stats.grpc,
            };
            (service, stats)
        })
        .collect();
    Json(api::Stats { services, breakers })
}
