//! `shoal:platform/caller`: resilient calls to other services.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt as _, Limited};
use std::time::Duration;
use wasmtime::component::{HasData, Linker};

use super::{PlatformView, traced_fallible};
use crate::bindings::caller::{self, CallError, CallOptions, Host, Request, Response};
use crate::caller::outbound::MAX_BUFFERED_BODY;
use crate::caller::{CallContext, Caller, OutboundRequest};
use crate::policy::is_failure_status;
use crate::recording::journal::{self, Journal};
use crate::registry::validate_name;

/// What a call sees: the host's caller, and who is calling for which request.
pub struct CallerView<'a> {
    /// The resilient caller.
    pub caller: &'a Caller,
    /// The calling service, request id, deadline and spans.
    pub context: CallContext,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasCaller;

impl HasData for HasCaller {
    type Data<'a> = CallerView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    caller::add_to_linker::<T, HasCaller>(linker, |state| {
        let ctx = state.platform().ctx;
        CallerView {
            caller: &ctx.platform.caller,
            context: ctx.call_context(),
            journal: ctx.journal(),
        }
    })
}

fn invalid(reason: impl Into<String>) -> CallError {
    CallError::InvalidRequest(reason.into())
}

/// Headers one call may carry.
const MAX_HEADERS: usize = 100;
/// Bytes of header names and values one call may carry.
const MAX_HEADER_BYTES: usize = 64 * 1024;

fn to_outbound(request: Request) -> Result<OutboundRequest, CallError> {
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if request.headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all"
        )));
    }
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

fn to_options(options: CallOptions) -> crate::caller::CallOptions {
    crate::caller::CallOptions {
        attempt_timeout: options
            .attempt_timeout_ms
            .map(|ms| Duration::from_millis(ms.into())),
        deadline: options
            .deadline_ms
            .map(|ms| Duration::from_millis(ms.into())),
        idempotent: options.idempotent,
    }
}

fn to_wit_error(error: crate::caller::CallError) -> CallError {
    use crate::caller::CallError as E;
    match error {
        E::NoInstances(_) => CallError::NoInstances,
        E::CircuitOpen(_) => CallError::CircuitOpen,
        E::Timeout => CallError::Timeout,
        E::Refused(text) => CallError::Refused(text),
        E::Unreachable(text) => CallError::Unreachable(text),
        E::Denied(text) => CallError::Denied(text),
        E::InvalidRequest(text) => CallError::InvalidRequest(text),
    }
}

impl CallerView<'_> {
    async fn call_checked(
        &self,
        service: String,
        request: Request,
        options: CallOptions,
    ) -> Result<Response, CallError> {
        validate_name(&service).map_err(|error| invalid(error.to_string()))?;
        let outbound = to_outbound(request)?;
        let response = self
            .caller
            .call(&self.context, &service, outbound, to_options(options))
            .await
            .map_err(to_wit_error)?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout_at(
            self.context.deadline.into(),
            Limited::new(body, MAX_BUFFERED_BODY).collect(),
        )
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
        if is_failure_status(response.status) {
            Err(CallError::ServerError(response))
        } else {
            Ok(response)
        }
    }
}

impl Host for CallerView<'_> {
    async fn call(
        &mut self,
        service: String,
        request: Request,
        options: CallOptions,
    ) -> wasmtime::Result<Result<Response, CallError>> {
        let caller = self.context.caller.clone();
        let about = journal::about(self.journal, || {
            format!("{service} {} {}", request.method, request.path_with_query)
        });
        let live = async { Ok(self.call_checked(service, request, options).await) };
        traced_fallible(
            "caller.call",
            &caller,
            journal::call(self.journal, "caller.call", about, live),
        )
        .await
    }
}
