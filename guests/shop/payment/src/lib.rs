//! `payment`: charges for orders. Its mode can be set to fail or to hang, to show
//! what the shop does when payment goes wrong.
//!
//! - `PUT /mode` `{"mode": "ok" | "fail" | "hang"}`.
//! - `POST /charges` `{"order", "amount"}`: 201 `{"charge"}` (idempotent by order);
//!   402 in `fail` mode; in `hang` mode it never answers in time; 409 when the
//!   order was already refunded.
//! - `POST /charges/{order}/refund`: 200, idempotent. A refund of a charge not (yet)
//!   made leaves a tombstone, so a charge that arrives late is refused.
//! - `GET /charges/{order}`: the charge or 404.
//!
//! The same charges and refunds are served over gRPC (`shop.payment.v1.Payment`,
//! `../proto/payment.proto`): `Charge` and `Refund`, with a declined or refunded
//! order as `FAILED_PRECONDITION` and a store that is down as `UNAVAILABLE`.

use serde::{Deserialize, Serialize};
use shoal_sdk::grpc::{Context, Server, Status};
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store::{self, StoreError};

mod proto {
    include!(concat!(env!("OUT_DIR"), "/shop.payment.v1.rs"));
}

#[derive(Deserialize)]
struct SetMode {
    mode: String,
}

#[derive(Deserialize)]
struct Charge {
    order: String,
    amount: u64,
}

/// What the store keeps per order.
#[derive(Serialize, Deserialize)]
struct Record {
    amount: u64,
    refunded: bool,
}

fn charge_key(order: &str) -> String {
    format!("charges/{order}")
}

fn read(tx: &store::Transaction, order: &str) -> Result<Option<Record>, StoreError> {
    Ok(tx
        .get(&charge_key(order))?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

fn write(tx: &store::Transaction, order: &str, record: &Record) -> Result<(), StoreError> {
    tx.set(
        &charge_key(order),
        &serde_json::to_vec(record).unwrap_or_default(),
    )
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, serde_json::json!({ "error": message }).to_string())
}

fn mode() -> String {
    store::get("mode")
        .ok()
        .flatten()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|| "ok".into())
}

fn set_mode(body: &[u8]) -> Response {
    let Ok(SetMode { mode }) = serde_json::from_slice(body) else {
        return error(400, "expected {\"mode\": \"ok\" | \"fail\" | \"hang\"}");
    };
    if !matches!(mode.as_str(), "ok" | "fail" | "hang") {
        return error(400, "mode is one of ok, fail, hang");
    }
    match store::set("mode", mode.as_bytes()) {
        Ok(()) => Response::json(200, serde_json::json!({ "mode": mode }).to_string()),
        Err(failure) => error(503, &format!("{failure:?}")),
    }
}

/// Why a charge was not made.
enum NotCharged {
    Declined,
    Refunded,
    Store(StoreError),
}

/// Charge `order` once (`charge-{order}`), as the mode says.
fn make_charge(order: &str, amount: u64) -> Result<String, NotCharged> {
    match mode().as_str() {
        "fail" => return Err(NotCharged::Declined),
        "hang" => {
            // Longer than any caller waits: the caller's deadline ends it.
            std::thread::sleep(std::time::Duration::from_secs(120));
            return Err(NotCharged::Declined);
        }
        _ => {}
    }
    let charged = store::transaction(|tx| match read(tx, order)? {
        Some(record) if record.refunded => Ok(false),
        Some(_) => Ok(true),
        None => {
            write(
                tx,
                order,
                &Record {
                    amount,
                    refunded: false,
                },
            )?;
            Ok::<_, StoreError>(true)
        }
    });
    match charged {
        Ok(true) => Ok(format!("charge-{order}")),
        Ok(false) => Err(NotCharged::Refunded),
        Err(failure) => Err(NotCharged::Store(failure)),
    }
}

/// Refund `order` (a tombstone when it was never charged): the amount refunded.
fn make_refund(order: &str) -> Result<u64, StoreError> {
    store::transaction(|tx| {
        let mut record = read(tx, order)?.unwrap_or(Record {
            amount: 0,
            refunded: true,
        });
        record.refunded = true;
        write(tx, order, &record)?;
        Ok::<_, StoreError>(record.amount)
    })
}

fn charge(body: &[u8]) -> Response {
    let Ok(Charge { order, amount }) = serde_json::from_slice(body) else {
        return error(400, "expected {\"order\", \"amount\"}");
    };
    match make_charge(&order, amount) {
        Ok(charge) => Response::json(201, serde_json::json!({ "charge": charge }).to_string()),
        Err(NotCharged::Declined) => error(402, "payment declined"),
        Err(NotCharged::Refunded) => error(409, "the order was refunded"),
        Err(NotCharged::Store(failure)) => error(503, &format!("{failure:?}")),
    }
}

fn refund(order: &str) -> Response {
    match make_refund(order) {
        Ok(amount) => Response::json(
            200,
            serde_json::json!({ "order": order, "refunded": amount }).to_string(),
        ),
        Err(failure) => error(503, &format!("{failure:?}")),
    }
}

/// `shop.payment.v1.Payment/Charge`.
fn grpc_charge(_: &Context, request: proto::ChargeRequest) -> Result<proto::ChargeReply, Status> {
    if request.order.is_empty() {
        return Err(Status::invalid_argument("the order is required"));
    }
    match make_charge(&request.order, request.amount) {
        Ok(charge) => Ok(proto::ChargeReply { charge }),
        Err(NotCharged::Declined) => Err(Status::failed_precondition("payment declined")),
        Err(NotCharged::Refunded) => Err(Status::failed_precondition("the order was refunded")),
        Err(NotCharged::Store(failure)) => Err(Status::unavailable(format!("{failure:?}"))),
    }
}

/// `shop.payment.v1.Payment/Refund`.
fn grpc_refund(_: &Context, request: proto::RefundRequest) -> Result<proto::RefundReply, Status> {
    if request.order.is_empty() {
        return Err(Status::invalid_argument("the order is required"));
    }
    match make_refund(&request.order) {
        Ok(refunded) => Ok(proto::RefundReply {
            order: request.order,
            refunded,
        }),
        Err(failure) => Err(Status::unavailable(format!("{failure:?}"))),
    }
}

fn show(order: &str) -> Response {
    match store::get(&charge_key(order)) {
        Ok(Some(bytes)) => Response::json(200, String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => error(404, "no such charge"),
        Err(failure) => error(503, &format!("{failure:?}")),
    }
}

fn handle(req: Request) -> Response {
    match (req.method(), req.path()) {
        ("PUT", "/mode") => set_mode(req.body()),
        ("POST", "/charges") => charge(req.body()),
        (method, path) => {
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            match (method, parts.as_slice()) {
                ("POST", ["charges", order, "refund"]) => refund(order),
                ("GET", ["charges", order]) => show(order),
                _ => error(404, "no such route"),
            }
        }
    }
}

fn server() -> Server {
    Server::new()
        .unary("/shop.payment.v1.Payment/Charge", grpc_charge)
        .unary("/shop.payment.v1.Payment/Refund", grpc_refund)
        .http(handle)
}

shoal_sdk::grpc_service!(server);
