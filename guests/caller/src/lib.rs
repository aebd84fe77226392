//! `caller`: calls other services through the host and reports what happened.
//!
//! - `GET /call?service=S&path=/p[&method=M][&attempt_timeout_ms=N][&deadline_ms=N][&idempotent=true|false][&header=name:value]...` (`header` repeatable)
//!   calls S and answers `outcome=ok status=... elapsed_us=...` plus the target's body,
//!   or `outcome=error kind=... elapsed_us=... detail=...`.
//! - `GET /discover?service=S` lists the instances that take traffic.
//! - `GET /watch?service=S&wait_ms=N` returns the instances now, then waits up to N ms
//!   for a change and returns the new set.
//! - `GET /health?status=serving|degraded|not-serving` reports this service's health.
//! - `GET /whoami` answers the instance identity.
//! - `GET /metric?kind=counter|gauge|histogram&name=N[&label=k:v][&value=V]` records
//!   one of the service's own metrics and answers `ok` or `error <kind>: <detail>`.
//! - `GET /trace` answers the current trace id and span id.
//! - `GET /grpc-hello?service=S&name=N[&timeout_ms=T]` calls `helloworld.Greeter/SayHello`
//!   of S over gRPC and answers `code=OK message=...` or `code=NAME message=...`,
//!   with the call's time in `x-elapsed-us`.
//!
//! `/call` also takes `span=NAME`: the call is then made inside a guest span of that
//! name (with an attribute and an event), so it shows up as that span's child.
//!
//! Its exported health check reports serving only while the service named by the
//! `depends_on` config value (if any) has instances: ready when its dependency is.

use shoal_sdk::caller::Call;
use shoal_sdk::discovery::{self, Health, Instance};
use shoal_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    match req.path() {
        "/call" => call(&req),
        "/grpc-hello" => grpc_hello(&req),
        "/discover" => match discovery::discover(&req.query_param("service").unwrap_or_default()) {
            Ok(instances) => Response::text(200, render(&instances)),
            Err(error) => Response::text(400, format!("{error:?}\n")),
        },
        "/watch" => watch(&req),
        "/health" => {
            let health = match req.query_param("status").as_deref() {
                Some("serving") => Health::Serving,
                Some("degraded") => Health::Degraded,
                Some("not-serving") => Health::NotServing,
                other => return Response::text(400, format!("unknown status {other:?}\n")),
            };
            shoal_sdk::registry::report_health(health, Some("reported by test"));
            Response::text(200, "reported\n")
        }
        "/metric" => metric(&req),
        "/trace" => Response::text(
            200,
            format!(
                "trace={} span={}\n",
                shoal_sdk::trace::trace_id(),
                shoal_sdk::trace::span_id()
            ),
        ),
        "/whoami" => {
            let me = shoal_sdk::registry::identity();
            Response::text(
                200,
                format!(
                    "service={} version={} instance={} host={}\n",
                    me.service, me.version, me.instance_id, me.host_id
                ),
            )
        }
        other => Response::text(404, format!("no route for {other}\n")),
    }
}

