//! `shipping`: consumes `order.created` and ships each order once, however often the
//! event is delivered: the shipment and the inbox mark commit in one transaction.
//!
//! - `GET /handled`: `{"orders": [ids]}`, each order once.

use serde::Deserialize;
use shoal_sdk::events::Event;
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError};

#[derive(Deserialize)]
struct OrderCreated {
    id: String,
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, serde_json::json!({ "error": message }).to_string())
}

fn order_created(req: &Request) -> Response {
    let Some(event) = Event::from_request(req) else {
        return error(400, "not an event delivery");
    };
    let Ok(OrderCreated { id }) = serde_json::from_slice(&event.payload) else {
        // Retrying cannot fix a malformed event: acknowledge it.
        return error(200, "ignored a malformed order.created");
    };
    let shipped = store::transaction(|tx| {
        let key = format!("shipped/{id}");
        if tx.get(&key)?.is_none() {
            tx.set(&key, event.id.as_bytes())?;
        }
        tx.mark_handled(&event.id)?;
        Ok::<_, StoreError>(())
    });
    match shipped {
        Ok(()) => Response::json(200, serde_json::json!({ "shipped": id }).to_string()),
        Err(failure) => error(503, &format!("{failure:?}")),
    }
}

fn handled() -> Response {
    match store::list_keys("shipped/", 10_000) {
        Ok(keys) => {
            let orders: Vec<&str> = keys
                .iter()
                .map(|k| k.trim_start_matches("shipped/"))
                .collect();
            Response::json(200, serde_json::json!({ "orders": orders }).to_string())
        }
        Err(failure) => error(503, &format!("{failure:?}")),
    }
}

fn handle(req: Request) -> Response {
    match (req.method(), req.path()) {
        ("POST", "/events/order-created") => order_created(&req),
        ("GET", "/handled") => handled(),
        _ => error(404, "no such route"),
    }
}

shoal_sdk::http_service!(handle);
