//! `faulty`: misbehaves on purpose, so tests can prove a fault ends one request only.
//!
//! - `/ok` answers 200 (with the `release` config value, if any).
//! - `/trap` executes `unreachable`.
//! - `/panic` panics.
//! - `/loop` spins forever (the host's deadline must stop it).
//! - `/leak` allocates without bound (the memory limit must stop it).
//! - `/recurse` recurses without bound (the stack limit must stop it).
//! - `/noresponse` returns without ever sending a response.
//! - `/malformed` answers with a `wasi:http` error instead of a response.
//! - `/sleep?ms=N` waits N milliseconds, then answers 200 (a slow, well-behaved request).
//! - `/hold?mb=N&ms=M` holds N MiB of memory for M milliseconds, then answers 200.
//! - `/print?bytes=N[&text=T][&to=stderr]` writes N bytes of lines to stdout (stderr).
//! - `/count` answers how many requests this instance has served (1 with a fresh
//!   instance per request; more when the manifest opts into instance reuse).
//!
//! Its exported health check hangs forever when the config value `health` is `hang`,
//! traps when it is `trap`, and reports serving otherwise.

use shoal_sdk::bindings::exports::wasi::http::incoming_handler::Guest;
use shoal_sdk::bindings::wasi::http::types::{ErrorCode, IncomingRequest, ResponseOutparam};
use shoal_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    match req.path() {
        "/count" => {
            static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            Response::text(200, format!("{served}\n"))
        }
        "/ok" => Response::text(
            200,
            format!(
                "ok {}\n",
                shoal_sdk::config::get("release").unwrap_or_default()
            ),
        ),
        "/trap" => core::arch::wasm32::unreachable(),
        "/panic" => panic!("faulty: panic requested"),
        "/loop" => {
            let mut counter: u64 = 0;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        "/leak" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 1024 * 1024];
                chunk[0] = 1;
                hoard.push(std::hint::black_box(chunk));
            }
        }
        "/print" => {
            // `bytes` bytes of output in lines of up to 100 characters, on stdout (or
            // stderr with `to=stderr`).
            let bytes: usize = req
                .query_param("bytes")
                .and_then(|bytes| bytes.parse().ok())
                .unwrap_or(100);
            let text = req.query_param("text").unwrap_or_else(|| "x".repeat(99));
            let to_stderr = req.query_param("to").as_deref() == Some("stderr");
            let mut written = 0;
            while written < bytes {
                if to_stderr {
                    eprintln!("{text}");
                } else {
                    println!("{text}");
                }
                written += text.len() + 1;
            }
            Response::text(200, format!("printed {written} bytes\n"))
        }
        "/hold" => {
            // Hold `mb` MiB of touched memory for `ms` milliseconds, then answer.
            let mb: usize = req
                .query_param("mb")
                .and_then(|mb| mb.parse().ok())
                .unwrap_or(1);
            let ms: u64 = req
                .query_param("ms")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(100);
            let held = std::hint::black_box(vec![1u8; mb * 1024 * 1024]);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Response::text(200, format!("held {} MiB\n", held.len() / (1024 * 1024)))
        }
        "/recurse" => Response::text(200, format!("{}\n", recurse(std::hint::black_box(1)))),
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

/// Runaway recursion on the wasm call stack (scalars only, so every frame stays in
/// wasm locals rather than the linear-memory shadow stack).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + depth
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

/// The raw `incoming-handler` export, so some routes can break the HTTP contract
/// itself; everything else goes through the SDK.
struct Faulty;

impl Guest for Faulty {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match request.path_with_query().as_deref() {
            Some("/noresponse") => drop(response_out),
            Some("/malformed") => ResponseOutparam::set(
                response_out,
                Err(ErrorCode::InternalError(Some(
                    "faulty: malformed on purpose".into(),
                ))),
            ),
            _ => shoal_sdk::http::serve(request, response_out, handle),
        }
    }
}

shoal_sdk::bindings::export!(Faulty with_types_in shoal_sdk::bindings);
shoal_sdk::health_check!(check);
