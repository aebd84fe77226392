//! `shoal:platform/caller`: resilient calls to other services.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt as _, Limited};
use std::time::Duration;

use crate::bindings::caller::{CallError, CallOptions, Host, Request, Response};
use crate::caller::outbound::MAX_BUFFERED_BODY;
use crate::caller::{self, OutboundRequest};
use crate::runtime::GuestState;
use crate::services::validate_name;

fn invalid(reason: impl Into<String>) -> CallError {
    CallError::InvalidRequest(reason.into())
}

fn to_outbound(request: Request) -> Result<OutboundRequest, CallError> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| invalid(format!("`{}` is not an HTTP method", request.method)))?;
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("`{name}` is not a valid header name")))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| invalid(format!("the value of header `{name}` is not valid")))?;
        headers.append(name, value);
    }
    Ok(OutboundRequest {
        method,
        path_and_query: request.path_with_query,
        headers,
        body: Bytes::from(request.body),
    })
}

impl Host for GuestState {
    async fn call(
        &mut self,
        service: String,
        request: Request,
        options: CallOptions,
    ) -> Result<Response, CallError> {
        validate_name(&service).map_err(|error| invalid(error.to_string()))?;
        let outbound = to_outbound(request)?;
        let options = caller::CallOptions {
            attempt_timeout: options
                .attempt_timeout_ms
                .map(|ms| Duration::from_millis(ms.into())),
            deadline: options
                .deadline_ms
                .map(|ms| Duration::from_millis(ms.into())),
            idempotent: options.idempotent,
        };
        let context = self.call_context();
        let response = self
            .platform
            .caller
            .call(&context, &service, outbound, options)
            .await
            .map_err(|error| match error {
                caller::CallError::NoInstances(_) => CallError::NoInstances,
                caller::CallError::CircuitOpen(_) => CallError::CircuitOpen,
                caller::CallError::Timeout => CallError::Timeout,
                caller::CallError::Refused(text) => CallError::Refused(text),
                caller::CallError::Unreachable(text) => CallError::Unreachable(text),
                caller::CallError::Denied(text) => CallError::Denied(text),
                caller::CallError::InvalidRequest(text) => CallError::InvalidRequest(text),
            })?;
        let (parts, body) = response.into_parts();
        let remaining = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        let body = tokio::time::timeout(remaining, Limited::new(body, MAX_BUFFERED_BODY).collect())
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(|error| {
                CallError::Unreachable(format!("reading the response body failed: {error}"))
            })?
            .to_bytes();
        let response = Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
        };
        if parts.status.is_server_error() {
            Err(CallError::ServerError(response))
        } else {
            Ok(response)
        }
    }
}
