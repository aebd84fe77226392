//! `payment`: charges for orders. Its mode can be set to fail or to hang, to show
//! what the shop does when payment goes wrong.
//!
//! - `PUT /mode` `{"mode": "ok" | "fail" | "hang"}`.
//! - `POST /charges` `{"order", "amount"}`: 201 `{"charge"}`; 402 in `fail` mode; in
//!   `hang` mode it never answers in time.

use serde::Deserialize;
use shoal_sdk::http::{Request, Response};
use shoal_sdk::store;

#[derive(Deserialize)]
struct SetMode {
    mode: String,
}

#[derive(Deserialize)]
struct Charge {
    order: String,
    amount: u64,
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

fn charge(body: &[u8]) -> Response {
    let Ok(Charge { order, amount }) = serde_json::from_slice(body) else {
        return error(400, "expected {\"order\", \"amount\"}");
    };
    match mode().as_str() {
        "fail" => error(402, "payment declined"),
        "hang" => {
            // Longer than any caller waits: the caller's deadline ends it.
            std::thread::sleep(std::time::Duration::from_secs(120));
            error(504, "hung")
        }
        _ => {
            let charge = format!("charge-{order}");
            match store::set(&format!("charges/{order}"), amount.to_string().as_bytes()) {
                Ok(()) => Response::json(201, serde_json::json!({ "charge": charge }).to_string()),
                Err(failure) => error(503, &format!("{failure:?}")),
            }
        }
    }
}

fn handle(req: Request) -> Response {
    match (req.method(), req.path()) {
        ("PUT", "/mode") => set_mode(req.body()),
        ("POST", "/charges") => charge(req.body()),
        _ => error(404, "no such route"),
    }
}

shoal_sdk::http_service!(handle);
