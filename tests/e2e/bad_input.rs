//! Every bad input gets a clear 4xx (or a 5xx for that request alone) and the version
//! already serving keeps serving.

use shoal_tests::{Host, Reply, guest, temp_root};

/// Deploy `hello` v1 and return a host on which every bad case is tried.
fn host_with_hello(root: &std::path::Path, args: &[&str]) -> Host {
    let host = Host::start(root, args);
    let deployed = host.deploy_with_manifest(
        "hello",
        &guest("hello"),
        "version = \"1\"\n[config]\ngreeting = \"v1\"\n",
    );
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    host
}

fn assert_still_serving_v1(host: &Host) {
    let reply = host.get("/hello/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "v1, world!\n");
    assert_eq!(
        host.admin("GET", "/v1/services/hello").json()["version"],
        "1"
    );
}

fn assert_error(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let message = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(needle),
        "expected `{needle}` in the error, got: {message}"
    );
}

#[test]
fn uploads_that_are_not_services_are_refused_and_nothing_changes() {
    let root = temp_root();
    let host = host_with_hello(root.path(), &["--max-upload-bytes", "2000000"]);

    assert_error(
        &host.deploy("hello", b"this is not wasm"),
        400,
        "not WebAssembly",
    );
    assert_error(&host.deploy("hello", b""), 400, "not WebAssembly");
    assert_error(
        &host.deploy("hello", b"\0asm\x01\0\0\0"),
        400,
        "build a component",
    );
    let mut truncated = guest("hello");
    truncated.truncate(truncated.len() / 2);
    assert_error(&host.deploy("hello", &truncated), 400, "invalid");

    let missing = wat::parse_str(
        r#"(component
            (import "acme:nowhere/thing@1.0.0" (instance (export "f" (func))))
            (import "acme:elsewhere/other" (instance))
        )"#,
    )
    .expect("wat");
    let reply = host.deploy("hello", &missing);
    assert_error(&reply, 400, "acme:nowhere/thing@1.0.0");
    assert_error(&reply, 400, "acme:elsewhere/other");

    let no_handler = wat::parse_str("(component)").expect("wat");
    assert_error(
        &host.deploy("hello", &no_handler),
        400,
        "wasi:http/incoming-handler",
    );

    // The host answers 413 from the declared length, before the body is sent: the
    // client reads the answer as soon as it has sent the headers.
    let head = host.raw_admin_head(
        "PUT /v1/services/hello HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-admin-token\r\n\
         Content-Type: application/wasm\r\nContent-Length: 3000000\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    assert_still_serving_v1(&host);
    // None of the refused uploads became a service.
    let listed = host.admin("GET", "/v1/services").json();
    assert_eq!(listed["services"].as_array().map(Vec::len), Some(1));
}

#[test]
fn invalid_manifests_name_the_field_and_nothing_changes() {
    let root = temp_root();
    let host = host_with_hello(root.path(), &[]);
    let hello = guest("hello");
    assert_error(
        &host.deploy_with_manifest("hello", &hello, "verison = \"2\"\n"),
        400,
        "verison",
    );
    assert_error(
        &host.deploy_with_manifest("hello", &hello, "[limits]\nmemory_mb = 999999\n"),
        400,
        "limits.memory_mb",
    );
    assert_error(
        &host.deploy_with_manifest("hello", &hello, "route = \"no-slash\"\n"),
        400,
        "route",
    );
    assert_error(
        &host.deploy_with_manifest("hello", &hello, "version = [1, 2\n"),
        400,
        "invalid manifest",
    );
    assert_still_serving_v1(&host);
}

#[test]
fn names_tokens_and_unknown_services() {
    let root = temp_root();
    let host = host_with_hello(root.path(), &[]);
    let hello = guest("hello");

    for bad in ["Hello", "a_b", "-x", "x-", "9lives"] {
        assert_error(&host.deploy(bad, &hello), 400, "invalid service name");
    }

    let no_token = host.admin_with_token("GET", "/v1/services", None);
    assert_error(&no_token, 401, "Authorization");
    assert_eq!(no_token.header("www-authenticate"), Some("Bearer"));
    assert_error(
        &host.admin_with_token("GET", "/v1/services", Some("wrong")),
        401,
        "wrong",
    );
    assert_error(
        &host.admin_with_token("DELETE", "/v1/services/hello", Some("test-admin-tokeN")),
        401,
        "wrong",
    );

    assert_error(&host.admin("GET", "/v1/services/nope"), 404, "nope");
    assert_error(&host.admin("DELETE", "/v1/services/nope"), 404, "nope");
    let unrouted = host.get("/nope/x");
    assert_eq!(unrouted.status, 404);
    assert!(unrouted.body.contains("no service"), "{}", unrouted.body);

    assert_still_serving_v1(&host);
}

#[test]
fn guest_faults_end_their_request_only() {
    let root = temp_root();
    let host = host_with_hello(root.path(), &[]);
    let deployed =
        host.deploy_with_manifest("faulty", &guest("faulty"), "[limits]\ntimeout_ms = 1500\n");
    assert_eq!(deployed.status, 201, "{}", deployed.body);

    let trap = host.get("/faulty/trap");
    assert_eq!(trap.status, 500, "{}", trap.body);
    assert!(trap.body.contains("unreachable"), "{}", trap.body);
    assert!(trap.body.contains("faulty"), "{}", trap.body);

    let panic = host.get("/faulty/panic");
    assert_eq!(panic.status, 500, "{}", panic.body);

    let started = std::time::Instant::now();
    let spin = host.get("/faulty/loop");
    assert_eq!(spin.status, 504, "{}", spin.body);
    assert!(spin.body.contains("time limit"), "{}", spin.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // The host and its other services are unharmed, and so is the faulty one.
    assert_still_serving_v1(&host);
    assert_eq!(host.get("/faulty/ok").status, 200);
    shoal_tests::wait_for(
        "the fault to be logged",
        std::time::Duration::from_secs(10),
        || {
            let log = host.log();
            log.contains("request failed") && log.contains("faulty")
        },
    );
}
