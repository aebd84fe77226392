//! Guests in other languages on the same `shoal:platform` imports: a JavaScript
//! service calls a Python service that calls a Rust service, with one request id and
//! one trace end to end; each uses its config, store and events, metrics, spans and
//! log, and each language's toolchain built it (scripts/polyglot.sh). A C service
//! uses the same imports.

use shoal_tests::otlp::{OtlpReceiver, ReceivedSpan};
use shoal_tests::{Host, TOKEN, guest, temp_root, wait_for};
use std::time::Duration;

fn chain_host(root: &std::path::Path, receiver: &OtlpReceiver) -> Host {
    let host = Host::start_with_env(
        &root.join("data"),
        &root.join("host.log"),
        &["--max-instances", "64"],
        &[
            ("SHOAL_ADMIN_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let python = "[events]\npublishes = [\"greeting.sent\"]\n[config]\ndownstream = \"hello\"\ndownstream_path = \"/echo\"\n";
    let reply = host.deploy_with_manifest("python-greeter", &guest("python_greeter"), python);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let js = "[events]\npublishes = [\"greeting.sent\"]\n[config]\ngreeting = \"Hi\"\n";
    let reply = host.deploy_with_manifest("js-greeter", &guest("js_greeter"), js);
    assert_eq!(reply.status, 201, "{}", reply.body);
    host
}

fn span<'a>(spans: &'a [ReceivedSpan], name: &str, service: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| {
            s.name == name && s.attributes.get("shoal.service").map(String::as_str) == Some(service)
        })
        .unwrap_or_else(|| {
            let names: Vec<_> = spans
                .iter()
                .map(|s| (&s.name, s.attributes.get("shoal.service")))
                .collect();
            panic!("no span `{name}` of {service} in {names:#?}")
        })
}

#[test]
fn javascript_calls_python_calls_rust_with_one_request_id_and_one_trace() {
    let root = temp_root();
    let receiver = OtlpReceiver::start();
    let host = chain_host(root.path(), &receiver);

    let trace_id = "7af92f3577b34da6a3ce929d0e0e4739";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = host.get_with_headers(
        "/js-greeter/",
        &[("traceparent", &traceparent), ("x-request-id", "chain-42")],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = &reply.body;
    // JavaScript: its config and its store; Python's answer under it, and Rust's
    // echo under that.
    assert!(
        body.starts_with("greeting: Hi\nvisits: 1\ndownstream: 200 greeting: Hello\n"),
        "{body}"
    );
    assert!(
        body.contains("\n  visits: 1\n"),
        "python's own store: {body}"
    );

    assert!(
        body.contains("header x-request-id: chain-42"),
        "one request id: {body}"
    );
    assert!(
        body.contains(&format!("header traceparent: 00-{trace_id}-")),
        "one trace: {body}"
    );
    assert!(body.ends_with(&format!("trace: {trace_id}\n")), "{body}");
    assert_eq!(
        body.matches(&format!("trace: {trace_id}")).count(),
        2,
        "{body}"
    );

    // A second request: each service counts in its own store.
    let again = host.get("/js-greeter/").body;
    assert!(again.starts_with("greeting: Hi\nvisits: 2\n"), "{again}");
    assert!(again.contains("\n  visits: 2\n"), "{again}");

    // One trace: server, guest and client spans chain from JavaScript to Rust.
    let spans = {
        let mut spans = Vec::new();
        wait_for("the chain's spans", Duration::from_secs(30), || {
            spans = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            spans.iter().any(|s| s.name == "GET /hello")
                && spans.iter().any(|s| s.name == "GET /js-greeter")
                && spans.iter().filter(|s| s.name == "greet").count() == 2
        });
        spans
    };
    let js = span(&spans, "GET /js-greeter", "js-greeter");
    let py = span(&spans, "GET /python-greeter", "python-greeter");
    let rust = span(&spans, "GET /hello", "hello");
    assert_eq!(js.parent_span_id, "00f067aa0ba902b7");
    let call_py = spans
        .iter()
        .find(|s| s.name == "call python-greeter")
        .expect("call span");
    assert_eq!(py.parent_span_id, call_py.span_id);
    let call_rust = spans
        .iter()
        .find(|s| s.name == "call hello")
        .expect("call span");
    assert_eq!(rust.parent_span_id, call_rust.span_id);
    let greets: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "greet").collect();
    let languages: std::collections::BTreeSet<&str> = greets
        .iter()
        .map(|s| s.attributes["language"].as_str())
        .collect();
    assert_eq!(languages, ["javascript", "python"].into());
    assert!(
        greets.iter().any(|g| call_py.parent_span_id == g.span_id),
        "javascript's call is a child of its own span"
    );
    for service in ["js-greeter", "python-greeter"] {
        span(&spans, "store.transaction.commit", service);
    }

    // Metrics and logs of both languages.
    let metrics = host.admin("GET", "/metrics").body;
    for line in [
        "shoal_guest_js_greeter:greetings_total{language=\"javascript\",service=\"js-greeter\"} 2",
        "shoal_guest_python_greeter:greetings_total{language=\"python\",service=\"python-greeter\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let log = host.log();
    for service in ["js-greeter", "python-greeter"] {
        assert!(
            log.lines()
                .any(|l| l.contains("greeted") && l.contains(service) && l.contains("chain-42")),
            "{service}'s log line with the request id"
        );
    }
}

#[test]
fn a_c_service_uses_the_platform_too() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let manifest = "[events]\npublishes = [\"greeting.sent\"]\n[config]\ngreeting = \"Bonjour\"\n";
    let reply = host.deploy_with_manifest("c-greeter", &guest("c_greeter"), manifest);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = host.get_with_headers("/c-greeter/", &[("x-request-id", "from-c-1")]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .body
            .starts_with("greeting: Bonjour\nvisits: 1\ndownstream: 200 Hello, c!\ntrace: "),
        "{}",
        reply.body
    );
    let again = host.get("/c-greeter/");
    assert!(again.body.contains("visits: 2\n"), "{}", again.body);
    assert_eq!(host.get("/c-greeter/missing").status, 404);
    let metrics = host.admin("GET", "/metrics").body;
    let line = "shoal_guest_c_greeter:greetings_total{language=\"c\",service=\"c-greeter\"} 2";
    assert!(metrics.contains(line), "{line} in\n{metrics}");
    assert!(
        host.log()
            .lines()
            .any(|l| l.contains("greeted") && l.contains("c-greeter") && l.contains("from-c-1")),
        "the C service's log line carries the request id"
    );
    // The store outlives the instance: the count is the service's, not the instance's.
    let third = host.get("/c-greeter/");
    assert!(third.body.contains("visits: 3\n"), "{}", third.body);
}

#[test]
fn a_big_component_serves_on_baseline_code_then_switches_to_optimised_code_without_a_failure() {
    let root = temp_root();
    let host = Host::start(root.path(), &["--max-instances", "64"]);
    // Small components (hello: under the 2 MiB default) wait for optimised code.
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let code =
        |name: &str| host.admin("GET", &format!("/v1/services/{name}")).json()["code"].clone();
    assert_eq!(code("hello"), "optimized");

    // A componentize-py service (18 MB) answers on baseline code as soon as its
    // deploy returns, while the optimising compile runs.
    let manifest = "[events]\npublishes = [\"greeting.sent\"]\n[config]\ndownstream = \"hello\"\ndownstream_path = \"/echo\"\n";
    let reply = host.deploy_with_manifest("python-greeter", &guest("python_greeter"), manifest);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(code("python-greeter"), "baseline");
    let first = host.get("/python-greeter/");
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        first.body.starts_with("greeting: Hello\nvisits: 1\n"),
        "{}",
        first.body
    );
    let (ok, shown, err) = shoal_tests::shoal_cli(
        &["show", "python-greeter"],
        &[
            ("SHOAL_ADMIN_URL", host.admin.as_str()),
            ("SHOAL_ADMIN_TOKEN", TOKEN),
        ],
    );
    assert!(ok && shown.contains("code       baseline"), "{shown}{err}");

    // Requests keep being answered across the swap; the store sees every one.
    let mut served = 1;
    wait_for("the optimised code", Duration::from_secs(300), || {
        let reply = host.get("/python-greeter/");
        assert_eq!(
            reply.status, 200,
            "a request failed during the swap: {}",
            reply.body
        );
        served += 1;
        code("python-greeter") == "optimized"
    });
    for _ in 0..3 {
        let reply = host.get("/python-greeter/");
        assert_eq!(reply.status, 200, "{}", reply.body);
        served += 1;
    }
    let last = host.get("/python-greeter/");
    assert!(
        last.body.contains(&format!("visits: {}\n", served + 1)),
        "every request counted once ({served} before): {}",
        last.body
    );
    let metrics = host.metrics_text();
    for tier in ["baseline", "optimized"] {
        let series = format!(
            "shoal_compile_duration_seconds_count{{service=\"python-greeter\",tier=\"{tier}\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }

    // The optimised code is cached: after a restart the service runs it at once.
    drop(host);
    let host = Host::start(root.path(), &["--max-instances", "64"]);
    wait_for("the restore", Duration::from_secs(60), || {
        host.admin("GET", "/readyz").status == 200
    });
    let view = host.admin("GET", "/v1/services/python-greeter").json();
    assert_eq!(view["code"], "optimized", "{view}");
    assert_eq!(host.get("/python-greeter/").status, 200);
}
