//! gRPC services on `wasi:http`: a method is a function from a request message to a
//! reply (unary) or to a stream of replies (server streaming), messages are `prost`
//! types, and failures are a [`Status`].
//!
//! ```no_run
//! use shoal_sdk::grpc::{Context, Server, Status};
//! # #[derive(Clone, PartialEq, prost::Message)]
//! # struct HelloRequest { #[prost(string, tag = "1")] name: String }
//! # #[derive(Clone, PartialEq, prost::Message)]
//! # struct HelloReply { #[prost(string, tag = "1")] message: String }
//!
//! fn say_hello(_: &Context, request: HelloRequest) -> Result<HelloReply, Status> {
//!     Ok(HelloReply { message: format!("Hello {}", request.name) })
//! }
//!
//! fn server() -> Server {
//!     Server::new().unary("/helloworld.Greeter/SayHello", say_hello)
//! }
//!
//! shoal_sdk::grpc_service!(server);
//! ```
//!
//! The manifest names the gRPC services (`grpc = ["helloworld.Greeter"]`), so the
//! gateway sends `/helloworld.Greeter/SayHello` to the service unchanged. The host turns
//! a client's `grpc-timeout` into the request's deadline: a method still running when
//! it passes is ended and the client gets `DEADLINE_EXCEEDED`. [`Context::timeout`]
//! says how long the client gave.
//!
//! Wire format (the gRPC over HTTP/2 protocol): each message is a 1-byte compression
//! flag, a 4-byte big-endian length and the encoded message; the outcome travels in
//! the `grpc-status` and `grpc-message` trailers.

use std::marker::PhantomData;
use std::time::Duration;

use prost::Message;
use shoal_grpc_wire::{decode_message, encode_message, parse_timeout};

use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::OutputStream;

/// Largest request message accepted (gRPC's usual default), in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The status codes (shared with the host, so both read them alike).
pub use shoal_grpc_wire::Code;

/// How a call failed: a code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    /// A status of `code` saying `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_ARGUMENT`: the request is wrong.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `NOT_FOUND`: what the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `FAILED_PRECONDITION`: not in a state to do this.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// `UNAVAILABLE`: try again later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `INTERNAL`: the service broke.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// Its code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// What a method knows of its call besides the request message.
#[derive(Debug)]
pub struct Context {
    path: String,
    metadata: Vec<(String, Vec<u8>)>,
    timeout: Option<Duration>,
}

impl Context {
    /// The call's path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A metadata value (a request header) as text, if present.
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// How long the client gave the call (`grpc-timeout`), if it set a deadline.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// The replies of a server-streaming method, sent as they are produced.
pub struct ServerStream<'a, T> {
    out: &'a mut dyn FnMut(&[u8]) -> Result<(), Status>,
    _message: PhantomData<fn(&T)>,
}

impl<T: Message> ServerStream<'_, T> {
    /// Send one reply now. Fails when the client has gone.
    pub fn send(&mut self, reply: &T) -> Result<(), Status> {
        (self.out)(&frame(reply))
    }
}

type Handler =
    Box<dyn Fn(&Context, &[u8], &mut dyn FnMut(&[u8]) -> Result<(), Status>) -> Result<(), Status>>;

/// The methods a service answers, by path, and what answers everything else.
#[derive(Default)]
pub struct Server {
    methods: Vec<(String, Handler)>,
    http: Option<fn(crate::http::Request) -> crate::http::Response>,
}

impl Server {
    /// A server with no methods yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer `path` (`/package.Service/Method`) with one reply per request.
    pub fn unary<Req, Reply>(
        mut self,
        path: &str,
        method: fn(&Context, Req) -> Result<Reply, Status>,
    ) -> Self
    where
        Req: Message + Default + 'static,
        Reply: Message + 'static,
    {
        let handler: Handler = Box::new(move |context, message, out| {
            let reply = method(context, decode(message)?)?;
            out(&frame(&reply))
        });
        self.methods.push((path.to_owned(), handler));
        self
    }

