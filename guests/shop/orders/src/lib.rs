//! `orders`: places orders across inventory and payment, without overselling, without
//! leaking reservations or charges, even if the host dies in the middle of an order.
//!
//! `POST /` `{"sku", "quantity"}`:
//! 0. record the order as `pending` and schedule its `order.timeout` event in one
//!    store transaction;
//! 1. reserve the stock at `inventory` (idempotent by order id, so the caller may
//!    retry it);
//! 2. charge at `payment` over gRPC (`shop.payment.v1.Payment/Charge`; over HTTP
//!    when the config's `payment_protocol` is `http`, for a payment that offers only
//!    the HTTP contract); no retry, and the manifest gives it a short deadline;
//! 3. mark the order `placed` and publish `order.created` in one store transaction,
//!    only if it is still `pending` (the event is delivered after the commit, never
//!    without it); `inventory` commits the reservation when the event arrives.
//!
//! Any failure after step 1 releases the reservation and refunds the charge (both
//! idempotent; a release or refund that arrives first leaves a tombstone, so a late
//! reservation or charge is refused) and marks the order `failed`.
//!
//! If the order's request never finishes (the host died during it), the
//! `order.timeout` event arrives after `order_timeout_ms` (config; longer than the
//! request's own deadline, so the request is over by then). An order still `pending`
//! becomes `abandoned` and is compensated the same way; redeliveries compensate again
//! until it succeeds. A `failed` order is compensated again (which finishes a
//! compensation that failed at the time); a `placed` one needs nothing.
//!
//! Answers: 201 `{"id", "status": "placed", "total": "12.50"}`, 409 `insufficient stock`, 402
//! `payment failed`, 400 on bad input or an unknown product, 503 when a dependency is
//! down. `GET /{id}` answers the order or 404.

use serde::{Deserialize, Serialize};
use shoal_sdk::caller::{Call, CallError};
use shoal_sdk::events::Event;
use shoal_sdk::grpc::{Client, Code};
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError, Transaction};
use std::time::Duration;

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
/// When an order's request is surely over, if the config does not say.
const DEFAULT_ORDER_TIMEOUT_MS: u64 = 60_000;

#[derive(Deserialize)]
struct OrderTimeout {
    id: String,
}

mod proto {
    include!(concat!(env!("OUT_DIR"), "/shop.payment.v1.rs"));
}

/// Whether payment is called over gRPC (the default) or its HTTP contract.
fn payment_over_grpc() -> bool {
    shoal_sdk::config::get("payment_protocol").as_deref() != Some("http")
}

/// Why a charge was not made: its answer, or that it did not come in time.
struct NotCharged {
    reason: String,
    timed_out: bool,
}

/// Charge `amount` for order `id` at `payment`.
fn charge_payment(id: &str, amount: u64) -> Result<(), NotCharged> {
    if payment_over_grpc() {
        let request = proto::ChargeRequest {
            order: id.to_owned(),
            amount,
        };
        return Client::new("payment")
            .unary::<_, proto::ChargeReply>("/shop.payment.v1.Payment/Charge", &request)
            .map(|_| ())
            .map_err(|status| NotCharged {
                timed_out: status.code() == Code::DeadlineExceeded,
                reason: format!("{:?}: {}", status.code(), status.message()),
            });
    }
    let charge = serde_json::json!({ "order": id, "amount": amount });
    match Call::new("payment", "POST", "/charges")
        .body(charge.to_string())
        .header("content-type", "application/json")
        .send()
    {
        Ok(response) if response.status() == 201 => Ok(()),
        Ok(response) => Err(NotCharged {
            reason: response.status().to_string(),
            timed_out: false,
        }),
        Err(failure) => Err(NotCharged {
            timed_out: matches!(failure, CallError::Timeout),
            reason: failure.kind().to_owned(),
        }),
    }
}

