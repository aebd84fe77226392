//! `counter`: exercises the service's own store.
//!
//! - `GET /get?key=K` answers the value (404 when absent).
//! - `PUT /set?key=K` stores the request body; `DELETE /delete?key=K` removes it.
//! - `POST /cas?key=K[&expected=E]` stores the body if the value is E (absent without
//!   `expected`); 409 on a conflict.
//! - `GET /list?prefix=P` answers the keys, one a line.
//! - `POST /increment?key=K` adds one to a decimal counter in a transaction (retried
//!   on conflict) and answers the new value.
//! - `POST /fill?key=K&bytes=N` stores N bytes under K (for quota tests).
//!
//! Store errors answer 409 (`conflict`), 413 (`too-large`, `quota-exceeded`) or 500,
//! with the error in the body.

use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError};

fn failure(error: StoreError) -> Response {
    let status = match &error {
        StoreError::Conflict => 409,
        StoreError::TooLarge(_) | StoreError::QuotaExceeded => 413,
        _ => 500,
    };
    Response::text(status, format!("{error:?}\n"))
}

fn handle(req: Request) -> Response {
    let key = req.query_param("key").unwrap_or_default();
    let outcome = match req.path() {
        "/get" => store::get(&key).map(|value| match value {
            Some(value) => Response::text(200, String::from_utf8_lossy(&value).into_owned()),
            None => Response::text(404, "absent\n"),
        }),
        "/set" => store::set(&key, req.body()).map(|()| Response::text(200, "stored\n")),
        "/delete" => store::delete(&key).map(|()| Response::text(200, "deleted\n")),
        "/cas" => {
            let expected = req.query_param("expected");
            store::compare_and_swap(&key, expected.as_deref().map(str::as_bytes), req.body())
                .map(|()| Response::text(200, "swapped\n"))
        }
        "/list" => {
            let prefix = req.query_param("prefix").unwrap_or_default();
            store::list_keys(&prefix, 1000).map(|keys| {
                Response::text(
                    200,
                    keys.iter().map(|k| format!("{k}\n")).collect::<String>(),
                )
            })
        }
        "/increment" => store::transaction(|tx| {
            let now: u64 = tx
                .get(&key)?
                .and_then(|value| String::from_utf8(value).ok())
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            tx.set(&key, (now + 1).to_string().as_bytes())?;
            Ok::<_, StoreError>(now + 1)
        })
        .map(|count| Response::text(200, format!("{count}\n"))),
        "/fill" => {
            let bytes: usize = req
                .query_param("bytes")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            store::set(&key, &vec![b'x'; bytes]).map(|()| Response::text(200, "filled\n"))
        }
        other => return Response::text(404, format!("no route for {other}\n")),
    };
    outcome.unwrap_or_else(failure)
}

shoal_sdk::http_service!(handle);
