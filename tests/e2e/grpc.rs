//! gRPC services in Wasm: the greeter (`guests/grpc-greeter`) called through the
//! gateway by a real gRPC client (Python `grpcio`), its deadline taken from
//! `grpc-timeout`, the host's own answers given as gRPC statuses, and gRPC service
//! names owned by one service.

use shoal_tests::otlp::OtlpReceiver;
use shoal_tests::{Host, TOKEN, guest, python_json, repo_root, temp_root, wait_for};
use std::process::Command;
use std::time::Duration;

fn greeter_manifest() -> String {
    std::fs::read_to_string(repo_root().join("guests/grpc-greeter/shoal.toml")).expect("manifest")
}

fn deploy_greeter(host: &Host) {
    let reply = host.deploy_with_manifest("greeter", &guest("grpc_greeter"), &greeter_manifest());
    assert_eq!(reply.status, 201, "{}", reply.body);
}

fn target(host: &Host) -> String {
    host.gateway.trim_start_matches("http://").to_owned()
}

/// Call the greeter with grpcio.
fn call(host: &Host, method: &str, request: &str, extra: &[&str]) -> serde_json::Value {
    let target = target(host);
    let mut args = vec![target.as_str(), method, request];
    args.extend(extra);
    python_json("grpc/greeter.py", &args)
}

/// A gRPC request sent with curl (which, unlike a gRPC library, does not enforce a
/// deadline itself): the response's headers and trailers, lower-cased. An empty
/// `message` sends no body at all (the request ends with its headers): an answer
/// made without reading the request (an unknown method, a refusal) then cannot race
/// the upload, which curl reports as a failed stream.
fn curl_grpc(host: &Host, path: &str, message: &[u8], headers: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let head = dir.path().join("head.txt");
    let mut command = Command::new("curl");
    command.args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-D"]);
    command.arg(&head);
    command.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if message.is_empty() {
        command.args(["-X", "POST"]);
    } else {
        let body = dir.path().join("request.bin");
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        std::fs::write(&body, framed).expect("write request");
        command
            .arg("--data-binary")
            .arg(format!("@{}", body.display()));
    }
    command.arg(format!("{}{path}", host.gateway));
    let status = command.status().expect("run curl");
    let head = std::fs::read_to_string(head)
        .unwrap_or_default()
        .to_lowercase();
    assert!(status.success(), "curl failed: {status}, {head}");
    head
}

