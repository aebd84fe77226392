//! `faulty`: misbehaves on purpose, so tests can prove a fault ends one request only.
//!
//! - `/ok` answers 200.
//! - `/trap` executes `unreachable`.
//! - `/panic` panics.
//! - `/loop` spins forever (the host's deadline must stop it).
//! - `/sleep?ms=N` waits N milliseconds, then answers 200 (a slow, well-behaved request).
//!
//! Its exported health check hangs forever when the config value `health` is `hang`,
//! traps when it is `trap`, and reports serving otherwise.

use shoal_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    match req.path() {
        "/ok" => Response::text(200, "ok\n"),
        "/trap" => core::arch::wasm32::unreachable(),
        "/panic" => panic!("faulty: panic requested"),
        "/loop" => {
            let mut counter: u64 = 0;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        "/sleep" => {
            let ms: u64 = req
                .query_param("ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Response::text(200, format!("slept {ms} ms\n"))
        }
        other => Response::text(404, format!("no route for {other}\n")),
    }
}

fn check() -> shoal_sdk::registry::Health {
    match shoal_sdk::config::get("health").as_deref() {
        Some("hang") => loop {
            std::hint::black_box(0u64);
        },
        Some("trap") => core::arch::wasm32::unreachable(),
        _ => shoal_sdk::registry::Health::Serving,
    }
}

shoal_sdk::http_service!(handle);
shoal_sdk::health_check!(check);
