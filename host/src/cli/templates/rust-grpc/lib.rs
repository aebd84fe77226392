//! `{{name}}`: a gRPC service (`{{package}}.Greeter`, see `proto/{{name}}.proto`).
//! Each method is a plain function; the SDK frames the messages and sends the status.

use shoal_sdk::grpc::{Context, Server, ServerStream, Status};

mod proto {
    include!(concat!(env!("OUT_DIR"), "/{{package}}.rs"));
}

use proto::{HelloReply, HelloRequest};

/// Most greetings one stream sends.
const MAX_COUNT: u32 = 100;

fn greeting(name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name must not be empty"));
    }
    let greeting = shoal_sdk::config::get("greeting").unwrap_or_else(|| "Hello".to_owned());
    Ok(format!("{greeting} {name}"))
}

fn say_hello(_: &Context, request: HelloRequest) -> Result<HelloReply, Status> {
    shoal_sdk::log::info("greeted", &[("name", &request.name)]);
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
    if request.count > MAX_COUNT {
        return Err(Status::invalid_argument(format!(
            "count must be at most {MAX_COUNT}"
        )));
    }
    for index in 1..=request.count.max(1) {
        replies.send(&HelloReply {
            message: format!("{greeting} ({index})"),
        })?;
    }
    Ok(())
}

fn server() -> Server {
    Server::new()
        .unary("/{{package}}.Greeter/SayHello", say_hello)
        .server_streaming("/{{package}}.Greeter/SayHelloStream", say_hello_stream)
}

shoal_sdk::grpc_service!(server);
