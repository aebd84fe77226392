//! `secrets`: reads the operator's secrets through `shoal:platform/secrets`.
//!
//! - `GET /equals?name=N&candidate=C` answers `equal` or `different`, comparing the
//!   secret N with C without ever sending the value back; a refusal answers 403 with
//!   its kind (`not-declared`, `not-found`, `denied`).
//! - `GET /leak?name=N` writes the value everywhere the host writes text: the log
//!   (message and field), standard output and error, a span's name, attribute,
//!   event and error status, a metric label, and finally a panic message. The host
//!   must mask it in each.

use shoal_sdk::http::{Request, Response};
use shoal_sdk::secrets::{self, SecretError};

fn refusal(error: SecretError) -> Response {
    let kind = match error {
        SecretError::NotDeclared => "not-declared",
        SecretError::NotFound => "not-found",
        SecretError::Denied => "denied",
    };
    Response::text(403, format!("{kind}\n"))
}

fn handle(req: Request) -> Response {
    let name = req.query_param("name").unwrap_or_default();
    let value = match secrets::get(&name) {
        Ok(value) => value,
        Err(error) => return refusal(error),
    };
    match req.path() {
        "/equals" => {
            let candidate = req.query_param("candidate").unwrap_or_default();
            let verdict = if candidate == value {
                "equal"
            } else {
                "different"
            };
            Response::text(200, format!("{verdict}\n"))
        }
        "/leak" => leak(&value),
        _ => Response::text(404, "no such path\n"),
    }
}

fn leak(value: &str) -> Response {
    shoal_sdk::log::warn(&format!("the secret is {value}"), &[("secret", value)]);
    println!("stdout: {value}");
    eprintln!("stderr: {value}");
    let span = shoal_sdk::trace::Span::start(&format!("span {value}"));
    span.set_attribute("secret", value);
    span.add_event("leaked", &[("secret", value)]);
    span.set_error(&format!("failed with {value}"));
    span.end();
    let _ = shoal_sdk::metrics::counter_add("leaks", &[("secret", value)], 1.0);
    panic!("giving up on {value}");
}

shoal_sdk::http_service!(handle);
