//! The admin API, on its own port: deploy, inspect and remove services.
//!
//! | method | path                  | what                                         |
//! |--------|-----------------------|----------------------------------------------|
//! | GET    | `/healthz`            | liveness (no token needed)                   |
//! | GET    | `/v1/services`        | every service                                |
//! | GET    | `/v1/services/{name}` | one service                                  |
//! | PUT    | `/v1/services/{name}` | deploy: `application/wasm` body, or multipart with `component` and `manifest` parts |
//! | DELETE | `/v1/services/{name}` | remove                                       |
//!
//! Every `/v1` call needs `Authorization: Bearer <token>`.

mod auth;
mod error;
mod services;

pub use auth::{AdminToken, TOKEN_FILE, load_or_create_token};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use std::sync::Arc;

use crate::services::Services;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The services this host runs.
    pub services: Arc<Services>,
    /// The token every `/v1` call must present.
    pub token: Arc<AdminToken>,
}

/// The admin router. `max_upload_bytes` bounds a deploy's body (413 beyond it).
pub fn router(state: AdminState, max_upload_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/services", get(services::list))
        .route(
            "/services/{name}",
            get(services::show)
                .put(services::deploy)
                .delete(services::remove),
        )
        .layer(DefaultBodyLimit::max(max_upload_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/v1", v1)
        .fallback(error::not_found)
        .with_state(state)
}
