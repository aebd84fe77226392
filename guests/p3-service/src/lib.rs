//! `p3-service`: a WASIp3 service (`wasi:http/handler@0.3.0`) for the tests of
//! concurrent serving. One instance runs several of its requests at once.
//!
//! - `GET /sleep?ms=N` logs `sleeping <x-request-id>` through `shoal:platform/log`,
//!   waits N ms (an async wait: the instance serves others meanwhile) and answers
//!   `instance=<id> most=<m> served=<s>`: the instance's random id, the most requests
//!   it has held at once, and how many it has taken in all.
//! - `GET /whoami` answers the same without waiting.
//! - `GET /trap` panics (a trap that ends the instance).
//! - `GET /spin` never returns and never waits (only its deadline ends it).
//! - `GET /platform?ms=N` waits N ms, then logs `p3 request <x-request-id>` through
//!   `shoal:platform/log`, stores the request id under its own key in
//!   `shoal:platform/store`, reads it back, and answers
//!   `<x-request-id> <value read back> <config greeting>`, then, one per line:
//!   `trace=<trace id>` (`tracing`, inside a span of its own), `call=<status> <body>`
//!   (`caller`, `GET /` of the service `callee`), `discovered=<instances of callee>`
//!   (`discovery`), `identity=<its own name>` (`registry`), `counted=<ok|error>`
//!   (`metrics`), `published=<ok|error>` (`events`), and last `most=<m>` as `/sleep`.
//! - `GET /stream?chunks=N&ms=M` answers at once and then writes N chunks, M ms
//!   apart, after the handler has returned.

use std::cell::Cell;
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

mod platform {
    wasip3::wit_bindgen::generate!({
        path: "../../wit",
        world: "shoal:platform/imports",
        generate_all,
        runtime_path: "wasip3::wit_bindgen::rt",
    });
}

use platform::shoal::platform::{
    caller, config, discovery, events, log, metrics, registry, store, tracing,
};

thread_local! {
    static INSTANCE: u64 = wasip3::random::random::get_random_u64();
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
    static MOST: Cell<u32> = const { Cell::new(0) };
    static SERVED: Cell<u32> = const { Cell::new(0) };
}

/// Counts a request as held by the instance while it lives.
struct Held;

impl Held {
    fn new() -> Self {
        SERVED.with(|served| served.set(served.get() + 1));
        let now = IN_FLIGHT.with(|in_flight| {
            in_flight.set(in_flight.get() + 1);
            in_flight.get()
        });
        MOST.with(|most| most.set(most.get().max(now)));
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        IN_FLIGHT.with(|in_flight| in_flight.set(in_flight.get() - 1));
    }
}

fn whoami() -> String {
    format!(
        "instance={} most={} served={}\n",
        INSTANCE.with(|id| *id),
        MOST.with(Cell::get),
        SERVED.with(Cell::get)
    )
}

fn query(path: &str, name: &str) -> Option<u64> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

async fn sleep_ms(ms: u64) {
    wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
}

fn respond(status: u16, chunks: Vec<Vec<u8>>, gap_ms: u64) -> Result<Response, ErrorCode> {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
        .map_err(|_| ErrorCode::InternalError(None))?;
    let (mut body, contents) = wit_stream::new();
    let (trailers, trailers_read) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(contents), trailers_read);
    drop(trailers);
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(None))?;
    wasip3::spawn_local(async move {
        for (index, chunk) in chunks.into_iter().enumerate() {
            if index > 0 && gap_ms > 0 {
                sleep_ms(gap_ms).await;
            }
            if !body.write_all(chunk).await.is_empty() {
                return;
            }
        }
    });
    Ok(response)
}

/// One call of each other `shoal:platform` interface, a line each.
fn other_capabilities() -> String {
    let span = tracing::start_span("p3-platform");
    span.set_attribute("service.kind", "wasip3");
    let trace = tracing::trace_id();
    span.end();
    let called = caller::call(
        "callee",
        &caller::Request {
            method: "GET".into(),
            path_with_query: "/".into(),
            headers: Vec::new(),
            body: Vec::new(),
        },
        caller::CallOptions {
            attempt_timeout_ms: None,
            deadline_ms: None,
            idempotent: None,
        },
    );
    let call = match called {
        Ok(response) => format!(
            "{} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        ),
        Err(error) => format!("error {error:?}"),
    };
    let discovered = discovery::discover("callee").map_or(0, |instances| instances.len());
    let identity = registry::get_identity().service;
    let outcome = |ok: bool| if ok { "ok" } else { "error" };
    let counted = metrics::counter_add("p3_requests", &[], 1.0).is_ok();
    let published = events::publish("p3.seen", trace.as_bytes()).is_ok();
    format!(
        "trace={trace}\ncall={call}\ndiscovered={discovered}\nidentity={identity}\ncounted={}\npublished={}\n",
        outcome(counted),
        outcome(published)
    )
}

struct P3Service;

impl wasip3::exports::http::handler::Guest for P3Service {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let _held = Held::new();
        let path = request.get_path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or_default().to_owned();
        match route.as_str() {
            "/sleep" => {
                let request_id = request
                    .get_headers()
                    .get("x-request-id")
                    .first()
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default();
                log::write(log::Level::Info, &format!("sleeping {request_id}"), &[]);
                sleep_ms(query(&path, "ms").unwrap_or(0)).await;
                respond(200, vec![whoami().into_bytes()], 0)
            }
            "/whoami" => respond(200, vec![whoami().into_bytes()], 0),
            "/trap" => panic!("asked to trap"),
            "/spin" => {
                let mut turns = 0u64;
                loop {
                    turns = std::hint::black_box(turns.wrapping_add(1));
                }
            }
            "/platform" => {
                let request_id = request
                    .get_headers()
                    .get("x-request-id")
                    .first()
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default();
                sleep_ms(query(&path, "ms").unwrap_or(0)).await;
                log::write(log::Level::Info, &format!("p3 request {request_id}"), &[]);
                let key = format!("seen/{request_id}");
                let stored = store::set(&key, request_id.as_bytes())
                    .and_then(|()| store::get(&key))
                    .map(|value| String::from_utf8_lossy(&value.unwrap_or_default()).into_owned())
                    .unwrap_or_else(|error| format!("store error: {error:?}"));
                let greeting = config::get("greeting").unwrap_or_default();
                let mut answer = format!("{request_id} {stored} {greeting}\n");
                answer.push_str(&other_capabilities());
                answer.push_str(&format!("most={}\n", MOST.with(Cell::get)));
                respond(200, vec![answer.into_bytes()], 0)
            }
            "/stream" => {
                let chunks = query(&path, "chunks").unwrap_or(3);
                let gap = query(&path, "ms").unwrap_or(10);
                let chunks = (0..chunks)
                    .map(|index| format!("chunk {index}\n").into_bytes())
                    .collect();
                respond(200, chunks, gap)
            }
            _ => respond(404, vec![b"no such route\n".to_vec()], 0),
        }
    }
}

wasip3::http::service::export!(P3Service);
