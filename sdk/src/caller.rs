//! Call other services through the host's resilient caller: discovery, load
//! balancing, timeouts, retries (idempotent requests), circuit breaking and request-id
//! propagation are done by the host.
//!
//! ```no_run
//! use shoal_sdk::caller::{self, CallError};
//!
//! fn stock(item: &str) -> Result<String, CallError> {
//!     let response = caller::get("inventory", &format!("/items/{item}"))?;
//!     Ok(response.body_text())
//! }
//! ```
//!
//! Plain `wasi:http` requests to `http://<service>/...` take the same path, so code
//! using any HTTP client built on `wasi:http` gets the same behaviour.

use crate::bindings::shoal::platform::caller as wit;
use crate::http::Response;

pub use wit::{CallError, CallOptions};

impl CallError {
    /// A short, stable name of the error kind (`circuit-open`, `timeout`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::NoInstances => "no-instances",
            CallError::CircuitOpen => "circuit-open",
            CallError::Timeout => "timeout",
            CallError::Refused(_) => "refused",
            CallError::Unreachable(_) => "unreachable",
            CallError::Denied(_) => "denied",
            CallError::InvalidRequest(_) => "invalid-request",
            CallError::ServerError(_) => "server-error",
        }
    }
}

/// Options that leave everything to the manifest's policy and the defaults.
pub fn default_options() -> CallOptions {
    CallOptions {
        attempt_timeout_ms: None,
        deadline_ms: None,
        idempotent: None,
    }
}

/// A request to another service, built step by step.
#[derive(Debug, Clone)]
pub struct Call {
    service: String,
    request: wit::Request,
    options: CallOptions,
}

impl Call {
    /// A call of `method` on `path_with_query` of `service`.
    pub fn new(service: &str, method: &str, path_with_query: &str) -> Self {
        Self {
            service: service.to_owned(),
            request: wit::Request {
                method: method.to_owned(),
                path_with_query: path_with_query.to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
            },
            options: default_options(),
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request
            .headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Time allowed for one attempt.
    pub fn attempt_timeout_ms(mut self, ms: u32) -> Self {
        self.options.attempt_timeout_ms = Some(ms);
        self
    }

    /// Time allowed for the whole call.
    pub fn deadline_ms(mut self, ms: u32) -> Self {
        self.options.deadline_ms = Some(ms);
        self
    }

    /// Declare whether the request may be retried (default: from the method).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.options.idempotent = Some(idempotent);
        self
    }

    /// Make the call.
    pub fn send(self) -> Result<Response, CallError> {
        let response = wit::call(&self.service, &self.request, self.options)?;
        Ok(to_response(response))
    }
}

/// `GET path_with_query` on `service`.
pub fn get(service: &str, path_with_query: &str) -> Result<Response, CallError> {
    Call::new(service, "GET", path_with_query).send()
}

/// `POST body` to `path_with_query` on `service` (not retried unless declared idempotent).
pub fn post(
    service: &str,
    path_with_query: &str,
    body: impl Into<Vec<u8>>,
) -> Result<Response, CallError> {
    Call::new(service, "POST", path_with_query)
        .body(body)
        .send()
}

/// Convert a raw caller response to the SDK's [`Response`].
pub fn to_response(response: wit::Response) -> Response {
    let mut out = Response::new(response.status).with_body(response.body);
    for (name, value) in response.headers {
        out = out.with_header(&name, &String::from_utf8_lossy(&value));
    }
    out
}