    /// Answer `path` with a stream of replies per request.
    pub fn server_streaming<Req, Reply>(
        mut self,
        path: &str,
        method: fn(&Context, Req, &mut ServerStream<'_, Reply>) -> Result<(), Status>,
    ) -> Self
    where
        Req: Message + Default + 'static,
        Reply: Message + 'static,
    {
        let handler: Handler = Box::new(move |context, message, out| {
            let request = decode(message)?;
            let mut stream = ServerStream {
                out,
                _message: PhantomData,
            };
            method(context, request, &mut stream)
        });
        self.methods.push((path.to_owned(), handler));
        self
    }

    /// Answer every request that is not a gRPC call (plain HTTP under the service's
    /// route) with `handler`; without one they get 404.
    pub fn http(mut self, handler: fn(crate::http::Request) -> crate::http::Response) -> Self {
        self.http = Some(handler);
        self
    }
}

/// A request message, or `INVALID_ARGUMENT` saying why it is not one.
fn decode<T: Message + Default>(message: &[u8]) -> Result<T, Status> {
    T::decode(message)
        .map_err(|error| Status::invalid_argument(format!("cannot decode the request: {error}")))
}

/// `message` as one length-prefixed gRPC frame (uncompressed).
fn frame<T: Message>(message: &T) -> Vec<u8> {
    let length = message.encoded_len();
    let mut bytes = Vec::with_capacity(5 + length);
    bytes.push(0);
    bytes.extend_from_slice(&(length as u32).to_be_bytes());
    message.encode_raw(&mut bytes);
    bytes
}

/// The one message of a request body: its bytes, or why the body is not one framed
/// message.
fn single_message(body: &[u8]) -> Result<&[u8], Status> {
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(Status::internal("the request has no message"));
    };
    if head[0] != 0 {
        return Err(Status::new(
            Code::Unimplemented,
            "compressed messages are not supported (send grpc-encoding: identity)",
        ));
    }
    let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if rest.len() != length {
        return Err(Status::internal(format!(
            "the request body holds {} bytes after a message of {length}: one message expected",
            rest.len()
        )));
    }
    Ok(rest)
}

fn status_fields(fields: &Fields, status: &Status) {
    let _ = fields.append("grpc-status", status.code.number().to_string().as_bytes());
    if !status.message.is_empty() {
        let _ = fields.append("grpc-message", encode_message(&status.message).as_bytes());
    }
}

/// Answer with `status` and no message. The status goes in trailers after an empty
/// body rather than in the head ("trailers-only"): that form is one HTTP/2 frame
/// ending the stream, which a component's streamed body cannot promise.
fn status_only(response_out: ResponseOutparam, status: &Status) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"application/grpc");
    let response = OutgoingResponse::new(headers);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    let trailers = Fields::new();
    status_fields(&trailers, status);
    let _ = OutgoingBody::finish(body, Some(trailers));
}

/// Write `bytes` to the response body stream.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), Status> {
    // `blocking-write-and-flush` accepts at most 4096 bytes per call.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|_| Status::new(Code::Cancelled, "the client has gone"))?;
    }
    Ok(())
}

/// Serve one request with `server`.
///
/// Used by [`grpc_service!`](crate::grpc_service); not meant to be called directly.
#[doc(hidden)]
pub fn serve(request: IncomingRequest, response_out: ResponseOutparam, server: Server) {
    let path = request
        .path_with_query()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let is_grpc = request
        .headers()
        .get("content-type")
        .iter()
        .any(|value| value.starts_with(b"application/grpc"));
    if !is_grpc {
        match server.http {
            Some(handler) => crate::http::serve(request, response_out, handler),
            None => {
                let response = crate::http::Response::text(
                    404,
                    format!("no HTTP handler for `{path}`: this service speaks gRPC\n"),
                );
                crate::http::write_response(response_out, response);
            }
        }
        return;
    }
    let Some(handler) = server
        .methods
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, handler)| handler)
    else {
        let status = Status::new(Code::Unimplemented, format!("unknown method {path}"));
        return status_only(response_out, &status);
    };
    let request = match crate::http::read_request(request, MAX_MESSAGE_BYTES + 5) {
        Ok(request) => request,
        Err(reason) => {
            return status_only(response_out, &Status::new(Code::ResourceExhausted, reason));
        }
    };
    let message = match single_message(request.body()) {
        Ok(message) => message,
        Err(status) => return status_only(response_out, &status),
    };
    let context = Context {
        timeout: request.header("grpc-timeout").and_then(parse_timeout),
        path,
        metadata: request.headers().to_vec(),
    };
    // The answer's head goes out with the first reply.
    let mut response_out = Some(response_out);
    let mut body: Option<(OutgoingBody, OutputStream)> = None;
    let mut send = |bytes: &[u8]| -> Result<(), Status> {
        if body.is_none() {
            let headers = Fields::new();
            let _ = headers.append("content-type", b"application/grpc");
            let response = OutgoingResponse::new(headers);
            let outgoing = response
                .body()
                .map_err(|()| Status::internal("no response body"))?;
            let stream = outgoing
                .write()
                .map_err(|()| Status::internal("no response stream"))?;
            if let Some(out) = response_out.take() {
                ResponseOutparam::set(out, Ok(response));
            }
            body = Some((outgoing, stream));
        }
        match &body {
            Some((_, stream)) => write_all(stream, bytes),
            None => Err(Status::internal("no response stream")),
        }
    };
    let outcome = handler(&context, message, &mut send);
    let status = outcome.err().unwrap_or(Status::new(Code::Ok, ""));
    match (body, response_out) {
        (Some((outgoing, stream)), _) => {
            drop(stream);
            let trailers = Fields::new();
            status_fields(&trailers, &status);
            let _ = OutgoingBody::finish(outgoing, Some(trailers));
        }
        (None, Some(out)) => status_only(out, &status),
        (None, None) => {}
    }
}

