//! Metrics scraped by a real Prometheus, traces received over real OTLP.

use shoal_tests::otlp::{OtlpReceiver, ReceivedSpan};
use shoal_tests::prometheus::Prometheus;
use shoal_tests::{Host, TOKEN, guest, temp_root};
use std::time::{Duration, Instant};

#[test]
fn prometheus_scrapes_request_error_and_guest_metrics() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("c", &guest("hello")).status, 201);
    assert_eq!(host.deploy("f", &guest("faulty")).status, 201);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    let prometheus = Prometheus::start(root.path(), host.admin.trim_start_matches("http://"));

    for _ in 0..20 {
        assert_eq!(host.get("/c/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(host.get("/f/trap").status, 500);
    }
    for _ in 0..5 {
        let reply = host.get("/a/metric?kind=counter&name=orders_total&label=status:ok&value=2");
        assert_eq!(reply.body, "ok\n");
    }
    let reply = host.get("/a/call?service=c&path=/");
    assert!(reply.body.contains("outcome=ok"), "{}", reply.body);

    let checks = [
        (
            "sum(shoal_requests_total{service=\"c\",status_class=\"2xx\"})",
            21.0,
        ),
        (
            "sum(shoal_requests_total{service=\"f\",status_class=\"5xx\"})",
            3.0,
        ),
        ("shoal_errors_total{service=\"f\",kind=\"trap\"}", 3.0),
        (
            "shoal_guest_a:orders_total{service=\"a\",status=\"ok\"}",
            10.0,
        ),
        (
            "shoal_outbound_calls_total{caller=\"a\",target=\"c\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "shoal_circuit_breaker_state{caller=\"a\",target=\"c\"}",
            0.0,
        ),
        ("sum(shoal_deploys_total{outcome=\"created\"})", 3.0),
        (
            "shoal_request_duration_seconds_count{service=\"c\",method=\"GET\",status_class=\"2xx\"}",
            21.0,
        ),
    ];
    for (query, expected) in checks {
        let value = prometheus.wait_for(query, expected);
        assert_eq!(value, Some(expected), "{query}");
    }
    // Instantiation and compile durations are measured too.
    assert!(
        prometheus
            .query("sum(shoal_instantiation_duration_seconds_count)")
            .unwrap_or(0.0)
            >= 20.0
    );
    assert!(
        prometheus
            .query("sum(shoal_compile_duration_seconds_count)")
            .unwrap_or(0.0)
            >= 1.0
    );
    // The exposition follows the conventions: base units, _total counters.
    let text = host.metrics_text();
    assert!(
        text.contains("# TYPE shoal_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("shoal_in_flight_requests{service=\"c\"} 0"),
        "{text}"
    );
}

#[test]
fn bad_guest_metrics_get_clear_errors_and_stay_bounded() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    for (query, kind) in [
        ("kind=counter&name=9lives", "invalid-name"),
        ("kind=counter&name=has-dash", "invalid-name"),
        ("kind=counter&name=down&value=-1", "invalid-value"),
        ("kind=counter&name=c&label=service:spoof", "label-mismatch"),
    ] {
        let reply = host.get(&format!("/a/metric?{query}"));
        assert!(
            reply.body.starts_with(&format!("error {kind}")),
            "{query}: {}",
            reply.body
        );
    }
    assert_eq!(
        host.get("/a/metric?kind=counter&name=fixed&label=a:1").body,
        "ok\n"
    );
    let mismatch = host.get("/a/metric?kind=counter&name=fixed&label=b:1");
    assert!(
        mismatch.body.starts_with("error label-mismatch"),
        "{}",
        mismatch.body
    );
    let kind = host.get("/a/metric?kind=gauge&name=fixed&label=a:1");
    assert!(kind.body.starts_with("error invalid-name"), "{}", kind.body);

    // A guest that invents a series per request hits the bound; nothing beyond it is kept.
    let mut refused = 0;
    for i in 0..1005 {
        let reply = host.get(&format!(
            "/a/metric?kind=counter&name=per_user&label=user:u{i}"
        ));
        refused += usize::from(reply.body.starts_with("error too-many-series"));
    }
    assert_eq!(refused, 5);
    let text = host.metrics_text();
    assert_eq!(text.matches("shoal_guest_a:per_user{").count(), 1000);
    // Removing the service drops its series.
    assert_eq!(host.admin("DELETE", "/v1/services/a").status, 204);
    let text = host.metrics_text();
    assert!(
        !text.contains("shoal_guest_a:"),
        "series of a removed service remain"
    );
}

fn start_traced_host(root: &std::path::Path, receiver: &OtlpReceiver) -> Host {
    Host::start_with_env(
        &root.join("data"),
        &root.join("host.log"),
        &[],
        &[
            ("SHOAL_ADMIN_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_SERVICE_NAME", "shoal-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
}

fn wait_for_spans(
    receiver: &OtlpReceiver,
    trace_id: &str,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if done(&spans) || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span `{name}` in {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

#[test]
fn one_trace_through_three_services_continues_the_incoming_traceparent() {
    let root = temp_root();
    let receiver = OtlpReceiver::start();
    let host = start_traced_host(root.path(), &receiver);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    assert_eq!(host.deploy("p", &guest("plain_http")).status, 201);
    assert_eq!(host.deploy("c", &guest("hello")).status, 201);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let reply = host.get_with_headers(
        "/a/call?service=p&path=/proxy%3Furl%3Dhttp%3A%2F%2Fc%2Fecho&span=work",
        &[("traceparent", &format!("00-{trace_id}-{client_span}-01"))],
    );
    assert!(reply.body.contains("outcome=ok"), "{}", reply.body);
    assert!(
        reply.body.contains("upstream status: 200"),
        "{}",
        reply.body
    );
    // C saw the trace context too.
    assert!(
        reply
            .body
            .contains(&format!("header traceparent: 00-{trace_id}-")),
        "{}",
        reply.body
    );

    let spans = wait_for_spans(&receiver, trace_id, |spans| {
        spans.iter().any(|s| s.name == "GET /c") && spans.iter().any(|s| s.name == "GET /a")
    });
    let a = find(&spans, "GET /a");
    let work = find(&spans, "work");
    let call_p = find(&spans, "call p");
    let p = find(&spans, "GET /p");
    let call_c = find(&spans, "call c");
    let c = find(&spans, "GET /c");
    assert_eq!(
        a.parent_span_id, client_span,
        "the incoming traceparent is continued"
    );
    assert_eq!(
        work.parent_span_id, a.span_id,
        "the guest span is a child of the request"
    );
    assert_eq!(
        call_p.parent_span_id, work.span_id,
        "the call made inside the guest span is its child"
    );
    assert_eq!(p.parent_span_id, call_p.span_id);
    assert_eq!(
        call_c.parent_span_id, p.span_id,
        "the plain wasi:http guest's call is traced too"
    );
    assert_eq!(c.parent_span_id, call_c.span_id);
    for server in [a, p, c] {
        assert_eq!(
            server.attributes["http.response.status_code"], "200",
            "{server:?}"
        );
        assert_eq!(server.service_name, "shoal-under-test");
    }
    assert_eq!(a.attributes["shoal.service"], "a");
    assert_eq!(work.attributes["target"], "p");
    assert_eq!(call_c.attributes["shoal.outcome"], "ok");
    // Instantiation and guest execution are spans under each request.
    let instantiations = spans
        .iter()
        .filter(|s| s.name == "shoal.instantiate")
        .count();
    assert!(instantiations >= 3, "{instantiations}");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "shoal.guest" && s.parent_span_id == c.span_id)
    );
    // The host's log line for the guest carries the trace id.
    shoal_tests::wait_for(
        "a log line with the trace id",
        Duration::from_secs(10),
        || host.log().contains(trace_id),
    );
}

#[test]
fn an_invalid_traceparent_starts_a_new_trace_and_is_otherwise_ignored() {
    let root = temp_root();
    let receiver = OtlpReceiver::start();
    let host = start_traced_host(root.path(), &receiver);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f35-01",
    ] {
        let reply = host.get_with_headers("/a/trace", &[("traceparent", bad)]);
        assert_eq!(reply.status, 200, "{bad}: {}", reply.body);
        let trace = reply
            .body
            .split_whitespace()
            .next()
            .and_then(|t| t.strip_prefix("trace="))
            .unwrap_or_default()
            .to_owned();
        assert_eq!(trace.len(), 32, "{bad}: {}", reply.body);
        assert_ne!(trace, "0".repeat(32), "{bad}");
        let spans = wait_for_spans(&receiver, &trace, |spans| {
            spans.iter().any(|s| s.name == "GET /a")
        });
        assert_eq!(
            find(&spans, "GET /a").parent_span_id,
            "",
            "{bad}: a root span"
        );
    }
}

#[test]
fn every_store_call_is_a_client_span_under_the_request() {
    let root = temp_root();
    let receiver = OtlpReceiver::start();
    let host = start_traced_host(root.path(), &receiver);
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    let trace_id = "5cf92f3577b34da6a3ce929d0e0e4737";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = host.get_with_headers("/kv/increment?key=n", &[("traceparent", &traceparent)]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let conflict_trace = "6cf92f3577b34da6a3ce929d0e0e4738";
    let request = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/kv/cas?key=n&expected=wrong", host.gateway))
        .header(
            "traceparent",
            format!("00-{conflict_trace}-00f067aa0ba902b7-01"),
        )
        .body(b"x".to_vec())
        .expect("request");
    let status = shoal_tests::agent()
        .run(request)
        .expect("cas")
        .status()
        .as_u16();
    assert_eq!(status, 409);

    let spans = wait_for_spans(&receiver, trace_id, |spans| {
        spans.iter().any(|s| s.name == "store.transaction.commit")
            && spans.iter().any(|s| s.name == "GET /kv")
    });
    let request_span = find(&spans, "GET /kv");
    let in_request: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.name == "shoal.guest" || s.name == "GET /kv")
        .map(|s| s.span_id.as_str())
        .collect();
    for name in [
        "store.transaction.get",
        "store.transaction.set",
        "store.transaction.commit",
    ] {
        let span = find(&spans, name);
        assert_eq!(span.kind, 3, "{name} is a client span");
        assert_eq!(span.attributes["db.system.name"], "sqlite");
        assert_eq!(span.attributes["db.operation.name"], name);
        assert_eq!(span.attributes["shoal.service"], "kv");
        assert!(
            in_request.contains(span.parent_span_id.as_str()),
            "{name} is a child of the request ({}): {span:?}",
            request_span.span_id
        );
        assert_ne!(span.status.0, 2, "{name} succeeded: {span:?}");
    }
    let spans = wait_for_spans(&receiver, conflict_trace, |spans| {
        spans.iter().any(|s| s.name == "store.compare-and-swap")
    });
    let cas = find(&spans, "store.compare-and-swap");
    assert_eq!(cas.status.0, 2, "a conflict is an error status: {cas:?}");
    assert!(cas.status.1.contains("Conflict"), "{cas:?}");
}
