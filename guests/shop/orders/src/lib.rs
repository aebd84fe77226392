//! `orders`: places orders across inventory and payment, without overselling and
//! without leaking reservations.
//!
//! `POST /` `{"sku", "quantity"}`:
//! 1. reserve the stock at `inventory` (idempotent by order id, so the caller may
//!    retry it);
//! 2. charge at `payment` (no retry; the manifest gives it a short deadline);
//! 3. write the order and publish `order.created` in one store transaction (the
//!    event is delivered after the commit, never without it); `inventory` commits the
//!    reservation when the event arrives.
//!
//! Any failure after step 1 releases the reservation (a release of a reservation that
//! never arrived leaves a tombstone, so a late one is refused).
//! Answers: 201 `{"id", "status": "placed"}`, 409 `insufficient stock`, 402
//! `payment failed`, 400 on bad input or an unknown product, 503 when a dependency is
//! down. `GET /{id}` answers the order or 404.

use serde::{Deserialize, Serialize};
use shoal_sdk::caller::{Call, CallError};
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError};

#[derive(Deserialize)]
struct NewOrder {
    sku: String,
    quantity: i64,
}

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    sku: String,
    quantity: u64,
    status: String,
}

/// Price of one unit, in cents (the shop sells one thing at one price).
const UNIT_PRICE: u64 = 1250;

fn error(status: u16, message: &str) -> Response {
    Response::json(status, serde_json::json!({ "error": message }).to_string())
}

fn valid_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn new_id() -> String {
    let random = shoal_sdk::bindings::wasi::random::random::get_random_u64();
    format!("o-{random:016x}")
}

/// Give the reservation back (compensation). Idempotent, so the caller retries it.
fn release(id: &str) {
    let released = Call::new("inventory", "POST", &format!("/reservations/{id}/release"))
        .idempotent(true)
        .send();
    if let Err(failure) = released {
        shoal_sdk::log::error(
            "could not release a reservation",
            &[("order", id), ("error", failure.kind())],
        );
    }
}

/// Why placing an order stopped.
enum Stop {
    Answer(Response),
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Self {
        Stop::Store(error)
    }
}

fn place(body: &[u8]) -> Response {
    let Ok(NewOrder { sku, quantity }) = serde_json::from_slice(body) else {
        return error(400, "expected {\"sku\": \"...\", \"quantity\": N}");
    };
    if !valid_sku(&sku) {
        return error(400, "the SKU is 1 to 64 letters, digits, `-` or `_`");
    }
    if !(1..=1000).contains(&quantity) {
        return error(400, "the quantity is between 1 and 1000");
    }
    let quantity = quantity as u64;
    let id = new_id();

    // 1. Reserve.
    let reservation = serde_json::json!({ "id": id, "sku": sku, "quantity": quantity });
    let reserved = Call::new("inventory", "POST", "/reservations")
        .body(reservation.to_string())
        .header("content-type", "application/json")
        .idempotent(true)
        .send();
    match reserved {
        Ok(response) if response.status() == 201 => {}
        Ok(response) if response.status() == 409 => return error(409, "insufficient stock"),
        Ok(response) if response.status() == 404 => return error(400, "unknown product"),
        Ok(response) if response.status() == 400 => return error(400, "bad order"),
        Ok(_) | Err(_) => {
            // Whether the reservation was made is unknown: release it to be sure.
            release(&id);
            return error(503, "inventory unavailable");
        }
    }

    // 2. Charge.
    let charge = serde_json::json!({ "order": id, "amount": quantity * UNIT_PRICE });
    let charged = Call::new("payment", "POST", "/charges")
        .body(charge.to_string())
        .header("content-type", "application/json")
        .send();
    if !matches!(&charged, Ok(response) if response.status() == 201) {
        if let Err(CallError::Timeout) = &charged {
            shoal_sdk::log::warn("payment did not answer in time", &[("order", &id)]);
        }
        release(&id);
        return error(402, "payment failed");
    }

    // 3. The order and its event, together.
    let written = store::transaction(|tx| {
        let order = Order {
            id: id.clone(),
            sku: sku.clone(),
            quantity,
            status: "placed".into(),
        };
        tx.set(
            &format!("order/{id}"),
            &serde_json::to_vec(&order).unwrap_or_default(),
        )?;
        let event = serde_json::json!({ "id": id, "sku": sku, "quantity": quantity });
        tx.publish("order.created", event.to_string().as_bytes())
            .map_err(|failure| Stop::Answer(error(503, &format!("cannot publish: {failure:?}"))))?;
        Ok::<_, Stop>(())
    });
    match written {
        Ok(()) => Response::json(
            201,
            serde_json::json!({ "id": id, "status": "placed" }).to_string(),
        ),
        Err(stop) => {
            release(&id);
            match stop {
                Stop::Answer(response) => response,
                Stop::Store(failure) => {
                    error(503, &format!("cannot record the order: {failure:?}"))
                }
            }
        }
    }
}

fn show(id: &str) -> Response {
    match store::get(&format!("order/{id}")) {
        Ok(Some(bytes)) => Response::json(200, String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => error(404, "no such order"),
        Err(failure) => error(503, &format!("{failure:?}")),
    }
}

fn handle(req: Request) -> Response {
    match (req.method(), req.path()) {
        ("POST", "/") => place(req.body()),
        ("GET", path) if path.len() > 1 && !path[1..].contains('/') => show(&path[1..]),
        _ => error(404, "no such route"),
    }
}

shoal_sdk::http_service!(handle);
