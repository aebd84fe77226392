//! `inventory`: stock per SKU, and reservations that are later committed (sold) or
//! released.
//!
//! Every change reads and writes the stock in one store transaction, so concurrent
//! reservations can never oversell: a transaction that read stock another one
//! changed fails with a conflict and runs again on the new figures.
//!
//! - `PUT /stock/{sku}` `{"available": N}`: set the units free to order; units held
//!   by reservations and units sold are kept as they are (a reservation released
//!   later returns its own units, never more than were set aside).
//! - `GET /stock/{sku}`: `{"available", "reserved", "sold"}`, 404 for an unknown SKU.
//! - `POST /reservations` `{"id", "sku", "quantity"}`: hold stock; idempotent by
//!   `id`. 201, 409 `insufficient stock`, 404 `unknown product`, 410 when `id` was
//!   already released.
//! - `POST /reservations/{id}/commit` and `/release`: idempotent.
//! - `order.created` events commit the order's reservation (at least once,
//!   de-duplicated by the inbox).

use serde::{Deserialize, Serialize};
use shoal_sdk::events::Event;
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError, Transaction};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Stock {
    available: u64,
    reserved: u64,
    sold: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Held,
    Committed,
    Released,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    sku: String,
    quantity: u64,
    state: State,
}

#[derive(Deserialize)]
struct SetStock {
    available: u64,
}

#[derive(Deserialize)]
struct Reserve {
    id: String,
    sku: String,
    quantity: u64,
}

#[derive(Deserialize)]
struct OrderCreated {
    id: String,
}

/// What a transactional step answers, or why it stopped.
enum Outcome {
    Answer(Response),
    Store(StoreError),
}

impl From<StoreError> for Outcome {
    fn from(error: StoreError) -> Self {
        Outcome::Store(error)
    }
}

fn json(status: u16, value: serde_json::Value) -> Response {
    Response::json(status, value.to_string())
}