/// Refund order `id` at `payment` (idempotent): why not, if it was not done.
fn refund_payment(id: &str) -> Result<(), String> {
    if payment_over_grpc() {
        let request = proto::RefundRequest {
            order: id.to_owned(),
        };
        return Client::new("payment")
            .unary::<_, proto::RefundReply>("/shop.payment.v1.Payment/Refund", &request)
            .map(|_| ())
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()));
    }
    match Call::new("payment", "POST", &format!("/charges/{id}/refund"))
        .idempotent(true)
        .send()
    {
        Ok(response) if response.status() == 200 => Ok(()),
        Ok(response) => Err(response.status().to_string()),
        Err(failure) => Err(failure.kind().to_owned()),
    }
}

/// `cents` as a price: `1250` is `12.50`.
fn price(cents: u64) -> String {
    let text = format!("{}.{:02}", cents / 100, cents % 100);
    let parts: Vec<&str> = text.split('.').collect();
    // The shop's record-and-replay walkthrough builds this service with a bug here
    // (`orders-broken`): it panics after the order is placed.
    #[cfg(feature = "receipt-bug")]
    let cents_part = parts[2];
    #[cfg(not(feature = "receipt-bug"))]
    let cents_part = parts[1];
    format!("{}.{cents_part}", parts[0])
}

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

/// Give the reservation back and refund the charge (compensation), each retried by
/// the caller (both are idempotent). Whether both are done.
fn compensate(id: &str) -> bool {
    let released = match Call::new("inventory", "POST", &format!("/reservations/{id}/release"))
        .idempotent(true)
        .send()
    {
        Ok(response) if response.status() == 200 => Ok(()),
        Ok(response) => Err(response.status().to_string()),
        Err(failure) => Err(failure.kind().to_owned()),
    };
    let mut done = true;
    for (service, outcome) in [("inventory", released), ("payment", refund_payment(id))] {
        if let Err(reason) = outcome {
            shoal_sdk::log::error(
                "compensation failed",
                &[("order", id), ("service", service), ("error", &reason)],
            );
            done = false;
        }
    }
    done
}

fn order_key(id: &str) -> String {
    format!("order/{id}")
}