#[test]
fn a_grpc_client_calls_the_greeter_through_the_gateway() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    deploy_greeter(&host);

    let unary = call(&host, "SayHello", r#"{"name": "Ada"}"#, &[]);
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["replies"][0], "Hello Ada", "{unary}");

    let streamed = call(
        &host,
        "SayHelloStream",
        r#"{"name": "Ada", "count": 5}"#,
        &[],
    );
    assert_eq!(streamed["code"], "OK", "{streamed}");
    let replies: Vec<&str> = streamed["replies"]
        .as_array()
        .expect("replies")
        .iter()
        .filter_map(|reply| reply.as_str())
        .collect();
    assert_eq!(replies.len(), 5, "{streamed}");
    assert_eq!(replies[4], "Hello Ada (5 of 5)");

    // The same service answers plain HTTP under its own route.
    let page = host.get("/greeter/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("speaks gRPC"), "{}", page.body);
    assert_eq!(host.get("/greeter/hello?name=Ada").body, "Hello Ada\n");

    let unknown = call(&host, "SayGoodbye", r#"{"name": "Ada"}"#, &[]);
    assert_eq!(unknown["code"], "UNIMPLEMENTED", "{unknown}");
    let invalid = call(&host, "SayHello", r#"{"name": ""}"#, &[]);
    assert_eq!(invalid["code"], "INVALID_ARGUMENT", "{invalid}");
    assert_eq!(invalid["details"], "name must not be empty", "{invalid}");

    // A guest that traps ends its own call: INTERNAL, naming the request id the host
    // logged; the next call is served.
    let trapped = call(&host, "SayHello", r#"{"name": "panic"}"#, &[]);
    assert_eq!(trapped["code"], "INTERNAL", "{trapped}");
    let request_id = trapped["trailing_metadata"]["x-request-id"]
        .as_str()
        .or(trapped["initial_metadata"]["x-request-id"].as_str())
        .expect("x-request-id")
        .to_owned();
    let details = trapped["details"].as_str().expect("details");
    assert!(details.contains(&request_id), "{trapped}");
    assert!(details.contains("trapped"), "{trapped}");
    assert!(host.log().contains(&request_id));
    assert_eq!(
        call(&host, "SayHello", r#"{"name": "Bo"}"#, &[])["code"],
        "OK"
    );
}

#[test]
fn grpc_timeout_is_the_calls_deadline() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    deploy_greeter(&host);

    // grpcio's own deadline: the client gives up, and so does the host.
    let late = call(
        &host,
        "SayHello",
        r#"{"name": "Ada", "delay_ms": 3000}"#,
        &["--timeout", "0.3"],
    );
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");

    // A client that states `grpc-timeout` but does not enforce it: the host ends the
    // call when it passes and says so. HelloRequest { name: "x", delay_ms: 3000 }.
    let message = [0x0a, 0x01, b'x', 0x18, 0xb8, 0x17];
    let head = curl_grpc(
        &host,
        "/helloworld.Greeter/SayHello",
        &message,
        &["grpc-timeout: 300m"],
    );
    assert!(head.contains("grpc-status: 4"), "{head}");
    assert!(head.contains("time limit"), "{head}");
    // Without it, the same call completes after its delay.
    let head = curl_grpc(&host, "/helloworld.Greeter/SayHello", &message, &[]);
    assert!(head.contains("grpc-status: 0"), "{head}");
}

#[test]
fn the_hosts_own_answers_reach_grpc_clients_as_grpc_statuses() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    deploy_greeter(&host);
    // No service serves `nowhere.Svc`: UNIMPLEMENTED, with the request id.
    let head = curl_grpc(&host, "/nowhere.Svc/Call", &[], &[]);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("content-type: application/grpc"), "{head}");
    assert!(head.contains("grpc-status: 12"), "{head}");
    assert!(
        head.contains("grpc-message: no service is routed at"),
        "{head}"
    );
    assert!(head.contains("x-request-id: "), "{head}");
}

#[test]
fn a_grpc_service_name_belongs_to_one_service() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    deploy_greeter(&host);
    let manifest = "version = \"2\"\ngrpc = [\"helloworld.Greeter\"]\n";
    let taken = host.deploy_with_manifest("impostor", &guest("grpc_greeter"), manifest);
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert!(taken.body.contains("/helloworld.Greeter"), "{}", taken.body);
    assert!(taken.body.contains("greeter"), "{}", taken.body);
    let bad =
        host.deploy_with_manifest("bad", &guest("grpc_greeter"), "grpc = [\"hello/world\"]\n");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("grpc[0]"), "{}", bad.body);
    // The owner still serves; once it is removed, the name is free.
    assert_eq!(
        call(&host, "SayHello", r#"{"name": "Ada"}"#, &[])["code"],
        "OK"
    );
    assert_eq!(host.admin("DELETE", "/v1/services/greeter").status, 204);
    let now = host.deploy_with_manifest("impostor", &guest("grpc_greeter"), manifest);
    assert_eq!(now.status, 201, "{}", now.body);
    assert_eq!(
        call(&host, "SayHello", r#"{"name": "Ada"}"#, &[])["code"],
        "OK"
    );
}

/// The external gRPC server of `tests/grpc/server.py`, killed when dropped.
struct GrpcServer {
    child: std::process::Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        use std::io::BufRead as _;
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/grpc/server.py"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the gRPC server");
        let stdout = child.stdout.take().expect("stdout");
        let line = std::io::BufReader::new(stdout)
            .lines()
            .next()
            .expect("a line")
            .expect("readable");
        let port = line
            .strip_prefix("listening ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_guest_calls_an_external_grpc_server_through_the_caller() {
    let server = GrpcServer::start();
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let address = format!("127.0.0.1:{}", server.port);
    for name in ["ext", "ext-idem", "ext-breaker"] {
        let reply = host.admin_json(
            "PUT",
            &format!("/v1/external/{name}"),
            &format!(r#"{{"endpoints": ["{address}"]}}"#),
        );
        assert!(reply.status == 201 || reply.status == 200, "{}", reply.body);
    }
    let manifest = r#"
[outbound.targets.ext]
max_attempts = 3
[outbound.targets.ext-idem]
max_attempts = 3
idempotent = ["/helloworld.Greeter/*"]
[outbound.targets.ext-breaker]
max_attempts = 1
breaker = { consecutive_failures = 3, cool_down_ms = 60000 }
"#;
    let deployed = host.deploy_with_manifest("caller", &guest("caller"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let hello = |service: &str, name: &str, extra: &str| {
        let reply = host.get(&format!(
            "/caller/grpc-hello?service={service}&name={name}{extra}"
        ));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body.trim().to_owned()
    };
    let count = |name: &str| hello("ext", &format!("count:{name}"), "");

    assert_eq!(hello("ext", "Ada", ""), "code=Ok message=Hello Ada");
    // UNAVAILABLE: the server did not act on it, so even a POST is sent again.
    assert_eq!(
        hello("ext", "unavailable-2:a", ""),
        "code=Ok message=Hello after 3 attempts"
    );
    // INVALID_ARGUMENT is the request's fault: never retried.
    assert_eq!(
        hello("ext", "invalid:b", ""),
        "code=InvalidArgument message=bad name"
    );
    assert_eq!(count("invalid:b"), "code=Ok message=1");
    // INTERNAL is retried only for methods the manifest calls idempotent.
    assert_eq!(
        hello("ext", "internal:c", ""),
        "code=Internal message=broken"
    );
    assert_eq!(count("internal:c"), "code=Ok message=1");
    assert_eq!(
        hello("ext-idem", "internal:d", ""),
        "code=Internal message=broken"
    );
    assert_eq!(count("internal:d"), "code=Ok message=3");

    // The caller's deadline travels as grpc-timeout: the server sees at most it.
    let seen = hello("ext", "deadline", "&timeout_ms=2000");
    let ms: u64 = seen
        .strip_prefix("code=Ok message=")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(ms > 0 && ms <= 2000, "{seen}");

    // A 200 with grpc-status 13 is a failure to the breaker: three open it, and the
    // fourth call never reaches the server.
    for _ in 0..3 {
        assert_eq!(
            hello("ext-breaker", "internal:e", ""),
            "code=Internal message=broken"
        );
    }
    let refused = hello("ext-breaker", "internal:e", "");
    assert!(refused.starts_with("code=Unavailable"), "{refused}");
    assert_eq!(count("internal:e"), "code=Ok message=3");

    // The caller's side is measured by method and final status.
    let metrics = host.metrics_text();
    let calls = |target: &str, code: &str| {
        series(
            &metrics,
            "shoal_rpc_client_duration_seconds_count",
            &[
                ("caller", "caller"),
                ("target", target),
                ("rpc_service", "helloworld.Greeter"),
                ("rpc_method", "SayHello"),
                ("rpc_grpc_status_code", code),
            ],
        )
    };
    assert_eq!(calls("ext-breaker", "13"), Some(3.0), "{metrics}");
    assert_eq!(calls("ext", "3"), Some(1.0), "{metrics}");
}

/// A `HelloRequest { name }`, encoded as protobuf.
fn hello(name: &str) -> Vec<u8> {
    let mut message = vec![0x0a, name.len() as u8];
    message.extend_from_slice(name.as_bytes());
    message
}

/// The value of the series `name{labels…}` in Prometheus text, if it is there.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn grpc_calls_are_traced_and_measured_by_method_and_status() {
    let root = temp_root();
    let receiver = OtlpReceiver::start();
    let host = Host::start_with_env(
        &root.path().join("data"),
        &root.path().join("host.log"),
        &[],
        &[
            ("SHOAL_ADMIN_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    deploy_greeter(&host);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("traceparent: 00-{trace_id}-b7ad6b7169203331-01");
    let head = curl_grpc(
        &host,
        "/helloworld.Greeter/SayHello",
        &hello("Ada"),
        &[&traceparent],
    );
    assert!(head.contains("grpc-status: 0"), "{head}");
    for _ in 0..2 {
        let head = curl_grpc(&host, "/helloworld.Greeter/SayHello", &hello("Ada"), &[]);
        assert!(head.contains("grpc-status: 0"), "{head}");
    }
    // Failures a client sees only in `grpc-status`, with HTTP 200.
    let head = curl_grpc(
        &host,
        "/helloworld.Greeter/SayHello",
        &hello("unavailable"),
        &[],
    );
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 14"), "{head}");
    let head = curl_grpc(&host, "/helloworld.Greeter/SayHello", &hello(""), &[]);
    assert!(head.contains("grpc-status: 3"), "{head}");
    // Method names a client makes up do not become series.
    for index in 0..20 {
        let head = curl_grpc(&host, &format!("/helloworld.Greeter/Made{index}"), &[], &[]);
        assert!(head.contains("grpc-status: 12"), "{head}");
    }

    let metrics = host.metrics_text();
    let name = "shoal_rpc_server_duration_seconds_count";
    let of = |method: &str, code: &str| {
        series(
            &metrics,
            name,
            &[
                ("service", "greeter"),
                ("rpc_system", "grpc"),
                ("rpc_service", "helloworld.Greeter"),
                ("rpc_method", method),
                ("rpc_grpc_status_code", code),
            ],
        )
    };
    assert_eq!(of("SayHello", "0"), Some(3.0), "{metrics}");
    assert_eq!(of("SayHello", "14"), Some(1.0), "{metrics}");
    assert_eq!(of("SayHello", "3"), Some(1.0), "{metrics}");
    assert_eq!(of("_OTHER", "12"), Some(20.0), "{metrics}");
    assert!(!metrics.contains("Made"), "{metrics}");
    // The dashboard's status classes.
    let stats = host.admin("GET", "/v1/stats").json();
    let grpc = &stats["services"]["greeter"]["grpc"];
    assert_eq!(grpc["ok"], 3, "{stats}");
    assert_eq!(grpc["client_error"], 1, "{stats}");
    assert_eq!(grpc["server_error"], 21, "{stats}");

    // The server span follows OpenTelemetry's RPC conventions.
    let mut span = None;
    wait_for("the gRPC server span", Duration::from_secs(30), || {
        span = receiver
            .spans()
            .into_iter()
            .find(|span| span.trace_id == trace_id && span.kind == 2);
        span.is_some()
    });
    let span = span.expect("span");
    assert_eq!(span.name, "helloworld.Greeter/SayHello", "{span:?}");
    assert_eq!(span.attributes["rpc.system"], "grpc", "{span:?}");
    assert_eq!(
        span.attributes["rpc.service"], "helloworld.Greeter",
        "{span:?}"
    );
    assert_eq!(span.attributes["rpc.method"], "SayHello", "{span:?}");
    assert_eq!(span.attributes["rpc.grpc.status_code"], "0", "{span:?}");
}

#[test]
fn a_canary_failing_with_grpc_statuses_is_rolled_back() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    deploy_greeter(&host);
    let canary = host.deploy_with_manifest_query(
        "greeter",
        &guest("grpc_greeter"),
        &format!("{}\n", greeter_manifest().replace("1.0.0", "1.1.0")),
        "canary=50&max_error_rate=0.2&min_requests=5&window_ms=10000",
    );
    assert_eq!(canary.status, 200, "{}", canary.body);
    // Every call fails with UNAVAILABLE in its trailers (HTTP 200): the canary's
    // share of them trips its rule.
    wait_for(
        "the canary to be rolled back",
        Duration::from_secs(30),
        || {
            let head = curl_grpc(
                &host,
                "/helloworld.Greeter/SayHello",
                &hello("unavailable"),
                &[],
            );
            assert!(head.contains("grpc-status: 14"), "{head}");
            host.admin("GET", "/v1/services/greeter").json()["canary"].is_null()
        },
    );
    wait_for("the rollback to be logged", Duration::from_secs(10), || {
        host.log().contains("canary rolled back")
    });
}
