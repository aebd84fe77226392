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
//! - `POST /publish?topic=T[&delay_ms=D]` publishes the body to T (delivered after D
//!   ms) and answers the event id.
//! - `POST /increment-and-publish?key=K&topic=T[&abort=1][&delay_ms=D]` increments K
//!   and publishes the new count to T in one transaction (delivered after D ms); with
//!   `abort=1` it drops the transaction instead of committing (nothing is written,
//!   nothing is published).
//! - `POST /events/handle` receives subscribed events: while the delivery attempt is
//!   at most the config value `fail_attempts`, it answers 500; then it records the
//!   event under `handled/<id>` (and the Unix time in ms it was handled at under
//!   `handled-at/<id>`) and marks it handled in one transaction. With the
//!   config value `fail_after_commit = "1"` its first attempt commits and then
//!   answers 500 anyway.
//! - `GET /handled` lists the ids handled, one a line; `GET /handled-total` counts
//!   handler runs that committed.
//!
//! Store errors answer 409 (`conflict`), 413 (`too-large`, `quota-exceeded`) or 500,
//! with the error in the body.

use shoal_sdk::events::{self, Event};
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError};

fn failure(error: StoreError) -> Response {
    let status = match &error {
        StoreError::Conflict => 409,
        StoreError::TooLarge(_) | StoreError::QuotaExceeded => 413,
        // The store is down or slow: try again later.
        StoreError::Unavailable(_) => 503,
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
        "/publish" => {
            let topic = req.query_param("topic").unwrap_or_default();
            let published = match delay(&req) {
                Some(delay) => events::schedule(&topic, req.body(), delay),
                None => events::publish(&topic, req.body()),
            };
            return match published {
                Ok(id) => Response::text(200, format!("{id}\n")),
                Err(error) => Response::text(400, format!("{error:?}\n")),
            };
        }
        "/increment-and-publish" => return increment_and_publish(&req, &key),
        "/events/handle" => return handle_event(&req),
        "/handled" => store::list_keys("handled/", 10_000).map(|keys| {
            let ids: String = keys
                .iter()
                .map(|key| format!("{}\n", key.trim_start_matches("handled/")))
                .collect();
            Response::text(200, ids)
        }),
        "/handled-total" => store::get("handled-total").map(|value| {
            let total = value.map(|v| String::from_utf8_lossy(&v).into_owned());
            Response::text(200, total.unwrap_or_else(|| "0".into()))
        }),
        other => return Response::text(404, format!("no route for {other}\n")),
    };
    outcome.unwrap_or_else(failure)
}

/// The `delay_ms` query parameter: publish with this delay.
fn delay(req: &Request) -> Option<std::time::Duration> {
    req.query_param("delay_ms")
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// Why a transactional step failed.
enum StepError {
    Store(StoreError),
    Publish(events::PublishError),
}

impl From<StoreError> for StepError {
    fn from(error: StoreError) -> Self {
        StepError::Store(error)
    }
}

fn increment_and_publish(req: &Request, key: &str) -> Response {
    let topic = req.query_param("topic").unwrap_or_default();
    if req.query_param("abort").as_deref() == Some("1") {
        let tx = store::Transaction::new();
        let _ = tx.set(key, b"never");
        let _ = tx.publish(&topic, b"never");
        drop(tx);
        return Response::text(200, "aborted\n");
    }
    let outcome = store::transaction(|tx| {
        let now = read_count(tx.get(key)?);
        tx.set(key, (now + 1).to_string().as_bytes())?;
        let payload = (now + 1).to_string();
        match delay(req) {
            Some(delay) => tx.schedule(&topic, payload.as_bytes(), delay),
            None => tx.publish(&topic, payload.as_bytes()),
        }
        .map_err(StepError::Publish)?;
        Ok::<_, StepError>(now + 1)
    });
    match outcome {
        Ok(count) => Response::text(200, format!("{count}\n")),
        Err(StepError::Store(error)) => failure(error),
        Err(StepError::Publish(error)) => Response::text(400, format!("{error:?}\n")),
    }
}

fn handle_event(req: &Request) -> Response {
    let Some(event) = Event::from_request(req) else {
        return Response::text(400, "not an event delivery\n");
    };
    let fail_attempts: u32 = shoal_sdk::config::get("fail_attempts")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if event.attempt <= fail_attempts {
        return Response::text(500, format!("failing attempt {}\n", event.attempt));
    }
    let outcome = store::transaction(|tx| {
        tx.set(&format!("handled/{}", event.id), &event.payload)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        tx.set(
            &format!("handled-at/{}", event.id),
            now_ms.to_string().as_bytes(),
        )?;
        let total = read_count(tx.get("handled-total")?);
        tx.set("handled-total", (total + 1).to_string().as_bytes())?;
        tx.mark_handled(&event.id)?;
        Ok::<_, StoreError>(())
    });
    // `fail_after_commit`: committed, but the answer says otherwise (as if the
    // connection broke), so the host redelivers an event that is already handled.
    let fail_after_commit = shoal_sdk::config::get("fail_after_commit").as_deref() == Some("1");
    match outcome {
        Ok(()) if fail_after_commit && event.attempt == 1 => {
            Response::text(500, "handled, but answering 500\n")
        }
        Ok(()) => Response::text(200, "handled\n"),
        Err(error) => failure(error),
    }
}

fn read_count(value: Option<Vec<u8>>) -> u64 {
    value
        .and_then(|value| String::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

shoal_sdk::http_service!(handle);
