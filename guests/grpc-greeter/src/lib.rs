//! `helloworld.Greeter` as a Shoal service: a unary method and a server-streaming one,
//! each a plain function; the SDK frames messages and sends the status trailers.
//!
//! A name of `panic` makes a method panic, to show what a client sees when a service
//! faults: `INTERNAL`, with the request id, and the host and its neighbours unharmed.
//! A name of `unavailable` fails the call with `UNAVAILABLE` in its trailers (an
//! HTTP 200): a failure the host counts from the status, not the HTTP code.

use shoal_sdk::grpc::{Context, Server, ServerStream, Status};

mod helloworld {
    include!(concat!(env!("OUT_DIR"), "/helloworld.rs"));
}

use helloworld::{HelloReply, HelloRequest};

/// Longest a caller may ask a method to wait before a greeting.
const MAX_DELAY_MS: u32 = 10_000;
/// Most greetings one stream sends.
const MAX_COUNT: u32 = 100;

fn greeting(name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name must not be empty"));
    }
    if name == "panic" {
        panic!("asked to panic");
    }
    if name == "unavailable" {
        return Err(Status::unavailable("asked to be unavailable"));
    }
    let greeting = shoal_sdk::config::get("greeting").unwrap_or_else(|| "Hello".to_owned());
    Ok(format!("{greeting} {name}"))
}

fn wait(delay_ms: u32) -> Result<(), Status> {
    if delay_ms > MAX_DELAY_MS {
        return Err(Status::invalid_argument(format!(
            "delay_ms must be at most {MAX_DELAY_MS}"
        )));
    }
    if delay_ms > 0 {
        shoal_sdk::bindings::wasi::clocks::monotonic_clock::subscribe_duration(
            u64::from(delay_ms) * 1_000_000,
        )
        .block();
    }
    Ok(())
}

fn say_hello(_: &Context, request: HelloRequest) -> Result<HelloReply, Status> {
    wait(request.delay_ms)?;
    Ok(HelloReply {
        message: greeting(&request.name)?,
    })
}

fn say_hello_stream(
    _: &Context,
    request: HelloRequest,
    replies: &mut ServerStream<'_, HelloReply>,
) -> Result<(), Status> {
    let greeting = greeting(&request.name)?;
    let count = match request.count {
        0 => 3,
        count if count > MAX_COUNT => {
            return Err(Status::invalid_argument(format!(
                "count must be at most {MAX_COUNT}"
            )));
        }
        count => count,
    };
    for index in 1..=count {
        wait(request.delay_ms)?;
        replies.send(&HelloReply {
            message: format!("{greeting} ({index} of {count})"),
        })?;
    }
    Ok(())
}

/// The same greeting over plain HTTP, `GET /hello?name=N` (as text), for clients that
/// do not speak gRPC; anything else names the gRPC methods.
fn http_hello(request: shoal_sdk::http::Request) -> shoal_sdk::http::Response {
    use shoal_sdk::http::Response;
    if request.path() != "/hello" {
        return Response::text(
            200,
            "helloworld.Greeter speaks gRPC: call /helloworld.Greeter/SayHello\n",
        );
    }
    match greeting(&request.query_param("name").unwrap_or_default()) {
        Ok(message) => Response::text(200, format!("{message}\n")),
        Err(status) => Response::text(400, format!("{}\n", status.message())),
    }
}

fn server() -> Server {
    Server::new()
        .unary("/helloworld.Greeter/SayHello", say_hello)
        .server_streaming("/helloworld.Greeter/SayHelloStream", say_hello_stream)
        .http(http_hello)
}

shoal_sdk::grpc_service!(server);