fn error(status: u16, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

fn valid_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn read<T: for<'de> Deserialize<'de>>(
    tx: &Transaction,
    key: &str,
) -> Result<Option<T>, StoreError> {
    Ok(tx
        .get(key)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn write<T: Serialize>(tx: &Transaction, key: &str, value: &T) -> Result<(), StoreError> {
    tx.set(key, &serde_json::to_vec(value).unwrap_or_default())
}

fn run(work: impl FnMut(&Transaction) -> Result<Response, Outcome>) -> Response {
    match store::transaction(work) {
        Ok(response) => response,
        Err(Outcome::Answer(response)) => response,
        Err(Outcome::Store(error)) => error_for(error),
    }
}

fn error_for(store_error: StoreError) -> Response {
    match store_error {
        StoreError::TooLarge(_) => error(413, "too large"),
        StoreError::QuotaExceeded => error(507, "the inventory is full"),
        other => error(503, &format!("store unavailable: {other:?}")),
    }
}

fn set_stock(sku: &str, body: &[u8]) -> Response {
    let Ok(SetStock { available }) = serde_json::from_slice(body) else {
        return error(400, "expected {\"available\": N}");
    };
    if !valid_sku(sku) || available > 1_000_000_000 {
        return error(400, "bad SKU or quantity");
    }
    run(|tx| {
        let key = format!("stock/{sku}");
        // Read in the same transaction: a reservation made meanwhile makes it run
        // again on the new figures.
        let held: Stock = read(tx, &key)?.unwrap_or_default();
        let stock = Stock { available, ..held };
        write(tx, &key, &stock)?;
        Ok(json(
            200,
            serde_json::json!({
                "available": stock.available,
                "reserved": stock.reserved,
                "sold": stock.sold,
            }),
        ))
    })
}

fn get_stock(sku: &str) -> Response {
    match store::get(&format!("stock/{sku}")) {
        Ok(Some(bytes)) => Response::json(200, String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => error(404, "unknown product"),
        Err(store_error) => error_for(store_error),
    }
}

fn reserve(body: &[u8]) -> Response {
    let Ok(Reserve { id, sku, quantity }) = serde_json::from_slice(body) else {
        return error(400, "expected {\"id\", \"sku\", \"quantity\"}");
    };
    if id.is_empty() || id.len() > 64 || !valid_sku(&sku) || !(1..=1000).contains(&quantity) {
        return error(400, "bad id, SKU or quantity");
    }
    run(|tx| {
        let key = format!("reservation/{id}");
        if let Some(existing) = read::<Reservation>(tx, &key)? {
            // A retry of a reservation already made (or a late one after a release).
            return Err(Outcome::Answer(match existing.state {
                State::Released => error(410, "reservation released"),
                _ => json(
                    201,
                    serde_json::json!({ "id": id, "state": existing.state }),
                ),
            }));
        }
        let stock_key = format!("stock/{sku}");
        let Some(mut stock) = read::<Stock>(tx, &stock_key)? else {
            return Err(Outcome::Answer(error(404, "unknown product")));
        };
        if stock.available < quantity {
            return Err(Outcome::Answer(error(409, "insufficient stock")));
        }
        stock.available -= quantity;
        stock.reserved += quantity;
        write(tx, &stock_key, &stock)?;
        write(
            tx,
            &key,
            &Reservation {
                sku: sku.clone(),
                quantity,
                state: State::Held,
            },
        )?;
        Ok(json(
            201,
            serde_json::json!({ "id": id, "state": State::Held }),
        ))
    })
}

/// Move a held reservation to `to`: committed (sold) or released (back to available).
/// A release of an unknown reservation leaves a tombstone, so a reservation that
/// arrives late is refused instead of held forever.
fn settle(tx: &Transaction, id: &str, to: State) -> Result<Response, Outcome> {
    let key = format!("reservation/{id}");
    let Some(mut reservation) = read::<Reservation>(tx, &key)? else {
        if to == State::Released {
            write(
                tx,
                &key,
                &Reservation {
                    sku: String::new(),
                    quantity: 0,
                    state: State::Released,
                },
            )?;
            return Ok(json(
                200,
                serde_json::json!({ "id": id, "state": State::Released }),
            ));
        }
        return Err(Outcome::Answer(error(404, "unknown reservation")));
    };
    if reservation.state == State::Held {
        let stock_key = format!("stock/{}", reservation.sku);
        let mut stock = read::<Stock>(tx, &stock_key)?.unwrap_or_default();
        stock.reserved = stock.reserved.saturating_sub(reservation.quantity);
        match to {
            State::Committed => stock.sold += reservation.quantity,
            _ => stock.available += reservation.quantity,
        }
        write(tx, &stock_key, &stock)?;
        reservation.state = to;
        write(tx, &key, &reservation)?;
    } else if reservation.state != to {
        return Err(Outcome::Answer(error(
            409,
            "reservation already settled the other way",
        )));
    }
    Ok(json(
        200,
        serde_json::json!({ "id": id, "state": reservation.state }),
    ))
}

fn order_created(req: &Request) -> Response {
    let Some(event) = Event::from_request(req) else {
        return error(400, "not an event delivery");
    };
    let Ok(OrderCreated { id }) = serde_json::from_slice(&event.payload) else {
        // A malformed event cannot become valid by retrying: acknowledge it.
        return error(200, "ignored a malformed order.created");
    };
    run(|tx| {
        // An unknown or already released reservation has nothing to commit; the event
        // is handled all the same (a retry would find the same).
        match settle(tx, &id, State::Committed) {
            Ok(_) | Err(Outcome::Answer(_)) => {}
            Err(other) => return Err(other),
        }
        tx.mark_handled(&event.id)?;
        Ok(json(200, serde_json::json!({ "handled": event.id })))
    })
}

fn handle(req: Request) -> Response {
    let path = req.path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        ("PUT", ["stock", sku]) => set_stock(sku, req.body()),
        ("GET", ["stock", sku]) => get_stock(sku),
        ("POST", ["reservations"]) => reserve(req.body()),
        ("POST", ["reservations", id, "commit"]) => {
            let id = id.to_string();
            run(|tx| settle(tx, &id, State::Committed))
        }
        ("POST", ["reservations", id, "release"]) => {
            let id = id.to_string();
            run(|tx| settle(tx, &id, State::Released))
        }
        ("POST", ["events", "order-created"]) => order_created(&req),
        _ => error(404, "no such route"),
    }
}

shoal_sdk::http_service!(handle);
