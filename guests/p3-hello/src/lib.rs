//! The smallest WASIp3 `wasi:http` hello: a fixed answer written in one piece, from
//! an async handler that one instance runs for several requests at once.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

struct P3Hello;

const ANSWER: &[u8] = b"Hello, world!\n";

impl wasip3::exports::http::handler::Guest for P3Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .map_err(|_| ErrorCode::InternalError(None))?;
        let (mut body, contents) = wit_stream::new();
        let (trailers, trailers_read) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers_read);
        drop(trailers);
        wasip3::spawn_local(async move {
            let _ = body.write_all(ANSWER.to_vec()).await;
        });
        Ok(response)
    }
}

wasip3::http::service::export!(P3Hello);