fn read_order(tx: &Transaction, id: &str) -> Result<Option<Order>, StoreError> {
    Ok(tx
        .get(&order_key(id))?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn write_order(tx: &Transaction, order: &Order) -> Result<(), StoreError> {
    tx.set(
        &order_key(&order.id),
        &serde_json::to_vec(order).unwrap_or_default(),
    )
}

/// Record a failed order as `failed` (if it is still pending: a timeout may have taken
/// it over, and then compensates it itself), compensating first when a reservation
/// or charge may have been made.
fn fail(id: &str, response: Response, may_hold: bool) -> Response {
    if may_hold {
        compensate(id);
    }
    let _ = store::transaction(|tx| {
        if let Some(mut order) = read_order(tx, id)?
            && order.status == "pending"
        {
            order.status = "failed".into();
            write_order(tx, &order)?;
        }
        Ok::<_, StoreError>(())
    });
    response
}

fn order_timeout_ms() -> u64 {
    shoal_sdk::config::get("order_timeout_ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(DEFAULT_ORDER_TIMEOUT_MS)
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

    // 0. The order, pending, and its timeout, together.
    let recorded = store::transaction(|tx| {
        write_order(
            tx,
            &Order {
                id: id.clone(),
                sku: sku.clone(),
                quantity,
                status: "pending".into(),
            },
        )?;
        let timeout = serde_json::json!({ "id": id });
        tx.schedule(
            "order.timeout",
            timeout.to_string().as_bytes(),
            Duration::from_millis(order_timeout_ms()),
        )
        .map_err(|failure| Stop::Answer(error(503, &format!("cannot schedule: {failure:?}"))))?;
        Ok::<_, Stop>(())
    });
    match recorded {
        Ok(()) => {}
        Err(Stop::Answer(response)) => return response,
        Err(Stop::Store(failure)) => {
            return error(503, &format!("cannot record the order: {failure:?}"));
        }
    }

    // 1. Reserve. (The walkthrough's `orders-extra-call` build asks for the stock
    // first: a call its recordings do not have.)
    #[cfg(feature = "extra-call")]
    let _ = Call::new("inventory", "GET", &format!("/stock/{sku}")).send();
    let reservation = serde_json::json!({ "id": id, "sku": sku, "quantity": quantity });
    let reserved = Call::new("inventory", "POST", "/reservations")
        .body(reservation.to_string())
        .header("content-type", "application/json")
        .idempotent(true)
        .send();
    match reserved {
        Ok(response) if response.status() == 201 => {}
        Ok(response) if response.status() == 409 => {
            return fail(&id, error(409, "insufficient stock"), false);
        }
        Ok(response) if response.status() == 404 => {
            return fail(&id, error(400, "unknown product"), false);
        }
        Ok(response) if response.status() == 400 => {
            return fail(&id, error(400, "bad order"), false);
        }
        // Whether the reservation was made is unknown: compensating releases it.
        Ok(_) | Err(_) => return fail(&id, error(503, "inventory unavailable"), true),
    }

    // 2. Charge.
    if let Err(failure) = charge_payment(&id, quantity * UNIT_PRICE) {
        if failure.timed_out {
            shoal_sdk::log::warn("payment did not answer in time", &[("order", &id)]);
        } else {
            shoal_sdk::log::info(
                "payment refused",
                &[("order", &id), ("reason", &failure.reason)],
            );
        }
        return fail(&id, error(402, "payment failed"), true);
    }

    // 3. Placed, with its event, if the timeout has not taken the order over.
    let written = store::transaction(|tx| {
        let Some(mut order) = read_order(tx, &id)? else {
            return Err(Stop::Answer(error(503, "the order record is gone")));
        };
        if order.status != "pending" {
            return Err(Stop::Answer(error(503, "the order timed out")));
        }
        order.status = "placed".into();
        write_order(tx, &order)?;
        let event = serde_json::json!({ "id": id, "sku": sku, "quantity": quantity });
        tx.publish("order.created", event.to_string().as_bytes())
            .map_err(|failure| Stop::Answer(error(503, &format!("cannot publish: {failure:?}"))))?;
        Ok::<_, Stop>(())
    });
    match written {
        Ok(()) => Response::json(
            201,
            serde_json::json!({
                "id": id,
                "status": "placed",
                "total": price(quantity * UNIT_PRICE),
            })
            .to_string(),
        ),
        Err(Stop::Answer(response)) => fail(&id, response, true),
        Err(Stop::Store(failure)) => fail(
            &id,
            error(503, &format!("cannot record the order: {failure:?}")),
            true,
        ),
    }
}

/// `order.timeout`: an order still pending when its request must be over is
/// abandoned and compensated; a failed one is compensated again (idempotent: it
/// finishes a compensation that failed at the time); a placed one needs nothing.
fn order_timeout(req: &Request) -> Response {
    let Some(event) = Event::from_request(req) else {
        return error(400, "not an event delivery");
    };
    let Ok(OrderTimeout { id }) = serde_json::from_slice(&event.payload) else {
        // Retrying cannot fix a malformed event: acknowledge it.
        return error(200, "ignored a malformed order.timeout");
    };
    // Take the order over first, so a request still finishing cannot place it.
    let taken = store::transaction(|tx| {
        let Some(mut order) = read_order(tx, &id)? else {
            return Ok(false);
        };
        match order.status.as_str() {
            "pending" => {
                order.status = "abandoned".into();
                write_order(tx, &order)?;
                Ok(true)
            }
            // Compensating again finishes one that failed at the time.
            "abandoned" | "failed" => Ok(true),
            _ => Ok::<_, StoreError>(false),
        }
    });
    let needs_compensation = match taken {
        Ok(needs) => needs,
        Err(failure) => return error(503, &format!("{failure:?}")),
    };
    if needs_compensation && !compensate(&id) {
        // Redelivered with backoff until the compensation succeeds.
        return error(503, "compensation incomplete");
    }
    let handled = store::transaction(|tx| tx.mark_handled(&event.id));
    match handled {
        Ok(()) => Response::json(
            200,
            serde_json::json!({ "order": id, "compensated": needs_compensation }).to_string(),
        ),
        Err(failure) => error(503, &format!("{failure:?}")),
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
        ("POST", "/events/order-timeout") => order_timeout(&req),
        ("GET", path) if path.len() > 1 && !path[1..].contains('/') => show(&path[1..]),
        _ => error(404, "no such route"),
    }
}

shoal_sdk::http_service!(handle);
