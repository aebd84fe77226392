//! `tonic-greeter ADDRESS`: `helloworld.Greeter` as a native tonic server, the same
//! answers as `guests/grpc-greeter` (`Hello NAME`, and `count` greetings streamed),
//! for the benchmark's ceiling.

use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

mod helloworld {
    tonic::include_proto!("helloworld");
}

use helloworld::greeter_server::{Greeter, GreeterServer};
use helloworld::{HelloReply, HelloRequest};

#[derive(Default)]
struct Hello;

fn greeting(name: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name must not be empty"));
    }
    Ok(format!("Hello {name}"))
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let message = greeting(&request.into_inner().name)?;
        Ok(Response::new(HelloReply { message }))
    }

    type SayHelloStreamStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamStream>, Status> {
        let request = request.into_inner();
        let greeting = greeting(&request.name)?;
        let count = request.count.clamp(1, 100);
        let replies = (1..=count).map(move |index| {
            Ok(HelloReply {
                message: format!("{greeting} ({index} of {count})"),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()?;
    println!("listening on {address}");
    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Hello))
        .serve(address)
        .await?;
    Ok(())
}