/// Calls the gRPC methods of another service, or of an external service the
/// operator registered, through the host's caller: discovery, load balancing per
/// call, the target's breaker, retries of `UNAVAILABLE` (and of the other server
/// codes for methods the manifest's `[outbound.targets.NAME] idempotent` lists),
/// and the remaining deadline sent as `grpc-timeout`.
#[derive(Debug, Clone)]
pub struct Client {
    service: String,
    timeout: Option<Duration>,
}

impl Client {
    /// A client of `service` (its registered name).
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            timeout: None,
        }
    }

    /// Give each call at most `timeout` (the caller's own deadline applies too).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Call the unary method `path` (`/package.Service/Method`) with `request`.
    pub fn unary<Req: Message, Reply: Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Reply, Status> {
        use crate::bindings::wasi::http::outgoing_handler;
        use crate::bindings::wasi::http::types::{
            ErrorCode, IncomingBody, Method, OutgoingRequest, RequestOptions, Scheme,
        };
        let headers = Fields::new();
        let _ = headers.append("content-type", b"application/grpc");
        let _ = headers.append("te", b"trailers");
        let outgoing = OutgoingRequest::new(headers);
        let _ = outgoing.set_method(&Method::Post);
        let _ = outgoing.set_scheme(Some(&Scheme::Http));
        let _ = outgoing.set_authority(Some(&self.service));
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| Status::invalid_argument(format!("`{path}` is not a method path")))?;
        let body = outgoing
            .body()
            .map_err(|()| Status::internal("no request body"))?;
        if let Ok(stream) = body.write() {
            write_all(&stream, &frame(request))?;
        }
        OutgoingBody::finish(body, None)
            .map_err(|_| Status::internal("cannot finish the request"))?;
        let options = RequestOptions::new();
        if let Some(timeout) = self.timeout {
            let _ = options.set_first_byte_timeout(Some(timeout.as_nanos() as u64));
        }
        let transport = |error: ErrorCode| match error {
            ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => {
                Status::new(Code::DeadlineExceeded, "the call's deadline passed")
            }
            ErrorCode::HttpRequestDenied => Status::new(
                Code::PermissionDenied,
                format!("calls to `{}` are not allowed", self.service),
            ),
            other => Status::unavailable(format!(
                "`{}` could not be reached: {other:?}",
                self.service
            )),
        };
        let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(transport)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(error))) => return Err(transport(error)),
            _ => return Err(Status::internal("no response")),
        };
        let status = response.status();
        if status != 200 {
            return Err(Status::new(
                Code::Unknown,
                format!("`{}` answered HTTP {status}", self.service),
            ));
        }
        let head = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| Status::internal("no response body"))?;
        let mut bytes = Vec::new();
        if let Ok(stream) = body.stream() {
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                if bytes.len() + chunk.len() > MAX_MESSAGE_BYTES + 5 {
                    return Err(Status::new(
                        Code::ResourceExhausted,
                        "the reply is too large",
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
        }
        let trailers = IncomingBody::finish(body);
        trailers.subscribe().block();
        let mut fields = head;
        if let Some(Ok(Ok(Some(trailers)))) = trailers.get() {
            fields.extend(trailers.entries());
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        };
        let code = match field("grpc-status") {
            Some(number) => Code::from_value(number.as_bytes()),
            None => return Err(Status::new(Code::Unknown, "the reply has no grpc-status")),
        };
        if code != Code::Ok {
            return Err(Status::new(
                code,
                decode_message(&field("grpc-message").unwrap_or_default()),
            ));
        }
        decode(single_message(&bytes)?)
    }
}

/// Export `server` (a `fn() -> grpc::Server`) as the service's
/// `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! grpc_service {
    ($server:path) => {
        #[doc(hidden)]
        struct __ShoalGrpcService;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __ShoalGrpcService {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                response_out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::grpc::serve(request, response_out, $server())
            }
        }

        $crate::bindings::export!(__ShoalGrpcService with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Greeting {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[test]
    fn a_frame_is_flag_length_and_message() {
        let bytes = frame(&Greeting { name: "ab".into() });
        assert_eq!(bytes, [0, 0, 0, 0, 4, 10, 2, b'a', b'b']);
        let message = single_message(&bytes).expect("one message");
        assert_eq!(Greeting::decode(message).expect("decodes").name, "ab");
    }

    #[test]
    fn bodies_that_are_not_one_message_are_refused() {
        assert_eq!(
            single_message(&[0, 0]).expect_err("short").code(),
            Code::Internal
        );
        assert_eq!(
            single_message(&[1, 0, 0, 0, 0])
                .expect_err("compressed")
                .code(),
            Code::Unimplemented
        );
        assert_eq!(
            single_message(&[0, 0, 0, 0, 1, 8, 9])
                .expect_err("two")
                .code(),
            Code::Internal
        );
        assert_eq!(
            single_message(&[0, 0, 0, 0, 0]).expect("empty"),
            &[] as &[u8]
        );
    }
}