fn call(req: &Request) -> Response {
    let service = req.query_param("service").unwrap_or_default();
    let path = req.query_param("path").unwrap_or_else(|| "/".into());
    let method = req.query_param("method").unwrap_or_else(|| "GET".into());
    let mut call = Call::new(&service, &method, &path).body(req.body().to_vec());
    if let Some(ms) = req
        .query_param("attempt_timeout_ms")
        .and_then(|v| v.parse().ok())
    {
        call = call.attempt_timeout_ms(ms);
    }
    if let Some(ms) = req.query_param("deadline_ms").and_then(|v| v.parse().ok()) {
        call = call.deadline_ms(ms);
    }
    if let Some(idempotent) = req.query_param("idempotent") {
        call = call.idempotent(idempotent == "true");
    }
    for header in req.query_params("header") {
        if let Some((name, value)) = header.split_once(':') {
            call = call.header(name, value);
        }
    }
    shoal_sdk::log::info("calling", &[("target", &service), ("path", &path)]);
    let span = req.query_param("span").map(|name| {
        let span = shoal_sdk::trace::Span::start(&name);
        span.set_attribute("target", &service);
        span
    });
    let started = std::time::Instant::now();
    let outcome = call.send();
    let elapsed_us = started.elapsed().as_micros();
    if let Some(span) = span {
        match &outcome {
            Ok(response) => {
                span.add_event("answered", &[("status", &response.status().to_string())]);
                span.set_ok();
            }
            Err(error) => span.set_error(error.kind()),
        }
        span.end();
    }
    match outcome {
        Ok(response) => Response::text(
            200,
            format!(
                "outcome=ok status={} elapsed_us={elapsed_us}\n{}",
                response.status(),
                response.body_text()
            ),
        ),
        Err(error) => {
            let detail = match &error {
                shoal_sdk::caller::CallError::ServerError(response) => format!(
                    "status {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ),
                other => format!("{other:?}"),
            };
            Response::text(
                200,
                format!(
                    "outcome=error kind={} elapsed_us={elapsed_us} detail={detail}\n",
                    error.kind()
                ),
            )
        }
    }
}

fn metric(req: &Request) -> Response {
    let name = req.query_param("name").unwrap_or_default();
    let value: f64 = req
        .query_param("value")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let label = req.query_param("label");
    let labels: Vec<(&str, &str)> = label
        .as_deref()
        .and_then(|l| l.split_once(':'))
        .into_iter()
        .collect();
    let result = match req.query_param("kind").as_deref() {
        Some("gauge") => shoal_sdk::metrics::gauge_set(&name, &labels, value),
        Some("histogram") => shoal_sdk::metrics::histogram_observe(&name, &labels, value),
        _ => shoal_sdk::metrics::counter_add(&name, &labels, value),
    };
    match result {
        Ok(()) => Response::text(200, "ok\n"),
        Err(error) => Response::text(200, format!("error {}: {error:?}\n", error.kind())),
    }
}

fn watch(req: &Request) -> Response {
    let service = req.query_param("service").unwrap_or_default();
    let wait_ms = req
        .query_param("wait_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let watcher = match discovery::watch(&service) {
        Ok(watcher) => watcher,
        Err(error) => return Response::text(400, format!("{error:?}\n")),
    };
    let initial = watcher.next().unwrap_or_default();
    // Tells a waiting test that the watch is in place before anything changes.
    shoal_sdk::log::info("watching", &[("service", &service)]);
    let changed = watcher.wait(wait_ms);
    Response::text(
        200,
        format!(
            "initial:\n{}changed:\n{}",
            render(&initial),
            changed
                .map(|set| render(&set))
                .unwrap_or_else(|| "none\n".into())
        ),
    )
}

fn render(instances: &[Instance]) -> String {
    instances
        .iter()
        .map(|i| {
            let health = match i.health {
                Health::Serving => "serving",
                Health::Degraded => "degraded",
                Health::NotServing => "not-serving",
            };
            format!("{} {} {} {}\n", i.id, i.address, i.version, health)
        })
        .collect()
}

fn check() -> Health {
    let Some(dependency) = shoal_sdk::config::get("depends_on") else {
        return Health::Serving;
    };
    match discovery::discover(&dependency) {
        Ok(instances) if !instances.is_empty() => Health::Serving,
        _ => Health::NotServing,
    }
}

shoal_sdk::http_service!(handle);
shoal_sdk::health_check!(check);

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

fn grpc_hello(req: &Request) -> Response {
    let mut client = shoal_sdk::grpc::Client::new(&req.query_param("service").unwrap_or_default());
    if let Some(ms) = req.query_param("timeout_ms").and_then(|ms| ms.parse().ok()) {
        client = client.timeout(std::time::Duration::from_millis(ms));
    }
    let request = HelloRequest {
        name: req.query_param("name").unwrap_or_default(),
    };
    let started = std::time::Instant::now();
    let outcome = client.unary::<_, HelloReply>("/helloworld.Greeter/SayHello", &request);
    let elapsed_us = started.elapsed().as_micros().to_string();
    match outcome {
        Ok(reply) => Response::text(200, format!("code=Ok message={}\n", reply.message)),
        Err(status) => Response::text(
            200,
            format!("code={:?} message={}\n", status.code(), status.message()),
        ),
    }
    .with_header("x-elapsed-us", &elapsed_us)
}
