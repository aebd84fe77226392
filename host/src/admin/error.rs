//! JSON error answers: `{"error": "..."}` with the right status.

use axum::Json;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::runtime::LoadError;
use crate::services::ServiceError;

/// An admin API error: a status and a message meant for the user.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Ask the client to close the connection: set when the request body was left
    /// unread, so the connection cannot carry another request.
    pub close: bool,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            close: false,
        }
    }

    /// The same error, answered with `Connection: close`.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = shoal_api::ErrorBody {
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.close {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let status = match &error {
            ServiceError::InvalidName(_) | ServiceError::Manifest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Load(LoadError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::Load(_) => StatusCode::BAD_REQUEST,
            ServiceError::RouteConflict { .. } => StatusCode::CONFLICT,
            ServiceError::RouteNested { .. } => StatusCode::FORBIDDEN,
            ServiceError::TopicOwned { .. } => StatusCode::CONFLICT,
            ServiceError::TopicNotShared { .. } => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict { .. } => StatusCode::CONFLICT,
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(%error, "admin request failed");
        }
        ApiError::new(status, error.to_string())
    }
}

impl From<crate::services::replay::ReplayError> for ApiError {
    fn from(error: crate::services::replay::ReplayError) -> Self {
        use crate::services::replay::ReplayError;
        let status = match &error {
            ReplayError::NoService(_)
            | ReplayError::NoRecording { .. }
            | ReplayError::NoVersion { .. } => StatusCode::NOT_FOUND,
            ReplayError::Load(LoadError::Internal(_)) | ReplayError::Storage(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ReplayError::Load(_) => StatusCode::BAD_REQUEST,
        };
        if status.is_server_error() {
            tracing::error!(%error, "a replay failed on the host's side");
        }
        ApiError::new(status, error.to_string())
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(error: crate::cluster::ClusterError) -> Self {
        match error {
            crate::cluster::ClusterError::Service(error) => error.into(),
            other => {
                tracing::warn!(error = %other, "a cluster change failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
            }
        }
    }
}

impl From<crate::access::tokens::TokenError> for ApiError {
    fn from(error: crate::access::tokens::TokenError) -> Self {
        use crate::access::tokens::TokenError;
        let status = match &error {
            TokenError::Invalid(_) => StatusCode::BAD_REQUEST,
            TokenError::NotFound(_) => StatusCode::NOT_FOUND,
            TokenError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<crate::secrets::SecretError> for ApiError {
    fn from(error: crate::secrets::SecretError) -> Self {
        use crate::secrets::SecretError;
        let status = match &error {
            SecretError::Invalid(_) => StatusCode::BAD_REQUEST,
            SecretError::Operator(..) => StatusCode::CONFLICT,
            SecretError::NotFound(_) => StatusCode::NOT_FOUND,
            SecretError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<crate::cluster::shared::SharedError> for ApiError {
    fn from(error: crate::cluster::shared::SharedError) -> Self {
        use crate::cluster::shared::SharedError;
        match error {
            SharedError::Token(error) => error.into(),
            SharedError::Secret(error) => error.into(),
            SharedError::Cluster(error) => error.into(),
        }
    }
}

/// Answer for paths the admin API does not have.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no admin endpoint at `{}`", uri.path()),
    )
}
