//! Hot redeploys under load, restarts (graceful and `kill -9`), draining on SIGTERM.

use shoal_tests::{Host, Load, agent, guest, temp_root, wait_for};
use std::time::Duration;

#[test]
fn redeploys_under_load_drop_no_request() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let plain = guest("plain_http");
    let v1 = "version = \"1\"\n[config]\ngreeting = \"one\"\n";
    assert_eq!(host.deploy_with_manifest("svc", &hello, v1).status, 201);

    // Answers by version: `one` and `two` (hello, by greeting), `plain` (the plain
    // wasi:http component).
    let load = Load::start(
        format!("{}/svc/", host.gateway),
        3,
        Duration::ZERO,
        |status, body| match (status, body.split(',').next()) {
            (200, Some("one")) => Some("one"),
            (200, Some("two")) => Some("two"),
            (200, _) if body.starts_with("plain") => Some("plain"),
            _ => None,
        },
    );
    wait_for(
        "the first version under load",
        Duration::from_secs(10),
        || load.count("one") > 0,
    );

    // Ten swaps, each to another version (different manifests and different
    // components), under load: each new version serves before the next swap, and no
    // request fails across any of them.
    for round in 0..10 {
        let (reply, version) = match round % 3 {
            0 => (
                host.deploy_with_manifest(
                    "svc",
                    &hello,
                    "version = \"2\"\n[config]\ngreeting = \"two\"\n",
                ),
                "two",
            ),
            1 => (host.deploy("svc", &plain), "plain"),
            _ => (host.deploy_with_manifest("svc", &hello, v1), "one"),
        };
        assert_eq!(reply.status, 200, "round {round}: {}", reply.body);
        load.wait_for_more(
            &format!("round {round}: the load served by {version}"),
            version,
            Duration::from_secs(10),
        );
    }
    let (_, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(10)]
    );
}

#[test]
fn acknowledged_deploys_survive_kill_9_and_graceful_restart() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    let manifest = "version = \"7\"\nroute = \"/greet\"\n[config]\ngreeting = \"Persisted\"\n";
    assert_eq!(
        host.deploy_with_manifest("hello", &guest("hello"), manifest)
            .status,
        201
    );
    assert_eq!(host.deploy("plain", &guest("plain_http")).status, 201);
    assert_eq!(host.deploy("gone", &guest("plain_http")).status, 201);
    assert_eq!(host.admin("DELETE", "/v1/services/gone").status, 204);
    host.crash();

    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.get("/greet/").body, "Persisted, world!\n");
    assert_eq!(host.get("/plain/").status, 200);
    assert_eq!(host.get("/gone/").status, 404);
    let shown = host.admin("GET", "/v1/services/hello").json();
    assert_eq!(shown["version"], "7");
    // The restart reused the compiled code instead of compiling again.
    shoal_tests::wait_for("two compiles in the log", Duration::from_secs(10), || {
        host.log().matches("compiled component").count() >= 2
    });
    let log = host.log();
    assert_eq!(log.matches("compiled component").count(), 2, "{log}");

    host.signal(libc::SIGTERM);
    assert_eq!(
        host.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        host.log()
    );
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.get("/greet/").body, "Persisted, world!\n");
    let listed = host.admin("GET", "/v1/services").json();
    assert_eq!(listed["services"].as_array().map(Vec::len), Some(2));
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("faulty", &guest("faulty")).status, 201);
    let url = format!("{}/faulty/sleep?ms=1500", host.gateway);
    let slow = std::thread::spawn(move || {
        let mut response = agent().get(&url).call().expect("slow request");
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    });
    // Signal only once the request is running.
    let started = std::time::Instant::now();
    while host.running("faulty").load.in_flight != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow request never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    host.signal(libc::SIGTERM);
    let (status, body) = slow.join().expect("join");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "slept 1500 ms\n");
    assert_eq!(
        host.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        host.log()
    );
    // Once stopped, it accepts nothing.
    assert!(
        agent()
            .get(format!("{}/faulty/ok", host.gateway))
            .call()
            .is_err()
    );
}

#[test]
fn generated_admin_token_is_private_and_printed_once() {
    let root = temp_root();
    let data = root.path().join("data");
    let log = root.path().join("host.log");
    let host = Host::start_with_env(&data, &log, &[], &[]);
    let token = std::fs::read_to_string(data.join("admin-token")).expect("token file");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(data.join("admin-token"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        host.admin_with_token("GET", "/v1/services", Some(&token))
            .status,
        200
    );
    assert_eq!(host.admin("GET", "/v1/services").status, 401);
}
